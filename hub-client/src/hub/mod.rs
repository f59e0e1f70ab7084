//! The running hub: its state and the one service every surface calls (the admin API, the MCP
//! server, the console, and through the API the CLI), so that each rule lives in one place.
//! `daemon` runs it and feeds it the peer layer's events; `api` and `mcp` expose it.
//!
//! | module | what |
//! |---|---|
//! | [`book`] | the one owner of what the hub knows about its peers (sessions, suspensions, revocations, quorum reports, faults, presence and paths) |
//! | `service` | status, pairing, peers (suspend, revoke, ping), statistics and the audit log |
//! | [`agent`] | the agent surface: the apps of every hub, and calls to them |
//! | `serve` | answering what peers ask of this hub: pings, info, apps, calls |
//! | `events` | what the event loop tells the hub: presence, sessions, documents, reports, pairing |
//! | [`score`], [`quorum`] | per-peer trust scores, with what other hubs report seeing |
//! | [`view`] | the answers the service gives |

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use shared_proto::agent::CallErrorCode;
use shared_proto::HubId;
use tokio::sync::Notify;

use crate::node::home::{Home, HomeError};
use crate::node::store::{AuditEntry, Store, StoreError};
use crate::transport::join::JoinError;
use crate::transport::peers::{PeerError, PeerHandle};

pub mod agent;
pub(crate) mod book;
pub(crate) mod events;
pub mod quorum;
pub(crate) mod renew;
pub mod score;
pub(crate) mod serve;
pub(crate) mod service;
pub(crate) mod tokens;
pub mod view;

pub use service::{join_cluster, AuditQuery, CallBucket, CallSeries, MAX_PAIRING_TTL_S};

/// Why the service refused or failed a request. Each surface maps it to its own form (the admin
/// API to an HTTP status and a stable code, the MCP surface to a tool error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The request is malformed or out of range.
    #[error("{0}")]
    BadRequest(String),
    /// No such peer (or not in the state the request needs).
    #[error("{0}")]
    NotFound(String),
    /// This hub is not a member of a cluster yet.
    #[error("this hub is not a member of a cluster yet")]
    NotJoined,
    /// This hub is a member of a cluster already.
    #[error("this hub is already a member of a cluster")]
    AlreadyJoined,
    /// Only the founder (the hub holding the CA key) can do this.
    #[error("only the hub holding the cluster CA key (the founder) can do this")]
    NotFounder,
    /// Only the founder or an admin hub can do this.
    #[error("{}", HomeError::NotAdmin)]
    NotAdmin,
    /// The peer refused (it suspended this hub).
    #[error("{0}")]
    Refused(String),
    /// The token's issuer refused the pairing (invalid, used or expired token).
    #[error("{0}")]
    PairingRefused(String),
    /// The issuer of a pairing token is not online.
    #[error("{0}")]
    IssuerOffline(String),
    /// No answer in time.
    #[error("{0}")]
    Timeout(String),
    /// The peer could not be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The relay could not be reached.
    #[error("{0}")]
    Relay(String),
    /// The data directory or store failed: an internal error.
    #[error(transparent)]
    Home(HomeError),
    /// The store failed: an internal error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task failed (a bug).
    #[error("a hub task failed: {0}")]
    Task(String),
    /// A call of an app was refused or failed, with its stable code.
    #[error("{message}")]
    Call {
        /// The code.
        code: CallErrorCode,
        /// Details.
        message: String,
    },
}

impl ServiceError {
    /// A refused or failed call.
    pub(crate) fn call(code: CallErrorCode, message: impl Into<String>) -> Self {
        ServiceError::Call {
            code,
            message: message.into(),
        }
    }

    /// The call error code this error stands for, if it is one (for surfaces that speak codes).
    pub fn code(&self) -> Option<CallErrorCode> {
        match self {
            ServiceError::Call { code, .. } => Some(*code),
            ServiceError::Timeout(_) => Some(CallErrorCode::Timeout),
            _ => None,
        }
    }
}

impl From<HomeError> for ServiceError {
    fn from(e: HomeError) -> Self {
        match e {
            HomeError::NotFounder => ServiceError::NotFounder,
            HomeError::NotAdmin => ServiceError::NotAdmin,
            HomeError::NotInitialized(_) => ServiceError::NotJoined,
            HomeError::Store(e) => ServiceError::Store(e),
            HomeError::Renewal(e) => ServiceError::Refused(e.to_string()),
            e @ HomeError::UnknownPeer(_) => ServiceError::NotFound(e.to_string()),
            e @ (HomeError::Revoked(_)
            | HomeError::Trust(shared_proto::trust::TrustError::NotAdmin(_))) => {
                ServiceError::Refused(e.to_string())
            }
            e => ServiceError::Home(e),
        }
    }
}

/// What a request to a peer ended with, as the service tells it: the one mapping of the peer
/// layer's errors.
impl From<PeerError> for ServiceError {
    fn from(e: PeerError) -> Self {
        let message = e.to_string();
        match e {
            PeerError::Call { code, message, .. } => ServiceError::Call {
                code: code.unwrap_or(CallErrorCode::AppFailed),
                message,
            },
            PeerError::Timeout(_) => ServiceError::Timeout(message),
            PeerError::Refused { .. } => ServiceError::Refused(message),
            _ => ServiceError::Unreachable(message),
        }
    }
}

impl From<JoinError> for ServiceError {
    fn from(e: JoinError) -> Self {
        use shared_proto::session::pairing::PairingError;
        let message = e.to_string();
        match e {
            JoinError::Pairing(PairingError::Refused(_) | PairingError::Unreadable(_)) => {
                ServiceError::PairingRefused(message)
            }
            JoinError::IssuerOffline => ServiceError::IssuerOffline(message),
            JoinError::Timeout(_) => ServiceError::Timeout(message),
            _ => ServiceError::Relay(message),
        }
    }
}

/// This hub as a member of its cluster: who it is (read once, when it starts as a member) and
/// its peer layer.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// The peer layer.
    pub(crate) peers: PeerHandle,
    /// This hub's id.
    pub(crate) hub_id: HubId,
    /// Its name.
    pub(crate) name: String,
    /// Its keys (what signs envelopes) and certificate, as its relay connection and LAN path
    /// read them (a renewal replaces the certificate).
    pub(crate) credentials: crate::transport::CredentialsCell,
}

/// A call from a peer running on this hub: its task, and its audit entry as far as known (what
/// is recorded if the caller cancels it).
pub(crate) type RunningCall = (tokio::task::AbortHandle, AuditEntry);

/// The running hub's state, shared by the event loop and the surfaces.
#[derive(Debug)]
pub(crate) struct HubState {
    pub(crate) home: Home,
    pub(crate) store: Arc<Mutex<Store>>,
    /// What the hub knows about its peers.
    pub(crate) book: book::PeerBook,
    /// Set once the hub runs as a member.
    member: RwLock<Option<Member>>,
    /// Woken when an unjoined hub joins through the API.
    pub(crate) joined: Notify,
    /// Serializes joins through the API.
    pub(crate) joining: tokio::sync::Mutex<()>,
    /// This hub's apps.
    pub(crate) apps: crate::apps::AppHost,
    /// Apps requests from peers being answered now (at most `serve::MAX_LISTINGS`).
    pub(crate) listings: serve::Listings,
    /// Calls from peers running now, by peer and token (to cancel them, and audit that).
    pub(crate) calls: Mutex<HashMap<(HubId, u64), RunningCall>>,
    /// Whether this hub appends to its audit log (always, but in a benchmark).
    pub(crate) audited: bool,
    /// The writer of what a call's path must make durable (nonces, audit entries).
    pub(crate) journal: crate::node::journal::Journal,
    /// When this hub's certificate is renewed.
    pub(crate) renewals: renew::Renewals,
    /// How long the certificates it signs at pairing are valid (ms).
    pub(crate) cert_validity_ms: u64,
    /// The delegation nonces seen, until their envelopes expire (durable through the journal).
    pub(crate) nonces: Mutex<shared_proto::agent::nonces::Nonces>,
    /// API tokens found valid lately, and their uses not written yet.
    pub(crate) tokens: tokens::Tokens,
    /// When this hub started (its info's uptime).
    pub(crate) started: Instant,
}

impl HubState {
    /// The state of a hub over `home` and its open `store`; the book is filled from the store.
    pub(crate) fn new(
        home: Home,
        store: Store,
        audited: bool,
        cert_validity_ms: u64,
    ) -> Result<Self, ServiceError> {
        let now = crate::unix_ms();
        let mut nonces = shared_proto::agent::nonces::Nonces::new();
        for (peer, nonce, expires) in store.delegation_nonces(now)? {
            // Nonces kept before the store knew their hub count against no hub's share.
            nonces.restore(peer.unwrap_or(HubId([0; 16])), nonce, expires, now);
        }
        let store = Arc::new(Mutex::new(store));
        let journal = crate::node::journal::Journal::start(&home, store.clone(), audited)
            .map_err(|e| ServiceError::Task(format!("the journal: {e}")))?;
        let state = HubState {
            home,
            store,
            book: book::PeerBook::default(),
            member: RwLock::new(None),
            joined: Notify::new(),
            joining: tokio::sync::Mutex::new(()),
            apps: crate::apps::AppHost::new(),
            listings: serve::Listings::default(),
            calls: Mutex::new(HashMap::new()),
            audited,
            journal,
            nonces: Mutex::new(nonces),
            tokens: tokens::Tokens::default(),
            started: Instant::now(),
            renewals: renew::Renewals::default(),
            cert_validity_ms,
        };
        state.sync_book(&state.store())?;
        Ok(state)
    }

    /// Reads what the book holds from the store again if another process changed the store
    /// since the book last read it. Call it on the blocking pool.
    pub(crate) fn sync_book(&self, store: &Store) -> Result<(), ServiceError> {
        let version = store.data_version()?;
        if !self.book.is_stale(version) {
            return Ok(());
        }
        let suspended: Vec<HubId> = store
            .active_peers()?
            .into_iter()
            .filter(|p| p.suspended_at.is_some())
            .map(|p| p.id)
            .collect();
        let revoked = store.revoked_peer_ids()?;
        let revocations = if self.home.is_initialized() {
            self.home.held_revocations(store)?
        } else {
            None
        };
        self.book.load(version, suspended, revoked, revocations);
        Ok(())
    }

    pub(crate) fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // A poisoned lock means a handler panicked mid-call; SQLite transactions keep the data
        // consistent, so carry on with it.
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// This hub as a member, once it runs as one.
    pub(crate) fn member(&self) -> Option<Member> {
        self.member.read().ok().and_then(|m| m.clone())
    }

    /// This hub as a member, or [`ServiceError::NotJoined`].
    pub(crate) fn joined_member(&self) -> Result<Member, ServiceError> {
        self.member().ok_or(ServiceError::NotJoined)
    }

    /// The hub starts (`Some`) or stops running as a member.
    pub(crate) fn set_member(&self, member: Option<Member>) {
        if let Ok(mut held) = self.member.write() {
            *held = member;
        }
    }

    /// Runs `f` on the blocking pool with this state (SQLite and file work stays off the async
    /// worker threads).
    pub(crate) async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: FnOnce(&HubState) -> Result<T, ServiceError> + Send + 'static,
    {
        let state = self.clone();
        tokio::task::spawn_blocking(move || f(&state))
            .await
            .map_err(|e| ServiceError::Task(e.to_string()))?
    }

    /// Runs `f` with this state on this task's own thread, which stops taking other tasks
    /// meanwhile (`tokio::task::block_in_place`): for a short store read on a call's path, where
    /// handing it to the blocking pool and back costs more than the read.
    pub(crate) fn in_place<T>(
        &self,
        f: impl FnOnce(&HubState) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        tokio::task::block_in_place(|| f(self))
    }

    /// Appends an entry to the audit log through the journal, and waits until it is committed
    /// (failures are logged).
    pub(crate) async fn record(self: &Arc<Self>, entry: AuditEntry) {
        if !self.audited {
            return;
        }
        let kind = entry.kind.clone();
        if let Err(e) = self.journal.append(entry).await {
            tracing::error!(kind, "audit entry not recorded: {e}");
        }
    }

    /// Appends an entry to the audit log with the journal's next batch, without waiting for it
    /// (what is on an answer's path: the caller's `call.out`).
    pub(crate) async fn record_later(self: &Arc<Self>, entry: AuditEntry) {
        if self.audited {
            self.journal.append_later(entry).await;
        }
    }

    /// Records an entry that may repeat (a refusal, a fault): written now if it is the first of
    /// its kind in an interval, counted into one entry at the interval's end otherwise
    /// ([`book::PeerBook::admit_repeat`]).
    pub(crate) async fn record_repeat(self: &Arc<Self>, entry: AuditEntry) {
        if let Some(entry) = self.book.admit_repeat(entry, crate::unix_ms()) {
            self.record_later(entry).await;
        }
    }

    /// Records a fault of `peer` (counted with its repeats: [`HubState::record_repeat`]).
    pub(crate) async fn record_fault(
        self: &Arc<Self>,
        peer: HubId,
        kind: crate::node::audit::FaultKind,
        why: &str,
    ) {
        self.record_repeat(crate::node::audit::fault(peer, kind, why))
            .await;
    }

    /// Writes the entries that stand for the repeats of the intervals now ended (of all of
    /// them, if `all`: the hub stops).
    pub(crate) async fn record_repeats_due(self: &Arc<Self>, all: bool) {
        for entry in self.book.repeats_due(crate::unix_ms(), all) {
            self.record(entry).await;
        }
    }
}
