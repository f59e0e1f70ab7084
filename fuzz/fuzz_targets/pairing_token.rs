//! Pairing tokens as `hub join` reads them from a user: never a panic; a token that parses
//! prints back to one that parses to the same token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared_proto::session::pairing::PairingToken;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(token) = PairingToken::parse(&text) {
        let text = token.encode().expect("a token that parses encodes");
        assert_eq!(PairingToken::parse(&text).ok(), Some(token));
    }
});
