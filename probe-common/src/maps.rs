//! Values stored in the kernel maps, shared by both sides.
//!
//! Map names are the static names in `probe-ebpf`; userspace looks them up by these constants.

/// Single-entry array: what the program accepts right now.
pub const CONFIG_MAP: &str = "CONFIG";
/// Array of the monitored IPv4 addresses as host-order `u32`, sorted ascending; a host's index
/// here is its index in [`SLOTS_MAP`]. Memory-mapped by userspace, which fills it at start-up
/// and rewrites it on reload. Only the first [`ProbeConfig::hosts`] entries are in use.
pub const ADDRS_MAP: &str = "ADDRS";
/// Array of [`HostSlot`], one per monitored host; memory-mapped by userspace, which reads every
/// host's counters without a system call.
pub const SLOTS_MAP: &str = "SLOTS";
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

/// What the program accepts right now; userspace rewrites it at every window boundary.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// ICMP identifier of our echo requests (low 16 bits).
    pub ident: u32,
    /// Current window number; replies carrying any other window are stale.
    pub window: u32,
    /// Random cookie of the current window; replies without it are forged or stale.
    pub cookie: u32,
    /// Zero unless `enabled` is set: before the first window, and while userspace rewrites
    /// the host tables, the program counts nothing.
    pub enabled: u32,
    /// Entries of [`ADDRS_MAP`] (and [`SLOTS_MAP`]) in use; the maps may be larger, leaving
    /// room for hosts added on reload.
    pub hosts: u32,
}

/// Per-host counters, written by the program, read in bulk by userspace. 8 bytes a host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostSlot {
    /// Replies counted since the host was added (wraps; userspace takes differences).
    pub total_replies: u32,
    /// Round-trip time of the last counted reply, in nanoseconds (saturates at ~4.3 s).
    pub rtt_ns: u32,
}

impl HostSlot {
    /// Records one valid reply, received at `now_ns` for a probe sent at `sent_ns`.
    #[inline(always)]
    pub fn record_reply(&mut self, now_ns: u64, sent_ns: u64) {
        self.total_replies = self.total_replies.wrapping_add(1);
        let rtt = now_ns.saturating_sub(sent_ns);
        self.rtt_ns = if rtt > u64::from(u32::MAX) {
            u32::MAX
        } else {
            rtt as u32
        };
    }
}

/// A binary search for `addr` over a sorted address table, one step at a time, so the XDP
/// program can run each step as a `bpf_loop` callback: the verifier then checks one step once
/// instead of every path through the whole search.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Search {
    pub addr: u32,
    pub lo: u32,
    pub hi: u32,
    /// Index + 1 once found; 0 while not (yet) found.
    pub found: u32,
}

impl Search {
    /// A search for `addr` among the first `len` entries.
    pub const fn new(addr: u32, len: u32) -> Self {
        Self {
            addr,
            lo: 0,
            hi: len,
            found: 0,
        }
    }

    /// One step, looking entries up with `get`; false when the search is over.
    #[inline(always)]
    pub fn step(&mut self, get: impl Fn(u32) -> Option<u32>) -> bool {
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
pub fn find_host(addr: u32, len: u32, get: impl Fn(u32) -> Option<u32>) -> Option<u32> {
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
    /// Our identifier and magic, this window, but the wrong cookie (forged).
    WrongCookie = 1,
    /// Our identifier and magic, but another window (late or replayed).
    StaleWindow = 2,
    /// A valid reply from an address we do not monitor.
    UnknownHost = 3,
}

impl Stat {
    pub const COUNT: u32 = 4;
    pub const ALL: [Stat; Self::COUNT as usize] = [
        Stat::Counted,
        Stat::WrongCookie,
        Stat::StaleWindow,
        Stat::UnknownHost,
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of integers without padding.
    unsafe impl aya::Pod for super::ProbeConfig {}
    unsafe impl aya::Pod for super::HostSlot {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_values_have_no_padding() {
        assert_eq!(core::mem::size_of::<ProbeConfig>(), 20);
        assert_eq!(core::mem::size_of::<HostSlot>(), 8);
    }

    #[test]
    fn binary_search_finds_every_host_and_nothing_else() {
        let table: [u32; 7] = [3, 10, 11, 40, 1000, 1001, u32::MAX];
        let get = |i: u32| table.get(i as usize).copied();
        for (i, addr) in table.iter().enumerate() {
            assert_eq!(find_host(*addr, 7, get), Some(i as u32));
        }
        for missing in [0, 4, 12, 999, 1002, u32::MAX - 1] {
            assert_eq!(find_host(missing, 7, get), None);
        }
        assert_eq!(find_host(3, 0, get), None);
        // Only the first `len` entries count.
        assert_eq!(find_host(1000, 4, get), None);
    }

    #[test]
    fn the_search_is_long_enough_for_the_largest_table() {
        let len = MAX_HOSTS;
        let get = |i: u32| Some(i * 2);
        for addr in [0, 2, (len - 1) * 2, len, len + 2] {
            assert_eq!(find_host(addr, len, get), Some(addr / 2), "{addr}");
        }
        assert_eq!(find_host(len * 2 + 1, len, get), None);
    }

    #[test]
    fn each_reply_is_counted_with_its_rtt() {
        let mut slot = HostSlot::default();
        slot.record_reply(1_000, 400);
        slot.record_reply(2_000, 1_500);
        assert_eq!(slot.total_replies, 2);
        assert_eq!(slot.rtt_ns, 500);
        slot.record_reply(3_000, 2_900);
        assert_eq!((slot.total_replies, slot.rtt_ns), (3, 100));
        slot.record_reply(10_000_000_000, 1);
        assert_eq!(slot.rtt_ns, u32::MAX, "saturates");
        slot.total_replies = u32::MAX;
        slot.record_reply(10, 5);
        assert_eq!(slot.total_replies, 0, "wraps");
    }

    #[test]
    fn a_timestamp_from_the_future_gives_zero_rtt_not_a_wrap() {
        let mut slot = HostSlot::default();
        slot.record_reply(10, 20);
        assert_eq!(slot.rtt_ns, 0);
    }
}
