//! Subscription tiers: each picks a connection pool (and so the arbiter packing), quotas and
//! send rates.

use serde::{Deserialize, Serialize};

/// A tenant's tier: picks the pool (and so the arbiter packing) its sessions live in.
/// The one tier type: the API's, the store's and the tree's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Standard,
    Professional,
    Enterprise,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Standard, Tier::Professional, Tier::Enterprise];

    pub fn as_str(&self) -> &'static str {
        match self {
            Tier::Standard => "standard",
            Tier::Professional => "professional",
            Tier::Enterprise => "enterprise",
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == s)
    }
}
