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
use shared_proto::agent::{CallErrorCode, SignedDelegation};
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
    let delegation = match listing {
        Listing::Unsigned { .. } => None,
        Listing::Signed { envelope } => {
            let signed = SignedDelegation::decode(envelope)?;
            let listing_name = shared_proto::agent::LISTING;
            signed.check(
                cert.hub_id(),
                cert.identity_key(),
                me,
                now_ms,
                listing_name,
                listing_name,
                b"",
            )?;
            Some(signed.delegation)
        }
    };
    let caller = Caller {
        hub: cert.hub_id(),
        hub_name: cert.name(),
        trust: cert.trust(),
        roles: cert.roles(),
        principal: delegation.as_ref().map(|d| d.principal.as_str()),
    };
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
    signed
        .check(
            call.from,
            cert.identity_key(),
            me,
            now_ms,
            &call.app,
            &call.tool,
            &call.arguments,
        )
        .map_err(no)?;
    let arguments = canonical_arguments(&call.arguments)?;
    let delegation = signed.delegation;
    if !delegation.allows(&call.app, Some(&call.tool)) {
        return Err(no(CallErrorCode::ScopeDenied));
    }
    let caller = Caller {
        hub: call.from,
        hub_name: cert.name(),
        trust: cert.trust(),
        roles: cert.roles(),
        principal: Some(&delegation.principal),
    };
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

/// The arguments as the tool receives them: a JSON object in canonical form (compact, keys in
/// ascending order, each once), which is what the envelope's hash binds.
fn canonical_arguments(bytes: &[u8]) -> Result<Map<String, Value>, (CallErrorCode, String)> {
    if bytes.is_empty() {
        return Ok(Map::new());
    }
    let mismatch = |why: String| (CallErrorCode::ArgumentsMismatch, why);
    let object: Map<String, Value> = serde_json::from_slice(bytes)
        .map_err(|e| mismatch(format!("arguments are not a JSON object: {e}")))?;
    let canonical = serde_json::to_vec(&object).map_err(|e| mismatch(format!("arguments: {e}")))?;
    if canonical != bytes {
        return Err(mismatch(
            "arguments are not in canonical JSON (compact, keys in ascending order, each once; \
             docs/PROTOCOL.md section 13)"
                .into(),
        ));
    }
    Ok(object)
}

/// `arguments` (any JSON object) in the canonical form a call carries.
pub fn canonical(arguments: &str) -> Result<Vec<u8>, String> {
    let object: Map<String, Value> = serde_json::from_str(if arguments.trim().is_empty() {
        "{}"
    } else {
        arguments
    })
    .map_err(|e| format!("the arguments are not a JSON object: {e}"))?;
    serde_json::to_vec(&object).map_err(|e| e.to_string())
}
