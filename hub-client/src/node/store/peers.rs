//! This hub's identity and its peers. Peers are soft-deleted: `revoked_at` is kept for audit.

use rusqlite::{params, OptionalExtension};
use shared_proto::trust::TrustLevel;
use shared_proto::HubId;

use super::{join_roles, split_roles, Document, Store, StoreError};

/// A peer as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// Its hub id.
    pub id: HubId,
    /// Its name.
    pub name: String,
    /// Where it is reached (relay URL).
    pub endpoint: String,
    /// Its identity public key (hex).
    pub public_key: String,
    /// Its trust level.
    pub trust: TrustLevel,
    /// Its roles.
    pub roles: Vec<String>,
    /// When it was paired.
    pub paired_at: u64,
    /// When it was revoked (kept for audit).
    pub revoked_at: Option<u64>,
    /// When it was suspended, if it is.
    pub suspended_at: Option<u64>,
    /// When it was last seen online.
    pub last_seen_at: Option<u64>,
}

/// What pairing records on the issuer, in the redeeming transaction.
#[derive(Debug, Clone)]
pub struct Admission {
    /// The new peer.
    pub peer: PeerRecord,
    /// The manifest that lists it.
    pub manifest: Document,
}

/// This hub's identity, as recorded in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Hub id.
    pub id: HubId,
    /// Name.
    pub name: String,
    /// Ed25519 identity key (hex).
    pub identity_public_key: String,
    /// X25519 Noise key (hex).
    pub noise_public_key: String,
    /// When it joined or founded the cluster (Unix ms).
    pub created_at: u64,
}

impl Store {
    /// Records this hub's identity (replacing an earlier one).
    pub fn set_instance(&self, instance: &Instance) -> Result<(), StoreError> {
        self.conn.execute("DELETE FROM instance", [])?;
        self.conn.execute(
            "INSERT INTO instance (id, name, identity_public_key, noise_public_key, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                instance.id.to_string(),
                instance.name,
                instance.identity_public_key,
                instance.noise_public_key,
                instance.created_at as i64
            ],
        )?;
        Ok(())
    }

    /// Suspends (`Some(now)`) or resumes (`None`) a peer that is not revoked; returns whether it
    /// exists.
    pub fn set_suspended(&self, id: HubId, at_ms: Option<u64>) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "UPDATE federation_peers SET suspended_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
            params![at_ms.map(|t| t as i64), id.to_string()],
        )? == 1)
    }

    /// Records that a peer was online at `now_ms`.
    pub fn touch_peer(&self, id: HubId, now_ms: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE federation_peers SET last_seen_at = ?1 WHERE id = ?2",
            params![now_ms as i64, id.to_string()],
        )?;
        Ok(())
    }

    /// Adds or replaces a peer (pairing records both sides).
    pub fn upsert_peer(&self, peer: &PeerRecord) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO federation_peers
               (id, name, endpoint, public_key, trust_level, roles, paired_at, revoked_at, suspended_at, last_seen_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT(id) DO UPDATE SET name = excluded.name, endpoint = excluded.endpoint,
               public_key = excluded.public_key, trust_level = excluded.trust_level,
               roles = excluded.roles, paired_at = excluded.paired_at,
               revoked_at = excluded.revoked_at, suspended_at = excluded.suspended_at,
               last_seen_at = excluded.last_seen_at",
            params![
                peer.id.to_string(),
                peer.name,
                peer.endpoint,
                peer.public_key,
                peer.trust.as_str(),
                join_roles(&peer.roles),
                peer.paired_at as i64,
                peer.revoked_at.map(|t| t as i64),
                peer.suspended_at.map(|t| t as i64),
                peer.last_seen_at.map(|t| t as i64),
            ],
        )?;
        Ok(())
    }

    /// Keeps `der` as the newest certificate of peer `id` (one per peer).
    pub fn keep_peer_certificate(&self, id: HubId, der: &[u8]) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO peer_certificates (id, der) VALUES (?1, ?2)
             ON CONFLICT(id) DO UPDATE SET der = excluded.der",
            params![id.to_string(), der],
        )?;
        Ok(())
    }

    /// The newest certificate kept of peer `id`.
    pub fn peer_certificate(&self, id: HubId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT der FROM peer_certificates WHERE id = ?1",
                params![id.to_string()],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Sets an active peer's trust level and roles (what its next certificate says); whether it
    /// is an active peer.
    pub fn set_peer_terms(
        &self,
        id: HubId,
        trust: TrustLevel,
        roles: &[String],
    ) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "UPDATE federation_peers SET trust_level = ?1, roles = ?2
             WHERE id = ?3 AND revoked_at IS NULL",
            params![trust.as_str(), join_roles(roles), id.to_string()],
        )? == 1)
    }

    /// Soft-deletes a peer: `revoked_at` is set and kept for audit. Returns whether it existed
    /// and was not revoked already.
    pub fn revoke_peer(&self, id: HubId, now_ms: u64) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "UPDATE federation_peers SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
            params![now_ms as i64, id.to_string()],
        )? == 1)
    }

    /// One peer, revoked or not.
    pub fn peer(&self, id: HubId) -> Result<Option<PeerRecord>, StoreError> {
        self.conn
            .query_row(
                "SELECT id, name, endpoint, public_key, trust_level, roles, paired_at, revoked_at,
                        suspended_at, last_seen_at
                 FROM federation_peers WHERE id = ?1",
                params![id.to_string()],
                row_to_peer,
            )
            .optional()?
            .transpose()
    }

    /// The ids of the peers revoked (their records kept for audit).
    pub fn revoked_peer_ids(&self) -> Result<Vec<HubId>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM federation_peers WHERE revoked_at IS NOT NULL")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|id| id?.parse().map_err(|_| StoreError::Corrupt("peer id")))
            .collect()
    }

    /// Peers not revoked, most recently seen (then paired) first.
    pub fn active_peers(&self) -> Result<Vec<PeerRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, name, endpoint, public_key, trust_level, roles, paired_at, revoked_at,
                    suspended_at, last_seen_at
             FROM federation_peers WHERE revoked_at IS NULL
             ORDER BY COALESCE(last_seen_at, 0) DESC, paired_at DESC",
        )?;
        let rows = stmt.query_map([], row_to_peer)?;
        rows.map(|r| r.map_err(StoreError::from).and_then(|p| p))
            .collect()
    }
}

type PeerRow = Result<PeerRecord, StoreError>;

fn row_to_peer(r: &rusqlite::Row<'_>) -> rusqlite::Result<PeerRow> {
    let opt =
        |i| -> rusqlite::Result<Option<u64>> { Ok(r.get::<_, Option<i64>>(i)?.map(|t| t as u64)) };
    let id: String = r.get(0)?;
    let trust: String = r.get(4)?;
    let roles: String = r.get(5)?;
    let record = (|| {
        Ok(PeerRecord {
            id: id.parse().map_err(|_| StoreError::Corrupt("peer id"))?,
            name: r.get(1)?,
            endpoint: r.get(2)?,
            public_key: r.get(3)?,
            trust: trust
                .parse()
                .map_err(|_| StoreError::Corrupt("trust level"))?,
            roles: split_roles(&roles),
            paired_at: r.get::<_, i64>(6)? as u64,
            revoked_at: opt(7)?,
            suspended_at: opt(8)?,
            last_seen_at: opt(9)?,
        })
    })();
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::store::testing::NOW;

    #[test]
    fn peers_are_soft_deleted_and_listed_most_recent_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hub.db")).unwrap();
        let peer = |b: u8, seen: Option<u64>| PeerRecord {
            id: HubId([b; 16]),
            name: format!("hub {b}"),
            endpoint: "wss://relay".into(),
            public_key: "ab".repeat(32),
            trust: TrustLevel::ReadOnly,
            roles: vec!["phone".into()],
            paired_at: NOW + u64::from(b),
            revoked_at: None,
            suspended_at: None,
            last_seen_at: seen,
        };
        store.upsert_peer(&peer(1, Some(NOW + 10))).unwrap();
        store.upsert_peer(&peer(2, None)).unwrap();
        store.upsert_peer(&peer(3, Some(NOW + 20))).unwrap();
        let ids: Vec<u8> = store
            .active_peers()
            .unwrap()
            .iter()
            .map(|p| p.id.0[0])
            .collect();
        assert_eq!(ids, vec![3, 1, 2]);
        assert!(store.revoke_peer(HubId([3; 16]), NOW + 30).unwrap());
        assert!(!store.revoke_peer(HubId([3; 16]), NOW + 31).unwrap());
        let ids: Vec<u8> = store
            .active_peers()
            .unwrap()
            .iter()
            .map(|p| p.id.0[0])
            .collect();
        assert_eq!(ids, vec![1, 2]);
        // Kept for audit.
        assert_eq!(
            store.peer(HubId([3; 16])).unwrap().unwrap().revoked_at,
            Some(NOW + 30)
        );
        assert_eq!(
            store.peer(HubId([3; 16])).unwrap().unwrap().roles,
            vec!["phone"]
        );
    }
}
