//! Where each session of this node lives, readable from any thread without a message: the
//! accept path hands a new message straight to its session's actor instead of asking the
//! supervisor (and it its pool) for the actor's address first.
//!
//! The pools keep it: an actor is entered when it is spawned and removed when its session is
//! unhosted. An actor that died without being unhosted (its arbiter went down) is still
//! entered until its pool replaces it: readers check that its mailbox is open and otherwise
//! ask the supervisor, as before.

use std::collections::HashMap;
use std::sync::RwLock;

use uuid::Uuid;

use crate::session::SessionHandle;

#[derive(Default)]
pub struct SessionDirectory {
    sessions: RwLock<HashMap<Uuid, SessionHandle>>,
}

impl SessionDirectory {
    /// The live actor of `session` on this node, if it has one.
    pub fn get(&self, session: Uuid) -> Option<SessionHandle> {
        let sessions = self
            .sessions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sessions
            .get(&session)
            .filter(|h| h.addr.connected())
            .cloned()
    }

    pub(crate) fn insert(&self, session: Uuid, handle: SessionHandle) {
        self.sessions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(session, handle);
    }

    /// Removes `session` if `handle` is still its entry (a newer actor may have replaced it).
    pub(crate) fn remove(&self, session: Uuid, handle: &SessionHandle) {
        let mut sessions = self
            .sessions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if sessions
            .get(&session)
            .is_some_and(|h| h.addr == handle.addr)
        {
            sessions.remove(&session);
        }
    }
}
