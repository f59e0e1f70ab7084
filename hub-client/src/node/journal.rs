//! Group commit for the writes on a call's path: the target's delegation nonce and the audit
//! entries of both sides go to one writer thread with its own connection to the store, which
//! commits whatever is waiting in one transaction (`Store::commit_batch`): one fsync for every
//! nonce and entry of the last few milliseconds, instead of one each. Nothing is weakened: a
//! call runs only once the batch holding its nonce is durable ([`Journal::spend_nonce`] returns
//! then), and an audit entry is in the chain once [`Journal::append`] returns.
//!
//! A batch of entries nobody waits for ([`Journal::append_later`]: the caller's `call.out`, the
//! target's `call.in`) is held up to [`LINGER`] for a write someone waits for (the next call's
//! nonce), so that sequential calls cost one fsync each, not two.
//!
//! Bound: [`MAX_WAITING`] writes wait at once (those who send more wait for room), and a batch
//! holds at most [`MAX_BATCH`].

use std::thread::JoinHandle;

use shared_proto::HubId;
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use crate::node::home::{Home, HomeError};
use crate::node::store::{AuditEntry, Store};
use crate::unix_ms;

/// Writes waiting for the writer at once.
pub const MAX_WAITING: usize = 4_096;

/// Writes committed in one transaction at most.
pub const MAX_BATCH: usize = 512;

/// How long a batch of entries nobody waits for is held for a write someone waits for.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// Expired nonces are deleted from the store at most this often.
const PRUNE_EVERY_MS: u64 = 10_000;

/// Why a write did not land.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The store or the audit key could not be opened.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The writer thread could not be started.
    #[error("cannot start the journal's writer: {0}")]
    Thread(std::io::Error),
    /// The batch holding the write was not committed.
    #[error("not committed: {0}")]
    Batch(String),
    /// The writer stopped (the hub is stopping).
    #[error("the journal stopped")]
    Stopped,
}

enum Write {
    Nonce {
        peer: HubId,
        nonce: [u8; 16],
        expires_at_ms: u64,
        done: oneshot::Sender<Result<(), String>>,
    },
    Audit {
        entry: Box<AuditEntry>,
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
    /// Nothing to write: answered once everything sent before it is committed.
    Sync {
        done: oneshot::Sender<Result<(), String>>,
    },
}

impl Write {
    /// Whether someone waits for this write to be committed.
    fn waited_for(&self) -> bool {
        match self {
            Write::Nonce { .. } | Write::Sync { .. } => true,
            Write::Audit { done, .. } => done.is_some(),
        }
    }
}

/// The writer of the running hub. Dropping it lets the writer finish what waits, and stop.
#[derive(Debug)]
pub struct Journal {
    writes: mpsc::Sender<Write>,
    thread: Option<JoinHandle<()>>,
}

impl Journal {
    /// Starts the writer on the home's store; audit entries are chained with the home's audit
    /// key, unless `audited` is false (a benchmark): then they are dropped.
    pub fn start(home: &Home, audited: bool) -> Result<Self, JournalError> {
        let store = home.store()?;
        let audit_key = if audited {
            Some(home.audit_key()?)
        } else {
            None
        };
        let (writes, rx) = mpsc::channel(MAX_WAITING);
        let thread = std::thread::Builder::new()
            .name("hub-journal".into())
            .spawn(move || writer(store, audit_key, rx))
            .map_err(JournalError::Thread)?;
        Ok(Journal {
            writes,
            thread: Some(thread),
        })
    }

    /// Makes the nonce of a call from `peer` durable (until its envelope expires at
    /// `expires_at_ms`): returns once the batch holding it is committed.
    pub async fn spend_nonce(
        &self,
        peer: HubId,
        nonce: [u8; 16],
        expires_at_ms: u64,
    ) -> Result<(), JournalError> {
        let (done, wait) = oneshot::channel();
        let write = Write::Nonce {
            peer,
            nonce,
            expires_at_ms,
            done,
        };
        self.writes
            .send(write)
            .await
            .map_err(|_| JournalError::Stopped)?;
        wait.await
            .map_err(|_| JournalError::Stopped)?
            .map_err(JournalError::Batch)
    }

    /// Appends `entry` to the audit chain: returns once it is committed.
    pub async fn append(&self, entry: AuditEntry) -> Result<(), JournalError> {
        let (done, wait) = oneshot::channel();
        let write = Write::Audit {
            entry: Box::new(entry),
            done: Some(done),
        };
        self.writes
            .send(write)
            .await
            .map_err(|_| JournalError::Stopped)?;
        wait.await
            .map_err(|_| JournalError::Stopped)?
            .map_err(JournalError::Batch)
    }

    /// Appends `entry` to the audit chain without waiting for it (it lands with the next batch;
    /// a failure is logged). Waits only for room among the writes waiting.
    pub async fn append_later(&self, entry: AuditEntry) {
        let write = Write::Audit {
            entry: Box::new(entry),
            done: None,
        };
        if self.writes.send(write).await.is_err() {
            tracing::error!("audit entry not recorded: the journal stopped");
        }
    }
}

impl Journal {
    /// Returns once every write sent before is committed (the hub stops).
    pub async fn sync(&self) -> Result<(), JournalError> {
        let (done, wait) = oneshot::channel();
        self.writes
            .send(Write::Sync { done })
            .await
            .map_err(|_| JournalError::Stopped)?;
        wait.await
            .map_err(|_| JournalError::Stopped)?
            .map_err(JournalError::Batch)
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Closing the channel ends the writer once it has committed what waits.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.writes, closed));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: takes what waits (at least one write), commits it in one transaction,
/// answers each, and again, until the channel closes.
fn writer(store: Store, key: Option<Zeroizing<[u8; 32]>>, mut rx: mpsc::Receiver<Write>) {
    let mut pruned_ms = 0u64;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        let lingering_until = std::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(mpsc::error::TryRecvError::Empty)
                    if !batch.iter().any(Write::waited_for)
                        && std::time::Instant::now() < lingering_until =>
                {
                    std::thread::sleep(std::time::Duration::from_micros(100));
                }
                Err(_) => break,
            }
        }
        let mut nonces = Vec::new();
        let mut entries = Vec::new();
        for w in &batch {
            match w {
                Write::Nonce {
                    peer,
                    nonce,
                    expires_at_ms,
                    ..
                } => nonces.push((*peer, *nonce, *expires_at_ms)),
                Write::Audit { entry, .. } => entries.push((**entry).clone()),
                Write::Sync { .. } => {}
            }
        }
        let now = unix_ms();
        let prune = (now >= pruned_ms + PRUNE_EVERY_MS).then(|| {
            pruned_ms = now;
            now
        });
        let result = store
            .commit_batch(key.as_deref(), &nonces, entries, prune)
            .map(|_| ())
            .map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(
                writes = batch.len(),
                "journal batch not committed (its calls are refused, its audit entries lost): {e}"
            );
        }
        for w in batch {
            let done = match w {
                Write::Nonce { done, .. } | Write::Sync { done } => Some(done),
                Write::Audit { done, .. } => done,
            };
            if let Some(done) = done {
                let _ = done.send(result.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> AuditEntry {
        AuditEntry {
            at_ms: 1_800_000_000_000 + i,
            kind: "call.in".into(),
            decision: "allowed".into(),
            reason: format!("ok {i}"),
            bytes: Some(0),
            count: Some(1),
            ..AuditEntry::default()
        }
    }

    /// Writes from many tasks at once land, in few transactions: every nonce is in the store
    /// once its call may run, and the audit chain of every entry verifies.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_land_and_the_chain_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().to_path_buf());
        let path = dir.path().join("hub.db");
        let journal = std::sync::Arc::new(Journal::start(&home, true).unwrap());
        let key = *home.audit_key().unwrap();
        let far = unix_ms() + 60_000;
        let tasks: Vec<_> = (0..200u64)
            .map(|i| {
                let journal = journal.clone();
                let path = path.clone();
                tokio::spawn(async move {
                    let mut nonce = [0u8; 16];
                    nonce[..8].copy_from_slice(&i.to_be_bytes());
                    journal
                        .spend_nonce(HubId([1; 16]), nonce, far)
                        .await
                        .unwrap();
                    // Durable once it returns: another connection sees it.
                    let store = Store::open(&path).unwrap();
                    assert!(store
                        .delegation_nonces(0)
                        .unwrap()
                        .iter()
                        .any(|(_, n, _)| *n == nonce));
                    journal.append(entry(i)).await.unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        journal.append_later(entry(999)).await;
        drop(std::sync::Arc::into_inner(journal).unwrap());
        let store = Store::open(&path).unwrap();
        let entries = store.audit_entries(None, 0, None).unwrap();
        assert_eq!(entries.len(), 201);
        let head = shared_proto::audit::verify(&key, entries.iter().map(|(e, m)| (e, m)));
        assert_eq!(head.unwrap().0, 201);
        assert_eq!(store.delegation_nonces(0).unwrap().len(), 200);
    }
}
