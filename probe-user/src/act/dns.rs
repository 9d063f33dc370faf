//! Health-aware DNS round robin: a `[[dns]]` pool publishes one A record per IPv4 member and
//! one AAAA record per IPv6 member that is UP under one name, and keeps that set in step with the prober through RFC 2136 dynamic updates
//! signed with TSIG (RFC 8945).
//!
//! - Pure logic: [`desired`] (who should be published) and [`plan`] (what to change on the
//!   server), plus config validation in [`PoolConfig::resolve`].
//! - I/O: [`DnsPool`] spawns one task per pool that owns the conversation with the server.
//!
//! How the task behaves:
//! - At start every member counts as UP (published), as if the prober had not reported yet:
//!   a freshly started daemon must not pull records it has no evidence against. It then follows
//!   [`DnsPool::member`] reports: DOWN removes the member's record, UP adds it back.
//! - It never empties the pool under the default policy: when no member is UP it keeps (or
//!   restores) every member's record, and warns once per such episode.
//! - It reads the live A set (and the AAAA set, when the pool has IPv6 members) from the server at start and every `resync`, and corrects drift in
//!   either direction. Records at the name that are not members are never touched, except
//!   those of addresses a reload has just removed from the pool (see [`Start::retired`]): they
//!   go at the first sync.
//! - Every UPDATE carries, as prerequisite, the exact A (and AAAA) set it was planned against
//!   (RFC 2136 2.4.2, or 2.4.3 "does not exist" when empty). "Never empty" is about the pool as
//!   a whole: with every IPv6 member DOWN and an IPv4 one UP, the AAAA set is empty and clients
//!   use the A record. If someone changed the set in between, the
//!   server refuses the whole update (NXRRSET) and the task reads the set again and re-plans,
//!   so no decision is ever applied to a set it did not see.
//! - Server failures (timeouts, REFUSED, NOTAUTH, TSIG errors) are logged with the server's
//!   answer and retried with exponential backoff (0.5 s to 30 s). Reports keep arriving
//!   meanwhile and are coalesced: the next attempt converges to the latest state. Nothing here
//!   blocks the prober or the failover: `member` only updates a watch channel.
//! - The prerequisite makes each UPDATE carry the whole A set (16 bytes a record), over UDP.
//!   BIND 9.18 also refuses more than 100 records in one RRset (SERVFAIL, "too many records").
//! - Transport is UDP (hickory-net); reads fall back to TCP when the answer is truncated.
//!   Updates are signed here, not by the transport, so that a TSIG rejection (BADSIG, BADKEY,
//!   BADTIME) is reported as such instead of as a failed signature check of the unsigned reply.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::StreamExt as _;
use hickory_net::{
    client::Client,
    runtime::TokioRuntimeProvider,
    tcp::TcpClientStream,
    udp::UdpClientStream,
    xfer::{DnsHandle as _, DnsRequestSender as _},
};
use hickory_proto::{
    op::{DnsRequest, DnsResponse, Edns, Message, OpCode, Query, ResponseCode},
    rr::{
        rdata::{tsig::TsigError, A, AAAA},
        DNSClass, Name, RData, Record, RecordType, TSigner,
    },
};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{
    act::{backoff::Backoff, mail::Notifier},
    config::dns::{AllDown, PoolConfig},
    model::{
        notice::Notice,
        snapshot::{DnsStatus, Observed},
    },
};

/// Allowed clock difference with the server, seconds (the usual TSIG value).
const TSIG_FUDGE: u16 = 300;
/// How long one request (with hickory's UDP retransmissions inside) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// EDNS buffer size for reads: the common "no fragmentation" value.
const EDNS_PAYLOAD: u16 = 1232;
/// Re-plans in one attempt when the server says the set changed since it was read.
const MAX_REPLANS: u32 = 3;

/// Which of our members should be published now, given who is up.
pub fn desired(members: &[IpAddr], up: &BTreeSet<IpAddr>, policy: AllDown) -> BTreeSet<IpAddr> {
    let live: BTreeSet<IpAddr> = members.iter().copied().filter(|m| up.contains(m)).collect();
    match policy {
        AllDown::KeepAll if live.is_empty() => members.iter().copied().collect(),
        _ => live,
    }
}

/// One record to add to or remove from the server's A set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    Add(IpAddr),
    Remove(IpAddr),
}

/// The changes that make `live` (the server's current A set) hold exactly `desired` among OUR
/// members; addresses that are not members are left alone. Adds first, then removes, each in
/// address order.
pub fn plan(
    members: &BTreeSet<IpAddr>,
    desired: &BTreeSet<IpAddr>,
    live: &BTreeSet<IpAddr>,
) -> Vec<Change> {
    let adds = members
        .iter()
        .filter(|m| desired.contains(m) && !live.contains(m))
        .map(|&m| Change::Add(m));
    let removes = members
        .iter()
        .filter(|m| !desired.contains(m) && live.contains(m))
        .map(|&m| Change::Remove(m));
    adds.chain(removes).collect()
}

/// The mnemonic dig and BIND's logs use.
fn rcode_name(code: ResponseCode) -> String {
    let name = match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::YXDomain => "YXDOMAIN",
        ResponseCode::YXRRSet => "YXRRSET",
        ResponseCode::NXRRSet => "NXRRSET",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::NotZone => "NOTZONE",
        other => return format!("rcode {} ({other})", u16::from(other)),
    };
    name.to_string()
}

fn tsig_error_text(error: TsigError, key: &Name) -> String {
    match error {
        TsigError::BadSig => {
            format!("BADSIG: the secret does not match the server's key {key}")
        }
        TsigError::BadKey => {
            format!("BADKEY: the server has no key {key} with this algorithm")
        }
        TsigError::BadTime => format!(
            "BADTIME: this host's clock and the server's differ by more than {TSIG_FUDGE} s"
        ),
        TsigError::BadTrunc => "BADTRUNC: truncated signature".to_string(),
        TsigError::Unknown(code) => format!("TSIG error {code}"),
    }
}

/// Why one attempt to converge failed.
#[derive(Debug)]
enum PoolError {
    /// The A set changed on the server since it was read (prerequisite failed).
    Changed,
    Failed(String),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Changed => f.write_str("the record set kept changing on the server"),
            PoolError::Failed(reason) => f.write_str(reason),
        }
    }
}

/// The running pool: a task owns the conversation with the server; this handle feeds it.
/// Dropping the handle, or cancelling `shutdown`, stops the task; the records are left as they
/// are (the next start reads and corrects them).
pub struct DnsPool {
    members: BTreeSet<IpAddr>,
    /// The members currently UP, as last reported. A watch: reports never block and coalesce.
    up: watch::Sender<BTreeSet<IpAddr>>,
}

/// How a pool starts when a reload (re)starts it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Start {
    /// The members known to be UP; `None`: every member, as at start-up.
    pub up: Option<BTreeSet<IpAddr>>,
    /// Addresses that were members until now: their records are removed at the first sync.
    pub retired: BTreeSet<IpAddr>,
}

impl DnsPool {
    /// Spawns the pool's task on the current tokio runtime (must be called inside one) and
    /// returns at once. Every member starts UP, unless `start` (from a reload) knows better.
    /// Failures of the DNS server and "every member is down" episodes are also mailed
    /// through `notifier` (once per episode).
    /// `observed`, if given, gets the pool's sync state and failures in the entry of its `dns`
    /// list with the pool's name (for `/metrics` and `/status`).
    pub fn start(
        config: PoolConfig,
        notifier: Notifier,
        observed: Option<Observed>,
        shutdown: CancellationToken,
        start: Start,
    ) -> DnsPool {
        let members: BTreeSet<IpAddr> = config.members.iter().copied().collect();
        let up = start.up.map_or_else(
            || members.clone(),
            |up| up.intersection(&members).copied().collect(),
        );
        let (up, reports) = watch::channel(up);
        let retired = start.retired.difference(&members).copied().collect();
        match Task::new(config, reports, notifier, observed, retired) {
            Ok(task) => {
                tokio::spawn(task.run(shutdown));
            }
            // resolve() only accepts algorithms hickory supports: this does not happen.
            Err(reason) => error!(%reason, "DNS pool not started"),
        }
        DnsPool { members, up }
    }

    /// A member changed state (from the prober's reports); non-members are ignored. Never
    /// blocks.
    pub fn member(&self, addr: IpAddr, up: bool) {
        if !self.members.contains(&addr) {
            return;
        }
        self.up.send_if_modified(|set| {
            if up {
                set.insert(addr)
            } else {
                set.remove(&addr)
            }
        });
    }
}

struct Task {
    server: SocketAddr,
    zone: Name,
    name: Name,
    ttl: u32,
    member_list: Vec<IpAddr>,
    members: BTreeSet<IpAddr>,
    policy: AllDown,
    resync: Duration,
    key: Name,
    signer: TSigner,
    reports: watch::Receiver<BTreeSet<IpAddr>>,
    /// Former members (before a reload) whose records are still to be removed.
    retired: BTreeSet<IpAddr>,
    /// Members UP, as of the last reports taken.
    up: BTreeSet<IpAddr>,
    /// Members whose state was reported since the last time the server was in sync, with the
    /// state: the reason for the change that follows.
    reported: BTreeMap<IpAddr, bool>,
    /// Inside an "every member is down" episode (warned once).
    all_down: bool,
    /// Such an episode ended since the last time the server was in sync.
    all_down_ended: bool,
    /// The server's A set as last read or written; `None` when it must be read again.
    live: Option<BTreeSet<IpAddr>>,
    /// The server was in sync at least once.
    synced: bool,
    notifier: Notifier,
    observed: Option<Observed>,
    /// The pool's name as in its config (and its `/status` entry).
    pool_name: String,
}

impl Task {
    fn new(
        config: PoolConfig,
        reports: watch::Receiver<BTreeSet<IpAddr>>,
        notifier: Notifier,
        observed: Option<Observed>,
        retired: BTreeSet<IpAddr>,
    ) -> Result<Task, String> {
        let name = Name::from_ascii(&config.name).map_err(|e| format!("{}: {e}", config.name))?;
        let signer = TSigner::new(
            config.tsig.secret.clone(),
            config.tsig.algorithm.clone(),
            config.tsig.name.clone(),
            TSIG_FUDGE,
        )
        .map_err(|e| format!("TSIG key {}: {e}", config.tsig.name))?;
        let up = reports.borrow().clone();
        Ok(Task {
            server: config.server,
            zone: config.zone,
            name,
            ttl: config.ttl,
            members: config.members.iter().copied().collect(),
            member_list: config.members,
            policy: config.when_all_down,
            resync: config.resync,
            key: config.tsig.name,
            signer,
            reports,
            retired,
            up,
            reported: BTreeMap::new(),
            all_down: false,
            all_down_ended: false,
            live: None,
            synced: false,
            notifier,
            observed,
            pool_name: config.name,
        })
    }

    async fn run(mut self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        let mut retry_at: Option<Instant> = None;
        let mut next_resync = Instant::now();
        loop {
            let now = Instant::now();
            if retry_at.is_none_or(|at| now >= at) {
                if now >= next_resync {
                    self.live = None;
                    next_resync = now + self.resync;
                }
                let outcome = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    outcome = self.converge() => outcome,
                };
                match outcome {
                    Ok(()) => {
                        if failures > 0 {
                            info!(pool = %self.name, server = %self.server, "DNS server works again; records in sync");
                            self.notify(
                                "DNS records back in sync",
                                format!("The DNS server {} accepts updates again after {failures} failed attempts; the records are in sync.", self.server),
                            );
                        }
                        failures = 0;
                        retry_at = None;
                        self.publish(|d| {
                            d.in_sync = true;
                            d.published = self.live.as_ref().map_or(0, |l| l.len() as u64);
                        });
                    }
                    Err(e) => {
                        failures += 1;
                        self.publish(|d| {
                            d.in_sync = false;
                            d.failures += 1;
                        });
                        let delay = Backoff::SERVER.delay(failures);
                        warn!(
                            pool = %self.name,
                            server = %self.server,
                            failures,
                            "DNS records not in sync: {e}; retrying in {}",
                            humantime::format_duration(delay)
                        );
                        if failures == 1 {
                            self.notify(
                                "DNS records out of sync",
                                format!("Updating the DNS server {} failed: {e}\nxdprobe keeps retrying with backoff (next in {}); probing and failover go on.", self.server, humantime::format_duration(delay)),
                            );
                        }
                        retry_at = Some(Instant::now() + delay);
                        self.live = None;
                    }
                }
            }
            // While backing off, a resync waits for the retry (which reads the set anyway).
            let wake = retry_at.unwrap_or(next_resync);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = self.reports.changed() => {
                    if changed.is_err() {
                        debug!(pool = %self.name, "DNS pool handle dropped: stopping");
                        return;
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Updates this pool's entry in the published status.
    fn publish(&self, f: impl FnOnce(&mut DnsStatus)) {
        if let Some(observed) = &self.observed {
            observed.update(|s| {
                if let Some(pool) = s.dns.iter_mut().find(|d| d.name == self.pool_name) {
                    f(pool);
                }
            });
        }
    }

    /// Mails a notice about this pool (rate-limited and never blocking, like every notice).
    fn notify(&self, what: &str, body: String) {
        self.notifier.send(Notice {
            subject: format!("xdprobe: DNS pool {}: {what}", self.name),
            body: format!("{body}\n"),
        });
    }

    /// Takes the latest member reports, noting which members changed.
    fn take_reports(&mut self) {
        let up = self.reports.borrow_and_update().clone();
        for &m in &self.members {
            let is_up = up.contains(&m);
            if is_up != self.up.contains(&m) {
                self.reported.insert(m, is_up);
            }
        }
        self.up = up;
    }

    /// What to publish now; warns once when an "every member is down" episode starts.
    fn desired_now(&mut self) -> BTreeSet<IpAddr> {
        let none_up = self.members.iter().all(|m| !self.up.contains(m));
        if none_up && !self.all_down {
            let what = match self.policy {
                AllDown::KeepAll => "keeping the full set (when_all_down = \"keep_all\")",
                AllDown::Empty => "removing every member's record (when_all_down = \"empty\")",
            };
            warn!(pool = %self.name, "all members down: {what}");
            self.notify(
                "every member is down",
                format!("Every member of the pool is DOWN: {what}."),
            );
        } else if !none_up && self.all_down {
            info!(pool = %self.name, "a member is up again: publishing only members that are up");
            self.all_down_ended = true;
        }
        self.all_down = none_up;
        desired(&self.member_list, &self.up, self.policy)
    }

    /// Makes the server's set match the latest reports: reads it if unknown, plans, updates.
    async fn converge(&mut self) -> Result<(), PoolError> {
        self.take_reports();
        let desired = self.desired_now();
        let mut replans = 0;
        loop {
            let live = match &self.live {
                Some(live) => live.clone(),
                None => {
                    let live = self.read_live().await?;
                    self.live = Some(live.clone());
                    live
                }
            };
            let changes = if self.retired.is_empty() {
                plan(&self.members, &desired, &live)
            } else {
                plan(
                    &self.members.union(&self.retired).copied().collect(),
                    &desired,
                    &live,
                )
            };
            if changes.is_empty() {
                self.in_sync();
                return Ok(());
            }
            match self.update(&live, &changes).await {
                Ok(()) => {
                    let mut now = live;
                    for &change in &changes {
                        let reason = self.reason(change);
                        match change {
                            Change::Add(a) => {
                                now.insert(a);
                                let kind = record_type(a);
                                info!(pool = %self.name, "{kind} record {a} added: {reason}");
                            }
                            Change::Remove(a) => {
                                now.remove(&a);
                                let kind = record_type(a);
                                info!(pool = %self.name, "{kind} record {a} removed: {reason}");
                            }
                        }
                    }
                    self.live = Some(now);
                    self.in_sync();
                    return Ok(());
                }
                Err(PoolError::Changed) if replans < MAX_REPLANS => {
                    replans += 1;
                    debug!(pool = %self.name, "record set changed on the server since it was read: reading it again");
                    self.live = None;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn in_sync(&mut self) {
        self.retired.clear();
        self.reported.clear();
        self.all_down_ended = false;
        self.synced = true;
    }

    /// Why `change` is made, for the log.
    fn reason(&self, change: Change) -> String {
        let reported = |a: &IpAddr| self.reported.get(a).copied();
        match change {
            Change::Remove(a) if self.retired.contains(&a) => {
                format!("{a} is no longer a member of the pool (reload)")
            }
            Change::Add(a) if !self.up.contains(&a) => {
                "all members down: keeping the full set".to_string()
            }
            Change::Add(a) if reported(&a) == Some(true) => format!("member {a} UP"),
            Change::Add(_) if !self.synced => "start-up: record missing on server".to_string(),
            Change::Add(_) => "drift: record missing on server".to_string(),
            Change::Remove(a) if reported(&a) == Some(false) && self.all_down => {
                format!("member {a} DOWN; all members down and when_all_down = \"empty\"")
            }
            Change::Remove(a) if reported(&a) == Some(false) => format!("member {a} DOWN"),
            Change::Remove(a) if self.all_down_ended => {
                format!("member {a} is DOWN (kept only while all members were down)")
            }
            Change::Remove(_) if self.all_down => {
                "drift: all members down and when_all_down = \"empty\"".to_string()
            }
            Change::Remove(a) => format!("drift: record on server but member {a} is DOWN"),
        }
    }

    /// The record types this pool keeps: A for IPv4 members, AAAA for IPv6 ones (and for the
    /// retired members still to be removed). A type with no member is never read nor touched.
    fn families(&self) -> Vec<RecordType> {
        let all = || self.members.iter().chain(&self.retired);
        let mut types = Vec::new();
        if all().any(IpAddr::is_ipv4) {
            types.push(RecordType::A);
        }
        if all().any(IpAddr::is_ipv6) {
            types.push(RecordType::AAAA);
        }
        types
    }

    /// The server's A and AAAA sets for the name (all of them, members or not), for the types
    /// this pool keeps.
    async fn read_live(&self) -> Result<BTreeSet<IpAddr>, PoolError> {
        let mut live = BTreeSet::new();
        for family in self.families() {
            live.extend(self.read_set(family).await?);
        }
        Ok(live)
    }

    /// The server's `family` set for the name.
    async fn read_set(&self, family: RecordType) -> Result<BTreeSet<IpAddr>, PoolError> {
        let mut query = Message::query();
        query.metadata.recursion_desired = false;
        query.add_query(Query::query(self.name.clone(), family));
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD).set_version(0);
        query.set_edns(edns);
        let failed = |e: String| PoolError::Failed(format!("reading {} {family}: {e}", self.name));
        let mut response = self.send_udp(query.clone()).await.map_err(failed)?;
        if response.metadata.truncation {
            debug!(pool = %self.name, "answer truncated: asking again over TCP");
            response = self.send_tcp(query).await.map_err(failed)?;
        }
        match response.metadata.response_code {
            // NXDOMAIN: the name does not exist (yet), so neither does its A set.
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            code => {
                return Err(failed(format!(
                    "the server answered {}{}",
                    rcode_name(code),
                    if code == ResponseCode::Refused {
                        " (is it authoritative for the zone?)"
                    } else {
                        ""
                    }
                )))
            }
        }
        Ok(response
            .answers
            .iter()
            .filter(|r| r.name == self.name)
            .filter_map(|r| match &r.data {
                RData::A(a) if family == RecordType::A => Some(IpAddr::V4(a.0)),
                RData::AAAA(aaaa) if family == RecordType::AAAA => Some(IpAddr::V6(aaaa.0)),
                _ => None,
            })
            .collect())
    }

    /// Sends one signed UPDATE applying `changes`, with `live` as prerequisite.
    async fn update(&self, live: &BTreeSet<IpAddr>, changes: &[Change]) -> Result<(), PoolError> {
        let mut zone = Query::new();
        zone.set_name(self.zone.clone())
            .set_query_class(DNSClass::IN)
            .set_query_type(RecordType::SOA);
        let mut message = Message::query();
        message.metadata.op_code = OpCode::Update;
        message.metadata.recursion_desired = false;
        message.add_query(zone);
        // Prerequisite (RFC 2136 2.4): each set we keep (A, AAAA) is exactly the one we
        // planned against.
        for family in self.families() {
            let set: Vec<IpAddr> = live
                .iter()
                .copied()
                .filter(|a| record_type(*a) == family)
                .collect();
            if set.is_empty() {
                // 2.4.3 RRset does not exist: class NONE, no rdata.
                let mut absent = Record::update0(self.name.clone(), 0, family);
                absent.dns_class = DNSClass::NONE;
                message.add_answer(absent);
            } else {
                // 2.4.2 RRset exists (value dependent): the whole set, class IN, TTL 0.
                for a in set {
                    message.add_answer(self.a_record(a, 0, DNSClass::IN));
                }
            }
        }
        for &change in changes {
            message.add_authority(match change {
                // 2.5.1 add to an RRset (a duplicate is silently ignored).
                Change::Add(a) => self.a_record(a, self.ttl, DNSClass::IN),
                // 2.5.4 delete an RR from an RRset: class NONE, TTL 0.
                Change::Remove(a) => self.a_record(a, 0, DNSClass::NONE),
            });
        }
        let failed = |e: String| PoolError::Failed(format!("updating {}: {e}", self.name));
        let verifier = message
            .finalize(&self.signer, unix_now())
            .map_err(|e| failed(format!("cannot sign with key {}: {e}", self.key)))?;
        let response = self.send_udp(message).await.map_err(failed)?;
        let code = response.metadata.response_code;
        if let Some(error) = response.signature().and_then(|tsig| tsig.data.error) {
            return Err(failed(format!(
                "the server answered {}, TSIG error {}",
                rcode_name(code),
                tsig_error_text(error, &self.key)
            )));
        }
        if code == ResponseCode::NoError {
            // Trust a success only if it is signed with our key.
            let Some(mut verifier) = verifier else {
                return Err(failed("no TSIG verifier for a signed update".to_string()));
            };
            verifier.verify(response.as_buffer()).map_err(|e| {
                failed(format!(
                    "the server's answer failed the TSIG check with key {}: {e}",
                    self.key
                ))
            })?;
            return Ok(());
        }
        let hint = match code {
            ResponseCode::NXRRSet | ResponseCode::YXRRSet => return Err(PoolError::Changed),
            ResponseCode::Refused => format!(
                " (does the server let key {} update zone {}? check allow-update / update-policy)",
                self.key, self.zone
            ),
            ResponseCode::NotAuth => format!(" (is it the primary for zone {}?)", self.zone),
            ResponseCode::NotZone => format!(" ({} is not in zone {})", self.name, self.zone),
            _ => " (the server's log says why)".to_string(),
        };
        Err(failed(format!(
            "the server answered {}{hint}",
            rcode_name(code)
        )))
    }

    /// The A or AAAA record of `addr`.
    fn a_record(&self, addr: IpAddr, ttl: u32, class: DNSClass) -> Record {
        let data = match addr {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        let mut record = Record::from_rdata(self.name.clone(), ttl, data);
        record.dns_class = class;
        record
    }

    async fn send_udp(&self, message: Message) -> Result<DnsResponse, String> {
        let mut udp = UdpClientStream::builder(self.server, TokioRuntimeProvider::new())
            .with_timeout(Some(REQUEST_TIMEOUT))
            .build();
        match udp.send_message(DnsRequest::from(message)).next().await {
            Some(Ok(response)) => Ok(response),
            Some(Err(e)) => Err(format!("server {}: {e}", self.server)),
            // hickory ends the stream without an item when the request timed out.
            None => Err(format!(
                "server {}: no answer within {}",
                self.server,
                humantime::format_duration(REQUEST_TIMEOUT)
            )),
        }
    }

    async fn send_tcp(&self, message: Message) -> Result<DnsResponse, String> {
        let (connect, handle) = TcpClientStream::new(
            self.server,
            None,
            Some(REQUEST_TIMEOUT),
            TokioRuntimeProvider::new(),
        );
        let server = self.server;
        let stream = connect
            .await
            .map_err(|e| format!("server {server} (TCP): {e}"))?;
        let (client, background) =
            Client::<TokioRuntimeProvider>::with_timeout(stream, handle, REQUEST_TIMEOUT);
        let mut answers = client.send(DnsRequest::from(message));
        tokio::select! {
            answer = answers.next() => match answer {
                Some(Ok(response)) => Ok(response),
                Some(Err(e)) => Err(format!("server {server} (TCP): {e}")),
                None => Err(format!(
                    "server {server} (TCP): no answer within {}",
                    humantime::format_duration(REQUEST_TIMEOUT)
                )),
            },
            ended = background => Err(format!("server {server} (TCP): connection ended: {ended:?}")),
        }
    }
}

/// The type of `addr`'s record: A or AAAA.
fn record_type(addr: IpAddr) -> RecordType {
    match addr {
        IpAddr::V4(_) => RecordType::A,
        IpAddr::V6(_) => RecordType::AAAA,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use data_encoding::BASE64;
    use xdprobe_harness::TempFile;

    use std::net::Ipv4Addr;

    use super::*;
    use crate::config::dns::DnsFileConfig;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, last))
    }

    fn set(addrs: &[IpAddr]) -> BTreeSet<IpAddr> {
        addrs.iter().copied().collect()
    }

    #[test]
    fn desired_publishes_members_that_are_up() {
        let members = [ip(1), ip(2), ip(3)];
        let up = set(&[ip(1), ip(3), ip(9)]);
        for policy in [AllDown::KeepAll, AllDown::Empty] {
            assert_eq!(desired(&members, &up, policy), set(&[ip(1), ip(3)]));
        }
        assert_eq!(
            desired(&members, &set(&members), AllDown::Empty),
            set(&members)
        );
    }

    #[test]
    fn desired_when_all_down_follows_the_policy() {
        let members = [ip(1), ip(2), ip(3)];
        // A non-member that is up does not count.
        let up = set(&[ip(9)]);
        assert_eq!(desired(&members, &up, AllDown::KeepAll), set(&members));
        assert_eq!(desired(&members, &up, AllDown::Empty), BTreeSet::new());
        assert_eq!(
            desired(&members, &BTreeSet::new(), AllDown::KeepAll),
            set(&members)
        );
    }

    #[test]
    fn plan_adds_and_removes_only_members() {
        let members = set(&[ip(1), ip(2), ip(3)]);
        let foreign = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
        let live = set(&[ip(2), ip(3), foreign]);
        let want = set(&[ip(1), ip(3)]);
        assert_eq!(
            plan(&members, &want, &live),
            vec![Change::Add(ip(1)), Change::Remove(ip(2))]
        );
        // A foreign record is never removed, even when nothing of ours is wanted.
        assert_eq!(
            plan(&members, &BTreeSet::new(), &set(&[foreign, ip(3)])),
            vec![Change::Remove(ip(3))]
        );
        // Nor is a non-member added because `desired` names it.
        assert_eq!(plan(&members, &set(&[foreign]), &BTreeSet::new()), vec![]);
    }

    #[test]
    fn plan_is_empty_when_in_sync_and_ordered_otherwise() {
        let members = set(&[ip(1), ip(2), ip(3), ip(4)]);
        let foreign = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
        let want = set(&[ip(1), ip(2)]);
        assert!(plan(&members, &want, &set(&[ip(1), ip(2), foreign])).is_empty());
        assert_eq!(
            plan(&members, &want, &set(&[ip(4), ip(3)])),
            vec![
                Change::Add(ip(1)),
                Change::Add(ip(2)),
                Change::Remove(ip(3)),
                Change::Remove(ip(4))
            ]
        );
    }

    #[test]
    fn member_reports_ignore_non_members_and_coalesce() {
        let members = set(&[ip(1), ip(2)]);
        let (up, mut reports) = watch::channel(members.clone());
        let pool = DnsPool { members, up };
        reports.borrow_and_update();
        pool.member(ip(9), false);
        assert!(!reports.has_changed().unwrap());
        pool.member(ip(1), true); // already up: no change
        assert!(!reports.has_changed().unwrap());
        pool.member(ip(1), false);
        pool.member(ip(2), false);
        pool.member(ip(2), true);
        assert!(reports.has_changed().unwrap());
        assert_eq!(*reports.borrow_and_update(), set(&[ip(2)]));
    }

    #[test]
    fn rcodes_and_tsig_errors_read_like_dig() {
        assert_eq!(rcode_name(ResponseCode::NotAuth), "NOTAUTH");
        assert_eq!(rcode_name(ResponseCode::Refused), "REFUSED");
        let key = Name::from_ascii("xdprobe-key.").unwrap();
        assert!(tsig_error_text(TsigError::BadSig, &key)
            .starts_with("BADSIG: the secret does not match the server's key xdprobe-key."));
        assert!(tsig_error_text(TsigError::BadKey, &key).starts_with("BADKEY"));
    }

    /// Against a real BIND 9 (`named`, Debian `bind9`) in a network namespace of our own,
    /// checked with `dig` and disturbed with `nsupdate` (Debian `bind9-dnsutils`): root only.
    mod privileged {
        use std::{
            io,
            sync::{Arc, Mutex},
            thread,
        };

        use xdprobe_harness::{bind, bind::Bind, enter::enter, require_root, Namespaces};

        use super::*;

        const PORT: u16 = bind::PORT;
        const KEY: &str = bind::KEY_NAME;
        const RECORD: &str = bind::RECORD;
        const WAIT: Duration = Duration::from_secs(15);
        /// Short, so that drift is corrected within the tests' patience.
        const RESYNC: Duration = Duration::from_millis(300);

        fn foreign(last: u8) -> IpAddr {
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, last))
        }

        fn random_secret() -> String {
            BASE64.encode(&rand::random::<[u8; 32]>())
        }

        /// `named` serving example.test. on 127.0.0.1:5353 in a namespace of its own with only
        /// `lo` up (the harness's BIND launcher); stopped, then the namespace deleted, on drop.
        struct Named {
            bind: Bind,
            secret: String,
            ns: String,
            _namespaces: Namespaces,
        }

        impl Named {
            fn start() -> Named {
                Self::start_on(std::net::Ipv4Addr::LOCALHOST.into())
            }

            /// `named` listening on `listen` (127.0.0.1 or ::1) port 5353.
            fn start_on(listen: IpAddr) -> Named {
                require_root();
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                let prefix = format!(
                    "xdns{}-{}-",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                );
                let mut namespaces = Namespaces::new(&prefix).unwrap_or_else(|e| panic!("{e:#}"));
                let ns = namespaces.add("named").unwrap_or_else(|e| panic!("{e:#}"));
                let bind = Bind::start_on(&ns, listen, PORT).unwrap_or_else(|e| panic!("{e:#}"));
                Named {
                    secret: bind.secret().to_string(),
                    bind,
                    ns,
                    _namespaces: namespaces,
                }
            }

            /// Starts named again (the zone's journal keeps what was updated).
            fn run(&mut self) {
                self.bind.restart().unwrap_or_else(|e| panic!("{e:#}"));
            }

            fn stop(&mut self) {
                self.bind.stop();
            }

            fn log(&self) -> String {
                self.bind.log()
            }

            /// The A and AAAA sets of www.example.test. as dig sees them.
            fn a_set(&self) -> BTreeSet<IpAddr> {
                self.bind.records().unwrap_or_else(|e| panic!("{e:#}"))
            }

            /// Runs nsupdate `commands` for zone example.test. with the right key.
            fn nsupdate(&self, commands: &str) {
                self.bind
                    .nsupdate(commands)
                    .unwrap_or_else(|e| panic!("{e:#}"));
            }

            fn pool_config(
                &self,
                secret: &str,
                members: &[IpAddr],
                policy: Option<AllDown>,
                resync: Duration,
            ) -> (PoolConfig, TempFile) {
                let file = TempFile::new(&format!("{secret}\n"));
                let config = PoolConfig::resolve(
                    0,
                    DnsFileConfig {
                        server: self.bind.server(),
                        zone: "example.test".to_string(),
                        name: "www".to_string(),
                        ttl: Some(60),
                        tsig_name: KEY.to_string(),
                        tsig_algorithm: None,
                        tsig_secret_file: file.0.clone(),
                        members: members.to_vec(),
                        when_all_down: policy,
                        resync: Some(resync),
                    },
                )
                .unwrap();
                (config, file)
            }
        }

        /// The tracing output of one pool's thread.
        #[derive(Clone, Default)]
        struct Log(Arc<Mutex<Vec<u8>>>);

        impl io::Write for Log {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }

        impl Log {
            fn text(&self) -> String {
                String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
            }
            fn count(&self, needle: &str) -> usize {
                self.text().matches(needle).count()
            }
        }

        /// A DnsPool driven by a current-thread runtime on a thread inside the namespace, as
        /// the daemon drives it; the test thread reports member states through `pool`.
        struct Running {
            pool: Option<DnsPool>,
            shutdown: CancellationToken,
            thread: Option<thread::JoinHandle<()>>,
            log: Log,
        }

        impl Running {
            fn start(named: &Named, config: PoolConfig) -> Running {
                let shutdown = CancellationToken::new();
                let log = Log::default();
                let (tx, rx) = std::sync::mpsc::channel();
                let thread = thread::spawn({
                    let ns = named.ns.clone();
                    let shutdown = shutdown.clone();
                    let log = log.clone();
                    move || {
                        enter(&ns);
                        let subscriber = tracing_subscriber::fmt()
                            .with_writer(move || log.clone())
                            .with_ansi(false)
                            .with_env_filter(tracing_subscriber::EnvFilter::new(
                                "info,xdprobe::act::dns=debug",
                            ))
                            .finish();
                        let _default = tracing::subscriber::set_default(subscriber);
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap();
                        runtime.block_on(async {
                            let started = std::time::Instant::now();
                            let pool = DnsPool::start(
                                config,
                                Notifier::start(None, CancellationToken::new())
                                    .expect("no mail: nothing to check"),
                                None,
                                shutdown.clone(),
                                Start::default(),
                            );
                            assert!(
                                started.elapsed() < Duration::from_millis(50),
                                "start blocked"
                            );
                            tx.send(pool).unwrap();
                            shutdown.cancelled().await;
                        });
                    }
                });
                let pool = rx
                    .recv_timeout(Duration::from_secs(5))
                    .expect("pool thread did not start");
                Running {
                    pool: Some(pool),
                    shutdown,
                    thread: Some(thread),
                    log,
                }
            }

            fn member(&self, addr: IpAddr, up: bool) {
                let started = std::time::Instant::now();
                self.pool.as_ref().unwrap().member(addr, up);
                assert!(
                    started.elapsed() < Duration::from_millis(20),
                    "member() blocked"
                );
            }

            /// Waits until the server's A set is `want`.
            fn wait_for(&self, named: &Named, want: &BTreeSet<IpAddr>) {
                let deadline = std::time::Instant::now() + WAIT;
                loop {
                    let have = named.a_set();
                    if &have == want {
                        return;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "server A set still {have:?}, want {want:?}\n--- pool log:\n{}\n--- named log:\n{}",
                        self.log.text(),
                        named.log()
                    );
                    thread::sleep(Duration::from_millis(100));
                }
            }

            fn wait_log(&self, needle: &str, times: usize) {
                let deadline = std::time::Instant::now() + WAIT;
                while self.log.count(needle) < times {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{needle:?} not logged {times} times:\n{}",
                        self.log.text()
                    );
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }

        impl Drop for Running {
            fn drop(&mut self) {
                self.shutdown.cancel();
                drop(self.pool.take());
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
            }
        }

        #[test]
        fn live_members_leave_and_return_and_all_down_keeps_the_full_set() {
            let named = Named::start();
            let members = [ip(1), ip(2), ip(3)];
            let (config, _secret) = named.pool_config(&named.secret, &members, None, RESYNC);
            let pool = Running::start(&named, config);
            pool.wait_for(&named, &set(&members));
            pool.wait_log(
                "A record 198.51.100.1 added: start-up: record missing on server",
                1,
            );

            pool.member(ip(2), false);
            pool.wait_for(&named, &set(&[ip(1), ip(3)]));
            pool.wait_log("A record 198.51.100.2 removed: member 198.51.100.2 DOWN", 1);
            pool.member(ip(2), true);
            pool.wait_for(&named, &set(&members));
            pool.wait_log("A record 198.51.100.2 added: member 198.51.100.2 UP", 1);

            // Every member down: the set stays full, through several resyncs, warned once.
            pool.member(ip(1), false);
            pool.member(ip(2), false);
            pool.wait_for(&named, &set(&[ip(3)]));
            pool.member(ip(3), false);
            pool.wait_for(&named, &set(&members));
            thread::sleep(Duration::from_millis(1200));
            assert_eq!(named.a_set(), set(&members));
            assert_eq!(pool.log.count("all members down: keeping the full set"), 3);
            assert_eq!(pool.log.count("WARN"), 1, "{}", pool.log.text());

            // Someone removes one while all are down: the next resync restores it.
            named.nsupdate(&format!("update delete {RECORD} A {}", ip(1)));
            pool.wait_for(&named, &set(&members));
            pool.wait_log(
                "A record 198.51.100.1 added: all members down: keeping the full set",
                1,
            );

            // One comes back: only it stays.
            pool.member(ip(3), true);
            pool.wait_for(&named, &set(&[ip(3)]));
            pool.wait_log("a member is up again", 1);
            pool.wait_log("A record 198.51.100.1 removed: member 198.51.100.1 is DOWN (kept only while all members were down)", 1);

            // A second episode is warned again.
            pool.member(ip(3), false);
            pool.wait_for(&named, &set(&members));
            pool.wait_log("all members down: keeping the full set (when_all_down", 2);
        }

        #[test]
        fn live_a_dual_stack_pool_keeps_its_a_and_aaaa_sets_over_an_ipv6_server() {
            let v6 =
                |last: u16| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last));
            let named = Named::start_on(std::net::Ipv6Addr::LOCALHOST.into());
            assert!(
                named.bind.server().starts_with("[::1]:"),
                "{}",
                named.bind.server()
            );
            // Someone else's AAAA record at the name: never touched.
            let theirs = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99);
            named
                .bind
                .add_aaaa(theirs, 30)
                .unwrap_or_else(|e| panic!("{e:#}"));
            let members = [ip(1), v6(1), v6(2)];
            let (config, _secret) = named.pool_config(&named.secret, &members, None, RESYNC);
            let pool = Running::start(&named, config);
            let with_theirs = |ours: &[IpAddr]| {
                let mut all = set(ours);
                all.insert(IpAddr::V6(theirs));
                all
            };
            pool.wait_for(&named, &with_theirs(&members));
            pool.wait_log(
                "AAAA record 2001:db8::2 added: start-up: record missing on server",
                1,
            );
            pool.wait_log("A record 198.51.100.1 added: start-up", 1);

            pool.member(v6(2), false);
            pool.wait_for(&named, &with_theirs(&[ip(1), v6(1)]));
            pool.wait_log(
                "AAAA record 2001:db8::2 removed: member 2001:db8::2 DOWN",
                1,
            );
            // Every IPv6 member down, the IPv4 one up: the AAAA set holds only theirs.
            pool.member(v6(1), false);
            pool.wait_for(&named, &with_theirs(&[ip(1)]));
            // Drift in the AAAA set is corrected like in the A set.
            named.nsupdate(&format!("update add {RECORD} 60 AAAA {}", v6(2)));
            pool.wait_for(&named, &with_theirs(&[ip(1)]));
            pool.member(v6(2), true);
            pool.wait_for(&named, &with_theirs(&[ip(1), v6(2)]));
            assert_eq!(
                named
                    .bind
                    .aaaa_records()
                    .unwrap_or_else(|e| panic!("{e:#}")),
                [
                    theirs,
                    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)
                ]
                .into_iter()
                .collect()
            );
        }

        #[test]
        fn live_all_down_empties_the_set_with_the_empty_policy() {
            let named = Named::start();
            let members = [ip(1), ip(2)];
            let (config, _secret) =
                named.pool_config(&named.secret, &members, Some(AllDown::Empty), RESYNC);
            let pool = Running::start(&named, config);
            pool.wait_for(&named, &set(&members));
            pool.member(ip(1), false);
            pool.member(ip(2), false);
            pool.wait_for(&named, &BTreeSet::new());
            pool.wait_log(
                "all members down: removing every member's record (when_all_down = \"empty\")",
                1,
            );
            thread::sleep(Duration::from_millis(700));
            assert_eq!(named.a_set(), BTreeSet::new());
            pool.member(ip(2), true);
            pool.wait_for(&named, &set(&[ip(2)]));
        }

        #[test]
        fn live_foreign_records_are_left_alone_and_drift_is_corrected() {
            let named = Named::start();
            // 80 records of someone else's: with ours, the answer is too big for UDP, so the
            // pool's reads go over TCP. (BIND 9.18 refuses more than 100 per RRset.)
            let adds: Vec<String> = (1..=80)
                .map(|n| format!("update add {RECORD} 300 A {}", foreign(n)))
                .collect();
            named.nsupdate(&adds.join("\n"));
            let theirs: BTreeSet<IpAddr> = (1..=80).map(foreign).collect();
            let with_theirs = |ours: &[IpAddr]| &theirs | &set(ours);

            let members = [ip(1), ip(2), ip(3)];
            let (config, _secret) = named.pool_config(&named.secret, &members, None, RESYNC);
            let pool = Running::start(&named, config);
            pool.wait_for(&named, &with_theirs(&members));

            pool.member(ip(2), false);
            pool.wait_for(&named, &with_theirs(&[ip(1), ip(3)]));

            // Drift both ways, corrected at the next resync.
            named.nsupdate(&format!("update delete {RECORD} A {}", ip(1)));
            pool.wait_for(&named, &with_theirs(&[ip(1), ip(3)]));
            pool.wait_log(
                "A record 198.51.100.1 added: drift: record missing on server",
                1,
            );
            named.nsupdate(&format!("update add {RECORD} 60 A {}", ip(2)));
            pool.wait_for(&named, &with_theirs(&[ip(1), ip(3)]));
            pool.wait_log("A record 198.51.100.2 removed: drift: record on server but member 198.51.100.2 is DOWN", 1);

            // Someone adds another record while we run; our next change must not drop it
            // (the update's prerequisite no longer matches: the pool reads and plans again).
            named.nsupdate(&format!("update add {RECORD} 300 A {}", foreign(200)));
            pool.member(ip(3), false);
            let mut now = with_theirs(&[ip(1)]);
            now.insert(foreign(200));
            pool.wait_for(&named, &now);
            thread::sleep(Duration::from_millis(700));
            assert_eq!(named.a_set(), now);
            assert_eq!(pool.log.count("WARN"), 0, "{}", pool.log.text());
            assert!(
                pool.log
                    .text()
                    .contains("answer truncated: asking again over TCP"),
                "{}",
                pool.log.text()
            );
        }

        #[test]
        fn live_an_edit_between_read_and_update_is_not_overwritten() {
            let named = Named::start();
            let members = [ip(1), ip(2)];
            // No resync during the test: the pool's view goes stale on purpose.
            let (config, _secret) =
                named.pool_config(&named.secret, &members, None, Duration::from_secs(600));
            let pool = Running::start(&named, config);
            pool.wait_for(&named, &set(&members));
            named.nsupdate(&format!(
                "update add {RECORD} 300 A {}\nupdate delete {RECORD} A {}",
                foreign(9),
                ip(1)
            ));
            pool.member(ip(2), false);
            // The update planned on the old set fails its prerequisite; the pool reads the set
            // again: it keeps the newcomer, and sees (and fixes) the missing member too.
            pool.wait_for(&named, &set(&[ip(1), foreign(9)]));
            pool.wait_log("record set changed on the server since it was read", 1);
            pool.wait_log(
                "A record 198.51.100.1 added: drift: record missing on server",
                1,
            );
            pool.wait_log("A record 198.51.100.2 removed: member 198.51.100.2 DOWN", 1);
        }

        #[test]
        fn live_wrong_secret_is_reported_and_changes_nothing() {
            let named = Named::start();
            named.nsupdate(&format!(
                "update add {RECORD} 60 A {}\nupdate add {RECORD} 60 A {}",
                ip(1),
                foreign(7)
            ));
            let before = named.a_set();
            let members = [ip(1), ip(2)];
            let (config, _secret) = named.pool_config(&random_secret(), &members, None, RESYNC);
            let pool = Running::start(&named, config);
            pool.wait_log(
                "TSIG error BADSIG: the secret does not match the server's key xdprobe-key.",
                1,
            );
            assert!(
                pool.log.text().contains("the server answered NOTAUTH"),
                "{}",
                pool.log.text()
            );
            // Reports are still taken at once, and the pool keeps retrying, backing off.
            for _ in 0..1000 {
                pool.member(ip(1), false);
                pool.member(ip(1), true);
            }
            pool.member(ip(1), false);
            thread::sleep(Duration::from_secs(3));
            let failures = pool.log.count("DNS records not in sync");
            assert!(
                (2..=6).contains(&failures),
                "{failures} failures in ~3.5 s:\n{}",
                pool.log.text()
            );
            assert!(
                pool.log.text().contains("retrying in 2s"),
                "{}",
                pool.log.text()
            );
            assert_eq!(named.a_set(), before);
            assert!(named.log().contains("BADSIG"));
        }

        #[test]
        fn live_server_outage_is_retried_and_reports_coalesce() {
            let mut named = Named::start();
            let members = [ip(1), ip(2), ip(3)];
            let (config, _secret) = named.pool_config(&named.secret, &members, None, RESYNC);
            let pool = Running::start(&named, config);
            pool.wait_for(&named, &set(&members));

            named.stop();
            pool.member(ip(2), false);
            pool.wait_log("server 127.0.0.1:5353: no answer within 3s", 1);
            pool.member(ip(3), false);
            pool.member(ip(2), true);
            named.run();
            pool.wait_for(&named, &set(&[ip(1), ip(2)]));
            pool.wait_log("DNS server works again", 1);
            pool.wait_log("A record 198.51.100.3 removed: member 198.51.100.3 DOWN", 1);
            // 198.51.100.2's DOWN was overtaken by its UP while the server was away.
            assert_eq!(
                pool.log.count("A record 198.51.100.2"),
                1,
                "{}",
                pool.log.text()
            );
        }
    }
}
