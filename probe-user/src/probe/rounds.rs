//! A host's rounds waiting for their verdicts (pure): verdicts are decided whenever each
//! round's probes are answered or overdue, which for a far host may be several rounds later and
//! not in order; they reach the host's health in round order.

/// Rounds are numbered in the order they were sent (skipped rounds get no number).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// The oldest round without a verdict yet.
    next: u32,
    /// Bit `j`: round `next + j` has its verdict.
    decided: u32,
    /// Bit `j`: round `next + j` was answered.
    answered: u32,
}

/// How many rounds may wait at once: far more than a timeout allows (see `Timing`).
pub const MAX_PENDING: u32 = u32::BITS;

impl Pending {
    /// Nothing waiting; the next round sent is `round`.
    pub fn starting_at(round: u32) -> Self {
        Self {
            next: round,
            decided: 0,
            answered: 0,
        }
    }

    /// Records `round`'s verdict; calls `feed` with each verdict now due, oldest first. A
    /// verdict for a round already fed, or too far ahead, is ignored.
    pub fn decide(&mut self, round: u32, answered: bool, mut feed: impl FnMut(bool)) {
        let j = round.wrapping_sub(self.next);
        if j >= MAX_PENDING {
            return;
        }
        self.decided |= 1 << j;
        if answered {
            self.answered |= 1 << j;
        }
        while self.decided & 1 != 0 {
            feed(self.answered & 1 != 0);
            self.decided >>= 1;
            self.answered >>= 1;
            self.next = self.next.wrapping_add(1);
        }
    }

    /// The oldest round without a verdict.
    pub fn next(&self) -> u32 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(p: &mut Pending, round: u32, answered: bool) -> Vec<bool> {
        let mut out = Vec::new();
        p.decide(round, answered, |a| out.push(a));
        out
    }

    #[test]
    fn verdicts_in_order_go_straight_through() {
        let mut p = Pending::starting_at(7);
        assert_eq!(fed(&mut p, 7, true), [true]);
        assert_eq!(fed(&mut p, 8, false), [false]);
        assert_eq!(p.next(), 9);
    }

    #[test]
    fn a_late_verdict_releases_the_ones_after_it() {
        let mut p = Pending::starting_at(0);
        assert!(fed(&mut p, 1, true).is_empty());
        assert!(fed(&mut p, 2, false).is_empty());
        assert_eq!(fed(&mut p, 0, false), [false, true, false]);
        assert_eq!(p.next(), 3);
        assert!(fed(&mut p, 4, true).is_empty());
        assert_eq!(fed(&mut p, 3, true), [true, true]);
    }

    #[test]
    fn old_and_far_future_verdicts_are_ignored() {
        let mut p = Pending::starting_at(10);
        assert_eq!(fed(&mut p, 10, true), [true]);
        assert!(fed(&mut p, 10, false).is_empty(), "already fed");
        assert!(
            fed(&mut p, 11 + MAX_PENDING, true).is_empty(),
            "too far ahead"
        );
        assert_eq!(p.next(), 11);
    }

    #[test]
    fn round_numbers_wrap() {
        let mut p = Pending::starting_at(u32::MAX);
        assert!(fed(&mut p, 0, true).is_empty());
        assert_eq!(fed(&mut p, u32::MAX, true), [true, true]);
        assert_eq!(p.next(), 1);
    }
}
