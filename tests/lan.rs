#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The LAN path.
//!
//! - On loopback, with the LAN path of `hub_client` and hand-made TLS peers: a link comes up
//!   between two hubs of a cluster and carries payloads both ways; a certificate from another
//!   cluster, a revoked one, an expired one, none at all, or one that names another hub than the
//!   one dialed is refused, each with its reason; a revocation closes a link that is up; a peer
//!   that breaks the link's framing loses its link.
//! - In network namespaces (root only): two `hub run` processes on a virtual bridge find each
//!   other by real mDNS multicast and link; a call goes direct (the relay's interfaces see almost
//!   nothing of it); the bridge is cut while calls run and they go on over the relay; the bridge
//!   comes back and the path returns to the LAN. Without the right to create namespaces the test
//!   says so and skips; `HUBRELAY_REQUIRE_NETNS=1` (scripts/test sets it when run as root) makes
//!   that a failure instead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use e2e::netns::{linked, NsHub, TwoHubs};
use e2e::{hub, TestCluster};
use hub_client::transport::lan::{private_key, Lan, LanConfig, LanEvent};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use shared_proto::trust::login::Credentials;
use shared_proto::trust::{RevocationList, VerifiedRevocations};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(15);

async fn start(creds: Arc<Credentials>) -> (Lan, mpsc::Receiver<LanEvent>) {
    Lan::start(LanConfig {
        credentials: creds.into(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        mdns: false,
        revocations: None,
    })
    .await
    .expect("the LAN path starts")
}

/// The next event that `pick` takes, within [`WAIT`].
async fn next<T>(
    events: &mut mpsc::Receiver<LanEvent>,
    what: &str,
    pick: impl Fn(LanEvent) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) => {
                if let Some(t) = pick(e) {
                    return t;
                }
            }
            Ok(None) => panic!("the LAN path stopped while waiting for {what}"),
            Err(_) => panic!("no {what} within {WAIT:?}"),
        }
    }
}

async fn refusal(events: &mut mpsc::Receiver<LanEvent>) -> String {
    next(events, "refusal", |e| match e {
        LanEvent::Refused { reason, .. } => Some(reason),
        LanEvent::Up { peer, .. } => panic!("a link to {peer} came up; a refusal was expected"),
        _ => None,
    })
    .await
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any server certificate: the hand-made peers below test the hub's checks, not their
/// own.
#[derive(Debug)]
struct AcceptAnything;

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Connects to a hub's LAN listener as a TLS client presenting `cert` (or none); returns the
/// stream if the handshake completed on this side.
async fn dial_as(
    addr: SocketAddr,
    cert: Option<&Credentials>,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything));
    let mut config = match cert {
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(c.cert_der.clone())],
                private_key(c),
            )
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![hub_client::transport::lan::ALPN.to_vec()];
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("hub.lan.invalid").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()
}

/// A TLS server presenting `cert` that accepts any number of connections; its address.
async fn serve_as(cert: Arc<Credentials>) -> SocketAddr {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.cert_der.clone())],
            private_key(&cert),
        )
        .expect("server certificate");
    config.alpn_protocols = vec![hub_client::transport::lan::ALPN.to_vec()];
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    addr
}

fn revoking(cluster: &TestCluster, hubs: &[&Credentials]) -> VerifiedRevocations {
    RevocationList::verify(&cluster.revocations(1, hubs), &cluster.id()).expect("a signed list")
}

/// Two hubs of a cluster link (the lower id dials) and payloads cross both ways; a revocation
/// closes the link, and the revoked hub is refused when dialed again.
#[tokio::test]
async fn hubs_of_a_cluster_link_and_a_revocation_cuts_the_link() {
    let cluster = TestCluster::new();
    let (a_creds, b_creds) = (cluster.hub(1), cluster.hub(2));
    let (a, mut a_events) = start(a_creds).await;
    let (b, mut b_events) = start(b_creds.clone()).await;
    assert!(!a.is_linked(&hub(2)));
    assert_eq!(
        a.try_send(hub(2), b"early".to_vec()),
        Err(b"early".to_vec())
    );

    a.add_peer(hub(2), vec![b.local_addr()]);
    let up = |e| match e {
        LanEvent::Up { peer, .. } => Some(peer),
        LanEvent::Refused { reason, .. } => panic!("refused: {reason}"),
        _ => None,
    };
    assert_eq!(next(&mut a_events, "a link up", up).await, hub(2));
    assert_eq!(next(&mut b_events, "a link up", up).await, hub(1));
    assert!(a.is_linked(&hub(2)) && b.is_linked(&hub(1)));

    let message = |e| match e {
        LanEvent::Message { from, payload } => Some((from, payload)),
        _ => None,
    };
    a.try_send(hub(2), b"to b".to_vec())
        .expect("taken by the link");
    assert_eq!(
        next(&mut b_events, "a message", message).await,
        (hub(1), b"to b".to_vec())
    );
    b.try_send(hub(1), b"to a".to_vec())
        .expect("taken by the link");
    assert_eq!(
        next(&mut a_events, "a message", message).await,
        (hub(2), b"to a".to_vec())
    );

    a.set_revocations(revoking(&cluster, &[&b_creds]));
    let reason = next(&mut a_events, "the link down", |e| match e {
        LanEvent::Down { peer, reason, .. } => Some((peer, reason)),
        _ => None,
    })
    .await;
    assert_eq!(reason, (hub(2), "revoked".to_owned()));
    assert!(!a.is_linked(&hub(2)));
    // Dialed again, its certificate is refused.
    let reason = refusal(&mut a_events).await;
    assert!(reason.contains("Revoked"), "{reason}");
    assert!(!a.is_linked(&hub(2)));
}

/// A hub whose certificate an admin issued links with its chain (TLS carries the admin's
/// certificate as an intermediate, both ways); revoking the admin cuts the link.
#[tokio::test]
async fn a_hub_an_admin_certified_links_until_the_admin_is_revoked() {
    let cluster = TestCluster::new();
    let admin = cluster.admin(9);
    let (a_creds, b_creds) = (cluster.hub(1), cluster.hub_issued_by(&admin, 2));
    let (a, mut a_events) = start(a_creds).await;
    let (b, mut b_events) = start(b_creds).await;
    a.add_peer(hub(2), vec![b.local_addr()]);
    let up = |e| match e {
        LanEvent::Up { peer, .. } => Some(peer),
        LanEvent::Refused { reason, .. } => panic!("refused: {reason}"),
        _ => None,
    };
    assert_eq!(next(&mut a_events, "a link up", up).await, hub(2));
    assert_eq!(next(&mut b_events, "a link up", up).await, hub(1));

    let admin_key = *admin.admin_certificate().unwrap().identity_key();
    let list = RevocationList {
        version: 1,
        issued_at_ms: e2e::now_ms(),
        entries: vec![shared_proto::trust::Revocation {
            fingerprint: [0; 32],
            key_hash: shared_proto::trust::key_hash(&admin_key),
            revoked_at_ms: e2e::now_ms(),
            reason: "admin retired".into(),
        }],
    };
    let list = RevocationList::verify(&list.sign(&cluster.ca).unwrap(), &cluster.id()).unwrap();
    a.set_revocations(list);
    let reason = next(&mut a_events, "the link down", |e| match e {
        LanEvent::Down { peer, reason, .. } => Some((peer, reason)),
        _ => None,
    })
    .await;
    assert_eq!(reason, (hub(2), "revoked".to_owned()));
    let reason = refusal(&mut a_events).await;
    assert!(reason.contains("Revoked"), "{reason}");
}

/// A client from another cluster, with a revoked or expired certificate, or with none: refused
/// by the listening hub's checks, each for its reason.
#[tokio::test]
async fn the_listener_refuses_foreign_revoked_expired_and_missing_certificates() {
    let cluster = TestCluster::new();
    let (a, mut events) = start(cluster.hub(1)).await;
    let addr = a.local_addr();

    let foreign = TestCluster::new().hub(2);
    let _ = dial_as(addr, Some(&foreign)).await;
    let reason = refusal(&mut events).await;
    assert!(reason.contains("BadSignature"), "{reason}");

    let _ = dial_as(addr, None).await;
    let reason = refusal(&mut events).await;
    assert!(reason.contains("no certificates"), "{reason}");

    let now = e2e::now_ms();
    let expired = cluster.hub_valid(3, now - 2 * 86_400_000, now - 86_400_000);
    let _ = dial_as(addr, Some(&expired)).await;
    let reason = refusal(&mut events).await;
    assert!(reason.contains("Expired"), "{reason}");

    let revoked = cluster.hub(4);
    a.set_revocations(revoking(&cluster, &[&revoked]));
    let _ = dial_as(addr, Some(&revoked)).await;
    let reason = refusal(&mut events).await;
    assert!(reason.contains("Revoked"), "{reason}");

    // Its own certificate, played back by someone who copied it, is not a peer either.
    let _ = dial_as(addr, Some(&cluster.hub(1))).await;
    let reason = refusal(&mut events).await;
    assert!(
        reason.contains("ApplicationVerificationFailure"),
        "{reason}"
    );

    // A good certificate is admitted (what makes the refusals above mean something).
    let _link = dial_as(addr, Some(&cluster.hub(5))).await;
    let up = next(&mut events, "a link up", |e| match e {
        LanEvent::Up { peer, .. } => Some(peer),
        LanEvent::Refused { reason, .. } => panic!("refused: {reason}"),
        _ => None,
    })
    .await;
    assert_eq!(up, hub(5));
    assert!(a
        .view()
        .peers()
        .iter()
        .any(|p| p.hub_id == hub(5) && p.linked));
}

/// Dialing, a hub refuses a server whose certificate is from another cluster, or names another
/// hub than the one it dialed (the one mDNS advertised).
#[tokio::test]
async fn the_dialer_refuses_a_foreign_certificate_and_another_hubs() {
    let cluster = TestCluster::new();
    let (a, mut events) = start(cluster.hub(1)).await;

    let foreign = serve_as(TestCluster::new().hub(2)).await;
    a.add_peer(hub(2), vec![foreign]);
    let reason = refusal(&mut events).await;
    assert!(reason.contains("BadSignature"), "{reason}");

    let impostor = serve_as(cluster.hub(4)).await;
    a.add_peer(hub(3), vec![impostor]);
    let reason = refusal(&mut events).await;
    assert!(reason.contains("NotValidForName"), "{reason}");
    assert!(!a.is_linked(&hub(3)) && !a.is_linked(&hub(4)));
}

/// A stranger advertising as many false hubs of the cluster as the table holds cannot keep a
/// real one out: records whose handshake was refused make room.
#[tokio::test]
async fn false_records_cannot_keep_a_real_hub_out() {
    let cluster = TestCluster::new();
    let (a, mut events) = start(cluster.hub(1)).await;
    let (b, _b_events) = start(cluster.hub(2)).await;
    let stranger = serve_as(TestCluster::new().hub(3)).await;
    let table = hub_client::transport::lan::MAX_DISCOVERED;
    for i in 0..table {
        let mut id = [0u8; 16];
        id[0] = 0xf0;
        id[14..].copy_from_slice(&(i as u16).to_be_bytes());
        a.add_peer(shared_proto::HubId(id), vec![stranger]);
    }
    for _ in 0..table {
        let reason = refusal(&mut events).await;
        assert!(reason.contains("BadSignature"), "{reason}");
    }
    assert_eq!(a.view().peers().len(), table);
    assert_eq!(
        link_to(&a, &mut events, hub(2), b.local_addr()).await,
        hub(2)
    );
    assert_eq!(a.view().peers().len(), table);
}

/// Gives `a` the address of hub `peer` and waits for a link to come up; the hub it linked to.
async fn link_to(
    a: &Lan,
    events: &mut mpsc::Receiver<LanEvent>,
    peer: shared_proto::HubId,
    addr: SocketAddr,
) -> shared_proto::HubId {
    a.add_peer(peer, vec![addr]);
    next(events, "a link up", |e| match e {
        LanEvent::Up { peer, .. } => Some(peer),
        _ => None,
    })
    .await
}

/// Records pointing where nothing answers fill the table too: any record whose dial failed
/// makes room for a real hub. (Once only a refused TLS handshake did, so records at a dead
/// address kept real hubs off the LAN path for good.)
#[tokio::test]
async fn records_at_dead_addresses_cannot_keep_a_real_hub_out() {
    let cluster = TestCluster::new();
    let (a, mut events) = start(cluster.hub(1)).await;
    let (b, _b_events) = start(cluster.hub(2)).await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let table = hub_client::transport::lan::MAX_DISCOVERED;
    for i in 0..table {
        let mut id = [0u8; 16];
        id[0] = 0xf0;
        id[14..].copy_from_slice(&(i as u16).to_be_bytes());
        a.add_peer(shared_proto::HubId(id), vec![dead]);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !a.view().peers().iter().all(|p| p.dial_failed) {
        assert!(std::time::Instant::now() < deadline, "dials still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.view().peers().len(), table);
    assert_eq!(
        link_to(&a, &mut events, hub(2), b.local_addr()).await,
        hub(2)
    );
    assert_eq!(a.view().peers().len(), table);
}

/// Anyone on the LAN can send a record or a goodbye in a linked hub's name: its addresses stay
/// the link's, and it is not forgotten. (Once a spoofed record replaced its addresses and a
/// goodbye made the hub forget it.) A hub not linked keeps its old addresses beside new ones.
#[tokio::test]
async fn false_records_and_goodbyes_do_not_move_a_linked_hub() {
    let cluster = TestCluster::new();
    let (a, mut events) = start(cluster.hub(1)).await;
    let (b, _b_events) = start(cluster.hub(2)).await;
    let stranger = serve_as(TestCluster::new().hub(3)).await;
    link_to(&a, &mut events, hub(2), b.local_addr()).await;
    let linked_at = held_of(&a, hub(2)).unwrap();
    a.add_peer(hub(2), vec![stranger]);
    a.remove_peer(&hub(2));
    assert!(a.is_linked(&hub(2)));
    assert_eq!(held_of(&a, hub(2)), Some(linked_at));
    // Not linked: a new address goes first, the old one stays.
    let (c, _c_events) = start(cluster.hub(4)).await;
    let unlinked = hub(0x44);
    a.add_peer(unlinked, vec![c.local_addr()]);
    a.add_peer(unlinked, vec![stranger]);
    assert_eq!(held_of(&a, unlinked), Some(vec![stranger, c.local_addr()]));
}

fn held_of(a: &Lan, hub: shared_proto::HubId) -> Option<Vec<SocketAddr>> {
    a.view()
        .peers()
        .into_iter()
        .find(|p| p.hub_id == hub)
        .map(|p| p.addrs)
}

/// A verified peer that sends a frame over the bound loses its link, and the hub goes on.
#[tokio::test]
async fn a_peer_breaking_the_framing_loses_its_link() {
    let cluster = TestCluster::new();
    let (a, mut events) = start(cluster.hub(1)).await;
    let mut link = dial_as(a.local_addr(), Some(&cluster.hub(2)))
        .await
        .expect("handshake");
    next(&mut events, "a link up", |e| match e {
        LanEvent::Up { peer, .. } => Some(peer),
        _ => None,
    })
    .await;
    // A data frame announcing 16 MiB (the bound is 64 KiB).
    let mut frame = vec![0x01];
    frame.extend_from_slice(&(16u32 << 20).to_be_bytes());
    link.write_all(&frame).await.expect("write");
    link.flush().await.expect("flush");
    let (peer, reason) = next(&mut events, "the link down", |e| match e {
        LanEvent::Down { peer, reason, .. } => Some((peer, reason)),
        _ => None,
    })
    .await;
    assert_eq!(peer, hub(2));
    assert!(reason.contains("over"), "{reason}");
    assert!(!a.is_linked(&hub(2)));
    // Still serving: another peer links.
    let _other = dial_as(a.local_addr(), Some(&cluster.hub(3)))
        .await
        .expect("handshake");
    let up = next(&mut events, "a link up", |e| match e {
        LanEvent::Up { peer, .. } => Some(peer),
        _ => None,
    })
    .await;
    assert_eq!(up, hub(3));
}

/// Two hubs on a bridge find each other by mDNS and link; calls go direct; cut the bridge while
/// calls run and they go on over the relay; restore it and the path comes back to the LAN.
#[test]
fn hubs_on_a_lan_link_directly_and_fall_back_to_the_relay() {
    let cluster = match TwoHubs::start(env!("CARGO_BIN_EXE_test-app")) {
        Ok(c) => c,
        Err(e) => {
            let message =
                format!("cannot create network namespaces ({e}): the LAN test is SKIPPED");
            assert!(
                std::env::var_os("HUBRELAY_REQUIRE_NETNS").is_none(),
                "{message}, and HUBRELAY_REQUIRE_NETNS is set"
            );
            eprintln!("{message}");
            return;
        }
    };
    let TwoHubs {
        net, a, b, b_id, ..
    } = &cluster;

    // Found by mDNS over the bridge, and linked (TLS, certificates checked both ways).
    let status = a.ok_when(&["status"], Duration::from_secs(30), "LAN link", linked(1));
    assert!(status.contains(b_id.as_str()), "{status}");
    b.ok_when(&["status"], WAIT, "LAN link", linked(1));
    a.ok_when(&["peers"], WAIT, "path lan", |_| a.path_to(b_id) == "lan");
    let apps = a.api("/api/apps");
    let remote = apps
        .as_array()
        .and_then(|hubs| hubs.iter().find(|h| h["hub_id"] == b_id.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(remote["path"], "lan", "{apps}");

    let size = 1 << 20;
    let call = |hub: &NsHub| {
        let args = format!("{{\"bytes\":{size}}}");
        let out = hub.ok(&["apps", "call", "b", "tools", "blob", "--args", &args]);
        assert!(
            out.matches('x').count() >= size,
            "short result: {} bytes",
            out.len()
        );
    };
    let before = net.relay_bytes();
    call(a);
    let direct = net.relay_bytes() - before;
    eprintln!("over the LAN: {direct} bytes on the relay's links for a {size}-byte result");
    assert!(
        direct < 64 * 1024,
        "a {size}-byte call over the LAN moved {direct} bytes through the relay's links"
    );

    // Cut the bridge while calls run: each one still succeeds (by the relay from the cut on).
    let calls = 12;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let before = net.relay_bytes();
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..calls {
                call(a);
                let _ = done_tx.send(());
            }
        });
        for _ in 0..2 {
            done_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("calls");
        }
        net.set_bridge(false);
    });
    let via_relay = net.relay_bytes() - before;
    eprintln!("bridge cut after 2 of {calls} calls: {via_relay} bytes on the relay's links");
    assert!(
        via_relay > (calls - 2) as u64 * size as u64,
        "after the cut, calls should have gone by the relay; its links moved {via_relay} bytes"
    );
    a.ok_when(&["status"], WAIT, "the link down", linked(0));
    assert_eq!(a.path_to(b_id), "relay");
    call(a);

    // The bridge back: linked again, and calls go direct again.
    net.set_bridge(true);
    a.ok_when(
        &["status"],
        Duration::from_secs(30),
        "LAN link again",
        linked(1),
    );
    a.ok_when(&["peers"], WAIT, "path lan", |_| a.path_to(b_id) == "lan");
    let before = net.relay_bytes();
    call(a);
    let direct = net.relay_bytes() - before;
    assert!(
        direct < 64 * 1024,
        "back on the LAN, a {size}-byte call moved {direct} bytes through the relay's links"
    );
}
