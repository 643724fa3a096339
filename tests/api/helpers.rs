//! `spawn_app()`: the real server on a random port with a fresh database of its own.
//!
//! The database comes from `TEST_DATABASE_URL` (or `DATABASE_URL`): a server URL whose
//! database is only used to create `wagate_test_<uuid>` databases. Without either, a private
//! cluster under `target/test-private-pg` serves the same purpose.

use std::collections::HashMap;
use std::sync::LazyLock;

use actix_web::dev::ServerHandle;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use reqwest::{Client, RequestBuilder, Response};
use secrecy::SecretString;
use serde_json::{Value, json};
use uuid::Uuid;
use wagate::app::{Application, RunOptions};
use wagate::configuration::{Overrides, Settings};

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";
/// The key store's key (base64 of 32 bytes): tests never lean on a generated one.
pub const STORE_KEY: &str = "dGVzdC1zdG9yZS1rZXktMDEyMzQ1Njc4OWFiY2RlZjA=";

static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var("TEST_LOG").is_ok() {
        let s = Settings::load_from(&Overrides::default(), &HashMap::new()).expect("settings");
        wagate::telemetry::init(&s.log);
    }
});

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub client: Client,
    pub db_url: String,
    handle: ServerHandle,
    pub join: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// The server's shared state: its supervision tree and WhatsApp network.
    #[cfg_attr(not(feature = "sandbox"), allow(dead_code))]
    pub state: actix_web::web::Data<wagate::app::AppState>,
}

pub use crate::database::fresh_database;

/// Settings for a test: local defaults, port 0, known secrets, a fresh database.
pub async fn test_settings() -> Settings {
    let mut s = Settings::load_from(&Overrides::default(), &HashMap::new()).expect("settings");
    s.application.port = 0;
    s.auth.admin_key = Some(SecretString::from(ADMIN_KEY));
    s.auth.jwt_secret = Some(SecretString::from(JWT_SECRET));
    s.store.encryption_key = Some(SecretString::from(STORE_KEY));
    // Test servers share the working directory: none keeps its simulated network there.
    s.sandbox.persist_network = false;
    s.database.url = Some(SecretString::from(fresh_database().await));
    s.database.pool_size = 8;
    s
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings().await;
    customize(&mut settings);
    spawn_with_settings(settings).await
}

pub async fn spawn_with_settings(settings: Settings) -> TestApp {
    spawn_on_network(settings, None).await
}

/// Starts a server on a given WhatsApp network (several gateways on one simulator).
pub async fn spawn_on_network(
    settings: Settings,
    network: Option<wagate::whatsapp_network::WhatsAppNetwork>,
) -> TestApp {
    LazyLock::force(&TRACING);
    let db_url = settings
        .database
        .url
        .as_ref()
        .map(|u| secrecy::ExposeSecret::expose_secret(u).to_owned())
        .unwrap_or_default();
    let scheme = if settings.tls_enabled() {
        "https"
    } else {
        "http"
    };
    let app = Application::build(
        settings.clone(),
        RunOptions {
            handle_signals: false,
            network,
        },
    )
    .await
    .expect("the application builds");
    let port = app.port();
    let state = app.state();
    let handle = app.handle();
    let join = actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        address: format!("{scheme}://127.0.0.1:{port}"),
        port,
        client: Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        db_url,
        handle,
        join: Some(join),
        state,
    }
}

impl TestApp {
    /// A second node of the same fleet: another server on this one's database.
    pub async fn second_node(&self, customize: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = test_settings().await;
        settings.database.url = Some(SecretString::from(self.db_url.clone()));
        settings.sessions.node_id = Some(format!("node-{}", Uuid::new_v4().simple()));
        customize(&mut settings);
        spawn_with_settings(settings).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(self.url(path))
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.client.post(self.url(path))
    }

    pub fn put(&self, path: &str) -> RequestBuilder {
        self.client.put(self.url(path))
    }

    pub fn patch(&self, path: &str) -> RequestBuilder {
        self.client.patch(self.url(path))
    }

    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.client.delete(self.url(path))
    }

    /// GET `path` presenting `credential` as a bearer token.
    pub async fn get_as(&self, path: &str, credential: &str) -> Response {
        self.get(path)
            .bearer_auth(credential)
            .send()
            .await
            .expect("request")
    }

    /// GET `path` as `credential`, expecting 200 and a JSON body.
    pub async fn get_json_as(&self, path: &str, credential: &str) -> Value {
        let res = self.get_as(path, credential).await;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        self.get("/metrics")
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("text")
    }

    /// The value of one sample of `/metrics` (`name` with its labels, as printed), 0 when
    /// it is not there. Metrics are process-wide: compare values before and after.
    pub async fn metric(&self, sample: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// `POST /api/v1/sandbox/inbound` as `key`: the simulated contact `from` writes `text`
    /// to the session's account.
    #[cfg(feature = "sandbox")]
    pub async fn sandbox_inbound(
        &self,
        key: &str,
        session: &str,
        from: &str,
        text: &str,
    ) -> Response {
        self.post("/api/v1/sandbox/inbound")
            .bearer_auth(key)
            .json(&json!({ "session_id": session, "from": from, "text": text }))
            .send()
            .await
            .expect("request")
    }

    /// Runs one SQL statement on the app's database: to put it in a state no API call
    /// leads to (a fault, an expired upload) and see what the API makes of it.
    pub async fn execute_sql(&self, sql: &str) -> usize {
        let mut conn = AsyncPgConnection::establish(&self.db_url)
            .await
            .expect("connect to the app's database");
        diesel::sql_query(sql)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Creates a tenant as the admin; returns (tenant id, its first API key).
    pub async fn create_tenant(&self, name: &str, tier: &str) -> (Uuid, String) {
        let res = self
            .post("/api/v1/tenants")
            .bearer_auth(ADMIN_KEY)
            .json(&json!({ "name": name, "tier": tier }))
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), 201, "tenant creation");
        let body: Value = res.json().await.expect("json");
        let id = body["id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .expect("tenant id");
        (id, body["api_key"].as_str().expect("api_key").to_owned())
    }

    /// Stops the server gracefully; a shutdown that fails fails the test.
    pub async fn stop(&mut self) {
        self.handle.stop(true).await;
        if let Some(join) = self.join.take() {
            join.await
                .expect("the server task")
                .expect("run_until_stopped ends without an error");
        }
    }
}

/// Asserts the API's error shape and code, returning the body.
/// What the test hook `POST /__test/admin/tenants/{id}/events` stores besides the count:
/// events of about `size` bytes, of one session, of type `kind` (default `error`).
#[derive(Default)]
pub struct Emit<'a> {
    pub size: usize,
    pub session: Option<&'a str>,
    pub kind: Option<&'a str>,
}

impl TestApp {
    /// Stores (and publishes, with their webhook deliveries) `count` events for a tenant
    /// through the test hook; returns their ids.
    pub async fn emit_events(&self, tenant: Uuid, count: usize, emit: Emit<'_>) -> Vec<i64> {
        let res = self
            .post(&format!("/__test/admin/tenants/{tenant}/events"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"count": count, "size": emit.size, "session_id": emit.session, "type": emit.kind}))
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), 200);
        res.json::<Value>().await.expect("json")["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_i64().expect("an id"))
            .collect()
    }

    /// The server's OpenAPI document.
    pub async fn openapi(&self) -> Value {
        self.get("/openapi.json")
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json")
    }

    /// Stores and publishes one event of type `kind`; returns its id.
    pub async fn emit_event_of(&self, tenant: Uuid, kind: &str) -> i64 {
        let kind = Emit {
            kind: Some(kind),
            ..Emit::default()
        };
        self.emit_events(tenant, 1, kind).await[0]
    }

    pub(crate) async fn post_json(&self, key: &str, path: &str, body: Value) -> reqwest::Response {
        self.post(path)
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// A read-only key of the tenant that owns `owner_key`.
    pub(crate) async fn read_only_key(&self, tenant: uuid::Uuid, owner_key: &str) -> String {
        let res = self
            .post_json(
                owner_key,
                &format!("/api/v1/tenants/{tenant}/api-keys"),
                json!({"name": "viewer", "role": "read_only"}),
            )
            .await;
        assert_eq!(res.status(), 201);
        let body: Value = res.json().await.unwrap();
        body["key"].as_str().unwrap().to_owned()
    }

    /// The in-process simulator this server's sessions reach.
    #[cfg(feature = "sandbox")]
    pub fn sim(&self) -> wagate::whatsapp_network::Simulator {
        use wagate::whatsapp_network::WhatsAppNetwork;
        match &self.state.network {
            WhatsAppNetwork::Sandbox(s) => s.clone(),
            WhatsAppNetwork::SandboxRemote { ws, .. } => {
                panic!("an in-process simulator, not {ws}")
            }
        }
    }
}

pub async fn assert_error(res: Response, status: u16, code: &str) -> Value {
    assert_eq!(
        res.status().as_u16(),
        status,
        "status for expected `{code}`"
    );
    let request_id = res
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("x-request-id header");
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        ct.starts_with("application/json"),
        "error content type: {ct}"
    );
    let body: Value = res.json().await.expect("error body is JSON");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body["error"]["details"].is_object(), "{body}");
    assert_eq!(
        body["request_id"],
        request_id.as_str(),
        "request_id in body matches header"
    );
    body
}
