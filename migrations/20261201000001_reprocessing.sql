-- Reprocessing (docs/reprocessing.md): rebuilds into shadow tables and the
-- route mappings that promotes made current.

-- The mapping (route fingerprint) a consumer group must run to write a
-- table. Written by `rebuild` (for its own group and shadow table) and by
-- `promote` (for the live group and table); checked by every commit, inside
-- its transaction, right after the fence. A group/table without a row may be
-- written with any mapping (as before any promote). `fingerprint = 'retired'`
-- stops a rebuild that was promoted or aborted.
CREATE TABLE IF NOT EXISTS sink_route_mappings (
    consumer_group text NOT NULL,
    table_name     text NOT NULL,   -- quoted, as the sink renders it: "public"."orders"
    fingerprint    text NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, table_name)
);

-- One row per rebuild (its own consumer group `<group>.rebuild.<shadow>`).
CREATE TABLE IF NOT EXISTS sink_rebuilds (
    rebuild_group  text PRIMARY KEY,
    consumer_group text NOT NULL,   -- the live group the rebuild is for
    live_table     text NOT NULL,   -- quoted
    shadow_table   text NOT NULL,   -- quoted, same schema as the live table
    fingerprint    text NOT NULL,   -- the mapping the shadow is built with
    state          text NOT NULL CHECK (state IN ('running', 'promoted', 'aborted')),
    retired_table  text,            -- promote: the old live table's new name
    positions      jsonb,           -- promote: the positions handed to the live group
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
