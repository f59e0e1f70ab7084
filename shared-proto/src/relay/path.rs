//! The relay's URL layout: `GET /v1/clusters/{cluster_id}/connect` (WebSocket upgrade).

use crate::trust::ClusterId;

/// Whether `id` may name a cluster: 32 characters of lowercase base32 (`a-z 2-7`), the form of a
/// [`ClusterId`] (URL-safe, so it names one Durable Object unambiguously).
pub fn is_valid_cluster_id(id: &str) -> bool {
    id.parse::<ClusterId>().is_ok()
}

/// The text both relays answer for a connect URL whose cluster id is malformed.
pub const BAD_CLUSTER_ID: &str =
    "a cluster id is 32 characters of a-z and 2-7 (base32 of the CA key hash)\n";

/// What a request path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/`: the health text.
    Health,
    /// `/v1/clusters/{id}/connect` with a valid id.
    Connect(&'a str),
    /// `/v1/clusters/{id}/connect` with an id that is not valid.
    BadClusterId,
    /// Anything else.
    NotFound,
}

/// Routes a request path (without the query string).
pub fn route(path: &str) -> Route<'_> {
    if path == "/" {
        return Route::Health;
    }
    let Some(rest) = path.strip_prefix("/v1/clusters/") else {
        return Route::NotFound;
    };
    let Some(id) = rest.strip_suffix("/connect") else {
        return Route::NotFound;
    };
    if is_valid_cluster_id(id) {
        Route::Connect(id)
    } else {
        Route::BadClusterId
    }
}

/// The connect path for a cluster.
pub fn connect_path(cluster_id: &str) -> String {
    format!("/v1/clusters/{cluster_id}/connect")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let id = "gr2q7gf5lh6pzfdnurnkvputhpqvjjfv";
        assert_eq!(route("/"), Route::Health);
        assert_eq!(route(&connect_path(id)), Route::Connect(id));
        assert_eq!(route("/v1/clusters//connect"), Route::BadClusterId);
        assert_eq!(route("/v1/clusters/a%20b/connect"), Route::BadClusterId);
        assert_eq!(route("/v1/clusters/a/b/connect"), Route::BadClusterId);
        let upper = connect_path(&id.to_uppercase());
        assert_eq!(route(&upper), Route::BadClusterId);
        assert_eq!(route(&connect_path(&format!("{id}a"))), Route::BadClusterId);
        assert_eq!(route("/v2/clusters/a/connect"), Route::NotFound);
        assert_eq!(route("/v1/clusters/a"), Route::NotFound);
    }
}
