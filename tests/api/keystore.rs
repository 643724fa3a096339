//! The Postgres key store behind whatsapp-rust: every part of its `Backend`
//! round-trips, stores never see each other's rows, and nothing readable
//! sits in the table.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;
use wacore::store::traits::{
    AppStateSyncKey, AppSyncStore, DeviceListRecord, DeviceStore, LidPnMappingEntry,
    MsgSecretEntry, MsgSecretStore, ProtocolStore, SignalStore, TcTokenEntry,
};
use wagate::db::{DbPool, build_pool, run_migrations};
use wagate::keystore::{PgKeyStore, StoreCipher};

use crate::helpers::fresh_database;

async fn migrated_pool() -> (DbPool, String) {
    let url = fresh_database().await;
    run_migrations(&url).await.expect("migrations");
    let pool = build_pool(&url, 4, Duration::from_secs(5))
        .await
        .expect("pool");
    (pool, url)
}

fn store(pool: &DbPool, id: Uuid, master: [u8; 32]) -> PgKeyStore {
    PgKeyStore::new(pool.clone(), id, Arc::new(StoreCipher::new(&master)))
}

#[actix_web::test]
async fn signal_state_round_trips_in_batches_and_deletes() {
    let (pool, _) = migrated_pool().await;
    let s = store(&pool, Uuid::new_v4(), [1; 32]);

    s.put_identity("15550001111@s.whatsapp.net", [7; 32])
        .await
        .unwrap();
    s.put_identities_batch(&[
        (Arc::from("15550002222:1@s.whatsapp.net"), [8; 32]),
        (Arc::from("15550002222:1@s.whatsapp.net"), [9; 32]), // last write wins
    ])
    .await
    .unwrap();
    assert_eq!(
        s.load_identity("15550001111@s.whatsapp.net").await.unwrap(),
        Some([7; 32])
    );
    assert_eq!(
        s.load_identity("15550002222:1@s.whatsapp.net")
            .await
            .unwrap(),
        Some([9; 32])
    );
    assert!(s.has_signal_state_for_user("15550002222").await.unwrap());
    assert!(
        !s.has_signal_state_for_user("1555000222").await.unwrap(),
        "prefix of a user is not the user"
    );
    s.delete_identity("15550001111@s.whatsapp.net")
        .await
        .unwrap();
    assert_eq!(
        s.load_identity("15550001111@s.whatsapp.net").await.unwrap(),
        None
    );

    s.put_session("4915100000001.0", b"session-a")
        .await
        .unwrap();
    s.put_sessions_batch(&[(
        Arc::from("4915100000002.0"),
        Bytes::from_static(b"session-b"),
    )])
    .await
    .unwrap();
    assert_eq!(
        s.get_session("4915100000001.0").await.unwrap().as_deref(),
        Some(&b"session-a"[..])
    );
    assert!(s.has_session("4915100000002.0").await.unwrap());
    assert!(s.has_signal_state_for_user("4915100000001").await.unwrap());
    s.put_session("4915100000001.0", b"session-a2")
        .await
        .unwrap();
    assert_eq!(
        s.get_session("4915100000001.0").await.unwrap().as_deref(),
        Some(&b"session-a2"[..])
    );
    s.delete_session("4915100000002.0").await.unwrap();
    assert!(!s.has_session("4915100000002.0").await.unwrap());

    let keys: Vec<(u32, Bytes)> = (1..=812)
        .map(|i| (i, Bytes::from(format!("prekey-{i}"))))
        .collect();
    s.store_prekeys_batch(&keys, false).await.unwrap();
    assert_eq!(s.get_max_prekey_id().await.unwrap(), 812);
    assert_eq!(
        s.load_prekey(17).await.unwrap().as_deref(),
        Some(&b"prekey-17"[..])
    );
    let batch = s.load_prekeys_batch(&[3, 999, 5]).await.unwrap();
    assert_eq!(
        batch,
        vec![(3, Bytes::from("prekey-3")), (5, Bytes::from("prekey-5"))]
    );
    s.mark_prekeys_uploaded(&[1, 2]).await.unwrap();
    s.remove_prekey(812).await.unwrap();
    assert_eq!(s.get_max_prekey_id().await.unwrap(), 811);
    assert_eq!(s.load_prekey(812).await.unwrap(), None);

    s.store_signed_prekey(2, b"signed-2").await.unwrap();
    s.store_signed_prekey(1, b"signed-1").await.unwrap();
    assert_eq!(
        s.load_signed_prekey(1).await.unwrap().as_deref(),
        Some(&b"signed-1"[..])
    );
    assert_eq!(
        s.load_all_signed_prekeys().await.unwrap(),
        vec![(1, b"signed-1".to_vec()), (2, b"signed-2".to_vec())]
    );
    s.remove_signed_prekey(1).await.unwrap();
    assert_eq!(s.load_all_signed_prekeys().await.unwrap().len(), 1);

    s.put_sender_key("group@g.us::15550001111.0", b"sk")
        .await
        .unwrap();
    s.put_sender_keys_batch(&[(
        Arc::from("group@g.us::15550002222.0"),
        Bytes::from_static(b"sk2"),
    )])
    .await
    .unwrap();
    assert_eq!(
        s.get_sender_key("group@g.us::15550002222.0").await.unwrap(),
        Some(b"sk2".to_vec())
    );
    s.delete_sender_key("group@g.us::15550001111.0")
        .await
        .unwrap();
    assert_eq!(
        s.get_sender_key("group@g.us::15550001111.0").await.unwrap(),
        None
    );
}

#[actix_web::test]
async fn app_state_protocol_and_secrets_round_trip() {
    let (pool, _) = migrated_pool().await;
    let s = store(&pool, Uuid::new_v4(), [2; 32]);

    let key = AppStateSyncKey {
        key_data: vec![1; 32],
        fingerprint: vec![2; 4],
        timestamp: 42,
    };
    s.set_sync_key(b"key-1", key.clone()).await.unwrap();
    s.set_sync_key(b"key-2", key).await.unwrap();
    assert_eq!(
        s.get_sync_key(b"key-1").await.unwrap().unwrap().timestamp,
        42
    );
    assert_eq!(
        s.get_latest_sync_key_id().await.unwrap(),
        Some(b"key-2".to_vec())
    );
    assert_eq!(
        s.get_version("regular").await.unwrap().version,
        0,
        "absent version is the default"
    );
    let mut version = s.get_version("regular").await.unwrap();
    version.version = 7;
    s.set_version("regular", version).await.unwrap();
    assert_eq!(s.get_version("regular").await.unwrap().version, 7);

    use wacore::appstate::processor::AppStateMutationMAC;
    let macs: Vec<_> = (0u8..3)
        .map(|i| AppStateMutationMAC {
            index_mac: vec![i; 32],
            value_mac: vec![i + 10; 32],
        })
        .collect();
    s.put_mutation_macs("regular", 7, &macs).await.unwrap();
    s.put_mutation_macs("critical_block", 1, &macs[..1])
        .await
        .unwrap();
    assert_eq!(
        s.get_mutation_mac("regular", &[1; 32]).await.unwrap(),
        Some(vec![11; 32])
    );
    let many = s
        .get_mutation_macs("regular", &[[0; 32], [9; 32]])
        .await
        .unwrap();
    assert_eq!(many.len(), 1);
    s.delete_mutation_macs("regular", &[vec![0; 32]])
        .await
        .unwrap();
    assert_eq!(s.get_mutation_mac("regular", &[0; 32]).await.unwrap(), None);
    s.clear_mutation_macs("regular").await.unwrap();
    assert_eq!(s.get_mutation_mac("regular", &[2; 32]).await.unwrap(), None);
    assert!(
        s.get_mutation_mac("critical_block", &[0; 32])
            .await
            .unwrap()
            .is_some(),
        "other collections stay"
    );

    s.set_sender_key_status(
        "g1@g.us",
        &[("a:1@s.whatsapp.net", true), ("b:0@s.whatsapp.net", false)],
    )
    .await
    .unwrap();
    s.set_sender_key_status("g2@g.us", &[("a:1@s.whatsapp.net", true)])
        .await
        .unwrap();
    let mut devices = s.get_sender_key_devices("g1@g.us").await.unwrap();
    devices.sort();
    assert_eq!(
        devices,
        vec![
            ("a:1@s.whatsapp.net".into(), true),
            ("b:0@s.whatsapp.net".into(), false)
        ]
    );
    s.delete_sender_key_device_rows(&["a:1@s.whatsapp.net"])
        .await
        .unwrap();
    assert_eq!(s.get_sender_key_devices("g1@g.us").await.unwrap().len(), 1);
    assert!(
        s.get_sender_key_devices("g2@g.us")
            .await
            .unwrap()
            .is_empty()
    );
    s.clear_all_sender_key_devices().await.unwrap();
    assert!(
        s.get_sender_key_devices("g1@g.us")
            .await
            .unwrap()
            .is_empty()
    );

    let mapping = |phone: &str| LidPnMappingEntry {
        lid: "100000000000001".into(),
        phone_number: phone.into(),
        created_at: 1,
        updated_at: 2,
        learning_source: "usync".into(),
    };
    s.put_lid_mapping(&mapping("15550001111")).await.unwrap();
    assert_eq!(
        s.get_pn_mapping("15550001111").await.unwrap().unwrap().lid,
        "100000000000001"
    );
    s.put_lid_mapping(&mapping("15550009999")).await.unwrap();
    assert!(
        s.get_pn_mapping("15550001111").await.unwrap().is_none(),
        "a moved LID drops its old phone"
    );
    assert_eq!(
        s.get_lid_mapping("100000000000001")
            .await
            .unwrap()
            .unwrap()
            .phone_number,
        "15550009999"
    );
    assert_eq!(s.get_all_lid_mappings().await.unwrap().len(), 1);

    s.save_base_key("addr", "m1", b"base").await.unwrap();
    assert!(s.has_same_base_key("addr", "m1", b"base").await.unwrap());
    assert!(!s.has_same_base_key("addr", "m1", b"other").await.unwrap());
    s.delete_base_key("addr", "m1").await.unwrap();
    assert!(!s.has_same_base_key("addr", "m1", b"base").await.unwrap());

    let record = DeviceListRecord {
        user: "15550001111".into(),
        devices: vec![],
        timestamp: 5,
        phash: Some("2:abc".into()),
        raw_id: None,
    };
    s.update_device_lists(vec![record]).await.unwrap();
    assert_eq!(
        s.get_devices("15550001111")
            .await
            .unwrap()
            .unwrap()
            .phash
            .as_deref(),
        Some("2:abc")
    );
    s.delete_devices("15550001111").await.unwrap();
    assert!(s.get_devices("15550001111").await.unwrap().is_none());

    // tc tokens: each writer owns its field and newer wins. Read first, so every later
    // read also proves a write replaces what the store remembered.
    assert!(s.get_tc_token("c@lid").await.unwrap().is_none());
    s.touch_tc_token_sender_timestamp("c@lid", 100)
        .await
        .unwrap();
    s.store_received_tc_token("c@lid", b"tok", 200)
        .await
        .unwrap();
    s.store_received_tc_token("c@lid", b"old", 150)
        .await
        .unwrap();
    s.touch_tc_token_sender_timestamp("c@lid", 90)
        .await
        .unwrap();
    let t: TcTokenEntry = s.get_tc_token("c@lid").await.unwrap().unwrap();
    assert_eq!(
        (t.token.as_slice(), t.token_timestamp, t.sender_timestamp),
        (&b"tok"[..], 200, Some(100))
    );
    assert_eq!(
        s.get_all_tc_token_jids().await.unwrap(),
        vec!["c@lid".to_string()]
    );
    assert_eq!(
        s.delete_expired_tc_tokens(150, 50).await.unwrap(),
        0,
        "the token is still live"
    );
    assert_eq!(
        s.delete_expired_tc_tokens(300, 150).await.unwrap(),
        1,
        "both windows stale"
    );
    assert!(
        s.get_tc_token("c@lid").await.unwrap().is_none(),
        "expired, not remembered"
    );
    let entry = TcTokenEntry {
        token: b"put".to_vec(),
        token_timestamp: 400,
        sender_timestamp: None,
    };
    s.put_tc_token("d@lid", &entry).await.unwrap();
    assert_eq!(
        s.get_tc_token("d@lid").await.unwrap().unwrap().token,
        b"put"
    );
    s.delete_tc_token("d@lid").await.unwrap();
    assert!(
        s.get_tc_token("d@lid").await.unwrap().is_none(),
        "deleted, not remembered"
    );

    s.store_sent_message("chat", "m1", b"payload")
        .await
        .unwrap();
    assert_eq!(
        s.take_sent_message("chat", "m1").await.unwrap(),
        Some(b"payload".to_vec())
    );
    assert_eq!(
        s.take_sent_message("chat", "m1").await.unwrap(),
        None,
        "taken once"
    );
    s.store_sent_message("chat", "m2", b"p").await.unwrap();
    assert_eq!(s.delete_expired_sent_messages(i64::MAX).await.unwrap(), 1);

    s.store_pending_inbound("chat", "sender", "id", b"msg")
        .await
        .unwrap();
    assert_eq!(
        s.get_pending_inbound("chat", "sender", "id").await.unwrap(),
        Some(b"msg".to_vec())
    );
    s.delete_pending_inbound("chat", "sender", "id")
        .await
        .unwrap();
    assert_eq!(
        s.get_pending_inbound("chat", "sender", "id").await.unwrap(),
        None
    );

    let secret = |expires_at, message_ts| MsgSecretEntry {
        chat: Arc::from("chat"),
        sender: Arc::from("sender"),
        msg_id: Arc::from("id"),
        secret: [5; 32],
        expires_at,
        message_ts,
    };
    assert_eq!(s.put_msg_secrets(vec![secret(1000, 10)]).await.unwrap(), 1);
    s.put_msg_secrets(vec![secret(2000, 5)]).await.unwrap();
    assert_eq!(
        s.get_msg_secret_with_ts("chat", "sender", "id")
            .await
            .unwrap(),
        Some((vec![5; 32], 10))
    );
    assert_eq!(
        s.delete_expired_msg_secrets(1500).await.unwrap(),
        0,
        "expiry merged to the later one"
    );
    assert_eq!(s.delete_expired_msg_secrets(2000).await.unwrap(), 1);

    assert!(!s.exists().await.unwrap());
    assert_eq!(s.create().await.unwrap(), 1);
    assert!(s.exists().await.unwrap());
    let mut device = DeviceStore::load(&s).await.unwrap().unwrap();
    device.push_name = "Acme".into();
    s.save(&device).await.unwrap();
    assert_eq!(
        DeviceStore::load(&s).await.unwrap().unwrap().push_name,
        "Acme"
    );
}

#[actix_web::test]
async fn stores_are_isolated_encrypted_and_purgeable() {
    let (pool, url) = migrated_pool().await;
    let (a_id, b_id) = (Uuid::new_v4(), Uuid::new_v4());
    let a = store(&pool, a_id, [3; 32]);
    let b = store(&pool, b_id, [3; 32]);
    a.put_session("4915112345678.0", b"alice-session-bytes")
        .await
        .unwrap();
    a.put_identity("4915112345678@s.whatsapp.net", [4; 32])
        .await
        .unwrap();
    a.create().await.unwrap();
    assert!(b.get_session("4915112345678.0").await.unwrap().is_none());
    assert!(!b.has_signal_state_for_user("4915112345678").await.unwrap());
    assert!(!b.exists().await.unwrap());

    // Nothing readable at rest: no phone number, no session bytes.
    let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
    #[derive(diesel::QueryableByName)]
    struct Raw {
        #[diesel(sql_type = diesel::sql_types::Bytea)]
        blob: Vec<u8>,
    }
    let raw: Vec<Raw> = diesel::sql_query(
        "SELECT lookup || value || coalesce(grp, ''::bytea) AS blob FROM wa_store_entries \
         UNION ALL SELECT value AS blob FROM wa_store_devices",
    )
    .load(&mut conn)
    .await
    .unwrap();
    assert!(!raw.is_empty());
    for r in &raw {
        for needle in [&b"4915112345678"[..], b"alice-session-bytes"] {
            assert!(
                !r.blob.windows(needle.len()).any(|w| w == needle),
                "plaintext at rest"
            );
        }
    }

    // A row moved to another store does not open there; a wrong key opens nothing.
    diesel::sql_query(format!(
        "UPDATE wa_store_entries SET store_id = '{b_id}' WHERE store_id = '{a_id}' AND kind = 2"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    assert!(
        b.get_session("4915112345678.0").await.is_err()
            || b.get_session("4915112345678.0").await.unwrap().is_none()
    );
    diesel::sql_query(format!(
        "UPDATE wa_store_entries SET store_id = '{a_id}' WHERE store_id = '{b_id}'"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let wrong_key = store(&pool, a_id, [9; 32]);
    assert!(
        wrong_key
            .get_session("4915112345678.0")
            .await
            .unwrap()
            .is_none(),
        "lookup keys differ too"
    );
    assert!(
        DeviceStore::load(&wrong_key).await.is_err(),
        "the device does not decrypt with another key"
    );

    a.purge().await.unwrap();
    assert!(a.get_session("4915112345678.0").await.unwrap().is_none());
    assert!(!a.exists().await.unwrap());
}

/// The real client on the Postgres store: paired once, it comes back after a
/// restart (a new store instance on a new pool) with no QR code and its
/// Signal sessions intact.
#[cfg(feature = "sandbox")]
#[actix_web::test]
async fn a_real_client_comes_back_from_postgres_without_a_new_qr() {
    use wagate_sim::whatsapp_rust::types::events::Event;
    use wagate_sim::whatsapp_rust::waproto::whatsapp as wa;
    use wagate_sim::whatsapp_rust::{Jid, store::traits::Backend};
    use wagate_sim::{InProcessTransportFactory, SimClient, SimClientOptions, Simulator};

    const WAIT: Duration = Duration::from_secs(20);
    let (pool, url) = migrated_pool().await;
    let id = Uuid::new_v4();
    let sim = Simulator::new();
    let backend: Arc<dyn Backend> = Arc::new(store(&pool, id, [5; 32]));
    let c = SimClient::start(
        InProcessTransportFactory::new(sim.clone()),
        backend,
        SimClientOptions::default(),
    )
    .await
    .unwrap();
    let qr = c.wait_qr(0, WAIT).await.unwrap();
    sim.scan_qr(&qr, "+15550001111").await.unwrap();
    c.wait_connected(0, WAIT).await.unwrap();
    let sent = c
        .client
        .send_message(
            Jid::pn("4915112345678"),
            wa::Message {
                conversation: Some("before".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    sim.wait_for_contact_message("4915112345678", WAIT, |m| m.id == sent.message_id)
        .await
        .unwrap();
    c.stop().await;
    drop(pool);

    // "Restart": a new pool, a new store instance, the same rows.
    let pool = build_pool(&url, 4, Duration::from_secs(5)).await.unwrap();
    let backend: Arc<dyn Backend> = Arc::new(store(&pool, id, [5; 32]));
    let again = SimClient::start(
        InProcessTransportFactory::new(sim.clone()),
        backend,
        SimClientOptions::default(),
    )
    .await
    .unwrap();
    again.wait_connected(0, WAIT).await.unwrap();
    let qr_shown = again
        .events
        .seen(0, |e| matches!(e, Event::PairingQrCode(_)));
    assert!(!qr_shown, "a paired device must not be asked to pair again");
    assert_eq!(sim.linked_devices("15550001111"), vec![1]);

    // The Signal sessions survived: both directions still decrypt.
    let mark = again.events.mark();
    sim.inject_text("4915112345678", "15550001111", "after")
        .await
        .unwrap();
    again.wait_text(mark, WAIT, "after").await.unwrap();
    let sent = again
        .client
        .send_message(
            Jid::pn("4915112345678"),
            wa::Message {
                conversation: Some("after restart".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let got = sim
        .wait_for_contact_message("4915112345678", WAIT, |m| m.id == sent.message_id)
        .await
        .unwrap();
    assert_eq!(got.text.as_deref(), Some("after restart"));
    again.stop().await;
}

/// A client whose runtime is an actix arbiter lives on that arbiter: it
/// pairs and talks, and its tasks run on the arbiter's thread.
#[cfg(feature = "sandbox")]
#[actix_web::test]
async fn a_real_client_runs_on_its_arbiter() {
    use wagate_actors::runtime::ArbiterRuntime;
    use wagate_sim::{InProcessTransportFactory, SimClient, SimClientOptions, Simulator};

    const WAIT: Duration = Duration::from_secs(20);
    let (pool, _) = migrated_pool().await;
    let sim = Simulator::new();
    let arbiter = actix::Arbiter::new();
    let c = SimClient::start_on(
        InProcessTransportFactory::new(sim.clone()),
        Arc::new(store(&pool, Uuid::new_v4(), [6; 32])),
        SimClientOptions::default(),
        ArbiterRuntime::new(arbiter.handle()),
    )
    .await
    .unwrap();
    let qr = c.wait_qr(0, WAIT).await.unwrap();
    sim.scan_qr(&qr, "15550005555").await.unwrap();
    c.wait_connected(0, WAIT).await.unwrap();
    let mark = c.events.mark();
    sim.inject_text("4915112345678", "15550005555", "on the arbiter")
        .await
        .unwrap();
    c.wait_text(mark, WAIT, "on the arbiter").await.unwrap();

    // Every event handler ran on the arbiter's thread, none on the test's.
    let threads = c.events.threads();
    assert!(!threads.is_empty());
    let here = std::thread::current()
        .name()
        .unwrap_or_default()
        .to_string();
    assert!(
        threads
            .iter()
            .all(|t| t.starts_with("actix-rt|") && t.contains("|arbiter:") && *t != here),
        "client tasks ran off the arbiter: {threads:?}"
    );
    c.stop().await;
    arbiter.stop();
    arbiter.join().unwrap();
}

/// The row's version: Postgres gives every written row version a new `xmin`.
async fn device_row_version(url: &str, id: Uuid) -> Option<String> {
    #[derive(diesel::QueryableByName)]
    struct Version {
        #[diesel(sql_type = diesel::sql_types::Text)]
        xmin: String,
    }
    let mut conn = AsyncPgConnection::establish(url).await.unwrap();
    diesel::sql_query("SELECT xmin::text AS xmin FROM wa_store_devices WHERE store_id = $1")
        .bind::<diesel::sql_types::Uuid, _>(id)
        .get_results::<Version>(&mut conn)
        .await
        .unwrap()
        .pop()
        .map(|v| v.xmin)
}

#[actix_web::test]
async fn a_device_saved_unchanged_is_not_written_again() {
    let (pool, url) = migrated_pool().await;
    let id = Uuid::new_v4();
    let s = store(&pool, id, [7; 32]);
    s.create().await.unwrap();
    let mut device = DeviceStore::load(&s).await.unwrap().unwrap();
    let created = device_row_version(&url, id).await;
    assert!(created.is_some());

    s.save(&device).await.unwrap();
    assert_eq!(
        device_row_version(&url, id).await,
        created,
        "nothing changed"
    );

    device.push_name = "Acme".into();
    s.save(&device).await.unwrap();
    let renamed = device_row_version(&url, id).await;
    assert_ne!(renamed, created, "a change is written");

    // A new client of the same session starts from what it loads.
    let next = store(&pool, id, [7; 32]);
    assert!(next.exists().await.unwrap());
    let loaded = DeviceStore::load(&next).await.unwrap().unwrap();
    assert_eq!(loaded.push_name, "Acme");
    next.save(&loaded).await.unwrap();
    assert_eq!(device_row_version(&url, id).await, renamed);

    // After a purge the same device is written again: the row is gone.
    next.purge().await.unwrap();
    assert_eq!(device_row_version(&url, id).await, None);
    next.save(&loaded).await.unwrap();
    assert!(device_row_version(&url, id).await.is_some());
    assert_eq!(
        DeviceStore::load(&next).await.unwrap().unwrap().push_name,
        "Acme"
    );
}

/// whatsapp-rust asks again and again for some sessions that do not exist (a consumed
/// prekey's phone-number address whose session moved to the LID, at every cache flush): a
/// miss is remembered until this store writes or deletes that session.
#[actix_web::test]
async fn a_missing_session_costs_one_read_until_it_is_written() {
    let (pool, _) = migrated_pool().await;
    let s = store(&pool, Uuid::new_v4(), [3; 32]);
    let reads = || {
        wagate::metrics::KEYSTORE_OPERATIONS
            .with_label_values(&["get", "session"])
            .get()
    };
    let address = "15550001111:1@c.us.0";
    let before = reads();
    assert!(s.get_session(address).await.unwrap().is_none());
    assert_eq!(reads(), before + 1);
    for _ in 0..5 {
        assert!(s.get_session(address).await.unwrap().is_none());
        assert!(!s.has_session(address).await.unwrap());
    }
    assert_eq!(reads(), before + 1, "misses after the first are remembered");
    // Another address is its own miss.
    assert!(!s.has_session("15550002222:1@c.us.0").await.unwrap());
    assert_eq!(reads(), before + 2);

    // Written: found at once, also by a fresh store of the same id (it is in Postgres).
    s.put_session(address, b"session-1").await.unwrap();
    assert_eq!(
        s.get_session(address).await.unwrap().as_deref(),
        Some(&b"session-1"[..])
    );
    let fresh = store(&pool, s.store_id(), [3; 32]);
    assert!(fresh.has_session(address).await.unwrap());
    // Deleted: absent again, and a batch write brings it back.
    s.delete_session(address).await.unwrap();
    assert!(s.get_session(address).await.unwrap().is_none());
    s.put_sessions_batch(&[(Arc::from(address), Bytes::from_static(b"session-2"))])
        .await
        .unwrap();
    assert_eq!(
        s.get_session(address).await.unwrap().as_deref(),
        Some(&b"session-2"[..])
    );
    // A purge forgets everything it knew, absent or not.
    assert!(!s.has_session("15550003333:1@c.us.0").await.unwrap());
    s.purge().await.unwrap();
    assert!(s.get_session(address).await.unwrap().is_none());
    s.put_session("15550003333:1@c.us.0", b"x").await.unwrap();
    assert!(s.has_session("15550003333:1@c.us.0").await.unwrap());
}
