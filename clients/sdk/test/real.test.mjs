// The SDK against a real chat-edge (with CHAT_DEV_LOGIN=true). Skipped unless CHAT_REAL_URL is set,
// e.g. CHAT_REAL_URL=http://127.0.0.1:8080 npm test

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import WebSocket from "ws";

import { ChatClient, toStored } from "../dist/index.js";

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

  test("v1.1 lifecycle: changes missed while disconnected are replayed, and the held state equals history's", { skip }, async () => {
    const room = `sdk-lc-${suffix}`;
    const g = gate();
    const alice = connect(`alice-lc-${suffix}`, { gate: g });
    const bob = connect(`bob-lc-${suffix}`);
    await alice.c.connect();
    await bob.c.connect();
    await alice.c.join(room);
    await bob.c.join(room);
    const one = await bob.c.send(room, "one");
    const two = await bob.c.send(room, "two");
    await waitFor(() => alice.messages.length === 2, "live messages");
    const recovered = alice.c.once("recovered");
    g.close();
    alice.c.reconnect();
    await bob.c.edit(room, one.seq, "one, edited");
    await bob.c.react(room, one.seq, "👍");
    await bob.c.react(room, one.seq, "🎉");
    await bob.c.react(room, one.seq, "🎉", false);
    await bob.c.delete(room, two.seq);
    const root = await bob.c.send(room, "root");
    await bob.c.send(room, "in thread", { thread: root.seq });
    g.open();
    assert.equal((await recovered).replayed, 7);
    const held = alice.c.message(room, one.seq);
    assert.equal(held.body, "one, edited");
    assert.deepEqual(held.reactions, { "👍": [`bob-lc-${suffix}`] });
    assert.equal(alice.c.message(room, two.seq).deleted, true);
    assert.equal(alice.c.message(room, root.seq).replies, 1);
    // A fresh page from the server says the same, version included.
    const { c: carol } = connect(`carol-lc-${suffix}`);
    await carol.connect();
    await carol.join(room);
    const page = await carol.history(room);
    for (const seq of [one.seq, two.seq, root.seq]) {
      const fromPage = toStored(page.messages.find((m) => m.seq === seq)); // absent fields as held ones
      const mine = alice.c.message(room, seq);
      for (const key of ["body", "version", "deleted", "reactions", "replies"]) assert.deepEqual(mine[key], fromPage[key], `${key} of ${seq}`);
    }
    assert.deepEqual((await carol.history(room, { thread: root.seq })).messages.map((m) => m.body), ["root", "in thread"]);
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
