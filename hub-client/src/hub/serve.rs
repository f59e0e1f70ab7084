//! Answering what peers ask of this hub: pings, info, the apps it shares with them, and calls of
//! those apps. Requests arrive decoded once (`shared_proto::session::rpc::Inbound`); the peer
//! layer has already bounded them per peer and refused repeated tokens. Here the hub decides:
//! whom it answers (the book: suspended, revoked, no session), what it shares (the sharing
//! policy, default deny, trust levels), and every check on a call's envelope, each refusal with
//! its own code (docs/PROTOCOL.md section 13, "Checks on a call, in order").
//!
//! The event loop calls [`HubState::on_request`] in the order requests arrive: bounds are
//! checked and work registered there; the work itself (listings, calls) runs on its own task,
//! and every answer goes out through the peer layer without blocking the loop.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::JsonObject;
use shared_proto::agent::nonces::NonceRefusal;
use shared_proto::agent::{
    arguments, arguments_hash, check_call, trust_needed, CallErrorCode, Caller, SignedDelegation,
};
use shared_proto::trust::VerifiedPeer;
use shared_proto::HubId;

use super::agent::AppView;
use super::{HubState, Member};
use crate::apps::tool_hints;
use crate::node::audit::{self, AuditKind, Decision};
use crate::node::store::{AppRecord, AuditEntry};
use crate::transport::peers::{Answer, CallRequest, Inbound, Listing, PeerInfo, PeerRequest};
use crate::unix_ms;

/// Apps requests from peers being answered at once (each may start apps); more are refused.
pub const MAX_LISTINGS: usize = 16;

/// Apps requests from one peer being answered at once: one peer cannot take every place (each
/// may wait up to 30 s for an app to start).
pub const MAX_LISTINGS_PER_PEER: usize = 2;
/// Largest tool result sent to a peer (JSON bytes); fragments carry it, up to 16 MiB a message.
pub const MAX_RESULT_BYTES: usize = 15 * 1024 * 1024;

/// What a peer is told when this hub suspended it.
const SUSPENDED: &str = "suspended by this hub";

/// Why a call from a peer got no result: its code and details.
type CallFailure = (CallErrorCode, String);

fn no(code: CallErrorCode) -> CallFailure {
    (code, code.to_string())
}

impl HubState {
    /// A request from a peer (the event loop calls this in order of arrival; it never waits).
    pub(crate) fn on_request(self: &Arc<Self>, member: &Member, inbound: Inbound) {
        match inbound {
            Inbound::Ping(request) => {
                let answer = match self.book.admit(request.from) {
                    Ok(()) => Answer::Pong,
                    Err(_) => Answer::Refused(SUSPENDED.into()),
                };
                answer_soon(member, request, answer);
            }
            Inbound::Info(request) => {
                let answer = match self.book.admit(request.from) {
                    Ok(()) => {
                        let info = PeerInfo::of_this_build(&member.name, self.started);
                        Answer::Info(serde_json::to_vec(&info).unwrap_or_default())
                    }
                    Err(_) => Answer::Refused(SUSPENDED.into()),
                };
                answer_soon(member, request, answer);
            }
            Inbound::Apps { request, listing } => self.serve_listing(member, request, listing),
            Inbound::Call(call) => self.serve_call(member, call),
            Inbound::Cancel(request) => self.cancel_call(request),
            Inbound::Renew(request) => self.serve_renewal(member, request),
            Inbound::Refused {
                call: Some(call),
                why,
                ..
            } => {
                // The peer layer refused it (a bound, or a token still in use) and answered.
                let mut record = call_in_entry(&call, None);
                audit::refuse(&mut record, why.code().name(), &why.to_string());
                // Counted with its repeats: only the first of an interval is written (and so
                // only then is there a task).
                if let Some(record) = self.book.admit_repeat(record, unix_ms()) {
                    let state = self.clone();
                    tokio::spawn(async move { state.record(record).await });
                }
            }
            _ => {}
        }
    }

    /// An apps request: answered on its own task, at most [`MAX_LISTINGS`] at once.
    fn serve_listing(self: &Arc<Self>, member: &Member, request: PeerRequest, listing: Listing) {
        if self.book.admit(request.from).is_err() {
            return answer_soon(member, request, Answer::Refused(SUSPENDED.into()));
        }
        let permit = match self.listings.start(request.from) {
            Ok(permit) => permit,
            Err(busy) => return answer_soon(member, request, Answer::Refused(busy.into())),
        };
        let state = self.clone();
        let member = member.clone();
        tokio::spawn(async move {
            let answer = match state.apps_for_peer(&member, request.from, listing).await {
                Ok(apps) => {
                    Answer::Apps(serde_json::to_vec(&apps).unwrap_or_else(|_| b"[]".to_vec()))
                }
                Err(code) => Answer::Refused(format!("{}: {code}", code.name())),
            };
            drop(permit);
            if let Err(e) = member
                .peers
                .answer(request.from, request.token, answer)
                .await
            {
                tracing::debug!(peer = %request.from, "apps answer not sent: {e}");
            }
        });
    }

    /// What this hub shares with `from` for the listing's principal: the apps whose policy admits
    /// it, each with the tools its trust level (and a signed listing's scopes) may call; nothing
    /// for a hub it does not admit to calls. A principal that is only named (a peer of session
    /// version 1) is not one this hub can check: it counts as none.
    async fn apps_for_peer(
        self: &Arc<Self>,
        member: &Member,
        from: HubId,
        listing: Listing,
    ) -> Result<Vec<AppView>, CallErrorCode> {
        let Ok(cert) = self.admit_call(from).await else {
            return Ok(Vec::new());
        };
        let delegation = listing.delegation(&cert, member.hub_id, unix_ms())?;
        let apps = self
            .blocking(|state| Ok(state.store().apps()?))
            .await
            .unwrap_or_default();
        let caller = Caller::of(&cert, delegation.as_ref().map(|d| d.principal.as_str()));
        let scoped =
            |app: &str, tool: Option<&str>| delegation.as_ref().is_none_or(|d| d.allows(app, tool));
        let mut out = Vec::new();
        for app in apps
            .iter()
            .filter(|a| a.sharing.admits(&caller) && scoped(&a.name, None))
        {
            let view = self
                .app_view(app, |t| {
                    caller.trust >= trust_needed(tool_hints(app, t), app.require_trust)
                        && scoped(&app.name, Some(&t.name))
                })
                .await;
            out.push(view);
        }
        Ok(out)
    }

    /// The book's answer on whether `from` may call, after reading what other processes may
    /// have changed in the store.
    async fn admit_call(self: &Arc<Self>, from: HubId) -> Result<VerifiedPeer, CallErrorCode> {
        self.blocking(|state| state.sync_book(&state.store()))
            .await
            .map_err(|_| CallErrorCode::Busy)?;
        self.book.admit_call(from)
    }

    /// A call: run on its own task, registered so that a cancel can stop it; its outcome is
    /// recorded (`call.in`) and answered.
    fn serve_call(self: &Arc<Self>, member: &Member, call: CallRequest) {
        let envelope = SignedDelegation::decode(&call.envelope);
        let record = call_in_entry(&call, envelope.as_ref().ok());
        let key = (call.from, call.token);
        let pending = record.clone();
        let state = self.clone();
        let member = member.clone();
        // The task removes itself from `calls` when done; it waits for this lock, so it is
        // inserted first.
        let mut running = self.running_calls();
        let task = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let outcome = state.run_call(&member, &call, envelope).await;
            state.running_calls().remove(&key);
            let record = finish_entry(record, &outcome, started.elapsed());
            let answer = match outcome {
                Ok(result) => Answer::CallResult(result),
                Err((code, message)) => Answer::CallError { code, message },
            };
            // The answer does not wait for the disk: the entry goes with the journal's next
            // batch (with the next call's nonce, if one comes soon). A refusal is counted with
            // its repeats.
            let record = async {
                if record.decision == Decision::Refused.as_str() {
                    state.record_repeat(record).await;
                } else {
                    state.record_later(record).await;
                }
            };
            let (_, sent) =
                tokio::join!(record, member.peers.answer(call.from, call.token, answer));
            if let Err(e) = sent {
                tracing::debug!(peer = %call.from, "call result not sent: {e}");
            }
        });
        running.insert(key, (task.abort_handle(), pending));
    }

    /// The caller of a running call stopped waiting: the call is stopped and that recorded.
    fn cancel_call(self: &Arc<Self>, request: PeerRequest) {
        let cancelled = self.running_calls().remove(&(request.from, request.token));
        if let Some((task, mut record)) = cancelled {
            task.abort();
            tracing::debug!(peer = %request.from, "call cancelled by its caller");
            record.duration_ms = unix_ms().saturating_sub(record.at_ms);
            audit::decide(
                &mut record,
                Decision::Allowed,
                "cancelled: the caller stopped waiting",
            );
            let state = self.clone();
            tokio::spawn(async move { state.record(record).await });
        }
    }

    fn running_calls(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(HubId, u64), super::RunningCall>>
    {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks and runs a call; the result's JSON, or why not.
    async fn run_call(
        self: &Arc<Self>,
        member: &Member,
        call: &CallRequest,
        envelope: Result<SignedDelegation, CallErrorCode>,
    ) -> Result<Vec<u8>, CallFailure> {
        let (cert, record, arguments) = self.check_call(member, call, envelope).await?;
        let timeout = Duration::from_millis(call.deadline_ms.saturating_sub(unix_ms()));
        tracing::info!(peer = %cert.hub_id(), app = call.app, tool = call.tool, "call from a peer");
        let result = self
            .apps
            .call(&record, &call.tool, arguments, timeout)
            .await
            .map_err(|e| (e.code, e.message))?;
        let body = serde_json::to_vec(&result)
            .map_err(|e| (CallErrorCode::AppFailed, format!("result: {e}")))?;
        if body.len() > MAX_RESULT_BYTES {
            return Err((
                CallErrorCode::TooLarge,
                format!(
                    "the result is {} bytes, over {MAX_RESULT_BYTES}",
                    body.len()
                ),
            ));
        }
        Ok(body)
    }

    /// Every check of a call before its app runs, in the order PROTOCOL.md gives: the caller
    /// (suspended, session, revoked), its envelope, the arguments (the envelope binds what the
    /// app receives), the scopes, the sharing policy, the tool and the trust it needs, and last
    /// the nonce, spent only by a call that passed every other check and durable before the app
    /// runs. The caller's certificate, the app and the arguments, if all pass.
    async fn check_call(
        self: &Arc<Self>,
        member: &Member,
        call: &CallRequest,
        envelope: Result<SignedDelegation, CallErrorCode>,
    ) -> Result<(VerifiedPeer, AppRecord, Option<JsonObject>), CallFailure> {
        // One trip to the store: what other processes changed, and the app's record.
        let app = self
            .in_place(|state| {
                let store = state.store();
                state.sync_book(&store)?;
                Ok(store.app(&call.app)?)
            })
            .map_err(|_| no(CallErrorCode::Busy))?;
        let cert = self.book.admit_call(call.from).map_err(no)?;
        let envelope = envelope.map_err(no)?;
        call.check_envelope(&envelope, cert.identity_key(), member.hub_id, unix_ms())
            .map_err(no)?;
        // The arguments as the app will receive them: the bytes sent must be their canonical
        // form, so that the hash the envelope binds is the hash of what the app gets.
        let arguments =
            arguments::received(&call.arguments).map_err(|e| (e.code(), e.to_string()))?;
        let delegation = envelope.delegation;
        if !delegation.allows(&call.app, Some(&call.tool)) {
            return Err(no(CallErrorCode::ScopeDenied));
        }
        let caller = Caller::of(&cert, Some(&delegation.principal));
        let record = app
            .filter(|a| a.sharing.admits(&caller))
            .ok_or_else(|| no(CallErrorCode::NotShared))?;
        let tools = self
            .apps
            .tools(&record)
            .await
            .map_err(|e| (e.code, e.message))?;
        let hints = tools
            .iter()
            .find(|t| t.name == call.tool)
            .map(|t| tool_hints(&record, t))
            .ok_or_else(|| no(CallErrorCode::UnknownTool))?;
        check_call(&record.sharing, record.require_trust, hints, &caller).map_err(no)?;
        self.spend_nonce(call.from, delegation.nonce, delegation.expires_at_ms)
            .await?;
        Ok((cert, record, arguments))
    }

    /// Spends a call's nonce: refused if seen before (or if the caller holds its share of
    /// nonces), and durable before this returns.
    async fn spend_nonce(
        self: &Arc<Self>,
        from: HubId,
        nonce: [u8; 16],
        expires_at_ms: u64,
    ) -> Result<(), CallFailure> {
        let taken = self
            .nonces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(from, nonce, expires_at_ms, unix_ms());
        match taken {
            Ok(()) => {}
            Err(NonceRefusal::Replayed) => return Err(no(CallErrorCode::Replayed)),
            Err(why) => return Err((CallErrorCode::Busy, why.to_string())),
        }
        if let Err(e) = self.journal.spend_nonce(from, nonce, expires_at_ms).await {
            self.nonces
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .give_back(&nonce);
            tracing::error!(peer = %from, "a call's nonce was not stored: {e}");
            return Err((
                CallErrorCode::Busy,
                "the hub could not store the call".into(),
            ));
        }
        Ok(())
    }
}

/// The apps requests being answered: at most [`MAX_LISTINGS`] at once, and
/// [`MAX_LISTINGS_PER_PEER`] of one peer.
#[derive(Debug, Default)]
pub(crate) struct Listings {
    running: Arc<std::sync::Mutex<std::collections::HashMap<HubId, usize>>>,
}

/// A place among the listings being answered, given back when dropped.
pub(crate) struct ListingPermit {
    running: Arc<std::sync::Mutex<std::collections::HashMap<HubId, usize>>>,
    peer: HubId,
}

fn lock(
    running: &std::sync::Mutex<std::collections::HashMap<HubId, usize>>,
) -> std::sync::MutexGuard<'_, std::collections::HashMap<HubId, usize>> {
    running
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Listings {
    /// A place for a listing of `peer`, or why not.
    pub(crate) fn start(&self, peer: HubId) -> Result<ListingPermit, &'static str> {
        let mut running = lock(&self.running);
        if running.values().sum::<usize>() >= MAX_LISTINGS {
            return Err("busy: too many listings are being answered");
        }
        let mine = running.entry(peer).or_default();
        if *mine >= MAX_LISTINGS_PER_PEER {
            return Err("busy: this hub's listings are being answered already");
        }
        *mine += 1;
        Ok(ListingPermit {
            running: self.running.clone(),
            peer,
        })
    }
}

impl Drop for ListingPermit {
    fn drop(&mut self) {
        let mut running = lock(&self.running);
        if let Some(n) = running.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.peer);
            }
        }
    }
}

/// Sends an answer from another task: the event loop never waits on the peer layer.
fn answer_soon(member: &Member, request: PeerRequest, answer: Answer) {
    let peers = member.peers.clone();
    tokio::spawn(async move {
        if let Err(e) = peers.answer(request.from, request.token, answer).await {
            tracing::debug!(peer = %request.from, "answer not sent: {e}");
        }
    });
}

/// Whether a code is a refusal (a check failed) rather than a failure of the app or the call.
fn refusal(code: CallErrorCode) -> bool {
    !matches!(
        code,
        CallErrorCode::AppUnavailable
            | CallErrorCode::AppFailed
            | CallErrorCode::Timeout
            | CallErrorCode::Cancelled
            | CallErrorCode::TooLarge
    )
}

/// The audit entry of a call from a peer: what the message and its envelope say (the principal
/// as the envelope claims it, even when the envelope is refused).
fn call_in_entry(call: &CallRequest, envelope: Option<&SignedDelegation>) -> AuditEntry {
    let mut record = audit::entry(AuditKind::CallIn, Some(call.from), Decision::None, "");
    record.app = call.app.clone();
    record.tool = call.tool.clone();
    record.arguments_sha256 = Some(arguments_hash(&call.arguments));
    record.bytes = Some(call.arguments.len() as u64);
    if let Some(envelope) = envelope {
        record.principal = envelope.delegation.principal.clone();
    }
    record
}

/// The audit entry of a call once it ran: its decision, reason, duration and bytes.
fn finish_entry(
    mut record: AuditEntry,
    outcome: &Result<Vec<u8>, CallFailure>,
    took: Duration,
) -> AuditEntry {
    record.duration_ms = took.as_millis() as u64;
    let result_len = outcome.as_ref().map_or(0, Vec::len);
    record.bytes = Some(record.bytes.unwrap_or(0) + result_len as u64);
    match outcome {
        Ok(_) => audit::decide(&mut record, Decision::Allowed, "ok"),
        Err((code, why)) if refusal(*code) => audit::refuse(&mut record, code.name(), why),
        Err((code, why)) => audit::decide(
            &mut record,
            Decision::Allowed,
            format!("{}: {why}", code.name()),
        ),
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One peer gets at most its share of the listings answered at once; the others still get
    /// places, up to the whole; a place is given back when its listing ends. (Once one peer could
    /// take all 16.)
    #[test]
    fn one_peer_cannot_take_every_listing_place() {
        let listings = Listings::default();
        let hub = |n: u8| HubId([n; 16]);
        let mine: Vec<_> = (0..MAX_LISTINGS_PER_PEER)
            .map(|_| listings.start(hub(1)).unwrap())
            .collect();
        assert!(listings.start(hub(1)).is_err());
        let others: Vec<_> = (2..)
            .flat_map(|n| (0..MAX_LISTINGS_PER_PEER).map(move |_| hub(n)))
            .take(MAX_LISTINGS - MAX_LISTINGS_PER_PEER)
            .map(|h| listings.start(h).unwrap())
            .collect();
        assert_eq!(
            listings.start(hub(99)).err(),
            Some("busy: too many listings are being answered")
        );
        drop(others);
        drop(mine);
        assert!(lock(&listings.running).is_empty());
        assert!(listings.start(hub(1)).is_ok());
    }
}
