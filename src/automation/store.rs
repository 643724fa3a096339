//! The TriggerActor's port on Postgres (and reqwest, for `http_request` steps).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use actix::Addr;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};
use sha2::Digest;
use uuid::Uuid;
use wagate_actors::RootSupervisor;
use wagate_actors::automation::flow::{BotAction, Flow, HttpCall, Outbound, render};
use wagate_actors::automation::ports::{
    AutomationStore, EventOutcome, EventWork, ExecStatus, ExecutionWork, StepCommit,
};
use wagate_actors::automation::triggers::{TriggerAction, TriggerSet};
use wagate_actors::directory::SessionDirectory;
use wagate_actors::messaging::Content;

use crate::app::AppState;
use crate::configuration::Settings;
use crate::db::DbPool;
use crate::events::{EventHub, EventPayload, EventRow, insert_event};
use crate::messages::store::MessageRow;

/// The idempotency-key prefix of everything automation sends: the loop guard looks for it.
pub const AUTOMATION_KEY_PREFIX: &str = "wagate:auto:";
/// The most of an `http_request` answer kept.
const MAX_HTTP_BODY: usize = 256 * 1024;

pub struct PgAutomationStore {
    pub db: DbPool,
    pub hub: EventHub,
    pub settings: Arc<Settings>,
    pub supervisor: Addr<RootSupervisor>,
    pub directory: Arc<SessionDirectory>,
    pub http: reqwest::Client,
    /// The handlers' state, for what goes through it (agents' answers, media): set once the
    /// state exists; weak, so the state and the actor do not keep each other alive.
    pub app: Arc<OnceLock<Weak<AppState>>>,
}

/// A stable id from parts: the same event and trigger always make the same execution. It
/// is a UUIDv7 of `at` (the event's time), so executions still list in the order they began.
pub fn derived_id(at: DateTime<Utc>, parts: &[&[u8]]) -> Uuid {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    let d = h.finalize();
    let mut rand = [0u8; 10];
    rand.copy_from_slice(&d[..10]);
    let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(ms, &rand).into_uuid()
}

#[derive(QueryableByName)]
struct ClaimedEvent {
    #[diesel(sql_type = sql_types::Uuid)]
    tenant_id: Uuid,
    #[diesel(sql_type = sql_types::BigInt)]
    event_id: i64,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Uuid>)]
    session_id: Option<Uuid>,
    #[diesel(sql_type = sql_types::Text)]
    kind: String,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    chat: Option<String>,
    #[diesel(sql_type = sql_types::Jsonb)]
    data: Value,
    #[diesel(sql_type = sql_types::Timestamptz)]
    at: DateTime<Utc>,
    #[diesel(sql_type = sql_types::Text)]
    time_zone: String,
    #[diesel(sql_type = sql_types::BigInt)]
    trigger_version: i64,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    contact_name: Option<String>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    session_name: Option<String>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    column_name: Option<String>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    board_name: Option<String>,
    #[diesel(sql_type = sql_types::Array<sql_types::Text>)]
    labels: Vec<String>,
    #[diesel(sql_type = sql_types::Bool)]
    bot_paused: bool,
    #[diesel(sql_type = sql_types::Bool)]
    first_message: bool,
    #[diesel(sql_type = sql_types::Bool)]
    from_automation: bool,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Uuid>)]
    waiting_execution: Option<Uuid>,
    #[diesel(sql_type = sql_types::BigInt)]
    sends_last_minute: i64,
    #[diesel(sql_type = sql_types::Array<sql_types::Uuid>)]
    cooling: Vec<Uuid>,
}

/// Whether a session's bot is paused or stopped now (`b` is its `session_bots` row).
pub const BOT_PAUSED_SQL: &str = "(b.state = 'stopped' OR (b.state = 'paused' \
     AND (b.paused_until IS NULL OR b.paused_until > now())))";

#[derive(QueryableByName)]
struct ClaimedExecution {
    #[diesel(sql_type = sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = sql_types::Uuid)]
    tenant_id: Uuid,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Uuid>)]
    flow_id: Option<Uuid>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Uuid>)]
    session_id: Option<Uuid>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    chat: Option<String>,
    #[diesel(sql_type = sql_types::Jsonb)]
    steps: Value,
    #[diesel(sql_type = sql_types::Jsonb)]
    flow_variables: Value,
    #[diesel(sql_type = sql_types::Text)]
    status: String,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    current_step: Option<String>,
    #[diesel(sql_type = sql_types::Jsonb)]
    variables: Value,
    #[diesel(sql_type = sql_types::Integer)]
    seq: i32,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    input: Option<String>,
    #[diesel(sql_type = sql_types::Text)]
    time_zone: String,
}

fn tz_of(name: &str) -> chrono_tz::Tz {
    name.parse().unwrap_or(chrono_tz::UTC)
}

fn vars_of(v: &Value) -> BTreeMap<String, Value> {
    v.as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// An outgoing message automation sends.
#[allow(clippy::too_many_arguments)]
fn outgoing(
    tenant: Uuid,
    session: Uuid,
    own_phone: &str,
    chat: &str,
    content: &Content,
    key: String,
) -> anyhow::Result<MessageRow> {
    let now = Utc::now();
    Ok(MessageRow {
        id: Uuid::now_v7(),
        tenant_id: tenant,
        session_id: session,
        wa_id: crate::messages::new_wa_id(),
        direction: "out".into(),
        chat: chat.to_owned(),
        own_phone: own_phone.to_owned(),
        kind: content.kind().into(),
        body: serde_json::to_value(content)?,
        text: content.text().map(str::to_owned),
        quoted_id: None,
        status: "queued".into(),
        error: None,
        idempotency_key: Some(key),
        created_at: now,
        updated_at: now,
    })
}

/// The variables an execution starts with: the built-ins, the flow's defaults, then what
/// the caller gave.
pub fn start_variables(
    chat: Option<&str>,
    contact_name: Option<&str>,
    text: Option<&str>,
    session_name: Option<&str>,
    defaults: &Value,
    given: Option<&Value>,
) -> Value {
    let mut vars = serde_json::Map::new();
    vars.insert("chat".into(), json!(chat.unwrap_or_default()));
    vars.insert("phone".into(), json!(chat.unwrap_or_default()));
    vars.insert(
        "contact_name".into(),
        json!(contact_name.unwrap_or_default()),
    );
    vars.insert("text".into(), json!(text.unwrap_or_default()));
    vars.insert(
        "session_name".into(),
        json!(session_name.unwrap_or_default()),
    );
    for src in [Some(defaults), given].into_iter().flatten() {
        if let Some(o) = src.as_object() {
            for (k, v) in o {
                vars.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(vars)
}

/// Starts an execution of a flow (in the caller's transaction). `None` when the flow is
/// missing or disabled, or the execution already exists (the same event and trigger).
#[allow(clippy::too_many_arguments)]
pub async fn start_execution(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    tenant: Uuid,
    flow_id: Uuid,
    trigger_id: Option<Uuid>,
    source: &str,
    event_id: Option<i64>,
    session_id: Option<Uuid>,
    chat: Option<&str>,
    base_vars: Value,
) -> QueryResult<Option<Uuid>> {
    // The flow's declared defaults go under what the start gave.
    let started: Option<Uuid> = diesel::sql_query(
        "INSERT INTO flow_executions (id, tenant_id, flow_id, trigger_id, source, event_id, \
             session_id, chat, steps, flow_variables, status, variables, due_at) \
         SELECT $1, f.tenant_id, f.id, $4, $5, $6, $7, $8, f.steps, f.variables, 'running', \
             f.variables || $9::jsonb, now() \
         FROM flows f WHERE f.id = $3 AND f.tenant_id = $2 AND f.enabled \
         ON CONFLICT (id) DO NOTHING RETURNING id",
    )
    .bind::<sql_types::Uuid, _>(id)
    .bind::<sql_types::Uuid, _>(tenant)
    .bind::<sql_types::Uuid, _>(flow_id)
    .bind::<sql_types::Nullable<sql_types::Uuid>, _>(trigger_id)
    .bind::<sql_types::Text, _>(source)
    .bind::<sql_types::Nullable<sql_types::BigInt>, _>(event_id)
    .bind::<sql_types::Nullable<sql_types::Uuid>, _>(session_id)
    .bind::<sql_types::Nullable<sql_types::Text>, _>(chat)
    .bind::<sql_types::Jsonb, _>(&base_vars)
    .get_result::<IdRow>(conn)
    .await
    .optional()?
    .map(|r| r.id);
    Ok(started)
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = sql_types::Uuid)]
    id: Uuid,
}

#[derive(QueryableByName)]
struct PhoneRow {
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    phone: Option<String>,
}

async fn own_phone(conn: &mut AsyncPgConnection, session: Uuid) -> QueryResult<String> {
    Ok(
        diesel::sql_query("SELECT phone FROM sessions WHERE id = $1")
            .bind::<sql_types::Uuid, _>(session)
            .get_result::<PhoneRow>(conn)
            .await
            .optional()?
            .and_then(|r| r.phone)
            .unwrap_or_default(),
    )
}

impl PgAutomationStore {
    fn app(&self) -> Option<Arc<AppState>> {
        self.app.get().and_then(Weak::upgrade)
    }

    async fn wake(&self, stored: Vec<MessageRow>) {
        crate::messages::jobs::wake_senders_of(&self.supervisor, &self.directory, stored).await;
    }

    /// A `send_media` step's content: the URL fetched (or the upload named) and stored as
    /// the API's sends are, before the transaction.
    async fn media_content(
        &self,
        exec: &ExecutionWork,
        media_type: &str,
        url: &str,
        caption: Option<String>,
        filename: Option<String>,
    ) -> Result<Content, String> {
        let app = self.app().ok_or("the gateway is shutting down")?;
        let session_id = exec.session_id.ok_or("the execution has no session")?;
        let mut conn = self.db.get().await.map_err(|e| e.to_string())?;
        let (session, _) = crate::sessions::store::get_session(&mut conn, session_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the session is gone")?;
        drop(conn);
        let kind: wagate_actors::messaging::MediaKind =
            serde_json::from_value(json!(media_type)).map_err(|e| e.to_string())?;
        let (id, link) = match Uuid::parse_str(url) {
            Ok(_) => (Some(url), None),
            Err(_) => (None, Some(url)),
        };
        let info = crate::media::resolve_for_send(&app, &session, kind, id, link)
            .await
            .map_err(|e| e.to_string())?;
        Ok(crate::media::content_for(kind, &info, caption, filename))
    }
}

#[async_trait]
impl AutomationStore for PgAutomationStore {
    async fn claim_events(&self, limit: usize, lock: Duration) -> anyhow::Result<Vec<EventWork>> {
        let mut conn = self.db.get().await?;
        let rows: Vec<ClaimedEvent> = diesel::sql_query(format!(
            "WITH due AS (SELECT tenant_id, event_id FROM automation_work \
                 WHERE done_at IS NULL AND (locked_until IS NULL OR locked_until < now()) \
                 ORDER BY event_id LIMIT $1 FOR UPDATE SKIP LOCKED), \
             claimed AS (UPDATE automation_work w \
                 SET locked_until = now() + make_interval(secs => $2), attempts = w.attempts + 1 \
                 FROM due WHERE w.tenant_id = due.tenant_id AND w.event_id = due.event_id \
                 RETURNING w.tenant_id, w.event_id, w.session_id, w.kind, w.chat) \
             SELECT c.tenant_id, c.event_id, c.session_id, c.kind, c.chat, e.data, e.at, \
               t.time_zone, COALESCE(v.version, 0) AS trigger_version, \
               ch.contact_name, s.name AS session_name, COALESCE(ch.labels, '{{}}') AS labels, \
               COALESCE({BOT_PAUSED_SQL}, false) AS bot_paused, \
               (c.kind = 'message.received' AND NOT EXISTS (SELECT 1 FROM messages m \
                  WHERE m.session_id = c.session_id AND m.chat = c.chat AND m.direction = 'in' \
                    AND m.id <> (e.data->>'id')::uuid \
                    AND m.created_at <= (e.data->>'created_at')::timestamptz)) AS first_message, \
               (c.kind = 'message.received' AND EXISTS (SELECT 1 FROM sessions o \
                  JOIN messages m ON m.session_id = o.id AND m.direction = 'out' \
                   AND m.wa_id = e.data->>'wa_id' \
                  WHERE o.phone = c.chat AND m.idempotency_key LIKE '{AUTOMATION_KEY_PREFIX}%')) \
                 OR (c.kind = 'card.moved' AND COALESCE(e.data->'by'->>'kind' = 'flow', false)) \
                 AS from_automation, \
               CASE WHEN c.kind = 'card.moved' THEN (SELECT bc.name FROM board_columns bc \
                  WHERE bc.id = (e.data->>'to_column_id')::uuid) END AS column_name, \
               CASE WHEN c.kind = 'card.moved' THEN (SELECT bo.name FROM boards bo \
                  WHERE bo.id = (e.data->>'board_id')::uuid) END AS board_name, \
               (SELECT x.id FROM flow_executions x WHERE x.session_id = c.session_id \
                  AND x.chat = c.chat AND x.status = 'waiting_reply' \
                  ORDER BY x.started_at LIMIT 1) AS waiting_execution, \
               (SELECT count(*) FROM messages m WHERE c.chat IS NOT NULL \
                  AND m.session_id = c.session_id AND m.chat = c.chat AND m.direction = 'out' \
                  AND m.idempotency_key LIKE '{AUTOMATION_KEY_PREFIX}%' \
                  AND m.created_at > now() - interval '1 minute') AS sends_last_minute, \
               ARRAY(SELECT cd.trigger_id FROM trigger_cooldowns cd \
                  JOIN triggers tr ON tr.id = cd.trigger_id \
                  WHERE cd.session_id = c.session_id AND cd.chat = c.chat \
                    AND cd.last_at > now() - make_interval(secs => tr.cooldown_secs)) AS cooling \
             FROM claimed c \
             JOIN events e ON e.tenant_id = c.tenant_id AND e.id = c.event_id \
             JOIN tenants t ON t.id = c.tenant_id \
             LEFT JOIN automation_versions v ON v.tenant_id = c.tenant_id \
             LEFT JOIN sessions s ON s.id = c.session_id \
             LEFT JOIN chats ch ON ch.session_id = c.session_id AND ch.chat = c.chat \
             LEFT JOIN session_bots b ON b.session_id = c.session_id \
             ORDER BY c.event_id"
        ))
        .bind::<sql_types::BigInt, _>(i64::try_from(limit).unwrap_or(100))
        .bind::<sql_types::Double, _>(lock.as_secs_f64())
        .load(&mut conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let text = r
                    .data
                    .get("text")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let from = r
                    .data
                    .get("from")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let message_kind = r
                    .data
                    .get("type")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                EventWork {
                    tenant_id: r.tenant_id,
                    event_id: r.event_id,
                    session_id: r.session_id,
                    kind: r.kind,
                    chat: r.chat,
                    at: r.at,
                    tz: tz_of(&r.time_zone),
                    text,
                    from,
                    message_kind,
                    labels: r.labels,
                    contact_name: r.contact_name,
                    session_name: r.session_name,
                    column: r.column_name,
                    board: r.board_name,
                    trigger_version: r.trigger_version,
                    first_message: r.first_message,
                    from_automation: r.from_automation,
                    bot_paused: r.bot_paused,
                    waiting_execution: r.waiting_execution,
                    sends_last_minute: u32::try_from(r.sends_last_minute).unwrap_or(u32::MAX),
                    cooling: r.cooling.into_iter().collect::<HashSet<_>>(),
                }
            })
            .collect())
    }

    async fn triggers(&self, tenant_id: Uuid, version: i64) -> anyhow::Result<Arc<TriggerSet>> {
        let mut conn = self.db.get().await?;
        let rows = super::triggers::enabled_triggers(&mut conn, tenant_id).await?;
        let (set, bad) = TriggerSet::compile(version, rows);
        if !bad.is_empty() {
            tracing::warn!(tenant_id = %tenant_id, ?bad, "triggers whose conditions no longer compile are skipped");
        }
        Ok(Arc::new(set))
    }

    async fn settle_event(&self, work: &EventWork, outcome: &EventOutcome) -> anyhow::Result<()> {
        let label = outcome.label();
        let work = work.clone();
        let outcome = outcome.clone();
        let mut conn = self.db.get().await?;
        let stored = conn
            .transaction::<_, anyhow::Error, _>(async move |conn| {
                let mut stored = Vec::new();
                match &outcome {
                    EventOutcome::Resumed(id) => {
                        diesel::sql_query(
                            "UPDATE flow_executions SET status = 'running', input = $2, \
                                 due_at = now(), locked_until = NULL, updated_at = now() \
                             WHERE id = $1 AND status = 'waiting_reply'",
                        )
                        .bind::<sql_types::Uuid, _>(id)
                        .bind::<sql_types::Text, _>(work.text.clone().unwrap_or_default())
                        .execute(conn)
                        .await?;
                    }
                    EventOutcome::Fired(fired) => {
                        for (trigger, action, cooldown) in fired {
                            match action {
                                TriggerAction::Flow(flow_id) => {
                                    let id = derived_id(work.at, &[
                                        b"trigger",
                                        work.tenant_id.as_bytes(),
                                        &work.event_id.to_be_bytes(),
                                        trigger.as_bytes(),
                                    ]);
                                    let vars = start_variables(
                                        work.chat.as_deref(),
                                        work.contact_name.as_deref(),
                                        work.text.as_deref(),
                                        work.session_name.as_deref(),
                                        &Value::Null,
                                        None,
                                    );
                                    start_execution(
                                        conn,
                                        id,
                                        work.tenant_id,
                                        *flow_id,
                                        Some(*trigger),
                                        "trigger",
                                        Some(work.event_id),
                                        work.session_id,
                                        work.chat.as_deref(),
                                        vars,
                                    )
                                    .await?;
                                }
                                TriggerAction::Reply(template) => {
                                    let (Some(session), Some(chat)) = (work.session_id, &work.chat) else {
                                        continue;
                                    };
                                    let vars = vars_of(&start_variables(
                                        Some(chat),
                                        work.contact_name.as_deref(),
                                        work.text.as_deref(),
                                        work.session_name.as_deref(),
                                        &Value::Null,
                                        None,
                                    ));
                                    let text = render(template, &vars).unwrap_or_else(|_| template.clone());
                                    let phone = own_phone(conn, session).await?;
                                    let row = outgoing(
                                        work.tenant_id,
                                        session,
                                        &phone,
                                        chat,
                                        &Content::Text { text },
                                        format!("{AUTOMATION_KEY_PREFIX}trg:{}:{trigger}", work.event_id),
                                    )?;
                                    if let Some(s) = crate::messages::store::insert_message_with_chat(conn, &row, None, None).await? {
                                        stored.push(s);
                                    }
                                }
                            }
                            if *cooldown > 0
                                && let (Some(session), Some(chat)) = (work.session_id, &work.chat)
                            {
                                diesel::sql_query(
                                    "INSERT INTO trigger_cooldowns (trigger_id, session_id, chat, last_at) \
                                     VALUES ($1, $2, $3, now()) ON CONFLICT (session_id, chat, trigger_id) \
                                     DO UPDATE SET last_at = now()",
                                )
                                .bind::<sql_types::Uuid, _>(trigger)
                                .bind::<sql_types::Uuid, _>(session)
                                .bind::<sql_types::Text, _>(chat)
                                .execute(conn)
                                .await?;
                            }
                        }
                        let ids: Vec<Uuid> = fired.iter().map(|f| f.0).collect();
                        diesel::sql_query(
                            "UPDATE triggers SET fired = fired + 1, last_fired_at = now() WHERE id = ANY($1)",
                        )
                        .bind::<sql_types::Array<sql_types::Uuid>, _>(&ids)
                        .execute(conn)
                        .await?;
                    }
                    EventOutcome::NoMatch | EventOutcome::Skipped(_) => {}
                }
                diesel::sql_query(
                    "UPDATE automation_work SET done_at = now(), locked_until = NULL, \
                         outcome = $3, handled = $4 WHERE tenant_id = $1 AND event_id = $2",
                )
                .bind::<sql_types::Uuid, _>(work.tenant_id)
                .bind::<sql_types::BigInt, _>(work.event_id)
                .bind::<sql_types::Text, _>(outcome.label())
                .bind::<sql_types::Bool, _>(outcome.handled())
                .execute(conn)
                .await?;
                Ok(stored)
            })
            .await?;
        drop(conn);
        crate::metrics::AUTOMATION_EVENTS
            .with_label_values(&[label])
            .inc();
        self.wake(stored).await;
        Ok(())
    }

    async fn claim_executions(
        &self,
        limit: usize,
        lock: Duration,
    ) -> anyhow::Result<Vec<ExecutionWork>> {
        let mut conn = self.db.get().await?;
        let rows: Vec<ClaimedExecution> = diesel::sql_query(
            "WITH due AS (SELECT id FROM flow_executions \
                 WHERE status IN ('running', 'waiting', 'waiting_reply') AND due_at <= now() \
                   AND (locked_until IS NULL OR locked_until < now()) \
                 ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
             UPDATE flow_executions x SET locked_until = now() + make_interval(secs => $2) \
             FROM due WHERE x.id = due.id \
             RETURNING x.id, x.tenant_id, x.flow_id, x.session_id, x.chat, x.steps, \
                 x.flow_variables, x.status, x.current_step, x.variables, x.seq, x.input, \
                 (SELECT time_zone FROM tenants WHERE id = x.tenant_id) AS time_zone",
        )
        .bind::<sql_types::BigInt, _>(i64::try_from(limit).unwrap_or(100))
        .bind::<sql_types::Double, _>(lock.as_secs_f64())
        .load(&mut conn)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            let flow = match Flow::parse(&r.steps, &vars_of(&r.flow_variables)) {
                Ok(f) => Arc::new(f),
                Err(e) => {
                    diesel::sql_query(
                        "UPDATE flow_executions SET status = 'failed', error = $2, \
                             finished_at = now(), locked_until = NULL WHERE id = $1",
                    )
                    .bind::<sql_types::Uuid, _>(r.id)
                    .bind::<sql_types::Text, _>(format!(
                        "the flow no longer validates: {}",
                        e.describe()
                    ))
                    .execute(&mut conn)
                    .await?;
                    continue;
                }
            };
            out.push(ExecutionWork {
                id: r.id,
                tenant_id: r.tenant_id,
                flow_id: r.flow_id,
                session_id: r.session_id,
                chat: r.chat,
                flow,
                state: wagate_actors::automation::flow::ExecState {
                    current: r.current_step,
                    vars: vars_of(&r.variables),
                    seq: u32::try_from(r.seq).unwrap_or(0),
                },
                status: r.status,
                input: r.input,
                tz: tz_of(&r.time_zone),
            });
        }
        Ok(out)
    }

    async fn commit_step(&self, exec: &ExecutionWork, commit: StepCommit) -> anyhow::Result<bool> {
        let mut commit = commit;
        // Media is fetched and stored before the transaction (it may take seconds).
        let mut content: Option<Content> = None;
        let mut quick_reply: Option<Uuid> = None;
        if let Some((_, message)) = &commit.send {
            let made = match (exec.session_id, &exec.chat) {
                (Some(session), Some(chat)) => match message {
                    Outbound::Text { text } => Ok(Content::Text { text: text.clone() }),
                    Outbound::QuickReply {
                        shortcut,
                        variables,
                    } => {
                        let mut conn = self.db.get().await?;
                        crate::quick_replies::render_for_flow(
                            &mut conn,
                            exec.tenant_id,
                            session,
                            chat,
                            shortcut,
                            variables,
                        )
                        .await
                        .map(|(id, text)| {
                            quick_reply = Some(id);
                            Content::Text { text }
                        })
                    }
                    Outbound::Media {
                        media_type,
                        url,
                        caption,
                        filename,
                    } => {
                        self.media_content(exec, media_type, url, caption.clone(), filename.clone())
                            .await
                    }
                },
                _ => Err(
                    "the execution has no chat to send to (start it with session_id and chat)"
                        .to_owned(),
                ),
            };
            match made {
                Ok(c) => content = Some(c),
                Err(e) => {
                    if let Some(last) = commit.records.last_mut() {
                        last.outcome = "failed";
                        last.error = Some(e.clone());
                    }
                    commit.status = ExecStatus::Failed(e);
                    commit.send = None;
                }
            }
        }
        let exec = exec.clone();
        let lock = self.settings.automation.claim_lock_secs.max(1) as f64;
        let max_cards = i64::from(self.settings.crm.max_cards_per_board);
        let mut conn = self.db.get().await?;
        let result = conn
            .transaction::<_, anyhow::Error, _>(async move |conn| {
                let (due, finished) = match &commit.status {
                    ExecStatus::Running => (Some(Utc::now()), false),
                    ExecStatus::Waiting { until } | ExecStatus::WaitingReply { until } => (Some(*until), false),
                    ExecStatus::Completed | ExecStatus::Failed(_) => (None, true),
                };
                let error = match &commit.status {
                    ExecStatus::Failed(e) => Some(e.clone()),
                    _ => None,
                };
                let vars = serde_json::to_value(&commit.state.vars)?;
                let n = diesel::sql_query(
                    "UPDATE flow_executions SET status = $3, current_step = $4, variables = $5, \
                         seq = $6, input = NULL, due_at = $7, error = $8, updated_at = now(), \
                         locked_until = CASE WHEN $3 = 'running' THEN now() + make_interval(secs => $10) END, \
                         finished_at = CASE WHEN $9 THEN now() END \
                     WHERE id = $1 AND seq = $2 AND status <> 'cancelled'",
                )
                .bind::<sql_types::Uuid, _>(exec.id)
                .bind::<sql_types::Integer, _>(commit.expected_seq as i32)
                .bind::<sql_types::Text, _>(commit.status.as_str())
                .bind::<sql_types::Nullable<sql_types::Text>, _>(commit.state.current.clone())
                .bind::<sql_types::Jsonb, _>(&vars)
                .bind::<sql_types::Integer, _>(commit.state.seq as i32)
                .bind::<sql_types::Nullable<sql_types::Timestamptz>, _>(due)
                .bind::<sql_types::Nullable<sql_types::Text>, _>(error)
                .bind::<sql_types::Bool, _>(finished)
                .bind::<sql_types::Double, _>(lock)
                .execute(conn)
                .await?;
                if n == 0 {
                    return Ok(None);
                }
                let mut platform_events = Vec::new();
                if let Some((seq, action)) = &commit.platform {
                    let step = crate::crm::flow_steps::StepOf {
                        tenant_id: exec.tenant_id,
                        execution_id: exec.id,
                        flow_id: exec.flow_id,
                        session_id: exec.session_id,
                        chat: exec.chat.as_deref(),
                        seq: *seq,
                        max_cards_per_board: max_cards,
                    };
                    match apply_platform(conn, &step, action).await? {
                        Ok((output, events)) => {
                            if let Some(last) = commit.records.last_mut() {
                                last.output = output;
                            }
                            platform_events = events;
                        }
                        Err(why) => {
                            // The step could not act: it and its execution fail, with why.
                            diesel::sql_query(
                                "UPDATE flow_executions SET status = 'failed', error = $2, due_at = NULL, \
                                     locked_until = NULL, finished_at = now() WHERE id = $1",
                            )
                            .bind::<sql_types::Uuid, _>(exec.id)
                            .bind::<sql_types::Text, _>(&why)
                            .execute(conn)
                            .await?;
                            if let Some(last) = commit.records.last_mut() {
                                last.outcome = "failed";
                                last.error = Some(why.clone());
                            }
                            commit.status = ExecStatus::Failed(why);
                        }
                    }
                }
                // A quick reply's use is counted with the step that sent it: once.
                if let (Some(q), Some(_)) = (quick_reply, &commit.send) {
                    diesel::sql_query(
                        "UPDATE quick_replies SET uses = uses + 1, last_used_at = now() WHERE id = $1",
                    )
                    .bind::<sql_types::Uuid, _>(q)
                    .execute(conn)
                    .await?;
                }
                if !commit.records.is_empty() {
                    use crate::schema::flow_steps::dsl as fs;
                    let rows: Vec<_> = commit
                        .records
                        .iter()
                        .map(|r| {
                            (
                                fs::execution_id.eq(exec.id),
                                fs::seq.eq(r.seq as i32),
                                fs::step_id.eq(r.step_id.clone()),
                                fs::kind.eq(r.kind.clone()),
                                fs::outcome.eq(r.outcome),
                                fs::input.eq(r.input.clone()),
                                fs::output.eq(r.output.clone()),
                                fs::error.eq(r.error.clone()),
                                fs::started_at.eq(r.started_at),
                                fs::finished_at.eq(r.finished_at),
                            )
                        })
                        .collect();
                    diesel::insert_into(fs::flow_steps)
                        .values(rows)
                        .execute(conn)
                        .await?;
                }
                let mut stored = Vec::new();
                if let (Some((seq, _)), Some(content), Some(session), Some(chat)) =
                    (&commit.send, &content, exec.session_id, &exec.chat)
                {
                    let phone = own_phone(conn, session).await?;
                    let row = outgoing(
                        exec.tenant_id,
                        session,
                        &phone,
                        chat,
                        content,
                        format!("{AUTOMATION_KEY_PREFIX}flow:{}:{seq}", exec.id),
                    )?;
                    if let Some(s) = crate::messages::store::insert_message_with_chat(conn, &row, None, None).await? {
                        stored.push(s);
                    }
                }
                if let (Some(action), Some(session)) = (commit.bot, exec.session_id) {
                    match action {
                        BotAction::Pause | BotAction::Resume => {
                            super::bot::set_state(
                                conn,
                                exec.tenant_id,
                                session,
                                if action == BotAction::Pause { "paused" } else { "active" },
                                None,
                                Some("flow"),
                            )
                            .await?;
                        }
                        BotAction::Off => {
                            if let Some(chat) = &exec.chat {
                                diesel::update(
                                    crate::schema::chats::table
                                        .filter(crate::schema::chats::session_id.eq(session))
                                        .filter(crate::schema::chats::chat.eq(chat)),
                                )
                                .set(crate::schema::chats::bot_enabled.eq(false))
                                .execute(conn)
                                .await?;
                            }
                        }
                    }
                }
                let phase = match &commit.status {
                    ExecStatus::Completed => "finished",
                    ExecStatus::Failed(_) => "failed",
                    _ if commit.expected_seq == 0 => "started",
                    ExecStatus::Waiting { .. } | ExecStatus::WaitingReply { .. } => "waiting",
                    ExecStatus::Running => "step",
                };
                let event = super::FlowExecutionEvent {
                    execution_id: exec.id,
                    flow_id: exec.flow_id,
                    phase: phase.into(),
                    status: commit.status.as_str().into(),
                    chat: exec.chat.clone(),
                    steps: commit
                        .records
                        .iter()
                        .map(|r| json!({"seq": r.seq, "step_id": r.step_id, "type": r.kind, "outcome": r.outcome, "error": r.error}))
                        .collect(),
                    error: match &commit.status {
                        ExecStatus::Failed(e) => Some(e.clone()),
                        _ => None,
                    },
                    message_ids: stored.iter().map(|s: &MessageRow| s.id).collect(),
                };
                let ev = insert_event(conn, exec.tenant_id, exec.session_id, &EventPayload::Flow(event)).await?;
                Ok(Some((stored, ev, commit, platform_events)))
            })
            .await?;
        drop(conn);
        let Some((stored, ev, commit, platform_events)) = result else {
            return Ok(false);
        };
        self.hub.publish(platform_events);
        self.hub.publish([ev]);
        for r in &commit.records {
            crate::metrics::FLOW_STEPS
                .with_label_values(&[r.kind.as_str(), r.outcome])
                .inc();
        }
        match &commit.status {
            ExecStatus::Completed => crate::metrics::FLOW_EXECUTIONS
                .with_label_values(&["completed"])
                .inc(),
            ExecStatus::Failed(_) => crate::metrics::FLOW_EXECUTIONS
                .with_label_values(&["failed"])
                .inc(),
            _ => {}
        }
        self.wake(stored).await;
        // A step the store failed ends the execution here, whatever the interpreter planned.
        Ok(!matches!(commit.status, ExecStatus::Failed(_)))
    }

    async fn http(
        &self,
        _exec: &ExecutionWork,
        call: &HttpCall,
        key: &str,
    ) -> Result<Value, String> {
        let url = crate::http::egress::check_url(&call.url, self.settings.allow_private_targets())
            .map_err(|why| {
                format!("refused by the egress policy: {why} (egress.allow_private_targets)")
            })?;
        let method =
            reqwest::Method::from_bytes(call.method.as_bytes()).map_err(|e| e.to_string())?;
        let mut req = self
            .http
            .request(method, url)
            .timeout(Duration::from_secs(call.timeout_secs.clamp(1, 30)))
            .header("Idempotency-Key", format!("wagate-flow-{key}"));
        for (k, v) in &call.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(body) = &call.body {
            let json_body = serde_json::from_str::<Value>(body).is_ok();
            if json_body
                && !call
                    .headers
                    .keys()
                    .any(|k| k.eq_ignore_ascii_case("content-type"))
            {
                req = req.header("content-type", "application/json");
            }
            req = req.body(body.clone());
        }
        let mut res = req
            .send()
            .await
            .map_err(|e| match crate::http::egress::refusal(&e) {
                Some(r) => {
                    format!("refused by the egress policy: {r} (egress.allow_private_targets)")
                }
                None => format!("the request failed: {e}"),
            })?;
        let status = res.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = res
            .chunk()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
        {
            if body.len() + chunk.len() > MAX_HTTP_BODY {
                return Err(format!("the answer is larger than {MAX_HTTP_BODY} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let body = serde_json::from_slice::<Value>(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        Ok(json!({ "status": status, "body": body }))
    }

    async fn ai_text(&self, exec: &ExecutionWork, agent_id: Uuid) -> Result<String, String> {
        let app = self.app().ok_or("the gateway is shutting down")?;
        let (Some(session), Some(chat)) = (exec.session_id, &exec.chat) else {
            return Err("the execution has no chat to answer".into());
        };
        let mut conn = self.db.get().await.map_err(|e| e.to_string())?;
        let agent = crate::ai::store::get_agent(&mut conn, agent_id)
            .await
            .map_err(|e| e.to_string())?
            .filter(|a| a.tenant_id == exec.tenant_id)
            .ok_or("the agent is gone")?;
        drop(conn);
        crate::ai::draft_reply(&app, &agent, session, chat, "flow")
            .await
            .map(|g| g.text)
            .map_err(|e| e.to_string())
    }

    async fn fire_schedules(&self, limit: usize) -> anyhow::Result<usize> {
        let mut conn = self.db.get().await?;
        let (n, stored) = conn
            .transaction::<_, anyhow::Error, _>(async move |conn| {
                let due: Vec<super::triggers::ScheduleRow> = diesel::sql_query(format!(
                    "SELECT tr.id, tr.tenant_id, tr.session_id, tr.chat, tr.flow_id, tr.reply_text, \
                         tr.schedule, tr.next_fire_at, t.time_zone, s.name AS session_name, \
                         COALESCE({BOT_PAUSED_SQL}, false) AS bot_paused \
                     FROM triggers tr JOIN tenants t ON t.id = tr.tenant_id \
                     LEFT JOIN sessions s ON s.id = tr.session_id \
                     LEFT JOIN session_bots b ON b.session_id = tr.session_id \
                     WHERE tr.enabled AND tr.event = 'schedule' AND tr.next_fire_at <= now() \
                     ORDER BY tr.next_fire_at LIMIT $1 FOR UPDATE OF tr SKIP LOCKED"
                ))
                .bind::<sql_types::BigInt, _>(i64::try_from(limit).unwrap_or(100))
                .load(conn)
                .await?;
                let mut stored = Vec::new();
                let n = due.len();
                for t in due {
                    let tz = tz_of(&t.time_zone);
                    let next = t
                        .schedule
                        .as_deref()
                        .and_then(|s| wagate_actors::automation::schedule::next_after(s, tz, Utc::now()));
                    let fire_at = t.next_fire_at.unwrap_or_else(Utc::now);
                    if !t.bot_paused {
                        if let Some(flow_id) = t.flow_id {
                            let id = derived_id(fire_at, &[b"schedule", t.id.as_bytes(), &fire_at.timestamp_micros().to_be_bytes()]);
                            let vars = start_variables(t.chat.as_deref(), None, None, t.session_name.as_deref(), &Value::Null, None);
                            start_execution(conn, id, t.tenant_id, flow_id, Some(t.id), "schedule", None, t.session_id, t.chat.as_deref(), vars).await?;
                        } else if let (Some(text), Some(session), Some(chat)) = (&t.reply_text, t.session_id, &t.chat) {
                            let vars = vars_of(&start_variables(Some(chat), None, None, t.session_name.as_deref(), &Value::Null, None));
                            let text = render(text, &vars).unwrap_or_else(|_| text.clone());
                            let phone = own_phone(conn, session).await?;
                            let row = outgoing(
                                t.tenant_id,
                                session,
                                &phone,
                                chat,
                                &Content::Text { text },
                                format!("{AUTOMATION_KEY_PREFIX}sched:{}:{}", t.id, fire_at.timestamp_micros()),
                            )?;
                            if let Some(s) = crate::messages::store::insert_message_with_chat(conn, &row, None, None).await? {
                                stored.push(s);
                            }
                        }
                    }
                    diesel::sql_query(
                        "UPDATE triggers SET next_fire_at = $2, \
                             fired = fired + CASE WHEN $3 THEN 0 ELSE 1 END, \
                             last_fired_at = CASE WHEN $3 THEN last_fired_at ELSE now() END \
                         WHERE id = $1",
                    )
                    .bind::<sql_types::Uuid, _>(t.id)
                    .bind::<sql_types::Nullable<sql_types::Timestamptz>, _>(next)
                    .bind::<sql_types::Bool, _>(t.bot_paused)
                    .execute(conn)
                    .await?;
                }
                Ok((n, stored))
            })
            .await?;
        drop(conn);
        self.wake(stored).await;
        Ok(n)
    }

    async fn clean_up(&self) -> anyhow::Result<()> {
        let mut conn = self.db.get().await?;
        let days =
            i32::try_from(self.settings.automation.execution_retention_days.max(1)).unwrap_or(30);
        diesel::sql_query(
            "DELETE FROM flow_executions WHERE finished_at < now() - make_interval(days => $1)",
        )
        .bind::<sql_types::Integer, _>(days)
        .execute(&mut conn)
        .await?;
        diesel::sql_query("DELETE FROM automation_work WHERE done_at < now() - interval '1 day'")
            .execute(&mut conn)
            .await?;
        diesel::sql_query(
            "DELETE FROM trigger_cooldowns WHERE last_at < now() - interval '7 days'",
        )
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}

/// Events of one row published (used by routes that start executions).
pub fn publish(hub: &EventHub, rows: Vec<EventRow>) {
    hub.publish(rows);
}

/// A card or notify step's effect in a savepoint of the step's transaction: when the step
/// cannot act, nothing it began stays. `Ok(Err(why))`: the step failed; `Err`: the database.
async fn apply_platform(
    conn: &mut AsyncPgConnection,
    step: &crate::crm::flow_steps::StepOf<'_>,
    action: &wagate_actors::automation::flow::PlatformAction,
) -> anyhow::Result<Result<(Value, Vec<EventRow>), String>> {
    enum Failed {
        Refused(String),
        Db(anyhow::Error),
    }
    impl From<diesel::result::Error> for Failed {
        fn from(e: diesel::result::Error) -> Self {
            Failed::Db(e.into())
        }
    }
    let done = conn
        .transaction::<_, Failed, _>(async |conn| {
            match crate::crm::flow_steps::apply(conn, step, action).await {
                Ok(Ok(out)) => Ok(out),
                Ok(Err(why)) => Err(Failed::Refused(why)),
                Err(e) => Err(Failed::Db(e)),
            }
        })
        .await;
    match done {
        Ok(out) => Ok(Ok(out)),
        Err(Failed::Refused(why)) => Ok(Err(why)),
        Err(Failed::Db(e)) => Err(e),
    }
}
