//! The prompt generator (seed 000 §6): a fixed sequence of questions about the business, the
//! answers kept, and a system prompt the model writes from them — versioned, listed, and
//! usable as an agent's prompt (`POST /agents {"prompt_id"}`).

use actix_web::{HttpResponse, delete, get, post, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wagate_actors::ai::ports::{Provider, Role, Turn};

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::http::json::ValidJson;
use crate::http::openapi::{AiErrors, CommonErrors};
use crate::http::pagination::{ListQuery, Page};
use crate::schema::{prompt_sessions, prompts};

/// The questions, in order: what a good WhatsApp assistant's prompt needs to know.
pub const QUESTIONS: [(&str, &str); 7] = [
    (
        "business",
        "What is your business called, and what does it do?",
    ),
    (
        "audience",
        "Who writes to you on WhatsApp, and what do they usually want?",
    ),
    (
        "tone",
        "How should the assistant sound (formal or friendly, short or detailed, emoji or not), and in which languages?",
    ),
    (
        "hours",
        "When are you open, and what should the assistant say outside those hours?",
    ),
    (
        "faq",
        "Which questions come up most often, and what are their answers (prices, delivery, returns, …)?",
    ),
    ("never", "What must the assistant never do, say or promise?"),
    (
        "handoff",
        "When should it hand the conversation to a person?",
    ),
];

/// How the model is asked to write the prompt.
const WRITER: &str = "You write system prompts for customer-service assistants that answer a \
business's WhatsApp chats. From the owner's answers below, write one system prompt, in the \
second person (\"You are …\"), in the language the owner used. Cover: who the business is, who \
writes and why, the tone, opening hours and what to say outside them, the facts to answer \
from (and to say you will check when something is not covered), what never to do, and when \
to hand over to a person. Keep answers short, as in a chat. Write only the prompt.";

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = prompt_sessions)]
pub struct SessionRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub goal: Option<String>,
    pub answers: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = prompts)]
pub struct PromptRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub session_id: Option<Uuid>,
    pub version: i32,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

/// A question of the sequence.
#[derive(Debug, Serialize, ToSchema)]
pub struct Question {
    pub key: String,
    pub text: String,
    /// 1-based.
    pub number: usize,
    pub total: usize,
}

fn question(index: usize) -> Option<Question> {
    QUESTIONS.get(index).map(|(key, text)| Question {
        key: (*key).to_owned(),
        text: (*text).to_owned(),
        number: index + 1,
        total: QUESTIONS.len(),
    })
}

/// A question and its answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Answered {
    pub key: String,
    pub question: String,
    pub answer: String,
}

/// A generator session as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct GeneratorSession {
    pub id: Uuid,
    pub goal: Option<String>,
    pub answers: Vec<Answered>,
    /// The next question; `null` once all are answered.
    pub question: Option<Question>,
    pub done: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&SessionRow> for GeneratorSession {
    fn from(s: &SessionRow) -> Self {
        GeneratorSession {
            id: s.id,
            goal: s.goal.clone(),
            answers: s
                .answers
                .iter()
                .zip(QUESTIONS)
                .map(|(a, (key, q))| Answered {
                    key: key.to_owned(),
                    question: q.to_owned(),
                    answer: a.clone(),
                })
                .collect(),
            question: question(s.answers.len()),
            done: s.answers.len() >= QUESTIONS.len(),
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// A prompt the model wrote.
#[derive(Debug, Serialize, ToSchema)]
pub struct Prompt {
    pub id: Uuid,
    pub session_id: Option<Uuid>,
    /// 1 for a session's first prompt, then 2, 3, … each time it is generated again.
    pub version: i32,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

impl From<&PromptRow> for Prompt {
    fn from(p: &PromptRow) -> Self {
        Prompt {
            id: p.id,
            session_id: p.session_id,
            version: p.version,
            text: p.text.clone(),
            created_at: p.created_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartSession {
    /// What the assistant is for, in a sentence (optional).
    pub goal: Option<String>,
    /// The admin key names the tenant.
    pub tenant_id: Option<Uuid>,
}

#[utoipa::path(tag = "ai", request_body = StartSession, responses((status = 201, description = "Started, with the first question", body = GeneratorSession), CommonErrors), security(("api_key" = [])))]
#[post("/prompt-generator/sessions")]
pub async fn start_session(
    caller: Caller,
    state: web::Data<AppState>,
    body: ValidJson<StartSession>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let tenant = super::tenant_of(&state, &caller, body.tenant_id).await?;
    let goal = match body.goal.as_deref().map(str::trim) {
        Some(g) if g.chars().count() > 500 => {
            return Err(ApiError::validation(
                "goal",
                "must be at most 500 characters",
            ));
        }
        Some("") | None => None,
        Some(g) => Some(g.to_owned()),
    };
    let now = Utc::now();
    let row = SessionRow {
        id: Uuid::now_v7(),
        tenant_id: tenant,
        goal,
        answers: Vec::new(),
        created_at: now,
        updated_at: now,
    };
    let mut conn = state.db.get().await?;
    diesel::insert_into(prompt_sessions::table)
        .values(&row)
        .execute(&mut conn)
        .await?;
    Ok(HttpResponse::Created().json(GeneratorSession::from(&row)))
}

#[utoipa::path(tag = "ai", params(ListQuery), responses((status = 200, description = "A page of generator sessions", body = Page<GeneratorSession>), CommonErrors), security(("api_key" = [])))]
#[get("/prompt-generator/sessions")]
pub async fn list_sessions(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let (limit, after) = query.parse()?;
    let mut q = prompt_sessions::table
        .order(prompt_sessions::id.asc())
        .limit(i64::from(limit) + 1)
        .select(SessionRow::as_select())
        .into_boxed();
    if let Caller::Tenant { tenant_id, .. } = caller {
        q = q.filter(prompt_sessions::tenant_id.eq(tenant_id));
    }
    if let Some(after) = after {
        q = q.filter(prompt_sessions::id.gt(after));
    }
    let mut conn = state.db.get().await?;
    let rows: Vec<SessionRow> = q.load(&mut conn).await?;
    let page = Page::from_overfetched(rows, limit, |s| s.id.to_string());
    Ok(HttpResponse::Ok().json(page.map(|s| GeneratorSession::from(s))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct GeneratorPath {
    pub generator_id: Uuid,
}

async fn load(state: &AppState, caller: &Caller, id: Uuid) -> Result<SessionRow, ApiError> {
    let mut conn = state.db.get().await?;
    let row = prompt_sessions::table
        .find(id)
        .select(SessionRow::as_select())
        .first(&mut conn)
        .await
        .optional()?
        .ok_or(ApiError::NotFound("generator session"))?;
    caller.require_tenant(row.tenant_id, "generator session")?;
    Ok(row)
}

#[utoipa::path(tag = "ai", params(GeneratorPath), responses((status = 200, description = "The session", body = GeneratorSession), CommonErrors), security(("api_key" = [])))]
#[get("/prompt-generator/sessions/{generator_id}")]
pub async fn get_session(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<GeneratorPath>,
) -> Result<HttpResponse, ApiError> {
    let row = load(&state, &caller, path.generator_id).await?;
    Ok(HttpResponse::Ok().json(GeneratorSession::from(&row)))
}

#[utoipa::path(tag = "ai", params(GeneratorPath), responses((status = 204, description = "Deleted (its prompts stay)"), CommonErrors), security(("api_key" = [])))]
#[delete("/prompt-generator/sessions/{generator_id}")]
pub async fn delete_session(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<GeneratorPath>,
) -> Result<HttpResponse, ApiError> {
    let row = load(&state, &caller, path.generator_id).await?;
    let mut conn = state.db.get().await?;
    diesel::delete(prompt_sessions::table.find(row.id))
        .execute(&mut conn)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The next question, or `done`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Next {
    pub question: Option<Question>,
    pub done: bool,
}

#[utoipa::path(tag = "ai", params(GeneratorPath), responses((status = 200, description = "The next question", body = Next), CommonErrors), security(("api_key" = [])))]
#[get("/prompt-generator/sessions/{generator_id}/current-question")]
pub async fn current_question(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<GeneratorPath>,
) -> Result<HttpResponse, ApiError> {
    let row = load(&state, &caller, path.generator_id).await?;
    let q = question(row.answers.len());
    Ok(HttpResponse::Ok().json(Next {
        done: q.is_none(),
        question: q,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    pub answer: String,
}

#[utoipa::path(tag = "ai", params(GeneratorPath), request_body = Answer, responses((status = 200, description = "The next question, or done", body = Next), CommonErrors), security(("api_key" = [])))]
#[post("/prompt-generator/sessions/{generator_id}/answer")]
pub async fn answer(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<GeneratorPath>,
    body: ValidJson<Answer>,
) -> Result<HttpResponse, ApiError> {
    let row = load(&state, &caller, path.generator_id).await?;
    let text = body.into_inner().answer;
    let text = text.trim();
    if text.is_empty() || text.chars().count() > 4000 || text.contains('\0') {
        return Err(ApiError::validation(
            "answer",
            "must be 1 to 4000 characters",
        ));
    }
    if row.answers.len() >= QUESTIONS.len() {
        return Err(ApiError::Conflict {
            code: ErrorCode::PromptSessionComplete,
            message: "every question is answered: generate the prompt".into(),
        });
    }
    // Appended only if no other answer came meanwhile (two tabs answering at once).
    let mut conn = state.db.get().await?;
    let n = diesel::sql_query(
        "UPDATE prompt_sessions SET answers = array_append(answers, $2), updated_at = now() \
         WHERE id = $1 AND cardinality(answers) = $3",
    )
    .bind::<diesel::sql_types::Uuid, _>(row.id)
    .bind::<diesel::sql_types::Text, _>(text)
    .bind::<diesel::sql_types::Integer, _>(row.answers.len() as i32)
    .execute(&mut conn)
    .await?;
    if n == 0 {
        return Err(ApiError::Conflict {
            code: ErrorCode::PromptSessionComplete,
            message: "this question was answered meanwhile: ask for the current question".into(),
        });
    }
    let q = question(row.answers.len() + 1);
    Ok(HttpResponse::Ok().json(Next {
        done: q.is_none(),
        question: q,
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GeneratePrompt {
    /// Write it with this agent's model and credential; default: the platform's Gemini (or
    /// OpenAI) key.
    pub agent_id: Option<Uuid>,
}

#[utoipa::path(tag = "ai", params(GeneratorPath), request_body = GeneratePrompt, responses((status = 201, description = "The prompt, written by the model", body = Prompt), CommonErrors, AiErrors), security(("api_key" = [])))]
#[post("/prompt-generator/sessions/{generator_id}/generate")]
pub async fn generate(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<GeneratorPath>,
    body: Option<ValidJson<GeneratePrompt>>,
) -> Result<HttpResponse, ApiError> {
    let row = load(&state, &caller, path.generator_id).await?;
    if row.answers.len() < QUESTIONS.len() {
        return Err(ApiError::Conflict {
            code: ErrorCode::PromptSessionIncomplete,
            message: format!(
                "{} of {} questions answered: answer them all first",
                row.answers.len(),
                QUESTIONS.len()
            ),
        });
    }
    let body = body.map(|b| b.into_inner()).unwrap_or_default();
    let writer = match body.agent_id {
        Some(id) => {
            let agent = super::agent_of_tenant(&state, row.tenant_id, id).await?;
            super::store::AgentRow {
                system_prompt: WRITER.to_owned(),
                temperature: Some(0.4),
                max_output_tokens: Some(2048),
                ..agent
            }
        }
        None => platform_writer(&state, row.tenant_id)?,
    };
    let mut brief = String::new();
    if let Some(goal) = &row.goal {
        brief.push_str(&format!("Goal: {goal}\n\n"));
    }
    for (a, (_, q)) in row.answers.iter().zip(QUESTIONS) {
        brief.push_str(&format!("Q: {q}\nA: {a}\n\n"));
    }
    let written = super::generate_with(
        &state,
        &writer,
        vec![Turn::text(Role::User, brief)],
        "prompt",
        None,
    )
    .await?;
    let text = written.text.trim().to_owned();
    if text.is_empty() {
        return Err(ApiError::Rejected {
            status: actix_web::http::StatusCode::BAD_GATEWAY,
            code: ErrorCode::AiProviderFailed,
            message: "the model wrote an empty prompt".into(),
        });
    }
    let mut conn = state.db.get().await?;
    let prompt: PromptRow = diesel::sql_query(
        "INSERT INTO prompts (id, tenant_id, session_id, version, text) \
         SELECT $1, $2, $3, COALESCE(max(version), 0) + 1, $4 FROM prompts WHERE session_id = $3 \
         RETURNING id, tenant_id, session_id, version, text, created_at",
    )
    .bind::<diesel::sql_types::Uuid, _>(Uuid::now_v7())
    .bind::<diesel::sql_types::Uuid, _>(row.tenant_id)
    .bind::<diesel::sql_types::Uuid, _>(row.id)
    .bind::<diesel::sql_types::Text, _>(&text)
    .get_result::<PromptRowByName>(&mut conn)
    .await?
    .into();
    Ok(HttpResponse::Created().json(Prompt::from(&prompt)))
}

#[derive(QueryableByName)]
struct PromptRowByName {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    tenant_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
    session_id: Option<Uuid>,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    version: i32,
    #[diesel(sql_type = diesel::sql_types::Text)]
    text: String,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    created_at: DateTime<Utc>,
}

impl From<PromptRowByName> for PromptRow {
    fn from(p: PromptRowByName) -> Self {
        PromptRow {
            id: p.id,
            tenant_id: p.tenant_id,
            session_id: p.session_id,
            version: p.version,
            text: p.text,
            created_at: p.created_at,
        }
    }
}

/// The writer without an agent: the platform's Gemini, else its OpenAI.
fn platform_writer(state: &AppState, tenant: Uuid) -> Result<super::store::AgentRow, ApiError> {
    let (provider, model) = if super::ai_settings_credential(&state.settings, Provider::Gemini)
        .is_some()
    {
        (Provider::Gemini, "gemini-2.0-flash")
    } else if super::ai_settings_credential(&state.settings, Provider::Openai).is_some() {
        (Provider::Openai, "gpt-4o-mini")
    } else {
        return Err(ApiError::Conflict {
            code: ErrorCode::AiProviderFailed,
            message: "the platform has no AI key: name an agent (agent_id) to write with".into(),
        });
    };
    let now = Utc::now();
    Ok(super::store::AgentRow {
        id: Uuid::nil(),
        tenant_id: tenant,
        name: "prompt writer".into(),
        provider: provider.as_str().into(),
        model: model.into(),
        credential_id: None,
        system_prompt: WRITER.into(),
        temperature: Some(0.4),
        max_output_tokens: Some(2048),
        context_messages: 1,
        debounce_ms: 0,
        handoff_keywords: Vec::new(),
        fallback_text: None,
        answer_groups: false,
        describe_media: false,
        split_replies: false,
        typing: false,
        tools: Vec::new(),
        version: 1,
        created_at: now,
        updated_at: now,
    })
}

#[utoipa::path(tag = "ai", params(ListQuery), responses((status = 200, description = "A page of prompts", body = Page<Prompt>), CommonErrors), security(("api_key" = [])))]
#[get("/prompts")]
pub async fn list_prompts(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let (limit, after) = query.parse()?;
    let mut q = prompts::table
        .order(prompts::id.asc())
        .limit(i64::from(limit) + 1)
        .select(PromptRow::as_select())
        .into_boxed();
    if let Caller::Tenant { tenant_id, .. } = caller {
        q = q.filter(prompts::tenant_id.eq(tenant_id));
    }
    if let Some(after) = after {
        q = q.filter(prompts::id.gt(after));
    }
    let mut conn = state.db.get().await?;
    let rows: Vec<PromptRow> = q.load(&mut conn).await?;
    let page = Page::from_overfetched(rows, limit, |p| p.id.to_string());
    Ok(HttpResponse::Ok().json(page.map(|p| Prompt::from(p))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PromptPath {
    pub prompt_id: Uuid,
}

/// A prompt of the tenant's, or 404.
pub async fn load_prompt(
    state: &AppState,
    tenant: Option<Uuid>,
    id: Uuid,
) -> Result<PromptRow, ApiError> {
    let mut conn = state.db.get().await?;
    prompts::table
        .find(id)
        .select(PromptRow::as_select())
        .first(&mut conn)
        .await
        .optional()?
        .filter(|p| tenant.is_none_or(|t| t == p.tenant_id))
        .ok_or(ApiError::NotFound("prompt"))
}

#[utoipa::path(tag = "ai", params(PromptPath), responses((status = 200, description = "The prompt", body = Prompt), CommonErrors), security(("api_key" = [])))]
#[get("/prompts/{prompt_id}")]
pub async fn get_prompt(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<PromptPath>,
) -> Result<HttpResponse, ApiError> {
    let tenant = caller.tenant_id();
    let p = load_prompt(&state, tenant, path.prompt_id).await?;
    Ok(HttpResponse::Ok().json(Prompt::from(&p)))
}

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(start_session)
        .service(list_sessions)
        .service(get_session)
        .service(delete_session)
        .service(current_question)
        .service(answer)
        .service(generate)
        .service(list_prompts)
        .service(get_prompt);
}
