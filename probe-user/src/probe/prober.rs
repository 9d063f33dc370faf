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
    config::timing::Timing,
    model::{
        events::{HostEvent, HostReport, Report, WindowCounts},
        health::{Change, Health, State},
        snapshot::{HostStatus, Observed},
    },
    probe::{
        counters::Counters,
        hosts::{moved, origins, Roles},
        plan::{suspect_threshold, Epoch, Event, Plan, Step},
        sender::{Round, Sender},
        stats::Stats,
    },
};

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
    /// Per host: when its last reply arrived, in ms since `started` plus one (0: never).
    heard: Vec<u32>,
    started: Instant,
    late_rounds: u64,
    read_time: Duration,
    reloads: Option<mpsc::UnboundedReceiver<Reload>>,
}

/// Where the loop stands: the round numbering, the ticker, the current window and its cookie,
/// and the last round run.
struct Position {
    epoch: Epoch,
    ticker: Interval,
    window: u32,
    cookie: u32,
    last_round: Option<u64>,
}

impl Position {
    /// Window 1 begins now; no window has been started yet (window 0).
    fn start(timing: &Timing) -> Self {
        let start = Instant::now();
        Self {
            epoch: Epoch {
                start,
                round: 0,
                window: 1,
            },
            ticker: ticker(start, timing.round()),
            window: 0,
            cookie: 0,
            last_round: None,
        }
    }

    /// A new timing from round `k` (window `window`, begun at `tick`) on: the numbering
    /// restarts there without a gap, and the ticker follows the new round length.
    fn retime(&mut self, tick: Instant, k: u64, window: u32, timing: &Timing) {
        self.epoch = Epoch {
            start: tick,
            round: k,
            window,
        };
        self.ticker = ticker(tick + timing.round(), timing.round());
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
            heard: vec![0; n],
            started: Instant::now(),
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
        let mut at = Position::start(&self.timing);
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
        loop {
            let tick = tokio::select! {
                _ = shutdown.cancelled() => break,
                tick = at.ticker.tick() => tick,
            };
            let (k, window) = at.epoch.locate(tick, &self.timing);
            self.count_late_rounds(&mut at, k);
            if window != at.window {
                if self.count.is_some_and(|count| at.window >= count) {
                    break;
                }
                self.start_window(&mut at, tick, k, window)?;
            }
            let probe = Round {
                ident: self.ident,
                window: at.window,
                cookie: at.cookie,
                seq: u32::try_from(k).unwrap_or(u32::MAX),
            };
            if !self.run_round(tick, &probe, &shutdown).await {
                break;
            }
            if at.epoch.locate(tick + self.timing.round(), &self.timing).1 != at.window {
                self.close_window(at.window);
            }
        }
        Ok(self.finish(at.window))
    }

    /// Counts (and warns of) the rounds skipped since the last one, when the loop ran late.
    fn count_late_rounds(&mut self, at: &mut Position, k: u64) {
        if let Some(prev) = at.last_round {
            if k > prev + 1 {
                self.late_rounds += k - prev - 1;
                warn!(
                    skipped = k - prev - 1,
                    "probe rounds skipped: the loop ran late"
                );
            }
        }
        at.last_round = Some(k);
    }

    /// Window `window` begins with round `k` at `tick`: a pending reload applies from here,
    /// and the window gets its cookie.
    fn start_window(
        &mut self,
        at: &mut Position,
        tick: Instant,
        k: u64,
        window: u32,
    ) -> anyhow::Result<()> {
        at.window = window;
        // Between two windows: nothing of the last one is still to be judged.
        if let Some(reload) = self.reloads.as_mut().and_then(|r| r.try_recv().ok()) {
            let retimed = reload.timing != self.timing;
            if self.reload(reload, window) && retimed {
                at.retime(tick, k, window, &self.timing);
            }
        }
        at.cookie = rand::random();
        self.counters.publish(ProbeConfig {
            ident: u32::from(self.ident),
            window,
            cookie: at.cookie,
            enabled: 1,
            hosts: self.hosts.len() as u32,
        })
    }

    /// Carries out the round's plan from `tick` on: sends, retries and judgements, each at its
    /// time. False if `shutdown` fired meanwhile.
    async fn run_round(
        &mut self,
        tick: Instant,
        probe: &Round,
        shutdown: &CancellationToken,
    ) -> bool {
        for e in 0..self.plan.events.len() {
            let event = self.plan.events[e];
            let at = tick + event.offset;
            if at > Instant::now() {
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            self.step(tick, event, probe);
        }
        true
    }

    /// One step of the plan for one slice of hosts.
    fn step(&mut self, tick: Instant, event: Event, probe: &Round) {
        let range = self.plan.range(event.slice);
        let sent_at = tick + self.plan.send_offset(event.slice);
        match event.step {
            Step::Send => {
                self.answered[range.clone()].fill(false);
                self.sent[range.clone()]
                    .iter_mut()
                    .for_each(|n| *n = n.wrapping_add(1));
                self.batch.clear();
                self.batch.extend_from_slice(&self.hosts[range]);
                self.send(probe);
            }
            Step::Retry => {
                self.read(range.clone(), sent_at);
                self.batch.clear();
                for i in range.filter(|i| !self.answered[*i]) {
                    self.batch.push(self.hosts[i]);
                    self.sent[i] = self.sent[i].wrapping_add(1);
                }
                self.send(probe);
            }
            Step::Judge => {
                self.read(range.clone(), sent_at);
                self.judge(range, probe.window);
            }
        }
    }

    /// What the loop saw, logged and returned, once it stopped after `windows` windows.
    fn finish(mut self, windows: u32) -> Outcome {
        let kernel = self.counters.stats();
        info!(
            windows,
            late_rounds = self.late_rounds,
            counted = kernel[Stat::Counted as usize],
            wrong_cookie = kernel[Stat::WrongCookie as usize],
            stale_window = kernel[Stat::StaleWindow as usize],
            unknown_host = kernel[Stat::UnknownHost as usize],
            "stopped probing"
        );
        let rtt_known = self.seen.iter().filter(|total| **total != 0).count() as u64;
        self.stats.add_late_rounds(self.late_rounds);
        Outcome {
            stats: self.stats,
            windows,
            states: self.states,
            rtt_known,
        }
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
        self.heard = moved(&from, &self.heard, 0);
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
            self.report(HostReport::Witnesses { alive, window });
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
            self.report(HostReport::Known(HostEvent {
                host: *host,
                change: Change {
                    from: State::Unknown,
                    to,
                    silent_rounds,
                    good_windows: 0,
                },
                window,
                at: SystemTime::now(),
                silent_for: self.timing.round() * silent_rounds,
                heard_ago: self.heard_ago(w),
                window_len: self.timing.window,
                rtt: None,
            }));
        }
        if !self.witnesses_alive {
            self.report(HostReport::Witnesses {
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

    /// Marks the hosts in `range` whose reply counters moved, with their RTT; their probes
    /// of this round went out at `sent_at`.
    fn read(&mut self, range: Range<usize>, sent_at: Instant) {
        let started = std::time::Instant::now();
        self.read_slots(range, sent_at);
        self.read_time += started.elapsed();
    }

    fn read_slots(&mut self, range: Range<usize>, sent_at: Instant) {
        for i in range {
            let slot = self.counters.slot(i);
            let replies = slot.total_replies.wrapping_sub(self.seen[i]);
            if replies != 0 {
                self.seen[i] = slot.total_replies;
                self.answered[i] = true;
                let arrived = sent_at + Duration::from_nanos(u64::from(slot.rtt_ns));
                self.heard[i] = self.ms_since_start(arrived).saturating_add(1);
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
                self.report(HostReport::Witnesses { alive, window });
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
        for &w in self.roles.watches.iter().filter(|w| range.contains(w)) {
            let h = &self.health[w];
            if h.silent_rounds() == self.suspect_at && h.state() != State::Down {
                debug!(host = %self.hosts[w], window, silent_rounds = self.suspect_at, "watched host suspect");
                self.report(HostReport::Suspect {
                    host: self.hosts[w],
                    window,
                });
            }
        }
    }

    fn close_window(&mut self, window: u32) {
        let [unknown, up, down] = self.states;
        self.send_report(Report::Window(WindowCounts {
            window,
            up,
            down,
            unknown,
            sent: self.window_sent,
            answered: self.window_answered,
        }));
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
                state: self.health[i].state(),
                since_window: self.since[i],
                rtt_ms: (slot.total_replies != 0).then(|| f64::from(slot.rtt_ns) / 1e6),
                probes_sent: u64::from(self.sent[i]),
                replies: u64::from(slot.total_replies),
            }
        }));
    }

    /// Milliseconds from the loop's start to `at` (saturating).
    fn ms_since_start(&self, at: Instant) -> u32 {
        u32::try_from(at.saturating_duration_since(self.started).as_millis()).unwrap_or(u32::MAX)
    }

    /// How long ago host `i` was last heard, measured now; `None` if never.
    fn heard_ago(&self, i: usize) -> Option<Duration> {
        let heard = self.heard[i].checked_sub(1)?;
        let now = self.ms_since_start(Instant::now());
        Some(Duration::from_millis(u64::from(now.saturating_sub(heard))))
    }

    fn report(&self, report: HostReport) {
        self.send_report(Report::Host(report));
    }

    fn send_report(&self, report: Report) {
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
