-- The Kafka timestamp of the last event a partition's position covers,
-- written by the commit that moves the position (the same UPDATE): how old
-- the data in the tables is, for `offsets show` and any SQL probe. NULL
-- until the first commit after this migration, and after a replay or a
-- reset moved the position.
ALTER TABLE sink_offsets ADD COLUMN IF NOT EXISTS last_event_at timestamptz;
