//! Reports generated in the background: `POST /api/v1/reports` stores a request and answers
//! 202; any node's worker claims it (`SKIP LOCKED`, with a lease: a node that dies mid-report
//! leaves it to another), writes the file a page at a time into `report_chunks`, and marks it
//! done. A download streams the chunks one by one. Neither side ever holds the whole file.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Binary, Int4, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::export::{self, Cursor, Kind};
use super::{Period, zone_of};
use crate::ai::tenant_of;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::http::TenantQuery;
use crate::http::json::ValidJson;
use crate::http::openapi::CommonErrors;
use crate::http::pagination::{Page, parse_limit};

/// A claimed report is another node's to take after this long without progress.
const LEASE_SECS: i64 = 60;
/// A finished report is kept this long.
const KEEP_DAYS: i64 = 7;
/// Bytes per stored chunk (a page of rows is written as soon as it is this big).
const CHUNK_BYTES: usize = 256 * 1024;
/// Attempts before a report that keeps failing is marked failed.
const MAX_ATTEMPTS: i32 = 3;

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewReport {
    /// `messages`, `agents`, `cards` or `webhooks`.
    pub kind: String,
    /// RFC 3339, or a date in the tenant's time zone.
    pub from: String,
    /// RFC 3339, or a date (its whole day counts).
    pub to: String,
    /// `csv` (default) or `json`.
    pub format: Option<String>,
}

#[derive(Debug, Serialize, QueryableByName, ToSchema)]
pub struct ReportOut {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Text)]
    pub format: String,
    #[diesel(sql_type = Timestamptz)]
    pub from: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub to: DateTime<Utc>,
    /// `pending`, `running`, `done` or `failed`.
    #[diesel(sql_type = Text)]
    pub status: String,
    /// Rows written so far.
    #[diesel(sql_type = BigInt)]
    pub rows: i64,
    #[diesel(sql_type = BigInt)]
    pub bytes: i64,
    #[diesel(sql_type = Nullable<Text>)]
    pub error: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub finished_at: Option<DateTime<Utc>>,
    /// When a finished report is deleted.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub expires_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, kind, format, range_from AS \"from\", range_to AS \"to\", status, rows, \
  bytes, error, created_at, finished_at, expires_at";

/// Asks for a report; it is generated in the background.
#[utoipa::path(tag = "stats", params(TenantQuery), request_body = NewReport, responses((status = 202, description = "Accepted", body = ReportOut), CommonErrors), security(("api_key" = [])))]
#[post("/reports")]
pub async fn create_report(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<TenantQuery>,
    body: Result<ValidJson<NewReport>, ApiError>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_of(&state, &caller, query.tenant_id).await?;
    let body = body?.into_inner();
    let kind = Kind::parse(&body.kind)?;
    let format = match body.format.as_deref().unwrap_or("csv") {
        f @ ("csv" | "json") => f,
        _ => return Err(ApiError::validation("format", "must be csv or json")),
    };
    let mut conn = state.db.get().await?;
    let zone = zone_of(&mut conn, tenant).await?;
    // Both bounds are required: `default` is never used.
    let now = Utc::now();
    let p = Period::parse(
        Some(&body.from),
        Some(&body.to),
        zone,
        Period { from: now, to: now },
    )?;
    let row: ReportOut = diesel::sql_query(format!(
        "INSERT INTO reports (id, tenant_id, kind, format, range_from, range_to) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
    ))
    .bind::<SqlUuid, _>(Uuid::new_v4())
    .bind::<SqlUuid, _>(tenant)
    .bind::<Text, _>(kind.as_str())
    .bind::<Text, _>(format)
    .bind::<Timestamptz, _>(p.from)
    .bind::<Timestamptz, _>(p.to)
    .get_result(&mut conn)
    .await?;
    state.reports_wakeup.notify_one();
    Ok(HttpResponse::Accepted().json(row))
}

async fn load(
    conn: &mut AsyncPgConnection,
    tenant: Option<Uuid>,
    id: Uuid,
) -> Result<(Uuid, ReportOut), ApiError> {
    #[derive(QueryableByName)]
    struct Owned {
        #[diesel(sql_type = SqlUuid)]
        tenant_id: Uuid,
        #[diesel(embed)]
        report: ReportOut,
    }
    let rows: Vec<Owned> = diesel::sql_query(format!(
        "SELECT tenant_id, {COLUMNS} FROM reports WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)"
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<Nullable<SqlUuid>, _>(tenant)
    .load(conn)
    .await?;
    rows.into_iter()
        .next()
        .map(|o| (o.tenant_id, o.report))
        .ok_or(ApiError::NotFound("report"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The admin key names the tenant.
    pub tenant_id: Option<Uuid>,
    /// 1 to 500 (default 50).
    #[param(value_type = Option<u32>)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// The tenant's reports, newest first.
#[utoipa::path(tag = "stats", params(ListQuery), responses((status = 200, description = "Reports", body = Page<ReportOut>), CommonErrors), security(("api_key" = [])))]
#[get("/reports")]
pub async fn list_reports(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_of(&state, &caller, query.tenant_id).await?;
    let limit = parse_limit(query.limit.as_deref())?;
    let before = query
        .cursor
        .as_deref()
        .map(|c| {
            DateTime::parse_from_rfc3339(c)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| ApiError::validation("cursor", "is not a cursor from this API"))
        })
        .transpose()?;
    let mut conn = state.db.get().await?;
    let rows: Vec<ReportOut> = diesel::sql_query(format!(
        "SELECT {COLUMNS} FROM reports WHERE tenant_id = $1 \
           AND ($2::timestamptz IS NULL OR created_at < $2) \
         ORDER BY created_at DESC LIMIT $3"
    ))
    .bind::<SqlUuid, _>(tenant)
    .bind::<Nullable<Timestamptz>, _>(before)
    .bind::<BigInt, _>(i64::from(limit) + 1)
    .load(&mut conn)
    .await?;
    Ok(
        HttpResponse::Ok().json(Page::from_overfetched(rows, limit, |r| {
            r.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        })),
    )
}

fn report_id(req: &HttpRequest) -> Result<Uuid, ApiError> {
    let raw = req.match_info().get("report_id").unwrap_or_default();
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound("report"))
}

/// A report's status and size.
#[utoipa::path(tag = "stats", params(("report_id" = Uuid, Path,)), responses((status = 200, description = "The report", body = ReportOut), CommonErrors), security(("api_key" = [])))]
#[get("/reports/{report_id}")]
pub async fn get_report(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = report_id(&req)?;
    let mut conn = state.db.get().await?;
    let (_, report) = load(&mut conn, caller.tenant_id(), id).await?;
    Ok(HttpResponse::Ok().json(report))
}

#[derive(QueryableByName)]
struct Chunk {
    #[diesel(sql_type = Binary)]
    data: Vec<u8>,
}

/// The finished report's file, streamed a chunk at a time.
#[utoipa::path(tag = "stats", params(("report_id" = Uuid, Path,)), responses((status = 200, description = "CSV (with a header row) or JSON, streamed", body = String), CommonErrors), security(("api_key" = [])))]
#[get("/reports/{report_id}/download")]
pub async fn download_report(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = report_id(&req)?;
    let report = {
        let mut conn = state.db.get().await?;
        load(&mut conn, caller.tenant_id(), id).await?.1
    };
    if report.status != "done" {
        return Err(ApiError::Conflict {
            code: ErrorCode::ReportNotReady,
            message: match &report.error {
                Some(e) => format!("the report failed: {e}"),
                None => format!("the report is {}", report.status),
            },
        });
    }
    let stream = futures::stream::unfold((state, 0i32), move |(state, seq)| async move {
        let chunk = async {
            let mut conn = state.db.get().await?;
            let rows: Vec<Chunk> = diesel::sql_query(
                "SELECT data FROM report_chunks WHERE report_id = $1 AND seq = $2",
            )
            .bind::<SqlUuid, _>(id)
            .bind::<Int4, _>(seq)
            .load(&mut conn)
            .await?;
            Ok::<_, ApiError>(rows.into_iter().next())
        }
        .await;
        match chunk {
            Ok(Some(c)) => Some((
                Ok::<_, ApiError>(web::Bytes::from(c.data)),
                (state, seq + 1),
            )),
            Ok(None) => None,
            Err(e) => Some((Err(e), (state, i32::MAX))),
        }
    });
    let (content_type, ext) = if report.format == "json" {
        ("application/json", "json")
    } else {
        ("text/csv; charset=utf-8", "csv")
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((
            "content-disposition",
            format!(
                "attachment; filename=\"{}-{}.{ext}\"",
                report.kind, report.id
            ),
        ))
        .streaming(stream))
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    tenant_id: Uuid,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    format: String,
    #[diesel(sql_type = Timestamptz)]
    range_from: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    range_to: DateTime<Utc>,
}

/// Claims the oldest report waiting (or whose node stopped renewing it).
async fn claim(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Option<Claimed>> {
    let rows: Vec<Claimed> = diesel::sql_query(
        "UPDATE reports SET status = 'running', attempts = attempts + 1, \
           locked_until = now() + make_interval(secs => $1), rows = 0, bytes = 0 \
         WHERE id = (SELECT id FROM reports \
           WHERE status = 'pending' OR (status = 'running' AND locked_until < now()) \
           ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
         RETURNING id, tenant_id, kind, format, range_from, range_to",
    )
    .bind::<diesel::sql_types::Double, _>(LEASE_SECS as f64)
    .load(conn)
    .await?;
    Ok(rows.into_iter().next())
}

/// Writes one claimed report: its chunks (a retry starts over) and then `done`.
async fn generate(state: &AppState, r: &Claimed) -> Result<(), ApiError> {
    let kind = Kind::parse(&r.kind)?;
    let json = r.format == "json";
    let mut conn = state.db.get().await?;
    diesel::sql_query("DELETE FROM report_chunks WHERE report_id = $1")
        .bind::<SqlUuid, _>(r.id)
        .execute(&mut conn)
        .await?;
    let zone = zone_of(&mut conn, r.tenant_id).await?;
    let period = Period {
        from: r.range_from,
        to: r.range_to,
    };
    let mut cursor = Cursor::default();
    let mut buffer: Vec<u8> = if json { b"[\n".to_vec() } else { vec![] };
    let (mut seq, mut rows, mut bytes, mut first) = (0i32, 0i64, 0i64, true);
    loop {
        let (page, next) = export::page(
            state,
            &mut conn,
            kind,
            r.tenant_id,
            period,
            zone.name(),
            &cursor,
        )
        .await?;
        let last = page.is_empty() || next.done;
        if json {
            buffer.extend(export::json_lines(kind.columns(), &page, first));
        } else {
            buffer.extend(export::csv_lines(kind.columns(), &page, first)?);
        }
        if !page.is_empty() {
            first = false;
        }
        rows += page.len() as i64;
        if last && json {
            buffer.extend_from_slice(b"\n]\n");
        }
        if buffer.len() >= CHUNK_BYTES || last {
            bytes += buffer.len() as i64;
            // Written with the progress and a renewed lease: a node that dies here leaves a
            // report another node starts again.
            let updated = diesel::sql_query(
                "WITH c AS (INSERT INTO report_chunks (report_id, seq, data) VALUES ($1, $2, $3)) \
                 UPDATE reports SET rows = $4, bytes = $5, \
                   locked_until = now() + make_interval(secs => $6) \
                 WHERE id = $1 AND status = 'running'",
            )
            .bind::<SqlUuid, _>(r.id)
            .bind::<Int4, _>(seq)
            .bind::<Binary, _>(std::mem::take(&mut buffer))
            .bind::<BigInt, _>(rows)
            .bind::<BigInt, _>(bytes)
            .bind::<diesel::sql_types::Double, _>(LEASE_SECS as f64)
            .execute(&mut conn)
            .await?;
            if updated == 0 {
                // Deleted meanwhile (its tenant too, perhaps): nothing more to write.
                return Ok(());
            }
            seq += 1;
        }
        if last {
            break;
        }
        cursor = next;
    }
    diesel::sql_query(
        "UPDATE reports SET status = 'done', finished_at = now(), locked_until = NULL, \
           expires_at = now() + make_interval(days => $2) WHERE id = $1",
    )
    .bind::<SqlUuid, _>(r.id)
    .bind::<Int4, _>(KEEP_DAYS as i32)
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// One pass: generates every waiting report, one at a time (each streams its rows; running
/// several at once would only share the same two cores and the same database).
pub async fn work(state: &AppState) -> anyhow::Result<usize> {
    let mut done = 0;
    loop {
        let claimed = {
            let mut conn = state.db.get().await?;
            claim(&mut conn).await?
        };
        let Some(r) = claimed else {
            return Ok(done);
        };
        if let Err(e) = generate(state, &r).await {
            tracing::warn!(report_id = %r.id, error = %e, "generating a report");
            let mut conn = state.db.get().await?;
            diesel::sql_query(
                "UPDATE reports SET status = CASE WHEN attempts >= $2 THEN 'failed' ELSE 'pending' END, \
                   error = $3, locked_until = NULL, \
                   finished_at = CASE WHEN attempts >= $2 THEN now() END, \
                   expires_at = CASE WHEN attempts >= $2 THEN now() + interval '7 days' END \
                 WHERE id = $1",
            )
            .bind::<SqlUuid, _>(r.id)
            .bind::<Int4, _>(MAX_ATTEMPTS)
            .bind::<Text, _>(e.to_string())
            .execute(&mut conn)
            .await?;
        }
        done += 1;
    }
}

/// Reports past their expiry go, with their chunks.
pub async fn expire(state: &AppState) -> anyhow::Result<usize> {
    let mut conn = state.db.get().await?;
    Ok(
        diesel::sql_query("DELETE FROM reports WHERE expires_at < now()")
            .execute(&mut conn)
            .await?,
    )
}

pub fn schedule(jobs: &mut crate::app::jobs::Jobs, state: &web::Data<AppState>) {
    let state = state.clone();
    jobs.spawn(async move {
        let mut last_expiry = std::time::Instant::now();
        loop {
            if let Err(e) = work(&state).await {
                tracing::warn!(error = %e, "the report worker");
            }
            if last_expiry.elapsed() > Duration::from_secs(3600) {
                last_expiry = std::time::Instant::now();
                if let Err(e) = expire(&state).await {
                    tracing::warn!(error = %e, "removing expired reports");
                }
            }
            // Woken by a new report on this node; another node's is found within the poll.
            let _ =
                tokio::time::timeout(Duration::from_secs(2), state.reports_wakeup.notified()).await;
        }
    });
}

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(create_report)
        .service(list_reports)
        .service(get_report)
        .service(download_report);
}
