//! How the daemon is set up: sockets, the device's feature offer, timeouts; and the size parser
//! the command line uses for balloon targets.

use std::path::PathBuf;
use std::time::Duration;

use prezero_balloon::features::{
    Features, DEFLATE_ON_OOM, DEVICE_INIT_ON_INFLATE, DEVICE_INIT_REPORTED, MUST_TELL_HOST,
    PAGE_POISON, REPORTING, RING_EVENT_IDX, RING_INDIRECT_DESC, STATS_VQ,
};
use prezero_balloon::pfn::BALLOON_PAGE_SIZE;
use prezero_device::DeviceOptions;

use crate::error::{Error, Result};

/// Everything [`serve`](crate::serve) and [`spawn`](crate::spawn) need.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The vhost-user socket the frontend (VMM, UML, the Rust guest) connects to.
    pub socket: PathBuf,
    /// The operator's control socket (HTTP/1.1 over a Unix socket, see `control.rs`).
    pub control: Option<PathBuf>,
    /// The device: feature offer, queue size, initial target, input limits.
    pub device: DeviceOptions,
    /// Discard memory the guest gives back (off: nothing is discarded, nothing claimed zeroed).
    pub discard: bool,
    /// How long a config-change notification waits for the frontend's ack (with `REPLY_ACK`).
    pub notify_timeout: Duration,
    /// How long a closed connection's worker thread may take to finish the request it is
    /// processing before the next guest is served anyway (with a warning).
    pub teardown_timeout: Duration,
    /// Upper bound for a control request that waits for fresh guest statistics.
    pub max_stats_wait: Duration,
    /// Seconds between the daemon's own requests for fresh guest statistics (0: only on
    /// request), like QEMU's `guest-stats-polling-interval` and Firecracker's
    /// `stats_polling_interval_s`; changeable at run time (`PATCH /balloon/statistics`).
    pub stats_polling_interval_s: u64,
}

impl ServeOptions {
    /// Defaults for serving `socket`: the full feature offer, no control socket.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        ServeOptions {
            socket: socket.into(),
            control: None,
            device: DeviceOptions::default(),
            discard: true,
            notify_timeout: Duration::from_secs(2),
            teardown_timeout: Duration::from_secs(10),
            max_stats_wait: Duration::from_secs(10),
            stats_polling_interval_s: 0,
        }
    }

    /// With a control socket.
    pub fn with_control(mut self, control: impl Into<PathBuf>) -> Self {
        self.control = Some(control.into());
        self
    }

    /// With the feature offer `offer` applied to the device options.
    pub fn with_offer(mut self, offer: FeatureOffer) -> Self {
        offer.apply(&mut self.device);
        self
    }

    /// Refuse what cannot work.
    pub fn validate(&self) -> Result<()> {
        self.device.validate()?;
        if self.control.as_ref() == Some(&self.socket) {
            return Err(Error::Options(
                "the control socket and the vhost-user socket must be different paths".into(),
            ));
        }
        if self.stats_polling_interval_s > 0 && !self.device.balloon_features.has(STATS_VQ) {
            return Err(Error::Options(
                "statistics polling needs the stats queue: drop --no-stats or the polling interval"
                    .into(),
            ));
        }
        if self.notify_timeout.is_zero() || self.teardown_timeout.is_zero() {
            return Err(Error::Options("timeouts must be non-zero".into()));
        }
        Ok(())
    }
}

/// The feature offer as switches, one per feature an operator may turn off (command-line
/// flags map here: `--no-device-init-reported` sets `device_init_reported = false`, ...).
///
/// `FREE_PAGE_HINT` is never offered (the device does not support it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureOffer {
    /// `VIRTIO_BALLOON_F_MUST_TELL_HOST`.
    pub must_tell_host: bool,
    /// `VIRTIO_BALLOON_F_STATS_VQ`.
    pub stats: bool,
    /// `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`.
    pub deflate_on_oom: bool,
    /// `VIRTIO_BALLOON_F_PAGE_POISON`.
    pub page_poison: bool,
    /// `VIRTIO_BALLOON_F_REPORTING` (free page reporting).
    pub reporting: bool,
    /// `DEVICE_INIT_REPORTED` (proposed): reported pages confirmed zeroed.
    pub device_init_reported: bool,
    /// `DEVICE_INIT_ON_INFLATE` (proposed): inflated pages confirmed zeroed.
    pub device_init_on_inflate: bool,
    /// `VIRTIO_RING_F_EVENT_IDX`.
    pub event_idx: bool,
    /// `VIRTIO_RING_F_INDIRECT_DESC`.
    pub indirect_desc: bool,
}

impl Default for FeatureOffer {
    fn default() -> Self {
        FeatureOffer::from_device(&DeviceOptions::default())
    }
}

impl FeatureOffer {
    /// The switches matching `device`'s offer.
    pub fn from_device(device: &DeviceOptions) -> Self {
        let b = device.balloon_features;
        let t = device.transport_features;
        FeatureOffer {
            must_tell_host: b.has(MUST_TELL_HOST),
            stats: b.has(STATS_VQ),
            deflate_on_oom: b.has(DEFLATE_ON_OOM),
            page_poison: b.has(PAGE_POISON),
            reporting: b.has(REPORTING),
            device_init_reported: b.has(DEVICE_INIT_REPORTED),
            device_init_on_inflate: b.has(DEVICE_INIT_ON_INFLATE),
            event_idx: t.has(RING_EVENT_IDX),
            indirect_desc: t.has(RING_INDIRECT_DESC),
        }
    }

    /// Sets `device`'s feature offer to these switches (other bits are left alone).
    pub fn apply(&self, device: &mut DeviceOptions) {
        let set = |f: Features, bit, on: bool| if on { f.with(bit) } else { f.without(bit) };
        let mut b = device.balloon_features;
        b = set(b, MUST_TELL_HOST, self.must_tell_host);
        b = set(b, STATS_VQ, self.stats);
        b = set(b, DEFLATE_ON_OOM, self.deflate_on_oom);
        b = set(b, PAGE_POISON, self.page_poison);
        b = set(b, REPORTING, self.reporting);
        b = set(b, DEVICE_INIT_REPORTED, self.device_init_reported);
        b = set(b, DEVICE_INIT_ON_INFLATE, self.device_init_on_inflate);
        device.balloon_features = b;
        let mut t = device.transport_features;
        t = set(t, RING_EVENT_IDX, self.event_idx);
        t = set(t, RING_INDIRECT_DESC, self.indirect_desc);
        device.transport_features = t;
    }
}

/// Parses an operator's size: a number with an optional binary suffix (`B`, `K`, `M`, `G`, `T`,
/// optionally followed by `iB` or `B`, case-insensitive) and an optional fraction (`1.5G`).
///
/// **A number without a unit is MiB**, as QEMU's monitor command `balloon` and Firecracker's
/// `amount_mib` read it (`256` is 256 MiB); bytes need the `B` suffix (`4096B`). Negative
/// numbers are refused.
pub fn parse_size(input: &str) -> Result<u64> {
    let bad = |why| Error::InvalidSize {
        input: input.to_string(),
        why,
    };
    let s = input.trim();
    if s.starts_with('-') {
        return Err(bad("a size cannot be negative"));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "b" => 0,
        "k" | "kb" | "kib" => 10,
        "" | "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad("unknown unit")),
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() && fraction.is_empty() {
        return Err(bad("no number"));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad("not a number"))?
    };
    let mut bytes = whole
        .checked_mul(1u64 << shift)
        .ok_or_else(|| bad("too large"))?;
    if !fraction.is_empty() {
        if fraction.len() > 9 || !fraction.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad("not a number"));
        }
        let digits: u64 = fraction.parse().map_err(|_| bad("not a number"))?;
        let scale = 10u64.pow(fraction.len() as u32);
        // digits / scale of one unit, in exact integer arithmetic.
        let part = (u128::from(digits) << shift) / u128::from(scale);
        bytes = bytes
            .checked_add(u64::try_from(part).map_err(|_| bad("too large"))?)
            .ok_or_else(|| bad("too large"))?;
    }
    Ok(bytes)
}

/// A balloon target in bytes as 4 KiB balloon pages: 0 releases the balloon; anything else must
/// be at least one page (a smaller target would silently become 0) and is rounded down to whole
/// pages (the balloon never takes more than asked). At most 2^32 - 1 pages (the `num_pages`
/// config field is 32 bits, virtio 1.2 section 5.5.4).
pub fn bytes_to_pages(bytes: u64) -> Result<u32> {
    if bytes > 0 && bytes < BALLOON_PAGE_SIZE {
        return Err(Error::InvalidSize {
            input: format!("{bytes}B"),
            why: "below one 4 KiB balloon page (0 releases the balloon)",
        });
    }
    u32::try_from(bytes / BALLOON_PAGE_SIZE).map_err(|_| Error::InvalidSize {
        input: format!("{bytes}B"),
        why: "a balloon holds at most 2^32 - 1 pages of 4 KiB (16 TiB)",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_fractions() {
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(
            parse_size("256").unwrap(),
            256 << 20,
            "a bare number is MiB"
        );
        assert_eq!(parse_size("4096B").unwrap(), 4096);
        assert_eq!(parse_size("1.5").unwrap(), 3 << 19);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size(" 2 GB ").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size(".5k").unwrap(), 512);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        for bad in [
            "",
            "M",
            "x",
            "12Q",
            "1.2.3",
            "-5",
            "99999999999999999999",
            "20000000T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
        let msg = parse_size("12Q").unwrap_err().to_string();
        assert!(msg.contains("512M"), "{msg}");
        let msg = parse_size("-5").unwrap_err().to_string();
        assert!(msg.contains("negative"), "{msg}");
    }

    #[test]
    fn pages_round_down_and_are_capped() {
        assert_eq!(bytes_to_pages(0).unwrap(), 0);
        assert_eq!(bytes_to_pages(4096).unwrap(), 1);
        assert_eq!(bytes_to_pages(8191).unwrap(), 1);
        let msg = bytes_to_pages(4095).unwrap_err().to_string();
        assert!(msg.contains("below one 4 KiB"), "{msg}");
        assert_eq!(bytes_to_pages(256 << 20).unwrap(), 65536);
        assert!(bytes_to_pages(16 << 40).is_err());
    }

    #[test]
    fn offer_round_trips_through_device_options() {
        let all = FeatureOffer::default();
        assert!(all.stats && all.reporting && all.device_init_reported);
        let mut device = DeviceOptions::default();
        let off = FeatureOffer {
            stats: false,
            device_init_reported: false,
            event_idx: false,
            ..all
        };
        off.apply(&mut device);
        device.validate().unwrap();
        assert_eq!(FeatureOffer::from_device(&device), off);
        assert!(!device.balloon_features.has(STATS_VQ));
        assert!(device.balloon_features.has(REPORTING));
        assert!(!device.transport_features.has(RING_EVENT_IDX));
        all.apply(&mut device);
        assert_eq!(device, DeviceOptions::default());
    }

    #[test]
    fn options_refuse_one_path_for_both_sockets() {
        let o = ServeOptions::new("/tmp/x.sock").with_control("/tmp/x.sock");
        assert!(o.validate().is_err());
        ServeOptions::new("/tmp/x.sock")
            .with_control("/tmp/y.sock")
            .validate()
            .unwrap();
    }
}
