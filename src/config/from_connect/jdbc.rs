//! PgJDBC connection URLs, read into a `postgres://` URL.

/// A PgJDBC URL: `jdbc:postgresql://host[:port][,host2[:port]]/db?params`,
/// `jdbc:postgresql:db` or `jdbc:postgresql:/db` (localhost).
pub(super) struct Jdbc {
    pub(super) hosts: Vec<(String, Option<u16>)>,
    /// `user:password@` before a host (dropped).
    pub(super) had_credentials: bool,
    database: String,
    pub(super) params: Vec<(String, String)>,
}

impl Jdbc {
    pub(super) fn parse(url: &str) -> Result<Jdbc, String> {
        let rest = url
            .strip_prefix("jdbc:postgresql:")
            .ok_or_else(|| format!("`{url}` is not a jdbc:postgresql: URL"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, q),
            None => (rest, ""),
        };
        let mut had_credentials = false;
        let (hosts, database) = match rest.strip_prefix("//") {
            Some(r) => {
                let (h, db) = r.split_once('/').unwrap_or((r, ""));
                let mut hosts = Vec::new();
                for spec in h.split(',').filter(|s| !s.is_empty()) {
                    // Credentials before `@` are never copied.
                    let spec = match spec.rsplit_once('@') {
                        Some((_, h)) => {
                            had_credentials = true;
                            h
                        }
                        None => spec,
                    };
                    hosts.push(split_host_port(spec)?);
                }
                (hosts, db.to_string())
            }
            None => (Vec::new(), rest.trim_start_matches('/').to_string()),
        };
        let hosts = if hosts.is_empty() {
            vec![("localhost".to_string(), None)]
        } else {
            hosts
        };
        let params = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        Ok(Jdbc {
            hosts,
            had_credentials,
            database: percent_decode(&database),
            params,
        })
    }

    /// The first host's `postgres://` URL with `user` and `params`.
    pub(super) fn to_postgres_url(
        &self,
        user: Option<&str>,
        params: &[(String, String)],
    ) -> String {
        let (host, port) = &self.hosts[0];
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        let Ok(mut u) = url::Url::parse(&format!("postgres://{host}{port}")) else {
            return format!("postgres://{host}{port}/{}", self.database);
        };
        if let Some(user) = user.filter(|u| !u.is_empty()) {
            let _ = u.set_username(user);
        }
        u.set_path(&self.database);
        if !params.is_empty() {
            u.query_pairs_mut().extend_pairs(params);
        }
        u.to_string()
    }

    /// Whether the URL sets the parameter `name`.
    pub(super) fn has_param(&self, name: &str) -> bool {
        self.params.iter().any(|(k, _)| k == name)
    }
}

fn split_host_port(spec: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(r) = spec.strip_prefix('[') {
        // [IPv6]:port
        let (h, after) = r
            .split_once(']')
            .ok_or_else(|| format!("connection.url host `{spec}`: unclosed `[`"))?;
        (format!("[{h}]"), after.strip_prefix(':'))
    } else {
        match spec.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (spec.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("connection.url port `{p}` is not a number"))?,
        ),
        None => None,
    };
    Ok((host, port))
}

/// `s` with its `%xx` escapes (and `+`) decoded.
pub(super) fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}
