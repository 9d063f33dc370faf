//! A DNS pool's config (`[[dns]]`): the server, zone and record name, the TSIG key (its secret
//! read from a file), the members and the policies, checked field by field.

use std::{
    collections::BTreeSet,
    fmt, fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use data_encoding::BASE64;
use hickory_proto::rr::{rdata::tsig::TsigAlgorithm, Name};
use serde::Deserialize;

use crate::config::family::is_unicast_host;

pub const DEFAULT_TTL: u32 = 60;
pub const DEFAULT_TSIG_ALGORITHM: &str = "hmac-sha256";
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(30);
const MIN_RESYNC: Duration = Duration::from_millis(100);
/// RFC 2181 section 8: TTLs are 31-bit.
const MAX_TTL: u32 = 0x7fff_ffff;
/// One pool as it comes from the TOML config file (`[[dns]]` table).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsFileConfig {
    /// The primary server for the zone: `IP:PORT` (a bare IP means port 53). An address, not a
    /// name: the daemon does not depend on DNS to find its DNS server.
    pub server: String,
    /// The zone to update, e.g. `example.com`.
    pub zone: String,
    /// The record name: `@` for the zone apex, a name ending in `.` or in the zone taken as
    /// written, anything else relative to the zone (`www` is `www.<zone>`).
    pub name: String,
    /// TTL of the records we add, seconds (default 60). An RRset has a single TTL: BIND sets
    /// the whole set's TTL to that of the last record added, records of others included.
    pub ttl: Option<u32>,
    /// The TSIG key's name, as in the server's `key "NAME" { ... }`.
    pub tsig_name: String,
    /// `hmac-sha256` (default), `hmac-sha384` or `hmac-sha512`.
    pub tsig_algorithm: Option<String>,
    /// A file holding the key's base64 secret (what BIND's `secret "..."` holds), or a whole
    /// BIND `key` clause as written by `tsig-keygen`.
    pub tsig_secret_file: PathBuf,
    /// The addresses published under `name` while UP; xdprobe probes them like any host.
    pub members: Vec<IpAddr>,
    /// When no member is UP: `keep_all` (default) publishes them all, `empty` none.
    pub when_all_down: Option<AllDown>,
    /// How often the live record set is read back and drift corrected (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub resync: Option<Duration>,
}

/// What to publish when every member is DOWN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllDown {
    /// Keep (or restore) every member's record: clients keep trying rather than failing.
    KeepAll,
    /// Remove every member's record.
    Empty,
}

impl fmt::Display for AllDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AllDown::KeepAll => "keep_all",
            AllDown::Empty => "empty",
        })
    }
}

/// A TSIG key. `Debug` does not show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Tsig {
    pub name: Name,
    pub algorithm: TsigAlgorithm,
    pub secret: Vec<u8>,
}

impl fmt::Debug for Tsig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tsig")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .finish()
    }
}

/// A validated pool, secret loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub server: SocketAddr,
    /// Fully qualified.
    pub zone: Name,
    /// The record name, fully qualified, with its trailing dot (`www.example.com.`).
    pub name: String,
    pub ttl: u32,
    pub tsig: Tsig,
    /// In config order, no duplicates, at least one.
    pub members: Vec<IpAddr>,
    pub when_all_down: AllDown,
    pub resync: Duration,
}

impl PoolConfig {
    /// Validates pool `index` (0-based, its position among the `[[dns]]` tables) and reads its
    /// TSIG secret. Errors are `(field, reason)`, the field named as in the config file, e.g.
    /// `dns[1].tsig_secret_file`.
    pub fn resolve(index: usize, file: DnsFileConfig) -> Result<PoolConfig, (String, String)> {
        let field = |key: &str| format!("dns[{index}].{key}");
        let server = parse_server(&file.server).map_err(|r| (field("server"), r))?;
        let zone = parse_name(&file.zone).map_err(|r| (field("zone"), r))?;
        let name = record_name(&zone, &file.name).map_err(|r| (field("name"), r))?;
        let ttl = file.ttl.unwrap_or(DEFAULT_TTL);
        if ttl > MAX_TTL {
            return Err((field("ttl"), format!("{ttl} is more than {MAX_TTL}")));
        }
        let tsig_name = parse_name(&file.tsig_name).map_err(|r| (field("tsig_name"), r))?;
        let algorithm = parse_algorithm(
            file.tsig_algorithm
                .as_deref()
                .unwrap_or(DEFAULT_TSIG_ALGORITHM),
        )
        .map_err(|r| (field("tsig_algorithm"), r))?;
        let secret =
            read_secret(&file.tsig_secret_file).map_err(|r| (field("tsig_secret_file"), r))?;
        check_members(&file.members).map_err(|r| (field("members"), r))?;
        let resync = file.resync.unwrap_or(DEFAULT_RESYNC);
        if resync < MIN_RESYNC {
            return Err((
                field("resync"),
                format!(
                    "{} is too short: at least {}",
                    humantime::format_duration(resync),
                    humantime::format_duration(MIN_RESYNC)
                ),
            ));
        }
        Ok(PoolConfig {
            server,
            zone,
            name: name.to_string(),
            ttl,
            tsig: Tsig {
                name: tsig_name,
                algorithm,
                secret,
            },
            members: file.members,
            when_all_down: file.when_all_down.unwrap_or(AllDown::KeepAll),
            resync,
        })
    }
}

fn parse_server(text: &str) -> Result<SocketAddr, String> {
    let addr = match (text.parse::<SocketAddr>(), text.parse::<IpAddr>()) {
        (Ok(addr), _) => addr,
        (_, Ok(ip)) => SocketAddr::new(ip, 53),
        _ => {
            return Err(format!(
                "`{text}` is not IP:PORT (e.g. 192.0.2.53:53; give an address, not a name)"
            ))
        }
    };
    if addr.port() == 0 {
        return Err(format!("`{text}`: port 0"));
    }
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(format!("`{text}` is not a server's address"));
    }
    Ok(addr)
}

/// A fully qualified DNS name, from text with or without the trailing dot.
fn parse_name(text: &str) -> Result<Name, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty".to_string());
    }
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if let Some(bad) = text.chars().find(|&c| !valid(c)) {
        return Err(format!("`{text}`: `{bad}` is not allowed in a DNS name"));
    }
    let mut name = Name::from_ascii(text).map_err(|e| format!("`{text}`: {e}"))?;
    name.set_fqdn(true);
    Ok(name)
}

/// The record's FQDN: `@` is the apex; a name ending in `.` or in the zone is taken as written;
/// anything else is relative to the zone. It must be in the zone.
fn record_name(zone: &Name, text: &str) -> Result<Name, String> {
    let text = text.trim();
    if text == "@" {
        return Ok(zone.clone());
    }
    let written = parse_name(text)?;
    let name = if text.ends_with('.') || zone.zone_of(&written) {
        written
    } else {
        let mut relative = written;
        relative.set_fqdn(false);
        relative
            .append_domain(zone)
            .map_err(|e| format!("`{text}` in zone {zone}: {e}"))?
    };
    if !zone.zone_of(&name) {
        return Err(format!("{name} is not inside zone {zone}"));
    }
    Ok(name)
}

fn parse_algorithm(text: &str) -> Result<TsigAlgorithm, String> {
    let supported = "hmac-sha256, hmac-sha384 or hmac-sha512";
    let name = Name::from_ascii(text.trim().to_ascii_lowercase())
        .map_err(|_| format!("`{text}`: not an algorithm name; use {supported}"))?;
    let algorithm = TsigAlgorithm::from_name(name);
    if !algorithm.supported() {
        return Err(format!("`{text}` is not supported; use {supported}"));
    }
    Ok(algorithm)
}

fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_secret(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A base64 secret, bare or inside a BIND `key` clause (`secret "...";`).
fn parse_secret(text: &str) -> Result<Vec<u8>, String> {
    let quoted = text.find("secret").map(|at| {
        let rest = &text[at + "secret".len()..];
        let open = rest.find('"')?;
        let inner = &rest[open + 1..];
        Some(&inner[..inner.find('"')?])
    });
    let encoded = match quoted {
        None => text,
        Some(Some(inner)) => inner,
        Some(None) => return Err("`secret` is not followed by a quoted value".to_string()),
    };
    let encoded: String = encoded.chars().filter(|c| !c.is_whitespace()).collect();
    if encoded.is_empty() {
        return Err("the secret is empty".to_string());
    }
    let secret = BASE64
        .decode(encoded.as_bytes())
        .map_err(|e| format!("the secret is not valid base64 ({e})"))?;
    if secret.is_empty() {
        return Err("the secret is empty".to_string());
    }
    Ok(secret)
}

fn check_members(members: &[IpAddr]) -> Result<(), String> {
    if members.is_empty() {
        return Err("empty: a pool needs at least one address".to_string());
    }
    let mut seen = BTreeSet::new();
    for &addr in members {
        if !is_unicast_host(addr) {
            return Err(format!("{addr} is not a host address"));
        }
        if !seen.insert(addr) {
            return Err(format!("{addr} is listed twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use xdprobe_harness::TempFile;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, last))
    }

    const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0IQ==";

    fn file_config(secret: &Path) -> DnsFileConfig {
        DnsFileConfig {
            server: "192.0.2.53:5353".to_string(),
            zone: "example.test".to_string(),
            name: "www".to_string(),
            ttl: None,
            tsig_name: "xdprobe-key".to_string(),
            tsig_algorithm: None,
            tsig_secret_file: secret.to_path_buf(),
            members: vec![ip(1), ip(2)],
            when_all_down: None,
            resync: None,
        }
    }

    fn field_of(index: usize, file: DnsFileConfig) -> String {
        match PoolConfig::resolve(index, file) {
            Ok(config) => panic!("accepted: {config:?}"),
            Err((field, reason)) => {
                assert!(!reason.is_empty());
                field
            }
        }
    }

    #[test]
    fn resolve_fills_defaults() {
        let secret = TempFile::new(&format!("{SECRET}\n"));
        let config = PoolConfig::resolve(0, file_config(&secret.0)).unwrap();
        assert_eq!(config.server, "192.0.2.53:5353".parse().unwrap());
        assert_eq!(config.zone, Name::from_ascii("example.test.").unwrap());
        assert_eq!(config.name, "www.example.test.");
        assert_eq!(config.ttl, 60);
        assert_eq!(config.tsig.name, Name::from_ascii("xdprobe-key.").unwrap());
        assert_eq!(config.tsig.algorithm, TsigAlgorithm::HmacSha256);
        assert_eq!(config.tsig.secret, b"secret-secret-secret-secret!");
        assert_eq!(config.members, vec![ip(1), ip(2)]);
        assert_eq!(config.when_all_down, AllDown::KeepAll);
        assert_eq!(config.resync, Duration::from_secs(30));
        // The secret stays out of debug output (and so out of logs).
        assert!(!format!("{config:?}").contains("c2VjcmV0"));
        assert!(!format!("{config:?}").contains("secret-secret"));
    }

    #[test]
    fn resolve_parses_a_dns_table_from_toml() {
        let secret = TempFile::new(SECRET);
        let text = format!(
            "server = \"192.0.2.53\"\nzone = \"example.test.\"\nname = \"pool.example.test.\"\n\
             ttl = 30\ntsig_name = \"k\"\ntsig_algorithm = \"HMAC-SHA512\"\n\
             tsig_secret_file = \"{}\"\nmembers = [\"198.51.100.1\"]\n\
             when_all_down = \"empty\"\nresync = \"1m 30s\"\n",
            secret.0.display()
        );
        let file: DnsFileConfig = toml::from_str(&text).unwrap();
        let config = PoolConfig::resolve(3, file).unwrap();
        assert_eq!(config.server, "192.0.2.53:53".parse().unwrap());
        assert_eq!(config.name, "pool.example.test.");
        assert_eq!(config.ttl, 30);
        assert_eq!(config.tsig.algorithm, TsigAlgorithm::HmacSha512);
        assert_eq!(config.when_all_down, AllDown::Empty);
        assert_eq!(config.resync, Duration::from_secs(90));
        let unknown = toml::from_str::<DnsFileConfig>(&format!("{text}port = 53\n"));
        assert!(unknown.unwrap_err().to_string().contains("unknown field"));
        let policy = toml::from_str::<DnsFileConfig>(&text.replace("\"empty\"", "\"keep_some\""));
        assert!(policy.is_err());
    }

    #[test]
    fn resolve_names_the_field_of_each_error() {
        let secret = TempFile::new(SECRET);
        let with = |change: &dyn Fn(&mut DnsFileConfig)| {
            let mut file = file_config(&secret.0);
            change(&mut file);
            field_of(1, file)
        };
        assert_eq!(
            with(&|f| f.server = "dns.example.test:53".into()),
            "dns[1].server"
        );
        assert_eq!(with(&|f| f.server = "192.0.2.53:0".into()), "dns[1].server");
        assert_eq!(with(&|f| f.zone = "".into()), "dns[1].zone");
        assert_eq!(with(&|f| f.zone = "exa mple.test".into()), "dns[1].zone");
        assert_eq!(with(&|f| f.name = "www.other.test.".into()), "dns[1].name");
        assert_eq!(with(&|f| f.name = "".into()), "dns[1].name");
        assert_eq!(with(&|f| f.ttl = Some(0x8000_0000)), "dns[1].ttl");
        assert_eq!(with(&|f| f.tsig_name = " ".into()), "dns[1].tsig_name");
        assert_eq!(
            with(&|f| f.tsig_algorithm = Some("hmac-md5".into())),
            "dns[1].tsig_algorithm"
        );
        assert_eq!(
            with(&|f| f.tsig_algorithm = Some("hmac-sha1".into())),
            "dns[1].tsig_algorithm"
        );
        assert_eq!(with(&|f| f.members = vec![]), "dns[1].members");
        assert_eq!(with(&|f| f.members = vec![ip(1), ip(1)]), "dns[1].members");
        assert_eq!(
            with(&|f| f.members = vec![IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)]),
            "dns[1].members"
        );
        assert_eq!(
            with(&|f| f.resync = Some(Duration::from_millis(10))),
            "dns[1].resync"
        );
    }

    #[test]
    fn resolve_reports_unreadable_and_bad_secrets() {
        let missing = std::env::temp_dir().join("xdprobe-dns-no-such-secret");
        let err = PoolConfig::resolve(0, file_config(&missing)).unwrap_err();
        assert_eq!(err.0, "dns[0].tsig_secret_file");
        assert!(err.1.contains("cannot read") && err.1.contains("xdprobe-dns-no-such-secret"));
        for (contents, says) in [
            ("not base64!", "not valid base64"),
            ("  \n", "empty"),
            ("key \"k\" { secret c2VjcmV0; };", "quoted"),
        ] {
            let file = TempFile::new(contents);
            let (field, reason) = PoolConfig::resolve(0, file_config(&file.0)).unwrap_err();
            assert_eq!(field, "dns[0].tsig_secret_file");
            assert!(reason.contains(says), "{contents:?}: {reason}");
        }
    }

    #[test]
    fn secrets_may_be_bare_or_a_bind_key_clause() {
        let clause = format!(
            "key \"xdprobe-key\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{SECRET}\";\n}};\n"
        );
        assert_eq!(
            parse_secret(&clause).unwrap(),
            b"secret-secret-secret-secret!"
        );
        assert_eq!(
            parse_secret(&format!("  {SECRET}\n")).unwrap(),
            b"secret-secret-secret-secret!"
        );
    }

    #[test]
    fn record_names_are_relative_unless_qualified() {
        let zone = parse_name("example.test").unwrap();
        let fqdn = |text: &str| record_name(&zone, text).map(|n| n.to_string());
        assert_eq!(fqdn("www").unwrap(), "www.example.test.");
        assert_eq!(fqdn("a.b").unwrap(), "a.b.example.test.");
        assert_eq!(fqdn("www.example.test").unwrap(), "www.example.test.");
        assert_eq!(fqdn("www.example.test.").unwrap(), "www.example.test.");
        assert_eq!(fqdn("@").unwrap(), "example.test.");
        assert!(fqdn("www.example.org.")
            .unwrap_err()
            .contains("not inside zone"));
        // Without the dot, a name outside the zone is relative to it.
        assert_eq!(
            fqdn("www.example.org").unwrap(),
            "www.example.org.example.test."
        );
    }
}
