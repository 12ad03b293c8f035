use serde_json::json;

use super::jdbc::Jdbc;
use super::names::{route_topic, subscription_regex};
use super::*;
use crate::config::route::{EnvelopeKind, Evolve, KeySpec, TombstonePolicy, TruncatePolicy};
use crate::config::{Config, OnError};
use crate::format::Format;

/// The translation, loaded and validated by the sink's own loader.
fn load(connector: &Value) -> (Translation, Config) {
    let t = translate(connector);
    let (cfg, specs) =
        crate::config::parse(&t.toml).unwrap_or_else(|e| panic!("{e}\n--- toml ---\n{}", t.toml));
    assert_eq!(specs.len(), cfg.routes.len());
    (t, cfg)
}

fn noted(t: &Translation, what: &str) -> bool {
    t.notes.iter().any(|n| n.starts_with(what))
}

fn one(k: &str) -> Option<KeySpec> {
    Some(KeySpec::One(k.into()))
}

fn many(k: &[&str]) -> Option<KeySpec> {
    Some(KeySpec::Many(k.iter().map(|s| s.to_string()).collect()))
}

/// A Debezium JDBC sink replicating a whole capture: one route.
fn debezium_whole_capture() -> Value {
    json!({
        "name": "pg-replica",
        "config": {
            "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
            "tasks.max": "4",
            "topics.regex": "shop\\.public\\..*",
            "connection.url": "jdbc:postgresql://replica-db:5432/warehouse?sslmode=require&ApplicationName=dbz&password=hunter3",
            "connection.username": "sink",
            "connection.password": "hunter2",
            "connection.pool.max_size": "16",
            "insert.mode": "upsert",
            "delete.enabled": "true",
            "truncate.enabled": "true",
            "primary.key.mode": "record_key",
            "schema.evolution": "basic",
            "collection.name.format": "replica.${source.table}",
            "quote.identifiers": "true",
            "use.time.zone": "UTC",
            "batch.size": "2000",
            "hibernate.c3p0.idle_test_period": "300",
            "errors.tolerance": "all",
            "errors.deadletterqueue.topic.name": "dlq-pg-replica",
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "key.converter.schemas.enable": "true",
            "value.converter.schemas.enable": "true"
        },
        "tasks": [],
        "type": "sink"
    })
}

#[test]
fn debezium_whole_capture_is_one_route() {
    let (t, c) = load(&debezium_whole_capture());
    assert_eq!(c.routes.len(), 1, "{}", t.toml);
    let r = &c.routes[0];
    assert_eq!(r.topic, "^shop\\.public\\..*");
    assert!(regex::Regex::new(&r.topic)
        .unwrap()
        .is_match("shop.public.items"));
    assert_eq!(r.table, "replica.${source.table}");
    assert_eq!(r.envelope, EnvelopeKind::Debezium);
    assert!(r.create_table);
    assert_eq!(r.evolve, Evolve::AddColumns);
    assert_eq!(r.key, None, "the Kafka key's fields");
    assert_eq!(r.on_truncate, TruncatePolicy::Apply);
    assert_eq!(r.format, Format::Json);
    assert_eq!(c.kafka.group_id, "connect-pg-replica");
    assert_eq!(c.kafka.brokers, BROKERS_PLACEHOLDER);
    assert_eq!(
        c.postgres.url,
        "postgres://sink@replica-db:5432/warehouse?sslmode=require&application_name=dbz"
    );
    assert_eq!(c.batch.max_messages, 2000);
    assert_eq!(c.sink.on_error, OnError::DeadLetter);
    assert!(!t.toml.contains("hunter"), "{}", t.toml);
    assert!(
        !t.notes.iter().any(|n| n.contains("hunter")),
        "{:?}",
        t.notes
    );
    assert!(t.toml.contains("password_file"), "{}", t.toml);
    for what in [
        "tasks.max=4: kafka-pg-sink scales by running replicas",
        "insert.mode=upsert",
        "hibernate.c3p0.idle_test_period=300: no ORM",
        "use.time.zone=UTC",
        "errors.deadletterqueue.topic.name=dlq-pg-replica: dead letters are rows",
        "quote.identifiers=true: identifiers are always quoted",
        "connection.pool.max_size=16",
    ] {
        assert!(noted(&t, what), "no note {what}: {:#?}", t.notes);
    }
    // Translated options are not noted.
    for what in [
        "schema.evolution",
        "delete.enabled",
        "truncate.enabled",
        "batch.size",
    ] {
        assert!(!noted(&t, what), "{what} noted: {:#?}", t.notes);
    }
}

#[test]
fn debezium_with_extract_new_record_state_and_listed_topics() {
    // The flat config map (`GET /connectors/<name>/config`).
    let connector = json!({
        "name": "orders-sink",
        "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
        "topics": "shop.public.orders, shop.public.Customers",
        "connection.url": "jdbc:postgresql://db:5432/app",
        "connection.username": "app",
        "connection.password": "pw-not-shown",
        "insert.mode": "insert",
        "delete.enabled": "false",
        "primary.key.mode": "record_value",
        "primary.key.fields": "id",
        "transforms": "unwrap",
        "transforms.unwrap.type": "io.debezium.transforms.ExtractNewRecordState",
        "transforms.unwrap.delete.tombstone.handling.mode": "rewrite",
        "transforms.unwrap.add.fields": "op,source.ts_ms",
        "use.reduction.buffer": "true",
        "flush.max.retries": "10",
        "field.exclude.list": "shop.public.orders:internal_note"
    });
    let (t, c) = load(&connector);
    let routes: Vec<(&str, &str)> = c
        .routes
        .iter()
        .map(|r| (r.topic.as_str(), r.table.as_str()))
        .collect();
    // Debezium's default naming: dots become `_`; unquoted names fold to lower case.
    assert_eq!(
        routes,
        [
            ("shop.public.orders", "shop_public_orders"),
            ("shop.public.Customers", "shop_public_customers")
        ]
    );
    for r in &c.routes {
        assert_eq!(r.envelope, EnvelopeKind::Debezium);
        assert!(r.create_table);
        assert_eq!(r.evolve, Evolve::None);
        assert_eq!(r.key, one("id"));
        assert_eq!(r.on_truncate, TruncatePolicy::Ignore);
    }
    assert_eq!(c.sink.on_error, OnError::Stop);
    for what in [
        "transforms.unwrap (io.debezium.transforms.ExtractNewRecordState): the sink's \
         transforms run inside Connect",
        "transforms.unwrap (io.debezium.transforms.ExtractNewRecordState) rewrite: soft deletes",
        "transforms.unwrap (io.debezium.transforms.ExtractNewRecordState) add.fields=op,source.ts_ms",
        "delete.enabled=false: kafka-pg-sink applies every change event's delete",
        "insert.mode=insert: kafka-pg-sink always upserts; a duplicate insert is a no-op",
        "schema.evolution=none",
        "use.reduction.buffer=true",
        "flush.max.retries=10",
        "field.exclude.list=",
    ] {
        assert!(noted(&t, what), "no note {what}: {:#?}", t.notes);
    }
    assert!(!t.toml.contains("not-shown"), "{}", t.toml);
}

/// A Confluent JDBC sink keyed by value fields, with a SASL consumer.
fn confluent_payments() -> Value {
    json!({
        "name": "payments-jdbc",
        "config": {
            "connector.class": "io.confluent.connect.jdbc.JdbcSinkConnector",
            "tasks.max": "2",
            "topics": "payments",
            "connection.url": "jdbc:postgresql://pg.internal:5432/billing?currentSchema=finance&ssl=true&reWriteBatchedInserts=true",
            "connection.user": "writer",
            "connection.password": "pw-not-shown",
            "insert.mode": "upsert",
            "pk.mode": "record_value",
            "pk.fields": "tenant,payment_id",
            "fields.whitelist": "amount,currency",
            "auto.create": "true",
            "auto.evolve": "true",
            "table.name.format": "${topic}_v1",
            "batch.size": "3000",
            "max.retries": "10",
            "retry.backoff.ms": "3000",
            "delete.enabled": "false",
            "key.converter": "org.apache.kafka.connect.storage.StringConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter.schemas.enable": "true",
            "consumer.override.auto.offset.reset": "latest",
            "consumer.override.security.protocol": "SASL_SSL",
            "consumer.override.sasl.mechanism": "SCRAM-SHA-512",
            "consumer.override.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"billing\" password=\"jaas-not-shown\";"
        }
    })
}

#[test]
fn confluent_record_value_key_maps_the_key_columns() {
    let (t, c) = load(&confluent_payments());
    assert_eq!(c.routes.len(), 1);
    let r = &c.routes[0];
    assert_eq!(r.topic, "payments");
    assert_eq!(r.table, "finance.payments_v1");
    assert_eq!(r.envelope, EnvelopeKind::None);
    assert_eq!(r.key, many(&["tenant", "payment_id"]));
    assert!(!r.create_table);
    assert_eq!(r.tombstones, TombstonePolicy::Ignore);
    let cols = r.columns.as_ref().expect("typed route");
    assert_eq!(cols["tenant"], "/payload/tenant");
    assert_eq!(cols["payment_id"], "/payload/payment_id");
    assert_eq!(cols["amount"], "/payload/amount");
    assert_eq!(cols["currency"], "/payload/currency");
    assert_eq!(
        c.postgres.url,
        "postgres://writer@pg.internal:5432/billing?sslmode=verify-full"
    );
    assert_eq!(c.kafka.group_id, "connect-payments-jdbc");
    assert_eq!(
        c.kafka.auto_offset_reset,
        crate::config::OffsetReset::Latest
    );
    assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
    assert_eq!(c.kafka.properties["sasl.mechanism"], "SCRAM-SHA-512");
    assert_eq!(c.kafka.properties["sasl.username"], "billing");
    assert_eq!(c.batch.max_messages, 3000);
    let all = format!("{}\n{:?}", t.toml, t.notes);
    assert!(!all.contains("not-shown"), "{all}");
    for what in [
        "tasks.max=2",
        "insert.mode=upsert",
        "auto.create/auto.evolve: tables are created from change events or registry schemas only",
        "connection.url parameters reWriteBatchedInserts=true",
        "connection.url currentSchema",
        "max.retries=10",
        "retry.backoff.ms=3000",
        "consumer.override.sasl.jaas.config=***",
    ] {
        assert!(noted(&t, what), "no note {what}: {:#?}", t.notes);
    }
}

#[test]
fn confluent_avro_creates_tables_from_the_registry() {
    let connector = json!({
        "name": "customers-avro",
        "config": {
            "connector.class": "io.confluent.connect.jdbc.JdbcSinkConnector",
            "topics": "crm.customers",
            "connection.url": "jdbc:postgresql://pg:5432/crm",
            "connection.user": "crm",
            "pk.mode": "record_key",
            "pk.fields": "customer_id",
            "insert.mode": "upsert",
            "delete.enabled": "true",
            "auto.create": "true",
            "auto.evolve": "true",
            "key.converter": "io.confluent.connect.avro.AvroConverter",
            "key.converter.schema.registry.url": "https://registry:8081",
            "value.converter": "io.confluent.connect.avro.AvroConverter",
            "value.converter.schema.registry.url": "https://registry:8081",
            "value.converter.basic.auth.credentials.source": "USER_INFO",
            "value.converter.basic.auth.user.info": "sink:registry-pw-not-shown",
            "key.converter.basic.auth.credentials.source": "USER_INFO",
            "key.converter.basic.auth.user.info": "sink:registry-pw-not-shown",
            "errors.tolerance": "all",
            "errors.log.enable": "true"
        }
    });
    let (t, c) = load(&connector);
    let r = &c.routes[0];
    // Confluent keeps the topic's dots: `crm.customers` is schema crm, table customers.
    assert_eq!(r.table, "crm.customers");
    assert_eq!(r.format, Format::Avro);
    assert_eq!(r.key_format, Format::Avro);
    assert_eq!(r.envelope, EnvelopeKind::None);
    assert!(r.create_table);
    assert_eq!(r.evolve, Evolve::AddColumns);
    assert_eq!(r.key, one("customer_id"));
    assert_eq!(r.tombstones, TombstonePolicy::Delete);
    let reg = c.schema_registry.as_ref().expect("registry");
    assert_eq!(reg.url, "https://registry:8081");
    assert_eq!(reg.username.as_deref(), Some("sink"));
    assert!(reg.password.is_none());
    assert!(t.toml.contains("KAFKA_PG_SINK__SCHEMA_REGISTRY__PASSWORD"));
    let all = format!("{}\n{:?}", t.toml, t.notes);
    assert!(!all.contains("not-shown"), "{all}");
    assert!(noted(&t, "errors.log.enable=true"), "{:#?}", t.notes);
    assert!(noted(&t, "insert.mode=upsert"), "{:#?}", t.notes);
    assert_eq!(c.sink.on_error, OnError::DeadLetter);
}

#[test]
fn debezium_avro_and_regex_router() {
    let connector = json!({
        "name": "inv",
        "config": {
            "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
            "topics": "inv.public.items",
            "connection.url": "jdbc:postgresql://pg/inventory",
            "connection.username": "sink",
            "primary.key.mode": "record_key",
            "delete.enabled": "true",
            "schema.evolution": "basic",
            "table.name.format": "mirror.${topic}",
            "transforms": "route,mask",
            "transforms.route.type": "org.apache.kafka.connect.transforms.RegexRouter",
            "transforms.route.regex": "([^.]+)\\.([^.]+)\\.([^.]+)",
            "transforms.route.replacement": "$1_$3",
            "transforms.mask.type": "org.apache.kafka.connect.transforms.MaskField$Value",
            "transforms.mask.fields": "ssn",
            "value.converter": "io.confluent.connect.avro.AvroConverter",
            "value.converter.schema.registry.url": "http://registry:8081,http://registry2:8081",
            "key.converter": "io.confluent.connect.avro.AvroConverter",
            "key.converter.schema.registry.url": "http://registry:8081"
        }
    });
    let (t, c) = load(&connector);
    let r = &c.routes[0];
    assert_eq!(r.topic, "inv.public.items");
    assert_eq!(r.table, "mirror.inv_items");
    assert_eq!(r.envelope, EnvelopeKind::Debezium);
    assert_eq!(r.format, Format::Avro);
    assert_eq!(r.key_format, Format::Avro);
    assert!(r.create_table);
    assert_eq!(r.evolve, Evolve::AddColumns);
    assert_eq!(
        c.schema_registry.as_ref().unwrap().url,
        "http://registry:8081"
    );
    assert!(noted(
        &t,
        "transforms.mask (org.apache.kafka.connect.transforms.MaskField$Value): not understood"
    ));
    assert!(noted(
        &t,
        "value.converter.schema.registry.url: several registry URLs"
    ));
    assert_eq!(c.postgres.url, "postgres://sink@pg/inventory");
}

#[test]
fn primary_key_mode_none_needs_a_key() {
    let connector = json!({
        "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
        "name": "n",
        "topics": "a.b.c",
        "connection.url": "jdbc:postgresql://h/d",
        "connection.username": "u"
    });
    let (t, c) = load(&connector);
    assert!(
        noted(&t, "primary.key.mode=none: needs a key"),
        "{:#?}",
        t.notes
    );
    assert_eq!(c.routes[0].key, None);
    // A Confluent sink without keys: pure dedup on a document table.
    let connector = json!({
        "connector.class": "io.confluent.connect.jdbc.JdbcSinkConnector",
        "name": "n",
        "topics": "clicks",
        "connection.url": "jdbc:postgresql://h/d"
    });
    let (t, c) = load(&connector);
    assert!(noted(
        &t,
        "pk.mode=none: needs a key: key = \"@event_hash\""
    ));
    assert_eq!(c.routes[0].key, one("@event_hash"));
    assert!(c.routes[0].columns.is_none());
}

#[test]
fn not_a_jdbc_sink_is_refused_with_a_reason() {
    let source = json!({"name": "src", "config": {
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "database.hostname": "db"
    }});
    let e = sink_kind(&source).unwrap_err();
    assert!(e.contains("is not a JDBC sink connector"), "{e}");
    let t = translate(&source);
    assert!(t.toml.is_empty());
    assert_eq!(t.notes, vec![e]);
    let mysql = json!({
        "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
        "topics": "t",
        "connection.url": "jdbc:mysql://db:3306/app"
    });
    assert!(sink_kind(&mysql).unwrap_err().contains("PostgreSQL only"));
    assert!(sink_kind(&json!([1])).is_err());
    assert!(sink_kind(&json!({"name": "x"}))
        .unwrap_err()
        .contains("connector.class"));
}

#[test]
fn properties_files_read_as_flat_maps() {
    let text = "# a comment\n\
                name=pg-replica\n\
                connector.class = io.debezium.connector.jdbc.JdbcSinkConnector\n\
                topics.regex: shop\\\\..*\n\
                connection.url=jdbc:postgresql://db:5432/\\\n    warehouse\n\
                ! another comment\n\
                primary.key.mode record_key\n";
    let v = parse_properties(text);
    assert_eq!(v["name"], "pg-replica");
    assert_eq!(v["topics.regex"], "shop\\..*");
    assert_eq!(v["connection.url"], "jdbc:postgresql://db:5432/warehouse");
    assert_eq!(v["primary.key.mode"], "record_key");
    assert_eq!(sink_kind(&v), Ok(SinkKind::Debezium));
    let (_, c) = load(&v);
    assert_eq!(c.routes[0].topic, "^shop\\..*");
}

#[test]
fn jdbc_urls() {
    let u = |s: &str| {
        let j = Jdbc::parse(s).unwrap();
        j.to_postgres_url(Some("me"), &[])
    };
    assert_eq!(u("jdbc:postgresql://h:6543/db"), "postgres://me@h:6543/db");
    assert_eq!(u("jdbc:postgresql:db"), "postgres://me@localhost/db");
    assert_eq!(
        u("jdbc:postgresql://[::1]:5432/db"),
        "postgres://me@[::1]:5432/db"
    );
    assert_eq!(u("jdbc:postgresql://a:1,b:2/db"), "postgres://me@a:1/db");
    let j = Jdbc::parse("jdbc:postgresql://x:pw@h/db").unwrap();
    assert!(j.had_credentials);
    assert!(!j.to_postgres_url(None, &[]).contains("pw"));
    let weird = Jdbc::parse("jdbc:postgresql://h/my%20db").unwrap();
    assert_eq!(
        weird.to_postgres_url(Some("a b"), &[]),
        "postgres://a%20b@h/my%20db"
    );
}

#[test]
fn topic_regexes_match_whole_topics() {
    assert_eq!(subscription_regex("shop\\..*"), "^shop\\..*");
    assert_eq!(subscription_regex("^orders$"), "^orders$");
    assert_eq!(subscription_regex("orders"), "^orders$");
    assert_eq!(subscription_regex("a|b"), "^(a|b)$");
    let r = regex::Regex::new(&subscription_regex("a|b")).unwrap();
    assert!(r.is_match("a") && !r.is_match("ab") && !r.is_match("xb"));
}

#[test]
fn regex_router_replacements_follow_java() {
    let routers = vec![(
        regex::Regex::new("^(?:([^.]+)\\.([^.]+)\\.(?<t>[^.]+))$").unwrap(),
        "$1_${t}\\$".to_string(),
    )];
    assert_eq!(route_topic("srv.public.items", &routers), "srv_items$");
    assert_eq!(route_topic("no-dots", &routers), "no-dots");
    let twelve = vec![(
        regex::Regex::new("^(?:(a)(b))$").unwrap(),
        "$12".to_string(),
    )];
    // Group 12 does not exist: `$1` then the literal `2`.
    assert_eq!(route_topic("ab", &twelve), "a2");
}
