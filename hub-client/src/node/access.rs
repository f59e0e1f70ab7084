//! How the CLI finds a running hub: two files in the home, written by `hub run` when its admin
//! API listens and removed on a clean shutdown. `api.url` holds where the API listens; `cli.token`
//! (mode 0600) an admin API token minted at start for the local CLI, named [`CLI_TOKEN_NAME`]
//! (its calls are made for the principal `local`). A stale pair left by a crash is detected by a
//! failed request. The daemon writes them, the CLI reads them, and both name them here only.

use std::net::SocketAddr;

use data_encoding::BASE64URL_NOPAD;
use rand::rngs::OsRng;
use rand::RngCore;

use crate::node::home::{Home, HomeError};
use crate::node::store::{Store, StoreError};
use crate::unix_ms;

/// Name of the API tokens `hub run` mints for the local CLI.
pub const CLI_TOKEN_NAME: &str = "cli (hub run)";

/// The principal of calls made with the CLI's token (and of `hub mcp` on this machine).
pub const LOCAL_PRINCIPAL: &str = "local";

/// The file in the home that says where the running hub's API listens.
pub const API_URL_FILE: &str = "api.url";

/// The file in the home that holds the CLI's API token (mode 0600).
pub const CLI_TOKEN_FILE: &str = "cli.token";

/// What every API token starts with.
pub const API_TOKEN_PREFIX: &str = "hubapi_";

/// An API token's text for a secret.
pub fn format_api_token(secret: &[u8; 32]) -> String {
    format!("{API_TOKEN_PREFIX}{}", BASE64URL_NOPAD.encode(secret))
}

/// The principal an API token named `name` stands for: its name, but `local` for the CLI's.
pub fn principal_of_token(name: &str) -> &str {
    if name == CLI_TOKEN_NAME {
        LOCAL_PRINCIPAL
    } else {
        name
    }
}

/// Why the CLI's access could not be published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// The data directory.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes `api.url` (the API at `addr`) and a fresh `cli.token`; older CLI tokens are deleted.
pub fn publish(home: &Home, store: &Store, addr: SocketAddr) -> Result<(), AccessError> {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let token = format_api_token(&secret);
    store.delete_api_tokens(CLI_TOKEN_NAME)?;
    store.add_api_token(
        token.as_bytes(),
        CLI_TOKEN_NAME,
        true,
        unix_ms(),
        None,
        &Default::default(),
    )?;
    home.write_secret(CLI_TOKEN_FILE, token.as_bytes())?;
    home.write_public(API_URL_FILE, format!("http://{addr}").as_bytes())?;
    Ok(())
}

/// Removes both files and the CLI's tokens (a clean shutdown).
pub fn withdraw(home: &Home, store: &Store) {
    let _ = std::fs::remove_file(home.dir().join(API_URL_FILE));
    let _ = std::fs::remove_file(home.dir().join(CLI_TOKEN_FILE));
    let _ = store.delete_api_tokens(CLI_TOKEN_NAME);
}

/// Where a running hub's API listens and the CLI's token, if both files are there (the hub may
/// still have stopped without removing them).
pub fn find(home: &Home) -> Option<(String, String)> {
    let base = std::fs::read_to_string(home.dir().join(API_URL_FILE)).ok()?;
    let token = std::fs::read_to_string(home.dir().join(CLI_TOKEN_FILE)).ok()?;
    Some((base.trim().to_owned(), token.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `hub run` publishes is what the CLI finds, the token works against the store as an
    /// admin token, and withdrawing removes all of it.
    #[test]
    fn published_access_is_found_and_withdrawn() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let store = home.store().unwrap();
        assert_eq!(find(&home), None);
        publish(&home, &store, "127.0.0.1:7780".parse().unwrap()).unwrap();
        let (url, token) = find(&home).unwrap();
        assert_eq!(url, "http://127.0.0.1:7780");
        assert!(token.starts_with(API_TOKEN_PREFIX));
        let found = store
            .use_api_token(token.as_bytes(), unix_ms())
            .unwrap()
            .unwrap();
        assert!(found.admin);
        assert_eq!(principal_of_token(&found.name), LOCAL_PRINCIPAL);
        assert_eq!(principal_of_token("ann"), "ann");
        withdraw(&home, &store);
        assert_eq!(find(&home), None);
        assert!(store
            .use_api_token(token.as_bytes(), unix_ms())
            .unwrap()
            .is_none());
    }
}
