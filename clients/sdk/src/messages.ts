/**
 * A room's messages with their current state (protocol.md#ws-lifecycle), as pure bookkeeping.
 *
 * Every change to a message is a room event of its own (`edit`, `delete`, `reaction`) with its own
 * seq. History pages and search results carry a message's current state with a `version` (the seq
 * of the latest event that changed it); live and replayed frames carry each event as it was sent.
 * The one rule that makes the two agree: a change is applied to the copy of its target only if
 * the change's seq is above the copy's `version`, which is then set to that seq. So a change seen
 * twice, a change older than a state read from history, or a state older than the copy held are
 * all harmless, in any order.
 *
 * A change whose target is not held (an old message never loaded, or one evicted) is kept (a
 * bounded number per room) and applied, by the same rule, when the target arrives.
 *
 * Thread roots count their messages (`replies`): the server's count is not covered by `version`,
 * so each root remembers the seq its count covers (`asOf`) and adds each later thread message
 * delivered in order. No I/O: `ChatClient` feeds it and emits `update` events.
 */

import { MAX_REACTION_EMOJI, MAX_REACTIONS, type ChangeEventFrame, type ChatMessage, type Reactions } from "./protocol.js";

/** A message as the client holds it: the fields of `message`, with its state always present. */
export interface StoredMessage extends ChatMessage {
  type: "message";
  version: number;
  reactions: Reactions;
  deleted: boolean;
}

/** What a change did to the copy of its target. */
export type ApplyResult =
  /** Applied: the target's new state. */
  | { status: "applied"; message: StoredMessage }
  /** Not above the copy's version (seen already, or covered by a state from history). */
  | { status: "stale"; message: StoredMessage }
  /** The target is not held: the change is kept until it is. */
  | { status: "held" };

export interface MessageStoreOptions {
  /** Most messages kept per room; beyond, the lowest seqs are dropped. Default 5 000. */
  maxPerRoom?: number;
  /** Most changes to unknown targets kept per room; beyond, the oldest are dropped. Default 1 000. */
  maxHeldPerRoom?: number;
}

interface RoomMessages {
  bySeq: Map<number, StoredMessage>;
  /** Changes whose target is not held, by target. */
  held: Map<number, ChangeEventFrame[]>;
  heldCount: number;
  /** Per thread root: the seq its `replies` count covers. */
  repliesAsOf: Map<number, number>;
}

function freeze(m: StoredMessage): StoredMessage {
  return Object.freeze(m);
}

/** A message from the wire (live frame, history entry or search result) as a stored copy. */
export function toStored(m: ChatMessage): StoredMessage {
  const deleted = m.deleted === true;
  const out: StoredMessage = {
    type: "message",
    room: m.room,
    seq: m.seq,
    prev_seq: m.prev_seq,
    from: m.from,
    body: deleted ? "" : m.body,
    client_id: m.client_id,
    ts: m.ts,
    version: typeof m.version === "number" ? Math.max(m.version, m.seq) : m.seq,
    reactions: deleted ? {} : cloneReactions(m.reactions),
    deleted,
  };
  if (m.reply_to !== undefined) out.reply_to = m.reply_to;
  if (m.thread !== undefined) out.thread = m.thread;
  if (m.edited !== undefined) out.edited = m.edited;
  if (m.replies !== undefined) out.replies = m.replies;
  return out;
}

function cloneReactions(r: Reactions | undefined): Reactions {
  const out: Reactions = {};
  if (!r) return out;
  for (const [emoji, users] of Object.entries(r)) if (Array.isArray(users) && users.length) out[emoji] = [...users];
  return out;
}

/**
 * The state after one change (pure). A change to a deleted message changes nothing but the
 * version (CONTRACT: it is still an event, and it changes nothing).
 */
export function applyChange(m: StoredMessage, e: ChangeEventFrame): StoredMessage {
  const next: StoredMessage = { ...m, version: e.seq };
  if (m.deleted) return next;
  switch (e.type) {
    case "edit":
      next.body = e.body;
      next.edited = e.ts;
      break;
    case "delete":
      next.deleted = true;
      next.body = "";
      next.reactions = {};
      break;
    case "reaction": {
      const users = m.reactions[e.emoji] ?? [];
      const has = users.includes(e.from);
      if (e.on === has) break; // set semantics: nothing to change
      if (e.on && !has) {
        // Past a message's bounds an addition changes nothing (as on the server).
        const total = Object.values(m.reactions).reduce((n, us) => n + us.length, 0);
        const isNew = !(e.emoji in m.reactions);
        if ((isNew && Object.keys(m.reactions).length >= MAX_REACTION_EMOJI) || total >= MAX_REACTIONS) break;
      }
      const reactions = { ...m.reactions };
      if (e.on) reactions[e.emoji] = [...users, e.from];
      else {
        const left = users.filter((u) => u !== e.from);
        if (left.length) reactions[e.emoji] = left;
        else delete reactions[e.emoji];
      }
      next.reactions = reactions;
      break;
    }
  }
  return next;
}

export class MessageStore {
  readonly #rooms = new Map<string, RoomMessages>();
  readonly #maxPerRoom: number;
  readonly #maxHeld: number;

  constructor(options: MessageStoreOptions = {}) {
    this.#maxPerRoom = options.maxPerRoom ?? 5_000;
    this.#maxHeld = options.maxHeldPerRoom ?? 1_000;
  }

  get(room: string, seq: number): StoredMessage | undefined {
    return this.#rooms.get(room)?.bySeq.get(seq);
  }

  /** The room's messages held, ascending seq (`thread`: only that root and its thread's messages). */
  list(room: string, options: { thread?: number } = {}): StoredMessage[] {
    const r = this.#rooms.get(room);
    if (!r) return [];
    let all = [...r.bySeq.values()];
    if (options.thread !== undefined) {
      const root = options.thread;
      all = all.filter((m) => m.seq === root || m.thread === root);
    }
    return all.sort((a, b) => a.seq - b.seq);
  }

  /**
   * A message from the ordered stream (live, replayed or filling a gap) or from a page. A copy
   * already held is kept unless this one has a higher version; changes held for it are applied.
   * `repliesAsOf`: the seq a `replies` count of this copy covers (pages: the newest seq the client
   * knows the server had seen); a live message's own count covers its own seq.
   * Returns the copy now held and whether it changed.
   */
  put(m: ChatMessage, repliesAsOf?: number): { message: StoredMessage; changed: boolean; isNew: boolean } {
    const r = this.#room(m.room);
    const incoming = toStored(m);
    const existing = r.bySeq.get(m.seq);
    let message: StoredMessage;
    let changed: boolean;
    if (!existing) {
      message = incoming;
      changed = true;
    } else if (incoming.version > existing.version) {
      message = incoming;
      changed = true;
    } else {
      message = existing;
      changed = false;
    }
    // The thread count is not covered by `version`: the server's count replaces the one held
    // only if it covers more of the log; otherwise the count held (grown as replies arrived) stays.
    const heldAsOf = r.repliesAsOf.get(m.seq);
    const asOf = repliesAsOf ?? m.seq;
    let replies = existing?.replies;
    if (m.replies !== undefined && (heldAsOf === undefined || asOf > heldAsOf)) {
      replies = m.replies;
      r.repliesAsOf.set(m.seq, asOf);
    } else if (heldAsOf === undefined) {
      r.repliesAsOf.set(m.seq, asOf);
    }
    if (message.replies !== replies) {
      message = { ...message };
      if (replies === undefined) delete message.replies;
      else message.replies = replies;
      changed = true;
    }
    const held = r.held.get(m.seq);
    if (held) {
      r.held.delete(m.seq);
      r.heldCount -= held.length;
      for (const e of held.sort((a, b) => a.seq - b.seq)) {
        if (e.seq > message.version) {
          message = applyChange(message, e);
          changed = true;
        }
      }
    }
    if (changed || !existing) {
      r.bySeq.set(m.seq, freeze(message));
      this.#evict(r);
    }
    return { message: r.bySeq.get(m.seq) ?? message, changed, isNew: !existing };
  }

  /** A change event, by the version rule. */
  apply(e: ChangeEventFrame): ApplyResult {
    const r = this.#room(e.room);
    const copy = r.bySeq.get(e.target);
    if (!copy) {
      const list = r.held.get(e.target) ?? [];
      if (!list.some((x) => x.seq === e.seq)) {
        list.push(e);
        r.held.set(e.target, list);
        r.heldCount++;
        this.#trimHeld(r);
      }
      return { status: "held" };
    }
    if (e.seq <= copy.version) return { status: "stale", message: copy };
    const next = freeze(applyChange(copy, e));
    r.bySeq.set(e.target, next);
    return { status: "applied", message: next };
  }

  /**
   * A message of a thread delivered in order: the root's count grows by one if the message is
   * above what the count covers. Returns the root's new copy, or null (root not held, or covered).
   */
  countReply(room: string, root: number, seq: number): StoredMessage | null {
    const r = this.#rooms.get(room);
    const copy = r?.bySeq.get(root);
    if (!r || !copy) return null;
    const asOf = r.repliesAsOf.get(root) ?? copy.seq;
    if (seq <= asOf) return null;
    r.repliesAsOf.set(root, seq);
    const next = freeze({ ...copy, replies: (copy.replies ?? 0) + 1 });
    r.bySeq.set(root, next);
    return next;
  }

  /** Forgets a room (left, or its log restarted: its seqs mean nothing any more). */
  forget(room: string): void {
    this.#rooms.delete(room);
  }

  clear(): void {
    this.#rooms.clear();
  }

  /** How many changes wait for their target in `room` (for tests and diagnostics). */
  heldCount(room: string): number {
    return this.#rooms.get(room)?.heldCount ?? 0;
  }

  #room(room: string): RoomMessages {
    let r = this.#rooms.get(room);
    if (!r) {
      r = { bySeq: new Map(), held: new Map(), heldCount: 0, repliesAsOf: new Map() };
      this.#rooms.set(room, r);
    }
    return r;
  }

  #evict(r: RoomMessages): void {
    if (r.bySeq.size <= this.#maxPerRoom) return;
    const seqs = [...r.bySeq.keys()].sort((a, b) => a - b);
    for (const seq of seqs.slice(0, r.bySeq.size - this.#maxPerRoom)) {
      r.bySeq.delete(seq);
      r.repliesAsOf.delete(seq);
    }
  }

  #trimHeld(r: RoomMessages): void {
    while (r.heldCount > this.#maxHeld) {
      // Drop the change with the lowest seq.
      let oldest: { target: number; index: number; seq: number } | null = null;
      for (const [target, list] of r.held) {
        list.forEach((e, index) => {
          if (!oldest || e.seq < oldest.seq) oldest = { target, index, seq: e.seq };
        });
      }
      if (!oldest) break;
      const { target, index } = oldest as { target: number; index: number };
      const list = r.held.get(target) as ChangeEventFrame[];
      list.splice(index, 1);
      if (list.length === 0) r.held.delete(target);
      r.heldCount--;
    }
  }
}
