//! What a flow's `create_card`, `move_card` and `notify` steps do, inside the transaction that
//! records the step (`automation::store::commit_step`): the effect and the step's record
//! commit together, so a step acts exactly once however often its execution is retried.
//! A step that cannot act (the board lost the column, the column is at its WIP limit) fails
//! with why, in words; only the database failing is an error of the commit.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};
use uuid::Uuid;
use wagate_actors::automation::flow::PlatformAction;

use super::store::{self, BoardRow, CardRow, ColumnRow};
use crate::error::ApiError;
use crate::events::store::EventRow;
use crate::notifications::{self, NewNotification};
use crate::schema::{boards, cards};

/// The execution a step belongs to.
pub struct StepOf<'a> {
    pub tenant_id: Uuid,
    pub execution_id: Uuid,
    pub flow_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub chat: Option<&'a str>,
    /// The step's number in the execution: a notification is made once per step.
    pub seq: u32,
    pub max_cards_per_board: i64,
}

/// What a step did: its output for the history and the events to publish after commit; or
/// why it could not act.
pub type StepResult = Result<(Value, Vec<EventRow>), String>;

/// Applies `action`. `Err` only when the database fails (the commit is retried); a step that
/// cannot act is `Ok(Err(why))`.
pub async fn apply(
    conn: &mut AsyncPgConnection,
    step: &StepOf<'_>,
    action: &PlatformAction,
) -> anyhow::Result<StepResult> {
    let done = match action {
        PlatformAction::CreateCard {
            board_id,
            column,
            title,
            description,
            assignee_id,
        } => {
            create_card(
                conn,
                step,
                *board_id,
                column.as_deref(),
                title.as_deref(),
                description.clone(),
                *assignee_id,
            )
            .await
        }
        PlatformAction::MoveCard { board_id, column } => {
            move_card(conn, step, *board_id, column).await
        }
        PlatformAction::Notify {
            title,
            body,
            level,
            member_id,
        } => notify(conn, step, title, body, level, *member_id).await,
    };
    match done {
        Ok(out) => Ok(Ok(out)),
        // The database's own failures are the commit's; every other refusal is the step's.
        Err(ApiError::Internal(e)) => Err(e),
        Err(ApiError::Unavailable(what)) => Err(anyhow::anyhow!("{what} is unavailable")),
        Err(refused) => Ok(Err(refused.to_string())),
    }
}

fn refuse(message: impl Into<String>) -> ApiError {
    ApiError::Conflict {
        code: crate::error::ErrorCode::ValidationFailed,
        message: message.into(),
    }
}

fn actor(step: &StepOf<'_>) -> (&'static str, Option<Uuid>) {
    ("flow", Some(step.execution_id))
}

async fn board(
    conn: &mut AsyncPgConnection,
    step: &StepOf<'_>,
    id: Uuid,
) -> Result<BoardRow, ApiError> {
    boards::table
        .find(id)
        .filter(boards::tenant_id.eq(step.tenant_id))
        .select(BoardRow::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| refuse(format!("the board {id} is gone")))
}

/// A column of the board by id or by name (case-insensitive); `None`: the first.
async fn column(
    conn: &mut AsyncPgConnection,
    board: &BoardRow,
    wanted: Option<&str>,
) -> Result<ColumnRow, ApiError> {
    let columns = store::columns_of(conn, board.id).await?;
    let found = match wanted {
        None => columns.into_iter().next(),
        Some(w) => {
            let w = w.trim();
            columns.into_iter().find(|c| {
                c.id.to_string() == w.to_ascii_lowercase()
                    || c.name.to_lowercase() == w.to_lowercase()
            })
        }
    };
    found.ok_or_else(|| {
        refuse(match wanted {
            Some(w) => format!("the board {:?} has no column {w:?}", board.name),
            None => format!("the board {:?} has no columns", board.name),
        })
    })
}

fn chat_of<'a>(step: &StepOf<'a>) -> Result<(Uuid, &'a str), ApiError> {
    match (step.session_id, step.chat) {
        (Some(s), Some(c)) => Ok((s, c)),
        _ => Err(refuse(
            "the execution has no chat (start it with session_id and chat)",
        )),
    }
}

/// The chat's card on the board, newest first.
async fn card_of_chat(
    conn: &mut AsyncPgConnection,
    board: Uuid,
    session: Uuid,
    chat: &str,
) -> QueryResult<Option<CardRow>> {
    cards::table
        .filter(cards::board_id.eq(board))
        .filter(cards::session_id.eq(session))
        .filter(cards::chat.eq(chat))
        .order(cards::created_at.desc())
        .select(CardRow::as_select())
        .first(conn)
        .await
        .optional()
}

async fn create_card(
    conn: &mut AsyncPgConnection,
    step: &StepOf<'_>,
    board_id: Uuid,
    wanted: Option<&str>,
    title: Option<&str>,
    description: Option<String>,
    assignee: Option<Uuid>,
) -> Result<(Value, Vec<EventRow>), ApiError> {
    let (session, chat) = chat_of(step)?;
    let board = board(conn, step, board_id).await?;
    let column = column(conn, &board, wanted).await?;
    // One card per chat and board: a flow that runs again for the chat finds it.
    if let Some(card) = card_of_chat(conn, board.id, session, chat).await? {
        return Ok((json!({"card_id": card.id, "created": false}), Vec::new()));
    }
    if let Some(a) = assignee {
        store::check_assignee(conn, step.tenant_id, Some(a))
            .await
            .map_err(|_| refuse(format!("the member {a} is no longer the tenant's")))?;
    }
    let title = match title {
        Some(t) => t.to_owned(),
        None => {
            let name: Option<Option<String>> = crate::schema::chats::table
                .find((session, chat))
                .select(crate::schema::chats::contact_name)
                .first(conn)
                .await
                .optional()?;
            name.flatten()
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| chat.to_owned())
        }
    };
    let now = chrono::Utc::now();
    let mut card = CardRow {
        id: Uuid::now_v7(),
        tenant_id: step.tenant_id,
        board_id: board.id,
        column_id: column.id,
        position: 0,
        title,
        description,
        session_id: Some(session),
        chat: Some(chat.to_owned()),
        assignee_id: assignee,
        labels: Vec::new(),
        due_at: None,
        value: None,
        auto: false,
        column_entered_at: now,
        created_at: now,
        updated_at: now,
    };
    let mut events = vec![
        super::cards::insert_card(
            conn,
            &mut card,
            &column,
            step.max_cards_per_board,
            actor(step),
        )
        .await?,
    ];
    if let Some(member) = assignee
        && let Some((_, ev)) =
            notifications::insert(conn, notifications::assigned_notice(&card, member)).await?
    {
        events.extend(ev);
    }
    Ok((
        json!({"card_id": card.id, "created": true, "column_id": column.id}),
        events,
    ))
}

async fn move_card(
    conn: &mut AsyncPgConnection,
    step: &StepOf<'_>,
    board_id: Uuid,
    wanted: &str,
) -> Result<(Value, Vec<EventRow>), ApiError> {
    let (session, chat) = chat_of(step)?;
    let board = board(conn, step, board_id).await?;
    let to = column(conn, &board, Some(wanted)).await?;
    let card = card_of_chat(conn, board.id, session, chat)
        .await?
        .ok_or_else(|| {
            refuse(format!(
                "the chat has no card on the board {:?}",
                board.name
            ))
        })?;
    if card.column_id == to.id {
        return Ok((
            json!({"card_id": card.id, "moved": false, "column_id": to.id}),
            Vec::new(),
        ));
    }
    let (moved, _, events) =
        super::cards::move_in(conn, actor(step), card.id, &to, usize::MAX).await?;
    Ok((
        json!({"card_id": moved.id, "moved": true, "column_id": to.id}),
        events,
    ))
}

async fn notify(
    conn: &mut AsyncPgConnection,
    step: &StepOf<'_>,
    title: &str,
    body: &str,
    level: &str,
    member: Option<Uuid>,
) -> Result<(Value, Vec<EventRow>), ApiError> {
    if let Some(m) = member {
        store::check_assignee(conn, step.tenant_id, Some(m))
            .await
            .map_err(|_| refuse(format!("the member {m} is no longer the tenant's")))?;
    }
    let level = match level {
        "warning" => "warning",
        "critical" => "critical",
        _ => "info",
    };
    let made = notifications::insert(
        conn,
        NewNotification {
            tenant_id: Some(step.tenant_id),
            member_id: member,
            kind: "flow".into(),
            level,
            title: title.to_owned(),
            body: body.to_owned(),
            data: json!({
                "execution_id": step.execution_id,
                "flow_id": step.flow_id,
                "session_id": step.session_id,
                "chat": step.chat,
            }),
            // A step notifies once, whatever retries its commit.
            source: Some(format!("flow:{}:{}", step.execution_id, step.seq)),
            expires_at: None,
        },
    )
    .await?;
    Ok(match made {
        Some((row, events)) => (json!({"notification_id": row.id}), events),
        None => (json!({"notification_id": null}), Vec::new()),
    })
}
