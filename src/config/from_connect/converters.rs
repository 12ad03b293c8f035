//! The converters (how the records are encoded, and the schema registry)
//! and the transforms (what Connect did to the records before the sink).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::text::q;
use super::{split_list, Translator};

const JSON_CONVERTER: &str = "org.apache.kafka.connect.json.JsonConverter";
const STRING_CONVERTER: &str = "org.apache.kafka.connect.storage.StringConverter";
const EXTRACT_NEW_RECORD_STATE: &str = "io.debezium.transforms.ExtractNewRecordState";
const REGEX_ROUTER: &str = "org.apache.kafka.connect.transforms.RegexRouter";

/// How the record values are encoded, from the converters.
pub(super) struct Formats {
    pub(super) value: &'static str,
    pub(super) key: &'static str,
    /// The JSON converter with `schemas.enable` (its default): values are
    /// `{"schema": …, "payload": …}`.
    pub(super) embedded_schemas: bool,
    pub(super) registry: Option<Registry>,
}

pub(super) struct Registry {
    url: String,
    username: Option<String>,
    has_password: bool,
}

/// What the transforms do to the records.
#[derive(Default)]
pub(super) struct Transforms {
    /// `ExtractNewRecordState` runs in Connect: the topic holds change events.
    pub(super) unwrap: bool,
    /// `RegexRouter`s, in order: they rename the topic the table is named from.
    pub(super) routers: Vec<(regex::Regex, String)>,
}

impl Registry {
    fn at(url: String) -> Self {
        Registry {
            url,
            username: None,
            has_password: false,
        }
    }

    /// The `[schema_registry]` section.
    pub(super) fn section(&self) -> String {
        let mut out = String::from("[schema_registry]\n");
        let _ = writeln!(out, "url = {}", q(&self.url));
        if let Some(u) = &self.username {
            let _ = writeln!(out, "username = {}", q(u));
        }
        if self.has_password {
            out.push_str(
                "# The registry password is not copied: password_file = \"/run/secrets/registry\"\n\
                 # or KAFKA_PG_SINK__SCHEMA_REGISTRY__PASSWORD.\n",
            );
        }
        out.push('\n');
        out
    }
}

impl Translator {
    pub(super) fn formats(&mut self) -> Formats {
        let value_class = self.take("value.converter");
        let key_class = self.take("key.converter");
        if value_class.is_none() && key_class.is_none() {
            self.note(
                "key.converter/value.converter",
                "not set in the connector: the worker's converters apply; assumed the JSON \
                 converter with schemas (set `format` on the routes if it is Avro, Protobuf \
                 or JSON Schema)",
            );
        }
        let (value, value_registry) = self.converter("value.converter.", value_class.as_deref());
        let (key, key_registry) = self.converter("key.converter.", key_class.as_deref());
        let embedded_schemas = value == "json"
            && value_class.as_deref().is_none_or(|c| c == JSON_CONVERTER)
            && self
                .take("value.converter.schemas.enable")
                .is_none_or(|v| !v.eq_ignore_ascii_case("false"));
        if key == "json" {
            self.take("key.converter.schemas.enable");
        }
        if value == "json"
            && self
                .options
                .get("value.converter.schemas.enable")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
        {
            self.note(
                "value.converter.schemas.enable=false",
                "values without schemas: tables cannot be created from them (create_table \
                 needs the JSON converter's schemas or a registry format)",
            );
        }
        let registry = value_registry.or(key_registry);
        // Converter options not read above.
        for prefix in ["value.converter.", "key.converter."] {
            for k in self.unused_with_prefix(prefix) {
                self.note_option(&k, "converter option; no equivalent");
            }
        }
        Formats {
            value,
            key,
            embedded_schemas,
            registry,
        }
    }

    /// The `format` a converter class writes, and its registry.
    fn converter(&mut self, prefix: &str, class: Option<&str>) -> (&'static str, Option<Registry>) {
        let Some(class) = class else {
            return ("json", None);
        };
        let setting = format!("{}={class}", prefix.trim_end_matches('.'));
        let (format, apicurio) = match class {
            JSON_CONVERTER | STRING_CONVERTER => return ("json", None),
            "io.confluent.connect.avro.AvroConverter" => ("avro", false),
            "io.confluent.connect.protobuf.ProtobufConverter" => ("protobuf", false),
            "io.confluent.connect.json.JsonSchemaConverter" => ("json_schema", false),
            "io.apicurio.registry.utils.converter.AvroConverter" => ("avro", true),
            _ => {
                self.note(
                    &setting,
                    "a converter kafka-pg-sink does not read (it reads JSON, and Avro, \
                     Protobuf and JSON Schema in the Confluent wire format); assumed JSON",
                );
                return ("json", None);
            }
        };
        let registry = if apicurio {
            self.apicurio_registry(prefix, &setting)
        } else {
            self.confluent_registry(prefix)
        };
        if registry.is_none() {
            self.note(
                &setting,
                "no registry URL in the connector (the worker's applies): fill in \
                 [schema_registry] url",
            );
            return (format, Some(Registry::at("http://CHANGE-ME:8081".into())));
        }
        (format, registry)
    }

    /// Apicurio's registry, through its Confluent-compatible API.
    fn apicurio_registry(&mut self, prefix: &str, setting: &str) -> Option<Registry> {
        let url = self.take(&format!("{prefix}apicurio.registry.url"));
        self.note(
            setting,
            "Apicurio's converter: kafka-pg-sink reads the Confluent wire format through \
             Apicurio's /apis/ccompat/v7 API; the converter must write it \
             (apicurio.registry.as-confluent=true, 4-byte ids, no headers)",
        );
        url.map(|u| {
            let base = u
                .trim_end_matches('/')
                .trim_end_matches("/apis/registry/v2")
                .trim_end_matches("/apis/registry/v3")
                .to_string();
            Registry::at(format!("{base}/apis/ccompat/v7"))
        })
    }

    /// Confluent's registry: its first URL and the user of its credentials.
    fn confluent_registry(&mut self, prefix: &str) -> Option<Registry> {
        let urls = split_list(&self.take(&format!("{prefix}schema.registry.url"))?);
        if urls.len() > 1 {
            self.note(
                &format!("{prefix}schema.registry.url"),
                "several registry URLs: the first is used",
            );
        }
        self.take(&format!("{prefix}basic.auth.credentials.source"));
        let info = self
            .take(&format!("{prefix}basic.auth.user.info"))
            .or_else(|| self.take(&format!("{prefix}schema.registry.basic.auth.user.info")));
        let (username, has_password) = match info {
            Some(i) => match i.split_once(':') {
                Some((u, p)) => (Some(u.to_string()), !p.is_empty()),
                None => (Some(i), false),
            },
            None => (None, false),
        };
        Some(Registry {
            url: urls.into_iter().next().unwrap_or_default(),
            username,
            has_password,
        })
    }

    pub(super) fn transforms(&mut self) -> Transforms {
        let mut plan = Transforms::default();
        for alias in self.take_list("transforms") {
            self.transform(&alias, &mut plan);
        }
        for k in self.unused_with_prefix("transforms.") {
            self.note_option(&k, "belongs to no transform listed in `transforms`");
        }
        for k in self.keys_with_prefix("predicates") {
            self.note_option(&k, "predicates: kafka-pg-sink has none");
        }
        plan
    }

    /// The transform `alias`, into `plan` or the notes.
    fn transform(&mut self, alias: &str, plan: &mut Transforms) {
        let prefix = format!("transforms.{alias}.");
        let ty = self.take(&format!("{prefix}type")).unwrap_or_default();
        let mut opts = BTreeMap::new();
        for k in self.unused_with_prefix(&prefix) {
            let v = self.take(&k).unwrap_or_default();
            opts.insert(k[prefix.len()..].to_string(), v);
        }
        let what = format!("transforms.{alias} ({ty})");
        if let Some(p) = opts.get("predicate") {
            self.note(
                &what,
                &format!(
                    "applies only under predicate `{p}`: kafka-pg-sink has no predicates; \
                     not translated"
                ),
            );
            return;
        }
        match ty.as_str() {
            EXTRACT_NEW_RECORD_STATE => {
                plan.unwrap = true;
                self.unwrap_notes(&what, &opts);
            }
            REGEX_ROUTER => {
                let re = opts.get("regex").cloned().unwrap_or_default();
                let replacement = opts.get("replacement").cloned().unwrap_or_default();
                match regex::Regex::new(&format!("^(?:{re})$")) {
                    Ok(r) => plan.routers.push((r, replacement)),
                    Err(_) => self.note(
                        &what,
                        "its regex is not one the sink can evaluate; table names are \
                         taken from the topic names as they are",
                    ),
                }
            }
            _ => self.note(
                &what,
                "not understood: kafka-pg-sink writes the records as they are in the topic",
            ),
        }
    }

    fn unwrap_notes(&mut self, what: &str, opts: &BTreeMap<String, String>) {
        self.note(
            what,
            "the sink's transforms run inside Connect after the records are read, so the \
             topic holds the change events: kafka-pg-sink reads them as they are \
             (envelope = \"debezium\"), with their source positions and deletes",
        );
        let rewrite = ["delete.handling.mode", "delete.tombstone.handling.mode"]
            .iter()
            .any(|k| opts.get(*k).is_some_and(|v| v.starts_with("rewrite")));
        if rewrite {
            self.note(
                &format!("{what} rewrite"),
                "soft deletes (a `__deleted` column) are not reproduced: a delete removes the row",
            );
        } else if [
            "delete.handling.mode",
            "delete.tombstone.handling.mode",
            "drop.tombstones",
        ]
        .iter()
        .any(|k| opts.contains_key(*k))
        {
            self.note(
                &format!("{what} delete handling"),
                "does not apply: deletes come from the change events and are always applied",
            );
        }
        for k in ["add.fields", "add.headers"] {
            if let Some(v) = opts.get(k).filter(|v| !v.is_empty()) {
                self.note(
                    &format!("{what} {k}={v}"),
                    "these metadata columns are not written; tables created from change events \
                     keep the source position in `__source_position`, and `@source:<field>` \
                     maps any source field on a typed route",
                );
            }
        }
        if opts.contains_key("route.by.field") {
            self.note(
                &format!("{what} route.by.field"),
                "use `${source.<field>}` placeholders in `table`",
            );
        }
    }
}
