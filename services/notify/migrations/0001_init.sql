-- chat-notify's state: enough of each room's log to count unread messages, the read markers,
-- and the pending notifications.

-- Which incarnation of the CHAT stream the rows below belong to (seqs mean nothing without it).
CREATE TABLE stream_epoch (
    id    BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    epoch TEXT NOT NULL
);

-- One row per event of the stream: unread = rows of others above the reader's marker.
-- sender is NULL for an event that could not be decoded (it counts for nobody).
CREATE TABLE room_messages (
    room   TEXT   NOT NULL,
    seq    BIGINT NOT NULL,
    sender TEXT,
    PRIMARY KEY (room, seq)
);
-- A member's own messages above a marker (subtracted from the room's count).
CREATE INDEX room_messages_by_sender ON room_messages (room, sender, seq);

-- A user's read marker in a room; it only moves forward. last_read is what the user read
-- (a `read` frame: it also clears notifications); joined_at is the room's last seq when the
-- user joined a public room (what came before is not unread to them, but a notification that
-- raced the join is not cleared by it). Unread counts from GREATEST(last_read, joined_at).
CREATE TABLE read_markers (
    user_id   TEXT   NOT NULL,
    room      TEXT   NOT NULL,
    last_read BIGINT NOT NULL DEFAULT 0,
    joined_at BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, room)
);

-- Pending notifications, deleted when a read covers their seq. The id is derived from the
-- event's seq and the user, so a redelivered event cannot make a second one.
CREATE TABLE notifications (
    id      TEXT   PRIMARY KEY,
    user_id TEXT   NOT NULL,
    kind    TEXT   NOT NULL CHECK (kind IN ('mention', 'dm', 'invite')),
    room    TEXT   NOT NULL,
    seq     BIGINT NOT NULL,
    sender  TEXT   NOT NULL,
    preview TEXT   NOT NULL,
    ts      BIGINT NOT NULL
);
CREATE INDEX notifications_by_user ON notifications (user_id, room, seq);
