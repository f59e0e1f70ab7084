//! A `Hello` and its login extension, as the room checks them: never a panic, and nothing is
//! admitted without a certificate from the fixture CA (which the fuzzer cannot forge).
#![no_main]

use hub_relay_fuzz::{cluster, NOW};
use libfuzzer_sys::fuzz_target;
use shared_proto::relay::frame::{frames, Frame};
use shared_proto::trust::login::{verify_login, ReplayGuard};

fuzz_target!(|data: &[u8]| {
    let cluster = cluster();
    let mut guard = ReplayGuard::default();
    for frame in frames(data) {
        if let Ok(Frame::Hello(hello)) = frame {
            let admitted = verify_login(&hello, &cluster, NOW, None, &mut guard);
            assert!(admitted.is_err(), "a forged login was admitted");
        }
    }
});
