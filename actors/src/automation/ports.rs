//! What the TriggerActor needs from outside: `src/` implements it with Postgres and reqwest.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;
use uuid::Uuid;

use super::flow::{BotAction, ExecState, Flow, HttpCall, Outbound, PlatformAction};
use super::triggers::{TriggerAction, TriggerSet};

/// An event claimed for automation, with what the decision reads.
#[derive(Debug, Clone)]
pub struct EventWork {
    pub tenant_id: Uuid,
    pub event_id: i64,
    pub session_id: Option<Uuid>,
    pub kind: String,
    pub chat: Option<String>,
    pub at: DateTime<Utc>,
    pub tz: Tz,
    pub text: Option<String>,
    pub from: Option<String>,
    pub message_kind: Option<String>,
    pub labels: Vec<String>,
    pub contact_name: Option<String>,
    pub session_name: Option<String>,
    /// `card.moved`: the column the card went to and its board, by name.
    pub column: Option<String>,
    pub board: Option<String>,
    /// The tenant's trigger version (the compiled set is cached per version).
    pub trigger_version: i64,
    /// The contact's first message ever to the session.
    pub first_message: bool,
    /// The message was sent by automation (of any session of this gateway), or the card was
    /// moved by a flow: the loop guard.
    pub from_automation: bool,
    /// The session's bot is paused or stopped.
    pub bot_paused: bool,
    /// An execution waiting for this chat's reply.
    pub waiting_execution: Option<Uuid>,
    /// What automation sent this chat in the last minute.
    pub sends_last_minute: u32,
    /// Triggers cooling down in this chat.
    pub cooling: HashSet<Uuid>,
}

/// What became of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum EventOutcome {
    /// A waiting execution took the message as its reply.
    Resumed(Uuid),
    /// These triggers fired.
    Fired(Vec<(Uuid, TriggerAction, i32)>),
    NoMatch,
    /// Not evaluated: `bot_paused`, `loop_guard`, `rate_capped`, `group`.
    Skipped(&'static str),
}

impl EventOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            EventOutcome::Resumed(_) => "resumed",
            EventOutcome::Fired(_) => "fired",
            EventOutcome::NoMatch => "no_match",
            EventOutcome::Skipped(why) => why,
        }
    }

    /// Whether the message was handled, so the chat's agent does not also answer it.
    pub fn handled(&self) -> bool {
        matches!(self, EventOutcome::Resumed(_) | EventOutcome::Fired(_))
    }
}

/// An execution claimed to run.
#[derive(Debug, Clone)]
pub struct ExecutionWork {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub flow_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub chat: Option<String>,
    pub flow: Arc<Flow>,
    pub state: ExecState,
    /// `running`, `waiting` (a timer ran out) or `waiting_reply` (its timeout ran out).
    pub status: String,
    /// The contact's reply, when one resumed it.
    pub input: Option<String>,
    pub tz: Tz,
}

/// How an execution stands after a commit.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecStatus {
    Running,
    Waiting { until: DateTime<Utc> },
    WaitingReply { until: DateTime<Utc> },
    Completed,
    Failed(String),
}

impl ExecStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            ExecStatus::Running => "running",
            ExecStatus::Waiting { .. } => "waiting",
            ExecStatus::WaitingReply { .. } => "waiting_reply",
            ExecStatus::Completed => "completed",
            ExecStatus::Failed(_) => "failed",
        }
    }
}

/// One step as the history shows it.
#[derive(Debug, Clone)]
pub struct StepRecord {
    pub seq: u32,
    pub step_id: String,
    pub kind: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// `ok`, `waiting` or `failed`.
    pub outcome: &'static str,
    pub input: Value,
    pub output: Value,
    pub error: Option<String>,
}

/// What one commit persists, in one transaction: the state after the steps, their records,
/// and the one effect of the last (a message to send, a bot action).
#[derive(Debug, Clone)]
pub struct StepCommit {
    /// The `seq` the execution had when claimed or last committed: the commit applies only if
    /// it still has it (a cancel or another node got there first otherwise).
    pub expected_seq: u32,
    pub state: ExecState,
    pub status: ExecStatus,
    pub records: Vec<StepRecord>,
    /// Sent with the idempotency key of execution and step number.
    pub send: Option<(u32, Outbound)>,
    pub bot: Option<BotAction>,
    /// A card or notification step's effect (keyed by execution and step number). When it
    /// cannot be applied (the board has no such column, the column is full) the step and the
    /// execution fail with why.
    pub platform: Option<(u32, PlatformAction)>,
}

#[async_trait]
pub trait AutomationStore: Send + Sync + 'static {
    /// Claims events due for automation (their rows are locked for `lock`).
    async fn claim_events(&self, limit: usize, lock: Duration) -> anyhow::Result<Vec<EventWork>>;
    /// The tenant's enabled triggers at `version`.
    async fn triggers(&self, tenant_id: Uuid, version: i64) -> anyhow::Result<Arc<TriggerSet>>;
    /// Acts on the outcome (starts executions, sends replies, resumes a waiting execution,
    /// starts cooldowns) and marks the event done, in one transaction.
    async fn settle_event(&self, work: &EventWork, outcome: &EventOutcome) -> anyhow::Result<()>;
    /// Claims executions due to run.
    async fn claim_executions(
        &self,
        limit: usize,
        lock: Duration,
    ) -> anyhow::Result<Vec<ExecutionWork>>;
    /// Persists steps; `false` when the execution is not to go on: it moved on meanwhile
    /// (cancelled), or the store failed it (a card step that could not act, media that
    /// could not be made).
    async fn commit_step(&self, exec: &ExecutionWork, commit: StepCommit) -> anyhow::Result<bool>;
    /// An `http_request` step's call: `{"status", "body"}`, or why it could not be made.
    async fn http(&self, exec: &ExecutionWork, call: &HttpCall, key: &str)
    -> Result<Value, String>;
    /// An `ai_reply` step: the agent's answer to the chat.
    async fn ai_text(&self, exec: &ExecutionWork, agent_id: Uuid) -> Result<String, String>;
    /// Fires the schedule triggers that are due; how many fired.
    async fn fire_schedules(&self, limit: usize) -> anyhow::Result<usize>;
    /// Drops history past its retention.
    async fn clean_up(&self) -> anyhow::Result<()>;
}
