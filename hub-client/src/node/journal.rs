//! Group commit for the writes on a call's path: the target's delegation nonce and the audit
//! entries of both sides go through the running hub's connection to the store (its one
//! connection: what it writes itself does not look like another process's change, `PRAGMA
//! data_version`), and whoever holds it commits
//! every write waiting in one transaction (`Store::commit_batch`): one fsync for every nonce and
//! entry that came while the last one ran, instead of one each. Nothing is weakened: a call runs
//! only once the transaction holding its nonce is durable ([`Journal::spend_nonce`] returns
//! then), and an audit entry is in the chain once [`Journal::append`] returns.
//!
//! Leader and followers: a write someone waits for is queued, then its task takes the
//! connection (on its own thread, `block_in_place`: no hand-off to another thread when nothing
//! else is being written) and, unless the holder before it committed it already, commits
//! everything queued. Entries nobody waits for ([`Journal::append_later`]: the caller's
//! `call.out`, the target's `call.in`) are queued and committed by the next one to lead, or by
//! a pass on the blocking pool started for them.
//!
//! Bound: at most [`MAX_WAITING`] writes are queued; one more is committed by its writer at
//! once, with them. A transaction holds at most [`MAX_BATCH`] writes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use shared_proto::HubId;
use zeroize::Zeroizing;

use crate::node::home::{Home, HomeError};
use crate::node::store::{AuditEntry, Store};
use crate::unix_ms;

/// Writes queued at once.
pub const MAX_WAITING: usize = 4_096;

/// Writes committed in one transaction at most.
pub const MAX_BATCH: usize = 512;

/// Expired nonces are deleted from the store at most this often.
const PRUNE_EVERY_MS: u64 = 10_000;

/// Why a write did not land.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The store or the audit key could not be opened.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The transaction holding the write was not committed.
    #[error("not committed: {0}")]
    Batch(String),
}

enum Item {
    Nonce {
        peer: HubId,
        nonce: [u8; 16],
        expires_at_ms: u64,
    },
    Audit(Box<AuditEntry>),
}

/// How a write someone waits for ended.
type Outcome = Arc<OnceLock<Result<(), String>>>;

struct Inner {
    /// The hub's connection: whoever holds it commits.
    store: Arc<Mutex<Store>>,
    queue: Mutex<Vec<(Item, Option<Outcome>)>>,
    /// `None`: the hub records nothing (a benchmark); entries are dropped.
    key: Option<Zeroizing<[u8; 32]>>,
    pruned_ms: AtomicU64,
    /// A pass on the blocking pool is due to commit entries nobody waits for.
    pass_due: AtomicBool,
}

/// The journal of the running hub. Dropping it commits what is queued.
pub struct Journal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Journal {
    /// The journal on the hub's connection to its store; audit entries are chained with the
    /// home's audit key, unless `audited` is false (a benchmark): then they are dropped.
    pub fn start(
        home: &Home,
        store: Arc<Mutex<Store>>,
        audited: bool,
    ) -> Result<Self, JournalError> {
        let key = if audited {
            Some(home.audit_key()?)
        } else {
            None
        };
        Ok(Journal {
            inner: Arc::new(Inner {
                store,
                queue: Mutex::new(Vec::new()),
                key,
                pruned_ms: AtomicU64::new(0),
                pass_due: AtomicBool::new(false),
            }),
        })
    }

    /// Makes the nonce of a call from `peer` durable (until its envelope expires at
    /// `expires_at_ms`): returns once the transaction holding it is committed.
    pub async fn spend_nonce(
        &self,
        peer: HubId,
        nonce: [u8; 16],
        expires_at_ms: u64,
    ) -> Result<(), JournalError> {
        let item = Item::Nonce {
            peer,
            nonce,
            expires_at_ms,
        };
        tokio::task::block_in_place(|| self.inner.write(item))
    }

    /// Appends `entry` to the audit chain: returns once it is committed.
    pub async fn append(&self, entry: AuditEntry) -> Result<(), JournalError> {
        tokio::task::block_in_place(|| self.inner.write(Item::Audit(Box::new(entry))))
    }

    /// Appends `entry` to the audit chain without waiting for it: it is committed by the next
    /// write someone waits for, or by a pass on the blocking pool (a failure is logged).
    pub async fn append_later(&self, entry: AuditEntry) {
        let full = {
            let mut queue = lock(&self.inner.queue);
            queue.push((Item::Audit(Box::new(entry)), None));
            queue.len() >= MAX_WAITING
        };
        if full {
            tokio::task::block_in_place(|| self.inner.lead(&lock(&self.inner.store)));
        } else if !self.inner.pass_due.swap(true, Ordering::AcqRel) {
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || inner.lead(&lock(&inner.store)));
        }
    }

    /// Returns once every write queued before is committed (the hub stops).
    pub async fn sync(&self) -> Result<(), JournalError> {
        tokio::task::block_in_place(|| {
            let store = lock(&self.inner.store);
            self.inner.lead(&store);
        });
        Ok(())
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let store = lock(&self.inner.store);
        self.inner.lead(&store);
    }
}

impl Inner {
    /// Queues `item`, then commits it (with whatever else is queued) unless the holder of the
    /// connection before this one did.
    fn write(&self, item: Item) -> Result<(), JournalError> {
        let outcome: Outcome = Arc::default();
        lock(&self.queue).push((item, Some(outcome.clone())));
        let store = lock(&self.store);
        if outcome.get().is_none() {
            self.lead(&store);
        }
        match outcome.get() {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(JournalError::Batch(e.clone())),
            None => Err(JournalError::Batch("left out of the transaction".into())),
        }
    }

    /// Commits everything queued, [`MAX_BATCH`] writes a transaction, with the connection held.
    fn lead(&self, store: &Store) {
        self.pass_due.store(false, Ordering::Release);
        loop {
            let batch: Vec<(Item, Option<Outcome>)> = {
                let mut queue = lock(&self.queue);
                let n = queue.len().min(MAX_BATCH);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                return;
            }
            let mut nonces = Vec::new();
            let mut entries = Vec::new();
            for (item, _) in &batch {
                match item {
                    Item::Nonce {
                        peer,
                        nonce,
                        expires_at_ms,
                    } => nonces.push((*peer, *nonce, *expires_at_ms)),
                    Item::Audit(entry) => entries.push((**entry).clone()),
                }
            }
            let now = unix_ms();
            let pruned = self.pruned_ms.load(Ordering::Relaxed);
            let prune = (now >= pruned + PRUNE_EVERY_MS).then(|| {
                self.pruned_ms.store(now, Ordering::Relaxed);
                now
            });
            let result = store
                .commit_batch(self.key.as_deref(), &nonces, entries, prune)
                .map(|_| ())
                .map_err(|e| e.to_string());
            if let Err(e) = &result {
                tracing::error!(
                    writes = batch.len(),
                    "journal transaction not committed (its calls are refused, its audit entries lost): {e}"
                );
            }
            for (_, outcome) in batch {
                if let Some(outcome) = outcome {
                    let _ = outcome.set(result.clone());
                }
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

    /// Writes from many tasks at once land: every nonce is in the store once its call may run,
    /// entries nobody waited for land too, and the audit chain of every entry verifies.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_land_and_the_chain_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().to_path_buf());
        let path = dir.path().join("hub.db");
        let store = Arc::new(Mutex::new(home.store().unwrap()));
        let journal = Arc::new(Journal::start(&home, store, true).unwrap());
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
                    if i % 2 == 0 {
                        journal.append(entry(i)).await.unwrap();
                    } else {
                        journal.append_later(entry(i)).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        journal.sync().await.unwrap();
        let store = Store::open(&path).unwrap();
        let entries = store.audit_entries(None, 0, None).unwrap();
        assert_eq!(entries.len(), 200);
        let head = shared_proto::audit::verify(&key, entries.iter().map(|(e, m)| (e, m)));
        assert_eq!(head.unwrap().0, 200);
        assert_eq!(store.delegation_nonces(0).unwrap().len(), 200);
        drop(journal);
    }
}
