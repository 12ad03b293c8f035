//! Least privilege: `setup` runs as the tables' owner; `run`, `replay` and
//! `verify` run as a role with only data rights on them. A role missing a
//! right stops at once naming the GRANT; a database whose sink tables a
//! newer binary migrated, or that needs a migration the role may not apply,
//! is refused with the versions and what to run.

mod common;

use std::time::Duration;

use common::role::{run_expecting_exit, Role};
use common::*;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_replay_and_verify_need_only_data_rights() {
    let db = TestDb::new().await;
    let topic = TestTopic::new(2).await;
    let owner = SinkConfig::new(&db, &topic.name, "version = \"/v\"", "");
    let limited = SinkConfig::new(&db, &topic.name, "version = \"/v\"", "");
    let role = Role::after_setup(&db, &owner, &limited).await;

    let mut log = Vec::new();
    send_versioned(&topic, &mut log, 300, 70);
    let mut sink = SinkProcess::start(&limited);
    wait_caught_up(&db, &limited.group, &topic, T).await;
    assert_table_is_model(&db, log.iter().map(|(k, p)| (k.as_str(), p.as_str())), 0).await;
    sink.kill9();
    let (ok, out) = limited.cli(&["replay", "--to-earliest"], &[]);
    assert!(ok, "replay as the limited role: {out}");
    let _sink = SinkProcess::start(&limited);
    wait_caught_up(&db, &limited.group, &topic, T).await;
    let (ok, out) = limited.cli(&["verify"], &[]);
    assert!(ok, "verify as the limited role: {out}");

    // A right taken away: the next start stops at once, naming the GRANT.
    db.exec(&format!("REVOKE UPDATE ON events FROM {}", role.name))
        .await;
    let out = run_expecting_exit(&limited);
    assert!(
        out.contains(r#"UPDATE on "events""#)
            && out.contains(&format!(r#"GRANT UPDATE ON "events" TO {}"#, role.name)),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_versions_the_binary_cannot_use_are_refused_with_what_to_run() {
    let db = TestDb::new().await;
    let topic = TestTopic::new(1).await;
    let owner = SinkConfig::new(&db, &topic.name, "", "");
    let limited = SinkConfig::new(&db, &topic.name, "", "");
    let _role = Role::after_setup(&db, &owner, &limited).await;

    // A migration pending that the role may not apply (the tables' DDL
    // belongs to the owner).
    let newest: i64 = db.count("SELECT max(version) FROM _sqlx_migrations").await;
    db.exec(&format!(
        "DELETE FROM _sqlx_migrations WHERE version = {newest}"
    ))
    .await;
    let out = run_expecting_exit(&limited);
    assert!(
        out.contains(&format!("need migration(s) [{newest}]"))
            && out.contains("run `kafka-pg-sink setup` once as the tables' owner"),
        "{out}"
    );
    let (ok, out) = owner.cli(&["setup"], &[]);
    assert!(ok, "setup applies it again: {out}");

    // A newer binary migrated the database: this one does not know what
    // the schema means.
    db.exec(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99991231000001, 'from the future', true, '\\x00', 0)",
    )
    .await;
    let out = run_expecting_exit(&owner);
    assert!(
        out.contains("schema version 99991231000001, newer than this binary knows"),
        "{out}"
    );
}
