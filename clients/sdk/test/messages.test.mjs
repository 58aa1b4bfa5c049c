// Unit tests of MessageStore: the protocol.md#ws-lifecycle as pure bookkeeping (no server).

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { MAX_REACTION_EMOJI, MessageStore, isValidEmoji } from "../dist/index.js";

const R = "room";
let ts = 1000;
const msg = (seq, from = "alice", body = `m${seq}`, extra = {}) => ({ type: "message", room: R, seq, prev_seq: seq - 1, from, body, client_id: `c${seq}`, ts: ++ts, ...extra });
const edit = (seq, target, body, from = "alice") => ({ type: "edit", room: R, seq, prev_seq: seq - 1, from, target, body, client_id: `e${seq}`, ts: ++ts });
const del = (seq, target, from = "alice") => ({ type: "delete", room: R, seq, prev_seq: seq - 1, from, target, client_id: `d${seq}`, ts: ++ts });
const react = (seq, target, emoji, on, from) => ({ type: "reaction", room: R, seq, prev_seq: seq - 1, from, target, emoji, on, client_id: `r${seq}`, ts: ++ts });

describe("message state (the version rule)", () => {
  test("a live message starts at version = its seq, with no reactions", () => {
    const s = new MessageStore();
    const { message, isNew } = s.put(msg(1));
    assert.equal(isNew, true);
    assert.equal(message.version, 1);
    assert.deepEqual(message.reactions, {});
    assert.equal(message.deleted, false);
    assert.equal(message.edited, undefined);
  });

  test("an edit applies once; a duplicate or an older change is stale, in any order", () => {
    const s = new MessageStore();
    s.put(msg(1));
    const e5 = edit(5, 1, "second");
    const applied = s.apply(e5);
    assert.equal(applied.status, "applied");
    assert.equal(applied.message.body, "second");
    assert.equal(applied.message.version, 5);
    assert.equal(applied.message.edited, e5.ts);
    assert.equal(s.apply(edit(5, 1, "second")).status, "stale", "duplicate");
    assert.equal(s.apply(edit(3, 1, "first")).status, "stale", "out of order: older than the copy");
    assert.equal(s.get(R, 1).body, "second");
    assert.equal(s.get(R, 1).version, 5);
  });

  test("past MAX_REACTION_EMOJI distinct emoji an addition changes nothing, as on the server", () => {
    const s = new MessageStore();
    s.put(msg(1));
    let seq = 1;
    for (let i = 0; i < MAX_REACTION_EMOJI; i++) s.apply(react(++seq, 1, `e${i}`, true, "bob"));
    s.apply(react(++seq, 1, "one-too-many", true, "carol"));
    assert.equal(Object.keys(s.get(R, 1).reactions).length, MAX_REACTION_EMOJI);
    assert.equal(s.get(R, 1).reactions["one-too-many"], undefined);
    s.apply(react(++seq, 1, "e0", true, "carol"));
    assert.deepEqual(s.get(R, 1).reactions.e0, ["bob", "carol"], "an emoji it has still takes users");
  });

  test("a change before its target is known is held, then applied by the same rule", () => {
    const s = new MessageStore();
    assert.equal(s.apply(react(4, 2, "👍", true, "bob")).status, "held");
    assert.equal(s.apply(edit(6, 2, "later", "alice")).status, "held");
    assert.equal(s.apply(edit(6, 2, "later", "alice")).status, "held", "a duplicate is held once");
    assert.equal(s.heldCount(R), 2);
    // The target arrives as sent (live / replayed): both changes apply, in seq order.
    const { message } = s.put(msg(2));
    assert.deepEqual(message.reactions, { "👍": ["bob"] });
    assert.equal(message.body, "later");
    assert.equal(message.version, 6);
    assert.equal(s.heldCount(R), 0);
  });

  test("a held change covered by a state from history is not applied again", () => {
    const s = new MessageStore();
    s.apply(react(4, 2, "👍", true, "bob"));
    s.apply(react(9, 2, "🎉", true, "carol"));
    // History says: version 4 (the 👍 is already in it); the 🎉 at 9 is newer.
    const { message } = s.put(msg(2, "alice", "m2", { version: 4, reactions: { "👍": ["bob"] } }));
    assert.deepEqual(message.reactions, { "👍": ["bob"], "🎉": ["carol"] });
    assert.equal(message.version, 9);
  });

  test("a state from history replaces the copy only when its version is higher", () => {
    const s = new MessageStore();
    s.put(msg(1));
    s.apply(edit(5, 1, "live edit"));
    assert.equal(s.put(msg(1, "alice", "old", { version: 4, edited: 1 })).changed, false);
    assert.equal(s.get(R, 1).body, "live edit");
    const newer = s.put(msg(1, "alice", "newer", { version: 7, edited: 2 }));
    assert.equal(newer.changed, true);
    assert.equal(s.get(R, 1).body, "newer");
    assert.equal(s.get(R, 1).version, 7);
    // And a change at or under that version is stale.
    assert.equal(s.apply(edit(6, 1, "in between")).status, "stale");
  });

  test("delete: body \"\", reactions cleared, tombstone; a later edit or reaction changes nothing", () => {
    const s = new MessageStore();
    s.put(msg(1));
    s.apply(react(2, 1, "👍", true, "bob"));
    const d = s.apply(del(3, 1));
    assert.equal(d.status, "applied");
    assert.equal(d.message.deleted, true);
    assert.equal(d.message.body, "");
    assert.deepEqual(d.message.reactions, {});
    // A race: an edit and a reaction that reached the log after the delete are events that change nothing.
    const e = s.apply(edit(4, 1, "resurrected?"));
    assert.equal(e.status, "applied");
    assert.equal(e.message.body, "");
    assert.equal(e.message.deleted, true);
    assert.equal(e.message.version, 4);
    s.apply(react(5, 1, "🎉", true, "bob"));
    assert.deepEqual(s.get(R, 1).reactions, {});
    // A deleted message from history arrives without its text whatever body it carries.
    const h = s.put(msg(7, "alice", "should not show", { version: 8, deleted: true, reactions: { x: ["y"] } }));
    assert.equal(h.message.body, "");
    assert.deepEqual(h.message.reactions, {});
  });

  test("reactions have set semantics and keep the order people reacted in", () => {
    const s = new MessageStore();
    s.put(msg(1));
    s.apply(react(2, 1, "👍", true, "alice"));
    s.apply(react(3, 1, "👍", true, "bob"));
    s.apply(react(4, 1, "👍", true, "alice")); // again: no change
    assert.deepEqual(s.get(R, 1).reactions, { "👍": ["alice", "bob"] });
    s.apply(react(5, 1, "👍", false, "alice"));
    assert.deepEqual(s.get(R, 1).reactions, { "👍": ["bob"] });
    s.apply(react(6, 1, "👍", true, "alice"));
    assert.deepEqual(s.get(R, 1).reactions, { "👍": ["bob", "alice"] });
    s.apply(react(7, 1, "🎉", false, "carol")); // removing an absent one
    s.apply(react(8, 1, "👍", false, "bob"));
    s.apply(react(9, 1, "👍", false, "alice"));
    assert.deepEqual(s.get(R, 1).reactions, {}, "an emoji nobody has is gone");
    assert.equal(s.get(R, 1).version, 9);
  });

  test("copies handed out are snapshots: a later change makes a new object", () => {
    const s = new MessageStore();
    const first = s.put(msg(1)).message;
    s.apply(edit(2, 1, "changed"));
    assert.equal(first.body, "m1");
    assert.ok(Object.isFrozen(first));
    assert.notEqual(s.get(R, 1), first);
  });

  test("thread roots count the replies delivered after what their count covers", () => {
    const s = new MessageStore();
    s.put(msg(1)); // a live root: its count covers up to its own seq
    assert.equal(s.countReply(R, 1, 2).replies, 1);
    assert.equal(s.countReply(R, 1, 2), null, "the same reply twice counts once");
    assert.equal(s.countReply(R, 1, 3).replies, 2);
    // A root read from a page: the server's count covers up to the newest seq the page knew.
    s.put(msg(10, "bob", "root", { version: 10, replies: 5 }), 20);
    assert.equal(s.countReply(R, 10, 18), null, "already in the server's count");
    assert.equal(s.countReply(R, 10, 21).replies, 6);
    // An older page does not take the count back.
    s.put(msg(10, "bob", "root", { version: 10, replies: 5 }), 19);
    assert.equal(s.get(R, 10).replies, 6);
    // A newer page does.
    s.put(msg(10, "bob", "root", { version: 10, replies: 9 }), 30);
    assert.equal(s.get(R, 10).replies, 9);
    assert.equal(s.countReply(R, 99, 100), null, "unknown root");
  });

  test("the thread view lists the root and its messages; rooms are separate", () => {
    const s = new MessageStore();
    s.put(msg(1));
    s.put(msg(2, "bob", "in thread", { thread: 1 }));
    s.put(msg(3, "bob", "quote", { reply_to: 1 }));
    s.put({ ...msg(4), room: "other" });
    assert.deepEqual(s.list(R, { thread: 1 }).map((m) => m.seq), [1, 2]);
    assert.deepEqual(s.list(R).map((m) => m.seq), [1, 2, 3]);
    assert.equal(s.get(R, 3).reply_to, 1);
    s.forget(R);
    assert.deepEqual(s.list(R), []);
    assert.equal(s.list("other").length, 1);
  });

  test("bounded: the oldest messages and held changes are dropped past the limits", () => {
    const s = new MessageStore({ maxPerRoom: 3, maxHeldPerRoom: 2 });
    for (let i = 1; i <= 5; i++) s.put(msg(i));
    assert.deepEqual(s.list(R).map((m) => m.seq), [3, 4, 5]);
    s.apply(edit(200, 100, "a"));
    s.apply(edit(201, 101, "b"));
    s.apply(edit(202, 102, "c"));
    assert.equal(s.heldCount(R), 2);
    assert.equal(s.put(msg(100)).message.body, "m100", "the oldest held change was dropped");
    assert.equal(s.put(msg(102)).message.body, "c");
  });

  test("emoji rules match the contract (1..=32 characters, no whitespace or control characters)", () => {
    for (const ok of ["👍", ":+1:", "x".repeat(32), "👨‍👩‍👧"]) assert.ok(isValidEmoji(ok), ok);
    for (const bad of ["", "x".repeat(33), "a b", "a\u3000", "a\u0007", "\n"]) assert.ok(!isValidEmoji(bad), JSON.stringify(bad));
  });
});
