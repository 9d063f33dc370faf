//! Traffic the tests make and measure: a client pinging the VIP every few milliseconds, a
//! forger of echo replies, random loss with nftables, a host whose link flaps.

use std::{
    io::{self, Read as _},
    net::{IpAddr, SocketAddr},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::{cmd::run, lab::Lab, responder::checksum, smtp::PYTHON};

/// A client pinging a target every `interval`, whether or not it gets answers (iputils ping
/// slows to one probe every 10 ms once replies stop, which would blur an outage by as much),
/// and stamping every reply with its Unix time. Echo requests from a raw ICMP socket in the
/// host's namespace (ICMPv6 for an IPv6 target: the kernel fills in its checksum); a sender
/// thread paced by the clock, a receiver thread.
pub struct Pinger {
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<anyhow::Result<()>>>,
    receiver: Option<JoinHandle<anyhow::Result<Vec<f64>>>>,
}

impl Pinger {
    pub fn start(lab: &Lab, host: &str, target: &str, interval: Duration) -> anyhow::Result<Self> {
        let target: IpAddr = target.parse().context("the target is an IP address")?;
        let ns = lab.ns(host);
        let socket = Arc::new(crate::enter::run_in(&ns, || match target {
            IpAddr::V4(_) => Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)),
            IpAddr::V6(_) => Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)),
        })?);
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let ident = (std::process::id() as u16) ^ 0x5a5a;
        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let (socket, stop) = (Arc::clone(&socket), Arc::clone(&stop));
            thread::spawn(move || send_pings(&socket, target, ident, interval, &stop))
        };
        let receiver = {
            let (socket, stop) = (Arc::clone(&socket), Arc::clone(&stop));
            thread::spawn(move || receive_replies(&socket, target, ident, &stop))
        };
        Ok(Self {
            stop,
            sender: Some(sender),
            receiver: Some(receiver),
        })
    }

    /// Stops pinging and returns the reply times in seconds since the Unix epoch.
    pub fn stop(mut self) -> anyhow::Result<Vec<f64>> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(sender) = self.sender.take() {
            sender
                .join()
                .map_err(|_| anyhow::anyhow!("the pinger's sender panicked"))??;
        }
        match self.receiver.take() {
            Some(receiver) => receiver
                .join()
                .map_err(|_| anyhow::anyhow!("the pinger's receiver panicked"))?,
            None => Ok(Vec::new()),
        }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(sender) = self.sender.take() {
            let _ = sender.join();
        }
        if let Some(receiver) = self.receiver.take() {
            let _ = receiver.join();
        }
    }
}

/// Echo requests to `target` on the clock: the n-th at `start + n * interval`.
fn send_pings(
    socket: &Socket,
    target: IpAddr,
    ident: u16,
    interval: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let to = SockAddr::from(SocketAddr::new(target, 0));
    let start = Instant::now();
    let mut seq: u16 = 0;
    while !stop.load(Ordering::SeqCst) {
        let mut packet = [0u8; 16];
        packet[0] = if target.is_ipv4() { 8 } else { 128 }; // echo request
        packet[4..6].copy_from_slice(&ident.to_be_bytes());
        packet[6..8].copy_from_slice(&seq.to_be_bytes());
        // The kernel computes an ICMPv6 checksum itself (over the pseudo-header).
        if target.is_ipv4() {
            let sum = checksum(&packet);
            packet[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        // A full queue or no route yet: the probe is lost, the pace goes on.
        let _ = socket.send_to(&packet, &to);
        seq = seq.wrapping_add(1);
        let next = start + interval * u32::from(seq);
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        }
    }
    Ok(())
}

/// The Unix times of the echo replies from `target` with our identifier.
fn receive_replies(
    socket: &Socket,
    target: IpAddr,
    ident: u16,
    stop: &AtomicBool,
) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::new();
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 256];
    while !stop.load(Ordering::SeqCst) {
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e).context("receiving echo replies"),
        };
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        // SAFETY: recv_from initialised the first `len` bytes of `buf`.
        let packet: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), len) };
        if from.as_socket().map(|a| a.ip()) != Some(target) {
            continue;
        }
        // A raw IPv4 socket hands over the IP header too; a raw ICMPv6 one does not.
        let (icmp, reply_type) = match target {
            IpAddr::V4(_) => {
                let ihl = usize::from(packet.first().copied().unwrap_or(0) & 0x0f) * 4;
                (packet.get(ihl..), 0)
            }
            IpAddr::V6(_) => (Some(packet), 129),
        };
        let Some(icmp) = icmp else {
            continue;
        };
        if icmp.len() >= 8
            && icmp[0] == reply_type
            && u16::from_be_bytes([icmp[4], icmp[5]]) == ident
        {
            times.push(at);
        }
    }
    Ok(times)
}

/// The longest time without a reply, in seconds.
pub fn longest_gap(times: &[f64]) -> f64 {
    times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

/// Sends forged echo replies "from" `src` to `dst` from host `from`: our identifier and magic,
/// every window number up to `windows`, random cookies: everything but the secret.
pub struct Forger {
    child: Child,
}

const FORGER: &str = r#"
import random, socket, struct, sys, time
ident, src, dst, windows = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
while True:
    for w in range(1, windows + 1):
        # Our format and plausible numbers (window w's probes have sequences 6(w-1) to 6w - 1
        # at 3 probes and 1 retry), but a MAC it cannot know.
        seq = 6 * (w - 1) + random.randrange(6)
        payload = b'XDP2' + struct.pack('!IIQQ', w, seq, time.monotonic_ns(), random.getrandbits(64))
        icmp = struct.pack('!BBHHH', 0, 0, 0, ident, 0) + payload
        icmp = icmp[:2] + struct.pack('!H', csum(icmp)) + icmp[4:]
        ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
        s.sendto(ip + icmp, (dst, 0))
    time.sleep(0.01)
"#;

impl Forger {
    pub fn start(
        lab: &Lab,
        from: &str,
        ident: u16,
        src: &str,
        dst: &str,
        windows: u32,
    ) -> anyhow::Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.ns(from), PYTHON, "-c", FORGER])
            .args([
                ident.to_string(),
                src.into(),
                dst.into(),
                windows.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the forger")?;
        let mut forger = Self { child };
        thread::sleep(Duration::from_millis(200));
        if let Some(status) = forger.child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = forger.child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            bail!("forger exited ({status}): {err}");
        }
        Ok(forger)
    }
}

impl Drop for Forger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drops `percent`% of the ICMP packets arriving at `host` (nftables, in its namespace).
pub fn icmp_loss(lab: &Lab, host: &str, percent: u32) -> anyhow::Result<()> {
    let ns = lab.ns(host);
    let rules = format!(
        "table inet lossy {{ chain input {{ type filter hook input priority 0; \
         ip protocol icmp numgen random mod 100 < {percent} drop; }}; }}"
    );
    run(&["ip", "netns", "exec", &ns, "nft", &rules])?;
    Ok(())
}

/// Takes `host`'s link down and up again, `down` then `up` long, until stopped.
pub struct Flapper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u32>>,
}

impl Flapper {
    pub fn start(lab: &Lab, host: &str, down: Duration, up: Duration) -> Self {
        let ns = lab.ns(host);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut flaps = 0;
            while !flag.load(Ordering::SeqCst) {
                let _ = run(&["ip", "-n", &ns, "link", "set", "eth0", "down"]);
                thread::sleep(down);
                let _ = run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
                thread::sleep(up);
                flaps += 1;
            }
            flaps
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops flapping with the link up; returns how many down/up cycles ran.
    pub fn stop(mut self) -> u32 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for Flapper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_between_reply_times() {
        let times = [1_700_000_000.100, 1_700_000_000.105, 1_700_000_000.230];
        assert!((longest_gap(&times) - 0.125).abs() < 1e-6);
        assert_eq!(longest_gap(&[1.0]), 0.0);
    }

    #[test]
    fn checksums_verify() {
        let mut packet = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1, 0xab];
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum(&packet), 0);
    }

    /// Needs root: a lab of namespaces and a raw socket.
    mod privileged {
        use super::*;
        use crate::require_root;

        #[test]
        fn the_pinger_keeps_its_pace_through_an_outage_and_measures_it() {
            require_root();
            let lab = Lab::with_hosts(&[("client", "192.0.2.3/24"), ("server", "192.0.2.1/24")])
                .expect("lab");
            let ping = Pinger::start(&lab, "client", "192.0.2.1", Duration::from_millis(2))
                .expect("pinger");
            thread::sleep(Duration::from_millis(200));
            lab.kill("server").unwrap();
            thread::sleep(Duration::from_millis(60));
            lab.revive("server").unwrap();
            thread::sleep(Duration::from_millis(200));
            let times = ping.stop().expect("reply times");
            // About 200 probes answered; one outage, no slower than the pace allows.
            assert!(times.len() > 120, "{} replies", times.len());
            let gap = longest_gap(&times);
            assert!((0.055..0.090).contains(&gap), "longest gap {gap:.4} s");
            let small = times.windows(2).filter(|w| w[1] - w[0] < 0.005).count();
            assert!(small > 100, "only {small} gaps near the 2 ms pace");
        }
    }
}
