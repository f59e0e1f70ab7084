//! The login nonces of one room, kept in the state directory so that a login captured before
//! `hub relay` restarts cannot be replayed after it (the Worker keeps them in Durable Object
//! storage for the same reason).
//!
//! The file is a sequence of 24-byte records, `nonce: [16] | timestamp_ms: u64` (big-endian),
//! appended as logins are accepted, before the hub is welcomed. It is rewritten with only the
//! nonces that can still be replayed when the room opens it and after every [`COMPACT_EVERY`]
//! appends, so it holds at most the room's live nonces plus that many.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use shared_proto::trust::login::LoginNonce;

const RECORD: usize = 24;

/// Appends between two rewrites of the file.
pub const COMPACT_EVERY: usize = 4096;

/// One room's nonce file, open for appending.
#[derive(Debug)]
pub(crate) struct NonceLog {
    path: PathBuf,
    file: File,
    appended: usize,
}

impl NonceLog {
    /// Opens (or creates) the file at `path`, keeps the nonces still live at `now_ms` and
    /// returns them, for the room to remember.
    pub(crate) fn open(path: PathBuf, now_ms: u64) -> io::Result<(Self, Vec<LoginNonce>)> {
        let live = compact(&path, now_ms)?;
        let file = OpenOptions::new().append(true).create(true).open(&path)?;
        let log = NonceLog {
            path,
            file,
            appended: 0,
        };
        Ok((log, live))
    }

    /// Records an accepted login.
    pub(crate) fn append(&mut self, login: &LoginNonce, now_ms: u64) -> io::Result<()> {
        let mut record = [0u8; RECORD];
        record[..16].copy_from_slice(&login.nonce);
        record[16..].copy_from_slice(&login.timestamp_ms.to_be_bytes());
        self.file.write_all(&record)?;
        self.appended += 1;
        if self.appended >= COMPACT_EVERY {
            compact(&self.path, now_ms)?;
            self.file = OpenOptions::new().append(true).open(&self.path)?;
            self.appended = 0;
        }
        Ok(())
    }
}

/// Rewrites the file with the nonces live at `now_ms` (write, then rename: a crash leaves the
/// old file or the new one) and returns them. A torn last record (a crash mid-append) is
/// dropped.
fn compact(path: &Path, now_ms: u64) -> io::Result<Vec<LoginNonce>> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let live: Vec<LoginNonce> = bytes
        .chunks_exact(RECORD)
        .filter_map(|r| {
            let nonce: [u8; 16] = r[..16].try_into().ok()?;
            let timestamp_ms = u64::from_be_bytes(r[16..].try_into().ok()?);
            let login = LoginNonce {
                nonce,
                timestamp_ms,
            };
            login.is_live(now_ms).then_some(login)
        })
        .collect();
    let tmp = path.with_extension("nonces.tmp");
    let mut out = Vec::with_capacity(live.len() * RECORD);
    for login in &live {
        out.extend_from_slice(&login.nonce);
        out.extend_from_slice(&login.timestamp_ms.to_be_bytes());
    }
    std::fs::write(&tmp, &out)?;
    std::fs::rename(&tmp, path)?;
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::trust::login::MAX_SKEW_MS;

    fn login(b: u8, timestamp_ms: u64) -> LoginNonce {
        LoginNonce {
            nonce: [b; 16],
            timestamp_ms,
        }
    }

    #[test]
    fn live_nonces_survive_reopening_and_expired_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("room.nonces");
        let (mut log, live) = NonceLog::open(path.clone(), 1_000_000).unwrap();
        assert!(live.is_empty());
        log.append(&login(1, 1_000_000), 1_000_000).unwrap();
        log.append(&login(2, 1_000_000 + MAX_SKEW_MS), 1_000_000)
            .unwrap();
        drop(log);
        // A torn record at the end (a crash mid-write) is ignored.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[7; 10]).unwrap();
        drop(f);
        let later = 1_000_000 + MAX_SKEW_MS + 1;
        let (_log, live) = NonceLog::open(path.clone(), later).unwrap();
        assert_eq!(live, vec![login(2, 1_000_000 + MAX_SKEW_MS)]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), RECORD as u64);
    }

    #[test]
    fn the_file_is_compacted_as_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("room.nonces");
        let (mut log, _) = NonceLog::open(path.clone(), 0).unwrap();
        for i in 0..COMPACT_EVERY * 3 {
            // Each login a second later than the previous: only the last minute's stay live.
            let now = i as u64 * 1000;
            let mut nonce = login(0, now);
            nonce.nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
            log.append(&nonce, now).unwrap();
        }
        let records = std::fs::metadata(&path).unwrap().len() as usize / RECORD;
        assert!(records <= COMPACT_EVERY + 61, "{records} records");
    }
}
