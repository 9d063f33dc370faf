//! Cluster mode against a real etcd: three xdprobe nodes and a three-member etcd cluster on
//! one bridge with the primary, each in its own namespace (see `xdprobe_harness::cluster`).
//! Takeover needs the elected holder and a quorum's DOWN; one node's false DOWN moves
//! nothing; a holder cut off from etcd fences before another node claims; a dead holder is
//! replaced; etcd's majority lost means no claims and, by default, a released VIP.

/// Needs root: namespaces, XDP, etcd, nftables.
mod privileged {
    use std::time::{Duration, Instant};

    use xdprobe_harness::cluster::{at_most_one_holder, ClusterLab, VIP_NET};
    use xdprobe_harness::logged_number;

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
        let mut lab = lab(3, "", "");
        lab.start_all().expect("three nodes up");
        let (holder, _) = kill_primary_and_wait(&mut lab);
        std::thread::sleep(Duration::from_millis(300));
        lab.holders_timeline(); // only what follows the cut counts
        let cut = Instant::now();
        lab.cut_off_from_etcd(holder).expect("nftables");
        let deadline = cut + Duration::from_secs(6);
        let successor = loop {
            let holders = lab.holders().unwrap();
            if let Some(&other) = holders.iter().find(|&&h| h != holder) {
                break other;
            }
            assert!(
                Instant::now() < deadline,
                "nobody took over\n{}",
                lab.logs()
            );
            std::thread::sleep(Duration::from_millis(5));
        };
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
        let samples = at_most_one_holder(&events, 3, cut - Duration::from_millis(5), end)
            .unwrap_or_else(|two| panic!("{two}\n{events:?}\n{}", lab.logs()));
        assert!(samples >= 100, "{samples} samples");
        assert_eq!(lab.holders().unwrap(), vec![successor]);
    }

    #[test]
    fn a_dead_holder_is_replaced_within_the_lease_and_two_windows() {
        let mut lab = lab(3, "", "");
        lab.start_all().expect("three nodes up");
        let (holder, _) = kill_primary_and_wait(&mut lab);
        std::thread::sleep(Duration::from_millis(300));
        let died = Instant::now();
        lab.kill_machine(holder)
            .expect("killing the holder's machine");
        let deadline = died + Duration::from_secs(6);
        let successor = loop {
            let holders = lab.holders().unwrap();
            if let Some(&other) = holders.iter().find(|&&h| h != holder) {
                break other;
            }
            assert!(
                Instant::now() < deadline,
                "nobody took over\n{}",
                lab.logs()
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let handover = died.elapsed();
        println!(
            "holder {} died; {} holds the VIP {handover:?} later",
            lab.nodes[holder].name, lab.nodes[successor].name
        );
        assert!(
            handover <= LEASE + 2 * WINDOW,
            "handover took {handover:?}\n{}",
            lab.logs()
        );
        let log = lab.log(successor);
        assert!(log.contains("elected holder"), "{log}");
    }

    #[test]
    fn without_an_etcd_majority_nobody_claims_and_the_holder_releases() {
        let mut lab = lab(3, "", "");
        lab.start_all().expect("three nodes up");
        let (holder, _) = kill_primary_and_wait(&mut lab);
        std::thread::sleep(Duration::from_millis(300));
        lab.holders_timeline();
        let lost = Instant::now();
        lab.etcd.kill(0).unwrap();
        lab.etcd.kill(1).unwrap();
        lab.nodes[holder]
            .daemon
            .as_mut()
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
        lab.wait_holder(Duration::from_secs(10))
            .expect("a holder again once etcd has its majority");
    }

    #[test]
    fn with_on_quorum_loss_keep_the_holder_keeps_the_vip() {
        let mut lab = lab(3, "", "on_quorum_loss = \"keep\"");
        lab.start_all().expect("three nodes up");
        let (holder, _) = kill_primary_and_wait(&mut lab);
        lab.etcd.kill(0).unwrap();
        lab.etcd.kill(1).unwrap();
        lab.nodes[holder]
            .daemon
            .as_mut()
            .unwrap()
            .wait_for_log("could not be renewed in time", Duration::from_secs(3))
            .expect("premise: the lease lapsed");
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(lab.holders().unwrap(), vec![holder], "{}", lab.logs());
        assert!(!lab.log(holder).contains("fenced"), "{}", lab.log(holder));
    }

    #[test]
    fn a_joining_node_moves_nothing_and_the_windows_are_logged() {
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
        assert!(logged_number(&lab.log(2), "cluster: joined", "ttl_s=") == Some(1));
    }
}
