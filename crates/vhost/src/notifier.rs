//! Telling the frontend that the config space changed: the seam between the host API and
//! whatever carries the message.
//!
//! A balloon learns a new target through its config space; the device has to say the space
//! changed, or the driver reads it only at its next probe. Over virtio-pci that is a config
//! interrupt; over vhost-user it is `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG` on the backend
//! request channel (the socket the frontend hands over with `SET_BACKEND_REQ_FD`; vhost-user
//! spec, "Back-end message types").
//!
//! The [`Controller`](crate::Controller) only holds a [`ConfigNotifier`] per connection. Today
//! the relay (`relay/`, which imports this file) implements it (vhost 0.18 cannot send the message itself); once
//! the vhost crate can (see `docs/upstream/`), the implementation is the vhost crate's
//! `Backend` behind this same trait, and nothing above it changes.

use std::fmt::Debug;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Sends config-change notifications to one connected frontend.
pub trait ConfigNotifier: Debug + Send + Sync {
    /// Tells the frontend the config space changed; when it acks backend requests
    /// (`REPLY_ACK`), waits up to `timeout` for the ack. Never blocks longer than `timeout`.
    fn notify_config_change(&self, timeout: Duration) -> Notification;

    /// Whether the frontend set up the backend request channel (`SET_BACKEND_REQ_FD`).
    fn has_channel(&self) -> bool;

    /// Whether the frontend acks backend requests (`REPLY_ACK` negotiated).
    fn reply_ack(&self) -> bool;
}

/// What became of a config-change notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result", content = "detail")]
pub enum Notification {
    /// Sent, and the frontend acknowledged it (`REPLY_ACK` negotiated).
    Acked,
    /// Sent; the frontend did not negotiate `REPLY_ACK`, so there is no ack to wait for.
    Sent,
    /// The frontend is not running the device (no ring started and enabled: a VMM before its
    /// first `cont`, a paused VM, a device the guest removed). The change is recorded and sent
    /// when the frontend starts a ring again: QEMU 11 crashes on a config change that arrives
    /// while it is not running the device (`docs/upstream/qemu-config-change-while-stopped.md`).
    Pending,
    /// The target did not change: nothing to tell.
    Unchanged,
    /// No guest is connected; the next one reads the target at probe.
    NoGuest,
    /// The guest did not set up the backend request channel (`BACKEND_REQ`); it sees the new
    /// target the next time it reads its config space.
    NoChannel,
    /// The frontend acknowledged with a failure code.
    Refused(u64),
    /// No ack within the timeout (the frontend may still act on it).
    TimedOut,
    /// The channel is broken (the frontend closed it, or sent garbage).
    Failed(String),
}
