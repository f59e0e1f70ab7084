//! The room as a relay drives it: a socket that has not said Hello, a member and a pairing
//! guest each receive the input as one message. Never a panic; every close has a reason within
//! the WebSocket limit; the room's own sends decode.
#![no_main]

use hub_relay_fuzz::{cluster, NOW};
use libfuzzer_sys::fuzz_target;
use shared_proto::relay::frame::decode_message;
use shared_proto::relay::room::{Action, ConnId, MemberInfo, Room, RoomConfig};
use shared_proto::HubId;

fuzz_target!(|data: &[u8]| {
    let mut room = Room::new(RoomConfig::new(cluster(), NOW));
    let mut out = Vec::new();
    let member = |b: u8, guest_of: Option<HubId>| MemberInfo {
        hub: HubId([b; 16]),
        fingerprint: [b; 32],
        key_hash: [b; 32],
        issuer: None,
        guest_of,
        admitted_ms: NOW,
        sends: 0,
    };
    room.restore(
        ConnId(1),
        NOW,
        Some(HubId([1; 16])),
        Some(member(1, None)),
        NOW,
        &mut out,
    );
    room.restore(
        ConnId(2),
        NOW,
        Some(HubId([2; 16])),
        Some(member(2, None)),
        NOW,
        &mut out,
    );
    room.restore(
        ConnId(3),
        NOW,
        Some(HubId([3; 16])),
        Some(member(3, Some(HubId([1; 16])))),
        NOW,
        &mut out,
    );
    room.handle_connect(ConnId(4), NOW, Some(HubId([4; 16])), &mut out);
    room.handle_connect(ConnId(5), NOW, None, &mut out);
    for conn in [4, 5, 1, 3] {
        room.handle_message(ConnId(conn), NOW + 1, data, &mut out);
    }
    room.handle_timeout(NOW + 3_600_000, &mut out);
    for action in &out {
        match action {
            Action::Send { message, .. } => {
                decode_message(message).expect("the room sends what decodes");
            }
            Action::Close { reason, .. } => assert!(reason.len() <= 123),
            _ => {}
        }
    }
});
