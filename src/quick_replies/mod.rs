//! Quick replies: canned answers with `{{ variables }}`, sent by id or shortcut
//! (`POST /sessions/{id}/messages {"type": "quick_reply", …}`) by people, and by flows. Each
//! use is counted; search, popular, duplicate, toggle and stats help people find the right
//! one.
//!
//! Templates are minijinja (`{{ name }}`, filters like `{{ name | upper }}`), checked when
//! saved, rendered strictly: a variable neither given nor known (`phone`, `contact_name`) is a
//! 400 naming it, never an empty gap in a customer's message.

use std::collections::{BTreeMap, BTreeSet};

use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::http::json::ValidJson;
use crate::http::openapi::CommonErrors;
use crate::http::pagination::{Page, parse_limit};
use crate::schema::quick_replies;

/// Variables every reply may use without being given them.
pub const KNOWN_VARIABLES: &[&str] = &["phone", "contact_name"];

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = quick_replies)]
pub struct QuickReplyRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub shortcut: String,
    pub title: String,
    pub text: String,
    pub media_id: Option<Uuid>,
    pub enabled: bool,
    pub uses: i64,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A quick reply as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuickReplyOut {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub shortcut: String,
    pub title: String,
    pub text: String,
    pub media_id: Option<Uuid>,
    pub enabled: bool,
    /// The variables its text uses (besides `phone` and `contact_name`, known to every send).
    pub variables: Vec<String>,
    pub uses: i64,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&QuickReplyRow> for QuickReplyOut {
    fn from(r: &QuickReplyRow) -> QuickReplyOut {
        QuickReplyOut {
            id: r.id,
            tenant_id: r.tenant_id,
            shortcut: r.shortcut.clone(),
            title: r.title.clone(),
            text: r.text.clone(),
            media_id: r.media_id,
            enabled: r.enabled,
            variables: variables_of(&r.text)
                .unwrap_or_default()
                .into_iter()
                .filter(|v| !KNOWN_VARIABLES.contains(&v.as_str()))
                .collect(),
            uses: r.uses,
            last_used_at: r.last_used_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    // A template is small; a loop that never ends is cut off.
    env.set_fuel(Some(20_000));
    env
}

/// The variables a template reads; a template that does not parse is a 400 on `text`.
pub fn variables_of(text: &str) -> Result<BTreeSet<String>, ApiError> {
    let env = environment();
    let tmpl = env
        .template_from_str(text)
        .map_err(|e| ApiError::validation("text", format!("is not a valid template: {e}")))?;
    Ok(tmpl.undeclared_variables(false).into_iter().collect())
}

/// Renders `text` with `given` and the known variables; a variable neither given nor known is
/// a 400 on `variables.<name>`.
pub fn render(
    text: &str,
    given: &BTreeMap<String, Value>,
    known: &BTreeMap<String, Value>,
) -> Result<String, ApiError> {
    let wanted = variables_of(text)?;
    let mut context = known.clone();
    context.extend(given.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(missing) = wanted.iter().find(|v| !context.contains_key(*v)) {
        return Err(ApiError::validation(
            format!("variables.{missing}"),
            format!("the quick reply uses {{{{ {missing} }}}}: give it in variables"),
        ));
    }
    let rendered = environment().render_str(text, context).map_err(|e| {
        ApiError::validation("variables", format!("the quick reply did not render: {e}"))
    })?;
    if rendered.trim().is_empty() {
        return Err(ApiError::validation(
            "variables",
            "the quick reply rendered empty",
        ));
    }
    Ok(rendered)
}

fn check_shortcut(raw: &str) -> Result<String, ApiError> {
    let s = raw.trim().to_lowercase();
    let body = s.strip_prefix('/').unwrap_or("");
    let ok = (1..=32).contains(&body.len())
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(ApiError::validation(
            "shortcut",
            "must be / then 1 to 32 letters, digits, - or _ (e.g. /price)",
        ));
    }
    Ok(s)
}

fn check_text(text: &str) -> Result<(), ApiError> {
    if text.trim().is_empty() || text.chars().count() > 4096 {
        return Err(ApiError::validation("text", "must be 1 to 4096 characters"));
    }
    variables_of(text).map(|_| ())
}

fn taken() -> ApiError {
    ApiError::Conflict {
        code: ErrorCode::ShortcutTaken,
        message: "the tenant has a quick reply with this shortcut".into(),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateQuickReply {
    /// The admin key names the tenant.
    pub tenant_id: Option<Uuid>,
    /// `/price`.
    pub shortcut: String,
    pub title: String,
    /// With `{{ variables }}`.
    pub text: String,
    /// An upload (`POST /sessions/{id}/media`): sent as that media, the text its caption.
    pub media_id: Option<Uuid>,
}

async fn check_media(
    conn: &mut AsyncPgConnection,
    tenant: Uuid,
    media: Option<Uuid>,
) -> Result<(), ApiError> {
    let Some(id) = media else { return Ok(()) };
    let owner: Option<Uuid> = crate::schema::media::table
        .find(id)
        .select(crate::schema::media::tenant_id)
        .first(conn)
        .await
        .optional()?;
    if owner != Some(tenant) {
        return Err(ApiError::validation(
            "media_id",
            "is not an upload of this tenant",
        ));
    }
    Ok(())
}

#[utoipa::path(tag = "quick-replies", request_body = CreateQuickReply, responses((status = 201, description = "The quick reply", body = QuickReplyOut), CommonErrors), security(("api_key" = [])))]
#[post("/quick-replies")]
pub async fn create_quick_reply(
    caller: Caller,
    state: web::Data<AppState>,
    body: ValidJson<CreateQuickReply>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let shortcut = check_shortcut(&b.shortcut)?;
    let title = crate::crm::name("title", &b.title)?;
    check_text(&b.text)?;
    let tenant = crate::ai::tenant_of(&state, &caller, b.tenant_id).await?;
    let mut conn = state.db.get().await?;
    check_media(&mut conn, tenant, b.media_id).await?;
    let count: i64 = quick_replies::table
        .filter(quick_replies::tenant_id.eq(tenant))
        .count()
        .get_result(&mut conn)
        .await?;
    if count >= 2000 {
        return Err(ApiError::Conflict {
            code: ErrorCode::QuotaExceeded,
            message: "a tenant may have at most 2000 quick replies".into(),
        });
    }
    let now = Utc::now();
    let row = QuickReplyRow {
        id: Uuid::now_v7(),
        tenant_id: tenant,
        shortcut,
        title,
        text: b.text,
        media_id: b.media_id,
        enabled: true,
        uses: 0,
        last_used_at: None,
        created_at: now,
        updated_at: now,
    };
    diesel::insert_into(quick_replies::table)
        .values(&row)
        .execute(&mut conn)
        .await
        .map_err(|e| {
            if crate::db::is_unique_violation(&e) {
                taken()
            } else {
                e.into()
            }
        })?;
    Ok(HttpResponse::Created().json(QuickReplyOut::from(&row)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QuickReplyQuery {
    /// Words in the shortcut, title or text (case-insensitive).
    pub q: Option<String>,
    /// Only enabled (`true`) or disabled (`false`) ones.
    pub enabled: Option<bool>,
    /// 1 to 500 (default 50).
    #[param(value_type = Option<u32>)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The tenant's quick replies, by shortcut.
#[utoipa::path(tag = "quick-replies", params(QuickReplyQuery), responses((status = 200, description = "Quick replies, by shortcut", body = Page<QuickReplyOut>), CommonErrors), security(("api_key" = [])))]
#[get("/quick-replies")]
pub async fn list_quick_replies(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<QuickReplyQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = parse_limit(query.limit.as_deref())?;
    let mut q = quick_replies::table
        .order((quick_replies::shortcut.asc(), quick_replies::id.asc()))
        .limit(i64::from(limit) + 1)
        .select(QuickReplyRow::as_select())
        .into_boxed();
    if let Caller::Tenant { tenant_id, .. } = caller {
        q = q.filter(quick_replies::tenant_id.eq(tenant_id));
    }
    if let Some(words) = query.q.as_deref().map(str::trim).filter(|w| !w.is_empty()) {
        if words.chars().count() > 100 || words.contains('\0') {
            return Err(ApiError::validation("q", "must be at most 100 characters"));
        }
        let pattern = format!(
            "%{}%",
            words
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        q = q.filter(
            quick_replies::shortcut
                .ilike(pattern.clone())
                .or(quick_replies::title.ilike(pattern.clone()))
                .or(quick_replies::text.ilike(pattern)),
        );
    }
    if let Some(e) = query.enabled {
        q = q.filter(quick_replies::enabled.eq(e));
    }
    if let Some(after) = query.cursor.as_deref() {
        q = q.filter(quick_replies::shortcut.gt(after.to_owned()));
    }
    let mut conn = state.db.get().await?;
    let rows: Vec<QuickReplyRow> = q.load(&mut conn).await?;
    let page = Page::from_overfetched(rows, limit, |r| r.shortcut.clone());
    Ok(HttpResponse::Ok().json(page.map(|r| QuickReplyOut::from(r))))
}

/// The ten most used.
#[utoipa::path(tag = "quick-replies", responses((status = 200, description = "The most used quick replies", body = Vec<QuickReplyOut>), CommonErrors), security(("api_key" = [])))]
#[get("/quick-replies/popular")]
pub async fn popular(caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut q = quick_replies::table
        .filter(quick_replies::uses.gt(0))
        .order((quick_replies::uses.desc(), quick_replies::shortcut.asc()))
        .limit(10)
        .select(QuickReplyRow::as_select())
        .into_boxed();
    if let Caller::Tenant { tenant_id, .. } = caller {
        q = q.filter(quick_replies::tenant_id.eq(tenant_id));
    }
    let mut conn = state.db.get().await?;
    let rows: Vec<QuickReplyRow> = q.load(&mut conn).await?;
    Ok(HttpResponse::Ok().json(rows.iter().map(QuickReplyOut::from).collect::<Vec<_>>()))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QuickReplyStats {
    pub quick_replies: i64,
    pub enabled: i64,
    /// Sends of all of them.
    pub uses: i64,
    /// Never used.
    pub unused: i64,
}

#[derive(QueryableByName)]
struct StatsRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    total: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    enabled: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    uses: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    unused: i64,
}

#[utoipa::path(tag = "quick-replies", responses((status = 200, description = "Figures", body = QuickReplyStats), CommonErrors), security(("api_key" = [])))]
#[get("/quick-replies/stats")]
pub async fn stats(caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let tenant = caller.tenant_id();
    let mut conn = state.db.get().await?;
    let s: StatsRow = diesel::sql_query(
        "SELECT count(*) AS total, count(*) FILTER (WHERE enabled) AS enabled, \
                coalesce(sum(uses), 0)::bigint AS uses, count(*) FILTER (WHERE uses = 0) AS unused \
         FROM quick_replies WHERE $1::uuid IS NULL OR tenant_id = $1",
    )
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Uuid>, _>(tenant)
    .get_result(&mut conn)
    .await?;
    Ok(HttpResponse::Ok().json(QuickReplyStats {
        quick_replies: s.total,
        enabled: s.enabled,
        uses: s.uses,
        unused: s.unused,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct QuickReplyPath {
    pub quick_reply_id: Uuid,
}

async fn load(state: &AppState, caller: &Caller, id: Uuid) -> Result<QuickReplyRow, ApiError> {
    let mut conn = state.db.get().await?;
    let row = quick_replies::table
        .find(id)
        .select(QuickReplyRow::as_select())
        .first(&mut conn)
        .await
        .optional()?
        .ok_or(ApiError::NotFound("quick reply"))?;
    caller.require_tenant(row.tenant_id, "quick reply")?;
    Ok(row)
}

#[utoipa::path(tag = "quick-replies", params(QuickReplyPath), responses((status = 200, description = "The quick reply", body = QuickReplyOut), CommonErrors), security(("api_key" = [])))]
#[get("/quick-replies/{quick_reply_id}")]
pub async fn get_quick_reply(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<QuickReplyPath>,
) -> Result<HttpResponse, ApiError> {
    let row = load(&state, &caller, path.quick_reply_id).await?;
    Ok(HttpResponse::Ok().json(QuickReplyOut::from(&row)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateQuickReply {
    pub shortcut: Option<String>,
    pub title: Option<String>,
    pub text: Option<String>,
    /// `null` removes the media.
    #[serde(default, deserialize_with = "crate::ai::present")]
    #[schema(value_type = Option<Uuid>)]
    pub media_id: Option<Option<Uuid>>,
    pub enabled: Option<bool>,
}

async fn save(state: &AppState, row: &QuickReplyRow) -> Result<(), ApiError> {
    let mut conn = state.db.get().await?;
    diesel::update(quick_replies::table.find(row.id))
        .set((
            quick_replies::shortcut.eq(&row.shortcut),
            quick_replies::title.eq(&row.title),
            quick_replies::text.eq(&row.text),
            quick_replies::media_id.eq(row.media_id),
            quick_replies::enabled.eq(row.enabled),
            quick_replies::updated_at.eq(Utc::now()),
        ))
        .execute(&mut conn)
        .await
        .map_err(|e| {
            if crate::db::is_unique_violation(&e) {
                taken()
            } else {
                e.into()
            }
        })?;
    Ok(())
}

#[utoipa::path(tag = "quick-replies", params(QuickReplyPath), request_body = UpdateQuickReply, responses((status = 200, description = "The quick reply", body = QuickReplyOut), CommonErrors), security(("api_key" = [])))]
#[patch("/quick-replies/{quick_reply_id}")]
pub async fn update_quick_reply(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
    // The id is judged before the body: `PATCH /quick-replies/stats` is a 405 whatever it
    // carries.
    body: Result<ValidJson<UpdateQuickReply>, ApiError>,
) -> Result<HttpResponse, ApiError> {
    let id = crate::http::id_or_refusal(&req, &path, "quick reply")?;
    let b = body?.into_inner();
    let mut row = load(&state, &caller, id).await?;
    if let Some(s) = &b.shortcut {
        row.shortcut = check_shortcut(s)?;
    }
    if let Some(t) = &b.title {
        row.title = crate::crm::name("title", t)?;
    }
    if let Some(t) = b.text {
        check_text(&t)?;
        row.text = t;
    }
    if let Some(m) = b.media_id {
        let mut conn = state.db.get().await?;
        check_media(&mut conn, row.tenant_id, m).await?;
        row.media_id = m;
    }
    if let Some(e) = b.enabled {
        row.enabled = e;
    }
    save(&state, &row).await?;
    Ok(HttpResponse::Ok().json(QuickReplyOut::from(&row)))
}

/// Enable a disabled quick reply, or disable an enabled one.
#[utoipa::path(tag = "quick-replies", params(QuickReplyPath), responses((status = 200, description = "The quick reply", body = QuickReplyOut), CommonErrors), security(("api_key" = [])))]
#[patch("/quick-replies/{quick_reply_id}/toggle")]
pub async fn toggle(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<QuickReplyPath>,
) -> Result<HttpResponse, ApiError> {
    let mut row = load(&state, &caller, path.quick_reply_id).await?;
    row.enabled = !row.enabled;
    save(&state, &row).await?;
    Ok(HttpResponse::Ok().json(QuickReplyOut::from(&row)))
}

/// A copy under a free shortcut (`/price-copy`, `/price-copy2`, …), disabled, never used.
#[utoipa::path(tag = "quick-replies", params(QuickReplyPath), responses((status = 201, description = "The copy", body = QuickReplyOut), CommonErrors), security(("api_key" = [])))]
#[post("/quick-replies/{quick_reply_id}/duplicate")]
pub async fn duplicate(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<QuickReplyPath>,
) -> Result<HttpResponse, ApiError> {
    let row = load(&state, &caller, path.quick_reply_id).await?;
    let mut conn = state.db.get().await?;
    let base: String = row.shortcut.chars().take(27).collect();
    for n in 1..=20 {
        let shortcut = if n == 1 {
            format!("{base}-copy")
        } else {
            format!("{base}-copy{n}")
        };
        let now = Utc::now();
        let copy = QuickReplyRow {
            id: Uuid::now_v7(),
            shortcut,
            enabled: false,
            uses: 0,
            last_used_at: None,
            created_at: now,
            updated_at: now,
            ..row.clone()
        };
        match diesel::insert_into(quick_replies::table)
            .values(&copy)
            .execute(&mut conn)
            .await
        {
            Ok(_) => return Ok(HttpResponse::Created().json(QuickReplyOut::from(&copy))),
            Err(e) if crate::db::is_unique_violation(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(taken())
}

#[utoipa::path(tag = "quick-replies", params(QuickReplyPath), responses((status = 204, description = "Deleted"), CommonErrors), security(("api_key" = [])))]
#[delete("/quick-replies/{quick_reply_id}")]
pub async fn delete_quick_reply(
    caller: Caller,
    state: web::Data<AppState>,
    // A string, so that `DELETE /quick-replies/stats` is that route's 405, not a 404.
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = crate::http::id_or_refusal(&req, &path, "quick reply")?;
    let row = load(&state, &caller, id).await?;
    let mut conn = state.db.get().await?;
    diesel::delete(quick_replies::table.find(row.id))
        .execute(&mut conn)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A send of `"type": "quick_reply"`: finds the reply (by id or shortcut, enabled, the
/// session's tenant's), renders it, and turns the request into the text (or media with a
/// caption) it stands for. Returns the reply's id, to count the use once the send is accepted.
pub async fn expand(
    state: &AppState,
    caller: &Caller,
    session_id: Uuid,
    body: &mut crate::messages::SendMessage,
) -> Result<Uuid, ApiError> {
    let (session, _) = crate::sessions::load_for(state, caller, session_id).await?;
    let mut conn = state.db.get().await?;
    let mut q = quick_replies::table
        .filter(quick_replies::tenant_id.eq(session.tenant_id))
        .select(QuickReplyRow::as_select())
        .into_boxed();
    q = match (body.quick_reply_id, body.shortcut.as_deref()) {
        (Some(id), None) => q.filter(quick_replies::id.eq(id)),
        (None, Some(s)) => q.filter(quick_replies::shortcut.eq(check_shortcut(s)?)),
        _ => {
            return Err(ApiError::validation(
                "quick_reply_id",
                "a quick reply is named by quick_reply_id or by shortcut (one of them)",
            ));
        }
    };
    let row: QuickReplyRow = q
        .first(&mut conn)
        .await
        .optional()?
        .ok_or(ApiError::NotFound("quick reply"))?;
    if !row.enabled {
        return Err(ApiError::validation(
            if body.quick_reply_id.is_some() {
                "quick_reply_id"
            } else {
                "shortcut"
            },
            "the quick reply is disabled",
        ));
    }
    let to = crate::messages::parse_chat(&body.to, "to")?;
    let chat = wagate_actors::messaging::chat_key(&to);
    let mut known = BTreeMap::new();
    known.insert("phone".to_owned(), Value::from(chat.clone()));
    let contact: Option<Option<String>> = crate::schema::chats::table
        .find((session.id, &chat))
        .select(crate::schema::chats::contact_name)
        .first(&mut conn)
        .await
        .optional()?;
    if let Some(Some(name)) = contact {
        known.insert("contact_name".to_owned(), Value::from(name));
    }
    let given: BTreeMap<String, Value> = body
        .variables
        .take()
        .unwrap_or_default()
        .into_iter()
        .collect();
    if given.values().any(|v| v.is_object() || v.is_array()) {
        return Err(ApiError::validation(
            "variables",
            "values must be text, numbers or booleans",
        ));
    }
    let text = render(&row.text, &given, &known)?;
    body.quick_reply_id = None;
    body.shortcut = None;
    match row.media_id {
        Some(media) => {
            let kind: String = crate::schema::media::table
                .find(media)
                .select(crate::schema::media::kind)
                .first(&mut conn)
                .await
                .optional()?
                .ok_or_else(|| {
                    ApiError::validation("quick_reply_id", "the quick reply's media is gone")
                })?;
            body.kind = kind;
            body.media_id = Some(media.to_string());
            body.caption = Some(text);
        }
        None => {
            body.kind = "text".into();
            body.text = Some(text);
        }
    }
    Ok(row.id)
}

/// A flow's `send_quick_reply`: the tenant's enabled reply by shortcut, rendered for the chat
/// with the step's variables. An error is the step's failure, in words.
pub async fn render_for_flow(
    conn: &mut AsyncPgConnection,
    tenant: Uuid,
    session: Uuid,
    chat: &str,
    shortcut: &str,
    variables: &BTreeMap<String, String>,
) -> Result<(Uuid, String), String> {
    let row: Option<QuickReplyRow> = quick_replies::table
        .filter(quick_replies::tenant_id.eq(tenant))
        .filter(quick_replies::shortcut.eq(shortcut))
        .select(QuickReplyRow::as_select())
        .first(conn)
        .await
        .optional()
        .map_err(|e| e.to_string())?;
    let row = row.ok_or_else(|| format!("no quick reply {shortcut}"))?;
    if !row.enabled {
        return Err(format!("the quick reply {shortcut} is disabled"));
    }
    if row.media_id.is_some() {
        return Err(format!(
            "the quick reply {shortcut} carries media, which flows do not send yet"
        ));
    }
    let mut known = BTreeMap::new();
    known.insert("phone".to_owned(), Value::from(chat));
    let contact: Option<Option<String>> = crate::schema::chats::table
        .find((session, chat))
        .select(crate::schema::chats::contact_name)
        .first(conn)
        .await
        .optional()
        .map_err(|e| e.to_string())?;
    if let Some(Some(name)) = contact {
        known.insert("contact_name".to_owned(), Value::from(name));
    }
    let given = variables
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.clone())))
        .collect();
    let text = render(&row.text, &given, &known).map_err(|e| e.to_string())?;
    Ok((row.id, text))
}

/// Counts a use of a quick reply.
pub async fn count_use(state: &AppState, id: Uuid) {
    let counted = async {
        let mut conn = state.db.get().await?;
        diesel::update(quick_replies::table.find(id))
            .set((
                quick_replies::uses.eq(quick_replies::uses + 1),
                quick_replies::last_used_at.eq(Utc::now()),
            ))
            .execute(&mut conn)
            .await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = counted {
        tracing::warn!(error = %e, quick_reply_id = %id, "counting a quick reply's use");
    }
}

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(create_quick_reply)
        .service(list_quick_replies)
        .service(popular)
        .service(stats)
        .service(get_quick_reply)
        .service(update_quick_reply)
        .service(toggle)
        .service(duplicate)
        .service(delete_quick_reply);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rendering_is_strict_and_names_the_missing_variable() {
        let given: BTreeMap<String, Value> = [
            ("name".to_owned(), json!("Ana")),
            ("n".to_owned(), json!(3)),
        ]
        .into();
        let known: BTreeMap<String, Value> = [("phone".to_owned(), json!("+491"))].into();
        assert_eq!(
            render(
                "Hi {{ name }}, {{ n }} items to {{ phone }}",
                &given,
                &known
            )
            .ok(),
            Some("Hi Ana, 3 items to +491".to_owned())
        );
        match render("Hi {{ nombre }}", &given, &known) {
            Err(ApiError::Validation { field, .. }) => assert_eq!(field, "variables.nombre"),
            other => panic!("{other:?}"),
        }
        assert!(variables_of("{{ broken").is_err());
        assert_eq!(check_shortcut(" /Price ").ok(), Some("/price".to_owned()));
        assert!(check_shortcut("price").is_err());
        assert!(check_shortcut("/a b").is_err());
    }
}
