//! The results file: everything measured in one run, from which
//! `docs/benchmarks.md` and its plots are generated.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One run of the runner.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    /// Machine, versions, flags and conditions.
    pub meta: Meta,
    /// One entry per benchmark, in order.
    pub benches: Vec<Bench>,
}

/// Where and how the figures were taken.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Meta {
    /// `all` or `smoke` (smoke figures mean nothing).
    pub mode: String,
    /// The command that produced this file.
    pub command: String,
    /// Start and end, UTC, RFC 3339.
    pub started: String,
    /// See `started`.
    pub finished: String,
    /// loopd's commit (`git describe --always --dirty`).
    pub commit: String,
    /// CPU model, cores, memory, kernel.
    pub machine: BTreeMap<String, String>,
    /// Versions of everything compared and of the tools.
    pub versions: BTreeMap<String, String>,
    /// Build flags and settings.
    pub flags: BTreeMap<String, String>,
    /// Load average before the first and after the last benchmark.
    pub load_before: [f64; 3],
    /// See `load_before`.
    pub load_after: [f64; 3],
    /// Timed rounds per figure.
    pub rounds: usize,
    /// Seconds per timed run.
    pub run_secs: f64,
    /// Seconds of warm-up per peer before the rounds.
    pub warmup_secs: f64,
}

/// One benchmark (echo, http, ...).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Bench {
    /// `echo`, `http`, `chat`, `idle`, `udp`, `startup`.
    pub id: String,
    /// Why it did not run, if it did not.
    pub skipped: Option<String>,
    /// The measured cases.
    pub cases: Vec<Case>,
    /// Remarks recorded while running (e.g. wrk errors, setup times).
    pub notes: Vec<String>,
}

/// One load shape (e.g. 50 connections, 64-byte messages) run on every peer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Case {
    /// Human label, e.g. `c=50 size=64`.
    pub label: String,
    /// The parameters behind the label.
    pub params: BTreeMap<String, f64>,
    /// Every peer's runs, in the same round order.
    pub peers: Vec<PeerRuns>,
}

/// One peer's timed runs of a case: `runs[i]` is round `i`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerRuns {
    /// Peer name (`loopd`, `tokio`, `c-epoll`, `nginx`, ...).
    pub peer: String,
    /// Metric name → value, one map per round.
    pub runs: Vec<BTreeMap<String, f64>>,
}

impl Case {
    /// The runs of `peer`, if it ran.
    pub fn peer(&self, peer: &str) -> Option<&PeerRuns> {
        self.peers.iter().find(|p| p.peer == peer)
    }

    /// Appends one round of `peer`.
    pub fn push(&mut self, peer: &str, run: BTreeMap<String, f64>) {
        match self.peers.iter_mut().find(|p| p.peer == peer) {
            Some(p) => p.runs.push(run),
            None => self.peers.push(PeerRuns {
                peer: peer.to_string(),
                runs: vec![run],
            }),
        }
    }
}

impl PeerRuns {
    /// One metric across rounds (rounds without it are left out).
    pub fn metric(&self, name: &str) -> Vec<f64> {
        self.runs
            .iter()
            .filter_map(|r| r.get(name).copied())
            .collect()
    }
}

impl Results {
    /// The benchmark `id`, if present.
    pub fn bench(&self, id: &str) -> Option<&Bench> {
        self.benches.iter().find(|b| b.id == id)
    }
}
