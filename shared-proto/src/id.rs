//! A hub's id: what names a hub in frames, certificates and every message between hubs.

use std::fmt;
use std::str::FromStr;

/// Length of a [`HubId`] on the wire.
pub const HUB_ID_LEN: usize = 16;

/// A hub's identity inside a cluster: 16 opaque bytes, written as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HubId(pub [u8; HUB_ID_LEN]);

impl HubId {
    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; HUB_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for HubId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; HUB_ID_LEN * 2];
        // Cannot fail: the buffer is exactly twice the input.
        if hex::encode_to_slice(self.0, &mut buf).is_err() {
            return Err(fmt::Error);
        }
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for HubId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HubId({self})")
    }
}

/// The text is not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a hub id is 32 hex digits")]
pub struct ParseHubIdError;

impl FromStr for HubId {
    type Err = ParseHubIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut id = [0u8; HUB_ID_LEN];
        hex::decode_to_slice(s, &mut id).map_err(|_| ParseHubIdError)?;
        Ok(Self(id))
    }
}
