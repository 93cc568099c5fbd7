-- The conversation list, newest first, straight from one index: each participant row carries its
-- conversation's latest message time, so a user's page is a short index range scan instead of a
-- probe and a sort over every conversation the user is in.
ALTER TABLE participants ADD COLUMN last_sent_at timestamptz;

UPDATE participants p SET last_sent_at = c.last_sent_at
FROM conversations c WHERE c.id = p.conversation_id AND c.last_sent_at IS NOT NULL;

CREATE INDEX participants_user_recent_idx
    ON participants (user_id, last_sent_at DESC, conversation_id DESC)
    WHERE last_sent_at IS NOT NULL;
