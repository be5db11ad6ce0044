//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to Unix wall-clock time.

/// The offset between CLOCK_REALTIME and CLOCK_MONOTONIC, sampled once at start so all spans of
/// a run share one time base (a wall-clock step later does not reorder them).
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    offset_ns: i128,
}

impl WallClock {
    pub fn new() -> Self {
        // Sample monotonic between two realtime reads and take the midpoint, to bound the error
        // by the time between the reads.
        let before = now(libc::CLOCK_REALTIME);
        let monotonic = now(libc::CLOCK_MONOTONIC);
        let after = now(libc::CLOCK_REALTIME);
        Self { offset_ns: (before + after) / 2 - monotonic }
    }

    #[cfg(test)]
    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn to_unix_nanos(self, monotonic_ns: u64) -> u64 {
        (i128::from(monotonic_ns) + self.offset_ns).clamp(0, i128::from(u64::MAX)) as u64
    }

    /// The current kernel monotonic time, comparable with event timestamps.
    pub fn monotonic_now() -> u64 {
        now(libc::CLOCK_MONOTONIC) as u64
    }

    /// The current wall-clock time in Unix ns.
    pub fn unix_now(self) -> u64 {
        self.to_unix_nanos(Self::monotonic_now())
    }
}

fn now(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_monotonic_to_now() {
        let clock = WallClock::new();
        let realtime = now(libc::CLOCK_REALTIME) as u64;
        let converted = clock.unix_now();
        assert!(converted.abs_diff(realtime) < 50_000_000, "{converted} vs {realtime}");
    }
}
