//! The daemon's figures in the Prometheus text exposition format (version 0.0.4), for
//! `GET /metrics`: a fleet's scraper reads it without an adapter.
//!
//! Names follow the Prometheus conventions: the `prezero_` prefix, base units in the name
//! (`_bytes`, `_seconds`), `_total` on counters. Every device and daemon counter is exported
//! (they are read from their serialized snapshots, so a counter added to the `counters!`
//! declaration appears here without an edit), errors by kind as one family with a `kind`
//! label, and the balloon's state and the guest's latest statistics as gauges.
//! `docs/api.md` lists the families.

use std::fmt::Write;

use serde_json::Value;

use crate::status::{BalloonStatus, MetricsReport, StatsReport};

/// The text format's content type.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How a guest statistic (virtio 1.2 section 5.5.6.3; values as the Linux driver sends them,
/// memory in bytes) is exported: its metric name and whether it is a counter.
fn guest_stat_metric(tag: &str) -> (String, bool) {
    match tag {
        "free_memory" | "total_memory" | "available_memory" | "disk_caches" => {
            (format!("prezero_guest_{tag}_bytes"), false)
        }
        "swap_in" | "swap_out" => (format!("prezero_guest_{tag}_bytes_total"), true),
        _ => (format!("prezero_guest_{tag}_total"), true),
    }
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.0, "{name}{labels} {value}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, "", value);
    }

    /// Every numeric field of `snapshot` as a counter `prefix_FIELD_total`; a map of numbers
    /// (errors by kind) as one family labelled `kind`.
    fn counters(&mut self, prefix: &str, what: &str, snapshot: &Value) {
        let Some(fields) = snapshot.as_object() else {
            return;
        };
        for (field, value) in fields {
            let name = format!("{prefix}_{field}_total");
            if let Some(n) = value.as_u64() {
                self.one(&name, "counter", &format!("{what} counter {field}."), n);
            } else if let Some(by_kind) = value.as_object() {
                self.family(&name, "counter", &format!("{what} {field} by kind."));
                for (kind, n) in by_kind {
                    if let Some(n) = n.as_u64() {
                        self.sample(&name, &format!("{{kind=\"{kind}\"}}"), n);
                    }
                }
            }
        }
    }
}

/// Renders the metrics, the balloon's state and the guest's latest statistics.
pub(crate) fn render(
    metrics: &MetricsReport,
    status: &BalloonStatus,
    stats: Option<&StatsReport>,
    stats_polling_interval_s: u64,
) -> String {
    let mut out = Out(String::new());
    out.counters(
        "prezero_device",
        "Device",
        &serde_json::to_value(&metrics.device).unwrap_or_default(),
    );
    out.counters(
        "prezero_daemon",
        "Daemon",
        &serde_json::to_value(&metrics.daemon).unwrap_or_default(),
    );
    out.one(
        "prezero_guest_connected",
        "gauge",
        "1 while a guest (vhost-user frontend) is connected.",
        u8::from(status.connected),
    );
    if let Some(ram) = status.guest_ram_bytes {
        out.one(
            "prezero_guest_ram_bytes",
            "gauge",
            "RAM the connected guest shared with the daemon.",
            ram,
        );
    }
    out.one(
        "prezero_balloon_target_bytes",
        "gauge",
        "The host's balloon target (num_pages x 4 KiB).",
        status.target_bytes,
    );
    out.one(
        "prezero_balloon_actual_bytes",
        "gauge",
        "The balloon size the guest's driver reports (actual x 4 KiB).",
        status.actual_bytes,
    );
    out.one(
        "prezero_stats_polling_interval_seconds",
        "gauge",
        "Seconds between the daemon's requests for fresh guest statistics (0: off).",
        stats_polling_interval_s,
    );
    if let Some(stats) = stats {
        out.one(
            "prezero_guest_stats_age_seconds",
            "gauge",
            "Seconds since the guest's latest statistics arrived.",
            stats.age_ms as f64 / 1e3,
        );
        for (tag, value) in &stats.values {
            let (name, counter) = guest_stat_metric(tag);
            out.one(
                &name,
                if counter { "counter" } else { "gauge" },
                &format!("Guest statistic {tag} (virtio-balloon stats queue)."),
                value,
            );
        }
    }
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn status() -> BalloonStatus {
        BalloonStatus {
            connected: true,
            amount_mib: 64,
            deflate_on_oom: true,
            stats_polling_interval_s: 5,
            guest_ram_bytes: Some(256 << 20),
            target_pages: 16384,
            target_bytes: 64 << 20,
            actual_pages: 16384,
            actual_bytes: 64 << 20,
            offered_features: 0,
            negotiated_features: 0,
            negotiated: vec![],
            queues: vec![],
            holds_stats_buffer: false,
            config_change_channel: true,
            reply_ack: true,
            last_negotiation: None,
        }
    }

    /// Every line is a comment or `name{labels} value` with a valid name and a number, every
    /// family is declared before its samples, and the names carry units and `_total`.
    #[test]
    fn text_format_is_well_formed() {
        let mut metrics = MetricsReport {
            device: Default::default(),
            daemon: Default::default(),
        };
        metrics.device.discarded_bytes = 1 << 30;
        metrics
            .device
            .errors
            .insert("descriptor_direction".into(), 3);
        let stats = StatsReport {
            sequence: 1,
            updated_unix_ms: 0,
            age_ms: 1500,
            values: BTreeMap::from([("free_memory".into(), 7), ("major_faults".into(), 2)]),
        };
        let text = render(&metrics, &status(), Some(&stats), 5);
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut p = rest.split(' ');
                declared.insert(p.next().unwrap().to_string());
                assert!(matches!(p.next(), Some("counter" | "gauge")), "{line}");
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect(line);
            value.parse::<f64>().expect(line);
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{line}"
            );
            assert!(declared.contains(name), "{name} sampled before its # TYPE");
        }
        for want in [
            "prezero_device_discarded_bytes_total 1073741824",
            "prezero_device_zeroed_bytes_total 0",
            "prezero_device_errors_total{kind=\"descriptor_direction\"} 3",
            "prezero_daemon_connections_total 0",
            "prezero_balloon_target_bytes 67108864",
            "prezero_guest_ram_bytes 268435456",
            "prezero_guest_free_memory_bytes 7",
            "prezero_guest_major_faults_total 2",
            "prezero_guest_stats_age_seconds 1.5",
            "prezero_stats_polling_interval_seconds 5",
        ] {
            assert!(text.lines().any(|l| l == want), "{want} missing:\n{text}");
        }
    }
}
