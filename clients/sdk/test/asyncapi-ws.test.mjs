// protocol.ts against docs/asyncapi-ws.json (the WebSocket protocol as AsyncAPI 3): the SDK's frame
// type lists and error codes are the document's, and each frame interface of protocol.ts has
// exactly the fields of its message's schema. Optionality is checked in the direction that matters:
// a field the SDK always sends is allowed to be optional for the server, but a field the document
// requires of a client frame must be required in the SDK's type; a field the document calls
// optional in a server frame must be optional in the SDK's type (the SDK must not count on it).
// protocol.ts is read as source, so a field added on either side only fails here.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { CLIENT_FRAME_TYPES, ERROR_CODES, SERVER_FRAME_TYPES } from "../dist/index.js";

const doc = JSON.parse(readFileSync(new URL("../../../docs/asyncapi-ws.json", import.meta.url), "utf8"));
// Without comments, so that a word in a doc comment is not read as a field.
const source = readFileSync(new URL("../src/protocol.ts", import.meta.url), "utf8")
  .replace(/\/\*[\s\S]*?\*\//g, "")
  .replace(/^\s*\/\/.*$/gm, "");
const sorted = (xs) => [...xs].sort();

function resolve(v) {
  while (v && v.$ref) v = v.$ref.slice(2).split("/").reduce((o, k) => o[k], doc);
  return v;
}

/** The document's messages of one side, by frame type: { declared: Set, required: Set }. */
function documented(side) {
  const out = new Map();
  for (const [key, m] of Object.entries(doc.components.messages)) {
    if (!key.startsWith(`${side}.`)) continue;
    const payload = resolve(m.payload);
    out.set(m.name, { declared: new Set(Object.keys(payload.properties)), required: new Set(payload.required) });
  }
  return out;
}

/** `export interface Name [extends Base] { … }` of protocol.ts: fields with their optionality. */
const interfaces = new Map();
for (const m of source.matchAll(/export interface (\w+)(?: extends (\w+))? \{([^}]*)\}/g)) {
  const fields = new Map();
  for (const f of m[3].matchAll(/(?:^|[;{\n])\s*(\w+)(\??):\s*([^;\n]+)/g)) fields.set(f[1], { optional: f[2] === "?", type: f[3].trim() });
  interfaces.set(m[1], { base: m[2], fields });
}
function fieldsOf(name) {
  const i = interfaces.get(name);
  assert.ok(i, `interface ${name} not found in protocol.ts`);
  const base = i.base ? fieldsOf(i.base) : new Map();
  return new Map([...base, ...i.fields]);
}

/** The members of `export type Union = | A | B …;`, by the literal of their `type` field. */
function frames(union) {
  const m = source.match(new RegExp(`export type ${union} =([^;]*);`));
  assert.ok(m, `type ${union} not found in protocol.ts`);
  const out = new Map();
  for (const name of m[1].split("|").map((s) => s.trim()).filter(Boolean)) {
    const fields = fieldsOf(name);
    const t = fields.get("type")?.type.match(/^"([a-z_]+)"$/);
    assert.ok(t, `${name}: no literal type`);
    out.set(t[1], { name, fields });
  }
  return out;
}

test("frame type lists and error codes: the messages and errorCode of docs/asyncapi-ws.json", () => {
  assert.deepEqual(sorted(CLIENT_FRAME_TYPES), sorted(documented("client").keys()));
  assert.deepEqual(sorted(SERVER_FRAME_TYPES), sorted(documented("server").keys()));
  assert.deepEqual(sorted(ERROR_CODES), sorted(doc.components.schemas.errorCode.enum));
  assert.deepEqual(sorted(frames("ClientFrame").keys()), sorted(CLIENT_FRAME_TYPES), "ClientFrame union");
  assert.deepEqual(sorted(frames("ServerFrame").keys()), sorted(SERVER_FRAME_TYPES), "ServerFrame union");
});

// The envelope field `traceparent` is one the SDK does not set itself.
const notInSdk = { client: new Set(["traceparent"]), server: new Set() };

for (const [side, union] of [["client", "ClientFrame"], ["server", "ServerFrame"]]) {
  test(`${union} interfaces have the fields of their schemas`, () => {
    const docs = documented(side);
    for (const [t, { name, fields }] of frames(union)) {
      const d = docs.get(t);
      assert.ok(d, `${name}: no ${side}.${t} in the document`);
      const expected = [...d.declared].filter((f) => !notInSdk[side].has(f));
      assert.deepEqual(sorted(fields.keys()), sorted(expected), `${name} vs ${side}.${t}`);
      for (const [f, { optional }] of fields) {
        if (side === "client" && d.required.has(f)) assert.ok(!optional, `${name}.${f}: required by the document`);
        if (side === "server" && !d.required.has(f)) assert.ok(optional, `${name}.${f}: optional in the document`);
      }
    }
  });
}

test("nested objects: Limits, RoomSummary, NotificationData, PresenceEntry, ChatMessage", () => {
  const pairs = [["Limits", "limits"], ["RoomSummary", "roomSummary"], ["NotificationData", "notification"], ["PresenceEntry", "presenceEntry"], ["ChatMessage", "chatMessage"]];
  for (const [ts, schema] of pairs) {
    const s = doc.components.schemas[schema];
    const fields = fieldsOf(ts);
    assert.deepEqual(sorted(fields.keys()), sorted(Object.keys(s.properties)), `${ts} vs ${schema}`);
    for (const [f, { optional }] of fields) if (!s.required.includes(f)) assert.ok(optional, `${ts}.${f}: optional in the document`);
  }
});
