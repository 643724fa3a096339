//! Accepted messages are stored in groups: the sends that arrive together (from any tenants)
//! share one transaction and one multi-row insert, and each is answered only after that
//! transaction committed, so a 202 still means the message is durable.

use uuid::Uuid;

use super::store::{self, MessageRow};
use crate::db::DbPool;
use crate::db::group_commit::{self, GroupCommit};

/// Accepts stored in one statement at the most.
const ACCEPTS_PER_WRITE: usize = 256;

/// The node's writer of accepted messages (one per node, shared by every HTTP worker).
#[derive(Clone)]
pub struct AcceptWriter {
    writes: GroupCommit<MessageRow, Option<MessageRow>>,
}

impl AcceptWriter {
    /// Starts the writer on the current runtime; `queue_limit` is each tenant's queue room.
    pub fn start(db: DbPool, queue_limit: i64) -> Self {
        let writes = GroupCommit::start(
            "accepted_messages",
            ACCEPTS_PER_WRITE,
            move |rows: Vec<MessageRow>| {
                let db = db.clone();
                async move { write_group(&db, rows, queue_limit).await }
            },
        );
        Self { writes }
    }

    /// Stores `row` with the others waiting. `None`: not stored by the group (its idempotency
    /// key is taken, or its tenant's queue looked full): the caller looks at it alone.
    pub async fn store(&self, row: MessageRow) -> anyhow::Result<Option<MessageRow>> {
        self.writes.submit(row).await
    }
}

async fn write_group(
    db: &DbPool,
    rows: Vec<MessageRow>,
    queue_limit: i64,
) -> Vec<anyhow::Result<Option<MessageRow>>> {
    let written = async {
        let mut conn = db.get().await?;
        anyhow::Ok(store::insert_outgoing_batch(&mut conn, &rows, queue_limit).await?)
    }
    .await;
    match written {
        Ok(stored) => {
            let mut stored: std::collections::HashMap<Uuid, MessageRow> =
                stored.into_iter().map(|m| (m.id, m)).collect();
            rows.iter().map(|r| Ok(stored.remove(&r.id))).collect()
        }
        // One row can fail a whole statement (its session deleted meanwhile, say): each is
        // then stored alone, so it fails alone.
        Err(e) if rows.len() > 1 => {
            group_commit::fell_back("accepted_messages");
            tracing::warn!(error = %e, rows = rows.len(), "a group of accepted messages failed; storing each alone");
            let mut results = Vec::with_capacity(rows.len());
            for row in rows {
                results.push(
                    async {
                        let mut conn = db.get().await?;
                        anyhow::Ok(
                            store::insert_message_with_chat(
                                &mut conn,
                                &row,
                                None,
                                Some(queue_limit),
                            )
                            .await?,
                        )
                    }
                    .await,
                );
            }
            results
        }
        Err(e) => vec![Err(e)],
    }
}
