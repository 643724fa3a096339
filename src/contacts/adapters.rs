//! The contact port of the session actors, in Postgres: presence changes become
//! `presence.update` events; what messages reveal about contacts is kept.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use wagate_actors::ports::{ContactFacts, ContactStore, PresenceChange};
use wagate_actors::session::SessionSpec;

use crate::db::DbPool;
use crate::events::{EventHub, EventPayload, PresenceUpdate, insert_event};

pub struct PgContactStore {
    pub db: DbPool,
    pub hub: EventHub,
}

#[async_trait]
impl ContactStore for PgContactStore {
    async fn presence(&self, session: &SessionSpec, change: PresenceChange) -> anyhow::Result<()> {
        let payload = EventPayload::Presence(PresenceUpdate {
            phone: change.contact,
            state: change.state.to_owned(),
            last_seen: change.last_seen.map(DateTime::<Utc>::from),
            chat: change.chat,
            expired: change.expired,
        });
        let mut conn = self.db.get().await?;
        let event = insert_event(&mut conn, session.tenant_id, Some(session.id), &payload).await?;
        self.hub.publish([event]);
        Ok(())
    }

    async fn learned(&self, session: &SessionSpec, facts: Vec<ContactFacts>) -> anyhow::Result<()> {
        let mut conn = self.db.get().await?;
        for f in &facts {
            super::store::learn(&mut conn, session.tenant_id, session.id, f).await?;
        }
        Ok(())
    }
}
