//! A long-running child — the real `xdprobe` binary inside a lab namespace, mostly — with
//! everything it prints captured as its log, optionally also shown line by line behind a
//! `[name]` prefix (the demo's narration), and stopped when dropped.

use std::{
    io::{BufRead as _, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

/// How long a daemon gets to exit after SIGTERM, in [`Daemon::stop`] and on drop.
const GRACE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

/// Where the binary under test is: `$XDPROBE_BIN` (set by `cargo xtask test`), else
/// `debug/xdprobe` in `$CARGO_TARGET_DIR` or the workspace's `target`. Panics if it is not
/// there: tests never skip.
pub fn xdprobe_bin() -> PathBuf {
    let path = std::env::var_os("XDPROBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
            target.join("debug/xdprobe")
        });
    assert!(
        path.is_file(),
        "xdprobe binary not found at {} (build it with `cargo xtask build`, or set XDPROBE_BIN)",
        path.display()
    );
    path
}

/// The package under test: `$XDPROBE_DEB`, which `cargo xtask test` builds and sets. Panics
/// if it is not there: tests never skip.
pub fn xdprobe_deb() -> PathBuf {
    let deb = std::env::var_os("XDPROBE_DEB").map(PathBuf::from).expect(
        "XDPROBE_DEB not set: run the suite with `cargo xtask test`, which builds the package",
    );
    assert!(deb.is_file(), "{} missing", deb.display());
    deb
}

/// The number after the last `key` in a log (e.g. `windows=31` in xdprobe's stop summary).
pub fn log_number(log: &str, key: &str) -> Option<u64> {
    let rest = &log[log.rfind(key)? + key.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The number after `key` in the last line of `log` that contains `line` (e.g. the
/// `last_heard_ms=` of "took over the VIP").
pub fn logged_number(log: &str, line: &str, key: &str) -> Option<u64> {
    let found = log.lines().rev().find(|l| l.contains(line))?;
    log_number(found, key)
}

pub struct Daemon {
    /// What messages call it (`xdprobe`), and the prefix of its shown lines.
    name: String,
    child: Child,
    log: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

impl Daemon {
    /// `xdprobe run` as a failover lab's standby (namespace `ns`, interface `eth0`) watching
    /// `watch` for `vip` at `window_ms` windows, plus `extra` flags; with `wait_up`, returns
    /// once it logged a host UP (the primary, seen answering).
    pub fn standby(
        ns: &str,
        watch: &str,
        vip: &str,
        window_ms: u64,
        extra: &[&str],
        wait_up: bool,
    ) -> anyhow::Result<Self> {
        let window = format!("{window_ms}ms");
        let mut args = vec![
            "run", "--iface", "eth0", "--watch", watch, "--vip", vip, "--window", &window,
        ];
        args.extend_from_slice(extra);
        let mut daemon = Self::start(ns, &args)?;
        if wait_up {
            daemon.wait_for_log("host UP", Duration::from_secs(5))?;
        }
        Ok(daemon)
    }

    /// Starts `xdprobe ARGS` in namespace `ns`, logging at `info`.
    pub fn start(ns: &str, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_xdprobe(ns, args, Some("info"))
    }

    /// Starts `PROGRAM ARGS` (`command[0]` and the rest) in namespace `ns`, with its output
    /// captured like xdprobe's: for wrappers such as setpriv.
    pub fn start_program(ns: &str, command: &[&str]) -> anyhow::Result<Self> {
        Self::in_namespace(ns, command, Some("info"))
    }

    /// Starts `xdprobe ARGS` without `RUST_LOG`, so the config's `log_level` decides.
    pub fn start_logging_by_config(ns: &str, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_xdprobe(ns, args, None)
    }

    fn start_xdprobe(ns: &str, args: &[&str], rust_log: Option<&str>) -> anyhow::Result<Self> {
        let bin = xdprobe_bin();
        let mut all = vec![bin.to_str().context("binary path")?];
        all.extend_from_slice(args);
        Self::in_namespace(ns, &all, rust_log)
    }

    fn in_namespace(ns: &str, command: &[&str], rust_log: Option<&str>) -> anyhow::Result<Self> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(command);
        match rust_log {
            Some(filter) => c.env("RUST_LOG", filter),
            None => c.env_remove("RUST_LOG"),
        };
        Self::spawn(c, "xdprobe", false)
    }

    /// Starts `command` (which must exec the daemon in place, as `ip netns exec` does, for
    /// signals to reach it), called `name` in messages. With `show`, each line it prints is
    /// also printed here behind `[name] `, stdout to stdout and stderr to stderr.
    pub fn spawn(mut command: Command, name: &str, show: bool) -> anyhow::Result<Self> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        let log = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let prefix = show.then(|| format!("[{name}]"));
        if let Some(out) = child.stdout.take() {
            readers.push(reader(out, &log, prefix.clone(), |line| println!("{line}")));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(reader(err, &log, prefix, |line| eprintln!("{line}")));
        }
        Ok(Self {
            name: name.to_string(),
            child,
            log,
            readers,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait()?;
        }
        Ok(self.exited)
    }

    /// Fails if the daemon has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.try_wait()? {
            bail!("{} exited early ({status})", self.name);
        }
        Ok(())
    }

    /// Sleeps for `duration`, failing as soon as the daemon exits.
    pub fn watch_for(&mut self, duration: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + duration;
        loop {
            self.ensure_running()?;
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            thread::sleep(POLL.min(until - now));
        }
    }

    /// Waits until the log contains `needle`, or fails with the log.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.try_wait()? {
                // What it printed last may still be in the pipes.
                let log = self.drained_log();
                bail!(
                    "{} exited ({status}) before logging {needle:?}:\n{log}",
                    self.name
                );
            }
            thread::sleep(POLL);
        }
        bail!(
            "{} did not log {needle:?} within {timeout:?}:\n{}",
            self.name,
            self.log()
        )
    }

    /// How long the daemon says the primary had been silent when it took the VIP: the
    /// `last_heard_ms` it logged with "took over the VIP", measured by the daemon itself (so
    /// it does not include how long this test took to notice). Waits up to `timeout`.
    pub fn logged_takeover(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if let Some(ms) = logged_number(&log, "took over the VIP", "last_heard_ms=") {
                return Ok(Duration::from_millis(ms));
            }
            if Instant::now() >= deadline {
                bail!("no takeover with last_heard_ms logged within {timeout:?}:\n{log}");
            }
            thread::sleep(POLL);
        }
    }

    /// Waits for the process to end by itself (up to 60 s); returns how it ended and its log.
    pub fn wait(mut self) -> anyhow::Result<(ExitStatus, String)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok((status, self.drained_log()));
            }
            if Instant::now() > deadline {
                bail!("{} did not end within 60 s:\n{}", self.name, self.log());
            }
            thread::sleep(POLL);
        }
    }

    /// Sends SIGHUP: re-read the config.
    pub fn hangup(&self) {
        self.signal(Signal::SIGHUP);
    }

    fn signal(&self, signal: Signal) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // Our own child, not reaped yet (we hold it): the pid is still its own.
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// Sends SIGTERM and waits for the exit; returns how it ended and the whole log. A daemon
    /// still running [`GRACE`] after SIGTERM is killed, and that is an error.
    pub fn stop(mut self) -> anyhow::Result<(ExitStatus, String)> {
        let status = self.terminate()?;
        Ok((status, self.drained_log()))
    }

    /// SIGTERM (unless it has exited), then waits up to [`GRACE`]; kills it after that.
    fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + GRACE;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                self.exited = self.child.wait().ok();
                bail!(
                    "{} did not stop within {GRACE:?} of SIGTERM (killed):\n{}",
                    self.name,
                    self.log()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// The log, once the readers have taken what was left in the pipes (without hanging on
    /// a grandchild that kept them open).
    fn drained_log(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline && !self.readers.iter().all(JoinHandle::is_finished) {
            thread::sleep(POLL);
        }
        for reader in self.readers.drain(..).filter(JoinHandle::is_finished) {
            let _ = reader.join();
        }
        self.log()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(err) = self.terminate() {
            eprintln!("stopping {}: {err:#}", self.name);
        }
    }
}

/// Appends `stream` to `log` line by line; with a prefix, also `print`s each line behind it.
fn reader(
    stream: impl Read + Send + 'static,
    log: &Arc<Mutex<String>>,
    prefix: Option<String>,
    print: fn(&str),
) -> JoinHandle<()> {
    let log = Arc::clone(log);
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end_matches(['\n', '\r']);
                    if let Some(prefix) = &prefix {
                        print(&format!("{prefix} {text}"));
                    }
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    log.push_str(text);
                    log.push('\n');
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_number_reads_the_last_value_of_a_key() {
        let log = "windows=3 x\nstopped windows=31 replies=7\n";
        assert_eq!(log_number(log, "windows="), Some(31));
        assert_eq!(log_number(log, "replies="), Some(7));
        assert_eq!(log_number(log, "missing="), None);
    }

    #[test]
    fn logged_number_reads_the_key_of_the_last_matching_line() {
        let log = "took over the VIP last_heard_ms=201 netlink_us=80\n\
                   released the VIP last_heard_ms=9\n\
                   took over the VIP silent_ms=200 last_heard_ms=215 netlink_us=70\n\
                   stopped\n";
        assert_eq!(
            logged_number(log, "took over the VIP", "last_heard_ms="),
            Some(215)
        );
        assert_eq!(logged_number(log, "took over the VIP", "nope="), None);
        assert_eq!(logged_number(log, "no such line", "last_heard_ms="), None);
    }

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn captures_both_streams_and_stops_with_sigterm() {
        let mut d = Daemon::spawn(
            sh("trap 'echo bye; exit 0' TERM; echo hello; echo oops >&2; \
                while :; do sleep 0.01; done"),
            "sh",
            false,
        )
        .unwrap();
        d.wait_for_log("oops", Duration::from_secs(5)).unwrap();
        d.watch_for(Duration::from_millis(20)).unwrap();
        let (status, log) = d.stop().unwrap();
        assert!(status.success(), "{status}: {log}");
        assert!(
            log.contains("hello\n") && log.contains("oops\n") && log.contains("bye\n"),
            "{log}"
        );
    }

    #[test]
    fn an_early_exit_is_an_error_naming_the_daemon() {
        let mut d = Daemon::spawn(sh("echo done; exit 4"), "quitter", true).unwrap();
        let err = d.wait_for_log("never", Duration::from_secs(5)).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("quitter exited") && msg.contains("done"),
            "{msg}"
        );
        assert!(d.ensure_running().is_err());
        let (status, log) = d.wait().unwrap();
        assert_eq!(status.code(), Some(4));
        assert_eq!(log, "done\n");
    }
}
