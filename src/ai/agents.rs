//! Agents: CRUD, validation without storing, defaults, duplicate, and their stats.

use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wagate_actors::ai::ports::Provider;

use super::store::{self, AgentRow};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::http::json::ValidJson;
use crate::http::openapi::CommonErrors;
use crate::http::pagination::{ListQuery, Page};
use crate::schema::ai_agents;

pub const DEFAULT_CONTEXT_MESSAGES: i32 = 20;
pub const DEFAULT_DEBOUNCE_MS: i32 = 3000;
const MAX_PROMPT_CHARS: usize = 20_000;

/// An agent as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Agent {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    /// `gemini` or `openai` (any OpenAI-compatible server).
    pub provider: String,
    pub model: String,
    /// The tenant's own credential; `null`: the platform's for the provider.
    pub credential_id: Option<Uuid>,
    pub system_prompt: String,
    pub temperature: Option<f32>,
    pub max_output_tokens: Option<i32>,
    /// The chat's last messages sent as context.
    pub context_messages: i32,
    /// Quiet time after a contact's message before the agent answers everything that came.
    pub debounce_ms: i32,
    /// A contact using one of these turns the chat's bot off and emits `ai.handoff`.
    pub handoff_keywords: Vec<String>,
    /// Sent when the model still fails after retries (or its circuit is open); `null`:
    /// nothing is sent. The provider's error is never sent to a contact.
    pub fallback_text: Option<String>,
    /// Answer in groups, only when mentioned or replied to.
    pub answer_groups: bool,
    /// Tell the model "[the contact sent an image]" for media without a caption.
    pub describe_media: bool,
    /// Send a long answer as several messages, split on blank lines.
    pub split_replies: bool,
    /// Show "typing…" before answering, for a time that grows with the answer.
    pub typing: bool,
    /// Gateway tools the model may call: `handoff_to_human`, `set_contact_name`,
    /// `create_card`, `move_card`.
    pub tools: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&AgentRow> for Agent {
    fn from(a: &AgentRow) -> Agent {
        Agent {
            id: a.id,
            tenant_id: a.tenant_id,
            name: a.name.clone(),
            provider: a.provider.clone(),
            model: a.model.clone(),
            credential_id: a.credential_id,
            system_prompt: a.system_prompt.clone(),
            temperature: a.temperature,
            max_output_tokens: a.max_output_tokens,
            context_messages: a.context_messages,
            debounce_ms: a.debounce_ms,
            handoff_keywords: a.handoff_keywords.clone(),
            fallback_text: a.fallback_text.clone(),
            answer_groups: a.answer_groups,
            describe_media: a.describe_media,
            split_replies: a.split_replies,
            typing: a.typing,
            tools: a.tools.clone(),
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// `POST /agents` and `POST /agents/validate`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    pub name: String,
    pub provider: String,
    pub model: String,
    /// The instructions; or `prompt_id`, a prompt the generator wrote.
    pub system_prompt: Option<String>,
    pub prompt_id: Option<Uuid>,
    pub credential_id: Option<Uuid>,
    pub temperature: Option<f32>,
    pub max_output_tokens: Option<i32>,
    pub context_messages: Option<i32>,
    pub debounce_ms: Option<i32>,
    pub handoff_keywords: Option<Vec<String>>,
    pub fallback_text: Option<String>,
    pub answer_groups: Option<bool>,
    pub describe_media: Option<bool>,
    pub split_replies: Option<bool>,
    pub typing: Option<bool>,
    pub tools: Option<Vec<String>>,
    /// The admin key names the tenant.
    pub tenant_id: Option<Uuid>,
}

/// `PATCH /agents/{id}`: any field of an agent.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgent {
    pub name: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub system_prompt: Option<String>,
    /// Take the system prompt from a prompt the generator wrote.
    pub prompt_id: Option<Uuid>,
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<Uuid>)]
    pub credential_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<f32>)]
    pub temperature: Option<Option<f32>>,
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<i32>)]
    pub max_output_tokens: Option<Option<i32>>,
    pub context_messages: Option<i32>,
    pub debounce_ms: Option<i32>,
    pub handoff_keywords: Option<Vec<String>>,
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<String>)]
    pub fallback_text: Option<Option<String>>,
    pub answer_groups: Option<bool>,
    pub describe_media: Option<bool>,
    pub split_replies: Option<bool>,
    pub typing: Option<bool>,
    pub tools: Option<Vec<String>>,
}

fn text(field: &str, v: &str, max: usize) -> Result<String, ApiError> {
    let t = v.trim();
    if t.is_empty() || t.chars().count() > max {
        return Err(ApiError::validation(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    Ok(t.to_owned())
}

/// Checks an agent's fields, in place (trimmed); the credential against the tenant.
async fn check(state: &AppState, tenant: Uuid, a: &mut AgentRow) -> Result<(), ApiError> {
    a.name = text("name", &a.name, 100)?;
    let provider = Provider::parse(&a.provider)
        .ok_or_else(|| ApiError::validation("provider", "must be gemini or openai"))?;
    a.model = text("model", &a.model, 200)?;
    if a.model.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::validation("model", "must not contain spaces"));
    }
    a.system_prompt = text("system_prompt", &a.system_prompt, MAX_PROMPT_CHARS)?;
    if let Some(t) = a.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(ApiError::validation("temperature", "must be from 0 to 2"));
    }
    if let Some(m) = a.max_output_tokens
        && !(1..=65_536).contains(&m)
    {
        return Err(ApiError::validation(
            "max_output_tokens",
            "must be from 1 to 65536",
        ));
    }
    if !(1..=100).contains(&a.context_messages) {
        return Err(ApiError::validation(
            "context_messages",
            "must be from 1 to 100",
        ));
    }
    if !(0..=60_000).contains(&a.debounce_ms) {
        return Err(ApiError::validation(
            "debounce_ms",
            "must be from 0 to 60000",
        ));
    }
    if a.handoff_keywords.len() > 20 {
        return Err(ApiError::validation(
            "handoff_keywords",
            "at most 20 keywords",
        ));
    }
    for (i, k) in a.handoff_keywords.iter_mut().enumerate() {
        *k = text(&format!("handoff_keywords[{i}]"), k, 50)?;
    }
    let known: Vec<&str> = wagate_actors::ai::tools::catalogue()
        .iter()
        .map(|t| t.name)
        .collect();
    for (i, t) in a.tools.iter().enumerate() {
        if !known.contains(&t.as_str()) {
            return Err(ApiError::validation(
                format!("tools[{i}]"),
                format!("unknown tool {t:?}; known: {}", known.join(", ")),
            ));
        }
    }
    a.tools.sort();
    a.tools.dedup();
    if let Some(f) = &a.fallback_text {
        a.fallback_text = Some(text("fallback_text", f, 4096)?);
    }
    match a.credential_id {
        Some(id) => {
            let mut conn = state.db.get().await?;
            let c = store::get_credential(&mut conn, id)
                .await?
                .filter(|c| c.tenant_id == tenant)
                .ok_or_else(|| ApiError::validation("credential_id", "no such credential"))?;
            if c.provider != provider.as_str() {
                return Err(ApiError::validation(
                    "credential_id",
                    format!(
                        "is a {} credential, the agent uses {}",
                        c.provider,
                        provider.as_str()
                    ),
                ));
            }
        }
        None if super::ai_settings_credential(&state.settings, provider).is_none() => {
            return Err(ApiError::validation(
                "credential_id",
                format!(
                    "this platform has no {p} key (ai.{p}.api_key): give your own credential",
                    p = provider.as_str()
                ),
            ));
        }
        None => {}
    }
    Ok(())
}

/// The system prompt given, or the generator's prompt named by `prompt_id` (one of them).
async fn prompt_of(
    state: &AppState,
    tenant: Uuid,
    given: Option<String>,
    prompt_id: Option<Uuid>,
) -> Result<String, ApiError> {
    match (given, prompt_id) {
        (Some(_), Some(_)) => Err(ApiError::validation(
            "prompt_id",
            "give system_prompt or prompt_id, not both",
        )),
        (Some(p), None) => Ok(p),
        (None, Some(id)) => super::prompts::load_prompt(state, Some(tenant), id)
            .await
            .map(|p| p.text)
            .map_err(|_| ApiError::validation("prompt_id", "no such prompt")),
        (None, None) => Err(ApiError::validation(
            "system_prompt",
            "give system_prompt or prompt_id",
        )),
    }
}

fn row_of(tenant: Uuid, system_prompt: String, b: CreateAgent) -> AgentRow {
    let now = Utc::now();
    AgentRow {
        id: Uuid::now_v7(),
        tenant_id: tenant,
        name: b.name,
        provider: b.provider,
        model: b.model,
        credential_id: b.credential_id,
        system_prompt,
        temperature: b.temperature,
        max_output_tokens: b.max_output_tokens,
        context_messages: b.context_messages.unwrap_or(DEFAULT_CONTEXT_MESSAGES),
        debounce_ms: b.debounce_ms.unwrap_or(DEFAULT_DEBOUNCE_MS),
        handoff_keywords: b.handoff_keywords.unwrap_or_default(),
        fallback_text: b.fallback_text,
        answer_groups: b.answer_groups.unwrap_or(false),
        describe_media: b.describe_media.unwrap_or(false),
        split_replies: b.split_replies.unwrap_or(true),
        typing: b.typing.unwrap_or(true),
        tools: b.tools.unwrap_or_default(),
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

#[utoipa::path(tag = "ai", request_body = CreateAgent, responses((status = 201, description = "Created", body = Agent), CommonErrors), security(("api_key" = [])))]
#[post("/agents")]
pub async fn create_agent(
    caller: Caller,
    state: web::Data<AppState>,
    body: ValidJson<CreateAgent>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let tenant = super::tenant_of(&state, &caller, body.tenant_id).await?;
    let prompt = prompt_of(&state, tenant, body.system_prompt.clone(), body.prompt_id).await?;
    let mut row = row_of(tenant, prompt, body);
    check(&state, tenant, &mut row).await?;
    let mut conn = state.db.get().await?;
    let row: AgentRow = diesel::insert_into(ai_agents::table)
        .values(&row)
        .returning(AgentRow::as_returning())
        .get_result(&mut conn)
        .await?;
    Ok(HttpResponse::Created().json(Agent::from(&row)))
}

/// What `POST /agents/validate` found.
#[derive(Debug, Serialize, ToSchema)]
pub struct Validated {
    pub valid: bool,
    /// The agent as it would be stored (defaults filled in).
    pub agent: Agent,
}

/// Checks an agent's configuration without storing it: 200 with the agent as it would be, or
/// the same 400 creating it would give.
#[utoipa::path(tag = "ai", request_body = CreateAgent, responses((status = 200, description = "Valid", body = Validated), CommonErrors), security(("api_key" = [])))]
#[post("/agents/validate")]
pub async fn validate_agent(
    caller: Caller,
    state: web::Data<AppState>,
    body: ValidJson<CreateAgent>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let tenant = super::tenant_of(&state, &caller, body.tenant_id).await?;
    let prompt = prompt_of(&state, tenant, body.system_prompt.clone(), body.prompt_id).await?;
    let mut row = row_of(tenant, prompt, body);
    check(&state, tenant, &mut row).await?;
    Ok(HttpResponse::Ok().json(Validated {
        valid: true,
        agent: Agent::from(&row),
    }))
}

/// An agent's defaults, and which providers this platform has keys for.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentDefaults {
    pub provider: String,
    pub model: String,
    pub context_messages: i32,
    pub debounce_ms: i32,
    pub handoff_keywords: Vec<String>,
    pub split_replies: bool,
    pub typing: bool,
    pub answer_groups: bool,
    pub describe_media: bool,
    /// Providers an agent may use without its own credential.
    pub platform_providers: Vec<String>,
    /// Models with a price in `ai.prices` (cost estimates).
    pub priced_models: Vec<String>,
}

#[utoipa::path(tag = "ai", responses((status = 200, description = "Defaults", body = AgentDefaults), CommonErrors), security(("api_key" = [])))]
#[get("/agents/defaults")]
pub async fn agent_defaults(
    _caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut priced: Vec<String> = state.settings.ai.prices.keys().cloned().collect();
    priced.sort();
    Ok(HttpResponse::Ok().json(AgentDefaults {
        provider: "gemini".into(),
        model: "gemini-2.0-flash".into(),
        context_messages: DEFAULT_CONTEXT_MESSAGES,
        debounce_ms: DEFAULT_DEBOUNCE_MS,
        handoff_keywords: vec!["human".into(), "agent".into()],
        split_replies: true,
        typing: true,
        answer_groups: false,
        describe_media: false,
        platform_providers: [Provider::Gemini, Provider::Openai]
            .into_iter()
            .filter(|p| super::ai_settings_credential(&state.settings, *p).is_some())
            .map(|p| p.as_str().to_owned())
            .collect(),
        priced_models: priced,
    }))
}

#[utoipa::path(tag = "ai", params(ListQuery), responses((status = 200, description = "A page of agents", body = Page<Agent>), CommonErrors), security(("api_key" = [])))]
#[get("/agents")]
pub async fn list_agents(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let (limit, after) = query.parse()?;
    let mut q = ai_agents::table
        .order(ai_agents::id.asc())
        .limit(i64::from(limit) + 1)
        .select(AgentRow::as_select())
        .into_boxed();
    if let Caller::Tenant { tenant_id, .. } = caller {
        q = q.filter(ai_agents::tenant_id.eq(tenant_id));
    }
    if let Some(after) = after {
        q = q.filter(ai_agents::id.gt(after));
    }
    let mut conn = state.db.get().await?;
    let rows: Vec<AgentRow> = q.load(&mut conn).await?;
    let page = Page::from_overfetched(rows, limit, |a| a.id.to_string());
    Ok(HttpResponse::Ok().json(page.map(|a| Agent::from(a))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AgentPath {
    pub agent_id: Uuid,
}

/// The caller's agent, or 404 (another tenant's agent included).
pub async fn load_agent(state: &AppState, caller: &Caller, id: Uuid) -> Result<AgentRow, ApiError> {
    let mut conn = state.db.get().await?;
    let row = store::get_agent(&mut conn, id)
        .await?
        .ok_or(ApiError::NotFound("agent"))?;
    caller.require_tenant(row.tenant_id, "agent")?;
    Ok(row)
}

#[utoipa::path(tag = "ai", params(AgentPath), responses((status = 200, description = "The agent", body = Agent), CommonErrors), security(("api_key" = [])))]
#[get("/agents/{agent_id}")]
pub async fn get_agent(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = crate::http::id_or_refusal(&req, &path, "agent")?;
    let row = load_agent(&state, &caller, id).await?;
    Ok(HttpResponse::Ok().json(Agent::from(&row)))
}

#[utoipa::path(tag = "ai", params(AgentPath), request_body = UpdateAgent, responses((status = 200, description = "The agent", body = Agent), CommonErrors), security(("api_key" = [])))]
#[patch("/agents/{agent_id}")]
pub async fn update_agent(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
    // The id is judged before the body: `PATCH /agents/defaults` is a 405 whatever it carries.
    body: Result<ValidJson<UpdateAgent>, ApiError>,
) -> Result<HttpResponse, ApiError> {
    let id = crate::http::id_or_refusal(&req, &path, "agent")?;
    let b = body?.into_inner();
    let mut row = load_agent(&state, &caller, id).await?;
    if b.system_prompt.is_some() || b.prompt_id.is_some() {
        row.system_prompt =
            prompt_of(&state, row.tenant_id, b.system_prompt.clone(), b.prompt_id).await?;
    }
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = b.$f.clone() { row.$f = v; } )* };
    }
    set!(
        name,
        provider,
        model,
        credential_id,
        temperature,
        max_output_tokens,
        context_messages,
        debounce_ms,
        handoff_keywords,
        fallback_text,
        answer_groups,
        describe_media,
        split_replies,
        typing,
        tools
    );
    check(&state, row.tenant_id, &mut row).await?;
    row.version += 1;
    row.updated_at = Utc::now();
    let mut conn = state.db.get().await?;
    let row: AgentRow = diesel::update(ai_agents::table.find(row.id))
        .set(&row)
        .returning(AgentRow::as_returning())
        .get_result(&mut conn)
        .await?;
    Ok(HttpResponse::Ok().json(Agent::from(&row)))
}

/// Delete an agent; sessions and chats it answered have no agent any more.
#[utoipa::path(tag = "ai", params(AgentPath), responses((status = 204, description = "Deleted"), CommonErrors), security(("api_key" = [])))]
#[delete("/agents/{agent_id}")]
pub async fn delete_agent(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = crate::http::id_or_refusal(&req, &path, "agent")?;
    let row = load_agent(&state, &caller, id).await?;
    let mut conn = state.db.get().await?;
    diesel::delete(ai_agents::table.find(row.id))
        .execute(&mut conn)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A copy of an agent, named "<name> (copy)".
#[utoipa::path(tag = "ai", params(AgentPath), responses((status = 201, description = "The copy", body = Agent), CommonErrors), security(("api_key" = [])))]
#[post("/agents/{agent_id}/duplicate")]
pub async fn duplicate_agent(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<AgentPath>,
) -> Result<HttpResponse, ApiError> {
    let mut row = load_agent(&state, &caller, path.agent_id).await?;
    let now = Utc::now();
    row.id = Uuid::now_v7();
    row.name = format!("{} (copy)", row.name).chars().take(100).collect();
    row.version = 1;
    row.created_at = now;
    row.updated_at = now;
    let mut conn = state.db.get().await?;
    let row: AgentRow = diesel::insert_into(ai_agents::table)
        .values(&row)
        .returning(AgentRow::as_returning())
        .get_result(&mut conn)
        .await?;
    Ok(HttpResponse::Created().json(Agent::from(&row)))
}

/// What an agent did, from every call it made.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentStats {
    #[serde(flatten)]
    pub counts: AgentCounts,
    /// The tokens' cost in USD at `ai.prices` (`null`: the model has no price).
    pub cost_usd: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema, QueryableByName)]
pub struct AgentCounts {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub replies: i64,
    /// Calls that failed (a fallback sent or nothing).
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub errors: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub handoffs: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub prompt_tokens: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub output_tokens: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
    pub latency_ms_p50: Option<f64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
    pub latency_ms_p95: Option<f64>,
}

#[utoipa::path(tag = "ai", params(AgentPath), responses((status = 200, description = "The agent's figures", body = AgentStats), CommonErrors), security(("api_key" = [])))]
#[get("/agents/{agent_id}/stats")]
pub async fn agent_stats(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<AgentPath>,
) -> Result<HttpResponse, ApiError> {
    let agent = load_agent(&state, &caller, path.agent_id).await?;
    let mut conn = state.db.get().await?;
    let counts: AgentCounts = diesel::sql_query(
        "SELECT count(*) FILTER (WHERE kind = 'reply') AS replies, \
           count(*) FILTER (WHERE kind IN ('fallback', 'error')) AS errors, \
           count(*) FILTER (WHERE kind = 'handoff') AS handoffs, \
           COALESCE(sum(prompt_tokens), 0)::bigint AS prompt_tokens, \
           COALESCE(sum(output_tokens), 0)::bigint AS output_tokens, \
           percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) \
             FILTER (WHERE kind = 'reply' AND NOT cached) AS latency_ms_p50, \
           percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) \
             FILTER (WHERE kind = 'reply' AND NOT cached) AS latency_ms_p95 \
         FROM ai_calls WHERE agent_id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(agent.id)
    .get_result(&mut conn)
    .await?;
    let cost_usd = super::cost(
        &state.settings,
        &agent.model,
        counts.prompt_tokens,
        counts.output_tokens,
    );
    Ok(HttpResponse::Ok().json(AgentStats { counts, cost_usd }))
}
