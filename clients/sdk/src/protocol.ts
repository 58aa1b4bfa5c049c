/**
 * The WebSocket protocol of chat-edge (protocol.md#ws), as TypeScript types.
 *
 * One JSON object per text frame, with a string `type`. Any client frame may carry `ref`; the reply
 * or error to it echoes the same `ref`.
 */

export type RoomKind = "public" | "private" | "dm";
/** Statuses a client may set. */
export type SettableStatus = "online" | "away" | "busy";
/** Statuses a client may see (`offline` is derived by the server). */
export type Status = SettableStatus | "offline";

export type ErrorCode =
  | "bad_request"
  | "unknown_type"
  | "unauthorized"
  | "token_expired"
  | "forbidden"
  | "not_found"
  | "conflict"
  | "too_large"
  | "limit_exceeded"
  | "rate_limited"
  | "unavailable"
  | "internal";

/** WebSocket close codes the server uses. */
export const CloseCode = {
  NORMAL: 1000,
  TOO_BIG: 1009,
  RESTART: 1012,
  UNAUTHORIZED: 4001,
  SLOW_CONSUMER: 4008,
  RATE_ABUSE: 4029,
} as const;

// ---- client → server ----

export interface AuthFrame { type: "auth"; token: string; ref?: string }
export interface JoinFrame { type: "join"; room: string; since?: number; epoch?: string; ref?: string }
export interface LeaveFrame { type: "leave"; room: string; ref?: string }
export interface CreateFrame { type: "create"; room: string; private: boolean; members: string[]; ref?: string }
export interface InviteFrame { type: "invite"; room: string; user: string; ref?: string }
export interface OpenDmFrame { type: "open_dm"; user: string; ref?: string }
export interface SendFrame {
  type: "send";
  room: string;
  body: string;
  client_id: string;
  /** v1.1: the seq of a `message` of the same room that this one quotes. */
  reply_to?: number;
  /** v1.1: the seq of the top-level `message` whose thread this one belongs to. */
  thread?: number;
  ref?: string;
}
/** v1.1 (protocol.md#ws-lifecycle): replaces the body of one's own message `seq`. */
export interface EditFrame { type: "edit"; room: string; seq: number; body: string; client_id: string; ref?: string }
/** v1.1: deletes one's own message `seq`. */
export interface DeleteFrame { type: "delete"; room: string; seq: number; client_id: string; ref?: string }
/** v1.1: adds (`on`, the default) or removes the user's `emoji` reaction to message `seq` (set semantics). */
export interface ReactFrame { type: "react"; room: string; seq: number; emoji: string; on?: boolean; client_id: string; ref?: string }
export interface HistoryFrame {
  type: "history";
  room: string;
  before?: number;
  after?: number;
  limit?: number;
  /** v1.1: only the root `thread` and the messages of its thread (message events only). */
  thread?: number;
  ref?: string;
}
/** Full-text search of the user's rooms (protocol.md#ws-search): words, `"phrases"`, `-exclusions`. */
export interface SearchFrame {
  type: "search";
  query: string;
  /** Only this room (`forbidden` if the user is not a member). */
  room?: string;
  /** Clamped by the server to 1..=50, default 20. */
  limit?: number;
  /** Only messages with a lower seq: the last result's seq pages back. */
  before?: number;
  ref?: string;
}
export interface TypingFrame { type: "typing"; room: string; ref?: string }
export interface ReadFrame { type: "read"; room: string; seq: number; ref?: string }
export interface StatusFrame { type: "status"; status: SettableStatus; ref?: string }
export interface PresenceFrame { type: "presence"; room: string; ref?: string }
export interface PingFrame { type: "ping"; ref?: string }

export type ClientFrame =
  | AuthFrame
  | JoinFrame
  | LeaveFrame
  | CreateFrame
  | InviteFrame
  | OpenDmFrame
  | SendFrame
  | EditFrame
  | DeleteFrame
  | ReactFrame
  | HistoryFrame
  | SearchFrame
  | TypingFrame
  | ReadFrame
  | StatusFrame
  | PresenceFrame
  | PingFrame;

// ---- server → client ----

export interface Limits { max_body: number; max_frame: number; rate_per_s: number }

export interface RoomSummary {
  room: string;
  kind: RoomKind;
  last_seq: number;
  last_read: number;
  unread: number;
}

export interface ChatMessage {
  room: string;
  /** JetStream sequence: strictly increasing within a room, not contiguous. */
  seq: number;
  /** Seq of the previous event of the same room (0 for the first). */
  prev_seq: number;
  from: string;
  body: string;
  client_id: string;
  ts: number;
  /** v1.1: the message this one quotes. */
  reply_to?: number;
  /** v1.1: the root of the thread this message belongs to. */
  thread?: number;
  // v1.1, in history pages and search results only (protocol.md#ws-lifecycle): the current state.
  /** The highest seq of any event that changed the message; its own seq if none. */
  version?: number;
  /** `ts` of the latest edit; absent if never edited. */
  edited?: number;
  /** True once deleted: `body` is then "" and there are no reactions. */
  deleted?: boolean;
  /** `{emoji: [user ids in the order they reacted]}`; absent or empty if none. */
  reactions?: Reactions;
  /** On a thread's root: how many messages the thread holds (deleted ones included). */
  replies?: number;
}

/** Users who reacted with each emoji, in the order they reacted. */
export type Reactions = Record<string, string[]>;

/** v1.1: an `edit` room event: `target`'s body is now `body`. */
export interface EditEvent {
  room: string;
  seq: number;
  prev_seq: number;
  from: string;
  target: number;
  body: string;
  client_id: string;
  ts: number;
}
/** v1.1: a `delete` room event. */
export interface DeleteEvent {
  room: string;
  seq: number;
  prev_seq: number;
  from: string;
  target: number;
  client_id: string;
  ts: number;
}
/** v1.1: a `reaction` room event: `on` adds `from`'s `emoji` to `target`, `!on` removes it. */
export interface ReactionEvent {
  room: string;
  seq: number;
  prev_seq: number;
  from: string;
  target: number;
  emoji: string;
  on: boolean;
  client_id: string;
  ts: number;
}

export interface NotificationData {
  id: string;
  /** `reply` (v1.1): a reply to one's message, or a message in one's thread. */
  kind: "mention" | "dm" | "invite" | "reply";
  room: string;
  seq: number;
  from: string;
  preview: string;
  ts: number;
}

export interface PresenceEntry { user: string; status: Status; last_seen: number }

export interface HelloFrame {
  type: "hello";
  user: string;
  session: string;
  epoch: string;
  heartbeat_ms: number;
  limits: Limits;
  rooms: RoomSummary[];
  /** The newest 100 pending notifications, oldest first (CONTRACT v1.1). */
  notifications: NotificationData[];
  /** How many notifications are pending in all (v1.1; absent from older servers). */
  notifications_total?: number;
}
export interface MessageFrame extends ChatMessage { type: "message" }
export interface EditEventFrame extends EditEvent { type: "edit" }
export interface DeleteEventFrame extends DeleteEvent { type: "delete" }
export interface ReactionEventFrame extends ReactionEvent { type: "reaction" }
/** A room event of any kind, each with the `type` of its live frame (protocol.md#ws-lifecycle). */
export type RoomEventFrame = MessageFrame | EditEventFrame | DeleteEventFrame | ReactionEventFrame;
/** The room events that change another message (`target`). */
export type ChangeEventFrame = EditEventFrame | DeleteEventFrame | ReactionEventFrame;
export const ROOM_EVENT_TYPES: readonly RoomEventFrame["type"][] = ["message", "edit", "delete", "reaction"];
export interface AckFrame {
  type: "ack";
  ref?: string;
  room: string;
  client_id: string;
  seq: number;
  ts: number;
  duplicate: boolean;
}
export interface JoinedFrame {
  type: "joined";
  ref?: string;
  room: string;
  kind: RoomKind;
  last_seq: number;
  recovered?: boolean;
  members?: string[];
  /** v1.1: the user's read marker and unread count, covering events up to `last_seq`. */
  last_read?: number;
  unread?: number;
}
export interface LeftFrame { type: "left"; ref?: string; room: string }
export interface OkFrame { type: "ok"; ref?: string; room: string }
export interface HistoryReplyFrame {
  type: "history";
  ref?: string;
  room: string;
  /**
   * Room events of every kind in ascending seq (v1.1: each with its `type`; a server before v1.1
   * sends messages without one). Messages carry their current state (`version`, …).
   */
  messages: (RoomEventFrame | ChatMessage)[];
  has_more: boolean;
}
/** Answer to `search`: message objects (with `room`), newest first (descending seq across rooms). */
export interface SearchResultsFrame {
  type: "search_results";
  ref?: string;
  query: string;
  results: ChatMessage[];
  /** More matches below the last result's seq: page with `before`. */
  has_more: boolean;
}
export interface TypingEventFrame { type: "typing"; room: string; user: string }
export interface PresenceEventFrame { type: "presence"; room: string; user: string; status: Status; last_seen: number }
export interface PresenceSnapshotFrame { type: "presence_snapshot"; ref?: string; room: string; users: PresenceEntry[] }
/** v1.1: sent when the read marker moves, not per message; `count` covers events up to `as_of`. */
export interface UnreadFrame { type: "unread"; room: string; count: number; last_read: number; as_of?: number }
export interface NotificationFrame extends NotificationData { type: "notification" }
export interface ErrorFrame {
  type: "error";
  ref?: string;
  code: ErrorCode;
  message: string;
  retry_after_ms?: number;
}
export interface PongFrame { type: "pong"; ref?: string }

export type ServerFrame =
  | HelloFrame
  | MessageFrame
  | EditEventFrame
  | DeleteEventFrame
  | ReactionEventFrame
  | AckFrame
  | JoinedFrame
  | LeftFrame
  | OkFrame
  | HistoryReplyFrame
  | SearchResultsFrame
  | TypingEventFrame
  | PresenceEventFrame
  | PresenceSnapshotFrame
  | UnreadFrame
  | NotificationFrame
  | ErrorFrame
  | PongFrame;

/** Every server frame type, keyed by its `type`. */
export interface ServerFrameMap {
  hello: HelloFrame;
  message: MessageFrame;
  edit: EditEventFrame;
  delete: DeleteEventFrame;
  reaction: ReactionEventFrame;
  ack: AckFrame;
  joined: JoinedFrame;
  left: LeftFrame;
  ok: OkFrame;
  history: HistoryReplyFrame;
  search_results: SearchResultsFrame;
  typing: TypingEventFrame;
  presence: PresenceEventFrame;
  presence_snapshot: PresenceSnapshotFrame;
  unread: UnreadFrame;
  notification: NotificationFrame;
  error: ErrorFrame;
  pong: PongFrame;
}

export const SERVER_FRAME_TYPES: readonly (keyof ServerFrameMap)[] = [
  "hello",
  "message",
  "edit",
  "delete",
  "reaction",
  "ack",
  "joined",
  "left",
  "ok",
  "history",
  "search_results",
  "typing",
  "presence",
  "presence_snapshot",
  "unread",
  "notification",
  "error",
  "pong",
];

/** Every client frame type (the Rust side's `CLIENT_TYPES`; test/protocol-sync.test.mjs compares them). */
export const CLIENT_FRAME_TYPES: readonly ClientFrame["type"][] = [
  "auth", "join", "leave", "create", "invite", "open_dm", "send", "edit", "delete", "react",
  "history", "search", "typing", "read", "status", "presence", "ping",
];

/** Every `error.code`. */
export const ERROR_CODES: readonly ErrorCode[] = [
  "bad_request", "unknown_type", "unauthorized", "token_expired", "forbidden", "not_found", "conflict",
  "too_large", "limit_exceeded", "rate_limited", "unavailable", "internal",
];

/** Room and user id pattern of protocol.md#identities. */
/** Longest reaction emoji, in characters (protocol.md#ws `react`). */
export const MAX_EMOJI_CHARS = 32;
/** Most distinct emoji on one message (protocol.md#ws-limits): past it, an addition changes nothing. */
export const MAX_REACTION_EMOJI = 20;
/** Most reactions (user and emoji pairs) on one message, the same way. */
export const MAX_REACTIONS = 5_000;
/** Whether `emoji` may name a reaction: 1..=32 characters, no whitespace and no control characters. */
export function isValidEmoji(emoji: string): boolean {
  const chars = [...emoji];
  return chars.length >= 1 && chars.length <= MAX_EMOJI_CHARS && !/[\s\p{Cc}]/u.test(emoji);
}

export const ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
export function isValidId(id: string): boolean {
  return ID_PATTERN.test(id);
}
