//! XDP program: recognises echo replies to our probes and counts them per monitored host.
//!
//! Parse Ethernet (and up to two 802.1Q/802.1ad tags) -> IPv4 -> ICMP echo reply, or IPv6 (up to
//! four hop-by-hop, routing and destination-options headers skipped; fragments left to the
//! stack) -> ICMPv6 echo reply -> our `ProbeHeader`; find the host it comes from; judge it with the shared rule (timely, and the
//! MAC we sent that host under its window's key); set its probe's answer bit atomically and, if
//! the bit was clear, count it in the host's `HostSlot` and consume the frame (`XDP_DROP`).
//! Everything else passes untouched.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use core::{
        intrinsics::{atomic_or, atomic_xadd, AtomicOrdering},
        mem,
    };

    use aya_ebpf::{
        bindings::xdp_action,
        bindings::BPF_F_MMAPABLE,
        helpers::bpf_ktime_get_ns,
        macros::{map, xdp},
        maps::{Array, PerCpuArray},
        programs::XdpContext,
    };
    use aya_log_ebpf::debug;
    use network_types::{
        icmp::Icmpv4Hdr,
        ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
    };
    use probe_common::{
        host::HostKey,
        maps::{
            answer_bit, rtt_of, HostSlot, ProbeConfig, Search, Stat, WindowKey, KEY_RING,
            SEARCH_STEPS,
        },
        verdict::{judge, ours, Verdict},
        wire::{
            ipv6_payload, Ipv6Payload, ProbeHeader, ETH_HDR_LEN, ETH_P_IPV4, ETH_P_IPV6,
            ICMPV6_ECHO_REPLY, ICMP_ECHO_REPLY, ICMP_HDR_LEN,
        },
    };

    #[map]
    static CONFIG: Array<ProbeConfig> = Array::with_max_entries(1, 0);

    /// Each window's MAC key, at `window % KEY_RING`. Written by userspace.
    #[map]
    static KEYS: Array<WindowKey> = Array::with_max_entries(KEY_RING, 0);

    /// Sorted keys of the monitored hosts (IPv4 first, then IPv6; 16 bytes a host), in two halves of
    /// `ProbeConfig::half`: the half `generation` names is in use, its first `hosts` entries.
    /// Sized and written by userspace.
    #[map]
    static ADDRS: Array<HostKey> = Array::with_max_entries(1, BPF_F_MMAPABLE);

    /// One slot per monitored host, same index as in `ADDRS` (24 bytes a host). Sized by
    /// userspace at load time, which reads it through a memory mapping.
    #[map]
    static SLOTS: Array<HostSlot> = Array::with_max_entries(1, BPF_F_MMAPABLE);

    #[map]
    static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT, 0);

    /// 802.1Q and 802.1ad tags: a frame may carry up to two before its EtherType.
    const ETH_P_8021Q: u16 = 0x8100;
    const ETH_P_8021AD: u16 = 0x88a8;
    const VLAN_TAG_LEN: usize = 4;

    /// What to do with the frame once parsed.
    enum Action {
        Consume,
        Pass,
    }

    /// Packet access went out of bounds or the frame is not one we look at.
    struct Skip;

    /// `debug!` with the host's address as its first argument, shown as IPv4 or IPv6 (the
    /// format's first `{:i}`).
    macro_rules! debug_host {
        ($ctx:expr, $fmt:literal, $addr:expr $(, $arg:expr)*) => {{
            let addr: HostKey = $addr;
            if addr.is_ipv4_space() {
                debug!($ctx, $fmt, addr.lo as u32 $(, $arg)*);
            } else {
                let mut octets = [0u8; 16];
                octets[..8].copy_from_slice(&addr.hi.to_be_bytes());
                octets[8..].copy_from_slice(&addr.lo.to_be_bytes());
                debug!($ctx, $fmt, octets $(, $arg)*);
            }
        }};
    }

    #[xdp]
    pub fn xdprobe(ctx: XdpContext) -> u32 {
        match try_xdprobe(&ctx) {
            Ok(Action::Consume) => xdp_action::XDP_DROP,
            Ok(Action::Pass) | Err(Skip) => xdp_action::XDP_PASS,
        }
    }

    /// The one bounds-checked accessor: a `T` at `offset` bytes into the frame.
    #[inline(always)]
    fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Skip> {
        let start = ctx.data();
        let end = ctx.data_end();
        if start + offset + mem::size_of::<T>() > end {
            return Err(Skip);
        }
        Ok((start + offset) as *const T)
    }

    /// The big-endian `u16` at `offset`.
    #[inline(always)]
    fn be16_at(ctx: &XdpContext, offset: usize) -> Result<u16, Skip> {
        let p: *const [u8; 2] = ptr_at(ctx, offset)?;
        // SAFETY: ptr_at checked the bounds; a byte array has alignment 1.
        Ok(u16::from_be_bytes(unsafe { *p }))
    }

    #[inline(always)]
    fn bump(stat: Stat) {
        if let Some(counter) = STATS.get_ptr_mut(stat as u32) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *counter += 1 };
        }
    }

    /// The EtherType after up to two VLAN tags, and where the network header starts.
    #[inline(always)]
    fn network_layer(ctx: &XdpContext) -> Result<(u16, usize), Skip> {
        let mut offset = ETH_HDR_LEN - 2;
        let mut ether_type = be16_at(ctx, offset)?;
        for _ in 0..2 {
            if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
                break;
            }
            offset += VLAN_TAG_LEN;
            ether_type = be16_at(ctx, offset)?;
        }
        Ok((ether_type, offset + 2))
    }

    fn try_xdprobe(ctx: &XdpContext) -> Result<Action, Skip> {
        let (ether_type, l3) = network_layer(ctx)?;
        match ether_type {
            ETH_P_IPV4 => try_ipv4(ctx, l3),
            ETH_P_IPV6 => try_ipv6(ctx, l3),
            _ => Ok(Action::Pass),
        }
    }

    /// An IPv4 packet at `l3`: an ICMP echo reply, unfragmented, is judged by [`count`].
    #[inline(always)]
    fn try_ipv4(ctx: &XdpContext, l3: usize) -> Result<Action, Skip> {
        let ip: *const Ipv4Hdr = ptr_at(ctx, l3)?;
        // SAFETY: ptr_at checked the bounds; the header types have alignment 1.
        let (vihl, proto, frags, src) =
            unsafe { ((*ip).vihl, (*ip).proto, (*ip).frags, (*ip).src_addr) };
        let ihl = usize::from(vihl & 0x0f) * 4;
        if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || proto != IpProto::Icmp as u8 {
            return Ok(Action::Pass);
        }
        // Fragments (more-fragments flag or a non-zero offset) are left to the stack.
        if u16::from_be_bytes(frags) & 0x3fff != 0 {
            return Ok(Action::Pass);
        }

        let icmp_off = l3 + ihl;
        let icmp: *const Icmpv4Hdr = ptr_at(ctx, icmp_off)?;
        // SAFETY: bounds checked above.
        let (icmp_type, code, data) = unsafe { ((*icmp).type_, (*icmp).code, (*icmp).data) };
        if icmp_type != ICMP_ECHO_REPLY || code != 0 {
            return Ok(Action::Pass);
        }
        let ident = u16::from_be_bytes([data[0], data[1]]);
        let probe: *const ProbeHeader = ptr_at(ctx, icmp_off + Icmpv4Hdr::LEN)?;
        // SAFETY: bounds checked above; ProbeHeader is plain bytes.
        let probe = unsafe { *probe };
        count(ctx, HostKey::v4(u32::from_be_bytes(src)), ident, &probe)
    }

    /// An IPv6 packet at `l3`: an ICMPv6 echo reply, after at most four option or routing
    /// headers and no fragment header, is judged by [`count`].
    #[inline(always)]
    fn try_ipv6(ctx: &XdpContext, l3: usize) -> Result<Action, Skip> {
        let ip: *const Ipv6Hdr = ptr_at(ctx, l3)?;
        // SAFETY: ptr_at checked the bounds; the header types have alignment 1.
        let (first, next, src) = unsafe { ((*ip).vcf[0], (*ip).next_hdr, (*ip).src_addr) };
        if first >> 4 != 6 {
            return Ok(Action::Pass);
        }
        let icmp_off = match ipv6_payload(next, l3 + Ipv6Hdr::LEN, |at| {
            let p: *const [u8; 2] = ptr_at(ctx, at).ok()?;
            // SAFETY: ptr_at checked the bounds; a byte array has alignment 1.
            Some(unsafe { *p })
        }) {
            Ipv6Payload::Icmpv6(offset) => offset,
            Ipv6Payload::Other => return Ok(Action::Pass),
        };
        let icmp: *const [u8; ICMP_HDR_LEN] = ptr_at(ctx, icmp_off)?;
        // SAFETY: bounds checked above; a byte array has alignment 1.
        let icmp = unsafe { *icmp };
        if icmp[0] != ICMPV6_ECHO_REPLY || icmp[1] != 0 {
            return Ok(Action::Pass);
        }
        let ident = u16::from_be_bytes([icmp[4], icmp[5]]);
        let host = HostKey::v6(src);
        // Where IPv4 hosts are keyed: no IPv6 host lives there (loopback, ::/96).
        if host.is_ipv4_space() {
            return Ok(Action::Pass);
        }
        let probe: *const ProbeHeader = ptr_at(ctx, icmp_off + ICMP_HDR_LEN)?;
        // SAFETY: bounds checked above; ProbeHeader is plain bytes.
        let probe = unsafe { *probe };
        count(ctx, host, ident, &probe)
    }

    /// One of our echo replies (either family) from `addr`: counted in its host's slot if it
    /// is fresh, authentic and not counted before.
    #[inline(always)]
    fn count(
        ctx: &XdpContext,
        addr: HostKey,
        ident: u16,
        probe: &ProbeHeader,
    ) -> Result<Action, Skip> {
        // One copy per packet: every decision below sees the same config.
        let Some(config) = CONFIG.get(0).copied() else {
            return Ok(Action::Pass);
        };
        if !ours(ident, probe, &config) {
            return Ok(Action::Pass);
        }
        let base = (config.generation & 1) * config.half;
        let Some(index) = find_host(addr, base, config.hosts) else {
            bump(Stat::UnknownHost);
            debug_host!(ctx, "reply from unmonitored {:i}", addr);
            return Ok(Action::Pass);
        };
        let Some(key) = KEYS.get(probe.window() % KEY_RING).copied() else {
            return Ok(Action::Pass);
        };
        let now = unsafe { bpf_ktime_get_ns() };
        match judge(ident, probe, &config, addr, &key, now) {
            Verdict::Fresh => {}
            Verdict::Stale => {
                bump(Stat::Stale);
                debug_host!(
                    ctx,
                    "late reply from {:i}: window {} seq {}",
                    addr,
                    probe.window(),
                    probe.seq()
                );
                return Ok(Action::Pass);
            }
            Verdict::Forged => {
                bump(Stat::Forged);
                debug_host!(ctx, "forged reply from {:i}", addr);
                return Ok(Action::Pass);
            }
        }
        let Some(slot) = SLOTS.get_ptr_mut(base + index) else {
            bump(Stat::UnknownHost);
            return Ok(Action::Pass);
        };
        let bit = answer_bit(probe.seq());
        // SAFETY: a valid map value pointer; the atomic test-and-set makes a probe count at
        // most once, whichever CPUs its copies arrive on.
        let before = unsafe {
            atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*slot).answered, bit)
        };
        if before & bit != 0 {
            bump(Stat::Replayed);
            debug_host!(ctx, "replayed reply from {:i} seq {}", addr, probe.seq());
            return Ok(Action::Pass);
        }
        let rtt = rtt_of(now, probe.sent_ns());
        // SAFETY: as above. The RTT and its sequence are plain stores: two CPUs counting two
        // answers of one host at once leave one pair or the other, both true.
        unsafe {
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(&raw mut (*slot).total_replies, 1);
            (*slot).rtt_ns = rtt;
            (*slot).last_seq = probe.seq();
        }
        bump(Stat::Counted);
        debug_host!(
            ctx,
            "counted reply from {:i} seq {} rtt {} ns",
            addr,
            probe.seq(),
            rtt
        );
        Ok(Action::Consume)
    }

    /// The monitored host's index in the half starting at `base`: a binary search over
    /// `ADDRS`, a bounded loop of at most `SEARCH_STEPS` steps. (One step per `bpf_loop`
    /// callback verified as well but cost an indirect call a step: 12 % of the program's time
    /// at 131,072 hosts.)
    #[inline(always)]
    fn find_host(addr: HostKey, base: u32, hosts: u32) -> Option<u32> {
        let mut search = Search::new(addr, hosts);
        search.base = base;
        for _ in 0..SEARCH_STEPS {
            if !search.step(|i| ADDRS.get(base + i).copied()) {
                break;
            }
        }
        search.index()
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}

/// On the host this binary is empty: the real program only exists for the BPF target.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
