-- Search (issue 14): the room of a message is a lexeme of its indexed text, so that the GIN index
-- alone answers "these words, in one of these rooms" (`'deploy' & (' general' | ' ops')`): its
-- fast scan intersects the posting lists of the words with those of the user's rooms, and no
-- bitmap of every message of those rooms is built (that bitmap was most of a search's cost: 27 of
-- 35 ms for a rare word over 1,000,000 messages, the user in 50 rooms).
--
-- The room lexeme is a space followed by the room id: the `simple` parser never makes a word that
-- holds a space, so no body and no query term can produce it (queries are normalized by
-- `phraseto_tsquery`); it has no position, so phrases never match across it. Only rows that can
-- be found have a vector: a message (not an edit, a delete or a reaction) with a body; a deleted
-- message's body is '' (0003), so a delete removes the room lexeme with the words.
--
-- Rewrites `messages` (the generated column is recomputed for every row) and rebuilds the index.
DROP INDEX IF EXISTS messages_search;
ALTER TABLE messages DROP COLUMN IF EXISTS search;
ALTER TABLE messages ADD COLUMN search tsvector GENERATED ALWAYS AS (
    CASE WHEN kind = 'message' AND body <> '' THEN
        to_tsvector('simple'::regconfig, left(body, 100000))
            || array_to_tsvector(ARRAY[' ' || room])
    ELSE ''::tsvector END) STORED;
CREATE INDEX messages_search ON messages USING GIN (search);
