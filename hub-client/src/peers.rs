//! The hub's encrypted channel to every other hub: `shared_proto::peer::PeerSessions` driven by a
//! tokio task over the relay connection.
//!
//! [`PeerClient::spawn`] owns a [`RelayClient`] and the sessions. The application sends with
//! [`PeerClient::send`] (a session is set up on demand; messages wait in a bounded queue, and the
//! call waits when the task is busy) and receives with [`PeerClient::next_message`]. Presence
//! drives the sessions: a hub that leaves loses its session and what was queued for it; a hub that
//! reconnects (it may have restarted) gets a new session, queued messages kept; a revocation list
//! that revokes a peer drops its session at once.
//!
//! Messages carry one byte of kind: `0` application data, `1` ping, `2` pong (the ping's 8-byte
//! token echoed), so [`PeerClient::ping`] measures a round trip through the session itself.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use shared_proto::noise::LocalIdentity;
use shared_proto::peer::{Event, PeerSessions, SendError};
use shared_proto::HubId;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::relay::{RelayClient, RelayConfig, RelayError, RelayEvent};

const KIND_DATA: u8 = 0;
const KIND_PING: u8 = 1;
const KIND_PONG: u8 = 2;

/// Errors of the peer layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The relay connection could not start.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// The message was refused (too large, queue full, to self).
    #[error(transparent)]
    Send(#[from] SendError),
    /// The session with the peer could not be set up or was dropped.
    #[error("session with {peer} failed: {reason}")]
    Session {
        /// The peer.
        peer: HubId,
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("no answer from {0} in time")]
    Timeout(HubId),
    /// The peer client has stopped.
    #[error("the peer client has stopped")]
    Stopped,
}

/// What the application receives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerEvent {
    /// A message from a hub, decrypted and authenticated.
    Message {
        /// The sender (as its certificate names it).
        from: HubId,
        /// The message.
        message: Vec<u8>,
    },
    /// A relay event worth knowing (presence, revocations, disconnects).
    Relay(RelayEvent),
    /// A session with a peer failed or was dropped.
    SessionFailed {
        /// The peer.
        peer: HubId,
        /// Why.
        reason: String,
    },
}

enum Command {
    Send {
        to: HubId,
        message: Vec<u8>,
        done: oneshot::Sender<Result<(), SendError>>,
    },
    Ping {
        to: HubId,
        done: oneshot::Sender<Result<Duration, PeerError>>,
    },
}

/// A running peer layer. Dropping it stops the task and the relay connection.
#[derive(Debug)]
pub struct PeerClient {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<PeerEvent>,
    task: JoinHandle<()>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl PeerClient {
    /// Connects to the relay with `relay` and runs sessions with `identity`'s static key.
    pub fn spawn(relay: RelayConfig, identity: LocalIdentity) -> Result<Self, PeerError> {
        let me = relay.credentials.hub_id;
        let client = RelayClient::spawn(relay)?;
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::channel(1024);
        let sessions = PeerSessions::new(identity, me);
        let task = tokio::spawn(run(client, sessions, cmd_rx, ev_tx));
        Ok(PeerClient {
            commands: cmd_tx,
            events: ev_rx,
            task,
        })
    }

    /// Sends `message` to `to` over an end-to-end session.
    pub async fn send(&self, to: HubId, message: Vec<u8>) -> Result<(), PeerError> {
        let mut framed = Vec::with_capacity(message.len() + 1);
        framed.push(KIND_DATA);
        framed.extend_from_slice(&message);
        let (done, wait) = oneshot::channel();
        self.commands
            .send(Command::Send {
                to,
                message: framed,
                done,
            })
            .await
            .map_err(|_| PeerError::Stopped)?;
        wait.await
            .map_err(|_| PeerError::Stopped)?
            .map_err(PeerError::from)
    }

    /// Round trip to `to` through the session (set up first if needed; that time is included in
    /// the first ping).
    pub async fn ping(&self, to: HubId, limit: Duration) -> Result<Duration, PeerError> {
        let (done, wait) = oneshot::channel();
        self.commands
            .send(Command::Ping { to, done })
            .await
            .map_err(|_| PeerError::Stopped)?;
        match tokio::time::timeout(limit, wait).await {
            Ok(r) => r.map_err(|_| PeerError::Stopped)?,
            Err(_) => Err(PeerError::Timeout(to)),
        }
    }

    /// The next event; `None` once the client has stopped.
    pub async fn next_event(&mut self) -> Option<PeerEvent> {
        self.events.recv().await
    }
}

impl Drop for PeerClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A ping waiting for its pong: the peer, when it was sent, and who waits for the answer.
struct PendingPing {
    peer: HubId,
    sent: Instant,
    done: oneshot::Sender<Result<Duration, PeerError>>,
}

struct Pending {
    pings: HashMap<u64, PendingPing>,
}

async fn run(
    mut relay: RelayClient,
    mut sessions: PeerSessions,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<PeerEvent>,
) {
    let mut rng = StdRng::from_entropy();
    let mut pending = Pending {
        pings: HashMap::new(),
    };
    let mut connected_before = false;
    loop {
        let timer = sessions
            .poll_timeout()
            .map(|at| Duration::from_millis(at.saturating_sub(unix_ms())));
        tokio::select! {
            biased;
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                match cmd {
                    Command::Send { to, message, done } => {
                        let _ = done.send(sessions.send(to, message, unix_ms(), &mut rng));
                    }
                    Command::Ping { to, done } => {
                        let token = rng.next_u64();
                        let mut msg = vec![KIND_PING];
                        msg.extend_from_slice(&token.to_be_bytes());
                        match sessions.send(to, msg, unix_ms(), &mut rng) {
                            Ok(()) => {
                                let ping = PendingPing { peer: to, sent: Instant::now(), done };
                                pending.pings.insert(token, ping);
                            }
                            Err(e) => {
                                let _ = done.send(Err(e.into()));
                            }
                        }
                    }
                }
            }
            event = relay.next_event() => {
                let Some(event) = event else { break };
                match &event {
                    RelayEvent::Message { from, payload } => {
                        if let Err(e) = sessions.handle_incoming(*from, payload, unix_ms(), &mut rng) {
                            tracing::debug!(%from, "peer message refused: {e}");
                        }
                    }
                    RelayEvent::PeerLeft(hub) => sessions.drop_peer(*hub, "left the relay"),
                    RelayEvent::Undeliverable(hub) => sessions.drop_peer(*hub, "not online"),
                    RelayEvent::PeerJoined(hub) => sessions.reset_peer(*hub, unix_ms(), &mut rng),
                    RelayEvent::Revocations(list) => sessions.set_revocations(list.clone()),
                    RelayEvent::Connected { .. } => {
                        // After a reconnect, peers may have dropped their side of our sessions.
                        if connected_before {
                            sessions.reset_all(unix_ms(), &mut rng);
                        }
                        connected_before = true;
                    }
                    _ => {}
                }
                if !matches!(event, RelayEvent::Message { .. })
                    && events.send(PeerEvent::Relay(event)).await.is_err()
                {
                    break;
                }
            }
            () = sleep_opt(timer) => sessions.handle_timeout(unix_ms(), &mut rng),
        }
        if !drain(&mut sessions, &relay, &events, &mut pending, &mut rng).await {
            break;
        }
    }
    relay.shutdown().await;
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Carries out what the sessions produced. Returns false when the application is gone.
async fn drain(
    sessions: &mut PeerSessions,
    relay: &RelayClient,
    events: &mpsc::Sender<PeerEvent>,
    pending: &mut Pending,
    rng: &mut StdRng,
) -> bool {
    while let Some(event) = sessions.poll_event() {
        match event {
            Event::Transmit { to, payload } => {
                let sent = relay.send(to, payload).await;
                if sent.is_err() {
                    return false;
                }
            }
            Event::Received { from, message } => match message.split_first() {
                Some((&KIND_DATA, body)) => {
                    let ev = PeerEvent::Message {
                        from,
                        message: body.to_vec(),
                    };
                    if events.send(ev).await.is_err() {
                        return false;
                    }
                }
                Some((&KIND_PING, token)) => {
                    let mut pong = vec![KIND_PONG];
                    pong.extend_from_slice(token);
                    let _ = sessions.send(from, pong, unix_ms(), rng);
                }
                Some((&KIND_PONG, token)) => {
                    let token = token.try_into().map(u64::from_be_bytes).unwrap_or(0);
                    if let Some(ping) = pending.pings.remove(&token) {
                        if ping.peer == from {
                            let _ = ping.done.send(Ok(ping.sent.elapsed()));
                        }
                    }
                }
                _ => tracing::debug!(%from, "message of unknown kind"),
            },
            Event::Established { peer } => tracing::debug!(%peer, "session established"),
            Event::Failed { peer, reason } => {
                let failed: Vec<u64> = pending
                    .pings
                    .iter()
                    .filter(|(_, p)| p.peer == peer)
                    .map(|(t, _)| *t)
                    .collect();
                for t in failed {
                    if let Some(ping) = pending.pings.remove(&t) {
                        let _ = ping.done.send(Err(PeerError::Session {
                            peer,
                            reason: reason.clone(),
                        }));
                    }
                }
                let ev = PeerEvent::SessionFailed { peer, reason };
                if events.send(ev).await.is_err() {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}
