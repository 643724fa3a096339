//! The zero-config database: with no `database.url`, wagate runs its own PostgreSQL cluster from
//! the machine's PostgreSQL binaries under `<data_dir>/postgres`, reachable only through a unix
//! socket inside that directory (no TCP port). It is initialised on first start, reused after,
//! and stopped on shutdown. PostgreSQL refuses to run as root, so as root the cluster runs as the
//! `postgres` system account.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};

const DATABASE_NAME: &str = "wagate";

/// A running private cluster. Dropping it does not stop it; call [`PrivateCluster::stop`].
#[derive(Debug, Clone)]
pub struct PrivateCluster {
    bindir: PathBuf,
    dir: PathBuf,
    run_as: Option<(u32, u32)>,
}

/// The machine has no PostgreSQL server binaries: say what to do about it.
#[derive(Debug, thiserror::Error)]
#[error(
    "no PostgreSQL server binaries (initdb, pg_ctl) were found for the private database. \
     Install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql`; Alpine: `apk add postgresql`; \
     macOS: `brew install postgresql`) or point wagate at a database with database.url \
     (APP_DATABASE__URL=postgres://user@host/db)"
)]
pub struct NoPostgresBinaries;

impl PrivateCluster {
    /// Initialises (first run) and starts the cluster, or adopts one still running from a
    /// previous start, and makes sure the `wagate` database exists.
    pub async fn start(data_dir: &Path) -> anyhow::Result<PrivateCluster> {
        let bindir = find_bindir().ok_or(NoPostgresBinaries)?;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let data_dir = data_dir
            .canonicalize()
            .with_context(|| format!("resolving {}", data_dir.display()))?;
        let dir = data_dir.join("postgres");
        let run_as = unprivileged_account()?;
        let cluster = PrivateCluster {
            bindir,
            dir,
            run_as,
        };
        let starter = cluster.clone();
        tokio::task::spawn_blocking(move || starter.init_and_start())
            .await
            .context("private database start-up task")??;
        cluster.ensure_database().await?;
        Ok(cluster)
    }

    /// The URL of the `wagate` database over the unix socket.
    pub fn url(&self) -> String {
        self.url_for(DATABASE_NAME)
    }

    fn url_for(&self, db: &str) -> String {
        format!(
            "postgres://postgres@localhost/{db}?host={}",
            self.dir.display()
        )
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn init_and_start(&self) -> anyhow::Result<()> {
        if !self.dir.join("PG_VERSION").is_file() {
            self.init()?;
        }
        if self.is_running()? {
            tracing::info!(dir = %self.dir.display(), "adopting the private database left running");
            return Ok(());
        }
        // A crash leaves postmaster.pid behind; with no server running it is stale.
        let pid_file = self.dir.join("postmaster.pid");
        if pid_file.exists() {
            tracing::warn!("removing a stale postmaster.pid from a previous crash");
            std::fs::remove_file(&pid_file).context("removing stale postmaster.pid")?;
        }
        let options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c max_connections=200",
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        let out = self.run(
            "pg_ctl",
            &[
                "start".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-D".as_ref(),
                self.dir.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
            ],
        )?;
        if !out.status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = tail.lines().rev().take(10).collect::<Vec<_>>().join("\n");
            bail!(
                "starting the private database failed: {}\n{}\n{tail}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tracing::info!(dir = %self.dir.display(), "private database started");
        Ok(())
    }

    fn init(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = self.run_as {
            nix::unistd::chown(&self.dir, Some(uid.into()), Some(gid.into())).with_context(
                || format!("giving {} to the postgres account", self.dir.display()),
            )?;
        }
        tracing::info!(dir = %self.dir.display(), "initialising the private database");
        let out = self.run(
            "initdb",
            &[
                "-D".as_ref(),
                self.dir.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-instructions".as_ref(),
            ],
        )?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn is_running(&self) -> anyhow::Result<bool> {
        let out = self.run(
            "pg_ctl",
            &["status".as_ref(), "-D".as_ref(), self.dir.as_os_str()],
        )?;
        // pg_ctl status: 0 running, 3 not running, 4 no accessible data directory.
        Ok(out.status.code() == Some(0))
    }

    async fn ensure_database(&self) -> anyhow::Result<()> {
        use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
        let mut conn = AsyncPgConnection::establish(&self.url_for("postgres"))
            .await
            .context("connecting to the private database")?;
        #[derive(diesel::QueryableByName)]
        struct Exists {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            exists: bool,
        }
        let found: Exists = diesel::sql_query(format!(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}') AS exists"
        ))
        .get_result(&mut conn)
        .await?;
        if !found.exists {
            diesel::sql_query(format!("CREATE DATABASE {DATABASE_NAME}"))
                .execute(&mut conn)
                .await
                .context("creating the wagate database")?;
        }
        Ok(())
    }

    /// Stops the cluster (fast mode: open sessions are closed, nothing committed is lost).
    pub fn stop(&self) -> anyhow::Result<()> {
        let out = self.run(
            "pg_ctl",
            &[
                "stop".as_ref(),
                "-w".as_ref(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-D".as_ref(),
                self.dir.as_os_str(),
            ],
        )?;
        if !out.status.success() {
            bail!(
                "stopping the private database: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tracing::info!("private database stopped");
        Ok(())
    }

    fn run(&self, tool: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<Output> {
        let mut cmd = Command::new(self.bindir.join(tool));
        cmd.args(args).current_dir("/").env("LC_ALL", "C");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
            // The child may not read root's groups or home; give it a neutral environment.
            cmd.env("HOME", &self.dir);
        }
        cmd.output().with_context(|| format!("running {tool}"))
    }
}

/// As root, the `postgres` account runs the cluster; otherwise we run it ourselves.
fn unprivileged_account() -> anyhow::Result<Option<(u32, u32)>> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(user)) => Ok(Some((user.uid.as_raw(), user.gid.as_raw()))),
        _ => bail!(
            "wagate runs as root and PostgreSQL refuses to: create a `postgres` system account \
             (installing the postgresql package does) or set database.url"
        ),
    }
}

/// Where initdb and pg_ctl live: `WAGATE_PG_BINDIR`, `pg_config --bindir`, the usual
/// versioned folders (newest first), then PATH.
pub fn find_bindir() -> Option<PathBuf> {
    let has_tools = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("WAGATE_PG_BINDIR").map(PathBuf::from) {
        return has_tools(&dir).then_some(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_tools(&dir) {
            return Some(dir);
        }
    }
    for root in [
        "/usr/lib/postgresql",
        "/usr/local/pgsql",
        "/opt/homebrew/opt",
    ] {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        let mut candidates: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let version = e
                    .file_name()
                    .to_string_lossy()
                    .split('.')
                    .next()?
                    .parse()
                    .ok()?;
                Some((version, e.path().join("bin")))
            })
            .filter(|(_, bin)| has_tools(bin))
            .collect();
        candidates.sort();
        if let Some((_, bin)) = candidates.pop() {
            return Some(bin);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| has_tools(d))
}
