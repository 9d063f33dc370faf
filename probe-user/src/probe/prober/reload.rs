//! A reload's hosts and timing, applied between two windows: every remaining host keeps its
//! state, counters, round-trip estimate and waiting rounds (its checks follow it to its new
//! index); new hosts start fresh; the groups a reload started are told what they missed.

use std::{net::IpAddr, time::SystemTime};

use tracing::info;

use super::{state_index, Prober, Reload};
use crate::{
    model::{
        events::{HostEvent, HostReport},
        health::{Change, Health, State},
    },
    probe::{
        hosts::{moved, origins},
        plan::{suspect_threshold, Plan},
        rounds::Pending,
        rtt::RttEstimate,
    },
};

impl Prober {
    /// Switches to a reload's hosts and timing from `window` on; says how it went on
    /// `reload.done`. False if nothing changed.
    pub(super) fn reload(&mut self, reload: Reload, window: u32) -> bool {
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
        self.rehost(&from);
        let n = hosts.len();
        info!(
            window,
            hosts = n,
            added = from.iter().filter(|f| f.is_none()).count(),
            removed = self.hosts.len() - from.iter().flatten().count(),
            window_len = ?timing.window,
            probes = timing.probes,
            retries = timing.retries,
            timeout = ?timing.timeout,
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

    /// Moves every per-host value to the host's new index (`from`: each new host's old
    /// index), and the checks with them; new hosts start fresh with the next round.
    fn rehost(&mut self, from: &[Option<usize>]) {
        self.health = moved(from, &self.health, Health::new());
        self.seen = moved(from, &self.seen, 0);
        self.sent = moved(from, &self.sent, 0);
        self.since = moved(from, &self.since, 0);
        self.heard = moved(from, &self.heard, 0);
        self.rtt = moved(from, &self.rtt, RttEstimate::default());
        let fresh = Pending::starting_at(self.next_round);
        self.pending = moved(from, &self.pending, fresh);
        let mut to = vec![None; self.hosts.len()];
        for (new, old) in from.iter().enumerate() {
            if let Some(old) = old {
                to[*old] = Some(new as u32);
            }
        }
        self.checks.retain_map(|c| {
            to.get(c.host as usize)
                .copied()
                .flatten()
                .map(|host| super::check::Check { host, ..c })
        });
        self.retries.clear();
        self.states = [0; 3];
        for h in &self.health {
            self.states[state_index(h.state())] += 1;
        }
    }

    /// Tells the failover groups a reload started what they missed: the state of the hosts
    /// they watch (`announce`), if known, and that no witness answers, if so.
    fn tell_new_watchers(&self, announce: &[IpAddr], window: u32) {
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
}
