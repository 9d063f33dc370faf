//! A real SMTP server for the tests: Debian's python3-aiosmtpd with its Maildir handler,
//! listening on loopback inside a lab namespace; plain, or insisting on STARTTLS and AUTH.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _};

/// Debian's interpreter, which is the one python3-aiosmtpd is installed for.
const PYTHON: &str = "/usr/bin/python3";

/// The server that requires STARTTLS, then AUTH: one copy, also used by the mail tests in
/// probe-user/src/mail.rs.
const SECURE_SCRIPT: &str = include_str!("../fixtures/smtp_secure.py");

pub struct Smtp {
    child: Child,
    maildir: PathBuf,
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

    /// Starts a server on 127.0.0.1:`port` in namespace `ns` that refuses mail before STARTTLS
    /// and before AUTH, and accepts exactly one user and password (see
    /// `tests/fixtures/smtp_secure.py`). Its certificate is for `localhost` (connect to
    /// `localhost:port`), signed by a CA made for the occasion with the openssl CLI.
    ///
    /// Its files go in `dir`, which must exist and which the caller removes: the script, the CA
    /// (`ca.pem`), the server's key and certificate, `server.log`, `auth.log` (one line per AUTH:
    /// `PLAIN accepted`, `LOGIN rejected`...), the credentials file and the Maildir, which
    /// [`messages`](Self::messages) reads.
    pub fn start_secure(ns: &str, port: u16, dir: &Path) -> anyhow::Result<(Self, SecureSmtp)> {
        let script = dir.join("smtp_secure.py");
        fs::write(&script, SECURE_SCRIPT)
            .with_context(|| format!("writing {}", script.display()))?;
        let user = "xdprobe@example.org".to_string();
        let nonce = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_nanos();
        let password = format!("pw {} {nonce:x}", std::process::id());
        let credentials = dir.join("smtp-credentials");
        write_private(&credentials, &format!("{user}\n{password}\n"))?;
        let maildir = dir.join("Maildir");
        let _ = fs::remove_dir_all(&maildir);
        let log_path = dir.join("server.log");
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns, PYTHON])
            .arg(&script)
            .arg(dir)
            .arg(port.to_string())
            .env("SMTP_USER", &user)
            .env("SMTP_PASSWORD", &password)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the secure SMTP server")?;
        let mut smtp = Self { child, maildir };
        wait_listening(
            &mut smtp.child,
            ns,
            port,
            "the secure SMTP server (needs python3-aiosmtpd and openssl)",
        )
        .map_err(|e| {
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            e.context(format!("its log:\n{log}"))
        })?;
        let secure = SecureSmtp {
            ca_pem: dir.join("ca.pem"),
            user,
            password,
            credentials,
        };
        Ok((smtp, secure))
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

/// Writes `text` to a new file at `path` that only its owner may read (mode 600).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let _ = fs::remove_file(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Lab;

    /// Talks to the secure server the way xdprobe will, with Python's smtplib: the server must
    /// refuse mail before STARTTLS, refuse a wrong password, and deliver with the right one.
    #[test]
    fn the_secure_server_wants_starttls_and_the_one_password() {
        crate::require_root();
        let lab = Lab::with_hosts(&[("mail", "192.0.2.25/24")]).expect("lab");
        let ns = lab.ns("mail");
        let dir = std::env::temp_dir().join(format!("xdprobe-secure-{ns}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        /// Removes the directory also when the test fails (after the server, declared later).
        struct Remove<'a>(&'a Path);
        impl Drop for Remove<'_> {
            fn drop(&mut self) {
                let _ = fs::remove_dir_all(self.0);
            }
        }
        let _remove = Remove(&dir);
        let (smtp, secure) = Smtp::start_secure(&ns, 2525, &dir).expect("secure SMTP server");
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
        let auth = fs::read_to_string(dir.join("auth.log")).unwrap();
        // smtplib tries each mechanism the server offers with the wrong password.
        assert!(
            auth.contains("rejected")
                && auth.ends_with(" accepted\n")
                && auth.matches("accepted").count() == 1,
            "{auth}"
        );
    }
}
