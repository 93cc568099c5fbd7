-- Edits, deletes, reactions and search (docs/protocol.md section 6; docs/schema.md says why each
-- piece is shaped so).
--
-- Every conversation counts its changes: each stored message and each edit, delete or reaction
-- change takes the next `change`, gapless like `seq`. A message keeps the `change` of its latest
-- change, so "what changed after N" is one range of (conversation_id, change). Existing rows
-- start where their seq is: nothing has changed them yet. (The UPDATE rewrites every message once:
-- about 8 s a million rows on the benchmark machine, with writes waiting meanwhile.)
ALTER TABLE conversations ADD COLUMN last_change bigint NOT NULL DEFAULT 0;
UPDATE conversations SET last_change = last_seq;

ALTER TABLE messages
    ADD COLUMN change bigint NOT NULL DEFAULT 0,
    ADD COLUMN edited_at timestamptz,
    ADD COLUMN deleted boolean NOT NULL DEFAULT false,
    -- [{"emoji": "👍", "userIds": ["alice", "bob"]}, ...] in the order each emoji was first added
    ADD COLUMN reactions jsonb NOT NULL DEFAULT '[]';
UPDATE messages SET change = seq;

-- A deleted message is a tombstone: its text is gone, its seq stays.
ALTER TABLE messages DROP CONSTRAINT messages_content_check;
ALTER TABLE messages ADD CONSTRAINT messages_content_check
    CHECK ((deleted AND content = '') OR (NOT deleted AND length(content) BETWEEN 1 AND 1000));

CREATE INDEX messages_change_idx ON messages (conversation_id, change);

-- Search: a word of a query matches inside longer words, in any script. pg_trgm indexes
-- trigrams, so it cannot narrow down a term of one or two characters, and Korean words with
-- their particles, or Chinese and Japanese words, are often that short. search_text is the
-- content lowered, with every character outside ASCII written three times: a term's occurrences
-- are then the occurrences of its own transform, and a non-ASCII character or pair of characters
-- yields trigrams of its own ("東京" -> "東東東京京京": 東東東, 東東京, 東京京, 京京京). ASCII stays as
-- it is, so Latin words keep their ordinary trigrams. It is generated from the content, so an edit
-- replaces it and a delete empties it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE FUNCTION chat_search_text(t text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT regexp_replace(lower(t), '([^\x01-\x7f])', '\1\1\1', 'g') $$;

ALTER TABLE messages ADD COLUMN search_text text GENERATED ALWAYS AS (chat_search_text(content)) STORED;
CREATE INDEX messages_search_idx ON messages USING gin (search_text gin_trgm_ops);
-- Newest first across the caller's conversations: a common term finds its page in the newest
-- messages, walking this index (the messages of one batch share a time: by conversation, then seq).
CREATE INDEX messages_sent_idx ON messages (sent_at DESC, conversation_id DESC, seq DESC);
