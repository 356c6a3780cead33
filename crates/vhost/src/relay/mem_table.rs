//! User-Mode Linux's padded `SET_MEM_TABLE`, trimmed to what vhost 0.18 accepts.
//!
//! The payload is `struct VhostUserMemory` (region count `u32`, padding `u32`) and then one
//! 32-byte `VhostUserMemoryRegion` per region. User-Mode Linux 6.1 (`virtio_uml`) sends room
//! for two regions (72 bytes) when it uses one. vhost 0.18's
//! `BackendReqHandler::set_mem_table` wants exactly `8 + regions * 32` and refuses anything
//! else as an invalid message, which ends the connection. The unused trailing slots are cut
//! off (payload and header size); the regions and descriptors go on as they were. The upstream
//! change that makes this file unnecessary: `docs/upstream/0002-accept-padded-set-mem-table.md`.

use std::mem::size_of;

use vhost::vhost_user::message::{FrontendReq, VhostUserMemory, VhostUserMemoryRegion};

use super::message::Message;

/// `VHOST_MEMORY_BASELINE_NREGIONS`: what a `SET_MEM_TABLE` may describe.
const MAX_REGIONS: usize = 8;

/// Trims unused region slots off a `SET_MEM_TABLE` request. Anything that does not look like
/// padding (no regions, more than fit, a length that is not a whole number of slots) is left
/// for the daemon to judge.
pub(crate) fn trim_padded_mem_table(msg: &mut Message) {
    let head = size_of::<VhostUserMemory>();
    let slot = size_of::<VhostUserMemoryRegion>();
    if msg.request() != u32::from(FrontendReq::SET_MEM_TABLE)
        || msg.is_reply()
        || msg.payload.len() < head
    {
        return;
    }
    let regions = u32::from_le_bytes(msg.payload[0..4].try_into().expect("4 bytes")) as usize;
    let exact = head + regions * slot;
    let len = msg.payload.len();
    let padded = (1..=MAX_REGIONS).contains(&regions)
        && len > exact
        && len <= head + MAX_REGIONS * slot
        && (len - head) % slot == 0;
    if padded {
        tracing::debug!(
            regions,
            bytes = len,
            "trimming unused region slots off SET_MEM_TABLE"
        );
        msg.truncate_payload(exact);
    }
}
