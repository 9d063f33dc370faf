//! Output of `xdprobe monitor`: state changes as they happen, per-window lines and the final
//! summary, as text for people or as JSON lines for scripts, plus the run's statistics and the
//! exit code.
//!
//! Everything here is pure: the writers take the `Write` to print to and build each line in
//! memory first, so one line is one `write_all` and lines from different tasks sharing stdout
//! cannot interleave. There is no global state; [`Stats`] is owned by the caller.

use std::{
    io::{self, Write},
    net::Ipv4Addr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hdrhistogram::Histogram;
use serde::Serialize;

/// How `monitor` prints: fping-like text, or one JSON object per line (`--json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// A host changed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateLine<'a> {
    pub host: Ipv4Addr,
    /// State names as the prober spells them (`UP`, `DOWN`, `UNKNOWN`).
    pub from: &'a str,
    pub to: &'a str,
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
struct StateJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    host: Ipv4Addr,
    from: &'a str,
    to: &'a str,
    window: u32,
    time: String,
    rtt_us: Option<u64>,
}

/// Counts at the end of one window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct WindowLine {
    pub window: u32,
    /// Hosts in each state at the end of the window.
    pub up: u64,
    pub down: u64,
    pub unknown: u64,
    /// Probes sent and replies counted during the window.
    pub sent: u64,
    pub answered: u64,
}

/// Writes one window's counts as a JSON line `{"type":"window","window":..,"up":..,"down":..,
/// "unknown":..,"sent":..,"answered":..,"loss":..}` (`loss` as in [`Summary::loss`]). In text
/// mode it writes nothing: like fping, text output only shows changes and the final summary.
pub fn write_window(out: &mut impl Write, format: Format, line: &WindowLine) -> io::Result<()> {
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
    line: &'a WindowLine,
    loss: f64,
}

/// Histogram bounds: 1 µs (the clock's useful resolution) to 60 s (far beyond any window), with
/// 3 significant figures (0.1% error), which takes about 200 KiB.
const RTT_LOW_US: u64 = 1;
const RTT_HIGH_US: u64 = 60_000_000;
const RTT_SIGFIG: u8 = 3;

/// Totals over the whole run, for the summary. Round-trip times go into a fixed-size HDR
/// histogram so that memory does not grow with the number of hosts or samples; min, max and
/// average are also kept exactly.
#[derive(Clone, Debug)]
pub struct Stats {
    sent: u64,
    answered: u64,
    late_rounds: u64,
    rtt: Histogram<u64>,
    rtt_min_us: u64,
    rtt_max_us: u64,
    rtt_sum_us: u128,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        // Constant, valid bounds (checked by a test): creation cannot fail.
        let rtt = Histogram::new_with_bounds(RTT_LOW_US, RTT_HIGH_US, RTT_SIGFIG)
            .expect("constant histogram bounds are valid");
        Self {
            sent: 0,
            answered: 0,
            late_rounds: 0,
            rtt,
            rtt_min_us: u64::MAX,
            rtt_max_us: 0,
            rtt_sum_us: 0,
        }
    }

    pub fn add_sent(&mut self, n: u64) {
        self.sent = self.sent.saturating_add(n);
    }

    pub fn add_answered(&mut self, n: u64) {
        self.answered = self.answered.saturating_add(n);
    }

    /// Counts rounds that started later than scheduled (the prober fell behind).
    pub fn add_late_rounds(&mut self, n: u64) {
        self.late_rounds = self.late_rounds.saturating_add(n);
    }

    /// Records one round-trip time, rounded to the nearest microsecond and clamped to
    /// 1 µs..=60 s: a reply faster than the clock can tell counts as 1 µs, and an absurd value
    /// (a clock step) saturates instead of being dropped or failing.
    pub fn add_rtt(&mut self, ns: u64) {
        let us = (ns.saturating_add(500) / 1000).clamp(RTT_LOW_US, RTT_HIGH_US);
        self.rtt.saturating_record(us);
        self.rtt_min_us = self.rtt_min_us.min(us);
        self.rtt_max_us = self.rtt_max_us.max(us);
        self.rtt_sum_us += u128::from(us);
    }

    /// The summary of the run so far. Host counts come from the caller, which owns the host
    /// states; `rtt_known` is the number of hosts with a measured rtt. `peak_rss_kib` and
    /// `map_kib` are left `None` for the caller to fill in: measuring them is I/O.
    pub fn summary(
        &self,
        hosts: u64,
        up: u64,
        down: u64,
        unknown: u64,
        windows: u32,
        rtt_known: u64,
    ) -> Summary {
        let samples = self.rtt.len();
        let some = |value| (samples > 0).then_some(value);
        Summary {
            hosts,
            up,
            down,
            unknown,
            windows,
            sent: self.sent,
            answered: self.answered,
            loss: loss(self.sent, self.answered),
            rtt_known,
            rtt_min_us: some(self.rtt_min_us),
            rtt_avg_us: (samples > 0).then(|| self.rtt_sum_us as f64 / samples as f64),
            rtt_max_us: some(self.rtt_max_us),
            rtt_p99_us: some(self.rtt.value_at_quantile(0.99)),
            late_rounds: self.late_rounds,
            peak_rss_kib: None,
            map_kib: None,
        }
    }
}

/// Fraction of probes without a reply, 0.0 to 1.0; 0 when nothing was sent, and never negative
/// when more replies than probes were counted (duplicates, replies to an earlier window).
fn loss(sent: u64, answered: u64) -> f64 {
    if sent == 0 {
        return 0.0;
    }
    1.0 - answered.min(sent) as f64 / sent as f64
}

/// The end-of-run summary; also the JSON `{"type":"summary",...}` object, field for field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub hosts: u64,
    pub up: u64,
    pub down: u64,
    pub unknown: u64,
    pub windows: u32,
    pub sent: u64,
    pub answered: u64,
    /// Fraction of probes without a reply, 0.0 to 1.0 (0 when nothing was sent).
    pub loss: f64,
    /// Hosts with a measured round-trip time.
    pub rtt_known: u64,
    /// Round-trip times over all replies, in microseconds; `None` without any sample.
    pub rtt_min_us: Option<u64>,
    pub rtt_avg_us: Option<f64>,
    pub rtt_max_us: Option<u64>,
    /// 99th percentile, within the histogram's 0.1% precision.
    pub rtt_p99_us: Option<u64>,
    /// Rounds that started later than scheduled.
    pub late_rounds: u64,
    /// Peak resident memory of the process, when the caller measured it.
    pub peak_rss_kib: Option<u64>,
    /// Memory of the BPF maps, when the caller knows it.
    pub map_kib: Option<u64>,
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

    fn state(rtt_us: Option<u64>) -> StateLine<'static> {
        StateLine {
            host: "198.18.0.5".parse().unwrap(),
            from: "UP",
            to: "DOWN",
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
        let line = WindowLine {
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
    fn report_loss() {
        let mut stats = Stats::new();
        stats.add_sent(300);
        stats.add_sent(100);
        stats.add_answered(300);
        assert_eq!(stats.summary(1, 1, 0, 0, 1, 0).loss, 0.25);
        stats.add_answered(200); // late and duplicate replies
        assert_eq!(stats.summary(1, 1, 0, 0, 1, 0).loss, 0.0);
        let mut stats = Stats::new();
        stats.add_sent(7);
        assert_eq!(stats.summary(1, 0, 1, 0, 1, 0).loss, 1.0);
        stats.add_late_rounds(2);
        stats.add_late_rounds(1);
        assert_eq!(stats.summary(1, 0, 1, 0, 1, 0).late_rounds, 3);
    }

    #[test]
    fn report_rtt_statistics() {
        let mut stats = Stats::new();
        for us in 1..=1000u64 {
            stats.add_rtt(us * 1000);
        }
        let s = stats.summary(1000, 1000, 0, 0, 1, 1000);
        assert_eq!(s.rtt_min_us, Some(1));
        assert_eq!(s.rtt_max_us, Some(1000));
        assert_eq!(s.rtt_avg_us, Some(500.5));
        let p99 = s.rtt_p99_us.unwrap();
        assert!((989..=991).contains(&p99), "p99 {p99}");
        assert_eq!(s.rtt_known, 1000);
        assert_eq!((s.peak_rss_kib, s.map_kib), (None, None));
    }

    #[test]
    fn report_rtt_rounds_and_saturates() {
        let mut stats = Stats::new();
        stats.add_rtt(0);
        stats.add_rtt(400);
        let s = stats.summary(1, 1, 0, 0, 1, 1);
        assert_eq!((s.rtt_min_us, s.rtt_max_us), (Some(1), Some(1)));
        stats.add_rtt(1_499);
        stats.add_rtt(u64::MAX);
        stats.add_rtt(3_600_000_000_000);
        let s = stats.summary(1, 1, 0, 0, 1, 1);
        assert_eq!(s.rtt_min_us, Some(1));
        assert_eq!(s.rtt_max_us, Some(60_000_000));
        let p99 = s.rtt_p99_us.unwrap();
        assert!(p99.abs_diff(60_000_000) <= 60_000, "p99 {p99}");
        let mut stats = Stats::new();
        stats.add_rtt(1_500);
        assert_eq!(stats.summary(1, 1, 0, 0, 1, 1).rtt_min_us, Some(2));
    }

    #[test]
    fn report_histogram_bounds_are_valid() {
        assert!(Histogram::<u64>::new_with_bounds(RTT_LOW_US, RTT_HIGH_US, RTT_SIGFIG).is_ok());
        assert_eq!(Stats::default().summary(0, 0, 0, 0, 0, 0).sent, 0);
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
