//! The Prometheus text format (0.0.4) of a `stats_json` snapshot.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

/// The process's own numbers, from `/proc/self` (absent elsewhere).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Process {
    /// Resident set size, bytes.
    pub resident_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// User and system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// When the process started, seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

/// Linux reports process times in USER_HZ ticks, 100 a second on every
/// architecture (the kernel converts to it for `/proc`).
const USER_HZ: f64 = 100.0;

/// Reads `/proc/self` (Linux); fields it cannot read stay `None`.
pub fn process() -> Process {
    let mut p = Process::default();
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        p.resident_bytes = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // The directory's own descriptor is counted too: one less.
        p.open_fds = Some((dir.count() as u64).saturating_sub(1));
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces) in parentheses.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // rest starts at field 3 (state): field n is f[n - 3].
            let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
            if let (Some(u), Some(s)) = (field(14), field(15)) {
                p.cpu_seconds = Some((u + s) / USER_HZ);
            }
            let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            });
            if let (Some(start), Some(b)) = (field(22), btime) {
                p.start_time_seconds = Some(b + start / USER_HZ);
            }
        }
    }
    p
}

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn family<'a>(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out }
}

/// A label value: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn u(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Handlers of the snapshot's total, a draining instance added to the
/// serving one of the same name (one series per name).
fn handlers(total: &Value) -> BTreeMap<String, Vec<&Value>> {
    let mut by_name: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for h in total["handlers"].as_array().into_iter().flatten() {
        let name = h["name"].as_str().unwrap_or("").to_string();
        by_name.entry(name).or_default().push(h);
    }
    by_name
}

const CLOSE_REASONS: [&str; 11] = [
    "peer",
    "local",
    "error",
    "frame_too_big",
    "handler",
    "shutdown",
    "connect_failed",
    "timeout",
    "idle",
    "limit",
    "other",
];

const DROP_REASONS: [&str; 3] = ["send_buffer_full", "oversize", "send_error"];

/// A per-handler metric: name, type, help, and how to read it from a handler.
type Row<'a> = (&'a str, &'a str, &'a str, &'a dyn Fn(&Value) -> u64);

/// Renders a `stats_json` snapshot and the process's numbers.
pub fn render(stats: &Value, process: &Process) -> String {
    let mut out = String::with_capacity(8 << 10);
    let total = &stats["total"];
    let version = stats["version"].as_str().unwrap_or("");
    let abi = stats["abi"].as_str().unwrap_or("");
    family(
        &mut out,
        "loopd_build_info",
        "gauge",
        "loopd's version and ABI.",
    )
    .sample("loopd_build_info", &[("version", version), ("abi", abi)], 1);
    family(
        &mut out,
        "loopd_workers",
        "gauge",
        "Worker loops in the process.",
    )
    .sample("loopd_workers", &[], u(stats, "workers"));

    let hs = handlers(total);
    let sum =
        |list: &Vec<&Value>, f: &dyn Fn(&Value) -> u64| list.iter().map(|h| f(h)).sum::<u64>();
    let per_handler: [Row<'_>; 11] = [
        (
            "loopd_connections_active",
            "gauge",
            "Connections open now.",
            &|h| u(h, "active"),
        ),
        (
            "loopd_connections_connected_total",
            "counter",
            "Outbound connections made.",
            &|h| u(h, "connected"),
        ),
        (
            "loopd_received_bytes_total",
            "counter",
            "Bytes read from stream connections.",
            &|h| u(h, "bytes_in"),
        ),
        (
            "loopd_sent_bytes_total",
            "counter",
            "Bytes written to stream connections.",
            &|h| u(h, "bytes_out"),
        ),
        (
            "loopd_frames_total",
            "counter",
            "Frames handed to the handler.",
            &|h| u(h, "frames_in"),
        ),
        (
            "loopd_oversize_frames_total",
            "counter",
            "Frames over max_frame.",
            &|h| u(h, "oversize_frames"),
        ),
        (
            "loopd_output_queued_bytes",
            "gauge",
            "Bytes waiting in output queues now.",
            &|h| u(h, "output_queued"),
        ),
        (
            "loopd_datagrams_received_total",
            "counter",
            "Datagrams handed to the handler.",
            &|h| u(h, "datagrams_in"),
        ),
        (
            "loopd_datagrams_sent_total",
            "counter",
            "Datagrams sent.",
            &|h| u(h, "datagrams_out"),
        ),
        (
            "loopd_timers_active",
            "gauge",
            "Handler timers pending now.",
            &|h| u(h, "timers_active"),
        ),
        (
            "loopd_timers_fired_total",
            "counter",
            "Handler timers that fired.",
            &|h| u(h, "timers_fired"),
        ),
    ];
    for (name, kind, help, f) in per_handler {
        let mut fam = family(&mut out, name, kind, help);
        for (h, list) in &hs {
            fam.sample(name, &[("handler", h)], sum(list, f));
        }
    }

    let mut fam = family(
        &mut out,
        "loopd_connections_accepted_total",
        "counter",
        "Connections accepted, by listener.",
    );
    for l in total["listeners"].as_array().into_iter().flatten() {
        let url = l["url"].as_str().unwrap_or("");
        if url.starts_with("udp://") {
            continue;
        }
        fam.sample(
            "loopd_connections_accepted_total",
            &[
                ("handler", l["handler"].as_str().unwrap_or("")),
                ("listener", url),
            ],
            u(l, "accepted"),
        );
    }

    let mut fam = family(
        &mut out,
        "loopd_connections_closed_total",
        "counter",
        "Connections closed, by reason.",
    );
    for (h, list) in &hs {
        for r in CLOSE_REASONS {
            let n = sum(list, &|v| u(&v["closed"], r));
            fam.sample(
                "loopd_connections_closed_total",
                &[("handler", h), ("reason", r)],
                n,
            );
        }
    }
    let mut fam = family(
        &mut out,
        "loopd_datagrams_dropped_total",
        "counter",
        "Datagrams dropped, by reason.",
    );
    for (h, list) in &hs {
        for r in DROP_REASONS {
            let n = sum(list, &|v| u(&v["datagrams_dropped"], r));
            fam.sample(
                "loopd_datagrams_dropped_total",
                &[("handler", h), ("reason", r)],
                n,
            );
        }
    }

    let workers: Vec<(String, &Value)> = stats["per_worker"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| (u(w, "worker").to_string(), &w["loop"]))
        .collect();
    let per_worker: [(&str, &str, &str, &str); 4] = [
        (
            "loopd_loop_passes_total",
            "counter",
            "Loop passes.",
            "passes",
        ),
        (
            "loopd_loop_events_total",
            "counter",
            "Readiness events and timers handled.",
            "events",
        ),
        (
            "loopd_reloads_total",
            "counter",
            "Reloads applied.",
            "reloads",
        ),
        (
            "loopd_reload_failures_total",
            "counter",
            "Reloads that failed (the running config stayed).",
            "reload_failures",
        ),
    ];
    for (name, kind, help, key) in per_worker {
        let mut fam = family(&mut out, name, kind, help);
        for (w, l) in &workers {
            fam.sample(name, &[("worker", w)], u(l, key));
        }
    }
    let name = "loopd_loop_pass_busy_seconds";
    let mut fam = family(
        &mut out,
        name,
        "histogram",
        "Time a loop pass spent handling events, timers and deferred work.",
    );
    for (w, l) in &workers {
        let bounds = l["busy_bounds_us"].as_array().cloned().unwrap_or_default();
        let buckets = l["busy_buckets"].as_array().cloned().unwrap_or_default();
        let mut cumulative = 0u64;
        for (i, b) in buckets.iter().enumerate() {
            cumulative += b.as_u64().unwrap_or(0);
            let le = match bounds.get(i).and_then(Value::as_u64) {
                Some(us) => format!("{}", us as f64 / 1e6),
                None => "+Inf".to_string(),
            };
            fam.sample(
                &format!("{name}_bucket"),
                &[("worker", w), ("le", &le)],
                cumulative,
            );
        }
        let busy = l["busy_seconds"].as_f64().unwrap_or(0.0);
        fam.sample(&format!("{name}_sum"), &[("worker", w)], busy);
        fam.sample(&format!("{name}_count"), &[("worker", w)], u(l, "passes"));
    }

    handler_metrics(&mut out, &hs);

    if let Some(v) = process.resident_bytes {
        family(
            &mut out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        )
        .sample("process_resident_memory_bytes", &[], v);
    }
    if let Some(v) = process.open_fds {
        family(
            &mut out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        )
        .sample("process_open_fds", &[], v);
    }
    if let Some(v) = process.cpu_seconds {
        family(
            &mut out,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
        )
        .sample("process_cpu_seconds_total", &[], v);
    }
    if let Some(v) = process.start_time_seconds {
        family(
            &mut out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
        )
        .sample("process_start_time_seconds", &[], v);
    }
    out
}

/// Whether a handler's metric name could clash with one loopd writes.
fn builtin(name: &str) -> bool {
    name.starts_with("process_")
        || (name.starts_with("loopd_") && BUILTIN.iter().any(|b| name.starts_with(b)))
}

/// Families the status handler writes itself (and their prefixes, for a
/// histogram's `_bucket`, `_sum` and `_count`).
const BUILTIN: [&str; 24] = [
    "loopd_build_info",
    "loopd_workers",
    "loopd_connections_active",
    "loopd_connections_connected_total",
    "loopd_received_bytes_total",
    "loopd_sent_bytes_total",
    "loopd_frames_total",
    "loopd_oversize_frames_total",
    "loopd_output_queued_bytes",
    "loopd_datagrams_received_total",
    "loopd_datagrams_sent_total",
    "loopd_timers_active",
    "loopd_timers_fired_total",
    "loopd_connections_accepted_total",
    "loopd_connections_closed_total",
    "loopd_datagrams_dropped_total",
    "loopd_loop_passes_total",
    "loopd_loop_events_total",
    "loopd_reloads_total",
    "loopd_reload_failures_total",
    "loopd_loop_pass_busy_seconds",
    "loopd_loop_",
    "loopd_connections_",
    "loopd_datagrams_",
];

/// A handler-defined family: kind, help, and each (handler, metric).
type Declared<'a> = (&'a str, &'a str, Vec<(&'a str, &'a Value)>);
/// A series' labels, `handler` first.
type Labels = Vec<(String, String)>;
/// A series added up: value (a histogram's sum), bucket counts, bounds.
type SeriesSum = (f64, Vec<u64>, Vec<f64>);

/// The metrics handlers declared, one family per name: a name declared
/// with different kinds by two handlers keeps the first kind; one that
/// clashes with loopd's own is left out.
fn handler_metrics(out: &mut String, hs: &BTreeMap<String, Vec<&Value>>) {
    // name -> (kind, help, [(handler, metric)])
    let mut families: BTreeMap<&str, Declared<'_>> = BTreeMap::new();
    for (h, list) in hs {
        for inst in list {
            for m in inst["metrics"].as_array().into_iter().flatten() {
                let (Some(name), Some(kind)) = (m["name"].as_str(), m["kind"].as_str()) else {
                    continue;
                };
                if builtin(name) {
                    continue;
                }
                let help = m["help"].as_str().unwrap_or("");
                let f = families.entry(name).or_insert((kind, help, Vec::new()));
                if f.0 == kind {
                    f.2.push((h.as_str(), m));
                }
            }
        }
    }
    for (name, (kind, help, members)) in families {
        // Series of the same labels from several instances (draining) add up.
        let mut series: BTreeMap<Labels, SeriesSum> = BTreeMap::new();
        for (h, m) in members {
            let names: Vec<&str> = m["labels"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let bounds: Vec<f64> = m["buckets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .collect();
            for s in m["series"].as_array().into_iter().flatten() {
                let mut labels = vec![("handler".to_string(), h.to_string())];
                for (k, v) in names
                    .iter()
                    .zip(s["labels"].as_array().into_iter().flatten())
                {
                    labels.push((k.to_string(), v.as_str().unwrap_or("").to_string()));
                }
                let counts: Vec<u64> = s["counts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_u64)
                    .collect();
                let e = series
                    .entry(labels)
                    .or_insert_with(|| (0.0, vec![0; counts.len()], bounds.clone()));
                e.0 += s["value"].as_f64().unwrap_or(0.0);
                for (a, b) in e.1.iter_mut().zip(&counts) {
                    *a += b;
                }
            }
        }
        let mut fam = family(out, name, kind, help);
        for (labels, (value, counts, bounds)) in &series {
            let l: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            if kind == "histogram" {
                let mut cumulative = 0u64;
                for (i, c) in counts.iter().enumerate() {
                    cumulative += c;
                    let le = bounds.get(i).map_or("+Inf".to_string(), |b| format!("{b}"));
                    let mut with_le = l.clone();
                    with_le.push(("le", &le));
                    fam.sample(&format!("{name}_bucket"), &with_le, cumulative);
                }
                fam.sample(&format!("{name}_sum"), &l, value);
                fam.sample(&format!("{name}_count"), &l, cumulative);
            } else {
                fam.sample(name, &l, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_handlers_listeners_and_the_histogram() {
        let v: Value = serde_json::json!({
            "version": "0.1.0", "abi": "1.4", "workers": 1,
            "total": {
                "handlers": [
                    {"name": "echo", "draining": false, "active": 2, "bytes_in": 10,
                     "closed": {"peer": 3}, "datagrams_dropped": {}},
                    {"name": "echo", "draining": true, "active": 1, "bytes_in": 5,
                     "closed": {"peer": 1}, "datagrams_dropped": {}}
                ],
                "listeners": [{"url": "tcp://127.0.0.1:7000", "handler": "echo", "accepted": 6}]
            },
            "per_worker": [{"worker": 0, "loop": {
                "passes": 4, "busy_seconds": 0.5,
                "busy_bounds_us": [10, 100], "busy_buckets": [1, 2, 1]}}]
        });
        let text = render(&v, &Process::default());
        assert!(
            text.contains("loopd_connections_active{handler=\"echo\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("loopd_received_bytes_total{handler=\"echo\"} 15\n"));
        assert!(
            text.contains("loopd_connections_closed_total{handler=\"echo\",reason=\"peer\"} 4\n")
        );
        assert!(text.contains(
            "loopd_connections_accepted_total{handler=\"echo\",listener=\"tcp://127.0.0.1:7000\"} 6\n"
        ));
        assert!(
            text.contains("loopd_loop_pass_busy_seconds_bucket{worker=\"0\",le=\"0.00001\"} 1\n")
        );
        assert!(
            text.contains("loopd_loop_pass_busy_seconds_bucket{worker=\"0\",le=\"0.0001\"} 3\n")
        );
        assert!(text.contains("loopd_loop_pass_busy_seconds_bucket{worker=\"0\",le=\"+Inf\"} 4\n"));
        assert!(text.contains("loopd_loop_pass_busy_seconds_count{worker=\"0\"} 4\n"));
        assert!(text.contains("loopd_build_info{version=\"0.1.0\",abi=\"1.4\"} 1\n"));
    }

    #[test]
    fn handler_metrics_are_labelled_with_their_handler() {
        let v: Value = serde_json::json!({
            "total": {"handlers": [
                {"name": "web", "metrics": [
                    {"name": "req_total", "help": "Requests.", "kind": "counter",
                     "labels": ["code"], "buckets": [],
                     "series": [{"labels": ["200"], "value": 3.0, "counts": []}]},
                    {"name": "lat_seconds", "help": "", "kind": "histogram",
                     "labels": [], "buckets": [0.1, 1.0],
                     "series": [{"labels": [], "value": 2.5, "counts": [1, 0, 1]}]},
                    {"name": "loopd_connections_active", "help": "", "kind": "gauge",
                     "labels": [], "buckets": [], "series": [{"labels": [], "value": 9.0}]}
                ]}
            ]}
        });
        let text = render(&v, &Process::default());
        assert!(text.contains("# TYPE req_total counter\n"), "{text}");
        assert!(
            text.contains("req_total{handler=\"web\",code=\"200\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("lat_seconds_bucket{handler=\"web\",le=\"0.1\"} 1\n"));
        assert!(text.contains("lat_seconds_bucket{handler=\"web\",le=\"1\"} 1\n"));
        assert!(text.contains("lat_seconds_bucket{handler=\"web\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("lat_seconds_count{handler=\"web\"} 2\n"));
        assert!(
            !text.contains(" 9\n"),
            "a clash with loopd's own is left out: {text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn reads_proc_self_on_linux() {
        if cfg!(target_os = "linux") {
            let p = process();
            assert!(p.resident_bytes.unwrap() > 0);
            assert!(p.open_fds.unwrap() >= 3);
            assert!(p.start_time_seconds.unwrap() > 1.0e9);
        }
    }
}
