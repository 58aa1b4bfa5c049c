-- CONTRACT §2 (v1.1): a reply, or a message in a thread, notifies the author it answers.
ALTER TABLE notifications DROP CONSTRAINT IF EXISTS notifications_kind_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_kind_check
    CHECK (kind IN ('mention', 'dm', 'invite', 'reply'));
