//! Values stored in the kernel maps, shared by both sides.
//!
//! Map names are the static names in `probe-ebpf`; userspace looks them up by these constants.

/// Single-entry array: what the program accepts right now.
pub const CONFIG_MAP: &str = "CONFIG";
/// Hash map: IPv4 source address (octets as stored in the packet, read as a native `u32`) to
/// the host's index in [`SLOTS_MAP`].
pub const HOSTS_MAP: &str = "HOSTS";
/// Array of [`HostSlot`], one per monitored host.
pub const SLOTS_MAP: &str = "SLOTS";
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
    /// Zero unless `enabled` is set: before the first window the program counts nothing.
    pub enabled: u32,
}

/// Per-host counters, written by the program, read in bulk by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostSlot {
    /// The window of the last counted reply.
    pub window: u32,
    /// Replies counted in `window`.
    pub window_replies: u32,
    /// Replies counted since the host was added (wraps; userspace takes differences).
    pub total_replies: u64,
    /// Round-trip time of the last counted reply, in nanoseconds.
    pub rtt_ns: u64,
    /// `bpf_ktime_get_ns()` when the last reply was counted.
    pub last_reply_ns: u64,
}

impl HostSlot {
    /// Records one valid reply for `window`, received at `now_ns` for a probe sent at `sent_ns`.
    #[inline(always)]
    pub fn record_reply(&mut self, window: u32, now_ns: u64, sent_ns: u64) {
        if self.window != window {
            self.window = window;
            self.window_replies = 0;
        }
        self.window_replies = self.window_replies.wrapping_add(1);
        self.total_replies = self.total_replies.wrapping_add(1);
        self.rtt_ns = now_ns.saturating_sub(sent_ns);
        self.last_reply_ns = now_ns;
    }
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
        assert_eq!(core::mem::size_of::<ProbeConfig>(), 16);
        assert_eq!(core::mem::size_of::<HostSlot>(), 32);
    }

    #[test]
    fn first_reply_of_a_window_resets_the_window_count() {
        let mut slot = HostSlot::default();
        slot.record_reply(5, 1_000, 400);
        slot.record_reply(5, 2_000, 1_500);
        assert_eq!(
            (slot.window, slot.window_replies, slot.total_replies),
            (5, 2, 2)
        );
        assert_eq!(slot.rtt_ns, 500);
        slot.record_reply(6, 3_000, 2_900);
        assert_eq!(
            (slot.window, slot.window_replies, slot.total_replies),
            (6, 1, 3)
        );
        assert_eq!((slot.rtt_ns, slot.last_reply_ns), (100, 3_000));
    }

    #[test]
    fn a_timestamp_from_the_future_gives_zero_rtt_not_a_wrap() {
        let mut slot = HostSlot::default();
        slot.record_reply(1, 10, 20);
        assert_eq!(slot.rtt_ns, 0);
    }
}
