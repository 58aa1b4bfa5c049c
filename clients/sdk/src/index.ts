/** Chat SDK: a WebSocket client for chat-edge (protocol.md#ws) for browsers and Node. */
export * from "./protocol.js";
export * from "./client.js";
export * from "./cursor.js";
export { MessageStore, applyChange, toStored, type StoredMessage, type ApplyResult, type MessageStoreOptions } from "./messages.js";
export { UnreadTracker, type UnreadCount } from "./unread.js";
export { backoffDelay, type BackoffOptions } from "./backoff.js";
export { decodeJwt, tokenExpiryMs, type JwtClaims } from "./jwt.js";
export { Emitter, type Listener } from "./emitter.js";
