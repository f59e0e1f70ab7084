//! The signed documents a hub holds: the cluster manifest and the revocation list. Each only moves
//! forward (a higher epoch or version replaces the one held).

use rusqlite::{params, OptionalExtension};
use shared_proto::trust::{VerifiedManifest, VerifiedRevocations};

use super::{Store, StoreError};

/// Kind of the stored manifest document.
pub const MANIFEST: &str = "manifest";
/// Kind of the stored revocation list document.
pub const REVOCATIONS: &str = "revocations";
/// Kind of the stored successor document (the CA key rotation this hub followed).
pub const SUCCESSOR: &str = "successor";

/// A signed document as stored: its serial (manifest epoch, list version) and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Epoch or version.
    pub serial: u64,
    /// The signed bytes.
    pub body: Vec<u8>,
}

impl Store {
    /// A stored signed document (`manifest`, `revocations`).
    pub fn document(&self, kind: &str) -> Result<Option<Document>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT serial, body FROM documents WHERE kind = ?1",
                params![kind],
                |r| {
                    Ok(Document {
                        serial: r.get::<_, i64>(0)? as u64,
                        body: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// Stores `doc` as `kind` unless one with a serial at least as high is held; returns whether
    /// it was stored. The caller has verified it.
    pub fn put_document(&self, kind: &str, doc: &Document) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "INSERT INTO documents (kind, serial, body) VALUES (?1, ?2, ?3)
             ON CONFLICT(kind) DO UPDATE SET serial = excluded.serial, body = excluded.body
             WHERE excluded.serial > documents.serial",
            params![kind, doc.serial as i64, doc.body],
        )? == 1)
    }

    /// Replaces (or, with `None`, removes) the document of `kind` whatever its serial: when the
    /// hub moves to a new cluster, whose documents number on from the old ones' or not.
    pub fn replace_document(&self, kind: &str, doc: Option<&Document>) -> Result<(), StoreError> {
        match doc {
            Some(doc) => self.conn.execute(
                "INSERT INTO documents (kind, serial, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT(kind) DO UPDATE SET serial = excluded.serial, body = excluded.body",
                params![kind, doc.serial as i64, doc.body],
            )?,
            None => self
                .conn
                .execute("DELETE FROM documents WHERE kind = ?1", params![kind])?,
        };
        Ok(())
    }

    /// Stores a document this hub has just signed, which must be newer than the one held
    /// ([`StoreError::NotKept`] otherwise: a signed document is never dropped silently).
    pub fn put_signed(&self, kind: &'static str, doc: &Document) -> Result<(), StoreError> {
        if self.put_document(kind, doc)? {
            Ok(())
        } else {
            Err(StoreError::NotKept {
                kind,
                serial: doc.serial,
            })
        }
    }

    /// Keeps a verified revocation list unless one at least as new is held; returns whether it
    /// was kept.
    pub fn keep_revocations(&self, list: &VerifiedRevocations) -> Result<bool, StoreError> {
        let doc = Document {
            serial: list.version(),
            body: list.bytes().to_vec(),
        };
        self.put_document(REVOCATIONS, &doc)
    }

    /// Keeps a verified manifest unless one of at least its epoch is held; returns whether it
    /// was kept.
    pub fn keep_manifest(&self, manifest: &VerifiedManifest) -> Result<bool, StoreError> {
        let doc = Document {
            serial: manifest.manifest().epoch,
            body: manifest.bytes().to_vec(),
        };
        self.put_document(MANIFEST, &doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_only_move_forward() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hub.db")).unwrap();
        let doc = |serial, body: &[u8]| Document {
            serial,
            body: body.to_vec(),
        };
        assert!(store.put_document(MANIFEST, &doc(2, b"two")).unwrap());
        assert!(!store.put_document(MANIFEST, &doc(1, b"one")).unwrap());
        assert!(!store.put_document(MANIFEST, &doc(2, b"again")).unwrap());
        assert_eq!(store.document(MANIFEST).unwrap(), Some(doc(2, b"two")));
        assert!(store.put_document(MANIFEST, &doc(3, b"three")).unwrap());
        assert_eq!(store.document(REVOCATIONS).unwrap(), None);
    }
}
