//! Messages inside a session (`msg`): never a panic, and what decodes encodes to the same
//! bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared_proto::msg::Msg;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Msg::decode(data) {
        assert_eq!(msg.to_vec(), data);
    }
});
