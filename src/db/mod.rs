//! Postgres: the connection pool and the embedded migrations.

pub mod group_commit;
pub mod private_cluster;

use std::time::Duration;

use anyhow::Context;
use diesel::Connection;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, PoolableConnection as _, RecyclingMethod,
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub type DbPool = diesel_async::pooled_connection::bb8::Pool<AsyncPgConnection>;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Any 64-bit number unique to wagate: the advisory lock that serialises migrations when
/// several nodes boot at once.
const MIGRATION_LOCK_ID: i64 = 0x7761_6761_7465_0001;

/// Whether an insert or update hit a unique index: the callers turn it into their own 409
/// (a shortcut or an email already taken) rather than an internal error.
pub fn is_unique_violation(e: &diesel::result::Error) -> bool {
    matches!(
        e,
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)
    )
}

pub async fn build_pool(url: &str, size: u32, connect_timeout: Duration) -> anyhow::Result<DbPool> {
    let mut config = ManagerConfig::default();
    // A connection is checked on checkout without a round trip: one whose driver task has
    // ended (the server closed it, or the runtime it was made on is gone) is closed, and bb8
    // replaces it instead of handing out a connection whose first query fails with
    // "connection closed" (a 503 for a request that had nothing wrong with it).
    config.recycling_method =
        RecyclingMethod::CustomFunction(Box::new(|conn: &mut AsyncPgConnection| {
            Box::pin(async move {
                if conn.is_broken() {
                    Err(diesel::result::Error::BrokenTransactionManager)
                } else {
                    Ok(())
                }
            })
        }));
    config.custom_setup = Box::new(|url| {
        Box::pin(async move {
            use diesel_async::AsyncConnection as _;
            let mut conn = AsyncPgConnection::establish(url).await?;
            conn.set_instrumentation(StatementCounter::default());
            Ok(conn)
        })
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
    let pool = bb8::Pool::builder()
        .max_size(size)
        .min_idle(Some(1))
        .connection_timeout(connect_timeout)
        .test_on_check_out(true)
        .build(manager)
        .await
        .context("creating the database pool")?;
    Ok(pool)
}

/// Counts a pooled connection's statements and transactions into the metrics
/// (`wagate_db_statements_total`, `wagate_db_transactions_total`): what a request or a message
/// costs the database is read off them, by the benchmarks and in production alike.
#[derive(Default)]
struct StatementCounter {
    /// The open transaction's depth (0: none; a statement then is a transaction of its own).
    depth: u32,
    /// The transaction event just seen is followed by its own BEGIN/COMMIT/ROLLBACK/SAVEPOINT
    /// statement, which is not counted as a statement.
    control_next: bool,
}

impl diesel::connection::Instrumentation for StatementCounter {
    fn on_connection_event(&mut self, event: diesel::connection::InstrumentationEvent<'_>) {
        use diesel::connection::InstrumentationEvent as E;
        match event {
            E::BeginTransaction { depth, .. } => {
                self.depth = depth.get();
                self.control_next = true;
            }
            E::CommitTransaction { depth, .. } | E::RollbackTransaction { depth, .. } => {
                if depth.get() == 1 {
                    crate::metrics::DB_TRANSACTIONS.inc();
                }
                self.depth = depth.get() - 1;
                self.control_next = true;
            }
            E::StartQuery { .. } => {
                if std::mem::take(&mut self.control_next) {
                    return;
                }
                crate::metrics::DB_STATEMENTS.inc();
                if self.depth == 0 {
                    crate::metrics::DB_TRANSACTIONS.inc();
                }
            }
            _ => {}
        }
    }
}

/// Runs the pending migrations under a Postgres advisory lock. Diesel's migration harness is
/// synchronous, so it runs on a thread of its own with its own small runtime.
pub async fn run_migrations(url: &str) -> anyhow::Result<Vec<String>> {
    let url = url.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("wagate-migrations".into())
        .spawn(move || {
            let _ = tx.send(run_migrations_blocking(&url));
        })
        .context("spawning the migration thread")?;
    rx.await.context("the migration thread died")?
}

fn run_migrations_blocking(url: &str) -> anyhow::Result<Vec<String>> {
    use diesel::RunQueryDsl;
    let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(url)
        .context("connecting to the database to migrate it")?;
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_ID})"))
        .execute(&mut conn)
        .context("taking the migration lock")?;
    let applied = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|versions| versions.iter().map(ToString::to_string).collect::<Vec<_>>())
        .map_err(|e| anyhow::anyhow!("running migrations: {e}"));
    // The lock is released with the session anyway; unlocking is a courtesy to the pool.
    let _ = diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_ID})"))
        .execute(&mut conn);
    applied
}

/// A statement whose SQL text is the same on every call, prepared once per connection.
///
/// Diesel prepares every `UPDATE`, upsert and raw `sql_query` afresh on each execution
/// (it cannot know their SQL is stable), which costs an extra round trip and a full parse
/// and plan in Postgres each time: on the hot paths (session state, events, key-store
/// writes) that was most of the database's CPU. Wrapped statements are cached by their SQL
/// text instead, so only wrap a statement whose text takes a bounded number of shapes (no
/// variable-length `VALUES` lists).
#[derive(Debug, Clone, Copy)]
pub struct Prepared<Q>(pub Q);

/// `.prepared()`: see [`Prepared`].
pub trait PrepareOnce: Sized {
    fn prepared(self) -> Prepared<Self> {
        Prepared(self)
    }
}

impl<Q> PrepareOnce for Q {}

impl<Q: diesel::query_builder::QueryFragment<diesel::pg::Pg>>
    diesel::query_builder::QueryFragment<diesel::pg::Pg> for Prepared<Q>
{
    fn walk_ast<'b>(
        &'b self,
        pass: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &diesel::pg::Pg) -> diesel::QueryResult<bool> {
        Ok(true)
    }
}

// No static query id: the statement cache keys it by its SQL text and bind types.
impl<Q> diesel::query_builder::QueryId for Prepared<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: diesel::query_builder::Query> diesel::query_builder::Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}
