//! An insider: a host that xdprobe probes (a witness, a monitored host) turning the probes it
//! receives into "replies" from another address, the primary's, each sent twice. It holds
//! every probe byte for byte, its MAC included: what it cannot have is a MAC made for the
//! primary. Built on the echo responder's packet functions; a thread inside the host's
//! namespace, stopped on drop.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::{
    enter,
    lab::Lab,
    responder::{echo_reply, parse_request, Request},
};

/// `IPPROTO_RAW`: a send-only raw socket whose packets carry our own IP header.
const IPPROTO_RAW: i32 = 255;

pub struct Insider {
    stop: Arc<AtomicBool>,
    forged: Arc<AtomicU64>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Insider {
    /// Starts forging on lab host `host`: every echo request that reaches it from `prober`
    /// comes back to the prober twice as an echo reply from `as_addr`. The host's kernel still
    /// answers its own pings as usual.
    pub fn start(
        lab: &Lab,
        host: &str,
        prober: Ipv4Addr,
        as_addr: Ipv4Addr,
    ) -> anyhow::Result<Self> {
        let ns = lab.ns(host);
        let (receive, send) = enter::run_in(&ns, || -> anyhow::Result<(Socket, Socket)> {
            let receive = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
                .context("raw ICMP socket (needs root)")?;
            receive.set_read_timeout(Some(Duration::from_millis(10)))?;
            let send = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))
                .context("raw IP socket (needs root)")?;
            Ok((receive, send))
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let forged = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, forged) = (Arc::clone(&stop), Arc::clone(&forged));
            std::thread::spawn(move || forge(&receive, &send, prober, as_addr, &stop, &forged))
        };
        Ok(Self {
            stop,
            forged,
            thread: Some(thread),
        })
    }

    /// Forged replies sent so far.
    pub fn forged(&self) -> u64 {
        self.forged.load(Ordering::Relaxed)
    }

    /// Stops forging; an error if the forging thread failed.
    pub fn stop(mut self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("the insider's thread panicked"))??;
        }
        Ok(self.forged())
    }
}

impl Drop for Insider {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn forge(
    receive: &Socket,
    send: &Socket,
    prober: Ipv4Addr,
    as_addr: Ipv4Addr,
    stop: &AtomicBool,
    forged: &AtomicU64,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 65_536];
    let to = SockAddr::from(SocketAddrV4::new(prober, 0));
    while !stop.load(Ordering::Relaxed) {
        let len = match std::io::Read::read(&mut &*receive, &mut buf) {
            Ok(len) => len,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(e).context("receiving on the insider's raw socket"),
        };
        let Some(request) = parse_request(&buf[..len]) else {
            continue;
        };
        if request.from != prober {
            continue;
        }
        // The probe as received, "answered" by the primary: and its replay.
        let reply = echo_reply(&Request {
            to: as_addr,
            ..request
        });
        for _ in 0..2 {
            send.send_to(&reply, &to)
                .context("sending a forged reply")?;
            forged.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}
