//! Talking to the lab's etcd cluster with `etcdctl` from the lab's client host: any command,
//! and the few questions the tests keep asking (which member leads, a lease of their own).

use std::process::Command;

use anyhow::{bail, ensure, Context as _};
use serde_json::Value;

use super::{EtcdCluster, ETCDCTL};
use crate::cmd;

impl EtcdCluster {
    /// `ip netns exec CLIENT etcdctl --endpoints=...` for members `members`, with a 1 s dial
    /// timeout and a 3 s command timeout (later flags override them); add arguments and run.
    pub fn etcdctl_command(&self, members: &[usize]) -> anyhow::Result<Command> {
        let endpoints = members
            .iter()
            .map(|&i| self.endpoint(i))
            .collect::<anyhow::Result<Vec<_>>>()?
            .join(",");
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.client_ns, ETCDCTL])
            .arg(format!("--endpoints={endpoints}"))
            .args(["--dial-timeout=1s", "--command-timeout=3s"]);
        self.tls_args(&mut command);
        Ok(command)
    }

    /// etcdctl's TLS flags (the lab's CA and client certificate), if clients must use TLS.
    fn tls_args(&self, command: &mut Command) {
        if let Some(tls) = self.tls() {
            command
                .arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client.0)
                .arg("--key")
                .arg(&tls.client.1);
        }
    }

    /// Runs `etcdctl ARGS` against every member from the client host; its stdout, or an error
    /// with its output unless it exits 0.
    pub fn etcdctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.etcdctl_via(&all, args)
    }

    /// Runs `etcdctl ARGS` against members `members` only; like [`etcdctl`](Self::etcdctl).
    pub fn etcdctl_via(&self, members: &[usize], args: &[&str]) -> anyhow::Result<String> {
        let out = cmd::output(self.etcdctl_command(members)?.args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `etcdctl ARGS` inside member `i`'s own namespace against its own endpoint, where
    /// a [partition](Self::partition) does not reach: what the member itself says. Its stdout,
    /// or an error with its output unless it exits 0.
    pub fn etcdctl_inside(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", self.ns(i)?, ETCDCTL])
            .arg(format!("--endpoints={}", self.endpoint(i)?))
            .args(["--dial-timeout=1s", "--command-timeout=3s"]);
        self.tls_args(&mut command);
        command.args(args);
        let out = cmd::output(&mut command)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Which member leads, as members `members` see it (each must answer and all must name
    /// the same leader, one of the lab's members).
    pub fn leader_via(&self, members: &[usize]) -> anyhow::Result<usize> {
        let status = self.etcdctl_via(members, &["endpoint", "status", "-w", "json"])?;
        let leader = agreed_leader(&status)?;
        self.members
            .iter()
            .position(|m| m.id == leader)
            .with_context(|| format!("the leader {leader:x} is not a member of the lab"))
    }

    /// Which member leads, as every member sees it.
    pub fn leader(&self) -> anyhow::Result<usize> {
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.leader_via(&all)
    }

    /// Grants a lease of `ttl_secs` seconds; returns its ID in hex, as etcdctl takes it.
    pub fn lease_grant(&self, ttl_secs: u64) -> anyhow::Result<String> {
        let out = self.etcdctl(&["lease", "grant", &ttl_secs.to_string()])?;
        let (id, ttl) = granted_lease(&out)?;
        ensure!(
            ttl == ttl_secs,
            "asked for a {ttl_secs} s lease, etcd granted {ttl} s: {out}"
        );
        Ok(id)
    }
}

/// The member IDs by name in `etcdctl member list -w json`.
pub(super) fn member_ids(json: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let list: Value = serde_json::from_str(json).context("parsing etcdctl member list")?;
    let members = list["members"]
        .as_array()
        .with_context(|| format!("no members in {json}"))?;
    members
        .iter()
        .map(|m| {
            let name = m["name"]
                .as_str()
                .with_context(|| format!("no name in {m}"))?;
            let id = m["ID"].as_u64().with_context(|| format!("no ID in {m}"))?;
            Ok((name.to_string(), id))
        })
        .collect()
}

/// The leader every endpoint in `etcdctl endpoint status -w json` names; an error unless they
/// all name the same one.
fn agreed_leader(json: &str) -> anyhow::Result<u64> {
    let status: Value = serde_json::from_str(json).context("parsing etcdctl endpoint status")?;
    let endpoints = status
        .as_array()
        .with_context(|| format!("not a list: {json}"))?;
    let leaders: Vec<Option<u64>> = endpoints
        .iter()
        .map(|e| e["Status"]["leader"].as_u64().filter(|&id| id != 0))
        .collect();
    match leaders.first() {
        Some(Some(leader)) if leaders.iter().all(|l| *l == Some(*leader)) => Ok(*leader),
        _ => bail!("the members do not agree on a leader: {json}"),
    }
}

/// The ID and TTL of `lease 2e1ea22f4ded1305 granted with TTL(1s)`.
fn granted_lease(out: &str) -> anyhow::Result<(String, u64)> {
    let parsed = (|| {
        let rest = out.trim().strip_prefix("lease ")?;
        let (id, rest) = rest.split_once(" granted with TTL(")?;
        let ttl = rest.strip_suffix("s)")?.parse().ok()?;
        Some((id.to_string(), ttl))
    })();
    parsed.with_context(|| format!("etcdctl lease grant printed {out:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_etcdctl_prints() {
        assert_eq!(
            granted_lease("lease 2e1ea22f4ded1305 granted with TTL(1s)\n").unwrap(),
            ("2e1ea22f4ded1305".to_string(), 1)
        );
        assert!(granted_lease("Error: etcdserver: requested lease not found").is_err());

        let list = r#"{"header":{"cluster_id":1},"members":[
            {"ID":2112848952238597953,"name":"etcd3","peerURLs":["http://192.0.2.53:2380"]},
            {"ID":8588519947419528734,"name":"etcd1"}]}"#;
        assert_eq!(
            member_ids(list).unwrap(),
            [
                ("etcd3".to_string(), 2112848952238597953),
                ("etcd1".to_string(), 8588519947419528734)
            ]
        );

        let status = |a: u64, b: u64| {
            format!(
                r#"[{{"Endpoint":"http://192.0.2.51:2379","Status":{{"leader":{a}}}}},
                    {{"Endpoint":"http://192.0.2.52:2379","Status":{{"leader":{b}}}}}]"#
            )
        };
        assert_eq!(agreed_leader(&status(7, 7)).unwrap(), 7);
        assert!(agreed_leader(&status(7, 8)).is_err());
        assert!(agreed_leader(&status(0, 0)).is_err());
        assert!(agreed_leader("[]").is_err());
    }
}
