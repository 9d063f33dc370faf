//! Notification e-mail: composed from facts (pure), sent by one task with retries and backoff,
//! so that a slow or dead SMTP server never holds up anything else.
//!
//! The parts, each small and tested on its own:
//! - the rate limit: [`RateLimit`] (`N/DURATION`) and the token [`Bucket`] behind it; notices
//!   that find the bucket empty are logged and counted, and the next e-mail says how many;
//! - credentials: [`parse_credentials`] (the file format) and [`load_credentials`];
//! - the transport: [`transport`], plain SMTP or STARTTLS (required, with an extra CA if
//!   given), authenticated when credentials are given;
//! - the send loop: [`run`] takes notices off the queue, [`deliver`] retries with backoff.

use std::{
    fs::File,
    io::Read as _,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};
use lettre::{
    message::header::ContentType,
    transport::smtp::{
        authentication::Credentials,
        client::{Certificate, Tls, TlsParameters},
    },
    AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    act::backoff::Backoff,
    config::mail::{MailSettings, RateLimit},
    model::notice::Notice,
};

/// Queued notices beyond this are dropped (and logged): the queue must never block a sender.
const QUEUE: usize = 64;
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A token bucket: starts full with `burst` tokens, refills continuously at `burst` per `per`,
/// never holds more than `burst`. Pure: the time is always an argument.
///
/// Exact integer arithmetic: `credit` is tokens × `per` in nanoseconds, so one token is
/// `per_ns` of credit and each elapsed nanosecond adds `burst`.
#[derive(Clone, Debug)]
pub struct Bucket {
    burst: u128,
    per_ns: u128,
    credit: u128,
    last: Instant,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        let burst = u128::from(limit.burst.max(1));
        let per_ns = limit.per.as_nanos().max(1);
        Self {
            burst,
            per_ns,
            credit: burst * per_ns,
            last: now,
        }
    }

    /// Takes a token if there is one at `now`. Time never runs backwards for the bucket: an
    /// earlier `now` than the last one adds nothing.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(elapsed) = now.checked_duration_since(self.last) {
            let refill = elapsed.as_nanos().saturating_mul(self.burst);
            self.credit = self
                .credit
                .saturating_add(refill)
                .min(self.burst * self.per_ns);
            self.last = now;
        }
        if self.credit >= self.per_ns {
            self.credit -= self.per_ns;
            true
        } else {
            false
        }
    }
}

/// The rate limit as the mail task applies it: the bucket, and the notices it held back since
/// the last e-mail that went out.
#[derive(Debug)]
struct Limiter {
    bucket: Bucket,
    suppressed: u64,
}

impl Limiter {
    fn new(limit: RateLimit, now: Instant) -> Self {
        Self {
            bucket: Bucket::new(limit, now),
            suppressed: 0,
        }
    }

    /// The notice to e-mail (told how many were suppressed before it), or `None` if the bucket
    /// is empty: then it is counted and logged instead.
    fn admit(&mut self, notice: &Notice, now: Instant) -> Option<Notice> {
        if !self.bucket.take(now) {
            self.suppressed += 1;
            warn!(
                subject = %notice.subject,
                suppressed = self.suppressed,
                "notification rate limit reached: notice not e-mailed"
            );
            return None;
        }
        let body = match suppression_line(self.suppressed) {
            Some(line) => format!("{line}\n\n{}", notice.body),
            None => notice.body.clone(),
        };
        Some(Notice {
            subject: notice.subject.clone(),
            body,
        })
    }

    /// An e-mail went out: it told the reader about the suppressed notices.
    fn sent(&mut self) {
        self.suppressed = 0;
    }
}

/// The line that opens the first e-mail after `n` suppressed notices.
fn suppression_line(n: u64) -> Option<String> {
    match n {
        0 => None,
        1 => Some(
            "(1 notice was suppressed by the rate limit since the last e-mail; see the log.)"
                .into(),
        ),
        n => Some(format!(
            "({n} notices were suppressed by the rate limit since the last e-mail; see the log.)"
        )),
    }
}

/// Reads the SMTP username and password from `text`, the contents of a credentials file.
///
/// The format is two lines, the username, then the password:
///
/// ```text
/// xdprobe@example.org
/// correct horse battery staple
/// ```
///
/// Line ends (`\n` or `\r\n`) belong to neither. The username is trimmed of surrounding
/// whitespace; the password is taken exactly as written, spaces included, since a password
/// may begin or end with one (but it may not be empty or blank). Blank lines after the password
/// are ignored; any other further line is an error. One `user:password` line is not this
/// format (it could not hold a username with a colon) and is reported as a missing password.
/// Errors never quote the password.
pub fn parse_credentials(text: &str) -> Result<(String, String), String> {
    const FORMAT: &str = "expected two lines: the username, then the password";
    if text.trim().is_empty() {
        return Err(format!("the file is empty; {FORMAT}"));
    }
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let user = lines.next().unwrap_or_default().trim();
    if user.is_empty() {
        return Err(format!("the first line (the username) is empty; {FORMAT}"));
    }
    let password = lines.next().unwrap_or_default();
    if password.trim().is_empty() {
        let hint = if user.contains(':') {
            " (`user:password` on one line is not supported)"
        } else {
            ""
        };
        return Err(format!("no password on the second line; {FORMAT}{hint}"));
    }
    if lines.any(|l| !l.trim().is_empty()) {
        return Err(format!("more than two lines; {FORMAT}"));
    }
    Ok((user.to_string(), password.to_string()))
}

/// Loads the SMTP credentials from the file at `path` (format: [`parse_credentials`]); errors
/// name the file. Warns if the file is open to its group or to others.
pub fn load_credentials(path: &Path) -> anyhow::Result<Credentials> {
    let mut file = File::open(path)
        .with_context(|| format!("opening SMTP credentials file {}", path.display()))?;
    let mode = file
        .metadata()
        .with_context(|| format!("SMTP credentials file {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        warn!(
            file = %path.display(),
            mode = %format_args!("{:o}", mode & 0o777),
            "SMTP credentials file is accessible by group or others; `chmod 600` it"
        );
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .with_context(|| format!("reading SMTP credentials file {}", path.display()))?;
    let (user, password) = parse_credentials(&text)
        .map_err(|e| anyhow!("SMTP credentials file {}: {e}", path.display()))?;
    Ok(Credentials::new(user, password))
}

/// The SMTP transport `settings` ask for: plain, or STARTTLS (required: no fallback to plain)
/// verified against the built-in Mozilla roots plus the `ca` file if given; authenticated
/// when `credentials` is given. Credentials without STARTTLS are refused, even to loopback:
/// they must not cross a network in clear, and the rule is simpler without exceptions.
/// Reads the CA and credentials files now, so that their errors show at start-up.
fn transport(settings: &MailSettings) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let mut builder =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.smtp_host.as_str())
            .port(settings.smtp_port)
            .timeout(Some(SMTP_TIMEOUT));
    if settings.starttls {
        let tls = tls_parameters(&settings.smtp_host, settings.ca.as_deref())?;
        builder = builder.tls(Tls::Required(tls));
    } else if let Some(ca) = &settings.ca {
        bail!(
            "CA certificate {} given, but STARTTLS is off: it is only used with STARTTLS",
            ca.display()
        );
    }
    if let Some(path) = &settings.credentials {
        if !settings.starttls {
            bail!(
                "SMTP credentials file {} given without STARTTLS: credentials are only sent \
                 over STARTTLS, never in clear",
                path.display()
            );
        }
        builder = builder.credentials(load_credentials(path)?);
    }
    Ok(builder.build())
}

/// TLS for `host` (the name its certificate must carry), trusting `ca` besides the usual roots.
fn tls_parameters(host: &str, ca: Option<&Path>) -> anyhow::Result<TlsParameters> {
    let mut builder = TlsParameters::builder(host.to_string());
    if let Some(path) = ca {
        builder = builder.add_root_certificate(load_ca(path)?);
    }
    builder.build().with_context(|| match ca {
        Some(path) => format!("setting up TLS with CA certificate {}", path.display()),
        None => "setting up TLS".to_string(),
    })
}

/// The PEM CA certificate at `path`; an error naming the file if it holds none.
fn load_ca(path: &Path) -> anyhow::Result<Certificate> {
    let mut pem = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut pem))
        .with_context(|| format!("reading CA certificate {}", path.display()))?;
    let marker = b"-----BEGIN CERTIFICATE-----";
    if !pem.windows(marker.len()).any(|w| w == marker) {
        bail!(
            "CA certificate {}: no PEM certificate in it (no -----BEGIN CERTIFICATE----- line)",
            path.display()
        );
    }
    Certificate::from_pem(&pem).with_context(|| {
        format!(
            "CA certificate {}: not a valid PEM certificate",
            path.display()
        )
    })
}

/// How a notice that could not be sent is retried: `attempts` in all, waiting as `backoff`
/// says between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Retry {
    attempts: u32,
    backoff: Backoff,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 6,
            backoff: Backoff::SERVER,
        }
    }
}

/// The sending side, cheap to clone; every clone follows [`Notifier::reconfigure`]. Without
/// mail settings, notices are only logged.
#[derive(Clone)]
pub struct Notifier {
    tx: Arc<RwLock<Option<mpsc::Sender<Notice>>>>,
}

impl Notifier {
    /// Starts the mail task (if mail is configured); it stops when `shutdown` fires. Must be
    /// called within a Tokio runtime.
    ///
    /// Fails, naming the file, if the CA certificate or the credentials file cannot be read or
    /// used, or if credentials are given without STARTTLS: configuration errors, found before
    /// anything is sent. Once started, nothing about sending ever reaches the caller again.
    pub fn start(
        settings: Option<MailSettings>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        Self::start_with(settings, Retry::default(), shutdown)
    }

    fn start_with(
        settings: Option<MailSettings>,
        retry: Retry,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let tx = spawn(settings, retry, shutdown)?;
        Ok(Self {
            tx: Arc::new(RwLock::new(tx)),
        })
    }

    /// Sends notices with new settings from now on (a reload): a new mail task takes over,
    /// and the old one delivers what it had queued, then ends. On error (the same as
    /// [`Notifier::start`]'s) nothing changed.
    pub fn reconfigure(
        &self,
        settings: Option<MailSettings>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let tx = spawn(settings, Retry::default(), shutdown)?;
        *self.tx.write().unwrap_or_else(|e| e.into_inner()) = tx;
        Ok(())
    }

    /// Queues a notice without waiting.
    pub fn send(&self, notice: Notice) {
        let tx = self.tx.read().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = tx.as_ref() else { return };
        if let Err(e) = tx.try_send(notice) {
            warn!(error = %e, "notification queue full or closed; notice dropped");
        }
    }
}

/// Starts a mail task for `settings` (none without them); its queue's sending side.
fn spawn(
    settings: Option<MailSettings>,
    retry: Retry,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<mpsc::Sender<Notice>>> {
    let Some(settings) = settings else {
        return Ok(None);
    };
    let transport = transport(&settings)?;
    let limiter = Limiter::new(settings.limit, Instant::now());
    let (tx, rx) = mpsc::channel(QUEUE);
    let mailer = Mailer {
        settings,
        transport,
        retry,
        limiter,
    };
    tokio::spawn(run(mailer, rx, shutdown));
    Ok(Some(tx))
}

/// Everything the mail task owns.
struct Mailer {
    settings: MailSettings,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    retry: Retry,
    limiter: Limiter,
}

/// The mail task: one notice at a time, through the rate limit, then [`deliver`].
async fn run(mut mailer: Mailer, mut rx: mpsc::Receiver<Notice>, shutdown: CancellationToken) {
    loop {
        let notice = tokio::select! {
            _ = shutdown.cancelled() => return,
            notice = rx.recv() => match notice { Some(n) => n, None => return },
        };
        let Some(notice) = mailer.limiter.admit(&notice, Instant::now()) else {
            continue;
        };
        let message = match build(&mailer.settings, &notice) {
            Ok(m) => m,
            Err(error) => {
                warn!(%error, subject = %notice.subject, "cannot build notification e-mail");
                continue;
            }
        };
        let to = &mailer.settings.to;
        let delivery = deliver(
            &mailer.transport,
            &message,
            &notice.subject,
            mailer.retry,
            &shutdown,
        )
        .await;
        match delivery {
            Delivery::Sent { attempt } => {
                info!(%to, subject = %notice.subject, attempt, "notification sent");
                mailer.limiter.sent();
            }
            Delivery::GaveUp(error) => {
                warn!(
                    %error,
                    attempts = mailer.retry.attempts,
                    subject = %notice.subject,
                    "giving up on notification"
                );
            }
            Delivery::Cancelled => return,
        }
    }
}

/// How [`deliver`] ended.
enum Delivery {
    Sent { attempt: u32 },
    GaveUp(lettre::transport::smtp::Error),
    Cancelled,
}

/// Sends `message`, retrying failures as `retry` says; each failure but the last is logged
/// here, the last is returned. Stops waiting at once when `shutdown` fires.
async fn deliver(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    message: &Message,
    subject: &str,
    retry: Retry,
    shutdown: &CancellationToken,
) -> Delivery {
    let mut attempt = 1;
    loop {
        match transport.send(message.clone()).await {
            Ok(_) => return Delivery::Sent { attempt },
            Err(error) if attempt >= retry.attempts => return Delivery::GaveUp(error),
            Err(error) => {
                let backoff = retry.backoff.delay(attempt);
                warn!(%error, attempt, retry_in = ?backoff, %subject, "sending notification failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return Delivery::Cancelled,
                    _ = tokio::time::sleep(backoff) => {}
                }
                attempt += 1;
            }
        }
    }
}

fn build(settings: &MailSettings, notice: &Notice) -> Result<Message, lettre::error::Error> {
    Message::builder()
        .from(settings.from.clone())
        .to(settings.to.clone())
        .subject(notice.subject.clone())
        .header(ContentType::TEXT_PLAIN)
        .body(notice.body.clone())
}

#[cfg(test)]
mod tests {
    use std::{
        fs, io,
        path::PathBuf,
        sync::{Arc, Mutex},
    };

    use xdprobe_harness::TempDir;

    use super::*;

    fn settings() -> MailSettings {
        MailSettings {
            to: "ops@example.org".parse().unwrap(),
            from: "xdprobe@example.org".parse().unwrap(),
            smtp_host: "127.0.0.1".into(),
            smtp_port: 25,
            starttls: false,
            ca: None,
            credentials: None,
            limit: RateLimit::default(),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn message_carries_subject_body_and_addresses() {
        let notice = Notice {
            subject: "xdprobe: 192.0.2.1 is DOWN".into(),
            body: "details\n".into(),
        };
        let text = String::from_utf8(build(&settings(), &notice).unwrap().formatted()).unwrap();
        assert!(text.contains("To: ops@example.org"), "{text}");
        assert!(text.contains("From: xdprobe@example.org"), "{text}");
        assert!(
            text.contains("Subject: xdprobe: 192.0.2.1 is DOWN"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("details"), "{text}");
    }

    /// Takes tokens at `now` until there are none; how many there were.
    fn drain(bucket: &mut Bucket, now: Instant) -> u32 {
        let mut n = 0;
        while bucket.take(now) {
            n += 1;
            assert!(n <= 1000, "the bucket never runs dry");
        }
        n
    }

    #[test]
    fn the_bucket_allows_a_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new("5/10m".parse().unwrap(), t0);
        assert_eq!(drain(&mut bucket, t0), 5);
        // 5 per 10 minutes: one token every 120 s.
        assert!(!bucket.take(t0 + Duration::from_millis(119_999)));
        assert!(bucket.take(t0 + secs(120)));
        assert!(!bucket.take(t0 + secs(120)));
        // Partial credit is kept: half a token, then another half.
        assert!(!bucket.take(t0 + secs(180)));
        assert!(bucket.take(t0 + secs(240)));
        // Ten minutes of silence bring back the whole burst.
        assert_eq!(drain(&mut bucket, t0 + secs(840)), 5);
    }

    #[test]
    fn the_bucket_never_holds_more_than_the_burst() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new("3/1h".parse().unwrap(), t0);
        assert_eq!(drain(&mut bucket, t0 + secs(100 * 3600)), 3);
        assert_eq!(drain(&mut bucket, t0 + secs(100 * 3600 + 1200)), 1);
    }

    #[test]
    fn the_bucket_ignores_time_running_backwards() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new("1/1m".parse().unwrap(), t0 + secs(60));
        assert!(bucket.take(t0 + secs(60)));
        assert!(!bucket.take(t0));
        assert!(!bucket.take(t0 + secs(119)));
        assert!(bucket.take(t0 + secs(120)));
    }

    #[test]
    fn the_first_mail_after_suppressed_notices_says_how_many() {
        let notice = |n: u32| Notice {
            subject: format!("notice {n}"),
            body: format!("body {n}\n"),
        };
        let logs = Logs::default();
        let t0 = Instant::now();
        let mut limiter = Limiter::new("1/1m".parse().unwrap(), t0);
        logs.capture(|| {
            assert_eq!(limiter.admit(&notice(1), t0), Some(notice(1)));
            limiter.sent();
            assert_eq!(limiter.admit(&notice(2), t0 + secs(1)), None);
            assert_eq!(limiter.admit(&notice(3), t0 + secs(2)), None);
        });
        let log = logs.text();
        for n in [2, 3] {
            assert!(
                log.contains(&format!(
                    "rate limit reached: notice not e-mailed subject=notice {n}"
                )),
                "{log}"
            );
        }
        let line =
            "(2 notices were suppressed by the rate limit since the last e-mail; see the log.)";
        let fourth = limiter.admit(&notice(4), t0 + secs(60)).unwrap();
        assert_eq!(fourth.subject, "notice 4");
        assert_eq!(fourth.body, format!("{line}\n\nbody 4\n"));
        // Until an e-mail goes out (say that one failed), the count stands.
        let fifth = limiter.admit(&notice(5), t0 + secs(120)).unwrap();
        assert!(fifth.body.starts_with(line), "{}", fifth.body);
        limiter.sent();
        assert_eq!(limiter.admit(&notice(6), t0 + secs(180)), Some(notice(6)));
    }

    #[test]
    fn the_suppression_line_counts_in_words() {
        assert_eq!(suppression_line(0), None);
        assert_eq!(
            suppression_line(1).unwrap(),
            "(1 notice was suppressed by the rate limit since the last e-mail; see the log.)"
        );
        assert_eq!(
            suppression_line(17).unwrap(),
            "(17 notices were suppressed by the rate limit since the last e-mail; see the log.)"
        );
    }

    // --- credentials ---

    #[test]
    fn credentials_are_a_username_line_and_a_password_line() {
        let ok = |user: &str, password: &str| Ok((user.to_string(), password.to_string()));
        assert_eq!(parse_credentials("alice\ns3cret\n"), ok("alice", "s3cret"));
        assert_eq!(parse_credentials("alice\ns3cret"), ok("alice", "s3cret"));
        assert_eq!(
            parse_credentials("alice\r\ns3cret\r\n"),
            ok("alice", "s3cret")
        );
        assert_eq!(
            parse_credentials("alice\ns3cret\n\n \n"),
            ok("alice", "s3cret")
        );
        // The username is trimmed, the password is exactly what is on its line.
        assert_eq!(
            parse_credentials("  alice@example.org \t\n pass word \n"),
            ok("alice@example.org", " pass word ")
        );
        assert_eq!(parse_credentials("a:b\nc:d\n"), ok("a:b", "c:d"));
    }

    #[test]
    fn bad_credentials_are_explained_without_showing_the_password() {
        for (text, needle) in [
            ("", "the file is empty"),
            ("\n\n", "the file is empty"),
            (" \t\r\n", "the file is empty"),
            ("alice", "no password on the second line"),
            ("alice\n", "no password on the second line"),
            ("alice\n  \t\n", "no password on the second line"),
            (
                "alice:secret\n",
                "`user:password` on one line is not supported",
            ),
            ("\nsecret\n", "the first line (the username) is empty"),
            ("alice\nsecret\nsecret2\n", "more than two lines"),
        ] {
            let err = parse_credentials(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(
                err.contains("expected two lines: the username, then the password"),
                "{err}"
            );
            assert!(!err.contains("secret"), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_credentials_file_is_loaded_and_a_loose_mode_is_warned_about() {
        let dir = TempDir::new("mail-creds");
        let path = dir.write("credentials", "alice\ns3cret\n", 0o600);
        let logs = Logs::default();
        let loaded = logs.capture(|| load_credentials(&path).unwrap());
        assert_eq!(loaded, Credentials::new("alice".into(), "s3cret".into()));
        assert_eq!(logs.text(), "", "no warning for mode 600");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        logs.capture(|| load_credentials(&path).unwrap());
        let log = logs.text();
        assert!(
            log.contains("WARN")
                && log.contains("accessible by group or others")
                && log.contains("mode=640"),
            "{log}"
        );
        assert!(log.contains(&path.display().to_string()), "{log}");
        assert!(!log.contains("s3cret"), "{log}");
    }

    #[test]
    fn credential_file_errors_name_the_file() {
        let dir = TempDir::new("mail-creds-bad");
        let missing = dir.path("missing");
        let err = format!("{:#}", load_credentials(&missing).unwrap_err());
        assert!(err.contains(&missing.display().to_string()), "{err}");
        let one_line = dir.write("one-line", "alice:s3cret\n", 0o600);
        let err = format!("{:#}", load_credentials(&one_line).unwrap_err());
        assert!(
            err.contains(&one_line.display().to_string()) && err.contains("no password"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
    }

    // --- the transport ---

    #[test]
    fn unusable_tls_and_credential_settings_are_errors_naming_the_file() {
        let dir = TempDir::new("mail-transport");
        let missing = dir.path("missing.pem");
        let not_pem = dir.write("not.pem", "hello\n", 0o644);
        let bad_base64 = dir.write(
            "bad-base64.pem",
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            0o644,
        );
        let not_a_cert = dir.write(
            "not-a-cert.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
            0o644,
        );
        let credentials = dir.write("credentials", "alice\ns3cret\n", 0o600);
        let bad_credentials = dir.write("bad-credentials", "alice\n", 0o600);
        let tls = |ca: Option<&PathBuf>, credentials: Option<&PathBuf>| MailSettings {
            starttls: true,
            ca: ca.cloned(),
            credentials: credentials.cloned(),
            ..settings()
        };
        let plain = |ca: Option<&PathBuf>, credentials: Option<&PathBuf>| MailSettings {
            starttls: false,
            ..tls(ca, credentials)
        };
        let cases = [
            (
                tls(Some(&missing), None),
                &missing,
                "reading CA certificate",
            ),
            (tls(Some(&not_pem), None), &not_pem, "no PEM certificate"),
            (tls(Some(&bad_base64), None), &bad_base64, "not a valid PEM"),
            (tls(Some(&not_a_cert), None), &not_a_cert, "setting up TLS"),
            (tls(None, Some(&missing)), &missing, "credentials"),
            (
                tls(None, Some(&bad_credentials)),
                &bad_credentials,
                "no password",
            ),
            (
                plain(None, Some(&credentials)),
                &credentials,
                "without STARTTLS",
            ),
            (plain(Some(&not_pem), None), &not_pem, "STARTTLS is off"),
        ];
        for (settings, file, needle) in cases {
            let err = match transport(&settings) {
                Ok(_) => panic!("{settings:?} was accepted"),
                Err(e) => format!("{e:#}"),
            };
            assert!(
                err.contains(&file.display().to_string()) && err.contains(needle),
                "{settings:?}: {err}"
            );
        }
        assert!(transport(&settings()).is_ok());
        assert!(transport(&tls(None, None)).is_ok());
        assert!(transport(&tls(None, Some(&credentials))).is_ok());
    }

    #[tokio::test]
    async fn start_reports_configuration_errors() {
        let shutdown = CancellationToken::new();
        assert!(Notifier::start(None, shutdown.clone()).is_ok());
        assert!(Notifier::start(Some(settings()), shutdown.clone()).is_ok());
        let ca = PathBuf::from("/nonexistent/xdprobe-ca.pem");
        let err = Notifier::start(
            Some(MailSettings {
                starttls: true,
                ca: Some(ca),
                ..settings()
            }),
            shutdown.clone(),
        )
        .err()
        .expect("a missing CA file is an error");
        assert!(
            format!("{err:#}").contains("/nonexistent/xdprobe-ca.pem"),
            "{err:#}"
        );
        shutdown.cancel();
    }

    // --- helpers ---

    /// Log lines captured from the tracing of one thread.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }

        /// Runs `f` with this thread's tracing written here.
        fn capture<T>(&self, f: impl FnOnce() -> T) -> T {
            let logs = self.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || logs.clone())
                .finish();
            tracing::subscriber::with_default(subscriber, f)
        }
    }

    /// Against a real SMTP server that requires STARTTLS and AUTH, in a network namespace of
    /// its own: root only.
    mod privileged {
        use std::{
            future::Future,
            sync::atomic::{AtomicU32, Ordering},
        };

        use xdprobe_harness::{enter, require_root, Namespaces, SecureSmtp, Smtp, TempDir};

        use super::*;

        const PORT: u16 = 2525;
        const USER: &str = "xdprobe@example.org";
        const PASSWORD: &str = "correct horse battery staple";

        static NEXT: AtomicU32 = AtomicU32::new(0);

        /// A network namespace of our own with only loopback (127.0.0.1) up, the secure SMTP
        /// server (tests/fixtures/smtp_secure.py) listening in it, and a scratch directory for
        /// the server's files (CA, Maildir, logs) and ours. Everything is undone on drop, also
        /// when a test fails: the server first, then the namespace, then the directory.
        struct SecureLab {
            smtp: Smtp,
            secure: SecureSmtp,
            ns: String,
            _namespaces: Namespaces,
            dir: TempDir,
        }

        impl SecureLab {
            fn start() -> Self {
                require_root();
                let dir = TempDir::new("mail-lab");
                let prefix = format!(
                    "xmail{}-{}-",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::SeqCst)
                );
                let mut namespaces = Namespaces::new(&prefix).unwrap_or_else(|e| panic!("{e:#}"));
                let ns = namespaces.add("smtp").unwrap_or_else(|e| panic!("{e:#}"));
                let (smtp, secure) = Smtp::start_secure_as(&ns, PORT, dir.dir(), USER, PASSWORD)
                    .unwrap_or_else(|e| panic!("{e:#}"));
                Self {
                    smtp,
                    secure,
                    ns,
                    _namespaces: namespaces,
                    dir,
                }
            }

            fn server_log(&self) -> String {
                self.secure.server_log()
            }

            /// One line per AUTH the server saw: `MECHANISM accepted|rejected`.
            fn auth_log(&self) -> String {
                self.secure.auth_log()
            }

            /// Mail settings for the server: STARTTLS to `localhost`, its CA, and a credentials
            /// file with `password`.
            fn settings(&self, password: &str) -> MailSettings {
                let credentials = self.dir.write(
                    &format!("credentials-{}", NEXT.fetch_add(1, Ordering::SeqCst)),
                    &format!("{USER}\n{password}\n"),
                    0o600,
                );
                MailSettings {
                    smtp_host: "localhost".into(),
                    smtp_port: PORT,
                    starttls: true,
                    ca: Some(self.secure.ca_pem.clone()),
                    credentials: Some(credentials),
                    ..settings()
                }
            }

            /// The messages delivered so far, with quoted-printable soft line breaks undone.
            fn messages(&self) -> Vec<String> {
                self.smtp.messages()
            }

            async fn wait_messages(&self, n: usize, timeout: Duration) -> Vec<String> {
                self.smtp.wait_messages_async(n, timeout).await
            }

            /// Runs the future `f` makes on a thread that has entered the namespace, in a
            /// current-thread Tokio runtime, with the thread's tracing captured in `logs`.
            fn inside<F, T>(&self, logs: &Logs, f: impl FnOnce() -> F + Send) -> T
            where
                F: Future<Output = T>,
                T: Send,
            {
                enter::run_in(&self.ns, || logs.capture(|| enter::block_on(f())))
            }
        }

        /// Waits up to `timeout` for `needle` in `logs`; whether it came.
        async fn wait_log(logs: &Logs, needle: &str, timeout: Duration) -> bool {
            let deadline = tokio::time::Instant::now() + timeout;
            while !logs.text().contains(needle) {
                if tokio::time::Instant::now() > deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            true
        }

        #[test]
        fn a_notice_arrives_over_starttls_with_auth() {
            let lab = SecureLab::start();
            let settings = lab.settings(PASSWORD);
            let notice = Notice {
                subject: "xdprobe: 192.0.2.1 is DOWN".into(),
                body: "192.0.2.1 missed 2 windows; the VIP is ours now.\n".into(),
            };
            let logs = Logs::default();
            let messages = lab.inside(&logs, || async {
                let shutdown = CancellationToken::new();
                let notifier = Notifier::start(Some(settings), shutdown.clone()).expect("starting");
                notifier.send(notice.clone());
                let messages = lab.wait_messages(1, secs(20)).await;
                // The server has the message before the client has its answer and logs it.
                wait_log(&logs, "notification sent", secs(20)).await;
                shutdown.cancel();
                messages
            });
            let log = logs.text();
            assert_eq!(
                messages.len(),
                1,
                "expected one e-mail\nour log:\n{log}\nserver log:\n{}",
                lab.server_log()
            );
            let m = &messages[0];
            assert!(m.contains("Subject: xdprobe: 192.0.2.1 is DOWN"), "{m}");
            assert!(
                m.contains("192.0.2.1 missed 2 windows; the VIP is ours now."),
                "{m}"
            );
            assert!(m.contains("To: ops@example.org"), "{m}");
            assert_eq!(lab.auth_log(), "PLAIN accepted\n");
            assert!(
                log.contains("notification sent") && log.contains("attempt=1"),
                "{log}"
            );
        }

        #[test]
        fn a_reconfigured_notifier_mails_with_the_new_settings_and_a_bad_one_changes_nothing() {
            let lab = SecureLab::start();
            let good = lab.settings(PASSWORD);
            let bad = MailSettings {
                credentials: Some("/nonexistent/xdprobe-credentials".into()),
                ..good.clone()
            };
            let notice = |n: u32| Notice {
                subject: format!("xdprobe: notice {n}"),
                body: format!("body of notice {n}\n"),
            };
            let logs = Logs::default();
            let (messages, refused) = lab.inside(&logs, || async {
                let shutdown = CancellationToken::new();
                // Started without mail, as a daemon whose config had none.
                let notifier = Notifier::start(None, shutdown.clone()).expect("starting");
                let clone = notifier.clone();
                notifier.send(notice(1));
                notifier
                    .reconfigure(Some(good), shutdown.clone())
                    .expect("reconfiguring");
                clone.send(notice(2));
                let refused = notifier.reconfigure(Some(bad), shutdown.clone()).is_err();
                clone.send(notice(3));
                let messages = lab.wait_messages(2, secs(20)).await;
                shutdown.cancel();
                (messages, refused)
            });
            assert!(refused, "a missing credentials file was accepted");
            let subjects: Vec<bool> = (1..=3)
                .map(|n| {
                    messages.iter().any(|m| {
                        m.contains(&format!("Subject: xdprobe: notice {n}\r\n"))
                            || m.contains(&format!("Subject: xdprobe: notice {n}\n"))
                    })
                })
                .collect();
            assert_eq!(
                subjects,
                [false, true, true],
                "{messages:?}\n{}",
                logs.text()
            );
        }

        #[test]
        fn a_wrong_password_is_retried_and_logged_and_nothing_arrives() {
            let lab = SecureLab::start();
            let settings = lab.settings("wrong password");
            let retry = Retry {
                attempts: 2,
                backoff: Backoff {
                    first: Duration::from_millis(100),
                    max: Duration::from_secs(30),
                },
            };
            let notice = Notice {
                subject: "xdprobe: 192.0.2.1 is DOWN".into(),
                body: "details\n".into(),
            };
            let logs = Logs::default();
            let gave_up = lab.inside(&logs, || async {
                let shutdown = CancellationToken::new();
                let notifier = Notifier::start_with(Some(settings), retry, shutdown.clone())
                    .expect("starting");
                notifier.send(notice);
                let gave_up = wait_log(&logs, "giving up on notification", secs(30)).await;
                shutdown.cancel();
                gave_up
            });
            let log = logs.text();
            assert!(
                gave_up,
                "the notifier did not give up within 30 s; log:\n{log}"
            );
            assert!(
                log.contains("sending notification failed") && log.contains("attempt=1"),
                "{log}"
            );
            assert!(log.contains("permanent error (535)"), "{log}");
            assert!(log.contains("attempts=2"), "{log}");
            assert_eq!(
                lab.auth_log(),
                "PLAIN rejected\nPLAIN rejected\n",
                "one AUTH per attempt"
            );
            assert!(lab.messages().is_empty(), "{:?}", lab.messages());
            assert!(
                !log.contains("wrong password") && !log.contains(PASSWORD),
                "the log must not show passwords: {log}"
            );
        }

        #[test]
        fn notices_over_the_limit_are_counted_in_the_next_mail() {
            let lab = SecureLab::start();
            let settings = MailSettings {
                limit: "1/5s".parse().unwrap(),
                ..lab.settings(PASSWORD)
            };
            let notice = |n: u32| Notice {
                subject: format!("xdprobe: notice {n}"),
                body: format!("body of notice {n}\n"),
            };
            let logs = Logs::default();
            let messages = lab.inside(&logs, || async {
                let began = tokio::time::Instant::now();
                let shutdown = CancellationToken::new();
                let notifier = Notifier::start(Some(settings), shutdown.clone()).expect("starting");
                for n in 1..=3 {
                    notifier.send(notice(n));
                }
                lab.wait_messages(1, secs(20)).await;
                // The token comes back 5 s after the first notice took it.
                tokio::time::sleep_until(began + secs(6)).await;
                notifier.send(notice(4));
                let messages = lab.wait_messages(2, secs(20)).await;
                shutdown.cancel();
                messages
            });
            let log = logs.text();
            let find = |n: u32| {
                messages
                    .iter()
                    .find(|m| m.contains(&format!("Subject: xdprobe: notice {n}")))
            };
            assert!(
                find(2).is_none() && find(3).is_none(),
                "notices 2 and 3 should have been suppressed (did notice 1 take over 5 s?)\n{log}"
            );
            let first = find(1).unwrap_or_else(|| panic!("notice 1 did not arrive\n{log}"));
            let fourth = find(4).unwrap_or_else(|| panic!("notice 4 did not arrive\n{log}"));
            assert!(!first.contains("suppressed"), "{first}");
            assert!(
                fourth.contains(
                    "(2 notices were suppressed by the rate limit since the last e-mail; see the log.)"
                ),
                "{fourth}"
            );
            assert!(fourth.contains("body of notice 4"), "{fourth}");
            for n in [2, 3] {
                assert!(
                    log.contains(&format!("subject=xdprobe: notice {n}")),
                    "notice {n} not logged: {log}"
                );
            }
        }
    }
}
