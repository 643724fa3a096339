//! The reply pipeline's decisions, without I/O: whether a chat is answered, the conversation
//! the model sees, and how an answer is sent. Everything the gateway's users complained about
//! in other gateways (bots answering the operator, groups, reactions, loops between two bots)
//! is decided here, so it is tested here.

use std::hash::{Hash, Hasher};
use std::time::{Duration, SystemTime};

use super::ports::{ChatMessage, ChatWork, ModelCall, Role, Turn};

/// The pipeline's settings (`ai.*`).
#[derive(Debug, Clone)]
pub struct ReplySettings {
    /// After an operator's message the bot keeps quiet in that chat this long.
    pub human_pause: Duration,
    /// At most this many answers per chat and minute.
    pub max_replies_per_chat_per_minute: u32,
    /// A gap this long between two messages starts a new conversation: older messages are
    /// not sent as context.
    pub context_idle: Duration,
    /// "typing…" per character of the answer, and its cap.
    pub typing_per_char: Duration,
    pub typing_cap: Duration,
}

impl Default for ReplySettings {
    fn default() -> Self {
        Self {
            human_pause: Duration::from_secs(1800),
            max_replies_per_chat_per_minute: 6,
            context_idle: Duration::from_secs(86_400),
            typing_per_char: Duration::from_millis(30),
            typing_cap: Duration::from_secs(5),
        }
    }
}

/// What to do with a chat.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Skip(&'static str),
    Handoff(String),
    /// Ask the model; the key identifies the request for the response cache.
    Answer {
        call: Box<ModelCall>,
        cache_key: u64,
    },
}

/// Parts longer than this are never split further; more parts than this are joined again.
const MAX_PARTS: usize = 5;

pub fn decide(work: &ChatWork, settings: &ReplySettings, now: SystemTime) -> Decision {
    let agent = &work.agent;
    let chat_kind = ChatKind::of(&work.chat);
    if !work.bot_enabled {
        return Decision::Skip("bot_off");
    }
    if chat_kind == ChatKind::Broadcast {
        return Decision::Skip("broadcast");
    }
    if chat_kind == ChatKind::Group && !agent.answer_groups {
        return Decision::Skip("group");
    }
    let unanswered: Vec<&ChatMessage> = work
        .history
        .iter()
        .filter(|m| m.unanswered && m.incoming)
        .collect();
    // What the contact said, as the model sees it: texts and captions; a media message
    // without a caption only when the agent describes media; reactions never.
    let said: Vec<String> = unanswered
        .iter()
        .filter_map(|m| content_of(m, agent.describe_media))
        .collect();
    if said.is_empty() {
        return Decision::Skip("nothing_to_answer");
    }
    if chat_kind == ChatKind::Group && !unanswered.iter().any(|m| addresses_us(m, work)) {
        return Decision::Skip("group_not_mentioned");
    }
    if let Some(at) = work.operator_last_at
        && now.duration_since(at).unwrap_or_default() < settings.human_pause
    {
        return Decision::Skip("operator_active");
    }
    if let Some(keyword) = handoff_keyword(&said, &agent.handoff_keywords) {
        return Decision::Handoff(keyword);
    }
    if work.replies_last_minute >= settings.max_replies_per_chat_per_minute {
        return Decision::Skip("reply_cap");
    }
    let turns = conversation(
        &work.history,
        agent.context_messages,
        agent.describe_media,
        settings.context_idle,
    );
    if turns.is_empty() {
        return Decision::Skip("nothing_to_answer");
    }
    let call = ModelCall {
        provider: agent.provider,
        credential: agent.credential.clone(),
        model: agent.model.clone(),
        system_prompt: agent.system_prompt.clone(),
        turns,
        temperature: agent.temperature,
        max_output_tokens: agent.max_output_tokens,
        tools: super::tools::named(&agent.tools),
    };
    let cache_key = cache_key(agent.id, agent.version, &call);
    Decision::Answer {
        call: Box::new(call),
        cache_key,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChatKind {
    Direct,
    Group,
    Broadcast,
}

impl ChatKind {
    fn of(chat: &str) -> ChatKind {
        if chat.ends_with("@g.us") {
            ChatKind::Group
        } else if chat.ends_with("@broadcast") || chat.ends_with("@newsletter") {
            ChatKind::Broadcast
        } else {
            // `+<digits>` or `<lid>@lid`: a person, answered alike.
            ChatKind::Direct
        }
    }
}

/// A message's text as the model sees it.
fn content_of(m: &ChatMessage, describe_media: bool) -> Option<String> {
    if m.kind == "reaction" {
        return None;
    }
    match m.text.as_deref().map(str::trim) {
        Some(t) if !t.is_empty() => Some(t.to_owned()),
        _ if describe_media && m.kind != "text" && m.kind != "other" => {
            Some(format!("[the contact sent {}]", article(&m.kind)))
        }
        _ => None,
    }
}

fn article(kind: &str) -> String {
    match kind {
        "image" | "audio" => format!("an {kind}"),
        other => format!("a {other}"),
    }
}

/// In a group: the message mentions our number (`@<digits>`) or answers one of ours.
fn addresses_us(m: &ChatMessage, work: &ChatWork) -> bool {
    let mentioned = match (&work.own_phone, &m.text) {
        (Some(own), Some(text)) => text.contains(&format!("@{}", own.trim_start_matches('+'))),
        _ => false,
    };
    let replied_to = m
        .quoted_wa_id
        .as_ref()
        .is_some_and(|q| work.history.iter().any(|h| !h.incoming && &h.wa_id == q));
    mentioned || replied_to
}

/// The first handoff keyword the contact used, as a whole word, ignoring case.
fn handoff_keyword(said: &[String], keywords: &[String]) -> Option<String> {
    let words: Vec<String> = said
        .iter()
        .flat_map(|s| s.split(|c: char| !c.is_alphanumeric()))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    keywords.iter().find_map(|k| {
        let k_words: Vec<String> = k
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        if k_words.is_empty() {
            return None;
        }
        words
            .windows(k_words.len())
            .any(|w| w == k_words.as_slice())
            .then(|| k.clone())
    })
}

/// The conversation sent as context: the last `limit` messages after the last idle gap,
/// consecutive messages of one side joined, starting with the contact.
pub fn conversation(
    history: &[ChatMessage],
    limit: u32,
    describe_media: bool,
    idle: Duration,
) -> Vec<Turn> {
    // The conversation restarts after an idle gap.
    let mut start = 0;
    for (i, pair) in history.windows(2).enumerate() {
        if pair[1].at.duration_since(pair[0].at).unwrap_or_default() >= idle {
            start = i + 1;
        }
    }
    let recent = &history[start..];
    let recent = &recent[recent.len().saturating_sub(limit.max(1) as usize)..];
    let mut turns: Vec<Turn> = Vec::new();
    for m in recent {
        let text = if m.incoming {
            content_of(m, describe_media)
        } else {
            m.text.clone().filter(|t| !t.trim().is_empty())
        };
        let Some(text) = text else { continue };
        let role = if m.incoming { Role::User } else { Role::Model };
        match turns.last_mut() {
            Some(last) if last.role == role => {
                last.text.push('\n');
                last.text.push_str(&text);
            }
            _ => turns.push(Turn::text(role, text)),
        }
    }
    // Providers expect the user to open the conversation.
    while turns.first().is_some_and(|t| t.role == Role::Model) {
        turns.remove(0);
    }
    turns
}

fn cache_key(agent: uuid::Uuid, version: i64, call: &ModelCall) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    agent.hash(&mut h);
    version.hash(&mut h);
    call.model.hash(&mut h);
    call.system_prompt.hash(&mut h);
    call.turns.hash(&mut h);
    for t in &call.tools {
        t.name.hash(&mut h);
    }
    h.finish()
}

/// An answer as messages: split on blank lines when the agent says so (at most
/// [`MAX_PARTS`], the rest joined into the last).
pub fn split_answer(text: &str, split: bool) -> Vec<String> {
    let text = text.trim();
    if text.is_empty() {
        return Vec::new();
    }
    if !split {
        return vec![text.to_owned()];
    }
    let mut parts: Vec<String> = text
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    if parts.len() > MAX_PARTS {
        let rest = parts.split_off(MAX_PARTS - 1).join("\n\n");
        parts.push(rest);
    }
    parts
}

/// How long "typing…" shows before an answer of this length.
pub fn typing_for(parts: &[String], settings: &ReplySettings) -> Duration {
    let chars: usize = parts.first().map(|p| p.chars().count()).unwrap_or(0);
    settings
        .typing_per_char
        .saturating_mul(u32::try_from(chars).unwrap_or(u32::MAX))
        .min(settings.typing_cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::ports::{AgentConfig, Credential, Provider, TenantQuota};

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn msg(
        incoming: bool,
        kind: &str,
        text: Option<&str>,
        secs: u64,
        unanswered: bool,
    ) -> ChatMessage {
        ChatMessage {
            wa_id: format!("W{secs}"),
            incoming,
            kind: kind.into(),
            text: text.map(str::to_owned),
            quoted_wa_id: None,
            at: at(secs),
            unanswered,
        }
    }

    fn work(chat: &str, history: Vec<ChatMessage>) -> ChatWork {
        ChatWork {
            chat: chat.into(),
            agent: AgentConfig {
                id: uuid::Uuid::nil(),
                provider: Provider::Gemini,
                model: "gemini-2.0-flash".into(),
                credential: Credential {
                    id: "platform:gemini".into(),
                    base_url: "http://x".into(),
                    api_key: "k".into(),
                },
                system_prompt: "Be nice".into(),
                temperature: None,
                max_output_tokens: None,
                context_messages: 20,
                handoff_keywords: vec!["human".into(), "real person".into()],
                fallback_text: None,
                answer_groups: false,
                describe_media: false,
                split_replies: true,
                typing: true,
                tools: Vec::new(),
                version: 1,
            },
            own_phone: Some("15550001111".into()),
            bot_enabled: true,
            operator_last_at: None,
            replies_last_minute: 0,
            quota: TenantQuota {
                calls_per_minute: 10,
                tokens_per_day: 1000,
            },
            tokens_today: 0,
            history,
        }
    }

    fn turns_of(d: &Decision) -> Vec<(Role, String)> {
        match d {
            Decision::Answer { call, .. } => call
                .turns
                .iter()
                .map(|t| (t.role, t.text.clone()))
                .collect(),
            other => panic!("not an answer: {other:?}"),
        }
    }

    #[test]
    fn a_question_is_answered_with_the_conversation_in_alternating_roles() {
        let w = work(
            "+4915112345678",
            vec![
                msg(false, "text", Some("Welcome!"), 0, false),
                msg(true, "text", Some("hi"), 10, false),
                msg(false, "text", Some("Hello, how can I help?"), 12, false),
                msg(true, "text", Some("price?"), 20, true),
                msg(true, "text", Some("of the blue one"), 21, true),
            ],
        );
        let d = decide(&w, &ReplySettings::default(), at(30));
        assert_eq!(
            turns_of(&d),
            vec![
                (Role::User, "hi".into()),
                (Role::Model, "Hello, how can I help?".into()),
                (Role::User, "price?\nof the blue one".into()),
            ]
        );
    }

    #[test]
    fn groups_broadcasts_reactions_and_empty_media_never_wake_the_bot() {
        let s = ReplySettings::default();
        let q = vec![msg(true, "text", Some("hello"), 1, true)];
        assert_eq!(
            decide(&work("123@g.us", q.clone()), &s, at(2)),
            Decision::Skip("group")
        );
        assert_eq!(
            decide(&work("status@broadcast", q.clone()), &s, at(2)),
            Decision::Skip("broadcast")
        );
        let reaction = vec![msg(true, "reaction", Some("👍"), 1, true)];
        assert_eq!(
            decide(&work("+1", reaction), &s, at(2)),
            Decision::Skip("nothing_to_answer")
        );
        let image = vec![msg(true, "image", None, 1, true)];
        assert_eq!(
            decide(&work("+1", image.clone()), &s, at(2)),
            Decision::Skip("nothing_to_answer")
        );
        let mut described = work("+1", image);
        described.agent.describe_media = true;
        assert_eq!(
            turns_of(&decide(&described, &s, at(2))),
            vec![(Role::User, "[the contact sent an image]".into())]
        );
        // Our own messages are never "unanswered incoming" ones.
        let own = vec![msg(false, "text", Some("hi"), 1, true)];
        assert_eq!(
            decide(&work("+1", own), &s, at(2)),
            Decision::Skip("nothing_to_answer")
        );
    }

    #[test]
    fn in_a_group_the_agent_answers_only_when_mentioned_or_replied_to() {
        let s = ReplySettings::default();
        let mut w = work(
            "123@g.us",
            vec![msg(true, "text", Some("hello all"), 1, true)],
        );
        w.agent.answer_groups = true;
        assert_eq!(decide(&w, &s, at(2)), Decision::Skip("group_not_mentioned"));
        w.history[0].text = Some("@15550001111 what are your hours?".into());
        assert!(matches!(decide(&w, &s, at(2)), Decision::Answer { .. }));
        w.history = vec![
            msg(false, "text", Some("We open at 9"), 1, false),
            ChatMessage {
                quoted_wa_id: Some("W1".into()),
                ..msg(true, "text", Some("and close?"), 2, true)
            },
        ];
        assert!(matches!(decide(&w, &s, at(3)), Decision::Answer { .. }));
    }

    #[test]
    fn an_operator_message_pauses_the_bot_until_the_pause_ends() {
        let s = ReplySettings {
            human_pause: Duration::from_secs(60),
            ..ReplySettings::default()
        };
        let mut w = work("+1", vec![msg(true, "text", Some("hello"), 100, true)]);
        w.operator_last_at = Some(at(90));
        assert_eq!(decide(&w, &s, at(100)), Decision::Skip("operator_active"));
        assert!(matches!(decide(&w, &s, at(151)), Decision::Answer { .. }));
    }

    #[test]
    fn handoff_keywords_match_whole_words_ignoring_case() {
        let s = ReplySettings::default();
        let w = work(
            "+1",
            vec![msg(true, "text", Some("I want a HUMAN please"), 1, true)],
        );
        assert_eq!(decide(&w, &s, at(2)), Decision::Handoff("human".into()));
        let w = work(
            "+1",
            vec![msg(true, "text", Some("a real   person!"), 1, true)],
        );
        assert_eq!(
            decide(&w, &s, at(2)),
            Decision::Handoff("real person".into())
        );
        let w = work(
            "+1",
            vec![msg(true, "text", Some("humane treatment"), 1, true)],
        );
        assert!(matches!(decide(&w, &s, at(2)), Decision::Answer { .. }));
    }

    #[test]
    fn a_chat_gets_at_most_the_capped_number_of_replies_a_minute() {
        let s = ReplySettings::default();
        let mut w = work("+1", vec![msg(true, "text", Some("again"), 1, true)]);
        w.replies_last_minute = 6;
        assert_eq!(decide(&w, &s, at(2)), Decision::Skip("reply_cap"));
        w.bot_enabled = false;
        assert_eq!(decide(&w, &s, at(2)), Decision::Skip("bot_off"));
    }

    #[test]
    fn context_restarts_after_an_idle_gap_and_is_limited() {
        let history = vec![
            msg(true, "text", Some("old question"), 0, false),
            msg(false, "text", Some("old answer"), 5, false),
            msg(true, "text", Some("a"), 100_000, false),
            msg(false, "text", Some("b"), 100_001, false),
            msg(true, "text", Some("c"), 100_002, true),
        ];
        let turns = conversation(&history, 20, false, Duration::from_secs(86_400));
        assert_eq!(turns.len(), 3);
        assert_eq!(turns[0].text, "a");
        let turns = conversation(&history, 2, false, Duration::from_secs(86_400));
        // "b" alone would open with the model: dropped.
        assert_eq!(turns, vec![Turn::text(Role::User, "c")]);
    }

    #[test]
    fn the_cache_key_changes_with_the_agent_and_the_conversation() {
        let s = ReplySettings::default();
        let w = work("+1", vec![msg(true, "text", Some("hi"), 1, true)]);
        let key = |w: &ChatWork| match decide(w, &s, at(2)) {
            Decision::Answer { cache_key, .. } => cache_key,
            other => panic!("{other:?}"),
        };
        let k = key(&w);
        assert_eq!(k, key(&w.clone()));
        let mut v2 = w.clone();
        v2.agent.version = 2;
        assert_ne!(k, key(&v2));
        let mut other = w.clone();
        other.history[0].text = Some("hello".into());
        assert_ne!(k, key(&other));
    }

    #[test]
    fn long_answers_split_on_blank_lines_and_typing_is_capped() {
        assert_eq!(split_answer("a\n\nb\n\n\n c ", true), vec!["a", "b", "c"]);
        assert_eq!(split_answer("a\n\nb", false), vec!["a\n\nb"]);
        assert!(split_answer("  ", true).is_empty());
        let many = (0..8)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join("\n\n");
        let parts = split_answer(&many, true);
        assert_eq!(parts.len(), MAX_PARTS);
        assert_eq!(parts[4], "4\n\n5\n\n6\n\n7");
        let s = ReplySettings::default();
        assert_eq!(typing_for(&["abc".into()], &s), Duration::from_millis(90));
        assert_eq!(typing_for(&["x".repeat(10_000)], &s), s.typing_cap);
    }
}
