/**
 * `ChatClient`: one logical connection to chat-edge that survives reconnects.
 *
 * It hides what protocol.md#ws leaves to clients: authentication and token refresh, reconnect with
 * jittered exponential backoff, per-room ordering with gap detection from `prev_seq` (filled with
 * `history{after}`), recovery after a reconnect with `join{room, since, epoch}`, idempotent sends
 * retried with the same `client_id` until acknowledged, `ref` correlation of requests and replies,
 * and pacing under the announced frame rate.
 *
 * Events: one per server frame type (`hello`, `ack`, `joined`, …) with the frame as received, except
 * `message`, which carries each room's messages exactly once and in seq order (live, replayed or
 * gap-filled). `frame` carries every raw frame. Plus `state`, `recovered`, `reset` (recovery failed:
 * the room's log is not continuous with what the app holds), `gap`, `auth_error`, `token_refreshed`,
 * `sync_error`, `send_failed` and `unread_count` (a room's live unread count changed: the server's
 * count from `hello`, `joined` or `unread`, plus each later message of another user, protocol.md#ws
 * Unread; also readable as `unread(room)`).
 */

import { backoffDelay, type BackoffOptions } from "./backoff.js";
import { emptyCursorState, MemoryCursorStore, type CursorState, type CursorStore } from "./cursor.js";
import { Emitter } from "./emitter.js";
import { tokenExpiryMs } from "./jwt.js";
import { UnreadTracker, type UnreadCount } from "./unread.js";
import { MessageStore, type StoredMessage } from "./messages.js";
import {
  CloseCode,
  SERVER_FRAME_TYPES,
  isValidEmoji,
  type AckFrame,
  type ChangeEventFrame,
  type ChatMessage,
  type ClientFrame,
  type ErrorCode,
  type ErrorFrame,
  type HelloFrame,
  type HistoryReplyFrame,
  type SearchResultsFrame,
  type JoinedFrame,
  type LeftFrame,
  type MessageFrame,
  type OkFrame,
  type PongFrame,
  type PresenceSnapshotFrame,
  type RoomEventFrame,
  type ServerFrame,
  type ServerFrameMap,
  type SettableStatus,
} from "./protocol.js";

// ---- sockets ----

/** The part of the WHATWG WebSocket that the client uses (the browser's, or npm `ws`'s). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

const OPEN = 1;

// ---- options and events ----

export type TokenReason = "connect" | "refresh" | "rejected";
/** Returns a (fresh when asked) token. `rejected` means the server refused the last one. */
export type TokenProvider = (ctx: { reason: TokenReason }) => string | Promise<string>;

export interface ChatClientOptions {
  /** `ws://host/ws` or `wss://host/ws`. */
  url: string;
  /** A token, or a function returning one; called on every connect and before `exp`. */
  token: string | TokenProvider;
  /** WebSocket constructor; default `globalThis.WebSocket` (Node 20 has none: pass npm `ws`). */
  WebSocket?: WebSocketConstructor;
  /** Where cursors are kept; default in memory. */
  cursorStore?: CursorStore;
  backoff?: BackoffOptions;
  /** A request without reply after this long fails with `timeout`. Default 15 000 ms. */
  requestTimeoutMs?: number;
  /** A send without ack after this long (while connected) is sent again. Default 5 000 ms. */
  ackTimeoutMs?: number;
  /**
   * A send still unacknowledged after this long fails (`send_failed`, promise rejected). The server
   * deduplicates a client_id for 2 minutes, so retrying past that could deliver twice. Default 100 000 ms.
   */
  sendDeadlineMs?: number;
  /** How long to wait for `hello` after creating the socket. Default 15 000 ms. */
  helloTimeoutMs?: number;
  /** Refresh the token this long before `exp` (at most a quarter of its remaining life). Default 60 000 ms. */
  refreshMarginMs?: number;
  /** Page size of gap-filling `history{after}` requests (the server clamps to 1..=200). Default 200. */
  historyPageSize?: number;
  /** Send `typing` at most once per this interval per room. Default 2 500 ms. */
  typingIntervalMs?: number;
  /** Detect dead connections with `ping` when nothing arrives for 2 × heartbeat_ms. Default true. */
  heartbeat?: boolean;
  /** Fraction of `limits.rate_per_s` the client allows itself. Default 0.8. */
  rateBudget?: number;
  /** Random source for jitter and client ids (tests). */
  random?: () => number;
  /** Most messages (with their state) kept per room by `messages()`; the oldest are dropped. Default 5 000. */
  maxMessagesPerRoom?: number;
}

export type ConnectionState = "idle" | "connecting" | "authenticating" | "open" | "reconnecting" | "closed";

export interface StateEvent {
  state: ConnectionState;
  /** Reconnect attempt number (0 for the first try after a loss). */
  attempt?: number;
  /** Delay before the next attempt, when reconnecting. */
  delayMs?: number;
  /** Close code and reason of the socket that just closed. */
  code?: number;
  reason?: string;
}

/** A `history` reply as `history()` returns it: every entry a typed room event, messages as held (with state). */
export type HistoryPage = Omit<HistoryReplyFrame, "messages"> & { messages: RoomEventFrame[] };

export interface RecoveredEvent { room: string; since: number; replayed: number }
export interface ResetEvent {
  room: string;
  /** `epoch_changed`: the server's log is another incarnation; messages held for the room are not continuous. */
  reason: "epoch_changed" | "not_recovered";
  previousEpoch: string | null;
  epoch: string;
  since: number;
  /** The room's last seq now; the cursor continues from here. */
  lastSeq: number;
}
export interface GapEvent { room: string; after: number; seenPrevSeq: number }
export interface AuthErrorEvent { code: string; message: string }
export interface SyncErrorEvent { room: string; error: ChatError }
/** A send, edit, delete or react that will not be acknowledged (its promise is rejected too). */
export interface SendFailedEvent { room: string; client_id: string; error: ChatError; kind: WriteFrame["type"] }
/**
 * A held message's state changed (protocol.md#ws-lifecycle): an edit, delete or reaction from the
 * ordered stream, or (`reply`) a new message in the thread it is the root of.
 */
export interface UpdateEvent {
  room: string;
  seq: number;
  message: StoredMessage;
  cause: "edit" | "delete" | "reaction" | "reply";
  /** The event that caused it (for `reply`, the thread's new message). */
  event: RoomEventFrame;
}

type FrameEvents = { [K in keyof ServerFrameMap]: ServerFrameMap[K] };

export interface ChatClientEvents extends FrameEvents {
  /** A room's messages once each, in seq order, as held (with their state: `StoredMessage`). */
  message: StoredMessage;
  frame: ServerFrame;
  state: StateEvent;
  recovered: RecoveredEvent;
  reset: ResetEvent;
  gap: GapEvent;
  auth_error: AuthErrorEvent;
  token_refreshed: { expiresAt: number | null };
  sync_error: SyncErrorEvent;
  send_failed: SendFailedEvent;
  unread_count: UnreadCount;
  update: UpdateEvent;
}

/** A refused request: a server `error` frame, or `timeout` / `disconnected` / `closed` from the client. */
export class ChatError extends Error {
  readonly code: ErrorCode | "timeout" | "disconnected" | "closed";
  readonly retryAfterMs?: number;
  readonly frame?: ErrorFrame;
  constructor(code: ChatError["code"], message: string, frame?: ErrorFrame) {
    super(`${code}: ${message}`);
    this.name = "ChatError";
    this.code = code;
    this.frame = frame;
    if (frame?.retry_after_ms !== undefined) this.retryAfterMs = frame.retry_after_ms;
  }
}

// ---- internals ----

type Distribute<F> = F extends ClientFrame ? Omit<F, "ref"> : never;
/** A client frame without its `ref` (the client assigns one). */
export type OutFrame = Distribute<ClientFrame>;

interface PendingRequest {
  frame: ClientFrame;
  resolve: (frame: ServerFrame) => void;
  reject: (err: ChatError) => void;
  timer: ReturnType<typeof setTimeout>;
  /** Sent on the current socket. */
  sent: boolean;
  /** Sent again after a reconnect (idempotent requests of the application). */
  resend: boolean;
  rateRetries: number;
}

/** The idempotent writes (retried with one client_id until acknowledged). */
type WriteFrame = Extract<OutFrame, { type: "send" | "edit" | "delete" | "react" }>;

interface OutboxEntry {
  room: string;
  frame: WriteFrame;
  client_id: string;
  firstAt: number;
  attempts: number;
  timer: ReturnType<typeof setTimeout> | null;
  deadline: ReturnType<typeof setTimeout> | null;
  resolve: (ack: AckFrame) => void;
  reject: (err: ChatError) => void;
}

type SyncMode = "live" | "recovering" | "filling";
interface RoomSync {
  mode: SyncMode;
  /** Events held back while the room is recovered or a gap is filled, by seq. */
  pending: Map<number, RoomEventFrame>;
  /** Bumped whenever the room's sync is abandoned (disconnect), so stale continuations stop. */
  generation: number;
}

/** A history entry as a room event (entries of a server before v1.1 have no `type`). */
function asRoomEvent(entry: RoomEventFrame | ChatMessage): RoomEventFrame {
  const type = (entry as { type?: unknown }).type;
  if (type === "edit" || type === "delete" || type === "reaction" || type === "message") return entry as RoomEventFrame;
  return { ...(entry as ChatMessage), type: "message" };
}

const RETRYABLE_SEND_ERRORS = new Set<string>(["rate_limited", "unavailable", "internal"]);
/** Errors that waiting may cure. */
const TEMPORARY_ERRORS = new Set<string>(["rate_limited", "unavailable", "internal", "timeout"]);

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function charCount(s: string): number {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

export class ChatClient extends Emitter<ChatClientEvents> {
  readonly #opts: Required<Omit<ChatClientOptions, "WebSocket" | "cursorStore" | "backoff" | "token" | "maxMessagesPerRoom">> & {
    backoff: BackoffOptions;
  };
  readonly #WebSocket: WebSocketConstructor;
  readonly #store: CursorStore;
  readonly #tokenProvider: TokenProvider;

  #ws: WebSocketLike | null = null;
  #state: ConnectionState = "idle";
  #closedByUser = false;
  #attempt = 0;
  #reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  #helloTimer: ReturnType<typeof setTimeout> | null = null;
  #refreshTimer: ReturnType<typeof setTimeout> | null = null;
  #heartbeatTimer: ReturnType<typeof setInterval> | null = null;
  #lastFrameAt = 0;
  #helloAt = 0;
  #pingSentAt = 0;
  #nextTokenReason: TokenReason = "connect";
  #authRef: string | null = null;
  #refSeq = 0;

  #hello: HelloFrame | null = null;
  readonly #unread = new UnreadTracker();
  readonly #log: MessageStore;
  #token: string | null = null;
  #pending = new Map<string, PendingRequest>();
  #outbox = new Map<string, OutboxEntry>();
  #sendRefs = new Map<string, string>();

  #cursorsLoaded = false;
  #cursors: CursorState = emptyCursorState();
  #saveTimer: ReturnType<typeof setTimeout> | null = null;
  #sync = new Map<string, RoomSync>();

  #status: SettableStatus | null = null;
  /** Frames without a reply (typing, read, status), by ref, so an error to one can be told apart and retried. */
  #fireRefs = new Map<string, { frame: ClientFrame; tries: number }>();
  #unsentReads = new Map<string, number>();
  #typingSentAt = new Map<string, number>();

  #queue: string[] = [];
  #tokens = 0;
  #tokensAt = 0;
  #drainTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(options: ChatClientOptions) {
    super();
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) throw new Error("ChatClient: no WebSocket in this runtime; pass options.WebSocket (for example npm `ws`)");
    this.#WebSocket = WS;
    this.#store = options.cursorStore ?? new MemoryCursorStore();
    this.#log = new MessageStore({ maxPerRoom: options.maxMessagesPerRoom ?? 5_000 });
    const token = options.token;
    this.#tokenProvider = typeof token === "string" ? () => token : token;
    this.#opts = {
      url: options.url,
      backoff: options.backoff ?? {},
      requestTimeoutMs: options.requestTimeoutMs ?? 15_000,
      ackTimeoutMs: options.ackTimeoutMs ?? 5_000,
      sendDeadlineMs: options.sendDeadlineMs ?? 100_000,
      helloTimeoutMs: options.helloTimeoutMs ?? 15_000,
      refreshMarginMs: options.refreshMarginMs ?? 60_000,
      historyPageSize: options.historyPageSize ?? 200,
      typingIntervalMs: options.typingIntervalMs ?? 2_500,
      heartbeat: options.heartbeat ?? true,
      rateBudget: options.rateBudget ?? 0.8,
      random: options.random ?? Math.random,
    };
  }

  // ---- public state ----

  get state(): ConnectionState {
    return this.#state;
  }
  /** A room's live unread count (messages of others above the read marker). */
  unread(room: string): UnreadCount {
    return this.#unread.get(room);
  }

  /** Every known room's live unread count. */
  unreadCounts(): UnreadCount[] {
    return this.#unread.all();
  }

  /** The last `hello` (user, session, epoch, limits, rooms at connect time). */
  get hello(): HelloFrame | null {
    return this.#hello;
  }
  get user(): string | null {
    return this.#hello?.user ?? null;
  }
  /** Last seq delivered to the application for `room`, if any. */
  cursor(room: string): number | undefined {
    return this.#cursors.rooms[room];
  }
  /** Writes the cursors to the store now (they are otherwise saved 200 ms after a change); call before a page unloads. */
  saveCursors(): void {
    this.#flushCursors();
  }
  /**
   * The room's messages held, with their current state, ascending seq: those the ordered stream
   * delivered and those of history pages (`thread`: only that root and its thread's messages).
   */
  messages(room: string, options: { thread?: number } = {}): StoredMessage[] {
    return this.#log.list(room, options);
  }
  /** One held message with its current state. */
  message(room: string, seq: number): StoredMessage | undefined {
    return this.#log.get(room, seq);
  }
  /** Sends, edits, deletes and reactions not yet acknowledged. */
  get unacknowledged(): number {
    return this.#outbox.size;
  }

  // ---- lifecycle ----

  /** Starts connecting (if not yet) and resolves with the next `hello`. Reconnects by itself after that. */
  async connect(): Promise<HelloFrame> {
    const next = this.once("hello");
    if (this.#state === "idle" || this.#state === "closed") {
      this.#closedByUser = false;
      this.#attempt = 0;
      void this.#open();
    } else if (this.#state === "open" && this.#hello) {
      return this.#hello;
    }
    return next;
  }

  /** Closes for good: pending requests and sends fail with `closed`. */
  close(): void {
    this.#closedByUser = true;
    this.#clearTimers();
    if (this.#reconnectTimer) clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      this.#detach(ws);
      try {
        ws.close(CloseCode.NORMAL, "client closed");
      } catch {
        /* already closed */
      }
    }
    for (const [ref, p] of this.#pending) {
      clearTimeout(p.timer);
      this.#pending.delete(ref);
      p.reject(new ChatError("closed", "client closed"));
    }
    for (const entry of this.#outbox.values()) {
      if (entry.timer) clearTimeout(entry.timer);
      if (entry.deadline) clearTimeout(entry.deadline);
      entry.reject(new ChatError("closed", "client closed"));
    }
    this.#outbox.clear();
    this.#sendRefs.clear();
    this.#resetSync();
    this.#flushCursors();
    this.#setState({ state: "closed" });
  }

  /** Drops the current socket and reconnects now (for tests and "retry now" buttons). */
  reconnect(): void {
    if (this.#closedByUser) return;
    const ws = this.#ws;
    if (ws) this.#lost(ws, 4000, "client reconnect");
    this.#attempt = 0;
    if (this.#reconnectTimer) {
      clearTimeout(this.#reconnectTimer);
      this.#reconnectTimer = null;
      void this.#open();
    }
  }

  // ---- requests ----

  /** Joins a room (recovering from the cursor when the client already follows it). */
  async join(room: string): Promise<JoinedFrame> {
    const since = this.#cursors.rooms[room];
    if (since !== undefined && this.#cursors.epoch) {
      return this.#recoverRoom(room, since, this.#cursors.epoch, true);
    }
    const joined = (await this.request({ type: "join", room })) as JoinedFrame;
    return joined;
  }

  async leave(room: string): Promise<LeftFrame> {
    const left = (await this.request({ type: "leave", room })) as LeftFrame;
    return left;
  }

  /** Creates a room; the creator is a member. `conflict` if it exists. */
  async create(room: string, options: { private?: boolean; members?: string[] } = {}): Promise<JoinedFrame> {
    return (await this.request(
      { type: "create", room, private: options.private ?? false, members: options.members ?? [] },
      { resend: false },
    )) as JoinedFrame;
  }

  async invite(room: string, user: string): Promise<OkFrame> {
    return (await this.request({ type: "invite", room, user })) as OkFrame;
  }

  /** Opens (creating on first use) the direct-message room with `user`. */
  async openDm(user: string): Promise<JoinedFrame> {
    return (await this.request({ type: "open_dm", user })) as JoinedFrame;
  }

  /**
   * A page of a room's history; ascending seq. Without cursor: the newest `limit`. With `thread`:
   * the root and the messages of its thread. Entries are room events of every kind (v1.1); the
   * messages of the page are merged into the room's held messages (by `version`) and returned as
   * held, so a change that arrived live while the page was on its way is not undone.
   */
  async history(room: string, query: { before?: number; after?: number; limit?: number; thread?: number } = {}): Promise<HistoryPage> {
    const frame: OutFrame = { type: "history", room };
    if (query.before !== undefined) frame.before = query.before;
    if (query.after !== undefined) frame.after = query.after;
    if (query.limit !== undefined) frame.limit = query.limit;
    if (query.thread !== undefined) frame.thread = query.thread;
    const page = (await this.request(frame)) as HistoryReplyFrame;
    return { ...page, messages: this.#mergePage(room, page.messages) };
  }

  /** Merges a page into the held messages; returns its entries, messages as now held. */
  #mergePage(room: string, entries: (RoomEventFrame | ChatMessage)[]): RoomEventFrame[] {
    const events = entries.map(asRoomEvent);
    let top = this.#cursors.rooms[room] ?? 0;
    for (const e of events) if (e.seq > top) top = e.seq;
    return events.map((e) => {
      if (e.type === "message") return this.#log.put(e, top).message;
      this.#log.apply(e);
      return e;
    });
  }

  /**
   * Searches the rooms the user is a member of (protocol.md#ws-search): words (case-insensitive,
   * whole words), `"phrases"` and `-exclusions`. Results are newest first; to page back, pass the
   * last result's seq as `before` while `has_more`. A query with no word to include is rejected
   * with `bad_request`; a room the user is not in with `forbidden`.
   */
  async search(query: string, options: { room?: string; limit?: number; before?: number } = {}): Promise<SearchResultsFrame> {
    const frame: OutFrame = { type: "search", query };
    if (options.room !== undefined) frame.room = options.room;
    if (options.limit !== undefined) frame.limit = options.limit;
    if (options.before !== undefined) frame.before = options.before;
    return (await this.request(frame)) as SearchResultsFrame;
  }

  async presence(room: string): Promise<PresenceSnapshotFrame> {
    return (await this.request({ type: "presence", room })) as PresenceSnapshotFrame;
  }

  async ping(): Promise<PongFrame> {
    return (await this.request({ type: "ping" })) as PongFrame;
  }

  /** Tells the room's other members that the user is typing (throttled per room). */
  typing(room: string): void {
    if (this.#state !== "open") return;
    const now = Date.now();
    const last = this.#typingSentAt.get(room) ?? 0;
    if (now - last < this.#opts.typingIntervalMs) return;
    this.#typingSentAt.set(room, now);
    this.#fire({ type: "typing", room });
  }

  /** Moves the read marker of `room` forward to `seq`. */
  read(room: string, seq: number): void {
    if (this.#state !== "open") {
      this.#unsentReads.set(room, Math.max(seq, this.#unsentReads.get(room) ?? 0));
      return;
    }
    this.#fire({ type: "read", room, seq });
  }

  /** Sets the user's status; kept and sent again after every reconnect. */
  setStatus(status: SettableStatus): void {
    this.#status = status;
    if (this.#state === "open") this.#fire({ type: "status", status });
  }

  /**
   * Sends a message. Idempotent: it is sent with one client_id, again after each ack timeout and
   * after each reconnect, until the server acknowledges it; resolves with the `ack`
   * (`duplicate:true` when an earlier try had already been stored).
   */
  send(room: string, body: string, options: { clientId?: string; replyTo?: number; thread?: number } = {}): Promise<AckFrame> {
    const bad = this.#checkBody(body);
    if (bad) return Promise.reject(bad);
    const client_id = options.clientId ?? this.newClientId();
    const frame: WriteFrame = { type: "send", room, body, client_id };
    if (options.replyTo !== undefined) frame.reply_to = options.replyTo;
    if (options.thread !== undefined) frame.thread = options.thread;
    return this.#write(frame);
  }

  /**
   * Replaces the body of one's own message `target` (v1.1). Idempotent like `send` (one client_id,
   * retried until acknowledged); the ack carries the edit event's own seq. `forbidden`: not the
   * author, or the message is deleted; `not_found`: no such message.
   */
  edit(room: string, target: number, body: string, options: { clientId?: string } = {}): Promise<AckFrame> {
    const bad = this.#checkBody(body);
    if (bad) return Promise.reject(bad);
    const client_id = options.clientId ?? this.newClientId();
    return this.#write({ type: "edit", room, seq: target, body, client_id });
  }

  /** Deletes one's own message `target` (v1.1); idempotent like `send`. `not_found` if already deleted. */
  delete(room: string, target: number, options: { clientId?: string } = {}): Promise<AckFrame> {
    const client_id = options.clientId ?? this.newClientId();
    return this.#write({ type: "delete", room, seq: target, client_id });
  }

  /**
   * Adds (`on`, the default) or removes the user's `emoji` reaction to message `target` (v1.1): set
   * semantics, so adding twice or removing an absent one changes nothing. Idempotent like `send`.
   */
  react(room: string, target: number, emoji: string, on = true, options: { clientId?: string } = {}): Promise<AckFrame> {
    if (!isValidEmoji(emoji)) {
      return Promise.reject(new ChatError("bad_request", "emoji must be 1..=32 characters without whitespace or control characters"));
    }
    const client_id = options.clientId ?? this.newClientId();
    return this.#write({ type: "react", room, seq: target, emoji, on, client_id });
  }

  #checkBody(body: string): ChatError | null {
    const max = this.#hello?.limits.max_body;
    const length = charCount(body);
    if (length === 0) return new ChatError("bad_request", "empty body");
    if (max !== undefined && length > max) return new ChatError("too_large", `body has ${length} characters, limit ${max}`);
    return null;
  }

  /** An idempotent write: kept with its client_id and sent until acknowledged (or the deadline). */
  #write(frame: WriteFrame): Promise<AckFrame> {
    const { room, client_id } = frame;
    const existing = this.#outbox.get(client_id);
    if (existing) {
      return new Promise((resolve, reject) => {
        const { resolve: r0, reject: j0 } = existing;
        existing.resolve = (ack) => (r0(ack), resolve(ack));
        existing.reject = (err) => (j0(err), reject(err));
      });
    }
    return new Promise<AckFrame>((resolve, reject) => {
      const entry: OutboxEntry = {
        room, frame, client_id, firstAt: Date.now(), attempts: 0, timer: null, deadline: null, resolve, reject,
      };
      entry.deadline = setTimeout(() => {
        if (this.#outbox.get(client_id) === entry) {
          this.#failSend(entry, new ChatError("timeout", "no ack before the send deadline"));
        }
      }, this.#opts.sendDeadlineMs);
      this.#outbox.set(client_id, entry);
      if (this.#state === "open") this.#transmitSend(entry);
    });
  }

  /** A fresh random client_id (32 hex characters). */
  newClientId(): string {
    const bytes = new Uint8Array(16);
    const crypto = (globalThis as { crypto?: { getRandomValues?: (a: Uint8Array) => Uint8Array } }).crypto;
    if (crypto?.getRandomValues) crypto.getRandomValues(bytes);
    else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(this.#opts.random() * 256);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /**
   * Sends any client frame with a fresh `ref` and resolves with the reply carrying that `ref`
   * (rejects with a `ChatError` for an `error` reply). Requests made while disconnected wait for the
   * next connection; `resend` ones are sent again if the connection drops before the reply.
   * `rate_limited` replies are retried after `retry_after_ms`.
   */
  request(frame: OutFrame, options: { timeoutMs?: number; resend?: boolean } = {}): Promise<ServerFrame> {
    const ref = `r${++this.#refSeq}`;
    const full = { ...frame, ref } as ClientFrame;
    return new Promise<ServerFrame>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.#pending.delete(ref)) reject(new ChatError("timeout", `no reply to ${frame.type} in time`));
      }, options.timeoutMs ?? this.#opts.requestTimeoutMs);
      const p: PendingRequest = { frame: full, resolve, reject, timer, sent: false, resend: options.resend ?? true, rateRetries: 0 };
      this.#pending.set(ref, p);
      if (this.#state === "open") p.sent = this.#transmit(full);
    });
  }

  // ---- connection ----

  async #open(): Promise<void> {
    if (this.#closedByUser) return;
    this.#setState({ state: "connecting", attempt: this.#attempt });
    if (!this.#cursorsLoaded) {
      try {
        this.#cursors = await this.#store.load();
      } catch {
        this.#cursors = emptyCursorState();
      }
      this.#cursorsLoaded = true;
    }
    let token: string;
    try {
      const reason = this.#nextTokenReason;
      token = await this.#tokenProvider({ reason });
      if (typeof token !== "string" || token === "") throw new Error("token provider returned no token");
    } catch (err) {
      this.emit("auth_error", { code: "token_provider", message: err instanceof Error ? err.message : String(err) });
      this.#scheduleReconnect(0, "token provider failed");
      return;
    }
    if (this.#closedByUser) return;
    this.#token = token;
    let ws: WebSocketLike;
    try {
      ws = new this.#WebSocket(this.#opts.url);
    } catch (err) {
      this.#scheduleReconnect(0, err instanceof Error ? err.message : String(err));
      return;
    }
    this.#ws = ws;
    ws.onopen = () => {
      if (this.#ws !== ws) return;
      this.#setState({ state: "authenticating", attempt: this.#attempt });
      this.#authRef = `auth${++this.#refSeq}`;
      this.#lastFrameAt = Date.now();
      ws.send(JSON.stringify({ type: "auth", token, ref: this.#authRef }));
    };
    // Covers a TCP connect or upgrade that hangs as well as a server that never says hello.
    this.#helloTimer = setTimeout(() => {
      if (this.#ws === ws && this.#state !== "open") this.#lost(ws, 4000, "no hello in time");
    }, this.#opts.helloTimeoutMs);
    ws.onmessage = (ev) => {
      if (this.#ws !== ws) return;
      this.#onData(ev.data);
    };
    ws.onerror = () => {
      /* a close event follows */
    };
    ws.onclose = (ev) => {
      if (this.#ws !== ws) return;
      this.#lost(ws, ev.code, ev.reason);
    };
  }

  #detach(ws: WebSocketLike): void {
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = null;
  }

  /** The socket is gone (closed by the server, the network, or judged dead): clean up and reconnect. */
  #lost(ws: WebSocketLike, code: number, reason: string): void {
    if (this.#ws !== ws) return;
    this.#ws = null;
    this.#detach(ws);
    try {
      ws.close(4000, reason.slice(0, 100));
    } catch {
      /* already closing */
    }
    this.#clearTimers();
    this.#queue = [];
    // In-flight requests: the application's idempotent ones go again after the next hello.
    for (const [ref, p] of this.#pending) {
      if (p.resend) {
        p.sent = false;
      } else {
        clearTimeout(p.timer);
        this.#pending.delete(ref);
        p.reject(new ChatError("disconnected", `connection lost before the reply to ${p.frame.type}`));
      }
    }
    for (const entry of this.#outbox.values()) {
      if (entry.timer) clearTimeout(entry.timer);
      entry.timer = null;
    }
    this.#sendRefs.clear();
    this.#resetSync();
    this.#flushCursors();
    if (code === CloseCode.UNAUTHORIZED) this.#nextTokenReason = "rejected";
    // The backoff starts over only after a connection that lasted: a server that says hello and
    // then drops us at once must not be hammered.
    if (this.#helloAt && Date.now() - this.#helloAt > 10_000) this.#attempt = 0;
    this.#helloAt = 0;
    if (this.#closedByUser) return;
    const minDelay = code === CloseCode.RATE_ABUSE ? 5_000 : 0;
    this.#scheduleReconnect(minDelay, reason, code);
  }

  #scheduleReconnect(minDelay: number, reason: string, code?: number): void {
    if (this.#closedByUser) return;
    const delayMs = Math.max(minDelay, backoffDelay(this.#attempt, this.#opts.backoff, this.#opts.random));
    const event: StateEvent = { state: "reconnecting", attempt: this.#attempt, delayMs, reason };
    if (code !== undefined) event.code = code;
    this.#attempt++;
    this.#setState(event);
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      void this.#open();
    }, delayMs);
  }

  #clearTimers(): void {
    for (const t of [this.#helloTimer, this.#refreshTimer]) if (t) clearTimeout(t);
    if (this.#heartbeatTimer) clearInterval(this.#heartbeatTimer);
    if (this.#drainTimer) clearTimeout(this.#drainTimer);
    this.#helloTimer = this.#refreshTimer = this.#heartbeatTimer = this.#drainTimer = null;
  }

  #setState(event: StateEvent): void {
    this.#state = event.state;
    this.emit("state", event);
  }

  // ---- outbound ----

  /** Sends a frame now, or queued under the rate budget. False when there is no open socket. */
  #transmit(frame: ClientFrame): boolean {
    const ws = this.#ws;
    if (!ws || ws.readyState !== OPEN) return false;
    const data = JSON.stringify(frame);
    if (this.#queue.length > 0 || !this.#takeToken()) {
      this.#queue.push(data);
      this.#scheduleDrain();
    } else {
      ws.send(data);
    }
    return true;
  }

  #rate(): number {
    const limit = this.#hello?.limits.rate_per_s;
    return limit && limit > 0 ? Math.max(1, limit * this.#opts.rateBudget) : Infinity;
  }

  #takeToken(): boolean {
    const rate = this.#rate();
    if (rate === Infinity) return true;
    const now = Date.now();
    this.#tokens = Math.min(rate, this.#tokens + ((now - this.#tokensAt) / 1000) * rate);
    this.#tokensAt = now;
    if (this.#tokens >= 1) {
      this.#tokens -= 1;
      return true;
    }
    return false;
  }

  #scheduleDrain(): void {
    if (this.#drainTimer) return;
    const wait = Math.ceil(1000 / this.#rate());
    this.#drainTimer = setTimeout(() => {
      this.#drainTimer = null;
      const ws = this.#ws;
      if (!ws || ws.readyState !== OPEN) return;
      while (this.#queue.length > 0 && this.#takeToken()) ws.send(this.#queue.shift() as string);
      if (this.#queue.length > 0) this.#scheduleDrain();
    }, wait);
  }

  /** Sends a frame that has no reply, with a ref so that an error to it is recognised. */
  #fire(frame: OutFrame, tries = 0): void {
    const ref = `f${++this.#refSeq}`;
    const full = { ...frame, ref } as ClientFrame;
    this.#fireRefs.set(ref, { frame: full, tries });
    if (this.#fireRefs.size > 256) this.#fireRefs.delete(this.#fireRefs.keys().next().value as string);
    this.#transmit(full);
  }

  #transmitSend(entry: OutboxEntry): void {
    if (entry.timer) clearTimeout(entry.timer);
    entry.timer = null;
    if (Date.now() - entry.firstAt > this.#opts.sendDeadlineMs) {
      this.#failSend(entry, new ChatError("timeout", "no ack before the send deadline"));
      return;
    }
    const ref = `s${++this.#refSeq}`;
    this.#sendRefs.set(ref, entry.client_id);
    entry.attempts++;
    this.#transmit({ ...entry.frame, ref } as ClientFrame);
    entry.timer = setTimeout(() => {
      entry.timer = null;
      this.#sendRefs.delete(ref);
      if (this.#outbox.get(entry.client_id) === entry && this.#state === "open") this.#transmitSend(entry);
    }, this.#opts.ackTimeoutMs);
  }

  #retrySendLater(entry: OutboxEntry, delayMs: number): void {
    if (entry.timer) clearTimeout(entry.timer);
    entry.timer = setTimeout(() => {
      entry.timer = null;
      if (this.#outbox.get(entry.client_id) === entry && this.#state === "open") this.#transmitSend(entry);
    }, delayMs);
  }

  #failSend(entry: OutboxEntry, error: ChatError): void {
    if (entry.timer) clearTimeout(entry.timer);
    if (entry.deadline) clearTimeout(entry.deadline);
    this.#outbox.delete(entry.client_id);
    this.emit("send_failed", { room: entry.room, client_id: entry.client_id, error, kind: entry.frame.type });
    entry.reject(error);
  }

  // ---- inbound ----

  #onData(data: unknown): void {
    this.#lastFrameAt = Date.now();
    this.#pingSentAt = 0;
    let text: string;
    if (typeof data === "string") text = data;
    else if (data instanceof ArrayBuffer) text = new TextDecoder().decode(new Uint8Array(data));
    else if (ArrayBuffer.isView(data)) text = new TextDecoder().decode(data as Uint8Array);
    else text = String(data);
    let frame: ServerFrame;
    try {
      frame = JSON.parse(text) as ServerFrame;
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object" || typeof frame.type !== "string") return;
    this.emit("frame", frame);
    this.#handle(frame);
  }

  #handle(frame: ServerFrame): void {
    switch (frame.type) {
      case "hello":
        this.#onHello(frame);
        return;
      case "message":
      case "edit":
      case "delete":
      case "reaction":
        this.#onRoomEvent(frame);
        return;
      case "ack":
        this.#onAck(frame);
        break;
      case "error":
        this.#onError(frame);
        break;
      case "joined":
        this.#onJoined(frame);
        if (typeof frame.unread === "number") {
          this.emit("unread_count", this.#unread.setBase(frame.room, frame.unread, frame.last_read ?? 0, frame.last_seq));
        }
        break;
      case "unread":
        this.emit("unread_count", this.#unread.setBase(frame.room, frame.count, frame.last_read, frame.as_of ?? 0));
        break;
      case "left":
        if (this.#unread.forget(frame.room)) this.emit("unread_count", { room: frame.room, count: 0, lastRead: 0 });
        this.#log.forget(frame.room);
        delete this.#cursors.rooms[frame.room];
        this.#sync.delete(frame.room);
        this.#markDirty();
        break;
      default:
        break;
    }
    if (frame.type !== "error" && "ref" in frame && frame.ref !== undefined) {
      const p = this.#pending.get(frame.ref);
      if (p) {
        clearTimeout(p.timer);
        this.#pending.delete(frame.ref);
        p.resolve(frame);
      }
    }
    if ((SERVER_FRAME_TYPES as readonly string[]).includes(frame.type)) {
      this.emit(frame.type, frame as never);
    }
  }

  #onHello(hello: HelloFrame): void {
    if (this.#helloTimer) clearTimeout(this.#helloTimer);
    this.#helloTimer = null;
    this.#hello = hello;
    this.#authRef = null;
    this.#helloAt = Date.now();
    this.#nextTokenReason = "connect";
    this.#tokens = this.#rate() === Infinity ? 0 : this.#rate();
    this.#tokensAt = Date.now();
    this.#setState({ state: "open" });
    this.#scheduleRefresh();
    this.#startHeartbeat(hello.heartbeat_ms);

    const toRecover = this.#adoptHello(hello);
    this.#unread.clear();
    const counts = hello.rooms.map((r) => this.#unread.setBase(r.room, r.unread, r.last_read, r.last_seq));
    this.emit("hello", hello);
    for (const c of counts) this.emit("unread_count", c);

    for (const { room, since, epoch } of toRecover) {
      void this.#recoverRoom(room, since, epoch, false).catch(() => {
        /* reported through events; a lost connection recovers again */
      });
    }
    // Requests made while disconnected (or cut off) go now; then unacknowledged sends, in order.
    for (const p of this.#pending.values()) if (!p.sent) p.sent = this.#transmit(p.frame);
    for (const entry of this.#outbox.values()) this.#transmitSend(entry);
    if (this.#status) this.#fire({ type: "status", status: this.#status });
    for (const [room, seq] of this.#unsentReads) this.#fire({ type: "read", room, seq });
    this.#unsentReads.clear();
  }

  /**
   * Reconciles the cursors with the server's view: rooms the user left elsewhere are dropped, new
   * rooms start at their last seq, rooms the client is behind in (or whose epoch changed) are
   * returned for recovery.
   */
  #adoptHello(hello: HelloFrame): { room: string; since: number; epoch: string }[] {
    const stored = this.#cursors;
    const sameUser = stored.user === null || stored.user === hello.user;
    const oldEpoch = sameUser ? stored.epoch : null;
    const oldRooms = sameUser ? stored.rooms : {};
    const next: CursorState = { user: hello.user, epoch: hello.epoch, rooms: {} };
    const toRecover: { room: string; since: number; epoch: string }[] = [];
    for (const r of hello.rooms) {
      const since = oldRooms[r.room];
      if (since === undefined || oldEpoch === null) {
        next.rooms[r.room] = r.last_seq;
      } else if (oldEpoch === hello.epoch && since >= r.last_seq) {
        next.rooms[r.room] = since;
      } else {
        // Same epoch: the cursor stays valid while recovering. Another epoch: the room has no
        // valid cursor until the server answers (so a reload mid-way never mixes epochs).
        if (oldEpoch === hello.epoch) next.rooms[r.room] = since;
        toRecover.push({ room: r.room, since, epoch: oldEpoch });
        this.#roomSync(r.room).mode = "recovering";
      }
    }
    this.#cursors = next;
    this.#markDirty();
    return toRecover;
  }

  /**
   * `join{room, since, epoch}`: replays what the client missed, or reports a reset. Messages of the
   * room are held back meanwhile. In the background (after a reconnect) a failure the server calls
   * temporary is retried with backoff on the same connection; an application's join fails at once.
   */
  async #recoverRoom(room: string, since: number, epoch: string, byApp: boolean): Promise<JoinedFrame> {
    const sync = this.#roomSync(room);
    sync.mode = "recovering";
    const generation = sync.generation;
    const current = () => sync.generation === generation && this.#sync.get(room) === sync;
    let joined: JoinedFrame;
    for (let failures = 0; ; ) {
      try {
        joined = (await this.request({ type: "join", room, since, epoch }, { resend: false })) as JoinedFrame;
        break;
      } catch (err) {
        const error = err instanceof ChatError ? err : new ChatError("internal", String(err));
        if (!current() || error.code === "disconnected" || error.code === "closed") throw error;
        if (error.code === "forbidden" || error.code === "not_found") {
          // No longer a member: forget the room.
          delete this.#cursors.rooms[room];
          this.#sync.delete(room);
          this.#markDirty();
          throw error;
        }
        if (failures === 0) this.emit("sync_error", { room, error });
        if (byApp || !TEMPORARY_ERRORS.has(error.code)) {
          this.#drain(room);
          throw error;
        }
        await sleep(backoffDelay(++failures, { initialMs: 500, maxMs: 30_000 }, this.#opts.random));
        if (!current()) throw error;
      }
    }
    if (!current()) return joined;
    if (joined.recovered === true) {
      this.#cursors.rooms[room] = Math.max(this.#cursors.rooms[room] ?? since, since);
      const replayed = this.#drain(room);
      this.emit("recovered", { room, since, replayed });
    } else {
      const previousEpoch = epoch;
      this.#cursors.rooms[room] = joined.last_seq;
      for (const seq of [...sync.pending.keys()]) if (seq <= joined.last_seq) sync.pending.delete(seq);
      this.#markDirty();
      this.#log.forget(room); // its seqs are of another log now
      this.emit("reset", {
        room,
        reason: previousEpoch !== this.#cursors.epoch ? "epoch_changed" : "not_recovered",
        previousEpoch,
        epoch: this.#cursors.epoch ?? "",
        since,
        lastSeq: joined.last_seq,
      });
      this.#drain(room);
    }
    return joined;
  }

  #onJoined(joined: JoinedFrame): void {
    // A join, create or open_dm without `since`: the room is followed from its current last seq.
    const sync = this.#roomSync(joined.room);
    if (sync.mode !== "live") return;
    const current = this.#cursors.rooms[joined.room];
    if (current === undefined || current < joined.last_seq) {
      this.#cursors.rooms[joined.room] = Math.max(current ?? 0, joined.last_seq);
      this.#markDirty();
    }
  }

  /** Any room event (message, edit, delete, reaction): one `prev_seq` chain per room covers them all. */
  #onRoomEvent(m: RoomEventFrame): void {
    const room = m.room;
    const last = this.#cursors.rooms[room];
    if (last !== undefined && m.seq <= last) return; // already delivered
    const sync = this.#roomSync(room);
    if (sync.mode !== "live") {
      sync.pending.set(m.seq, m);
      return;
    }
    if (last === undefined || m.prev_seq <= last) {
      this.#deliver(m);
      return;
    }
    sync.pending.set(m.seq, m);
    this.emit("gap", { room, after: last, seenPrevSeq: m.prev_seq });
    void this.#fillGap(room);
  }

  /** Hands one event of the ordered stream to the app, and applies it to the held messages. */
  #deliver(e: RoomEventFrame, pageTop?: number): void {
    this.#cursors.rooms[e.room] = e.seq;
    this.#markDirty();
    if (e.type === "message") {
      // From a page, a root's `replies` already counts the thread's messages up to the page's end.
      const { message } = this.#log.put(e, pageTop);
      this.emit("message", message);
      if (e.thread !== undefined) {
        const root = this.#log.countReply(e.room, e.thread, e.seq);
        if (root) this.emit("update", { room: e.room, seq: root.seq, message: root, cause: "reply", event: message });
      }
      // protocol.md#ws-unread: only `message` events count.
      const count = this.#unread.onMessage(e.room, e.seq, e.from, this.#hello?.user ?? null);
      if (count) this.emit("unread_count", count);
      return;
    }
    const change: ChangeEventFrame = e;
    const result = this.#log.apply(change);
    this.emit(change.type, change as never);
    if (result.status === "applied") {
      this.emit("update", { room: e.room, seq: change.target, message: result.message, cause: change.type, event: change });
    }
  }

  /** Delivers held-back messages in order until the next gap (which it starts filling). Returns how many. */
  #drain(room: string): number {
    const sync = this.#roomSync(room);
    sync.mode = "live";
    const held = [...sync.pending.values()].sort((a, b) => a.seq - b.seq);
    sync.pending.clear();
    let delivered = 0;
    for (let i = 0; i < held.length; i++) {
      const m = held[i] as RoomEventFrame;
      const last = this.#cursors.rooms[room];
      if (last !== undefined && m.seq <= last) continue;
      if (last === undefined || m.prev_seq <= last) {
        this.#deliver(m);
        delivered++;
        continue;
      }
      for (const rest of held.slice(i)) sync.pending.set(rest.seq, rest);
      this.emit("gap", { room, after: last, seenPrevSeq: m.prev_seq });
      void this.#fillGap(room);
      break;
    }
    return delivered;
  }

  /** Fetches `history{after: last}` pages until `has_more` is false, then delivers what was held. */
  async #fillGap(room: string): Promise<void> {
    const sync = this.#roomSync(room);
    if (sync.mode === "filling") return;
    sync.mode = "filling";
    const generation = sync.generation;
    let failures = 0;
    for (;;) {
      const after = this.#cursors.rooms[room] ?? 0;
      let page: HistoryReplyFrame;
      try {
        page = (await this.request(
          { type: "history", room, after, limit: this.#opts.historyPageSize },
          { resend: false },
        )) as HistoryReplyFrame;
      } catch (err) {
        if (sync.generation !== generation) return;
        const error = err instanceof ChatError ? err : new ChatError("internal", String(err));
        if (error.code === "disconnected" || error.code === "closed") return;
        if (failures === 0) this.emit("sync_error", { room, error });
        if (!TEMPORARY_ERRORS.has(error.code)) {
          // Not something waiting helps with (forbidden: no longer a member): deliver what is held.
          this.#drainForced(room);
          return;
        }
        // The archive may be down (PostgreSQL outage): keep the room held back and try again.
        await sleep(backoffDelay(++failures, { initialMs: 500, maxMs: 30_000 }, this.#opts.random));
        if (sync.generation !== generation) return;
        continue;
      }
      if (sync.generation !== generation) return;
      const top = page.messages.reduce((max, entry) => Math.max(max, entry.seq), 0);
      for (const entry of page.messages) {
        const last = this.#cursors.rooms[room];
        if (last !== undefined && entry.seq <= last) continue;
        this.#deliver(asRoomEvent(entry), top);
      }
      if (!page.has_more || page.messages.length === 0) break;
    }
    this.#drain(room);
  }

  /** Gives up on a gap: delivers the held messages in order, accepting the hole. */
  #drainForced(room: string): void {
    const sync = this.#roomSync(room);
    sync.mode = "live";
    const held = [...sync.pending.values()].sort((a, b) => a.seq - b.seq);
    sync.pending.clear();
    for (const m of held) {
      const last = this.#cursors.rooms[room];
      if (last === undefined || m.seq > last) this.#deliver(m);
    }
  }

  #roomSync(room: string): RoomSync {
    let sync = this.#sync.get(room);
    if (!sync) {
      sync = { mode: "live", pending: new Map(), generation: 0 };
      this.#sync.set(room, sync);
    }
    return sync;
  }

  /** On disconnect: held-back messages are dropped; the reconnect's recovery replays them. */
  #resetSync(): void {
    for (const sync of this.#sync.values()) {
      sync.generation++;
      sync.mode = "live";
      sync.pending.clear();
    }
  }

  #onAck(ack: AckFrame): void {
    if (ack.ref) this.#sendRefs.delete(ack.ref);
    const entry = this.#outbox.get(ack.client_id);
    if (!entry || entry.room !== ack.room) return;
    if (entry.timer) clearTimeout(entry.timer);
    if (entry.deadline) clearTimeout(entry.deadline);
    this.#outbox.delete(ack.client_id);
    entry.resolve(ack);
  }

  #onError(err: ErrorFrame): void {
    const ref = err.ref;
    if (ref !== undefined && ref === this.#authRef) {
      this.#authRef = null;
      this.emit("auth_error", { code: err.code, message: err.message });
      if (err.code === "unauthorized" || err.code === "token_expired") this.#nextTokenReason = "rejected";
      // The first auth failed (bad token, or the server cannot say hello yet): retry with backoff.
      if (this.#state === "authenticating" && this.#ws) this.#lost(this.#ws, 4000, `auth: ${err.code}`);
      return;
    }
    if (err.code === "token_expired" || (err.code === "unauthorized" && ref?.startsWith("auth"))) {
      this.#nextTokenReason = "rejected";
      this.emit("auth_error", { code: err.code, message: err.message });
      return;
    }
    if (ref === undefined) return;
    const fired = this.#fireRefs.get(ref);
    if (fired) {
      this.#fireRefs.delete(ref);
      // A read marker or a status is state worth retrying; a typing hint is not.
      const { ref: _old, ...frame } = fired.frame;
      if (frame.type !== "typing" && TEMPORARY_ERRORS.has(err.code) && fired.tries < 5) {
        setTimeout(() => {
          if (frame.type === "status" && frame.status !== this.#status) return; // superseded
          if (this.#state !== "open") {
            if (frame.type === "read") this.#unsentReads.set(frame.room, Math.max(frame.seq, this.#unsentReads.get(frame.room) ?? 0));
            return; // a status is sent again after the next hello anyway
          }
          this.#fire(frame as OutFrame, fired.tries + 1);
        }, err.retry_after_ms ?? backoffDelay(fired.tries + 1, { initialMs: 1_000, maxMs: 15_000 }, this.#opts.random));
      }
      return;
    }
    const clientId = this.#sendRefs.get(ref);
    if (clientId !== undefined) {
      this.#sendRefs.delete(ref);
      const entry = this.#outbox.get(clientId);
      if (!entry) return;
      if (RETRYABLE_SEND_ERRORS.has(err.code)) {
        const delay = err.retry_after_ms ?? backoffDelay(entry.attempts, { initialMs: 500, maxMs: 10_000 }, this.#opts.random);
        this.#retrySendLater(entry, delay);
      } else {
        this.#failSend(entry, new ChatError(err.code, err.message, err));
      }
      return;
    }
    const p = this.#pending.get(ref);
    if (!p) return;
    if (err.code === "rate_limited" && p.rateRetries < 5) {
      p.rateRetries++;
      p.sent = false;
      setTimeout(() => {
        if (this.#pending.get(ref) === p && this.#state === "open" && !p.sent) p.sent = this.#transmit(p.frame);
      }, err.retry_after_ms ?? 1_000);
      return;
    }
    clearTimeout(p.timer);
    this.#pending.delete(ref);
    p.reject(new ChatError(err.code, err.message, err));
  }

  // ---- token refresh and heartbeat ----

  #scheduleRefresh(): void {
    if (this.#refreshTimer) clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    const expiry = this.#token ? tokenExpiryMs(this.#token) : null;
    if (expiry === null) return;
    const remaining = expiry - Date.now();
    const margin = Math.min(this.#opts.refreshMarginMs, Math.max(0, remaining) / 4);
    const delay = Math.min(2_147_000_000, Math.max(250, remaining - margin));
    const ws = this.#ws;
    this.#refreshTimer = setTimeout(() => void this.#refresh(ws, expiry), delay);
  }

  async #refresh(ws: WebSocketLike | null, oldExpiry: number): Promise<void> {
    this.#refreshTimer = null;
    if (!ws || this.#ws !== ws) return;
    let token: string;
    try {
      token = await this.#tokenProvider({ reason: "refresh" });
    } catch (err) {
      this.emit("auth_error", { code: "token_provider", message: err instanceof Error ? err.message : String(err) });
      const left = oldExpiry - Date.now();
      if (left > 500 && this.#ws === ws) {
        this.#refreshTimer = setTimeout(() => void this.#refresh(ws, oldExpiry), Math.min(5_000, left / 2));
      }
      return;
    }
    if (this.#ws !== ws || this.#state !== "open") return;
    this.#token = token;
    // `auth` with a fresh token: the server answers nothing on success, an error on failure.
    this.#transmit({ type: "auth", token, ref: `auth-refresh${++this.#refSeq}` });
    const expiresAt = tokenExpiryMs(token);
    this.emit("token_refreshed", { expiresAt });
    if (expiresAt !== null && expiresAt > oldExpiry) this.#scheduleRefresh();
  }

  #startHeartbeat(heartbeatMs: number): void {
    if (this.#heartbeatTimer) clearInterval(this.#heartbeatTimer);
    this.#heartbeatTimer = null;
    if (!this.#opts.heartbeat || !(heartbeatMs > 0)) return;
    const ws = this.#ws;
    this.#heartbeatTimer = setInterval(() => {
      if (!ws || this.#ws !== ws) return;
      const now = Date.now();
      if (this.#pingSentAt && now - this.#pingSentAt > 2 * heartbeatMs) {
        this.#lost(ws, 4000, "heartbeat timeout");
      } else if (!this.#pingSentAt && now - this.#lastFrameAt > 2 * heartbeatMs) {
        this.#pingSentAt = now;
        this.#transmit({ type: "ping", ref: `hb${++this.#refSeq}` });
      }
    }, heartbeatMs);
  }

  // ---- cursor persistence ----

  #markDirty(): void {
    if (this.#saveTimer) return;
    this.#saveTimer = setTimeout(() => {
      this.#saveTimer = null;
      void this.#store.save(this.#cursors);
    }, 200);
  }

  #flushCursors(): void {
    if (this.#saveTimer) clearTimeout(this.#saveTimer);
    this.#saveTimer = null;
    if (this.#cursorsLoaded) void this.#store.save(this.#cursors);
  }
}
