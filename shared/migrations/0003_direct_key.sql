-- direct_key used to join the two sorted user ids with U+001F, so two different pairs could
-- share a key when an id contains that character ("a\x1fb" + "c" and "a" + "b\x1fc"). The key is
-- now the first id's length, a colon, then both ids: the length says where the first one ends.
UPDATE conversations c
SET direct_key = length(pair.a)::text || ':' || pair.a || pair.b
FROM (
    SELECT p.conversation_id, min(p.user_id COLLATE "C") AS a, max(p.user_id COLLATE "C") AS b
    FROM participants p
    JOIN conversations d ON d.id = p.conversation_id AND NOT d.is_group
    GROUP BY p.conversation_id
) AS pair
WHERE c.id = pair.conversation_id;
