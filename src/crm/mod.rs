//! The CRM: kanban boards whose cards are conversations. A board has ordered columns (with an
//! optional WIP limit); a card sits in a column at a position, may link a chat of a session,
//! has an assignee, labels, a due date, a value, comments, and an activity history (created,
//! moved with the time spent in the column it left, assigned, updated, commented, deleted).
//!
//! Ordering survives concurrent moves: positions are gapped integers, a move locks the
//! columns it touches (in id order, so two moves never deadlock) and takes the midpoint of its
//! new neighbours, renumbering the column in the same transaction when there is no room.
//! `card.created` and `card.moved` go into the event log (so to webhooks and the WebSocket).

pub mod boards;
pub mod cards;
pub mod flow_steps;
pub mod insights;
pub mod jobs;
pub mod store;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub use store::{BoardRow, CardRow, ColumnRow, CommentRow};

/// A column as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ColumnOut {
    pub id: Uuid,
    pub board_id: Uuid,
    pub name: String,
    pub wip_limit: Option<i32>,
    /// 0-based, left to right.
    pub position: i32,
    pub created_at: DateTime<Utc>,
}

impl From<&ColumnRow> for ColumnOut {
    fn from(c: &ColumnRow) -> ColumnOut {
        ColumnOut {
            id: c.id,
            board_id: c.board_id,
            name: c.name.clone(),
            wip_limit: c.wip_limit,
            position: c.position,
            created_at: c.created_at,
        }
    }
}

/// A card as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CardOut {
    pub id: Uuid,
    pub board_id: Uuid,
    pub column_id: Uuid,
    /// Its place in the column, 0-based (in lists and after a move).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub title: String,
    pub description: Option<String>,
    pub session_id: Option<Uuid>,
    pub chat: Option<String>,
    pub assignee_id: Option<Uuid>,
    pub labels: Vec<String>,
    pub due_at: Option<DateTime<Utc>>,
    pub value: Option<f64>,
    /// Made by the board for a new chat of its session.
    pub auto: bool,
    /// When it entered its column.
    pub column_entered_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&CardRow> for CardOut {
    fn from(c: &CardRow) -> CardOut {
        CardOut {
            id: c.id,
            board_id: c.board_id,
            column_id: c.column_id,
            index: None,
            title: c.title.clone(),
            description: c.description.clone(),
            session_id: c.session_id,
            chat: c.chat.clone(),
            assignee_id: c.assignee_id,
            labels: c.labels.clone(),
            due_at: c.due_at,
            value: c.value,
            auto: c.auto,
            column_entered_at: c.column_entered_at,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// A column with its cards, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct ColumnWithCards {
    #[serde(flatten)]
    pub column: ColumnOut,
    pub cards: Vec<CardOut>,
}

/// A board as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct BoardOut {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    /// Every new chat of this session becomes a card in `auto_column_id`.
    pub auto_session_id: Option<Uuid>,
    pub auto_column_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Left to right; with their cards in `GET /boards/{id}`.
    pub columns: Vec<ColumnWithCards>,
}

impl BoardOut {
    pub fn new(b: &BoardRow, columns: Vec<ColumnWithCards>) -> BoardOut {
        BoardOut {
            id: b.id,
            tenant_id: b.tenant_id,
            name: b.name.clone(),
            description: b.description.clone(),
            auto_session_id: b.auto_session_id,
            auto_column_id: b.auto_column_id,
            created_at: b.created_at,
            updated_at: b.updated_at,
            columns,
        }
    }
}

/// A comment as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommentOut {
    pub id: Uuid,
    pub card_id: Uuid,
    /// `member`, `key` or `admin`.
    pub author_kind: String,
    pub author_id: Option<Uuid>,
    pub text: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&CommentRow> for CommentOut {
    fn from(c: &CommentRow) -> CommentOut {
        CommentOut {
            id: c.id,
            card_id: c.card_id,
            author_kind: c.author_kind.clone(),
            author_id: c.author_id,
            text: c.text.clone(),
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct BoardPath {
    pub board_id: Uuid,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ColumnPath {
    pub board_id: Uuid,
    pub column_id: Uuid,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct CardPath {
    pub board_id: Uuid,
    pub card_id: Uuid,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct CommentPath {
    pub board_id: Uuid,
    pub card_id: Uuid,
    pub comment_id: Uuid,
}

/// A name: 1 to 200 characters, trimmed.
pub(crate) fn name(field: &str, raw: &str) -> Result<String, crate::error::ApiError> {
    let n = raw.trim();
    if n.is_empty() || n.chars().count() > 200 {
        return Err(crate::error::ApiError::validation(
            field,
            "must be 1 to 200 characters",
        ));
    }
    Ok(n.to_owned())
}

/// Every route of the CRM; literal segments before captures.
pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(boards::create_board)
        .service(boards::list_boards)
        .service(insights::search)
        .service(insights::board_stats)
        .service(insights::get_board_activity)
        .service(boards::reorder_columns)
        .service(insights::column_stats)
        .service(cards::reorder_cards)
        .service(boards::create_column)
        .service(boards::update_column)
        .service(boards::delete_column)
        .service(cards::create_card)
        .service(cards::move_card)
        .service(insights::get_card_activity)
        .service(cards::list_comments)
        .service(cards::create_comment)
        .service(cards::update_comment)
        .service(cards::delete_comment)
        .service(cards::get_card)
        .service(cards::update_card)
        .service(cards::delete_card)
        .service(boards::get_board)
        .service(boards::update_board)
        .service(boards::delete_board);
}
