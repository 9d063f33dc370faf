//! Exponential backoff for work retried against a server (mail, DNS): the first wait, doubled
//! after each further failure, up to a ceiling. Pure.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// What xdprobe uses with servers: half a second, doubling to 30 s.
    pub const SERVER: Backoff = Backoff {
        first: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };

    /// The wait before retry number `failures` (1 for the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.first
            .checked_mul(1 << doublings)
            .map_or(self.max, |d| d.min(self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_to_thirty() {
        let steps: Vec<u128> = (1..=9)
            .map(|n| Backoff::SERVER.delay(n).as_millis())
            .collect();
        assert_eq!(
            steps,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(Backoff::SERVER.delay(u32::MAX), Backoff::SERVER.max);
        assert_eq!(Backoff::SERVER.delay(0), Backoff::SERVER.first);
    }

    #[test]
    fn a_huge_first_wait_saturates_at_the_ceiling() {
        let b = Backoff {
            first: Duration::from_secs(u64::MAX / 2),
            max: Duration::from_secs(60),
        };
        assert_eq!(b.delay(40), Duration::from_secs(60));
    }
}
