//! Sends in flight at once on this node, per tier: the per-tier priority queues of the product brief, where each tier
//! has workers of its own. A flood from standard tenants fills only the standard slots, so
//! when the node is saturated a professional or enterprise session's message never waits
//! behind it, and the higher tiers get more of the node.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::tier::Tier;

/// One semaphore per tier; a session holds a permit of its tier's for the length of one
/// send (upload, encryption, the frame, storing the outcome).
#[derive(Debug)]
pub struct SendSlots {
    lanes: [Arc<Semaphore>; 3],
}

impl SendSlots {
    /// Slots per tier; each is at least one, so no tier can be starved entirely.
    pub fn new(standard: usize, professional: usize, enterprise: usize) -> Self {
        let lane = |n: usize| Arc::new(Semaphore::new(n.max(1)));
        Self {
            lanes: [lane(standard), lane(professional), lane(enterprise)],
        }
    }

    fn lane(&self, tier: Tier) -> &Arc<Semaphore> {
        match tier {
            Tier::Standard => &self.lanes[0],
            Tier::Professional => &self.lanes[1],
            Tier::Enterprise => &self.lanes[2],
        }
    }

    /// Waits for a free slot of the tier (first come, first served within the tier). `None`
    /// only if the semaphore were closed, which nothing does.
    pub async fn acquire(&self, tier: Tier) -> Option<OwnedSemaphorePermit> {
        self.lane(tier).clone().acquire_owned().await.ok()
    }

    /// Free slots of the tier right now.
    pub fn available(&self, tier: Tier) -> usize {
        self.lane(tier).available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_tier_does_not_hold_back_another() {
        let slots = SendSlots::new(1, 2, 0);
        let held = slots.acquire(Tier::Standard).await;
        assert_eq!(slots.available(Tier::Standard), 0);
        // Standard is full; enterprise (at least one slot) and professional are not.
        let e = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            slots.acquire(Tier::Enterprise),
        )
        .await
        .expect("enterprise waited behind standard");
        assert_eq!(slots.available(Tier::Professional), 2);
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            slots.acquire(Tier::Standard),
        )
        .await;
        assert!(waiting.is_err(), "a second standard send got a slot");
        drop((held, e));
        assert_eq!(slots.available(Tier::Standard), 1);
    }
}
