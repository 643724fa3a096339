//! The simulated WhatsApp network: accounts (phone numbers), their phones and
//! linked devices, routing of stanzas between them, the offline queue, and
//! the control surface tests and the sandbox drive.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

mod contacts;
mod groups;
mod media;
mod pairing;
mod persist;
mod phone;
mod presence;
mod stanzas;

pub use contacts::{ContactProfile, ProfileUpdate, Visibility};
pub use groups::{GroupRole, GroupView};
pub use media::{MEDIA_HOST, MediaFetched, MediaFile, SimHttpClient};
use persist::StateGuard;
pub(crate) use persist::{B64, b64};
pub use presence::{COMPOSING_EXPIRES_AFTER, ChatStateSeen};

pub(crate) use pairing::registration_from_payload;
use phone::describe;
use stanzas::{be_uint, key32};

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
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
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
    /// The group (`<id>@g.us`) it was sent to, for a group message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// A receipt a simulated phone got back for something it sent.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
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
    Connected {
        phone: String,
        device: u16,
    },
    Disconnected {
        phone: String,
        device: u16,
    },
    Paired {
        phone: String,
        device: u16,
    },
    LoggedOut {
        phone: String,
        device: u16,
    },
    ContactReceived(ReceivedMessage),
    ContactReceipt(ReceiptSeen),
    /// A simulated phone saw a linked device type (or stop typing) in its chat.
    ContactChatState(ChatStateSeen),
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
    device_lists_unchanged: AtomicU64,
    device_list_hashes_held: AtomicU64,
    device_lists_sent: AtomicU64,
    retry_receipts: AtomicU64,
    retries_answered: AtomicU64,
    token_refusals: AtomicU64,
    /// Requests the simulator does not model, answered with WhatsApp's own
    /// `501 feature-not-implemented`, by kind (`iq:<xmlns>`, `stanza:<tag>`).
    unmodelled: Mutex<BTreeMap<String, u64>>,
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
    /// Users a usync left out because the client already held their device list.
    pub device_lists_unchanged: u64,
    /// Users a client asked about with the hash of the device list it holds.
    pub device_list_hashes_held: u64,
    /// Device lists a usync answered in full.
    pub device_lists_sent: u64,
    /// Retry receipts simulated phones sent for messages they could not decrypt.
    pub retry_receipts: u64,
    /// Messages simulated phones sent again because a linked device asked (retry receipt).
    pub retries_answered: u64,
    /// Messages refused with `463` for want of the recipient's trusted-contact token.
    pub token_refusals: u64,
    pub accounts: u64,
    pub linked_devices: u64,
    /// Requests answered `501 feature-not-implemented` because the simulator does not model
    /// them, in all and by kind: the simulator's known gaps, made visible.
    pub unmodelled_requests: u64,
    pub unmodelled: BTreeMap<String, u64>,
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
    /// The push name the client registered with, if any.
    pub push_name: Option<String>,
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
    /// What others may learn about the account: about text, picture, privacy, addressing,
    /// and the numbers it blocked.
    profile: ContactProfile,
    /// Online now (some device or the phone said `available`), and since when it was last.
    online: bool,
    last_seen: Option<u64>,
    /// Chat states the phone saw from linked devices, oldest first.
    chat_states: Vec<ChatStateSeen>,
}

/// A client asked to link by pairing code (`companion_hello`) and waits for
/// the phone's owner to type the code.
struct CodeRequest {
    conn: u64,
    pairing_ref: Vec<u8>,
    /// The client's ephemeral key, encrypted with a key derived from the code.
    wrapped_companion_ephemeral: Vec<u8>,
    /// Set once the code was entered on the phone.
    entered: Option<EnteredCode>,
}

struct EnteredCode {
    phone_ephemeral: KeyPair,
    companion_ephemeral: [u8; 32],
    waiter: oneshot::Sender<anyhow::Result<Jid>>,
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
    code_requests: HashMap<String, CodeRequest>,
    by_noise: HashMap<[u8; 32], (String, u16)>,
    not_on_whatsapp: HashSet<String>,
    next_lid: u64,
    seen: HashSet<(String, String)>,
    seen_order: VecDeque<(String, String)>,
    faults: Faults,
    /// The media servers' uploads, by direct path, and their total size.
    media: HashMap<String, media::Blob>,
    media_bytes: usize,
    /// Messages a phone asked for again (retry receipt): their re-send is not a duplicate.
    retry_allowed: HashSet<(String, String)>,
    /// What simulated phones sent lately, by (sender, id): (recipient, message, re-sent
    /// already), so a device that cannot decrypt one can have it again, once.
    phone_sent: HashMap<(String, String), (String, wa::Message, bool)>,
    phone_sent_order: VecDeque<(String, String)>,
    /// Phones whose next message reaches devices garbled (fault injection).
    garble_next: HashSet<String>,
    /// Presence subscriptions: watched phone → (subscribing phone → the JID it used).
    presence_watchers: HashMap<String, HashMap<String, Jid>>,
    /// Groups by id (the user part of their `@g.us` JID).
    groups: HashMap<String, groups::Group>,
    /// Whose device lists each account's devices asked for: watched phone → watchers.
    device_watchers: HashMap<String, HashSet<String>>,
}

struct Inner {
    state: Mutex<State>,
    server_static: KeyPair,
    cert_chain: Vec<u8>,
    /// The token `media_conn` hands out and the media servers require.
    media_auth: String,
    events: broadcast::Sender<SimEvent>,
    counters: Counters,
    /// Where the network is saved, when it is (`Simulator::persistent`).
    persistence: Option<persist::Persistence>,
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

/// WhatsApp's error answer to an IQ: `<iq type="error"><error code text/></iq>`.
fn iq_error(id: &str, code: u16, text: &str) -> Node {
    NodeBuilder::new("iq")
        .attr("from", SERVER)
        .attr("id", id.to_string())
        .attr("type", "error")
        .children([NodeBuilder::new("error")
            .attr("code", code.to_string())
            .attr("text", text.to_string())
            .build()])
        .build()
}

/// One Signal ciphertext as a message carries it.
fn enc_node(kind: &str, ciphertext: Vec<u8>) -> Node {
    NodeBuilder::new("enc")
        .attr("v", "2")
        .attr("type", kind.to_string())
        .bytes(ciphertext)
        .build()
}

/// The server's answer to a message stanza: its ack, or with `error` a nack (`403` not in
/// the group, `463` no trusted-contact token, …).
fn message_ack(id: &str, to: &Jid, error: Option<&str>) -> Node {
    let mut ack = NodeBuilder::new("ack")
        .attr("class", "message")
        .attr("id", id.to_string())
        .attr("from", to.clone())
        .attr("t", now_secs().to_string());
    if let Some(code) = error {
        ack = ack.attr("error", code.to_string());
    }
    ack.build()
}

fn iq_result(id: &str) -> NodeBuilder {
    NodeBuilder::new("iq")
        .attr("from", SERVER)
        .attr("id", id.to_string())
        .attr("type", "result")
}

/// The stream error that ends a device's connection for good: `replaced`
/// (another connection took over) or `device_removed` (logged out).
fn conflict_stream_error(kind: &'static str) -> Node {
    NodeBuilder::new("stream:error")
        .children([NodeBuilder::new("conflict").attr("type", kind).build()])
        .build()
}

fn new_message_id() -> String {
    format!("3EB0{:016X}", rand10::random::<u64>())
}

impl Simulator {
    /// A network that lives in memory only.
    pub fn new() -> Self {
        Self::build(None, None)
    }

    fn build(loaded: Option<persist::Loaded>, persistence: Option<persist::Persistence>) -> Self {
        let loaded = loaded.unwrap_or_else(|| persist::Loaded {
            server_static: KeyPair::generate(&mut rand10::rng()),
            media_auth: format!("sim-{:016x}", rand10::random::<u64>()),
            state: State {
                next_lid: 100_000_000_000_000,
                ..State::default()
            },
        });
        let mut static_pub = [0u8; 32];
        static_pub.copy_from_slice(loaded.server_static.public_key.public_key_bytes());
        let (events, _) = broadcast::channel(4096);
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(loaded.state),
                cert_chain: cert_chain_bytes(&static_pub),
                media_auth: loaded.media_auth,
                server_static: loaded.server_static,
                events,
                counters: Counters::default(),
                persistence,
            }),
        }
    }

    fn state(&self) -> StateGuard<'_> {
        // A panic while holding the lock leaves plain maps behind; keep serving.
        let guard = self
            .inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        StateGuard::new(guard, &self.inner)
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

    /// Counts a request the simulator does not model (see [`CountersSnapshot::unmodelled`]).
    fn count_unmodelled(&self, kind: String) {
        tracing::debug!(kind, "sim: unmodelled request");
        *self
            .inner
            .counters
            .unmodelled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
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
        let unmodelled = c
            .unmodelled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
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
            device_lists_unchanged: c.device_lists_unchanged.load(Ordering::Relaxed),
            device_list_hashes_held: c.device_list_hashes_held.load(Ordering::Relaxed),
            device_lists_sent: c.device_lists_sent.load(Ordering::Relaxed),
            retry_receipts: c.retry_receipts.load(Ordering::Relaxed),
            retries_answered: c.retries_answered.load(Ordering::Relaxed),
            token_refusals: c.token_refusals.load(Ordering::Relaxed),
            accounts: st.accounts.len() as u64,
            linked_devices: st.accounts.values().map(|a| a.devices.len() as u64).sum(),
            unmodelled_requests: unmodelled.values().sum(),
            unmodelled,
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
                profile: ContactProfile::default(),
                online: false,
                last_seen: None,
                chat_states: Vec::new(),
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
            account.profile.named = true;
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

    /// Reads one account's state; an unknown or malformed number reads as empty.
    fn read_account<T: Default>(&self, phone: &str, read: impl FnOnce(&Account) -> T) -> T {
        let Ok(phone) = phone_digits(phone) else {
            return T::default();
        };
        self.state()
            .accounts
            .get(&phone)
            .map(read)
            .unwrap_or_default()
    }

    /// What a simulated number's phone has received, oldest first.
    pub fn contact_inbox(&self, phone: &str) -> Vec<ReceivedMessage> {
        self.read_account(phone, |a| a.inbox.clone())
    }

    /// Receipts a simulated number's phone got for what it sent.
    pub fn contact_receipts(&self, phone: &str) -> Vec<ReceiptSeen> {
        self.read_account(phone, |a| a.receipts.clone())
    }

    /// Linked devices of an account.
    pub fn linked_devices(&self, phone: &str) -> Vec<u16> {
        self.read_account(phone, |a| a.devices.keys().copied().collect())
    }

    /// Whether a linked device is connected and done with what a fresh link brings: its
    /// prekeys are uploaded, the phone's app-state key share was sent, and the device took
    /// (acked or receipted) everything the network pushed it. Right after `Connected` a
    /// newly linked client is still busy with that, and may be between connections.
    pub fn device_settled(&self, phone: &str, device: u16) -> bool {
        self.read_account(phone, |a| {
            a.devices.get(&device).is_some_and(|d| {
                d.conn.is_some() && d.key_share_sent && d.offline.is_empty() && d.unacked.is_empty()
            })
        })
    }

    /// The ids of the messages the network still holds for an account's linked devices
    /// (queued, or pushed and not yet acked).
    pub fn pending_message_ids(&self, phone: &str) -> Vec<String> {
        self.read_account(phone, |a| {
            a.devices
                .values()
                .flat_map(|d| {
                    d.unacked
                        .iter()
                        .map(|(_, n)| n)
                        .chain(d.offline.iter())
                        .filter(|n| n.tag == "message")
                        .filter_map(|n| n.attr("id"))
                        .collect::<Vec<_>>()
                })
                .collect()
        })
    }

    /// Stanzas the network still holds for an account's linked devices: queued while
    /// they were away, or pushed and not yet acked or receipted (replayed at next login).
    pub fn pending_stanzas(&self, phone: &str) -> usize {
        self.read_account(phone, |a| {
            a.devices
                .values()
                .map(|d| d.offline.len() + d.unacked.len())
                .sum()
        })
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
            st.code_requests.retain(|_, r| r.conn != conn);
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

    /// A simulated phone loses its Signal sessions with `peer`'s devices (a reinstall, a
    /// corrupted store): the next message from them fails to decrypt, and the phone asks for
    /// it again with a retry receipt.
    pub async fn lose_sessions(&self, phone: &str, peer: &str) -> anyhow::Result<()> {
        let phone = phone_digits(phone)?;
        let peer = phone_digits(peer)?;
        let signal = {
            let st = self.state();
            st.accounts
                .get(&phone)
                .map(|a| a.phone.clone())
                .ok_or_else(|| anyhow!("{phone} is not on the simulator"))?
        };
        let devices = self.linked_devices(&peer);
        let mut signal = signal.lock().await;
        for device in devices {
            signal.forget(&peer, device);
        }
        Ok(())
    }

    /// The next message `phone` sends reaches its recipient's devices garbled (its MAC
    /// fails): each device asks for it again with a retry receipt, and the phone re-sends.
    pub fn garble_next_from(&self, phone: &str) -> anyhow::Result<()> {
        let phone = phone_digits(phone)?;
        self.state().garble_next.insert(phone);
        Ok(())
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
                let _ = conn.tx.send(ConnCmd::Close(Some(conflict_stream_error(
                    "device_removed",
                ))));
            }
            removed
        };
        drop(removed);
        self.tell_device_change(&phone, device, false);
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
