//! The AI tables in Postgres, and the AiActor's store (`PgAiStore`): the chats waiting for an
//! answer (rows written with their `message.received` events), what the pipeline reads about
//! a chat, and the answer stored with its events in one transaction.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::Addr;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;
use wagate_actors::RootSupervisor;
use wagate_actors::ai::ports::{
    AgentConfig, AiStore, ChatMessage, ChatWork, Credential, Outcome, PendingChat, Provider,
    TenantQuota,
};
use wagate_actors::directory::SessionDirectory;
use wagate_actors::messaging::Content;
use wagate_actors::tier::Tier;

use super::{AiEvent, ai_settings_credential};
use crate::configuration::Settings;
use crate::db::DbPool;
use crate::events::{EventHub, EventPayload, insert_event};
use crate::keystore::StoreCipher;
use crate::messages::store::MessageRow;
use crate::schema::{ai_agents, ai_credentials};

/// The `ai AS (...)` CTE of the statement that stores received messages: one pending row per
/// chat whose session (or the chat itself) has an agent, after an `ev` CTE that returned the
/// `message.received` events. `$AT` is the events' time. A chat already waiting gets its
/// quiet time pushed on and its last event raised (the debounce).
pub const PENDING_FOR_EVENTS: &str = "\
    ai AS (INSERT INTO ai_pending (session_id, chat, tenant_id, since_event_id, through_event_id, due_at) \
           SELECT e.session_id, e.chat, e.tenant_id, min(e.id) - 1, max(e.id), \
                  $AT + make_interval(secs => max(a.debounce_ms) / 1000.0) \
           FROM (SELECT tenant_id, id, session_id, data->>'chat' AS chat FROM ev) e \
           JOIN ai_agents a ON a.id = COALESCE( \
                (SELECT ca.agent_id FROM chat_agents ca \
                 WHERE ca.session_id = e.session_id AND ca.chat = e.chat), \
                (SELECT sa.agent_id FROM session_agents sa WHERE sa.session_id = e.session_id)) \
           GROUP BY e.session_id, e.chat, e.tenant_id \
           ORDER BY e.session_id, e.chat \
           ON CONFLICT (session_id, chat) DO UPDATE SET \
             through_event_id = GREATEST(ai_pending.through_event_id, EXCLUDED.through_event_id), \
             due_at = EXCLUDED.due_at)";

/// The prefix of idempotency keys the platform itself sends with (AI answers, flows): API
/// clients may not use it, so the pipeline can tell its own messages from the operator's.
pub const OWN_KEY_PREFIX: &str = "wagate:";

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = ai_agents, treat_none_as_null = true)]
pub struct AgentRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub provider: String,
    pub model: String,
    pub credential_id: Option<Uuid>,
    pub system_prompt: String,
    pub temperature: Option<f32>,
    pub max_output_tokens: Option<i32>,
    pub context_messages: i32,
    pub debounce_ms: i32,
    pub handoff_keywords: Vec<String>,
    pub fallback_text: Option<String>,
    pub answer_groups: bool,
    pub describe_media: bool,
    pub split_replies: bool,
    pub typing: bool,
    pub tools: Vec<String>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = ai_credentials)]
pub struct CredentialRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub provider: String,
    pub base_url: String,
    pub api_key_sealed: Vec<u8>,
    pub key_hint: String,
    pub created_at: DateTime<Utc>,
}

/// The credential an agent calls with: its own (opened with the store key), or the
/// platform's for its provider.
pub fn credential_for(
    settings: &Settings,
    cipher: &StoreCipher,
    provider: Provider,
    own: Option<&CredentialRow>,
) -> anyhow::Result<Credential> {
    match own {
        Some(c) => {
            let key = cipher
                .open(c.id.as_bytes(), &c.api_key_sealed)
                .map_err(|e| anyhow::anyhow!("opening credential {}: {e}", c.id))?;
            Ok(Credential {
                id: c.id.to_string(),
                base_url: c.base_url.clone(),
                api_key: String::from_utf8(key)?,
            })
        }
        None => ai_settings_credential(settings, provider)
            .ok_or_else(|| anyhow::anyhow!("no platform credential for {}", provider.as_str())),
    }
}

pub async fn get_agent(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<AgentRow>> {
    ai_agents::table
        .find(id)
        .select(AgentRow::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn get_credential(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<CredentialRow>> {
    ai_credentials::table
        .find(id)
        .select(CredentialRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The SQL expression of the tokens the tenant `tenant` (an SQL expression) used today (UTC),
/// every kind of call included: one definition for the pipeline's load, the quota warning and
/// [`tokens_today`].
pub fn tokens_today_sql(tenant: &str) -> String {
    format!(
        "(SELECT COALESCE(sum(k.prompt_tokens + k.output_tokens), 0)::bigint FROM ai_calls k \
           WHERE k.tenant_id = {tenant} \
             AND k.created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"
    )
}

/// Tokens the tenant used today (UTC), every kind of call included.
pub async fn tokens_today(conn: &mut AsyncPgConnection, tenant: Uuid) -> QueryResult<u64> {
    #[derive(QueryableByName)]
    struct Sum {
        #[diesel(sql_type = sql_types::BigInt)]
        tokens: i64,
    }
    static SQL: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("SELECT {} AS tokens", tokens_today_sql("$1")));
    let s: Sum = diesel::sql_query(SQL.as_str())
        .bind::<sql_types::Uuid, _>(tenant)
        .get_result(conn)
        .await?;
    Ok(u64::try_from(s.tokens).unwrap_or(0))
}

/// One model call or decision, as `ai_calls` keeps it.
#[derive(Debug, Clone, Default)]
pub struct CallRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub session_id: Option<Uuid>,
    pub chat: Option<String>,
    pub agent_id: Option<Uuid>,
    pub kind: &'static str,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    pub latency_ms: Option<u64>,
    pub cached: bool,
    pub error: Option<String>,
    pub message_ids: Vec<Uuid>,
    pub tool_calls: Vec<wagate_actors::ai::ports::ToolCall>,
}

/// Stores a call record; `false` when one with its id is there already (the work was done).
pub async fn record_call(conn: &mut AsyncPgConnection, r: &CallRecord) -> QueryResult<bool> {
    let n = diesel::sql_query(
        "INSERT INTO ai_calls (id, tenant_id, session_id, chat, agent_id, kind, provider, model, \
           prompt_tokens, output_tokens, latency_ms, cached, error, message_ids, tool_calls) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind::<sql_types::Uuid, _>(r.id)
    .bind::<sql_types::Uuid, _>(r.tenant_id)
    .bind::<sql_types::Nullable<sql_types::Uuid>, _>(r.session_id)
    .bind::<sql_types::Nullable<sql_types::Text>, _>(r.chat.as_deref())
    .bind::<sql_types::Nullable<sql_types::Uuid>, _>(r.agent_id)
    .bind::<sql_types::Text, _>(r.kind)
    .bind::<sql_types::Nullable<sql_types::Text>, _>(r.provider.as_deref())
    .bind::<sql_types::Nullable<sql_types::Text>, _>(r.model.as_deref())
    .bind::<sql_types::BigInt, _>(i64::try_from(r.prompt_tokens).unwrap_or(i64::MAX))
    .bind::<sql_types::BigInt, _>(i64::try_from(r.output_tokens).unwrap_or(i64::MAX))
    .bind::<sql_types::Nullable<sql_types::Integer>, _>(
        r.latency_ms.map(|l| i32::try_from(l).unwrap_or(i32::MAX)),
    )
    .bind::<sql_types::Bool, _>(r.cached)
    .bind::<sql_types::Nullable<sql_types::Text>, _>(r.error.as_deref())
    .bind::<sql_types::Array<sql_types::Uuid>, _>(&r.message_ids)
    .bind::<sql_types::Jsonb, _>(serde_json::to_value(&r.tool_calls).unwrap_or_default())
    .execute(conn)
    .await?;
    Ok(n == 1)
}

/// Agents kept in memory by a store before it starts over.
const AGENTS_CACHED: usize = 1024;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The AiActor's store.
pub struct PgAiStore {
    /// Agents read lately, by id (each with its version).
    pub agents: std::sync::Mutex<std::collections::HashMap<Uuid, AgentRow>>,
    pub db: DbPool,
    pub hub: EventHub,
    pub cipher: Arc<StoreCipher>,
    pub settings: Arc<Settings>,
    pub supervisor: Addr<RootSupervisor>,
    pub directory: Arc<SessionDirectory>,
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = sql_types::Uuid)]
    tenant_id: Uuid,
    #[diesel(sql_type = sql_types::Uuid)]
    session_id: Uuid,
    #[diesel(sql_type = sql_types::Text)]
    chat: String,
    #[diesel(sql_type = sql_types::BigInt)]
    since_event_id: i64,
    #[diesel(sql_type = sql_types::BigInt)]
    through_event_id: i64,
    #[diesel(sql_type = sql_types::Integer)]
    attempts: i32,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    own_phone: Option<String>,
}

#[derive(QueryableByName)]
struct ChatState {
    #[diesel(sql_type = sql_types::Uuid)]
    agent_id: Uuid,
    #[diesel(sql_type = sql_types::BigInt)]
    agent_version: i64,
    #[diesel(sql_type = sql_types::Text)]
    tier: String,
    #[diesel(sql_type = sql_types::Bool)]
    bot_enabled: bool,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Timestamptz>)]
    operator_last_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = sql_types::BigInt)]
    replies_last_minute: i64,
    #[diesel(sql_type = sql_types::BigInt)]
    tokens_today: i64,
}

#[derive(QueryableByName)]
struct HistoryRow {
    #[diesel(sql_type = sql_types::Text)]
    wa_id: String,
    #[diesel(sql_type = sql_types::Text)]
    direction: String,
    #[diesel(sql_type = sql_types::Text)]
    kind: String,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    text: Option<String>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    quoted_id: Option<String>,
    #[diesel(sql_type = sql_types::Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = sql_types::Bool)]
    unanswered: bool,
}

impl PgAiStore {
    /// The call record's id for one piece of work: the same work finished twice (a second
    /// node after a lock expired) records once and sends once.
    fn work_id(p: &PendingChat) -> Uuid {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(
            format!("ai:{}:{}:{}", p.session_id, p.chat, p.through_event_id).as_bytes(),
        );
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }

    /// "typing…" in the chat for `typing`, when the session lives on this node (best
    /// effort: the answer goes out either way).
    async fn show_typing(&self, p: &PendingChat, typing: Duration) {
        use wagate_actors::session::contacts::{ChatState, LiveCommand};
        if typing.is_zero() {
            return;
        }
        let Some(handle) = self.directory.get(p.session_id) else {
            return;
        };
        let peer = p.chat.trim_start_matches('+').to_owned();
        let shown = handle
            .send(LiveCommand::ChatState {
                peer: peer.clone(),
                state: ChatState::Composing,
            })
            .await;
        if matches!(shown, Ok(Ok(_))) {
            tokio::time::sleep(typing).await;
            let _ = handle
                .send(LiveCommand::ChatState {
                    peer,
                    state: ChatState::Paused,
                })
                .await;
        }
    }
}

#[async_trait]
impl AiStore for PgAiStore {
    async fn claim_due(&self, limit: usize, lock: Duration) -> anyhow::Result<Vec<PendingChat>> {
        let mut conn = self.db.get().await?;
        let rows: Vec<Claimed> = diesel::sql_query(
            // Triggers see a message first: a chat with events automation has not settled
            // waits (a handled message is not also answered).
            "WITH due AS (SELECT session_id, chat FROM ai_pending p \
                 WHERE due_at <= now() AND (locked_until IS NULL OR locked_until < now()) \
                   AND NOT EXISTS (SELECT 1 FROM automation_work w \
                       WHERE w.session_id = p.session_id AND w.chat = p.chat \
                         AND w.done_at IS NULL) \
                 ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
             UPDATE ai_pending p SET locked_until = now() + make_interval(secs => $2), \
                 attempts = p.attempts + 1 \
             FROM due JOIN sessions s ON s.id = due.session_id \
             WHERE p.session_id = due.session_id AND p.chat = due.chat \
             RETURNING p.tenant_id, p.session_id, p.chat, p.since_event_id, p.through_event_id, \
                 p.attempts, s.phone AS own_phone",
        )
        .bind::<sql_types::BigInt, _>(i64::try_from(limit).unwrap_or(100))
        .bind::<sql_types::Double, _>(lock.as_secs_f64())
        .load(&mut conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| PendingChat {
                tenant_id: r.tenant_id,
                session_id: r.session_id,
                chat: r.chat,
                since_event_id: r.since_event_id,
                through_event_id: r.through_event_id,
                attempts: r.attempts,
                own_phone: r.own_phone,
            })
            .collect())
    }

    async fn load(&self, p: &PendingChat) -> anyhow::Result<Option<ChatWork>> {
        let ai = &self.settings.ai;
        let mut conn = self.db.get().await?;
        let state: Option<ChatState> = diesel::sql_query(format!(
            "SELECT a.id AS agent_id, a.version AS agent_version, t.tier, \
               COALESCE(c.bot_enabled, true) AND NOT COALESCE((SELECT {paused} \
                   FROM session_bots b WHERE b.session_id = $1), false) AS bot_enabled, \
               (SELECT max(m.created_at) FROM messages m \
                 WHERE m.session_id = $1 AND m.chat = $2 AND m.direction = 'out' \
                   AND m.created_at > now() - make_interval(secs => $3) \
                   AND (m.idempotency_key IS NULL OR m.idempotency_key NOT LIKE '{OWN_KEY_PREFIX}%')) \
                 AS operator_last_at, \
               (SELECT count(*) FROM ai_calls k WHERE k.session_id = $1 AND k.chat = $2 \
                   AND k.kind IN ('reply', 'fallback') \
                   AND k.created_at > now() - interval '1 minute') AS replies_last_minute, \
               {tokens_today} AS tokens_today \
             FROM sessions s JOIN tenants t ON t.id = s.tenant_id \
             JOIN ai_agents a ON a.id = COALESCE( \
                 (SELECT agent_id FROM chat_agents WHERE session_id = $1 AND chat = $2), \
                 (SELECT agent_id FROM session_agents WHERE session_id = $1)) \
             LEFT JOIN chats c ON c.session_id = $1 AND c.chat = $2 \
             WHERE s.id = $1",
            paused = crate::automation::store::BOT_PAUSED_SQL,
            tokens_today = tokens_today_sql("s.tenant_id"),
        ))
        .bind::<sql_types::Uuid, _>(p.session_id)
        .bind::<sql_types::Text, _>(&p.chat)
        .bind::<sql_types::Double, _>(ai.human_pause_secs as f64)
        .get_result(&mut conn)
        .await
        .optional()?;
        let Some(state) = state else {
            return Ok(None);
        };
        // Agents change rarely and every change bumps their version: one read per version.
        let cached = lock(&self.agents)
            .get(&state.agent_id)
            .filter(|a| a.version == state.agent_version)
            .cloned();
        let agent = match cached {
            Some(a) => a,
            None => {
                let Some(a) = get_agent(&mut conn, state.agent_id).await? else {
                    return Ok(None);
                };
                let mut agents = lock(&self.agents);
                if agents.len() >= AGENTS_CACHED {
                    agents.clear();
                }
                agents.insert(a.id, a.clone());
                a
            }
        };
        let own = match agent.credential_id {
            Some(id) => get_credential(&mut conn, id).await?,
            None => None,
        };
        let provider = Provider::parse(&agent.provider)
            .ok_or_else(|| anyhow::anyhow!("agent {} has provider {}", agent.id, agent.provider))?;
        let credential = credential_for(&self.settings, &self.cipher, provider, own.as_ref())?;
        // The chat's last messages, each marked when it came after the last answer (its
        // `message.received` event is in the pending range); at least every such one.
        let mut history: Vec<HistoryRow> = diesel::sql_query(
            "WITH unanswered AS ( \
               SELECT (data->>'id')::uuid AS id FROM events \
               WHERE tenant_id = $1 AND id > $2 AND id <= $3 AND kind = 'message.received' \
                 AND session_id = $4 AND data->>'chat' = $5 \
                 AND NOT EXISTS (SELECT 1 FROM automation_work w \
                     WHERE w.tenant_id = $1 AND w.event_id = events.id AND w.handled)) \
             SELECT m.wa_id, m.direction, m.kind, m.text, m.quoted_id, m.created_at, \
               m.id IN (SELECT id FROM unanswered) AS unanswered \
             FROM messages m \
             WHERE m.session_id = $4 AND m.chat = $5 AND NOT (m.body ? '_deleted_at') \
             ORDER BY m.created_at DESC, m.id DESC \
             LIMIT GREATEST($6, (SELECT count(*) FROM unanswered))",
        )
        .bind::<sql_types::Uuid, _>(p.tenant_id)
        .bind::<sql_types::BigInt, _>(p.since_event_id)
        .bind::<sql_types::BigInt, _>(p.through_event_id)
        .bind::<sql_types::Uuid, _>(p.session_id)
        .bind::<sql_types::Text, _>(&p.chat)
        .bind::<sql_types::BigInt, _>(i64::from(agent.context_messages.max(1)))
        .load(&mut conn)
        .await?;
        history.reverse();
        let tier = Tier::parse(&state.tier).unwrap_or(Tier::Standard);
        Ok(Some(ChatWork {
            chat: p.chat.clone(),
            agent: AgentConfig {
                id: agent.id,
                provider,
                model: agent.model.clone(),
                credential,
                system_prompt: agent.system_prompt.clone(),
                temperature: agent.temperature,
                max_output_tokens: agent.max_output_tokens.and_then(|m| u32::try_from(m).ok()),
                context_messages: u32::try_from(agent.context_messages).unwrap_or(20),
                handoff_keywords: agent.handoff_keywords.clone(),
                fallback_text: agent.fallback_text.clone(),
                answer_groups: agent.answer_groups,
                describe_media: agent.describe_media,
                split_replies: agent.split_replies,
                typing: agent.typing,
                tools: agent.tools.clone(),
                version: agent.version,
            },
            own_phone: p.own_phone.clone(),
            bot_enabled: state.bot_enabled,
            operator_last_at: state.operator_last_at.map(SystemTime::from),
            replies_last_minute: u32::try_from(state.replies_last_minute).unwrap_or(u32::MAX),
            quota: TenantQuota {
                calls_per_minute: ai.calls_per_minute.for_tier(tier),
                tokens_per_day: u64::from(ai.tokens_per_day.for_tier(tier)),
            },
            tokens_today: u64::try_from(state.tokens_today).unwrap_or(0),
            history: history
                .into_iter()
                .map(|h| ChatMessage {
                    unanswered: h.unanswered,
                    wa_id: h.wa_id,
                    incoming: h.direction == "in",
                    kind: h.kind,
                    text: h.text,
                    quoted_wa_id: h.quoted_id,
                    at: SystemTime::from(h.created_at),
                })
                .collect(),
        }))
    }

    async fn finish(&self, p: &PendingChat, outcome: Outcome) -> anyhow::Result<()> {
        if let Outcome::Reply { typing, .. } = &outcome {
            self.show_typing(p, *typing).await;
        }
        let (record, texts, event) = match &outcome {
            Outcome::Skipped { .. } => (None, Vec::new(), None),
            Outcome::Reply {
                agent_id,
                parts,
                prompt_tokens,
                output_tokens,
                latency_ms,
                cached,
                tool_calls,
                ..
            } => (
                Some(CallRecord {
                    kind: "reply",
                    agent_id: Some(*agent_id),
                    prompt_tokens: *prompt_tokens,
                    output_tokens: *output_tokens,
                    latency_ms: Some(*latency_ms),
                    cached: *cached,
                    tool_calls: tool_calls.clone(),
                    ..CallRecord::default()
                }),
                parts.clone(),
                Some(AiEvent::Reply {
                    agent_id: *agent_id,
                    prompt_tokens: *prompt_tokens,
                    output_tokens: *output_tokens,
                    latency_ms: *latency_ms,
                    cached: *cached,
                    tool_calls: tool_calls.clone(),
                }),
            ),
            Outcome::Failed {
                agent_id,
                text,
                error,
                latency_ms,
            } => (
                Some(CallRecord {
                    kind: if text.is_some() { "fallback" } else { "error" },
                    agent_id: Some(*agent_id),
                    latency_ms: Some(*latency_ms),
                    error: Some(error.clone()),
                    ..CallRecord::default()
                }),
                text.iter().cloned().collect(),
                Some(AiEvent::Error {
                    agent_id: *agent_id,
                    error: error.clone(),
                    fallback_sent: text.is_some(),
                }),
            ),
            Outcome::Handoff {
                agent_id,
                keyword,
                reason,
                text,
                tool_calls,
                prompt_tokens,
                output_tokens,
            } => (
                Some(CallRecord {
                    kind: "handoff",
                    agent_id: Some(*agent_id),
                    prompt_tokens: *prompt_tokens,
                    output_tokens: *output_tokens,
                    tool_calls: tool_calls.clone(),
                    ..CallRecord::default()
                }),
                text.iter().cloned().collect(),
                Some(AiEvent::Handoff {
                    agent_id: *agent_id,
                    keyword: keyword.clone(),
                    reason: reason.clone(),
                    tool_calls: tool_calls.clone(),
                }),
            ),
        };
        let handoff = matches!(outcome, Outcome::Handoff { .. });
        let p = p.clone();
        let work_id = Self::work_id(&p);
        let mut conn = self.db.get().await?;
        let (stored, events) = conn
            .transaction::<_, anyhow::Error, _>(async move |conn| {
                let mut stored: Vec<MessageRow> = Vec::new();
                let mut events = Vec::new();
                if let Some(mut record) = record {
                    record.id = work_id;
                    record.tenant_id = p.tenant_id;
                    record.session_id = Some(p.session_id);
                    record.chat = Some(p.chat.clone());
                    let own_phone = p.own_phone.clone();
                    let now = Utc::now();
                    let mut rows = Vec::new();
                    for (i, text) in texts.iter().enumerate() {
                        let content = Content::Text { text: text.clone() };
                        rows.push(MessageRow {
                            id: Uuid::now_v7(),
                            tenant_id: p.tenant_id,
                            session_id: p.session_id,
                            wa_id: crate::messages::new_wa_id(),
                            direction: "out".into(),
                            chat: p.chat.clone(),
                            own_phone: own_phone.clone().unwrap_or_default(),
                            kind: "text".into(),
                            body: serde_json::to_value(&content)?,
                            text: Some(text.clone()),
                            quoted_id: None,
                            status: "queued".into(),
                            error: None,
                            idempotency_key: Some(format!(
                                "{OWN_KEY_PREFIX}ai:{}:{i}",
                                p.through_event_id
                            )),
                            created_at: now + chrono::Duration::microseconds(i as i64),
                            updated_at: now,
                        });
                    }
                    record.message_ids = rows.iter().map(|r| r.id).collect();
                    let spent = record.prompt_tokens + record.output_tokens > 0;
                    if record_call(conn, &record).await? {
                        if spent {
                            events.extend(
                                crate::notifications::ai_tokens_warning(
                                    conn,
                                    &self.settings,
                                    p.tenant_id,
                                )
                                .await?,
                            );
                        }
                        for row in &rows {
                            if let Some(s) = crate::messages::store::insert_message_with_chat(
                                conn, row, None, None,
                            )
                            .await?
                            {
                                stored.push(s);
                            }
                        }
                        if handoff {
                            diesel::update(
                                crate::schema::chats::table
                                    .filter(crate::schema::chats::session_id.eq(p.session_id))
                                    .filter(crate::schema::chats::chat.eq(&p.chat)),
                            )
                            .set(crate::schema::chats::bot_enabled.eq(false))
                            .execute(conn)
                            .await?;
                        }
                        if let Some(event) = event {
                            let payload = EventPayload::Ai(
                                event.with(&p.chat, stored.iter().map(|s| s.id).collect()),
                            );
                            events.push(
                                insert_event(conn, p.tenant_id, Some(p.session_id), &payload)
                                    .await?,
                            );
                        }
                    }
                }
                // Released: done, unless more messages came meanwhile (then they are
                // answered next, after their own quiet time).
                let done = diesel::sql_query(
                    "DELETE FROM ai_pending WHERE session_id = $1 AND chat = $2 \
                         AND through_event_id = $3",
                )
                .bind::<sql_types::Uuid, _>(p.session_id)
                .bind::<sql_types::Text, _>(&p.chat)
                .bind::<sql_types::BigInt, _>(p.through_event_id)
                .execute(conn)
                .await?;
                if done == 0 {
                    diesel::sql_query(
                        "UPDATE ai_pending SET since_event_id = GREATEST(since_event_id, $3), \
                             locked_until = NULL, attempts = 0 \
                             WHERE session_id = $1 AND chat = $2",
                    )
                    .bind::<sql_types::Uuid, _>(p.session_id)
                    .bind::<sql_types::Text, _>(&p.chat)
                    .bind::<sql_types::BigInt, _>(p.through_event_id)
                    .execute(conn)
                    .await?;
                }
                Ok((stored, events))
            })
            .await?;
        drop(conn);
        self.hub.publish(events);
        crate::messages::jobs::wake_senders_of(&self.supervisor, &self.directory, stored).await;
        Ok(())
    }

    async fn run_tool(
        &self,
        p: &PendingChat,
        agent: Uuid,
        call: &wagate_actors::ai::ports::ToolCall,
    ) -> anyhow::Result<serde_json::Value> {
        use wagate_actors::ai::tools;
        let args: serde_json::Value = serde_json::from_str(&call.arguments)
            .map_err(|e| anyhow::anyhow!("the arguments are not JSON: {e}"))?;
        match call.name.as_str() {
            tools::SET_CONTACT_NAME => {
                let name = args["name"]
                    .as_str()
                    .map(str::trim)
                    .filter(|n| !n.is_empty() && n.chars().count() <= 256 && !n.contains('\0'))
                    .ok_or_else(|| anyhow::anyhow!("name must be 1 to 256 characters"))?;
                let mut conn = self.db.get().await?;
                diesel::update(
                    crate::schema::chats::table
                        .filter(crate::schema::chats::session_id.eq(p.session_id))
                        .filter(crate::schema::chats::chat.eq(&p.chat)),
                )
                .set(crate::schema::chats::contact_name.eq(name))
                .execute(&mut conn)
                .await?;
                Ok(serde_json::json!({"ok": true, "name": name}))
            }
            tools::CREATE_CARD | tools::MOVE_CARD => {
                let on = crate::crm::flow_steps::OnChat {
                    tenant_id: p.tenant_id,
                    session_id: p.session_id,
                    chat: &p.chat,
                    actor: ("agent", Some(agent)),
                    max_cards_per_board: i64::from(self.settings.crm.max_cards_per_board),
                };
                let mut conn = self.db.get().await?;
                let done = conn
                    .transaction::<_, anyhow::Error, _>(async |conn| {
                        crate::crm::flow_steps::agent_tool(conn, &on, &call.name, &args).await
                    })
                    .await?;
                drop(conn);
                match done {
                    Ok((out, events)) => {
                        self.hub.publish(events);
                        Ok(serde_json::json!({"ok": true, "card": out}))
                    }
                    Err(why) => anyhow::bail!(why),
                }
            }
            other => anyhow::bail!("there is no tool {other}"),
        }
    }

    async fn retry_at(&self, p: &PendingChat, at: SystemTime) -> anyhow::Result<()> {
        let mut conn = self.db.get().await?;
        if p.attempts >= 10 {
            tracing::warn!(session = %p.session_id, chat = %p.chat, "giving up answering a chat after 10 attempts");
            diesel::sql_query(
                "DELETE FROM ai_pending WHERE session_id = $1 AND chat = $2 AND through_event_id = $3",
            )
            .bind::<sql_types::Uuid, _>(p.session_id)
            .bind::<sql_types::Text, _>(&p.chat)
            .bind::<sql_types::BigInt, _>(p.through_event_id)
            .execute(&mut conn)
            .await?;
            return Ok(());
        }
        diesel::sql_query(
            "UPDATE ai_pending SET due_at = GREATEST(due_at, $3), locked_until = NULL \
             WHERE session_id = $1 AND chat = $2",
        )
        .bind::<sql_types::Uuid, _>(p.session_id)
        .bind::<sql_types::Text, _>(&p.chat)
        .bind::<sql_types::Timestamptz, _>(DateTime::<Utc>::from(at))
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}

/// The pending answer of one `message.received` event stored on its own (the inbound path's
/// fallback when a group write fails): the same rows [`PENDING_FOR_EVENTS`] writes.
pub async fn pending_for_event(
    conn: &mut AsyncPgConnection,
    event: &crate::events::EventRow,
) -> QueryResult<usize> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH ev AS (SELECT $1::uuid AS tenant_id, $2::bigint AS id, $3::uuid AS session_id, \
                                $4::jsonb AS data), \
             {} SELECT 1",
            PENDING_FOR_EVENTS.replace("$AT", "$5")
        )
    });
    diesel::sql_query(SQL.as_str())
        .bind::<sql_types::Uuid, _>(event.tenant_id)
        .bind::<sql_types::BigInt, _>(event.id)
        .bind::<sql_types::Nullable<sql_types::Uuid>, _>(event.session_id)
        .bind::<sql_types::Jsonb, _>(&event.data)
        .bind::<sql_types::Timestamptz, _>(event.at)
        .execute(conn)
        .await
}
