//! The hub's side of one relay connection, sans-IO: the message it opens with (a member's
//! certificate login, or a pairing guest's request to reach one issuer) and what each message
//! from the relay means.
//!
//! A transport (the hub's relay client, or `hub join` as a pairing guest) opens the WebSocket,
//! sends [`ClientSession::member`]'s or [`ClientSession::guest`]'s opening message, then hands
//! every binary message from the relay to [`ClientSession::handle_message`] and acts on the
//! [`ClientEvent`]s it appends. An error means the relay broke the protocol: close the socket
//! with [`ClientError::close_code`]. Sending is the transport's (it batches `Send` frames).

use rand_core::CryptoRngCore;

use crate::relay::close::CloseCode;
use crate::relay::frame::{
    frames, Extension, Frame, FrameError, FrameType, Hello, HubId, RoomStatus, PROTOCOL_VERSION,
};
use crate::trust::login::{Credentials, PAIRING_EXTENSION};
use crate::trust::rotation::{Successor, VerifiedSuccessor};
use crate::trust::{ClusterId, RevocationList, TrustError, VerifiedRevocations};

/// What a message from the relay means for the hub, in order. (Exhaustive: a new kind of event
/// comes with a new protocol version.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The relay admitted this hub; `online` are the other hubs (for a guest: its issuer).
    Welcome {
        /// The other hubs online, ascending.
        online: Vec<HubId>,
    },
    /// A payload from another hub.
    Message {
        /// The sender, as the relay admitted it.
        from: HubId,
        /// The payload.
        payload: Vec<u8>,
    },
    /// A hub came online (or reconnected).
    PeerJoined(HubId),
    /// A hub went offline.
    PeerLeft(HubId),
    /// A payload this hub sent to the hub named was dropped: it is not online.
    Undeliverable(HubId),
    /// The answer to a status request.
    Status(RoomStatus),
    /// The relay is going away; reconnect after this many milliseconds.
    Restarting {
        /// Suggested wait.
        after_ms: u64,
    },
    /// A revocation list signed by the cluster CA, newer than the one held: keep it.
    Revocations(VerifiedRevocations),
    /// The cluster CA handed the cluster to a new key (a verified successor document): move.
    Successor(Box<VerifiedSuccessor>),
    /// The relay dropped frames of this hub for a rate limit: send nothing for `retry_after_ms`,
    /// then slower (`relay::rate::Pacer::rate_limited`).
    RateLimited {
        /// Whose limit: this hub's own (it sends too much) or the receiver's (it is sent too
        /// much by everyone together).
        limited: HubId,
        /// How long to send nothing.
        retry_after_ms: u64,
        /// Frames dropped since the previous notice.
        dropped: u32,
    },
}

/// How the relay broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A malformed message.
    #[error("bad frame from relay: {0}")]
    Frame(#[from] FrameError),
    /// A `Welcome` of another protocol version.
    #[error("relay speaks protocol version {0}")]
    Version(u8),
    /// A revocation list not signed by this cluster's CA, or malformed.
    #[error("relay sent a bad revocation list: {0}")]
    Revocations(TrustError),
    /// A successor document not signed by this cluster's CA, or malformed.
    #[error("relay sent a bad successor document: {0}")]
    Successor(TrustError),
    /// A frame type the relay does not send.
    #[error("unexpected {0:?} frame from relay")]
    Unexpected(FrameType),
    /// A pairing guest got a payload from a hub other than its issuer.
    #[error("a pairing guest got a message from {0}, not its issuer")]
    NotIssuer(HubId),
}

impl ClientError {
    /// The close code the hub sends before it drops the socket.
    pub fn close_code(&self) -> CloseCode {
        CloseCode::ProtocolError
    }
}

/// One connection's protocol state. See the module docs for the calling pattern.
#[derive(Debug)]
pub struct ClientSession {
    cluster: ClusterId,
    /// For a pairing guest: the only hub it may hear from.
    issuer: Option<HubId>,
    welcomed: bool,
    restart_after_ms: Option<u64>,
    revocations: Option<VerifiedRevocations>,
}

impl ClientSession {
    /// A member's session, and its opening message: a `Hello` with a fresh login made at `now_ms`,
    /// then the newest revocation list this hub holds (the relay may have lost or never seen it).
    pub fn member(
        credentials: &Credentials,
        held: Option<VerifiedRevocations>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Self, Vec<u8>), FrameError> {
        let login = credentials.login(now_ms, rng);
        let mut opening = Frame::Hello(credentials.hello(&login)).to_message()?;
        if let Some(list) = &held {
            Frame::RevocationList(list.bytes()).encode(&mut opening)?;
        }
        let session = ClientSession {
            cluster: ClusterId::from_ca_key(&credentials.ca_key),
            issuer: None,
            welcomed: false,
            restart_after_ms: None,
            revocations: held,
        };
        Ok((session, opening))
    }

    /// A pairing guest's session, and its opening message: a `Hello` as `guest` (an id the
    /// joining hub chose) asking to reach `issuer`, the hub that issued its token.
    pub fn guest(
        cluster: ClusterId,
        guest: HubId,
        issuer: HubId,
    ) -> Result<(Self, Vec<u8>), FrameError> {
        let mut hello = Hello::new(guest);
        hello.extensions.push(Extension {
            kind: PAIRING_EXTENSION,
            data: issuer.as_bytes(),
        });
        let opening = Frame::Hello(hello).to_message()?;
        let session = ClientSession {
            cluster,
            issuer: Some(issuer),
            welcomed: false,
            restart_after_ms: None,
            revocations: None,
        };
        Ok((session, opening))
    }

    /// A binary message from the relay: appends what it means to `out`, in order. Events
    /// before a violation in the same message are kept.
    pub fn handle_message(
        &mut self,
        message: &[u8],
        out: &mut Vec<ClientEvent>,
    ) -> Result<(), ClientError> {
        for frame in frames(message) {
            let event = match frame? {
                Frame::Welcome { version, online } => {
                    if version != PROTOCOL_VERSION {
                        return Err(ClientError::Version(version));
                    }
                    self.welcomed = true;
                    ClientEvent::Welcome { online }
                }
                Frame::Recv { src, payload } => {
                    if self.issuer.is_some_and(|issuer| issuer != src) {
                        return Err(ClientError::NotIssuer(src));
                    }
                    ClientEvent::Message {
                        from: src,
                        payload: payload.to_vec(),
                    }
                }
                Frame::PeerJoined(hubs) => {
                    out.extend(hubs.into_iter().map(ClientEvent::PeerJoined));
                    continue;
                }
                Frame::PeerLeft(hubs) => {
                    out.extend(hubs.into_iter().map(ClientEvent::PeerLeft));
                    continue;
                }
                Frame::RateLimited {
                    limited,
                    retry_after_ms,
                    dropped,
                } => ClientEvent::RateLimited {
                    limited,
                    retry_after_ms: u64::from(retry_after_ms),
                    dropped,
                },
                Frame::Undeliverable(hub) => ClientEvent::Undeliverable(hub),
                Frame::Status(status) => ClientEvent::Status(status),
                Frame::Restarting { reconnect_after_ms } => {
                    let after_ms = u64::from(reconnect_after_ms);
                    self.restart_after_ms = Some(after_ms);
                    ClientEvent::Restarting { after_ms }
                }
                Frame::RevocationList(doc) => {
                    // Only a list signed by this cluster's CA and newer than the one held counts.
                    let list = RevocationList::verify(doc, &self.cluster)
                        .map_err(ClientError::Revocations)?;
                    match list.supersede(self.revocations.as_ref()) {
                        Ok(newer) => {
                            self.revocations = Some(newer.clone());
                            ClientEvent::Revocations(newer)
                        }
                        Err(_) => continue,
                    }
                }
                Frame::Successor(doc) => ClientEvent::Successor(Box::new(
                    Successor::verify(doc, &self.cluster).map_err(ClientError::Successor)?,
                )),
                other => return Err(ClientError::Unexpected(other.frame_type())),
            };
            out.push(event);
        }
        Ok(())
    }

    /// Whether the relay admitted this hub in this session.
    pub fn welcomed(&self) -> bool {
        self.welcomed
    }

    /// The delay the relay asked for with `Restarting`, if it did.
    pub fn restart_after_ms(&self) -> Option<u64> {
        self.restart_after_ms
    }

    /// The newest revocation list known to this session (held at the start, or received).
    pub fn revocations(&self) -> Option<&VerifiedRevocations> {
        self.revocations.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::cert::tests::{request, NOW};
    use crate::trust::{ClusterCa, Revocation};
    use ed25519_dalek::SigningKey;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn ca() -> ClusterCa {
        ClusterCa::from_secret(&[3; 32])
    }

    fn creds() -> Credentials {
        let identity = SigningKey::from_bytes(&[4; 32]);
        let mut req = request(4, &identity);
        req.hub_id = HubId([4; 16]);
        Credentials {
            ca_key: ca().public_key(),
            cert_der: ca().issue(&req, &mut StdRng::seed_from_u64(1)).unwrap(),
            hub_id: HubId([4; 16]),
            identity,
        }
    }

    fn list(version: u64, signer: &ClusterCa) -> Vec<u8> {
        RevocationList {
            version,
            issued_at_ms: NOW,
            entries: vec![Revocation {
                fingerprint: [1; 32],
                key_hash: [2; 32],
                revoked_at_ms: NOW,
                reason: "lost".into(),
            }],
        }
        .sign(signer)
        .unwrap()
    }

    #[test]
    fn a_member_opens_with_its_login_and_its_list_and_reads_the_relay() {
        let held = RevocationList::verify(&list(2, &ca()), &ca().cluster_id()).unwrap();
        let mut rng = StdRng::seed_from_u64(9);
        let (mut session, opening) =
            ClientSession::member(&creds(), Some(held), NOW, &mut rng).unwrap();
        let frames = crate::relay::frame::decode_message(&opening).unwrap();
        assert!(matches!(&frames[0], Frame::Hello(h) if h.hub == HubId([4; 16])));
        assert!(matches!(frames[1], Frame::RevocationList(_)));

        let mut message = Frame::Welcome {
            version: 1,
            online: vec![HubId([5; 16])],
        }
        .to_message()
        .unwrap();
        for frame in [
            Frame::Recv {
                src: HubId([5; 16]),
                payload: b"hi",
            },
            Frame::RevocationList(&list(1, &ca())),
            Frame::RevocationList(&list(3, &ca())),
            Frame::Restarting {
                reconnect_after_ms: 700,
            },
        ] {
            frame.encode(&mut message).unwrap();
        }
        let mut out = Vec::new();
        session.handle_message(&message, &mut out).unwrap();
        assert!(session.welcomed());
        assert_eq!(session.restart_after_ms(), Some(700));
        assert_eq!(session.revocations().map(|l| l.version()), Some(3));
        // The older list was not news.
        assert_eq!(out.len(), 4);
        assert!(matches!(&out[2], ClientEvent::Revocations(l) if l.version() == 3));

        // A list from another CA, a hub -> relay frame, another version: violations.
        let foreign = ClusterCa::from_secret(&[8; 32]);
        for bad in [
            Frame::RevocationList(&list(9, &foreign))
                .to_message()
                .unwrap(),
            Frame::StatusRequest.to_message().unwrap(),
            Frame::Welcome {
                version: 2,
                online: vec![],
            }
            .to_message()
            .unwrap(),
        ] {
            assert!(session.handle_message(&bad, &mut out).is_err());
        }
    }

    #[test]
    fn a_guest_hears_only_its_issuer() {
        let (issuer, guest) = (HubId([1; 16]), HubId([0xa0; 16]));
        let (mut session, opening) =
            ClientSession::guest(ca().cluster_id(), guest, issuer).unwrap();
        let frames = crate::relay::frame::decode_message(&opening).unwrap();
        assert!(matches!(&frames[0], Frame::Hello(h)
            if h.hub == guest && h.extensions[0].kind == PAIRING_EXTENSION
                && h.extensions[0].data == issuer.as_bytes()));
        let mut out = Vec::new();
        let from_issuer = Frame::Recv {
            src: issuer,
            payload: b"answer",
        };
        session
            .handle_message(&from_issuer.to_message().unwrap(), &mut out)
            .unwrap();
        assert_eq!(
            out,
            vec![ClientEvent::Message {
                from: issuer,
                payload: b"answer".to_vec()
            }]
        );
        let stranger = Frame::Recv {
            src: HubId([2; 16]),
            payload: b"x",
        };
        assert_eq!(
            session.handle_message(&stranger.to_message().unwrap(), &mut out),
            Err(ClientError::NotIssuer(HubId([2; 16])))
        );
    }
}
