//! The demo's lab: three hosts on one switch, each in its own network namespace, in IPv4 or
//! (`--ipv6`) in IPv6.
//!
//! ```text
//!   primary 192.0.2.1 (+ VIP 192.0.2.100)   standby 192.0.2.2   client 192.0.2.3
//!           2001:db8::1 (+ VIP 2001:db8::100)       2001:db8::2         2001:db8::3
//!        eth0 ─────────────┐                  eth0 ──┐            eth0 ──┐
//!                        p-primary            p-standby             p-client
//!                          └──────────── br0 (namespace sw) ─────────────┘
//! ```
//! Only TEST-NET-1 and documentation (2001:db8::/32) addresses, only inside namespaces we
//! create: the host's own network is never touched. IPv6 addresses are added `nodad`, usable
//! at once.
use std::process;

use anyhow::{Context as _, Result};
use xdprobe_harness::{Lab, Namespaces};

pub const PRIMARY: &str = "primary";
pub const STANDBY: &str = "standby";
pub const CLIENT: &str = "client";

/// The interface every host uses, and the label the VIP carries on it.
pub const IFACE: &str = xdprobe_harness::lab::IFACE;
pub const VIP_LABEL: &str = "eth0:1";

/// One family's addresses in the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stack {
    pub primary: &'static str,
    pub standby: &'static str,
    pub client: &'static str,
    pub vip: &'static str,
    pub prefix: u8,
    /// `-4` or `-6`, for `ip` and `ping`.
    pub flag: &'static str,
}

pub const IPV4: Stack = Stack {
    primary: "192.0.2.1",
    standby: "192.0.2.2",
    client: "192.0.2.3",
    vip: "192.0.2.100",
    prefix: 24,
    flag: "-4",
};

pub const IPV6: Stack = Stack {
    primary: "2001:db8::1",
    standby: "2001:db8::2",
    client: "2001:db8::3",
    vip: "2001:db8::100",
    prefix: 64,
    flag: "-6",
};

impl Stack {
    pub fn vip_cidr(&self) -> String {
        format!("{}/{}", self.vip, self.prefix)
    }

    fn cidr(&self, addr: &str) -> String {
        format!("{addr}/{}", self.prefix)
    }

    fn is_ipv6(&self) -> bool {
        self.flag == "-6"
    }
}

/// Namespace names start with `xdpd-<our pid>-`, so two demos never collide.
pub fn prefix() -> String {
    format!("xdpd-{}-", process::id())
}

/// The harness's lab of hosts on a bridge (namespace `sw`) with `stack`'s addresses, and the
/// VIP on the primary; its namespaces say on stdout when they are removed, also after Ctrl-C.
/// (IPv4 addresses are always there: the bridge lab is built with them.)
pub fn build(stack: &Stack) -> Result<Lab> {
    let mut lab = Lab::in_namespaces(Namespaces::narrated(&prefix())?);
    let v4 = [
        (PRIMARY, IPV4.cidr(IPV4.primary)),
        (STANDBY, IPV4.cidr(IPV4.standby)),
        (CLIENT, IPV4.cidr(IPV4.client)),
    ];
    let hosts: Vec<(&str, &str)> = v4.iter().map(|(h, a)| (*h, a.as_str())).collect();
    lab.add_bridged(&hosts).context("building the lab")?;
    let vip = stack.vip_cidr();
    let mut add = vec!["addr", "add", vip.as_str(), "dev", IFACE];
    if stack.is_ipv6() {
        for (host, addr) in [
            (PRIMARY, stack.primary),
            (STANDBY, stack.standby),
            (CLIENT, stack.client),
        ] {
            lab.ip(
                host,
                &["addr", "add", &stack.cidr(addr), "dev", IFACE, "nodad"],
            )
            .context("building the lab")?;
        }
        add.push("nodad");
    } else {
        add.extend(["label", VIP_LABEL]);
    }
    lab.ip(PRIMARY, &add).context("building the lab")?;
    Ok(lab)
}

/// Whether `ip addr show` output lists `addr` as an address (`inet` or `inet6`).
pub fn has_addr(ip_addr_output: &str, addr: &str) -> bool {
    let wanted = format!("{addr}/");
    ip_addr_output.lines().any(|line| {
        let mut words = line.split_whitespace();
        matches!(words.next(), Some("inet" | "inet6"))
            && words.next().is_some_and(|a| a.starts_with(&wanted))
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

    const SHOW6: &str = "\
2: eth0@if5: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP group default qlen 1000
    inet6 2001:db8::100/64 scope global nodad
       valid_lft forever preferred_lft forever
    inet6 2001:db8::2/64 scope global nodad
       valid_lft forever preferred_lft forever
";

    #[test]
    fn finds_the_vip_only_as_a_whole_address() {
        assert!(has_addr(SHOW, IPV4.vip));
        assert!(has_addr(SHOW, "192.0.2.2"));
        assert!(!has_addr(SHOW, "192.0.2.1"));
        assert!(!has_addr(SHOW, "192.0.2.10"));
        assert!(has_addr(SHOW6, IPV6.vip));
        assert!(!has_addr(SHOW6, "2001:db8::10"));
        assert!(!has_addr(SHOW6, IPV6.primary));
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
            for stack in [IPV4, IPV6] {
                lab_in(&stack);
            }
        }

        fn lab_in(stack: &Stack) {
            require_root();
            let names: Vec<String> = {
                let lab = build(stack).expect("lab builds");
                let names: Vec<String> = ["sw", PRIMARY, STANDBY, CLIENT]
                    .iter()
                    .map(|host| lab.ns(host))
                    .collect();
                assert_eq!(lab.namespaces(), names, "every host is known");
                let existing = netns::list().expect("ip netns list");
                assert!(names.iter().all(|name| existing.contains(name)));

                let vip = lab
                    .ip(PRIMARY, &[stack.flag, "addr", "show", "dev", IFACE])
                    .expect("ip addr");
                assert!(has_addr(&vip, stack.vip), "{vip}");
                if !stack.is_ipv6() {
                    assert!(vip.contains(VIP_LABEL), "{vip}");
                }
                let mut ping = lab.command(CLIENT, "ping");
                ping.args(["-c", "1", "-W", "2", stack.vip]);
                cmd::output(&mut ping).expect("client reaches the VIP on the primary");
                names
            };
            let left = netns::list().expect("ip netns list");
            assert!(names.iter().all(|name| !left.contains(name)), "{left:?}");
        }
    }
}
