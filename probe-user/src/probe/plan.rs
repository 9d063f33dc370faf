//! How the probe loop paces itself (pure): the round and window numbering across changes of
//! timing, how a round is cut into batches of hosts sent apart, the floor of the reply wait,
//! each probe's sequence and answer bits, and when a watched host becomes suspect.

use std::{ops::Range, time::Duration};

use probe_common::maps::ANSWER_BITS;
use tokio::time::Instant;

use crate::config::timing::Timing;

/// Where the round numbering stands: the round at `start` is `round`, and the first of window
/// `window`. Reset when a reload changes the timing.
#[derive(Clone, Copy, Debug)]
pub struct Epoch {
    pub start: Instant,
    pub round: u64,
    pub window: u32,
}

impl Epoch {
    /// The round (counted from the very first) that a tick `at` belongs to, and its window.
    pub fn locate(&self, at: Instant, timing: &Timing) -> (u64, u32) {
        let k = round_index(at - self.start, timing.round());
        (self.round + k, self.window_of(self.round + k, timing))
    }

    /// When round `k` (at or after this epoch's first) begins.
    pub fn start_of(&self, k: u64, timing: &Timing) -> Instant {
        let rounds = u32::try_from(k.saturating_sub(self.round)).unwrap_or(u32::MAX);
        self.start + timing.round() * rounds
    }

    /// The window round `k` belongs to (window numbers wrap).
    pub fn window_of(&self, k: u64, timing: &Timing) -> u32 {
        let windows = k.saturating_sub(self.round) / u64::from(timing.probes.max(1));
        self.window.wrapping_add(windows as u32)
    }
}

/// How a round is paced: `slices` batches of contiguous hosts, `spacing` apart, each host's
/// probes checked no sooner than `floor` after their send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    hosts: usize,
    pub slices: usize,
    spacing: Duration,
    /// The least reply wait: today's LAN wait, `min(round / (retries + 2), 10 ms)`.
    pub floor: Duration,
    /// How far ahead of its time a wake-up also sends a batch of the round being sent, or
    /// looks at a probe: an eighth of the floor, at most half the batch spacing's minimum.
    /// Batches and checks of neighbouring times then share one wake-up. A look that early
    /// finds any host that answers at all answered (its reply is overdue only a floor after
    /// the send); one that has not is looked at again when it is overdue.
    pub look_ahead: Duration,
}

/// Batches are at least this far apart: finer pacing only costs timer wake-ups.
const MIN_SPACING: Duration = Duration::from_millis(1);
/// Hosts a batch holds before the round is cut further: fewer only cost wake-ups.
pub const MIN_BATCH: usize = 256;

impl Plan {
    pub fn new(timing: &Timing, hosts: usize) -> Self {
        let round = timing.round();
        let floor = reply_wait(round, timing.retries);
        // LAN hosts' checks fall inside the round they were sent in, as before.
        let span = round.saturating_sub(floor * timing.attempts());
        let span = if span >= MIN_SPACING { span } else { round / 2 };
        let max_slices = (span.as_nanos() / MIN_SPACING.as_nanos()).max(1) as usize;
        let slices = hosts.div_ceil(MIN_BATCH).clamp(1, max_slices);
        let spacing = span / slices as u32;
        Self {
            hosts,
            slices,
            spacing,
            floor,
            look_ahead: (floor / 8).min(MIN_SPACING / 2),
        }
    }

    /// When slice `s` is sent, from the round's start.
    pub fn send_offset(&self, s: usize) -> Duration {
        self.spacing * s as u32
    }

    /// Hosts of slice `s`.
    pub fn range(&self, s: usize) -> Range<usize> {
        s * self.hosts / self.slices..(s + 1) * self.hosts / self.slices
    }
}

/// The reply wait's floor: long enough for any LAN round trip, short enough that every attempt
/// of a LAN host fits in its round.
fn reply_wait(round: Duration, retries: u32) -> Duration {
    (round / (retries + 2)).min(REPLY_WAIT)
}

const REPLY_WAIT: Duration = Duration::from_millis(10);

/// The answer bits of `count` consecutive probe sequences from `first` (fewer than 64).
pub fn seq_mask(first: u32, count: u32) -> u64 {
    let count = count.min(ANSWER_BITS);
    let ones = if count == ANSWER_BITS {
        u64::MAX
    } else {
        (1u64 << count) - 1
    };
    ones.rotate_left(first % ANSWER_BITS)
}

/// The watched host's silent rounds at which the failover is told it is suspect: early enough
/// that a check lasting `lead` is over by the time the host could be DOWN.
pub fn suspect_threshold(timing: &Timing, lead: Duration) -> u32 {
    let down_at = timing.failed_windows.saturating_mul(timing.probes);
    let lead_rounds = lead.as_nanos().div_ceil(timing.round().as_nanos().max(1)) as u32 + 1;
    down_at.saturating_sub(lead_rounds).max(1)
}

/// Which round a tick `elapsed` after the start belongs to.
fn round_index(elapsed: Duration, round: Duration) -> u64 {
    (elapsed.as_nanos() / round.as_nanos().max(1)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(window_ms: u64, probes: u32, retries: u32) -> Timing {
        Timing {
            window: Duration::from_millis(window_ms),
            probes,
            failed_windows: 2,
            recover_windows: 2,
            retries,
            timeout: Duration::from_millis(window_ms),
        }
    }

    #[test]
    fn ticks_map_to_rounds_even_when_slightly_late() {
        let round = Duration::from_micros(33_333);
        assert_eq!(round_index(Duration::ZERO, round), 0);
        assert_eq!(
            round_index(round * 3 + Duration::from_micros(200), round),
            3
        );
        assert_eq!(round_index(round * 7 - Duration::from_nanos(1), round), 6);
    }

    #[test]
    fn every_attempt_is_judged_within_its_round() {
        for (round_ms, retries) in [(333, 0), (333, 1), (33, 1), (16, 1), (4, 0), (2, 3)] {
            let round = Duration::from_millis(round_ms);
            let wait = reply_wait(round, retries);
            assert!(wait <= REPLY_WAIT);
            assert!(
                wait * (retries + 1) < round,
                "{round:?} {retries}: {wait:?}"
            );
        }
        assert_eq!(reply_wait(Duration::from_millis(333), 1), REPLY_WAIT);
    }

    #[test]
    fn a_large_round_is_spread_in_millisecond_batches() {
        // 131,072 hosts, 1 s windows, 2 probes: 500 ms rounds, 10 ms waits, one retry.
        let t = timing(1000, 2, 1);
        let plan = Plan::new(&t, 131_072);
        assert_eq!(plan.slices, 480);
        assert_eq!(plan.spacing, Duration::from_millis(1));
        assert_eq!(plan.floor, Duration::from_millis(10));
        // The last batch's LAN checks fall inside the round.
        assert!(plan.send_offset(479) + plan.floor * 2 <= t.round());
        // Every host is in exactly one slice, and slices differ by at most one host.
        let sizes: Vec<usize> = (0..plan.slices).map(|s| plan.range(s).len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 131_072);
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        assert_eq!(plan.range(0).start, 0);
        assert_eq!(plan.range(479).end, 131_072);
    }

    #[test]
    fn batches_are_sized_to_the_host_count() {
        let t = timing(1000, 2, 1);
        // No more wake-ups than the work needs: 2,048 hosts are 8 batches, not 480.
        assert_eq!(Plan::new(&t, 2048).slices, 8);
        assert_eq!(Plan::new(&t, 256).slices, 1);
        assert_eq!(Plan::new(&t, 257).slices, 2);
        let plan = Plan::new(&timing(100, 3, 1), 1);
        assert_eq!((plan.slices, plan.range(0)), (1, 0..1));
        // 10 ms windows: 3.3 ms rounds leave no span beyond the waits: half the round.
        let plan = Plan::new(&timing(10, 3, 1), 1000);
        assert_eq!(plan.slices, 1);
        assert!(plan.floor < Duration::from_millis(2), "{:?}", plan.floor);
    }

    #[test]
    fn the_look_ahead_is_a_fraction_of_the_floor_and_under_a_batch_spacing() {
        // 1 s windows: 10 ms floor, batches 1 ms apart: neighbours within 0.5 ms share a wake.
        let plan = Plan::new(&timing(1000, 2, 1), 131_072);
        assert_eq!(plan.look_ahead, Duration::from_micros(500));
        assert!(plan.look_ahead < plan.spacing);
        // 10 ms windows, 3 probes, 1 retry: 1.11 ms floor, looks at most 139 us early.
        let plan = Plan::new(&timing(10, 3, 1), 2);
        assert_eq!(plan.look_ahead, plan.floor / 8);
        assert!(
            plan.look_ahead < Duration::from_micros(140),
            "{:?}",
            plan.look_ahead
        );
    }

    #[test]
    fn sequence_masks_cover_their_probes_and_wrap() {
        assert_eq!(seq_mask(0, 2), 0b11);
        assert_eq!(seq_mask(5, 3), 0b111 << 5);
        assert_eq!(seq_mask(63, 2), (1 << 63) | 1);
        assert_eq!(seq_mask(64 + 1, 1), 0b10);
        assert_eq!(seq_mask(u32::MAX, 2), (1 << 63) | 1);
        assert_eq!(seq_mask(7, 64), u64::MAX);
        assert_eq!(seq_mask(7, 0), 0);
    }

    #[test]
    fn rounds_begin_on_time_and_windows_wrap() {
        let start = Instant::now();
        let t = timing(300, 3, 1);
        let epoch = Epoch {
            start,
            round: 10,
            window: u32::MAX,
        };
        assert_eq!(epoch.start_of(10, &t), start);
        assert_eq!(epoch.start_of(13, &t), start + Duration::from_millis(300));
        assert_eq!(epoch.window_of(12, &t), u32::MAX);
        assert_eq!(
            epoch.window_of(13, &t),
            0,
            "window numbers wrap, never saturate"
        );
    }

    #[test]
    fn window_numbers_run_on_across_a_change_of_timing() {
        let start = Instant::now();
        let old = timing(300, 3, 1); // 100 ms rounds
        let epoch = Epoch {
            start,
            round: 0,
            window: 1,
        };
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(epoch.locate(at(0), &old), (0, 1));
        assert_eq!(epoch.locate(at(299), &old), (2, 1));
        assert_eq!(epoch.locate(at(300), &old), (3, 2));
        // Reloaded at the start of window 3 (round 6) to 50 ms windows of 2 probes.
        let new = timing(50, 2, 1);
        let epoch = Epoch {
            start: at(600),
            round: 6,
            window: 3,
        };
        assert_eq!(epoch.locate(at(600), &new), (6, 3));
        assert_eq!(epoch.locate(at(625), &new), (7, 3));
        assert_eq!(epoch.locate(at(650), &new), (8, 4));
    }

    #[test]
    fn the_suspect_signal_leaves_time_for_the_conflict_check() {
        // 100 ms window: 33 ms rounds; a 50 ms check needs 2 rounds + 1 of slack: at 3 of 6.
        assert_eq!(
            suspect_threshold(&timing(100, 3, 1), Duration::from_millis(50)),
            3
        );
        // 60 ms window: 20 ms rounds; 50 ms is 2.5 rounds, so 3 + 1: at 2 of 6.
        assert_eq!(
            suspect_threshold(&timing(60, 3, 1), Duration::from_millis(50)),
            2
        );
        // A check longer than the whole detection still starts after one silent round.
        assert_eq!(
            suspect_threshold(&timing(50, 3, 1), Duration::from_secs(1)),
            1
        );
        assert_eq!(suspect_threshold(&timing(1000, 3, 1), Duration::ZERO), 5);
    }
}
