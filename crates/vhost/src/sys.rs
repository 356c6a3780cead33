//! Thin, checked wrappers over the few syscalls the daemon needs beyond std: `poll`,
//! `sendmsg`/`recvmsg` with `SCM_RIGHTS`, pipes, and file identity.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Most file descriptors one vhost-user message may carry (the vhost crate's
/// `MAX_ATTACHED_FD_ENTRIES`; `SET_MEM_TABLE` sends at most 8).
pub(crate) const MAX_FDS: usize = 32;

pub(crate) fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Polls `fds` until one is ready or `timeout` passes (`None`: forever), retried across
/// signals. Returns how many have `revents` set; 0 means the timeout passed.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms: libc::c_int = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so a short positive timeout does not become a busy 0 ms poll.
                let ms = left.as_nanos().div_ceil(1_000_000);
                ms.min(libc::c_int::MAX as u128) as libc::c_int
            }
        };
        // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Space for the control message of `max` descriptors.
fn cmsg_space(max: usize) -> usize {
    // SAFETY: CMSG_SPACE is a pure computation.
    unsafe { libc::CMSG_SPACE((max * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// One `recvmsg`: bytes into `buf`, descriptors appended to `fds` (close-on-exec, owned).
/// Returns the byte count (0: end of stream). A control message cut short (more descriptors
/// than [`MAX_FDS`]) is an error: a message must never be forwarded without its fds.
pub(crate) fn recv_with_fds(
    fd: RawFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    recv_with_at_most(fd, buf, fds, MAX_FDS)
}

fn recv_with_at_most(
    fd: RawFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    max: usize,
) -> io::Result<usize> {
    // u64 elements keep the buffer aligned for cmsghdr.
    let mut control = vec![0u64; cmsg_space(max).div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = (control.len() * 8) as _;
    let n = loop {
        // SAFETY: msg points at live buffers of the declared sizes.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    // Take ownership of every descriptor first, so nothing leaks on the error paths below.
    // SAFETY: msg was filled by recvmsg; the CMSG macros walk only within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                let header = libc::CMSG_LEN(0) as usize;
                let count = ((*cmsg).cmsg_len as usize).saturating_sub(header)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let raw = std::ptr::read_unaligned(data.add(i));
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a message carried more than {max} file descriptors"),
        ));
    }
    Ok(n)
}

/// One `sendmsg` of `bufs` with `fds` attached (without SIGPIPE). Returns the bytes sent.
pub(crate) fn send_with_fds(fd: RawFd, bufs: &[&[u8]], fds: &[RawFd]) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many file descriptors for one message",
        ));
    }
    let mut iovs: Vec<libc::iovec> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let mut control = vec![0u64; cmsg_space(MAX_FDS).div_ceil(8)];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iovs.as_mut_ptr();
    msg.msg_iovlen = iovs.len() as _;
    if !fds.is_empty() {
        let payload = std::mem::size_of_val(fds);
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure; the control buffer holds CMSG_SPACE(MAX_FDS).
        unsafe {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(payload as u32) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                payload,
            );
        }
    }
    loop {
        // SAFETY: msg points at live buffers of the declared sizes.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Sends all of `bufs`, attaching `fds` to the first byte, retrying partial sends.
pub(crate) fn send_all_with_fds(fd: RawFd, bufs: &[&[u8]], fds: &[RawFd]) -> io::Result<()> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut sent = send_with_fds(fd, bufs, fds)?;
    if sent == total {
        return Ok(());
    }
    // Rare (a full socket buffer): flatten the rest and send it without descriptors.
    let flat: Vec<u8> = bufs.concat();
    while sent < total {
        let n = send_with_fds(fd, &[&flat[sent..]], &[])?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n;
    }
    Ok(())
}

/// A pipe whose ends are non-blocking and close-on-exec: (read, write).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array on success.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, the fds are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The (device, inode) of an open file: its identity while it stays open.
pub(crate) fn file_id(fd: RawFd) -> io::Result<(u64, u64)> {
    // SAFETY: fstat writes into the zeroed struct we pass.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: see above; an invalid fd is reported as EBADF.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok((st.st_dev as u64, st.st_ino as u64))
}

/// Shuts a socket down both ways (wakes every thread blocked on it); errors are irrelevant.
pub(crate) fn shutdown(fd: &impl AsRawFd) {
    // SAFETY: shutdown on an fd we hold open only ends the connection.
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn fds_travel_with_the_bytes_and_truncation_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, _w) = pipe().unwrap();
        let id = file_id(r.as_raw_fd()).unwrap();
        send_all_with_fds(a.as_raw_fd(), &[b"hello", b" world"], &[r.as_raw_fd()]).unwrap();
        let mut buf = [0u8; 64];
        let mut fds = Vec::new();
        let n = recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"hello world");
        assert!(!fds.is_empty() && fds.len() < 3, "{} fds", fds.len());
        assert_eq!(file_id(fds[0].as_raw_fd()).unwrap(), id);

        // The most a message may carry arrives whole.
        let many: Vec<RawFd> = vec![r.as_raw_fd(); MAX_FDS];
        send_all_with_fds(a.as_raw_fd(), &[b"x"], &many).unwrap();
        let mut fds = Vec::new();
        let n = recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!((n, fds.len()), (1, MAX_FDS));
        assert!(send_with_fds(a.as_raw_fd(), &[b"x"], &[r.as_raw_fd(); MAX_FDS + 1]).is_err());

        // More than the receiver has room for: the kernel drops some, which is an error (the
        // ones that did arrive are owned and closed, not leaked).
        send_all_with_fds(a.as_raw_fd(), &[b"y"], &[r.as_raw_fd(); 3]).unwrap();
        let mut fds = Vec::new();
        let err = recv_with_at_most(b.as_raw_fd(), &mut buf, &mut fds, 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(!fds.is_empty() && fds.len() < 3, "{} fds", fds.len());
    }
}
