//! Requests and answers between hubs, over the session layer, as a sans-IO state machine: what
//! a hub asks its peers (ping, info, apps, call) and what its peers ask it, each message decoded
//! once into an owned, typed value (docs/PROTOCOL.md section 10, "Requests and answers").
//!
//! [`Rpc`] sits on top of [`crate::session::peer::PeerSessions`]: what it returns to send goes to
//! `PeerSessions::send`, and every whole message a session delivers goes to
//! [`Rpc::handle_received`]. Calling pattern, with `now_ms` the caller's clock (Unix ms):
//!
//! 1. [`Rpc::request`] registers a request with its deadline and returns its token and the
//!    message to send, or no message when the request is a call queued behind this hub's calls
//!    in flight to that peer; a request whose message could not be sent is taken back with
//!    [`Rpc::abandon`].
//! 2. [`Rpc::handle_received`] decodes a message once and returns what it is: a request from the
//!    peer ([`Inbound::Call`], [`Inbound::Apps`], [`Inbound::Info`], [`Inbound::Ping`]), a
//!    cancel of one of its running calls, a one-way notice, or the answer to one of this hub's
//!    requests ([`Inbound::Answer`], matched to its request by token, peer and kind).
//! 3. The application answers each request it was given with [`Rpc::answer`] (at most once).
//! 4. At [`Rpc::poll_timeout`], [`Rpc::handle_timeout`]: requests past their deadline are
//!    answered [`Failure::Timeout`], and the peer of a call is told to stop (`cancel`).
//! 5. After each of the above, [`Rpc::poll_transmit`] until `None` (cancels, refusals the layer
//!    makes itself, and queued calls whose turn came: a [`Transmit`] that names its request and
//!    could not be sent is reported with [`Rpc::handle_unsent`]), and [`Rpc::poll_answered`]
//!    until `None` (requests that ended without an answer: timeouts, failed sessions).
//!
//! Bounds (PROTOCOL.md section 6): a hub keeps at most [`MAX_OUTSTANDING`] requests of its own
//! waiting; a peer may have at most [`MAX_CALLS_PER_PEER`] calls and [`MAX_REQUESTS_PER_PEER`]
//! other requests waiting for this hub's answer, may start at most [`CALL_RATE_PER_S`] calls a
//! second (a bucket of [`CALL_BURST`]), and a request of a peer whose token is that of one of its
//! requests still waiting is refused ([`CallErrorCode::DuplicateToken`]): it never replaces the
//! running one. The layer refuses these itself and says so with [`Inbound::Refused`], so the
//! application can record it.
//!
//! Across an outage (a hub's path to the relay died and came back, or its peer's did), a request
//! is sent again, with its token and bytes unchanged ([`Rpc::resend`]), and the target tells a
//! repetition from a new request by its digest: a call still running is not started again, and
//! a call already answered gets the answer it was given, kept for as long as its caller may wait
//! ([`KEPT_ANSWERS_PER_PEER`], [`KEPT_ANSWER_BYTES_PER_PEER`]). A call whose answer was not kept
//! meets its spent nonce and is refused `replayed`: it never runs twice.
//!
//! A caller keeps to the target's bound: at most [`MAX_CALLS_PER_PEER`] of its calls are in
//! flight to one peer, and the rest wait in order, each within its own deadline, for one of them
//! to end (as HTTP/2 queues streams past its concurrency limit). A queued call is sent with the
//! timeout it has left, so the target stops when its caller does.

use std::collections::{BTreeSet, HashMap, VecDeque};

use ed25519_dalek::VerifyingKey;
use sha2::{Digest as _, Sha256};

use crate::agent::{CallErrorCode, Delegation, SignedDelegation, LISTING};
use crate::msg::{Msg, MsgError, MsgKind, SESSION_VERSION_REPEATS};
use crate::trust::VerifiedPeer;
use crate::HubId;

/// Requests of this hub waiting for their answers at once; more are refused at once.
pub const MAX_OUTSTANDING: usize = 1024;

/// Calls from one peer waiting for this hub's answer at once; more are refused `busy`.
pub const MAX_CALLS_PER_PEER: usize = 16;

/// Other requests (ping, info, apps) from one peer waiting for this hub's answer at once; more
/// are refused `busy`.
pub const MAX_REQUESTS_PER_PEER: usize = 64;

/// Calls one peer may start a second, on average; past its bucket, calls are refused `busy`.
pub const CALL_RATE_PER_S: u64 = 1_000;

/// Calls one peer may start at once after a quiet spell (the bucket's size).
pub const CALL_BURST: u64 = 1_000;

/// Peers whose call rate is remembered at once; buckets already full are forgotten first.
const MAX_RATED_PEERS: usize = 1_024;

/// Longest a call may run on its target, whatever its `timeout_ms` says.
pub const MAX_CALL_TIMEOUT_MS: u64 = 55_000;

/// A caller waits this long past a call's timeout for its answer (the answer's way back), then
/// tells the target to stop.
pub const ANSWER_GRACE_MS: u64 = 2_000;

/// A request other than a call that this hub has not answered this long after it came is
/// forgotten (its asker gave up long before).
pub const REQUEST_TTL_MS: u64 = 60_000;

/// Answers to calls a hub keeps per peer after sending them, so that a call sent again after an
/// outage gets its answer rather than a refusal; past this, an answer is not kept.
pub const KEPT_ANSWERS_PER_PEER: usize = 32;

/// Bytes of the answers a hub keeps per peer; an answer that does not fit is not kept.
pub const KEPT_ANSWER_BYTES_PER_PEER: usize = 4 * 1024 * 1024;

/// Bytes of this hub's own requests kept to be sent again after an outage, in all; a request
/// that does not fit is not kept, and waits for its answer or its deadline.
pub const RESEND_KEPT_BYTES: usize = 32 * 1024 * 1024;

/// The token of a request: unique among one hub's requests waiting for their answers.
pub type Token = u64;

/// When a caller stops waiting for a call of `timeout_ms` sent at `now_ms`.
pub fn call_deadline(now_ms: u64, timeout_ms: u32) -> u64 {
    now_ms + u64::from(timeout_ms).min(MAX_CALL_TIMEOUT_MS) + ANSWER_GRACE_MS
}

/// What a hub asks a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A round trip.
    Ping,
    /// What the peer reports about itself.
    Info,
    /// Which apps the peer shares with this hub, for `principal` (unsigned: what a peer of
    /// session version 1 understands).
    Apps {
        /// The operator the listing is for.
        principal: String,
    },
    /// Which apps the peer shares with this hub, for the principal and scopes a listing envelope
    /// signs (session version 2).
    SignedApps {
        /// The signed listing envelope (`agent::envelope`, app and tool [`crate::agent::LISTING`]).
        envelope: Vec<u8>,
    },
    /// A call of a tool of an app on the peer.
    Call(OutgoingCall),
    /// A new certificate for this hub's keys, from a peer that is an admin (session version 4).
    Renew,
}

/// A call as the caller sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingCall {
    /// How long the target may run it.
    pub timeout_ms: u32,
    /// The app.
    pub app: String,
    /// The tool.
    pub tool: String,
    /// The signed delegation envelope (`agent::envelope`).
    pub envelope: Vec<u8>,
    /// The tool's arguments (a JSON object), the bytes the envelope's hash binds.
    pub arguments: Vec<u8>,
}

/// The kind of a request, which says which answers fit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// A ping: answered by a pong.
    Ping,
    /// An info request: answered by info or refused.
    Info,
    /// An apps request: answered by apps or refused.
    Apps,
    /// A call: answered by a call result, a call error, or refused.
    Call,
    /// A renewal request: answered by a certificate or refused.
    Renew,
}

impl Request {
    /// Its kind.
    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Ping => RequestKind::Ping,
            Request::Info => RequestKind::Info,
            Request::Apps { .. } | Request::SignedApps { .. } => RequestKind::Apps,
            Request::Call(_) => RequestKind::Call,
            Request::Renew => RequestKind::Renew,
        }
    }

    fn encode(&self, token: Token) -> Result<Vec<u8>, MsgError> {
        match self {
            Request::Ping => Ok(Msg::Ping { token }.to_vec()),
            Request::Info => Ok(Msg::InfoRequest { token }.to_vec()),
            Request::Renew => Ok(Msg::RenewRequest { token }.to_vec()),
            Request::Apps { principal } => Msg::AppsRequest { token, principal }.encode(),
            Request::SignedApps { envelope } => {
                Ok(Msg::SignedAppsRequest { token, envelope }.to_vec())
            }
            Request::Call(c) => Msg::Call {
                token,
                timeout_ms: c.timeout_ms,
                app: &c.app,
                tool: &c.tool,
                envelope: &c.envelope,
                arguments: &c.arguments,
            }
            .encode(),
        }
    }
}

/// A call from a peer, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRequest {
    /// The calling hub, as its session's certificate names it.
    pub from: HubId,
    /// Its token (what the answer echoes).
    pub token: Token,
    /// The timeout the caller asked for.
    pub timeout_ms: u32,
    /// When the call must be done, on this hub's clock: when it came plus its timeout (at most
    /// [`MAX_CALL_TIMEOUT_MS`]).
    pub deadline_ms: u64,
    /// The app.
    pub app: String,
    /// The tool.
    pub tool: String,
    /// The signed delegation envelope, as sent.
    pub envelope: Vec<u8>,
    /// The arguments, as sent (the bytes the envelope's hash binds).
    pub arguments: Vec<u8>,
}

impl CallRequest {
    /// Checks `envelope` (this call's, decoded) against the call: signed by the calling hub
    /// (`peer_key`, its certificate's key), for this hub (`me`), within its time window at
    /// `now_ms`, for this app, tool and arguments (docs/PROTOCOL.md section 13).
    pub fn check_envelope(
        &self,
        envelope: &SignedDelegation,
        peer_key: &VerifyingKey,
        me: HubId,
        now_ms: u64,
    ) -> Result<(), CallErrorCode> {
        envelope.check(
            self.from,
            peer_key,
            me,
            now_ms,
            &self.app,
            &self.tool,
            &self.arguments,
        )
    }
}

/// Who an apps request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// A principal the asking hub names and does not sign (session version 1): the asked hub
    /// cannot tell who it is.
    Unsigned {
        /// The name.
        principal: String,
    },
    /// A listing envelope the asking hub signed (session version 2), to be checked.
    Signed {
        /// The envelope's bytes.
        envelope: Vec<u8>,
    },
}

impl Listing {
    /// What a signed listing's envelope says, checked: signed by `cert`'s hub, for this hub
    /// (`me`), within its time window at `now_ms`, naming no app and no arguments; `None` for an
    /// unsigned listing (its principal is only named: it counts as none).
    pub fn delegation(
        &self,
        cert: &VerifiedPeer,
        me: HubId,
        now_ms: u64,
    ) -> Result<Option<Delegation>, CallErrorCode> {
        match self {
            Listing::Unsigned { .. } => Ok(None),
            Listing::Signed { envelope } => {
                let signed = SignedDelegation::decode(envelope)?;
                signed.check(
                    cert.hub_id(),
                    cert.identity_key(),
                    me,
                    now_ms,
                    LISTING,
                    LISTING,
                    b"",
                )?;
                Ok(Some(signed.delegation))
            }
        }
    }
}

/// A request from a peer other than a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRequest {
    /// The asking hub.
    pub from: HubId,
    /// Its token.
    pub token: Token,
}

/// What a peer sent, decoded once and owned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inbound {
    /// Application data (no answer).
    Data {
        /// The sender.
        from: HubId,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A ping: answer [`Answer::Pong`] (or [`Answer::Refused`]).
    Ping(PeerRequest),
    /// An info request: answer [`Answer::Info`] (or [`Answer::Refused`]).
    Info(PeerRequest),
    /// A renewal request: answer [`Answer::Renewed`] (or [`Answer::Refused`]).
    Renew(PeerRequest),
    /// An apps request: answer [`Answer::Apps`] (or [`Answer::Refused`]).
    Apps {
        /// Who asks.
        request: PeerRequest,
        /// Who the listing is for.
        listing: Listing,
    },
    /// The session version the peer speaks (it says so once the session is up).
    Version {
        /// The peer.
        from: HubId,
        /// Its version.
        version: u16,
    },
    /// A call: answer [`Answer::CallResult`] or [`Answer::CallError`].
    Call(CallRequest),
    /// The caller of a running call stopped waiting for it: it is no longer to be answered.
    Cancel(PeerRequest),
    /// The signed cluster manifest the peer holds (not verified yet).
    Manifest {
        /// The sender.
        from: HubId,
        /// The signed bytes.
        manifest: Vec<u8>,
    },
    /// The peer's signed audit head (not verified yet).
    AuditHead {
        /// The sender.
        from: HubId,
        /// The signed head.
        head: Vec<u8>,
    },
    /// What the peer sees of the other hubs (not decoded yet).
    Views {
        /// The sender.
        from: HubId,
        /// The body.
        views: Vec<u8>,
    },
    /// A request the layer refused itself (a bound, or a token still in use), for the
    /// application to record.
    Refused {
        /// Who asked.
        request: PeerRequest,
        /// What it asked, if it was a call.
        call: Option<Box<CallRequest>>,
        /// Why (its code is what a call was answered with; another request was refused with
        /// the text).
        why: Refusal,
    },
    /// The answer to one of this hub's requests.
    Answer(Answered),
}

/// Why the layer refused a peer's request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// As many of the peer's requests of this kind are running as it may have
    /// ([`MAX_CALLS_PER_PEER`], [`MAX_REQUESTS_PER_PEER`]).
    #[error("too many requests from this hub are running")]
    TooMany,
    /// The peer started calls faster than [`CALL_RATE_PER_S`] a second for longer than its
    /// bucket ([`CALL_BURST`]) allows.
    #[error("this hub starts calls too fast (over {CALL_RATE_PER_S} a second)")]
    TooFast,
    /// One of the peer's requests with the same token is still waiting.
    #[error("a request with this token is still waiting")]
    DuplicateToken,
}

impl Refusal {
    /// The code a call is answered with.
    pub fn code(self) -> CallErrorCode {
        match self {
            Refusal::TooMany | Refusal::TooFast => CallErrorCode::Busy,
            Refusal::DuplicateToken => CallErrorCode::DuplicateToken,
        }
    }
}

/// Why a peer's request is not taken in.
enum Admission {
    /// It repeats a request of the peer that is still running (sent again after an outage):
    /// nothing to do, its answer will go out.
    Repeated,
    /// It is refused.
    Refused(Refusal),
}

/// A message the layer wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// To whom.
    pub to: HubId,
    /// The message.
    pub message: Vec<u8>,
    /// The request of this hub it carries (a queued call whose turn came): if it cannot be sent,
    /// say so with [`Rpc::handle_unsent`].
    pub request: Option<Token>,
}

/// A request of this hub that ended: its answer, or why it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// The request's token.
    pub token: Token,
    /// The peer asked.
    pub peer: HubId,
    /// The answer, or why there is none.
    pub result: Result<Reply, Failure>,
}

/// A successful answer's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The pong of a ping.
    Pong,
    /// An info document (JSON).
    Info(Vec<u8>),
    /// An apps document (JSON).
    Apps(Vec<u8>),
    /// A call's tool result (JSON).
    CallResult(Vec<u8>),
    /// A renewed certificate (DER, not verified yet).
    Renewed(Vec<u8>),
}

/// Why a request of this hub has no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// The peer refused the request (it suspended this hub, or it is busy).
    #[error("refused: {0}")]
    Refused(String),
    /// The peer refused or failed a call, with a stable code.
    #[error("{message} ({})", code.map_or("unknown code", CallErrorCode::name))]
    Call {
        /// The code (`None`: a code this build does not know, `raw`).
        code: Option<CallErrorCode>,
        /// The wire value.
        raw: u16,
        /// Its details.
        message: String,
    },
    /// No answer before the deadline.
    #[error("no answer in time")]
    Timeout,
    /// The session with the peer failed or was dropped.
    #[error("the session failed: {0}")]
    Session(String),
}

/// How this hub answers a request of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// To a ping.
    Pong,
    /// To an info request: the JSON document.
    Info(Vec<u8>),
    /// To an apps request: the JSON document.
    Apps(Vec<u8>),
    /// To a call: the tool result's JSON.
    CallResult(Vec<u8>),
    /// To a call: refused or failed.
    CallError {
        /// Why.
        code: CallErrorCode,
        /// Details, for people.
        message: String,
    },
    /// To a renewal request: the new certificate (DER).
    Renewed(Vec<u8>),
    /// To any request but a call: refused, and why.
    Refused(String),
}

impl Answer {
    fn fits(&self, kind: RequestKind) -> bool {
        matches!(
            (self, kind),
            (Answer::Pong, RequestKind::Ping)
                | (Answer::Info(_), RequestKind::Info)
                | (Answer::Apps(_), RequestKind::Apps)
                | (Answer::Renewed(_), RequestKind::Renew)
                | (
                    Answer::CallResult(_) | Answer::CallError { .. },
                    RequestKind::Call
                )
                | (
                    Answer::Refused(_),
                    RequestKind::Ping | RequestKind::Info | RequestKind::Apps | RequestKind::Renew
                )
        )
    }
}

/// Why the layer refused an input or a use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// A received message does not decode.
    #[error(transparent)]
    Malformed(#[from] MsgError),
    /// [`MAX_OUTSTANDING`] requests of this hub wait for answers already.
    #[error("{MAX_OUTSTANDING} requests are waiting for answers already")]
    TooManyRequests,
    /// A request could not be encoded (a name over 255 bytes, an envelope over 65,535).
    #[error("cannot encode the request: {0}")]
    Encode(MsgError),
    /// An answer from a peer to no request of this hub to that peer.
    #[error("an answer from {from} to no request of this hub")]
    Unsolicited {
        /// Who sent it.
        from: HubId,
    },
    /// An answer of the wrong kind for its request (a pong to a call, ...): refused, the
    /// request still waits.
    #[error("a {kind:?} message from {from} does not answer a {expected:?} request")]
    WrongAnswer {
        /// Who sent it.
        from: HubId,
        /// What it was.
        kind: MsgKind,
        /// What was asked.
        expected: RequestKind,
    },
    /// The application answered a request that is not waiting (answered or cancelled
    /// already, forgotten at its deadline, or never asked).
    #[error("no request {token} from {peer} waits for an answer")]
    NotWaiting {
        /// The peer.
        peer: HubId,
        /// The token.
        token: Token,
    },
    /// The application's answer does not fit the request's kind.
    #[error("this answer does not fit a {0:?} request")]
    AnswerMismatch(RequestKind),
}

#[derive(Debug)]
struct Outgoing {
    peer: HubId,
    kind: RequestKind,
    deadline_ms: u64,
    /// Whether its message went out (a queued call's has not yet).
    sent: bool,
    /// Its message, kept for [`Rpc::resend`] while [`RESEND_KEPT_BYTES`] allows.
    kept: Option<Vec<u8>>,
    /// Whether it was sent again.
    resent: bool,
}

#[derive(Debug)]
struct Incoming {
    kind: RequestKind,
    deadline_ms: u64,
    digest: RequestDigest,
}

/// What tells a request sent again from a new one with the same token (SHA-256, first 16
/// bytes): of the whole message for a request other than a call; for a call, of all but its
/// arguments, which its envelope binds (with a nonce of its own), so that a call's digest costs
/// the same whatever its size.
type RequestDigest = [u8; 16];

fn digest(parts: &[&[u8]]) -> RequestDigest {
    let mut hasher = Sha256::new();
    for part in parts {
        // Each part with its length, so that no two lists of parts hash alike.
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let mut d = [0; 16];
    d.copy_from_slice(&hasher.finalize()[..16]);
    d
}

/// An answer to a call that went out, kept until its caller stops waiting.
#[derive(Debug)]
struct Kept {
    digest: RequestDigest,
    until_ms: u64,
    answer: Vec<u8>,
}

/// What a peer's kept answers hold.
#[derive(Debug, Default, Clone, Copy)]
struct KeptLoad {
    answers: usize,
    bytes: usize,
}

/// How many requests of a peer wait for this hub's answer.
#[derive(Debug, Default, Clone, Copy)]
struct PeerLoad {
    calls: usize,
    others: usize,
}

impl PeerLoad {
    fn count(&mut self, kind: RequestKind) -> &mut usize {
        match kind {
            RequestKind::Call => &mut self.calls,
            _ => &mut self.others,
        }
    }

    fn bound(kind: RequestKind) -> usize {
        match kind {
            RequestKind::Call => MAX_CALLS_PER_PEER,
            _ => MAX_REQUESTS_PER_PEER,
        }
    }
}

/// A peer's call rate: a token bucket of [`CALL_BURST`] calls, filled at [`CALL_RATE_PER_S`]
/// (counted in thousandths of a call, so that a millisecond adds a whole number).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli: u64,
    at_ms: u64,
}

impl Bucket {
    const FULL: u64 = CALL_BURST * 1_000;

    fn full(now_ms: u64) -> Self {
        Bucket {
            milli: Self::FULL,
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.milli = (self.milli + elapsed.saturating_mul(CALL_RATE_PER_S)).min(Self::FULL);
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Takes one call out, if there is one.
    fn take(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        if self.milli < 1_000 {
            return false;
        }
        self.milli -= 1_000;
        true
    }

    fn is_full(&self, now_ms: u64) -> bool {
        let mut b = *self;
        b.refill(now_ms);
        b.milli == Self::FULL
    }
}

/// This hub's calls to one peer: how many are in flight, and those waiting for their turn, in
/// order.
#[derive(Debug, Default)]
struct CallQueue {
    in_flight: usize,
    waiting: VecDeque<(Token, OutgoingCall)>,
}

/// A deadline the layer keeps: of one of its requests, or of a peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Out(Token),
    In(HubId, Token),
    Kept(HubId, Token),
}

/// The request layer of one hub. See the module docs for the calling pattern.
#[derive(Debug)]
pub struct Rpc {
    next_token: Token,
    outgoing: HashMap<Token, Outgoing>,
    /// This hub's calls per peer (in flight, and queued).
    calls: HashMap<HubId, CallQueue>,
    incoming: HashMap<(HubId, Token), Incoming>,
    load: HashMap<HubId, PeerLoad>,
    /// Answers to peers' calls, kept for a repetition of the call.
    kept: HashMap<(HubId, Token), Kept>,
    /// Bytes of this hub's requests kept for sending again.
    resend_bytes: usize,
    /// Peers that said a session version that tells repetitions from new requests: only these
    /// are sent requests again (a peer of an earlier version would refuse them).
    repeats_understood: std::collections::HashSet<HubId>,
    kept_load: HashMap<HubId, KeptLoad>,
    rates: HashMap<HubId, Bucket>,
    /// Every deadline, earliest first.
    timers: BTreeSet<(u64, Timer)>,
    transmits: VecDeque<Transmit>,
    answered: VecDeque<Answered>,
}

impl Rpc {
    /// A layer whose first token is `first_token` (draw it at random: tokens then follow it).
    pub fn new(first_token: Token) -> Self {
        Rpc {
            next_token: first_token,
            outgoing: HashMap::new(),
            calls: HashMap::new(),
            incoming: HashMap::new(),
            load: HashMap::new(),
            kept: HashMap::new(),
            kept_load: HashMap::new(),
            repeats_understood: std::collections::HashSet::new(),
            resend_bytes: 0,
            rates: HashMap::new(),
            timers: BTreeSet::new(),
            transmits: VecDeque::new(),
            answered: VecDeque::new(),
        }
    }

    /// Registers `request` to `to`, waited for until `deadline_ms` (for a call, use
    /// [`call_deadline`]): its token and the message to send, or `None` for a call that waits
    /// behind [`MAX_CALLS_PER_PEER`] others in flight to `to` (its message comes from
    /// [`Rpc::poll_transmit`] when its turn comes, or it ends at its deadline).
    pub fn request(
        &mut self,
        to: HubId,
        request: &Request,
        deadline_ms: u64,
    ) -> Result<(Token, Option<Vec<u8>>), RpcError> {
        if self.outgoing.len() >= MAX_OUTSTANDING {
            return Err(RpcError::TooManyRequests);
        }
        let mut token = self.next_token;
        while self.outgoing.contains_key(&token) {
            token = token.wrapping_add(1);
        }
        let message = match request {
            Request::Call(call) => {
                let queue = self.calls.entry(to).or_default();
                if queue.in_flight >= MAX_CALLS_PER_PEER || !queue.waiting.is_empty() {
                    // Checked now, so that a call that cannot be sent is refused now.
                    request.encode(token).map_err(RpcError::Encode)?;
                    queue.waiting.push_back((token, call.clone()));
                    None
                } else {
                    let message = request.encode(token).map_err(RpcError::Encode)?;
                    queue.in_flight += 1;
                    Some(message)
                }
            }
            _ => Some(request.encode(token).map_err(RpcError::Encode)?),
        };
        self.next_token = token.wrapping_add(1);
        self.outgoing.insert(
            token,
            Outgoing {
                peer: to,
                kind: request.kind(),
                deadline_ms,
                sent: message.is_some(),
                kept: None,
                resent: false,
            },
        );
        self.timers.insert((deadline_ms, Timer::Out(token)));
        if let Some(message) = &message {
            self.keep_for_resend(token, message);
        }
        Ok((token, message))
    }

    /// Forgets a request whose message could not be sent (nothing is reported for it).
    pub fn abandon(&mut self, token: Token) {
        self.forget_outgoing(token);
    }

    /// Nobody waits for request `token` any more (its asker went away before its deadline): it is
    /// forgotten, and if it is a call sent to its peer, the peer is told to stop (`cancel`, from
    /// [`Rpc::poll_transmit`]). Whether it was waiting.
    pub fn cancel(&mut self, token: Token) -> bool {
        let Some(out) = self.forget_outgoing(token) else {
            return false;
        };
        if out.kind == RequestKind::Call && out.sent {
            self.push_transmit(out.peer, Msg::Cancel { token }.to_vec());
        }
        true
    }

    /// The path to `peer` came back after an outage (this hub's relay connection, or the
    /// peer's, or a new session with it): if the peer said a session version that tells
    /// repetitions from new requests ([`SESSION_VERSION_REPEATS`]), every request of this hub to
    /// `peer` that went out, waits for its answer and was kept ([`RESEND_KEPT_BYTES`]) is sent
    /// again as it was (from [`Rpc::poll_transmit`]; one that cannot be sent waits on to its
    /// deadline). How many.
    pub fn resend(&mut self, peer: HubId) -> usize {
        if !self.repeats_understood.contains(&peer) {
            return 0;
        }
        let mut again: Vec<(Token, Vec<u8>)> = self
            .outgoing
            .iter_mut()
            .filter(|(_, o)| o.peer == peer)
            .filter_map(|(t, o)| {
                let message = o.kept.clone()?;
                o.resent = true;
                Some((*t, message))
            })
            .collect();
        again.sort_unstable_by_key(|(t, _)| *t);
        let count = again.len();
        for (_, message) in again {
            self.push_transmit(peer, message);
        }
        count
    }

    /// A [`Transmit`] of request `token` could not be sent: it ends with
    /// [`Failure::Session`] and `reason`.
    pub fn handle_unsent(&mut self, token: Token, reason: &str) {
        if let Some(out) = self.forget_outgoing(token) {
            self.answered.push_back(Answered {
                token,
                peer: out.peer,
                result: Err(Failure::Session(reason.to_owned())),
            });
        }
    }

    /// Forgets request `token`; a call in flight frees its place for the next one queued.
    /// Keeps the message of request `token`, which went out, for [`Rpc::resend`], if the bytes
    /// kept stay within [`RESEND_KEPT_BYTES`] (a request not kept is not sent again: it waits
    /// for its answer or its deadline).
    fn keep_for_resend(&mut self, token: Token, message: &[u8]) {
        if self.resend_bytes + message.len() > RESEND_KEPT_BYTES {
            return;
        }
        if let Some(out) = self.outgoing.get_mut(&token) {
            self.resend_bytes += message.len();
            out.kept = Some(message.to_vec());
        }
    }

    fn forget_outgoing(&mut self, token: Token) -> Option<Outgoing> {
        let out = self.outgoing.remove(&token)?;
        self.resend_bytes -= out.kept.as_ref().map_or(0, Vec::len);
        self.timers.remove(&(out.deadline_ms, Timer::Out(token)));
        if out.kind == RequestKind::Call {
            if let Some(queue) = self.calls.get_mut(&out.peer) {
                if out.sent {
                    queue.in_flight = queue.in_flight.saturating_sub(1);
                } else {
                    queue.waiting.retain(|(t, _)| *t != token);
                }
                if queue.in_flight == 0 && queue.waiting.is_empty() {
                    self.calls.remove(&out.peer);
                }
            }
        }
        Some(out)
    }

    /// Requests of this hub waiting for their answers (queued calls included).
    pub fn outstanding(&self) -> usize {
        self.outgoing.len()
    }

    /// A whole message from `from`, as its session delivered it: what it is, decoded once.
    /// `Ok(None)`: nothing for the application (a cancel of no running call). A refusal the
    /// layer makes itself is queued for [`Rpc::poll_transmit`] and reported as
    /// [`Inbound::Refused`].
    pub fn handle_received(
        &mut self,
        from: HubId,
        message: &[u8],
        now_ms: u64,
    ) -> Result<Option<Inbound>, RpcError> {
        let msg = Msg::decode(message)?;
        let request = |token| PeerRequest { from, token };
        let d = || digest(&[message]);
        let inbound = match msg {
            Msg::Data(data) => Inbound::Data {
                from,
                data: data.to_vec(),
            },
            Msg::Manifest(m) => Inbound::Manifest {
                from,
                manifest: m.to_vec(),
            },
            Msg::AuditHead(h) => Inbound::AuditHead {
                from,
                head: h.to_vec(),
            },
            Msg::Views(v) => Inbound::Views {
                from,
                views: v.to_vec(),
            },
            Msg::Ping { token } => {
                let deadline = now_ms + REQUEST_TTL_MS;
                match self.admit(from, token, RequestKind::Ping, deadline, d(), now_ms) {
                    Ok(()) => Inbound::Ping(request(token)),
                    Err(Admission::Repeated) => return Ok(None),
                    Err(Admission::Refused(why)) => {
                        self.refuse(request(token), RequestKind::Ping, None, why)
                    }
                }
            }
            Msg::InfoRequest { token } => {
                let deadline = now_ms + REQUEST_TTL_MS;
                match self.admit(from, token, RequestKind::Info, deadline, d(), now_ms) {
                    Ok(()) => Inbound::Info(request(token)),
                    Err(Admission::Repeated) => return Ok(None),
                    Err(Admission::Refused(why)) => {
                        self.refuse(request(token), RequestKind::Info, None, why)
                    }
                }
            }
            Msg::RenewRequest { token } => {
                let deadline = now_ms + REQUEST_TTL_MS;
                match self.admit(from, token, RequestKind::Renew, deadline, d(), now_ms) {
                    Ok(()) => Inbound::Renew(request(token)),
                    Err(Admission::Repeated) => return Ok(None),
                    Err(Admission::Refused(why)) => {
                        self.refuse(request(token), RequestKind::Renew, None, why)
                    }
                }
            }
            Msg::AppsRequest { token, principal } => {
                let listing = Listing::Unsigned {
                    principal: principal.to_owned(),
                };
                return Ok(self.apps_request(request(token), listing, d(), now_ms));
            }
            Msg::SignedAppsRequest { token, envelope } => {
                let listing = Listing::Signed {
                    envelope: envelope.to_vec(),
                };
                return Ok(self.apps_request(request(token), listing, d(), now_ms));
            }
            Msg::Version(version) => {
                if version >= SESSION_VERSION_REPEATS {
                    self.repeats_understood.insert(from);
                } else {
                    self.repeats_understood.remove(&from);
                }
                Inbound::Version { from, version }
            }
            Msg::Call {
                token,
                timeout_ms,
                app,
                tool,
                envelope,
                arguments,
            } => {
                let deadline_ms = now_ms + u64::from(timeout_ms).min(MAX_CALL_TIMEOUT_MS);
                let call = CallRequest {
                    from,
                    token,
                    timeout_ms,
                    deadline_ms,
                    app: app.to_owned(),
                    tool: tool.to_owned(),
                    envelope: envelope.to_vec(),
                    arguments: arguments.to_vec(),
                };
                // The entry outlives the call's own deadline by the grace its caller waits, so
                // an answer at the deadline still goes out.
                let kept_until = deadline_ms + ANSWER_GRACE_MS;
                let d = digest(&[
                    &timeout_ms.to_le_bytes(),
                    app.as_bytes(),
                    tool.as_bytes(),
                    envelope,
                ]);
                if let Some(kept) = self.kept.get(&(from, token)).filter(|k| k.digest == d) {
                    // Sent again after an outage, and answered already: the same answer.
                    let answer = kept.answer.clone();
                    self.push_transmit(from, answer);
                    return Ok(None);
                }
                match self.admit(from, token, RequestKind::Call, kept_until, d, now_ms) {
                    Ok(()) => Inbound::Call(call),
                    Err(Admission::Repeated) => return Ok(None),
                    Err(Admission::Refused(why)) => {
                        self.refuse(request(token), RequestKind::Call, Some(Box::new(call)), why)
                    }
                }
            }
            Msg::Cancel { token } => {
                self.forget_kept(from, token);
                match self.incoming.get(&(from, token)) {
                    Some(call) if call.kind == RequestKind::Call => {
                        self.forget_incoming(from, token);
                        Inbound::Cancel(request(token))
                    }
                    _ => return Ok(None),
                }
            }
            answer @ (Msg::Pong { .. }
            | Msg::Info { .. }
            | Msg::Refused { .. }
            | Msg::Apps { .. }
            | Msg::CallResult { .. }
            | Msg::CallError { .. }
            | Msg::Renewed { .. }) => Inbound::Answer(self.match_answer(from, answer)?),
        };
        Ok(Some(inbound))
    }

    /// An apps request, signed or not, within its bounds.
    fn apps_request(
        &mut self,
        request: PeerRequest,
        listing: Listing,
        digest: RequestDigest,
        now_ms: u64,
    ) -> Option<Inbound> {
        let deadline = now_ms + REQUEST_TTL_MS;
        match self.admit(
            request.from,
            request.token,
            RequestKind::Apps,
            deadline,
            digest,
            now_ms,
        ) {
            Ok(()) => Some(Inbound::Apps { request, listing }),
            Err(Admission::Repeated) => None,
            Err(Admission::Refused(why)) => {
                Some(self.refuse(request, RequestKind::Apps, None, why))
            }
        }
    }

    /// Takes a peer's request in, within its bounds.
    fn admit(
        &mut self,
        from: HubId,
        token: Token,
        kind: RequestKind,
        deadline_ms: u64,
        digest: RequestDigest,
        now_ms: u64,
    ) -> Result<(), Admission> {
        if let Some(running) = self.incoming.get(&(from, token)) {
            return Err(if running.digest == digest && running.kind == kind {
                Admission::Repeated
            } else {
                Admission::Refused(Refusal::DuplicateToken)
            });
        }
        let load = self.load.entry(from).or_default();
        let count = load.count(kind);
        if *count >= PeerLoad::bound(kind) {
            return Err(Admission::Refused(Refusal::TooMany));
        }
        if kind == RequestKind::Call && !self.take_call(from, now_ms) {
            return Err(Admission::Refused(Refusal::TooFast));
        }
        let load = self.load.entry(from).or_default();
        *load.count(kind) += 1;
        self.incoming.insert(
            (from, token),
            Incoming {
                kind,
                deadline_ms,
                digest,
            },
        );
        self.timers.insert((deadline_ms, Timer::In(from, token)));
        Ok(())
    }

    /// Takes a call out of `from`'s bucket, if it has one.
    fn take_call(&mut self, from: HubId, now_ms: u64) -> bool {
        if self.rates.len() >= MAX_RATED_PEERS && !self.rates.contains_key(&from) {
            // Full buckets say nothing a new one would not: forget them first.
            self.rates.retain(|_, b| !b.is_full(now_ms));
            if self.rates.len() >= MAX_RATED_PEERS {
                return false;
            }
        }
        self.rates
            .entry(from)
            .or_insert_with(|| Bucket::full(now_ms))
            .take(now_ms)
    }

    /// Answers a request the layer refuses itself, and says so.
    fn refuse(
        &mut self,
        request: PeerRequest,
        kind: RequestKind,
        call: Option<Box<CallRequest>>,
        why: Refusal,
    ) -> Inbound {
        let message = why.to_string();
        let answer = match kind {
            RequestKind::Call => Msg::CallError {
                token: request.token,
                code: why.code().to_u16(),
                message: &message,
            },
            _ => Msg::Refused {
                token: request.token,
                reason: &message,
            },
        };
        self.push_transmit(request.from, answer.to_vec());
        Inbound::Refused { request, call, why }
    }

    fn push_transmit(&mut self, to: HubId, message: Vec<u8>) {
        self.transmits.push_back(Transmit {
            to,
            message,
            request: None,
        });
    }

    /// Keeps the answer to `from`'s call `token` until its caller stops waiting, within the
    /// peer's bounds (an answer that does not fit is not kept).
    fn keep(&mut self, from: HubId, token: Token, call: &Incoming, answer: &[u8]) {
        let load = self.kept_load.entry(from).or_default();
        if load.answers >= KEPT_ANSWERS_PER_PEER
            || load.bytes + answer.len() > KEPT_ANSWER_BYTES_PER_PEER
        {
            if load.answers == 0 {
                self.kept_load.remove(&from);
            }
            return;
        }
        load.answers += 1;
        load.bytes += answer.len();
        self.kept.insert(
            (from, token),
            Kept {
                digest: call.digest,
                until_ms: call.deadline_ms,
                answer: answer.to_vec(),
            },
        );
        self.timers
            .insert((call.deadline_ms, Timer::Kept(from, token)));
    }

    fn forget_kept(&mut self, from: HubId, token: Token) {
        let Some(kept) = self.kept.remove(&(from, token)) else {
            return;
        };
        self.timers
            .remove(&(kept.until_ms, Timer::Kept(from, token)));
        if let Some(load) = self.kept_load.get_mut(&from) {
            load.answers = load.answers.saturating_sub(1);
            load.bytes = load.bytes.saturating_sub(kept.answer.len());
            if load.answers == 0 {
                self.kept_load.remove(&from);
            }
        }
    }

    fn forget_incoming(&mut self, from: HubId, token: Token) -> Option<Incoming> {
        let entry = self.incoming.remove(&(from, token))?;
        self.timers
            .remove(&(entry.deadline_ms, Timer::In(from, token)));
        if let Some(load) = self.load.get_mut(&from) {
            let count = load.count(entry.kind);
            *count = count.saturating_sub(1);
            if load.calls == 0 && load.others == 0 {
                self.load.remove(&from);
            }
        }
        Some(entry)
    }

    fn match_answer(&mut self, from: HubId, answer: Msg<'_>) -> Result<Answered, RpcError> {
        let token = answer.token().unwrap_or_default();
        let Some(out) = self
            .outgoing
            .get(&token)
            .filter(|o| o.peer == from && o.sent)
        else {
            return Err(RpcError::Unsolicited { from });
        };
        let result = match (out.kind, answer) {
            (RequestKind::Ping, Msg::Pong { .. }) => Ok(Reply::Pong),
            (RequestKind::Info, Msg::Info { info, .. }) => Ok(Reply::Info(info.to_vec())),
            (RequestKind::Apps, Msg::Apps { apps, .. }) => Ok(Reply::Apps(apps.to_vec())),
            (RequestKind::Renew, Msg::Renewed { certificate, .. }) => {
                Ok(Reply::Renewed(certificate.to_vec()))
            }
            (RequestKind::Call, Msg::CallResult { result, .. }) => {
                Ok(Reply::CallResult(result.to_vec()))
            }
            (RequestKind::Call, Msg::CallError { code, message, .. }) => {
                let code_known = CallErrorCode::from_u16(code);
                let message = if out.resent && code_known == Some(CallErrorCode::Replayed) {
                    // Its first copy ran, and the answer to it was lost and not kept.
                    format!(
                        "{message}: the call was sent again after the path to {from} came back; \
                         it ran there once and its answer was lost"
                    )
                } else {
                    message.to_owned()
                };
                Err(Failure::Call {
                    code: code_known,
                    raw: code,
                    message,
                })
            }
            (_, Msg::Refused { reason, .. }) => Err(Failure::Refused(reason.to_owned())),
            (expected, other) => {
                return Err(RpcError::WrongAnswer {
                    from,
                    kind: other.kind(),
                    expected,
                })
            }
        };
        self.abandon(token);
        Ok(Answered {
            token,
            peer: from,
            result,
        })
    }

    /// The message that answers request `token` of `to`; the request is answered from then on
    /// (a second answer, or one to a cancelled or forgotten request, is refused).
    pub fn answer(
        &mut self,
        to: HubId,
        token: Token,
        answer: &Answer,
    ) -> Result<Vec<u8>, RpcError> {
        let kind = self
            .incoming
            .get(&(to, token))
            .map(|i| i.kind)
            .ok_or(RpcError::NotWaiting { peer: to, token })?;
        if !answer.fits(kind) {
            return Err(RpcError::AnswerMismatch(kind));
        }
        let Some(incoming) = self.forget_incoming(to, token) else {
            return Err(RpcError::NotWaiting { peer: to, token });
        };
        let msg = match answer {
            Answer::Pong => Msg::Pong { token },
            Answer::Info(info) => Msg::Info { token, info },
            Answer::Apps(apps) => Msg::Apps { token, apps },
            Answer::Renewed(certificate) => Msg::Renewed { token, certificate },
            Answer::CallResult(result) => Msg::CallResult { token, result },
            Answer::CallError { code, message } => Msg::CallError {
                token,
                code: code.to_u16(),
                message,
            },
            Answer::Refused(reason) => Msg::Refused { token, reason },
        };
        let message = msg.to_vec();
        if kind == RequestKind::Call {
            self.keep(to, token, &incoming, &message);
        }
        Ok(message)
    }

    /// Whether request `token` of `peer` waits for this hub's answer.
    pub fn is_waiting(&self, peer: HubId, token: Token) -> bool {
        self.incoming.contains_key(&(peer, token))
    }

    /// The session with `peer` failed: its requests of this hub end with
    /// [`Failure::Session`], queued calls included (the peer's own requests stay until answered
    /// or forgotten).
    pub fn handle_session_failed(&mut self, peer: HubId, reason: &str) {
        let mut failed: Vec<Token> = self
            .outgoing
            .iter()
            .filter(|(_, o)| o.peer == peer)
            .map(|(t, _)| *t)
            .collect();
        failed.sort_unstable();
        for token in failed {
            self.handle_unsent(token, reason);
        }
    }

    /// The earliest deadline (Unix ms), if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Ends what is due at `now_ms`: this hub's requests past their deadline (answered
    /// [`Failure::Timeout`]; a call's peer is sent `cancel`), and peers' requests this hub did
    /// not answer in time (forgotten).
    pub fn handle_timeout(&mut self, now_ms: u64) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now_ms {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Out(token) => {
                    let Some(out) = self.forget_outgoing(token) else {
                        continue;
                    };
                    if out.kind == RequestKind::Call && out.sent {
                        self.push_transmit(out.peer, Msg::Cancel { token }.to_vec());
                    }
                    self.answered.push_back(Answered {
                        token,
                        peer: out.peer,
                        result: Err(Failure::Timeout),
                    });
                }
                Timer::In(peer, token) => {
                    self.forget_incoming(peer, token);
                }
                Timer::Kept(peer, token) => self.forget_kept(peer, token),
            }
        }
    }

    /// The next message the layer wants sent at `now_ms`: cancels, its own refusals, and calls
    /// whose turn came (sent with the timeout they have left).
    pub fn poll_transmit(&mut self, now_ms: u64) -> Option<Transmit> {
        if let Some(t) = self.transmits.pop_front() {
            return Some(t);
        }
        let outgoing = &mut self.outgoing;
        let (peer, token, mut call, deadline_ms) =
            self.calls.iter_mut().find_map(|(peer, queue)| {
                if queue.in_flight >= MAX_CALLS_PER_PEER {
                    return None;
                }
                // Queued calls that ended are taken out of the queue as they end.
                let (token, call) = queue.waiting.pop_front()?;
                let out = outgoing.get(&token)?;
                queue.in_flight += 1;
                Some((*peer, token, call, out.deadline_ms))
            })?;
        let left = deadline_ms
            .saturating_sub(ANSWER_GRACE_MS)
            .saturating_sub(now_ms);
        call.timeout_ms = call.timeout_ms.min(u32::try_from(left).unwrap_or(u32::MAX));
        match Request::Call(call).encode(token) {
            Ok(message) => {
                if let Some(out) = self.outgoing.get_mut(&token) {
                    out.sent = true;
                }
                self.keep_for_resend(token, &message);
                Some(Transmit {
                    to: peer,
                    message,
                    request: Some(token),
                })
            }
            // It encoded when it was queued, with a timeout as long: not reached.
            Err(e) => {
                self.handle_unsent(token, &e.to_string());
                self.poll_transmit(now_ms)
            }
        }
    }

    /// The next request of this hub that ended without an answer (timeouts, failed sessions).
    pub fn poll_answered(&mut self) -> Option<Answered> {
        self.answered.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::peer::{Event, PeerSessions};
    use crate::session::testing::{sessions, A, B, NOW};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// One hub of the pair: its sessions, its request layer, and what reached its application.
    struct Hub {
        sessions: PeerSessions,
        rpc: Rpc,
        inbound: Vec<Inbound>,
        errors: Vec<RpcError>,
    }

    impl Hub {
        fn new(id: u8) -> Self {
            Hub {
                sessions: sessions(id).0,
                rpc: Rpc::new(u64::from(id) << 32),
                inbound: Vec::new(),
                errors: Vec::new(),
            }
        }

        fn answered(&self) -> Vec<&Answered> {
            self.inbound
                .iter()
                .filter_map(|i| match i {
                    Inbound::Answer(a) => Some(a),
                    _ => None,
                })
                .collect()
        }

        fn calls(&self) -> Vec<&CallRequest> {
            self.inbound
                .iter()
                .filter_map(|i| match i {
                    Inbound::Call(c) => Some(c),
                    _ => None,
                })
                .collect()
        }
    }

    /// What the relay between the two hubs does to what it carries.
    #[derive(Debug, Clone, Copy, Default)]
    struct Faults {
        /// Of 100 payloads, how many are lost.
        drop: u32,
        /// ... sent twice.
        duplicate: u32,
        /// Whether what is in flight is delivered in a random order.
        reorder: bool,
    }

    /// Two hubs, each with sessions and a request layer, a relay between them that may drop,
    /// duplicate and reorder, and a virtual clock.
    struct Pair {
        a: Hub,
        b: Hub,
        now: u64,
        rng: StdRng,
        /// Payloads in flight: (to_b, payload).
        wire: Vec<(bool, Vec<u8>)>,
        faults: Faults,
    }

    impl Pair {
        fn new(faults: Faults) -> Self {
            Pair {
                a: Hub::new(1),
                b: Hub::new(2),
                now: NOW,
                rng: StdRng::seed_from_u64(7),
                wire: Vec::new(),
                faults,
            }
        }

        fn hub(&mut self, a: bool) -> &mut Hub {
            if a {
                &mut self.a
            } else {
                &mut self.b
            }
        }

        /// A sends `request` to B (or B to A), as a hub's peer task does.
        fn request(&mut self, from_a: bool, request: &Request, deadline_ms: u64) -> Token {
            let now = self.now;
            let to = if from_a { B } else { A };
            let hub = self.hub(from_a);
            let (token, message) = hub.rpc.request(to, request, deadline_ms).unwrap();
            if let Some(message) = message {
                let mut rng = StdRng::seed_from_u64(token);
                hub.sessions.send(to, message, now, &mut rng).unwrap();
            }
            self.collect();
            token
        }

        /// The application of a hub answers request `token` of its peer.
        fn answer(&mut self, by_a: bool, token: Token, answer: Answer) {
            let now = self.now;
            let to = if by_a { B } else { A };
            let hub = self.hub(by_a);
            let message = hub.rpc.answer(to, token, &answer).unwrap();
            let mut rng = StdRng::seed_from_u64(token);
            hub.sessions.send(to, message, now, &mut rng).unwrap();
            self.collect();
        }

        /// Moves what both hubs produced onto the wire (with the relay's faults) and into their
        /// request layers.
        fn collect(&mut self) {
            for from_a in [true, false] {
                let now = self.now;
                let mut out = Vec::new();
                let hub = if from_a { &mut self.a } else { &mut self.b };
                let mut rng = StdRng::seed_from_u64(now);
                while let Some(t) = hub.rpc.poll_transmit(now) {
                    let _ = hub.sessions.send(t.to, t.message, now, &mut rng);
                }
                while let Some(answered) = hub.rpc.poll_answered() {
                    hub.inbound.push(Inbound::Answer(answered));
                }
                while let Some(e) = hub.sessions.poll_event() {
                    match e {
                        Event::Transmit { payload, .. } => out.push(payload),
                        Event::Received { from, message } => {
                            match hub.rpc.handle_received(from, &message, now) {
                                Ok(Some(i)) => hub.inbound.push(i),
                                Ok(None) => {}
                                Err(e) => hub.errors.push(e),
                            }
                            while let Some(t) = hub.rpc.poll_transmit(now) {
                                let _ = hub.sessions.send(t.to, t.message, now, &mut rng);
                            }
                        }
                        _ => {}
                    }
                }
                for payload in out {
                    let roll = self.rng.gen_range(0..100);
                    if roll < self.faults.drop {
                        continue;
                    }
                    if roll < self.faults.drop + self.faults.duplicate {
                        self.wire.push((from_a, payload.clone()));
                    }
                    self.wire.push((from_a, payload));
                }
            }
        }

        /// Delivers what is in flight until quiet (in a random order if the relay reorders).
        fn drive(&mut self) {
            self.collect();
            while !self.wire.is_empty() {
                let i = if self.faults.reorder {
                    self.rng.gen_range(0..self.wire.len())
                } else {
                    0
                };
                let (to_b, payload) = self.wire.remove(i);
                let now = self.now;
                let (hub, from) = if to_b {
                    (&mut self.b, A)
                } else {
                    (&mut self.a, B)
                };
                let mut rng = StdRng::seed_from_u64(now ^ payload.len() as u64);
                // The session layer refuses duplicates and garbage on its own.
                let _ = hub.sessions.handle_incoming(from, &payload, now, &mut rng);
                self.collect();
            }
        }

        /// Each hub hears that the other speaks session version `version`.
        fn versions(&mut self, version: u16) {
            let said = Msg::Version(version).to_vec();
            let now = self.now;
            self.a.rpc.handle_received(B, &said, now).unwrap();
            self.b.rpc.handle_received(A, &said, now).unwrap();
        }

        /// Moves the clock to `at` and runs both hubs' timers.
        fn advance(&mut self, at: u64) {
            self.now = at;
            for a in [true, false] {
                let hub = self.hub(a);
                let mut rng = StdRng::seed_from_u64(at);
                hub.sessions.handle_timeout(at, &mut rng);
                hub.rpc.handle_timeout(at);
            }
            self.drive();
        }
    }

    /// A call message as a peer sends it: token `token`, of `app`'s tool `t`, with an empty
    /// envelope and arguments (what the layer does not read).
    fn call_message(token: Token, app: &str, timeout_ms: u32) -> Vec<u8> {
        Msg::Call {
            token,
            timeout_ms,
            app,
            tool: "t",
            envelope: b"",
            arguments: b"",
        }
        .to_vec()
    }

    fn call(app: &str) -> Request {
        Request::Call(OutgoingCall {
            timeout_ms: 10_000,
            app: app.into(),
            tool: "echo".into(),
            envelope: b"HRDE".to_vec(),
            arguments: br#"{"text":"hi"}"#.to_vec(),
        })
    }

    /// A call goes out, arrives decoded with its deadline on the target's clock, and its answer
    /// is matched to it.
    #[test]
    fn a_call_arrives_decoded_and_its_answer_is_matched() {
        let mut p = Pair::new(Faults::default());
        let token = p.request(true, &call("notes"), call_deadline(p.now, 10_000));
        p.drive();
        let got = p.b.calls();
        assert_eq!(got.len(), 1);
        let c = got[0].clone();
        assert_eq!(
            (c.from, c.token, c.app.as_str(), c.tool.as_str()),
            (A, token, "notes", "echo")
        );
        assert_eq!(c.deadline_ms, p.now + 10_000);
        assert_eq!(c.arguments, br#"{"text":"hi"}"#);
        p.answer(false, token, Answer::CallResult(b"{}".to_vec()));
        p.drive();
        assert_eq!(
            p.a.answered(),
            vec![&Answered {
                token,
                peer: B,
                result: Ok(Reply::CallResult(b"{}".to_vec()))
            }]
        );
        assert_eq!(p.a.rpc.outstanding(), 0);
        // Answered once: a second answer is refused.
        assert_eq!(
            p.b.rpc
                .answer(A, token, &Answer::CallResult(b"{}".to_vec())),
            Err(RpcError::NotWaiting { peer: A, token })
        );
    }

    /// A peer that reuses the token of its running call gets that one refused with its own code;
    /// the running call is not replaced and still gets its answer. (Once a member could run any
    /// number of calls at once, past the bound, by reusing one token.)
    #[test]
    fn a_repeated_token_is_refused_and_never_replaces_a_running_call() {
        let mut b = Rpc::new(0);
        let message = |app: &str| call_message(42, app, 10_000);
        let first = b.handle_received(A, &message("first"), NOW).unwrap();
        assert!(matches!(first, Some(Inbound::Call(ref c)) if c.app == "first"));
        for _ in 0..(2 * MAX_CALLS_PER_PEER) {
            let again = b.handle_received(A, &message("again"), NOW).unwrap();
            match again {
                Some(Inbound::Refused {
                    request,
                    call: Some(call),
                    why: Refusal::DuplicateToken,
                }) => assert_eq!((request.token, call.app.as_str()), (42, "again")),
                other => panic!("expected a duplicate-token refusal, got {other:?}"),
            }
            let refusal = b.poll_transmit(NOW).unwrap();
            assert_eq!((refusal.to, refusal.request), (A, None));
            assert_eq!(
                Msg::decode(&refusal.message).unwrap(),
                Msg::CallError {
                    token: 42,
                    code: CallErrorCode::DuplicateToken.to_u16(),
                    message: &Refusal::DuplicateToken.to_string(),
                }
            );
        }
        // One call runs, not 33: the answer goes to it.
        assert_eq!(b.load[&A].calls, 1);
        let answer = b
            .answer(A, 42, &Answer::CallResult(b"{}".to_vec()))
            .unwrap();
        assert_eq!(
            Msg::decode(&answer).unwrap(),
            Msg::CallResult {
                token: 42,
                result: b"{}"
            }
        );
        // Another hub may use the same token.
        let other = b.handle_received(B, &message("b's"), NOW).unwrap();
        assert!(matches!(other, Some(Inbound::Call(_))));
        // Once answered, the token may be used again.
        let reused = b.handle_received(A, &message("later"), NOW).unwrap();
        assert!(matches!(reused, Some(Inbound::Call(ref c)) if c.app == "later"));
    }

    /// A peer has at most `MAX_CALLS_PER_PEER` calls and `MAX_REQUESTS_PER_PEER` other requests
    /// waiting; past that it is refused busy, and another peer is not.
    #[test]
    fn requests_of_one_peer_are_bounded_and_others_are_not_hurt() {
        let mut b = Rpc::new(0);
        let call = |token| call_message(token, "a", 1_000);
        for token in 0..MAX_CALLS_PER_PEER as u64 {
            let r = b.handle_received(A, &call(token), NOW).unwrap();
            assert!(matches!(r, Some(Inbound::Call(_))));
        }
        let r = b.handle_received(A, &call(99), NOW).unwrap();
        assert!(matches!(
            r,
            Some(Inbound::Refused {
                why: Refusal::TooMany,
                ..
            })
        ));
        // Pings still pass (their own bound), and so does the other hub.
        let ping = |token| Msg::Ping { token }.to_vec();
        assert!(matches!(
            b.handle_received(A, &ping(1_000), NOW).unwrap(),
            Some(Inbound::Ping(_))
        ));
        assert!(matches!(
            b.handle_received(B, &call(0), NOW).unwrap(),
            Some(Inbound::Call(_))
        ));
        for token in 1_001..1_000 + MAX_REQUESTS_PER_PEER as u64 {
            assert!(matches!(
                b.handle_received(A, &ping(token), NOW).unwrap(),
                Some(Inbound::Ping(_))
            ));
        }
        assert!(matches!(
            b.handle_received(A, &ping(5_000), NOW).unwrap(),
            Some(Inbound::Refused {
                why: Refusal::TooMany,
                call: None,
                ..
            })
        ));
        // A call answered frees its place.
        b.answer(A, 0, &Answer::CallResult(b"{}".to_vec())).unwrap();
        assert!(matches!(
            b.handle_received(A, &call(100), NOW).unwrap(),
            Some(Inbound::Call(_))
        ));
        // Unanswered requests are forgotten at their deadline, freeing their places too.
        b.handle_timeout(NOW + REQUEST_TTL_MS);
        assert_eq!(b.load.get(&A).map_or(0, |l| l.others), 0);
        b.handle_timeout(NOW + MAX_CALL_TIMEOUT_MS + ANSWER_GRACE_MS);
        assert!(b.load.is_empty(), "{:?}", b.load);
        assert!(b.incoming.is_empty() && b.timers.is_empty());
    }

    /// A call whose answer does not come by its deadline is answered `Timeout` on the caller,
    /// which tells the target to stop; the target's application hears of the cancel once, and
    /// its late answer is refused.
    #[test]
    fn a_call_past_its_deadline_times_out_and_is_cancelled_on_the_target() {
        let mut p = Pair::new(Faults::default());
        let deadline = call_deadline(p.now, 1_000);
        let token = p.request(true, &call("slow"), deadline);
        p.drive();
        assert_eq!(p.a.rpc.poll_timeout(), Some(deadline));
        p.advance(deadline - 1);
        assert!(p.a.answered().is_empty());
        p.advance(deadline);
        assert_eq!(
            p.a.answered(),
            vec![&Answered {
                token,
                peer: B,
                result: Err(Failure::Timeout)
            }]
        );
        let cancels: Vec<_> =
            p.b.inbound
                .iter()
                .filter(|i| matches!(i, Inbound::Cancel(r) if r.token == token && r.from == A))
                .collect();
        assert_eq!(cancels.len(), 1);
        assert!(!p.b.rpc.is_waiting(A, token));
        assert!(p
            .b
            .rpc
            .answer(A, token, &Answer::CallResult(b"{}".to_vec()))
            .is_err());
    }

    /// 40 calls from one hub to one peer at once (an agent's fan-out): the caller keeps
    /// `MAX_CALLS_PER_PEER` in flight and queues the rest in order, so the target refuses none
    /// and every call gets its answer. (Once, the calling hub sent them all and the target
    /// refused those past its bound `busy`.)
    #[test]
    fn a_fan_out_of_calls_is_queued_by_the_caller_and_none_is_refused() {
        let mut p = Pair::new(Faults::default());
        let deadline = call_deadline(p.now, 10_000);
        let tokens: Vec<Token> = (0..40)
            .map(|i| p.request(true, &call(&format!("app{i}")), deadline))
            .collect();
        p.drive();
        let mut answered = 0;
        let mut most_running = 0;
        while answered < tokens.len() {
            let running: Vec<Token> =
                p.b.calls()
                    .iter()
                    .filter(|c| p.b.rpc.is_waiting(A, c.token))
                    .map(|c| c.token)
                    .collect();
            assert!(!running.is_empty(), "calls stalled after {answered}");
            most_running = most_running.max(running.len());
            // The target answers one at a time; the next queued call goes out.
            p.answer(false, running[0], Answer::CallResult(b"{}".to_vec()));
            p.advance(p.now + 1);
            answered += 1;
        }
        assert_eq!(most_running, MAX_CALLS_PER_PEER);
        assert!(
            !p.b.inbound
                .iter()
                .any(|i| matches!(i, Inbound::Refused { .. })),
            "the target refused a call"
        );
        // In the order they were asked, each with its answer.
        let apps: Vec<String> = p.b.calls().iter().map(|c| c.app.clone()).collect();
        let asked: Vec<String> = (0..40).map(|i| format!("app{i}")).collect();
        assert_eq!(apps, asked);
        let mut results: Vec<Token> =
            p.a.answered()
                .iter()
                .filter(|a| a.result == Ok(Reply::CallResult(b"{}".to_vec())))
                .map(|a| a.token)
                .collect();
        results.sort_unstable();
        assert_eq!(results, tokens);
        assert_eq!(p.a.rpc.outstanding(), 0);
        assert!(p.a.rpc.calls.is_empty());
    }

    /// A queued call ends at its own deadline without ever being sent (no cancel goes out for
    /// it), and one that waited is sent with the timeout it has left.
    #[test]
    fn a_queued_call_keeps_its_deadline() {
        let mut a = Rpc::new(0);
        let long = call_deadline(NOW, 10_000);
        for _ in 0..MAX_CALLS_PER_PEER {
            let (_, message) = a.request(B, &call("busy"), long).unwrap();
            assert!(message.is_some());
        }
        let short = call_deadline(NOW, 1_000);
        let (late, message) = a.request(B, &call("late"), short).unwrap();
        assert!(message.is_none(), "queued");
        let (waits, _) = a.request(B, &call("waits"), long).unwrap();
        assert_eq!(
            a.poll_transmit(NOW),
            None,
            "nothing is sent while all are in flight"
        );
        a.handle_timeout(short);
        assert_eq!(
            a.poll_answered(),
            Some(Answered {
                token: late,
                peer: B,
                result: Err(Failure::Timeout)
            })
        );
        assert_eq!(
            a.poll_transmit(short),
            None,
            "no cancel for a call never sent"
        );
        // One in flight ends: the next queued goes out with what is left of its timeout.
        let first = Msg::CallResult {
            token: 0,
            result: b"{}",
        }
        .to_vec();
        assert!(matches!(
            a.handle_received(B, &first, NOW + 4_000),
            Ok(Some(Inbound::Answer(_)))
        ));
        let sent = a.poll_transmit(NOW + 4_000).unwrap();
        assert_eq!((sent.to, sent.request), (B, Some(waits)));
        match Msg::decode(&sent.message).unwrap() {
            Msg::Call {
                token, timeout_ms, ..
            } => assert_eq!((token, timeout_ms), (waits, 6_000)),
            other => panic!("{other:?}"),
        }
        // A queued call that could not be sent ends at once, and frees its place.
        a.handle_unsent(waits, "no session");
        assert!(matches!(
            a.poll_answered(),
            Some(Answered {
                result: Err(Failure::Session(_)),
                ..
            })
        ));
        assert_eq!(a.calls[&B].in_flight, MAX_CALLS_PER_PEER - 1);
    }

    /// A peer may start `CALL_BURST` calls at once and `CALL_RATE_PER_S` a second after that;
    /// faster, its calls are refused busy (saying why), and another peer is not held back.
    #[test]
    fn a_peer_that_starts_calls_too_fast_is_refused() {
        let mut b = Rpc::new(0);
        let call = |token| call_message(token, "a", 1_000);
        let run = |b: &mut Rpc, from, token, now| {
            let r = b.handle_received(from, &call(token), now).unwrap();
            if let Some(Inbound::Call(_)) = r {
                b.answer(from, token, &Answer::CallResult(b"{}".to_vec()))
                    .unwrap();
            }
            r
        };
        for token in 0..CALL_BURST {
            assert!(matches!(run(&mut b, A, token, NOW), Some(Inbound::Call(_))));
        }
        assert!(matches!(
            run(&mut b, A, CALL_BURST, NOW),
            Some(Inbound::Refused {
                why: Refusal::TooFast,
                ..
            })
        ));
        let refusal = b.poll_transmit(NOW).unwrap();
        match Msg::decode(&refusal.message).unwrap() {
            Msg::CallError { code, message, .. } => {
                assert_eq!(code, CallErrorCode::Busy.to_u16());
                assert!(message.contains("too fast"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(run(&mut b, B, 0, NOW), Some(Inbound::Call(_))));
        // A millisecond later, one more (1,000 a second).
        assert!(matches!(
            run(&mut b, A, CALL_BURST + 1, NOW + 1),
            Some(Inbound::Call(_))
        ));
        assert!(matches!(
            run(&mut b, A, CALL_BURST + 2, NOW + 1),
            Some(Inbound::Refused { .. })
        ));
    }

    /// An asker that goes away before the deadline cancels its call on the target at once; a
    /// request that is not a call is only forgotten.
    #[test]
    fn a_call_whose_asker_went_away_is_cancelled_at_once() {
        let mut p = Pair::new(Faults::default());
        let ping = p.request(true, &Request::Ping, p.now + 60_000);
        let token = p.request(true, &call("slow"), call_deadline(p.now, 30_000));
        p.drive();
        assert!(p.b.rpc.is_waiting(A, token));
        assert!(p.a.rpc.cancel(token));
        assert!(!p.a.rpc.cancel(token), "cancelled once");
        p.drive();
        assert!(!p.b.rpc.is_waiting(A, token), "the target still runs it");
        assert!(p
            .b
            .inbound
            .iter()
            .any(|i| matches!(i, Inbound::Cancel(r) if r.token == token)));
        // Nothing is reported to the asker that went away, and the ping goes on.
        assert!(!p.a.answered().iter().any(|a| a.token == token));
        assert_eq!(p.a.rpc.outstanding(), 1);
        assert!(p.a.rpc.cancel(ping));
        assert_eq!(p.a.rpc.poll_transmit(p.now), None, "no cancel for a ping");
    }

    /// Answers go to the request they answer: a pong to a call, an answer from another hub, or
    /// to no request, is refused and the request goes on waiting.
    #[test]
    fn only_the_right_answer_from_the_right_peer_ends_a_request() {
        let mut a = Rpc::new(10);
        let (token, _) = a.request(B, &call("x"), NOW + 5_000).unwrap();
        let pong = Msg::Pong { token }.to_vec();
        assert!(matches!(
            a.handle_received(B, &pong, NOW),
            Err(RpcError::WrongAnswer {
                expected: RequestKind::Call,
                ..
            })
        ));
        let result = Msg::CallResult {
            token,
            result: b"{}",
        }
        .to_vec();
        assert_eq!(
            a.handle_received(HubId([9; 16]), &result, NOW),
            Err(RpcError::Unsolicited {
                from: HubId([9; 16])
            })
        );
        let other = Msg::CallResult {
            token: token + 1,
            result: b"{}",
        }
        .to_vec();
        assert!(a.handle_received(B, &other, NOW).is_err());
        assert_eq!(a.outstanding(), 1);
        let refused = Msg::CallError {
            token,
            code: 400,
            message: "new",
        }
        .to_vec();
        match a.handle_received(B, &refused, NOW).unwrap() {
            Some(Inbound::Answer(Answered {
                result:
                    Err(Failure::Call {
                        code: None,
                        raw: 400,
                        ..
                    }),
                ..
            })) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(a.outstanding(), 0);
        // The application's answers must fit what was asked.
        let mut b = Rpc::new(0);
        b.handle_received(A, &Msg::Ping { token: 3 }.to_vec(), NOW)
            .unwrap();
        assert_eq!(
            b.answer(A, 3, &Answer::Apps(b"[]".to_vec())),
            Err(RpcError::AnswerMismatch(RequestKind::Ping))
        );
        assert!(b.answer(A, 3, &Answer::Refused("suspended".into())).is_ok());
    }

    /// Tokens are unique among a hub's requests waiting, and the bound on them holds.
    #[test]
    fn tokens_are_unique_while_outstanding_and_bounded() {
        let mut a = Rpc::new(u64::MAX - 2);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..MAX_OUTSTANDING {
            let (token, _) = a.request(B, &Request::Ping, NOW + 1_000).unwrap();
            assert!(seen.insert(token), "token {token} twice");
        }
        assert_eq!(
            a.request(B, &Request::Ping, NOW + 1_000),
            Err(RpcError::TooManyRequests)
        );
        a.handle_timeout(NOW + 1_000);
        let mut ended = 0;
        while a.poll_answered().is_some() {
            ended += 1;
        }
        assert_eq!(ended, MAX_OUTSTANDING);
        assert!(a.request(B, &Request::Ping, NOW + 2_000).is_ok());
    }

    /// A failed session ends the requests waiting on it.
    #[test]
    fn a_failed_session_ends_its_requests() {
        let mut a = Rpc::new(0);
        let (t1, _) = a.request(B, &Request::Info, NOW + 1_000).unwrap();
        let (_, _) = a
            .request(HubId([3; 16]), &Request::Ping, NOW + 1_000)
            .unwrap();
        a.handle_session_failed(B, "left the relay");
        assert_eq!(
            a.poll_answered(),
            Some(Answered {
                token: t1,
                peer: B,
                result: Err(Failure::Session("left the relay".into()))
            })
        );
        assert_eq!(a.poll_answered(), None);
        assert_eq!(a.outstanding(), 1);
    }

    /// Through a relay that drops, duplicates and reorders: every call is answered at most once
    /// (duplicates never run a call twice), and every call ends by its deadline, with its result
    /// or `Timeout`.
    #[test]
    fn through_a_lossy_relay_each_call_ends_once_and_none_runs_twice() {
        for (seed, faults) in [
            (
                1,
                Faults {
                    drop: 0,
                    duplicate: 30,
                    reorder: true,
                },
            ),
            (
                2,
                Faults {
                    drop: 10,
                    duplicate: 10,
                    reorder: true,
                },
            ),
            (
                3,
                Faults {
                    drop: 25,
                    duplicate: 0,
                    reorder: false,
                },
            ),
        ] {
            let mut p = Pair::new(Faults::default());
            // The session comes up over a clean relay; the faults start with the calls.
            p.request(true, &Request::Ping, p.now + 1_000);
            p.drive();
            p.faults = faults;
            p.rng = StdRng::seed_from_u64(seed);
            let deadline = call_deadline(p.now, 5_000);
            let tokens: Vec<Token> = (0..12)
                .map(|i| p.request(true, &call(&format!("app{i}")), deadline))
                .collect();
            p.drive();
            // B answers what reached it, once each.
            let reached: Vec<Token> = p.b.calls().iter().map(|c| c.token).collect();
            let unique: std::collections::HashSet<_> = reached.iter().collect();
            assert_eq!(unique.len(), reached.len(), "a call reached B twice");
            for token in &reached {
                p.answer(false, *token, Answer::CallResult(b"{}".to_vec()));
            }
            p.drive();
            p.advance(deadline);
            let mut ended: Vec<Token> =
                p.a.answered()
                    .iter()
                    .filter(|a| a.token != 0 && tokens.contains(&a.token))
                    .map(|a| a.token)
                    .collect();
            ended.sort_unstable();
            let mut want = tokens.clone();
            want.sort_unstable();
            assert_eq!(ended, want, "each call ends exactly once ({faults:?})");
            let results =
                p.a.answered()
                    .iter()
                    .filter(|a| a.result.is_ok() && tokens.contains(&a.token))
                    .count();
            assert!(results <= reached.len());
            if faults.drop == 0 {
                assert_eq!(results, tokens.len(), "nothing lost, all answered");
            } else {
                // The seeds are fixed: the relay does lose some, and those calls time out.
                assert!(
                    results < tokens.len(),
                    "the relay lost nothing ({faults:?})"
                );
            }
            assert_eq!(p.a.rpc.outstanding(), 0);
        }
    }

    /// A call sent again after an outage while it still runs on the target is not started
    /// again, and its one answer reaches the caller once.
    #[test]
    fn a_call_sent_again_while_it_runs_runs_once() {
        let mut p = Pair::new(Faults::default());
        p.versions(SESSION_VERSION_REPEATS);
        let token = p.request(true, &call("notes"), call_deadline(p.now, 10_000));
        p.drive();
        assert_eq!(p.a.rpc.resend(B), 1);
        p.drive();
        assert_eq!(p.b.calls().len(), 1, "started once: {:?}", p.b.inbound);
        assert_eq!(p.b.inbound.len(), 1, "no refusal either: {:?}", p.b.inbound);
        p.answer(false, token, Answer::CallResult(b"{}".to_vec()));
        p.drive();
        assert_eq!(
            p.a.answered(),
            vec![&Answered {
                token,
                peer: B,
                result: Ok(Reply::CallResult(b"{}".to_vec()))
            }]
        );
        assert!(p.a.errors.is_empty(), "{:?}", p.a.errors);
    }

    /// The answer to a call lost on its way (the caller's path died under it) is sent again,
    /// from what the target kept, when the caller sends the call again: it gets the answer, and
    /// the call ran once.
    #[test]
    fn a_call_sent_again_after_its_answer_was_lost_gets_the_kept_answer() {
        let mut p = Pair::new(Faults::default());
        p.versions(SESSION_VERSION_REPEATS);
        let token = p.request(true, &call("notes"), call_deadline(p.now, 10_000));
        p.drive();
        p.answer(false, token, Answer::CallResult(br#"{"n":1}"#.to_vec()));
        p.wire.clear();
        assert!(p.a.answered().is_empty(), "the answer was lost");
        assert_eq!(p.a.rpc.resend(B), 1);
        p.drive();
        assert_eq!(p.b.calls().len(), 1, "ran once: {:?}", p.b.inbound);
        assert_eq!(
            p.a.answered(),
            vec![&Answered {
                token,
                peer: B,
                result: Ok(Reply::CallResult(br#"{"n":1}"#.to_vec()))
            }]
        );
        assert_eq!(p.a.rpc.resend(B), 0, "nothing waits any more");
        // The caller stopped waiting long ago: the answer is forgotten.
        p.advance(call_deadline(p.now, 10_000) + 1);
        assert!(p.b.rpc.kept.is_empty());
        assert!(p.b.rpc.timers.is_empty());
    }

    /// What a target keeps for calls sent again is bounded per peer, in answers and in bytes,
    /// and one peer's answers do not take another's place.
    #[test]
    fn kept_answers_are_bounded_per_peer() {
        let mut b = Rpc::new(0);
        let message = |token: Token| call_message(token, "a", 10_000);
        for token in 0..(2 * KEPT_ANSWERS_PER_PEER as Token) {
            assert!(matches!(
                b.handle_received(A, &message(token), NOW),
                Ok(Some(Inbound::Call(_)))
            ));
            b.answer(A, token, &Answer::CallResult(b"{}".to_vec()))
                .unwrap();
        }
        assert_eq!(b.kept.len(), KEPT_ANSWERS_PER_PEER);
        // One answer larger than a peer's byte bound is not kept.
        assert!(matches!(
            b.handle_received(B, &message(1_000), NOW),
            Ok(Some(Inbound::Call(_)))
        ));
        let big = vec![b'x'; KEPT_ANSWER_BYTES_PER_PEER + 1];
        b.answer(B, 1_000, &Answer::CallResult(big)).unwrap();
        assert!(!b.kept.contains_key(&(B, 1_000)));
        // B's smaller answers are kept beside A's.
        assert!(matches!(
            b.handle_received(B, &message(1_001), NOW),
            Ok(Some(Inbound::Call(_)))
        ));
        b.answer(B, 1_001, &Answer::CallResult(b"{}".to_vec()))
            .unwrap();
        assert!(b.kept.contains_key(&(B, 1_001)));
        // A kept answer is what a repetition gets; an unkept one's call is the application's
        // again (its nonce, spent, refuses it there).
        assert_eq!(b.handle_received(A, &message(0), NOW), Ok(None));
        let again = b.poll_transmit(NOW).expect("the kept answer");
        assert_eq!(
            Msg::decode(&again.message).unwrap(),
            Msg::CallResult {
                token: 0,
                result: b"{}"
            }
        );
        assert!(matches!(
            b.handle_received(A, &message(2 * KEPT_ANSWERS_PER_PEER as Token - 1), NOW),
            Ok(Some(Inbound::Call(_)))
        ));
    }

    /// Across an outage both ways (the request lost, then the answer lost), each call sent again
    /// ends once with its answer, and none runs twice.
    #[test]
    fn calls_waiting_across_an_outage_end_once_each() {
        let mut p = Pair::new(Faults::default());
        p.versions(SESSION_VERSION_REPEATS);
        // The session is up first (a lost handshake is the session layer's to retry).
        let ping = p.request(true, &Request::Ping, p.now + 10_000);
        p.drive();
        p.answer(false, ping, Answer::Pong);
        p.drive();
        let deadline = call_deadline(p.now, 10_000);
        let lost_out = p.request(true, &call("one"), deadline);
        p.wire.clear();
        let lost_back = p.request(true, &call("two"), deadline);
        p.drive();
        p.answer(false, lost_back, Answer::CallResult(b"2".to_vec()));
        p.wire.clear();
        p.advance(p.now + 3_000);
        assert_eq!(p.a.rpc.resend(B), 2);
        p.drive();
        let calls: Vec<Token> = p.b.calls().iter().map(|c| c.token).collect();
        assert_eq!(calls, vec![lost_back, lost_out], "each ran once");
        p.answer(false, lost_out, Answer::CallResult(b"1".to_vec()));
        p.drive();
        let mut ended: Vec<(Token, Result<Reply, Failure>)> =
            p.a.answered()
                .iter()
                .filter(|a| a.token != ping)
                .map(|a| (a.token, a.result.clone()))
                .collect();
        ended.sort_by_key(|(t, _)| *t);
        assert_eq!(
            ended,
            vec![
                (lost_out, Ok(Reply::CallResult(b"1".to_vec()))),
                (lost_back, Ok(Reply::CallResult(b"2".to_vec())))
            ]
        );
    }

    /// A peer of an earlier session version would refuse a request sent again (as a duplicate
    /// token, or a replayed call): it is sent nothing again, and its calls wait for their
    /// answers or their deadlines as before.
    #[test]
    fn a_peer_of_an_earlier_version_is_sent_nothing_again() {
        let mut p = Pair::new(Faults::default());
        let token = p.request(true, &call("notes"), call_deadline(p.now, 10_000));
        p.drive();
        assert_eq!(p.a.rpc.resend(B), 0, "a peer that said no version");
        p.versions(SESSION_VERSION_REPEATS - 1);
        assert_eq!(p.a.rpc.resend(B), 0, "a peer of an earlier version");
        p.drive();
        assert_eq!(p.b.inbound.len(), 1, "the call, once: {:?}", p.b.inbound);
        p.versions(SESSION_VERSION_REPEATS);
        assert_eq!(p.a.rpc.resend(B), 1);
        p.answer(false, token, Answer::CallResult(b"{}".to_vec()));
        p.drive();
        assert_eq!(p.a.answered().len(), 1);
    }

    /// What a hub keeps of its own requests to send them again is bounded in bytes: a request
    /// past the bound is not kept (nor sent again), and what an answered request kept is freed.
    #[test]
    fn requests_kept_for_sending_again_are_bounded_in_bytes() {
        let mut a = Rpc::new(0);
        let big = |n: usize| {
            Request::Call(OutgoingCall {
                timeout_ms: 10_000,
                app: "a".into(),
                tool: "t".into(),
                envelope: Vec::new(),
                arguments: vec![b' '; n],
            })
        };
        let deadline = call_deadline(NOW, 10_000);
        let said = Msg::Version(SESSION_VERSION_REPEATS).to_vec();
        a.handle_received(B, &said, NOW).unwrap();
        const MIB: usize = 1 << 20;
        let mut tokens = Vec::new();
        for _ in 0..3 {
            tokens.push(a.request(B, &big(10 * MIB), deadline).unwrap().0);
        }
        a.request(B, &big(3 * MIB), deadline).unwrap();
        assert!(a.resend_bytes <= RESEND_KEPT_BYTES);
        assert_eq!(a.resend(B), 3, "the fourth does not fit");
        while a.poll_transmit(NOW).is_some() {}
        a.abandon(tokens[0]);
        a.request(B, &big(3 * MIB), deadline).unwrap();
        assert_eq!(a.resend(B), 3, "room again: the fifth is kept");
        for token in &tokens[1..] {
            a.abandon(*token);
        }
        assert!(
            (3 * MIB..4 * MIB).contains(&a.resend_bytes),
            "only the fifth is kept: {}",
            a.resend_bytes
        );
    }
}
