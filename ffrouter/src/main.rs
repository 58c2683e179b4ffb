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
    Serve(ServeArgs),
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
    /// Shared memory (rings and shadow regions) one client may hold.
    #[arg(long, default_value_t = 64 << 30)]
    max_client_bytes: u64,
    /// Listeners, connections and regions one client may hold.
    #[arg(long, default_value_t = 65536)]
    max_client_objects: usize,
    /// Send rate limit, as TARGET=RATE: TARGET is a tenant name (each of its
    /// containers gets RATE) or pidns:INODE (one container, identified by its
    /// PID namespace; overrides the tenant's). RATE in bytes/s with an
    /// optional K, M or G suffix (powers of 1000), e.g. teamA=2G. Repeatable.
    #[arg(long = "rate-limit", value_name = "TARGET=RATE")]
    rate_limits: Vec<String>,
    /// Serve Prometheus metrics (per-tenant and per-connection counters) at
    /// http://ADDR/metrics, e.g. 127.0.0.1:9464. Off by default.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// Talk to other hosts' routers: listen for them at IP:PORT. Start every
    /// host's router the same way; clients then connect to handles of any
    /// host. Without it, the router serves its own host only.
    #[arg(long, value_name = "IP:PORT")]
    listen_addr: Option<String>,
    /// The address other routers reach this one at, put into every handle
    /// (default: --listen-addr, which then must not be 0.0.0.0 or ::).
    #[arg(long, value_name = "IP:PORT", requires = "listen_addr")]
    advertise_addr: Option<String>,
    /// TCP streams per pair of routers (each connection uses one).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    peer_streams: u16,
    /// A file holding a secret every router of the cluster shares: links
    /// are only set up with routers that prove they know it (HMAC
    /// challenge-response). Without it, routers trust whoever connects to
    /// --listen-addr: keep that on a private network.
    #[arg(long, value_name = "PATH", requires = "listen_addr")]
    peer_secret_file: Option<PathBuf>,
    /// Transport between routers: auto (RDMA if a device exists, else TCP),
    /// tcp or rdma.
    #[arg(long, default_value = "auto")]
    peer_transport: String,
    /// Ring size (bytes per direction) of connections to other hosts; it
    /// also bounds the data in flight per connection between routers.
    #[arg(long, default_value_t = 4 << 20)]
    peer_ring_size: usize,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides.
    #[arg(long, default_value = "info")]
    log_level: String,
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

fn serve(a: ServeArgs) -> Result<(), String> {
    env_logger::Builder::new().parse_filters(&a.log_level).parse_default_env().format_timestamp_micros().init();
    if !ffcore::ring::valid_ring_size(a.ring_size) {
        return Err(format!("--ring-size {}: must be a power of two from 4096 to 1 GiB", a.ring_size));
    }
    let mut tenants: Vec<Tenant> = a.tenants.iter().map(|s| parse_tenant(s)).collect::<Result<_, _>>()?;
    if tenants.is_empty() {
        tenants.push(Tenant { name: "default".into(), socket: a.socket.clone() });
    }
    let mut router = Router::new(Limits {
        ring_size: a.ring_size,
        max_client_bytes: a.max_client_bytes,
        max_client_objects: a.max_client_objects,
        rates: parse_rates(&a.rate_limits)?,
        ..Limits::default()
    });
    log::info!("ffrouter {} starting; ring size {} bytes; data path: same-host shared memory", env!("CARGO_PKG_VERSION"), a.ring_size);
    if let Some(cfg) = ffrouter::remote::Config::from_flags(
        a.listen_addr.as_deref(),
        a.advertise_addr.as_deref(),
        a.peer_streams as usize,
        a.peer_secret_file.as_deref(),
        &a.peer_transport,
        a.peer_ring_size,
    )? {
        let listen = cfg.listen;
        router.enable_remote(cfg).map_err(|e| format!("--listen-addr {listen}: {e}"))?;
    }
    if let Some(addr) = &a.metrics_addr {
        ffrouter::metrics::serve(addr, router.state()).map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
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

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        None => serve(cli.serve),
        Some(Cmd::Serve(a)) => serve(a),
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
