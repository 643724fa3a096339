//! Stanzas from logged-in clients: IQs, messages, receipts and acks.

use super::*;

impl Simulator {
    // ----- stanzas from a logged-in client -----------------------------------

    /// Handles one stanza from a connection.
    pub(crate) async fn handle_stanza(&self, conn: u64, node: Node) -> anyhow::Result<()> {
        tracing::trace!(conn, tag = %node.tag, attrs = ?node.attrs, "sim: stanza in");
        match node.tag.as_ref() {
            "iq" => self.handle_iq(conn, node).await,
            "message" => self.handle_message(conn, node).await,
            "receipt" => {
                self.handle_receipt(conn, node);
                Ok(())
            }
            "ack" => {
                self.handle_ack(conn, &node);
                Ok(())
            }
            "presence" => {
                self.handle_presence(conn, &node);
                Ok(())
            }
            "chatstate" => {
                self.handle_chatstate(conn, &node);
                Ok(())
            }
            // Client notices (`unified_session` timing and the like): WhatsApp answers none.
            "ib" => Ok(()),
            other => {
                self.count_unmodelled(format!("stanza:{other}"));
                Ok(())
            }
        }
    }

    pub(super) fn handle_ack(&self, conn: u64, node: &Node) {
        let Some(id) = node.attr("id") else { return };
        let Some((phone, device)) = self.conn_device(conn) else {
            return;
        };
        self.drain_unacked(&phone, device, &[id]);
    }

    /// The device took these stanzas: they are no longer replayed at its next login.
    fn drain_unacked(&self, phone: &str, device: u16, ids: &[String]) {
        let mut st = self.state();
        if let Some(d) = st
            .accounts
            .get_mut(phone)
            .and_then(|a| a.devices.get_mut(&device))
        {
            d.unacked.retain(|(i, _)| !ids.contains(i));
        }
    }

    pub(super) async fn handle_iq(&self, conn: u64, node: Node) -> anyhow::Result<()> {
        let id = node.attr("id").unwrap_or_default();
        let kind = node.attr("type").unwrap_or_default();
        if kind == "result" || kind == "error" {
            if node.child("pair-device-sign").is_some() {
                self.complete_pair_sign(conn, &node);
            }
            return Ok(());
        }
        let xmlns = node.attr("xmlns").unwrap_or_default();
        let reply = match xmlns.as_str() {
            "passive" => {
                self.send_to_conn(conn, iq_result(&id).build());
                self.flush_offline(conn);
                return Ok(());
            }
            "encrypt" => self.handle_encrypt_iq(conn, &id, &node).await?,
            "usync" => self.handle_usync(conn, &id, &node)?,
            // Keepalive pings.
            "w:p" => iq_result(&id).build(),
            "w:g2" => self.handle_groups_iq(conn, &id, &node),
            "blocklist" => self.blocklist_reply(conn, &id, &kind, &node),
            "w:profile:picture" if kind == "get" => self.picture_reply(conn, &id, &node),
            "w:sync:app:state" => Self::app_state_reply(&id, &node),
            "w:m" if node.child("media_conn").is_some() => self.media_conn_reply(&id),
            // Every client asks for these after each login; an empty answer would make it
            // log a parse failure per connection.
            // The experiment flags WhatsApp turns on for everyone that the network models:
            // 1:1 messages carry the recipient's trusted-contact token
            // (`privacy_token_sending_on_all_1_on_1_messages`).
            "abt" if node.child("props").is_some() => iq_result(&id)
                .children([NodeBuilder::new("props")
                    .attr("protocol", "1")
                    .attr("hash", "sim")
                    .attr("refresh", "86400")
                    .children([NodeBuilder::new("prop")
                        .attr("config_code", "10518")
                        .attr("config_value", "1")
                        .build()])
                    .build()])
                .build(),
            "privacy" if kind == "set" && node.child("tokens").is_some() => {
                self.issue_tokens_iq(conn, &id, &node)
            }
            "privacy" if kind == "get" => iq_result(&id)
                .children([NodeBuilder::new("privacy")
                    .children(
                        [
                            ("last", "all"),
                            ("online", "all"),
                            ("profile", "all"),
                            ("status", "contacts"),
                            ("readreceipts", "all"),
                            ("groupadd", "all"),
                        ]
                        .map(|(name, value)| {
                            NodeBuilder::new("category")
                                .attr("name", name)
                                .attr("value", value)
                                .build()
                        }),
                    )
                    .build()])
                .build(),
            "md" => {
                if let Some(remove) = node.child("remove-companion-device") {
                    self.handle_self_logout(conn, remove);
                }
                if let Some(reg) = node.child("link_code_companion_reg") {
                    self.handle_link_code(conn, &id, reg)
                } else {
                    iq_result(&id).build()
                }
            }
            // What WhatsApp offers and the simulator does not model gets WhatsApp's own answer
            // to a request it does not support, never an empty result a client cannot parse.
            other => {
                self.count_unmodelled(format!("iq:{other}"));
                iq_error(&id, 501, "feature-not-implemented")
            }
        };
        self.send_to_conn(conn, reply);
        Ok(())
    }

    /// The client logged itself out (`remove-companion-device`).
    pub(super) fn handle_self_logout(&self, conn: u64, _remove: &Node) {
        if let Some((phone, device)) = self.conn_device(conn) {
            let mut st = self.state();
            if let Some(d) = st
                .accounts
                .get_mut(&phone)
                .and_then(|a| a.devices.remove(&device))
            {
                st.by_noise.remove(&d.noise_pub);
            }
            drop(st);
            self.tell_device_change(&phone, device, false);
            self.forget_peer_sessions(&phone, device);
            self.emit(SimEvent::LoggedOut { phone, device });
        }
    }

    /// Sends what queued up while the device was away, then the end marker.
    pub(super) fn flush_offline(&self, conn: u64) {
        let Some((phone, device)) = self.conn_device(conn) else {
            return;
        };
        let mut st = self.state();
        let State {
            accounts, conns, ..
        } = &mut *st;
        let Some(d) = accounts
            .get_mut(&phone)
            .and_then(|a| a.devices.get_mut(&device))
        else {
            return;
        };
        let Some(c) = conns.get(&conn) else { return };
        let count = d.offline.len();
        while let Some(node) = d.offline.pop_front() {
            if node.tag == "message"
                && let Some(id) = node.attr("id")
            {
                d.unacked.push((id, node.clone()));
            }
            let _ = c.tx.send(ConnCmd::Send(node));
        }
        let ib = NodeBuilder::new("ib")
            .children([NodeBuilder::new("offline")
                .attr("count", count.to_string())
                .build()])
            .build();
        let _ = c.tx.send(ConnCmd::Send(ib));
    }

    pub(super) fn app_state_reply(id: &str, node: &Node) -> Node {
        // Every collection answers 409: the client counts that as synced and
        // connects without waiting for app-state content we do not model.
        let collections: Vec<Node> = node
            .child("sync")
            .map(|s| s.kids().to_vec())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.tag == "collection")
            .map(|c| {
                NodeBuilder::new("collection")
                    .attr("name", c.attr("name").unwrap_or_default())
                    .attr("type", "error")
                    .children([NodeBuilder::new("error")
                        .attr("code", "409")
                        .attr("text", "conflict")
                        .build()])
                    .build()
            })
            .collect();
        iq_result(id)
            .children([NodeBuilder::new("sync").children(collections).build()])
            .build()
    }

    pub(super) async fn handle_encrypt_iq(
        &self,
        conn: u64,
        id: &str,
        node: &Node,
    ) -> anyhow::Result<Node> {
        let Some((phone, device)) = self.conn_device(conn) else {
            return Ok(iq_result(id).build());
        };
        if node.child("count").is_some() {
            let count = self
                .state()
                .accounts
                .get(&phone)
                .and_then(|a| a.devices.get(&device))
                .map(|d| d.pre_keys.len())
                .unwrap_or(0);
            return Ok(iq_result(id)
                .children([NodeBuilder::new("count")
                    .attr("value", count.to_string())
                    .build()])
                .build());
        }
        if node.child("registration").is_some() || node.child("list").is_some() {
            self.store_prekeys(&phone, device, node)?;
            self.maybe_share_app_state_key(&phone, device);
            return Ok(iq_result(id).build());
        }
        if node.child("digest").is_some() {
            // The key bundle as the server holds it, with its SHA-1 digest, so the client can
            // check its own keys against it at login.
            let st = self.state();
            let Some(d) = st.accounts.get(&phone).and_then(|a| a.devices.get(&device)) else {
                return Ok(iq_error(id, 404, "item-not-found"));
            };
            let prekeys: Vec<&[u8]> = d.pre_keys.iter().map(|(_, k)| k.as_slice()).collect();
            let hash = wacore::prekeys::compute_key_bundle_digest(
                &d.identity,
                &d.signed_pre_key.1,
                &d.signed_pre_key.2,
                &prekeys,
            );
            return Ok(iq_result(id)
                .children([NodeBuilder::new("digest")
                    .children([
                        NodeBuilder::new("registration")
                            .bytes(d.registration_id.to_be_bytes().to_vec())
                            .build(),
                        NodeBuilder::new("type").bytes(vec![5]).build(),
                        NodeBuilder::new("identity")
                            .bytes(d.identity.to_vec())
                            .build(),
                        signed_prekey_node(
                            d.signed_pre_key.0,
                            &d.signed_pre_key.1,
                            &d.signed_pre_key.2,
                        ),
                        NodeBuilder::new("list")
                            .children(d.pre_keys.iter().map(|(i, _)| {
                                NodeBuilder::new("id").bytes(key_id_bytes(*i)).build()
                            }))
                            .build(),
                        NodeBuilder::new("hash").bytes(hash).build(),
                    ])
                    .build()])
                .build());
        }
        if let Some(rotate) = node.child("rotate") {
            if let Some(skey) = rotate.child("skey") {
                let parsed = parse_skey(skey)?;
                let mut st = self.state();
                if let Some(d) = st
                    .accounts
                    .get_mut(&phone)
                    .and_then(|a| a.devices.get_mut(&device))
                {
                    d.signed_pre_key = parsed;
                }
            }
            return Ok(iq_result(id).build());
        }
        if let Some(key) = node.child("key") {
            let mut users = Vec::new();
            for user in key.kids().iter().filter(|u| u.tag == "user") {
                let Some(jid) = user.attr("jid").and_then(|j| j.parse::<Jid>().ok()) else {
                    continue;
                };
                if let Some(n) = self.bundle_node(&jid).await? {
                    users.push(n);
                }
            }
            return Ok(iq_result(id)
                .children([NodeBuilder::new("list").children(users).build()])
                .build());
        }
        let asked = node.kids().first().map(|c| c.tag.to_string());
        self.count_unmodelled(format!("iq:encrypt:{}", asked.unwrap_or_default()));
        Ok(iq_error(id, 501, "feature-not-implemented"))
    }

    pub(super) fn store_prekeys(
        &self,
        phone: &str,
        device: u16,
        node: &Node,
    ) -> anyhow::Result<()> {
        let mut keys = Vec::new();
        if let Some(list) = node.child("list") {
            for k in list.kids().iter().filter(|k| k.tag == "key") {
                keys.push(parse_key(k)?);
            }
        }
        let skey = node.child("skey").map(parse_skey).transpose()?;
        let mut st = self.state();
        let d = st
            .accounts
            .get_mut(phone)
            .and_then(|a| a.devices.get_mut(&device))
            .ok_or_else(|| anyhow!("prekeys from an unknown device"))?;
        d.pre_keys.extend(keys);
        if let Some(s) = skey {
            d.signed_pre_key = s;
        }
        Ok(())
    }

    /// The bundle a client fetches to start a session with `jid`.
    pub(super) async fn bundle_node(&self, jid: &Jid) -> anyhow::Result<Option<Node>> {
        let Some(phone) = self.resolve(jid) else {
            return Ok(None);
        };
        if jid.device == 0 {
            let signal = {
                let mut st = self.state();
                if st.not_on_whatsapp.contains(&phone) {
                    return Ok(None);
                }
                Self::ensure_account(&mut st, &phone)?.phone.clone()
            };
            let bundle = signal.lock().await.mint_bundle()?;
            return Ok(Some(bundle_to_node(jid.clone(), &bundle, None)));
        }
        let mut st = self.state();
        let Some(d) = st
            .accounts
            .get_mut(&phone)
            .and_then(|a| a.devices.get_mut(&jid.device))
        else {
            return Ok(None);
        };
        let bundle = take_device_bundle(d);
        Ok(Some(bundle_to_node(
            jid.clone(),
            &bundle,
            Some(d.adv_signed.clone()),
        )))
    }

    pub(super) fn handle_usync(&self, conn: u64, id: &str, node: &Node) -> anyhow::Result<Node> {
        let Some(usync) = node.child("usync") else {
            return Ok(iq_error(id, 400, "bad-request"));
        };
        let viewer = self.conn_device(conn).map(|(p, _)| p).unwrap_or_default();
        let query = usync.child("query");
        let wants = |tag: &str| query.is_some_and(|q| q.child(tag).is_some());
        let asked: Vec<String> = query
            .map(|q| q.kids().iter().map(|k| k.tag.to_string()).collect())
            .unwrap_or_default();
        let mut users = Vec::new();
        let users_in = usync
            .child("list")
            .map(|l| l.kids().to_vec())
            .unwrap_or_default();
        for user in users_in.iter().filter(|u| u.tag == "user") {
            let jid = user
                .attr("jid")
                .and_then(|j| j.parse::<Jid>().ok())
                .or_else(|| {
                    user.child("contact")
                        .and_then(|c| c.bytes())
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .and_then(|p| phone_digits(p).ok())
                        .map(Jid::pn)
                });
            let Some(jid) = jid else { continue };
            let Some(phone) = self.resolve(&jid) else {
                continue;
            };
            let mut st = self.state();
            let on_whatsapp = !st.not_on_whatsapp.contains(&phone);
            let mut children = Vec::new();
            if wants("contact") {
                children.push(
                    NodeBuilder::new("contact")
                        .attr("type", if on_whatsapp { "in" } else { "out" })
                        .build(),
                );
            }
            if wants("lid") {
                let mut lid = NodeBuilder::new("lid");
                if on_whatsapp {
                    let account = Self::ensure_account(&mut st, &phone)?;
                    lid = lid.attr("val", Jid::lid(account.lid.as_str()));
                }
                children.push(lid.build());
            }
            children.extend(self.usync_profile_children(&mut st, &viewer, &phone, &wants, &asked)?);
            if wants("devices") && on_whatsapp {
                // Whoever asked for a device list hears when it changes (`devices`
                // notifications), as WhatsApp tells the account's contacts.
                if !viewer.is_empty() && viewer != phone {
                    st.device_watchers
                        .entry(phone.clone())
                        .or_default()
                        .insert(viewer.clone());
                }
                let account = Self::ensure_account(&mut st, &phone)?;
                let hash = device_list_hash(account);
                // WhatsApp leaves out a user whose device list the client already holds: the
                // client sends the list's hash with the user, and an unchanged list is omitted
                // (from a devices-only query; nothing else was asked of this user).
                let held = user.child("devices").and_then(|d| d.attr("device_hash"));
                if held.is_some() {
                    self.inner
                        .counters
                        .device_list_hashes_held
                        .fetch_add(1, Ordering::Relaxed);
                }
                if !wants("contact") && !wants("lid") && held.is_some_and(|h| h == hash) {
                    self.inner
                        .counters
                        .device_lists_unchanged
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let mut list = vec![NodeBuilder::new("device").attr("id", "0").build()];
                let companions: Vec<u16> = account.devices.keys().copied().collect();
                for dev in &companions {
                    list.push(
                        NodeBuilder::new("device")
                            .attr("id", dev.to_string())
                            .attr("key-index", dev.to_string())
                            .build(),
                    );
                }
                let mut devices = vec![
                    NodeBuilder::new("device-list")
                        .attr("hash", hash)
                        .children(list)
                        .build(),
                ];
                devices.extend(key_index_list(account));
                children.push(NodeBuilder::new("devices").children(devices).build());
                self.inner
                    .counters
                    .device_lists_sent
                    .fetch_add(1, Ordering::Relaxed);
            }
            users.push(
                NodeBuilder::new("user")
                    .attr("jid", jid.to_non_ad())
                    .children(children)
                    .build(),
            );
        }
        let mut out = NodeBuilder::new("usync");
        for key in ["sid", "mode", "context", "index", "last"] {
            if let Some(v) = usync.attr(key) {
                out = out.attr(key, v);
            }
        }
        Ok(iq_result(id)
            .children([out
                .children([NodeBuilder::new("list").children(users).build()])
                .build()])
            .build())
    }

    /// A client sent a message: ack it, drop it if it is a duplicate, and
    /// hand each per-device ciphertext to its device.
    pub(super) async fn handle_message(&self, conn: u64, node: Node) -> anyhow::Result<()> {
        let Some((sender, sender_device)) = self.conn_device(conn) else {
            return Ok(());
        };
        let id = node
            .attr("id")
            .ok_or_else(|| anyhow!("message without id"))?;
        let to_attr = node.attr("to").unwrap_or_default();
        let to: Jid = to_attr
            .parse()
            .map_err(|_| anyhow!("message to an unparsable jid {to_attr}"))?;
        let ack = message_ack(&id, &to, None);

        if to.server == Server::Group {
            return self
                .handle_group_message(conn, (&sender, sender_device), &id, &to, &node, ack)
                .await;
        }
        let Some(recipient) = self.resolve(&to) else {
            // Broadcasts and newsletters are not modelled: acked and dropped.
            self.count_unmodelled(format!("message:{}", to.server));
            self.send_to_conn(conn, ack);
            return Ok(());
        };
        let duplicate = !self.first_sight(&sender, &id);
        // A number that blocked the sender never gets its messages; the sender is acked all
        // the same and learns nothing (its message just stays at one tick).
        if recipient != sender && self.is_blocked(&recipient, &sender) {
            self.send_to_conn(conn, ack);
            return Ok(());
        }
        // A recipient that takes first messages only from trusted contacts refuses one
        // without its token: WhatsApp nacks it with 463 and delivers nothing.
        if recipient != sender
            && !duplicate
            && !self.token_accepted(
                &recipient,
                &sender,
                node.child("tctoken").and_then(|t| t.bytes()),
            )
        {
            let refused = message_ack(&id, &to, Some("463"));
            self.inner
                .counters
                .token_refusals
                .fetch_add(1, Ordering::Relaxed);
            // Refused means not seen: the same id may be sent again with a token.
            self.forget_sight(&sender, &id);
            self.send_to_conn(conn, refused);
            return Ok(());
        }
        if duplicate {
            self.ack_duplicate(conn, ack);
            return Ok(());
        }
        self.send_to_conn(conn, ack);

        let mut targets: Vec<(Jid, Node)> = Vec::new();
        if let Some(participants) = node.child("participants") {
            for p in participants.kids().iter().filter(|p| p.tag == "to") {
                if let (Some(jid), Some(enc)) = (
                    p.attr("jid").and_then(|j| j.parse::<Jid>().ok()),
                    p.child("enc"),
                ) {
                    targets.push((jid, enc.clone()));
                }
            }
        }
        if let Some(enc) = node.child("enc") {
            targets.push((to.clone(), enc.clone()));
        }
        let (extras, kind, push_name) = self.relay_parts(&sender, &node);

        for (target, enc) in targets {
            let Some(target_phone) = self.resolve(&target) else {
                continue;
            };
            if target_phone == sender && target.device == sender_device {
                continue;
            }
            if target.device == 0 {
                self.phone_receives(&target_phone, &sender, sender_device, &id, &enc)
                    .await;
            } else {
                let mut stanza = NodeBuilder::new("message")
                    .attr("from", device_jid(&sender, sender_device))
                    .attr("id", id.clone())
                    .attr("type", kind.clone())
                    .attr("t", now_secs().to_string());
                if target_phone == sender {
                    stanza = stanza.attr("recipient", Jid::pn(recipient.as_str()));
                } else if !push_name.is_empty() {
                    stanza = stanza.attr("notify", push_name.clone());
                }
                let mut children = vec![enc];
                children.extend(extras.iter().cloned());
                self.deliver_to_device(
                    &target_phone,
                    target.device,
                    stanza.children(children).build(),
                );
            }
        }
        Ok(())
    }

    /// Whether the network sees this (sender, id) for the first time; remembers it. A re-send
    /// answering a retry receipt passes, once.
    pub(super) fn first_sight(&self, sender: &str, id: &str) -> bool {
        let mut st = self.state();
        let key = (sender.to_string(), id.to_string());
        if st.retry_allowed.remove(&key) {
            return true;
        }
        if st.seen.contains(&key) {
            return false;
        }
        st.seen.insert(key.clone());
        st.seen_order.push_back(key);
        if st.seen_order.len() > DEDUP_WINDOW
            && let Some(old) = st.seen_order.pop_front()
        {
            st.seen.remove(&old);
        }
        true
    }

    /// What every relayed copy of a message carries besides its `<enc>`: the other children
    /// (`device-identity`, `reporting`, …), its type, and the sender's push name (WhatsApp
    /// stamps relayed messages with it).
    pub(super) fn relay_parts(&self, sender: &str, node: &Node) -> (Vec<Node>, String, String) {
        let extras: Vec<Node> = node
            .kids()
            .iter()
            .filter(|c| c.tag != "participants" && c.tag != "enc")
            .cloned()
            .collect();
        let kind = node.attr("type").unwrap_or_else(|| "text".into());
        let push_name = self
            .state()
            .accounts
            .get(sender)
            .map(|a| a.name.clone())
            .unwrap_or_default();
        (extras, kind, push_name)
    }

    /// Forgets a (sender, id) the network refused, so it may come again.
    pub(super) fn forget_sight(&self, sender: &str, id: &str) {
        let key = (sender.to_string(), id.to_string());
        let mut st = self.state();
        st.seen.remove(&key);
        st.seen_order.retain(|k| *k != key);
    }

    /// A simulated phone decrypts what a linked device sent it, files it, and
    /// answers with receipts as its owner would.
    pub(super) async fn phone_receives(
        &self,
        phone: &str,
        sender: &str,
        sender_device: u16,
        id: &str,
        enc: &Node,
    ) {
        let (signal, behaviour) = {
            let st = self.state();
            let Some(a) = st.accounts.get(phone) else {
                return;
            };
            (a.phone.clone(), a.behaviour.clone())
        };
        let kind = enc.attr("type").unwrap_or_default();
        let Some(ciphertext) = enc.bytes() else {
            return;
        };
        let decrypted = signal
            .lock()
            .await
            .decrypt(sender, sender_device, &kind, ciphertext)
            .await;
        let message = match decrypted {
            Ok(m) => m,
            Err(e) => {
                tracing::info!(error = %e, phone, sender, "sim: a phone could not decrypt a message; it asks again");
                if let Err(e) = self.ask_again(phone, sender, sender_device, id, enc).await {
                    tracing::warn!(error = %e, phone, sender, "sim: a retry receipt failed");
                }
                return;
            }
        };
        if phone == sender {
            // A copy for the account's own phone (sent from a linked device)
            // or a peer protocol message: nothing for a contact to see.
            return;
        }
        let mut received = describe(phone, sender, sender_device, id, &message);
        if let Some(media) = super::media::media_ref(&message) {
            // A phone fetches what it was sent; the outcome is part of what it saw.
            let fetched = match self.fetch_as_phone(&media) {
                Ok(f) => serde_json::json!({ "sha256": f.sha256, "size": f.size }),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            };
            if let Some(serde_json::Value::Object(m)) = received.media.as_mut() {
                m.insert("downloaded".into(), fetched);
            }
        }
        self.phone_files(received, behaviour);
    }

    /// A phone keeps what it read in its inbox, tells whoever waits on it, and answers with
    /// receipts as its owner's behaviour says (from the group, for a group message).
    pub(super) fn phone_files(&self, received: ReceivedMessage, behaviour: ContactBehaviour) {
        let (phone, sender, id, group) = (
            received.contact.clone(),
            received.from.clone(),
            received.id.clone(),
            received
                .group
                .as_deref()
                .map(|g| g.trim_end_matches("@g.us").to_string()),
        );
        {
            let mut st = self.state();
            if let Some(a) = st.accounts.get_mut(&phone) {
                a.inbox.push(received.clone());
            }
        }
        self.emit(SimEvent::ContactReceived(received));
        self.schedule_receipts(&phone, &sender, &id, behaviour, group);
    }

    /// A message id seen before: dropped, counted (before the ack goes out, so whoever sees
    /// the ack sees the count), and acked all the same, as WhatsApp does.
    pub(super) fn ack_duplicate(&self, conn: u64, ack: Node) {
        self.inner
            .counters
            .duplicates_dropped
            .fetch_add(1, Ordering::Relaxed);
        self.send_to_conn(conn, ack);
    }

    /// A phone that cannot decrypt a message asks its sender for it again, as WhatsApp's
    /// apps do: a `retry` receipt with its registration id and a fresh key bundle, once per
    /// message. The network then lets the re-sent message (same id) through its duplicate
    /// filter, once.
    async fn ask_again(
        &self,
        phone: &str,
        sender: &str,
        sender_device: u16,
        id: &str,
        enc: &Node,
    ) -> anyhow::Result<()> {
        let count: u32 = enc.attr("count").and_then(|c| c.parse().ok()).unwrap_or(0) + 1;
        if count > 1 {
            // Asked once already: WhatsApp's apps give up on a message that fails again.
            return Ok(());
        }
        let signal = {
            let st = self.state();
            st.accounts
                .get(phone)
                .map(|a| a.phone.clone())
                .ok_or_else(|| anyhow!("no such phone"))?
        };
        let bundle = {
            let mut signal = signal.lock().await;
            // Whatever session it had with the sender's device is of no use now.
            signal.forget(sender, sender_device);
            signal.mint_bundle()?
        };
        let mut keys = vec![
            NodeBuilder::new("type").bytes(vec![5]).build(),
            NodeBuilder::new("identity")
                .bytes(bundle.identity.to_vec())
                .build(),
        ];
        if let Some((key_id, key)) = &bundle.one_time {
            keys.push(prekey_node(*key_id, key));
        }
        keys.push(signed_prekey_node(
            bundle.signed_pre_key_id,
            &bundle.signed_pre_key,
            &bundle.signed_pre_key_signature,
        ));
        {
            let mut st = self.state();
            st.retry_allowed
                .insert((sender.to_string(), id.to_string()));
        }
        self.inner
            .counters
            .retry_receipts
            .fetch_add(1, Ordering::Relaxed);
        let receipt = NodeBuilder::new("receipt")
            .attr("from", self.address_of(phone))
            .attr("id", id.to_string())
            .attr("type", "retry")
            .attr("t", now_secs().to_string())
            .children([
                NodeBuilder::new("retry")
                    .attr("v", "1")
                    .attr("id", id.to_string())
                    .attr("t", now_secs().to_string())
                    .attr("count", count.to_string())
                    .build(),
                NodeBuilder::new("registration")
                    .bytes(bundle.registration_id.to_be_bytes().to_vec())
                    .build(),
                NodeBuilder::new("keys").children(keys).build(),
            ])
            .build();
        self.deliver_to_device(sender, sender_device, receipt);
        Ok(())
    }

    /// The phone's owner sees a message (in a group, when `group` is set) and the sender
    /// gets delivered and read receipts as its behaviour says.
    pub(super) fn schedule_receipts(
        &self,
        phone: &str,
        sender: &str,
        id: &str,
        b: ContactBehaviour,
        group: Option<String>,
    ) {
        let Some(deliver_ms) = b.deliver_after_ms else {
            return;
        };
        let sim = self.clone();
        let (phone, sender, id) = (phone.to_string(), sender.to_string(), id.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(deliver_ms)).await;
            sim.receipt_to_devices(&sender, &phone, &id, None, group.as_deref());
            if let Some(read_ms) = b.read_after_ms {
                tokio::time::sleep(Duration::from_millis(read_ms)).await;
                sim.receipt_to_devices(&sender, &phone, &id, Some("read"), group.as_deref());
            }
        });
    }

    /// Sends a receipt from `from`'s phone to every linked device of `to`; one for a group
    /// message comes from the group, naming the participant who read it.
    pub(super) fn receipt_to_devices(
        &self,
        to: &str,
        from: &str,
        id: &str,
        kind: Option<&str>,
        group: Option<&str>,
    ) {
        let devices = self.linked_devices(to);
        for device in devices {
            let mut r = match group {
                Some(gid) => NodeBuilder::new("receipt")
                    .attr("from", Jid::group(gid))
                    .attr("participant", Jid::pn(from)),
                None => NodeBuilder::new("receipt").attr("from", self.address_of(from)),
            }
            .attr("id", id.to_string())
            .attr("t", now_secs().to_string());
            if let Some(k) = kind {
                r = r.attr("type", k.to_string());
            }
            self.deliver_to_device(to, device, r.build());
        }
    }

    pub(super) fn handle_receipt(&self, conn: u64, node: Node) {
        let Some((sender, sender_device)) = self.conn_device(conn) else {
            return;
        };
        let id = node.attr("id").unwrap_or_default();
        let kind = node.attr("type");
        let to_attr = node.attr("to").unwrap_or_default();
        let mut ack = NodeBuilder::new("ack")
            .attr("class", "receipt")
            .attr("id", id.clone())
            .attr("from", to_attr.clone());
        if let Some(k) = &kind {
            ack = ack.attr("type", k.clone());
        }
        self.send_to_conn(conn, ack.build());
        // A device's receipt for a stanza it was pushed drains it from its queue, as on
        // WhatsApp: a peer message (the app-state key share) is answered with a `peer_msg`
        // receipt and never with an ack, and was replayed on every login. A retry receipt
        // asks for the message again, so it drains nothing.
        let mut ids = vec![id.clone()];
        if let Some(list) = node.child("list") {
            ids.extend(list.kids().iter().filter_map(|i| i.attr("id")));
        }
        if kind.as_deref() != Some("retry") {
            self.drain_unacked(&sender, sender_device, &ids);
        }

        // A receipt for a group message goes to the group and names its sender.
        let to_jid = to_attr.parse::<Jid>().ok();
        let group = to_jid
            .as_ref()
            .filter(|j| j.server == Server::Group)
            .map(|j| j.user.to_string());
        let addressee = match &group {
            Some(_) => node.attr("participant").and_then(|p| p.parse::<Jid>().ok()),
            None => to_jid,
        };
        let Some(to) = addressee.and_then(|j| self.resolve(&j)) else {
            return;
        };
        if kind.as_deref() == Some("retry") && to != sender {
            // A device could not decrypt what a phone sent it: the phone sends it again.
            tracing::info!(
                phone = to,
                device = sender_device,
                id,
                "sim: a device asks a phone again"
            );
            let sim = self.clone();
            let (phone, device_phone) = (to.clone(), sender.clone());
            tokio::spawn(async move {
                if let Err(e) = sim
                    .resend_to_device(&phone, &device_phone, sender_device, &id)
                    .await
                {
                    tracing::warn!(error = %e, "sim: answering a retry receipt");
                }
            });
            return;
        }
        let status = match kind.as_deref() {
            // `inactive` is how a linked device that is not in the foreground
            // acknowledges delivery.
            None | Some("") | Some("delivery") | Some("inactive") => "delivered",
            Some("read") | Some("read-self") => "read",
            // Retry, sender, peer and history receipts stay between devices
            // of one account and are not modelled.
            _ => return,
        };
        if to == sender {
            return;
        }
        let phone_sent = {
            let mut st = self.state();
            match st.accounts.get_mut(&to) {
                Some(a) => {
                    let mut seen = Vec::new();
                    for i in &ids {
                        if a.sent_by_phone.contains(i) {
                            let r = ReceiptSeen {
                                contact: to.clone(),
                                id: i.clone(),
                                status: status.to_string(),
                                from: sender.clone(),
                            };
                            a.receipts.push(r.clone());
                            seen.push(r);
                        }
                    }
                    seen
                }
                None => Vec::new(),
            }
        };
        for r in phone_sent {
            self.emit(SimEvent::ContactReceipt(r));
        }
        // Other linked devices of the original sender learn about it too.
        for device in self.linked_devices(&to) {
            let mut r = match &group {
                Some(gid) => NodeBuilder::new("receipt")
                    .attr("from", Jid::group(gid))
                    .attr("participant", device_jid(&sender, sender_device)),
                None => {
                    NodeBuilder::new("receipt").attr("from", device_jid(&sender, sender_device))
                }
            }
            .attr("id", id.clone())
            .attr("t", now_secs().to_string());
            if status == "read" {
                r = r.attr("type", "read");
            }
            let children: Vec<Node> = node.child("list").into_iter().cloned().collect();
            self.deliver_to_device(&to, device, r.children(children).build());
        }
    }
}

/// The account's signed list of companion key indexes (`None` with no companions): a
/// client skips a user's companions without it.
fn key_index_list(account: &Account) -> Option<Node> {
    let companions: Vec<u16> = account.devices.keys().copied().collect();
    if companions.is_empty() {
        return None;
    }
    let index = wa::ADVKeyIndexList {
        raw_id: Some(account.raw_id),
        timestamp: Some(now_secs()),
        current_index: companions.iter().copied().max().map(u32::from),
        valid_indexes: companions.iter().copied().map(u32::from).collect(),
        account_type: Some(wa::ADVEncryptionType::E2EE),
    };
    let signed = wa::ADVSignedKeyIndexList {
        details: Some(index.encode_to_vec()),
        ..Default::default()
    };
    Some(
        NodeBuilder::new("key-index-list")
            .attr("ts", now_secs().to_string())
            .bytes(signed.encode_to_vec())
            .build(),
    )
}

impl Simulator {
    /// An account linked (`added`) or lost a device: every account that asked for its
    /// device list is told with a `devices` notification, so its next message reaches the
    /// new device (or stops encrypting for the gone one) without waiting for a refresh.
    pub(super) fn tell_device_change(&self, phone: &str, device: u16, added: bool) {
        let (watchers, key_index, lid) = {
            let st = self.state();
            let Some(account) = st.accounts.get(phone) else {
                return;
            };
            let watchers: Vec<String> = st
                .device_watchers
                .get(phone)
                .map(|w| w.iter().cloned().collect())
                .unwrap_or_default();
            (watchers, key_index_list(account), account.lid.clone())
        };
        let mut change = vec![
            NodeBuilder::new("device")
                .attr("jid", device_jid(phone, device))
                .attr("key-index", device.to_string())
                .build(),
        ];
        change.extend(key_index.or_else(|| {
            Some(
                NodeBuilder::new("key-index-list")
                    .attr("ts", now_secs().to_string())
                    .build(),
            )
        }));
        let action = NodeBuilder::new(if added { "add" } else { "remove" })
            .children(change)
            .build();
        for watcher in watchers {
            for d in self.linked_devices(&watcher) {
                let notice = NodeBuilder::new("notification")
                    .attr("from", Jid::pn(phone))
                    .attr("lid", Jid::lid(lid.as_str()))
                    .attr("id", new_message_id())
                    .attr("type", "devices")
                    .attr("t", now_secs().to_string())
                    .children([action.clone()])
                    .build();
                self.deliver_to_device(&watcher, d, notice);
            }
        }
    }
}

fn bundle_to_node(jid: Jid, b: &PublicBundle, device_identity: Option<Vec<u8>>) -> Node {
    let mut children = vec![
        NodeBuilder::new("registration")
            .bytes(b.registration_id.to_be_bytes().to_vec())
            .build(),
        NodeBuilder::new("type").bytes(vec![5]).build(),
        NodeBuilder::new("identity")
            .bytes(b.identity.to_vec())
            .build(),
        signed_prekey_node(
            b.signed_pre_key_id,
            &b.signed_pre_key,
            &b.signed_pre_key_signature,
        ),
    ];
    if let Some((id, key)) = &b.one_time {
        children.push(prekey_node(*id, key));
    }
    if let Some(di) = device_identity {
        children.push(NodeBuilder::new("device-identity").bytes(di).build());
    }
    NodeBuilder::new("user")
        .attr("jid", jid)
        .children(children)
        .build()
}

/// A key id as WhatsApp's key nodes carry it: three bytes, big-endian.
fn key_id_bytes(id: u32) -> Vec<u8> {
    id.to_be_bytes()[1..].to_vec()
}

/// `<skey><id/><value/><signature/></skey>`, as bundles, digests and retry receipts carry it.
fn signed_prekey_node(id: u32, value: &[u8; 32], signature: &[u8]) -> Node {
    NodeBuilder::new("skey")
        .children([
            NodeBuilder::new("id").bytes(key_id_bytes(id)).build(),
            NodeBuilder::new("value").bytes(value.to_vec()).build(),
            NodeBuilder::new("signature")
                .bytes(signature.to_vec())
                .build(),
        ])
        .build()
}

/// `<key><id/><value/></key>`: a one-time prekey.
fn prekey_node(id: u32, value: &[u8; 32]) -> Node {
    NodeBuilder::new("key")
        .children([
            NodeBuilder::new("id").bytes(key_id_bytes(id)).build(),
            NodeBuilder::new("value").bytes(value.to_vec()).build(),
        ])
        .build()
}

pub(super) fn be_uint(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
}

pub(super) fn key32(bytes: Option<&[u8]>, what: &str) -> anyhow::Result<[u8; 32]> {
    let b = bytes.ok_or_else(|| anyhow!("{what} missing"))?;
    // Some encoders send the 33-byte form with the 0x05 type prefix.
    let b = if b.len() == 33 { &b[1..] } else { b };
    b.try_into().map_err(|_| anyhow!("{what} is not 32 bytes"))
}

fn parse_key(k: &Node) -> anyhow::Result<(u32, [u8; 32])> {
    let id = be_uint(k.child("id").and_then(|i| i.bytes()).unwrap_or_default());
    Ok((
        id,
        key32(k.child("value").and_then(|v| v.bytes()), "prekey")?,
    ))
}

fn parse_skey(k: &Node) -> anyhow::Result<(u32, [u8; 32], Vec<u8>)> {
    let id = be_uint(k.child("id").and_then(|i| i.bytes()).unwrap_or_default());
    let value = key32(k.child("value").and_then(|v| v.bytes()), "signed prekey")?;
    let sig = k
        .child("signature")
        .and_then(|s| s.bytes())
        .ok_or_else(|| anyhow!("signed prekey without signature"))?
        .to_vec();
    Ok((id, value, sig))
}

/// An account's device-list hash as usync carries it (`2:` and a digest of the list): it
/// changes whenever a device is linked or removed.
fn device_list_hash(account: &Account) -> String {
    use sha2_11::Digest as _;
    let mut digest = sha2_11::Sha256::new();
    digest.update(account.raw_id.to_be_bytes());
    for device in account.devices.keys() {
        digest.update(device.to_be_bytes());
    }
    let digest = digest.finalize();
    format!("2:{}", BASE64_STANDARD.encode(&digest[..6]))
}
