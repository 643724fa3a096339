//! Automation: triggers, rules and durable action flows, run by the `TriggerActor`.
//!
//! The pure parts (conditions, triggers, flows, schedules) do no I/O. The actor drives them
//! through [`ports::AutomationStore`]: it claims events written for automation with the
//! event itself, decides, and settles each in one transaction; it claims executions that are
//! due and runs them step by step, each step persisted with its effect, so a crash anywhere
//! resumes where the last commit left off and every sending step sends once.

pub mod conditions;
pub mod flow;
pub mod ports;
pub mod schedule;
pub mod triggers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use serde_json::{Value, json};
use uuid::Uuid;

use conditions::Facts;
use flow::{Action, Interpreter, Resume, Wait};
use ports::{
    AutomationStore, EventOutcome, EventWork, ExecStatus, ExecutionWork, StepCommit, StepRecord,
};
use triggers::{EventFacts, TriggerSet, evaluate};

#[derive(Debug, Clone)]
pub struct AutomationConfig {
    pub poll_interval: Duration,
    pub claim_lock: Duration,
    pub batch: usize,
    /// Executions run at once on this node.
    pub max_executions_in_flight: usize,
    /// What automation may send one chat per minute (a guard against bots talking forever).
    pub max_sends_per_chat_per_minute: u32,
    pub clean_up_every: Duration,
}

impl Default for AutomationConfig {
    fn default() -> Self {
        AutomationConfig {
            poll_interval: Duration::from_millis(100),
            claim_lock: Duration::from_secs(60),
            batch: 200,
            max_executions_in_flight: 32,
            max_sends_per_chat_per_minute: 10,
            clean_up_every: Duration::from_secs(600),
        }
    }
}

/// Decides what becomes of one event, given the tenant's triggers.
pub fn decide(work: &EventWork, set: &TriggerSet, cfg: &AutomationConfig) -> EventOutcome {
    if work.bot_paused {
        return EventOutcome::Skipped("bot_paused");
    }
    let chat = work.chat.as_deref().unwrap_or_default();
    if work.from_automation {
        return EventOutcome::Skipped("loop_guard");
    }
    if work.kind == "message.received" {
        if chat.ends_with("@g.us") || chat.contains("broadcast") {
            return EventOutcome::Skipped("group");
        }
        if let Some(id) = work.waiting_execution {
            return EventOutcome::Resumed(id);
        }
    }
    let ev = EventFacts {
        kind: &work.kind,
        session_id: work.session_id,
        first_message: work.first_message,
        facts: Facts {
            text: work.text.as_deref(),
            from: work.from.as_deref(),
            kind: work.message_kind.as_deref(),
            labels: &work.labels,
            at: work.at,
            tz: work.tz,
            vars: None,
            column: work.column.as_deref(),
            board: work.board.as_deref(),
        },
    };
    let fired: Vec<_> = evaluate(set, &ev, &work.cooling)
        .into_iter()
        .filter(|v| v.fires)
        .filter_map(|v| {
            set.triggers
                .iter()
                .find(|t| t.spec.id == v.trigger_id)
                .map(|t| (t.spec.id, t.spec.action.clone(), t.spec.cooldown_secs))
        })
        .collect();
    if fired.is_empty() {
        return EventOutcome::NoMatch;
    }
    if work.chat.is_some() && work.sends_last_minute >= cfg.max_sends_per_chat_per_minute {
        return EventOutcome::Skipped("rate_capped");
    }
    EventOutcome::Fired(fired)
}

pub struct AutomationEngine {
    cfg: AutomationConfig,
    store: Arc<dyn AutomationStore>,
    wake: tokio::sync::Notify,
    sets: Mutex<HashMap<Uuid, Arc<TriggerSet>>>,
    running: Mutex<std::collections::HashSet<Uuid>>,
    /// Executions running at once on this node.
    slots: Arc<tokio::sync::Semaphore>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AutomationEngine {
    pub fn new(cfg: AutomationConfig, store: Arc<dyn AutomationStore>) -> Arc<Self> {
        Arc::new(AutomationEngine {
            store,
            wake: tokio::sync::Notify::new(),
            sets: Mutex::new(HashMap::new()),
            running: Mutex::new(Default::default()),
            slots: Arc::new(tokio::sync::Semaphore::new(
                cfg.max_executions_in_flight.max(1),
            )),
            cfg,
        })
    }

    async fn set_of(&self, tenant: Uuid, version: i64) -> anyhow::Result<Arc<TriggerSet>> {
        if let Some(s) = lock(&self.sets)
            .get(&tenant)
            .filter(|s| s.version == version)
        {
            return Ok(s.clone());
        }
        let s = self.store.triggers(tenant, version).await?;
        let mut sets = lock(&self.sets);
        if sets.len() > 10_000 {
            sets.clear();
        }
        sets.insert(tenant, s.clone());
        Ok(s)
    }

    /// One round over the events: how many were settled.
    pub async fn events_round(&self) -> anyhow::Result<usize> {
        let claimed = self
            .store
            .claim_events(self.cfg.batch, self.cfg.claim_lock)
            .await?;
        let n = claimed.len();
        for work in claimed {
            let set = self.set_of(work.tenant_id, work.trigger_version).await?;
            let outcome = decide(&work, &set, &self.cfg);
            if let Err(e) = self.store.settle_event(&work, &outcome).await {
                tracing::warn!(event = work.event_id, error = %e, "automation: settling an event failed; it is taken again");
            }
        }
        Ok(n)
    }

    /// Runs one claimed execution until it waits, ends or fails.
    pub async fn run_execution(&self, exec: ExecutionWork) -> anyhow::Result<()> {
        let interp = Interpreter { flow: &exec.flow };
        let mut state = exec.state.clone();
        let mut expected_seq = state.seq;
        let mut resume = match (exec.status.as_str(), &exec.input) {
            ("waiting", _) => Resume::WaitElapsed,
            ("waiting_reply", _) => Resume::ReplyTimedOut,
            (_, Some(reply)) => Resume::Reply(reply.clone()),
            _ => Resume::Fresh,
        };
        let text = state
            .vars
            .get("text")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut records: Vec<StepRecord> = Vec::new();
        loop {
            let started = Utc::now();
            let seq = state.seq;
            let facts = Facts {
                text: text.as_deref(),
                from: exec.chat.as_deref(),
                kind: None,
                labels: &[],
                at: started,
                tz: exec.tz,
                vars: None,
                column: None,
                board: None,
            };
            let action = interp.next(
                &mut state,
                std::mem::replace(&mut resume, Resume::Fresh),
                facts,
            );
            let record = |step_id: &str,
                          kind: &str,
                          outcome: &'static str,
                          input: Value,
                          output: Value,
                          error: Option<String>| StepRecord {
                seq,
                step_id: step_id.to_owned(),
                kind: kind.to_owned(),
                started_at: started,
                finished_at: Utc::now(),
                outcome,
                input,
                output,
                error,
            };
            let kind_of = |id: &str| {
                exec.flow
                    .step(id)
                    .map(|s| s.kind.name())
                    .unwrap_or("unknown")
            };
            let commit = |state: &flow::ExecState,
                          status: ExecStatus,
                          records: Vec<StepRecord>,
                          send,
                          bot| StepCommit {
                expected_seq,
                state: state.clone(),
                status,
                records,
                send,
                bot,
                platform: None,
            };
            let (c, done) = match action {
                Action::Ran {
                    step_id,
                    kind,
                    output,
                } => {
                    records.push(record(&step_id, kind, "ok", Value::Null, output, None));
                    // Steps without effects are persisted with the next one that has one.
                    continue;
                }
                Action::Send { step_id, message } => {
                    interp.complete(&mut state, None);
                    records.push(record(
                        &step_id,
                        kind_of(&step_id),
                        "ok",
                        serde_json::to_value(&message).unwrap_or_default(),
                        Value::Null,
                        None,
                    ));
                    (
                        commit(
                            &state,
                            ExecStatus::Running,
                            std::mem::take(&mut records),
                            Some((seq, message)),
                            None,
                        ),
                        false,
                    )
                }
                Action::AiReply { step_id, agent_id } => {
                    match self.store.ai_text(&exec, agent_id).await {
                        Ok(text) => {
                            interp.complete(&mut state, None);
                            let message = flow::Outbound::Text { text };
                            records.push(record(
                                &step_id,
                                "ai_reply",
                                "ok",
                                json!({ "agent_id": agent_id }),
                                serde_json::to_value(&message).unwrap_or_default(),
                                None,
                            ));
                            (
                                commit(
                                    &state,
                                    ExecStatus::Running,
                                    std::mem::take(&mut records),
                                    Some((seq, message)),
                                    None,
                                ),
                                false,
                            )
                        }
                        Err(e) => {
                            records.push(record(
                                &step_id,
                                "ai_reply",
                                "failed",
                                json!({ "agent_id": agent_id }),
                                Value::Null,
                                Some(e.clone()),
                            ));
                            (
                                commit(
                                    &state,
                                    ExecStatus::Failed(e),
                                    std::mem::take(&mut records),
                                    None,
                                    None,
                                ),
                                true,
                            )
                        }
                    }
                }
                Action::Http { step_id, call } => {
                    let key = format!("{}:{seq}", exec.id);
                    let input = json!({ "method": call.method, "url": call.url });
                    match self.store.http(&exec, &call, &key).await {
                        Ok(out) => {
                            interp.complete(&mut state, Some(out.clone()));
                            records.push(record(&step_id, "http_request", "ok", input, out, None));
                            (
                                commit(
                                    &state,
                                    ExecStatus::Running,
                                    std::mem::take(&mut records),
                                    None,
                                    None,
                                ),
                                false,
                            )
                        }
                        Err(e) => {
                            records.push(record(
                                &step_id,
                                "http_request",
                                "failed",
                                input,
                                Value::Null,
                                Some(e.clone()),
                            ));
                            (
                                commit(
                                    &state,
                                    ExecStatus::Failed(e),
                                    std::mem::take(&mut records),
                                    None,
                                    None,
                                ),
                                true,
                            )
                        }
                    }
                }
                Action::Bot { step_id, action } => {
                    interp.complete(&mut state, None);
                    records.push(record(
                        &step_id,
                        "bot",
                        "ok",
                        json!({ "action": action }),
                        Value::Null,
                        None,
                    ));
                    (
                        commit(
                            &state,
                            ExecStatus::Running,
                            std::mem::take(&mut records),
                            None,
                            Some(action),
                        ),
                        false,
                    )
                }
                Action::Platform { step_id, action } => {
                    interp.complete(&mut state, None);
                    records.push(record(
                        &step_id,
                        kind_of(&step_id),
                        "ok",
                        serde_json::to_value(&action).unwrap_or_default(),
                        Value::Null,
                        None,
                    ));
                    let mut c = commit(
                        &state,
                        ExecStatus::Running,
                        std::mem::take(&mut records),
                        None,
                        None,
                    );
                    c.platform = Some((seq, action));
                    (c, false)
                }
                Action::Suspend { step_id, wait } => {
                    let (status, input) = match wait {
                        Wait::Timer { secs } => (
                            ExecStatus::Waiting {
                                until: started + chrono::Duration::seconds(secs as i64),
                            },
                            json!({ "seconds": secs }),
                        ),
                        Wait::Reply { timeout_secs } => (
                            ExecStatus::WaitingReply {
                                until: started + chrono::Duration::seconds(timeout_secs as i64),
                            },
                            json!({ "timeout_secs": timeout_secs }),
                        ),
                    };
                    records.push(record(
                        &step_id,
                        kind_of(&step_id),
                        "waiting",
                        input,
                        Value::Null,
                        None,
                    ));
                    (
                        commit(&state, status, std::mem::take(&mut records), None, None),
                        true,
                    )
                }
                Action::Finished => (
                    commit(
                        &state,
                        ExecStatus::Completed,
                        std::mem::take(&mut records),
                        None,
                        None,
                    ),
                    true,
                ),
                Action::Failed { step_id, error } => {
                    let id = step_id.unwrap_or_default();
                    records.push(record(
                        &id,
                        kind_of(&id),
                        "failed",
                        Value::Null,
                        Value::Null,
                        Some(error.clone()),
                    ));
                    (
                        commit(
                            &state,
                            ExecStatus::Failed(error),
                            std::mem::take(&mut records),
                            None,
                            None,
                        ),
                        true,
                    )
                }
            };
            let next_seq = c.state.seq;
            if !self.store.commit_step(&exec, c).await? || done {
                return Ok(());
            }
            expected_seq = next_seq;
        }
    }

    /// Claims as many due executions as there are free slots and runs each on its own task
    /// (a slow `http_request` or model call never holds up the events).
    pub async fn executions_round(self: &Arc<Self>) -> anyhow::Result<usize> {
        let free = self.slots.available_permits();
        if free == 0 {
            return Ok(0);
        }
        let claimed = self
            .store
            .claim_executions(free.min(self.cfg.batch), self.cfg.claim_lock)
            .await?;
        let n = claimed.len();
        for exec in claimed {
            if !lock(&self.running).insert(exec.id) {
                continue;
            }
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                lock(&self.running).remove(&exec.id);
                break;
            };
            let me = self.clone();
            actix::spawn(async move {
                let id = exec.id;
                if let Err(e) = me.run_execution(exec).await {
                    tracing::warn!(execution = %id, error = %e, "automation: an execution's step failed to commit; it runs again after its lock");
                }
                lock(&me.running).remove(&id);
                drop(permit);
                // A slot is free, and the execution may have more to do soon.
                me.wake.notify_one();
            });
        }
        Ok(n)
    }

    /// The actor's loop: events, executions and schedules, polled and woken.
    pub async fn run(self: Arc<Self>) {
        let mut last_clean = tokio::time::Instant::now();
        loop {
            let mut busy = false;
            match self.events_round().await {
                Ok(n) => busy |= n > 0,
                Err(e) => tracing::warn!(error = %e, "automation: claiming events failed"),
            }
            match self.store.fire_schedules(self.cfg.batch).await {
                Ok(n) => busy |= n > 0,
                Err(e) => tracing::warn!(error = %e, "automation: firing schedules failed"),
            }
            match self.executions_round().await {
                Ok(n) => busy |= n > 0,
                Err(e) => tracing::warn!(error = %e, "automation: claiming executions failed"),
            }
            if last_clean.elapsed() >= self.cfg.clean_up_every {
                last_clean = tokio::time::Instant::now();
                if let Err(e) = self.store.clean_up().await {
                    tracing::warn!(error = %e, "automation: clean-up failed");
                }
            }
            if !busy {
                let _ = tokio::time::timeout(self.cfg.poll_interval, self.wake.notified()).await;
            }
        }
    }
}

/// The supervision tree's automation actor: it runs the engine's loop on its own arbiter.
pub struct TriggerActor {
    engine: Arc<AutomationEngine>,
}

impl TriggerActor {
    pub fn new(engine: Arc<AutomationEngine>) -> Self {
        TriggerActor { engine }
    }
}

impl Actor for TriggerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.spawn(actix::fut::wrap_future(self.engine.clone().run()));
    }
}

impl actix::Supervised for TriggerActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!("TriggerActor restarting");
    }
}

/// Work is waiting (an execution started, a reply came): look now rather than at the poll.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kick;

impl Handler<Kick> for TriggerActor {
    type Result = ();

    fn handle(&mut self, _: Kick, _: &mut Context<Self>) {
        self.engine.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::automation::triggers::{TriggerAction, TriggerSpec};

    fn work(text: &str) -> EventWork {
        EventWork {
            tenant_id: Uuid::new_v4(),
            event_id: 1,
            session_id: None,
            kind: "message.received".into(),
            chat: Some("+4915550001".into()),
            at: Utc::now(),
            tz: chrono_tz::UTC,
            text: Some(text.into()),
            from: Some("+4915550001".into()),
            message_kind: Some("text".into()),
            labels: vec![],
            contact_name: None,
            session_name: None,
            column: None,
            board: None,
            trigger_version: 1,
            first_message: false,
            from_automation: false,
            bot_paused: false,
            waiting_execution: None,
            sends_last_minute: 0,
            cooling: Default::default(),
        }
    }

    fn set() -> TriggerSet {
        TriggerSet::compile(
            1,
            vec![TriggerSpec {
                id: Uuid::new_v4(),
                name: "menu".into(),
                session_id: None,
                event: "message.received".into(),
                conditions: serde_json::from_value(
                    json!([{"field": "text", "op": "equals", "value": "menu"}]),
                )
                .unwrap(),
                action: TriggerAction::Reply("Our menu".into()),
                priority: 0,
                cooldown_secs: 0,
                continue_after: false,
            }],
        )
        .0
    }

    #[test]
    fn guards_come_before_triggers() {
        let cfg = AutomationConfig::default();
        assert!(matches!(
            decide(&work("menu"), &set(), &cfg),
            EventOutcome::Fired(_)
        ));
        assert_eq!(decide(&work("other"), &set(), &cfg), EventOutcome::NoMatch);
        let mut w = work("menu");
        w.from_automation = true;
        assert_eq!(
            decide(&w, &set(), &cfg),
            EventOutcome::Skipped("loop_guard")
        );
        let mut w = work("menu");
        w.bot_paused = true;
        assert_eq!(
            decide(&w, &set(), &cfg),
            EventOutcome::Skipped("bot_paused")
        );
        let mut w = work("menu");
        w.sends_last_minute = cfg.max_sends_per_chat_per_minute;
        assert_eq!(
            decide(&w, &set(), &cfg),
            EventOutcome::Skipped("rate_capped")
        );
        let mut w = work("menu");
        let waiting = Uuid::new_v4();
        w.waiting_execution = Some(waiting);
        assert_eq!(
            decide(&w, &set(), &cfg),
            EventOutcome::Resumed(waiting),
            "a flow waiting for the reply takes it first"
        );
        let mut w = work("menu");
        w.chat = Some("12036302@g.us".into());
        assert_eq!(decide(&w, &set(), &cfg), EventOutcome::Skipped("group"));
    }

    #[test]
    fn a_card_moved_into_a_column_fires_unless_a_flow_moved_it() {
        let cfg = AutomationConfig::default();
        let (set, _) = TriggerSet::compile(
            1,
            vec![TriggerSpec {
                id: Uuid::new_v4(),
                name: "won".into(),
                session_id: None,
                event: "card.moved".into(),
                conditions: serde_json::from_value(json!([
                    {"field": "column", "op": "equals", "value": "won"},
                    {"field": "board", "op": "equals", "value": "Sales"}
                ]))
                .unwrap(),
                action: TriggerAction::Reply("Thank you!".into()),
                priority: 0,
                cooldown_secs: 0,
                continue_after: false,
            }],
        );
        let moved = |column: &str| EventWork {
            kind: "card.moved".into(),
            text: None,
            from: None,
            message_kind: None,
            column: Some(column.into()),
            board: Some("Sales".into()),
            ..work("")
        };
        assert!(matches!(
            decide(&moved("Lost"), &set, &cfg),
            EventOutcome::NoMatch
        ));
        assert!(matches!(
            decide(&moved("WON"), &set, &cfg),
            EventOutcome::Fired(_)
        ));
        let mut by_flow = moved("Won");
        by_flow.from_automation = true;
        assert_eq!(
            decide(&by_flow, &set, &cfg),
            EventOutcome::Skipped("loop_guard")
        );
    }
}
