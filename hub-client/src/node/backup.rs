//! The founder's cluster backup (`hub cluster backup`, `hub cluster restore`): the cluster CA
//! key, the signed manifest and revocation list, and the peers the founder paired, as one JSON
//! document encrypted with [age](https://age-encryption.org/v1) to a passphrase (its scrypt
//! recipient). Restoring it into a new home makes that home the cluster's admin again, under a
//! new identity of its own (the lost machine's identity stays with the lost machine, and can be
//! revoked from the new one).
//!
//! The document inside (docs/OPERATIONS.md, "A lost founder"):
//!
//! ```json
//! {"format":"hub-relay cluster backup v1","made_at_ms":1796601600000,"cluster":"<32 hex>",
//!  "relay_url":"wss://...","made_by":"<hub id>","ca_key":"<64 hex>",
//!  "manifest":"<hex of the signed manifest>","revocations":"<hex of the signed list>",
//!  "peers":[{"id":"<hub id>","name":"laptop","identity_key":"<64 hex>","trust":"full",
//!            "roles":["admin"],"paired_at_ms":1796601600000}]}
//! ```

use std::io::Read;

use age::secrecy::SecretString;
use serde::{Deserialize, Serialize};
use shared_proto::trust::{
    ClusterCa, ClusterId, Manifest, RevocationList, TrustLevel, VerifiedManifest, VerifiedPeer,
    VerifiedRevocations,
};
use shared_proto::HubId;
use zeroize::{Zeroize, Zeroizing};

use crate::node::home::{enroll, Home, HomeError, NewHub};
use crate::node::store::{Document, PeerRecord, StoreError, MANIFEST, REVOCATIONS};
use crate::unix_ms;

/// What the document inside says it is.
pub const FORMAT: &str = "hub-relay cluster backup v1";

/// The shortest passphrase a backup is made with, in characters.
pub const MIN_PASSPHRASE: usize = 12;

/// Why a backup was not made or not read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The data directory.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A passphrase too short to resist guessing.
    #[error("the passphrase must be at least {MIN_PASSPHRASE} characters (a few random words)")]
    WeakPassphrase,
    /// The passphrase does not open the file.
    #[error("wrong passphrase: it does not open this backup")]
    WrongPassphrase,
    /// Not an age file, or its header was damaged.
    #[error("not a hub cluster backup, or its header is damaged ({0})")]
    NotABackup(String),
    /// The encrypted contents do not authenticate: changed, or cut short.
    #[error(
        "the backup is damaged: its contents were changed or cut short, and cannot be trusted"
    )]
    Damaged,
    /// The file asks for more scrypt work than this machine allows (a hostile file).
    #[error("the backup asks for an excessive amount of work to open: {0}")]
    TooMuchWork(String),
    /// It opened, but what is inside is not a backup this hub reads.
    #[error("the backup opened but does not hold a cluster: {0}")]
    Contents(String),
}

/// One peer as the backup keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BackupPeer {
    id: String,
    name: String,
    identity_key: String,
    trust: String,
    roles: Vec<String>,
    paired_at_ms: u64,
}

/// The document inside the encryption.
#[derive(Serialize, Deserialize)]
struct Contents {
    format: String,
    made_at_ms: u64,
    cluster: String,
    relay_url: String,
    made_by: String,
    ca_key: String,
    manifest: Option<String>,
    revocations: Option<String>,
    peers: Vec<BackupPeer>,
}

impl Drop for Contents {
    fn drop(&mut self) {
        self.ca_key.zeroize();
    }
}

/// A backup opened and checked: its CA key names its cluster, and its documents are signed by
/// that CA.
pub struct Backup {
    ca: ClusterCa,
    made_at_ms: u64,
    made_by: HubId,
    relay_url: String,
    manifest: Option<VerifiedManifest>,
    revocations: Option<VerifiedRevocations>,
    peers: Vec<PeerRecord>,
}

impl std::fmt::Debug for Backup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backup")
            .field("cluster", &self.cluster_id())
            .field("made_at_ms", &self.made_at_ms)
            .field("made_by", &self.made_by)
            .finish_non_exhaustive()
    }
}

impl Backup {
    /// The cluster it holds the CA of.
    pub fn cluster_id(&self) -> ClusterId {
        self.ca.cluster_id()
    }

    /// When it was made (Unix ms).
    pub fn made_at_ms(&self) -> u64 {
        self.made_at_ms
    }

    /// The hub that made it (the founder then).
    pub fn made_by(&self) -> HubId {
        self.made_by
    }

    /// The relay URL the cluster used.
    pub fn relay_url(&self) -> &str {
        &self.relay_url
    }

    /// The peers it lists (not revoked when it was made), the hub that made it among them.
    pub fn peers(&self) -> &[PeerRecord] {
        &self.peers
    }

    /// The manifest's epoch and the revocation list's version it holds.
    pub fn serials(&self) -> (Option<u64>, Option<u64>) {
        (
            self.manifest.as_ref().map(|m| m.manifest().epoch),
            self.revocations.as_ref().map(|r| r.version()),
        )
    }
}

/// The founder's backup of its cluster, encrypted to `passphrase`.
pub fn make(home: &Home, passphrase: &SecretString) -> Result<Vec<u8>, BackupError> {
    use age::secrecy::ExposeSecret;
    if passphrase.expose_secret().chars().count() < MIN_PASSPHRASE {
        return Err(BackupError::WeakPassphrase);
    }
    let ca = home.ca()?;
    let store = home.store()?;
    let me = home.certificate()?;
    let hex_doc = |kind| -> Result<Option<String>, StoreError> {
        Ok(store.document(kind)?.map(|d| hex::encode(d.body)))
    };
    let peers = store
        .active_peers()?
        .into_iter()
        .map(|p| BackupPeer {
            id: p.id.to_string(),
            name: p.name,
            identity_key: p.public_key,
            trust: p.trust.to_string(),
            roles: p.roles,
            paired_at_ms: p.paired_at,
        })
        .chain(std::iter::once(BackupPeer {
            // The founder itself, so that a restored admin can revoke the lost machine.
            id: me.hub_id().to_string(),
            name: me.name().to_owned(),
            identity_key: hex::encode(me.identity_key().as_bytes()),
            trust: me.trust().to_string(),
            roles: me.roles().to_vec(),
            paired_at_ms: me.not_before_ms(),
        }))
        .collect();
    let secret = Zeroizing::new(ca.secret().ok_or(HomeError::NotFounder)?);
    let contents = Contents {
        format: FORMAT.to_owned(),
        made_at_ms: unix_ms(),
        cluster: ca.cluster_id().to_string(),
        relay_url: home.config()?.relay_url,
        made_by: me.hub_id().to_string(),
        ca_key: hex::encode(secret.as_slice()),
        manifest: hex_doc(MANIFEST)?,
        revocations: hex_doc(REVOCATIONS)?,
        peers,
    };
    let json = Zeroizing::new(
        serde_json::to_vec(&contents).map_err(|e| BackupError::Contents(e.to_string()))?,
    );
    let recipient = age::scrypt::Recipient::new(passphrase.clone());
    age::encrypt(&recipient, &json).map_err(|e| BackupError::Contents(e.to_string()))
}

/// Opens a backup with `passphrase` and checks what it holds.
pub fn open(bytes: &[u8], passphrase: &SecretString) -> Result<Backup, BackupError> {
    let identity = age::scrypt::Identity::new(passphrase.clone());
    let decryptor =
        age::Decryptor::new(bytes).map_err(|e| BackupError::NotABackup(e.to_string()))?;
    if !decryptor.is_scrypt() {
        return Err(BackupError::NotABackup(
            "it is encrypted to a key, not a passphrase".into(),
        ));
    }
    let mut reader = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::DecryptionFailed | age::DecryptError::KeyDecryptionFailed => {
                BackupError::WrongPassphrase
            }
            age::DecryptError::ExcessiveWork { .. } => BackupError::TooMuchWork(e.to_string()),
            age::DecryptError::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                BackupError::Damaged
            }
            other => BackupError::NotABackup(other.to_string()),
        })?;
    let mut json = Zeroizing::new(Vec::new());
    reader.read_to_end(&mut json).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData
            || e.kind() == std::io::ErrorKind::UnexpectedEof
        {
            BackupError::Damaged
        } else {
            BackupError::NotABackup(e.to_string())
        }
    })?;
    let contents: Contents =
        serde_json::from_slice(&json).map_err(|e| BackupError::Contents(e.to_string()))?;
    check(&contents)
}

fn check(c: &Contents) -> Result<Backup, BackupError> {
    let bad = |what: &str| BackupError::Contents(what.to_owned());
    if c.format != FORMAT {
        return Err(BackupError::Contents(format!(
            "format {:?}; this hub reads {FORMAT:?}",
            c.format
        )));
    }
    let mut secret = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(&c.ca_key, secret.as_mut_slice()).map_err(|_| bad("the CA key"))?;
    let ca = ClusterCa::from_secret(&secret);
    let cluster = ca.cluster_id();
    if c.cluster != cluster.to_string() {
        return Err(bad("its CA key does not name its cluster"));
    }
    let doc = |hex_bytes: &Option<String>| -> Result<Option<Vec<u8>>, BackupError> {
        hex_bytes
            .as_ref()
            .map(|h| hex::decode(h).map_err(|_| bad("a signed document")))
            .transpose()
    };
    let manifest = doc(&c.manifest)?
        .map(|b| Manifest::verify(&b, &cluster))
        .transpose()
        .map_err(|e| BackupError::Contents(format!("the manifest: {e}")))?;
    let revocations = doc(&c.revocations)?
        .map(|b| RevocationList::verify(&b, &cluster))
        .transpose()
        .map_err(|e| BackupError::Contents(format!("the revocation list: {e}")))?;
    let peers = c
        .peers
        .iter()
        .map(|p| {
            Ok(PeerRecord {
                id: p.id.parse().map_err(|_| bad("a peer's id"))?,
                name: p.name.clone(),
                endpoint: c.relay_url.clone(),
                public_key: p.identity_key.clone(),
                trust: p
                    .trust
                    .parse::<TrustLevel>()
                    .map_err(|_| bad("a peer's trust level"))?,
                roles: p.roles.clone(),
                paired_at: p.paired_at_ms,
                revoked_at: None,
                suspended_at: None,
                last_seen_at: None,
            })
        })
        .collect::<Result<Vec<_>, BackupError>>()?;
    Ok(Backup {
        ca,
        made_at_ms: c.made_at_ms,
        made_by: c.made_by.parse().map_err(|_| bad("the hub that made it"))?,
        relay_url: c.relay_url.clone(),
        manifest,
        revocations,
        peers,
    })
}

/// Makes `home` (new) the cluster's admin from `backup`: the CA key, the documents and the peers
/// it holds, and a new identity with a certificate the CA signs now (`hub`: trust `full`, role
/// `founder`), added to the manifest (epoch + 1). `relay_url` replaces the backup's.
pub fn restore(
    home: &Home,
    backup: &Backup,
    hub: &NewHub,
    relay_url: Option<&str>,
) -> Result<VerifiedPeer, BackupError> {
    if home.is_initialized() {
        return Err(HomeError::AlreadyInitialized(home.dir().to_owned()).into());
    }
    let secret = Zeroizing::new(backup.ca.secret().ok_or(HomeError::NotFounder)?);
    home.write_secret("ca.key", secret.as_slice())?;
    let store = home.store()?;
    store.in_transaction(|store| {
        if let Some(m) = &backup.manifest {
            store.put_document(
                MANIFEST,
                &Document {
                    serial: m.manifest().epoch,
                    body: m.bytes().to_vec(),
                },
            )?;
        }
        if let Some(list) = &backup.revocations {
            store.keep_revocations(list)?;
        }
        for peer in &backup.peers {
            store.upsert_peer(peer)?;
        }
        Ok::<_, StoreError>(())
    })?;
    let relay = relay_url.unwrap_or(&backup.relay_url);
    Ok(enroll(&backup.ca, home, relay, hub, None)?)
}
