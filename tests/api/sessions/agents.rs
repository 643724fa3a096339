//! The reply pipeline end to end: a simulated contact writes to a session linked through the
//! real whatsapp-rust client, the AiActor asks a wiremock Gemini (answering as Gemini
//! documents), and the answer reaches the contact's phone through the ordinary outbound path.

use std::time::Duration;

use serde_json::{Value, json};
use wagate::configuration::Settings;
use wagate::whatsapp_network::Simulator;
use wagate_actors::whatsapp_rust::buffa::MessageField;
use wagate_actors::whatsapp_rust::waproto::whatsapp as wa;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::linked::{WAIT, spawn};
use crate::ai::{gemini_answer, gemini_error, gemini_path, with_gemini};
use crate::helpers::TestApp;

const OWN: &str = "+15550008001";
const CONTACT: &str = "+4915550008002";

/// A linked session whose chats an agent answers.
struct Bot {
    app: TestApp,
    sim: Simulator,
    key: String,
    session: String,
    agent: Value,
    gemini: MockServer,
}

async fn bot(agent: Value, customize: impl FnOnce(&mut Settings)) -> Bot {
    let gemini = MockServer::start().await;
    let uri = gemini.uri();
    let app = spawn(move |s| {
        with_gemini(s, &uri);
        customize(s);
    })
    .await;
    let sim = app.sim();
    let (_, key) = app.create_tenant("Acme", "standard").await;
    let session = app.new_session(&key, "main").await;
    app.link(&key, &session, OWN).await;
    sim.add_contact(CONTACT, Some("Lia")).unwrap();
    let agent = app.create_agent(&key, agent).await;
    let res = app
        .put(&format!("/api/v1/sessions/{session}/agent"))
        .bearer_auth(&key)
        .json(&json!({"agent_id": agent["id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    Bot {
        app,
        sim,
        key,
        session,
        agent,
        gemini,
    }
}

impl Bot {
    async fn answer_with(&self, text: &str) {
        Mock::given(method("POST"))
            .and(path(gemini_path()))
            .respond_with(ResponseTemplate::new(200).set_body_json(gemini_answer(text, 12, 5)))
            .mount(&self.gemini)
            .await;
    }

    /// What the contact received from the session, oldest first.
    fn answers(&self) -> Vec<String> {
        self.sim
            .contact_inbox(CONTACT)
            .into_iter()
            .filter(|m| m.from == OWN.trim_start_matches('+'))
            .filter_map(|m| m.text)
            .collect()
    }

    async fn wait_from_us(&self, count: usize) -> Vec<String> {
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

    async fn model_requests(&self) -> Vec<Value> {
        self.gemini
            .received_requests()
            .await
            .unwrap()
            .iter()
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }

    async fn decided(&self, outcome: &str) -> f64 {
        self.app
            .metric(&format!(
                "wagate_ai_decisions_total{{outcome=\"{outcome}\"}}"
            ))
            .await
    }

    async fn wait_decided(&self, outcome: &str, at_least: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.decided(outcome).await < at_least {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never decided {outcome}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `PATCH …/chats/{CONTACT} {"agent_id": agent}`.
    async fn set_chat_agent(&self, agent: &Value) -> reqwest::Response {
        self.app
            .patch(&format!(
                "/api/v1/sessions/{}/chats/{CONTACT}",
                self.session
            ))
            .bearer_auth(&self.key)
            .json(&json!({ "agent_id": agent }))
            .send()
            .await
            .unwrap()
    }

    async fn write(&self, text: &str) -> String {
        let id = self.sim.inject_text(CONTACT, OWN, text).await.unwrap();
        self.app.wait_received(&self.key, &self.session, &id).await;
        id
    }
}

#[actix_web::test]
async fn a_contacts_question_gets_the_models_answer_with_the_conversation_as_context() {
    let b = bot(json!({"debounce_ms": 200}), |_| {}).await;
    b.answer_with("We open at 9.").await;
    b.write("When do you open?").await;
    assert_eq!(b.wait_from_us(1).await, vec!["We open at 9."]);

    let asked = b.model_requests().await;
    assert_eq!(asked.len(), 1);
    assert_eq!(
        asked[0]["systemInstruction"]["parts"][0]["text"],
        "You are the front desk of Acme. Answer briefly."
    );
    assert_eq!(
        asked[0]["contents"],
        json!([{"role": "user", "parts": [{"text": "When do you open?"}]}])
    );
    let reply = b
        .app
        .wait_event_where(&b.key, &b.session, 0, "ai.reply", |_| true)
        .await;
    assert_eq!(reply["chat"], CONTACT);
    assert_eq!(reply["prompt_tokens"], 12);
    assert_eq!(reply["output_tokens"], 5);
    assert_eq!(reply["agent_id"], b.agent["id"]);
    // Sent through the ordinary path: stored, with its status moving on.
    let sent = reply["message_ids"][0].as_str().unwrap();
    b.app
        .wait_message(&b.key, &b.session, sent, "delivered")
        .await;
    // "typing…" before it.
    assert!(
        b.sim
            .contact_chat_states(CONTACT)
            .iter()
            .any(|c| c.state == "composing"),
        "the contact saw the bot typing"
    );

    // The second question carries the first exchange, in alternating roles.
    b.write("And on Sundays?").await;
    b.wait_from_us(2).await;
    let asked = b.model_requests().await;
    assert_eq!(
        asked[1]["contents"],
        json!([
            {"role": "user", "parts": [{"text": "When do you open?"}]},
            {"role": "model", "parts": [{"text": "We open at 9."}]},
            {"role": "user", "parts": [{"text": "And on Sundays?"}]}
        ])
    );
    let stats = b
        .app
        .get_json_as(
            &format!("/api/v1/agents/{}/stats", b.agent["id"].as_str().unwrap()),
            &b.key,
        )
        .await;
    assert_eq!(stats["replies"], 2);
    assert_eq!(
        stats["prompt_tokens"], 24,
        "the usage the double reported: {stats}"
    );
    assert_eq!(stats["output_tokens"], 10);
    let usage = b
        .app
        .get_json_as(
            &format!("/api/v1/ai/usage?session_id={}&chat={CONTACT}", b.session),
            &b.key,
        )
        .await;
    assert_eq!(usage["prompt_tokens"], 24);
    assert_eq!(usage["items"][0]["calls"], 2);
}

#[actix_web::test]
async fn quick_messages_wait_for_quiet_and_get_one_answer() {
    let b = bot(json!({"debounce_ms": 1500, "typing": false}), |_| {}).await;
    b.answer_with("The blue one is 20 EUR.").await;
    b.write("price?").await;
    b.write("of the blue one").await;
    assert_eq!(b.wait_from_us(1).await, vec!["The blue one is 20 EUR."]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = b.model_requests().await;
    assert_eq!(asked.len(), 1, "one call for both messages");
    assert_eq!(
        asked[0]["contents"],
        json!([{"role": "user", "parts": [{"text": "price?\nof the blue one"}]}])
    );
    assert_eq!(b.answers().len(), 1);
}

#[actix_web::test]
async fn an_operators_message_pauses_the_bot_in_that_chat_until_the_pause_ends() {
    let b = bot(json!({"debounce_ms": 0, "typing": false}), |s| {
        s.ai.human_pause_secs = 2;
    })
    .await;
    b.answer_with("Bot here.").await;
    // The operator answers through the API; the contact writes back at once.
    b.app
        .send_ok(
            &b.key,
            &b.session,
            json!({"to": CONTACT, "text": "Hi, Tom from Acme here"}),
        )
        .await;
    b.wait_from_us(1).await;
    b.write("thanks Tom").await;
    b.wait_decided("operator_active", 1.0).await;
    assert!(b.model_requests().await.is_empty(), "the bot kept quiet");
    assert_eq!(b.answers(), vec!["Hi, Tom from Acme here"]);
    // The pause ends by itself.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    b.write("anyone there?").await;
    assert_eq!(b.wait_from_us(2).await[1], "Bot here.");
}

#[actix_web::test]
async fn an_operator_answering_from_the_phone_pauses_the_bot_too() {
    let b = bot(json!({"debounce_ms": 0, "typing": false}), |s| {
        s.ai.human_pause_secs = 600;
    })
    .await;
    b.answer_with("Bot here.").await;
    // The business owner answers by hand on the account's own phone; WhatsApp syncs it to
    // the linked gateway.
    let id = b
        .sim
        .inject_from_own_phone(OWN, CONTACT, "Tom here, from my phone")
        .await
        .unwrap();
    let seen = b
        .app
        .wait_event_where(&b.key, &b.session, 0, "message.from_phone", |d| {
            d["wa_id"] == id.as_str()
        })
        .await;
    assert_eq!(seen["direction"], "out");
    assert_eq!(seen["chat"], CONTACT);
    assert_eq!(seen["text"], "Tom here, from my phone");
    assert!(b.sim.contact_inbox(CONTACT).iter().any(|m| m.id == id));
    let history = b
        .app
        .get_json_as(
            &format!("/api/v1/sessions/{}/messages?chat={CONTACT}", b.session),
            &b.key,
        )
        .await;
    assert_eq!(
        history["items"][0]["wa_id"],
        id.as_str(),
        "kept in the chat"
    );

    b.write("thanks Tom").await;
    b.wait_decided("operator_active", 1.0).await;
    assert!(b.model_requests().await.is_empty(), "the bot kept quiet");
}

#[actix_web::test]
async fn a_handoff_keyword_turns_the_chats_bot_off_and_tells_the_tenant() {
    let b = bot(
        json!({"debounce_ms": 0, "typing": false, "handoff_keywords": ["human", "real person"]}),
        |_| {},
    )
    .await;
    b.answer_with("Bot here.").await;
    b.write("I want to talk to a Human").await;
    let handoff = b
        .app
        .wait_event_where(&b.key, &b.session, 0, "ai.handoff", |_| true)
        .await;
    assert_eq!(handoff["keyword"], "human");
    assert_eq!(handoff["chat"], CONTACT);
    let chat = b
        .app
        .get_json_as(
            &format!("/api/v1/sessions/{}/chats/{CONTACT}", b.session),
            &b.key,
        )
        .await;
    assert_eq!(chat["bot_enabled"], false);
    // The bot stays off for the chat.
    b.write("hello?").await;
    b.wait_decided("bot_off", 1.0).await;
    assert!(b.model_requests().await.is_empty());
    assert!(b.answers().is_empty());
    let stats = b
        .app
        .get_json_as(
            &format!("/api/v1/agents/{}/stats", b.agent["id"].as_str().unwrap()),
            &b.key,
        )
        .await;
    assert_eq!(stats["handoffs"], 1);
}

#[actix_web::test]
async fn two_bots_never_talk_forever() {
    let b = bot(json!({"debounce_ms": 0, "typing": false}), |s| {
        s.ai.max_replies_per_chat_per_minute = 3;
    })
    .await;
    b.answer_with("Thanks for your message!").await;
    // The contact is a bot too: it answers every message it gets.
    b.write("Auto-reply: we got your message").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut answered = 0;
    while tokio::time::Instant::now() < deadline {
        let got = b.answers().len();
        while answered < got {
            answered += 1;
            b.sim
                .inject_text(
                    CONTACT,
                    OWN,
                    &format!("Auto-reply #{answered}: we got your message"),
                )
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.answers().len(), 3, "the cap held: {:?}", b.answers());
    assert!(b.decided("reply_cap").await >= 1.0);
}

#[actix_web::test]
async fn a_failing_model_sends_the_fallback_never_its_error_and_emits_ai_error() {
    let b = bot(
        json!({"debounce_ms": 0, "typing": false, "fallback_text": "One moment, a colleague will answer."}),
        |s| s.ai.max_attempts = 2,
    )
    .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_json(gemini_error(
            503,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
        )))
        .mount(&b.gemini)
        .await;
    b.write("hello").await;
    assert_eq!(
        b.wait_from_us(1).await,
        vec!["One moment, a colleague will answer."]
    );
    let error = b
        .app
        .wait_event_where(&b.key, &b.session, 0, "ai.error", |_| true)
        .await;
    assert!(error["error"].as_str().unwrap().contains("503"), "{error}");
    assert_eq!(error["fallback_sent"], true);
    assert_eq!(b.model_requests().await.len(), 2, "retried once");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        b.answers()
            .iter()
            .all(|t| !t.contains("overloaded") && !t.contains("503")),
        "{:?}",
        b.answers()
    );
}

#[actix_web::test]
async fn reactions_groups_and_status_never_wake_the_bot_but_a_lid_contact_is_answered() {
    let b = bot(json!({"debounce_ms": 0, "typing": false}), |_| {}).await;
    b.answer_with("Hello!").await;
    // A group with the contact: a message without a mention is not for the bot.
    let res = b
        .app
        .post_json(
            &b.key,
            &format!("/api/v1/sessions/{}/groups", b.session),
            json!({"subject": "Team", "participants": [CONTACT]}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let gid = res.json::<Value>().await.unwrap()["jid"]
        .as_str()
        .unwrap()
        .to_owned();
    b.sim
        .inject_group_text(CONTACT, &gid, "hi all")
        .await
        .unwrap();
    b.wait_decided("group", 1.0).await;
    // A reaction to our message is not a question.
    let op = b
        .app
        .send_ok(
            &b.key,
            &b.session,
            json!({"to": CONTACT, "text": "Welcome!"}),
        )
        .await;
    b.wait_from_us(1).await;
    let reaction = wa::Message {
        reaction_message: MessageField::some(wa::message::ReactionMessage {
            key: MessageField::some(wa::MessageKey {
                remote_jid: Some(format!("{}@s.whatsapp.net", OWN.trim_start_matches('+'))),
                from_me: Some(true),
                id: op["wa_id"].as_str().map(str::to_owned),
                ..Default::default()
            }),
            text: Some("👍".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = b.sim.inject_message(CONTACT, OWN, reaction).await.unwrap();
    b.app.wait_received(&b.key, &b.session, &id).await;
    b.wait_decided("nothing_to_answer", 1.0).await;
    assert!(b.model_requests().await.is_empty());

    // A contact known only by its LID is answered like any other.
    let lid_contact = "+4915550008003";
    b.sim
        .update_profile(
            lid_contact,
            wagate_sim::ProfileUpdate {
                lid_addressing: Some(true),
                hide_phone: Some(true),
                ..Default::default()
            },
        )
        .unwrap();
    let id = b.sim.inject_text(lid_contact, OWN, "hello?").await.unwrap();
    let got = b.app.wait_received(&b.key, &b.session, &id).await;
    assert!(got["chat"].as_str().unwrap().ends_with("@lid"), "{got}");
    let seen = b
        .sim
        .wait_for_contact_message(lid_contact, WAIT, |m| m.text.as_deref() == Some("Hello!"))
        .await;
    assert!(seen.is_ok(), "the LID contact got the answer");
    assert_eq!(b.model_requests().await.len(), 1);
}

#[actix_web::test]
async fn the_agent_acts_on_the_gateway_through_tools_and_each_call_is_recorded() {
    let b = bot(
        json!({"debounce_ms": 0, "typing": false, "tools": ["set_contact_name", "handoff_to_human"]}),
        |_| {},
    )
    .await;
    // Gemini calls `set_contact_name` first; told it worked, it answers in words.
    Mock::given(method("POST"))
        .and(path(gemini_path()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "set_contact_name", "args": {"name": "Lia Schmidt"}}}
            ]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 8, "totalTokenCount": 38}
        })))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&b.gemini)
        .await;
    Mock::given(method("POST"))
        .and(path(gemini_path()))
        .respond_with(ResponseTemplate::new(200).set_body_json(gemini_answer(
            "Nice to meet you, Lia!",
            40,
            6,
        )))
        .with_priority(2)
        .mount(&b.gemini)
        .await;
    b.write("Hi, I'm Lia Schmidt").await;
    assert_eq!(b.wait_from_us(1).await, vec!["Nice to meet you, Lia!"]);
    let chat = b
        .app
        .get_json_as(
            &format!("/api/v1/sessions/{}/chats/{CONTACT}", b.session),
            &b.key,
        )
        .await;
    assert_eq!(chat["contact_name"], "Lia Schmidt");
    let asked = b.model_requests().await;
    assert_eq!(asked.len(), 2);
    let names: Vec<&str> = asked[0]["tools"][0]["functionDeclarations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["handoff_to_human", "set_contact_name"]);
    let follow = asked[1]["contents"].as_array().unwrap();
    assert_eq!(
        follow[follow.len() - 2]["parts"][0]["functionCall"]["name"],
        "set_contact_name"
    );
    assert_eq!(
        follow[follow.len() - 1]["parts"][0]["functionResponse"]["response"]["ok"],
        true
    );
    let reply = b
        .app
        .wait_event_where(&b.key, &b.session, 0, "ai.reply", |_| true)
        .await;
    assert_eq!(reply["tool_calls"][0]["name"], "set_contact_name");
    assert_eq!(reply["prompt_tokens"], 70, "both calls' tokens");

    // Asked for a person, the model hands off: its goodbye goes out, the bot goes off.
    b.gemini.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "candidates": [{"content": {"role": "model", "parts": [
                {"text": "I'll get a colleague for you."},
                {"functionCall": {"name": "handoff_to_human", "args": {"reason": "wants a refund"}}}
            ]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 50, "candidatesTokenCount": 9, "totalTokenCount": 59}
        })))
        .mount(&b.gemini)
        .await;
    b.write("I want my money back").await;
    let handoff = b
        .app
        .wait_event_where(&b.key, &b.session, 0, "ai.handoff", |_| true)
        .await;
    assert_eq!(handoff["reason"], "wants a refund");
    assert!(handoff.get("keyword").is_none(), "{handoff}");
    assert_eq!(b.wait_from_us(2).await[1], "I'll get a colleague for you.");
    let chat = b
        .app
        .get_json_as(
            &format!("/api/v1/sessions/{}/chats/{CONTACT}", b.session),
            &b.key,
        )
        .await;
    assert_eq!(chat["bot_enabled"], false);
}

/// Gemini's answer that calls the given functions, `(name, args)`, and says nothing.
fn gemini_calls(calls: &[(&str, Value)]) -> Value {
    let parts: Vec<Value> = calls
        .iter()
        .map(|(name, args)| json!({"functionCall": {"name": name, "args": args}}))
        .collect();
    json!({
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 8, "totalTokenCount": 38}
    })
}

/// The board's card in the column of this name, if any: (card, column name).
async fn card_on(b: &Bot, board: &str) -> Option<(Value, String)> {
    let got = b
        .app
        .get_json_as(&format!("/api/v1/boards/{board}"), &b.key)
        .await;
    got["columns"].as_array().unwrap().iter().find_map(|c| {
        c["cards"]
            .as_array()
            .unwrap()
            .first()
            .map(|card| (card.clone(), c["name"].as_str().unwrap().to_owned()))
    })
}

#[actix_web::test]
async fn the_agent_puts_its_chat_on_the_board_and_moves_it_and_hears_what_it_named_wrongly() {
    let b = bot(
        json!({"debounce_ms": 0, "typing": false, "tools": ["create_card", "move_card"]}),
        |_| {},
    )
    .await;
    let agent_id = b.agent["id"].as_str().unwrap().to_owned();
    let sales = b
        .app
        .create_board(
            &b.key,
            json!({"name": "Sales", "columns": ["New", "Leads", "Won"]}),
        )
        .await;
    let sales = sales["id"].as_str().unwrap().to_owned();
    let support = b
        .app
        .create_board(&b.key, json!({"name": "Support", "columns": ["Open"]}))
        .await;
    let support = support["id"].as_str().unwrap().to_owned();

    // The model makes a lead of the chat: no board named, so the tenant's first one.
    Mock::given(method("POST"))
        .and(path(gemini_path()))
        .respond_with(ResponseTemplate::new(200).set_body_json(gemini_calls(&[(
            "create_card",
            json!({"column": "leads", "title": "Lia wants a jacket"}),
        )])))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&b.gemini)
        .await;
    Mock::given(method("POST"))
        .and(path(gemini_path()))
        .respond_with(ResponseTemplate::new(200).set_body_json(gemini_answer("Noted, Lia!", 40, 6)))
        .with_priority(2)
        .mount(&b.gemini)
        .await;
    b.write("I'd like the blue jacket").await;
    assert_eq!(b.wait_from_us(1).await, vec!["Noted, Lia!"]);
    let declared: Vec<String> = b.model_requests().await[0]["tools"][0]["functionDeclarations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(declared, ["create_card", "move_card"]);
    let (card, column) = card_on(&b, &sales).await.expect("the chat is on the board");
    assert_eq!(column, "Leads");
    assert_eq!(card["title"], "Lia wants a jacket");
    assert_eq!(card["chat"], CONTACT);
    assert_eq!(card["session_id"], b.session.as_str());
    assert!(
        card_on(&b, &support).await.is_none(),
        "only the first board"
    );
    let card_id = card["id"].as_str().unwrap().to_owned();
    let activity = b
        .app
        .get_json_as(
            &format!("/api/v1/boards/{sales}/cards/{card_id}/activity"),
            &b.key,
        )
        .await;
    let created = activity["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "created")
        .cloned()
        .expect("a created line");
    assert_eq!(created["actor_kind"], "agent");
    assert_eq!(created["actor_id"], agent_id.as_str());

    // Next message: a wrong column and a wrong board are told back with the right names; a
    // second create finds the card; the right move lands.
    b.gemini.reset().await;
    Mock::given(method("POST"))
        .and(path(gemini_path()))
        .respond_with(ResponseTemplate::new(200).set_body_json(gemini_calls(&[
            ("move_card", json!({"column": "Paid"})),
            ("create_card", json!({"board": "Marketing"})),
            ("create_card", json!({})),
            ("move_card", json!({"column": "WON"})),
        ])))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&b.gemini)
        .await;
    Mock::given(method("POST"))
        .and(path(gemini_path()))
        .respond_with(ResponseTemplate::new(200).set_body_json(gemini_answer("Thank you!", 40, 6)))
        .with_priority(2)
        .mount(&b.gemini)
        .await;
    b.write("Paid, thanks").await;
    assert_eq!(b.wait_from_us(2).await, vec!["Noted, Lia!", "Thank you!"]);
    let moved = b
        .app
        .wait_event_where(&b.key, &b.session, 0, "card.moved", |_| true)
        .await;
    assert_eq!(moved["card_id"], card_id.as_str());
    assert_eq!(moved["by"]["kind"], "agent");
    assert_eq!(moved["by"]["id"], agent_id.as_str());
    let (card, column) = card_on(&b, &sales).await.unwrap();
    assert_eq!(
        (card["id"].as_str().unwrap(), column.as_str()),
        (card_id.as_str(), "Won")
    );
    let all = b
        .app
        .count_sql(&format!(
            "SELECT count(*) AS n FROM cards WHERE chat = '{CONTACT}'"
        ))
        .await;
    assert_eq!(all, 1, "one card for the chat");

    let asked = b.model_requests().await;
    assert_eq!(asked.len(), 2);
    let told: Vec<Value> = asked[1]["contents"].as_array().unwrap().last().unwrap()["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["functionResponse"]["response"].clone())
        .collect();
    assert_eq!(told.len(), 4, "{told:?}");
    let wrong_column = told[0]["error"].as_str().unwrap();
    assert!(
        wrong_column.contains(r#"no column "Paid"; its columns are "New", "Leads", "Won""#),
        "{wrong_column}"
    );
    let wrong_board = told[1]["error"].as_str().unwrap();
    assert!(
        wrong_board.contains(r#"no board "Marketing"; the boards are "Sales", "Support""#),
        "{wrong_board}"
    );
    assert_eq!(told[2]["card"]["created"], false, "{told:?}");
    assert_eq!(told[3]["card"]["moved"], true, "{told:?}");
}

#[actix_web::test]
async fn a_chat_may_have_its_own_agent_and_a_suggested_answer_is_never_sent() {
    let b = bot(json!({"debounce_ms": 0, "typing": false}), |_| {}).await;
    b.answer_with("Drafted answer").await;
    // Suggest needs something from the contact to answer.
    let suggest = format!("/api/v1/sessions/{}/chats/{CONTACT}/suggest", b.session);
    let spanish = b
        .app
        .create_agent(
            &b.key,
            json!({"name": "Spanish desk", "system_prompt": "Responde en español.", "debounce_ms": 0, "typing": false}),
        )
        .await;
    // The chat takes the Spanish agent instead of the session's.
    let res = b.set_chat_agent(&spanish["id"]).await;
    assert_eq!(res.status(), 404, "no chat before the contact writes");
    b.write("hola").await;
    b.wait_from_us(1).await;
    let res = b.set_chat_agent(&spanish["id"]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap()["agent_id"],
        spanish["id"]
    );
    b.write("¿qué horario tienen?").await;
    b.wait_from_us(2).await;
    let asked = b.model_requests().await;
    assert_eq!(
        asked[0]["systemInstruction"]["parts"][0]["text"],
        "You are the front desk of Acme. Answer briefly."
    );
    assert_eq!(
        asked[1]["systemInstruction"]["parts"][0]["text"],
        "Responde en español."
    );

    // A draft for the operator: the chat's agent writes it from the conversation, and
    // nothing reaches the contact.
    let res = b
        .app
        .post(&suggest)
        .bearer_auth(&b.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let draft: Value = res.json().await.unwrap();
    assert_eq!(draft["text"], "Drafted answer");
    let asked = b.model_requests().await;
    assert_eq!(asked.len(), 3);
    assert_eq!(
        asked[2]["systemInstruction"]["parts"][0]["text"],
        "Responde en español."
    );
    assert_eq!(
        asked[2]["contents"].as_array().unwrap().last().unwrap()["parts"][0]["text"],
        "¿qué horario tienen?"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.answers().len(), 2, "the suggestion was not sent");

    // `null` gives the chat back to the session's agent.
    let res = b.set_chat_agent(&Value::Null).await;
    assert_eq!(res.status(), 200);
    assert!(res.json::<Value>().await.unwrap().get("agent_id").is_none());
    // Another tenant's agent is refused.
    let (_, other) = b.app.create_tenant("Globex", "standard").await;
    let foreign = b.app.create_agent(&other, json!({})).await;
    let res = b.set_chat_agent(&foreign["id"]).await;
    assert_eq!(res.status(), 400);
}
