//! What an account shows others: its about text and profile picture (each behind a privacy
//! setting), how it is addressed (phone number or LID), and the numbers it blocked.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// Who may see a profile detail, as WhatsApp's privacy settings put it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    #[default]
    All,
    /// Only numbers in the account's address book.
    Contacts,
    Nobody,
}

/// An account's profile and settings as the network knows them.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct ContactProfile {
    /// The name was chosen (by the control API or a device's registration), not made up.
    #[serde(default)]
    pub named: bool,
    #[serde(default)]
    pub about: Option<String>,
    /// The current picture's id; `None`: no picture.
    #[serde(default)]
    pub picture_id: Option<u64>,
    #[serde(default)]
    pub picture_visible_to: Visibility,
    #[serde(default)]
    pub about_visible_to: Visibility,
    /// The account writes from its LID (`from="<lid>@lid"`), as migrated accounts do.
    #[serde(default)]
    pub lid_addressing: bool,
    /// With LID addressing: its messages carry no `sender_pn`, so recipients only learn the
    /// LID (a contact who hides their number).
    #[serde(default)]
    pub hide_phone: bool,
    /// Numbers in the account's address book (for `contacts` visibility).
    #[serde(default)]
    pub address_book: BTreeSet<String>,
    /// Numbers the account blocked: their messages are not delivered to it.
    #[serde(default)]
    pub blocked: BTreeSet<String>,
    /// Messages from a number it has not written to need that number's trusted-contact
    /// token (WhatsApp's protection against unsolicited first messages): without one the
    /// server refuses them with a `463` nack.
    #[serde(default)]
    pub requires_token: bool,
    /// The trusted-contact tokens this account's phone issued, by the number it issued
    /// them to (sent with its first message to that number, as a `privacy_token`
    /// notification).
    #[serde(default)]
    pub tokens_issued: BTreeMap<String, B64>,
}

/// Changes to a simulated contact's profile (absent fields stay as they are).
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct ProfileUpdate {
    pub name: Option<String>,
    /// `Some("")` clears it.
    pub about: Option<String>,
    /// `true` sets a (new) picture, `false` removes it.
    pub picture: Option<bool>,
    pub picture_visible_to: Option<Visibility>,
    pub about_visible_to: Option<Visibility>,
    pub lid_addressing: Option<bool>,
    pub hide_phone: Option<bool>,
    pub requires_token: Option<bool>,
    /// Numbers to add to the account's address book.
    #[serde(default)]
    pub add_to_address_book: Vec<String>,
}

fn visible(to: Visibility, owner: &Account, viewer: &str) -> bool {
    match to {
        Visibility::All => true,
        Visibility::Contacts => owner.profile.address_book.contains(viewer),
        Visibility::Nobody => false,
    }
}

fn subprotocol_error(tag: &str, code: u16, text: &str) -> Node {
    NodeBuilder::new_dynamic(tag.to_string())
        .children([NodeBuilder::new("error")
            .attr("code", code.to_string())
            .attr("text", text.to_string())
            .build()])
        .build()
}

impl Simulator {
    /// Whether `sender` may write to `recipient` with the token its message carries: a
    /// recipient that requires tokens takes only the one it issued to the sender.
    pub(super) fn token_accepted(
        &self,
        recipient: &str,
        sender: &str,
        token: Option<&[u8]>,
    ) -> bool {
        let st = self.state();
        let Some(a) = st.accounts.get(recipient) else {
            return true;
        };
        if !a.profile.requires_token {
            return true;
        }
        match (a.profile.tokens_issued.get(sender), token) {
            (Some(issued), Some(token)) => issued.0 == token,
            _ => false,
        }
    }

    /// A phone about to write to `to` for the first time gives it a trusted-contact token,
    /// as WhatsApp's apps do: a `privacy_token` notification to each of `to`'s linked
    /// devices, so their replies are accepted.
    pub(super) fn issue_token(&self, phone: &str, to: &str) {
        let (token, lid) = {
            let mut st = self.state();
            let Some(a) = st.accounts.get_mut(phone) else {
                return;
            };
            if a.profile.tokens_issued.contains_key(to) {
                return;
            }
            let token: Vec<u8> = (0..16).map(|_| rand10::random::<u8>()).collect();
            a.profile
                .tokens_issued
                .insert(to.to_string(), B64(token.clone()));
            (token, a.lid.clone())
        };
        let now = now_secs().to_string();
        for device in self.linked_devices(to) {
            let notice = NodeBuilder::new("notification")
                .attr("from", Jid::pn(phone))
                .attr("sender_lid", Jid::lid(lid.as_str()))
                .attr("id", new_message_id())
                .attr("type", "privacy_token")
                .attr("t", now.clone())
                .children([NodeBuilder::new("tokens")
                    .children([NodeBuilder::new("token")
                        .attr("jid", Jid::pn(phone))
                        .attr("t", now.clone())
                        .attr("type", "trusted_contact")
                        .bytes(token.clone())
                        .build()])
                    .build()])
                .build();
            self.deliver_to_device(to, device, notice);
        }
    }

    /// A linked device gives contacts its account's trusted-contact token (`privacy` set
    /// `<tokens>`): each gets it as a `privacy_token` notification, as from the account.
    pub(super) fn issue_tokens_iq(&self, conn: u64, id: &str, node: &Node) -> Node {
        let Some((me, _)) = self.conn_device(conn) else {
            return iq_error(id, 401, "not-authorized");
        };
        let targets: Vec<String> = node
            .child("tokens")
            .map(|t| t.kids().to_vec())
            .unwrap_or_default()
            .iter()
            .filter_map(|t| t.attr("jid").and_then(|j| j.parse::<Jid>().ok()))
            .filter_map(|j| self.resolve(&j))
            .collect();
        for to in targets.iter().filter(|t| **t != me) {
            self.issue_token(&me, to);
        }
        iq_result(id)
            .children([NodeBuilder::new("tokens").build()])
            .build()
    }

    /// Changes a simulated contact's profile; the account is created when new.
    pub fn update_profile(&self, phone: &str, update: ProfileUpdate) -> anyhow::Result<()> {
        let phone = phone_digits(phone)?;
        let book: Vec<String> = update
            .add_to_address_book
            .iter()
            .map(|p| phone_digits(p))
            .collect::<anyhow::Result<_>>()?;
        let mut st = self.state();
        st.not_on_whatsapp.remove(&phone);
        let account = Self::ensure_account(&mut st, &phone)?;
        if let Some(name) = update.name {
            account.name = name;
            account.profile.named = true;
        }
        let p = &mut account.profile;
        if let Some(about) = update.about {
            p.about = Some(about).filter(|a| !a.is_empty());
        }
        match update.picture {
            Some(true) => p.picture_id = Some(u64::from(rand10::random::<u32>()) + 1),
            Some(false) => p.picture_id = None,
            None => {}
        }
        if let Some(v) = update.picture_visible_to {
            p.picture_visible_to = v;
        }
        if let Some(v) = update.about_visible_to {
            p.about_visible_to = v;
        }
        if let Some(v) = update.lid_addressing {
            p.lid_addressing = v;
        }
        if let Some(v) = update.hide_phone {
            p.hide_phone = v;
        }
        if let Some(v) = update.requires_token {
            p.requires_token = v;
        }
        p.address_book.extend(book);
        Ok(())
    }

    /// A simulated account's profile (`None` for a number the network never saw).
    pub fn profile(&self, phone: &str) -> Option<(String, String, ContactProfile)> {
        let phone = phone_digits(phone).ok()?;
        let st = self.state();
        st.accounts
            .get(&phone)
            .map(|a| (a.name.clone(), a.lid.clone(), a.profile.clone()))
    }

    /// The numbers an account blocked.
    pub fn blocked_by(&self, phone: &str) -> Vec<String> {
        self.read_account(phone, |a| a.profile.blocked.iter().cloned().collect())
    }

    /// Whether `owner` blocked `sender` (its messages, presence and typing do not reach it).
    pub(super) fn is_blocked(&self, owner: &str, sender: &str) -> bool {
        self.state()
            .accounts
            .get(owner)
            .is_some_and(|a| a.profile.blocked.contains(sender))
    }

    /// `usync` subprotocols about a user beyond contact, LID and devices: its about text
    /// (`status`), picture id and business profile, each refused as WhatsApp refuses it.
    pub(super) fn usync_profile_children(
        &self,
        st: &mut State,
        viewer: &str,
        phone: &str,
        wants: &dyn Fn(&str) -> bool,
        asked: &[String],
    ) -> anyhow::Result<Vec<Node>> {
        let mut children = Vec::new();
        let on_whatsapp = !st.not_on_whatsapp.contains(phone);
        if !on_whatsapp {
            return Ok(children);
        }
        let account = Self::ensure_account(st, phone)?;
        if wants("status") {
            children.push(
                if !visible(account.profile.about_visible_to, account, viewer) {
                    subprotocol_error("status", 401, "not-authorized")
                } else {
                    let mut node = NodeBuilder::new("status").attr("t", now_secs().to_string());
                    if let Some(about) = &account.profile.about {
                        node = node.string_content(about.clone());
                    }
                    node.build()
                },
            );
        }
        if wants("picture") {
            children.push(
                match (
                    account.profile.picture_id,
                    visible(account.profile.picture_visible_to, account, viewer),
                ) {
                    (_, false) => subprotocol_error("picture", 401, "not-authorized"),
                    (None, true) => subprotocol_error("picture", 404, "item-not-found"),
                    (Some(id), true) => NodeBuilder::new("picture")
                        .attr("id", id.to_string())
                        .build(),
                },
            );
        }
        if wants("business") {
            // A personal account: no verified business name.
            children.push(NodeBuilder::new("business").build());
        }
        for other in asked {
            if !matches!(
                other.as_str(),
                "contact" | "lid" | "devices" | "status" | "picture" | "business"
            ) {
                self.count_unmodelled(format!("usync:{other}"));
                children.push(subprotocol_error(other, 501, "feature-not-implemented"));
            }
        }
        Ok(children)
    }

    /// `w:profile:picture` get: the picture's URL, or 404 (none) / 401 (hidden from the
    /// asker), as WhatsApp answers.
    pub(super) fn picture_reply(&self, conn: u64, id: &str, node: &Node) -> Node {
        let viewer = self.conn_device(conn).map(|(p, _)| p).unwrap_or_default();
        let Some(target) = node
            .attr("target")
            .and_then(|t| t.parse::<Jid>().ok())
            .and_then(|j| self.resolve(&j))
        else {
            return iq_error(id, 400, "bad-request");
        };
        let kind = node
            .child("picture")
            .and_then(|p| p.attr("type"))
            .unwrap_or_else(|| "image".into());
        let st = self.state();
        let Some(account) = st.accounts.get(&target) else {
            return iq_error(id, 404, "item-not-found");
        };
        if !visible(account.profile.picture_visible_to, account, &viewer) {
            return iq_error(id, 401, "not-authorized");
        }
        let Some(picture) = account.profile.picture_id else {
            return iq_error(id, 404, "item-not-found");
        };
        let direct_path = format!("/v/t61.24694-24/{target}_{picture}_{kind}.jpg");
        iq_result(id)
            .children([NodeBuilder::new("picture")
                .attr("id", picture.to_string())
                .attr("type", kind)
                .attr("direct_path", direct_path.clone())
                .attr("url", format!("https://pps.whatsapp.net{direct_path}"))
                .build()])
            .build()
    }

    /// `blocklist` get (the list) and set (block or unblock one number).
    pub(super) fn blocklist_reply(&self, conn: u64, id: &str, kind: &str, node: &Node) -> Node {
        let Some((phone, _)) = self.conn_device(conn) else {
            return iq_error(id, 401, "not-authorized");
        };
        if kind == "get" {
            let blocked = self.blocked_by(&phone);
            return iq_result(id)
                .children([NodeBuilder::new("list")
                    .children(blocked.into_iter().map(|p| {
                        NodeBuilder::new("item")
                            .attr("jid", Jid::pn(p.as_str()))
                            .attr("t", now_secs().to_string())
                            .build()
                    }))
                    .build()])
                .build();
        }
        let Some(item) = node.child("item") else {
            return iq_error(id, 400, "bad-request");
        };
        // A LID item carries the number as `pn_jid`.
        let target = item
            .attr("pn_jid")
            .or_else(|| item.attr("jid"))
            .and_then(|j| j.parse::<Jid>().ok())
            .and_then(|j| self.resolve(&j));
        let (Some(target), Some(action)) = (target, item.attr("action")) else {
            return iq_error(id, 400, "bad-request");
        };
        let mut st = self.state();
        let Some(account) = st.accounts.get_mut(&phone) else {
            return iq_error(id, 401, "not-authorized");
        };
        match action.as_str() {
            "block" => {
                account.profile.blocked.insert(target);
            }
            "unblock" => {
                account.profile.blocked.remove(&target);
            }
            _ => return iq_error(id, 400, "bad-request"),
        }
        iq_result(id).build()
    }
}
