-- Change-data-capture routes (envelope = "debezium") remember deletes and
-- truncates with their source position, so a change re-sent later with an
-- older position (a connector restart, a replay) cannot bring a row back.
-- `target` is the route's table as quoted SQL; `key` the row key as the sink
-- folds it. Delete markers are purged after sink.delete_marker_retention.
CREATE TABLE IF NOT EXISTS sink_delete_markers (
    target     text   NOT NULL,
    key        text   NOT NULL,
    position   bigint NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, key)
);

CREATE TABLE IF NOT EXISTS sink_truncate_markers (
    target       text PRIMARY KEY,
    position     bigint NOT NULL,
    truncated_at timestamptz NOT NULL DEFAULT now()
);
