-- Tables that routes with placeholders in `table` (or `create_table` on
-- change events) create while they run: which topic feeds each one, and the
-- columns its change events have had. A table is fed by one topic: a second
-- topic that would land in it is refused, never mixed in. Shared by
-- replicas and kept across restarts.
CREATE TABLE IF NOT EXISTS sink_table_sources (
    table_name     text PRIMARY KEY,   -- quoted, as the sink renders it: "replica"."orders"
    topic          text NOT NULL,
    consumer_group text NOT NULL,      -- the group that created or first claimed it
    -- Every column the events have had, in the order they appeared (a
    -- column dropped at the source stays).
    columns        jsonb NOT NULL DEFAULT '[]',
    -- The column sets of the schema versions seen, in the order first seen:
    -- an event of a version writes its own columns, and NULL into the
    -- columns an earlier version had and it lacks (dropped at the source);
    -- columns added later are left as they are (an older event says nothing
    -- about them).
    versions       jsonb NOT NULL DEFAULT '[]',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
