//! How the probe loop paces itself (pure): the steps of a round (sends, retries and
//! judgements of each slice of hosts, at fixed offsets), the reply wait, the round and window
//! numbering across changes of timing, and when a watched host becomes suspect.

use std::{ops::Range, time::Duration};

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
        let window = u64::from(self.window) + k / u64::from(timing.probes.max(1));
        (self.round + k, u32::try_from(window).unwrap_or(u32::MAX))
    }
}

/// How a round is paced: `slices` groups of contiguous hosts, `spacing` apart, each checked
/// `wait` after every attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    hosts: usize,
    pub slices: usize,
    spacing: Duration,
    pub wait: Duration,
    attempts: u32,
    /// Every step of a round, in time order, as offsets from the round's start: the same for
    /// every round, so computed once.
    pub events: Vec<Event>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    // Ties at the same instant: judge and retry what is due before sending more.
    Judge,
    Retry,
    Send,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub offset: Duration,
    pub step: Step,
    pub slice: usize,
}

/// Slices are at least this far apart: finer pacing only costs timer wake-ups.
const MIN_SPACING: Duration = Duration::from_millis(1);

impl Plan {
    pub fn new(timing: &Timing, hosts: usize) -> Self {
        let round = timing.round();
        let attempts = timing.retries + 1;
        let wait = reply_wait(round, timing.retries);
        let span = round.saturating_sub(wait * attempts);
        let max_slices = (span.as_nanos() / MIN_SPACING.as_nanos()).max(1) as usize;
        let slices = hosts.clamp(1, max_slices);
        let spacing = span / slices as u32;
        Self {
            hosts,
            slices,
            spacing,
            wait,
            attempts,
            events: events(slices, spacing, wait, attempts),
        }
    }

    /// When slice `s` is first sent, from the round's start.
    pub fn send_offset(&self, s: usize) -> Duration {
        self.spacing * s as u32
    }

    /// Hosts of slice `s`.
    pub fn range(&self, s: usize) -> Range<usize> {
        s * self.hosts / self.slices..(s + 1) * self.hosts / self.slices
    }
}

/// Every step of a round, in time order: slice `s` is sent at `s * spacing`, checked (and
/// retried) after each `wait`, and judged after the last.
fn events(slices: usize, spacing: Duration, wait: Duration, attempts: u32) -> Vec<Event> {
    let mut events = Vec::with_capacity(slices * (attempts as usize + 1));
    for slice in 0..slices {
        let sent = spacing * slice as u32;
        events.push(Event {
            offset: sent,
            step: Step::Send,
            slice,
        });
        for attempt in 1..attempts {
            events.push(Event {
                offset: sent + wait * attempt,
                step: Step::Retry,
                slice,
            });
        }
        events.push(Event {
            offset: sent + wait * attempts,
            step: Step::Judge,
            slice,
        });
    }
    events.sort_by_key(|e| (e.offset, e.step, e.slice));
    events
}

/// How long after sending a probe its reply is awaited before a retry (or the judgement):
/// long enough for any LAN round trip, short enough that every attempt fits in the round.
/// A reply later than this is not lost: it counts for the next round.
fn reply_wait(round: Duration, retries: u32) -> Duration {
    (round / (retries + 2)).min(REPLY_WAIT)
}

const REPLY_WAIT: Duration = Duration::from_millis(10);

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
    fn a_large_round_is_spread_in_millisecond_slices_and_judged_before_it_ends() {
        // 131,072 hosts, 1 s windows, 2 probes: 500 ms rounds, 10 ms waits, one retry.
        let t = timing(1000, 2, 1);
        let plan = Plan::new(&t, 131_072);
        assert_eq!(plan.slices, 480);
        assert_eq!(plan.spacing, Duration::from_millis(1));
        let events = &plan.events;
        assert_eq!(events.len(), 480 * 3);
        assert!(
            events.windows(2).all(|w| w[0].offset <= w[1].offset),
            "in time order"
        );
        let last = events.last().unwrap();
        assert!(
            last.offset <= t.round(),
            "judged {:?} after the round began",
            last.offset
        );
        // Every host is in exactly one slice, and slices differ by at most one host.
        let sizes: Vec<usize> = (0..plan.slices).map(|s| plan.range(s).len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 131_072);
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        assert_eq!(plan.range(0).start, 0);
        assert_eq!(plan.range(479).end, 131_072);
    }

    #[test]
    fn few_hosts_make_few_slices() {
        let plan = Plan::new(&timing(100, 3, 1), 1);
        assert_eq!((plan.slices, plan.range(0)), (1, 0..1));
        let steps: Vec<Step> = plan.events.iter().map(|e| e.step).collect();
        assert_eq!(steps, [Step::Send, Step::Retry, Step::Judge]);
        let plan = Plan::new(&timing(100, 3, 0), 5);
        assert_eq!(plan.slices, 5);
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
