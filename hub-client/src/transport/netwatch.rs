//! Changes of this host's network: on Linux, rtnetlink's multicast notices of links, addresses
//! and routes, so that the relay connection reacts at once to a hub that roams (a phone or a
//! laptop moving from Wi-Fi to cellular) instead of at its next probe: a socket whose local
//! address went away is given up at once, a socket that may have lost its route is probed
//! (`shared_proto::relay::liveness`), and a reconnect waiting in its backoff is tried at once.
//! Elsewhere nothing is watched (the probes alone find a dead path).

use std::net::IpAddr;

use tokio::sync::watch;

/// Changes seen so far, counted: a receiver wakes on each.
pub type NetworkChanges = watch::Receiver<u64>;

/// Starts watching this host's links, addresses and routes; `None` where that is not possible
/// (not Linux, or no netlink socket here), with the reason logged.
pub fn watch_network() -> Option<NetworkChanges> {
    match start() {
        Ok(changes) => Some(changes),
        Err(e) => {
            tracing::info!("not watching the network for changes: {e}");
            None
        }
    }
}

/// Whether `ip` is one of this host's addresses now (a socket bound to one that is not is dead).
/// `true` when the host's addresses cannot be read: the path is then probed instead.
pub fn host_has_address(ip: IpAddr) -> bool {
    match if_addrs::get_if_addrs() {
        Ok(addrs) => addrs.iter().any(|a| a.ip() == ip),
        Err(_) => true,
    }
}

#[cfg(target_os = "linux")]
fn start() -> std::io::Result<NetworkChanges> {
    use netlink_sys::{protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, SocketAddr};

    // The legacy multicast group bits of rtnetlink (linux/rtnetlink.h).
    const RTMGRP_LINK: u32 = 0x1;
    const RTMGRP_IPV4_IFADDR: u32 = 0x10;
    const RTMGRP_IPV4_ROUTE: u32 = 0x40;
    const RTMGRP_IPV6_IFADDR: u32 = 0x100;
    const RTMGRP_IPV6_ROUTE: u32 = 0x400;
    let groups = RTMGRP_LINK
        | RTMGRP_IPV4_IFADDR
        | RTMGRP_IPV4_ROUTE
        | RTMGRP_IPV6_IFADDR
        | RTMGRP_IPV6_ROUTE;
    let mut socket = netlink_sys::TokioSocket::new(NETLINK_ROUTE)?;
    socket.socket_mut().bind(&SocketAddr::new(0, groups))?;
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        loop {
            // What changed does not matter: whoever listens looks at the host again.
            match socket.recv_from_full().await {
                Ok(_) => {
                    tx.send_modify(|n| *n += 1);
                    if tx.is_closed() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!("stopped watching the network for changes: {e}");
                    return;
                }
            }
        }
    });
    Ok(rx)
}

#[cfg(not(target_os = "linux"))]
fn start() -> std::io::Result<NetworkChanges> {
    Err(std::io::Error::other("only Linux is watched"))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The loopback address is always this host's; a documentation address never is.
    #[test]
    fn the_hosts_addresses_are_read() {
        assert!(host_has_address(IpAddr::from([127, 0, 0, 1])));
        assert!(!host_has_address(IpAddr::from([192, 0, 2, 77])));
    }
}
