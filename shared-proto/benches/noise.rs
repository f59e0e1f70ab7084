//! Noise benchmarks, each against a baseline measured in the same process:
//!
//! - IK handshakes per second on one core (both sides, certificate checks included), between
//!   hubs meeting for the first time and between hubs that verified each other's certificates
//!   before (rekeys, later sessions), as a ratio;
//! - a whole pairing exchange (request, certificate and manifest signed, answer checked), as a
//!   ratio to one IK handshake;
//! - transport throughput (encrypt + decrypt) for 1 KiB and 64 KiB messages, against raw
//!   ChaCha20-Poly1305 (encrypt + decrypt) on the same buffers, as a ratio.
//!
//! - the floor of a handshake: its X25519 operations, with the sessions' X25519 and with
//!   curve25519-dalek, as ratios.
//!
//! Run: `cargo bench -p shared-proto --features aws-lc --bench noise` (the hub's X25519), or
//! `--features noise` (curve25519-dalek). Each figure is the median
//! of 7 rounds after a warm-up.

// A benchmark measures wall-clock time and panics on setup failure; the sans-IO rule is for the
// library itself.
#![allow(clippy::expect_used, clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::SeedableRng;
use shared_proto::session::noise::{
    public_key, HandshakeReplay, Initiator, LocalIdentity, Responder, Transport, X25519Key,
    MAX_TRANSPORT_PLAINTEXT, X25519_BACKEND,
};
use shared_proto::session::pairing::{JoinRequest, Joiner, PairingRequest, PairingToken};
use shared_proto::trust::{
    fingerprint, CertificateRequest, ClusterCa, Manifest, ManifestMember, PeerCertificate,
    TrustLevel, VerifiedPeer,
};
use shared_proto::HubId;

const NOW: u64 = 1_795_000_000_000;
const ROUNDS: usize = 7;

fn x25519_public(secret: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*secret)).to_bytes()
}

fn hub(ca: &ClusterCa, id: u8) -> (LocalIdentity, VerifiedPeer) {
    let static_secret = [id; 32];
    let identity = SigningKey::from_bytes(&[id + 50; 32]);
    let req = CertificateRequest {
        hub_id: HubId([id; 16]),
        name: format!("hub {id}"),
        trust: TrustLevel::Full,
        roles: vec![],
        identity_key: identity.verifying_key(),
        noise_key: x25519_public(&static_secret),
        not_before_ms: NOW - 1000,
        not_after_ms: NOW + 86_400_000,
    };
    let cert_der = ca
        .issue(&req, &mut StdRng::seed_from_u64(1))
        .expect("issue");
    let cert = PeerCertificate::from_der(&cert_der)
        .and_then(|c| c.verify(&ca.public_key(), NOW, None))
        .expect("verify");
    let local = LocalIdentity {
        cluster: ca.cluster_id(),
        ca_key: ca.public_key(),
        static_secret: static_secret.into(),
        cert_der,
    };
    (local, cert)
}

/// Median time of one call of `f`, over `ROUNDS` rounds of `iters` calls.
fn median_per_call(iters: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..iters / 4 + 1 {
        f();
    }
    let mut rounds: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed() / iters
        })
        .collect();
    rounds.sort();
    rounds[ROUNDS / 2]
}

fn main() {
    let ca = ClusterCa::from_secret(&[3; 32]);
    let (a, a_cert) = hub(&ca, 1);
    let (b, b_cert) = hub(&ca, 2);
    let mut rng = StdRng::seed_from_u64(9);

    // Handshakes: both sides, on this one thread. First meeting: the responder parses and
    // verifies the initiator's certificate (the initiator already holds the responder's, and
    // only re-checks its dates). Known peers (every rekey, every later session): neither side
    // parses or signature-checks a certificate it verified before.
    let mut now = NOW;
    let mut replay = HandshakeReplay::default();
    let mut handshakes = |known: Option<&VerifiedPeer>| {
        median_per_call(500, || {
            now += 1;
            let (init, m1) = Initiator::start(&a, &b_cert, now, &mut rng).expect("start");
            let (_, m2) = Responder::accept(&b, &m1, now, None, &mut replay, known, &mut rng)
                .expect("accept");
            black_box(init.finish(&a, &m2, now, None).expect("finish"));
        })
    };
    let first = handshakes(None);
    let per_handshake = handshakes(Some(&a_cert));
    println!(
        "IK handshake (both sides, one core), first meeting: {:.1} us  ->  {:.0} handshakes/s",
        first.as_secs_f64() * 1e6,
        1.0 / first.as_secs_f64()
    );
    println!(
        "IK handshake (both sides, one core), known peers: {:.1} us  ->  {:.0} handshakes/s ({:.2}x the first meeting's rate)",
        per_handshake.as_secs_f64() * 1e6,
        1.0 / per_handshake.as_secs_f64(),
        first.as_secs_f64() / per_handshake.as_secs_f64()
    );

    // The floor: the X25519 work of one handshake (each side generates an ephemeral key and
    // does four DH: es, ss, ee, se), with the sessions' X25519 and, for comparison, with
    // curve25519-dalek directly.
    let peer_public = public_key(&[6; 32]).expect("public key");
    let mine = X25519Key::from_secret(&[5; 32]).expect("key");
    let floor = median_per_call(500, || {
        for _ in 0..2 {
            black_box(X25519Key::from_secret(black_box(&[5; 32])).expect("key"));
        }
        for _ in 0..8 {
            black_box(mine.agree(black_box(&peer_public)).expect("dh"));
        }
    });
    let dalek_secret = x25519_dalek::StaticSecret::from([5; 32]);
    let dalek_peer = x25519_dalek::PublicKey::from(peer_public);
    let dalek_floor = median_per_call(500, || {
        for _ in 0..2 {
            black_box(x25519_dalek::PublicKey::from(black_box(&dalek_secret)));
        }
        for _ in 0..8 {
            black_box(black_box(&dalek_secret).diffie_hellman(&dalek_peer));
        }
    });
    println!(
        "  X25519 ({X25519_BACKEND}): one handshake's 2 key generations + 8 DH: {:.1} us ({:.0}% of a first meeting; the handshake is {:.2}x its floor); curve25519-dalek: {:.1} us ({:.2}x)",
        floor.as_secs_f64() * 1e6,
        100.0 * floor.as_secs_f64() / first.as_secs_f64(),
        first.as_secs_f64() / floor.as_secs_f64(),
        dalek_floor.as_secs_f64() * 1e6,
        dalek_floor.as_secs_f64() / floor.as_secs_f64()
    );

    // What a first meeting spends on the certificate it parses and verifies.
    let per_cert = median_per_call(2_000, || {
        let cert = PeerCertificate::from_der(black_box(&a.cert_der)).expect("parse");
        black_box(cert.verify(&ca.public_key(), NOW, None).expect("verify"));
    });
    println!(
        "  a certificate parse + verify: {:.1} us ({:.0}% of a first meeting)",
        per_cert.as_secs_f64() * 1e6,
        100.0 * per_cert.as_secs_f64() / first.as_secs_f64()
    );

    // Pairing: the new hub's request, the issuer reading it, signing a certificate and a
    // manifest of 50 members, answering, and the new hub checking the answer.
    let token = PairingToken {
        relay_url: "wss://relay.example".into(),
        cluster: ca.cluster_id(),
        issuer: a_cert.hub_id(),
        issuer_noise_key: *a_cert.noise_key(),
        secret: [7; 32],
    };
    let joiner_identity = SigningKey::from_bytes(&[77; 32]);
    let members: Vec<ManifestMember> = (0..49u8)
        .map(|i| ManifestMember {
            hub_id: HubId([i; 16]),
            fingerprint: [i; 32],
            trust: TrustLevel::AgentDispatch,
            roles: vec!["laptop".into()],
        })
        .collect();
    let per_pairing = median_per_call(200, || {
        let request = JoinRequest {
            name: "laptop",
            identity: &joiner_identity,
            noise_secret: &[78; 32],
        };
        let (joiner, m1) = Joiner::start(&token, &request, &mut rng).expect("start");
        let req = PairingRequest::read(&a, a_cert.hub_id(), &m1, &mut rng).expect("read");
        let cert = ca
            .issue(
                &CertificateRequest {
                    hub_id: HubId([0xee; 16]),
                    name: req.name.clone(),
                    trust: TrustLevel::AgentDispatch,
                    roles: vec![],
                    identity_key: req.identity_key,
                    noise_key: req.noise_key,
                    not_before_ms: NOW - 1000,
                    not_after_ms: NOW + 86_400_000,
                },
                &mut rng,
            )
            .expect("issue");
        let mut all = members.clone();
        all.push(ManifestMember {
            hub_id: HubId([0xee; 16]),
            fingerprint: fingerprint(&cert),
            trust: TrustLevel::AgentDispatch,
            roles: vec![],
        });
        let manifest = Manifest {
            epoch: 51,
            issued_at_ms: NOW,
            members: all,
        }
        .sign(&ca)
        .expect("sign");
        let answer = req.accept(&a, &cert, &manifest, None).expect("accept");
        black_box(joiner.finish(&answer, NOW).expect("finish"));
    });
    println!(
        "pairing exchange (both sides, 50-member manifest): {:.1} us  ->  {:.2}x one first-meeting IK handshake",
        per_pairing.as_secs_f64() * 1e6,
        per_pairing.as_secs_f64() / first.as_secs_f64()
    );

    let (init, m1) = Initiator::start(&a, &b_cert, NOW, &mut rng).expect("start");
    let (mut tb, m2) = Responder::accept(
        &b,
        &m1,
        NOW,
        None,
        &mut HandshakeReplay::default(),
        None,
        &mut rng,
    )
    .expect("accept");
    let mut ta: Transport = init.finish(&a, &m2, NOW, None).expect("finish");

    let cipher = ChaCha20Poly1305::new(&[7u8; 32].into());
    for size in [1024usize, MAX_TRANSPORT_PLAINTEXT] {
        let plaintext = vec![0x5au8; size];
        let mut wire = Vec::with_capacity(size + 64);
        let mut out = Vec::with_capacity(size + 64);
        let iters = if size <= 1024 { 20_000 } else { 400 };
        let noise = median_per_call(iters, || {
            wire.clear();
            ta.encrypt(black_box(&plaintext), NOW, &mut wire)
                .expect("encrypt");
            tb.decrypt(&wire, NOW, &mut out).expect("decrypt");
            black_box(&out);
        });
        let mut buf = plaintext.clone();
        let mut counter = 0u64;
        let raw = median_per_call(iters, || {
            counter += 1;
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&counter.to_le_bytes());
            let nonce = Nonce::from(nonce);
            let tag = cipher
                .encrypt_in_place_detached(&nonce, &[], black_box(&mut buf))
                .expect("raw encrypt");
            cipher
                .decrypt_in_place_detached(&nonce, &[], &mut buf, &tag)
                .expect("raw decrypt");
            black_box(&buf);
        });
        let mib_s = |d: Duration| size as f64 / d.as_secs_f64() / (1024.0 * 1024.0);
        println!(
            "transport {:>6} B: noise {:>7.1} MiB/s, raw ChaCha20-Poly1305 {:>7.1} MiB/s, ratio noise/raw {:.2}",
            size,
            mib_s(noise),
            mib_s(raw),
            raw.as_secs_f64() / noise.as_secs_f64()
        );
    }
}
