//! Boards and their columns.

use actix_web::{HttpResponse, delete, get, patch, post, web};
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::store::{self, BoardRow, ColumnRow};
use super::{BoardOut, BoardPath, CardOut, ColumnOut, ColumnPath, ColumnWithCards, name};
use crate::ai::present;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::http::json::ValidJson;
use crate::http::openapi::CommonErrors;
use crate::http::pagination::{ListQuery, Page};
use crate::schema::{board_columns, boards, cards};

const MAX_COLUMNS: usize = 50;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBoard {
    /// The admin key names the tenant.
    pub tenant_id: Option<Uuid>,
    pub name: String,
    pub description: Option<String>,
    /// Column names, left to right (default `New`, `In progress`, `Done`).
    pub columns: Option<Vec<String>>,
    /// Every new chat of this session becomes a card in the first column (or `auto_column`).
    pub auto_session_id: Option<Uuid>,
    /// The name of the column new chats land in (one of `columns`).
    pub auto_column: Option<String>,
}

fn check_description(d: &Option<String>) -> Result<(), ApiError> {
    if d.as_ref().is_some_and(|d| d.chars().count() > 10_000) {
        return Err(ApiError::validation(
            "description",
            "must be at most 10000 characters",
        ));
    }
    Ok(())
}

async fn check_session(
    conn: &mut diesel_async::AsyncPgConnection,
    tenant: Uuid,
    session: Option<Uuid>,
    field: &str,
) -> Result<(), ApiError> {
    let Some(id) = session else { return Ok(()) };
    let owner: Option<Uuid> = crate::schema::sessions::table
        .find(id)
        .select(crate::schema::sessions::tenant_id)
        .first(conn)
        .await
        .optional()?;
    if owner != Some(tenant) {
        return Err(ApiError::validation(
            field,
            "is not a session of this tenant",
        ));
    }
    Ok(())
}

/// The board with its columns and their cards, in order.
pub async fn board_out(
    conn: &mut diesel_async::AsyncPgConnection,
    board: &BoardRow,
) -> Result<BoardOut, ApiError> {
    let columns = store::columns_of(conn, board.id).await?;
    let all = store::cards_of_board(conn, board.id).await?;
    let columns = columns
        .iter()
        .map(|c| ColumnWithCards {
            column: ColumnOut::from(c),
            cards: all
                .iter()
                .filter(|card| card.column_id == c.id)
                .enumerate()
                .map(|(i, card)| CardOut {
                    index: Some(i),
                    ..CardOut::from(card)
                })
                .collect(),
        })
        .collect();
    Ok(BoardOut::new(board, columns))
}

/// Create a board with its columns.
#[utoipa::path(tag = "crm", request_body = CreateBoard, responses((status = 201, description = "The board", body = BoardOut), CommonErrors), security(("api_key" = [])))]
#[post("/boards")]
pub async fn create_board(
    caller: Caller,
    state: web::Data<AppState>,
    body: ValidJson<CreateBoard>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let board_name = name("name", &b.name)?;
    check_description(&b.description)?;
    let names = b
        .columns
        .unwrap_or_else(|| vec!["New".into(), "In progress".into(), "Done".into()]);
    if names.is_empty() || names.len() > MAX_COLUMNS {
        return Err(ApiError::validation(
            "columns",
            format!("must name 1 to {MAX_COLUMNS} columns"),
        ));
    }
    let names = names
        .iter()
        .enumerate()
        .map(|(i, n)| name(&format!("columns[{i}]"), n))
        .collect::<Result<Vec<_>, _>>()?;
    let auto_index = match (&b.auto_session_id, &b.auto_column) {
        (_, Some(c)) => Some(names.iter().position(|n| n == c.trim()).ok_or_else(|| {
            ApiError::validation("auto_column", "is not one of the board's columns")
        })?),
        (Some(_), None) => Some(0),
        (None, None) => None,
    };
    if b.auto_session_id.is_none() && b.auto_column.is_some() {
        return Err(ApiError::validation(
            "auto_column",
            "needs auto_session_id: the session whose new chats land there",
        ));
    }
    let tenant = crate::ai::tenant_of(&state, &caller, b.tenant_id).await?;
    let mut conn = state.db.get().await?;
    check_session(&mut conn, tenant, b.auto_session_id, "auto_session_id").await?;
    let count: i64 = boards::table
        .filter(boards::tenant_id.eq(tenant))
        .count()
        .get_result(&mut conn)
        .await?;
    // The tier's quota (never above crm.max_boards_per_tenant).
    let tier = crate::tenants::store::get_tenant(&mut conn, tenant)
        .await?
        .ok_or(ApiError::NotFound("tenant"))?
        .tier;
    let tier = crate::tenants::tier_from_db(&tier)?;
    let max = crate::tiers::limit_of(&state.settings, tier, crate::tiers::BOARDS);
    if count >= i64::from(max) {
        return Err(ApiError::QuotaExceeded {
            what: crate::tiers::BOARDS,
            limit: max,
            tier: tier.as_str(),
        });
    }
    let now = Utc::now();
    let columns: Vec<ColumnRow> = names
        .into_iter()
        .enumerate()
        .map(|(i, n)| ColumnRow {
            id: Uuid::now_v7(),
            board_id: Uuid::nil(),
            tenant_id: tenant,
            name: n,
            wip_limit: None,
            position: i32::try_from(i).unwrap_or(i32::MAX),
            created_at: now,
        })
        .collect();
    let board = BoardRow {
        id: Uuid::now_v7(),
        tenant_id: tenant,
        name: board_name,
        description: b.description,
        auto_session_id: b.auto_session_id,
        auto_column_id: auto_index.map(|i| columns[i].id),
        auto_scanned_to: now,
        created_at: now,
        updated_at: now,
    };
    let columns: Vec<ColumnRow> = columns
        .into_iter()
        .map(|c| ColumnRow {
            board_id: board.id,
            ..c
        })
        .collect();
    conn.transaction::<_, ApiError, _>(async |conn| {
        diesel::insert_into(boards::table)
            .values(&board)
            .execute(conn)
            .await?;
        diesel::insert_into(board_columns::table)
            .values(&columns)
            .execute(conn)
            .await?;
        Ok(())
    })
    .await?;
    crate::tiers::warn_if_near(&state, tenant, crate::tiers::BOARDS).await;
    Ok(HttpResponse::Created().json(board_out(&mut conn, &board).await?))
}

/// The tenant's boards (without their cards), oldest first.
#[utoipa::path(tag = "crm", params(ListQuery), responses((status = 200, description = "Boards", body = Page<BoardOut>), CommonErrors), security(("api_key" = [])))]
#[get("/boards")]
pub async fn list_boards(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let (limit, after) = query.parse()?;
    let mut q = boards::table
        .order(boards::id.asc())
        .limit(i64::from(limit) + 1)
        .select(BoardRow::as_select())
        .into_boxed();
    if let Caller::Tenant { tenant_id, .. } = caller {
        q = q.filter(boards::tenant_id.eq(tenant_id));
    }
    if let Some(after) = after {
        q = q.filter(boards::id.gt(after));
    }
    let mut conn = state.db.get().await?;
    let rows: Vec<BoardRow> = q.load(&mut conn).await?;
    let page = Page::from_overfetched(rows, limit, |b| b.id.to_string());
    let mut items = Vec::with_capacity(page.items.len());
    for b in &page.items {
        let columns = store::columns_of(&mut conn, b.id)
            .await?
            .iter()
            .map(|c| ColumnWithCards {
                column: ColumnOut::from(c),
                cards: Vec::new(),
            })
            .collect();
        items.push(BoardOut::new(b, columns));
    }
    Ok(HttpResponse::Ok().json(Page {
        items,
        next_cursor: page.next_cursor,
    }))
}

/// The board with its columns and cards, in order.
#[utoipa::path(tag = "crm", params(BoardPath), responses((status = 200, description = "The board", body = BoardOut), CommonErrors), security(("api_key" = [])))]
#[get("/boards/{board_id}")]
pub async fn get_board(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<BoardPath>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.db.get().await?;
    let board = store::load_board(&mut conn, &caller, path.board_id).await?;
    Ok(HttpResponse::Ok().json(board_out(&mut conn, &board).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBoard {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// `null` stops making cards for new chats.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Uuid>)]
    pub auto_session_id: Option<Option<Uuid>>,
    /// A column of this board.
    pub auto_column_id: Option<Uuid>,
}

#[utoipa::path(tag = "crm", params(BoardPath), request_body = UpdateBoard, responses((status = 200, description = "The board", body = BoardOut), CommonErrors), security(("api_key" = [])))]
#[patch("/boards/{board_id}")]
pub async fn update_board(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<BoardPath>,
    body: ValidJson<UpdateBoard>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let mut conn = state.db.get().await?;
    let mut board = store::load_board(&mut conn, &caller, path.board_id).await?;
    if let Some(n) = &b.name {
        board.name = name("name", n)?;
    }
    if let Some(d) = b.description {
        check_description(&d)?;
        board.description = d;
    }
    if let Some(s) = b.auto_session_id {
        check_session(&mut conn, board.tenant_id, s, "auto_session_id").await?;
        if s.is_some() && s != board.auto_session_id {
            // From now on: the chats the session had before are not the board's to take.
            board.auto_scanned_to = Utc::now();
        }
        board.auto_session_id = s;
    }
    if let Some(c) = b.auto_column_id {
        store::load_column(&mut conn, &board, c)
            .await
            .map_err(|_| ApiError::validation("auto_column_id", "is not a column of this board"))?;
        board.auto_column_id = Some(c);
    }
    if board.auto_session_id.is_some() && board.auto_column_id.is_none() {
        board.auto_column_id = store::columns_of(&mut conn, board.id)
            .await?
            .iter()
            .map(|c| c.id)
            .next();
    }
    board.updated_at = Utc::now();
    diesel::update(boards::table.find(board.id))
        .set((
            boards::name.eq(&board.name),
            boards::description.eq(&board.description),
            boards::auto_session_id.eq(board.auto_session_id),
            boards::auto_column_id.eq(board.auto_column_id),
            boards::auto_scanned_to.eq(board.auto_scanned_to),
            boards::updated_at.eq(board.updated_at),
        ))
        .execute(&mut conn)
        .await?;
    Ok(HttpResponse::Ok().json(board_out(&mut conn, &board).await?))
}

/// Delete a board with its columns, cards, comments and activity.
#[utoipa::path(tag = "crm", params(BoardPath), responses((status = 204, description = "Deleted"), CommonErrors), security(("api_key" = [])))]
#[delete("/boards/{board_id}")]
pub async fn delete_board(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<BoardPath>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.db.get().await?;
    let board = store::load_board(&mut conn, &caller, path.board_id).await?;
    diesel::delete(boards::table.find(board.id))
        .execute(&mut conn)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateColumn {
    pub name: String,
    /// The most cards the column takes; a move or create beyond is 409 `wip_limit_reached`.
    pub wip_limit: Option<i32>,
}

fn check_wip(w: Option<i32>) -> Result<(), ApiError> {
    if w.is_some_and(|w| !(1..=100_000).contains(&w)) {
        return Err(ApiError::validation(
            "wip_limit",
            "must be from 1 to 100000",
        ));
    }
    Ok(())
}

/// Add a column at the right end.
#[utoipa::path(tag = "crm", params(BoardPath), request_body = CreateColumn, responses((status = 201, description = "The column", body = ColumnOut), CommonErrors), security(("api_key" = [])))]
#[post("/boards/{board_id}/columns")]
pub async fn create_column(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<BoardPath>,
    body: ValidJson<CreateColumn>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let column_name = name("name", &b.name)?;
    check_wip(b.wip_limit)?;
    let mut conn = state.db.get().await?;
    let board = store::load_board(&mut conn, &caller, path.board_id).await?;
    let column = conn
        .transaction::<_, ApiError, _>(async |conn| {
            // The board's row orders concurrent additions.
            boards::table
                .find(board.id)
                .select(boards::id)
                .for_update()
                .first::<Uuid>(conn)
                .await?;
            let existing = store::columns_of(conn, board.id).await?;
            if existing.len() >= MAX_COLUMNS {
                return Err(ApiError::validation(
                    "name",
                    format!("a board has at most {MAX_COLUMNS} columns"),
                ));
            }
            let column = ColumnRow {
                id: Uuid::now_v7(),
                board_id: board.id,
                tenant_id: board.tenant_id,
                name: column_name,
                wip_limit: b.wip_limit,
                position: existing.iter().map(|c| c.position + 1).max().unwrap_or(0),
                created_at: Utc::now(),
            };
            diesel::insert_into(board_columns::table)
                .values(&column)
                .execute(conn)
                .await?;
            Ok(column)
        })
        .await?;
    Ok(HttpResponse::Created().json(ColumnOut::from(&column)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateColumn {
    pub name: Option<String>,
    /// `null` removes the limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>)]
    pub wip_limit: Option<Option<i32>>,
}

#[utoipa::path(tag = "crm", params(ColumnPath), request_body = UpdateColumn, responses((status = 200, description = "The column", body = ColumnOut), CommonErrors), security(("api_key" = [])))]
#[patch("/boards/{board_id}/columns/{column_id}")]
pub async fn update_column(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<ColumnPath>,
    body: ValidJson<UpdateColumn>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let mut conn = state.db.get().await?;
    let board = store::load_board(&mut conn, &caller, path.board_id).await?;
    let mut column = store::load_column(&mut conn, &board, path.column_id).await?;
    if let Some(n) = &b.name {
        column.name = name("name", n)?;
    }
    if let Some(w) = b.wip_limit {
        check_wip(w)?;
        column.wip_limit = w;
    }
    diesel::update(board_columns::table.find(column.id))
        .set((
            board_columns::name.eq(&column.name),
            board_columns::wip_limit.eq(column.wip_limit),
        ))
        .execute(&mut conn)
        .await?;
    Ok(HttpResponse::Ok().json(ColumnOut::from(&column)))
}

/// Delete an empty column (one with cards is 409 `column_not_empty`: move them first).
#[utoipa::path(tag = "crm", params(ColumnPath), responses((status = 204, description = "Deleted"), CommonErrors), security(("api_key" = [])))]
#[delete("/boards/{board_id}/columns/{column_id}")]
pub async fn delete_column(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<ColumnPath>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.db.get().await?;
    let board = store::load_board(&mut conn, &caller, path.board_id).await?;
    let column = store::load_column(&mut conn, &board, path.column_id).await?;
    conn.transaction::<_, ApiError, _>(async |conn| {
        store::lock_columns(conn, &[column.id]).await?;
        let n: i64 = cards::table
            .filter(cards::column_id.eq(column.id))
            .count()
            .get_result(conn)
            .await?;
        if n > 0 {
            return Err(ApiError::Conflict {
                code: ErrorCode::ColumnNotEmpty,
                message: format!("the column holds {n} cards: move them first"),
            });
        }
        diesel::delete(board_columns::table.find(column.id))
            .execute(conn)
            .await?;
        if board.auto_column_id == Some(column.id) {
            diesel::update(boards::table.find(board.id))
                .set((
                    boards::auto_column_id.eq(None::<Uuid>),
                    boards::auto_session_id.eq(None::<Uuid>),
                ))
                .execute(conn)
                .await?;
        }
        Ok(())
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReorderColumns {
    /// Every column of the board, once, left to right.
    pub column_ids: Vec<Uuid>,
}

/// Put the columns in a new order.
#[utoipa::path(tag = "crm", params(BoardPath), request_body = ReorderColumns, responses((status = 200, description = "The board", body = BoardOut), CommonErrors), security(("api_key" = [])))]
#[post("/boards/{board_id}/columns/reorder")]
pub async fn reorder_columns(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<BoardPath>,
    body: ValidJson<ReorderColumns>,
) -> Result<HttpResponse, ApiError> {
    let wanted = body.into_inner().column_ids;
    let mut conn = state.db.get().await?;
    let board = store::load_board(&mut conn, &caller, path.board_id).await?;
    conn.transaction::<_, ApiError, _>(async |conn| {
        boards::table
            .find(board.id)
            .select(boards::id)
            .for_update()
            .first::<Uuid>(conn)
            .await?;
        let mut have: Vec<Uuid> = store::columns_of(conn, board.id)
            .await?
            .iter()
            .map(|c| c.id)
            .collect();
        let mut given = wanted.clone();
        have.sort();
        given.sort();
        if have != given {
            return Err(ApiError::validation(
                "column_ids",
                "must name every column of the board exactly once",
            ));
        }
        for (i, id) in wanted.iter().enumerate() {
            diesel::update(board_columns::table.find(id))
                .set(board_columns::position.eq(i32::try_from(i).unwrap_or(i32::MAX)))
                .execute(conn)
                .await?;
        }
        Ok(())
    })
    .await?;
    Ok(HttpResponse::Ok().json(board_out(&mut conn, &board).await?))
}
