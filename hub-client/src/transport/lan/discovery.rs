//! Discovery: hubs of this cluster advertise themselves by mDNS / DNS-SD and browse for each
//! other; the hubs found are kept (bounded), and the dialer decides which to link to and when.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use shared_proto::trust::login::Credentials;
use shared_proto::HubId;
use tokio::task::JoinHandle;

use super::link::run_link;
use super::tls::{connect, refused};
use super::{
    LanError, Shared, LAN_VERSION, LATE_DIAL, MAX_ADDRS, MAX_DISCOVERED, MAX_LINKS, REDIAL,
    REFUSED_REDIAL, SERVICE_TYPE,
};

/// Starts advertising this hub (`_aiappuse._tcp`, TXT: cluster id, hub id, LAN version) and
/// browsing for the hubs of its cluster: the daemon, and the task that reads what it finds.
pub(super) fn advertise(
    shared: &Arc<Shared>,
    creds: &Credentials,
) -> Result<(mdns_sd::ServiceDaemon, JoinHandle<()>), LanError> {
    let daemon = mdns_sd::ServiceDaemon::new()?;
    let cluster = shared_proto::trust::ClusterId::from_ca_key(&creds.ca_key);
    let hub = creds.hub_id.to_string();
    let host = format!("hub-{}.local.", &hub[..12]);
    let txt = [
        ("c", cluster.as_str()),
        ("h", hub.as_str()),
        ("v", LAN_VERSION),
    ];
    let port = shared.listen.port();
    let info = mdns_sd::ServiceInfo::new(SERVICE_TYPE, &hub, &host, "", port, &txt[..])?
        .enable_addr_auto();
    daemon.register(info)?;
    let browse = daemon.browse(SERVICE_TYPE)?;
    let task = tokio::spawn(browse_loop(
        shared.clone(),
        browse,
        cluster.as_str().to_owned(),
    ));
    tracing::info!(listen = %shared.listen, "LAN: advertising {SERVICE_TYPE} and listening");
    Ok((daemon, task))
}

/// A hub of this cluster found on the LAN.
#[derive(Debug)]
pub(super) struct Discovered {
    /// Where it said it is.
    pub(super) addrs: Vec<SocketAddr>,
    /// Its last dial failed (nothing answered, or the TLS handshake was refused: not a hub of
    /// this cluster, or revoked): the first to go when the table is full.
    pub(super) failed: bool,
    /// When it was found.
    since: Instant,
    dialing: bool,
    next_dial: Instant,
}

impl Shared {
    /// `hub` was found at `addrs` (by mDNS, or given): kept if there is room, and dialed.
    ///
    /// A record is not proof: anyone on the LAN can advertise any hub id at any address. So the
    /// addresses of a hub linked now are not touched (the link's TLS proved where it is), and new
    /// addresses of one that is not are tried before the ones held, which are kept too (at most
    /// [`MAX_ADDRS`]): a false record cannot take a real hub's place.
    pub(super) fn discovered(&self, hub: HubId, addrs: Vec<SocketAddr>) {
        if hub == self.me || addrs.is_empty() {
            return;
        }
        let linked = self
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&hub);
        let mut seen = self
            .discovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if let Some(d) = seen.get_mut(&hub) {
            if linked || addrs.iter().all(|a| d.addrs.contains(a)) {
                return;
            }
            // Seen at new addresses: those first, then the ones held; dial at once.
            let mut merged = addrs;
            for a in &d.addrs {
                if !merged.contains(a) {
                    merged.push(*a);
                }
            }
            merged.truncate(MAX_ADDRS);
            d.addrs = merged;
            d.next_dial = now;
        } else {
            if seen.len() >= MAX_DISCOVERED {
                // Full: a record whose dial failed makes room (a stranger advertising many
                // false hubs, at addresses that answer or not, cannot keep the real ones out);
                // otherwise the new one waits for its next announcement.
                let Some(failed) = seen.iter().find(|(_, d)| d.failed).map(|(h, _)| *h) else {
                    tracing::debug!(peer = %hub, "LAN: {MAX_DISCOVERED} hubs known already; ignored");
                    return;
                };
                seen.remove(&failed);
            }
            let mut addrs = addrs;
            addrs.truncate(MAX_ADDRS);
            tracing::info!(peer = %hub, ?addrs, "LAN: found a hub of this cluster");
            seen.insert(
                hub,
                Discovered {
                    addrs,
                    failed: false,
                    since: now,
                    dialing: false,
                    next_dial: now,
                },
            );
        }
        drop(seen);
        self.dial.notify_one();
    }

    /// `hub` is no longer advertised (an mDNS goodbye, which anyone can send): forgotten, unless
    /// it is linked (its link says whether it is there).
    pub(super) fn forget(&self, hub: &HubId) {
        if self
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(hub)
        {
            tracing::debug!(peer = %hub, "LAN: a goodbye for a linked hub, ignored");
            return;
        }
        let mut seen = self
            .discovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if seen.remove(hub).is_some() {
            tracing::info!(peer = %hub, "LAN: hub no longer advertised");
        }
    }
}

/// Reads what mDNS finds: the hubs of this cluster (same cluster id and LAN version) are kept;
/// a goodbye forgets one.
async fn browse_loop(
    shared: Arc<Shared>,
    browse: mdns_sd::Receiver<mdns_sd::ServiceEvent>,
    cluster: String,
) {
    while let Ok(event) = browse.recv_async().await {
        match event {
            mdns_sd::ServiceEvent::ServiceResolved(info) => {
                if info.get_property_val_str("c") != Some(cluster.as_str())
                    || info.get_property_val_str("v") != Some(LAN_VERSION)
                {
                    continue;
                }
                let Some(hub) = info
                    .get_property_val_str("h")
                    .and_then(|h| h.parse::<HubId>().ok())
                else {
                    continue;
                };
                let port = info.get_port();
                let mut addrs: Vec<SocketAddr> = info
                    .get_addresses()
                    .iter()
                    .map(|ip| SocketAddr::new(ip.to_ip_addr(), port))
                    .filter(|a| !matches!(a.ip(), IpAddr::V6(v6) if v6.is_unicast_link_local()))
                    .collect();
                addrs.sort();
                shared.discovered(hub, addrs);
            }
            mdns_sd::ServiceEvent::ServiceRemoved(_, fullname) => {
                let instance = fullname.split('.').next().unwrap_or_default();
                if let Ok(hub) = instance.parse::<HubId>() {
                    shared.forget(&hub);
                }
            }
            _ => {}
        }
    }
}

/// Dials the hubs found that have no link, when it is this hub's turn (the lower hub id at once,
/// the higher one after [`LATE_DIAL`]) and their next dial is due.
pub(super) async fn dial_loop(shared: Arc<Shared>) {
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut next = now + REDIAL;
        {
            let links = shared.links.lock().unwrap_or_else(PoisonError::into_inner);
            let mut seen = shared
                .discovered
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (hub, d) in seen.iter_mut() {
                if links.contains_key(hub) || d.dialing || links.len() >= MAX_LINKS {
                    continue;
                }
                // The lower hub id dials; the higher one only if nothing came for a while.
                let mine = shared.me < *hub || now.duration_since(d.since) >= LATE_DIAL;
                if !mine {
                    next = next.min(d.since + LATE_DIAL);
                    continue;
                }
                if d.next_dial <= now {
                    d.dialing = true;
                    due.push((*hub, d.addrs.clone()));
                } else {
                    next = next.min(d.next_dial);
                }
            }
        }
        for (hub, addrs) in due {
            tokio::spawn(dial(shared.clone(), hub, addrs));
        }
        tokio::select! {
            () = shared.dial.notified() => {}
            () = tokio::time::sleep_until(next.into()) => {}
        }
    }
}

/// Dials `hub` at each of `addrs` until one links; a refusal in the TLS handshake is said, and
/// dialed again only after [`REFUSED_REDIAL`].
async fn dial(shared: Arc<Shared>, hub: HubId, addrs: Vec<SocketAddr>) {
    let mut last = String::from("no address");
    let mut linked = None;
    let mut redial = REDIAL;
    for addr in addrs {
        match connect(&shared, hub, addr).await {
            Ok(link) => {
                linked = Some((link, addr));
                break;
            }
            // Refused in the handshake (by this hub's checks or the peer's): say so; a peer
            // that is simply not there is only retried.
            Err(LanError::Tls(e)) => {
                refused(&shared, addr, format!("dialing {hub}: {e}")).await;
                last = e.to_string();
                redial = REFUSED_REDIAL;
            }
            Err(e) => last = e.to_string(),
        }
    }
    {
        let mut seen = shared
            .discovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = seen.get_mut(&hub) {
            d.dialing = false;
            d.failed = linked.is_none();
            if linked.is_none() {
                d.next_dial = Instant::now() + redial;
            }
        }
    }
    match linked {
        Some(((tls, peer), addr)) => run_link(shared, tls.into(), addr, peer, true).await,
        None => tracing::debug!(peer = %hub, "LAN: no link: {last}"),
    }
}
