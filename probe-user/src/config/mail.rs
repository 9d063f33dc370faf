//! Where and how to send notification e-mail: the addresses, the SMTP relay, STARTTLS,
//! the credentials file and the rate limit, from the flags over the config file.

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

use lettre::message::Mailbox;

use crate::config::{error::SettingsError, file::FileConfig, flags::RunArgs};

/// The shortest period a rate limit may have.
const MIN_LIMIT_PERIOD: Duration = Duration::from_secs(1);

/// Where and how to send notification e-mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailSettings {
    pub to: Mailbox,
    pub from: Mailbox,
    pub smtp_host: String,
    pub smtp_port: u16,
    /// Upgrade the connection with STARTTLS (required when set).
    pub starttls: bool,
    /// Extra CA certificate (PEM) to trust for STARTTLS, besides the system's roots.
    pub ca: Option<PathBuf>,
    /// File holding the SMTP username and password (never given on the command line).
    pub credentials: Option<PathBuf>,
    /// How many notices may be sent, and how fast the allowance refills.
    pub limit: RateLimit,
}

/// A token bucket for notices: up to `burst` at once, refilled at `burst` per `per`.
/// Written as `N/DURATION` in flags and config (e.g. `5/10m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub burst: u32,
    pub per: Duration,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            burst: 10,
            per: Duration::from_secs(3600),
        }
    }
}

impl FromStr for RateLimit {
    type Err = String;

    /// `N/DURATION`: N ≥ 1 notices, a humantime DURATION of at least 1s (`10/1h`, `5/10m`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (n, per) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not N/DURATION (e.g. 10/1h or 5/10m)"))?;
        let burst = n
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("{n:?} in {s:?} is not a number of notices (1 or more)"))?;
        let per = humantime::parse_duration(per.trim())
            .map_err(|e| format!("{per:?} in {s:?} is not a duration ({e}; e.g. 10m, 1h)"))?;
        if per < MIN_LIMIT_PERIOD {
            return Err(format!(
                "{per:?} in {s:?} is too short a period (at least {})",
                humantime::format_duration(MIN_LIMIT_PERIOD)
            ));
        }
        Ok(Self { burst, per })
    }
}

impl fmt::Display for RateLimit {
    /// The `N/DURATION` form `from_str` reads, without spaces (`10/1h`, `5/1m30s`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = humantime::format_duration(self.per).to_string();
        write!(f, "{}/{}", self.burst, per.replace(' ', ""))
    }
}

impl MailSettings {
    /// The mail settings of the flags over the file; `None` without `notify`, and then no
    /// other mail setting may be given.
    pub fn resolve(args: &RunArgs, file: &FileConfig) -> Result<Option<Self>, SettingsError> {
        let mail = resolve_addresses(
            args.notify.clone().or(file.notify.clone()),
            args.smtp.clone().or(file.smtp.clone()),
            args.from.clone().or(file.from.clone()),
        )?;
        let starttls = args.smtp_starttls || file.smtp_starttls.unwrap_or(false);
        let ca = args.smtp_ca.clone().or(file.smtp_ca.clone());
        let credentials = args
            .smtp_credentials
            .clone()
            .or(file.smtp_credentials.clone());
        let limit = args.mail_limit.clone().or(file.mail_limit.clone());
        let Some(mut mail) = mail else {
            let given = [
                ("smtp_starttls", starttls),
                ("smtp_ca", ca.is_some()),
                ("smtp_credentials", credentials.is_some()),
                ("mail_limit", limit.is_some()),
            ];
            return match given.iter().find(|(_, given)| *given) {
                Some((field, _)) => Err(SettingsError::invalid(
                    *field,
                    "only makes sense with `notify`",
                )),
                None => Ok(None),
            };
        };
        mail.starttls = starttls;
        mail.ca = ca;
        mail.credentials = credentials;
        if let Some(limit) = limit {
            mail.limit = limit
                .parse::<RateLimit>()
                .map_err(|reason| SettingsError::invalid("mail_limit", reason))?;
        }
        Ok(Some(mail))
    }
}

/// The addresses and the relay: all three, or none (`None`).
fn resolve_addresses(
    notify: Option<String>,
    smtp: Option<String>,
    from: Option<String>,
) -> Result<Option<MailSettings>, SettingsError> {
    use SettingsError::Missing;
    let Some(to) = notify else {
        for (field, value) in [("smtp", &smtp), ("from", &from)] {
            if value.is_some() {
                return Err(SettingsError::invalid(
                    field,
                    "only makes sense with `notify`",
                ));
            }
        }
        return Ok(None);
    };
    let smtp = smtp.ok_or(Missing {
        field: "smtp".into(),
    })?;
    let from = from.ok_or(Missing {
        field: "from".into(),
    })?;
    let mailbox = |field: &'static str, s: &str| {
        s.parse::<Mailbox>().map_err(|e| {
            SettingsError::invalid(field, format!("{s:?} is not an e-mail address ({e})"))
        })
    };
    let (host, port) = smtp
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .ok_or_else(|| SettingsError::invalid("smtp", format!("{smtp:?} is not HOST:PORT")))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            SettingsError::invalid(
                "smtp",
                format!("{port:?} is not a port number (1 to 65535)"),
            )
        })?;
    Ok(Some(MailSettings {
        to: mailbox("notify", &to)?,
        from: mailbox("from", &from)?,
        smtp_host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        smtp_port: port,
        starttls: false,
        ca: None,
        credentials: None,
        limit: RateLimit::default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn rate_limits_are_n_per_duration() {
        let limit = |burst, per| Ok(RateLimit { burst, per });
        assert_eq!("5/10m".parse(), limit(5, secs(600)));
        assert_eq!("10/1h".parse(), limit(10, secs(3600)));
        assert_eq!(" 1/1s ".parse(), limit(1, secs(1)));
        assert_eq!("3/1h 30m".parse(), limit(3, secs(5400)));
        assert_eq!("3/1h30m".parse(), limit(3, secs(5400)));
    }

    #[test]
    fn bad_rate_limits_say_what_is_wrong() {
        for (text, needle) in [
            ("10", "is not N/DURATION"),
            ("", "is not N/DURATION"),
            ("0/1h", "1 or more"),
            ("-1/1h", "1 or more"),
            ("x/1h", "1 or more"),
            ("99999999999/1h", "1 or more"),
            ("5/", "is not a duration"),
            ("5/soon", "is not a duration"),
            ("5/10", "is not a duration"),
            ("5/500ms", "too short a period (at least 1s)"),
            ("5/0s", "too short"),
        ] {
            let err = text.parse::<RateLimit>().unwrap_err();
            assert!(
                err.contains(needle) && err.contains(&format!("{text:?}")),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn rate_limits_display_as_they_are_written() {
        assert_eq!(RateLimit::default().to_string(), "10/1h");
        for text in ["5/10m", "1/1s", "3/1h30m", "7/1day", "2/1s500ms"] {
            let limit: RateLimit = text.parse().unwrap();
            assert_eq!(limit.to_string(), text);
            assert_eq!(limit.to_string().parse(), Ok(limit));
        }
    }
}
