//! XDP program: recognises echo replies to our probes and counts them per monitored host.
//!
//! Parse Ethernet -> IPv4 -> ICMP echo reply -> our [`ProbeHeader`]; judge it against the current
//! [`ProbeConfig`] with the shared [`judge`] rule; for a valid reply from a monitored host, update
//! its [`HostSlot`] and consume the frame (`XDP_DROP`). Everything else passes untouched.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use core::mem;

    use aya_ebpf::{
        bindings::xdp_action,
        bindings::BPF_F_MMAPABLE,
        helpers::{bpf_ktime_get_ns, bpf_loop},
        macros::{map, xdp},
        maps::{Array, PerCpuArray},
        programs::XdpContext,
    };
    use aya_log_ebpf::debug;
    use network_types::{
        eth::{EthHdr, EtherType},
        icmp::Icmpv4Hdr,
        ip::{IpProto, Ipv4Hdr},
    };
    use probe_common::{
        maps::{HostSlot, ProbeConfig, Search, Stat, SEARCH_STEPS},
        verdict::{judge, Verdict},
        wire::{ProbeHeader, ICMP_ECHO_REPLY},
    };

    #[map]
    static CONFIG: Array<ProbeConfig> = Array::with_max_entries(1, 0);

    /// Sorted host-order addresses of the monitored hosts (8 bytes a host): the first
    /// `ProbeConfig::hosts` are in use. Sized and written by userspace.
    #[map]
    static ADDRS: Array<u32> = Array::with_max_entries(1, BPF_F_MMAPABLE);

    /// One slot per monitored host, same index as in `ADDRS` (8 bytes a host). Sized by
    /// userspace at load time, which reads it through a memory mapping (and moves the slots
    /// with their hosts on reload).
    #[map]
    static SLOTS: Array<HostSlot> = Array::with_max_entries(1, BPF_F_MMAPABLE);

    #[map]
    static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT, 0);

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

    #[inline(always)]
    fn bump(stat: Stat) {
        if let Some(counter) = STATS.get_ptr_mut(stat as u32) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *counter += 1 };
        }
    }

    fn try_xdprobe(ctx: &XdpContext) -> Result<Action, Skip> {
        let eth: *const EthHdr = ptr_at(ctx, 0)?;
        // SAFETY: ptr_at checked the bounds; the header types have alignment 1.
        if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
            return Ok(Action::Pass);
        }

        let ip: *const Ipv4Hdr = ptr_at(ctx, EthHdr::LEN)?;
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

        let icmp_off = EthHdr::LEN + ihl;
        let icmp: *const Icmpv4Hdr = ptr_at(ctx, icmp_off)?;
        let (icmp_type, code, data) = unsafe { ((*icmp).type_, (*icmp).code, (*icmp).data) };
        if icmp_type != ICMP_ECHO_REPLY || code != 0 {
            return Ok(Action::Pass);
        }
        let ident = u16::from_be_bytes([data[0], data[1]]);

        let probe: *const ProbeHeader = ptr_at(ctx, icmp_off + Icmpv4Hdr::LEN)?;
        // SAFETY: bounds checked above; ProbeHeader is plain bytes.
        let probe = unsafe { *probe };

        let Some(config) = CONFIG.get(0) else {
            return Ok(Action::Pass);
        };
        match judge(ident, &probe, config) {
            Verdict::NotOurs => return Ok(Action::Pass),
            Verdict::StaleWindow => {
                bump(Stat::StaleWindow);
                debug!(
                    ctx,
                    "stale reply: window {} from {:i}",
                    probe.window(),
                    u32::from_be_bytes(src)
                );
                return Ok(Action::Pass);
            }
            Verdict::WrongCookie => {
                bump(Stat::WrongCookie);
                debug!(
                    ctx,
                    "forged reply: wrong cookie from {:i}",
                    u32::from_be_bytes(src)
                );
                return Ok(Action::Pass);
            }
            Verdict::Count => {}
        }

        let addr = u32::from_be_bytes(src);
        let Some(index) = find_host(addr, config.hosts) else {
            bump(Stat::UnknownHost);
            debug!(ctx, "reply from unmonitored {:i}", addr);
            return Ok(Action::Pass);
        };
        let Some(slot) = SLOTS.get_ptr_mut(index) else {
            bump(Stat::UnknownHost);
            return Ok(Action::Pass);
        };
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: valid map value pointer. Concurrent CPUs may race on the counters; a lost
        // increment can only under-count a host that answered at least once, which still counts.
        unsafe { (*slot).record_reply(now, probe.sent_ns()) };
        bump(Stat::Counted);
        debug!(
            ctx,
            "counted reply from {:i} window {} rtt {} ns",
            u32::from_be_bytes(src),
            probe.window(),
            now.saturating_sub(probe.sent_ns())
        );
        Ok(Action::Consume)
    }

    /// The monitored host's index: a binary search over `ADDRS`, one `bpf_loop` step at a
    /// time (a plain loop makes the verifier walk every path of the search).
    #[inline(always)]
    fn find_host(addr: u32, hosts: u32) -> Option<u32> {
        let mut search = Search::new(addr, hosts);
        // SAFETY: the callback only touches `search`, which outlives the call.
        unsafe {
            bpf_loop(
                SEARCH_STEPS,
                search_step as *mut core::ffi::c_void,
                (&raw mut search).cast(),
                0,
            )
        };
        search.index()
    }

    extern "C" fn search_step(_index: u32, ctx: *mut core::ffi::c_void) -> i64 {
        // SAFETY: `ctx` is the `Search` on `find_host`'s stack.
        let search = unsafe { &mut *ctx.cast::<Search>() };
        if search.step(|i| ADDRS.get(i).copied()) {
            0
        } else {
            1
        }
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
