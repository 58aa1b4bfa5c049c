// protocol.ts mirrors libs/proto/src/frames.rs: the same frame types in each direction and the same
// error codes. Read from the Rust source, so a frame added on one side only fails here.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { CLIENT_FRAME_TYPES, ERROR_CODES, MAX_EMOJI_CHARS, MAX_REACTIONS, MAX_REACTION_EMOJI, SERVER_FRAME_TYPES } from "../dist/index.js";

const rust = readFileSync(new URL("../../../libs/proto/src/frames.rs", import.meta.url), "utf8");

/** The string arms of `impl <Enum> { fn type_name / as_str }`: `Enum::Variant … => "name"`. */
function names(enumName) {
  const out = new Set();
  for (const m of rust.matchAll(new RegExp(`${enumName}::\\w+(?:\\s*\\{\\s*\\.\\.\\s*\\}|\\(_\\))?\\s*=>\\s*"([a-z_]+)"`, "g"))) out.add(m[1]);
  return out;
}
const sorted = (xs) => [...xs].sort();

test("client frame types: CLIENT_TYPES and ClientFrame::type_name of frames.rs", () => {
  const list = rust.match(/pub const CLIENT_TYPES: &\[&str\] = &\[([^\]]*)\]/);
  assert.ok(list, "CLIENT_TYPES not found in frames.rs");
  const declared = new Set([...list[1].matchAll(/"([a-z_]+)"/g)].map((m) => m[1]));
  assert.deepEqual(sorted(names("ClientFrame")), sorted(declared), "frames.rs disagrees with itself");
  assert.deepEqual(sorted(CLIENT_FRAME_TYPES), sorted(declared));
});

test("server frame types: ServerFrame::type_name of frames.rs", () => {
  assert.deepEqual(sorted(SERVER_FRAME_TYPES), sorted(names("ServerFrame")));
});

test("error codes: ErrorCode of frames.rs", () => {
  assert.deepEqual(sorted(ERROR_CODES), sorted(names("ErrorCode")));
});

test("reaction bounds: MAX_EMOJI_CHARS, MAX_REACTION_EMOJI and MAX_REACTIONS of frames.rs", () => {
  const value = (name) => {
    const m = rust.match(new RegExp(`pub const ${name}: usize = ([0-9_]+);`));
    assert.ok(m, `${name} not found in frames.rs`);
    return Number(m[1].replaceAll("_", ""));
  };
  assert.equal(MAX_EMOJI_CHARS, value("MAX_EMOJI_CHARS"));
  assert.equal(MAX_REACTION_EMOJI, value("MAX_REACTION_EMOJI"));
  assert.equal(MAX_REACTIONS, value("MAX_REACTIONS"));
});
