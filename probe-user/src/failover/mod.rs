//! The failover task: takes the VIP when the watched host goes DOWN, reports it, and reports
//! the host's return. It never waits on the mail: notices are queued.

use std::net::Ipv4Addr;

use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::{
    events::{recovery_notice, start_notice, takeover_notice, HostEvent, Takeover},
    health::State,
    mail::Notifier,
    vip::{Added, Vip},
};

pub struct Failover {
    pub watch: Ipv4Addr,
    pub iface: String,
    pub node: String,
    pub vip: Vip,
    pub notifier: Notifier,
}

impl Failover {
    pub async fn run(
        self,
        mut events: mpsc::UnboundedReceiver<HostEvent>,
        shutdown: CancellationToken,
    ) {
        let holding = match self.vip.is_present().await {
            Ok(true) => {
                info!(vip = %self.vip.net(), iface = %self.iface, "VIP already on this interface; holding it");
                true
            }
            Ok(false) => false,
            Err(e) => {
                error!(error = %format!("{e:#}"), "cannot list addresses");
                false
            }
        };
        self.notifier
            .send(start_notice(self.watch, &self.takeover(Ok(())), holding));
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = events.recv() => match event { Some(e) => e, None => return },
            };
            if event.host != self.watch {
                continue;
            }
            match (event.change.from, event.change.to) {
                (_, State::Down) => self.take_over(&event).await,
                (State::Down, State::Up) => {
                    info!(host = %event.host, window = event.window, vip = %self.vip.net(), "watched host is back; keeping the VIP");
                    self.notifier.send(recovery_notice(
                        &event,
                        &self.vip.net().to_string(),
                        &self.node,
                    ));
                }
                (_, State::Up) => {
                    info!(host = %event.host, window = event.window, "watched host is up")
                }
                _ => {}
            }
        }
    }

    async fn take_over(&self, event: &HostEvent) {
        let started = Instant::now();
        let outcome = self.vip.add().await;
        let took_us = started.elapsed().as_micros() as u64;
        let outcome = match outcome {
            Ok(added) => {
                info!(
                    host = %event.host,
                    window = event.window,
                    vip = %self.vip.net(),
                    iface = %self.iface,
                    label = %self.vip.label(),
                    already_present = added == Added::AlreadyPresent,
                    silent_ms = event.silent_for.as_millis() as u64,
                    netlink_us = took_us,
                    "took over the VIP"
                );
                Ok(())
            }
            Err(e) => {
                let reason = format!("{e:#}");
                error!(host = %event.host, window = event.window, vip = %self.vip.net(), error = %reason, "VIP takeover FAILED");
                Err(reason)
            }
        };
        self.notifier
            .send(takeover_notice(event, &self.takeover(outcome)));
    }

    fn takeover(&self, outcome: Result<(), String>) -> Takeover {
        Takeover {
            vip: self.vip.net().to_string(),
            iface: self.iface.clone(),
            label: self.vip.label().to_string(),
            node: self.node.clone(),
            outcome,
        }
    }
}
