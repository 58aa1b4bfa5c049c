-- Full-text search over the archive (CONTRACT §2 Search, §3 chat.api.search).
--
-- The index is a stored generated column, so PostgreSQL computes it inside the row's own write:
-- the insert of the archive writer, an edit that rewrites `body` in place, a delete that sets it
-- to ''. A search never sees a state the archive does not have, and no code path can forget to
-- re-index.
--
-- `simple`: lower-cased whole words, no stemming and no stop words. The contract asks for
-- case-insensitive whole words; `english` would stem (`deploying` would find `deploy`) and drop
-- stop words (a search for `the` or `who` would have no term), and would mangle other languages.
--
-- Only the first 100,000 characters are indexed: a tsvector is at most 1 MB, and a bot can publish
-- a body of almost 1 MB (NATS max_payload) through JetStream, whose tsvector would not fit; the
-- insert would then fail on every retry and block the archive. The edge's bodies (CHAT_MAX_BODY,
-- default 4,000) are always indexed whole.
--
-- Lifecycle (migration 0003) adds `deleted` too; whichever runs first adds it.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS deleted boolean NOT NULL DEFAULT false;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS search tsvector
    GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, left(body, 100000))) STORED;
CREATE INDEX IF NOT EXISTS messages_search ON messages USING GIN (search);
