//! The route table: every capability mounts its own routes (`routes(cfg)` in its module),
//! once, and that one registration feeds both the HTTP server and the OpenAPI document.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use utoipa::OpenApi;
use utoipa_actix_web::service_config::ServiceConfig;
use utoipa_actix_web::{AppExt, scope};

use super::server::RunOptions;
use super::state::AppState;
use crate::http::json::BodyLimit;
use crate::http::openapi::ApiDoc;
use crate::http::{self as plumbing, RequestTimeout};
use crate::{
    admin, ai, auth, chats, compat, contacts, events, groups, media, messages, ops, sandbox,
    sessions, telemetry, tenants, webhooks,
};

/// Every documented route, registered once for serving and for the OpenAPI document.
fn routes(cfg: &mut ServiceConfig) {
    cfg.configure(ops::routes).configure(auth::routes);
    // Order matters only where two routes could match one path; each module lists its own
    // fixed segments (`chats/bulk`) before its captures (`chats/{chat}`).
    cfg.service(
        scope::scope("/api/v1")
            // Inside the authentication: the audit log knows who is calling.
            .wrap(from_fn(crate::audit::audit_middleware))
            .wrap(from_fn(auth::auth_middleware))
            .configure(tenants::routes)
            .configure(crate::members::routes)
            .configure(crate::audit::routes)
            .configure(crate::crm::routes)
            .configure(crate::notifications::routes)
            .configure(crate::quick_replies::routes)
            .configure(crate::stats::routes)
            .configure(crate::tiers::routes)
            .configure(sessions::routes)
            .configure(media::routes)
            .configure(messages::routes)
            .configure(chats::routes)
            .configure(contacts::routes)
            .configure(groups::routes)
            .configure(events::routes)
            .configure(webhooks::routes)
            .configure(ai::routes)
            .configure(crate::automation::routes)
            .configure(admin::routes)
            .configure(sandbox::routes),
    );
}

/// The OpenAPI document, built from the same registration as the served routes.
pub fn build_openapi() -> utoipa::openapi::OpenApi {
    let (_, api) = App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi())
        .configure(routes)
        .split_for_parts();
    api
}

pub(super) fn http_server(
    state: web::Data<AppState>,
    accepts: web::Data<messages::accepts::AcceptWriter>,
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
    options: &RunOptions,
) -> anyhow::Result<Server> {
    let app_settings = state.settings.application.clone();
    let shutdown_secs = state.settings.shutdown.timeout_secs;
    let is_tls = tls.is_some();
    let body_limit = web::Data::new(BodyLimit(app_settings.body_limit_bytes));
    let timeout = web::Data::new(RequestTimeout(Duration::from_secs(
        app_settings.request_timeout_secs,
    )));
    let origins = app_settings.cors_allowed_origins.clone();
    let openapi = web::Data::new(build_openapi());

    let server = HttpServer::new(move || {
        let (app, _) = App::new()
            .into_utoipa_app()
            .app_data(state.clone())
            .app_data(accepts.clone())
            .app_data(body_limit.clone())
            .app_data(timeout.clone())
            .app_data(openapi.clone())
            .app_data(web::PathConfig::default().error_handler(crate::error::path_error_handler))
            .app_data(web::QueryConfig::default().error_handler(crate::error::query_error_handler))
            .configure(routes)
            .split_for_parts();
        #[cfg(feature = "test-hooks")]
        let app = app.service(crate::test_hooks::slow).service(
            // Outside the documented API, beside the other test hooks.
            web::scope("/__test/admin")
                .wrap(from_fn(auth::auth_middleware))
                .service(admin::faults::inject)
                .service(crate::test_hooks::emit_events),
        );
        // The docs page's own files: not part of the API, so not in its document; nor are
        // the dashboard's or the legacy routes.
        app.service(crate::http::openapi::docs_asset)
            .configure(crate::dashboard::routes)
            .configure(compat::routes)
            .default_service(web::to(plumbing::fallback))
            .wrap(from_fn(plumbing::timeout_middleware))
            .wrap(from_fn(plumbing::refuse_nul_middleware))
            .wrap(plumbing::cors(&origins))
            .wrap(plumbing::security_headers(is_tls))
            .wrap(from_fn(crate::metrics::http_metrics_middleware))
            .wrap(from_fn(telemetry::request_id_middleware))
    })
    .shutdown_timeout(shutdown_secs)
    .client_request_timeout(Duration::from_secs(10))
    .client_disconnect_timeout(Duration::from_secs(5));
    let server = if options.handle_signals {
        server
    } else {
        server.disable_signals()
    };
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config)?,
        None => server.listen(listener)?,
    };
    Ok(server.run())
}
