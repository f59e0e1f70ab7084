//! Relay messages as both relays and the hub decode them: never a panic, and every frame that
//! decodes encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared_proto::relay::frame::frames;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    for frame in frames(data) {
        let Ok(frame) = frame else { return };
        let again = frame.to_message().expect("a decoded frame encodes");
        assert_eq!(again, rest[..again.len()], "{frame:?}");
        rest = &rest[again.len()..];
    }
});
