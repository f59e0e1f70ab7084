//! A pairing request as the issuer reads it from a guest it does not know: never a panic, never
//! a request accepted without a Noise handshake to the issuer's key.
#![no_main]

use hub_relay_fuzz::{issuer, rng};
use libfuzzer_sys::fuzz_target;
use shared_proto::session::pairing::PairingRequest;
use shared_proto::HubId;

fuzz_target!(|data: &[u8]| {
    let issuer = issuer();
    let mut rng = rng();
    assert!(PairingRequest::read(&issuer, HubId([1; 16]), data, &mut rng).is_err());
});
