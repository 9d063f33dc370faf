//! A cluster lab for xdprobe's cluster mode: a primary holding the VIP, N xdprobe nodes and a
//! real three-member etcd cluster ([`EtcdCluster`]) on one bridge, each host in a namespace.
//! Node `i` (0-based) is `n{i+1}` at 192.0.2.(11 + i)/24; the primary is 192.0.2.1 and holds
//! 192.0.2.100/24 (label `eth0:1`), as in production.
//!
//! Who holds the VIP is followed from each node's address events (`ip monitor address`, each
//! line stamped when read): [`ClusterLab::holders_timeline`] turns them into the set of
//! holders over time, which [`at_most_one_holder`] checks every 5 ms and at every event.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{
    cmd,
    etcd::{DEFAULT_TIMING, LAB_TIMING},
    files::TempDir,
    AddrWatch, Daemon, EtcdCluster, Lab,
};

pub const PRIMARY: &str = "192.0.2.1";
pub const VIP: &str = "192.0.2.100";
pub const VIP_NET: &str = "192.0.2.100/24";
/// The farm's host on the bridge, which answers for every address of [`FARM`].
pub const FARM_HOST: &str = "192.0.2.60";
pub const FARM: &str = "198.51.100.0/24";
/// nftables table that cuts a node off from etcd (see [`ClusterLab::cut_off_from_etcd`]).
const CUT_TABLE: &str = "xdprobe_cut_etcd";
/// nftables table that drops a node's probes to the primary ([`ClusterLab::deafen_to_primary`]).
const DEAF_TABLE: &str = "xdprobe_deaf";

/// One xdprobe node of the lab.
pub struct Node {
    pub name: String,
    pub addr: String,
    pub config: PathBuf,
    pub daemon: Option<Daemon>,
    pub watch: AddrWatch,
}

pub struct ClusterLab {
    pub lab: Lab,
    pub etcd: EtcdCluster,
    pub nodes: Vec<Node>,
    pub window: Duration,
    _dir: TempDir,
}

/// A node config's top-level keys: the lab's group (the primary and its VIP), then `top`.
fn with_group(top: &str) -> String {
    format!("watch = \"{PRIMARY}\"\nvip = \"{VIP_NET}\"\n{top}")
}

/// A change of who holds the VIP: when, which node, and whether it now holds it.
pub type HoldEvent = (Instant, usize, bool);

impl ClusterLab {
    /// The lab with `nodes` xdprobe nodes (not started), probing every `window`; each node's
    /// config is the cluster's (watching the primary for the VIP) plus `top` (top-level keys)
    /// and `cluster` (keys of `[cluster]`). In both, `{node}` is the node's name, `{dir}` a
    /// scratch directory the lab removes and `{ca}` the lab's CA (with TLS).
    pub fn new(nodes: usize, window: Duration, top: &str, cluster: &str) -> anyhow::Result<Self> {
        Self::build(nodes, window, &with_group(top), cluster, LAB_TIMING, false)
    }

    /// [`ClusterLab::new`] with etcd's clients on TLS with client certificates; the nodes'
    /// `[cluster]` names the lab's CA and client certificate.
    pub fn with_tls(
        nodes: usize,
        window: Duration,
        top: &str,
        cluster: &str,
    ) -> anyhow::Result<Self> {
        Self::build(nodes, window, &with_group(top), cluster, LAB_TIMING, true)
    }

    /// [`ClusterLab::new`] with etcd run at its default raft timing (as in production).
    pub fn with_etcd_defaults(
        nodes: usize,
        window: Duration,
        top: &str,
        cluster: &str,
    ) -> anyhow::Result<Self> {
        Self::build(
            nodes,
            window,
            &with_group(top),
            cluster,
            DEFAULT_TIMING,
            false,
        )
    }

    /// The lab without failover groups: every node's config has only `top` (which should
    /// name `monitor` targets) and the cluster; for `xdprobe monitor --cluster`.
    pub fn monitoring(
        nodes: usize,
        window: Duration,
        top: &str,
        cluster: &str,
    ) -> anyhow::Result<Self> {
        Self::build(nodes, window, top, cluster, LAB_TIMING, false)
    }

    fn build(
        nodes: usize,
        window: Duration,
        top: &str,
        cluster: &str,
        timing: (u32, u32),
        tls: bool,
    ) -> anyhow::Result<Self> {
        let mut hosts = vec![("primary".to_string(), format!("{PRIMARY}/24"))];
        for i in 0..nodes {
            hosts.push((format!("n{}", i + 1), format!("192.0.2.{}/24", 11 + i)));
        }
        let pairs: Vec<(&str, &str)> = hosts
            .iter()
            .map(|(n, a)| (n.as_str(), a.as_str()))
            .collect();
        let mut lab = Lab::with_hosts(&pairs)?;
        lab.add_vip("primary", VIP_NET)?;
        let etcd = EtcdCluster::start_with(&mut lab, 3, timing, tls)?;
        // The TLS files, unless the test names its own.
        let tls_keys = match etcd.tls() {
            Some(t) if !cluster.contains("ca =") => format!(
                "ca = {:?}\ncert = {:?}\nkey = {:?}\n",
                t.ca, t.client.0, t.client.1
            ),
            _ => String::new(),
        };
        // A 1 s lease unless the test names its own.
        let lease = if cluster.contains("lease_ttl") {
            ""
        } else {
            "lease_ttl = \"1s\"\n"
        };
        let endpoints = etcd
            .endpoints()
            .iter()
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let dir = TempDir::new("cluster");
        let mut list = Vec::new();
        for (name, addr) in hosts.iter().skip(1) {
            let text = format!(
                "iface = \"eth0\"\nwindow = \"{}ms\"\n{top}\n\
                 [cluster]\netcd = [{endpoints}]\nnode = \"{name}\"\n{lease}{tls_keys}{cluster}\n",
                window.as_millis()
            )
            .replace("{node}", name)
            .replace("{dir}", &dir.dir().display().to_string())
            .replace(
                "{ca}",
                &etcd
                    .tls()
                    .map(|t| t.ca.display().to_string())
                    .unwrap_or_default(),
            );
            let config = dir.write(&format!("{name}.toml"), &text, 0o644);
            list.push(Node {
                name: name.clone(),
                addr: addr.trim_end_matches("/24").to_string(),
                config,
                daemon: None,
                watch: lab.watch_addrs(name)?,
            });
        }
        Ok(Self {
            lab,
            etcd,
            nodes: list,
            window,
            _dir: dir,
        })
    }

    /// Adds a farm host that answers pings for all of [`FARM`] (a local route on its
    /// loopback), and a route to it on every node.
    pub fn add_farm(&mut self) -> anyhow::Result<()> {
        self.lab
            .add_bridged(&[("farm", &format!("{FARM_HOST}/24"))])?;
        self.lab
            .ip("farm", &["route", "add", "local", FARM, "dev", "lo"])?;
        for node in &self.nodes {
            self.lab
                .ip(&node.name, &["route", "add", FARM, "via", FARM_HOST])?;
        }
        Ok(())
    }

    /// The monitored targets' keys in etcd: (target, node, `up`/`down`).
    pub fn target_keys(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let out = self
            .etcd
            .etcdctl(&["get", "--prefix", "/xdprobe/targets/"])?;
        let lines: Vec<&str> = out.lines().collect();
        let mut keys = Vec::new();
        for pair in lines.chunks(2) {
            let [key, value] = pair else { continue };
            let rest = key.trim_start_matches("/xdprobe/targets/");
            let Some((target, node)) = rest.split_once('/') else {
                continue;
            };
            let state = value.split(' ').next().unwrap_or_default();
            keys.push((target.to_string(), node.to_string(), state.to_string()));
        }
        Ok(keys)
    }

    /// Starts node `i`'s daemon.
    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        let config = node.config.to_str().context("config path")?.to_string();
        let ns = self.lab.ns(&node.name);
        node.daemon = Some(Daemon::start(&ns, &["run", "--config", &config])?);
        Ok(())
    }

    /// Starts node `i` as `xdprobe monitor --cluster CONFIG`.
    pub fn start_monitor(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        let config = node.config.to_str().context("config path")?.to_string();
        let ns = self.lab.ns(&node.name);
        node.daemon = Some(Daemon::start(&ns, &["monitor", "--cluster", &config])?);
        Ok(())
    }

    /// The lab's scratch directory (`{dir}` in the configs).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.dir()
    }

    /// Starts every node, and waits until each sees the primary UP and one was elected.
    /// Returns the elected node.
    pub fn start_all(&mut self) -> anyhow::Result<usize> {
        for i in 0..self.nodes.len() {
            self.start(i)?;
        }
        for i in 0..self.nodes.len() {
            self.daemon(i)?
                .wait_for_log("host UP", Duration::from_secs(10))?;
        }
        self.wait_elected(Duration::from_secs(10))
    }

    pub fn daemon(&mut self, i: usize) -> anyhow::Result<&mut Daemon> {
        let node = &mut self.nodes[i];
        let name = node.name.clone();
        node.daemon
            .as_mut()
            .with_context(|| format!("node {name} is not running"))
    }

    /// The node whose log says it was elected holder (the last one to say so, if several
    /// did over time), within `timeout`.
    pub fn wait_elected(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let elected: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| self.log(i).contains("elected holder"))
                .collect();
            if let [one] = elected.as_slice() {
                return Ok(*one);
            }
            if Instant::now() > deadline {
                bail!(
                    "not one elected node after {timeout:?}: {elected:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Node `i`'s log so far (empty if never started).
    pub fn log(&self, i: usize) -> String {
        self.nodes[i]
            .daemon
            .as_ref()
            .map(Daemon::log)
            .unwrap_or_default()
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|i| format!("--- {}:\n{}", self.nodes[i].name, self.log(i)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The nodes that hold the VIP now (from `ip addr`).
    pub fn holders(&self) -> anyhow::Result<Vec<usize>> {
        let mut out = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if self.lab.addrs(&node.name)?.contains(VIP_NET) {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Waits until a node other than `not` holds the VIP (polling `ip addr` every 5 ms);
    /// which one.
    pub fn wait_holder(&self, not: Option<usize>, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(&i) = self.holders()?.iter().find(|&&h| Some(h) != not) {
                return Ok(i);
            }
            if Instant::now() > deadline {
                bail!("no node took the VIP within {timeout:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills node `i`'s machine: its daemon with SIGKILL (the VIP stays in its kernel, as on a
    /// crashed machine) and its link down (nothing of it reaches the network any more).
    pub fn kill_machine(&mut self, i: usize) -> anyhow::Result<()> {
        let name = self.nodes[i].name.clone();
        self.lab.kill(&name)?;
        if let Some(daemon) = self.nodes[i].daemon.as_ref() {
            cmd::run(&["kill", "-KILL", &daemon.pid().to_string()])?;
        }
        Ok(())
    }

    /// `nft ARGS` in node `i`'s namespace.
    fn nft(&self, i: usize, args: &[&str]) -> anyhow::Result<()> {
        let all = [&["nft"][..], args].concat();
        self.lab.exec(&self.nodes[i].name, &all).map(drop)
    }

    /// Cuts node `i` off from etcd (every packet to or from the etcd client port, both ways,
    /// with nftables in its namespace); it stays on the LAN.
    pub fn cut_off_from_etcd(&self, i: usize) -> anyhow::Result<()> {
        self.nft(
            i,
            &[&format!(
                "table inet {CUT_TABLE} {{ \
                   chain input {{ type filter hook input priority 0; tcp sport 2379 drop; }}; \
                   chain output {{ type filter hook output priority 0; tcp dport 2379 drop; }}; }}"
            )],
        )
    }

    pub fn reconnect_to_etcd(&self, i: usize) -> anyhow::Result<()> {
        self.nft(i, &["delete", "table", "inet", CUT_TABLE])
    }

    /// Makes node `i`'s probes to the primary vanish (nftables in its namespace, on the way
    /// out: the replies would be counted by XDP before any input hook): its own false DOWN.
    /// Undone by [`ClusterLab::hear_primary`].
    pub fn deafen_to_primary(&self, i: usize) -> anyhow::Result<()> {
        self.nft(
            i,
            &[&format!(
                "table inet {DEAF_TABLE} {{ chain output {{ type filter hook output priority 0; \
                 ip daddr {PRIMARY} icmp type echo-request drop; }}; }}"
            )],
        )
    }

    pub fn hear_primary(&self, i: usize) -> anyhow::Result<()> {
        self.nft(i, &["delete", "table", "inet", DEAF_TABLE])
    }

    /// Who held the VIP when, from every node's address events so far (drained).
    pub fn holders_timeline(&self) -> Vec<HoldEvent> {
        let mut events = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            for (at, line) in node.watch.drain() {
                if line.contains(VIP_NET) {
                    events.push((at, i, !line.starts_with("Deleted")));
                }
            }
        }
        events.sort_by_key(|e| e.0);
        events
    }
}

/// Checks that at most one node held the VIP at every event of `events` and at every 5 ms
/// from `from` to `to` (the set of holders replayed from the events, starting from
/// `held_at_from`, the node holding it at `from`, if any). Returns the number of 5 ms samples taken, or the first moment with two holders.
pub fn at_most_one_holder(
    events: &[HoldEvent],
    nodes: usize,
    held_at_from: Option<usize>,
    from: Instant,
    to: Instant,
) -> Result<usize, String> {
    let mut holding = vec![false; nodes];
    if let Some(holder) = held_at_from {
        holding[holder] = true;
    }
    let mut next = 0;
    let mut samples = 0;
    let mut t = from;
    let check = |holding: &[bool], at: Instant| -> Result<(), String> {
        let who: Vec<usize> = (0..holding.len()).filter(|&i| holding[i]).collect();
        if who.len() > 1 {
            return Err(format!(
                "nodes {who:?} held the VIP together at {:?} after the start",
                at - from
            ));
        }
        Ok(())
    };
    while t <= to {
        while next < events.len() && events[next].0 <= t {
            let (at, i, holds) = events[next];
            holding[i] = holds;
            check(&holding, at)?;
            next += 1;
        }
        check(&holding, t)?;
        samples += 1;
        t += Duration::from_millis(5);
    }
    Ok(samples)
}
