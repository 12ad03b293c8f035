//! Identifiers from configuration cannot inject SQL; Postgres over TLS works;
//! passwords never reach logs or `check-config` output.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(90);

fn rewrite_config(cfg: &SinkConfig, from: &str, to: &str) {
    let text = std::fs::read_to_string(&cfg.path).unwrap();
    assert!(text.contains(from), "{from} not in config");
    std::fs::write(&cfg.path, text.replace(from, to)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_table_name_is_just_a_name() {
    let db = TestDb::new().await;
    let topic = TestTopic::new(1).await;
    for i in 0..20u64 {
        let id = format!("k{i}");
        topic.send(0, Some(&id), Some(event(&id, i).as_bytes()));
    }
    topic.flush();
    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    // TOML literal string: the identifier is  odd "name"; DROP TABLE sink_offsets; --
    rewrite_config(
        &cfg,
        r#"table = "events""#,
        r#"table = '"odd ""name""; DROP TABLE sink_offsets; --"'"#,
    );
    let _sink = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    let hostile = r#""odd ""name""; DROP TABLE sink_offsets; --""#;
    assert_eq!(
        db.count(&format!("SELECT count(*) FROM {hostile}")).await,
        20
    );
    assert_eq!(
        db.count("SELECT count(*) FROM sink_offsets").await,
        1,
        "sink_offsets survived"
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'odd%'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_and_passwords_stay_secret() {
    let db = TestDb::new().await;
    let ssl_on: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    if ssl_on != "on" {
        eprintln!("skipped: the server at DATABASE_URL has ssl = off");
        return;
    }
    let topic = TestTopic::new(1).await;
    for i in 0..30u64 {
        let id = format!("k{i}");
        topic.send(0, Some(&id), Some(event(&id, i).as_bytes()));
    }
    topic.flush();
    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    // A password in the URL (the test server trusts loopback, so any works)
    // and TLS required.
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_password(Some("s3cr3t-pw")).unwrap();
    url.set_query(Some("sslmode=require"));
    rewrite_config(
        &cfg,
        &format!(r#"url = "{}""#, db.url),
        &format!(r#"url = "{url}""#),
    );

    let sink = SinkProcess::start(&cfg);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    assert_eq!(db.count("SELECT count(*) FROM events").await, 30);
    let all_tls: Option<bool> = sqlx::query_scalar(
        "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'kafka-pg-sink' AND a.datname = current_database()",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(all_tls, Some(true), "sink connections are not all TLS");

    let out = std::process::Command::new(sink_binary())
        .arg("--config")
        .arg(&cfg.path)
        .arg("check-config")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        shown.contains("sslmode=require") && !shown.contains("s3cr3t-pw"),
        "{shown}"
    );
    assert!(!sink.logs().contains("s3cr3t-pw"), "password in logs");
}
