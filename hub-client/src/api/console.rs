//! The operator console: one page at `/`, its script, style and the chart library, all
//! embedded in the binary (no CDN at run time), and what keeps the API safe to serve to a
//! browser: every answer carries a Content-Security-Policy and no-sniff/no-frame headers, and
//! a request whose `Host` is not loopback-or-IP-literal, or whose `Origin` is not the page's own,
//! is refused (against DNS rebinding and cross-site requests). The page signs in with an API
//! token it keeps in the tab's session storage and sends as a bearer header (never a cookie, so
//! no cross-site request carries it), and follows changes through `/api/events`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::Stream;
use serde_json::json;

use super::{ApiError, Authed, Shared};

const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");
const UPLOT_JS: &str = include_str!("../../console/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../console/vendor/uPlot.min.css");

/// What the page may load and where it may connect: itself only. Images may be `data:` (the
/// pairing QR code is an inline SVG image).
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// How often a console's event stream looks for changes.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Most event streams open at once (each polls the audit head); past that, `429`.
pub(crate) const MAX_WATCHERS: usize = 16;

/// The places for event streams ([`MAX_WATCHERS`]), shared by the router's handlers.
#[derive(Debug, Clone)]
pub(crate) struct Watchers(std::sync::Arc<tokio::sync::Semaphore>);

impl Default for Watchers {
    fn default() -> Self {
        Watchers(std::sync::Arc::new(tokio::sync::Semaphore::new(
            MAX_WATCHERS,
        )))
    }
}

/// `GET /`: the page.
pub(crate) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /console/{file}`: its assets.
pub(crate) async fn file(Path(name): Path<String>) -> Result<Response, ApiError> {
    let (kind, body) = match name.as_str() {
        "console.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "console.css" => ("text/css; charset=utf-8", STYLE),
        "uPlot.iife.min.js" => ("text/javascript; charset=utf-8", UPLOT_JS),
        "uPlot.min.css" => ("text/css; charset=utf-8", UPLOT_CSS),
        _ => return Err(ApiError::not_found("no such file")),
    };
    Ok(asset(kind, body))
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Whether `host` (a `Host` header) names this machine without a DNS name: `localhost` or an
/// IP literal, with an optional port. A page served under any other name could be a DNS
/// rebinding of an attacker's name to 127.0.0.1.
fn host_allowed(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || is_port(port) => {
                return v6.parse::<std::net::Ipv6Addr>().is_ok()
            }
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        },
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Whether `host` (a `Host` header) names this machine's loopback: `localhost`, `127.0.0.0/8`
/// or `[::1]`, with an optional port. What `/mcp` takes: an agent on this machine.
pub(crate) fn host_is_loopback(host: &str) -> bool {
    if !host_allowed(host) {
        return false;
    }
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn is_port(text: &str) -> bool {
    text.strip_prefix(':')
        .unwrap_or(text)
        .parse::<u16>()
        .is_ok()
}

/// Refuses a foreign `Host` (`421`) or `Origin` (`403`), and sets the security headers on every
/// answer.
pub(crate) async fn guard(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut response = if !host_allowed(&host) {
        ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "host_refused",
            "the API answers only to localhost or an IP address (Host header)",
        )
        .into_response()
    } else if !origin_allowed(headers, &host) {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_refused",
            "requests from another origin are refused",
        )
        .into_response()
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// A request without `Origin` (the CLI, agents, same-origin `GET`s) passes; one with it must
/// come from `http://{host}` itself.
fn origin_allowed(headers: &HeaderMap, host: &str) -> bool {
    match headers.get(header::ORIGIN) {
        None => true,
        Some(origin) => origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(host)),
    }
}

/// What a console's event stream has told so far.
struct Watch {
    online: std::collections::BTreeSet<shared_proto::HubId>,
    head: u64,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// `GET /api/events`: server-sent events, one `change` event (`{"peers": [online ids],
/// "audit_seq": n}`) whenever the set of peers online or the audit log's head changes (every
/// call, pairing, revocation and policy change is an audit entry), checked every 500 ms, and a
/// comment every 15 s to keep the stream open.
pub(crate) async fn events(
    State(state): State<Shared>,
    Extension(watchers): Extension<Watchers>,
    _: Authed,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let permit = watchers.0.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            format!("at most {MAX_WATCHERS} event streams are open at once"),
        )
    })?;
    let head = audit_seq(&state).await?;
    let watch = Watch {
        online: state.book.online(),
        head,
        _permit: permit,
    };
    let first = change(&watch);
    let stream = futures_util::stream::unfold(
        (state, watch, Some(first)),
        |(state, mut watch, first)| async move {
            if let Some(first) = first {
                return Some((Ok(first), (state, watch, None)));
            }
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                let online = state.book.online();
                let head = audit_seq(&state).await.unwrap_or(watch.head);
                if online != watch.online || head != watch.head {
                    watch.online = online;
                    watch.head = head;
                    let event = change(&watch);
                    return Some((Ok(event), (state, watch, None)));
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn change(watch: &Watch) -> Event {
    let peers: Vec<String> = watch.online.iter().map(ToString::to_string).collect();
    Event::default()
        .event("change")
        .data(json!({ "peers": peers, "audit_seq": watch.head }).to_string())
}

async fn audit_seq(state: &Shared) -> Result<u64, ApiError> {
    Ok(state.audit_seq().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_and_ip_literals_are_hosts() {
        for ok in [
            "127.0.0.1:7070",
            "127.0.0.1",
            "localhost:7070",
            "LOCALHOST",
            "[::1]:7070",
            "[::1]",
            "192.168.1.20:7070",
        ] {
            assert!(host_allowed(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example:7070",
            "127.0.0.1.nip.io:7070",
            "localhost.evil:7070",
            "127.0.0.1:port",
            "[::1]x",
            "[nope]:7070",
            "127.0.0.1:70000",
        ] {
            assert!(!host_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn only_loopback_hosts_reach_mcp() {
        for ok in [
            "localhost",
            "LOCALHOST:7",
            "127.0.0.1:80",
            "127.9.9.9",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(host_is_loopback(ok), "{ok}");
        }
        for no in [
            "192.168.1.2:80",
            "10.0.0.1",
            "[fe80::1]:80",
            "evil.example",
            "",
            "0.0.0.0",
        ] {
            assert!(!host_is_loopback(no), "{no}");
        }
    }

    #[test]
    fn an_origin_must_be_the_page_itself() {
        let mut h = HeaderMap::new();
        assert!(origin_allowed(&h, "127.0.0.1:7070"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7070"),
        );
        assert!(origin_allowed(&h, "127.0.0.1:7070"));
        assert!(!origin_allowed(&h, "127.0.0.1:7071"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!origin_allowed(&h, "127.0.0.1:7070"));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!origin_allowed(&h, "127.0.0.1:7070"));
    }
}
