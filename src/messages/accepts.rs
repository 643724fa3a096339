//! Accepted messages are stored in groups: the sends that arrive together (from any tenants)
//! share one transaction and one multi-row insert, and each is answered only after that
//! transaction committed, so a 202 still means the message is durable.

use uuid::Uuid;

use super::store::{self, MessageRow};
use crate::db::DbPool;
use crate::db::group_commit::{GroupCommit, GroupWrite};

/// Accepts stored in one statement at the most.
const ACCEPTS_PER_WRITE: usize = 256;

/// What became of an accepted message handed to the writer.
pub enum Accepted {
    Stored(MessageRow),
    /// Not stored: its idempotency key is taken, or its tenant's queue looked full. The caller
    /// looks at it alone.
    Refused(MessageRow),
}

/// The node's writer of accepted messages (one per node, shared by every HTTP worker).
#[derive(Clone)]
pub struct AcceptWriter {
    writes: GroupCommit<AcceptGroup>,
}

impl AcceptWriter {
    /// Starts the writer on the current runtime; `queue_limit` is each tenant's queue room.
    pub fn start(db: DbPool, queue_limit: i64) -> Self {
        Self {
            writes: GroupCommit::start(AcceptGroup { db, queue_limit }, ACCEPTS_PER_WRITE),
        }
    }

    /// Stores `row` with the others waiting.
    pub async fn store(&self, row: MessageRow) -> anyhow::Result<Accepted> {
        self.writes.submit(row).await
    }
}

struct AcceptGroup {
    db: DbPool,
    queue_limit: i64,
}

impl GroupWrite for AcceptGroup {
    type Job = MessageRow;
    type Answer = Accepted;
    const KIND: &'static str = "accepted_messages";

    async fn write_group(&self, rows: &[MessageRow]) -> anyhow::Result<Vec<Accepted>> {
        let mut conn = self.db.get().await?;
        let stored = store::insert_outgoing_batch(&mut conn, rows, self.queue_limit).await?;
        let mut stored: std::collections::HashMap<Uuid, MessageRow> =
            stored.into_iter().map(|m| (m.id, m)).collect();
        Ok(rows
            .iter()
            .map(|r| match stored.remove(&r.id) {
                Some(m) => Accepted::Stored(m),
                None => Accepted::Refused(r.clone()),
            })
            .collect())
    }

    async fn write_one(&self, row: MessageRow) -> anyhow::Result<Accepted> {
        let mut conn = self.db.get().await?;
        Ok(
            match store::insert_message_with_chat(&mut conn, &row, None, Some(self.queue_limit))
                .await?
            {
                Some(m) => Accepted::Stored(m),
                None => Accepted::Refused(row),
            },
        )
    }
}
