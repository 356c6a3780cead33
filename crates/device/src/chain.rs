//! Collecting a descriptor chain and checking its shape.
//!
//! `virtio_queue::DescriptorChain` stops silently on anything wrong (a loop exhausting its
//! budget, a `next` out of range, an unreadable descriptor, a nested or malformed indirect
//! table, more than 4 GiB in total). The one reliable sign is that the last descriptor it
//! yielded still has `VIRTQ_DESC_F_NEXT`: such a chain is truncated and is rejected whole,
//! because its tail may be garbage a buggy driver never meant to hand over.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend};

use crate::error::ErrorKind;

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Buffer {
    /// Guest-physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

/// Collect the buffers of `chain` into `out` (cleared first).
pub(crate) fn collect<M>(
    chain: DescriptorChain<M>,
    max_descriptors: usize,
    out: &mut Vec<Buffer>,
) -> Result<(), ErrorKind>
where
    M: Deref,
    M::Target: GuestMemory,
{
    out.clear();
    let mut last_has_next = false;
    for desc in chain {
        if out.len() >= max_descriptors {
            return Err(ErrorKind::ChainTooLong);
        }
        last_has_next = desc.has_next();
        out.push(Buffer {
            addr: desc.addr(),
            len: desc.len(),
            writable: desc.is_write_only(),
        });
    }
    if out.is_empty() {
        Err(ErrorKind::ChainEmpty)
    } else if last_has_next {
        Err(ErrorKind::ChainTruncated)
    } else {
        Ok(())
    }
}

/// Split collected buffers into the device-readable head and the device-writable tail; a
/// readable buffer after a writable one breaks the spec's ordering rule (2.7.4.2).
pub(crate) fn split_directions(buffers: &[Buffer]) -> Result<(&[Buffer], &[Buffer]), ErrorKind> {
    let first_writable = buffers
        .iter()
        .position(|b| b.writable)
        .unwrap_or(buffers.len());
    let (readable, writable) = buffers.split_at(first_writable);
    if writable.iter().any(|b| !b.writable) {
        return Err(ErrorKind::WrongDirection);
    }
    Ok((readable, writable))
}

/// Collect `chain` into `out` and split it into its device-readable head and device-writable
/// tail (see [`collect`] and [`split_directions`]).
pub(crate) fn collect_split<M>(
    chain: DescriptorChain<M>,
    max_descriptors: usize,
    out: &mut Vec<Buffer>,
) -> Result<(&[Buffer], &[Buffer]), ErrorKind>
where
    M: Deref,
    M::Target: GuestMemory,
{
    collect(chain, max_descriptors, out)?;
    split_directions(out)
}

/// Read `buffers` back to back into `bytes` (cleared first). Bounding their total length is
/// the caller's job: it knows the request's limit.
pub(crate) fn read_buffers<M: GuestMemoryBackend>(
    mem: &M,
    buffers: &[Buffer],
    bytes: &mut Vec<u8>,
) -> Result<(), ErrorKind> {
    bytes.clear();
    for b in buffers {
        let at = bytes.len();
        bytes.resize(at + b.len as usize, 0);
        mem.read_slice(&mut bytes[at..], b.addr)
            .map_err(|_| ErrorKind::GuestMemory)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(writable: bool) -> Buffer {
        Buffer {
            addr: GuestAddress(0x1000),
            len: 4,
            writable,
        }
    }

    #[test]
    fn directions() {
        let b = [buf(false), buf(false), buf(true)];
        let (r, w) = split_directions(&b).unwrap();
        assert_eq!((r.len(), w.len()), (2, 1));
        let b = [buf(true), buf(true)];
        let (r, w) = split_directions(&b).unwrap();
        assert_eq!((r.len(), w.len()), (0, 2));
        let b = [buf(false), buf(true), buf(false)];
        assert_eq!(split_directions(&b), Err(ErrorKind::WrongDirection));
        assert_eq!(split_directions(&[]).unwrap().0.len(), 0);
    }
}
