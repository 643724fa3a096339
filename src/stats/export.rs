//! Rows for export, a page at a time: `GET /api/v1/stats/export` streams them as CSV, the
//! report worker writes them into a stored report. Every kind walks its rows with a keyset
//! cursor on an index, so a million rows are never held at once: memory is one page.

use actix_web::{HttpResponse, get, web};
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{
    Array, BigInt, Bool, Float8, Int4, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;
use uuid::Uuid;

use super::{Period, zone_of};
use crate::ai::tenant_of;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::http::openapi::CommonErrors;

/// Rows fetched per page.
pub const PAGE_ROWS: i64 = 2_000;

/// What may be exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Messages,
    Agents,
    Cards,
    Webhooks,
}

impl Kind {
    pub fn parse(s: &str) -> Result<Kind, ApiError> {
        match s {
            "messages" => Ok(Kind::Messages),
            "agents" => Ok(Kind::Agents),
            "cards" => Ok(Kind::Cards),
            "webhooks" => Ok(Kind::Webhooks),
            _ => Err(ApiError::validation(
                "kind",
                "must be messages, agents, cards or webhooks",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Messages => "messages",
            Kind::Agents => "agents",
            Kind::Cards => "cards",
            Kind::Webhooks => "webhooks",
        }
    }

    /// The header row.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Kind::Messages => &[
                "id",
                "session_id",
                "direction",
                "chat",
                "type",
                "status",
                "error",
                "text",
                "sent_by",
                "created_at",
                "updated_at",
            ],
            Kind::Agents => &[
                "day",
                "agent_id",
                "agent",
                "model",
                "replies",
                "conversations",
                "handed_off",
                "prompt_tokens",
                "output_tokens",
                "cost_usd",
            ],
            Kind::Cards => &[
                "id",
                "board",
                "column",
                "title",
                "session_id",
                "chat",
                "assignee_id",
                "labels",
                "value",
                "due_at",
                "created_at",
                "updated_at",
            ],
            Kind::Webhooks => &[
                "id",
                "webhook_id",
                "event_type",
                "status",
                "attempts",
                "last_status_code",
                "last_error",
                "created_at",
                "delivered_at",
            ],
        }
    }
}

/// Where the next page starts.
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    /// Messages are walked a session at a time (their index is per session).
    pub session: Option<Uuid>,
    pub at: Option<DateTime<Utc>>,
    pub id: Option<String>,
    pub done: bool,
}

impl Cursor {
    /// After a page walked by `(at, id)`: where the next starts, and whether there is one (a
    /// page shorter than [`PAGE_ROWS`] was the last).
    fn after_page(last: Option<(DateTime<Utc>, String)>, fetched: usize) -> Cursor {
        let (at, id) = last.unzip();
        Cursor {
            at,
            id,
            done: (fetched as i64) < PAGE_ROWS,
            session: None,
        }
    }
}

/// One page of rows (each as many values as [`Kind::columns`]) and the cursor after it.
pub async fn page(
    state: &AppState,
    conn: &mut AsyncPgConnection,
    kind: Kind,
    tenant: Uuid,
    period: Period,
    zone: &str,
    cursor: &Cursor,
) -> Result<(Vec<Vec<Value>>, Cursor), ApiError> {
    if cursor.done {
        return Ok((vec![], cursor.clone()));
    }
    match kind {
        Kind::Messages => messages_page(conn, tenant, period, cursor).await,
        Kind::Agents => agents_page(state, conn, tenant, period, zone).await,
        Kind::Cards => cards_page(conn, tenant, period, cursor).await,
        Kind::Webhooks => webhooks_page(conn, tenant, period, cursor).await,
    }
}

fn time(t: DateTime<Utc>) -> Value {
    Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[derive(QueryableByName)]
struct MessageLine {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    session_id: Uuid,
    #[diesel(sql_type = Text)]
    direction: String,
    #[diesel(sql_type = Text)]
    chat: String,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<Text>)]
    error: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    text: Option<String>,
    #[diesel(sql_type = Bool)]
    bot: bool,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    updated_at: DateTime<Utc>,
}

#[derive(QueryableByName)]
struct NextSession {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

async fn next_session(
    conn: &mut AsyncPgConnection,
    tenant: Uuid,
    after: Option<Uuid>,
) -> diesel::QueryResult<Option<Uuid>> {
    let rows: Vec<NextSession> = diesel::sql_query(
        "SELECT id FROM sessions WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id > $2) \
         ORDER BY id LIMIT 1",
    )
    .bind::<SqlUuid, _>(tenant)
    .bind::<Nullable<SqlUuid>, _>(after)
    .load(conn)
    .await?;
    Ok(rows.into_iter().next().map(|r| r.id))
}

async fn messages_page(
    conn: &mut AsyncPgConnection,
    tenant: Uuid,
    period: Period,
    cursor: &Cursor,
) -> Result<(Vec<Vec<Value>>, Cursor), ApiError> {
    let mut cursor = cursor.clone();
    if cursor.session.is_none() {
        cursor.session = next_session(conn, tenant, None).await?;
    }
    loop {
        let Some(session) = cursor.session else {
            cursor.done = true;
            return Ok((vec![], cursor));
        };
        let after_id = cursor.id.as_deref().and_then(|i| Uuid::parse_str(i).ok());
        let lines: Vec<MessageLine> = diesel::sql_query(
            "SELECT id, session_id, direction, chat, kind, status, error, text, \
               stat_is_bot(idempotency_key) AS bot, created_at, updated_at \
             FROM messages WHERE session_id = $1 AND created_at >= $2 AND created_at < $3 \
               AND ($4::timestamptz IS NULL OR (created_at, id) > ($4, $5)) \
             ORDER BY created_at, id LIMIT $6",
        )
        .bind::<SqlUuid, _>(session)
        .bind::<Timestamptz, _>(period.from)
        .bind::<Timestamptz, _>(period.to)
        .bind::<Nullable<Timestamptz>, _>(cursor.at)
        .bind::<SqlUuid, _>(after_id.unwrap_or_default())
        .bind::<BigInt, _>(PAGE_ROWS)
        .load(conn)
        .await?;
        if lines.is_empty() {
            cursor.session = next_session(conn, tenant, Some(session)).await?;
            cursor.at = None;
            cursor.id = None;
            continue;
        }
        if let Some(last) = lines.last() {
            cursor.at = Some(last.created_at);
            cursor.id = Some(last.id.to_string());
        }
        let rows = lines
            .into_iter()
            .map(|m| {
                vec![
                    json!(m.id),
                    json!(m.session_id),
                    json!(m.direction),
                    json!(m.chat),
                    json!(m.kind),
                    json!(m.status),
                    json!(m.error),
                    json!(m.text),
                    json!(if m.direction == "in" {
                        "contact"
                    } else if m.bot {
                        "bot"
                    } else {
                        "human"
                    }),
                    time(m.created_at),
                    time(m.updated_at),
                ]
            })
            .collect();
        return Ok((rows, cursor));
    }
}

#[derive(QueryableByName)]
struct AgentDay {
    #[diesel(sql_type = Text)]
    day: String,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    agent_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<Text>)]
    name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    model: Option<String>,
    #[diesel(sql_type = BigInt)]
    replies: i64,
    #[diesel(sql_type = BigInt)]
    conversations: i64,
    #[diesel(sql_type = BigInt)]
    handed_off: i64,
    #[diesel(sql_type = BigInt)]
    prompt_tokens: i64,
    #[diesel(sql_type = BigInt)]
    output_tokens: i64,
}

/// Per local day and agent: at most 400 days × the tenant's agents, one page.
async fn agents_page(
    state: &AppState,
    conn: &mut AsyncPgConnection,
    tenant: Uuid,
    period: Period,
    zone: &str,
) -> Result<(Vec<Vec<Value>>, Cursor), ApiError> {
    let days: Vec<AgentDay> = diesel::sql_query(
        "SELECT to_char(k.created_at AT TIME ZONE $4, 'YYYY-MM-DD') AS day, k.agent_id, \
           max(a.name) AS name, coalesce(max(k.model), max(a.model)) AS model, \
           count(*) FILTER (WHERE k.kind = 'reply' AND k.error IS NULL) AS replies, \
           count(DISTINCT (k.session_id, k.chat)) FILTER (WHERE k.kind IN ('reply', 'fallback', 'handoff') \
             AND k.chat IS NOT NULL) AS conversations, \
           count(DISTINCT (k.session_id, k.chat)) FILTER (WHERE k.kind = 'handoff') AS handed_off, \
           coalesce(sum(k.prompt_tokens), 0)::bigint AS prompt_tokens, \
           coalesce(sum(k.output_tokens), 0)::bigint AS output_tokens \
         FROM ai_calls k LEFT JOIN ai_agents a ON a.id = k.agent_id \
         WHERE k.tenant_id = $1 AND k.created_at >= $2 AND k.created_at < $3 \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind::<SqlUuid, _>(tenant)
    .bind::<Timestamptz, _>(period.from)
    .bind::<Timestamptz, _>(period.to)
    .bind::<Text, _>(zone)
    .load(conn)
    .await?;
    let rows = days
        .into_iter()
        .map(|d| {
            let cost = d.model.as_deref().and_then(|m| {
                crate::ai::cost(&state.settings, m, d.prompt_tokens, d.output_tokens)
            });
            vec![
                json!(d.day),
                json!(d.agent_id),
                json!(d.name),
                json!(d.model),
                json!(d.replies),
                json!(d.conversations),
                json!(d.handed_off),
                json!(d.prompt_tokens),
                json!(d.output_tokens),
                json!(cost),
            ]
        })
        .collect();
    Ok((
        rows,
        Cursor {
            done: true,
            ..Cursor::default()
        },
    ))
}

#[derive(QueryableByName)]
struct CardLine {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    board: String,
    #[diesel(sql_type = Text)]
    column: String,
    #[diesel(sql_type = Text)]
    title: String,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    session_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<Text>)]
    chat: Option<String>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    assignee_id: Option<Uuid>,
    #[diesel(sql_type = Array<Text>)]
    labels: Vec<String>,
    #[diesel(sql_type = Nullable<Float8>)]
    value: Option<f64>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    due_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    updated_at: DateTime<Utc>,
}

/// Cards created in the period, by creation.
async fn cards_page(
    conn: &mut AsyncPgConnection,
    tenant: Uuid,
    period: Period,
    cursor: &Cursor,
) -> Result<(Vec<Vec<Value>>, Cursor), ApiError> {
    let after_id = cursor.id.as_deref().and_then(|i| Uuid::parse_str(i).ok());
    let lines: Vec<CardLine> = diesel::sql_query(
        "SELECT k.id, b.name AS board, c.name AS column, k.title, k.session_id, k.chat, \
           k.assignee_id, k.labels, k.value, k.due_at, k.created_at, k.updated_at \
         FROM cards k JOIN boards b ON b.id = k.board_id JOIN board_columns c ON c.id = k.column_id \
         WHERE k.tenant_id = $1 AND k.created_at >= $2 AND k.created_at < $3 \
           AND ($4::timestamptz IS NULL OR (k.created_at, k.id) > ($4, $5)) \
         ORDER BY k.created_at, k.id LIMIT $6",
    )
    .bind::<SqlUuid, _>(tenant)
    .bind::<Timestamptz, _>(period.from)
    .bind::<Timestamptz, _>(period.to)
    .bind::<Nullable<Timestamptz>, _>(cursor.at)
    .bind::<SqlUuid, _>(after_id.unwrap_or_default())
    .bind::<BigInt, _>(PAGE_ROWS)
    .load(conn)
    .await?;
    let next = Cursor::after_page(
        lines.last().map(|l| (l.created_at, l.id.to_string())),
        lines.len(),
    );
    let rows = lines
        .into_iter()
        .map(|k| {
            vec![
                json!(k.id),
                json!(k.board),
                json!(k.column),
                json!(k.title),
                json!(k.session_id),
                json!(k.chat),
                json!(k.assignee_id),
                json!(k.labels.join(";")),
                json!(k.value),
                k.due_at.map_or(Value::Null, time),
                time(k.created_at),
                time(k.updated_at),
            ]
        })
        .collect();
    Ok((rows, next))
}

#[derive(QueryableByName)]
struct DeliveryLine {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = SqlUuid)]
    webhook_id: Uuid,
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Int4)]
    attempts: i32,
    #[diesel(sql_type = Nullable<Int4>)]
    last_status_code: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    delivered_at: Option<DateTime<Utc>>,
}

async fn webhooks_page(
    conn: &mut AsyncPgConnection,
    tenant: Uuid,
    period: Period,
    cursor: &Cursor,
) -> Result<(Vec<Vec<Value>>, Cursor), ApiError> {
    let lines: Vec<DeliveryLine> = diesel::sql_query(
        "SELECT id, webhook_id, event_type, status, attempts, last_status_code, last_error, \
           created_at, delivered_at \
         FROM webhook_deliveries WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3 \
           AND ($4::timestamptz IS NULL OR (created_at, id) > ($4, $5)) \
         ORDER BY created_at, id LIMIT $6",
    )
    .bind::<SqlUuid, _>(tenant)
    .bind::<Timestamptz, _>(period.from)
    .bind::<Timestamptz, _>(period.to)
    .bind::<Nullable<Timestamptz>, _>(cursor.at)
    .bind::<Text, _>(cursor.id.clone().unwrap_or_default())
    .bind::<BigInt, _>(PAGE_ROWS)
    .load(conn)
    .await?;
    let next = Cursor::after_page(
        lines.last().map(|l| (l.created_at, l.id.clone())),
        lines.len(),
    );
    let rows = lines
        .into_iter()
        .map(|d| {
            vec![
                json!(d.id),
                json!(d.webhook_id),
                json!(d.event_type),
                json!(d.status),
                json!(d.attempts),
                json!(d.last_status_code),
                json!(d.last_error),
                time(d.created_at),
                d.delivered_at.map_or(Value::Null, time),
            ]
        })
        .collect();
    Ok((rows, next))
}

/// RFC 4180 lines (CRLF, quoted where needed) of some rows, with the header row first when
/// `header` is set.
pub fn csv_lines(columns: &[&str], rows: &[Vec<Value>], header: bool) -> Result<Vec<u8>, ApiError> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::with_capacity(rows.len() * 128));
    let failed = |e: csv::Error| ApiError::Internal(anyhow::anyhow!("writing CSV: {e}"));
    if header {
        w.write_record(columns).map_err(failed)?;
    }
    for row in rows {
        w.write_record(row.iter().map(|v| match v {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }))
        .map_err(failed)?;
    }
    w.into_inner()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("writing CSV: {e}")))
}

/// JSON objects (keys from the header), each followed by a comma except the very last: the
/// caller wraps them in `[` `]`.
pub fn json_lines(columns: &[&str], rows: &[Vec<Value>], first: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * 160);
    for (i, row) in rows.iter().enumerate() {
        if !(first && i == 0) {
            out.extend_from_slice(b",\n");
        }
        let object: serde_json::Map<String, Value> = columns
            .iter()
            .map(|c| (*c).to_owned())
            .zip(row.iter().cloned())
            .collect();
        // A map of JSON values always serialises.
        out.extend_from_slice(&serde_json::to_vec(&object).unwrap_or_default());
    }
    out
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `messages`, `agents`, `cards` or `webhooks`.
    pub kind: String,
    /// RFC 3339, or a date in the tenant's time zone. Default: 30 days before `to`.
    pub from: Option<String>,
    /// RFC 3339, or a date (its whole day counts). Default: the end of today.
    pub to: Option<String>,
    /// The admin key names the tenant.
    pub tenant_id: Option<Uuid>,
}

/// Streams a CSV export (RFC 4180, header row): read a page, send it, read the next, so
/// memory holds one page whatever the size.
#[utoipa::path(tag = "stats", params(ExportQuery), responses((status = 200, description = "CSV, streamed", content_type = "text/csv", body = String), CommonErrors), security(("api_key" = [])))]
#[get("/stats/export")]
pub async fn export(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<ExportQuery>,
) -> Result<HttpResponse, ApiError> {
    let kind = Kind::parse(&query.kind)?;
    let tenant = tenant_of(&state, &caller, query.tenant_id).await?;
    let zone = {
        let mut conn = state.db.get().await?;
        zone_of(&mut conn, tenant).await?
    };
    let today = super::today(zone, Utc::now());
    let period = Period::parse(
        query.from.as_deref(),
        query.to.as_deref(),
        zone,
        Period {
            from: today.to - chrono::Duration::days(30),
            to: today.to,
        },
    )?;
    let stream = futures::stream::unfold(
        (state, Cursor::default(), true),
        move |(state, cursor, first)| async move {
            if cursor.done && !first {
                return None;
            }
            let chunk = async {
                let mut conn = state.db.get().await?;
                let (rows, next) = page(
                    &state,
                    &mut conn,
                    kind,
                    tenant,
                    period,
                    zone.name(),
                    &cursor,
                )
                .await?;
                let mut next = next;
                if rows.is_empty() {
                    next.done = true;
                }
                Ok::<_, ApiError>((csv_lines(kind.columns(), &rows, first)?, next))
            }
            .await;
            match chunk {
                Ok((bytes, next)) => Some((
                    Ok::<_, ApiError>(web::Bytes::from(bytes)),
                    (state, next, false),
                )),
                Err(e) => {
                    // The status line is gone: the client sees a cut stream.
                    tracing::warn!(error = %e, "export stopped");
                    Some((
                        Err(e),
                        (
                            state,
                            Cursor {
                                done: true,
                                ..Cursor::default()
                            },
                            false,
                        ),
                    ))
                }
            }
        },
    );
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            "content-disposition",
            format!(
                "attachment; filename=\"{}-{}.csv\"",
                kind.as_str(),
                period.from.format("%Y%m%d")
            ),
        ))
        .streaming(stream))
}
