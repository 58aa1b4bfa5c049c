//! Subject, stream, consumer and queue-group names: the one place that spells them.
//!
//! Public subjects (protocol.md#nats) are stable; everything under `chat.internal.` and
//! `chat.user.<user>.membership` is internal and may change.

use chat_proto::{RoomId, UserId};

/// The JetStream stream that orders every room event.
pub const STREAM: &str = "CHAT";
/// Subjects the `CHAT` stream stores.
pub const ROOM_MSG_ALL: &str = "chat.room.*.msg";
/// Where the stream republishes every stored event, with `Nats-Sequence`/`Nats-Last-Sequence`.
pub const FANOUT_TEMPLATE: &str = "chat.fanout.{{wildcard(1)}}";
/// Dead-letter stream for events the archive can never store.
pub const DEAD_LETTER_STREAM: &str = "CHAT_DLQ";
/// Subject prefix of dead-lettered events (`chat.dlq.<consumer>`).
pub fn dead_letter(consumer: &str) -> String {
    format!("chat.dlq.{consumer}")
}
/// Subjects of the dead-letter stream.
pub const DEAD_LETTER_ALL: &str = "chat.dlq.>";

/// Durable consumer of chat-history's archive writer.
pub const HISTORY_CONSUMER: &str = "history-archive";
/// Durable consumer of chat-notify.
pub const NOTIFY_CONSUMER: &str = "notify";

/// Queue groups: one per service, so that any number of instances share the work.
pub const HISTORY_QUEUE: &str = "chat-history";
pub const PRESENCE_QUEUE: &str = "chat-presence";
pub const NOTIFY_QUEUE: &str = "chat-notify";

/// Where a room's events are published (through JetStream).
pub fn room_msg(room: &RoomId) -> String {
    format!("chat.room.{room}.msg")
}

/// The ordered live feed of a room.
pub fn fanout(room: &RoomId) -> String {
    format!("chat.fanout.{room}")
}

/// Room id of a `chat.fanout.<room>` or `chat.room.<room>.<x>` subject.
pub fn room_of(subject: &str) -> Option<RoomId> {
    let mut parts = subject.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("chat"), Some("fanout" | "room"), Some(room)) => RoomId::new(room).ok(),
        _ => None,
    }
}

/// Typing indicators of a room (core NATS, live only).
pub fn room_typing(room: &RoomId) -> String {
    format!("chat.room.{room}.typing")
}

/// Presence changes of a room's members (core NATS, live only).
pub fn room_presence(room: &RoomId) -> String {
    format!("chat.room.{room}.presence")
}

/// Everything addressed to one user: `notify`, `unread`, and the internal `membership`.
pub fn user_all(user: &UserId) -> String {
    format!("chat.user.{user}.>")
}

/// Notifications for a user (public).
pub fn user_notify(user: &UserId) -> String {
    format!("chat.user.{user}.notify")
}

/// Unread counts for a user (public).
pub fn user_unread(user: &UserId) -> String {
    format!("chat.user.{user}.unread")
}

/// Membership changes of a user (internal): edges re-subscribe the user's sessions.
pub fn user_membership(user: &UserId) -> String {
    format!("chat.user.{user}.membership")
}

/// Close every session of a user (internal; chat-api's `disconnect`, `chatctl disconnect`): every
/// edge closes the user's sessions with 4001. Payload: [`crate::api::Disconnect`].
pub fn user_disconnect(user: &UserId) -> String {
    format!("chat.user.{user}.disconnect")
}

/// Membership changes of every user (chat-notify keeps its member cache fresh with them;
/// chat-presence announces joiners to their new rooms).
pub const USER_MEMBERSHIP_ALL: &str = "chat.user.*.membership";

/// Everything addressed to any user: an edge's one subscription for all its users (cheap since
/// v1.1 pushes no unread count per message), instead of one per user.
pub const USERS_ALL: &str = "chat.user.>";

/// The user of a `chat.user.<user>.<kind>` subject.
pub fn user_of_subject(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix("chat.user.")?;
    let (user, _kind) = rest.split_once('.')?;
    Some(user)
}

/// The last token of a `chat.user.<user>.<kind>` subject.
pub fn user_subject_kind(subject: &str) -> Option<&str> {
    subject.rsplit('.').next()
}

/// A user's status changes, for integrators.
pub fn presence_user(user: &UserId) -> String {
    format!("presence.user.{user}")
}

/// Where an integration's publish to `chat.room.<room>.msg` arrives, in the chat account, when
/// the integration has an account of its own (issue 15 item 8, docs/deploy.md *Integrations and
/// scopes*): its service import maps the contract's subject to this one, which names the
/// credential, so the publisher's identity is in the subject and cannot be forged. chat-history
/// relays each valid event whose `from` is one of that credential's bots to the room's subject
/// and answers with the stream's own acknowledgement.
pub fn integration_publish(credential: &str, room: &RoomId) -> String {
    format!("chat.integration.{credential}.{room}.msg")
}

/// Every integration's publishes (chat-history's relay subscribes to them).
pub const INTEGRATION_PUBLISH_ALL: &str = "chat.integration.*.*.msg";

/// The credential and room of a `chat.integration.<credential>.<room>.msg` subject.
pub fn integration_of(subject: &str) -> Option<(&str, RoomId)> {
    let mut parts = subject.split('.');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("chat"), Some("integration"), Some(cred), Some(room), Some("msg"), None) => {
            Some((cred, RoomId::new(room).ok()?))
        }
        _ => None,
    }
}

/// Public request/reply: history pages.
pub const API_HISTORY: &str = "chat.api.history";
/// Public request/reply: presence of a room or of users.
pub const API_PRESENCE: &str = "chat.api.presence";
/// Public request/reply: full-text search of the archive (protocol.md#nats `chat.api.search`).
pub const API_SEARCH: &str = "chat.api.search";

/// Internal request/reply: a message's author, thread and whether it is deleted (chat-history;
/// protocol.md#ws-lifecycle and the stateful step of event validity).
pub const HISTORY_MESSAGE: &str = "chat.internal.history.message";
/// Internal request/reply: rooms and membership (served by chat-history).
pub const ROOMS: &str = "chat.internal.rooms";
/// Internal request/reply: read markers, unread counts and pending notifications (chat-notify).
pub const NOTIFY_STATE: &str = "chat.internal.notify.state";
/// Internal request/reply: move a read marker (chat-notify).
pub const NOTIFY_READ: &str = "chat.internal.notify.read";
/// Internal: an edge reports a session opened (chat-presence).
pub const PRESENCE_SESSION_UP: &str = "chat.internal.presence.up";
/// Internal: an edge reports a session closed.
pub const PRESENCE_SESSION_DOWN: &str = "chat.internal.presence.down";
/// Internal: an edge's periodic list of its live sessions.
pub const PRESENCE_HEARTBEAT: &str = "chat.internal.presence.heartbeat";
/// Internal: a user set a status.
pub const PRESENCE_STATUS: &str = "chat.internal.presence.status";

/// Work-queue stream that keeps the edges' session up/down and status events until a
/// chat-presence instance has applied them (so a crashed instance loses none), and orders them.
pub const PRESENCE_EVENTS_STREAM: &str = "CHAT_PRESENCE";
/// Durable consumer every chat-presence instance shares.
pub const PRESENCE_CONSUMER: &str = "presence";
/// JetStream KV bucket of server API keys (issue 16): one entry per key id, the value an
/// [`crate::apikey::ApiKeyRecord`]; chat-api watches it, `chatctl api-key` writes it.
pub const API_KEYS_BUCKET: &str = "chat_api_keys";
/// JetStream KV bucket of chat-presence: one key per user (sessions, chosen status, last_seen).
pub const PRESENCE_USERS_BUCKET: &str = "chat_presence";
/// JetStream KV bucket of chat-presence: one key per edge (the sessions it holds).
pub const PRESENCE_EDGES_BUCKET: &str = "chat_presence_edges";
/// JetStream KV bucket of chat-presence: one key per edge (when it was last heard).
pub const PRESENCE_ALIVE_BUCKET: &str = "chat_presence_alive";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let room = RoomId::new("general").unwrap();
        assert_eq!(room_msg(&room), "chat.room.general.msg");
        assert_eq!(room_of(&fanout(&room)), Some(room.clone()));
        assert_eq!(room_of(&room_typing(&room)), Some(room));
        assert_eq!(room_of("chat.user.x.notify"), None);
        let user = UserId::new("bob").unwrap();
        assert_eq!(user_subject_kind(&user_unread(&user)), Some("unread"));
        assert_eq!(user_of_subject(&user_unread(&user)), Some(user.as_str()));
        assert_eq!(user_of_subject("chat.room.x.msg"), None);
        let general = RoomId::new("general").unwrap();
        let s = integration_publish("alerts", &general);
        assert_eq!(s, "chat.integration.alerts.general.msg");
        assert_eq!(integration_of(&s), Some(("alerts", general)));
        assert_eq!(
            integration_of("chat.integration.alerts.general.msg.x"),
            None
        );
        assert_eq!(integration_of("chat.room.general.msg"), None);
    }
}
