// The browser app: a thin view over the SDK (vendor/sdk is the built clients/sdk, copied there by
// `npm run build` in clients/sdk). Everything a user typed is rendered with textContent, never as HTML.

import { ChatClient, ChatError, LocalStorageCursorStore, decodeJwt, isValidId } from "./vendor/sdk/index.js";

const SESSION_KEY = "chat.session";
const PAGE = 50;
const TYPING_SHOWN_MS = 5000;

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

function roomView(id, kind) {
  let r = rooms.get(id);
  if (!r) {
    r = {
      id,
      // Only the server makes dm- ids (CONTRACT §1), so an unknown room's kind can be told from its id.
      kind: kind ?? (id.startsWith("dm-") ? "dm" : "public"),
      label: null,
      unread: 0,
      lastRead: 0,
      messages: new Map(), // seq → message
      pending: new Map(), // client_id → { body, failed }
      loaded: false,
      loading: null,
      hasMoreBefore: false,
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

  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = new URLSearchParams(location.search).get("ws") ?? `${scheme}//${location.host}/ws`;
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
  current = null;
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
    const typing = r.typing.get(m.from);
    if (typing) {
      clearTimeout(typing);
      r.typing.delete(m.from);
    }
    if (m.room === current) {
      renderMessages(true);
      renderTyping();
      scheduleRead();
    } else {
      renderRooms();
    }
  });

  c.on("ack", (ack) => {
    const r = rooms.get(ack.room);
    if (!r) return;
    const p = r.pending.get(ack.client_id);
    if (!p) return;
    r.pending.delete(ack.client_id);
    if ((r.loaded || r.loading) && !r.messages.has(ack.seq)) {
      r.messages.set(ack.seq, { room: ack.room, seq: ack.seq, prev_seq: 0, from: me, body: p.body, client_id: ack.client_id, ts: ack.ts });
    }
    if (ack.room === current) renderMessages(true);
  });

  c.on("send_failed", ({ room, client_id }) => {
    const p = rooms.get(room)?.pending.get(client_id);
    if (p) p.failed = true;
    if (room === current) renderMessages(false);
  });

  // Live counts: the SDK adds each later message of another user to the server's count
  // (CONTRACT §2 Unread, v1.1: no count is pushed per message).
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
    if (current === l.room) current = null;
    render();
  });

  c.on("reset", ({ room }) => {
    // The log restarted (new epoch): what we hold is not continuous with it any more.
    const r = rooms.get(room);
    if (!r) return;
    r.messages.clear();
    r.loaded = false;
    r.hasMoreBefore = false;
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

function insertPage(r, messages) {
  for (const m of messages) r.messages.set(m.seq, { ...m, type: "message" });
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
  const oldest = Math.min(...r.messages.keys());
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

function selectRoom(id) {
  const r = rooms.get(id);
  if (!r) return;
  if (current && current !== id && readTimers.has(current)) flushRead(current, true);
  current = id;
  localStorage.setItem(lastRoomKey(), id);
  render(true);
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

async function sendMessage(body) {
  const r = rooms.get(current);
  if (!r || !client) return;
  const clientId = client.newClientId();
  r.pending.set(clientId, { body, failed: false });
  renderMessages(true, true);
  try {
    await client.send(r.id, body, { clientId });
  } catch (err) {
    const p = r.pending.get(clientId);
    if (p) p.failed = true;
    notice(`Message not sent: ${describeError(err)}`, { error: true });
    if (r.id === current) renderMessages(false);
  }
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

function renderMessages(stickToBottom, forceBottom = false) {
  const box = $("messages");
  const list = $("message-list");
  const r = rooms.get(current);
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  if (!r) {
    list.replaceChildren();
    $("older").hidden = true;
    return;
  }
  const items = [...r.messages.values()].sort((a, b) => a.seq - b.seq);
  const nodes = items.map((m) =>
    el(
      "li",
      { class: "message", dataset: { seq: String(m.seq), from: m.from } },
      el("span", { class: "from" }, m.from),
      el("time", { datetime: new Date(m.ts).toISOString() }, formatTime(m.ts)),
      el("div", { class: "body" }, m.body),
    ),
  );
  for (const [clientId, p] of r.pending) {
    nodes.push(
      el(
        "li",
        { class: p.failed ? "message pending failed" : "message pending", dataset: { clientId } },
        el("span", { class: "from" }, me ?? ""),
        el("time", {}, p.failed ? "not sent" : "sending…"),
        el("div", { class: "body" }, p.body),
      ),
    );
  }
  if (r.loading && items.length === 0) nodes.push(el("li", { class: "message muted" }, "Loading…"));
  list.replaceChildren(...nodes);
  $("older").hidden = !r.hasMoreBefore;
  if (forceBottom || (stickToBottom && atBottom)) box.scrollTop = box.scrollHeight;
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
      const what = { mention: `${n.from} mentioned you in ${where}`, dm: `${n.from} wrote to you`, invite: `${n.from} invited you to ${where}` }[n.kind] ?? n.kind;
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
    if (!body.trim()) return;
    input.value = "";
    sendMessage(body);
  });

  $("composer-input").addEventListener("input", () => {
    if (current && $("composer-input").value) client?.typing(current);
  });

  $("older").addEventListener("click", loadOlder);
  $("messages").addEventListener("scroll", () => {
    if ($("messages").scrollTop < 40) loadOlder();
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
