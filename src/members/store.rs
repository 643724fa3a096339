//! Members in Postgres.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::schema::members;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = members)]
pub struct MemberRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub email: String,
    pub name: String,
    pub role: String,
    pub password_hash: String,
    pub disabled: bool,
    pub credentials_version: i32,
    pub last_login_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn get(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<MemberRow>> {
    members::table
        .find(id)
        .select(MemberRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A member whose login tokens stand: present and not disabled.
pub async fn find_active(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<MemberRow>> {
    members::table
        .find(id)
        .filter(members::disabled.eq(false))
        .select(MemberRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The members a login may mean: by email, in the named tenant or in any (a few at most).
pub async fn by_email(
    conn: &mut AsyncPgConnection,
    email: &str,
    tenant: Option<Uuid>,
) -> QueryResult<Vec<MemberRow>> {
    let mut q = members::table
        .filter(members::email.eq(email))
        .order(members::created_at.asc())
        .limit(5)
        .select(MemberRow::as_select())
        .into_boxed();
    if let Some(t) = tenant {
        q = q.filter(members::tenant_id.eq(t));
    }
    q.load(conn).await
}

pub async fn touch_login(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<()> {
    diesel::update(members::table.find(id))
        .set(members::last_login_at.eq(Utc::now()))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Enabled owners of `tenant` other than `except`, with their rows locked: a change that would
/// leave a tenant without an owner is refused, and two such changes at once cannot both pass.
pub async fn other_owners_locked(
    conn: &mut AsyncPgConnection,
    tenant: Uuid,
    except: Uuid,
) -> QueryResult<i64> {
    let ids: Vec<Uuid> = members::table
        .filter(members::tenant_id.eq(tenant))
        .filter(members::role.eq("owner"))
        .filter(members::disabled.eq(false))
        .filter(members::id.ne(except))
        .select(members::id)
        .for_update()
        .load(conn)
        .await?;
    Ok(ids.len() as i64)
}
