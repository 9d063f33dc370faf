//! Output of `xdprobe monitor`: state changes as they happen, per-window lines and the final
//! summary (from `probe::stats`), as text for people or as JSON lines for scripts, and the exit
//! code.
//!
//! Everything here is pure: the writers take the `Write` to print to and build each line in
//! memory first, so one line is one `write_all` and lines from different tasks sharing stdout
//! cannot interleave.

use std::{
    io::{self, Write},
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::{
    model::{events::WindowCounts, health::State},
    probe::stats::{loss, Summary},
};

/// How `monitor` prints: fping-like text, or one JSON object per line (`--json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// A host changed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateLine {
    pub host: IpAddr,
    /// Shown as the prober spells them (`UP`, `DOWN`, `UNKNOWN`).
    pub from: State,
    pub to: State,
    /// The window whose round decided the change.
    pub window: u32,
    /// Wall-clock time of the decision.
    pub at: SystemTime,
    /// The last round-trip time measured for the host, if any.
    pub rtt_us: Option<u64>,
}

/// Writes one state change: text like
/// `2026-11-25T15:00:00.123Z window 12: 198.18.0.5 UP -> DOWN rtt 0.123 ms` (the rtt part only
/// when known), or a JSON line `{"type":"state","host":..,"from":..,"to":..,"window":..,
/// "time":..,"rtt_us":..}` with `rtt_us` null when unknown.
pub fn write_state(out: &mut impl Write, format: Format, line: &StateLine) -> io::Result<()> {
    let time = rfc3339_millis(line.at);
    let mut buf = match format {
        Format::Text => {
            let mut text = format!(
                "{time} window {}: {} {} -> {}",
                line.window, line.host, line.from, line.to
            );
            if let Some(us) = line.rtt_us {
                text.push_str(&format!(" rtt {} ms", ms(us)));
            }
            text.into_bytes()
        }
        Format::Json => serde_json::to_vec(&StateJson {
            kind: "state",
            host: line.host,
            from: line.from,
            to: line.to,
            window: line.window,
            time,
            rtt_us: line.rtt_us,
        })?,
    };
    buf.push(b'\n');
    out.write_all(&buf)
}

#[derive(Serialize)]
struct StateJson {
    #[serde(rename = "type")]
    kind: &'static str,
    host: IpAddr,
    from: State,
    to: State,
    window: u32,
    time: String,
    rtt_us: Option<u64>,
}

/// Writes one window's counts as a JSON line `{"type":"window","window":..,"up":..,"down":..,
/// "unknown":..,"sent":..,"answered":..,"loss":..}` (`loss` as in [`Summary::loss`]). In text
/// mode it writes nothing: like fping, text output only shows changes and the final summary.
pub fn write_window(out: &mut impl Write, format: Format, line: &WindowCounts) -> io::Result<()> {
    match format {
        Format::Text => Ok(()),
        Format::Json => write_json_line(
            out,
            &WindowJson {
                kind: "window",
                line,
                loss: loss(line.sent, line.answered),
            },
        ),
    }
}

#[derive(Serialize)]
struct WindowJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    line: &'a WindowCounts,
    loss: f64,
}

#[derive(Serialize)]
struct SummaryJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    summary: &'a Summary,
}

/// Writes the summary: a JSON line with every field of [`Summary`], or a few fping-like lines:
///
/// ```text
/// 131072 hosts: 131070 up, 2 down, 0 unknown (60 windows)
/// probes: 15728640 sent, 15728400 answered, 0.00% loss
/// rtt: min 0.012 ms, avg 0.031 ms, max 1.204 ms, p99 0.090 ms (131070 hosts with a known rtt)
/// ```
///
/// followed by `late rounds: N` when the prober fell behind and a `memory:` line when the caller
/// filled in either memory figure. Without any rtt sample the third line is `rtt: none`.
pub fn write_summary(out: &mut impl Write, format: Format, summary: &Summary) -> io::Result<()> {
    match format {
        Format::Json => write_json_line(
            out,
            &SummaryJson {
                kind: "summary",
                summary,
            },
        ),
        Format::Text => out.write_all(summary_text(summary).as_bytes()),
    }
}

fn summary_text(s: &Summary) -> String {
    let mut text = format!(
        "{}: {} up, {} down, {} unknown ({})\n",
        plural(s.hosts, "host", "hosts"),
        s.up,
        s.down,
        s.unknown,
        plural(u64::from(s.windows), "window", "windows"),
    );
    text.push_str(&format!(
        "probes: {} sent, {} answered, {:.2}% loss\n",
        s.sent,
        s.answered,
        s.loss * 100.0
    ));
    match (s.rtt_min_us, s.rtt_avg_us, s.rtt_max_us, s.rtt_p99_us) {
        (Some(min), Some(avg), Some(max), Some(p99)) => text.push_str(&format!(
            "rtt: min {} ms, avg {:.3} ms, max {} ms, p99 {} ms ({} with a known rtt)\n",
            ms(min),
            avg / 1000.0,
            ms(max),
            ms(p99),
            plural(s.rtt_known, "host", "hosts"),
        )),
        _ => text.push_str("rtt: none\n"),
    }
    if s.late_rounds > 0 {
        text.push_str(&format!(
            "late rounds: {} (the prober fell behind its schedule)\n",
            s.late_rounds
        ));
    }
    let kib = |v: Option<u64>| v.map_or("unknown".to_string(), |v| format!("{v} KiB"));
    if s.peak_rss_kib.is_some() || s.map_kib.is_some() {
        text.push_str(&format!(
            "memory: peak rss {}, maps {}\n",
            kib(s.peak_rss_kib),
            kib(s.map_kib)
        ));
    }
    text
}

/// fping's exit status for a run: 0 when every host is up, 1 when any host is down or unknown
/// (an unanswered host is unreachable). Usage (2) and system (3) failures never get this far.
pub fn exit_code(summary: &Summary) -> u8 {
    if summary.down == 0 && summary.unknown == 0 && summary.up == summary.hosts {
        0
    } else {
        1
    }
}

fn write_json_line(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    let mut buf = serde_json::to_vec(value)?;
    buf.push(b'\n');
    out.write_all(&buf)
}

/// Microseconds as milliseconds with three decimals, exactly (123 → `0.123`).
fn ms(us: u64) -> String {
    format!("{}.{:03}", us / 1000, us % 1000)
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// RFC 3339 UTC time with milliseconds. humantime panics on times before 1970 and fails after
/// year 9999, so a wild clock is clamped into that range instead of killing the monitor.
fn rfc3339_millis(at: SystemTime) -> String {
    // 9999-12-31T23:59:59.999Z
    let last = UNIX_EPOCH + Duration::new(253_402_300_799, 999_000_000);
    humantime::format_rfc3339_millis(at.clamp(UNIX_EPOCH, last)).to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::probe::stats::Stats;

    fn at() -> SystemTime {
        humantime::parse_rfc3339("2026-11-25T15:00:00.123Z").unwrap()
    }

    fn text(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut out = Vec::new();
        f(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn json(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> Value {
        let out = text(f);
        assert!(out.ends_with('\n'), "{out:?}");
        assert_eq!(out.lines().count(), 1, "{out:?}");
        serde_json::from_str(&out).unwrap()
    }

    fn state(rtt_us: Option<u64>) -> StateLine {
        StateLine {
            host: "198.18.0.5".parse().unwrap(),
            from: State::Up,
            to: State::Down,
            window: 12,
            at: at(),
            rtt_us,
        }
    }

    fn summary() -> Summary {
        Summary {
            hosts: 131_072,
            up: 131_070,
            down: 2,
            unknown: 0,
            windows: 60,
            sent: 15_728_640,
            answered: 15_728_400,
            loss: 240.0 / 15_728_640.0,
            rtt_known: 131_070,
            rtt_min_us: Some(12),
            rtt_avg_us: Some(31.4),
            rtt_max_us: Some(1204),
            rtt_p99_us: Some(90),
            late_rounds: 0,
            peak_rss_kib: None,
            map_kib: None,
        }
    }

    #[test]
    fn report_state_text() {
        assert_eq!(
            text(|o| write_state(o, Format::Text, &state(None))),
            "2026-11-25T15:00:00.123Z window 12: 198.18.0.5 UP -> DOWN\n"
        );
        assert_eq!(
            text(|o| write_state(o, Format::Text, &state(Some(123)))),
            "2026-11-25T15:00:00.123Z window 12: 198.18.0.5 UP -> DOWN rtt 0.123 ms\n"
        );
        assert_eq!(
            text(|o| write_state(o, Format::Text, &state(Some(61_204_005)))),
            "2026-11-25T15:00:00.123Z window 12: 198.18.0.5 UP -> DOWN rtt 61204.005 ms\n"
        );
    }

    #[test]
    fn report_state_json() {
        let v = json(|o| write_state(o, Format::Json, &state(Some(123))));
        assert_eq!(
            v,
            serde_json::json!({
                "type": "state",
                "host": "198.18.0.5",
                "from": "UP",
                "to": "DOWN",
                "window": 12,
                "time": "2026-11-25T15:00:00.123Z",
                "rtt_us": 123,
            })
        );
        let out = text(|o| write_state(o, Format::Json, &state(None)));
        assert!(out.starts_with("{\"type\":\"state\","), "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["rtt_us"], Value::Null);
    }

    #[test]
    fn report_state_survives_a_wild_clock() {
        let mut line = state(None);
        line.at = UNIX_EPOCH - Duration::from_secs(1);
        assert!(
            text(|o| write_state(o, Format::Text, &line)).starts_with("1970-01-01T00:00:00.000Z")
        );
        line.at = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert!(
            text(|o| write_state(o, Format::Text, &line)).starts_with("9999-12-31T23:59:59.999Z")
        );
    }

    #[test]
    fn report_window_is_json_only() {
        let line = WindowCounts {
            window: 3,
            up: 10,
            down: 1,
            unknown: 2,
            sent: 200,
            answered: 150,
        };
        assert_eq!(text(|o| write_window(o, Format::Text, &line)), "");
        let out = text(|o| write_window(o, Format::Json, &line));
        assert!(out.starts_with("{\"type\":\"window\","), "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "window", "window": 3, "up": 10, "down": 1, "unknown": 2,
                "sent": 200, "answered": 150, "loss": 0.25,
            })
        );
    }

    #[test]
    fn report_summary_text() {
        assert_eq!(
            text(|o| write_summary(o, Format::Text, &summary())),
            "131072 hosts: 131070 up, 2 down, 0 unknown (60 windows)\n\
             probes: 15728640 sent, 15728400 answered, 0.00% loss\n\
             rtt: min 0.012 ms, avg 0.031 ms, max 1.204 ms, p99 0.090 ms \
             (131070 hosts with a known rtt)\n"
        );
        let one = Summary {
            hosts: 1,
            up: 0,
            down: 1,
            unknown: 0,
            windows: 1,
            sent: 4,
            answered: 1,
            loss: 0.75,
            rtt_known: 1,
            rtt_min_us: Some(2500),
            rtt_avg_us: Some(2500.0),
            rtt_max_us: Some(2500),
            rtt_p99_us: Some(2500),
            late_rounds: 3,
            peak_rss_kib: Some(20_480),
            map_kib: None,
        };
        assert_eq!(
            text(|o| write_summary(o, Format::Text, &one)),
            "1 host: 0 up, 1 down, 0 unknown (1 window)\n\
             probes: 4 sent, 1 answered, 75.00% loss\n\
             rtt: min 2.500 ms, avg 2.500 ms, max 2.500 ms, p99 2.500 ms (1 host with a known rtt)\n\
             late rounds: 3 (the prober fell behind its schedule)\n\
             memory: peak rss 20480 KiB, maps unknown\n"
        );
    }

    #[test]
    fn report_summary_json_has_every_field() {
        let mut s = summary();
        s.map_kib = Some(4096);
        let out = text(|o| write_summary(o, Format::Json, &s));
        assert!(out.starts_with("{\"type\":\"summary\","), "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "summary",
                "hosts": 131072, "up": 131070, "down": 2, "unknown": 0, "windows": 60,
                "sent": 15728640, "answered": 15728400, "loss": 240.0 / 15_728_640.0,
                "rtt_known": 131070, "rtt_min_us": 12, "rtt_avg_us": 31.4, "rtt_max_us": 1204,
                "rtt_p99_us": 90, "late_rounds": 0, "peak_rss_kib": null, "map_kib": 4096,
            })
        );
    }

    #[test]
    fn report_empty_stats() {
        let s = Stats::new().summary(5, 0, 0, 5, 0, 0);
        assert_eq!(s.loss, 0.0);
        assert_eq!(s.rtt_min_us, None);
        assert_eq!(s.rtt_avg_us, None);
        assert_eq!(s.rtt_max_us, None);
        assert_eq!(s.rtt_p99_us, None);
        assert_eq!(
            text(|o| write_summary(o, Format::Text, &s)),
            "5 hosts: 0 up, 0 down, 5 unknown (0 windows)\n\
             probes: 0 sent, 0 answered, 0.00% loss\n\
             rtt: none\n"
        );
        let v = json(|o| write_summary(o, Format::Json, &s));
        assert_eq!(v["rtt_p99_us"], Value::Null);
        assert_eq!(v["rtt_avg_us"], Value::Null);
        assert_eq!(v["loss"], 0.0);
    }

    #[test]
    fn report_exit_codes() {
        let mut s = summary();
        assert_eq!(exit_code(&s), 1);
        s.up = 131_072;
        s.down = 0;
        assert_eq!(exit_code(&s), 0);
        s.up = 131_071;
        s.unknown = 1;
        assert_eq!(exit_code(&s), 1);
        s.unknown = 0;
        assert_eq!(exit_code(&s), 1, "a host in no state is not up");
    }

    #[test]
    fn report_writes_whole_lines() {
        /// Records each write call, to check one line goes out in one call.
        struct Calls(Vec<Vec<u8>>);
        impl Write for Calls {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.push(buf.to_vec());
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut calls = Calls(Vec::new());
        write_state(&mut calls, Format::Json, &state(Some(1))).unwrap();
        write_state(&mut calls, Format::Text, &state(Some(1))).unwrap();
        assert_eq!(calls.0.len(), 2);
        assert!(calls.0.iter().all(|c| c.ends_with(b"\n")));
    }
}
