//! What a flow's `create_card`, `move_card` and `notify` steps do, inside the transaction that
//! records the step (`automation::store::commit_step`): the effect and the step's record
//! commit together, so a step acts exactly once however often its execution is retried.
//! An AI agent's `create_card` and `move_card` tools do the same through [`agent_tool`].
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

/// Who acts on a chat's card, for whom: a flow's execution or an AI agent.
pub struct OnChat<'a> {
    pub tenant_id: Uuid,
    pub session_id: Uuid,
    pub chat: &'a str,
    /// `("flow", execution)` or `("agent", agent)`: the card's activity and events say who.
    pub actor: (&'static str, Option<Uuid>),
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
    let done = async {
        match action {
            PlatformAction::CreateCard {
                board_id,
                column,
                title,
                description,
                assignee_id,
            } => {
                let on = on_chat(step)?;
                let board = board(conn, step.tenant_id, *board_id).await?;
                create_card(
                    conn,
                    &on,
                    &board,
                    column.as_deref(),
                    title.as_deref(),
                    description.clone(),
                    *assignee_id,
                )
                .await
            }
            PlatformAction::MoveCard { board_id, column } => {
                let on = on_chat(step)?;
                let board = board(conn, step.tenant_id, *board_id).await?;
                move_card(conn, &on, &board, column).await
            }
            PlatformAction::Notify {
                title,
                body,
                level,
                member_id,
            } => notify(conn, step, title, body, level, *member_id).await,
        }
    }
    .await;
    settle(done)
}

/// A step's or tool's outcome: the database's own failures are errors of the commit (it is
/// retried); every other refusal is the step's, in words.
fn settle(done: Result<(Value, Vec<EventRow>), ApiError>) -> anyhow::Result<StepResult> {
    match done {
        Ok(out) => Ok(Ok(out)),
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

async fn board(conn: &mut AsyncPgConnection, tenant: Uuid, id: Uuid) -> Result<BoardRow, ApiError> {
    boards::table
        .find(id)
        .filter(boards::tenant_id.eq(tenant))
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
    match found {
        Some(c) => Ok(c),
        // The names it has, so an agent told "no such column" can pick a right one.
        None => Err(refuse(match wanted {
            Some(w) => format!(
                "the board {:?} has no column {w:?}; its columns are {}",
                board.name,
                store::columns_of(conn, board.id)
                    .await?
                    .iter()
                    .map(|c| format!("{:?}", c.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => format!("the board {:?} has no columns", board.name),
        })),
    }
}

/// The tenant's board of this name (case-insensitive); `None`: its first board.
async fn board_named(
    conn: &mut AsyncPgConnection,
    tenant: Uuid,
    wanted: Option<&str>,
) -> Result<BoardRow, ApiError> {
    let all: Vec<BoardRow> = boards::table
        .filter(boards::tenant_id.eq(tenant))
        .order((boards::created_at.asc(), boards::id.asc()))
        .select(BoardRow::as_select())
        .load(conn)
        .await?;
    let names = || {
        all.iter()
            .map(|b| format!("{:?}", b.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let found = match wanted {
        None => <[BoardRow]>::first(&all),
        Some(w) => all
            .iter()
            .find(|b| b.name.to_lowercase() == w.trim().to_lowercase()),
    };
    match (found, wanted) {
        (Some(b), _) => Ok(b.clone()),
        (None, _) if all.is_empty() => Err(refuse("the business has no board")),
        (None, w) => Err(refuse(format!(
            "there is no board {:?}; the boards are {}",
            w.unwrap_or_default(),
            names()
        ))),
    }
}

/// An AI agent's `create_card` or `move_card` tool on its chat, in the caller's transaction.
/// `args` are the model's: `board` and `column` by name, `title`. `Err` only when the
/// database fails; what the model asked wrongly is `Ok(Err(why))`, told back to it.
pub async fn agent_tool(
    conn: &mut AsyncPgConnection,
    on: &OnChat<'_>,
    tool: &str,
    args: &Value,
) -> anyhow::Result<StepResult> {
    use wagate_actors::ai::tools::{CREATE_CARD, MOVE_CARD};
    let text = |field: &str| -> Result<Option<&str>, ApiError> {
        match &args[field] {
            Value::Null => Ok(None),
            Value::String(s) if s.contains('\0') => Err(ApiError::validation(
                field,
                "must not contain NUL characters",
            )),
            Value::String(s) if s.trim().is_empty() => Ok(None),
            Value::String(s) => Ok(Some(s.as_str())),
            _ => Err(ApiError::validation(field, "must be a string")),
        }
    };
    let done = async {
        let (board_name, column, title) = (text("board")?, text("column")?, text("title")?);
        match tool {
            CREATE_CARD => {
                let board = board_named(conn, on.tenant_id, board_name).await?;
                create_card(conn, on, &board, column, title, None, None).await
            }
            MOVE_CARD => {
                let column = column.ok_or_else(|| refuse("column is required"))?;
                let board = match board_name {
                    Some(_) => board_named(conn, on.tenant_id, board_name).await?,
                    // The board of the chat's newest card.
                    None => {
                        let newest: Option<Uuid> = cards::table
                            .filter(cards::tenant_id.eq(on.tenant_id))
                            .filter(cards::session_id.eq(on.session_id))
                            .filter(cards::chat.eq(on.chat))
                            .order(cards::created_at.desc())
                            .select(cards::board_id)
                            .first(conn)
                            .await
                            .optional()?;
                        let id = newest.ok_or_else(|| {
                            refuse("this conversation has no card yet (create_card first)")
                        })?;
                        board(conn, on.tenant_id, id).await?
                    }
                };
                move_card(conn, on, &board, column).await
            }
            other => Err(refuse(format!("there is no tool {other}"))),
        }
    }
    .await;
    settle(done)
}

fn on_chat<'a>(step: &StepOf<'a>) -> Result<OnChat<'a>, ApiError> {
    match (step.session_id, step.chat) {
        (Some(session_id), Some(chat)) => Ok(OnChat {
            tenant_id: step.tenant_id,
            session_id,
            chat,
            actor: ("flow", Some(step.execution_id)),
            max_cards_per_board: step.max_cards_per_board,
        }),
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
    on: &OnChat<'_>,
    board: &BoardRow,
    wanted: Option<&str>,
    title: Option<&str>,
    description: Option<String>,
    assignee: Option<Uuid>,
) -> Result<(Value, Vec<EventRow>), ApiError> {
    let (session, chat) = (on.session_id, on.chat);
    let column = column(conn, board, wanted).await?;
    // One card per chat and board: a flow that runs again for the chat finds it.
    if let Some(card) = card_of_chat(conn, board.id, session, chat).await? {
        return Ok((json!({"card_id": card.id, "created": false}), Vec::new()));
    }
    if let Some(a) = assignee {
        store::check_assignee(conn, on.tenant_id, Some(a))
            .await
            .map_err(|_| refuse(format!("the member {a} is no longer the tenant's")))?;
    }
    let title = match title.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => super::name("title", t)?,
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
        tenant_id: on.tenant_id,
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
        super::cards::insert_card(conn, &mut card, &column, on.max_cards_per_board, on.actor)
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
    on: &OnChat<'_>,
    board: &BoardRow,
    wanted: &str,
) -> Result<(Value, Vec<EventRow>), ApiError> {
    let to = column(conn, board, Some(wanted)).await?;
    let card = card_of_chat(conn, board.id, on.session_id, on.chat)
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
        super::cards::move_in(conn, on.actor, card.id, &to, usize::MAX).await?;
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
