//! Which addresses a router may dial: only other routers.
//!
//! A handle names the router serving its listener by address, and handles
//! come from tenants, so without a rule a tenant could make its router open
//! TCP connections anywhere the router's network namespace reaches (its
//! loopback, the host's services). The rule, `--peers` and
//! `--peer-network`:
//!
//! * `--peers IP:PORT,...`: exactly these routers;
//! * `--peer-network CIDR` (repeatable): any port of these networks;
//! * neither: the network of the interface that holds the advertised
//!   address (e.g. 10.0.0.0/24 for `--advertise-addr 10.0.0.1:7070`), which
//!   is where the other routers of a cluster live. Container networks
//!   must not overlap it (they do not in Kubernetes or Docker: pods and
//!   bridges have their own ranges).
//!
//! Never, whatever the flags say: unspecified, multicast or broadcast
//! addresses, and loopback unless this router itself is on loopback (one
//! machine, tests). Incoming links are held to the same rule.

use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Net {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Net {
    pub fn parse(s: &str) -> Result<Net, String> {
        let (a, p) = s.split_once('/').ok_or_else(|| format!("{s}: expected ADDRESS/PREFIX"))?;
        let addr: IpAddr = a.parse().map_err(|e| format!("{s}: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = p.parse().ok().filter(|p| *p <= max).ok_or_else(|| format!("{s}: prefix must be 0 to {max}"))?;
        Ok(Net { addr, prefix })
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
                u32::from(n) & mask == u32::from(*a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix) };
                u128::from(n) & mask == u128::from(*a) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The addresses this router may link with.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    nets: Vec<Net>,
    addrs: Vec<SocketAddr>,
    /// This router's own address is loopback: so may its peers' be.
    loopback_ok: bool,
}

/// The network of the local interface holding `ip`, if any.
fn interface_net(ip: IpAddr) -> Option<Net> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        let (Some(addr), Some(mask)) = (a.address, a.netmask) else { continue };
        let (addr, prefix) = if let (Some(x), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            (IpAddr::V4(x.ip()), u32::from(m.ip()).count_ones() as u8)
        } else if let (Some(x), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            (IpAddr::V6(x.ip()), u128::from(m.ip()).count_ones() as u8)
        } else {
            continue;
        };
        if addr == ip {
            return Some(Net { addr, prefix });
        }
    }
    None
}

impl PeerPolicy {
    /// From the flags; `advertise` is this router's own address.
    pub fn new(nets: &[String], peers: &[String], advertise: SocketAddr) -> Result<PeerPolicy, String> {
        let mut nets: Vec<Net> = nets.iter().map(|n| Net::parse(n).map_err(|e| format!("--peer-network {e}"))).collect::<Result<_, _>>()?;
        let mut addrs = Vec::new();
        for p in peers.iter().flat_map(|p| p.split(',')).map(str::trim).filter(|p| !p.is_empty()) {
            addrs.push(p.parse::<SocketAddr>().map_err(|e| format!("--peers {p}: {e}"))?);
        }
        let loopback_ok = advertise.ip().is_loopback();
        if nets.is_empty() && addrs.is_empty() {
            if loopback_ok {
                nets.push(Net { addr: advertise.ip(), prefix: if advertise.is_ipv4() { 8 } else { 128 } });
            } else {
                let net = interface_net(advertise.ip()).ok_or_else(|| {
                    format!("no local interface holds {} (the advertised address): say which routers this one may link with (--peer-network CIDR or --peers)", advertise.ip())
                })?;
                nets.push(net);
            }
        }
        Ok(PeerPolicy { nets, addrs, loopback_ok })
    }

    /// Any address at all (tests of the engine only).
    #[cfg(test)]
    pub fn any() -> PeerPolicy {
        PeerPolicy { nets: vec![Net::parse("0.0.0.0/0").unwrap(), Net::parse("::/0").unwrap()], addrs: Vec::new(), loopback_ok: true }
    }

    /// May this router dial `a` (or accept a link from it; then the port
    /// is not checked, as it is the peer's ephemeral port)?
    pub fn allows(&self, a: &SocketAddr, any_port: bool) -> bool {
        let ip = a.ip().to_canonical();
        let never = ip.is_unspecified()
            || ip.is_multicast()
            || (ip.is_loopback() && !self.loopback_ok)
            || matches!(ip, IpAddr::V4(v) if v.is_broadcast());
        if never {
            return false;
        }
        self.nets.iter().any(|n| n.contains(&ip)) || self.addrs.iter().any(|p| p.ip().to_canonical() == ip && (any_port || p.port() == a.port()))
    }
}

impl std::fmt::Display for PeerPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.nets.iter().map(|n| n.to_string()).chain(self.addrs.iter().map(|a| a.to_string())).collect();
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_and_addresses() {
        let p = PeerPolicy::new(&["10.0.0.0/24".into()], &["192.168.1.5:7070, 192.168.1.6:7070".into()], sa("10.0.0.1:7070")).unwrap();
        assert!(p.allows(&sa("10.0.0.9:7070"), false) && p.allows(&sa("10.0.0.9:22"), false), "any port in a network");
        assert!(!p.allows(&sa("10.0.1.9:7070"), false));
        assert!(p.allows(&sa("192.168.1.6:7070"), false) && !p.allows(&sa("192.168.1.6:22"), false), "only the port given");
        assert!(p.allows(&sa("192.168.1.6:40000"), true), "incoming links come from any port");
        assert!(p.allows(&sa("[::ffff:10.0.0.9]:7070"), false), "IPv4-mapped IPv6");
    }

    #[test]
    fn loopback_and_special_addresses_are_never_dialed() {
        let p = PeerPolicy::new(&["0.0.0.0/0".into(), "::/0".into()], &[], sa("10.0.0.1:7070")).unwrap();
        for bad in ["127.0.0.1:7070", "127.3.4.5:22", "[::1]:7070", "0.0.0.0:7070", "224.0.0.1:7070", "255.255.255.255:7070", "[::ffff:127.0.0.1]:7070"] {
            assert!(!p.allows(&sa(bad), false), "{bad}");
        }
        assert!(p.allows(&sa("8.8.8.8:7070"), false), "what the operator allowed");
        // A router on loopback (one machine) links with routers on loopback.
        let lo = PeerPolicy::new(&[], &[], sa("127.0.0.1:7070")).unwrap();
        assert!(lo.allows(&sa("127.0.0.1:7071"), false) && !lo.allows(&sa("10.0.0.1:7070"), false));
    }

    #[test]
    fn the_default_is_the_advertised_interface_network() {
        // Loopback is the one interface every machine has: 127.0.0.1/8.
        let net = interface_net("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(net.prefix, 8);
        assert!(PeerPolicy::new(&[], &[], sa("203.0.113.77:7070")).is_err(), "an address no interface holds needs explicit flags");
        assert!(Net::parse("10.0.0.0/33").is_err() && Net::parse("10.0.0.0").is_err());
    }
}
