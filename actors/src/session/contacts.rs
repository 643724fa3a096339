//! A session's contacts as the network shows them: presence and chat states (told to the
//! tenant as `presence.update`), LIDs and push names (kept), and what the tenant asks of
//! the network live — its own presence, typing, number checks, profiles, blocking.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use tokio::sync::mpsc;
use wacore::types::events::{ChatPresenceUpdate, InboundMessage as WaInbound, PresenceUpdate};
use wacore::types::presence::{ChatPresence, ChatPresenceMedia};
use whatsapp_rust::features::{ChatStateType, PresenceStatus};
use whatsapp_rust::{Client, Jid};

use super::{SessionActor, SessionCommandError, SessionSpec, SessionStatus};
use crate::ports::ContactStore;

/// How long a contact's "typing…" stands without a repeat before it counts as stopped:
/// WhatsApp's apps drop a stale chat state after about 25 seconds, and so does the gateway
/// (it tells the tenant `paused`, with `expired`).
pub const CHAT_STATE_EXPIRY: Duration = Duration::from_secs(25);

/// How long a live request to WhatsApp may take.
pub const LIVE_TIMEOUT: Duration = Duration::from_secs(15);

/// A contact's presence or chat state changed.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceChange {
    /// The contact: `+<digits>`, or `<lid>@lid` when only its LID is known.
    pub contact: String,
    /// `available`, `unavailable`, `composing`, `recording` or `paused`.
    pub state: &'static str,
    pub last_seen: Option<SystemTime>,
    /// A chat state's chat (the contact's own chat, for a 1:1 chat state).
    pub chat: Option<String>,
    /// A `composing`/`recording` that was not repeated within [`CHAT_STATE_EXPIRY`].
    pub expired: bool,
}

/// What a message revealed about its sender.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContactFacts {
    /// `+<digits>`, when known.
    pub phone: Option<String>,
    /// The LID's user part, when known.
    pub lid: Option<String>,
    pub push_name: Option<String>,
}

impl ContactFacts {
    /// The chat these facts belong to: the number's, else the LID's.
    pub fn chat(&self) -> Option<String> {
        self.phone
            .clone()
            .or_else(|| self.lid.as_ref().map(|l| format!("{l}@lid")))
    }
}

/// A contact as a chat key shows it: `+<digits>` for a number, `<lid>@lid` for a LID.
pub fn contact_of(jid: &Jid) -> String {
    if jid.is_lid() {
        format!("{}@lid", jid.user)
    } else {
        format!("+{}", jid.user)
    }
}

/// The JID a peer (`<digits>`, `<lid>@lid` or a group's `<id>@g.us`) is reached at.
pub fn peer_jid(peer: &str) -> Jid {
    if let Some(group) = peer.strip_suffix("@g.us") {
        return Jid::group(group);
    }
    match peer.strip_suffix("@lid") {
        Some(lid) => Jid::lid(lid),
        None => Jid::pn(peer.trim_start_matches('+')),
    }
}

/// What a session remembers of its contacts while it runs: what it already stored (so a
/// message only costs a write when it reveals something new) and the pending expiry of each
/// contact's "typing…".
#[derive(Default)]
pub(super) struct ContactMemory {
    known: HashMap<String, ContactFacts>,
    typing: HashMap<String, SpawnHandle>,
    /// Presence changes go out through one task, in the order they happened.
    presence: Option<mpsc::UnboundedSender<(Option<Arc<Client>>, PresenceChange)>>,
}

/// A session's typing state in a chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatState {
    Composing,
    Recording,
    Paused,
}

/// Something a tenant asks of WhatsApp through a connected session, answered at once.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<LiveAnswer, SessionCommandError>")]
pub enum LiveCommand {
    /// The account shows as online (`available`) or not.
    SetPresence { available: bool },
    /// "typing…", "recording audio…" or neither, in the chat with `peer`.
    ChatState { peer: String, state: ChatState },
    /// Hear `peer`'s presence changes (as `presence.update`).
    SubscribePresence { peer: String },
    /// Which of these numbers (digits) are on WhatsApp, with their JIDs and LIDs.
    CheckNumbers { phones: Vec<String> },
    /// `peer`'s about text and picture, as far as its privacy settings let us see.
    Profile { peer: String },
    /// Block (`true`) or unblock `peer`.
    Block { peer: String, block: bool },
    /// Replace the text of our message `wa_id` in the chat with `peer`.
    Edit {
        peer: String,
        wa_id: String,
        text: String,
    },
    /// Delete our message `wa_id` for everyone in the chat with `peer`.
    Revoke { peer: String, wa_id: String },
}

/// A number checked on WhatsApp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberCheck {
    /// Digits.
    pub phone: String,
    pub on_whatsapp: bool,
    pub jid: Option<String>,
    /// The LID's user part.
    pub lid: Option<String>,
}

/// A contact's profile as WhatsApp shows it to this account.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContactProfile {
    pub about: Option<String>,
    /// The about text exists but its owner's privacy settings hide it from us.
    pub about_hidden: bool,
    pub picture_url: Option<String>,
    pub picture_id: Option<String>,
    pub lid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveAnswer {
    Done,
    Numbers(Vec<NumberCheck>),
    Profile(ContactProfile),
}

async fn run_live(
    client: Arc<Client>,
    cmd: LiveCommand,
) -> Result<LiveAnswer, SessionCommandError> {
    let upstream = |e: &dyn std::fmt::Display| SessionCommandError::Upstream(e.to_string());
    match cmd {
        LiveCommand::SetPresence { available } => {
            let status = if available {
                PresenceStatus::Available
            } else {
                PresenceStatus::Unavailable
            };
            client
                .presence()
                .set(status)
                .await
                .map_err(|e| upstream(&e))?;
            Ok(LiveAnswer::Done)
        }
        LiveCommand::ChatState { peer, state } => {
            let state = match state {
                ChatState::Composing => ChatStateType::Composing,
                ChatState::Recording => ChatStateType::Recording,
                ChatState::Paused => ChatStateType::Paused,
            };
            client
                .chatstate()
                .send(&peer_jid(&peer), state)
                .await
                .map_err(|e| upstream(&e))?;
            Ok(LiveAnswer::Done)
        }
        LiveCommand::SubscribePresence { peer } => {
            client
                .presence()
                .subscribe(peer_jid(&peer))
                .await
                .map_err(|e| upstream(&e))?;
            Ok(LiveAnswer::Done)
        }
        LiveCommand::CheckNumbers { phones } => {
            let jids: Vec<Jid> = phones.iter().map(|p| Jid::pn(p.as_str())).collect();
            let results = client
                .contacts()
                .is_on_whatsapp(&jids)
                .await
                .map_err(|e| upstream(&e))?;
            let checks = phones
                .into_iter()
                .map(|phone| {
                    let found = results.iter().find(|r| {
                        r.jid.user == phone.as_str()
                            || r.pn_jid.as_ref().is_some_and(|p| p.user == phone.as_str())
                    });
                    NumberCheck {
                        on_whatsapp: found.is_some_and(|r| r.is_registered),
                        jid: found
                            .filter(|r| r.is_registered)
                            .map(|_| Jid::pn(phone.as_str()).to_string()),
                        lid: found
                            .filter(|r| r.is_registered)
                            .and_then(|r| r.lid.as_ref())
                            .map(|l| l.user.to_string()),
                        phone,
                    }
                })
                .collect();
            Ok(LiveAnswer::Numbers(checks))
        }
        LiveCommand::Profile { peer } => {
            let jid = peer_jid(&peer);
            let info = client
                .contacts()
                .get_user_info(std::slice::from_ref(&jid))
                .await
                .map_err(|e| upstream(&e))?;
            let info = info.into_values().next();
            let picture = client
                .contacts()
                .get_profile_picture(&jid, false)
                .await
                .map_err(|e| upstream(&e))?;
            let about_hidden = info
                .as_ref()
                .and_then(|i| i.status_error.as_ref())
                .is_some_and(|e| e.code == Some(401));
            Ok(LiveAnswer::Profile(ContactProfile {
                about: info
                    .as_ref()
                    .and_then(|i| i.status.clone())
                    .filter(|s| !s.is_empty()),
                about_hidden,
                picture_url: picture.as_ref().map(|p| p.url.clone()),
                picture_id: picture.map(|p| p.id),
                lid: info
                    .and_then(|i| i.lid)
                    .map(|l| l.user.to_string())
                    .or_else(|| peer.strip_suffix("@lid").map(str::to_owned)),
            }))
        }
        LiveCommand::Edit { peer, wa_id, text } => {
            let content = whatsapp_rust::waproto::whatsapp::Message {
                conversation: Some(text),
                ..Default::default()
            };
            client
                .edit_message(peer_jid(&peer), wa_id, content)
                .await
                .map_err(|e| upstream(&e))?;
            Ok(LiveAnswer::Done)
        }
        LiveCommand::Revoke { peer, wa_id } => {
            client
                .revoke_message(
                    peer_jid(&peer),
                    wa_id,
                    whatsapp_rust::send::RevokeType::Sender,
                )
                .await
                .map_err(|e| upstream(&e))?;
            Ok(LiveAnswer::Done)
        }
        LiveCommand::Block { peer, block } => {
            let jid = peer_jid(&peer);
            // WhatsApp blocks by LID (with the number alongside): learn it first when the
            // client does not know it yet.
            if jid.is_pn() && client.get_lid_pn_entry(&jid).await.ok().flatten().is_none() {
                let found = client
                    .contacts()
                    .is_on_whatsapp(std::slice::from_ref(&jid))
                    .await
                    .map_err(|e| upstream(&e))?;
                if !found.iter().any(|r| r.is_registered) {
                    return Err(SessionCommandError::NotOnWhatsApp(peer));
                }
            }
            let blocking = client.blocking();
            if block {
                blocking.block(&jid).await.map_err(|e| upstream(&e))?;
            } else {
                blocking.unblock(&jid).await.map_err(|e| upstream(&e))?;
            }
            Ok(LiveAnswer::Done)
        }
    }
}

impl SessionActor {
    /// Runs a request WhatsApp answers at once on the session's client: only while it is
    /// connected and this node holds its lease, and for at most [`LIVE_TIMEOUT`].
    pub(super) fn run_live_request<A, F>(
        &mut self,
        request: impl FnOnce(Arc<Client>) -> F,
    ) -> ResponseFuture<Result<A, SessionCommandError>>
    where
        A: 'static,
        F: std::future::Future<Output = Result<A, SessionCommandError>> + 'static,
    {
        self.shared.took_one();
        let status = self.record.status;
        let client = match (&self.client, status) {
            (Some(c), SessionStatus::Connected) if self.lease => c.clone(),
            _ => return Box::pin(async move { Err(SessionCommandError::NotConnected(status)) }),
        };
        let answer = request(client);
        Box::pin(async move {
            tokio::time::timeout(LIVE_TIMEOUT, answer)
                .await
                .unwrap_or_else(|_| {
                    Err(SessionCommandError::Upstream(
                        "WhatsApp did not answer in time".into(),
                    ))
                })
        })
    }
}

impl Handler<LiveCommand> for SessionActor {
    type Result = ResponseFuture<Result<LiveAnswer, SessionCommandError>>;

    fn handle(&mut self, cmd: LiveCommand, _ctx: &mut Self::Context) -> Self::Result {
        self.run_live_request(|client| run_live(client, cmd))
    }
}

/// What a received message says about its sender, if it is a contact's 1:1 message.
fn facts_of(m: &WaInbound) -> Option<ContactFacts> {
    let source = &m.info.source;
    if source.is_from_me || source.is_group {
        return None;
    }
    let (mut phone, mut lid) = (None, None);
    for jid in std::iter::once(&source.sender).chain(source.sender_alt.as_ref()) {
        if jid.is_lid() {
            lid.get_or_insert_with(|| jid.user.to_string());
        } else if jid.is_pn() {
            phone.get_or_insert_with(|| format!("+{}", jid.user));
        }
    }
    Some(ContactFacts {
        phone,
        lid,
        push_name: Some(m.info.push_name.clone()).filter(|n| !n.is_empty()),
    })
}

impl SessionActor {
    /// Keeps what a batch of messages revealed about their senders, when it is new.
    pub(super) fn learn_contacts<'a>(&mut self, batch: impl IntoIterator<Item = &'a WaInbound>) {
        let mut new = Vec::new();
        for facts in batch.into_iter().filter_map(facts_of) {
            let Some(chat) = facts.chat() else { continue };
            let known = self.contacts.known.get(&chat);
            let changed = known.is_none_or(|k| {
                (facts.lid.is_some() && k.lid != facts.lid)
                    || (facts.push_name.is_some() && k.push_name != facts.push_name)
            });
            if changed && !new.contains(&facts) {
                self.contacts.known.insert(chat, facts.clone());
                new.push(facts);
            }
        }
        if new.is_empty() {
            return;
        }
        let store = self.ports.contacts.clone();
        let spec = self.spec.clone();
        actix::spawn(async move {
            if let Err(e) = store.learned(&spec, new).await {
                tracing::warn!(session = %spec.id, error = %e, "storing what messages told about contacts");
            }
        });
    }

    pub(super) fn on_presence(&mut self, ctx: &mut Context<Self>, update: &PresenceUpdate) {
        let change = PresenceChange {
            contact: contact_of(&update.from),
            state: if update.unavailable {
                "unavailable"
            } else {
                "available"
            },
            last_seen: update.last_seen.map(SystemTime::from),
            chat: None,
            expired: false,
        };
        self.tell_presence(ctx, change);
    }

    pub(super) fn on_chat_presence(
        &mut self,
        ctx: &mut Context<Self>,
        update: &ChatPresenceUpdate,
    ) {
        if update.source.is_group {
            // Group chat states come with the group issue's events.
            return;
        }
        let contact = contact_of(&update.source.sender);
        let state = match (&update.state, &update.media) {
            (ChatPresence::Composing, ChatPresenceMedia::Audio) => "recording",
            (ChatPresence::Composing, _) => "composing",
            _ => "paused",
        };
        if let Some(timer) = self.contacts.typing.remove(&contact) {
            ctx.cancel_future(timer);
        }
        if state != "paused" {
            let expiring = contact.clone();
            let timer = ctx.run_later(self.config.chat_state_expiry, move |act, ctx| {
                act.contacts.typing.remove(&expiring);
                act.tell_presence(
                    ctx,
                    PresenceChange {
                        chat: Some(expiring.clone()),
                        contact: expiring,
                        state: "paused",
                        last_seen: None,
                        expired: true,
                    },
                );
            });
            self.contacts.typing.insert(contact.clone(), timer);
        }
        self.tell_presence(
            ctx,
            PresenceChange {
                chat: Some(contact.clone()),
                contact,
                state,
                last_seen: None,
                expired: false,
            },
        );
    }

    /// Hands a presence change to the session's presence task, which names a LID contact by
    /// its number when the client knows it, and stores the event; changes keep their order.
    fn tell_presence(&mut self, _ctx: &mut Context<Self>, change: PresenceChange) {
        let tx = self.contacts.presence.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            actix::spawn(presence_task(
                self.ports.contacts.clone(),
                self.spec.clone(),
                rx,
            ));
            tx
        });
        let _ = tx.send((self.client.clone(), change));
    }
}

async fn presence_task(
    store: Arc<dyn ContactStore>,
    spec: SessionSpec,
    mut rx: mpsc::UnboundedReceiver<(Option<Arc<Client>>, PresenceChange)>,
) {
    while let Some((client, mut change)) = rx.recv().await {
        if let (Some(client), Some(lid)) = (client, change.contact.strip_suffix("@lid"))
            && let Ok(Some(entry)) = client.get_lid_pn_entry(&Jid::lid(lid)).await
        {
            let phone = format!("+{}", entry.phone_number);
            if change.chat.as_deref() == Some(change.contact.as_str()) {
                change.chat = Some(phone.clone());
            }
            change.contact = phone;
        }
        if let Err(e) = store.presence(&spec, change).await {
            tracing::warn!(session = %spec.id, error = %e, "storing a presence change");
        }
    }
}
