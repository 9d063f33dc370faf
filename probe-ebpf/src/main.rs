//! XDP program: recognises echo replies to our probes and counts them per monitored host.
//!
//! Parse Ethernet (and up to two 802.1Q/802.1ad tags) -> IPv4 -> ICMP echo reply -> our
//! `ProbeHeader`; find the host it comes from; judge it with the shared rule (timely, and the
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
        ip::{IpProto, Ipv4Hdr},
    };
    use probe_common::{
        maps::{
            answer_bit, rtt_of, HostSlot, ProbeConfig, Search, Stat, WindowKey, KEY_RING,
            SEARCH_STEPS,
        },
        verdict::{judge, ours, Verdict},
        wire::{ProbeHeader, ETH_HDR_LEN, ETH_P_IPV4, ICMP_ECHO_REPLY},
    };

    #[map]
    static CONFIG: Array<ProbeConfig> = Array::with_max_entries(1, 0);

    /// Each window's MAC key, at `window % KEY_RING`. Written by userspace.
    #[map]
    static KEYS: Array<WindowKey> = Array::with_max_entries(KEY_RING, 0);

    /// Sorted host-order addresses of the monitored hosts (8 bytes a host), in two halves of
    /// `ProbeConfig::half`: the half `generation` names is in use, its first `hosts` entries.
    /// Sized and written by userspace.
    #[map]
    static ADDRS: Array<u32> = Array::with_max_entries(1, BPF_F_MMAPABLE);

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
        if ether_type != ETH_P_IPV4 {
            return Ok(Action::Pass);
        }
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

        // One copy per packet: every decision below sees the same config.
        let Some(config) = CONFIG.get(0).copied() else {
            return Ok(Action::Pass);
        };
        if !ours(ident, &probe, &config) {
            return Ok(Action::Pass);
        }
        let addr = u32::from_be_bytes(src);
        let base = (config.generation & 1) * config.half;
        let Some(index) = find_host(addr, base, config.hosts) else {
            bump(Stat::UnknownHost);
            debug!(ctx, "reply from unmonitored {:i}", addr);
            return Ok(Action::Pass);
        };
        let Some(key) = KEYS.get(probe.window() % KEY_RING).copied() else {
            return Ok(Action::Pass);
        };
        let now = unsafe { bpf_ktime_get_ns() };
        match judge(ident, &probe, &config, addr, &key, now) {
            Verdict::Fresh => {}
            Verdict::Stale => {
                bump(Stat::Stale);
                debug!(
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
                debug!(ctx, "forged reply from {:i}", addr);
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
            debug!(ctx, "replayed reply from {:i} seq {}", addr, probe.seq());
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
        debug!(
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
    fn find_host(addr: u32, base: u32, hosts: u32) -> Option<u32> {
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
