-- The fence of a commit in one statement (src/store/single.rs): a small
-- batch of one route's upserts goes as one call of a function that runs
-- this fence, then the upsert, outside any explicit transaction. The call
-- is its own transaction, committed before its answer comes back, so such
-- a commit costs one round trip instead of four (BEGIN, fence, upsert,
-- COMMIT). The function is a temporary one per route and connection
-- (`pg_temp.sink_fence_and_upsert_…`), so PL/pgSQL keeps the upsert's plan
-- as a prepared statement would.
--
-- Unlike `sink_fence`, which reports, this raises: the fence is not the
-- transaction's last say, so a lost partition or a replaced mapping must
-- roll the whole call back. SQLSTATE KP001 carries the lost partitions as a
-- JSON array of [topic, partition] in DETAIL, KP002 the replaced tables'
-- names.
CREATE OR REPLACE FUNCTION sink_fence_or_raise(
    p_group text,
    p_topics text[],
    p_partitions int4[],
    p_expected int8[],
    p_new_next int8[],
    p_last_ms int8[],
    p_tables text[],
    p_fingerprints text[])
RETURNS void
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    f record;
    lost jsonb;
BEGIN
    SELECT * INTO f FROM sink_fence(p_group, p_topics, p_partitions, p_expected,
                                    p_new_next, p_last_ms, p_tables, p_fingerprints);
    IF cardinality(f.moved_topics) < cardinality(p_topics) THEN
        SELECT coalesce(jsonb_agg(jsonb_build_array(u.topic, u.partition)), '[]') INTO lost
        FROM unnest(p_topics, p_partitions) AS u(topic, partition)
        WHERE NOT EXISTS (
            SELECT 1 FROM unnest(f.moved_topics, f.moved_partitions) AS m(topic, partition)
            WHERE m.topic = u.topic AND m.partition = u.partition);
        RAISE EXCEPTION 'kafka-pg-sink: partitions fenced' USING ERRCODE = 'KP001', DETAIL = lost::text;
    END IF;
    IF cardinality(f.replaced_tables) > 0 THEN
        RAISE EXCEPTION 'kafka-pg-sink: route mapping replaced by promote'
            USING ERRCODE = 'KP002', DETAIL = to_jsonb(f.replaced_tables)::text;
    END IF;
END
$fn$;
