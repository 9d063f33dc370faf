//! Keeping our lease alive through every etcd member at once: one renewal stream per member
//! (each member forwards renewals to the raft leader), so a dead or cut-off member costs
//! nothing and no renewal waits for a client to notice it; and the heartbeat (our member key
//! rewritten every period), its writes going to each member in turn. Both run in tasks of
//! their own, so nothing the session waits for can delay them.

use std::time::Duration;

use etcd_client::{Client, PutOptions};
use tokio::{
    sync::mpsc,
    task::JoinHandle,
    time::{sleep, sleep_until, timeout, Instant},
};

use super::request_timeout;
use crate::model::cluster::renew_every;

/// What a renewal stream tells the session.
#[derive(Clone, Copy, Debug)]
pub enum Renewal {
    /// etcd confirmed a renewal sent at this time.
    Confirmed { sent: Instant },
    /// etcd says the lease is gone (expired or revoked).
    Gone,
}

/// The renewal and heartbeat tasks of one lease; they stop when this is dropped.
pub struct Keepers(Vec<JoinHandle<()>>);

impl Drop for Keepers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts renewing `lease` through each of `members` (one client each), reporting on
/// `renewals`, and writing the heartbeat to `key`.
pub fn keep(
    members: &[Client],
    lease: i64,
    ttl: Duration,
    key: String,
    renewals: mpsc::UnboundedSender<Renewal>,
) -> Keepers {
    let mut tasks: Vec<JoinHandle<()>> = members
        .iter()
        .map(|client| tokio::spawn(renew(client.clone(), lease, ttl, renewals.clone())))
        .collect();
    tasks.push(tokio::spawn(heartbeat(members.to_vec(), key, lease, ttl)));
    Keepers(tasks)
}

/// Renews `lease` through one member every period: send, wait for its answer (up to three
/// periods), report it. A stream that breaks or stalls is reopened a period later.
async fn renew(
    mut client: Client,
    lease: i64,
    ttl: Duration,
    renewals: mpsc::UnboundedSender<Renewal>,
) {
    let period = renew_every(ttl);
    loop {
        if let Ok(Ok((mut keeper, mut stream))) =
            timeout(period * 2, client.lease_keep_alive(lease)).await
        {
            loop {
                let sent = Instant::now();
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match timeout(period * 3, stream.message()).await {
                    Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                        if renewals.send(Renewal::Confirmed { sent }).is_err() {
                            return;
                        }
                    }
                    Ok(Ok(Some(_))) => {
                        let _ = renewals.send(Renewal::Gone);
                        return;
                    }
                    _ => break,
                }
                sleep_until(sent + period).await;
            }
        }
        sleep(period).await;
    }
}

/// Rewrites our member key every period with a count, each write to the next member and in a
/// task of its own (a slow one never holds back the next): the heartbeat by which the others
/// see that we still reach etcd. One dead member loses one write in as many as there are
/// members, never the several in a row that make us suspect.
async fn heartbeat(members: Vec<Client>, key: String, lease: i64, ttl: Duration) {
    let mut every = tokio::time::interval(renew_every(ttl));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for beat in 1u64.. {
        every.tick().await;
        let mut client = members[beat as usize % members.len()].clone();
        let (key, limit) = (key.clone(), request_timeout(ttl));
        tokio::spawn(async move {
            let options = PutOptions::new().with_lease(lease);
            let _ = timeout(limit, client.put(key, beat.to_string(), Some(options))).await;
        });
    }
}
