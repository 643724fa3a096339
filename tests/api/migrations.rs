use crate::helpers::fresh_database;

/// Two nodes booting at once on an empty database: the advisory lock lets one migrate while the
/// other waits, then finds nothing left to do. Without the lock both would create the same
/// tables and one would fail.
#[actix_web::test]
async fn concurrent_boots_migrate_once() {
    let url = fresh_database().await;
    let (a, b, c) = tokio::join!(
        wagate::db::run_migrations(&url),
        wagate::db::run_migrations(&url),
        wagate::db::run_migrations(&url)
    );
    let applied: Vec<Vec<String>> = [a, b, c]
        .into_iter()
        .map(|r| r.expect("every node boots"))
        .collect();
    let migrated = applied.iter().filter(|v| !v.is_empty()).count();
    assert_eq!(
        migrated, 1,
        "exactly one node applied the migrations: {applied:?}"
    );
    assert!(
        wagate::db::run_migrations(&url)
            .await
            .expect("again")
            .is_empty(),
        "nothing pending after"
    );
}
