//! The simulated phones: sending as a contact, the app-state key share, and
//! what a contact makes of a message it received.

use super::*;

/// Messages each simulated phone remembers for re-sending on a retry receipt.
const PHONE_SENT_KEPT: usize = 10_000;

impl Simulator {
    // ----- simulated phones sending ------------------------------------------

    /// A simulated contact sends a text to an account; every linked device of
    /// that account receives it end-to-end encrypted. Returns the message id.
    pub async fn inject_text(&self, from: &str, to: &str, text: &str) -> anyhow::Result<String> {
        let message = wa::Message {
            conversation: Some(text.to_string()),
            ..Default::default()
        };
        self.inject_message(from, to, message).await
    }

    /// A simulated contact edits a text it sent (WhatsApp's `MESSAGE_EDIT` protocol message).
    pub async fn inject_edit(
        &self,
        from: &str,
        to: &str,
        target_id: &str,
        text: &str,
    ) -> anyhow::Result<String> {
        let message = Self::change_of(to, target_id, Some(text))?;
        self.inject_message(from, to, message).await
    }

    /// A simulated contact deletes a message it sent, for everyone (`REVOKE`).
    pub async fn inject_revoke(
        &self,
        from: &str,
        to: &str,
        target_id: &str,
    ) -> anyhow::Result<String> {
        let message = Self::change_of(to, target_id, None)?;
        self.inject_message(from, to, message).await
    }

    fn change_of(to: &str, target_id: &str, edit: Option<&str>) -> anyhow::Result<wa::Message> {
        use wa::message::protocol_message::Type;
        let to = phone_digits(to)?;
        Ok(wa::Message {
            protocol_message: buffa::MessageField::some(wa::message::ProtocolMessage {
                key: buffa::MessageField::some(wa::MessageKey {
                    remote_jid: Some(Jid::pn(to.as_str()).to_string()),
                    from_me: Some(true),
                    id: Some(target_id.to_string()),
                    participant: None,
                }),
                r#type: Some(if edit.is_some() {
                    Type::MESSAGE_EDIT
                } else {
                    Type::REVOKE
                }),
                edited_message: match edit {
                    Some(text) => buffa::MessageField::some(wa::Message {
                        conversation: Some(text.to_string()),
                        ..Default::default()
                    }),
                    None => buffa::MessageField::none(),
                },
                timestamp_ms: Some(now_ms() as i64),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// A simulated contact sends any message to an account.
    pub async fn inject_message(
        &self,
        from: &str,
        to: &str,
        message: wa::Message,
    ) -> anyhow::Result<String> {
        let from = phone_digits(from)?;
        let to = phone_digits(to)?;
        let id = new_message_id();
        let (signal, name) = {
            let mut st = self.state();
            let sender = Self::ensure_account(&mut st, &from)?;
            sender.sent_by_phone.insert(id.clone());
            let out = (sender.phone.clone(), sender.name.clone());
            if !st.accounts.contains_key(&to) {
                bail!("{to} has no linked device on the simulator");
            }
            out
        };
        let devices = self.linked_devices(&to);
        if devices.is_empty() {
            bail!("{to} has no linked device on the simulator");
        }
        if self.is_blocked(&to, &from) {
            // Sent, and never delivered: the recipient blocked this number.
            return Ok(id);
        }
        // A LID-addressed account writes from its LID, with its number alongside unless it
        // hides it; the recipient's Signal session with it lives under the LID.
        let (lid_addressed, hide_phone) = {
            let st = self.state();
            st.accounts
                .get(&from)
                .map(|a| (a.profile.lid_addressing, a.profile.hide_phone))
                .unwrap_or_default()
        };
        // Writing to a number gives it this phone's trusted-contact token first.
        self.issue_token(&from, &to);
        let from_jid = self.address_of(&from);
        let garble = self.state().garble_next.remove(&from);
        {
            let mut st = self.state();
            let key = (from.clone(), id.clone());
            st.phone_sent
                .insert(key.clone(), (to.clone(), message.clone(), false));
            st.phone_sent_order.push_back(key);
            if st.phone_sent_order.len() > PHONE_SENT_KEPT
                && let Some(old) = st.phone_sent_order.pop_front()
            {
                st.phone_sent.remove(&old);
            }
        }
        for device in devices {
            let (kind, mut ct) = self
                .encrypt_for_device(&signal, &to, device, &message)
                .await?;
            if garble && let Some(last) = ct.last_mut() {
                *last ^= 0xff;
            }
            let mut stanza = NodeBuilder::new("message")
                .attr("from", from_jid.clone())
                .attr("id", id.clone())
                .attr("type", "text")
                .attr("t", now_secs().to_string())
                .attr("notify", name.clone());
            if lid_addressed {
                stanza = stanza.attr("addressing_mode", "lid");
                if !hide_phone {
                    stanza = stanza.attr("sender_pn", Jid::pn(from.as_str()));
                }
            }
            let stanza = stanza.children([enc_node(kind, ct)]).build();
            self.deliver_to_device(&to, device, stanza);
        }
        // Sent means kept: the phone's advanced Signal session and the queued stanzas are
        // saved before the caller hears the message went out.
        self.persist_changes().await?;
        Ok(id)
    }

    /// The account's own phone writes to `to` (the business owner answering by hand): the
    /// contact gets the message, and every linked device of the account gets it as WhatsApp
    /// syncs it, a `DeviceSentMessage` from the account's own number with a `recipient`.
    /// Returns the message id.
    pub async fn inject_from_own_phone(
        &self,
        account: &str,
        to: &str,
        text: &str,
    ) -> anyhow::Result<String> {
        let account = phone_digits(account)?;
        let to = phone_digits(to)?;
        let id = new_message_id();
        let message = wa::Message {
            conversation: Some(text.to_string()),
            ..Default::default()
        };
        let (signal, name) = {
            let mut st = self.state();
            Self::ensure_account(&mut st, &to)?;
            let a = st
                .accounts
                .get(&account)
                .ok_or_else(|| anyhow!("{account} has no linked device on the simulator"))?;
            (a.phone.clone(), a.name.clone())
        };
        // The contact's phone gets it as from any phone (no receipts back: the linked
        // devices did not send it).
        self.phone_files(
            describe(&to, &account, 0, &id, &message),
            ContactBehaviour {
                deliver_after_ms: None,
                read_after_ms: None,
            },
        );
        let synced = wa::Message {
            device_sent_message: buffa::MessageField::some(wa::message::DeviceSentMessage {
                destination_jid: Some(Jid::pn(to.as_str()).to_string()),
                message: buffa::MessageField::some(message),
                ..Default::default()
            }),
            ..Default::default()
        };
        for device in self.linked_devices(&account) {
            let (kind, ct) = self
                .encrypt_for_device(&signal, &account, device, &synced)
                .await?;
            let stanza = NodeBuilder::new("message")
                .attr("from", Jid::pn(account.as_str()))
                .attr("recipient", Jid::pn(to.as_str()))
                .attr("id", id.clone())
                .attr("type", "text")
                .attr("t", now_secs().to_string())
                .attr("notify", name.clone())
                .children([enc_node(kind, ct)])
                .build();
            self.deliver_to_device(&account, device, stanza);
        }
        self.persist_changes().await?;
        Ok(id)
    }

    /// Encrypts what a phone sends for one linked device of `to`, starting a session from
    /// the device's uploaded prekeys (one consumed) when the phone has none with it.
    pub(super) async fn encrypt_for_device(
        &self,
        signal: &tokio::sync::Mutex<SimSignal>,
        to: &str,
        device: u16,
        message: &wa::Message,
    ) -> anyhow::Result<(&'static str, Vec<u8>)> {
        let mut signal = signal.lock().await;
        let bundle = if signal.has_session(to, device) {
            None
        } else {
            let mut st = self.state();
            st.accounts
                .get_mut(to)
                .and_then(|a| a.devices.get_mut(&device))
                .map(take_device_bundle)
        };
        signal
            .encrypt(to, device, bundle.as_ref(), message)
            .await
            .with_context(|| format!("encrypting for {to}:{device}"))
    }

    /// A linked device could not decrypt a message a phone sent it and asked again (a
    /// `retry` receipt): the phone starts a new session with that device, from the keys the
    /// receipt carries (else from the device's uploaded prekeys), and sends the message
    /// again under its id, once.
    pub(super) async fn resend_to_device(
        &self,
        phone: &str,
        device_phone: &str,
        device: u16,
        id: &str,
    ) -> anyhow::Result<()> {
        let (message, signal, name) = {
            let mut st = self.state();
            let Some(entry) = st.phone_sent.get_mut(&(phone.to_string(), id.to_string())) else {
                bail!("{phone} sent no {id} lately");
            };
            if entry.2 || entry.0 != device_phone {
                return Ok(());
            }
            entry.2 = true;
            let message = entry.1.clone();
            let account = st
                .accounts
                .get(phone)
                .ok_or_else(|| anyhow!("no such phone"))?;
            (message, account.phone.clone(), account.name.clone())
        };
        let bundle = {
            let mut st = self.state();
            st.accounts
                .get_mut(device_phone)
                .and_then(|a| a.devices.get_mut(&device))
                .map(take_device_bundle)
                .ok_or_else(|| anyhow!("{device_phone}:{device} is gone"))?
        };
        let (kind, ct) = {
            let mut signal = signal.lock().await;
            signal.forget(device_phone, device);
            signal
                .encrypt(device_phone, device, Some(&bundle), &message)
                .await?
        };
        let stanza = NodeBuilder::new("message")
            .attr("from", self.address_of(phone))
            .attr("id", id.to_string())
            .attr("type", "text")
            .attr("t", now_secs().to_string())
            .attr("notify", name)
            .children([NodeBuilder::new("enc")
                .attr("v", "2")
                .attr("type", kind)
                .attr("count", "1")
                .bytes(ct)
                .build()])
            .build();
        self.inner
            .counters
            .retries_answered
            .fetch_add(1, Ordering::Relaxed);
        self.deliver_to_device(device_phone, device, stanza);
        self.persist_changes().await
    }

    /// After a device's first prekey upload its phone shares the app-state
    /// key, as a real phone does right after linking; the client would
    /// otherwise wait 10 s for it.
    pub(super) fn maybe_share_app_state_key(&self, phone: &str, device: u16) {
        let (signal, bundle) = {
            let mut st = self.state();
            let Some(a) = st.accounts.get_mut(phone) else {
                return;
            };
            let signal = a.phone.clone();
            let Some(d) = a.devices.get_mut(&device) else {
                return;
            };
            if d.key_share_sent {
                return;
            }
            d.key_share_sent = true;
            (signal, take_device_bundle(d))
        };
        let sim = self.clone();
        let phone = phone.to_string();
        tokio::spawn(async move {
            if let Err(e) = sim.share_key(&phone, device, signal, bundle).await {
                tracing::warn!(error = %e, "sim: app-state key share failed");
            }
        });
    }

    pub(super) async fn share_key(
        &self,
        phone: &str,
        device: u16,
        signal: Arc<tokio::sync::Mutex<SimSignal>>,
        bundle: PublicBundle,
    ) -> anyhow::Result<()> {
        let key_id: [u8; 6] = rand10::random();
        let key_data: [u8; 32] = rand10::random();
        let message = wa::Message {
            protocol_message: buffa::MessageField::some(wa::message::ProtocolMessage {
                r#type: Some(wa::message::protocol_message::Type::APP_STATE_SYNC_KEY_SHARE),
                app_state_sync_key_share: buffa::MessageField::some(
                    wa::message::AppStateSyncKeyShare {
                        keys: vec![wa::message::AppStateSyncKey {
                            key_id: buffa::MessageField::some(wa::message::AppStateSyncKeyId {
                                key_id: Some(key_id.to_vec()),
                            }),
                            key_data: buffa::MessageField::some(wa::message::AppStateSyncKeyData {
                                key_data: Some(key_data.to_vec()),
                                fingerprint: buffa::MessageField::some(
                                    wa::message::AppStateSyncKeyFingerprint {
                                        raw_id: Some(1),
                                        current_index: Some(0),
                                        device_indexes: vec![0, u32::from(device)],
                                    },
                                ),
                                timestamp: Some(now_ms() as i64),
                            }),
                        }],
                    },
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (kind, ct) = signal
            .lock()
            .await
            .encrypt(phone, device, Some(&bundle), &message)
            .await?;
        let stanza = NodeBuilder::new("message")
            .attr("from", Jid::pn(phone))
            .attr("id", new_message_id())
            .attr("type", "protocol")
            .attr("category", "peer")
            .attr("t", now_secs().to_string())
            .children([enc_node(kind, ct)])
            .build();
        self.deliver_to_device(phone, device, stanza);
        Ok(())
    }
}

/// What a contact sees of a message: its kind, text and media metadata.
pub(super) fn describe(
    contact: &str,
    from: &str,
    from_device: u16,
    id: &str,
    m: &wa::Message,
) -> ReceivedMessage {
    let mut kind = "other";
    let mut text = None;
    let mut media = None;
    let mut reference_id = None;
    let media_json = |mimetype: &Option<String>,
                      url: &Option<String>,
                      direct_path: &Option<String>,
                      file_length: Option<u64>,
                      caption: Option<&String>,
                      file_name: Option<&String>| {
        serde_json::json!({
            "mimetype": mimetype, "url": url, "direct_path": direct_path,
            "file_length": file_length, "caption": caption, "file_name": file_name,
        })
    };
    if let Some(c) = &m.conversation {
        kind = "text";
        text = Some(c.clone());
    } else if let Some(e) = m.extended_text_message.as_option() {
        kind = "text";
        text = e.text.clone();
        reference_id = e.context_info.as_option().and_then(|c| c.stanza_id.clone());
    } else if let Some(i) = m.image_message.as_option() {
        kind = "image";
        text = i.caption.clone();
        media = Some(media_json(
            &i.mimetype,
            &i.url,
            &i.direct_path,
            i.file_length,
            i.caption.as_ref(),
            None,
        ));
    } else if let Some(v) = m.video_message.as_option() {
        kind = "video";
        text = v.caption.clone();
        media = Some(media_json(
            &v.mimetype,
            &v.url,
            &v.direct_path,
            v.file_length,
            v.caption.as_ref(),
            None,
        ));
    } else if let Some(a) = m.audio_message.as_option() {
        kind = "audio";
        media = Some(media_json(
            &a.mimetype,
            &a.url,
            &a.direct_path,
            a.file_length,
            None,
            None,
        ));
    } else if let Some(d) = m.document_message.as_option() {
        kind = "document";
        text = d.caption.clone();
        media = Some(media_json(
            &d.mimetype,
            &d.url,
            &d.direct_path,
            d.file_length,
            d.caption.as_ref(),
            d.file_name.as_ref(),
        ));
    } else if let Some(l) = m.location_message.as_option() {
        kind = "location";
        text = l.name.clone();
        media = Some(serde_json::json!({
            "latitude": l.degrees_latitude, "longitude": l.degrees_longitude,
            "name": l.name, "address": l.address,
        }));
    } else if let Some(c) = m.contact_message.as_option() {
        kind = "contact";
        text = c.display_name.clone();
        media = Some(serde_json::json!({ "display_name": c.display_name, "vcard": c.vcard }));
    } else if let Some(p) = m.protocol_message.as_option()
        && matches!(
            p.r#type,
            Some(
                wa::message::protocol_message::Type::REVOKE
                    | wa::message::protocol_message::Type::MESSAGE_EDIT
            )
        )
    {
        // An edit or a delete for everyone of an earlier message.
        reference_id = p.key.as_option().and_then(|k| k.id.clone());
        if p.r#type == Some(wa::message::protocol_message::Type::REVOKE) {
            kind = "revoke";
        } else {
            kind = "edit";
            text = p.edited_message.as_option().and_then(|e| {
                e.conversation.clone().or_else(|| {
                    e.extended_text_message
                        .as_option()
                        .and_then(|x| x.text.clone())
                })
            });
        }
    } else if let Some(r) = m.reaction_message.as_option() {
        kind = "reaction";
        text = r.text.clone();
        reference_id = r.key.as_option().and_then(|k| k.id.clone());
    }
    ReceivedMessage {
        contact: contact.to_string(),
        from: from.to_string(),
        from_device,
        id: id.to_string(),
        kind: kind.to_string(),
        text,
        media,
        reference_id,
        received_at_ms: now_ms(),
        group: None,
    }
}
