// Runs RPCs through the unmodified @depot/sdk-node against DEPOT_API_URL and prints the outcomes.
// Input (stdin): JSON list of {service: "core.v1.ProjectService", method: "createProject",
//   request: {...}, token: "..."}. Strings of the form "bigint:123" become BigInt (int64 fields).
// Output (stdout): JSON list of {ok: <response.toJson()>} or {error: {code: "not_found", message}}.
// Streams: a server-streaming call gives {ok: [<each message>]}; a call with "requests" (a list) sends them
// as a client stream.
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { depot } = require("@depot/sdk-node");
const { Code, ConnectError } = require("@connectrpc/connect");

function revive(_key, value) {
  return typeof value === "string" && value.startsWith("bigint:") ? BigInt(value.slice(7)) : value;
}

function codeName(code) {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

const calls = JSON.parse(await readStdin(), revive);
const results = [];
for (const call of calls) {
  const [pkg, version, service] = call.service.split(".");
  const client = depot[pkg][version][service];
  const headers = call.token ? { Authorization: `Bearer ${call.token}` } : {};
  try {
    if (call.requests) {
      async function* stream() {
        for (const r of call.requests) yield r;
      }
      const response = await client[call.method](stream(), { headers });
      results.push({ ok: response.toJson({ emitDefaultValues: false }) });
      continue;
    }
    const response = client[call.method](call.request ?? {}, { headers });
    if (response && typeof response[Symbol.asyncIterator] === "function") {
      const messages = [];
      for await (const m of response) messages.push(m.toJson({ emitDefaultValues: false }));
      results.push({ ok: messages });
      continue;
    }
    results.push({ ok: (await response).toJson({ emitDefaultValues: false }) });
  } catch (err) {
    const e = ConnectError.from(err);
    results.push({ error: { code: codeName(e.code), message: e.rawMessage } });
  }
}
process.stdout.write(JSON.stringify(results));
