//! `xdprobe monitor`: its command line and its `--json` output.
//!
//! One JSON object per line: `{"type":"state",...,"to":"DOWN"}` when a host changes state,
//! `{"type":"window",...}` per window and a final `{"type":"summary",...}`.
use std::{collections::HashSet, io::BufRead, path::Path};

use anyhow::{Context as _, Result};
use serde::Deserialize;
use serde_json::Value;

/// Where replies are received: counted in XDP, or the ablation, on a socket in userspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receive {
    Xdp,
    Socket,
}

impl Receive {
    pub fn flag(self) -> &'static str {
        match self {
            Receive::Xdp => "xdp",
            Receive::Socket => "socket",
        }
    }
}

/// The `xdprobe` arguments (after the binary) for `probes` probes per `window_ms` window over
/// `windows` windows to every host listed in `hosts_file`.
pub fn args(
    iface: &str,
    hosts_file: &Path,
    probes: u32,
    window_ms: u64,
    windows: u32,
    receive: Receive,
) -> Vec<String> {
    vec![
        "monitor".into(),
        "--iface".into(),
        iface.into(),
        "--window".into(),
        duration_arg(window_ms),
        "--probes".into(),
        probes.to_string(),
        "--count".into(),
        windows.to_string(),
        "--json".into(),
        "--receive".into(),
        receive.flag().into(),
        format!("@{}", hosts_file.display()),
    ]
}

/// `1000` -> `1s`, `250` -> `250ms` (xdprobe reads humantime durations).
fn duration_arg(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The final `{"type":"summary",...}` line. Lenient: fields the bench does not need may be
/// missing, unknown ones are ignored.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub hosts: u64,
    pub up: u64,
    pub down: u64,
    pub unknown: u64,
    pub windows: u64,
    pub sent: u64,
    pub answered: u64,
    pub late_rounds: Option<u64>,
    pub peak_rss_kib: Option<u64>,
    pub map_kib: Option<u64>,
}

/// What an xdprobe run printed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Output {
    pub summary: Option<Summary>,
    /// `"to":"DOWN"` state lines. Every farm host answers: each one is false.
    pub down_events: u64,
    /// Distinct hosts among them, when the lines name the host.
    pub down_hosts: u64,
    pub window_lines: u64,
    /// Lines that are not JSON objects (e.g. a panic message on stdout).
    pub other_lines: u64,
}

impl Output {
    /// Hosts reported DOWN at least once (events if the lines do not say which host).
    pub fn false_downs(&self) -> u64 {
        if self.down_hosts > 0 {
            self.down_hosts
        } else {
            self.down_events
        }
    }
}

/// Reads `xdprobe monitor --json` stdout line by line (it can be large: one state line per host).
pub fn parse(output: impl BufRead) -> Result<Output> {
    let mut parsed = Output::default();
    let mut down: HashSet<String> = HashSet::new();
    for line in output.lines() {
        let line = line.context("reading xdprobe's output")?;
        if line.trim().is_empty() {
            continue;
        }
        let Ok(Value::Object(object)) = serde_json::from_str::<Value>(&line) else {
            parsed.other_lines += 1;
            continue;
        };
        match object.get("type").and_then(Value::as_str) {
            Some("state") if object.get("to").and_then(Value::as_str) == Some("DOWN") => {
                parsed.down_events += 1;
                if let Some(host) = ["host", "addr", "address", "target", "ip"]
                    .iter()
                    .find_map(|key| object.get(*key).and_then(Value::as_str))
                {
                    down.insert(host.to_owned());
                }
            }
            Some("window") => parsed.window_lines += 1,
            Some("summary") => {
                let summary = serde_json::from_value(Value::Object(object))
                    .with_context(|| format!("unexpected summary line: {line}"))?;
                parsed.summary = Some(summary);
            }
            _ => {}
        }
    }
    parsed.down_hosts = down.len() as u64;
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_follows_the_monitor_contract() {
        let args = args(
            "eth0",
            Path::new("/tmp/hosts"),
            2,
            1000,
            20,
            Receive::Socket,
        );
        assert_eq!(
            args.join(" "),
            "monitor --iface eth0 --window 1s --probes 2 --count 20 --json --receive socket \
             @/tmp/hosts"
        );
    }

    #[test]
    fn windows_are_written_as_humantime() {
        assert_eq!(duration_arg(1000), "1s");
        assert_eq!(duration_arg(250), "250ms");
    }

    #[test]
    fn parses_states_windows_and_the_summary() {
        let out = r#"{"type":"state","host":"198.18.0.1","from":"UNKNOWN","to":"UP"}
{"type":"window","window":1,"sent":8,"answered":8}
{"type":"state","host":"198.18.0.2","from":"UP","to":"DOWN"}
{"type":"state","host":"198.18.0.2","from":"DOWN","to":"UP"}
{"type":"state","host":"198.18.0.2","from":"UP","to":"DOWN"}
{"type":"window","window":2,"sent":8,"answered":6}
thread 'main' panicked
{"type":"summary","hosts":4,"up":3,"down":1,"unknown":0,"windows":2,"sent":16,"answered":14,"loss":0.125,"rtt_known":4,"rtt_min_us":3,"rtt_avg_us":5,"rtt_max_us":40,"rtt_p99_us":40,"late_rounds":0,"peak_rss_kib":10240,"map_kib":2048,"new_field":true}
"#;
        let parsed = parse(out.as_bytes()).unwrap();
        assert_eq!(parsed.down_events, 2);
        assert_eq!(parsed.down_hosts, 1);
        assert_eq!(parsed.false_downs(), 1);
        assert_eq!(parsed.window_lines, 2);
        assert_eq!(parsed.other_lines, 1);
        let summary = parsed.summary.unwrap();
        assert_eq!((summary.hosts, summary.sent, summary.answered), (4, 16, 14));
        assert_eq!(summary.peak_rss_kib, Some(10240));
        assert_eq!(summary.map_kib, Some(2048));
    }

    #[test]
    fn down_lines_without_a_host_still_count() {
        let out = "{\"type\":\"state\",\"to\":\"DOWN\"}\n{\"type\":\"state\",\"to\":\"DOWN\"}\n";
        let parsed = parse(out.as_bytes()).unwrap();
        assert_eq!(parsed.false_downs(), 2);
        assert_eq!(parsed.summary, None);
    }

    #[test]
    fn a_summary_of_the_wrong_shape_is_an_error() {
        let out = "{\"type\":\"summary\",\"sent\":\"many\"}\n";
        assert!(parse(out.as_bytes()).is_err());
    }
}
