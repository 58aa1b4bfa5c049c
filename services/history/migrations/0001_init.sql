-- The archive: every event of the CHAT stream, keyed by the stream's incarnation and sequence.
CREATE TABLE epochs (
    id    SERIAL PRIMARY KEY,
    epoch TEXT NOT NULL UNIQUE
);

CREATE TABLE messages (
    epoch_id  INT    NOT NULL REFERENCES epochs (id),
    seq       BIGINT NOT NULL,
    room      TEXT   NOT NULL,
    sender    TEXT   NOT NULL,
    body      TEXT   NOT NULL,
    client_id TEXT   NOT NULL,
    ts        BIGINT NOT NULL,
    PRIMARY KEY (epoch_id, seq)
);
CREATE INDEX messages_by_room ON messages (epoch_id, room, seq);

-- Rooms and membership.
CREATE TABLE rooms (
    id         TEXT   PRIMARY KEY,
    kind       TEXT   NOT NULL CHECK (kind IN ('public', 'private', 'dm')),
    created_by TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE memberships (
    room      TEXT   NOT NULL REFERENCES rooms (id),
    user_id   TEXT   NOT NULL,
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (room, user_id)
);
CREATE INDEX memberships_by_user ON memberships (user_id);
