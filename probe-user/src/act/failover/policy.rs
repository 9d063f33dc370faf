//! When to take the VIP and when to give it back: the decisions, without any I/O.
//!
//! The executor (`failover::Failover`) feeds facts in (the primary is suspect, DOWN or UP again,
//! the witnesses' liveness, the result of an ARP conflict check, the outcome of a claim, another
//! machine answering for the VIP we hold, the held VIP found gone, the link's state, the
//! passing of time) and carries out the [`Action`]s that come back. Time is a `Duration` since
//! start, so tests drive it with a fake clock.

use std::time::Duration;

use crate::{
    config::flags::Failback,
    model::cluster::{Agreed, GroupView, Mandate},
};

/// How long after a failed attempt to put the VIP back the next one is made.
const RESTORE_RETRY: Duration = Duration::from_millis(100);

/// What the executor must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run an RFC 5227 ARP probe for the VIP; report with [`Policy::conflict_checked`].
    CheckConflict,
    /// Add the VIP, announce it, report; then call [`Policy::claimed`].
    Claim,
    /// Remove the VIP, announce it for the primary, report.
    Release,
    /// Another machine answers for the VIP we hold: two holders on the wire. Remove the VIP
    /// at once (whatever the hold-down or failback), announce it for that MAC, report. With
    /// `failback = keep` it is reported as a conflict.
    Yield { holder: [u8; 6], keep: bool },
    /// The VIP we hold is gone from the interface (removed by someone else, or flushed): add
    /// it back, announce it if the link is up, count it; mail if `report` (once an episode).
    /// Then call [`Policy::restored`].
    Restore { report: bool },
    /// The link is up again while we hold the VIP: make sure it is there, announce it again.
    Reannounce,
    /// Cluster: we may no longer hold the VIP (our lease lapsed, or another node is the
    /// holder): remove it at once, whatever the hold-down, and report.
    Fence,
    /// The primary is DOWN, but so is every witness: we are the one cut off. Once per episode.
    ReportIsolated,
    /// Another machine answers ARP for the VIP: not taken. Once per episode.
    ReportConflict([u8; 6]),
    /// The primary answers again after being DOWN. `release_in` is when the VIP goes back
    /// (`None`: we do not hold it, or we keep it).
    ReportPrimaryBack {
        holding: bool,
        release_in: Option<Duration>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    pub failback: Failback,
    pub hold_down: Duration,
    /// Whether to check for another holder of the VIP before taking it.
    pub conflict_check: bool,
    /// How long a conflict check's answer stays good.
    pub check_valid_for: Duration,
    /// One node of a cluster: the primary's state is what a quorum agrees
    /// ([`Policy::cluster`]), and claims need the cluster's mandate. Alone: our own verdicts.
    pub clustered: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Primary {
    Unknown,
    Up,
    Down,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    None,
    Pending,
    Clear { at: Duration },
    Found { holder: [u8; 6], at: Duration },
}

#[derive(Debug)]
pub struct Policy {
    cfg: PolicyConfig,
    primary: Primary,
    witnesses_alive: bool,
    holding: bool,
    claim_pending: bool,
    claimed_at: Duration,
    check: Check,
    isolation_reported: bool,
    conflict_reported: bool,
    /// We yielded the VIP to another machine and have no evidence since that it is gone
    /// (its MAC is in `check`).
    yielded: bool,
    /// The held VIP is gone and not put back yet; an attempt is running; a failed one is
    /// retried from this time; the episode was reported.
    restore_due: bool,
    restore_pending: bool,
    restore_retry_at: Duration,
    loss_reported: bool,
    /// The link was last seen up and running.
    link_running: bool,
    /// After a yield, no claim before this (the hold-down since the last claim: at most one
    /// claim per hold-down while a primary that answers for the VIP flaps).
    reclaim_after: Duration,
    /// What the cluster lets us do (alone: always lead).
    mandate: Mandate,
    /// A fence failed (the VIP may still be on the interface): tried again from this time.
    fence_retry_at: Option<Duration>,
}

impl Policy {
    /// A reload changed the timing, and with it how long a conflict check stays good.
    pub fn set_check_valid_for(&mut self, valid_for: Duration) {
        self.cfg.check_valid_for = valid_for;
    }

    pub fn new(cfg: PolicyConfig) -> Self {
        Self {
            cfg,
            primary: Primary::Unknown,
            witnesses_alive: true,
            holding: false,
            claim_pending: false,
            claimed_at: Duration::ZERO,
            check: Check::None,
            isolation_reported: false,
            conflict_reported: false,
            yielded: false,
            reclaim_after: Duration::ZERO,
            restore_due: false,
            restore_pending: false,
            restore_retry_at: Duration::ZERO,
            loss_reported: false,
            link_running: true,
            // A cluster node keeps what it holds until the cluster has spoken.
            mandate: if cfg.clustered {
                Mandate::Keep
            } else {
                Mandate::Lead
            },
            fence_retry_at: None,
        }
    }

    /// The outcome of an [`Action::Fence`]: a failed one is tried again a little later (the
    /// VIP may still be there), for as long as we may not hold it.
    pub fn fenced(&mut self, ok: bool, now: Duration) {
        self.fence_retry_at = (!ok).then_some(now + RESTORE_RETRY);
    }

    /// What the cluster says of our group: our mandate, and the primary's state as a quorum
    /// of nodes agrees on it. Losing the mandate while holding fences the VIP at once.
    pub fn cluster(&mut self, view: &GroupView, now: Duration) -> Vec<Action> {
        self.mandate = view.mandate;
        let mut actions = match view.primary {
            Agreed::Down if self.primary != Primary::Down => self.primary_down(now),
            Agreed::Up if self.primary != Primary::Up => self.primary_up(now),
            _ => vec![],
        };
        if self.mandate == Mandate::Drop && self.holding {
            self.holding = false;
            self.restore_due = false;
            self.check = Check::None;
            actions.push(Action::Fence);
            return actions;
        }
        actions.extend(self.evaluate(now));
        actions
    }

    pub fn holding(&self) -> bool {
        self.holding
    }

    /// Whether the link was last seen up and running (frames sent now leave).
    pub fn link_running(&self) -> bool {
        self.link_running
    }

    /// The VIP was already on our interface at start-up (a restart while holding it): carry
    /// on holding it, as if claimed now.
    pub fn adopt(&mut self, now: Duration) {
        self.holding = true;
        self.claimed_at = now;
    }

    /// The primary has been silent long enough that a DOWN may follow: check for a conflict
    /// now, so the answer is ready when the DOWN comes and the claim does not wait for it.
    pub fn primary_suspect(&mut self, now: Duration) -> Vec<Action> {
        if !self.cfg.conflict_check
            || self.mandate != Mandate::Lead
            || self.holding
            || self.check == Check::Pending
            || self.fresh(now)
        {
            return vec![];
        }
        self.check = Check::Pending;
        vec![Action::CheckConflict]
    }

    pub fn primary_down(&mut self, now: Duration) -> Vec<Action> {
        self.primary = Primary::Down;
        self.evaluate(now)
    }

    pub fn primary_up(&mut self, now: Duration) -> Vec<Action> {
        let was_down = self.primary == Primary::Down;
        self.primary = Primary::Up;
        self.isolation_reported = false;
        self.conflict_reported = false;
        // The primary is back: whoever we yielded to, a later DOWN is a new episode.
        self.yielded = false;
        let mut actions = Vec::new();
        let release_in = match (self.holding, self.cfg.failback) {
            (true, Failback::Release) => {
                Some((self.claimed_at + self.cfg.hold_down).saturating_sub(now))
            }
            _ => None,
        };
        if was_down {
            actions.push(Action::ReportPrimaryBack {
                holding: self.holding,
                release_in,
            });
        }
        actions.extend(self.tick(now));
        actions
    }

    /// Whether any witness answered recently.
    pub fn witnesses(&mut self, alive: bool, now: Duration) -> Vec<Action> {
        self.witnesses_alive = alive;
        if alive {
            self.isolation_reported = false;
        }
        self.evaluate(now)
    }

    /// The answer of a conflict check: the MAC of another holder of the VIP, if any.
    pub fn conflict_checked(&mut self, holder: Option<[u8; 6]>, now: Duration) -> Vec<Action> {
        self.check = match holder {
            Some(holder) => Check::Found { holder, at: now },
            None => {
                self.conflict_reported = false;
                self.yielded = false;
                Check::Clear { at: now }
            }
        };
        self.evaluate(now)
    }

    /// While we hold the VIP, another machine (`holder`) answers ARP for it or announces it:
    /// two holders on the wire. We yield at once, whatever the hold-down or the failback: the
    /// hold-down delays re-claiming, not yielding to a primary that already answers. We claim
    /// again once the hold-down since our last claim has passed and a conflict check finds
    /// nobody, or (checks off) after the primary came back and went DOWN anew. Ignored when
    /// we do not hold the VIP (a late report).
    pub fn holder_seen(&mut self, holder: [u8; 6], now: Duration) -> Vec<Action> {
        if !self.holding {
            return vec![];
        }
        self.holding = false;
        self.restore_due = false;
        self.yielded = true;
        self.reclaim_after = self.claimed_at + self.cfg.hold_down;
        self.check = Check::Found { holder, at: now };
        // The yield is the report; the DOWN path must not report the same holder again.
        self.conflict_reported = true;
        vec![Action::Yield {
            holder,
            keep: self.cfg.failback == Failback::Keep,
        }]
    }

    /// The outcome of a [`Action::Claim`]. A failed claim is tried again at the next tick.
    pub fn claimed(&mut self, ok: bool, now: Duration) {
        self.claim_pending = false;
        if ok {
            self.holding = true;
            self.claimed_at = now;
        }
    }

    /// The VIP could not be removed after [`Action::Yield`]: we still hold it (and the next
    /// answer from the other holder yields again).
    pub fn yield_failed(&mut self) {
        self.holding = true;
        self.yielded = false;
        self.reclaim_after = Duration::ZERO;
    }

    /// The VIP is no longer on the interface (an address event). Put back only while we hold
    /// it: a VIP we released or yielded is never put back.
    pub fn vip_gone(&mut self, now: Duration) -> Vec<Action> {
        if !self.holding {
            return vec![];
        }
        self.restore_due = true;
        self.restore_retry_at = now;
        self.restore_step(now)
    }

    /// The outcome of an [`Action::Restore`]: a failed one is tried again a little later.
    pub fn restored(&mut self, ok: bool, now: Duration) {
        self.restore_pending = false;
        if ok {
            self.restore_due = false;
            self.loss_reported = false;
        } else {
            self.restore_retry_at = now + RESTORE_RETRY;
        }
    }

    /// The link's state (an event); coming back up while we hold the VIP re-announces it.
    pub fn link(&mut self, running: bool) -> Vec<Action> {
        let came_up = running && !self.link_running;
        self.link_running = running;
        if came_up && self.holding {
            vec![Action::Reannounce]
        } else {
            vec![]
        }
    }

    fn restore_step(&mut self, now: Duration) -> Vec<Action> {
        if !self.holding || !self.restore_due || self.restore_pending || now < self.restore_retry_at
        {
            return vec![];
        }
        self.restore_pending = true;
        let report = !self.loss_reported;
        self.loss_reported = true;
        vec![Action::Restore { report }]
    }

    /// Time passes: release once the hold-down is over, retry what is due.
    pub fn tick(&mut self, now: Duration) -> Vec<Action> {
        if let Some(at) = self.fence_retry_at {
            if self.mandate == Mandate::Lead || self.holding {
                // We may hold it again: the VIP the fence could not remove is ours again,
                // held (so a failback or a later fence takes it away).
                self.fence_retry_at = None;
                if !self.holding {
                    self.holding = true;
                    self.claimed_at = now;
                }
            } else if now >= at {
                self.fence_retry_at = None;
                return vec![Action::Fence];
            }
        }
        if self.holding
            && self.primary == Primary::Up
            && self.cfg.failback == Failback::Release
            && now >= self.claimed_at + self.cfg.hold_down
        {
            self.holding = false;
            self.restore_due = false;
            self.check = Check::None;
            return vec![Action::Release];
        }
        let restore = self.restore_step(now);
        if !restore.is_empty() {
            return restore;
        }
        self.evaluate(now)
    }

    fn fresh(&self, now: Duration) -> bool {
        match self.check {
            Check::Clear { at } | Check::Found { at, .. } => {
                now.saturating_sub(at) <= self.cfg.check_valid_for
            }
            Check::None | Check::Pending => false,
        }
    }

    /// Should we take the VIP now?
    fn evaluate(&mut self, now: Duration) -> Vec<Action> {
        if self.primary != Primary::Down
            || self.holding
            || self.claim_pending
            || self.mandate != Mandate::Lead
        {
            return vec![];
        }
        // Yielded and nothing says the other holder left: without a conflict check, never
        // claim (two holders); with one, only a clear check (below) claims.
        if self.yielded && !self.cfg.conflict_check {
            return vec![];
        }
        if now < self.reclaim_after {
            return vec![];
        }
        if !self.witnesses_alive {
            if self.isolation_reported {
                return vec![];
            }
            self.isolation_reported = true;
            return vec![Action::ReportIsolated];
        }
        if self.cfg.conflict_check {
            match self.check {
                Check::Pending => return vec![],
                Check::Found { holder, .. } if self.fresh(now) => {
                    if self.conflict_reported {
                        return vec![];
                    }
                    self.conflict_reported = true;
                    return vec![Action::ReportConflict(holder)];
                }
                Check::Clear { .. } if self.fresh(now) => {}
                _ => {
                    self.check = Check::Pending;
                    return vec![Action::CheckConflict];
                }
            }
        }
        self.claim_pending = true;
        vec![Action::Claim]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    const OTHER: [u8; 6] = [2, 0, 0, 0, 0, 9];

    fn policy(failback: Failback, conflict_check: bool) -> Policy {
        Policy::new(PolicyConfig {
            failback,
            hold_down: ms(1000),
            conflict_check,
            check_valid_for: ms(200),
            clustered: false,
        })
    }

    /// Claims as the executor would, with a successful netlink call.
    fn claim(p: &mut Policy, now: Duration, actions: Vec<Action>) {
        assert_eq!(actions, vec![Action::Claim]);
        p.claimed(true, now);
        assert!(p.holding());
    }

    #[test]
    fn down_without_checks_claims_at_once() {
        let mut p = policy(Failback::Release, false);
        assert_eq!(p.primary_up(ms(0)), vec![]);
        let a = p.primary_down(ms(100));
        claim(&mut p, ms(100), a);
        // Further DOWN facts or ticks change nothing.
        assert_eq!(p.tick(ms(150)), vec![]);
        assert_eq!(p.primary_down(ms(160)), vec![]);
    }

    #[test]
    fn the_conflict_check_runs_ahead_so_the_claim_does_not_wait() {
        let mut p = policy(Failback::Release, true);
        p.primary_up(ms(0));
        assert_eq!(p.primary_suspect(ms(50)), vec![Action::CheckConflict]);
        assert_eq!(p.primary_suspect(ms(60)), vec![], "one check at a time");
        assert_eq!(p.conflict_checked(None, ms(100)), vec![], "not DOWN yet");
        let a = p.primary_down(ms(110));
        claim(&mut p, ms(110), a);
    }

    #[test]
    fn a_down_while_the_check_runs_waits_for_its_answer() {
        let mut p = policy(Failback::Release, true);
        p.primary_suspect(ms(50));
        assert_eq!(p.primary_down(ms(60)), vec![]);
        let a = p.conflict_checked(None, ms(70));
        claim(&mut p, ms(70), a);
    }

    #[test]
    fn a_stale_or_missing_check_is_run_before_claiming() {
        let mut p = policy(Failback::Release, true);
        p.primary_suspect(ms(0));
        p.conflict_checked(None, ms(10));
        assert_eq!(p.primary_down(ms(500)), vec![Action::CheckConflict]);
        let a = p.conflict_checked(None, ms(550));
        claim(&mut p, ms(550), a);
    }

    #[test]
    fn a_conflict_is_reported_once_and_never_claimed_until_it_clears() {
        let mut p = policy(Failback::Release, true);
        p.primary_suspect(ms(0));
        assert_eq!(p.conflict_checked(Some(OTHER), ms(50)), vec![]);
        assert_eq!(p.primary_down(ms(100)), vec![Action::ReportConflict(OTHER)]);
        assert_eq!(p.tick(ms(150)), vec![]);
        // Stale: checked again, still there, not reported again.
        assert_eq!(p.tick(ms(400)), vec![Action::CheckConflict]);
        assert_eq!(p.conflict_checked(Some(OTHER), ms(450)), vec![]);
        assert!(!p.holding());
        // The other holder goes away.
        assert_eq!(p.tick(ms(700)), vec![Action::CheckConflict]);
        let a = p.conflict_checked(None, ms(750));
        claim(&mut p, ms(750), a);
    }

    #[test]
    fn isolated_standby_does_not_claim_and_claims_once_the_witness_is_back() {
        let mut p = policy(Failback::Release, false);
        p.primary_up(ms(0));
        assert_eq!(p.witnesses(false, ms(50)), vec![]);
        assert_eq!(p.primary_down(ms(100)), vec![Action::ReportIsolated]);
        assert_eq!(p.tick(ms(200)), vec![]);
        assert_eq!(p.primary_down(ms(300)), vec![], "reported once");
        let a = p.witnesses(true, ms(400));
        claim(&mut p, ms(400), a);
    }

    #[test]
    fn release_waits_for_the_hold_down_and_happens_once() {
        let mut p = policy(Failback::Release, false);
        p.primary_up(ms(0));
        let a = p.primary_down(ms(100));
        claim(&mut p, ms(100), a);
        assert_eq!(
            p.primary_up(ms(300)),
            vec![Action::ReportPrimaryBack {
                holding: true,
                release_in: Some(ms(800))
            }]
        );
        assert_eq!(p.tick(ms(1000)), vec![]);
        assert_eq!(p.tick(ms(1100)), vec![Action::Release]);
        assert!(!p.holding());
        assert_eq!(p.tick(ms(1200)), vec![]);
    }

    #[test]
    fn release_is_immediate_once_the_hold_down_is_over() {
        let mut p = policy(Failback::Release, false);
        let a = p.primary_down(ms(0));
        claim(&mut p, ms(0), a);
        assert_eq!(
            p.primary_up(ms(2000)),
            vec![
                Action::ReportPrimaryBack {
                    holding: true,
                    release_in: Some(Duration::ZERO)
                },
                Action::Release
            ]
        );
    }

    #[test]
    fn the_primary_dying_again_during_the_hold_down_keeps_the_vip() {
        let mut p = policy(Failback::Release, false);
        let a = p.primary_down(ms(0));
        claim(&mut p, ms(0), a);
        p.primary_up(ms(200));
        assert_eq!(p.primary_down(ms(400)), vec![]);
        assert_eq!(p.tick(ms(5000)), vec![], "still DOWN: no release");
        assert!(p.holding());
    }

    #[test]
    fn keep_never_releases() {
        let mut p = policy(Failback::Keep, false);
        let a = p.primary_down(ms(0));
        claim(&mut p, ms(0), a);
        assert_eq!(
            p.primary_up(ms(100)),
            vec![Action::ReportPrimaryBack {
                holding: true,
                release_in: None
            }]
        );
        assert_eq!(p.tick(ms(100_000)), vec![]);
        assert!(p.holding());
    }

    #[test]
    fn a_failed_claim_is_retried_on_the_next_tick() {
        let mut p = policy(Failback::Release, false);
        assert_eq!(p.primary_down(ms(0)), vec![Action::Claim]);
        assert_eq!(p.tick(ms(10)), vec![], "claim still pending");
        p.claimed(false, ms(20));
        let a = p.tick(ms(30));
        claim(&mut p, ms(30), a);
    }

    #[test]
    fn an_adopted_vip_is_kept_while_the_primary_is_down_and_released_after_it_is_up() {
        let mut p = policy(Failback::Release, false);
        p.adopt(ms(0));
        assert_eq!(p.primary_down(ms(100)), vec![], "no second claim");
        assert!(p.holding());
        let mut q = policy(Failback::Release, false);
        q.adopt(ms(0));
        assert_eq!(
            q.primary_up(ms(100)),
            vec![],
            "no report: it was never DOWN for us"
        );
        assert_eq!(q.tick(ms(1000)), vec![Action::Release]);
    }

    const PRIMARY_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    /// Holding after a claim at 0 ms, hold-down 1000 ms.
    fn holding(failback: Failback, conflict_check: bool) -> Policy {
        let mut p = policy(failback, conflict_check);
        p.primary_up(ms(0));
        if conflict_check {
            p.primary_suspect(ms(0));
            p.conflict_checked(None, ms(0));
        }
        let a = p.primary_down(ms(0));
        claim(&mut p, ms(0), a);
        p
    }

    #[test]
    fn a_primary_answering_for_the_vip_during_the_hold_down_is_yielded_to_at_once() {
        let mut p = holding(Failback::Release, false);
        // The primary's link comes back: it answers ARP for its VIP before any good window.
        assert_eq!(
            p.holder_seen(PRIMARY_MAC, ms(100)),
            vec![Action::Yield {
                holder: PRIMARY_MAC,
                keep: false
            }]
        );
        assert!(!p.holding());
        // Still DOWN by its probes: no claim, no second report, however long it takes.
        assert_eq!(p.primary_down(ms(150)), vec![]);
        assert_eq!(p.tick(ms(5000)), vec![]);
        // Then UP: reported as back, nothing to release.
        assert_eq!(
            p.primary_up(ms(5100)),
            vec![Action::ReportPrimaryBack {
                holding: false,
                release_in: None
            }]
        );
        assert_eq!(p.tick(ms(20_000)), vec![], "no release twice");
    }

    #[test]
    fn a_yield_that_could_not_remove_the_vip_is_tried_again() {
        let mut p = holding(Failback::Release, false);
        assert_eq!(p.holder_seen(PRIMARY_MAC, ms(100)).len(), 1);
        p.yield_failed();
        assert!(p.holding());
        assert_eq!(
            p.holder_seen(PRIMARY_MAC, ms(150)),
            vec![Action::Yield {
                holder: PRIMARY_MAC,
                keep: false
            }]
        );
    }

    #[test]
    fn keep_yields_too_and_says_so() {
        let mut p = holding(Failback::Keep, false);
        p.primary_up(ms(100));
        assert!(
            p.holding(),
            "keep: the primary's return alone changes nothing"
        );
        assert_eq!(
            p.holder_seen(PRIMARY_MAC, ms(200)),
            vec![Action::Yield {
                holder: PRIMARY_MAC,
                keep: true
            }]
        );
        assert!(!p.holding());
    }

    #[test]
    fn a_late_report_after_the_vip_is_gone_does_nothing() {
        let mut p = holding(Failback::Release, false);
        assert!(p.primary_up(ms(2000)).contains(&Action::Release));
        assert_eq!(p.holder_seen(PRIMARY_MAC, ms(2010)), vec![]);
        let mut never = policy(Failback::Release, false);
        assert_eq!(never.holder_seen(PRIMARY_MAC, ms(0)), vec![]);
    }

    #[test]
    fn after_a_yield_a_clear_check_is_needed_to_claim_again() {
        let mut p = holding(Failback::Release, true);
        p.holder_seen(PRIMARY_MAC, ms(100));
        // The DOWN path does not re-report the holder it yielded to.
        assert_eq!(p.primary_down(ms(150)), vec![]);
        // The hold-down since our claim (at 0) over: checked again; the other holder still
        // answers: nothing, no report.
        assert_eq!(p.tick(ms(999)), vec![]);
        assert_eq!(p.tick(ms(1000)), vec![Action::CheckConflict]);
        assert_eq!(p.conflict_checked(Some(PRIMARY_MAC), ms(1010)), vec![]);
        assert!(!p.holding());
        // It went away: the next check is clear, and we claim.
        assert_eq!(p.tick(ms(1300)), vec![Action::CheckConflict]);
        let a = p.conflict_checked(None, ms(1310));
        claim(&mut p, ms(1310), a);
    }

    #[test]
    fn a_flapping_primary_that_answers_for_the_vip_is_claimed_from_once_per_hold_down() {
        let mut p = holding(Failback::Release, true);
        // Back (with its VIP) at 100, dead again at 400: yielded, then no claim until 1000.
        p.holder_seen(PRIMARY_MAC, ms(100));
        p.primary_up(ms(150));
        assert_eq!(p.primary_down(ms(400)), vec![], "within the hold-down");
        assert_eq!(p.tick(ms(999)), vec![]);
        assert_eq!(p.tick(ms(1000)), vec![Action::CheckConflict]);
        let a = p.conflict_checked(None, ms(1010));
        claim(&mut p, ms(1010), a);
        // A hold-down of zero claims again as soon as a check finds the other holder gone.
        let mut q = Policy::new(PolicyConfig {
            hold_down: Duration::ZERO,
            ..p.cfg
        });
        assert_eq!(q.primary_down(ms(0)), vec![Action::CheckConflict]);
        let a = q.conflict_checked(None, ms(0));
        claim(&mut q, ms(0), a);
        q.holder_seen(PRIMARY_MAC, ms(100));
        assert_eq!(q.tick(ms(400)), vec![Action::CheckConflict]);
        let a = q.conflict_checked(None, ms(410));
        claim(&mut q, ms(410), a);
    }

    #[test]
    fn without_checks_a_yield_is_not_undone_until_the_primary_returns_and_dies_again() {
        let mut p = holding(Failback::Release, false);
        p.holder_seen(PRIMARY_MAC, ms(100));
        assert_eq!(p.primary_down(ms(150)), vec![]);
        assert_eq!(p.tick(ms(10_000)), vec![]);
        p.primary_up(ms(10_100));
        let a = p.primary_down(ms(10_500));
        claim(&mut p, ms(10_500), a);
    }

    #[test]
    fn a_held_vip_removed_by_someone_else_is_put_back_and_reported_once_an_episode() {
        let mut p = holding(Failback::Release, false);
        assert_eq!(p.vip_gone(ms(100)), vec![Action::Restore { report: true }]);
        assert_eq!(p.vip_gone(ms(101)), vec![], "one attempt at a time");
        // It fails (say the interface is being replaced): retried later, not reported again.
        p.restored(false, ms(102));
        assert_eq!(p.tick(ms(150)), vec![]);
        assert_eq!(p.tick(ms(202)), vec![Action::Restore { report: false }]);
        p.restored(true, ms(203));
        assert_eq!(p.tick(ms(300)), vec![]);
        // A new removal is a new episode.
        assert_eq!(p.vip_gone(ms(400)), vec![Action::Restore { report: true }]);
        p.restored(true, ms(401));
    }

    #[test]
    fn a_released_or_yielded_vip_is_never_put_back() {
        let mut p = holding(Failback::Release, false);
        assert!(p.primary_up(ms(2000)).contains(&Action::Release));
        assert_eq!(p.vip_gone(ms(2001)), vec![], "our own removal");
        assert_eq!(p.tick(ms(3000)), vec![]);
        let mut q = holding(Failback::Release, false);
        q.holder_seen(PRIMARY_MAC, ms(100));
        assert_eq!(q.vip_gone(ms(101)), vec![]);
        let mut never = policy(Failback::Release, false);
        assert_eq!(never.vip_gone(ms(0)), vec![]);
        // Lost, then given back before it was put back: the retry does not happen.
        let mut r = holding(Failback::Release, false);
        r.vip_gone(ms(100));
        r.restored(false, ms(101));
        assert!(r.primary_up(ms(2000)).contains(&Action::Release));
        assert_eq!(r.tick(ms(2500)), vec![]);
    }

    #[test]
    fn the_link_coming_back_up_while_holding_reannounces() {
        let mut p = holding(Failback::Release, false);
        assert_eq!(p.link(true), vec![], "no change");
        assert_eq!(p.link(false), vec![]);
        assert_eq!(p.link(false), vec![]);
        assert_eq!(p.link(true), vec![Action::Reannounce]);
        assert_eq!(p.link(true), vec![]);
        let mut idle = policy(Failback::Release, false);
        idle.link(false);
        assert_eq!(idle.link(true), vec![], "nothing held");
    }

    #[test]
    fn the_first_up_at_start_is_not_reported_as_a_return() {
        let mut p = policy(Failback::Release, false);
        assert_eq!(p.primary_up(ms(0)), vec![]);
    }

    fn clustered(conflict_check: bool) -> Policy {
        Policy::new(PolicyConfig {
            failback: Failback::Release,
            hold_down: ms(1000),
            conflict_check,
            check_valid_for: ms(200),
            clustered: true,
        })
    }

    fn view(mandate: Mandate, primary: Agreed) -> GroupView {
        GroupView {
            mandate,
            primary,
            down: 0,
            up: 0,
            needed: 2,
            holder: None,
        }
    }

    #[test]
    fn a_cluster_node_claims_only_as_holder_and_only_on_a_quorums_down() {
        let mut p = clustered(false);
        // Our own DOWN is not the cluster's: nothing before a view.
        assert_eq!(p.tick(ms(0)), vec![]);
        assert_eq!(
            p.cluster(&view(Mandate::Lead, Agreed::Undecided), ms(5)),
            vec![]
        );
        assert_eq!(
            p.cluster(&view(Mandate::Drop, Agreed::Down), ms(10)),
            vec![]
        );
        assert_eq!(
            p.cluster(&view(Mandate::Keep, Agreed::Down), ms(20)),
            vec![]
        );
        // Elected while the quorum's DOWN stands (undecided since: nothing new): claim.
        let a = p.cluster(&view(Mandate::Lead, Agreed::Undecided), ms(30));
        claim(&mut p, ms(30), a);
        // The same view again changes nothing.
        assert_eq!(
            p.cluster(&view(Mandate::Lead, Agreed::Down), ms(40)),
            vec![]
        );
    }

    #[test]
    fn a_holder_that_loses_its_mandate_fences_at_once_whatever_the_hold_down() {
        let mut p = clustered(false);
        let a = p.cluster(&view(Mandate::Lead, Agreed::Down), ms(0));
        claim(&mut p, ms(0), a);
        // Keep (lapsed with on_quorum_loss = keep) holds on.
        assert_eq!(p.cluster(&view(Mandate::Keep, Agreed::Down), ms(5)), vec![]);
        assert!(p.holding());
        assert_eq!(
            p.cluster(&view(Mandate::Drop, Agreed::Down), ms(10)),
            vec![Action::Fence]
        );
        assert!(!p.holding());
        assert_eq!(p.tick(ms(20)), vec![], "no claim without the mandate");
        // Elected again (lease back, still our key): claim again.
        let a = p.cluster(&view(Mandate::Lead, Agreed::Down), ms(30));
        claim(&mut p, ms(30), a);
    }

    #[test]
    fn a_failed_fence_is_tried_again_until_it_succeeds() {
        let mut p = clustered(false);
        let a = p.cluster(&view(Mandate::Lead, Agreed::Down), ms(0));
        claim(&mut p, ms(0), a);
        assert_eq!(
            p.cluster(&view(Mandate::Drop, Agreed::Down), ms(10)),
            vec![Action::Fence]
        );
        p.fenced(false, ms(11));
        assert_eq!(p.tick(ms(50)), vec![], "not yet");
        assert_eq!(p.tick(ms(111)), vec![Action::Fence]);
        p.fenced(true, ms(112));
        assert_eq!(p.tick(ms(300)), vec![]);
        // A fence that failed, then the mandate back: the VIP left behind is held again, so
        // a failback takes it away later.
        let a = p.cluster(&view(Mandate::Lead, Agreed::Down), ms(400));
        claim(&mut p, ms(400), a);
        assert_eq!(
            p.cluster(&view(Mandate::Drop, Agreed::Down), ms(500)),
            vec![Action::Fence]
        );
        p.fenced(false, ms(501));
        let back = p.cluster(&view(Mandate::Lead, Agreed::Up), ms(510));
        assert!(
            matches!(back[..], [Action::ReportPrimaryBack { .. }]),
            "{back:?}"
        );
        assert_eq!(p.tick(ms(520)), vec![]);
        assert!(p.holding(), "the VIP that stayed is held");
        assert_eq!(
            p.tick(ms(1520)),
            vec![Action::Release],
            "and given back after the hold-down"
        );
    }

    #[test]
    fn a_cluster_node_keeps_an_adopted_vip_until_the_cluster_speaks() {
        let mut p = clustered(true);
        p.adopt(ms(0));
        assert_eq!(p.tick(ms(100)), vec![]);
        assert!(p.holding(), "Keep until the first view");
        // Another node is the holder: drop it.
        assert_eq!(
            p.cluster(&view(Mandate::Drop, Agreed::Undecided), ms(200)),
            vec![Action::Fence]
        );
    }

    #[test]
    fn a_cluster_holder_gives_the_vip_back_when_a_quorum_says_up() {
        let mut p = clustered(false);
        let a = p.cluster(&view(Mandate::Lead, Agreed::Down), ms(0));
        claim(&mut p, ms(0), a);
        let back = p.cluster(&view(Mandate::Lead, Agreed::Up), ms(500));
        assert_eq!(
            back,
            vec![Action::ReportPrimaryBack {
                holding: true,
                release_in: Some(ms(500))
            }]
        );
        assert_eq!(p.tick(ms(1000)), vec![Action::Release]);
    }

    #[test]
    fn only_the_holder_runs_conflict_checks() {
        let mut p = clustered(true);
        assert_eq!(p.primary_suspect(ms(0)), vec![], "not the holder");
        p.cluster(&view(Mandate::Lead, Agreed::Undecided), ms(5));
        assert_eq!(p.primary_suspect(ms(10)), vec![Action::CheckConflict]);
    }
}
