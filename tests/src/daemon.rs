//! The real `xdprobe` binary, run inside a lab namespace with its log captured.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// Where the binary under test is: `$XDPROBE_BIN` (set by `cargo xtask test`), else the
/// workspace's `target/debug/xdprobe`. Panics if it is not there: tests never skip.
pub fn xdprobe_bin() -> PathBuf {
    let path = std::env::var_os("XDPROBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/xdprobe")
        });
    assert!(
        path.is_file(),
        "xdprobe binary not found at {} (build it with `cargo xtask build`, or set XDPROBE_BIN)",
        path.display()
    );
    path
}

/// The number after the last `key` in a log (e.g. `windows=31` in xdprobe's stop summary).
pub fn log_number(log: &str, key: &str) -> Option<u64> {
    let rest = &log[log.rfind(key)? + key.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

pub struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts `xdprobe ARGS` in namespace `ns`.
    pub fn start(ns: &str, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_xdprobe(ns, args, Some("info"))
    }

    /// Starts `PROGRAM ARGS` (`command[0]` and the rest) in namespace `ns`, with its output
    /// captured like xdprobe's: for wrappers such as setpriv.
    pub fn start_program(ns: &str, command: &[&str]) -> anyhow::Result<Self> {
        Self::spawn(ns, command, Some("info"))
    }

    /// Starts `xdprobe ARGS` without `RUST_LOG`, so the config's `log_level` decides.
    pub fn start_logging_by_config(ns: &str, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_xdprobe(ns, args, None)
    }

    fn start_xdprobe(ns: &str, args: &[&str], rust_log: Option<&str>) -> anyhow::Result<Self> {
        let bin = xdprobe_bin();
        let mut all = vec![bin.to_str().context("binary path")?];
        all.extend_from_slice(args);
        Self::spawn(ns, &all, rust_log)
    }

    fn spawn(ns: &str, command: &[&str], rust_log: Option<&str>) -> anyhow::Result<Self> {
        let mut command = {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).args(command);
            match rust_log {
                Some(filter) => c.env("RUST_LOG", filter),
                None => c.env_remove("RUST_LOG"),
            };
            c
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning xdprobe")?;
        let log = Arc::new(Mutex::new(String::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        Ok(Self { child, log })
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until the log contains `needle`, or fails with the log.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "xdprobe exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
        bail!(
            "xdprobe did not log {needle:?} within {timeout:?}:\n{}",
            self.log()
        )
    }

    /// Waits for the process to end by itself (up to 60 s).
    pub fn wait(mut self) -> anyhow::Result<(ExitStatus, String)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                thread::sleep(Duration::from_millis(50));
                return Ok((status, self.log()));
            }
            if Instant::now() > deadline {
                bail!("xdprobe did not end within 60 s:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGHUP: re-read the config.
    pub fn hangup(&self) {
        // SAFETY: plain kill(2) on our own child's pid (xdprobe itself, as in `stop`).
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGHUP) };
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(mut self) -> anyhow::Result<(ExitStatus, String)> {
        // The child is `ip netns exec`, which execs xdprobe: same pid.
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                // Let the reader threads drain the pipes.
                thread::sleep(Duration::from_millis(50));
                return Ok((status, self.log()));
            }
            if Instant::now() > deadline {
                bail!(
                    "xdprobe did not stop within 10 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
