// The demo's phone: the relay's phone page in headless Chromium with a phone's window, driven
// over WebDriver (ChromeDriver, plain HTTP on 127.0.0.1) as a person would use it: it opens the
// pairing link (token in the fragment), joins, calls a tool on another hub through the page's
// form, shares its own app with the cluster; then an agent on the desk (the official MCP SDK
// client, scripts/mcp-client.mjs, through `hub mcp`) reads the phone's location and asks it a
// question, which the "person" answers with a click. ChromeDriver and the browser are stopped on
// exit, on failure and on Ctrl-C.
//
//   node scripts/phone-demo.mjs PAGE_URL HUB_BIN DESK_HOME HUB APP TOOL JSON_ARGS
import { spawn } from "node:child_process";
import { createServer } from "node:net";

const [pageUrl, hub, deskHome, callHub, callApp, callTool, callArgs] = process.argv.slice(2);
if (!callArgs) {
  console.error("usage: phone-demo.mjs PAGE_URL HUB_BIN DESK_HOME HUB APP TOOL JSON_ARGS");
  process.exit(2);
}
const DEADLINE_MS = 30000;
const say = (text) => console.log(text);

const freePort = () => new Promise((resolve) => {
  const s = createServer();
  s.listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => resolve(port)); });
});

const port = await freePort();
const driver = spawn("/usr/bin/chromedriver", [`--port=${port}`], { stdio: "ignore", detached: true });
const base = `http://127.0.0.1:${port}`;
let session;
let stopped = false;
async function stop() {
  if (stopped) return;
  stopped = true;
  if (session) await fetch(`${base}/session/${session}`, { method: "DELETE" }).catch(() => {});
  try { process.kill(-driver.pid, "SIGTERM"); } catch {}
}
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => stop().then(() => process.exit(130)));

async function wd(method, path, body) {
  const r = await fetch(`${base}${path}`, {
    method,
    headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await r.json();
  if (!r.ok) throw new Error(`${method} ${path}: ${json.value?.message ?? r.status}`);
  return json.value;
}
const s = (path) => `/session/${session}${path}`;
async function until(what, f) {
  const end = Date.now() + DEADLINE_MS;
  for (;;) {
    const v = await f().catch(() => undefined);
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
const find = (css) => wd("POST", s("/element"), { using: "css selector", value: css })
  .then((e) => e["element-6066-11e4-a52e-4f735466cecf"]);
const present = (css) => until(css, () => find(css));
const click = async (css) => until(`${css} to click`, async () => { await wd("POST", s(`/element/${await find(css)}/click`), {}); return true; });
const type = async (css, text) => {
  const e = await present(css);
  await wd("POST", s(`/element/${e}/clear`), {});
  await wd("POST", s(`/element/${e}/value`), { text });
};
const text = async (css) => wd("GET", s(`/element/${await find(css)}/text`));
const js = (script, args = []) => wd("POST", s("/execute/sync"), { script, args });
const cdp = (cmd, params) => wd("POST", s("/goog/cdp/execute"), { cmd, params });

try {
  await until("chromedriver", () => fetch(`${base}/status`).then((r) => r.ok));
  const created = await wd("POST", "/session", { capabilities: { alwaysMatch: { "goog:chromeOptions": {
    binary: "/usr/bin/chromium",
    args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
      "--disable-background-networking", "--disable-sync", "--window-size=390,844"],
  } } } });
  session = created.sessionId;
  const origin = new URL(pageUrl).origin;
  await cdp("Browser.grantPermissions", { origin, permissions: ["geolocation"] });
  await cdp("Emulation.setGeolocationOverride", { latitude: 48.8584, longitude: 2.2945, accuracy: 12 });

  await wd("POST", s("/url"), { url: pageUrl });
  await present("body[data-state=join]");
  say("the page opened from the pairing link, ready to join (the token never left the fragment)");
  await type("#join-name", "phone");
  await click("#join-button");
  await present("body[data-connected=true]");
  say(`joined: keys made in the browser, certificate from the desk, connected as ${await text("#who")}`);

  const button = `li[data-name="${callHub}"] button[data-app="${callApp}"][data-tool="${callTool}"]`;
  await present(button);
  say(`the page lists the apps of every hub; it calls ${callApp}/${callTool} on ${callHub} through a form made from its schema`);
  await click(button);
  for (const [name, value] of Object.entries(JSON.parse(callArgs))) await type(`#tool-form [name="${name}"]`, String(value));
  await click("#tool-form button[type=submit]");
  const shown = await until("the result", async () => {
    const t = await text("#tool-result");
    return t && !t.includes("calling") ? t : undefined;
  });
  say(`  -> ${shown.split("\n")[0]}`);

  await js("document.getElementById('sharing').value = 'cluster';");
  await click("#sharing-form button[type=submit]");
  await until("sharing saved", async () => (await text("#sharing-said")) === "saved");
  say("the phone shares its app (location, notify, ask) with the cluster; an agent on the desk calls it:");

  const agent = spawn("node", ["scripts/mcp-client.mjs", hub, deskHome,
    "app.call", JSON.stringify({ hub: "phone", app: "phone", tool: "location", arguments: {} }),
    "app.call", JSON.stringify({ hub: "phone", app: "phone", tool: "ask", arguments: { question: "Deploy the release now?", choices: ["yes", "no"] } }),
  ], { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  agent.stdout.on("data", (d) => { out += d; });
  const agentDone = new Promise((resolve) => agent.on("exit", resolve));
  await present(".ask button[data-choice=yes]");
  say(`  the question shows on the phone: "${await text(".ask .question")}"; the person taps yes`);
  await click(".ask button[data-choice=yes]");
  const code = await agentDone;
  for (const line of out.split("\n").filter((l) => l.startsWith("app.call"))) say(`  ${line}`);
  if (code !== 0 || !out.includes("48.8584") || !out.includes("-> yes")) throw new Error("the agent's calls of the phone failed");
  const audit = await text("#audit");
  say(`the phone's audit chain: ${audit.split("\n").length} entries, newest: ${audit.split("\n")[0]}`);
  await stop();
} catch (e) {
  console.error(`phone-demo: ${e.message}`);
  await stop();
  process.exit(1);
}
