//! Queue roles, numbered densely over the negotiated features.
//!
//! The spec lists the queues as inflateq (0), deflateq (1), statsq (2), free_page_vq (3) and
//! reporting_vq (4), each optional queue existing only with its feature. Linux (and every driver
//! that matters) skips the queues of features that were not negotiated and numbers the rest
//! densely: with `STATS_VQ` off and `REPORTING` on, the reporting queue is queue 2. The device
//! must compute roles from the *negotiated* features, never from fixed indices.

use crate::features::{Features, FREE_PAGE_HINT, REPORTING, STATS_VQ};

/// What a queue carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueRole {
    /// PFNs the driver puts into the balloon (plus the bitmap with `DEVICE_INIT_ON_INFLATE`).
    Inflate,
    /// PFNs the driver takes back.
    Deflate,
    /// The guest statistics buffer.
    Stats,
    /// Free page hints (migration aid).
    FreePageHint,
    /// Free page reporting.
    Reporting,
}

impl QueueRole {
    /// All roles in spec order.
    pub const ALL: [QueueRole; 5] = [
        QueueRole::Inflate,
        QueueRole::Deflate,
        QueueRole::Stats,
        QueueRole::FreePageHint,
        QueueRole::Reporting,
    ];

    /// Whether the queue exists under `features`.
    pub const fn present(self, features: Features) -> bool {
        match self {
            QueueRole::Inflate | QueueRole::Deflate => true,
            QueueRole::Stats => features.has(STATS_VQ),
            QueueRole::FreePageHint => features.has(FREE_PAGE_HINT),
            QueueRole::Reporting => features.has(REPORTING),
        }
    }

    /// A short lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            QueueRole::Inflate => "inflate",
            QueueRole::Deflate => "deflate",
            QueueRole::Stats => "stats",
            QueueRole::FreePageHint => "free-page-hint",
            QueueRole::Reporting => "reporting",
        }
    }
}

/// Maximum number of balloon queues.
pub const MAX_QUEUES: usize = 5;

/// The dense queue index -> role map for a feature set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueRoles {
    roles: [Option<QueueRole>; MAX_QUEUES],
    count: usize,
}

impl QueueRoles {
    /// Roles for `features` (negotiated features for a running device; offered features give
    /// the maximum number of queues a transport must provide).
    pub const fn from_features(features: Features) -> QueueRoles {
        let mut roles = [None; MAX_QUEUES];
        let mut count = 0;
        let mut i = 0;
        while i < QueueRole::ALL.len() {
            let role = QueueRole::ALL[i];
            if role.present(features) {
                roles[count] = Some(role);
                count += 1;
            }
            i += 1;
        }
        QueueRoles { roles, count }
    }

    /// Number of queues.
    pub const fn count(&self) -> usize {
        self.count
    }

    /// Role of queue `index`, `None` past the last queue.
    pub fn role(&self, index: usize) -> Option<QueueRole> {
        self.roles.get(index).copied().flatten()
    }

    /// Index of the queue with `role`, `None` when it does not exist.
    pub fn index(&self, role: QueueRole) -> Option<usize> {
        self.roles.iter().position(|r| *r == Some(role))
    }

    /// The roles in queue order.
    pub fn iter(&self) -> impl Iterator<Item = QueueRole> + '_ {
        self.roles.iter().take(self.count).flatten().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{Features, FREE_PAGE_HINT, REPORTING, STATS_VQ};

    #[test]
    fn base_queues_always_exist() {
        let r = QueueRoles::from_features(Features::EMPTY);
        assert_eq!(r.count(), 2);
        assert_eq!(r.role(0), Some(QueueRole::Inflate));
        assert_eq!(r.role(1), Some(QueueRole::Deflate));
        assert_eq!(r.role(2), None);
        assert_eq!(r.index(QueueRole::Reporting), None);
    }

    #[test]
    fn reporting_is_queue_2_without_stats() {
        let r = QueueRoles::from_features(Features::bit(REPORTING));
        assert_eq!(r.count(), 3);
        assert_eq!(r.role(2), Some(QueueRole::Reporting));
        assert_eq!(r.index(QueueRole::Reporting), Some(2));
    }

    #[test]
    fn reporting_is_queue_3_with_stats() {
        let r = QueueRoles::from_features(Features::bit(REPORTING).with(STATS_VQ));
        assert_eq!(r.role(2), Some(QueueRole::Stats));
        assert_eq!(r.role(3), Some(QueueRole::Reporting));
    }

    #[test]
    fn all_five() {
        let f = Features::bit(REPORTING).with(STATS_VQ).with(FREE_PAGE_HINT);
        let r = QueueRoles::from_features(f);
        assert_eq!(r.count(), 5);
        assert_eq!(r.index(QueueRole::FreePageHint), Some(3));
        assert_eq!(r.index(QueueRole::Reporting), Some(4));
        assert_eq!(r.iter().count(), 5);
        assert_eq!(r.role(usize::MAX), None);
    }
}
