//! Static checks of what ships: the example and container configs load, bad
//! configs exit 2 naming the key, and secrets never reach the output.

mod common;

use std::process::Command;

use serde::Deserialize;

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
    let exported = kafka_pg_sink::ops::metrics::Metrics::new().family_names();
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

/// docker-compose.yml, parsed: the sink service's command is a real
/// subcommand, its config mount is where KAFKA_PG_SINK_CONFIG points, and the
/// same config with the compose environment passes check-config. The k8s
/// example's ConfigMap config passes check-config too.
#[test]
fn compose_and_k8s_match_what_the_binary_accepts() {
    let root = env!("CARGO_MANIFEST_DIR");
    let compose: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{root}/docker-compose.yml")).unwrap(),
    )
    .unwrap();
    let sink = &compose["services"]["sink"];
    let command: Vec<&str> = sink["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let help = Command::new(common::sink_binary())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains(&format!("  {} ", command[0])),
        "`{}` is not a subcommand:\n{help}",
        command[0]
    );
    let env = sink["environment"].as_mapping().unwrap();
    let config_path = env[&serde_yaml::Value::from("KAFKA_PG_SINK_CONFIG")]
        .as_str()
        .unwrap();
    let mounts: Vec<&str> = sink["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mount = mounts
        .iter()
        .find(|m| m.contains(config_path))
        .expect("config mounted at KAFKA_PG_SINK_CONFIG");
    let host_file = mount.split(':').next().unwrap().trim_start_matches("./");
    let secret_file = std::env::temp_dir().join("kpgs-compose-secret");
    std::fs::write(&secret_file, "pw\n").unwrap();
    let (code, out) = check_config(
        &format!("{root}/{host_file}"),
        &[(
            "KAFKA_PG_SINK__POSTGRES__PASSWORD_FILE",
            secret_file.to_str().unwrap(),
        )],
    );
    assert_eq!(code, 0, "{out}");
    assert!(sink["deploy"]["replicas"].as_u64().unwrap() >= 2);

    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/k8s/kafka-pg-sink.yaml")).unwrap(),
    )
    .map(|d| serde_yaml::Value::deserialize(d).unwrap())
    .collect();
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.toml");
    std::fs::write(&p, cm["data"]["config.toml"].as_str().unwrap()).unwrap();
    let (code, out) = check_config(p.to_str().unwrap(), &[]);
    assert_eq!(code, 0, "{out}");
}

/// Prometheus rules parse as YAML and every rule has an expression.
#[test]
fn prometheus_rules_are_well_formed() {
    let root = env!("CARGO_MANIFEST_DIR");
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/prometheus/rules.yml")).unwrap(),
    )
    .unwrap();
    let group = &rules["groups"][0];
    let list = group["rules"].as_sequence().unwrap();
    assert!(list.len() >= 3);
    for r in list {
        assert!(r["expr"].as_str().is_some_and(|e| !e.is_empty()), "{r:?}");
        assert!(r["record"].is_string() || r["alert"].is_string(), "{r:?}");
    }
}
