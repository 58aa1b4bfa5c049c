//! The consumer: a durable pull consumer (`notify`) on the `CHAT` stream. Each batch is stored in
//! one transaction (room rows and new notifications) and acknowledged only after it committed
//! (so the consumer's ack floor says what is stored); then the new notifications are published.
//! No unread count is made or published per message (protocol.md#ws-unread): clients add up the
//! messages they receive. A
//! redelivered event inserts nothing new (primary keys on `(room, seq)` and on the notification
//! id, derived from seq and user), so nothing is counted or stored twice. Live delivery is at
//! least once: the notifications of a redelivered event are published again (same id), since
//! the process that stored them may have died before publishing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use chat_bus::api::{ApiError, RoomInfo, UserNotification};
use chat_bus::event::{Event, RoomEvent};
use chat_bus::{subjects, trace};
use chat_proto::{ErrorCode, Notification, RoomId, RoomKind, UserId};
use chat_runtime::consumer::{BatchLoop, InHand};
use tokio_util::sync::CancellationToken;

use crate::core::Core;
use crate::mention;
use crate::store::{self, NewNotification, RoomMessage};

/// The consumer every chat-notify process shares.
pub fn consumer_config(ack_wait: Duration) -> pull::Config {
    pull::Config {
        durable_name: Some(subjects::NOTIFY_CONSUMER.to_owned()),
        description: Some("chat-notify: unread counts and notifications".into()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait,
        max_ack_pending: 20_000,
        ..Default::default()
    }
}

/// A member list younger than this is not fetched again because of a mention of a non-member
/// (`@here`, a typo, a stranger): such mentions are common and would hit chat-history each time.
const MIN_REFRESH_AGE: Duration = Duration::from_millis(500);

/// One decoded event of a batch.
struct Decoded {
    seq: u64,
    event: RoomEvent,
    /// Authors of the messages it answers (reply_to, thread root): protocol.md#ws `reply`.
    answered: Vec<UserId>,
    /// Delivered before: an earlier attempt may have committed and then died before publishing.
    redelivered: bool,
}

/// Consumes until `shutdown`; reconnects to the consumer after any failure.
pub async fn run(core: Core, shutdown: CancellationToken) {
    let config = &core.config;
    BatchLoop::new(
        consumer_config(config.ack_wait),
        config.batch_max,
        config.batch_wait,
    )
    .run(&core.stream, &shutdown, |batch| {
        handle_batch(&core, batch, &shutdown)
    })
    .await;
}

/// How a batch stays in hand while chat-history or PostgreSQL is down.
fn in_hand(core: &Core) -> InHand {
    InHand {
        ack_wait: core.config.ack_wait,
        errors: "chat_notify_errors_total",
    }
}

/// A room's members. While chat-history is unreachable this fails (and the batch waits); any
/// other refusal is logged and the room is treated as having no members, so that one bad room
/// cannot stall the consumer (counts stay exact: they do not depend on the member list; only
/// the live `unread` and notifications of those events are lost).
async fn members_or_none(core: &Core, room: &RoomId) -> Result<Arc<RoomInfo>, ApiError> {
    match core.members.get(room).await {
        Err(e) if e.code != ErrorCode::Unavailable => {
            tracing::error!(%room, error = %e, "room members refused; no notifications for this batch");
            Ok(Arc::new(RoomInfo {
                room: room.clone(),
                kind: RoomKind::Public,
                members: Vec::new(),
            }))
        }
        r => r,
    }
}

async fn handle_batch(core: &Core, batch: Vec<jetstream::Message>, shutdown: &CancellationToken) {
    let started = Instant::now();
    let mut rows = Vec::with_capacity(batch.len());
    let mut decoded = Vec::with_capacity(batch.len());
    let mut spans: HashMap<u64, tracing::Span> = HashMap::with_capacity(batch.len());
    let mut deleted: Vec<(RoomId, u64)> = Vec::new();
    for msg in &batch {
        let Ok(info) = msg.info() else { continue };
        let seq = info.stream_sequence;
        if info.delivered > 1 {
            metrics::counter!("chat_notify_redeliveries_total").increment(1);
        }
        // protocol.md#nats: an entry that is not a valid event is never counted or notified.
        let checked = match chat_bus::event::validate_stored(&msg.subject, &msg.payload) {
            Ok(c) if !c.references().is_empty() => {
                let room = c.peek().room().clone();
                match in_hand(core)
                    .retry("look up what an event refers to", &batch, shutdown, || {
                        core.lookup.resolve(&room, seq, c.clone())
                    })
                    .await
                {
                    Some(checked) => checked,
                    None => return,
                }
            }
            Ok(c) => c.resolve(|_| None),
            Err(invalid) => Err(invalid),
        };
        if let (Ok(e), Some(room)) = (&checked, subjects::room_of(&msg.subject)) {
            core.lookup
                .remember(&room, seq, Some(chat_bus::event::Target::of(e)));
        }
        match checked {
            // protocol.md#ws: edits, deletes and reactions are not counted and never notify; a
            // delete withdraws the deleted message's pending notifications.
            Ok(Event::Edit(e) | Event::Delete(e) | Event::Reaction(e)) => {
                if e.kind == chat_bus::event::EventKind::Delete
                    && let Some(target) = e.target
                {
                    deleted.push((e.room.clone(), target));
                }
                rows.push(RoomMessage {
                    room: e.room,
                    seq,
                    sender: None,
                });
            }
            Ok(Event::Message(event)) => {
                let mut answered = Vec::new();
                for r in [event.reply_to, event.thread].into_iter().flatten() {
                    // Memoized by the resolve above: no second lookup.
                    if let Ok(Some(t)) = core.lookup.target(&event.room, r).await {
                        answered.push(t.from);
                    }
                }
                let span = tracing::info_span!(
                    "notify.event",
                    otel.kind = "consumer",
                    messaging.system = trace::MESSAGING_SYSTEM,
                    messaging.operation.type = "process",
                    messaging.destination.name = %msg.subject,
                    messaging.consumer.group.name = subjects::NOTIFY_CONSUMER,
                    messaging.message.id = trace::message_id(msg.headers.as_ref()),
                    room = %event.room,
                    seq
                );
                trace::continue_from(&span, msg.headers.as_ref());
                spans.insert(seq, span);
                rows.push(RoomMessage {
                    room: event.room.clone(),
                    seq,
                    sender: Some(event.from.clone()),
                });
                decoded.push(Decoded {
                    seq,
                    event,
                    answered,
                    redelivered: info.delivered > 1,
                });
            }
            Err(invalid) => {
                tracing::warn!(seq, reason = %invalid, "not a valid event: counted for nobody");
                if let Some(room) = subjects::room_of(&msg.subject) {
                    rows.push(RoomMessage {
                        room,
                        seq,
                        sender: None,
                    });
                }
            }
        }
    }

    // Members of every room of the batch (refreshed once if a mention names a non-member and the
    // list is not fresh, in case the cache predates an invite).
    let mut rooms: BTreeMap<RoomId, Arc<RoomInfo>> = BTreeMap::new();
    for d in &decoded {
        let room = &d.event.room;
        if !rooms.contains_key(room) {
            let Some(info) = in_hand(core)
                .retry("fetch room members", &batch, shutdown, || {
                    members_or_none(core, room)
                })
                .await
            else {
                return;
            };
            rooms.insert(room.clone(), info);
        }
    }
    let mut refreshed = BTreeSet::new();
    for d in &decoded {
        let room = &d.event.room;
        let info = &rooms[room];
        if !refreshed.contains(room)
            && core
                .members
                .age(room)
                .is_some_and(|age| age > MIN_REFRESH_AGE)
            && mention::unknown_mentions(&info.members, &d.event.from, &d.event.body)
        {
            refreshed.insert(room.clone());
            if let Ok(fresh) = core.members.refresh(room).await {
                rooms.insert(room.clone(), fresh);
            }
        }
    }

    let mut notes = Vec::new();
    for d in &decoded {
        let info = &rooms[&d.event.room];
        for p in mention::plan_with_replies(
            info.kind,
            &info.members,
            &d.event.from,
            &d.event.body,
            &d.answered,
        ) {
            notes.push(NewNotification {
                notification: Notification {
                    id: mention::message_notification_id(d.seq, &p.user),
                    kind: p.kind,
                    room: d.event.room.clone(),
                    seq: d.seq,
                    from: d.event.from.clone(),
                    preview: mention::preview(&d.event.body),
                    ts: d.event.ts,
                },
                user: p.user,
            });
        }
    }

    // Notifications of redelivered events are published again if still pending, in case the
    // delivery that stored them died before publishing (at least once: receivers dedupe on id).
    let again: Vec<String> = notes
        .iter()
        .filter(|n| {
            decoded
                .iter()
                .any(|d| d.redelivered && d.seq == n.notification.seq)
        })
        .map(|n| n.notification.id.clone())
        .collect();
    let publish = if rows.is_empty() {
        Vec::new()
    } else {
        match in_hand(core)
            .retry("store a batch", &batch, shutdown, || {
                store::store_batch(&core.pool, &rows, &notes, &again, core.webhooks.is_some())
            })
            .await
        {
            Some(ids) => ids,
            None => return,
        }
    };
    if in_hand(core)
        .retry(
            "withdraw notifications of deleted messages",
            &batch,
            shutdown,
            || store::withdraw(&core.pool, &deleted),
        )
        .await
        .is_none()
    {
        return;
    }

    let publish: BTreeSet<String> = publish.into_iter().collect();
    let fresh: Vec<(UserNotification, tracing::Span)> = notes
        .into_iter()
        .filter(|n| publish.contains(&n.notification.id))
        .map(|n| {
            let span = spans
                .get(&n.notification.seq)
                .cloned()
                .unwrap_or_else(tracing::Span::none);
            let n = UserNotification {
                user: n.user,
                notification: n.notification,
            };
            (n, span)
        })
        .collect();
    core.deliver(fresh).await;

    for m in &batch {
        if let Err(e) = m.ack().await {
            tracing::debug!(error = %e, "ack not sent; the event will be redelivered and skipped");
        }
    }
    metrics::counter!("chat_notify_events_total").increment(batch.len() as u64);
    metrics::histogram!("chat_notify_batch_size").record(batch.len() as f64);
    metrics::histogram!("chat_notify_batch_seconds").record(started.elapsed().as_secs_f64());
    drop(spans);
}
