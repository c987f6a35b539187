//! Recognising the relay's own output.
//!
//! A relay bound on the port it broadcasts to receives its own broadcasts
//! back (the kernel loops broadcasts to local sockets). Those arrive from one
//! of our sockets: the source port is a port we are bound on, and the source
//! address is the one we are bound on or, for a socket bound on a wildcard
//! (`0.0.0.0`, `::`), any address of this host's interfaces. The interface
//! addresses come from `getifaddrs`, read when the first wildcard socket is
//! reported and again (at most once a second) whenever a datagram from one of
//! our ports comes from an address we do not know: an address added after
//! start is picked up the first time it matters.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};

/// The relay's sockets and this host's addresses.
#[derive(Debug, Default)]
pub(crate) struct OwnAddrs {
    bound: Vec<SocketAddr>,
    host: HashSet<IpAddr>,
    /// When `host` was last read (`None`: never).
    read_ms: Option<u64>,
}

/// `::ffff:a.b.c.d` as `a.b.c.d`: a dual-stack socket reports IPv4 peers so.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl OwnAddrs {
    /// Adds a bound socket.
    pub(crate) fn add_socket(&mut self, local: SocketAddr, now_ms: u64) -> io::Result<()> {
        let local = canonical(local);
        self.bound.push(local);
        if local.ip().is_unspecified() && self.read_ms.is_none() {
            self.refresh(now_ms)?;
        }
        Ok(())
    }

    /// Whether `source` is one of our sockets.
    pub(crate) fn is_own(&mut self, source: SocketAddr, now_ms: u64) -> bool {
        let source = canonical(source);
        let mut wildcard_port = false;
        for b in &self.bound {
            if b.port() != source.port() {
                continue;
            }
            if b.ip() == source.ip() {
                return true;
            }
            wildcard_port |= b.ip().is_unspecified();
        }
        if !wildcard_port {
            return false;
        }
        if self.host.contains(&source.ip()) {
            return true;
        }
        // One of our ports, from an address we do not know: maybe one added
        // since we last looked.
        let stale = self
            .read_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= 1000);
        stale && self.refresh(now_ms).is_ok() && self.host.contains(&source.ip())
    }

    fn refresh(&mut self, now_ms: u64) -> io::Result<()> {
        self.read_ms = Some(now_ms);
        self.host = interface_addresses()?.into_iter().collect();
        Ok(())
    }

    /// This host's addresses as last read.
    #[cfg(test)]
    pub(crate) fn host_addresses(&self) -> &HashSet<IpAddr> {
        &self.host
    }
}

/// Every IPv4 and IPv6 address of this host's interfaces (`getifaddrs`).
pub(crate) fn interface_addresses() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid out-pointer; on success the list is freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-NULL and points to a sockaddr of the family it names.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        match family {
            libc::AF_INET => {
                // SAFETY: the family says this is a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                out.push(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ));
            }
            libc::AF_INET6 => {
                // SAFETY: the family says this is a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
            _ => {}
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn interface_addresses_include_loopback() {
        let addrs = interface_addresses().unwrap();
        assert!(addrs.contains(&IpAddr::from([127, 0, 0, 1])), "{addrs:?}");
    }

    #[test]
    fn a_specific_bind_matches_exactly() {
        let mut own = OwnAddrs::default();
        own.add_socket(a("127.0.0.1:7002"), 0).unwrap();
        assert!(
            own.host_addresses().is_empty(),
            "no wildcard: nothing to read"
        );
        assert!(own.is_own(a("127.0.0.1:7002"), 0));
        assert!(own.is_own(a("[::ffff:127.0.0.1]:7002"), 0), "mapped");
        assert!(!own.is_own(a("127.0.0.1:7003"), 0), "another port");
        assert!(!own.is_own(a("127.0.0.2:7002"), 0), "another address");
    }

    #[test]
    fn a_wildcard_bind_matches_every_local_address() {
        let mut own = OwnAddrs::default();
        own.add_socket(a("0.0.0.0:7003"), 0).unwrap();
        assert!(own.is_own(a("127.0.0.1:7003"), 0));
        assert!(!own.is_own(a("127.0.0.1:7004"), 0));
        // 198.18.0.77 is no address of this host (the test network is only
        // ever inside namespaces the tests create).
        assert!(!own.is_own(a("198.18.0.77:7003"), 0));
        // A miss re-reads the addresses at most once a second.
        own.host.clear();
        assert!(
            !own.is_own(a("127.0.0.1:7003"), 500),
            "read at 0: not again yet"
        );
        assert!(own.is_own(a("127.0.0.1:7003"), 1000), "re-read");
    }
}
