//! A real etcd cluster (Debian's `etcd-server`, 3.4) in a lab: each member in a namespace of
//! its own on the lab's bridge, plus a client host that runs `etcdctl` (Debian's
//! `etcd-client`). For the tests of xdprobe's cluster mode (issue 12), which need a real
//! majority to lose and regain: members are killed ([`EtcdCluster::kill`]) and restarted, or cut
//! off with nftables ([`partition`](EtcdCluster::partition), see [`crate::etcd::partition`]).
//!
//! Member `i` (0-based) is host `etcd{i+1}` at 192.0.2.(51 + i)/24, clients on port 2379 and
//! peers on 2380 of that address; the client host `etcdctl` is 192.0.2.50. The members run
//! with `--heartbeat-interval 10 --election-timeout 100` (milliseconds): a namespace LAN has
//! no latency to speak of, and the tests want elections over in a fraction of a second.
//! [`EtcdCluster::start_with`] runs them with etcd's defaults instead (100 and 1000), to
//! measure what production settings give.
//!
//! The members are killed (SIGKILL) and their data directory removed when the cluster is
//! dropped; their namespaces belong to the lab, so they go with it (and with the lab's janitor
//! if the run is killed, which also kills what runs in them). Data directories a killed run
//! left behind are removed by the next [`EtcdCluster::start`].

pub mod etcdctl;
pub mod partition;
pub mod tls;

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};

use crate::{
    files::{self, TempDir},
    lab::Lab,
    output::tail,
};

pub const ETCD: &str = "/usr/bin/etcd";
pub const ETCDCTL: &str = "/usr/bin/etcdctl";
pub const CLIENT_PORT: u16 = 2379;
/// The lab's raft timing (heartbeat, election timeout; ms): elections in a fraction of a second.
pub const LAB_TIMING: (u32, u32) = (10, 100);
/// etcd's own defaults, as in production.
pub const DEFAULT_TIMING: (u32, u32) = (100, 1000);
pub const PEER_PORT: u16 = 2380;
/// The lab host `etcdctl` runs on.
pub const CLIENT_HOST: &str = "etcdctl";
const CLIENT_ADDR: &str = "192.0.2.50/24";
/// The most members [`EtcdCluster::start`] makes (192.0.2.51 to .59).
pub const MAX_MEMBERS: usize = 9;
/// How many lines of a member's log an error shows.
const LOG_TAIL: usize = 30;
const POLL: Duration = Duration::from_millis(50);
/// What etcd 3.4 logs once it answers on its peer port.
const SERVING_PEERS: &str = "serving peer traffic";
/// The tag of the data directories' names (`xdprobe-etcd-PID-N`): each member preallocates
/// a 64 MB WAL there, so what a killed run left is worth removing.
const DIR_TAG: &str = "etcd";

struct Member {
    /// Its etcd name, also its lab host name: `etcd1`...
    name: String,
    ns: String,
    addr: Ipv4Addr,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Its raft member ID, as `etcdctl member list` shows it (known once the cluster formed).
    id: u64,
    /// Its certificate and key, when clients must use TLS.
    tls: Option<(PathBuf, PathBuf)>,
}

impl Member {
    fn client_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{CLIENT_PORT}", self.addr)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:{PEER_PORT}", self.addr)
    }

    /// The end of everything it logged, for error messages.
    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        format!(
            "--- last {LOG_TAIL} lines of {}'s log ({}):\n{}",
            self.name,
            self.log.display(),
            tail(&log, LOG_TAIL)
        )
    }

    /// SIGKILL, then reaps it; nothing if it is not running.
    fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // Fails only if it has already exited; the wait reaps it either way.
            let _ = child.kill();
            child
                .wait()
                .with_context(|| format!("waiting for {} to die", self.name))?;
        }
        Ok(())
    }
}

/// Three (or more) etcd members in a lab; see the module documentation.
pub struct EtcdCluster {
    members: Vec<Member>,
    /// `--heartbeat-interval` and `--election-timeout`, milliseconds.
    timing: (u32, u32),
    /// The CA and certificates, when clients must use TLS.
    tls: Option<tls::EtcdTls>,
    client_ns: String,
    /// The members' data directories and logs, held only to be removed on drop: after the
    /// members are killed (`Drop::drop` runs before the fields are dropped).
    _dir: TempDir,
}

impl EtcdCluster {
    /// Adds `members` etcd hosts and the client host to `lab`'s bridge (making the bridge if
    /// the lab has none yet), starts a member on each, and returns once every member reports
    /// healthy (at most 10 s). Needs root.
    pub fn start(lab: &mut Lab, members: usize) -> anyhow::Result<Self> {
        Self::start_with(lab, members, LAB_TIMING, false)
    }

    /// [`start`](Self::start) with `timing`: `--heartbeat-interval` and `--election-timeout`
    /// in milliseconds ([`LAB_TIMING`], or etcd's defaults [`DEFAULT_TIMING`]); with `tls`,
    /// clients must come over TLS with a client certificate of the lab's CA ([`tls`]).
    pub fn start_with(
        lab: &mut Lab,
        members: usize,
        timing: (u32, u32),
        tls: bool,
    ) -> anyhow::Result<Self> {
        ensure!(
            (1..=MAX_MEMBERS).contains(&members),
            "an etcd lab has 1 to {MAX_MEMBERS} members, not {members}"
        );
        check_installed(&[(ETCD, "etcd-server"), (ETCDCTL, "etcd-client")])?;
        let names: Vec<String> = (1..=members).map(|i| format!("etcd{i}")).collect();
        let addrs: Vec<Ipv4Addr> = (0..members)
            .map(|i| Ipv4Addr::new(192, 0, 2, 51 + i as u8))
            .collect();
        let cidrs: Vec<String> = addrs.iter().map(|a| format!("{a}/24")).collect();
        let mut hosts: Vec<(&str, &str)> = vec![(CLIENT_HOST, CLIENT_ADDR)];
        hosts.extend(
            names
                .iter()
                .map(String::as_str)
                .zip(cidrs.iter().map(String::as_str)),
        );
        lab.add_bridged(&hosts)
            .context("adding the etcd hosts to the lab")?;
        for (host, _) in &hosts {
            lab.wait_until_up(host, Duration::from_secs(5))?;
        }
        let base = std::env::temp_dir();
        files::remove_orphans(&base, DIR_TAG).with_context(|| {
            format!(
                "removing etcd data left in {} by killed runs",
                base.display()
            )
        })?;
        let dir = TempDir::new(DIR_TAG);
        let tls = match tls {
            true => Some(tls::EtcdTls::make(dir.dir(), &addrs).context("making the lab's TLS")?),
            false => None,
        };
        let members = names
            .iter()
            .zip(&addrs)
            .enumerate()
            .map(|(i, (name, &addr))| Member {
                name: name.clone(),
                ns: lab.ns(name),
                addr,
                data: dir.path(&format!("{name}.data")),
                log: dir.path(&format!("{name}.log")),
                child: None,
                id: 0,
                tls: tls.as_ref().map(|t| t.members[i].clone()),
            })
            .collect();
        let mut cluster = Self {
            members,
            timing,
            tls,
            client_ns: lab.ns(CLIENT_HOST),
            _dir: dir,
        };
        // One after the other: a new member first asks its peers whether the cluster exists
        // already, and a peer that has bound its port but does not serve yet (it is asking
        // too) holds that question for a second. Started together, members waited 1 to 2 s
        // for each other here; started in turn, each finds the earlier ones serving and the
        // later ones not listening at all, and goes on at once.
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
            cluster.wait_serving_peers(i, Duration::from_secs(5))?;
        }
        cluster.wait_healthy(Duration::from_secs(10))?;
        let ids = etcdctl::member_ids(&cluster.etcdctl(&["member", "list", "-w", "json"])?)?;
        for member in &mut cluster.members {
            member.id = ids
                .iter()
                .find(|(name, _)| *name == member.name)
                .map(|&(_, id)| id)
                .with_context(|| format!("{} is not in the member list: {ids:?}", member.name))?;
        }
        Ok(cluster)
    }

    /// Starts member `i`'s etcd (its log appended to), without waiting for it.
    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let member = &mut self.members[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .with_context(|| format!("opening {}", member.log.display()))?;
        // `ip netns exec` execs etcd in place: the child's pid is etcd's, so kill reaches it.
        // On a restart the data directory exists and etcd ignores the --initial-* flags.
        let mut command = Command::new("ip");
        #[rustfmt::skip]
        command
            .args(["netns", "exec", &member.ns, ETCD])
            .args(["--name", &member.name])
            .arg("--data-dir").arg(&member.data)
            .args(["--listen-client-urls", &member.client_url()])
            .args(["--advertise-client-urls", &member.client_url()])
            .args(["--listen-peer-urls", &member.peer_url()])
            .args(["--initial-advertise-peer-urls", &member.peer_url()])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "xdprobe-lab"])
            .args(["--heartbeat-interval", &self.timing.0.to_string()])
            .args(["--election-timeout", &self.timing.1.to_string()])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        if let (Some((cert, key)), Some(tls)) = (&member.tls, &self.tls) {
            #[rustfmt::skip]
            command
                .arg("--cert-file").arg(cert)
                .arg("--key-file").arg(key)
                .arg("--trusted-ca-file").arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting etcd member {}", member.name))?;
        member.child = Some(child);
        Ok(())
    }

    /// Waits until member `i` (just started on a fresh data directory) serves its peer port,
    /// as its log says.
    fn wait_serving_peers(&mut self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log(i)?.contains(SERVING_PEERS) {
                return Ok(());
            }
            let running = self.is_running(i)?;
            let member = self.member(i)?;
            if !running {
                bail!("etcd member {} exited\n{}", member.name, member.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd member {} did not log {SERVING_PEERS:?} within {timeout:?}\n{}",
                    member.name,
                    member.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// How many members the cluster has.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Never: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The client URLs of every member, `http://192.0.2.51:2379`...
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// The CA and certificates, if clients must use TLS.
    pub fn tls(&self) -> Option<&tls::EtcdTls> {
        self.tls.as_ref()
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> anyhow::Result<String> {
        Ok(self.member(i)?.client_url())
    }

    /// The full namespace name of member `i`.
    pub fn ns(&self, i: usize) -> anyhow::Result<&str> {
        Ok(&self.member(i)?.ns)
    }

    /// The namespace `etcdctl` runs in: the lab host [`CLIENT_HOST`], on the same bridge.
    pub fn client_ns(&self) -> &str {
        &self.client_ns
    }

    /// Everything member `i` logged, across restarts.
    pub fn log(&self, i: usize) -> anyhow::Result<String> {
        let member = self.member(i)?;
        fs::read_to_string(&member.log).with_context(|| format!("reading {}", member.log.display()))
    }

    fn member(&self, i: usize) -> anyhow::Result<&Member> {
        self.members
            .get(i)
            .with_context(|| format!("no etcd member {i} (the lab has {})", self.members.len()))
    }

    fn member_mut(&mut self, i: usize) -> anyhow::Result<&mut Member> {
        let len = self.members.len();
        self.members
            .get_mut(i)
            .with_context(|| format!("no etcd member {i} (the lab has {len})"))
    }

    /// Kills member `i` with SIGKILL (a crash: nothing is flushed or said to the peers) and
    /// waits until it is gone. Its data directory stays for [`restart`](Self::restart).
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        self.member_mut(i)?.kill()
    }

    /// Starts member `i` again on its data directory (killing it first if it runs) and waits
    /// until it reports healthy (at most 10 s).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.member_mut(i)?.kill()?;
        self.spawn(i)?;
        self.wait_healthy_members(&[i], Duration::from_secs(10))
    }

    /// Starts every member that is not running (all killed, or some), without waiting for
    /// each: a member alone waits for its peers before it is healthy. Then waits until all
    /// are healthy (at most 10 s).
    pub fn restart_stopped(&mut self) -> anyhow::Result<()> {
        for i in 0..self.members.len() {
            if !self.is_running(i)? {
                self.spawn(i)?;
            }
        }
        self.wait_healthy(Duration::from_secs(10))
    }

    /// Whether member `i`'s process is still running (it has not exited or been killed).
    pub fn is_running(&mut self, i: usize) -> anyhow::Result<bool> {
        let member = self.member_mut(i)?;
        match member.child.as_mut() {
            None => Ok(false),
            Some(child) => Ok(child.try_wait()?.is_none()),
        }
    }

    /// Waits until every member reports healthy: it answers, and a quorum read through it
    /// succeeds (`etcdctl endpoint health`). The error shows etcdctl's last answer and the end
    /// of each member's log.
    pub fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.wait_healthy_members(&all, timeout)
    }

    /// [`wait_healthy`](Self::wait_healthy) for members `members` only. Fails at once if one
    /// of them is not running.
    pub fn wait_healthy_members(
        &mut self,
        members: &[usize],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self
                .etcdctl_command(members)?
                // Short timeouts: a member not listening yet is retried until the dial
                // timeout, and a read asked before there is a leader waits for the command
                // timeout even if one is elected meanwhile: either is how late we would notice.
                .args(["--dial-timeout=200ms", "--command-timeout=500ms"])
                .args(["endpoint", "health"])
                .output()
                .context("running etcdctl endpoint health")?;
            if out.status.success() {
                return Ok(());
            }
            for &i in members {
                if !self.is_running(i)? {
                    let member = self.member(i)?;
                    bail!(
                        "etcd member {} is not running\n{}",
                        member.name,
                        member.log_tail()
                    );
                }
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = members
                    .iter()
                    .filter_map(|&i| self.member(i).ok())
                    .map(Member::log_tail)
                    .collect();
                bail!(
                    "etcd members {members:?} not healthy within {timeout:?}; etcdctl endpoint \
                     health said:\n{}{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    logs.join("\n")
                );
            }
            thread::sleep(POLL);
        }
    }
}

/// Fails, saying which Debian package to install, unless every `(program, package)` is there.
fn check_installed(tools: &[(&str, &str)]) -> anyhow::Result<()> {
    for (tool, package) in tools {
        ensure!(
            Path::new(tool).exists(),
            "{tool} not found: install Debian's {package} (`cargo xtask setup` does)"
        );
    }
    Ok(())
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Err(err) = member.kill() {
                eprintln!("stopping etcd member {}: {err:#}", member.name);
            }
        }
    }
}

#[cfg(test)]
mod tests;
