//! A timer wheel of 100-microsecond buckets: what is due when (pure; time is an argument).
//!
//! The probe loop files one check per host and probe here and takes out, at each wake-up,
//! everything whose time has come: a push and a pop per check, and one wake-up per busy
//! bucket however many hosts fall in it.

use std::{collections::BTreeMap, time::Duration};

use tokio::time::Instant;

pub struct Wheel<T> {
    origin: Instant,
    buckets: BTreeMap<u64, Vec<T>>,
    len: usize,
    /// Emptied buckets, kept for their capacity: a round files the same numbers of items
    /// again and again, so after the first rounds filing allocates nothing.
    spare: Vec<Vec<T>>,
}

const TICK: Duration = Duration::from_micros(100);
const TICK_NS: u64 = 100_000;
/// Emptied buckets kept at most: more than a round has (480 batches at most).
const MAX_SPARE: usize = 1024;

/// Nanoseconds of `d` (saturating; 584 years), without 128-bit division.
fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

impl<T> Wheel<T> {
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            buckets: BTreeMap::new(),
            len: 0,
            spare: Vec::new(),
        }
    }

    /// The bucket `at` falls in, rounded up: nothing is ever taken out early.
    fn tick_of(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.origin)).div_ceil(TICK_NS)
    }

    fn time_of(&self, tick: u64) -> Instant {
        self.origin + TICK * u32::try_from(tick).unwrap_or(u32::MAX)
    }

    /// Files `item` for `at`.
    pub fn push(&mut self, at: Instant, item: T) {
        let tick = self.tick_of(at);
        let spare = &mut self.spare;
        self.buckets
            .entry(tick)
            .or_insert_with(|| spare.pop().unwrap_or_default())
            .push(item);
        self.len += 1;
    }

    /// When the earliest item is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.buckets.keys().next().map(|tick| self.time_of(*tick))
    }

    /// Moves every item due at `now` (or before) into `out`, oldest bucket first.
    pub fn take_due(&mut self, now: Instant, out: &mut Vec<T>) {
        // Bucket `tick` is due `tick` TICKs after the origin.
        let limit = nanos(now.saturating_duration_since(self.origin)) / TICK_NS;
        while let Some(entry) = self.buckets.first_entry() {
            if *entry.key() > limit {
                break;
            }
            let mut items = entry.remove();
            self.len -= items.len();
            out.append(&mut items);
            if self.spare.len() < MAX_SPARE {
                self.spare.push(items);
            }
        }
    }

    /// Keeps the items `keep` returns, changed as it says (a reload re-indexes hosts).
    pub fn retain_map(&mut self, mut keep: impl FnMut(T) -> Option<T>) {
        let buckets = std::mem::take(&mut self.buckets);
        self.len = 0;
        for (tick, items) in buckets {
            let kept: Vec<T> = items.into_iter().filter_map(&mut keep).collect();
            if !kept.is_empty() {
                self.len += kept.len();
                self.buckets.insert(tick, kept);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn items_come_out_once_due_in_time_order() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        w.push(t0 + ms(30), "c");
        w.push(t0 + ms(10), "a");
        w.push(t0 + ms(10) + Duration::from_micros(30), "b");
        assert_eq!(w.len, 3);
        assert_eq!(w.next_due(), Some(t0 + ms(10)));
        let mut out = Vec::new();
        w.take_due(t0 + ms(9), &mut out);
        assert!(out.is_empty());
        w.take_due(t0 + ms(10), &mut out);
        assert_eq!(out, ["a"]);
        // 10.03 ms is filed at 10.1 ms: never early.
        assert_eq!(w.next_due(), Some(t0 + Duration::from_micros(10_100)));
        w.take_due(t0 + Duration::from_micros(10_099), &mut out);
        assert_eq!(out, ["a"]);
        w.take_due(t0 + Duration::from_micros(10_100), &mut out);
        assert_eq!(out, ["a", "b"]);
        w.take_due(t0 + ms(100), &mut out);
        assert_eq!(out, ["a", "b", "c"]);
        assert_eq!(w.len, 0);
        assert_eq!(w.next_due(), None);
    }

    #[test]
    fn items_in_the_past_are_due_at_once() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0 + ms(5));
        w.push(t0, 1);
        let mut out = Vec::new();
        w.take_due(t0 + ms(5), &mut out);
        assert_eq!(out, [1]);
    }

    #[test]
    fn retain_map_renumbers_and_drops() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        for i in 0..6u32 {
            w.push(t0 + ms(u64::from(i)), i);
        }
        w.retain_map(|i| (i % 2 == 0).then_some(i * 10));
        assert_eq!(w.len, 3);
        let mut out = Vec::new();
        w.take_due(t0 + ms(10), &mut out);
        assert_eq!(out, [0, 20, 40]);
    }
}
