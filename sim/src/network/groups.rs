//! Groups, as WhatsApp's `w:g2` service keeps them, and group messages fanned out with
//! sender keys.
//!
//! A group is a subject, a description, participants with roles and an invite code. Every
//! change is answered to the device that asked and told to every other device of every
//! participant as a `w:gp2` notification, the way the real client parses them
//! (`wacore/src/stanza/groups.rs`). Groups use phone-number addressing (`addressing_mode="pn"`).
//!
//! A group message arrives once, as the sender's client builds it: one `skmsg` for everyone
//! and, for the devices that do not have the sender's key yet, a pairwise `pkmsg`/`msg`
//! carrying the sender-key distribution message (SKDM). The network hands each device of
//! each participant the `skmsg` with that device's own SKDM, if any, as WhatsApp does;
//! simulated phones decrypt both with their own sender-key store.

use std::collections::BTreeSet;

use super::*;

/// WhatsApp's limits (`wacore/src/iq/groups.rs`).
const SUBJECT_MAX_CHARS: usize = 100;
const DESCRIPTION_MAX_CHARS: usize = 2048;
/// Participants a group may hold.
const GROUP_SIZE_LIMIT: usize = 1024;

/// A participant's rank in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupRole {
    Member,
    Admin,
    Superadmin,
}

impl GroupRole {
    fn is_admin(self) -> bool {
        self != GroupRole::Member
    }

    /// The `type` attribute WhatsApp gives a participant (none for a plain member).
    fn wire(self) -> Option<&'static str> {
        match self {
            GroupRole::Member => None,
            GroupRole::Admin => Some("admin"),
            GroupRole::Superadmin => Some("superadmin"),
        }
    }
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub(crate) struct Group {
    subject: String,
    subject_owner: String,
    subject_time: u64,
    creator: String,
    creation: u64,
    description: Option<Description>,
    /// Phone number → role.
    participants: BTreeMap<String, GroupRole>,
    invite_code: String,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
struct Description {
    id: String,
    body: String,
    owner: String,
    time: u64,
}

/// A group as tests and the control API see it.
#[derive(Clone, Debug, Serialize)]
pub struct GroupView {
    /// `<id>@g.us`.
    pub jid: String,
    pub subject: String,
    pub description: Option<String>,
    pub creator: String,
    /// Phone number → role.
    pub participants: BTreeMap<String, GroupRole>,
    pub invite_code: String,
}

fn invite_code() -> String {
    use rand10::RngExt as _;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand10::rng();
    (0..22)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn participant_node(phone: &str, role: Option<GroupRole>, error: Option<&str>) -> Node {
    let mut p = NodeBuilder::new("participant").attr("jid", Jid::pn(phone));
    if let Some(r) = role.and_then(GroupRole::wire) {
        p = p.attr("type", r);
    }
    if let Some(e) = error {
        p = p.attr("error", e.to_string());
    }
    p.build()
}

impl Group {
    fn view(&self, id: &str) -> GroupView {
        GroupView {
            jid: Jid::group(id).to_string(),
            subject: self.subject.clone(),
            description: self.description.as_ref().map(|d| d.body.clone()),
            creator: self.creator.clone(),
            participants: self.participants.clone(),
            invite_code: self.invite_code.clone(),
        }
    }

    /// The `<group>` node of a `w:g2` answer.
    fn node(&self, id: &str) -> Node {
        let mut children: Vec<Node> = self
            .participants
            .iter()
            .map(|(phone, role)| participant_node(phone, Some(*role), None))
            .collect();
        if let Some(d) = &self.description {
            children.push(description_node(d));
        }
        NodeBuilder::new("group")
            .attr("id", id.to_string())
            .attr("subject", self.subject.clone())
            .attr("creation", self.creation.to_string())
            .attr("creator", Jid::pn(&self.creator))
            .attr("s_t", self.subject_time.to_string())
            .attr("s_o", Jid::pn(&self.subject_owner))
            .attr("addressing_mode", "pn")
            .attr("size", self.participants.len().to_string())
            .children(children)
            .build()
    }
}

fn description_node(d: &Description) -> Node {
    NodeBuilder::new("description")
        .attr("id", d.id.clone())
        .attr("participant", Jid::pn(&d.owner))
        .attr("t", d.time.to_string())
        .children([NodeBuilder::new("body")
            .string_content(d.body.clone())
            .build()])
        .build()
}

fn node_text(node: &Node) -> Option<String> {
    node.bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

/// What one participant action did to one participant.
struct Change {
    phone: String,
    jid: Jid,
    error: Option<&'static str>,
}

impl Simulator {
    // ----- the control surface ------------------------------------------------

    /// A group's state, by id or `<id>@g.us`.
    pub fn group(&self, group: &str) -> Option<GroupView> {
        let id = group.trim_end_matches("@g.us");
        self.state().groups.get(id).map(|g| g.view(id))
    }

    /// Every group a number takes part in.
    pub fn groups_of(&self, phone: &str) -> Vec<GroupView> {
        let Ok(phone) = phone_digits(phone) else {
            return Vec::new();
        };
        let st = self.state();
        let mut groups: Vec<GroupView> = st
            .groups
            .iter()
            .filter(|(_, g)| g.participants.contains_key(&phone))
            .map(|(id, g)| g.view(id))
            .collect();
        groups.sort_by(|a, b| a.jid.cmp(&b.jid));
        groups
    }

    // ----- `w:g2` requests ----------------------------------------------------

    pub(super) fn handle_groups_iq(&self, conn: u64, id: &str, node: &Node) -> Node {
        let Some((me, my_device)) = self.conn_device(conn) else {
            return iq_error(id, 401, "not-authorized");
        };
        let Some(to) = node
            .attr("to")
            .and_then(|t| t.parse::<Jid>().ok())
            .filter(|j| j.server == Server::Group)
        else {
            return iq_error(id, 400, "bad-request");
        };
        let Some(action) = node.kids().first() else {
            return iq_error(id, 400, "bad-request");
        };
        let asker = (me.clone(), my_device);
        if to.user.is_empty() {
            return match action.tag.as_ref() {
                "create" => self.create_group(id, &asker, action),
                "participating" => self.participating(id, &me),
                "leave" => self.leave_groups(id, &asker, action),
                "invite" => self.join_by_code(id, &asker, action),
                other => {
                    self.count_unmodelled(format!("iq:w:g2:{other}"));
                    iq_error(id, 501, "feature-not-implemented")
                }
            };
        }
        let gid = to.user.to_string();
        let role = {
            let st = self.state();
            match st.groups.get(&gid) {
                None => return iq_error(id, 404, "item-not-found"),
                Some(g) => g.participants.get(&me).copied(),
            }
        };
        // Only participants see or change a group; WhatsApp answers others 403.
        let Some(role) = role else {
            return iq_error(id, 403, "forbidden");
        };
        match action.tag.as_ref() {
            "query" => {
                let st = self.state();
                match st.groups.get(&gid) {
                    Some(g) => iq_result(id).children([g.node(&gid)]).build(),
                    None => iq_error(id, 404, "item-not-found"),
                }
            }
            "subject" => self.set_subject(id, &asker, &gid, action),
            "description" => self.set_description(id, &asker, &gid, action),
            "add" | "remove" | "promote" | "demote" if !role.is_admin() => {
                iq_error(id, 403, "forbidden")
            }
            "add" | "remove" | "promote" | "demote" => {
                self.change_participants(id, &asker, &gid, action)
            }
            "invite" if !role.is_admin() => iq_error(id, 403, "forbidden"),
            "invite" => {
                let mut st = self.state();
                let Some(g) = st.groups.get_mut(&gid) else {
                    return iq_error(id, 404, "item-not-found");
                };
                // A `set` revokes the old link and issues a new one.
                if node.attr("type").as_deref() == Some("set") {
                    g.invite_code = invite_code();
                }
                iq_result(id)
                    .children([NodeBuilder::new("invite")
                        .attr("code", g.invite_code.clone())
                        .build()])
                    .build()
            }
            other => {
                self.count_unmodelled(format!("iq:w:g2:{other}"));
                iq_error(id, 501, "feature-not-implemented")
            }
        }
    }

    fn create_group(&self, id: &str, asker: &(String, u16), create: &Node) -> Node {
        let me = &asker.0;
        let subject = create.attr("subject").unwrap_or_default();
        if subject.trim().is_empty() || subject.chars().count() > SUBJECT_MAX_CHARS {
            return iq_error(id, 406, "not-acceptable");
        }
        let now = now_secs();
        let mut participants = BTreeMap::new();
        participants.insert(me.clone(), GroupRole::Superadmin);
        for p in create.kids().iter().filter(|k| k.tag == "participant") {
            let Some(phone) = p
                .attr("jid")
                .and_then(|j| j.parse::<Jid>().ok())
                .and_then(|j| self.resolve(&j))
            else {
                continue;
            };
            if self.state().not_on_whatsapp.contains(&phone) {
                continue;
            }
            participants.entry(phone).or_insert(GroupRole::Member);
        }
        if participants.len() > GROUP_SIZE_LIMIT {
            return iq_error(id, 406, "not-acceptable");
        }
        let description = create.child("description").and_then(|d| {
            let body = d.child("body").and_then(node_text)?;
            Some(Description {
                id: d.attr("id").unwrap_or_else(new_message_id),
                body,
                owner: me.clone(),
                time: now,
            })
        });
        let group = Group {
            subject,
            subject_owner: me.clone(),
            subject_time: now,
            creator: me.clone(),
            creation: now,
            description,
            participants,
            invite_code: invite_code(),
        };
        let gid = {
            let mut st = self.state();
            for phone in group.participants.keys() {
                let _ = Self::ensure_account(&mut st, phone);
            }
            let gid = loop {
                let candidate =
                    format!("120363{:012}", rand10::random::<u64>() % 1_000_000_000_000);
                if !st.groups.contains_key(&candidate) {
                    break candidate;
                }
            };
            st.groups.insert(gid.clone(), group.clone());
            gid
        };
        let node = group.node(&gid);
        let create_notice = NodeBuilder::new("create").children([node.clone()]).build();
        self.notify_group(
            &gid,
            me,
            group.participants.keys(),
            Some(asker),
            create_notice,
        );
        iq_result(id).children([node]).build()
    }

    fn participating(&self, id: &str, me: &str) -> Node {
        let st = self.state();
        let mut ids: Vec<&String> = st
            .groups
            .iter()
            .filter(|(_, g)| g.participants.contains_key(me))
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        let groups: Vec<Node> = ids
            .into_iter()
            .map(|gid| st.groups[gid].node(gid))
            .collect();
        iq_result(id)
            .children([NodeBuilder::new("groups").children(groups).build()])
            .build()
    }

    fn set_subject(&self, id: &str, asker: &(String, u16), gid: &str, node: &Node) -> Node {
        let me = &asker.0;
        let subject = node_text(node).unwrap_or_default();
        if subject.trim().is_empty() || subject.chars().count() > SUBJECT_MAX_CHARS {
            return iq_error(id, 406, "not-acceptable");
        }
        let now = now_secs();
        let members = {
            let mut st = self.state();
            let Some(g) = st.groups.get_mut(gid) else {
                return iq_error(id, 404, "item-not-found");
            };
            g.subject = subject.clone();
            g.subject_owner = me.clone();
            g.subject_time = now;
            g.participants.keys().cloned().collect::<Vec<_>>()
        };
        let notice = NodeBuilder::new("subject")
            .attr("subject", subject)
            .attr("s_o", Jid::pn(me))
            .attr("s_t", now.to_string())
            .build();
        self.notify_group(gid, me, members.iter(), Some(asker), notice);
        iq_result(id).build()
    }

    fn set_description(&self, id: &str, asker: &(String, u16), gid: &str, node: &Node) -> Node {
        let me = &asker.0;
        let desc_id = node.attr("id").unwrap_or_else(new_message_id);
        let delete = node.attr("delete").as_deref() == Some("true");
        let body = node.child("body").and_then(node_text);
        if !delete && body.is_none() {
            return iq_error(id, 400, "bad-request");
        }
        if body
            .as_ref()
            .is_some_and(|b| b.chars().count() > DESCRIPTION_MAX_CHARS)
        {
            return iq_error(id, 406, "not-acceptable");
        }
        let members = {
            let mut st = self.state();
            let Some(g) = st.groups.get_mut(gid) else {
                return iq_error(id, 404, "item-not-found");
            };
            // `prev` names the description the writer saw; a stale one conflicts.
            if let (Some(prev), Some(current)) = (node.attr("prev"), g.description.as_ref())
                && prev != current.id
            {
                return iq_error(id, 409, "conflict");
            }
            g.description = match (delete, &body) {
                (false, Some(body)) => Some(Description {
                    id: desc_id.clone(),
                    body: body.clone(),
                    owner: me.clone(),
                    time: now_secs(),
                }),
                _ => None,
            };
            g.participants.keys().cloned().collect::<Vec<_>>()
        };
        let inner = match body.filter(|_| !delete) {
            Some(body) => NodeBuilder::new("body").string_content(body).build(),
            None => NodeBuilder::new("delete").build(),
        };
        let notice = NodeBuilder::new("description")
            .attr("id", desc_id)
            .children([inner])
            .build();
        self.notify_group(gid, me, members.iter(), Some(asker), notice);
        iq_result(id).build()
    }

    fn change_participants(&self, id: &str, asker: &(String, u16), gid: &str, node: &Node) -> Node {
        let me = &asker.0;
        let action: &'static str = match node.tag.as_ref() {
            "add" => "add",
            "remove" => "remove",
            "promote" => "promote",
            _ => "demote",
        };
        let asked: Vec<(Option<String>, Jid)> = node
            .kids()
            .iter()
            .filter(|k| k.tag == "participant")
            .filter_map(|k| k.attr("jid").and_then(|j| j.parse::<Jid>().ok()))
            .map(|jid| (self.resolve(&jid), jid))
            .collect();
        let (changes, before) = {
            let mut st = self.state();
            let State {
                groups,
                not_on_whatsapp,
                accounts,
                ..
            } = &mut *st;
            let Some(g) = groups.get_mut(gid) else {
                return iq_error(id, 404, "item-not-found");
            };
            let before: Vec<String> = g.participants.keys().cloned().collect();
            let mut changes = Vec::new();
            for (phone, jid) in asked {
                let Some(phone) = phone else {
                    changes.push(Change {
                        phone: String::new(),
                        jid,
                        error: Some("404"),
                    });
                    continue;
                };
                let error = match action {
                    "add" if not_on_whatsapp.contains(&phone) => Some("404"),
                    "add" if g.participants.contains_key(&phone) => Some("409"),
                    "add" if g.participants.len() >= GROUP_SIZE_LIMIT => Some("500"),
                    // A number that blocked the admin cannot be added by them.
                    "add"
                        if accounts
                            .get(&phone)
                            .is_some_and(|a| a.profile.blocked.contains(me)) =>
                    {
                        Some("403")
                    }
                    "add" => {
                        g.participants.insert(phone.clone(), GroupRole::Member);
                        None
                    }
                    _ if !g.participants.contains_key(&phone) => Some("404"),
                    // The creator cannot be removed or demoted by another admin.
                    "remove" | "demote" if phone == g.creator && phone != *me => Some("406"),
                    "remove" => {
                        g.participants.remove(&phone);
                        None
                    }
                    "promote" => {
                        g.participants.entry(phone.clone()).and_modify(|r| {
                            if *r == GroupRole::Member {
                                *r = GroupRole::Admin
                            }
                        });
                        None
                    }
                    _ => {
                        g.participants.insert(phone.clone(), GroupRole::Member);
                        None
                    }
                };
                changes.push(Change { phone, jid, error });
            }
            (changes, before)
        };
        for c in changes.iter().filter(|c| c.error.is_none()) {
            if action == "add" {
                let _ = Self::ensure_account(&mut self.state(), &c.phone);
            }
        }
        let done: Vec<&Change> = changes.iter().filter(|c| c.error.is_none()).collect();
        if !done.is_empty() {
            let notice = NodeBuilder::new(action)
                .children(done.iter().map(|c| participant_node(&c.phone, None, None)))
                .build();
            // Everyone who was or now is in the group hears of it: the removed learn they
            // were removed, the added that they were added.
            let mut audience: BTreeSet<String> = before.into_iter().collect();
            audience.extend(done.iter().map(|c| c.phone.clone()));
            self.notify_group(gid, me, audience.iter(), Some(asker), notice);
        }
        let answer = NodeBuilder::new(action)
            .children(changes.iter().map(|c| {
                let mut p = NodeBuilder::new("participant").attr("jid", c.jid.clone());
                if let Some(e) = c.error {
                    p = p.attr("error", e);
                }
                p.build()
            }))
            .build();
        iq_result(id).children([answer]).build()
    }

    fn leave_groups(&self, id: &str, asker: &(String, u16), leave: &Node) -> Node {
        let me = &asker.0;
        let mut left = Vec::new();
        for g in leave.kids().iter().filter(|k| k.tag == "group") {
            let Some(gid) = g
                .attr("id")
                .map(|i| i.trim_end_matches("@g.us").to_string())
            else {
                continue;
            };
            let audience = {
                let mut st = self.state();
                let Some(group) = st.groups.get_mut(&gid) else {
                    continue;
                };
                let audience: Vec<String> = group.participants.keys().cloned().collect();
                if group.participants.remove(me).is_none() {
                    continue;
                }
                // A group is never left without an admin: the longest-standing
                // participant (here: the lowest number) takes over, as WhatsApp does.
                if !group.participants.values().any(|r| r.is_admin())
                    && let Some(r) = group.participants.values_mut().next()
                {
                    *r = GroupRole::Admin;
                }
                if group.participants.is_empty() {
                    st.groups.remove(&gid);
                }
                audience
            };
            let notice = NodeBuilder::new("remove")
                .children([participant_node(me, None, None)])
                .build();
            self.notify_group(&gid, me, audience.iter(), Some(asker), notice);
            left.push(
                NodeBuilder::new("group")
                    .attr("id", Jid::group(&gid))
                    .build(),
            );
        }
        iq_result(id)
            .children([NodeBuilder::new("leave").children(left).build()])
            .build()
    }

    fn join_by_code(&self, id: &str, asker: &(String, u16), invite: &Node) -> Node {
        let me = &asker.0;
        let Some(code) = invite.attr("code") else {
            return iq_error(id, 400, "bad-request");
        };
        let joined = {
            let mut st = self.state();
            st.groups
                .iter_mut()
                .find(|(_, g)| g.invite_code == code)
                .map(|(gid, g)| {
                    let members: Vec<String> = g.participants.keys().cloned().collect();
                    let new = !g.participants.contains_key(me);
                    let full = g.participants.len() >= GROUP_SIZE_LIMIT;
                    if new && !full {
                        g.participants.insert(me.clone(), GroupRole::Member);
                    }
                    (gid.clone(), members, new, full)
                })
        };
        // WhatsApp answers a revoked or unknown code 406.
        let Some((gid, mut audience, new, full)) = joined else {
            return iq_error(id, 406, "not-acceptable");
        };
        if new && full {
            return iq_error(id, 409, "conflict");
        }
        if new {
            audience.push(me.clone());
            let notice = NodeBuilder::new("add")
                .attr("reason", "invite")
                .children([participant_node(me, None, None)])
                .build();
            self.notify_group(&gid, me, audience.iter(), Some(asker), notice);
        }
        iq_result(id)
            .children([NodeBuilder::new("group")
                .attr("jid", Jid::group(&gid))
                .build()])
            .build()
    }

    /// Tells every linked device of `audience` (but the one that asked) about a change, as
    /// a `w:gp2` notification from the group.
    fn notify_group<'a>(
        &self,
        gid: &str,
        actor: &str,
        audience: impl Iterator<Item = &'a String>,
        skip: Option<&(String, u16)>,
        action: Node,
    ) {
        let notify = self
            .state()
            .accounts
            .get(actor)
            .map(|a| a.name.clone())
            .unwrap_or_default();
        for phone in audience {
            for device in self.linked_devices(phone) {
                if skip.is_some_and(|(p, d)| p == phone && *d == device) {
                    continue;
                }
                let notice = NodeBuilder::new("notification")
                    .attr("from", Jid::group(gid))
                    .attr("id", new_message_id())
                    .attr("type", "w:gp2")
                    .attr("participant", Jid::pn(actor))
                    .attr("notify", notify.clone())
                    .attr("t", now_secs().to_string())
                    .children([action.clone()])
                    .build();
                self.deliver_to_device(phone, device, notice);
            }
        }
    }

    // ----- group messages -----------------------------------------------------

    /// A linked device sent a group message: every other device of every participant gets
    /// the `skmsg`, with its own SKDM when the sender included one for it.
    pub(super) async fn handle_group_message(
        &self,
        conn: u64,
        (sender, sender_device): (&str, u16),
        id: &str,
        to: &Jid,
        node: &Node,
        ack: Node,
    ) -> anyhow::Result<()> {
        let gid = to.user.to_string();
        let refused = message_ack(id, to, Some("403"));
        let members: Option<Vec<String>> = self
            .state()
            .groups
            .get(&gid)
            .map(|g| g.participants.keys().cloned().collect());
        let Some(members) = members.filter(|m| m.iter().any(|p| p == sender)) else {
            // Not (or no longer) a participant: the server refuses the message.
            self.send_to_conn(conn, refused);
            return Ok(());
        };
        if !self.first_sight(sender, id) {
            self.ack_duplicate(conn, ack);
            return Ok(());
        }
        self.send_to_conn(conn, ack);
        let Some(skmsg) = node.child("enc").cloned() else {
            return Ok(());
        };
        let mut pairwise: HashMap<(String, u16), Node> = HashMap::new();
        if let Some(participants) = node.child("participants") {
            for p in participants.kids().iter().filter(|p| p.tag == "to") {
                if let (Some(jid), Some(enc)) = (
                    p.attr("jid").and_then(|j| j.parse::<Jid>().ok()),
                    p.child("enc"),
                ) && let Some(phone) = self.resolve(&jid)
                {
                    pairwise.insert((phone, jid.device), enc.clone());
                }
            }
        }
        let (extras, kind, push_name) = self.relay_parts(sender, node);
        let from_device = device_jid(sender, sender_device);
        for member in members {
            let mut devices = vec![0];
            devices.extend(self.linked_devices(&member));
            for device in devices {
                if member == sender && device == sender_device {
                    continue;
                }
                let own = pairwise.remove(&(member.clone(), device));
                if device == 0 {
                    self.phone_receives_group(
                        &member,
                        &gid,
                        (sender, sender_device),
                        id,
                        own.as_ref(),
                        &skmsg,
                    )
                    .await;
                    continue;
                }
                let mut stanza = NodeBuilder::new("message")
                    .attr("from", Jid::group(&gid))
                    .attr("participant", from_device.clone())
                    .attr("id", id.to_string())
                    .attr("type", kind.clone())
                    .attr("t", now_secs().to_string());
                if !push_name.is_empty() {
                    stanza = stanza.attr("notify", push_name.clone());
                }
                let mut children: Vec<Node> = own.into_iter().collect();
                children.push(skmsg.clone());
                children.extend(extras.iter().cloned());
                self.deliver_to_device(&member, device, stanza.children(children).build());
            }
        }
        Ok(())
    }

    /// A simulated phone takes a group message: the SKDM meant for it (if any), then the
    /// `skmsg` under that sender key. It files what it read and sends receipts.
    async fn phone_receives_group(
        &self,
        phone: &str,
        gid: &str,
        (sender, sender_device): (&str, u16),
        id: &str,
        own: Option<&Node>,
        skmsg: &Node,
    ) {
        let (signal, behaviour) = {
            let st = self.state();
            let Some(a) = st.accounts.get(phone) else {
                return;
            };
            (a.phone.clone(), a.behaviour.clone())
        };
        let group_jid = Jid::group(gid).to_string();
        let message = {
            let mut signal = signal.lock().await;
            if let Some(enc) = own
                && let Some(ct) = enc.bytes()
            {
                let kind = enc.attr("type").unwrap_or_default();
                match signal.decrypt(sender, sender_device, &kind, ct).await {
                    Ok(m) => {
                        if let Some(skdm) = m
                            .sender_key_distribution_message
                            .as_option()
                            .and_then(|s| s.axolotl_sender_key_distribution_message.as_ref())
                            && let Err(e) = signal
                                .accept_sender_key(&group_jid, sender, sender_device, skdm)
                                .await
                        {
                            tracing::warn!(error = %e, phone, "sim: a phone could not take a sender key");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, phone, sender, "sim: a phone could not decrypt a sender key distribution");
                    }
                }
            }
            if phone == sender {
                // The sender's own phone keeps the key and has nothing to show.
                return;
            }
            let Some(ct) = skmsg.bytes() else { return };
            match signal
                .decrypt_group(&group_jid, sender, sender_device, ct)
                .await
            {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, phone, sender, group = gid, "sim: a phone could not decrypt a group message");
                    return;
                }
            }
        };
        let mut received = describe(phone, sender, sender_device, id, &message);
        received.group = Some(group_jid);
        self.phone_files(received, behaviour);
    }

    /// A simulated phone writes in a group: its sender key goes to every device that takes
    /// part (inside a pairwise message), the text as one `skmsg`.
    pub async fn inject_group_text(
        &self,
        from: &str,
        group: &str,
        text: &str,
    ) -> anyhow::Result<String> {
        let from = phone_digits(from)?;
        let gid = group.trim_end_matches("@g.us").to_string();
        let (members, signal, name) = {
            let st = self.state();
            let g = st
                .groups
                .get(&gid)
                .ok_or_else(|| anyhow!("no group {gid}"))?;
            if !g.participants.contains_key(&from) {
                bail!("{from} is not in group {gid}");
            }
            let a = st
                .accounts
                .get(&from)
                .ok_or_else(|| anyhow!("no account {from}"))?;
            (
                g.participants.keys().cloned().collect::<Vec<_>>(),
                a.phone.clone(),
                a.name.clone(),
            )
        };
        let id = new_message_id();
        let group_jid = Jid::group(&gid).to_string();
        let message = wa::Message {
            conversation: Some(text.to_string()),
            ..Default::default()
        };
        let (distribution, skmsg) = {
            let mut signal = signal.lock().await;
            let skdm = signal.own_sender_key(&group_jid, &from).await?;
            let skmsg = signal.encrypt_group(&group_jid, &from, &message).await?;
            (skdm, skmsg)
        };
        let carrier = wa::Message {
            sender_key_distribution_message: buffa::MessageField::some(
                wa::message::SenderKeyDistributionMessage {
                    group_id: Some(group_jid.clone()),
                    axolotl_sender_key_distribution_message: Some(distribution),
                },
            ),
            ..Default::default()
        };
        {
            let mut st = self.state();
            if let Some(a) = st.accounts.get_mut(&from) {
                a.sent_by_phone.insert(id.clone());
            }
        }
        let skmsg_node = enc_node("skmsg", skmsg);
        for member in members.iter().filter(|m| **m != from) {
            if self.is_blocked(member, &from) {
                continue;
            }
            // Another simulated phone: a pairwise session from its fresh bundle.
            let bundle = {
                let other = self.state().accounts.get(member).map(|a| a.phone.clone());
                match other {
                    Some(other) => Some(other.lock().await.mint_bundle()?),
                    None => None,
                }
            };
            let own = {
                let mut signal = signal.lock().await;
                let bundle = bundle.filter(|_| !signal.has_session(member, 0));
                let (kind, ct) = signal
                    .encrypt(member, 0, bundle.as_ref(), &carrier)
                    .await
                    .with_context(|| format!("sender key for {member}"))?;
                enc_node(kind, ct)
            };
            self.phone_receives_group(member, &gid, (&from, 0), &id, Some(&own), &skmsg_node)
                .await;
            for device in self.linked_devices(member) {
                let (kind, ct) = self
                    .encrypt_for_device(&signal, member, device, &carrier)
                    .await?;
                let own = enc_node(kind, ct);
                let stanza = NodeBuilder::new("message")
                    .attr("from", Jid::group(&gid))
                    .attr("participant", Jid::pn(&from))
                    .attr("id", id.clone())
                    .attr("type", "text")
                    .attr("t", now_secs().to_string())
                    .attr("notify", name.clone())
                    .children([own, skmsg_node.clone()])
                    .build();
                self.deliver_to_device(member, device, stanza);
            }
        }
        self.persist_changes().await?;
        Ok(id)
    }
}
