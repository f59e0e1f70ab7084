//! What the hub keeps on its machine: the data directory (keys loaded from 0600 files, the
//! certificate, the founder's CA operations) and the SQLite store with its migrations.
//!
//! - [`home`]: the data directory and the operations that change it (create, join, invite,
//!   revoke, keep documents);
//! - [`store`]: the SQLite store (peers, pairing and API token hashes, signed documents);
//! - [`audit`]: the federation audit log kept in the store, HMAC-chained under `audit.key`;
//! - [`backup`]: the founder's cluster backup (the CA key and the signed documents, encrypted
//!   under a passphrase) and restoring it into a new home;
//! - [`access`]: the files through which the CLI finds the running hub's API.

pub mod access;
pub mod audit;
pub mod backup;
pub mod home;
pub mod journal;
pub mod rotation;
pub mod store;
