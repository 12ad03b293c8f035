//! Identifiers from configuration cannot inject SQL; Postgres over TLS works;
//! passwords never reach logs or `check-config` output.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_table_name_is_just_a_name() {
    let db = TestDb::new().await;
    let topic = TestTopic::with_events(20).await;
    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    // TOML literal string: the identifier is  odd "name"; DROP TABLE sink_offsets; --
    cfg.rewrite(
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

/// A CA and a server certificate for `localhost`/`127.0.0.1`, made here.
struct TestPki {
    dir: std::path::PathBuf,
    ca: std::path::PathBuf,
}

fn make_pki(dir: &std::path::Path, server_owner: Option<u32>) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kafka-pg-sink test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    let key_path = dir.join("server.key");
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    if let Some(uid) = server_owner {
        // Postgres only loads a key file owned by its own user (or root).
        for f in ["server.crt", "server.key"] {
            std::os::unix::fs::chown(dir.join(f), Some(uid), None).unwrap();
        }
    }
    TestPki {
        dir: dir.to_path_buf(),
        ca,
    }
}

/// Points the (local, superuser-reachable) test server at a certificate
/// made for this test and turns TLS on; puts everything back on drop.
struct ServerTls;

impl ServerTls {
    async fn install(db: &TestDb, pki: &TestPki) -> ServerTls {
        for (k, v) in [
            ("ssl_cert_file", pki.dir.join("server.crt")),
            ("ssl_key_file", pki.dir.join("server.key")),
        ] {
            sqlx::query(&format!("ALTER SYSTEM SET {k} = '{}'", v.display()))
                .execute(&db.pool)
                .await
                .expect("the TLS test needs a superuser on a local server");
        }
        db.exec("ALTER SYSTEM SET ssl = on").await;
        db.exec("SELECT pg_reload_conf()").await;
        ServerTls
    }
}

impl Drop for ServerTls {
    fn drop(&mut self) {
        block_on_in_drop(async {
            let pool = sqlx::PgPool::connect(&database_url()).await.unwrap();
            for k in ["ssl_cert_file", "ssl_key_file", "ssl"] {
                let _ = sqlx::query(&format!("ALTER SYSTEM RESET {k}"))
                    .execute(&pool)
                    .await;
            }
            let _ = sqlx::query("SELECT pg_reload_conf()").execute(&pool).await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_verify_full_and_passwords_stay_secret() {
    let db = TestDb::new().await;
    let data_dir: String = sqlx::query_scalar("SHOW data_directory")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let owner = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&data_dir)
            .expect("the TLS test needs the Postgres server on this machine")
            .uid()
    };
    // A fixed place (not a temp dir that vanishes): the server keeps reading
    // these files until the guard resets its configuration.
    let base = std::env::temp_dir().join("kafka-pg-sink-tls-test");
    let pki = make_pki(&base.join("server"), Some(owner));
    let other = make_pki(&base.join("other"), None);
    let _tls = ServerTls::install(&db, &pki).await;
    // The reload is asynchronous: wait until the server presents our cert.
    let verify_url = |ca: &std::path::Path, pw: &str| {
        let mut url = url::Url::parse(&db.url).unwrap();
        url.set_password(Some(pw)).unwrap();
        url.set_query(Some(&format!(
            "sslmode=verify-full&sslrootcert={}",
            ca.display()
        )));
        url.to_string()
    };
    let good = verify_url(&pki.ca, "s3cr3t-pw");
    wait_until(T, "the server to present the test certificate", || {
        let good = good.clone();
        async move { sqlx::PgPool::connect(&good).await.is_ok() }
    })
    .await;

    let topic = TestTopic::with_events(30).await;
    let cfg = SinkConfig::new(&db, &topic.name, "", "");
    // A password in the URL (the test server trusts loopback, so any works)
    // and full verification against the CA made above.
    cfg.rewrite(
        &format!(r#"url = "{}""#, db.url),
        &format!(r#"url = "{good}""#),
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

    let (ok, shown) = cfg.cli(&["check-config"], &[]);
    assert!(ok, "{shown}");
    assert!(
        shown.contains("sslmode=verify-full") && !shown.contains("s3cr3t-pw"),
        "{shown}"
    );
    assert!(!sink.logs().contains("s3cr3t-pw"), "password in logs");
    drop(sink);

    // Verification is real: a CA that did not sign the server's certificate
    // is refused, and the error says so without showing the password.
    cfg.rewrite(&good, &verify_url(&other.ca, "s3cr3t-pw"));
    let (ok, err) = cfg.cli(&["setup"], &[]);
    assert!(!ok, "an unknown CA must be refused");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!err.contains("s3cr3t-pw"), "{err}");
}

/// The broker's SASL_PLAINTEXT listener with SCRAM-SHA-256 (scripts/kafka.sh).
fn sasl_brokers() -> String {
    std::env::var("KAFKA_SASL_BROKERS").unwrap_or_else(|_| "127.0.0.1:9094".into())
}

fn sasl_config(db: &TestDb, topic: &TestTopic) -> SinkConfig {
    let cfg = SinkConfig::new(
        db,
        &topic.name,
        "",
        "[kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\
         \"sasl.mechanism\" = \"SCRAM-SHA-256\"\n\"sasl.username\" = \"kpgs\"\n",
    );
    cfg.rewrite(
        &format!(r#"brokers = "{}""#, brokers()),
        &format!(r#"brokers = "{}""#, sasl_brokers()),
    );
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sasl_scram_authenticates_and_the_password_stays_secret() {
    let db = TestDb::new().await;
    let topic = TestTopic::with_events(20).await;

    // The password comes from the environment, as a deployment would pass a secret.
    let env_key = "KAFKA_PG_SINK_KAFKA_PROPERTY__SASL_PASSWORD";
    let cfg = sasl_config(&db, &topic);
    let sink = SinkProcess::start_with(&cfg, cfg.http_port, &[(env_key, "kpgs-secret")]);
    wait_caught_up(&db, &cfg.group, &topic, T).await;
    assert_eq!(db.count("SELECT count(*) FROM events").await, 20);
    assert!(!sink.logs().contains("kpgs-secret"), "password in logs");
    let (ok, shown) = cfg.cli(&["check-config"], &[(env_key, "kpgs-secret")]);
    assert!(ok, "{shown}");
    assert!(
        shown.contains("SCRAM-SHA-256") && !shown.contains("kpgs-secret"),
        "{shown}"
    );
    drop(sink);

    // Authentication is real: a wrong password is refused by the broker and
    // nothing is consumed.
    let db2 = TestDb::new().await;
    let cfg2 = sasl_config(&db2, &topic);
    let sink = SinkProcess::start_with(&cfg2, cfg2.http_port, &[(env_key, "wrong-pw")]);
    wait_until(T, "the broker to refuse the wrong password", || {
        let logs = sink.logs().to_lowercase();
        std::future::ready(logs.contains("authentication failed"))
    })
    .await;
    assert!(db2
        .stored_offsets(&cfg2.group, &topic.name)
        .await
        .is_empty());
    assert!(!sink.logs().contains("wrong-pw"), "password in logs");
}
