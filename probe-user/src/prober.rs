//! The probe loop: one task that, every round, rolls the window (new number and cookie) when one
//! begins, sends the round, and judges it from the kernel's counters once its replies are due.

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
    events::HostEvent,
    health::{Health, State},
    sender::{Round, Sender},
    settings::Timing,
    xdp::XdpProbe,
};

pub struct Prober {
    hosts: Vec<Ipv4Addr>,
    health: Vec<Health>,
    /// Each host's `total_replies` when last judged.
    seen: Vec<u64>,
    slots: Vec<HostSlot>,
    xdp: XdpProbe,
    sender: Sender,
    timing: Timing,
    ident: u16,
    events: mpsc::UnboundedSender<HostEvent>,
}

impl Prober {
    pub fn new(
        hosts: Vec<Ipv4Addr>,
        xdp: XdpProbe,
        sender: Sender,
        timing: Timing,
        events: mpsc::UnboundedSender<HostEvent>,
    ) -> Self {
        let n = hosts.len();
        Self {
            hosts,
            health: vec![Health::new(); n],
            seen: vec![0; n],
            slots: Vec::with_capacity(n),
            xdp,
            sender,
            timing,
            ident: rand::random::<u16>().max(1),
            events,
        }
    }

    /// Probes until `shutdown` fires; returning drops the XDP program (detaching it).
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let round = self.timing.round();
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
            "probing"
        );

        loop {
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

            let seq = u32::try_from(k).unwrap_or(u32::MAX);
            let round_info = Round {
                ident: self.ident,
                window,
                cookie,
                seq,
            };
            match self.sender.send_round(&self.hosts, round_info) {
                Ok(sent) if sent < self.hosts.len() => {
                    debug!(
                        sent,
                        hosts = self.hosts.len(),
                        window,
                        "some probes were not sent"
                    )
                }
                Ok(_) => {}
                Err(error) => warn!(%error, window, "sending probes failed"),
            }
            last_sent = Some(k);

            // Judge this round once its replies are due, well before the next round.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(tick + reply_wait(round)) => {}
            }
            self.judge(window, (k + 1).is_multiple_of(per_window))?;
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

    /// Feeds the last round's outcome to every host's state machine.
    fn judge(&mut self, window: u32, closes_window: bool) -> anyhow::Result<()> {
        self.xdp
            .read_slots(&mut self.slots)
            .context("reading per-host counters")?;
        let round = self.timing.round();
        for (i, slot) in self.slots.iter().enumerate() {
            let answered = slot.total_replies != self.seen[i];
            self.seen[i] = slot.total_replies;
            if closes_window {
                debug!(host = %self.hosts[i], window, replies = slot.window_replies * u32::from(slot.window == window), rtt_us = slot.rtt_ns / 1_000, "window closed");
            }
            let Some(change) = self.health[i].on_round(answered, closes_window, &self.timing)
            else {
                continue;
            };
            let event = HostEvent {
                host: self.hosts[i],
                change,
                window,
                at: SystemTime::now(),
                silent_for: round * change.silent_rounds,
                window_len: self.timing.window,
            };
            let rtt_us = slot.rtt_ns / 1_000;
            match change.to {
                State::Down => {
                    warn!(host = %event.host, window, from = %change.from, silent_ms = event.silent_for.as_millis() as u64, "host DOWN")
                }
                State::Up => {
                    info!(host = %event.host, window, from = %change.from, rtt_us, "host UP")
                }
                State::Unknown => {}
            }
            // The receiver only goes away at shutdown.
            let _ = self.events.send(event);
        }
        Ok(())
    }
}

/// How long after sending a round its replies are judged: long enough for any LAN round trip,
/// short enough that a dead host is declared DOWN soon after its last probe went unanswered.
/// A reply later than this is not lost: it counts for the next round's judgement.
fn reply_wait(round: Duration) -> Duration {
    (round / 2).min(REPLY_WAIT)
}

const REPLY_WAIT: Duration = Duration::from_millis(10);

/// Which round a tick `elapsed` after the start belongs to.
fn round_index(elapsed: Duration, round: Duration) -> u64 {
    (elapsed.as_nanos() / round.as_nanos().max(1)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn replies_are_judged_before_the_next_round() {
        assert_eq!(reply_wait(Duration::from_millis(333)), REPLY_WAIT);
        assert_eq!(
            reply_wait(Duration::from_millis(4)),
            Duration::from_millis(2)
        );
    }
}
