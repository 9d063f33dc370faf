//! Real SMTP servers inside a namespace, on 127.0.0.1: Debian's python3-aiosmtpd delivering
//! to a Maildir, plain or insisting on STARTTLS and AUTH (`tests/fixtures/smtp_secure.py`);
//! and a server that accepts connections and never says a word. With the reading of what they
//! received (the Maildir) and of who tried to log in (the AUTH log).

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _};

use crate::files::write_new;

/// Debian's interpreter, which is the one python3-aiosmtpd is installed for.
pub const PYTHON: &str = "/usr/bin/python3";

/// The server that requires STARTTLS, then AUTH: its one copy.
const SECURE_SCRIPT: &str = include_str!("../../fixtures/smtp_secure.py");

/// How long the secure server may take to make its CA and certificate and listen.
const SECURE_READY: Duration = Duration::from_secs(30);

pub struct Smtp {
    child: Child,
    maildir: PathBuf,
    /// Removed with the server: the plain server's Maildir, which it made itself.
    owned: Option<PathBuf>,
}

/// What a client needs to use the server [`Smtp::start_secure`] started.
#[derive(Debug, Clone)]
pub struct SecureSmtp {
    /// The throw-away CA (PEM) that signed the server's certificate for `localhost`: trust it.
    pub ca_pem: PathBuf,
    /// The one account the server accepts.
    pub user: String,
    pub password: String,
    /// `user` and `password` in xdprobe's credentials file format (the username line, then the
    /// password line), mode 600: ready for `--smtp-credentials`.
    pub credentials: PathBuf,
    /// One line per AUTH the server saw: `MECHANISM accepted|rejected`.
    pub auth_log: PathBuf,
    /// What the server printed.
    pub server_log: PathBuf,
}

impl SecureSmtp {
    /// The AUTH log so far (empty before the first AUTH).
    pub fn auth_log(&self) -> String {
        fs::read_to_string(&self.auth_log).unwrap_or_default()
    }

    /// What the server printed so far.
    pub fn server_log(&self) -> String {
        fs::read_to_string(&self.server_log).unwrap_or_default()
    }
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
        let mut smtp = Self {
            child,
            maildir: maildir.clone(),
            owned: Some(maildir),
        };
        wait_listening(
            &mut smtp.child,
            ns,
            port,
            "aiosmtpd (is python3-aiosmtpd installed?)",
        )?;
        Ok(smtp)
    }

    /// [`start_secure_as`](Self::start_secure_as) the user `xdprobe@example.org` with a
    /// password of the moment.
    pub fn start_secure(ns: &str, port: u16, dir: &Path) -> anyhow::Result<(Self, SecureSmtp)> {
        let nonce = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_nanos();
        let password = format!("pw {} {nonce:x}", std::process::id());
        Self::start_secure_as(ns, port, dir, "xdprobe@example.org", &password)
    }

    /// Starts a server on 127.0.0.1:`port` in namespace `ns` that refuses mail before STARTTLS
    /// and before AUTH, and accepts exactly `user` with `password` (see
    /// `tests/fixtures/smtp_secure.py`). Its certificate is for `localhost` (connect to
    /// `localhost:port`), signed by a CA made for the occasion with the openssl CLI. Returns
    /// once it accepts connections.
    ///
    /// Its files go in `dir`, which must exist and which the caller removes: the script, the CA
    /// (`ca.pem`), the server's key and certificate, `server.log`, `auth.log`, the credentials
    /// file `smtp-credentials` and the Maildir, which [`messages`](Self::messages) reads.
    pub fn start_secure_as(
        ns: &str,
        port: u16,
        dir: &Path,
        user: &str,
        password: &str,
    ) -> anyhow::Result<(Self, SecureSmtp)> {
        let script = dir.join("smtp_secure.py");
        fs::write(&script, SECURE_SCRIPT)
            .with_context(|| format!("writing {}", script.display()))?;
        let credentials = dir.join("smtp-credentials");
        write_new(&credentials, &format!("{user}\n{password}\n"), 0o600)?;
        let maildir = dir.join("Maildir");
        let _ = fs::remove_dir_all(&maildir);
        let server_log = dir.join("server.log");
        let log = File::create(&server_log)
            .with_context(|| format!("creating {}", server_log.display()))?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, PYTHON])
            .arg(&script)
            .arg(dir)
            .arg(port.to_string())
            .env("SMTP_USER", user)
            .env("SMTP_PASSWORD", password)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting the secure SMTP server")?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let smtp = Self {
            child,
            maildir,
            owned: None,
        };
        // It prints "ready" once it accepts connections.
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(SECURE_READY).unwrap_or_default();
        if line.trim() != "ready" {
            let log = fs::read_to_string(&server_log).unwrap_or_default();
            bail!(
                "the secure SMTP server did not start within {SECURE_READY:?} (it needs {PYTHON} \
                 with python3-aiosmtpd, and openssl); its log:\n{log}"
            );
        }
        let secure = SecureSmtp {
            ca_pem: dir.join("ca.pem"),
            user: user.to_string(),
            password: password.to_string(),
            credentials,
            auth_log: dir.join("auth.log"),
            server_log,
        };
        Ok((smtp, secure))
    }

    /// The messages delivered so far, as text with quoted-printable soft line breaks undone.
    pub fn messages(&self) -> Vec<String> {
        read_maildir(&self.maildir)
    }

    /// Waits up to `timeout` for at least `n` messages; returns those there are then.
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

    /// [`wait_messages`](Self::wait_messages) for a test whose sender runs on the same Tokio
    /// runtime: sleeps without blocking it.
    pub async fn wait_messages_async(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n || Instant::now() > deadline {
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.owned {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// The messages in Maildir `maildir`'s `new/`, quoted-printable soft line breaks undone.
pub fn read_maildir(maildir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(maildir.join("new")) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .map(|m| unfold(&m))
        .collect()
}

/// Undoes quoted-printable soft line breaks and `=3D`.
fn unfold(message: &str) -> String {
    message
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
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

impl Drop for Silent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maildir_messages_are_unfolded() {
        let dir = crate::TempDir::new("maildir");
        assert!(read_maildir(dir.dir()).is_empty());
        fs::create_dir_all(dir.path("new")).unwrap();
        dir.write("new/1", "Subject: a=\r\n long one\r\nx=3Dy\n", 0o644);
        assert_eq!(read_maildir(dir.dir()), ["Subject: a long one\r\nx=y\n"]);
    }

    mod privileged {
        use std::os::unix::fs::PermissionsExt as _;

        use super::super::*;
        use crate::{Lab, TempDir};

        /// Talks to the secure server the way xdprobe will, with Python's smtplib: the server
        /// must refuse mail before STARTTLS, refuse a wrong password, and deliver with the
        /// right one.
        #[test]
        fn the_secure_server_wants_starttls_and_the_one_password() {
            let lab = Lab::with_hosts(&[("mail", "192.0.2.25/24")]).expect("lab");
            let ns = lab.ns("mail");
            // Removes the directory also when the test fails (after the server, declared later).
            let dir = TempDir::new("secure");
            let (smtp, secure) =
                Smtp::start_secure(&ns, 2525, dir.dir()).expect("secure SMTP server");
            let mode = fs::metadata(&secure.credentials)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            let client = r#"
import smtplib, ssl, sys
ca, credentials = sys.argv[1], sys.argv[2]
user, password = open(credentials).read().split("\n")[:2]
message = "From: xdprobe@example.org\r\nTo: ops@example.org\r\nSubject: secure hello\r\n\r\nover TLS\r\n"
s = smtplib.SMTP("localhost", 2525)
try:
    s.sendmail("xdprobe@example.org", ["ops@example.org"], message)
    sys.exit("mail accepted before STARTTLS")
except smtplib.SMTPSenderRefused as e:
    print("before STARTTLS:", e.smtp_code)
s.starttls(context=ssl.create_default_context(cafile=ca))
s.ehlo()
try:
    s.login(user, password + "x")
    sys.exit("a wrong password was accepted")
except smtplib.SMTPAuthenticationError as e:
    print("wrong password:", e.smtp_code)
s.login(user, password)
s.sendmail("xdprobe@example.org", ["ops@example.org"], message)
s.quit()
"#;
            let out = lab
                .exec(
                    "mail",
                    &[
                        PYTHON,
                        "-c",
                        client,
                        secure.ca_pem.to_str().unwrap(),
                        secure.credentials.to_str().unwrap(),
                    ],
                )
                .expect("the smtplib client");
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(said.contains("before STARTTLS: 530"), "{said}");
            assert!(said.contains("wrong password: 535"), "{said}");
            let messages = smtp.wait_messages(1, Duration::from_secs(10));
            assert_eq!(messages.len(), 1, "{messages:?}");
            assert!(
                messages[0].contains("Subject: secure hello"),
                "{}",
                messages[0]
            );
            let auth = fs::read_to_string(dir.path("auth.log")).unwrap();
            // smtplib tries each mechanism the server offers with the wrong password.
            assert!(
                auth.contains("rejected")
                    && auth.ends_with(" accepted\n")
                    && auth.matches("accepted").count() == 1,
                "{auth}"
            );
            assert_eq!(secure.auth_log(), auth);
        }
    }
}
