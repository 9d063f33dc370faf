//! Never two holders on the wire: while the failover task holds its VIP, a guard watches the
//! ARP and NDP traffic for another machine answering for it (and probes for one every window,
//! since a primary that comes back with its VIP configured answers at once but announces
//! nothing); when one does, the task yields ([`policy::Action::Yield`](super::policy::Action::Yield)).

use std::{sync::Arc, time::SystemTime};

use tracing::{error, info, warn};

use super::{announce_repeatedly, mac_str, stop_holding_tasks, Failover, Run};
use crate::{
    act::wire,
    config::hooks::HookEvent,
    model::{health::State, notice::yield_notice},
};

impl Failover {
    /// Starts watching the wire for another holder of the VIP (replacing a guard already
    /// running). The guard has its own ARP and NDP sockets, so that conflict checks and
    /// release probes on the shared ones do not take its frames. It reports the first other holder and ends.
    pub(super) fn guard_wire(&self, run: &mut Run) {
        if let Some(old) = run.wire_guard.take() {
            old.abort();
        }
        let (iface, vip, addrs, every, holders) = (
            self.site.iface.clone(),
            self.vip.net().clone(),
            self.vip.addrs(),
            self.timing.borrow().window,
            run.holders.clone(),
        );
        run.wire_guard = Some(tokio::spawn(async move {
            match wire::guard(&iface, addrs, every).await {
                Ok(holder) => {
                    let _ = holders.send(holder);
                }
                Err(e) => {
                    error!(%vip, error = %format!("{e:#}"), "watching the wire for another holder of the VIP failed")
                }
            }
        }));
    }

    /// Another machine answers for the VIP we hold: remove it at once, announce it for that
    /// machine (so caches follow it, as on release), report.
    pub(super) async fn yield_to(&self, run: &mut Run, holder: [u8; 6], keep: bool) {
        stop_holding_tasks(run);
        let vip = self.vip.net().clone();
        let mac = mac_str(holder);
        match self.vip.remove().await {
            Ok(removed) => {
                self.publish(|g| {
                    g.holding = false;
                    g.yields += 1;
                });
                if keep {
                    warn!(host = %self.watch, window = run.window, %vip, holder = %mac, removed, "another machine answers for the VIP we hold: yielded the VIP to it (failback = keep holds it only while nobody else answers)");
                } else {
                    info!(host = %self.watch, window = run.window, %vip, holder = %mac, removed, "another machine answers for the VIP we hold: yielded the VIP to it, before the hold-down");
                }
            }
            Err(e) => {
                error!(%vip, holder = %mac, error = %format!("{e:#}"), "yielding the VIP FAILED: two holders on the wire; trying again when it answers next");
                run.policy.yield_failed();
                self.guard_wire(run);
                return;
            }
        }
        self.fire(HookEvent::Release, self.watch, State::Up, run.window);
        self.notifier.send(yield_notice(
            self.watch,
            &self.site,
            SystemTime::now(),
            &mac,
            keep,
        ));
        info!(%vip, mac = %mac, "announcing the VIP for its holder");
        let (wire, addrs, garp) = (Arc::clone(&self.wire), self.vip.addrs(), self.settings.garp);
        tokio::spawn(async move {
            announce_repeatedly(&wire, addrs, holder, garp.count + 1, garp.interval).await;
        });
    }
}
