//! The probe loop: one task that paces every round's probes evenly across the round, judges
//! each slice of hosts from the counters once its replies are due (after resending to those
//! that have not answered, `--retries`), and reports state changes and per-window summaries.
//!
//! A round (`window / probes`) is split into slices of contiguous hosts. Slice `s` is sent at
//! `s * spacing` into the round, checked and retried after the reply wait, and judged after
//! the last wait; the sending span leaves room for that, so every slice is judged before the
//! round ends and before the next window's cookie replaces this one.

use std::{
    net::Ipv4Addr,
    ops::Range,
    time::{Duration, SystemTime},
};

use probe_common::maps::{ProbeConfig, Stat};
use tokio::{
    sync::{mpsc, oneshot},
    time::{Instant, Interval, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    probe::counters::Counters,
    model::events::{HostEvent, Report},
    model::health::{Health, State},
    service::endpoint::{HostStatus, Observed},
    cmd::report::Stats,
    probe::sender::{Round, Sender},
    config::settings::Timing,
};

/// Which of the (sorted) hosts play a part in failover.
#[derive(Clone, Debug, Default)]
pub struct Roles {
    /// The failover groups' primaries.
    pub watches: Vec<usize>,
    pub witnesses: Vec<usize>,
}

impl Roles {
    /// Roles of `watches` and `witnesses` within `hosts` (sorted, containing them all).
    pub fn find(hosts: &[Ipv4Addr], watches: &[Ipv4Addr], witnesses: &[Ipv4Addr]) -> Self {
        let find = |list: &[Ipv4Addr]| {
            list.iter()
                .filter_map(|a| hosts.binary_search(a).ok())
                .collect()
        };
        Self {
            watches: find(watches),
            witnesses: find(witnesses),
        }
    }
}

/// A reload's new host list and timing, applied by the loop at the next window boundary.
pub struct Reload {
    /// Sorted and unique, like the list the prober started with.
    pub hosts: Vec<Ipv4Addr>,
    pub roles: Roles,
    pub timing: Timing,
    pub suspect_lead: Duration,
    /// Watched hosts whose failover groups have just started: they are told the host's state.
    pub announce: Vec<Ipv4Addr>,
    /// Answered with the first window that runs with it, or why it was not applied (then
    /// the loop goes on as before).
    pub done: oneshot::Sender<Result<u32, String>>,
}

/// What the loop saw, for the final summary.
pub struct Outcome {
    pub stats: Stats,
    pub windows: u32,
    /// Hosts per state at the end: unknown, up, down.
    pub states: [u64; 3],
    /// Hosts that answered at least once (so their RTT is known).
    pub rtt_known: u64,
}

pub struct Prober {
    hosts: Vec<Ipv4Addr>,
    roles: Roles,
    health: Vec<Health>,
    /// Each host's `total_replies` when last read.
    seen: Vec<u32>,
    answered: Vec<bool>,
    batch: Vec<Ipv4Addr>,
    counters: Box<dyn Counters>,
    sender: Sender,
    timing: Timing,
    plan: Plan,
    ident: u16,
    /// Silent rounds of the watched host at which it becomes suspect.
    suspect_at: u32,
    witnesses_alive: bool,
    reports: mpsc::UnboundedSender<Report>,
    stats: Stats,
    states: [u64; 3],
    window_sent: u64,
    window_answered: u64,
    /// Stop after this many windows.
    count: Option<u32>,
    /// Log every state change (the daemon); `monitor` prints them itself.
    log_changes: bool,
    /// Published once per window for `/metrics` and `/status`, if anyone serves them.
    observed: Option<Observed>,
    /// Per host: probes sent, and the window its state began in.
    sent: Vec<u32>,
    since: Vec<u32>,
    late_rounds: u64,
    read_time: Duration,
    reloads: Option<mpsc::UnboundedReceiver<Reload>>,
}

/// Where the round numbering stands: the round at `start` is `round`, and the first of window
/// `window`. Reset when a reload changes the timing.
#[derive(Clone, Copy, Debug)]
struct Epoch {
    start: Instant,
    round: u64,
    window: u32,
}

impl Epoch {
    /// The round (counted from the very first) that a tick `at` belongs to, and its window.
    fn locate(&self, at: Instant, timing: &Timing) -> (u64, u32) {
        let k = round_index(at - self.start, timing.round());
        let window = u64::from(self.window) + k / u64::from(timing.probes.max(1));
        (self.round + k, u32::try_from(window).unwrap_or(u32::MAX))
    }
}

fn ticker(first: Instant, round: Duration) -> Interval {
    let mut ticker = tokio::time::interval_at(first, round);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    ticker
}

impl Prober {
    /// `hosts` must be sorted (as the counters index them). `suspect_lead`: how long before a
    /// possible DOWN of the watched host the failover wants to hear of it.
    pub fn new(
        hosts: Vec<Ipv4Addr>,
        roles: Roles,
        counters: Box<dyn Counters>,
        sender: Sender,
        timing: Timing,
        suspect_lead: Duration,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Self {
        let n = hosts.len();
        Self {
            plan: Plan::new(&timing, n),
            health: vec![Health::new(); n],
            seen: vec![0; n],
            answered: vec![false; n],
            batch: Vec::new(),
            hosts,
            roles,
            counters,
            sender,
            suspect_at: suspect_threshold(&timing, suspect_lead),
            timing,
            ident: rand::random::<u16>().max(1),
            witnesses_alive: true,
            reports,
            stats: Stats::new(),
            states: [n as u64, 0, 0],
            window_sent: 0,
            window_answered: 0,
            count: None,
            log_changes: false,
            observed: None,
            sent: vec![0; n],
            since: vec![0; n],
            late_rounds: 0,
            read_time: Duration::ZERO,
            reloads: None,
        }
    }

    /// Take new host lists and timings from `reloads` (the daemon's SIGHUP).
    pub fn reloads(mut self, reloads: mpsc::UnboundedReceiver<Reload>) -> Self {
        self.reloads = Some(reloads);
        self
    }

    /// Publish each window's state to `observed`.
    pub fn observed(mut self, observed: Observed) -> Self {
        self.observed = Some(observed);
        self
    }

    /// Log each state change at info (UP) and warn (DOWN) level.
    pub fn log_changes(mut self) -> Self {
        self.log_changes = true;
        self
    }

    /// Stop on its own after `windows` windows.
    pub fn stop_after(mut self, windows: Option<u32>) -> Self {
        self.count = windows;
        self
    }

    /// Probes until `shutdown` fires or the window count is reached; returning drops the
    /// counters (detaching the XDP program).
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<Outcome> {
        let mut epoch = Epoch {
            start: Instant::now(),
            round: 0,
            window: 1,
        };
        let mut ticker = ticker(epoch.start, self.timing.round());
        let mut window: u32 = 0;
        let mut cookie: u32 = 0;
        let mut last_round: Option<u64> = None;
        info!(
            ident = self.ident,
            hosts = self.hosts.len(),
            window = ?self.timing.window,
            probes = self.timing.probes,
            retries = self.timing.retries,
            reply_wait = ?self.plan.wait,
            slices = self.plan.slices,
            "probing"
        );

        'rounds: loop {
            let tick = tokio::select! {
                _ = shutdown.cancelled() => break,
                tick = ticker.tick() => tick,
            };
            let (k, this_window) = epoch.locate(tick, &self.timing);
            if let Some(prev) = last_round {
                if k > prev + 1 {
                    self.late_rounds += k - prev - 1;
                    warn!(
                        skipped = k - prev - 1,
                        "probe rounds skipped: the loop ran late"
                    );
                }
            }
            last_round = Some(k);

            if this_window != window {
                if self.count.is_some_and(|count| window >= count) {
                    break;
                }
                window = this_window;
                // Between two windows: nothing of the last one is still to be judged.
                if let Some(reload) = self.reloads.as_mut().and_then(|r| r.try_recv().ok()) {
                    let retimed = reload.timing != self.timing;
                    if self.reload(reload, window) && retimed {
                        epoch = Epoch {
                            start: tick,
                            round: k,
                            window,
                        };
                        ticker = self::ticker(tick + self.timing.round(), self.timing.round());
                    }
                }
                cookie = rand::random();
                self.counters.publish(ProbeConfig {
                    ident: u32::from(self.ident),
                    window,
                    cookie,
                    enabled: 1,
                    hosts: self.hosts.len() as u32,
                })?;
            }
            let probe = Round {
                ident: self.ident,
                window,
                cookie,
                seq: u32::try_from(k).unwrap_or(u32::MAX),
            };

            for e in 0..self.plan.events.len() {
                let event = self.plan.events[e];
                let at = tick + event.offset;
                if at > Instant::now() {
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'rounds,
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                let range = self.plan.range(event.slice);
                match event.step {
                    Step::Send => {
                        self.answered[range.clone()].fill(false);
                        self.sent[range.clone()]
                            .iter_mut()
                            .for_each(|n| *n = n.wrapping_add(1));
                        self.batch.clear();
                        self.batch.extend_from_slice(&self.hosts[range]);
                        self.send(&probe);
                    }
                    Step::Retry => {
                        self.read(range.clone());
                        self.batch.clear();
                        for i in range.filter(|i| !self.answered[*i]) {
                            self.batch.push(self.hosts[i]);
                            self.sent[i] = self.sent[i].wrapping_add(1);
                        }
                        self.send(&probe);
                    }
                    Step::Judge => {
                        self.read(range.clone());
                        self.judge(range, window);
                    }
                }
            }
            if epoch.locate(tick + self.timing.round(), &self.timing).1 != window {
                self.close_window(window);
            }
        }

        let kernel = self.counters.stats();
        info!(
            windows = window,
            late_rounds = self.late_rounds,
            counted = kernel[Stat::Counted as usize],
            wrong_cookie = kernel[Stat::WrongCookie as usize],
            stale_window = kernel[Stat::StaleWindow as usize],
            unknown_host = kernel[Stat::UnknownHost as usize],
            "stopped probing"
        );
        let rtt_known = self.seen.iter().filter(|total| **total != 0).count() as u64;
        self.stats.add_late_rounds(self.late_rounds);
        Ok(Outcome {
            stats: self.stats,
            windows: window,
            states: self.states,
            rtt_known,
        })
    }

    /// Switches to a reload's hosts and timing from `window` on, keeping every remaining host's
    /// state and counters; says how it went on `reload.done`. False if nothing changed.
    fn reload(&mut self, reload: Reload, window: u32) -> bool {
        let Reload {
            hosts,
            roles,
            timing,
            suspect_lead,
            announce,
            done,
        } = reload;
        if done.is_closed() {
            // The reloader gave up waiting and told its caller so: withdrawn.
            return false;
        }
        let from = origins(&self.hosts, &hosts);
        if let Err(e) = self.counters.rehost(&hosts, &from) {
            let _ = done.send(Err(format!("{e:#}")));
            return false;
        }
        let n = hosts.len();
        self.health = moved(&from, &self.health, Health::new());
        self.seen = moved(&from, &self.seen, 0);
        self.sent = moved(&from, &self.sent, 0);
        self.since = moved(&from, &self.since, 0);
        self.answered = vec![false; n];
        self.states = [0; 3];
        for h in &self.health {
            self.states[state_index(h.state())] += 1;
        }
        info!(
            window,
            hosts = n,
            added = from.iter().filter(|f| f.is_none()).count(),
            removed = self.hosts.len() - from.iter().flatten().count(),
            window_len = ?timing.window,
            probes = timing.probes,
            retries = timing.retries,
            "probing the reloaded hosts and timing"
        );
        self.hosts = hosts;
        self.roles = roles;
        self.plan = Plan::new(&timing, n);
        self.suspect_at = suspect_threshold(&timing, suspect_lead);
        self.timing = timing;
        // The witnesses may have changed (or gone): what they say now, not what the old ones
        // said.
        let alive = self.witnesses_answer();
        if alive != self.witnesses_alive {
            self.witnesses_alive = alive;
            self.report(Report::Witnesses { alive, window });
        }
        self.tell_new_watchers(&announce, window);
        // Shown at once: the reloader reports it done as soon as we answer.
        if let Some(observed) = &self.observed {
            observed.update(|s| {
                s.window_seconds = timing.window.as_secs_f64();
                self.host_statuses(&mut s.hosts);
            });
        }
        let _ = done.send(Ok(window));
        true
    }

    /// Whether any witness answered within the last window (true without witnesses).
    fn witnesses_answer(&self) -> bool {
        let probes = self.timing.probes;
        self.roles.witnesses.is_empty()
            || self
                .roles
                .witnesses
                .iter()
                .any(|w| self.health[*w].silent_rounds() < probes)
    }

    /// Tells the failover groups a reload started what they missed: the state of the hosts
    /// they watch (`announce`), if known, and that no witness answers, if so.
    fn tell_new_watchers(&self, announce: &[Ipv4Addr], window: u32) {
        if announce.is_empty() {
            return;
        }
        for host in announce {
            let Ok(w) = self.hosts.binary_search(host) else {
                continue;
            };
            let health = &self.health[w];
            let to = health.state();
            if to == State::Unknown {
                continue;
            }
            let silent_rounds = health.silent_rounds();
            self.report(Report::Known(HostEvent {
                host: *host,
                change: crate::model::health::Change {
                    from: State::Unknown,
                    to,
                    silent_rounds,
                    good_windows: 0,
                },
                window,
                at: SystemTime::now(),
                silent_for: self.timing.round() * silent_rounds,
                window_len: self.timing.window,
                rtt: None,
            }));
        }
        if !self.witnesses_alive {
            self.report(Report::Witnesses {
                alive: false,
                window,
            });
        }
    }

    /// Sends this round's probe to the hosts in `self.batch`.
    fn send(&mut self, probe: &Round) {
        if self.batch.is_empty() {
            return;
        }
        match self.sender.send_round(&self.batch, *probe) {
            Ok(sent) => {
                self.stats.add_sent(sent as u64);
                self.window_sent += sent as u64;
                if sent < self.batch.len() {
                    debug!(
                        sent,
                        hosts = self.batch.len(),
                        window = probe.window,
                        "some probes were not sent"
                    );
                }
            }
            Err(error) => warn!(%error, window = probe.window, "sending probes failed"),
        }
    }

    /// Marks the hosts in `range` whose reply counters moved, with their RTT.
    fn read(&mut self, range: Range<usize>) {
        let started = std::time::Instant::now();
        self.read_slots(range);
        self.read_time += started.elapsed();
    }

    fn read_slots(&mut self, range: Range<usize>) {
        for i in range {
            let slot = self.counters.slot(i);
            let replies = slot.total_replies.wrapping_sub(self.seen[i]);
            if replies != 0 {
                self.seen[i] = slot.total_replies;
                self.answered[i] = true;
                self.stats.add_answered(u64::from(replies));
                self.stats.add_rtt(u64::from(slot.rtt_ns));
                self.window_answered += u64::from(replies);
            }
        }
    }

    /// Feeds the round's outcome for the hosts in `range` to their state machines.
    fn judge(&mut self, range: Range<usize>, window: u32) {
        let round = self.timing.round();
        let mut changed = Vec::new();
        for i in range.clone() {
            if let Some(change) = self.health[i].on_round(self.answered[i], &self.timing) {
                self.since[i] = window;
                self.states[state_index(change.from)] -= 1;
                self.states[state_index(change.to)] += 1;
                changed.push((i, change));
            }
        }
        // Witnesses first: the failover must know we are cut off before it hears of a DOWN.
        if self.roles.witnesses.iter().any(|w| range.contains(w)) {
            let alive = self.witnesses_answer();
            if alive != self.witnesses_alive {
                self.witnesses_alive = alive;
                self.report(Report::Witnesses { alive, window });
            }
        }
        for (i, change) in changed {
            let rtt = Duration::from_nanos(u64::from(self.counters.slot(i).rtt_ns));
            let event = HostEvent {
                host: self.hosts[i],
                change,
                window,
                at: SystemTime::now(),
                silent_for: round * change.silent_rounds,
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
            self.report(Report::Host(event));
        }
        for &w in self.roles.watches.iter().filter(|w| range.contains(w)) {
            let h = &self.health[w];
            if h.silent_rounds() == self.suspect_at && h.state() != State::Down {
                debug!(host = %self.hosts[w], window, silent_rounds = self.suspect_at, "watched host suspect");
                self.report(Report::Suspect {
                    host: self.hosts[w],
                    window,
                });
            }
        }
    }

    fn close_window(&mut self, window: u32) {
        let [unknown, up, down] = self.states;
        self.report(Report::Window {
            window,
            up,
            down,
            unknown,
            sent: self.window_sent,
            answered: self.window_answered,
        });
        self.window_sent = 0;
        self.window_answered = 0;
        self.publish(window);
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

    /// Every host's state and counters, in place of what `hosts` held.
    fn host_statuses(&self, hosts: &mut Vec<HostStatus>) {
        hosts.clear();
        hosts.extend(self.hosts.iter().enumerate().map(|(i, host)| {
            let slot = self.counters.slot(i);
            HostStatus {
                host: *host,
                state: self.health[i].state().to_string(),
                since_window: self.since[i],
                rtt_ms: (slot.total_replies != 0).then(|| f64::from(slot.rtt_ns) / 1e6),
                probes_sent: u64::from(self.sent[i]),
                replies: u64::from(slot.total_replies),
            }
        }));
    }

    fn report(&self, report: Report) {
        // The receiver only goes away at shutdown.
        let _ = self.reports.send(report);
    }
}

fn state_index(state: State) -> usize {
    match state {
        State::Unknown => 0,
        State::Up => 1,
        State::Down => 2,
    }
}

/// How a round is paced: `slices` groups of contiguous hosts, `spacing` apart, each checked
/// `wait` after every attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Plan {
    hosts: usize,
    slices: usize,
    spacing: Duration,
    wait: Duration,
    attempts: u32,
    /// Every step of a round, in time order, as offsets from the round's start: the same for
    /// every round, so computed once.
    events: Vec<Event>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    // Ties at the same instant: judge and retry what is due before sending more.
    Judge,
    Retry,
    Send,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Event {
    offset: Duration,
    step: Step,
    slice: usize,
}

/// Slices are at least this far apart: finer pacing only costs timer wake-ups.
const MIN_SPACING: Duration = Duration::from_millis(1);

impl Plan {
    fn new(timing: &Timing, hosts: usize) -> Self {
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

    /// Hosts of slice `s`.
    fn range(&self, s: usize) -> Range<usize> {
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
fn suspect_threshold(timing: &Timing, lead: Duration) -> u32 {
    let down_at = timing.failed_windows.saturating_mul(timing.probes);
    let lead_rounds = lead.as_nanos().div_ceil(timing.round().as_nanos().max(1)) as u32 + 1;
    down_at.saturating_sub(lead_rounds).max(1)
}

/// Which round a tick `elapsed` after the start belongs to.
fn round_index(elapsed: Duration, round: Duration) -> u64 {
    (elapsed.as_nanos() / round.as_nanos().max(1)) as u64
}

/// For each host of `new`, its index in `old` (both sorted), or `None` if it is new.
fn origins(old: &[Ipv4Addr], new: &[Ipv4Addr]) -> Vec<Option<usize>> {
    let mut i = 0;
    new.iter()
        .map(|host| {
            while i < old.len() && old[i] < *host {
                i += 1;
            }
            (old.get(i) == Some(host)).then_some(i)
        })
        .collect()
}

/// Per-host values re-indexed after [`origins`]: kept hosts keep theirs, new ones get `fresh`.
fn moved<T: Clone>(from: &[Option<usize>], old: &[T], fresh: T) -> Vec<T> {
    from.iter()
        .map(|f| f.map_or_else(|| fresh.clone(), |i| old[i].clone()))
        .collect()
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
    fn a_reload_keeps_each_remaining_hosts_values_wherever_it_moves() {
        let a = |last: u8| Ipv4Addr::new(192, 0, 2, last);
        let old = [a(1), a(5), a(9)];
        let new = [a(0), a(1), a(6), a(9), a(200)];
        let from = origins(&old, &new);
        assert_eq!(from, [None, Some(0), None, Some(2), None]);
        assert_eq!(
            moved(&from, &["one", "five", "nine"], "new"),
            ["new", "one", "new", "nine", "new"]
        );
        assert_eq!(origins(&old, &old), [Some(0), Some(1), Some(2)]);
        assert_eq!(origins(&old, &[]), []);
        assert_eq!(origins(&[], &old), [None, None, None]);
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
    fn roles_are_found_in_the_sorted_host_list() {
        let hosts: Vec<Ipv4Addr> = ["192.0.2.1", "192.0.2.9", "192.0.2.254"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let roles = Roles::find(&hosts, &[hosts[1]], &[hosts[2], hosts[0]]);
        assert_eq!(roles.watches, [1]);
        assert_eq!(roles.witnesses, [2, 0]);
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
