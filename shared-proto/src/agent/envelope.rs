//! The delegation envelope: what a hub signs when it forwards an agent's call to another hub.
//!
//! ```text
//! magic "HRDE" | version: u8 = 1 | origin: [16] | target: [16] | issued_at_ms: u64 |
//! expires_at_ms: u64 | nonce: [16] | arguments_sha256: [32] | principal: str8 | app: str8 |
//! tool: str8 | scopes: u8 count, each str8 | signature: [64]
//! ```
//!
//! Integers are big-endian; `str8` is a `u8` length and that many bytes of UTF-8. The signature
//! is Ed25519 by the origin hub's identity key (its certificate's subject key) over
//! `"hub-relay delegation v1\0"` followed by every byte before the signature. The target checks,
//! in this order, and refuses with the first [`CallErrorCode`] that applies: the layout
//! ([`CallErrorCode::BadEnvelope`]), that the origin is the session's peer and the signature is
//! its key's ([`CallErrorCode::WrongSigner`]), that it is the target
//! ([`CallErrorCode::WrongTarget`]), the time window ([`CallErrorCode::Expired`]: `issued_at <=
//! now + 30 s skew`, `now < expires_at`, `expires_at - issued_at <= 60 s`), that app and tool are
//! those of the call, and that the arguments hash to `arguments_sha256`
//! ([`CallErrorCode::ArgumentsMismatch`]). The nonce is the caller's to remember
//! ([`CallErrorCode::Replayed`]): see `hub-client`'s store.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use super::CallErrorCode;
use crate::codec::{put_short_str, Reader};
use crate::HubId;

const MAGIC: &[u8; 4] = b"HRDE";

/// Envelope version 1: no scopes mean an unrestricted principal (what hubs of session version
/// 1 sign, and the only version they read).
pub const ENVELOPE_V1: u8 = 1;
/// Envelope version 2: scopes are explicit (an unrestricted principal is [`ALL_SCOPES`]; no
/// scopes allow nothing). Signed for peers of session version 2, and for listings.
pub const ENVELOPE_V2: u8 = 2;
const DOMAIN: &[u8] = b"hub-relay delegation v1\0";

/// Longest an envelope may live: `expires_at_ms - issued_at_ms`.
pub const MAX_LIFETIME_MS: u64 = 60_000;
/// How far in the future `issued_at_ms` may be (clock skew between hubs).
pub const MAX_SKEW_MS: u64 = 30_000;
/// Most scopes in one envelope.
pub const MAX_SCOPES: usize = 32;
/// Length of the signature at the end.
pub const SIGNATURE_LEN: usize = 64;

/// The scope that allows every app and tool (what an unrestricted principal's envelope carries).
pub const ALL_SCOPES: &str = "*";

/// The app and tool a listing envelope names: none. A listing envelope (docs/PROTOCOL.md
/// section 13) signs the principal and scopes of an apps request; its `arguments_sha256` is the
/// hash of no bytes.
pub const LISTING: &str = "";

/// What an envelope says. Strings are at most 255 bytes each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    /// [`ENVELOPE_V1`] or [`ENVELOPE_V2`]: what no scopes mean.
    pub version: u8,
    /// The hub that forwards the call (and signs).
    pub origin: HubId,
    /// The hub that is to run it.
    pub target: HubId,
    /// When it was signed (Unix ms).
    pub issued_at_ms: u64,
    /// When it stops being valid (Unix ms), at most [`MAX_LIFETIME_MS`] after `issued_at_ms`.
    pub expires_at_ms: u64,
    /// Random, used once.
    pub nonce: [u8; 16],
    /// SHA-256 of the call's arguments, as the call message carries them.
    pub arguments_sha256: [u8; 32],
    /// The operator the call is made for (an API token's name, or the local user).
    pub principal: String,
    /// The app called.
    pub app: String,
    /// The tool called.
    pub tool: String,
    /// What the principal was granted (`app:NAME` or `app:NAME/TOOL`); empty: no restriction.
    pub scopes: Vec<String>,
}

/// The SHA-256 of call arguments, as [`Delegation::arguments_sha256`] binds them.
pub fn arguments_hash(arguments: &[u8]) -> [u8; 32] {
    Sha256::digest(arguments).into()
}

impl Delegation {
    /// The envelope's bytes, signed with `key`. Fails if a string is over 255 bytes or there are
    /// more than [`MAX_SCOPES`] scopes.
    pub fn sign(&self, key: &SigningKey) -> Result<Vec<u8>, CallErrorCode> {
        let mut out = self.body()?;
        let signature = key.sign(&signed_message(&out));
        out.extend_from_slice(&signature.to_bytes());
        Ok(out)
    }

    fn body(&self) -> Result<Vec<u8>, CallErrorCode> {
        let too_long = |_| CallErrorCode::BadEnvelope;
        if self.scopes.len() > MAX_SCOPES {
            return Err(CallErrorCode::BadEnvelope);
        }
        if !matches!(self.version, ENVELOPE_V1 | ENVELOPE_V2) {
            return Err(CallErrorCode::BadEnvelope);
        }
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(MAGIC);
        out.push(self.version);
        out.extend_from_slice(&self.origin.0);
        out.extend_from_slice(&self.target.0);
        out.extend_from_slice(&self.issued_at_ms.to_be_bytes());
        out.extend_from_slice(&self.expires_at_ms.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.arguments_sha256);
        put_short_str(&mut out, &self.principal).map_err(too_long)?;
        put_short_str(&mut out, &self.app).map_err(too_long)?;
        put_short_str(&mut out, &self.tool).map_err(too_long)?;
        out.push(self.scopes.len() as u8);
        for scope in &self.scopes {
            put_short_str(&mut out, scope).map_err(too_long)?;
        }
        Ok(out)
    }

    /// Parses an envelope without checking its signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, CallErrorCode> {
        SignedDelegation::decode(bytes).map(|s| s.delegation)
    }

    /// Whether a token's scopes allow `tool` of `app`: no scopes allow everything (a token
    /// without scopes is unrestricted); `*` allows everything; `app:NAME` every tool of that app;
    /// `app:NAME/TOOL` that one tool.
    pub fn scopes_allow(scopes: &[String], app: &str, tool: &str) -> bool {
        scopes.is_empty() || Self::listed(scopes, app, Some(tool))
    }

    /// Whether a token's scopes allow some tool of `app` (what a listing may show of it).
    pub fn scopes_allow_app(scopes: &[String], app: &str) -> bool {
        scopes.is_empty() || Self::listed(scopes, app, None)
    }

    /// Whether this envelope's scopes allow `tool` of `app` (or, with no tool, some tool of it):
    /// each scope as for a token; no scopes allow nothing in an envelope of version 2 (where an
    /// unrestricted principal is [`ALL_SCOPES`]) and everything in one of version 1.
    pub fn allows(&self, app: &str, tool: Option<&str>) -> bool {
        if self.scopes.is_empty() {
            return self.version == ENVELOPE_V1;
        }
        Self::listed(&self.scopes, app, tool)
    }

    fn listed(scopes: &[String], app: &str, tool: Option<&str>) -> bool {
        scopes.iter().any(|s| {
            s == ALL_SCOPES
                || parse_scope(s)
                    .is_some_and(|(a, t)| a == app && (t.is_none() || tool.is_none() || t == tool))
        })
    }
}

/// An envelope as received, decoded once: what it says, and its signature, checked by
/// [`SignedDelegation::check`]. The encoding is canonical (decoding and encoding again gives the
/// same bytes), so the signature is checked over the decoded envelope's encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDelegation {
    /// What the envelope says (not to be trusted before [`SignedDelegation::check`]).
    pub delegation: Delegation,
    signature: [u8; SIGNATURE_LEN],
}

impl SignedDelegation {
    /// Parses an envelope ([`CallErrorCode::BadEnvelope`] if it does not).
    pub fn decode(bytes: &[u8]) -> Result<Self, CallErrorCode> {
        let bad = |_| CallErrorCode::BadEnvelope;
        let mut r = Reader::new(bytes);
        if r.take(4).map_err(bad)? != MAGIC {
            return Err(CallErrorCode::BadEnvelope);
        }
        let version = r.u8().map_err(bad)?;
        if !matches!(version, ENVELOPE_V1 | ENVELOPE_V2) {
            return Err(CallErrorCode::BadEnvelope);
        }
        let origin = r.hub().map_err(bad)?;
        let target = r.hub().map_err(bad)?;
        let issued_at_ms = r.u64().map_err(bad)?;
        let expires_at_ms = r.u64().map_err(bad)?;
        let nonce = r.array().map_err(bad)?;
        let arguments_sha256 = r.array().map_err(bad)?;
        let principal = r.short_str().map_err(bad)?.to_owned();
        let app = r.short_str().map_err(bad)?.to_owned();
        let tool = r.short_str().map_err(bad)?.to_owned();
        let count = usize::from(r.u8().map_err(bad)?);
        if count > MAX_SCOPES {
            return Err(CallErrorCode::BadEnvelope);
        }
        let scopes = (0..count)
            .map(|_| r.short_str().map(str::to_owned).map_err(bad))
            .collect::<Result<_, _>>()?;
        let signature: [u8; SIGNATURE_LEN] = r.array().map_err(bad)?;
        if !r.is_empty() {
            return Err(CallErrorCode::BadEnvelope);
        }
        Ok(SignedDelegation {
            delegation: Delegation {
                version,
                origin,
                target,
                issued_at_ms,
                expires_at_ms,
                nonce,
                arguments_sha256,
                principal,
                app,
                tool,
                scopes,
            },
            signature,
        })
    }

    /// Checks the envelope, received from `peer` (the session's authenticated peer, whose
    /// identity key is `peer_key`) by hub `me` at `now_ms`, for a call of `tool` of `app` with
    /// `arguments`, in the order the module docs give. Replay (the nonce) is the caller's to
    /// check.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        peer: HubId,
        peer_key: &VerifyingKey,
        me: HubId,
        now_ms: u64,
        app: &str,
        tool: &str,
        arguments: &[u8],
    ) -> Result<(), CallErrorCode> {
        let envelope = &self.delegation;
        let body = envelope.body()?;
        let signature = Signature::from_bytes(&self.signature);
        if envelope.origin != peer || peer_key.verify(&signed_message(&body), &signature).is_err() {
            return Err(CallErrorCode::WrongSigner);
        }
        if envelope.target != me {
            return Err(CallErrorCode::WrongTarget);
        }
        let lifetime = envelope.expires_at_ms.checked_sub(envelope.issued_at_ms);
        if envelope.issued_at_ms > now_ms.saturating_add(MAX_SKEW_MS)
            || now_ms >= envelope.expires_at_ms
            || lifetime.is_none_or(|l| l > MAX_LIFETIME_MS)
        {
            return Err(CallErrorCode::Expired);
        }
        if envelope.app != app
            || envelope.tool != tool
            || envelope.arguments_sha256 != arguments_hash(arguments)
        {
            return Err(CallErrorCode::ArgumentsMismatch);
        }
        Ok(())
    }
}

/// A scope's app and, for `app:NAME/TOOL`, its tool; `None` if it is neither form (with
/// non-empty parts).
pub fn parse_scope(scope: &str) -> Option<(&str, Option<&str>)> {
    let rest = scope.strip_prefix("app:")?;
    match rest.split_once('/') {
        Some((app, tool)) if !app.is_empty() && !tool.is_empty() && !tool.contains('/') => {
            Some((app, Some(tool)))
        }
        None if !rest.is_empty() => Some((rest, None)),
        _ => None,
    }
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + body.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(body);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    const ORIGIN: HubId = HubId([1; 16]);
    const TARGET: HubId = HubId([2; 16]);
    const NOW: u64 = 1_800_000_000_000;
    const ARGS: &[u8] = br#"{"message":"hi"}"#;

    fn envelope() -> Delegation {
        Delegation {
            version: ENVELOPE_V1,
            origin: ORIGIN,
            target: TARGET,
            issued_at_ms: NOW,
            expires_at_ms: NOW + 30_000,
            nonce: [7; 16],
            arguments_sha256: arguments_hash(ARGS),
            principal: "agent".into(),
            app: "everything".into(),
            tool: "echo".into(),
            scopes: vec!["app:everything".into()],
        }
    }

    fn check(bytes: &[u8], key: &VerifyingKey, now: u64) -> Result<Delegation, CallErrorCode> {
        let signed = SignedDelegation::decode(bytes)?;
        signed.check(ORIGIN, key, TARGET, now, "everything", "echo", ARGS)?;
        Ok(signed.delegation)
    }

    #[test]
    fn a_signed_envelope_verifies_and_round_trips() {
        let key = SigningKey::generate(&mut OsRng);
        let bytes = envelope().sign(&key).unwrap();
        assert_eq!(check(&bytes, &key.verifying_key(), NOW + 1), Ok(envelope()));
        // Canonical: what is decoded encodes to the bytes that were signed, which is what
        // `SignedDelegation::check` verifies the signature over.
        let decoded = SignedDelegation::decode(&bytes).unwrap();
        assert_eq!(
            decoded.delegation.body().unwrap(),
            &bytes[..bytes.len() - 64]
        );
    }

    /// Byte layout, as PROTOCOL.md documents it.
    #[test]
    fn layout_snapshot() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let bytes = envelope().sign(&key).unwrap();
        let body = hex::encode(&bytes[..bytes.len() - 64]);
        let want = concat!(
            "4852444501",
            "01010101010101010101010101010101",
            "02020202020202020202020202020202",
            "000001a3185c5000",
            "000001a3185cc530",
            "07070707070707070707070707070707",
        );
        assert!(body.starts_with(want), "{body}");
        let tail = &body[want.len() + 64..];
        assert_eq!(
            tail,
            concat!(
                "056167656e74",
                "0a65766572797468696e67",
                "046563686f",
                "01",
                "0e6170703a65766572797468696e67"
            )
        );
    }

    #[test]
    fn a_forged_or_misdirected_envelope_is_refused_each_with_its_code() {
        let key = SigningKey::generate(&mut OsRng);
        let stranger = SigningKey::generate(&mut OsRng);
        let good = envelope().sign(&key).unwrap();
        let vk = key.verifying_key();

        // Signed by a key that is not the peer's.
        let forged = envelope().sign(&stranger).unwrap();
        assert_eq!(check(&forged, &vk, NOW), Err(CallErrorCode::WrongSigner));
        // A byte changed after signing.
        let mut tampered = good.clone();
        tampered[60] ^= 1;
        assert_eq!(check(&tampered, &vk, NOW), Err(CallErrorCode::WrongSigner));
        // Names another origin than the session's peer.
        let other_origin = Delegation {
            origin: HubId([3; 16]),
            ..envelope()
        }
        .sign(&key)
        .unwrap();
        assert_eq!(
            check(&other_origin, &vk, NOW),
            Err(CallErrorCode::WrongSigner)
        );
        // For another hub.
        let elsewhere = Delegation {
            target: HubId([4; 16]),
            ..envelope()
        }
        .sign(&key)
        .unwrap();
        assert_eq!(check(&elsewhere, &vk, NOW), Err(CallErrorCode::WrongTarget));
        // Expired, from the future, or living too long.
        assert_eq!(check(&good, &vk, NOW + 30_000), Err(CallErrorCode::Expired));
        let future = Delegation {
            issued_at_ms: NOW + 40_000,
            expires_at_ms: NOW + 90_000,
            ..envelope()
        };
        assert_eq!(
            check(&future.sign(&key).unwrap(), &vk, NOW),
            Err(CallErrorCode::Expired)
        );
        let long = Delegation {
            expires_at_ms: NOW + 60_001,
            ..envelope()
        };
        assert_eq!(
            check(&long.sign(&key).unwrap(), &vk, NOW),
            Err(CallErrorCode::Expired)
        );
        // For other arguments, tool or app.
        let verify = |tool: &str, args: &[u8]| {
            SignedDelegation::decode(&good)?.check(
                ORIGIN,
                &vk,
                TARGET,
                NOW,
                "everything",
                tool,
                args,
            )
        };
        assert_eq!(verify("echo", b"{}"), Err(CallErrorCode::ArgumentsMismatch));
        assert_eq!(verify("add", ARGS), Err(CallErrorCode::ArgumentsMismatch));
        // Not an envelope.
        assert_eq!(
            check(&good[..good.len() - 1], &vk, NOW),
            Err(CallErrorCode::BadEnvelope)
        );
        assert_eq!(check(b"HRDE", &vk, NOW), Err(CallErrorCode::BadEnvelope));
    }

    #[test]
    fn scopes_name_apps_or_single_tools() {
        let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(Delegation::scopes_allow(&[], "fs", "read_file"));
        assert!(Delegation::scopes_allow(&s(&["app:fs"]), "fs", "read_file"));
        assert!(Delegation::scopes_allow(
            &s(&["app:fs/read_file"]),
            "fs",
            "read_file"
        ));
        assert!(!Delegation::scopes_allow(
            &s(&["app:fs/read_file"]),
            "fs",
            "write_file"
        ));
        assert!(!Delegation::scopes_allow(
            &s(&["app:notes"]),
            "fs",
            "read_file"
        ));
        assert!(!Delegation::scopes_allow(&s(&["fs"]), "fs", "read_file"));
        assert!(Delegation::scopes_allow_app(
            &s(&["app:fs/read_file"]),
            "fs"
        ));
        assert!(!Delegation::scopes_allow_app(&s(&["app:notes"]), "fs"));
        for bad in ["app:", "app:fs/", "app:/t", "app:fs/a/b", "fs"] {
            assert_eq!(parse_scope(bad), None, "{bad}");
        }
        assert!(Delegation::scopes_allow(&s(&["*"]), "fs", "read_file"));
    }

    /// In an envelope of version 2, no scopes allow nothing (an unrestricted principal is sent
    /// as `*`); in one of version 1 (hubs of session version 1), they allow everything. The
    /// version is signed.
    #[test]
    fn an_envelope_without_scopes_allows_nothing_unless_version_1() {
        let with = |version, scopes: &[&str]| Delegation {
            version,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ..envelope()
        };
        assert!(!with(ENVELOPE_V2, &[]).allows("everything", Some("echo")));
        assert!(with(ENVELOPE_V1, &[]).allows("everything", Some("echo")));
        assert!(with(ENVELOPE_V2, &["*"]).allows("anything", Some("at_all")));
        let echo = with(ENVELOPE_V2, &["app:everything/echo"]);
        assert!(echo.allows("everything", Some("echo")));
        assert!(!echo.allows("everything", Some("add")));
        // A listing (no tool) sees an app one of its tools is granted of.
        assert!(echo.allows("everything", None));
        assert!(!with(ENVELOPE_V2, &["app:notes"]).allows("everything", None));
        // Both versions sign and read back; no other.
        let key = SigningKey::from_bytes(&[9; 32]);
        for version in [ENVELOPE_V1, ENVELOPE_V2] {
            let d = with(version, &[]);
            let bytes = d.sign(&key).unwrap();
            assert_eq!(bytes[4], version);
            assert_eq!(Delegation::decode(&bytes), Ok(d));
        }
        assert_eq!(with(3, &[]).sign(&key), Err(CallErrorCode::BadEnvelope));
        let mut v3 = with(ENVELOPE_V2, &[]).sign(&key).unwrap();
        v3[4] = 3;
        assert_eq!(Delegation::decode(&v3), Err(CallErrorCode::BadEnvelope));
    }
}
