-- Integration events out (issue 16): webhook endpoints, and a transactional outbox of room and
-- membership events delivered to them in order per room (services/history/src/integration.rs).

-- The endpoints, synced from CHAT_INTEGRATION_WEBHOOKS by every chat-history that has it set.
-- `secret` is the whsec_ secret: an HMAC key must be kept as it is (it cannot be hashed).
CREATE TABLE integration_endpoints (
    id         TEXT   PRIMARY KEY,
    url        TEXT   NOT NULL,
    secret     TEXT   NOT NULL,
    events     TEXT[] NOT NULL,
    -- NULL: every room.
    rooms      TEXT[],
    updated_at BIGINT NOT NULL
);

-- Events written in the transaction that made them (the archive insert of a room event, the
-- membership change), not yet ordered. `seq` is the stream sequence of a room event (NULL for a
-- membership change); room events are ordered by it once the archive's ack floor passes them.
-- A membership change gets `after_seq`, the stream's last sequence read before it committed
-- (chat-history's rooms service sets `chat.integration_after_seq` in the transaction), or, from a
-- path that did not, read by the sequencer soon after: it is ordered after every room event
-- published before it (and before those published after), once the floor passes `after_seq`.
-- `epoch_id` is the stream incarnation of `seq` or `after_seq`.
CREATE TABLE integration_outbox (
    id         BIGSERIAL PRIMARY KEY,
    room       TEXT   NOT NULL,
    epoch_id   INT,
    seq        BIGINT,
    after_seq  BIGINT,
    type       TEXT   NOT NULL,
    event_id   TEXT   NOT NULL,
    ts         BIGINT NOT NULL,
    -- The event's `data` object, JSON text.
    data       TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX integration_outbox_by_seq ON integration_outbox (epoch_id, seq) WHERE seq IS NOT NULL;
CREATE INDEX integration_outbox_by_room ON integration_outbox (room, id);

-- Positions of ordered events: one sequence for all, taken under the sequencer's lock.
CREATE SEQUENCE integration_pos;

-- One row per (endpoint, event) still to deliver. Only the lowest `pos` of an (endpoint, room)
-- is ever attempted, so a room's events reach an endpoint in order.
CREATE TABLE integration_deliveries (
    endpoint    TEXT   NOT NULL REFERENCES integration_endpoints (id) ON DELETE CASCADE,
    pos         BIGINT NOT NULL,
    room        TEXT   NOT NULL,
    event_id    TEXT   NOT NULL,
    body        TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    next_at     BIGINT NOT NULL,
    attempts    INT    NOT NULL DEFAULT 0,
    lease_until BIGINT NOT NULL DEFAULT 0,
    last_error  TEXT,
    PRIMARY KEY (endpoint, pos)
);
CREATE INDEX integration_deliveries_heads ON integration_deliveries (endpoint, room, pos);

-- Every membership change, whatever code path makes it, queues its event in its own
-- transaction (only while an endpoint is registered).
-- `SET search_path FROM CURRENT`: the schema of the migration (history), whatever the session's
-- search_path (an operator's psql, a test, another tool writing memberships).
CREATE FUNCTION integration_membership() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    r     memberships%ROWTYPE;
    v_kind TEXT;
    v_id  BIGINT;
    at_ms BIGINT := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    after BIGINT := NULLIF(current_setting('chat.integration_after_seq', true), '')::bigint;
    epoch INT    := NULLIF(current_setting('chat.integration_epoch_id', true), '')::int;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM integration_endpoints) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN r := NEW; ELSE r := OLD; END IF;
    PERFORM pg_advisory_xact_lock(hashtext('chat-history:' || r.room));
    SELECT rooms.kind INTO v_kind FROM rooms WHERE rooms.id = r.room;
    v_id := nextval('integration_outbox_id_seq');
    INSERT INTO integration_outbox (id, room, epoch_id, after_seq, type, event_id, ts, data, created_at)
    VALUES (
        v_id,
        r.room,
        CASE WHEN after IS NULL THEN NULL ELSE epoch END,
        after,
        CASE WHEN TG_OP = 'INSERT' THEN 'member.joined' ELSE 'member.left' END,
        'evt_m' || v_id,
        CASE WHEN TG_OP = 'INSERT' THEN r.joined_at ELSE at_ms END,
        json_build_object('user', r.user_id, 'room_kind', v_kind)::text,
        at_ms
    );
    RETURN NULL;
END;
$$;

CREATE TRIGGER integration_membership
    AFTER INSERT OR DELETE ON memberships
    FOR EACH ROW EXECUTE FUNCTION integration_membership();
