//! CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads, so the kernel can compute
//! round-trip times from the timestamps we put in our probes.

use nix::time::{clock_gettime, ClockId};

pub fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC always exists on Linux, and reading it cannot fail with valid arguments.
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|now| (now.tv_sec() as u64) * 1_000_000_000 + now.tv_nsec() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn monotonic_ns_moves_forward() {
        let a = super::monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::monotonic_ns();
        assert!(b > a + 1_000_000, "{a} {b}");
    }
}
