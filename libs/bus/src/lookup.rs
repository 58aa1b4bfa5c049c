//! The lookups behind the stateful step of event validity (protocol.md#nats, [`Candidate::resolve`]):
//! what an entry's `target`, `reply_to` or `thread` refers to. Everything a [`Target`] says is
//! immutable once the event is in the log (author, kind, thread; existence and validity), so
//! answers are memoized for good.
//!
//! [`TargetLookup`] reads the stream by seq (direct get), validating the entry it finds the
//! same way, recursively (a reply to an invalid message is invalid too); an entry that left the
//! stream is asked of a fallback (chat-history's archive). Each component (the archive, the
//! notify consumer, the edge's live feed) holds one and may [`remember`](TargetLookup::remember)
//! the events it sees go by, so that the common case costs no lookup at all.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::stream::{self, DirectGetErrorKind};
use chat_proto::RoomId;

use crate::api::{ApiError, MessageInfoRequest};
use crate::event::{self, Candidate, Event, Invalid, Target};
use crate::subjects;

/// How many answers are memoized before the memo starts over.
const MEMO_MAX: usize = 50_000;
/// How deep a chain of replies is followed before the entry is called invalid (each step goes
/// to a lower seq, so this only bounds the work a hostile chain can cause).
const MAX_DEPTH: usize = 16;

/// Seq → the room of its subject and what it is (`None`: not a valid event).
type Memo = HashMap<u64, (RoomId, Option<Target>)>;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Answers what the stream no longer holds: the valid message `seq` of `room`, if any.
pub type Fallback =
    Arc<dyn Fn(RoomId, u64) -> BoxFuture<'static, Result<Option<Target>, ApiError>> + Send + Sync>;

/// Memoized lookups of earlier events by seq.
#[derive(Clone)]
pub struct TargetLookup {
    stream: stream::Stream,
    fallback: Option<Fallback>,
    memo: Arc<Mutex<Memo>>,
}

impl TargetLookup {
    pub fn new(stream: stream::Stream, fallback: Option<Fallback>) -> Self {
        TargetLookup {
            stream,
            fallback,
            memo: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A fallback that asks chat-history (`chat.internal.history.message`).
    pub fn history_fallback(nats: async_nats::Client, timeout: std::time::Duration) -> Fallback {
        Arc::new(move |room, seq| {
            let nats = nats.clone();
            Box::pin(async move {
                let req = MessageInfoRequest {
                    room,
                    seq,
                    adding: None,
                };
                match crate::rpc::call(&nats, &req, timeout).await {
                    Ok(info) => Ok(Some(Target {
                        is_message: true,
                        from: info.from,
                        thread: info.thread,
                    })),
                    Err(e) if e.code == chat_proto::ErrorCode::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            })
        })
    }

    /// Records what a component knows of event `seq` of `room` (a valid event it saw, or
    /// `None` for an entry it found invalid).
    pub fn remember(&self, room: &RoomId, seq: u64, target: Option<Target>) {
        if let Ok(mut memo) = self.memo.lock() {
            if memo.len() >= MEMO_MAX {
                memo.clear();
            }
            memo.insert(seq, (room.clone(), target));
        }
    }

    fn memoized(&self, room: &RoomId, seq: u64) -> Option<Option<Target>> {
        let memo = self.memo.lock().ok()?;
        let (r, t) = memo.get(&seq)?;
        Some(if r == room { t.clone() } else { None })
    }

    /// The stateful step for `candidate`, stored as `seq` in `room`: `Ok(Err(_))` when it is
    /// not an event, `Err(_)` when the log could not be read (retry later).
    pub async fn resolve(
        &self,
        room: &RoomId,
        seq: u64,
        candidate: Candidate,
    ) -> Result<Result<Event, Invalid>, ApiError> {
        self.resolve_at(room, seq, candidate, 0).await
    }

    fn resolve_at<'a>(
        &'a self,
        room: &'a RoomId,
        seq: u64,
        candidate: Candidate,
        depth: usize,
    ) -> BoxFuture<'a, Result<Result<Event, Invalid>, ApiError>> {
        Box::pin(async move {
            let refs = candidate.references();
            let mut found = HashMap::with_capacity(refs.len());
            for r in refs {
                let t = if r >= seq || depth >= MAX_DEPTH {
                    None
                } else {
                    self.target_at(room, r, depth + 1).await?
                };
                found.insert(r, t);
            }
            Ok(candidate.resolve(|r| found.get(&r).cloned().flatten()))
        })
    }

    /// What event `seq` of `room` is, if it is a valid event of that room.
    pub async fn target(&self, room: &RoomId, seq: u64) -> Result<Option<Target>, ApiError> {
        self.target_at(room, seq, 0).await
    }

    async fn target_at(
        &self,
        room: &RoomId,
        seq: u64,
        depth: usize,
    ) -> Result<Option<Target>, ApiError> {
        if let Some(t) = self.memoized(room, seq) {
            return Ok(t);
        }
        let target = match self.stream.direct_get(seq).await {
            Ok(m) => {
                if subjects::room_of(&m.subject).as_ref() != Some(room) {
                    None
                } else {
                    match event::validate_stored(&m.subject, &m.payload) {
                        Err(_) => None,
                        Ok(c) => match self.resolve_at(room, seq, c, depth).await? {
                            Ok(e) => Some(Target::of(&e)),
                            Err(_) => None,
                        },
                    }
                }
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => match &self.fallback {
                Some(f) => f(room.clone(), seq).await?,
                None => None,
            },
            Err(e) => {
                tracing::warn!(error = %e, seq, "reading an event by seq failed");
                return Err(ApiError::unavailable());
            }
        };
        self.remember(room, seq, target.clone());
        Ok(target)
    }
}
