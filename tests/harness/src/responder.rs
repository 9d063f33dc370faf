//! Far hosts without netem: a delayed ICMP echo responder. The kernel of the namespace it
//! serves must not answer pings itself (`net.ipv4.icmp_echo_ignore_all=1`, as
//! [`crate::far::FarLab`] sets); the responder receives the echo requests on a raw ICMP socket
//! and answers each one from the address it was sent to, after that address's delay, with the
//! request's identifier, sequence number and payload echoed byte for byte (so xdprobe's probe
//! header comes back unchanged) and correct checksums. Requests to addresses it was not given
//! go unanswered, like a dead host's.
//!
//! Two threads, both inside the namespace and real-time (`SCHED_FIFO`): one receives each
//! request with the kernel's stamp of its arrival (`SO_TIMESTAMPNS`) and hands it on; the other
//! keeps the pending replies in a timer heap and sends each when it is due. One thread for
//! every delay, not a sleep per packet, so any number of requests may be in flight at once, and
//! a wait ends within microseconds of its deadline (the timer thread's timer slack is 1 ns).
//! Dropping the responder stops both threads.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    io::IoSliceMut,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use nix::{
    errno::Errno,
    sys::{
        socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags},
        time::TimeSpec,
    },
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::enter;

/// The responder threads' `SCHED_FIFO` priority: above every normal thread, below the
/// kernel's own real-time threads (which run at 50 and up).
const REAL_TIME_PRIORITY: &str = "10";
/// How often the threads look at the stop flag when nothing else wakes them.
const TICK: Duration = Duration::from_millis(10);
/// `IPPROTO_RAW`: a send-only raw socket whose packets carry our own IP header.
const IPPROTO_RAW: i32 = 255;
const ICMP: u8 = 1;
const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST: u8 = 8;
const TTL: u8 = 64;
/// IPv4 header without options.
const IP_HEADER: usize = 20;
/// Type, code, checksum, identifier, sequence number.
const ICMP_HEADER: usize = 8;

/// An echo request as it came in: who sent it, to which address, and its ICMP message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub from: Ipv4Addr,
    pub to: Ipv4Addr,
    /// The ICMP message: header and payload, checksum verified.
    pub icmp: &'a [u8],
}

/// The echo request in an IPv4 packet as a raw socket reads it (IP header first), or `None`
/// for anything else: another protocol or ICMP type, a fragment, a truncated packet, a bad
/// ICMP checksum (which a real host drops too).
pub fn parse_request(packet: &[u8]) -> Option<Request<'_>> {
    let first = *packet.first()?;
    let header = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || header < IP_HEADER || packet.len() < header {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let fragment = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff;
    if packet[9] != ICMP || fragment != 0 || total < header + ICMP_HEADER || total > packet.len() {
        return None;
    }
    let icmp = &packet[header..total];
    if icmp[0] != ECHO_REQUEST || icmp[1] != 0 || checksum(icmp) != 0 {
        return None;
    }
    let addr =
        |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
    Some(Request {
        from: addr(12),
        to: addr(16),
        icmp,
    })
}

/// The whole IPv4 packet that answers `request`: from the address it was sent to, back to its
/// sender, an echo reply with the request's code, identifier, sequence number and payload,
/// both checksums filled in.
pub fn echo_reply(request: &Request<'_>) -> Vec<u8> {
    let total = IP_HEADER + request.icmp.len();
    let mut packet = Vec::with_capacity(total);
    packet.extend_from_slice(&[0x45, 0]);
    // An echo request fits an IPv4 packet, and so does its reply of the same size.
    packet.extend_from_slice(&u16::try_from(total).unwrap_or(u16::MAX).to_be_bytes());
    // Identification 0: the kernel picks one. No flags, no fragment offset.
    packet.extend_from_slice(&[0, 0, 0, 0, TTL, ICMP, 0, 0]);
    packet.extend_from_slice(&request.to.octets());
    packet.extend_from_slice(&request.from.octets());
    let ip_sum = checksum(&packet);
    packet[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    packet.extend_from_slice(request.icmp);
    let icmp = &mut packet[IP_HEADER..];
    icmp[0] = ECHO_REPLY;
    icmp[2..4].copy_from_slice(&[0, 0]);
    let icmp_sum = checksum(icmp);
    icmp[2..4].copy_from_slice(&icmp_sum.to_be_bytes());
    packet
}

/// The Internet checksum (RFC 1071) of `bytes`; 0 over data that carries a correct one.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What the responder has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Echo requests to one of its addresses.
    pub requests: u64,
    /// Replies sent.
    pub answered: u64,
    /// Echo requests to an address it was not given, left unanswered.
    pub ignored: u64,
    /// Replies the kernel refused to send.
    pub send_errors: u64,
    /// The latest any reply went out after its due time (arrival + delay), as the responder's
    /// own clock saw it: its timing error, before the wire.
    pub max_late: Duration,
    /// The longest a request waited in the socket before the receiving thread read it (its
    /// delay counts from the kernel's arrival stamp, so this is not an error unless it grows
    /// past the shortest delay).
    pub max_wake: Duration,
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    answered: AtomicU64,
    ignored: AtomicU64,
    send_errors: AtomicU64,
    max_late_ns: AtomicU64,
    max_wake_ns: AtomicU64,
}

/// A reply waiting for its time; ordered by due time, then arrival.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    due: Instant,
    seq: u64,
    to: Ipv4Addr,
    packet: Vec<u8>,
}

/// Answers echo requests inside a namespace after per-address delays; stops on drop.
pub struct Responder {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    threads: Vec<JoinHandle<()>>,
}

impl Responder {
    /// Starts answering, inside network namespace `ns`, echo requests to each address of
    /// `delays` after its delay (measured from the request's arrival). The namespace's kernel
    /// must be told not to answer (`icmp_echo_ignore_all`), or every host would answer twice.
    pub fn start(ns: &str, delays: &[(Ipv4Addr, Duration)]) -> anyhow::Result<Self> {
        let delays: HashMap<Ipv4Addr, Duration> = delays.iter().copied().collect();
        let (receive, send) = enter::run_in(ns, open_sockets)
            .with_context(|| format!("opening the responder's raw sockets in {ns}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let (pending_tx, pending_rx) = mpsc::channel();
        // Both threads real-time before the first request can come.
        let (ready_tx, ready) = mpsc::channel();
        let receiver = {
            let (stop, counts, ready) = (Arc::clone(&stop), Arc::clone(&counts), ready_tx.clone());
            enter::spawn_in(ns, move || {
                real_time();
                let _ = ready.send(());
                receive_loop(&receive, &delays, &pending_tx, &stop, &counts);
            })
        };
        let timer = {
            let (stop, counts, ready) = (Arc::clone(&stop), Arc::clone(&counts), ready_tx);
            enter::spawn_in(ns, move || {
                real_time();
                let _ = ready.send(());
                send_loop(&send, &pending_rx, &stop, &counts);
            })
        };
        let responder = Self {
            stop,
            counts,
            threads: vec![receiver, timer],
        };
        for _ in 0..responder.threads.len() {
            // Dropping the responder stops whichever thread did start.
            ready
                .recv_timeout(Duration::from_secs(10))
                .context("the echo responder's threads did not start")?;
        }
        Ok(responder)
    }

    /// What it has done so far.
    pub fn tally(&self) -> Tally {
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        Tally {
            requests: get(&self.counts.requests),
            answered: get(&self.counts.answered),
            ignored: get(&self.counts.ignored),
            send_errors: get(&self.counts.send_errors),
            max_late: Duration::from_nanos(get(&self.counts.max_late_ns)),
            max_wake: Duration::from_nanos(get(&self.counts.max_wake_ns)),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                eprintln!("the echo responder's thread panicked");
            }
        }
    }
}

/// Puts the calling thread in the real-time class (`SCHED_FIFO`, a low priority), so that
/// processes starting in the lab (every `ping`, the daemon) cannot keep it from the CPU for a
/// millisecond: both threads sleep but for microseconds a packet, and the kernel's real-time
/// throttling would stop a runaway anyway. By `chrt` on the thread's id, as nix has no call for
/// it; without it the responder still works, only less exactly under load.
fn real_time() {
    let tid = nix::unistd::gettid().to_string();
    let set = Command::new("chrt")
        .args(["--fifo", "--pid", REAL_TIME_PRIORITY, &tid])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !set.as_ref().is_ok_and(|status| status.success()) {
        eprintln!("echo responder: cannot make thread {tid} real-time (chrt --fifo): {set:?}");
    }
}

/// A raw ICMP socket to receive on (woken every [`TICK`] to look at the stop flag) and a raw
/// socket to send whole IP packets on.
fn open_sockets() -> anyhow::Result<(Socket, Socket)> {
    let receive = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
        .context("raw ICMP socket (needs root)")?;
    receive.set_read_timeout(Some(TICK))?;
    // Each request stamped by the kernel as it arrives: the delay runs from then, however late
    // the receiving thread wakes.
    setsockopt(&receive, sockopt::ReceiveTimestampns, &true)?;
    // Room for bursts: a reply is sent much later than its request came in.
    receive.set_recv_buffer_size(1 << 20)?;
    let send = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))
        .context("raw IP socket (needs root)")?;
    Ok((receive, send))
}

fn receive_loop(
    socket: &Socket,
    delays: &HashMap<Ipv4Addr, Duration>,
    pending: &mpsc::Sender<Pending>,
    stop: &AtomicBool,
    counts: &Counts,
) {
    let mut buf = vec![0u8; 65_536];
    let mut cmsg = nix::cmsg_space!(TimeSpec);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (len, stamp) = match receive(socket, &mut buf, &mut cmsg) {
            Ok(received) => received,
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("echo responder: receiving: {e}");
                return;
            }
        };
        // When the kernel had the request, on our clock: this thread may have woken later.
        // The wall clock is read first: a preemption between the two reads then makes the
        // request look younger (the reply a little late), never older (the reply early).
        let wall = SystemTime::now();
        let now = Instant::now();
        let queued = stamp.map_or(Duration::ZERO, |stamp| {
            wall.duration_since(stamp).unwrap_or_default()
        });
        let arrived = now.checked_sub(queued).unwrap_or(now);
        counts
            .max_wake_ns
            .fetch_max(nanos(now - arrived), Ordering::Relaxed);
        let Some(request) = parse_request(&buf[..len]) else {
            continue;
        };
        let Some(delay) = delays.get(&request.to) else {
            counts.ignored.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        counts.requests.fetch_add(1, Ordering::Relaxed);
        seq += 1;
        let reply = Pending {
            due: arrived + *delay,
            seq,
            to: request.from,
            packet: echo_reply(&request),
        };
        if pending.send(reply).is_err() {
            return;
        }
    }
}

fn send_loop(
    socket: &Socket,
    incoming: &mpsc::Receiver<Pending>,
    stop: &AtomicBool,
    counts: &Counts,
) {
    // Wake at the deadline, not up to 50 µs after it (the default slack of a thread's timers).
    if let Err(e) = nix::sys::prctl::set_timerslack(1) {
        eprintln!("echo responder: cannot set the timer slack: {e}");
    }
    // A delay line must not wait behind other work: with both cores busy (tests in parallel,
    // a compiler) an ordinary thread was preempted for 3 ms past a reply's time. Real-time
    // priority (we are root) puts it first; it sleeps nearly all the time.
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: `param` is a valid sched_param for the duration of the call; pid 0 is this
    // thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param) } != 0 {
        eprintln!(
            "echo responder: no real-time priority ({}); replies may be late on a busy machine",
            std::io::Error::last_os_error()
        );
    }
    let mut heap: BinaryHeap<Reverse<Pending>> = BinaryHeap::new();
    while !stop.load(Ordering::Relaxed) {
        let wait = heap
            .peek()
            .map_or(TICK, |Reverse(next)| {
                next.due.saturating_duration_since(Instant::now())
            })
            .min(TICK);
        match incoming.recv_timeout(wait) {
            Ok(reply) => heap.push(Reverse(reply)),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        heap.extend(incoming.try_iter().map(Reverse));
        loop {
            let now = Instant::now();
            match heap.peek() {
                Some(Reverse(next)) if next.due <= now => {}
                _ => break,
            }
            let Some(Reverse(reply)) = heap.pop() else {
                break;
            };
            let to = SockAddr::from(SocketAddrV4::new(reply.to, 0));
            match socket.send_to(&reply.packet, &to) {
                Ok(_) => {
                    counts.answered.fetch_add(1, Ordering::Relaxed);
                    let late = nanos(now - reply.due);
                    counts.max_late_ns.fetch_max(late, Ordering::Relaxed);
                }
                Err(_) => {
                    counts.send_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Reads one packet into `buf`; returns its length and when the kernel received it
/// (`SO_TIMESTAMPNS`, wall-clock time), if it said.
fn receive(
    socket: &Socket,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> nix::Result<(usize, Option<SystemTime>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(cmsg), MsgFlags::empty())?;
    let mut stamp = None;
    for message in msg.cmsgs()? {
        if let ControlMessageOwned::ScmTimestampns(ts) = message {
            let (secs, nanos) = (u64::try_from(ts.tv_sec()), u32::try_from(ts.tv_nsec()));
            if let (Ok(secs), Ok(nanos)) = (secs, nanos) {
                stamp = Some(UNIX_EPOCH + Duration::new(secs, nanos));
            }
        }
    }
    Ok((msg.bytes, stamp))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo request from 192.0.2.1 to `to` as it arrives: IP header (with `options` words
    /// of options), ICMP header, payload.
    fn request_packet(to: Ipv4Addr, payload: &[u8], options: usize) -> Vec<u8> {
        let header = IP_HEADER + options * 4;
        let mut icmp = vec![ECHO_REQUEST, 0, 0, 0, 0x12, 0x34, 0x00, 0x07];
        icmp.extend_from_slice(payload);
        let sum = checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let total = (header + icmp.len()) as u16;
        let mut packet = vec![0x40 | (header / 4) as u8, 0];
        packet.extend_from_slice(&total.to_be_bytes());
        packet.extend_from_slice(&[0xab, 0xcd, 0x40, 0, 63, ICMP, 0, 0]);
        packet.extend_from_slice(&[192, 0, 2, 1]);
        packet.extend_from_slice(&to.octets());
        packet.resize(header, 1); // options: NOPs
        let sum = checksum(&packet);
        packet[10..12].copy_from_slice(&sum.to_be_bytes());
        packet.extend_from_slice(&icmp);
        packet
    }

    const FAR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

    #[test]
    fn the_checksum_is_rfc_1071s() {
        // RFC 1071's example: the one's complement sum is 0xddf2.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        // An odd length is padded with a zero byte.
        assert_eq!(checksum(&[0xff]), checksum(&[0xff, 0x00]));
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn a_reply_echoes_everything_but_the_type_from_the_address_asked() {
        let payload = b"XDPR\x00\x00\x00\x07cookie!!round...sent_ns.";
        let packet = request_packet(FAR, payload, 0);
        let request = parse_request(&packet).expect("an echo request");
        assert_eq!(request.from, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(request.to, FAR);
        let reply = echo_reply(&request);
        assert_eq!(reply.len(), packet.len());
        // IPv4, no options, its length, TTL 64, ICMP, from the far host back to the sender.
        assert_eq!(reply[0], 0x45);
        assert_eq!(
            usize::from(u16::from_be_bytes([reply[2], reply[3]])),
            reply.len()
        );
        assert_eq!((reply[8], reply[9]), (TTL, ICMP));
        assert_eq!(reply[12..16], FAR.octets());
        assert_eq!(reply[16..20], [192, 0, 2, 1]);
        assert_eq!(checksum(&reply[..IP_HEADER]), 0, "IP checksum");
        let icmp = &reply[IP_HEADER..];
        assert_eq!(checksum(icmp), 0, "ICMP checksum");
        assert_eq!(icmp[0], ECHO_REPLY);
        assert_eq!(icmp[1], 0);
        // Identifier, sequence number and payload untouched.
        assert_eq!(icmp[4..], request.icmp[4..]);
        assert_eq!(&icmp[ICMP_HEADER..], payload);
    }

    #[test]
    fn ip_options_are_skipped_and_odd_payloads_checksummed() {
        let packet = request_packet(FAR, b"odd", 2);
        let request = parse_request(&packet).expect("an echo request with options");
        assert_eq!(request.icmp.len(), ICMP_HEADER + 3);
        let reply = echo_reply(&request);
        assert_eq!(reply.len(), IP_HEADER + ICMP_HEADER + 3);
        assert_eq!(checksum(&reply[IP_HEADER..]), 0);
        assert_eq!(&reply[IP_HEADER + ICMP_HEADER..], b"odd");
    }

    #[test]
    fn anything_but_a_whole_valid_echo_request_is_ignored() {
        let good = request_packet(FAR, b"payload", 0);
        assert!(parse_request(&good).is_some());
        // Whether the request, spoilt by `f`, is still taken.
        let broken = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut packet = good.clone();
            f(&mut packet);
            parse_request(&packet).is_some()
        };
        assert_eq!(parse_request(&[]), None);
        assert!(!broken(&|p| p.truncate(IP_HEADER + 4)), "truncated");
        assert!(!broken(&|p| p[0] = 0x65), "IPv6");
        assert!(!broken(&|p| p[0] = 0x44), "header too short");
        assert!(!broken(&|p| p[9] = 17), "UDP");
        assert!(!broken(&|p| p[6] = 0x20), "a first fragment");
        // Another ICMP message, its checksum right.
        let icmp = |kind: u8, code: u8| {
            move |p: &mut Vec<u8>| {
                p[IP_HEADER..IP_HEADER + 4].copy_from_slice(&[kind, code, 0, 0]);
                let sum = checksum(&p[IP_HEADER..]);
                p[IP_HEADER + 2..IP_HEADER + 4].copy_from_slice(&sum.to_be_bytes());
            }
        };
        assert!(broken(&icmp(ECHO_REQUEST, 0)), "the request itself");
        assert!(!broken(&icmp(ECHO_REPLY, 0)), "a reply");
        assert!(!broken(&icmp(ECHO_REQUEST, 1)), "another code");
        assert!(!broken(&|p| p[IP_HEADER + 9] ^= 1), "bad ICMP checksum");
        assert!(!broken(&|p| p[3] = 200), "longer than read");
        // Trailing bytes past the IP total length (Ethernet padding) are not payload.
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(parse_request(&padded), parse_request(&good));
    }

    #[test]
    fn pending_replies_come_out_soonest_first_then_in_arrival_order() {
        let now = Instant::now();
        let pending = |ms: u64, seq: u64| {
            Reverse(Pending {
                due: now + Duration::from_millis(ms),
                seq,
                to: FAR,
                packet: Vec::new(),
            })
        };
        let mut heap: BinaryHeap<_> = [
            pending(400, 1),
            pending(5, 2),
            pending(400, 0),
            pending(0, 3),
        ]
        .into_iter()
        .collect();
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|Reverse(p)| p.seq)).collect();
        assert_eq!(order, [3, 2, 0, 1]);
    }
}
