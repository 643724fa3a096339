//! Stored media in Postgres. Metadata queries never read the bytes.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::schema::media;

/// A stored file without its bytes.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = media)]
pub struct MediaInfo {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub session_id: Uuid,
    pub kind: String,
    pub mime_type: String,
    pub file_name: Option<String>,
    pub size: i64,
    pub sha256: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = media)]
pub struct NewMedia<'a> {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub session_id: Uuid,
    pub kind: &'a str,
    pub mime_type: &'a str,
    pub file_name: Option<&'a str>,
    pub size: i64,
    pub sha256: &'a str,
    pub bytes: &'a [u8],
}

pub async fn insert(conn: &mut AsyncPgConnection, new: &NewMedia<'_>) -> QueryResult<MediaInfo> {
    diesel::insert_into(media::table)
        .values(new)
        .returning(MediaInfo::as_returning())
        .get_result(conn)
        .await
}

/// A file of the session (another session's, or another tenant's, is not found).
pub async fn find(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    id: Uuid,
) -> QueryResult<Option<MediaInfo>> {
    media::table
        .filter(media::id.eq(id))
        .filter(media::session_id.eq(session_id))
        .select(MediaInfo::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn bytes(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    id: Uuid,
) -> QueryResult<Option<Vec<u8>>> {
    media::table
        .filter(media::id.eq(id))
        .filter(media::session_id.eq(session_id))
        .select(media::bytes)
        .first(conn)
        .await
        .optional()
}

/// Deletes uploads older than `before` that no queued message still has to send.
pub async fn delete_unneeded(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    limit: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM media WHERE id IN ( \
           SELECT f.id FROM media f WHERE f.created_at < $1 \
           AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.body ? 'media_id' \
                           AND m.body ->> 'media_id' = f.id::text AND m.status = 'queued') \
           LIMIT $2)",
    )
    .bind::<sql_types::Timestamptz, _>(before)
    .bind::<sql_types::BigInt, _>(limit)
    .execute(conn)
    .await
}

/// Deletes a session's media (a purge).
pub async fn delete_for_session(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
) -> QueryResult<usize> {
    diesel::delete(media::table.filter(media::session_id.eq(session_id)))
        .execute(conn)
        .await
}
