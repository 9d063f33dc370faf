//! The kernel side seen from userspace: load the XDP program, size and fill its maps, attach it,
//! publish each round's config and each window's key, read the per-host slots and clear their
//! answer bits, and switch host tables on reload without pausing the program.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use anyhow::{anyhow, bail, Context as _};
use aya::{
    maps::{Array, Map, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use aya_log::EbpfLogger;
use memmap2::{MmapOptions, MmapRaw};
use probe_common::{
    mac::Key,
    maps::{
        HostSlot, ProbeConfig, Stat, WindowKey, ADDRS_MAP, CONFIG_MAP, KEYS_MAP, KEY_RING,
        LOG_LEVEL_GLOBAL, MAX_HOSTS, PROGRAM_NAME, SLOTS_MAP, STATS_MAP,
    },
};
use tokio::io::unix::AsyncFd;
use tracing::{debug, warn};

use crate::probe::{
    counters::{Accept, Counters},
    plan::seq_mask,
};

/// The program object, built by `build.rs` from the `probe-ebpf` crate.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));

/// The loaded program and its maps. Dropping it detaches the program from the interface.
pub struct XdpProbe {
    // Owns the program and its link; kept alive for as long as we probe.
    ebpf: Ebpf,
    config: Array<MapData, ProbeConfig>,
    keys: Array<MapData, WindowKey>,
    /// What `config` holds now.
    value: ProbeConfig,
    /// The sorted address tables and the per-host slots (two halves each when reloads may
    /// switch them), read and written without system calls. Declared before the maps so the
    /// mappings go before the maps' fds.
    addrs: Mapped,
    slots: Mapped,
    _addrs_map: MapData,
    _slots_map: MapData,
    /// Entries each half has room for, and how many halves there are (1 or 2).
    capacity: usize,
    halves: usize,
    /// After a reload switched halves: what the old half counted since it was copied, still
    /// to be merged into the new one.
    merge: Option<Merge>,
    stats: PerCpuArray<MapData, u64>,
}

/// The kept hosts of a switch of halves: (new index, old slot's index in its map, what was
/// copied), and the newest probe sequence out when it happened.
struct Merge {
    moves: Vec<(usize, usize, HostSlot)>,
    seq_max: u32,
}

/// How the program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Generic,
}

impl XdpProbe {
    /// Loads the program with its maps sized for `capacity` hosts and filled with `hosts`, which
    /// must be sorted and unique (slot `i` is `hosts[i]`; the program finds a host by binary
    /// search). With `reloadable`, each map holds two halves of `capacity`, so that
    /// [`Counters::rehost`] can write one while the program counts in the other.
    /// With `debug`, the program's aya-log diagnostics are compiled in by the verifier;
    /// without, the log level is 0 and every log call is pruned at load time.
    pub fn load(
        hosts: &[Ipv4Addr],
        capacity: usize,
        reloadable: bool,
        debug: bool,
    ) -> anyhow::Result<Self> {
        let capacity = capacity.max(hosts.len()).max(1);
        let halves = if reloadable { 2 } else { 1 };
        let entries = u32::try_from(capacity * halves)
            .ok()
            .filter(|_| capacity <= MAX_HOSTS as usize)
            .with_context(|| format!("{capacity} hosts: at most {MAX_HOSTS} can be watched"))?;
        // aya_log_common::Level: Error = 1 ... Trace = 5; 0 disables everything.
        let level: u8 = if debug { 5 } else { 0 };
        // No kernel BTF: the program has no CO-RE relocations, and parsing the kernel's
        // (about 5 MiB) was most of xdprobe's start-up CPU.
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .map_max_entries(ADDRS_MAP, entries)
            .map_max_entries(SLOTS_MAP, entries)
            .override_global(LOG_LEVEL_GLOBAL, &level, true)
            .load(PROGRAM)
            .context("loading the XDP program into the kernel")?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("program {PROGRAM_NAME} missing from the object"))?
            .try_into()?;
        program.load().context("verifying the XDP program")?;

        let addrs_map = array_data(take(&mut ebpf, ADDRS_MAP)?)?;
        let addrs = Mapped::new(&addrs_map, entries as usize * ADDR_STRIDE)
            .with_context(|| format!("mapping the {ADDRS_MAP} map"))?;
        let slots_map = array_data(take(&mut ebpf, SLOTS_MAP)?)?;
        let slots = Mapped::new(&slots_map, entries as usize * SLOT_STRIDE)
            .with_context(|| format!("mapping the {SLOTS_MAP} map"))?;
        let mut probe = Self {
            config: Array::try_from(take(&mut ebpf, CONFIG_MAP)?)?,
            keys: Array::try_from(take(&mut ebpf, KEYS_MAP)?)?,
            value: ProbeConfig {
                half: capacity as u32,
                ..ProbeConfig::default()
            },
            addrs,
            slots,
            _addrs_map: addrs_map,
            _slots_map: slots_map,
            capacity,
            halves,
            merge: None,
            stats: PerCpuArray::try_from(take(&mut ebpf, STATS_MAP)?)?,
            ebpf,
        };
        check_hosts(hosts, &vec![None; hosts.len()], capacity)?;
        probe.write_half(0, hosts, &vec![HostSlot::default(); hosts.len()]);
        probe.value.hosts = hosts.len() as u32;
        probe.write_config()?;
        Ok(probe)
    }

    /// Where the half in use starts in the maps.
    fn base(&self) -> usize {
        (self.value.generation as usize & 1) * self.capacity
    }

    /// Writes `hosts` and their `slots` into half `generation`. The program must not be
    /// reading that half (nothing attached yet, or it counts in the other).
    fn write_half(&mut self, generation: usize, hosts: &[Ipv4Addr], slots: &[HostSlot]) {
        let base = generation * self.capacity;
        for (i, (addr, slot)) in hosts.iter().zip(slots).enumerate() {
            // SAFETY: `check_hosts` kept `i` below the capacity, and `generation` is below
            // `halves`, so both entries lie inside their writable mappings, whose elements are
            // ADDR_STRIDE and SLOT_STRIDE apart.
            unsafe {
                self.addrs
                    .ptr()
                    .add((base + i) * ADDR_STRIDE)
                    .cast::<u32>()
                    .write_volatile(u32::from(*addr));
                self.slots
                    .ptr()
                    .add((base + i) * SLOT_STRIDE)
                    .cast::<HostSlot>()
                    .write_volatile(*slot);
            }
        }
    }

    fn write_config(&mut self) -> anyhow::Result<()> {
        self.config
            .set(0, self.value, 0)
            .context("updating the CONFIG map")
    }

    /// The slot at `index` of the whole map (either half).
    fn slot_at(&self, index: usize) -> HostSlot {
        assert!(
            (index + 1) * SLOT_STRIDE <= self.slots.len,
            "slot {index} out of range"
        );
        // SAFETY: in bounds (checked above) of a live mapping of the SLOTS array, whose
        // elements are SLOT_STRIDE apart. The kernel writes it concurrently, so read it volatile
        // and as a copy: a torn read can only mix two consecutive counter states.
        unsafe {
            self.slots
                .ptr()
                .add(index * SLOT_STRIDE)
                .cast::<HostSlot>()
                .read_volatile()
        }
    }

    /// The answer bits and the reply count of the slot at `index` of the whole map, as atomics
    /// shared with the kernel.
    fn slot_atomics(&self, index: usize) -> (&AtomicU64, &AtomicU32) {
        assert!(
            (index + 1) * SLOT_STRIDE <= self.slots.len,
            "slot {index} out of range"
        );
        // SAFETY: in bounds (checked above) of a mapping that lives as long as `self`; a
        // HostSlot starts with its u64 answer bits and then its u32 reply count, both aligned
        // (slots are 8-byte aligned, SLOT_STRIDE apart), and the kernel only touches them with
        // atomic operations too.
        unsafe {
            let slot = self.slots.ptr().add(index * SLOT_STRIDE);
            (
                AtomicU64::from_ptr(slot.cast::<u64>()),
                AtomicU32::from_ptr(slot.add(8).cast::<u32>()),
            )
        }
    }

    /// Adds to the new half what the old one counted for the kept hosts after they were
    /// copied: answer bits of probes that were out at the switch, and replies.
    fn apply_merge(&self, merge: Merge) {
        // Bits of sequences sent since the switch belong to the new half alone.
        let since = self.value.seq_max.wrapping_sub(merge.seq_max);
        let newer = seq_mask(merge.seq_max.wrapping_add(1), since);
        for (new, old, copied) in merge.moves {
            let now = self.slot_at(old);
            let bits = now.answered & !copied.answered & !newer;
            let replies = now.total_replies.wrapping_sub(copied.total_replies);
            let (answered, total) = self.slot_atomics(self.base() + new);
            answered.fetch_or(bits, Ordering::SeqCst);
            total.fetch_add(replies, Ordering::SeqCst);
        }
    }

    /// Attaches to `iface` in native mode, falling back to generic mode with a warning.
    pub fn attach(&mut self, iface: &str) -> anyhow::Result<AttachMode> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("program {PROGRAM_NAME} missing"))?
            .try_into()?;
        match program.attach(iface, XdpMode::Driver) {
            Ok(_) => Ok(AttachMode::Native),
            Err(native) => {
                warn!(%iface, error = %native, "native XDP attach failed; falling back to generic mode");
                program
                    .attach(iface, XdpMode::Skb)
                    .with_context(|| format!("attaching XDP to {iface} (native: {native})"))?;
                Ok(AttachMode::Generic)
            }
        }
    }

    /// The program's counters, summed over CPUs, in [`Stat::ALL`] order.
    pub fn kernel_stats(&self) -> anyhow::Result<[u64; Stat::COUNT as usize]> {
        let mut out = [0u64; Stat::COUNT as usize];
        for stat in Stat::ALL {
            let per_cpu = self
                .stats
                .get(&(stat as u32), 0)
                .context("reading the STATS map")?;
            out[stat as usize] = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Starts forwarding the program's aya-log records to this process's log.
    pub fn spawn_log_forwarder(&mut self) -> anyhow::Result<()> {
        let logger = EbpfLogger::init_with_logger(&mut self.ebpf, KernelLog)
            .context("opening the XDP log ring")?;
        // SAFETY: the logger owns its ring buffer fd and keeps it open until it is dropped
        // together with this AsyncFd.
        let mut logger =
            unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)? };
        tokio::spawn(async move {
            loop {
                let mut guard = match logger.readable_mut().await {
                    Ok(guard) => guard,
                    Err(error) => {
                        warn!(%error, "XDP log forwarding stopped");
                        return;
                    }
                };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
        debug!("forwarding XDP program diagnostics");
        Ok(())
    }
}

/// Re-emits the program's aya-log records as tracing events (target `xdprobe::kernel`), so they
/// show at the default log level once `--debug` has compiled them in.
struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::info!(target: "xdprobe::kernel", level = %record.level(), "{}", record.args());
    }

    fn flush(&self) {}
}

impl Counters for XdpProbe {
    fn publish(&mut self, accept: Accept) -> anyhow::Result<()> {
        self.value.ident = u32::from(accept.ident);
        self.value.seq_max = accept.seq_max;
        self.value.timeout_ns = u64::try_from(accept.timeout.as_nanos()).unwrap_or(u64::MAX);
        self.value.enabled = 1;
        self.write_config()?;
        // A round after a switch of halves: no run of the program reads the old half now.
        if let Some(merge) = self.merge.take() {
            self.apply_merge(merge);
        }
        Ok(())
    }

    fn set_key(&mut self, window: u32, key: Key) -> anyhow::Result<()> {
        let entry = WindowKey {
            window,
            valid: 1,
            key,
        };
        self.keys
            .set(window % KEY_RING, entry, 0)
            .context("updating the KEYS map")
    }

    fn slot(&self, index: usize) -> HostSlot {
        self.slot_at(self.base() + index)
    }

    fn clear(&self, index: usize, mask: u64) {
        let (answered, _) = self.slot_atomics(self.base() + index);
        answered.fetch_and(!mask, Ordering::SeqCst);
    }

    fn rehost(&mut self, hosts: &[Ipv4Addr], from: &[Option<usize>]) -> anyhow::Result<()> {
        check_hosts(hosts, from, self.capacity)
            .map_err(|e| anyhow!("{e:#}; restart xdprobe to grow the XDP maps"))?;
        if self.halves < 2 {
            bail!("these XDP maps were loaded without room to switch their host tables");
        }
        if let Some(merge) = self.merge.take() {
            self.apply_merge(merge);
        }
        let old = self.base();
        let copied: Vec<HostSlot> = from
            .iter()
            .map(|f| f.map(|i| self.slot_at(old + i)).unwrap_or_default())
            .collect();
        let next = (self.value.generation as usize & 1) ^ 1;
        self.write_half(next, hosts, &copied);
        let moves = from
            .iter()
            .enumerate()
            .filter_map(|(new, f)| f.map(|i| (new, old + i, copied[new])))
            .collect();
        // The switch: from here the program searches and counts in the other half.
        self.value.generation = next as u32;
        self.value.hosts = hosts.len() as u32;
        self.write_config()?;
        self.merge = Some(Merge {
            moves,
            seq_max: self.value.seq_max,
        });
        Ok(())
    }

    fn stats(&self) -> [u64; Stat::COUNT as usize] {
        self.kernel_stats().unwrap_or_else(|error| {
            warn!(error = %format!("{error:#}"), "cannot read the XDP program's counters");
            [0; Stat::COUNT as usize]
        })
    }
}

/// `hosts` sorted and unique, one origin each, within `capacity`.
fn check_hosts(hosts: &[Ipv4Addr], from: &[Option<usize>], capacity: usize) -> anyhow::Result<()> {
    if !hosts.windows(2).all(|w| w[0] < w[1]) {
        bail!("the host list must be sorted and free of duplicates");
    }
    if hosts.len() != from.len() {
        bail!("{} hosts but {} slot origins", hosts.len(), from.len());
    }
    if hosts.len() > capacity {
        bail!(
            "{} hosts do not fit the {} the XDP maps were sized for at start-up",
            hosts.len(),
            capacity
        );
    }
    Ok(())
}

/// Array maps store each value rounded up to 8 bytes.
const ADDR_STRIDE: usize = 8;
const SLOT_STRIDE: usize = std::mem::size_of::<HostSlot>();
const _: () = assert!(SLOT_STRIDE.is_multiple_of(8));

/// A shared memory mapping of a `BPF_F_MMAPABLE` array map (writable: the address table is
/// rewritten on reload). It holds `len` bytes of values; the kernel maps whole pages.
struct Mapped {
    map: MmapRaw,
    len: usize,
}

impl Mapped {
    fn new(map: &MapData, len: usize) -> std::io::Result<Self> {
        let map = MmapOptions::new()
            .len(len.max(1))
            .map_raw(map.fd().as_fd().as_raw_fd())?;
        Ok(Self { map, len })
    }

    fn ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }
}

fn array_data(map: Map) -> anyhow::Result<MapData> {
    match map {
        Map::Array(data) => Ok(data),
        other => bail!("expected an array map, found {other:?}"),
    }
}

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the XDP object"))
}

/// The program itself, run by the kernel on crafted frames (`BPF_PROG_TEST_RUN`).
#[cfg(test)]
mod tests {
    /// Every test loads the XDP program and runs it with `BPF_PROG_TEST_RUN`: root only
    /// (CAP_BPF + CAP_NET_ADMIN).
    mod privileged {
        use std::time::Duration;

        use probe_common::wire::{
            EchoPacket, ProbeHeader, ECHO_PACKET_LEN, ETH_HDR_LEN, ICMP_ECHO_REPLY,
            ICMP_ECHO_REQUEST,
        };

        use super::super::*;
        use xdprobe_harness::require_root;

        use crate::probe::clock::monotonic_ns;

        impl XdpProbe {
            /// Runs the loaded (not necessarily attached) program once on `frame` with
            /// `BPF_PROG_TEST_RUN`; returns the XDP action.
            fn test_run(&self, frame: &[u8]) -> anyhow::Result<u32> {
                use aya::programs::{TestRun as _, TestRunOptions};
                let program: &Xdp = self
                    .ebpf
                    .program(PROGRAM_NAME)
                    .ok_or_else(|| anyhow!("program {PROGRAM_NAME} missing"))?
                    .try_into()?;
                let result = program.test_run(TestRunOptions {
                    data_in: Some(frame),
                    ..Default::default()
                })?;
                Ok(result.return_value)
            }
        }

        const PRIMARY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
        const OTHER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 9);
        const ME: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
        const IDENT: u16 = 0x4242;
        const WINDOW: u32 = 7;
        const SEQ: u32 = 100;
        const KEY: Key = Key {
            k0: 0x0bad_cafe,
            k1: 0xf00d,
        };
        // enum xdp_action in <linux/bpf.h>.
        const DROP: u32 = 1;
        const PASS: u32 = 2;

        const ACCEPT: Accept = Accept {
            ident: IDENT,
            seq_max: SEQ,
            timeout: Duration::from_secs(1),
        };

        /// PRIMARY as the one host, window WINDOW's key installed, sequences up to SEQ out.
        fn loaded(hosts: &[Ipv4Addr], capacity: usize, reloadable: bool) -> XdpProbe {
            let mut xdp =
                XdpProbe::load(hosts, capacity, reloadable, false).expect("load (needs root)");
            xdp.set_key(WINDOW, KEY).unwrap();
            xdp.publish(ACCEPT).unwrap();
            xdp
        }

        fn probe() -> XdpProbe {
            loaded(&[PRIMARY], 1, false)
        }

        fn ethernet(ether_type: u16, payload: &[u8]) -> Vec<u8> {
            let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
            frame.extend_from_slice(&ether_type.to_be_bytes());
            frame.extend_from_slice(payload);
            frame
        }

        /// A reply from `src` carrying `probe`.
        fn reply(src: Ipv4Addr, ident: u16, probe: ProbeHeader) -> Vec<u8> {
            let mut ip = [0u8; ECHO_PACKET_LEN];
            EchoPacket {
                src: src.octets(),
                dst: ME.octets(),
                icmp_type: ICMP_ECHO_REPLY,
                ident,
                seq: 1,
                probe,
            }
            .write(&mut ip);
            ethernet(0x0800, &ip)
        }

        /// The probe we would have sent `dst` (seq, window, sent `ago` before now).
        fn signed(dst: Ipv4Addr, window: u32, seq: u32, ago: u64) -> ProbeHeader {
            ProbeHeader::signed(
                &KEY,
                u32::from(dst),
                IDENT,
                window,
                seq,
                monotonic_ns() - ago,
            )
        }

        fn valid() -> Vec<u8> {
            reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ, 1_000_000))
        }

        /// Runs `frame` and returns the action and which counters moved.
        fn run(xdp: &XdpProbe, frame: &[u8]) -> (u32, Vec<Stat>) {
            let before = xdp.kernel_stats().unwrap();
            let action = xdp.test_run(frame).unwrap();
            let after = xdp.kernel_stats().unwrap();
            let moved = Stat::ALL
                .into_iter()
                .filter(|s| after[*s as usize] != before[*s as usize])
                .collect();
            (action, moved)
        }

        #[test]
        fn a_reply_is_counted_once_with_its_rtt_and_its_replay_is_not() {
            require_root();
            let xdp = probe();
            let frame = valid();
            assert_eq!(run(&xdp, &frame), (DROP, vec![Stat::Counted]));
            let slot = xdp.slot(0);
            assert_eq!(slot.total_replies, 1);
            assert_eq!(slot.answered, probe_common::maps::answer_bit(SEQ));
            assert_eq!(slot.last_seq, SEQ);
            // Sent 1 ms "ago": the kernel's RTT is at least that, and sane.
            assert!(
                (1_000_000..4_000_000_000).contains(&slot.rtt_ns),
                "rtt {}",
                slot.rtt_ns
            );
            // The very same reply again: its probe was answered already.
            assert_eq!(run(&xdp, &frame), (PASS, vec![Stat::Replayed]));
            assert_eq!(xdp.slot(0).total_replies, 1);
            // The retry of the same round is another probe: it counts.
            let retry = reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ - 1, 500_000));
            assert_eq!(run(&xdp, &retry), (DROP, vec![Stat::Counted]));
            assert_eq!(xdp.slot(0).total_replies, 2);
        }

        #[test]
        fn another_hosts_probe_sent_back_from_the_primarys_address_is_not_counted() {
            require_root();
            let xdp = loaded(&[PRIMARY, OTHER], 2, false);
            // OTHER (a witness, a monitored host) received its own probe and answers it as if it
            // were the primary: the MAC names OTHER, not PRIMARY.
            let stolen = signed(OTHER, WINDOW, SEQ, 1_000);
            assert_eq!(
                run(&xdp, &reply(PRIMARY, IDENT, stolen)),
                (PASS, vec![Stat::Forged])
            );
            assert_eq!(xdp.slot(0), HostSlot::default());
            // From OTHER's own address it is a good answer.
            assert_eq!(
                run(&xdp, &reply(OTHER, IDENT, stolen)),
                (DROP, vec![Stat::Counted])
            );
        }

        #[test]
        fn replies_that_are_not_ours_or_not_timely_pass_and_count_nothing() {
            require_root();
            let xdp = loaded(&[PRIMARY], 1, false);
            let mut tampered = signed(PRIMARY, WINDOW, SEQ, 1_000).to_bytes();
            tampered[27] ^= 1;
            let cases: [(&str, Vec<u8>, Vec<Stat>); 8] = [
                (
                    "wrong identifier",
                    reply(PRIMARY, IDENT + 1, signed(PRIMARY, WINDOW, SEQ, 1_000)),
                    vec![],
                ),
                (
                    "a MAC that is not ours",
                    reply(PRIMARY, IDENT, ProbeHeader::from_bytes(tampered)),
                    vec![Stat::Forged],
                ),
                (
                    "a window whose key was never installed",
                    reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW + 1, SEQ, 1_000)),
                    vec![Stat::Stale],
                ),
                (
                    "older than the timeout",
                    reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ, 1_100_000_000)),
                    vec![Stat::Stale],
                ),
                (
                    "a sequence not sent yet",
                    reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ + 1, 1_000)),
                    vec![Stat::Stale],
                ),
                (
                    "a sequence whose answer bit is reused",
                    reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ - 64, 1_000)),
                    vec![Stat::Stale],
                ),
                (
                    "an unmonitored host",
                    reply(OTHER, IDENT, signed(OTHER, WINDOW, SEQ, 1_000)),
                    vec![Stat::UnknownHost],
                ),
                (
                    "no magic",
                    {
                        let mut bytes = signed(PRIMARY, WINDOW, SEQ, 1_000).to_bytes();
                        bytes[0] = b'Y';
                        reply(PRIMARY, IDENT, ProbeHeader::from_bytes(bytes))
                    },
                    vec![],
                ),
            ];
            for (name, frame, stats) in cases {
                assert_eq!(run(&xdp, &frame), (PASS, stats), "{name}");
            }
            assert_eq!(xdp.slot(0), HostSlot::default());
        }

        #[test]
        fn vlan_tagged_replies_are_counted() {
            require_root();
            let xdp = probe();
            let plain = valid();
            let tag = |tpid: u16, vid: u16| {
                let mut t = tpid.to_be_bytes().to_vec();
                t.extend_from_slice(&vid.to_be_bytes());
                t
            };
            // 802.1Q: the tag between the MACs and the EtherType.
            let mut dot1q = plain[..12].to_vec();
            dot1q.extend(tag(0x8100, 42));
            dot1q.extend_from_slice(&plain[12..]);
            assert_eq!(run(&xdp, &dot1q), (DROP, vec![Stat::Counted]));
            // 802.1ad outer tag, then 802.1Q (QinQ), for another probe.
            let second = reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ - 1, 1_000));
            let mut qinq = second[..12].to_vec();
            qinq.extend(tag(0x88a8, 7));
            qinq.extend(tag(0x8100, 42));
            qinq.extend_from_slice(&second[12..]);
            assert_eq!(run(&xdp, &qinq), (DROP, vec![Stat::Counted]));
            // Three tags are more than we look through: passed untouched.
            let third = reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ - 2, 1_000));
            let mut deep = third[..12].to_vec();
            for _ in 0..3 {
                deep.extend(tag(0x8100, 1));
            }
            deep.extend_from_slice(&third[12..]);
            assert_eq!(run(&xdp, &deep), (PASS, vec![]));
            assert_eq!(xdp.slot(0).total_replies, 2);
        }

        #[test]
        fn truncated_malformed_and_other_frames_pass() {
            require_root();
            let xdp = probe();
            let full = valid();
            let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
            // Truncated inside IPv4, ICMP and our header (BPF_PROG_TEST_RUN refuses frames
            // shorter than an Ethernet header, so no shorter case can reach the program).
            for len in [
                ETH_HDR_LEN,
                ETH_HDR_LEN + 10,
                ETH_HDR_LEN + 19,
                ETH_HDR_LEN + 27,
                full.len() - 1,
            ] {
                cases.push((format!("truncated to {len}"), full[..len].to_vec()));
            }
            let mut arp = full.clone();
            arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
            cases.push(("ARP ethertype".into(), arp));
            let mut v6 = full.clone();
            v6[ETH_HDR_LEN] = 0x65;
            cases.push(("IP version 6 in an IPv4 frame".into(), v6));
            let mut short_ihl = full.clone();
            short_ihl[ETH_HDR_LEN] = 0x44;
            cases.push(("IHL below 5".into(), short_ihl));
            let mut udp = full.clone();
            udp[ETH_HDR_LEN + 9] = 17;
            cases.push(("UDP".into(), udp));
            let mut fragment = full.clone();
            fragment[ETH_HDR_LEN + 6] = 0x20; // more fragments
            cases.push(("first fragment".into(), fragment));
            let mut request = full.clone();
            request[ETH_HDR_LEN + 20] = ICMP_ECHO_REQUEST;
            cases.push(("echo request".into(), request));
            let mut ihl_too_long = full.clone();
            ihl_too_long[ETH_HDR_LEN] = 0x4f; // 60-byte header: our payload would lie past the end
            cases.push(("IHL beyond the frame".into(), ihl_too_long));
            for (name, frame) in cases {
                assert_eq!(xdp.test_run(&frame).unwrap(), PASS, "{name}");
            }
            assert_eq!(xdp.slot(0), HostSlot::default());
            assert_eq!(xdp.kernel_stats().unwrap(), [0; Stat::COUNT as usize]);
        }

        #[test]
        fn ip_options_shift_the_icmp_header_and_are_handled() {
            require_root();
            let xdp = probe();
            let plain = valid();
            // Insert 4 bytes of options (NOPs + end of list) after the 20-byte IPv4 header.
            let mut frame = plain[..ETH_HDR_LEN + 20].to_vec();
            frame[ETH_HDR_LEN] = 0x46;
            frame.extend_from_slice(&[1, 1, 1, 0]);
            frame.extend_from_slice(&plain[ETH_HDR_LEN + 20..]);
            assert_eq!(xdp.test_run(&frame).unwrap(), DROP);
            assert_eq!(xdp.slot(0).total_replies, 1);
        }

        #[test]
        fn nothing_counts_before_the_first_publish() {
            require_root();
            let mut xdp = XdpProbe::load(&[PRIMARY], 1, false, false).expect("load (needs root)");
            xdp.set_key(WINDOW, KEY).unwrap();
            assert_eq!(xdp.test_run(&valid()).unwrap(), PASS);
            xdp.publish(ACCEPT).unwrap();
            assert_eq!(xdp.test_run(&valid()).unwrap(), DROP);
        }

        #[test]
        fn clearing_an_answer_bit_lets_the_next_probe_with_it_count() {
            require_root();
            let mut xdp = probe();
            assert_eq!(run(&xdp, &valid()).0, DROP);
            // 64 sequences later the same bit belongs to a new probe: cleared before it is
            // sent, its answer counts.
            xdp.clear(0, probe_common::maps::answer_bit(SEQ + 64));
            xdp.publish(Accept {
                seq_max: SEQ + 64,
                ..ACCEPT
            })
            .unwrap();
            let newer = reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ + 64, 1_000));
            assert_eq!(run(&xdp, &newer), (DROP, vec![Stat::Counted]));
            assert_eq!(xdp.slot(0).total_replies, 2);
        }

        #[test]
        fn rehosting_switches_tables_without_pausing_and_keeps_each_hosts_counters() {
            require_root();
            const LOW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 0);
            let mut xdp = loaded(&[PRIMARY], 4, true);
            assert_eq!(run(&xdp, &valid()).0, DROP);
            let other = |seq| reply(OTHER, IDENT, signed(OTHER, WINDOW, seq, 1_000));
            assert_eq!(run(&xdp, &other(SEQ)).0, PASS, "not watched yet");

            // A host before PRIMARY and one after: PRIMARY's slot moves from 0 to 1.
            xdp.rehost(&[LOW, PRIMARY, OTHER], &[None, Some(0), None])
                .unwrap();
            // Counting goes on at once, in the new tables.
            assert_eq!(run(&xdp, &other(SEQ)), (DROP, vec![Stat::Counted]));
            let retry = reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ - 1, 1_000));
            assert_eq!(run(&xdp, &retry).0, DROP);
            assert_eq!(xdp.slot(0), HostSlot::default());
            assert_eq!(xdp.slot(1).total_replies, 2, "moved, then counted again");
            assert_eq!(xdp.slot(2).total_replies, 1);
            // The copy kept PRIMARY's answer: its replay does not count in the new table.
            assert_eq!(run(&xdp, &valid()), (PASS, vec![Stat::Replayed]));

            // What the old table counted after the copy (a CPU still in it) is merged at the
            // next publish: simulate one more answer there.
            let (bits, total) = xdp.slot_atomics(1 - (xdp.value.generation as usize & 1));
            bits.fetch_or(probe_common::maps::answer_bit(SEQ - 2), Ordering::SeqCst);
            total.fetch_add(1, Ordering::SeqCst);
            xdp.publish(ACCEPT).unwrap();
            let slot = xdp.slot(1);
            assert_eq!(slot.total_replies, 3);
            assert_ne!(slot.answered & probe_common::maps::answer_bit(SEQ - 2), 0);

            // PRIMARY removed: OTHER keeps its counters, PRIMARY's replies count no more.
            xdp.rehost(&[OTHER], &[Some(2)]).unwrap();
            let fresh = reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ - 3, 1_000));
            assert_eq!(run(&xdp, &fresh), (PASS, vec![Stat::UnknownHost]));
            assert_eq!(xdp.slot(0).total_replies, 1);

            // More hosts than the maps were sized for: refused, and nothing moved.
            let five: Vec<Ipv4Addr> = (10..15).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect();
            let error = xdp.rehost(&five, &[None; 5]).unwrap_err();
            assert!(format!("{error:#}").contains("restart"), "{error:#}");
            assert_eq!(run(&xdp, &other(SEQ - 1)).0, DROP);
            assert_eq!(xdp.slot(0).total_replies, 2);
        }

        #[test]
        fn maps_loaded_without_room_to_switch_refuse_to_rehost() {
            require_root();
            let mut xdp = loaded(&[PRIMARY], 4, false);
            let error = xdp.rehost(&[PRIMARY, OTHER], &[Some(0), None]).unwrap_err();
            assert!(format!("{error:#}").contains("switch"), "{error:#}");
            assert_eq!(run(&xdp, &valid()).0, DROP);
        }

        #[test]
        fn loads_with_kernel_diagnostics_on() {
            require_root();
            let mut xdp =
                XdpProbe::load(&[PRIMARY, OTHER], 2, true, true).expect("load with debug logging");
            assert_eq!(xdp.test_run(&valid()).unwrap(), PASS);
            xdp.set_key(WINDOW, KEY).unwrap();
            xdp.publish(ACCEPT).unwrap();
            assert_eq!(xdp.test_run(&valid()).unwrap(), DROP);
        }
    }
}
