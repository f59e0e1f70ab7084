// A desktop agent client in miniature, with the official MCP TypeScript SDK: starts
// `hub --home HOME mcp` on stdio (as Claude Desktop and other clients do from their config),
// lists the tools, then runs each call given on the command line and prints its text.
//
//   node scripts/mcp-client.mjs HUB_BIN HOME [TOOL JSON_ARGS]...
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const [hub, home, ...calls] = process.argv.slice(2);
if (!hub || !home || calls.length % 2 !== 0) {
  console.error("usage: mcp-client.mjs HUB_BIN HOME [TOOL JSON_ARGS]...");
  process.exit(2);
}
const client = new Client({ name: "hubrelay-demo-client", version: "1.0.0" });
await client.connect(new StdioClientTransport({ command: hub, args: ["--home", home, "mcp"], stderr: "ignore" }));
const { tools } = await client.listTools();
console.log(`tools: ${tools.map((t) => t.name).join(", ")}`);
let failed = false;
for (let i = 0; i < calls.length; i += 2) {
  const result = await client.callTool({ name: calls[i], arguments: JSON.parse(calls[i + 1]) });
  let text = result.content.filter((c) => c.type === "text").map((c) => c.text).join("\n");
  if (calls[i] === "apps.list" && result.structuredContent) {
    // One line per hub: its apps and how many tools each offers this hub.
    text = result.structuredContent.hubs
      .map((h) => `\n  ${h.hub_name} (${h.path}): ${h.apps.map((a) => `${a.name} [${a.tools.length} tools]`).join(", ") || "no apps"}`)
      .join("");
  }
  console.log(`${calls[i]} ${calls[i + 1]} -> ${result.isError ? "error: " : ""}${text}`);
  failed ||= Boolean(result.isError);
}
await client.close();
process.exit(failed ? 1 : 0);
