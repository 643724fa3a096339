//! Signal identities of the devices the simulator plays itself (every
//! account's phone, which is also what a "contact" is): an in-memory store,
//! and encrypt/decrypt of WhatsApp's `<enc>` payloads with it.

use std::collections::HashMap;

use anyhow::{Context, anyhow, bail};
use async_trait::async_trait;
use wacore::libsignal::protocol::{
    CiphertextMessage, DeviceId, Direction, GenericSignedPreKey, IdentityChange, IdentityKey,
    IdentityKeyPair, IdentityKeyStore, KeyPair, PreKeyBundle, PreKeyId, PreKeyRecord,
    PreKeySignalMessage, PreKeyStore, ProtocolAddress, SenderKeyDistributionMessage, SenderKeyName,
    SenderKeyRecord, SenderKeyStore, SessionRecord, SessionStore, SignalMessage,
    SignalProtocolError, SignedPreKeyId, SignedPreKeyRecord, SignedPreKeyStore, Timestamp,
    UsePQRatchet, create_sender_key_distribution_message, group_decrypt, group_encrypt,
    message_decrypt, message_encrypt, process_prekey_bundle,
    process_sender_key_distribution_message,
};
use waproto::whatsapp as wa;

type SignalResult<T> = Result<T, SignalProtocolError>;

/// One public prekey bundle as the server hands it out.
#[derive(Clone, Debug)]
pub struct PublicBundle {
    pub registration_id: u32,
    pub identity: [u8; 32],
    pub signed_pre_key_id: u32,
    pub signed_pre_key: [u8; 32],
    pub signed_pre_key_signature: Vec<u8>,
    pub one_time: Option<(u32, [u8; 32])>,
}

impl PublicBundle {
    pub fn to_libsignal(&self, device: u16) -> anyhow::Result<PreKeyBundle> {
        let key = |b: &[u8; 32]| {
            wacore::libsignal::protocol::PublicKey::from_djb_public_key_bytes(b)
                .map_err(|e| anyhow!("bad public key: {e}"))
        };
        let one_time = match &self.one_time {
            Some((id, pk)) => Some((PreKeyId::from(*id), key(pk)?)),
            None => None,
        };
        Ok(PreKeyBundle::new(
            self.registration_id,
            DeviceId::from(u32::from(device)),
            one_time,
            SignedPreKeyId::from(self.signed_pre_key_id),
            key(&self.signed_pre_key)?,
            self.signed_pre_key_signature.clone(),
            IdentityKey::new(key(&self.identity)?),
        )?)
    }
}

/// Peer identities (trust on first use, as a phone does).
struct Identities {
    own: IdentityKeyPair,
    registration_id: u32,
    known: HashMap<String, IdentityKey>,
}

struct Sessions(HashMap<String, SessionRecord>);
struct PreKeys(HashMap<u32, PreKeyRecord>);
struct SignedPreKeys(HashMap<u32, SignedPreKeyRecord>);
/// Group sender keys: this device's own chains and the ones peers distributed to it, by
/// `group:sender` name.
#[derive(Default)]
struct SenderKeys(HashMap<String, SenderKeyRecord>);

/// A device whose private keys the simulator holds. The four stores are
/// separate fields because libsignal borrows each one mutably at once.
pub struct SimSignal {
    identities: Identities,
    sessions: Sessions,
    pre_keys: PreKeys,
    signed_pre_keys: SignedPreKeys,
    sender_keys: SenderKeys,
    next_pre_key: u32,
    signed_pre_key_id: u32,
}

/// A [`SimSignal`] as the network's saved state holds it: every record in libsignal's own
/// serialisation.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SavedSignal {
    #[serde(with = "crate::network::b64")]
    identity: Vec<u8>,
    registration_id: u32,
    /// Peer address → its identity key.
    known: Vec<(String, crate::network::B64)>,
    sessions: Vec<(String, crate::network::B64)>,
    pre_keys: Vec<(u32, crate::network::B64)>,
    signed_pre_keys: Vec<(u32, crate::network::B64)>,
    /// Group sender keys by `group:sender` name (saved states from before groups have none).
    #[serde(default)]
    sender_keys: Vec<(String, crate::network::B64)>,
    next_pre_key: u32,
    signed_pre_key_id: u32,
}

impl SimSignal {
    pub fn save(&self) -> anyhow::Result<SavedSignal> {
        use crate::network::B64;
        Ok(SavedSignal {
            identity: self.identities.own.serialize().to_vec(),
            registration_id: self.identities.registration_id,
            known: self
                .identities
                .known
                .iter()
                .map(|(k, v)| (k.clone(), B64(v.serialize().to_vec())))
                .collect(),
            sessions: self
                .sessions
                .0
                .iter()
                .map(|(k, v)| Ok((k.clone(), B64(v.serialize()?))))
                .collect::<SignalResult<_>>()?,
            pre_keys: self
                .pre_keys
                .0
                .iter()
                .map(|(k, v)| Ok((*k, B64(v.serialize()?))))
                .collect::<SignalResult<_>>()?,
            signed_pre_keys: self
                .signed_pre_keys
                .0
                .iter()
                .map(|(k, v)| Ok((*k, B64(v.serialize()?))))
                .collect::<SignalResult<_>>()?,
            sender_keys: self
                .sender_keys
                .0
                .iter()
                .map(|(k, v)| Ok((k.clone(), B64(v.serialize()?))))
                .collect::<SignalResult<_>>()?,
            next_pre_key: self.next_pre_key,
            signed_pre_key_id: self.signed_pre_key_id,
        })
    }

    pub fn restore(saved: SavedSignal) -> anyhow::Result<Self> {
        Ok(Self {
            identities: Identities {
                own: IdentityKeyPair::try_from(saved.identity.as_slice())
                    .map_err(|e| anyhow!("identity: {e}"))?,
                registration_id: saved.registration_id,
                known: saved
                    .known
                    .into_iter()
                    .map(|(k, v)| Ok((k, IdentityKey::decode(&v.0)?)))
                    .collect::<SignalResult<_>>()?,
            },
            sessions: Sessions(
                saved
                    .sessions
                    .into_iter()
                    .map(|(k, v)| Ok((k, SessionRecord::deserialize(&v.0)?)))
                    .collect::<SignalResult<_>>()?,
            ),
            pre_keys: PreKeys(
                saved
                    .pre_keys
                    .into_iter()
                    .map(|(k, v)| Ok((k, PreKeyRecord::deserialize(&v.0)?)))
                    .collect::<SignalResult<_>>()?,
            ),
            signed_pre_keys: SignedPreKeys(
                saved
                    .signed_pre_keys
                    .into_iter()
                    .map(|(k, v)| Ok((k, SignedPreKeyRecord::deserialize(&v.0)?)))
                    .collect::<SignalResult<_>>()?,
            ),
            sender_keys: SenderKeys(
                saved
                    .sender_keys
                    .into_iter()
                    .map(|(k, v)| Ok((k, SenderKeyRecord::deserialize(&v.0)?)))
                    .collect::<SignalResult<_>>()?,
            ),
            next_pre_key: saved.next_pre_key,
            signed_pre_key_id: saved.signed_pre_key_id,
        })
    }
}

/// A CSPRNG that may be held across an await (the thread RNG may not).
fn send_rng() -> rand10::rngs::StdRng {
    rand10::make_rng::<rand10::rngs::StdRng>()
}

fn address_key(address: &ProtocolAddress) -> String {
    format!("{}.{}", address.name(), u32::from(address.device_id()))
}

/// The address a simulator-held device uses for a peer device.
pub fn peer_address(phone: &str, device: u16) -> ProtocolAddress {
    ProtocolAddress::new(phone, DeviceId::from(u32::from(device)))
}

impl SimSignal {
    pub fn generate() -> anyhow::Result<Self> {
        let mut rng = rand10::rng();
        let identity = IdentityKeyPair::generate(&mut rng);
        let signed_kp = KeyPair::generate(&mut rng);
        let signature = identity
            .private_key()
            .calculate_signature(&signed_kp.public_key.serialize(), &mut rng)
            .map_err(|e| anyhow!("signing the signed prekey: {e}"))?;
        let signed_pre_key_id = 1;
        let record = SignedPreKeyRecord::new(
            SignedPreKeyId::from(signed_pre_key_id),
            Timestamp::from_epoch_millis(0),
            &signed_kp,
            &signature,
        );
        let mut signed = HashMap::new();
        signed.insert(signed_pre_key_id, record);
        Ok(Self {
            identities: Identities {
                own: identity,
                registration_id: rand10::random::<u32>() & 0x3fff,
                known: HashMap::new(),
            },
            sessions: Sessions(HashMap::new()),
            pre_keys: PreKeys(HashMap::new()),
            signed_pre_keys: SignedPreKeys(signed),
            sender_keys: SenderKeys::default(),
            next_pre_key: 1,
            signed_pre_key_id,
        })
    }

    /// The account key when this is a phone: it signs companion identities.
    pub fn identity_pair(&self) -> &IdentityKeyPair {
        &self.identities.own
    }

    pub fn identity_public(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.identities.own.public_key().public_key_bytes());
        out
    }

    /// A fresh bundle with a new one-time prekey, for a peer about to start a
    /// session with us (the server would hold uploaded prekeys; minting them
    /// on demand is indistinguishable to the client).
    pub fn mint_bundle(&mut self) -> anyhow::Result<PublicBundle> {
        let id = self.next_pre_key;
        self.next_pre_key += 1;
        let kp = KeyPair::generate(&mut rand10::rng());
        self.pre_keys
            .0
            .insert(id, PreKeyRecord::new(PreKeyId::from(id), &kp));
        let signed = self
            .signed_pre_keys
            .0
            .get(&self.signed_pre_key_id)
            .ok_or_else(|| anyhow!("signed prekey missing"))?;
        let mut signed_pub = [0u8; 32];
        signed_pub.copy_from_slice(signed.public_key()?.public_key_bytes());
        let mut one_time = [0u8; 32];
        one_time.copy_from_slice(kp.public_key.public_key_bytes());
        Ok(PublicBundle {
            registration_id: self.identities.registration_id,
            identity: self.identity_public(),
            signed_pre_key_id: self.signed_pre_key_id,
            signed_pre_key: signed_pub,
            signed_pre_key_signature: signed.signature()?.to_vec(),
            one_time: Some((id, one_time)),
        })
    }

    pub fn has_session(&self, phone: &str, device: u16) -> bool {
        self.sessions
            .0
            .contains_key(&address_key(&peer_address(phone, device)))
    }

    /// Forgets the session with a peer device (it re-registered or logged out).
    pub fn forget(&mut self, phone: &str, device: u16) {
        let key = address_key(&peer_address(phone, device));
        self.sessions.0.remove(&key);
        self.identities.known.remove(&key);
    }

    /// Encrypts a message for a peer device, starting a session from its
    /// bundle when there is none. Returns (`pkmsg`|`msg`, ciphertext).
    pub async fn encrypt(
        &mut self,
        phone: &str,
        device: u16,
        bundle: Option<&PublicBundle>,
        message: &wa::Message,
    ) -> anyhow::Result<(&'static str, Vec<u8>)> {
        let address = peer_address(phone, device);
        if !self.sessions.0.contains_key(&address_key(&address)) {
            let bundle = bundle.ok_or_else(|| anyhow!("no session and no bundle"))?;
            let bundle = bundle.to_libsignal(device)?;
            process_prekey_bundle(
                &address,
                &mut self.sessions,
                &mut self.identities,
                &bundle,
                &mut send_rng(),
                UsePQRatchet::No,
            )
            .await
            .context("starting a Signal session")?;
        }
        let plain = wacore::messages::MessageUtils::encode_and_pad(message);
        let ct =
            message_encrypt(&plain, &address, &mut self.sessions, &mut self.identities).await?;
        let kind = match &ct {
            CiphertextMessage::PreKeySignalMessage(_) => "pkmsg",
            CiphertextMessage::SignalMessage(_) => "msg",
            _ => bail!("unexpected ciphertext type"),
        };
        Ok((kind, ct.serialize().to_vec()))
    }

    /// Decrypts one `<enc>` from a peer device.
    pub async fn decrypt(
        &mut self,
        phone: &str,
        device: u16,
        kind: &str,
        ciphertext: &[u8],
    ) -> anyhow::Result<wa::Message> {
        let address = peer_address(phone, device);
        let ct = match kind {
            "pkmsg" => {
                CiphertextMessage::PreKeySignalMessage(PreKeySignalMessage::try_from(ciphertext)?)
            }
            "msg" => CiphertextMessage::SignalMessage(SignalMessage::try_from(ciphertext)?),
            other => bail!("unsupported enc type {other}"),
        };
        let result = message_decrypt(
            &ct,
            &address,
            &mut self.sessions,
            &mut self.identities,
            &mut self.pre_keys,
            &self.signed_pre_keys,
            &mut send_rng(),
            UsePQRatchet::No,
        )
        .await?;
        if let Some(id) = result.consumed_prekey_id {
            self.pre_keys.0.remove(&u32::from(id));
        }
        wacore::messages::decode_plaintext(&result.plaintext, 2).context("decoding plaintext")
    }
    /// Takes a sender key a peer device distributed for a group (the SKDM inside a pairwise
    /// message), so its `skmsg`s can be read.
    pub async fn accept_sender_key(
        &mut self,
        group: &str,
        phone: &str,
        device: u16,
        distribution: &[u8],
    ) -> anyhow::Result<()> {
        let skdm = SenderKeyDistributionMessage::try_from(distribution)?;
        let name = sender_key_name(group, phone, device);
        process_sender_key_distribution_message(&name, &skdm, &mut self.sender_keys).await?;
        Ok(())
    }

    /// Decrypts a group message (`skmsg`) from a peer device with the sender key it
    /// distributed.
    pub async fn decrypt_group(
        &mut self,
        group: &str,
        phone: &str,
        device: u16,
        ciphertext: &[u8],
    ) -> anyhow::Result<wa::Message> {
        let name = sender_key_name(group, phone, device);
        let plain = group_decrypt(ciphertext, &mut self.sender_keys, &name).await?;
        wacore::messages::decode_plaintext(&plain, 2).context("decoding group plaintext")
    }

    /// This device's sender key for a group, as the distribution message its peers need
    /// (created on first use).
    pub async fn own_sender_key(
        &mut self,
        group: &str,
        own_phone: &str,
    ) -> anyhow::Result<Vec<u8>> {
        let name = sender_key_name(group, own_phone, 0);
        let skdm =
            create_sender_key_distribution_message(&name, &mut self.sender_keys, &mut send_rng())
                .await?;
        Ok(skdm.serialized().to_vec())
    }

    /// Encrypts a message for a group under this device's sender key (`skmsg`).
    pub async fn encrypt_group(
        &mut self,
        group: &str,
        own_phone: &str,
        message: &wa::Message,
    ) -> anyhow::Result<Vec<u8>> {
        let name = sender_key_name(group, own_phone, 0);
        let plain = wacore::messages::MessageUtils::encode_and_pad(message);
        let skm = group_encrypt(&mut self.sender_keys, &name, &plain, &mut send_rng()).await?;
        Ok(skm.serialized().to_vec())
    }
}

fn sender_key_name(group: &str, phone: &str, device: u16) -> SenderKeyName {
    SenderKeyName::from_parts(group, &address_key(&peer_address(phone, device)))
}

fn sender_key_key(name: &SenderKeyName) -> String {
    format!("{}:{}", name.group_id(), name.sender_id())
}

#[async_trait]
impl SenderKeyStore for SenderKeys {
    async fn store_sender_key(
        &mut self,
        name: &SenderKeyName,
        record: SenderKeyRecord,
    ) -> SignalResult<()> {
        self.0.insert(sender_key_key(name), record);
        Ok(())
    }

    async fn load_sender_key(&self, name: &SenderKeyName) -> SignalResult<Option<SenderKeyRecord>> {
        Ok(self.0.get(&sender_key_key(name)).cloned())
    }
}

#[async_trait]
impl IdentityKeyStore for Identities {
    async fn get_identity_key_pair(&self) -> SignalResult<IdentityKeyPair> {
        Ok(self.own.clone())
    }

    async fn get_local_registration_id(&self) -> SignalResult<u32> {
        Ok(self.registration_id)
    }

    async fn save_identity(
        &mut self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
    ) -> SignalResult<IdentityChange> {
        let previous = self.known.insert(address_key(address), *identity);
        Ok(match previous {
            Some(p) if &p != identity => IdentityChange::ReplacedExisting,
            _ => IdentityChange::NewOrUnchanged,
        })
    }

    async fn is_trusted_identity(
        &self,
        _address: &ProtocolAddress,
        _identity: &IdentityKey,
        _direction: Direction,
    ) -> SignalResult<bool> {
        // A phone accepts a peer's new identity (it re-linked); WhatsApp shows
        // a "security code changed" notice rather than refusing.
        Ok(true)
    }

    async fn get_identity(&self, address: &ProtocolAddress) -> SignalResult<Option<IdentityKey>> {
        Ok(self.known.get(&address_key(address)).cloned())
    }
}

#[async_trait]
impl SessionStore for Sessions {
    async fn load_session(&self, address: &ProtocolAddress) -> SignalResult<Option<SessionRecord>> {
        Ok(self.0.get(&address_key(address)).cloned())
    }

    async fn has_session(&self, address: &ProtocolAddress) -> SignalResult<bool> {
        Ok(self.0.contains_key(&address_key(address)))
    }

    async fn store_session(
        &mut self,
        address: &ProtocolAddress,
        record: SessionRecord,
    ) -> SignalResult<()> {
        self.0.insert(address_key(address), record);
        Ok(())
    }
}

#[async_trait]
impl PreKeyStore for PreKeys {
    async fn get_pre_key(&self, id: PreKeyId) -> SignalResult<PreKeyRecord> {
        self.0
            .get(&u32::from(id))
            .cloned()
            .ok_or(SignalProtocolError::InvalidPreKeyId)
    }

    async fn save_pre_key(&mut self, id: PreKeyId, record: &PreKeyRecord) -> SignalResult<()> {
        self.0.insert(u32::from(id), record.clone());
        Ok(())
    }

    async fn remove_pre_key(&mut self, id: PreKeyId) -> SignalResult<()> {
        self.0.remove(&u32::from(id));
        Ok(())
    }
}

#[async_trait]
impl SignedPreKeyStore for SignedPreKeys {
    async fn get_signed_pre_key(&self, id: SignedPreKeyId) -> SignalResult<SignedPreKeyRecord> {
        self.0
            .get(&u32::from(id))
            .cloned()
            .ok_or(SignalProtocolError::InvalidSignedPreKeyId)
    }

    async fn save_signed_pre_key(
        &mut self,
        id: SignedPreKeyId,
        record: &SignedPreKeyRecord,
    ) -> SignalResult<()> {
        self.0.insert(u32::from(id), record.clone());
        Ok(())
    }
}
