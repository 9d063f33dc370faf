//! A client-side view of who answers for an address: [`ArpAsker`] sends an ARP request (for an
//! IPv6 address: a Neighbour Solicitation) for it every few milliseconds from a host and
//! records every frame in which a machine says it has the address (ARP replies, gratuitous
//! announcements, Neighbour Advertisements: when, which MAC), so a test can see two machines
//! answering for one VIP at once, as a client re-resolving it would, or see the VIP announced
//! again. Also [`monotonic`], the clock its records are on.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{bail, Context as _};

use crate::{lab::Lab, smtp::PYTHON};

/// Seconds on CLOCK_MONOTONIC (Python's `time.monotonic()`), which [`ArpAsker`] stamps with.
pub fn monotonic() -> f64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9
}

const ASKER: &str = r#"
import select, socket, struct, sys, time
iface, me, target, every = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((iface, 0x0806))
mac = s.getsockname()[4]
tip = socket.inet_aton(target)
req = (b'\xff' * 6 + mac + struct.pack('!HHHBBH', 0x0806, 1, 0x0800, 6, 4, 1)
       + mac + socket.inet_aton(me) + b'\0' * 6 + tip)
s.setblocking(False)
print('ready', flush=True)
due = time.monotonic()
while True:
    now = time.monotonic()
    if every > 0 and now >= due:
        s.send(req)
        due = max(due + every, now)
    elif every <= 0:
        due = now + 1.0
    r, _, _ = select.select([s], [], [], max(0.0, due - time.monotonic()))
    while r:
        try:
            f = s.recv(128)
        except BlockingIOError:
            break
        if len(f) >= 42 and f[12:14] == b'\x08\x06' and f[28:32] == tip:
            g = 'g' if f[38:42] == tip else 'r'
            print('%.6f %s %s' % (time.monotonic(), f[22:28].hex(':'), g), flush=True)
"#;

const ND_ASKER: &str = r#"
import select, socket, struct, sys, time
iface, me, target, every = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.bind((me, 0))
index = socket.if_nametoindex(iface)
mac = bytes.fromhex(open('/sys/class/net/%s/address' % iface).read().strip().replace(':', ''))
tip = socket.inet_pton(socket.AF_INET6, target)
group = socket.inet_ntop(socket.AF_INET6, bytes.fromhex('ff0200000000000000000001ff') + tip[13:])
ns = struct.pack('!BBHI', 135, 0, 0, 0) + tip + struct.pack('!BB', 1, 1) + mac
s.setblocking(False)
print('ready', flush=True)
due = time.monotonic()
while True:
    now = time.monotonic()
    if every > 0 and now >= due:
        s.sendto(ns, (group, 0, 0, index))
        due = max(due + every, now)
    elif every <= 0:
        due = now + 1.0
    r, _, _ = select.select([s], [], [], max(0.0, due - time.monotonic()))
    while r:
        try:
            f = s.recv(256)
        except BlockingIOError:
            break
        if len(f) < 24 or f[0] != 136 or f[8:24] != tip:
            continue
        opts, tlla = f[24:], None
        while len(opts) >= 8 and opts[1] > 0:
            if opts[0] == 2:
                tlla = opts[2:8]
            opts = opts[8 * opts[1]:]
        if tlla is not None:
            g = 'r' if f[4] & 0x40 else 'g'
            print('%.6f %s %s' % (time.monotonic(), tlla.hex(':'), g), flush=True)
"#;

/// One ARP frame or Neighbour Advertisement in which a machine says it has the address.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    /// When (monotonic seconds, see [`monotonic`]).
    pub at: f64,
    /// The MAC it gave for the address (the ARP sender MAC, the NA's target link-layer
    /// address).
    pub mac: String,
    /// A gratuitous announcement (ARP: target IP = sender IP; NDP: Solicited clear), not an
    /// answer to a request.
    pub gratuitous: bool,
}

/// Asks "who has TARGET" every `every` (zero: only listens) from a host's `eth0`; records
/// each frame in which a machine claims TARGET.
pub struct ArpAsker {
    child: Child,
    replies: Arc<Mutex<Vec<Seen>>>,
    reader: Option<JoinHandle<()>>,
}

impl ArpAsker {
    /// Starts asking from `host` (whose own address is `me`) for `target`.
    pub fn start(
        lab: &Lab,
        host: &str,
        me: &str,
        target: &str,
        every: Duration,
    ) -> anyhow::Result<Self> {
        let script = if target.contains(':') {
            ND_ASKER
        } else {
            ASKER
        };
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.ns(host), PYTHON, "-c", script])
            .args(["eth0", me, target, &every.as_secs_f64().to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the ARP asker")?;
        let stdout = child.stdout.take().context("ARP asker stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        if lines.next().and_then(Result::ok).as_deref() != Some("ready") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.kill();
            let _ = child.wait();
            bail!("the ARP asker did not start: {err}");
        }
        let replies = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&replies);
        let reader = thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut words = line.split_whitespace();
                if let (Some(t), Some(mac), Some(kind)) = (words.next(), words.next(), words.next())
                {
                    if let Ok(at) = t.parse::<f64>() {
                        let mut all = sink.lock().unwrap_or_else(|e| e.into_inner());
                        all.push(Seen {
                            at,
                            mac: mac.to_string(),
                            gratuitous: kind == "g",
                        });
                    }
                }
            }
        });
        Ok(Self {
            child,
            replies,
            reader: Some(reader),
        })
    }

    /// Every frame seen so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops asking; every frame seen, in order.
    pub fn stop(mut self) -> Vec<Seen> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let replies = self.replies.lock().unwrap_or_else(|e| e.into_inner());
        replies.clone()
    }
}

impl Drop for ArpAsker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long two MACs answered at once, as a client sees it: from `newcomer`'s first reply at
/// or after `since` to `holder`'s last reply (zero if `holder` stopped first). `None` when
/// either did not answer at or after `since` (the premise failed: a holder silent before the
/// newcomer came back would make any overlap look like zero).
pub fn two_holders(replies: &[Seen], since: f64, holder: &str, newcomer: &str) -> Option<Duration> {
    let first_new = replies
        .iter()
        .find(|s| s.at >= since && s.mac == newcomer)?
        .at;
    let last_old = replies
        .iter()
        .rev()
        .find(|s| s.at >= since && s.mac == holder)?
        .at;
    Some(Duration::from_secs_f64((last_old - first_new).max(0.0)))
}

/// The first gratuitous announcement by `mac` at or after `since`, if any: when.
pub fn announced(seen: &[Seen], since: f64, mac: &str) -> Option<f64> {
    seen.iter()
        .find(|s| s.at >= since && s.gratuitous && s.mac == mac)
        .map(|s| s.at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_holders_is_the_overlap_after_the_newcomer_appears() {
        let r = |at: f64, m: &str| Seen {
            at,
            mac: m.to_string(),
            gratuitous: false,
        };
        let replies = [
            r(1.0, "new"), // before `since`: ignored
            r(2.0, "old"),
            r(2.10, "new"),
            r(2.12, "old"),
            r(2.15, "new"),
        ];
        let d = two_holders(&replies, 1.5, "old", "new").unwrap();
        assert!((d.as_secs_f64() - 0.02).abs() < 1e-9, "{d:?}");
        let gone_first = [r(2.0, "old"), r(2.1, "new")];
        assert_eq!(
            two_holders(&gone_first, 1.5, "old", "new"),
            Some(Duration::ZERO)
        );
        assert_eq!(two_holders(&gone_first, 2.5, "old", "new"), None);
        assert_eq!(two_holders(&[r(2.0, "new")], 1.0, "old", "new"), None);
        // The holder silent since before `since`: no evidence either way, not a zero overlap.
        let silent_holder = [r(1.0, "old"), r(2.1, "new")];
        assert_eq!(two_holders(&silent_holder, 1.5, "old", "new"), None);
        let garp = Seen {
            gratuitous: true,
            ..r(2.2, "old")
        };
        let seen = [r(2.1, "old"), garp.clone(), r(2.3, "old")];
        assert_eq!(announced(&seen, 2.0, "old"), Some(2.2));
        assert_eq!(announced(&seen, 2.25, "old"), None);
    }
}
