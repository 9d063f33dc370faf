//! Cutting an etcd member off from its peers and its clients with nftables, inside its own
//! namespace: everything to or from the etcd ports (client and peer) on its `eth0` is dropped,
//! both ways, so no raft message or client request gets through on connections old or new.
//! The member keeps running and answers on loopback inside its namespace, as a node cut off
//! by a network fault would. [`EtcdCluster::heal`] removes the rules.

use super::{EtcdCluster, CLIENT_PORT, PEER_PORT};
use crate::{cmd, lab::IFACE};

/// The nftables table holding the partition rules in a member's namespace.
const TABLE: &str = "xdprobe_etcd_partition";

/// The ruleset that cuts a member off.
fn rules() -> String {
    let ports = format!("{{ {CLIENT_PORT}, {PEER_PORT} }}");
    format!(
        "table inet {TABLE} {{ \
           chain input {{ type filter hook input priority 0; \
             iifname \"{IFACE}\" tcp dport {ports} drop; \
             iifname \"{IFACE}\" tcp sport {ports} drop; }}; \
           chain output {{ type filter hook output priority 0; \
             oifname \"{IFACE}\" tcp dport {ports} drop; \
             oifname \"{IFACE}\" tcp sport {ports} drop; }}; \
         }}"
    )
}

impl EtcdCluster {
    /// Cuts member `i` off from the other members and from every client outside its
    /// namespace (see the module documentation). Fails if it is already cut off.
    pub fn partition(&self, i: usize) -> anyhow::Result<()> {
        let ns = self.ns(i)?;
        cmd::run(&["ip", "netns", "exec", ns, "nft", &rules()])?;
        Ok(())
    }

    /// Undoes [`partition`](Self::partition) for member `i`. Fails if it is not cut off.
    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        let ns = self.ns(i)?;
        cmd::run(&[
            "ip", "netns", "exec", ns, "nft", "delete", "table", "inet", TABLE,
        ])?;
        Ok(())
    }

    /// Whether member `i` is cut off (its namespace has the partition table).
    pub fn is_partitioned(&self, i: usize) -> anyhow::Result<bool> {
        let ns = self.ns(i)?;
        let tables = cmd::stdout(
            std::process::Command::new("ip").args(["netns", "exec", ns, "nft", "list", "tables"]),
        )?;
        Ok(tables
            .lines()
            .any(|line| line.trim() == format!("table inet {TABLE}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_drop_both_etcd_ports_both_ways_on_the_lab_link_only() {
        let rules = rules();
        for hook in ["input", "output"] {
            assert!(
                rules.contains(&format!("type filter hook {hook} priority 0;")),
                "{rules}"
            );
        }
        for part in [
            "iifname \"eth0\" tcp dport { 2379, 2380 } drop;",
            "iifname \"eth0\" tcp sport { 2379, 2380 } drop;",
            "oifname \"eth0\" tcp dport { 2379, 2380 } drop;",
            "oifname \"eth0\" tcp sport { 2379, 2380 } drop;",
        ] {
            assert!(rules.contains(part), "{part} missing from {rules}");
        }
    }
}
