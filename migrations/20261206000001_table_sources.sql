-- Tables that routes with placeholders in `table` (or `create_table` on
-- change events) create while they run: which topic feeds each one, and the
-- columns its change events have had. A table is fed by one topic: a second
-- topic that would land in it is refused, never mixed in. The columns are
-- the union over every schema version seen (a column dropped at the source
-- stays, NULL from then on), shared by replicas and kept across restarts.
CREATE TABLE IF NOT EXISTS sink_table_sources (
    table_name     text PRIMARY KEY,   -- quoted, as the sink renders it: "replica"."orders"
    topic          text NOT NULL,
    consumer_group text NOT NULL,      -- the group that created or first claimed it
    columns        jsonb NOT NULL DEFAULT '[]',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
