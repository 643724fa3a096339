//! Layered configuration: `config/base.yaml`, then `config/<APP_ENVIRONMENT>.yaml`, then an optional
//! `--config FILE`, then `APP_<SECTION>__<KEY>` environment variables, then CLI flags.
//!
//! When no `config/` folder is found (a binary copied elsewhere), the copies compiled into the binary
//! are used, so `wagate` always starts with working defaults.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{Config, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

const EMBEDDED_BASE: &str = include_str!("../config/base.yaml");
const EMBEDDED_LOCAL: &str = include_str!("../config/local.yaml");
const EMBEDDED_PRODUCTION: &str = include_str!("../config/production.yaml");

/// An invalid configuration: names the key so the operator knows what to fix.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Local,
    Production,
}

impl Environment {
    pub fn as_str(&self) -> &'static str {
        match self {
            Environment::Local => "local",
            Environment::Production => "production",
        }
    }
}

impl TryFrom<&str> for Environment {
    type Error = ConfigError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        match value.to_ascii_lowercase().as_str() {
            "local" => Ok(Self::Local),
            "production" => Ok(Self::Production),
            other => Err(ConfigError::new(
                "APP_ENVIRONMENT",
                format!("`{other}` is not an environment; use `local` or `production`"),
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub application: ApplicationSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub auth: AuthSettings,
    pub rate_limit: RateLimitSettings,
    pub log: LogSettings,
    pub shutdown: ShutdownSettings,
    pub store: StoreSettings,
    pub sessions: SessionSettings,
    pub sandbox: SandboxSettings,
    pub messages: MessageSettings,
    pub media: MediaSettings,
    pub webhooks: WebhookSettings,
    pub contacts: ContactSettings,
    pub egress: EgressSettings,
    pub ai: AiSettings,
    #[serde(default)]
    pub automation: AutomationSettings,
    #[serde(default)]
    pub audit: AuditSettings,
    #[serde(default)]
    pub crm: CrmSettings,
    #[serde(default)]
    pub notifications: NotificationSettings,
    #[serde(default)]
    pub tiers: TierCatalogue,
    #[serde(skip, default = "default_environment")]
    pub environment: Environment,
}

fn default_environment() -> Environment {
    Environment::Local
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationSettings {
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub body_limit_bytes: usize,
    pub request_timeout_secs: u64,
    pub cors_allowed_origins: Vec<String>,
    pub tls_cert_path: Option<PathBuf>,
    pub tls_key_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: Option<SecretString>,
    pub pool_size: u32,
    pub connect_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub url: Option<SecretString>,
    pub op_timeout_ms: u64,
    pub retry_interval_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub admin_key: Option<SecretString>,
    pub jwt_secret: Option<SecretString>,
    pub jwt_ttl_secs: u64,
    /// Verified API keys (and tokens' keys) kept in memory, so a request is authenticated
    /// without a database round trip; 0 turns the cache off. The node that revokes a key
    /// drops it at once, every other node as soon as it hears the change (Postgres
    /// LISTEN/NOTIFY, milliseconds).
    pub credential_cache_entries: usize,
    /// The most members a tenant may have.
    #[serde(default = "default_max_members")]
    pub max_members_per_tenant: u32,
}

fn default_max_members() -> u32 {
    500
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub limit: u32,
    pub window_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub enabled: bool,
    pub standard: LimitSettings,
    pub sensitive: LimitSettings,
    pub admin: LimitSettings,
    pub nuclear: LimitSettings,
    pub auth: LimitSettings,
    /// Failed authentications, per client address and per API key prefix; past the limit
    /// every attempt from there (right or wrong) is 429 until the window ends.
    pub failed_auth: LimitSettings,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// Master key (base64 of 32 bytes) that encrypts WhatsApp session keys at rest.
    pub encryption_key: Option<SecretString>,
}

impl StoreSettings {
    /// The key as bytes; `validate` has checked it.
    pub fn key_bytes(&self) -> Option<[u8; 32]> {
        use base64::Engine as _;
        let key = self.encryption_key.as_ref()?;
        base64::engine::general_purpose::STANDARD
            .decode(key.expose_secret().trim())
            .ok()?
            .try_into()
            .ok()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSettings {
    pub node_id: Option<String>,
    pub lease_ttl_secs: u64,
    pub lease_renew_interval_secs: u64,
    pub reconnect_base_ms: u64,
    pub reconnect_cap_secs: u64,
    pub reconnect_max_attempts: u32,
    pub health_check_interval_secs: u64,
    pub qr_timeout_secs: u64,
    pub qr_event_min_interval_secs: u64,
    /// A contact's "typing…" not repeated within this is told as `paused` (`expired`).
    pub chat_state_expiry_ms: u64,
    pub resume_per_second: u32,
    /// Sessions connecting at once while resuming: the next one starts when one of them has
    /// connected (or stopped trying). Bounds the load of a resume, rate or no rate.
    pub resume_concurrency: u32,
    pub orphan_scan_interval_secs: u64,
    pub quotas: TierQuotas,
    pub pools: TierPools,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierQuotas {
    pub standard: u32,
    pub professional: u32,
    pub enterprise: u32,
}

impl TierQuotas {
    pub fn for_tier(&self, tier: wagate_actors::tier::Tier) -> u32 {
        use wagate_actors::tier::Tier;
        match tier {
            Tier::Standard => self.standard,
            Tier::Professional => self.professional,
            Tier::Enterprise => self.enterprise,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    pub sessions_per_arbiter: usize,
    pub idle_reclaim_secs: u64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierPools {
    pub standard: PoolSettings,
    pub professional: PoolSettings,
    pub enterprise: PoolSettings,
}

impl SessionSettings {
    /// This node's name: configured, or the host name.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "wagate".to_owned())
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSettings {
    /// Messages a session sends per minute, by its tenant's tier (a tenant may override it).
    /// 0: unpaced.
    pub rate_per_minute: TierQuotas,
    /// Sends in flight at once on a node, per tier (the per-tier priority queues of the product brief): a saturated
    /// tier waits for its own slots and never holds back another.
    pub send_slots: TierQuotas,
    /// Outgoing messages a tenant may have waiting; one more is 429.
    pub max_queued_per_tenant: u32,
    /// A queued message whose session stays unconnected this long fails.
    pub not_connected_timeout_secs: u64,
    pub max_text_chars: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaSettings {
    /// Largest media file accepted, by upload or by URL.
    pub max_bytes: usize,
    /// A `media_url` must answer completely within this time.
    pub fetch_timeout_secs: u64,
    /// Fetch `media_url`s on loopback and private addresses (tests, private networks).
    pub allow_private_urls: bool,
    /// Uploads no queued message needs any more are deleted after this long.
    pub retention_secs: u64,
    /// Largest received media the download route fetches from WhatsApp.
    pub max_download_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Deliver to loopback and private addresses (tests, private networks).
    pub allow_private_targets: bool,
    /// Delays before the 2nd, 3rd, … attempt; after the last one a delivery is dead.
    pub retry_schedule_secs: Vec<u64>,
    pub timeout_secs: u64,
    /// Requests in flight to one endpoint at a time.
    pub max_in_flight_per_endpoint: usize,
    /// Deliveries claimed per poll of the outbox.
    pub batch_size: i64,
    pub poll_interval_ms: u64,
}

/// The one policy for URLs a tenant supplies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressSettings {
    pub allow_private_targets: bool,
}

/// A model provider's platform credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiProviderSettings {
    pub api_key: Option<SecretString>,
    pub base_url: String,
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    pub input: f64,
    pub output: f64,
}

/// Boards and cards (`crm.*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrmSettings {
    pub max_boards_per_tenant: u32,
    pub max_cards_per_board: u32,
    /// How often boards that take new chats look for them.
    pub auto_card_interval_ms: u64,
}

impl Default for CrmSettings {
    fn default() -> Self {
        CrmSettings {
            max_boards_per_tenant: 100,
            max_cards_per_board: 100_000,
            auto_card_interval_ms: 1000,
        }
    }
}

/// What a tier costs and the quotas not kept elsewhere (`tiers.*`). A tier's other quotas
/// live with what they limit: `sessions.quotas`, `messages.rate_per_minute`,
/// `ai.tokens_per_day`, `ai.calls_per_minute`, and its pool in `sessions.pools`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierPlan {
    pub price_usd_per_month: f64,
    /// Kanban boards (never more than `crm.max_boards_per_tenant`).
    pub boards: u32,
    /// User functions.
    pub functions: u32,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TierCatalogue {
    pub standard: TierPlan,
    pub professional: TierPlan,
    pub enterprise: TierPlan,
}

impl Default for TierCatalogue {
    fn default() -> Self {
        let plan = |price: f64, boards, functions, description: &str| TierPlan {
            price_usd_per_month: price,
            boards,
            functions,
            description: description.to_owned(),
        };
        TierCatalogue {
            standard: plan(29.0, 3, 5, "One number, a shared connection pool (10:1)."),
            professional: plan(99.0, 20, 50, "A few numbers, a semi-dedicated pool (3:1)."),
            enterprise: plan(
                499.0,
                100,
                500,
                "Many numbers, dedicated connections (1:1).",
            ),
        }
    }
}

impl TierCatalogue {
    pub fn for_tier(&self, tier: wagate_actors::tier::Tier) -> &TierPlan {
        use wagate_actors::tier::Tier;
        match tier {
            Tier::Standard => &self.standard,
            Tier::Professional => &self.professional,
            Tier::Enterprise => &self.enterprise,
        }
    }
}

/// Notifications (`notifications.*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationSettings {
    /// How often the NotificationActor looks for system events to turn into notifications.
    pub poll_interval_ms: u64,
    /// Notifications without an expiry are removed after this many days.
    pub retention_days: u32,
}

impl Default for NotificationSettings {
    fn default() -> Self {
        NotificationSettings {
            poll_interval_ms: 500,
            retention_days: 90,
        }
    }
}

/// The audit log (`audit.*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Entries are kept this many days.
    pub retention_days: u32,
    /// Entries waiting to be written; past this (the database far behind) they are dropped
    /// and counted rather than slowing requests.
    pub buffer: usize,
    /// Entries written per statement, and how long the writer waits to fill a batch.
    pub batch_size: usize,
    pub flush_ms: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            retention_days: 365,
            buffer: 10_000,
            batch_size: 500,
            flush_ms: 200,
        }
    }
}

/// Triggers, flows and the TriggerActor (`automation.*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutomationSettings {
    /// How often the TriggerActor looks for events, executions and schedules when idle.
    pub poll_interval_ms: u64,
    /// How long a claimed event or execution is held before another node may take it.
    pub claim_lock_secs: u64,
    /// Executions run at once per node.
    pub max_executions_in_flight: usize,
    /// What automation may send one chat per minute: two bots never talk forever.
    pub max_sends_per_chat_per_minute: u32,
    /// Finished executions (with their steps) are kept this many days.
    pub execution_retention_days: u32,
    /// The most triggers and the most flows a tenant may have.
    pub max_triggers_per_tenant: u32,
    pub max_flows_per_tenant: u32,
}

impl Default for AutomationSettings {
    fn default() -> Self {
        AutomationSettings {
            poll_interval_ms: 100,
            claim_lock_secs: 60,
            max_executions_in_flight: 32,
            max_sends_per_chat_per_minute: 10,
            execution_retention_days: 30,
            max_triggers_per_tenant: 5000,
            max_flows_per_tenant: 1000,
        }
    }
}

/// AI agents and the AiActor (`ai.*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiSettings {
    pub gemini: AiProviderSettings,
    pub openai: AiProviderSettings,
    pub max_concurrent_calls: usize,
    pub request_timeout_secs: u64,
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub max_retry_wait_secs: u64,
    pub circuit_failures: u32,
    pub circuit_open_secs: u64,
    pub cache_entries: usize,
    pub cache_ttl_secs: u64,
    pub human_pause_secs: u64,
    pub max_replies_per_chat_per_minute: u32,
    pub context_idle_secs: u64,
    pub typing_ms_per_char: u64,
    pub typing_cap_ms: u64,
    pub poll_interval_ms: u64,
    pub claim_lock_secs: u64,
    pub calls_per_minute: TierQuotas,
    pub tokens_per_day: TierQuotas,
    #[serde(default)]
    pub prices: std::collections::HashMap<String, ModelPrice>,
}

impl Settings {
    /// Tenant-supplied URLs may target private addresses (the egress policy, or either of
    /// its older names).
    pub fn allow_private_targets(&self) -> bool {
        self.egress.allow_private_targets
            || self.webhooks.allow_private_targets
            || self.media.allow_private_urls
    }
}

/// Live lookups of contacts (numbers on WhatsApp, profiles).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactSettings {
    /// A number's check result is reused this long before WhatsApp is asked again.
    pub check_cache_secs: u64,
    /// Numbers one session may look up on WhatsApp per minute (cached answers are free):
    /// WhatsApp bans accounts that probe many numbers.
    pub checks_per_minute: u32,
    /// Numbers one check request may name.
    pub max_numbers_per_check: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSettings {
    pub simulator_url: Option<String>,
    /// Where that simulator serves its media (`wagate-sim --control`'s address): media
    /// upload and download go there. Without it, media fails as it would offline.
    #[serde(default)]
    pub simulator_media_url: Option<String>,
    /// Keep the in-process simulator's network (accounts, linked devices, queues, media) in
    /// `<data_dir>/sandbox-network`, so a restarted sandbox resumes its sessions with no
    /// new QR and delivers what was queued. Off: the network lives in memory only.
    #[serde(default = "default_true")]
    pub persist_network: bool,
}

fn default_true() -> bool {
    true
}

/// Values given on the command line; they win over every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub port: Option<u16>,
    pub data_dir: Option<PathBuf>,
}

impl Settings {
    /// Loads the configuration from the process environment.
    pub fn load(overrides: &Overrides) -> Result<Settings, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_from(overrides, &env)
    }

    /// Loads the configuration from the given environment variables (tests pass their own).
    pub fn load_from(
        overrides: &Overrides,
        env: &HashMap<String, String>,
    ) -> Result<Settings, ConfigError> {
        let environment = match env.get("APP_ENVIRONMENT") {
            Some(v) => Environment::try_from(v.as_str())?,
            None => Environment::Local,
        };
        let config_dir = env
            .get("APP_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("config"));

        let mut builder = Config::builder();
        builder = add_layer(builder, &config_dir, "base", EMBEDDED_BASE);
        let (env_name, env_embedded) = match environment {
            Environment::Local => ("local", EMBEDDED_LOCAL),
            Environment::Production => ("production", EMBEDDED_PRODUCTION),
        };
        builder = add_layer(builder, &config_dir, env_name, env_embedded);
        if let Some(file) = &overrides.config_file {
            if !file.is_file() {
                return Err(ConfigError::new(
                    "--config",
                    format!("{} is not a readable file", file.display()),
                ));
            }
            builder = builder.add_source(File::from(file.as_path()).format(FileFormat::Yaml));
        }
        // Only APP_<SECTION>__<KEY> variables are configuration; APP_ENVIRONMENT and
        // APP_CONFIG_DIR choose files and are not keys.
        let mut app_vars: HashMap<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("APP_") && k.contains("__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // List settings are read here, not by the config crate: it takes a one-element list
        // (`5`) for a number and has no JSON form.
        let mut lists = Vec::new();
        for (var, key) in LIST_SETTINGS {
            if let Some(value) = app_vars.remove(var) {
                lists.push((key, parse_list(key, &value)?));
            }
        }
        builder = builder.add_source(
            config::Environment::with_prefix("APP")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(app_vars)),
        );
        for (key, items) in lists {
            builder = builder
                .set_override(key, items)
                .map_err(|e| ConfigError::new(key, e.to_string()))?;
        }
        let port_override = overrides.port.map(i64::from);
        builder = builder
            .set_override_option("application.port", port_override)
            .map_err(|e| ConfigError::new("--port", e.to_string()))?
            .set_override_option(
                "application.data_dir",
                overrides.data_dir.as_ref().map(|p| p.display().to_string()),
            )
            .map_err(|e| ConfigError::new("--data-dir", e.to_string()))?;

        let config = builder.build().map_err(config_error)?;
        let mut settings: Settings = config.try_deserialize().map_err(config_error)?;
        settings.environment = environment;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what the types alone cannot say.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        match &auth.admin_key {
            None => {
                return Err(ConfigError::new(
                    "auth.admin_key",
                    "is required (set APP_AUTH__ADMIN_KEY)",
                ));
            }
            Some(k) if k.expose_secret().len() < 16 => {
                return Err(ConfigError::new(
                    "auth.admin_key",
                    "must be at least 16 characters",
                ));
            }
            Some(_) => {}
        }
        let local = self.environment == Environment::Local;
        match &auth.jwt_secret {
            // Made for this installation at start (`local_secrets`).
            None if local => {}
            None => {
                return Err(ConfigError::new(
                    "auth.jwt_secret",
                    "is required (set APP_AUTH__JWT_SECRET)",
                ));
            }
            Some(k) if k.expose_secret().len() < 32 => {
                return Err(ConfigError::new(
                    "auth.jwt_secret",
                    "must be at least 32 bytes",
                ));
            }
            Some(_) => {}
        }
        if !(1..=3600).contains(&auth.jwt_ttl_secs) {
            return Err(ConfigError::new(
                "auth.jwt_ttl_secs",
                "must be between 1 and 3600",
            ));
        }
        let app = &self.application;
        if app.body_limit_bytes == 0 {
            return Err(ConfigError::new(
                "application.body_limit_bytes",
                "must be positive",
            ));
        }
        if app.request_timeout_secs == 0 {
            return Err(ConfigError::new(
                "application.request_timeout_secs",
                "must be positive",
            ));
        }
        match (&app.tls_cert_path, &app.tls_key_path) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "application.tls_key_path",
                    "is required when application.tls_cert_path is set",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "application.tls_cert_path",
                    "is required when application.tls_key_path is set",
                ));
            }
            (Some(cert), Some(key)) => {
                for (name, path) in [
                    ("application.tls_cert_path", cert),
                    ("application.tls_key_path", key),
                ] {
                    if !path.is_file() {
                        return Err(ConfigError::new(
                            name,
                            format!("{} is not a readable file", path.display()),
                        ));
                    }
                }
            }
            (None, None) => {}
        }
        for origin in &app.cors_allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(ConfigError::new(
                    "application.cors_allowed_origins",
                    format!("`{origin}` is not an origin like https://app.example.com"),
                ));
            }
        }
        if self.sessions.resume_concurrency == 0 {
            return Err(ConfigError::new(
                "sessions.resume_concurrency",
                "must be positive",
            ));
        }
        let slots = self.messages.send_slots;
        if slots.standard == 0 || slots.professional == 0 || slots.enterprise == 0 {
            return Err(ConfigError::new(
                "messages.send_slots",
                "every tier needs at least one slot",
            ));
        }
        if self.database.pool_size == 0 {
            return Err(ConfigError::new("database.pool_size", "must be positive"));
        }
        if let Some(url) = &self.database.url {
            let url = url.expose_secret();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError::new(
                    "database.url",
                    "must be a postgres:// or postgresql:// URL",
                ));
            }
        }
        if let Some(url) = &self.redis.url {
            let url = url.expose_secret();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(ConfigError::new(
                    "redis.url",
                    "must be a redis:// or rediss:// URL",
                ));
            }
        }
        let limits = &self.rate_limit;
        for (name, l) in [
            ("standard", limits.standard),
            ("sensitive", limits.sensitive),
            ("admin", limits.admin),
            ("nuclear", limits.nuclear),
            ("auth", limits.auth),
            ("failed_auth", limits.failed_auth),
        ] {
            if l.limit == 0 || l.window_secs == 0 {
                return Err(ConfigError::new(
                    format!("rate_limit.{name}"),
                    "limit and window_secs must be positive",
                ));
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError::new(
                "log.level",
                format!("`{}` is not a log filter (try `info`)", self.log.level),
            ));
        }
        match (&self.store.encryption_key, self.store.key_bytes()) {
            (None, _) if local => {}
            (None, _) => {
                return Err(ConfigError::new(
                    "store.encryption_key",
                    "is required (set APP_STORE__ENCRYPTION_KEY to base64 of 32 random bytes, e.g. `openssl rand -base64 32`)",
                ));
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "store.encryption_key",
                    "must be base64 of exactly 32 bytes",
                ));
            }
            (Some(_), Some(_)) => {}
        }
        let simulator_urls = [
            (
                "sandbox.simulator_url",
                &self.sandbox.simulator_url,
                "ws://",
                "must be a loopback ws:// URL, e.g. ws://127.0.0.1:7400/ws/chat",
            ),
            (
                "sandbox.simulator_media_url",
                &self.sandbox.simulator_media_url,
                "http://",
                "must be a loopback http:// URL, e.g. http://127.0.0.1:7401",
            ),
        ];
        for (key, url, scheme, expected) in simulator_urls {
            let Some(url) = url else { continue };
            if !crate::whatsapp_network::WhatsAppNetwork::sandbox_build() {
                return Err(ConfigError::new(
                    key,
                    "needs a sandbox build (`cargo run --features sandbox`)",
                ));
            }
            let host = url
                .strip_prefix(scheme)
                .and_then(|rest| rest.split('/').next())
                .map(|authority| authority.rsplit_once(':').map_or(authority, |(h, _)| h));
            if !matches!(host, Some("127.0.0.1" | "localhost" | "[::1]")) {
                return Err(ConfigError::new(key, expected));
            }
        }
        let sessions = &self.sessions;
        if sessions.lease_renew_interval_secs == 0
            || sessions.lease_ttl_secs <= sessions.lease_renew_interval_secs
        {
            return Err(ConfigError::new(
                "sessions.lease_ttl_secs",
                "must be longer than sessions.lease_renew_interval_secs, which must be positive",
            ));
        }
        for (name, v) in [
            ("reconnect_base_ms", sessions.reconnect_base_ms),
            ("reconnect_cap_secs", sessions.reconnect_cap_secs),
            (
                "health_check_interval_secs",
                sessions.health_check_interval_secs,
            ),
            ("qr_timeout_secs", sessions.qr_timeout_secs),
            (
                "orphan_scan_interval_secs",
                sessions.orphan_scan_interval_secs,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::new(
                    format!("sessions.{name}"),
                    "must be positive",
                ));
            }
        }
        for (name, p) in [
            ("standard", sessions.pools.standard),
            ("professional", sessions.pools.professional),
            ("enterprise", sessions.pools.enterprise),
        ] {
            if p.sessions_per_arbiter == 0 {
                return Err(ConfigError::new(
                    format!("sessions.pools.{name}.sessions_per_arbiter"),
                    "must be positive",
                ));
            }
        }
        if self.shutdown.timeout_secs == 0 {
            return Err(ConfigError::new(
                "shutdown.timeout_secs",
                "must be positive",
            ));
        }
        self.refuse_public_secrets_off_loopback()
    }

    /// A secret printed in this repository protects nothing: it may serve a loopback
    /// address on a developer's machine, never an address others can reach.
    fn refuse_public_secrets_off_loopback(&self) -> Result<(), ConfigError> {
        if is_loopback_host(&self.application.host) {
            return Ok(());
        }
        let configured = [
            (
                "auth.admin_key",
                "APP_AUTH__ADMIN_KEY",
                &self.auth.admin_key,
            ),
            (
                "auth.jwt_secret",
                "APP_AUTH__JWT_SECRET",
                &self.auth.jwt_secret,
            ),
            (
                "store.encryption_key",
                "APP_STORE__ENCRYPTION_KEY",
                &self.store.encryption_key,
            ),
        ];
        for (key, var, value) in configured {
            if value
                .as_ref()
                .is_some_and(|v| PUBLIC_SECRETS.contains(&v.expose_secret().trim()))
            {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "is a public development value and application.host `{}` is not a \
                         loopback address: set {var} to a secret of your own, or listen on 127.0.0.1",
                        self.application.host
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn tls_enabled(&self) -> bool {
        self.application.tls_cert_path.is_some()
    }
}

/// Every setting whose value is a list, with its environment variable.
const LIST_SETTINGS: [(&str, &str); 2] = [
    (
        "APP_APPLICATION__CORS_ALLOWED_ORIGINS",
        "application.cors_allowed_origins",
    ),
    (
        "APP_WEBHOOKS__RETRY_SCHEDULE_SECS",
        "webhooks.retry_schedule_secs",
    ),
];

/// A list from the environment: comma-separated (`5,300,1800`) or JSON (`[5, 300, 1800]`,
/// `["https://a.test"]`); empty means the empty list. Numbers stay numbers, so a list of
/// numbers is checked against its type like any other value.
fn parse_list(key: &str, value: &str) -> Result<Vec<config::Value>, ConfigError> {
    let scalar = |s: &str| match s.parse::<i64>() {
        Ok(n) => config::Value::from(n),
        Err(_) => config::Value::from(s.to_owned()),
    };
    let value = value.trim();
    if value.starts_with('[') {
        let items: Vec<serde_json::Value> = serde_json::from_str(value)
            .map_err(|e| ConfigError::new(key, format!("is not a JSON list: {e}")))?;
        return items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::String(s) => Ok(config::Value::from(s)),
                serde_json::Value::Number(n) => n
                    .as_i64()
                    .map(config::Value::from)
                    .ok_or_else(|| ConfigError::new(key, format!("`{n}` is not a whole number"))),
                other => Err(ConfigError::new(
                    key,
                    format!("list items are strings or numbers, not `{other}`"),
                )),
            })
            .collect();
    }
    Ok(value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(scalar)
        .collect())
}

/// Secret values that are public: the local admin key in `config/local.yaml`, and the JWT
/// secret and store key that file carried before each installation made its own.
const PUBLIC_SECRETS: [&str; 3] = [
    "wagate-local-admin-key",
    "wagate-local-jwt-secret-change-me-0123456789",
    "d2FnYXRlLWxvY2FsLXN0b3JlLWtleS0wMTIzNDU2Nzg=",
];

/// `localhost`, 127.0.0.0/8 and `::1` (bracketed or not).
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn add_layer(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
    dir: &Path,
    name: &str,
    embedded: &str,
) -> config::ConfigBuilder<config::builder::DefaultState> {
    let on_disk = dir.join(format!("{name}.yaml"));
    if dir.join("base.yaml").is_file() {
        // A config folder exists: it is the whole truth, an environment file may be absent.
        builder.add_source(File::from(on_disk).format(FileFormat::Yaml).required(false))
    } else {
        builder.add_source(File::from_str(embedded, FileFormat::Yaml))
    }
}

fn config_error(e: config::ConfigError) -> ConfigError {
    let key = match &e {
        config::ConfigError::NotFound(k) => k.clone(),
        config::ConfigError::Type { key: Some(k), .. } => k.clone(),
        config::ConfigError::At { key: Some(k), .. } => k.clone(),
        _ => "configuration".to_owned(),
    };
    ConfigError::new(key, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn local_defaults_load() {
        let s = Settings::load_from(&Overrides::default(), &env(&[])).expect("defaults load");
        assert_eq!(s.application.port, 8080);
        assert!(s.database.url.is_none());
        assert_eq!(
            s.rate_limit.standard,
            LimitSettings {
                limit: 200,
                window_secs: 900
            }
        );
    }

    #[test]
    fn env_overrides_file_and_cli_overrides_env() {
        let e = env(&[
            ("APP_APPLICATION__PORT", "9000"),
            ("APP_REDIS__URL", "redis://x:1"),
        ]);
        let s = Settings::load_from(&Overrides::default(), &e).expect("loads");
        assert_eq!(s.application.port, 9000);
        let o = Overrides {
            port: Some(9100),
            ..Default::default()
        };
        let s = Settings::load_from(&o, &e).expect("loads");
        assert_eq!(s.application.port, 9100);
    }

    #[test]
    fn list_from_env() {
        let e = env(&[(
            "APP_APPLICATION__CORS_ALLOWED_ORIGINS",
            "https://a.test,https://b.test",
        )]);
        let s = Settings::load_from(&Overrides::default(), &e).expect("loads");
        assert_eq!(
            s.application.cors_allowed_origins,
            vec!["https://a.test", "https://b.test"]
        );
    }

    #[test]
    fn every_list_setting_reads_comma_separated_and_json_from_env() {
        for value in ["1,2", " 1 , 2 ", "[1, 2]"] {
            let e = env(&[("APP_WEBHOOKS__RETRY_SCHEDULE_SECS", value)]);
            let s = Settings::load_from(&Overrides::default(), &e).expect(value);
            assert_eq!(s.webhooks.retry_schedule_secs, vec![1, 2], "{value}");
        }
        let e = env(&[("APP_WEBHOOKS__RETRY_SCHEDULE_SECS", "7")]);
        let s = Settings::load_from(&Overrides::default(), &e).expect("one item");
        assert_eq!(s.webhooks.retry_schedule_secs, vec![7]);
        let e = env(&[(
            "APP_APPLICATION__CORS_ALLOWED_ORIGINS",
            r#"["https://a.test", "https://b.test"]"#,
        )]);
        let s = Settings::load_from(&Overrides::default(), &e).expect("json strings");
        assert_eq!(
            s.application.cors_allowed_origins,
            vec!["https://a.test", "https://b.test"]
        );
        let e = env(&[("APP_APPLICATION__CORS_ALLOWED_ORIGINS", "")]);
        let s = Settings::load_from(&Overrides::default(), &e).expect("empty");
        assert!(s.application.cors_allowed_origins.is_empty());
        for bad in ["1,soon", "[1, {}]", "[1,"] {
            let e = env(&[("APP_WEBHOOKS__RETRY_SCHEDULE_SECS", bad)]);
            let err = Settings::load_from(&Overrides::default(), &e).expect_err(bad);
            assert!(
                err.to_string().contains("retry_schedule_secs"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn production_requires_secrets_and_names_the_key() {
        let e = env(&[("APP_ENVIRONMENT", "production")]);
        let err = Settings::load_from(&Overrides::default(), &e).expect_err("must fail");
        assert_eq!(err.key, "auth.admin_key");

        let secrets = [
            ("APP_ENVIRONMENT", "production"),
            ("APP_AUTH__ADMIN_KEY", "an-admin-key-of-some-length"),
            (
                "APP_AUTH__JWT_SECRET",
                "a-jwt-secret-that-is-long-enough-0123",
            ),
        ];
        let err =
            Settings::load_from(&Overrides::default(), &env(&secrets)).expect_err("no store key");
        assert_eq!(err.key, "store.encryption_key");
        let mut short = secrets.to_vec();
        short.push(("APP_STORE__ENCRYPTION_KEY", "c2hvcnQ="));
        let err = Settings::load_from(&Overrides::default(), &env(&short)).expect_err("short key");
        assert_eq!(err.key, "store.encryption_key");
        let mut ok = secrets.to_vec();
        ok.push((
            "APP_STORE__ENCRYPTION_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ));
        let s = Settings::load_from(&Overrides::default(), &env(&ok)).expect("complete");
        assert_eq!(s.store.key_bytes(), Some(std::array::from_fn(|i| i as u8)));
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = env(&[("APP_APPLICATION__PORT", "not-a-port")]);
        let err = Settings::load_from(&Overrides::default(), &e).expect_err("must fail");
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let e = env(&[("APP_DATABASE__URLL", "postgres://x")]);
        let err = Settings::load_from(&Overrides::default(), &e).expect_err("must fail");
        assert!(err.to_string().contains("urll"), "{err}");
    }

    #[test]
    fn public_secrets_serve_loopback_only() {
        // The local defaults on loopback: fine, and nothing public is left but the admin key.
        let s = Settings::load_from(&Overrides::default(), &env(&[])).expect("loads");
        assert!(s.auth.jwt_secret.is_none() && s.store.encryption_key.is_none());
        for host in ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"] {
            let e = env(&[("APP_APPLICATION__HOST", host)]);
            Settings::load_from(&Overrides::default(), &e).expect("loopback is fine");
        }
        for host in ["0.0.0.0", "192.168.1.10", "::", "example.test"] {
            let e = env(&[("APP_APPLICATION__HOST", host)]);
            let err = Settings::load_from(&Overrides::default(), &e).expect_err(host);
            assert_eq!(err.key, "auth.admin_key", "{host}: {err}");
            assert!(err.message.contains("APP_AUTH__ADMIN_KEY"), "{err}");
        }
        // Values that used to be the public defaults are refused off loopback too.
        let e = env(&[
            ("APP_APPLICATION__HOST", "0.0.0.0"),
            ("APP_AUTH__ADMIN_KEY", "a-private-admin-key-0123"),
            (
                "APP_STORE__ENCRYPTION_KEY",
                "d2FnYXRlLWxvY2FsLXN0b3JlLWtleS0wMTIzNDU2Nzg=",
            ),
        ]);
        let err = Settings::load_from(&Overrides::default(), &e).expect_err("public store key");
        assert_eq!(err.key, "store.encryption_key");
        let e = env(&[
            ("APP_APPLICATION__HOST", "0.0.0.0"),
            ("APP_AUTH__ADMIN_KEY", "a-private-admin-key-0123"),
        ]);
        Settings::load_from(&Overrides::default(), &e).expect("own admin key, generated rest");
    }

    #[test]
    fn secrets_never_print() {
        let e = env(&[
            (
                "APP_AUTH__JWT_SECRET",
                "wagate-local-jwt-secret-change-me-0123456789",
            ),
            (
                "APP_STORE__ENCRYPTION_KEY",
                "d2FnYXRlLWxvY2FsLXN0b3JlLWtleS0wMTIzNDU2Nzg=",
            ),
        ]);
        let s = Settings::load_from(&Overrides::default(), &e).expect("loads");
        let printed = format!("{s:?}");
        assert!(!printed.contains("wagate-local-admin-key"), "{printed}");
        assert!(!printed.contains("wagate-local-jwt-secret"), "{printed}");
        assert!(!printed.contains("d2FnYXRlLWxvY2Fs"), "{printed}");
    }
}
