//! Passing fds over Unix sockets (`SCM_RIGHTS`): the control socket's
//! clients hand over their stdio, the exec helper a terminal's master.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::check;

/// Most fds the kernel passes in one message (`SCM_MAX_FD`); the receive
/// buffer has room for all of them, so none is ever left in flight.
const SCM_MAX_FD: usize = 253;

/// What one [`recv_with_fds`] brought.
#[derive(Debug)]
pub struct Received {
    /// Bytes read into the buffer (0 at end of stream).
    pub bytes: usize,
    /// Every fd passed with them (close-on-exec), owned: dropping closes.
    pub fds: Vec<OwnedFd>,
    /// The kernel cut the ancillary data (`MSG_CTRUNC`): more was sent
    /// than fits, and the fds that did not fit are lost.
    pub truncated: bool,
}

/// `recvmsg` into `buf`, non-blocking, taking every passed fd
/// (close-on-exec) whatever their number, so that none can leak.
pub fn recv_with_fds(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    const SPACE: usize = SCM_MAX_FD * std::mem::size_of::<RawFd>() + 64;
    // u64 elements: cmsghdr alignment.
    let mut control = [0u64; SPACE.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: msg points at one iovec over `buf` and at `control`, both
    // live and writable for the call.
    let n = unsafe {
        libc::recvmsg(
            fd.as_raw_fd(),
            &mut msg,
            libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
        )
    };
    let bytes = check(n as libc::c_long)? as usize;
    let mut fds = Vec::new();
    // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR/NXTHDR stay within
    // msg_controllen, which the kernel set to what it wrote.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: cmsg is a header inside the control buffer (see above).
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a constant computation.
            let head = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (hdr.cmsg_len as usize).saturating_sub(head) / std::mem::size_of::<RawFd>();
            // SAFETY: the data of an SCM_RIGHTS header holds `count` fds.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: i < count, inside the header's data; the data may
                // be unaligned.
                let raw = unsafe { data.add(i).read_unaligned() };
                // SAFETY: the kernel installed `raw` in our fd table for
                // this message; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(Received {
        bytes,
        fds,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// Sends `data` with `fds` attached (SCM_RIGHTS).
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let iov = [io::IoSlice::new(data)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).map_err(io::Error::from)
}
