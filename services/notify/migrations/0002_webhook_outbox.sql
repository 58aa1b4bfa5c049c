-- Notifications waiting to be POSTed to the push gateway, written in the transaction that made
-- them, so that a restart loses none. A row is claimed by pushing next_at past the attempt's
-- deadline (a lease); it is deleted once delivered, skipped (user online) or given up.
CREATE TABLE webhook_outbox (
    id         TEXT   PRIMARY KEY,
    user_id    TEXT   NOT NULL,
    body       TEXT   NOT NULL,
    attempts   INT    NOT NULL DEFAULT 0,
    next_at    BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_at);
