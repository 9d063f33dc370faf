//! The probe loop: one task that, every round, rolls the window (new number and cookie) when one
//! begins, sends the round, and judges it from the kernel's counters once its replies are due,
//! resending to the hosts that have not answered yet (`--retries`) before it judges.

use std::{
    net::Ipv4Addr,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use probe_common::maps::{HostSlot, ProbeConfig, Stat};
use tokio::{
    sync::mpsc,
    time::{Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    events::{HostEvent, Report},
    health::{Health, State},
    sender::{Round, Sender},
    settings::Timing,
    xdp::XdpProbe,
};

/// Who is probed: the watched host first, then the witnesses.
pub struct Targets {
    pub watch: Ipv4Addr,
    pub witnesses: Vec<Ipv4Addr>,
}

impl Targets {
    /// All probed addresses; index 0 is the watched host.
    pub fn hosts(&self) -> Vec<Ipv4Addr> {
        std::iter::once(self.watch)
            .chain(self.witnesses.iter().copied())
            .collect()
    }
}

pub struct Prober {
    hosts: Vec<Ipv4Addr>,
    witnesses: usize,
    health: Vec<Health>,
    /// Each host's `total_replies` when last read.
    seen: Vec<u64>,
    answered: Vec<bool>,
    slots: Vec<HostSlot>,
    unanswered: Vec<Ipv4Addr>,
    xdp: XdpProbe,
    sender: Sender,
    timing: Timing,
    ident: u16,
    /// Silent rounds of the watched host at which it becomes suspect.
    suspect_at: u32,
    witnesses_alive: bool,
    reports: mpsc::UnboundedSender<Report>,
}

impl Prober {
    /// `suspect_lead`: how long before a possible DOWN the failover wants to hear of it
    /// (the ARP conflict check's wait).
    pub fn new(
        targets: &Targets,
        xdp: XdpProbe,
        sender: Sender,
        timing: Timing,
        suspect_lead: Duration,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Self {
        let hosts = targets.hosts();
        let n = hosts.len();
        Self {
            hosts,
            witnesses: targets.witnesses.len(),
            health: vec![Health::new(); n],
            seen: vec![0; n],
            answered: vec![false; n],
            slots: Vec::with_capacity(n),
            unanswered: Vec::with_capacity(n),
            xdp,
            sender,
            suspect_at: suspect_threshold(&timing, suspect_lead),
            timing,
            ident: rand::random::<u16>().max(1),
            witnesses_alive: true,
            reports,
        }
    }

    /// Probes until `shutdown` fires; returning drops the XDP program (detaching it).
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let round = self.timing.round();
        let wait = reply_wait(round, self.timing.retries);
        let per_window = u64::from(self.timing.probes);
        let start = Instant::now();
        let mut ticker = tokio::time::interval_at(start, round);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut window: u32 = 0;
        let mut cookie: u32 = 0;
        let mut last_sent: Option<u64> = None;
        let mut late_rounds: u64 = 0;
        info!(
            ident = self.ident,
            hosts = self.hosts.len(),
            window = ?self.timing.window,
            probes = self.timing.probes,
            retries = self.timing.retries,
            reply_wait = ?wait,
            "probing"
        );

        'rounds: loop {
            let tick = tokio::select! {
                _ = shutdown.cancelled() => break,
                tick = ticker.tick() => tick,
            };
            let k = round_index(tick - start, round);
            if let Some(prev) = last_sent {
                if k > prev + 1 {
                    late_rounds += k - prev - 1;
                    warn!(
                        skipped = k - prev - 1,
                        "probe rounds skipped: the loop ran late"
                    );
                }
            }
            last_sent = Some(k);

            let this_window = u32::try_from(k / per_window + 1).unwrap_or(u32::MAX);
            if this_window != window {
                window = this_window;
                cookie = rand::random();
                self.xdp.set_config(ProbeConfig {
                    ident: u32::from(self.ident),
                    window,
                    cookie,
                    enabled: 1,
                })?;
            }

            let probe = Round {
                ident: self.ident,
                window,
                cookie,
                seq: u32::try_from(k).unwrap_or(u32::MAX),
            };
            self.answered.fill(false);
            self.unanswered.clone_from(&self.hosts);
            for attempt in 0..=self.timing.retries {
                self.send(&probe, window);
                tokio::select! {
                    _ = shutdown.cancelled() => break 'rounds,
                    _ = tokio::time::sleep_until(tick + wait * (attempt + 1)) => {}
                }
                self.read_answers()?;
                if self.unanswered.is_empty() {
                    break;
                }
            }
            self.judge(window, (k + 1).is_multiple_of(per_window));
        }

        let stats = self.xdp.stats()?;
        info!(
            windows = window,
            late_rounds,
            counted = stats[Stat::Counted as usize],
            wrong_cookie = stats[Stat::WrongCookie as usize],
            stale_window = stats[Stat::StaleWindow as usize],
            unknown_host = stats[Stat::UnknownHost as usize],
            "stopped probing; detaching XDP"
        );
        Ok(())
    }

    /// Sends this round's probe to every host that has not answered it yet.
    fn send(&mut self, probe: &Round, window: u32) {
        match self.sender.send_round(&self.unanswered, *probe) {
            Ok(sent) if sent < self.unanswered.len() => {
                debug!(
                    sent,
                    hosts = self.unanswered.len(),
                    window,
                    "some probes were not sent"
                )
            }
            Ok(_) => {}
            Err(error) => warn!(%error, window, "sending probes failed"),
        }
    }

    /// Marks the hosts whose reply counters moved and lists those still silent.
    fn read_answers(&mut self) -> anyhow::Result<()> {
        self.xdp
            .read_slots(&mut self.slots)
            .context("reading per-host counters")?;
        self.unanswered.clear();
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.total_replies != self.seen[i] {
                self.seen[i] = slot.total_replies;
                self.answered[i] = true;
            }
            if !self.answered[i] {
                self.unanswered.push(self.hosts[i]);
            }
        }
        Ok(())
    }

    /// Feeds the round's outcome to every host's state machine and reports what changed.
    fn judge(&mut self, window: u32, closes_window: bool) {
        let round = self.timing.round();
        let mut changes = Vec::new();
        for i in 0..self.hosts.len() {
            if closes_window {
                let slot = &self.slots[i];
                debug!(host = %self.hosts[i], window, replies = if slot.window == window { slot.window_replies } else { 0 }, rtt_us = slot.rtt_ns / 1_000, "window closed");
            }
            if let Some(change) = self.health[i].on_round(self.answered[i], &self.timing) {
                changes.push((i, change));
            }
        }

        // Witnesses first: the failover must know we are cut off before it hears of a DOWN.
        if self.witnesses > 0 {
            let alive = self.health[1..=self.witnesses]
                .iter()
                .any(|h| h.silent_rounds() < self.timing.probes);
            if alive != self.witnesses_alive {
                self.witnesses_alive = alive;
                self.report(Report::Witnesses { alive, window });
            }
        }
        for (i, change) in changes {
            let event = HostEvent {
                host: self.hosts[i],
                change,
                window,
                at: SystemTime::now(),
                silent_for: round * change.silent_rounds,
                window_len: self.timing.window,
            };
            match change.to {
                State::Down => {
                    warn!(host = %event.host, window, from = %change.from, silent_ms = event.silent_for.as_millis() as u64, "host DOWN")
                }
                State::Up => {
                    info!(host = %event.host, window, from = %change.from, rtt_us = self.slots[i].rtt_ns / 1_000, "host UP")
                }
                State::Unknown => {}
            }
            self.report(Report::Host(event));
        }
        if self.health[0].silent_rounds() == self.suspect_at
            && self.health[0].state() != State::Down
        {
            debug!(host = %self.hosts[0], window, silent_rounds = self.suspect_at, "watched host suspect");
            self.report(Report::Suspect {
                host: self.hosts[0],
                window,
            });
        }
    }

    fn report(&self, report: Report) {
        // The receiver only goes away at shutdown.
        let _ = self.reports.send(report);
    }
}

/// How long after sending a probe its reply is awaited before a retry (or the judgement):
/// long enough for any LAN round trip, short enough that every attempt fits in the round, so a
/// dead host is declared DOWN soon after its last probe went unanswered. A reply later than
/// this is not lost: it counts for the next round.
fn reply_wait(round: Duration, retries: u32) -> Duration {
    (round / (retries + 2)).min(REPLY_WAIT)
}

const REPLY_WAIT: Duration = Duration::from_millis(10);

/// The watched host's silent rounds at which the failover is told it is suspect: early enough
/// that a check lasting `lead` is over by the time the host could be DOWN.
fn suspect_threshold(timing: &Timing, lead: Duration) -> u32 {
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

    fn timing(window_ms: u64) -> Timing {
        Timing {
            window: Duration::from_millis(window_ms),
            probes: 3,
            failed_windows: 2,
            recover_windows: 2,
            retries: 1,
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
    fn the_suspect_signal_leaves_time_for_the_conflict_check() {
        // 100 ms window: 33 ms rounds; a 50 ms check needs 2 rounds + 1 of slack: at 3 of 6.
        assert_eq!(
            suspect_threshold(&timing(100), Duration::from_millis(50)),
            3
        );
        // 60 ms window: 20 ms rounds; 50 ms is 2.5 rounds, so 3 + 1: at 2 of 6.
        assert_eq!(suspect_threshold(&timing(60), Duration::from_millis(50)), 2);
        // A check longer than the whole detection still starts after one silent round.
        assert_eq!(suspect_threshold(&timing(50), Duration::from_secs(1)), 1);
        assert_eq!(suspect_threshold(&timing(1000), Duration::ZERO), 5);
    }
}
