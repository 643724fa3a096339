//! Flows and their executions: CRUD (validated at creation, every error naming its step),
//! toggle, duplicate, execute, the execution history with every step, cancel, stats.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wagate_actors::automation::flow::Flow;

use super::store::{start_execution, start_variables};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::http::json::ValidJson;
use crate::http::openapi::CommonErrors;
use crate::http::pagination::{ListQuery, Page};
use crate::schema::{flow_executions, flow_steps, flows};

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = flows, treat_none_as_null = true)]
pub struct FlowRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub steps: Value,
    pub variables: Value,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn get_flow_row(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<FlowRow>> {
    flows::table
        .find(id)
        .select(FlowRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A flow as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct FlowOut {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    /// `[{"id", "type", …}]`; see the README for the step types.
    #[schema(value_type = Vec<Object>)]
    pub steps: Value,
    /// Declared variables with their defaults.
    #[schema(value_type = Object)]
    pub variables: Value,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&FlowRow> for FlowOut {
    fn from(r: &FlowRow) -> FlowOut {
        FlowOut {
            id: r.id,
            tenant_id: r.tenant_id,
            name: r.name.clone(),
            description: r.description.clone(),
            steps: r.steps.clone(),
            variables: r.variables.clone(),
            enabled: r.enabled,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// `POST /flows`; `PATCH /flows/{id}` takes any of its fields.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowBody {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "crate::ai::present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub steps: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub variables: Option<Value>,
    pub enabled: Option<bool>,
    /// The admin key names the tenant.
    pub tenant_id: Option<Uuid>,
}

/// Validates a flow as it would be stored: a 400 names the step at fault.
async fn check(state: &AppState, row: &mut FlowRow) -> Result<(), ApiError> {
    let name = row.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::validation("name", "must be 1 to 100 characters"));
    }
    row.name = name.to_owned();
    if row
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 1000)
    {
        return Err(ApiError::validation(
            "description",
            "at most 1000 characters",
        ));
    }
    if !row.variables.is_object() {
        return Err(ApiError::validation(
            "variables",
            "an object of names and default values",
        ));
    }
    let vars = super::vars_map(&row.variables);
    let flow = Flow::parse(&row.steps, &vars).map_err(|e| {
        let field = match e.index {
            Some(i) => format!("steps[{i}]"),
            None => "steps".to_owned(),
        };
        ApiError::validation(field, e.describe())
    })?;
    // What the steps name (an agent, a board, a member) must be the tenant's.
    use wagate_actors::automation::flow::StepKind;
    let mut conn = None;
    for (i, step) in flow.steps.iter().enumerate() {
        let named: Vec<(&str, Uuid)> = match &step.kind {
            StepKind::AiReply { agent_id } => vec![("agent_id", *agent_id)],
            StepKind::CreateCard {
                board_id,
                assignee_id,
                ..
            } => std::iter::once(("board_id", *board_id))
                .chain(assignee_id.map(|m| ("assignee_id", m)))
                .collect(),
            StepKind::MoveCard { board_id, .. } => vec![("board_id", *board_id)],
            StepKind::Notify {
                member_id: Some(m), ..
            } => vec![("member_id", *m)],
            _ => continue,
        };
        if conn.is_none() {
            conn = Some(state.db.get().await?);
        }
        let Some(conn) = conn.as_mut() else { continue };
        for (field, id) in named {
            let owner: Option<Uuid> = match field {
                "agent_id" => {
                    crate::schema::ai_agents::table
                        .find(id)
                        .select(crate::schema::ai_agents::tenant_id)
                        .first(conn)
                        .await
                }
                "board_id" => {
                    crate::schema::boards::table
                        .find(id)
                        .select(crate::schema::boards::tenant_id)
                        .first(conn)
                        .await
                }
                _ => {
                    crate::schema::members::table
                        .find(id)
                        .select(crate::schema::members::tenant_id)
                        .first(conn)
                        .await
                }
            }
            .optional()?;
            if owner != Some(row.tenant_id) {
                let what = match field {
                    "agent_id" => "agent",
                    "board_id" => "board",
                    _ => "member",
                };
                return Err(ApiError::validation(
                    format!("steps[{i}]"),
                    format!("step {:?}: {field} names no {what} of this tenant", step.id),
                ));
            }
        }
    }
    Ok(())
}

fn apply(row: &mut FlowRow, b: FlowBody) {
    if let Some(v) = b.name {
        row.name = v;
    }
    if let Some(v) = b.description {
        row.description = v;
    }
    if let Some(v) = b.steps {
        row.steps = v;
    }
    if let Some(v) = b.variables {
        row.variables = v;
    }
    if let Some(v) = b.enabled {
        row.enabled = v;
    }
    row.updated_at = Utc::now();
}

#[utoipa::path(tag = "automation", request_body = FlowBody, responses((status = 201, description = "Created", body = FlowOut), CommonErrors), security(("api_key" = [])))]
#[post("/flows")]
pub async fn create_flow(
    caller: Caller,
    state: web::Data<AppState>,
    body: ValidJson<FlowBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let tenant = crate::ai::tenant_of(&state, &caller, b.tenant_id).await?;
    if b.name.is_none() {
        return Err(ApiError::validation("name", "is required"));
    }
    if b.steps.is_none() {
        return Err(ApiError::validation("steps", "is required"));
    }
    let now = Utc::now();
    let mut row = FlowRow {
        id: Uuid::now_v7(),
        tenant_id: tenant,
        name: String::new(),
        description: None,
        steps: json!([]),
        variables: json!({}),
        enabled: true,
        created_at: now,
        updated_at: now,
    };
    apply(&mut row, b);
    check(&state, &mut row).await?;
    let mut conn = state.db.get().await?;
    let count: i64 = flows::table
        .filter(flows::tenant_id.eq(tenant))
        .count()
        .get_result(&mut conn)
        .await?;
    let max = i64::from(state.settings.automation.max_flows_per_tenant);
    if count >= max {
        return Err(ApiError::Conflict {
            code: ErrorCode::QuotaExceeded,
            message: format!("a tenant may have at most {max} flows"),
        });
    }
    let saved: FlowRow = diesel::insert_into(flows::table)
        .values(&row)
        .returning(FlowRow::as_returning())
        .get_result(&mut conn)
        .await?;
    Ok(HttpResponse::Created().json(FlowOut::from(&saved)))
}

#[utoipa::path(tag = "automation", params(ListQuery), responses((status = 200, description = "The tenant's flows, oldest first", body = Page<FlowOut>), CommonErrors), security(("api_key" = [])))]
#[get("/flows")]
pub async fn list_flows(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let (limit, after) = query.parse()?;
    let mut q = flows::table
        .order(flows::id.asc())
        .limit(i64::from(limit) + 1)
        .select(FlowRow::as_select())
        .into_boxed();
    if let Caller::Tenant { tenant_id, .. } = caller {
        q = q.filter(flows::tenant_id.eq(tenant_id));
    }
    if let Some(after) = after {
        q = q.filter(flows::id.gt(after));
    }
    let mut conn = state.db.get().await?;
    let rows: Vec<FlowRow> = q.load(&mut conn).await?;
    let page = Page::from_overfetched(rows, limit, |f| f.id.to_string());
    Ok(HttpResponse::Ok().json(page.map(|f| FlowOut::from(f))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct FlowPath {
    pub flow_id: Uuid,
}

pub async fn load_flow(state: &AppState, caller: &Caller, id: Uuid) -> Result<FlowRow, ApiError> {
    let mut conn = state.db.get().await?;
    let row = get_flow_row(&mut conn, id)
        .await?
        .ok_or(ApiError::NotFound("flow"))?;
    caller.require_tenant(row.tenant_id, "flow")?;
    Ok(row)
}

#[utoipa::path(tag = "automation", params(FlowPath), responses((status = 200, description = "The flow", body = FlowOut), CommonErrors), security(("api_key" = [])))]
#[get("/flows/{flow_id}")]
pub async fn get_flow(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = crate::http::id_or_refusal(&req, &path, "flow")?;
    let row = load_flow(&state, &caller, id).await?;
    Ok(HttpResponse::Ok().json(FlowOut::from(&row)))
}

#[utoipa::path(tag = "automation", params(FlowPath), request_body = FlowBody, responses((status = 200, description = "The flow; running executions keep the steps they started with", body = FlowOut), CommonErrors), security(("api_key" = [])))]
#[patch("/flows/{flow_id}")]
pub async fn update_flow(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
    body: Result<ValidJson<FlowBody>, ApiError>,
) -> Result<HttpResponse, ApiError> {
    let id = crate::http::id_or_refusal(&req, &path, "flow")?;
    let b = body?.into_inner();
    let mut row = load_flow(&state, &caller, id).await?;
    if b.tenant_id.is_some_and(|t| t != row.tenant_id) {
        return Err(ApiError::validation(
            "tenant_id",
            "a flow stays with its tenant",
        ));
    }
    apply(&mut row, b);
    check(&state, &mut row).await?;
    let mut conn = state.db.get().await?;
    let saved: FlowRow = diesel::update(flows::table.find(row.id))
        .set(&row)
        .returning(FlowRow::as_returning())
        .get_result(&mut conn)
        .await?;
    Ok(HttpResponse::Ok().json(FlowOut::from(&saved)))
}

#[utoipa::path(tag = "automation", params(FlowPath), responses((status = 204, description = "Deleted, with its triggers; its executions stop"), CommonErrors), security(("api_key" = [])))]
#[delete("/flows/{flow_id}")]
pub async fn delete_flow(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = crate::http::id_or_refusal(&req, &path, "flow")?;
    let row = load_flow(&state, &caller, id).await?;
    let mut conn = state.db.get().await?;
    diesel::sql_query(
        "UPDATE flow_executions SET status = 'cancelled', error = 'the flow was deleted', \
             finished_at = now(), due_at = NULL, locked_until = NULL \
         WHERE flow_id = $1 AND status IN ('running', 'waiting', 'waiting_reply')",
    )
    .bind::<sql_types::Uuid, _>(row.id)
    .execute(&mut conn)
    .await?;
    diesel::delete(flows::table.find(row.id))
        .execute(&mut conn)
        .await?;
    super::triggers::bump_version(&mut conn, row.tenant_id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(tag = "automation", params(FlowPath), responses((status = 200, description = "The flow, enabled or disabled", body = FlowOut), CommonErrors), security(("api_key" = [])))]
#[patch("/flows/{flow_id}/toggle")]
pub async fn toggle_flow(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<FlowPath>,
) -> Result<HttpResponse, ApiError> {
    let row = load_flow(&state, &caller, path.flow_id).await?;
    let mut conn = state.db.get().await?;
    let saved: FlowRow = diesel::update(flows::table.find(row.id))
        .set((
            flows::enabled.eq(!row.enabled),
            flows::updated_at.eq(Utc::now()),
        ))
        .returning(FlowRow::as_returning())
        .get_result(&mut conn)
        .await?;
    Ok(HttpResponse::Ok().json(FlowOut::from(&saved)))
}

#[utoipa::path(tag = "automation", params(FlowPath), responses((status = 201, description = "The copy", body = FlowOut), CommonErrors), security(("api_key" = [])))]
#[post("/flows/{flow_id}/duplicate")]
pub async fn duplicate_flow(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<FlowPath>,
) -> Result<HttpResponse, ApiError> {
    let mut row = load_flow(&state, &caller, path.flow_id).await?;
    let now = Utc::now();
    row.id = Uuid::now_v7();
    row.name = format!("{} (copy)", row.name).chars().take(100).collect();
    row.created_at = now;
    row.updated_at = now;
    let mut conn = state.db.get().await?;
    let saved: FlowRow = diesel::insert_into(flows::table)
        .values(&row)
        .returning(FlowRow::as_returning())
        .get_result(&mut conn)
        .await?;
    Ok(HttpResponse::Created().json(FlowOut::from(&saved)))
}

/// `POST /flows/{id}/execute`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteFlow {
    pub session_id: Uuid,
    pub chat: String,
    /// Values for the flow's declared variables.
    #[schema(value_type = Option<Object>)]
    pub variables: Option<Value>,
}

#[utoipa::path(tag = "automation", params(FlowPath), request_body = ExecuteFlow, responses((status = 202, description = "The execution, started", body = Execution), CommonErrors), security(("api_key" = [])))]
#[post("/flows/{flow_id}/execute")]
pub async fn execute_flow(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<FlowPath>,
    body: ValidJson<ExecuteFlow>,
) -> Result<HttpResponse, ApiError> {
    let flow = load_flow(&state, &caller, path.flow_id).await?;
    let b = body.into_inner();
    let session = super::session_of(&state, flow.tenant_id, b.session_id).await?;
    let chat = wagate_actors::messaging::chat_key(&crate::messages::parse_chat(&b.chat, "chat")?);
    if let Some(v) = &b.variables {
        let o = v.as_object().ok_or_else(|| {
            ApiError::validation("variables", "an object of the flow's variables")
        })?;
        let declared = flow.variables.as_object().cloned().unwrap_or_default();
        if let Some(k) = o.keys().find(|k| !declared.contains_key(*k)) {
            return Err(ApiError::validation(
                format!("variables.{k}"),
                "the flow does not declare this variable",
            ));
        }
    }
    if !flow.enabled {
        return Err(ApiError::Conflict {
            code: ErrorCode::FlowDisabled,
            message: "the flow is disabled".into(),
        });
    }
    let mut conn = state.db.get().await?;
    let facts = super::chat_facts(&mut conn, session.id, &chat).await?;
    let vars = start_variables(
        Some(&chat),
        facts.contact_name.as_deref(),
        None,
        Some(&session.name),
        &Value::Null,
        b.variables.as_ref(),
    );
    let id = Uuid::now_v7();
    start_execution(
        &mut conn,
        id,
        flow.tenant_id,
        flow.id,
        None,
        "api",
        None,
        Some(session.id),
        Some(&chat),
        vars,
    )
    .await?
    .ok_or(ApiError::Conflict {
        code: ErrorCode::FlowDisabled,
        message: "the flow is disabled".into(),
    })?;
    let exec = load_execution_row(&mut conn, id)
        .await?
        .ok_or(ApiError::NotFound("execution"))?;
    drop(conn);
    super::kick(&state);
    Ok(HttpResponse::Accepted().json(Execution::from_row(&exec, Vec::new())))
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = flow_executions)]
pub struct ExecutionRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub flow_id: Option<Uuid>,
    pub trigger_id: Option<Uuid>,
    pub source: String,
    pub session_id: Option<Uuid>,
    pub chat: Option<String>,
    pub status: String,
    pub current_step: Option<String>,
    pub variables: Value,
    pub seq: i32,
    pub due_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

async fn load_execution_row(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<ExecutionRow>> {
    flow_executions::table
        .find(id)
        .select(ExecutionRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// One step of an execution.
#[derive(Debug, Serialize, ToSchema, Queryable, Selectable)]
#[diesel(table_name = flow_steps)]
pub struct ExecutionStep {
    /// Its number in the execution.
    pub seq: i32,
    pub step_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// `ok`, `waiting` or `failed`.
    pub outcome: String,
    #[schema(value_type = Object)]
    pub input: Value,
    #[schema(value_type = Object)]
    pub output: Value,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// An execution of a flow.
#[derive(Debug, Serialize, ToSchema)]
pub struct Execution {
    pub id: Uuid,
    pub flow_id: Option<Uuid>,
    pub trigger_id: Option<Uuid>,
    /// `trigger`, `api` or `schedule`.
    pub source: String,
    pub session_id: Option<Uuid>,
    pub chat: Option<String>,
    /// `running`, `waiting`, `waiting_reply`, `completed`, `failed` or `cancelled`.
    pub status: String,
    pub current_step: Option<String>,
    #[schema(value_type = Object)]
    pub variables: Value,
    /// When a waiting execution goes on.
    pub resumes_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Every step run, in order (`GET /executions/{id}`; empty in lists).
    pub steps: Vec<ExecutionStep>,
}

impl Execution {
    fn from_row(r: &ExecutionRow, steps: Vec<ExecutionStep>) -> Execution {
        Execution {
            id: r.id,
            flow_id: r.flow_id,
            trigger_id: r.trigger_id,
            source: r.source.clone(),
            session_id: r.session_id,
            chat: r.chat.clone(),
            status: r.status.clone(),
            current_step: r.current_step.clone().filter(|s| !s.is_empty()),
            variables: r.variables.clone(),
            resumes_at: if matches!(r.status.as_str(), "waiting" | "waiting_reply") {
                r.due_at
            } else {
                None
            },
            error: r.error.clone(),
            started_at: r.started_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
            steps,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExecutionListQuery {
    pub limit: Option<String>,
    pub cursor: Option<String>,
    pub status: Option<String>,
}

#[utoipa::path(tag = "automation", params(FlowPath, ExecutionListQuery), responses((status = 200, description = "The flow's executions, newest first", body = Page<Execution>), CommonErrors), security(("api_key" = [])))]
#[get("/flows/{flow_id}/executions")]
pub async fn list_executions(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<FlowPath>,
    query: web::Query<ExecutionListQuery>,
) -> Result<HttpResponse, ApiError> {
    let flow = load_flow(&state, &caller, path.flow_id).await?;
    let q = query.into_inner();
    let (limit, before) = ListQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .parse()?;
    let mut sql = flow_executions::table
        .filter(flow_executions::flow_id.eq(flow.id))
        .order(flow_executions::id.desc())
        .limit(i64::from(limit) + 1)
        .select(ExecutionRow::as_select())
        .into_boxed();
    if let Some(b) = before {
        sql = sql.filter(flow_executions::id.lt(b));
    }
    if let Some(s) = q.status {
        const STATUSES: &[&str] = &[
            "running",
            "waiting",
            "waiting_reply",
            "completed",
            "failed",
            "cancelled",
        ];
        if !STATUSES.contains(&s.as_str()) {
            return Err(ApiError::validation(
                "status",
                format!("one of {}", STATUSES.join(", ")),
            ));
        }
        sql = sql.filter(flow_executions::status.eq(s));
    }
    let mut conn = state.db.get().await?;
    let rows: Vec<ExecutionRow> = sql.load(&mut conn).await?;
    let page = Page::from_overfetched(rows, limit, |e| e.id.to_string());
    Ok(HttpResponse::Ok().json(page.map(|e| Execution::from_row(e, Vec::new()))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ExecutionPath {
    pub execution_id: Uuid,
}

async fn load_execution(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<ExecutionRow, ApiError> {
    let mut conn = state.db.get().await?;
    let row = load_execution_row(&mut conn, id)
        .await?
        .ok_or(ApiError::NotFound("execution"))?;
    caller.require_tenant(row.tenant_id, "execution")?;
    Ok(row)
}

#[utoipa::path(tag = "automation", params(ExecutionPath), responses((status = 200, description = "The execution with every step", body = Execution), CommonErrors), security(("api_key" = [])))]
#[get("/executions/{execution_id}")]
pub async fn get_execution(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<ExecutionPath>,
) -> Result<HttpResponse, ApiError> {
    let row = load_execution(&state, &caller, path.execution_id).await?;
    let mut conn = state.db.get().await?;
    let steps: Vec<ExecutionStep> = flow_steps::table
        .filter(flow_steps::execution_id.eq(row.id))
        .order((flow_steps::seq.asc(), flow_steps::id.asc()))
        .select(ExecutionStep::as_select())
        .load(&mut conn)
        .await?;
    Ok(HttpResponse::Ok().json(Execution::from_row(&row, steps)))
}

#[utoipa::path(tag = "automation", params(ExecutionPath), responses((status = 200, description = "The execution, cancelled", body = Execution), CommonErrors), security(("api_key" = [])))]
#[post("/executions/{execution_id}/cancel")]
pub async fn cancel_execution(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<ExecutionPath>,
) -> Result<HttpResponse, ApiError> {
    let row = load_execution(&state, &caller, path.execution_id).await?;
    let mut conn = state.db.get().await?;
    let n = diesel::sql_query(
        "UPDATE flow_executions SET status = 'cancelled', finished_at = now(), due_at = NULL, \
             locked_until = NULL, updated_at = now(), error = 'cancelled' \
         WHERE id = $1 AND status IN ('running', 'waiting', 'waiting_reply')",
    )
    .bind::<sql_types::Uuid, _>(row.id)
    .execute(&mut conn)
    .await?;
    if n == 0 {
        return Err(ApiError::Conflict {
            code: ErrorCode::ExecutionFinished,
            message: format!("the execution is {} already", row.status),
        });
    }
    crate::metrics::FLOW_EXECUTIONS
        .with_label_values(&["cancelled"])
        .inc();
    let row = load_execution_row(&mut conn, row.id)
        .await?
        .ok_or(ApiError::NotFound("execution"))?;
    Ok(HttpResponse::Ok().json(Execution::from_row(&row, Vec::new())))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FlowStats {
    pub flows: i64,
    pub enabled: i64,
    /// Executions by status (all kept history).
    #[schema(value_type = Object)]
    pub executions: BTreeMap<String, i64>,
    /// Steps run in the last 24 hours, by type.
    #[schema(value_type = Object)]
    pub steps_last_24h: BTreeMap<String, i64>,
}

#[derive(QueryableByName)]
struct CountBy {
    #[diesel(sql_type = sql_types::Text)]
    key: String,
    #[diesel(sql_type = sql_types::BigInt)]
    n: i64,
}

#[utoipa::path(tag = "automation", params(crate::http::TenantQuery), responses((status = 200, description = "The tenant's flow figures", body = FlowStats), CommonErrors), security(("api_key" = [])))]
#[get("/flows/stats")]
pub async fn flow_stats(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<crate::http::TenantQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = crate::ai::tenant_of(&state, &caller, query.tenant_id).await?;
    let mut conn = state.db.get().await?;
    let counts = |sql: &'static str| diesel::sql_query(sql).bind::<sql_types::Uuid, _>(tenant);
    let flows_by: Vec<CountBy> = counts(
        "SELECT CASE WHEN enabled THEN 'enabled' ELSE 'disabled' END AS key, count(*) AS n \
         FROM flows WHERE tenant_id = $1 GROUP BY 1",
    )
    .load(&mut conn)
    .await?;
    let executions: Vec<CountBy> = counts(
        "SELECT status AS key, count(*) AS n FROM flow_executions WHERE tenant_id = $1 GROUP BY 1",
    )
    .load(&mut conn)
    .await?;
    let steps: Vec<CountBy> = counts(
        "SELECT s.type AS key, count(*) AS n FROM flow_steps s \
         JOIN flow_executions x ON x.id = s.execution_id \
         WHERE x.tenant_id = $1 AND s.started_at > now() - interval '1 day' GROUP BY 1",
    )
    .load(&mut conn)
    .await?;
    let enabled = flows_by
        .iter()
        .find(|c| c.key == "enabled")
        .map_or(0, |c| c.n);
    Ok(HttpResponse::Ok().json(FlowStats {
        flows: flows_by.iter().map(|c| c.n).sum(),
        enabled,
        executions: executions.into_iter().map(|c| (c.key, c.n)).collect(),
        steps_last_24h: steps.into_iter().map(|c| (c.key, c.n)).collect(),
    }))
}
