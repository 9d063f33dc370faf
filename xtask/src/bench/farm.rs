//! The benchmark's farm: 131,072 IPv4 and 131,072 IPv6 hosts that always answer, one veth away
//! from the prober.
//!
//! ```text
//!   namespace PREFIX-prober                      namespace PREFIX-farm
//!   eth0 192.0.2.1/30      <──── veth ────>  eth0 192.0.2.2/30
//!        2001:db8::1/64                           2001:db8::2/64
//!   route 198.18.0.0/15 via 192.0.2.2           route local 198.18.0.0/15 dev lo
//!   route 2001:db8:1::/111 via 2001:db8::2      route local 2001:db8:1::/111 dev lo
//! ```
//! The farm's kernel answers echo requests to every address of 198.18.0.0/15 (the benchmarking
//! range, RFC 2544) and of 2001:db8:1::/111 (documentation, RFC 3849) because both ranges are
//! local to it. Only TEST-NET, benchmarking and documentation addresses, only inside namespaces
//! the bench creates and deletes.
use std::{
    ffi::OsStr,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    process::{self, Command},
};

use anyhow::{bail, Context as _, Result};

use xdprobe_harness::Namespaces;

use super::measure::{self, EchoCounters};
use crate::cmd;

pub const PROBER: &str = "prober";
pub const FARM: &str = "farm";
pub const IFACE: &str = "eth0";
/// 198.18.0.0/15: every host the farm answers for.
pub const RANGE: &str = "198.18.0.0/15";
const RANGE_START: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// 2001:db8:1::/111: every IPv6 host the farm answers for.
pub const RANGE6: &str = "2001:db8:1::/111";
const RANGE6_START: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0);
/// Hosts in each range (a /15 and a /111 both hold 2^17 addresses).
pub const MAX_HOSTS: usize = 1 << 17;

const PROBER_ADDR: &str = "192.0.2.1/30";
const FARM_ADDR: &str = "192.0.2.2/30";
const GATEWAY: &str = "192.0.2.2";
const PROBER_ADDR6: &str = "2001:db8::1/64";
const FARM_ADDR6: &str = "2001:db8::2/64";
const GATEWAY6: &str = "2001:db8::2";

/// An address family the bench measures, each over its own range of the farm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// `IPv4` / `IPv6`, for the report and progress lines.
    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The farm's range for this family.
    pub fn range(self) -> &'static str {
        match self {
            Family::V4 => RANGE,
            Family::V6 => RANGE6,
        }
    }
}

/// Socket buffer ceiling and default in both namespaces (per namespace on recent kernels), so
/// neither fping nor the socket baseline loses replies to a small receive buffer.
const SOCKET_BUFFER: &str = "33554432";

pub struct Farm {
    namespaces: Namespaces,
    /// Every command that built the farm, for the report.
    pub commands: Vec<String>,
    /// Settings the kernel does not have, skipped.
    pub skipped: Vec<String>,
}

impl Farm {
    /// Namespace names start with `xdpb-<our pid>-`.
    pub fn prefix() -> String {
        format!("xdpb-{}-", process::id())
    }

    pub fn build() -> Result<Self> {
        let namespaces = Namespaces::create(&Self::prefix(), &[PROBER, FARM])?;
        let mut farm = Self {
            namespaces,
            commands: Vec::new(),
            skipped: Vec::new(),
        };
        farm.wire().context("building the farm")?;
        Ok(farm)
    }

    fn wire(&mut self) -> Result<()> {
        let farm_ns = self.ns(FARM)?.to_owned();
        self.ip(
            PROBER,
            &[
                "link", "add", IFACE, "type", "veth", "peer", "name", IFACE, "netns", &farm_ns,
            ],
        )?;
        self.ip(PROBER, &["addr", "add", PROBER_ADDR, "dev", IFACE])?;
        self.ip(FARM, &["addr", "add", FARM_ADDR, "dev", IFACE])?;
        // `nodad`: usable at once, no duplicate address detection to wait for.
        self.ip(
            PROBER,
            &["-6", "addr", "add", PROBER_ADDR6, "dev", IFACE, "nodad"],
        )?;
        self.ip(
            FARM,
            &["-6", "addr", "add", FARM_ADDR6, "dev", IFACE, "nodad"],
        )?;
        self.ip(PROBER, &["link", "set", IFACE, "up"])?;
        self.ip(FARM, &["link", "set", IFACE, "up"])?;
        self.ip(FARM, &["route", "add", "local", RANGE, "dev", "lo"])?;
        self.ip(PROBER, &["route", "add", RANGE, "via", GATEWAY])?;
        self.ip(FARM, &["-6", "route", "add", "local", RANGE6, "dev", "lo"])?;
        self.ip(PROBER, &["-6", "route", "add", RANGE6, "via", GATEWAY6])?;
        // Echo replies are not in icmp_ratemask, so neither limit should apply to them; set
        // both out of the way anyway, and let the farm's counters in each run show it.
        self.sysctl(FARM, "net.ipv4.icmp_ratelimit", "0")?;
        self.sysctl(FARM, "net.ipv4.icmp_msgs_per_sec", "2147483647")?;
        self.sysctl(FARM, "net.ipv4.icmp_msgs_burst", "2147483647")?;
        self.sysctl(FARM, "net.ipv6.icmp.ratelimit", "0")?;
        for ns in [PROBER, FARM] {
            self.sysctl(ns, "net.core.rmem_max", SOCKET_BUFFER)?;
            self.sysctl(ns, "net.core.rmem_default", SOCKET_BUFFER)?;
        }
        Ok(())
    }

    /// Pings the first and the last host of each range from the prober.
    pub fn check(&self) -> Result<()> {
        for family in [Family::V4, Family::V6] {
            for host in [host_of(family, 0), host_of(family, MAX_HOSTS - 1)] {
                let mut ping = self.exec(PROBER, "ping")?;
                ping.args(["-c", "1", "-W", "2", &host.to_string()]);
                cmd::output(&mut ping)
                    .with_context(|| format!("the farm does not answer {host}"))?;
            }
        }
        Ok(())
    }

    /// The full namespace name of `short` ([`PROBER`] or [`FARM`]).
    pub fn ns(&self, short: &str) -> Result<&str> {
        self.namespaces.name(short)
    }

    /// `ip netns exec NS PROGRAM`: exec's the program in place, so its pid is the child's.
    pub fn exec(&self, short: &str, program: impl AsRef<OsStr>) -> Result<Command> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", self.ns(short)?])
            .arg(program);
        Ok(command)
    }

    /// The farm's echo counters for `family` (`/proc/net/snmp` and `/proc/net/snmp6` are per
    /// namespace).
    pub fn echo_counters(&self, family: Family) -> Result<EchoCounters> {
        let (file, parse): (&str, fn(&str) -> Result<EchoCounters>) = match family {
            Family::V4 => ("/proc/net/snmp", measure::parse_snmp_echo),
            Family::V6 => ("/proc/net/snmp6", measure::parse_snmp6_echo),
        };
        let mut cat = self.exec(FARM, "cat")?;
        cat.arg(file);
        let text = cmd::output(&mut cat).with_context(|| format!("reading the farm's {file}"))?;
        parse(&text)
    }

    fn ip(&mut self, short: &str, args: &[&str]) -> Result<()> {
        let mut ip = Command::new("ip");
        ip.args(["-n", self.ns(short)?]).args(args);
        self.commands.push(cmd::describe(&ip));
        cmd::output(&mut ip)?;
        Ok(())
    }

    /// `sysctl -w KEY=VALUE` inside the namespace, if this kernel has `KEY` there.
    fn sysctl(&mut self, short: &str, key: &str, value: &str) -> Result<()> {
        let proc_path = format!("/proc/sys/{}", key.replace('.', "/"));
        let mut exists = self.exec(short, "test")?;
        exists.args(["-e", &proc_path]);
        if !cmd::capture(&mut exists)?.status.success() {
            self.skipped
                .push(format!("{key} (not in a network namespace on this kernel)"));
            return Ok(());
        }
        let mut sysctl = self.exec(short, "sysctl")?;
        sysctl.args(["-q", "-w", &format!("{key}={value}")]);
        self.commands.push(cmd::describe(&sysctl));
        cmd::output(&mut sysctl)?;
        Ok(())
    }
}

/// The `index`th host of the bench: 198.18.0.1 onwards, wrapping round to 198.18.0.0 for the
/// last of all 131,072 (the farm answers on every address of the range, .0 and .255 included).
pub fn host(index: usize) -> Ipv4Addr {
    let offset = (index + 1) % MAX_HOSTS;
    Ipv4Addr::from(u32::from(RANGE_START) + offset as u32)
}

/// The `index`th IPv6 host of the bench: 2001:db8:1::1 onwards, wrapping round to 2001:db8:1::
/// for the last of all 131,072, like [`host`].
pub fn host6(index: usize) -> Ipv6Addr {
    let offset = (index + 1) % MAX_HOSTS;
    Ipv6Addr::from(u128::from(RANGE6_START) + offset as u128)
}

/// The `index`th host of `family`: [`host`] or [`host6`].
pub fn host_of(family: Family, index: usize) -> IpAddr {
    match family {
        Family::V4 => host(index).into(),
        Family::V6 => host6(index).into(),
    }
}

/// The first `n` hosts of `family`, one a line: the target file every tool reads.
pub fn hosts_file_text(family: Family, n: usize) -> String {
    let mut text = String::with_capacity(n * 18);
    for index in 0..n {
        let _ = writeln!(text, "{}", host_of(family, index));
    }
    text
}

/// Writes the first `n` hosts of `family` to `path` (at most [`MAX_HOSTS`]).
pub fn write_hosts_file(path: &Path, family: Family, n: usize) -> Result<()> {
    if n > MAX_HOSTS {
        bail!(
            "{n} hosts: the farm has at most {MAX_HOSTS} in {}",
            family.range()
        );
    }
    std::fs::write(path, hosts_file_text(family, n))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn hosts_start_at_one_and_cover_the_whole_range() {
        assert_eq!(host(0), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(host(254), Ipv4Addr::new(198, 18, 0, 255));
        assert_eq!(host(MAX_HOSTS - 2), Ipv4Addr::new(198, 19, 255, 255));
        assert_eq!(host(MAX_HOSTS - 1), Ipv4Addr::new(198, 18, 0, 0));
        let all: HashSet<Ipv4Addr> = (0..MAX_HOSTS).map(host).collect();
        assert_eq!(all.len(), MAX_HOSTS);
        let range = u32::from(RANGE_START)..u32::from(RANGE_START) + MAX_HOSTS as u32;
        assert!(all.iter().all(|addr| range.contains(&u32::from(*addr))));
    }

    #[test]
    fn ipv6_hosts_start_at_one_and_cover_the_whole_slash_111() {
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert_eq!(host6(0), v6("2001:db8:1::1"));
        assert_eq!(host6(0xfffe), v6("2001:db8:1::ffff"));
        assert_eq!(host6(0xffff), v6("2001:db8:1::1:0"));
        assert_eq!(host6(MAX_HOSTS - 2), v6("2001:db8:1::1:ffff"));
        assert_eq!(host6(MAX_HOSTS - 1), v6("2001:db8:1::"));
        assert_eq!(host_of(Family::V6, 5), IpAddr::V6(v6("2001:db8:1::6")));
        assert_eq!(
            host_of(Family::V4, 5),
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 6))
        );
        let all: HashSet<Ipv6Addr> = (0..MAX_HOSTS).map(host6).collect();
        assert_eq!(all.len(), MAX_HOSTS);
        // All inside 2001:db8:1::/111: the top 111 bits are the start's.
        let start = u128::from(RANGE6_START);
        assert!(all
            .iter()
            .all(|addr| u128::from(*addr) >> 17 == start >> 17));
        assert_eq!(
            RANGE6,
            format!("{RANGE6_START}/{}", 128 - MAX_HOSTS.trailing_zeros())
        );
    }

    #[test]
    fn hosts_file_has_exactly_n_lines() {
        let text = hosts_file_text(Family::V4, 4096);
        assert_eq!(text.lines().count(), 4096);
        assert_eq!(text.lines().next(), Some("198.18.0.1"));
        assert_eq!(text.lines().last(), Some("198.18.16.0"));
        let text = hosts_file_text(Family::V6, 4096);
        assert_eq!(text.lines().count(), 4096);
        assert_eq!(text.lines().next(), Some("2001:db8:1::1"));
        assert_eq!(text.lines().last(), Some("2001:db8:1::1000"));
        let all = hosts_file_text(Family::V6, MAX_HOSTS);
        assert_eq!(all.lines().last(), Some("2001:db8:1::"));
    }

    #[test]
    fn a_hosts_file_beyond_the_range_is_refused() {
        let path = std::env::temp_dir().join(format!("xtask-farm-test-{}", process::id()));
        let err = write_hosts_file(&path, Family::V6, MAX_HOSTS + 1).unwrap_err();
        assert!(err.to_string().contains("2001:db8:1::/111"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn prefix_is_per_process() {
        assert_eq!(Farm::prefix(), format!("xdpb-{}-", process::id()));
    }

    mod privileged {
        use xdprobe_harness::{netns, require_root};

        use super::super::*;

        #[test]
        fn farm_answers_for_both_ranges_and_leaves_nothing_behind() {
            require_root();
            let names: Vec<String> = {
                let farm = Farm::build().expect("farm builds");
                farm.check().expect("farm answers");
                for (family, addr) in [(Family::V4, "198.19.1.2"), (Family::V6, "2001:db8:1::1:2")]
                {
                    let before = farm.echo_counters(family).expect("farm counters");
                    let mut ping = farm.exec(PROBER, "ping").expect("known");
                    ping.args(["-c", "3", "-i", "0.01", "-W", "2", addr]);
                    cmd::output(&mut ping).expect("ping through the farm");
                    let seen = farm
                        .echo_counters(family)
                        .expect("farm counters")
                        .since(before);
                    assert_eq!(
                        seen,
                        EchoCounters {
                            requests: 3,
                            replies: 3
                        },
                        "{addr}"
                    );
                }
                [PROBER, FARM]
                    .iter()
                    .map(|short| farm.ns(short).expect("known").to_owned())
                    .collect()
            };
            let left = netns::list().expect("ip netns list");
            assert!(names.iter().all(|name| !left.contains(name)), "{left:?}");
        }
    }
}
