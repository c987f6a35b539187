//! Metrics a handler defines (ABI 1.4 `metric_declare`, `metric_series`,
//! `metric_update`): counters, gauges and histograms with labels.
//!
//! A handler declares its metrics in `create` (name, help, label names,
//! histogram bounds), then resolves a series (one set of label values)
//! once, and updates it by id: an index into a vector and an add, no
//! allocation and no syscall. [`crate::Runtime::stats`] copies them into
//! [`crate::stats::HandlerStats::metrics`]; the status handler prints them.

use std::fmt;

/// Most labels a metric may have.
pub const MAX_LABELS: usize = 8;
/// Most metrics one instance may declare.
pub const MAX_METRICS: usize = 256;
/// Most series (label value sets) of one instance, all metrics together.
pub const MAX_SERIES: usize = 16_384;
/// Most bounds a histogram may have.
pub const MAX_BUCKETS: usize = 32;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 256;

/// Histogram bounds when the handler gives none (Prometheus' defaults).
const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down, or is set.
    Gauge,
    /// Observations counted into buckets.
    Histogram,
}

impl MetricKind {
    /// Its Prometheus `# TYPE` name.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// Why a declaration (or a series) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused(pub(crate) String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub(crate) fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
pub(crate) fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Labels the status handler adds itself.
const RESERVED_LABELS: [&str; 3] = ["handler", "worker", "le"];

/// One declared metric.
#[derive(Debug)]
struct Metric {
    name: Box<str>,
    help: Box<str>,
    kind: MetricKind,
    labels: Box<[Box<str>]>,
    buckets: Box<[f64]>,
    /// Its series, as indexes into `Metrics::series`.
    series: Vec<u32>,
}

/// One set of label values of a metric, and its value.
#[derive(Debug)]
struct Series {
    metric: u32,
    values: Box<[Box<str>]>,
    /// Counter and gauge value; a histogram's sum.
    value: f64,
    /// A histogram's counts per bucket (not cumulative), the last for +Inf.
    counts: Box<[u64]>,
}

/// An instance's metrics.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    metrics: Vec<Metric>,
    series: Vec<Series>,
}

/// How `metric_update` changes a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Add,
    Set,
    Observe,
}

impl Metrics {
    /// Declares a metric; returns its id (index + 1).
    pub(crate) fn declare(
        &mut self,
        kind: MetricKind,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> Result<u64, Refused> {
        if !valid_metric_name(name) {
            return Err(Refused(format!(
                "metric name `{name}` is not a valid Prometheus name ([a-zA-Z_:][a-zA-Z0-9_:]*)"
            )));
        }
        if self.metrics.iter().any(|m| &*m.name == name) {
            return Err(Refused(format!("metric `{name}` is declared twice")));
        }
        if self.metrics.len() >= MAX_METRICS {
            return Err(Refused(format!(
                "metric `{name}`: more than {MAX_METRICS} metrics in one instance"
            )));
        }
        if labels.len() > MAX_LABELS {
            return Err(Refused(format!(
                "metric `{name}` has {} labels; at most {MAX_LABELS}",
                labels.len()
            )));
        }
        for (i, l) in labels.iter().enumerate() {
            if !valid_label_name(l) {
                return Err(Refused(format!(
                    "metric `{name}`: label name `{l}` is not valid ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)"
                )));
            }
            if RESERVED_LABELS.contains(l) {
                return Err(Refused(format!(
                    "metric `{name}`: label `{l}` is reserved (loopd adds it)"
                )));
            }
            if labels[..i].contains(l) {
                return Err(Refused(format!(
                    "metric `{name}`: label `{l}` is given twice"
                )));
            }
        }
        if help.contains('\n') {
            return Err(Refused(format!(
                "metric `{name}`: its help text has a newline"
            )));
        }
        let buckets: Box<[f64]> = match kind {
            MetricKind::Histogram if buckets.is_empty() => DEFAULT_BUCKETS.into(),
            MetricKind::Histogram => {
                if buckets.len() > MAX_BUCKETS {
                    return Err(Refused(format!(
                        "histogram `{name}` has {} bounds; at most {MAX_BUCKETS}",
                        buckets.len()
                    )));
                }
                if !buckets.iter().all(|b| b.is_finite())
                    || buckets.windows(2).any(|w| w[0] >= w[1])
                {
                    return Err(Refused(format!(
                        "histogram `{name}`: its bounds must be finite and strictly increasing"
                    )));
                }
                buckets.into()
            }
            _ if !buckets.is_empty() => {
                return Err(Refused(format!(
                    "metric `{name}`: only a histogram has bucket bounds"
                )))
            }
            _ => Box::default(),
        };
        self.metrics.push(Metric {
            name: name.into(),
            help: help.into(),
            kind,
            labels: labels.iter().map(|&l| l.into()).collect(),
            buckets,
            series: Vec::new(),
        });
        Ok(self.metrics.len() as u64)
    }

    /// The series of `metric` with these label values (made on first use);
    /// returns its id (index + 1).
    pub(crate) fn series(&mut self, metric: u64, values: &[&str]) -> Result<u64, Refused> {
        let Some(m) = (metric as usize)
            .checked_sub(1)
            .and_then(|i| self.metrics.get(i))
        else {
            return Err(Refused(format!("no metric with id {metric}")));
        };
        if values.len() != m.labels.len() {
            return Err(Refused(format!(
                "metric `{}` has {} labels, given {} values",
                m.name,
                m.labels.len(),
                values.len()
            )));
        }
        if let Some(v) = values.iter().find(|v| v.len() > MAX_LABEL_VALUE) {
            return Err(Refused(format!(
                "metric `{}`: a label value of {} bytes; at most {MAX_LABEL_VALUE}",
                m.name,
                v.len()
            )));
        }
        if let Some(&s) = m.series.iter().find(|&&s| {
            let have = &self.series[s as usize].values;
            have.iter().map(|v| &**v).eq(values.iter().copied())
        }) {
            return Ok(u64::from(s) + 1);
        }
        if self.series.len() >= MAX_SERIES {
            return Err(Refused(format!(
                "metric `{}`: more than {MAX_SERIES} series in one instance",
                m.name
            )));
        }
        let index = self.series.len() as u32;
        let counts = match m.kind {
            MetricKind::Histogram => vec![0; m.buckets.len() + 1].into(),
            _ => Box::default(),
        };
        self.series.push(Series {
            metric: (metric - 1) as u32,
            values: values.iter().map(|&v| v.into()).collect(),
            value: 0.0,
            counts,
        });
        self.metrics[(metric - 1) as usize].series.push(index);
        Ok(u64::from(index) + 1)
    }

    /// Applies `op` with `value` to series `id`: false for an unknown id or
    /// an op its metric does not take (a counter only adds, and never a
    /// negative or non-finite amount; a histogram only observes).
    #[inline]
    pub(crate) fn update(&mut self, id: u64, op: Op, value: f64) -> bool {
        let Some(s) = (id as usize)
            .checked_sub(1)
            .and_then(|i| self.series.get_mut(i))
        else {
            return false;
        };
        let m = &self.metrics[s.metric as usize];
        if value.is_nan() {
            return false;
        }
        match (m.kind, op) {
            (MetricKind::Counter, Op::Add) if value >= 0.0 && value.is_finite() => s.value += value,
            (MetricKind::Gauge, Op::Add) => s.value += value,
            (MetricKind::Gauge, Op::Set) => s.value = value,
            (MetricKind::Histogram, Op::Observe) => {
                let slot = m
                    .buckets
                    .iter()
                    .position(|&b| value <= b)
                    .unwrap_or(m.buckets.len());
                s.counts[slot] += 1;
                s.value += value;
            }
            _ => return false,
        }
        true
    }

    /// A copy of every metric and series.
    pub(crate) fn snapshot(&self) -> Vec<MetricSnapshot> {
        self.metrics
            .iter()
            .map(|m| MetricSnapshot {
                name: m.name.to_string(),
                help: m.help.to_string(),
                kind: m.kind,
                labels: m.labels.iter().map(|l| l.to_string()).collect(),
                buckets: m.buckets.to_vec(),
                series: m
                    .series
                    .iter()
                    .map(|&i| {
                        let s = &self.series[i as usize];
                        SeriesSnapshot {
                            labels: s.values.iter().map(|v| v.to_string()).collect(),
                            value: s.value,
                            counts: s.counts.to_vec(),
                        }
                    })
                    .collect(),
            })
            .collect()
    }
}

/// A handler-defined metric, in a [`crate::stats::HandlerStats`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MetricSnapshot {
    /// Its name, as declared.
    pub name: String,
    /// Its help text.
    pub help: String,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// Its label names.
    pub labels: Vec<String>,
    /// A histogram's bucket upper bounds (+Inf implied).
    pub buckets: Vec<f64>,
    /// Every series it has.
    pub series: Vec<SeriesSnapshot>,
}

/// One series of a [`MetricSnapshot`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SeriesSnapshot {
    /// Label values, in the order of the metric's label names.
    pub labels: Vec<String>,
    /// A counter's or gauge's value; a histogram's sum of observations.
    pub value: f64,
    /// A histogram's counts per bucket, not cumulative (the last: over the
    /// largest bound); empty otherwise.
    pub counts: Vec<u64>,
}

impl SeriesSnapshot {
    /// A histogram's number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Adds `from` into `into` (workers): metrics matched by name and kind,
/// series by label values.
pub(crate) fn merge(into: &mut Vec<MetricSnapshot>, from: &[MetricSnapshot]) {
    for m in from {
        match into
            .iter_mut()
            .find(|t| t.name == m.name && t.kind == m.kind)
        {
            None => into.push(m.clone()),
            Some(t) => {
                for s in &m.series {
                    match t.series.iter_mut().find(|ts| ts.labels == s.labels) {
                        None => t.series.push(s.clone()),
                        Some(ts) => {
                            ts.value += s.value;
                            for (a, b) in ts.counts.iter_mut().zip(&s.counts) {
                                *a += b;
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_declarations_are_refused_with_the_reason() {
        let mut m = Metrics::default();
        let c = MetricKind::Counter;
        assert!(m.declare(c, "ok_total", "", &["a"], &[]).is_ok());
        let e = |r: Result<u64, Refused>| r.unwrap_err().0;
        assert!(e(m.declare(c, "1bad", "", &[], &[])).contains("not a valid Prometheus name"));
        assert!(e(m.declare(c, "bad-name", "", &[], &[])).contains("not a valid"));
        assert!(e(m.declare(c, "ok_total", "", &[], &[])).contains("declared twice"));
        let nine = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        assert!(e(m.declare(c, "x", "", &nine, &[])).contains("at most 8"));
        assert!(e(m.declare(c, "x", "", &["a", "a"], &[])).contains("given twice"));
        assert!(e(m.declare(c, "x", "", &["__x"], &[])).contains("not valid"));
        assert!(e(m.declare(c, "x", "", &["handler"], &[])).contains("reserved"));
        assert!(e(m.declare(c, "x", "", &[], &[1.0])).contains("only a histogram"));
        let h = MetricKind::Histogram;
        assert!(e(m.declare(h, "x", "", &[], &[2.0, 1.0])).contains("strictly increasing"));
        assert!(e(m.declare(h, "x", "", &[], &[f64::INFINITY])).contains("finite"));
    }

    #[test]
    fn series_are_found_again_and_updated_by_id() {
        let mut m = Metrics::default();
        let req = m
            .declare(
                MetricKind::Counter,
                "req_total",
                "Requests.",
                &["code"],
                &[],
            )
            .unwrap();
        let lat = m
            .declare(MetricKind::Histogram, "lat_seconds", "", &[], &[0.1, 1.0])
            .unwrap();
        let ok = m.series(req, &["200"]).unwrap();
        assert_eq!(m.series(req, &["200"]).unwrap(), ok);
        let nf = m.series(req, &["404"]).unwrap();
        assert_ne!(ok, nf);
        assert!(m.series(req, &[]).is_err());
        assert!(m.update(ok, Op::Add, 2.0));
        assert!(!m.update(ok, Op::Add, -1.0), "a counter never goes down");
        assert!(!m.update(ok, Op::Set, 1.0));
        assert!(!m.update(99, Op::Add, 1.0));
        let l = m.series(lat, &[]).unwrap();
        for v in [0.05, 0.5, 5.0, 0.1] {
            assert!(m.update(l, Op::Observe, v));
        }
        let snap = m.snapshot();
        assert_eq!(snap[0].series[0].value, 2.0);
        assert_eq!(snap[0].series[0].labels, ["200"]);
        assert_eq!(snap[1].series[0].counts, [2, 1, 1]);
        assert_eq!(snap[1].series[0].count(), 4);
        let mut total = snap.clone();
        merge(&mut total, &snap);
        assert_eq!(total[0].series[0].value, 4.0);
        assert_eq!(total[1].series[0].counts, [4, 2, 2]);
    }
}
