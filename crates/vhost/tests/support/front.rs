//! The frontend the re-initialisation tests (`reinit.rs`, `session_model.rs`) write
//! themselves: the vhost crate's `Frontend` plus raw messages, rings of `prezero-guest`'s
//! `SplitQueue` over a memfd, sent in the orders User-Mode Linux and QEMU use.
#![allow(dead_code)] // each test file uses a part

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use prezero_guest::vhost_user::VHOST_USER_F_PROTOCOL_FEATURES;
use prezero_guest::{Buffer, GuestRam, SplitQueue};
use prezero_testkit::rig::*;
use prezero_testkit::wait::*;
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// One ring as the driver set it up: its queue, kick and call eventfds.
pub struct Ring {
    pub queue: SplitQueue<u64>,
    pub kick: EventFd,
    pub call: EventFd,
}

/// The frontend of these tests: a vhost-user connection, guest RAM, and the rings of the
/// current driver incarnation.
pub struct Front {
    pub f: Frontend,
    pub raw: UnixStream,
    pub ram: Arc<GuestRam>,
    pub rings: Vec<Ring>,
    /// Our end of the backend request channel.
    pub channel: UnixStream,
    pub bit30: bool,
}

pub const RAM: u64 = 32 * MIB;
pub const RING_SIZE: u16 = 256;

impl Front {
    /// SET_OWNER, protocol features REPLY_ACK | BACKEND_REQ | CONFIG (+ RESET_DEVICE), the
    /// backend request channel, and acks on every request as `virtio_uml` asks for them.
    pub fn connect(d: &Daemon) -> Front {
        let stream = UnixStream::connect(d.socket()).unwrap();
        let raw = stream.try_clone().unwrap();
        raw.set_read_timeout(Some(HANG_GUARD)).unwrap();
        let mut f = Frontend::from_stream(stream, 4);
        f.set_owner().unwrap();
        assert_ne!(
            f.get_features().unwrap() & VHOST_USER_F_PROTOCOL_FEATURES,
            0
        );
        let offered = f.get_protocol_features().unwrap();
        let want = VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::RESET_DEVICE;
        assert!(offered.contains(want), "{offered:?}");
        f.set_protocol_features(want).unwrap();
        f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        let (ours, theirs) = UnixStream::pair().unwrap();
        f.set_backend_request_fd(&theirs).unwrap();
        ours.set_read_timeout(Some(HANG_GUARD)).unwrap();
        Front {
            f,
            raw,
            ram: ram(RAM),
            rings: Vec::new(),
            channel: ours,
            bit30: false,
        }
    }

    pub fn features(&mut self, features: u64, bit30: bool) {
        self.bit30 = bit30;
        let extra = if bit30 {
            VHOST_USER_F_PROTOCOL_FEATURES
        } else {
            0
        };
        self.f.set_features(features | extra).unwrap();
    }

    pub fn memory(&self) {
        let region = VhostUserMemoryRegionInfo::from_guest_region(self.ram.region()).unwrap();
        self.f.set_mem_table(&[region]).unwrap();
    }

    /// Fresh, zeroed rings for `n` queues with new eventfds, set up in User-Mode Linux's order
    /// (CALL, NUM, BASE 0, ADDR, KICK), plus ENABLE 1 when bit 30 was acked.
    pub fn rings(&mut self, n: usize) {
        let req = SplitQueue::<u64>::memory_requirement(RING_SIZE).unwrap();
        self.rings.clear();
        for i in 0..n {
            let gpa = RAM - (i as u64 + 1) * req.bytes.next_multiple_of(PAGE);
            self.ram.fill(gpa, req.bytes, 0).unwrap();
            let queue = SplitQueue::new(self.ram.clone(), RING_SIZE, gpa, false).unwrap();
            let l = queue.layout();
            let n16 = u64::from(l.size);
            let config = VringConfigData {
                queue_max_size: l.size,
                queue_size: l.size,
                flags: 0,
                desc_table_addr: self.ram.host_addr(l.desc, 16 * n16).unwrap(),
                used_ring_addr: self.ram.host_addr(l.used, 6 + 8 * n16).unwrap(),
                avail_ring_addr: self.ram.host_addr(l.avail, 6 + 2 * n16).unwrap(),
                log_addr: None,
            };
            let ring = Ring {
                queue,
                kick: EventFd::new(0).unwrap(),
                call: EventFd::new(EFD_NONBLOCK).unwrap(),
            };
            self.f.set_vring_call(i, &ring.call).unwrap();
            self.f.set_vring_num(i, l.size).unwrap();
            self.f.set_vring_base(i, 0).unwrap();
            self.f.set_vring_addr(i, &config).unwrap();
            self.f.set_vring_kick(i, &ring.kick).unwrap();
            if self.bit30 {
                self.f.set_vring_enable(i, true).unwrap();
            }
            self.rings.push(ring);
        }
    }

    /// For every ring: ENABLE 0 and GET_VRING_BASE (a VMM stopping the device).
    pub fn stop(&mut self) -> Vec<u32> {
        (0..self.rings.len())
            .map(|i| {
                self.f.set_vring_enable(i, false).unwrap();
                self.f.get_vring_base(i).unwrap()
            })
            .collect()
    }

    pub fn submit(&mut self, q: usize, chain: &[Buffer], token: u64) {
        self.rings[q].queue.add(chain, token).unwrap();
        self.rings[q].kick.write(1).unwrap();
    }

    /// The used index the device published on ring `q`.
    pub fn used_idx(&self, q: usize) -> u16 {
        let l = self.rings[q].queue.layout();
        self.ram.read_u16(l.used + 2).unwrap()
    }

    /// Waits until ring `q` has `want` used elements, then pops them.
    pub fn collect(&mut self, q: usize, want: usize) -> Vec<(u64, u32)> {
        wait_until("the device to complete the chains", || {
            self.used_idx(q) as usize >= want
        });
        let mut out = Vec::new();
        while let Some(u) = self.rings[q].queue.pop_used().unwrap() {
            out.push((u.token, u.len));
        }
        out
    }

    pub fn config_u32(&mut self, offset: u32) -> u32 {
        let (_, bytes) = self
            .f
            .get_config(offset, 4, VhostUserConfigFlags::WRITABLE, &[0u8; 4])
            .unwrap();
        u32::from_le_bytes(bytes.try_into().unwrap())
    }

    /// A raw request (for what the vhost crate's own frontend refuses to send); returns the
    /// reply's header and payload when one is expected.
    pub fn raw_request(
        &self,
        request: u32,
        flags: u32,
        payload: &[u8],
        reply: bool,
    ) -> Option<(u32, u32, Vec<u8>)> {
        let mut msg = Vec::new();
        for w in [request, flags, payload.len() as u32] {
            msg.extend_from_slice(&w.to_le_bytes());
        }
        msg.extend_from_slice(payload);
        (&self.raw).write_all(&msg).unwrap();
        if !reply {
            return None;
        }
        let mut h = [0u8; 12];
        (&self.raw).read_exact(&mut h).unwrap();
        let w = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
        let mut body = vec![0u8; w(8) as usize];
        (&self.raw).read_exact(&mut body).unwrap();
        Some((w(0), w(4), body))
    }

    /// Reads a config-change message from the backend request channel and acks it.
    pub fn expect_config_change(&mut self) {
        let mut h = [0u8; 12];
        self.channel.read_exact(&mut h).unwrap();
        let w = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
        assert_eq!((w(0), w(8)), (2, 0), "VHOST_USER_BACKEND_CONFIG_CHANGE_MSG");
        if w(4) & VhostUserHeaderFlag::NEED_REPLY.bits() != 0 {
            let mut ack = Vec::new();
            for v in [2u32, 0x5, 8] {
                ack.extend_from_slice(&v.to_le_bytes());
            }
            ack.extend_from_slice(&0u64.to_le_bytes());
            self.channel.write_all(&ack).unwrap();
        }
    }

    pub fn no_config_change(&self) {
        self.channel.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let got = (&self.channel).read(&mut byte);
        self.channel.set_nonblocking(false).unwrap();
        assert!(
            matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a config change was sent: {got:?}"
        );
    }
}
