//! The network on disk. WhatsApp does not log anyone out when its servers restart, and a
//! sandbox that integrators restart all day must not either: a persistent simulator keeps
//! its accounts, linked devices, the phones' Signal sessions, the offline queues, the
//! duplicate filter and the media servers' uploads in a directory, written as they change.
//!
//! Every change to the network's state marks it dirty (see [`StateGuard`]). A connection
//! writes the state out after each stanza it handled and before anything it answered (its
//! acks among them) reaches the client, so what the network acknowledged survives a
//! `kill -9`; changes made elsewhere (receipt timers, the control API) are written by a
//! background task right after.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::io::Write as _;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};

use anyhow::{Context, anyhow};
use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use serde::{Deserialize, Serialize};
use wacore::libsignal::protocol::{KeyPair, PrivateKey, PublicKey};
use wacore_binary::Node;

use super::{
    Account, ContactBehaviour, ContactProfile, Device, Inner, ReceiptSeen, ReceivedMessage, State,
};
use crate::signal::{SavedSignal, SimSignal};

const STATE_FILE: &str = "network.json";
const MEDIA_DIR: &str = "media";
/// The saved state's format; a file of another version is refused, not misread.
const FORMAT: u32 = 1;

/// Bytes as base64 in the saved state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct B64(pub Vec<u8>);

impl Serialize for B64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64_STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        BASE64_STANDARD
            .decode(text)
            .map(B64)
            .map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "b64")]` for `Vec<u8>` fields.
pub mod b64 {
    use super::B64;
    use serde::{Deserialize, Serialize};

    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        B64(bytes.to_vec()).serialize(s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        B64::deserialize(d).map(|b| b.0)
    }
}

fn key32(b: &B64, what: &str) -> anyhow::Result<[u8; 32]> {
    b.0.as_slice()
        .try_into()
        .map_err(|_| anyhow!("{what} is not 32 bytes"))
}

#[derive(Serialize, Deserialize)]
struct SavedNetwork {
    format: u32,
    server_public: B64,
    server_private: B64,
    media_auth: String,
    next_lid: u64,
    lids: HashMap<String, String>,
    not_on_whatsapp: HashSet<String>,
    /// The duplicate filter, oldest first: (sender, message id).
    seen: Vec<(String, String)>,
    accounts: BTreeMap<String, SavedAccount>,
    /// Groups by id (states saved before groups existed have none).
    #[serde(default)]
    groups: BTreeMap<String, super::groups::Group>,
    /// Who is told of whose device-list changes.
    #[serde(default)]
    device_watchers: BTreeMap<String, BTreeSet<String>>,
}

#[derive(Serialize, Deserialize)]
struct SavedAccount {
    lid: String,
    raw_id: u32,
    name: String,
    phone: SavedSignal,
    devices: BTreeMap<u16, SavedDevice>,
    next_device: u16,
    inbox: Vec<ReceivedMessage>,
    receipts: Vec<ReceiptSeen>,
    sent_by_phone: HashSet<String>,
    behaviour: ContactBehaviour,
    #[serde(default)]
    profile: ContactProfile,
}

#[derive(Serialize, Deserialize)]
struct SavedDevice {
    noise_pub: B64,
    identity: B64,
    registration_id: u32,
    signed_pre_key_id: u32,
    signed_pre_key: B64,
    signed_pre_key_signature: B64,
    pre_keys: Vec<(u32, B64)>,
    adv_signed: B64,
    /// Stanzas waiting for the device, in order (pushed but unacked ones first): binary
    /// nodes as on the wire.
    offline: Vec<B64>,
    key_share_sent: bool,
}

/// The lock on the network's state. Taking it to change anything (`DerefMut`) marks the
/// state dirty for the persistence; reading does not.
pub(super) struct StateGuard<'a> {
    guard: MutexGuard<'a, State>,
    inner: &'a Inner,
    dirty: bool,
}

impl<'a> StateGuard<'a> {
    pub(super) fn new(guard: MutexGuard<'a, State>, inner: &'a Inner) -> Self {
        Self {
            guard,
            inner,
            dirty: false,
        }
    }
}

impl Deref for StateGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.dirty = true;
        &mut self.guard
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        if self.dirty
            && let Some(p) = &self.inner.persistence
        {
            p.changed();
        }
    }
}

/// Where and how far the network's state is written.
pub(super) struct Persistence {
    dir: PathBuf,
    /// Bumped by every change.
    version: AtomicU64,
    /// The version last written (`None`: nothing yet); held while writing, so writes
    /// never interleave.
    written: tokio::sync::Mutex<Option<u64>>,
    wake: Arc<tokio::sync::Notify>,
}

impl Persistence {
    pub(super) fn changed(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// Saves an upload of the media servers before it is acknowledged.
    pub(super) fn save_media(&self, token: &str, bytes: &[u8]) -> std::io::Result<()> {
        let file = self.dir.join(MEDIA_DIR).join(token);
        if file.exists() {
            return Ok(());
        }
        write_atomically(&file, bytes)
    }
}

/// What a persistent simulator starts from: the saved network, or nothing yet.
pub(super) struct Loaded {
    pub server_static: KeyPair,
    pub media_auth: String,
    pub state: State,
}

pub(super) fn persistence(dir: &Path) -> Persistence {
    Persistence {
        dir: dir.to_path_buf(),
        version: AtomicU64::new(0),
        written: tokio::sync::Mutex::new(None),
        wake: Arc::new(tokio::sync::Notify::new()),
    }
}

/// Reads the saved network in `dir`, if one was saved.
pub(super) fn load(dir: &Path) -> anyhow::Result<Option<Loaded>> {
    let file = dir.join(STATE_FILE);
    let body = match std::fs::read(&file) {
        Ok(body) => body,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let saved: SavedNetwork = serde_json::from_slice(&body)
        .with_context(|| format!("{} is not a saved simulated network", file.display()))?;
    if saved.format != FORMAT {
        anyhow::bail!(
            "{} is format {} (this build reads {FORMAT})",
            file.display(),
            saved.format
        );
    }
    let server_static = KeyPair::new(
        PublicKey::deserialize(&saved.server_public.0).map_err(|e| anyhow!("server key: {e}"))?,
        PrivateKey::deserialize(&saved.server_private.0).map_err(|e| anyhow!("server key: {e}"))?,
    );
    let mut state = State {
        next_lid: saved.next_lid,
        lids: saved.lids,
        not_on_whatsapp: saved.not_on_whatsapp,
        groups: saved.groups.into_iter().collect(),
        device_watchers: saved
            .device_watchers
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect(),
        ..State::default()
    };
    for key in saved.seen {
        state.seen.insert(key.clone());
        state.seen_order.push_back(key);
    }
    for (phone, a) in saved.accounts {
        let mut devices = BTreeMap::new();
        for (id, d) in a.devices {
            let noise_pub = key32(&d.noise_pub, "a device's noise key")?;
            state.by_noise.insert(noise_pub, (phone.clone(), id));
            let offline = d
                .offline
                .iter()
                .map(|b| node_from_bytes(&b.0))
                .collect::<anyhow::Result<VecDeque<Node>>>()?;
            devices.insert(
                id,
                Device {
                    noise_pub,
                    identity: key32(&d.identity, "a device's identity")?,
                    registration_id: d.registration_id,
                    signed_pre_key: (
                        d.signed_pre_key_id,
                        key32(&d.signed_pre_key, "a signed prekey")?,
                        d.signed_pre_key_signature.0,
                    ),
                    pre_keys: d
                        .pre_keys
                        .iter()
                        .map(|(id, k)| Ok((*id, key32(k, "a prekey")?)))
                        .collect::<anyhow::Result<_>>()?,
                    adv_signed: d.adv_signed.0,
                    conn: None,
                    offline,
                    unacked: Vec::new(),
                    key_share_sent: d.key_share_sent,
                },
            );
        }
        state.accounts.insert(
            phone,
            Account {
                lid: a.lid,
                raw_id: a.raw_id,
                name: a.name,
                phone: Arc::new(tokio::sync::Mutex::new(SimSignal::restore(a.phone)?)),
                devices,
                next_device: a.next_device,
                inbox: a.inbox,
                receipts: a.receipts,
                sent_by_phone: a.sent_by_phone,
                behaviour: a.behaviour,
                profile: a.profile,
                online: false,
                last_seen: None,
                chat_states: Vec::new(),
            },
        );
    }
    // The media servers' uploads: one file each, named by its upload token.
    let media_dir = dir.join(MEDIA_DIR);
    let entries = std::fs::read_dir(&media_dir)
        .with_context(|| format!("reading {}", media_dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let Some(token) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if token.ends_with(".tmp") {
            continue;
        }
        let bytes = std::fs::read(entry.path())
            .with_context(|| format!("reading {}", entry.path().display()))?;
        state.media_bytes += bytes.len();
        state.media.insert(
            super::media::direct_path_for(&token),
            super::media::Blob {
                bytes: bytes::Bytes::from(bytes),
            },
        );
    }
    Ok(Some(Loaded {
        server_static,
        media_auth: saved.media_auth,
        state,
    }))
}

fn node_from_bytes(bytes: &[u8]) -> anyhow::Result<Node> {
    let unpacked = wacore_binary::util::unpack(bytes)?;
    Ok(wacore_binary::marshal::unmarshal_ref(&unpacked)?.to_owned())
}

/// Writes `body` to `file` so that a crash leaves either the old file or the new one.
fn write_atomically(file: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = file.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, file)?;
    if let Some(parent) = file.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

impl super::Simulator {
    /// A simulated network kept in `dir` (created if missing): started from what was saved
    /// there, if anything, and saved there as it changes. Needs a Tokio runtime.
    pub fn persistent(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join(MEDIA_DIR))
            .with_context(|| format!("creating {}", dir.display()))?;
        let loaded = load(dir)?;
        let restored = loaded.is_some();
        let sim = Self::build(loaded, Some(persistence(dir)));
        if restored {
            tracing::info!(dir = %dir.display(), accounts = sim.counters().accounts, "simulated network restored");
        }
        // Everything changed outside a connection's stanzas is written right after.
        if let Some(p) = sim.inner.persistence.as_ref() {
            let wake = p.wake.clone();
            let weak = Arc::downgrade(&sim.inner);
            tokio::spawn(async move {
                loop {
                    wake.notified().await;
                    let Some(inner) = weak.upgrade() else { return };
                    if let Err(e) = (Self { inner }).persist_changes().await {
                        tracing::error!(error = %format!("{e:#}"), "saving the simulated network");
                    }
                }
            });
            if !restored {
                // Saved from the first start on: the server key must not change.
                p.changed();
            }
        }
        Ok(sim)
    }

    /// Writes the state out if it changed since the last write (a no-op for a simulator
    /// that is not persistent). Returns once everything changed before the call is on disk.
    pub async fn persist_changes(&self) -> anyhow::Result<()> {
        let Some(p) = self.inner.persistence.as_ref() else {
            return Ok(());
        };
        let wanted = p.version.load(Ordering::Acquire);
        let mut written = p.written.lock().await;
        if written.is_some_and(|w| w >= wanted) {
            return Ok(());
        }
        let version = p.version.load(Ordering::Acquire);
        let body = self.snapshot().await?;
        let file = p.dir.join(STATE_FILE);
        tokio::task::spawn_blocking(move || {
            write_atomically(&file, &body).with_context(|| format!("writing {}", file.display()))
        })
        .await
        .context("the writer task")??;
        *written = Some(version);
        Ok(())
    }

    /// The state as saved (the media servers' uploads are files of their own).
    async fn snapshot(&self) -> anyhow::Result<Vec<u8>> {
        // The phones' Signal stores sit behind their own async locks: take them after the
        // network's lock is released, then the rest under it.
        let phones: Vec<(String, Arc<tokio::sync::Mutex<SimSignal>>)> = self
            .state()
            .accounts
            .iter()
            .map(|(k, a)| (k.clone(), a.phone.clone()))
            .collect();
        let mut signals = HashMap::new();
        for (phone, signal) in phones {
            signals.insert(phone, signal.lock().await.save()?);
        }
        let st = self.state();
        let mut accounts = BTreeMap::new();
        for (phone, a) in &st.accounts {
            let Some(signal) = signals.remove(phone) else {
                // Created after the signals were read: the next write takes it.
                self.inner
                    .persistence
                    .as_ref()
                    .map(Persistence::changed)
                    .unwrap_or_default();
                continue;
            };
            let devices = a
                .devices
                .iter()
                .map(|(id, d)| {
                    let offline = d
                        .unacked
                        .iter()
                        .map(|(_, n)| n)
                        .chain(d.offline.iter())
                        .map(|n| wacore_binary::marshal::marshal(n).map(B64))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((
                        *id,
                        SavedDevice {
                            noise_pub: B64(d.noise_pub.to_vec()),
                            identity: B64(d.identity.to_vec()),
                            registration_id: d.registration_id,
                            signed_pre_key_id: d.signed_pre_key.0,
                            signed_pre_key: B64(d.signed_pre_key.1.to_vec()),
                            signed_pre_key_signature: B64(d.signed_pre_key.2.clone()),
                            pre_keys: d
                                .pre_keys
                                .iter()
                                .map(|(id, k)| (*id, B64(k.to_vec())))
                                .collect(),
                            adv_signed: B64(d.adv_signed.clone()),
                            offline,
                            key_share_sent: d.key_share_sent,
                        },
                    ))
                })
                .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
            accounts.insert(
                phone.clone(),
                SavedAccount {
                    lid: a.lid.clone(),
                    raw_id: a.raw_id,
                    name: a.name.clone(),
                    phone: signal,
                    devices,
                    next_device: a.next_device,
                    inbox: a.inbox.clone(),
                    receipts: a.receipts.clone(),
                    sent_by_phone: a.sent_by_phone.clone(),
                    behaviour: a.behaviour.clone(),
                    profile: a.profile.clone(),
                },
            );
        }
        let saved = SavedNetwork {
            format: FORMAT,
            server_public: B64(self.inner.server_static.public_key.serialize().to_vec()),
            server_private: B64(self.inner.server_static.private_key.serialize().to_vec()),
            media_auth: self.inner.media_auth.clone(),
            next_lid: st.next_lid,
            lids: st.lids.clone(),
            not_on_whatsapp: st.not_on_whatsapp.clone(),
            seen: st.seen_order.iter().cloned().collect(),
            accounts,
            groups: st
                .groups
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            device_watchers: st
                .device_watchers
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
                .collect(),
        };
        drop(st);
        Ok(serde_json::to_vec(&saved)?)
    }
}
