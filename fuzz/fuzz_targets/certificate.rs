//! X.509 hub certificates as relays and hubs parse and verify them: never a panic, and none
//! verifies against the fixture CA (the fuzzer cannot sign).
#![no_main]

use hub_relay_fuzz::{ca_key, NOW};
use libfuzzer_sys::fuzz_target;
use shared_proto::trust::PeerCertificate;

fuzz_target!(|data: &[u8]| {
    if let Ok(cert) = PeerCertificate::from_der(data) {
        let _ = cert.hub_id();
        assert!(cert.verify(&ca_key(), NOW, None).is_err());
    }
});
