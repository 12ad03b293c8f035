//! A login role with only the rights docs/operations.md lists for `run`,
//! and a run expected to refuse at startup.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{block_on_in_drop, sink_binary, unique, SinkConfig, TestDb};

const STARTUP: Duration = Duration::from_secs(60);

/// A login role for one test, dropped (with its grants) at the end.
pub struct Role {
    pub name: String,
    db: String,
}

impl Role {
    pub async fn new(db: &TestDb) -> Role {
        let name = unique("kpgs_role");
        db.exec(&format!("CREATE ROLE {name} LOGIN")).await;
        Role {
            name,
            db: db.url.clone(),
        }
    }

    /// `setup` with `owner` (the tables' owner), then a role with the
    /// rights for `run` that `run_as` connects as.
    pub async fn after_setup(db: &TestDb, owner: &SinkConfig, run_as: &SinkConfig) -> Role {
        let (ok, out) = owner.cli(&["setup"], &[]);
        assert!(ok, "setup as the owner: {out}");
        let role = Role::new(db).await;
        role.grant_run_rights(db).await;
        run_as.rewrite(
            "postgres://postgres@",
            &format!("postgres://{}@", role.name),
        );
        role
    }

    /// The rights docs/operations.md lists for `run`.
    pub async fn grant_run_rights(&self, db: &TestDb) {
        let r = &self.name;
        for sql in [
            format!("GRANT USAGE ON SCHEMA public TO {r}"),
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {r}"),
            format!("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {r}"),
        ] {
            db.exec(&sql).await;
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let (name, url) = (self.name.clone(), self.db.clone());
        block_on_in_drop(async move {
            if let Ok(pool) = sqlx::PgPool::connect(&url).await {
                for sql in [format!("DROP OWNED BY {name}"), format!("DROP ROLE {name}")] {
                    let _ = sqlx::query(&sql).execute(&pool).await;
                }
            }
        });
    }
}

/// Runs `run` with `cfg` and expects it to exit by itself within the
/// deadline (a startup refusal); its output.
pub fn run_expecting_exit(cfg: &SinkConfig) -> String {
    let mut child = Command::new(sink_binary())
        .arg("--config")
        .arg(&cfg.path)
        .arg("run")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!status.success(), "run exited 0: {text}");
            return text;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("run did not stop at startup within {STARTUP:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
