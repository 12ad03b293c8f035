//! Schema registry client (Confluent REST API: Confluent Schema Registry,
//! Apicurio's `/apis/ccompat/v7`, Redpanda, Karapace …).
//!
//! * [`RegistryClient::schema`]`(id)` fetches `GET /schemas/ids/{id}`, resolves
//!   schema references (`GET /subjects/{s}/versions/{v}`, transitively), parses
//!   or compiles the text into a [`crate::format::Schema`] and caches it by id
//!   forever (ids are immutable in every registry). [`RegistryClient::cached`]
//!   is the synchronous lookup for the pure batch stage.
//! * Errors are typed for the pipeline's decision (see [`RegistryError`]):
//!   **poison** ([`RegistryError::is_poison`]: `NotFound`, `Invalid`) → dead
//!   letter naming the schema id; everything else (connection refused,
//!   timeouts, 5xx, 429, 401/403, a 404 that is not the registry's "schema not
//!   found" answer) → retry with backoff, readiness false, never a dead letter.
//!   `NotFound` requires the registry's own answer: HTTP 404 *with* Confluent
//!   `error_code` 40403. A bare 404 (wrong base URL, proxy) is `Unavailable`,
//!   so a misconfigured URL cannot dead-letter a whole topic.
//! * Basic auth: username + password ([`Secret`]: `Debug` prints `***`;
//!   credentials given in the URL (`https://user:pass@host`) are moved out of
//!   it, so the URL in logs and errors never carries them).
//! * TLS with rustls (ring provider, like sqlx; webpki roots): an optional CA
//!   bundle (PEM) is added to the roots; an optional client identity (PEM with
//!   certificate chain and private key) enables mutual TLS.
//!
//! # Why `reqwest` and not `schema_registry_converter`
//!
//! `schema_registry_converter` 6.0 (also reqwest-based) fetches and decodes in
//! one async call and returns `apache_avro::types::Value` / prost-reflect
//! messages: the pipeline needs the fetch (async, prefetch) split from the
//! decode (pure, synchronous, inside batch preparation), a cache it can read
//! synchronously, errors split into poison vs transient by HTTP status and
//! Confluent error code, and its own JSON mapping (`format`). Its
//! `json` feature also pulls a JSON Schema validator we do not use. What is
//! left to write is ~200 lines of HTTP + reference resolution, so the client is
//! written here on `reqwest` 0.12 (rustls/ring, no native TLS), and the
//! decoding uses `apache-avro` 0.22 (the version `schema_registry_converter`
//! 6.0 pins too), `protox` + `prost-reflect` directly.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::format::{Reference, Schema, SchemaError, SchemaType};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
const ACCEPT: &str = "application/vnd.schemaregistry.v1+json, application/json";
/// Longest reference chain followed (guards against cycles and abuse).
const MAX_REFERENCES: usize = 256;

/// A password or token: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

/// How to reach the registry.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Base URL of the Confluent API, e.g. `http://127.0.0.1:18081/apis/ccompat/v7`
    /// or `https://registry.example:8081`.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Extra trusted CA certificates (PEM bundle) for an https URL.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain + private key (one PEM file) for mutual TLS.
    pub client_identity_file: Option<PathBuf>,
    /// Whole-request timeout (connect timeout is the smaller of this and 5 s).
    pub timeout: Duration,
}

impl RegistryConfig {
    pub fn new(url: impl Into<String>) -> Self {
        RegistryConfig {
            url: url.into(),
            username: None,
            password: None,
            ca_file: None,
            client_identity_file: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why a registry call failed. See the module doc for what the pipeline does
/// with each.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered 404 with error code 40403: no schema has this id.
    /// Poison: the message names a schema that does not exist.
    #[error("schema {id} not found in the registry (HTTP 404, error code 40403)")]
    NotFound { id: u32 },
    /// The schema exists but cannot be used: it does not parse or compile, its
    /// type is unknown, or one of its references does not exist. Poison.
    #[error(transparent)]
    Invalid(#[from] SchemaError),
    /// Connection refused/reset, timeout, TLS failure, 5xx, 429, or a 404 that
    /// is not the registry's "not found". Transient: retry with backoff.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
    /// 401/403: credentials missing or wrong. Not the message's fault: retry
    /// (readiness false) until the credentials are fixed.
    #[error("schema registry refused the credentials (HTTP {status})")]
    Unauthorized { status: u16 },
    /// Any other 4xx, e.g. on `register`: 409 incompatible schema, 422 invalid.
    #[error("schema registry answered HTTP {status} (error code {error_code:?}): {message}")]
    Rejected {
        status: u16,
        error_code: Option<i64>,
        message: String,
    },
    /// The client configuration itself is wrong (bad URL, unreadable CA file).
    #[error("schema registry configuration: {0}")]
    Config(String),
}

impl RegistryError {
    /// True when the message that named this schema id should be dead-lettered.
    pub fn is_poison(&self) -> bool {
        matches!(
            self,
            RegistryError::NotFound { .. } | RegistryError::Invalid(_)
        )
    }

    /// True for errors that go away on their own (retry with backoff).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RegistryError::Unavailable(_) | RegistryError::Unauthorized { .. }
        )
    }

    /// The schema id concerned, when known.
    pub fn schema_id(&self) -> Option<u32> {
        match self {
            RegistryError::NotFound { id } => Some(*id),
            RegistryError::Invalid(e) => Some(e.id),
            _ => None,
        }
    }
}

/// A schema reference as the Confluent API writes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SchemaReference {
    /// The name the referring schema uses (Protobuf import path, Avro full name).
    pub name: String,
    pub subject: String,
    pub version: i32,
}

/// `GET /subjects/{subject}/versions/{version}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct SubjectVersion {
    pub subject: String,
    pub id: u32,
    pub version: i32,
    pub schema: String,
    #[serde(rename = "schemaType", default)]
    pub schema_type: Option<String>,
    #[serde(default)]
    pub references: Vec<SchemaReference>,
}

#[derive(Deserialize)]
struct SchemaById {
    schema: String,
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<SchemaReference>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<i64>,
    message: Option<String>,
}

/// The registry client: cheap to share (`Arc`), caches schemas by id.
pub struct RegistryClient {
    http: reqwest::Client,
    base: url::Url,
    username: Option<String>,
    password: Option<Secret>,
    cache: Mutex<HashMap<u32, Arc<Schema>>>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.base.as_str())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field(
                "cached_schemas",
                &self.cache.lock().map(|c| c.len()).unwrap_or(0),
            )
            .finish()
    }
}

impl RegistryClient {
    pub fn new(cfg: &RegistryConfig) -> Result<Self, RegistryError> {
        let mut base = url::Url::parse(&cfg.url)
            .map_err(|e| RegistryError::Config(format!("url `{}`: {e}", redact(&cfg.url))))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(RegistryError::Config(format!(
                "url scheme must be http or https, not {}",
                base.scheme()
            )));
        }
        let (username, password) = take_url_credentials(&mut base, cfg)?;
        if username.is_none() && password.is_some() {
            return Err(RegistryError::Config("a password needs a username".into()));
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        Ok(RegistryClient {
            http: http_client(cfg)?,
            base,
            username,
            password,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The base URL (never with credentials).
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    /// A schema already in the cache (synchronous; for the pure batch stage).
    pub fn cached(&self, id: u32) -> Option<Arc<Schema>> {
        self.cache.lock().expect("registry cache").get(&id).cloned()
    }

    /// The writer schema with this id: from the cache, or fetched, resolved
    /// and parsed (then cached). Failures are not cached.
    pub async fn schema(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        if let Some(s) = self.cached(id) {
            return Ok(s);
        }
        let by_id: SchemaById = match self.get_json(&["schemas", "ids", &id.to_string()]).await {
            Err(Failure::NotFound(_)) => return Err(RegistryError::NotFound { id }),
            other => other.map_err(Failure::into_error)?,
        };
        let schema_type =
            SchemaType::from_registry(by_id.schema_type.as_deref()).ok_or_else(|| SchemaError {
                id,
                schema_type: SchemaType::Avro,
                reason: format!("unknown schemaType {:?}", by_id.schema_type),
            })?;
        let references = self
            .resolve_references(id, schema_type, &by_id.references)
            .await?;
        let parsed = Schema::parse(id, schema_type, &by_id.schema, &references)?;
        tracing::debug!(
            schema_id = id,
            schema_type = schema_type.as_str(),
            references = references.len(),
            "schema fetched from the registry"
        );
        let parsed = Arc::new(parsed);
        let mut cache = self.cache.lock().expect("registry cache");
        Ok(cache.entry(id).or_insert(parsed).clone())
    }

    /// `GET /subjects/{subject}/versions/{version}` (`version` `None` = latest).
    pub async fn subject_version(
        &self,
        subject: &str,
        version: Option<i32>,
    ) -> Result<SubjectVersion, RegistryError> {
        let v = version.map_or_else(|| "latest".to_string(), |v| v.to_string());
        self.get_json(&["subjects", subject, "versions", &v])
            .await
            .map_err(Failure::into_error)
    }

    /// Registers a schema under a subject (`POST /subjects/{subject}/versions`)
    /// and returns its id; registering the same text again returns the same id.
    pub async fn register(
        &self,
        subject: &str,
        schema_type: SchemaType,
        schema_text: &str,
    ) -> Result<u32, RegistryError> {
        self.register_with_references(subject, schema_type, schema_text, &[])
            .await
    }

    /// [`register`](Self::register) for a schema that references others.
    pub async fn register_with_references(
        &self,
        subject: &str,
        schema_type: SchemaType,
        schema_text: &str,
        references: &[SchemaReference],
    ) -> Result<u32, RegistryError> {
        #[derive(Deserialize)]
        struct Registered {
            id: u32,
        }
        let body = serde_json::json!({
            "schema": schema_text,
            "schemaType": schema_type.as_str(),
            "references": references,
        });
        let url = self.endpoint(&["subjects", subject, "versions"]);
        let req = self
            .auth(self.http.post(url))
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(body.to_string());
        let r: Registered = self.send(req).await.map_err(Failure::into_error)?;
        Ok(r.id)
    }

    /// Walks references depth-first (each (subject, version) once) and returns
    /// the transitive closure as name → text.
    async fn resolve_references(
        &self,
        id: u32,
        schema_type: SchemaType,
        top: &[SchemaReference],
    ) -> Result<Vec<Reference>, RegistryError> {
        // A missing or runaway reference is the schema's fault (poison); a
        // registry that fails to answer is not (transient, `into_error`).
        let invalid = |reason: String| {
            RegistryError::from(SchemaError {
                id,
                schema_type,
                reason,
            })
        };
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut todo: Vec<SchemaReference> = top.iter().rev().cloned().collect();
        while let Some(r) = todo.pop() {
            if !seen.insert((r.subject.clone(), r.version)) {
                continue;
            }
            if seen.len() > MAX_REFERENCES {
                return Err(invalid(format!(
                    "more than {MAX_REFERENCES} schema references"
                )));
            }
            let version = r.version.to_string();
            let sv: SubjectVersion = match self
                .get_json(&["subjects", &r.subject, "versions", &version])
                .await
            {
                Err(Failure::NotFound(_)) => {
                    return Err(invalid(format!(
                        "reference {} (subject {}, version {}) not found",
                        r.name, r.subject, r.version
                    )))
                }
                other => other.map_err(Failure::into_error)?,
            };
            todo.extend(sv.references.iter().rev().cloned());
            out.push(Reference {
                name: r.name.clone(),
                text: sv.schema,
            });
        }
        Ok(out)
    }

    fn endpoint(&self, segments: &[&str]) -> url::Url {
        let mut u = self.base.clone();
        {
            let mut p = u.path_segments_mut().expect("http(s) URL has a path");
            p.pop_if_empty();
            p.extend(segments);
        }
        u
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match (&self.username, &self.password) {
            (Some(u), p) => req.basic_auth(u, p.as_ref().map(Secret::expose)),
            (None, _) => req,
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
    ) -> Result<T, Failure> {
        let req = self.auth(self.http.get(self.endpoint(segments)));
        self.send(req).await
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, Failure> {
        let resp = req
            .header(reqwest::header::ACCEPT, ACCEPT)
            .send()
            .await
            .map_err(|e| Failure::Transport(error_chain(&e)))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Failure::Transport(error_chain(&e)))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                Failure::Transport(format!("HTTP {status} with an unexpected body: {e}"))
            });
        }
        let err: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
        let code = err.as_ref().and_then(|e| e.error_code);
        let message = err.and_then(|e| e.message).unwrap_or_else(|| {
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
        });
        Err(match status.as_u16() {
            // 40401 subject, 40402 version, 40403 schema: the registry's own "no such thing".
            404 if matches!(code, Some(40401..=40403)) => Failure::NotFound(message),
            401 | 403 => Failure::Unauthorized(status.as_u16()),
            404 | 408 | 429 | 500..=599 => Failure::Transport(format!("HTTP {status}: {message}")),
            s => Failure::Rejected(s, code, message),
        })
    }
}

/// Internal outcome before it is tied to a schema id.
enum Failure {
    NotFound(String),
    Unauthorized(u16),
    Transport(String),
    Rejected(u16, Option<i64>, String),
}

impl Failure {
    fn into_error(self) -> RegistryError {
        match self {
            Failure::NotFound(m) => RegistryError::Rejected {
                status: 404,
                error_code: None,
                message: m,
            },
            Failure::Unauthorized(status) => RegistryError::Unauthorized { status },
            Failure::Transport(m) => RegistryError::Unavailable(m),
            Failure::Rejected(status, error_code, message) => RegistryError::Rejected {
                status,
                error_code,
                message,
            },
        }
    }
}

/// Credentials in the URL move to basic auth and out of the URL (so it can
/// be logged); explicitly configured ones win.
fn take_url_credentials(
    base: &mut url::Url,
    cfg: &RegistryConfig,
) -> Result<(Option<String>, Option<Secret>), RegistryError> {
    let mut username = cfg.username.clone();
    let mut password = cfg.password.clone();
    if base.username().is_empty() && base.password().is_none() {
        return Ok((username, password));
    }
    let dec = |s: &str| {
        percent_decode(s)
            .ok_or_else(|| RegistryError::Config("bad percent-encoding in url credentials".into()))
    };
    if username.is_none() {
        username = Some(dec(base.username())?);
    }
    if password.is_none() {
        password = base.password().map(dec).transpose()?.map(Secret);
    }
    let _ = base.set_username("");
    let _ = base.set_password(None);
    Ok((username, password))
}

/// The HTTP client: rustls, the configured timeouts, plus the optional CA
/// bundle and client identity (mutual TLS).
fn http_client(cfg: &RegistryConfig) -> Result<reqwest::Client, RegistryError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("kafka-pg-sink/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &cfg.ca_file {
        for c in ca_certificates(ca)? {
            builder = builder.add_root_certificate(c);
        }
    }
    if let Some(id) = &cfg.client_identity_file {
        builder = builder.identity(client_identity(id)?);
    }
    builder
        .build()
        .map_err(|e| RegistryError::Config(format!("http client: {e}")))
}

fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, RegistryError> {
    let err = |e: &dyn fmt::Display| file_error("ca_file", path, e);
    let pem = std::fs::read(path).map_err(|e| err(&e))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| err(&e))?;
    if certs.is_empty() {
        return Err(err(&"no PEM certificate in it"));
    }
    Ok(certs)
}

fn client_identity(path: &Path) -> Result<reqwest::Identity, RegistryError> {
    let err = |e: &dyn fmt::Display| file_error("client_identity_file", path, e);
    let pem = std::fs::read(path).map_err(|e| err(&e))?;
    reqwest::Identity::from_pem(&pem).map_err(|e| err(&e))
}

/// A config file that cannot be read or used: names the setting and path.
fn file_error(setting: &str, path: &Path, e: &dyn fmt::Display) -> RegistryError {
    RegistryError::Config(format!("{setting} {}: {e}", path.display()))
}

/// reqwest's error text plus its sources ("connection refused" is a source).
/// The URL in it never carries credentials (moved out in `new`).
fn error_chain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparsable>".into(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let h = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let mut cfg =
            RegistryConfig::new("https://alice:s3cr%40t@registry.example:8081/apis/ccompat/v7");
        cfg.timeout = Duration::from_secs(1);
        let c = RegistryClient::new(&cfg).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr"), "{dbg}");
        assert!(dbg.contains("alice"), "{dbg}");
        assert_eq!(c.url(), "https://registry.example:8081/apis/ccompat/v7/");
        assert_eq!(c.password.as_ref().unwrap().expose(), "s3cr@t");
        let explicit = RegistryConfig {
            username: Some("bob".into()),
            password: Some(Secret::new("hunter2")),
            ..RegistryConfig::new("http://127.0.0.1:1")
        };
        assert!(!format!("{explicit:?}").contains("hunter2"));
        assert!(!format!("{:?}", RegistryClient::new(&explicit).unwrap()).contains("hunter2"));
        assert!(!redact("http://u:pw@h/").contains("pw"));
    }

    #[test]
    fn endpoints_escape_subjects() {
        let c = RegistryClient::new(&RegistryConfig::new("http://h:1/apis/ccompat/v7")).unwrap();
        assert_eq!(
            c.endpoint(&["subjects", "a/b c", "versions", "1"]).as_str(),
            "http://h:1/apis/ccompat/v7/subjects/a%2Fb%20c/versions/1"
        );
        let c = RegistryClient::new(&RegistryConfig::new("http://h:1")).unwrap();
        assert_eq!(
            c.endpoint(&["schemas", "ids", "3"]).as_str(),
            "http://h:1/schemas/ids/3"
        );
    }

    #[test]
    fn bad_config_is_a_config_error() {
        assert!(matches!(
            RegistryClient::new(&RegistryConfig::new("ftp://x")),
            Err(RegistryError::Config(_))
        ));
        let cfg = RegistryConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..RegistryConfig::new("https://x")
        };
        assert!(matches!(
            RegistryClient::new(&cfg),
            Err(RegistryError::Config(_))
        ));
    }

    /// A one-connection-per-answer fake registry: answers each request with
    /// the next canned (status, body) and records the request heads.
    async fn fake(
        answers: Vec<(u16, &'static str)>,
    ) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/apis/ccompat/v7", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut heads = Vec::new();
            for (status, body) in answers {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = sock.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                heads.push(String::from_utf8_lossy(&buf).into_owned());
                if status == 0 {
                    // Never answer: the client must time out.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                sock.write_all(resp.as_bytes()).await.unwrap();
            }
            heads
        });
        (url, task)
    }

    /// The fake registry's answers, in the order the test below asks.
    const STATUS_ANSWERS: [(u16, &str); 11] = [
        (200, r#"{"schema":"\"long\""}"#),
        (
            404,
            r#"{"error_code":40403,"message":"Schema 2 not found"}"#,
        ),
        (404, "<html>no such path</html>"),
        (500, r#"{"error_code":50001,"message":"store down"}"#),
        (503, ""),
        (429, ""),
        (401, r#"{"error_code":401,"message":"Unauthorized"}"#),
        (200, r#"{"schema":"not json","schemaType":"AVRO"}"#),
        (200, r#"{"schema":"{}","schemaType":"XML"}"#),
        (409, r#"{"error_code":409,"message":"incompatible"}"#),
        (200, r#"{"id":42}"#),
    ];

    #[tokio::test]
    async fn statuses_map_to_poison_or_transient() {
        let (url, task) = fake(STATUS_ANSWERS.to_vec()).await;
        let cfg = RegistryConfig {
            username: Some("alice".into()),
            password: Some(Secret::new("s3cret")),
            ..RegistryConfig::new(url)
        };
        let c = RegistryClient::new(&cfg).unwrap();
        schema_lookups_map_statuses(&c).await;
        registrations_map_statuses(&c).await;
        requests_carry_basic_auth(&task.await.unwrap());
    }

    /// Answers 1-9: found, not found (poison), transient failures, unusable
    /// schemas (poison, not cached).
    async fn schema_lookups_map_statuses(c: &RegistryClient) {
        let s = c.schema(1).await.unwrap();
        assert_eq!(s.schema_type(), SchemaType::Avro);
        assert!(c.cached(1).is_some());
        let e = c.schema(2).await.unwrap_err();
        assert!(
            matches!(e, RegistryError::NotFound { id: 2 }) && e.is_poison(),
            "{e:?}"
        );
        for _ in 0..4 {
            let e = c.schema(3).await.unwrap_err();
            assert!(
                matches!(e, RegistryError::Unavailable(_)) && e.is_transient(),
                "{e:?}"
            );
        }
        let e = c.schema(3).await.unwrap_err();
        assert!(matches!(e, RegistryError::Unauthorized { status: 401 }) && e.is_transient());
        for _ in 0..2 {
            let e = c.schema(4).await.unwrap_err();
            assert!(
                matches!(e, RegistryError::Invalid(_)) && e.is_poison(),
                "{e:?}"
            );
            assert_eq!(e.schema_id(), Some(4));
        }
        assert!(c.cached(4).is_none(), "failures are not cached");
    }

    /// Answers 10-11: a rejected registration (neither poison nor
    /// transient), then one that returns its id.
    async fn registrations_map_statuses(c: &RegistryClient) {
        let e = c
            .register("s", SchemaType::Avro, "\"int\"")
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                RegistryError::Rejected {
                    status: 409,
                    error_code: Some(409),
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(!e.is_poison() && !e.is_transient());
        assert_eq!(
            c.register("a/b", SchemaType::Protobuf, "x").await.unwrap(),
            42
        );
    }

    fn requests_carry_basic_auth(heads: &[String]) {
        // "alice:s3cret" in base64, on every request; the password never in clear.
        for h in heads {
            assert!(h.contains("authorization: Basic YWxpY2U6czNjcmV0"), "{h}");
            assert!(!h.contains("s3cret"));
        }
        assert!(
            heads[0].starts_with("GET /apis/ccompat/v7/schemas/ids/1 HTTP/1.1"),
            "{}",
            heads[0]
        );
        assert!(
            heads[10].starts_with("POST /apis/ccompat/v7/subjects/a%2Fb/versions "),
            "{}",
            heads[10]
        );
        assert!(heads[10].contains("content-type: application/vnd.schemaregistry.v1+json"));
    }

    #[tokio::test]
    async fn a_silent_registry_times_out_as_unavailable() {
        let (url, _task) = fake(vec![(0, "")]).await;
        let cfg = RegistryConfig {
            timeout: Duration::from_millis(300),
            ..RegistryConfig::new(url)
        };
        let c = RegistryClient::new(&cfg).unwrap();
        let t = std::time::Instant::now();
        let e = c.schema(1).await.unwrap_err();
        assert!(matches!(e, RegistryError::Unavailable(_)), "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn references_are_resolved_transitively() {
        let (url, task) = fake(vec![
            (
                200,
                r#"{"schemaType":"PROTOBUF","schema":"syntax = \"proto3\"; import \"b.proto\"; message A { B b = 1; }","references":[{"name":"b.proto","subject":"b","version":1}]}"#,
            ),
            (
                200,
                r#"{"subject":"b","id":8,"version":1,"schemaType":"PROTOBUF","schema":"syntax = \"proto3\"; import \"c.proto\"; message B { C c = 1; }","references":[{"name":"c.proto","subject":"c","version":2}]}"#,
            ),
            (
                200,
                r#"{"subject":"c","id":9,"version":2,"schemaType":"PROTOBUF","schema":"syntax = \"proto3\"; message C { int64 x = 1; }"}"#,
            ),
        ])
        .await;
        let c = RegistryClient::new(&RegistryConfig::new(url)).unwrap();
        let s = c.schema(7).await.unwrap();
        // A { b: B { c: C { x: 5 } } } = 0a 04 0a 02 08 05
        let msg =
            crate::format::wire::encode_protobuf(7, &[0], &[0x0a, 0x04, 0x0a, 0x02, 0x08, 0x05]);
        let v = crate::format::decode(crate::format::Format::Protobuf, &msg, &s).unwrap();
        assert_eq!(v, serde_json::json!({"b": {"c": {"x": 5}}}));
        let heads = task.await.unwrap();
        assert!(heads[1].starts_with("GET /apis/ccompat/v7/subjects/b/versions/1 "));
        assert!(heads[2].starts_with("GET /apis/ccompat/v7/subjects/c/versions/2 "));
    }

    #[tokio::test]
    async fn connection_refused_is_unavailable() {
        // A port nothing listens on (bound then dropped).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c =
            RegistryClient::new(&RegistryConfig::new(format!("http://127.0.0.1:{port}"))).unwrap();
        let e = c.schema(1).await.unwrap_err();
        assert!(matches!(e, RegistryError::Unavailable(_)), "{e:?}");
        assert!(e.is_transient() && !e.is_poison());
    }
}
