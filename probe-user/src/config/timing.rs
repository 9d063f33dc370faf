//! How often to probe and when a host changes state: the same settings for `run` and `monitor`.

use std::time::Duration;

use probe_common::maps::ANSWER_BITS;

use crate::config::{
    error::SettingsError,
    file::FileConfig,
    flags::{MonitorArgs, TimingArgs},
};

pub const DEFAULT_WINDOW: Duration = Duration::from_secs(1);
pub const DEFAULT_PROBES: u32 = 3;
pub const DEFAULT_FAILED_WINDOWS: u32 = 2;
pub const DEFAULT_RECOVER_WINDOWS: u32 = 2;
pub const DEFAULT_RETRIES: u32 = 1;
const MIN_WINDOW: Duration = Duration::from_millis(10);
const MAX_WINDOW: Duration = Duration::from_secs(3600);
const MIN_ROUND: Duration = Duration::from_millis(1);
/// The shortest timeout: a reply's journey through the kernels at both ends.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);
/// The most rounds recovery can look back at (a host's answer history is one `u64`):
/// `recover_windows * probes` must not exceed it.
pub const MAX_RECOVERY_ROUNDS: u32 = u64::BITS;

/// How often to probe and when to change a host's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub window: Duration,
    pub probes: u32,
    pub failed_windows: u32,
    pub recover_windows: u32,
    /// Resends of an unanswered probe within its round.
    pub retries: u32,
    /// How long after its send a reply still counts.
    pub timeout: Duration,
}

impl Timing {
    /// Time between two probe rounds.
    pub fn round(&self) -> Duration {
        self.window / self.probes
    }

    /// Probes a round may send a host: the first and its retries.
    pub fn attempts(&self) -> u32 {
        self.retries + 1
    }

    /// The longest `timeout` these settings allow: a probe's answer bit (one of 64 per host)
    /// must not be reused before the window it belongs to is closed, at the latest `attempts`
    /// timeouts after it ended. So the window's probes and those of the rounds begun in
    /// `attempts` timeouts (and one more round each side of them, for the boundaries and a
    /// late wake-up) fit in 64 sequences: `attempts * (probes + rounds + 2) <= 64`.
    pub fn max_timeout(&self) -> Duration {
        let attempts = self.attempts();
        let rounds = (ANSWER_BITS / attempts).saturating_sub(self.probes + 2);
        // Rounds of the timeout, `attempts` times over, may be at most `rounds`.
        self.round() * rounds / attempts
    }

    /// The flags over the config file (`file` empty for `monitor`), defaults for the rest;
    /// validated.
    pub fn resolve(args: &TimingArgs, file: &FileConfig) -> Result<Self, SettingsError> {
        let mut timing = Timing {
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
            retries: args.retries.or(file.retries).unwrap_or(DEFAULT_RETRIES),
            timeout: Duration::ZERO,
        };
        let window = timing.window;
        timing.timeout = args.timeout.or(file.timeout).unwrap_or(window);
        timing.validate()?;
        Ok(timing)
    }

    /// The timing of `xdprobe monitor`, from its flags.
    pub fn for_monitor(args: &MonitorArgs) -> Result<Self, SettingsError> {
        let timing = Self::resolve(&args.timing, &FileConfig::default())?;
        if args.count == Some(0) {
            return Err(SettingsError::Invalid {
                field: "count".into(),
                reason: "0 windows: nothing to do".into(),
            });
        }
        Ok(timing)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        use SettingsError::Invalid;
        if self.window < MIN_WINDOW || self.window > MAX_WINDOW {
            return Err(Invalid {
                field: "window".into(),
                reason: format!(
                    "{} is out of range ({} to {})",
                    humantime::format_duration(self.window),
                    humantime::format_duration(MIN_WINDOW),
                    humantime::format_duration(MAX_WINDOW)
                ),
            });
        }
        if !(1..=1000).contains(&self.probes) {
            return Err(Invalid {
                field: "probes".into(),
                reason: format!("{} is out of range (1 to 1000)", self.probes),
            });
        }
        if self.round() < MIN_ROUND {
            return Err(Invalid {
                field: "probes".into(),
                reason: format!(
                    "{} probes in a {} window leave less than 1ms between probes",
                    self.probes,
                    humantime::format_duration(self.window)
                ),
            });
        }
        if self.recover_windows.saturating_mul(self.probes) > MAX_RECOVERY_ROUNDS {
            return Err(Invalid {
                field: "recover_windows".into(),
                reason: format!(
                    "{} windows of {} probes look back more than {} rounds",
                    self.recover_windows, self.probes, MAX_RECOVERY_ROUNDS
                ),
            });
        }
        if self.retries > 3 {
            return Err(Invalid {
                field: "retries".into(),
                reason: format!("{} is out of range (0 to 3)", self.retries),
            });
        }
        let most_probes = (ANSWER_BITS / self.attempts()).saturating_sub(3);
        if self.probes > most_probes {
            return Err(Invalid {
                field: "probes".into(),
                reason: format!(
                    "{} probes a window with {} retries: each host's last 64 probes are told \
                     apart, which leaves room for at most {most_probes}",
                    self.probes, self.retries
                ),
            });
        }
        if self.timeout < MIN_TIMEOUT || self.timeout > self.max_timeout() {
            return Err(Invalid {
                field: "timeout".into(),
                reason: format!(
                    "{} is out of range ({} to {} with {} probes a window and {} retries: each \
                     host's last 64 probes are told apart, and a window's answers are counted \
                     {} timeouts after it ends)",
                    humantime::format_duration(self.timeout),
                    humantime::format_duration(MIN_TIMEOUT),
                    humantime::format_duration(self.max_timeout()),
                    self.probes,
                    self.retries,
                    self.attempts()
                ),
            });
        }
        for (field, n) in [
            ("failed_windows", self.failed_windows),
            ("recover_windows", self.recover_windows),
        ] {
            if !(1..=1000).contains(&n) {
                return Err(Invalid {
                    field: field.into(),
                    reason: format!("{n} is out of range (1 to 1000)"),
                });
            }
        }
        Ok(())
    }
}
