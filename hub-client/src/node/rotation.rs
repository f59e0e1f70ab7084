//! Rotating the cluster CA key (docs/PROTOCOL.md section 9, "Rotation of the CA key"): the
//! founder's side (a new key, a certificate under it for every member it knows a certificate
//! of, the new cluster's manifest and list, all in the old CA's successor document) and every
//! hub's move to the new cluster.
//!
//! | file | what | mode |
//! |---|---|---|
//! | `rotation.key` | the new CA secret, while a rotation is prepared but not done | 0600 |
//! | `rotation.successor` | the successor document of that rotation | 0644 |
//!
//! A rotation prepared once is the same rotation when `hub cluster rotate` runs again (after the
//! relay could not be reached, or a crash): the relay keeps the first successor document it is
//! given, so a second, different one would leave the cluster's members following a key the
//! founder no longer holds.

use rand::rngs::OsRng;
use shared_proto::trust::renewal::renewed;
use shared_proto::trust::rotation::{Successor, VerifiedSuccessor};
use shared_proto::trust::{
    ClusterCa, Manifest, ManifestMember, PeerCertificate, RevocationList, VerifiedPeer,
};
use shared_proto::HubId;
use zeroize::Zeroizing;

use super::audit::{entry, record, AuditKind, Decision};
use super::home::{Home, HomeError};
use super::store::{Document, Store, MANIFEST, REVOCATIONS, SUCCESSOR};
use crate::unix_ms;

const PENDING_KEY: &str = "rotation.key";
const PENDING_SUCCESSOR: &str = "rotation.successor";

/// A rotation the founder prepared: the signed successor document, and who it moves.
#[derive(Debug)]
pub struct Rotation {
    /// The old CA's successor document.
    pub successor: VerifiedSuccessor,
    /// The members it carries a certificate for (this hub included).
    pub moved: Vec<(HubId, String)>,
    /// Active peers it could not renew (no certificate of theirs is known here): they pair again.
    pub left: Vec<(HubId, String)>,
}

impl Home {
    /// Founder: the rotation to a new CA key, prepared now or earlier (then the same one). The
    /// new key and the document are kept in `rotation.key` and `rotation.successor` until
    /// [`Home::finish_rotation`]; nothing else changes. `grace_ms` is how long the old room
    /// hands the document out.
    pub fn prepare_rotation(&self, grace_ms: u64) -> Result<Rotation, HomeError> {
        let old = self.ca()?;
        let store = self.store()?;
        let successor = match self.read(PENDING_SUCCESSOR) {
            Ok(bytes) => Successor::verify(&bytes, &old.cluster_id())?,
            Err(_) => {
                let new = ClusterCa::generate(&mut OsRng);
                let bytes = self.successor_document(&old, &new, &store, grace_ms)?;
                let secret = Zeroizing::new(new.secret().unwrap_or_default());
                self.write(PENDING_KEY, secret.as_slice(), true)?;
                self.write(PENDING_SUCCESSOR, &bytes, false)?;
                Successor::verify(&bytes, &old.cluster_id())?
            }
        };
        let listed: Vec<HubId> = successor
            .manifest()
            .manifest()
            .members
            .iter()
            .map(|m| m.hub_id)
            .collect();
        let me = self.certificate_held()?;
        let mut moved = vec![(me.hub_id(), me.name().to_owned())];
        let mut left = Vec::new();
        for peer in store.active_peers()? {
            if listed.contains(&peer.id) {
                moved.push((peer.id, peer.name));
            } else {
                left.push((peer.id, peer.name));
            }
        }
        Ok(Rotation {
            successor,
            moved,
            left,
        })
    }

    /// The successor document moving this cluster from `old` to `new`: a certificate from `new`
    /// for this hub and every active peer whose certificate the store keeps (same hub, name,
    /// keys, terms as the store holds them, a full term from now), the manifest of those members
    /// (epoch + 1) and the revocation list (version + 1), both signed by `new`.
    fn successor_document(
        &self,
        old: &ClusterCa,
        new: &ClusterCa,
        store: &Store,
        grace_ms: u64,
    ) -> Result<Vec<u8>, HomeError> {
        let now = unix_ms();
        let ca = old.public_key();
        // Dates are not checked: a member whose certificate ended moves too.
        let held = |der: &[u8]| -> Result<VerifiedPeer, HomeError> {
            let cert = PeerCertificate::from_der(der)?;
            let within = cert.not_before_ms();
            Ok(cert.verify(&ca, within, None)?)
        };
        let mut current = vec![(self.certificate_held()?, None)];
        for peer in store.active_peers()? {
            let Some(der) = store.peer_certificate(peer.id)? else {
                continue;
            };
            match held(&der) {
                Ok(cert) if cert.hub_id() == peer.id => {
                    current.push((cert, Some((peer.trust, peer.roles))));
                }
                _ => tracing::warn!(peer = %peer.id, "its kept certificate does not verify"),
            }
        }
        let mut certificates = Vec::with_capacity(current.len());
        let mut members = Vec::with_capacity(current.len());
        for (cert, terms) in current {
            let der = new.issue(&renewed(&cert, terms, now), &mut OsRng)?;
            let issued = PeerCertificate::from_der(&der)?.verify(&new.public_key(), now, None)?;
            members.push(ManifestMember {
                hub_id: issued.hub_id(),
                fingerprint: issued.fingerprint(),
                trust: issued.trust(),
                roles: issued.roles().to_vec(),
            });
            certificates.push(der);
        }
        let epoch = store.document(MANIFEST)?.map_or(0, |d| d.serial);
        let manifest = Manifest {
            epoch: epoch + 1,
            issued_at_ms: now,
            members,
        }
        .sign(new)?;
        let revocations = match self.held_revocations(store)? {
            Some(list) => Some(
                RevocationList {
                    version: list.version() + 1,
                    issued_at_ms: now,
                    entries: list.list().entries.clone(),
                }
                .sign(new)?,
            ),
            None => None,
        };
        Ok(Successor {
            new_ca_key: new.public_key(),
            grace_until_ms: now.saturating_add(grace_ms),
            manifest,
            revocations,
            certificates,
        }
        .sign(old, now)?)
    }

    /// Founder: once the relay took the successor document, moves this hub to the new cluster
    /// and makes the new key the CA key (`ca.key` replaced; the old one is gone).
    pub fn finish_rotation(&self, rotation: &Rotation) -> Result<VerifiedPeer, HomeError> {
        let moved = self.follow(&rotation.successor)?;
        let new = self.ca_in(PENDING_KEY)?;
        if new.public_key() != *rotation.successor.new_ca_key() {
            return Err(HomeError::Corrupt {
                path: self.path(PENDING_KEY),
                what: "not the key the successor document names".into(),
            });
        }
        self.rename(PENDING_KEY, "ca.key")?;
        let _ = std::fs::remove_file(self.path(PENDING_SUCCESSOR));
        Ok(moved)
    }

    /// Finishes a move a crash interrupted: the store keeps a successor document of this hub's
    /// cluster (its files were not replaced yet), or a rotation's new key is the CA key `ca.pub`
    /// names but was not put in place. Whether there was one.
    pub fn resume_move(&self) -> Result<bool, HomeError> {
        let cluster = self.cluster_id()?;
        if let Ok(new) = self.ca_in(PENDING_KEY) {
            if cluster.names(&new.public_key()) {
                self.rename(PENDING_KEY, "ca.key")?;
                let _ = std::fs::remove_file(self.path(PENDING_SUCCESSOR));
                return Ok(true);
            }
        }
        let Some(doc) = self.store()?.document(SUCCESSOR)? else {
            return Ok(false);
        };
        match Successor::verify(&doc.body, &cluster) {
            Ok(successor) => self.follow(&successor).map(|_| true),
            Err(_) => Ok(false),
        }
    }

    /// Moves this hub to the cluster of `successor` (verified for this hub's cluster): its
    /// certificate from the new CA, the new cluster's manifest and list, and the document itself
    /// are kept in one transaction, then `hub.der` and `ca.pub` replaced, in that order (a move
    /// cut short between the two is finished by following again: `hub.der` is then the new
    /// CA's already). Refused if the document carries no certificate for this hub, or its grace
    /// period ended.
    pub fn follow(&self, successor: &VerifiedSuccessor) -> Result<VerifiedPeer, HomeError> {
        let new = match self.certificate_held() {
            Ok(current) => successor.certificate_for(&current, unix_ms())?,
            Err(held) => {
                let der = self.read("hub.der")?;
                let cert = PeerCertificate::from_der(&der)?;
                let within = cert.not_before_ms();
                cert.verify(successor.new_ca_key(), within, None)
                    .map_err(|_| held)?
            }
        };
        let store = self.store()?;
        store.in_transaction(|store| {
            let manifest = successor.manifest();
            store.replace_document(
                MANIFEST,
                Some(&Document {
                    serial: manifest.manifest().epoch,
                    body: manifest.bytes().to_vec(),
                }),
            )?;
            let list = successor.revocations().map(|l| Document {
                serial: l.version(),
                body: l.bytes().to_vec(),
            });
            store.replace_document(REVOCATIONS, list.as_ref())?;
            store.replace_document(
                SUCCESSOR,
                Some(&Document {
                    serial: 1,
                    body: successor.bytes().to_vec(),
                }),
            )?;
            Ok::<_, HomeError>(())
        })?;
        self.write("hub.der", new.der(), false)?;
        self.write("ca.pub", successor.new_ca_key().as_bytes(), false)?;
        let why = format!(
            "moved from cluster {} to {} (a new CA key)",
            successor.old_cluster(),
            successor.new_cluster()
        );
        record(
            self,
            &store,
            entry(AuditKind::ClusterMove, None, Decision::Ok, &why),
        );
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::home::NewHub;
    use shared_proto::trust::TrustLevel;

    fn new_hub(name: &str, roles: &[&str]) -> NewHub {
        NewHub {
            name: name.into(),
            trust: TrustLevel::Full,
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            validity_ms: 30 * 86_400_000,
        }
    }

    /// The founder rotates; a hub whose move a crash cut short (the store kept the document,
    /// `hub.der` was replaced, `ca.pub` not yet) finishes it at start; the founder's new key is
    /// its CA key once the rotation is done, and a rotation prepared twice is the same one.
    #[test]
    fn a_move_cut_short_is_finished_and_the_founder_holds_the_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let desk = Home::new(dir.path().join("desk"));
        let old = desk
            .create_cluster("ws://127.0.0.1:1", &new_hub("desk", &["founder"]))
            .unwrap();
        let laptop = Home::new(dir.path().join("laptop"));
        desk.add_hub(&laptop, &new_hub("laptop", &["laptop"]))
            .unwrap();
        let rotation = desk.prepare_rotation(86_400_000).unwrap();
        assert_eq!(rotation.moved.len(), 2);
        assert!(rotation.left.is_empty());
        let again = desk.prepare_rotation(86_400_000).unwrap();
        assert_eq!(again.successor.bytes(), rotation.successor.bytes());
        let successor = &rotation.successor;
        let new = successor.new_cluster();
        assert_ne!(new, old);

        // The laptop's move, cut short after `hub.der`.
        let current = laptop.certificate_held().unwrap();
        let cert = successor.certificate_for(&current, unix_ms()).unwrap();
        laptop
            .store()
            .unwrap()
            .replace_document(
                SUCCESSOR,
                Some(&Document {
                    serial: 1,
                    body: successor.bytes().to_vec(),
                }),
            )
            .unwrap();
        laptop.write("hub.der", cert.der(), false).unwrap();
        assert!(laptop.certificate().is_err(), "a home half moved");
        assert!(laptop.resume_move().unwrap());
        assert_eq!(laptop.cluster_id().unwrap(), new);
        assert_eq!(
            laptop.certificate().unwrap().fingerprint(),
            cert.fingerprint()
        );
        assert_eq!(laptop.manifest().unwrap().unwrap().manifest().epoch, 3);
        assert!(!laptop.resume_move().unwrap(), "nothing left to finish");

        // The founder finishes: its CA key is the new one, the pending files are gone.
        let me = desk.finish_rotation(&rotation).unwrap();
        assert_eq!(desk.cluster_id().unwrap(), new);
        assert_eq!(desk.ca().unwrap().cluster_id(), new);
        assert_eq!(me.hub_id(), desk.certificate().unwrap().hub_id());
        assert!(!desk.path(PENDING_KEY).exists());
        assert!(!desk.path(PENDING_SUCCESSOR).exists());
        assert!(!desk.resume_move().unwrap());
    }
}
