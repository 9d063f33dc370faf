//! A client-side view of who answers for an address: [`ArpAsker`] sends an ARP request for it
//! every few milliseconds from a host and records every reply (when, which MAC), so a test
//! can see two machines answering for one VIP at once, as a client re-resolving it would.
//! Also [`monotonic`], the clock its records are on.

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
    if now >= due:
        s.send(req)
        due = max(due + every, now)
    r, _, _ = select.select([s], [], [], max(0.0, due - time.monotonic()))
    while r:
        try:
            f = s.recv(128)
        except BlockingIOError:
            break
        if len(f) >= 42 and f[12:14] == b'\x08\x06' and f[20:22] == b'\x00\x02' and f[28:32] == tip:
            print('%.6f %s' % (time.monotonic(), f[22:28].hex(':')), flush=True)
"#;

/// Asks "who has TARGET" every `every` from a host's `eth0`; records each reply.
pub struct ArpAsker {
    child: Child,
    replies: Arc<Mutex<Vec<(f64, String)>>>,
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
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.ns(host), PYTHON, "-c", ASKER])
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
                if let (Some(t), Some(mac)) = (words.next(), words.next()) {
                    if let Ok(t) = t.parse::<f64>() {
                        let mut all = sink.lock().unwrap_or_else(|e| e.into_inner());
                        all.push((t, mac.to_string()));
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

    /// Stops asking; every reply seen, in order: (monotonic seconds, MAC).
    pub fn stop(mut self) -> Vec<(f64, String)> {
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
/// either did not answer in that time (the premise failed).
pub fn two_holders(
    replies: &[(f64, String)],
    since: f64,
    holder: &str,
    newcomer: &str,
) -> Option<Duration> {
    let first_new = replies
        .iter()
        .find(|(t, mac)| *t >= since && mac == newcomer)?
        .0;
    let last_old = replies.iter().rev().find(|(_, mac)| mac == holder)?.0;
    Some(Duration::from_secs_f64((last_old - first_new).max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_holders_is_the_overlap_after_the_newcomer_appears() {
        let r = |t: f64, m: &str| (t, m.to_string());
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
    }
}
