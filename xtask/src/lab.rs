//! The demo's lab: three hosts on one switch, each in its own network namespace.
//!
//! ```text
//!   primary 192.0.2.1 (+ VIP 192.0.2.100)   standby 192.0.2.2   client 192.0.2.3
//!        eth0 ─────────────┐                  eth0 ──┐            eth0 ──┐
//!                        p-primary            p-standby             p-client
//!                          └──────────── br0 (namespace sw) ─────────────┘
//! ```
//! Only TEST-NET-1 addresses, only inside namespaces we create: the host's own network is
//! never touched.
use std::process;

use anyhow::{Context as _, Result};
use xdprobe_harness::{Lab, Namespaces};

pub const PRIMARY: &str = "primary";
pub const STANDBY: &str = "standby";
pub const CLIENT: &str = "client";

pub const PRIMARY_ADDR: &str = "192.0.2.1";
pub const VIP: &str = "192.0.2.100";
pub const VIP_CIDR: &str = "192.0.2.100/24";
/// The interface every host uses, and the label the VIP carries on it.
pub const IFACE: &str = xdprobe_harness::lab::IFACE;
pub const VIP_LABEL: &str = "eth0:1";

const HOSTS: [(&str, &str); 3] = [
    (PRIMARY, "192.0.2.1/24"),
    (STANDBY, "192.0.2.2/24"),
    (CLIENT, "192.0.2.3/24"),
];

/// Namespace names start with `xdpd-<our pid>-`, so two demos never collide.
pub fn prefix() -> String {
    format!("xdpd-{}-", process::id())
}

/// The harness's lab of hosts on a bridge (namespace `sw`), with the VIP on the primary; its
/// namespaces say on stdout when they are removed, also after Ctrl-C.
pub fn build() -> Result<Lab> {
    let mut lab = Lab::in_namespaces(Namespaces::narrated(&prefix())?);
    lab.add_bridged(&HOSTS).context("building the lab")?;
    lab.ip(
        PRIMARY,
        &["addr", "add", VIP_CIDR, "dev", IFACE, "label", VIP_LABEL],
    )
    .context("building the lab")?;
    Ok(lab)
}

/// Whether `ip addr show` output lists `addr` as an IPv4 address.
pub fn has_ipv4(ip_addr_output: &str, addr: &str) -> bool {
    let wanted = format!("{addr}/");
    ip_addr_output.lines().any(|line| {
        let mut words = line.split_whitespace();
        words.next() == Some("inet") && words.next().is_some_and(|a| a.starts_with(&wanted))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "\
2: eth0@if5: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP group default qlen 1000
    inet 192.0.2.2/24 scope global eth0
       valid_lft forever preferred_lft forever
    inet 192.0.2.100/24 scope global secondary eth0:1
       valid_lft forever preferred_lft forever
";

    #[test]
    fn finds_the_vip_only_as_a_whole_address() {
        assert!(has_ipv4(SHOW, VIP));
        assert!(has_ipv4(SHOW, "192.0.2.2"));
        assert!(!has_ipv4(SHOW, "192.0.2.1"));
        assert!(!has_ipv4(SHOW, "192.0.2.10"));
    }

    #[test]
    fn prefix_is_per_process() {
        assert_eq!(prefix(), format!("xdpd-{}-", process::id()));
    }

    mod privileged {
        use xdprobe_harness::{netns, require_root};

        use super::super::*;
        use crate::cmd;

        #[test]
        fn lab_connects_the_hosts_and_leaves_nothing_behind() {
            require_root();
            let names: Vec<String> = {
                let lab = build().expect("lab builds");
                let names: Vec<String> = ["sw", PRIMARY, STANDBY, CLIENT]
                    .iter()
                    .map(|host| lab.ns(host))
                    .collect();
                assert_eq!(lab.namespaces(), names, "every host is known");
                let existing = netns::list().expect("ip netns list");
                assert!(names.iter().all(|name| existing.contains(name)));

                let vip = lab
                    .ip(PRIMARY, &["-4", "addr", "show", "dev", IFACE])
                    .expect("ip addr");
                assert!(has_ipv4(&vip, VIP), "{vip}");
                assert!(vip.contains(VIP_LABEL), "{vip}");
                let mut ping = lab.command(CLIENT, "ping");
                ping.args(["-c", "1", "-W", "2", VIP]);
                cmd::output(&mut ping).expect("client reaches the VIP on the primary");
                names
            };
            let left = netns::list().expect("ip netns list");
            assert!(names.iter().all(|name| !left.contains(name)), "{left:?}");
        }
    }
}
