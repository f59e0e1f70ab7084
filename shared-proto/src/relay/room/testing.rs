//! What the room's tests share: a test CA, members' logins, rooms, and readers of actions.

use std::sync::atomic::{AtomicU64, Ordering};

use ed25519_dalek::SigningKey;
pub(crate) use rand::rngs::StdRng;
pub(crate) use rand::SeedableRng;

pub(crate) use super::{
    Action, ConnId, MemberInfo, Room, RoomConfig, Sockets, GUEST_LIFETIME_MS, IDLE_TIMEOUT_MS,
    MAX_PENDING, PRESENCE_WINDOW_MS,
};
pub(crate) use crate::relay::close::CloseCode;
pub(crate) use crate::relay::frame::{
    decode_message, Frame, HubId, RoomStatus, FRAME_HEADER_LEN, HUB_ID_LEN, ROUTING_HEADER_LEN,
};
pub(crate) use crate::relay::rate::Limits;
use crate::trust::cert::tests::request;
pub(crate) use crate::trust::cert::tests::NOW;
pub(crate) use crate::trust::login::LoginNonce;
use crate::trust::login::{Credentials, PAIRING_EXTENSION};
pub(crate) use crate::trust::ClusterCa;
use crate::trust::{Revocation, RevocationList};

pub(crate) fn hub(b: u8) -> HubId {
    HubId([b; 16])
}

pub(crate) fn ca() -> ClusterCa {
    ClusterCa::from_secret(&[42; 32])
}

/// A member's credentials: hub `h`'s key and certificate from the test CA.
pub(crate) fn creds(h: HubId) -> Credentials {
    let identity = SigningKey::from_bytes(&[h.0[0]; 32]);
    let mut req = request(h.0[0], &identity);
    req.hub_id = h;
    let cert_der = ca().issue(&req, &mut StdRng::seed_from_u64(1)).unwrap();
    Credentials {
        ca_key: ca().public_key(),
        cert_der,
        hub_id: h,
        identity,
    }
}

/// A `Hello` with a fresh login (a new nonce each call).
pub(crate) fn hello(h: HubId) -> Vec<u8> {
    static SEED: AtomicU64 = AtomicU64::new(0);
    let mut rng = StdRng::seed_from_u64(SEED.fetch_add(1, Ordering::Relaxed));
    let c = creds(h);
    let ext = c.login(NOW, &mut rng);
    Frame::Hello(c.hello(&ext)).to_message().unwrap()
}

pub(crate) fn send(dst: HubId, payload: &[u8]) -> Vec<u8> {
    Frame::Send { dst, payload }.to_message().unwrap()
}

/// The frames sent to `conn`, decoded, one inner Vec per message.
pub(crate) fn sent_to(actions: &[Action], conn: ConnId) -> Vec<Vec<Frame<'_>>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { conn: c, message } if *c == conn => {
                Some(decode_message(message).unwrap())
            }
            _ => None,
        })
        .collect()
}

pub(crate) fn closes(actions: &[Action]) -> Vec<(ConnId, CloseCode)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Close { conn, code, .. } => Some((*conn, *code)),
            _ => None,
        })
        .collect()
}

pub(crate) fn join(room: &mut Room, conn: u64, h: HubId) -> Vec<Action> {
    let mut out = Vec::new();
    room.handle_connect(ConnId(conn), NOW, Some(h), &mut out);
    room.handle_message(ConnId(conn), NOW, &hello(h), &mut out);
    out
}

/// A room that announces each presence change at once (the window has its own test).
pub(crate) fn room() -> Room {
    Room::new(RoomConfig {
        presence_window_ms: 0,
        ..RoomConfig::new(ca().cluster_id(), 42)
    })
}

pub(crate) fn guest_hello(guest: HubId, issuer: HubId) -> Vec<u8> {
    let mut hello = crate::relay::frame::Hello::new(guest);
    hello.extensions.push(crate::relay::frame::Extension {
        kind: PAIRING_EXTENSION,
        data: issuer.as_bytes(),
    });
    Frame::Hello(hello).to_message().unwrap()
}

pub(crate) fn guest_join(
    room: &mut Room,
    conn: u64,
    guest: HubId,
    issuer: HubId,
    at: u64,
) -> Vec<Action> {
    let mut out = Vec::new();
    room.handle_connect(ConnId(conn), at, Some(guest), &mut out);
    room.handle_message(ConnId(conn), at, &guest_hello(guest, issuer), &mut out);
    out
}

/// The member info last stored for `conn` by these actions.
pub(crate) fn stored_member(actions: &[Action], conn: ConnId) -> MemberInfo {
    actions
        .iter()
        .rev()
        .find_map(|a| match a {
            Action::Admitted { conn: c, member } if *c == conn => Some(*member),
            _ => None,
        })
        .expect("an Admitted action")
}

pub(crate) fn join_at(room: &mut Room, conn: u64, h: HubId, at: u64) -> Vec<Action> {
    let mut out = Vec::new();
    room.handle_connect(ConnId(conn), at, Some(h), &mut out);
    room.handle_message(ConnId(conn), at, &hello(h), &mut out);
    out
}

/// The `RateLimited` frames sent to `conn`: (whose limit, retry after, dropped).
pub(crate) fn notices(actions: &[Action], conn: ConnId) -> Vec<(HubId, u32, u32)> {
    sent_to(actions, conn)
        .into_iter()
        .flatten()
        .filter_map(|f| match f {
            Frame::RateLimited {
                limited,
                retry_after_ms,
                dropped,
            } => Some((limited, retry_after_ms, dropped)),
            _ => None,
        })
        .collect()
}

pub(crate) fn recvs(actions: &[Action], conn: ConnId) -> usize {
    sent_to(actions, conn)
        .into_iter()
        .flatten()
        .filter(|f| matches!(f, Frame::Recv { .. }))
        .count()
}

/// A room whose members may send `per_s` frames a second in bursts of `burst`, with no
/// other limit that a test reaches.
pub(crate) fn frame_limited_room(per_s: u64, burst: u64) -> Room {
    use crate::relay::rate::Rate;
    let big = Rate::new(1 << 30, 1 << 30);
    limited_room(Limits {
        send_frames: Rate::new(per_s, burst),
        send_bytes: big,
        recv_bytes: big,
    })
}

pub(crate) fn limited_room(limits: Limits) -> Room {
    Room::new(RoomConfig {
        limits,
        presence_window_ms: 0,
        ..RoomConfig::new(ca().cluster_id(), 42)
    })
}

/// Sockets that record what happened and refuse messages for some connections.
#[derive(Default)]
pub(crate) struct Recorder {
    pub(crate) refuse: Vec<ConnId>,
    pub(crate) sent: Vec<ConnId>,
    pub(crate) closed: Vec<(ConnId, CloseCode)>,
    pub(crate) admitted: Vec<(ConnId, HubId)>,
    pub(crate) stored: Vec<Vec<u8>>,
}

impl Sockets for Recorder {
    fn send(&mut self, conn: ConnId, _message: Vec<u8>) -> Result<(), CloseCode> {
        if self.refuse.contains(&conn) {
            return Err(CloseCode::SlowConsumer);
        }
        self.sent.push(conn);
        Ok(())
    }
    fn close(&mut self, conn: ConnId, code: CloseCode, _reason: String) {
        self.closed.push((conn, code));
    }
    fn admitted(&mut self, conn: ConnId, member: MemberInfo) {
        self.admitted.push((conn, member.hub));
    }
    fn store_revocations(&mut self, bytes: Vec<u8>) {
        self.stored.push(bytes);
    }
    fn store_successor(&mut self, bytes: Vec<u8>) {
        self.stored.push(bytes);
    }
    fn remember_login(&mut self, _login: LoginNonce) {}
}

pub(crate) fn member(b: u8) -> MemberInfo {
    MemberInfo {
        hub: hub(b),
        fingerprint: [b; 32],
        key_hash: [b; 32],
        issuer: None,
        guest_of: None,
        admitted_ms: NOW,
        sends: 0,
    }
}

pub(crate) fn revoking(version: u64, h: HubId) -> Vec<u8> {
    let fp = crate::trust::fingerprint(&creds(h).cert_der);
    RevocationList {
        version,
        issued_at_ms: NOW,
        entries: vec![Revocation {
            fingerprint: fp,
            key_hash: [0; 32],
            revoked_at_ms: NOW,
            reason: "lost".into(),
        }],
    }
    .sign(&ca())
    .unwrap()
}

/// The message `forward` would send: the routing header it gives, then the payload as is.
pub(crate) fn forwarded(
    room: &mut Room,
    conn: u64,
    at: u64,
    message: &[u8],
) -> Option<(ConnId, Vec<u8>)> {
    let fwd = room.forward(ConnId(conn), at, message, message.len())?;
    let mut out = fwd.header.to_vec();
    out.extend_from_slice(&message[ROUTING_HEADER_LEN..]);
    Some((fwd.conn, out))
}
