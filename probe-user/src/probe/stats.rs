//! Totals over a whole run (probes sent and answered, round-trip times, late rounds) and the
//! summary `monitor` prints from them (pure).

use hdrhistogram::Histogram;
use serde::Serialize;

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
pub fn loss(sent: u64, answered: u64) -> f64 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
