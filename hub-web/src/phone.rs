//! The phone's own app, `phone`: tools that use what only the phone has (its position, its
//! screen, the person holding it), served to the other hubs of the cluster like any hub's app:
//! shared with nobody until the person says so (`local`, default deny), each tool needing the
//! trust its kind asks for, every call checked in the order docs/PROTOCOL.md section 13 gives and
//! audited.
//!
//! | tool | kind | what the page does |
//! |---|---|---|
//! | `location` | read-only | the browser's Geolocation: latitude, longitude, accuracy |
//! | `notify` | write | shows a notification (`title`, `body`) |
//! | `ask` | write | shows `question` (and `choices`, if any) to the person holding the phone and returns the answer; a refusal at the call's deadline |

use serde_json::{json, Map, Value};
use shared_proto::agent::nonces::Nonces;
use shared_proto::agent::policy::{check_call, trust_needed, Caller, Sharing, ToolHints};
use shared_proto::agent::{arguments, CallErrorCode, SignedDelegation};
use shared_proto::session::rpc::{CallRequest, Listing};
use shared_proto::trust::VerifiedPeer;
use shared_proto::HubId;

/// The app's name.
pub const APP: &str = "phone";

/// One tool of the phone app.
#[derive(Debug, Clone, Copy)]
pub struct PhoneTool {
    /// Its name.
    pub name: &'static str,
    /// What it does, for agents.
    pub description: &'static str,
    /// Its kind.
    pub hints: ToolHints,
}

const READ_ONLY: ToolHints = ToolHints {
    read_only: true,
    destructive: false,
};
const WRITE: ToolHints = ToolHints {
    read_only: false,
    destructive: false,
};

/// The tools, in the order they are listed.
pub const TOOLS: [PhoneTool; 3] = [
    PhoneTool {
        name: "location",
        description: "Where the phone is now (the browser's Geolocation): latitude and longitude \
                      in degrees, accuracy in metres.",
        hints: READ_ONLY,
    },
    PhoneTool {
        name: "notify",
        description: "Shows a notification on the phone: a title and a body.",
        hints: WRITE,
    },
    PhoneTool {
        name: "ask",
        description: "Asks the person holding the phone a question and returns the answer (one \
                      of `choices` if given, else their text); refused if nobody answers before \
                      the call's deadline. For approvals: ask the owner before acting.",
        hints: WRITE,
    },
];

fn schema(tool: &str) -> Value {
    match tool {
        "notify" => json!({
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 200},
                "body": {"type": "string", "maxLength": 2000}
            },
            "required": ["title"]
        }),
        "ask" => json!({
            "type": "object",
            "properties": {
                "question": {"type": "string", "maxLength": 2000},
                "choices": {"type": "array", "items": {"type": "string", "maxLength": 200}, "maxItems": 8}
            },
            "required": ["question"]
        }),
        _ => json!({"type": "object", "properties": {}}),
    }
}

/// A tool as MCP lists it (name, description, input schema, annotations).
pub fn listed(tool: &PhoneTool) -> Value {
    json!({
        "name": tool.name,
        "description": tool.description,
        "inputSchema": schema(tool.name),
        "annotations": {
            "readOnlyHint": tool.hints.read_only,
            "destructiveHint": tool.hints.destructive,
        }
    })
}

/// What the phone shares with `cert`'s hub for a listing: the app, with the tools its trust level
/// (and a signed listing's scopes) may call, if the policy admits it; nothing otherwise. The JSON
/// of the answer (hubs answer apps requests with an array of apps).
pub fn listing(
    sharing: &Sharing,
    cert: &VerifiedPeer,
    me: HubId,
    listing: &Listing,
    now_ms: u64,
) -> Result<Vec<u8>, CallErrorCode> {
    let delegation = listing.delegation(cert, me, now_ms)?;
    let caller = Caller::of(cert, delegation.as_ref().map(|d| d.principal.as_str()));
    let scoped = |tool: Option<&str>| delegation.as_ref().is_none_or(|d| d.allows(APP, tool));
    let mut apps = Vec::new();
    if sharing.admits(&caller) && scoped(None) {
        let tools: Vec<Value> = TOOLS
            .iter()
            .filter(|t| caller.trust >= trust_needed(t.hints, None) && scoped(Some(t.name)))
            .map(listed)
            .collect();
        apps.push(json!({"name": APP, "available": true, "tools": tools}));
    }
    Ok(serde_json::to_vec(&apps).unwrap_or_default())
}

/// A call of the phone app that passed every check: what the page is to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    /// The tool.
    pub tool: &'static str,
    /// Its arguments.
    pub arguments: Map<String, Value>,
    /// The principal the calling hub signed.
    pub principal: String,
}

/// Every check of a call of the phone app, in the order docs/PROTOCOL.md section 13 gives: the
/// envelope (signer, target, time, app, tool, arguments' hash), the arguments (canonical JSON,
/// what the tool receives), the scopes, the sharing policy, the tool and the trust it needs, and
/// last the nonce (spent only by a call that passed every other check). The first refusal that
/// applies, with its code.
pub fn check(
    sharing: &Sharing,
    cert: &VerifiedPeer,
    me: HubId,
    call: &CallRequest,
    nonces: &mut Nonces,
    now_ms: u64,
) -> Result<Admitted, (CallErrorCode, String)> {
    let no = |code: CallErrorCode| (code, code.to_string());
    let signed = SignedDelegation::decode(&call.envelope).map_err(no)?;
    call.check_envelope(&signed, cert.identity_key(), me, now_ms)
        .map_err(no)?;
    let arguments = arguments::received(&call.arguments)
        .map_err(|e| (e.code(), e.to_string()))?
        .unwrap_or_default();
    let delegation = signed.delegation;
    if !delegation.allows(&call.app, Some(&call.tool)) {
        return Err(no(CallErrorCode::ScopeDenied));
    }
    let caller = Caller::of(cert, Some(&delegation.principal));
    if call.app != APP || !sharing.admits(&caller) {
        return Err(no(CallErrorCode::NotShared));
    }
    let tool = TOOLS
        .iter()
        .find(|t| t.name == call.tool)
        .ok_or_else(|| no(CallErrorCode::UnknownTool))?;
    check_call(sharing, None, tool.hints, &caller).map_err(no)?;
    nonces
        .take(
            call.from,
            delegation.nonce,
            delegation.expires_at_ms,
            now_ms,
        )
        .map_err(|refusal| (CallErrorCode::Replayed, refusal.to_string()))?;
    Ok(Admitted {
        tool: tool.name,
        arguments,
        principal: delegation.principal,
    })
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use shared_proto::agent::envelope::{ALL_SCOPES, ENVELOPE_V2};
    use shared_proto::agent::{arguments_hash, Delegation};
    use shared_proto::trust::TrustLevel;
    use CallErrorCode::*;

    use super::*;
    use crate::testing::{ca, hub, TestHub, NOW};

    const PHONE: HubId = HubId([9; 16]);

    /// A call of `tool` with `arguments` from `from` to the phone, signed by `key` after `edit`.
    fn call(
        from: &TestHub,
        key: &SigningKey,
        tool: &str,
        arguments: &str,
        edit: impl FnOnce(&mut Delegation),
    ) -> CallRequest {
        let mut d = Delegation {
            version: ENVELOPE_V2,
            origin: from.cert.hub_id(),
            target: PHONE,
            issued_at_ms: NOW - 1_000,
            expires_at_ms: NOW + 30_000,
            nonce: rand::random(),
            arguments_sha256: arguments_hash(arguments.as_bytes()),
            principal: "ann".into(),
            app: APP.into(),
            tool: tool.into(),
            scopes: vec![ALL_SCOPES.into()],
        };
        edit(&mut d);
        CallRequest {
            from: from.cert.hub_id(),
            token: 1,
            timeout_ms: 30_000,
            deadline_ms: NOW + 30_000,
            app: APP.into(),
            tool: tool.into(),
            envelope: d.sign(key).unwrap(),
            arguments: arguments.as_bytes().to_vec(),
        }
    }

    fn check_one(
        sharing: &str,
        from: &TestHub,
        c: &CallRequest,
    ) -> Result<Admitted, CallErrorCode> {
        let sharing: Sharing = sharing.parse().unwrap();
        check(&sharing, &from.cert, PHONE, c, &mut Nonces::new(), NOW).map_err(|(code, _)| code)
    }

    #[test]
    fn every_refusal_of_a_call_of_the_phone_has_its_own_code() {
        let ca = ca(1);
        let desk = hub(&ca, 1, TrustLevel::AgentDispatch);
        let reader = hub(&ca, 2, TrustLevel::ReadOnly);
        let key = desk.identity.clone();
        let ok = call(&desk, &key, "ask", r#"{"question":"Deploy?"}"#, |_| {});
        let admitted = check_one("cluster", &desk, &ok).unwrap();
        assert_eq!(admitted.tool, "ask");
        assert_eq!(admitted.principal, "ann");
        assert_eq!(admitted.arguments["question"], "Deploy?");

        let cases: Vec<(&str, &TestHub, CallRequest, CallErrorCode)> = vec![
            ("local", &desk, ok.clone(), NotShared),
            ("principals:bob@*", &desk, ok.clone(), NotShared),
            ("roles:kitchen", &desk, ok.clone(), NotShared),
            (
                "cluster",
                &desk,
                call(
                    &desk,
                    &SigningKey::from_bytes(&[7; 32]),
                    "ask",
                    "{}",
                    |_| {},
                ),
                WrongSigner,
            ),
            (
                "cluster",
                &desk,
                call(&desk, &key, "ask", "{}", |d| d.target = HubId([8; 16])),
                WrongTarget,
            ),
            (
                "cluster",
                &desk,
                call(&desk, &key, "ask", "{}", |d| {
                    d.issued_at_ms = NOW - 70_000;
                    d.expires_at_ms = NOW - 10_000;
                }),
                Expired,
            ),
            (
                "cluster",
                &desk,
                call(&desk, &key, "ask", r#"{"b":1,"a":2}"#, |_| {}),
                ArgumentsMismatch,
            ),
            (
                "cluster",
                &desk,
                call(&desk, &key, "ask", "{}", |d| d.arguments_sha256 = [0; 32]),
                ArgumentsMismatch,
            ),
            (
                "cluster",
                &desk,
                call(&desk, &key, "ask", "{}", |d| {
                    d.scopes = vec!["app:phone/location".into()]
                }),
                ScopeDenied,
            ),
            (
                "cluster",
                &desk,
                call(&desk, &key, "camera", "{}", |_| {}),
                UnknownTool,
            ),
            (
                "cluster",
                &reader,
                call(
                    &reader,
                    &reader.identity,
                    "notify",
                    r#"{"title":"x"}"#,
                    |_| {},
                ),
                TrustTooLow,
            ),
        ];
        for (sharing, from, c, code) in cases {
            assert_eq!(
                check_one(sharing, from, &c).map(|_| ()),
                Err(code),
                "{sharing} {code}"
            );
        }
        // A read-only hub may read the position; a principal named with its hub is admitted.
        let locate = call(&reader, &reader.identity, "location", "{}", |_| {});
        assert!(check_one("cluster", &reader, &locate).is_ok());
        assert!(check_one("principals:ann@hub 1", &desk, &ok).is_ok());
    }

    #[test]
    fn a_call_runs_once_and_its_nonce_is_spent_only_when_it_passes() {
        let ca = ca(1);
        let desk = hub(&ca, 1, TrustLevel::AgentDispatch);
        let c = call(&desk, &desk.identity, "location", "{}", |_| {});
        let mut nonces = Nonces::new();
        let cluster = Sharing::Cluster;
        // Refused by the policy first: the nonce stays unspent.
        let refused = check(&Sharing::LocalOnly, &desk.cert, PHONE, &c, &mut nonces, NOW);
        assert_eq!(refused.map(|_| ()).map_err(|e| e.0), Err(NotShared));
        assert!(check(&cluster, &desk.cert, PHONE, &c, &mut nonces, NOW).is_ok());
        let again = check(&cluster, &desk.cert, PHONE, &c, &mut nonces, NOW + 1);
        assert_eq!(again.map(|_| ()).map_err(|e| e.0), Err(Replayed));
    }

    #[test]
    fn a_listing_shows_the_tools_the_caller_may_call_and_nothing_unshared() {
        let ca = ca(1);
        let desk = hub(&ca, 1, TrustLevel::AgentDispatch);
        let reader = hub(&ca, 2, TrustLevel::ReadOnly);
        let unsigned = Listing::Unsigned {
            principal: "ann".into(),
        };
        let tools = |sharing: &str, who: &TestHub, asked: &Listing| -> Vec<String> {
            let body = listing(&sharing.parse().unwrap(), &who.cert, PHONE, asked, NOW).unwrap();
            let apps: Vec<Value> = serde_json::from_slice(&body).unwrap();
            apps.iter()
                .flat_map(|a| a["tools"].as_array().unwrap().clone())
                .map(|t| t["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert!(tools("local", &desk, &unsigned).is_empty());
        assert_eq!(
            tools("cluster", &desk, &unsigned),
            ["location", "notify", "ask"]
        );
        assert_eq!(tools("cluster", &reader, &unsigned), ["location"]);
        // A signed listing for a principal scoped to one tool sees that tool.
        let envelope = Delegation {
            version: ENVELOPE_V2,
            origin: desk.cert.hub_id(),
            target: PHONE,
            issued_at_ms: NOW,
            expires_at_ms: NOW + 5_000,
            nonce: [1; 16],
            arguments_sha256: arguments_hash(b""),
            principal: "ann".into(),
            app: String::new(),
            tool: String::new(),
            scopes: vec!["app:phone/ask".into()],
        }
        .sign(&desk.identity)
        .unwrap();
        let signed = Listing::Signed { envelope };
        assert_eq!(tools("cluster", &desk, &signed), ["ask"]);
        assert_eq!(tools("principals:ann@hub 1", &desk, &signed), ["ask"]);
        // Signed by another key: refused.
        let forged = listing(&Sharing::Cluster, &reader.cert, PHONE, &signed, NOW);
        assert_eq!(forged, Err(WrongSigner));
    }
}
