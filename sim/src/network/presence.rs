//! Presence (online, last seen) and chat states (typing, recording, paused): ephemeral
//! stanzas routed to whoever is connected, never queued, as on WhatsApp.

use super::*;

/// How long a `composing` shows before the viewer's app drops it unless it is repeated
/// (WhatsApp's apps expire a stale typing indicator after about 25 seconds).
pub const COMPOSING_EXPIRES_AFTER: Duration = Duration::from_secs(25);

/// A chat state a simulated phone saw from a linked device.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ChatStateSeen {
    /// The simulated number that saw it.
    pub contact: String,
    /// The number typing.
    pub from: String,
    /// `composing`, `recording` or `paused`.
    pub state: String,
    pub at_ms: u64,
}

fn chat_state_child(state: &str) -> anyhow::Result<Node> {
    Ok(match state {
        "composing" => NodeBuilder::new("composing").build(),
        "recording" => NodeBuilder::new("composing").attr("media", "audio").build(),
        "paused" => NodeBuilder::new("paused").build(),
        other => bail!("unknown chat state {other:?} (composing, recording or paused)"),
    })
}

impl Simulator {
    /// A `<presence>` from a linked device: availability (with the push name), a push name
    /// alone, or a subscription to another account's presence.
    pub(super) fn handle_presence(&self, conn: u64, node: &Node) {
        let Some((phone, _device)) = self.conn_device(conn) else {
            return;
        };
        if let Some(name) = node.attr("name").filter(|n| !n.trim().is_empty()) {
            let mut st = self.state();
            if let Some(a) = st.accounts.get_mut(&phone) {
                a.name = name;
                a.profile.named = true;
            }
        }
        match node.attr("type").as_deref() {
            Some("available") => self.set_online(&phone, true),
            Some("unavailable") => self.set_online(&phone, false),
            Some("subscribe") => {
                let Some(jid) = node.attr("to").and_then(|t| t.parse::<Jid>().ok()) else {
                    return;
                };
                let Some(target) = self.resolve(&jid) else {
                    return;
                };
                let jid = jid.to_non_ad();
                self.state()
                    .presence_watchers
                    .entry(target.clone())
                    .or_default()
                    .insert(phone.clone(), jid.clone());
                // WhatsApp answers a subscription with the contact's current presence.
                if let Some(update) = self.presence_of(&target, &jid, &phone) {
                    self.send_to_conn(conn, update);
                }
            }
            Some("unsubscribe") => {
                let target = node
                    .attr("to")
                    .and_then(|t| t.parse::<Jid>().ok())
                    .and_then(|j| self.resolve(&j));
                if let Some(target) = target
                    && let Some(w) = self.state().presence_watchers.get_mut(&target)
                {
                    w.remove(&phone);
                }
            }
            None => {}
            Some(other) => self.count_unmodelled(format!("presence:{other}")),
        }
    }

    /// `<presence from=.. [type="unavailable" last=..]>` for `viewer`; `None` when `phone`
    /// blocked the viewer (a blocked number sees no presence).
    fn presence_of(&self, phone: &str, as_jid: &Jid, viewer: &str) -> Option<Node> {
        let st = self.state();
        let account = st.accounts.get(phone);
        if account.is_some_and(|a| a.profile.blocked.contains(viewer)) {
            return None;
        }
        let mut node = NodeBuilder::new("presence").attr("from", as_jid.clone());
        match account {
            Some(a) if a.online => {}
            Some(a) => {
                node = node.attr("type", "unavailable");
                if let Some(last) = a.last_seen {
                    node = node.attr("last", last.to_string());
                }
            }
            None => node = node.attr("type", "unavailable"),
        }
        Some(node.build())
    }

    /// An account goes online or offline: every connected device of its watchers hears it.
    fn set_online(&self, phone: &str, online: bool) {
        let watchers: Vec<(String, Jid)> = {
            let mut st = self.state();
            let Some(a) = st.accounts.get_mut(phone) else {
                return;
            };
            if !online {
                a.last_seen = Some(now_secs());
            }
            a.online = online;
            st.presence_watchers
                .get(phone)
                .map(|w| w.iter().map(|(p, j)| (p.clone(), j.clone())).collect())
                .unwrap_or_default()
        };
        for (watcher, jid) in watchers {
            if let Some(update) = self.presence_of(phone, &jid, &watcher) {
                self.push_if_connected(&watcher, None, &update);
            }
        }
    }

    /// Sends an ephemeral stanza to the connected devices of an account (all but `except`);
    /// offline devices never get it, as presence and chat states are not queued.
    fn push_if_connected(&self, phone: &str, except: Option<u16>, node: &Node) {
        let st = self.state();
        let Some(account) = st.accounts.get(phone) else {
            return;
        };
        for (device, d) in &account.devices {
            if Some(*device) == except {
                continue;
            }
            if let Some(c) = d.conn.and_then(|c| st.conns.get(&c)) {
                let _ = c.tx.send(ConnCmd::Send(node.clone()));
            }
        }
    }

    /// A `<chatstate to=..>` from a linked device: the other side's phone sees it, and so do
    /// its connected linked devices.
    pub(super) fn handle_chatstate(&self, conn: u64, node: &Node) {
        let Some((sender, sender_device)) = self.conn_device(conn) else {
            return;
        };
        let Some(to) = node.attr("to").and_then(|t| t.parse::<Jid>().ok()) else {
            return;
        };
        let Some(target) = self.resolve(&to) else {
            self.count_unmodelled(format!("chatstate:{}", to.server));
            return;
        };
        let Some(child) = node.kids().first() else {
            return;
        };
        let state = match (child.tag.as_ref(), child.attr("media").as_deref()) {
            ("composing", Some("audio")) => "recording",
            ("composing", _) => "composing",
            _ => "paused",
        };
        if self.is_blocked(&target, &sender) {
            return;
        }
        let seen = ChatStateSeen {
            contact: target.clone(),
            from: sender.clone(),
            state: state.to_string(),
            at_ms: now_ms(),
        };
        {
            let mut st = self.state();
            if let Some(a) = st.accounts.get_mut(&target) {
                a.chat_states.push(seen.clone());
            }
        }
        self.emit(SimEvent::ContactChatState(seen));
        let from = self.address_of(&sender);
        let relayed = NodeBuilder::new("chatstate")
            .attr("from", from)
            .children([child.clone()])
            .build();
        let except = (target == sender).then_some(sender_device);
        self.push_if_connected(&target, except, &relayed);
    }

    /// How an account appears to others: its LID when it writes from its LID, else its number.
    pub(super) fn address_of(&self, phone: &str) -> Jid {
        let st = self.state();
        match st.accounts.get(phone) {
            Some(a) if a.profile.lid_addressing => Jid::lid(a.lid.as_str()),
            _ => Jid::pn(phone),
        }
    }

    /// The chat state a simulated phone shows for `from` now: the last one it got, with a
    /// `composing` or `recording` older than [`COMPOSING_EXPIRES_AFTER`] shown as `paused`.
    pub fn contact_chat_state(&self, phone: &str, from: &str) -> Option<String> {
        let from = phone_digits(from).ok()?;
        let last = self.read_account(phone, |a| {
            a.chat_states.iter().rev().find(|c| c.from == from).cloned()
        })?;
        let age = Duration::from_millis(now_ms().saturating_sub(last.at_ms));
        Some(
            if last.state != "paused" && age >= COMPOSING_EXPIRES_AFTER {
                "paused".to_string()
            } else {
                last.state
            },
        )
    }

    /// Whether an account shows as online, and when it was last (`None`: unknown number).
    pub fn presence_of_account(&self, phone: &str) -> Option<(bool, Option<u64>)> {
        let phone = phone_digits(phone).ok()?;
        let st = self.state();
        st.accounts.get(&phone).map(|a| (a.online, a.last_seen))
    }

    /// Every chat state a simulated phone saw, oldest first.
    pub fn contact_chat_states(&self, phone: &str) -> Vec<ChatStateSeen> {
        self.read_account(phone, |a| a.chat_states.clone())
    }

    /// A simulated contact's phone goes online or offline.
    pub fn set_contact_presence(&self, phone: &str, online: bool) -> anyhow::Result<()> {
        let phone = phone_digits(phone)?;
        {
            let mut st = self.state();
            Self::ensure_account(&mut st, &phone)?;
        }
        self.set_online(&phone, online);
        Ok(())
    }

    /// A simulated contact types (or stops) in its chat with `to`: `to`'s connected linked
    /// devices see it.
    pub fn contact_types(&self, from: &str, to: &str, state: &str) -> anyhow::Result<()> {
        let from = phone_digits(from)?;
        let to = phone_digits(to)?;
        let child = chat_state_child(state)?;
        {
            let mut st = self.state();
            Self::ensure_account(&mut st, &from)?;
        }
        if self.is_blocked(&to, &from) {
            return Ok(());
        }
        let node = NodeBuilder::new("chatstate")
            .attr("from", self.address_of(&from))
            .children([child])
            .build();
        self.push_if_connected(&to, None, &node);
        Ok(())
    }
}
