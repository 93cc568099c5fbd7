-- participants_user_idx (user_id, conversation_id) has had no reader since migration 0002: the
-- conversation list reads participants_user_recent_idx, and every other lookup names the
-- conversation (the primary key). It still cost an index entry on every participant row the
-- writer touches (each message rewrites its conversation's participant rows: their copy of
-- last_sent_at is indexed, so those updates are never HOT).
DROP INDEX IF EXISTS participants_user_idx;
