//! The `[cluster]` table: the etcd cluster xdprobe nodes agree through, this node's name, the
//! lease that proves it alive, how many verdicts move a VIP, and the TLS files. Pure but for
//! reading the TLS files, so that a missing one is a config error and not a runtime surprise.

use std::{fs, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::config::error::SettingsError;

pub const DEFAULT_PREFIX: &str = "/xdprobe/";
/// etcd leases are whole seconds. A holder trusts its lease for half of it after a renewal,
/// so 8 s rides out an etcd leader election at etcd's default timing (a 1 s election timeout,
/// randomised up to 2 s; renewals stalled up to 2.7 s here) without dropping the VIP; a dead
/// holder is then replaced in about 6 s (see the README's cluster section).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(8);
const MAX_LEASE_TTL: Duration = Duration::from_secs(3600);
const MAX_NODE_LEN: usize = 64;
const MAX_REPLICAS: u32 = 2;

/// `[cluster]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// The etcd members' client URLs: `http://192.0.2.51:2379`.
    pub etcd: Option<Vec<String>>,
    /// This node's name, unique in the cluster (default: the host name).
    pub node: Option<String>,
    /// Where xdprobe's keys live in etcd (default `/xdprobe/`).
    pub prefix: Option<String>,
    /// The lease every key of this node is bound to, whole seconds.
    #[serde(default, with = "humantime_serde")]
    pub lease_ttl: Option<Duration>,
    /// How many nodes must say DOWN before a VIP moves: `"majority"` of the live nodes
    /// (default) or a number.
    pub quorum: Option<QuorumFile>,
    /// What the holder does when it can no longer renew its lease: `release` the VIP (default)
    /// or `keep` it.
    pub on_quorum_loss: Option<OnQuorumLoss>,
    /// From how many nodes each monitored target is probed: 1 (default) or 2.
    pub replicas: Option<u32>,
    /// TLS to etcd: the CA that signed the members' certificates, and our client certificate
    /// and key (both or neither).
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// `quorum` as written: a word or a number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum QuorumFile {
    Word(String),
    Count(i64),
}

/// How many DOWN verdicts move a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quorum {
    /// More than half of the live nodes.
    Majority,
    /// At least this many nodes, however many are alive: with fewer alive, no VIP moves.
    Count(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnQuorumLoss {
    /// Remove the VIP before the lease can expire: never two holders, but the VIP goes dark
    /// while etcd has no majority.
    #[default]
    Release,
    /// Keep holding it: the VIP stays up, but a node on the other side of a partition may
    /// take it too (the wire guard then makes one of them yield).
    Keep,
}

/// TLS to etcd, the files read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    /// The CA certificate(s), PEM.
    pub ca: Vec<u8>,
    /// Client certificate and key, PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// `[cluster]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub etcd: Vec<String>,
    pub node: String,
    /// Starts and ends with `/`.
    pub prefix: String,
    pub lease_ttl: Duration,
    pub quorum: Quorum,
    pub on_quorum_loss: OnQuorumLoss,
    pub replicas: u32,
    pub tls: Option<ClusterTls>,
}

/// This machine's name (the default `node`), or `None` if it has none.
pub fn host_name() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
}

impl Quorum {
    /// DOWN verdicts needed among `live` nodes (at least one).
    pub fn needed(self, live: usize) -> usize {
        let needed = match self {
            Quorum::Majority => live / 2 + 1,
            Quorum::Count(n) => n as usize,
        };
        needed.max(1)
    }
}

impl ClusterSettings {
    /// Checks `file`; `host` is this machine's name, the default `node`.
    pub fn resolve(file: &ClusterFile, host: &str) -> Result<Self, SettingsError> {
        let etcd = resolve_endpoints(file.etcd.as_deref())?;
        let node = file.node.clone().unwrap_or_else(|| host.to_string());
        check_node(&node)?;
        let prefix = file.prefix.clone().unwrap_or_else(|| DEFAULT_PREFIX.into());
        if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.len() < 2 {
            return Err(SettingsError::invalid(
                "cluster.prefix",
                format!("{prefix:?} must start and end with '/' (e.g. \"/xdprobe/\")"),
            ));
        }
        let lease_ttl = resolve_lease_ttl(file.lease_ttl)?;
        let quorum = resolve_quorum(file.quorum.as_ref())?;
        let replicas = file.replicas.unwrap_or(1);
        if !(1..=MAX_REPLICAS).contains(&replicas) {
            return Err(SettingsError::invalid(
                "cluster.replicas",
                format!("{replicas}: each target is probed from 1 or 2 nodes"),
            ));
        }
        let tls = resolve_tls(file, &etcd)?;
        Ok(Self {
            etcd,
            node,
            prefix,
            lease_ttl,
            quorum,
            on_quorum_loss: file.on_quorum_loss.unwrap_or_default(),
            replicas,
            tls,
        })
    }
}

fn resolve_endpoints(etcd: Option<&[String]>) -> Result<Vec<String>, SettingsError> {
    let etcd = etcd.unwrap_or_default();
    if etcd.is_empty() {
        return Err(SettingsError::invalid(
            "cluster.etcd",
            "give the etcd members' client URLs, e.g. [\"http://192.0.2.51:2379\"]",
        ));
    }
    for url in etcd {
        check_endpoint(url).map_err(|reason| SettingsError::invalid("cluster.etcd", reason))?;
    }
    let schemes: Vec<bool> = etcd.iter().map(|u| u.starts_with("https://")).collect();
    if schemes.iter().any(|s| *s != schemes[0]) {
        return Err(SettingsError::invalid(
            "cluster.etcd",
            "mixes http:// and https:// members",
        ));
    }
    Ok(etcd.to_vec())
}

/// `http://HOST:PORT` or `https://HOST:PORT`, nothing after the port.
fn check_endpoint(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} is not http://HOST:PORT or https://HOST:PORT"))?;
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (host, port) = v6
                .split_once("]:")
                .ok_or_else(|| format!("{url:?}: an IPv6 member is [ADDR]:PORT"))?;
            host.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("{url:?}: {host:?} is not an IPv6 address"))?;
            (host, port)
        }
        None => rest
            .rsplit_once(':')
            .ok_or_else(|| format!("{url:?} has no port (etcd's is usually 2379)"))?,
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return Err(format!("{url:?}: bad host {host:?}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{url:?}: bad port {port:?}")),
    }
}

/// A node name goes into etcd keys: letters, digits, `.`, `-`, `_`.
fn check_node(node: &str) -> Result<(), SettingsError> {
    let ok = !node.is_empty()
        && node.len() <= MAX_NODE_LEN
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        return Ok(());
    }
    Err(SettingsError::invalid(
        "cluster.node",
        format!("{node:?}: 1 to {MAX_NODE_LEN} letters, digits, '.', '-' or '_'"),
    ))
}

fn resolve_lease_ttl(ttl: Option<Duration>) -> Result<Duration, SettingsError> {
    let ttl = ttl.unwrap_or(DEFAULT_LEASE_TTL);
    if ttl.subsec_nanos() != 0 || ttl.is_zero() || ttl > MAX_LEASE_TTL {
        return Err(SettingsError::invalid(
            "cluster.lease_ttl",
            format!(
                "{}: etcd leases are whole seconds, 1s to 1h",
                humantime::format_duration(ttl)
            ),
        ));
    }
    Ok(ttl)
}

fn resolve_quorum(quorum: Option<&QuorumFile>) -> Result<Quorum, SettingsError> {
    match quorum {
        None => Ok(Quorum::Majority),
        Some(QuorumFile::Word(w)) if w == "majority" => Ok(Quorum::Majority),
        Some(QuorumFile::Count(n)) if (1..=1000).contains(n) => Ok(Quorum::Count(*n as u32)),
        Some(other) => Err(SettingsError::invalid(
            "cluster.quorum",
            format!(
                "{}: \"majority\" or a number of nodes (1 to 1000)",
                match other {
                    QuorumFile::Word(w) => format!("{w:?}"),
                    QuorumFile::Count(n) => n.to_string(),
                }
            ),
        )),
    }
}

fn resolve_tls(file: &ClusterFile, etcd: &[String]) -> Result<Option<ClusterTls>, SettingsError> {
    let https = etcd.iter().all(|u| u.starts_with("https://"));
    let wanted = file.ca.is_some() || file.cert.is_some() || file.key.is_some();
    if !wanted && !https {
        return Ok(None);
    }
    if https && file.ca.is_none() {
        return Err(SettingsError::invalid(
            "cluster.ca",
            "https:// members need `ca`, the certificate authority that signed theirs",
        ));
    }
    if !https {
        return Err(SettingsError::invalid(
            "cluster.ca",
            "TLS files are given but the etcd members are http://",
        ));
    }
    let read = |field: &'static str, path: &PathBuf| {
        fs::read(path).map_err(|e| {
            SettingsError::invalid(field, format!("cannot read {}: {e}", path.display()))
        })
    };
    let ca = match &file.ca {
        Some(p) => read("cluster.ca", p)?,
        None => Vec::new(),
    };
    let identity = match (&file.cert, &file.key) {
        (Some(cert), Some(key)) => Some((read("cluster.cert", cert)?, read("cluster.key", key)?)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(SettingsError::invalid(
                "cluster.cert",
                "a client certificate needs its `key`",
            ))
        }
        (None, Some(_)) => {
            return Err(SettingsError::invalid(
                "cluster.key",
                "a client key needs its `cert`",
            ))
        }
    };
    Ok(Some(ClusterTls { ca, identity }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> ClusterFile {
        toml::from_str(text).unwrap()
    }

    fn resolve(text: &str) -> Result<ClusterSettings, SettingsError> {
        ClusterSettings::resolve(&file(text), "box-1")
    }

    fn field(e: SettingsError) -> String {
        match e {
            SettingsError::Invalid { field, .. } | SettingsError::Missing { field } => {
                field.into_owned()
            }
            SettingsError::File { .. } => "file".into(),
        }
    }

    #[test]
    fn defaults_fill_what_is_not_given() {
        let c = resolve("etcd = [\"http://192.0.2.51:2379\"]").unwrap();
        assert_eq!(c.node, "box-1");
        assert_eq!(c.prefix, "/xdprobe/");
        assert_eq!(c.lease_ttl, DEFAULT_LEASE_TTL);
        assert_eq!(c.quorum, Quorum::Majority);
        assert_eq!(c.on_quorum_loss, OnQuorumLoss::Release);
        assert_eq!(c.replicas, 1);
        assert_eq!(c.tls, None);
    }

    #[test]
    fn every_field_is_taken_as_written() {
        let c = resolve(
            "etcd = [\"http://192.0.2.51:2379\", \"http://[2001:db8::5]:2379\"]\nnode = \"n2\"\n\
             prefix = \"/lab/\"\nlease_ttl = \"1s\"\nquorum = 2\non_quorum_loss = \"keep\"\n\
             replicas = 2\n",
        )
        .unwrap();
        assert_eq!(c.etcd.len(), 2);
        assert_eq!(
            (c.node.as_str(), c.prefix.as_str()),
            ("n2", "/lab/"),
            "{c:?}"
        );
        assert_eq!(c.lease_ttl, Duration::from_secs(1));
        assert_eq!(c.quorum, Quorum::Count(2));
        assert_eq!(c.on_quorum_loss, OnQuorumLoss::Keep);
        assert_eq!(c.replicas, 2);
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            ("etcd = []", "cluster.etcd"),
            ("node = \"a\"", "cluster.etcd"),
            ("etcd = [\"192.0.2.51:2379\"]", "cluster.etcd"),
            ("etcd = [\"http://192.0.2.51\"]", "cluster.etcd"),
            ("etcd = [\"http://192.0.2.51:0\"]", "cluster.etcd"),
            ("etcd = [\"http://192.0.2.51:2379/v3\"]", "cluster.etcd"),
            (
                "etcd = [\"http://192.0.2.51:2379\", \"https://192.0.2.52:2379\"]",
                "cluster.etcd",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(field(resolve(text).unwrap_err()), want, "{text}");
        }
        let ok = "etcd = [\"http://192.0.2.51:2379\"]\n";
        let cases = [
            ("node = \"two words\"", "cluster.node"),
            ("node = \"a/b\"", "cluster.node"),
            ("node = \"\"", "cluster.node"),
            ("prefix = \"xdprobe\"", "cluster.prefix"),
            ("prefix = \"/\"", "cluster.prefix"),
            ("lease_ttl = \"1500ms\"", "cluster.lease_ttl"),
            ("lease_ttl = \"0s\"", "cluster.lease_ttl"),
            ("lease_ttl = \"2h\"", "cluster.lease_ttl"),
            ("quorum = \"most\"", "cluster.quorum"),
            ("quorum = 0", "cluster.quorum"),
            ("quorum = -1", "cluster.quorum"),
            ("replicas = 3", "cluster.replicas"),
            ("replicas = 0", "cluster.replicas"),
            ("ca = \"/nonexistent/ca.pem\"", "cluster.ca"),
        ];
        for (text, want) in cases {
            let text = format!("{ok}{text}");
            assert_eq!(field(resolve(&text).unwrap_err()), want, "{text}");
        }
    }

    #[test]
    fn tls_needs_https_and_a_certificate_with_its_key() {
        let dir = std::env::temp_dir().join(format!("xdprobe-cluster-tls-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("x.pem");
        fs::write(&pem, "PEM").unwrap();
        let https = "etcd = [\"https://192.0.2.51:2379\"]\n";
        let p = pem.display();
        let c = resolve(&format!(
            "{https}ca = \"{p}\"\ncert = \"{p}\"\nkey = \"{p}\"\n"
        ))
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.ca, b"PEM");
        assert!(tls.identity.is_some());
        let c = resolve(&format!("{https}ca = \"{p}\"\n")).unwrap();
        assert_eq!(c.tls.unwrap().identity, None, "server-side TLS only");
        let e = resolve(https).unwrap_err();
        assert_eq!(field(e), "cluster.ca", "https needs the CA");
        let e = resolve(&format!("{https}ca = \"{p}\"\ncert = \"{p}\"\n")).unwrap_err();
        assert_eq!(field(e), "cluster.cert");
        let e = resolve(&format!("{https}ca = \"{p}\"\nkey = \"{p}\"\n")).unwrap_err();
        assert_eq!(field(e), "cluster.key");
        let http = "etcd = [\"http://192.0.2.51:2379\"]\n";
        let e = resolve(&format!("{http}ca = \"{p}\"\n")).unwrap_err();
        assert_eq!(field(e), "cluster.ca");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn majority_counts_live_nodes_and_a_number_is_a_number() {
        assert_eq!(Quorum::Majority.needed(3), 2);
        assert_eq!(Quorum::Majority.needed(4), 3);
        assert_eq!(Quorum::Majority.needed(1), 1);
        assert_eq!(
            Quorum::Majority.needed(0),
            1,
            "never zero: someone must say DOWN"
        );
        assert_eq!(Quorum::Count(2).needed(5), 2);
        assert_eq!(
            Quorum::Count(3).needed(2),
            3,
            "more than are alive: nothing moves"
        );
    }
}
