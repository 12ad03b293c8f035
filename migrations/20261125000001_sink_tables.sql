-- Bookkeeping tables of kafka-pg-sink. Data tables are created per route by
-- `kafka-pg-sink setup` (their names come from configuration).

-- The source of truth for consumer positions: next_offset is the first offset
-- NOT yet applied. Updated in the same transaction as the rows it covers, by
-- compare-and-set (the fence).
CREATE TABLE IF NOT EXISTS sink_offsets (
    consumer_group text    NOT NULL,
    topic          text    NOT NULL,
    partition      integer NOT NULL CHECK (partition >= 0),
    next_offset    bigint  NOT NULL CHECK (next_offset >= 0),
    -- operational metadata only; never copied into data tables
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Poison messages, written in the same transaction as the offsets that skip
-- them. Unique per source position, so a replay does not duplicate them.
CREATE TABLE IF NOT EXISTS sink_dead_letters (
    id             bigserial PRIMARY KEY,
    consumer_group text    NOT NULL,
    topic          text    NOT NULL,
    partition      integer NOT NULL,
    kafka_offset   bigint  NOT NULL,
    message_key    bytea,
    payload        bytea,
    reason         text    NOT NULL,
    error          text    NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (consumer_group, topic, partition, kafka_offset)
);
