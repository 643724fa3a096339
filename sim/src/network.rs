//! The simulated WhatsApp network: accounts (phone numbers), their phones and
//! linked devices, routing of stanzas between them, the offline queue, and
//! the control surface tests and the sandbox drive.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use hmac13::{KeyInit, Mac};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use wacore::libsignal::protocol::KeyPair;
use wacore_binary::builder::NodeBuilder;
use wacore_binary::{Jid, Node, Server};
use waproto::buffa::{self, Message as _};
use waproto::whatsapp as wa;

use crate::signal::{PublicBundle, SimSignal};
use crate::wire::{NodeExt, cert_chain_bytes};

type HmacSha256 = hmac13::Hmac<sha2_11::Sha256>;

const SERVER: &str = "s.whatsapp.net";
/// How long `scan_qr` waits for the client's `pair-device-sign`.
const PAIR_SIGN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pairing refs handed out per `pair-device` (WhatsApp sends six).
const REFS_PER_PAIRING: usize = 6;
/// Messages the network remembers per sender to drop duplicates by id.
const DEDUP_WINDOW: usize = 100_000;

/// What a simulated contact does with a message it receives.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ContactBehaviour {
    /// Delay before the delivered receipt; `None` never sends one.
    pub deliver_after_ms: Option<u64>,
    /// Delay (after delivery) before the read receipt; `None` never reads.
    pub read_after_ms: Option<u64>,
}

impl Default for ContactBehaviour {
    fn default() -> Self {
        Self {
            deliver_after_ms: Some(0),
            read_after_ms: Some(200),
        }
    }
}

/// A message a simulated phone received and decrypted.
#[derive(Clone, Debug, Serialize)]
pub struct ReceivedMessage {
    /// The simulated number that received it (E.164 digits, no `+`).
    pub contact: String,
    /// The sender's number and device.
    pub from: String,
    pub from_device: u16,
    pub id: String,
    /// `text`, `image`, `video`, `audio`, `document`, `location`, `contact`,
    /// `reaction` or `other`.
    pub kind: String,
    pub text: Option<String>,
    /// Media metadata (mimetype, url, direct_path, file_length, caption…)
    /// when the message carries media; the bytes stay encrypted upstream.
    pub media: Option<serde_json::Value>,
    /// The message this one quotes or reacts to, when any.
    pub reference_id: Option<String>,
    pub received_at_ms: u64,
}

/// A receipt a simulated phone got back for something it sent.
#[derive(Clone, Debug, Serialize)]
pub struct ReceiptSeen {
    pub contact: String,
    pub id: String,
    /// `delivered` or `read`.
    pub status: String,
    pub from: String,
}

/// What happened on the network, for anyone who wants to wait on it.
#[derive(Clone, Debug)]
pub enum SimEvent {
    Connected { phone: String, device: u16 },
    Disconnected { phone: String, device: u16 },
    Paired { phone: String, device: u16 },
    LoggedOut { phone: String, device: u16 },
    ContactReceived(ReceivedMessage),
    ContactReceipt(ReceiptSeen),
}

/// Counters for dashboards and benchmarks.
#[derive(Default)]
struct Counters {
    connections_total: AtomicU64,
    connections_refused: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    messages_routed: AtomicU64,
    duplicates_dropped: AtomicU64,
    pairings: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Clone, Debug, Serialize)]
pub struct CountersSnapshot {
    pub connections_total: u64,
    pub connections_open: u64,
    pub connections_refused: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub messages_routed: u64,
    pub duplicates_dropped: u64,
    pub pairings: u64,
    pub accounts: u64,
    pub linked_devices: u64,
}

/// Commands a connection task takes from the network.
pub(crate) enum ConnCmd {
    Send(Node),
    /// With a stream error: send it and let the client hang up (closing
    /// ourselves after a grace period). Without: cut the connection now.
    Close(Option<Node>),
}

struct Conn {
    tx: mpsc::UnboundedSender<ConnCmd>,
    device: Option<(String, u16)>,
    registration: Option<Registration>,
    pair_waiter: Option<oneshot::Sender<anyhow::Result<Vec<u8>>>>,
}

/// What an unpaired client told us when it registered.
#[derive(Clone)]
pub(crate) struct Registration {
    pub noise_pub: [u8; 32],
    pub identity: [u8; 32],
    pub registration_id: u32,
    pub signed_pre_key: (u32, [u8; 32], Vec<u8>),
}

struct Device {
    noise_pub: [u8; 32],
    identity: [u8; 32],
    registration_id: u32,
    signed_pre_key: (u32, [u8; 32], Vec<u8>),
    pre_keys: VecDeque<(u32, [u8; 32])>,
    /// `ADVSignedDeviceIdentity` with the device's own signature, as peers
    /// fetch it with the bundle.
    adv_signed: Vec<u8>,
    conn: Option<u64>,
    offline: VecDeque<Node>,
    unacked: Vec<(String, Node)>,
    key_share_sent: bool,
}

struct Account {
    lid: String,
    raw_id: u32,
    name: String,
    phone: Arc<tokio::sync::Mutex<SimSignal>>,
    devices: BTreeMap<u16, Device>,
    next_device: u16,
    inbox: Vec<ReceivedMessage>,
    receipts: Vec<ReceiptSeen>,
    /// Ids this account's phone sent, so receipts for them are recorded.
    sent_by_phone: HashSet<String>,
    behaviour: ContactBehaviour,
}

#[derive(Default)]
struct Faults {
    refuse_until: Option<Instant>,
    latency: Duration,
}

#[derive(Default)]
struct State {
    next_conn: u64,
    conns: HashMap<u64, Conn>,
    accounts: HashMap<String, Account>,
    lids: HashMap<String, String>,
    refs: HashMap<String, u64>,
    by_noise: HashMap<[u8; 32], (String, u16)>,
    not_on_whatsapp: HashSet<String>,
    next_lid: u64,
    seen: HashSet<(String, String)>,
    seen_order: VecDeque<(String, String)>,
    faults: Faults,
}

struct Inner {
    state: Mutex<State>,
    server_static: KeyPair,
    cert_chain: Vec<u8>,
    events: broadcast::Sender<SimEvent>,
    counters: Counters,
}

/// A whole simulated WhatsApp network. Cheap to clone; every clone is the
/// same network.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

impl Default for Simulator {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Normalises a phone number to WhatsApp's user part: digits only.
pub fn phone_digits(phone: &str) -> anyhow::Result<String> {
    let digits: String = phone
        .trim()
        .trim_start_matches('+')
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
        .collect();
    if digits.len() < 6 || digits.len() > 15 || !digits.chars().all(|c| c.is_ascii_digit()) {
        bail!("not an E.164 phone number: {phone:?}");
    }
    Ok(digits)
}

fn device_jid(phone: &str, device: u16) -> Jid {
    Jid::pn_device(phone, device)
}

fn iq_result(id: &str) -> NodeBuilder {
    NodeBuilder::new("iq")
        .attr("from", SERVER)
        .attr("id", id.to_string())
        .attr("type", "result")
}

fn new_message_id() -> String {
    format!("3EB0{:016X}", rand10::random::<u64>())
}

impl Simulator {
    pub fn new() -> Self {
        let server_static = KeyPair::generate(&mut rand10::rng());
        let mut static_pub = [0u8; 32];
        static_pub.copy_from_slice(server_static.public_key.public_key_bytes());
        let (events, _) = broadcast::channel(4096);
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    next_lid: 100_000_000_000_000,
                    ..State::default()
                }),
                cert_chain: cert_chain_bytes(&static_pub),
                server_static,
                events,
                counters: Counters::default(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain maps behind; keep serving.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn server_static(&self) -> &KeyPair {
        &self.inner.server_static
    }

    pub(crate) fn cert_chain(&self) -> &[u8] {
        &self.inner.cert_chain
    }

    fn emit(&self, event: SimEvent) {
        let _ = self.inner.events.send(event);
    }

    /// Everything that happens on the network from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SimEvent> {
        self.inner.events.subscribe()
    }

    pub(crate) fn count_frame_in(&self) {
        self.inner
            .counters
            .frames_in
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_frame_out(&self) {
        self.inner
            .counters
            .frames_out
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Latency added before every frame the server sends (fault injection).
    pub fn latency(&self) -> Duration {
        self.state().faults.latency
    }

    pub fn set_latency(&self, latency: Duration) {
        self.state().faults.latency = latency;
    }

    /// Refuses new connections for a while, as an outage would.
    pub fn refuse_connections_for(&self, duration: Duration) {
        self.state().faults.refuse_until = Some(Instant::now() + duration);
    }

    /// Whether a new connection is accepted now (counts refusals).
    pub(crate) fn admit_connection(&self) -> bool {
        let refused = {
            let mut st = self.state();
            match st.faults.refuse_until {
                Some(until) if Instant::now() < until => true,
                Some(_) => {
                    st.faults.refuse_until = None;
                    false
                }
                None => false,
            }
        };
        if refused {
            self.inner
                .counters
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
        }
        !refused
    }

    pub fn counters(&self) -> CountersSnapshot {
        let c = &self.inner.counters;
        let st = self.state();
        CountersSnapshot {
            connections_total: c.connections_total.load(Ordering::Relaxed),
            connections_open: st.conns.len() as u64,
            connections_refused: c.connections_refused.load(Ordering::Relaxed),
            frames_in: c.frames_in.load(Ordering::Relaxed),
            frames_out: c.frames_out.load(Ordering::Relaxed),
            messages_routed: c.messages_routed.load(Ordering::Relaxed),
            duplicates_dropped: c.duplicates_dropped.load(Ordering::Relaxed),
            pairings: c.pairings.load(Ordering::Relaxed),
            accounts: st.accounts.len() as u64,
            linked_devices: st.accounts.values().map(|a| a.devices.len() as u64).sum(),
        }
    }

    /// Open connections of one account's linked devices.
    pub fn connections_of(&self, phone: &str) -> usize {
        let Ok(phone) = phone_digits(phone) else {
            return 0;
        };
        let st = self.state();
        st.conns
            .values()
            .filter(|c| c.device.as_ref().is_some_and(|(p, _)| *p == phone))
            .count()
    }

    // ----- accounts and contacts ---------------------------------------------

    fn ensure_account<'a>(st: &'a mut State, phone: &str) -> anyhow::Result<&'a mut Account> {
        if !st.accounts.contains_key(phone) {
            let lid = st.next_lid.to_string();
            st.next_lid += 1;
            st.lids.insert(lid.clone(), phone.to_string());
            let account = Account {
                lid,
                raw_id: rand10::random::<u32>() & 0x7fff_ffff,
                name: format!("Sim {}", &phone[phone.len().saturating_sub(4)..]),
                phone: Arc::new(tokio::sync::Mutex::new(SimSignal::generate()?)),
                devices: BTreeMap::new(),
                next_device: 1,
                inbox: Vec::new(),
                receipts: Vec::new(),
                sent_by_phone: HashSet::new(),
                behaviour: ContactBehaviour::default(),
            };
            st.accounts.insert(phone.to_string(), account);
        }
        st.accounts
            .get_mut(phone)
            .ok_or_else(|| anyhow!("account vanished"))
    }

    /// Creates (or renames) a simulated contact.
    pub fn add_contact(&self, phone: &str, name: Option<&str>) -> anyhow::Result<String> {
        let phone = phone_digits(phone)?;
        let mut st = self.state();
        st.not_on_whatsapp.remove(&phone);
        let account = Self::ensure_account(&mut st, &phone)?;
        if let Some(name) = name {
            account.name = name.to_string();
        }
        Ok(phone)
    }

    /// Makes a number unknown to WhatsApp: sends to it fail as they would.
    pub fn mark_not_on_whatsapp(&self, phone: &str) -> anyhow::Result<()> {
        let phone = phone_digits(phone)?;
        self.state().not_on_whatsapp.insert(phone);
        Ok(())
    }

    pub fn set_contact_behaviour(
        &self,
        phone: &str,
        behaviour: ContactBehaviour,
    ) -> anyhow::Result<()> {
        let phone = phone_digits(phone)?;
        let mut st = self.state();
        Self::ensure_account(&mut st, &phone)?.behaviour = behaviour;
        Ok(())
    }

    /// What a simulated number's phone has received, oldest first.
    pub fn contact_inbox(&self, phone: &str) -> Vec<ReceivedMessage> {
        let Ok(phone) = phone_digits(phone) else {
            return Vec::new();
        };
        self.state()
            .accounts
            .get(&phone)
            .map(|a| a.inbox.clone())
            .unwrap_or_default()
    }

    /// Receipts a simulated number's phone got for what it sent.
    pub fn contact_receipts(&self, phone: &str) -> Vec<ReceiptSeen> {
        let Ok(phone) = phone_digits(phone) else {
            return Vec::new();
        };
        self.state()
            .accounts
            .get(&phone)
            .map(|a| a.receipts.clone())
            .unwrap_or_default()
    }

    /// Linked devices of an account.
    pub fn linked_devices(&self, phone: &str) -> Vec<u16> {
        let Ok(phone) = phone_digits(phone) else {
            return Vec::new();
        };
        self.state()
            .accounts
            .get(&phone)
            .map(|a| a.devices.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Waits for a simulated contact to receive a message matching `pred`
    /// (including one received before the call).
    pub async fn wait_for_contact_message(
        &self,
        phone: &str,
        timeout: Duration,
        pred: impl Fn(&ReceivedMessage) -> bool,
    ) -> anyhow::Result<ReceivedMessage> {
        let phone = phone_digits(phone)?;
        let mut rx = self.subscribe();
        if let Some(m) = self.contact_inbox(&phone).into_iter().find(|m| pred(m)) {
            return Ok(m);
        }
        tokio::time::timeout(timeout, async {
            loop {
                match rx.recv().await {
                    Ok(SimEvent::ContactReceived(m)) if m.contact == phone && pred(&m) => {
                        return Ok(m);
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Some(m) = self.contact_inbox(&phone).into_iter().find(|m| pred(m)) {
                            return Ok(m);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => bail!("simulator gone"),
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no matching message reached {phone} within {timeout:?}"))?
    }

    // ----- connections -------------------------------------------------------

    pub(crate) fn open_conn(&self, tx: mpsc::UnboundedSender<ConnCmd>) -> u64 {
        self.inner
            .counters
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        let mut st = self.state();
        st.next_conn += 1;
        let id = st.next_conn;
        st.conns.insert(
            id,
            Conn {
                tx,
                device: None,
                registration: None,
                pair_waiter: None,
            },
        );
        id
    }

    pub(crate) fn close_conn(&self, conn: u64) {
        let mut gone = None;
        {
            let mut st = self.state();
            let Some(c) = st.conns.remove(&conn) else {
                return;
            };
            st.refs.retain(|_, v| *v != conn);
            if let Some((phone, dev)) = c.device
                && let Some(d) = st
                    .accounts
                    .get_mut(&phone)
                    .and_then(|a| a.devices.get_mut(&dev))
                && d.conn == Some(conn)
            {
                d.conn = None;
                // Whatever was pushed but never acked goes back to the queue,
                // ahead of anything newer: a message is only gone once acked.
                for (_, node) in d.unacked.drain(..).rev() {
                    d.offline.push_front(node);
                }
                gone = Some((phone, dev));
            }
        }
        if let Some((phone, device)) = gone {
            self.emit(SimEvent::Disconnected { phone, device });
        }
    }

    /// Cuts every connection of an account's linked devices. Returns how many.
    pub fn drop_connections(&self, phone: &str) -> usize {
        let Ok(phone) = phone_digits(phone) else {
            return 0;
        };
        let st = self.state();
        let mut n = 0;
        for c in st.conns.values() {
            if c.device.as_ref().is_some_and(|(p, _)| *p == phone) {
                let _ = c.tx.send(ConnCmd::Close(None));
                n += 1;
            }
        }
        n
    }

    /// Cuts every connection on the network.
    pub fn drop_all_connections(&self) -> usize {
        let st = self.state();
        for c in st.conns.values() {
            let _ = c.tx.send(ConnCmd::Close(None));
        }
        st.conns.len()
    }

    /// The phone removes a linked device, as "Log out" in Linked devices does.
    pub fn logout_device(&self, phone: &str, device: u16) -> anyhow::Result<()> {
        let phone = phone_digits(phone)?;
        let removed = {
            let mut st = self.state();
            let removed = st
                .accounts
                .get_mut(&phone)
                .and_then(|a| a.devices.remove(&device))
                .ok_or_else(|| anyhow!("{phone} has no linked device {device}"))?;
            st.by_noise.remove(&removed.noise_pub);
            if let Some(conn) = removed.conn.and_then(|c| st.conns.get(&c)) {
                let err = NodeBuilder::new("stream:error")
                    .children([NodeBuilder::new("conflict")
                        .attr("type", "device_removed")
                        .build()])
                    .build();
                let _ = conn.tx.send(ConnCmd::Close(Some(err)));
            }
            removed
        };
        drop(removed);
        self.forget_peer_sessions(&phone, device);
        self.emit(SimEvent::LoggedOut { phone, device });
        Ok(())
    }

    /// Every simulated phone forgets its Signal session with a device that is
    /// gone, so a re-linked device with the same id starts fresh.
    fn forget_peer_sessions(&self, phone: &str, device: u16) {
        let phones: Vec<_> = self
            .state()
            .accounts
            .values()
            .map(|a| a.phone.clone())
            .collect();
        let phone = phone.to_string();
        tokio::spawn(async move {
            for p in phones {
                p.lock().await.forget(&phone, device);
            }
        });
    }

    fn send_to_conn(&self, conn: u64, node: Node) {
        if let Some(c) = self.state().conns.get(&conn) {
            let _ = c.tx.send(ConnCmd::Send(node));
        }
    }

    /// Queues a stanza for a linked device: pushed now when it is connected
    /// (and kept until acked), queued for its next login otherwise.
    fn deliver_to_device(&self, phone: &str, device: u16, node: Node) {
        let mut st = self.state();
        let State {
            accounts, conns, ..
        } = &mut *st;
        let Some(d) = accounts
            .get_mut(phone)
            .and_then(|a| a.devices.get_mut(&device))
        else {
            return;
        };
        self.inner
            .counters
            .messages_routed
            .fetch_add(1, Ordering::Relaxed);
        match d.conn.and_then(|c| conns.get(&c)) {
            Some(c) => {
                if node.tag == "message"
                    && let Some(id) = node.attr("id")
                {
                    d.unacked.push((id, node.clone()));
                }
                let _ = c.tx.send(ConnCmd::Send(node));
            }
            None => d.offline.push_back(node),
        }
    }

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

        let (conn, registration, phone_signal, raw_id, lid, device) = {
            let mut st = self.state();
            let conn = *st
                .refs
                .get(&pairing_ref)
                .ok_or_else(|| anyhow!("QR code is expired or unknown"))?;
            let registration = st
                .conns
                .get(&conn)
                .and_then(|c| c.registration.clone())
                .ok_or_else(|| anyhow!("the client that showed this QR is gone"))?;
            if registration.noise_pub != noise_pub || registration.identity != identity_pub {
                bail!("QR code keys do not match the connected client");
            }
            st.not_on_whatsapp.remove(&phone);
            let account = Self::ensure_account(&mut st, &phone)?;
            let device = account.next_device;
            account.next_device += 1;
            (
                conn,
                registration,
                account.phone.clone(),
                account.raw_id,
                account.lid.clone(),
                device,
            )
        };

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
            if let Some(c) = st.conns.get(&conn) {
                // The client must log in again as the new device.
                let restart = NodeBuilder::new("stream:error").attr("code", "515").build();
                let _ = c.tx.send(ConnCmd::Close(Some(restart)));
            }
        }
        self.inner.counters.pairings.fetch_add(1, Ordering::Relaxed);
        self.emit(SimEvent::Paired {
            phone: phone.clone(),
            device,
        });
        Ok(device_jid(&phone, device))
    }

    /// The client answered `pair-success` with its signed identity.
    fn complete_pair_sign(&self, conn: u64, node: &Node) {
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
            let replaced = NodeBuilder::new("stream:error")
                .children([NodeBuilder::new("conflict")
                    .attr("type", "replaced")
                    .build()])
                .build();
            let _ = c.tx.send(ConnCmd::Close(Some(replaced)));
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

    fn conn_device(&self, conn: u64) -> Option<(String, u16)> {
        self.state().conns.get(&conn).and_then(|c| c.device.clone())
    }

    /// Resolves a user JID (phone or LID) to its phone number.
    fn resolve(&self, jid: &Jid) -> Option<String> {
        match jid.server {
            Server::Pn => Some(jid.user.to_string()),
            Server::Lid => self.state().lids.get(jid.user.as_str()).cloned(),
            _ => None,
        }
    }

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
            // Presence, chat states and the like have no effect here.
            _ => Ok(()),
        }
    }

    fn handle_ack(&self, conn: u64, node: &Node) {
        let Some(id) = node.attr("id") else { return };
        let Some((phone, device)) = self.conn_device(conn) else {
            return;
        };
        let mut st = self.state();
        if let Some(d) = st
            .accounts
            .get_mut(&phone)
            .and_then(|a| a.devices.get_mut(&device))
        {
            d.unacked.retain(|(i, _)| *i != id);
        }
    }

    async fn handle_iq(&self, conn: u64, node: Node) -> anyhow::Result<()> {
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
            "usync" => self.handle_usync(&id, &node)?,
            "w:sync:app:state" => Self::app_state_reply(&id, &node),
            "md" => {
                if let Some(remove) = node.child("remove-companion-device") {
                    self.handle_self_logout(conn, remove);
                }
                iq_result(&id).build()
            }
            other => {
                tracing::debug!(
                    xmlns = other,
                    "sim: unmodelled iq answered with an empty result"
                );
                iq_result(&id).build()
            }
        };
        self.send_to_conn(conn, reply);
        Ok(())
    }

    /// The client logged itself out (`remove-companion-device`).
    fn handle_self_logout(&self, conn: u64, _remove: &Node) {
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
            self.forget_peer_sessions(&phone, device);
            self.emit(SimEvent::LoggedOut { phone, device });
        }
    }

    /// Sends what queued up while the device was away, then the end marker.
    fn flush_offline(&self, conn: u64) {
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

    fn app_state_reply(id: &str, node: &Node) -> Node {
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

    async fn handle_encrypt_iq(&self, conn: u64, id: &str, node: &Node) -> anyhow::Result<Node> {
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
        Ok(iq_result(id).build())
    }

    fn store_prekeys(&self, phone: &str, device: u16, node: &Node) -> anyhow::Result<()> {
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
    async fn bundle_node(&self, jid: &Jid) -> anyhow::Result<Option<Node>> {
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

    fn handle_usync(&self, id: &str, node: &Node) -> anyhow::Result<Node> {
        let usync = node
            .child("usync")
            .ok_or_else(|| anyhow!("usync iq without <usync>"))?;
        let query = usync.child("query");
        let wants = |tag: &str| query.is_some_and(|q| q.child(tag).is_some());
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
                children.push(NodeBuilder::new("lid").build());
            }
            if wants("devices") && on_whatsapp {
                let account = Self::ensure_account(&mut st, &phone)?;
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
                let mut devices = vec![NodeBuilder::new("device-list").children(list).build()];
                if !companions.is_empty() {
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
                    devices.push(
                        NodeBuilder::new("key-index-list")
                            .attr("ts", now_secs().to_string())
                            .bytes(signed.encode_to_vec())
                            .build(),
                    );
                }
                children.push(NodeBuilder::new("devices").children(devices).build());
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
                out = out.attr(
                    match key {
                        "sid" => "sid",
                        "mode" => "mode",
                        "context" => "context",
                        "index" => "index",
                        _ => "last",
                    },
                    v,
                );
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
    async fn handle_message(&self, conn: u64, node: Node) -> anyhow::Result<()> {
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
        let ack = NodeBuilder::new("ack")
            .attr("class", "message")
            .attr("id", id.clone())
            .attr("from", to.clone())
            .attr("t", now_secs().to_string())
            .build();

        let Some(recipient) = self.resolve(&to) else {
            // Groups, broadcasts and newsletters are not modelled: acked and dropped.
            self.send_to_conn(conn, ack);
            return Ok(());
        };
        let duplicate = {
            let mut st = self.state();
            let key = (sender.clone(), id.clone());
            if st.seen.contains(&key) {
                true
            } else {
                st.seen.insert(key.clone());
                st.seen_order.push_back(key);
                if st.seen_order.len() > DEDUP_WINDOW
                    && let Some(old) = st.seen_order.pop_front()
                {
                    st.seen.remove(&old);
                }
                false
            }
        };
        self.send_to_conn(conn, ack);
        if duplicate {
            self.inner
                .counters
                .duplicates_dropped
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }

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
        let extras: Vec<Node> = node
            .kids()
            .iter()
            .filter(|c| c.tag != "participants" && c.tag != "enc")
            .cloned()
            .collect();
        let kind = node.attr("type").unwrap_or_else(|| "text".into());

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

    /// A simulated phone decrypts what a linked device sent it, files it, and
    /// answers with receipts as its owner would.
    async fn phone_receives(
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
                tracing::warn!(error = %e, phone, sender, "sim: a phone could not decrypt a message");
                return;
            }
        };
        if phone == sender {
            // A copy for the account's own phone (sent from a linked device)
            // or a peer protocol message: nothing for a contact to see.
            return;
        }
        let received = describe(phone, sender, sender_device, id, &message);
        {
            let mut st = self.state();
            if let Some(a) = st.accounts.get_mut(phone) {
                a.inbox.push(received.clone());
            }
        }
        self.emit(SimEvent::ContactReceived(received));
        self.schedule_receipts(phone, sender, id, behaviour);
    }

    fn schedule_receipts(&self, phone: &str, sender: &str, id: &str, b: ContactBehaviour) {
        let Some(deliver_ms) = b.deliver_after_ms else {
            return;
        };
        let sim = self.clone();
        let (phone, sender, id) = (phone.to_string(), sender.to_string(), id.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(deliver_ms)).await;
            sim.receipt_to_devices(&sender, &phone, &id, None);
            if let Some(read_ms) = b.read_after_ms {
                tokio::time::sleep(Duration::from_millis(read_ms)).await;
                sim.receipt_to_devices(&sender, &phone, &id, Some("read"));
            }
        });
    }

    /// Sends a receipt from `from`'s phone to every linked device of `to`.
    fn receipt_to_devices(&self, to: &str, from: &str, id: &str, kind: Option<&str>) {
        let devices = self.linked_devices(to);
        for device in devices {
            let mut r = NodeBuilder::new("receipt")
                .attr("from", Jid::pn(from))
                .attr("id", id.to_string())
                .attr("t", now_secs().to_string());
            if let Some(k) = kind {
                r = r.attr("type", k.to_string());
            }
            self.deliver_to_device(to, device, r.build());
        }
    }

    fn handle_receipt(&self, conn: u64, node: Node) {
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

        let Some(to) = to_attr.parse::<Jid>().ok().and_then(|j| self.resolve(&j)) else {
            return;
        };
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
        let mut ids = vec![id.clone()];
        if let Some(list) = node.child("list") {
            ids.extend(list.kids().iter().filter_map(|i| i.attr("id")));
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
            let mut r = NodeBuilder::new("receipt")
                .attr("from", device_jid(&sender, sender_device))
                .attr("id", id.clone())
                .attr("t", now_secs().to_string());
            if status == "read" {
                r = r.attr("type", "read");
            }
            let children: Vec<Node> = node.child("list").into_iter().cloned().collect();
            self.deliver_to_device(&to, device, r.children(children).build());
        }
    }

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
        for device in devices {
            let (kind, ct) = {
                let mut signal = signal.lock().await;
                let bundle = if signal.has_session(&to, device) {
                    None
                } else {
                    let mut st = self.state();
                    st.accounts
                        .get_mut(&to)
                        .and_then(|a| a.devices.get_mut(&device))
                        .map(take_device_bundle)
                };
                signal
                    .encrypt(&to, device, bundle.as_ref(), &message)
                    .await
                    .with_context(|| format!("encrypting for {to}:{device}"))?
            };
            let stanza = NodeBuilder::new("message")
                .attr("from", Jid::pn(from.as_str()))
                .attr("id", id.clone())
                .attr("type", "text")
                .attr("t", now_secs().to_string())
                .attr("notify", name.clone())
                .children([NodeBuilder::new("enc")
                    .attr("v", "2")
                    .attr("type", kind)
                    .bytes(ct)
                    .build()])
                .build();
            self.deliver_to_device(&to, device, stanza);
        }
        Ok(id)
    }

    /// After a device's first prekey upload its phone shares the app-state
    /// key, as a real phone does right after linking; the client would
    /// otherwise wait 10 s for it.
    fn maybe_share_app_state_key(&self, phone: &str, device: u16) {
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

    async fn share_key(
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
            .children([NodeBuilder::new("enc")
                .attr("v", "2")
                .attr("type", kind)
                .bytes(ct)
                .build()])
            .build();
        self.deliver_to_device(phone, device, stanza);
        Ok(())
    }
}

fn take_device_bundle(d: &mut Device) -> PublicBundle {
    PublicBundle {
        registration_id: d.registration_id,
        identity: d.identity,
        signed_pre_key_id: d.signed_pre_key.0,
        signed_pre_key: d.signed_pre_key.1,
        signed_pre_key_signature: d.signed_pre_key.2.clone(),
        // One-time prekeys are consumed as WhatsApp does; when they run out
        // the session starts from the signed prekey alone.
        one_time: d.pre_keys.pop_front(),
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
        NodeBuilder::new("skey")
            .children([
                NodeBuilder::new("id")
                    .bytes(b.signed_pre_key_id.to_be_bytes()[1..].to_vec())
                    .build(),
                NodeBuilder::new("value")
                    .bytes(b.signed_pre_key.to_vec())
                    .build(),
                NodeBuilder::new("signature")
                    .bytes(b.signed_pre_key_signature.clone())
                    .build(),
            ])
            .build(),
    ];
    if let Some((id, key)) = &b.one_time {
        children.push(
            NodeBuilder::new("key")
                .children([
                    NodeBuilder::new("id")
                        .bytes(id.to_be_bytes()[1..].to_vec())
                        .build(),
                    NodeBuilder::new("value").bytes(key.to_vec()).build(),
                ])
                .build(),
        );
    }
    if let Some(di) = device_identity {
        children.push(NodeBuilder::new("device-identity").bytes(di).build());
    }
    NodeBuilder::new("user")
        .attr("jid", jid)
        .children(children)
        .build()
}

fn be_uint(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
}

fn key32(bytes: Option<&[u8]>, what: &str) -> anyhow::Result<[u8; 32]> {
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
    })
}

/// What a contact sees of a message: its kind, text and media metadata.
fn describe(
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
    }
}
