//! The `AiActor`: every model call of the platform goes through it. It answers chats (the
//! reply pipeline: claims chats whose quiet time is over from the store, decides with
//! [`plan`], asks the model, hands the answer back to the store, which sends it through the
//! ordinary outbound path), and it serves one-off calls (`Generate`: trying an agent,
//! suggesting a reply). Around each call: a cap on calls in flight, each tenant's calls per
//! minute and tokens per day, a response cache, a circuit breaker per credential, and retries
//! with backoff that honour the provider's `Retry-After`.

pub mod guard;
pub mod plan;
pub mod ports;
pub mod tools;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

use guard::{Breaker, CallWindow, CircuitState, ResponseCache};
use plan::{Decision, ReplySettings};
use ports::{
    AiObserver, AiStore, ModelAnswer, ModelCall, ModelClient, ModelError, Outcome, PendingChat,
    Role, TenantQuota, ToolCall, ToolResult, Turn,
};

/// The actor's settings (`ai.*`).
#[derive(Debug, Clone)]
pub struct AiConfig {
    /// Model calls in flight at once on this node.
    pub max_concurrent_calls: usize,
    /// Attempts per call (the first included) on a retryable failure.
    pub max_attempts: u32,
    /// Backoff before the 2nd, 3rd, … attempt: base · 2^(n-1), ±20 %.
    pub backoff_base: Duration,
    /// A provider asking to wait longer than this is not waited for: the call fails.
    pub max_retry_wait: Duration,
    pub circuit_failures: u32,
    pub circuit_open_for: Duration,
    pub cache_entries: usize,
    pub cache_ttl: Duration,
    /// How often the store is asked for chats due (the pipeline also wakes on `Kick`).
    pub poll_interval: Duration,
    /// Chats answered at once on this node.
    pub max_chats_in_flight: usize,
    /// How long a claimed chat is this node's before another may take it.
    pub claim_lock: Duration,
    pub reply: ReplySettings,
}

impl Default for AiConfig {
    fn default() -> Self {
        Self {
            max_concurrent_calls: 3,
            max_attempts: 3,
            backoff_base: Duration::from_millis(500),
            max_retry_wait: Duration::from_secs(20),
            circuit_failures: 5,
            circuit_open_for: Duration::from_secs(30),
            cache_entries: 1000,
            cache_ttl: Duration::from_secs(600),
            poll_interval: Duration::from_millis(250),
            max_chats_in_flight: 64,
            claim_lock: Duration::from_secs(120),
            reply: ReplySettings::default(),
        }
    }
}

/// Why a call gave no answer. Shown to the tenant (`ai.error`, the API), never to a contact.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AiFailure {
    #[error("the circuit of credential {credential} is open after repeated failures")]
    CircuitOpen { credential: String },
    #[error("the tenant's AI calls per minute are used up; retry in {} s", retry_after.as_secs().max(1))]
    RateLimited { retry_after: Duration },
    #[error("the tenant's AI tokens for today are used up ({used} of {limit})")]
    BudgetExhausted { used: u64, limit: u64 },
    #[error("{0}")]
    Model(ModelError),
}

/// A model's answer and how it was obtained.
#[derive(Debug, Clone)]
pub struct Answered {
    pub answer: ModelAnswer,
    pub cached: bool,
    pub latency: Duration,
}

/// The engine the actor wraps: shared with the tasks that answer chats.
pub struct AiEngine {
    store: Arc<dyn AiStore>,
    model: Arc<dyn ModelClient>,
    observer: Arc<dyn AiObserver>,
    config: AiConfig,
    calls: Semaphore,
    chats: Arc<Semaphore>,
    breakers: Mutex<HashMap<String, Breaker>>,
    cache: Mutex<ResponseCache>,
    windows: Mutex<HashMap<Uuid, CallWindow>>,
    wake: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AiEngine {
    pub fn new(
        config: AiConfig,
        store: Arc<dyn AiStore>,
        model: Arc<dyn ModelClient>,
        observer: Arc<dyn AiObserver>,
    ) -> Arc<Self> {
        Arc::new(Self {
            calls: Semaphore::new(config.max_concurrent_calls.max(1)),
            chats: Arc::new(Semaphore::new(config.max_chats_in_flight.max(1))),
            breakers: Mutex::new(HashMap::new()),
            cache: Mutex::new(ResponseCache::new(config.cache_entries, config.cache_ttl)),
            windows: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            store,
            model,
            observer,
            config,
        })
    }

    /// One model call with every guard: cache, the tenant's rate and budget, the credential's
    /// circuit, the cap on calls in flight, and retries.
    pub async fn call(
        &self,
        tenant: Uuid,
        quota: TenantQuota,
        tokens_today: u64,
        call: &ModelCall,
        cache: Option<(u64, Uuid, &str)>,
    ) -> Result<Answered, AiFailure> {
        let started = Instant::now();
        if let Some((key, ..)) = cache
            && let Some(text) = lock(&self.cache).get(key, started)
        {
            self.observer
                .call_finished(call.provider, "cached", started.elapsed());
            return Ok(Answered {
                answer: ModelAnswer {
                    text,
                    prompt_tokens: 0,
                    output_tokens: 0,
                    tool_calls: Vec::new(),
                },
                cached: true,
                latency: started.elapsed(),
            });
        }
        if quota.tokens_per_day > 0 && tokens_today >= quota.tokens_per_day {
            self.observer
                .call_finished(call.provider, "budget", started.elapsed());
            return Err(AiFailure::BudgetExhausted {
                used: tokens_today,
                limit: quota.tokens_per_day,
            });
        }
        if let Err(retry_after) = lock(&self.windows)
            .entry(tenant)
            .or_default()
            .take(Instant::now(), quota.calls_per_minute)
        {
            self.observer
                .call_finished(call.provider, "rate_limited", started.elapsed());
            return Err(AiFailure::RateLimited { retry_after });
        }
        let credential = call.credential.id.clone();
        let mut attempt = 0;
        loop {
            attempt += 1;
            if !self.admit(&credential) {
                self.observer
                    .call_finished(call.provider, "circuit_open", started.elapsed());
                return Err(AiFailure::CircuitOpen { credential });
            }
            let result = {
                let _permit = self.calls.acquire().await;
                self.model.generate(call).await
            };
            match result {
                Ok(answer) => {
                    self.succeeded(&credential);
                    self.observer
                        .call_finished(call.provider, "ok", started.elapsed());
                    self.observer
                        .tokens(call.provider, answer.prompt_tokens, answer.output_tokens);
                    // Only plain answers are cached: a tool call acts, and must act again.
                    if let Some((key, session, chat)) = cache
                        && answer.tool_calls.is_empty()
                    {
                        lock(&self.cache).put(
                            key,
                            answer.text.clone(),
                            (session, chat.to_owned()),
                            Instant::now(),
                        );
                    }
                    return Ok(Answered {
                        answer,
                        cached: false,
                        latency: started.elapsed(),
                    });
                }
                Err(ModelError::Blocked { reason }) => {
                    // The provider works; this content is refused. Not a failure of the key.
                    self.succeeded(&credential);
                    self.observer
                        .call_finished(call.provider, "blocked", started.elapsed());
                    return Err(AiFailure::Model(ModelError::Blocked { reason }));
                }
                Err(e) => {
                    self.failed(&credential);
                    let wait = match &e {
                        ModelError::Retryable { retry_after, .. }
                            if attempt < self.config.max_attempts =>
                        {
                            Some(retry_after.unwrap_or_else(|| {
                                crate::backoff::delay(
                                    attempt,
                                    self.config.backoff_base,
                                    self.config.max_retry_wait,
                                )
                            }))
                        }
                        _ => None,
                    };
                    match wait {
                        Some(wait) if wait <= self.config.max_retry_wait => {
                            tracing::debug!(%credential, attempt, ?wait, error = %e, "model call failed; retrying");
                            tokio::time::sleep(wait).await;
                        }
                        _ => {
                            self.observer
                                .call_finished(call.provider, "error", started.elapsed());
                            return Err(AiFailure::Model(e));
                        }
                    }
                }
            }
        }
    }

    fn admit(&self, credential: &str) -> bool {
        let mut breakers = lock(&self.breakers);
        let b = breakers.entry(credential.to_owned()).or_default();
        let now = Instant::now();
        let before = b.state(now);
        let ok = b.admit(now);
        if before == CircuitState::HalfOpen && ok {
            self.observer.circuit_changed(credential, "half_open");
        }
        ok
    }

    fn succeeded(&self, credential: &str) {
        let mut breakers = lock(&self.breakers);
        if let Some(b) = breakers.get_mut(credential) {
            let was = b.state(Instant::now());
            b.success();
            if was != CircuitState::Closed {
                tracing::info!(%credential, "AI circuit closed");
                self.observer.circuit_changed(credential, "closed");
            }
        }
    }

    fn failed(&self, credential: &str) {
        let mut breakers = lock(&self.breakers);
        let b = breakers.entry(credential.to_owned()).or_default();
        if b.failure(
            Instant::now(),
            self.config.circuit_failures,
            self.config.circuit_open_for,
        ) {
            tracing::warn!(%credential, "AI circuit opened");
            self.observer.circuit_changed(credential, "open");
        }
    }

    /// The circuits' states, by credential.
    pub fn circuits(&self) -> Vec<(String, &'static str)> {
        let now = Instant::now();
        let mut v: Vec<_> = lock(&self.breakers)
            .iter()
            .map(|(k, b)| (k.clone(), b.state(now).as_str()))
            .collect();
        v.sort();
        v
    }

    /// Answers the chats that are due, until the actor stops.
    async fn run(self: Arc<Self>) {
        loop {
            let room = self.chats.available_permits();
            if room > 0 {
                match self
                    .store
                    .claim_due(room.min(100), self.config.claim_lock)
                    .await
                {
                    Ok(claimed) => {
                        for pending in claimed {
                            let Ok(permit) = self.chats.clone().try_acquire_owned() else {
                                // Claimed beyond the room (cannot happen: only this loop
                                // takes permits); it is due again when its lock ends.
                                break;
                            };
                            let engine = self.clone();
                            actix::spawn(async move {
                                engine.answer(pending).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "claiming chats to answer"),
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    /// Decides about one claimed chat and records what became of it.
    pub async fn answer(&self, pending: PendingChat) {
        let outcome = match self.store.load(&pending).await {
            Ok(Some(work)) => self.outcome(&pending, &work).await,
            Ok(None) => Ok(Outcome::Skipped { reason: "no_agent" }),
            Err(e) => Err(e),
        };
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(session = %pending.session_id, chat = %pending.chat, error = %e, "answering a chat");
                let backoff = e
                    .downcast_ref::<RetryLater>()
                    .map(|r| r.0)
                    .unwrap_or_else(|| {
                        Duration::from_secs(
                            2u64.saturating_pow(pending.attempts.clamp(0, 8) as u32),
                        )
                    });
                let _ = self
                    .store
                    .retry_at(&pending, SystemTime::now() + backoff)
                    .await;
                return;
            }
        };
        let name = match &outcome {
            Outcome::Reply { .. } => "reply",
            Outcome::Failed { .. } => "failed",
            Outcome::Handoff { .. } => "handoff",
            Outcome::Skipped { reason } => reason,
        };
        self.observer.decided(name);
        if let Err(e) = self.store.finish(&pending, outcome).await {
            tracing::warn!(session = %pending.session_id, chat = %pending.chat, error = %e, "recording an answer; it is retried");
            let _ = self
                .store
                .retry_at(&pending, SystemTime::now() + Duration::from_secs(2))
                .await;
        }
    }

    async fn outcome(
        &self,
        pending: &PendingChat,
        work: &ports::ChatWork,
    ) -> anyhow::Result<Outcome> {
        let agent_id = work.agent.id;
        Ok(
            match plan::decide(work, &self.config.reply, SystemTime::now()) {
                Decision::Skip(reason) => Outcome::Skipped { reason },
                Decision::Handoff(keyword) => Outcome::Handoff {
                    agent_id,
                    keyword: Some(keyword),
                    reason: "the contact asked for a human".into(),
                    text: None,
                    tool_calls: Vec::new(),
                    prompt_tokens: 0,
                    output_tokens: 0,
                },
                Decision::Answer { call, cache_key } => {
                    let started = Instant::now();
                    match self
                        .call(
                            pending.tenant_id,
                            work.quota,
                            work.tokens_today,
                            &call,
                            Some((cache_key, pending.session_id, &pending.chat)),
                        )
                        .await
                    {
                        Ok(first) => {
                            let answered =
                                match self.act_on_tools(pending, work, &call, first).await {
                                    Acted::Answer(a) => a,
                                    Acted::Handoff(h) => return Ok(h),
                                    Acted::Failed(error) => {
                                        return Ok(Outcome::Failed {
                                            agent_id,
                                            text: work.agent.fallback_text.clone(),
                                            error,
                                            latency_ms: millis(started.elapsed()),
                                        });
                                    }
                                };
                            let parts =
                                plan::split_answer(&answered.answer.text, work.agent.split_replies);
                            if parts.is_empty() {
                                Outcome::Failed {
                                    agent_id,
                                    text: work.agent.fallback_text.clone(),
                                    error: "the model answered with no text".into(),
                                    latency_ms: millis(answered.latency),
                                }
                            } else {
                                Outcome::Reply {
                                    agent_id,
                                    typing: if work.agent.typing {
                                        plan::typing_for(&parts, &self.config.reply)
                                    } else {
                                        Duration::ZERO
                                    },
                                    parts,
                                    prompt_tokens: answered.answer.prompt_tokens,
                                    output_tokens: answered.answer.output_tokens,
                                    latency_ms: millis(answered.latency),
                                    cached: answered.cached,
                                    tool_calls: answered.answer.tool_calls,
                                }
                            }
                        }
                        Err(AiFailure::RateLimited { retry_after }) => {
                            // The tenant's own pace: answered later, not failed.
                            anyhow::bail!(RetryLater(retry_after))
                        }
                        Err(failure) => Outcome::Failed {
                            agent_id,
                            text: work.agent.fallback_text.clone(),
                            error: failure.to_string(),
                            latency_ms: millis(started.elapsed()),
                        },
                    }
                }
            },
        )
    }
}

/// What the model's tool calls came to.
enum Acted {
    /// The answer to send (its `tool_calls`: the calls that were run).
    Answer(Answered),
    Handoff(Outcome),
    Failed(String),
}

impl AiEngine {
    /// Runs the tools the model called (the gateway's own, through the store) and, when it
    /// acted without saying anything, asks it once more, with the tools' answers and no
    /// tools, for the words to send.
    async fn act_on_tools(
        &self,
        pending: &PendingChat,
        work: &ports::ChatWork,
        call: &ModelCall,
        first: Answered,
    ) -> Acted {
        if first.answer.tool_calls.is_empty() {
            return Acted::Answer(first);
        }
        let calls: Vec<ToolCall> = first.answer.tool_calls.clone();
        let mut handoff: Option<String> = None;
        let mut results = Vec::with_capacity(calls.len());
        for c in &calls {
            let offered = work.agent.tools.contains(&c.name);
            let content = if !offered {
                serde_json::json!({"error": format!("there is no tool {}", c.name)})
            } else if c.name == tools::HANDOFF {
                let reason = serde_json::from_str::<serde_json::Value>(&c.arguments)
                    .ok()
                    .and_then(|v| v["reason"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "the model handed the chat to a human".into());
                handoff = Some(reason);
                serde_json::json!({"ok": true, "note": "a colleague takes over this conversation"})
            } else {
                match self.store.run_tool(pending, work.agent.id, c).await {
                    Ok(v) => v,
                    Err(e) => serde_json::json!({"error": e.to_string()}),
                }
            };
            results.push(ToolResult {
                call_id: c.id.clone(),
                name: c.name.clone(),
                content: content.to_string(),
            });
        }
        let (mut prompt, mut output) = (first.answer.prompt_tokens, first.answer.output_tokens);
        let mut text = first.answer.text.trim().to_owned();
        if text.is_empty() && handoff.is_none() {
            let mut follow = call.clone();
            follow.tools.clear();
            let mut asked = Turn::text(Role::Model, "");
            asked.tool_calls = calls.clone();
            let mut answered = Turn::text(Role::User, "");
            answered.tool_results = results;
            follow.turns.push(asked);
            follow.turns.push(answered);
            match self
                .call(
                    pending.tenant_id,
                    work.quota,
                    work.tokens_today + prompt + output,
                    &follow,
                    None,
                )
                .await
            {
                Ok(second) => {
                    prompt += second.answer.prompt_tokens;
                    output += second.answer.output_tokens;
                    text = second.answer.text;
                }
                Err(f) => return Acted::Failed(f.to_string()),
            }
        }
        if let Some(reason) = handoff {
            return Acted::Handoff(Outcome::Handoff {
                agent_id: work.agent.id,
                keyword: None,
                reason,
                text: Some(text).filter(|t| !t.trim().is_empty()),
                tool_calls: calls,
                prompt_tokens: prompt,
                output_tokens: output,
            });
        }
        Acted::Answer(Answered {
            answer: ModelAnswer {
                text,
                prompt_tokens: prompt,
                output_tokens: output,
                tool_calls: calls,
            },
            cached: false,
            latency: first.latency,
        })
    }
}

/// The tenant's rate limit says: later.
#[derive(Debug, thiserror::Error)]
#[error("the tenant's AI calls per minute are used up; retry in {0:?}")]
struct RetryLater(Duration);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The actor: owns the engine and runs the reply pipeline while it lives.
pub struct AiActor {
    engine: Arc<AiEngine>,
}

impl AiActor {
    pub fn new(engine: Arc<AiEngine>) -> Self {
        Self { engine }
    }
}

impl Actor for AiActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.spawn(actix::fut::wrap_future(self.engine.clone().run()));
    }
}

impl actix::Supervised for AiActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!("AiActor restarting");
    }
}

/// A one-off call (trying an agent, suggesting a reply), with every guard but the cache.
#[derive(Message)]
#[rtype(result = "Result<Answered, AiFailure>")]
pub struct Generate {
    pub tenant_id: Uuid,
    pub quota: TenantQuota,
    pub tokens_today: u64,
    pub call: ModelCall,
}

impl Handler<Generate> for AiActor {
    type Result = ResponseFuture<Result<Answered, AiFailure>>;

    fn handle(&mut self, msg: Generate, _: &mut Context<Self>) -> Self::Result {
        let engine = self.engine.clone();
        Box::pin(async move {
            engine
                .call(msg.tenant_id, msg.quota, msg.tokens_today, &msg.call, None)
                .await
        })
    }
}

/// A chat's agent changed: its cached answers go.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct ClearChatCache {
    pub session_id: Uuid,
    pub chat: String,
}

impl Handler<ClearChatCache> for AiActor {
    type Result = usize;

    fn handle(&mut self, msg: ClearChatCache, _: &mut Context<Self>) -> usize {
        lock(&self.engine.cache).clear_chat(msg.session_id, &msg.chat)
    }
}

/// New chats are due: look now rather than at the next poll.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kick;

impl Handler<Kick> for AiActor {
    type Result = ();

    fn handle(&mut self, _: Kick, _: &mut Context<Self>) {
        self.engine.wake.notify_one();
    }
}

/// A tenant's AI rate-limit state on this node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LimitState {
    pub calls_last_minute: usize,
    /// Every credential's circuit on this node: `closed`, `open` or `half_open`.
    pub circuits: Vec<(String, &'static str)>,
}

#[derive(Message)]
#[rtype(result = "LimitState")]
pub struct Limits {
    pub tenant_id: Uuid,
    /// Forget the tenant's window first (the admin's reset).
    pub reset: bool,
}

impl Handler<Limits> for AiActor {
    type Result = MessageResult<Limits>;

    fn handle(&mut self, msg: Limits, _: &mut Context<Self>) -> Self::Result {
        let mut windows = lock(&self.engine.windows);
        if msg.reset {
            windows.remove(&msg.tenant_id);
        }
        let calls_last_minute = windows
            .get_mut(&msg.tenant_id)
            .map(|w| w.used(Instant::now()))
            .unwrap_or(0);
        drop(windows);
        MessageResult(LimitState {
            calls_last_minute,
            circuits: self.engine.circuits(),
        })
    }
}
