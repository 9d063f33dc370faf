//! Each host's round-trip estimate, and when its reply is overdue (pure).
//!
//! RFC 6298's smoothed RTT and RTT variation, from the kernel's RTT of each counted reply. A
//! probe's reply is overdue `SRTT + max(4 * RTTVAR, floor)` after its send, kept between the
//! floor and the timeout; before the first sample, only the timeout tells. So a LAN host is
//! retried and judged after the floor (today's reply wait: `min(round / (retries + 2), 10 ms)`),
//! and a far host only once its reply is really late.

use std::time::Duration;

/// A host's estimate; `Default` is "no sample yet".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RttEstimate {
    /// Microseconds; `u32::MAX` until the first sample.
    srtt_us: u32,
    rttvar_us: u32,
}

impl Default for RttEstimate {
    fn default() -> Self {
        Self {
            srtt_us: u32::MAX,
            rttvar_us: 0,
        }
    }
}

impl RttEstimate {
    /// Folds in one measured round trip.
    pub fn sample(&mut self, rtt: Duration) {
        let r = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX - 1);
        if self.srtt_us == u32::MAX {
            self.srtt_us = r;
            self.rttvar_us = r / 2;
            return;
        }
        let (srtt, rttvar, r) = (
            u64::from(self.srtt_us),
            u64::from(self.rttvar_us),
            u64::from(r),
        );
        // RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|, then SRTT = 7/8 SRTT + 1/8 R.
        let rttvar = (3 * rttvar + srtt.abs_diff(r)) / 4;
        let srtt = (7 * srtt + r) / 8;
        self.rttvar_us = u32::try_from(rttvar).unwrap_or(u32::MAX - 1);
        self.srtt_us = u32::try_from(srtt).unwrap_or(u32::MAX - 1);
    }

    /// The smoothed round trip, once there is one.
    pub fn srtt(&self) -> Option<Duration> {
        (self.srtt_us != u32::MAX).then(|| Duration::from_micros(u64::from(self.srtt_us)))
    }

    /// How long after its send a probe's reply is overdue.
    pub fn due(&self, floor: Duration, timeout: Duration) -> Duration {
        let Some(srtt) = self.srtt() else {
            return timeout;
        };
        let spread = (Duration::from_micros(u64::from(self.rttvar_us)) * 4).max(floor);
        (srtt + spread).clamp(floor.min(timeout), timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: Duration = Duration::from_millis(10);
    const TIMEOUT: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn before_any_sample_only_the_timeout_tells() {
        let e = RttEstimate::default();
        assert_eq!(e.srtt(), None);
        assert_eq!(e.due(FLOOR, TIMEOUT), TIMEOUT);
    }

    #[test]
    fn a_lan_host_is_due_after_the_floor() {
        let mut e = RttEstimate::default();
        for _ in 0..20 {
            e.sample(Duration::from_micros(80));
        }
        let due = e.due(FLOOR, TIMEOUT);
        assert!(due >= FLOOR && due <= FLOOR + ms(1), "{due:?}");
    }

    #[test]
    fn a_far_host_is_due_just_after_its_steady_rtt_and_never_before_it() {
        for rtt in [20, 50, 150, 400] {
            let mut e = RttEstimate::default();
            for n in 0..50 {
                e.sample(ms(rtt));
                let due = e.due(FLOOR, TIMEOUT);
                assert!(due > ms(rtt), "{rtt} ms after {n} samples: due {due:?}");
            }
            let due = e.due(FLOOR, TIMEOUT);
            assert!(due <= ms(rtt) + FLOOR + ms(1), "{rtt} ms: due {due:?}");
        }
    }

    #[test]
    fn a_host_further_than_the_timeout_is_due_at_the_timeout() {
        let mut e = RttEstimate::default();
        e.sample(ms(1500));
        assert_eq!(e.due(FLOOR, TIMEOUT), TIMEOUT);
        assert_eq!(e.due(FLOOR, ms(2000)), ms(2000));
    }

    #[test]
    fn jitter_widens_the_wait() {
        let mut steady = RttEstimate::default();
        let mut jittery = RttEstimate::default();
        for n in 0..40u64 {
            steady.sample(ms(50));
            jittery.sample(ms(if n % 2 == 0 { 30 } else { 70 }));
        }
        assert!(jittery.due(FLOOR, TIMEOUT) > steady.due(FLOOR, TIMEOUT) + ms(30));
    }

    #[test]
    fn absurd_samples_saturate() {
        let mut e = RttEstimate::default();
        e.sample(Duration::from_secs(1 << 40));
        e.sample(Duration::ZERO);
        assert!(e.srtt().is_some());
        assert_eq!(e.due(FLOOR, TIMEOUT), TIMEOUT);
    }
}
