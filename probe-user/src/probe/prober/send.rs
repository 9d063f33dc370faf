//! Sending: rounds begin on time (skipped when the loop ran late), windows begin with a fresh
//! key, each batch of hosts gets its round's first probe and a check filed for when its reply
//! is overdue, and resent probes go out together. Send failures are logged once per episode.

use std::{net::IpAddr, time::Duration};

use probe_common::mac::Key;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{check::Check, Position, Prober, KEYS};
use crate::probe::{counters::Accept, plan::seq_mask, sender::Round};

/// The round being sent: which, when it began, and the next batch to send.
#[derive(Clone, Copy, Debug)]
pub struct RoundAt {
    /// Among the rounds started.
    pub round: u32,
    pub window: u32,
    /// Its first probe sequence; its retries follow.
    pub seq0: u32,
    pub start: Instant,
    pub slice: usize,
}

/// Failing sends, counted until they work again.
#[derive(Debug, Default)]
pub struct Trouble {
    failing: bool,
    unsent: u64,
}

impl Prober {
    /// Starts the rounds and sends the batches whose time has come.
    pub(super) fn send_due(&mut self, at: &mut Position, now: Instant) -> anyhow::Result<()> {
        while !at.stopping {
            if at.current.is_none() && !self.start_round(at, now)? {
                return Ok(());
            }
            let Some(round) = at.current.as_mut() else {
                return Ok(());
            };
            // A round starts on time; its later batches may go a little early, with a check.
            let ahead = if round.slice == 0 {
                Duration::ZERO
            } else {
                self.plan.look_ahead
            };
            if round.start + self.plan.send_offset(round.slice) > now + ahead {
                return Ok(());
            }
            let batch = *round;
            round.slice += 1;
            if round.slice >= self.plan.slices {
                at.current = None;
                at.next += 1;
            }
            self.send_slice(&batch, now);
        }
        Ok(())
    }

    /// Starts the next round if its time has come (false if not yet, or if the window count
    /// is reached). Rounds entirely in the past are skipped: the loop ran late.
    fn start_round(&mut self, at: &mut Position, now: Instant) -> anyhow::Result<bool> {
        let (current, _) = at.epoch.locate(now, &self.timing);
        if current > at.next && at.started {
            let skipped = current - at.next;
            self.late_rounds += skipped;
            warn!(skipped, "probe rounds skipped: the loop ran late");
            at.next = current;
        }
        let start = at.epoch.start_of(at.next, &self.timing);
        if start > now {
            return Ok(false);
        }
        let window = at.epoch.window_of(at.next, &self.timing);
        if !at.started || window != at.window {
            if at.started && self.count.is_some_and(|count| at.window >= count) {
                at.stopping = true;
                self.end_window(start);
                return Ok(false);
            }
            self.begin_window(at, start, window)?;
        }
        let seq0 = self.seq_next;
        let attempts = self.timing.attempts();
        self.seq_next = seq0.wrapping_add(attempts);
        let round = self.next_round;
        self.next_round = round.wrapping_add(1);
        self.round_windows[round as usize % KEYS] = window;
        self.counters.publish(Accept {
            ident: self.ident,
            seq_max: seq0.wrapping_add(attempts - 1),
            timeout: self.timing.timeout,
        })?;
        at.current = Some(RoundAt {
            round,
            window,
            seq0,
            start,
            slice: 0,
        });
        Ok(true)
    }

    /// Window `window` begins at `start`: the last one ends, a pending reload applies, and the
    /// window gets its key.
    fn begin_window(
        &mut self,
        at: &mut Position,
        start: Instant,
        window: u32,
    ) -> anyhow::Result<()> {
        self.end_window(start);
        // Between two windows: a reload's hosts and timing apply from here.
        if let Some(reload) = self.reloads.as_mut().and_then(|r| r.try_recv().ok()) {
            let retimed = reload.timing != self.timing;
            if self.reload(reload, window) && retimed {
                at.epoch = crate::probe::plan::Epoch {
                    start,
                    round: at.next,
                    window,
                };
            }
        }
        let key = Key {
            k0: rand::random(),
            k1: rand::random(),
        };
        self.counters.set_key(window, key)?;
        self.keys[window as usize % KEYS] = key;
        self.open_window(window);
        at.window = window;
        at.started = true;
        Ok(())
    }

    /// Sends `round`'s first probe to the hosts of its batch, and files their checks. A host
    /// that missed its last round gets its first retry at once too: if it is dead, its next
    /// verdict comes one reply wait sooner, and the DOWN with it.
    fn send_slice(&mut self, round: &RoundAt, now: Instant) {
        let range = self.plan.range(round.slice);
        let attempts = self.timing.attempts();
        let mask = seq_mask(round.seq0, attempts);
        let sent_ms = self.ms_since_start(now);
        let mut batch = std::mem::take(&mut self.batch);
        let mut eager = std::mem::take(&mut self.eager);
        batch.clear();
        eager.clear();
        for i in range {
            self.counters.clear(i, mask);
            self.sent[i] = self.sent[i].wrapping_add(1);
            batch.push(self.hosts[i]);
            let early = attempts > 1 && self.health[i].silent_rounds() > 0;
            if early {
                self.sent[i] = self.sent[i].wrapping_add(1);
                eager.push(self.hosts[i]);
            }
            let check = Check {
                host: i as u32,
                round: round.round,
                seq0: round.seq0,
                window: round.window,
                attempts: if early { 2 } else { 1 },
                sent_ms,
            };
            self.checks.push(now + self.first_look(i), check);
        }
        self.account_checks(round.window, batch.len() as u64, 0);
        self.send(&batch, round.window, round.seq0, now);
        self.send(&eager, round.window, round.seq0.wrapping_add(1), now);
        self.batch = batch;
        self.eager = eager;
    }

    /// Resends the probes found unanswered at this wake-up, a batch per sequence, and files
    /// their next checks.
    pub(super) fn send_retries(&mut self, now: Instant) {
        if self.retries.is_empty() {
            return;
        }
        let mut retries = std::mem::take(&mut self.retries);
        retries.sort_by_key(|c| (c.seq(), c.window));
        let sent_ms = self.ms_since_start(now);
        let mut batch = std::mem::take(&mut self.batch);
        for group in retries.chunk_by(|a, b| (a.seq(), a.window) == (b.seq(), b.window)) {
            batch.clear();
            for c in group {
                let i = c.host as usize;
                self.sent[i] = self.sent[i].wrapping_add(1);
                batch.push(self.hosts[i]);
                let next = Check {
                    attempts: c.attempts + 1,
                    sent_ms,
                    ..*c
                };
                self.checks.push(now + self.first_look(i), next);
            }
            self.account_checks(group[0].window, group.len() as u64, 0);
            self.send(&batch, group[0].window, group[0].seq(), now);
        }
        retries.clear();
        self.retries = retries;
        self.batch = batch;
    }

    /// Sends probe `seq` of `window` to `hosts` at `now`, and counts what went out.
    fn send(&mut self, hosts: &[IpAddr], window: u32, seq: u32, now: Instant) {
        if hosts.is_empty() {
            return;
        }
        let round = Round {
            ident: self.ident,
            window,
            seq,
            key: self.keys[window as usize % KEYS],
        };
        let sent = match self.sender.send_round(hosts, round) {
            Ok(sent) => sent,
            Err(error) => {
                if !self.send_trouble.failing {
                    warn!(%error, window, "sending probes failed; failures are counted until sends work again");
                }
                0
            }
        };
        let unsent = (hosts.len() - sent) as u64;
        if unsent == 0 && self.send_trouble.failing {
            info!(
                unsent = self.send_trouble.unsent,
                "sending probes works again"
            );
            self.send_trouble = Trouble::default();
        } else if unsent > 0 {
            if !self.send_trouble.failing && sent > 0 {
                warn!(
                    sent,
                    unsent,
                    window,
                    "some probes were not sent; failures are counted until sends work again"
                );
            }
            self.send_trouble.failing = true;
            self.send_trouble.unsent += unsent;
        }
        self.stats.add_sent(sent as u64);
        self.account_sent(window, sent as u64, now);
    }
}
