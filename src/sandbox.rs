//! Sandbox routes (`/api/v1/sandbox/...`): in a sandbox build, act as the phone and the
//! contacts of the built-in simulator, so the whole flow works with no phone. A tenant acts
//! only on its own sessions and sees only what its own sessions sent. A default build has
//! none of these routes.

#[cfg(feature = "sandbox")]
pub use enabled::routes;

/// A default build serves no sandbox routes.
#[cfg(not(feature = "sandbox"))]
pub fn routes(_cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {}

#[cfg(feature = "sandbox")]
mod enabled {
    use actix_web::{HttpResponse, get, post, web};
    use serde::{Deserialize, Serialize};
    use sha2::{Digest, Sha256};
    use utoipa::{IntoParams, ToSchema};
    use uuid::Uuid;

    use crate::app::AppState;
    use crate::auth::Caller;
    use crate::error::{ApiError, ErrorCode};
    use crate::http::json::{ContactJson, OptionalJson};
    use crate::http::openapi::CommonErrors;
    use crate::sessions::store::SessionRow;
    use crate::sessions::{ScopedSession, SessionPath, load_for, parse_phone};
    use crate::whatsapp_network::{Simulator, WhatsAppNetwork};

    pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
        cfg.service(scan)
            .service(inbound)
            .service(contact_messages)
            .service(drop_connection);
    }

    /// A simulated phone linked the session.
    #[derive(Debug, Serialize, ToSchema)]
    pub struct Linked {
        pub session_id: Uuid,
        pub phone: String,
        pub jid: String,
    }

    /// A simulated contact's message, on its way.
    #[derive(Debug, Serialize, ToSchema)]
    pub struct InboundSent {
        /// Its WhatsApp id.
        pub id: String,
        pub from: String,
        pub to: String,
    }

    /// A message a simulated contact received, decrypted.
    #[derive(Debug, Serialize, ToSchema)]
    pub struct ContactMessage {
        pub id: String,
        pub from: String,
        /// `text`, `image`, `video`, `audio`, `document`, `location`, `contact`,
        /// `reaction` or `other`.
        #[serde(rename = "type")]
        pub kind: String,
        pub text: Option<String>,
        /// Media metadata (mimetype, url, file length, caption…) when it carries media.
        #[schema(value_type = Option<Object>)]
        pub media: Option<serde_json::Value>,
        /// The message it quotes or reacts to.
        pub reference_id: Option<String>,
        pub received_at_ms: u64,
    }

    /// What a simulated contact received.
    #[derive(Debug, Serialize, ToSchema)]
    pub struct ContactInbox {
        pub items: Vec<ContactMessage>,
    }

    /// How many connections the simulator cut.
    #[derive(Debug, Serialize, ToSchema)]
    pub struct Dropped {
        pub dropped: usize,
    }

    fn simulator(state: &AppState) -> Result<&Simulator, ApiError> {
        match &state.network {
            WhatsAppNetwork::Sandbox(sim) => Ok(sim),
            // The remote simulator has its own control API (`/control/...`).
            WhatsAppNetwork::SandboxRemote { .. } => {
                Err(ApiError::Unavailable("in-process simulator"))
            }
        }
    }

    /// A number of its own for a session's simulated phone: `+1 555` and 7 digits from the
    /// session id, so repeated scans link the same account.
    fn phone_for(session: Uuid) -> String {
        let hash = Sha256::digest(session.as_bytes());
        let n = u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]) % 10_000_000;
        format!("1555{n:07}")
    }

    fn linked_phone(row: &SessionRow) -> Result<String, ApiError> {
        row.phone
            .as_deref()
            .map(|p| p.trim_start_matches('+').to_owned())
            .ok_or(ApiError::Conflict {
                code: ErrorCode::SessionNotLinked,
                message: "the session is not linked to a phone yet; start it and scan its QR"
                    .into(),
            })
    }

    /// The number belongs to another tenant: on the simulated network, as on WhatsApp, every
    /// device linked to a number (and every message written from it) is that number's.
    fn phone_in_use(phone: &str) -> ApiError {
        ApiError::Conflict {
            code: ErrorCode::PhoneInUse,
            message: format!("+{phone} belongs to another tenant's session; use another number"),
        }
    }

    /// The tenant a simulated number belongs to, if any.
    async fn phone_owner(state: &AppState, phone: &str) -> Result<Option<Uuid>, ApiError> {
        use crate::schema::sandbox_phones;
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        let mut conn = state.db.get().await?;
        Ok(sandbox_phones::table
            .find(phone)
            .select(sandbox_phones::tenant_id)
            .first::<Uuid>(&mut conn)
            .await
            .optional()?)
    }

    /// Gives `phone` to `tenant_id` unless another tenant has it (first claim wins, once).
    async fn claim_phone(state: &AppState, tenant_id: Uuid, phone: &str) -> Result<(), ApiError> {
        use crate::schema::sandbox_phones;
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        let mut conn = state.db.get().await?;
        diesel::insert_into(sandbox_phones::table)
            .values((
                sandbox_phones::phone.eq(phone),
                sandbox_phones::tenant_id.eq(tenant_id),
            ))
            .on_conflict_do_nothing()
            .execute(&mut conn)
            .await?;
        drop(conn);
        match phone_owner(state, phone).await? {
            Some(owner) if owner == tenant_id => Ok(()),
            _ => Err(phone_in_use(phone)),
        }
    }

    #[derive(Debug, Default, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ScanBody {
        /// The simulated phone's number (E.164). Default: one derived from the session.
        pub phone: Option<String>,
    }

    /// A simulated phone scans the session's current QR code; the session links and connects.
    #[utoipa::path(
        tag = "sandbox",
        params(SessionPath),
        request_body(content = Option<ScanBody>, description = "Optional"),
        responses((status = 200, description = "Linked", body = Linked), CommonErrors),
        security(("api_key" = []))
    )]
    #[post("/sandbox/sessions/{session_id}/scan")]
    pub async fn scan(
        caller: Caller,
        state: web::Data<AppState>,
        path: web::Path<SessionPath>,
        body: OptionalJson<ScanBody>,
    ) -> Result<HttpResponse, ApiError> {
        let body = body.into_inner().unwrap_or_default();
        let phone = match body.phone.as_deref() {
            Some(p) => parse_phone(p, "phone")?,
            None => phone_for(path.session_id),
        };
        let (row, _) = load_for(&state, &caller, path.session_id).await?;
        let qr = match (row.session_status()?, &row.qr_code) {
            (wagate_actors::session::SessionStatus::Qr, Some(qr)) => qr.clone(),
            _ => {
                return Err(ApiError::Conflict {
                    code: ErrorCode::SessionNotInQrState,
                    message: format!(
                        "the session is {}; start it and scan while it shows a QR code",
                        row.status
                    ),
                });
            }
        };
        claim_phone(&state, row.tenant_id, &phone).await?;
        let jid =
            simulator(&state)?
                .scan_qr(&qr, &phone)
                .await
                .map_err(|e| ApiError::Conflict {
                    code: ErrorCode::ScanFailed,
                    message: format!("the simulated phone could not scan this QR: {e}"),
                })?;
        Ok(HttpResponse::Ok().json(Linked {
            session_id: row.id,
            phone: format!("+{phone}"),
            jid: jid.to_string(),
        }))
    }

    #[derive(Debug, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct InboundBody {
        pub session_id: Uuid,
        /// The simulated contact's number (E.164).
        pub from: String,
        pub text: String,
    }

    /// A simulated contact sends a text, end-to-end encrypted, to the session's account.
    #[utoipa::path(
        tag = "sandbox",
        request_body = InboundBody,
        responses((status = 202, description = "Sent", body = InboundSent), CommonErrors),
        security(("api_key" = []))
    )]
    #[post("/sandbox/inbound")]
    pub async fn inbound(
        caller: Caller,
        state: web::Data<AppState>,
        // The text is what a contact sends, NULs and all (see `ContactJson`).
        body: ContactJson<InboundBody>,
    ) -> Result<HttpResponse, ApiError> {
        let body = body.into_inner();
        let from = parse_phone(&body.from, "from")?;
        if body.text.is_empty() || body.text.chars().count() > 4096 {
            return Err(ApiError::validation("text", "must be 1 to 4096 characters"));
        }
        let (row, _) = load_for(&state, &caller, body.session_id).await?;
        let to = linked_phone(&row)?;
        if phone_owner(&state, &from)
            .await?
            .is_some_and(|owner| owner != row.tenant_id)
        {
            return Err(phone_in_use(&from));
        }
        let id = simulator(&state)?
            .inject_text(&from, &to, &body.text)
            .await
            .map_err(|e| ApiError::Conflict {
                code: ErrorCode::InboundFailed,
                message: format!("the simulated contact could not send: {e}"),
            })?;
        Ok(HttpResponse::Accepted().json(InboundSent {
            id,
            from: format!("+{from}"),
            to: format!("+{to}"),
        }))
    }

    #[derive(Debug, Deserialize, IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct ContactPath {
        /// E.164, `+` optional in the path.
        pub phone: String,
    }

    /// What a simulated contact received from the caller's own sessions (decrypted).
    #[utoipa::path(
        tag = "sandbox",
        params(ContactPath),
        responses((status = 200, description = "Messages", body = ContactInbox), CommonErrors),
        security(("api_key" = []))
    )]
    #[get("/sandbox/contacts/{phone}/messages")]
    pub async fn contact_messages(
        caller: Caller,
        state: web::Data<AppState>,
        path: web::Path<ContactPath>,
    ) -> Result<HttpResponse, ApiError> {
        let raw = path.phone.trim();
        let raw = if raw.starts_with('+') {
            raw.to_owned()
        } else {
            format!("+{raw}")
        };
        let contact = parse_phone(&raw, "phone")?;
        // The senders this caller may see: the phones of its own sessions.
        let own: Vec<String> = {
            use crate::schema::sessions;
            use diesel::prelude::*;
            use diesel_async::RunQueryDsl;
            let mut conn = state.db.get().await?;
            let mut q = sessions::table
                .filter(sessions::phone.is_not_null())
                .select(sessions::phone)
                .into_boxed();
            if let Caller::Tenant { tenant_id, .. } = &caller {
                q = q.filter(sessions::tenant_id.eq(*tenant_id));
            }
            q.load::<Option<String>>(&mut conn)
                .await?
                .into_iter()
                .flatten()
                .map(|p| p.trim_start_matches('+').to_owned())
                .collect()
        };
        let items: Vec<_> = simulator(&state)?
            .contact_inbox(&contact)
            .into_iter()
            .filter(|m| own.contains(&m.from))
            .map(|m| ContactMessage {
                id: m.id,
                from: format!("+{}", m.from),
                kind: m.kind,
                text: m.text,
                media: m.media,
                reference_id: m.reference_id,
                received_at_ms: m.received_at_ms,
            })
            .collect();
        Ok(HttpResponse::Ok().json(ContactInbox { items }))
    }

    /// The simulator cuts the session's connection; the session must reconnect by itself.
    #[utoipa::path(
        tag = "sandbox",
        params(SessionPath),
        responses((status = 200, description = "Dropped", body = Dropped), CommonErrors),
        security(("api_key" = []))
    )]
    #[post("/sandbox/sessions/{session_id}/drop")]
    pub async fn drop_connection(
        state: web::Data<AppState>,
        session: ScopedSession,
    ) -> Result<HttpResponse, ApiError> {
        let row = session.row;
        let phone = linked_phone(&row)?;
        let dropped = simulator(&state)?.drop_connections(&phone);
        Ok(HttpResponse::Ok().json(Dropped { dropped }))
    }
}
