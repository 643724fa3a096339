//! What each kind of caller may do. A tenant's API keys are `owner` (everything) or
//! `read_only` (GET only); a member acts with the role the owner gave them:
//!
//! | role   | read | work chats, cards, messages | configure the tenant | members and keys |
//! |--------|------|-----------------------------|----------------------|------------------|
//! | owner  | yes  | yes                         | yes                  | yes              |
//! | admin  | yes  | yes                         | yes                  | no               |
//! | agent  | yes  | yes                         | no                   | no               |
//! | viewer | yes  | no                          | no                   | no               |
//!
//! The rule is decided here, once, from the method and the path, before any handler runs, so
//! a new route is covered by the table the day it is added (and `tests/api/members.rs` walks
//! every documented route with every role).

use actix_web::http::Method;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A member's role within their tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// Everything, including members and API keys.
    Owner,
    /// The tenant's configuration (sessions, webhooks, agents, flows, boards), not members or keys.
    Admin,
    /// Works conversations: messages, chats, contacts, cards, comments, notifications.
    Agent,
    /// Reads only.
    Viewer,
}

impl MemberRole {
    pub const ALL: [MemberRole; 4] = [
        MemberRole::Owner,
        MemberRole::Admin,
        MemberRole::Agent,
        MemberRole::Viewer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Owner => "owner",
            MemberRole::Admin => "admin",
            MemberRole::Agent => "agent",
            MemberRole::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<MemberRole> {
        MemberRole::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn permits(self, needed: Capability) -> bool {
        let rank = |c: Capability| match c {
            Capability::Read => 0,
            Capability::Work => 1,
            Capability::Configure => 2,
            Capability::Manage => 3,
        };
        let own = match self {
            MemberRole::Viewer => 0,
            MemberRole::Agent => 1,
            MemberRole::Admin => 2,
            MemberRole::Owner => 3,
        };
        own >= rank(needed)
    }
}

/// What a request needs, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    Read,
    /// Working conversations and the pipeline.
    Work,
    /// Changing how the tenant is set up.
    Configure,
    /// Members, API keys, the tenant itself.
    Manage,
}

impl Capability {
    pub fn describe(self) -> &'static str {
        match self {
            Capability::Read => "read",
            Capability::Work => "work conversations",
            Capability::Configure => "configure the tenant",
            Capability::Manage => "manage members and keys",
        }
    }
}

/// The capability a request on `path` (under `/api/v1`) with `method` needs.
pub fn required(method: &Method, path: &str) -> Capability {
    let rest = path.strip_prefix("/api/v1/").unwrap_or(path);
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let first = segments.first().copied().unwrap_or("");
    let is_read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    // Reads that show the tenant's set-up of people and activity.
    if is_read {
        return match first {
            "audit-log" => Capability::Configure,
            "tenants" if segments.get(2) == Some(&"api-keys") => Capability::Manage,
            _ => Capability::Read,
        };
    }
    match first {
        // A member changing their own password is theirs to do, whatever their role.
        "members" if segments.get(1) == Some(&"me") => Capability::Read,
        // Moving between tiers changes what the tenant pays: the owner's call.
        "members" | "tenants" | "tier" => Capability::Manage,
        "notifications" | "quick-replies" => Capability::Work,
        // Cards and comments are conversation work; the board and its columns are set-up.
        "boards" if segments.get(2).is_some_and(|s| *s == "cards") => Capability::Work,
        "sessions" => match segments.get(2).copied() {
            Some("messages" | "send" | "chats" | "contacts" | "presence" | "media") => {
                Capability::Work
            }
            _ => Capability::Configure,
        },
        _ => Capability::Configure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        let post = Method::POST;
        assert_eq!(required(&Method::GET, "/api/v1/flows"), Capability::Read);
        assert_eq!(required(&post, "/api/v1/flows"), Capability::Configure);
        assert_eq!(required(&post, "/api/v1/members"), Capability::Manage);
        assert_eq!(
            required(&post, "/api/v1/members/me/password"),
            Capability::Read
        );
        assert_eq!(
            required(&post, "/api/v1/sessions/x/messages"),
            Capability::Work
        );
        assert_eq!(
            required(&post, "/api/v1/sessions/x/stop"),
            Capability::Configure
        );
        assert_eq!(
            required(&post, "/api/v1/boards/b/cards/c/move"),
            Capability::Work
        );
        assert_eq!(
            required(&post, "/api/v1/boards/b/columns"),
            Capability::Configure
        );
        assert_eq!(
            required(&Method::GET, "/api/v1/audit-log"),
            Capability::Configure
        );
        assert!(MemberRole::Agent.permits(Capability::Work));
        assert!(!MemberRole::Agent.permits(Capability::Configure));
        assert!(!MemberRole::Viewer.permits(Capability::Work));
        assert!(!MemberRole::Admin.permits(Capability::Manage));
        assert!(MemberRole::Owner.permits(Capability::Manage));
    }
}
