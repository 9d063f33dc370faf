//! Cluster mode against a real etcd: three xdprobe nodes and a three-member etcd cluster on
//! one bridge with the primary, each in its own namespace (see `xdprobe_harness::cluster`).
//! Takeover needs the elected holder and a quorum's DOWN; one node's false DOWN moves
//! nothing; a holder cut off from etcd fences before another node claims; a dead holder is
//! replaced; etcd's majority lost means no claims and, by default, a released VIP.

/// Needs root: namespaces, XDP, etcd, nftables.
mod privileged {
    use std::time::{Duration, Instant};

    use xdprobe_harness::cluster::{at_most_one_holder, ClusterLab, HoldEvent, VIP_NET};
    use xdprobe_harness::{logged_number, write_script};

    const WINDOW: Duration = Duration::from_millis(100);
    /// The single-standby bound, which the cluster keeps: 2 windows + 50 ms.
    const TAKEOVER_BOUND: Duration = Duration::from_millis(250);
    /// The labs' lease.
    const LEASE: Duration = Duration::from_secs(1);

    fn lab(nodes: usize, top: &str, cluster: &str) -> ClusterLab {
        ClusterLab::new(nodes, WINDOW, top, cluster).expect("building the cluster lab")
    }

    /// Kills the primary; returns the node that took the VIP and how long after the kill
    /// its address event came (the test's clock: the primary's last reply was before the
    /// kill, so this is at least the time since it).
    fn kill_primary_and_wait(lab: &mut ClusterLab) -> (usize, Duration) {
        lab.holders_timeline();
        let killed = Instant::now();
        lab.lab.kill("primary").expect("killing the primary");
        let deadline = killed + Duration::from_secs(5);
        loop {
            if let Some((at, holder, _)) = lab.holders_timeline().into_iter().find(|e| e.2) {
                return (holder, at - killed);
            }
            assert!(Instant::now() < deadline, "no takeover\n{}", lab.logs());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_elected_node_takes_over_on_a_quorums_down_within_two_windows_and_fifty_ms() {
        let mut lab = lab(3, "", "");
        let elected = lab.start_all().expect("three nodes up, one elected");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            lab.holders().unwrap(),
            Vec::<usize>::new(),
            "nobody holds it yet"
        );
        let (holder, took) = kill_primary_and_wait(&mut lab);
        println!("cluster takeover: VIP up on the elected node {took:?} after the primary died");
        assert_eq!(
            holder,
            elected,
            "only the elected node claims\n{}",
            lab.logs()
        );
        assert!(took <= TAKEOVER_BOUND, "took {took:?}\n{}", lab.logs());
        // Premise: the claim waited for a quorum, not only for its own DOWN: at least two
        // nodes said DOWN.
        let downs = (0..3).filter(|&i| lab.log(i).contains("host DOWN")).count();
        assert!(
            downs >= 2,
            "{downs} nodes saw the primary DOWN\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(lab.holders().unwrap(), vec![holder], "{}", lab.logs());
        let addrs = lab.lab.addrs(&lab.nodes[holder].name).unwrap();
        assert!(addrs.contains("eth0:1"), "label: {addrs}");
    }

    #[test]
    fn over_tls_with_client_certificates_the_elected_node_takes_over() {
        let mut lab = ClusterLab::with_tls(3, WINDOW, "", "").expect("building the cluster lab");
        let endpoints = lab.etcd.endpoints();
        assert!(
            endpoints.iter().all(|e| e.starts_with("https://")),
            "premise: etcd serves its clients over TLS only: {endpoints:?}"
        );
        let elected = lab
            .start_all()
            .expect("three nodes up over TLS, one elected");
        let (holder, took) = kill_primary_and_wait(&mut lab);
        println!("over TLS: VIP up on the elected node {took:?} after the primary died");
        assert_eq!(holder, elected, "{}", lab.logs());
        assert!(took <= TAKEOVER_BOUND, "took {took:?}\n{}", lab.logs());
    }

    /// Node `i` says etcd is out of reach, keeps running and trying for 2 s, and never joins.
    fn keeps_retrying(lab: &mut ClusterLab, i: usize) {
        let daemon = lab.daemon(i).unwrap();
        daemon
            .wait_for_log(
                "cluster: etcd unreachable; retrying",
                Duration::from_secs(5),
            )
            .expect("the failure is logged");
        daemon
            .watch_for(Duration::from_secs(2))
            .expect("still running, no crash");
        assert!(!daemon.log().contains("joined"), "{}", daemon.log());
    }

    #[test]
    fn over_tls_a_node_without_a_client_certificate_is_refused_and_keeps_trying() {
        let mut lab =
            ClusterLab::with_tls(1, WINDOW, "", "ca = \"{ca}\"").expect("building the cluster lab");
        lab.start(0).unwrap();
        keeps_retrying(&mut lab, 0);
    }

    #[test]
    fn one_nodes_false_down_does_not_move_the_vip() {
        let mut lab = lab(3, "", "");
        let elected = lab.start_all().expect("three nodes up, one elected");
        lab.deafen_to_primary(elected).expect("nftables");
        lab.daemon(elected)
            .unwrap()
            .wait_for_log("host DOWN", Duration::from_secs(3))
            .expect("premise: the elected node itself sees the primary DOWN");
        std::thread::sleep(10 * WINDOW);
        assert_eq!(
            lab.holders().unwrap(),
            Vec::<usize>::new(),
            "{}",
            lab.logs()
        );
        assert!(
            lab.lab.addrs("primary").unwrap().contains(VIP_NET),
            "the primary keeps its VIP"
        );
        for i in 0..3 {
            assert!(!lab.log(i).contains("took over"), "{}", lab.logs());
        }
        // And the same node, hearing again, goes back to UP: nothing else happened.
        lab.hear_primary(elected).unwrap();
        lab.daemon(elected)
            .unwrap()
            .wait_for_log("host UP", Duration::from_secs(3))
            .unwrap();
    }

    #[test]
    fn a_holder_cut_off_from_etcd_fences_before_another_node_claims() {
        let mut lab = lab(3, "on_cluster = \"{dir}/hook.sh {dir}/{node}.events\"", "");
        let hook = lab.dir().join("hook.sh");
        write_script(&hook, "#!/bin/sh\nf=$1; shift; echo \"$@\" >> \"$f\"\n");
        lab.start_all().expect("three nodes up");
        let (holder, _) = kill_primary_and_wait(&mut lab);
        std::thread::sleep(Duration::from_millis(300));
        lab.holders_timeline(); // only what follows the cut counts
        let cut = Instant::now();
        lab.cut_off_from_etcd(holder).expect("nftables");
        let successor = lab
            .wait_holder(Some(holder), Duration::from_secs(6))
            .expect("another node takes over");
        let handed = cut.elapsed();
        std::thread::sleep(Duration::from_millis(300));
        let end = Instant::now();
        let events = lab.holders_timeline();
        let fenced_at = events
            .iter()
            .find(|(_, i, holds)| *i == holder && !holds)
            .map(|(at, _, _)| *at - cut);
        let claimed_at = events
            .iter()
            .find(|(_, i, holds)| *i == successor && *holds)
            .map(|(at, _, _)| *at - cut);
        println!(
            "cut off at 0: old holder fenced at {fenced_at:?}, {} holds from {claimed_at:?} \
             (seen {handed:?})",
            lab.nodes[successor].name
        );
        // Premises: the holder did fence (logged), and the events show both changes.
        assert!(
            lab.log(holder).contains("fenced: removed the VIP"),
            "{}",
            lab.logs()
        );
        let (fenced_at, claimed_at) = (fenced_at.unwrap(), claimed_at.unwrap());
        assert!(fenced_at < LEASE, "fenced {fenced_at:?} after the cut");
        assert!(claimed_at > fenced_at, "claimed before the fence");
        let samples = at_most_one_holder(
            &events,
            3,
            Some(holder),
            cut - Duration::from_millis(5),
            end,
        )
        .unwrap_or_else(|two| panic!("{two}\n{events:?}\n{}", lab.logs()));
        assert!(samples >= 100, "{samples} samples");
        assert_eq!(lab.holders().unwrap(), vec![successor]);
        // The on_cluster hook heard it all: EVENT HOST VIP STATE WINDOW.
        let events = |i: usize| {
            let file = lab.dir().join(format!("{}.events", lab.nodes[i].name));
            std::fs::read_to_string(file).unwrap_or_default()
        };
        let (old, new) = (events(holder), events(successor));
        for event in [
            "elected 192.0.2.1 192.0.2.100/24",
            "lost_lease 192.0.2.1",
            "fenced 192.0.2.1",
        ] {
            assert!(
                old.contains(event),
                "{event} not in the old holder's hook calls:\n{old}"
            );
        }
        assert!(new.contains("elected 192.0.2.1"), "{new}");
        let third = events(3 - holder - successor);
        assert!(third.contains("handed_over 192.0.2.1"), "{third}");
        // The cut heals: the old holder learns its lease is gone, joins with a new one, and
        // claims nothing (the group has its holder).
        lab.reconnect_to_etcd(holder).expect("nftables");
        let daemon = lab.daemon(holder).unwrap();
        daemon
            .wait_for_log("our lease is gone", Duration::from_secs(5))
            .expect("the revoked lease is noticed");
        let deadline = Instant::now() + Duration::from_secs(5);
        while daemon.log().matches("cluster: joined").count() < 2 {
            assert!(
                Instant::now() < deadline,
                "never rejoined\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(lab.holders().unwrap(), vec![successor], "{}", lab.logs());
    }

    /// A holder stopped with SIGTERM: with `on_exit = "release"` it removes its VIP and
    /// revokes its lease, and the next node takes over at once; with `keep` (the default)
    /// the VIP stays on it and nobody claims beside it, and after a restart there is one
    /// holder again.
    #[test]
    fn a_holder_stopped_with_on_exit_release_hands_over_at_once() {
        let mut lab = lab(3, "on_exit = \"release\"", "");
        lab.start_all().expect("three nodes up");
        let (holder, _) = kill_primary_and_wait(&mut lab);
        std::thread::sleep(Duration::from_millis(300));
        lab.holders_timeline();
        let stopped = Instant::now();
        let daemon = lab.nodes[holder].daemon.take().unwrap();
        let (status, log) = daemon.stop().expect("stopping the holder");
        assert!(status.success(), "{log}");
        assert!(log.contains("left (lease revoked)"), "{log}");
        let next = lab
            .wait_holder(Some(holder), Duration::from_secs(5))
            .expect("the next node takes over");
        let took = stopped.elapsed();
        let events = lab.holders_timeline();
        println!(
            "holder stopped (release): {} holds {took:?} later",
            lab.nodes[next].name
        );
        at_most_one_holder(&events, 3, Some(holder), stopped, Instant::now())
            .unwrap_or_else(|two| panic!("{two}\n{events:?}"));
        assert!(took < LEASE, "took {took:?}\n{}", lab.logs());
    }

    #[test]
    fn a_holder_stopped_with_on_exit_keep_keeps_the_vip_and_nobody_claims_beside_it() {
        let mut lab = lab(3, "", "");
        lab.start_all().expect("three nodes up");
        let (holder, _) = kill_primary_and_wait(&mut lab);
        std::thread::sleep(Duration::from_millis(300));
        lab.holders_timeline();
        let daemon = lab.nodes[holder].daemon.take().unwrap();
        let (status, log) = daemon.stop().expect("stopping the holder");
        assert!(status.success(), "{log}");
        assert!(log.contains("so the lease is not revoked"), "{log}");
        // Past the lease's expiry and the next election: the next holder's conflict check
        // finds the stopped node answering for the VIP.
        std::thread::sleep(3 * LEASE);
        assert_eq!(lab.holders().unwrap(), vec![holder], "{}", lab.logs());
        let refused = (0..3)
            .filter(|&i| i != holder)
            .any(|i| lab.log(i).contains("the VIP is in use: not taken"));
        assert!(
            refused,
            "premise: another node tried and refused\n{}",
            lab.logs()
        );
        // Restarted while another node is the elected holder: one holder again, whichever.
        lab.start(holder).unwrap();
        std::thread::sleep(3 * LEASE);
        assert_eq!(lab.holders().unwrap().len(), 1, "{}", lab.logs());
    }

    /// Kills the holder's machine once it holds the VIP (the primary dead); returns how long
    /// until another node holds it, after checking that node was elected.
    fn dead_holder_handover(lab: &mut ClusterLab) -> Duration {
        lab.start_all().expect("three nodes up");
        let (holder, _) = kill_primary_and_wait(lab);
        std::thread::sleep(Duration::from_millis(300));
        let died = Instant::now();
        lab.kill_machine(holder)
            .expect("killing the holder's machine");
        let successor = lab
            .wait_holder(Some(holder), Duration::from_secs(12))
            .expect("another node takes over");
        let handover = died.elapsed();
        println!(
            "holder {} died; {} holds the VIP {handover:?} later",
            lab.nodes[holder].name, lab.nodes[successor].name
        );
        let log = lab.log(successor);
        assert!(log.contains("elected holder"), "{log}");
        // The quicker way was taken: the others revoked its lease.
        assert!(log.contains("no claim until it has surely fenced"), "{log}");
        handover
    }

    #[test]
    fn a_dead_holder_is_replaced_within_the_lease_and_two_windows() {
        let mut lab = lab(3, "", "");
        let handover = dead_holder_handover(&mut lab);
        assert!(
            handover <= LEASE + 2 * WINDOW,
            "handover took {handover:?}\n{}",
            lab.logs()
        );
    }

    /// The figure the README gives for production: etcd at its default raft timing (100 ms
    /// heartbeats, 1 s elections) and xdprobe's default lease (8 s).
    #[test]
    fn with_production_etcd_timing_and_the_default_lease_a_dead_holder_is_replaced_in_time() {
        let mut lab = ClusterLab::with_etcd_defaults(3, WINDOW, "", "lease_ttl = \"8s\"")
            .expect("building the cluster lab");
        let handover = dead_holder_handover(&mut lab);
        println!("production settings: handover {handover:?}");
        let ttl = logged_number(&lab.log(0), "cluster: joined", "ttl_s=");
        assert_eq!(ttl, Some(8), "premise: the default lease\n{}", lab.log(0));
        let lease = Duration::from_secs(8);
        assert!(
            handover <= lease + 2 * WINDOW,
            "handover took {handover:?}\n{}",
            lab.logs()
        );
    }

    /// Kills the etcd leader while a node holds the VIP, and waits 4 s; returns the holder
    /// and the address events meanwhile, after checking that a new leader was elected and
    /// that at most one node held the VIP at every moment.
    fn etcd_leader_dies_under_the_holder(lab: &mut ClusterLab) -> (usize, Vec<HoldEvent>) {
        lab.start_all().expect("three nodes up");
        let (holder, _) = kill_primary_and_wait(lab);
        std::thread::sleep(Duration::from_millis(300));
        lab.holders_timeline();
        let leader = lab.etcd.leader().expect("the etcd leader");
        let killed = Instant::now();
        lab.etcd.kill(leader).unwrap();
        std::thread::sleep(Duration::from_secs(4));
        let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let new_leader = lab.etcd.leader_via(&others).expect("a new etcd leader");
        assert_ne!(new_leader, leader);
        let events = lab.holders_timeline();
        println!("etcd leader {leader} killed under holder {holder}: address events {events:?}");
        at_most_one_holder(&events, 3, Some(holder), killed, Instant::now())
            .unwrap_or_else(|two| panic!("{two}\n{}", lab.logs()));
        (holder, events)
    }

    #[test]
    fn an_etcd_leader_crash_moves_nothing() {
        let mut lab = lab(3, "", "");
        let (holder, events) = etcd_leader_dies_under_the_holder(&mut lab);
        assert!(events.is_empty(), "{events:?}\n{}", lab.logs());
        assert_eq!(lab.holders().unwrap(), vec![holder]);
    }

    /// At etcd's production timing an election takes 1 to 3 s here, and now and then more:
    /// the holder keeps the VIP unless its lease lapsed (half the default 8 s lease without
    /// a renewal), and a node holds it again once etcd answers; never two holders.
    #[test]
    fn with_production_etcd_timing_an_etcd_leader_crash_keeps_or_returns_the_vip() {
        let mut lab = ClusterLab::with_etcd_defaults(3, WINDOW, "", "lease_ttl = \"8s\"")
            .expect("building the cluster lab");
        let (holder, events) = etcd_leader_dies_under_the_holder(&mut lab);
        let lapsed = lab.log(holder).contains("could not be renewed in time");
        if !lapsed {
            assert!(events.is_empty(), "{events:?}\n{}", lab.logs());
        }
        let back = lab
            .wait_holder(None, Duration::from_secs(10))
            .expect("a holder once etcd answers again");
        println!("production timing: lease lapsed: {lapsed}; holder afterwards {back}");
    }

    #[test]
    fn without_an_etcd_majority_nobody_claims_and_the_holder_releases() {
        let mut lab = lab(3, "", "");
        lab.start_all().expect("three nodes up");
        let (holder, _) = kill_primary_and_wait(&mut lab);
        std::thread::sleep(Duration::from_millis(300));
        lab.holders_timeline();
        let lost = Instant::now();
        kill_etcd_majority(&mut lab);
        lab.daemon(holder)
            .unwrap()
            .wait_for_log("fenced: removed the VIP", Duration::from_secs(3))
            .expect("the holder releases");
        let released = lost.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        let events = lab.holders_timeline();
        println!("etcd majority lost: the holder released after {released:?}; {events:?}");
        assert!(released < LEASE, "released {released:?} after the loss");
        let claims: Vec<_> = events.iter().filter(|e| e.2).collect();
        assert!(
            claims.is_empty(),
            "claims without a majority: {claims:?}\n{}",
            lab.logs()
        );
        assert_eq!(lab.holders().unwrap(), Vec::<usize>::new());
        // The majority comes back: a holder is elected again and takes the VIP.
        lab.etcd.restart(0).unwrap();
        lab.etcd.restart(1).unwrap();
        lab.wait_holder(None, Duration::from_secs(10))
            .expect("a holder again once etcd has its majority");
    }

    /// Kills two of the three etcd members: no majority left.
    fn kill_etcd_majority(lab: &mut ClusterLab) {
        lab.etcd.kill(0).unwrap();
        lab.etcd.kill(1).unwrap();
    }

    #[test]
    fn with_on_quorum_loss_keep_the_holder_keeps_the_vip() {
        let mut lab = lab(3, "", "on_quorum_loss = \"keep\"");
        lab.start_all().expect("three nodes up");
        let (holder, _) = kill_primary_and_wait(&mut lab);
        kill_etcd_majority(&mut lab);
        lab.daemon(holder)
            .unwrap()
            .wait_for_log("could not be renewed in time", Duration::from_secs(3))
            .expect("premise: the lease lapsed");
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(lab.holders().unwrap(), vec![holder], "{}", lab.logs());
        assert!(!lab.log(holder).contains("fenced"), "{}", lab.log(holder));
    }

    #[test]
    fn etcd_out_of_reach_at_start_up_is_logged_and_retried_until_it_answers() {
        let mut lab = lab(3, "", "");
        for i in 0..3 {
            lab.etcd.kill(i).unwrap();
        }
        lab.start(0).unwrap();
        keeps_retrying(&mut lab, 0);
        lab.etcd.restart_stopped().unwrap();
        let daemon = lab.daemon(0).unwrap();
        daemon
            .wait_for_log("cluster: joined", Duration::from_secs(10))
            .expect("joins once etcd answers");
        daemon
            .wait_for_log("elected holder", Duration::from_secs(5))
            .expect("and is elected, alone");
    }

    #[test]
    fn a_joining_node_moves_nothing_and_logs_its_lease() {
        let mut lab = lab(3, "", "");
        for i in 0..2 {
            lab.start(i).unwrap();
        }
        let elected = lab.wait_elected(Duration::from_secs(10)).unwrap();
        lab.start(2).unwrap();
        lab.daemon(2)
            .unwrap()
            .wait_for_log("cluster: joined", Duration::from_secs(5))
            .unwrap();
        lab.daemon(2)
            .unwrap()
            .wait_for_log("is another node", Duration::from_secs(5))
            .expect("the newcomer sees the holder");
        std::thread::sleep(5 * WINDOW);
        assert_eq!(lab.wait_elected(Duration::from_secs(1)).unwrap(), elected);
        assert_eq!(lab.holders().unwrap(), Vec::<usize>::new());
        assert_eq!(
            logged_number(&lab.log(2), "cluster: joined", "ttl_s="),
            Some(1)
        );
    }
}

/// Sharded monitoring: a /24 split among the nodes by rendezvous hashing, written to etcd.
mod sharding {
    use std::{
        collections::{BTreeMap, BTreeSet},
        time::{Duration, Instant},
    };

    use xdprobe_harness::cluster::ClusterLab;

    const WINDOW: Duration = Duration::from_millis(100);
    const LEASE: Duration = Duration::from_secs(1);
    const TARGETS: usize = 254;

    fn lab(cluster: &str) -> ClusterLab {
        let mut lab = ClusterLab::new(3, WINDOW, "monitor = [\"198.51.100.0/24\"]", cluster)
            .expect("building the cluster lab");
        lab.add_farm().expect("the farm");
        lab
    }

    /// Target → the nodes whose key says UP.
    fn up_by(lab: &ClusterLab) -> BTreeMap<String, BTreeSet<String>> {
        let mut by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (target, node, state) in lab.target_keys().expect("etcdctl get") {
            if state == "up" {
                by.entry(target).or_default().insert(node);
            }
        }
        by
    }

    /// Waits until every target has exactly `replicas` UP keys from nodes other than `not`
    /// (whose keys, if it died, stay until its lease expires).
    fn wait_covered(
        lab: &ClusterLab,
        replicas: usize,
        not: &str,
        timeout: Duration,
    ) -> BTreeMap<String, BTreeSet<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let by = up_by(lab);
            let covered = by
                .values()
                .filter(|nodes| nodes.iter().filter(|n| *n != not).count() == replicas)
                .count();
            if covered == TARGETS {
                return by;
            }
            assert!(
                Instant::now() < deadline,
                "{covered} of {TARGETS} targets covered by {replicas} live nodes after {timeout:?}\n{}",
                lab.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn no_target_down(lab: &ClusterLab) {
        for i in 0..lab.nodes.len() {
            let log = lab.log(i);
            let downs: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("host DOWN") && l.contains("198.51.100."))
                .collect();
            assert!(downs.is_empty(), "{}: {downs:#?}", lab.nodes[i].name);
        }
    }

    #[test]
    fn a_24_is_split_among_the_nodes_and_a_dead_nodes_share_moves_without_a_false_down() {
        let mut lab = lab("");
        lab.start_all().expect("three nodes up");
        let by = wait_covered(&lab, 1, "-", Duration::from_secs(10));
        let mut shares: BTreeMap<String, usize> = BTreeMap::new();
        for nodes in by.values() {
            for n in nodes {
                *shares.entry(n.clone()).or_default() += 1;
            }
        }
        println!("shares of the /24: {shares:?}");
        assert_eq!(shares.len(), 3, "{shares:?}");
        assert!(shares.values().all(|&n| n >= 50), "uneven: {shares:?}");
        // The merged view is what `xdprobe status --cluster` shows (refreshed four times a
        // second).
        let deadline = Instant::now() + Duration::from_secs(3);
        let ups = |text: &str| {
            text.lines()
                .filter(|l| l.starts_with("198.51.100.") && l.contains(" UP "))
                .count()
        };
        let text = loop {
            let out = lab.lab.xdprobe("n1", &["status", "--cluster"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}{err}");
            if ups(&text) == TARGETS || Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let header = format!("probing {} of {TARGETS} monitored targets", shares["n1"]);
        assert!(text.contains(&header), "{text}");
        assert!(text.contains("members n1, n2, n3"), "{text}");
        assert_eq!(ups(&text), TARGETS, "{text}");

        // n3's machine dies: its share moves to n1 and n2.
        let dead = 2;
        let moved = shares["n3"];
        let died = Instant::now();
        lab.kill_machine(dead).unwrap();
        wait_covered(&lab, 1, "n3", Duration::from_secs(5));
        let took = died.elapsed();
        println!("n3 died: its {moved} targets were probed UP by n1 and n2 {took:?} later");
        assert!(took <= LEASE + WINDOW, "took {took:?}\n{}", lab.logs());
        no_target_down(&lab);

        // It comes back: it takes its share back, still without a DOWN anywhere.
        lab.nodes[dead].daemon.take();
        lab.lab.revive("n3").unwrap();
        lab.start(dead).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let by = up_by(&lab);
            let n3 = by.values().filter(|n| n.contains("n3")).count();
            if n3 == moved && by.values().all(|n| n.len() == 1) && by.len() == TARGETS {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "n3 has {n3} of its {moved} back\n{}",
                lab.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        no_target_down(&lab);
    }

    #[test]
    fn monitor_cluster_with_two_replicas_probes_every_target_from_two_nodes() {
        let mut lab =
            ClusterLab::monitoring(3, WINDOW, "monitor = [\"198.51.100.0/24\"]", "replicas = 2")
                .expect("building the cluster lab");
        lab.add_farm().expect("the farm");
        for i in 0..3 {
            lab.start_monitor(i).unwrap();
        }
        let by = wait_covered(&lab, 2, "-", Duration::from_secs(10));
        assert_eq!(by.len(), TARGETS);
        no_target_down(&lab);
    }
}
