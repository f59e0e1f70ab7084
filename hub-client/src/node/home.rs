//! The hub's data directory (`--home`, `HUB_HOME`, default `~/.hub`).
//!
//! | file | what | mode |
//! |---|---|---|
//! | `hub.toml` | relay URL and hub name | 0644 |
//! | `identity.key` | Ed25519 identity secret (32 bytes) then X25519 Noise secret (32 bytes) | 0600 |
//! | `hub.der` | the hub's certificate, signed by the cluster CA | 0644 |
//! | `ca.pub` | the cluster CA public key (32 bytes): it names the cluster | 0644 |
//! | `ca.key` | the cluster CA secret key, on the founder only | 0600 |
//! | `rotation.key` | a CA key rotation's new key until it is published (`node::rotation`) | 0600 |
//! | `hub.db` | the SQLite store (`store`): identity record, peers, pairing and API token hashes, the manifest and the newest revocation list | 0600 |
//!
//! Every file is written to a temporary name and renamed into place, so a crash leaves either
//! the old file or the new one. Secret files are created with mode 0600 from the start.
//! `hub.der` is written last when a hub is created or joins: until it exists the directory
//! holds no hub, whatever else a crash left behind, and creating or joining may start over.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use shared_proto::session::noise::LocalIdentity;
use shared_proto::session::pairing::{Joined, PairingRequest, PairingToken, SECRET_LEN};
use shared_proto::trust::login::Credentials;
use shared_proto::trust::renewal::{renewed, validity};
use shared_proto::trust::{
    CertificateRequest, ClusterCa, ClusterId, PeerCertificate, Revocation, RevocationList,
    TrustLevel, VerifiedPeer, VerifiedRevocations,
};
use shared_proto::trust::{Manifest, ManifestMember, VerifiedManifest};
use shared_proto::HubId;

use crate::node::store::{
    Admission, Document, Instance, PeerRecord, RedeemError, Store, StoreError, TokenTerms,
    MANIFEST, REVOCATIONS,
};
use crate::transport::relay::RelayConfig;
use crate::unix_ms;

/// Errors of the data directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HomeError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What happened.
        source: std::io::Error,
    },
    /// The directory already holds a hub.
    #[error("{0} already holds a hub; use another --home")]
    AlreadyInitialized(PathBuf),
    /// The directory holds no hub yet.
    #[error("{0} holds no hub: run `hub cluster create` (founder) or `hub join TOKEN` (with a token from `hub invite`)")]
    NotInitialized(PathBuf),
    /// This hub does not hold the cluster CA key.
    #[error("this hub does not hold the cluster CA key (only the founder does)")]
    NotFounder,
    /// This hub neither holds the CA key nor an admin certificate.
    #[error("this hub is not an admin: only the founder and the hubs it made admins (`hub peers set-trust ID full --roles admin`) pair, renew and revoke")]
    NotAdmin,
    /// The hub is revoked here.
    #[error("hub {0} is revoked")]
    Revoked(HubId),
    /// No such peer (or revoked).
    #[error("no active peer {0}")]
    UnknownPeer(HubId),
    /// A file's content is not what it should be.
    #[error("{path}: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A certificate or list was refused.
    #[error(transparent)]
    Trust(#[from] shared_proto::trust::TrustError),
    /// A renewed certificate was refused.
    #[error(transparent)]
    Renewal(#[from] shared_proto::trust::renewal::RenewalError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Pairing failed.
    #[error(transparent)]
    Pairing(#[from] shared_proto::session::pairing::PairingError),
}

/// `hub.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HubConfig {
    /// The relay's base URL.
    pub relay_url: String,
    /// The hub's name.
    pub name: String,
}

/// Validity, names and roles of a new hub certificate.
#[derive(Debug, Clone)]
pub struct NewHub {
    /// The hub's name.
    pub name: String,
    /// Its trust level.
    pub trust: TrustLevel,
    /// Its roles.
    pub roles: Vec<String>,
    /// How long the certificate is valid (ms; it also starts a little in the past:
    /// `trust::renewal::validity`).
    pub validity_ms: u64,
}

/// A hub's data directory.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// The directory at `dir` (not created until something is written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Home { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Renames `from` to `to` in the directory (replacing `to` at once).
    pub(crate) fn rename(&self, from: &str, to: &str) -> Result<(), HomeError> {
        std::fs::rename(self.path(from), self.path(to)).map_err(|source| HomeError::Io {
            path: self.path(to),
            source,
        })
    }

    pub(crate) fn read(&self, name: &str) -> Result<Vec<u8>, HomeError> {
        let path = self.path(name);
        std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound && name != "ca.key" {
                HomeError::NotInitialized(self.dir.clone())
            } else {
                HomeError::Io { path, source: e }
            }
        })
    }

    /// Creates the directory if missing, readable by the owner only (0700): it holds keys and
    /// token hashes. An existing directory keeps its mode.
    fn create_dir(&self) -> Result<(), HomeError> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(&self.dir).map_err(|source| HomeError::Io {
            path: self.dir.clone(),
            source,
        })
    }

    /// Reads a key file into memory that is zeroed when dropped.
    pub(crate) fn read_secret(&self, name: &str) -> Result<Zeroizing<Vec<u8>>, HomeError> {
        self.read(name).map(Zeroizing::new)
    }

    /// Writes `bytes` to `name` atomically; `secret` files get mode 0600 from creation.
    pub(crate) fn write(&self, name: &str, bytes: &[u8], secret: bool) -> Result<(), HomeError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| HomeError::Io { path, source }
        };
        self.create_dir()?;
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if secret { 0o600 } else { 0o644 });
        }
        #[cfg(not(unix))]
        let _ = secret;
        let mut f = opts.open(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Writes a file readable by the owner only (atomically).
    pub fn write_secret(&self, name: &str, bytes: &[u8]) -> Result<(), HomeError> {
        self.write(name, bytes, true)
    }

    /// Writes a file (atomically).
    pub fn write_public(&self, name: &str, bytes: &[u8]) -> Result<(), HomeError> {
        self.write(name, bytes, false)
    }

    /// The key of this hub's audit chain (`audit.key`, mode 0600, never in the database),
    /// created on first use. Two processes creating it at once end with the same key (the file
    /// is published with a hard link, which never replaces one already there).
    pub fn audit_key(&self) -> Result<Zeroizing<[u8; 32]>, HomeError> {
        const NAME: &str = "audit.key";
        let read = |home: &Home| -> Result<Zeroizing<[u8; 32]>, HomeError> {
            let bytes = home.read_secret(NAME)?;
            let key: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| HomeError::Corrupt {
                    path: home.path(NAME),
                    what: "not a 32-byte key".into(),
                })?;
            Ok(Zeroizing::new(key))
        };
        if self.path(NAME).exists() {
            return read(self);
        }
        let mut key = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, key.as_mut_slice());
        let tmp = format!("audit.key.{}", std::process::id());
        self.write_secret(&tmp, key.as_slice())?;
        let linked = std::fs::hard_link(self.path(&tmp), self.path(NAME));
        let _ = std::fs::remove_file(self.path(&tmp));
        match linked {
            Ok(()) => Ok(key),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(self),
            Err(source) => Err(HomeError::Io {
                path: self.path(NAME),
                source,
            }),
        }
    }

    /// Whether the directory holds a hub.
    pub fn is_initialized(&self) -> bool {
        self.path("hub.der").exists()
    }

    /// Founder: mints the cluster CA and this hub's identity and certificate (trust `full`,
    /// role `founder`). Returns the cluster id.
    pub fn create_cluster(&self, relay_url: &str, hub: &NewHub) -> Result<ClusterId, HomeError> {
        if self.is_initialized() {
            return Err(HomeError::AlreadyInitialized(self.dir.clone()));
        }
        let ca = ClusterCa::generate(&mut OsRng);
        let secret = Zeroizing::new(ca.secret().unwrap_or_default());
        self.write("ca.key", secret.as_slice(), true)?;
        enroll(&ca, self, relay_url, hub, None)?;
        Ok(ca.cluster_id())
    }

    /// Admin: mints a complete data directory for a new hub at `out` (offline enrollment: copy
    /// it to the device). Returns the new hub's certificate.
    pub fn add_hub(&self, out: &Home, hub: &NewHub) -> Result<VerifiedPeer, HomeError> {
        if out.is_initialized() {
            return Err(HomeError::AlreadyInitialized(out.dir.clone()));
        }
        let ca = self.signer()?;
        let relay = self.config()?.relay_url;
        let peer = enroll(&ca, out, &relay, hub, Some(self))?;
        if let Some(list) = self.revocations() {
            let list = RevocationList::verify(&list, &ca.cluster_id())?;
            out.keep_revocations(&list)?;
        }
        Ok(peer)
    }

    /// Whether this hub holds the cluster CA key (the founder), without reading the key.
    pub fn is_founder(&self) -> bool {
        self.path("ca.key").exists()
    }

    /// Whether this hub signs for the cluster: the founder, or a hub holding an admin certificate
    /// (its dates not checked).
    pub fn is_admin(&self) -> bool {
        self.is_founder() || self.certificate_held().is_ok_and(|c| c.is_admin())
    }

    /// Who signs for the cluster here: the root CA on the founder; on an admin, this hub's
    /// identity key under its admin certificate (valid now); [`HomeError::NotAdmin`] elsewhere.
    pub fn signer(&self) -> Result<ClusterCa, HomeError> {
        if self.is_founder() {
            return self.ca();
        }
        let cert = self.certificate()?;
        if !cert.is_admin() {
            return Err(HomeError::NotAdmin);
        }
        Ok(ClusterCa::admin(
            self.identity_key()?,
            cert,
            self.ca_key()?,
        )?)
    }

    /// This hub's Ed25519 identity key.
    fn identity_key(&self) -> Result<SigningKey, HomeError> {
        let keys = self.read_secret("identity.key")?;
        let secret: Zeroizing<[u8; 32]> = keys
            .get(..32)
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .map(Zeroizing::new)
            .ok_or_else(|| HomeError::Corrupt {
                path: self.path("identity.key"),
                what: "not a 64-byte key file".into(),
            })?;
        Ok(SigningKey::from_bytes(&secret))
    }

    /// The cluster CA (founder only).
    pub fn ca(&self) -> Result<ClusterCa, HomeError> {
        match self.ca_in("ca.key") {
            Err(HomeError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(HomeError::NotFounder)
            }
            ca => ca,
        }
    }

    /// The CA whose 32-byte secret is the file `name` (`ca.key`, or a rotation's new key).
    pub(crate) fn ca_in(&self, name: &str) -> Result<ClusterCa, HomeError> {
        let bytes = self.read_secret(name)?;
        let secret = <[u8; 32]>::try_from(bytes.as_slice())
            .map(Zeroizing::new)
            .map_err(|_| HomeError::Corrupt {
                path: self.path(name),
                what: "not a 32-byte key".into(),
            })?;
        Ok(ClusterCa::from_secret(&secret))
    }

    /// `hub.toml`.
    pub fn config(&self) -> Result<HubConfig, HomeError> {
        let text = String::from_utf8(self.read("hub.toml")?).map_err(|_| HomeError::Corrupt {
            path: self.path("hub.toml"),
            what: "not UTF-8".into(),
        })?;
        toml::from_str(&text).map_err(|e| HomeError::Corrupt {
            path: self.path("hub.toml"),
            what: e.to_string(),
        })
    }

    /// The CA public key.
    pub fn ca_key(&self) -> Result<VerifyingKey, HomeError> {
        let bytes = self.read("ca.pub")?;
        let corrupt = || HomeError::Corrupt {
            path: self.path("ca.pub"),
            what: "not an Ed25519 public key".into(),
        };
        let arr: [u8; 32] = bytes.try_into().map_err(|_| corrupt())?;
        VerifyingKey::from_bytes(&arr).map_err(|_| corrupt())
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> Result<ClusterId, HomeError> {
        Ok(ClusterId::from_ca_key(&self.ca_key()?))
    }

    /// This hub's certificate, verified against the CA now (revocation not considered).
    pub fn certificate(&self) -> Result<VerifiedPeer, HomeError> {
        let der = self.read("hub.der")?;
        Ok(PeerCertificate::from_der(&der)?.verify(&self.ca_key()?, unix_ms(), None)?)
    }

    /// This hub's credentials for the relay.
    pub fn credentials(&self) -> Result<Arc<Credentials>, HomeError> {
        let identity = self.identity_key()?;
        let cert_der = self.read("hub.der")?;
        let cert = PeerCertificate::from_der(&cert_der)?;
        if cert.hub_id() == HubId([0; 16]) {
            return Err(HomeError::Corrupt {
                path: self.path("hub.der"),
                what: "no hub id".into(),
            });
        }
        Ok(Arc::new(Credentials {
            ca_key: self.ca_key()?,
            hub_id: cert.hub_id(),
            cert_der,
            identity,
        }))
    }

    /// The relay connection settings of this hub: its relay (or `relay_url` instead), its
    /// credentials, and the newest revocation list it holds, passed on after its `Hello`.
    pub fn relay_config(&self, relay_url: Option<&str>) -> Result<RelayConfig, HomeError> {
        let url = match relay_url {
            Some(url) => url.to_owned(),
            None => self.config()?.relay_url,
        };
        let mut config = RelayConfig::new(url, self.credentials()?);
        config.revocations = self.revocations();
        Ok(config)
    }

    /// This hub's Noise identity: its X25519 static secret and certificate.
    pub fn noise_identity(&self) -> Result<LocalIdentity, HomeError> {
        let keys = self.read_secret("identity.key")?;
        let static_secret: [u8; 32] = keys
            .get(32..64)
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| HomeError::Corrupt {
                path: self.path("identity.key"),
                what: "not a 64-byte key file".into(),
            })?;
        Ok(LocalIdentity {
            cluster: self.cluster_id()?,
            ca_key: self.ca_key()?,
            static_secret: static_secret.into(),
            cert_der: self.read("hub.der")?,
        })
    }

    /// The store of a directory that holds a hub; [`HomeError::NotInitialized`] (which says how
    /// to create or join one) otherwise, without creating anything.
    pub fn hub_store(&self) -> Result<Store, HomeError> {
        if !self.is_initialized() {
            return Err(HomeError::NotInitialized(self.dir.clone()));
        }
        self.store()
    }

    /// The store (`hub.db`), created and migrated if needed.
    pub fn store(&self) -> Result<Store, HomeError> {
        self.create_dir()?;
        let path = self.path("hub.db");
        #[cfg(unix)]
        if !path.exists() {
            // Created 0600 before SQLite opens it: token hashes are no one else's business.
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|source| HomeError::Io {
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(Store::open(&path)?)
    }

    /// The newest revocation list this hub holds (signed bytes).
    pub fn revocations(&self) -> Option<Vec<u8>> {
        let doc = self.store().ok()?.document(REVOCATIONS).ok()??;
        Some(doc.body)
    }

    pub(crate) fn held_revocations(
        &self,
        store: &Store,
    ) -> Result<Option<VerifiedRevocations>, HomeError> {
        let cluster = self.cluster_id()?;
        Ok(store
            .document(REVOCATIONS)?
            .and_then(|d| RevocationList::verify(&d.body, &cluster).ok()))
    }

    /// Keeps `list` if it is newer than the one held; returns whether it was.
    pub fn keep_revocations(&self, list: &VerifiedRevocations) -> Result<bool, HomeError> {
        Ok(self.store()?.keep_revocations(list)?)
    }

    /// Admin: signs a new revocation list (the held one plus `entry`, version + 1), stores it
    /// and returns it, to be published through the relay. With `peer`, that peer is marked
    /// revoked in the same transaction.
    pub fn revoke(&self, entry: Revocation) -> Result<VerifiedRevocations, HomeError> {
        self.sign_revocation(entry, None)
    }

    /// Admin: revokes a peer by its identity key (so every certificate for that key, not only
    /// the last one seen), marking it revoked (a soft delete, kept for audit) in the same
    /// transaction as the new list, which is returned to be published through the relay.
    pub fn revoke_peer(
        &self,
        peer: &PeerRecord,
        reason: String,
    ) -> Result<VerifiedRevocations, HomeError> {
        if !self.is_founder() && shared_proto::trust::has_root_only_role(&peer.roles) {
            return Err(shared_proto::trust::TrustError::NotAdmin(
                "only the founder revokes the founder or an admin",
            )
            .into());
        }
        let corrupt = || HomeError::Corrupt {
            path: self.path("hub.db"),
            what: format!("peer {}: stored identity key", peer.id),
        };
        let mut key = [0u8; 32];
        hex::decode_to_slice(&peer.public_key, &mut key).map_err(|_| corrupt())?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| corrupt())?;
        let entry = Revocation {
            fingerprint: [0; 32],
            key_hash: shared_proto::trust::key_hash(&key),
            revoked_at_ms: unix_ms(),
            reason,
        };
        self.sign_revocation(entry, Some(peer.id))
    }

    fn sign_revocation(
        &self,
        entry: Revocation,
        peer: Option<HubId>,
    ) -> Result<VerifiedRevocations, HomeError> {
        let ca = self.signer()?;
        let cluster = ca.cluster_id();
        let store = self.store()?;
        // Read, sign and keep under one write lock: two revocations at once make versions N+1
        // and N+2 (the second holding both entries), never two different lists numbered N+1.
        store.in_transaction(|store| {
            let held = self.held_revocations(store)?;
            let mut list = held.map_or_else(
                || RevocationList {
                    version: 0,
                    issued_at_ms: 0,
                    entries: Vec::new(),
                },
                |h| h.list().clone(),
            );
            if !list
                .entries
                .iter()
                .any(|e| e.fingerprint == entry.fingerprint && e.key_hash == entry.key_hash)
            {
                list.entries.push(entry);
            }
            list.version += 1;
            list.issued_at_ms = unix_ms();
            let signed = RevocationList::verify(&list.sign(&ca)?, &cluster)?;
            store.put_signed(
                REVOCATIONS,
                &Document {
                    serial: signed.version(),
                    body: signed.bytes().to_vec(),
                },
            )?;
            if let Some(peer) = peer {
                store.revoke_peer(peer, unix_ms())?;
            }
            Ok::<_, HomeError>(signed)
        })
    }

    /// Admin: a certificate renewing `current` (a peer's, as its session verified it, or this
    /// hub's own), under the trust level and roles the store holds for that hub (those of
    /// `current` for a hub it has no record of). Refused for a hub revoked here.
    pub fn issue_renewal(
        &self,
        store: &Store,
        current: &VerifiedPeer,
    ) -> Result<VerifiedPeer, HomeError> {
        let ca = self.signer()?;
        let record = store.peer(current.hub_id())?;
        if record.as_ref().is_some_and(|p| p.revoked_at.is_some()) {
            return Err(HomeError::Revoked(current.hub_id()));
        }
        let terms = record.map(|p| (p.trust, p.roles));
        let now = unix_ms();
        let der = ca.issue(&renewed(current, terms, now), &mut OsRng)?;
        Ok(PeerCertificate::from_der(&der)?.verify(&ca.public_key(), now, None)?)
    }

    /// Admin: sets a peer's trust level and roles. Its record changes, and the manifest is
    /// re-signed with its new terms (epoch + 1) in one transaction; the peer takes a certificate
    /// under them when the manifest reaches it (it renews at once), and at every renewal. Returns
    /// the new manifest, to be passed on to the peers.
    pub fn set_terms(
        &self,
        store: &Store,
        id: HubId,
        trust: TrustLevel,
        roles: Vec<String>,
    ) -> Result<Document, HomeError> {
        let ca = self.ca()?;
        store.in_transaction(|store| {
            if !store.set_peer_terms(id, trust, &roles)? {
                return Err(HomeError::UnknownPeer(id));
            }
            let held = store.document(MANIFEST)?;
            let fingerprint = match &held {
                Some(doc) => Manifest::verify(&doc.body, &ca.cluster_id())?
                    .manifest()
                    .members
                    .iter()
                    .find(|m| m.hub_id == id)
                    .map_or([0; 32], |m| m.fingerprint),
                None => [0; 32],
            };
            let member = ManifestMember {
                hub_id: id,
                fingerprint,
                trust,
                roles,
            };
            let manifest = next_manifest(&ca, held, member, unix_ms())?;
            store.put_signed(MANIFEST, &manifest)?;
            Ok(manifest)
        })
    }

    /// Founder: renews this hub's own certificate, signed here, and keeps it.
    pub fn renew_own(&self, store: &Store) -> Result<VerifiedPeer, HomeError> {
        let new = self.issue_renewal(store, &self.certificate_held()?)?;
        self.keep_certificate(new.der())
    }

    /// Keeps this hub's renewed certificate (`hub.der`, replaced atomically) after checking that
    /// it renews the one held (`trust::renewal::accept`).
    pub fn keep_certificate(&self, der: &[u8]) -> Result<VerifiedPeer, HomeError> {
        let current = self.certificate_held()?;
        let new = shared_proto::trust::renewal::accept(&current, der, &self.ca_key()?, unix_ms())?;
        self.write("hub.der", der, false)?;
        Ok(new)
    }

    /// This hub's certificate, verified against the CA but not its dates: one that ended is
    /// still shown, and renewed from.
    pub fn certificate_held(&self) -> Result<VerifiedPeer, HomeError> {
        let der = self.read("hub.der")?;
        let cert = PeerCertificate::from_der(&der)?;
        let within = cert.not_before_ms();
        Ok(cert.verify(&self.ca_key()?, within, None)?)
    }

    /// The manifest this hub holds, verified.
    pub fn manifest(&self) -> Result<Option<VerifiedManifest>, HomeError> {
        let cluster = self.cluster_id()?;
        match self.store()?.document(MANIFEST)? {
            Some(doc) => Ok(Some(Manifest::verify(&doc.body, &cluster)?)),
            None => Ok(None),
        }
    }

    /// Keeps a signed manifest in `store` if it verifies for this cluster, is newer than the one
    /// held and its signer is not a revoked admin; returns whether it was kept.
    pub fn keep_manifest(&self, store: &Store, bytes: &[u8]) -> Result<bool, HomeError> {
        let manifest = Manifest::verify(bytes, &self.cluster_id()?)?;
        if self
            .held_revocations(store)?
            .is_some_and(|l| l.refuses_signer_of(manifest.signer()))
        {
            return Err(shared_proto::trust::TrustError::NotAdmin(
                "the admin that signed the manifest is revoked",
            )
            .into());
        }
        Ok(store.keep_manifest(&manifest)?)
    }

    /// Admin: a new pairing token for a hub with `terms`, valid for `ttl_ms`. Only the SHA-256
    /// of its secret is stored.
    pub fn invite(&self, terms: &TokenTerms, ttl_ms: u64) -> Result<PairingToken, HomeError> {
        // Only a hub that signs for the cluster can sign the new hub's certificate; an admin
        // cannot make founders or admins.
        let signer = self.signer()?;
        if signer.admin_certificate().is_some()
            && shared_proto::trust::has_root_only_role(&terms.roles)
        {
            return Err(shared_proto::trust::TrustError::NotAdmin(
                "only the founder makes founders and admins",
            )
            .into());
        }
        let cert = self.certificate()?;
        let mut secret = [0u8; SECRET_LEN];
        OsRng.fill_bytes(&mut secret);
        let now = unix_ms();
        let store = self.store()?;
        store.add_pairing_token(&secret, terms, now, now.saturating_add(ttl_ms))?;
        let roles = if terms.roles.is_empty() {
            String::new()
        } else {
            format!(" with roles {}", terms.roles.join(","))
        };
        let why = format!(
            "a pairing token for a {} hub{roles}, valid {} s",
            terms.trust,
            ttl_ms / 1000
        );
        use crate::node::audit::{entry, record, AuditKind, Decision};
        record(
            self,
            &store,
            entry(AuditKind::Invite, None, Decision::Ok, &why),
        );
        Ok(PairingToken {
            relay_url: self.config()?.relay_url,
            cluster: self.cluster_id()?,
            issuer: cert.hub_id(),
            issuer_noise_key: *cert.noise_key(),
            secret,
        })
    }

    /// Admin: answers a pairing request. The token is redeemed, the certificate signed, the
    /// peer recorded and the manifest re-signed in one transaction. Returns the answer to send
    /// back (acceptance, or an authenticated refusal) and the new peer, or why it was refused.
    pub fn answer_pairing(
        &self,
        store: &Store,
        local: &LocalIdentity,
        request: PairingRequest,
        validity_ms: u64,
    ) -> Result<(Vec<u8>, Result<PeerRecord, String>), HomeError> {
        if let Some(why) = request.unfit() {
            return Ok((request.refuse(why)?, Err(why.to_owned())));
        }
        let ca = self.signer()?;
        let relay_url = self.config()?.relay_url;
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        let hub_id = HubId(id);
        let now = unix_ms();
        let revocations = store.document(REVOCATIONS)?.map(|d| d.body);
        let outcome = store.admit_with_token(request.secret(), hub_id, now, |terms, held| {
            let (not_before_ms, not_after_ms) = validity(now, validity_ms);
            let req = CertificateRequest {
                hub_id,
                name: request.name.clone(),
                trust: terms.trust,
                roles: terms.roles.clone(),
                identity_key: request.identity_key,
                noise_key: request.noise_key,
                not_before_ms,
                not_after_ms,
            };
            let der = ca.issue(&req, &mut OsRng)?;
            let member = ManifestMember {
                hub_id,
                fingerprint: PeerCertificate::from_der(&der)?.fingerprint(),
                trust: terms.trust,
                roles: terms.roles.clone(),
            };
            let manifest = next_manifest(&ca, held, member, now)?;
            let peer = PeerRecord {
                id: hub_id,
                name: request.name.clone(),
                endpoint: relay_url.clone(),
                public_key: hex::encode(request.identity_key.as_bytes()),
                trust: terms.trust,
                roles: terms.roles.clone(),
                paired_at: now,
                revoked_at: None,
                suspended_at: None,
                last_seen_at: None,
            };
            let admission = Admission {
                peer: peer.clone(),
                manifest: manifest.clone(),
            };
            Ok::<_, HomeError>(((der, manifest.body, peer), Some(admission)))
        })?;
        match outcome {
            Ok((der, manifest, peer)) => {
                store.keep_peer_certificate(peer.id, &der)?;
                let answer = request.accept(local, &der, &manifest, revocations.as_deref())?;
                Ok((answer, Ok(peer)))
            }
            Err(RedeemError::Invalid) => {
                let why = RedeemError::Invalid.to_string();
                Ok((request.refuse(&why)?, Err(why)))
            }
        }
    }

    /// A new hub's keys, generated for joining: written to `identity.key` (replacing what an
    /// interrupted join left) and returned.
    pub fn new_identity(&self) -> Result<(SigningKey, [u8; 32]), HomeError> {
        if self.is_initialized() {
            return Err(HomeError::AlreadyInitialized(self.dir.clone()));
        }
        let identity = SigningKey::generate(&mut OsRng);
        let noise = x25519_dalek::StaticSecret::random_from_rng(OsRng);
        let mut keys = Zeroizing::new(identity.to_bytes().to_vec());
        keys.extend_from_slice(noise.as_bytes());
        self.write("identity.key", &keys, true)?;
        Ok((identity, noise.to_bytes()))
    }

    /// Records a completed pairing: the store first (one transaction: identity, manifest,
    /// issuer), then the CA key and config, then the certificate, which marks the hub as
    /// joined. A crash before the last write leaves a directory that can join again.
    pub fn complete_join(&self, joined: &Joined, relay_url: &str) -> Result<(), HomeError> {
        let store = self.store()?;
        let cert = &joined.certificate;
        let issuer = &joined.issuer;
        let now = unix_ms();
        store.in_transaction(|store| {
            store.set_instance(&Instance {
                id: cert.hub_id(),
                name: cert.name().to_owned(),
                identity_public_key: hex::encode(cert.identity_key().as_bytes()),
                noise_public_key: hex::encode(cert.noise_key()),
                created_at: now,
            })?;
            store.keep_manifest(&joined.manifest)?;
            if let Some(list) = &joined.revocations {
                store.keep_revocations(list)?;
            }
            store.upsert_peer(&PeerRecord {
                id: issuer.hub_id(),
                name: issuer.name().to_owned(),
                endpoint: relay_url.to_owned(),
                public_key: hex::encode(issuer.identity_key().as_bytes()),
                trust: issuer.trust(),
                roles: issuer.roles().to_vec(),
                paired_at: now,
                revoked_at: None,
                suspended_at: None,
                last_seen_at: Some(now),
            })
        })?;
        self.write("ca.pub", joined.ca_key.as_bytes(), false)?;
        self.write_config(&HubConfig {
            relay_url: relay_url.to_owned(),
            name: cert.name().to_owned(),
        })?;
        self.write("hub.der", cert.der(), false)
    }

    fn write_config(&self, config: &HubConfig) -> Result<(), HomeError> {
        let toml = toml::to_string(config).map_err(|e| HomeError::Corrupt {
            path: self.path("hub.toml"),
            what: e.to_string(),
        })?;
        self.write("hub.toml", toml.as_bytes(), false)
    }

    /// Records a peer this hub learned of through a verified certificate (a session), keeping
    /// what the store knows (pairing time, suspension, revocation; and on an admin, the trust
    /// level and roles it set, which the peer's certificate says only once renewed).
    pub fn record_peer(&self, store: &Store, cert: &VerifiedPeer) -> Result<(), HomeError> {
        let now = unix_ms();
        let relay_url = self.config()?.relay_url;
        let known = store.peer(cert.hub_id())?;
        if known.as_ref().is_some_and(|p| p.revoked_at.is_some()) {
            return Ok(());
        }
        let (trust, roles) = match &known {
            Some(p) if self.is_admin() => (p.trust, p.roles.clone()),
            _ => (cert.trust(), cert.roles().to_vec()),
        };
        store.upsert_peer(&PeerRecord {
            id: cert.hub_id(),
            name: cert.name().to_owned(),
            endpoint: relay_url,
            public_key: hex::encode(cert.identity_key().as_bytes()),
            trust,
            roles,
            paired_at: known.as_ref().map_or(now, |p| p.paired_at),
            revoked_at: None,
            suspended_at: known.as_ref().and_then(|p| p.suspended_at),
            last_seen_at: Some(now),
        })?;
        store.keep_peer_certificate(cert.hub_id(), cert.der())?;
        Ok(())
    }
}

/// Validity of certificates signed at pairing, in days (`hub run --cert-validity-minutes`, hidden,
/// sets another for tests).
pub const CERT_VALIDITY_DAYS: u64 = 365;

/// [`CERT_VALIDITY_DAYS`] in ms.
pub const CERT_VALIDITY_MS: u64 = CERT_VALIDITY_DAYS * 86_400_000;

/// The manifest after adding (or replacing) `member`: the held one's members, epoch + 1.
fn next_manifest(
    ca: &ClusterCa,
    held: Option<Document>,
    member: ManifestMember,
    now: u64,
) -> Result<Document, HomeError> {
    let held = match held {
        Some(doc) => Some(Manifest::verify(&doc.body, &ca.cluster_id())?),
        None => None,
    };
    let (epoch, mut members) = held.map_or((0, Vec::new()), |m| {
        (m.manifest().epoch, m.manifest().members.clone())
    });
    members.retain(|m| m.hub_id != member.hub_id);
    members.push(member);
    let manifest = Manifest {
        epoch: epoch + 1,
        issued_at_ms: now,
        members,
    };
    Ok(Document {
        serial: manifest.epoch,
        body: manifest.sign(ca)?,
    })
}

/// Creates a hub's keys, certificate and config in `home`, signed by `ca`.
pub(crate) fn enroll(
    ca: &ClusterCa,
    home: &Home,
    relay_url: &str,
    hub: &NewHub,
    founder: Option<&Home>,
) -> Result<VerifiedPeer, HomeError> {
    let identity = SigningKey::generate(&mut OsRng);
    let noise = x25519_dalek::StaticSecret::random_from_rng(OsRng);
    let noise_public = x25519_dalek::PublicKey::from(&noise);
    let mut hub_id = [0u8; 16];
    OsRng.fill_bytes(&mut hub_id);
    let now = unix_ms();
    // A little slack for clocks that are behind.
    let (not_before_ms, not_after_ms) = validity(now, hub.validity_ms.max(60_000));
    let req = CertificateRequest {
        hub_id: HubId(hub_id),
        name: hub.name.clone(),
        trust: hub.trust,
        roles: hub.roles.clone(),
        identity_key: identity.verifying_key(),
        noise_key: noise_public.to_bytes(),
        not_before_ms,
        not_after_ms,
    };
    let der = ca.issue(&req, &mut OsRng)?;
    let peer = PeerCertificate::from_der(&der)?.verify(&ca.public_key(), now, None)?;
    let mut keys = Zeroizing::new(identity.to_bytes().to_vec());
    keys.extend_from_slice(noise.as_bytes());
    home.write("identity.key", &keys, true)?;
    home.write("ca.pub", ca.public_key().as_bytes(), false)?;
    home.write_config(&HubConfig {
        relay_url: relay_url.to_owned(),
        name: hub.name.clone(),
    })?;
    // Both stores learn of the new hub: its own identity, and the founder's manifest (the
    // founder itself when it creates the cluster) and peer list.
    let member = ManifestMember {
        hub_id: peer.hub_id(),
        fingerprint: peer.fingerprint(),
        trust: hub.trust,
        roles: hub.roles.clone(),
    };
    let founder_home = founder.unwrap_or(home);
    let founder_store = founder_home.store()?;
    let manifest = founder_store.in_transaction(|store| {
        let manifest = next_manifest(ca, store.document(MANIFEST)?, member, now)?;
        store.put_signed(MANIFEST, &manifest)?;
        if founder.is_some() {
            store.upsert_peer(&PeerRecord {
                id: peer.hub_id(),
                name: hub.name.clone(),
                endpoint: relay_url.to_owned(),
                public_key: hex::encode(identity.verifying_key().as_bytes()),
                trust: hub.trust,
                roles: hub.roles.clone(),
                paired_at: now,
                revoked_at: None,
                suspended_at: None,
                last_seen_at: None,
            })?;
            store.keep_peer_certificate(peer.hub_id(), peer.der())?;
        }
        Ok::<_, HomeError>(manifest)
    })?;
    let store = home.store()?;
    store.in_transaction(|store| {
        store.set_instance(&Instance {
            id: peer.hub_id(),
            name: hub.name.clone(),
            identity_public_key: hex::encode(identity.verifying_key().as_bytes()),
            noise_public_key: hex::encode(noise_public.as_bytes()),
            created_at: now,
        })?;
        store.put_document(MANIFEST, &manifest)?;
        Ok::<_, HomeError>(())
    })?;
    // The certificate last: its presence marks the directory as initialized.
    home.write("hub.der", &der, false)?;
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_hub(name: &str) -> NewHub {
        NewHub {
            name: name.into(),
            trust: TrustLevel::Full,
            roles: vec!["founder".into()],
            validity_ms: 30 * 86_400_000,
        }
    }

    #[test]
    fn create_add_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let founder = Home::new(dir.path().join("founder"));
        let cluster = founder
            .create_cluster("ws://127.0.0.1:1", &new_hub("desk"))
            .unwrap();
        assert_eq!(founder.cluster_id().unwrap(), cluster);
        assert!(matches!(
            founder.create_cluster("ws://x", &new_hub("again")),
            Err(HomeError::AlreadyInitialized(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(founder.dir())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "the home directory");
            for secret in ["ca.key", "identity.key"] {
                let mode = std::fs::metadata(founder.dir().join(secret))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{secret}");
            }
        }
        let laptop = Home::new(dir.path().join("laptop"));
        let mut spec = new_hub("laptop");
        spec.trust = TrustLevel::ReadOnly;
        let peer = founder.add_hub(&laptop, &spec).unwrap();
        assert_eq!(laptop.cluster_id().unwrap(), cluster);
        assert_eq!(laptop.certificate().unwrap(), peer);
        assert_eq!(laptop.config().unwrap().relay_url, "ws://127.0.0.1:1");
        assert!(matches!(laptop.ca(), Err(HomeError::NotFounder)));
        assert_ne!(
            laptop.credentials().unwrap().hub_id,
            founder.credentials().unwrap().hub_id
        );

        let v1 = founder
            .revoke(Revocation {
                fingerprint: peer.fingerprint(),
                key_hash: peer.key_hash(),
                revoked_at_ms: 1,
                reason: "lost".into(),
            })
            .unwrap();
        assert_eq!(v1.version(), 1);
        assert!(v1.is_revoked(&peer.fingerprint(), &[0; 32]));
        // The laptop keeps it once, not twice; not an older one.
        assert!(laptop.keep_revocations(&v1).unwrap());
        assert!(!laptop.keep_revocations(&v1).unwrap());
        let v2 = founder
            .revoke(Revocation {
                fingerprint: [1; 32],
                key_hash: [2; 32],
                revoked_at_ms: 2,
                reason: "x".into(),
            })
            .unwrap();
        assert_eq!(v2.version(), 2);
        assert_eq!(v2.list().entries.len(), 2);
        let empty = Home::new(dir.path().join("nothing"));
        assert!(matches!(
            empty.credentials(),
            Err(HomeError::NotInitialized(_))
        ));
    }

    /// Concurrent revocations (each on its own connection, as two API calls or a CLI command
    /// beside `hub run` are) are serialized: each signs a distinct version over the one before,
    /// and the newest list holds every entry. Reading the held list outside the write
    /// transaction signed several lists numbered 1, of which the store kept one.
    #[test]
    fn concurrent_revocations_all_land_in_the_newest_list() {
        let dir = tempfile::tempdir().unwrap();
        let founder = Home::new(dir.path().join("founder"));
        founder
            .create_cluster("ws://127.0.0.1:1", &new_hub("desk"))
            .unwrap();
        const N: u8 = 6;
        let barrier = std::sync::Barrier::new(usize::from(N));
        let versions: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..N)
                .map(|i| {
                    let (founder, barrier) = (&founder, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        founder
                            .revoke(Revocation {
                                fingerprint: [i + 1; 32],
                                key_hash: [0; 32],
                                revoked_at_ms: 1,
                                reason: format!("revocation {i}"),
                            })
                            .unwrap()
                            .version()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (1..=u64::from(N)).collect::<Vec<_>>(),
            "{versions:?}"
        );
        let held = RevocationList::verify(
            &founder.revocations().unwrap(),
            &founder.cluster_id().unwrap(),
        )
        .unwrap();
        assert_eq!(held.version(), u64::from(N));
        for i in 0..N {
            assert!(held.is_revoked(&[i + 1; 32], &[9; 32]), "entry {i} lost");
        }
    }

    #[test]
    fn pairing_records_both_sides_once_and_the_store_is_private() {
        use shared_proto::session::pairing::{JoinRequest, Joiner, PairingRequest};
        let dir = tempfile::tempdir().unwrap();
        let founder = Home::new(dir.path().join("founder"));
        founder
            .create_cluster("ws://127.0.0.1:1", &new_hub("desk"))
            .unwrap();
        assert_eq!(founder.manifest().unwrap().unwrap().manifest().epoch, 1);
        let list = founder
            .revoke(Revocation {
                fingerprint: [1; 32],
                key_hash: [2; 32],
                revoked_at_ms: 1,
                reason: "old laptop".into(),
            })
            .unwrap();
        let terms = TokenTerms {
            trust: TrustLevel::ReadOnly,
            roles: vec!["kiosk".into()],
        };
        let token = founder.invite(&terms, 3_600_000).unwrap();
        let local = founder.noise_identity().unwrap();
        let me = founder.certificate().unwrap().hub_id();

        let pair = |home: &Home, name: &str| {
            let (identity, noise) = home.new_identity().unwrap();
            let req = JoinRequest {
                name,
                identity: &identity,
                noise_secret: &noise,
            };
            let (joiner, m1) = Joiner::start(&token, &req, &mut OsRng).unwrap();
            let request = PairingRequest::read(&local, me, &m1, &mut OsRng).unwrap();
            let store = founder.store().unwrap();
            let (answer, peer) = founder
                .answer_pairing(&store, &local, request, CERT_VALIDITY_MS)
                .unwrap();
            (joiner.finish(&answer, unix_ms()), peer)
        };
        let kiosk = Home::new(dir.path().join("kiosk"));
        let (joined, peer) = pair(&kiosk, "kiosk");
        let joined = joined.unwrap();
        let peer = peer.unwrap();
        assert_eq!(peer.id, joined.certificate.hub_id());
        kiosk.complete_join(&joined, "ws://127.0.0.1:1").unwrap();
        assert!(kiosk.is_initialized());
        assert_eq!(kiosk.certificate().unwrap().trust(), TrustLevel::ReadOnly);
        assert_eq!(kiosk.manifest().unwrap().unwrap().manifest().epoch, 2);
        // It holds the cluster's revocation list from the start.
        assert_eq!(kiosk.revocations(), Some(list.bytes().to_vec()));
        // Manifests passed on by peers: only newer ones, only this cluster's.
        let held = founder
            .store()
            .unwrap()
            .document(MANIFEST)
            .unwrap()
            .unwrap();
        let kiosk_store = kiosk.store().unwrap();
        assert!(
            !kiosk.keep_manifest(&kiosk_store, &held.body).unwrap(),
            "not newer"
        );
        let foreign = Manifest {
            epoch: 99,
            issued_at_ms: 1,
            members: vec![],
        }
        .sign(&ClusterCa::generate(&mut OsRng))
        .unwrap();
        assert!(kiosk.keep_manifest(&kiosk_store, &foreign).is_err());
        assert_eq!(kiosk.manifest().unwrap().unwrap().manifest().epoch, 2);
        // Both sides list each other.
        let theirs = kiosk.store().unwrap().active_peers().unwrap();
        assert_eq!(theirs[0].id, me);
        let ours = founder.store().unwrap().active_peers().unwrap();
        assert_eq!(ours[0].id, peer.id);
        assert_eq!(ours[0].roles, vec!["kiosk".to_owned()]);
        // The token is spent: a second hub gets an authenticated refusal and nothing changes.
        let other = Home::new(dir.path().join("other"));
        let (refused, none) = pair(&other, "other");
        assert!(matches!(
            refused,
            Err(shared_proto::session::pairing::PairingError::Refused(_))
        ));
        assert_eq!(none.unwrap_err(), "invalid, used or expired pairing token");
        assert_eq!(founder.store().unwrap().active_peers().unwrap().len(), 1);
        assert_eq!(founder.manifest().unwrap().unwrap().manifest().epoch, 2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(founder.dir().join("hub.db"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
