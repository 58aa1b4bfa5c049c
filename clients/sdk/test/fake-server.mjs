// A small in-process fake of chat-edge speaking protocol.md#ws, for the SDK's unit tests (and, with
// `node test/fake-server.mjs`, for trying the browser app without the Rust services).
//
// It is a fake, not a model of the real server: one process, no NATS, no persistence. It keeps
// what the tests need to be faithful: per-room seq/prev_seq from one global counter (like the
// JetStream stream), an epoch, join{since, epoch} replay, history paging, send idempotency per
// (user, client_id), unread counts, presence and typing, and the v1.1 lifecycle (edit, delete,
// react, reply_to, thread; history pages of every event kind with message state). Tests steer it through hooks:
// `dropDelivery`, `dropAck`, `replyDelay`, `killUser`, `publish`, `newEpoch`.

import { createHash, randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { extname, join, normalize, resolve } from "node:path";
import { WebSocketServer } from "ws";

const ID = /^[A-Za-z0-9_-]{1,64}$/;

export function b64url(value) {
  return Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");
}

/** An unsigned JWT-shaped token (the fake does not check signatures). */
export function makeToken(sub, ttlSeconds = 3600, extra = {}) {
  const now = Math.floor(Date.now() / 1000);
  return `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url({ sub, iat: now, exp: now + ttlSeconds, ...extra })}.fake`;
}

function claimsOf(token) {
  try {
    const [, payload] = String(token).split(".");
    return JSON.parse(Buffer.from(payload, "base64url").toString("utf8"));
  } catch {
    return null;
  }
}

export function dmRoomId(a, b) {
  const [x, y] = a < b ? [a, b] : [b, a];
  return "dm-" + createHash("sha256").update(`${x}\n${y}`).digest("hex").slice(0, 16);
}

const MIME = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".map": "application/json",
  ".svg": "image/svg+xml",
  ".ico": "image/x-icon",
};

export class FakeServer {
  constructor(options = {}) {
    this.options = options;
    this.epoch = options.epoch ?? `epoch-${randomBytes(4).toString("hex")}`;
    this.heartbeatMs = options.heartbeatMs ?? 5000;
    this.limits = { max_body: 4000, max_frame: 65536, rate_per_s: options.ratePerS ?? 100 };
    this.seq = 0;
    /** room id → { kind, members: Set, events: message[] } */
    this.rooms = new Map();
    /** `${user}\n${client_id}` → message */
    this.dedupe = new Map();
    /** `${user}\n${room}` → last_read */
    this.lastRead = new Map();
    /** user → status set with `status` */
    this.statuses = new Map();
    this.lastSeen = new Map();
    this.notifications = new Map(); // user → notification[]
    this.sessions = new Set();
    /** Every client frame received: { user, frame }. */
    this.received = [];
    this.sessionCount = 0;
    // Hooks.
    this.dropDelivery = null; // (session, message) => boolean
    this.dropAck = null; // (session, sendFrame) => boolean
    this.replyDelay = null; // (session, frame) => ms
    this.onFrame = null; // (session, frame) => void
    this.refuse = null; // (session, frame) => an error code to answer instead, or null
    this.ignoreAuth = false; // true: `auth` frames go unanswered (a server that never says hello)
  }

  async start(port = 0, host = "127.0.0.1") {
    this.http = createServer((req, res) => this.#http(req, res));
    this.wss = new WebSocketServer({ noServer: true });
    this.http.on("upgrade", (req, socket, head) => {
      if (!req.url.startsWith("/ws")) {
        socket.destroy();
        return;
      }
      this.wss.handleUpgrade(req, socket, head, (ws) => this.#accept(ws, req));
    });
    await new Promise((r) => this.http.listen(port, host, r));
    const addr = this.http.address();
    this.port = addr.port;
    this.url = `ws://${host}:${addr.port}/ws`;
    this.httpUrl = `http://${host}:${addr.port}`;
    return this;
  }

  async stop() {
    for (const s of this.sessions) s.ws.terminate();
    this.sessions.clear();
    await new Promise((r) => this.wss.close(() => r()));
    this.http.closeAllConnections?.();
    await new Promise((r) => this.http.close(() => r()));
  }

  // ---- test controls ----

  /** Drops every socket of `user` without a close frame (as a network failure would). */
  killUser(user) {
    for (const s of [...this.sessions]) if (s.user === user) s.ws.terminate();
  }

  /** Makes every current socket of `user` silent both ways, as a dead TCP path would (new ones work). */
  blackhole(user) {
    for (const s of this.sessions) if (s.user === user) s.blackholed = true;
  }

  /** Closes every socket of `user` with a code. */
  closeUser(user, code = 1012, reason = "restart") {
    for (const s of [...this.sessions]) if (s.user === user) s.ws.close(code, reason);
  }

  /** Stores a message as if a bot had published it, and delivers it. */
  publish(room, from, body, clientId = `bot-${randomBytes(6).toString("hex")}`, extra = {}) {
    const r = this.#room(room);
    return this.#store(r, room, from, body, clientId, { type: "message", ...extra }).message;
  }

  /** A new incarnation of the log: seqs restart and old cursors mean nothing. */
  newEpoch(epoch = `epoch-${randomBytes(4).toString("hex")}`) {
    this.epoch = epoch;
    this.seq = 0;
    for (const r of this.rooms.values()) r.events = [];
    this.dedupe.clear();
  }

  messages(room) {
    return this.rooms.get(room)?.events ?? [];
  }

  framesOf(type, user) {
    return this.received.filter((r) => r.frame.type === type && (user === undefined || r.user === user)).map((r) => r.frame);
  }

  // ---- HTTP: /dev/token and static files (for trying the web app) ----

  async #http(req, res) {
    if (req.method === "POST" && req.url === "/dev/token" && this.options.devLogin) {
      let body = "";
      for await (const chunk of req) body += chunk;
      let user;
      try {
        user = JSON.parse(body).user;
      } catch {
        /* handled below */
      }
      if (typeof user !== "string" || !ID.test(user)) {
        res.writeHead(400, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: { code: "bad_request", message: "user must match ^[A-Za-z0-9_-]{1,64}$" } }));
        return;
      }
      const ttl = this.options.tokenTtl ?? 3600;
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ token: makeToken(user, ttl), user, expires_in: ttl }));
      return;
    }
    if (req.method === "GET" && req.url === "/healthz") {
      res.writeHead(200);
      res.end("ok");
      return;
    }
    const dir = this.options.staticDir;
    if (req.method !== "GET" || !dir) {
      res.writeHead(404);
      res.end("not found");
      return;
    }
    const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    const file = normalize(join(dir, path === "/" ? "index.html" : path));
    if (!file.startsWith(resolve(dir))) {
      res.writeHead(403);
      res.end();
      return;
    }
    try {
      const data = await readFile(file);
      res.writeHead(200, { "content-type": MIME[extname(file)] ?? "application/octet-stream", "cache-control": "no-store" });
      res.end(data);
    } catch {
      res.writeHead(404);
      res.end("not found");
    }
  }

  // ---- WebSocket sessions ----

  #accept(ws, req) {
    const session = { ws, user: null, id: `s${++this.sessionCount}`, exp: 0, expTimer: null, bucket: this.limits.rate_per_s, bucketAt: Date.now() };
    this.sessions.add(session);
    const authTimer = setTimeout(() => {
      if (!session.user) ws.close(4001, "no auth");
    }, 10_000);
    const header = req.headers.authorization;
    if (header?.startsWith("Bearer ")) this.#auth(session, { type: "auth", token: header.slice(7) });
    ws.on("message", (data, isBinary) => {
      if (isBinary) return;
      let frame;
      try {
        frame = JSON.parse(data.toString());
      } catch {
        this.#send(session, { type: "error", code: "bad_request", message: "frame is not valid JSON" });
        return;
      }
      if (!frame || typeof frame !== "object" || Array.isArray(frame)) {
        this.#send(session, { type: "error", code: "bad_request", message: "frame must be a JSON object" });
        return;
      }
      this.received.push({ user: session.user, frame });
      this.onFrame?.(session, frame);
      const delay = this.replyDelay?.(session, frame) ?? 0;
      if (delay > 0) setTimeout(() => this.#dispatch(session, frame), delay);
      else this.#dispatch(session, frame);
    });
    ws.on("close", () => {
      clearTimeout(authTimer);
      clearTimeout(session.expTimer);
      this.sessions.delete(session);
      if (session.user && ![...this.sessions].some((s) => s.user === session.user)) {
        this.lastSeen.set(session.user, Date.now());
        this.#announcePresence(session.user);
      }
    });
    ws.on("error", () => {});
  }

  #send(session, frame) {
    if (session.blackholed) return;
    if (session.ws.readyState === 1) session.ws.send(JSON.stringify(frame));
  }

  #reply(session, req, frame) {
    if (req.ref !== undefined) frame.ref = req.ref;
    this.#send(session, frame);
  }

  #error(session, req, code, message, extra = {}) {
    this.#reply(session, req, { type: "error", code, message, ...extra });
  }

  #auth(session, frame) {
    const claims = claimsOf(frame.token);
    const now = Date.now();
    if (!claims || typeof claims.sub !== "string" || !ID.test(claims.sub) || typeof claims.exp !== "number" || claims.exp * 1000 <= now) {
      this.#error(session, frame, "unauthorized", "invalid or expired token");
      session.ws.close(4001, "unauthorized");
      return;
    }
    if (session.user && claims.sub !== session.user) {
      this.#error(session, frame, "unauthorized", "a refreshed token must be for the same user");
      return;
    }
    session.exp = claims.exp * 1000;
    clearTimeout(session.expTimer);
    session.expTimer = setTimeout(() => {
      this.#send(session, { type: "error", code: "token_expired", message: "token expired" });
      session.ws.close(4001, "token expired");
    }, session.exp - now);
    if (session.user) return; // a refresh: no answer
    session.user = claims.sub;
    const firstSession = ![...this.sessions].some((s) => s !== session && s.user === session.user);
    const rooms = [];
    for (const [id, r] of this.rooms) {
      if (!r.members.has(session.user)) continue;
      const lastRead = this.lastRead.get(`${session.user}\n${id}`) ?? 0;
      rooms.push({ room: id, kind: r.kind, last_seq: this.#lastSeq(r), last_read: lastRead, unread: this.#unread(session.user, id) });
    }
    this.#send(session, {
      type: "hello",
      user: session.user,
      session: session.id,
      epoch: this.epoch,
      heartbeat_ms: this.heartbeatMs,
      limits: this.limits,
      rooms,
      notifications: this.notifications.get(session.user) ?? [],
    });
    if (firstSession) this.#announcePresence(session.user);
  }

  #takeToken(session) {
    const now = Date.now();
    const rate = this.limits.rate_per_s;
    session.bucket = Math.min(rate, session.bucket + ((now - session.bucketAt) / 1000) * rate);
    session.bucketAt = now;
    if (session.bucket < 1) return false;
    session.bucket -= 1;
    return true;
  }

  #dispatch(session, f) {
    if (session.ws.readyState !== 1 || session.blackholed) return;
    if (!session.user) {
      if (f.type === "auth" && this.ignoreAuth) return;
      if (f.type === "auth") this.#auth(session, f);
      else this.#error(session, f, "unauthorized", "send auth first");
      return;
    }
    if (!this.#takeToken(session)) {
      this.#error(session, f, "rate_limited", "slow down", { retry_after_ms: 100 });
      return;
    }
    const refused = this.refuse?.(session, f);
    if (refused) {
      this.#error(session, f, refused, "refused by the test");
      return;
    }
    const user = session.user;
    const needRoom = () => {
      if (typeof f.room !== "string" || !ID.test(f.room)) {
        this.#error(session, f, "bad_request", "invalid room");
        return null;
      }
      return f.room;
    };
    const member = (room) => {
      const r = this.rooms.get(room);
      if (!r || !r.members.has(user)) {
        this.#error(session, f, "forbidden", "not a member");
        return null;
      }
      return r;
    };
    switch (f.type) {
      case "auth":
        this.#auth(session, f);
        return;
      case "ping":
        this.#reply(session, f, { type: "pong" });
        return;
      case "join": {
        const room = needRoom();
        if (!room) return;
        if (room.startsWith("dm-") && !this.rooms.has(room)) return this.#error(session, f, "forbidden", "dm rooms are made by open_dm");
        const r = this.#room(room);
        if (r.kind !== "public" && !r.members.has(user)) return this.#error(session, f, "forbidden", "private room");
        const isNew = !r.members.has(user);
        r.members.add(user);
        // A newcomer to a public room starts with its history read (protocol.md#ws-unread).
        const key = `${user}\n${room}`;
        if (isNew && r.kind === "public") this.lastRead.set(key, Math.max(this.lastRead.get(key) ?? 0, this.#lastSeq(r)));
        const joined = { type: "joined", room, kind: r.kind, last_seq: this.#lastSeq(r), last_read: this.lastRead.get(key) ?? 0, unread: this.#unread(user, room) };
        if (r.kind !== "public") joined.members = [...r.members];
        if (typeof f.since === "number") {
          if (f.epoch === this.epoch) {
            for (const m of r.events) if (m.seq > f.since) this.#send(session, { type: "message", ...m });
            joined.recovered = true;
          } else {
            joined.recovered = false;
          }
        }
        this.#reply(session, f, joined);
        if (isNew) this.#announcePresence(user, room);
        return;
      }
      case "leave": {
        const room = needRoom();
        if (!room) return;
        this.rooms.get(room)?.members.delete(user);
        this.#reply(session, f, { type: "left", room });
        return;
      }
      case "create": {
        const room = needRoom();
        if (!room) return;
        if (room.startsWith("dm-")) return this.#error(session, f, "forbidden", "reserved");
        if (this.rooms.has(room)) return this.#error(session, f, "conflict", "room exists");
        const r = { kind: f.private ? "private" : "public", members: new Set([user, ...(f.members ?? [])]), events: [] };
        this.rooms.set(room, r);
        const joined = { type: "joined", room, kind: r.kind, last_seq: 0 };
        if (r.kind !== "public") joined.members = [...r.members];
        this.#reply(session, f, joined);
        for (const other of r.members) if (other !== user) this.#toUser(other, { ...joined, ref: undefined });
        return;
      }
      case "invite": {
        const room = needRoom();
        if (!room) return;
        const r = member(room);
        if (!r) return;
        r.members.add(f.user);
        this.#reply(session, f, { type: "ok", room });
        return;
      }
      case "open_dm": {
        if (typeof f.user !== "string" || !ID.test(f.user) || f.user === user) return this.#error(session, f, "bad_request", "invalid user");
        const room = dmRoomId(user, f.user);
        let r = this.rooms.get(room);
        if (!r) {
          r = { kind: "dm", members: new Set([user, f.user]), events: [] };
          this.rooms.set(room, r);
        }
        this.#reply(session, f, { type: "joined", room, kind: "dm", last_seq: this.#lastSeq(r), members: [...r.members] });
        return;
      }
      case "send":
      case "edit":
      case "delete":
      case "react": {
        const room = needRoom();
        if (!room) return;
        const r = member(room);
        if (!r) return;
        if (typeof f.client_id !== "string" || f.client_id.length < 1 || f.client_id.length > 64) return this.#error(session, f, "bad_request", "client_id");
        // Idempotent per (user, client_id), answered before any other check (protocol.md#ws-lifecycle).
        const seen = this.dedupe.get(`${user}\n${f.client_id}`);
        if (seen) {
          if (this.dropAck?.(session, f)) return;
          return this.#reply(session, f, { type: "ack", room, client_id: f.client_id, seq: seen.seq, ts: seen.ts, duplicate: true });
        }
        if (f.type === "send" || f.type === "edit") {
          if (typeof f.body !== "string" || [...f.body].length < 1) return this.#error(session, f, "bad_request", "body");
          if ([...f.body].length > this.limits.max_body) return this.#error(session, f, "too_large", "body too long");
        }
        const fields = {};
        if (f.type === "send") {
          for (const key of ["reply_to", "thread"]) {
            if (f[key] === undefined) continue;
            const target = this.#target(r, f[key]);
            if (!target || (key === "thread" && target.thread !== undefined)) return this.#error(session, f, "not_found", `${key}: no such message`);
            fields[key] = f[key];
          }
        } else {
          if (!Number.isInteger(f.seq)) return this.#error(session, f, "bad_request", "seq");
          const target = this.#target(r, f.seq);
          if (!target) return this.#error(session, f, "not_found", "no such message");
          const state = this.stateOf(room, f.seq);
          if (f.type === "edit") {
            if (target.from !== user || state.deleted) return this.#error(session, f, "forbidden", "only the author edits, and not a deleted message");
            Object.assign(fields, { target: f.seq, body: f.body });
          } else if (f.type === "delete") {
            if (state.deleted) return this.#error(session, f, "not_found", "already deleted");
            if (target.from !== user) return this.#error(session, f, "forbidden", "only the author deletes");
            fields.target = f.seq;
          } else {
            const emoji = f.emoji;
            if (typeof emoji !== "string" || [...emoji].length < 1 || [...emoji].length > 32 || /[\s\p{Cc}]/u.test(emoji)) return this.#error(session, f, "bad_request", "emoji");
            if (state.deleted) return this.#error(session, f, "not_found", "deleted");
            Object.assign(fields, { target: f.seq, emoji, on: f.on ?? true });
          }
        }
        const kind = { send: "message", edit: "edit", delete: "delete", react: "reaction" }[f.type];
        const { message } = this.#store(r, room, user, f.body ?? "", f.client_id, { type: kind, ...fields });
        if (this.dropAck?.(session, f)) return;
        this.#reply(session, f, { type: "ack", room, client_id: f.client_id, seq: message.seq, ts: message.ts, duplicate: false });
        return;
      }
      case "history": {
        const room = needRoom();
        if (!room) return;
        const r = member(room);
        if (!r) return;
        if (f.before !== undefined && f.after !== undefined) return this.#error(session, f, "bad_request", "before and after");
        const limit = Math.max(1, Math.min(200, f.limit ?? 50));
        let list;
        let has_more;
        // Pages carry every kind of event; messages with their current state (protocol.md#ws-lifecycle).
        const events = f.thread !== undefined
          ? r.events.filter((m) => m.type === "message" && (m.seq === f.thread || m.thread === f.thread))
          : r.events;
        if (f.after !== undefined) {
          const above = events.filter((m) => m.seq > f.after);
          list = above.slice(0, limit);
          has_more = above.length > limit;
        } else {
          const below = f.before !== undefined ? events.filter((m) => m.seq < f.before) : events;
          list = below.slice(Math.max(0, below.length - limit));
          has_more = below.length > limit;
        }
        this.#reply(session, f, { type: "history", room, messages: list.map((e) => this.pageEntry(room, e)), has_more });
        return;
      }
      case "typing": {
        const room = needRoom();
        if (!room) return;
        const r = member(room);
        if (!r) return;
        for (const s of this.sessions) {
          if (s.user && s.user !== user && r.members.has(s.user)) this.#send(s, { type: "typing", room, user });
        }
        return;
      }
      case "read": {
        const room = needRoom();
        if (!room) return;
        if (!member(room)) return;
        const key = `${user}\n${room}`;
        if ((this.lastRead.get(key) ?? 0) < f.seq) {
          this.lastRead.set(key, f.seq);
          const pending = (this.notifications.get(user) ?? []).filter((n) => !(n.room === room && n.seq <= f.seq));
          this.notifications.set(user, pending);
          this.#toUser(user, { type: "unread", room, count: this.#unread(user, room), last_read: f.seq, as_of: this.#lastSeq(this.#room(room)) });
        }
        return;
      }
      case "status": {
        if (!["online", "away", "busy"].includes(f.status)) return this.#error(session, f, "bad_request", "status");
        this.statuses.set(user, f.status);
        this.#announcePresence(user);
        return;
      }
      case "presence": {
        const room = needRoom();
        if (!room) return;
        const r = member(room);
        if (!r) return;
        this.#reply(session, f, { type: "presence_snapshot", room, users: [...r.members].map((u) => this.#presenceOf(u)) });
        return;
      }
      case "search": {
        // A small model of protocol.md#ws-search: lower-cased whole words, "phrases", -exclusions.
        if (typeof f.query !== "string") return this.#error(session, f, "bad_request", "query");
        const words = (t) => t.toLowerCase().split(/[^\p{L}\p{N}]+/u).filter(Boolean);
        const terms = [...f.query.matchAll(/(-?)(?:"([^"]*)"?|(\S+))/g)]
          .map((m) => ({ not: m[1] === "-", words: words(m[2] ?? m[3]) }))
          .filter((t) => t.words.length > 0);
        if (!terms.some((t) => !t.not)) return this.#error(session, f, "bad_request", "the query has no word to search for");
        if (f.room !== undefined && !member(f.room)) return;
        const has = (body, seq) => {
          const w = words(body);
          return w.some((_, i) => seq.every((x, j) => w[i + j] === x));
        };
        const limit = Math.max(1, Math.min(50, f.limit ?? 20));
        const found = [];
        for (const [room, r] of this.rooms) {
          if (!r.members.has(user) || (f.room !== undefined && room !== f.room)) continue;
          for (const e of r.events) {
            if (e.type !== "message" || (f.before !== undefined && e.seq >= f.before)) continue;
            const m = this.pageEntry(room, e);
            if (m.deleted) continue;
            if (terms.every((t) => has(m.body, t.words) !== t.not)) found.push(m);
          }
        }
        found.sort((a, b) => b.seq - a.seq);
        this.#reply(session, f, { type: "search_results", query: f.query, results: found.slice(0, limit), has_more: found.length > limit });
        return;
      }
      default:
        this.#error(session, f, typeof f.type === "string" ? "unknown_type" : "bad_request", "unknown frame type");
    }
  }

  #room(room) {
    let r = this.rooms.get(room);
    if (!r) {
      r = { kind: "public", members: new Set(), events: [] };
      this.rooms.set(room, r);
    }
    return r;
  }

  #lastSeq(r) {
    return r.events.length ? r.events[r.events.length - 1].seq : 0;
  }

  #unread(user, room) {
    const r = this.rooms.get(room);
    const lastRead = this.lastRead.get(`${user}\n${room}`) ?? 0;
    return r ? r.events.filter((m) => m.type === "message" && m.seq > lastRead && m.from !== user).length : 0;
  }

  /** The message `seq` of a room (not a change event), or undefined. */
  #target(r, seq) {
    return r.events.find((e) => e.seq === seq && e.type === "message");
  }

  /** A message's current state (protocol.md#ws-lifecycle), folded from the log. */
  stateOf(room, seq) {
    const r = this.rooms.get(room);
    const m = r?.events.find((e) => e.seq === seq && e.type === "message");
    if (!m) return null;
    const out = { ...m, version: m.seq };
    let deleted = false;
    let reactions = {};
    let replies = 0;
    for (const e of r.events) {
      if (e.seq <= m.seq) continue;
      if (e.type === "message" && e.thread === m.seq) replies++;
      if (e.target !== m.seq || deleted) continue;
      out.version = e.seq;
      if (e.type === "edit") Object.assign(out, { body: e.body, edited: e.ts });
      else if (e.type === "delete") deleted = true;
      else if (e.type === "reaction") {
        const users = reactions[e.emoji] ?? [];
        if (e.on && !users.includes(e.from)) reactions = { ...reactions, [e.emoji]: [...users, e.from] };
        if (!e.on && users.includes(e.from)) {
          const left = users.filter((u) => u !== e.from);
          reactions = { ...reactions };
          if (left.length) reactions[e.emoji] = left;
          else delete reactions[e.emoji];
        }
      }
    }
    if (deleted) Object.assign(out, { body: "", deleted: true });
    else if (Object.keys(reactions).length) out.reactions = reactions;
    if (replies) out.replies = replies;
    return out;
  }

  /** An entry of a history page: a message with its state; an edit of a deleted message with body "". */
  pageEntry(room, e) {
    if (e.type === "message") return this.stateOf(room, e.seq);
    if (e.type === "edit" && this.stateOf(room, e.target)?.deleted) return { ...e, body: "" };
    return e;
  }

  /** Stores a change as if a bot had published it through JetStream, and delivers it. */
  publishChange(room, from, fields, clientId = `bot-${randomBytes(6).toString("hex")}`) {
    return this.#store(this.#room(room), room, from, fields.body ?? "", clientId, fields).message;
  }

  #store(r, room, from, body, clientId, fields = { type: "message" }) {
    const key = `${from}\n${clientId}`;
    const existing = this.dedupe.get(key);
    if (existing) return { message: existing, duplicate: true };
    const { type, ...rest } = fields;
    const message = type === "message"
      ? { type, room, seq: ++this.seq, prev_seq: this.#lastSeq(r), from, body, client_id: clientId, ts: Date.now(), ...rest }
      : { type, room, seq: ++this.seq, prev_seq: this.#lastSeq(r), from, ...rest, client_id: clientId, ts: Date.now() };
    r.events.push(message);
    this.dedupe.set(key, message);
    for (const s of this.sessions) {
      if (!s.user || !r.members.has(s.user)) continue;
      if (this.dropDelivery?.(s, message)) continue;
      this.#send(s, { type: "message", ...message });
    }
    if (type !== "message") return { message, duplicate: false };
    for (const u of r.members) {
      if (u === from) continue;
      const mentioned = new RegExp(`(^|[^A-Za-z0-9_@.-])@${u}(?![A-Za-z0-9_-])`).test(body);
      if (r.kind === "dm" || mentioned) {
        const n = { id: `n${message.seq}-${u}`, kind: r.kind === "dm" ? "dm" : "mention", room, seq: message.seq, from, preview: [...body].slice(0, 140).join(""), ts: message.ts };
        this.notifications.set(u, [...(this.notifications.get(u) ?? []), n]);
        this.#toUser(u, { type: "notification", ...n });
      }
    }
    return { message, duplicate: false };
  }

  #toUser(user, frame) {
    const clean = Object.fromEntries(Object.entries(frame).filter(([, v]) => v !== undefined));
    for (const s of this.sessions) if (s.user === user) this.#send(s, clean);
  }

  #presenceOf(user) {
    const online = [...this.sessions].some((s) => s.user === user);
    return { user, status: online ? (this.statuses.get(user) ?? "online") : "offline", last_seen: online ? Date.now() : (this.lastSeen.get(user) ?? 0) };
  }

  /** Tells the members of `onlyRoom` (or of every room of `user`) about `user`'s presence. */
  #announcePresence(user, onlyRoom) {
    const p = this.#presenceOf(user);
    for (const [id, r] of this.rooms) {
      if (onlyRoom !== undefined && id !== onlyRoom) continue;
      if (!r.members.has(user)) continue;
      for (const s of this.sessions) {
        if (s.user && s.user !== user && r.members.has(s.user)) this.#send(s, { type: "presence", room: id, ...p });
      }
    }
  }
}

// `node test/fake-server.mjs [port] [staticDir]`: a fake edge with the development sign-in, serving
// the web app, to try it without the Rust services.
if (process.argv[1] && resolve(process.argv[1]) === resolve(new URL(import.meta.url).pathname)) {
  const port = Number(process.argv[2] ?? 8080);
  const staticDir = resolve(process.argv[3] ?? new URL("../../web", import.meta.url).pathname);
  const server = await new FakeServer({ devLogin: true, staticDir }).start(port);
  console.log(`fake chat-edge on ${server.httpUrl} (ws ${server.url}), serving ${staticDir}`);
}
