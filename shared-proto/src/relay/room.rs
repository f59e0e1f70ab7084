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

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::relay::close::CloseCode;
use crate::relay::frame::{
    frames, recv_header, single_send, Frame, FrameError, FrameType, HubId, RoomStatus,
    FRAME_HEADER_LEN, HUB_ID_LEN, MAX_MESSAGE, MAX_ROOM_MEMBERS, PROTOCOL_VERSION,
    ROUTING_HEADER_LEN,
};
use crate::relay::rate::{
    Limits, TokenBucket, CLOSE_AFTER_MS, EPISODE_GAP_MS, MAX_PENALIZED, MAX_PENALTY_MS,
    NOTICE_INTERVAL_MS, PENALTY_MEMORY_MS, PENALTY_MS,
};
use crate::trust::login::{
    verify_login, LoginError, LoginNonce, ReplayGuard, LOGIN_EXTENSION, PAIRING_EXTENSION,
};
use crate::trust::{ClusterId, RevocationList, TrustError, VerifiedRevocations};

const REPLACED_REASON: &str = "replaced by a newer connection with the same hub id";

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
            | RoomError::Revocations(_) => CloseCode::ProtocolError,
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
    /// For a pairing guest: the member that issued its token, the only hub it may talk to.
    pub guest_of: Option<HubId>,
    /// When it was admitted (Unix ms): a pairing guest's lifetime counts from here.
    pub admitted_ms: u64,
    /// For a pairing guest: how many `Send` frames it has sent.
    pub sends: u32,
}

/// Most pairing guests a room holds at once.
pub const MAX_GUESTS: usize = 8;

/// Largest payload a pairing guest may send.
pub const MAX_GUEST_PAYLOAD: usize = 4096;

/// Most `Send` frames one pairing guest may send.
pub const MAX_GUEST_SENDS: u32 = 4;

/// Most pairing guests a room admits in any [`GUEST_WINDOW_MS`]; past that, guests are refused
/// with `1013` until older admissions leave the window. Each guest can make the issuer do a
/// Noise handshake, so their rate is bounded, not only their number.
pub const MAX_GUEST_ADMISSIONS: usize = 30;

/// The window of [`MAX_GUEST_ADMISSIONS`].
pub const GUEST_WINDOW_MS: u64 = 60_000;

/// How long a pairing guest may stay; then it is closed with `4021`.
pub const GUEST_LIFETIME_MS: u64 = 60_000;

/// How long a socket may stay open without sending its `Hello`; then it is closed with `4003`.
pub const HELLO_TIMEOUT_MS: u64 = 10_000;

/// Most sockets a room holds that have not said `Hello` yet; past that, a new socket is closed
/// at once with `1013` (the others keep their place until their [`HELLO_TIMEOUT_MS`]).
pub const MAX_PENDING: usize = 256;

/// The idle timeout `hub relay` sets ([`RoomConfig::idle_timeout_ms`]): a member that sends
/// nothing, not even a keepalive, for this long is closed with `4008`. Hubs send a keepalive
/// every 25 s by default.
pub const IDLE_TIMEOUT_MS: u64 = 150_000;

/// Presence changes (joins, leaves) in this window after an announcement are gathered and
/// announced together at its end: one message per member, however many hubs came back.
pub const PRESENCE_WINDOW_MS: u64 = 100;

/// Most presence changes gathered before they are announced, window or not.
pub const MAX_PRESENCE_LOG: usize = 4096;

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
    /// Remembers an accepted login's nonce durably (until `timestamp_ms` + the skew).
    fn remember_login(&mut self, login: LoginNonce);
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
    /// Open, no `Hello` yet; the connect URL named this hub.
    AwaitingHello(HubId),
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

/// A member's share of the relay: what it may send and be sent, and how it was told.
#[derive(Debug, Clone, Copy)]
struct MemberRate {
    send_frames: TokenBucket,
    send_bytes: TokenBucket,
    recv_bytes: TokenBucket,
    /// Frames dropped since the last notice.
    dropped: u32,
    /// No notice before then.
    next_notice_ms: u64,
    /// When the current episode of drops began (the first notice of it).
    episode_start: Option<u64>,
    /// Frames and bytes dropped for its own limit in the current episode.
    episode_frames: u64,
    episode_bytes: u64,
    last_drop_ms: u64,
    /// Its own limit lets a frame through again then.
    throttled_until: u64,
}

impl MemberRate {
    fn new(limits: &Limits, now_ms: u64) -> Self {
        MemberRate {
            send_frames: TokenBucket::new(limits.send_frames, now_ms),
            send_bytes: TokenBucket::new(limits.send_bytes, now_ms),
            recv_bytes: TokenBucket::new(limits.recv_bytes, now_ms),
            dropped: 0,
            next_notice_ms: 0,
            episode_start: None,
            episode_frames: 0,
            episode_bytes: 0,
            last_drop_ms: 0,
            throttled_until: 0,
        }
    }

    /// Takes a frame of `bytes` from the sender's buckets; the wait if it may not send it.
    fn send(&mut self, bytes: u64, now_ms: u64) -> Result<(), u64> {
        let frames = self.send_frames.check(1, now_ms);
        let bytes_ok = self.send_bytes.check(bytes, now_ms);
        match (frames, bytes_ok) {
            (Ok(()), Ok(())) => {
                self.send_frames.take_with_debt(1, now_ms);
                self.send_bytes.take_with_debt(bytes, now_ms);
                Ok(())
            }
            (Err(a), Err(b)) => Err(a.max(b)),
            (Err(wait), _) | (_, Err(wait)) => Err(wait),
        }
    }
}

/// A hub closed for its rate: refused until `until_ms`; `strikes` times so far.
#[derive(Debug, Clone, Copy)]
struct Penalty {
    until_ms: u64,
    strikes: u32,
}

/// A presence change, as the log keeps it until it is announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Joined,
    Left,
}

/// Presence changes not yet told to every member. Each member's [`Conn::seen`] is the index
/// from which it still has to be told.
#[derive(Debug, Default)]
struct Presence {
    log: Vec<(HubId, Change)>,
    /// When the gathered changes are announced.
    due: Option<u64>,
    last_flush_ms: Option<u64>,
}

/// A pairing guest: a hub without a certificate, admitted to reach one member (its token's
/// issuer) with a few small messages.
#[derive(Debug, Clone, Copy)]
struct Guest {
    conn: ConnId,
    info: MemberInfo,
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
    presence: Presence,
    /// Hubs closed with `4009`: until when they are refused, and how many times.
    penalized: HashMap<HubId, Penalty>,
    /// The latest time the caller gave (Unix ms), for what happens without one (a socket that
    /// refused a message).
    now_ms: u64,
}

/// Where [`Room::forward`] sends a message, and the routing header it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// The receiver's socket.
    pub conn: ConnId,
    /// The `Recv` header that replaces the message's first [`ROUTING_HEADER_LEN`] bytes.
    pub header: [u8; ROUTING_HEADER_LEN],
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
            presence: Presence::default(),
            penalized: HashMap::new(),
            now_ms: 0,
        }
    }

    /// The newest revocation list the room holds.
    pub fn revocations(&self) -> Option<&VerifiedRevocations> {
        self.revocations.as_ref()
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

    /// Gives the room a stored revocation list (when it is rebuilt). Ignored unless it verifies
    /// for this cluster and is newer than the one held; returns whether it was taken.
    pub fn set_revocations(&mut self, bytes: &[u8]) -> bool {
        match RevocationList::verify(bytes, &self.config.cluster)
            .and_then(|v| v.supersede(self.revocations.as_ref()))
        {
            Ok(v) => {
                self.revocations = Some(v);
                true
            }
            Err(_) => false,
        }
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

    /// How much longer `hub` is kept out (ms), if it was closed with `4009` and its time is not
    /// up: the relay answers its connect with [`path::KEPT_OUT_STATUS`] and opens no socket.
    ///
    /// [`path::KEPT_OUT_STATUS`]: crate::relay::path::KEPT_OUT_STATUS
    #[must_use]
    pub fn kept_out(&self, hub: &HubId, now_ms: u64) -> Option<u64> {
        self.penalized
            .get(hub)
            .filter(|p| now_ms < p.until_ms)
            .map(|p| p.until_ms - now_ms)
    }

    /// A socket opened at `now_ms` by a connect URL that named `hub`. Its first frame must be a
    /// `Hello` of that hub, within [`HELLO_TIMEOUT_MS`]; past [`MAX_PENDING`] such sockets it
    /// is closed at once.
    pub fn handle_connect(&mut self, conn: ConnId, now_ms: u64, hub: HubId, out: &mut Vec<Action>) {
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

    /// Puts back a socket that was open before the room was rebuilt (after a hibernation): when
    /// it was accepted, the hub its connect URL named, and the hub it was admitted as, if any (as
    /// last stored through [`Action::Admitted`]). The hubs saw no change, so nothing is announced; deadlines count
    /// from the stored times, so a restored socket gets no more time than it had.
    ///
    /// If two sockets claim one hub (a replacement whose close was not seen yet), the higher
    /// `ConnId` wins, as the newer connection did, and the other is closed as replaced.
    pub fn restore(
        &mut self,
        conn: ConnId,
        accepted_ms: u64,
        named: HubId,
        member: Option<MemberInfo>,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        self.tick(now_ms);
        let Some(member) = member else {
            let deadline = accepted_ms.saturating_add(HELLO_TIMEOUT_MS);
            self.insert(
                conn,
                ConnState::AwaitingHello(named),
                Some(deadline),
                now_ms,
            );
            return;
        };
        let hub = member.hub;
        if let Some(issuer) = member.guest_of {
            self.guests.insert(hub, Guest { conn, info: member });
            let deadline = member.admitted_ms.saturating_add(GUEST_LIFETIME_MS);
            self.insert(
                conn,
                ConnState::Guest { hub, issuer },
                Some(deadline),
                now_ms,
            );
            return;
        }
        let idle = self.idle_deadline(now_ms);
        let loser = match self.members.get(&hub) {
            Some(&other) if other > conn => conn,
            Some(&other) => {
                self.forget(other);
                self.insert(conn, ConnState::Member(member), idle, now_ms);
                self.members.insert(hub, conn);
                other
            }
            None => {
                self.insert(conn, ConnState::Member(member), idle, now_ms);
                self.members.insert(hub, conn);
                return;
            }
        };
        out.push(Action::Close {
            conn: loser,
            code: CloseCode::Replaced,
            reason: REPLACED_REASON.into(),
        });
    }

    /// The earliest deadline of the room (Unix ms): call [`Room::handle_timeout`] then, or
    /// sooner. `None`: no deadline (nothing but members, no idle timeout, no presence change
    /// waiting to be announced).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        let socket = self.timers.first().map(|&(at, _)| at);
        match (socket, self.presence.due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Closes every socket whose deadline is at or before `now_ms`: no `Hello` in time (`4003`),
    /// a pairing guest's time up (`4021`), a member idle past the idle timeout (`4008`); and
    /// announces the presence changes gathered, when their window ends.
    pub fn handle_timeout(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        self.tick(now_ms);
        self.expire(now_ms, out);
        if self.presence.due.is_some_and(|due| due <= now_ms) {
            self.flush_presence(now_ms, out);
        }
    }

    fn expire(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        while let Some(&(at, conn)) = self.timers.first() {
            if at > now_ms {
                break;
            }
            let Some(state) = self.conns.get(&conn).map(|c| c.state) else {
                self.timers.remove(&(at, conn));
                continue;
            };
            let (code, reason) = match state {
                ConnState::AwaitingHello(_) => (
                    CloseCode::HelloTimeout,
                    format!("no Hello within {} s", HELLO_TIMEOUT_MS / 1000),
                ),
                ConnState::Guest { .. } => (CloseCode::GuestLimit, "pairing time is up".into()),
                ConnState::Member(_) => (
                    CloseCode::IdleTimeout,
                    format!(
                        "nothing received for {} s",
                        self.config.idle_timeout_ms.unwrap_or_default() / 1000
                    ),
                ),
            };
            self.close(conn, code, reason, out);
        }
    }

    /// The relay answered a keepalive of `conn` itself: it counts as activity.
    pub fn handle_keepalive(&mut self, conn: ConnId, now_ms: u64) {
        self.tick(now_ms);
        self.touch(conn, now_ms);
    }

    fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// When `conn`, a member over its own rate limit, may send a frame again (Unix ms): `None`
    /// if it may now. `hub relay` reads nothing more from it until then, so that a flood waits
    /// in the sender's TCP buffers rather than costing the relay.
    pub fn throttled_until(&self, conn: ConnId, now_ms: u64) -> Option<u64> {
        let until = self.conns.get(&conn)?.rate?.throttled_until;
        (until > now_ms).then_some(until)
    }

    /// A member was heard from: its idle deadline moves (in steps of an eighth of the timeout,
    /// at most a second, so that a busy member does not reorder the timers on every message).
    fn touch(&mut self, conn: ConnId, now_ms: u64) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if !matches!(c.state, ConnState::Member(_)) {
            return;
        }
        let step = self
            .config
            .idle_timeout_ms
            .map_or(1000, |t| (t / 8).clamp(1, 1000));
        if let (Some(new), Some(old)) = (self.idle_deadline(now_ms), c.deadline) {
            if new >= old.saturating_add(step) {
                self.set_deadline(conn, Some(new));
            }
        }
    }

    fn idle_deadline(&self, now_ms: u64) -> Option<u64> {
        self.config
            .idle_timeout_ms
            .map(|t| now_ms.saturating_add(t))
    }

    /// Adds (or replaces) a socket with its state and deadline.
    fn insert(&mut self, conn: ConnId, state: ConnState, deadline: Option<u64>, now_ms: u64) {
        self.forget(conn);
        if matches!(state, ConnState::AwaitingHello(_)) {
            self.pending += 1;
        }
        let rate = matches!(state, ConnState::Member(_))
            .then(|| MemberRate::new(&self.config.limits, now_ms));
        let seen = self.presence.log.len();
        self.conns.insert(
            conn,
            Conn {
                state,
                deadline,
                rate,
                seen,
            },
        );
        if let Some(at) = deadline {
            self.timers.insert((at, conn));
        }
    }

    /// Removes a socket and its deadline; returns its state.
    fn forget(&mut self, conn: ConnId) -> Option<ConnState> {
        let c = self.conns.remove(&conn)?;
        if let Some(at) = c.deadline {
            self.timers.remove(&(at, conn));
        }
        if matches!(c.state, ConnState::AwaitingHello(_)) {
            self.pending -= 1;
        }
        Some(c.state)
    }

    fn set_deadline(&mut self, conn: ConnId, deadline: Option<u64>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Some(at) = c.deadline {
            self.timers.remove(&(at, conn));
        }
        c.deadline = deadline;
        if let Some(at) = deadline {
            self.timers.insert((at, conn));
        }
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
                    Action::RememberLogin(login) => sockets.remember_login(login),
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

    /// Tells the members that `hub` joined or left: at once if nothing was announced within
    /// [`PRESENCE_WINDOW_MS`], else with the other changes of that window at its end.
    fn announce(&mut self, hub: HubId, change: Change, out: &mut Vec<Action>) {
        let now_ms = self.now_ms;
        let window = self.config.presence_window_ms;
        let presence = &mut self.presence;
        presence.log.push((hub, change));
        let window_end = presence
            .last_flush_ms
            .map_or(0, |t| t.saturating_add(window));
        if presence.log.len() >= MAX_PRESENCE_LOG
            || (presence.due.is_none() && now_ms >= window_end)
        {
            self.flush_presence(now_ms, out);
        } else if presence.due.is_none() {
            presence.due = Some(window_end);
        }
    }

    /// Announces every gathered presence change to the members that have not been told it:
    /// one message each, with the hubs that left in one `PeerLeft` frame and those that joined
    /// in one `PeerJoined` frame.
    fn flush_presence(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let mut messages: HashMap<usize, Vec<u8>> = HashMap::new();
        for &conn in self.members.values() {
            let Some(seen) = self.conns.get(&conn).map(|c| c.seen) else {
                continue;
            };
            if seen >= self.presence.log.len() {
                continue;
            }
            let message = messages
                .entry(seen)
                .or_insert_with(|| presence_message(&self.presence.log[seen..]));
            if !message.is_empty() {
                out.push(Action::Send {
                    conn,
                    message: message.clone(),
                });
            }
        }
        for c in self.conns.values_mut() {
            c.seen = 0;
        }
        self.presence.log.clear();
        self.presence.due = None;
        self.presence.last_flush_ms = Some(now_ms);
    }

    /// Tells one member the presence changes it has not been told yet, ahead of a payload
    /// for it (which may come from a hub whose join is among them).
    fn flush_presence_to(&mut self, conn: ConnId, outbox: &mut Outbox, out: &mut Vec<Action>) {
        let len = self.presence.log.len();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.seen >= len {
            return;
        }
        let (left, joined) = net_presence(&self.presence.log[c.seen..]);
        c.seen = len;
        for frame in presence_frames(left, joined) {
            outbox.push(conn, &frame, out);
        }
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

    /// The fast path of [`Room::handle_message`], for the message a busy room sees most: exactly
    /// one `Send` frame from a member to another member online, within every limit, with no
    /// presence change to tell the receiver first. `head` is the message's first bytes (at least
    /// [`ROUTING_HEADER_LEN`]) and `len` its length: the payload is not needed. The relay then
    /// passes the message's own bytes on to [`Forward::conn`] with [`Forward::header`] in place
    /// of their first [`ROUTING_HEADER_LEN`], rather than copying the payload into a new message.
    ///
    /// `None`, with nothing changed, for any other message: the caller hands the whole message
    /// to [`Room::handle_message`], which decides (and refuses, limits or reports) as always.
    pub fn forward(
        &mut self,
        conn: ConnId,
        now_ms: u64,
        head: &[u8],
        len: usize,
    ) -> Option<Forward> {
        let dst = single_send(head, len)?;
        let Some(Conn {
            state: ConnState::Member(member),
            rate: Some(rate),
            ..
        }) = self.conns.get(&conn)
        else {
            return None;
        };
        let (src, mut rate) = (member.hub, *rate);
        let to = *self.members.get(&dst)?;
        let receiver = self.conns.get(&to)?;
        if receiver.seen < self.presence.log.len() {
            return None;
        }
        let mut recv_bytes = receiver.rate?.recv_bytes;
        // Charged on copies: a refusal leaves both sides as they were.
        let cost = len as u64;
        rate.send(cost, now_ms).ok()?;
        recv_bytes.try_take(cost, now_ms).ok()?;
        // Every check passed: charge both sides, as `handle_message` would have.
        if let Some(r) = self.conns.get_mut(&conn).and_then(|c| c.rate.as_mut()) {
            *r = rate;
        }
        if let Some(r) = self.conns.get_mut(&to).and_then(|c| c.rate.as_mut()) {
            r.recv_bytes = recv_bytes;
        }
        self.tick(now_ms);
        self.touch(conn, now_ms);
        Some(Forward {
            conn: to,
            header: recv_header(src, len - ROUTING_HEADER_LEN),
        })
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
        if let ConnState::Member(m) = state {
            let charged = match self.conns.get_mut(&conn).and_then(|c| c.rate.as_mut()) {
                Some(rate) => rate.send(cost, now_ms),
                None => Ok(()),
            };
            if let Err(wait) = charged {
                let dropped = self.dropped(conn, m.hub, wait, Some(cost), now_ms, outbox, out);
                if dropped.is_err() {
                    self.penalize(m.hub, now_ms);
                }
                return dropped;
            }
        }
        match (state, frame) {
            (ConnState::AwaitingHello(named), Frame::Hello(hello)) => {
                if hello.version != PROTOCOL_VERSION {
                    return Err(RoomError::UnsupportedVersion(hello.version));
                }
                if hello.hub != named {
                    return Err(RoomError::NotTheNamedHub);
                }
                // Before any signature check: only the penalized hub's own id is refused.
                if let Some(p) = self.penalized.get(&hello.hub) {
                    if now_ms < p.until_ms {
                        return Err(RoomError::Penalized(p.until_ms - now_ms));
                    }
                }
                if let Some(issuer) = pairing_issuer(&hello)? {
                    return self.admit_guest(conn, now_ms, hello.hub, issuer, out);
                }
                let (peer, login) = verify_login(
                    &hello,
                    &self.config.cluster,
                    now_ms,
                    self.revocations.as_ref(),
                    &mut self.replays,
                )?;
                let member = MemberInfo {
                    hub: peer.hub_id(),
                    fingerprint: peer.fingerprint(),
                    key_hash: peer.key_hash(),
                    guest_of: None,
                    admitted_ms: now_ms,
                    sends: 0,
                };
                out.push(Action::RememberLogin(login));
                self.admit(conn, now_ms, member, out)
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
            (ConnState::Member(MemberInfo { hub: src, .. }), Frame::Send { dst, payload }) => {
                match self.members.get(&dst).copied() {
                    Some(to) => {
                        let taken = match self.conns.get_mut(&to).and_then(|c| c.rate.as_mut()) {
                            Some(rate) => rate.recv_bytes.try_take(cost, now_ms),
                            None => Ok(()),
                        };
                        if let Err(wait) = taken {
                            return self.dropped(conn, dst, wait, None, now_ms, outbox, out);
                        }
                        self.flush_presence_to(to, outbox, out);
                        outbox.push(to, &Frame::Recv { src, payload }, out);
                    }
                    None => match self.guests.get(&dst) {
                        // Only the guest's issuer reaches it.
                        Some(g) if g.info.guest_of == Some(src) => {
                            outbox.push(g.conn, &Frame::Recv { src, payload }, out)
                        }
                        _ => outbox.push(conn, &Frame::Undeliverable(dst), out),
                    },
                }
                Ok(())
            }
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

    fn admit(
        &mut self,
        conn: ConnId,
        now_ms: u64,
        member: MemberInfo,
        out: &mut Vec<Action>,
    ) -> Result<(), RoomError> {
        let hub = member.hub;
        let replaced = self.members.get(&hub).copied();
        if replaced.is_none() && self.members.len() >= self.config.max_members {
            return Err(RoomError::RoomFull(self.config.max_members));
        }
        if let Some(old) = replaced {
            // The newer connection wins: the old one is closed and told why. Its later
            // disconnect is a no-op because it is no longer in `conns`.
            self.forget(old);
            out.push(Action::Close {
                conn: old,
                code: CloseCode::Replaced,
                reason: REPLACED_REASON.into(),
            });
        }
        let idle = self.idle_deadline(now_ms);
        self.insert(conn, ConnState::Member(member), idle, now_ms);
        self.members.insert(hub, conn);
        out.push(Action::Admitted { conn, member });
        // The others learn of it (now or with this moment's other joins); it learns of them
        // from its Welcome, so nothing gathered so far, its own join included, is for it.
        let told = self.presence.log.len() + 1;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.seen = told;
        }
        self.announce(hub, Change::Joined, out);

        let online: Vec<HubId> = self
            .members
            .keys()
            .filter(|h| **h != hub)
            .copied()
            .collect();
        let mut welcome = Outbox::default();
        let frame = Frame::Welcome {
            version: PROTOCOL_VERSION,
            online,
        };
        welcome.push(conn, &frame, out);
        if let Some(list) = &self.revocations {
            welcome.push(conn, &Frame::RevocationList(list.bytes()), out);
        }
        welcome.flush(out);
        Ok(())
    }

    /// A frame of `conn` was dropped because `limited`'s limit (its own if `own` gives the
    /// frame's size, else its receiver's) lets it through only in `wait` ms: counted, told (at
    /// most every [`NOTICE_INTERVAL_MS`]), and past [`CLOSE_AFTER_MS`] of this, or past a
    /// burst of its own limit dropped, closed.
    #[allow(clippy::too_many_arguments)]
    fn dropped(
        &mut self,
        conn: ConnId,
        limited: HubId,
        wait: u64,
        own: Option<u64>,
        now_ms: u64,
        outbox: &mut Outbox,
        out: &mut Vec<Action>,
    ) -> Result<(), RoomError> {
        let limits = self.config.limits;
        let Some(rate) = self.conns.get_mut(&conn).and_then(|c| c.rate.as_mut()) else {
            return Ok(());
        };
        rate.dropped = rate.dropped.saturating_add(1);
        let episode = match rate.episode_start {
            Some(start) if now_ms.saturating_sub(rate.last_drop_ms) < EPISODE_GAP_MS => start,
            _ => {
                rate.episode_frames = 0;
                rate.episode_bytes = 0;
                now_ms
            }
        };
        rate.episode_start = Some(episode);
        rate.last_drop_ms = now_ms;
        if now_ms.saturating_sub(episode) >= CLOSE_AFTER_MS {
            return Err(RoomError::RateLimited);
        }
        if let Some(bytes) = own {
            rate.episode_frames += 1;
            rate.episode_bytes += bytes;
            if rate.episode_frames > limits.send_frames.burst
                || rate.episode_bytes > limits.send_bytes.burst
            {
                return Err(RoomError::Flooding);
            }
        }
        // Never more than a minute: the limits refill far faster than that.
        let wait = wait.min(60_000);
        if own.is_some() {
            rate.throttled_until = rate.throttled_until.max(now_ms.saturating_add(wait));
        }
        if now_ms >= rate.next_notice_ms {
            let frame = Frame::RateLimited {
                limited,
                retry_after_ms: wait as u32,
                dropped: rate.dropped,
            };
            rate.dropped = 0;
            rate.next_notice_ms = now_ms.saturating_add(wait.max(NOTICE_INTERVAL_MS));
            outbox.push(conn, &frame, out);
        }
        Ok(())
    }

    /// `hub` was closed with `4009`: it is refused for [`PENALTY_MS`], doubled for each time
    /// again within [`PENALTY_MEMORY_MS`] (at most [`MAX_PENALTY_MS`]).
    fn penalize(&mut self, hub: HubId, now_ms: u64) {
        self.penalized
            .retain(|_, p| now_ms < p.until_ms.saturating_add(PENALTY_MEMORY_MS));
        let strikes = self.penalized.get(&hub).map_or(1, |p| p.strikes + 1);
        let penalty = PENALTY_MS
            .saturating_mul(1 << (strikes - 1).min(16))
            .min(MAX_PENALTY_MS);
        if self.penalized.len() >= MAX_PENALIZED && !self.penalized.contains_key(&hub) {
            let first = self
                .penalized
                .iter()
                .min_by_key(|(_, p)| p.until_ms)
                .map(|(h, _)| *h);
            if let Some(first) = first {
                self.penalized.remove(&first);
            }
        }
        self.penalized.insert(
            hub,
            Penalty {
                until_ms: now_ms.saturating_add(penalty),
                strikes,
            },
        );
    }

    /// Admits a pairing guest: it sees only its issuer, and no member sees it.
    fn admit_guest(
        &mut self,
        conn: ConnId,
        now_ms: u64,
        hub: HubId,
        issuer: HubId,
        out: &mut Vec<Action>,
    ) -> Result<(), RoomError> {
        if self.members.contains_key(&hub) || self.guests.contains_key(&hub) {
            return Err(RoomError::HubIdInUse);
        }
        if !self.members.contains_key(&issuer) {
            return Err(RoomError::IssuerOffline(issuer));
        }
        // Guests past their lifetime leave first (the relay's timer may not have fired yet).
        self.handle_timeout(now_ms, out);
        if self.guests.len() >= MAX_GUESTS {
            return Err(RoomError::TooManyGuests);
        }
        while self
            .guest_admissions
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) >= GUEST_WINDOW_MS)
        {
            self.guest_admissions.pop_front();
        }
        if self.guest_admissions.len() >= MAX_GUEST_ADMISSIONS {
            return Err(RoomError::GuestRate);
        }
        self.guest_admissions.push_back(now_ms);
        let member = MemberInfo {
            hub,
            fingerprint: [0; 32],
            key_hash: [0; 32],
            guest_of: Some(issuer),
            admitted_ms: now_ms,
            sends: 0,
        };
        self.guests.insert(hub, Guest { conn, info: member });
        let deadline = now_ms.saturating_add(GUEST_LIFETIME_MS);
        self.insert(
            conn,
            ConnState::Guest { hub, issuer },
            Some(deadline),
            now_ms,
        );
        out.push(Action::Admitted { conn, member });
        let welcome = Frame::Welcome {
            version: PROTOCOL_VERSION,
            online: vec![issuer],
        };
        out.push(send(conn, &welcome));
        Ok(())
    }

    /// A pairing guest's `Send`: to its issuer only, small, few, and in time.
    #[allow(clippy::too_many_arguments)]
    fn guest_send(
        &mut self,
        conn: ConnId,
        now_ms: u64,
        hub: HubId,
        issuer: HubId,
        dst: HubId,
        payload: &[u8],
        outbox: &mut Outbox,
        out: &mut Vec<Action>,
    ) -> Result<(), RoomError> {
        let limit = |reason: &'static str| Err(RoomError::GuestLimit(reason));
        let Some(guest) = self.guests.get_mut(&hub) else {
            return limit("unknown pairing guest");
        };
        if now_ms >= guest.info.admitted_ms.saturating_add(GUEST_LIFETIME_MS) {
            return limit("pairing time is up");
        }
        if dst != issuer {
            return limit("a pairing guest talks only to the hub that issued its token");
        }
        if payload.len() > MAX_GUEST_PAYLOAD {
            return Err(RoomError::GuestTooLarge);
        }
        if guest.info.sends >= MAX_GUEST_SENDS {
            return limit("a pairing guest sends at most 4 messages");
        }
        guest.info.sends += 1;
        // The count must survive a hibernation, or a restored guest could start again.
        out.push(Action::Admitted {
            conn,
            member: guest.info,
        });
        match self.members.get(&issuer) {
            Some(&to) => outbox.push(to, &Frame::Recv { src: hub, payload }, out),
            None => outbox.push(conn, &Frame::Undeliverable(dst), out),
        }
        Ok(())
    }

    /// A member published a revocation list: keep it if newer, enforce it, deliver it.
    fn publish_revocations(
        &mut self,
        conn: ConnId,
        doc: &[u8],
        outbox: &mut Outbox,
        out: &mut Vec<Action>,
    ) -> Result<(), RoomError> {
        let list =
            RevocationList::verify(doc, &self.config.cluster).map_err(RoomError::Revocations)?;
        if let Some(held) = &self.revocations {
            if list.version() <= held.version() {
                // Not newer. If the room holds a strictly newer one, the sender learns it.
                if list.version() < held.version() {
                    outbox.push(conn, &Frame::RevocationList(held.bytes()), out);
                }
                return Ok(());
            }
        }
        out.push(Action::StoreRevocations {
            bytes: list.bytes().to_vec(),
        });
        let revoked: Vec<ConnId> = self
            .conns
            .iter()
            .filter_map(|(c, s)| match s.state {
                ConnState::Member(m) if list.is_revoked(&m.fingerprint, &m.key_hash) => Some(*c),
                _ => None,
            })
            .collect();
        for c in revoked {
            self.close(c, CloseCode::Revoked, "certificate revoked".into(), out);
        }
        // The members learn who left (the revoked hubs among them) before they get the list.
        if !self.presence.log.is_empty() {
            self.flush_presence(self.now_ms, out);
        }
        let frame = Frame::RevocationList(list.bytes());
        for &member in self.members.values() {
            out.push(send(member, &frame));
        }
        self.revocations = Some(list);
        Ok(())
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

/// What a member must be told of `log` (oldest first): the hubs that left (or left and came
/// back) and the hubs that are online at its end after a change, each once, in log order.
fn net_presence(log: &[(HubId, Change)]) -> (Vec<HubId>, Vec<HubId>) {
    // Per hub: its first and last change.
    let mut order: Vec<HubId> = Vec::new();
    let mut ends: HashMap<HubId, (Change, Change)> = HashMap::new();
    for &(hub, change) in log {
        ends.entry(hub)
            .and_modify(|e| e.1 = change)
            .or_insert_with(|| {
                order.push(hub);
                (change, change)
            });
    }
    let mut left = Vec::new();
    let mut joined = Vec::new();
    for hub in order {
        let Some(&(first, last)) = ends.get(&hub) else {
            continue;
        };
        // A hub that was online before (its first change is a leave) or is gone at the end.
        if first == Change::Left || last == Change::Left {
            left.push(hub);
        }
        if last == Change::Joined {
            joined.push(hub);
        }
    }
    (left, joined)
}

/// `PeerLeft` then `PeerJoined` frames for these hubs, at most [`MAX_ROOM_MEMBERS`] a frame.
fn presence_frames(left: Vec<HubId>, joined: Vec<HubId>) -> Vec<Frame<'static>> {
    let lists = |hubs: Vec<HubId>| {
        hubs.chunks(MAX_ROOM_MEMBERS)
            .map(<[HubId]>::to_vec)
            .collect::<Vec<_>>()
    };
    let mut frames: Vec<Frame<'static>> = lists(left).into_iter().map(Frame::PeerLeft).collect();
    frames.extend(lists(joined).into_iter().map(Frame::PeerJoined));
    frames
}

/// The presence frames for `log` as one message: the log holds at most [`MAX_PRESENCE_LOG`]
/// changes, 16 bytes each, far below [`MAX_MESSAGE`].
fn presence_message(log: &[(HubId, Change)]) -> Vec<u8> {
    let (left, joined) = net_presence(log);
    let mut message = Vec::new();
    for frame in presence_frames(left, joined) {
        // Non-empty and within the member limit by construction.
        let _ = frame.encode(&mut message);
    }
    message
}

/// A member frame's size on the wire, as the rate limits count it.
fn wire_len(frame: &Frame<'_>) -> u64 {
    let body = match frame {
        Frame::Send { payload, .. } => HUB_ID_LEN + payload.len(),
        Frame::RevocationList(doc) => doc.len(),
        _ => 0,
    };
    (FRAME_HEADER_LEN + body) as u64
}

/// One frame as a message for `conn`.
fn send(conn: ConnId, frame: &Frame<'_>) -> Action {
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

/// The issuer named by a `Hello`'s pairing extension, if it has one (and no login).
fn pairing_issuer(hello: &crate::relay::frame::Hello<'_>) -> Result<Option<HubId>, RoomError> {
    let Some(ext) = hello
        .extensions
        .iter()
        .find(|e| e.kind == PAIRING_EXTENSION)
    else {
        return Ok(None);
    };
    if hello.extensions.iter().any(|e| e.kind == LOGIN_EXTENSION) {
        return Err(RoomError::LoginAndPairing);
    }
    let id: [u8; 16] = ext
        .data
        .try_into()
        .map_err(|_| RoomError::BadPairingExtension)?;
    Ok(Some(HubId(id)))
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
    use crate::relay::frame::{decode_message, Hello};
    use crate::trust::cert::tests::{request, NOW};
    use crate::trust::login::Credentials;
    use crate::trust::{ClusterCa, Revocation};
    use ed25519_dalek::SigningKey;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn hub(b: u8) -> HubId {
        HubId([b; 16])
    }

    fn ca() -> ClusterCa {
        ClusterCa::from_secret(&[42; 32])
    }

    /// A member's credentials: hub `h`'s key and certificate from the test CA.
    fn creds(h: HubId) -> Credentials {
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
    fn hello(h: HubId) -> Vec<u8> {
        static SEED: AtomicU64 = AtomicU64::new(0);
        let mut rng = StdRng::seed_from_u64(SEED.fetch_add(1, Ordering::Relaxed));
        let c = creds(h);
        let ext = c.login(NOW, &mut rng);
        Frame::Hello(c.hello(&ext)).to_message().unwrap()
    }

    fn send(dst: HubId, payload: &[u8]) -> Vec<u8> {
        Frame::Send { dst, payload }.to_message().unwrap()
    }

    /// The frames sent to `conn`, decoded, one inner Vec per message.
    fn sent_to(actions: &[Action], conn: ConnId) -> Vec<Vec<Frame<'_>>> {
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

    fn closes(actions: &[Action]) -> Vec<(ConnId, CloseCode)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Close { conn, code, .. } => Some((*conn, *code)),
                _ => None,
            })
            .collect()
    }

    fn join(room: &mut Room, conn: u64, h: HubId) -> Vec<Action> {
        let mut out = Vec::new();
        room.handle_connect(ConnId(conn), NOW, h, &mut out);
        room.handle_message(ConnId(conn), NOW, &hello(h), &mut out);
        out
    }

    /// A room that announces each presence change at once (the window has its own test).
    fn room() -> Room {
        Room::new(RoomConfig {
            presence_window_ms: 0,
            ..RoomConfig::new(ca().cluster_id(), 42)
        })
    }

    fn guest_hello(guest: HubId, issuer: HubId) -> Vec<u8> {
        let mut hello = crate::relay::frame::Hello::new(guest);
        hello.extensions.push(crate::relay::frame::Extension {
            kind: PAIRING_EXTENSION,
            data: issuer.as_bytes(),
        });
        Frame::Hello(hello).to_message().unwrap()
    }

    fn guest_join(room: &mut Room, conn: u64, guest: HubId, issuer: HubId, at: u64) -> Vec<Action> {
        let mut out = Vec::new();
        room.handle_connect(ConnId(conn), at, guest, &mut out);
        room.handle_message(ConnId(conn), at, &guest_hello(guest, issuer), &mut out);
        out
    }

    #[test]
    fn a_pairing_guest_reaches_only_its_issuer_and_no_member_sees_it() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        let _ = join(&mut r, 2, hub(2));
        let out = guest_join(&mut r, 10, hub(0xa0), hub(1), NOW);
        // It sees only its issuer; no member hears of it.
        assert_eq!(
            sent_to(&out, ConnId(10)),
            vec![vec![Frame::Welcome {
                version: 1,
                online: vec![hub(1)]
            }]]
        );
        assert!(sent_to(&out, ConnId(1)).is_empty() && sent_to(&out, ConnId(2)).is_empty());
        assert!(
            matches!(out[0], Action::Admitted { member, .. } if member.guest_of == Some(hub(1)))
        );
        assert_eq!(r.online().collect::<Vec<_>>(), vec![hub(1), hub(2)]);

        // Guest -> issuer and issuer -> guest flow.
        let mut out = Vec::new();
        r.handle_message(ConnId(10), NOW, &send(hub(1), b"request"), &mut out);
        assert_eq!(
            sent_to(&out, ConnId(1)),
            vec![vec![Frame::Recv {
                src: hub(0xa0),
                payload: b"request"
            }]]
        );
        let mut out = Vec::new();
        r.handle_message(ConnId(1), NOW, &send(hub(0xa0), b"answer"), &mut out);
        assert_eq!(
            sent_to(&out, ConnId(10)),
            vec![vec![Frame::Recv {
                src: hub(1),
                payload: b"answer"
            }]]
        );
        // Another member cannot reach the guest.
        let mut out = Vec::new();
        r.handle_message(ConnId(2), NOW, &send(hub(0xa0), b"hi"), &mut out);
        assert_eq!(
            sent_to(&out, ConnId(2)),
            vec![vec![Frame::Undeliverable(hub(0xa0))]]
        );
        assert!(sent_to(&out, ConnId(10)).is_empty());
        // The guest cannot reach another member, nor ask for status.
        let mut out = Vec::new();
        r.handle_message(ConnId(10), NOW, &send(hub(2), b"x"), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(10), CloseCode::GuestLimit)]);
        assert!(sent_to(&out, ConnId(2)).is_empty());
        let _ = guest_join(&mut r, 11, hub(0xa1), hub(1), NOW);
        let mut out = Vec::new();
        r.handle_message(
            ConnId(11),
            NOW,
            &Frame::StatusRequest.to_message().unwrap(),
            &mut out,
        );
        assert_eq!(closes(&out), vec![(ConnId(11), CloseCode::ProtocolError)]);
    }

    #[test]
    fn a_pairing_guest_is_limited_in_size_count_and_time() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        let _ = guest_join(&mut r, 10, hub(0xa0), hub(1), NOW);
        let mut out = Vec::new();
        let big = vec![0u8; MAX_GUEST_PAYLOAD + 1];
        r.handle_message(ConnId(10), NOW, &send(hub(1), &big), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(10), CloseCode::TooLarge)]);
        assert!(sent_to(&out, ConnId(1)).is_empty());

        let _ = guest_join(&mut r, 11, hub(0xa1), hub(1), NOW);
        for _ in 0..MAX_GUEST_SENDS {
            let mut out = Vec::new();
            r.handle_message(ConnId(11), NOW, &send(hub(1), b"x"), &mut out);
            assert!(closes(&out).is_empty());
        }
        let mut out = Vec::new();
        r.handle_message(ConnId(11), NOW, &send(hub(1), b"x"), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(11), CloseCode::GuestLimit)]);

        let _ = guest_join(&mut r, 12, hub(0xa2), hub(1), NOW);
        let mut out = Vec::new();
        let late = NOW + GUEST_LIFETIME_MS + 1;
        r.handle_message(ConnId(12), late, &send(hub(1), b"x"), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(12), CloseCode::GuestLimit)]);
    }

    #[test]
    fn guests_are_refused_without_their_issuer_and_closed_when_it_leaves() {
        let mut r = room();
        let out = guest_join(&mut r, 10, hub(0xa0), hub(1), NOW);
        assert_eq!(closes(&out), vec![(ConnId(10), CloseCode::IssuerOffline)]);
        let _ = join(&mut r, 1, hub(1));
        // A guest may not take a member's id.
        let out = guest_join(&mut r, 11, hub(1), hub(1), NOW);
        assert_eq!(closes(&out), vec![(ConnId(11), CloseCode::ProtocolError)]);
        let _ = guest_join(&mut r, 12, hub(0xa2), hub(1), NOW);
        let mut out = Vec::new();
        r.handle_disconnect(ConnId(1), NOW, &mut out);
        assert_eq!(closes(&out), vec![(ConnId(12), CloseCode::IssuerOffline)]);
        assert_eq!(r.connections(), 0, "every socket was closed and forgotten");
    }

    #[test]
    fn guests_are_bounded_and_stale_ones_make_room() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        for i in 0..MAX_GUESTS as u64 {
            let out = guest_join(&mut r, 10 + i, hub(0xa0 + i as u8), hub(1), NOW);
            assert!(closes(&out).is_empty());
        }
        let out = guest_join(&mut r, 30, hub(0xc0), hub(1), NOW);
        assert_eq!(closes(&out), vec![(ConnId(30), CloseCode::TryAgainLater)]);
        // Once the others' time is up, a new guest evicts them.
        let out = guest_join(&mut r, 31, hub(0xc1), hub(1), NOW + GUEST_LIFETIME_MS + 1);
        assert_eq!(closes(&out).len(), MAX_GUESTS);
        assert!(closes(&out)
            .iter()
            .all(|(c, code)| c.0 < 30 && *code == CloseCode::GuestLimit));
        assert_eq!(
            sent_to(&out, ConnId(31)).len(),
            1,
            "the new guest is welcomed"
        );
    }

    #[test]
    fn guest_admissions_are_rate_limited() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        // Guests that come and go quickly still count against the rate.
        for i in 0..MAX_GUEST_ADMISSIONS as u64 {
            let at = NOW + i;
            let out = guest_join(&mut r, 100 + i, hub(0x80 + i as u8), hub(1), at);
            assert!(closes(&out).is_empty(), "guest {i}");
            let mut out = Vec::new();
            r.handle_disconnect(ConnId(100 + i), NOW, &mut out);
        }
        let out = guest_join(&mut r, 200, hub(0xf0), hub(1), NOW + 100);
        assert_eq!(closes(&out), vec![(ConnId(200), CloseCode::TryAgainLater)]);
        // A minute after the first ones, room again.
        let out = guest_join(&mut r, 201, hub(0xf1), hub(1), NOW + GUEST_WINDOW_MS + 1);
        assert!(closes(&out).is_empty());
    }

    /// What the guest rule needs is stored with the socket (`Admitted`, again after every
    /// send) and restored: a restored guest keeps its message count and expires on time. A
    /// restore once set its admission time to 0, which skipped the lifetime check, and its
    /// count to 0.
    #[test]
    fn a_restored_guest_keeps_its_count_and_its_lifetime() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        let out = guest_join(&mut r, 10, hub(0xa0), hub(1), NOW);
        let mut stored = stored_member(&out, ConnId(10));
        assert_eq!((stored.admitted_ms, stored.sends), (NOW, 0));
        for i in 1..MAX_GUEST_SENDS {
            let mut out = Vec::new();
            r.handle_message(ConnId(10), NOW + 1, &send(hub(1), b"x"), &mut out);
            stored = stored_member(&out, ConnId(10));
            assert_eq!(stored.sends, i);
        }
        // Hibernation: a new room from what was stored.
        let mut woken = room();
        let mut out = Vec::new();
        woken.restore(ConnId(1), NOW, hub(1), Some(member(1)), NOW + 2, &mut out);
        woken.restore(ConnId(10), NOW, stored.hub, Some(stored), NOW + 2, &mut out);
        let mut out = Vec::new();
        woken.handle_message(ConnId(10), NOW + 3, &send(hub(1), b"after"), &mut out);
        assert_eq!(
            sent_to(&out, ConnId(1)),
            vec![vec![Frame::Recv {
                src: hub(0xa0),
                payload: b"after"
            }]]
        );
        // That was its last message.
        let mut out = Vec::new();
        woken.handle_message(ConnId(10), NOW + 4, &send(hub(1), b"one more"), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(10), CloseCode::GuestLimit)]);

        // Another restored guest is closed when its time, counted from its admission, is up.
        let mut woken = room();
        let mut out = Vec::new();
        woken.restore(ConnId(1), NOW, hub(1), Some(member(1)), NOW + 2, &mut out);
        let guest = MemberInfo { sends: 0, ..stored };
        woken.restore(ConnId(10), NOW, guest.hub, Some(guest), NOW + 2, &mut out);
        assert_eq!(woken.poll_timeout(), Some(NOW + GUEST_LIFETIME_MS));
        let mut out = Vec::new();
        woken.handle_timeout(NOW + GUEST_LIFETIME_MS - 1, &mut out);
        assert!(out.is_empty());
        woken.handle_timeout(NOW + GUEST_LIFETIME_MS, &mut out);
        assert_eq!(closes(&out), vec![(ConnId(10), CloseCode::GuestLimit)]);
        assert_eq!(woken.poll_timeout(), None);
    }

    /// The member info last stored for `conn` by these actions.
    fn stored_member(actions: &[Action], conn: ConnId) -> MemberInfo {
        actions
            .iter()
            .rev()
            .find_map(|a| match a {
                Action::Admitted { conn: c, member } if *c == conn => Some(*member),
                _ => None,
            })
            .expect("an Admitted action")
    }

    /// Every deadline is the room's: a guest is held its whole lifetime (the native relay once
    /// closed it at 10 s, as a socket without Hello), a socket without Hello is closed at 10 s,
    /// a member idle past the idle timeout is closed, and activity moves that deadline.
    #[test]
    fn deadlines_hello_guest_and_idle() {
        let mut config = RoomConfig::new(ca().cluster_id(), 42);
        config.idle_timeout_ms = Some(IDLE_TIMEOUT_MS);
        let mut r = Room::new(config);
        let _ = join(&mut r, 1, hub(1));
        assert_eq!(r.poll_timeout(), Some(NOW + IDLE_TIMEOUT_MS));
        let _ = guest_join(&mut r, 10, hub(0xa0), hub(1), NOW);
        let mut out = Vec::new();
        r.handle_connect(ConnId(20), NOW, hub(20), &mut out);
        assert_eq!(r.poll_timeout(), Some(NOW + HELLO_TIMEOUT_MS));

        // At 10 s the silent socket goes, and only it.
        let mut out = Vec::new();
        r.handle_timeout(NOW + HELLO_TIMEOUT_MS, &mut out);
        assert_eq!(closes(&out), vec![(ConnId(20), CloseCode::HelloTimeout)]);
        // At 15 s the guest is still there and reaches its issuer.
        let mut out = Vec::new();
        r.handle_timeout(NOW + 15_000, &mut out);
        assert!(out.is_empty());
        r.handle_message(ConnId(10), NOW + 15_000, &send(hub(1), b"still"), &mut out);
        assert_eq!(sent_to(&out, ConnId(1)).len(), 1);
        // The member keeps itself alive with a keepalive at 59 s.
        r.handle_keepalive(ConnId(1), NOW + 59_000);
        let mut out = Vec::new();
        r.handle_timeout(NOW + GUEST_LIFETIME_MS, &mut out);
        assert_eq!(closes(&out), vec![(ConnId(10), CloseCode::GuestLimit)]);
        let mut out = Vec::new();
        r.handle_timeout(NOW + IDLE_TIMEOUT_MS, &mut out);
        assert!(out.is_empty(), "the keepalive moved the idle deadline");
        assert_eq!(r.poll_timeout(), Some(NOW + 59_000 + IDLE_TIMEOUT_MS));
        r.handle_timeout(NOW + 59_000 + IDLE_TIMEOUT_MS, &mut out);
        assert_eq!(closes(&out), vec![(ConnId(1), CloseCode::IdleTimeout)]);
        assert_eq!(r.connections(), 0);
        assert_eq!(r.poll_timeout(), None);
    }

    /// Sockets that have not said Hello are capped; the one past the cap is refused at once and
    /// the others keep their place.
    #[test]
    fn sockets_awaiting_hello_are_capped() {
        let mut r = room();
        let mut out = Vec::new();
        for i in 0..MAX_PENDING as u64 {
            r.handle_connect(ConnId(i), NOW, hub(1), &mut out);
        }
        assert!(out.is_empty());
        r.handle_connect(ConnId(9999), NOW, hub(2), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(9999), CloseCode::TryAgainLater)]);
        assert_eq!(r.connections(), MAX_PENDING);
        // One says Hello: a place is free again.
        let mut out = Vec::new();
        r.handle_message(ConnId(0), NOW, &hello(hub(1)), &mut out);
        r.handle_connect(ConnId(10_000), NOW, hub(2), &mut out);
        assert!(closes(&out).is_empty());
        // Past their deadline they all go.
        let mut out = Vec::new();
        r.handle_timeout(NOW + HELLO_TIMEOUT_MS, &mut out);
        assert_eq!(closes(&out).len(), MAX_PENDING);
        assert_eq!(r.online().collect::<Vec<_>>(), vec![hub(1)]);
    }

    #[test]
    fn join_gets_welcome_and_others_see_presence() {
        let mut r = room();
        let out = join(&mut r, 1, hub(1));
        assert!(matches!(
            out[1],
            Action::Admitted { conn: ConnId(1), member } if member.hub == hub(1)
        ));
        assert_eq!(
            sent_to(&out, ConnId(1)),
            vec![vec![Frame::Welcome {
                version: 1,
                online: vec![]
            }]]
        );
        let out = join(&mut r, 2, hub(2));
        assert_eq!(
            sent_to(&out, ConnId(2)),
            vec![vec![Frame::Welcome {
                version: 1,
                online: vec![hub(1)]
            }]]
        );
        assert_eq!(
            sent_to(&out, ConnId(1)),
            vec![vec![Frame::PeerJoined(vec![hub(2)])]]
        );
        assert_eq!(r.online().collect::<Vec<_>>(), vec![hub(1), hub(2)]);
    }

    fn join_at(room: &mut Room, conn: u64, h: HubId, at: u64) -> Vec<Action> {
        let mut out = Vec::new();
        room.handle_connect(ConnId(conn), at, h, &mut out);
        room.handle_message(ConnId(conn), at, &hello(h), &mut out);
        out
    }

    /// The `RateLimited` frames sent to `conn`: (whose limit, retry after, dropped).
    fn notices(actions: &[Action], conn: ConnId) -> Vec<(HubId, u32, u32)> {
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

    fn recvs(actions: &[Action], conn: ConnId) -> usize {
        sent_to(actions, conn)
            .into_iter()
            .flatten()
            .filter(|f| matches!(f, Frame::Recv { .. }))
            .count()
    }

    /// A room whose members may send `per_s` frames a second in bursts of `burst`, with no
    /// other limit that a test reaches.
    fn frame_limited_room(per_s: u64, burst: u64) -> Room {
        use crate::relay::rate::Rate;
        let big = Rate::new(1 << 30, 1 << 30);
        limited_room(Limits {
            send_frames: Rate::new(per_s, burst),
            send_bytes: big,
            recv_bytes: big,
        })
    }

    fn limited_room(limits: Limits) -> Room {
        Room::new(RoomConfig {
            limits,
            presence_window_ms: 0,
            ..RoomConfig::new(ca().cluster_id(), 42)
        })
    }

    /// One member sending past its limit loses the frames past it and is told, once per
    /// notice interval, with the count; the others' frames go through; a member that goes on
    /// past its limit for 5 s is closed with 4009, and nobody else is; it is then kept out for
    /// 10 s.
    #[test]
    fn a_flooder_is_limited_and_told_and_nobody_else_is() {
        let mut r = frame_limited_room(100, 50);
        for i in 1..=4 {
            let _ = join(&mut r, i, hub(i as u8));
        }
        let frames = |n: usize| -> Vec<u8> { (0..n).flat_map(|_| send(hub(2), b"x")).collect() };
        // Hub 1 sends 60 frames to hub 2 in one message: 50 pass, 10 are dropped, one notice.
        let mut out = Vec::new();
        r.handle_message(ConnId(1), NOW, &frames(60), &mut out);
        assert_eq!(recvs(&out, ConnId(2)), 50);
        // 100 frames a second: the next one in 10 ms.
        assert_eq!(notices(&out, ConnId(1)), vec![(hub(1), 10, 1)]);
        assert_eq!(r.throttled_until(ConnId(1), NOW), Some(NOW + 10));
        // Hub 3 and hub 4 are not limited by it.
        let mut out = Vec::new();
        r.handle_message(ConnId(3), NOW, &send(hub(4), b"ping"), &mut out);
        r.handle_message(ConnId(4), NOW, &send(hub(3), b"pong"), &mut out);
        r.handle_message(ConnId(3), NOW, &send(hub(2), b"hi"), &mut out);
        assert_eq!(recvs(&out, ConnId(4)), 1);
        assert_eq!(recvs(&out, ConnId(3)), 1);
        assert_eq!(recvs(&out, ConnId(2)), 1);
        assert!(notices(&out, ConnId(3)).is_empty() && notices(&out, ConnId(4)).is_empty());
        // The next notice carries the drops since the last one.
        let mut out = Vec::new();
        r.handle_message(ConnId(1), NOW + 300, &frames(31), &mut out);
        assert_eq!(recvs(&out, ConnId(2)), 30, "refilled: 30 pass");
        assert_eq!(notices(&out, ConnId(1)), vec![(hub(1), 10, 9 + 1)]);
        // Still a little past its limit 5 s after the first notice: closed as rate-limited.
        let mut at = NOW + 300;
        let mut closed = Vec::new();
        while closed.is_empty() && at < NOW + 10_000 {
            at += 200;
            let mut out = Vec::new();
            r.handle_message(ConnId(1), at, &frames(21), &mut out);
            closed = closes(&out);
        }
        assert_eq!(closed, vec![(ConnId(1), CloseCode::RateLimited)]);
        assert!(
            (NOW + 5_000..NOW + 5_200).contains(&at),
            "closed at {}",
            at - NOW
        );
        assert_eq!(r.online().collect::<Vec<_>>(), vec![hub(2), hub(3), hub(4)]);
        // Kept out for 10 s, then welcome again.
        let out = join_at(&mut r, 5, hub(1), at + 9_000);
        assert_eq!(closes(&out), vec![(ConnId(5), CloseCode::RateLimited)]);
        let out = join_at(&mut r, 6, hub(1), at + 10_000);
        assert!(closes(&out).is_empty());
        assert_eq!(r.hub_of(ConnId(6)), Some(hub(1)));
    }

    /// A flood (a burst of its limit dropped at once) is closed at once, and each time again
    /// keeps the hub out twice as long.
    #[test]
    fn a_flood_is_closed_at_once_and_kept_out_longer_each_time() {
        let mut r = frame_limited_room(100, 50);
        let _ = join(&mut r, 2, hub(2));
        let flood: Vec<u8> = (0..200).flat_map(|_| send(hub(2), b"x")).collect();
        let mut at = NOW;
        for (conn, kept_out) in [(10, 10_000), (20, 20_000), (30, 40_000)] {
            let _ = join_at(&mut r, conn, hub(1), at);
            let mut out = Vec::new();
            r.handle_message(ConnId(conn), at, &flood, &mut out);
            assert_eq!(closes(&out), vec![(ConnId(conn), CloseCode::RateLimited)]);
            assert_eq!(
                recvs(&out, ConnId(2)),
                50,
                "its burst, and not a frame more"
            );
            // Its connect is refused before a socket opens, until its time is up.
            assert_eq!(r.kept_out(&hub(1), at), Some(kept_out));
            assert_eq!(r.kept_out(&hub(1), at + kept_out - 1), Some(1));
            assert_eq!(r.kept_out(&hub(1), at + kept_out), None);
            // And a socket that opened anyway has its Hello refused.
            let refused = join_at(&mut r, conn + 1, hub(1), at + kept_out - 1);
            assert_eq!(
                closes(&refused),
                vec![(ConnId(conn + 1), CloseCode::RateLimited)]
            );
            at += kept_out;
        }
        // Another hub is not kept out for it.
        assert_eq!(r.kept_out(&hub(3), NOW + 1), None);
        let out = join_at(&mut r, 40, hub(3), NOW + 1);
        assert!(closes(&out).is_empty());
    }

    /// A socket's `Hello` must name the hub its connect URL named: the keep-out check made on
    /// the URL cannot be passed by naming an innocent hub there.
    #[test]
    fn the_hello_names_the_hub_of_the_connect_url() {
        let mut r = room();
        let mut out = Vec::new();
        r.handle_connect(ConnId(1), NOW, hub(2), &mut out);
        r.handle_message(ConnId(1), NOW, &hello(hub(1)), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(1), CloseCode::ProtocolError)]);
        assert_eq!(r.conn_of(&hub(1)), None);
        // Restored before its Hello, it keeps the name it connected with.
        let mut r = room();
        let mut out = Vec::new();
        r.restore(ConnId(1), NOW, hub(2), None, NOW, &mut out);
        r.handle_message(ConnId(1), NOW, &hello(hub(1)), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(1), CloseCode::ProtocolError)]);
        let out = join(&mut r, 2, hub(1));
        assert!(closes(&out).is_empty());
        assert_eq!(r.conn_of(&hub(1)), Some(ConnId(2)));
    }

    /// A member that stops when told starts a new episode: it is never closed.
    #[test]
    fn a_member_that_backs_off_is_never_closed() {
        let mut r = frame_limited_room(100, 10);
        let _ = join(&mut r, 1, hub(1));
        let _ = join(&mut r, 2, hub(2));
        let burst: Vec<u8> = (0..11).flat_map(|_| send(hub(2), b"x")).collect();
        for second in 0..20 {
            let mut out = Vec::new();
            r.handle_message(ConnId(1), NOW + second * 1_100, &burst, &mut out);
            assert_eq!(notices(&out, ConnId(1)).len(), 1, "second {second}");
            assert!(closes(&out).is_empty(), "second {second}");
        }
    }

    /// Many senders within their own limits cannot push one receiver past its limit: the
    /// frames past it are dropped, and each sender is told whose limit it was.
    #[test]
    fn a_receiver_is_sent_no_more_than_its_limit() {
        use crate::relay::rate::Rate;
        let mut r = limited_room(Limits {
            send_frames: Rate::new(1 << 20, 1 << 20),
            send_bytes: Rate::new(1 << 30, 1 << 30),
            recv_bytes: Rate::new(10_000, 1_000),
        });
        for i in 1..=3 {
            let _ = join(&mut r, i, hub(i as u8));
        }
        let payload = [0u8; 79]; // 100 bytes on the wire
        let mut out = Vec::new();
        for _ in 0..6 {
            r.handle_message(ConnId(1), NOW, &send(hub(3), &payload), &mut out);
            r.handle_message(ConnId(2), NOW, &send(hub(3), &payload), &mut out);
        }
        assert_eq!(recvs(&out, ConnId(3)), 10);
        assert_eq!(notices(&out, ConnId(2)), vec![(hub(3), 10, 1)]);
        assert_eq!(notices(&out, ConnId(1)), vec![(hub(3), 10, 1)]);
        // A receiver's limit does not hold its senders' reading.
        assert_eq!(r.throttled_until(ConnId(1), NOW), None);
        // Hub 1 to hub 2 is not affected.
        let mut out = Vec::new();
        r.handle_message(ConnId(1), NOW, &send(hub(2), &payload), &mut out);
        assert_eq!(recvs(&out, ConnId(2)), 1);
    }

    /// Joins and leaves within the window after an announcement are announced together at its
    /// end: one message per member, leaves first, each hub once; a payload from a hub a member
    /// has not been told of yet comes after its announcement.
    #[test]
    fn presence_changes_of_a_moment_are_announced_together() {
        let mut r = Room::new(RoomConfig::new(ca().cluster_id(), 42));
        let _ = join_at(&mut r, 1, hub(1), NOW);
        let t = NOW + PRESENCE_WINDOW_MS;
        // Nothing was announced within the window: hub 2's join goes out at once.
        let out = join_at(&mut r, 2, hub(2), t);
        assert_eq!(
            sent_to(&out, ConnId(1)),
            vec![vec![Frame::PeerJoined(vec![hub(2)])]]
        );
        assert_eq!(r.poll_timeout(), None);
        // Within the window: gathered.
        let mut out = join_at(&mut r, 3, hub(3), t + 10);
        out.extend(join_at(&mut r, 4, hub(4), t + 20));
        r.handle_disconnect(ConnId(2), NOW + 30, &mut out);
        out.extend(join_at(&mut r, 5, hub(2), t + 40));
        assert!(sent_to(&out, ConnId(1)).is_empty());
        assert_eq!(r.poll_timeout(), Some(t + PRESENCE_WINDOW_MS));
        // Hub 3 sends to hub 1 before the window ends: hub 1 hears of hub 3 first.
        let mut out = Vec::new();
        r.handle_message(ConnId(3), NOW + 50, &send(hub(1), b"hi"), &mut out);
        assert_eq!(
            sent_to(&out, ConnId(1)),
            vec![vec![
                Frame::PeerLeft(vec![hub(2)]),
                Frame::PeerJoined(vec![hub(3), hub(4), hub(2)]),
                Frame::Recv {
                    src: hub(3),
                    payload: b"hi"
                }
            ]]
        );
        // The window ends: each member that has not been told hears what it missed.
        let mut out = Vec::new();
        r.handle_timeout(t + PRESENCE_WINDOW_MS, &mut out);
        assert!(sent_to(&out, ConnId(1)).is_empty(), "told already");
        assert_eq!(
            sent_to(&out, ConnId(3)),
            vec![vec![
                Frame::PeerLeft(vec![hub(2)]),
                Frame::PeerJoined(vec![hub(4), hub(2)])
            ]]
        );
        assert_eq!(
            sent_to(&out, ConnId(4)),
            vec![vec![
                Frame::PeerLeft(vec![hub(2)]),
                Frame::PeerJoined(vec![hub(2)])
            ]]
        );
        assert!(
            sent_to(&out, ConnId(5)).is_empty(),
            "the new hub 2 knows from its Welcome"
        );
        assert_eq!(r.poll_timeout(), None);
        // 500 hubs coming back at once: each member gets one message per window, not 500.
        let mut out = Vec::new();
        for i in 0..500u64 {
            let h = HubId([
                (i >> 8) as u8 + 0x10,
                i as u8,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
            ]);
            out.extend(join_at(&mut r, 100 + i, h, t + 1_000));
        }
        r.handle_timeout(t + 2_000, &mut out);
        let to_first: Vec<_> = sent_to(&out, ConnId(1));
        assert_eq!(
            to_first.len(),
            2,
            "the first join at once, then the other 499 together"
        );
        assert!(matches!(&to_first[1][..], [Frame::PeerJoined(hubs)] if hubs.len() == 499));
    }

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
    fn duplicate_hub_id_replaces_the_older_connection() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        let _ = join(&mut r, 2, hub(2));
        let out = join(&mut r, 3, hub(1));
        assert_eq!(closes(&out), vec![(ConnId(1), CloseCode::Replaced)]);
        assert_eq!(r.conn_of(&hub(1)), Some(ConnId(3)));
        assert_eq!(
            sent_to(&out, ConnId(2)),
            vec![vec![Frame::PeerJoined(vec![hub(1)])]]
        );
        // The replaced socket's close arrives later: nobody sees hub 1 leave.
        let mut out = Vec::new();
        r.handle_disconnect(ConnId(1), NOW, &mut out);
        assert!(out.is_empty());
        assert_eq!(r.conn_of(&hub(1)), Some(ConnId(3)));
        // Traffic for hub 1 goes to the new socket.
        let mut out = Vec::new();
        r.handle_message(ConnId(2), NOW, &send(hub(1), b"z"), &mut out);
        assert_eq!(sent_to(&out, ConnId(3)).len(), 1);
    }

    #[test]
    fn leave_is_broadcast_and_routing_stops() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        let _ = join(&mut r, 2, hub(2));
        let mut out = Vec::new();
        r.handle_disconnect(ConnId(2), NOW, &mut out);
        assert_eq!(
            sent_to(&out, ConnId(1)),
            vec![vec![Frame::PeerLeft(vec![hub(2)])]]
        );
        let mut out = Vec::new();
        r.handle_message(ConnId(1), NOW, &send(hub(2), b"x"), &mut out);
        assert_eq!(
            sent_to(&out, ConnId(1)),
            vec![vec![Frame::Undeliverable(hub(2))]]
        );
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
    fn hello_rules() {
        let mut r = room();
        let mut out = Vec::new();
        r.handle_connect(ConnId(1), NOW, hub(1), &mut Vec::new());
        r.handle_message(ConnId(1), NOW, &send(hub(2), b"x"), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(1), CloseCode::HelloRequired)]);

        let mut out = Vec::new();
        r.handle_connect(ConnId(2), NOW, hub(2), &mut Vec::new());
        let c = creds(hub(2));
        let ext = c.login(NOW, &mut StdRng::seed_from_u64(99));
        let mut h = c.hello(&ext);
        h.version = 9;
        r.handle_message(
            ConnId(2),
            NOW,
            &Frame::Hello(h).to_message().unwrap(),
            &mut out,
        );
        assert_eq!(
            closes(&out),
            vec![(ConnId(2), CloseCode::UnsupportedVersion)]
        );

        let _ = join(&mut r, 3, hub(3));
        let mut out = Vec::new();
        r.handle_message(ConnId(3), NOW, &hello(hub(3)), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(3), CloseCode::ProtocolError)]);

        // Relay-to-hub frames from a hub are refused.
        let _ = join(&mut r, 4, hub(4));
        let mut out = Vec::new();
        r.handle_message(
            ConnId(4),
            NOW,
            &Frame::PeerLeft(vec![hub(1)]).to_message().unwrap(),
            &mut out,
        );
        assert_eq!(closes(&out), vec![(ConnId(4), CloseCode::ProtocolError)]);

        let mut out = Vec::new();
        r.handle_connect(ConnId(5), NOW, hub(5), &mut Vec::new());
        r.handle_text(ConnId(5), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(5), CloseCode::ProtocolError)]);
        assert_eq!(r.connections(), 0);
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
    fn room_full() {
        let mut r = Room::new(RoomConfig {
            max_members: 2,
            presence_window_ms: 0,
            ..RoomConfig::new(ca().cluster_id(), 0)
        });
        let _ = join(&mut r, 1, hub(1));
        let _ = join(&mut r, 2, hub(2));
        let out = join(&mut r, 3, hub(3));
        assert_eq!(closes(&out), vec![(ConnId(3), CloseCode::RoomFull)]);
        // A replacement is not a new member.
        let out = join(&mut r, 4, hub(2));
        assert_eq!(closes(&out), vec![(ConnId(2), CloseCode::Replaced)]);
    }

    /// Sockets that record what happened and refuse messages for some connections.
    #[derive(Default)]
    struct Recorder {
        refuse: Vec<ConnId>,
        sent: Vec<ConnId>,
        closed: Vec<(ConnId, CloseCode)>,
        admitted: Vec<(ConnId, HubId)>,
        stored: Vec<Vec<u8>>,
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
        fn remember_login(&mut self, _login: LoginNonce) {}
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

    fn member(b: u8) -> MemberInfo {
        MemberInfo {
            hub: hub(b),
            fingerprint: [b; 32],
            key_hash: [b; 32],
            guest_of: None,
            admitted_ms: NOW,
            sends: 0,
        }
    }

    fn revoking(version: u64, h: HubId) -> Vec<u8> {
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

    #[test]
    fn admission_requires_a_valid_login() {
        let mut r = room();
        // No login.
        let mut out = Vec::new();
        r.handle_connect(ConnId(1), NOW, hub(1), &mut Vec::new());
        r.handle_message(
            ConnId(1),
            NOW,
            &Frame::Hello(Hello::new(hub(1))).to_message().unwrap(),
            &mut out,
        );
        assert_eq!(
            closes(&out),
            vec![(ConnId(1), CloseCode::CertificateRequired)]
        );
        // A replayed login.
        let msg = hello(hub(2));
        let mut out = Vec::new();
        r.handle_connect(ConnId(2), NOW, hub(2), &mut Vec::new());
        r.handle_message(ConnId(2), NOW, &msg, &mut out);
        assert!(closes(&out).is_empty());
        let mut out = Vec::new();
        r.handle_connect(ConnId(3), NOW, hub(2), &mut Vec::new());
        r.handle_message(ConnId(3), NOW, &msg, &mut out);
        assert_eq!(closes(&out), vec![(ConnId(3), CloseCode::ReplayedLogin)]);
        // Another cluster's room refuses this cluster's hubs.
        let mut other = Room::new(RoomConfig::new(
            ClusterCa::from_secret(&[7; 32]).cluster_id(),
            0,
        ));
        let mut out = Vec::new();
        other.handle_connect(ConnId(1), NOW, hub(1), &mut Vec::new());
        other.handle_message(ConnId(1), NOW, &hello(hub(1)), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(1), CloseCode::ForeignCluster)]);
    }

    #[test]
    fn a_newer_revocation_list_closes_revoked_members_and_reaches_everyone() {
        let mut r = room();
        for i in 1..=3 {
            let _ = join(&mut r, i, hub(i as u8));
        }
        let v2 = revoking(2, hub(3));
        let mut out = Vec::new();
        r.handle_message(
            ConnId(1),
            NOW,
            &Frame::RevocationList(&v2).to_message().unwrap(),
            &mut out,
        );
        assert_eq!(closes(&out), vec![(ConnId(3), CloseCode::Revoked)]);
        assert!(out.contains(&Action::StoreRevocations { bytes: v2.clone() }));
        // The revoked hub is closed without the list (docs/PROTOCOL.md section 8).
        assert!(sent_to(&out, ConnId(3)).is_empty());
        for c in [1, 2] {
            assert!(sent_to(&out, ConnId(c)).contains(&vec![Frame::RevocationList(&v2)]));
        }
        assert_eq!(r.online().collect::<Vec<_>>(), vec![hub(1), hub(2)]);
        // The revoked hub cannot come back.
        let out = join(&mut r, 4, hub(3));
        assert_eq!(closes(&out), vec![(ConnId(4), CloseCode::Revoked)]);
        // A hub that joins later receives the list with its welcome.
        let out = join(&mut r, 5, hub(5));
        let frames = &sent_to(&out, ConnId(5))[0];
        assert_eq!(frames[1], Frame::RevocationList(&v2));
        // An older list is ignored, and its sender is sent the newer one.
        let v1 = revoking(1, hub(2));
        let mut out = Vec::new();
        r.handle_message(
            ConnId(2),
            NOW,
            &Frame::RevocationList(&v1).to_message().unwrap(),
            &mut out,
        );
        assert!(closes(&out).is_empty());
        assert_eq!(
            sent_to(&out, ConnId(2)),
            vec![vec![Frame::RevocationList(&v2)]]
        );
        assert_eq!(r.revocations().unwrap().version(), 2);
        // A list signed by another CA is a protocol violation.
        let forged = RevocationList {
            version: 9,
            issued_at_ms: NOW,
            entries: vec![],
        }
        .sign(&ClusterCa::from_secret(&[8; 32]))
        .unwrap();
        let mut out = Vec::new();
        r.handle_message(
            ConnId(2),
            NOW,
            &Frame::RevocationList(&forged).to_message().unwrap(),
            &mut out,
        );
        assert_eq!(closes(&out), vec![(ConnId(2), CloseCode::ProtocolError)]);
        assert_eq!(r.revocations().unwrap().version(), 2);
    }

    #[test]
    fn remembered_logins_cannot_be_replayed_after_a_rebuild() {
        let mut r = room();
        let msg = hello(hub(1));
        let mut out = Vec::new();
        r.handle_connect(ConnId(1), NOW, hub(1), &mut Vec::new());
        r.handle_message(ConnId(1), NOW, &msg, &mut out);
        let remembered: Vec<LoginNonce> = out
            .iter()
            .filter_map(|a| match a {
                Action::RememberLogin(l) => Some(*l),
                _ => None,
            })
            .collect();
        assert_eq!(remembered.len(), 1);
        assert!(!r.is_idle(NOW));
        // The room is evicted and rebuilt from storage.
        let mut woken = room();
        for l in remembered {
            woken.remember_login(l);
        }
        let mut out = Vec::new();
        woken.handle_connect(ConnId(2), NOW, hub(1), &mut Vec::new());
        woken.handle_message(ConnId(2), NOW + 1_000, &msg, &mut out);
        assert_eq!(closes(&out), vec![(ConnId(2), CloseCode::ReplayedLogin)]);
        // Once the login can no longer pass the skew check, nothing needs remembering.
        assert!(woken.is_idle(NOW + crate::trust::login::MAX_SKEW_MS + 10_000));
    }

    #[test]
    fn a_stored_list_is_enforced_after_a_rebuild() {
        let mut r = room();
        assert!(r.set_revocations(&revoking(3, hub(1))));
        assert!(!r.set_revocations(&revoking(2, hub(2))));
        assert!(!r.set_revocations(b"garbage"));
        let out = join(&mut r, 1, hub(1));
        assert_eq!(closes(&out), vec![(ConnId(1), CloseCode::Revoked)]);
    }

    #[test]
    fn status_and_restore_after_hibernation() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        let _ = join(&mut r, 2, hub(2));
        // Rebuild from what the relay stored per socket: same routing, no presence noise.
        let mut woken = Room::new(RoomConfig::new(ca().cluster_id(), 99));
        let mut out = Vec::new();
        woken.restore(ConnId(1), NOW, hub(1), Some(member(1)), NOW, &mut out);
        woken.restore(ConnId(2), NOW, hub(2), Some(member(2)), NOW, &mut out);
        woken.restore(ConnId(3), NOW, hub(3), None, NOW, &mut out);
        assert!(out.is_empty());
        woken.handle_message(ConnId(1), NOW, &send(hub(2), b"p"), &mut out);
        assert_eq!(sent_to(&out, ConnId(2)).len(), 1);
        let mut out = Vec::new();
        woken.handle_message(
            ConnId(2),
            NOW,
            &Frame::StatusRequest.to_message().unwrap(),
            &mut out,
        );
        assert_eq!(
            sent_to(&out, ConnId(2)),
            vec![vec![Frame::Status(RoomStatus {
                online: 2,
                instance_started_ms: 99
            })]]
        );
        // Two sockets claiming one hub: the newer one wins, whatever the order.
        let mut r = room();
        let mut out = Vec::new();
        r.restore(ConnId(7), NOW, hub(1), Some(member(1)), NOW, &mut out);
        r.restore(ConnId(5), NOW, hub(1), Some(member(1)), NOW, &mut out);
        r.restore(ConnId(8), NOW, hub(2), Some(member(2)), NOW, &mut out);
        r.restore(ConnId(9), NOW, hub(2), Some(member(2)), NOW, &mut out);
        assert_eq!(r.conn_of(&hub(1)), Some(ConnId(7)));
        assert_eq!(r.conn_of(&hub(2)), Some(ConnId(9)));
        assert_eq!(
            closes(&out),
            vec![
                (ConnId(5), CloseCode::Replaced),
                (ConnId(8), CloseCode::Replaced)
            ]
        );
        assert_eq!(r.connections(), 2);
    }

    /// The message `forward` would send: the routing header it gives, then the payload as is.
    fn forwarded(room: &mut Room, conn: u64, at: u64, message: &[u8]) -> Option<(ConnId, Vec<u8>)> {
        let fwd = room.forward(ConnId(conn), at, message, message.len())?;
        let mut out = fwd.header.to_vec();
        out.extend_from_slice(&message[ROUTING_HEADER_LEN..]);
        Some((fwd.conn, out))
    }

    #[test]
    fn a_single_send_is_forwarded_as_the_recv_the_room_would_build() {
        let (mut fast, mut slow) = (room(), room());
        for r in [&mut fast, &mut slow] {
            let _ = join(r, 1, hub(1));
            let _ = join(r, 2, hub(2));
        }
        for len in [0, 1, 1000, crate::relay::frame::MAX_PAYLOAD] {
            let message = send(hub(2), &vec![0x5a; len]);
            let (to, bytes) = forwarded(&mut fast, 1, NOW + 1, &message).expect("forwarded");
            let mut out = Vec::new();
            slow.handle_message(ConnId(1), NOW + 1, &message, &mut out);
            assert_eq!(to, ConnId(2));
            assert_eq!(
                out,
                vec![Action::Send {
                    conn: ConnId(2),
                    message: bytes
                }],
                "payload of {len} bytes"
            );
        }
    }

    #[test]
    fn forward_leaves_to_handle_message_what_it_must_decide() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        let _ = join(&mut r, 2, hub(2));
        let _ = guest_join(&mut r, 10, hub(0xa0), hub(1), NOW);
        let mut out = Vec::new();
        r.handle_connect(ConnId(11), NOW, hub(0xb0), &mut out);
        let two = [send(hub(2), b"a"), send(hub(2), b"b")].concat();
        let mut truncated = send(hub(2), b"abc");
        truncated.pop();
        let declined: [(&str, u64, Vec<u8>); 8] = [
            ("two frames in one message", 1, two),
            ("a hub not in the room", 1, send(hub(9), b"x")),
            ("a guest, even from its issuer", 1, send(hub(0xa0), b"x")),
            ("from a guest", 10, send(hub(1), b"x")),
            ("from a socket without Hello", 11, send(hub(1), b"x")),
            (
                "a status request",
                1,
                Frame::StatusRequest.to_message().unwrap(),
            ),
            ("a length that is not the message's", 1, truncated),
            (
                "a frame type other than Send",
                1,
                Frame::Recv {
                    src: hub(2),
                    payload: b"x",
                }
                .to_message()
                .unwrap(),
            ),
        ];
        for (what, conn, message) in declined {
            assert_eq!(
                r.forward(ConnId(conn), NOW, &message, message.len()),
                None,
                "{what}"
            );
        }
        // A payload over the limit: the header says so, whatever follows.
        let mut head = send(hub(2), b"")[..ROUTING_HEADER_LEN].to_vec();
        let body = (HUB_ID_LEN + crate::relay::frame::MAX_PAYLOAD + 1) as u32;
        head[1..FRAME_HEADER_LEN].copy_from_slice(&body.to_be_bytes());
        assert_eq!(
            r.forward(ConnId(1), NOW, &head, FRAME_HEADER_LEN + body as usize),
            None
        );
        assert!(forwarded(&mut r, 1, NOW, &send(hub(2), b"x")).is_some());
    }

    #[test]
    fn forward_waits_for_the_receiver_to_hear_of_new_members() {
        let mut r = Room::new(RoomConfig::new(ca().cluster_id(), 42));
        let _ = join_at(&mut r, 1, hub(1), NOW);
        let _ = join_at(&mut r, 2, hub(2), NOW + PRESENCE_WINDOW_MS);
        let _ = join_at(&mut r, 3, hub(3), NOW + PRESENCE_WINDOW_MS + 10);
        // Hub 1 has not been told of hub 3 yet: the room's own path tells it first.
        let message = send(hub(1), b"hi");
        assert_eq!(
            forwarded(&mut r, 3, NOW + PRESENCE_WINDOW_MS + 20, &message),
            None
        );
        let mut out = Vec::new();
        r.handle_message(ConnId(3), NOW + PRESENCE_WINDOW_MS + 20, &message, &mut out);
        assert_eq!(
            sent_to(&out, ConnId(1)),
            vec![vec![
                Frame::PeerJoined(vec![hub(3)]),
                Frame::Recv {
                    src: hub(3),
                    payload: b"hi"
                }
            ]]
        );
        // Told: now the fast path takes it.
        assert!(forwarded(&mut r, 3, NOW + PRESENCE_WINDOW_MS + 30, &message).is_some());
    }

    #[test]
    fn forward_charges_the_limits_and_declines_past_them() {
        use crate::relay::rate::Rate;
        // 50 frames in a burst per sender; 2,000 bytes in a burst per receiver.
        let mut r = limited_room(Limits {
            send_frames: Rate::new(100, 50),
            send_bytes: Rate::new(1 << 30, 1 << 30),
            recv_bytes: Rate::new(1, 2000),
        });
        let _ = join(&mut r, 1, hub(1));
        let _ = join(&mut r, 2, hub(2));
        // More than hub 2 may ever be sent at once: declined, after hub 1's own check passed,
        // and hub 1 is not charged for it.
        let big = send(hub(2), &[0; 3000]);
        for _ in 0..60 {
            assert_eq!(forwarded(&mut r, 1, NOW, &big), None);
        }
        let message = send(hub(2), b"x");
        for i in 0..50 {
            assert!(forwarded(&mut r, 1, NOW, &message).is_some(), "frame {i}");
        }
        // The 51st is over the burst: declined, and the room's own path limits and tells.
        assert_eq!(forwarded(&mut r, 1, NOW, &message), None);
        let mut out = Vec::new();
        r.handle_message(ConnId(1), NOW, &message, &mut out);
        assert_eq!(recvs(&out, ConnId(2)), 0);
        assert_eq!(notices(&out, ConnId(1)), vec![(hub(1), 10, 1)]);
    }
}
