//! The LAN path: hubs of one cluster on the same network find each other by mDNS / DNS-SD and
//! link directly over TLS 1.3, both sides presenting their hub certificates.
//!
//! - **Discovery.** Each hub advertises `_aiappuse._tcp` ([`SERVICE_TYPE`]) on its interfaces
//!   with a TXT record that says only what a stranger on the network may know: the cluster id
//!   (`c`), the hub id (`h`) and the LAN protocol version (`v`). It browses for the same and keeps
//!   the hubs of its own cluster (at most [`MAX_DISCOVERED`]).
//! - **Link.** Of two hubs that see each other, the one with the lower hub id dials (the other
//!   dials too if it has seen the first for [`LATE_DIAL`] without a link; of two links, both keep
//!   the one the lower hub dialed). TLS 1.3 only, ALPN [`ALPN`], and no web PKI: each side checks
//!   the other's certificate against the cluster CA, its dates and the revocation list, that it
//!   is not its own, and the dialer that it names the hub id that was advertised
//!   ([`PeerVerifier`]). The TLS handshake signature is checked with the certificate's Ed25519
//!   key.
//! - **What rides on it.** The same peer payloads as through the relay (Noise handshake and
//!   transport messages), so the end-to-end session is the same on both paths and a message may
//!   take either: the Noise session runs inside TLS. TLS keeps strangers on the LAN off the link;
//!   the session inside keeps what the relay path keeps (peer authentication by the Noise IK
//!   handshake, replay protection), so the LAN path is never weaker than the relay path.
//! - **Frames** inside TLS: `type: u8 | len: u32 | body`, `0x01` data (one peer payload, at most
//!   [`MAX_PAYLOAD`]), `0x02` ack (`received: u64`, the data frames read so far), `0x03`
//!   keepalive (empty). A sender keeps what was not acknowledged yet (at most
//!   [`MAX_UNACKED_BYTES`]; past it, sends go by the relay). A link on which nothing arrives for
//!   [`DEAD_AFTER`] is closed, and what it had not delivered is handed back
//!   ([`LanEvent::Down`]) to be sent by the relay: the session's replay window drops whatever of
//!   it did arrive, so nothing is lost and nothing is delivered twice.
//!
//! [`Lan::try_send`] is the router's question: it takes a payload if a verified link to the hub
//! is up and has room, and gives it back otherwise.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use shared_proto::trust::VerifiedRevocations;
use shared_proto::HubId;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

mod discovery;
mod link;
mod tls;

use discovery::Discovered;
use link::LinkHandle;
pub use shared_proto::link::{MAX_UNACKED_BYTES, MAX_UNACKED_FRAMES};
pub use tls::{private_key, PeerVerifier};

/// The DNS-SD service type hubs advertise and browse for.
pub const SERVICE_TYPE: &str = "_aiappuse._tcp.local.";

/// The LAN protocol version (TXT `v`).
pub const LAN_VERSION: &str = "1";

/// The TLS application protocol of a LAN link.
pub const ALPN: &[u8] = b"hub-lan/1";

/// A link sends a keepalive when it has sent nothing for this long...
pub const KEEPALIVE: Duration = Duration::from_millis(shared_proto::link::KEEPALIVE_MS);

/// ... and is closed when nothing arrived on it for this long.
pub const DEAD_AFTER: Duration = Duration::from_millis(shared_proto::link::DEAD_AFTER_MS);

/// A TCP connect plus TLS handshake must finish within this long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Payloads waiting for a link's writer; past it, sends go by the relay.
pub const LINK_QUEUE: usize = 256;

/// Hubs of this cluster seen on the LAN that are kept (others are ignored until one goes).
pub const MAX_DISCOVERED: usize = 256;

/// Addresses kept for one hub found (the newest first).
pub const MAX_ADDRS: usize = 8;

/// Links up at once (one per peer; more are refused).
pub const MAX_LINKS: usize = 256;

/// Incoming connections in their TLS handshake at once; more wait in the kernel's backlog.
pub const MAX_HANDSHAKING: usize = 16;

/// The hub with the higher id dials a discovered peer itself after this long without a link.
pub const LATE_DIAL: Duration = Duration::from_secs(5);

/// A failed dial is tried again after this long (and at once when the peer is seen anew).
pub const REDIAL: Duration = Duration::from_secs(1);

/// A dial refused in its TLS handshake (a certificate refused) is tried again after this long.
pub const REFUSED_REDIAL: Duration = Duration::from_secs(30);

/// Errors of the LAN path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LanError {
    /// A socket.
    #[error("LAN: {0}")]
    Io(#[from] std::io::Error),
    /// TLS set-up or handshake.
    #[error("LAN TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// mDNS.
    #[error("mDNS: {0}")]
    Mdns(#[from] mdns_sd::Error),
    /// The peer did not finish its handshake in time.
    #[error("LAN handshake with {0} timed out")]
    Timeout(SocketAddr),
    /// The peer sent something that is not a LAN frame.
    #[error("LAN link: {0}")]
    Protocol(&'static str),
}

/// How the LAN path runs.
#[derive(Debug, Clone)]
pub struct LanConfig {
    /// This hub's credentials (certificate and identity key) and the cluster CA.
    pub credentials: crate::transport::CredentialsCell,
    /// Where to accept links (`0.0.0.0:0` by default: every interface, any port; mDNS says
    /// which).
    pub listen: SocketAddr,
    /// Advertise and browse by mDNS. Off, links are made only to hubs given with
    /// [`Lan::add_peer`].
    pub mdns: bool,
    /// The revocation list held at start.
    pub revocations: Option<VerifiedRevocations>,
}

/// What the LAN path tells the peer layer.
#[derive(Debug)]
#[non_exhaustive]
pub enum LanEvent {
    /// A verified link to `peer` is up.
    Up {
        /// The peer (as its certificate names it).
        peer: HubId,
        /// Its address.
        addr: SocketAddr,
    },
    /// A peer payload arrived on a link.
    Message {
        /// The sender (as its certificate names it).
        from: HubId,
        /// The payload.
        payload: Vec<u8>,
    },
    /// A link went down; `unsent` is what it took and may not have delivered (to send by the
    /// relay).
    Down {
        /// The peer.
        peer: HubId,
        /// Why.
        reason: String,
        /// Payloads not acknowledged, oldest first.
        unsent: Vec<Vec<u8>>,
    },
    /// A connection was refused in its TLS handshake.
    Refused {
        /// The remote address.
        addr: SocketAddr,
        /// Why (as rustls puts it).
        reason: String,
    },
}

/// A hub seen on the LAN, as `hub status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanPeer {
    /// The hub.
    pub hub_id: HubId,
    /// Where it is reached (the link's address when linked).
    pub addrs: Vec<SocketAddr>,
    /// Whether a verified link is up.
    pub linked: bool,
    /// Whether its last dial failed (nothing answered, or the handshake was refused).
    pub dial_failed: bool,
}

/// The running LAN path. Dropping it stops its tasks and withdraws the mDNS advertisement.
pub struct Lan {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    mdns: Option<mdns_sd::ServiceDaemon>,
}

impl std::fmt::Debug for Lan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lan")
            .field("listen", &self.shared.listen)
            .field("mdns", &self.mdns.is_some())
            .finish_non_exhaustive()
    }
}

/// A cheap handle on the LAN path's state, for status pages.
#[derive(Debug, Clone)]
pub struct LanView {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    me: HubId,
    listen: SocketAddr,
    verifier: Arc<PeerVerifier>,
    credentials: crate::transport::CredentialsCell,
    events: mpsc::Sender<LanEvent>,
    links: Mutex<HashMap<HubId, LinkHandle>>,
    discovered: Mutex<HashMap<HubId, Discovered>>,
    /// Wakes the dialer (a peer seen anew, a link down).
    dial: Notify,
}

impl Lan {
    /// Binds the listener, starts mDNS (if configured) and the dialer. Events arrive on the
    /// returned receiver; read it, or links stop reading (TCP pushes back on the peers).
    pub async fn start(config: LanConfig) -> Result<(Lan, mpsc::Receiver<LanEvent>), LanError> {
        let creds = config.credentials.get();
        let verifier = Arc::new(PeerVerifier::new(&creds, config.revocations));
        // Refused here already if the certificate cannot serve (each link builds its own).
        tls::server_config(&creds, verifier.clone())?;
        let listener = TcpListener::bind(config.listen).await?;
        let listen = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(1024);
        let shared = Arc::new(Shared {
            me: creds.hub_id,
            listen,
            verifier,
            credentials: config.credentials.clone(),
            events: tx,
            links: Mutex::default(),
            discovered: Mutex::default(),
            dial: Notify::new(),
        });
        let mut tasks = vec![
            tokio::spawn(tls::accept_loop(shared.clone(), listener)),
            tokio::spawn(discovery::dial_loop(shared.clone())),
        ];
        let mdns = if config.mdns {
            let (daemon, browse) = discovery::advertise(&shared, &creds)?;
            tasks.push(browse);
            Some(daemon)
        } else {
            tracing::info!(%listen, "LAN: listening (mDNS off)");
            None
        };
        Ok((
            Lan {
                shared,
                tasks,
                mdns,
            },
            rx,
        ))
    }

    /// Where links are accepted.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.listen
    }

    /// A handle on the state, for status pages.
    pub fn view(&self) -> LanView {
        LanView {
            shared: self.shared.clone(),
        }
    }

    /// Makes `hub` known at `addrs` as if mDNS had found it (a peer on a network where multicast
    /// does not pass).
    pub fn add_peer(&self, hub: HubId, addrs: Vec<SocketAddr>) {
        self.shared.discovered(hub, addrs);
    }

    /// Forgets `hub` as an mDNS goodbye for it would (not if it is linked).
    pub fn remove_peer(&self, hub: &HubId) {
        self.shared.forget(hub);
    }

    /// Sends `payload` to `to` on its link if one is up and has room; otherwise gives it back
    /// (to send by the relay).
    pub fn try_send(&self, to: HubId, payload: Vec<u8>) -> Result<(), Vec<u8>> {
        let links = self
            .shared
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match links.get(&to) {
            Some(link) => link.tx.try_send(payload).map_err(|e| e.into_inner()),
            None => Err(payload),
        }
    }

    /// Whether a verified link to `hub` is up.
    pub fn is_linked(&self, hub: &HubId) -> bool {
        self.view().is_linked(hub)
    }

    /// A new revocation list: links to revoked hubs are closed, and revoked certificates are
    /// refused from now on.
    pub fn set_revocations(&self, list: VerifiedRevocations) {
        let links = self
            .shared
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (hub, link) in links.iter() {
            if list.revokes(&link.certificate) {
                tracing::info!(peer = %hub, "LAN: closing the link of a revoked hub");
                link.close.send_replace(Some("revoked".into()));
            }
        }
        drop(links);
        if let Ok(mut r) = self.shared.verifier.revocations.write() {
            *r = Some(list);
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let links = self
            .shared
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for link in links.values() {
            link.close.send_replace(Some("hub stopping".into()));
        }
        drop(links);
        if let Some(d) = self.mdns.take() {
            let _ = d.shutdown();
        }
    }
}

impl LanView {
    /// Where links are accepted.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.listen
    }

    /// Whether a verified link to `hub` is up.
    pub fn is_linked(&self, hub: &HubId) -> bool {
        self.shared
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(hub)
    }

    /// The hubs seen on the LAN or linked, by hub id.
    pub fn peers(&self) -> Vec<LanPeer> {
        let links = self
            .shared
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let seen = self
            .shared
            .discovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<LanPeer> = seen
            .iter()
            .map(|(hub, d)| LanPeer {
                hub_id: *hub,
                addrs: links
                    .get(hub)
                    .map_or_else(|| d.addrs.clone(), |l| vec![l.addr]),
                linked: links.contains_key(hub),
                dial_failed: d.failed,
            })
            .collect();
        for (hub, link) in links.iter() {
            if !seen.contains_key(hub) {
                out.push(LanPeer {
                    hub_id: *hub,
                    addrs: vec![link.addr],
                    linked: true,
                    dial_failed: false,
                });
            }
        }
        out.sort_by_key(|p| p.hub_id);
        out
    }
}
