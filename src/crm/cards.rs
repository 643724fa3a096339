//! Cards: create, change, move, reorder, delete, and their comments.

use actix_web::{HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;
use wagate_actors::messaging::chat_key;

use super::store::{self, Activity, BoardRow, CardRow, CommentRow};
use super::{BoardPath, CardOut, CardPath, ColumnPath, CommentOut, CommentPath};
use crate::ai::present;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::events::{CARD_CREATED, CARD_MOVED};
use crate::http::json::ValidJson;
use crate::http::openapi::CommonErrors;
use crate::schema::{card_comments, cards};

fn check_card_text(
    title: Option<&str>,
    description: Option<&Option<String>>,
) -> Result<(), ApiError> {
    if let Some(t) = title {
        super::name("title", t)?;
    }
    if description
        .and_then(|d| d.as_ref())
        .is_some_and(|d| d.chars().count() > 20_000)
    {
        return Err(ApiError::validation(
            "description",
            "must be at most 20000 characters",
        ));
    }
    Ok(())
}

fn check_labels(labels: &[String]) -> Result<Vec<String>, ApiError> {
    if labels.len() > 20 {
        return Err(ApiError::validation("labels", "at most 20 labels"));
    }
    labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let l = l.trim();
            if l.is_empty() || l.chars().count() > 50 {
                Err(ApiError::validation(
                    format!("labels[{i}]"),
                    "must be 1 to 50 characters",
                ))
            } else {
                Ok(l.to_owned())
            }
        })
        .collect()
}

fn check_value(v: Option<f64>) -> Result<(), ApiError> {
    if v.is_some_and(|v| !v.is_finite() || v.abs() > 1e13) {
        return Err(ApiError::validation("value", "must be a finite amount"));
    }
    Ok(())
}

/// The WIP limit of `column`, enforced for a card arriving (409 `wip_limit_reached`).
fn check_room(column: &store::ColumnRow, cards_there: usize) -> Result<(), ApiError> {
    match column.wip_limit {
        Some(limit) if cards_there >= usize::try_from(limit).unwrap_or(usize::MAX) => {
            Err(ApiError::Conflict {
                code: ErrorCode::WipLimitReached,
                message: format!(
                    "the column {:?} holds {cards_there} cards, its limit",
                    column.name
                ),
            })
        }
        _ => Ok(()),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCard {
    pub column_id: Uuid,
    pub title: String,
    pub description: Option<String>,
    /// The session of the linked chat.
    pub session_id: Option<Uuid>,
    /// The linked chat: a phone number or a group JID (needs `session_id`).
    pub chat: Option<String>,
    /// A member of the tenant.
    pub assignee_id: Option<Uuid>,
    pub labels: Option<Vec<String>>,
    pub due_at: Option<DateTime<Utc>>,
    pub value: Option<f64>,
}

/// The chat a card links, checked: the session is the tenant's, the chat in our format.
async fn linked_chat(
    conn: &mut AsyncPgConnection,
    tenant: Uuid,
    session: Option<Uuid>,
    chat: Option<&str>,
) -> Result<Option<String>, ApiError> {
    match (session, chat) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(ApiError::validation(
            "session_id",
            "is required with chat: the session the chat is on",
        )),
        (Some(s), chat) => {
            let owner: Option<Uuid> = crate::schema::sessions::table
                .find(s)
                .select(crate::schema::sessions::tenant_id)
                .first(conn)
                .await
                .optional()?;
            if owner != Some(tenant) {
                return Err(ApiError::validation(
                    "session_id",
                    "is not a session of this tenant",
                ));
            }
            chat.map(|c| crate::messages::parse_chat(c, "chat").map(|c| chat_key(&c)))
                .transpose()
        }
    }
}

/// Create a card at the bottom of a column.
#[utoipa::path(tag = "crm", params(BoardPath), request_body = CreateCard, responses((status = 201, description = "The card", body = CardOut), CommonErrors), security(("api_key" = [])))]
#[post("/boards/{board_id}/cards")]
pub async fn create_card(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<BoardPath>,
    body: ValidJson<CreateCard>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    check_card_text(Some(&b.title), Some(&b.description))?;
    let labels = check_labels(b.labels.as_deref().unwrap_or_default())?;
    check_value(b.value)?;
    let mut conn = state.db.get().await?;
    let board = store::load_board(&mut conn, &caller, path.board_id).await?;
    let column = store::load_column(&mut conn, &board, b.column_id)
        .await
        .map_err(|_| ApiError::validation("column_id", "is not a column of this board"))?;
    let chat = linked_chat(&mut conn, board.tenant_id, b.session_id, b.chat.as_deref()).await?;
    store::check_assignee(&mut conn, board.tenant_id, b.assignee_id).await?;
    let max = i64::from(state.settings.crm.max_cards_per_board);
    let now = Utc::now();
    let mut card = CardRow {
        id: Uuid::now_v7(),
        tenant_id: board.tenant_id,
        board_id: board.id,
        column_id: column.id,
        position: 0,
        title: super::name("title", &b.title)?,
        description: b.description,
        session_id: b.session_id,
        chat,
        assignee_id: b.assignee_id,
        labels,
        due_at: b.due_at,
        value: b.value,
        auto: false,
        column_entered_at: now,
        created_at: now,
        updated_at: now,
    };
    let actor = crate::audit::actor_of(&caller);
    let (card, events) = conn
        .transaction::<_, ApiError, _>(async |conn| {
            let event = insert_card(conn, &mut card, &column, max, actor).await?;
            Ok((card, vec![event]))
        })
        .await?;
    store::publish(&state, events);
    if let Some(assignee) = card.assignee_id {
        crate::notifications::card_assigned(&state, &card, assignee).await;
    }
    Ok(HttpResponse::Created().json(CardOut::from(&card)))
}

/// Stores a new card at the bottom of its column with its history and its `card.created`
/// event, in the caller's transaction (also for flows): the board's card cap and the column's
/// WIP limit hold under concurrent creates and moves.
pub async fn insert_card(
    conn: &mut AsyncPgConnection,
    card: &mut CardRow,
    column: &store::ColumnRow,
    max_cards_per_board: i64,
    actor: (&'static str, Option<Uuid>),
) -> Result<crate::events::store::EventRow, ApiError> {
    store::lock_columns(conn, &[column.id]).await?;
    let on_board: i64 = cards::table
        .filter(cards::board_id.eq(card.board_id))
        .count()
        .get_result(conn)
        .await?;
    if on_board >= max_cards_per_board {
        return Err(ApiError::Conflict {
            code: ErrorCode::QuotaExceeded,
            message: format!("a board holds at most {max_cards_per_board} cards"),
        });
    }
    let siblings = store::column_order(conn, column.id, None).await?;
    check_room(column, siblings.len())?;
    card.position = siblings.last().map_or(store::GAP, |s| s.1 + store::GAP);
    diesel::insert_into(cards::table)
        .values(&*card)
        .execute(conn)
        .await?;
    Activity::by(card, "created", actor).record(conn).await?;
    if card.assignee_id.is_some() {
        let mut a = Activity::by(card, "assigned", actor);
        a.data = json!({"assignee_id": card.assignee_id});
        a.record(conn).await?;
    }
    Ok(store::card_event(conn, CARD_CREATED, card, actor, json!({})).await?)
}

async fn load(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    board: Uuid,
    card: Uuid,
) -> Result<(BoardRow, CardRow), ApiError> {
    let board = store::load_board(conn, caller, board).await?;
    let card = store::load_card(conn, &board, card).await?;
    Ok((board, card))
}

#[utoipa::path(tag = "crm", params(CardPath), responses((status = 200, description = "The card", body = CardOut), CommonErrors), security(("api_key" = [])))]
#[get("/boards/{board_id}/cards/{card_id}")]
pub async fn get_card(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<CardPath>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.db.get().await?;
    let (_, card) = load(&mut conn, &caller, path.board_id, path.card_id).await?;
    Ok(HttpResponse::Ok().json(CardOut::from(&card)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCard {
    pub title: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// `null` unassigns.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Uuid>)]
    pub assignee_id: Option<Option<Uuid>>,
    pub labels: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub due_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>)]
    pub value: Option<Option<f64>>,
    /// Link (or with `null`, unlink) a chat; `session_id` with it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub chat: Option<Option<String>>,
    pub session_id: Option<Uuid>,
}

/// Change a card's fields (moving is `…/move`).
#[utoipa::path(tag = "crm", params(CardPath), request_body = UpdateCard, responses((status = 200, description = "The card", body = CardOut), CommonErrors), security(("api_key" = [])))]
#[patch("/boards/{board_id}/cards/{card_id}")]
pub async fn update_card(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<CardPath>,
    body: ValidJson<UpdateCard>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    check_card_text(b.title.as_deref(), b.description.as_ref())?;
    let labels = b.labels.as_deref().map(check_labels).transpose()?;
    if let Some(v) = b.value {
        check_value(v)?;
    }
    let mut conn = state.db.get().await?;
    let (board, mut card) = load(&mut conn, &caller, path.board_id, path.card_id).await?;
    if let Some(Some(a)) = b.assignee_id {
        store::check_assignee(&mut conn, board.tenant_id, Some(a)).await?;
    }
    let mut changed = Vec::new();
    if let Some(t) = &b.title {
        card.title = super::name("title", t)?;
        changed.push("title");
    }
    if let Some(d) = b.description {
        card.description = d;
        changed.push("description");
    }
    if let Some(l) = labels {
        card.labels = l;
        changed.push("labels");
    }
    if let Some(d) = b.due_at {
        card.due_at = d;
        changed.push("due_at");
    }
    if let Some(v) = b.value {
        card.value = v;
        changed.push("value");
    }
    match (b.chat, b.session_id) {
        (Some(None), _) => {
            card.chat = None;
            card.session_id = None;
            changed.push("chat");
        }
        (Some(Some(c)), s) => {
            let session = s.or(card.session_id);
            card.chat = linked_chat(&mut conn, board.tenant_id, session, Some(&c)).await?;
            card.session_id = session;
            changed.push("chat");
        }
        (None, Some(_)) => {
            return Err(ApiError::validation(
                "session_id",
                "is changed with chat: give both",
            ));
        }
        (None, None) => {}
    }
    let assigned = match b.assignee_id {
        Some(a) if a != card.assignee_id => {
            card.assignee_id = a;
            Some(a)
        }
        _ => None,
    };
    card.updated_at = Utc::now();
    let card = conn
        .transaction::<_, ApiError, _>(async |conn| {
            diesel::update(cards::table.find(card.id))
                .set((
                    cards::title.eq(&card.title),
                    cards::description.eq(&card.description),
                    cards::labels.eq(&card.labels),
                    cards::due_at.eq(card.due_at),
                    cards::value.eq(card.value),
                    cards::chat.eq(&card.chat),
                    cards::session_id.eq(card.session_id),
                    cards::assignee_id.eq(card.assignee_id),
                    cards::updated_at.eq(card.updated_at),
                ))
                .execute(conn)
                .await?;
            if !changed.is_empty() {
                let mut a = Activity::new(&card, "updated", &caller);
                a.data = json!({"fields": changed});
                a.record(conn).await?;
            }
            if let Some(to) = assigned {
                let mut a = Activity::new(&card, "assigned", &caller);
                a.data = json!({"assignee_id": to});
                a.record(conn).await?;
            }
            Ok(card)
        })
        .await?;
    if let Some(Some(assignee)) = assigned {
        crate::notifications::card_assigned(&state, &card, assignee).await;
    }
    Ok(HttpResponse::Ok().json(CardOut::from(&card)))
}

#[utoipa::path(tag = "crm", params(CardPath), responses((status = 204, description = "Deleted"), CommonErrors), security(("api_key" = [])))]
#[delete("/boards/{board_id}/cards/{card_id}")]
pub async fn delete_card(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<CardPath>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.db.get().await?;
    let (_, card) = load(&mut conn, &caller, path.board_id, path.card_id).await?;
    conn.transaction::<_, ApiError, _>(async |conn| {
        let mut a = Activity::new(&card, "deleted", &caller);
        a.data = json!({"title": card.title});
        a.record(conn).await?;
        diesel::delete(cards::table.find(card.id))
            .execute(conn)
            .await?;
        Ok(())
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveCard {
    /// A column of the same board (the card's own to reorder it there).
    pub column_id: Uuid,
    /// Where it lands among the column's cards, 0-based; past the end means last.
    pub position: i64,
}

/// Move a card to a column and a place in it. Concurrent moves are serialised per column:
/// none is lost, and every card stays in exactly one place.
#[utoipa::path(tag = "crm", params(CardPath), request_body = MoveCard, responses((status = 200, description = "The card where it landed", body = CardOut), CommonErrors), security(("api_key" = [])))]
#[post("/boards/{board_id}/cards/{card_id}/move")]
pub async fn move_card(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<CardPath>,
    body: ValidJson<MoveCard>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    if b.position < 0 {
        return Err(ApiError::validation("position", "must be 0 or more"));
    }
    let index = usize::try_from(b.position).unwrap_or(usize::MAX);
    let mut conn = state.db.get().await?;
    let (board, card) = load(&mut conn, &caller, path.board_id, path.card_id).await?;
    let to = store::load_column(&mut conn, &board, b.column_id)
        .await
        .map_err(|_| ApiError::validation("column_id", "is not a column of this board"))?;
    let actor = crate::audit::actor_of(&caller);
    let (moved, index, events) = move_in(&mut conn, actor, card.id, &to, index).await?;
    store::publish(&state, events);
    Ok(HttpResponse::Ok().json(CardOut {
        index: Some(index),
        ..CardOut::from(&moved)
    }))
}

/// The move itself, in one transaction (also for flows and the AI's tools).
pub async fn move_in(
    conn: &mut AsyncPgConnection,
    actor: (&'static str, Option<Uuid>),
    card_id: Uuid,
    to: &store::ColumnRow,
    index: usize,
) -> Result<(CardRow, usize, Vec<crate::events::store::EventRow>), ApiError> {
    conn.transaction::<_, ApiError, _>(async |conn| {
        // The card's column is read, both columns locked, and the card read again under the
        // locks: a concurrent move of the same card either finished before (and is seen) or
        // waits for this one.
        let mut from = cards::table
            .find(card_id)
            .select(cards::column_id)
            .first::<Uuid>(conn)
            .await
            .optional()?
            .ok_or(ApiError::NotFound("card"))?;
        let card = loop {
            store::lock_columns(conn, &[from, to.id]).await?;
            let card: CardRow = cards::table
                .find(card_id)
                .select(CardRow::as_select())
                .first(conn)
                .await
                .optional()?
                .ok_or(ApiError::NotFound("card"))?;
            if card.column_id == from {
                break card;
            }
            from = card.column_id;
        };
        let siblings = store::column_order(conn, to.id, Some(card.id)).await?;
        let changes_column = card.column_id != to.id;
        if changes_column {
            check_room(to, siblings.len())?;
        }
        let index = index.min(siblings.len());
        let position = match store::slot(&siblings, index) {
            Some(p) => p,
            None => store::renumber(conn, &siblings, card.id, index).await?,
        };
        let now = Utc::now();
        let entered = if changes_column {
            now
        } else {
            card.column_entered_at
        };
        let moved: CardRow = diesel::update(cards::table.find(card.id))
            .set((
                cards::column_id.eq(to.id),
                cards::position.eq(position),
                cards::column_entered_at.eq(entered),
                cards::updated_at.eq(now),
            ))
            .returning(CardRow::as_returning())
            .get_result(conn)
            .await?;
        let mut a = Activity::by(&moved, "moved", actor);
        a.from_column = Some(card.column_id);
        a.to_column = Some(to.id);
        a.seconds_in_column =
            changes_column.then(|| (now - card.column_entered_at).num_seconds().max(0));
        a.data = json!({"position": index});
        a.record(conn).await?;
        let event = store::card_event(
            conn,
            CARD_MOVED,
            &moved,
            actor,
            json!({"from_column_id": card.column_id, "to_column_id": to.id, "position": index}),
        )
        .await?;
        Ok((moved, index, vec![event]))
    })
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReorderCards {
    /// Every card of the column, once, top to bottom.
    pub card_ids: Vec<Uuid>,
}

/// Put a column's cards in a new order. The list must be the column's cards as they are now:
/// a card moved in or out meanwhile is 409 `order_conflict` (read the board and try again).
#[utoipa::path(tag = "crm", params(ColumnPath), request_body = ReorderCards, responses((status = 200, description = "The column's cards in their new order", body = Vec<CardOut>), CommonErrors), security(("api_key" = [])))]
#[post("/boards/{board_id}/columns/{column_id}/cards/reorder")]
pub async fn reorder_cards(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<ColumnPath>,
    body: ValidJson<ReorderCards>,
) -> Result<HttpResponse, ApiError> {
    let wanted = body.into_inner().card_ids;
    let mut conn = state.db.get().await?;
    let board = store::load_board(&mut conn, &caller, path.board_id).await?;
    let column = store::load_column(&mut conn, &board, path.column_id).await?;
    let rows = conn
        .transaction::<_, ApiError, _>(async |conn| {
            store::lock_columns(conn, &[column.id]).await?;
            let mut have: Vec<Uuid> = store::column_order(conn, column.id, None)
                .await?
                .into_iter()
                .map(|c| c.0)
                .collect();
            let mut given = wanted.clone();
            have.sort();
            given.sort();
            if have != given {
                return Err(ApiError::Conflict {
                    code: ErrorCode::OrderConflict,
                    message: "card_ids must be the column's cards as they are now, each once"
                        .into(),
                });
            }
            store::set_order(conn, &wanted).await?;
            let rows: Vec<CardRow> = cards::table
                .filter(cards::column_id.eq(column.id))
                .order(cards::position.asc())
                .select(CardRow::as_select())
                .load(conn)
                .await?;
            Ok(rows)
        })
        .await?;
    let out: Vec<CardOut> = rows
        .iter()
        .enumerate()
        .map(|(i, c)| CardOut {
            index: Some(i),
            ..CardOut::from(c)
        })
        .collect();
    Ok(HttpResponse::Ok().json(out))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentBody {
    pub text: String,
}

fn comment_text(t: &str) -> Result<String, ApiError> {
    let t = t.trim();
    if t.is_empty() || t.chars().count() > 10_000 {
        return Err(ApiError::validation(
            "text",
            "must be 1 to 10000 characters",
        ));
    }
    Ok(t.to_owned())
}

/// A card's comments, oldest first.
#[utoipa::path(tag = "crm", params(CardPath), responses((status = 200, description = "Comments", body = Vec<CommentOut>), CommonErrors), security(("api_key" = [])))]
#[get("/boards/{board_id}/cards/{card_id}/comments")]
pub async fn list_comments(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<CardPath>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.db.get().await?;
    let (_, card) = load(&mut conn, &caller, path.board_id, path.card_id).await?;
    let rows: Vec<CommentRow> = card_comments::table
        .filter(card_comments::card_id.eq(card.id))
        .order(card_comments::created_at.asc())
        .limit(1000)
        .select(CommentRow::as_select())
        .load(&mut conn)
        .await?;
    Ok(HttpResponse::Ok().json(rows.iter().map(CommentOut::from).collect::<Vec<_>>()))
}

#[utoipa::path(tag = "crm", params(CardPath), request_body = CommentBody, responses((status = 201, description = "The comment", body = CommentOut), CommonErrors), security(("api_key" = [])))]
#[post("/boards/{board_id}/cards/{card_id}/comments")]
pub async fn create_comment(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<CardPath>,
    body: ValidJson<CommentBody>,
) -> Result<HttpResponse, ApiError> {
    let text = comment_text(&body.0.text)?;
    let mut conn = state.db.get().await?;
    let (_, card) = load(&mut conn, &caller, path.board_id, path.card_id).await?;
    let (kind, id) = crate::audit::actor_of(&caller);
    let now = Utc::now();
    let row = CommentRow {
        id: Uuid::now_v7(),
        tenant_id: card.tenant_id,
        card_id: card.id,
        author_kind: kind.to_owned(),
        author_id: id,
        text,
        created_at: now,
        updated_at: now,
    };
    conn.transaction::<_, ApiError, _>(async |conn| {
        diesel::insert_into(card_comments::table)
            .values(&row)
            .execute(conn)
            .await?;
        let mut a = Activity::new(&card, "commented", &caller);
        a.data = json!({"comment_id": row.id});
        a.record(conn).await?;
        Ok(())
    })
    .await?;
    Ok(HttpResponse::Created().json(CommentOut::from(&row)))
}

async fn load_comment(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    path: &CommentPath,
) -> Result<CommentRow, ApiError> {
    let (_, card) = load(conn, caller, path.board_id, path.card_id).await?;
    card_comments::table
        .find(path.comment_id)
        .filter(card_comments::card_id.eq(card.id))
        .select(CommentRow::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(ApiError::NotFound("comment"))
}

/// Only the comment's author (or an owner or admin) changes or deletes it.
fn require_author(caller: &Caller, c: &CommentRow) -> Result<(), ApiError> {
    use crate::auth::permissions::MemberRole;
    match caller {
        Caller::Tenant {
            member: Some(m), ..
        } if Some(m.id) != c.author_id
            && !matches!(m.role, MemberRole::Owner | MemberRole::Admin) =>
        {
            Err(ApiError::Forbidden(
                "only its author, an admin or an owner changes a comment",
            ))
        }
        _ => Ok(()),
    }
}

#[utoipa::path(tag = "crm", params(CommentPath), request_body = CommentBody, responses((status = 200, description = "The comment", body = CommentOut), CommonErrors), security(("api_key" = [])))]
#[patch("/boards/{board_id}/cards/{card_id}/comments/{comment_id}")]
pub async fn update_comment(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<CommentPath>,
    body: ValidJson<CommentBody>,
) -> Result<HttpResponse, ApiError> {
    let text = comment_text(&body.0.text)?;
    let mut conn = state.db.get().await?;
    let mut c = load_comment(&mut conn, &caller, &path).await?;
    require_author(&caller, &c)?;
    c.text = text;
    c.updated_at = Utc::now();
    diesel::update(card_comments::table.find(c.id))
        .set((
            card_comments::text.eq(&c.text),
            card_comments::updated_at.eq(c.updated_at),
        ))
        .execute(&mut conn)
        .await?;
    Ok(HttpResponse::Ok().json(CommentOut::from(&c)))
}

#[utoipa::path(tag = "crm", params(CommentPath), responses((status = 204, description = "Deleted"), CommonErrors), security(("api_key" = [])))]
#[delete("/boards/{board_id}/cards/{card_id}/comments/{comment_id}")]
pub async fn delete_comment(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<CommentPath>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.db.get().await?;
    let c = load_comment(&mut conn, &caller, &path).await?;
    require_author(&caller, &c)?;
    diesel::delete(card_comments::table.find(c.id))
        .execute(&mut conn)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
