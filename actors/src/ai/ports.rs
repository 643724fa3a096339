//! What the AiActor needs from outside: the model providers (reqwest in the server crate) and
//! the store that holds agents, chats and the reply work rows (Postgres in the server crate).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Serialize;
use uuid::Uuid;

/// A model provider's wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// Google's `generateContent`.
    Gemini,
    /// OpenAI chat completions (and every server that speaks them).
    Openai,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Gemini => "gemini",
            Provider::Openai => "openai",
        }
    }

    pub fn parse(raw: &str) -> Option<Provider> {
        match raw {
            "gemini" => Some(Provider::Gemini),
            "openai" => Some(Provider::Openai),
            _ => None,
        }
    }
}

/// Where a call goes and with which key. `id` names the credential for the circuit breaker
/// (`platform:gemini`, or a tenant credential's id): one failing key never opens another's.
#[derive(Clone, PartialEq)]
pub struct Credential {
    pub id: String,
    pub base_url: String,
    pub api_key: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("id", &self.id)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// Who speaks in a turn of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The contact.
    User,
    /// The business: the agent's earlier answers and the operator's messages.
    Model,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Turn {
    pub role: Role,
    pub text: String,
    /// The model asked for these tools (a `Model` turn).
    pub tool_calls: Vec<ToolCall>,
    /// What the tools answered (a `User` turn that follows the calls).
    pub tool_results: Vec<ToolResult>,
}

impl Turn {
    pub fn text(role: Role, text: impl Into<String>) -> Turn {
        Turn {
            role,
            text: text.into(),
            tool_calls: Vec::new(),
            tool_results: Vec::new(),
        }
    }
}

/// A tool the model may call (function calling), with its JSON Schema parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub parameters: serde_json::Value,
}

/// A call the model made: its id (OpenAI's `tool_call_id`; made up for Gemini), the tool's
/// name and its arguments as a JSON object's text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A tool's answer to a call, as JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ToolResult {
    pub call_id: String,
    pub name: String,
    pub content: String,
}

/// One request to a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCall {
    pub provider: Provider,
    pub credential: Credential,
    pub model: String,
    pub system_prompt: String,
    /// Alternating roles, the contact's first.
    pub turns: Vec<Turn>,
    pub temperature: Option<f32>,
    pub max_output_tokens: Option<u32>,
    /// Tools offered to the model (none: plain text).
    pub tools: Vec<ToolSpec>,
}

/// What the model answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelAnswer {
    pub text: String,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    /// Tools the model asked to call.
    pub tool_calls: Vec<ToolCall>,
}

/// Why a model call failed, as the retry logic needs to know it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// Worth another try (429, 500, 503, 504, a timeout, a broken connection), after
    /// `retry_after` when the provider said so.
    #[error("{message}")]
    Retryable {
        status: Option<u16>,
        retry_after: Option<Duration>,
        message: String,
    },
    /// Never retried (400, 401, 403, 404, OpenAI's `insufficient_quota`).
    #[error("{message}")]
    Fatal {
        status: Option<u16>,
        message: String,
    },
    /// The provider refused to answer this content (Gemini's `blockReason`, a `SAFETY`
    /// finish, OpenAI's `content_filter`): the provider is healthy, the answer is not usable.
    #[error("the model blocked the answer: {reason}")]
    Blocked { reason: String },
}

#[async_trait]
pub trait ModelClient: Send + Sync + 'static {
    async fn generate(&self, call: &ModelCall) -> Result<ModelAnswer, ModelError>;
}

/// What the tree reports about its AI calls (Prometheus in the server crate).
pub trait AiObserver: Send + Sync + 'static {
    /// A call ended: `outcome` is `ok`, `error`, `blocked`, `circuit_open`, `rate_limited`,
    /// `budget` or `cached`.
    fn call_finished(&self, _provider: Provider, _outcome: &str, _took: Duration) {}
    fn tokens(&self, _provider: Provider, _prompt: u64, _output: u64) {}
    /// A credential's circuit changed: `closed`, `open` or `half_open`.
    fn circuit_changed(&self, _credential: &str, _state: &str) {}
    /// The reply pipeline decided about a chat (`reply`, `fallback`, `handoff`, or why not).
    fn decided(&self, _outcome: &str) {}
}

/// Observes nothing (tests).
pub struct NoObserver;
impl AiObserver for NoObserver {}

/// A chat with unanswered messages whose quiet time is over, claimed by this node.
#[derive(Debug, Clone)]
pub struct PendingChat {
    pub tenant_id: Uuid,
    pub session_id: Uuid,
    pub chat: String,
    /// Messages after this event were not answered yet ...
    pub since_event_id: i64,
    /// ... up to this one.
    pub through_event_id: i64,
    pub attempts: i32,
    /// The session's own number, as the answer is sent from it.
    pub own_phone: Option<String>,
}

/// An agent as the reply pipeline uses it.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub id: Uuid,
    pub provider: Provider,
    pub model: String,
    pub credential: Credential,
    pub system_prompt: String,
    pub temperature: Option<f32>,
    pub max_output_tokens: Option<u32>,
    pub context_messages: u32,
    pub handoff_keywords: Vec<String>,
    pub fallback_text: Option<String>,
    /// Answer in groups (only when mentioned or replied to).
    pub answer_groups: bool,
    /// Describe a media message without a caption to the model ("[the contact sent an
    /// image]") instead of ignoring it.
    pub describe_media: bool,
    /// Send a long answer as several messages, split on blank lines.
    pub split_replies: bool,
    /// Show "typing…" before the answer, for a time that grows with its length.
    pub typing: bool,
    /// The gateway tools the model may call (names from [`crate::ai::tools::CATALOGUE`]).
    pub tools: Vec<String>,
    /// Changes whenever the agent does: part of the response cache's key.
    pub version: i64,
}

/// One message of the chat, as context.
#[derive(Debug, Clone)]
pub struct ChatMessage {
    pub wa_id: String,
    /// `true`: the contact wrote it; `false`: the business did (agent or operator).
    pub incoming: bool,
    /// `text`, `image`, `reaction`, …
    pub kind: String,
    /// The text, or a media message's caption.
    pub text: Option<String>,
    pub quoted_wa_id: Option<String>,
    pub at: SystemTime,
    /// Not answered yet: it arrived after the last answer.
    pub unanswered: bool,
}

/// A tenant's AI quotas (from its tier).
#[derive(Debug, Clone, Copy)]
pub struct TenantQuota {
    pub calls_per_minute: u32,
    pub tokens_per_day: u64,
}

/// Everything the pipeline needs to decide about a chat, read in one go.
#[derive(Debug, Clone)]
pub struct ChatWork {
    /// The chat's key: `+<digits>`, `<lid>@lid`, `<id>@g.us`, …
    pub chat: String,
    pub agent: AgentConfig,
    /// The session's own number (digits), to see mentions in groups.
    pub own_phone: Option<String>,
    pub bot_enabled: bool,
    /// The operator's last message in the chat (through the API or the phone), if recent.
    pub operator_last_at: Option<SystemTime>,
    /// Answers the chat got in the last minute.
    pub replies_last_minute: u32,
    pub quota: TenantQuota,
    /// Tokens the tenant used today (UTC).
    pub tokens_today: u64,
    /// The chat's last messages, oldest first (at most the agent's `context_messages`, and
    /// at least every unanswered one).
    pub history: Vec<ChatMessage>,
}

/// What became of a pending chat.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The model answered: send `parts` in order.
    Reply {
        agent_id: Uuid,
        parts: Vec<String>,
        /// "typing…" shown for this long before the first part (zero: none).
        typing: Duration,
        prompt_tokens: u64,
        output_tokens: u64,
        latency_ms: u64,
        cached: bool,
        /// The tools the model called, run before the answer.
        tool_calls: Vec<ToolCall>,
    },
    /// The model failed: `text` (the agent's fallback) is sent when there is one; `error`
    /// goes into `ai.error`, never to the contact.
    Failed {
        agent_id: Uuid,
        text: Option<String>,
        error: String,
        latency_ms: u64,
    },
    /// The contact asked for a human (a keyword, or the model called `handoff_to_human`):
    /// the chat's bot goes off; `text`, the model's last words, is sent first.
    Handoff {
        agent_id: Uuid,
        /// The keyword the contact used (`None`: the model handed off).
        keyword: Option<String>,
        reason: String,
        text: Option<String>,
        tool_calls: Vec<ToolCall>,
        prompt_tokens: u64,
        output_tokens: u64,
    },
    /// Nothing to do, and why (`bot_off`, `group`, `operator_active`, `reply_cap`, …).
    Skipped { reason: &'static str },
}

#[async_trait]
pub trait AiStore: Send + Sync + 'static {
    /// Claims up to `limit` chats whose quiet time is over, for `lock` (no other node takes
    /// them meanwhile; after it they are due again, so a crash never loses one).
    async fn claim_due(&self, limit: usize, lock: Duration) -> anyhow::Result<Vec<PendingChat>>;
    /// What the pipeline needs about a claimed chat; `None` when there is no agent for it
    /// any more (or the session is gone).
    async fn load(&self, pending: &PendingChat) -> anyhow::Result<Option<ChatWork>>;
    /// Records the outcome and, in the same transaction, stores the answer's messages
    /// (idempotent per pending chat and part: a second `finish` of the same work sends
    /// nothing twice) and releases the chat.
    async fn finish(&self, pending: &PendingChat, outcome: Outcome) -> anyhow::Result<()>;
    /// Puts a claimed chat back, due at `at` (a store error, the tenant's rate limit).
    async fn retry_at(&self, pending: &PendingChat, at: SystemTime) -> anyhow::Result<()>;
    /// Runs a gateway tool the model called for this chat on behalf of `agent` (not
    /// `handoff_to_human`, which the outcome carries); answers what the model is told, as
    /// JSON. A tool may run again when the answer is retried, so each is idempotent.
    async fn run_tool(
        &self,
        pending: &PendingChat,
        agent: Uuid,
        call: &ToolCall,
    ) -> anyhow::Result<serde_json::Value>;
}
