//! Linking devices: registration, QR codes, pairing codes and login.

use super::*;

impl Simulator {
    // ----- registration and pairing ------------------------------------------

    /// A client without credentials connected: remember its keys and send it
    /// pairing refs for its QR code.
    pub(crate) fn begin_registration(&self, conn: u64, registration: Registration) {
        let refs: Vec<String> = (0..REFS_PER_PAIRING)
            .map(|_| {
                let bytes: [u8; 24] = rand10::random();
                format!("2@{}", BASE64_STANDARD.encode(bytes))
            })
            .collect();
        {
            let mut st = self.state();
            for r in &refs {
                st.refs.insert(r.clone(), conn);
            }
            if let Some(c) = st.conns.get_mut(&conn) {
                c.registration = Some(registration);
            }
        }
        let node = NodeBuilder::new("iq")
            .attr("from", SERVER)
            .attr("type", "set")
            .attr("id", format!("pair-{conn}"))
            .attr("xmlns", "md")
            .children([NodeBuilder::new("pair-device")
                .children(
                    refs.into_iter()
                        .map(|r| NodeBuilder::new("ref").bytes(r.into_bytes()).build()),
                )
                .build()])
            .build();
        self.send_to_conn(conn, node);
    }

    /// A simulated phone scans a QR string: the client behind it becomes a
    /// linked device of `phone`. Returns the device's JID once the client
    /// has signed its identity (the connection is then restarted with 515,
    /// as WhatsApp does).
    pub async fn scan_qr(&self, qr: &str, phone: &str) -> anyhow::Result<Jid> {
        let phone = phone_digits(phone)?;
        let (pairing_ref, noise_pub, identity_pub) = wacore::pair::PairUtils::parse_qr_code(qr)?;
        let adv_secret: [u8; 32] = qr
            .split(',')
            .nth(3)
            .and_then(|s| BASE64_STANDARD.decode(s).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| anyhow!("QR code has no valid ADV secret"))?;
        let conn = {
            let st = self.state();
            let conn = *st
                .refs
                .get(&pairing_ref)
                .ok_or_else(|| anyhow!("QR code is expired or unknown"))?;
            let registration = st
                .conns
                .get(&conn)
                .and_then(|c| c.registration.as_ref())
                .ok_or_else(|| anyhow!("the client that showed this QR is gone"))?;
            if registration.noise_pub != noise_pub || registration.identity != identity_pub {
                bail!("QR code keys do not match the connected client");
            }
            conn
        };
        self.link_device(conn, &phone, adv_secret).await
    }

    /// Links the unpaired client on `conn` to `phone`: `pair-success` with
    /// an ADV identity signed by the phone and MACed with the secret the two
    /// share (from the QR code or the pairing-code exchange), then waits for
    /// the client's signature and restarts its stream with 515.
    pub(super) async fn link_device(
        &self,
        conn: u64,
        phone: &str,
        adv_secret: [u8; 32],
    ) -> anyhow::Result<Jid> {
        let phone = phone.to_string();
        let (registration, phone_signal, raw_id, lid, device) = {
            let mut st = self.state();
            let registration = st
                .conns
                .get(&conn)
                .and_then(|c| c.registration.clone())
                .ok_or_else(|| anyhow!("the client to link is gone"))?;
            st.not_on_whatsapp.remove(&phone);
            let account = Self::ensure_account(&mut st, &phone)?;
            let device = account.next_device;
            account.next_device += 1;
            (
                registration,
                account.phone.clone(),
                account.raw_id,
                account.lid.clone(),
                device,
            )
        };

        let identity_pub = registration.identity;
        let device_identity = {
            let signal = phone_signal.lock().await;
            let details = wa::ADVDeviceIdentity {
                raw_id: Some(raw_id),
                timestamp: Some(now_secs()),
                key_index: Some(u32::from(device)),
                account_type: Some(wa::ADVEncryptionType::E2EE),
                device_type: Some(wa::ADVEncryptionType::E2EE),
            }
            .encode_to_vec();
            let mut to_sign = vec![6u8, 0];
            to_sign.extend_from_slice(&details);
            to_sign.extend_from_slice(&identity_pub);
            let signature = signal
                .identity_pair()
                .private_key()
                .calculate_signature(&to_sign, &mut rand10::rng())
                .map_err(|e| anyhow!("account signature: {e}"))?;
            let signed = wa::ADVSignedDeviceIdentity {
                details: Some(details),
                account_signature_key: Some(signal.identity_public().to_vec()),
                account_signature: Some(signature.to_vec()),
                device_signature: None,
            }
            .encode_to_vec();
            let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&adv_secret)
                .map_err(|e| anyhow!("hmac key: {e}"))?;
            mac.update(&signed);
            wa::ADVSignedDeviceIdentityHMAC {
                details: Some(signed),
                hmac: Some(mac.finalize().into_bytes().to_vec()),
                account_type: Some(wa::ADVEncryptionType::E2EE),
            }
            .encode_to_vec()
        };

        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.state();
            let c = st
                .conns
                .get_mut(&conn)
                .ok_or_else(|| anyhow!("the client that showed this QR is gone"))?;
            c.pair_waiter = Some(tx);
        }
        let success = NodeBuilder::new("iq")
            .attr("from", SERVER)
            .attr("type", "set")
            .attr("id", format!("pair-success-{conn}"))
            .attr("xmlns", "md")
            .children([NodeBuilder::new("pair-success")
                .children([
                    NodeBuilder::new("device-identity")
                        .bytes(device_identity)
                        .build(),
                    NodeBuilder::new("device")
                        .attr("jid", device_jid(&phone, device))
                        .attr("lid", Jid::lid_device(lid.as_str(), device))
                        .build(),
                    NodeBuilder::new("platform").attr("name", "smba").build(),
                ])
                .build()])
            .build();
        self.send_to_conn(conn, success);

        let adv_signed = tokio::time::timeout(PAIR_SIGN_TIMEOUT, rx)
            .await
            .map_err(|_| anyhow!("the client did not confirm pairing in time"))?
            .map_err(|_| anyhow!("the client disconnected during pairing"))??;

        {
            let mut st = self.state();
            st.refs.retain(|_, v| *v != conn);
            st.by_noise
                .insert(registration.noise_pub, (phone.clone(), device));
            let account = Self::ensure_account(&mut st, &phone)?;
            // A companion registers with the account's push name; WhatsApp shows that name to
            // contacts unless the account already has one of its own.
            if let Some(name) = registration
                .push_name
                .as_ref()
                .filter(|_| !account.profile.named)
            {
                account.name = name.clone();
                account.profile.named = true;
            }
            account.devices.insert(
                device,
                Device {
                    noise_pub: registration.noise_pub,
                    identity: registration.identity,
                    registration_id: registration.registration_id,
                    signed_pre_key: registration.signed_pre_key.clone(),
                    pre_keys: VecDeque::new(),
                    adv_signed,
                    conn: None,
                    offline: VecDeque::new(),
                    unacked: Vec::new(),
                    key_share_sent: false,
                },
            );
        }
        // The new device is saved before the client is told to log in as it.
        if let Err(e) = self.persist_changes().await {
            tracing::error!(error = %format!("{e:#}"), "sim: saving the new device");
        }
        if let Some(c) = self.state().conns.get(&conn) {
            // The client must log in again as the new device.
            let restart = NodeBuilder::new("stream:error").attr("code", "515").build();
            let _ = c.tx.send(ConnCmd::Close(Some(restart)));
        }
        self.inner.counters.pairings.fetch_add(1, Ordering::Relaxed);
        self.tell_device_change(&phone, device, true);
        self.emit(SimEvent::Paired {
            phone: phone.clone(),
            device,
        });
        Ok(device_jid(&phone, device))
    }

    /// The client answered `pair-success` with its signed identity.
    pub(super) fn complete_pair_sign(&self, conn: u64, node: &Node) {
        let signed = node
            .child("pair-device-sign")
            .and_then(|s| s.child("device-identity"))
            .and_then(|d| d.bytes())
            .map(<[u8]>::to_vec);
        let waiter = self
            .state()
            .conns
            .get_mut(&conn)
            .and_then(|c| c.pair_waiter.take());
        if let Some(w) = waiter {
            let _ = w.send(signed.ok_or_else(|| anyhow!("pair-device-sign without identity")));
        }
    }

    /// A paired device logs in. Returns the `<success>` (or `<failure>`) node.
    #[allow(clippy::result_large_err)] // both arms are a node to send; no error path to slim
    pub(crate) fn login(
        &self,
        conn: u64,
        username: u64,
        device: u16,
        noise_pub: [u8; 32],
    ) -> Result<Node, Node> {
        let phone = username.to_string();
        let mut st = self.state();
        let known = st.by_noise.get(&noise_pub).cloned();
        if known.as_ref() != Some(&(phone.clone(), device)) {
            // Unknown or removed device: WhatsApp answers 401 and the client
            // logs out for good.
            return Err(NodeBuilder::new("failure").attr("reason", "401").build());
        }
        let State {
            accounts, conns, ..
        } = &mut *st;
        let Some(account) = accounts.get_mut(&phone) else {
            return Err(NodeBuilder::new("failure").attr("reason", "401").build());
        };
        let lid = account.lid.clone();
        let Some(d) = account.devices.get_mut(&device) else {
            return Err(NodeBuilder::new("failure").attr("reason", "401").build());
        };
        if let Some(old) = d.conn.replace(conn)
            && old != conn
            && let Some(c) = conns.get_mut(&old)
        {
            // One connection per device, as on WhatsApp: the newer one wins.
            c.device = None;
            let _ =
                c.tx.send(ConnCmd::Close(Some(conflict_stream_error("replaced"))));
            for (_, node) in d.unacked.drain(..).rev() {
                d.offline.push_front(node);
            }
        }
        if let Some(c) = conns.get_mut(&conn) {
            c.device = Some((phone.clone(), device));
        }
        drop(st);
        self.emit(SimEvent::Connected { phone, device });
        Ok(NodeBuilder::new("success")
            .attr("t", now_secs().to_string())
            .attr("props", "1")
            .attr("abprops", "1")
            .attr("location", "sim")
            .attr("lid", Jid::lid_device(lid.as_str(), device))
            .attr("creation", now_secs().to_string())
            .build())
    }

    pub(super) fn conn_device(&self, conn: u64) -> Option<(String, u16)> {
        self.state().conns.get(&conn).and_then(|c| c.device.clone())
    }

    /// Resolves a user JID (phone or LID) to its phone number.
    pub(super) fn resolve(&self, jid: &Jid) -> Option<String> {
        match jid.server {
            Server::Pn => Some(jid.user.to_string()),
            Server::Lid => self.state().lids.get(jid.user.as_str()).cloned(),
            _ => None,
        }
    }

    // ----- pairing by code ----------------------------------------------------

    /// Stage one and two of pairing by code, from the client's side.
    pub(super) fn handle_link_code(&self, conn: u64, id: &str, reg: &Node) -> Node {
        let phone = reg
            .attr("jid")
            .and_then(|j| j.parse::<Jid>().ok())
            .and_then(|j| phone_digits(&j.user).ok());
        let Some(phone) = phone else {
            return iq_error(id, 400, "bad-request");
        };
        match reg.attr("stage").as_deref() {
            Some("companion_hello") => {
                let Some(wrapped) = reg
                    .child("link_code_pairing_wrapped_companion_ephemeral_pub")
                    .and_then(|n| n.bytes())
                    .filter(|b| b.len() == 80)
                else {
                    return iq_error(id, 400, "bad-request");
                };
                let pairing_ref: [u8; 20] = rand10::random();
                let pairing_ref = BASE64_STANDARD.encode(pairing_ref).into_bytes();
                self.state().code_requests.insert(
                    phone,
                    CodeRequest {
                        conn,
                        pairing_ref: pairing_ref.clone(),
                        wrapped_companion_ephemeral: wrapped.to_vec(),
                        entered: None,
                    },
                );
                iq_result(id)
                    .children([NodeBuilder::new("link_code_companion_reg")
                        .children([NodeBuilder::new("link_code_pairing_ref")
                            .bytes(pairing_ref)
                            .build()])
                        .build()])
                    .build()
            }
            Some("companion_finish") => {
                let bundle = reg
                    .child("link_code_pairing_wrapped_key_bundle")
                    .and_then(|n| n.bytes())
                    .map(<[u8]>::to_vec);
                let entered = {
                    let mut st = self.state();
                    match st.code_requests.get_mut(&phone) {
                        Some(r) if r.conn == conn => r.entered.take(),
                        _ => None,
                    }
                };
                let (Some(bundle), Some(entered)) = (bundle, entered) else {
                    return iq_error(id, 400, "bad-request");
                };
                let sim = self.clone();
                // Linking waits for the client's next stanza, which this very
                // connection task delivers: it must not run inline.
                tokio::spawn(async move {
                    let result = sim
                        .finish_code_pairing(conn, &phone, &entered, &bundle)
                        .await;
                    let _ = entered.waiter.send(result);
                });
                iq_result(id).build()
            }
            _ => iq_error(id, 400, "bad-request"),
        }
    }

    pub(super) async fn finish_code_pairing(
        &self,
        conn: u64,
        phone: &str,
        entered: &EnteredCode,
        wrapped_bundle: &[u8],
    ) -> anyhow::Result<Jid> {
        use wacore::libsignal::protocol::PublicKey;
        if wrapped_bundle.len() < 32 + 12 + 16 {
            bail!("key bundle too short");
        }
        let companion_eph = PublicKey::from_djb_public_key_bytes(&entered.companion_ephemeral)
            .map_err(|e| anyhow!("companion ephemeral key: {e}"))?;
        let ephemeral_shared = entered
            .phone_ephemeral
            .private_key
            .calculate_agreement(&companion_eph)
            .map_err(|e| anyhow!("key agreement: {e}"))?;
        let (salt, rest) = wrapped_bundle.split_at(32);
        let (iv, sealed) = rest.split_at(12);
        let mut key = [0u8; 32];
        wacore::crypto::hkdf_sha256_into(
            &ephemeral_shared,
            Some(salt),
            b"link_code_pairing_key_bundle_encryption_key",
            &mut key,
        )
        .map_err(|_| anyhow!("bundle key derivation"))?;
        let iv: [u8; 12] = iv.try_into().map_err(|_| anyhow!("bundle iv"))?;
        let mut bundle = Vec::new();
        wacore::libsignal::crypto::aes_256_gcm_decrypt(&key, &iv, b"", sealed, &mut bundle)
            .map_err(|_| anyhow!("the pairing code does not match the one the client shows"))?;
        if bundle.len() != 96 {
            bail!("key bundle has {} bytes, not 96", bundle.len());
        }
        let signal = {
            let mut st = self.state();
            Self::ensure_account(&mut st, phone)?.phone.clone()
        };
        let identity_shared = {
            let signal = signal.lock().await;
            let companion_identity = PublicKey::from_djb_public_key_bytes(&bundle[..32])
                .map_err(|e| anyhow!("companion identity: {e}"))?;
            signal
                .identity_pair()
                .private_key()
                .calculate_agreement(&companion_identity)
                .map_err(|e| anyhow!("identity agreement: {e}"))?
        };
        let mut combined = Vec::with_capacity(96);
        combined.extend_from_slice(&ephemeral_shared);
        combined.extend_from_slice(&identity_shared);
        combined.extend_from_slice(&bundle[64..96]);
        let mut adv_secret = [0u8; 32];
        wacore::crypto::hkdf_sha256_into(&combined, None, b"adv_secret", &mut adv_secret)
            .map_err(|_| anyhow!("adv secret derivation"))?;
        self.state().code_requests.remove(phone);
        self.link_device(conn, phone, adv_secret).await
    }

    /// The phone's owner types the 8-character code the client shows.
    /// Returns the new device's JID once linked; a wrong code fails.
    pub async fn enter_pair_code(&self, phone: &str, code: &str) -> anyhow::Result<Jid> {
        use wacore::pair_code::PairCodeUtils;
        let phone = phone_digits(phone)?;
        let code = code.trim().replace('-', "").to_uppercase();
        if !PairCodeUtils::validate_code(&code) {
            bail!("not a pairing code: {code:?}");
        }
        let (conn, pairing_ref, wrapped) = {
            let st = self.state();
            let r = st
                .code_requests
                .get(&phone)
                .ok_or_else(|| anyhow!("no device is waiting to link {phone} by code"))?;
            (
                r.conn,
                r.pairing_ref.clone(),
                r.wrapped_companion_ephemeral.clone(),
            )
        };
        let signal = {
            let mut st = self.state();
            Self::ensure_account(&mut st, &phone)?.phone.clone()
        };
        let identity = signal.lock().await.identity_public();
        // PBKDF2 with 2^17 rounds, twice: keep it off the async workers.
        let (companion_ephemeral, phone_ephemeral, wrapped_primary) =
            tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let companion = PairCodeUtils::decrypt_primary_ephemeral_pub(&wrapped, &code)
                    .map_err(|e| anyhow!("unwrapping the client's key: {e}"))?;
                let ours = KeyPair::generate(&mut rand10::rng());
                let mut ours_pub = [0u8; 32];
                ours_pub.copy_from_slice(ours.public_key.public_key_bytes());
                let wrapped = PairCodeUtils::encrypt_ephemeral_pub(&ours_pub, &code);
                Ok((companion, ours, wrapped))
            })
            .await??;
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.state();
            let r = st
                .code_requests
                .get_mut(&phone)
                .filter(|r| r.conn == conn)
                .ok_or_else(|| anyhow!("the device waiting to link {phone} went away"))?;
            r.entered = Some(EnteredCode {
                phone_ephemeral,
                companion_ephemeral,
                waiter: tx,
            });
        }
        let hello = NodeBuilder::new("notification")
            .attr("type", "link_code_companion_reg")
            .attr("from", SERVER)
            .attr("id", new_message_id())
            .attr("t", now_secs().to_string())
            .children([NodeBuilder::new("link_code_companion_reg")
                .attr("stage", "primary_hello")
                .children([
                    NodeBuilder::new("link_code_pairing_wrapped_primary_ephemeral_pub")
                        .bytes(wrapped_primary.to_vec())
                        .build(),
                    NodeBuilder::new("primary_identity_pub")
                        .bytes(identity.to_vec())
                        .build(),
                    NodeBuilder::new("link_code_pairing_ref")
                        .bytes(pairing_ref)
                        .build(),
                ])
                .build()])
            .build();
        self.send_to_conn(conn, hello);
        tokio::time::timeout(PAIR_SIGN_TIMEOUT * 2, rx)
            .await
            .map_err(|_| anyhow!("the client did not finish pairing by code in time"))?
            .map_err(|_| anyhow!("the client disconnected during pairing"))?
    }
}

/// Parses the registration data an unpaired client sends in its payload.
pub(crate) fn registration_from_payload(
    noise_pub: [u8; 32],
    payload: &wa::ClientPayload,
) -> anyhow::Result<Registration> {
    let data = payload
        .device_pairing_data
        .as_option()
        .ok_or_else(|| anyhow!("registration without device pairing data"))?;
    Ok(Registration {
        noise_pub,
        identity: key32(data.e_ident.as_deref(), "identity key")?,
        registration_id: be_uint(data.e_regid.as_deref().unwrap_or_default()),
        signed_pre_key: (
            be_uint(data.e_skey_id.as_deref().unwrap_or_default()),
            key32(data.e_skey_val.as_deref(), "signed prekey")?,
            data.e_skey_sig.clone().unwrap_or_default(),
        ),
        push_name: payload.push_name.clone().filter(|n| !n.trim().is_empty()),
    })
}
