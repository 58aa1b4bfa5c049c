// The validator must be able to fail: broken copies of docs/asyncapi-ws.json (a missing required
// field, an action AsyncAPI 3 does not have, a dangling $ref, a payload that is not a schema) must
// each be reported as an error by @asyncapi/parser, and the document itself as valid. Guards
// against a parser upgrade or a wrong call that would let every document pass.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';

const original = JSON.parse(readFileSync(new URL('../../docs/asyncapi-ws.json', import.meta.url), 'utf8'));
const copy = () => structuredClone(original);
const breakages = {
  'info.version missing': (d) => { delete d.info.version; },
  'operation action "publish"': (d) => { d.operations.receiveClientFrames.action = 'publish'; },
  'dangling message $ref': (d) => { d.channels.ws.messages['client.auth'] = { $ref: '#/components/messages/nope' }; },
  'payload type not a JSON Schema type': (d) => { d.components.messages['server.ack'].payload.type = 'record'; },
};

const parser = new Parser();
const errors = async (doc) => (await parser.parse(JSON.stringify(doc))).diagnostics.filter((x) => x.severity === DiagnosticSeverity.Error);
assert.deepEqual(await errors(original), [], 'docs/asyncapi-ws.json itself is valid');
for (const [name, apply] of Object.entries(breakages)) {
  const d = copy();
  apply(d);
  const found = await errors(d);
  assert.ok(found.length > 0, `the parser accepted a document with ${name}`);
  console.log(`selftest: ${name}: refused (${found[0].code}: ${found[0].message.slice(0, 80)})`);
}
