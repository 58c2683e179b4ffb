//! nccl-harness: loads the built plugin the way NCCL does and drives it the
//! way NCCL's proxy does, without NCCL or a GPU.
//!
//! ```text
//! nccl-harness recv --lib L [--abi 12] [--mode check|bench|flood] ...   # prints HANDLE ...
//! nccl-harness send --lib L [--abi 12] --handle HEX,HEX,... ...
//! nccl-harness selftest --lib L       # one process: ABI, bad inputs, reload
//! nccl-harness tcp-recv --port P ...  # the same traffic over TCP (baseline)
//! nccl-harness tcp-send --connect IP:PORT ...
//! ```
//! Results are printed as `RESULT key=value ...`; a plugin error ends the
//! process with `ERROR <call> returned <code> (<name>)` and exit status 3.

#[path = "../../abi.rs"]
mod abi;
mod plugin;
mod selftest;
mod tcp;
mod traffic;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use plugin::Plugin;
use traffic::{Mode, Role, Setup, Spec};

#[derive(Parser)]
#[command(name = "nccl-harness", about = "Drive libnccl-net-ff.so like NCCL does")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Listen on --comms comms, print their handles, receive.
    Recv(TrafficArgs),
    /// Connect to --handle and send.
    Send(TrafficArgs),
    /// In-process checks of every exported version (needs FF_ROUTER_SOCKET).
    Selftest {
        #[arg(long)]
        lib: PathBuf,
    },
    /// TCP baseline receiver: listens on --port.
    TcpRecv(TcpArgs),
    /// TCP baseline sender: connects to --connect.
    TcpSend(TcpArgs),
}

#[derive(Args, Clone)]
struct TrafficArgs {
    /// The plugin (libnccl-net-ff.so / libnccl_net_ff.so).
    #[arg(long)]
    lib: PathBuf,
    /// ABI version to dlsym (ncclNetPlugin_vN).
    #[arg(long, default_value_t = 12)]
    abi: u32,
    #[arg(long, value_enum, default_value_t = Mode::Check)]
    mode: Mode,
    /// Handles printed by `recv` (comma-separated hex).
    #[arg(long)]
    handle: Option<String>,
    #[arg(long, default_value_t = 1)]
    comms: usize,
    /// Requests in flight per comm.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Check mode: message sizes, comma-separated.
    #[arg(long, default_value = "0,1,8,100,4095,4096,65537,1048576,4194307,16777216")]
    sizes: String,
    /// Check mode: times each comm goes through --sizes.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Bench/flood mode: message size.
    #[arg(long, default_value_t = 1 << 20)]
    size: usize,
    /// Bench mode: messages per comm.
    #[arg(long, default_value_t = 2000)]
    iters: usize,
    /// Bench/flood mode: distinct buffers per comm (default: --window;
    /// 1 = one buffer per side, like ucx_perftest).
    #[arg(long)]
    buffers: Option<usize>,
    /// Receiver: close every comm with one receive still pending.
    #[arg(long)]
    inflight_close: bool,
}

#[derive(Args, Clone)]
pub struct TcpArgs {
    #[arg(long, default_value_t = 0)]
    port: u16,
    #[arg(long)]
    connect: Option<String>,
    #[arg(long, default_value_t = 1 << 20)]
    size: usize,
    #[arg(long, default_value_t = 2000)]
    iters: usize,
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Distinct buffers per side, used in turn (default: --window).
    #[arg(long)]
    buffers: Option<usize>,
}

fn die(msg: impl std::fmt::Display) -> ! {
    eprintln!("ERROR {msg}");
    std::process::exit(3);
}

fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Recv(a) => traffic_main(Role::Recv, a),
        Cmd::Send(a) => traffic_main(Role::Send, a),
        Cmd::Selftest { lib } => selftest::run(&lib),
        Cmd::TcpRecv(a) => tcp::recv(&a).unwrap_or_else(|e| die(e)),
        Cmd::TcpSend(a) => tcp::send(&a).unwrap_or_else(|e| die(e)),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Box<[u8; abi::HANDLE_MAXSIZE]> {
    let s = s.trim();
    if s.len() != 2 * abi::HANDLE_MAXSIZE {
        die(format!("a handle is {} hex digits", 2 * abi::HANDLE_MAXSIZE));
    }
    let mut b = Box::new([0u8; abi::HANDLE_MAXSIZE]);
    for (i, x) in b.iter_mut().enumerate() {
        *x = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or_else(|_| die("bad hex in handle"));
    }
    b
}

fn traffic_main(role: Role, a: TrafficArgs) {
    let mut plugin = Plugin::load(&a.lib, a.abi).unwrap_or_else(|e| die(e));
    plugin.init().unwrap_or_else(|e| die(e));
    if plugin.devices().unwrap_or_else(|e| die(e)) < 1 {
        die("the plugin reports no device");
    }
    let (sizes, messages) = match a.mode {
        Mode::Check => {
            let sizes: Vec<usize> = a.sizes.split(',').map(|s| s.trim().parse().unwrap_or_else(|_| die("bad --sizes"))).collect();
            let n = sizes.len() * a.rounds;
            (sizes, Some(n))
        }
        Mode::Bench => (vec![a.size], Some(a.iters)),
        Mode::Flood => (vec![a.size], None),
    };
    let buffers = a.buffers.unwrap_or(a.window);
    let spec = Spec { mode: a.mode, comms: a.comms, window: a.window, sizes, messages, buffers, inflight_close: a.inflight_close };
    let setups: Vec<Setup> = match role {
        Role::Recv => {
            let mut hs = Vec::new();
            let mut setups = Vec::new();
            for _ in 0..spec.comms {
                let (h, lc) = plugin.listen(0).unwrap_or_else(|e| die(e));
                hs.push(hex(&h));
                setups.push(Setup::Accept(lc));
            }
            println!("HANDLE {}", hs.join(","));
            std::io::stdout().flush().ok();
            setups
        }
        Role::Send => {
            let h = a.handle.as_deref().unwrap_or_else(|| die("send needs --handle"));
            h.split(',').map(|h| Setup::Connect(unhex(h))).collect()
        }
    };
    let plugin = Arc::new(plugin);
    let (tx, rx) = crossbeam_channel::unbounded();
    let svc = {
        let p = plugin.clone();
        std::thread::Builder::new().name("service".into()).spawn(move || traffic::service(p, setups, tx)).unwrap()
    };
    let prog = {
        let (p, s) = (plugin.clone(), spec.clone());
        std::thread::Builder::new().name("progress".into()).spawn(move || traffic::progress(p, role, s, rx)).unwrap()
    };
    let summary = prog.join().expect("progress thread panicked").unwrap_or_else(|e| die(e));
    svc.join().expect("service thread panicked").unwrap_or_else(|e| die(e));
    let mut plugin = Arc::try_unwrap(plugin).ok().expect("threads are done");
    plugin.finalize().unwrap_or_else(|e| die(e));
    let crc = summary.crcs.iter().fold(crc32fast::Hasher::new(), |mut h, c| {
        h.update(&c.to_le_bytes());
        h
    });
    let secs = summary.elapsed.as_secs_f64();
    println!(
        "RESULT role={} abi={} mode={:?} comms={} messages={} bytes={} crc={:08x} mismatches={} secs={:.3} mb_per_s={:.1} ok={}",
        if role == Role::Send { "send" } else { "recv" },
        a.abi,
        a.mode,
        summary.crcs.len(),
        summary.messages,
        summary.bytes,
        crc.finalize(),
        summary.mismatches,
        secs,
        summary.bytes as f64 / secs.max(1e-9) / 1e6,
        (summary.mismatches == 0 && summary.crcs.len() == spec.comms) as u8,
    );
    if summary.mismatches > 0 {
        std::process::exit(1);
    }
}
