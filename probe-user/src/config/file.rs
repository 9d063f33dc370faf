//! The config file as written: the same keys as the flags, `[[group]]` and `[[dns]]` tables,
//! unknown keys refused; and where in the file a key is set, for error messages.

use std::{net::IpAddr, path::Path, time::Duration};

use serde::Deserialize;

use crate::config::{
    cluster::ClusterFile,
    dns::DnsFileConfig,
    error::SettingsError,
    flags::{Failback, OnExit},
    vips::Vips,
};

/// The default config file, read when `--config` is not given and it exists.
pub const DEFAULT_CONFIG: &str = "/etc/xdprobe/xdprobe.toml";

/// The config file: the same keys as the flags (`failed_windows` for `--failed-windows`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub iface: Option<String>,
    pub watch: Option<IpAddr>,
    pub vip: Option<Vips>,
    pub label: Option<String>,
    /// More failover groups, each `[[group]]` with its own watch, vip and label.
    pub group: Option<Vec<GroupFile>>,
    /// Plain monitored targets (addresses, CIDRs, names, @FILEs): probed and reported, no VIP.
    pub monitor: Option<Vec<String>>,
    /// DNS round-robin pools kept in step with their members' health.
    pub dns: Option<Vec<DnsFileConfig>>,
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    pub probes: Option<u32>,
    pub failed_windows: Option<u32>,
    pub recover_windows: Option<u32>,
    pub retries: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub witness: Option<Vec<IpAddr>>,
    pub failback: Option<Failback>,
    pub on_exit: Option<OnExit>,
    #[serde(default, with = "humantime_serde")]
    pub hold_down: Option<Duration>,
    pub garp_count: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub garp_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub garp_refresh: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub conflict_wait: Option<Duration>,
    pub on_down: Option<String>,
    pub on_up: Option<String>,
    pub on_claim: Option<String>,
    pub on_release: Option<String>,
    pub on_cluster: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub hook_timeout: Option<Duration>,
    pub notify: Option<String>,
    pub smtp: Option<String>,
    pub from: Option<String>,
    pub smtp_starttls: Option<bool>,
    pub smtp_ca: Option<std::path::PathBuf>,
    pub smtp_credentials: Option<std::path::PathBuf>,
    pub mail_limit: Option<String>,
    pub debug: Option<bool>,
    /// Where to serve /metrics and /status: ADDR:PORT, or "off".
    pub metrics: Option<String>,
    /// What to log: a level (`info`) or `RUST_LOG`-style directives; `RUST_LOG` wins if set.
    pub log_level: Option<String>,
    /// Several nodes agreeing through etcd (`[cluster]`).
    pub cluster: Option<ClusterFile>,
}

/// One `[[group]]` of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    pub watch: Option<IpAddr>,
    pub vip: Option<Vips>,
    pub label: Option<String>,
}

impl FileConfig {
    pub fn parse(path: &Path, text: &str) -> Result<Self, SettingsError> {
        toml::from_str(text).map_err(|e| SettingsError::File {
            path: path.display().to_string(),
            message: e.to_string().trim_end().to_string(),
        })
    }
}

impl SettingsError {
    /// The error as the user should read it: with `path:line:` when the field is set in the
    /// config file `text`.
    pub fn in_file(&self, path: &Path, text: &str) -> String {
        let line = match self {
            SettingsError::Invalid { field, .. } | SettingsError::Missing { field } => {
                locate(text, field)
            }
            SettingsError::File { .. } => None,
        };
        match line {
            Some(line) => format!("{}:{line}: {self}", path.display()),
            None => self.to_string(),
        }
    }
}

/// The 1-based line of the config `text` where `field` is set: a top-level key (`window`), a
/// key of the n-th `[[table]]` (`group[1].vip`, `dns[0].members`) or of a `[table]`
/// (`cluster.etcd`), as the TOML parser placed it. `None` if the file does not set it (the
/// value came from a flag or a default).
pub fn locate(text: &str, field: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let (table, key) = match (field.split_once("]."), field.split_once('.')) {
        (Some((head, key)), _) => {
            let (name, index) = head.split_once('[')?;
            let tables = doc.get(name)?.as_array_of_tables()?;
            (tables.get(index.parse().ok()?)?, key)
        }
        (None, Some((name, key))) => (doc.get(name)?.as_table()?, key),
        (None, None) => (doc.as_table(), field),
    };
    let start = table.key(key)?.span()?.start;
    Some(text[..start].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_located_in_the_file() {
        let text = "iface = \"eth0\"\nwindow = \"5ms\"\n\n[[group]]\nwatch = \"192.0.2.11\"\n\
                    vip = \"192.0.2.110/24\"\n\n[[group]]\nvip = \"192.0.2.120/24\"\n\n\
                    [[dns]]\nmembers = []\n";
        assert_eq!(locate(text, "window"), Some(2));
        assert_eq!(locate(text, "group[0].vip"), Some(6));
        assert_eq!(locate(text, "group[1].vip"), Some(9));
        assert_eq!(
            locate(text, "group[1].watch"),
            None,
            "missing in that group"
        );
        assert_eq!(locate(text, "dns[0].members"), Some(12));
        let text = "iface = \"eth0\"\n[cluster]\netcd = []\nnode = \"a\"\n";
        assert_eq!(locate(text, "cluster.node"), Some(4));
        assert_eq!(locate(text, "cluster.quorum"), None);
        assert_eq!(locate(text, "probes"), None, "from a flag or a default");
        // A top-level key after a table header belongs to the table, not the top level.
        assert_eq!(locate("[[group]]\nwindow = \"1s\"\n", "window"), None);
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
}
