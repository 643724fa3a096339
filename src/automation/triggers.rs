//! Triggers (initial triggers and automation rules are one resource): CRUD, toggle,
//! duplicate, execute, bulk, stats, and the dry run `POST /triggers/test`.

use std::collections::HashSet;

use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wagate_actors::automation::conditions::{ConditionSpec, Facts, compile_all};
use wagate_actors::automation::flow::{
    Action, BUILTIN_VARIABLES, ExecState, Flow, Interpreter, Outbound, Resume, render,
    template_variables,
};
use wagate_actors::automation::triggers::{
    EventFacts, TRIGGER_EVENTS, TriggerAction, TriggerSet, TriggerSpec, evaluate,
};

use super::store::{start_execution, start_variables};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::http::TenantQuery;
use crate::http::json::ValidJson;
use crate::http::openapi::CommonErrors;
use crate::http::pagination::{ListQuery, Page};
use crate::schema::triggers;

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = triggers, treat_none_as_null = true)]
pub struct TriggerRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub session_id: Option<Uuid>,
    pub name: String,
    pub event: String,
    pub conditions: Value,
    pub flow_id: Option<Uuid>,
    pub reply_text: Option<String>,
    pub priority: i32,
    pub cooldown_secs: i32,
    pub continue_after: bool,
    pub schedule: Option<String>,
    pub chat: Option<String>,
    pub enabled: bool,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub fired: i64,
    pub last_fired_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TriggerRow {
    pub fn spec(&self) -> Option<TriggerSpec> {
        let action = match (&self.flow_id, &self.reply_text) {
            (Some(f), _) => TriggerAction::Flow(*f),
            (None, Some(t)) => TriggerAction::Reply(t.clone()),
            (None, None) => return None,
        };
        Some(TriggerSpec {
            id: self.id,
            name: self.name.clone(),
            session_id: self.session_id,
            event: self.event.clone(),
            conditions: serde_json::from_value(self.conditions.clone()).ok()?,
            action,
            priority: self.priority,
            cooldown_secs: self.cooldown_secs,
            continue_after: self.continue_after,
        })
    }
}

/// A tenant's enabled triggers that listen to events (schedules fire on their own).
pub async fn enabled_triggers(
    conn: &mut AsyncPgConnection,
    tenant: Uuid,
) -> QueryResult<Vec<TriggerSpec>> {
    let rows: Vec<TriggerRow> = triggers::table
        .filter(triggers::tenant_id.eq(tenant))
        .filter(triggers::enabled.eq(true))
        .filter(triggers::event.ne("schedule"))
        .order(triggers::id.asc())
        .select(TriggerRow::as_select())
        .load(conn)
        .await?;
    Ok(rows.iter().filter_map(TriggerRow::spec).collect())
}

/// A schedule trigger that is due, with what firing it needs.
#[derive(QueryableByName)]
pub struct ScheduleRow {
    #[diesel(sql_type = sql_types::Uuid)]
    pub id: Uuid,
    #[diesel(sql_type = sql_types::Uuid)]
    pub tenant_id: Uuid,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Uuid>)]
    pub session_id: Option<Uuid>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    pub chat: Option<String>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Uuid>)]
    pub flow_id: Option<Uuid>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    pub reply_text: Option<String>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    pub schedule: Option<String>,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Timestamptz>)]
    pub next_fire_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = sql_types::Text)]
    pub time_zone: String,
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    pub session_name: Option<String>,
    #[diesel(sql_type = sql_types::Bool)]
    pub bot_paused: bool,
}

/// A trigger as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Trigger {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// Only this session's events; `null`: every session of the tenant.
    pub session_id: Option<Uuid>,
    pub name: String,
    /// `message.received`, `chat.first_message`, `message.status`, `session.connected`,
    /// `session.disconnected` or `schedule`.
    pub event: String,
    #[schema(value_type = Vec<Object>)]
    pub conditions: Value,
    /// The flow it starts; or `reply_text`, the text it answers with.
    pub flow_id: Option<Uuid>,
    pub reply_text: Option<String>,
    /// Higher first; the first match wins unless it says `continue`.
    pub priority: i32,
    /// It fires at most once per chat in this many seconds.
    pub cooldown_secs: i32,
    #[serde(rename = "continue")]
    pub continue_after: bool,
    /// A cron expression in the tenant's time zone (`schedule` triggers).
    pub schedule: Option<String>,
    /// Where a schedule's reply or flow goes.
    pub chat: Option<String>,
    pub enabled: bool,
    pub next_fire_at: Option<DateTime<Utc>>,
    /// How many times it fired.
    pub fired: i64,
    pub last_fired_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&TriggerRow> for Trigger {
    fn from(r: &TriggerRow) -> Trigger {
        Trigger {
            id: r.id,
            tenant_id: r.tenant_id,
            session_id: r.session_id,
            name: r.name.clone(),
            event: r.event.clone(),
            conditions: r.conditions.clone(),
            flow_id: r.flow_id,
            reply_text: r.reply_text.clone(),
            priority: r.priority,
            cooldown_secs: r.cooldown_secs,
            continue_after: r.continue_after,
            schedule: r.schedule.clone(),
            chat: r.chat.clone(),
            enabled: r.enabled,
            next_fire_at: r.next_fire_at,
            fired: r.fired,
            last_fired_at: r.last_fired_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// `POST /triggers`; `PATCH /triggers/{id}` takes any of its fields.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerBody {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "crate::ai::present")]
    #[schema(value_type = Option<Uuid>)]
    pub session_id: Option<Option<Uuid>>,
    pub event: Option<String>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub conditions: Option<Value>,
    #[serde(default, deserialize_with = "crate::ai::present")]
    #[schema(value_type = Option<Uuid>)]
    pub flow_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "crate::ai::present")]
    #[schema(value_type = Option<String>)]
    pub reply_text: Option<Option<String>>,
    pub priority: Option<i32>,
    pub cooldown_secs: Option<i32>,
    #[serde(rename = "continue")]
    pub continue_after: Option<bool>,
    #[serde(default, deserialize_with = "crate::ai::present")]
    #[schema(value_type = Option<String>)]
    pub schedule: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::ai::present")]
    #[schema(value_type = Option<String>)]
    pub chat: Option<Option<String>>,
    pub enabled: Option<bool>,
    /// The admin key names the tenant.
    pub tenant_id: Option<Uuid>,
}

/// Bumps the tenant's trigger version: every node's compiled set is stale.
pub async fn bump_version(conn: &mut AsyncPgConnection, tenant: Uuid) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO automation_versions (tenant_id, version) VALUES ($1, 1) \
         ON CONFLICT (tenant_id) DO UPDATE SET version = automation_versions.version + 1",
    )
    .bind::<sql_types::Uuid, _>(tenant)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(QueryableByName)]
struct TzRow {
    #[diesel(sql_type = sql_types::Text)]
    time_zone: String,
}

pub async fn tenant_tz(conn: &mut AsyncPgConnection, tenant: Uuid) -> QueryResult<chrono_tz::Tz> {
    let tz: Option<TzRow> = diesel::sql_query("SELECT time_zone FROM tenants WHERE id = $1")
        .bind::<sql_types::Uuid, _>(tenant)
        .get_result(conn)
        .await
        .optional()?;
    Ok(tz
        .and_then(|t| t.time_zone.parse().ok())
        .unwrap_or(chrono_tz::UTC))
}

fn conditions_of(v: &Value) -> Result<Vec<ConditionSpec>, ApiError> {
    let specs: Vec<ConditionSpec> = serde_json::from_value(v.clone()).map_err(|e| {
        ApiError::validation(
            "conditions",
            format!("a list of {{\"field\", \"op\", \"value\", \"case_sensitive\"?}}: {e}"),
        )
    })?;
    if specs.len() > 20 {
        return Err(ApiError::validation("conditions", "at most 20 conditions"));
    }
    compile_all(&specs, false)
        .map_err(|(i, e)| ApiError::validation(format!("conditions[{i}].{}", e.part), e.message))?;
    Ok(specs)
}

/// Checks a trigger as it would be stored, and sets its next schedule time.
async fn check(state: &AppState, row: &mut TriggerRow) -> Result<(), ApiError> {
    let name = row.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::validation("name", "must be 1 to 100 characters"));
    }
    row.name = name.to_owned();
    if !TRIGGER_EVENTS.contains(&row.event.as_str()) {
        return Err(ApiError::validation(
            "event",
            format!("unknown event; known: {}", TRIGGER_EVENTS.join(", ")),
        ));
    }
    conditions_of(&row.conditions)?;
    if !(-1000..=1000).contains(&row.priority) {
        return Err(ApiError::validation(
            "priority",
            "must be from -1000 to 1000",
        ));
    }
    if !(0..=30 * 86_400).contains(&row.cooldown_secs) {
        return Err(ApiError::validation(
            "cooldown_secs",
            "must be from 0 to 2592000 (30 days)",
        ));
    }
    match (&row.flow_id, &row.reply_text) {
        (Some(_), Some(_)) => {
            return Err(ApiError::validation(
                "reply_text",
                "give flow_id or reply_text, not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::validation(
                "flow_id",
                "give flow_id (a flow to start) or reply_text (a text to answer with)",
            ));
        }
        (None, Some(t)) => {
            if t.trim().is_empty() || t.chars().count() > 4096 {
                return Err(ApiError::validation(
                    "reply_text",
                    "must be 1 to 4096 characters",
                ));
            }
            let used = template_variables(t).map_err(|e| {
                ApiError::validation("reply_text", format!("the template does not parse: {e}"))
            })?;
            if let Some(v) = used
                .iter()
                .find(|v| !BUILTIN_VARIABLES.contains(&v.as_str()))
            {
                return Err(ApiError::validation(
                    "reply_text",
                    format!(
                        "unknown variable {v:?}; known: {}",
                        BUILTIN_VARIABLES.join(", ")
                    ),
                ));
            }
        }
        (Some(flow), None) => {
            let mut conn = state.db.get().await?;
            let owner: Option<Uuid> = crate::schema::flows::table
                .find(flow)
                .select(crate::schema::flows::tenant_id)
                .first(&mut conn)
                .await
                .optional()?;
            if owner != Some(row.tenant_id) {
                return Err(ApiError::validation("flow_id", "no such flow"));
            }
        }
    }
    if let Some(session) = row.session_id {
        let mut conn = state.db.get().await?;
        let owner: Option<Uuid> = crate::schema::sessions::table
            .find(session)
            .select(crate::schema::sessions::tenant_id)
            .first(&mut conn)
            .await
            .optional()?;
        if owner != Some(row.tenant_id) {
            return Err(ApiError::validation("session_id", "no such session"));
        }
    }
    if let Some(chat) = &row.chat {
        let parsed = crate::messages::parse_chat(chat, "chat")?;
        row.chat = Some(wagate_actors::messaging::chat_key(&parsed));
    }
    if row.event == "schedule" {
        let Some(expr) = row.schedule.as_deref() else {
            return Err(ApiError::validation(
                "schedule",
                "a schedule trigger needs a cron expression (e.g. \"0 9 * * 1-5\")",
            ));
        };
        wagate_actors::automation::schedule::parse(expr)
            .map_err(|e| ApiError::validation("schedule", e))?;
        if row.session_id.is_none() || row.chat.is_none() {
            return Err(ApiError::validation(
                "chat",
                "a schedule trigger needs session_id and chat: where it sends",
            ));
        }
        let mut conn = state.db.get().await?;
        let tz = tenant_tz(&mut conn, row.tenant_id).await?;
        row.next_fire_at = if row.enabled {
            wagate_actors::automation::schedule::next_after(expr, tz, Utc::now())
        } else {
            None
        };
    } else {
        if row.schedule.is_some() {
            return Err(ApiError::validation(
                "schedule",
                "only schedule triggers take a schedule",
            ));
        }
        row.next_fire_at = None;
    }
    Ok(())
}

async fn store_row(state: &AppState, row: &TriggerRow, new: bool) -> Result<TriggerRow, ApiError> {
    let row = row.clone();
    let max = i64::from(state.settings.automation.max_triggers_per_tenant);
    let mut conn = state.db.get().await?;
    let saved = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            let saved: TriggerRow = if new {
                let count: i64 = triggers::table
                    .filter(triggers::tenant_id.eq(row.tenant_id))
                    .count()
                    .get_result(conn)
                    .await?;
                if count >= max {
                    return Err(ApiError::Conflict {
                        code: ErrorCode::QuotaExceeded,
                        message: format!("a tenant may have at most {max} triggers"),
                    });
                }
                diesel::insert_into(triggers::table)
                    .values(&row)
                    .returning(TriggerRow::as_returning())
                    .get_result(conn)
                    .await?
            } else {
                diesel::update(triggers::table.find(row.id))
                    .set(&row)
                    .returning(TriggerRow::as_returning())
                    .get_result(conn)
                    .await?
            };
            bump_version(conn, row.tenant_id).await?;
            Ok(saved)
        })
        .await?;
    Ok(saved)
}

fn apply(row: &mut TriggerRow, b: TriggerBody) {
    if let Some(v) = b.name {
        row.name = v;
    }
    if let Some(v) = b.session_id {
        row.session_id = v;
    }
    if let Some(v) = b.event {
        row.event = v;
    }
    if let Some(v) = b.conditions {
        row.conditions = v;
    }
    if let Some(v) = b.flow_id {
        row.flow_id = v;
        if v.is_some() && b.reply_text.is_none() {
            row.reply_text = None;
        }
    }
    if let Some(v) = b.reply_text {
        row.reply_text = v;
        if row.reply_text.is_some() && b.flow_id.is_none() {
            row.flow_id = None;
        }
    }
    if let Some(v) = b.priority {
        row.priority = v;
    }
    if let Some(v) = b.cooldown_secs {
        row.cooldown_secs = v;
    }
    if let Some(v) = b.continue_after {
        row.continue_after = v;
    }
    if let Some(v) = b.schedule {
        row.schedule = v;
    }
    if let Some(v) = b.chat {
        row.chat = v;
    }
    if let Some(v) = b.enabled {
        row.enabled = v;
    }
    row.updated_at = Utc::now();
}

#[utoipa::path(tag = "automation", request_body = TriggerBody, responses((status = 201, description = "Created", body = Trigger), CommonErrors), security(("api_key" = [])))]
#[post("/triggers")]
pub async fn create_trigger(
    caller: Caller,
    state: web::Data<AppState>,
    body: ValidJson<TriggerBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let tenant = crate::ai::tenant_of(&state, &caller, b.tenant_id).await?;
    if b.name.is_none() {
        return Err(ApiError::validation("name", "is required"));
    }
    if b.event.is_none() {
        return Err(ApiError::validation(
            "event",
            format!("is required: one of {}", TRIGGER_EVENTS.join(", ")),
        ));
    }
    let now = Utc::now();
    let mut row = TriggerRow {
        id: Uuid::now_v7(),
        tenant_id: tenant,
        session_id: None,
        name: String::new(),
        event: String::new(),
        conditions: json!([]),
        flow_id: None,
        reply_text: None,
        priority: 0,
        cooldown_secs: 0,
        continue_after: false,
        schedule: None,
        chat: None,
        enabled: true,
        next_fire_at: None,
        fired: 0,
        last_fired_at: None,
        created_at: now,
        updated_at: now,
    };
    apply(&mut row, b);
    check(&state, &mut row).await?;
    let saved = store_row(&state, &row, true).await?;
    Ok(HttpResponse::Created().json(Trigger::from(&saved)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TriggerListQuery {
    pub limit: Option<String>,
    pub cursor: Option<String>,
    pub session_id: Option<Uuid>,
    pub event: Option<String>,
    pub enabled: Option<bool>,
}

#[utoipa::path(tag = "automation", params(TriggerListQuery), responses((status = 200, description = "The tenant's triggers, oldest first", body = Page<Trigger>), CommonErrors), security(("api_key" = [])))]
#[get("/triggers")]
pub async fn list_triggers(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<TriggerListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let (limit, after) = ListQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .parse()?;
    let mut sql = triggers::table
        .order(triggers::id.asc())
        .limit(i64::from(limit) + 1)
        .select(TriggerRow::as_select())
        .into_boxed();
    if let Caller::Tenant { tenant_id, .. } = caller {
        sql = sql.filter(triggers::tenant_id.eq(tenant_id));
    }
    if let Some(after) = after {
        sql = sql.filter(triggers::id.gt(after));
    }
    if let Some(s) = q.session_id {
        sql = sql.filter(triggers::session_id.eq(s));
    }
    if let Some(e) = q.event {
        if !TRIGGER_EVENTS.contains(&e.as_str()) {
            return Err(ApiError::validation(
                "event",
                format!("unknown event; known: {}", TRIGGER_EVENTS.join(", ")),
            ));
        }
        sql = sql.filter(triggers::event.eq(e));
    }
    if let Some(e) = q.enabled {
        sql = sql.filter(triggers::enabled.eq(e));
    }
    let mut conn = state.db.get().await?;
    let rows: Vec<TriggerRow> = sql.load(&mut conn).await?;
    let page = Page::from_overfetched(rows, limit, |t| t.id.to_string());
    Ok(HttpResponse::Ok().json(page.map(|t| Trigger::from(t))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TriggerPath {
    pub trigger_id: Uuid,
}

pub async fn load_trigger(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<TriggerRow, ApiError> {
    let mut conn = state.db.get().await?;
    let row: TriggerRow = triggers::table
        .find(id)
        .select(TriggerRow::as_select())
        .first(&mut conn)
        .await
        .optional()?
        .ok_or(ApiError::NotFound("trigger"))?;
    caller.require_tenant(row.tenant_id, "trigger")?;
    Ok(row)
}

#[utoipa::path(tag = "automation", params(TriggerPath), responses((status = 200, description = "The trigger", body = Trigger), CommonErrors), security(("api_key" = [])))]
#[get("/triggers/{trigger_id}")]
pub async fn get_trigger(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = crate::http::id_or_refusal(&req, &path, "trigger")?;
    let row = load_trigger(&state, &caller, id).await?;
    Ok(HttpResponse::Ok().json(Trigger::from(&row)))
}

#[utoipa::path(tag = "automation", params(TriggerPath), request_body = TriggerBody, responses((status = 200, description = "The trigger", body = Trigger), CommonErrors), security(("api_key" = [])))]
#[patch("/triggers/{trigger_id}")]
pub async fn update_trigger(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
    body: Result<ValidJson<TriggerBody>, ApiError>,
) -> Result<HttpResponse, ApiError> {
    let id = crate::http::id_or_refusal(&req, &path, "trigger")?;
    let b = body?.into_inner();
    let mut row = load_trigger(&state, &caller, id).await?;
    if b.tenant_id.is_some_and(|t| t != row.tenant_id) {
        return Err(ApiError::validation(
            "tenant_id",
            "a trigger stays with its tenant",
        ));
    }
    apply(&mut row, b);
    check(&state, &mut row).await?;
    let saved = store_row(&state, &row, false).await?;
    Ok(HttpResponse::Ok().json(Trigger::from(&saved)))
}

#[utoipa::path(tag = "automation", params(TriggerPath), responses((status = 204, description = "Deleted"), CommonErrors), security(("api_key" = [])))]
#[delete("/triggers/{trigger_id}")]
pub async fn delete_trigger(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = crate::http::id_or_refusal(&req, &path, "trigger")?;
    let row = load_trigger(&state, &caller, id).await?;
    let mut conn = state.db.get().await?;
    conn.transaction::<_, ApiError, _>(async move |conn| {
        diesel::delete(triggers::table.find(row.id))
            .execute(conn)
            .await?;
        bump_version(conn, row.tenant_id).await?;
        Ok(())
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(tag = "automation", params(TriggerPath), responses((status = 200, description = "The trigger, enabled or disabled", body = Trigger), CommonErrors), security(("api_key" = [])))]
#[patch("/triggers/{trigger_id}/toggle")]
pub async fn toggle_trigger(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<TriggerPath>,
) -> Result<HttpResponse, ApiError> {
    let mut row = load_trigger(&state, &caller, path.trigger_id).await?;
    row.enabled = !row.enabled;
    row.updated_at = Utc::now();
    check(&state, &mut row).await?;
    let saved = store_row(&state, &row, false).await?;
    Ok(HttpResponse::Ok().json(Trigger::from(&saved)))
}

#[utoipa::path(tag = "automation", params(TriggerPath), responses((status = 201, description = "The copy (disabled)", body = Trigger), CommonErrors), security(("api_key" = [])))]
#[post("/triggers/{trigger_id}/duplicate")]
pub async fn duplicate_trigger(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<TriggerPath>,
) -> Result<HttpResponse, ApiError> {
    let mut row = load_trigger(&state, &caller, path.trigger_id).await?;
    let now = Utc::now();
    row.id = Uuid::now_v7();
    row.name = format!("{} (copy)", row.name).chars().take(100).collect();
    // A copy starts disabled: two identical triggers would both answer.
    row.enabled = false;
    row.fired = 0;
    row.last_fired_at = None;
    row.created_at = now;
    row.updated_at = now;
    check(&state, &mut row).await?;
    let saved = store_row(&state, &row, true).await?;
    Ok(HttpResponse::Created().json(Trigger::from(&saved)))
}

/// `POST /triggers/{id}/execute`: run a trigger's action now for a chat, conditions aside.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteTrigger {
    /// The trigger's session, or this one.
    pub session_id: Option<Uuid>,
    pub chat: String,
    /// `{{text}}` for the action.
    pub text: Option<String>,
}

/// What running a trigger did.
#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerRun {
    /// The execution its flow started.
    pub execution_id: Option<Uuid>,
    /// The message its reply queued.
    pub message_id: Option<Uuid>,
}

#[utoipa::path(tag = "automation", params(TriggerPath), request_body = ExecuteTrigger, responses((status = 202, description = "Started", body = TriggerRun), CommonErrors), security(("api_key" = [])))]
#[post("/triggers/{trigger_id}/execute")]
pub async fn execute_trigger(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<TriggerPath>,
    body: ValidJson<ExecuteTrigger>,
) -> Result<HttpResponse, ApiError> {
    let row = load_trigger(&state, &caller, path.trigger_id).await?;
    let b = body.into_inner();
    let session_id = b.session_id.or(row.session_id).ok_or_else(|| {
        ApiError::validation("session_id", "the trigger has no session: name one")
    })?;
    let session = super::session_of(&state, row.tenant_id, session_id).await?;
    let chat = wagate_actors::messaging::chat_key(&crate::messages::parse_chat(&b.chat, "chat")?);
    let vars = start_variables(
        Some(&chat),
        None,
        b.text.as_deref(),
        Some(&session.name),
        &Value::Null,
        None,
    );
    match (&row.flow_id, &row.reply_text) {
        (Some(flow), _) => {
            let id = Uuid::now_v7();
            let mut conn = state.db.get().await?;
            let started = start_execution(
                &mut conn,
                id,
                row.tenant_id,
                *flow,
                Some(row.id),
                "api",
                None,
                Some(session.id),
                Some(&chat),
                vars,
            )
            .await?;
            drop(conn);
            if started.is_none() {
                return Err(ApiError::Conflict {
                    code: ErrorCode::FlowDisabled,
                    message: "the trigger's flow is disabled".into(),
                });
            }
            super::kick(&state);
            Ok(HttpResponse::Accepted().json(TriggerRun {
                execution_id: Some(id),
                message_id: None,
            }))
        }
        (None, Some(t)) => {
            let vars = super::vars_map(&vars);
            let text = render(t, &vars).map_err(|e| ApiError::validation("reply_text", e))?;
            let id = super::send_text(
                &state,
                &session,
                &chat,
                text,
                format!(
                    "{}trg-run:{}",
                    super::store::AUTOMATION_KEY_PREFIX,
                    Uuid::now_v7()
                ),
            )
            .await?;
            Ok(HttpResponse::Accepted().json(TriggerRun {
                execution_id: None,
                message_id: Some(id),
            }))
        }
        (None, None) => Err(ApiError::internal(anyhow::anyhow!(
            "trigger {} has no action",
            row.id
        ))),
    }
}

/// `POST /triggers/bulk`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkTriggers {
    pub ids: Vec<Uuid>,
    /// `enable`, `disable` or `delete`.
    pub action: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkResult {
    /// How many of the given triggers (the caller's) it changed.
    pub affected: usize,
}

#[utoipa::path(tag = "automation", request_body = BulkTriggers, responses((status = 200, description = "Done", body = BulkResult), CommonErrors), security(("api_key" = [])))]
#[post("/triggers/bulk")]
pub async fn bulk_triggers(
    caller: Caller,
    state: web::Data<AppState>,
    body: ValidJson<BulkTriggers>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    if b.ids.is_empty() || b.ids.len() > 500 {
        return Err(ApiError::validation("ids", "1 to 500 trigger ids"));
    }
    if !["enable", "disable", "delete"].contains(&b.action.as_str()) {
        return Err(ApiError::validation("action", "enable, disable or delete"));
    }
    let tenant = caller.tenant_id();
    let mut conn = state.db.get().await?;
    let affected = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            let mut rows: Vec<TriggerRow> = triggers::table
                .filter(triggers::id.eq_any(&b.ids))
                .select(TriggerRow::as_select())
                .load(conn)
                .await?;
            rows.retain(|r| tenant.is_none_or(|t| t == r.tenant_id));
            let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
            match b.action.as_str() {
                "delete" => {
                    diesel::delete(triggers::table.filter(triggers::id.eq_any(&ids)))
                        .execute(conn)
                        .await?;
                }
                action => {
                    let on = action == "enable";
                    diesel::update(triggers::table.filter(triggers::id.eq_any(&ids)))
                        .set((
                            triggers::enabled.eq(on),
                            triggers::updated_at.eq(Utc::now()),
                        ))
                        .execute(conn)
                        .await?;
                    // Schedules get their next time (or lose it).
                    for r in rows.iter().filter(|r| r.event == "schedule") {
                        let tz = tenant_tz(conn, r.tenant_id).await?;
                        let next = match (on, r.schedule.as_deref()) {
                            (true, Some(s)) => {
                                wagate_actors::automation::schedule::next_after(s, tz, Utc::now())
                            }
                            _ => None,
                        };
                        diesel::update(triggers::table.find(r.id))
                            .set(triggers::next_fire_at.eq(next))
                            .execute(conn)
                            .await?;
                    }
                }
            }
            let tenants: HashSet<Uuid> = rows.iter().map(|r| r.tenant_id).collect();
            for t in tenants {
                bump_version(conn, t).await?;
            }
            Ok(ids.len())
        })
        .await?;
    Ok(HttpResponse::Ok().json(BulkResult { affected }))
}

#[derive(Debug, Serialize, ToSchema, QueryableByName)]
pub struct TriggerStats {
    #[diesel(sql_type = sql_types::BigInt)]
    pub triggers: i64,
    #[diesel(sql_type = sql_types::BigInt)]
    pub enabled: i64,
    /// Times any trigger fired.
    #[diesel(sql_type = sql_types::BigInt)]
    pub fired: i64,
    /// Events looked at in the last 24 hours, by outcome.
    #[diesel(sql_type = sql_types::Jsonb)]
    #[schema(value_type = Object)]
    pub events_last_24h: Value,
}

#[utoipa::path(tag = "automation", params(TenantQuery), responses((status = 200, description = "The tenant's trigger figures", body = TriggerStats), CommonErrors), security(("api_key" = [])))]
#[get("/triggers/stats")]
pub async fn trigger_stats(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<TenantQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = crate::ai::tenant_of(&state, &caller, query.tenant_id).await?;
    let mut conn = state.db.get().await?;
    let stats: TriggerStats = diesel::sql_query(
        "SELECT (SELECT count(*) FROM triggers WHERE tenant_id = $1) AS triggers, \
           (SELECT count(*) FROM triggers WHERE tenant_id = $1 AND enabled) AS enabled, \
           (SELECT COALESCE(sum(fired), 0)::bigint FROM triggers WHERE tenant_id = $1) AS fired, \
           (SELECT COALESCE(jsonb_object_agg(outcome, n), '{}') FROM ( \
              SELECT outcome, count(*) AS n FROM automation_work \
              WHERE tenant_id = $1 AND done_at > now() - interval '1 day' GROUP BY outcome) o) \
             AS events_last_24h",
    )
    .bind::<sql_types::Uuid, _>(tenant)
    .get_result(&mut conn)
    .await?;
    Ok(HttpResponse::Ok().json(stats))
}

/// `POST /triggers/test`: a message as if a contact sent it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestTriggers {
    pub session_id: Uuid,
    pub chat: String,
    pub text: String,
    /// The message's type (default `text`).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// When it arrives (default now): for time-of-day and weekday conditions.
    pub at: Option<DateTime<Utc>>,
}

/// What a flow would send before its first wait, call or end.
#[derive(Debug, Serialize, ToSchema)]
pub struct WouldDo {
    pub trigger_id: Uuid,
    /// The texts it would send, in order.
    pub sends: Vec<String>,
    /// Where the dry run stopped, and why (a wait, an HTTP call, a model call, the end).
    pub stops_at: Option<String>,
}

/// The dry run's answer: every trigger listening, in order, with its verdict.
#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerTest {
    #[schema(value_type = Vec<Object>)]
    pub triggers: Value,
    /// Whether a trigger would handle the message (then the agent does not answer it).
    pub handled: bool,
    pub first_message: bool,
    pub bot_paused: bool,
    pub would: Vec<WouldDo>,
}

#[utoipa::path(tag = "automation", request_body = TestTriggers, responses((status = 200, description = "Which triggers would match and why; nothing is sent", body = TriggerTest), CommonErrors), security(("api_key" = [])))]
#[post("/triggers/test")]
pub async fn test_triggers(
    caller: Caller,
    state: web::Data<AppState>,
    body: ValidJson<TestTriggers>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let tenant = match &caller {
        Caller::Tenant { tenant_id, .. } => *tenant_id,
        Caller::Admin => {
            let mut conn = state.db.get().await?;
            crate::schema::sessions::table
                .find(b.session_id)
                .select(crate::schema::sessions::tenant_id)
                .first(&mut conn)
                .await
                .optional()?
                .ok_or(ApiError::NotFound("session"))?
        }
    };
    let session = super::session_of(&state, tenant, b.session_id).await?;
    let chat = wagate_actors::messaging::chat_key(&crate::messages::parse_chat(&b.chat, "chat")?);
    let mut conn = state.db.get().await?;
    let specs = enabled_triggers(&mut conn, tenant).await?;
    let (set, _) = TriggerSet::compile(0, specs);
    let tz = tenant_tz(&mut conn, tenant).await?;
    let facts = super::chat_facts(&mut conn, session.id, &chat).await?;
    drop(conn);
    let at = b.at.unwrap_or_else(Utc::now);
    let kind = b.kind.unwrap_or_else(|| "text".into());
    let ev = EventFacts {
        kind: "message.received",
        session_id: Some(session.id),
        first_message: facts.first_message,
        facts: Facts {
            text: Some(&b.text),
            from: Some(&chat),
            kind: Some(&kind),
            labels: &facts.labels,
            at,
            tz,
            vars: None,
            column: None,
            board: None,
        },
    };
    let verdicts = evaluate(&set, &ev, &facts.cooling);
    let handled = !facts.bot_paused && verdicts.iter().any(|v| v.fires);
    let mut would = Vec::new();
    if !facts.bot_paused {
        for v in verdicts.iter().filter(|v| v.fires) {
            let Some(t) = set.triggers.iter().find(|t| t.spec.id == v.trigger_id) else {
                continue;
            };
            let vars = super::vars_map(&start_variables(
                Some(&chat),
                facts.contact_name.as_deref(),
                Some(&b.text),
                Some(&session.name),
                &Value::Null,
                None,
            ));
            would.push(match &t.spec.action {
                TriggerAction::Reply(text) => WouldDo {
                    trigger_id: v.trigger_id,
                    sends: vec![
                        render(text, &vars).unwrap_or_else(|e| format!("(does not render: {e})")),
                    ],
                    stops_at: None,
                },
                TriggerAction::Flow(flow_id) => {
                    dry_run_flow(&state, v.trigger_id, *flow_id, vars, at, tz).await?
                }
            });
        }
    }
    Ok(HttpResponse::Ok().json(TriggerTest {
        triggers: serde_json::to_value(&verdicts).map_err(ApiError::internal)?,
        handled,
        first_message: facts.first_message,
        bot_paused: facts.bot_paused,
        would,
    }))
}

/// Runs a flow's steps in memory up to its first wait, call or end: what it would send.
async fn dry_run_flow(
    state: &AppState,
    trigger_id: Uuid,
    flow_id: Uuid,
    vars: std::collections::BTreeMap<String, Value>,
    at: DateTime<Utc>,
    tz: chrono_tz::Tz,
) -> Result<WouldDo, ApiError> {
    let mut conn = state.db.get().await?;
    let row = super::flows::get_flow_row(&mut conn, flow_id)
        .await?
        .ok_or(ApiError::NotFound("flow"))?;
    drop(conn);
    let defaults = super::vars_map(&row.variables);
    let flow = Flow::parse(&row.steps, &defaults)
        .map_err(|e| ApiError::validation("steps", e.describe()))?;
    let interp = Interpreter { flow: &flow };
    let mut st = ExecState {
        vars: defaults.into_iter().chain(vars).collect(),
        ..ExecState::default()
    };
    let text = st
        .vars
        .get("text")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut sends = Vec::new();
    let stops_at = loop {
        let facts = Facts {
            text: text.as_deref(),
            from: None,
            kind: None,
            labels: &[],
            at,
            tz,
            vars: None,
            column: None,
            board: None,
        };
        match interp.next(&mut st, Resume::Fresh, facts) {
            Action::Ran { .. } => {}
            Action::Send { message, .. } => {
                sends.push(match message {
                    Outbound::Text { text } => text,
                    Outbound::QuickReply { shortcut, .. } => format!("[quick reply {shortcut}]"),
                    Outbound::Media {
                        media_type,
                        url,
                        caption,
                        ..
                    } => format!("[{media_type} {url}] {}", caption.unwrap_or_default()),
                });
                interp.complete(&mut st, None);
            }
            Action::AiReply { step_id, .. } => {
                break Some(format!("step {step_id:?}: the agent would answer"));
            }
            Action::Http { step_id, call } => {
                break Some(format!(
                    "step {step_id:?}: would call {} {}",
                    call.method, call.url
                ));
            }
            Action::Bot { step_id, action } => {
                break Some(format!(
                    "step {step_id:?}: the bot would {}",
                    serde_json::to_value(action)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                ));
            }
            // Cards and notifications are not sends: the dry run goes past them.
            Action::Platform { .. } => interp.complete(&mut st, None),
            Action::Suspend { step_id, .. } => break Some(format!("step {step_id:?}: would wait")),
            Action::Finished => break None,
            Action::Failed { step_id, error } => {
                break Some(format!(
                    "step {:?}: would fail: {error}",
                    step_id.unwrap_or_default()
                ));
            }
        }
    };
    Ok(WouldDo {
        trigger_id,
        sends,
        stops_at,
    })
}
