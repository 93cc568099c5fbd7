-- The chat schema, designed for the contract (docs/schema.md explains each choice).

CREATE TABLE conversations (
    id              uuid PRIMARY KEY,
    title           text,
    is_group        boolean NOT NULL,
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- direct conversations: the two user ids, sorted, joined by a unit separator; unique per pair
    direct_key      text UNIQUE,
    -- seq of the newest message; messages are numbered 1..last_seq with no gaps
    last_seq        bigint NOT NULL DEFAULT 0,
    -- the latest message, kept here so the conversation list is one indexed query
    last_message_id uuid,
    last_sent_at    timestamptz,
    last_sender_id  text,
    last_content    text,
    CHECK ((is_group AND direct_key IS NULL) OR (NOT is_group AND direct_key IS NOT NULL))
);

CREATE TABLE participants (
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 50),
    -- read state: one pointer per participant, the last seq this user has read
    last_read_seq   bigint NOT NULL DEFAULT 0,
    joined_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, user_id)
);
-- a user's conversations
CREATE INDEX participants_user_idx ON participants (user_id, conversation_id);

CREATE TABLE messages (
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             bigint NOT NULL CHECK (seq > 0),
    id              uuid NOT NULL UNIQUE,
    sender_id       text NOT NULL,
    temp_message_id text NOT NULL,
    content         text NOT NULL CHECK (length(content) BETWEEN 1 AND 1000),
    sent_at         timestamptz NOT NULL,
    -- keyset paging by (conversation_id, seq) in either direction
    PRIMARY KEY (conversation_id, seq),
    -- the sender's idempotency key
    UNIQUE (sender_id, temp_message_id)
);
