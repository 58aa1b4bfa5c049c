// Socket.IO 4.8 reference server for bench/compare: the same room semantics as chat-edge's
// (join a room, a `send` is broadcast to every member of the room, the sender included, and
// acknowledged to the sender), WebSocket transport only, no persistence.
//
//   node server.mjs PORT        # prints "listening PORT" when ready
//
// Events: join(room, ack) -> ack({room}); send({room, body, client_id}, ack) -> every member of the
// room gets message({room, from, body, client_id, ts}) and the sender gets ack({client_id, ts}).
// `body` carries the sender's timestamp, as chat-bench's does.

import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[2] ?? 3000);
const http = createServer();
const io = new Server(http, {
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
  maxHttpBufferSize: 64 * 1024,
});

io.on("connection", (socket) => {
  const user = String(socket.handshake.query.user ?? socket.id);
  socket.on("join", (room, ack) => {
    if (typeof room !== "string") return;
    socket.join(room);
    if (typeof ack === "function") ack({ room });
  });
  socket.on("send", (m, ack) => {
    if (!m || typeof m.room !== "string" || !socket.rooms.has(m.room)) return;
    const ts = Date.now();
    io.to(m.room).emit("message", { room: m.room, from: user, body: m.body, client_id: m.client_id, ts });
    if (typeof ack === "function") ack({ client_id: m.client_id, ts });
  });
});

http.listen(port, "127.0.0.1", () => console.log(`listening ${port}`));
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(0));
