-- The fence and the mapping check of a commit in one round trip
-- (src/store/fence.rs). Each statement of a VOLATILE function takes a new
-- snapshot under READ COMMITTED, so the mapping check still sees a promote
-- that committed while the fence waited for its row locks — the reason the
-- check was a statement of its own (src/store/mappings.rs).
--
-- Returns the partitions whose position moved (each partition's position
-- moves only from `expected`; a NULL `expected` means the partition has no
-- row yet) and, when every partition moved, the tables whose stored mapping
-- for the group is not the fingerprint given.
CREATE OR REPLACE FUNCTION sink_fence(
    p_group text,
    p_topics text[],
    p_partitions int4[],
    p_expected int8[],
    p_new_next int8[],
    p_last_ms int8[],
    p_tables text[],
    p_fingerprints text[],
    OUT moved_topics text[],
    OUT moved_partitions int4[],
    OUT replaced_tables text[])
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    inserted_topics text[];
    inserted_partitions int4[];
BEGIN
    -- The caller sorts the partitions: concurrent committers lock offset
    -- rows in the same order.
    WITH moved AS (
        UPDATE sink_offsets o SET next_offset = u.new_next, updated_at = now(),
            last_event_at = coalesce(to_timestamp(u.last_ms / 1000.0), o.last_event_at)
        FROM unnest(p_topics, p_partitions, p_expected, p_new_next, p_last_ms)
             AS u(topic, partition, expected, new_next, last_ms)
        WHERE u.expected IS NOT NULL AND o.consumer_group = p_group
          AND o.topic = u.topic AND o.partition = u.partition
          AND o.next_offset = u.expected
        RETURNING o.topic, o.partition)
    SELECT coalesce(array_agg(topic), '{}'), coalesce(array_agg(partition), '{}')
      INTO moved_topics, moved_partitions FROM moved;

    IF EXISTS (SELECT 1 FROM unnest(p_expected) e WHERE e IS NULL) THEN
        WITH inserted AS (
            INSERT INTO sink_offsets (consumer_group, topic, partition, next_offset, last_event_at)
            SELECT p_group, u.topic, u.partition, u.new_next, to_timestamp(u.last_ms / 1000.0)
            FROM unnest(p_topics, p_partitions, p_expected, p_new_next, p_last_ms)
                 AS u(topic, partition, expected, new_next, last_ms)
            WHERE u.expected IS NULL
            ON CONFLICT (consumer_group, topic, partition) DO NOTHING
            RETURNING topic, partition)
        SELECT coalesce(array_agg(topic), '{}'), coalesce(array_agg(partition), '{}')
          INTO inserted_topics, inserted_partitions FROM inserted;
        moved_topics := moved_topics || inserted_topics;
        moved_partitions := moved_partitions || inserted_partitions;
    END IF;

    replaced_tables := '{}';
    IF cardinality(moved_topics) = cardinality(p_topics) AND cardinality(p_tables) > 0 THEN
        -- A new statement, a new snapshot: a promote that held the rows the
        -- fence just locked has committed, and its mappings are visible.
        SELECT coalesce(array_agg(m.table_name), '{}') INTO replaced_tables
        FROM sink_route_mappings m
        JOIN unnest(p_tables, p_fingerprints) AS u(table_name, fingerprint)
          ON u.table_name = m.table_name
        WHERE m.consumer_group = p_group AND m.fingerprint <> u.fingerprint;
    END IF;
END
$fn$;
