//! The lab's etcd cluster checked against what the cluster tests will lean on: it forms fast,
//! survives a member crash, expires 1 s leases in 1 to 3 s, needs a majority for writes, and
//! the `etcd-client` crate (built with Debian's protoc) campaigns in it.

use super::check_installed;

#[test]
fn a_missing_program_names_the_package_and_the_way_to_install_it() {
    check_installed(&[("/bin/sh", "dash")]).expect("sh is there");
    let err = check_installed(&[("/bin/sh", "dash"), ("/nonexistent/etcd", "etcd-server")])
        .expect_err("not installed");
    assert_eq!(
        format!("{err:#}"),
        "/nonexistent/etcd not found: install Debian's etcd-server (`cargo xtask setup` does)"
    );
}

mod privileged {
    use std::time::{Duration, Instant};

    use anyhow::Context as _;

    use crate::{enter::run_async_in, require_root, EtcdCluster, Lab};

    /// A lab with a three-member cluster, and how long `start` took (namespaces included).
    fn three_members() -> (Lab, EtcdCluster, Duration) {
        require_root();
        let mut lab = Lab::new();
        let started = Instant::now();
        let etcd = EtcdCluster::start(&mut lab, 3).expect("starting the etcd cluster");
        (lab, etcd, started.elapsed())
    }

    /// Retries `put KEY VALUE` through `members`, each try waiting up to 300 ms, until it
    /// succeeds or `timeout` passes; how long it took. An election may be under way.
    fn put_within(
        etcd: &EtcdCluster,
        members: &[usize],
        key: &str,
        value: &str,
        timeout: Duration,
    ) -> Duration {
        let started = Instant::now();
        loop {
            match etcd.etcdctl_via(members, &["--command-timeout=300ms", "put", key, value]) {
                Ok(out) if out.trim() == "OK" => return started.elapsed(),
                Ok(out) => panic!("put {key} printed {out:?}"),
                Err(err) if started.elapsed() > timeout => {
                    panic!("put {key} through {members:?} failed for {timeout:?}: {err:#}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// `get KEY` through `members`, value only; serializable (`--consistency=s`) reads what
    /// that member has, without asking the leader.
    fn get(etcd: &EtcdCluster, members: &[usize], key: &str, serializable: bool) -> String {
        let consistency = if serializable { "s" } else { "l" };
        let args = [
            "get",
            key,
            "--print-value-only",
            &format!("--consistency={consistency}"),
        ];
        etcd.etcdctl_via(members, &args)
            .unwrap_or_else(|e| panic!("get {key} through {members:?}: {e:#}"))
            .trim()
            .to_string()
    }

    #[test]
    fn three_members_form_within_3s_and_survive_the_leader_crashing() {
        let (_lab, mut etcd, formed) = three_members();
        println!("etcd: 3 members healthy {formed:?} after start (namespaces included)");
        assert!(formed < Duration::from_secs(3), "formed in {formed:?}");
        assert_eq!(etcd.len(), 3);
        assert_eq!(
            etcd.endpoints(),
            [
                "http://192.0.2.51:2379",
                "http://192.0.2.52:2379",
                "http://192.0.2.53:2379"
            ]
        );
        let members = etcd.etcdctl(&["member", "list"]).expect("member list");
        assert_eq!(members.matches(", started, etcd").count(), 3, "{members}");

        let leader = etcd.leader().expect("one leader all agree on");
        let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let killed = Instant::now();
        etcd.kill(leader).expect("kill");
        put_within(&etcd, &others, "crash", "survived", Duration::from_secs(3));
        println!(
            "etcd: a write went through {:?} after the leader was killed (tries of 300 ms)",
            killed.elapsed()
        );
        // The premise: it was the leader, and it is gone, for clients too; a new one leads.
        assert!(!etcd.is_running(leader).unwrap());
        assert!(etcd
            .etcdctl_via(&[leader], &["endpoint", "health"])
            .is_err());
        let new_leader = etcd.leader_via(&others).expect("a new leader");
        assert_ne!(new_leader, leader);
        // Waiting for a dead member fails at once, with its log.
        let err = format!(
            "{:#}",
            etcd.wait_healthy(Duration::from_secs(5))
                .expect_err("a member is dead")
        );
        let name = format!("etcd{}", leader + 1);
        assert!(
            err.contains(&format!("etcd member {name} is not running"))
                && err.contains(&format!("lines of {name}'s log"))
                && err.contains("\"msg\":"),
            "{err}"
        );

        etcd.restart(leader).expect("restart");
        etcd.wait_healthy(Duration::from_secs(5))
            .expect("healthy again");
        // What it missed while dead, in its own copy.
        assert_eq!(get(&etcd, &[leader], "crash", true), "survived");
    }

    #[test]
    fn a_one_second_lease_expires_after_one_to_three_seconds() {
        let (_lab, etcd, _) = three_members();
        etcd.etcdctl(&["put", "kept", "no lease"]).expect("put");
        let granted = Instant::now();
        let lease = etcd.lease_grant(1).expect("a 1 s lease");
        etcd.etcdctl(&["put", "--lease", &lease, "leased", "v"])
            .expect("put with the lease");
        // The premise: the key is there, under that lease.
        assert_eq!(get(&etcd, &[0, 1, 2], "leased", false), "v");
        let ttl = etcd
            .etcdctl(&["lease", "timetolive", &lease])
            .expect("timetolive");
        assert!(ttl.contains("granted with TTL(1s)"), "{ttl}");

        let gone = loop {
            if get(&etcd, &[0, 1, 2], "leased", false).is_empty() {
                break granted.elapsed();
            }
            assert!(
                granted.elapsed() < Duration::from_secs(5),
                "the leased key is still there 5 s after a 1 s lease was granted"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        println!("etcd: a 1 s lease's key disappeared {gone:?} after the grant");
        assert!(
            (Duration::from_secs(1)..=Duration::from_secs(3)).contains(&gone),
            "{gone:?}"
        );
        // Only the lease's key went.
        assert_eq!(get(&etcd, &[0, 1, 2], "kept", false), "no lease");
    }

    #[test]
    fn writes_go_through_with_one_member_cut_off_and_time_out_with_two() {
        let (_lab, mut etcd, _) = three_members();
        etcd.partition(0).expect("partition 0");
        assert!(etcd.is_partitioned(0).unwrap() && !etcd.is_partitioned(1).unwrap());
        // The premise: member 0 is cut off from clients, and from its peers (asked inside its
        // namespace, where nothing is dropped, it soon has no quorum: a health check, a quorum
        // read, fails).
        assert!(etcd
            .etcdctl_via(&[0], &["--command-timeout=1s", "endpoint", "health"])
            .is_err());
        let deadline = Instant::now() + Duration::from_secs(3);
        while etcd
            .etcdctl_inside(0, &["--command-timeout=1s", "endpoint", "health"])
            .is_ok()
        {
            assert!(Instant::now() < deadline, "member 0 still has a quorum");
            std::thread::sleep(Duration::from_millis(50));
        }

        let took = put_within(&etcd, &[1, 2], "one-cut", "written", Duration::from_secs(3));
        println!("etcd: with one member cut off, a write went through in {took:?}");
        assert_eq!(get(&etcd, &[1, 2], "one-cut", false), "written");

        etcd.partition(1).expect("partition 1");
        // The premise: member 2 runs and answers (status is local, no quorum needed).
        assert!(etcd.is_running(2).unwrap());
        etcd.etcdctl_via(&[2], &["endpoint", "status"])
            .expect("member 2 answers");
        let started = Instant::now();
        let refused = etcd.etcdctl_via(&[2], &["--command-timeout=2s", "put", "two-cut", "x"]);
        let waited = started.elapsed();
        let err = format!("{:#}", refused.expect_err("a write without a majority"));
        // The client's own deadline, or etcd's: either way a timeout, not a refusal.
        assert!(
            err.contains("Error: context deadline exceeded")
                || err.contains("Error: etcdserver: request timed out"),
            "{err}"
        );
        println!("etcd: with two members cut off, a write timed out after {waited:?}");

        etcd.heal(0).expect("heal 0");
        etcd.heal(1).expect("heal 1");
        etcd.wait_healthy(Duration::from_secs(5))
            .expect("healthy once healed");
        put_within(&etcd, &[0, 1, 2], "healed", "yes", Duration::from_secs(3));
        assert_eq!(get(&etcd, &[0], "healed", true), "yes");
        // Whether `two-cut` is there now is not defined: a write that timed out may still
        // commit once the majority is back (it did here, now and then).
    }

    /// The crate the cluster mode will use, built here with Debian's protoc: a campaign bound
    /// to a 1 s lease wins, the election names our value, and revoking the lease ends it.
    #[test]
    fn etcd_client_campaigns_on_a_lease_and_revoking_it_ends_the_leadership() {
        use etcd_client::Client;

        const ELECTION: &str = "/xdprobe-lab/election";
        let (_lab, etcd, _) = three_members();
        let endpoints = etcd.endpoints();
        let result: anyhow::Result<()> = run_async_in(etcd.client_ns(), || async move {
            let mut client = Client::connect(&endpoints, None)
                .await
                .context("connecting")?;
            let granted = client.lease_grant(1, None).await.context("lease_grant")?;
            anyhow::ensure!(granted.ttl() == 1, "TTL {}", granted.ttl());
            let lease = granted.id();
            let campaign = tokio::time::timeout(
                Duration::from_secs(1),
                client.campaign(ELECTION, "node-a", lease),
            )
            .await
            .context("campaign timed out")?
            .context("campaign")?;
            let key = campaign.leader().context("no leader key")?;
            anyhow::ensure!(key.lease() == lease, "leader key on lease {}", key.lease());

            let leader = client.leader(ELECTION).await.context("leader")?;
            let kv = leader.kv().context("no leader")?;
            anyhow::ensure!(kv.value() == b"node-a", "leader is {:?}", kv.value_str());
            anyhow::ensure!(kv.lease() == lease);

            // Succeeds only while the lease lives: the leadership ends by this revoke, not
            // by expiry.
            client.lease_revoke(lease).await.context("lease_revoke")?;
            match client.leader(ELECTION).await {
                Err(err) => anyhow::ensure!(err.to_string().contains("no leader"), "{err}"),
                Ok(resp) => anyhow::bail!("still a leader after the revoke: {:?}", resp.kv()),
            }
            Ok(())
        });
        result.expect("the election through etcd-client");
    }
}
