-- Every time a stored position was moved because it fell outside the
-- partition's log (kafka.on_offset_out_of_range = earliest | latest): what
-- was stored, where it went, the log's range at that moment and how many
-- records were never read. Written in the same transaction as the move.
CREATE TABLE IF NOT EXISTS sink_offset_resets (
    id             bigserial PRIMARY KEY,
    consumer_group text    NOT NULL,
    topic          text    NOT NULL,
    partition      integer NOT NULL,
    from_offset    bigint  NOT NULL,
    to_offset      bigint  NOT NULL,
    log_start      bigint  NOT NULL,
    log_end        bigint  NOT NULL,
    policy         text    NOT NULL,
    lost           bigint  NOT NULL CHECK (lost >= 0),
    reset_at       timestamptz NOT NULL DEFAULT now()
);
