//! ffrouter command line: `ffrouter [serve] ...` and `ffrouter stats`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ffrouter::{Limits, Router, Tenant};

#[derive(Parser)]
#[command(name = "ffrouter", version, about = "FreeFlow per-host router: gives containers fast, isolated messaging through shared memory it owns")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the router (the default).
    Serve(Box<ServeArgs>),
    /// Print a tenant's counters from a running router.
    Stats {
        /// The tenant socket to ask.
        #[arg(long, default_value = ffcore::client::DEFAULT_SOCKET)]
        socket: String,
    },
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// A tenant (virtual network) and its socket, as NAME=PATH. Repeat for
    /// more tenants. Each tenant's containers get only their socket's
    /// directory mounted; endpoints of different tenants never connect.
    /// Without any, one tenant "default" is served on --socket.
    #[arg(long = "tenant", value_name = "NAME=PATH")]
    tenants: Vec<String>,
    /// Socket of the default tenant when no --tenant is given.
    #[arg(long, default_value = ffcore::client::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Bytes per direction of each connection's shared ring (power of two,
    /// 4 KiB to 1 GiB). Bigger rings let more data be in flight.
    #[arg(long, default_value_t = 4 << 20)]
    ring_size: usize,
    /// Ring bytes (per direction) that a tenant's same-host connections
    /// get in all before its new ones get smaller rings: a new connection
    /// gets BYTES / (the tenant's same-host connections open + 1), rounded
    /// down to a power of two, at most --ring-size and at least 1 MiB.
    #[arg(long, value_name = "BYTES", default_value_t = ffrouter::state::LOCAL_RING_BUDGET)]
    ring_budget: usize,
    /// Shared memory (rings and shadow regions) one client may hold.
    #[arg(long, default_value_t = 64 << 30)]
    max_client_bytes: u64,
    /// Listeners, connections and regions one client may hold.
    #[arg(long, default_value_t = 65536)]
    max_client_objects: usize,
    /// Threads the router may run for tenants (one per attached client),
    /// all tenants together; each of
    /// N tenants may use 1/N of them.
    #[arg(long, default_value_t = 4096)]
    max_threads: usize,
    /// Descriptors the router may hold for tenants (client sockets, shared
    /// files), all tenants together; each of N tenants may use 1/N of
    /// them. Default: what the open-file limit leaves after the router's
    /// own needs (the router raises its soft limit to the hard one).
    #[arg(long)]
    max_fds: Option<usize>,
    /// Send rate limit, as TARGET=RATE: TARGET is a tenant name (each of its
    /// containers gets RATE) or pidns:INODE (one container, identified by its
    /// PID namespace; overrides the tenant's). RATE in bytes/s with an
    /// optional K, M or G suffix (powers of 1000), e.g. teamA=2G. Repeatable.
    #[arg(long = "rate-limit", value_name = "TARGET=RATE")]
    rate_limits: Vec<String>,
    /// Serve Prometheus metrics (every tenant's counters) at
    /// http://ADDR/metrics, e.g. 127.0.0.1:9464. Off by default. An address
    /// other than loopback needs --metrics-token-file (containers could
    /// reach it).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// A file holding the token a scraper must send
    /// (`Authorization: Bearer TOKEN`; Prometheus: `authorization:
    /// credentials_file`).
    #[arg(long, value_name = "PATH", requires = "metrics_addr")]
    metrics_token_file: Option<PathBuf>,
    /// Talk to other hosts' routers: listen for them at IP:PORT. Start every
    /// host's router the same way; clients then connect to handles of any
    /// host. Without it, the router serves its own host only.
    #[arg(long, value_name = "IP:PORT")]
    listen_addr: Option<String>,
    /// The address other routers reach this one at, put into every handle
    /// (default: --listen-addr, which then must not be 0.0.0.0 or ::).
    #[arg(long, value_name = "IP:PORT", requires = "listen_addr")]
    advertise_addr: Option<String>,
    /// Data streams per pair of routers (each connection uses one); every
    /// link also has one more, for connection set-up. A link between
    /// routers started with different numbers has the smaller one.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    peer_streams: u16,
    /// A file holding a secret (at least 16 bytes) every router of the
    /// cluster shares: links are only set up with routers that prove they
    /// know it, and everything on them is encrypted and authenticated
    /// (AEGIS-128X2). Needed with --listen-addr.
    #[arg(long, value_name = "PATH", requires = "listen_addr")]
    peer_secret_file: Option<PathBuf>,
    /// Link with other routers without a secret: no authentication, no
    /// encryption; whoever reaches --listen-addr is trusted as a router.
    /// Only for networks that nothing but routers can reach.
    #[arg(long, requires = "listen_addr")]
    insecure_no_peer_secret: bool,
    /// A network (CIDR) of other routers, e.g. 10.0.0.0/24: the router
    /// only links with addresses in it (tenants' handles name addresses).
    /// Repeatable. Default, with neither this nor --peers: the network of
    /// the interface holding --advertise-addr. Never loopback (unless this
    /// router is on loopback), multicast or broadcast.
    #[arg(long = "peer-network", value_name = "CIDR", requires = "listen_addr")]
    peer_networks: Vec<String>,
    /// The other routers, exactly: IP:PORT[,IP:PORT...] (instead of, or
    /// besides, --peer-network).
    #[arg(long, value_name = "IP:PORT,...", requires = "listen_addr")]
    peers: Vec<String>,
    /// Transport between routers: auto (RDMA if a device serves the listen
    /// address, else TCP), tcp or rdma.
    #[arg(long, default_value = "auto")]
    peer_transport: String,
    /// The RDMA device for links (e.g. mlx5_0, rxe0). Default: the device
    /// with a RoCE v2 GID of the listen address (of --advertise-addr when
    /// listening on 0.0.0.0) on the netdev holding it.
    #[arg(long, value_name = "NAME", requires = "listen_addr")]
    rdma_device: Option<String>,
    /// The GID index on the RDMA port. Default: the RoCE v2 GID whose value
    /// is the listen address (see --rdma-device), found in
    /// /sys/class/infiniband/DEV/ports/P/gid_attrs; InfiniBand fabrics give
    /// both flags (usually index 0).
    #[arg(long, value_name = "N", requires = "listen_addr")]
    rdma_gid_index: Option<u32>,
    /// Threads that forward connections to other hosts (more start when
    /// each has 127 connections). Default: the cores, at most 4.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pump_workers: Option<u16>,
    /// Ring size (bytes per direction) of connections to other hosts; it
    /// also bounds the data in flight per connection between routers.
    #[arg(long, default_value_t = 4 << 20)]
    peer_ring_size: usize,
    /// Ring bytes (per direction) that a tenant's connections to other
    /// hosts get in all before its new ones get smaller rings: a new
    /// connection gets BYTES / (the tenant's connections to other hosts
    /// open + 1), rounded down to a power of two,
    /// at most --peer-ring-size and at least 1 MiB (a ring that streams
    /// commits all its pages).
    #[arg(long, value_name = "BYTES", default_value_t = ffrouter::remote::RING_BUDGET)]
    peer_ring_budget: usize,
    /// Scheduling priority (nice value, -20 to 19) of every router thread,
    /// set at start (0: leave it as inherited). A negative value keeps
    /// clients that outnumber the cores (hundreds of client threads, busy
    /// data loaders) from starving forwarding: -10 lifted 512 connections
    /// across two hosts 1.2x and a stream beside a busy loop per core 1.4x,
    /// but made UCX's 8-byte latency across hosts 3-4x worse (the router's
    /// short polls then keep the ranks off their cores); see
    /// docs/many-hosts.md ("Router priority"). Going below the inherited value needs root or
    /// CAP_SYS_NICE; without, the router says so and keeps its priority.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-20..=19))]
    nice: i32,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides.
    #[arg(long, default_value = "info")]
    log_level: String,
}

/// Sets this thread's nice value; threads started later inherit it (on
/// Linux the value is per thread), so call it before any is started.
fn set_nice(nice: i32) {
    match ffrouter::sched::set_nice(nice) {
        Ok(()) => log::info!("scheduling priority: nice {nice}"),
        Err(e) => log::warn!("cannot set nice {nice} ({e}): keeping the inherited priority; clients that spin may slow forwarding"),
    }
}

fn parse_tenant(s: &str) -> Result<Tenant, String> {
    let (name, path) = s.split_once('=').ok_or_else(|| format!("--tenant {s}: expected NAME=PATH"))?;
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("--tenant {s}: name must be 1-64 of [A-Za-z0-9_-]"));
    }
    Ok(Tenant { name: name.into(), socket: path.into() })
}

fn parse_rate(s: &str) -> Result<u64, String> {
    let (num, mul) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1e3),
        Some((i, 'M' | 'm')) => (&s[..i], 1e6),
        Some((i, 'G' | 'g')) => (&s[..i], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num.parse().map_err(|_| format!("bad rate {s:?}"))?;
    if !(v > 0.0 && v * mul < 1e15) {
        return Err(format!("rate {s:?} out of range"));
    }
    Ok((v * mul) as u64)
}

fn parse_rates(specs: &[String]) -> Result<ffrouter::state::Rates, String> {
    let mut r = ffrouter::state::Rates::default();
    for s in specs {
        let (target, rate) = s.split_once('=').ok_or_else(|| format!("--rate-limit {s}: expected TARGET=RATE"))?;
        let rate = parse_rate(rate)?;
        match target.strip_prefix("pidns:") {
            Some(ino) => {
                r.container.insert(ino.parse().map_err(|_| format!("--rate-limit {s}: bad inode"))?, rate);
            }
            None => {
                r.tenant.insert(target.to_string(), rate);
            }
        }
    }
    Ok(r)
}

/// A number from a /proc file, or `default` where there is none.
fn proc_number(path: &str, default: u64) -> u64 {
    std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(default)
}

/// Raises the soft limit on open files as far as allowed; returns
/// (before, now).
fn raise_nofile() -> (u64, u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return (1024, 1024) };
    // An unlimited hard limit still stops at the kernel's nr_open.
    let nr_open = proc_number("/proc/sys/fs/nr_open", 1 << 20);
    let want = hard.min(nr_open);
    if want > soft && setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok() {
        return (soft, want);
    }
    (soft, soft)
}

/// The descriptors, threads and links the router may spend: the open-file
/// limit less what the router itself needs (links to other routers,
/// handshakes, its own files) goes to tenants, and so does no more than
/// the kernel's map count allows (every shared file is mapped).
fn budget(a: &ServeArgs, tenants: usize) -> Result<(usize, usize), String> {
    let (before, nofile) = raise_nofile();
    let nofile = nofile as usize;
    // The data streams and the set-up stream of each link.
    let streams = a.peer_streams as usize + 1;
    let links = if a.listen_addr.is_some() { ffrouter::remote::MAX_LINKS.min(nofile / 4 / streams).max(1) } else { 0 };
    // Links of at most `streams` streams each (a peer asking more is told
    // to dial fewer), and handshakes under way or waiting for the rest of
    // their link's streams (at most MAX_HANDSHAKES links' worth).
    let own = 128 + if links > 0 { (links + ffrouter::remote::MAX_HANDSHAKES) * streams } else { 0 };
    let maps = proc_number("/proc/sys/vm/max_map_count", 65530) as usize;
    let avail = nofile.saturating_sub(own).min(maps.saturating_sub(1024));
    let fds = match a.max_fds {
        Some(n) if n > avail => return Err(format!("--max-fds {n}: only {avail} descriptors are left for tenants (open files {nofile}, map count {maps})")),
        Some(n) => n,
        None => avail,
    };
    if fds < 2 * tenants || a.max_threads < tenants {
        return Err(format!("{fds} descriptors and {} threads cannot serve {tenants} tenants: raise the open-file limit or --max-threads", a.max_threads));
    }
    log::info!(
        "limits: open files {nofile} (was {before}); tenants share {fds} descriptors and {} threads ({} and {} each, {tenants} tenants); {links} links to other routers",
        a.max_threads,
        fds / tenants,
        a.max_threads / tenants
    );
    Ok((fds, links))
}

fn serve(a: ServeArgs) -> Result<(), String> {
    env_logger::Builder::new().parse_filters(&a.log_level).parse_default_env().format_timestamp_micros().init();
    // Before any thread starts, so that all inherit it: SIGUSR1 is only
    // ever taken by `dump_on_signal`.
    let usr1 = nix::sys::signal::SigSet::from(nix::sys::signal::Signal::SIGUSR1);
    usr1.thread_block().map_err(|e| format!("cannot block SIGUSR1: {e}"))?;
    if a.nice != 0 {
        set_nice(a.nice);
    }
    if !ffcore::ring::valid_ring_size(a.ring_size) {
        return Err(format!("--ring-size {}: must be a power of two from 4096 to 1 GiB", a.ring_size));
    }
    let mut tenants: Vec<Tenant> = a.tenants.iter().map(|s| parse_tenant(s)).collect::<Result<_, _>>()?;
    if tenants.is_empty() {
        tenants.push(Tenant { name: "default".into(), socket: a.socket.clone() });
    }
    let (max_fds, max_links) = budget(&a, tenants.len())?;
    let mut router = Router::new(Limits {
        ring_size: a.ring_size,
        ring_budget: a.ring_budget,
        max_client_bytes: a.max_client_bytes,
        max_client_objects: a.max_client_objects,
        rates: parse_rates(&a.rate_limits)?,
        max_fds,
        max_threads: a.max_threads,
        tenants: tenants.len(),
        ..Limits::default()
    });
    log::info!("ffrouter {} starting; ring size {} bytes; data path: same-host shared memory", env!("CARGO_PKG_VERSION"), a.ring_size);
    let flags = ffrouter::remote::Flags {
        listen: a.listen_addr.as_deref(),
        advertise: a.advertise_addr.as_deref(),
        streams: a.peer_streams as usize,
        secret_file: a.peer_secret_file.as_deref(),
        insecure: a.insecure_no_peer_secret,
        transport: &a.peer_transport,
        ring_size: a.peer_ring_size,
        peer_networks: &a.peer_networks,
        peers: &a.peers,
        rdma_device: a.rdma_device.as_deref(),
        rdma_gid_index: a.rdma_gid_index,
    };
    if let Some(mut cfg) = ffrouter::remote::Config::from_flags(&flags)? {
        cfg.max_links = max_links;
        cfg.ring_budget = a.peer_ring_budget;
        if let Some(w) = a.pump_workers {
            cfg.workers = w as usize;
        }
        let listen = cfg.listen;
        router.enable_remote(cfg).map_err(|e| format!("--listen-addr {listen}: {e}"))?;
    }
    if let Some(addr) = &a.metrics_addr {
        let token = match &a.metrics_token_file {
            Some(p) => Some(String::from_utf8(ffrouter::read_secret("--metrics-token-file", p)?).map_err(|_| format!("--metrics-token-file {}: not text", p.display()))?),
            None => None,
        };
        ffrouter::metrics::serve(addr, &router, token).map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
    }
    if let Some(remote) = router.remote() {
        dump_on_signal(usr1, remote);
    }
    let mut threads = Vec::new();
    for t in &tenants {
        threads.push(router.serve_tenant(t).map_err(|e| format!("cannot serve {}: {e}", t.socket.display()))?);
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// On SIGUSR1 (blocked in every thread), logs the forwarding state of
/// every connection to another host at warn level: where a stalled
/// transfer's bytes stopped, without stopping the router.
fn dump_on_signal(set: nix::sys::signal::SigSet, remote: std::sync::Arc<ffrouter::remote::Remote>) {
    let spawned = std::thread::Builder::new().name("sigusr1".into()).spawn(move || {
        while set.wait().is_ok() {
            let lines = remote.describe();
            let c = remote.counters();
            let drops: Vec<String> = ffrouter::remote::Cause::ALL.iter().map(|&k| format!("{} {}", k.name(), c.drops(k))).collect();
            log::warn!(
                "SIGUSR1: {} link(s) to other routers up; dropped so far: {}; failed dials: {}; {} connection(s) to other hosts",
                remote.links(),
                drops.join(", "),
                c.dial_failures(),
                lines.len()
            );
            for l in lines {
                log::warn!("  {l}");
            }
        }
    });
    if let Err(e) = spawned {
        log::warn!("no SIGUSR1 dump: {e}");
    }
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        None => serve(cli.serve),
        Some(Cmd::Serve(a)) => serve(*a),
        Some(Cmd::Stats { socket }) => ffcore::Context::with_socket(&socket)
            .and_then(|c| c.stats())
            .map(|s| {
                println!("clients {}\nlisteners {}\nconnections {}\nregions {}\nshared_bytes {}", s.clients, s.listeners, s.conns, s.regions, s.shared_bytes);
                println!("requests {}\nerrors {}\nsent_bytes {}\nsent_messages {}\nqueued_bytes {}", s.requests, s.errors, s.bytes_sent, s.messages_sent, s.queued_bytes);
            })
            .map_err(|e| e.to_string()),
    };
    if let Err(e) = res {
        eprintln!("ffrouter: {e}");
        std::process::exit(1);
    }
}
