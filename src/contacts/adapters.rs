//! The contact port of the session actors, in Postgres: presence changes become
//! `presence.update` events; what messages reveal about contacts is kept.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use wagate_actors::ports::{ContactFacts, ContactStore, GroupChange, PresenceChange};
use wagate_actors::session::SessionSpec;
use wagate_actors::session::groups::GroupChangeKind as Happened;

use crate::db::DbPool;
use crate::events::{
    EventHub, EventPayload, GroupChangeKind, GroupChanged, PresenceUpdate, insert_event,
};

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

    async fn group_changed(
        &self,
        session: &SessionSpec,
        change: GroupChange,
    ) -> anyhow::Result<()> {
        let mut conn = self.db.get().await?;
        let event = insert_event(
            &mut conn,
            session.tenant_id,
            Some(session.id),
            &EventPayload::Group(group_event(change)),
        )
        .await?;
        self.hub.publish([event]);
        Ok(())
    }
}

/// A group change as the tenant's `group.*` event tells it.
pub fn group_event(change: GroupChange) -> GroupChanged {
    let at = i64::try_from(change.at)
        .ok()
        .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
        .filter(|_| change.at > 0)
        .unwrap_or_else(Utc::now);
    let mut event = GroupChanged {
        kind: GroupChangeKind::Updated,
        group: change.group,
        by: change.by,
        action: None,
        participants: None,
        subject: None,
        description: None,
        at,
    };
    match change.kind {
        Happened::Created { subject } => {
            event.kind = GroupChangeKind::Created;
            event.subject = Some(subject);
        }
        Happened::Participants {
            action,
            participants,
        } => {
            event.kind = GroupChangeKind::Participants;
            event.action = Some(action.to_owned());
            event.participants = Some(participants);
        }
        Happened::Subject { subject } => event.subject = Some(subject),
        Happened::Description { description } => event.description = Some(description),
    }
    event
}
