//! Joining a cluster with a pairing token (`hub join`): the new hub's side of
//! `shared_proto::session::pairing`, over one guest connection to the relay.
//!
//! The hub connects to the token's relay as a pairing guest (a random guest id, `Hello`
//! extension 2 naming the issuer), sends its request once welcomed, and waits for the issuer's
//! answer. On success the caller records everything (`Home::complete_join`) and connects again as
//! a member; this module touches no file.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::OsRng;
use rand::RngCore;
use shared_proto::relay::client::{ClientEvent, ClientSession};
use shared_proto::session::pairing::{JoinRequest, Joined, Joiner, PairingError, PairingToken};
use shared_proto::{CloseCode, Frame, HubId};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::transport::relay::{connect_url, ws_config, RelayError};
use crate::unix_ms;

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The relay URL in the token.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// The WebSocket to the relay.
    #[error("relay connection: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The pairing exchange (refused, or an answer that does not check out).
    #[error(transparent)]
    Pairing(#[from] PairingError),
    /// The relay closed the guest connection.
    #[error("the relay closed the pairing connection: {reason} (close code {code})")]
    Closed {
        /// The code.
        code: u16,
        /// The reason.
        reason: String,
    },
    /// The issuer is not online.
    #[error("the issuing hub is not online at the relay: start `hub run` on it and try again")]
    IssuerOffline,
    /// A frame that does not belong.
    #[error("relay protocol: {0}")]
    Protocol(String),
    /// No answer in time.
    #[error("no answer from the issuing hub within {0:?}")]
    Timeout(Duration),
}

/// Joins the cluster of `token` with `request` (the new hub's name and keys): the pairing
/// exchange, within `limit`.
pub async fn join(
    token: &PairingToken,
    request: &JoinRequest<'_>,
    limit: Duration,
) -> Result<Joined, JoinError> {
    let (joiner, message) = Joiner::start(token, request, &mut OsRng)?;
    tokio::time::timeout(limit, exchange(token, joiner, message))
        .await
        .map_err(|_| JoinError::Timeout(limit))?
}

/// The guest connection: hello, request, answer.
async fn exchange(
    token: &PairingToken,
    joiner: Joiner,
    request: Vec<u8>,
) -> Result<Joined, JoinError> {
    let mut guest = [0u8; 16];
    OsRng.fill_bytes(&mut guest);
    let url = connect_url(&token.relay_url, token.cluster.as_str(), &HubId(guest))?;
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(url.as_str(), Some(ws_config()), true).await?;
    let protocol = |e: &dyn std::fmt::Display| JoinError::Protocol(e.to_string());
    let (mut session, hello) =
        ClientSession::guest(token.cluster.clone(), HubId(guest), token.issuer)
            .map_err(|e| protocol(&e))?;
    ws.send(Message::Binary(hello.into())).await?;
    let mut joiner = Some(joiner);
    while let Some(message) = ws.next().await {
        match message? {
            Message::Binary(bytes) => {
                let mut events = Vec::new();
                session
                    .handle_message(&bytes, &mut events)
                    .map_err(|e| protocol(&e))?;
                for event in events {
                    match event {
                        ClientEvent::Welcome { .. } => {
                            let send = Frame::Send {
                                dst: token.issuer,
                                payload: &request,
                            };
                            let send = send.to_message().map_err(|e| protocol(&e))?;
                            ws.send(Message::Binary(send.into())).await?;
                        }
                        // The session lets a guest hear from its issuer only.
                        ClientEvent::Message { payload, .. } => {
                            let Some(joiner) = joiner.take() else {
                                return Err(JoinError::Protocol("a second answer".into()));
                            };
                            let joined = joiner.finish(&payload, unix_ms());
                            let _ = ws.close(None).await;
                            return Ok(joined?);
                        }
                        ClientEvent::Undeliverable(_) => return Err(JoinError::IssuerOffline),
                        _ => {}
                    }
                }
            }
            Message::Close(frame) => {
                let (code, reason) = frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                });
                if CloseCode::from_code(code) == Some(CloseCode::IssuerOffline) {
                    return Err(JoinError::IssuerOffline);
                }
                return Err(JoinError::Closed { code, reason });
            }
            _ => {}
        }
    }
    Err(JoinError::Closed {
        code: u16::from(WsCloseCode::Abnormal),
        reason: "the connection ended".into(),
    })
}
