//! A pairing answer as a joiner reads it from the relay, after sending its request: never a
//! panic, never a pairing without the issuer's handshake answer.
#![no_main]

use ed25519_dalek::SigningKey;
use hub_relay_fuzz::{issuer, rng, NOW};
use libfuzzer_sys::fuzz_target;
use shared_proto::session::pairing::{JoinRequest, Joiner, PairingToken};
use shared_proto::HubId;

fuzz_target!(|data: &[u8]| {
    let issuer = issuer();
    let token = PairingToken {
        relay_url: "ws://127.0.0.1:1".into(),
        cluster: issuer.cluster.clone(),
        issuer: HubId([1; 16]),
        issuer_noise_key: shared_proto::session::noise::public_key(&[1; 32]).unwrap_or([0; 32]),
        secret: [9; 32],
    };
    let identity = SigningKey::from_bytes(&[5; 32]);
    let request = JoinRequest {
        name: "fuzz",
        identity: &identity,
        noise_secret: &[5; 32],
    };
    if let Ok((joiner, _)) = Joiner::start(&token, &request, &mut rng()) {
        assert!(joiner.finish(data, NOW).is_err());
    }
});
