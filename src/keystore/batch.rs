//! Group commit for the key store's one-row writes. Every message sent writes a few entries
//! (the Signal session, the sent message kept for retries, its message secret), each in its
//! own statement; across hundreds of sessions that is most of what Postgres does. One task
//! per pool takes every write waiting at that moment and stores them in one statement, and
//! each writer's call returns only when its row is committed, so nothing is less durable.
//! Under no load a batch is one row and costs a channel hop.

use std::collections::HashMap;
use std::sync::Arc;

use diesel::sql_types::{Array, BigInt, Binary, Bool, Nullable, SmallInt, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;
use wacore::store::error::StoreError;

use super::{EntryRow, db_error};
use crate::db::{DbPool, PrepareOnce};

/// Rows stored by one statement at most.
const MAX_BATCH: usize = 512;

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
    row: EntryRow,
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

    /// Stores one entry with whatever else is waiting; returns once it is committed. `Err`
    /// with the row when the writer is gone (its runtime stopped): write it directly.
    pub(super) async fn upsert(
        &self,
        row: EntryRow,
    ) -> Result<Result<(), StoreError>, Box<EntryRow>> {
        let (done, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(p)) = self.queue.send(Pending { row, done }) {
            return Err(Box::new(p.row));
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

/// One batch at a time: a later write of a key is never committed before an earlier one.
async fn run(pool: DbPool, mut rx: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let result = write(&pool, &batch).await.map_err(|e| e.to_string());
        for p in batch {
            let _ = p.done.send(result.clone());
        }
    }
}

async fn write(pool: &DbPool, batch: &[Pending]) -> Result<(), StoreError> {
    // One statement may not touch a row twice: the last write of a key wins.
    let mut last: HashMap<(Uuid, i16, &[u8]), usize> = HashMap::with_capacity(batch.len());
    for (i, p) in batch.iter().enumerate() {
        last.insert((p.row.store_id, p.row.kind, &p.row.lookup), i);
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();
    let rows: Vec<&EntryRow> = keep.into_iter().map(|i| &batch[i].row).collect();
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
