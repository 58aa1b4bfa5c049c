// The browser app: a thin view over the SDK (vendor/sdk is the built clients/sdk, copied there by
// `npm run build` in clients/sdk). Everything a user typed is rendered with textContent, never as HTML.

import { ChatClient, ChatError, LocalStorageCursorStore, decodeJwt, isValidId } from "./vendor/sdk/index.js";

const SESSION_KEY = "chat.session";
const PAGE = 50;
const TYPING_SHOWN_MS = 5000;
/** The reaction picker's choices (any emoji can be sent; these are offered). */
const PICKER = ["👍", "❤️", "😂", "🎉", "😮", "👀"];

// ---- tiny DOM helpers ----

/** @type {(id: string) => any} The page's fixed elements, by id (checked by `npm run typecheck`, loosely). */
const $ = (id) => document.getElementById(id);

/** Creates an element; string children become text nodes (never parsed as HTML). */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
  }
  return node;
}

let noticeTimer = null;
function notice(text, { error = false, sticky = false } = {}) {
  const n = $("notice");
  n.textContent = text;
  n.classList.toggle("error", error);
  n.hidden = false;
  clearTimeout(noticeTimer);
  if (!sticky) noticeTimer = setTimeout(() => (n.hidden = true), 6000);
}
function clearNotice() {
  $("notice").hidden = true;
}

function describeError(err) {
  if (err instanceof ChatError) {
    const messages = {
      forbidden: "You are not allowed to do that (not a member?)",
      conflict: "That room already exists",
      not_found: "Not found",
      bad_request: "The server refused the request",
      too_large: "The message is too long",
      unavailable: "The server is temporarily unavailable; try again",
      timeout: "No answer from the server",
      disconnected: "The connection dropped; try again",
    };
    const detail = err.frame?.message ? ` (${err.frame.message})` : "";
    return (messages[err.code] ?? err.code) + detail;
  }
  return err instanceof Error ? err.message : String(err);
}

// ---- state ----

/** @type {ChatClient | null} */
let client = null;
let me = null;
let session = null; // { mode: "dev", user } | { mode: "token", token }
const rooms = new Map(); // room id → RoomView
const notifications = new Map(); // id → notification
let current = null;
const readTimers = new Map(); // room → pending read marker update
/** The open thread panel: its room, root seq and messages (seq → message). */
let thread = null;
/** Transient UI state of the message lists: the message being edited, the open picker, a delete to confirm, the reply. */
const ui = { editing: null, picker: null, confirmDelete: null, replyTo: null, found: null };

function roomView(id, kind) {
  let r = rooms.get(id);
  if (!r) {
    r = {
      id,
      // Only the server makes dm- ids (protocol.md#identities), so an unknown room's kind can be told from its id.
      kind: kind ?? (id.startsWith("dm-") ? "dm" : "public"),
      label: null,
      unread: 0,
      lastRead: 0,
      messages: new Map(), // seq → message
      pending: new Map(), // client_id → { body, failed }
      loaded: false,
      loading: null,
      hasMoreBefore: false,
      // After opening a search result: the page around it, with newer messages still to load.
      hasMoreAfter: false,
      // Seqs of the pages' first and last entries (a page may end in change events, not messages).
      pageBounds: [],
      members: new Map(), // user → { status, last_seen }
      typing: new Map(), // user → timeout
    };
    rooms.set(id, r);
  } else if (kind) {
    r.kind = kind;
  }
  return r;
}

/** A room first heard of through a live frame: list it and learn its members (and a DM's name). */
function seenRoom(id) {
  const known = rooms.has(id);
  const r = roomView(id);
  if (!known) fetchMembers(r);
  return r;
}

/** Who a DM is with never changes (its id is made from the pair), so it is remembered once learned. */
function dmLabels() {
  try {
    return JSON.parse(localStorage.getItem(`chat.dmLabels.${me}`) ?? "{}") ?? {};
  } catch {
    return {};
  }
}
function learnDmLabel(r, user) {
  if (!user || user === me || r.kind !== "dm") return;
  r.label = user;
  const labels = dmLabels();
  if (labels[r.id] !== user) {
    labels[r.id] = user;
    localStorage.setItem(`chat.dmLabels.${me}`, JSON.stringify(labels));
  }
}

function roomName(r) {
  if (r.kind === "dm") return r.label ? `@${r.label}` : "direct message";
  return r.id;
}

function lastRoomKey() {
  return `chat.lastRoom.${me}`;
}

// ---- sign in ----

function loadSession() {
  try {
    const s = JSON.parse(localStorage.getItem(SESSION_KEY) ?? "null");
    if (s?.mode === "dev" && typeof s.user === "string") return s;
    if (s?.mode === "token" && typeof s.token === "string") return s;
  } catch {
    /* ignore */
  }
  return null;
}

/** The WebSocket endpoint of the origin that served this page. */
function ownWebSocketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

async function devToken(user) {
  let res;
  try {
    res = await fetch("/dev/token", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user }),
    });
  } catch {
    throw new Error("Cannot reach the server");
  }
  // Without CHAT_DEV_LOGIN the route does not exist (the static files answer 404 or 405).
  if (res.status === 404 || res.status === 405) throw new Error("Development sign-in is not enabled on this server (CHAT_DEV_LOGIN)");
  if (!res.ok) throw new Error(`Development sign-in failed (HTTP ${res.status})`);
  const data = await res.json();
  if (typeof data.token !== "string") throw new Error("Development sign-in returned no token");
  return data.token;
}

function showSignIn(message) {
  $("app").hidden = true;
  $("me").hidden = true;
  $("signin").hidden = false;
  setConn({ state: "idle" });
  if (message) notice(message, { error: true, sticky: true });
  $("dev-user").focus();
}

function start(s) {
  session = s;
  me = s.mode === "dev" ? s.user : decodeJwt(s.token)?.sub;
  if (!me || !isValidId(me)) {
    localStorage.removeItem(SESSION_KEY);
    showSignIn("That token has no valid `sub` claim");
    return;
  }
  localStorage.setItem(SESSION_KEY, JSON.stringify(s));
  $("signin").hidden = true;
  $("app").hidden = false;
  $("me").hidden = false;
  $("me-name").textContent = me;
  clearNotice();

  // Always this page's own origin: a URL taken from the page's address (the old `?ws=`) would
  // let any link send the stored token to another server (issue 15 item 6).
  const url = ownWebSocketUrl();
  client = new ChatClient({
    url,
    cursorStore: new LocalStorageCursorStore(`chat.cursors.${me}`),
    token: async ({ reason }) => {
      if (s.mode === "dev") return devToken(s.user);
      if (reason === "rejected") throw new Error("token rejected");
      return s.token;
    },
  });
  wire(client);
  client.connect().catch(() => {});
}

function signOut(message) {
  client?.close();
  client = null;
  localStorage.removeItem(SESSION_KEY);
  rooms.clear();
  notifications.clear();
  Object.assign(search, { query: "", results: [], hasMore: false });
  renderSearch();
  current = null;
  closeThread();
  Object.assign(ui, { editing: null, picker: null, confirmDelete: null, replyTo: null, found: null });
  me = null;
  render();
  showSignIn(message);
}

// ---- SDK events ----

function setConn(ev) {
  const labels = {
    idle: "Not connected",
    connecting: "Connecting…",
    authenticating: "Signing in…",
    open: "Connected",
    closed: "Offline",
  };
  const conn = $("conn");
  conn.dataset.state = ev.state;
  conn.textContent =
    ev.state === "reconnecting" ? `Reconnecting in ${Math.max(1, Math.round((ev.delayMs ?? 0) / 1000))} s…` : labels[ev.state] ?? ev.state;
  $("retry-now").hidden = ev.state !== "reconnecting";
  updateComposer();
}

function wire(c) {
  c.on("state", setConn);

  c.on("hello", (hello) => {
    const listed = new Set(hello.rooms.map((r) => r.room));
    for (const id of [...rooms.keys()]) if (!listed.has(id)) rooms.delete(id);
    for (const summary of hello.rooms) {
      const r = roomView(summary.room, summary.kind);
      r.kind = summary.kind;
      // (The count itself comes with the SDK's `unread_count`, right after `hello`.)
      r.lastRead = summary.last_read;
      if (r.kind === "dm" && !r.label) r.label = dmLabels()[r.id] ?? null;
      if (r.kind === "dm" && !r.label) fetchMembers(r);
    }
    notifications.clear();
    for (const n of hello.notifications) notifications.set(n.id, n);
    if (current === null || !rooms.has(current)) {
      const last = localStorage.getItem(lastRoomKey());
      const pick = last && rooms.has(last) ? last : hello.rooms[0]?.room ?? null;
      if (pick) selectRoom(pick);
    } else {
      fetchMembers(rooms.get(current));
    }
    setConn({ state: c.state });
    render();
  });

  c.on("message", (m) => {
    const r = seenRoom(m.room);
    r.pending.delete(m.client_id);
    if (r.loaded || r.loading) r.messages.set(m.seq, m);
    if (thread && thread.room === m.room && (m.thread === thread.root || m.seq === thread.root)) {
      thread.messages.set(m.seq, m);
      renderThread(true);
    }
    const typing = r.typing.get(m.from);
    if (typing) {
      clearTimeout(typing);
      r.typing.delete(m.from);
    }
    if (m.room === current) {
      const wasAtBottom = atBottom($("messages"));
      renderMessages(true);
      renderTyping();
      scheduleRead();
      if (m.from !== me) {
        // Said once, by a region of its own: the list is not a live region, so nothing is read twice.
        $("announcer").textContent = `${m.from}${m.thread !== undefined ? " in a thread" : ""}: ${m.body}`;
        if (!wasAtBottom && m.thread === undefined) $("new-indicator").hidden = false;
      }
    } else {
      renderRooms();
    }
  });

  // A held message changed (edit, delete, reaction, or a new reply in its thread).
  c.on("update", (u) => {
    const r = rooms.get(u.room);
    if (r?.messages.has(u.seq)) r.messages.set(u.seq, u.message);
    if (thread && thread.room === u.room && thread.messages.has(u.seq)) {
      thread.messages.set(u.seq, u.message);
      renderThread(false);
    }
    if (u.room === current) renderMessages(false);
  });

  c.on("ack", (ack) => {
    const r = rooms.get(ack.room);
    if (!r) return;
    const p = r.pending.get(ack.client_id);
    if (!p) return;
    r.pending.delete(ack.client_id);
    const m = client?.message(ack.room, ack.seq) ?? {
      type: "message", room: ack.room, seq: ack.seq, prev_seq: 0, from: me, body: p.body, client_id: ack.client_id, ts: ack.ts,
      version: ack.seq, reactions: {}, deleted: false, ...(p.replyTo !== undefined ? { reply_to: p.replyTo } : {}), ...(p.thread !== undefined ? { thread: p.thread } : {}),
    };
    if ((r.loaded || r.loading) && !r.messages.has(ack.seq)) r.messages.set(ack.seq, m);
    if (thread && thread.room === ack.room && p.thread === thread.root && !thread.messages.has(ack.seq)) thread.messages.set(ack.seq, m);
    if (ack.room === current) renderMessages(true);
    if (thread?.room === ack.room) renderThread(true);
  });

  c.on("send_failed", ({ room, client_id }) => {
    const r = rooms.get(room);
    const p = r?.pending.get(client_id);
    if (p) r.pending.set(client_id, { ...p, failed: true });
    if (room === current) renderMessages(false);
    if (thread?.room === room) renderThread(false);
  });

  // Live counts: the SDK adds each later message of another user to the server's count
  // (protocol.md#ws-unread, v1.1: no count is pushed per message).
  c.on("unread_count", (u) => {
    const r = rooms.get(u.room);
    if (!r) return;
    r.unread = u.count;
    r.lastRead = Math.max(r.lastRead, u.lastRead);
    renderRooms();
  });

  c.on("unread", (u) => {
    const r = seenRoom(u.room);
    r.lastRead = Math.max(r.lastRead, u.last_read);
    for (const [id, n] of notifications) if (n.room === u.room && n.seq <= u.last_read) notifications.delete(id);
    renderRooms();
    renderNotifications();
  });

  c.on("notification", (n) => {
    notifications.set(n.id, n);
    if (n.kind === "dm") {
      // Someone opened a DM with us: list it (its history loads when it is opened).
      const r = roomView(n.room, "dm");
      if (!r.label) learnDmLabel(r, n.from);
      renderRooms();
    }
    renderNotifications();
  });

  c.on("joined", (j) => {
    const r = roomView(j.room, j.kind);
    r.kind = j.kind;
    if (j.members) {
      for (const u of j.members) if (!r.members.has(u)) r.members.set(u, { status: "offline", last_seen: 0 });
      if (j.kind === "dm") learnDmLabel(r, j.members.find((u) => u !== me));
    }
    renderRooms();
  });

  c.on("left", (l) => {
    rooms.delete(l.room);
    if (thread?.room === l.room) closeThread();
    if (current === l.room) {
      current = null;
      const next = [...rooms.keys()][0];
      if (next) selectRoom(next);
    }
    render();
  });

  c.on("reset", ({ room }) => {
    // The log restarted (new epoch): what we hold is not continuous with it any more.
    const r = rooms.get(room);
    if (!r) return;
    r.messages.clear();
    r.pageBounds = [];
    r.loaded = false;
    r.hasMoreBefore = false;
    if (thread?.room === room) closeThread();
    if (room === current) {
      notice(`The history of ${roomName(r)} was reset on the server; reloading it.`);
      loadLatest(r);
    }
  });

  c.on("typing", (t) => {
    if (t.user === me) return;
    const r = roomView(t.room);
    clearTimeout(r.typing.get(t.user));
    r.typing.set(
      t.user,
      setTimeout(() => {
        r.typing.delete(t.user);
        if (t.room === current) renderTyping();
      }, TYPING_SHOWN_MS),
    );
    if (t.room === current) renderTyping();
  });

  c.on("presence", (p) => {
    const r = rooms.get(p.room);
    if (!r) return;
    r.members.set(p.user, { status: p.status, last_seen: p.last_seen });
    if (p.room === current) renderMembers();
  });

  c.on("error", (e) => {
    // Replies to our own requests surface where they were made; show the rest.
    if (e.ref === undefined) notice(`Server: ${e.code}: ${e.message}`, { error: true });
  });

  c.on("auth_error", (e) => {
    if (session?.mode === "token" && e.code !== "unavailable") {
      signOut("The token was refused or has expired; sign in again.");
    } else {
      notice(`Sign-in problem: ${e.message}`, { error: true });
    }
  });

  c.on("sync_error", ({ room, error }) => {
    notice(`Catching up on ${room} failed for now: ${describeError(error)}`, { error: true });
  });
}

// ---- actions ----

async function fetchMembers(r, attempt = 0) {
  if (!client) return;
  const c = client;
  try {
    const snap = await c.presence(r.id);
    r.members = new Map(snap.users.map((u) => [u.user, { status: u.status, last_seen: u.last_seen }]));
    if (r.kind === "dm") learnDmLabel(r, snap.users.map((u) => u.user).find((u) => u !== me));
    if (r.id === current) renderMembers();
    renderRooms();
  } catch (err) {
    // The presence service may be briefly away: try again a few times, more slowly each time.
    const temporary = err instanceof ChatError && ["unavailable", "timeout", "disconnected", "internal"].includes(err.code);
    if (temporary && attempt < 6) {
      setTimeout(() => {
        if (client === c && rooms.get(r.id) === r) fetchMembers(r, attempt + 1);
      }, Math.min(30_000, 1000 * 2 ** attempt));
    }
  }
}

function insertPage(r, entries) {
  // Pages hold every kind of event (v1.1); the SDK has applied the changes to the messages' state.
  const messages = entries.filter((m) => m.type === undefined || m.type === "message");
  for (const m of messages) r.messages.set(m.seq, m);
  if (entries.length) {
    const seqs = entries.map((e) => e.seq);
    const [lo, hi] = r.pageBounds.length ? r.pageBounds : [Infinity, -Infinity];
    r.pageBounds = [Math.min(lo, ...seqs), Math.max(hi, ...seqs)];
  }
  if (r.kind === "dm" && !r.label) {
    const other = messages.find((m) => m.from !== me);
    if (other) {
      learnDmLabel(r, other.from);
      renderRooms();
      if (r.id === current) renderHeader();
    }
  }
}

async function loadLatest(r) {
  if (r.loading) return r.loading;
  r.loading = (async () => {
    try {
      const page = await client.history(r.id, { limit: PAGE });
      insertPage(r, page.messages);
      r.hasMoreBefore = page.has_more;
      r.loaded = true;
    } catch (err) {
      notice(`Could not load ${roomName(r)}: ${describeError(err)}`, { error: true });
    } finally {
      r.loading = null;
    }
    if (r.id === current) {
      renderMessages(true, true);
      scheduleRead();
    }
  })();
  return r.loading;
}

async function loadOlder() {
  const r = rooms.get(current);
  if (!r || !r.hasMoreBefore || r.loading || !client) return;
  const oldest = Math.min(...r.messages.keys(), ...r.pageBounds);
  if (!Number.isFinite(oldest)) return;
  const box = $("messages");
  const fromBottom = box.scrollHeight - box.scrollTop;
  r.loading = (async () => {
    try {
      const page = await client.history(r.id, { before: oldest, limit: PAGE });
      insertPage(r, page.messages);
      r.hasMoreBefore = page.has_more;
    } catch (err) {
      notice(`Could not load older messages: ${describeError(err)}`, { error: true });
    } finally {
      r.loading = null;
    }
  })();
  await r.loading;
  if (r.id !== current) return;
  renderMessages(false);
  box.scrollTop = box.scrollHeight - fromBottom; // keep the reader's place
}

// ---- search (protocol.md#ws-search) ----

/** The last search: its query, the results listed, and whether more match below them. */
const search = { query: "", results: [], hasMore: false, busy: false };
/** How many messages of history are shown on each side of an opened search result. */
const CONTEXT = 25;

async function runSearch(query, more = false) {
  if (!client || search.busy) return;
  search.busy = true;
  try {
    const before = more ? search.results.at(-1)?.seq : undefined;
    const reply = await client.search(query, before === undefined ? {} : { before });
    search.query = query;
    search.results = more ? [...search.results, ...reply.results] : reply.results;
    search.hasMore = reply.has_more;
    renderSearch();
  } catch (err) {
    notice(`Search failed: ${describeError(err)}`, { error: true });
  } finally {
    search.busy = false;
  }
}

function renderSearch() {
  const list = $("search-results");
  if (search.query && search.results.length === 0) {
    list.replaceChildren(el("li", { class: "muted" }, "No messages found"));
  } else {
    list.replaceChildren(
      ...search.results.map((m) => {
        const r = rooms.get(m.room);
        const button = el(
          "button",
          { type: "button", class: "result", dataset: { room: m.room, seq: String(m.seq) } },
          el("span", { class: "result-room" }, r ? roomName(r) : m.room),
          el("span", { class: "from" }, m.from),
          el("time", { datetime: new Date(m.ts).toISOString() }, formatTime(m.ts)),
          el("span", { class: "result-body" }, m.body.length > 140 ? `${m.body.slice(0, 140)}…` : m.body),
        );
        button.addEventListener("click", () => openResult(m));
        return el("li", {}, button);
      }),
    );
  }
  $("search-more").hidden = !search.hasMore;
}

/** Opens the result's room scrolled to it, with the history around it (before and after its seq). */
async function openResult(m) {
  const r = rooms.get(m.room);
  if (!r || !client) return;
  const c = client;
  if (r.messages.has(m.seq) && !r.loading) {
    selectRoom(m.room, m.seq);
    return;
  }
  r.loading = (async () => {
    try {
      const [older, newer] = await Promise.all([
        c.history(r.id, { before: m.seq + 1, limit: CONTEXT }),
        c.history(r.id, { after: m.seq, limit: CONTEXT }),
      ]);
      // The window replaces what was shown: it may not join up with the newest messages.
      r.messages.clear();
      r.pageBounds = [];
      insertPage(r, older.messages);
      insertPage(r, newer.messages);
      r.hasMoreBefore = older.has_more;
      r.hasMoreAfter = newer.has_more;
      r.loaded = true;
    } catch (err) {
      notice(`Could not open the message: ${describeError(err)}`, { error: true });
    } finally {
      r.loading = null;
    }
  })();
  await r.loading;
  if (client === c) selectRoom(m.room, m.seq);
}

async function loadNewer() {
  const r = rooms.get(current);
  if (!r || !r.hasMoreAfter || r.loading || !client) return;
  const newest = Math.max(...r.messages.keys(), ...r.pageBounds);
  if (!Number.isFinite(newest)) return;
  r.loading = (async () => {
    try {
      const page = await client.history(r.id, { after: newest, limit: PAGE });
      insertPage(r, page.messages);
      r.hasMoreAfter = page.has_more;
    } catch (err) {
      notice(`Could not load newer messages: ${describeError(err)}`, { error: true });
    } finally {
      r.loading = null;
    }
  })();
  await r.loading;
  if (r.id === current) renderMessages(false);
}

function selectRoom(id, focusSeq) {
  const r = rooms.get(id);
  if (!r) return;
  if (current && current !== id && readTimers.has(current)) flushRead(current, true);
  current = id;
  localStorage.setItem(lastRoomKey(), id);
  ui.found = focusSeq === undefined ? null : { room: id, seq: focusSeq };
  $("new-indicator").hidden = true;
  showSidebar(false);
  render(focusSeq === undefined);
  if (focusSeq !== undefined) {
    $("message-list").querySelector(`li[data-seq="${focusSeq}"]`)?.scrollIntoView({ block: "center" });
  }
  if (!r.loaded) loadLatest(r);
  else scheduleRead();
  fetchMembers(r);
  const input = $("composer-input");
  if (!input.disabled) input.focus();
}

/** Moves the read marker of the room being looked at, at most every 300 ms. */
function scheduleRead(id = current) {
  if (!id || readTimers.has(id) || document.visibilityState !== "visible") return;
  readTimers.set(id, setTimeout(() => flushRead(id), 300));
}

/** Sends a room's pending read marker: when its timer fires while the room is still shown, or at once when leaving it. */
function flushRead(id, leaving = false) {
  clearTimeout(readTimers.get(id));
  readTimers.delete(id);
  const r = rooms.get(id);
  if (!r || !client) return;
  if (!leaving && (id !== current || document.visibilityState !== "visible")) return;
  const top = Math.max(0, ...r.messages.keys());
  if (top > r.lastRead) {
    client.read(r.id, top);
    r.lastRead = top;
  }
}

/**
 * Sends a message (a reply with `replyTo`, a thread message with `thread`). It shows as pending until
 * acknowledged; a failed one offers a retry with the same client_id (the server answers a retry of
 * a message it already has with the same seq, so nothing is posted twice).
 */
/** @param {string} roomId @param {string} body @param {{ replyTo?: number, thread?: number, clientId?: string }} [options] */
async function sendMessage(roomId, body, { replyTo, thread: root, clientId } = {}) {
  const r = rooms.get(roomId);
  if (!r || !client) return;
  const id = clientId ?? client.newClientId();
  const pending = { body, failed: false, replyTo, thread: root };
  r.pending.set(id, pending);
  if (root === undefined) renderMessages(true, true);
  else renderThread(true);
  const options = { clientId: id };
  if (replyTo !== undefined) options.replyTo = replyTo;
  if (root !== undefined) options.thread = root;
  try {
    await client.send(r.id, body, options);
  } catch (err) {
    if (r.pending.has(id)) r.pending.set(id, { ...pending, failed: true });
    notice(`Message not sent: ${describeError(err)}`, { error: true });
    if (r.id === current) renderMessages(false);
    renderThread(false);
  }
}

function retrySend(roomId, clientId) {
  const p = rooms.get(roomId)?.pending.get(clientId);
  if (p) sendMessage(roomId, p.body, { replyTo: p.replyTo, thread: p.thread, clientId });
}

// ---- message lifecycle (protocol.md#ws-lifecycle) ----

function startReply(roomId, seq) {
  const m = rooms.get(roomId)?.messages.get(seq);
  if (!m) return;
  ui.replyTo = { room: roomId, seq };
  renderReplyBar();
  $("composer-input").focus();
}

function renderReplyBar() {
  const bar = $("reply-bar");
  const m = ui.replyTo && ui.replyTo.room === current ? rooms.get(current)?.messages.get(ui.replyTo.seq) : null;
  bar.hidden = !m;
  $("reply-text").textContent = m ? `Replying to ${m.from}: ${excerpt(m)}` : "";
}

function excerpt(m, max = 80) {
  if (!m) return "an earlier message";
  if (m.deleted) return "a deleted message";
  const chars = [...m.body];
  return chars.length > max ? `${chars.slice(0, max).join("")}…` : m.body;
}

async function saveEdit(roomId, seq, body) {
  const m = rooms.get(roomId)?.messages.get(seq) ?? thread?.messages.get(seq);
  ui.editing = null;
  refreshLists();
  if (!client || !m || body === m.body || !body.trim()) return;
  act(client.edit(roomId, seq, body));
}

async function deleteMessage(roomId, seq) {
  ui.confirmDelete = null;
  refreshLists();
  if (client) act(client.delete(roomId, seq));
}

/** Toggles the user's reaction: off if they have it, on if not. */
function toggleReaction(roomId, seq, emoji) {
  const m = rooms.get(roomId)?.messages.get(seq) ?? thread?.messages.get(seq);
  if (!client || !m) return;
  const mine = (m.reactions?.[emoji] ?? []).includes(me);
  ui.picker = null;
  refreshLists();
  act(client.react(roomId, seq, emoji, !mine));
}

async function openThread(roomId, root) {
  const r = rooms.get(roomId);
  if (!r || !client) return;
  const c = client;
  const rootMessage = r.messages.get(root);
  thread = { room: roomId, root, messages: new Map(rootMessage ? [[root, rootMessage]] : []), loading: true };
  threadView.reset();
  $("thread-panel").hidden = false;
  $("app").classList.add("with-thread");
  $("thread-title").textContent = `Thread in ${roomName(r)}`;
  renderThread(true);
  try {
    const page = await c.history(roomId, { thread: root, limit: 200 });
    if (thread?.room !== roomId || thread.root !== root) return;
    for (const m of page.messages) if (m.type === undefined || m.type === "message") thread.messages.set(m.seq, m);
  } catch (err) {
    notice(`Could not load the thread: ${describeError(err)}`, { error: true });
  } finally {
    if (thread?.root === root) thread.loading = false;
  }
  renderThread(true);
  $("thread-input").focus();
}

function closeThread() {
  thread = null;
  threadView.reset();
  $("thread-panel").hidden = true;
  $("app").classList.remove("with-thread");
}

function splitUsers(text) {
  return text
    .split(/[\s,]+/)
    .map((u) => u.replace(/^@/, ""))
    .filter(Boolean);
}

async function act(promise, onOk) {
  try {
    const result = await promise;
    onOk?.(result);
  } catch (err) {
    notice(describeError(err), { error: true });
  }
}

// ---- rendering ----

function render(scrollToEnd = false) {
  renderRooms();
  renderHeader();
  renderMessages(true, scrollToEnd);
  renderTyping();
  renderMembers();
  renderNotifications();
}

function renderRooms() {
  const list = $("rooms");
  const sorted = [...rooms.values()].sort((a, b) => roomName(a).localeCompare(roomName(b)));
  list.replaceChildren(
    ...sorted.map((r) => {
      const icon = { public: "#", private: "◆", dm: "@" }[r.kind] ?? "#";
      return el(
        "li",
        {},
        el(
          "button",
          {
            type: "button",
            class: "room",
            dataset: { room: r.id, kind: r.kind },
            "aria-current": r.id === current ? "true" : "false",
            onclick: () => selectRoom(r.id),
          },
          el("span", { class: "kind-icon", title: `${r.kind} room` }, icon),
          el("span", { class: "name" }, r.kind === "dm" ? r.label ?? "direct message" : r.id),
          r.unread > 0 && r.id !== current ? el("span", { class: "badge", "aria-label": `${r.unread} unread` }, String(r.unread)) : null,
        ),
      );
    }),
  );
}

function renderHeader() {
  const r = rooms.get(current);
  $("room-title").textContent = r ? roomName(r) : "No room selected";
  $("room-kind").textContent = r ? { public: "public room", private: "private room", dm: "direct message" }[r.kind] ?? "" : "";
  $("leave-btn").hidden = !r;
  $("leave-btn").setAttribute("aria-label", r ? `Leave ${roomName(r)}` : "Leave");
  // Only a member of a private room may invite (protocol.md#ws).
  $("invite-btn").hidden = !r || r.kind !== "private";
  if ($("invite-btn").hidden) showInvite(false);
  updateComposer();
}

/** The composer works while reconnecting too: the SDK keeps sends and delivers them after the reconnect. */
function updateComposer() {
  const state = client?.state ?? "idle";
  const usable = current !== null && rooms.has(current) && state !== "idle" && state !== "closed";
  $("composer-input").disabled = !usable;
  $("send-btn").disabled = !usable;
}

function formatTime(ts) {
  const d = new Date(ts);
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : d.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

// ---- message lists: one DOM node per message, kept across renders, refilled only when it changed ----

const LOADING = Object.freeze({ loading: true });

/**
 * A list of messages rendered incrementally: each item has a key and a node that stays in the
 * document while the item is listed, so a text selection, focus or a screen reader's place in
 * one message survives a new message, a reaction or an edit of another. A node is refilled only
 * when its item (a new object for every change, from the SDK) or its signature (UI state,
 * the quoted message's version) changed.
 */
class ListView {
  constructor(listId, inThread) {
    this.listId = listId;
    this.inThread = inThread;
    this.nodes = new Map();
    this.shown = new Map();
    this.owner = null;
  }

  reset() {
    $(this.listId).replaceChildren();
    this.nodes.clear();
    this.shown.clear();
    this.owner = null;
  }

  /** `items`: [key, kind, item, signature] in display order. */
  render(owner, items) {
    if (owner !== this.owner) {
      this.reset();
      this.owner = owner;
    }
    const list = $(this.listId);
    const keep = new Set(items.map(([key]) => key));
    for (const [key, node] of this.nodes) {
      if (keep.has(key)) continue;
      node.remove();
      this.nodes.delete(key);
      this.shown.delete(key);
    }
    let prev = null;
    for (const [key, kind, item, sig] of items) {
      let node = this.nodes.get(key);
      if (!node) {
        node = document.createElement("li");
        this.nodes.set(key, node);
      }
      const last = this.shown.get(key);
      if (!last || last.item !== item || last.sig !== sig) {
        if (kind === "message") fillMessage(node, item, this.inThread);
        else if (kind === "pending") fillPending(node, item, sig);
        else {
          node.className = "message muted";
          node.textContent = "Loading…";
        }
        this.shown.set(key, { item, sig });
      }
      const expected = prev ? prev.nextSibling : list.firstChild;
      if (expected !== node) list.insertBefore(node, expected);
      prev = node;
    }
  }
}

const mainView = new ListView("message-list", false);
const threadView = new ListView("thread-list", true);

function atBottom(box) {
  return box.scrollHeight - box.scrollTop - box.clientHeight < 40;
}

function quotedOf(m) {
  if (m.reply_to === undefined) return null;
  return rooms.get(m.room)?.messages.get(m.reply_to) ?? thread?.messages.get(m.reply_to) ?? null;
}

/** What besides the message itself decides how it is drawn. */
function signature(m) {
  const q = quotedOf(m);
  const here = (x) => (x && x.room === m.room && x.seq === m.seq ? "1" : "0");
  const quote = q ? `${q.version ?? q.seq}${q.deleted ? "d" : ""}` : m.reply_to === undefined ? "" : "?";
  return `${quote}|${here(ui.editing)}${here(ui.picker)}${here(ui.confirmDelete)}${here(ui.found)}`;
}

function button(label, action, extra = {}) {
  return el("button", { type: "button", class: "link", dataset: { action }, ...extra }, label);
}

function fillMessage(node, m, inThread) {
  const mine = m.from === me;
  const here = (x) => x && x.room === m.room && x.seq === m.seq;
  const editing = here(ui.editing) && !m.deleted;
  const classes = ["message"];
  if (m.deleted) classes.push("deleted");
  if (mine) classes.push("mine");
  if (here(ui.found)) classes.push("found");
  if (inThread && thread && m.seq === thread.root) classes.push("root");
  node.className = classes.join(" ");
  node.dataset.seq = String(m.seq);
  node.dataset.from = m.from;
  delete node.dataset.clientId;
  const parts = [];
  if (m.reply_to !== undefined) {
    const q = quotedOf(m);
    parts.push(
      el(
        "button",
        { type: "button", class: "quote", dataset: { action: "goto-quote", target: String(m.reply_to) }, "aria-label": `In reply to ${q ? q.from : "an earlier message"}: ${excerpt(q)}` },
        el("span", { class: "quote-from" }, q ? q.from : "↩"),
        " ",
        excerpt(q),
      ),
    );
  }
  parts.push(el("span", { class: "from" }, m.from), el("time", { datetime: new Date(m.ts).toISOString() }, formatTime(m.ts)));
  if (m.edited !== undefined && !m.deleted) parts.push(el("span", { class: "edited", title: `edited ${formatTime(m.edited)}` }, "(edited)"));
  if (m.deleted) {
    parts.push(el("div", { class: "tombstone" }, "This message was deleted"));
  } else if (editing) {
    parts.push(
      el(
        "form",
        { class: "edit-form", dataset: { action: "save-edit" } },
        el("input", { class: "edit-input", "aria-label": "Edit your message", value: m.body, maxlength: "4000" }),
        el("button", { type: "submit" }, "Save"),
        button("Cancel", "cancel-edit"),
      ),
    );
  } else {
    parts.push(el("div", { class: "body" }, m.body));
  }
  const reactions = Object.entries(m.reactions ?? {}).filter(([, users]) => users.length > 0);
  if (reactions.length && !m.deleted) {
    parts.push(
      el(
        "ul",
        { class: "reactions", "aria-label": "Reactions" },
        ...reactions.map(([emoji, users]) =>
          el(
            "li",
            {},
            el(
              "button",
              {
                type: "button",
                class: "reaction",
                dataset: { action: "toggle-reaction", emoji },
                "aria-pressed": users.includes(me) ? "true" : "false",
                title: users.join(", "),
                "aria-label": `${emoji} ${users.length}: ${users.join(", ")}`,
              },
              el("span", { class: "emoji" }, emoji),
              el("span", { class: "count" }, String(users.length)),
            ),
          ),
        ),
      ),
    );
  }
  if (!inThread && m.thread === undefined && (m.replies ?? 0) > 0) {
    parts.push(button(`${m.replies} ${m.replies === 1 ? "reply" : "replies"}`, "open-thread", { class: "link thread-link" }));
  }
  if (!m.deleted && !editing) {
    if (here(ui.confirmDelete)) {
      parts.push(
        el(
          "div",
          { class: "confirm", role: "group", "aria-label": "Confirm the delete" },
          "Delete this message? ",
          el("button", { type: "button", class: "danger", dataset: { action: "confirm-delete" } }, "Delete"),
          button("Cancel", "cancel-delete"),
        ),
      );
    } else {
      const who = mine ? "your" : `${m.from}'s`;
      const actions = [button("React", "picker", { "aria-label": `React to ${who} message`, "aria-expanded": here(ui.picker) ? "true" : "false" })];
      if (!inThread) actions.push(button("Reply", "reply", { "aria-label": `Reply to ${who} message` }));
      if (!inThread && m.thread === undefined) actions.push(button("Thread", "open-thread", { "aria-label": `Open the thread of ${who} message` }));
      if (mine) actions.push(button("Edit", "edit", { "aria-label": "Edit your message" }), button("Delete", "delete", { "aria-label": "Delete your message" }));
      parts.push(el("div", { class: "actions" }, ...actions));
      if (here(ui.picker)) {
        parts.push(
          el(
            "div",
            { class: "picker", role: "group", "aria-label": "Pick a reaction" },
            ...PICKER.map((emoji) => el("button", { type: "button", dataset: { action: "react", emoji }, "aria-label": `React with ${emoji}` }, emoji)),
          ),
        );
      }
    }
  }
  node.replaceChildren(...parts);
  if (editing) queueMicrotask(() => node.querySelector(".edit-input")?.focus());
}

function fillPending(node, p, clientId) {
  node.className = p.failed ? "message pending failed" : "message pending";
  delete node.dataset.seq;
  node.dataset.clientId = clientId;
  node.replaceChildren(
    el("span", { class: "from" }, me ?? ""),
    el("time", {}, p.failed ? "not sent" : "sending…"),
    el("div", { class: "body" }, p.body),
    p.failed ? el("button", { type: "button", class: "retry", dataset: { action: "retry" } }, "Retry") : null,
  );
}

function renderMessages(stickToBottom, forceBottom = false) {
  const box = $("messages");
  const r = rooms.get(current);
  const wasAtBottom = atBottom(box);
  if (!r) {
    mainView.render(null, []);
    $("older").hidden = true;
    $("newer").hidden = true;
    $("new-indicator").hidden = true;
    renderReplyBar();
    return;
  }
  const items = [];
  const sorted = [...r.messages.values()].filter((m) => m.thread === undefined).sort((a, b) => a.seq - b.seq);
  for (const m of sorted) items.push([`m${m.seq}`, "message", m, signature(m)]);
  for (const [clientId, p] of r.pending) if (p.thread === undefined) items.push([`p${clientId}`, "pending", p, clientId]);
  if (r.loading && items.length === 0) items.push(["loading", "loading", LOADING, ""]);
  mainView.render(r.id, items);
  $("older").hidden = !r.hasMoreBefore;
  $("newer").hidden = !r.hasMoreAfter;
  if (forceBottom || (stickToBottom && wasAtBottom)) box.scrollTop = box.scrollHeight;
  if (atBottom(box)) $("new-indicator").hidden = true;
  renderReplyBar();
}

function renderThread(stickToBottom) {
  if (!thread) return;
  const box = $("thread-messages");
  const wasAtBottom = atBottom(box);
  const r = rooms.get(thread.room);
  const items = [...thread.messages.values()].sort((a, b) => a.seq - b.seq).map((m) => [`m${m.seq}`, "message", m, signature(m)]);
  if (r) for (const [clientId, p] of r.pending) if (p.thread === thread.root) items.push([`p${clientId}`, "pending", p, clientId]);
  if (thread.loading && items.length === 0) items.push(["loading", "loading", LOADING, ""]);
  threadView.render(`${thread.room}/${thread.root}`, items);
  if (stickToBottom && wasAtBottom) box.scrollTop = box.scrollHeight;
}

/** Redraws what UI state changed (only the messages whose signature moved are refilled). */
function refreshLists() {
  renderMessages(false);
  renderThread(false);
}

/** Clicks, submits and keys on a message list, by `data-action` (one listener per list, not per message). */
function wireList(listId, roomOf) {
  const list = $(listId);
  list.addEventListener("click", (e) => {
    const target = /** @type {HTMLElement} */ (e.target);
    const btn = /** @type {HTMLElement | null} */ (target.closest("button[data-action]"));
    const li = /** @type {HTMLElement | null} */ (target.closest("li[data-seq], li[data-client-id]"));
    if (!btn || !li) return;
    const roomId = roomOf();
    if (!roomId) return;
    const seq = Number(li.dataset.seq);
    const at = { room: roomId, seq };
    switch (btn.dataset.action) {
      case "retry":
        return retrySend(roomId, li.dataset.clientId);
      case "picker":
        ui.picker = ui.picker && ui.picker.room === roomId && ui.picker.seq === seq ? null : at;
        refreshLists();
        list.querySelector(`li[data-seq="${seq}"] .picker button`)?.focus();
        return;
      case "react":
      case "toggle-reaction":
        return toggleReaction(roomId, seq, btn.dataset.emoji);
      case "reply":
        return startReply(roomId, seq);
      case "open-thread":
        return openThread(roomId, seq);
      case "edit":
        ui.editing = at;
        ui.picker = null;
        return refreshLists();
      case "cancel-edit":
        ui.editing = null;
        refreshLists();
        list.querySelector(`li[data-seq="${seq}"] button[data-action="edit"]`)?.focus();
        return;
      case "delete":
        ui.confirmDelete = at;
        refreshLists();
        list.querySelector(`li[data-seq="${seq}"] button[data-action="confirm-delete"]`)?.focus();
        return;
      case "cancel-delete":
        ui.confirmDelete = null;
        return refreshLists();
      case "confirm-delete":
        return deleteMessage(roomId, seq);
      case "goto-quote": {
        const quoted = $("message-list").querySelector(`li[data-seq="${btn.dataset.target}"]`);
        quoted?.scrollIntoView({ block: "center" });
        return;
      }
    }
  });
  list.addEventListener("submit", (e) => {
    const form = /** @type {HTMLElement} */ (e.target);
    if (form.dataset.action !== "save-edit") return;
    e.preventDefault();
    const li = /** @type {HTMLElement | null} */ (form.closest("li[data-seq]"));
    const roomId = roomOf();
    const input = /** @type {HTMLInputElement} */ (form.querySelector(".edit-input"));
    if (li && roomId && input) saveEdit(roomId, Number(li.dataset.seq), input.value);
  });
  list.addEventListener("keydown", (e) => {
    if (e.key !== "Escape") return;
    if (ui.editing || ui.picker || ui.confirmDelete) {
      ui.editing = ui.picker = ui.confirmDelete = null;
      refreshLists();
    }
  });
}

function renderTyping() {
  const r = rooms.get(current);
  const users = r ? [...r.typing.keys()] : [];
  const t = $("typing");
  t.textContent =
    users.length === 0 ? "" : users.length === 1 ? `${users[0]} is typing…` : `${users.slice(0, -1).join(", ")} and ${users.at(-1)} are typing…`;
}

function renderMembers() {
  const r = rooms.get(current);
  const list = $("member-list");
  if (!r) {
    list.replaceChildren();
    return;
  }
  const order = { online: 0, busy: 1, away: 2, offline: 3 };
  const people = [...r.members.entries()].sort(
    ([a, pa], [b, pb]) => (order[pa.status] ?? 4) - (order[pb.status] ?? 4) || a.localeCompare(b),
  );
  list.replaceChildren(
    ...people.map(([user, p]) =>
      el(
        "li",
        { class: "member", dataset: { user, status: p.status } },
        el("span", { class: "dot", dataset: { status: p.status }, "aria-hidden": "true" }),
        el("span", { class: "name" }, user === me ? `${user} (you)` : user),
        el(
          "span",
          { class: "status", title: p.status === "offline" && p.last_seen ? `last seen ${formatTime(p.last_seen)}` : null },
          p.status,
        ),
      ),
    ),
  );
}

function renderNotifications() {
  const list = $("notifications");
  const items = [...notifications.values()].sort((a, b) => b.ts - a.ts);
  const count = $("notif-count");
  count.hidden = items.length === 0;
  count.textContent = String(items.length);
  list.replaceChildren(
    ...items.map((n) => {
      const r = rooms.get(n.room);
      const where = r ? roomName(r) : n.room;
      const what = { mention: `${n.from} mentioned you in ${where}`, dm: `${n.from} wrote to you`, invite: `${n.from} invited you to ${where}`, reply: `${n.from} replied to you in ${where}` }[n.kind] ?? n.kind;
      return el(
        "li",
        { dataset: { id: n.id, kind: n.kind } },
        el(
          "button",
          { type: "button", onclick: () => (rooms.has(n.room) ? selectRoom(n.room) : act(client.join(n.room), () => selectRoom(n.room))) },
          el("span", { class: "what" }, what),
          n.preview,
        ),
      );
    }),
  );
}

/** On a phone-width screen the room list is a drawer over the conversation. */
function showSidebar(open) {
  $("app").classList.toggle("show-sidebar", open);
  $("menu-btn").setAttribute("aria-expanded", open ? "true" : "false");
}

function showInvite(open) {
  $("invite-form").hidden = !open;
  $("invite-btn").setAttribute("aria-expanded", open ? "true" : "false");
  if (open) $("invite-user").focus();
}

// ---- UI wiring ----

function setup() {
  $("dev-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const user = $("dev-user").value.trim();
    if (!isValidId(user)) return notice("User names are 1–64 letters, digits, _ or -", { error: true });
    const button = $("dev-signin");
    button.disabled = true;
    try {
      await devToken(user); // fail here, on the form, when dev sign-in is off
      start({ mode: "dev", user });
    } catch (err) {
      notice(describeError(err), { error: true, sticky: true });
    } finally {
      button.disabled = false;
    }
  });

  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token-input").value.trim();
    const claims = decodeJwt(token);
    if (!claims?.sub) return notice("That does not look like a JWT with a `sub` claim", { error: true });
    if (typeof claims.exp === "number" && claims.exp * 1000 < Date.now()) return notice("That token has expired", { error: true });
    $("token-input").value = "";
    start({ mode: "token", token });
  });

  $("signout").addEventListener("click", () => signOut());

  $("status").addEventListener("change", (e) => {
    const status = /** @type {"online" | "away" | "busy"} */ (/** @type {HTMLSelectElement} */ (e.target).value);
    client?.setStatus(status);
    $("me-dot").dataset.status = status;
    for (const r of rooms.values()) {
      const mine = r.members.get(me);
      if (mine) mine.status = status;
    }
    renderMembers();
  });

  $("join-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("join-room").value.trim();
    if (!isValidId(id) || id.startsWith("dm-")) return notice("Room ids are 1–64 letters, digits, _ or - (not dm-…)", { error: true });
    act(client.join(id), (joined) => {
      roomView(joined.room, joined.kind);
      $("join-room").value = "";
      selectRoom(joined.room);
    });
  });

  $("create-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("create-room").value.trim();
    const members = splitUsers($("create-members").value);
    const bad = members.find((u) => !isValidId(u));
    if (!isValidId(id) || id.startsWith("dm-")) return notice("Room ids are 1–64 letters, digits, _ or - (not dm-…)", { error: true });
    if (bad) return notice(`Not a user id: ${bad}`, { error: true });
    act(client.create(id, { private: $("create-private").checked, members }), (joined) => {
      roomView(joined.room, joined.kind);
      $("create-room").value = "";
      $("create-members").value = "";
      selectRoom(joined.room);
    });
  });

  $("dm-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const user = $("dm-user").value.trim().replace(/^@/, "");
    if (!isValidId(user) || user === me) return notice("Enter another user's id", { error: true });
    act(client.openDm(user), (joined) => {
      const r = roomView(joined.room, "dm");
      learnDmLabel(r, user);
      $("dm-user").value = "";
      selectRoom(joined.room);
    });
  });

  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("composer-input");
    const body = input.value;
    if (!body.trim() || !current) return;
    input.value = "";
    const replyTo = ui.replyTo?.room === current ? ui.replyTo.seq : undefined;
    ui.replyTo = null;
    sendMessage(current, body, { replyTo });
  });

  $("reply-cancel").addEventListener("click", () => {
    ui.replyTo = null;
    renderReplyBar();
    $("composer-input").focus();
  });

  $("thread-composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("thread-input");
    const body = input.value;
    if (!body.trim() || !thread) return;
    input.value = "";
    sendMessage(thread.room, body, { thread: thread.root });
  });
  $("thread-close").addEventListener("click", () => closeThread());

  wireList("message-list", () => current);
  wireList("thread-list", () => thread?.room ?? null);

  $("new-indicator").addEventListener("click", () => {
    const box = $("messages");
    box.scrollTop = box.scrollHeight;
    $("new-indicator").hidden = true;
    $("composer-input").focus();
  });

  $("retry-now").addEventListener("click", () => client?.reconnect());

  $("menu-btn").addEventListener("click", () => showSidebar(!$("app").classList.contains("show-sidebar")));

  $("leave-btn").addEventListener("click", () => {
    const r = rooms.get(current);
    if (r && client) act(client.leave(r.id), () => notice(`You left ${roomName(r)}`));
  });
  $("invite-btn").addEventListener("click", () => showInvite($("invite-form").hidden));
  $("invite-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const user = $("invite-user").value.trim().replace(/^@/, "");
    const r = rooms.get(current);
    if (!r || !client) return;
    if (!isValidId(user)) return notice("Enter a user id", { error: true });
    act(client.invite(r.id, user), () => {
      $("invite-user").value = "";
      showInvite(false);
      notice(`Invited ${user} to ${roomName(r)}`);
      fetchMembers(r);
    });
  });

  $("composer-input").addEventListener("input", () => {
    if (current && $("composer-input").value) client?.typing(current);
  });

  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const query = $("search-input").value.trim();
    if (query) runSearch(query);
  });
  $("search-more").addEventListener("click", () => runSearch(search.query, true));
  $("newer").addEventListener("click", loadNewer);

  $("older").addEventListener("click", loadOlder);
  $("messages").addEventListener("scroll", () => {
    const box = $("messages");
    if (box.scrollTop < 40) loadOlder();
    else if (atBottom(box)) {
      $("new-indicator").hidden = true;
      loadNewer();
    }
  });

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") scheduleRead();
  });
  window.addEventListener("pagehide", () => {
    for (const id of [...readTimers.keys()]) flushRead(id, true);
    client?.saveCursors();
  });

  const saved = loadSession();
  if (saved) start(saved);
  else showSignIn();
}

setup();
