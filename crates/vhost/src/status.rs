//! What the host API and the control socket report, as serializable values.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use prezero_balloon::features::{Features, BALLOON_FEATURE_NAMES};
use prezero_balloon::pfn::BALLOON_PAGE_SIZE;
use prezero_balloon::queues::QueueRoles;
use prezero_balloon::stats::StatTag;
use prezero_device::{GuestStats, MetricsSnapshot};
use serde::{Deserialize, Serialize};

use crate::notifier::Notification;

/// The balloon as the host sees it (`GET /balloon`): Firecracker's balloon configuration
/// (`amount_mib`, `deflate_on_oom`, `stats_polling_interval_s`) and prezero's details.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStatus {
    /// The target in MiB, rounded down (Firecracker's field).
    pub amount_mib: u64,
    /// The device offers `DEFLATE_ON_OOM` (fixed when the daemon starts; Firecracker's field).
    pub deflate_on_oom: bool,
    /// Seconds between the daemon's requests for fresh statistics, 0 when off (Firecracker's
    /// field).
    pub stats_polling_interval_s: u64,
    /// A guest is connected.
    pub connected: bool,
    /// Bytes of RAM the connected guest shared (`null`: no guest, or no memory table yet).
    pub guest_ram_bytes: Option<u64>,
    /// The host's target (`num_pages`), in 4 KiB pages.
    pub target_pages: u32,
    /// The target in bytes.
    pub target_bytes: u64,
    /// The balloon size the driver reports (`actual`), in 4 KiB pages.
    pub actual_pages: u32,
    /// `actual` in bytes.
    pub actual_bytes: u64,
    /// Feature bits offered (balloon and transport).
    pub offered_features: u64,
    /// Feature bits negotiated with the connected guest (0 before negotiation).
    pub negotiated_features: u64,
    /// Names of the negotiated balloon features.
    pub negotiated: Vec<String>,
    /// Queue roles by index under the negotiated features (dense numbering).
    pub queues: Vec<String>,
    /// The device holds the guest's stats buffer (fresh stats can be requested).
    pub holds_stats_buffer: bool,
    /// The guest set up the backend request channel (config changes are notified).
    pub config_change_channel: bool,
    /// The guest acks backend requests (`REPLY_ACK`).
    pub reply_ack: bool,
    /// What the latest guest negotiated, kept after it disconnects (`null` until a guest acks
    /// its features): a guest that negotiates and leaves between two polls is still seen.
    pub last_negotiation: Option<Negotiation>,
}

/// A guest's feature negotiation (`last_negotiation` of [`BalloonStatus`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Negotiation {
    /// Which guest: the daemon's `connections` counter when it was accepted (1 for the first;
    /// the daemon serves one at a time).
    pub guest: u64,
    /// Whether that guest is still connected.
    pub connected: bool,
    /// The feature bits it acked (its last `SET_FEATURES`; Linux sends two at probe).
    pub features: u64,
    /// Names of the negotiated balloon features.
    pub negotiated: Vec<String>,
    /// Queue roles by index under those features.
    pub queues: Vec<String>,
}

/// Names of the balloon feature bits set in `features`.
pub fn feature_names(features: Features) -> Vec<String> {
    BALLOON_FEATURE_NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| features.has(*bit as u32))
        .map(|(_, name)| name.to_ascii_lowercase())
        .collect()
}

/// Queue roles by index.
pub fn queue_names(roles: QueueRoles) -> Vec<String> {
    roles.iter().map(|r| r.name().to_string()).collect()
}

/// Pages to bytes.
pub fn pages_to_bytes(pages: u32) -> u64 {
    u64::from(pages) * BALLOON_PAGE_SIZE
}

/// The result of setting a target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetOutcome {
    /// The new target, in pages.
    pub target_pages: u32,
    /// The new target, in bytes.
    pub target_bytes: u64,
    /// Whether it differs from the previous one.
    pub changed: bool,
    /// What became of the config-change notification.
    pub notification: Notification,
    /// Something the operator should know (the target could not be checked, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The latest guest statistics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Update number (1 for the first buffer the guest sent).
    pub sequence: u64,
    /// When the guest sent them, milliseconds since the Unix epoch.
    pub updated_unix_ms: u64,
    /// Milliseconds since they arrived.
    pub age_ms: u64,
    /// Values by tag name (`free_memory`, `total_memory`, ... as in the virtio spec); only
    /// the tags the guest sent.
    pub values: BTreeMap<String, u64>,
}

impl StatsReport {
    pub(crate) fn from_stats(s: &GuestStats) -> Self {
        StatsReport {
            sequence: s.sequence,
            updated_unix_ms: s.updated_unix_ms,
            age_ms: u64::try_from(s.age().as_millis()).unwrap_or(u64::MAX),
            values: StatTag::ALL
                .iter()
                .filter_map(|t| s.get(*t).map(|v| (t.name().to_string(), v)))
                .collect(),
        }
    }
}

/// `GET /balloon/statistics` in Firecracker's shape: the balloon's target and actual size and
/// each guest statistic as a top-level field under Firecracker's name (memory in bytes), plus
/// prezero's [`StatsReport`] (sequence and age) as `stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStatistics {
    /// Target, 4 KiB pages.
    pub target_pages: u32,
    /// Actual, 4 KiB pages.
    pub actual_pages: u32,
    /// Target, MiB (rounded down).
    pub target_mib: u64,
    /// Actual, MiB (rounded down).
    pub actual_mib: u64,
    /// Guest statistics by Firecracker's names (`swap_in`, `free_memory`, `oom_kill`, ...):
    /// only those the guest sent.
    #[serde(flatten)]
    pub values: BTreeMap<String, u64>,
    /// The same statistics under the virtio names, with their sequence number and age.
    pub stats: StatsReport,
}

/// Firecracker's name for a statistic (its API says `oom_kill` where the virtio tag names
/// say `oom_kills`, and so on for the counters Linux 6.x added).
pub fn firecracker_stat_name(tag: &str) -> &str {
    match tag {
        "oom_kills" => "oom_kill",
        "alloc_stalls" => "alloc_stall",
        "async_scans" => "async_scan",
        "direct_scans" => "direct_scan",
        "async_reclaims" => "async_reclaim",
        "direct_reclaims" => "direct_reclaim",
        other => other,
    }
}

impl BalloonStatistics {
    /// Firecracker's view of `status` and `stats`.
    pub fn new(status: &BalloonStatus, stats: StatsReport) -> Self {
        BalloonStatistics {
            target_pages: status.target_pages,
            actual_pages: status.actual_pages,
            target_mib: status.target_bytes >> 20,
            actual_mib: status.actual_bytes >> 20,
            values: stats
                .values
                .iter()
                .map(|(k, v)| (firecracker_stat_name(k).to_string(), *v))
                .collect(),
            stats,
        }
    }
}

/// The result of asking the guest for fresh statistics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsRequestOutcome {
    /// The device held the guest's stats buffer and gave it back for refilling.
    pub requested: bool,
    /// Fresh statistics arrived within the wait.
    pub fresh: bool,
    /// The latest statistics (fresh or not), if any ever arrived.
    pub stats: Option<StatsReport>,
    /// Why nothing was requested (no stats queue, no guest, ...), when nothing was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

prezero_device::counters! {
    /// Daemon-level counters, live (the device's own are in [`MetricsSnapshot`]).
    pub(crate) struct DaemonCounters {
        /// Guests accepted.
        pub(crate) connections: AtomicU64,
        /// Guest connections that ended.
        pub(crate) disconnections: AtomicU64,
        /// Guests during whose service another frontend connected and had to wait (the
        /// daemon serves one frontend at a time).
        pub(crate) frontends_waiting: AtomicU64,
        /// Connections that ended on an error (a vhost-user protocol error, a setup failure)
        /// rather than a plain disconnect.
        pub(crate) connection_errors: AtomicU64,
        /// vhost-user messages relayed from frontends to the daemon.
        pub(crate) messages_to_backend: AtomicU64,
        /// vhost-user messages relayed from the daemon to frontends.
        pub(crate) messages_to_frontend: AtomicU64,
        /// Config-change notifications sent.
        pub(crate) config_changes_sent: AtomicU64,
        /// Config-change notifications the frontend acked with success.
        pub(crate) config_changes_acked: AtomicU64,
        /// Config-change notifications that failed, were refused or timed out.
        pub(crate) config_changes_failed: AtomicU64,
        /// Fresh-stats requests.
        pub(crate) stats_requests: AtomicU64,
        /// Connections whose worker thread outlived the teardown timeout.
        pub(crate) slow_teardowns: AtomicU64,
    }
    /// Daemon-level counters: connections, relayed messages, notifications.
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct DaemonMetrics;
}

impl DaemonCounters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything measurable: the device's counters and the daemon's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MetricsReport {
    /// The device: requests, bytes discarded, bytes confirmed zeroed, errors by kind.
    pub device: MetricsSnapshot,
    /// The daemon: connections, relayed messages, notifications.
    pub daemon: DaemonMetrics,
}
