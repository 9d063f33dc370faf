//! The kernel side seen from userspace: load the XDP program, size and fill its maps, attach it,
//! publish each window's config and read the per-host slots.

use std::net::Ipv4Addr;

use anyhow::{anyhow, Context as _};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use aya_log::EbpfLogger;
use probe_common::maps::{
    HostSlot, ProbeConfig, Stat, CONFIG_MAP, HOSTS_MAP, LOG_LEVEL_GLOBAL, PROGRAM_NAME, SLOTS_MAP,
    STATS_MAP,
};
use tokio::io::unix::AsyncFd;
use tracing::{debug, warn};

/// The program object, built by `build.rs` from the `probe-ebpf` crate.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));

/// The loaded program and its maps. Dropping it detaches the program from the interface.
pub struct XdpProbe {
    // Owns the program and its link; kept alive for as long as we probe.
    ebpf: Ebpf,
    config: Array<MapData, ProbeConfig>,
    slots: Array<MapData, HostSlot>,
    stats: PerCpuArray<MapData, u64>,
    hosts: usize,
}

/// How the program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Generic,
}

impl XdpProbe {
    /// Loads the program with its maps sized for `hosts` (slot `i` is `hosts[i]`).
    /// With `debug`, the program's aya-log diagnostics are compiled in by the verifier;
    /// without, the log level is 0 and every log call is pruned at load time.
    pub fn load(hosts: &[Ipv4Addr], debug: bool) -> anyhow::Result<Self> {
        let n = u32::try_from(hosts.len().max(1)).context("too many hosts")?;
        // aya_log_common::Level: Error = 1 ... Trace = 5; 0 disables everything.
        let level: u8 = if debug { 5 } else { 0 };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(HOSTS_MAP, n)
            .map_max_entries(SLOTS_MAP, n)
            .override_global(LOG_LEVEL_GLOBAL, &level, true)
            .load(PROGRAM)
            .context("loading the XDP program into the kernel")?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("program {PROGRAM_NAME} missing from the object"))?
            .try_into()?;
        program.load().context("verifying the XDP program")?;

        let mut host_map: HashMap<_, u32, u32> = HashMap::try_from(take(&mut ebpf, HOSTS_MAP)?)?;
        for (index, addr) in hosts.iter().enumerate() {
            host_map
                .insert(u32::from_ne_bytes(addr.octets()), index as u32, 0)
                .with_context(|| format!("adding {addr} to the {HOSTS_MAP} map"))?;
        }
        Ok(Self {
            config: Array::try_from(take(&mut ebpf, CONFIG_MAP)?)?,
            slots: Array::try_from(take(&mut ebpf, SLOTS_MAP)?)?,
            stats: PerCpuArray::try_from(take(&mut ebpf, STATS_MAP)?)?,
            ebpf,
            hosts: hosts.len(),
        })
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

    /// Publishes what the program accepts from now on.
    pub fn set_config(&mut self, config: ProbeConfig) -> anyhow::Result<()> {
        self.config
            .set(0, config, 0)
            .context("updating the CONFIG map")
    }

    /// Reads every host's slot into `out` (index-aligned with the host list given to `load`).
    pub fn read_slots(&self, out: &mut Vec<HostSlot>) -> anyhow::Result<()> {
        out.clear();
        for index in 0..self.hosts as u32 {
            out.push(self.slots.get(&index, 0).context("reading the SLOTS map")?);
        }
        Ok(())
    }

    /// The program's counters, summed over CPUs, in [`Stat::ALL`] order.
    pub fn stats(&self) -> anyhow::Result<[u64; Stat::COUNT as usize]> {
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

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the XDP object"))
}
