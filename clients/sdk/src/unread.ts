/**
 * Live unread counts (protocol.md#ws-unread, v1.1): the server says a room's count only in `hello`,
 * `joined` (both covering events up to their `last_seq`) and `unread` (covering events up to
 * `as_of`, sent when the read marker moves); it does not push a count per message. The client
 * adds one for each later `message` of another user. This is exact because a session receives
 * every event of its rooms once and in order; a base and the messages it does not yet cover may
 * arrive in either order, so the seqs of others' messages above the marker are kept until a
 * base covers them.
 *
 * Pure bookkeeping, no I/O: `ChatClient` feeds it and emits `unread_count`.
 */

/** A room's live count. */
export interface UnreadCount {
  room: string;
  /** Messages of others with seq above `lastRead`. */
  count: number;
  lastRead: number;
}

interface RoomUnread {
  /** The count the server said, covering events up to `asOf`. */
  base: number;
  lastRead: number;
  asOf: number;
  /** Seqs of others' messages received above max(asOf, lastRead), ascending. */
  later: number[];
}

/** Most seqs kept per room above its base (beyond, the oldest are folded into the base). */
const MAX_LATER = 10_000;

export class UnreadTracker {
  readonly #rooms = new Map<string, RoomUnread>();

  /** The room's count (0 for a room without a base yet). */
  get(room: string): UnreadCount {
    const r = this.#rooms.get(room);
    if (!r) return { room, count: 0, lastRead: 0 };
    return { room, count: r.base + r.later.length, lastRead: r.lastRead };
  }

  /** Every room's count. */
  all(): UnreadCount[] {
    return [...this.#rooms.keys()].map((room) => this.get(room));
  }

  /**
   * A count from the server: `count` messages of others with `lastRead` < seq <= `asOf`. Messages
   * already received above it still count.
   */
  setBase(room: string, count: number, lastRead: number, asOf: number): UnreadCount {
    const r = this.#rooms.get(room);
    const covered = Math.max(asOf, lastRead);
    const later = r ? r.later.filter((seq) => seq > covered) : [];
    this.#rooms.set(room, { base: count, lastRead, asOf: covered, later });
    return this.get(room);
  }

  /**
   * A `message` delivered to the app (once, in seq order). Returns the new count when it changed
   * (a message of another user the current base does not cover), else null.
   */
  onMessage(room: string, seq: number, from: string, me: string | null): UnreadCount | null {
    if (from === me) return null;
    const r = this.#rooms.get(room);
    if (!r || seq <= r.asOf) return null;
    const last = r.later[r.later.length - 1];
    if (last !== undefined && seq <= last) return null;
    r.later.push(seq);
    if (r.later.length > MAX_LATER) {
      const folded = r.later.splice(0, r.later.length - MAX_LATER);
      r.base += folded.length;
      r.asOf = folded[folded.length - 1] ?? r.asOf;
    }
    return this.get(room);
  }

  /** The room is left: its count is gone. */
  forget(room: string): boolean {
    return this.#rooms.delete(room);
  }

  /** A new `hello`: every base is replaced. */
  clear(): void {
    this.#rooms.clear();
  }
}
