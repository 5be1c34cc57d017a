//! Network interfaces and namespaces: bringing a link up, running code in
//! a zone's network namespace, guests' taps, the DHCP client's packet
//! socket. Addresses, routes, bridges and veths are rtnetlink's
//! (`net::netlink`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::check;

/// Sets `IFF_UP` on the interface `name` (used for `lo` in new network
/// namespaces and at host boot).
pub fn set_link_up(name: &str) -> io::Result<()> {
    let sock =
        std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills `req`, which is a valid ifreq.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) }.into())?;
    // SAFETY: the flags member is the active one after SIOCGIFFLAGS.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads a valid ifreq.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }.into())?;
    Ok(())
}

/// Runs `f` with this thread in the network namespace of the process
/// behind `pidfd`, then moves it back: the sockets `f` makes belong to that
/// namespace for good. The agent is single-threaded, so nothing else runs
/// meanwhile. Failing to move back is logged as an error: this thread
/// would make its later sockets in the wrong namespace.
pub fn in_netns<T>(pidfd: BorrowedFd<'_>, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    use nix::sched::{CloneFlags, setns};
    let own = std::fs::File::open("/proc/thread-self/ns/net")?;
    setns(pidfd, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let out = f();
    if let Err(e) = setns(&own, CloneFlags::CLONE_NEWNET) {
        log::error!("unable to return to the agent's own network namespace: {e}");
        return Err(e.into());
    }
    out
}

/// Size of the virtio-net header the tap reads and writes before each
/// frame (`virtio_net_hdr_v1`).
pub const TAP_VNET_HDR_LEN: libc::c_int = 12;

/// Creates (or attaches to) the tap `name` for a guest's network card and
/// returns its fd (close-on-exec) with the name the kernel gave it: no
/// packet-info prefix, a 12-byte virtio-net header before every frame, no
/// offloads. Needs CAP_NET_ADMIN in the current network namespace. The
/// link is not brought up or put on a bridge here.
pub fn open_tap(name: &str) -> io::Result<(OwnedFd, String)> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    let fd = tun.as_raw_fd();
    // SAFETY: TUNSETIFF reads and fills `req`, a valid ifreq.
    check(unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req) }.into())?;
    let hdr = TAP_VNET_HDR_LEN;
    // SAFETY: TUNSETVNETHDRSZ reads one int.
    check(unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &hdr) }.into())?;
    // SAFETY: TUNSETOFFLOAD takes its flags by value; 0 turns every
    // offload off, so frames cross whole and checksummed.
    check(unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, 0 as libc::c_ulong) }.into())?;
    let given: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok((
        OwnedFd::from(tun),
        String::from_utf8_lossy(&given).into_owned(),
    ))
}

/// A non-blocking, close-on-exec `AF_PACKET` datagram socket that hears
/// the IPv4 packets of interface `ifindex` that the classic BPF program
/// `filter` accepts (it sees each packet from its IP header on). The
/// filter is in place before the socket is bound, so no packet reaches
/// it unfiltered.
pub fn packet_socket(ifindex: u32, filter: &[libc::sock_filter]) -> io::Result<OwnedFd> {
    let ty = libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain socket(2); protocol 0 hears nothing until bound.
    let fd = unsafe { libc::socket(libc::AF_PACKET, ty, 0) };
    check(fd.into())?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prog points at `filter`, alive for the call; the kernel
    // copies the program.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const prog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    check(ret.into())?;
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    addr.sll_ifindex =
        i32::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: addr is a valid sockaddr_ll of the size passed.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    check(ret.into())?;
    Ok(fd)
}
