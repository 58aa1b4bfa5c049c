// The SDK against a real chat-edge (with CHAT_DEV_LOGIN=true). Skipped unless CHAT_REAL_URL is set,
// e.g. CHAT_REAL_URL=http://127.0.0.1:8080 npm test

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import WebSocket from "ws";

import { ChatClient } from "../dist/index.js";

const base = process.env.CHAT_REAL_URL?.replace(/\/$/, "");
const skip = base ? false : "CHAT_REAL_URL not set (a running stack with CHAT_DEV_LOGIN=true)";
const wsUrl = base ? base.replace(/^http/, "ws") + "/ws" : "";
const suffix = Math.random().toString(36).slice(2, 9);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const clients = [];

async function devToken(user) {
  const res = await fetch(`${base}/dev/token`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user }),
  });
  assert.equal(res.status, 200, "POST /dev/token (is CHAT_DEV_LOGIN=true?)");
  return (await res.json()).token;
}

function connect(user, { gate } = {}) {
  const c = new ChatClient({
    url: wsUrl,
    WebSocket,
    backoff: { initialMs: 100, maxMs: 500 },
    token: async () => {
      if (gate) await gate.promise;
      return devToken(user);
    },
  });
  const messages = [];
  c.on("message", (m) => messages.push(m));
  clients.push(c);
  return { c, messages };
}

function gate() {
  let open;
  const g = { open: () => open(), promise: Promise.resolve() };
  g.close = () => {
    g.promise = new Promise((r) => (open = r));
  };
  return g;
}

async function waitFor(predicate, what, timeout = 10_000) {
  const start = Date.now();
  while (!(await predicate())) {
    if (Date.now() - start > timeout) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

after(() => {
  for (const c of clients) c.close();
});

describe("against a real chat-edge", () => {
  test("recovers the messages missed while disconnected with join{since, epoch}", { skip }, async () => {
    const room = `sdk-rec-${suffix}`;
    const g = gate();
    const alice = connect(`alice-${suffix}`, { gate: g });
    const bob = connect(`bob-${suffix}`);
    await alice.c.connect();
    await bob.c.connect();
    await alice.c.join(room);
    await bob.c.join(room);
    await bob.c.send(room, "before");
    await waitFor(() => alice.messages.length === 1, "live message");

    const recovered = alice.c.once("recovered");
    g.close();
    alice.c.reconnect(); // drops the socket; the reconnect waits for the token gate
    for (const body of ["missed 1", "missed 2", "missed 3"]) await bob.c.send(room, body);
    g.open();
    const event = await recovered;
    assert.equal(event.room, room);
    assert.equal(event.replayed, 3);
    assert.deepEqual(alice.messages.map((m) => m.body), ["before", "missed 1", "missed 2", "missed 3"]);
    await bob.c.send(room, "after");
    await waitFor(() => alice.messages.length === 5, "live after recovery");
  });

  test("a retried client_id is acknowledged as a duplicate and stored once", { skip }, async () => {
    const room = `sdk-dup-${suffix}`;
    const { c } = connect(`carol-${suffix}`);
    await c.connect();
    await c.join(room);
    const clientId = c.newClientId();
    const first = await c.send(room, "only once", { clientId });
    const second = await c.send(room, "only once", { clientId });
    assert.equal(first.duplicate, false);
    assert.equal(second.duplicate, true);
    assert.equal(second.seq, first.seq);
    const page = await c.history(room);
    assert.equal(page.messages.filter((m) => m.client_id === clientId).length, 1);
  });

  test("concurrent requests are matched to their replies by ref", { skip }, async () => {
    const room = `sdk-ref-${suffix}`;
    const { c } = connect(`dave-${suffix}`);
    await c.connect();
    await c.join(room);
    const [pong, page, joined] = await Promise.all([c.ping(), c.history(room, { limit: 5 }), c.join(room)]);
    assert.equal(pong.type, "pong");
    assert.equal(page.type, "history");
    assert.equal(joined.type, "joined");
  });
});
