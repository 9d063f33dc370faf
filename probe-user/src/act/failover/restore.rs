//! A held VIP is guarded: the failover task follows its interface's address and link events
//! ([`addrwatch`]); a held VIP removed by anyone else, or flushed with the link, is put back
//! and announced again, logged, counted and mailed once an episode; when the link comes back
//! up the VIP is announced again. A released VIP is never put back (the policy decides).

use std::time::SystemTime;

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::{policy::Action, Failover, Run};
use crate::{
    act::{
        addrwatch::{self, NetEvent},
        vip::Added,
    },
    model::notice::restore_notice,
};

impl Failover {
    /// The interface's address and link events, if they can be subscribed to (else logged:
    /// failover goes on without the guard).
    pub(super) fn watch_net(&self) -> Option<mpsc::UnboundedReceiver<NetEvent>> {
        match addrwatch::watch(self.vip.index()) {
            Ok(events) => Some(events),
            Err(e) => {
                error!(vip = %self.vip.net(), error = %format!("{e:#}"), "cannot follow address events: a removed VIP will not be put back");
                None
            }
        }
    }

    /// What an address or link event means to the policy.
    pub(super) fn on_net(&self, run: &mut Run, event: NetEvent) -> Vec<Action> {
        match event {
            NetEvent::Removed(addr) if self.vip.net().contains(addr) => {
                run.policy.vip_gone(run.now())
            }
            NetEvent::Removed(_) => vec![],
            NetEvent::Link { running } => {
                if !running && run.policy.link_running() && run.policy.holding() {
                    warn!(vip = %self.vip.net(), iface = %self.site.iface, "link down while holding the VIP");
                }
                run.policy.link(running)
            }
        }
    }

    /// Puts the VIP back, and announces it if the link is up.
    pub(super) async fn restore(&self, run: &mut Run, report: bool) {
        match self.vip.add().await {
            Ok(added) => {
                run.policy.restored(true, run.now());
                if added == Added::Now {
                    self.put_back(run, report);
                }
                if run.policy.link_running() {
                    self.announce_again(run);
                }
            }
            Err(e) => {
                run.policy.restored(false, run.now());
                error!(vip = %self.vip.net(), error = %format!("{e:#}"), "putting the VIP back FAILED; retrying");
            }
        }
    }

    /// The link is up again: the VIP is there (put back if it was flushed and the event lost),
    /// and announced again at once.
    pub(super) async fn reannounce(&self, run: &mut Run) {
        match self.vip.add().await {
            Ok(Added::Now) => self.put_back(run, true),
            Ok(Added::AlreadyPresent) => {}
            Err(e) => {
                error!(vip = %self.vip.net(), error = %format!("{e:#}"), "putting the VIP back FAILED");
                return;
            }
        }
        info!(vip = %self.vip.net(), iface = %self.site.iface, "link up again: announced the VIP again");
        self.announce_again(run);
    }

    /// Logs, counts and (once an episode) mails a VIP put back.
    fn put_back(&self, run: &Run, report: bool) {
        warn!(host = %self.watch, window = run.window, vip = %self.vip.net(), iface = %self.site.iface, label = %self.vip.label(), "the VIP we hold was removed from the interface: put it back");
        self.publish(|g| g.restored += 1);
        if report {
            self.notifier
                .send(restore_notice(self.watch, &self.site, SystemTime::now()));
        }
    }

    /// Gratuitous ARP now, the repeats and refreshes after it, and the wire guard afresh (its
    /// socket may have failed while the link was down).
    fn announce_again(&self, run: &mut Run) {
        if let Err(error) = self.wire.announce(self.vip.addrs(), self.wire.mac()) {
            warn!(%error, "gratuitous ARP failed");
        }
        if let Some(old) = run.announcer.take() {
            old.abort();
        }
        run.announcer = Some(self.spawn_announcer(
            self.wire.mac(),
            self.settings.garp.count,
            self.settings.garp.refresh.unwrap_or_default(),
        ));
        self.guard_wire(run);
    }
}

/// The next event, or never if there is no subscription (any more).
pub(super) async fn next_event(
    events: &mut Option<mpsc::UnboundedReceiver<NetEvent>>,
) -> Option<NetEvent> {
    if let Some(rx) = events {
        if let Some(event) = rx.recv().await {
            return Some(event);
        }
        *events = None;
    }
    std::future::pending().await
}
