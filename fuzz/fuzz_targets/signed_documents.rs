//! Signed revocation lists and manifests as relays and hubs read them: never a panic, and none
//! verifies for the fixture cluster.
#![no_main]

use hub_relay_fuzz::cluster;
use libfuzzer_sys::fuzz_target;
use shared_proto::trust::{Manifest, RevocationList};

fuzz_target!(|data: &[u8]| {
    let cluster = cluster();
    assert!(RevocationList::verify(data, &cluster).is_err());
    assert!(Manifest::verify(data, &cluster).is_err());
});
