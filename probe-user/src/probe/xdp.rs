//! The kernel side seen from userspace: load the XDP program, size and fill its maps, attach it,
//! publish each round's config and each window's key, read the per-host slots and clear their
//! answer bits, and switch host tables on reload without pausing the program.

use std::{
    net::IpAddr,
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
    host::HostKey,
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
        hosts: &[IpAddr],
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
    fn write_half(&mut self, generation: usize, hosts: &[IpAddr], slots: &[HostSlot]) {
        let base = generation * self.capacity;
        for (i, (addr, slot)) in hosts.iter().zip(slots).enumerate() {
            // SAFETY: `check_hosts` kept `i` below the capacity, and `generation` is below
            // `halves`, so both entries lie inside their writable mappings, whose elements are
            // ADDR_STRIDE and SLOT_STRIDE apart.
            unsafe {
                self.addrs
                    .ptr()
                    .add((base + i) * ADDR_STRIDE)
                    .cast::<HostKey>()
                    .write_volatile(HostKey::from(*addr));
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

    fn rehost(&mut self, hosts: &[IpAddr], from: &[Option<usize>]) -> anyhow::Result<()> {
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
fn check_hosts(hosts: &[IpAddr], from: &[Option<usize>], capacity: usize) -> anyhow::Result<()> {
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

/// Array maps store each value rounded up to 8 bytes: a [`HostKey`] is 16.
const ADDR_STRIDE: usize = std::mem::size_of::<HostKey>();
const _: () = assert!(ADDR_STRIDE.is_multiple_of(8));
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
mod tests;
#[cfg(test)]
mod tests_ipv6;
