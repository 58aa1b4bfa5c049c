-- CONTRACT v1.1 §2 Lifecycle: every kind of room event is a row of `messages` (one chain of
-- seqs per room); a message row also holds its current state, kept by the archive writer in the
-- transaction that archives each change.
--   kind        message, edit, delete or reaction
--   body        a message's current body ("" once deleted); "" for every other kind, so that a
--               search of `body` finds current message text only
--   sent_body   a message's body as sent, an edit's new body; "" once the message is deleted
--               (nothing of a deleted message's text is kept); NULL on rows archived before 0003
--               (their body is as sent)
--   target      the message an edit, delete or reaction changes
--   emoji, reaction_on   a reaction
--   reply_to, thread     a message's quoted message and thread root
--   deleted, edited_ts, version   a message's current state
ALTER TABLE messages ADD COLUMN IF NOT EXISTS kind TEXT NOT NULL DEFAULT 'message';
ALTER TABLE messages ADD COLUMN IF NOT EXISTS sent_body TEXT;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS target BIGINT;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS emoji TEXT;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS reaction_on BOOLEAN;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS reply_to BIGINT;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS thread BIGINT;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS deleted boolean NOT NULL DEFAULT false;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS edited_ts BIGINT;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS version BIGINT;
-- The changes of a message, and the messages of a thread.
CREATE INDEX IF NOT EXISTS messages_by_target ON messages (epoch_id, target, seq) WHERE target IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_by_thread ON messages (epoch_id, thread, seq) WHERE thread IS NOT NULL;
