/**
 * The WebSocket protocol of chat-edge (CONTRACT §2), as TypeScript types.
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
export interface SendFrame { type: "send"; room: string; body: string; client_id: string; ref?: string }
export interface HistoryFrame {
  type: "history";
  room: string;
  before?: number;
  after?: number;
  limit?: number;
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
  | HistoryFrame
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
}

export interface NotificationData {
  id: string;
  kind: "mention" | "dm" | "invite";
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
  notifications: NotificationData[];
}
export interface MessageFrame extends ChatMessage { type: "message" }
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
  messages: ChatMessage[];
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
  | AckFrame
  | JoinedFrame
  | LeftFrame
  | OkFrame
  | HistoryReplyFrame
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
  ack: AckFrame;
  joined: JoinedFrame;
  left: LeftFrame;
  ok: OkFrame;
  history: HistoryReplyFrame;
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
  "ack",
  "joined",
  "left",
  "ok",
  "history",
  "typing",
  "presence",
  "presence_snapshot",
  "unread",
  "notification",
  "error",
  "pong",
];

/** Room and user id pattern of CONTRACT §1. */
export const ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
export function isValidId(id: string): boolean {
  return ID_PATTERN.test(id);
}
