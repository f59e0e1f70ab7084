//! A decrypted pairing answer as a joiner reads it: the CA key (the fixture cluster's, so that
//! it names the token's cluster), then the input as the new certificate, the issuer's
//! certificate, the manifest and the revocation list, each length-prefixed. Never a panic,
//! never a pairing with certificates the fuzzer cannot have had signed. (Reaching this point
//! takes the issuer's Noise answer, which the fuzzer cannot make; the target starts after it.)
#![no_main]

use ed25519_dalek::SigningKey;
use hub_relay_fuzz::{ca_key, cluster, NOW};
use libfuzzer_sys::fuzz_target;
use shared_proto::session::pairing::fuzzing::read_accepted_answer;
use shared_proto::session::pairing::PairingToken;
use shared_proto::HubId;

fuzz_target!(|data: &[u8]| {
    let token = PairingToken {
        relay_url: "ws://127.0.0.1:1".into(),
        cluster: cluster(),
        issuer: HubId([1; 16]),
        issuer_noise_key: [1; 32],
        secret: [9; 32],
    };
    let identity = SigningKey::from_bytes(&[5; 32]).verifying_key();
    let answer = read_accepted_answer(&ca_key(), data, &token, &identity, &[5; 32], NOW);
    assert!(answer.is_err());
});
