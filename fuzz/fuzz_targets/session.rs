//! What a hub reads from a peer through the relay: handshakes, certificates, transport messages
//! and fragments, as `PeerSessions::handle_incoming` takes them. The input is split into
//! at most 8 payloads (2-byte length prefixes) from two senders. Never a panic, and nothing is
//! delivered from a session the fuzzer could not have keys for.
#![no_main]

use hub_relay_fuzz::{issuer, rng, NOW};
use libfuzzer_sys::fuzz_target;
use shared_proto::session::peer::{Event, PeerSessions};
use shared_proto::HubId;

fuzz_target!(|data: &[u8]| {
    let mut sessions = PeerSessions::new(issuer(), HubId([1; 16]));
    let mut rng = rng();
    let mut rest = data;
    let mut now = NOW;
    for _ in 0..8 {
        if rest.len() < 3 {
            break;
        }
        let from = HubId([2 + (rest[0] & 1); 16]);
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let (payload, tail) = rest[3..].split_at(len);
        let _ = sessions.handle_incoming(from, payload, now, &mut rng);
        now += 1_000;
        sessions.handle_timeout(now, &mut rng);
        rest = tail;
    }
    while let Some(event) = sessions.poll_event() {
        assert!(!matches!(event, Event::Received { .. }), "{event:?}");
    }
});
