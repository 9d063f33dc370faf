//! The probe loop: one task that sends each round's probes in batches spread across the round,
//! checks each host's probes once its reply is overdue (resending to those not answered yet,
//! `--retries`), feeds each round's verdict to the host's health in round order, and closes
//! each window's accounts once no reply to it can count any more.
//!
//! - A round (`window / probes`) is cut into batches of contiguous hosts (`plan`), sent apart.
//!   Each probe carries a MAC for its very host under its window's key; the kernel counts a
//!   reply once, in the host's answer bit for that probe, however late it comes within the
//!   timeout.
//! - A host's probe is checked when its reply is overdue (`rtt`: its SRTT plus a margin, at
//!   least the floor, at most the timeout): answered, the round is good; not, it is resent or,
//!   after the last attempt, judged silent. Far hosts' rounds overlap; their verdicts reach the
//!   health in order all the same (`rounds`).
//! - A window's probes and answers are counted when it is closed, `attempts` timeouts after it
//!   ended: every answer to it is in by then, and credited to it.

mod accounts;
mod check;
mod reload;
mod send;

use std::{collections::VecDeque, net::IpAddr, time::Duration};

use probe_common::{mac::Key, maps::Stat};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    config::timing::Timing,
    model::{events::Report, health::Health, snapshot::Observed},
    probe::{
        counters::Counters,
        hosts::Roles,
        plan::{suspect_threshold, Epoch, Plan},
        rounds::Pending,
        rtt::RttEstimate,
        sender::Sender,
        stats::Stats,
        timer::Timer,
        wheel::Wheel,
    },
};

/// A reload's new host list and timing, applied by the loop at the next window boundary.
pub struct Reload {
    /// Sorted and unique, like the list the prober started with.
    pub hosts: Vec<IpAddr>,
    pub roles: Roles,
    pub timing: Timing,
    pub suspect_lead: Duration,
    /// Watched hosts whose failover groups have just started: they are told the host's state.
    pub announce: Vec<IpAddr>,
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

/// Windows whose keys the loop remembers, for probes resent late.
const KEYS: usize = probe_common::maps::KEY_RING as usize;

pub struct Prober {
    hosts: Vec<IpAddr>,
    roles: Roles,
    health: Vec<Health>,
    /// Each host's `total_replies` when last read.
    seen: Vec<u32>,
    /// Per host: probes sent, and the window its state began in.
    sent: Vec<u32>,
    since: Vec<u32>,
    /// Per host: when its last reply arrived, in ms since `started` plus one (0: never).
    heard: Vec<u32>,
    /// Per host: its round-trip estimate, and its rounds waiting for a verdict.
    rtt: Vec<RttEstimate>,
    pending: Vec<Pending>,
    counters: Box<dyn Counters>,
    sender: Sender,
    timing: Timing,
    plan: Plan,
    ident: u16,
    /// Each window's key, at `window % KEYS`.
    keys: Vec<Key>,
    /// The next probe sequence, and the next round's number among those sent.
    seq_next: u32,
    next_round: u32,
    /// The window of each round, at `round % KEYS`.
    round_windows: Vec<u32>,
    /// Each host's probe of each round, to check when its reply is overdue.
    checks: Wheel<check::Check>,
    /// Probes to resend at this wake-up.
    retries: Vec<check::Check>,
    /// The checks due at this wake-up (kept for its capacity).
    due: Vec<check::Check>,
    /// Windows whose answers are not counted yet, oldest first.
    windows: VecDeque<accounts::OpenWindow>,
    batch: Vec<IpAddr>,
    /// Hosts that missed their last round: their first retry goes with their first probe.
    eager: Vec<IpAddr>,
    /// Silent rounds of the watched host at which it becomes suspect.
    suspect_at: u32,
    witnesses_alive: bool,
    reports: mpsc::UnboundedSender<Report>,
    stats: Stats,
    states: [u64; 3],
    /// Stop after this many windows.
    count: Option<u32>,
    /// Log every state change (the daemon); `monitor` prints them itself.
    log_changes: bool,
    /// Published once per window for `/metrics` and `/status`, if anyone serves them.
    observed: Option<Observed>,
    started: Instant,
    late_rounds: u64,
    read_time: Duration,
    send_trouble: send::Trouble,
    reloads: Option<mpsc::UnboundedReceiver<Reload>>,
}

/// Where the loop stands.
struct Position {
    epoch: Epoch,
    /// The next round to start, and the one being sent (if any).
    next: u64,
    current: Option<send::RoundAt>,
    /// The window of the latest round started (none yet: `started` is false).
    window: u32,
    started: bool,
    /// No more rounds: the loop waits for the last checks and window closes, then ends.
    stopping: bool,
}

impl Prober {
    /// `hosts` must be sorted (as the counters index them). `suspect_lead`: how long before a
    /// possible DOWN of the watched host the failover wants to hear of it.
    pub fn new(
        hosts: Vec<IpAddr>,
        roles: Roles,
        counters: Box<dyn Counters>,
        sender: Sender,
        timing: Timing,
        suspect_lead: Duration,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Self {
        let n = hosts.len();
        let started = Instant::now();
        Self {
            plan: Plan::new(&timing, n),
            health: vec![Health::new(); n],
            seen: vec![0; n],
            sent: vec![0; n],
            since: vec![0; n],
            heard: vec![0; n],
            rtt: vec![RttEstimate::default(); n],
            pending: vec![Pending::starting_at(0); n],
            hosts,
            roles,
            counters,
            sender,
            suspect_at: suspect_threshold(&timing, suspect_lead),
            timing,
            ident: rand::random::<u16>().max(1),
            keys: vec![Key::default(); KEYS],
            seq_next: 0,
            next_round: 0,
            round_windows: vec![0; KEYS],
            checks: Wheel::new(started),
            retries: Vec::new(),
            due: Vec::new(),
            windows: VecDeque::new(),
            batch: Vec::new(),
            eager: Vec::new(),
            witnesses_alive: true,
            reports,
            stats: Stats::new(),
            states: [n as u64, 0, 0],
            count: None,
            log_changes: false,
            observed: None,
            started,
            late_rounds: 0,
            read_time: Duration::ZERO,
            send_trouble: send::Trouble::default(),
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

    /// Stop on its own after `windows` windows (and their last answers).
    pub fn stop_after(mut self, windows: Option<u32>) -> Self {
        self.count = windows;
        self
    }

    /// Probes until `shutdown` fires or the window count is reached and its answers are in;
    /// returning drops the counters (detaching the XDP program).
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<Outcome> {
        let mut at = Position {
            epoch: Epoch {
                start: self.started,
                round: 0,
                window: 1,
            },
            next: 0,
            current: None,
            window: 0,
            started: false,
            stopping: false,
        };
        info!(
            ident = self.ident,
            hosts = self.hosts.len(),
            window = ?self.timing.window,
            probes = self.timing.probes,
            retries = self.timing.retries,
            timeout = ?self.timing.timeout,
            reply_wait_floor = ?self.plan.floor,
            batches = self.plan.slices,
            "probing"
        );
        // Without a timerfd, tokio's millisecond sleeps will do.
        let mut timer = Timer::new().ok();
        loop {
            let now = Instant::now();
            self.send_due(&mut at, now)?;
            self.check_due(now);
            self.close_due(now);
            let Some(wake) = self.next_wake(&at) else {
                break;
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = sleep_until(&mut timer, wake) => {}
            }
        }
        Ok(self.finish(&at))
    }

    /// When the loop has something to do next: a batch to send, a check due, a window to
    /// close. `None` once it stopped and all is done.
    fn next_wake(&self, at: &Position) -> Option<Instant> {
        let send = (!at.stopping).then(|| match &at.current {
            Some(round) => round.start + self.plan.send_offset(round.slice),
            None => at.epoch.start_of(at.next, &self.timing),
        });
        let close = self
            .windows
            .front()
            .and_then(|w| w.closes_at(self.timing.timeout));
        [send, self.checks.next_due(), close]
            .into_iter()
            .flatten()
            .min()
    }

    /// What the loop saw, logged and returned, once it stopped: windows still open are closed
    /// now (answers still on their way are not waited for).
    fn finish(mut self, at: &Position) -> Outcome {
        let now = Instant::now();
        self.end_window(now);
        while let Some(window) = self.windows.pop_front() {
            self.close_window(window);
        }
        let kernel = self.counters.stats();
        info!(
            windows = at.window,
            late_rounds = self.late_rounds,
            counted = kernel[Stat::Counted as usize],
            forged = kernel[Stat::Forged as usize],
            stale = kernel[Stat::Stale as usize],
            replayed = kernel[Stat::Replayed as usize],
            unknown_host = kernel[Stat::UnknownHost as usize],
            "stopped probing"
        );
        let rtt_known = self.seen.iter().filter(|total| **total != 0).count() as u64;
        self.stats.add_late_rounds(self.late_rounds);
        Outcome {
            stats: self.stats,
            windows: at.window,
            states: self.states,
            rtt_known,
        }
    }

    /// Milliseconds from the loop's start to `at` (saturating).
    fn ms_since_start(&self, at: Instant) -> u32 {
        u32::try_from(at.saturating_duration_since(self.started).as_millis()).unwrap_or(u32::MAX)
    }

    /// When host `i`'s reply to a probe sent now is overdue.
    fn due(&self, i: usize) -> Duration {
        self.rtt[i].due(self.plan.floor, self.timing.timeout)
    }

    /// When to first look at host `i`'s probe sent now: when it is overdue, or, for a host
    /// without an RTT estimate yet (overdue only at the timeout), after the floor already, so
    /// that a near host is known UP at once.
    fn first_look(&self, i: usize) -> Duration {
        if self.rtt[i].srtt().is_some() {
            self.due(i)
        } else {
            self.plan.floor
        }
    }
}

/// Waits until `at` on the precise timer if there is one, else on tokio's.
async fn sleep_until(timer: &mut Option<Timer>, at: Instant) {
    if let Some(timer) = timer {
        if timer.sleep_until(at).await.is_ok() {
            return;
        }
    }
    tokio::time::sleep_until(at).await
}

fn state_index(state: crate::model::health::State) -> usize {
    use crate::model::health::State;
    match state {
        State::Unknown => 0,
        State::Up => 1,
        State::Down => 2,
    }
}
