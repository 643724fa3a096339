//! Groups of a session, as WhatsApp keeps them: list, create, read, rename and describe,
//! participants (add, remove, promote, demote), invite links, join by link, leave. Every
//! request is asked of WhatsApp live through the session's client; `group.*` events come from
//! the session actors. Messages to a group go through `POST …/messages` with `to` the
//! group's JID.

use actix_web::{HttpResponse, get, patch, post, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wagate_actors::session::groups::{
    GroupAnswer, GroupCommand, GroupInfo, ParticipantAction, ParticipantOutcome,
};

use crate::app::AppState;
use crate::error::ApiError;
use crate::http::json::ValidJson;
use crate::http::openapi::{CommonErrors, GroupErrors};
use crate::messages::{parse_group, parse_recipient};
use crate::sessions::store::SessionRow;
use crate::sessions::{ScopedSession, SessionPath, lifecycle};

/// WhatsApp's limits on a group's subject and description (characters).
const SUBJECT_MAX: usize = 100;
const DESCRIPTION_MAX: usize = 2048;
/// Participants one request may name (WhatsApp's groups hold up to 1,024).
const PARTICIPANTS_MAX: usize = 256;

/// A participant of a group.
#[derive(Debug, Serialize, ToSchema)]
pub struct Participant {
    /// `+<digits>`, when known.
    pub phone: Option<String>,
    pub jid: String,
    /// `member`, `admin` or `superadmin` (the creator).
    pub role: String,
}

/// A group as WhatsApp shows it to the session's account.
#[derive(Debug, Serialize, ToSchema)]
pub struct Group {
    /// `<id>@g.us`: the `to` of a message to the group, and its chat.
    pub jid: String,
    pub subject: String,
    pub description: Option<String>,
    /// `+<digits>`, when WhatsApp says.
    pub creator: Option<String>,
    /// Unix seconds.
    pub created_at: Option<u64>,
    pub participants: Vec<Participant>,
}

impl From<GroupInfo> for Group {
    fn from(g: GroupInfo) -> Self {
        Group {
            jid: g.jid,
            subject: g.subject,
            description: g.description,
            creator: g.creator,
            created_at: g.created_at,
            participants: g
                .participants
                .into_iter()
                .map(|p| Participant {
                    phone: p.phone,
                    jid: p.jid,
                    role: p.role.as_str().to_owned(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupList {
    pub items: Vec<Group>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    /// 1 to 100 characters.
    pub subject: String,
    /// Numbers in international form (`+<country><number>`); the session's account is the
    /// group's creator (`superadmin`) and need not be listed.
    #[serde(default)]
    pub participants: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateGroup {
    /// A new subject (1 to 100 characters).
    pub subject: Option<String>,
    /// A new description (up to 2,048 characters); `""` removes it.
    pub description: Option<String>,
}

/// One of `add`, `remove`, `promote`, `demote`, with the numbers it applies to.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeParticipants {
    pub add: Option<Vec<String>>,
    pub remove: Option<Vec<String>>,
    pub promote: Option<Vec<String>>,
    pub demote: Option<Vec<String>>,
}

/// How the change went for one number.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParticipantResult {
    pub phone: String,
    /// Done for this number.
    pub ok: bool,
    /// WhatsApp's code when it was not done: `403` (their privacy settings refuse direct
    /// adds: send them the invite link), `404` (not on WhatsApp, or not in the group), `409`
    /// (already in the group).
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ParticipantsChanged {
    /// `add`, `remove`, `promote` or `demote`.
    pub action: String,
    pub items: Vec<ParticipantResult>,
}

impl From<ParticipantOutcome> for ParticipantResult {
    fn from(o: ParticipantOutcome) -> Self {
        ParticipantResult {
            phone: o.phone,
            ok: o.error.is_none(),
            error: o.error,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InviteLink {
    /// `https://chat.whatsapp.com/<code>`.
    pub invite_link: String,
    pub invite_code: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinGroup {
    /// The code of an invite link, or the whole link.
    pub invite_code: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Joined {
    pub jid: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Left {
    pub ok: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct GroupPath {
    pub session_id: Uuid,
    /// The group's JID: `<digits>@g.us`.
    pub group_jid: String,
}

fn group_of(raw: &str) -> Result<String, ApiError> {
    parse_group(raw)
        .unwrap_or_else(|| Err(ApiError::validation("group_jid", "is not a group JID")))
        .map_err(|_| ApiError::validation("group_jid", "is not a group JID (<digits>@g.us)"))
}

fn subject(raw: &str) -> Result<String, ApiError> {
    let s = raw.trim();
    if s.is_empty() || s.chars().count() > SUBJECT_MAX {
        return Err(ApiError::validation(
            "subject",
            "must be 1 to 100 characters",
        ));
    }
    Ok(s.to_owned())
}

fn numbers(list: &[String], field: &str) -> Result<Vec<String>, ApiError> {
    if list.len() > PARTICIPANTS_MAX {
        return Err(ApiError::validation(field, "names at most 256 numbers"));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        let digits = parse_recipient(raw, &format!("{field}[{i}]"))?;
        if digits.contains('@') {
            return Err(ApiError::validation(
                format!("{field}[{i}]"),
                "must be a phone number",
            ));
        }
        if !out.contains(&digits) {
            out.push(digits);
        }
    }
    Ok(out)
}

async fn ask(
    state: &AppState,
    session: &SessionRow,
    cmd: GroupCommand,
) -> Result<GroupAnswer, ApiError> {
    lifecycle::live(state.sessions(), session, cmd).await
}

fn unexpected(answer: GroupAnswer) -> ApiError {
    ApiError::internal(anyhow::anyhow!(
        "unexpected answer from the session: {answer:?}"
    ))
}

/// A group the session answered with, as the response body.
fn group_answer(
    answer: GroupAnswer,
    mut response: actix_web::HttpResponseBuilder,
) -> Result<HttpResponse, ApiError> {
    match answer {
        GroupAnswer::Group(g) => Ok(response.json(Group::from(g))),
        other => Err(unexpected(other)),
    }
}

/// The session's groups, as WhatsApp lists them now.
#[utoipa::path(
    tag = "groups",
    params(SessionPath),
    responses((status = 200, description = "The groups the session's account is in", body = GroupList), CommonErrors, GroupErrors),
    security(("api_key" = []))
)]
#[get("/sessions/{session_id}/groups")]
pub async fn list_groups(
    state: web::Data<AppState>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    match ask(&state, &session.row, GroupCommand::List).await? {
        GroupAnswer::Groups(groups) => Ok(HttpResponse::Ok().json(GroupList {
            items: groups.into_iter().map(Group::from).collect(),
        })),
        other => Err(unexpected(other)),
    }
}

/// Create a group; the session's account is its creator and first admin.
#[utoipa::path(
    tag = "groups",
    params(SessionPath),
    request_body = CreateGroup,
    responses((status = 201, description = "Created", body = Group), CommonErrors, GroupErrors),
    security(("api_key" = []))
)]
#[post("/sessions/{session_id}/groups")]
pub async fn create_group(
    state: web::Data<AppState>,
    body: ValidJson<CreateGroup>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let cmd = GroupCommand::Create {
        subject: subject(&body.subject)?,
        participants: numbers(&body.participants, "participants")?,
    };
    group_answer(
        ask(&state, &session.row, cmd).await?,
        HttpResponse::Created(),
    )
}

/// A group's subject, description and participants.
#[utoipa::path(
    tag = "groups",
    params(GroupPath),
    responses((status = 200, description = "The group", body = Group), CommonErrors, GroupErrors),
    security(("api_key" = []))
)]
#[get("/sessions/{session_id}/groups/{group_jid}")]
pub async fn get_group(
    state: web::Data<AppState>,
    path: web::Path<GroupPath>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let group = group_of(&path.group_jid)?;
    group_answer(
        ask(&state, &session.row, GroupCommand::Get { group }).await?,
        HttpResponse::Ok(),
    )
}

/// Change a group's subject and/or description.
#[utoipa::path(
    tag = "groups",
    params(GroupPath),
    request_body = UpdateGroup,
    responses((status = 200, description = "The group as it is now", body = Group), CommonErrors, GroupErrors),
    security(("api_key" = []))
)]
#[patch("/sessions/{session_id}/groups/{group_jid}")]
pub async fn update_group(
    state: web::Data<AppState>,
    path: web::Path<GroupPath>,
    body: ValidJson<UpdateGroup>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let group = group_of(&path.group_jid)?;
    let body = body.into_inner();
    if body.subject.is_none() && body.description.is_none() {
        return Err(ApiError::validation(
            "subject",
            "give a subject, a description, or both",
        ));
    }
    let subject = body.subject.as_deref().map(subject).transpose()?;
    let description = match body.description {
        None => None,
        Some(d) if d.trim().is_empty() => Some(None),
        Some(d) if d.chars().count() > DESCRIPTION_MAX => {
            return Err(ApiError::validation(
                "description",
                "must be at most 2048 characters",
            ));
        }
        Some(d) => Some(Some(d)),
    };
    let cmd = GroupCommand::Update {
        group,
        subject,
        description,
    };
    group_answer(ask(&state, &session.row, cmd).await?, HttpResponse::Ok())
}

/// Add, remove, promote or demote participants (one action per request; admins only).
#[utoipa::path(
    tag = "groups",
    params(GroupPath),
    request_body = ChangeParticipants,
    responses((status = 200, description = "How it went for each number", body = ParticipantsChanged), CommonErrors, GroupErrors),
    security(("api_key" = []))
)]
#[post("/sessions/{session_id}/groups/{group_jid}/participants")]
pub async fn change_participants(
    state: web::Data<AppState>,
    path: web::Path<GroupPath>,
    body: ValidJson<ChangeParticipants>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let group = group_of(&path.group_jid)?;
    let body = body.into_inner();
    let given: Vec<(ParticipantAction, Vec<String>)> = [
        (ParticipantAction::Add, body.add),
        (ParticipantAction::Remove, body.remove),
        (ParticipantAction::Promote, body.promote),
        (ParticipantAction::Demote, body.demote),
    ]
    .into_iter()
    .filter_map(|(a, list)| list.map(|l| (a, l)))
    .collect();
    let [(action, list)] = <[_; 1]>::try_from(given).map_err(|_| {
        ApiError::validation("add", "give exactly one of add, remove, promote, demote")
    })?;
    let phones = numbers(&list, action.as_str())?;
    if phones.is_empty() {
        return Err(ApiError::validation(action.as_str(), "names no number"));
    }
    let cmd = GroupCommand::Participants {
        group,
        action,
        phones,
    };
    match ask(&state, &session.row, cmd).await? {
        GroupAnswer::Participants(outcomes) => Ok(HttpResponse::Ok().json(ParticipantsChanged {
            action: action.as_str().to_owned(),
            items: outcomes.into_iter().map(ParticipantResult::from).collect(),
        })),
        other => Err(unexpected(other)),
    }
}

fn invite_link(answer: GroupAnswer) -> Result<HttpResponse, ApiError> {
    match answer {
        GroupAnswer::InviteLink(link) => Ok(HttpResponse::Ok().json(InviteLink {
            invite_code: link.rsplit('/').next().unwrap_or_default().to_owned(),
            invite_link: link,
        })),
        other => Err(unexpected(other)),
    }
}

/// The group's invite link (admins only).
#[utoipa::path(
    tag = "groups",
    params(GroupPath),
    responses((status = 200, description = "The link", body = InviteLink), CommonErrors, GroupErrors),
    security(("api_key" = []))
)]
#[get("/sessions/{session_id}/groups/{group_jid}/invite-link")]
pub async fn get_invite_link(
    state: web::Data<AppState>,
    path: web::Path<GroupPath>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let group = group_of(&path.group_jid)?;
    invite_link(
        ask(
            &state,
            &session.row,
            GroupCommand::InviteLink {
                group,
                reset: false,
            },
        )
        .await?,
    )
}

/// Revoke the group's invite link and issue a new one (admins only).
#[utoipa::path(
    tag = "groups",
    params(GroupPath),
    responses((status = 200, description = "The new link; the old one no longer works", body = InviteLink), CommonErrors, GroupErrors),
    security(("api_key" = []))
)]
#[post("/sessions/{session_id}/groups/{group_jid}/invite-link/revoke")]
pub async fn revoke_invite_link(
    state: web::Data<AppState>,
    path: web::Path<GroupPath>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let group = group_of(&path.group_jid)?;
    invite_link(
        ask(
            &state,
            &session.row,
            GroupCommand::InviteLink { group, reset: true },
        )
        .await?,
    )
}

/// Join a group by its invite link's code.
#[utoipa::path(
    tag = "groups",
    params(SessionPath),
    request_body = JoinGroup,
    responses((status = 200, description = "Joined", body = Joined), CommonErrors, GroupErrors),
    security(("api_key" = []))
)]
#[post("/sessions/{session_id}/groups/join")]
pub async fn join_group(
    state: web::Data<AppState>,
    body: ValidJson<JoinGroup>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let raw = body.into_inner().invite_code;
    let code = raw.trim().rsplit('/').next().unwrap_or_default().to_owned();
    if code.is_empty() || code.len() > 64 || !code.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ApiError::validation(
            "invite_code",
            "is not an invite code or link",
        ));
    }
    match ask(&state, &session.row, GroupCommand::Join { code }).await? {
        GroupAnswer::Joined(jid) => Ok(HttpResponse::Ok().json(Joined { jid })),
        other => Err(unexpected(other)),
    }
}

/// Leave a group.
#[utoipa::path(
    tag = "groups",
    params(GroupPath),
    responses((status = 200, description = "Left", body = Left), CommonErrors, GroupErrors),
    security(("api_key" = []))
)]
#[post("/sessions/{session_id}/groups/{group_jid}/leave")]
pub async fn leave_group(
    state: web::Data<AppState>,
    path: web::Path<GroupPath>,
    session: ScopedSession,
) -> Result<HttpResponse, ApiError> {
    let group = group_of(&path.group_jid)?;
    match ask(&state, &session.row, GroupCommand::Leave { group }).await? {
        GroupAnswer::Done => Ok(HttpResponse::Ok().json(Left { ok: true })),
        other => Err(unexpected(other)),
    }
}

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    // `join` before `{group_jid}`: a literal segment wins only if registered first.
    cfg.service(join_group)
        .service(list_groups)
        .service(create_group)
        .service(get_group)
        .service(update_group)
        .service(change_participants)
        .service(get_invite_link)
        .service(revoke_invite_link)
        .service(leave_group);
}
