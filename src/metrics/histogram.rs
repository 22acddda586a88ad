//! [`LatencyHistogram`]: the latency histograms' atomic buckets (the registry crate's histogram
//! takes a mutex per observation).

use super::*;

/// Upper bounds of the latency histograms' buckets, microseconds: 100 µs to 10 s, about three
/// per decade, which covers a local read (well under a millisecond) as well as a forwarded write
/// waiting out a slow owner (the forward deadline is 2 s).
pub(super) const LATENCY_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram whose observation is two relaxed atomic adds (no lock): one bucket count
/// and the sum. Clones share the same counts.
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram(Arc<HistogramCounts>);

#[derive(Debug, Default)]
pub(super) struct HistogramCounts {
    /// Per bucket of [`LATENCY_BOUNDS_US`], and one more for everything above the last bound.
    pub(super) buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    pub(super) sum_us: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, d: std::time::Duration) {
        self.observe_us(d.as_micros().min(u64::MAX as u128) as u64);
    }

    pub fn observe_us(&self, us: u64) {
        let i = LATENCY_BOUNDS_US.partition_point(|&b| b < us);
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = Vec::with_capacity(LATENCY_BOUNDS_US.len() + 1);
        let mut count = 0;
        for (i, b) in self.0.buckets.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            count += n;
            let bound = LATENCY_BOUNDS_US
                .get(i)
                .map_or(f64::INFINITY, |&us| us as f64 / 1e6);
            buckets.push((bound, n));
        }
        let sum = self.0.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram(
            sum,
            count,
            &buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}
