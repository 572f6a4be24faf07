// The full flow through the TypeScript SDK's client at its defaults (60 s request timeout), over
// streamable HTTP, or over stdio through mcp-remote (as Claude Desktop runs a remote server).
// The same scripted stand-in for a model as tests/e2e/frameworks/flow.py: each step in order; a command
// still running is followed with the call the server's message names, wait_seconds included.
//
//   node tests/e2e/flow.mjs <http|mcp-remote> <server url ending in /mcp> [seconds of the long command] [wait to ask]
//
// Prints one JSON line: calls, timeouts met, waits asked, and whether each step did what it should.

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { fileURLToPath } from "node:url";
import path from "node:path";

const [mode, url, longArg, askArg] = process.argv.slice(2);
const longSeconds = Number(longArg ?? 8);
const askWait = askArg ? Number(askArg) : null;
const here = path.dirname(fileURLToPath(import.meta.url));
const WAIT_ADVICE = /check_container with container_id='([^']+)', command_id='([^']+)' and wait_seconds=(\d+)/;
const report = { calls: 0, timeouts: 0, waits: [], long_command_calls: 0, long_command_seconds: 0, steps: {}, errors: [] };

const transport = mode === "mcp-remote"
  ? new StdioClientTransport({ command: path.join(here, "node_modules/.bin/mcp-remote"), args: [url, "--allow-http"],
                               stderr: "ignore" })
  : new StreamableHTTPClientTransport(new URL(url));
const client = new Client({ name: "my-agent", version: "1.0.0" });

// One tool call as a model would see it: the structured result, or the error's text.
async function call(name, args, retryOnTimeout = true) {
  for (;;) {
    report.calls += 1;
    try {
      const result = await client.callTool({ name, arguments: args });
      const text = (result.content ?? []).map((block) => block.text ?? "").join("");
      return { error: Boolean(result.isError), text, data: result.structuredContent ?? null };
    } catch (error) {
      if (retryOnTimeout && /timed out/i.test(String(error))) {
        report.timeouts += 1;
        continue;
      }
      return { error: true, text: String(error), data: null };
    }
  }
}

try {
  await client.connect(transport);
  const created = await call("create_container", {});
  const containerId = created.data?.container_id ?? "";
  report.steps.create = Boolean(containerId);
  const listed = await call("list_containers", {}); // a tool without parameters
  report.steps.list = (listed.data?.containers ?? []).some((entry) => entry.container_id === containerId);
  const ran = await call("execute_command", { container_id: containerId, command: "echo hello from the flow" });
  report.steps.command = ran.data?.stdout === "hello from the flow\n";
  const written = await call("write_file", { container_id: containerId, path: "/tmp/report.txt", content: "a report\n" });
  report.steps.write_file = !written.error;
  const shared = await call("get_file_url", { container_id: containerId, path: "/tmp/report.txt" });
  const fileUrl = shared.data?.url;
  report.steps.file_url = Boolean(fileUrl) && (await (await fetch(fileUrl)).text()) === "a report\n";

  const started = Date.now();
  let command = (await call("execute_command", { container_id: containerId, command: `sleep ${longSeconds}; echo done` })).data ?? {};
  report.long_command_calls = 1;
  while (command.status === "running") {
    const advice = WAIT_ADVICE.exec(command.message ?? "");
    if (!advice) {
      report.errors.push(`no wait advice in ${JSON.stringify(command.message)}`);
      break;
    }
    const wait = askWait ?? Number(advice[3]);
    report.waits.push(wait);
    const checked = await call("check_container", { container_id: advice[1], command_id: advice[2], wait_seconds: wait });
    report.long_command_calls += 1;
    command = checked.data?.command ?? {};
  }
  report.long_command_seconds = Math.round((Date.now() - started) / 100) / 10;
  report.steps.long_command = command.status === "completed" && command.stdout === "done\n";

  const refused = await call("execute_command", { container_id: "no-such-sandbox", command: "true" }, false);
  report.steps.error = refused.error && refused.text.includes("create_container");
  const destroyed = await call("destroy_container", { container_id: containerId });
  report.steps.destroy = !destroyed.error;
} catch (error) {
  report.errors.push(String(error));
} finally {
  await client.close().catch(() => {});
}
console.log(JSON.stringify(report));
process.exit(0);
