//! A lab of hosts, one network namespace each, wired with iproute2: on one bridge (in a
//! namespace of its own), or two hosts on the two ends of one veth pair. Every host's link is
//! `eth0`; nothing is ever made in the namespace we run in. The namespaces go when the lab is
//! dropped (see [`crate::netns`]). And [`AddrWatch`], `ip monitor address` on a host.

use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{cmd::run, netns::Namespaces};

static LABS: AtomicU32 = AtomicU32::new(0);

/// The namespace of the bridge in [`Lab::with_hosts`].
pub const SWITCH: &str = "sw";
/// Every host's link.
pub const IFACE: &str = "eth0";

/// A set of hosts, each in a namespace called `PREFIX` + its name.
pub struct Lab {
    namespaces: Namespaces,
}

impl Lab {
    /// An empty lab with a prefix unique to this process and lab, e.g. `xt1234-0-`. Needs root.
    pub fn new() -> Self {
        crate::require_root();
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("xt{}-{n}-", std::process::id());
        Self::in_namespaces(Namespaces::new(&prefix).expect("starting the namespace janitor"))
    }

    /// An empty lab that makes its hosts in `namespaces`.
    pub fn in_namespaces(namespaces: Namespaces) -> Self {
        Self { namespaces }
    }

    /// A bridge and the hosts `(name, address/prefix)` plugged into it.
    pub fn with_hosts(hosts: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut lab = Self::new();
        lab.add_bridged(hosts)?;
        Ok(lab)
    }

    /// Two hosts `(name, address/prefix)` joined by one veth pair, both links up.
    pub fn with_pair(a: (&str, &str), b: (&str, &str)) -> anyhow::Result<Self> {
        let mut lab = Self::new();
        let (a_ns, b_ns) = (lab.add_host(a.0)?, lab.add_host(b.0)?);
        #[rustfmt::skip]
        run(&["ip", "-n", &a_ns, "link", "add", IFACE, "type", "veth",
              "peer", "name", IFACE, "netns", &b_ns])?;
        for (name, addr) in [a, b] {
            lab.ip(name, &["addr", "add", addr, "dev", IFACE])?;
            lab.ip(name, &["link", "set", IFACE, "up"])?;
        }
        Ok(lab)
    }

    /// Plugs each host `(name, address/prefix)` into the bridge `br0` in namespace [`SWITCH`]
    /// (made by the first call): a veth `p-NAME` on the bridge, its peer the host's `eth0`.
    /// Later calls add hosts to the same bridge.
    pub fn add_bridged(&mut self, hosts: &[(&str, &str)]) -> anyhow::Result<()> {
        let sw = self.ns(SWITCH);
        if !self.namespaces().contains(&sw) {
            self.add_host(SWITCH)?;
            run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"])?;
            run(&["ip", "-n", &sw, "link", "set", "br0", "up"])?;
        }
        for (name, addr) in hosts {
            let ns = self.add_host(name)?;
            let port = format!("p-{name}");
            // Made inside the switch, its peer straight in the host.
            #[rustfmt::skip]
            run(&["ip", "-n", &sw, "link", "add", &port, "type", "veth",
                  "peer", "name", IFACE, "netns", &ns])?;
            run(&["ip", "-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            run(&["ip", "-n", &ns, "addr", "add", addr, "dev", IFACE])?;
            run(&["ip", "-n", &ns, "link", "set", IFACE, "up"])?;
        }
        Ok(())
    }

    /// A namespace for host `name`, with only `lo` up; returns its full name.
    pub fn add_host(&mut self, name: &str) -> anyhow::Result<String> {
        self.namespaces.add(name)
    }

    /// The full namespace name of host `name` (also a unique name for anything else).
    pub fn ns(&self, name: &str) -> String {
        self.namespaces.full_name(name)
    }

    /// The namespaces of the hosts made so far.
    pub fn namespaces(&self) -> &[String] {
        self.namespaces.names()
    }

    /// Runs `args` inside host `name`'s namespace; fails unless it exits 0.
    pub fn exec(&self, name: &str, args: &[&str]) -> anyhow::Result<Output> {
        let ns = self.ns(name);
        let mut full = vec!["ip", "netns", "exec", ns.as_str()];
        full.extend_from_slice(args);
        run(&full)
    }

    /// `ip netns exec NS PROGRAM`, to add arguments to and run on host `name`. `ip` execs the
    /// program in place: the child's pid is the program's.
    pub fn command(&self, name: &str, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns(name)]).arg(program);
        command
    }

    /// Runs the xdprobe under test with `args` inside host `name`'s namespace; returns its
    /// output whatever its exit code (callers check that).
    pub fn xdprobe(&self, name: &str, args: &[&str]) -> Output {
        self.command(name, crate::xdprobe_bin())
            .args(args)
            .output()
            .expect("spawning xdprobe")
    }

    /// `ip -n <host> ARGS`; its stdout.
    pub fn ip(&self, name: &str, args: &[&str]) -> anyhow::Result<String> {
        let ns = self.ns(name);
        let mut full = vec!["ip", "-n", ns.as_str()];
        full.extend_from_slice(args);
        Ok(String::from_utf8_lossy(&run(&full)?.stdout).into_owned())
    }

    /// The IPv4 addresses on `name`'s `eth0`, one `ip -o` line each.
    pub fn addrs(&self, name: &str) -> anyhow::Result<String> {
        self.ip(name, &["-4", "-o", "addr", "show", "dev", IFACE])
    }

    /// The MAC address of `name`'s `eth0`.
    pub fn mac(&self, name: &str) -> anyhow::Result<String> {
        self.brief_link(name)?
            .get(2)
            .cloned()
            .with_context(|| format!("no MAC for {name}'s {IFACE}"))
    }

    /// `ip -br link show eth0` on `name`, split into fields: name, state, MAC, flags.
    fn brief_link(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let line = self.ip(name, &["-br", "link", "show", "dev", IFACE])?;
        Ok(line.split_whitespace().map(str::to_owned).collect())
    }

    /// Waits until `name`'s `eth0` is operationally up (until then a veth drops what is sent).
    pub fn wait_until_up(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let fields = self.brief_link(name)?;
            if fields.get(1).is_some_and(|state| state == "UP") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{IFACE} on {name} not up within {timeout:?}: {fields:?}");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The MAC `name` currently uses for `addr`, if it has a neighbour entry with one.
    pub fn neighbour(&self, name: &str, addr: &str) -> anyhow::Result<Option<String>> {
        let out = self.ip(name, &["neigh", "show", addr])?;
        let mut words = out.split_whitespace();
        Ok(words
            .by_ref()
            .find(|w| *w == "lladdr")
            .and(words.next())
            .map(str::to_string))
    }

    /// Adds `net` (a VIP, `ADDR/PREFIX`) to host `name`'s `eth0` with the label `eth0:1`, as a
    /// primary holds its VIP in production.
    pub fn add_vip(&self, name: &str, net: &str) -> anyhow::Result<()> {
        self.ip(name, &["addr", "add", net, "dev", IFACE, "label", "eth0:1"])
            .map(drop)
    }

    /// Brings a host's link back up.
    pub fn revive(&self, name: &str) -> anyhow::Result<()> {
        self.ip(name, &["link", "set", IFACE, "up"]).map(drop)
    }

    /// Silences a host at once: its link goes down.
    pub fn kill(&self, name: &str) -> anyhow::Result<()> {
        self.ip(name, &["link", "set", IFACE, "down"]).map(drop)
    }

    /// Starts streaming address events of host `name`.
    pub fn watch_addrs(&self, name: &str) -> anyhow::Result<AddrWatch> {
        AddrWatch::start(&self.ns(name))
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

/// `ip monitor address` in a namespace, each line stamped with when it was read.
pub struct AddrWatch {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl AddrWatch {
    fn start(ns: &str) -> anyhow::Result<Self> {
        let mut child = Command::new("ip")
            .args(["-n", ns, "monitor", "address"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning ip monitor")?;
        let stdout = child.stdout.take().context("ip monitor stdout")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    return;
                }
            }
        });
        // Give the monitor time to subscribe before the caller acts.
        thread::sleep(Duration::from_millis(100));
        Ok(Self { child, lines })
    }

    /// Waits up to `timeout` for a line containing `needle`; returns when it was seen.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<(Instant, String)> {
        self.wait_line(timeout, |line| {
            line.contains(needle) && !line.starts_with("Deleted")
        })
    }

    /// Waits up to `timeout` for the removal of an address containing `needle`.
    pub fn wait_deleted(&self, needle: &str, timeout: Duration) -> Option<(Instant, String)> {
        self.wait_line(timeout, |line| {
            line.contains(needle) && line.starts_with("Deleted")
        })
    }

    fn wait_line(
        &self,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok((at, line)) if wanted(&line) => return Some((at, line)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Every line not read yet, with when it was read from `ip monitor`.
    pub fn drain(&self) -> Vec<(Instant, String)> {
        self.lines.try_iter().collect()
    }

    /// Every line seen so far that contains `needle`.
    pub fn seen(&self, needle: &str) -> Vec<String> {
        self.lines
            .try_iter()
            .map(|(_, l)| l)
            .filter(|l| l.contains(needle))
            .collect()
    }
}

impl Drop for AddrWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    mod privileged {
        use std::time::Duration;

        use crate::{netns, Lab};

        #[test]
        fn hosts_on_a_bridge_and_on_a_pair_reach_each_other_and_leave_nothing_behind() {
            let names = {
                let mut lab = Lab::with_hosts(&[("a", "192.0.2.1/24"), ("b", "192.0.2.2/24")])
                    .expect("bridged lab");
                let watch = lab.watch_addrs("b").expect("ip monitor");
                lab.ip("b", &["addr", "add", "192.0.2.100/24", "dev", "eth0"])
                    .unwrap();
                assert!(watch
                    .wait_for("192.0.2.100", Duration::from_secs(2))
                    .is_some());
                lab.exec("a", &["ping", "-c", "1", "-W", "2", "192.0.2.100"])
                    .expect("a reaches b");
                assert_eq!(
                    lab.neighbour("a", "192.0.2.100").unwrap(),
                    Some(lab.mac("b").unwrap())
                );
                assert!(lab.addrs("b").unwrap().contains("192.0.2.100/24"));
                // A later host joins the same bridge.
                lab.add_bridged(&[("c", "192.0.2.3/24")]).expect("c");
                lab.exec("c", &["ping", "-c", "1", "-W", "2", "192.0.2.100"])
                    .expect("c reaches b");
                lab.namespaces().to_vec()
            };
            assert_eq!(names.len(), 4);
            let left = netns::list().unwrap();
            assert!(names.iter().all(|n| !left.contains(n)), "{left:?}");

            let pair =
                Lab::with_pair(("x", "198.51.100.1/24"), ("y", "198.51.100.2/24")).expect("pair");
            pair.wait_until_up("x", Duration::from_secs(3)).unwrap();
            pair.wait_until_up("y", Duration::from_secs(3)).unwrap();
            pair.exec("x", &["ping", "-c", "1", "-W", "2", "198.51.100.2"])
                .expect("x reaches y");
        }
    }
}
