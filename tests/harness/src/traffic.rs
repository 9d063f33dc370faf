//! Traffic the tests make and measure: a client pinging the VIP every few milliseconds, a
//! forger of echo replies, random loss with nftables, a host whose link flaps.

use std::{
    io::Read as _,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{bail, Context as _};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::{cmd::run, lab::Lab, smtp::PYTHON};

/// `ping -D` from a host: every reply stamped with its Unix time.
pub struct Pinger {
    child: Child,
}

impl Pinger {
    pub fn start(lab: &Lab, host: &str, target: &str, interval: Duration) -> anyhow::Result<Self> {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns(host),
                "ping",
                "-D",
                "-n",
                "-W",
                "1",
            ])
            .args(["-i", &format!("{:.3}", interval.as_secs_f64()), target])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ping")?;
        Ok(Self { child })
    }

    /// Stops ping (SIGINT, so it flushes) and returns the reply times in seconds.
    pub fn stop(mut self) -> anyhow::Result<Vec<f64>> {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // Our own child, not reaped yet: the pid is still its own.
            let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
        }
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .context("ping stdout")?
            .read_to_string(&mut out)?;
        self.child.wait()?;
        Ok(reply_times(&out))
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[seconds.micros]` stamps of ping -D's reply lines.
pub fn reply_times(ping_output: &str) -> Vec<f64> {
    ping_output
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
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
    fn ping_reply_times_and_gaps() {
        let out = "PING 192.0.2.100 (192.0.2.100) 56(84) bytes of data.\n\
                   [1700000000.100000] 64 bytes from 192.0.2.100: icmp_seq=1 ttl=64 time=0.05 ms\n\
                   [1700000000.105000] 64 bytes from 192.0.2.100: icmp_seq=2 ttl=64 time=0.05 ms\n\
                   [1700000000.230000] 64 bytes from 192.0.2.100: icmp_seq=27 ttl=64 time=0.05 ms\n\
                   [1700000000.235000] From 192.0.2.3 icmp_seq=28 Destination Host Unreachable\n";
        let times = reply_times(out);
        assert_eq!(times.len(), 3);
        assert!((longest_gap(&times) - 0.125).abs() < 1e-6);
    }
}
