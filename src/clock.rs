//! Time: a millisecond clock read through tokio (so simulated time works) and the hybrid
//! logical clock that stamps every record version.

use std::sync::atomic::{AtomicU64, Ordering};

/// Milliseconds since the Unix epoch, read as a fixed wall-clock start plus tokio's monotonic
/// elapsed time. Under `tokio::time::pause()` or a simulator the clock moves with simulated
/// time; a wall clock that jumps does not move it.
#[derive(Debug, Clone)]
pub struct Clock {
    start_wall_ms: u64,
    start: tokio::time::Instant,
}

impl Clock {
    /// A clock that starts at the system's wall-clock time.
    pub fn system() -> Clock {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Clock::starting_at(wall)
    }

    /// A clock that reads `start_wall_ms` now (tests and simulations use skewed starts).
    pub fn starting_at(start_wall_ms: u64) -> Clock {
        Clock {
            start_wall_ms,
            start: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.start_wall_ms + self.start.elapsed().as_millis() as u64
    }
}

/// Bits of an HLC value that hold the logical counter; the rest hold physical milliseconds.
const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;

/// A hybrid logical clock: `physical_ms << 16 | logical`. Every value it hands out is larger
/// than every value it handed out or observed before, so a node whose wall clock is behind still
/// stamps its writes newer than anything it has seen.
#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
}

impl Hlc {
    pub fn new() -> Hlc {
        Hlc::default()
    }

    /// A fresh timestamp for a local write at wall time `now_ms`.
    pub fn tick(&self, now_ms: u64) -> u64 {
        let phys = now_ms << LOGICAL_BITS;
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let next = if phys > prev {
                phys
            } else {
                prev.saturating_add(1)
            };
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => prev = actual,
            }
        }
    }

    /// Moves the clock past a timestamp received from another node.
    pub fn observe(&self, remote: u64) {
        self.last.fetch_max(remote, Ordering::AcqRel);
    }

    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }
}

/// The physical milliseconds inside an HLC value.
pub fn hlc_physical_ms(hlc: u64) -> u64 {
    hlc >> LOGICAL_BITS
}

/// The logical counter inside an HLC value.
pub fn hlc_logical(hlc: u64) -> u64 {
    hlc & LOGICAL_MASK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hlc_grows_even_when_wall_clock_goes_back() {
        let h = Hlc::new();
        let a = h.tick(1_000);
        let b = h.tick(999);
        let c = h.tick(1_000);
        assert!(a < b && b < c);
        assert_eq!(hlc_physical_ms(a), 1_000);
        assert_eq!(hlc_logical(b), 1);
    }

    #[test]
    fn hlc_moves_past_observed_remote_values() {
        let h = Hlc::new();
        let remote = (5_000 << LOGICAL_BITS) | 7;
        h.observe(remote);
        assert!(
            h.tick(10) > remote,
            "a slow wall clock must not lose writes"
        );
    }
}
