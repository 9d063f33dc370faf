//! fping, the peer: its command line and what it prints.
//!
//! `fping -q -s -C COUNT` prints, on stderr, one line per target with the result of every probe
//! it sent (`198.18.0.1 : 0.05 0.04 - 0.03` or `2001:db8:1::1 : ...`, `-` = no reply), then its
//! global statistics
//! (`N ICMP Echos sent`, ...). It prints both when it has sent everything and also when it gets
//! SIGINT, which is how the bench stops it at the wall-time cap.
use std::{io::BufRead, path::Path};

use anyhow::{Context as _, Result};

use super::farm::Family;

/// The smallest `-i` (ms between any two sends) that can never make fping abort. fping 5.1
/// numbers its probes with 16-bit ICMP sequence numbers (65,535 of them) and will not reuse one
/// within 10 s: sending faster than 65,535 per 10 s ends it at once with "not enough sequence
/// numbers available!" (exit 4) and no results. 10 s / 65,535 = 0.1526 ms.
pub const DEFAULT_INTERVAL_MS: f64 = 0.153;
// At most one send per interval: never more than 65,535 sends in 10 s.
const _: () = assert!(10_000.0 / DEFAULT_INTERVAL_MS <= 65_535.0);

/// fping's fastest legal `-i` for `rate` probes a second: 0 (no pause between sends, every
/// round a burst) while a rate that high uses at most 90 % of the 65,535 sequence numbers in
/// any 10 s, else [`DEFAULT_INTERVAL_MS`] (the rate is then beyond it, see the report's note).
pub fn fastest_interval(rate: f64) -> f64 {
    if rate * 10.0 <= 0.9 * 65_535.0 {
        0.0
    } else {
        DEFAULT_INTERVAL_MS
    }
}

/// The fping arguments for `probes` probes per `window_ms` window over `windows` windows, to
/// every target listed in `hosts_file` (addresses of `family`).
pub fn args(
    family: Family,
    hosts_file: &Path,
    probes: u32,
    window_ms: u64,
    windows: u32,
    interval_ms: f64,
) -> Vec<String> {
    let period_ms = window_ms / u64::from(probes);
    // fping picks the family from the literals by itself; -6 is passed so the report's command
    // line says it. IPv4 runs keep the command line they always had.
    let family_flag = match family {
        Family::V4 => None,
        Family::V6 => Some("-6".to_owned()),
    };
    family_flag
        .into_iter()
        .chain([
            // No per-probe lines while running; per-target results and statistics at the end.
            "-q".into(),
            "-s".into(),
            // Count mode, every probe's result at the end: the same probes per host as xdprobe.
            "-C".into(),
            (u64::from(probes) * u64::from(windows)).to_string(),
            // The same period per host as xdprobe: window / probes.
            "-p".into(),
            period_ms.to_string(),
            "-i".into(),
            interval_ms.to_string(),
            // A probe gets one period to be answered, and no retries.
            "-t".into(),
            period_ms.to_string(),
            "-r".into(),
            "0".into(),
            "-f".into(),
            hosts_file.display().to_string(),
        ])
        .collect()
}

/// What fping reported.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Targets with a result line.
    pub targets: u64,
    /// Targets it never got to send a probe to.
    pub never_probed: u64,
    /// Probes in the per-target lines and replies among them.
    pub listed_sent: u64,
    pub listed_replies: u64,
    /// Targets with `down_after` or more consecutive probes unanswered: what xdprobe would call
    /// DOWN (two failed windows). Every farm host answers, so these are all false.
    pub false_downs: u64,
    /// From `-s`: `ICMP Echos sent` and `ICMP Echo Replies received` (these also count the
    /// probes still in flight when it was stopped, which the per-target lines leave out).
    pub stats_sent: Option<u64>,
    pub stats_replies: Option<u64>,
    /// fping's own error message, e.g. running out of sequence numbers.
    pub error: Option<String>,
}

impl Report {
    pub fn sent(&self) -> u64 {
        self.stats_sent.unwrap_or(self.listed_sent)
    }

    pub fn replies(&self) -> u64 {
        self.stats_replies.unwrap_or(self.listed_replies)
    }
}

/// Reads fping's stderr (stdout is empty with `-q`). `down_after`: consecutive lost probes that
/// count as a false DOWN.
pub fn parse(output: impl BufRead, down_after: u32) -> Result<Report> {
    let mut report = Report::default();
    for line in output.lines() {
        let line = line.context("reading fping's output")?;
        let trimmed = line.trim();
        if let Some(error) = trimmed.strip_prefix("fping error:") {
            report.error = Some(error.trim().to_owned());
        } else if let Some((target, results)) = trimmed.split_once(" :") {
            if target.trim().parse::<std::net::IpAddr>().is_ok() {
                count_target(&mut report, results, down_after);
            }
        } else if let Some(n) = stat(trimmed, "ICMP Echos sent") {
            report.stats_sent = Some(n);
        } else if let Some(n) = stat(trimmed, "ICMP Echo Replies received") {
            report.stats_replies = Some(n);
        }
    }
    Ok(report)
}

/// One target's `-C` results: `0.05 0.04 - 0.03` (or nothing if it was never probed).
fn count_target(report: &mut Report, results: &str, down_after: u32) {
    report.targets += 1;
    let mut sent = 0u64;
    let mut run = 0u32;
    let mut longest_run = 0u32;
    for result in results.split_whitespace() {
        sent += 1;
        if result == "-" {
            run += 1;
            longest_run = longest_run.max(run);
        } else {
            report.listed_replies += 1;
            run = 0;
        }
    }
    report.listed_sent += sent;
    if sent == 0 {
        report.never_probed += 1;
    } else if longest_run >= down_after {
        report.false_downs += 1;
    }
}

/// `   40960 ICMP Echos sent` -> 40960.
fn stat(line: &str, label: &str) -> Option<u64> {
    let (number, rest) = line.split_once(char::is_whitespace)?;
    (rest.trim() == label)
        .then(|| number.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fastest_interval_is_zero_while_sequence_numbers_last() {
        // 256 and 2,048 hosts at 2 probes/s: 5,120 and 40,960 sequence numbers in 10 s.
        assert_eq!(fastest_interval(512.0), 0.0);
        assert_eq!(fastest_interval(4096.0), 0.0);
        // 4,096 hosts: 81,920 in 10 s, more than there are.
        assert_eq!(fastest_interval(8192.0), DEFAULT_INTERVAL_MS);
        assert_eq!(fastest_interval(5_900.0), DEFAULT_INTERVAL_MS);
    }

    #[test]
    fn command_line_matches_xdprobes_schedule() {
        let v4 = args(
            Family::V4,
            Path::new("/tmp/hosts"),
            2,
            1000,
            20,
            DEFAULT_INTERVAL_MS,
        );
        assert_eq!(
            v4.join(" "),
            "-q -s -C 40 -p 500 -i 0.153 -t 500 -r 0 -f /tmp/hosts"
        );
        let v6 = args(Family::V6, Path::new("/tmp/hosts6"), 2, 1000, 20, 0.0);
        assert_eq!(
            v6.join(" "),
            "-6 -q -s -C 40 -p 500 -i 0 -t 500 -r 0 -f /tmp/hosts6"
        );
    }

    const FINISHED: &str = "\
198.18.0.1     : 0.059 0.044 0.050 0.051
198.18.0.2     : 0.044 - - 0.031
198.18.0.3     : - - - -
198.18.0.4     : 0.005 - - -

       4 targets
       3 alive
       1 unreachable
       0 unknown addresses

       9 timeouts (waiting for response)
      16 ICMP Echos sent
       7 ICMP Echo Replies received
       0 other ICMP received

 0.002 ms (min round trip time)
 0.030 ms (avg round trip time)
 0.059 ms (max round trip time)
        1.513 sec (elapsed real time)
";

    #[test]
    fn counts_probes_replies_and_runs_of_losses() {
        let report = parse(FINISHED.as_bytes(), 4).unwrap();
        assert_eq!(report.targets, 4);
        assert_eq!(report.never_probed, 0);
        assert_eq!(report.listed_sent, 16);
        assert_eq!(report.listed_replies, 7);
        // Only 198.18.0.3 lost 4 in a row; 198.18.0.4 lost 3.
        assert_eq!(report.false_downs, 1);
        assert_eq!((report.sent(), report.replies()), (16, 7));
        assert_eq!(report.error, None);
        assert_eq!(parse(FINISHED.as_bytes(), 3).unwrap().false_downs, 2);
    }

    #[test]
    fn counts_ipv6_targets_too() {
        let out = "\
2001:db8:1::1  : 0.031 0.029 0.030 0.027
2001:db8:1::2  : 0.022 - - -
2001:db8:1::   : - - - -

       3 targets
      12 ICMP Echos sent
       5 ICMP Echo Replies received
";
        let report = parse(out.as_bytes(), 4).unwrap();
        assert_eq!(report.targets, 3);
        assert_eq!((report.listed_sent, report.listed_replies), (12, 5));
        assert_eq!(report.false_downs, 1);
        assert_eq!((report.sent(), report.replies()), (12, 5));
    }

    #[test]
    fn a_stopped_run_lists_targets_never_probed() {
        let stopped = "\
198.18.0.1     : 0.059
198.18.0.2     : 0.044
198.18.0.3     :
198.18.0.4     :

       4 targets
       3 ICMP Echos sent
       2 ICMP Echo Replies received
";
        let report = parse(stopped.as_bytes(), 4).unwrap();
        assert_eq!(report.targets, 4);
        assert_eq!(report.never_probed, 2);
        assert_eq!(report.listed_sent, 2);
        // The statistics include the probe in flight at SIGINT.
        assert_eq!((report.sent(), report.replies()), (3, 2));
        assert_eq!(report.false_downs, 0);
    }

    #[test]
    fn reports_fpings_own_error() {
        let out =
            "fping error: not enough sequence numbers available! (expire_timeout=10000000000, \
                   host_nr=16383, ping_count=3, seqmap_next_id=0)\n";
        let report = parse(out.as_bytes(), 4).unwrap();
        assert!(report
            .error
            .as_deref()
            .unwrap()
            .starts_with("not enough sequence numbers"));
        assert_eq!(report.sent(), 0);
    }
}
