//! CPU load for tests that must hold under it: busy threads that report the CPU time they got,
//! so a test can check its premise (the cores really were busy) rather than assume it.

use std::{
    thread,
    time::{Duration, Instant},
};

use nix::time::{clock_gettime, ClockId};

/// Spins `threads` threads for `wall` each and returns the CPU time every one of them got.
pub fn spin(threads: usize, wall: Duration) -> Vec<Duration> {
    let spinners: Vec<_> = (0..threads)
        .map(|_| thread::spawn(move || spin_one(wall)))
        .collect();
    spinners
        .into_iter()
        .map(|spinner| spinner.join().unwrap_or_default())
        .collect()
}

/// One busy loop until `wall` has passed; the thread's own CPU time when it ends.
fn spin_one(wall: Duration) -> Duration {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < wall {
        n = std::hint::black_box(n.wrapping_add(1));
    }
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spinning_thread_gets_cpu_time() {
        let cpu = spin(1, Duration::from_millis(200));
        assert_eq!(cpu.len(), 1);
        // Idle threads would report next to nothing; a busy one most of its wall time.
        assert!(cpu[0] >= Duration::from_millis(50), "{cpu:?}");
        assert!(cpu[0] <= Duration::from_millis(400), "{cpu:?}");
    }
}
