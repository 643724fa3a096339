//! Group commit for the key store's small writes. Every message sent writes a few entries
//! (the Signal sessions, the sent message kept for retries, its message secret), each call
//! in its own statement; across hundreds of sessions that is most of what Postgres does. One task
//! per pool takes every write waiting at that moment and stores them in one statement, and
//! each writer's call returns only when its row is committed, so nothing is less durable.
//! Under no load a batch is one row and costs a channel hop.

use std::collections::HashMap;
use std::sync::Arc;

use diesel::sql_types::{Array, BigInt, Binary, Bool, Nullable, SmallInt, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;
use wacore::store::error::StoreError;

use super::{EntryRow, db_error};
use crate::db::{DbPool, PrepareOnce};

/// Rows stored by one statement at most (a larger write is taken alone).
pub(super) const MAX_BATCH: usize = 512;

/// One statement for any number of rows (the arrays are the columns), so it is prepared
/// once. On a conflict the entry takes every new column, as the one-row write does.
const UPSERT_ROWS: &str = "\
    INSERT INTO wa_store_entries (store_id, kind, lookup, grp, grp2, num, ts, ts2, flag, value) \
    SELECT * FROM unnest($1::uuid[], $2::int2[], $3::bytea[], $4::bytea[], $5::bytea[], \
                         $6::int8[], $7::int8[], $8::int8[], $9::bool[], $10::bytea[]) \
    ON CONFLICT (store_id, kind, lookup) DO UPDATE SET \
      grp = excluded.grp, grp2 = excluded.grp2, num = excluded.num, ts = excluded.ts, \
      ts2 = excluded.ts2, flag = excluded.flag, value = excluded.value";

struct Pending {
    rows: Vec<EntryRow>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The writer of one pool's batched entries.
pub struct WriteBatcher {
    queue: mpsc::UnboundedSender<Pending>,
}

impl WriteBatcher {
    /// Starts the writer on the current runtime; it ends when the last handle is dropped.
    pub fn start(pool: DbPool) -> Arc<Self> {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, rx));
        Arc::new(Self { queue })
    }

    /// Stores entries with whatever else is waiting; returns once they are committed. `Err`
    /// with the rows when the writer is gone (its runtime stopped): write them directly.
    pub(super) async fn upsert(
        &self,
        rows: Vec<EntryRow>,
    ) -> Result<Result<(), StoreError>, Vec<EntryRow>> {
        let (done, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(p)) = self.queue.send(Pending { rows, done }) {
            return Err(p.rows);
        }
        Ok(match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(db_error(std::io::Error::other(e))),
            Err(_) => Err(db_error(std::io::Error::other(
                "the key store writer stopped before storing the entry",
            ))),
        })
    }
}

/// Batches written at once. Order is safe with more than one: a writer's call returns only
/// after its rows are committed, so its next write of a key always lands in a later batch;
/// and each batch locks its rows in key order, so two batches cannot deadlock.
const FLUSHES_AT_ONCE: usize = 4;

async fn run(pool: DbPool, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let flushes = Arc::new(Semaphore::new(FLUSHES_AT_ONCE));
    loop {
        // Taking a slot first lets writes pile up into the next batch while all are busy.
        let Ok(slot) = flushes.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut rows = first.rows.len();
        let mut batch = vec![first];
        while rows < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => {
                    rows += p.rows.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            let result = write(&pool, &batch).await.map_err(|e| e.to_string());
            drop(slot);
            for p in batch {
                let _ = p.done.send(result.clone());
            }
        });
    }
}

async fn write(pool: &DbPool, batch: &[Pending]) -> Result<(), StoreError> {
    // One statement may not touch a row twice: the last write of a key wins.
    let all: Vec<&EntryRow> = batch.iter().flat_map(|p| &p.rows).collect();
    let mut last: HashMap<(Uuid, i16, &[u8]), usize> = HashMap::with_capacity(all.len());
    for (i, r) in all.iter().enumerate() {
        last.insert((r.store_id, r.kind, &r.lookup), i);
    }
    let mut rows: Vec<&EntryRow> = last.into_values().map(|i| all[i]).collect();
    rows.sort_unstable_by(|a, b| {
        (a.store_id, a.kind, &a.lookup).cmp(&(b.store_id, b.kind, &b.lookup))
    });
    let mut conn = pool.get().await.map_err(db_error)?;
    diesel::sql_query(UPSERT_ROWS)
        .bind::<Array<SqlUuid>, _>(rows.iter().map(|r| r.store_id).collect::<Vec<_>>())
        .bind::<Array<SmallInt>, _>(rows.iter().map(|r| r.kind).collect::<Vec<_>>())
        .bind::<Array<Binary>, _>(rows.iter().map(|r| r.lookup.clone()).collect::<Vec<_>>())
        .bind::<Array<Nullable<Binary>>, _>(rows.iter().map(|r| r.grp.clone()).collect::<Vec<_>>())
        .bind::<Array<Nullable<Binary>>, _>(rows.iter().map(|r| r.grp2.clone()).collect::<Vec<_>>())
        .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.num).collect::<Vec<_>>())
        .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.ts).collect::<Vec<_>>())
        .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.ts2).collect::<Vec<_>>())
        .bind::<Array<Bool>, _>(rows.iter().map(|r| r.flag).collect::<Vec<_>>())
        .bind::<Array<Binary>, _>(rows.iter().map(|r| r.value.clone()).collect::<Vec<_>>())
        .prepared()
        .execute(&mut conn)
        .await
        .map_err(db_error)?;
    Ok(())
}
