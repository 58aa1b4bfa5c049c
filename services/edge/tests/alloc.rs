//! The delivery path allocates nothing per delivery (issue 12): the hub's fan-out of a ready
//! frame to every session of a room, and each session's writer draining its queue into the
//! socket, counted with a counting global allocator (`stats_alloc`). The socket is a `Sink` that copies each
//! frame into a reused buffer and empties it on flush, as tungstenite's write buffer does.

use std::alloc::System;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ws::{Message, Utf8Bytes};
use chat_edge::hub::{Outbound, RoomEvent, SessionHandle, deliver_event};
use chat_edge::session::writer::{self, Rooms};
use chat_proto::{RoomId, UserId};
use futures::Sink;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::sync::mpsc;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// A socket: frames are copied into a buffer that a flush empties (no allocation once grown).
struct BufferSink {
    buf: Vec<u8>,
    frames: u64,
    flushes: u64,
}

impl Sink<Message> for BufferSink {
    type Error = axum::Error;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        if let Message::Text(t) = &item {
            self.buf.extend_from_slice(t.as_str().as_bytes());
            self.frames += 1;
        }
        Ok(())
    }
    fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.buf.clear();
        self.flushes += 1;
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

/// A session's room state as the writer sees it: the highest seq delivered per room.
struct Delivered(HashMap<RoomId, u64>);

impl Rooms for Delivered {
    fn admit_event(&mut self, room: &RoomId, seq: u64) -> bool {
        match self.0.get_mut(room) {
            Some(d) if seq > *d => {
                *d = seq;
                true
            }
            _ => false,
        }
    }
    fn is_member(&self, room: &RoomId) -> bool {
        self.0.contains_key(room)
    }
}

struct Session {
    rx: mpsc::Receiver<Outbound>,
    sink: BufferSink,
    rooms: Delivered,
}

const SESSIONS: usize = 100;
const EVENTS_PER_ROUND: u64 = 20;

/// One round: `EVENTS_PER_ROUND` events fanned out to every session, then every session's
/// writer drains its queue (one batch, one flush each). Returns the deliveries written.
async fn round(
    targets: &Arc<[SessionHandle]>,
    sessions: &mut [Session],
    events: &[Arc<RoomEvent>],
) -> u64 {
    for event in events {
        assert_eq!(deliver_event(targets, event), SESSIONS as u64);
    }
    let mut written = 0;
    for s in sessions.iter_mut() {
        let first = s.rx.try_recv().expect("queued");
        let batch = writer::write_batch(&mut s.sink, first, &mut s.rx, &mut s.rooms)
            .await
            .expect("written");
        written += batch.events;
    }
    written
}

#[tokio::test(flavor = "current_thread")]
async fn fan_out_and_batched_writes_allocate_nothing_per_delivery() {
    let room = Arc::new(RoomId::new("busy").unwrap());
    let mut handles = Vec::new();
    let mut sessions = Vec::new();
    for i in 0..SESSIONS {
        let (tx, rx) = mpsc::channel(1024);
        handles.push(SessionHandle {
            id: i as u64,
            name: format!("edge-{i}").into(),
            user: UserId::new(format!("u{i}")).unwrap(),
            tx,
            stop: Default::default(),
        });
        sessions.push(Session {
            rx,
            sink: BufferSink {
                buf: Vec::with_capacity(64 * 1024),
                frames: 0,
                flushes: 0,
            },
            rooms: Delivered(HashMap::from([((*room).clone(), 0)])),
        });
    }
    let targets: Arc<[SessionHandle]> = handles.into();
    let warm_up = 50;
    let rounds = 200;
    // Each event is built once per edge, whatever its recipients (the hub serializes it and
    // wraps it in one `Arc`): built here, outside the counted path, which is per delivery.
    let events: Vec<Arc<RoomEvent>> = (1..=(warm_up + rounds) * EVENTS_PER_ROUND)
        .map(|seq| {
            Arc::new(RoomEvent {
                room: room.clone(),
                seq,
                text: Utf8Bytes::from(format!(r#"{{"type":"message","room":"busy","seq":{seq}}}"#)),
            })
        })
        .collect();
    let mut per_round = events.chunks(EVENTS_PER_ROUND as usize);
    // Warm-up: the channels' blocks and the buffers reach their steady size.
    for _ in 0..warm_up {
        round(&targets, &mut sessions, per_round.next().unwrap()).await;
    }
    let region = Region::new(GLOBAL);
    let mut deliveries = 0;
    for _ in 0..rounds {
        deliveries += round(&targets, &mut sessions, per_round.next().unwrap()).await;
    }
    let stats = region.change();
    let allocs = (stats.allocations + stats.reallocations) as u64;
    assert_eq!(deliveries, rounds * EVENTS_PER_ROUND * SESSIONS as u64);
    println!(
        "FIGURES {deliveries} deliveries, {allocs} allocations: {:.6} per delivery",
        allocs as f64 / deliveries as f64
    );
    assert_eq!(allocs, 0, "allocations in the steady-state delivery path");
    // One flush per drained batch, not one per frame.
    let s = &sessions[0].sink;
    assert_eq!(s.frames, (warm_up + rounds) * EVENTS_PER_ROUND);
    assert_eq!(s.flushes, warm_up + rounds);
}
