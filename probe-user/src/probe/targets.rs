//! Target lists for `xdprobe monitor`: addresses, CIDRs, hostnames and `@FILE`s, turned into a
//! sorted, duplicate-free list of hosts: IPv4 first, then IPv6.
//!
//! The work is split in two so that almost all of it is pure and testable without a network:
//!
//! * [`parse_args`] / [`parse_target`] only look at text (files are opened through a function
//!   the caller passes in, [`open_file`] in the daemon, and read a line at a time, at most
//!   [`MAX_LINE`] bytes each, so a file that is not text, such as `/dev/zero`, is an error
//!   at once rather than a process that grows until it is killed), and every error says where
//!   the bad target came from: `argument 3` or `hosts.txt:12`.
//! * [`resolve`] / [`resolve_with`] turn the parsed targets into addresses: CIDRs are expanded with
//!   integer arithmetic and hostnames are looked up through a resolver the caller passes in
//!   ([`resolve`] uses the system resolver), so tests never send a DNS query.
//!
//! There is no global state: everything a call needs comes in through its arguments.

use std::{
    collections::HashSet,
    fs::File,
    future::Future,
    io::{self, BufRead, BufReader, Read as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use futures::stream::{self, StreamExt as _};

use crate::config::family::below_host_space;
pub use crate::config::family::Family;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// One target as written on the command line or in a file, before any name resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A single address (an IPv4-mapped IPv6 address is its IPv4 address).
    Addr(IpAddr),
    /// A network; host bits are never set (that is a syntax error, see [`parse_target`]).
    Net(IpNet),
    /// A hostname with valid RFC 1123 syntax, still to be resolved.
    Name(String),
}

/// Why a target list could not be turned into hosts. Every variant says where the problem is,
/// so that a bad line in a 100,000-line file can be found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// A target that is not an address, a CIDR or a hostname.
    #[error("{origin}: {text:?}: {reason}")]
    Syntax {
        /// `argument N` (1-based, counting targets only) or `FILE:LINE` (1-based).
        origin: String,
        /// The offending text, trimmed and without its comment.
        text: String,
        reason: String,
    },
    /// An `@FILE` could not be read.
    #[error("cannot read target file {path}: {message}")]
    File { path: String, message: String },
    /// A line of an `@FILE` that is not a line of text: too long, a NUL byte, not UTF-8.
    #[error("{origin}: {reason}")]
    Line {
        /// `FILE:LINE` (1-based).
        origin: String,
        reason: String,
    },
    /// A hostname did not resolve to any address of the family asked for.
    #[error("{origin}: {name:?}: {message}")]
    Resolve {
        name: String,
        origin: String,
        message: String,
    },
    /// More distinct hosts than the prober can watch.
    #[error("too many hosts: {count} (at most {max})")]
    TooMany { count: u64, max: usize },
    /// Nothing to watch: no targets, or only comments and blank lines.
    #[error("no targets given")]
    Empty,
}

/// Longest line of an `@FILE`, in bytes without its line end: far more than any target and its
/// comment need, and little enough that reading a file that is not text stops at once.
pub const MAX_LINE: usize = 4096;
/// Most targets one list may hold, duplicates included: as many as the prober can ever watch
/// (a target is at least one host). An endless stream of valid lines (`yes 192.0.2.1` through
/// a FIFO) is an error here, at 8 MiB of memory, rather than a process that grows until killed.
pub const MAX_TARGETS: usize = probe_common::maps::MAX_HOSTS as usize;
/// Most lines one `@FILE` may have, blank and comment lines included: four per target at the
/// most, so that an endless stream of blank lines ends too.
pub const MAX_FILE_LINES: u64 = 4 * MAX_TARGETS as u64;
/// Most addresses an IPv6 network may stand for: a /111. A /64 cannot be swept.
pub const MAX_IPV6_NET: u128 = 1 << 17;
/// The shortest IPv6 prefix accepted, for [`MAX_IPV6_NET`] addresses.
pub const MIN_IPV6_PREFIX: u8 = 128 - MAX_IPV6_NET.trailing_zeros() as u8;

/// The UTF-8 byte-order mark some editors put at the start of a file.
const BOM: &[u8] = "\u{feff}".as_bytes();
/// Longest hostname in presentation form, without a trailing dot (RFC 1035 / RFC 1123).
const MAX_NAME_LEN: usize = 253;
/// Longest label of a hostname.
const MAX_LABEL_LEN: usize = 63;
/// How many name lookups run at once: enough to load a file full of names quickly without
/// flooding the resolver (each system lookup occupies a blocking thread).
const CONCURRENT_LOOKUPS: usize = 16;

/// Parses one target: an IPv4 or IPv6 address, an IPv4 or IPv6 CIDR, or a hostname. Surrounding
/// whitespace is ignored. The error is the reason only; callers add the origin.
///
/// Rules, and why:
/// * A CIDR must not have host bits set (`198.18.0.5/15`): that is almost always a typo for
///   another network, so we refuse it and suggest the network the prefix would give.
/// * Addresses are strict dotted decimal (four numbers 0-255, no leading zeros). Names made only
///   of digits and dots (`10.1`, `010.0.0.1`) or whose last label is numeric are refused rather
///   than passed to the resolver, which would read them as `inet_aton` shorthand or octal and
///   probe an address nobody meant.
/// * An IPv6 network may stand for at most [`MAX_IPV6_NET`] addresses (a /111): a /64 cannot be
///   swept, and saying so beats probing for hours.
/// * An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) is its IPv4 address. The rest of `::/96`
///   (the unspecified address, loopback, the deprecated IPv4-compatible form) is refused: none
///   is a host one can probe on a link.
pub fn parse_target(text: &str) -> Result<Target, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty target".to_string());
    }
    if text.contains(':') {
        return parse_ipv6(text);
    }
    if text.chars().any(char::is_whitespace) {
        return Err("contains whitespace (one target per argument or line)".to_string());
    }
    if let Some((addr, len)) = text.split_once('/') {
        return parse_cidr(addr, len).map(|net| Target::Net(IpNet::V4(net)));
    }
    if let Ok(addr) = text.parse::<Ipv4Addr>() {
        return Ok(Target::Addr(IpAddr::V4(addr)));
    }
    check_hostname(text)?;
    Ok(Target::Name(text.to_string()))
}

/// An IPv6 address or CIDR (see [`parse_target`]).
fn parse_ipv6(text: &str) -> Result<Target, String> {
    if let Some((addr, len)) = text.split_once('/') {
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| format!("invalid IPv6 network address {addr:?}"))?;
        let len = match len.parse::<u8>() {
            Ok(n) if n <= 128 && len.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err("invalid prefix length (0 to 128)".to_string()),
        };
        let net =
            Ipv6Net::new(addr, len).map_err(|_| "invalid prefix length (0 to 128)".to_string())?;
        if net.network() != addr {
            return Err(format!(
                "host bits are set: did you mean {}/{len}",
                net.network()
            ));
        }
        if len < MIN_IPV6_PREFIX {
            return Err(format!(
                "an IPv6 network of at most {MAX_IPV6_NET} addresses (/{MIN_IPV6_PREFIX} or \
                 longer) can be swept; /{len} is too large"
            ));
        }
        if below_host_space(addr) {
            return Err(not_a_host(addr));
        }
        return Ok(Target::Net(IpNet::V6(net)));
    }
    let addr: Ipv6Addr = text.parse().map_err(|_| {
        if text.contains('%') {
            "a zone index is not needed: link-local hosts are probed on --iface".to_string()
        } else {
            "invalid IPv6 address (and ':' is no part of a name or an IPv4 address)".to_string()
        }
    })?;
    if let Some(v4) = addr.to_ipv4_mapped() {
        return Ok(Target::Addr(IpAddr::V4(v4)));
    }
    if below_host_space(addr) {
        return Err(not_a_host(addr));
    }
    Ok(Target::Addr(IpAddr::V6(addr)))
}

fn not_a_host(addr: Ipv6Addr) -> String {
    format!("{addr} is not a host address (::/96 holds the unspecified and loopback addresses)")
}

fn parse_cidr(addr: &str, len: &str) -> Result<Ipv4Net, String> {
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("invalid network address {addr:?} (expected a.b.c.d)"))?;
    // Plain digits only: `u8::from_str` would also take "+15".
    let len = match len.parse::<u8>() {
        Ok(n) if n <= 32 && len.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => return Err("invalid prefix length (0 to 32)".to_string()),
    };
    let net = Ipv4Net::new(addr, len).map_err(|_| "invalid prefix length (0 to 32)".to_string())?;
    if net.network() != addr {
        return Err(format!(
            "host bits are set: did you mean {}/{len}",
            net.network()
        ));
    }
    Ok(net)
}

/// Checks RFC 1123 hostname syntax (letters, digits, hyphens, dots; a trailing dot is allowed).
fn check_hostname(text: &str) -> Result<(), String> {
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(format!(
            "invalid character {bad:?} (not an address, CIDR or hostname)"
        ));
    }
    let name = text.strip_suffix('.').unwrap_or(text);
    let labels: Vec<&str> = name.split('.').collect();
    let numeric = |label: &str| label.bytes().all(|b| b.is_ascii_digit());
    let hex = |label: &str| {
        label
            .strip_prefix("0x")
            .or_else(|| label.strip_prefix("0X"))
            .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    if labels.iter().all(|l| numeric(l) || hex(l)) {
        return Err(
            "invalid IPv4 address (expected four decimal numbers 0-255 without leading zeros)"
                .to_string(),
        );
    }
    if labels.last().is_some_and(|l| numeric(l)) {
        return Err(
            "a hostname cannot end in a numeric label (the resolver would read it as an address)"
                .to_string(),
        );
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "hostname is {} characters long (at most {MAX_NAME_LEN})",
            name.len()
        ));
    }
    for label in &labels {
        if label.is_empty() {
            return Err(
                "empty label in hostname (two dots in a row, or a leading dot)".to_string(),
            );
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "hostname label is {} characters long (at most {MAX_LABEL_LEN})",
                label.len()
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "hostname label {label:?} starts or ends with a hyphen"
            ));
        }
    }
    Ok(())
}

/// Parsed targets in the compact form they are kept in until resolved: addresses and CIDRs as
/// inclusive ranges of [`key`]s (32 bytes each, so a 131,072-line file costs about 4 MiB, not a
/// string per line), names with the origin to report if they do not resolve, and the family
/// names resolve to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub ranges: Vec<(u128, u128)>,
    pub names: Vec<(String, String)>,
    pub family: Family,
}

impl Parsed {
    pub fn push(&mut self, target: Target, origin: impl FnOnce() -> String) {
        match target {
            Target::Addr(addr) => self.ranges.push((key(addr), key(addr))),
            Target::Net(net) => self.ranges.push(host_range(net)),
            Target::Name(name) => self.names.push((name, origin())),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty() && self.names.is_empty()
    }

    /// Targets so far, duplicates included.
    pub fn len(&self) -> usize {
        self.ranges.len() + self.names.len()
    }
}

impl From<Vec<(Target, String)>> for Parsed {
    fn from(targets: Vec<(Target, String)>) -> Self {
        let mut parsed = Parsed::default();
        for (target, origin) in targets {
            parsed.push(target, || origin);
        }
        parsed
    }
}

/// Parses the TARGET arguments of `monitor`. An argument `@FILE` is replaced by the targets in
/// FILE: one per line, `#` starts a comment anywhere on a line, blank lines are ignored, and
/// `@FILE` inside a file is refused (no nesting, so no include loops to detect).
///
/// Each target comes back with its origin, `argument N` (1-based among `args`) or `FILE:LINE`,
/// for error messages after resolution. Stops at the first bad target. `open` is [`open_file`]
/// in the daemon and a map of in-memory files in tests; what it opens is read a line at a
/// time (see [`parse_file`]), never whole.
#[cfg(test)]
pub fn parse_args<R: BufRead>(
    args: &[String],
    open: impl Fn(&Path) -> io::Result<R>,
) -> Result<Parsed, TargetError> {
    parse_args_in(args, Family::Any, open)
}

/// [`parse_args`] for one address family (`-4`/`-6`): an address or network of the other is
/// an error naming its origin, and names will resolve to this family only.
pub fn parse_args_in<R: BufRead>(
    args: &[String],
    family: Family,
    open: impl Fn(&Path) -> io::Result<R>,
) -> Result<Parsed, TargetError> {
    parse_list(args, family, open, |index| {
        format!("argument {}", index + 1)
    })
}

/// [`parse_args_in`] for the config file's `monitor` list: origins are `monitor[N]`
/// (0-based, as the list is written) instead of `argument N`.
pub fn parse_config_list<R: BufRead>(
    list: &[String],
    family: Family,
    open: impl Fn(&Path) -> io::Result<R>,
) -> Result<Parsed, TargetError> {
    parse_list(list, family, open, |index| format!("monitor[{index}]"))
}

fn parse_list<R: BufRead>(
    args: &[String],
    family: Family,
    open: impl Fn(&Path) -> io::Result<R>,
    name: impl Fn(usize) -> String,
) -> Result<Parsed, TargetError> {
    let mut out = Parsed {
        family,
        ..Parsed::default()
    };
    for (index, arg) in args.iter().enumerate() {
        let origin = name(index);
        let Some(path) = arg.trim().strip_prefix('@') else {
            let target = parse_target(arg)
                .and_then(|t| in_family(t, family))
                .map_err(|reason| TargetError::Syntax {
                    origin: origin.clone(),
                    text: arg.trim().to_string(),
                    reason,
                })?;
            out.push(target, || origin);
            continue;
        };
        if path.is_empty() {
            return Err(TargetError::Syntax {
                origin,
                text: arg.trim().to_string(),
                reason: "missing file name after '@'".to_string(),
            });
        }
        let file = open(Path::new(path)).map_err(|e| TargetError::File {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        parse_file(path, file, &mut out)?;
    }
    if out.is_empty() {
        return Err(TargetError::Empty);
    }
    Ok(out)
}

/// `target` if its family is allowed (a name always is: it resolves within the family).
fn in_family(target: Target, family: Family) -> Result<Target, String> {
    let addr = match &target {
        Target::Addr(addr) => *addr,
        Target::Net(net) => net.addr(),
        Target::Name(_) => return Ok(target),
    };
    if family.allows(addr) {
        Ok(target)
    } else {
        Err(family.refusal().to_string())
    }
}

/// Opens an `@FILE` for [`parse_args`]: the daemon's `open`.
pub fn open_file(path: &Path) -> io::Result<BufReader<File>> {
    File::open(path).map(BufReader::new)
}

/// Parses one `@FILE`, a line at a time, appending to `out`. Memory stays bounded whatever the
/// file holds: a line longer than [`MAX_LINE`] bytes, or one with a NUL byte or that is not
/// UTF-8, is an error naming `FILE:LINE` as soon as it is read.
fn parse_file(path: &str, mut file: impl BufRead, out: &mut Parsed) -> Result<(), TargetError> {
    let mut buf = Vec::with_capacity(MAX_LINE + 8);
    let mut number = 0u64;
    loop {
        number += 1;
        buf.clear();
        // At most the longest line, its line end and (first) a byte-order mark: enough to tell
        // a line that is too long, never the rest of a file without line ends.
        let limit = MAX_LINE + "\r\n".len() + if number == 1 { BOM.len() } else { 0 };
        let read = (&mut file)
            .take(limit as u64)
            .read_until(b'\n', &mut buf)
            .map_err(|e| TargetError::File {
                path: path.to_string(),
                message: format!("line {number}: {e}"),
            })?;
        if read == 0 {
            return Ok(());
        }
        let origin = || format!("{path}:{number}");
        if number > MAX_FILE_LINES {
            return Err(TargetError::Line {
                origin: origin(),
                reason: format!("more than {MAX_FILE_LINES} lines (is this a target file?)"),
            });
        }
        let line = text_line(&buf, number == 1).map_err(|reason| TargetError::Line {
            origin: origin(),
            reason,
        })?;
        parse_line(line, origin, out)?;
        if out.len() > MAX_TARGETS {
            return Err(TargetError::Line {
                origin: origin(),
                reason: format!(
                    "more than {MAX_TARGETS} targets (at most that many hosts can be watched)"
                ),
            });
        }
    }
}

/// The text of one line as read (with its line end, if any): a line of at most [`MAX_LINE`]
/// bytes without NUL bytes, in UTF-8. Files saved by some Windows editors start with a
/// byte-order mark and end their lines with `\r\n`: such files work as they are.
fn text_line(bytes: &[u8], first: bool) -> Result<&str, String> {
    let line = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = if first {
        line.strip_prefix(BOM).unwrap_or(line)
    } else {
        line
    };
    if line.contains(&0) {
        return Err("contains a NUL byte (a target file is text)".to_string());
    }
    if line.len() > MAX_LINE {
        return Err(format!(
            "line longer than {MAX_LINE} bytes (a target file has one target a line)"
        ));
    }
    std::str::from_utf8(line).map_err(|e| {
        format!(
            "not UTF-8 (invalid byte at column {}; a target file is text)",
            e.valid_up_to() + 1
        )
    })
}

/// Parses one line of an `@FILE` (comments and blank lines are skipped), appending to `out`.
fn parse_line(
    line: &str,
    origin: impl FnOnce() -> String,
    out: &mut Parsed,
) -> Result<(), TargetError> {
    let text = line
        .split_once('#')
        .map_or(line, |(before, _)| before)
        .trim();
    if text.is_empty() {
        return Ok(());
    }
    if text.starts_with('@') {
        return Err(TargetError::Syntax {
            origin: origin(),
            text: text.to_string(),
            reason: "@FILE is not allowed inside a target file".to_string(),
        });
    }
    match parse_target(text).and_then(|t| in_family(t, out.family)) {
        Ok(target) => {
            out.push(target, origin);
            Ok(())
        }
        Err(reason) => Err(TargetError::Syntax {
            origin: origin(),
            text: text.to_string(),
            reason,
        }),
    }
}

/// Turns parsed targets into the sorted, duplicate-free list of hosts to probe, resolving names
/// with the system resolver (`getaddrinfo` through [`tokio::net::lookup_host`]). See
/// [`resolve_with`] for the rules.
pub async fn resolve(targets: Parsed, max_hosts: usize) -> Result<Vec<IpAddr>, TargetError> {
    resolve_with(targets, max_hosts, |name: String| async move {
        let addrs = tokio::net::lookup_host((name.as_str(), 0)).await?;
        Ok(addrs.map(|sa| sa.ip()).collect())
    })
    .await
}

/// Like [`resolve`], with the name lookup passed in (tests use a map, so they send no DNS
/// queries).
///
/// * A CIDR shorter than /31 stands for its hosts without the network and broadcast addresses,
///   as `fping -g` does (198.18.0.0/24 is 198.18.0.1 to 198.18.0.254); a /31 (RFC 3021
///   point-to-point link) gives both addresses and a /32 its one address. An address listed on
///   its own is always kept, even a network or broadcast address.
/// * A name gives all its addresses of the family asked for (like `fping -m`): IPv4 and IPv6
///   by default, one with `-4` or `-6`; a name with none is an error naming its origin. An
///   IPv4-mapped IPv6 answer is its IPv4 address; answers in the rest of `::/96` are dropped.
/// * The number of distinct hosts is checked against `max_hosts` before anything is expanded,
///   using the ranges only, and before any name is looked up, so `10.0.0.0/8` fails at once with
///   [`TargetError::TooMany`] instead of allocating 16 million addresses or waiting on DNS.
/// * Overlapping targets count once: the result is sorted and has no duplicates.
///
/// * An IPv6 network stands for all its addresses but the Subnet-Router anycast one (host bits
///   zero, RFC 4291) below /127; a /127 (RFC 6164) gives both, a /128 its one address.
///
/// Expansion is integer arithmetic on merged ranges of [`key`]s, which come out sorted and
/// disjoint, so no sort of the expanded list is needed: a /15 takes a few milliseconds even
/// unoptimised. The hosts come out IPv4 first, then IPv6, as `IpAddr` sorts them.
pub async fn resolve_with<R, F>(
    targets: impl Into<Parsed>,
    max_hosts: usize,
    lookup: R,
) -> Result<Vec<IpAddr>, TargetError>
where
    R: Fn(String) -> F,
    F: Future<Output = io::Result<Vec<IpAddr>>>,
{
    let Parsed {
        mut ranges,
        names,
        family,
    } = targets.into();
    if ranges.is_empty() && names.is_empty() {
        return Err(TargetError::Empty);
    }
    // The same name twice is looked up once; the first origin is reported.
    let mut seen = HashSet::new();
    let names: Vec<(String, String)> = names
        .into_iter()
        .filter(|(name, _)| seen.insert(name.to_ascii_lowercase()))
        .collect();
    // Fail fast on a huge CIDR before waiting on the resolver.
    ranges = merge(ranges);
    check_count(&ranges, max_hosts)?;

    let mut lookups = stream::iter(names)
        .map(|(name, origin)| {
            let answer = lookup(name.clone());
            async move { (name, origin, answer.await) }
        })
        .buffered(CONCURRENT_LOOKUPS);
    while let Some((name, origin, answer)) = lookups.next().await {
        let addrs = answer.map_err(|e| TargetError::Resolve {
            name: name.clone(),
            origin: origin.clone(),
            message: format!("cannot resolve: {e}"),
        })?;
        let before = ranges.len();
        ranges.extend(
            addrs
                .iter()
                .map(|ip| ip.to_canonical())
                .filter(|ip| family.allows(*ip))
                .filter(|ip| match ip {
                    IpAddr::V6(v6) => !below_host_space(*v6),
                    IpAddr::V4(_) => true,
                })
                .map(|ip| (key(ip), key(ip))),
        );
        if ranges.len() == before {
            let message = match family {
                _ if addrs.is_empty() => "no address found".to_string(),
                Family::V4 => "has no IPv4 address (-4)".to_string(),
                Family::V6 => "has no IPv6 address (-6)".to_string(),
                Family::Any => "has no address one can probe".to_string(),
            };
            return Err(TargetError::Resolve {
                name,
                origin,
                message,
            });
        }
    }
    ranges = merge(ranges);
    check_count(&ranges, max_hosts)?;

    let mut hosts = Vec::with_capacity(count(&ranges) as usize);
    for (first, last) in ranges {
        hosts.extend((first..=last).map(address));
    }
    Ok(hosts)
}

/// Where an address sorts among targets: an IPv4 address is its 32-bit value, an IPv6 one its
/// 128-bit value (never in `::/96`, see [`parse_target`]), so all IPv4 come first, as in the
/// prober's [`probe_common::host::HostKey`].
pub fn key(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address of a [`key`].
fn address(key: u128) -> IpAddr {
    match u32::try_from(key) {
        Ok(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
        Err(_) => IpAddr::V6(Ipv6Addr::from(key)),
    }
}

/// The first and last host of a network, inclusive, as [`key`]s: for IPv4 following `fping -g`
/// (without network and broadcast addresses below /31), for IPv6 without the Subnet-Router
/// anycast address below /127.
fn host_range(net: IpNet) -> (u128, u128) {
    let first = key(net.network());
    let last = key(net.broadcast());
    match net {
        IpNet::V4(v4) if v4.prefix_len() < 31 => (first + 1, last - 1),
        IpNet::V6(v6) if v6.prefix_len() < 127 => (first + 1, last),
        _ => (first, last),
    }
}

/// Sorts inclusive ranges and merges those that overlap or touch, so that they are disjoint and
/// their sizes add up to the number of distinct hosts.
fn merge(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match merged.last_mut() {
            Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
            _ => merged.push((first, last)),
        }
    }
    merged
}

/// Number of addresses in disjoint inclusive ranges (saturating: only compared to a limit).
fn count(ranges: &[(u128, u128)]) -> u64 {
    ranges
        .iter()
        .map(|(first, last)| u64::try_from(last - first).map_or(u64::MAX, |n| n.saturating_add(1)))
        .fold(0u64, u64::saturating_add)
}

fn check_count(ranges: &[(u128, u128)], max: usize) -> Result<(), TargetError> {
    let count = count(ranges);
    if count > max as u64 {
        return Err(TargetError::TooMany { count, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Instant};

    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn no_files(path: &Path) -> io::Result<&'static [u8]> {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no file {}", path.display()),
        ))
    }

    fn files(map: &[(&str, &str)]) -> impl Fn(&Path) -> io::Result<io::Cursor<Vec<u8>>> {
        let map: Vec<(&str, &[u8])> = map.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        byte_files(&map)
    }

    /// In-memory files of any bytes, opened as `@FILE`s are.
    fn byte_files(map: &[(&str, &[u8])]) -> impl Fn(&Path) -> io::Result<io::Cursor<Vec<u8>>> {
        let map: HashMap<String, Vec<u8>> = map
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
        move |path: &Path| {
            map.get(path.to_str().unwrap_or_default())
                .cloned()
                .map(io::Cursor::new)
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
    }

    /// An endless file of one byte, like `/dev/zero`: reading it whole never ends.
    struct Endless(u8);

    impl io::Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf.fill(self.0);
            Ok(buf.len())
        }
    }

    /// The error for the only `@FILE` of `open`, called `t.txt`.
    fn file_error<R: BufRead>(open: impl Fn(&Path) -> io::Result<R>) -> TargetError {
        parse_args(&args(&["@t.txt"]), open).unwrap_err()
    }

    /// A resolver that answers from a map and fails for anything else; it never touches the
    /// network.
    fn fake(
        map: &[(&str, &[IpAddr])],
    ) -> impl Fn(String) -> std::future::Ready<io::Result<Vec<IpAddr>>> {
        let map: HashMap<String, Vec<IpAddr>> = map
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
        move |name: String| {
            std::future::ready(map.get(&name).cloned().ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "Name or service not known")
            }))
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ip4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> Target {
        Target::Net(s.parse().unwrap())
    }

    fn reason(text: &str) -> String {
        parse_target(text).unwrap_err()
    }

    fn resolve_now(list: &[&str], max: usize) -> Result<Vec<IpAddr>, TargetError> {
        let parsed = parse_args(&args(list), no_files)?;
        futures::executor::block_on(resolve_with(parsed, max, fake(&[])))
    }

    #[test]
    fn targets_parse_addresses_cidrs_and_names() {
        assert_eq!(
            parse_target(" 198.18.0.5 "),
            Ok(Target::Addr(ip("198.18.0.5")))
        );
        assert_eq!(parse_target("198.18.0.0/15"), Ok(net("198.18.0.0/15")));
        assert_eq!(parse_target("0.0.0.0/0"), Ok(net("0.0.0.0/0")));
        assert_eq!(parse_target("198.18.0.5/32"), Ok(net("198.18.0.5/32")));
        assert_eq!(
            parse_target("db-1.example.com"),
            Ok(Target::Name("db-1.example.com".into()))
        );
        assert_eq!(
            parse_target("localhost"),
            Ok(Target::Name("localhost".into()))
        );
        assert_eq!(
            parse_target("example.com."),
            Ok(Target::Name("example.com.".into()))
        );
        assert_eq!(
            parse_target("3com.example"),
            Ok(Target::Name("3com.example".into()))
        );
    }

    #[test]
    fn targets_reject_cidr_with_host_bits_and_suggest_the_network() {
        assert_eq!(
            reason("198.18.0.5/15"),
            "host bits are set: did you mean 198.18.0.0/15"
        );
        assert_eq!(
            reason("10.1.2.3/24"),
            "host bits are set: did you mean 10.1.2.0/24"
        );
    }

    #[test]
    fn targets_reject_bad_prefixes_and_network_addresses() {
        for bad in [
            "198.18.0.0/33",
            "198.18.0.0/",
            "198.18.0.0/+15",
            "198.18.0.0/x",
            "1.2.3.4/-1",
        ] {
            assert_eq!(reason(bad), "invalid prefix length (0 to 32)", "{bad}");
        }
        assert!(reason("198.18.0/15").starts_with("invalid network address"));
        assert!(reason("/15").starts_with("invalid network address"));
        assert!(reason("example.com/24").starts_with("invalid network address"));
    }

    #[test]
    fn targets_parse_ipv6_addresses_and_networks_up_to_131072_addresses() {
        assert_eq!(
            parse_target("2001:db8::1"),
            Ok(Target::Addr(ip("2001:db8::1")))
        );
        assert_eq!(parse_target("fe80::1"), Ok(Target::Addr(ip("fe80::1"))));
        assert_eq!(
            parse_target("2001:db8:1::/111"),
            Ok(net("2001:db8:1::/111"))
        );
        assert_eq!(parse_target("2001:db8::5/128"), Ok(net("2001:db8::5/128")));
        // An IPv4-mapped address is the IPv4 host.
        assert_eq!(
            parse_target("::ffff:192.0.2.7"),
            Ok(Target::Addr(ip("192.0.2.7")))
        );
        assert_eq!(
            reason("2001:db8::/64"),
            "an IPv6 network of at most 131072 addresses (/111 or longer) can be swept; /64 is too large"
        );
        assert_eq!(
            reason("2001:db8::1/111"),
            "host bits are set: did you mean 2001:db8::/111"
        );
        assert_eq!(reason("2001:db8::/129"), "invalid prefix length (0 to 128)");
        for bad in ["::1", "::", "::192.0.2.1", "::/120"] {
            assert!(reason(bad).contains("is not a host address"), "{bad}");
        }
        assert!(reason("fe80::1%eth0").contains("zone index"));
        assert!(reason("198.18.0.1:80").starts_with("invalid IPv6 address"));
        assert!(reason("2001:db8::g").starts_with("invalid IPv6 address"));
    }

    #[test]
    fn targets_ipv6_networks_expand_without_the_subnet_router_anycast_address() {
        let hosts = resolve_now(&["2001:db8:1::/120"], 1000).unwrap();
        assert_eq!(hosts.len(), 255);
        assert_eq!(hosts.first(), Some(&ip("2001:db8:1::1")));
        assert_eq!(hosts.last(), Some(&ip("2001:db8:1::ff")));
        let hosts = resolve_now(&["2001:db8:1::/127"], 10).unwrap();
        assert_eq!(hosts, [ip("2001:db8:1::"), ip("2001:db8:1::1")]);
        let start = Instant::now();
        let hosts = resolve_now(&["2001:db8:1::/111"], 131_072).unwrap();
        assert_eq!(hosts.len(), 131_071);
        assert!(start.elapsed().as_millis() < 1000, "{:?}", start.elapsed());
        assert_eq!(
            resolve_now(&["2001:db8:1::/111", "198.18.0.0/30"], 131_072),
            Err(TargetError::TooMany {
                count: 131_073,
                max: 131_072
            })
        );
    }

    #[test]
    fn targets_mixed_lists_sort_ipv4_first_and_count_duplicates_once() {
        let hosts = resolve_now(
            &[
                "2001:db8::2",
                "192.0.2.9",
                "2001:db8::/126",
                "::ffff:192.0.2.9",
                "192.0.2.1",
            ],
            10,
        )
        .unwrap();
        let want: Vec<IpAddr> = [
            "192.0.2.1",
            "192.0.2.9",
            "2001:db8::1",
            "2001:db8::2",
            "2001:db8::3",
        ]
        .iter()
        .map(|s| ip(s))
        .collect();
        assert_eq!(hosts, want);
    }

    #[test]
    fn targets_from_the_config_name_their_list_entry() {
        let list = args(&["198.51.100.0/28", "2001:db8::/64"]);
        let err = parse_config_list(&list, Family::Any, no_files).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("monitor[1]: \"2001:db8::/64\":"),
            "{err}"
        );
    }

    #[test]
    fn targets_one_family_refuses_the_others_addresses_and_resolves_names_within_it() {
        let only = |family, list: &[&str]| parse_args_in(&args(list), family, no_files);
        let err = only(Family::V4, &["192.0.2.1", "2001:db8::1"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "argument 2: \"2001:db8::1\": an IPv6 target, but only IPv4 was asked for (-4)"
        );
        let read = files(&[("t.txt", "2001:db8::1\n\n192.0.2.1\n")]);
        let err = parse_args_in(&args(&["@t.txt"]), Family::V6, read).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.txt:3: \"192.0.2.1\": an IPv4 target, but only IPv6 was asked for (-6)"
        );
        let answers: &[IpAddr] = &[ip("192.0.2.5"), ip("2001:db8::5")];
        for (family, want) in [
            (Family::Any, vec![ip("192.0.2.5"), ip("2001:db8::5")]),
            (Family::V4, vec![ip("192.0.2.5")]),
            (Family::V6, vec![ip("2001:db8::5")]),
        ] {
            let parsed = only(family, &["dual.example"]).unwrap();
            let hosts = futures::executor::block_on(resolve_with(
                parsed,
                10,
                fake(&[("dual.example", answers)]),
            ));
            assert_eq!(hosts, Ok(want), "{family:?}");
        }
        let parsed = only(Family::V6, &["v4only.example"]).unwrap();
        let err = futures::executor::block_on(resolve_with(
            parsed,
            10,
            fake(&[("v4only.example", &[ip("192.0.2.5")])]),
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "argument 1: \"v4only.example\": has no IPv6 address (-6)"
        );
    }

    #[test]
    fn targets_reject_empty_garbage_and_numeric_names() {
        assert_eq!(reason(""), "empty target");
        assert_eq!(reason("   "), "empty target");
        assert!(reason("a b").starts_with("contains whitespace"));
        assert!(reason("host_name").starts_with("invalid character '_'"));
        assert!(reason("h\u{e9}te").starts_with("invalid character"));
        assert!(reason("@file").starts_with("invalid character '@'"));
        // Would be read as inet_aton shorthand, octal or hex by the resolver.
        for numeric in [
            "256.1.1.1",
            "1.2.3",
            "10.1",
            "123",
            "010.0.0.1",
            "1.2.3.4.5",
            "0x0a.0.0.1",
        ] {
            assert!(
                reason(numeric).starts_with("invalid IPv4 address"),
                "{numeric}"
            );
        }
        assert!(reason("host.123").starts_with("a hostname cannot end in a numeric label"));
        assert!(reason("a..b").starts_with("empty label"));
        assert!(reason(".a").starts_with("empty label"));
        assert!(reason("-a.example").contains("hyphen"));
        assert!(reason("a-.example").contains("hyphen"));
        let label = "a".repeat(64);
        assert!(reason(&format!("{label}.example")).contains("at most 63"));
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62),
        ]
        .join(".");
        assert_eq!(long.len(), 254);
        assert!(reason(&long).contains("at most 253"));
        assert!(parse_target(&long[1..]).is_ok());
    }

    #[test]
    fn targets_are_kept_as_ranges_and_only_names_keep_their_origin() {
        let parsed =
            parse_args(&args(&["198.18.0.1", "h.example", "10.0.0.0/30"]), no_files).unwrap();
        assert_eq!(
            parsed,
            Parsed {
                ranges: vec![
                    (key(ip("198.18.0.1")), key(ip("198.18.0.1"))),
                    (key(ip("10.0.0.1")), key(ip("10.0.0.2"))),
                ],
                names: vec![("h.example".into(), "argument 2".into())],
                family: Family::Any,
            }
        );
    }

    #[test]
    fn targets_args_have_origins() {
        let parsed = parse_args(&args(&["198.18.0.1", "h.example", "10.0.0.0/30"]), no_files);
        assert_eq!(
            parsed,
            Ok(Parsed::from(vec![
                (Target::Addr(ip("198.18.0.1")), "argument 1".into()),
                (Target::Name("h.example".into()), "argument 2".into()),
                (net("10.0.0.0/30"), "argument 3".into()),
            ]))
        );
        let err =
            parse_args(&args(&["198.18.0.1", "h.example", "10.0.0.1/30"]), no_files).unwrap_err();
        assert_eq!(
            err,
            TargetError::Syntax {
                origin: "argument 3".into(),
                text: "10.0.0.1/30".into(),
                reason: "host bits are set: did you mean 10.0.0.0/30".into(),
            }
        );
        assert_eq!(
            err.to_string(),
            "argument 3: \"10.0.0.1/30\": host bits are set: did you mean 10.0.0.0/30"
        );
    }

    #[test]
    fn targets_files_skip_comments_and_blank_lines_and_count_lines() {
        let read = files(&[(
            "hosts.txt",
            "\u{feff}# watched hosts\n\n198.18.0.1   # the first\n  h.example\r\n#198.18.0.9\n\t\n10.0.0.0/31#p2p\n",
        )]);
        let parsed = parse_args(&args(&["192.0.2.1", "@hosts.txt"]), read).unwrap();
        assert_eq!(
            parsed,
            Parsed::from(vec![
                (Target::Addr(ip("192.0.2.1")), "argument 1".into()),
                (Target::Addr(ip("198.18.0.1")), "hosts.txt:3".into()),
                (Target::Name("h.example".into()), "hosts.txt:4".into()),
                (net("10.0.0.0/31"), "hosts.txt:7".into()),
            ])
        );
    }

    #[test]
    fn targets_file_errors_name_the_line() {
        let read = files(&[("hosts.txt", "198.18.0.1\n# ok\n198.18.0.0/33 # oops\n")]);
        let err = parse_args(&args(&["@hosts.txt"]), read).unwrap_err();
        assert_eq!(
            err.to_string(),
            "hosts.txt:3: \"198.18.0.0/33\": invalid prefix length (0 to 32)"
        );
        let read = files(&[("hosts.txt", "198.18.0.1 198.18.0.2\n")]);
        let err = parse_args(&args(&["@hosts.txt"]), read).unwrap_err();
        assert!(
            matches!(&err, TargetError::Syntax { origin, reason, .. }
                if origin == "hosts.txt:1" && reason.contains("one target per")),
            "{err}"
        );
    }

    #[test]
    fn targets_nested_files_are_refused() {
        let read = files(&[
            ("a.txt", "198.18.0.1\n  @b.txt  # include\n"),
            ("b.txt", "198.18.0.2\n"),
        ]);
        let err = parse_args(&args(&["@a.txt"]), read).unwrap_err();
        assert_eq!(
            err,
            TargetError::Syntax {
                origin: "a.txt:2".into(),
                text: "@b.txt".into(),
                reason: "@FILE is not allowed inside a target file".into(),
            }
        );
    }

    #[test]
    fn targets_unreadable_or_missing_files() {
        let err = parse_args(&args(&["@missing.txt"]), no_files).unwrap_err();
        assert_eq!(
            err,
            TargetError::File {
                path: "missing.txt".into(),
                message: "no file missing.txt".into(),
            }
        );
        assert_eq!(
            err.to_string(),
            "cannot read target file missing.txt: no file missing.txt"
        );
        let err = parse_args(&args(&["198.18.0.1", "@"]), no_files).unwrap_err();
        assert!(
            matches!(&err, TargetError::Syntax { origin, .. } if origin == "argument 2"),
            "{err}"
        );
        // The real reader, on a path that cannot exist.
        let err = parse_args(&args(&["@/nonexistent/xdprobe-targets.txt"]), open_file).unwrap_err();
        assert!(matches!(err, TargetError::File { .. }), "{err}");
    }

    #[test]
    fn targets_files_that_are_not_text_stop_at_the_first_bad_line() {
        // A NUL byte: a binary file, or /dev/zero.
        let err = file_error(byte_files(&[("t.txt", b"198.18.0.1\n198.18\x000.2\n")]));
        assert_eq!(
            err,
            TargetError::Line {
                origin: "t.txt:2".into(),
                reason: "contains a NUL byte (a target file is text)".into(),
            }
        );
        assert_eq!(
            err.to_string(),
            "t.txt:2: contains a NUL byte (a target file is text)"
        );
        // Not UTF-8 (Latin-1 here), with where on the line.
        let err = file_error(byte_files(&[("t.txt", b"# h\xf4tes\n198.18.0.1\n")]));
        assert_eq!(
            err.to_string(),
            "t.txt:1: not UTF-8 (invalid byte at column 4; a target file is text)"
        );
        // UTF-8 in a comment is fine; the BOM only counts at the very start.
        let read = files(&[("t.txt", "# hôtes à sonder\n198.18.0.1\n")]);
        assert!(parse_args(&args(&["@t.txt"]), read).is_ok());
        let err = file_error(files(&[("t.txt", "198.18.0.1\n\u{feff}198.18.0.2\n")]));
        assert!(
            matches!(&err, TargetError::Syntax { origin, .. } if origin == "t.txt:2"),
            "{err}"
        );
    }

    #[test]
    fn targets_files_lines_longer_than_4096_bytes_are_refused() {
        let line = |len: usize| format!("{}#{}", "198.18.0.1", "c".repeat(len - 11));
        // The longest line, with either line end, a byte-order mark or none at the end.
        for (name, text) in [
            ("\\n", format!("{}\n198.18.0.2\n", line(MAX_LINE))),
            ("\\r\\n", format!("{}\r\n198.18.0.2\r\n", line(MAX_LINE))),
            ("BOM", format!("\u{feff}{}\n198.18.0.2\n", line(MAX_LINE))),
            ("last", format!("198.18.0.2\n{}", line(MAX_LINE))),
        ] {
            let parsed = parse_args(&args(&["@t.txt"]), files(&[("t.txt", &text)]));
            assert_eq!(parsed.map(|p| p.ranges.len()), Ok(2), "{name}");
        }
        // One byte more, anywhere in the file.
        let too_long = TargetError::Line {
            origin: "t.txt:2".into(),
            reason: "line longer than 4096 bytes (a target file has one target a line)".into(),
        };
        for text in [
            format!("198.18.0.2\n{}\n198.18.0.3\n", line(MAX_LINE + 1)),
            format!("198.18.0.2\r\n{}\r\n", line(MAX_LINE + 1)),
            format!("198.18.0.2\n{}", line(MAX_LINE + 1)),
            format!("198.18.0.2\n{}", line(1 << 20)),
        ] {
            assert_eq!(file_error(files(&[("t.txt", &text)])), too_long);
        }
        assert_eq!(
            too_long.to_string(),
            "t.txt:2: line longer than 4096 bytes (a target file has one target a line)"
        );
    }

    #[test]
    fn targets_endless_files_without_line_ends_fail_at_once() {
        // What `@/dev/zero` is, and an endless file of text without a line end: each is an
        // error after one line's worth of reading, not a process that grows until it is killed.
        let start = Instant::now();
        let err = file_error(|_: &Path| Ok(io::BufReader::new(Endless(0))));
        assert_eq!(
            err.to_string(),
            "t.txt:1: contains a NUL byte (a target file is text)"
        );
        let err = file_error(|_: &Path| Ok(io::BufReader::new(Endless(b'1'))));
        assert!(
            matches!(&err, TargetError::Line { origin, reason }
            if origin == "t.txt:1" && reason.starts_with("line longer than 4096")),
            "{err}"
        );
        assert!(start.elapsed().as_millis() < 100, "{:?}", start.elapsed());
    }

    /// Endless text, one valid line after another.
    struct Lines(&'static [u8], usize);

    impl io::Read for Lines {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            for b in buf.iter_mut() {
                *b = self.0[self.1 % self.0.len()];
                self.1 += 1;
            }
            Ok(buf.len())
        }
    }

    #[test]
    fn targets_endless_streams_of_good_lines_end_with_an_error() {
        // `yes 192.0.2.1` through a FIFO: one target too many is an error naming its line.
        let err = file_error(|_: &Path| Ok(io::BufReader::new(Lines(b"192.0.2.1\n", 0))));
        let line = MAX_TARGETS + 1;
        assert_eq!(
            err.to_string(),
            format!(
                "t.txt:{line}: more than {MAX_TARGETS} targets (at most that many hosts can be \
                 watched)"
            )
        );
        // Endless comments hold no target: the line count ends them.
        let err = file_error(|_: &Path| Ok(io::BufReader::new(Lines(b"# x\n", 0))));
        let line = MAX_FILE_LINES + 1;
        assert_eq!(
            err.to_string(),
            format!("t.txt:{line}: more than {MAX_FILE_LINES} lines (is this a target file?)")
        );
    }

    /// The daemon's reader on the real thing.
    #[test]
    fn targets_dev_zero_is_refused_naming_its_first_line() {
        let err = parse_args(&args(&["198.18.0.1", "@/dev/zero"]), open_file).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/dev/zero:1: contains a NUL byte (a target file is text)"
        );
        // A directory opens, and fails when read.
        let err = parse_args(&args(&["@/"]), open_file).unwrap_err();
        assert!(
            matches!(&err, TargetError::File { path, message }
                if path == "/" && message.starts_with("line 1: ")),
            "{err}"
        );
    }

    #[test]
    fn targets_nothing_to_watch_is_empty() {
        assert_eq!(parse_args(&[], no_files), Err(TargetError::Empty));
        let read = files(&[("empty.txt", "# nothing yet\n\n")]);
        assert_eq!(
            parse_args(&args(&["@empty.txt"]), read),
            Err(TargetError::Empty)
        );
        let resolved = futures::executor::block_on(resolve_with(Vec::new(), 10, fake(&[])));
        assert_eq!(resolved, Err(TargetError::Empty));
    }

    #[test]
    fn targets_cidrs_exclude_network_and_broadcast_below_31() {
        assert_eq!(resolve_now(&["10.0.0.0/32"], 10), Ok(vec![ip("10.0.0.0")]));
        assert_eq!(
            resolve_now(&["10.0.0.0/31"], 10),
            Ok(vec![ip("10.0.0.0"), ip("10.0.0.1")])
        );
        assert_eq!(
            resolve_now(&["10.0.0.0/30"], 10),
            Ok(vec![ip("10.0.0.1"), ip("10.0.0.2")])
        );
        let hosts = resolve_now(&["10.0.0.0/24"], 1000).unwrap();
        assert_eq!(hosts.len(), 254);
        assert_eq!(hosts.first(), Some(&ip("10.0.0.1")));
        assert_eq!(hosts.last(), Some(&ip("10.0.0.254")));
        // Listed on its own, a network or broadcast address is kept.
        let hosts = resolve_now(&["10.0.0.0/30", "10.0.0.3"], 10).unwrap();
        assert_eq!(hosts, vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")]);
        // The ends of the address space do not overflow.
        assert_eq!(
            resolve_now(&["255.255.255.254/31", "0.0.0.0/31"], 10),
            Ok(vec![
                ip("0.0.0.0"),
                ip("0.0.0.1"),
                ip("255.255.255.254"),
                ip("255.255.255.255")
            ])
        );
    }

    #[test]
    fn targets_are_sorted_and_deduplicated() {
        let hosts = resolve_now(
            &[
                "10.0.0.9",
                "10.0.0.0/29",
                "10.0.0.3",
                "9.9.9.9",
                "10.0.0.4/30",
                "10.0.0.9",
            ],
            100,
        )
        .unwrap();
        let want: Vec<IpAddr> = [
            "9.9.9.9", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6",
            "10.0.0.9",
        ]
        .iter()
        .map(|s| ip(s))
        .collect();
        assert_eq!(hosts, want);
    }

    #[test]
    fn targets_too_many_fails_before_expanding() {
        // A /0 would be 4 billion addresses (16 GiB): this only passes quickly and without
        // running out of memory because the count comes from the ranges.
        let start = Instant::now();
        assert_eq!(
            resolve_now(&["0.0.0.0/0"], 131_072),
            Err(TargetError::TooMany {
                count: (1u64 << 32) - 2,
                max: 131_072
            })
        );
        assert_eq!(
            resolve_now(&["10.0.0.0/8", "10.0.0.0/8"], 131_072),
            Err(TargetError::TooMany {
                count: (1 << 24) - 2,
                max: 131_072
            })
        );
        assert!(start.elapsed().as_millis() < 100, "{:?}", start.elapsed());
        // Overlaps count once: the limit is on distinct hosts.
        assert_eq!(
            resolve_now(&["10.0.0.0/30", "10.0.0.1", "10.0.0.2"], 2).map(|h| h.len()),
            Ok(2)
        );
        assert_eq!(
            resolve_now(&["10.0.0.0/30", "10.0.0.3"], 2),
            Err(TargetError::TooMany { count: 3, max: 2 })
        );
        assert_eq!(
            TargetError::TooMany { count: 3, max: 2 }.to_string(),
            "too many hosts: 3 (at most 2)"
        );
    }

    #[test]
    fn targets_too_many_is_checked_before_any_lookup() {
        let parsed = parse_args(&args(&["h.example", "10.0.0.0/8"]), no_files).unwrap();
        let looked_up = std::cell::Cell::new(0);
        let lookup = |_name: String| {
            looked_up.set(looked_up.get() + 1);
            std::future::ready(Ok(vec![ip("192.0.2.1")]))
        };
        let err = futures::executor::block_on(resolve_with(parsed, 1000, lookup)).unwrap_err();
        assert!(matches!(err, TargetError::TooMany { .. }), "{err}");
        assert_eq!(looked_up.get(), 0);
        // Names count too, once resolved.
        let parsed = parse_args(&args(&["h.example", "10.0.0.0/30"]), no_files).unwrap();
        let lookup = fake(&[("h.example", &[ip("192.0.2.1"), ip("192.0.2.2")])]);
        assert_eq!(
            futures::executor::block_on(resolve_with(parsed, 3, lookup)),
            Err(TargetError::TooMany { count: 4, max: 3 })
        );
    }

    #[test]
    fn targets_a_slash_15_loads_fast() {
        // 131,072 addresses minus network and broadcast; measured in whatever profile the tests
        // are built with, so a debug build guards against slow expansion too.
        let start = Instant::now();
        let hosts = resolve_now(&["198.18.0.0/15"], 131_072).unwrap();
        let elapsed = start.elapsed();
        assert_eq!(hosts.len(), 131_070);
        assert_eq!(hosts.first(), Some(&ip("198.18.0.1")));
        assert_eq!(hosts.last(), Some(&ip("198.19.255.254")));
        assert!(hosts.windows(2).all(|w| w[0] < w[1]));
        assert!(elapsed.as_millis() < 1000, "took {elapsed:?}");
    }

    #[test]
    fn targets_a_file_of_131072_addresses_loads_fast() {
        let mut contents = String::from("# every address of 198.18.0.0/15, backwards\n");
        for n in (u32::from(ip4("198.18.0.0"))..=u32::from(ip4("198.19.255.255"))).rev() {
            contents.push_str(&format!("{}\n", Ipv4Addr::from(n)));
        }
        let read = files(&[("big.txt", &contents)]);
        let start = Instant::now();
        let parsed = parse_args(&args(&["@big.txt"]), read).unwrap();
        // Kept compact: one range a line, no string per line.
        assert_eq!(parsed.ranges.len(), 131_072);
        assert!(parsed.names.is_empty());
        assert_eq!(
            parsed.ranges.last(),
            Some(&(key(ip("198.18.0.0")), key(ip("198.18.0.0"))))
        );
        let hosts = futures::executor::block_on(resolve_with(parsed, 131_072, fake(&[]))).unwrap();
        let elapsed = start.elapsed();
        assert_eq!(hosts.len(), 131_072);
        assert_eq!(hosts.first(), Some(&ip("198.18.0.0")));
        assert!(elapsed.as_millis() < 1000, "took {elapsed:?}");
    }

    #[test]
    fn targets_names_resolve_to_all_their_addresses() {
        let parsed = parse_args(
            &args(&["db.example", "localhost", "DB.example", "10.0.0.5"]),
            no_files,
        )
        .unwrap();
        let lookup = fake(&[
            (
                "db.example",
                &[
                    IpAddr::V6("2001:db8::5".parse().unwrap()),
                    ip("10.0.0.5"),
                    ip("10.0.0.6"),
                ],
            ),
            (
                "localhost",
                &[
                    ip("127.0.0.1"),
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                    ip("127.0.0.1"),
                ],
            ),
        ]);
        let hosts = futures::executor::block_on(resolve_with(parsed, 10, lookup)).unwrap();
        // IPv4 first; loopback ::1 is no host of a link (::/96).
        assert_eq!(
            hosts,
            vec![
                ip("10.0.0.5"),
                ip("10.0.0.6"),
                ip("127.0.0.1"),
                ip("2001:db8::5")
            ]
        );
    }

    #[test]
    fn targets_unresolvable_names_name_their_origin() {
        let read = files(&[("hosts.txt", "10.0.0.1\nnowhere.invalid\n")]);
        let parsed = parse_args(&args(&["localhost", "@hosts.txt"]), read).unwrap();
        let lookup = fake(&[("localhost", &[IpAddr::V4(Ipv4Addr::LOCALHOST)])]);
        let err = futures::executor::block_on(resolve_with(parsed, 10, lookup)).unwrap_err();
        assert_eq!(
            err,
            TargetError::Resolve {
                name: "nowhere.invalid".into(),
                origin: "hosts.txt:2".into(),
                message: "cannot resolve: Name or service not known".into(),
            }
        );
        assert_eq!(
            err.to_string(),
            "hosts.txt:2: \"nowhere.invalid\": cannot resolve: Name or service not known"
        );

        let parsed = parse_args(&args(&["loopback6.example"]), no_files).unwrap();
        let lookup = fake(&[("loopback6.example", &[IpAddr::V6(Ipv6Addr::LOCALHOST)])]);
        let err = futures::executor::block_on(resolve_with(parsed, 10, lookup)).unwrap_err();
        assert!(
            matches!(&err, TargetError::Resolve { origin, message, .. }
                if origin == "argument 1" && message.contains("no address one can probe")),
            "{err}"
        );

        let parsed = parse_args(&args(&["empty.example"]), no_files).unwrap();
        let lookup = fake(&[("empty.example", &[])]);
        let err = futures::executor::block_on(resolve_with(parsed, 10, lookup)).unwrap_err();
        assert!(
            matches!(&err, TargetError::Resolve { message, .. } if message == "no address found"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn targets_system_resolver_path_without_names() {
        // Only addresses and networks: the system resolver is never asked, so no DNS traffic.
        let parsed =
            parse_args(&args(&["10.0.0.0/30", "10.0.0.1", "192.0.2.7"]), no_files).unwrap();
        assert_eq!(
            resolve(parsed, 10).await,
            Ok(vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("192.0.2.7")])
        );
    }
}
