//! Databases for tests and benchmarks: one fresh, empty database per caller, on the server
//! `TEST_DATABASE_URL` (or `DATABASE_URL`) names, else on a private cluster the tests start
//! from the machine's PostgreSQL binaries. Shared by the API tests, the binary tests and the
//! benchmarks (`#[path]`-included).

#![allow(dead_code)]

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

/// A Postgres server URL (database part ignored) that tests may create databases on.
pub async fn test_server_url() -> String {
    if let Ok(url) = std::env::var("TEST_DATABASE_URL").or_else(|_| std::env::var("DATABASE_URL")) {
        return url;
    }
    private_test_cluster().await
}

/// The shared private cluster under `target/test-private-pg`, started (or adopted) once.
pub async fn private_test_cluster() -> String {
    // Test processes run in parallel: one at a time starts (or adopts) the shared cluster.
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-private-pg");
    std::fs::create_dir_all(&dir).expect("test cluster dir");
    let lock = std::fs::File::create(dir.join("start.lock")).expect("lock file");
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("flock");
    let cluster = wagate::db::private_cluster::PrivateCluster::start(&dir)
        .await
        .expect("a PostgreSQL for the tests: set TEST_DATABASE_URL or install PostgreSQL");
    cluster.url()
}

/// The server URL with its database replaced by `db`, keeping any query string.
pub fn with_database(server_url: &str, db: &str) -> String {
    let (base, query) = match server_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (server_url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut url = format!("{}/{db}", &base[..host_end]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// Creates an empty database named `<prefix>_<uuid>` and returns its URL. Test databases
/// use the prefix `wagate_test` (the test script drops those left by earlier runs).
pub async fn fresh_database_named(prefix: &str) -> String {
    let server = test_server_url().await;
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut conn = AsyncPgConnection::establish(&with_database(&server, "postgres"))
        .await
        .expect("connect to the test Postgres");
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    with_database(&server, &name)
}

/// Creates an empty test database and returns its URL.
pub async fn fresh_database() -> String {
    fresh_database_named("wagate_test").await
}
