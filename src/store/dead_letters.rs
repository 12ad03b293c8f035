//! Dead letters: messages that cannot be applied, stored with their reason
//! in the same transaction as the offsets that move past them.

use sqlx::PgConnection;

use crate::kafka::message::DeadLetter;

pub(super) async fn insert_dead_letters(
    conn: &mut PgConnection,
    group: &str,
    dead: &[&DeadLetter],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sink_dead_letters \
           (consumer_group, topic, partition, kafka_offset, message_key, payload, reason, error) \
         SELECT $1, * FROM UNNEST($2::text[], $3::int4[], $4::int8[], $5::bytea[], $6::bytea[], $7::text[], $8::text[]) \
         ON CONFLICT (consumer_group, topic, partition, kafka_offset) DO NOTHING",
    )
    .bind(group)
    .bind(dead.iter().map(|d| d.tp.topic.as_ref()).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.tp.partition).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.offset.0).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.key.clone()).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.payload.clone()).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.reason.as_str()).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.error.replace('\0', "")).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}
