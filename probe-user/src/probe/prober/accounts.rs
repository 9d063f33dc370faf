//! Accounts: each window's probes are counted as they are sent, and its answers when it is
//! closed, from the answer bits of its probe sequences, so that a late answer is credited to
//! the window of its probe. A window closes once it ended, none of its probes waits for a
//! check, and the timeout has passed since its last probe went out (or, at the latest,
//! `attempts` timeouts after it ended). Its state is published when it ends.

use tokio::time::Instant;

use super::Prober;
use crate::model::{
    events::{Report, WindowCounts},
    snapshot::HostStatus,
};
use crate::probe::plan::seq_mask;

/// A window whose answers are not counted yet.
#[derive(Clone, Debug)]
pub struct OpenWindow {
    pub window: u32,
    /// Its probe sequences: from `seq_start` to `seq_end` (set when it ends), excluded.
    pub seq_start: u32,
    pub seq_end: Option<u32>,
    /// Probes sent for it (first ones and resent), and when the last went out.
    pub sent: u64,
    pub last_send: Option<Instant>,
    /// Its probes whose checks are filed and not done yet.
    pub checks: u64,
    /// Hosts per state when it ended: unknown, up, down.
    pub states: [u64; 3],
    /// When no answer to it can count any more, whatever else happens (set when it ends).
    pub close_at: Option<Instant>,
}

impl OpenWindow {
    /// When it can be closed: after the timeout since its last probe once no check is left,
    /// else at `close_at`. `None` until it ended.
    pub fn closes_at(&self, timeout: std::time::Duration) -> Option<Instant> {
        let cap = self.close_at?;
        if self.checks > 0 {
            return Some(cap);
        }
        Some(self.last_send.map_or(cap, |sent| (sent + timeout).min(cap)))
    }
}

impl Prober {
    /// Window `window` begins: its probes get the sequences from here.
    pub(super) fn open_window(&mut self, window: u32) {
        self.windows.push_back(OpenWindow {
            window,
            seq_start: self.seq_next,
            seq_end: None,
            sent: 0,
            last_send: None,
            checks: 0,
            states: [0; 3],
            close_at: None,
        });
    }

    /// The window being sent ends at `at`: its sequences are known, its state published, and
    /// it is closed once its probes' answers can no longer count.
    pub(super) fn end_window(&mut self, at: Instant) {
        let linger = self.timing.timeout * self.timing.attempts();
        let (seq_next, states) = (self.seq_next, self.states);
        let Some(open) = self.windows.back_mut().filter(|w| w.seq_end.is_none()) else {
            return;
        };
        open.seq_end = Some(seq_next);
        open.states = states;
        open.close_at = Some(at + linger);
        let window = open.window;
        self.publish(window);
    }

    /// Probes sent for `window` at `now` (it may have ended: a resent probe).
    pub(super) fn account_sent(&mut self, window: u32, sent: u64, now: Instant) {
        if let Some(open) = self.window_mut(window) {
            open.sent += sent;
            open.last_send = Some(now);
        }
    }

    /// `filed` checks of `window`'s probes filed, `done` done.
    pub(super) fn account_checks(&mut self, window: u32, filed: u64, done: u64) {
        if let Some(open) = self.window_mut(window) {
            open.checks = (open.checks + filed).saturating_sub(done);
        }
    }

    fn window_mut(&mut self, window: u32) -> Option<&mut OpenWindow> {
        self.windows.iter_mut().rev().find(|w| w.window == window)
    }

    /// Closes the windows whose time has come.
    pub(super) fn close_due(&mut self, now: Instant) {
        let timeout = self.timing.timeout;
        while self
            .windows
            .front()
            .is_some_and(|w| w.closes_at(timeout).is_some_and(|t| t <= now))
        {
            if let Some(window) = self.windows.pop_front() {
                self.close_window(window);
            }
        }
    }

    /// Counts `window`'s answers and reports its figures.
    pub(super) fn close_window(&mut self, window: OpenWindow) {
        let end = window.seq_end.unwrap_or(self.seq_next);
        let mask = seq_mask(window.seq_start, end.wrapping_sub(window.seq_start));
        let started = std::time::Instant::now();
        let answered: u64 = (0..self.hosts.len())
            .map(|i| u64::from((self.counters.slot(i).answered & mask).count_ones()))
            .sum();
        self.read_time += started.elapsed();
        self.stats.add_answered(answered);
        let [unknown, up, down] = window.states;
        self.send_report(Report::Window(WindowCounts {
            window: window.window,
            up,
            down,
            unknown,
            sent: window.sent,
            answered,
        }));
    }

    /// The window's state for `/metrics` and `/status`.
    fn publish(&mut self, window: u32) {
        let Some(observed) = &self.observed else {
            return;
        };
        let read_time = std::mem::take(&mut self.read_time);
        observed.update(|s| {
            s.windows = u64::from(window);
            s.late_rounds = self.late_rounds;
            s.window_seconds = self.timing.window.as_secs_f64();
            s.map_read_seconds = read_time.as_secs_f64();
            self.host_statuses(&mut s.hosts);
        });
    }

    /// Host `i`'s new state in the snapshot at once, not at the next window's publish: a
    /// reload that reads it right after a change (which DNS pool members are DOWN) must see
    /// the change. (An entry not yet for this host, just after a reload, waits for the next
    /// publish.)
    pub(super) fn publish_state(&self, i: usize) {
        let Some(observed) = &self.observed else {
            return;
        };
        observed.update(|s| {
            if let Some(entry) = s.hosts.get_mut(i).filter(|e| e.host == self.hosts[i]) {
                entry.state = self.health[i].state();
                entry.since_window = self.since[i];
            }
        });
    }

    /// Every host's state and counters, in place of what `hosts` held.
    pub(super) fn host_statuses(&self, hosts: &mut Vec<HostStatus>) {
        hosts.clear();
        hosts.extend(self.hosts.iter().enumerate().map(|(i, host)| {
            let slot = self.counters.slot(i);
            HostStatus {
                host: *host,
                state: self.health[i].state(),
                since_window: self.since[i],
                rtt_ms: (slot.total_replies != 0).then(|| f64::from(slot.rtt_ns) / 1e6),
                probes_sent: u64::from(self.sent[i]),
                replies: u64::from(slot.total_replies),
            }
        }));
    }
}
