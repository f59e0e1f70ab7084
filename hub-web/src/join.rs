//! Joining a cluster from the browser: the new hub's side of `shared_proto::session::pairing`,
//! over one guest connection to the relay, exactly as `hub join` does it. The keys are made here
//! from the browser's secure randomness (`crypto.getRandomValues`); what the issuer answers is
//! verified against the token's cluster before anything is kept.

use std::collections::VecDeque;

use ed25519_dalek::SigningKey;
use rand_core::{OsRng, RngCore};
use shared_proto::relay::client::{ClientEvent, ClientSession};
use shared_proto::relay::path::{connect_path, connect_query};
use shared_proto::session::pairing::{JoinRequest, Joiner, PairingToken};
use shared_proto::{CloseCode, Frame, HubId};

use crate::kept::{Kept, KEPT_FORMAT};
use crate::WebError;

/// A pairing in progress. See the module docs.
#[derive(Debug)]
pub struct Joining {
    token: PairingToken,
    guest: HubId,
    session: ClientSession,
    joiner: Option<Joiner>,
    request: Vec<u8>,
    identity: SigningKey,
    noise_secret: [u8; 32],
    out: VecDeque<Vec<u8>>,
}

impl Joining {
    /// Starts joining with `token` (as `hub invite` printed it) under `name`: new keys, and the
    /// pairing request for the issuer.
    pub fn start(token: &str, name: &str) -> Result<Self, WebError> {
        let token = PairingToken::parse(token)?;
        let identity = SigningKey::generate(&mut OsRng);
        let mut noise_secret = [0u8; 32];
        OsRng.fill_bytes(&mut noise_secret);
        let request = JoinRequest {
            name,
            identity: &identity,
            noise_secret: &noise_secret,
        };
        let (joiner, message) = Joiner::start(&token, &request, &mut OsRng)?;
        let mut guest = [0u8; 16];
        OsRng.fill_bytes(&mut guest);
        let guest = HubId(guest);
        let (session, hello) = ClientSession::guest(token.cluster.clone(), guest, token.issuer)
            .map_err(|e| WebError::Relay(e.to_string()))?;
        Ok(Joining {
            token,
            guest,
            session,
            joiner: Some(joiner),
            request: message,
            identity,
            noise_secret,
            out: VecDeque::from([hello]),
        })
    }

    /// The relay's base URL (the page makes the WebSocket URL of it with [`Joining::path`] and
    /// [`Joining::query`]).
    pub fn relay_url(&self) -> &str {
        &self.token.relay_url
    }

    /// The path of the cluster's room, after the relay URL's own path.
    pub fn path(&self) -> String {
        connect_path(self.token.cluster.as_str())
    }

    /// The connect query (the guest id).
    pub fn query(&self) -> String {
        connect_query(&self.guest)
    }

    /// The next message to send on the WebSocket.
    pub fn poll_send(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// A binary message from the relay: the kept state once the issuer's answer checks out.
    pub fn handle_message(
        &mut self,
        message: &[u8],
        now_ms: u64,
    ) -> Result<Option<Kept>, WebError> {
        let mut events = Vec::new();
        self.session
            .handle_message(message, &mut events)
            .map_err(|e| WebError::Relay(e.to_string()))?;
        for event in events {
            match event {
                ClientEvent::Welcome { .. } => {
                    let send = Frame::Send {
                        dst: self.token.issuer,
                        payload: &self.request,
                    };
                    let send = send
                        .to_message()
                        .map_err(|e| WebError::Relay(e.to_string()))?;
                    self.out.push_back(send);
                }
                ClientEvent::Message { payload, .. } => {
                    let joiner = self
                        .joiner
                        .take()
                        .ok_or_else(|| WebError::Relay("a second answer".into()))?;
                    let joined = joiner.finish(&payload, now_ms)?;
                    let mut audit_key = [0u8; 32];
                    OsRng.fill_bytes(&mut audit_key);
                    return Ok(Some(Kept {
                        format: KEPT_FORMAT,
                        relay_url: self.token.relay_url.clone(),
                        identity_secret: hex::encode(self.identity.to_bytes()),
                        noise_secret: hex::encode(self.noise_secret),
                        ca_key: hex::encode(joined.ca_key.as_bytes()),
                        certificate: hex::encode(joined.certificate.der()),
                        manifest: hex::encode(joined.manifest.bytes()),
                        revocations: joined.revocations.map(|r| hex::encode(r.bytes())),
                        sharing: "local".into(),
                        audit_key: hex::encode(audit_key),
                        audit_seq: 0,
                        audit_mac: hex::encode([0u8; 32]),
                        revoked: None,
                    }));
                }
                ClientEvent::Undeliverable(_) => return Err(WebError::IssuerOffline),
                _ => {}
            }
        }
        Ok(None)
    }

    /// The relay closed the connection before the answer came.
    pub fn handle_closed(&self, code: u16, reason: &str) -> WebError {
        if CloseCode::from_code(code) == Some(CloseCode::IssuerOffline) {
            return WebError::IssuerOffline;
        }
        WebError::Relay(format!(
            "the relay closed the pairing connection: {reason} (close code {code})"
        ))
    }
}
