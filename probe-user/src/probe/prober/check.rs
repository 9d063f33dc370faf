//! Checking: when a host's probe is overdue, its answer bits tell whether the round was
//! answered; if not, the probe is resent (up to `retries` times) or the round judged silent.
//! Verdicts reach the host's health in round order, and state changes, suspect primaries and
//! the witnesses' liveness are reported.

use std::time::{Duration, SystemTime};

use probe_common::maps::HostSlot;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{state_index, Prober, KEYS};
use crate::{
    model::{
        events::{HostEvent, HostReport, Report},
        health::{Change, State},
    },
    probe::plan::seq_mask,
};

/// One host's probes of one round, to look at when the last one's reply is overdue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check {
    pub host: u32,
    /// The round, among those sent.
    pub round: u32,
    /// Its first probe sequence, and its window.
    pub seq0: u32,
    pub window: u32,
    /// Probes of the round sent to the host so far.
    pub attempts: u32,
    /// When the last of them went out, in ms since the loop started.
    pub sent_ms: u32,
}

impl Check {
    /// The sequence of the round's next probe.
    pub fn seq(&self) -> u32 {
        self.seq0.wrapping_add(self.attempts)
    }
}

impl Prober {
    /// Looks at every probe whose reply is overdue now, then resends the unanswered.
    pub(super) fn check_due(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.due);
        self.checks.take_due(now + self.plan.look_ahead, &mut due);
        // Witnesses first: the failover must know we are cut off before it hears of a DOWN.
        if !self.roles.witnesses.is_empty() {
            due.sort_by_key(|c| !self.roles.witnesses.contains(&(c.host as usize)));
        }
        let started = std::time::Instant::now();
        for check in due.drain(..) {
            self.check(check, now);
        }
        self.due = due;
        self.read_time += started.elapsed();
        self.send_retries(now);
    }

    fn check(&mut self, c: Check, now: Instant) {
        let i = c.host as usize;
        // Done, or filed again as a retry (which counts itself then).
        self.account_checks(c.window, 0, 1);
        let slot = self.counters.slot(i);
        let fresh = self.observe(i, &slot, &c, now);
        let overdue = self.started + Duration::from_millis(u64::from(c.sent_ms)) + self.due(i);
        if slot.answered & seq_mask(c.seq0, c.attempts) != 0 {
            self.decide(i, c.round, true);
        } else if now < overdue {
            // An early look (a host without an RTT estimate yet): wait for the timeout.
            self.account_checks(c.window, 1, 0);
            self.checks.push(overdue, c);
        } else if c.attempts < self.timing.attempts() {
            self.retries.push(c);
        } else {
            // No answer to this round; a reply that came in late for another one still says
            // the host is alive.
            self.decide(i, c.round, fresh);
        }
    }

    /// Takes in host `i`'s new replies, if any: RTT sample, statistics, when it was last
    /// heard. True if there were any.
    fn observe(&mut self, i: usize, slot: &HostSlot, c: &Check, now: Instant) -> bool {
        if slot.total_replies == self.seen[i] {
            return false;
        }
        self.seen[i] = slot.total_replies;
        let rtt = Duration::from_nanos(u64::from(slot.rtt_ns));
        self.rtt[i].sample(rtt);
        self.stats.add_rtt(u64::from(slot.rtt_ns));
        let now_ms = self.ms_since_start(now);
        // The reply to one of this check's probes arrived its RTT after the last one went out
        // (or earlier); any other by now.
        let ours = slot.last_seq.wrapping_sub(c.seq0) < c.attempts;
        let arrived = if ours {
            let rtt_ms = u32::try_from(rtt.as_millis()).unwrap_or(u32::MAX);
            c.sent_ms.saturating_add(rtt_ms).min(now_ms)
        } else {
            now_ms
        };
        self.heard[i] = arrived.saturating_add(1);
        true
    }

    /// Round `round`'s verdict for host `i`; the verdicts now in order go to its health.
    fn decide(&mut self, i: usize, round: u32, answered: bool) {
        let mut pending = self.pending[i];
        let mut verdicts = [false; 32];
        let mut n = 0;
        pending.decide(round, answered, |a| {
            verdicts[n] = a;
            n += 1;
        });
        let first = pending.next().wrapping_sub(n as u32);
        self.pending[i] = pending;
        for (k, answered) in verdicts[..n].iter().enumerate() {
            self.feed(i, *answered, first.wrapping_add(k as u32));
        }
    }

    /// Feeds one round's verdict to host `i`'s health, and reports what follows.
    fn feed(&mut self, i: usize, answered: bool, round: u32) {
        let window = self.round_windows[round as usize % KEYS];
        let change = self.health[i].on_round(answered, &self.timing);
        if let Some(change) = change {
            self.since[i] = window;
            self.states[state_index(change.from)] -= 1;
            self.states[state_index(change.to)] += 1;
            self.publish_state(i);
        }
        if self.roles.witnesses.contains(&i) {
            let alive = self.witnesses_answer();
            if alive != self.witnesses_alive {
                self.witnesses_alive = alive;
                self.report(HostReport::Witnesses { alive, window });
            }
        }
        if let Some(change) = change {
            self.report_change(i, change, window);
        }
        if self.roles.watches.contains(&i) {
            let h = &self.health[i];
            if h.silent_rounds() == self.suspect_at && h.state() != State::Down {
                debug!(host = %self.hosts[i], window, silent_rounds = self.suspect_at, "watched host suspect");
                self.report(HostReport::Suspect {
                    host: self.hosts[i],
                    window,
                });
            }
        }
    }

    /// Logs and reports host `i`'s change of state.
    fn report_change(&self, i: usize, change: Change, window: u32) {
        let rtt = Duration::from_nanos(u64::from(self.counters.slot(i).rtt_ns));
        let event = HostEvent {
            host: self.hosts[i],
            change,
            window,
            at: SystemTime::now(),
            silent_for: self.timing.round() * change.silent_rounds,
            heard_ago: self.heard_ago(i),
            window_len: self.timing.window,
            rtt: (change.to == State::Up).then_some(rtt),
        };
        let rtt_us = rtt.as_micros() as u64;
        let silent_ms = event.silent_for.as_millis() as u64;
        match (change.to, self.log_changes) {
            (State::Down, true) => {
                warn!(host = %event.host, window, from = %change.from, silent_ms, "host DOWN")
            }
            (State::Up, true) => {
                info!(host = %event.host, window, from = %change.from, rtt_us, "host UP")
            }
            (State::Down, false) => {
                debug!(host = %event.host, window, from = %change.from, silent_ms, "host DOWN")
            }
            (State::Up, false) => {
                debug!(host = %event.host, window, from = %change.from, rtt_us, "host UP")
            }
            (State::Unknown, _) => {}
        }
        self.report(HostReport::Changed(event));
    }

    /// Whether any witness answered within the last window (true without witnesses).
    pub(super) fn witnesses_answer(&self) -> bool {
        let probes = self.timing.probes;
        self.roles.witnesses.is_empty()
            || self
                .roles
                .witnesses
                .iter()
                .any(|w| self.health[*w].silent_rounds() < probes)
    }

    /// How long ago host `i` was last heard, measured now; `None` if never.
    pub(super) fn heard_ago(&self, i: usize) -> Option<Duration> {
        let heard = self.heard[i].checked_sub(1)?;
        let now = self.ms_since_start(Instant::now());
        Some(Duration::from_millis(u64::from(now.saturating_sub(heard))))
    }

    pub(super) fn report(&self, report: HostReport) {
        self.send_report(Report::Host(report));
    }

    pub(super) fn send_report(&self, report: Report) {
        // The receiver only goes away at shutdown.
        let _ = self.reports.send(report);
    }
}
