//! The kernel side seen from userspace: load the XDP program, size and fill its maps, attach it,
//! publish each window's config and read the per-host slots.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _},
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _};
use aya::{
    maps::{Array, Map, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use aya_log::EbpfLogger;
use memmap2::{MmapOptions, MmapRaw};
use probe_common::maps::{
    HostSlot, ProbeConfig, Stat, ADDRS_MAP, CONFIG_MAP, LOG_LEVEL_GLOBAL, MAX_HOSTS, PROGRAM_NAME,
    SLOTS_MAP, STATS_MAP,
};
use tokio::io::unix::AsyncFd;
use tracing::{debug, warn};

use crate::probe::counters::Counters;

/// The program object, built by `build.rs` from the `probe-ebpf` crate.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));

/// The loaded program and its maps. Dropping it detaches the program from the interface.
pub struct XdpProbe {
    // Owns the program and its link; kept alive for as long as we probe.
    ebpf: Ebpf,
    config: Array<MapData, ProbeConfig>,
    /// What `config` holds now.
    published: ProbeConfig,
    /// The sorted address table and the per-host slots, read and written without system
    /// calls. Declared before the maps so the mappings go before the maps' fds.
    addrs: Mapped,
    slots: Mapped,
    _addrs_map: MapData,
    _slots_map: MapData,
    /// Entries both tables have room for.
    capacity: usize,
    stats: PerCpuArray<MapData, u64>,
}

/// How the program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Generic,
}

/// How long the program is left paused before the host tables are rewritten: far longer than
/// one run of the program, which the kernel never preempts (it runs in softirq context).
const REWRITE_PAUSE: Duration = Duration::from_millis(1);

impl XdpProbe {
    /// Loads the program with its maps sized for `capacity` hosts and filled with `hosts`, which
    /// must be sorted and unique (slot `i` is `hosts[i]`; the program finds a host by binary
    /// search). Room beyond `hosts` is for hosts added later by [`Counters::rehost`].
    /// With `debug`, the program's aya-log diagnostics are compiled in by the verifier;
    /// without, the log level is 0 and every log call is pruned at load time.
    pub fn load(hosts: &[Ipv4Addr], capacity: usize, debug: bool) -> anyhow::Result<Self> {
        let capacity = capacity.max(hosts.len()).max(1);
        let entries = u32::try_from(capacity)
            .ok()
            .filter(|n| *n <= MAX_HOSTS)
            .with_context(|| format!("{capacity} hosts: at most {MAX_HOSTS} can be watched"))?;
        // aya_log_common::Level: Error = 1 ... Trace = 5; 0 disables everything.
        let level: u8 = if debug { 5 } else { 0 };
        let mut ebpf = EbpfLoader::new()
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
        let addrs = Mapped::new(&addrs_map, capacity * ADDR_STRIDE)
            .with_context(|| format!("mapping the {ADDRS_MAP} map"))?;
        let slots_map = array_data(take(&mut ebpf, SLOTS_MAP)?)?;
        let slots = Mapped::new(&slots_map, capacity * SLOT_STRIDE)
            .with_context(|| format!("mapping the {SLOTS_MAP} map"))?;
        let mut probe = Self {
            config: Array::try_from(take(&mut ebpf, CONFIG_MAP)?)?,
            published: ProbeConfig::default(),
            addrs,
            slots,
            _addrs_map: addrs_map,
            _slots_map: slots_map,
            capacity,
            stats: PerCpuArray::try_from(take(&mut ebpf, STATS_MAP)?)?,
            ebpf,
        };
        // Nothing is attached yet: no need to pause the program.
        let fresh = vec![None; hosts.len()];
        probe.write_tables(hosts, &fresh)?;
        probe.publish(ProbeConfig {
            hosts: hosts.len() as u32,
            ..ProbeConfig::default()
        })?;
        Ok(probe)
    }

    /// Writes the address table and the slots for `hosts`: slot `i` gets the counters of old
    /// slot `from[i]`, or zeroes. The program must not be counting (nothing attached, or
    /// paused).
    fn write_tables(&mut self, hosts: &[Ipv4Addr], from: &[Option<usize>]) -> anyhow::Result<()> {
        if !hosts.windows(2).all(|w| w[0] < w[1]) {
            bail!("the host list must be sorted and free of duplicates");
        }
        if hosts.len() != from.len() {
            bail!("{} hosts but {} slot origins", hosts.len(), from.len());
        }
        if hosts.len() > self.capacity {
            bail!(
                "{} hosts do not fit the {} the XDP maps were sized for at start-up",
                hosts.len(),
                self.capacity
            );
        }
        // Read every moving slot before any is overwritten.
        let slots: Vec<HostSlot> = from
            .iter()
            .map(|old| old.map(|i| self.slot(i)).unwrap_or_default())
            .collect();
        for (i, (addr, slot)) in hosts.iter().zip(slots).enumerate() {
            // SAFETY: i < capacity, so both entries lie inside their writable mappings, whose
            // elements are ADDR_STRIDE and SLOT_STRIDE apart.
            unsafe {
                self.addrs
                    .ptr()
                    .add(i * ADDR_STRIDE)
                    .cast::<u32>()
                    .write_volatile(u32::from(*addr));
                self.slots
                    .ptr()
                    .add(i * SLOT_STRIDE)
                    .cast::<HostSlot>()
                    .write_volatile(slot);
            }
        }
        Ok(())
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
    fn publish(&mut self, config: ProbeConfig) -> anyhow::Result<()> {
        self.config
            .set(0, config, 0)
            .context("updating the CONFIG map")?;
        self.published = config;
        Ok(())
    }

    fn rehost(&mut self, hosts: &[Ipv4Addr], from: &[Option<usize>]) -> anyhow::Result<()> {
        if hosts.len() > self.capacity {
            bail!(
                "{} hosts do not fit the {} the XDP maps were sized for at start-up; \
                 restart xdprobe to grow them",
                hosts.len(),
                self.capacity
            );
        }
        // Pause counting, and let any run of the program that read the old config finish,
        // before the tables move under it. The next publish resumes counting.
        self.publish(ProbeConfig {
            enabled: 0,
            ..self.published
        })?;
        std::thread::sleep(REWRITE_PAUSE);
        self.write_tables(hosts, from)
    }

    fn slot(&self, index: usize) -> HostSlot {
        assert!(
            (index + 1) * SLOT_STRIDE <= self.slots.len,
            "slot {index} out of range"
        );
        // SAFETY: in bounds (checked above) of a live mapping of the SLOTS array,
        // whose elements are SLOT_STRIDE apart. The kernel writes it concurrently, so read it
        // volatile and as a copy: a torn read can only mix two consecutive counter states.
        unsafe {
            self.slots
                .ptr()
                .add(index * SLOT_STRIDE)
                .cast::<HostSlot>()
                .read_volatile()
        }
    }

    fn stats(&self) -> [u64; Stat::COUNT as usize] {
        self.kernel_stats().unwrap_or_else(|error| {
            warn!(error = %format!("{error:#}"), "cannot read the XDP program's counters");
            [0; Stat::COUNT as usize]
        })
    }
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

            fn slot_at(&self, index: u32) -> HostSlot {
                Counters::slot(self, index as usize)
            }
        }

        const PRIMARY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
        const OTHER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 9);
        const ME: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
        const IDENT: u16 = 0x4242;
        const WINDOW: u32 = 7;
        const COOKIE: u32 = 0x0bad_cafe;
        // enum xdp_action in <linux/bpf.h>.
        const DROP: u32 = 1;
        const PASS: u32 = 2;

        /// The window the tests' replies belong to, with PRIMARY as the one host.
        const CONFIG: ProbeConfig = ProbeConfig {
            ident: IDENT as u32,
            window: WINDOW,
            cookie: COOKIE,
            enabled: 1,
            hosts: 1,
        };

        fn probe() -> XdpProbe {
            let mut xdp = XdpProbe::load(&[PRIMARY], 1, false).expect("load (needs root)");
            xdp.publish(CONFIG).unwrap();
            xdp
        }

        fn ethernet(ether_type: u16, payload: &[u8]) -> Vec<u8> {
            let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
            frame.extend_from_slice(&ether_type.to_be_bytes());
            frame.extend_from_slice(payload);
            frame
        }

        fn reply_from(
            src: Ipv4Addr,
            ident: u16,
            window: u32,
            cookie: u32,
            sent_ns: u64,
        ) -> Vec<u8> {
            let mut ip = [0u8; ECHO_PACKET_LEN];
            EchoPacket {
                src: src.octets(),
                dst: ME.octets(),
                icmp_type: ICMP_ECHO_REPLY,
                ident,
                seq: 1,
                probe: ProbeHeader::new(window, cookie, 1, sent_ns),
            }
            .write(&mut ip);
            ethernet(0x0800, &ip)
        }

        fn valid() -> Vec<u8> {
            reply_from(PRIMARY, IDENT, WINDOW, COOKIE, monotonic_ns() - 1_000_000)
        }

        #[test]
        fn a_valid_reply_is_counted_with_its_rtt_and_dropped() {
            require_root();
            let xdp = probe();
            assert_eq!(xdp.test_run(&valid()).unwrap(), DROP);
            assert_eq!(xdp.test_run(&valid()).unwrap(), DROP);
            let slot = xdp.slot_at(0);
            assert_eq!(slot.total_replies, 2);
            // Sent 1 ms "ago": the kernel's RTT is at least that, and sane.
            assert!(
                (1_000_000..4_000_000_000).contains(&slot.rtt_ns),
                "rtt {}",
                slot.rtt_ns
            );
            assert_eq!(xdp.kernel_stats().unwrap()[Stat::Counted as usize], 2);
        }

        #[test]
        fn replies_that_are_not_ours_pass_untouched_and_count_nothing() {
            require_root();
            let xdp = probe();
            let now = monotonic_ns();
            let cases: [(&str, Vec<u8>, Option<Stat>); 5] = [
                (
                    "wrong identifier",
                    reply_from(PRIMARY, IDENT + 1, WINDOW, COOKIE, now),
                    None,
                ),
                (
                    "wrong cookie",
                    reply_from(PRIMARY, IDENT, WINDOW, COOKIE ^ 1, now),
                    Some(Stat::WrongCookie),
                ),
                (
                    "stale window",
                    reply_from(PRIMARY, IDENT, WINDOW - 1, COOKIE, now),
                    Some(Stat::StaleWindow),
                ),
                (
                    "future window",
                    reply_from(PRIMARY, IDENT, WINDOW + 1, COOKIE, now),
                    Some(Stat::StaleWindow),
                ),
                (
                    "unknown host",
                    reply_from(OTHER, IDENT, WINDOW, COOKIE, now),
                    Some(Stat::UnknownHost),
                ),
            ];
            for (name, frame, stat) in cases {
                let before = xdp.kernel_stats().unwrap();
                assert_eq!(xdp.test_run(&frame).unwrap(), PASS, "{name}");
                let after = xdp.kernel_stats().unwrap();
                for s in Stat::ALL {
                    let expected = before[s as usize] + u64::from(Some(s) == stat);
                    assert_eq!(after[s as usize], expected, "{name}: counter {s:?}");
                }
            }
            assert_eq!(xdp.slot_at(0), HostSlot::default());
        }

        #[test]
        fn truncated_malformed_and_other_frames_pass() {
            require_root();
            let xdp = probe();
            let full = valid();
            let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
            // Truncated inside IPv4, ICMP and our header (BPF_PROG_TEST_RUN refuses frames shorter
            // than an Ethernet header, so no shorter case can reach the program).
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
            assert_eq!(xdp.slot_at(0), HostSlot::default());
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
            assert_eq!(xdp.slot_at(0).total_replies, 1);
        }

        #[test]
        fn nothing_counts_before_the_first_window_is_published() {
            require_root();
            let mut xdp = XdpProbe::load(&[PRIMARY], 1, false).expect("load (needs root)");
            assert_eq!(xdp.test_run(&valid()).unwrap(), PASS);
            xdp.publish(CONFIG).unwrap();
            assert_eq!(xdp.test_run(&valid()).unwrap(), DROP);
        }

        #[test]
        fn rehosting_moves_each_hosts_counters_with_it_and_counts_new_hosts() {
            require_root();
            const LOW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 0);
            let mut xdp = XdpProbe::load(&[PRIMARY], 4, false).expect("load (needs root)");
            let config = CONFIG;
            xdp.publish(config).unwrap();
            assert_eq!(xdp.test_run(&valid()).unwrap(), DROP);
            let other = || reply_from(OTHER, IDENT, WINDOW, COOKIE, monotonic_ns());
            assert_eq!(xdp.test_run(&other()).unwrap(), PASS, "not watched yet");

            // A host before PRIMARY and one after: PRIMARY's slot moves from 0 to 1.
            xdp.rehost(&[LOW, PRIMARY, OTHER], &[None, Some(0), None])
                .unwrap();
            assert_eq!(
                xdp.test_run(&valid()).unwrap(),
                PASS,
                "paused until the next publish"
            );
            xdp.publish(ProbeConfig { hosts: 3, ..config }).unwrap();
            assert_eq!(xdp.test_run(&valid()).unwrap(), DROP);
            assert_eq!(xdp.test_run(&other()).unwrap(), DROP);
            assert_eq!(xdp.slot_at(0), HostSlot::default());
            assert_eq!(xdp.slot_at(1).total_replies, 2, "moved, then counted again");
            assert_eq!(xdp.slot_at(2).total_replies, 1);

            // PRIMARY removed: OTHER keeps its counters, PRIMARY's replies count no more.
            xdp.rehost(&[OTHER], &[Some(2)]).unwrap();
            xdp.publish(ProbeConfig { hosts: 1, ..config }).unwrap();
            assert_eq!(xdp.test_run(&valid()).unwrap(), PASS);
            assert_eq!(xdp.slot_at(0).total_replies, 1);

            // More hosts than the maps were sized for: refused, and nothing moved.
            let five: Vec<Ipv4Addr> = (10..15).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect();
            let error = xdp.rehost(&five, &[None; 5]).unwrap_err();
            assert!(format!("{error:#}").contains("restart"), "{error:#}");
            assert_eq!(xdp.test_run(&other()).unwrap(), DROP);
            assert_eq!(xdp.slot_at(0).total_replies, 2);
        }

        #[test]
        fn loads_with_kernel_diagnostics_on() {
            require_root();
            let xdp = XdpProbe::load(&[PRIMARY, OTHER], 2, true).expect("load with debug logging");
            assert_eq!(xdp.test_run(&valid()).unwrap(), PASS);
        }
    }
}
