//! A long-running child (xdprobe in the demo) whose output is shown line by line behind a
//! `[name]` prefix, and which is stopped when dropped.
use std::{
    io::{BufRead as _, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// How long a stopped daemon gets to exit after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

pub struct Daemon {
    name: &'static str,
    child: Child,
    exited: Option<ExitStatus>,
    relays: Vec<JoinHandle<()>>,
}

impl Daemon {
    pub fn spawn(name: &'static str, mut command: Command) -> Result<Self> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{}`", cmd::describe(&command)))?;
        let mut relays = Vec::new();
        if let Some(out) = child.stdout.take() {
            relays.push(relay(name, out, |line| println!("{line}")));
        }
        if let Some(err) = child.stderr.take() {
            relays.push(relay(name, err, |line| eprintln!("{line}")));
        }
        Ok(Self {
            name,
            child,
            exited: None,
            relays,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the daemon has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            self.exited = Some(status);
            bail!("{} exited early ({status})", self.name);
        }
        Ok(())
    }

    /// Sleeps for `duration`, failing as soon as the daemon exits.
    pub fn watch_for(&mut self, duration: Duration) -> Result<()> {
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

    /// Sends SIGTERM (`kill -TERM PID`) and waits for the daemon; kills it if it takes longer
    /// than [`GRACE`]. Returns how it ended.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        let pid = self.pid().to_string();
        cmd::output(std::process::Command::new("kill").args(["-TERM", &pid]))?;
        let deadline = Instant::now() + GRACE;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "{} did not exit {GRACE:?} after SIGTERM; killing it",
                    self.name
                );
                self.child.kill()?;
                break self.child.wait()?;
            }
            thread::sleep(POLL);
        };
        self.exited = Some(status);
        self.finish_relays();
        Ok(status)
    }

    /// Lets the relays print what is left in the pipes, without hanging on a grandchild that
    /// kept them open.
    fn finish_relays(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline && !self.relays.iter().all(JoinHandle::is_finished) {
            thread::sleep(POLL);
        }
        for relay in self.relays.drain(..).filter(JoinHandle::is_finished) {
            let _ = relay.join();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exited.is_none() {
            if let Err(err) = self.stop() {
                eprintln!("cannot stop {}: {err:#}", self.name);
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Copies `stream` line by line to `print`, each line behind `[name] `.
fn relay(
    name: &'static str,
    stream: impl Read + Send + 'static,
    print: fn(&str),
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    print(&format!("[{name}] {}", text.trim_end()));
                }
            }
        }
    })
}
