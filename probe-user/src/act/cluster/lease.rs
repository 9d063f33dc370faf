//! Keeping our lease alive through every etcd member at once: one renewal stream per member
//! (each member forwards renewals to the raft leader), so a dead or cut-off member costs
//! nothing and no renewal waits for a client to notice it; and the heartbeat (our member key
//! rewritten every period), its writes going to each member in turn. Both run in tasks of
//! their own, so nothing the session waits for can delay them.

use std::{collections::VecDeque, time::Duration};

use etcd_client::{Client, PutOptions};
use tokio::{
    sync::mpsc,
    task::JoinHandle,
    time::{sleep, timeout, Instant},
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
/// `renewals`, and writing the heartbeat to `key` (its count after `prefix`).
pub fn keep(
    members: &[Client],
    lease: i64,
    ttl: Duration,
    key: String,
    prefix: String,
    renewals: mpsc::UnboundedSender<Renewal>,
) -> Keepers {
    let mut tasks: Vec<JoinHandle<()>> = members
        .iter()
        .map(|client| tokio::spawn(renew(client.clone(), lease, ttl, renewals.clone())))
        .collect();
    tasks.push(tokio::spawn(heartbeat(
        members.to_vec(),
        key,
        prefix,
        lease,
        ttl,
    )));
    Keepers(tasks)
}

/// Renews `lease` through one member every period, without waiting for earlier answers
/// (etcd answers a stream's renewals in order), reporting each confirmation with its send
/// time. A stream that breaks, or leaves a renewal unanswered for three periods (its member
/// is dead, or cut off), is reopened: once the cluster answers again, the next period's
/// renewal gets through.
async fn renew(
    mut client: Client,
    lease: i64,
    ttl: Duration,
    renewals: mpsc::UnboundedSender<Renewal>,
) {
    let period = renew_every(ttl);
    loop {
        let opened = timeout(period * 2, client.lease_keep_alive(lease)).await;
        let (mut keeper, mut stream) = match opened {
            Ok(Ok(pair)) => pair,
            // etcd-client says so when etcd answers for a lease it does not know (expired,
            // or revoked by the others): a new lease is needed.
            Ok(Err(e)) if e.to_string().contains("lease not found") => {
                let _ = renewals.send(Renewal::Gone);
                return;
            }
            Ok(Err(_)) | Err(_) => {
                sleep(period).await;
                continue;
            }
        };
        let mut outstanding: VecDeque<Instant> = VecDeque::new();
        let mut every = tokio::time::interval(period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = every.tick() => {
                    if outstanding.front().is_some_and(|sent| sent.elapsed() > period * 3) {
                        break;
                    }
                    let sent = Instant::now();
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                    outstanding.push_back(sent);
                }
                answer = stream.message() => match answer {
                    Ok(Some(answer)) => {
                        let sent = outstanding.pop_front();
                        if answer.ttl() <= 0 {
                            let _ = renewals.send(Renewal::Gone);
                            return;
                        }
                        if let Some(sent) = sent {
                            if renewals.send(Renewal::Confirmed { sent }).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) | Err(_) => break,
                },
            }
        }
    }
}

/// Rewrites our member key every period with a count, each write to the next member and in a
/// task of its own (a slow one never holds back the next): the heartbeat by which the others
/// see that we still reach etcd. One dead member loses one write in as many as there are
/// members, never the several in a row that make us suspect.
async fn heartbeat(members: Vec<Client>, key: String, prefix: String, lease: i64, ttl: Duration) {
    let mut every = tokio::time::interval(renew_every(ttl));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for beat in 1u64.. {
        every.tick().await;
        let mut client = members[beat as usize % members.len()].clone();
        let (key, prefix, limit) = (key.clone(), prefix.clone(), request_timeout(ttl));
        tokio::spawn(async move {
            let options = PutOptions::new().with_lease(lease);
            let _ = timeout(
                limit,
                client.put(key, format!("{prefix}{beat}"), Some(options)),
            )
            .await;
        });
    }
}
