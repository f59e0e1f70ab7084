// Pins every file of a built phone page by hash (scripts/build-web runs it on the build
// directory): app.js gets the wasm module's SHA-384 (it refuses to run another), the service
// worker a cache version named after it, index.html Subresource Integrity for app.js, app.css and
// the wasm bindings (through the import map), and a Content-Security-Policy that allows scripts
// from the page's own origin only (and the import map, by its hash).
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const dir = process.argv[2];
const path = (f) => join(dir, f);
const read = (f) => readFileSync(path(f));
const digest = (alg, bytes) => createHash(alg).update(bytes).digest("base64");
const sri = (f) => `sha384-${digest("sha384", read(f))}`;
const edit = (f, pairs) => {
  let text = read(f).toString();
  for (const [from, to] of pairs) {
    if (!text.includes(from)) throw new Error(`${f}: ${from} not found`);
    text = text.replaceAll(from, to);
  }
  writeFileSync(path(f), text);
};

const wasm = digest("sha384", read("pkg/hub_web_bg.wasm"));
edit("app.js", [["__WASM_SHA384__", wasm]]);
edit("sw.js", [["__VERSION__", `hub-web-${createHash("sha256").update(wasm).digest("hex").slice(0, 16)}`]]);
edit("index.html", [["__APP_SRI__", sri("app.js")], ["__CSS_SRI__", sri("app.css")], ["__PKG_SRI__", sri("pkg/hub_web.js")]]);
const html = read("index.html").toString();
const importmap = html.match(/<script type="importmap">([\s\S]*?)<\/script>/)[1];
const csp = [
  "default-src 'self'",
  `script-src 'self' 'wasm-unsafe-eval' 'sha256-${digest("sha256", importmap)}'`,
  "connect-src 'self' ws: wss:",
  "img-src 'self' data:",
  "style-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
].join("; ");
edit("index.html", [["__CSP__", csp]]);
