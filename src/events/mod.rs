//! Events after they are stored: handing them to the `NotificationActor` (and, with Redis,
//! to the other nodes), and the WebSocket stream `GET /api/v1/events`.

pub mod relay;
pub mod ws;

use std::sync::Arc;

use actix::Addr;
use wagate_actors::notification::{NotificationActor, Publish, StoredEvent};

use crate::sessions::store::EventRow;

/// Where stored events go to be fanned out. Cheap to clone.
#[derive(Clone)]
pub struct EventHub {
    pub notifier: Addr<NotificationActor>,
}

impl EventHub {
    /// Publishes events that are committed (never before: a subscriber that sees an event
    /// must find it, and every event before it, in the store).
    pub fn publish(&self, rows: impl IntoIterator<Item = EventRow>) {
        let events: Vec<Arc<StoredEvent>> = rows.into_iter().map(stored).collect();
        for e in &events {
            crate::metrics::EVENTS_PUBLISHED
                .with_label_values(&[e.kind.as_str()])
                .inc();
        }
        if !events.is_empty() {
            self.notifier.do_send(Publish {
                events,
                relay: true,
            });
        }
    }
}

/// A stored row as the fan-out carries it: serialized once.
pub fn stored(row: EventRow) -> Arc<StoredEvent> {
    let json: Arc<str> = row.to_json().to_string().into();
    Arc::new(StoredEvent {
        tenant_id: row.tenant_id,
        id: row.id,
        session_id: row.session_id,
        kind: row.kind,
        json,
    })
}
