//! The one registry of peer payloads: the first byte of what a relay `Send`/`Recv` (or a LAN link)
//! carries from one hub to another (docs/PROTOCOL.md sections 10 and 11).
//!
//! ```text
//! 0x01 init             session handshake, message 1           (session::peer)
//! 0x02 response         session handshake, message 2           (session::peer)
//! 0x03 data             a transport message of a session       (session::peer)
//! 0x04 cert?            asks the peer for its certificate      (session::peer)
//! 0x05 cert             the sender's certificate (DER)         (session::peer)
//! 0x10 pair request     a pairing guest to the token's issuer  (session::pairing)
//! 0x11 pair answer      the issuer's answer                    (session::pairing)
//! 0x12 pair refused     an unauthenticated refusal             (session::pairing)
//! ```
//!
//! Inside a session, what `data` carries has a registry of its own ([`crate::msg`]).

/// The first byte of a peer payload. Values not listed here are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum PayloadKind {
    /// Noise IK message 1: `sender_index: u32 | message`.
    Init = 0x01,
    /// Noise IK message 2: `sender_index: u32 | receiver_index: u32 | message`.
    Response = 0x02,
    /// A transport message: `receiver_index: u32 | counter: u64 | ciphertext`.
    Data = 0x03,
    /// Asks the peer for its certificate (empty body).
    CertRequest = 0x04,
    /// The sender's certificate, DER.
    Cert = 0x05,
    /// A pairing request (guest to issuer).
    PairRequest = 0x10,
    /// The issuer's answer to a pairing request.
    PairAnswer = 0x11,
    /// An unauthenticated pairing refusal.
    PairRefused = 0x12,
}

impl PayloadKind {
    /// Every registered kind, in registry order.
    pub const ALL: [PayloadKind; 8] = [
        Self::Init,
        Self::Response,
        Self::Data,
        Self::CertRequest,
        Self::Cert,
        Self::PairRequest,
        Self::PairAnswer,
        Self::PairRefused,
    ];

    /// The kind with this byte, if registered.
    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u8 == value)
    }

    /// The kind of a payload (its first byte), if it has one that is registered.
    pub fn of(payload: &[u8]) -> Option<Self> {
        payload.first().and_then(|b| Self::from_u8(*b))
    }

    /// Whether payloads of this kind belong to pairing (they travel outside any session).
    pub fn is_pairing(self) -> bool {
        matches!(
            self,
            Self::PairRequest | Self::PairAnswer | Self::PairRefused
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire values are part of the protocol: a change here is a wire change.
    #[test]
    fn the_registry_holds_its_wire_values() {
        let bytes: Vec<u8> = PayloadKind::ALL.iter().map(|k| *k as u8).collect();
        assert_eq!(bytes, [0x01, 0x02, 0x03, 0x04, 0x05, 0x10, 0x11, 0x12]);
        for k in PayloadKind::ALL {
            assert_eq!(PayloadKind::from_u8(k as u8), Some(k));
        }
        assert_eq!(PayloadKind::from_u8(0), None);
        assert_eq!(PayloadKind::from_u8(0x06), None);
        assert_eq!(PayloadKind::of(&[]), None);
        let pairing: Vec<_> = PayloadKind::ALL
            .into_iter()
            .filter(|k| k.is_pairing())
            .collect();
        assert_eq!(
            pairing,
            [
                PayloadKind::PairRequest,
                PayloadKind::PairAnswer,
                PayloadKind::PairRefused
            ]
        );
    }
}
