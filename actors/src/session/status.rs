//! The session state machine's states.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

use serde::Serialize;

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Stopped,
    Starting,
    Qr,
    Pairing,
    Connected,
    Reconnecting,
    LoggedOut,
    Failed,
}

impl SessionStatus {
    pub const ALL: [SessionStatus; 8] = [
        SessionStatus::Stopped,
        SessionStatus::Starting,
        SessionStatus::Qr,
        SessionStatus::Pairing,
        SessionStatus::Connected,
        SessionStatus::Reconnecting,
        SessionStatus::LoggedOut,
        SessionStatus::Failed,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            SessionStatus::Stopped => "stopped",
            SessionStatus::Starting => "starting",
            SessionStatus::Qr => "qr",
            SessionStatus::Pairing => "pairing",
            SessionStatus::Connected => "connected",
            SessionStatus::Reconnecting => "reconnecting",
            SessionStatus::LoggedOut => "logged_out",
            SessionStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<SessionStatus> {
        SessionStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    fn index(self) -> u8 {
        SessionStatus::ALL
            .iter()
            .position(|s| *s == self)
            .unwrap_or(0) as u8
    }
}

impl fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status readable from other threads without messaging the actor.
#[derive(Debug)]
pub struct AtomicStatus(AtomicU8);

impl AtomicStatus {
    pub fn new(status: SessionStatus) -> Self {
        Self(AtomicU8::new(status.index()))
    }

    pub fn store(&self, status: SessionStatus) {
        self.0.store(status.index(), Ordering::Relaxed);
    }

    pub fn load(&self) -> SessionStatus {
        SessionStatus::ALL
            .get(self.0.load(Ordering::Relaxed) as usize)
            .copied()
            .unwrap_or(SessionStatus::Stopped)
    }
}
