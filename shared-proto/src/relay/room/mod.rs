//! The room: one cluster's hubs on one relay, as a pure state machine.
//!
//! A relay (the Durable Object, or `hub relay`) owns the sockets and calls, for each socket:
//!
//! 0. before it opens a WebSocket, [`Room::kept_out`] for the hub the connect URL names
//!    (`relay::path::claimed_hub`): a hub kept out for its rate is answered `429` without one;
//! 1. [`Room::handle_connect`] when the WebSocket opens (or [`Room::restore`] when it rebuilds the
//!    room after a hibernation, from what it stored per socket on [`Action::Admitted`]);
//! 2. [`Room::handle_message`] for every binary message (and [`Room::handle_keepalive`] for a
//!    keepalive the relay answered itself);
//! 3. [`Room::handle_disconnect`] when the socket closes or errors;
//! 4. after any of these, [`Room::poll_timeout`]: the earliest deadline of the room, at which the
//!    relay calls [`Room::handle_timeout`] (a timer task, or the Durable Object's one alarm).
//!
//! Each call appends [`Action`]s to a buffer the caller owns; the caller performs them in order.
//! The room never reads a clock, draws randomness or touches a socket, so the same logic runs in
//! wasm32 inside workerd and natively under tokio, and is tested here without either. Every
//! deadline of the protocol lives here, on the caller's clock (Unix ms), so both relays obey one
//! rule: a socket must say `Hello` within [`HELLO_TIMEOUT_MS`], a pairing guest may stay
//! [`GUEST_LIFETIME_MS`], and, where the relay sets [`RoomConfig::idle_timeout_ms`], a member must
//! send something (a keepalive at least) that often.
//!
//! Admission: a `Hello` must carry a certificate login for the room's cluster
//! (`cluster::login`); the room checks it against the cluster id, the clock the caller passes, the
//! revocation list it holds and the nonces it has seen. A member may publish a newer signed
//! revocation list: the room keeps it (and asks the relay to store it), closes every member it
//! revokes, and delivers it to every member, and to each hub that joins later.
//!
//! Frames of a message are handled in order. A protocol violation closes only the offending
//! connection; frames before it in the same message may already have been routed. Payloads for
//! the same destination produced by one incoming message are batched into one outgoing message.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the room's state, its inputs (`handle_*`) and the dispatch of frames |
//! | `conns.rs` | the table of sockets and their deadlines, [`Room::poll_timeout`], [`Room::handle_timeout`] |
//! | `admission.rs` | `Hello`: logins, admission and replacement, [`Room::restore`], revocation lists |
//! | `guests.rs` | pairing guests |
//! | `presence.rs` | presence, gathered and announced |
//! | `limits.rs` | each member's fair share, rate-limit notices, flooders closed and kept out |
//! | `forward.rs` | a member's `Send`: the one rule, and the fast path [`Room::forward`] |

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::relay::close::CloseCode;
use crate::relay::frame::{
    frames, Frame, FrameError, FrameType, HubId, RoomStatus, FRAME_HEADER_LEN, HUB_ID_LEN,
    MAX_MESSAGE, MAX_ROOM_MEMBERS, PROTOCOL_VERSION,
};
use crate::relay::rate::{Limits, CLOSE_AFTER_MS};
use crate::trust::login::{LoginError, LoginNonce, ReplayGuard};
use crate::trust::rotation::VerifiedSuccessor;
use crate::trust::{ClusterId, TrustError, VerifiedRevocations};

mod admission;
mod conns;
mod forward;
mod guests;
mod limits;
mod presence;
#[cfg(test)]
pub(crate) mod testing;

pub use forward::Forward;
use guests::Guest;
pub use guests::{
    GUEST_LIFETIME_MS, GUEST_WINDOW_MS, MAX_GUESTS, MAX_GUEST_ADMISSIONS, MAX_GUEST_PAYLOAD,
    MAX_GUEST_SENDS,
};
use limits::{MemberRate, Penalty};
use presence::{Change, Presence};
pub use presence::{MAX_PRESENCE_LOG, PRESENCE_WINDOW_MS};

/// Why the room closes a socket. Each maps to one close code ([`RoomError::close_code`]); the
/// text is the close reason, for logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoomError {
    /// A malformed frame or message.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame type that only the relay sends.
    #[error("{0:?} frames flow from the relay to hubs only")]
    RelayOnlyFrame(FrameType),
    /// A `Hello` of a protocol version this relay does not speak.
    #[error("protocol version {0} is not supported; this relay speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion(u8),
    /// The first frame was not a `Hello`.
    #[error("the first frame must be a Hello")]
    HelloRequired,
    /// A second `Hello`.
    #[error("a connection sends Hello only once")]
    SecondHello,
    /// A frame a member may not send.
    #[error("unexpected {0:?} frame")]
    Unexpected(FrameType),
    /// A frame a pairing guest may not send.
    #[error("a pairing guest may not send {0:?}")]
    GuestFrame(FrameType),
    /// A `Hello` with both a login and a pairing request.
    #[error("a Hello carries a login or a pairing request, not both")]
    LoginAndPairing,
    /// A pairing extension that is not a hub id.
    #[error("the pairing extension is the issuer's 16-byte hub id")]
    BadPairingExtension,
    /// The login was refused (each reason has its own code).
    #[error(transparent)]
    Login(#[from] LoginError),
    /// The room holds the most hubs it admits.
    #[error("the room admits at most {0} hubs")]
    RoomFull(usize),
    /// A pairing guest chose a hub id in use in the room.
    #[error("that hub id is in use in this room")]
    HubIdInUse,
    /// The pairing token's issuer is not online.
    #[error("the issuing hub {0} is not online")]
    IssuerOffline(HubId),
    /// The room holds the most pairing guests it admits.
    #[error("the room holds {MAX_GUESTS} pairing guests already")]
    TooManyGuests,
    /// Pairing guests arrive faster than the room admits them.
    #[error("at most {MAX_GUEST_ADMISSIONS} pairing guests a minute")]
    GuestRate,
    /// A pairing guest went past its allowance.
    #[error("{0}")]
    GuestLimit(&'static str),
    /// A pairing guest sent a payload past its size.
    #[error("a pairing guest sends at most {MAX_GUEST_PAYLOAD} bytes at once")]
    GuestTooLarge,
    /// A revocation list not signed by the cluster CA, or malformed.
    #[error("revocation list refused: {0}")]
    Revocations(TrustError),
    /// A successor document not signed by the cluster CA, malformed, or other than the one the
    /// room keeps.
    #[error("successor document refused: {0}")]
    Successor(TrustError),
    /// The cluster moved to a new CA key and its grace period ended: no more logins here.
    #[error("the cluster moved to {0}")]
    Moved(ClusterId),
    /// A member went on sending past its rate limit after being told.
    #[error("rate-limited: still sending past the limit {} s after being told", CLOSE_AFTER_MS / 1000)]
    RateLimited,
    /// A member sent more than a burst of its limit past it at once.
    #[error("rate-limited: flooding (a burst of its limit dropped at once)")]
    Flooding,
    /// A hub closed for its rate is logging in again before its time is up.
    #[error("rate-limited: closed for flooding; log in again in {} s", .0.div_ceil(1000))]
    Penalized(u64),
    /// The `Hello` names another hub than the connect URL did.
    #[error("the Hello names another hub than the connect URL (?hub=)")]
    NotTheNamedHub,
}

impl RoomError {
    /// The close code the relay sends for it.
    pub fn close_code(&self) -> CloseCode {
        match self {
            RoomError::Frame(e) => e.close_code(),
            RoomError::Login(e) => e.close_code(),
            RoomError::UnsupportedVersion(_) => CloseCode::UnsupportedVersion,
            RoomError::HelloRequired => CloseCode::HelloRequired,
            RoomError::RoomFull(_) => CloseCode::RoomFull,
            RoomError::IssuerOffline(_) => CloseCode::IssuerOffline,
            RoomError::TooManyGuests | RoomError::GuestRate => CloseCode::TryAgainLater,
            RoomError::GuestLimit(_) => CloseCode::GuestLimit,
            RoomError::GuestTooLarge => CloseCode::TooLarge,
            RoomError::RateLimited | RoomError::Flooding | RoomError::Penalized(_) => {
                CloseCode::RateLimited
            }
            RoomError::RelayOnlyFrame(_)
            | RoomError::SecondHello
            | RoomError::NotTheNamedHub
            | RoomError::Unexpected(_)
            | RoomError::GuestFrame(_)
            | RoomError::LoginAndPairing
            | RoomError::BadPairingExtension
            | RoomError::HubIdInUse
            | RoomError::Revocations(_)
            | RoomError::Successor(_) => CloseCode::ProtocolError,
            RoomError::Moved(_) => CloseCode::Moved,
        }
    }
}

/// A relay's handle for one socket; unique among the room's open sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// What the relay must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Action {
    /// Send one binary WebSocket message (one or more frames) on a socket.
    Send {
        /// The socket.
        conn: ConnId,
        /// The whole message.
        message: Vec<u8>,
    },
    /// Close a socket with a code and a short reason (at most 123 bytes).
    Close {
        /// The socket.
        conn: ConnId,
        /// Why.
        code: CloseCode,
        /// Human-readable detail for logs; never secret.
        reason: String,
    },
    /// The socket's hub was admitted, or what must be kept of it changed (a pairing guest's
    /// message count): store this with the socket, replacing what was stored (it must survive
    /// hibernation, and is handed back through [`Room::restore`]).
    Admitted {
        /// The socket.
        conn: ConnId,
        /// Who it is.
        member: MemberInfo,
    },
    /// A login was accepted: remember its nonce durably until it expires, and hand it back
    /// through [`Room::remember_login`] when the room is rebuilt, so it cannot be replayed.
    RememberLogin(LoginNonce),
    /// A newer revocation list was accepted: store it durably (it is handed back through
    /// [`Room::set_revocations`] when the room is rebuilt).
    StoreRevocations {
        /// The signed list.
        bytes: Vec<u8>,
    },
    /// A successor document was accepted (the first and only one): store it durably (it is
    /// handed back through [`Room::set_successor`] when the room is rebuilt).
    StoreSuccessor {
        /// The signed document.
        bytes: Vec<u8>,
    },
    /// A hub was closed for flooding and is kept out until `until_ms`, its `strikes`-th time:
    /// keep this (replacing the hub's earlier one) while the room may hibernate, and hand it back
    /// through [`Room::restore_penalty`] when the room is rebuilt.
    Penalized {
        /// The hub.
        hub: HubId,
        /// Kept out until then (Unix ms).
        until_ms: u64,
        /// How many times in a row.
        strikes: u32,
    },
}

impl MemberInfo {
    /// Whether `list` revokes this hub's certificate or the admin certificate that issued it
    /// (what [`VerifiedRevocations::revokes`] says of a verified certificate).
    pub fn revoked_by(&self, list: &VerifiedRevocations) -> bool {
        list.is_revoked(&self.fingerprint, &self.key_hash)
            || self.issuer.is_some_and(|(f, k)| list.is_revoked(&f, &k))
    }
}

/// What the room remembers of an admitted socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberInfo {
    /// The hub's id (for a pairing guest, the id it chose).
    pub hub: HubId,
    /// SHA-256 of its certificate (zero for a guest).
    pub fingerprint: [u8; 32],
    /// SHA-256 of its identity key (zero for a guest).
    pub key_hash: [u8; 32],
    /// For a hub whose certificate an admin issued: the admin certificate's fingerprint and key
    /// hash (revoking the admin revokes it too).
    pub issuer: Option<([u8; 32], [u8; 32])>,
    /// For a pairing guest: the member that issued its token, the only hub it may talk to.
    pub guest_of: Option<HubId>,
    /// When it was admitted (Unix ms): a pairing guest's lifetime counts from here.
    pub admitted_ms: u64,
    /// For a pairing guest: how many `Send` frames it has sent.
    pub sends: u32,
}

/// How long a socket may stay open without sending its `Hello`; then it is closed with `4003`.
pub const HELLO_TIMEOUT_MS: u64 = 10_000;

/// Most sockets a room holds that have not said `Hello` yet; past that, a new socket is closed
/// at once with `1013` (the others keep their place until their [`HELLO_TIMEOUT_MS`]).
pub const MAX_PENDING: usize = 256;

/// The idle timeout `hub relay` sets ([`RoomConfig::idle_timeout_ms`]): a member that sends
/// nothing, not even a keepalive, for this long is closed with `4008`. Hubs send a keepalive
/// every 25 s by default.
pub const IDLE_TIMEOUT_MS: u64 = 150_000;

/// The sockets of a relay, as [`Room::perform`] drives them.
pub trait Sockets {
    /// Sends one message on `conn`. An `Err` means the socket cannot take it: the room then
    /// closes it with the returned code and forgets it.
    fn send(&mut self, conn: ConnId, message: Vec<u8>) -> Result<(), CloseCode>;
    /// Closes `conn` with a code and reason, and forgets it.
    fn close(&mut self, conn: ConnId, code: CloseCode, reason: String);
    /// Stores `member` with `conn` so that [`Room::restore`] can be given it after a hibernation.
    fn admitted(&mut self, conn: ConnId, member: MemberInfo);
    /// Stores the room's newest revocation list durably.
    fn store_revocations(&mut self, bytes: Vec<u8>);
    /// Stores the room's successor document durably.
    fn store_successor(&mut self, bytes: Vec<u8>);
    /// Remembers an accepted login's nonce durably (until `timestamp_ms` + the skew).
    fn remember_login(&mut self, login: LoginNonce);
    /// Keeps a hub's penalty while the room may be rebuilt (a relay whose room lives as long as
    /// the process needs nothing here).
    fn store_penalty(&mut self, _hub: HubId, _until_ms: u64, _strikes: u32) {}
}

/// Settings of one room.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// The cluster whose room this is (from the URL).
    pub cluster: ClusterId,
    /// When this instance of the room started (Unix ms), reported in `Status`.
    pub instance_started_ms: u64,
    /// Most hubs admitted at once.
    pub max_members: usize,
    /// A member that sends nothing for this long is closed with `4008` (`None`: never). The
    /// Durable Object leaves it off: the runtime answers keepalives without waking the room,
    /// and an idle room must not be woken by a timer.
    pub idle_timeout_ms: Option<u64>,
    /// What each member may send and be sent ([`crate::relay::rate`]).
    pub limits: Limits,
    /// Presence changes within this long after an announcement are gathered into one
    /// (default [`PRESENCE_WINDOW_MS`]; 0 announces each at once).
    pub presence_window_ms: u64,
}

impl RoomConfig {
    /// Defaults, for `cluster`, with the caller's start time.
    pub fn new(cluster: ClusterId, instance_started_ms: u64) -> Self {
        RoomConfig {
            cluster,
            instance_started_ms,
            max_members: MAX_ROOM_MEMBERS,
            idle_timeout_ms: None,
            limits: Limits::default(),
            presence_window_ms: PRESENCE_WINDOW_MS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// Open, no `Hello` yet; the connect URL named this hub, if any.
    AwaitingHello(Option<HubId>),
    Member(MemberInfo),
    Guest {
        hub: HubId,
        issuer: HubId,
    },
}

/// An open socket: its state and its deadline (also a key of `Room::timers`).
#[derive(Debug, Clone, Copy)]
struct Conn {
    state: ConnState,
    deadline: Option<u64>,
    /// For a member: its rate limits.
    rate: Option<MemberRate>,
    /// For a member: how much of the presence log it has been told.
    seen: usize,
}

/// One cluster's room. See the module docs for the calling order.
#[derive(Debug)]
pub struct Room {
    config: RoomConfig,
    conns: HashMap<ConnId, Conn>,
    /// Every socket's deadline, earliest first.
    timers: BTreeSet<(u64, ConnId)>,
    pending: usize,
    members: BTreeMap<HubId, ConnId>,
    guests: HashMap<HubId, Guest>,
    guest_admissions: std::collections::VecDeque<u64>,
    replays: ReplayGuard,
    revocations: Option<VerifiedRevocations>,
    /// The old CA's successor document, once a member published one.
    successor: Option<VerifiedSuccessor>,
    presence: Presence,
    /// Hubs closed with `4009`: until when they are refused, and how many times.
    penalized: HashMap<HubId, Penalty>,
    /// The latest time the caller gave (Unix ms), for what happens without one (a socket that
    /// refused a message).
    now_ms: u64,
}

/// Outgoing messages of one `handle_message` call, batched per destination.
#[derive(Debug, Default)]
struct Outbox {
    pending: Vec<(ConnId, Vec<u8>)>,
}

impl Outbox {
    fn push(&mut self, conn: ConnId, frame: &Frame<'_>, out: &mut Vec<Action>) {
        let idx = match self.pending.iter().position(|(c, _)| *c == conn) {
            Some(i) => i,
            None => {
                self.pending.push((conn, Vec::new()));
                self.pending.len() - 1
            }
        };
        let buf = &mut self.pending[idx].1;
        let before = buf.len();
        if let Err(e) = frame.encode(buf) {
            // The room only builds frames within the limits from frames it decoded; this would
            // be a bug, reported to the one socket rather than sent as a corrupt frame.
            out.push(encode_failed(conn, &e));
            return;
        }
        if buf.len() > MAX_MESSAGE && before > 0 {
            // Over the message limit: send what was there and start a new batch with this frame.
            let tail = buf.split_off(before);
            let full = std::mem::replace(buf, tail);
            out.push(Action::Send {
                conn,
                message: full,
            });
        }
    }

    fn flush(&mut self, out: &mut Vec<Action>) {
        for (conn, message) in self.pending.drain(..) {
            out.push(Action::Send { conn, message });
        }
    }
}

impl Room {
    /// An empty room.
    pub fn new(config: RoomConfig) -> Self {
        Room {
            config,
            conns: HashMap::new(),
            timers: BTreeSet::new(),
            pending: 0,
            members: BTreeMap::new(),
            guests: HashMap::new(),
            guest_admissions: std::collections::VecDeque::new(),
            replays: ReplayGuard::default(),
            revocations: None,
            successor: None,
            presence: Presence::default(),
            penalized: HashMap::new(),
            now_ms: 0,
        }
    }

    /// The cluster whose room this is.
    pub fn cluster(&self) -> &ClusterId {
        &self.config.cluster
    }

    /// The newest revocation list the room holds.
    pub fn revocations(&self) -> Option<&VerifiedRevocations> {
        self.revocations.as_ref()
    }

    /// The successor document the room keeps, if the cluster moved.
    pub fn successor(&self) -> Option<&VerifiedSuccessor> {
        self.successor.as_ref()
    }

    /// Gives the room the nonce of a login accepted before it was rebuilt.
    pub fn remember_login(&mut self, login: LoginNonce) {
        self.replays.remember(login);
    }

    /// Whether the room holds no socket and no nonce that could still be replayed at `now_ms`:
    /// forgetting it then loses nothing.
    pub fn is_idle(&mut self, now_ms: u64) -> bool {
        self.replays.prune(now_ms);
        self.conns.is_empty()
            && self.replays.is_empty()
            && self.penalized.values().all(|p| p.until_ms <= now_ms)
    }

    /// The hubs online, in ascending order.
    pub fn online(&self) -> impl Iterator<Item = HubId> + '_ {
        self.members.keys().copied()
    }

    /// The socket a hub is connected on.
    pub fn conn_of(&self, hub: &HubId) -> Option<ConnId> {
        self.members.get(hub).copied()
    }

    /// The hub a socket was admitted as; `None` before its `Hello` or once it is gone.
    pub fn hub_of(&self, conn: ConnId) -> Option<HubId> {
        match self.conns.get(&conn).map(|c| c.state) {
            Some(ConnState::Member(m)) => Some(m.hub),
            _ => None,
        }
    }

    /// Number of open sockets, admitted or not.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// A socket opened at `now_ms` by a connect URL that named `hub` (`?hub=`; `None` for a
    /// client that names none, as protocol version 1 first allowed). Its first frame must be a
    /// `Hello` (of that hub, if named) within [`HELLO_TIMEOUT_MS`]; past [`MAX_PENDING`] such
    /// sockets it is closed at once.
    pub fn handle_connect(
        &mut self,
        conn: ConnId,
        now_ms: u64,
        hub: Option<HubId>,
        out: &mut Vec<Action>,
    ) {
        self.handle_timeout(now_ms, out);
        if self.pending >= MAX_PENDING {
            out.push(Action::Close {
                conn,
                code: CloseCode::TryAgainLater,
                reason: format!("{MAX_PENDING} connections are waiting for their Hello already"),
            });
            return;
        }
        self.insert(
            conn,
            ConnState::AwaitingHello(hub),
            Some(now_ms.saturating_add(HELLO_TIMEOUT_MS)),
            now_ms,
        );
    }

    /// The relay answered a keepalive of `conn` itself: it counts as activity.
    pub fn handle_keepalive(&mut self, conn: ConnId, now_ms: u64) {
        self.tick(now_ms);
        self.touch(conn, now_ms);
    }

    fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// Carries out `actions` on `sockets`, in order. A socket that refuses a message is closed
    /// with the code it gave and leaves the room; the presence that causes is carried out too.
    pub fn perform(&mut self, actions: Vec<Action>, sockets: &mut impl Sockets) {
        let mut queue = actions;
        while !queue.is_empty() {
            let mut follow_up = Vec::new();
            for action in queue {
                match action {
                    Action::Send { conn, message } => {
                        if let Err(code) = sockets.send(conn, message) {
                            self.refused_message(conn, code, sockets, &mut follow_up);
                        }
                    }
                    Action::Close { conn, code, reason } => sockets.close(conn, code, reason),
                    Action::Admitted { conn, member } => sockets.admitted(conn, member),
                    Action::StoreRevocations { bytes } => sockets.store_revocations(bytes),
                    Action::StoreSuccessor { bytes } => sockets.store_successor(bytes),
                    Action::RememberLogin(login) => sockets.remember_login(login),
                    Action::Penalized {
                        hub,
                        until_ms,
                        strikes,
                    } => sockets.store_penalty(hub, until_ms, strikes),
                }
            }
            queue = follow_up;
        }
    }

    /// A socket refused a message the relay sent it (outside [`Room::perform`], which calls this
    /// itself): it is closed with `code` and leaves the room; what that causes goes to `out`.
    pub fn refused_message(
        &mut self,
        conn: ConnId,
        code: CloseCode,
        sockets: &mut impl Sockets,
        out: &mut Vec<Action>,
    ) {
        sockets.close(conn, code, "the socket did not take a message".into());
        self.disconnected(conn, out);
    }

    /// A socket closed (by either side) or failed, at `now_ms`.
    pub fn handle_disconnect(&mut self, conn: ConnId, now_ms: u64, out: &mut Vec<Action>) {
        self.tick(now_ms);
        self.disconnected(conn, out);
    }

    fn disconnected(&mut self, conn: ConnId, out: &mut Vec<Action>) {
        let hub = match self.forget(conn) {
            Some(ConnState::Member(MemberInfo { hub, .. })) => hub,
            Some(ConnState::Guest { hub, .. }) => {
                self.guests.remove(&hub);
                return;
            }
            _ => return,
        };
        if self.members.get(&hub) != Some(&conn) {
            return;
        }
        self.members.remove(&hub);
        let orphans: Vec<ConnId> = self
            .guests
            .values()
            .filter(|g| g.info.guest_of == Some(hub))
            .map(|g| g.conn)
            .collect();
        for guest in orphans {
            let reason = "the issuer of the pairing token left".to_owned();
            self.close(guest, CloseCode::IssuerOffline, reason, out);
        }
        self.announce(hub, Change::Left, out);
    }

    /// A text message arrived that the relay did not answer itself (keepalives are answered
    /// without the room). Text is not part of the protocol: the socket is closed.
    pub fn handle_text(&mut self, conn: ConnId, out: &mut Vec<Action>) {
        self.close(
            conn,
            CloseCode::ProtocolError,
            "text messages other than the keepalive are not part of the protocol".into(),
            out,
        );
    }

    /// A binary message arrived on `conn` at `now_ms` (Unix ms, the relay's clock).
    pub fn handle_message(
        &mut self,
        conn: ConnId,
        now_ms: u64,
        message: &[u8],
        out: &mut Vec<Action>,
    ) {
        let mut outbox = Outbox::default();
        self.tick(now_ms);
        self.touch(conn, now_ms);
        for frame in frames(message) {
            let Some(state) = self.conns.get(&conn).map(|c| c.state) else {
                // Closed by an earlier frame of this message, or unknown to the room.
                break;
            };
            match frame {
                Err(e) => {
                    outbox.flush(out);
                    self.refuse(conn, e, out);
                    return;
                }
                Ok(frame) => {
                    if let Err(e) = self.handle_frame(conn, now_ms, state, frame, &mut outbox, out)
                    {
                        outbox.flush(out);
                        self.close(conn, e.close_code(), e.to_string(), out);
                        return;
                    }
                }
            }
        }
        outbox.flush(out);
    }

    fn handle_frame(
        &mut self,
        conn: ConnId,
        now_ms: u64,
        state: ConnState,
        frame: Frame<'_>,
        outbox: &mut Outbox,
        out: &mut Vec<Action>,
    ) -> Result<(), RoomError> {
        let ty = frame.frame_type();
        if !ty.is_hub_to_relay() {
            return Err(RoomError::RelayOnlyFrame(ty));
        }
        let cost = wire_len(&frame);
        if let (ConnState::Member(m), Frame::Send { dst, payload }) = (state, &frame) {
            return self.member_send(conn, m.hub, *dst, payload, cost, now_ms, outbox, out);
        }
        if let ConnState::Member(m) = state {
            let charged = match self.conns.get_mut(&conn).and_then(|c| c.rate.as_mut()) {
                Some(rate) => rate.send(cost, now_ms),
                None => Ok(()),
            };
            if let Err(wait) = charged {
                let dropped = self.dropped(conn, m.hub, wait, Some(cost), now_ms, outbox, out);
                if dropped.is_err() {
                    self.penalize(m.hub, now_ms, out);
                }
                return dropped;
            }
        }
        match (state, frame) {
            (ConnState::AwaitingHello(named), Frame::Hello(hello)) => {
                self.hello(conn, now_ms, named, &hello, out)
            }
            (ConnState::AwaitingHello(_), _) => Err(RoomError::HelloRequired),
            (ConnState::Guest { hub, issuer }, Frame::Send { dst, payload }) => {
                self.guest_send(conn, now_ms, hub, issuer, dst, payload, outbox, out)
            }
            (ConnState::Guest { .. }, other) => Err(RoomError::GuestFrame(other.frame_type())),
            (ConnState::Member(_), Frame::Hello(_)) => Err(RoomError::SecondHello),
            (ConnState::Member(_), Frame::RevocationList(doc)) => {
                self.publish_revocations(conn, doc, outbox, out)
            }
            (ConnState::Member(_), Frame::Successor(doc)) => self.publish_successor(conn, doc, out),
            (ConnState::Member(_), Frame::StatusRequest) => {
                let status = RoomStatus {
                    online: self.members.len() as u32,
                    instance_started_ms: self.config.instance_started_ms,
                };
                outbox.push(conn, &Frame::Status(status), out);
                Ok(())
            }
            (ConnState::Member(_), other) => Err(RoomError::Unexpected(other.frame_type())),
        }
    }

    fn refuse(&mut self, conn: ConnId, error: FrameError, out: &mut Vec<Action>) {
        let error = RoomError::Frame(error);
        self.close(conn, error.close_code(), error.to_string(), out);
    }

    /// Closes `conn` and forgets it; the others see it leave if it was a member.
    fn close(&mut self, conn: ConnId, code: CloseCode, mut reason: String, out: &mut Vec<Action>) {
        truncate_reason(&mut reason);
        out.push(Action::Close { conn, code, reason });
        self.disconnected(conn, out);
    }
}

/// A member frame's size on the wire, as the rate limits count it.
fn wire_len(frame: &Frame<'_>) -> u64 {
    let body = match frame {
        Frame::Send { payload, .. } => HUB_ID_LEN + payload.len(),
        Frame::RevocationList(doc) | Frame::Successor(doc) => doc.len(),
        _ => 0,
    };
    (FRAME_HEADER_LEN + body) as u64
}

/// One frame as a message for `conn`.
fn send_one(conn: ConnId, frame: &Frame<'_>) -> Action {
    match frame.to_message() {
        Ok(message) => Action::Send { conn, message },
        Err(e) => encode_failed(conn, &e),
    }
}

/// A frame the room built did not encode: a bug, never a corrupt frame on the wire.
fn encode_failed(conn: ConnId, error: &FrameError) -> Action {
    let mut reason = format!("relay could not encode a frame: {error}");
    truncate_reason(&mut reason);
    Action::Close {
        conn,
        code: CloseCode::InternalError,
        reason,
    }
}

/// A close frame's reason is at most 123 bytes; cut on a character boundary.
fn truncate_reason(reason: &mut String) {
    const MAX: usize = 123;
    if reason.len() > MAX {
        let mut end = MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::room::testing::*;

    #[test]
    fn routes_to_one_hub_only_and_batches_per_destination() {
        let mut r = room();
        for i in 1..=3 {
            let _ = join(&mut r, i, hub(i as u8));
        }
        let mut msg = send(hub(2), b"a");
        msg.extend(send(hub(3), b"b"));
        msg.extend(send(hub(2), b"c"));
        let mut out = Vec::new();
        r.handle_message(ConnId(1), NOW, &msg, &mut out);
        assert_eq!(
            sent_to(&out, ConnId(2)),
            vec![vec![
                Frame::Recv {
                    src: hub(1),
                    payload: b"a"
                },
                Frame::Recv {
                    src: hub(1),
                    payload: b"c"
                }
            ]]
        );
        assert_eq!(
            sent_to(&out, ConnId(3)),
            vec![vec![Frame::Recv {
                src: hub(1),
                payload: b"b"
            }]]
        );
        assert!(sent_to(&out, ConnId(1)).is_empty());
    }

    #[test]
    fn batches_split_at_the_message_limit() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        let _ = join(&mut r, 2, hub(2));
        let payload = vec![0u8; crate::relay::frame::MAX_PAYLOAD];
        let mut msg = Vec::new();
        for _ in 0..15 {
            msg.extend(send(hub(2), &payload));
        }
        assert!(msg.len() < MAX_MESSAGE);
        // 15 frames of ~64 KiB each are just under 1 MiB in, and just over once re-framed with
        // the same overhead: all must arrive, no message over the limit.
        let mut out = Vec::new();
        r.handle_message(ConnId(1), NOW, &msg, &mut out);
        let msgs: Vec<&Vec<u8>> = out
            .iter()
            .filter_map(|a| match a {
                Action::Send { message, .. } => Some(message),
                _ => None,
            })
            .collect();
        assert!(msgs.iter().all(|m| m.len() <= MAX_MESSAGE));
        let total: usize = msgs.iter().map(|m| decode_message(m).unwrap().len()).sum();
        assert_eq!(total, 15);
    }

    #[test]
    fn unknown_destination_is_reported_to_the_sender() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        let mut out = Vec::new();
        r.handle_message(ConnId(1), NOW, &send(hub(9), b"x"), &mut out);
        assert_eq!(
            sent_to(&out, ConnId(1)),
            vec![vec![Frame::Undeliverable(hub(9))]]
        );
        assert!(closes(&out).is_empty());
    }

    #[test]
    fn malformed_input_closes_only_the_offender() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        let _ = join(&mut r, 2, hub(2));
        let mut out = Vec::new();
        r.handle_message(ConnId(1), NOW, &[0xee, 0, 0, 0, 0], &mut out);
        assert_eq!(closes(&out), vec![(ConnId(1), CloseCode::ProtocolError)]);
        assert_eq!(
            sent_to(&out, ConnId(2)),
            vec![vec![Frame::PeerLeft(vec![hub(1)])]]
        );
        assert_eq!(r.online().collect::<Vec<_>>(), vec![hub(2)]);
        // Frames before the bad one in the same message were delivered; none after it.
        let _ = join(&mut r, 3, hub(3));
        let mut msg = send(hub(2), b"ok");
        msg.extend([0x03, 0, 0, 0]);
        let mut out = Vec::new();
        r.handle_message(ConnId(3), NOW, &msg, &mut out);
        assert_eq!(sent_to(&out, ConnId(2)).len(), 2); // the payload, then PeerLeft(3)
        assert_eq!(closes(&out), vec![(ConnId(3), CloseCode::ProtocolError)]);
    }

    #[test]
    fn oversized_frame_uses_its_own_code() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        let payload = vec![0u8; crate::relay::frame::MAX_PAYLOAD + 1];
        let mut message = Vec::new();
        Frame::Send {
            dst: hub(1),
            payload: &payload,
        }
        .write(&mut message);
        let mut out = Vec::new();
        r.handle_message(ConnId(1), NOW, &message, &mut out);
        assert_eq!(closes(&out), vec![(ConnId(1), CloseCode::TooLarge)]);
    }

    #[test]
    fn perform_closes_a_socket_that_refuses_and_tells_the_others() {
        let mut r = room();
        let mut sockets = Recorder::default();
        for i in 1..=3u8 {
            let out = join(&mut r, u64::from(i), hub(i));
            r.perform(out, &mut sockets);
        }
        assert_eq!(sockets.admitted.len(), 3);
        sockets.refuse.push(ConnId(2));
        sockets.sent.clear();
        let mut out = Vec::new();
        r.handle_message(ConnId(1), NOW, &send(hub(2), b"x"), &mut out);
        r.perform(out, &mut sockets);
        assert_eq!(sockets.closed, vec![(ConnId(2), CloseCode::SlowConsumer)]);
        assert_eq!(r.online().collect::<Vec<_>>(), vec![hub(1), hub(3)]);
        // The follow-up presence reached the remaining hubs.
        assert_eq!(sockets.sent, vec![ConnId(1), ConnId(3)]);
    }
}
