//! What a board tells: full-text search, statistics per board and column, activity.

use actix_web::{HttpResponse, get, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types;
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::store;
use super::{BoardPath, CardPath, ColumnPath};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::http::openapi::CommonErrors;
use crate::http::pagination::{Page, parse_limit};
use crate::schema::card_activity;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Words as people type them (`websearch_to_tsquery`: `"exact phrase"`, `or`, `-not`),
    /// matched with English stemming.
    pub q: String,
}

#[derive(Debug, Serialize, QueryableByName, ToSchema)]
pub struct SearchHit {
    #[diesel(sql_type = sql_types::Uuid)]
    pub card_id: Uuid,
    #[diesel(sql_type = sql_types::Text)]
    pub title: String,
    #[diesel(sql_type = sql_types::Uuid)]
    pub column_id: Uuid,
    /// `card` (title or description), `comment` or `message` (the linked chat's).
    #[diesel(sql_type = sql_types::Text)]
    pub matched_in: String,
    /// The matching text with the words in `<b>…</b>`.
    #[diesel(sql_type = sql_types::Text)]
    pub snippet: String,
    #[diesel(sql_type = sql_types::Float4)]
    pub rank: f32,
}

/// Titles and descriptions and comments are indexed (GIN over stored `tsvector`s); a linked
/// chat's messages are matched on the fly, the newest few per card, so the messages table
/// carries no extra index on the hot path.
const SEARCH: &str = "\
WITH q AS (SELECT websearch_to_tsquery('english', $2) AS q) \
SELECT * FROM ( \
  SELECT c.id AS card_id, c.title, c.column_id, 'card' AS matched_in, \
         ts_headline('english', c.title || ' — ' || coalesce(c.description, ''), q.q) AS snippet, \
         ts_rank(c.search, q.q) AS rank \
  FROM cards c, q WHERE c.board_id = $1 AND c.search @@ q.q \
  UNION ALL \
  SELECT c.id, c.title, c.column_id, 'comment', ts_headline('english', cc.text, q.q), \
         ts_rank(cc.search, q.q) \
  FROM card_comments cc JOIN cards c ON c.id = cc.card_id, q \
  WHERE c.board_id = $1 AND cc.search @@ q.q \
  UNION ALL \
  SELECT c.id, c.title, c.column_id, 'message', ts_headline('english', m.text, q.q), \
         ts_rank(to_tsvector('english', m.text), q.q) \
  FROM cards c CROSS JOIN q CROSS JOIN LATERAL ( \
    SELECT m.text FROM messages m \
    WHERE m.session_id = c.session_id AND m.chat = c.chat AND m.text IS NOT NULL \
      AND to_tsvector('english', m.text) @@ q.q \
    ORDER BY m.created_at DESC LIMIT 3) m \
  WHERE c.board_id = $1 AND c.chat IS NOT NULL \
) hits ORDER BY rank DESC, card_id LIMIT 50";

/// Search a board's cards, their comments and their chats' messages.
#[utoipa::path(tag = "crm", params(BoardPath, SearchQuery), responses((status = 200, description = "Matches, best first (at most 50)", body = Vec<SearchHit>), CommonErrors), security(("api_key" = [])))]
#[get("/boards/{board_id}/search")]
pub async fn search(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<BoardPath>,
    query: web::Query<SearchQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.q.trim();
    if q.is_empty() || q.chars().count() > 200 {
        return Err(ApiError::validation("q", "must be 1 to 200 characters"));
    }
    if q.contains('\0') {
        return Err(ApiError::validation("q", "must not contain NUL"));
    }
    let mut conn = state.db.get().await?;
    let board = store::load_board(&mut conn, &caller, path.board_id).await?;
    let hits: Vec<SearchHit> = diesel::sql_query(SEARCH)
        .bind::<sql_types::Uuid, _>(board.id)
        .bind::<sql_types::Text, _>(q)
        .load(&mut conn)
        .await?;
    Ok(HttpResponse::Ok().json(hits))
}

/// One column's figures.
#[derive(Debug, Serialize, QueryableByName, ToSchema)]
pub struct ColumnStats {
    #[diesel(sql_type = sql_types::Uuid)]
    pub column_id: Uuid,
    #[diesel(sql_type = sql_types::Text)]
    pub name: String,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Integer>)]
    pub wip_limit: Option<i32>,
    #[diesel(sql_type = sql_types::BigInt)]
    pub cards: i64,
    /// The sum of the cards' values.
    #[diesel(sql_type = sql_types::Double)]
    pub value: f64,
    /// Cards past their due date.
    #[diesel(sql_type = sql_types::BigInt)]
    pub overdue: i64,
    /// How long the cards now in the column have been there, on average.
    #[diesel(sql_type = sql_types::Nullable<sql_types::Double>)]
    pub avg_age_secs: Option<f64>,
    /// How long cards that left the column spent in it, on average (from the activity).
    #[diesel(sql_type = sql_types::Nullable<sql_types::Double>)]
    pub avg_secs_in_column: Option<f64>,
    /// Cards that left the column.
    #[diesel(sql_type = sql_types::BigInt)]
    pub moved_out: i64,
}

const COLUMN_STATS: &str = "\
SELECT col.id AS column_id, col.name, col.wip_limit, \
       count(c.id) AS cards, coalesce(sum(c.value), 0)::float8 AS value, \
       count(c.id) FILTER (WHERE c.due_at < now()) AS overdue, \
       avg(extract(epoch FROM now() - c.column_entered_at))::float8 AS avg_age_secs, \
       (SELECT avg(a.seconds_in_column)::float8 FROM card_activity a \
         WHERE a.board_id = col.board_id AND a.kind = 'moved' AND a.from_column_id = col.id \
           AND a.seconds_in_column IS NOT NULL) AS avg_secs_in_column, \
       (SELECT count(*) FROM card_activity a \
         WHERE a.board_id = col.board_id AND a.kind = 'moved' AND a.from_column_id = col.id \
           AND a.seconds_in_column IS NOT NULL) AS moved_out \
FROM board_columns col LEFT JOIN cards c ON c.column_id = col.id \
WHERE col.board_id = $1 AND ($2::uuid IS NULL OR col.id = $2) \
GROUP BY col.id ORDER BY col.position, col.id";

#[derive(Debug, Serialize, ToSchema)]
pub struct BoardStats {
    pub board_id: Uuid,
    pub cards: i64,
    pub value: f64,
    pub overdue: i64,
    /// Cards with no assignee.
    pub unassigned: i64,
    pub columns: Vec<ColumnStats>,
}

async fn column_stats_of(
    conn: &mut diesel_async::AsyncPgConnection,
    board: Uuid,
    column: Option<Uuid>,
) -> QueryResult<Vec<ColumnStats>> {
    diesel::sql_query(COLUMN_STATS)
        .bind::<sql_types::Uuid, _>(board)
        .bind::<sql_types::Nullable<sql_types::Uuid>, _>(column)
        .load(conn)
        .await
}

/// The board's figures: cards, value and overdue per column, time in each column.
#[utoipa::path(tag = "crm", params(BoardPath), responses((status = 200, description = "Statistics", body = BoardStats), CommonErrors), security(("api_key" = [])))]
#[get("/boards/{board_id}/stats")]
pub async fn board_stats(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<BoardPath>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.db.get().await?;
    let board = store::load_board(&mut conn, &caller, path.board_id).await?;
    let columns = column_stats_of(&mut conn, board.id, None).await?;
    let unassigned: i64 = crate::schema::cards::table
        .filter(crate::schema::cards::board_id.eq(board.id))
        .filter(crate::schema::cards::assignee_id.is_null())
        .count()
        .get_result(&mut conn)
        .await?;
    Ok(HttpResponse::Ok().json(BoardStats {
        board_id: board.id,
        cards: columns.iter().map(|c| c.cards).sum(),
        value: columns.iter().map(|c| c.value).sum(),
        overdue: columns.iter().map(|c| c.overdue).sum(),
        unassigned,
        columns,
    }))
}

#[utoipa::path(tag = "crm", params(ColumnPath), responses((status = 200, description = "The column's statistics", body = ColumnStats), CommonErrors), security(("api_key" = [])))]
#[get("/boards/{board_id}/columns/{column_id}/stats")]
pub async fn column_stats(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<ColumnPath>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.db.get().await?;
    let board = store::load_board(&mut conn, &caller, path.board_id).await?;
    let column = store::load_column(&mut conn, &board, path.column_id).await?;
    let stats = column_stats_of(&mut conn, board.id, Some(column.id))
        .await?
        .pop()
        .ok_or(ApiError::NotFound("column"))?;
    Ok(HttpResponse::Ok().json(stats))
}

#[derive(Debug, Serialize, Queryable, Selectable, ToSchema)]
#[diesel(table_name = card_activity)]
pub struct ActivityOut {
    pub id: i64,
    pub board_id: Uuid,
    pub card_id: Uuid,
    /// `created`, `moved`, `assigned`, `updated`, `commented`, `deleted`.
    pub kind: String,
    /// `member`, `key` or `admin`; `flow` (its execution's id), `agent` (the AI agent's id)
    /// or `system` (a board's automatic cards).
    pub actor_kind: String,
    pub actor_id: Option<Uuid>,
    pub from_column_id: Option<Uuid>,
    pub to_column_id: Option<Uuid>,
    /// For a move to another column: how long the card was in the column it left.
    pub seconds_in_column: Option<i64>,
    #[schema(value_type = Object)]
    pub data: Value,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActivityQuery {
    /// 1 to 500 (default 50).
    #[param(value_type = Option<u32>)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

async fn activity(
    state: &AppState,
    board: Uuid,
    card: Option<Uuid>,
    query: &ActivityQuery,
) -> Result<Page<ActivityOut>, ApiError> {
    let limit = parse_limit(query.limit.as_deref())?;
    let mut q = card_activity::table
        .filter(card_activity::board_id.eq(board))
        .order(card_activity::id.desc())
        .limit(i64::from(limit) + 1)
        .select(ActivityOut::as_select())
        .into_boxed();
    if let Some(c) = card {
        q = q.filter(card_activity::card_id.eq(c));
    }
    if let Some(c) = query.cursor.as_deref() {
        let before: i64 = c
            .parse()
            .map_err(|_| ApiError::validation("cursor", "is not a cursor from this API"))?;
        q = q.filter(card_activity::id.lt(before));
    }
    let mut conn = state.db.get().await?;
    let rows: Vec<ActivityOut> = q.load(&mut conn).await?;
    Ok(Page::from_overfetched(rows, limit, |a| a.id.to_string()))
}

/// Everything that happened on the board, newest first.
#[utoipa::path(tag = "crm", params(BoardPath, ActivityQuery), responses((status = 200, description = "Activity, newest first", body = Page<ActivityOut>), CommonErrors), security(("api_key" = [])))]
#[get("/boards/{board_id}/activity")]
pub async fn get_board_activity(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<BoardPath>,
    query: web::Query<ActivityQuery>,
) -> Result<HttpResponse, ApiError> {
    let board = {
        let mut conn = state.db.get().await?;
        store::load_board(&mut conn, &caller, path.board_id).await?
    };
    Ok(HttpResponse::Ok().json(activity(&state, board.id, None, &query).await?))
}

/// Everything that happened to a card, newest first.
#[utoipa::path(tag = "crm", params(CardPath, ActivityQuery), responses((status = 200, description = "Activity, newest first", body = Page<ActivityOut>), CommonErrors), security(("api_key" = [])))]
#[get("/boards/{board_id}/cards/{card_id}/activity")]
pub async fn get_card_activity(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<CardPath>,
    query: web::Query<ActivityQuery>,
) -> Result<HttpResponse, ApiError> {
    let (board, card) = {
        let mut conn = state.db.get().await?;
        let board = store::load_board(&mut conn, &caller, path.board_id).await?;
        let card = store::load_card(&mut conn, &board, path.card_id).await?;
        (board, card)
    };
    Ok(HttpResponse::Ok().json(activity(&state, board.id, Some(card.id), &query).await?))
}
