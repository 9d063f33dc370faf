//! Namespaces, veths and a bridge, built with iproute2 and torn down on drop.

use std::{
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

static LABS: AtomicU32 = AtomicU32::new(0);

/// A set of hosts (one namespace each) plugged into one bridge (in its own namespace).
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
}

/// Runs a command, failing with its output if it fails.
pub fn run(args: &[&str]) -> anyhow::Result<Output> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("spawning {args:?}"))?;
    if !output.status.success() {
        bail!(
            "{args:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

impl Lab {
    /// An empty lab named after the test, e.g. `xt1234-0-`; nothing is created yet.
    pub fn new() -> Self {
        crate::require_root();
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        Self {
            prefix: format!("xt{}-{n}-", std::process::id()),
            namespaces: Vec::new(),
        }
    }

    /// The failover lab: a bridge and the hosts `(name, address/prefix)`, each with `eth0`.
    pub fn with_hosts(hosts: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut lab = Self::new();
        let sw = lab.add_ns("sw")?;
        run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &sw, "link", "set", "br0", "up"])?;
        for (name, addr) in hosts {
            let ns = lab.add_ns(name)?;
            let port = format!("p-{name}");
            run(&[
                "ip", "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            run(&["ip", "-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            run(&["ip", "-n", &ns, "addr", "add", addr, "dev", "eth0"])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(lab)
    }

    fn add_ns(&mut self, name: &str) -> anyhow::Result<String> {
        let ns = self.ns(name);
        run(&["ip", "netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The full namespace name of host `name`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs `args` inside host `name`'s namespace.
    pub fn exec(&self, name: &str, args: &[&str]) -> anyhow::Result<Output> {
        let ns = self.ns(name);
        let mut full = vec!["ip", "netns", "exec", ns.as_str()];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Runs the xdprobe under test with `args` inside host `name`'s namespace; returns its
    /// output whatever its exit code (callers check that).
    pub fn xdprobe(&self, name: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(name)])
            .arg(crate::xdprobe_bin())
            .args(args)
            .output()
            .expect("spawning xdprobe")
    }

    /// `ip -n <host> ARGS`.
    pub fn ip(&self, name: &str, args: &[&str]) -> anyhow::Result<String> {
        let ns = self.ns(name);
        let mut full = vec!["ip", "-n", ns.as_str()];
        full.extend_from_slice(args);
        Ok(String::from_utf8_lossy(&run(&full)?.stdout).into_owned())
    }

    /// The IPv4 addresses on `name`'s `eth0`, one `ip -o` line each.
    pub fn addrs(&self, name: &str) -> anyhow::Result<String> {
        self.ip(name, &["-4", "-o", "addr", "show", "dev", "eth0"])
    }

    /// The MAC address of `name`'s `eth0`.
    pub fn mac(&self, name: &str) -> anyhow::Result<String> {
        let line = self.ip(name, &["-br", "link", "show", "dev", "eth0"])?;
        line.split_whitespace()
            .nth(2)
            .map(str::to_string)
            .with_context(|| format!("no MAC in {line:?}"))
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

    /// Brings a host's link back up.
    pub fn revive(&self, name: &str) -> anyhow::Result<()> {
        self.ip(name, &["link", "set", "eth0", "up"]).map(drop)
    }

    /// Silences a host at once: its link goes down.
    pub fn kill(&self, name: &str) -> anyhow::Result<()> {
        self.ip(name, &["link", "set", "eth0", "down"]).map(drop)
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

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
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
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok((at, line)) if line.contains(needle) && !line.starts_with("Deleted") => {
                    return Some((at, line))
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Waits up to `timeout` for the removal of an address containing `needle`.
    pub fn wait_deleted(&self, needle: &str, timeout: Duration) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok((at, line)) if line.contains(needle) && line.starts_with("Deleted") => {
                    return Some((at, line))
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
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
