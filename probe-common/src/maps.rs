//! Values stored in the kernel maps, shared by both sides.
//!
//! Map names are the static names in `probe-ebpf`; userspace looks them up by these constants.

use crate::{host::HostKey, mac::Key};

/// Single-entry array: what the program accepts right now.
pub const CONFIG_MAP: &str = "CONFIG";
/// Array of the monitored IPv4 addresses as host-order `u32`, sorted ascending, in two halves
/// of [`ProbeConfig::half`] entries: the program searches the half [`ProbeConfig::generation`]
/// names, so that userspace can write the other one for a reload while counting goes on. A
/// host's index in its half is its index in that half of [`SLOTS_MAP`]. Memory-mapped by
/// userspace.
pub const ADDRS_MAP: &str = "ADDRS";
/// Array of [`HostSlot`], one per monitored host, in two halves like [`ADDRS_MAP`];
/// memory-mapped by userspace, which reads every host's counters without a system call.
pub const SLOTS_MAP: &str = "SLOTS";
/// Array of [`WindowKey`], [`KEY_RING`] entries: the key of window `w` is at `w % KEY_RING`.
pub const KEYS_MAP: &str = "KEYS";
/// Windows whose keys are kept: a reply to a probe older than this many windows cannot count.
pub const KEY_RING: u32 = 64;
/// Probes of one host whose answers are told apart ([`HostSlot::answered`] has a bit each).
pub const ANSWER_BITS: u32 = u64::BITS;
/// The most hosts one program can watch; the kernel's binary search is sized for it.
pub const MAX_HOSTS: u32 = 1 << 20;
/// Binary-search steps needed for [`MAX_HOSTS`] entries.
pub const SEARCH_STEPS: u32 = 21;
/// Per-CPU array of `u64` counters, indexed by [`Stat`].
pub const STATS_MAP: &str = "STATS";
/// The XDP program's name.
pub const PROGRAM_NAME: &str = "xdprobe";
/// aya-log's load-time level switch (0 = off: the verifier prunes every log call).
pub const LOG_LEVEL_GLOBAL: &str = "AYA_LOG_LEVEL";

/// What the program accepts right now. The program copies it once per packet; userspace
/// rewrites it when a round begins (`seq_max`) and on reload (`generation`, `hosts`). Any mix
/// of an old and a new value is safe: a reply can only fail to count that way, never count
/// wrongly (the MAC decides that).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// ICMP identifier of our echo requests (low 16 bits).
    pub ident: u32,
    /// Zero: count nothing (before the first window).
    pub enabled: u32,
    /// The newest probe sequence that may have been sent. A reply to a later one cannot be
    /// ours; one to a sequence [`ANSWER_BITS`] or more older shares its answer bit with a
    /// newer probe, so it no longer counts.
    pub seq_max: u32,
    /// Which half of [`ADDRS_MAP`] and [`SLOTS_MAP`] is in use: 0 or 1.
    pub generation: u32,
    /// Hosts in use in that half.
    pub hosts: u32,
    /// Entries in each half (the maps hold twice as many).
    pub half: u32,
    /// A reply this long after its probe's send time no longer counts.
    pub timeout_ns: u64,
}

/// The key of one window. `valid` is 0 until userspace wrote it (a zeroed entry is no key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowKey {
    pub window: u32,
    pub valid: u32,
    pub key: Key,
}

/// Per-host counters, written by the program, read in bulk by userspace. 24 bytes a host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostSlot {
    /// Bit `seq % 64` is set once probe `seq` was answered; userspace clears a round's bits
    /// before it sends that round. Set with an atomic test-and-set: a replayed reply finds its
    /// bit set and counts no more.
    pub answered: u64,
    /// Replies counted since the host was added (wraps; userspace takes differences).
    pub total_replies: u32,
    /// Round-trip time of the last counted reply, in nanoseconds (saturates at ~4.3 s).
    pub rtt_ns: u32,
    /// The sequence of the last counted reply (which probe `rtt_ns` belongs to).
    pub last_seq: u32,
    pub _pad: u32,
}

/// The answer bit of probe `seq`.
#[inline(always)]
pub const fn answer_bit(seq: u32) -> u64 {
    1 << (seq % ANSWER_BITS)
}

/// The round-trip time to store: nanoseconds, saturating.
#[inline(always)]
pub fn rtt_of(now_ns: u64, sent_ns: u64) -> u32 {
    let rtt = now_ns.saturating_sub(sent_ns);
    if rtt > u64::from(u32::MAX) {
        u32::MAX
    } else {
        rtt as u32
    }
}

/// A binary search for `addr` over a sorted address table, one step at a time: the XDP
/// program runs the steps in a bounded loop, and the host's tests run the very same steps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Search {
    pub addr: HostKey,
    pub lo: u32,
    pub hi: u32,
    /// Index + 1 once found; 0 while not (yet) found.
    pub found: u32,
    /// Where the table starts in its map (the half in use); the caller adds it.
    pub base: u32,
}

impl Search {
    /// A search for `addr` among the first `len` entries.
    pub const fn new(addr: HostKey, len: u32) -> Self {
        Self {
            addr,
            lo: 0,
            hi: len,
            found: 0,
            base: 0,
        }
    }

    /// One step, looking entries up with `get`; false when the search is over.
    #[inline(always)]
    pub fn step(&mut self, get: impl Fn(u32) -> Option<HostKey>) -> bool {
        if self.found != 0 || self.lo >= self.hi {
            return false;
        }
        let mid = self.lo + (self.hi - self.lo) / 2;
        let Some(here) = get(mid) else {
            return false;
        };
        if here == self.addr {
            self.found = mid + 1;
            return false;
        }
        if here < self.addr {
            self.lo = mid + 1;
        } else {
            self.hi = mid;
        }
        true
    }

    pub fn index(&self) -> Option<u32> {
        self.found.checked_sub(1)
    }
}

/// Index of `addr` in the first `len` entries of a sorted address table, looked up with
/// `get(i)`: the search the XDP program runs, in at most [`SEARCH_STEPS`] steps.
pub fn find_host(addr: HostKey, len: u32, get: impl Fn(u32) -> Option<HostKey>) -> Option<u32> {
    let mut search = Search::new(addr, len);
    for _ in 0..SEARCH_STEPS {
        if !search.step(&get) {
            break;
        }
    }
    search.index()
}

/// Indexes of the program's counters in [`STATS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// A valid reply from a monitored host: counted and dropped.
    Counted = 0,
    /// Our identifier and magic, from a monitored host, but a MAC that is not the one we
    /// sent that host (forged, or another host's probe sent back from this address).
    Forged = 1,
    /// Our format, but too late: older than the timeout, its window's key gone, or its
    /// answer bit reused.
    Stale = 2,
    /// Our format from an address we do not monitor.
    UnknownHost = 3,
    /// A valid reply to a probe already answered: a replay or a duplicate, not counted again.
    Replayed = 4,
}

impl Stat {
    pub const COUNT: u32 = 5;
    pub const ALL: [Stat; Self::COUNT as usize] = [
        Stat::Counted,
        Stat::Forged,
        Stat::Stale,
        Stat::UnknownHost,
        Stat::Replayed,
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of integers without padding.
    unsafe impl aya::Pod for super::ProbeConfig {}
    unsafe impl aya::Pod for super::HostSlot {}
    unsafe impl aya::Pod for super::WindowKey {}
    unsafe impl aya::Pod for crate::host::HostKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_values_have_no_padding() {
        assert_eq!(core::mem::size_of::<ProbeConfig>(), 32);
        assert_eq!(core::mem::size_of::<HostSlot>(), 24);
        assert_eq!(core::mem::size_of::<WindowKey>(), 24);
    }

    #[test]
    fn binary_search_finds_every_host_and_nothing_else() {
        let v6 = |lo: u64| HostKey {
            hi: 0x2001_0db8_0000_0000,
            lo,
        };
        let table: [HostKey; 9] = [
            HostKey::v4(3),
            HostKey::v4(10),
            HostKey::v4(11),
            HostKey::v4(40),
            HostKey::v4(1000),
            HostKey::v4(1001),
            HostKey::v4(u32::MAX),
            v6(1),
            v6(u64::MAX),
        ];
        let get = |i: u32| table.get(i as usize).copied();
        for (i, addr) in table.iter().enumerate() {
            assert_eq!(find_host(*addr, 9, get), Some(i as u32));
        }
        for missing in [
            HostKey::v4(0),
            HostKey::v4(4),
            HostKey::v4(12),
            HostKey::v4(999),
            HostKey::v4(1002),
            HostKey::v4(u32::MAX - 1),
            v6(0),
            v6(2),
            HostKey { hi: 1, lo: 3 },
        ] {
            assert_eq!(find_host(missing, 9, get), None, "{missing:?}");
        }
        assert_eq!(find_host(HostKey::v4(3), 0, get), None);
        assert_eq!(find_host(HostKey::v4(1000), 4, get), None);
    }

    #[test]
    fn the_search_is_long_enough_for_the_largest_table() {
        let len = MAX_HOSTS;
        let get = |i: u32| Some(HostKey::v4(i * 2));
        for addr in [0, 2, (len - 1) * 2, len, len + 2] {
            assert_eq!(
                find_host(HostKey::v4(addr), len, get),
                Some(addr / 2),
                "{addr}"
            );
        }
        assert_eq!(find_host(HostKey::v4(len * 2 + 1), len, get), None);
    }

    #[test]
    fn answer_bits_cycle_through_64_sequences_and_wrap_with_u32() {
        assert_eq!(answer_bit(0), 1);
        assert_eq!(answer_bit(63), 1 << 63);
        assert_eq!(answer_bit(64), 1);
        assert_eq!(answer_bit(u32::MAX), 1 << 63);
        assert_eq!(answer_bit(u32::MAX.wrapping_add(1)), 1);
    }

    #[test]
    fn rtts_saturate_and_a_timestamp_from_the_future_is_zero() {
        assert_eq!(rtt_of(1_500, 1_000), 500);
        assert_eq!(rtt_of(10_000_000_000, 1), u32::MAX);
        assert_eq!(rtt_of(10, 20), 0);
    }
}
