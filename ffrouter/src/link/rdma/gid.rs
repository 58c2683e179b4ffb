//! Which RDMA device, port and GID a router uses.
//!
//! RoCE addresses queue pairs by GID, and a RoCE port has several: one per
//! IP address of its netdev and RoCE version (v1, v2), plus the IPv6 link
//! local ones. Only the RoCE v2 GID of the address the peer routers reach
//! us at is routable between hosts; index 0 (link-local, fe80::) is not
//! (on soft-RoCE, `ibv_modify_qp` then times out). So the router picks the
//! GID whose type is RoCE v2, whose netdev holds the listen address (or
//! the advertised one when it listens on 0.0.0.0) and whose value is that
//! address (IPv4 mapped: `::ffff:a.b.c.d`). The device is chosen by the
//! same rule, not by its place in the device list.
//!
//! The GID table and its attributes come from sysfs, as rdma-core exposes
//! them (`/sys/class/infiniband/DEV/ports/P/gids/I`,
//! `.../gid_attrs/types/I`, `.../gid_attrs/ndevs/I`); the device then
//! queries the chosen GID with `ibv_query_gid` and checks it is the same.
//! `--rdma-device` and `--rdma-gid-index` override the choice (InfiniBand
//! fabrics, addresses that are not on the RDMA netdev).

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::Path;

/// Where rdma-core's kernel side lists devices.
pub const SYSFS: &str = "/sys/class/infiniband";

/// One entry of a port's GID table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gid {
    pub device: String,
    pub port: u8,
    pub index: u32,
    pub gid: [u8; 16],
    /// "RoCE v2", "IB/RoCE v1", or empty when sysfs does not say.
    pub kind: String,
    /// The netdev the GID belongs to (RoCE), if any.
    pub ndev: Option<String>,
}

/// The device, port and GID a router's queue pairs use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub device: String,
    pub port: u8,
    pub gid_index: u32,
    /// The GID as sysfs lists it (None when only the flags named it).
    pub gid: Option<[u8; 16]>,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} port {} GID index {}", self.device, self.port, self.gid_index)?;
        if let Some(g) = &self.gid {
            write!(f, " ({})", show(g))?;
        }
        Ok(())
    }
}

/// A GID as text (an IPv6 address; IPv4-mapped ones show the IPv4 form).
pub fn show(g: &[u8; 16]) -> String {
    let a = std::net::Ipv6Addr::from(*g);
    match a.to_ipv4_mapped() {
        Some(v4) => format!("::ffff:{v4}"),
        None => a.to_string(),
    }
}

/// The GID RoCE v2 gives `ip`.
pub fn gid_of(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn parse_gid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.trim().chars().filter(|c| *c != ':').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut g = [0u8; 16];
    for (i, b) in g.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(g)
}

fn sorted_entries(dir: &Path) -> io::Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(dir)?.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    // Numbers in numeric order, names in name order.
    v.sort_by(|a, b| match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    });
    Ok(v)
}

/// Every non-empty GID of every port of every device under `root` (in
/// the layout of /sys/class/infiniband). Attributes sysfs cannot give
/// (old kernels; the kernel refuses to read those of unused entries) are
/// left empty.
pub fn scan(root: &Path) -> io::Result<Vec<Gid>> {
    let mut out = Vec::new();
    for dev in sorted_entries(root)? {
        let ports = root.join(&dev).join("ports");
        let Ok(port_names) = sorted_entries(&ports) else { continue };
        for p in port_names {
            let Ok(port) = p.parse::<u8>() else { continue };
            let pdir = ports.join(&p);
            let Ok(idxs) = sorted_entries(&pdir.join("gids")) else { continue };
            for i in idxs {
                let Ok(index) = i.parse::<u32>() else { continue };
                let Some(gid) = std::fs::read_to_string(pdir.join("gids").join(&i)).ok().and_then(|s| parse_gid(&s)) else { continue };
                if gid == [0; 16] {
                    continue;
                }
                let attr = |what: &str| std::fs::read_to_string(pdir.join("gid_attrs").join(what).join(&i)).ok().map(|s| s.trim().to_string());
                let kind = attr("types").unwrap_or_default();
                let ndev = attr("ndevs").filter(|s| !s.is_empty());
                out.push(Gid { device: dev.clone(), port, index, gid, kind, ndev });
            }
        }
    }
    Ok(out)
}

/// The netdevs holding `ip`.
pub fn netdevs_with(ip: IpAddr) -> Vec<String> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    let mut v: Vec<String> = addrs
        .filter(|a| {
            let Some(s) = a.address else { return false };
            s.as_sockaddr_in().map(|x| IpAddr::V4(x.ip())) == Some(ip) || s.as_sockaddr_in6().map(|x| IpAddr::V6(x.ip())) == Some(ip)
        })
        .map(|a| a.interface_name)
        .collect();
    v.dedup();
    v
}

fn is_v2(g: &Gid) -> bool {
    g.kind.eq_ignore_ascii_case("RoCE v2")
}

/// Picks the device, port and GID for address `ip` (held by `netdevs`)
/// from `gids`, or as `device` / `gid_index` say (the flags). The error
/// says what was looked for and what exists.
pub fn choose(gids: &[Gid], ip: IpAddr, netdevs: &[String], device: Option<&str>, gid_index: Option<u32>) -> Result<Choice, String> {
    let want = gid_of(ip);
    let on_dev = |g: &&Gid| device.is_none_or(|d| g.device == d);
    if let Some(d) = device {
        if !gids.iter().any(|g| g.device == d) && gid_index.is_none() {
            let devs: Vec<&str> = gids.iter().map(|g| g.device.as_str()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            return Err(format!("--rdma-device {d}: no such RDMA device with GIDs (devices: {})", if devs.is_empty() { "none".into() } else { devs.join(", ") }));
        }
    }
    // The rule: RoCE v2, on the netdev holding the address, with the
    // address as its value.
    let matched = gids.iter().filter(on_dev).find(|g| is_v2(g) && g.gid == want && g.ndev.as_ref().is_some_and(|n| netdevs.contains(n)));
    match (matched, gid_index) {
        (Some(g), None) => Ok(Choice { device: g.device.clone(), port: g.port, gid_index: g.index, gid: Some(g.gid) }),
        (m, Some(i)) => {
            // The index is given: on the device the rule found, else the
            // one named, else the only one there is.
            let dev = match (m, device) {
                (Some(g), _) => g.device.clone(),
                (None, Some(d)) => d.to_string(),
                (None, None) => {
                    let devs: std::collections::BTreeSet<&str> = gids.iter().map(|g| g.device.as_str()).collect();
                    match devs.len() {
                        1 => devs.into_iter().next().unwrap().to_string(),
                        0 => return Err(format!("--rdma-gid-index {i}: no RDMA device lists any GID")),
                        _ => {
                            return Err(format!(
                                "--rdma-gid-index {i}: no RoCE v2 GID of {ip} says which device to use ({}); add --rdma-device",
                                devs.into_iter().collect::<Vec<_>>().join(", ")
                            ))
                        }
                    }
                }
            };
            let port = m.map(|g| g.port);
            match gids.iter().find(|g| g.device == dev && g.index == i && port.is_none_or(|p| g.port == p)) {
                Some(g) => Ok(Choice { device: dev, port: g.port, gid_index: i, gid: Some(g.gid) }),
                // Not in sysfs (unreadable, or empty): the operator said so;
                // the device's own query decides.
                None if device.is_some() => Ok(Choice { device: dev, port: port.unwrap_or(1), gid_index: i, gid: None }),
                None => Err(format!("--rdma-gid-index {i}: {dev} lists no GID at that index")),
            }
        }
        (None, None) => {
            let seen: Vec<String> = gids
                .iter()
                .filter(on_dev)
                .map(|g| format!("{} port {} index {}: {} {} on {}", g.device, g.port, g.index, show(&g.gid), if g.kind.is_empty() { "?" } else { &g.kind }, g.ndev.as_deref().unwrap_or("-")))
                .collect();
            Err(format!(
                "no RoCE v2 GID {} for {ip} on {} (the netdev holding the address{}){}; name the GID with --rdma-gid-index (and the device with --rdma-device), or listen on the address of the RDMA netdev. GIDs{}: {}",
                show(&want),
                if netdevs.is_empty() { "no local netdev".to_string() } else { netdevs.join(", ") },
                if netdevs.is_empty() { ": it is not a local address" } else { "" },
                device.map(|d| format!(" on {d}")).unwrap_or_default(),
                device.map(|d| format!(" of {d}")).unwrap_or_default(),
                if seen.is_empty() { "none".into() } else { seen.join("; ") }
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a fake /sys/class/infiniband: (device, port, index, gid text,
    /// type, ndev).
    fn tree(entries: &[(&str, u8, u32, &str, &str, &str)]) -> tempdir::Dir {
        let d = tempdir::Dir::new();
        for (dev, port, idx, gid, kind, ndev) in entries {
            let p = d.0.join(dev).join("ports").join(port.to_string());
            for (sub, val) in [("gids", *gid), ("gid_attrs/types", *kind), ("gid_attrs/ndevs", *ndev)] {
                std::fs::create_dir_all(p.join(sub)).unwrap();
                if !val.is_empty() {
                    std::fs::write(p.join(sub).join(idx.to_string()), format!("{val}\n")).unwrap();
                }
            }
        }
        d
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!("ffgid-{}-{}", std::process::id(), rand::random::<u64>()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const ZERO: &str = "0000:0000:0000:0000:0000:0000:0000:0000";
    const LL: &str = "fe80:0000:0000:0000:5054:00ff:fe12:3401";
    const V4: &str = "0000:0000:0000:0000:0000:ffff:0a00:0002"; // ::ffff:10.0.0.2

    /// What soft-RoCE on kernel 6.1 lists (rxe0 on ens4, 10.0.0.2/24).
    fn rxe() -> tempdir::Dir {
        tree(&[
            ("rxe0", 1, 0, LL, "RoCE v2", "ens4"),
            ("rxe0", 1, 1, V4, "RoCE v2", "ens4"),
            ("rxe0", 1, 2, ZERO, "", ""),
        ])
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn scan_reads_gids_types_and_netdevs_and_skips_empty_entries() {
        let d = rxe();
        let g = scan(&d.0).unwrap();
        assert_eq!(g.len(), 2, "{g:?}");
        assert_eq!(g[1], Gid { device: "rxe0".into(), port: 1, index: 1, gid: gid_of(ip("10.0.0.2")), kind: "RoCE v2".into(), ndev: Some("ens4".into()) });
        assert_eq!(show(&g[1].gid), "::ffff:10.0.0.2");
        assert_eq!(show(&g[0].gid), "fe80::5054:ff:fe12:3401");
    }

    #[test]
    fn picks_the_roce_v2_gid_of_the_listen_address_not_index_0() {
        let d = rxe();
        let c = choose(&scan(&d.0).unwrap(), ip("10.0.0.2"), &["ens4".into()], None, None).unwrap();
        assert_eq!(c, Choice { device: "rxe0".into(), port: 1, gid_index: 1, gid: Some(gid_of(ip("10.0.0.2"))) });
        assert_eq!(c.to_string(), "rxe0 port 1 GID index 1 (::ffff:10.0.0.2)");
    }

    #[test]
    fn picks_the_device_and_port_by_the_same_rule_not_the_first_listed() {
        // mlx5_0 (first in the list) serves another netdev; the address is
        // on mlx5_1's port 2, where RoCE v1 and v2 GIDs of it both exist,
        // at indexes a real NIC uses (v1 at 2, v2 at 3).
        let v6 = "fd00:0000:0000:0000:0000:0000:0000:0007";
        let d = tree(&[
            ("mlx5_0", 1, 0, LL, "IB/RoCE v1", "eth0"),
            ("mlx5_0", 1, 1, LL, "RoCE v2", "eth0"),
            ("mlx5_0", 1, 3, "0000:0000:0000:0000:0000:ffff:c0a8:0001", "RoCE v2", "eth0"),
            ("mlx5_1", 1, 0, LL, "RoCE v2", "eth1"),
            ("mlx5_1", 2, 0, LL, "IB/RoCE v1", "eth2"),
            ("mlx5_1", 2, 1, LL, "RoCE v2", "eth2"),
            ("mlx5_1", 2, 2, V4, "IB/RoCE v1", "eth2"),
            ("mlx5_1", 2, 3, V4, "RoCE v2", "eth2"),
            ("mlx5_1", 2, 4, v6, "RoCE v2", "eth2"),
        ]);
        let g = scan(&d.0).unwrap();
        let c = choose(&g, ip("10.0.0.2"), &["eth2".into()], None, None).unwrap();
        assert_eq!((c.device.as_str(), c.port, c.gid_index), ("mlx5_1", 2, 3));
        let c = choose(&g, ip("fd00::7"), &["eth2".into()], None, None).unwrap();
        assert_eq!((c.device.as_str(), c.port, c.gid_index), ("mlx5_1", 2, 4));
        let c = choose(&g, ip("192.168.0.1"), &["eth0".into()], None, None).unwrap();
        assert_eq!((c.device.as_str(), c.port, c.gid_index), ("mlx5_0", 1, 3));
        // The same address bound to another netdev than the one holding
        // it does not count.
        assert!(choose(&g, ip("10.0.0.2"), &["eth1".into()], None, None).is_err());
    }

    #[test]
    fn flags_override_the_device_and_the_index() {
        let d = tree(&[
            ("mlx5_0", 1, 0, LL, "RoCE v2", "eth0"),
            ("mlx5_0", 1, 1, V4, "RoCE v2", "eth0"),
            ("rxe0", 1, 0, LL, "RoCE v2", "eth0"),
            ("rxe0", 1, 1, V4, "RoCE v2", "eth0"),
        ]);
        let g = scan(&d.0).unwrap();
        let n = ["eth0".to_string()];
        assert_eq!(choose(&g, ip("10.0.0.2"), &n, None, None).unwrap().device, "mlx5_0");
        let c = choose(&g, ip("10.0.0.2"), &n, Some("rxe0"), None).unwrap();
        assert_eq!((c.device.as_str(), c.gid_index), ("rxe0", 1));
        let c = choose(&g, ip("10.0.0.2"), &n, Some("rxe0"), Some(0)).unwrap();
        assert_eq!((c.device.as_str(), c.port, c.gid_index, c.gid), ("rxe0", 1, 0, Some(gid_of(ip("fe80::5054:ff:fe12:3401")))));
        // Only the index: the device the rule finds.
        let c = choose(&g, ip("10.0.0.2"), &n, None, Some(0)).unwrap();
        assert_eq!((c.device.as_str(), c.gid_index), ("mlx5_0", 0));
        // An index sysfs does not list is an error, unless the device is
        // named too (the device's own query then decides).
        assert!(choose(&g, ip("10.0.0.2"), &n, None, Some(9)).unwrap_err().contains("no GID at that index"));
        let c = choose(&g, ip("10.0.0.2"), &n, Some("mlx5_0"), Some(9)).unwrap();
        assert_eq!((c.gid_index, c.gid), (9, None));
        let e = choose(&g, ip("10.0.0.2"), &n, Some("mlx4_0"), None).unwrap_err();
        assert!(e.contains("--rdma-device mlx4_0") && e.contains("mlx5_0, rxe0"), "{e}");
    }

    #[test]
    fn no_match_is_a_clear_error_naming_what_exists() {
        let d = rxe();
        let g = scan(&d.0).unwrap();
        // Listening on an address of another netdev.
        let e = choose(&g, ip("192.168.1.5"), &["eth9".into()], None, None).unwrap_err();
        assert!(e.contains("no RoCE v2 GID ::ffff:192.168.1.5 for 192.168.1.5 on eth9"), "{e}");
        assert!(e.contains("rxe0 port 1 index 1: ::ffff:10.0.0.2 RoCE v2 on ens4"), "{e}");
        assert!(e.contains("--rdma-gid-index"), "{e}");
        // An address no netdev holds.
        let e = choose(&g, ip("10.0.0.2"), &[], None, None).unwrap_err();
        assert!(e.contains("not a local address"), "{e}");
        // RoCE v1 GIDs only: not routable, not chosen.
        let v1 = tree(&[("rxe0", 1, 0, V4, "IB/RoCE v1", "ens4")]);
        assert!(choose(&scan(&v1.0).unwrap(), ip("10.0.0.2"), &["ens4".into()], None, None).is_err());
        // Two devices and an index but nothing to tell them apart.
        let two = tree(&[("a", 1, 0, LL, "RoCE v2", "x"), ("b", 1, 0, LL, "RoCE v2", "y")]);
        let e = choose(&scan(&two.0).unwrap(), ip("10.0.0.2"), &[], None, Some(0)).unwrap_err();
        assert!(e.contains("add --rdma-device"), "{e}");
        // No devices at all.
        let none = tree(&[]);
        assert!(scan(&none.0).unwrap().is_empty());
        assert!(choose(&[], ip("10.0.0.2"), &[], None, None).unwrap_err().contains("GIDs: none"));
    }

    #[test]
    fn netdevs_with_finds_loopback() {
        assert!(netdevs_with(ip("127.0.0.1")).contains(&"lo".to_string()));
        assert!(netdevs_with(ip("192.0.2.77")).is_empty());
    }
}
