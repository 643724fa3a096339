//! The simulator's control API over HTTP, for a simulator running as its
//! own process (`wagate-sim`). In-process users call [`Simulator`] directly.
//!
//! Every route answers JSON; errors are `{"error": {"code", "message"}}`.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError, web};
use serde::Deserialize;

use crate::network::{ContactBehaviour, ProfileUpdate, Simulator};

#[derive(Debug)]
struct ControlError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ControlError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(serde_json::json!({
            "error": { "code": self.code, "message": self.message }
        }))
    }
}

fn rejected(e: anyhow::Error) -> ControlError {
    ControlError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "rejected",
        message: e.to_string(),
    }
}

#[derive(Deserialize)]
struct Scan {
    qr: String,
    phone: String,
}

#[derive(Deserialize)]
struct PairCode {
    phone: String,
    code: String,
}

#[derive(Deserialize)]
struct Inject {
    from: String,
    to: String,
    text: String,
}

#[derive(Deserialize)]
struct Contact {
    phone: String,
    name: Option<String>,
    #[serde(default)]
    on_whatsapp: Option<bool>,
}

#[derive(Deserialize)]
struct Faults {
    latency_ms: Option<u64>,
    refuse_for_ms: Option<u64>,
}

#[derive(Deserialize)]
struct GroupText {
    from: String,
    text: String,
}

async fn group(
    sim: web::Data<Simulator>,
    group: web::Path<String>,
) -> Result<HttpResponse, ControlError> {
    let view = sim.group(&group).ok_or_else(|| ControlError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: format!("no group {group}"),
    })?;
    Ok(HttpResponse::Ok().json(view))
}

async fn groups_of(sim: web::Data<Simulator>, phone: web::Path<String>) -> HttpResponse {
    HttpResponse::Ok().json(sim.groups_of(&phone))
}

async fn group_text(
    sim: web::Data<Simulator>,
    group: web::Path<String>,
    body: web::Json<GroupText>,
) -> Result<HttpResponse, ControlError> {
    let id = sim
        .inject_group_text(&body.from, &group, &body.text)
        .await
        .map_err(rejected)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "id": id })))
}

async fn counters(sim: web::Data<Simulator>) -> HttpResponse {
    HttpResponse::Ok().json(sim.counters())
}

async fn scan(
    sim: web::Data<Simulator>,
    body: web::Json<Scan>,
) -> Result<HttpResponse, ControlError> {
    let jid = sim.scan_qr(&body.qr, &body.phone).await.map_err(rejected)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "jid": jid.to_string() })))
}

async fn pair_code(
    sim: web::Data<Simulator>,
    body: web::Json<PairCode>,
) -> Result<HttpResponse, ControlError> {
    let jid = sim
        .enter_pair_code(&body.phone, &body.code)
        .await
        .map_err(rejected)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "jid": jid.to_string() })))
}

async fn inject(
    sim: web::Data<Simulator>,
    body: web::Json<Inject>,
) -> Result<HttpResponse, ControlError> {
    let id = sim
        .inject_text(&body.from, &body.to, &body.text)
        .await
        .map_err(rejected)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "id": id })))
}

/// `POST /control/accounts/{phone}/send`: the account's own phone writes to `to`.
#[derive(Deserialize)]
struct OwnPhoneSend {
    to: String,
    text: String,
}

async fn own_phone_send(
    sim: web::Data<Simulator>,
    phone: web::Path<String>,
    body: web::Json<OwnPhoneSend>,
) -> Result<HttpResponse, ControlError> {
    let id = sim
        .inject_from_own_phone(&phone, &body.to, &body.text)
        .await
        .map_err(rejected)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "id": id })))
}

async fn contact(
    sim: web::Data<Simulator>,
    body: web::Json<Contact>,
) -> Result<HttpResponse, ControlError> {
    if body.on_whatsapp == Some(false) {
        sim.mark_not_on_whatsapp(&body.phone).map_err(rejected)?;
        return Ok(HttpResponse::Ok().json(serde_json::json!({ "phone": body.phone })));
    }
    let phone = sim
        .add_contact(&body.phone, body.name.as_deref())
        .map_err(rejected)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "phone": phone })))
}

async fn behaviour(
    sim: web::Data<Simulator>,
    phone: web::Path<String>,
    body: web::Json<ContactBehaviour>,
) -> Result<HttpResponse, ControlError> {
    sim.set_contact_behaviour(&phone, body.into_inner())
        .map_err(rejected)?;
    Ok(HttpResponse::NoContent().finish())
}

async fn profile(
    sim: web::Data<Simulator>,
    phone: web::Path<String>,
    body: web::Json<ProfileUpdate>,
) -> Result<HttpResponse, ControlError> {
    sim.update_profile(&phone, body.into_inner())
        .map_err(rejected)?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
struct PresenceBody {
    available: bool,
}

async fn presence(
    sim: web::Data<Simulator>,
    phone: web::Path<String>,
    body: web::Json<PresenceBody>,
) -> Result<HttpResponse, ControlError> {
    sim.set_contact_presence(&phone, body.available)
        .map_err(rejected)?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
struct Typing {
    to: String,
    /// `composing`, `recording` or `paused`.
    state: String,
}

async fn typing(
    sim: web::Data<Simulator>,
    phone: web::Path<String>,
    body: web::Json<Typing>,
) -> Result<HttpResponse, ControlError> {
    sim.contact_types(&phone, &body.to, &body.state)
        .map_err(rejected)?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
struct Change {
    to: String,
    id: String,
    /// The new text; absent: delete for everyone.
    text: Option<String>,
}

/// A contact edits (with `text`) or deletes for everyone a message it sent.
async fn change(
    sim: web::Data<Simulator>,
    phone: web::Path<String>,
    body: web::Json<Change>,
) -> Result<HttpResponse, ControlError> {
    let id = match &body.text {
        Some(text) => sim.inject_edit(&phone, &body.to, &body.id, text).await,
        None => sim.inject_revoke(&phone, &body.to, &body.id).await,
    }
    .map_err(rejected)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "id": id })))
}

#[derive(Deserialize)]
struct LoseSessions {
    peer: String,
}

async fn lose_sessions(
    sim: web::Data<Simulator>,
    phone: web::Path<String>,
    body: web::Json<LoseSessions>,
) -> Result<HttpResponse, ControlError> {
    sim.lose_sessions(&phone, &body.peer)
        .await
        .map_err(rejected)?;
    Ok(HttpResponse::NoContent().finish())
}

async fn chat_states(sim: web::Data<Simulator>, phone: web::Path<String>) -> HttpResponse {
    HttpResponse::Ok().json(sim.contact_chat_states(&phone))
}

async fn inbox(sim: web::Data<Simulator>, phone: web::Path<String>) -> HttpResponse {
    HttpResponse::Ok().json(sim.contact_inbox(&phone))
}

async fn receipts(sim: web::Data<Simulator>, phone: web::Path<String>) -> HttpResponse {
    HttpResponse::Ok().json(sim.contact_receipts(&phone))
}

async fn drop_account(sim: web::Data<Simulator>, phone: web::Path<String>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "dropped": sim.drop_connections(&phone) }))
}

async fn drop_all(sim: web::Data<Simulator>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "dropped": sim.drop_all_connections() }))
}

async fn logout(
    sim: web::Data<Simulator>,
    path: web::Path<(String, u16)>,
) -> Result<HttpResponse, ControlError> {
    let (phone, device) = path.into_inner();
    sim.logout_device(&phone, device)
        .map_err(|e| ControlError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: e.to_string(),
        })?;
    Ok(HttpResponse::NoContent().finish())
}

async fn faults(sim: web::Data<Simulator>, body: web::Json<Faults>) -> HttpResponse {
    if let Some(ms) = body.latency_ms {
        sim.set_latency(Duration::from_millis(ms));
    }
    if let Some(ms) = body.refuse_for_ms {
        sim.refuse_connections_for(Duration::from_millis(ms));
    }
    HttpResponse::NoContent().finish()
}

/// The media servers over plain HTTP, for clients of a simulator in another process: their
/// HTTP client sends `https://<MEDIA_HOST>/…` here instead.
async fn media(
    sim: web::Data<Simulator>,
    req: actix_web::HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let res = sim.media_http(req.method().as_str(), path_and_query, &body);
    HttpResponse::build(StatusCode::from_u16(res.status_code).unwrap_or(StatusCode::BAD_GATEWAY))
        .body(res.body)
}

/// Largest upload the media routes take (WhatsApp's own documents go to 2 GB; tests do not).
const MEDIA_UPLOAD_LIMIT: usize = 128 * 1024 * 1024;

/// Serves [`configure`] on `addr` (loopback only) with one worker: the server to await and
/// its base URL (`http://ip:port`, the port chosen by the OS for port 0). Needs an actix system.
pub fn serve(
    sim: Simulator,
    addr: std::net::SocketAddr,
) -> anyhow::Result<(actix_web::dev::Server, String)> {
    if !addr.ip().is_loopback() {
        anyhow::bail!("the control API only listens on loopback, not {addr}");
    }
    let server =
        actix_web::HttpServer::new(move || actix_web::App::new().configure(configure(sim.clone())))
            .workers(1)
            .bind(addr)?;
    let url = server
        .addrs()
        .first()
        .map(|a| format!("http://{a}"))
        .ok_or_else(|| anyhow::anyhow!("the control API bound no address"))?;
    Ok((server.run(), url))
}

/// Mounts the control routes under `/control` and the media servers under `/mms` and `/v`.
pub fn configure(sim: Simulator) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(sim))
            .app_data(web::PayloadConfig::new(MEDIA_UPLOAD_LIMIT))
            .route("/mms/{tail:.*}", web::post().to(media))
            .route("/v/{tail:.*}", web::get().to(media))
            .service(
                web::scope("/control")
                    .route("/counters", web::get().to(counters))
                    .route("/scan", web::post().to(scan))
                    .route("/pair-code", web::post().to(pair_code))
                    .route("/inject", web::post().to(inject))
                    .route("/contacts", web::post().to(contact))
                    .route("/contacts/{phone}/behaviour", web::put().to(behaviour))
                    .route("/contacts/{phone}/messages", web::get().to(inbox))
                    .route("/contacts/{phone}/groups", web::get().to(groups_of))
                    .route("/groups/{group}", web::get().to(group))
                    .route("/groups/{group}/messages", web::post().to(group_text))
                    .route("/contacts/{phone}/receipts", web::get().to(receipts))
                    .route("/contacts/{phone}/profile", web::patch().to(profile))
                    .route("/contacts/{phone}/presence", web::put().to(presence))
                    .route("/contacts/{phone}/typing", web::post().to(typing))
                    .route("/contacts/{phone}/chat-states", web::get().to(chat_states))
                    .route("/contacts/{phone}/change", web::post().to(change))
                    .route(
                        "/contacts/{phone}/lose-sessions",
                        web::post().to(lose_sessions),
                    )
                    .route("/accounts/{phone}/drop", web::post().to(drop_account))
                    .route("/accounts/{phone}/send", web::post().to(own_phone_send))
                    .route("/connections/drop", web::post().to(drop_all))
                    .route(
                        "/accounts/{phone}/devices/{device}/logout",
                        web::post().to(logout),
                    )
                    .route("/faults", web::post().to(faults)),
            );
    }
}
