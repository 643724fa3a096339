//! Boards, columns and cards in Postgres: loading with the tenant check, the positions of
//! cards, the activity history and the `card.*` events.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::events::EventPayload;
use crate::events::store::EventRow;
use crate::schema::{board_columns, boards, card_activity, card_comments, cards};

/// The distance between neighbours when a column is (re)numbered.
pub const GAP: i64 = 1024;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = boards)]
pub struct BoardRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub auto_session_id: Option<Uuid>,
    pub auto_column_id: Option<Uuid>,
    pub auto_scanned_to: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = board_columns)]
pub struct ColumnRow {
    pub id: Uuid,
    pub board_id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub wip_limit: Option<i32>,
    pub position: i32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = cards)]
pub struct CardRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub board_id: Uuid,
    pub column_id: Uuid,
    pub position: i64,
    pub title: String,
    pub description: Option<String>,
    pub session_id: Option<Uuid>,
    pub chat: Option<String>,
    pub assignee_id: Option<Uuid>,
    pub labels: Vec<String>,
    pub due_at: Option<DateTime<Utc>>,
    pub value: Option<f64>,
    pub auto: bool,
    pub column_entered_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = card_comments)]
pub struct CommentRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub card_id: Uuid,
    pub author_kind: String,
    pub author_id: Option<Uuid>,
    pub text: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The board, if the caller may see it (another tenant's is a 404 like a missing one).
pub async fn load_board(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    id: Uuid,
) -> Result<BoardRow, ApiError> {
    let row = boards::table
        .find(id)
        .select(BoardRow::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(ApiError::NotFound("board"))?;
    caller.require_tenant(row.tenant_id, "board")?;
    Ok(row)
}

/// A column of the board (a column of another board is a 404).
pub async fn load_column(
    conn: &mut AsyncPgConnection,
    board: &BoardRow,
    id: Uuid,
) -> Result<ColumnRow, ApiError> {
    board_columns::table
        .find(id)
        .filter(board_columns::board_id.eq(board.id))
        .select(ColumnRow::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(ApiError::NotFound("column"))
}

pub async fn load_card(
    conn: &mut AsyncPgConnection,
    board: &BoardRow,
    id: Uuid,
) -> Result<CardRow, ApiError> {
    cards::table
        .find(id)
        .filter(cards::board_id.eq(board.id))
        .select(CardRow::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(ApiError::NotFound("card"))
}

pub async fn columns_of(conn: &mut AsyncPgConnection, board: Uuid) -> QueryResult<Vec<ColumnRow>> {
    board_columns::table
        .filter(board_columns::board_id.eq(board))
        .order((board_columns::position.asc(), board_columns::id.asc()))
        .select(ColumnRow::as_select())
        .load(conn)
        .await
}

pub async fn cards_of_board(
    conn: &mut AsyncPgConnection,
    board: Uuid,
) -> QueryResult<Vec<CardRow>> {
    cards::table
        .filter(cards::board_id.eq(board))
        .order((cards::position.asc(), cards::id.asc()))
        .select(CardRow::as_select())
        .load(conn)
        .await
}

/// The cards that link a chat, newest first.
pub async fn cards_of_chat(
    conn: &mut AsyncPgConnection,
    session: Uuid,
    chat: &str,
) -> QueryResult<Vec<CardRow>> {
    cards::table
        .filter(cards::session_id.eq(session))
        .filter(cards::chat.eq(chat))
        .order(cards::created_at.desc())
        .limit(100)
        .select(CardRow::as_select())
        .load(conn)
        .await
}

/// Locks columns for a change of their cards' order, always in id order (two moves between
/// the same columns in opposite directions never deadlock).
pub async fn lock_columns(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<()> {
    let mut ids = ids.to_vec();
    ids.sort();
    ids.dedup();
    board_columns::table
        .filter(board_columns::id.eq_any(&ids))
        .order(board_columns::id.asc())
        .select(board_columns::id)
        .for_update()
        .load::<Uuid>(conn)
        .await
        .map(|_| ())
}

/// The ids and positions of a column's cards, in order, leaving out `except`.
pub async fn column_order(
    conn: &mut AsyncPgConnection,
    column: Uuid,
    except: Option<Uuid>,
) -> QueryResult<Vec<(Uuid, i64)>> {
    let mut q = cards::table
        .filter(cards::column_id.eq(column))
        .order((cards::position.asc(), cards::id.asc()))
        .select((cards::id, cards::position))
        .into_boxed();
    if let Some(e) = except {
        q = q.filter(cards::id.ne(e));
    }
    q.load(conn).await
}

/// Where a card goes to sit at `index` among `siblings` (already in order, without it):
/// the midpoint of its neighbours, or `None` when there is no integer between them and the
/// column must be renumbered.
pub fn slot(siblings: &[(Uuid, i64)], index: usize) -> Option<i64> {
    let index = index.min(siblings.len());
    let before = index.checked_sub(1).map(|i| siblings[i].1);
    let after = siblings.get(index).map(|s| s.1);
    match (before, after) {
        (None, None) => Some(GAP),
        (Some(b), None) => b.checked_add(GAP),
        (None, Some(a)) => (a > 1).then_some(a / 2),
        (Some(b), Some(a)) => (a - b > 1).then(|| b + (a - b) / 2),
    }
}

/// Renumbers a column `GAP` apart with `card` at `index`; returns the card's new position.
pub async fn renumber(
    conn: &mut AsyncPgConnection,
    siblings: &[(Uuid, i64)],
    card: Uuid,
    index: usize,
) -> QueryResult<i64> {
    let mut order: Vec<Uuid> = siblings.iter().map(|s| s.0).collect();
    let index = index.min(order.len());
    order.insert(index, card);
    set_order(conn, &order).await?;
    Ok((index as i64 + 1) * GAP)
}

/// Gives `order`'s cards the positions `GAP`, `2·GAP`, … in one statement.
pub async fn set_order(conn: &mut AsyncPgConnection, order: &[Uuid]) -> QueryResult<()> {
    let positions: Vec<i64> = (1..=order.len() as i64).map(|i| i * GAP).collect();
    diesel::sql_query(
        "UPDATE cards SET position = v.position \
         FROM unnest($1::uuid[], $2::bigint[]) AS v(id, position) WHERE cards.id = v.id",
    )
    .bind::<sql_types::Array<sql_types::Uuid>, _>(order)
    .bind::<sql_types::Array<sql_types::BigInt>, _>(positions)
    .execute(conn)
    .await
    .map(|_| ())
}

/// One line of a card's history.
pub struct Activity<'a> {
    pub card: &'a CardRow,
    pub kind: &'static str,
    pub actor: (&'static str, Option<Uuid>),
    pub from_column: Option<Uuid>,
    pub to_column: Option<Uuid>,
    pub seconds_in_column: Option<i64>,
    pub data: Value,
}

impl<'a> Activity<'a> {
    pub fn new(card: &'a CardRow, kind: &'static str, caller: &Caller) -> Activity<'a> {
        Activity::by(card, kind, crate::audit::actor_of(caller))
    }

    /// A line by an actor that is not a caller: `("flow", Some(execution))`, `("system", None)`.
    pub fn by(
        card: &'a CardRow,
        kind: &'static str,
        actor: (&'static str, Option<Uuid>),
    ) -> Activity<'a> {
        Activity {
            card,
            kind,
            actor,
            from_column: None,
            to_column: None,
            seconds_in_column: None,
            data: json!({}),
        }
    }

    pub async fn record(self, conn: &mut AsyncPgConnection) -> QueryResult<()> {
        diesel::insert_into(card_activity::table)
            .values((
                card_activity::tenant_id.eq(self.card.tenant_id),
                card_activity::board_id.eq(self.card.board_id),
                card_activity::card_id.eq(self.card.id),
                card_activity::kind.eq(self.kind),
                card_activity::actor_kind.eq(self.actor.0),
                card_activity::actor_id.eq(self.actor.1),
                card_activity::from_column_id.eq(self.from_column),
                card_activity::to_column_id.eq(self.to_column),
                card_activity::seconds_in_column.eq(self.seconds_in_column),
                card_activity::data.eq(self.data),
                card_activity::at.eq(Utc::now()),
            ))
            .execute(conn)
            .await
            .map(|_| ())
    }
}

/// Stores a `card.*` event (in the caller's transaction); publish the row after commit.
pub async fn card_event(
    conn: &mut AsyncPgConnection,
    kind: &'static str,
    card: &CardRow,
    actor: (&'static str, Option<Uuid>),
    extra: Value,
) -> QueryResult<EventRow> {
    let mut data = json!({
        "card_id": card.id,
        "board_id": card.board_id,
        "column_id": card.column_id,
        "title": card.title,
        "session_id": card.session_id,
        "chat": card.chat,
        "assignee_id": card.assignee_id,
        "by": {"kind": actor.0, "id": actor.1},
    });
    if let (Some(d), Value::Object(e)) = (data.as_object_mut(), extra) {
        d.extend(e);
    }
    crate::events::store::insert_event(
        conn,
        card.tenant_id,
        card.session_id,
        &EventPayload::Platform(kind, data),
    )
    .await
}

/// After commit: the events out to subscribers.
pub fn publish(state: &AppState, rows: Vec<EventRow>) {
    state.events.publish(rows);
}

/// Checks that a member named as assignee belongs to the tenant (else a 400 on the field).
pub async fn check_assignee(
    conn: &mut AsyncPgConnection,
    tenant: Uuid,
    assignee: Option<Uuid>,
) -> Result<(), ApiError> {
    let Some(id) = assignee else { return Ok(()) };
    let found = crate::members::store::get(conn, id)
        .await?
        .is_some_and(|m| m.tenant_id == tenant);
    if !found {
        return Err(ApiError::validation(
            "assignee_id",
            "is not a member of this tenant",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(positions: &[i64]) -> Vec<(Uuid, i64)> {
        positions.iter().map(|p| (Uuid::new_v4(), *p)).collect()
    }

    #[test]
    fn a_slot_is_the_midpoint_or_none_when_there_is_no_room() {
        assert_eq!(slot(&[], 0), Some(GAP));
        assert_eq!(slot(&ids(&[1024]), 0), Some(512));
        assert_eq!(slot(&ids(&[1024]), 1), Some(2048));
        assert_eq!(slot(&ids(&[1024]), 9), Some(2048));
        assert_eq!(slot(&ids(&[1024, 2048]), 1), Some(1536));
        assert_eq!(slot(&ids(&[1024, 1025]), 1), None);
        assert_eq!(slot(&ids(&[1]), 0), None);
    }
}
