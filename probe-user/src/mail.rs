//! Notification e-mail: composed from facts (pure), sent by one task with retries and backoff,
//! so that a slow or dead SMTP server never holds up anything else.

use std::time::Duration;

use lettre::{
    message::header::ContentType, AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::settings::MailSettings;

/// Queued notices beyond this are dropped (and logged): the queue must never block a sender.
const QUEUE: usize = 64;
const ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A token bucket for notices: up to `burst` at once, refilled at `burst` per `per`.
/// Written as `N/DURATION` in flags and config (e.g. `5/10m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub burst: u32,
    pub per: Duration,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self { burst: 10, per: Duration::from_secs(3600) }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub subject: String,
    pub body: String,
}

/// The sending side, cheap to clone. Without mail settings, notices are only logged.
#[derive(Clone)]
pub struct Notifier {
    tx: Option<mpsc::Sender<Notice>>,
}

impl Notifier {
    /// Starts the mail task (if mail is configured); it stops when `shutdown` fires.
    pub fn start(settings: Option<MailSettings>, shutdown: CancellationToken) -> Self {
        let Some(settings) = settings else {
            return Self { tx: None };
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(settings, rx, shutdown));
        Self { tx: Some(tx) }
    }

    /// Queues a notice without waiting.
    pub fn send(&self, notice: Notice) {
        let Some(tx) = &self.tx else { return };
        if let Err(e) = tx.try_send(notice) {
            warn!(error = %e, "notification queue full or closed; notice dropped");
        }
    }
}

async fn run(settings: MailSettings, mut rx: mpsc::Receiver<Notice>, shutdown: CancellationToken) {
    let transport =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.smtp_host.as_str())
            .port(settings.smtp_port)
            .timeout(Some(SMTP_TIMEOUT))
            .build();
    loop {
        let notice = tokio::select! {
            _ = shutdown.cancelled() => return,
            notice = rx.recv() => match notice { Some(n) => n, None => return },
        };
        let message = match build(&settings, &notice) {
            Ok(m) => m,
            Err(error) => {
                warn!(%error, subject = %notice.subject, "cannot build notification e-mail");
                continue;
            }
        };
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            match transport.send(message.clone()).await {
                Ok(_) => {
                    info!(to = %settings.to, subject = %notice.subject, attempt, "notification sent");
                    break;
                }
                Err(error) if attempt < ATTEMPTS => {
                    warn!(%error, attempt, retry_in = ?backoff, "sending notification failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(error) => {
                    warn!(%error, attempts = ATTEMPTS, subject = %notice.subject, "giving up on notification");
                }
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
    use super::*;

    #[test]
    fn message_carries_subject_body_and_addresses() {
        let settings = MailSettings {
            to: "ops@example.org".parse().unwrap(),
            from: "xdprobe@example.org".parse().unwrap(),
            smtp_host: "127.0.0.1".into(),
            smtp_port: 25,
            starttls: false,
            ca: None,
            credentials: None,
            limit: RateLimit::default(),
        };
        let notice = Notice {
            subject: "xdprobe: 192.0.2.1 is DOWN".into(),
            body: "details\n".into(),
        };
        let text = String::from_utf8(build(&settings, &notice).unwrap().formatted()).unwrap();
        assert!(text.contains("To: ops@example.org"), "{text}");
        assert!(text.contains("From: xdprobe@example.org"), "{text}");
        assert!(
            text.contains("Subject: xdprobe: 192.0.2.1 is DOWN"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("details"), "{text}");
    }
}
