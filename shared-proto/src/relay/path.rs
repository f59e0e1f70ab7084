//! The relay's URL layout: `GET /v1/clusters/{cluster_id}/connect?hub={hub_id}` (WebSocket
//! upgrade).
//!
//! The hub names itself in the query so that the relay can refuse a hub it keeps out (closed
//! with `4009` for flooding) before it opens a WebSocket for it: a refused hub that reconnects
//! at once costs the relay one HTTP answer, not a socket, a login and whatever it wrote before
//! the close reached it. The `Hello` must then name the same hub. A client written before the
//! query existed (protocol version 1 as first published) names none: it is still served, and a
//! kept-out hub among such clients is refused at its `Hello` instead.

use crate::relay::frame::HubId;
use crate::trust::ClusterId;

/// Whether `id` may name a cluster: 32 characters of lowercase base32 (`a-z 2-7`), the form of a
/// [`ClusterId`] (URL-safe, so it names one Durable Object unambiguously).
pub fn is_valid_cluster_id(id: &str) -> bool {
    id.parse::<ClusterId>().is_ok()
}

/// The text both relays answer for a connect URL whose cluster id is malformed.
pub const BAD_CLUSTER_ID: &str =
    "a cluster id is 32 characters of a-z and 2-7 (base32 of the CA key hash)\n";

/// The text both relays answer (with `400`) for a connect URL whose `hub=` is not one hub id.
pub const BAD_HUB: &str =
    "name the connecting hub once in the query: /v1/clusters/{cluster_id}/connect?hub={hub_id} (32 hex digits)\n";

/// A connect URL's `hub=` that is not exactly one hub id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the query's hub= is not one hub id of 32 hex digits")]
pub struct BadHub;

/// The status both relays answer while the connecting hub is kept out for its rate.
pub const KEPT_OUT_STATUS: u16 = 429;

/// The body of the [`KEPT_OUT_STATUS`] answer, for a hub refused for `wait_ms` more; the answer
/// also carries `Retry-After` ([`retry_after_secs`]).
pub fn kept_out_text(wait_ms: u64) -> String {
    format!(
        "rate-limited: this hub was closed with 4009 for flooding and is kept out for {} s more\n",
        retry_after_secs(wait_ms)
    )
}

/// `Retry-After` for a wait, in whole seconds, rounded up (at least 1).
pub fn retry_after_secs(wait_ms: u64) -> u64 {
    wait_ms.div_ceil(1000).max(1)
}

/// Where the relay serves the phone page (a hub in the browser), from the Worker's static assets.
pub const PAGE: &str = "/phone";

/// The phone page's URL on the relay at `relay_url` (its WebSocket or HTTP base URL), with
/// `fragment` after `#` (a pairing token, `token=hubpair1_...`: a fragment is never sent to a
/// server).
pub fn page_url(relay_url: &str, fragment: &str) -> String {
    let base = relay_url.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if let Some(rest) = base.strip_prefix("ws://") {
        format!("http://{rest}")
    } else {
        base.to_owned()
    };
    format!("{base}{PAGE}/#{fragment}")
}

/// The `Content-Type` of a file of the phone page, by its name.
pub fn page_content_type(file: &str) -> &'static str {
    match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("webmanifest") => "application/manifest+json",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// What a relay answers for the phone page when it was deployed without it.
pub const NO_PAGE: &str = "this relay was deployed without the phone page: build it with scripts/build-web, then deploy again (or serve `hub web export DIR` from any HTTPS host)\n";

/// What a request path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/`: the health text.
    Health,
    /// `/v1/clusters/{id}/connect` with a valid id.
    Connect(&'a str),
    /// `/v1/clusters/{id}/connect` with an id that is not valid.
    BadClusterId,
    /// The phone page: [`PAGE`] itself (redirected to [`PAGE`]`/`), or a file under it (the
    /// path from [`PAGE`] on, `/` naming `index.html`).
    Page(&'a str),
    /// Anything else.
    NotFound,
}

/// Routes a request path (without the query string).
pub fn route(path: &str) -> Route<'_> {
    if path == "/" {
        return Route::Health;
    }
    if path == PAGE || path.starts_with(PAGE) && path[PAGE.len()..].starts_with('/') {
        return Route::Page(&path[PAGE.len()..]);
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

/// The connect path for a cluster (without the query, [`connect_query`]).
pub fn connect_path(cluster_id: &str) -> String {
    format!("/v1/clusters/{cluster_id}/connect")
}

/// The connect query for a hub.
pub fn connect_query(hub: &HubId) -> String {
    format!("hub={hub}")
}

/// The hub a connect URL's query names (`hub=` followed by 32 hex digits, among `&`-separated
/// pairs): `Ok(None)` if it names none; [`BadHub`] if `hub=` is there but not exactly one id.
pub fn claimed_hub(query: Option<&str>) -> Result<Option<HubId>, BadHub> {
    let mut named = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.strip_prefix("hub="));
    let Some(hub) = named.next() else {
        return Ok(None);
    };
    if named.next().is_some() || hub.len() != 32 {
        return Err(BadHub);
    }
    hub.parse().map(Some).map_err(|_| BadHub)
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
        assert_eq!(route("/phone"), Route::Page(""));
        assert_eq!(route("/phone/"), Route::Page("/"));
        assert_eq!(
            route("/phone/pkg/hub_web.js"),
            Route::Page("/pkg/hub_web.js")
        );
        assert_eq!(route("/phones"), Route::NotFound);
        assert_eq!(
            page_url("wss://relay.example.workers.dev/", "token=t"),
            "https://relay.example.workers.dev/phone/#token=t"
        );
        assert_eq!(
            page_url("ws://127.0.0.1:8787/base", "x"),
            "http://127.0.0.1:8787/base/phone/#x"
        );
        assert_eq!(
            page_content_type("/phone/pkg/hub_web.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            page_content_type("/phone/pkg/hub_web_bg.wasm"),
            "application/wasm"
        );
    }

    #[test]
    fn the_query_names_exactly_one_hub() {
        let hub = HubId([0xab; 16]);
        assert_eq!(claimed_hub(Some(&connect_query(&hub))), Ok(Some(hub)));
        let other = format!("x=1&{}&y", connect_query(&hub));
        assert_eq!(claimed_hub(Some(&other)), Ok(Some(hub)));
        // None named: served (protocol 1 as first published).
        assert_eq!(claimed_hub(None), Ok(None));
        assert_eq!(claimed_hub(Some("")), Ok(None));
        assert_eq!(claimed_hub(Some("other=1")), Ok(None));
        assert_eq!(claimed_hub(Some("hub=")), Err(BadHub));
        assert_eq!(claimed_hub(Some("hub=abab")), Err(BadHub));
        assert_eq!(
            claimed_hub(Some(&format!("hub={}", "z".repeat(32)))),
            Err(BadHub)
        );
        let twice = format!("{0}&{0}", connect_query(&hub));
        assert_eq!(claimed_hub(Some(&twice)), Err(BadHub));
    }

    #[test]
    fn a_kept_out_hub_is_told_when_to_come_back() {
        assert_eq!(retry_after_secs(0), 1);
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(10_000), 10);
        assert_eq!(retry_after_secs(10_001), 11);
        assert!(kept_out_text(9_500).contains("kept out for 10 s"));
        assert!(kept_out_text(9_500).starts_with("rate-limited"));
    }
}
