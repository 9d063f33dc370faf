//! Which hosts are probed: the failover groups' primaries, the witnesses, the monitored
//! targets and the DNS pools' members, sorted, and the part each plays in failover.

use std::net::IpAddr;
#[cfg(test)]
use std::net::Ipv4Addr;

use crate::{
    config::{family::Family, settings::Settings},
    failure::Failure,
    probe::targets,
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
    pub fn find(hosts: &[IpAddr], watches: &[IpAddr], witnesses: &[IpAddr]) -> Self {
        let find = |list: &[IpAddr]| {
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

/// Every host to probe, sorted: the groups' primaries, the witnesses, the monitored targets
/// and the DNS pools' members; and which of them play a part in failover.
pub fn probed_hosts(settings: &Settings, monitored: &[IpAddr]) -> (Vec<IpAddr>, Roles) {
    let watches: Vec<IpAddr> = settings.groups.iter().map(|g| g.watch).collect();
    let witnesses = &settings.failover.witnesses;
    let members = settings
        .dns
        .iter()
        .flat_map(|pool| pool.members.iter().copied());
    let mut hosts: Vec<IpAddr> = watches
        .iter()
        .chain(witnesses)
        .chain(monitored)
        .copied()
        .chain(members)
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    let roles = Roles::find(&hosts, &watches, witnesses);
    (hosts, roles)
}

/// Hosts the XDP maps get room for, so that a reload can add hosts without re-attaching:
/// twice the hosts at start-up, and at least 4,096 (64 KiB of maps).
pub fn reload_capacity(hosts: usize) -> usize {
    (hosts * 2).clamp(4096, probe_common::maps::MAX_HOSTS as usize)
}

/// The config's plain monitored targets, resolved.
pub async fn monitored_hosts(specs: &[String], family: Family) -> Result<Vec<IpAddr>, Failure> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let parsed = targets::parse_config_list(specs, family, targets::open_file)
        .map_err(|e| Failure::Usage(anyhow::Error::from(e).context("invalid `monitor`")))?;
    targets::resolve(parsed, probe_common::maps::MAX_HOSTS as usize)
        .await
        .map_err(|e| Failure::Usage(anyhow::Error::from(e).context("invalid `monitor`")))
}

/// For each host of `new`, its index in `old` (both sorted), or `None` if it is new.
pub fn origins(old: &[IpAddr], new: &[IpAddr]) -> Vec<Option<usize>> {
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
pub fn moved<T: Clone>(from: &[Option<usize>], old: &[T], fresh: T) -> Vec<T> {
    from.iter()
        .map(|f| f.map_or_else(|| fresh.clone(), |i| old[i].clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_found_in_the_sorted_host_list() {
        let hosts: Vec<IpAddr> = ["192.0.2.1", "192.0.2.9", "192.0.2.254"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let roles = Roles::find(&hosts, &[hosts[1]], &[hosts[2], hosts[0]]);
        assert_eq!(roles.watches, [1]);
        assert_eq!(roles.witnesses, [2, 0]);
    }

    #[test]
    fn a_reload_keeps_each_remaining_hosts_values_wherever_it_moves() {
        let a = |last: u8| IpAddr::V4(Ipv4Addr::new(192, 0, 2, last));
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
}
