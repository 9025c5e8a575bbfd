//! Keeps the proxy's set of local addresses ([`LocalAddrs`]) equal to the kernel's list.
//!
//! The list itself is read with `getifaddrs` (the `if-addrs` crate). What triggers a re-read:
//!
//! - on Linux, an rtnetlink socket subscribed to the IPv4 and IPv6 address groups: the kernel
//!   sends a message whenever an address is added or removed. The messages are only a
//!   doorbell (drained, not parsed); the whole list is read again, so nothing depends on
//!   decoding netlink attributes, and an overrun (`ENOBUFS`) just means "read again" too;
//! - a periodic refresh as a safety net (every 30 s with the doorbell, every 2 s without it,
//!   e.g. when netlink sockets are not permitted);
//! - every reload (`Server::reload` calls [`refresh`]).
//!
//! So an address added while the proxy runs is refused within milliseconds of the kernel's
//! notification.

use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::policy::LocalAddrs;

/// Re-read interval when the kernel notifies us of changes (also how long the watcher
/// thread outlives a dropped server at most).
const SAFETY_NET: Duration = Duration::from_secs(30);
/// Re-read interval when it cannot.
const POLL: Duration = Duration::from_secs(2);

/// Every address of every local interface, as the kernel lists them now.
pub fn interface_addresses() -> std::io::Result<Vec<IpAddr>> {
    Ok(if_addrs::get_if_addrs()?
        .into_iter()
        .map(|i| i.ip())
        .collect())
}

/// Reads the kernel's list into `local`; on an error the previous set stays.
pub fn refresh(local: &LocalAddrs) {
    match interface_addresses() {
        Ok(ips) => {
            let count = ips.len();
            if local.set_interfaces(ips) {
                tracing::debug!(count, "local interface addresses changed");
            }
        }
        Err(e) => tracing::warn!("cannot list the local interface addresses: {e}"),
    }
}

/// Watches for address changes until `local` is dropped, on a thread of its own (it blocks
/// in `recv`). Call once, after a first [`refresh`].
pub fn spawn(local: &Arc<LocalAddrs>) -> std::io::Result<()> {
    let weak = Arc::downgrade(local);
    std::thread::Builder::new()
        .name("gatehouse-ifwatch".into())
        .spawn(move || watch(weak))
        .map(|_| ())
}

fn watch(local: Weak<LocalAddrs>) {
    let mut doorbell = match Doorbell::open(SAFETY_NET) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(
                "no address change notifications ({e}); re-reading the interface addresses every {}s",
                POLL.as_secs()
            );
            None
        }
    };
    loop {
        match &doorbell {
            // Returns on a change or after SAFETY_NET.
            Some(d) => {
                if !d.wait() {
                    tracing::warn!("address change notifications stopped; polling instead");
                    doorbell = None;
                }
            }
            None => std::thread::sleep(POLL),
        }
        let Some(local) = local.upgrade() else { return };
        refresh(&local);
    }
}

#[cfg(target_os = "linux")]
mod netlink {
    use std::time::Duration;

    use rustix::fd::OwnedFd;
    use rustix::io::Errno;
    use rustix::net::netlink::SocketAddrNetlink;
    use rustix::net::{sockopt, AddressFamily, RecvFlags, SocketFlags, SocketType};

    /// `RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR` (linux/rtnetlink.h).
    const GROUPS: u32 = 0x10 | 0x100;

    /// An rtnetlink socket that receives a message whenever a local address changes.
    pub struct Doorbell {
        fd: OwnedFd,
    }

    impl Doorbell {
        /// `timeout` bounds each [`Doorbell::wait`].
        pub fn open(timeout: Duration) -> std::io::Result<Doorbell> {
            let fd = rustix::net::socket_with(
                AddressFamily::NETLINK,
                SocketType::RAW,
                SocketFlags::CLOEXEC,
                None, // NETLINK_ROUTE
            )?;
            rustix::net::bind(&fd, &SocketAddrNetlink::new(0, GROUPS))?;
            sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(timeout))?;
            Ok(Doorbell { fd })
        }

        /// Blocks until a change or the timeout, then drains every pending message (they are
        /// a doorbell, not parsed). False if the socket broke.
        pub fn wait(&self) -> bool {
            let mut buf = [0u8; 8192];
            match rustix::net::recv(&self.fd, &mut buf[..], RecvFlags::empty()) {
                Ok((_, 0)) => return false,
                // ENOBUFS: messages were lost; the caller re-reads the whole list anyway.
                Ok(_) | Err(Errno::AGAIN | Errno::INTR | Errno::NOBUFS) => {}
                Err(_) => return false,
            }
            // Bounded: whatever is queued is at most the socket's receive buffer.
            for _ in 0..1024 {
                match rustix::net::recv(&self.fd, &mut buf[..], RecvFlags::DONTWAIT) {
                    Ok((_, 0)) => return false,
                    Ok(_) | Err(Errno::INTR | Errno::NOBUFS) => {}
                    Err(_) => break,
                }
            }
            true
        }
    }
}

#[cfg(target_os = "linux")]
use netlink::Doorbell;

#[cfg(not(target_os = "linux"))]
struct Doorbell;

#[cfg(not(target_os = "linux"))]
impl Doorbell {
    fn open(_: Duration) -> std::io::Result<Doorbell> {
        Err(std::io::Error::other("not supported on this system"))
    }

    fn wait(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_list_has_loopback() {
        let ips = interface_addresses().expect("getifaddrs");
        assert!(ips.iter().any(|ip| ip.is_loopback()), "{ips:?}");
    }
}
