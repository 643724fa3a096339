//! `GET /api/v1/events`: a tenant's events over a WebSocket, one actor per connection.
//!
//! `?since=<id>` replays what is stored after that id, then streams live, with no gap and
//! no duplicate: the connection subscribes first, replays from the store, and sends a live
//! event only when it is the next id; anything out of order is first filled from the store.
//! A consumer that cannot keep up is closed with the close reason `slow_consumer`, never
//! buffered without bound.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{HttpRequest, HttpResponse, get, web};
use actix_web_actors::ws;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;
use wagate_actors::notification::{Deliver, Eviction, StoredEvent, Subscribe, Unsubscribe};

use super::store;
use super::{EventHub, stored};
use crate::app::AppState;
use crate::auth::Caller;
use crate::db::DbPool;
use crate::error::ApiError;

/// How often the server pings a connection.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// A connection that answers no ping for this long is closed.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Live events that may wait for one connection (its mailbox); one more and it is dropped.
pub const EVENT_BUFFER: usize = 1024;
/// How often an open connection checks that its credential still stands (the API key not
/// revoked, its tenant not deleted), on any node: the key's row is the truth.
pub const CREDENTIAL_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Events read from the store per replay query.
const REPLAY_PAGE: i64 = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsStreamQuery {
    /// Replay stored events after this id, then stream live.
    #[param(minimum = 0)]
    pub since: Option<i64>,
    /// Only this session's events.
    pub session_id: Option<String>,
    /// Only these event types, comma-separated (`message.received,session.connected`).
    pub types: Option<String>,
    /// The tenant to follow (admin key only; a tenant always follows its own).
    pub tenant_id: Option<Uuid>,
    /// A JWT from `POST /api/v1/auth/token`, for clients that cannot set headers.
    pub token: Option<String>,
}

/// Stream events over a WebSocket (`Upgrade: websocket`).
#[utoipa::path(
    tag = "events",
    params(EventsStreamQuery),
    responses((status = 101, description = "Switching to the WebSocket protocol"), crate::http::openapi::CommonErrors),
    security(("api_key" = []))
)]
#[get("/events")]
pub async fn stream_events(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<EventsStreamQuery>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    start(caller, state, query.into_inner(), req, payload).await
}

/// Shared by the API route and The legacy session-management API's `/api/whatsapp/events`.
pub async fn start(
    caller: Caller,
    state: web::Data<AppState>,
    query: EventsStreamQuery,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if let Some(since) = query.since
        && since < 0
    {
        return Err(ApiError::validation(
            "since",
            "must be an event id (0 or more)",
        ));
    }
    let session = match query.session_id.as_deref() {
        None => None,
        Some(raw) => {
            let id = Uuid::parse_str(raw)
                .map_err(|_| ApiError::validation("session_id", "must be a session id (UUID)"))?;
            Some(crate::sessions::load_for(&state, &caller, id).await?.0)
        }
    };
    let tenant_id = match (&caller, &session, query.tenant_id) {
        (Caller::Tenant { tenant_id, .. }, _, _) => *tenant_id,
        (Caller::Admin, Some(s), _) => s.tenant_id,
        (Caller::Admin, None, Some(t)) => t,
        (Caller::Admin, None, None) => {
            return Err(ApiError::validation(
                "tenant_id",
                "the admin key must name the tenant (or a session) to follow",
            ));
        }
    };
    if let (Caller::Tenant { .. }, Some(t)) = (&caller, query.tenant_id)
        && t != tenant_id
    {
        return Err(ApiError::NotFound("tenant"));
    }
    let types = query.types.as_deref().map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect::<HashSet<_>>()
    });
    let (key_id, expires_at, is_member) = match caller {
        Caller::Tenant {
            key_id,
            expires_at,
            member,
            ..
        } => (Some(key_id), expires_at, member.is_some()),
        Caller::Admin => (None, None, false),
    };
    let actor = EventStream {
        key_id,
        is_member,
        expires_at,
        tenant_id,
        session: session.map(|s| s.id),
        types,
        since: query.since,
        last_id: 0,
        catching_up: true,
        pending: BTreeMap::new(),
        heartbeat: Instant::now(),
        db: state.db.clone(),
        hub: state.events.clone(),
        subscription: None,
        eviction: Arc::new(Eviction::default()),
    };
    ws::start(actor, &req, payload).map_err(|e| ApiError::validation("upgrade", e.to_string()))
}

pub struct EventStream {
    /// The tenant API key the connection was opened with (directly or through a JWT); the
    /// admin key has none. Checked every [`CREDENTIAL_CHECK_INTERVAL`].
    key_id: Option<Uuid>,
    /// `key_id` names a member (a login token), not an API key.
    is_member: bool,
    /// A JWT's expiry (Unix seconds): the connection closes then.
    expires_at: Option<u64>,
    tenant_id: Uuid,
    session: Option<Uuid>,
    types: Option<HashSet<String>>,
    since: Option<i64>,
    /// The last event id handled (sent or filtered out).
    last_id: i64,
    /// Reading from the store; live events wait in `pending` meanwhile.
    catching_up: bool,
    pending: BTreeMap<i64, Arc<StoredEvent>>,
    heartbeat: Instant,
    db: DbPool,
    hub: EventHub,
    subscription: Option<u64>,
    eviction: Arc<Eviction>,
}

impl EventStream {
    fn wanted(&self, e: &StoredEvent) -> bool {
        self.session.is_none_or(|s| e.session_id == Some(s))
            && self.types.as_ref().is_none_or(|t| t.contains(&e.kind))
            && self.addressed_to_me(e)
    }

    /// A notification for one member reaches that member only (and the tenant's API keys,
    /// which see everything of the tenant); other members' streams skip it.
    fn addressed_to_me(&self, e: &StoredEvent) -> bool {
        if !self.is_member || e.kind != super::NOTIFICATION_CREATED {
            return true;
        }
        let for_member = serde_json::from_str::<serde_json::Value>(&e.json)
            .ok()
            .and_then(|v| {
                v["data"]["member_id"]
                    .as_str()
                    .and_then(|m| m.parse::<Uuid>().ok())
            });
        for_member.is_none_or(|m| Some(m) == self.key_id)
    }

    fn emit(&mut self, ctx: &mut ws::WebsocketContext<Self>, e: &StoredEvent) {
        if e.id <= self.last_id {
            return;
        }
        self.last_id = e.id;
        if self.wanted(e) {
            ctx.text(&*e.json);
            crate::metrics::EVENTS_STREAMED.inc();
        }
    }

    /// Closes the connection because its credential no longer stands.
    fn close_unauthorized(&mut self, ctx: &mut ws::WebsocketContext<Self>, reason: &str) {
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::Policy,
            description: Some(reason.to_owned()),
        }));
        ctx.stop();
    }

    /// Closes at the token's expiry, and whenever the key is found revoked or gone.
    fn watch_credential(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if let Some(exp) = self.expires_at {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            let left = Duration::from_secs_f64((exp as f64 - now).max(0.0));
            ctx.run_later(left, |act, ctx| {
                act.close_unauthorized(
                    ctx,
                    "token_expired: get a new token and reconnect with ?since",
                );
            });
        }
        let Some(key_id) = self.key_id else {
            return;
        };
        let is_member = self.is_member;
        ctx.run_interval(CREDENTIAL_CHECK_INTERVAL, move |act, ctx| {
            let (db, tenant) = (act.db.clone(), act.tenant_id);
            ctx.spawn(
                async move {
                    let mut conn = db.get().await.ok()?;
                    if is_member {
                        return crate::members::store::find_active(&mut conn, key_id)
                            .await
                            .ok()
                            .map(|m| m.is_some_and(|m| m.tenant_id == tenant));
                    }
                    crate::tenants::store::find_active_key(&mut conn, key_id)
                        .await
                        .ok()
                        .map(|key| key.is_some_and(|k| k.tenant_id == tenant))
                }
                .into_actor(act)
                .map(|standing, act, ctx| {
                    // A store that cannot answer closes nothing: the next check asks again.
                    if standing == Some(false) {
                        act.close_unauthorized(
                            ctx,
                            "credential_revoked: the API key was revoked or its tenant deleted",
                        );
                    }
                }),
            );
        });
    }

    fn close_slow(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        crate::metrics::EVENT_SUBSCRIBERS_DROPPED.inc();
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::Policy,
            description: Some(format!(
                "slow_consumer: more than {EVENT_BUFFER} events waited for this connection; \
                 reconnect with ?since={} to resume",
                self.last_id
            )),
        }));
        ctx.stop();
    }

    /// Reads the store after `last_id` until it has caught up, then sends what waited.
    fn catch_up(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        self.catching_up = true;
        let db = self.db.clone();
        let (tenant, after) = (self.tenant_id, self.last_id);
        ctx.spawn(
            async move {
                let mut conn = db.get().await.map_err(|e| e.to_string())?;
                store::tenant_events(&mut conn, tenant, after, None, REPLAY_PAGE)
                    .await
                    .map_err(|e| e.to_string())
            }
            .into_actor(self)
            .map(|res, act, ctx| match res {
                Ok(rows) => {
                    let full = rows.len() as i64 == REPLAY_PAGE;
                    let found = !rows.is_empty();
                    for row in rows {
                        act.emit(ctx, &stored(row));
                    }
                    if full {
                        act.catch_up(ctx);
                    } else {
                        act.drain_pending(ctx, found);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "replaying events");
                    ctx.close(Some(ws::CloseReason {
                        code: ws::CloseCode::Again,
                        description: Some("store_unavailable: reconnect with ?since".into()),
                    }));
                    ctx.stop();
                }
            }),
        );
    }

    /// Sends the live events that waited, in order. A hole before the next one is filled
    /// from the store first (`found`: the last read found something, so read again; if it
    /// found nothing the hole is permanent, e.g. purged history, and is skipped).
    fn drain_pending(&mut self, ctx: &mut ws::WebsocketContext<Self>, found: bool) {
        self.catching_up = false;
        while let Some((&id, _)) = self.pending.first_key_value() {
            if id > self.last_id + 1 && found {
                self.catch_up(ctx);
                return;
            }
            if let Some((_, e)) = self.pending.pop_first() {
                self.emit(ctx, &e);
            }
        }
    }
}

impl Actor for EventStream {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(EVENT_BUFFER);
        self.watch_credential(ctx);
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, ctx| {
            if act.eviction.is_evicted() {
                act.close_slow(ctx);
                return;
            }
            if act.heartbeat.elapsed() > CLIENT_TIMEOUT {
                ctx.close(Some(ws::CloseReason {
                    code: ws::CloseCode::Away,
                    description: Some("heartbeat_timeout".into()),
                }));
                ctx.stop();
                return;
            }
            ctx.ping(b"");
        });
        let subscribe = Subscribe {
            tenant_id: self.tenant_id,
            subscriber: ctx.address().recipient(),
            eviction: self.eviction.clone(),
        };
        let notifier = self.hub.notifier.clone();
        let db = self.db.clone();
        let (tenant, since) = (self.tenant_id, self.since);
        // Subscribe before reading the store, so nothing falls between the two.
        ctx.wait(
            async move {
                let id = notifier.send(subscribe).await.ok();
                let start = match since {
                    Some(s) => Ok(s),
                    None => match db.get().await {
                        Ok(mut conn) => crate::tenants::store::last_event_id(&mut conn, tenant)
                            .await
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    },
                };
                (id, start)
            }
            .into_actor(self)
            .map(|(id, start), act, ctx| {
                act.subscription = id;
                match start {
                    Ok(start) => {
                        act.last_id = start;
                        if act.since.is_some() {
                            act.catch_up(ctx);
                        } else {
                            act.drain_pending(ctx, true);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "starting an event stream");
                        ctx.stop();
                    }
                }
            }),
        );
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        if let Some(id) = self.subscription.take() {
            self.hub.notifier.do_send(Unsubscribe {
                tenant_id: self.tenant_id,
                id,
            });
        }
        Running::Stop
    }
}

impl Handler<Deliver> for EventStream {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        if self.eviction.is_evicted() {
            self.close_slow(ctx);
            return;
        }
        let e = msg.0;
        if e.id <= self.last_id {
            return;
        }
        if self.catching_up || e.id > self.last_id + 1 {
            if self.pending.len() >= EVENT_BUFFER {
                self.close_slow(ctx);
                return;
            }
            self.pending.insert(e.id, e);
            if !self.catching_up {
                self.catch_up(ctx);
            }
            return;
        }
        self.emit(ctx, &e);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for EventStream {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        match msg {
            Ok(ws::Message::Ping(p)) => {
                self.heartbeat = Instant::now();
                ctx.pong(&p);
            }
            Ok(ws::Message::Pong(_)) => self.heartbeat = Instant::now(),
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Ok(_) => self.heartbeat = Instant::now(),
            Err(_) => ctx.stop(),
        }
    }
}
