//! The DNS pools of `run`, one task each: started at start-up or when a reload adds or changes
//! a pool, stopped when a reload removes or changes one. A stopped pool leaves its records as
//! they are; a changed pool's new task removes the records of the members it lost. The
//! dispatcher reaches the pools through the handles published here.

use std::{collections::BTreeSet, net::IpAddr, sync::Arc};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    act::{
        dns::{DnsPool, Start},
        mail::Notifier,
    },
    config::dns::PoolConfig,
    model::snapshot::{DnsStatus, Observed},
};

struct Running {
    config: PoolConfig,
    pool: Arc<DnsPool>,
    stop: CancellationToken,
}

/// The running pools.
pub struct Pools {
    notifier: Notifier,
    observed: Observed,
    shutdown: CancellationToken,
    running: Vec<Running>,
    handles: watch::Sender<Vec<Arc<DnsPool>>>,
}

impl Pools {
    /// No pools yet; the receiver follows the pools as they start and stop.
    pub fn new(
        notifier: Notifier,
        observed: Observed,
        shutdown: CancellationToken,
    ) -> (Self, watch::Receiver<Vec<Arc<DnsPool>>>) {
        let (handles, receiver) = watch::channel(Vec::new());
        let pools = Self {
            notifier,
            observed,
            shutdown,
            running: Vec::new(),
            handles,
        };
        (pools, receiver)
    }

    /// The pools running now.
    pub fn configs(&self) -> Vec<PoolConfig> {
        self.running.iter().map(|r| r.config.clone()).collect()
    }

    /// Starts a pool's task.
    pub fn start(&mut self, config: &PoolConfig, start: Start) {
        info!(name = %config.name, server = %config.server, members = ?config.members, retired = ?start.retired, "DNS pool");
        self.observed.update(|s| {
            s.dns.push(DnsStatus {
                name: config.name.clone(),
                server: config.server.to_string(),
                in_sync: false,
                failures: 0,
                published: 0,
            })
        });
        let stop = self.shutdown.child_token();
        let pool = DnsPool::start(
            config.clone(),
            self.notifier.clone(),
            Some(self.observed.clone()),
            stop.clone(),
            start,
        );
        self.running.push(Running {
            config: config.clone(),
            pool: Arc::new(pool),
            stop,
        });
        self.publish();
    }

    /// Stops the pool named `name`; its records stay as they are.
    pub fn stop(&mut self, name: &str) {
        let Some(at) = self.running.iter().position(|r| r.config.name == name) else {
            return;
        };
        let running = self.running.remove(at);
        running.stop.cancel();
        self.observed.update(|s| s.dns.retain(|d| d.name != name));
        self.publish();
        info!(name, "DNS pool stopped");
    }

    fn publish(&self) {
        let handles = self.running.iter().map(|r| Arc::clone(&r.pool)).collect();
        self.handles.send_replace(handles);
    }
}

/// What a reload does to the pools.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PoolChanges {
    /// Pools to stop, by name: removed, or changed (then also in `start`).
    pub stop: Vec<String>,
    /// Pools to start, with the members a changed pool lost (whose records go).
    pub start: Vec<(PoolConfig, BTreeSet<IpAddr>)>,
}

impl PoolChanges {
    pub fn is_empty(&self) -> bool {
        self.stop.is_empty() && self.start.is_empty()
    }
}

/// Going from the `running` pools to `wanted`. A pool is its record name: one whose settings
/// changed is stopped and started again, and if it still updates the same zone on the same
/// server, the members it lost are retired (their records removed).
pub fn changes(running: &[PoolConfig], wanted: &[PoolConfig]) -> PoolChanges {
    let mut out = PoolChanges::default();
    for old in running {
        if !wanted.iter().any(|w| w == old) {
            out.stop.push(old.name.clone());
        }
    }
    for new in wanted {
        if running.iter().any(|r| r == new) {
            continue;
        }
        let retired = running
            .iter()
            .find(|r| r.name == new.name && r.server == new.server && r.zone == new.zone)
            .map(|old| {
                old.members
                    .iter()
                    .filter(|m| !new.members.contains(m))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        out.start.push((new.clone(), retired));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use xdprobe_harness::TempFile;

    use super::*;
    use crate::config::{file::FileConfig, flags::RunArgs, settings::Settings};

    /// The pools of a config with `[[dns]]` tables given as (name, server, members).
    fn pools(specs: &[(&str, &str, &[&str])]) -> Vec<PoolConfig> {
        // Read while the settings resolve; removed after.
        let key = TempFile::new("c2VjcmV0c2VjcmV0c2VjcmV0\n");
        let mut text = String::from("iface = \"eth0\"\n");
        for (name, server, members) in specs {
            let members: Vec<String> = members.iter().map(|m| format!("{m:?}")).collect();
            text.push_str(&format!(
                "[[dns]]\nserver = {server:?}\nzone = \"example.test\"\nname = {name:?}\n\
                 tsig_name = \"k\"\ntsig_secret_file = {:?}\nmembers = [{}]\n",
                key.path().display().to_string(),
                members.join(", ")
            ));
        }
        let file = FileConfig::parse(Path::new("test.toml"), &text).unwrap();
        Settings::resolve(&RunArgs::default(), file).unwrap().dns
    }

    fn addrs(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn a_changed_pool_restarts_and_retires_the_members_it_lost() {
        let running = pools(&[
            ("www", "192.0.2.53", &["192.0.2.11", "192.0.2.12"]),
            ("api", "192.0.2.53", &["192.0.2.21"]),
        ]);
        let wanted = pools(&[
            ("www", "192.0.2.53", &["192.0.2.11", "192.0.2.13"]),
            ("api", "192.0.2.53", &["192.0.2.21"]),
            ("db", "192.0.2.53", &["192.0.2.31"]),
        ]);
        let c = changes(&running, &wanted);
        assert_eq!(c.stop, ["www.example.test."]);
        let started: Vec<(&str, BTreeSet<IpAddr>)> = c
            .start
            .iter()
            .map(|(p, retired)| (p.name.as_str(), retired.clone()))
            .collect();
        assert_eq!(
            started,
            [
                ("www.example.test.", addrs(&["192.0.2.12"])),
                ("db.example.test.", addrs(&[]))
            ]
        );
        assert!(changes(&running, &running).is_empty());
    }

    #[test]
    fn a_removed_pool_stops_and_a_moved_one_retires_nothing() {
        let running = pools(&[("www", "192.0.2.53", &["192.0.2.11", "192.0.2.12"])]);
        let c = changes(&running, &[]);
        assert_eq!(
            (c.stop.as_slice(), c.start.len()),
            (&["www.example.test.".to_string()][..], 0)
        );
        // Another server: the old one's records are not ours to clean up.
        let moved = pools(&[("www", "192.0.2.54", &["192.0.2.11"])]);
        let c = changes(&running, &moved);
        assert_eq!(c.stop, ["www.example.test."]);
        assert_eq!(c.start[0].1, BTreeSet::new());
    }
}
