//! Static checks of what ships: the example and container configs load, bad
//! configs exit 2 naming the key, and secrets never reach the output.

mod common;

use std::process::Command;

fn check_config(path: &str, env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(common::sink_binary());
    cmd.args(["--config", path, "check-config"])
        .env_remove("DATABASE_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn shipped_configs_are_valid_and_secrets_are_masked() {
    let root = env!("CARGO_MANIFEST_DIR");
    let (code, out) = check_config(&format!("{root}/config/local.toml"), &[]);
    assert_eq!(code, 0, "{out}");
    // The container config with the environment docker-compose.yml applies.
    let (code, out) = check_config(
        &format!("{root}/config/docker.toml"),
        &[
            (
                "KAFKA_PG_SINK__POSTGRES__URL",
                "postgres://sink:topsecret@postgres:5432/sink",
            ),
            ("KAFKA_PG_SINK_KAFKA_PROPERTY__SASL_PASSWORD", "kafkasecret"),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains("topsecret") && !out.contains("kafkasecret"),
        "{out}"
    );
    assert!(
        out.contains("sasl.password"),
        "env property not applied: {out}"
    );
    let compose = std::fs::read_to_string(format!("{root}/docker-compose.yml")).unwrap();
    assert!(compose.contains("./config/docker.toml:/etc/kafka-pg-sink/config.toml"));
    assert!(compose.contains("KAFKA_PG_SINK__POSTGRES__PASSWORD_FILE"));
    assert!(
        compose.contains("apache/kafka:4.3.1"),
        "compose must use the Kafka version the tests run"
    );
}

#[test]
fn invalid_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[kafka]\nbrokers = \"x:1\"\ngroup_id = \"g\"\n[postgres]\nurl = \"postgres://h/d\"\n[batch]\nmax_wait = \"0s\"\n[[route]]\ntopic = \"t\"\ntable = \"t\"\nkey = \"id\"\n",
    )
    .unwrap();
    let (code, out) = check_config(p.to_str().unwrap(), &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("batch.max_wait") && out.contains("route[0].key"),
        "{out}"
    );
    let (code, _) = check_config("/nonexistent/config.toml", &[]);
    assert_eq!(code, 2);
}

/// The recording rule and dashboard reference metrics the binary exports.
#[test]
fn rules_and_dashboard_use_real_metric_names() {
    let root = env!("CARGO_MANIFEST_DIR");
    let exported = kafka_pg_sink::metrics::Metrics::new().family_names();
    let rules = std::fs::read_to_string(format!("{root}/deploy/prometheus/rules.yml")).unwrap();
    let dash =
        std::fs::read_to_string(format!("{root}/deploy/grafana/kafka-pg-sink.json")).unwrap();
    let dash_json: serde_json::Value = serde_json::from_str(&dash).expect("dashboard is JSON");
    assert!(dash_json["panels"].as_array().unwrap().len() >= 5);
    assert!(rules.contains("record: kafka_pg_sink:duplicate_rate:ratio_rate5m"));
    let mut checked = 0;
    for text in [&rules, &dash] {
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if let Some(name) = word.strip_prefix("kafka_pg_sink_") {
                let base = name
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count");
                let family = format!("kafka_pg_sink_{base}");
                assert!(
                    exported.contains(&family),
                    "{family} is not a metric the sink exports"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "only {checked} metric references found");
}
