//! A real SMTP server for the tests: Debian's python3-aiosmtpd with its Maildir handler,
//! listening on loopback inside a lab namespace.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// Debian's interpreter, which is the one python3-aiosmtpd is installed for.
const PYTHON: &str = "/usr/bin/python3";

pub struct Smtp {
    child: Child,
    maildir: PathBuf,
}

impl Smtp {
    /// Starts the server on 127.0.0.1:`port` in namespace `ns`, delivering to a fresh Maildir.
    pub fn start(ns: &str, port: u16) -> anyhow::Result<Self> {
        let maildir = std::env::temp_dir().join(format!("xdprobe-mail-{ns}-{port}"));
        let _ = fs::remove_dir_all(&maildir);
        let child = Command::new("ip")
            .args(["netns", "exec", ns, PYTHON, "-m", "aiosmtpd", "-n"])
            .args([
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting aiosmtpd (python3-aiosmtpd)")?;
        let mut smtp = Self { child, maildir };
        wait_listening(
            &mut smtp.child,
            ns,
            port,
            "aiosmtpd (is python3-aiosmtpd installed?)",
        )?;
        Ok(smtp)
    }

    /// The messages delivered so far, as text with quoted-printable soft line breaks undone.
    pub fn messages(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| fs::read_to_string(e.path()).ok())
            .map(|m| {
                m.replace("=\r\n", "")
                    .replace("=\n", "")
                    .replace("=3D", "=")
            })
            .collect()
    }

    /// Waits up to `timeout` for at least `n` messages.
    pub fn wait_messages(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n || Instant::now() > deadline {
                return messages;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.maildir);
    }
}

/// A server that accepts connections and never says a word: the worst kind of slow SMTP.
pub struct Silent {
    child: Child,
}

impl Silent {
    pub fn start(ns: &str, port: u16) -> anyhow::Result<Self> {
        let script = format!(
            "import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('127.0.0.1',{port}))\ns.listen(16)\nc=[]\nwhile True:\n c.append(s.accept())\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, PYTHON, "-c", &script])
            .spawn()
            .context("starting the silent server")?;
        wait_listening(&mut child, ns, port, "the silent server")?;
        Ok(Self { child })
    }
}

/// Waits until something listens on TCP `port` in `ns`, or `child` dies.
fn wait_listening(child: &mut Child, ns: &str, port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited early ({status})");
        }
        let listening = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "ss",
                "-Hltn",
                &format!("sport = :{port}"),
            ])
            .output()?;
        if !listening.stdout.is_empty() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not listen on port {port} within 10 s")
}

impl Drop for Silent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
