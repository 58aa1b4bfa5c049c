// A tiny bot over chat-api's HTTP API (docs/api.md): it answers "!ping" in a room with "pong"
// (a reply), and "!who" with who is online there. Node 20+ (global fetch), no dependencies.
//
//   CHAT_API_URL=http://127.0.0.1:8090 CHAT_API_KEY=chk_… BOT_ID=bot-ping ROOM=general npx tsx bot.ts
//   (Node 22.6+: node --experimental-strip-types bot.ts)
//
// The key needs the scopes messages:write, history:read, presence:read (and rooms:write for
// the first run, to add the bot to the room), and BOT_ID among its bots. The HTTP API has no live
// feed: the bot pages the room's history after the last seq it saw (use NATS, or the WebSocket
// protocol, for a push feed). Every post carries a client_id derived from the message it
// answers, so a retry after a timeout or a restart never posts twice.

const base = (process.env.CHAT_API_URL ?? "http://127.0.0.1:8090").replace(/\/$/, "");
const key = process.env.CHAT_API_KEY ?? "";
const bot = process.env.BOT_ID ?? "bot-ping";
const room = process.env.ROOM ?? "general";
const everyMs = Number(process.env.POLL_MS ?? "2000");

interface ApiError {
  error: { code: string; message: string };
}
interface Posted {
  room: string;
  seq: number;
  ts: number;
  client_id: string;
  duplicate: boolean;
}
interface RoomEvent {
  type: "message" | "edit" | "delete" | "reaction";
  room: string;
  seq: number;
  from?: string;
  body?: string;
}
interface HistoryPage {
  room: string;
  messages: RoomEvent[];
  has_more: boolean;
}
interface PresenceReply {
  users: { user: string; status: string; last_seen: number }[];
}

class CallFailed extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(`${status} ${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

/** One call; retried with the same body while the answer is 429 or 503 (the call is idempotent). */
async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    const res = await fetch(`${base}/api/v1${path}`, {
      method,
      headers: {
        authorization: `Bearer ${key}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (res.ok) return (await res.json()) as T;
    const err = ((await res.json().catch(() => null)) as ApiError | null)?.error;
    const retry = (res.status === 429 || res.status === 503) && attempt < 5;
    if (!retry) throw new CallFailed(res.status, err?.code ?? "unknown", err?.message ?? res.statusText);
    const after = Number(res.headers.get("retry-after") ?? "1");
    await new Promise((r) => setTimeout(r, Math.max(after, 1) * 1000));
  }
}

async function answer(m: RoomEvent): Promise<void> {
  const text = (m.body ?? "").trim();
  let reply: string | undefined;
  if (text === "!ping") reply = "pong";
  if (text === "!who") {
    const p = await call<PresenceReply>("GET", `/rooms/${room}/presence`);
    const online = p.users.filter((u) => u.status !== "offline").map((u) => u.user);
    reply = online.length ? `online: ${online.join(", ")}` : "nobody is online";
  }
  if (reply === undefined) return;
  const posted = await call<Posted>("POST", `/rooms/${room}/messages`, {
    from: bot,
    body: reply,
    client_id: `answer-${m.seq}`,
    reply_to: m.seq,
  });
  console.log(`answered #${m.seq} with #${posted.seq}${posted.duplicate ? " (already done)" : ""}`);
}

async function main(): Promise<void> {
  if (!key.startsWith("chk_")) throw new Error("set CHAT_API_KEY to a key made with chatctl api-key create");
  // Be a member of the room (idempotent; needs rooms:write — drop it once the bot is in).
  await call("PUT", `/rooms/${room}/members/${bot}`).catch((e: unknown) => {
    if (!(e instanceof CallFailed && e.code === "forbidden")) throw e;
  });
  // Start at the room's newest event: only what is said from now on is answered.
  const newest = await call<HistoryPage>("GET", `/rooms/${room}/messages?limit=1`);
  let after = newest.messages.at(-1)?.seq ?? 0;
  console.log(`${bot} listening in ${room} after #${after}`);
  for (;;) {
    const page = await call<HistoryPage>("GET", `/rooms/${room}/messages?after=${after}&limit=100&replay=true`);
    for (const m of page.messages) {
      after = Math.max(after, m.seq);
      if (m.type === "message" && m.from !== bot) await answer(m);
    }
    if (!page.has_more) await new Promise((r) => setTimeout(r, everyMs));
  }
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
