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

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ed25519_dalek::Signature;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use shared_proto::relay::frame::MAX_PAYLOAD;
use shared_proto::trust::login::Credentials;
use shared_proto::trust::{PeerCertificate, TrustError, VerifiedPeer, VerifiedRevocations};
use shared_proto::HubId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinHandle;

/// The DNS-SD service type hubs advertise and browse for.
pub const SERVICE_TYPE: &str = "_aiappuse._tcp.local.";

/// The LAN protocol version (TXT `v`).
pub const LAN_VERSION: &str = "1";

/// The TLS application protocol of a LAN link.
pub const ALPN: &[u8] = b"hub-lan/1";

/// A link sends a keepalive when it has sent nothing for this long...
pub const KEEPALIVE: Duration = Duration::from_millis(500);

/// ... and is closed when nothing arrived on it for this long.
pub const DEAD_AFTER: Duration = Duration::from_secs(2);

/// A TCP connect plus TLS handshake must finish within this long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes sent on a link and not acknowledged yet, past which sends go by the relay.
pub const MAX_UNACKED_BYTES: usize = 4 * 1024 * 1024;

/// Payloads sent on a link and not acknowledged yet, past which sends go by the relay: well
/// inside the session's replay window (`shared_proto::session::noise::REPLAY_WINDOW`), so that
/// what a dropped link hands back to the relay is never too old for the peer to accept.
pub const MAX_UNACKED_FRAMES: usize = 2048;

/// Payloads waiting for a link's writer; past it, sends go by the relay.
pub const LINK_QUEUE: usize = 256;

/// Hubs of this cluster seen on the LAN that are kept (others are ignored until one goes).
pub const MAX_DISCOVERED: usize = 256;

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

const DATA: u8 = 0x01;
const ACK: u8 = 0x02;
const KEEPALIVE_FRAME: u8 = 0x03;
const HEADER: usize = 5;

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
    pub credentials: Arc<Credentials>,
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
    server: Arc<rustls::ServerConfig>,
    credentials: Arc<Credentials>,
    events: mpsc::Sender<LanEvent>,
    links: Mutex<HashMap<HubId, LinkHandle>>,
    discovered: Mutex<HashMap<HubId, Discovered>>,
    /// Wakes the dialer (a peer seen anew, a link down).
    dial: Notify,
}

#[derive(Debug)]
struct LinkHandle {
    id: u64,
    addr: SocketAddr,
    dialed_by: HubId,
    tx: mpsc::Sender<Vec<u8>>,
    close: watch::Sender<Option<String>>,
    fingerprint: [u8; 32],
    key_hash: [u8; 32],
}

#[derive(Debug)]
struct Discovered {
    addrs: Vec<SocketAddr>,
    /// Its last dial was refused in the TLS handshake (not a hub of this cluster, or revoked):
    /// the first to go when the table is full.
    refused: bool,
    since: Instant,
    dialing: bool,
    next_dial: Instant,
}

impl Lan {
    /// Binds the listener, starts mDNS (if configured) and the dialer. Events arrive on the
    /// returned receiver; read it, or links stop reading (TCP pushes back on the peers).
    pub async fn start(config: LanConfig) -> Result<(Lan, mpsc::Receiver<LanEvent>), LanError> {
        let creds = config.credentials.clone();
        let verifier = Arc::new(PeerVerifier::new(&creds, config.revocations));
        let server = server_config(&creds, verifier.clone())?;
        let listener = TcpListener::bind(config.listen).await?;
        let listen = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(1024);
        let shared = Arc::new(Shared {
            me: creds.hub_id,
            listen,
            verifier,
            server,
            credentials: creds.clone(),
            events: tx,
            links: Mutex::default(),
            discovered: Mutex::default(),
            dial: Notify::new(),
        });
        let mut tasks = vec![
            tokio::spawn(accept_loop(shared.clone(), listener)),
            tokio::spawn(dial_loop(shared.clone())),
        ];
        let mdns = if config.mdns {
            let daemon = mdns_sd::ServiceDaemon::new()?;
            let cluster = shared_proto::trust::ClusterId::from_ca_key(&creds.ca_key);
            let hub = creds.hub_id.to_string();
            let host = format!("hub-{}.local.", &hub[..12]);
            let txt = [
                ("c", cluster.as_str()),
                ("h", hub.as_str()),
                ("v", LAN_VERSION),
            ];
            let info =
                mdns_sd::ServiceInfo::new(SERVICE_TYPE, &hub, &host, "", listen.port(), &txt[..])?
                    .enable_addr_auto();
            daemon.register(info)?;
            let browse = daemon.browse(SERVICE_TYPE)?;
            tasks.push(tokio::spawn(browse_loop(
                shared.clone(),
                browse,
                cluster.as_str().to_owned(),
            )));
            tracing::info!(%listen, "LAN: advertising {SERVICE_TYPE} and listening");
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
            if list.is_revoked(&link.fingerprint, &link.key_hash) {
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
            })
            .collect();
        for (hub, link) in links.iter() {
            if !seen.contains_key(hub) {
                out.push(LanPeer {
                    hub_id: *hub,
                    addrs: vec![link.addr],
                    linked: true,
                });
            }
        }
        out.sort_by_key(|p| p.hub_id);
        out
    }
}

impl Shared {
    fn discovered(&self, hub: HubId, addrs: Vec<SocketAddr>) {
        if hub == self.me || addrs.is_empty() {
            return;
        }
        let mut seen = self
            .discovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if let Some(d) = seen.get_mut(&hub) {
            // Seen at new addresses: dial at once (not for the same ones again).
            if d.addrs == addrs {
                return;
            }
            d.addrs = addrs;
            d.next_dial = now;
        } else {
            if seen.len() >= MAX_DISCOVERED {
                // Full: a record that failed its handshake makes room (a stranger advertising
                // many false hubs cannot keep the real ones out); otherwise the new one waits.
                let Some(refused) = seen.iter().find(|(_, d)| d.refused).map(|(h, _)| *h) else {
                    tracing::debug!(peer = %hub, "LAN: {MAX_DISCOVERED} hubs known already; ignored");
                    return;
                };
                seen.remove(&refused);
            }
            tracing::info!(peer = %hub, ?addrs, "LAN: found a hub of this cluster");
            seen.insert(
                hub,
                Discovered {
                    addrs,
                    refused: false,
                    since: now,
                    dialing: false,
                    next_dial: now,
                },
            );
        }
        drop(seen);
        self.dial.notify_one();
    }

    fn forget(&self, hub: &HubId) {
        let mut seen = self
            .discovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if seen.remove(hub).is_some() {
            tracing::info!(peer = %hub, "LAN: hub no longer advertised");
        }
    }

    fn client_config(&self, expect: HubId) -> Result<Arc<rustls::ClientConfig>, LanError> {
        let verifier = Arc::new(self.verifier.expecting(expect));
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(
                vec![CertificateDer::from(self.credentials.cert_der.clone())],
                private_key(&self.credentials),
            )?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Arc::new(config))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The hub's Ed25519 identity key as PKCS#8 v1 (RFC 8410: a fixed prefix, then the seed), the
/// private key of its certificate for TLS.
pub fn private_key(creds: &Credentials) -> PrivateKeyDer<'static> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(creds.identity.as_bytes());
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))
}

fn server_config(
    creds: &Credentials,
    verifier: Arc<PeerVerifier>,
) -> Result<Arc<rustls::ServerConfig>, LanError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(creds.cert_der.clone())],
            private_key(creds),
        )?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Checks a LAN peer's certificate: the cluster CA's signature, its dates, the revocation list,
/// not this hub's own, and (dialing) the hub id that was advertised. No web PKI.
#[derive(Debug)]
pub struct PeerVerifier {
    me: HubId,
    ca_key: ed25519_dalek::VerifyingKey,
    revocations: Arc<RwLock<Option<VerifiedRevocations>>>,
    expect: Option<HubId>,
}

impl PeerVerifier {
    fn new(creds: &Credentials, revocations: Option<VerifiedRevocations>) -> Self {
        PeerVerifier {
            me: creds.hub_id,
            ca_key: creds.ca_key,
            revocations: Arc::new(RwLock::new(revocations)),
            expect: None,
        }
    }

    fn expecting(&self, hub: HubId) -> PeerVerifier {
        PeerVerifier {
            me: self.me,
            ca_key: self.ca_key,
            revocations: self.revocations.clone(),
            expect: Some(hub),
        }
    }

    /// The certificate `der` verified at `now`.
    pub fn check(&self, der: &[u8], now: UnixTime) -> Result<VerifiedPeer, rustls::Error> {
        let cert = PeerCertificate::from_der(der)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let revocations = self
            .revocations
            .read()
            .map_err(|_| rustls::Error::General("revocation list unavailable".into()))?;
        let verified = cert
            .verify(&self.ca_key, now.as_secs() * 1000, revocations.as_ref())
            .map_err(|e| {
                rustls::Error::InvalidCertificate(match e {
                    TrustError::Expired => CertificateError::Expired,
                    TrustError::NotYetValid => CertificateError::NotValidYet,
                    TrustError::Revoked => CertificateError::Revoked,
                    TrustError::BadSignature(_) => CertificateError::BadSignature,
                    _ => CertificateError::BadEncoding,
                })
            })?;
        if verified.hub_id() == self.me {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        if self.expect.is_some_and(|e| e != verified.hub_id()) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        Ok(verified)
    }

    fn check_signature(
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ));
        }
        let cert = PeerCertificate::from_der(cert)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let sig = Signature::from_slice(dss.signature())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
        cert.identity_key()
            .verify_strict(message, &sig)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
        Ok(HandshakeSignatureValid::assertion())
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The verified peer of a finished TLS handshake.
fn peer_of(
    shared: &Shared,
    certs: Option<&[CertificateDer<'static>]>,
) -> Result<VerifiedPeer, rustls::Error> {
    let der = certs
        .and_then(|c| c.first())
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    shared.verifier.check(der, UnixTime::now())
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.server.clone());
    let handshaking = Arc::new(Semaphore::new(MAX_HANDSHAKING));
    loop {
        let Ok(permit) = handshaking.clone().acquire_owned().await else {
            return;
        };
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("LAN: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(permit);
            let tls = match tls {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return refused(&shared, addr, e.to_string()).await,
                Err(_) => return refused(&shared, addr, "handshake timed out".into()).await,
            };
            let peer = match peer_of(&shared, tls.get_ref().1.peer_certificates()) {
                Ok(p) => p,
                Err(e) => return refused(&shared, addr, e.to_string()).await,
            };
            run_link(shared, tls.into(), addr, peer, false).await;
        });
    }
}

async fn refused(shared: &Shared, addr: SocketAddr, reason: String) {
    tracing::warn!(%addr, "LAN: connection refused: {reason}");
    let _ = shared.events.send(LanEvent::Refused { addr, reason }).await;
}

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

async fn dial_loop(shared: Arc<Shared>) {
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
            d.refused = redial == REFUSED_REDIAL;
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

type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(
    shared: &Shared,
    hub: HubId,
    addr: SocketAddr,
) -> Result<(ClientTls, VerifiedPeer), LanError> {
    let connector = tokio_rustls::TlsConnector::from(shared.client_config(hub)?);
    let name = ServerName::try_from(format!("{hub}.lan.invalid"))
        .map_err(|_| LanError::Protocol("server name"))?;
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        // A TLS failure (the peer's certificate refused, say) comes back as an I/O error.
        connector.connect(name, tcp).await.map_err(|e| {
            match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(tls) => LanError::Tls(tls.clone()),
                None => LanError::Io(e),
            }
        })
    };
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt)
        .await
        .map_err(|_| LanError::Timeout(addr))??;
    let peer = peer_of(shared, tls.get_ref().1.peer_certificates())?;
    Ok((tls, peer))
}

static NEXT_LINK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Registers a verified link and runs it until it drops.
async fn run_link(
    shared: Arc<Shared>,
    tls: tokio_rustls::TlsStream<TcpStream>,
    addr: SocketAddr,
    peer: VerifiedPeer,
    dialed: bool,
) {
    let hub = peer.hub_id();
    let dialed_by = if dialed { shared.me } else { hub };
    let id = NEXT_LINK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    let (close, close_rx) = watch::channel(None);
    {
        let mut links = shared.links.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = links.get(&hub) {
            // Two links at once (both dialed): both sides keep the one the lower hub dialed.
            if old.dialed_by <= dialed_by {
                tracing::debug!(peer = %hub, "LAN: a second link closed");
                return;
            }
            old.close.send_replace(Some("replaced".into()));
        } else if links.len() >= MAX_LINKS {
            tracing::warn!(peer = %hub, "LAN: {MAX_LINKS} links up already; refused");
            return;
        }
        links.insert(
            hub,
            LinkHandle {
                id,
                addr,
                dialed_by,
                tx,
                close,
                fingerprint: peer.fingerprint(),
                key_hash: peer.key_hash(),
            },
        );
    }
    tracing::info!(peer = %hub, %addr, "LAN: link up (TLS 1.3, certificate verified)");
    let _ = shared.events.send(LanEvent::Up { peer: hub, addr }).await;
    let (reason, unsent) = Link::run(tls, rx, close_rx, hub, &shared.events).await;
    {
        let mut links = shared.links.lock().unwrap_or_else(PoisonError::into_inner);
        if links.get(&hub).is_some_and(|l| l.id == id) {
            links.remove(&hub);
        }
    }
    tracing::info!(peer = %hub, "LAN: link down: {reason}");
    let _ = shared
        .events
        .send(LanEvent::Down {
            peer: hub,
            reason,
            unsent,
        })
        .await;
    shared.dial.notify_one();
}

/// One link's two halves.
struct Link;

impl Link {
    /// Runs the link until it drops; returns why and what it did not deliver.
    async fn run<S>(
        stream: S,
        mut rx: mpsc::Receiver<Vec<u8>>,
        mut close: watch::Receiver<Option<String>>,
        peer: HubId,
        events: &mpsc::Sender<LanEvent>,
    ) -> (String, Vec<Vec<u8>>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (reader, mut writer) = tokio::io::split(stream);
        let (received_tx, mut received_rx) = watch::channel(0u64);
        let (acked_tx, mut acked_rx) = watch::channel(0u64);
        let events = events.clone();
        let mut read_task = tokio::spawn(read_half(reader, peer, events, received_tx, acked_tx));
        let mut unacked: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
        let mut unacked_bytes = 0usize;
        let mut sent = 0u64;
        let mut last_write = Instant::now();
        let mut tick = tokio::time::interval(KEEPALIVE / 2);
        let mut frame = Vec::new();
        let reason = loop {
            tokio::select! {
                r = &mut read_task => {
                    break match r {
                        Ok(reason) => reason,
                        Err(e) => format!("reader failed: {e}"),
                    };
                }
                _ = close.changed() => {
                    break close.borrow().clone().unwrap_or_else(|| "closed".into());
                }
                payload = rx.recv(), if unacked_bytes < MAX_UNACKED_BYTES
                    && unacked.len() < MAX_UNACKED_FRAMES => {
                    let Some(payload) = payload else { break "hub stopping".into() };
                    frame.clear();
                    put_frame(&mut frame, DATA, &payload);
                    // More waiting: one write for all (up to 64 KiB), one flush.
                    let mut batch = vec![payload];
                    while frame.len() < 64 * 1024 && unacked.len() + batch.len() < MAX_UNACKED_FRAMES {
                        let Ok(next) = rx.try_recv() else { break };
                        put_frame(&mut frame, DATA, &next);
                        batch.push(next);
                    }
                    if let Err(e) = write(&mut writer, &frame).await {
                        unacked.extend(batch.into_iter().map(|p| (0, p)));
                        break e;
                    }
                    for p in batch {
                        sent += 1;
                        unacked_bytes += p.len();
                        unacked.push_back((sent, p));
                    }
                    last_write = Instant::now();
                }
                _ = acked_rx.changed() => {
                    let acked = *acked_rx.borrow_and_update();
                    while unacked.front().is_some_and(|(seq, _)| *seq <= acked) {
                        if let Some((_, p)) = unacked.pop_front() {
                            unacked_bytes -= p.len();
                        }
                    }
                }
                _ = received_rx.changed() => {
                    let received = *received_rx.borrow_and_update();
                    frame.clear();
                    put_frame(&mut frame, ACK, &received.to_be_bytes());
                    if let Err(e) = write(&mut writer, &frame).await {
                        break e;
                    }
                    last_write = Instant::now();
                }
                _ = tick.tick() => {
                    if last_write.elapsed() >= KEEPALIVE {
                        frame.clear();
                        put_frame(&mut frame, KEEPALIVE_FRAME, &[]);
                        if let Err(e) = write(&mut writer, &frame).await {
                            break e;
                        }
                        last_write = Instant::now();
                    }
                }
            }
        };
        read_task.abort();
        let _ = tokio::time::timeout(Duration::from_millis(200), writer.shutdown()).await;
        let mut unsent: Vec<Vec<u8>> = unacked.into_iter().map(|(_, p)| p).collect();
        rx.close();
        while let Ok(p) = rx.try_recv() {
            unsent.push(p);
        }
        (reason, unsent)
    }
}

fn put_frame(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

async fn write<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> Result<(), String> {
    let io = async {
        w.write_all(bytes).await?;
        w.flush().await
    };
    match tokio::time::timeout(DEAD_AFTER, io).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {e}")),
        Err(_) => Err(format!("nothing could be written for {DEAD_AFTER:?}")),
    }
}

/// Reads frames until the link fails; returns why.
async fn read_half<R: AsyncRead + Unpin>(
    mut reader: R,
    peer: HubId,
    events: mpsc::Sender<LanEvent>,
    received: watch::Sender<u64>,
    acked: watch::Sender<u64>,
) -> String {
    let mut count = 0u64;
    let mut header = [0u8; HEADER];
    loop {
        match tokio::time::timeout(DEAD_AFTER, reader.read_exact(&mut header)).await {
            Err(_) => return format!("nothing arrived for {DEAD_AFTER:?}"),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return "closed by the peer".into()
            }
            Ok(Err(e)) => return format!("read failed: {e}"),
            Ok(Ok(_)) => {}
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let max = match header[0] {
            DATA => MAX_PAYLOAD,
            ACK => 8,
            KEEPALIVE_FRAME => 0,
            _ => return format!("unknown frame type {:#04x}", header[0]),
        };
        if len > max {
            return format!("frame of {len} bytes over {max}");
        }
        let mut body = vec![0u8; len];
        match tokio::time::timeout(DEAD_AFTER, reader.read_exact(&mut body)).await {
            Err(_) => return format!("nothing arrived for {DEAD_AFTER:?}"),
            Ok(Err(e)) => return format!("read failed: {e}"),
            Ok(Ok(_)) => {}
        }
        match header[0] {
            DATA => {
                let event = LanEvent::Message {
                    from: peer,
                    payload: body,
                };
                if events.send(event).await.is_err() {
                    return "hub stopping".into();
                }
                count += 1;
                received.send_replace(count);
            }
            ACK => {
                let Ok(n) = <[u8; 8]>::try_from(body.as_slice()) else {
                    return "malformed ack".into();
                };
                acked.send_replace(u64::from_be_bytes(n));
            }
            _ => {}
        }
    }
}
