// Asks a running stack which optional services answer, with a tiny WebSocket client, and prints
// the e2e checks that cannot pass without them as a comma list (for E2E_SKIP); prints nothing when
// everything answers. What it finds goes to stderr.
//
//   node probe.mjs ws://127.0.0.1:8080/ws SECRET
//
//   presence (chat-presence): a `presence` frame answers `presence_snapshot`, not an error
//                             -> else skips "presence" and "status"
//   unread (chat-notify):     a read of another member's message produces an `unread` frame
//                             -> else skips "unread"
//   dm notification:          a DM produces a `notification{kind:"dm"}` -> else skips "dm-notification"
//   lifecycle (v1.1):         a `react` is acknowledged and history lists the reaction
//                             -> else skips "edit", "delete", "react", "quote-reply", "thread"
//
// Uses the `ws` package from ../sdk/node_modules (scripts/e2e installs it with the SDK).

import { createHmac, randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const WebSocket = createRequire(join(here, "../sdk/package.json"))("ws");
const [url, secret] = process.argv.slice(2);
if (!url || !secret) {
  console.error("usage: node probe.mjs WS_URL JWT_SECRET");
  process.exit(2);
}
const WAIT_MS = Number(process.env.PROBE_WAIT_MS ?? 3000);

const b64 = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");
function token(user) {
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub: user, exp: Math.floor(Date.now() / 1000) + 600 })}`;
  return `${head}.${createHmac("sha256", secret).update(head).digest("base64url")}`;
}

/** A connected, authenticated client that queues the frames it receives. */
async function client(user) {
  const ws = new WebSocket(url);
  const frames = [];
  const waiters = [];
  ws.on("message", (data) => {
    const f = JSON.parse(String(data));
    frames.push(f);
    for (const w of [...waiters]) w();
  });
  await new Promise((ok, fail) => {
    ws.once("open", ok);
    ws.once("error", fail);
  });
  const c = {
    send: (f) => ws.send(JSON.stringify(f)),
    /** The first frame (seen or to come) matching `pred`, or null after `ms`. */
    wait(pred, ms = WAIT_MS) {
      return new Promise((resolve) => {
        const check = () => {
          const i = frames.findIndex(pred);
          if (i < 0) return false;
          const [f] = frames.splice(i, 1);
          clearTimeout(timer);
          waiters.splice(waiters.indexOf(check), 1);
          resolve(f);
          return true;
        };
        const timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(check), 1);
          resolve(null);
        }, ms);
        waiters.push(check);
        check();
      });
    },
    close: () => ws.terminate(),
  };
  c.send({ type: "auth", token: token(user) });
  if (!(await c.wait((f) => f.type === "hello", 10_000))) throw new Error(`${user}: no hello`);
  return c;
}

const tag = randomBytes(4).toString("hex");
const room = `probe-${tag}`;
const a = await client(`probe-a-${tag}`);
const b = await client(`probe-b-${tag}`);
const skip = [];
try {
  for (const c of [a, b]) {
    c.send({ type: "join", room, ref: "j" });
    const j = await c.wait((f) => f.ref === "j", 10_000);
    if (j?.type !== "joined") throw new Error(`join answered ${JSON.stringify(j)}`);
  }

  a.send({ type: "presence", room, ref: "p" });
  const p = await a.wait((f) => f.ref === "p");
  const presence = p?.type === "presence_snapshot";
  console.error(`[probe] presence: ${presence ? "answers" : `no (${p ? JSON.stringify(p) : "no answer"})`}`);
  if (!presence) skip.push("presence", "status");

  a.send({ type: "send", room, body: "probe", client_id: `probe-${tag}`, ref: "s" });
  const ack = await a.wait((f) => f.ref === "s", 10_000);
  if (ack?.type !== "ack") throw new Error(`send answered ${JSON.stringify(ack)}`);
  // v1.1 lifecycle (chat-edge and chat-history with edit/delete/react): a `react` is acknowledged,
  // and a history page lists the reaction event.
  a.send({ type: "react", room, seq: ack.seq, emoji: "👍", client_id: `probe-r-${tag}`, ref: "lc" });
  const reacted = await a.wait((f) => f.ref === "lc", 10_000);
  let lifecycle = reacted?.type === "ack";
  if (lifecycle) {
    a.send({ type: "history", room, after: ack.seq, ref: "lch" });
    const page = await a.wait((f) => f.ref === "lch", 10_000);
    lifecycle = page?.type === "history" && page.messages.some((m) => m.type === "reaction");
  }
  console.error(`[probe] lifecycle: ${lifecycle ? "answers" : `no (${reacted ? JSON.stringify(reacted) : "no answer"})`}`);
  if (!lifecycle) skip.push("edit", "delete", "react", "quote-reply", "thread");

  // v1.1: a count is pushed when the read marker moves (not per message).
  b.send({ type: "read", room, seq: ack.seq });
  const unread = await b.wait((f) => f.type === "unread" && f.room === room);
  console.error(`[probe] unread: ${unread ? "answers" : "no unread frame"}`);
  if (!unread) skip.push("unread");

  a.send({ type: "open_dm", user: `probe-b-${tag}`, ref: "d" });
  const dm = await a.wait((f) => f.ref === "d", 10_000);
  let note = null;
  if (dm?.type === "joined") {
    a.send({ type: "send", room: dm.room, body: "probe dm", client_id: `probe-dm-${tag}` });
    note = await b.wait((f) => f.type === "notification" && f.kind === "dm");
  }
  console.error(`[probe] dm notification: ${note ? "answers" : `no (${dm ? JSON.stringify(dm) : "no open_dm answer"})`}`);
  if (!note) skip.push("dm-notification");
} finally {
  a.close();
  b.close();
}
console.log(skip.join(","));
