// Unit tests of ChatClient against the in-process fake edge (test/fake-server.mjs).
// Real-server tests live with the services; these pin the SDK's own behaviour.

import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, test } from "node:test";
import WebSocket from "ws";

import { ChatClient, ChatError, LocalStorageCursorStore, MemoryCursorStore, backoffDelay, decodeJwt, tokenExpiryMs } from "../dist/index.js";
import { FakeServer, makeToken } from "./fake-server.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(predicate, { timeout = 5000, what = "condition" } = {}) {
  const start = Date.now();
  for (;;) {
    if (await predicate()) return;
    if (Date.now() - start > timeout) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

let server;
const clients = [];

function client(user, options = {}) {
  const tokens = [];
  const reasons = [];
  const c = new ChatClient({
    url: server.url,
    WebSocket,
    token: async ({ reason }) => {
      reasons.push(reason);
      const t = makeToken(user, options.ttl ?? 3600);
      tokens.push(t);
      return t;
    },
    backoff: { initialMs: 40, maxMs: 200 },
    ackTimeoutMs: 300,
    requestTimeoutMs: 3000,
    ...options.client,
  });
  const log = { messages: [], states: [], resets: [], recovered: [], gaps: [], tokens, reasons };
  c.on("message", (m) => log.messages.push(m));
  c.on("state", (s) => log.states.push(s));
  c.on("reset", (e) => log.resets.push(e));
  c.on("recovered", (e) => log.recovered.push(e));
  c.on("gap", (e) => log.gaps.push(e));
  clients.push(c);
  return { c, log };
}

beforeEach(async () => {
  server = await new FakeServer().start();
});

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await server.stop();
});

describe("connection", () => {
  test("connects with the token provider and exposes hello", async () => {
    const { c, log } = client("alice");
    const hello = await c.connect();
    assert.equal(hello.user, "alice");
    assert.equal(hello.epoch, server.epoch);
    assert.equal(c.state, "open");
    assert.deepEqual(log.reasons, ["connect"]);
    assert.deepEqual(log.states.map((s) => s.state), ["connecting", "authenticating", "open"]);
  });

  test("correlates replies to requests by ref, whatever the order of the replies", async () => {
    const { c } = client("alice");
    await c.connect();
    await c.join("r1");
    server.publish("r1", "bot", "one");
    // The fake answers pings late and history at once: replies arrive in another order than asked.
    server.replyDelay = (_s, f) => (f.type === "ping" ? 150 : f.type === "presence" ? 60 : 0);
    const [pong, snapshot, history] = await Promise.all([c.ping(), c.presence("r1"), c.history("r1")]);
    assert.equal(pong.type, "pong");
    assert.equal(snapshot.type, "presence_snapshot");
    assert.equal(history.type, "history");
    assert.deepEqual(history.messages.map((m) => m.body), ["one"]);
    const refs = server.received.map((r) => r.frame.ref).filter(Boolean);
    assert.equal(new Set(refs).size, refs.length, "every request has its own ref");
  });

  test("an error reply rejects only its own request, with the server's code", async () => {
    const { c } = client("alice");
    await c.connect();
    const [forbidden, pong] = await Promise.allSettled([c.history("nobody-here"), c.ping()]);
    assert.equal(forbidden.status, "rejected");
    assert.ok(forbidden.reason instanceof ChatError);
    assert.equal(forbidden.reason.code, "forbidden");
    assert.equal(pong.status, "fulfilled");
  });

  test("a connection that goes silent is detected with ping and replaced", async () => {
    await server.stop();
    server = await new FakeServer({ heartbeatMs: 100 }).start();
    const { c, log } = client("alice");
    await c.connect();
    await c.join("r1");
    server.blackhole("alice");
    await waitFor(() => log.states.some((s) => s.state === "reconnecting"), { what: "dead connection detected" });
    assert.equal(log.states.find((s) => s.state === "reconnecting").reason, "heartbeat timeout");
    assert.ok(server.framesOf("ping", "alice").length >= 1, "probed with ping first");
    await waitFor(() => log.states.filter((s) => s.state === "open").length === 2, { what: "reconnected" });
    server.publish("r1", "bot", "after");
    await waitFor(() => log.messages.some((m) => m.body === "after"), { what: "live again" });
  });

  test("a server that never says hello is given up on and tried again", async () => {
    server.ignoreAuth = true;
    const { c, log } = client("alice", { client: { helloTimeoutMs: 200 } });
    const hello = c.connect();
    await waitFor(() => log.states.some((s) => s.state === "reconnecting"), { what: "hello timeout" });
    assert.equal(log.states.find((s) => s.state === "reconnecting").reason, "no hello in time");
    server.ignoreAuth = false;
    assert.equal((await hello).user, "alice");
  });

  test("reconnects with backoff after the socket drops", async () => {
    const { c, log } = client("alice");
    await c.connect();
    server.killUser("alice");
    await waitFor(() => log.states.filter((s) => s.state === "open").length === 2, { what: "second open" });
    const reconnecting = log.states.filter((s) => s.state === "reconnecting");
    assert.equal(reconnecting.length, 1);
    assert.ok(reconnecting[0].delayMs >= 20 && reconnecting[0].delayMs <= 40, `jittered delay ${reconnecting[0].delayMs}`);
  });
});

describe("recovery", () => {
  test("after a reconnect, join{since, epoch} replays exactly the missed messages, in order", async () => {
    const { c, log } = client("alice", { client: { backoff: { initialMs: 300, maxMs: 300 } } });
    await c.connect();
    await c.join("r1");
    server.publish("r1", "bot", "m1");
    server.publish("r2", "bot", "elsewhere");
    server.publish("r1", "bot", "m2");
    await waitFor(() => log.messages.length === 2, { what: "live messages" });
    const cursor = c.cursor("r1");

    server.killUser("alice");
    // While alice is away (the reconnect waits ≥150 ms):
    server.publish("r1", "bot", "m3");
    server.publish("r1", "bot", "m4");
    server.publish("r1", "bot", "m5");

    await waitFor(() => log.recovered.length === 1, { what: "recovered event" });
    assert.deepEqual(log.recovered[0], { room: "r1", since: cursor, replayed: 3 });
    const joins = server.framesOf("join", "alice").filter((f) => f.since !== undefined);
    assert.deepEqual(joins.map(({ room, since, epoch }) => ({ room, since, epoch })), [{ room: "r1", since: cursor, epoch: server.epoch }]);
    assert.deepEqual(log.messages.map((m) => m.body), ["m1", "m2", "m3", "m4", "m5"]);
    const seqs = log.messages.map((m) => m.seq);
    assert.deepEqual([...seqs].sort((a, b) => a - b), seqs, "ascending seq");

    // Live delivery goes on after the replay.
    server.publish("r1", "bot", "m6");
    await waitFor(() => log.messages.length === 6, { what: "live after recovery" });
    assert.equal(log.resets.length, 0);
  });

  test("rooms already up to date are not joined again", async () => {
    const { c, log } = client("alice");
    await c.connect();
    await c.join("r1");
    server.publish("r1", "bot", "m1");
    await waitFor(() => log.messages.length === 1);
    server.killUser("alice");
    await waitFor(() => log.states.filter((s) => s.state === "open").length === 2);
    await sleep(50);
    assert.equal(server.framesOf("join", "alice").filter((f) => f.since !== undefined).length, 0);
  });

  test("a changed epoch gives recovered:false and a clear reset event", async () => {
    const { c, log } = client("alice", { client: { backoff: { initialMs: 300, maxMs: 300 } } });
    await c.connect();
    await c.join("r1");
    server.publish("r1", "bot", "old-1");
    server.publish("r1", "bot", "old-2");
    await waitFor(() => log.messages.length === 2);
    const oldEpoch = server.epoch;
    const since = c.cursor("r1");

    server.killUser("alice");
    server.newEpoch("epoch-2");
    server.publish("r1", "bot", "new-1");

    await waitFor(() => log.resets.length === 1, { what: "reset event" });
    const joined = server.framesOf("join", "alice").filter((f) => f.since !== undefined);
    assert.deepEqual(joined.map(({ since: s, epoch }) => ({ since: s, epoch })), [{ since, epoch: oldEpoch }]);
    assert.equal(log.resets[0].room, "r1");
    assert.equal(log.resets[0].reason, "epoch_changed");
    assert.equal(log.resets[0].previousEpoch, oldEpoch);
    assert.equal(log.resets[0].epoch, "epoch-2");
    assert.equal(log.resets[0].lastSeq, 1);
    assert.equal(log.recovered.length, 0);
    assert.equal(c.cursor("r1"), 1);

    // The new incarnation's seqs restart low; they are delivered, not taken for duplicates.
    server.publish("r1", "bot", "new-2");
    await waitFor(() => log.messages.some((m) => m.body === "new-2"), { what: "message of the new epoch" });
    assert.deepEqual(log.messages.map((m) => m.body), ["old-1", "old-2", "new-2"]);
  });

  test("a persistent cursor store recovers across client instances (a page reload)", async () => {
    const storage = new Map();
    const fakeStorage = { getItem: (k) => storage.get(k) ?? null, setItem: (k, v) => storage.set(k, v), removeItem: (k) => storage.delete(k) };
    const first = client("alice", { client: { cursorStore: new LocalStorageCursorStore("cursors", fakeStorage) } });
    await first.c.connect();
    await first.c.join("r1");
    server.publish("r1", "bot", "seen");
    await waitFor(() => first.log.messages.length === 1);
    first.c.close();
    const saved = JSON.parse(storage.get("cursors"));
    assert.equal(saved.user, "alice");
    assert.equal(saved.epoch, server.epoch);
    assert.equal(saved.rooms.r1, first.log.messages[0].seq);

    server.publish("r1", "bot", "missed");
    const second = client("alice", { client: { cursorStore: new LocalStorageCursorStore("cursors", fakeStorage) } });
    await second.c.connect();
    await waitFor(() => second.log.recovered.length === 1, { what: "recovery from stored cursor" });
    assert.deepEqual(second.log.messages.map((m) => m.body), ["missed"]);
  });
});

describe("gap detection", () => {
  test("a prev_seq that skips is filled with history{after} pages, exactly once and in order", async () => {
    const { c, log } = client("alice", { client: { historyPageSize: 2 } });
    await c.connect();
    await c.join("r1");
    server.publish("r1", "bot", "a");
    await waitFor(() => log.messages.length === 1);
    const after = c.cursor("r1");

    server.dropDelivery = (_s, m) => m.body.startsWith("lost");
    for (const body of ["lost-1", "lost-2", "lost-3", "lost-4"]) server.publish("r1", "bot", body);
    server.dropDelivery = null;
    server.publish("r1", "bot", "b");
    server.publish("r1", "bot", "c");

    await waitFor(() => log.messages.length === 7, { what: "gap filled" });
    assert.deepEqual(log.messages.map((m) => m.body), ["a", "lost-1", "lost-2", "lost-3", "lost-4", "b", "c"]);
    assert.equal(log.gaps.length, 1);
    assert.equal(log.gaps[0].after, after);
    const pages = server.framesOf("history", "alice");
    assert.ok(pages.length >= 3, `paged with limit 2 (${pages.length} requests)`);
    assert.equal(pages[0].after, after);
    assert.ok(pages.every((p) => p.limit === 2 && p.before === undefined));
    assert.equal(new Set(log.messages.map((m) => m.seq)).size, 7, "no duplicates");
    assert.ok(log.messages.every((m) => m.type === "message"));
  });

  test("duplicated live frames are delivered once", async () => {
    const { c, log } = client("alice");
    await c.connect();
    await c.join("r1");
    // Two sessions' worth of the same frames: the fake re-sends a message frame.
    server.onFrame = null;
    const m = server.publish("r1", "bot", "x");
    for (const s of server.sessions) s.ws.send(JSON.stringify({ type: "message", ...m }));
    server.publish("r1", "bot", "y");
    await waitFor(() => log.messages.length === 2);
    await sleep(50);
    assert.deepEqual(log.messages.map((x) => x.body), ["x", "y"]);
  });
});

describe("send", () => {
  test("an ack lost on the wire is retried with the same client_id: one message, duplicate ack", async () => {
    const { c, log } = client("alice");
    await c.connect();
    await c.join("r1");
    let dropped = 0;
    server.dropAck = () => dropped++ < 2;
    const ack = await c.send("r1", "hello once");
    assert.equal(ack.duplicate, true);
    const sends = server.framesOf("send", "alice");
    assert.equal(sends.length, 3);
    assert.equal(new Set(sends.map((s) => s.client_id)).size, 1, "same client_id on every try");
    assert.equal(server.messages("r1").length, 1, "stored once");
    await sleep(50);
    assert.deepEqual(log.messages.map((m) => m.body), ["hello once"], "delivered once");
    assert.equal(log.messages[0].client_id, ack.client_id);
    assert.equal(c.unacknowledged, 0);
  });

  test("a send cut off by a disconnect is retried after the reconnect and resolves once", async () => {
    const { c, log } = client("alice");
    await c.connect();
    await c.join("r1");
    server.dropAck = (session) => {
      setImmediate(() => session.ws.terminate());
      return true;
    };
    const pending = c.send("r1", "across the reconnect");
    await waitFor(() => log.states.some((s) => s.state === "reconnecting"), { what: "disconnect" });
    server.dropAck = null;
    const ack = await pending;
    assert.equal(ack.duplicate, true);
    assert.equal(server.messages("r1").length, 1);
    const ids = server.framesOf("send", "alice").map((s) => s.client_id);
    assert.equal(ids.length, 2);
    assert.equal(ids[0], ids[1]);
    await sleep(50);
    assert.equal(log.messages.filter((m) => m.body === "across the reconnect").length, 1);
  });

  test("sends made while disconnected go out after hello", async () => {
    const { c } = client("alice", { client: { backoff: { initialMs: 200, maxMs: 200 } } });
    await c.connect();
    await c.join("r1");
    server.killUser("alice");
    await sleep(20);
    const acks = await Promise.all([c.send("r1", "one"), c.send("r1", "two")]);
    assert.deepEqual(acks.map((a) => a.duplicate), [false, false]);
    assert.deepEqual(server.messages("r1").map((m) => m.body), ["one", "two"]);
  });

  test("a refused send rejects with the server's code and is not retried", async () => {
    const { c } = client("alice");
    await c.connect();
    await assert.rejects(c.send("not-mine", "x"), (err) => err instanceof ChatError && err.code === "forbidden");
    assert.equal(server.framesOf("send", "alice").length, 1);
    await assert.rejects(c.send("r1", ""), (err) => err.code === "bad_request");
    await assert.rejects(c.send("r1", "x".repeat(4001)), (err) => err.code === "too_large");
  });
});

describe("frames without a reply", () => {
  test("a read marker refused as unavailable is sent again; a typing hint is not", async () => {
    const { c, log } = client("alice");
    const errors = [];
    c.on("error", (e) => errors.push(e));
    await c.connect();
    await c.join("r1");
    server.publish("r1", "bob", "hi");
    await waitFor(() => log.messages.length === 1);
    let refusals = 0;
    server.refuse = (_s, f) => ((f.type === "read" || f.type === "typing") && refusals++ < 2 ? "unavailable" : null);
    c.typing("r1");
    c.read("r1", log.messages[0].seq);
    await waitFor(() => server.lastRead.get("alice\nr1") === log.messages[0].seq, { what: "read marker stored", timeout: 8000 });
    assert.equal(server.framesOf("typing", "alice").length, 1, "typing not retried");
    assert.equal(server.framesOf("read", "alice").length, 2);
    assert.ok(errors.every((e) => typeof e.ref === "string"), "errors are attributable by ref");
  });
});

describe("tokens", () => {
  test("refreshes the token with auth before exp, keeping the connection", async () => {
    const { c, log } = client("alice", { ttl: 2 });
    const refreshed = [];
    c.on("token_refreshed", (e) => refreshed.push(e));
    await c.connect();
    const firstExp = tokenExpiryMs(log.tokens[0]);
    await sleep(firstExp - Date.now() + 700);
    const auths = server.framesOf("auth", "alice");
    assert.ok(auths.length >= 2, `auth sent again (${auths.length})`);
    assert.notEqual(auths[1].token, auths[0].token);
    assert.ok(refreshed.length >= 1);
    assert.ok(log.reasons.includes("refresh"));
    assert.equal(log.states.filter((s) => s.state === "reconnecting").length, 0, "never reconnected");
    assert.equal((await c.ping()).type, "pong");
  });

  test("a rejected token is replaced on the next attempt", async () => {
    let calls = 0;
    const c = new ChatClient({
      url: server.url,
      WebSocket,
      backoff: { initialMs: 20, maxMs: 50 },
      token: ({ reason }) => (calls++ === 0 ? makeToken("alice", -10) : makeToken("alice", 3600, { reason })),
    });
    clients.push(c);
    const errors = [];
    c.on("auth_error", (e) => errors.push(e));
    const hello = await c.connect();
    assert.equal(hello.user, "alice");
    assert.equal(errors[0]?.code, "unauthorized");
    const second = decodeJwt(server.framesOf("auth").at(-1).token);
    assert.equal(second.reason, "rejected");
  });
});

describe("pieces", () => {
  test("backoff grows exponentially with jitter in [cap/2, cap]", () => {
    const opts = { initialMs: 100, maxMs: 1000 };
    assert.equal(backoffDelay(0, opts, () => 0), 50);
    assert.equal(backoffDelay(0, opts, () => 1), 100);
    assert.equal(backoffDelay(3, opts, () => 1), 800);
    assert.equal(backoffDelay(10, opts, () => 1), 1000);
    assert.equal(backoffDelay(10, opts, () => 0), 500);
    for (let i = 0; i < 100; i++) {
      const d = backoffDelay(2, opts);
      assert.ok(d >= 200 && d <= 400);
    }
  });

  test("memory cursor store keeps a copy", () => {
    const store = new MemoryCursorStore();
    const state = { user: "u", epoch: "e", rooms: { a: 1 } };
    store.save(state);
    state.rooms.a = 99;
    assert.deepEqual(store.load(), { user: "u", epoch: "e", rooms: { a: 1 } });
  });

  test("local storage cursor store survives garbage", () => {
    const data = new Map([["k", "{not json"]]);
    const storage = { getItem: (k) => data.get(k) ?? null, setItem: (k, v) => data.set(k, v), removeItem: (k) => data.delete(k) };
    const store = new LocalStorageCursorStore("k", storage);
    assert.deepEqual(store.load(), { user: null, epoch: null, rooms: {} });
    data.set("k", JSON.stringify({ user: "u", epoch: "e", rooms: { a: 3, b: "x", c: -1 } }));
    assert.deepEqual(store.load(), { user: "u", epoch: "e", rooms: { a: 3 } });
  });

  test("rate budget: a burst of requests stays under rate_per_s and nothing is rate limited", async () => {
    await server.stop();
    server = await new FakeServer({ ratePerS: 20 }).start();
    const { c } = client("alice");
    const errors = [];
    c.on("error", (e) => errors.push(e));
    await c.connect();
    const replies = await Promise.all(Array.from({ length: 30 }, () => c.ping()));
    assert.equal(replies.length, 30);
    assert.equal(errors.filter((e) => e.code === "rate_limited").length, 0);
  });

  test("needs a WebSocket constructor where the runtime has none", () => {
    if (globalThis.WebSocket) return; // Node 22+ has one
    assert.throws(() => new ChatClient({ url: "ws://x/ws", token: "t" }), /WebSocket/);
  });
});

describe("unread counts (v1.1: derived from messages)", () => {
  test("the tracker adds later messages of others to the server's count, whichever comes first", async () => {
    const { UnreadTracker } = await import("../dist/index.js");
    const t = new UnreadTracker();
    assert.deepEqual(t.setBase("r", 2, 10, 20), { room: "r", count: 2, lastRead: 10 });
    assert.equal(t.onMessage("r", 15, "bob", "me"), null, "covered by the base");
    assert.equal(t.onMessage("r", 21, "me", "me"), null, "my own message");
    assert.equal(t.onMessage("r", 22, "bob", "me").count, 3);
    assert.equal(t.onMessage("r", 22, "bob", "me"), null, "the same seq twice");
    assert.equal(t.onMessage("r", 25, "carol", "me").count, 4);
    // A read's count arrives after message 25 it does not cover: 25 still counts.
    assert.deepEqual(t.setBase("r", 0, 22, 23), { room: "r", count: 1, lastRead: 22 });
    // One that covers it replaces it.
    assert.equal(t.setBase("r", 1, 22, 25).count, 1);
    // A marker above as_of hides what it covers.
    assert.equal(t.onMessage("r", 30, "bob", "me").count, 2);
    assert.equal(t.setBase("r", 0, 30, 28).count, 0);
    assert.equal(t.onMessage("x", 5, "bob", "me"), null, "no base yet");
    assert.ok(t.forget("r"));
    assert.equal(t.get("r").count, 0);
  });

  test("ChatClient exposes live counts as state and an `unread_count` event", async () => {
    const { c: bob } = client("bob");
    await bob.connect();
    await bob.join("news");
    const { c: alice } = client("alice");
    await alice.connect();
    await alice.join("news");
    const events = [];
    const pushed = [];
    bob.on("unread_count", (u) => events.push(u));
    bob.on("unread", (u) => pushed.push(u));
    for (const body of ["one", "two", "three"]) await alice.send("news", body);
    await bob.send("news", "mine");
    await waitFor(() => bob.unread("news").count === 3, { what: "three unread" });
    assert.deepEqual(events.map((e) => e.count), [1, 2, 3], "one event per message of another user");
    assert.equal(pushed.length, 0, "no count pushed per message");
    // A read moves the marker: the server's count replaces the derived one.
    const second = (await bob.history("news")).messages.find((m) => m.body === "two");
    bob.read("news", second.seq);
    await waitFor(() => bob.unread("news").count === 1, { what: "count after the read" });
    assert.equal(bob.unread("news").lastRead, second.seq);
    // After a reconnect, hello's count is the base.
    const { c: bob2 } = client("bob");
    await bob2.connect();
    assert.equal(bob2.unread("news").count, 1);
    assert.deepEqual(bob2.unreadCounts().map((u) => [u.room, u.count]), [["news", 1]]);
  });
});
