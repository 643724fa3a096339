//! AI agents: provider credentials, agents, the agent of a session or chat, one-off calls
//! (`/ai/generate`, a suggested reply), usage and limits. The model calls themselves and the
//! reply pipeline belong to the `AiActor` (`wagate_actors::ai`); this module gives it its
//! ports: the providers on the wire (`providers.rs`) and Postgres (`store.rs`).

pub mod agents;
pub mod prompts;
pub mod providers;
pub mod store;

use actix_web::{HttpResponse, delete, get, post, put, web};
use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wagate_actors::ai::ports::{
    AiObserver, Credential, ModelCall, ModelError, Provider, Role, TenantQuota, ToolCall, Turn,
};
use wagate_actors::ai::{AiFailure, Generate, Limits};

use crate::app::AppState;
use crate::auth::Caller;
use crate::configuration::Settings;
use crate::error::{ApiError, ErrorCode};
use crate::http::TenantQuery;
use crate::http::json::ValidJson;
use crate::http::openapi::{AiErrors, CommonErrors};
use crate::http::pagination::{ListQuery, Page};
use crate::schema::{ai_credentials, chat_agents, session_agents};
use crate::sessions::{ScopedSession, SessionPath};
use store::CredentialRow;

/// The id prefix of the platform's own credentials (`platform:gemini`, `platform:openai`).
pub const PLATFORM_CREDENTIAL: &str = "platform:";

/// The platform's credential for a provider, when config has its key.
pub fn ai_settings_credential(settings: &Settings, provider: Provider) -> Option<Credential> {
    let p = match provider {
        Provider::Gemini => &settings.ai.gemini,
        Provider::Openai => &settings.ai.openai,
    };
    let key = p.api_key.as_ref()?.expose_secret().to_owned();
    Some(Credential {
        id: format!("{PLATFORM_CREDENTIAL}{}", provider.as_str()),
        base_url: p.base_url.clone(),
        api_key: key,
    })
}

/// The cost in USD of tokens of a model, at `ai.prices`.
pub fn cost(settings: &Settings, model: &str, prompt: i64, output: i64) -> Option<f64> {
    settings
        .ai
        .prices
        .get(model)
        .map(|p| (prompt as f64 * p.input + output as f64 * p.output) / 1_000_000.0)
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
pub(crate) fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The tenant a request acts for: the caller's own, or the one the admin names.
pub(crate) async fn tenant_of(
    state: &AppState,
    caller: &Caller,
    named: Option<Uuid>,
) -> Result<Uuid, ApiError> {
    let tenant = match (caller, named) {
        (Caller::Tenant { tenant_id, .. }, None) => *tenant_id,
        (Caller::Tenant { tenant_id, .. }, Some(t)) if *tenant_id == t => t,
        (Caller::Tenant { .. }, Some(_)) => return Err(ApiError::NotFound("tenant")),
        (Caller::Admin, Some(t)) => t,
        (Caller::Admin, None) => {
            return Err(ApiError::validation(
                "tenant_id",
                "the admin key must name the tenant",
            ));
        }
    };
    let mut conn = state.db.get().await?;
    if crate::tenants::store::get_tenant(&mut conn, tenant)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound("tenant"));
    }
    Ok(tenant)
}

/// What the pipeline reports in events: `ai.reply`, `ai.error`, `ai.handoff`.
#[derive(Debug, Clone)]
pub enum AiEvent {
    Reply {
        agent_id: Uuid,
        prompt_tokens: u64,
        output_tokens: u64,
        latency_ms: u64,
        cached: bool,
        tool_calls: Vec<ToolCall>,
    },
    Error {
        agent_id: Uuid,
        error: String,
        fallback_sent: bool,
    },
    Handoff {
        agent_id: Uuid,
        keyword: Option<String>,
        reason: String,
        tool_calls: Vec<ToolCall>,
    },
}

/// The data of `ai.reply`, `ai.error` and `ai.handoff`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AiActivity {
    pub chat: String,
    pub agent_id: Uuid,
    /// The messages sent (the answer's parts, or the fallback).
    pub message_ids: Vec<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Answered from the response cache (no model call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached: Option<bool>,
    /// `ai.error`: why the model gave no answer (never sent to the contact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_sent: Option<bool>,
    /// `ai.handoff`: the keyword the contact used (absent when the model handed off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword: Option<String>,
    /// `ai.handoff`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The gateway tools the model called (`set_contact_name`, `handoff_to_human`), run
    /// before the answer went out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub tool_calls: Vec<ToolCall>,
}

impl AiEvent {
    pub fn with(self, chat: &str, message_ids: Vec<Uuid>) -> (&'static str, AiActivity) {
        let base = |agent_id| AiActivity {
            chat: chat.to_owned(),
            agent_id,
            message_ids: message_ids.clone(),
            prompt_tokens: None,
            output_tokens: None,
            latency_ms: None,
            cached: None,
            error: None,
            fallback_sent: None,
            keyword: None,
            reason: None,
            tool_calls: Vec::new(),
        };
        match self {
            AiEvent::Reply {
                agent_id,
                prompt_tokens,
                output_tokens,
                latency_ms,
                cached,
                tool_calls,
            } => (
                crate::events::AI_REPLY,
                AiActivity {
                    prompt_tokens: Some(prompt_tokens),
                    output_tokens: Some(output_tokens),
                    latency_ms: Some(latency_ms),
                    cached: Some(cached),
                    tool_calls,
                    ..base(agent_id)
                },
            ),
            AiEvent::Error {
                agent_id,
                error,
                fallback_sent,
            } => (
                crate::events::AI_ERROR,
                AiActivity {
                    error: Some(error),
                    fallback_sent: Some(fallback_sent),
                    ..base(agent_id)
                },
            ),
            AiEvent::Handoff {
                agent_id,
                keyword,
                reason,
                tool_calls,
            } => (
                crate::events::AI_HANDOFF,
                AiActivity {
                    keyword,
                    reason: Some(reason),
                    tool_calls,
                    ..base(agent_id)
                },
            ),
        }
    }
}

/// Prometheus for the AiActor.
pub struct PrometheusAiObserver;

impl AiObserver for PrometheusAiObserver {
    fn call_finished(&self, provider: Provider, outcome: &str, took: std::time::Duration) {
        crate::metrics::AI_CALLS
            .with_label_values(&[provider.as_str(), outcome])
            .inc();
        if outcome == "ok" || outcome == "error" {
            crate::metrics::AI_CALL_SECONDS
                .with_label_values(&[provider.as_str()])
                .observe(took.as_secs_f64());
        }
    }

    fn tokens(&self, provider: Provider, prompt: u64, output: u64) {
        crate::metrics::AI_TOKENS
            .with_label_values(&[provider.as_str(), "prompt"])
            .inc_by(prompt);
        crate::metrics::AI_TOKENS
            .with_label_values(&[provider.as_str(), "output"])
            .inc_by(output);
    }

    fn circuit_changed(&self, credential: &str, state: &str) {
        let value = match state {
            "open" => 2,
            "half_open" => 1,
            _ => 0,
        };
        crate::metrics::AI_CIRCUIT
            .with_label_values(&[credential])
            .set(value);
    }

    fn decided(&self, outcome: &str) {
        crate::metrics::AI_DECISIONS
            .with_label_values(&[outcome])
            .inc();
    }
}

// ----- credentials ---------------------------------------------------------------------

/// A tenant's provider credential; the key is never shown again.
#[derive(Debug, Serialize, ToSchema)]
pub struct AiCredential {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub provider: String,
    pub base_url: String,
    /// The key's last four characters.
    pub key_hint: String,
    pub created_at: DateTime<Utc>,
}

impl From<&CredentialRow> for AiCredential {
    fn from(c: &CredentialRow) -> AiCredential {
        AiCredential {
            id: c.id,
            tenant_id: c.tenant_id,
            provider: c.provider.clone(),
            base_url: c.base_url.clone(),
            key_hint: c.key_hint.clone(),
            created_at: c.created_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCredential {
    pub provider: String,
    pub api_key: String,
    /// Default: the provider's public API. Obeys the egress policy.
    pub base_url: Option<String>,
    pub tenant_id: Option<Uuid>,
}

#[utoipa::path(tag = "ai", request_body = CreateCredential, responses((status = 201, description = "Stored, encrypted", body = AiCredential), CommonErrors), security(("api_key" = [])))]
#[post("/ai/credentials")]
pub async fn create_credential(
    caller: Caller,
    state: web::Data<AppState>,
    body: ValidJson<CreateCredential>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let tenant = tenant_of(&state, &caller, body.tenant_id).await?;
    let provider = Provider::parse(&body.provider)
        .ok_or_else(|| ApiError::validation("provider", "must be gemini or openai"))?;
    let key = body.api_key.trim();
    if key.len() < 8 || key.len() > 512 || key.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::validation(
            "api_key",
            "must be 8 to 512 printable characters",
        ));
    }
    let base_url = match body.base_url.as_deref() {
        Some(raw) => crate::http::egress::check_url(raw, state.settings.allow_private_targets())
            .map(|u| u.to_string().trim_end_matches('/').to_owned())
            .map_err(|why| {
                ApiError::validation("base_url", format!("{why} (egress.allow_private_targets)"))
            })?,
        None => match provider {
            Provider::Gemini => "https://generativelanguage.googleapis.com".to_owned(),
            Provider::Openai => "https://api.openai.com".to_owned(),
        },
    };
    let id = Uuid::now_v7();
    let sealed = state
        .cipher
        .seal(id.as_bytes(), key.as_bytes())
        .map_err(|e| ApiError::internal(anyhow::anyhow!("sealing a credential: {e}")))?;
    let row = CredentialRow {
        id,
        tenant_id: tenant,
        provider: provider.as_str().to_owned(),
        base_url,
        api_key_sealed: sealed,
        key_hint: key
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect(),
        created_at: Utc::now(),
    };
    let mut conn = state.db.get().await?;
    let row: CredentialRow = diesel::insert_into(ai_credentials::table)
        .values(&row)
        .returning(CredentialRow::as_returning())
        .get_result(&mut conn)
        .await?;
    Ok(HttpResponse::Created().json(AiCredential::from(&row)))
}

#[utoipa::path(tag = "ai", params(ListQuery), responses((status = 200, description = "A page of credentials", body = Page<AiCredential>), CommonErrors), security(("api_key" = [])))]
#[get("/ai/credentials")]
pub async fn list_credentials(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let (limit, after) = query.parse()?;
    let mut q = ai_credentials::table
        .order(ai_credentials::id.asc())
        .limit(i64::from(limit) + 1)
        .select(CredentialRow::as_select())
        .into_boxed();
    if let Caller::Tenant { tenant_id, .. } = caller {
        q = q.filter(ai_credentials::tenant_id.eq(tenant_id));
    }
    if let Some(after) = after {
        q = q.filter(ai_credentials::id.gt(after));
    }
    let mut conn = state.db.get().await?;
    let rows: Vec<CredentialRow> = q.load(&mut conn).await?;
    let page = Page::from_overfetched(rows, limit, |c| c.id.to_string());
    Ok(HttpResponse::Ok().json(page.map(|c| AiCredential::from(c))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct CredentialPath {
    pub credential_id: Uuid,
}

/// Delete a credential; agents that used it fall back to the platform's.
#[utoipa::path(tag = "ai", params(CredentialPath), responses((status = 204, description = "Deleted"), CommonErrors), security(("api_key" = [])))]
#[delete("/ai/credentials/{credential_id}")]
pub async fn delete_credential(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<CredentialPath>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.db.get().await?;
    let row = store::get_credential(&mut conn, path.credential_id)
        .await?
        .ok_or(ApiError::NotFound("credential"))?;
    caller.require_tenant(row.tenant_id, "credential")?;
    diesel::delete(ai_credentials::table.find(row.id))
        .execute(&mut conn)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

// ----- the agent of a session or a chat ------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAgent {
    pub agent_id: Uuid,
}

/// The agent answering a session's chats.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionAgent {
    pub session_id: Uuid,
    pub agent: agents::Agent,
}

/// An agent of the session's tenant, or a 400 naming `agent_id`.
pub(crate) async fn agent_of_tenant(
    state: &AppState,
    tenant: Uuid,
    id: Uuid,
) -> Result<store::AgentRow, ApiError> {
    let mut conn = state.db.get().await?;
    store::get_agent(&mut conn, id)
        .await?
        .filter(|a| a.tenant_id == tenant)
        .ok_or_else(|| ApiError::validation("agent_id", "no such agent"))
}

#[utoipa::path(tag = "ai", params(SessionPath), request_body = SetAgent, responses((status = 200, description = "The session's agent", body = SessionAgent), CommonErrors), security(("api_key" = [])))]
#[put("/sessions/{session_id}/agent")]
pub async fn set_session_agent(
    state: web::Data<AppState>,
    session: ScopedSession,
    body: ValidJson<SetAgent>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let agent = agent_of_tenant(&state, session.row.tenant_id, body.agent_id).await?;
    let mut conn = state.db.get().await?;
    diesel::insert_into(session_agents::table)
        .values((
            session_agents::session_id.eq(session.row.id),
            session_agents::agent_id.eq(agent.id),
            session_agents::updated_at.eq(Utc::now()),
        ))
        .on_conflict(session_agents::session_id)
        .do_update()
        .set((
            session_agents::agent_id.eq(agent.id),
            session_agents::updated_at.eq(Utc::now()),
        ))
        .execute(&mut conn)
        .await?;
    Ok(HttpResponse::Ok().json(SessionAgent {
        session_id: session.row.id,
        agent: agents::Agent::from(&agent),
    }))
}

#[utoipa::path(tag = "ai", params(SessionPath), responses((status = 200, description = "The session's agent", body = SessionAgent), CommonErrors), security(("api_key" = [])))]
#[get("/sessions/{session_id}/agent")]
pub async fn get_session_agent(
    state: web::Data<AppState>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.db.get().await?;
    let id: Option<Uuid> = session_agents::table
        .find(session.row.id)
        .select(session_agents::agent_id)
        .first(&mut conn)
        .await
        .optional()?;
    let agent = match id {
        Some(id) => store::get_agent(&mut conn, id).await?,
        None => None,
    }
    .ok_or(ApiError::NotFound("session agent"))?;
    Ok(HttpResponse::Ok().json(SessionAgent {
        session_id: session.row.id,
        agent: agents::Agent::from(&agent),
    }))
}

/// The session's chats are not answered by an agent any more (chats with their own keep it).
#[utoipa::path(tag = "ai", params(SessionPath), responses((status = 204, description = "Removed"), CommonErrors), security(("api_key" = [])))]
#[delete("/sessions/{session_id}/agent")]
pub async fn delete_session_agent(
    state: web::Data<AppState>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.db.get().await?;
    let n = diesel::delete(session_agents::table.find(session.row.id))
        .execute(&mut conn)
        .await?;
    if n == 0 {
        return Err(ApiError::NotFound("session agent"));
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Sets (`Some`) or removes (`None`) a chat's own agent, and drops the chat's cached
/// answers (seed 003 §8: switching agents clears the response cache).
pub(crate) async fn set_chat_agent(
    state: &AppState,
    session: &crate::sessions::store::SessionRow,
    chat: &str,
    agent: Option<Uuid>,
) -> Result<(), ApiError> {
    let mut conn = state.db.get().await?;
    match agent {
        Some(id) => {
            let agent = agent_of_tenant(state, session.tenant_id, id).await?;
            diesel::insert_into(chat_agents::table)
                .values((
                    chat_agents::session_id.eq(session.id),
                    chat_agents::chat.eq(chat),
                    chat_agents::agent_id.eq(agent.id),
                    chat_agents::updated_at.eq(Utc::now()),
                ))
                .on_conflict((chat_agents::session_id, chat_agents::chat))
                .do_update()
                .set((
                    chat_agents::agent_id.eq(agent.id),
                    chat_agents::updated_at.eq(Utc::now()),
                ))
                .execute(&mut conn)
                .await?;
        }
        None => {
            diesel::delete(
                chat_agents::table
                    .filter(chat_agents::session_id.eq(session.id))
                    .filter(chat_agents::chat.eq(chat)),
            )
            .execute(&mut conn)
            .await?;
        }
    }
    let _ = state
        .ai
        .send(wagate_actors::ai::ClearChatCache {
            session_id: session.id,
            chat: chat.to_owned(),
        })
        .await;
    Ok(())
}

/// A chat's own agent, if it has one.
pub(crate) async fn chat_agent(
    conn: &mut diesel_async::AsyncPgConnection,
    session: Uuid,
    chat: &str,
) -> QueryResult<Option<Uuid>> {
    chat_agents::table
        .filter(chat_agents::session_id.eq(session))
        .filter(chat_agents::chat.eq(chat))
        .select(chat_agents::agent_id)
        .first(conn)
        .await
        .optional()
}

// ----- one-off calls -------------------------------------------------------------------

/// A turn of a conversation given to `/ai/generate`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GivenTurn {
    /// `user` (the contact) or `model` (`assistant` is taken too).
    pub role: String,
    pub text: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    pub agent_id: Uuid,
    /// One message from the contact …
    pub text: Option<String>,
    /// … or a conversation, the contact's turn last.
    pub messages: Option<Vec<GivenTurn>>,
}

/// What the model answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct Generated {
    pub text: String,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
}

/// The tier quotas of a tenant's AI use.
async fn quota_of(state: &AppState, tenant: Uuid) -> Result<(TenantQuota, u64), ApiError> {
    let mut conn = state.db.get().await?;
    let t = crate::tenants::store::get_tenant(&mut conn, tenant)
        .await?
        .ok_or(ApiError::NotFound("tenant"))?;
    let tier =
        wagate_actors::tier::Tier::parse(&t.tier).unwrap_or(wagate_actors::tier::Tier::Standard);
    let ai = &state.settings.ai;
    let used = store::tokens_today(&mut conn, tenant).await?;
    Ok((
        TenantQuota {
            calls_per_minute: ai.calls_per_minute.for_tier(tier),
            tokens_per_day: u64::from(ai.tokens_per_day.for_tier(tier)),
        },
        used,
    ))
}

/// Calls an agent's model through the AiActor and records the call.
pub(crate) async fn generate_with(
    state: &AppState,
    agent: &store::AgentRow,
    turns: Vec<Turn>,
    kind: &'static str,
    where_: Option<(Uuid, &str)>,
) -> Result<Generated, ApiError> {
    let provider = Provider::parse(&agent.provider).ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!(
            "agent {} has provider {}",
            agent.id,
            agent.provider
        ))
    })?;
    let own = match agent.credential_id {
        Some(id) => {
            let mut conn = state.db.get().await?;
            store::get_credential(&mut conn, id).await?
        }
        None => None,
    };
    let credential = store::credential_for(&state.settings, &state.cipher, provider, own.as_ref())
        .map_err(|_| ApiError::Conflict {
            code: ErrorCode::AiProviderFailed,
            message: format!(
                "no credential for {}: the platform has no key and the agent has none",
                provider.as_str()
            ),
        })?;
    let (quota, used) = quota_of(state, agent.tenant_id).await?;
    let call = ModelCall {
        provider,
        credential,
        model: agent.model.clone(),
        system_prompt: agent.system_prompt.clone(),
        turns,
        temperature: agent.temperature,
        max_output_tokens: agent.max_output_tokens.and_then(|m| u32::try_from(m).ok()),
        tools: Vec::new(),
    };
    let result = state
        .ai
        .send(Generate {
            tenant_id: agent.tenant_id,
            quota,
            tokens_today: used,
            call,
        })
        .await
        .map_err(|_| ApiError::Unavailable("the AI actor"))?;
    let mut record = store::CallRecord {
        id: Uuid::now_v7(),
        tenant_id: agent.tenant_id,
        session_id: where_.map(|w| w.0),
        chat: where_.map(|w| w.1.to_owned()),
        agent_id: Some(agent.id),
        kind,
        provider: Some(agent.provider.clone()),
        model: Some(agent.model.clone()),
        ..store::CallRecord::default()
    };
    match result {
        Ok(answered) => {
            record.prompt_tokens = answered.answer.prompt_tokens;
            record.output_tokens = answered.answer.output_tokens;
            record.latency_ms = Some(answered.latency.as_millis() as u64);
            let mut conn = state.db.get().await?;
            store::record_call(&mut conn, &record).await?;
            let warned = crate::notifications::ai_tokens_warning(
                &mut conn,
                &state.settings,
                agent.tenant_id,
            )
            .await?;
            drop(conn);
            state.events.publish(warned);
            Ok(Generated {
                text: answered.answer.text,
                prompt_tokens: answered.answer.prompt_tokens,
                output_tokens: answered.answer.output_tokens,
            })
        }
        Err(failure) => Err(failure_error(failure)),
    }
}

/// An AI failure as the API answers it.
fn failure_error(f: AiFailure) -> ApiError {
    use actix_web::http::StatusCode;
    match f {
        AiFailure::RateLimited { retry_after } => ApiError::RateLimited {
            retry_after_secs: retry_after.as_secs().max(1),
            limit: 0,
            class: "ai_calls",
        },
        AiFailure::BudgetExhausted { limit, .. } => ApiError::QuotaExceeded {
            what: "AI tokens a day",
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
            tier: "current",
        },
        AiFailure::CircuitOpen { .. } => ApiError::Rejected {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: ErrorCode::AiProviderFailed,
            message: f.to_string(),
        },
        AiFailure::Model(ModelError::Blocked { reason }) => ApiError::Rejected {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: ErrorCode::AiBlocked,
            message: format!("the model refused to answer: {reason}"),
        },
        AiFailure::Model(e) => ApiError::Rejected {
            status: StatusCode::BAD_GATEWAY,
            code: ErrorCode::AiProviderFailed,
            message: e.to_string(),
        },
    }
}

/// Try an agent: its model answers a message or a conversation (nothing is sent).
#[utoipa::path(tag = "ai", request_body = GenerateRequest, responses((status = 200, description = "The model's answer", body = Generated), CommonErrors, AiErrors), security(("api_key" = [])))]
#[post("/ai/generate")]
pub async fn generate(
    caller: Caller,
    state: web::Data<AppState>,
    body: ValidJson<GenerateRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let agent = agents::load_agent(&state, &caller, body.agent_id).await?;
    let turns: Vec<Turn> = match (body.text, body.messages) {
        (Some(t), None) if !t.trim().is_empty() && t.chars().count() <= 20_000 => {
            vec![Turn::text(Role::User, t)]
        }
        (Some(_), None) => {
            return Err(ApiError::validation(
                "text",
                "must be 1 to 20000 characters",
            ));
        }
        (None, Some(m)) if !m.is_empty() && m.len() <= 100 => m
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let role = match t.role.as_str() {
                    "user" => Role::User,
                    "model" | "assistant" => Role::Model,
                    _ => {
                        return Err(ApiError::validation(
                            format!("messages[{i}].role"),
                            "must be user or model",
                        ));
                    }
                };
                if t.text.trim().is_empty() || t.text.chars().count() > 20_000 {
                    return Err(ApiError::validation(
                        format!("messages[{i}].text"),
                        "must be 1 to 20000 characters",
                    ));
                }
                Ok(Turn::text(role, t.text))
            })
            .collect::<Result<_, _>>()?,
        (None, Some(_)) => {
            return Err(ApiError::validation("messages", "must hold 1 to 100 turns"));
        }
        _ => {
            return Err(ApiError::validation("text", "give either text or messages"));
        }
    };
    let answer = generate_with(&state, &agent, turns, "generate", None).await?;
    Ok(HttpResponse::Ok().json(answer))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ChatPath {
    pub session_id: Uuid,
    /// The contact's phone number (or `<lid>@lid`, or a group's `<id>@g.us`).
    pub chat: String,
}

/// A suggested answer for a chat, from its agent and its last messages; not sent.
#[utoipa::path(tag = "ai", params(ChatPath), responses((status = 200, description = "The suggestion", body = Generated), CommonErrors, AiErrors), security(("api_key" = [])))]
#[post("/sessions/{session_id}/chats/{chat}/suggest")]
pub async fn suggest(
    state: web::Data<AppState>,
    path: web::Path<ChatPath>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let chat =
        wagate_actors::messaging::chat_key(&crate::messages::parse_chat(&path.chat, "chat")?);
    let mut conn = state.db.get().await?;
    let agent_id = match chat_agent(&mut conn, session.row.id, &chat).await? {
        Some(a) => Some(a),
        None => session_agents::table
            .find(session.row.id)
            .select(session_agents::agent_id)
            .first(&mut conn)
            .await
            .optional()?,
    };
    let agent = match agent_id {
        Some(id) => store::get_agent(&mut conn, id).await?,
        None => None,
    }
    .ok_or_else(|| ApiError::Conflict {
        code: ErrorCode::NoAgent,
        message: "neither the chat nor its session has an agent".into(),
    })?;
    drop(conn);
    let answer = draft_reply(&state, &agent, session.row.id, &chat, "suggest").await?;
    Ok(HttpResponse::Ok().json(answer))
}

/// The agent's answer to a chat's last messages (the suggest route, a flow's `ai_reply`):
/// the chat's recent history as context, through the AiActor's guards. Not sent.
pub(crate) async fn draft_reply(
    state: &AppState,
    agent: &store::AgentRow,
    session_id: Uuid,
    chat: &str,
    kind: &'static str,
) -> Result<Generated, ApiError> {
    let mut conn = state.db.get().await?;
    let history = crate::messages::store::recent_in_chat(
        &mut conn,
        session_id,
        chat,
        i64::from(agent.context_messages),
    )
    .await?;
    drop(conn);
    let messages: Vec<wagate_actors::ai::ports::ChatMessage> = history
        .into_iter()
        .rev()
        .map(|m| wagate_actors::ai::ports::ChatMessage {
            wa_id: m.wa_id,
            incoming: m.direction == "in",
            kind: m.kind,
            text: m.text,
            quoted_wa_id: m.quoted_id,
            at: m.created_at.into(),
            unanswered: false,
        })
        .collect();
    let mut turns = wagate_actors::ai::plan::conversation(
        &messages,
        u32::try_from(agent.context_messages).unwrap_or(20),
        agent.describe_media,
        std::time::Duration::from_secs(state.settings.ai.context_idle_secs),
    );
    // A draft answers the contact's last words: what the business said after them is left
    // out (providers expect the user to speak last).
    while turns.last().is_some_and(|t| t.role == Role::Model) {
        turns.pop();
    }
    if turns.is_empty() {
        return Err(ApiError::Conflict {
            code: ErrorCode::NothingToAnswer,
            message: "the chat has no message from the contact to answer".into(),
        });
    }
    let answer = generate_with(state, agent, turns, kind, Some((session_id, chat))).await?;
    Ok(answer)
}

// ----- usage and limits ----------------------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    pub session_id: Option<Uuid>,
    /// A chat (phone number) of that session.
    pub chat: Option<String>,
    /// First day (UTC), `YYYY-MM-DD`; default 30 days ago.
    pub from: Option<String>,
    /// Last day (UTC), inclusive; default today.
    pub to: Option<String>,
    /// The admin key names the tenant.
    pub tenant_id: Option<Uuid>,
}

/// Tokens used on one day, in one chat, by one agent.
#[derive(Debug, Serialize, ToSchema, QueryableByName)]
pub struct UsageRow {
    #[diesel(sql_type = diesel::sql_types::Date)]
    pub day: NaiveDate,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
    pub session_id: Option<Uuid>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub chat: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
    pub agent_id: Option<Uuid>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    #[serde(skip)]
    pub model: Option<String>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub calls: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub prompt_tokens: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub output_tokens: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    #[serde(flatten)]
    pub row: UsageRow,
    /// USD at `ai.prices`; `null` when the model has no price.
    pub cost_usd: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    pub items: Vec<Usage>,
    pub prompt_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
}

fn parse_day(raw: Option<&str>, field: &str) -> Result<Option<NaiveDate>, ApiError> {
    raw.map(|r| {
        NaiveDate::parse_from_str(r, "%Y-%m-%d")
            .map_err(|_| ApiError::validation(field, "must be a date, YYYY-MM-DD"))
    })
    .transpose()
}

/// Token use per chat, agent and day (UTC), with cost estimates.
#[utoipa::path(tag = "ai", params(UsageQuery), responses((status = 200, description = "Usage", body = UsageReport), CommonErrors), security(("api_key" = [])))]
#[get("/ai/usage")]
pub async fn usage(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_of(&state, &caller, query.tenant_id).await?;
    let today = Utc::now().date_naive();
    let to = parse_day(query.to.as_deref(), "to")?.unwrap_or(today);
    let from = parse_day(query.from.as_deref(), "from")?.unwrap_or(to - chrono::Days::new(30));
    if from > to || (to - from).num_days() > 366 {
        return Err(ApiError::validation(
            "from",
            "must be at most 366 days before to",
        ));
    }
    if let Some(s) = query.session_id {
        crate::sessions::load_for(&state, &caller, s).await?;
    }
    let chat = match (&query.chat, query.session_id) {
        (Some(c), Some(_)) => Some(wagate_actors::messaging::chat_key(
            &crate::messages::parse_chat(c, "chat")?,
        )),
        (Some(_), None) => {
            return Err(ApiError::validation("chat", "needs session_id"));
        }
        _ => None,
    };
    let mut conn = state.db.get().await?;
    let rows: Vec<UsageRow> = diesel::sql_query(
        "SELECT (created_at AT TIME ZONE 'UTC')::date AS day, session_id, chat, agent_id, \
           max(model) AS model, count(*) AS calls, \
           COALESCE(sum(prompt_tokens), 0)::bigint AS prompt_tokens, \
           COALESCE(sum(output_tokens), 0)::bigint AS output_tokens \
         FROM ai_calls WHERE tenant_id = $1 \
           AND created_at >= ($2::date)::timestamp AT TIME ZONE 'UTC' \
           AND created_at < ($3::date + 1)::timestamp AT TIME ZONE 'UTC' \
           AND ($4::uuid IS NULL OR session_id = $4) AND ($5::text IS NULL OR chat = $5) \
           AND kind <> 'handoff' \
         GROUP BY 1, 2, 3, 4 ORDER BY 1 DESC, 2, 3, 4 LIMIT 5000",
    )
    .bind::<diesel::sql_types::Uuid, _>(tenant)
    .bind::<diesel::sql_types::Date, _>(from)
    .bind::<diesel::sql_types::Date, _>(to)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Uuid>, _>(query.session_id)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(chat.as_deref())
    .load(&mut conn)
    .await?;
    // Rows of replies carry no model: it is the agent's.
    let mut models = std::collections::HashMap::new();
    for id in rows.iter().filter_map(|r| r.agent_id) {
        if let std::collections::hash_map::Entry::Vacant(e) = models.entry(id)
            && let Some(a) = store::get_agent(&mut conn, id).await?
        {
            e.insert(a.model);
        }
    }
    let items: Vec<Usage> = rows
        .into_iter()
        .map(|row| {
            let model = row
                .model
                .clone()
                .or_else(|| row.agent_id.and_then(|a| models.get(&a).cloned()));
            let cost_usd =
                model.and_then(|m| cost(&state.settings, &m, row.prompt_tokens, row.output_tokens));
            Usage { row, cost_usd }
        })
        .collect();
    Ok(HttpResponse::Ok().json(UsageReport {
        prompt_tokens: items.iter().map(|u| u.row.prompt_tokens).sum(),
        output_tokens: items.iter().map(|u| u.row.output_tokens).sum(),
        cost_usd: items.iter().filter_map(|u| u.cost_usd).sum(),
        items,
    }))
}

/// A credential's circuit.
#[derive(Debug, Serialize, ToSchema)]
pub struct Circuit {
    pub credential: String,
    /// `closed`, `open` or `half_open`.
    pub state: String,
}

/// The tenant's AI limits and where it stands (calls: this node's window).
#[derive(Debug, Serialize, ToSchema)]
pub struct AiLimits {
    pub calls_per_minute: u32,
    pub calls_last_minute: usize,
    pub tokens_per_day: u64,
    pub tokens_today: u64,
    pub max_replies_per_chat_per_minute: u32,
    /// The circuits of the platform's credentials and the tenant's own.
    pub circuits: Vec<Circuit>,
}

async fn limits_of(state: &AppState, tenant: Uuid, reset: bool) -> Result<AiLimits, ApiError> {
    let (quota, used) = quota_of(state, tenant).await?;
    let own: Vec<Uuid> = {
        let mut conn = state.db.get().await?;
        ai_credentials::table
            .filter(ai_credentials::tenant_id.eq(tenant))
            .select(ai_credentials::id)
            .load(&mut conn)
            .await?
    };
    let st = state
        .ai
        .send(Limits {
            tenant_id: tenant,
            reset,
        })
        .await
        .map_err(|_| ApiError::Unavailable("the AI actor"))?;
    Ok(AiLimits {
        calls_per_minute: quota.calls_per_minute,
        calls_last_minute: st.calls_last_minute,
        tokens_per_day: quota.tokens_per_day,
        tokens_today: used,
        max_replies_per_chat_per_minute: state.settings.ai.max_replies_per_chat_per_minute,
        circuits: st
            .circuits
            .into_iter()
            .filter(|(c, _)| {
                c.starts_with(PLATFORM_CREDENTIAL) || own.iter().any(|o| o.to_string() == *c)
            })
            .map(|(credential, s)| Circuit {
                credential,
                state: s.to_owned(),
            })
            .collect(),
    })
}

#[utoipa::path(tag = "ai", params(TenantQuery), responses((status = 200, description = "Limits", body = AiLimits), CommonErrors), security(("api_key" = [])))]
#[get("/ai/limits")]
pub async fn get_limits(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<TenantQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_of(&state, &caller, query.tenant_id).await?;
    Ok(HttpResponse::Ok().json(limits_of(&state, tenant, false).await?))
}

/// Admin: forget a tenant's AI call window on this node.
#[utoipa::path(tag = "ai", params(TenantQuery), responses((status = 200, description = "Limits after the reset", body = AiLimits), CommonErrors), security(("api_key" = [])))]
#[delete("/ai/limits")]
pub async fn reset_limits(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<TenantQuery>,
) -> Result<HttpResponse, ApiError> {
    if !matches!(caller, Caller::Admin) {
        return Err(ApiError::Forbidden(
            "resetting AI limits needs the admin key",
        ));
    }
    let tenant = tenant_of(&state, &caller, query.tenant_id).await?;
    Ok(HttpResponse::Ok().json(limits_of(&state, tenant, true).await?))
}

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(create_credential)
        .service(list_credentials)
        .service(delete_credential)
        .service(agents::agent_defaults)
        .service(agents::validate_agent)
        .service(agents::create_agent)
        .service(agents::list_agents)
        .service(agents::agent_stats)
        .service(agents::duplicate_agent)
        .service(agents::get_agent)
        .service(agents::update_agent)
        .service(agents::delete_agent)
        .service(set_session_agent)
        .service(get_session_agent)
        .service(delete_session_agent)
        .service(generate)
        .service(suggest)
        .service(usage)
        .service(get_limits)
        .service(reset_limits)
        .configure(prompts::routes);
}

/// The AiActor's settings from `ai.*`.
pub fn actor_config(s: &crate::configuration::AiSettings) -> wagate_actors::ai::AiConfig {
    use std::time::Duration;
    wagate_actors::ai::AiConfig {
        max_concurrent_calls: s.max_concurrent_calls.max(1),
        max_attempts: s.max_attempts.max(1),
        backoff_base: Duration::from_millis(s.backoff_base_ms),
        max_retry_wait: Duration::from_secs(s.max_retry_wait_secs),
        circuit_failures: s.circuit_failures.max(1),
        circuit_open_for: Duration::from_secs(s.circuit_open_secs),
        cache_entries: s.cache_entries,
        cache_ttl: Duration::from_secs(s.cache_ttl_secs),
        poll_interval: Duration::from_millis(s.poll_interval_ms.max(10)),
        max_chats_in_flight: 64,
        claim_lock: Duration::from_secs(s.claim_lock_secs.max(1)),
        reply: wagate_actors::ai::plan::ReplySettings {
            human_pause: Duration::from_secs(s.human_pause_secs),
            max_replies_per_chat_per_minute: s.max_replies_per_chat_per_minute,
            context_idle: Duration::from_secs(s.context_idle_secs),
            typing_per_char: Duration::from_millis(s.typing_ms_per_char),
            typing_cap: Duration::from_millis(s.typing_cap_ms),
        },
    }
}

/// Starts the AiActor on an arbiter of its own (model calls wait on the network; they never
/// hold up a session's arbiter), restarted by actix's supervisor if it stops.
pub fn start(
    settings: &Settings,
    db: &crate::db::DbPool,
    hub: &crate::events::EventHub,
    cipher: &std::sync::Arc<crate::keystore::StoreCipher>,
    supervisor: &actix::Addr<wagate_actors::RootSupervisor>,
    directory: &std::sync::Arc<wagate_actors::directory::SessionDirectory>,
) -> anyhow::Result<actix::Addr<wagate_actors::ai::AiActor>> {
    use std::sync::Arc;
    let model = Arc::new(providers::HttpModelClient::new(
        std::time::Duration::from_secs(settings.ai.request_timeout_secs.max(1)),
        settings.allow_private_targets(),
    )?);
    let store = Arc::new(store::PgAiStore {
        agents: Default::default(),
        db: db.clone(),
        hub: hub.clone(),
        cipher: cipher.clone(),
        settings: Arc::new(settings.clone()),
        supervisor: supervisor.clone(),
        directory: directory.clone(),
    });
    let engine = wagate_actors::ai::AiEngine::new(
        actor_config(&settings.ai),
        store,
        model,
        Arc::new(PrometheusAiObserver),
    );
    Ok(actix::Supervisor::start_in_arbiter(
        &actix::Arbiter::new().handle(),
        move |_| wagate_actors::ai::AiActor::new(engine),
    ))
}
