// ChatClient and the message lifecycle (protocol.md#ws-lifecycle) against the in-process fake edge:
// the calls and their frames, the ordered stream of every event kind, gaps across change events,
// idempotent retries, threads, and unread counts that ignore changes.

import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, test } from "node:test";
import WebSocket from "ws";

import { ChatClient, ChatError } from "../dist/index.js";
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
function client(user) {
  const c = new ChatClient({
    url: server.url,
    WebSocket,
    token: () => makeToken(user),
    backoff: { initialMs: 40, maxMs: 200 },
    ackTimeoutMs: 300,
    requestTimeoutMs: 3000,
  });
  const log = { events: [], updates: [], gaps: [], failed: [], unread: [] };
  for (const type of ["message", "edit", "delete", "reaction"]) c.on(type, (e) => log.events.push(e));
  c.on("update", (u) => log.updates.push(u));
  c.on("gap", (g) => log.gaps.push(g));
  c.on("send_failed", (f) => log.failed.push(f));
  c.on("unread_count", (u) => log.unread.push(u));
  clients.push(c);
  return { c, log };
}
const strip = ({ ref, ...rest }) => rest;

beforeEach(async () => {
  server = await new FakeServer().start();
});
afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await server.stop();
});

async function pair(room = "r1") {
  const a = client("alice");
  const b = client("bob");
  await Promise.all([a.c.connect(), b.c.connect()]);
  await a.c.join(room);
  await b.c.join(room);
  return { a, b };
}

describe("lifecycle calls", () => {
  test("edit, delete and react send the contract's frames and every session sees the changes in order", async () => {
    const { a, b } = await pair();
    const sent = await a.c.send("r1", "hello");
    const editAck = await a.c.edit("r1", sent.seq, "hello, edited");
    assert.equal(editAck.duplicate, false);
    assert.ok(editAck.seq > sent.seq, "the ack carries the edit event's own seq");
    await b.c.react("r1", sent.seq, "👍");
    await a.c.react("r1", sent.seq, "👍", true);
    await b.c.react("r1", sent.seq, "👍", false);
    await waitFor(() => b.c.message("r1", sent.seq)?.version === b.c.cursor("r1"), { what: "bob's copy up to date" });
    const copy = b.c.message("r1", sent.seq);
    assert.equal(copy.body, "hello, edited");
    assert.equal(typeof copy.edited, "number");
    assert.deepEqual(copy.reactions, { "👍": ["alice"] });
    assert.deepEqual(b.log.events.map((e) => e.type), ["message", "edit", "reaction", "reaction", "reaction"]);
    assert.deepEqual(b.log.updates.map((u) => u.cause), ["edit", "reaction", "reaction", "reaction"]);
    assert.ok(b.log.updates.every((u) => u.seq === sent.seq));

    await a.c.delete("r1", sent.seq);
    await waitFor(() => b.c.message("r1", sent.seq)?.deleted, { what: "tombstone" });
    assert.equal(b.c.message("r1", sent.seq).body, "");
    assert.deepEqual(b.c.message("r1", sent.seq).reactions, {});
    const frames = server.received.filter((r) => r.user === "alice" && ["edit", "delete", "react"].includes(r.frame.type)).map((r) => strip(r.frame));
    assert.deepEqual(frames.map(({ client_id, ...f }) => (assert.match(client_id, /^[0-9a-f]{32}$/), f)), [
      { type: "edit", room: "r1", seq: sent.seq, body: "hello, edited" },
      { type: "react", room: "r1", seq: sent.seq, emoji: "👍", on: true },
      { type: "delete", room: "r1", seq: sent.seq },
    ]);
  });

  test("refusals the server gives are not retried and say which write failed", async () => {
    const { a, b } = await pair();
    const sent = await a.c.send("r1", "mine");
    await assert.rejects(b.c.edit("r1", sent.seq, "not yours"), (e) => e instanceof ChatError && e.code === "forbidden");
    await assert.rejects(b.c.delete("r1", sent.seq), (e) => e.code === "forbidden");
    await assert.rejects(a.c.react("r1", 9999, "👍"), (e) => e.code === "not_found");
    await assert.rejects(a.c.send("r1", "reply", { replyTo: 9999 }), (e) => e.code === "not_found");
    await a.c.delete("r1", sent.seq);
    await assert.rejects(a.c.edit("r1", sent.seq, "too late"), (e) => e.code === "forbidden");
    await assert.rejects(a.c.delete("r1", sent.seq), (e) => e.code === "not_found");
    assert.deepEqual(b.log.failed.map((f) => f.kind), ["edit", "delete"]);
    assert.equal(server.framesOf("edit", "bob").length, 1, "a refusal is final");
    // Checked before sending: an emoji the server would refuse.
    await assert.rejects(a.c.react("r1", sent.seq, "two words"), (e) => e.code === "bad_request");
    await assert.rejects(a.c.edit("r1", sent.seq, ""), (e) => e.code === "bad_request");
  });

  test("a change whose ack is lost is retried with the same client_id: one event, duplicate ack", async () => {
    const { a, b } = await pair();
    const sent = await a.c.send("r1", "x");
    let dropped = 0;
    server.dropAck = (_s, f) => f.type === "react" && dropped++ === 0;
    const ack = await a.c.react("r1", sent.seq, "🎉");
    assert.equal(ack.duplicate, true);
    const tries = server.framesOf("react", "alice");
    assert.equal(tries.length, 2);
    assert.equal(tries[0].client_id, tries[1].client_id);
    await waitFor(() => b.c.message("r1", sent.seq)?.reactions["🎉"], { what: "reaction" });
    assert.equal(server.messages("r1").filter((e) => e.type === "reaction").length, 1);
    assert.equal(b.log.events.filter((e) => e.type === "reaction").length, 1);
    // The caller's own retry with the same client_id, even after a delete, is the original ack.
    const again = await a.c.react("r1", sent.seq, "🎉", true, { clientId: tries[0].client_id });
    assert.deepEqual([again.seq, again.duplicate], [ack.seq, true]);
  });

  test("a change cut off by a disconnect is sent again after the reconnect", async () => {
    const { a } = await pair();
    const sent = await a.c.send("r1", "x");
    server.dropAck = (_s, f) => f.type === "edit";
    const pending = a.c.edit("r1", sent.seq, "y");
    await waitFor(() => server.framesOf("edit", "alice").length === 1, { what: "first try" });
    server.dropAck = null;
    server.killUser("alice");
    const ack = await pending;
    assert.equal(ack.duplicate, true);
    assert.equal(server.messages("r1").filter((e) => e.type === "edit").length, 1);
  });
});

describe("ordering and gaps across change events", () => {
  test("a lost change event is a gap: filled from history, every event delivered once, in order", async () => {
    const { a, b } = await pair();
    const m = await a.c.send("r1", "first");
    await waitFor(() => b.c.cursor("r1") === m.seq, { what: "bob has the message" });
    // Bob loses the edit live; the reaction after it shows the gap by its prev_seq.
    server.dropDelivery = (s, e) => s.user === "bob" && e.type === "edit";
    const e = await a.c.edit("r1", m.seq, "first, edited");
    server.dropDelivery = null;
    const r = await a.c.react("r1", m.seq, "👀");
    await waitFor(() => b.c.cursor("r1") === r.seq, { what: "bob caught up" });
    assert.equal(b.log.gaps.length, 1);
    assert.deepEqual(b.log.gaps[0], { room: "r1", after: m.seq, seenPrevSeq: e.seq });
    assert.deepEqual(b.log.events.map((x) => [x.type, x.seq]), [["message", m.seq], ["edit", e.seq], ["reaction", r.seq]]);
    const copy = b.c.message("r1", m.seq);
    assert.equal(copy.body, "first, edited");
    assert.deepEqual(copy.reactions, { "👀": ["alice"] });
    assert.equal(copy.version, r.seq);
  });

  test("duplicated change frames are delivered and applied once", async () => {
    const { a, b } = await pair();
    const m = await a.c.send("r1", "m");
    await a.c.react("r1", m.seq, "👍");
    await waitFor(() => b.c.message("r1", m.seq)?.reactions["👍"], { what: "reaction" });
    // Replay the whole room again (as a duplicated delivery would).
    const joined = await b.c.request({ type: "join", room: "r1", since: 0, epoch: server.epoch });
    assert.equal(joined.recovered, true);
    await sleep(50);
    assert.equal(b.log.events.length, 2);
    assert.equal(b.log.updates.length, 1);
  });

  test("recovery after a reconnect replays changes too, and the copy ends in the log's state", async () => {
    const { a, b } = await pair();
    const m = await a.c.send("r1", "before");
    await waitFor(() => b.c.cursor("r1") === m.seq, { what: "bob has it" });
    b.c.close();
    await a.c.edit("r1", m.seq, "after");
    await a.c.react("r1", m.seq, "✅");
    const other = await a.c.send("r1", "then this");
    await a.c.delete("r1", other.seq);
    // A new client instance (a page reload) with bob's stored cursor.
    const store = { state: { user: "bob", epoch: server.epoch, rooms: { r1: m.seq } }, load() { return structuredClone(this.state); }, save(s) { this.state = structuredClone(s); } };
    const b3 = new ChatClient({ url: server.url, WebSocket, token: () => makeToken("bob"), cursorStore: store });
    clients.push(b3);
    const seen = [];
    for (const t of ["message", "edit", "reaction", "delete"]) b3.on(t, (e) => seen.push(e.type));
    const recovered = b3.once("recovered");
    await b3.connect();
    assert.equal((await recovered).replayed, 4);
    assert.deepEqual(seen, ["edit", "reaction", "message", "delete"]);
    // The edit and reaction targets were never loaded by this instance: held until a page brings them.
    assert.equal(b3.message("r1", m.seq), undefined);
    const page = await b3.history("r1");
    const first = page.messages.find((x) => x.seq === m.seq);
    assert.equal(first.body, "after");
    assert.deepEqual(first.reactions, { "✅": ["alice"] });
    assert.equal(b3.message("r1", other.seq).deleted, true);
    assert.deepEqual(page.messages.map((x) => x.type), ["message", "edit", "reaction", "message", "delete"]);
  });
});

describe("replies and threads", () => {
  test("send with reply_to and thread; the root's reply count follows; history{thread} pages the thread", async () => {
    const { a, b } = await pair();
    const root = await a.c.send("r1", "root");
    await b.c.send("r1", "quoting you", { replyTo: root.seq });
    const t1 = await b.c.send("r1", "in the thread", { thread: root.seq });
    await a.c.send("r1", "me too", { thread: root.seq });
    await waitFor(() => a.c.message("r1", root.seq)?.replies === 2, { what: "two replies counted" });
    const sends = server.framesOf("send", "bob").map(({ ref, client_id, ...f }) => f);
    assert.deepEqual(sends, [
      { type: "send", room: "r1", body: "quoting you", reply_to: root.seq },
      { type: "send", room: "r1", body: "in the thread", thread: root.seq },
    ]);
    assert.deepEqual(a.log.updates.filter((u) => u.cause === "reply").map((u) => [u.seq, u.message.replies]), [[root.seq, 1], [root.seq, 2]]);
    assert.equal(a.c.message("r1", t1.seq).thread, root.seq);
    const quote = a.c.messages("r1").find((m) => m.reply_to === root.seq);
    assert.equal(quote.body, "quoting you");

    // A fresh client reads the thread: the root with the server's count, then the thread's messages.
    const c = client("carol");
    await c.c.connect();
    await c.c.join("r1");
    const page = await c.c.history("r1", { thread: root.seq });
    assert.deepEqual(server.framesOf("history", "carol").map(strip).at(-1), { type: "history", room: "r1", thread: root.seq });
    assert.deepEqual(page.messages.map((m) => m.body), ["root", "in the thread", "me too"]);
    assert.equal(page.messages[0].replies, 2);
    assert.deepEqual(c.c.messages("r1", { thread: root.seq }).map((m) => m.seq), page.messages.map((m) => m.seq));
    // A later thread message counts once on top of the server's count.
    await b.c.send("r1", "third", { thread: root.seq });
    await waitFor(() => c.c.message("r1", root.seq)?.replies === 3, { what: "carol counts the new one" });
    await sleep(50);
    assert.equal(c.c.message("r1", root.seq).replies, 3);
  });
});

describe("unread counts and change events", () => {
  test("only messages count: edits, deletes and reactions of others do not", async () => {
    const { a, b } = await pair();
    const m = await a.c.send("r1", "one");
    await waitFor(() => b.c.unread("r1").count === 1, { what: "one unread" });
    await a.c.edit("r1", m.seq, "one!");
    await a.c.react("r1", m.seq, "👍");
    await a.c.delete("r1", m.seq);
    const last = await a.c.send("r1", "two");
    await waitFor(() => b.c.cursor("r1") === last.seq, { what: "bob saw everything" });
    assert.equal(b.c.unread("r1").count, 2, "two messages; the deleted one still counts until read");
  });
});

describe("thread counts across a gap", () => {
  test("a root filled from a page with its count is not counted again for the thread messages of the same page", async () => {
    const { a, b } = await pair();
    const before = await a.c.send("r1", "before");
    await waitFor(() => b.c.cursor("r1") === before.seq, { what: "bob is live" });
    // Bob misses the root and two thread messages; the message after them shows the gap.
    server.dropDelivery = (s) => s.user === "bob";
    const root = await a.c.send("r1", "root");
    await a.c.send("r1", "t1", { thread: root.seq });
    await a.c.send("r1", "t2", { thread: root.seq });
    server.dropDelivery = null;
    const after = await a.c.send("r1", "after");
    await waitFor(() => b.c.cursor("r1") === after.seq, { what: "gap filled" });
    assert.equal(b.log.gaps.length, 1);
    assert.equal(b.c.message("r1", root.seq).replies, 2);
    await a.c.send("r1", "t3", { thread: root.seq });
    await waitFor(() => b.c.message("r1", root.seq).replies === 3, { what: "a live reply counts" });
  });
});
