//! The zero-config database: with no `database.url`, wagate runs its own PostgreSQL cluster from
//! the machine's PostgreSQL binaries under `<data_dir>/postgres`, reachable only through a unix
//! socket inside that directory (no TCP port). It is initialised on first start, reused after,
//! and stopped on shutdown. PostgreSQL refuses to run as root, so as root the cluster runs as the
//! `postgres` system account. That account may be unable to reach the data directory (root's
//! home is mode 0700, and so are most temporary directories): then the cluster lives in the
//! account's own home, and `<data_dir>/postgres` is a symbolic link to it, so the same data
//! directory finds the same cluster again.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};
use sha2::Digest as _;

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
        let run_as = unprivileged_account()?;
        let dir = cluster_dir(&data_dir, run_as)?;
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
        socket_url(&self.dir, db)
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

/// The URL of database `db` on the server whose unix socket is in `socket_dir`.
///
/// The host part stays empty: with `postgres://postgres@localhost/…?host=/dir`, libpq-style
/// parsers (tokio-postgres among them) see two hosts, TCP `localhost` first, and would use
/// whatever other server accepts `postgres` on 127.0.0.1:5432 instead of ours.
pub fn socket_url(socket_dir: &Path, db: &str) -> String {
    let dir = socket_dir.display().to_string();
    let dir = percent_encoding::utf8_percent_encode(&dir, percent_encoding::NON_ALPHANUMERIC);
    format!("postgres://postgres@/{db}?host={dir}")
}

/// Where the cluster of `data_dir` lives: `<data_dir>/postgres`, or where that link points.
///
/// When the cluster runs as another account (we are root) that cannot traverse the path to
/// `data_dir`, a new cluster goes into that account's home directory instead, and
/// `<data_dir>/postgres` becomes a link to it.
fn cluster_dir(data_dir: &Path, run_as: Option<(u32, u32)>) -> anyhow::Result<PathBuf> {
    let link = data_dir.join("postgres");
    if let Ok(meta) = std::fs::symlink_metadata(&link)
        && meta.file_type().is_symlink()
    {
        let target = std::fs::read_link(&link)
            .with_context(|| format!("reading the link {}", link.display()))?;
        let target = if target.is_absolute() {
            target
        } else {
            data_dir.join(target)
        };
        if let Some((uid, gid)) = run_as
            && !reachable(&target, uid, gid)
        {
            bail!(
                "the private database {} (linked from {}) cannot be reached by the postgres \
                 account: make every directory above it traversable (chmod o+x) or set \
                 database.url",
                target.display(),
                link.display()
            );
        }
        return Ok(target);
    }
    let Some((uid, gid)) = run_as else {
        return Ok(link);
    };
    if reachable(data_dir, uid, gid) {
        return Ok(link);
    }
    if link.join("PG_VERSION").is_file() {
        bail!(
            "the private database {} cannot be reached by the postgres account (a directory \
             above it is not traversable by others): chmod o+x the directories above it, move \
             the data directory (--data-dir), or set database.url",
            link.display()
        );
    }
    // Nothing worth keeping is there: at most an empty folder an earlier, failed start made.
    if link.exists() {
        std::fs::remove_dir(&link).with_context(|| {
            format!(
                "{} is in the way of the private database's link; remove it",
                link.display()
            )
        })?;
    }
    let home = nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.dir)
        .filter(|h| h.is_absolute() && reachable(h, uid, gid))
        .with_context(|| {
            format!(
                "the postgres account cannot reach {} (a directory above it is mode 0700, as \
                 root's home is) and has no home directory of its own to hold the database: \
                 use a --data-dir the postgres account can traverse, or set database.url",
                data_dir.display()
            )
        })?;
    let parent = home.join("wagate-clusters");
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    nix::unistd::chown(&parent, Some(uid.into()), Some(gid.into()))
        .with_context(|| format!("giving {} to the postgres account", parent.display()))?;
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o700))?;
    let digest = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let target = parent.join(format!("cluster-{}", &hex::encode(digest)[..16]));
    std::os::unix::fs::symlink(&target, &link).with_context(|| {
        format!(
            "linking {} to the private database in {}",
            link.display(),
            target.display()
        )
    })?;
    tracing::info!(
        data_dir = %data_dir.display(),
        cluster = %target.display(),
        "the postgres account cannot reach the data directory: the private database lives in its home"
    );
    Ok(target)
}

/// Whether the account `uid`/`gid` may traverse every directory down to `path` and enter it,
/// judged by the mode bits as the kernel would for a process with no supplementary groups
/// (how [`PrivateCluster::run`] starts the tools: `Command::uid` drops root's groups).
fn reachable(path: &Path, uid: u32, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    path.ancestors().all(|dir| {
        let Ok(meta) = std::fs::metadata(dir) else {
            // Not there yet: it will be created by root, for the account, with mode 0700.
            return true;
        };
        let mode = meta.mode();
        let bit = if meta.uid() == uid {
            0o100
        } else if meta.gid() == gid {
            0o010
        } else {
            0o001
        };
        mode & bit != 0
    })
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
