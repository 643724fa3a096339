//! Automation end to end: simulated contacts write to sessions linked through the real
//! whatsapp-rust client; triggers and flows answer through the ordinary outbound path, and
//! the contact's phone shows what arrived.

use std::time::Duration;

use serde_json::{Value, json};
use wagate::configuration::{Settings, TierQuotas};
use wagate::whatsapp_network::Simulator;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::linked::{WAIT, spawn};
use crate::ai::{gemini_answer, gemini_path, with_gemini};
use crate::helpers::TestApp;

const OWN: &str = "+15550009001";
const CONTACT: &str = "+4915550009002";

fn unpaced(s: &mut Settings) {
    s.messages.rate_per_minute = TierQuotas {
        standard: 0,
        professional: 0,
        enterprise: 0,
    };
    s.automation.poll_interval_ms = 50;
}

struct Desk {
    app: TestApp,
    sim: Simulator,
    key: String,
    session: String,
}

async fn desk(customize: impl FnOnce(&mut Settings)) -> Desk {
    let app = spawn(|s| {
        unpaced(s);
        customize(s);
    })
    .await;
    let sim = app.sim();
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let session = app.new_session(&key, "main").await;
    app.link(&key, &session, OWN).await;
    sim.add_contact(CONTACT, Some("Lia")).unwrap();
    Desk {
        app,
        sim,
        key,
        session,
    }
}

/// What `contact` received from `own`, oldest first.
fn received(sim: &Simulator, contact: &str, own: &str) -> Vec<String> {
    sim.contact_inbox(contact)
        .into_iter()
        .filter(|m| m.from == own.trim_start_matches('+'))
        .filter_map(|m| m.text)
        .collect()
}

impl Desk {
    fn answers(&self) -> Vec<String> {
        received(&self.sim, CONTACT, OWN)
    }

    async fn wait_answers(&self, count: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = self.answers();
            if got.len() >= count {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the contact got {got:?}, waited for {count}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn write(&self, text: &str) -> String {
        self.write_as(CONTACT, text).await
    }

    async fn write_as(&self, contact: &str, text: &str) -> String {
        let id = self.sim.inject_text(contact, OWN, text).await.unwrap();
        self.app.wait_received(&self.key, &self.session, &id).await;
        id
    }

    /// Waits until automation has settled every event written so far.
    async fn settled(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self
            .app
            .count_sql("SELECT count(*) AS n FROM automation_work WHERE done_at IS NULL")
            .await
            > 0
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "automation never settled"
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        // And the executions it started have run to a wait or their end.
        while self
            .app
            .count_sql("SELECT count(*) AS n FROM flow_executions WHERE status = 'running'")
            .await
            > 0
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "executions never settled"
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        // What they queued has left.
        while self
            .app
            .count_sql("SELECT count(*) AS n FROM messages WHERE status = 'queued'")
            .await
            > 0
        {
            assert!(tokio::time::Instant::now() < deadline, "sends never left");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[actix_web::test]
async fn a_keyword_starts_a_flow_the_contact_gets_its_text_once_and_the_agent_stays_quiet() {
    let gemini = MockServer::start().await;
    let uri = gemini.uri();
    let d = desk(move |s| with_gemini(s, &uri)).await;
    Mock::given(method("POST"))
        .and(path(gemini_path()))
        .respond_with(ResponseTemplate::new(200).set_body_json(gemini_answer(
            "The agent speaking.",
            5,
            3,
        )))
        .mount(&gemini)
        .await;
    let agent = d
        .app
        .create_agent(&d.key, json!({"debounce_ms": 300, "typing": false}))
        .await;
    let res = d
        .app
        .put(&format!("/api/v1/sessions/{}/agent", d.session))
        .bearer_auth(&d.key)
        .json(&json!({"agent_id": agent["id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let flow = d
        .app
        .create_flow(
            &d.key,
            json!({"name": "menu", "steps": [
                {"id": "menu", "type": "send_text", "text": "Hi {{contact_name}}! 1) Prices 2) Hours"}
            ]}),
        )
        .await;
    d.app
        .create_trigger(
            &d.key,
            json!({"name": "menu", "event": "message.received",
                   "conditions": [{"field": "text", "op": "any", "value": ["menu", "cardápio"]}],
                   "flow_id": flow["id"]}),
        )
        .await;
    d.write("Can I see the MENU please?").await;
    assert_eq!(d.wait_answers(1).await, vec!["Hi Lia! 1) Prices 2) Hours"]);
    d.settled().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(d.answers().len(), 1, "sent exactly once");
    assert!(
        gemini.received_requests().await.unwrap().is_empty(),
        "a message a trigger handled is not also answered by the agent"
    );
    let execs = d
        .app
        .get_json_as(
            &format!("/api/v1/flows/{}/executions", flow["id"].as_str().unwrap()),
            &d.key,
        )
        .await;
    assert_eq!(execs["items"].as_array().unwrap().len(), 1);
    assert_eq!(execs["items"][0]["status"], "completed");
    assert_eq!(execs["items"][0]["source"], "trigger");

    // A message no trigger takes goes to the agent, after the triggers had their look.
    d.write("what is your address").await;
    let got = d.wait_answers(2).await;
    assert_eq!(got[1], "The agent speaking.");
    assert_eq!(gemini.received_requests().await.unwrap().len(), 1);
}

#[actix_web::test]
async fn a_first_message_trigger_fires_once_per_contact_and_a_cooldown_holds() {
    let d = desk(|_| {}).await;
    let other = "+4915550009003";
    d.sim.add_contact(other, Some("Max")).unwrap();
    d.app
        .create_trigger(
            &d.key,
            json!({"name": "welcome", "event": "chat.first_message", "priority": 100,
                   "reply_text": "Welcome, {{contact_name}}!", "continue": true}),
        )
        .await;
    d.app
        .create_trigger(
            &d.key,
            json!({"name": "price", "event": "message.received", "cooldown_secs": 3600,
                   "conditions": [{"field": "text", "op": "contains", "value": "preco"}],
                   "reply_text": "Prices: see our site."}),
        )
        .await;
    d.write("Olá, qual o preço?").await;
    assert_eq!(
        d.wait_answers(2).await,
        vec!["Welcome, Lia!", "Prices: see our site."],
        "accents and case folded; the welcome continues to the next trigger"
    );
    d.write("e o PREÇO do azul?").await;
    d.write("hello again").await;
    d.settled().await;
    assert_eq!(
        d.answers().len(),
        2,
        "no second welcome, and the price trigger cools down: {:?}",
        d.answers()
    );
    d.write_as(other, "hi").await;
    d.settled().await;
    assert_eq!(received(&d.sim, other, OWN), vec!["Welcome, Max!"]);
    let stats = d.app.get_json_as("/api/v1/triggers/stats", &d.key).await;
    assert_eq!(stats["fired"], 3, "{stats}");
}

#[actix_web::test]
async fn wait_for_reply_takes_the_answer_or_times_out() {
    let d = desk(|_| {}).await;
    let flow = d
        .app
        .create_flow(
            &d.key,
            json!({"name": "survey", "steps": [
                {"id": "ask", "type": "send_text", "text": "Rate us 1-5?"},
                {"id": "answer", "type": "wait_for_reply", "timeout_secs": 2, "variable": "score", "on_timeout": "nudge"},
                {"id": "good?", "type": "branch", "conditions": [{"field": "score", "op": "in", "value": ["4", "5"]}], "then": "thanks", "else": "sorry"},
                {"id": "thanks", "type": "send_text", "text": "Thanks for the {{score}}!", "next": "end"},
                {"id": "sorry", "type": "send_text", "text": "Sorry to hear, {{score}}.", "next": "end"},
                {"id": "nudge", "type": "send_text", "text": "No answer? No problem."},
                {"id": "end", "type": "end"}
            ]}),
        )
        .await;
    d.app
        .create_trigger(
            &d.key,
            json!({"name": "survey", "event": "message.received",
                   "conditions": [{"field": "text", "op": "equals", "value": "survey"}],
                   "flow_id": flow["id"]}),
        )
        .await;
    d.write("survey").await;
    assert_eq!(d.wait_answers(1).await, vec!["Rate us 1-5?"]);
    d.settled().await;
    d.write("5").await;
    assert_eq!(d.wait_answers(2).await[1], "Thanks for the 5!");
    // No answer this time: the timeout's path.
    d.write("survey").await;
    let got = d.wait_answers(4).await;
    assert_eq!(got[2], "Rate us 1-5?");
    assert_eq!(got[3], "No answer? No problem.");
    d.settled().await;
    assert_eq!(d.answers().len(), 4);
    let execs = d
        .app
        .get_json_as(
            &format!("/api/v1/flows/{}/executions", flow["id"].as_str().unwrap()),
            &d.key,
        )
        .await;
    let items = execs["items"].as_array().unwrap();
    assert_eq!(
        items.len(),
        2,
        "the reply resumed the first; it started nothing new"
    );
    let first = d
        .app
        .get_json_as(
            &format!("/api/v1/executions/{}", items[1]["id"].as_str().unwrap()),
            &d.key,
        )
        .await;
    let steps: Vec<(&str, &str)> = first["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step_id"].as_str().unwrap(),
                s["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("ask", "ok"),
            ("answer", "waiting"),
            ("answer", "ok"),
            ("good?", "ok"),
            ("thanks", "ok"),
            ("end", "ok")
        ]
    );
}

#[actix_web::test]
async fn a_paused_bot_answers_nothing_until_resumed() {
    let d = desk(|_| {}).await;
    d.app
        .create_trigger(
            &d.key,
            json!({"name": "hours", "event": "message.received",
                   "conditions": [{"field": "text", "op": "contains", "value": "hours"}],
                   "reply_text": "9 to 5."}),
        )
        .await;
    let res = d
        .app
        .post_json(
            &d.key,
            &format!("/api/v1/sessions/{}/bot/pause", d.session),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
    d.write("hours?").await;
    d.settled().await;
    assert!(d.answers().is_empty(), "paused: {:?}", d.answers());
    let res = d
        .app
        .post_json(
            &d.key,
            &format!("/api/v1/sessions/{}/bot/resume", d.session),
            json!(null),
        )
        .await;
    assert_eq!(res.status(), 200);
    d.write("hours now?").await;
    assert_eq!(d.wait_answers(1).await, vec!["9 to 5."]);
}

#[actix_web::test]
async fn two_sessions_with_automation_do_not_answer_each_others_automation() {
    let d = desk(|_| {}).await;
    // Another business on the same gateway, with its own bot.
    let other_own = "+15550009101";
    let (_, other_key) = d.app.create_tenant("Globex", "standard").await;
    let other = d.app.new_session(&other_key, "second").await;
    d.app.link(&other_key, &other, other_own).await;
    // Both sessions answer anything with a greeting: two bots that would talk forever.
    for (k, s) in [(&d.key, &d.session), (&other_key, &other)] {
        d.app
            .create_trigger(
                k,
                json!({"name": "greet", "session_id": s, "event": "message.received", "reply_text": "Hello from {{session_name}}"}),
            )
            .await;
    }
    // The operator of "main" writes to "second" by hand.
    let sent = d
        .app
        .send_ok(
            &d.key,
            &d.session,
            json!({"to": other_own, "text": "hi there"}),
        )
        .await;
    d.app
        .wait_message(
            &d.key,
            &d.session,
            sent["id"].as_str().unwrap(),
            "delivered",
        )
        .await;
    // "second" greets back (a person wrote to it); "main" must not greet the greeting.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let guarded = d
            .app
            .count_sql("SELECT count(*) AS n FROM automation_work WHERE outcome = 'loop_guard'")
            .await;
        if guarded >= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the greeting never reached main"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.settled().await;
    let app = &d.app;
    let out = |s: &str| {
        let sql = format!(
            "SELECT count(*) AS n FROM messages WHERE session_id = '{s}' AND direction = 'out'"
        );
        async move { app.count_sql(&sql).await }
    };
    assert_eq!(
        out(&d.session).await,
        1,
        "main sent only the operator's message"
    );
    assert_eq!(out(&other).await, 1, "second greeted once");
    let main_in: Vec<Value> = d.app.events(&d.key, &d.session, 0).await;
    assert!(
        main_in
            .iter()
            .any(|e| e["type"] == "message.received" && e["data"]["text"] == "Hello from second"),
        "main received the greeting"
    );
}

/// Flows act on the CRM and tell the team: a keyword makes the chat's card and a notification;
/// a card moved into "Won" by a person thanks the contact (a `card.moved` trigger), while a
/// card a flow moves never triggers automation; a step that cannot act fails by name.
#[actix_web::test]
async fn flows_make_and_move_the_chats_card_and_a_card_moved_to_won_thanks_the_contact() {
    let d = desk(|_| {}).await;
    let board = d
        .app
        .create_board(&d.key, json!({"name": "Sales", "columns": ["New", "Won"]}))
        .await;
    let board_id = board["id"].as_str().unwrap().to_owned();
    let (new_col, won_col) = (
        board["columns"][0]["id"].as_str().unwrap().to_owned(),
        board["columns"][1]["id"].as_str().unwrap().to_owned(),
    );
    let lead = d
        .app
        .create_flow(
            &d.key,
            json!({"name": "lead", "steps": [
                {"id": "card", "type": "create_card", "board_id": board_id, "title": "Lead {{ contact_name }}"},
                {"id": "tell", "type": "notify", "title": "New lead {{ phone }}", "body": "{{ text }}", "level": "warning"}
            ]}),
        )
        .await;
    d.app
        .create_trigger(
            &d.key,
            json!({"name": "buyers", "event": "message.received",
                   "conditions": [{"field": "text", "op": "contains", "value": "buy"}],
                   "flow_id": lead["id"]}),
        )
        .await;
    d.app
        .create_trigger(
            &d.key,
            json!({"name": "won", "event": "card.moved",
                   "conditions": [{"field": "column", "op": "equals", "value": "won"},
                                  {"field": "board", "op": "equals", "value": "Sales"}],
                   "reply_text": "Thank you for your order, {{ contact_name }}!"}),
        )
        .await;

    d.write("I want to buy two jackets").await;
    d.settled().await;
    let layout = d.app.board_layout(&d.key, &board_id).await;
    assert_eq!(layout[0].0, new_col);
    assert_eq!(layout[0].1.len(), 1, "one card for the chat: {layout:?}");
    let card_id = layout[0].1[0].clone();
    let card = d
        .app
        .get_json_as(
            &format!("/api/v1/boards/{board_id}/cards/{card_id}"),
            &d.key,
        )
        .await;
    assert_eq!(card["title"], "Lead Lia");
    assert_eq!(card["chat"], CONTACT);
    let notes = d.app.get_json_as("/api/v1/notifications", &d.key).await;
    let flow_notes: Vec<&Value> = notes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "flow")
        .collect();
    assert_eq!(flow_notes.len(), 1, "{notes}");
    assert_eq!(flow_notes[0]["title"], format!("New lead {CONTACT}"));
    assert_eq!(flow_notes[0]["body"], "I want to buy two jackets");
    assert_eq!(flow_notes[0]["level"], "warning");
    // The card was made by the flow, and its history says so.
    assert_eq!(
        d.app
            .count_sql("SELECT count(*) AS n FROM card_activity WHERE actor_kind = 'flow' AND kind = 'created'")
            .await,
        1
    );
    assert!(d.answers().is_empty(), "the lead flow sends nothing");

    // A person moves the card into Won: the contact is thanked, once.
    let (status, _) = d
        .app
        .move_card(&d.key, &board_id, &card_id, &won_col, 0)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        d.wait_answers(1).await,
        vec!["Thank you for your order, Lia!"]
    );
    // Reordering within Won is no move on: nothing more.
    let (status, _) = d
        .app
        .move_card(&d.key, &board_id, &card_id, &won_col, 5)
        .await;
    assert_eq!(status, 200);

    // A flow moves it back to New and into Won again: no card.moved of a flow triggers
    // automation, and the chat keeps its one card.
    let again = d
        .app
        .create_flow(
            &d.key,
            json!({"name": "again", "steps": [
                {"id": "back", "type": "move_card", "board_id": board_id, "column": "new"},
                {"id": "won", "type": "move_card", "board_id": board_id, "column": won_col},
                {"id": "card", "type": "create_card", "board_id": board_id},
                {"id": "lost", "type": "move_card", "board_id": board_id, "column": "Lost"}
            ]}),
        )
        .await;
    let res = d
        .app
        .post_json(
            &d.key,
            &format!("/api/v1/flows/{}/execute", again["id"].as_str().unwrap()),
            json!({"session_id": d.session, "chat": CONTACT}),
        )
        .await;
    assert_eq!(res.status(), 202);
    let exec: Value = res.json().await.unwrap();
    d.settled().await;
    let exec = d
        .app
        .get_json_as(
            &format!("/api/v1/executions/{}", exec["id"].as_str().unwrap()),
            &d.key,
        )
        .await;
    assert_eq!(exec["status"], "failed", "{exec}");
    assert!(
        exec["error"]
            .as_str()
            .unwrap()
            .contains("no column \"Lost\""),
        "{exec}"
    );
    let steps: Vec<(&str, &str, &Value)> = exec["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step_id"].as_str().unwrap(),
                s["outcome"].as_str().unwrap(),
                &s["output"],
            )
        })
        .collect();
    assert_eq!(
        steps.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(),
        [
            ("back", "ok"),
            ("won", "ok"),
            ("card", "ok"),
            ("lost", "failed")
        ]
    );
    assert_eq!(steps[0].2["moved"], true);
    assert_eq!(steps[2].2["created"], false);
    assert_eq!(steps[2].2["card_id"], card_id.as_str());
    let layout = d.app.board_layout(&d.key, &board_id).await;
    assert_eq!(layout[1].1, vec![card_id.clone()], "{layout:?}");
    assert!(layout[0].1.is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        d.answers().len(),
        1,
        "a card a flow moved into Won thanks no one"
    );

    // A board of another tenant is refused when the flow is saved, naming the step.
    let (_, other) = d.app.create_tenant("Other", "standard").await;
    let res = d
        .app
        .post_json(
            &other,
            "/api/v1/flows",
            json!({"name": "steal", "steps": [
                {"id": "x", "type": "create_card", "board_id": board_id}
            ]}),
        )
        .await;
    let err = crate::helpers::assert_error(res, 400, "validation_failed").await;
    assert_eq!(err["error"]["details"]["field"], "steps[0]");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("names no board of this tenant"),
        "{err}"
    );
}
