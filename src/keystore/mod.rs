//! whatsapp-rust's storage `Backend` on Postgres: everything one linked device
//! needs to come back after a restart without a new QR code, encrypted at rest.
//!
//! One generic table holds every kind of entry (see the migration): the
//! library's store surface is some seventy methods over a dozen maps, and
//! one keyed, sealed row shape serves all of them with a handful of queries.

mod cipher;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use diesel::prelude::*;
use diesel::sql_types;
use diesel::upsert::excluded;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;
use wacore::appstate::hash::HashState;
use wacore::appstate::processor::AppStateMutationMAC;
use wacore::store::Device;
use wacore::store::error::{Result, StoreError};
use wacore::store::traits::{
    AppStateSyncKey, AppSyncStore, DeviceListRecord, DeviceStore, LidPnMappingEntry,
    MsgSecretEntry, MsgSecretStore, ProtocolStore, SignalStore, TcTokenEntry,
    merge_msg_secret_expiry, merge_msg_secret_message_ts,
};

pub use cipher::{CipherError, StoreCipher};

use crate::db::{DbPool, PrepareOnce};
use crate::schema::{wa_store_devices, wa_store_entries};

/// The kinds of entry, as stored in `wa_store_entries.kind`. Never renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i16)]
enum Kind {
    Identity = 1,
    Session = 2,
    PreKey = 3,
    SignedPreKey = 4,
    SenderKey = 5,
    SyncKey = 6,
    Version = 7,
    MutationMac = 8,
    SenderKeyDevice = 9,
    LidMapping = 10,
    PnMapping = 11,
    BaseKey = 12,
    DeviceList = 13,
    GroupMetadata = 14,
    TcToken = 15,
    SentMessage = 16,
    PendingInbound = 17,
    MsgSecret = 18,
    Meta = 19,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Identity => "identity",
            Kind::Session => "session",
            Kind::PreKey => "prekey",
            Kind::SignedPreKey => "signed_prekey",
            Kind::SenderKey => "sender_key",
            Kind::SyncKey => "sync_key",
            Kind::Version => "version",
            Kind::MutationMac => "mutation_mac",
            Kind::SenderKeyDevice => "sender_key_device",
            Kind::LidMapping => "lid_mapping",
            Kind::PnMapping => "pn_mapping",
            Kind::BaseKey => "base_key",
            Kind::DeviceList => "device_list",
            Kind::GroupMetadata => "group_metadata",
            Kind::TcToken => "tc_token",
            Kind::SentMessage => "sent_message",
            Kind::PendingInbound => "pending_inbound",
            Kind::MsgSecret => "msg_secret",
            Kind::Meta => "meta",
        }
    }

    fn from_stored(kind: i16) -> &'static str {
        const ALL: [Kind; 19] = [
            Kind::Identity,
            Kind::Session,
            Kind::PreKey,
            Kind::SignedPreKey,
            Kind::SenderKey,
            Kind::SyncKey,
            Kind::Version,
            Kind::MutationMac,
            Kind::SenderKeyDevice,
            Kind::LidMapping,
            Kind::PnMapping,
            Kind::BaseKey,
            Kind::DeviceList,
            Kind::GroupMetadata,
            Kind::TcToken,
            Kind::SentMessage,
            Kind::PendingInbound,
            Kind::MsgSecret,
            Kind::Meta,
        ];
        ALL.iter()
            .find(|k| **k as i16 == kind)
            .map_or("unknown", |k| k.name())
    }
}

/// Counts key-store work by what it did and to which kind of entry (a row for upserts, which
/// the node's writer groups; a statement for the rest): what a message costs the key store is
/// read off `wagate_keystore_operations_total`.
fn counted(op: &'static str, kind: &'static str) {
    crate::metrics::KEYSTORE_OPERATIONS
        .with_label_values(&[op, kind])
        .inc();
}

const LATEST_SYNC_KEY: &[u8] = b"latest_sync_key_id";

#[derive(Queryable, Selectable, Insertable, Clone)]
#[diesel(table_name = wa_store_entries)]
struct EntryRow {
    store_id: Uuid,
    kind: i16,
    lookup: Vec<u8>,
    grp: Option<Vec<u8>>,
    grp2: Option<Vec<u8>>,
    num: Option<i64>,
    ts: Option<i64>,
    ts2: Option<i64>,
    flag: bool,
    value: Vec<u8>,
}

/// What to store beside an entry's sealed key and data.
#[derive(Default, Clone)]
struct Extra<'a> {
    grp: Option<&'a [u8]>,
    grp2: Option<&'a [u8]>,
    num: Option<i64>,
    ts: Option<i64>,
    ts2: Option<i64>,
    flag: bool,
}

fn db_error(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Database(Box::new(e))
}

fn serde_error(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Serialization(Box::new(e))
}

/// Joins the parts of a composite key unambiguously.
fn composite(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// The user part of a Signal address (`user@server`, `user:device@server`, `user.device`).
fn address_user(address: &str) -> &str {
    address.split(['@', ':', '.']).next().unwrap_or(address)
}

/// whatsapp-rust's `Backend` for one store (one linked device) in Postgres.
#[derive(Clone)]
pub struct PgKeyStore {
    pool: DbPool,
    store_id: Uuid,
    cipher: Arc<StoreCipher>,
    /// The library reads a contact's tc token on every send; the owner of a session is its
    /// only writer, so what it read or wrote last is what Postgres holds.
    tc_tokens: Arc<std::sync::Mutex<TcTokenCache>>,
    /// The device row as this store last read or wrote it: see `DeviceRow`.
    device: Arc<tokio::sync::Mutex<DeviceRow>>,
    /// The node's shared writer of entries, when there is one (see [`EntryWriter`]).
    writer: Option<EntryWriter>,
    /// Signal sessions known not to exist: see [`AbsentSessions`].
    absent_sessions: Arc<std::sync::Mutex<AbsentSessions>>,
}

/// Addresses this store read and found no Signal session for. whatsapp-rust asks for some
/// of them again and again: a consumed prekey it buffered under a phone-number address whose
/// session then moved to the LID is checked against the backend at every flush of its
/// session cache (`SignalStoreCache::flush`), and never found, so once per message sent or
/// received. The owner of a session is its store's only writer (the lease), so a miss stays
/// a miss until this store writes or deletes that session; a write forgets the address
/// before and after it commits, and a read that raced a write (the generation moved) is not
/// remembered.
#[derive(Default)]
struct AbsentSessions {
    generation: u64,
    addresses: std::collections::HashSet<String>,
}

/// Absent sessions remembered per store before the set starts over.
const ABSENT_SESSIONS_REMEMBERED: usize = 4096;

/// Entries written in one statement at the most by the node's [`EntryWriter`].
const ENTRIES_PER_WRITE: usize = 512;

/// The node's writer of key-store entries, shared by every session's store: a message sent
/// or received writes three entries (its Signal session, and a sent message and its secret,
/// or a pending inbound and its removal), and the writes of all sessions that arrive together
/// become one upsert and one commit instead of one each. Each write still returns only after
/// its rows are committed, so the library's view of durability does not change.
#[derive(Clone)]
pub struct EntryWriter {
    writes: crate::db::group_commit::GroupCommit<EntryGroup>,
}

impl EntryWriter {
    /// Starts the writer on the current runtime.
    pub fn start(pool: DbPool) -> Self {
        Self {
            writes: crate::db::group_commit::GroupCommit::start(
                EntryGroup { pool },
                ENTRIES_PER_WRITE,
            ),
        }
    }
}

/// The entries of many stores' writes (each job is one `put`'s rows) in one upsert.
struct EntryGroup {
    pool: DbPool,
}

impl crate::db::group_commit::GroupWrite for EntryGroup {
    type Job = Vec<EntryRow>;
    type Answer = ();
    const KIND: &'static str = "keystore_entries";

    async fn write_group(&self, writes: &[Vec<EntryRow>]) -> anyhow::Result<Vec<()>> {
        let mut conn = self.pool.get().await?;
        upsert_rows(&mut conn, writes.iter().flatten().collect()).await?;
        Ok(vec![(); writes.len()])
    }

    async fn write_one(&self, rows: Vec<EntryRow>) -> anyhow::Result<()> {
        let mut conn = self.pool.get().await?;
        upsert_rows(&mut conn, rows.iter().collect()).await?;
        Ok(())
    }
}

/// Upserts rows, the last write of a key winning (one statement may not touch a row twice),
/// in key order, so that two writes never take their row locks in opposite orders.
async fn upsert_rows(
    conn: &mut diesel_async::AsyncPgConnection,
    mut rows: Vec<&EntryRow>,
) -> std::result::Result<(), diesel::result::Error> {
    let mut seen = std::collections::HashSet::new();
    rows.reverse();
    rows.retain(|r| seen.insert((r.store_id, r.kind, r.lookup.as_slice())));
    rows.sort_by(|a, b| (a.store_id, a.kind, &a.lookup).cmp(&(b.store_id, b.kind, &b.lookup)));
    for chunk in rows.chunks(1000) {
        for r in chunk {
            counted("upsert", Kind::from_stored(r.kind));
        }
        // The rows travel as arrays: one statement text for any number of rows, so Postgres
        // parses and plans it once per connection instead of once per write.
        diesel::sql_query(
            "INSERT INTO wa_store_entries \
               (store_id, kind, lookup, grp, grp2, num, ts, ts2, flag, value) \
             SELECT * FROM unnest($1::uuid[], $2::int2[], $3::bytea[], $4::bytea[], \
               $5::bytea[], $6::int8[], $7::int8[], $8::int8[], $9::bool[], $10::bytea[]) \
             ON CONFLICT (store_id, kind, lookup) DO UPDATE SET \
               grp = EXCLUDED.grp, grp2 = EXCLUDED.grp2, num = EXCLUDED.num, ts = EXCLUDED.ts, \
               ts2 = EXCLUDED.ts2, flag = EXCLUDED.flag, value = EXCLUDED.value",
        )
        .bind::<sql_types::Array<sql_types::Uuid>, _>(
            chunk.iter().map(|r| r.store_id).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Int2>, _>(
            chunk.iter().map(|r| r.kind).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Bytea>, _>(
            chunk
                .iter()
                .map(|r| r.lookup.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Nullable<sql_types::Bytea>>, _>(
            chunk.iter().map(|r| r.grp.as_deref()).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Nullable<sql_types::Bytea>>, _>(
            chunk.iter().map(|r| r.grp2.as_deref()).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Nullable<sql_types::Int8>>, _>(
            chunk.iter().map(|r| r.num).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Nullable<sql_types::Int8>>, _>(
            chunk.iter().map(|r| r.ts).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Nullable<sql_types::Int8>>, _>(
            chunk.iter().map(|r| r.ts2).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Bool>, _>(
            chunk.iter().map(|r| r.flag).collect::<Vec<_>>(),
        )
        .bind::<sql_types::Array<sql_types::Bytea>, _>(
            chunk.iter().map(|r| r.value.as_slice()).collect::<Vec<_>>(),
        )
        .prepared()
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// What this store knows of its device row. The library saves the whole device (about
/// 2.8 KB sealed) on every change it marks, and a login marks it three or four times with
/// nothing changed; the owner of a session is the row's only writer, so a save whose
/// plaintext is what the row already holds is skipped. Saves run one at a time under the
/// lock, so the digest always names what the last committed write stored.
#[derive(Default)]
struct DeviceRow {
    /// SHA-256 of the plaintext the row holds, when known.
    stored: Option<[u8; 32]>,
    /// The sealed row read by `exists`, handed to the `load` that follows it at startup
    /// (the library asks both, back to back): one read instead of two.
    prefetched: Option<Vec<u8>>,
}

/// Tc tokens as last read, by JID (`None`: none stored). Every write bumps the generation
/// after it commits, and a read remembers its answer only if no write came in between, so a
/// read racing a write can never leave the old value behind.
#[derive(Default)]
struct TcTokenCache {
    generation: u64,
    entries: HashMap<String, Option<TcTokenEntry>>,
}

/// Tc tokens remembered per store before the cache starts over.
const TC_TOKENS_REMEMBERED: usize = 1024;

impl PgKeyStore {
    pub fn new(pool: DbPool, store_id: Uuid, cipher: Arc<StoreCipher>) -> Self {
        Self {
            pool,
            store_id,
            cipher,
            tc_tokens: Arc::default(),
            device: Arc::default(),
            writer: None,
            absent_sessions: Arc::default(),
        }
    }

    fn absent(&self) -> std::sync::MutexGuard<'_, AbsentSessions> {
        self.absent_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets that these sessions (or, with `None`, any) were absent: around a write.
    fn absent_forget(&self, addresses: Option<&[&str]>) {
        let mut absent = self.absent();
        absent.generation += 1;
        match addresses {
            Some(list) => list.iter().for_each(|a| {
                absent.addresses.remove(*a);
            }),
            None => absent.addresses.clear(),
        }
    }

    /// A session's row, unless it is known to be absent (no statement then).
    async fn session_row_of(&self, address: &str) -> Result<Option<EntryRow>> {
        let generation = {
            let absent = self.absent();
            if absent.addresses.contains(address) {
                return Ok(None);
            }
            absent.generation
        };
        let row = self.get_row(Kind::Session, address.as_bytes()).await?;
        if row.is_none() {
            let mut absent = self.absent();
            if absent.generation == generation {
                if absent.addresses.len() >= ABSENT_SESSIONS_REMEMBERED {
                    absent.addresses.clear();
                }
                absent.addresses.insert(address.to_owned());
            }
        }
        Ok(row)
    }

    /// Writes entries through the node's shared writer instead of one statement per write.
    pub fn with_writer(mut self, writer: EntryWriter) -> Self {
        self.writer = Some(writer);
        self
    }

    fn tc_cache(&self) -> std::sync::MutexGuard<'_, TcTokenCache> {
        // A panic elsewhere cannot leave the map half-changed in a way that matters here.
        self.tc_tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets cached tc tokens (one JID's, or all) after a write committed.
    fn tc_forget(&self, jid: Option<&str>) {
        let mut cache = self.tc_cache();
        cache.generation += 1;
        match jid {
            Some(j) => {
                cache.entries.remove(j);
            }
            None => cache.entries.clear(),
        }
    }

    pub fn store_id(&self) -> Uuid {
        self.store_id
    }

    /// The sealed device row, if there is one.
    async fn read_device_row(&self) -> Result<Option<Vec<u8>>> {
        counted("get", "device");
        use wa_store_devices::dsl as d;
        let mut conn = self.pool.get().await.map_err(db_error)?;
        d::wa_store_devices
            .filter(d::store_id.eq(self.store_id))
            .select(d::value)
            .first(&mut conn)
            .await
            .optional()
            .map_err(db_error)
    }

    /// Deletes everything of this store (a session deleted or logged out).
    pub async fn purge(&self) -> Result<()> {
        let mut device = self.device.lock().await;
        *device = DeviceRow::default();
        let mut conn = self.pool.get().await.map_err(db_error)?;
        diesel::delete(
            wa_store_entries::table.filter(wa_store_entries::store_id.eq(self.store_id)),
        )
        .execute(&mut conn)
        .await
        .map_err(db_error)?;
        self.tc_forget(None);
        self.absent_forget(None);
        diesel::delete(
            wa_store_devices::table.filter(wa_store_devices::store_id.eq(self.store_id)),
        )
        .execute(&mut conn)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    fn lookup(&self, kind: Kind, key: &[u8]) -> Vec<u8> {
        self.cipher
            .lookup(self.store_id, &(kind as i16).to_be_bytes(), key)
    }

    fn group(&self, domain: &[u8], key: &[u8]) -> Vec<u8> {
        self.cipher.lookup(self.store_id, domain, key)
    }

    fn aad(&self, kind: i16, lookup: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(16 + 2 + lookup.len());
        aad.extend_from_slice(self.store_id.as_bytes());
        aad.extend_from_slice(&kind.to_be_bytes());
        aad.extend_from_slice(lookup);
        aad
    }

    fn row(&self, kind: Kind, key: &[u8], data: &[u8], extra: &Extra<'_>) -> Result<EntryRow> {
        let lookup = self.lookup(kind, key);
        // The key travels sealed with the data so scans can give it back.
        let plain = composite(&[key, data]);
        let value = self
            .cipher
            .seal(&self.aad(kind as i16, &lookup), &plain)
            .map_err(serde_error)?;
        Ok(EntryRow {
            store_id: self.store_id,
            kind: kind as i16,
            grp: extra.grp.map(<[u8]>::to_vec),
            grp2: extra.grp2.map(<[u8]>::to_vec),
            num: extra.num,
            ts: extra.ts,
            ts2: extra.ts2,
            flag: extra.flag,
            lookup,
            value,
        })
    }

    /// (key, data) of a stored row.
    fn open(&self, row: &EntryRow) -> Result<(Vec<u8>, Vec<u8>)> {
        let plain = self
            .cipher
            .open(&self.aad(row.kind, &row.lookup), &row.value)
            .map_err(serde_error)?;
        let mut parts = Vec::with_capacity(2);
        let mut rest = plain.as_slice();
        while rest.len() >= 4 {
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if rest.len() < 4 + len {
                break;
            }
            parts.push(rest[4..4 + len].to_vec());
            rest = &rest[4 + len..];
        }
        match <[Vec<u8>; 2]>::try_from(parts) {
            Ok([k, d]) => Ok((k, d)),
            Err(_) => Err(StoreError::Validation("malformed sealed entry".into())),
        }
    }

    async fn put(&self, kind: Kind, key: &[u8], data: &[u8], extra: Extra<'_>) -> Result<()> {
        let row = self.row(kind, key, data, &extra)?;
        self.upsert(vec![row]).await
    }

    async fn upsert(&self, rows: Vec<EntryRow>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        if let Some(writer) = &self.writer {
            return writer
                .writes
                .submit(rows)
                .await
                .map_err(|e| StoreError::Database(e.into()));
        }
        let mut conn = self.pool.get().await.map_err(db_error)?;
        upsert_rows(&mut conn, rows.iter().collect())
            .await
            .map_err(db_error)
    }

    async fn get_row(&self, kind: Kind, key: &[u8]) -> Result<Option<EntryRow>> {
        use wa_store_entries::dsl as e;
        counted("get", kind.name());
        let mut conn = self.pool.get().await.map_err(db_error)?;
        e::wa_store_entries
            .filter(e::store_id.eq(self.store_id))
            .filter(e::kind.eq(kind as i16))
            .filter(e::lookup.eq(self.lookup(kind, key)))
            .select(EntryRow::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map_err(db_error)
    }

    async fn get(&self, kind: Kind, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.get_row(kind, key).await? {
            Some(row) => Ok(Some(self.open(&row)?.1)),
            None => Ok(None),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        kind: Kind,
        key: &[u8],
    ) -> Result<Option<T>> {
        match self.get(kind, key).await? {
            Some(data) => serde_json::from_slice(&data).map(Some).map_err(serde_error),
            None => Ok(None),
        }
    }

    async fn put_json<T: serde::Serialize>(
        &self,
        kind: Kind,
        key: &[u8],
        value: &T,
        extra: Extra<'_>,
    ) -> Result<()> {
        let data = serde_json::to_vec(value).map_err(serde_error)?;
        self.put(kind, key, &data, extra).await
    }

    async fn delete(&self, kind: Kind, keys: &[&[u8]]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        use wa_store_entries::dsl as e;
        let lookups: Vec<Vec<u8>> = keys.iter().map(|k| self.lookup(kind, k)).collect();
        counted("delete", kind.name());
        let mut conn = self.pool.get().await.map_err(db_error)?;
        let n = diesel::delete(
            e::wa_store_entries
                .filter(e::store_id.eq(self.store_id))
                .filter(e::kind.eq(kind as i16))
                .filter(e::lookup.eq_any(lookups)),
        )
        .execute(&mut conn)
        .await
        .map_err(db_error)?;
        Ok(n as u64)
    }

    /// All rows of a kind, optionally of one group.
    async fn scan(&self, kind: Kind, grp: Option<Vec<u8>>) -> Result<Vec<EntryRow>> {
        use wa_store_entries::dsl as e;
        counted("scan", kind.name());
        let mut conn = self.pool.get().await.map_err(db_error)?;
        let mut q = e::wa_store_entries
            .filter(e::store_id.eq(self.store_id))
            .filter(e::kind.eq(kind as i16))
            .select(EntryRow::as_select())
            .into_boxed();
        if let Some(g) = grp {
            q = q.filter(e::grp.eq(g));
        }
        q.load(&mut conn).await.map_err(db_error)
    }

    async fn delete_group(
        &self,
        kind: Kind,
        grp: Option<Vec<u8>>,
        grp2_any: Option<Vec<Vec<u8>>>,
    ) -> Result<u64> {
        use wa_store_entries::dsl as e;
        counted("delete_group", kind.name());
        let mut conn = self.pool.get().await.map_err(db_error)?;
        let mut q = diesel::delete(e::wa_store_entries)
            .filter(e::store_id.eq(self.store_id))
            .filter(e::kind.eq(kind as i16))
            .into_boxed();
        if let Some(g) = grp {
            q = q.filter(e::grp.eq(g));
        }
        if let Some(g) = grp2_any {
            q = q.filter(e::grp2.eq_any(g));
        }
        Ok(q.execute(&mut conn).await.map_err(db_error)? as u64)
    }

    async fn delete_older(&self, kind: Kind, cutoff: i64) -> Result<u32> {
        use wa_store_entries::dsl as e;
        counted("delete_older", kind.name());
        let mut conn = self.pool.get().await.map_err(db_error)?;
        let n = diesel::delete(
            e::wa_store_entries
                .filter(e::store_id.eq(self.store_id))
                .filter(e::kind.eq(kind as i16))
                .filter(e::ts.lt(cutoff)),
        )
        .execute(&mut conn)
        .await
        .map_err(db_error)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn user_group(&self, user: &str) -> Vec<u8> {
        self.group(b"signal-user", user.as_bytes())
    }

    fn identity_row(&self, address: &str, key: &[u8; 32]) -> Result<EntryRow> {
        let grp = self.user_group(address_user(address));
        self.row(
            Kind::Identity,
            address.as_bytes(),
            key,
            &Extra {
                grp: Some(&grp),
                ..Extra::default()
            },
        )
    }

    fn session_row(&self, address: &str, session: &[u8]) -> Result<EntryRow> {
        let grp = self.user_group(address_user(address));
        self.row(
            Kind::Session,
            address.as_bytes(),
            session,
            &Extra {
                grp: Some(&grp),
                ..Extra::default()
            },
        )
    }

    fn prekey_row(&self, id: u32, record: &[u8], uploaded: bool) -> Result<EntryRow> {
        self.row(
            Kind::PreKey,
            &id.to_be_bytes(),
            record,
            &Extra {
                num: Some(i64::from(id)),
                flag: uploaded,
                ..Extra::default()
            },
        )
    }

    fn tc_row(&self, jid: &str, entry: &TcTokenEntry) -> Result<EntryRow> {
        let data = serde_json::to_vec(entry).map_err(serde_error)?;
        self.row(
            Kind::TcToken,
            jid.as_bytes(),
            &data,
            &Extra {
                ts: Some(entry.token_timestamp),
                ts2: entry.sender_timestamp,
                flag: entry.token.is_empty(),
                ..Extra::default()
            },
        )
    }

    /// Read-modify-write of one tc token under a row lock, so the two writers
    /// the library runs concurrently never lose each other's field.
    async fn update_tc_token(
        &self,
        jid: &str,
        update: impl FnOnce(Option<TcTokenEntry>) -> Option<TcTokenEntry> + Send,
    ) -> Result<()> {
        use wa_store_entries::dsl as e;
        let lookup = self.lookup(Kind::TcToken, jid.as_bytes());
        let mut conn = self.pool.get().await.map_err(db_error)?;
        let this = self.clone();
        let owned = jid.to_string();
        let updated = conn
            .transaction::<_, diesel::result::Error, _>(async move |conn| {
                let row: Option<EntryRow> = e::wa_store_entries
                    .filter(e::store_id.eq(this.store_id))
                    .filter(e::kind.eq(Kind::TcToken as i16))
                    .filter(e::lookup.eq(&lookup))
                    .select(EntryRow::as_select())
                    .for_update()
                    .first(conn)
                    .await
                    .optional()?;
                let current = match row {
                    Some(r) => this
                        .open(&r)
                        .ok()
                        .and_then(|(_, d)| serde_json::from_slice::<TcTokenEntry>(&d).ok()),
                    None => None,
                };
                if let Some(next) = update(current) {
                    let row = this
                        .tc_row(&owned, &next)
                        .map_err(|e| diesel::result::Error::QueryBuilderError(e.into()))?;
                    diesel::insert_into(e::wa_store_entries)
                        .values(&row)
                        .on_conflict((e::store_id, e::kind, e::lookup))
                        .do_update()
                        .set((
                            e::ts.eq(excluded(e::ts)),
                            e::ts2.eq(excluded(e::ts2)),
                            e::flag.eq(excluded(e::flag)),
                            e::value.eq(excluded(e::value)),
                        ))
                        .prepared()
                        .execute(conn)
                        .await?;
                }
                Ok(())
            })
            .await;
        self.tc_forget(Some(jid));
        updated.map_err(db_error)
    }
}

fn key32(data: &[u8]) -> Result<[u8; 32]> {
    data.try_into()
        .map_err(|_| StoreError::Validation(format!("identity key has {} bytes", data.len())))
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

#[async_trait]
impl SignalStore for PgKeyStore {
    async fn put_identity(&self, address: &str, key: [u8; 32]) -> Result<()> {
        let row = self.identity_row(address, &key)?;
        self.upsert(vec![row]).await
    }

    async fn put_identities_batch(&self, identities: &[(Arc<str>, [u8; 32])]) -> Result<()> {
        let rows = identities
            .iter()
            .map(|(a, k)| self.identity_row(a, k))
            .collect::<Result<Vec<_>>>()?;
        self.upsert(rows).await
    }

    async fn load_identity(&self, address: &str) -> Result<Option<[u8; 32]>> {
        self.get(Kind::Identity, address.as_bytes())
            .await?
            .map(|d| key32(&d))
            .transpose()
    }

    async fn delete_identity(&self, address: &str) -> Result<()> {
        self.delete(Kind::Identity, &[address.as_bytes()])
            .await
            .map(drop)
    }

    async fn get_session(&self, address: &str) -> Result<Option<Bytes>> {
        match self.session_row_of(address).await? {
            Some(row) => Ok(Some(Bytes::from(self.open(&row)?.1))),
            None => Ok(None),
        }
    }

    async fn put_session(&self, address: &str, session: &[u8]) -> Result<()> {
        let row = self.session_row(address, session)?;
        self.absent_forget(Some(&[address]));
        let written = self.upsert(vec![row]).await;
        self.absent_forget(Some(&[address]));
        written
    }

    async fn put_sessions_batch(&self, sessions: &[(Arc<str>, Bytes)]) -> Result<()> {
        let rows = sessions
            .iter()
            .map(|(a, s)| self.session_row(a, s))
            .collect::<Result<Vec<_>>>()?;
        let addresses: Vec<&str> = sessions.iter().map(|(a, _)| a.as_ref()).collect();
        self.absent_forget(Some(&addresses));
        let written = self.upsert(rows).await;
        self.absent_forget(Some(&addresses));
        written
    }

    async fn delete_session(&self, address: &str) -> Result<()> {
        let deleted = self
            .delete(Kind::Session, &[address.as_bytes()])
            .await
            .map(drop);
        self.absent_forget(Some(&[address]));
        deleted
    }

    async fn has_session(&self, address: &str) -> Result<bool> {
        Ok(self.session_row_of(address).await?.is_some())
    }

    async fn has_signal_state_for_user(&self, user: &str) -> Result<bool> {
        counted("get", "session_or_identity");
        use wa_store_entries::dsl as e;
        let mut conn = self.pool.get().await.map_err(db_error)?;
        let found: Option<i16> = e::wa_store_entries
            .filter(e::store_id.eq(self.store_id))
            .filter(e::kind.eq_any([Kind::Session as i16, Kind::Identity as i16]))
            .filter(e::grp.eq(self.user_group(user)))
            .select(e::kind)
            .first(&mut conn)
            .await
            .optional()
            .map_err(db_error)?;
        Ok(found.is_some())
    }

    async fn store_prekey(&self, id: u32, record: &[u8], uploaded: bool) -> Result<()> {
        let row = self.prekey_row(id, record, uploaded)?;
        self.upsert(vec![row]).await
    }

    async fn store_prekeys_batch(&self, keys: &[(u32, Bytes)], uploaded: bool) -> Result<()> {
        let rows = keys
            .iter()
            .map(|(id, r)| self.prekey_row(*id, r, uploaded))
            .collect::<Result<Vec<_>>>()?;
        self.upsert(rows).await
    }

    async fn load_prekey(&self, id: u32) -> Result<Option<Bytes>> {
        Ok(self
            .get(Kind::PreKey, &id.to_be_bytes())
            .await?
            .map(Bytes::from))
    }

    async fn load_prekeys_batch(&self, ids: &[u32]) -> Result<Vec<(u32, Bytes)>> {
        use wa_store_entries::dsl as e;
        let wanted: Vec<i64> = ids.iter().map(|i| i64::from(*i)).collect();
        let mut conn = self.pool.get().await.map_err(db_error)?;
        let rows: Vec<EntryRow> = e::wa_store_entries
            .filter(e::store_id.eq(self.store_id))
            .filter(e::kind.eq(Kind::PreKey as i16))
            .filter(e::num.eq_any(wanted))
            .select(EntryRow::as_select())
            .load(&mut conn)
            .await
            .map_err(db_error)?;
        let mut by_id = HashMap::new();
        for r in &rows {
            let (_, data) = self.open(r)?;
            by_id.insert(r.num.unwrap_or(-1), Bytes::from(data));
        }
        Ok(ids
            .iter()
            .filter_map(|id| by_id.get(&i64::from(*id)).map(|d| (*id, d.clone())))
            .collect())
    }

    async fn mark_prekeys_uploaded(&self, ids: &[u32]) -> Result<()> {
        use wa_store_entries::dsl as e;
        let wanted: Vec<i64> = ids.iter().map(|i| i64::from(*i)).collect();
        let mut conn = self.pool.get().await.map_err(db_error)?;
        diesel::update(
            e::wa_store_entries
                .filter(e::store_id.eq(self.store_id))
                .filter(e::kind.eq(Kind::PreKey as i16))
                .filter(e::num.eq_any(wanted)),
        )
        .set(e::flag.eq(true))
        .prepared()
        .execute(&mut conn)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn remove_prekey(&self, id: u32) -> Result<()> {
        self.delete(Kind::PreKey, &[&id.to_be_bytes()])
            .await
            .map(drop)
    }

    async fn get_max_prekey_id(&self) -> Result<u32> {
        use diesel::dsl::max;
        use wa_store_entries::dsl as e;
        let mut conn = self.pool.get().await.map_err(db_error)?;
        let m: Option<i64> = e::wa_store_entries
            .filter(e::store_id.eq(self.store_id))
            .filter(e::kind.eq(Kind::PreKey as i16))
            .select(max(e::num))
            .first(&mut conn)
            .await
            .map_err(db_error)?;
        Ok(m.and_then(|v| u32::try_from(v).ok()).unwrap_or(0))
    }

    async fn store_signed_prekey(&self, id: u32, record: &[u8]) -> Result<()> {
        self.put(
            Kind::SignedPreKey,
            &id.to_be_bytes(),
            record,
            Extra {
                num: Some(i64::from(id)),
                ..Extra::default()
            },
        )
        .await
    }

    async fn load_signed_prekey(&self, id: u32) -> Result<Option<Vec<u8>>> {
        self.get(Kind::SignedPreKey, &id.to_be_bytes()).await
    }

    async fn load_all_signed_prekeys(&self) -> Result<Vec<(u32, Vec<u8>)>> {
        let mut out = Vec::new();
        for r in self.scan(Kind::SignedPreKey, None).await? {
            let (_, data) = self.open(&r)?;
            out.push((r.num.and_then(|n| u32::try_from(n).ok()).unwrap_or(0), data));
        }
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }

    async fn remove_signed_prekey(&self, id: u32) -> Result<()> {
        self.delete(Kind::SignedPreKey, &[&id.to_be_bytes()])
            .await
            .map(drop)
    }

    async fn put_sender_key(&self, address: &str, record: &[u8]) -> Result<()> {
        self.put(
            Kind::SenderKey,
            address.as_bytes(),
            record,
            Extra::default(),
        )
        .await
    }

    async fn put_sender_keys_batch(&self, sender_keys: &[(Arc<str>, Bytes)]) -> Result<()> {
        let rows = sender_keys
            .iter()
            .map(|(a, r)| self.row(Kind::SenderKey, a.as_bytes(), r, &Extra::default()))
            .collect::<Result<Vec<_>>>()?;
        self.upsert(rows).await
    }

    async fn get_sender_key(&self, address: &str) -> Result<Option<Vec<u8>>> {
        self.get(Kind::SenderKey, address.as_bytes()).await
    }

    async fn delete_sender_key(&self, address: &str) -> Result<()> {
        self.delete(Kind::SenderKey, &[address.as_bytes()])
            .await
            .map(drop)
    }
}

#[async_trait]
impl AppSyncStore for PgKeyStore {
    async fn get_sync_key(&self, key_id: &[u8]) -> Result<Option<AppStateSyncKey>> {
        self.get_json(Kind::SyncKey, key_id).await
    }

    async fn set_sync_key(&self, key_id: &[u8], key: AppStateSyncKey) -> Result<()> {
        self.put_json(Kind::SyncKey, key_id, &key, Extra::default())
            .await?;
        self.put(Kind::Meta, LATEST_SYNC_KEY, key_id, Extra::default())
            .await
    }

    async fn get_version(&self, name: &str) -> Result<HashState> {
        Ok(self
            .get_json(Kind::Version, name.as_bytes())
            .await?
            .unwrap_or_default())
    }

    async fn set_version(&self, name: &str, state: HashState) -> Result<()> {
        self.put_json(Kind::Version, name.as_bytes(), &state, Extra::default())
            .await
    }

    async fn put_mutation_macs(
        &self,
        name: &str,
        _version: u64,
        mutations: &[AppStateMutationMAC],
    ) -> Result<()> {
        let grp = self.group(b"collection", name.as_bytes());
        let rows = mutations
            .iter()
            .map(|m| {
                self.row(
                    Kind::MutationMac,
                    &composite(&[name.as_bytes(), &m.index_mac]),
                    &m.value_mac,
                    &Extra {
                        grp: Some(&grp),
                        ..Extra::default()
                    },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        self.upsert(rows).await
    }

    async fn get_mutation_mac(&self, name: &str, index_mac: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get(Kind::MutationMac, &composite(&[name.as_bytes(), index_mac]))
            .await
    }

    async fn delete_mutation_macs(&self, name: &str, index_macs: &[Vec<u8>]) -> Result<()> {
        let keys: Vec<Vec<u8>> = index_macs
            .iter()
            .map(|m| composite(&[name.as_bytes(), m]))
            .collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        self.delete(Kind::MutationMac, &refs).await.map(drop)
    }

    async fn clear_mutation_macs(&self, name: &str) -> Result<()> {
        let grp = self.group(b"collection", name.as_bytes());
        self.delete_group(Kind::MutationMac, Some(grp), None)
            .await
            .map(drop)
    }

    async fn get_latest_sync_key_id(&self) -> Result<Option<Vec<u8>>> {
        self.get(Kind::Meta, LATEST_SYNC_KEY).await
    }
}

#[async_trait]
impl ProtocolStore for PgKeyStore {
    async fn get_sender_key_devices(&self, group_jid: &str) -> Result<Vec<(String, bool)>> {
        let grp = self.group(b"group", group_jid.as_bytes());
        let mut out = Vec::new();
        for r in self.scan(Kind::SenderKeyDevice, Some(grp)).await? {
            let (_, data) = self.open(&r)?;
            let device = String::from_utf8(data).map_err(serde_error)?;
            out.push((device, r.flag));
        }
        Ok(out)
    }

    async fn set_sender_key_status(&self, group_jid: &str, entries: &[(&str, bool)]) -> Result<()> {
        let grp = self.group(b"group", group_jid.as_bytes());
        let rows = entries
            .iter()
            .map(|(device, has_key)| {
                let grp2 = self.group(b"device", device.as_bytes());
                self.row(
                    Kind::SenderKeyDevice,
                    &composite(&[group_jid.as_bytes(), device.as_bytes()]),
                    device.as_bytes(),
                    &Extra {
                        grp: Some(&grp),
                        grp2: Some(&grp2),
                        flag: *has_key,
                        ..Extra::default()
                    },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        self.upsert(rows).await
    }

    async fn clear_sender_key_devices(&self, group_jid: &str) -> Result<()> {
        let grp = self.group(b"group", group_jid.as_bytes());
        self.delete_group(Kind::SenderKeyDevice, Some(grp), None)
            .await
            .map(drop)
    }

    async fn delete_sender_key_device_rows(&self, device_jids: &[&str]) -> Result<()> {
        if device_jids.is_empty() {
            return Ok(());
        }
        let devices = device_jids
            .iter()
            .map(|d| self.group(b"device", d.as_bytes()))
            .collect();
        self.delete_group(Kind::SenderKeyDevice, None, Some(devices))
            .await
            .map(drop)
    }

    async fn clear_all_sender_key_devices(&self) -> Result<()> {
        self.delete_group(Kind::SenderKeyDevice, None, None)
            .await
            .map(drop)
    }

    async fn get_lid_mapping(&self, lid: &str) -> Result<Option<LidPnMappingEntry>> {
        self.get_json(Kind::LidMapping, lid.as_bytes()).await
    }

    async fn get_pn_mapping(&self, phone: &str) -> Result<Option<LidPnMappingEntry>> {
        let Some(lid) = self.get(Kind::PnMapping, phone.as_bytes()).await? else {
            return Ok(None);
        };
        self.get_json(Kind::LidMapping, &lid).await
    }

    async fn put_lid_mapping(&self, entry: &LidPnMappingEntry) -> Result<()> {
        if let Some(old) = self.get_lid_mapping(&entry.lid).await?
            && old.phone_number != entry.phone_number
        {
            self.delete(Kind::PnMapping, &[old.phone_number.as_bytes()])
                .await?;
        }
        let data = serde_json::to_vec(entry).map_err(serde_error)?;
        let rows = vec![
            self.row(
                Kind::LidMapping,
                entry.lid.as_bytes(),
                &data,
                &Extra::default(),
            )?,
            self.row(
                Kind::PnMapping,
                entry.phone_number.as_bytes(),
                entry.lid.as_bytes(),
                &Extra::default(),
            )?,
        ];
        self.upsert(rows).await
    }

    async fn get_all_lid_mappings(&self) -> Result<Vec<LidPnMappingEntry>> {
        let mut out = Vec::new();
        for r in self.scan(Kind::LidMapping, None).await? {
            let (_, data) = self.open(&r)?;
            out.push(serde_json::from_slice(&data).map_err(serde_error)?);
        }
        Ok(out)
    }

    async fn save_base_key(&self, address: &str, message_id: &str, base_key: &[u8]) -> Result<()> {
        self.put(
            Kind::BaseKey,
            &composite(&[address.as_bytes(), message_id.as_bytes()]),
            base_key,
            Extra::default(),
        )
        .await
    }

    async fn has_same_base_key(
        &self,
        address: &str,
        message_id: &str,
        current_base_key: &[u8],
    ) -> Result<bool> {
        Ok(self
            .get(
                Kind::BaseKey,
                &composite(&[address.as_bytes(), message_id.as_bytes()]),
            )
            .await?
            .is_some_and(|stored| stored == current_base_key))
    }

    async fn delete_base_key(&self, address: &str, message_id: &str) -> Result<()> {
        self.delete(
            Kind::BaseKey,
            &[&composite(&[address.as_bytes(), message_id.as_bytes()])],
        )
        .await
        .map(drop)
    }

    async fn update_device_list(&self, record: DeviceListRecord) -> Result<()> {
        self.put_json(
            Kind::DeviceList,
            record.user.as_bytes(),
            &record,
            Extra::default(),
        )
        .await
    }

    async fn update_device_lists(&self, records: Vec<DeviceListRecord>) -> Result<()> {
        let rows = records
            .iter()
            .map(|r| {
                let data = serde_json::to_vec(r).map_err(serde_error)?;
                self.row(
                    Kind::DeviceList,
                    r.user.as_bytes(),
                    &data,
                    &Extra::default(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        self.upsert(rows).await
    }

    async fn get_devices(&self, user: &str) -> Result<Option<DeviceListRecord>> {
        self.get_json(Kind::DeviceList, user.as_bytes()).await
    }

    async fn delete_devices(&self, user: &str) -> Result<()> {
        self.delete(Kind::DeviceList, &[user.as_bytes()])
            .await
            .map(drop)
    }

    async fn get_group_metadata(&self, group_jid: &str) -> Result<Option<Vec<u8>>> {
        self.get(Kind::GroupMetadata, group_jid.as_bytes()).await
    }

    async fn put_group_metadata(&self, group_jid: &str, blob: &[u8]) -> Result<()> {
        self.put(
            Kind::GroupMetadata,
            group_jid.as_bytes(),
            blob,
            Extra::default(),
        )
        .await
    }

    async fn delete_group_metadata(&self, group_jid: &str) -> Result<()> {
        self.delete(Kind::GroupMetadata, &[group_jid.as_bytes()])
            .await
            .map(drop)
    }

    async fn get_tc_token(&self, jid: &str) -> Result<Option<TcTokenEntry>> {
        let generation = {
            let cache = self.tc_cache();
            if let Some(known) = cache.entries.get(jid) {
                return Ok(known.clone());
            }
            cache.generation
        };
        let stored: Option<TcTokenEntry> = self.get_json(Kind::TcToken, jid.as_bytes()).await?;
        let mut cache = self.tc_cache();
        if cache.generation == generation {
            if cache.entries.len() >= TC_TOKENS_REMEMBERED {
                cache.entries.clear();
            }
            cache.entries.insert(jid.to_owned(), stored.clone());
        }
        Ok(stored)
    }

    async fn put_tc_token(&self, jid: &str, entry: &TcTokenEntry) -> Result<()> {
        let row = self.tc_row(jid, entry)?;
        let stored = self.upsert(vec![row]).await;
        self.tc_forget(Some(jid));
        stored
    }

    async fn delete_tc_token(&self, jid: &str) -> Result<()> {
        let deleted = self.delete(Kind::TcToken, &[jid.as_bytes()]).await;
        self.tc_forget(Some(jid));
        deleted.map(drop)
    }

    async fn get_all_tc_token_jids(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for r in self.scan(Kind::TcToken, None).await? {
            let (key, _) = self.open(&r)?;
            out.push(String::from_utf8(key).map_err(serde_error)?);
        }
        Ok(out)
    }

    async fn delete_expired_tc_tokens(&self, token_cutoff: i64, sender_cutoff: i64) -> Result<u32> {
        use wa_store_entries::dsl as e;
        let mut conn = self.pool.get().await.map_err(db_error)?;
        // Dropped only when both windows are stale: the received token is
        // empty or older than its cutoff, and the sender bucket is absent or
        // older than its own.
        let n = diesel::delete(
            e::wa_store_entries
                .filter(e::store_id.eq(self.store_id))
                .filter(e::kind.eq(Kind::TcToken as i16))
                .filter(e::flag.eq(true).or(e::ts.lt(token_cutoff)))
                .filter(e::ts2.is_null().or(e::ts2.lt(sender_cutoff))),
        )
        .execute(&mut conn)
        .await;
        self.tc_forget(None);
        let n = n.map_err(db_error)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn touch_tc_token_sender_timestamp(
        &self,
        jid: &str,
        sender_timestamp: i64,
    ) -> Result<()> {
        self.update_tc_token(jid, |existing| {
            Some(match existing {
                Some(e) => TcTokenEntry {
                    sender_timestamp: Some(
                        e.sender_timestamp
                            .map_or(sender_timestamp, |s| s.max(sender_timestamp)),
                    ),
                    ..e
                },
                None => TcTokenEntry {
                    token: Vec::new(),
                    token_timestamp: sender_timestamp,
                    sender_timestamp: Some(sender_timestamp),
                },
            })
        })
        .await
    }

    async fn store_received_tc_token(
        &self,
        jid: &str,
        token: &[u8],
        token_timestamp: i64,
    ) -> Result<()> {
        let token = token.to_vec();
        self.update_tc_token(jid, move |existing| {
            if let Some(e) = &existing
                && !e.token.is_empty()
                && token_timestamp < e.token_timestamp
            {
                return None;
            }
            Some(TcTokenEntry {
                token,
                token_timestamp,
                sender_timestamp: existing.and_then(|e| e.sender_timestamp),
            })
        })
        .await
    }

    async fn store_sent_message(
        &self,
        chat_jid: &str,
        message_id: &str,
        payload: &[u8],
    ) -> Result<()> {
        self.put(
            Kind::SentMessage,
            &composite(&[chat_jid.as_bytes(), message_id.as_bytes()]),
            payload,
            Extra {
                ts: Some(now_secs()),
                ..Extra::default()
            },
        )
        .await
    }

    async fn take_sent_message(&self, chat_jid: &str, message_id: &str) -> Result<Option<Vec<u8>>> {
        counted("take", "sent_message");
        use wa_store_entries::dsl as e;
        let lookup = self.lookup(
            Kind::SentMessage,
            &composite(&[chat_jid.as_bytes(), message_id.as_bytes()]),
        );
        let mut conn = self.pool.get().await.map_err(db_error)?;
        // DELETE ... RETURNING: two retry receipts can never both take it.
        let row: Option<EntryRow> = diesel::delete(
            e::wa_store_entries
                .filter(e::store_id.eq(self.store_id))
                .filter(e::kind.eq(Kind::SentMessage as i16))
                .filter(e::lookup.eq(lookup)),
        )
        .returning(EntryRow::as_returning())
        .get_result(&mut conn)
        .await
        .optional()
        .map_err(db_error)?;
        row.map(|r| self.open(&r).map(|(_, d)| d)).transpose()
    }

    async fn delete_expired_sent_messages(&self, cutoff_timestamp: i64) -> Result<u32> {
        self.delete_older(Kind::SentMessage, cutoff_timestamp).await
    }

    async fn store_pending_inbound(
        &self,
        chat: &str,
        sender: &str,
        id: &str,
        message: &[u8],
    ) -> Result<()> {
        self.put(
            Kind::PendingInbound,
            &composite(&[chat.as_bytes(), sender.as_bytes(), id.as_bytes()]),
            message,
            Extra {
                ts: Some(now_secs()),
                ..Extra::default()
            },
        )
        .await
    }

    async fn get_pending_inbound(
        &self,
        chat: &str,
        sender: &str,
        id: &str,
    ) -> Result<Option<Vec<u8>>> {
        self.get(
            Kind::PendingInbound,
            &composite(&[chat.as_bytes(), sender.as_bytes(), id.as_bytes()]),
        )
        .await
    }

    async fn delete_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> Result<()> {
        self.delete(
            Kind::PendingInbound,
            &[&composite(&[
                chat.as_bytes(),
                sender.as_bytes(),
                id.as_bytes(),
            ])],
        )
        .await
        .map(drop)
    }

    async fn delete_expired_pending_inbound(&self, cutoff_timestamp: i64) -> Result<u32> {
        self.delete_older(Kind::PendingInbound, cutoff_timestamp)
            .await
    }
}

#[async_trait]
impl MsgSecretStore for PgKeyStore {
    async fn put_msg_secrets(&self, entries: Vec<MsgSecretEntry>) -> Result<usize> {
        counted("upsert", "msg_secret");
        let stored = entries.len();
        // Entries for one message within the batch merge here, with what is
        // already stored in the upsert itself: one statement, no read first.
        let mut merged: Vec<(Vec<u8>, MsgSecretEntry)> = Vec::with_capacity(stored);
        let mut position: HashMap<Vec<u8>, usize> = HashMap::with_capacity(stored);
        for entry in entries {
            let key = composite(&[
                entry.chat.as_bytes(),
                entry.sender.as_bytes(),
                entry.msg_id.as_bytes(),
            ]);
            match position.get(&key) {
                Some(&i) => {
                    let prev = &mut merged[i].1;
                    prev.secret = entry.secret;
                    prev.expires_at = merge_msg_secret_expiry(prev.expires_at, entry.expires_at);
                    prev.message_ts =
                        merge_msg_secret_message_ts(prev.message_ts, entry.message_ts);
                }
                None => {
                    position.insert(key.clone(), merged.len());
                    merged.push((key, entry));
                }
            }
        }
        let rows = merged
            .iter()
            .map(|(key, entry)| {
                self.row(
                    Kind::MsgSecret,
                    key,
                    &entry.secret,
                    &Extra {
                        ts: Some(entry.expires_at),
                        ts2: Some(entry.message_ts),
                        ..Extra::default()
                    },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        use diesel::dsl::sql;
        use diesel::sql_types::{BigInt, Nullable};
        use wa_store_entries::dsl as e;
        let mut conn = self.pool.get().await.map_err(db_error)?;
        for chunk in rows.chunks(1000) {
            diesel::insert_into(e::wa_store_entries)
                .values(chunk)
                .on_conflict((e::store_id, e::kind, e::lookup))
                .do_update()
                .set((
                    // merge_msg_secret_expiry: 0 (never) wins, else the later.
                    e::ts.eq(sql::<Nullable<BigInt>>(
                        "CASE WHEN wa_store_entries.ts = 0 OR excluded.ts = 0 THEN 0 \
                         ELSE GREATEST(wa_store_entries.ts, excluded.ts) END",
                    )),
                    // merge_msg_secret_message_ts: the later.
                    e::ts2.eq(sql::<Nullable<BigInt>>(
                        "GREATEST(wa_store_entries.ts2, excluded.ts2)",
                    )),
                    e::value.eq(excluded(e::value)),
                ))
                .execute(&mut conn)
                .await
                .map_err(db_error)?;
        }
        Ok(stored)
    }

    async fn get_msg_secret(
        &self,
        chat: &str,
        sender: &str,
        msg_id: &str,
    ) -> Result<Option<Vec<u8>>> {
        self.get(
            Kind::MsgSecret,
            &composite(&[chat.as_bytes(), sender.as_bytes(), msg_id.as_bytes()]),
        )
        .await
    }

    async fn get_msg_secret_with_ts(
        &self,
        chat: &str,
        sender: &str,
        msg_id: &str,
    ) -> Result<Option<(Vec<u8>, i64)>> {
        let key = composite(&[chat.as_bytes(), sender.as_bytes(), msg_id.as_bytes()]);
        match self.get_row(Kind::MsgSecret, &key).await? {
            Some(row) => Ok(Some((self.open(&row)?.1, row.ts2.unwrap_or(0)))),
            None => Ok(None),
        }
    }

    async fn delete_expired_msg_secrets(&self, cutoff_timestamp: i64) -> Result<u32> {
        use wa_store_entries::dsl as e;
        let mut conn = self.pool.get().await.map_err(db_error)?;
        // 0 means "never expires".
        let n = diesel::delete(
            e::wa_store_entries
                .filter(e::store_id.eq(self.store_id))
                .filter(e::kind.eq(Kind::MsgSecret as i16))
                .filter(e::ts.ne(0))
                .filter(e::ts.le(cutoff_timestamp)),
        )
        .execute(&mut conn)
        .await
        .map_err(db_error)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }
}

#[async_trait]
impl DeviceStore for PgKeyStore {
    async fn save(&self, device: &Device) -> Result<()> {
        counted("save", "device");
        use sha2::Digest;
        use wa_store_devices::dsl as d;
        let plain = serde_json::to_vec(device).map_err(serde_error)?;
        let digest: [u8; 32] = sha2::Sha256::digest(&plain).into();
        let mut row = self.device.lock().await;
        row.prefetched = None;
        if row.stored == Some(digest) {
            return Ok(());
        }
        let value = self
            .cipher
            .seal(&self.aad(0, b"device"), &plain)
            .map_err(serde_error)?;
        let mut conn = self.pool.get().await.map_err(db_error)?;
        // Unknown until it commits: a failed or cancelled write leaves no digest behind.
        row.stored = None;
        diesel::insert_into(d::wa_store_devices)
            .values((d::store_id.eq(self.store_id), d::value.eq(&value)))
            .on_conflict(d::store_id)
            .do_update()
            .set((d::value.eq(&value), d::updated_at.eq(diesel::dsl::now)))
            .prepared()
            .execute(&mut conn)
            .await
            .map_err(db_error)?;
        row.stored = Some(digest);
        Ok(())
    }

    async fn load(&self) -> Result<Option<Device>> {
        use sha2::Digest;
        let mut row = self.device.lock().await;
        let sealed = match row.prefetched.take() {
            Some(v) => Some(v),
            None => self.read_device_row().await?,
        };
        let Some(sealed) = sealed else {
            row.stored = None;
            return Ok(None);
        };
        let plain = self
            .cipher
            .open(&self.aad(0, b"device"), &sealed)
            .map_err(serde_error)?;
        let device = serde_json::from_slice(&plain).map_err(serde_error)?;
        row.stored = Some(sha2::Sha256::digest(&plain).into());
        Ok(Some(device))
    }

    async fn exists(&self) -> Result<bool> {
        // Read under the lock, as `load` and `save` do: a save committing meanwhile cannot
        // be shadowed by the older row it would otherwise leave prefetched.
        let mut row = self.device.lock().await;
        row.prefetched = self.read_device_row().await?;
        Ok(row.prefetched.is_some())
    }

    async fn create(&self) -> Result<i32> {
        // One device per store: "creating" materialises its default state.
        if !self.exists().await? {
            self.save(&Device::new()).await?;
        }
        Ok(1)
    }
}
