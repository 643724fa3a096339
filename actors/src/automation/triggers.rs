//! Triggers as pure code: a tenant's enabled triggers compiled once per version, and the
//! decision on one event (which triggers fire, in priority order, first match wins unless
//! `continue`), with its reasons for the dry run.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::conditions::{Condition, ConditionSpec, Facts, compile_all};

/// The events a trigger may listen to.
pub const TRIGGER_EVENTS: &[&str] = &[
    "message.received",
    "chat.first_message",
    "message.status",
    "session.connected",
    "session.disconnected",
    "card.moved",
    "schedule",
];

/// What a trigger does when it fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerAction {
    /// Start an execution of this flow.
    Flow(Uuid),
    /// Send this text (a template) to the chat.
    Reply(String),
}

/// A trigger as stored.
#[derive(Debug, Clone)]
pub struct TriggerSpec {
    pub id: Uuid,
    pub name: String,
    pub session_id: Option<Uuid>,
    pub event: String,
    pub conditions: Vec<ConditionSpec>,
    pub action: TriggerAction,
    pub priority: i32,
    pub cooldown_secs: i32,
    pub continue_after: bool,
}

#[derive(Debug, Clone)]
pub struct CompiledTrigger {
    pub spec: TriggerSpec,
    pub conditions: Vec<Condition>,
}

/// A tenant's enabled triggers, highest priority first (then oldest first).
#[derive(Debug, Clone, Default)]
pub struct TriggerSet {
    pub version: i64,
    pub triggers: Vec<CompiledTrigger>,
}

impl TriggerSet {
    /// Compiles stored triggers; one whose conditions no longer compile is left out (and
    /// named in the second list) rather than failing the tenant's others.
    pub fn compile(version: i64, specs: Vec<TriggerSpec>) -> (TriggerSet, Vec<Uuid>) {
        let mut bad = Vec::new();
        let mut triggers: Vec<CompiledTrigger> = specs
            .into_iter()
            .filter_map(|spec| match compile_all(&spec.conditions, false) {
                Ok(conditions) => Some(CompiledTrigger { spec, conditions }),
                Err(_) => {
                    bad.push(spec.id);
                    None
                }
            })
            .collect();
        // Stable: equal priorities keep the store's order (oldest first, by id v7).
        triggers.sort_by_key(|t| std::cmp::Reverse(t.spec.priority));
        (TriggerSet { version, triggers }, bad)
    }
}

/// One trigger's verdict on an event: the dry run's answer, and the log's.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub trigger_id: Uuid,
    pub name: String,
    pub priority: i32,
    pub matched: bool,
    /// Whether it would act (matched, not cooling down, not after a first match).
    pub fires: bool,
    /// Each condition's result, in order.
    pub conditions: Vec<bool>,
    /// Why it does or does not fire, in words.
    pub reason: String,
}

/// What the event is, for the decision.
#[derive(Debug, Clone, Copy)]
pub struct EventFacts<'a> {
    /// `message.received`, `message.status`, `session.connected`, …
    pub kind: &'a str,
    pub session_id: Option<Uuid>,
    /// The contact's first message ever to the session.
    pub first_message: bool,
    pub facts: Facts<'a>,
}

/// Evaluates the triggers on an event in order: the first that matches fires, and the ones
/// after it only if it said `continue`. `cooling` holds the triggers whose per-chat cooldown
/// is running.
pub fn evaluate(set: &TriggerSet, ev: &EventFacts<'_>, cooling: &HashSet<Uuid>) -> Vec<Verdict> {
    let mut out = Vec::new();
    let mut stopped_by: Option<&str> = None;
    for t in &set.triggers {
        let s = &t.spec;
        let listens = s.event == ev.kind
            || (s.event == "chat.first_message"
                && ev.kind == "message.received"
                && ev.first_message);
        if !listens || s.session_id.is_some_and(|id| Some(id) != ev.session_id) {
            continue;
        }
        let results: Vec<bool> = t.conditions.iter().map(|c| c.matches(&ev.facts)).collect();
        let matched = results.iter().all(|r| *r);
        let (fires, reason) = if !matched {
            let failed: Vec<String> = results
                .iter()
                .enumerate()
                .filter(|(_, r)| !**r)
                .map(|(i, _)| {
                    let c = &s.conditions[i];
                    format!("conditions[{i}] ({} {} {})", c.field, c.op, c.value)
                })
                .collect();
            (false, format!("did not match: {}", failed.join(", ")))
        } else if let Some(first) = stopped_by {
            (
                false,
                format!("matched, but {first:?} matched first and does not continue"),
            )
        } else if cooling.contains(&s.id) {
            (
                false,
                format!("matched, but cooling down ({} s per chat)", s.cooldown_secs),
            )
        } else {
            let why = if t.conditions.is_empty() {
                "matched: it has no conditions".to_owned()
            } else {
                "matched every condition".to_owned()
            };
            (true, why)
        };
        if fires && !s.continue_after {
            stopped_by = Some(&s.name);
        }
        out.push(Verdict {
            trigger_id: s.id,
            name: s.name.clone(),
            priority: s.priority,
            matched,
            fires,
            conditions: results,
            reason,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;

    fn trigger(
        name: &str,
        priority: i32,
        cont: bool,
        conditions: serde_json::Value,
    ) -> TriggerSpec {
        TriggerSpec {
            id: Uuid::new_v4(),
            name: name.into(),
            session_id: None,
            event: "message.received".into(),
            conditions: serde_json::from_value(conditions).unwrap(),
            action: TriggerAction::Reply("x".into()),
            priority,
            cooldown_secs: 0,
            continue_after: cont,
        }
    }

    fn event(text: &'static str) -> EventFacts<'static> {
        EventFacts {
            kind: "message.received",
            session_id: None,
            first_message: false,
            facts: Facts {
                text: Some(text),
                from: Some("+1555"),
                kind: Some("text"),
                labels: &[],
                at: Utc::now(),
                tz: chrono_tz::UTC,
                vars: None,
                column: None,
                board: None,
            },
        }
    }

    #[test]
    fn the_highest_priority_match_wins_unless_it_continues() {
        let low = trigger(
            "low",
            1,
            false,
            json!([{"field": "text", "op": "contains", "value": "price"}]),
        );
        let high = trigger(
            "high",
            10,
            false,
            json!([{"field": "text", "op": "contains", "value": "price"}]),
        );
        let (set, bad) = TriggerSet::compile(1, vec![low.clone(), high.clone()]);
        assert!(bad.is_empty());
        let v = evaluate(&set, &event("the price?"), &HashSet::new());
        assert_eq!(
            v.iter()
                .filter(|v| v.fires)
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>(),
            vec!["high"]
        );
        assert!(v[1].reason.contains("matched first"));

        let cont = trigger(
            "high",
            10,
            true,
            json!([{"field": "text", "op": "contains", "value": "price"}]),
        );
        let (set, _) = TriggerSet::compile(2, vec![low, cont]);
        let v = evaluate(&set, &event("the price?"), &HashSet::new());
        assert_eq!(v.iter().filter(|v| v.fires).count(), 2);
    }

    #[test]
    fn cooling_triggers_do_not_fire_and_let_the_next_one() {
        let a = trigger("a", 10, false, json!([]));
        let b = trigger("b", 1, false, json!([]));
        let (set, _) = TriggerSet::compile(1, vec![a.clone(), b]);
        let cooling: HashSet<Uuid> = [a.id].into();
        let v = evaluate(&set, &event("hi"), &cooling);
        assert!(!v[0].fires && v[0].reason.contains("cooling"));
        assert!(v[1].fires);
    }

    #[test]
    fn first_message_triggers_listen_only_to_a_first_message() {
        let mut t = trigger("welcome", 0, false, json!([]));
        t.event = "chat.first_message".into();
        let (set, _) = TriggerSet::compile(1, vec![t]);
        assert!(evaluate(&set, &event("hi"), &HashSet::new()).is_empty());
        let mut first = event("hi");
        first.first_message = true;
        assert!(evaluate(&set, &first, &HashSet::new())[0].fires);
    }

    #[test]
    fn a_trigger_of_another_session_is_not_evaluated() {
        let mut t = trigger("t", 0, false, json!([]));
        t.session_id = Some(Uuid::new_v4());
        let (set, _) = TriggerSet::compile(1, vec![t]);
        let mut e = event("hi");
        e.session_id = Some(Uuid::new_v4());
        assert!(evaluate(&set, &e, &HashSet::new()).is_empty());
    }
}
