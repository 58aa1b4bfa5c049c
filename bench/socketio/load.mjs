// Load client for the Socket.IO reference server (server.mjs), with chat-bench's workloads:
//
//   node load.mjs throughput --url ws://127.0.0.1:3000 --rooms 10 --members 100 --senders 2 --rate 1000 --seconds 10
//   node load.mjs idle       --url ws://127.0.0.1:3000 --connections 1000 --pid SERVER_PID
//
// throughput: rooms x members connections, each joins its room; the first `senders` members of each
// room send at a constant offered rate (rate / (rooms x senders) each, on a fixed schedule), the body
// carrying the scheduled send time, so queueing delay is not hidden. Measures end-to-end latency
// (scheduled send -> each member's `message`, the sender included) and send -> ack latency, with a
// log-linear histogram (3 significant digits, like HDR), and deliveries/s (delivered / seconds).
// idle: the server's RSS growth per connected, idle socket (after 50 warm-up connections).
//
// The client speaks Socket.IO's wire protocol (Engine.IO 4, WebSocket transport: "40" connect,
// "42[...]" events, "42<id>[...]"/"43<id>[...]" acks, "2"/"3" ping/pong) directly over `ws`, as
// socket.io-client does on the wire, so that the load generator is cheap and does not bound the
// result. Output: a table and a JSON line, in chat-bench's format.

import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import WebSocket from "ws";

const [cmd, ...rest] = process.argv.slice(2);
const args = {};
for (let i = 0; i < rest.length; i += 2) args[rest[i].replace(/^--/, "")] = rest[i + 1];
const num = (k, d) => (args[k] === undefined ? d : Number(args[k]));
const base = (args.url ?? "ws://127.0.0.1:3000").replace(/\/$/, "");
const nowUs = () => Math.round(performance.now() * 1000);

/** Log-linear histogram of positive integers (microseconds): 1/1024 relative precision. */
class Hist {
  constructor() {
    this.counts = new Float64Array(40 * 2048);
    this.n = 0;
    this.max = 0;
  }
  record(v) {
    v = Math.max(1, Math.round(v));
    if (v > this.max) this.max = v;
    let e = 0;
    while (v >= 2048) {
      v >>= 1;
      e++;
    }
    this.counts[e * 2048 + v]++;
    this.n++;
  }
  add(o) {
    for (let i = 0; i < o.counts.length; i++) this.counts[i] += o.counts[i];
    this.n += o.n;
    this.max = Math.max(this.max, o.max);
  }
  /** The value at quantile q, in milliseconds. */
  q(q) {
    if (this.n === 0) return 0;
    const target = Math.max(1, Math.ceil(q * this.n));
    let seen = 0;
    for (let i = 0; i < this.counts.length; i++) {
      seen += this.counts[i];
      if (seen >= target) {
        const e = Math.floor(i / 2048);
        const m = i % 2048;
        // The middle of the bucket: exact below 2048 µs.
        return (e === 0 ? m : ((m << e) + ((m + 1) << e) - 1) / 2) / 1000;
      }
    }
    return this.max / 1000;
  }
}

/** One Socket.IO connection over a raw WebSocket. */
function connect(user, onEvent) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${base}/socket.io/?EIO=4&transport=websocket&user=${encodeURIComponent(user)}`, {
      perMessageDeflate: false,
    });
    const acks = new Map();
    let nextId = 0;
    const conn = {
      ws,
      emit(name, data, ack) {
        if (ack) {
          const id = nextId++;
          acks.set(id, ack);
          ws.send(`42${id}${JSON.stringify([name, data])}`);
        } else {
          ws.send(`42${JSON.stringify([name, data])}`);
        }
      },
      call(name, data) {
        return new Promise((ok) => conn.emit(name, data, ok));
      },
      close: () => ws.terminate(),
    };
    ws.on("message", (buf) => {
      const s = buf.toString();
      const t = s.charCodeAt(0);
      if (t === 52 /* 4: message */) {
        const k = s.charCodeAt(1);
        if (k === 50 /* 2: event */) {
          const [name, data] = JSON.parse(s.slice(2));
          onEvent?.(name, data);
        } else if (k === 51 /* 3: ack */) {
          const j = s.indexOf("[");
          const id = Number(s.slice(2, j));
          const cb = acks.get(id);
          acks.delete(id);
          cb?.(JSON.parse(s.slice(j))[0]);
        } else if (k === 48 /* 0: namespace connected */) {
          resolve(conn);
        } else if (k === 52 /* 4: connect error */) {
          reject(new Error(`connect error: ${s}`));
        }
      } else if (t === 48 /* 0: open */) {
        ws.send("40");
      } else if (t === 50 /* 2: ping */) {
        ws.send("3");
      }
    });
    ws.on("error", reject);
  });
}

async function inBatches(n, size, fn) {
  const out = [];
  for (let i = 0; i < n; i += size) {
    out.push(...(await Promise.all(Array.from({ length: Math.min(size, n - i) }, (_, j) => fn(i + j)))));
  }
  return out;
}

function rssKib(pid) {
  const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error("VmRSS not found");
  return Number(m[1]);
}

async function idle() {
  const n = num("connections", 1000);
  const pid = num("pid", 0);
  if (!pid) throw new Error("--pid of the server process is required");
  const warm = await inBatches(50, 50, (i) => connect(`warm${i}`));
  await new Promise((r) => setTimeout(r, 500));
  const before = rssKib(pid);
  const started = performance.now();
  const conns = await inBatches(n, 50, (i) => connect(`idle${i}`));
  const connectS = (performance.now() - started) / 1000;
  await new Promise((r) => setTimeout(r, 1000));
  const after = rssKib(pid);
  const per = (after - before) / n;
  console.log(`idle connections: ${n}, server RSS before ${before} KiB, after ${after} KiB, ${per.toFixed(2)} KiB per connection`);
  console.log(`connect: ${(n / connectS).toFixed(0)} connections/s`);
  console.log(JSON.stringify({ bench: "idle", server: "socket.io", connections: n, rss_before_kib: before, rss_after_kib: after, kib_per_connection: per }));
  for (const c of [...conns, ...warm]) c.close();
}

async function throughput() {
  const rooms = num("rooms", 10);
  const members = num("members", 10);
  const senders = Math.min(num("senders", 1), members);
  const rate = num("rate", 1000);
  const seconds = num("seconds", 10);
  const tag = `s${Date.now() % 1_000_000}`;
  const perSender = rate / (rooms * senders);
  const perSenderN = Math.floor(perSender * seconds);
  console.log(
    `throughput: ${rooms} rooms x ${members} members (${senders} senders each), offered ${rate} msgs/s for ${seconds}s (${perSender.toFixed(1)} msgs/s per sender)`,
  );
  const lat = new Hist();
  const acks = new Hist();
  let delivered = 0;
  const onEvent = (name, data) => {
    if (name !== "message") return;
    delivered++;
    const b = data.body;
    if (typeof b === "string" && b.charCodeAt(0) === 116 /* t */) lat.record(nowUs() - Number(b.slice(1)));
  };
  const conns = await inBatches(rooms * members, 50, async (i) => {
    const room = `${tag}-r${Math.floor(i / members)}`;
    const c = await connect(`${room}-u${i % members}`, onEvent);
    await c.call("join", room);
    return { c, room, sender: i % members < senders };
  });
  const sendersList = conns.filter((x) => x.sender);
  // One schedule for every sender: sender k sends its i-th message at start + i * interval
  // (+ a per-sender offset spreading the senders over the interval, as independent clients would).
  const intervalUs = 1e6 / perSender;
  const start = nowUs() + 1_000_000;
  const next = sendersList.map(() => 0);
  const offset = sendersList.map((_, k) => (k * intervalUs) / sendersList.length);
  let sent = 0;
  await new Promise((done) => {
    const tick = () => {
      const now = nowUs();
      let soonest = Infinity;
      let remaining = false;
      for (let k = 0; k < sendersList.length; k++) {
        while (next[k] < perSenderN) {
          const due = Math.round(start + offset[k] + next[k] * intervalUs);
          if (due > now) {
            soonest = Math.min(soonest, due);
            break;
          }
          const { c, room } = sendersList[k];
          const i = next[k]++;
          c.emit("send", { room, body: `t${due}`, client_id: `${i}-${due}` }, () => acks.record(nowUs() - due));
          sent++;
        }
        if (next[k] < perSenderN) remaining = true;
      }
      if (!remaining) return done();
      setTimeout(tick, Math.max(0, (soonest - nowUs()) / 1000 - 0.2));
    };
    setTimeout(tick, (start - nowUs()) / 1000);
  });
  const expected = sent * members;
  const deadline = performance.now() + 15_000;
  while (delivered < expected && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  console.log(`sent ${sent} (target ${Math.floor(rate * seconds)}), delivered ${delivered} of ${expected}`);
  const f = (x) => x.toFixed(3);
  console.log(
    `deliveries/s ${(delivered / seconds).toFixed(0)}; e2e latency ms p50 ${f(lat.q(0.5))} p99 ${f(lat.q(0.99))} p99.9 ${f(lat.q(0.999))} max ${f(lat.max / 1000)}; send->ack ms p50 ${f(acks.q(0.5))} p99 ${f(acks.q(0.99))}`,
  );
  console.log(
    JSON.stringify({
      bench: "throughput", server: "socket.io", rooms, members, senders, offered_msgs_per_s: rate, seconds, sent, delivered,
      expected_deliveries: expected, deliveries_per_s: delivered / seconds,
      e2e_ms: { p50: lat.q(0.5), p99: lat.q(0.99), p999: lat.q(0.999) }, ack_ms: { p50: acks.q(0.5), p99: acks.q(0.99) },
    }),
  );
  for (const { c } of conns) c.close();
}

if (cmd === "idle") await idle();
else if (cmd === "throughput") await throughput();
else {
  console.error("usage: node load.mjs throughput|idle [--flag value …] (see the header)");
  process.exit(2);
}
process.exit(0);
