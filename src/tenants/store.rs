//! Tenant and API-key queries. Each takes a connection so callers can run it inside their
//! own transaction.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::schema::{api_keys, tenants};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = tenants)]
pub struct TenantRow {
    pub id: Uuid,
    pub name: String,
    pub tier: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub send_rate_per_minute: Option<i32>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_keys)]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub role: String,
    pub prefix: String,
    pub secret_hash: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = tenants)]
pub struct TenantChanges {
    pub name: Option<String>,
    pub tier: Option<String>,
}

pub async fn insert_tenant(
    conn: &mut AsyncPgConnection,
    row: &TenantRow,
) -> QueryResult<TenantRow> {
    diesel::insert_into(tenants::table)
        .values(row)
        .returning(TenantRow::as_returning())
        .get_result(conn)
        .await
}

pub async fn get_tenant(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<TenantRow>> {
    tenants::table
        .find(id)
        .select(TenantRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Keyset page ordered by id (UUIDv7, so creation order): ids after `after`, at most `limit`.
pub async fn list_tenants(
    conn: &mut AsyncPgConnection,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<TenantRow>> {
    let mut q = tenants::table
        .select(TenantRow::as_select())
        .order(tenants::id.asc())
        .into_boxed();
    if let Some(after) = after {
        q = q.filter(tenants::id.gt(after));
    }
    q.limit(limit).load(conn).await
}

pub async fn update_tenant(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    changes: &TenantChanges,
) -> QueryResult<Option<TenantRow>> {
    if changes.name.is_none() && changes.tier.is_none() {
        return get_tenant(conn, id).await;
    }
    diesel::update(tenants::table.find(id))
        .set((changes, tenants::updated_at.eq(diesel::dsl::now)))
        .returning(TenantRow::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// Deletes the tenant and, by cascade, everything it owns. Returns whether it existed.
pub async fn delete_tenant(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<bool> {
    let n = diesel::delete(tenants::table.find(id))
        .execute(conn)
        .await?;
    Ok(n > 0)
}

pub async fn insert_key(conn: &mut AsyncPgConnection, row: &ApiKeyRow) -> QueryResult<ApiKeyRow> {
    diesel::insert_into(api_keys::table)
        .values(row)
        .returning(ApiKeyRow::as_returning())
        .get_result(conn)
        .await
}

pub async fn list_keys(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
) -> QueryResult<Vec<ApiKeyRow>> {
    api_keys::table
        .filter(api_keys::tenant_id.eq(tenant_id))
        .select(ApiKeyRow::as_select())
        .order(api_keys::created_at.asc())
        .load(conn)
        .await
}

pub async fn find_active_key_by_prefix(
    conn: &mut AsyncPgConnection,
    prefix: &str,
) -> QueryResult<Option<ApiKeyRow>> {
    api_keys::table
        .filter(api_keys::prefix.eq(prefix))
        .filter(api_keys::revoked_at.is_null())
        .select(ApiKeyRow::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn find_active_key(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<ApiKeyRow>> {
    api_keys::table
        .find(id)
        .filter(api_keys::revoked_at.is_null())
        .select(ApiKeyRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Records use unless it was recorded in the last minute (the filter keeps concurrent
/// requests from writing twice; callers skip the call when the row they hold is fresh).
pub async fn touch_key(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<()> {
    let stale = Utc::now() - chrono::Duration::minutes(1);
    diesel::update(
        api_keys::table.find(id).filter(
            api_keys::last_used_at
                .is_null()
                .or(api_keys::last_used_at.lt(stale)),
        ),
    )
    .set(api_keys::last_used_at.eq(diesel::dsl::now))
    .execute(conn)
    .await
    .map(|_| ())
}

/// Revokes a key of the tenant. Returns whether an active key was revoked.
pub async fn revoke_key(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    key_id: Uuid,
) -> QueryResult<bool> {
    let n = diesel::update(
        api_keys::table
            .find(key_id)
            .filter(api_keys::tenant_id.eq(tenant_id))
            .filter(api_keys::revoked_at.is_null()),
    )
    .set(api_keys::revoked_at.eq(diesel::dsl::now))
    .execute(conn)
    .await?;
    Ok(n > 0)
}

/// The id of the tenant's latest event (0: none yet).
pub async fn last_event_id(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<i64> {
    Ok(tenants::table
        .find(id)
        .select(tenants::last_event_id)
        .first(conn)
        .await
        .optional()?
        .unwrap_or(0))
}

/// Sets (or with `None` clears) the tenant's own send rate.
pub async fn set_send_rate(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    rate: Option<i32>,
) -> QueryResult<Option<TenantRow>> {
    diesel::update(tenants::table.find(id))
        .set((
            tenants::send_rate_per_minute.eq(rate),
            tenants::updated_at.eq(diesel::dsl::now),
        ))
        .returning(TenantRow::as_returning())
        .get_result(conn)
        .await
        .optional()
}
