// The anchor of scripts/bench-worker-cpu (tests/worker_cpu_bench.rs): a minimal hand-written
// JavaScript Durable Object relay, what a user might write instead of this project's Rust room.
// One object per connect path; every binary message a socket sends goes, unchanged, to every
// other socket of the object. No login, no limits, no routing by hub: it does the least a relay
// can do, with the same Hibernation API the Rust room uses. Not part of the product.

export class JsForwarder {
  constructor(state) {
    this.state = state;
  }

  async fetch() {
    const pair = new WebSocketPair();
    this.state.acceptWebSocket(pair[1]);
    return new Response(null, { status: 101, webSocket: pair[0] });
  }

  webSocketMessage(ws, message) {
    for (const other of this.state.getWebSockets()) {
      if (other !== ws) {
        other.send(message);
      }
    }
  }

  webSocketClose(ws, code) {
    ws.close(code === 1005 || code === 1006 ? 1000 : code, "closed");
  }
}

export default {
  fetch(request, env) {
    const url = new URL(request.url);
    if (request.headers.get("upgrade") !== "websocket") {
      return new Response("js forwarder\n");
    }
    return env.FORWARDERS.get(env.FORWARDERS.idFromName(url.pathname)).fetch(request);
  },
};
