//! The demo's lab: three hosts on one switch, each in its own network namespace.
//!
//! ```text
//!   primary 192.0.2.1 (+ VIP 192.0.2.100)   standby 192.0.2.2   client 192.0.2.3
//!        eth0 ─────────────┐                  eth0 ──┐            eth0 ──┐
//!                     veth-primary         veth-standby          veth-client
//!                          └──────────── br0 (namespace sw) ─────────────┘
//! ```
//! Only TEST-NET-1 addresses, only inside namespaces we create: the host's own network is
//! never touched.
use std::{process, process::Command};

use anyhow::{Context as _, Result};

use crate::{cmd, netns::Namespaces};

pub const PRIMARY: &str = "primary";
pub const STANDBY: &str = "standby";
pub const CLIENT: &str = "client";
const SWITCH: &str = "sw";

pub const PRIMARY_ADDR: &str = "192.0.2.1";
pub const VIP: &str = "192.0.2.100";
pub const VIP_CIDR: &str = "192.0.2.100/24";
/// The interface every host uses, and the label the VIP carries on it.
pub const IFACE: &str = "eth0";
pub const VIP_LABEL: &str = "eth0:1";

const HOSTS: [(&str, &str); 3] = [
    (PRIMARY, "192.0.2.1/24"),
    (STANDBY, "192.0.2.2/24"),
    (CLIENT, "192.0.2.3/24"),
];

pub struct Lab {
    namespaces: Namespaces,
}

impl Lab {
    /// Namespace names start with `xdpd-<our pid>-`, so two demos never collide.
    pub fn prefix() -> String {
        format!("xdpd-{}-", process::id())
    }

    pub fn build() -> Result<Self> {
        let namespaces = Namespaces::create(&Self::prefix(), &[SWITCH, PRIMARY, STANDBY, CLIENT])?;
        let lab = Self { namespaces };
        lab.wire().context("building the lab")?;
        Ok(lab)
    }

    fn wire(&self) -> Result<()> {
        self.ip(SWITCH, &["link", "add", "br0", "type", "bridge"])?;
        self.ip(SWITCH, &["link", "set", "br0", "up"])?;
        for (host, addr) in HOSTS {
            let port = format!("veth-{host}");
            let host_ns = self.ns(host)?;
            // Created inside the switch namespace with its peer straight in the host's:
            // nothing ever appears in the namespace xtask runs in.
            self.ip(
                SWITCH,
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", IFACE, "netns", host_ns,
                ],
            )?;
            self.ip(SWITCH, &["link", "set", &port, "master", "br0", "up"])?;
            self.ip(host, &["addr", "add", addr, "dev", IFACE])?;
            self.ip(host, &["link", "set", IFACE, "up"])?;
        }
        self.ip(
            PRIMARY,
            &["addr", "add", VIP_CIDR, "dev", IFACE, "label", VIP_LABEL],
        )?;
        Ok(())
    }

    /// The full namespace name of `host`.
    pub fn ns(&self, host: &str) -> Result<&str> {
        self.namespaces.name(host)
    }

    /// `ip -n NS ARGS...`; returns its output.
    pub fn ip(&self, host: &str, args: &[&str]) -> Result<String> {
        cmd::output(Command::new("ip").args(["-n", self.ns(host)?]).args(args))
    }

    /// `ip netns exec NS PROGRAM`, for running a program on `host`.
    pub fn exec(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", self.ns(host)?]).arg(program);
        Ok(command)
    }
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
        assert_eq!(Lab::prefix(), format!("xdpd-{}-", process::id()));
    }

    #[test]
    // Needs root, like every test `cargo xtask test` runs.
    fn lab_connects_the_hosts_and_leaves_nothing_behind() {
        let names: Vec<String> = {
            let lab = Lab::build().expect("lab builds");
            let names: Vec<String> = ["sw", PRIMARY, STANDBY, CLIENT]
                .iter()
                .map(|host| lab.ns(host).expect("known host").to_owned())
                .collect();
            let existing = crate::netns::list().expect("ip netns list");
            assert!(names.iter().all(|name| existing.contains(name)));

            let vip = lab
                .ip(PRIMARY, &["-4", "addr", "show", "dev", IFACE])
                .expect("ip addr");
            assert!(has_ipv4(&vip, VIP), "{vip}");
            assert!(vip.contains(VIP_LABEL), "{vip}");
            let mut ping = lab.exec(CLIENT, "ping").expect("known host");
            ping.args(["-c", "1", "-W", "2", VIP]);
            cmd::output(&mut ping).expect("client reaches the VIP on the primary");
            names
        };
        let left = crate::netns::list().expect("ip netns list");
        assert!(names.iter().all(|name| !left.contains(name)), "{left:?}");
    }
}
