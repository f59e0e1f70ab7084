//! The JavaScript bindings: thin wrappers that turn JavaScript values into the crate's and back
//! (times are `Date.now()` milliseconds, events JSON text, bytes `Uint8Array`s).

use wasm_bindgen::prelude::*;

use crate::hub::{Outgoing, WebHub};
use crate::join::Joining;
use crate::kept::Kept;
use crate::{ms, WebError};

fn js(e: WebError) -> JsError {
    JsError::new(&e.to_string())
}

/// A pairing in progress (`new Join(token, name)`).
#[wasm_bindgen(js_name = Join)]
#[derive(Debug)]
pub struct JsJoin(Joining);

#[wasm_bindgen(js_class = Join)]
impl JsJoin {
    /// Starts joining with a token from `hub invite`, under `name`.
    #[wasm_bindgen(constructor)]
    pub fn new(token: &str, name: &str) -> Result<JsJoin, JsError> {
        Joining::start(token, name).map(JsJoin).map_err(js)
    }

    /// The relay's base URL.
    #[wasm_bindgen(getter, js_name = relayUrl)]
    pub fn relay_url(&self) -> String {
        self.0.relay_url().to_owned()
    }

    /// The room's path (after the relay URL's path).
    #[wasm_bindgen(getter)]
    pub fn path(&self) -> String {
        self.0.path()
    }

    /// The connect query.
    #[wasm_bindgen(getter)]
    pub fn query(&self) -> String {
        self.0.query()
    }

    /// The next message to send.
    #[wasm_bindgen(js_name = pollSend)]
    pub fn poll_send(&mut self) -> Option<Vec<u8>> {
        self.0.poll_send()
    }

    /// A binary message from the relay: the kept state (JSON) once joined.
    #[wasm_bindgen(js_name = handleMessage)]
    pub fn handle_message(&mut self, message: &[u8], now: f64) -> Result<Option<String>, JsError> {
        self.0
            .handle_message(message, ms(now))
            .map(|kept| kept.map(|k| k.to_json()))
            .map_err(js)
    }

    /// The socket closed before the answer: why, for the person.
    #[wasm_bindgen(js_name = closedReason)]
    pub fn closed_reason(&self, code: u16, reason: &str) -> String {
        self.0.handle_closed(code, reason).to_string()
    }
}

/// The member hub (`Hub.open(keptJson, now)`).
#[wasm_bindgen(js_name = Hub)]
#[derive(Debug)]
pub struct JsHub(WebHub);

#[wasm_bindgen(js_class = Hub)]
impl JsHub {
    /// The hub of the kept state (JSON), checked now.
    pub fn open(kept: &str, now: f64) -> Result<JsHub, JsError> {
        let kept = Kept::parse(kept).map_err(js)?;
        WebHub::open(kept, ms(now)).map(JsHub).map_err(js)
    }

    /// This hub's id.
    #[wasm_bindgen(getter)]
    pub fn id(&self) -> String {
        self.0.id().to_string()
    }

    /// This hub's name.
    #[wasm_bindgen(getter)]
    pub fn name(&self) -> String {
        self.0.name().to_owned()
    }

    /// Whether the cluster revoked it.
    #[wasm_bindgen(getter)]
    pub fn revoked(&self) -> bool {
        self.0.revoked()
    }

    /// The kept state (JSON) as it is now.
    pub fn kept(&self) -> String {
        self.0.kept().to_json()
    }

    /// The relay's base URL.
    #[wasm_bindgen(getter, js_name = relayUrl)]
    pub fn relay_url(&self) -> String {
        self.0.relay_url().to_owned()
    }

    /// The room's path.
    #[wasm_bindgen(getter)]
    pub fn path(&self) -> String {
        self.0.path()
    }

    /// The connect query.
    #[wasm_bindgen(getter)]
    pub fn query(&self) -> String {
        self.0.query()
    }

    /// The phone app's sharing policy.
    #[wasm_bindgen(getter)]
    pub fn sharing(&self) -> String {
        self.0.sharing()
    }

    /// Sets the phone app's sharing policy.
    #[wasm_bindgen(js_name = setSharing)]
    pub fn set_sharing(&mut self, policy: &str, now: f64) -> Result<(), JsError> {
        self.0.set_sharing(policy, ms(now)).map_err(js)
    }

    /// A socket opened.
    pub fn opened(&mut self, now: f64) -> Result<(), JsError> {
        self.0.opened(ms(now)).map_err(js)
    }

    /// The socket closed.
    pub fn closed(&mut self, code: u16, reason: &str) {
        self.0.closed(code, reason);
    }

    /// The delay the relay asked for before connecting again (ms), or -1.
    #[wasm_bindgen(js_name = restartAfter)]
    pub fn restart_after(&self) -> f64 {
        self.0.restart_after_ms().map_or(-1.0, |v| v as f64)
    }

    /// The browser's network changed, or the page was shown.
    #[wasm_bindgen(js_name = networkChanged)]
    pub fn network_changed(&mut self, now: f64) {
        self.0.network_changed(ms(now));
    }

    /// The page was hidden or shown.
    #[wasm_bindgen(js_name = setHidden)]
    pub fn set_hidden(&mut self, hidden: bool) {
        self.0.set_hidden(hidden);
    }

    /// The next message for the socket: a `Uint8Array`, the string `ping`, or `undefined`.
    #[wasm_bindgen(js_name = pollSend)]
    pub fn poll_send(&mut self) -> JsValue {
        match self.0.poll_send() {
            Some(Outgoing::Binary(bytes)) => js_sys::Uint8Array::from(bytes.as_slice()).into(),
            Some(Outgoing::Probe) => {
                JsValue::from_str(shared_proto::relay::frame::KEEPALIVE_REQUEST)
            }
            None => JsValue::UNDEFINED,
        }
    }

    /// The next event (JSON text), or `undefined`.
    #[wasm_bindgen(js_name = pollEvent)]
    pub fn poll_event(&mut self) -> Option<String> {
        self.0.poll_event().map(|e| e.to_string())
    }

    /// When `handleTimeout` is next due (`Date.now()` ms), or -1.
    #[wasm_bindgen(js_name = pollTimeout)]
    pub fn poll_timeout(&self) -> f64 {
        self.0.poll_timeout().map_or(-1.0, |v| v as f64)
    }

    /// The clock reached `now`.
    #[wasm_bindgen(js_name = handleTimeout)]
    pub fn handle_timeout(&mut self, now: f64) {
        self.0.handle_timeout(ms(now));
    }

    /// A binary message from the relay; on an error, close the socket with the code in it
    /// (`"CODE REASON"`).
    #[wasm_bindgen(js_name = handleMessage)]
    pub fn handle_message(&mut self, message: &[u8], now: f64) -> Result<(), JsError> {
        self.0
            .handle_message(message, ms(now))
            .map_err(|(code, reason)| JsError::new(&format!("{code} {reason}")))
    }

    /// A text message from the relay.
    #[wasm_bindgen(js_name = handleText)]
    pub fn handle_text(&mut self, text: &str, now: f64) {
        self.0.handle_text(text, ms(now));
    }

    /// The hubs known (JSON).
    pub fn hubs(&self) -> String {
        self.0.hubs().to_string()
    }

    /// Asks a hub for its apps: the request's id.
    #[wasm_bindgen(js_name = listApps)]
    pub fn list_apps(&mut self, hub: &str, now: f64) -> Result<u32, JsError> {
        self.0.list_apps(hub, ms(now)).map_err(js)
    }

    /// Calls a tool: the request's id.
    pub fn call(
        &mut self,
        hub: &str,
        app: &str,
        tool: &str,
        arguments: &str,
        timeout_ms: u32,
        now: f64,
    ) -> Result<u32, JsError> {
        self.0
            .call(hub, app, tool, arguments, timeout_ms, ms(now))
            .map_err(js)
    }

    /// The result (JSON) of a call of the phone app.
    #[wasm_bindgen(js_name = answerCall)]
    pub fn answer_call(&mut self, id: u32, result: &str, now: f64) -> Result<(), JsError> {
        self.0.answer_call(id, result, ms(now)).map_err(js)
    }

    /// A call of the phone app failed, or the person refused it.
    #[wasm_bindgen(js_name = failCall)]
    pub fn fail_call(
        &mut self,
        id: u32,
        refused: bool,
        message: &str,
        now: f64,
    ) -> Result<(), JsError> {
        self.0.fail_call(id, refused, message, ms(now)).map_err(js)
    }
}

/// Runs `n` Noise IK handshakes (both sides, first meeting) between the hubs of `fixture` (made
/// natively by scripts/bench-phone, which times the call); how many completed.
#[wasm_bindgen(js_name = benchHandshakes)]
pub fn bench_handshakes(n: u32, fixture: &str) -> u32 {
    crate::bench::handshakes(n, fixture)
}
