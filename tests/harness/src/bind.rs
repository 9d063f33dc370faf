//! A real BIND 9 (`named`, Debian `bind9`) for the DNS-pool tests: primary for `example.test.`
//! (reserved for testing, RFC 6761), taking updates signed with its own fresh TSIG key, inside
//! a lab namespace. Checked with `dig` and disturbed with `nsupdate` (Debian `bind9-dnsutils`).
//!
//! Used by the integration tests and by the DNS unit tests in probe-user/src/act/dns.rs. The
//! named.conf and zone templates are in tests/fixtures/bind/.

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::cmd::output as run;

const NAMED_CONF: &str = include_str!("../../fixtures/bind/named.conf");
const ZONE_FILE: &str = include_str!("../../fixtures/bind/example.test.zone");

const NAMED: &str = "/usr/sbin/named";
const TSIG_KEYGEN: &str = "/usr/sbin/tsig-keygen";
const DIG: &str = "/usr/bin/dig";
const NSUPDATE: &str = "/usr/bin/nsupdate";

/// The zone the server is primary for.
pub const ZONE: &str = "example.test.";
/// The name the tests publish pools under.
pub const RECORD: &str = "www.example.test.";
/// The TSIG key the server accepts updates from.
pub const KEY_NAME: &str = "xdprobe-key";
pub const KEY_ALGORITHM: &str = "hmac-sha256";
/// Where [`Bind::start`] listens.
pub const PORT: u16 = 5353;

/// How long `named` may take to answer after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Bind {
    ns: String,
    listen: IpAddr,
    port: u16,
    dir: PathBuf,
    secret: String,
    child: Option<Child>,
}

impl Bind {
    /// Starts `named` in namespace `ns` on 127.0.0.1:[`PORT`]; returns once it answers.
    pub fn start(ns: &str) -> anyhow::Result<Self> {
        Self::start_on(ns, Ipv4Addr::LOCALHOST, PORT)
    }

    /// Starts `named` in namespace `ns` on `listen`:`port` (an address of that namespace,
    /// either family).
    pub fn start_on(ns: &str, listen: impl Into<IpAddr>, port: u16) -> anyhow::Result<Self> {
        let listen = listen.into();
        for (tool, package) in [
            (NAMED, "bind9"),
            (TSIG_KEYGEN, "bind9"),
            (DIG, "bind9-dnsutils"),
            (NSUPDATE, "bind9-dnsutils"),
        ] {
            if !Path::new(tool).exists() {
                bail!("{tool} not found: install Debian's {package} (`cargo xtask setup` does)");
            }
        }
        let dir = std::env::temp_dir().join(format!("xdprobe-named-{ns}-{port}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut bind = Self {
            ns: ns.to_string(),
            listen,
            port,
            dir,
            secret: String::new(),
            child: None,
        };
        // The key file is what `tsig-keygen` writes; xdprobe reads it as it is.
        let key = run(Command::new(TSIG_KEYGEN).args(["-a", KEY_ALGORITHM, KEY_NAME]))?;
        let key = String::from_utf8_lossy(&key.stdout).into_owned();
        bind.secret = secret_of(&key).context("reading tsig-keygen's output")?;
        fs::write(bind.key_file(), &key).context("writing the key file")?;
        let conf = NAMED_CONF
            .replace("@DIR@", path_str(&bind.dir)?)
            .replace("@LISTEN4@", &listen_on(listen.is_ipv4(), listen))
            .replace("@LISTEN6@", &listen_on(listen.is_ipv6(), listen))
            .replace("@PORT@", &port.to_string())
            .replace("@KEY_NAME@", KEY_NAME)
            .replace("@KEY_ALGORITHM@", KEY_ALGORITHM)
            .replace("@KEY_SECRET@", &bind.secret);
        fs::write(bind.dir.join("named.conf"), conf).context("writing named.conf")?;
        fs::write(bind.dir.join("example.test.zone"), ZONE_FILE).context("writing the zone")?;
        bind.restart()?;
        Ok(bind)
    }

    /// Starts `named` again after [`stop`](Self::stop); the zone keeps what was updated (its
    /// journal is in the server's directory). Returns once it answers.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("named.log"))
            .context("opening named.log")?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, NAMED, "-g", "-n", "1", "-c"])
            .arg(self.dir.join("named.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting named")?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let soa = self
                .dig()
                .args([ZONE, "SOA"])
                .output()
                .context("running dig")?;
            if soa.status.success() && !soa.stdout.is_empty() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!("named exited ({status}) before answering:\n{}", self.log());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "named did not answer within {READY_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops `named` (SIGTERM, then waits): the server is down until [`restart`](Self::restart).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // Our own child, not reaped yet: the pid is still its own.
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let _ = child.wait();
        }
    }

    /// The server's address as xdprobe's `server` setting wants it: `IP:PORT`.
    pub fn server(&self) -> String {
        std::net::SocketAddr::new(self.listen, self.port).to_string()
    }

    /// The key's base64 secret.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The key as `tsig-keygen` wrote it (a BIND `key` clause), usable as `tsig_secret_file`.
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("xdprobe-key.conf")
    }

    /// Writes a key file with another, random secret (same name and algorithm): the server
    /// rejects updates signed with it (BADSIG).
    pub fn wrong_key_file(&self) -> anyhow::Result<PathBuf> {
        let key = run(Command::new(TSIG_KEYGEN).args(["-a", KEY_ALGORITHM, KEY_NAME]))?;
        let path = self.dir.join("wrong-key.conf");
        fs::write(&path, &key.stdout).context("writing the wrong key file")?;
        Ok(path)
    }

    /// Everything `named` logged (it runs with `-g`: the log includes each update it applied
    /// or refused, and why).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("named.log")).unwrap_or_default()
    }

    /// The A records at [`RECORD`], as `dig` sees them.
    pub fn a_records(&self) -> anyhow::Result<BTreeSet<Ipv4Addr>> {
        self.dig_set("A")
    }

    /// The records of type `kind` at [`RECORD`], parsed from `dig +short`.
    fn dig_set<T: std::str::FromStr + Ord>(&self, kind: &str) -> anyhow::Result<BTreeSet<T>> {
        let out = run(self.dig().args(["+norecurse", RECORD, kind]))?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| {
                line.trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("dig printed {line:?}"))
            })
            .collect()
    }

    /// The AAAA records at [`RECORD`], as `dig` sees them.
    pub fn aaaa_records(&self) -> anyhow::Result<BTreeSet<Ipv6Addr>> {
        self.dig_set("AAAA")
    }

    /// The A and AAAA records at [`RECORD`] together.
    pub fn records(&self) -> anyhow::Result<BTreeSet<IpAddr>> {
        let mut all: BTreeSet<IpAddr> = self.a_records()?.into_iter().map(IpAddr::V4).collect();
        all.extend(self.aaaa_records()?.into_iter().map(IpAddr::V6));
        Ok(all)
    }

    /// Waits until the A and AAAA records at [`RECORD`] are exactly `want`; the error shows
    /// the last answer and the server's log.
    pub fn wait_for_records(
        &self,
        want: &BTreeSet<IpAddr>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.records()?;
            if &have == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "A/AAAA records at {RECORD} still {have:?} after {timeout:?}, want {want:?}\n\
                     --- named log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Adds an AAAA record at [`RECORD`] as someone else would.
    pub fn add_aaaa(&self, addr: Ipv6Addr, ttl: u32) -> anyhow::Result<()> {
        self.nsupdate(&format!("update add {RECORD} {ttl} AAAA {addr}"))
    }

    /// Waits until the A records at [`RECORD`] are exactly `want`; the error shows the last
    /// answer and the server's log.
    pub fn wait_for_a(&self, want: &BTreeSet<Ipv4Addr>, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.a_records()?;
            if &have == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "A records at {RECORD} still {have:?} after {timeout:?}, want {want:?}\n\
                     --- named log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `nsupdate` with the server's key: `commands` are nsupdate lines (`update add ...`),
    /// sent as one update to zone [`ZONE`]. Fails if the server refuses it.
    pub fn nsupdate(&self, commands: &str) -> anyhow::Result<()> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns, NSUPDATE, "-y"])
            .arg(format!("{KEY_ALGORITHM}:{KEY_NAME}:{}", self.secret))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting nsupdate")?;
        let script = format!(
            "server {} {}\nzone {ZONE}\n{commands}\nsend\n",
            self.listen, self.port
        );
        child
            .stdin
            .take()
            .context("nsupdate's stdin")?
            .write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nsupdate {commands:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Adds an A record at [`RECORD`] as someone else would.
    pub fn add_a(&self, addr: Ipv4Addr, ttl: u32) -> anyhow::Result<()> {
        self.nsupdate(&format!("update add {RECORD} {ttl} A {addr}"))
    }

    /// Deletes the A record `addr` at [`RECORD`] as someone else would.
    pub fn delete_a(&self, addr: Ipv4Addr) -> anyhow::Result<()> {
        self.nsupdate(&format!("update delete {RECORD} A {addr}"))
    }
}

/// A `listen-on` list: `addr` if it is the family's, else `none`.
fn listen_on(family: bool, addr: IpAddr) -> String {
    if family {
        addr.to_string()
    } else {
        "none".to_string()
    }
}

impl Bind {
    fn dig(&self) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, DIG])
            .arg(format!("@{}", self.listen))
            .args([
                "-p",
                &self.port.to_string(),
                "+short",
                "+time=1",
                "+tries=2",
            ]);
        cmd
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// The `secret "..."` of a BIND key clause.
fn secret_of(key: &str) -> anyhow::Result<String> {
    let after = key
        .split_once("secret")
        .context("no `secret` in the key")?
        .1;
    let secret = after
        .split('"')
        .nth(1)
        .context("the secret is not quoted")?;
    Ok(secret.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_secret_of_a_key_clause() {
        let key = "key \"xdprobe-key\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0\";\n};\n";
        assert_eq!(secret_of(key).unwrap(), "c2VjcmV0");
        assert!(secret_of("key \"k\" { };").is_err());
    }

    mod privileged {
        use super::super::*;
        use crate::Lab;

        /// The server takes updates signed with its key, refuses others, and keeps its records
        /// across a restart.
        #[test]
        fn named_takes_signed_updates_only_and_survives_a_restart() {
            let lab = Lab::with_hosts(&[("dns", "192.0.2.53/24")]).expect("lab");
            let mut bind = Bind::start(&lab.ns("dns")).expect("named");
            assert_eq!(bind.server(), "127.0.0.1:5353");
            assert!(fs::read_to_string(bind.key_file())
                .unwrap()
                .contains(bind.secret()));
            let a = Ipv4Addr::new(198, 51, 100, 1);
            let b = Ipv4Addr::new(198, 51, 100, 2);
            assert_eq!(bind.a_records().unwrap(), BTreeSet::new());
            bind.add_a(a, 60).unwrap();
            bind.add_a(b, 60).unwrap();
            bind.wait_for_a(&BTreeSet::from([a, b]), Duration::from_secs(5))
                .unwrap();
            bind.delete_a(a).unwrap();
            assert_eq!(bind.a_records().unwrap(), BTreeSet::from([b]));

            let wrong =
                secret_of(&fs::read_to_string(bind.wrong_key_file().unwrap()).unwrap()).unwrap();
            assert_ne!(wrong, bind.secret());
            let refused = Command::new("ip")
                .args(["netns", "exec", &bind.ns, NSUPDATE, "-y"])
                .arg(format!("{KEY_ALGORITHM}:{KEY_NAME}:{wrong}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .and_then(|mut child| {
                    let script = format!(
                        "server 127.0.0.1 {PORT}\nzone {ZONE}\nupdate add {RECORD} 60 A {a}\nsend\n"
                    );
                    child
                        .stdin
                        .take()
                        .expect("stdin")
                        .write_all(script.as_bytes())?;
                    child.wait_with_output()
                })
                .unwrap();
            assert!(!refused.status.success());
            assert!(String::from_utf8_lossy(&refused.stderr).contains("BADSIG"));

            bind.stop();
            assert!(bind.a_records().is_err());
            bind.restart().unwrap();
            assert_eq!(bind.a_records().unwrap(), BTreeSet::from([b]));
            assert!(bind.log().contains("BADSIG"));
        }
    }
}
