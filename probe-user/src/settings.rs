//! Resolved, validated settings: the config file merged under the flags.
//!
//! Pure code: no I/O besides reading the config file's text, so every rule is unit-tested.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use ipnet::Ipv4Net;
use lettre::message::Mailbox;
use serde::Deserialize;

use crate::cli::RunArgs;

pub const DEFAULT_WINDOW: Duration = Duration::from_secs(1);
pub const DEFAULT_PROBES: u32 = 3;
pub const DEFAULT_FAILED_WINDOWS: u32 = 2;
pub const DEFAULT_RECOVER_WINDOWS: u32 = 2;
const MIN_WINDOW: Duration = Duration::from_millis(10);
const MAX_WINDOW: Duration = Duration::from_secs(3600);
const MIN_ROUND: Duration = Duration::from_millis(1);
const IFNAMSIZ: usize = 16;

/// A setting that is missing or wrong; `field` is the config key (the flag is `--field`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("missing `{field}`: give --{flag} or set `{field}` in the config file", flag = .field.replace('_', "-"))]
    Missing { field: &'static str },
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
}

/// The config file: the same keys as the flags (`failed_windows` for `--failed-windows`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub iface: Option<String>,
    pub watch: Option<Ipv4Addr>,
    pub vip: Option<Ipv4Net>,
    pub label: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    pub probes: Option<u32>,
    pub failed_windows: Option<u32>,
    pub recover_windows: Option<u32>,
    pub notify: Option<String>,
    pub smtp: Option<String>,
    pub from: Option<String>,
    pub debug: Option<bool>,
}

impl FileConfig {
    pub fn parse(path: &Path, text: &str) -> Result<Self, SettingsError> {
        toml::from_str(text).map_err(|e| SettingsError::File {
            path: path.display().to_string(),
            message: e.to_string().trim_end().to_string(),
        })
    }
}

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
    pub ca: Option<std::path::PathBuf>,
    /// File holding the SMTP username and password (never given on the command line).
    pub credentials: Option<std::path::PathBuf>,
    /// How many notices may be sent, and how fast the allowance refills.
    pub limit: crate::mail::RateLimit,
}

/// How often to probe and when to change a host's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub window: Duration,
    pub probes: u32,
    pub failed_windows: u32,
    pub recover_windows: u32,
}

impl Timing {
    /// Time between two probe rounds.
    pub fn round(&self) -> Duration {
        self.window / self.probes
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub iface: String,
    pub watch: Ipv4Addr,
    pub vip: Ipv4Net,
    pub label: String,
    pub timing: Timing,
    pub mail: Option<MailSettings>,
    pub debug: bool,
}

impl Settings {
    /// Merges `file` under `args` (flags win) and validates the result.
    pub fn resolve(args: &RunArgs, file: FileConfig) -> Result<Self, SettingsError> {
        use SettingsError::{Invalid, Missing};

        let iface = args
            .iface
            .clone()
            .or(file.iface)
            .ok_or(Missing { field: "iface" })?;
        if iface.is_empty() || iface.len() >= IFNAMSIZ || iface.contains(['/', ' ', ':']) {
            return Err(Invalid {
                field: "iface",
                reason: format!("{iface:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)"),
            });
        }
        let watch = args
            .watch
            .or(file.watch)
            .ok_or(Missing { field: "watch" })?;
        if watch.is_unspecified() || watch.is_broadcast() || watch.is_multicast() {
            return Err(Invalid {
                field: "watch",
                reason: format!("{watch} is not a unicast host address"),
            });
        }
        let vip = args.vip.or(file.vip).ok_or(Missing { field: "vip" })?;
        if vip.addr() == watch {
            return Err(Invalid {
                field: "vip",
                reason: format!(
                    "{} is the watched host's own address; the VIP must be another address",
                    vip.addr()
                ),
            });
        }
        if vip.addr().is_unspecified() || vip.addr().is_multicast() || vip.addr().is_broadcast() {
            return Err(Invalid {
                field: "vip",
                reason: format!("{} is not a unicast address", vip.addr()),
            });
        }
        let label = args
            .label
            .clone()
            .or(file.label)
            .unwrap_or_else(|| format!("{iface}:1"));
        if !label.starts_with(iface.as_str()) || label.len() >= IFNAMSIZ {
            return Err(Invalid {
                field: "label",
                reason: format!("{label:?} must start with the interface name {iface:?} and be at most 15 characters"),
            });
        }

        let timing = Timing {
            window: args.window.or(file.window).unwrap_or(DEFAULT_WINDOW),
            probes: args.probes.or(file.probes).unwrap_or(DEFAULT_PROBES),
            failed_windows: args
                .failed_windows
                .or(file.failed_windows)
                .unwrap_or(DEFAULT_FAILED_WINDOWS),
            recover_windows: args
                .recover_windows
                .or(file.recover_windows)
                .unwrap_or(DEFAULT_RECOVER_WINDOWS),
        };
        validate_timing(&timing)?;

        let mail = resolve_mail(
            args.notify.clone().or(file.notify),
            args.smtp.clone().or(file.smtp),
            args.from.clone().or(file.from),
        )?;

        Ok(Settings {
            iface,
            watch,
            vip,
            label,
            timing,
            mail,
            debug: args.debug || file.debug.unwrap_or(false),
        })
    }
}

fn validate_timing(t: &Timing) -> Result<(), SettingsError> {
    use SettingsError::Invalid;
    if t.window < MIN_WINDOW || t.window > MAX_WINDOW {
        return Err(Invalid {
            field: "window",
            reason: format!(
                "{} is out of range ({} to {})",
                humantime::format_duration(t.window),
                humantime::format_duration(MIN_WINDOW),
                humantime::format_duration(MAX_WINDOW)
            ),
        });
    }
    if !(1..=1000).contains(&t.probes) {
        return Err(Invalid {
            field: "probes",
            reason: format!("{} is out of range (1 to 1000)", t.probes),
        });
    }
    if t.round() < MIN_ROUND {
        return Err(Invalid {
            field: "probes",
            reason: format!(
                "{} probes in a {} window leave less than 1ms between probes",
                t.probes,
                humantime::format_duration(t.window)
            ),
        });
    }
    for (field, n) in [
        ("failed_windows", t.failed_windows),
        ("recover_windows", t.recover_windows),
    ] {
        if !(1..=1000).contains(&n) {
            return Err(Invalid {
                field,
                reason: format!("{n} is out of range (1 to 1000)"),
            });
        }
    }
    Ok(())
}

fn resolve_mail(
    notify: Option<String>,
    smtp: Option<String>,
    from: Option<String>,
) -> Result<Option<MailSettings>, SettingsError> {
    use SettingsError::{Invalid, Missing};
    let Some(to) = notify else {
        for (field, value) in [("smtp", &smtp), ("from", &from)] {
            if value.is_some() {
                return Err(Invalid {
                    field,
                    reason: "only makes sense with `notify`".into(),
                });
            }
        }
        return Ok(None);
    };
    let smtp = smtp.ok_or(Missing { field: "smtp" })?;
    let from = from.ok_or(Missing { field: "from" })?;
    let mailbox = |field: &'static str, s: &str| {
        s.parse::<Mailbox>().map_err(|e| Invalid {
            field,
            reason: format!("{s:?} is not an e-mail address ({e})"),
        })
    };
    let (host, port) = smtp
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .ok_or_else(|| Invalid {
            field: "smtp",
            reason: format!("{smtp:?} is not HOST:PORT"),
        })?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Invalid {
            field: "smtp",
            reason: format!("{port:?} is not a port number (1 to 65535)"),
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
        limit: crate::mail::RateLimit::default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RunArgs {
        RunArgs {
            iface: Some("eth0".into()),
            watch: Some("192.0.2.1".parse().unwrap()),
            vip: Some("192.0.2.100/24".parse().unwrap()),
            ..RunArgs::default()
        }
    }

    fn file(text: &str) -> FileConfig {
        FileConfig::parse(Path::new("test.toml"), text).unwrap()
    }

    /// An edit of the flags and the field whose error it must cause.
    type Case = (fn(&mut RunArgs), &'static str);

    fn invalid_field(r: Result<Settings, SettingsError>) -> &'static str {
        match r {
            Err(SettingsError::Invalid { field, .. }) | Err(SettingsError::Missing { field }) => {
                field
            }
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_what_is_not_given() {
        let s = Settings::resolve(&args(), FileConfig::default()).unwrap();
        assert_eq!(s.label, "eth0:1");
        assert_eq!(
            s.timing,
            Timing {
                window: Duration::from_secs(1),
                probes: 3,
                failed_windows: 2,
                recover_windows: 2
            }
        );
        assert_eq!(s.mail, None);
        assert!(!s.debug);
    }

    #[test]
    fn flags_override_the_file() {
        let f = file("iface = \"eth9\"\nwindow = \"250ms\"\nprobes = 5\ndebug = true\n");
        let mut a = args();
        a.window = Some(Duration::from_millis(100));
        let s = Settings::resolve(&a, f).unwrap();
        assert_eq!(s.iface, "eth0");
        assert_eq!(s.timing.window, Duration::from_millis(100));
        assert_eq!(s.timing.probes, 5);
        assert!(s.debug);
    }

    #[test]
    fn a_file_alone_is_enough() {
        let f = file(
            r#"
            iface = "eth1"
            watch = "198.51.100.7"
            vip = "198.51.100.200/25"
            label = "eth1:vip"
            window = "50ms"
            failed_windows = 3
            notify = "ops@example.org"
            smtp = "127.0.0.1:2525"
            from = "xdprobe@example.org"
            "#,
        );
        let s = Settings::resolve(&RunArgs::default(), f).unwrap();
        assert_eq!(s.vip.prefix_len(), 25);
        assert_eq!(s.label, "eth1:vip");
        assert_eq!(s.timing.failed_windows, 3);
        let mail = s.mail.unwrap();
        assert_eq!(
            (mail.smtp_host.as_str(), mail.smtp_port),
            ("127.0.0.1", 2525)
        );
        assert_eq!(mail.to.email.to_string(), "ops@example.org");
    }

    #[test]
    fn the_commented_example_file_is_valid_and_complete() {
        let text = include_str!("../examples/xdprobe.toml");
        let f = file(text);
        let s = Settings::resolve(&RunArgs::default(), f).unwrap();
        assert_eq!(s.timing.window, Duration::from_millis(100));
        assert!(s.mail.is_some());
        // Every key the file format knows is shown in the example.
        for key in [
            "iface",
            "watch",
            "vip",
            "label",
            "window",
            "probes",
            "failed_windows",
            "recover_windows",
            "notify",
            "smtp",
            "from",
            "debug",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{key} = "))),
                "{key} missing"
            );
        }
    }

    #[test]
    fn missing_required_settings_are_named() {
        let mut a = args();
        a.watch = None;
        let err = Settings::resolve(&a, FileConfig::default()).unwrap_err();
        assert_eq!(err, SettingsError::Missing { field: "watch" });
        assert!(err.to_string().contains("--watch"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_in_the_file_are_errors_with_their_line() {
        let err = FileConfig::parse(Path::new("x.toml"), "iface = \"eth0\"\nwindw = \"1s\"\n")
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("x.toml") && msg.contains("windw") && msg.contains("line 2"),
            "{msg}"
        );
        let err = FileConfig::parse(Path::new("x.toml"), "watch = \"192.0.2.300\"\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = FileConfig::parse(Path::new("x.toml"), "window = \"soon\"\n").unwrap_err();
        assert!(err.to_string().contains("window"), "{err}");
    }

    #[test]
    fn timing_out_of_range_is_rejected_by_field() {
        let cases: [Case; 6] = [
            (|a| a.window = Some(Duration::from_millis(5)), "window"),
            (|a| a.window = Some(Duration::from_secs(7200)), "window"),
            (|a| a.probes = Some(0), "probes"),
            (
                |a| {
                    a.window = Some(Duration::from_millis(10));
                    a.probes = Some(20)
                },
                "probes",
            ),
            (|a| a.failed_windows = Some(0), "failed_windows"),
            (|a| a.recover_windows = Some(0), "recover_windows"),
        ];
        for (edit, field) in cases {
            let mut a = args();
            edit(&mut a);
            assert_eq!(
                invalid_field(Settings::resolve(&a, FileConfig::default())),
                field
            );
        }
    }

    #[test]
    fn addresses_and_names_are_checked() {
        let cases: [Case; 6] = [
            (|a| a.vip = Some("192.0.2.1/24".parse().unwrap()), "vip"),
            (|a| a.watch = Some("0.0.0.0".parse().unwrap()), "watch"),
            (|a| a.watch = Some("224.0.0.1".parse().unwrap()), "watch"),
            (
                |a| a.iface = Some("an-interface-name-too-long".into()),
                "iface",
            ),
            (|a| a.label = Some("eth1:1".into()), "label"),
            (|a| a.label = Some("eth0:much-too-long".into()), "label"),
        ];
        for (edit, field) in cases {
            let mut a = args();
            edit(&mut a);
            assert_eq!(
                invalid_field(Settings::resolve(&a, FileConfig::default())),
                field
            );
        }
    }

    #[test]
    fn mail_settings_come_as_a_set() {
        let with = |n: Option<&str>, s: Option<&str>, f: Option<&str>| {
            let mut a = args();
            a.notify = n.map(Into::into);
            a.smtp = s.map(Into::into);
            a.from = f.map(Into::into);
            Settings::resolve(&a, FileConfig::default())
        };
        assert_eq!(
            invalid_field(with(Some("a@b.c"), None, Some("x@y.z"))),
            "smtp"
        );
        assert_eq!(
            invalid_field(with(Some("a@b.c"), Some("h:25"), None)),
            "from"
        );
        assert_eq!(invalid_field(with(None, Some("h:25"), None)), "smtp");
        assert_eq!(
            invalid_field(with(Some("not an address"), Some("h:25"), Some("x@y.z"))),
            "notify"
        );
        assert_eq!(
            invalid_field(with(Some("a@b.c"), Some("h:25"), Some("@@"))),
            "from"
        );
        assert_eq!(
            invalid_field(with(Some("a@b.c"), Some("h"), Some("x@y.z"))),
            "smtp"
        );
        assert_eq!(
            invalid_field(with(Some("a@b.c"), Some("h:0"), Some("x@y.z"))),
            "smtp"
        );
        assert_eq!(
            invalid_field(with(Some("a@b.c"), Some(":25"), Some("x@y.z"))),
            "smtp"
        );
        assert!(with(Some("a@b.c"), Some("[::1]:25"), Some("x@y.z"))
            .unwrap()
            .mail
            .is_some());
    }
}
