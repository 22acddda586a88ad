//! What a run measures and reports: latency histograms, the counters and progress line of a
//! phase, the fields every scenario reports, and the nodes' memory and CPU read from /proc.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

/// Largest latency the histograms hold, µs (an hour: nothing is clipped in practice).
const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Significant figures the histograms keep: a percentile is exact to within 1%. (Three made
/// each histogram ~270 KB; with one per pipelined worker, recording a latency was a cache miss
/// that cost the generator ~13% of its CPU.)
const LATENCY_SIGFIG: u8 = 2;

// ---------------------------------------------------------------------------------------------
// Counters, histograms, progress

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG).expect("valid histogram bounds")
}

pub(crate) fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// What the workers of one phase count, read by the progress line.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) ops: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) first_error: Mutex<Option<String>>,
}

impl Counters {
    pub(crate) fn error(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            let e = e.to_string();
            eprintln!("distro-bench: request failed: {e}");
            *first = Some(e);
        }
    }

    pub(crate) fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    pub(crate) fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// Prints `[phase] elapsed, ops, rate over the last second, errors, extra` to stderr once a
/// second until dropped.
pub(crate) struct Progress {
    stop: CancellationToken,
}

impl Progress {
    pub(crate) fn start(
        phase: &'static str,
        counters: Arc<Counters>,
        extra: Arc<Mutex<String>>,
    ) -> Progress {
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut last = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let ops = counters.ops();
                let extra = extra.lock().unwrap().clone();
                eprintln!(
                    "[{phase} {:6.1}s] ops {ops} ({}/s), errors {}{}{extra}",
                    start.elapsed().as_secs_f64(),
                    ops - last,
                    counters.errors(),
                    if extra.is_empty() { "" } else { ", " },
                );
                last = ops;
            }
        });
        Progress { stop }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The fields every scenario reports.
pub(crate) fn summary(
    scenario: &str,
    counters: &Counters,
    seconds: f64,
    hist: &Histogram<u64>,
) -> Map<String, Value> {
    let ops = counters.ops();
    let mut m = Map::new();
    m.insert("scenario".into(), json!(scenario));
    m.insert("ops".into(), json!(ops));
    m.insert("errors".into(), json!(counters.errors()));
    m.insert("seconds".into(), json!(round3(seconds)));
    m.insert(
        "ops_per_s".into(),
        json!((ops as f64 / seconds.max(1e-9)).round()),
    );
    insert_percentiles(&mut m, "", hist);
    if let Some(e) = counters.first_error.lock().unwrap().clone() {
        m.insert("first_error".into(), json!(e));
    }
    m
}

pub(crate) fn insert_percentiles(m: &mut Map<String, Value>, prefix: &str, hist: &Histogram<u64>) {
    let q = |q: f64| {
        if hist.is_empty() {
            Value::Null
        } else {
            json!(hist.value_at_quantile(q))
        }
    };
    m.insert(format!("{prefix}p50_us"), q(0.5));
    m.insert(format!("{prefix}p99_us"), q(0.99));
    m.insert(format!("{prefix}p999_us"), q(0.999));
    m.insert(
        format!("{prefix}max_us"),
        if hist.is_empty() {
            Value::Null
        } else {
            json!(hist.max())
        },
    );
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// ---------------------------------------------------------------------------------------------
// /proc: memory and CPU of the nodes

/// Samples the nodes' resident memory (VmRSS, and the kernel's own peak VmHWM) four times a
/// second on a thread of its own, so a busy runtime cannot skip samples.
pub(crate) struct RssMonitor {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<RssReport>,
}

#[derive(Default)]
pub(crate) struct RssReport {
    /// Largest peak RSS of any node, bytes.
    pub(crate) peak_max: u64,
    /// Largest RSS of any node at the last sample, bytes.
    pub(crate) last: u64,
}

impl RssMonitor {
    pub(crate) fn start(pids: Vec<u32>) -> RssMonitor {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut report = RssReport::default();
            loop {
                let mut last = 0;
                for pid in &pids {
                    let status =
                        std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                    let rss = status_kib(&status, "VmRSS:") * 1024;
                    let hwm = status_kib(&status, "VmHWM:") * 1024;
                    report.peak_max = report.peak_max.max(rss).max(hwm);
                    last = last.max(rss);
                }
                report.last = last;
                if flag.load(Ordering::Acquire) {
                    return report;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        RssMonitor { stop, thread }
    }

    pub(crate) fn stop(self) -> RssReport {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap_or_default()
    }
}

fn status_kib(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The CPU this process (the generator) and the spawned nodes used over one measured phase.
///
/// A load generator sharing the machine with what it measures takes CPU from it: the share it
/// took is reported with every scenario (`generator_cpu_share`), so a figure can be judged by
/// how much of the machine the nodes really had. Kernel work (loopback TCP) is counted for the
/// process in whose system call or time slice it ran.
pub(crate) struct CpuMeter {
    pids: Vec<u32>,
    generator_before_s: f64,
    nodes_before_s: f64,
}

impl CpuMeter {
    /// Starts measuring; `pids` are the nodes' (empty when the nodes were not spawned here).
    pub(crate) fn start(pids: &[u32]) -> CpuMeter {
        CpuMeter {
            pids: pids.to_vec(),
            generator_before_s: proc_cpu_seconds("self"),
            nodes_before_s: cpu_seconds(pids),
        }
    }

    /// Adds `generator_cpu_s`, `nodes_cpu_s` and `generator_cpu_share` (of the two together) for
    /// the phase so far; the node figures are null when the nodes are not this run's children.
    pub(crate) fn report(&self, out: &mut Map<String, Value>) {
        let generator = proc_cpu_seconds("self") - self.generator_before_s;
        out.insert("generator_cpu_s".into(), json!(round3(generator)));
        if self.pids.is_empty() {
            out.insert("nodes_cpu_s".into(), Value::Null);
            out.insert("generator_cpu_share".into(), Value::Null);
            return;
        }
        let nodes = cpu_seconds(&self.pids) - self.nodes_before_s;
        out.insert("nodes_cpu_s".into(), json!(round3(nodes)));
        let share = generator / (generator + nodes).max(1e-9);
        out.insert("generator_cpu_share".into(), json!(round3(share)));
    }
}

/// User + system CPU seconds of a process (`self` or a pid), from /proc/<pid>/stat.
pub(crate) fn proc_cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Linux reports these in USER_HZ, which is 100 on every architecture it supports.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

pub(crate) fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter().map(|p| proc_cpu_seconds(&p.to_string())).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_parse() {
        let s = "Name:\tdistrod\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(s, "VmRSS:"), 1024);
        assert_eq!(status_kib(s, "VmHWM:"), 2048);
        assert_eq!(status_kib(s, "VmSwap:"), 0);
    }
}
