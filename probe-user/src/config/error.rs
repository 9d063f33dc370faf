//! A setting that is missing or wrong, named as the config file names it.

use std::{borrow::Cow, time::Duration};

/// A setting that is missing or wrong; `field` is the config key (the flag is `--field`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("missing `{field}`: give --{flag} or set `{field}` in the config file", flag = .field.replace('_', "-"))]
    Missing { field: Cow<'static, str> },
    #[error("invalid `{field}`: {reason}")]
    Invalid {
        field: Cow<'static, str>,
        reason: String,
    },
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
}

impl SettingsError {
    /// An invalid `field`, for `reason`.
    pub fn invalid(field: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// `value` (or `default`) if within `min..=max`, else an error naming `field`.
pub fn bounded(
    field: &'static str,
    value: Option<Duration>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, SettingsError> {
    let d = value.unwrap_or(default);
    if d < min || d > max {
        return Err(SettingsError::invalid(
            field,
            format!(
                "{} is out of range ({} to {})",
                humantime::format_duration(d),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}
