//! The per-host up/down state machine. Pure: fed one probe round at a time.
//!
//! A window is the time of `probes` probe rounds. It *fails* when none of its probes is answered.
//! `failed_windows` consecutive failed windows make a host DOWN. The check slides by one round
//! rather than waiting for a window boundary, so a host that dies just after answering is declared
//! DOWN `failed_windows` windows after its last answer, not up to one window later.
//! A DOWN host comes back UP once each of the last `recover_windows` windows (blocks of `probes`
//! rounds ending with the current round) had at least one answer. That slides too, so the
//! window in which the host came back counts even if it returned halfway through.

use serde::{Deserialize, Serialize};

use crate::config::timing::{Timing, MAX_RECOVERY_ROUNDS};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    /// Not answered yet, not yet silent for long enough to be DOWN.
    Unknown,
    Up,
    Down,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Unknown => "UNKNOWN",
            State::Up => "UP",
            State::Down => "DOWN",
        })
    }
}

/// A state change, with the evidence that caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub from: State,
    pub to: State,
    /// Consecutive unanswered rounds when the host went DOWN (0 for UP).
    pub silent_rounds: u32,
    /// Consecutive good windows when the host came back UP (0 for DOWN).
    pub good_windows: u32,
}

/// One host's health.
#[derive(Clone, Debug)]
pub struct Health {
    state: State,
    silent_rounds: u32,
    /// Answered rounds since the host went DOWN, newest in bit 0.
    history: u64,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Self {
            state: State::Unknown,
            silent_rounds: 0,
            history: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Consecutive unanswered rounds up to now.
    pub fn silent_rounds(&self) -> u32 {
        self.silent_rounds
    }

    /// Feeds one probe round: `answered` if any valid reply arrived for it.
    pub fn on_round(&mut self, answered: bool, timing: &Timing) -> Option<Change> {
        if answered {
            self.silent_rounds = 0;
        } else {
            self.silent_rounds = self.silent_rounds.saturating_add(1);
        }
        self.history = (self.history << 1) | u64::from(answered);

        let from = self.state;
        let down_after = timing.failed_windows.saturating_mul(timing.probes);
        let to = match self.state {
            State::Unknown | State::Up if self.silent_rounds >= down_after => State::Down,
            State::Unknown if answered => State::Up,
            State::Down if self.recovered(timing) => State::Up,
            state => state,
        };
        if to == from {
            return None;
        }
        self.state = to;
        if to == State::Down {
            self.history = 0;
        }
        Some(Change {
            from,
            to,
            silent_rounds: if to == State::Down {
                self.silent_rounds
            } else {
                0
            },
            good_windows: if from == State::Down {
                timing.recover_windows
            } else {
                0
            },
        })
    }

    /// Each of the last `recover_windows` blocks of `probes` rounds has an answer.
    fn recovered(&self, timing: &Timing) -> bool {
        let n = timing.probes.min(MAX_RECOVERY_ROUNDS);
        let block = if n == u64::BITS {
            u64::MAX
        } else {
            (1u64 << n) - 1
        };
        (0..timing.recover_windows).all(|b| {
            let shift = b * n;
            shift < u64::BITS && (self.history >> shift) & block != 0
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const T: Timing = Timing {
        window: Duration::from_millis(100),
        probes: 3,
        failed_windows: 2,
        recover_windows: 2,
        retries: 0,
        timeout: Duration::from_millis(100),
    };

    /// A fake clock: round `k` is sent at `k * round` and judged at `(k + 1) * round`.
    /// `alive(t)` says whether the host answers a probe sent at time `t`.
    /// Returns the times at which changes were decided.
    fn simulate(
        rounds: u32,
        timing: &Timing,
        alive: impl Fn(Duration) -> bool,
    ) -> Vec<(Duration, Change)> {
        let round = timing.round();
        let mut health = Health::new();
        let mut changes = Vec::new();
        for k in 0..rounds {
            let sent = round * k;
            if let Some(c) = health.on_round(alive(sent), timing) {
                changes.push((round * (k + 1), c));
            }
        }
        changes
    }

    #[test]
    fn a_host_that_answers_is_up_at_once_and_stays_up() {
        let changes = simulate(300, &T, |_| true);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].1.to, State::Up);
        assert_eq!(changes[0].0, T.round());
    }

    #[test]
    fn a_host_that_never_answers_goes_down_after_two_windows() {
        let changes = simulate(30, &T, |_| false);
        assert_eq!(changes.len(), 1);
        let (at, c) = changes[0];
        assert_eq!(
            (c.from, c.to, c.silent_rounds),
            (State::Unknown, State::Down, 6)
        );
        assert_eq!(at, T.round() * 6);
    }

    #[test]
    fn death_is_detected_within_two_windows_plus_one_round_whatever_its_phase() {
        // Kill the host at every millisecond offset across a window: detection never waits for a
        // window boundary, so it is bounded by failed_windows * window + one round.
        for phase_ms in 0..100u64 {
            let death = Duration::from_millis(1_000 + phase_ms);
            let changes = simulate(90, &T, |sent| sent < death);
            let (at, c) = *changes.last().unwrap();
            assert_eq!(c.to, State::Down, "phase {phase_ms}");
            let delay = at - death;
            assert!(
                delay <= T.window * 2 + T.round(),
                "phase {phase_ms}: {delay:?}"
            );
            assert!(
                delay >= T.window * 2 - T.round(),
                "phase {phase_ms}: {delay:?}"
            );
        }
    }

    #[test]
    fn one_answer_in_two_windows_keeps_the_host_up() {
        // Answers only every fifth round: never six silent rounds in a row.
        let round = T.round();
        let changes = simulate(600, &T, |sent| {
            (sent.as_nanos() / round.as_nanos()).is_multiple_of(5)
        });
        assert!(
            changes.iter().all(|(_, c)| c.to == State::Up),
            "{changes:?}"
        );
    }

    #[test]
    fn recovery_takes_at_most_recover_windows_whatever_the_phase() {
        for phase_ms in 0..100u64 {
            let death = Duration::from_millis(1_000);
            let back = Duration::from_millis(2_000 + phase_ms);
            let changes = simulate(120, &T, |sent| sent < death || sent >= back);
            let (at, c) = *changes.last().unwrap();
            assert_eq!((c.from, c.to), (State::Down, State::Up), "phase {phase_ms}");
            let delay = at - back;
            assert!(
                delay <= T.window * T.recover_windows,
                "phase {phase_ms}: {delay:?}"
            );
        }
    }

    #[test]
    fn recovery_needs_consecutive_good_windows_and_counts_the_partial_first_one() {
        let death = Duration::from_millis(1_000);
        let back = Duration::from_millis(2_050); // mid-window
        let changes = simulate(90, &T, |sent| sent < death || sent >= back);
        let ups: Vec<_> = changes
            .iter()
            .filter(|(_, c)| c.from == State::Down)
            .collect();
        assert_eq!(ups.len(), 1);
        let (at, c) = *ups[0];
        assert_eq!((c.to, c.good_windows), (State::Up, 2));
        // First answered round: 62 (sent at 2.067 s); a window later (round 65) every block of
        // the last two windows has an answer: UP when round 65 is judged.
        assert_eq!(at, T.round() * 66);
        assert!(at - back <= T.window * T.recover_windows);
    }

    #[test]
    fn a_bad_window_resets_recovery() {
        let mut h = Health::new();
        // Feeds one window; `good` windows have one answer (in their first round).
        let mut window = |good: bool| -> Vec<Change> {
            (0..3)
                .filter_map(|r| h.on_round(good && r == 0, &T))
                .collect()
        };
        assert!(window(false).is_empty());
        assert_eq!(window(false)[0].to, State::Down);
        assert!(window(true).is_empty());
        assert!(window(false).is_empty()); // resets the good-window count
        assert!(window(true).is_empty());
        let up = window(true);
        assert_eq!(up.len(), 1);
        assert_eq!((up[0].to, up[0].good_windows), (State::Up, 2));
    }

    #[test]
    fn thresholds_follow_the_settings() {
        let t = Timing {
            failed_windows: 3,
            probes: 2,
            ..T
        };
        let mut h = Health::new();
        h.on_round(true, &t);
        let changes: Vec<_> = (0..6).filter_map(|_| h.on_round(false, &t)).collect();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].silent_rounds, 6);
        assert_eq!(h.state(), State::Down);
    }
}
