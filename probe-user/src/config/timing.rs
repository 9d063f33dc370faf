//! How often to probe and when a host changes state: the same settings for `run` and `monitor`.

use std::time::Duration;

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
}

impl Timing {
    /// Time between two probe rounds.
    pub fn round(&self) -> Duration {
        self.window / self.probes
    }

    /// The flags over the config file (`file` empty for `monitor`), defaults for the rest;
    /// validated.
    pub fn resolve(args: &TimingArgs, file: &FileConfig) -> Result<Self, SettingsError> {
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
            retries: args.retries.or(file.retries).unwrap_or(DEFAULT_RETRIES),
        };
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
