//! What a cluster node may do, without I/O: how long its lease is surely alive (fencing), what
//! its standing and the etcd keys it mirrors say about each failover group (may it hold the
//! VIP, what does a quorum say of the primary), and whether to campaign for a group.
//!
//! Time is a `Duration` since start, so tests drive it with a fake clock.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use serde::Serialize;

use crate::config::cluster::{OnQuorumLoss, Quorum};

/// The keys of the cluster under its prefix, as this node mirrors them: the live members
/// (node name, lease), each group's holder and verdicts, and each monitored target's state as
/// the nodes probing it last wrote it. Every key is bound to its writer's lease, so a node
/// that goes away takes its keys with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mirror {
    pub members: BTreeMap<String, i64>,
    pub groups: BTreeMap<String, GroupKeys>,
    pub targets: BTreeMap<IpAddr, BTreeMap<String, Verdict>>,
    /// Holder → observer → the holder's lease the observer suspects.
    pub suspects: BTreeMap<String, BTreeMap<String, i64>>,
    /// Members without failover groups (they say so in their member key).
    pub monitor_only: BTreeSet<String>,
}

/// Where a key sits, below the prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    /// `members/NODE`
    Member(String),
    /// `groups/GROUP/holder`, its value the holder's name
    Holder(String),
    /// `groups/GROUP/verdicts/NODE`
    GroupVerdict { group: String, node: String },
    /// `targets/ADDR/NODE`
    Target { target: IpAddr, node: String },
    /// `suspects/HOLDER/OBSERVER`, its value the holder's lease
    Suspect { holder: String, observer: String },
}

impl Slot {
    /// The full key, under `prefix` (which ends with `/`).
    pub fn under(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.key())
    }

    /// The key below the prefix.
    pub fn key(&self) -> String {
        match self {
            Slot::Member(node) => format!("members/{node}"),
            Slot::Holder(group) => format!("groups/{group}/holder"),
            Slot::GroupVerdict { group, node } => format!("groups/{group}/verdicts/{node}"),
            Slot::Target { target, node } => format!("targets/{target}/{node}"),
            Slot::Suspect { holder, observer } => format!("suspects/{holder}/{observer}"),
        }
    }

    /// The slot of a key below the prefix; `None` for keys we do not know (left alone).
    pub fn parse(key: &str) -> Option<Self> {
        let parts: Vec<&str> = key.split('/').collect();
        let ok = |s: &str| !s.is_empty();
        match parts.as_slice() {
            ["members", node] if ok(node) => Some(Slot::Member(node.to_string())),
            ["groups", group, "holder"] if ok(group) => Some(Slot::Holder(group.to_string())),
            ["groups", group, "verdicts", node] if ok(group) && ok(node) => {
                Some(Slot::GroupVerdict {
                    group: group.to_string(),
                    node: node.to_string(),
                })
            }
            ["targets", target, node] if ok(node) => Some(Slot::Target {
                target: target.parse().ok()?,
                node: node.to_string(),
            }),
            ["suspects", holder, observer] if ok(holder) && ok(observer) => Some(Slot::Suspect {
                holder: holder.to_string(),
                observer: observer.to_string(),
            }),
            _ => None,
        }
    }
}

impl Mirror {
    /// A key was written (`lease` 0: none). Values that do not parse are ignored.
    pub fn put(&mut self, key: &str, value: &str, lease: i64) {
        match Slot::parse(key) {
            Some(Slot::Member(node)) => {
                if value.starts_with(MONITOR_ONLY) {
                    self.monitor_only.insert(node.clone());
                } else {
                    self.monitor_only.remove(&node);
                }
                self.members.insert(node, lease);
            }
            Some(Slot::Holder(group)) => {
                self.groups.entry(group).or_default().holder = Some((value.to_string(), lease));
            }
            Some(Slot::GroupVerdict { group, node }) => {
                let keys = self.groups.entry(group).or_default();
                match Verdict::decode(value) {
                    Some(v) => {
                        keys.verdicts.insert(node, v);
                    }
                    None => {
                        keys.verdicts.remove(&node);
                    }
                }
            }
            Some(Slot::Target { target, node }) => {
                if let Some(v) = Verdict::decode(value) {
                    self.targets.entry(target).or_default().insert(node, v);
                }
            }
            Some(Slot::Suspect { holder, observer }) => {
                if let Ok(lease) = value.parse() {
                    self.suspects
                        .entry(holder)
                        .or_default()
                        .insert(observer, lease);
                }
            }
            None => {}
        }
    }

    /// A key was deleted (or expired with its lease).
    pub fn delete(&mut self, key: &str) {
        match Slot::parse(key) {
            Some(Slot::Member(node)) => {
                self.members.remove(&node);
                self.monitor_only.remove(&node);
            }
            Some(Slot::Holder(group)) => {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.holder = None;
                }
            }
            Some(Slot::GroupVerdict { group, node }) => {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.verdicts.remove(&node);
                }
            }
            Some(Slot::Target { target, node }) => {
                if let Some(t) = self.targets.get_mut(&target) {
                    t.remove(&node);
                    if t.is_empty() {
                        self.targets.remove(&target);
                    }
                }
            }
            Some(Slot::Suspect { holder, observer }) => {
                if let Some(s) = self.suspects.get_mut(&holder) {
                    s.remove(&observer);
                }
            }
            None => {}
        }
    }

    /// A lease is gone: its member and holder keys with it.
    pub fn forget_lease(&mut self, lease: i64) {
        self.members.retain(|_, l| *l != lease);
        for g in self.groups.values_mut() {
            if g.holder.as_ref().is_some_and(|(_, l)| *l == lease) {
                g.holder = None;
            }
        }
    }

    /// The live members that serve failover groups: the ones a group's quorum is of.
    pub fn voters(&self) -> Vec<String> {
        self.members
            .keys()
            .filter(|m| !self.monitor_only.contains(*m))
            .cloned()
            .collect()
    }

    /// One group's keys (none yet: empty).
    pub fn group(&self, group: &str) -> GroupKeys {
        self.groups.get(group).cloned().unwrap_or_default()
    }
}

/// How long before the lease could expire in etcd a node stops trusting it: half the lease,
/// so that after a revocation the others need not wait for the whole lease (see
/// [`hold_off`]).
pub fn fence_margin(ttl: Duration) -> Duration {
    ttl / 2
}

/// How long a new holder waits before claiming after the old holder's lease was revoked by
/// the others (rather than expired): the old holder may trust its lease until a margin
/// before `ttl` after its last renewal, which was sent before the revocation; it then has an
/// eighth of the lease to remove its VIPs (it takes milliseconds). Five eighths of the lease.
pub fn hold_off(ttl: Duration) -> Duration {
    ttl - fence_margin(ttl) + ttl / 8
}

/// A member whose heartbeat (its member key, rewritten every [`renew_every`]) was last seen
/// this many periods ago is suspected of being dead or cut off from etcd.
pub const STALE_PERIODS: u32 = 3;
/// We suspect others only while our own heartbeat came back within this many periods: a node
/// whose own view of etcd lags suspects nobody.
pub const FRESH_PERIODS: u32 = 2;

/// The holders (of any group) that `me` suspects at `now`: their heartbeat is older than
/// [`STALE_PERIODS`], while ours is fresh. `beats` are when each member's heartbeat was last
/// seen here.
pub fn stale_holders(
    mirror: &Mirror,
    beats: &BTreeMap<String, Duration>,
    me: &str,
    now: Duration,
    period: Duration,
) -> Vec<String> {
    let age = |node: &str| beats.get(node).map(|at| now.saturating_sub(*at));
    if age(me).is_none_or(|a| a >= period * FRESH_PERIODS) {
        return vec![];
    }
    let mut holders: Vec<String> = mirror
        .groups
        .values()
        .filter_map(|g| g.holder.as_ref().map(|(node, _)| node.clone()))
        .filter(|node| node != me && mirror.members.contains_key(node))
        .collect();
    holders.sort();
    holders.dedup();
    holders.retain(|node| age(node).is_none_or(|a| a > period * STALE_PERIODS));
    holders
}

/// Whether some node's lease was revoked by a quorum and the node has not come back: its
/// suspicions stay (under the observers' leases) until it rejoins. A seat that starts then
/// cannot tell whether that node held its group a moment ago, so it holds off once.
pub fn revoked_and_gone(mirror: &Mirror, quorum: Quorum) -> bool {
    mirror.suspects.iter().any(|(node, observers)| {
        !mirror.members.contains_key(node)
            && observers
                .values()
                .any(|lease| suspected_by_quorum(mirror, node, *lease, quorum))
    })
}

/// The members whose heartbeat was seen within [`STALE_PERIODS`] at `now` (sorted).
pub fn beating(
    mirror: &Mirror,
    beats: &BTreeMap<String, Duration>,
    now: Duration,
    period: Duration,
) -> Vec<String> {
    mirror
        .members
        .keys()
        .filter(|m| {
            beats
                .get(m.as_str())
                .is_some_and(|at| now.saturating_sub(*at) <= period * STALE_PERIODS)
        })
        .cloned()
        .collect()
}

/// Whether a quorum of the live members other than `holder` suspect its lease `lease`: then
/// it may be revoked, and a new holder must hold off (see [`hold_off`]).
pub fn suspected_by_quorum(mirror: &Mirror, holder: &str, lease: i64, quorum: Quorum) -> bool {
    let others: Vec<&String> = mirror.members.keys().filter(|n| *n != holder).collect();
    let Some(observers) = mirror.suspects.get(holder) else {
        return false;
    };
    let agreeing = others
        .iter()
        .filter(|n| observers.get(n.as_str()) == Some(&lease))
        .count();
    agreeing >= quorum.needed(others.len())
}

/// How often the lease is renewed and the heartbeat written: ten times a lease, so that
/// several renewals may be lost before the margin is reached, and at least four times a
/// second, so that a long lease does not make a dead holder slow to notice.
pub fn renew_every(ttl: Duration) -> Duration {
    (ttl / 10).min(Duration::from_millis(250))
}

/// The last moment our lease is surely alive in etcd, given when the last renewal that etcd
/// confirmed was *sent* (etcd restarts the lease's clock when it receives it, later): at the
/// earliest the lease expires `ttl` after that send, and we stop trusting it a margin before.
pub fn trusted_until(renewal_sent: Duration, ttl: Duration) -> Duration {
    renewal_sent + ttl - fence_margin(ttl)
}

/// Where this node stands with etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// Started, no lease yet, and a lease of an earlier run of ours may still be alive: keep
    /// what we hold (a restart while holding), claim nothing.
    Starting,
    /// Our lease is alive (renewed in time).
    Live,
    /// Our lease could not be renewed in time (etcd out of reach, or no majority there).
    Lapsed,
}

/// What a group's failover task may do with its VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mandate {
    /// Elected holder with a live lease: claim when a quorum says DOWN, hold.
    Lead,
    /// Keep what is held, claim nothing (starting, or lapsed with `on_quorum_loss = keep`).
    Keep,
    /// Hold nothing: remove the VIP at once if held (fencing, or another node is the holder).
    Drop,
}

/// A node's verdict on a group's primary, as published in etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub down: bool,
    pub window: u32,
}

impl Verdict {
    /// As stored: `down 17` or `up 17`.
    pub fn encode(self) -> String {
        format!("{} {}", if self.down { "down" } else { "up" }, self.window)
    }

    pub fn decode(text: &str) -> Option<Self> {
        let (state, window) = text.split_once(' ')?;
        let down = match state {
            "down" => true,
            "up" => false,
            _ => return None,
        };
        Some(Self {
            down,
            window: window.parse().ok()?,
        })
    }
}

/// What etcd says of one group: its holder (node name and lease) and each node's verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupKeys {
    pub holder: Option<(String, i64)>,
    pub verdicts: BTreeMap<String, Verdict>,
}

/// A verdict key's value before the node knows the primary's state (for neither side).
pub const UNKNOWN_VERDICT: &str = "unknown 0";

/// A member key's value (the heartbeat count) starts with this on a node without failover
/// groups (`monitor --cluster`): it is not asked for verdicts.
pub const MONITOR_ONLY: char = 'm';

/// What the cluster says of the primary: a quorum agrees it is DOWN, or UP, or neither yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Agreed {
    Down,
    Up,
    Undecided,
}

/// One group as this node sees the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupView {
    pub mandate: Mandate,
    pub primary: Agreed,
    /// Live nodes saying DOWN and UP, and how many must agree.
    pub down: usize,
    pub up: usize,
    pub needed: usize,
    pub holder: Option<String>,
}

/// What a node needs to judge a group.
#[derive(Clone, Copy, Debug)]
pub struct Judge<'a> {
    pub node: &'a str,
    pub standing: Standing,
    /// Our live lease: we lead only through a holder key under it.
    pub lease: Option<i64>,
    /// The keys were read at least once (before, an empty mirror says nothing).
    pub synced: bool,
    /// The group's last holder had its lease revoked a short while ago and may still hold
    /// the VIP: claim nothing yet.
    pub held_off: bool,
    pub quorum: Quorum,
    pub on_quorum_loss: OnQuorumLoss,
}

impl Judge<'_> {
    /// The group as this node sees it: `keys` from etcd, `voters` the live nodes that serve
    /// failover groups ([`Mirror::voters`]: nodes that only monitor are not asked). Only
    /// their verdicts count, and the quorum is of them all, whether they said anything yet
    /// or not: one node's word is never a quorum of several.
    pub fn view(&self, keys: &GroupKeys, voters: &[String]) -> GroupView {
        let counted = keys
            .verdicts
            .iter()
            .filter(|(node, _)| voters.contains(node));
        let down = counted.clone().filter(|(_, v)| v.down).count();
        let up = counted.count() - down;
        let needed = self.quorum.needed(voters.len());
        let primary = if down >= needed {
            Agreed::Down
        } else if up >= needed {
            Agreed::Up
        } else {
            Agreed::Undecided
        };
        let holder = keys.holder.as_ref().map(|(node, _)| node.clone());
        GroupView {
            mandate: self.mandate(keys.holder.as_ref()),
            primary,
            down,
            up,
            needed,
            holder,
        }
    }

    fn mandate(&self, holder: Option<&(String, i64)>) -> Mandate {
        let ours = holder.is_some_and(|(name, _)| name == self.node);
        let under_our_lease = ours && holder.map(|(_, l)| Some(*l)) == Some(self.lease);
        match self.standing {
            // An empty mirror, or our key still under a lease of an earlier run (inheriting
            // it is under way): keep what we hold, claim nothing.
            Standing::Live if !self.synced => Mandate::Keep,
            Standing::Live if ours && !under_our_lease => Mandate::Keep,
            Standing::Live if under_our_lease && self.held_off => Mandate::Keep,
            Standing::Live if under_our_lease => Mandate::Lead,
            Standing::Live => Mandate::Drop,
            Standing::Starting => Mandate::Keep,
            Standing::Lapsed => match self.on_quorum_loss {
                OnQuorumLoss::Keep => Mandate::Keep,
                OnQuorumLoss::Release => Mandate::Drop,
            },
        }
    }
}

/// Whether to try to become a group's holder, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Campaign {
    /// Nobody holds the group: create the holder key under our lease.
    Create,
    /// The holder key has our name under another lease (a run of ours before a restart):
    /// move it to our lease, so a restart does not wait for the old lease to expire.
    Inherit { old_lease: i64 },
    /// Someone holds it (or we do): wait for its key to go.
    Wait,
}

/// What to do about the holder key, for `node` with live lease `lease`.
pub fn campaign(holder: Option<&(String, i64)>, node: &str, lease: i64) -> Campaign {
    match holder {
        None => Campaign::Create,
        Some((name, old)) if name == node && *old != lease => Campaign::Inherit { old_lease: *old },
        Some(_) => Campaign::Wait,
    }
}

/// The lease's clock: when it was last confirmed renewed, and what that makes our standing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseClock {
    ttl: Duration,
    /// When we started: until `trusted_until(start)`, a lease of our previous run may live.
    start: Duration,
    /// No lease of ours was granted or lost yet in this run.
    starting: bool,
    /// The send time of the last renewal (or grant) etcd confirmed.
    renewed: Option<Duration>,
}

impl LeaseClock {
    pub fn new(ttl: Duration, start: Duration) -> Self {
        Self {
            ttl,
            start,
            starting: true,
            renewed: None,
        }
    }

    /// etcd confirmed a renewal (or a grant) sent at `sent`.
    pub fn renewed(&mut self, sent: Duration) {
        self.renewed = Some(self.renewed.map_or(sent, |r| r.max(sent)));
        self.starting = false;
    }

    /// The lease is gone (expired or revoked in etcd): no trust until a new one is granted.
    pub fn lost(&mut self) {
        self.renewed = None;
        // Not "starting" again: the start grace is for a lease of a previous run.
        self.starting = false;
    }

    /// Our standing at `now`.
    pub fn standing(&self, now: Duration) -> Standing {
        match self.renewed {
            Some(sent) if now < trusted_until(sent, self.ttl) => Standing::Live,
            Some(_) => Standing::Lapsed,
            None if self.starting && now < trusted_until(self.start, self.ttl) => {
                Standing::Starting
            }
            None => Standing::Lapsed,
        }
    }

    /// When the standing changes next if nothing is renewed (`None`: it will not).
    pub fn next_change(&self, now: Duration) -> Option<Duration> {
        let until = match self.renewed {
            Some(sent) => trusted_until(sent, self.ttl),
            None if self.starting => trusted_until(self.start, self.ttl),
            None => return None,
        };
        (until > now).then_some(until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn keys(holder: Option<&str>, verdicts: &[(&str, bool)]) -> GroupKeys {
        GroupKeys {
            holder: holder.map(|h| (h.to_string(), 7)),
            verdicts: verdicts
                .iter()
                .map(|(n, down)| {
                    (
                        n.to_string(),
                        Verdict {
                            down: *down,
                            window: 3,
                        },
                    )
                })
                .collect(),
        }
    }

    fn judge(standing: Standing) -> Judge<'static> {
        Judge {
            node: "n1",
            standing,
            lease: Some(7),
            synced: true,
            held_off: false,
            quorum: Quorum::Majority,
            on_quorum_loss: OnQuorumLoss::Release,
        }
    }

    #[test]
    fn one_nodes_down_does_not_make_a_quorum_of_three() {
        let live = nodes(&["n1", "n2", "n3"]);
        let v = judge(Standing::Live).view(
            &keys(Some("n1"), &[("n1", true), ("n2", false), ("n3", false)]),
            &live,
        );
        assert_eq!((v.primary, v.down, v.up, v.needed), (Agreed::Up, 1, 2, 2));
        assert_eq!(v.mandate, Mandate::Lead);
        let v = judge(Standing::Live).view(
            &keys(Some("n1"), &[("n1", true), ("n2", true), ("n3", false)]),
            &live,
        );
        assert_eq!(v.primary, Agreed::Down);
        let v = judge(Standing::Live).view(&keys(Some("n1"), &[("n1", true)]), &live);
        assert_eq!(v.primary, Agreed::Undecided, "one DOWN, nobody else yet");
    }

    #[test]
    fn only_live_nodes_verdicts_count() {
        // n3's verdict lingers (its lease not expired yet in our mirror) but n3 is not live.
        let live = nodes(&["n1", "n2"]);
        let v = judge(Standing::Live).view(
            &keys(Some("n2"), &[("n1", true), ("n2", true), ("n3", false)]),
            &live,
        );
        assert_eq!((v.down, v.up, v.needed), (2, 0, 2));
        assert_eq!(v.primary, Agreed::Down);
        assert_eq!(v.mandate, Mandate::Drop, "n2 is the holder");
    }

    #[test]
    fn the_mandate_follows_the_standing_and_the_holder() {
        let live = nodes(&["n1"]);
        let mine = keys(Some("n1"), &[]);
        let theirs = keys(Some("n2"), &[]);
        let nobody = keys(None, &[]);
        assert_eq!(
            judge(Standing::Live).view(&mine, &live).mandate,
            Mandate::Lead
        );
        assert_eq!(
            judge(Standing::Live).view(&theirs, &live).mandate,
            Mandate::Drop
        );
        assert_eq!(
            judge(Standing::Live).view(&nobody, &live).mandate,
            Mandate::Drop
        );
        assert_eq!(
            judge(Standing::Starting).view(&mine, &live).mandate,
            Mandate::Keep
        );
        assert_eq!(
            judge(Standing::Lapsed).view(&mine, &live).mandate,
            Mandate::Drop
        );
        let keep = Judge {
            on_quorum_loss: OnQuorumLoss::Keep,
            ..judge(Standing::Lapsed)
        };
        assert_eq!(keep.view(&mine, &live).mandate, Mandate::Keep);
        let held_off = Judge {
            held_off: true,
            ..judge(Standing::Live)
        };
        assert_eq!(held_off.view(&mine, &live).mandate, Mandate::Keep);
        // Our name on the key, but under a lease of an earlier run: inheriting is under way.
        let new_lease = Judge {
            lease: Some(8),
            ..judge(Standing::Live)
        };
        assert_eq!(new_lease.view(&mine, &live).mandate, Mandate::Keep);
        // Nothing read from etcd yet: an empty mirror is no reason to drop what we hold.
        let unsynced = Judge {
            synced: false,
            ..judge(Standing::Live)
        };
        assert_eq!(unsynced.view(&nobody, &live).mandate, Mandate::Keep);
    }

    #[test]
    fn only_nodes_that_serve_groups_make_a_groups_quorum() {
        // Two group nodes and two that only monitor: both group nodes' DOWN is a quorum.
        let mut m = Mirror::default();
        for (n, value) in [("m1", "m7"), ("m2", "m1"), ("n1", "3"), ("n2", "")] {
            m.put(&format!("members/{n}"), value, 1);
        }
        assert_eq!(m.voters(), ["n1", "n2"]);
        m.put("groups/g/verdicts/n1", "down 3", 1);
        let v = judge(Standing::Live).view(&m.group("g"), &m.voters());
        assert_eq!(
            (v.primary, v.down, v.needed),
            (Agreed::Undecided, 1, 2),
            "one of two"
        );
        m.put("groups/g/verdicts/n2", UNKNOWN_VERDICT, 1);
        let v = judge(Standing::Live).view(&m.group("g"), &m.voters());
        assert_eq!((v.primary, v.down, v.needed), (Agreed::Undecided, 1, 2));
        m.put("groups/g/verdicts/n2", "down 3", 1);
        let v = judge(Standing::Live).view(&m.group("g"), &m.voters());
        assert_eq!((v.primary, v.needed), (Agreed::Down, 2));
        // A node that starts serving groups says so in its next heartbeat.
        m.put("members/m1", "8", 1);
        assert_eq!(m.voters(), ["m1", "n1", "n2"]);
        m.delete("members/m2");
        assert!(!m.monitor_only.contains("m2"));
    }

    #[test]
    fn renewals_and_heartbeats_go_out_ten_times_a_lease_and_at_least_four_times_a_second() {
        assert_eq!(renew_every(Duration::from_secs(1)), ms(100));
        assert_eq!(renew_every(Duration::from_secs(2)), ms(200));
        assert_eq!(renew_every(Duration::from_secs(5)), ms(250));
        assert_eq!(renew_every(Duration::from_secs(60)), ms(250));
    }

    #[test]
    fn a_new_holder_holds_off_until_a_revoked_holder_has_surely_fenced() {
        for secs in [1, 2, 10] {
            let ttl = Duration::from_secs(secs);
            // The old holder's last renewal was sent at the latest when the lease was revoked
            // (0): it trusts its lease until `trusted_until(0)`, then removes its VIPs.
            let old_trust_ends = trusted_until(Duration::ZERO, ttl);
            assert!(hold_off(ttl) > old_trust_ends, "{ttl:?}");
            assert!(
                hold_off(ttl) - old_trust_ends >= ttl / 8,
                "room to remove the VIPs"
            );
            assert!(hold_off(ttl) < ttl, "faster than waiting for expiry");
        }
    }

    #[test]
    fn only_holders_with_a_stale_heartbeat_are_suspected_and_only_by_a_fresh_observer() {
        let period = ms(100);
        let mut m = Mirror::default();
        for (n, lease) in [("n1", 1), ("n2", 2), ("n3", 3)] {
            m.put(&format!("members/{n}"), "", lease);
        }
        m.put("groups/192.0.2.100/holder", "n2", 2);
        let beats = |n2: u64, n1: u64| -> BTreeMap<String, Duration> {
            [("n1", n1), ("n2", n2), ("n3", 990)]
                .into_iter()
                .map(|(n, at)| (n.to_string(), ms(at)))
                .collect()
        };
        let now = ms(1000);
        assert_eq!(
            stale_holders(&m, &beats(990, 990), "n1", now, period),
            Vec::<String>::new()
        );
        assert_eq!(
            stale_holders(&m, &beats(650, 990), "n1", now, period),
            ["n2"]
        );
        // n3's heartbeat is as old, but n3 holds nothing.
        assert_eq!(
            stale_holders(&m, &beats(990, 990), "n2", now, period),
            Vec::<String>::new()
        );
        // Our own view is stale: suspect nobody.
        assert_eq!(
            stale_holders(&m, &beats(650, 700), "n1", now, period),
            Vec::<String>::new()
        );
        // Never ourselves.
        assert_eq!(
            stale_holders(&m, &beats(650, 990), "n2", now, period),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_holder_is_revocable_only_when_a_quorum_of_the_others_suspect_its_lease() {
        let mut m = Mirror::default();
        for (n, lease) in [("n1", 1), ("n2", 2), ("n3", 3)] {
            m.put(&format!("members/{n}"), "", lease);
        }
        assert!(!suspected_by_quorum(&m, "n2", 2, Quorum::Majority));
        m.put("suspects/n2/n1", "2", 1);
        assert!(
            !suspected_by_quorum(&m, "n2", 2, Quorum::Majority),
            "one of two"
        );
        m.put("suspects/n2/n3", "7", 3);
        assert!(
            !suspected_by_quorum(&m, "n2", 2, Quorum::Majority),
            "another lease"
        );
        m.put("suspects/n2/n3", "2", 3);
        assert!(suspected_by_quorum(&m, "n2", 2, Quorum::Majority));
        // The suspect's own word does not count, nor does a node that left.
        m.delete("members/n3");
        assert!(!suspected_by_quorum(&m, "n2", 2, Quorum::Count(2)));
    }

    #[test]
    fn campaign_creates_inherits_our_own_or_waits() {
        assert_eq!(campaign(None, "n1", 5), Campaign::Create);
        let ours_old = ("n1".to_string(), 4);
        assert_eq!(
            campaign(Some(&ours_old), "n1", 5),
            Campaign::Inherit { old_lease: 4 }
        );
        let ours = ("n1".to_string(), 5);
        assert_eq!(campaign(Some(&ours), "n1", 5), Campaign::Wait);
        let theirs = ("n2".to_string(), 4);
        assert_eq!(campaign(Some(&theirs), "n1", 5), Campaign::Wait);
    }

    #[test]
    fn the_lease_is_trusted_until_a_margin_before_it_could_expire() {
        let ttl = Duration::from_secs(1);
        let mut clock = LeaseClock::new(ttl, ms(100));
        assert_eq!(clock.standing(ms(100)), Standing::Starting);
        assert_eq!(clock.next_change(ms(100)), Some(ms(600)));
        assert_eq!(clock.standing(ms(599)), Standing::Starting);
        assert_eq!(
            clock.standing(ms(600)),
            Standing::Lapsed,
            "never reached etcd"
        );
        clock.renewed(ms(300));
        assert_eq!(clock.standing(ms(400)), Standing::Live);
        assert_eq!(clock.next_change(ms(400)), Some(ms(800)));
        // A late confirmation of an older renewal does not move the deadline back.
        clock.renewed(ms(200));
        assert_eq!(clock.standing(ms(799)), Standing::Live);
        assert_eq!(clock.standing(ms(800)), Standing::Lapsed);
        assert_eq!(clock.next_change(ms(800)), None);
        clock.renewed(ms(1100));
        assert_eq!(clock.standing(ms(1200)), Standing::Live);
        clock.lost();
        assert_eq!(clock.standing(ms(1200)), Standing::Lapsed);
        // Every trust ends before etcd could expire the lease: sent + ttl.
        for sent in [0, 10, 999] {
            assert!(trusted_until(ms(sent), ttl) < ms(sent) + ttl);
        }
    }

    #[test]
    fn the_mirror_follows_puts_and_deletes_and_ignores_strangers() {
        let mut m = Mirror::default();
        m.put("members/n1", "", 11);
        m.put("members/n2", "", 12);
        m.put("groups/192.0.2.100/holder", "n2", 12);
        m.put("groups/192.0.2.100/verdicts/n1", "down 4", 11);
        m.put("groups/192.0.2.100/verdicts/n2", "garbage", 12);
        m.put("targets/198.51.100.7/n1", "up 9", 11);
        m.put("something/else", "x", 0);
        m.put("targets/not-an-ip/n1", "up 9", 11);
        assert_eq!(m.voters(), ["n1", "n2"]);
        let g = m.group("192.0.2.100");
        assert_eq!(g.holder, Some(("n2".into(), 12)));
        assert_eq!(g.verdicts.len(), 1, "the garbage verdict is ignored");
        assert_eq!(m.targets.len(), 1);
        m.delete("members/n2");
        m.delete("groups/192.0.2.100/holder");
        m.delete("targets/198.51.100.7/n1");
        assert_eq!(m.voters(), ["n1"]);
        assert_eq!(m.group("192.0.2.100").holder, None);
        assert!(m.targets.is_empty());
        assert_eq!(m.group("192.0.2.200"), GroupKeys::default());
        // Every slot's key parses back to itself.
        for slot in [
            Slot::Member("n1".into()),
            Slot::Holder("2001:db8::1".into()),
            Slot::GroupVerdict {
                group: "192.0.2.100".into(),
                node: "n3".into(),
            },
            Slot::Target {
                target: "2001:db8::7".parse().unwrap(),
                node: "n3".into(),
            },
            Slot::Suspect {
                holder: "n2".into(),
                observer: "n1".into(),
            },
        ] {
            assert_eq!(Slot::parse(&slot.key()), Some(slot));
        }
    }

    #[test]
    fn verdicts_are_stored_as_words() {
        let v = Verdict {
            down: true,
            window: 42,
        };
        assert_eq!(v.encode(), "down 42");
        assert_eq!(Verdict::decode("down 42"), Some(v));
        assert_eq!(
            Verdict::decode("up 0"),
            Some(Verdict {
                down: false,
                window: 0
            })
        );
        for bad in ["", "down", "sideways 1", "up x", "up -1"] {
            assert_eq!(Verdict::decode(bad), None, "{bad:?}");
        }
    }
}
