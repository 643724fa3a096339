//! Automation: triggers (`triggers.rs`), flows and their executions (`flows.rs`), bot
//! control per session (`bot.rs`) and the tenant's automation settings. The decisions and
//! the flow interpreter are pure code in `wagate_actors::automation`, run by the
//! `TriggerActor`; this module gives it its port on Postgres (`store.rs`).

pub mod bot;
pub mod flows;
pub mod store;
pub mod triggers;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, OnceLock};

use actix_web::{HttpResponse, get, put, web};
use diesel::prelude::*;
use diesel::sql_types;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;
use wagate_actors::messaging::Content;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::http::json::ValidJson;
use crate::http::openapi::CommonErrors;
use crate::sessions::store::SessionRow;

/// The data of `flow.execution`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FlowExecutionEvent {
    pub execution_id: Uuid,
    pub flow_id: Option<Uuid>,
    /// `started`, `step`, `waiting`, `finished` or `failed`.
    pub phase: String,
    /// The execution's status after these steps.
    pub status: String,
    pub chat: Option<String>,
    /// The steps this event reports: `[{"seq", "step_id", "type", "outcome", "error"}]`.
    #[schema(value_type = Vec<Object>)]
    pub steps: Vec<Value>,
    pub error: Option<String>,
    /// Messages the steps queued.
    pub message_ids: Vec<Uuid>,
}

/// What the TriggerActor's handle needs to be woken from a handler.
pub struct AutomationHandle {
    pub actor: actix::Addr<wagate_actors::automation::TriggerActor>,
    /// Given the handlers' state once it exists (agents' answers and media go through it).
    pub app: Arc<OnceLock<std::sync::Weak<AppState>>>,
}

/// Wakes the TriggerActor (an execution was started): it looks now, not at its next poll.
pub fn kick(state: &AppState) {
    state
        .automation
        .actor
        .do_send(wagate_actors::automation::Kick);
}

pub fn vars_map(v: &Value) -> BTreeMap<String, Value> {
    v.as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// A session of the tenant, or a 404 (another tenant's included).
pub async fn session_of(state: &AppState, tenant: Uuid, id: Uuid) -> Result<SessionRow, ApiError> {
    let mut conn = state.db.get().await?;
    let (row, _) = crate::sessions::store::get_session(&mut conn, id)
        .await?
        .filter(|(s, _)| s.tenant_id == tenant)
        .ok_or(ApiError::NotFound("session"))?;
    Ok(row)
}

/// What conditions and variables read of a chat.
pub struct ChatFacts {
    pub contact_name: Option<String>,
    pub labels: Vec<String>,
    pub first_message: bool,
    pub bot_paused: bool,
    pub cooling: HashSet<Uuid>,
}

#[derive(QueryableByName)]
struct ChatFactsRow {
    #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
    contact_name: Option<String>,
    #[diesel(sql_type = sql_types::Array<sql_types::Text>)]
    labels: Vec<String>,
    #[diesel(sql_type = sql_types::Bool)]
    first_message: bool,
    #[diesel(sql_type = sql_types::Bool)]
    bot_paused: bool,
    #[diesel(sql_type = sql_types::Array<sql_types::Uuid>)]
    cooling: Vec<Uuid>,
}

pub async fn chat_facts(
    conn: &mut AsyncPgConnection,
    session: Uuid,
    chat: &str,
) -> QueryResult<ChatFacts> {
    let r: ChatFactsRow = diesel::sql_query(format!(
        "SELECT (SELECT contact_name FROM chats WHERE session_id = $1 AND chat = $2) AS contact_name, \
           COALESCE((SELECT labels FROM chats WHERE session_id = $1 AND chat = $2), '{{}}') AS labels, \
           NOT EXISTS (SELECT 1 FROM messages WHERE session_id = $1 AND chat = $2 AND direction = 'in') \
             AS first_message, \
           COALESCE((SELECT {} FROM session_bots b WHERE b.session_id = $1), false) AS bot_paused, \
           ARRAY(SELECT cd.trigger_id FROM trigger_cooldowns cd JOIN triggers tr ON tr.id = cd.trigger_id \
              WHERE cd.session_id = $1 AND cd.chat = $2 \
                AND cd.last_at > now() - make_interval(secs => tr.cooldown_secs)) AS cooling",
        store::BOT_PAUSED_SQL
    ))
    .bind::<sql_types::Uuid, _>(session)
    .bind::<sql_types::Text, _>(chat)
    .get_result(conn)
    .await?;
    Ok(ChatFacts {
        contact_name: r.contact_name,
        labels: r.labels,
        first_message: r.first_message,
        bot_paused: r.bot_paused,
        cooling: r.cooling.into_iter().collect(),
    })
}

/// Queues a text automation sends (a trigger run by hand), and wakes the sender.
pub async fn send_text(
    state: &AppState,
    session: &SessionRow,
    chat: &str,
    text: String,
    key: String,
) -> Result<Uuid, ApiError> {
    let content = Content::Text { text };
    let now = chrono::Utc::now();
    let row = crate::messages::store::MessageRow {
        id: Uuid::now_v7(),
        tenant_id: session.tenant_id,
        session_id: session.id,
        wa_id: crate::messages::new_wa_id(),
        direction: "out".into(),
        chat: chat.to_owned(),
        own_phone: session.phone.clone().unwrap_or_default(),
        kind: "text".into(),
        body: serde_json::to_value(&content).map_err(ApiError::internal)?,
        text: content.text().map(str::to_owned),
        quoted_id: None,
        status: "queued".into(),
        error: None,
        idempotency_key: Some(key),
        created_at: now,
        updated_at: now,
    };
    let mut conn = state.db.get().await?;
    let stored = crate::messages::store::insert_message_with_chat(&mut conn, &row, None, None)
        .await?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("the message was not stored")))?;
    drop(conn);
    let accepted = crate::messages::adapters::outgoing(&stored).ok();
    crate::messages::jobs::wake_sender(
        &state.supervisor,
        Some(&state.directory),
        stored.session_id,
        accepted,
    )
    .await;
    Ok(stored.id)
}

/// The tenant's automation settings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutomationSettingsBody {
    /// An IANA time zone (`America/Sao_Paulo`): schedules, time-of-day and weekday
    /// conditions read it. Default `UTC`.
    pub time_zone: String,
}

#[derive(QueryableByName)]
struct TzText {
    #[diesel(sql_type = sql_types::Text)]
    time_zone: String,
}

#[utoipa::path(tag = "automation", params(crate::http::TenantQuery), responses((status = 200, description = "The tenant's automation settings", body = AutomationSettingsBody), CommonErrors), security(("api_key" = [])))]
#[get("/automation/settings")]
pub async fn get_settings(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<crate::http::TenantQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = crate::ai::tenant_of(&state, &caller, query.tenant_id).await?;
    let mut conn = state.db.get().await?;
    let tz: TzText = diesel::sql_query("SELECT time_zone FROM tenants WHERE id = $1")
        .bind::<sql_types::Uuid, _>(tenant)
        .get_result(&mut conn)
        .await
        .optional()?
        .ok_or(ApiError::NotFound("tenant"))?;
    Ok(HttpResponse::Ok().json(AutomationSettingsBody {
        time_zone: tz.time_zone,
    }))
}

#[utoipa::path(tag = "automation", params(crate::http::TenantQuery), request_body = AutomationSettingsBody, responses((status = 200, description = "The settings", body = AutomationSettingsBody), CommonErrors), security(("api_key" = [])))]
#[put("/automation/settings")]
pub async fn put_settings(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<crate::http::TenantQuery>,
    body: ValidJson<AutomationSettingsBody>,
) -> Result<HttpResponse, ApiError> {
    let tenant = crate::ai::tenant_of(&state, &caller, query.tenant_id).await?;
    let b = body.into_inner();
    let tz = wagate_actors::automation::conditions::time_zone(&b.time_zone).ok_or_else(|| {
        ApiError::validation("time_zone", "not an IANA time zone (e.g. Europe/Berlin)")
    })?;
    let mut conn = state.db.get().await?;
    diesel::sql_query("UPDATE tenants SET time_zone = $2, updated_at = now() WHERE id = $1")
        .bind::<sql_types::Uuid, _>(tenant)
        .bind::<sql_types::Text, _>(tz.name())
        .execute(&mut conn)
        .await?;
    // Schedules move to the new zone's times.
    let schedules: Vec<triggers::TriggerRow> = crate::schema::triggers::table
        .filter(crate::schema::triggers::tenant_id.eq(tenant))
        .filter(crate::schema::triggers::event.eq("schedule"))
        .filter(crate::schema::triggers::enabled.eq(true))
        .select(triggers::TriggerRow::as_select())
        .load(&mut conn)
        .await?;
    for t in schedules {
        let next = t.schedule.as_deref().and_then(|s| {
            wagate_actors::automation::schedule::next_after(s, tz, chrono::Utc::now())
        });
        diesel::update(crate::schema::triggers::table.find(t.id))
            .set(crate::schema::triggers::next_fire_at.eq(next))
            .execute(&mut conn)
            .await?;
    }
    Ok(HttpResponse::Ok().json(AutomationSettingsBody {
        time_zone: tz.name().to_owned(),
    }))
}

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    // Literal paths before their `{id}` siblings.
    cfg.service(triggers::test_triggers)
        .service(triggers::trigger_stats)
        .service(triggers::bulk_triggers)
        .service(triggers::create_trigger)
        .service(triggers::list_triggers)
        .service(triggers::get_trigger)
        .service(triggers::update_trigger)
        .service(triggers::delete_trigger)
        .service(triggers::toggle_trigger)
        .service(triggers::duplicate_trigger)
        .service(triggers::execute_trigger)
        .service(flows::flow_stats)
        .service(flows::create_flow)
        .service(flows::list_flows)
        .service(flows::get_flow)
        .service(flows::update_flow)
        .service(flows::delete_flow)
        .service(flows::toggle_flow)
        .service(flows::duplicate_flow)
        .service(flows::execute_flow)
        .service(flows::list_executions)
        .service(flows::get_execution)
        .service(flows::cancel_execution)
        .service(get_settings)
        .service(put_settings)
        .configure(bot::routes);
}

/// The TriggerActor's settings from `automation.*`.
pub fn actor_config(
    s: &crate::configuration::AutomationSettings,
) -> wagate_actors::automation::AutomationConfig {
    use std::time::Duration;
    wagate_actors::automation::AutomationConfig {
        poll_interval: Duration::from_millis(s.poll_interval_ms.max(10)),
        claim_lock: Duration::from_secs(s.claim_lock_secs.max(1)),
        batch: 200,
        max_executions_in_flight: s.max_executions_in_flight.max(1),
        max_sends_per_chat_per_minute: s.max_sends_per_chat_per_minute.max(1),
        clean_up_every: Duration::from_secs(600),
    }
}

/// Starts the TriggerActor on its own arbiter.
pub fn start(
    settings: &crate::configuration::Settings,
    db: &crate::db::DbPool,
    hub: &crate::events::EventHub,
    supervisor: &actix::Addr<wagate_actors::RootSupervisor>,
    directory: &Arc<wagate_actors::directory::SessionDirectory>,
) -> anyhow::Result<AutomationHandle> {
    let app = Arc::new(OnceLock::new());
    let http = crate::http::egress::client_builder(settings.allow_private_targets())
        .user_agent(concat!("wagate-flows/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()?;
    let store = Arc::new(store::PgAutomationStore {
        db: db.clone(),
        hub: hub.clone(),
        settings: Arc::new(settings.clone()),
        supervisor: supervisor.clone(),
        directory: directory.clone(),
        http,
        app: app.clone(),
    });
    let engine =
        wagate_actors::automation::AutomationEngine::new(actor_config(&settings.automation), store);
    let actor = actix::Supervisor::start_in_arbiter(&actix::Arbiter::new().handle(), move |_| {
        wagate_actors::automation::TriggerActor::new(engine)
    });
    Ok(AutomationHandle { actor, app })
}
