//! The relay's URL layout: `GET /v1/clusters/{cluster_id}/connect` (WebSocket upgrade).

/// Longest cluster id accepted in a URL.
pub const MAX_CLUSTER_ID_LEN: usize = 64;

/// Whether `id` may name a cluster: 1 to 64 characters of `A-Z a-z 0-9 - _` (URL-safe, so it
/// needs no escaping and names one Durable Object unambiguously).
pub fn is_valid_cluster_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CLUSTER_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

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
        assert_eq!(route("/"), Route::Health);
        assert_eq!(
            route("/v1/clusters/abc_D-9/connect"),
            Route::Connect("abc_D-9")
        );
        assert_eq!(route(&connect_path("x")), Route::Connect("x"));
        assert_eq!(route("/v1/clusters//connect"), Route::BadClusterId);
        assert_eq!(route("/v1/clusters/a%20b/connect"), Route::BadClusterId);
        assert_eq!(route("/v1/clusters/a/b/connect"), Route::BadClusterId);
        assert_eq!(
            route(&format!("/v1/clusters/{}/connect", "a".repeat(65))),
            Route::BadClusterId
        );
        assert_eq!(route("/v2/clusters/a/connect"), Route::NotFound);
        assert_eq!(route("/v1/clusters/a"), Route::NotFound);
    }
}
