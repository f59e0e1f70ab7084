//! What a peer hands the agent surface: a delegation envelope as a call carries it
//! (`SignedDelegation::decode` and `check`, for a fixed peer key, target and call) and a signed audit head
//! (`audit::Head::verify`), and a quorum views message (`audit::Views::decode`). Nothing verifies
//! (the fuzzer does not hold the key); an envelope that decodes re-encodes to the same body, and
//! so does a views message.
#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use shared_proto::agent::SignedDelegation;
use shared_proto::audit::{Head, Views};
use shared_proto::HubId;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
    let peer = HubId([1; 16]);
    let me = HubId([2; 16]);
    if let Ok(envelope) = SignedDelegation::decode(data) {
        let checked = envelope.check(peer, &key, me, 1_800_000_000_000, "a", "t", b"{}");
        assert!(checked.is_err(), "a forged envelope verified");
        let signed = envelope
            .delegation
            .sign(&SigningKey::from_bytes(&[9; 32]))
            .expect("decoded fields fit");
        assert_eq!(signed[..signed.len() - 64], data[..data.len() - 64]);
    }
    assert!(
        Head::verify(data, peer, &key).is_err(),
        "a forged head verified"
    );
    if let Ok(views) = Views::decode(data) {
        assert_eq!(views.encode(), data, "views re-encode to the same bytes");
    }
});
