-- Source positions computed per connector can pass 2^63 (a MySQL binlog
-- position packs file number, offset and row: src/event/position.rs).
-- Markers serve every route, so they keep any position.
ALTER TABLE sink_delete_markers ALTER COLUMN position TYPE numeric;
ALTER TABLE sink_truncate_markers ALTER COLUMN position TYPE numeric;
