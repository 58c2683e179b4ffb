//! Unmodified verbs programs over ff0: ffvcheck (our own verbs program,
//! compiled against Debian's libibverbs headers and library, which checks
//! the bytes SEND, WRITE and READ move and the error completions) and
//! Debian's perftest binaries, with our library chosen by LD_LIBRARY_PATH,
//! between host processes and between containers, through one router.
//!
//! Needs root (containers), a C compiler, libibverbs-dev and perftest
//! (scripts/deps.sh).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fftestkit::{finish_child as finish, fresh_dir, have, root, Container, Pod, RouterProc, Spec};

/// A directory holding `libibverbs.so.1` -> our cdylib, and ffvcheck
/// (outside the routers' directories, which containers do not see).
fn work() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = fresh_dir("ffverbs-test");
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::os::unix::fs::symlink(fftestkit::built_lib("libffverbs.so"), dir.join("lib/libibverbs.so.1")).unwrap();
        for prog in ["ffvcheck", "ffvsrq", "ffvud", "ffvorder", "ffvevents", "ffvports", "ffvfatal", "ffvwr"] {
            let src = root().join(format!("ffverbs/tests/c/{prog}.c"));
            let st = Command::new("cc").args(["-O2", "-Wall", "-Werror", "-o"]).arg(dir.join(prog)).arg(&src).arg("-libverbs").status().expect("cc");
            assert!(st.success(), "compiling {prog} (needs libibverbs-dev)");
        }
        dir
    })
}

fn lib_dir() -> String {
    work().join("lib").display().to_string()
}

fn ffvcheck() -> String {
    work().join("ffvcheck").display().to_string()
}

/// `prog` as a host process attached to `socket` with our library, its
/// output piped (the caller says what its input is).
fn on_router(prog: impl AsRef<std::ffi::OsStr>, socket: &Path) -> Command {
    let mut c = Command::new(prog);
    c.env("LD_LIBRARY_PATH", lib_dir()).env("FF_ROUTER_SOCKET", socket).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// Runs `server` and then `client` (argv), each as a host process attached
/// to `socket` with our library; (success, stdout, stderr) of each.
fn host_pair(socket: &Path, env: &[(&str, &str)], server: &[&str], client: &[&str], wait_for_listen: bool) -> [(bool, String, String); 2] {
    let spawn = |argv: &[&str]| {
        on_router(argv[0], socket).args(&argv[1..]).envs(env.iter().copied()).stdin(Stdio::null()).spawn().expect("spawn")
    };
    let mut s = spawn(server);
    if wait_for_listen {
        use std::io::BufRead;
        let mut out = std::io::BufReader::new(s.stdout.take().unwrap());
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        assert!(l.starts_with("LISTENING"), "server said {l:?}");
        s.stdout = None;
        let c = spawn(client);
        let rc = finish(c, Duration::from_secs(90));
        let mut rest = String::new();
        use std::io::Read;
        let _ = out.read_to_string(&mut rest);
        let mut rs = finish(s, Duration::from_secs(30));
        rs.1 = rest;
        return [rs, rc];
    }
    std::thread::sleep(Duration::from_millis(500));
    let c = spawn(client);
    let rc = finish(c, Duration::from_secs(90));
    [finish(s, Duration::from_secs(30)), rc]
}

fn check_ffvcheck(r: &[(bool, String, String); 2]) {
    let [(sok, sout, serr), (cok, cout, cerr)] = r;
    assert!(*sok && *cok, "ffvcheck failed:\nserver: {sout}{serr}\nclient: {cout}{cerr}");
    for want in [
        "OK completion channel event",
        "OK send 262147 bytes",
        "OK send 100000 bytes",
        "OK late receives: 32 messages in order",
        "OK stream: 100000 messages in order, bytes checked",
        "OK write 1048589 bytes",
        "OK write with immediate",
    ] {
        assert!(sout.contains(want), "server did not say {want:?}: {sout}");
    }
    for want in [
        "OK no send completion before the receive, then 8 of 8",
        "OK stream: 100000 sends, every 16th signalled, completions in order",
        "OK read 2097159 bytes",
        "OK read-only read",
        "OK atomics",
        "READs of 4096 bytes beside a deregistration that moves their pages",
        "OK remote access error, flush",
        "OK out of range",
        "OK dead peer",
        "OK done",
    ] {
        assert!(cout.contains(want), "client did not say {want:?}: {cout}");
    }
}

/// Our checks between two host processes: WRITE and READ straight into the
/// peer's registration (the default, same host), and all by message.
#[test]
fn ffvcheck_between_processes() {
    let r = RouterProc::start(&["a"], &[]);
    for env in [&[][..], &[("FFVERBS_DIRECT", "n")][..], &[("FFVERBS_SHADOW", "n")][..]] {
        let port = test_port().to_string();
        let res = host_pair(&r.socket("a"), env, &[&ffvcheck(), "server", &port], &[&ffvcheck(), "client", "127.0.0.1", &port], true);
        check_ffvcheck(&res);
    }
}

/// Shared receive queues between two host processes (ffvsrq): two queue
/// pairs sharing one SRQ take its receives in order, completions on each
/// queue pair's CQ with its number, SENDs wait for an empty SRQ, the limit
/// event, limits and errors, EBUSY; by message and with direct WRITEs.
#[test]
fn ffvsrq_between_processes() {
    let r = RouterProc::start(&["a"], &[]);
    for env in [&[][..], &[("FFVERBS_DIRECT", "n")][..]] {
        let port = test_port().to_string();
        let srq = work().join("ffvsrq").display().to_string();
        let [(sok, sout, serr), (cok, cout, cerr)] = host_pair(&r.socket("a"), env, &[&srq, "server", &port], &[&srq, "client", "127.0.0.1", &port], true);
        assert!(sok && cok, "ffvsrq failed ({env:?}):\nserver: {sout}{serr}\nclient: {cout}{cerr}");
        for want in [
            "OK SRQ limits, errors, EBUSY",
            "OK two queue pairs share the SRQ",
            "OK empty SRQ: SENDs on both queue pairs waited, then 6 of 6",
            "OK write with immediate and a 100000-byte send through the SRQ",
            "OK SRQ limit event",
            "OK a failed queue pair leaves the SRQ to the other",
            "OK done",
        ] {
            assert!(sout.contains(want), "server did not say {want:?}: {sout}{serr}");
        }
        assert!(cout.contains("OK done"), "client: {cout}{cerr}");
    }
}

/// UD queue pairs and address handles between two host processes
/// (ffvud): datagrams to two queue pairs through one address handle, the
/// GRH, src_qp, bytes and immediate data, answers back to src_qp; a wrong
/// Q_Key or no receive drops the datagram; over the MTU is refused.
#[test]
fn ffvud_between_processes() {
    let r = RouterProc::start(&["a"], &[]);
    let port = test_port().to_string();
    let ud = work().join("ffvud").display().to_string();
    let [(sok, sout, serr), (cok, cout, cerr)] = host_pair(&r.socket("a"), &[], &[&ud, "server", &port], &[&ud, "client", "127.0.0.1", &port], true);
    assert!(sok && cok, "ffvud failed:\nserver: {sout}{serr}\nclient: {cout}{cerr}");
    for want in ["OK 8 datagrams to two queue pairs: GRH, src_qp, bytes, immediate", "OK wrong Q_Key and no receive: dropped", "OK done"] {
        assert!(sout.contains(want), "server did not say {want:?}: {sout}{serr}");
    }
    for want in ["OK answers came back to the sending queue pair", "OK over the MTU refused; dropped datagrams complete at the sender", "OK done"] {
        assert!(cout.contains(want), "client did not say {want:?}: {cout}{cerr}");
    }
}

/// Two contexts of ff0 in one process (ffvports) report one GID, as a
/// NIC's port does, and their queue pairs connect with it: RC SENDs both
/// ways and a WRITE, UD datagrams both ways (source queue pair and GRH
/// checked). UCX needs this: it connects its verbs transports' queue pairs
/// with the GIDs its rdma_cm transport's context reports. (Before the port
/// was shared, each context had a GID of its own and such a queue pair
/// waited 15 s for a peer that never came.) A child made by fork opens
/// ff0 with a port of its own (not the parent's router attachment), and
/// the parent's queue pairs work on after it exits.
#[test]
fn ffvports_two_contexts_of_one_process_share_the_port() {
    let r = RouterProc::start(&["a"], &[]);
    let prog = work().join("ffvports");
    let c = on_router(&prog, &r.socket("a")).stdin(Stdio::null()).spawn().expect("ffvports");
    let (ok, out, err) = finish(c, Duration::from_secs(60));
    assert!(ok && out.contains("SENDs, a WRITE and datagrams between them checked; a forked child's port its own"), "ffvports failed: {out}{err}");
}

/// The extended verbs (ffvwr, one process): queue pairs made with
/// `ibv_create_qp_ex` (what ff0 does not do refused), batches of SEND,
/// WRITE, READ and atomics, with immediates, lists and inline bytes, bytes
/// and completions checked; batches that fail whole (nothing posted);
/// UD with `ibv_wr_set_ud_addr`; an extended completion queue read with
/// `ibv_start_poll`/`ibv_next_poll`/`ibv_wc_read_*`; two threads batching
/// on one queue pair (each batch arrives whole, in order: fails 3 of 3
/// runs of a build without the batch lock).
#[test]
fn ffvwr_the_new_post_send_interface() {
    let r = RouterProc::start(&["a"], &[]);
    let c = on_router(work().join("ffvwr"), &r.socket("a")).stdin(Stdio::null()).spawn().expect("ffvwr");
    let (ok, out, err) = finish(c, Duration::from_secs(90));
    assert!(ok && out.contains("OK done"), "ffvwr failed: {out}{err}");
    for want in ["OK ibv_create_qp_ex refuses", "OK one batch:", "OK READ, fetch-and-add and compare-and-swap", "OK batches fail whole", "OK UD:", "OK ibv_create_cq_ex:", "each batch whole, in order, once"] {
        assert!(out.contains(want), "ffvwr did not say {want:?}: {out}");
    }
}

/// What ffvorder's server says when the client's queue pair went away and
/// its receive stayed posted for a second, then was flushed.
const GONE_OK: &str = "OK the peer went: our receive stayed posted for 1 s, then was flushed";

/// Completion order between two host processes (ffvorder): with sends and
/// receives on one completion queue, a SEND completes before the reply to
/// it is received, as with a NIC (whose ACK comes before the reply), also
/// when the ACK and the reply arrive together; on both sides, 200 rounds.
/// The same on UC queue pairs, where a READ is refused (EINVAL). Then the
/// client destroys its queue pair (see [`GONE_OK`]).
#[test]
fn ffvorder_between_processes() {
    let r = RouterProc::start(&["a"], &[]);
    let ord = work().join("ffvorder").display().to_string();
    for (mode, want) in [("rc", "OK 200 rounds, every"), ("uc", "OK 200 rounds on UC, every")] {
        let port = test_port().to_string();
        let [(sok, sout, serr), (cok, cout, cerr)] =
            host_pair(&r.socket("a"), &[], &[&ord, "server", &port, mode], &[&ord, "client", "127.0.0.1", &port, mode], true);
        assert!(sok && cok, "ffvorder {mode} failed:\nserver: {sout}{serr}\nclient: {cout}{cerr}");
        assert!(sout.contains(want) && cout.contains(want), "ffvorder {mode}:\nserver: {sout}{serr}\nclient: {cout}{cerr}");
        assert_eq!(mode == "uc", cout.contains("OK a READ on a UC queue pair is refused (EINVAL)"), "ffvorder {mode}: {cout}");
        assert!(sout.contains(GONE_OK), "ffvorder {mode}: {sout}{serr}");
        let retried = "OK a send to a peer that went failed after the retries: 'transport retry counter exceeded'";
        assert_eq!(mode == "rc", sout.contains(retried), "ffvorder {mode}: {sout}{serr}");
    }
}

/// What ffvevents prints on both sides when every round held.
const EVENTS_OK: &str = "OK 300 rounds on two queue pairs, the server's two threads in ibv_get_cq_event at once";

/// ffvevents' server and client (ok, stdout, stderr) both succeeded, every
/// round held, and the server saw the WRITE land while its threads waited.
fn check_ffvevents(r: &[(bool, String, String); 2], what: &str) {
    let [(sok, sout, serr), (cok, cout, cerr)] = r;
    assert!(*sok && *cok, "ffvevents {what} failed:\nserver: {sout}{serr}\nclient: {cout}{cerr}");
    assert!(sout.contains(&format!("{EVENTS_OK}; the WRITE landed while they waited")) && cout.contains(EVENTS_OK), "ffvevents {what}:\nserver: {sout}{serr}\nclient: {cout}{cerr}");
}

/// Completion events from two threads at once (ffvevents): the server's
/// two threads each block in `ibv_get_cq_event` on a channel of their own
/// (one of them sleeps on the connections itself, the other on its
/// channel's descriptor), 300 ping-pongs on each of two queue pairs, every
/// byte checked; a WRITE the client made while both blocked is in the
/// server's memory when the ping after it arrives.
#[test]
fn ffvevents_between_processes() {
    let r = RouterProc::start(&["a"], &[]);
    let ev = work().join("ffvevents").display().to_string();
    let port = test_port().to_string();
    check_ffvevents(&host_pair(&r.socket("a"), &[], &[&ev, "server", &port], &[&ev, "client", "127.0.0.1", &port], true), "between processes");
}

/// A perftest-style program (`argv`: the program and its options) between
/// two host processes of tenant a: the server with `-p PORT`, the client
/// with the same and 127.0.0.1. Both must succeed; their (stdout, stderr).
fn tool_pair(r: &RouterProc, argv: &[&str]) -> [(String, String); 2] {
    let port = test_port().to_string();
    let mut server = argv.to_vec();
    server.extend(["-p", port.as_str()]);
    let mut client = server.clone();
    client.push("127.0.0.1");
    let [(sok, sout, serr), (cok, cout, cerr)] = host_pair(&r.socket("a"), &[], &server, &client, false);
    assert!(sok && cok, "{argv:?}:\nserver: {sout}{serr}\nclient: {cout}{cerr}");
    [(sout, serr), (cout, cerr)]
}

/// rdma-core's example programs (Debian's ibverbs-utils), unmodified,
/// between two host processes: RC (polling, and waiting for completion
/// events), UC, SRQ and UD pingpong. Each checks its completions and ends
/// as soon as its last one is in, while its peer may still be closing (the
/// RC one with receives left posted, which must not be flushed under it).
#[test]
fn rdma_core_pingpongs_between_processes() {
    let r = RouterProc::start(&["a"], &[]);
    for argv in [
        &["ibv_rc_pingpong"][..],
        &["ibv_rc_pingpong", "-e"],
        &["ibv_rc_pingpong", "-s", "1048576", "-n", "100", "-c"],
        &["ibv_uc_pingpong"],
        &["ibv_srq_pingpong"],
        &["ibv_ud_pingpong"],
    ] {
        let argv = [argv, &["-d", "ff0", "-g", "0"]].concat();
        let [(sout, _), (cout, _)] = tool_pair(&r, &argv);
        for (side, out) in [("server", &sout), ("client", &cout)] {
            assert!(out.contains(" iters in "), "{argv:?}: no result from the {side}: {out}");
        }
        assert!(!cout.contains("invalid data"), "{argv:?}: {cout}");
    }
}

/// A TCP port for a server of a test between host processes (perftest,
/// ffvcheck, ...): below Linux's ephemeral ports (32768 up), which the
/// connections of tests running beside it take (perftest once failed with
/// "Couldn't listen to port 32890"); distinct per process and call, and
/// free when handed out. 10000-18999: the ucx_perftest tests below use
/// 20000-29999.
fn test_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 10000 + ((std::process::id() % 225) * 40 + k % 40) as u16;
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
        assert!(k < 400, "no free port in 10000-18999 for this process");
    }
}

/// Waits until something on this host listens on TCP `port`.
fn wait_listening(port: u16, timeout: Duration) -> bool {
    let want = format!(":{port:04X} ");
    let start = Instant::now();
    while start.elapsed() < timeout {
        for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let t = std::fs::read_to_string(f).unwrap_or_default();
            // local_address PORT, state 0A (LISTEN)
            if t.lines().any(|l| l.split_whitespace().nth(1).is_some_and(|a| format!("{a} ").ends_with(&want)) && l.split_whitespace().nth(3) == Some("0A")) {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// UCX 1.13's own verbs transports over ff0, between two host processes,
/// each with a device node in a private mount namespace (tools/ffuverbs):
/// `ucx_info -d` lists rc_verbs and ud_verbs on ff0:1; ucx_perftest's UCT
/// tests over rc_verbs (active messages through the SRQ, put and get
/// zero-copy, fetch-and-add, compare-and-swap) complete; and UCP's tag
/// tests run with `UCX_TLS=rc_verbs,ud_verbs:aux,self` (UCX says its tag
/// lane is rc_verbs on ff0:1; ud_verbs carries the wire-up) and with
/// `UCX_TLS=ud_verbs,self`. Skipped (and says so) without UCX's
/// ucx_perftest or unshare.
#[test]
fn ucx_rc_verbs_over_ff0() {
    if !have("ucx_perftest") || !have("ucx_info") || !have("unshare") {
        eprintln!("skipped: ucx_perftest, ucx_info or unshare missing (scripts/deps.sh installs ucx-utils)");
        return;
    }
    let r = RouterProc::start(&["a"], &[]);
    let tool = root().join("tools/ffuverbs");
    let env = [("LD_LIBRARY_PATH", lib_dir()), ("FF_ROUTER_SOCKET", r.socket("a").display().to_string())];
    let info = Command::new(&tool).args(["ucx_info", "-d"]).envs(env.iter().map(|(k, v)| (*k, v.as_str()))).output().expect("tools/ffuverbs");
    let text = String::from_utf8_lossy(&info.stdout);
    let md = text.split("# Memory domain: ").find(|m| m.starts_with("ff0")).unwrap_or_else(|| panic!("UCX lists no ff0 memory domain: {text}"));
    assert!(md.contains("Transport: rc_verbs") && md.contains("Device: ff0:1") && md.contains("atomic_fadd: 64 bit"), "rc_verbs on ff0: {md}");
    assert!(md.contains("Transport: ud_verbs"), "ud_verbs on ff0: {md}");
    let tests: [&[&str]; 9] = [
        &["-t", "am_lat", "-s", "8"],
        &["-t", "am_bw", "-D", "bcopy", "-s", "4096"],
        &["-t", "put_bw", "-D", "zcopy", "-s", "1048576"],
        &["-t", "get", "-D", "zcopy", "-s", "65536"],
        &["-t", "fadd"],
        &["-t", "cswap"],
        // UCP: the transports come from the environment (below).
        &["-t", "tag_lat", "-s", "8"],
        &["-t", "tag_bw", "-s", "65536"],
        &["-t", "tag_lat", "-s", "8"],
    ];
    for (i, t) in tests.iter().enumerate() {
        // 20000-29999: no other test here uses those ports.
        let port = 20000 + (std::process::id() % 1000) as u16 * 10 + i as u16;
        let p = port.to_string();
        let ucp = t[1].starts_with("tag");
        let tls = if i == 8 { "ud_verbs,self" } else { "rc_verbs,ud_verbs:aux,self" };
        let mut argv = vec!["timeout", "60", "ucx_perftest", "-n", "300", "-p", &p];
        if !ucp {
            argv.extend_from_slice(&["-x", "rc_verbs", "-d", "ff0:1"]);
        }
        argv.extend_from_slice(t);
        let ucx_env: &[(&str, &str)] = if ucp { &[("UCX_TLS", tls), ("UCX_NET_DEVICES", "ff0:1"), ("UCX_LOG_LEVEL", "info")] } else { &[] };
        let spawn = |argv: &[&str]| {
            Command::new(&tool)
                .args(argv)
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .envs(ucx_env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        };
        let s = spawn(&argv);
        assert!(wait_listening(port, Duration::from_secs(30)), "{t:?}: the server does not listen on {port}");
        let mut client = argv.clone();
        client.push("127.0.0.1");
        let (cok, cout, cerr) = finish(spawn(&client), Duration::from_secs(90));
        let (sok, sout, serr) = finish(s, Duration::from_secs(30));
        assert!(sok && cok, "{t:?}:\nserver: {sout}{serr}\nclient: {cout}{cerr}");
        let fin = cout.lines().find(|l| l.starts_with("Final:")).unwrap_or_else(|| panic!("{t:?}: no result: {cout}{cerr}"));
        // Final: iterations, then latency and bandwidth columns.
        assert_eq!(fin.split_whitespace().nth(1), Some("300"), "{t:?}: {fin}");
        if ucp {
            let lane = if i == 8 { "tag(ud_verbs/ff0:1)" } else { "tag(rc_verbs/ff0:1)" };
            assert!(cout.contains(lane) || cerr.contains(lane), "{t:?} with {tls}: UCX did not say {lane}: {cout}{cerr}");
        }
        eprintln!("{} {t:?}: {fin}", if ucp { tls } else { "rc_verbs (UCT)" });
    }

    // Open MPI (pml ucx) over rc_verbs: two ranks, bench/mpi/allreduce
    // (which checks every element of its results); each rank's endpoint
    // to itself puts an rc_verbs queue pair in loopback. No UCX error may
    // be printed.
    if !have("mpicc") || !have("mpirun") {
        eprintln!("skipped the Open MPI part: mpicc or mpirun missing (scripts/deps.sh installs openmpi-bin, libopenmpi-dev)");
        return;
    }
    let exe = work().join("allreduce");
    let st = Command::new("mpicc").args(["-O2", "-o"]).arg(&exe).arg(root().join("bench/mpi/allreduce.c")).status().expect("mpicc");
    assert!(st.success(), "compiling bench/mpi/allreduce.c");
    let mut mpi = Command::new(&tool);
    mpi.args(["timeout", "120", "mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", "--mca", "pml", "ucx", "--mca", "btl", "self,vader", "--mca", "osc", "^ucx"]);
    for x in ["UCX_TLS=rc_verbs,ud_verbs:aux,self", "UCX_NET_DEVICES=ff0:1", "LD_LIBRARY_PATH", "FF_ROUTER_SOCKET"] {
        mpi.args(["-x", x]);
    }
    mpi.arg(&exe).args(["300000", "5", "1"]).envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let out = mpi.stdin(Stdio::null()).output().expect("mpirun");
    let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && so.contains("RESULT ranks=2"), "Open MPI over rc_verbs:\n{so}{se}");
    assert!(!so.contains("ERROR") && !se.contains("ERROR") && !se.contains("Error"), "Open MPI over rc_verbs printed errors:\n{so}{se}");
    eprintln!("Open MPI over rc_verbs: {}", so.lines().find(|l| l.starts_with("RESULT")).unwrap_or(""));
}

/// Where a UCX test runs its two sides: `run(side, argv)` starts `argv` in
/// a container of side 0 (the server's) or 1, with our library in
/// LD_LIBRARY_PATH.
type Run<'a> = &'a dyn Fn(usize, &[String]) -> Container;

/// `ucx_perftest ARGS` in two containers, each through tools/ffuverbs (the
/// device node UCX looks for) with `env` (UCX_*). The server's container
/// prints its IP, then LISTENING once ucx_perftest listens (its client
/// does not retry a refused connect). Both outcomes, client first.
fn ucx_pair(run: Run, env: &[&str], args: &[&str]) -> [(bool, String, String); 2] {
    let port = 13337;
    let tool = root().join("tools/ffuverbs").display().to_string();
    let cmd = |peer: Option<&str>| {
        let mut v: Vec<String> = vec!["env".into()];
        v.extend(env.iter().map(|s| s.to_string()));
        v.extend([tool.clone(), "timeout".into(), "60".into(), "ucx_perftest".into(), "-p".into(), port.to_string()]);
        v.extend(args.iter().map(|s| s.to_string()));
        v.extend(peer.map(|p| p.to_string()));
        v
    };
    let script = format!(
        "echo IP $(ip -o -4 addr show scope global | awk '{{print $4}}' | cut -d/ -f1); \"$@\" & p=$!; \
         until ss -Hltn | grep -q ':{port} '; do kill -0 $p 2>/dev/null || break; sleep 0.05; done; echo LISTENING; wait $p"
    );
    let mut argv: Vec<String> = vec!["sh".into(), "-c".into(), script, "sh".into()];
    argv.extend(cmd(None));
    let mut server = run(0, &argv);
    let ip = server.read_line_with("IP ");
    server.read_line_with("LISTENING");
    // A refused connect (seen once in a while across hosts right after the
    // server listens) is tried again: the server still waits for one.
    let mut c = run(1, &cmd(Some(&ip))).finish(Duration::from_secs(90));
    for _ in 0..4 {
        if c.0 || !format!("{}{}", c.1, c.2).contains("connect() failed: Connection refused") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        c = run(1, &cmd(Some(&ip))).finish(Duration::from_secs(90));
    }
    let s = server.finish(Duration::from_secs(30));
    [c, s]
}

/// UCX's verbs transports over ff0 between the two sides of `run`: UCT
/// tests over rc_verbs alone (`ucx_perftest -x rc_verbs`, which exchanges
/// the addresses over its own socket), UCP tag tests with `UCX_TLS=rc_v,self`
/// (UCX's alias for rc_verbs with ud_verbs as the auxiliary transport of
/// the wire-up) and with `rc_verbs,ud_verbs:aux,self`, the tag lane on
/// rc_verbs; and `UCX_TLS=rc_verbs,self` refused by UCP on both sides ("no
/// auxiliary transport": UCP connects a connect-to-endpoint transport
/// through one that reaches a worker address, which rc_verbs is not).
fn ucx_verbs_tests(run: Run) {
    let uct: [&[&str]; 4] = [&["-t", "am_lat", "-s", "8"], &["-t", "put_bw", "-D", "zcopy", "-s", "1048576"], &["-t", "get", "-D", "zcopy", "-s", "65536"], &["-t", "fadd"]];
    for t in uct {
        let mut args = vec!["-n", "300", "-x", "rc_verbs", "-d", "ff0:1"];
        args.extend_from_slice(t);
        let [(cok, cout, cerr), (sok, sout, serr)] = ucx_pair(run, &[], &args);
        assert!(cok && sok, "UCT {t:?}:\nclient: {cout}{cerr}\nserver: {sout}{serr}");
        let fin = cout.lines().find(|l| l.starts_with("Final:")).unwrap_or_else(|| panic!("{t:?}: no result: {cout}{cerr}"));
        assert_eq!(fin.split_whitespace().nth(1), Some("300"), "{t:?}: {fin}");
        eprintln!("UCT rc_verbs {t:?}: {fin}");
    }
    let ucp: [(&str, &[&str]); 4] = [
        ("rc_v,self", &["-t", "tag_lat", "-s", "8", "-n", "1000"]),
        ("rc_v,self", &["-t", "tag_bw", "-s", "65536", "-n", "300"]),
        ("rc_v,self", &["-t", "tag_bw", "-s", "4194304", "-n", "30"]),
        ("rc_verbs,ud_verbs:aux,self", &["-t", "tag_lat", "-s", "8", "-n", "1000"]),
    ];
    for (tls, t) in ucp {
        let env = [format!("UCX_TLS={tls}"), "UCX_NET_DEVICES=ff0:1".into(), "UCX_LOG_LEVEL=info".into()];
        let env: Vec<&str> = env.iter().map(|s| s.as_str()).collect();
        let [(cok, cout, cerr), (sok, sout, serr)] = ucx_pair(run, &env, t);
        assert!(cok && sok, "UCP {tls} {t:?}:\nclient: {cout}{cerr}\nserver: {sout}{serr}");
        let fin = cout.lines().find(|l| l.starts_with("Final:")).unwrap_or_else(|| panic!("{t:?}: no result: {cout}{cerr}"));
        assert_eq!(fin.split_whitespace().nth(1), Some(t[5]), "{t:?}: {fin}");
        for (side, log) in [("client", format!("{cout}{cerr}")), ("server", format!("{sout}{serr}"))] {
            assert!(log.contains("ep_cfg[0]: tag(rc_verbs/ff0:1)"), "{tls} {t:?}: the {side}'s tag lane is not rc_verbs on ff0: {log}");
        }
        eprintln!("UCP {tls} {t:?}: {fin}");
    }
    let env = ["UCX_TLS=rc_verbs,self", "UCX_NET_DEVICES=ff0:1"];
    let [(cok, cout, cerr), (sok, sout, serr)] = ucx_pair(run, &env, &["-t", "tag_lat", "-s", "8", "-n", "100"]);
    assert!(!cok && !sok, "UCX_TLS=rc_verbs,self ran:\nclient: {cout}{cerr}\nserver: {sout}{serr}");
    for log in [format!("{cout}{cerr}"), format!("{sout}{serr}")] {
        assert!(log.contains("no auxiliary transport"), "UCX_TLS=rc_verbs,self did not fail for want of an auxiliary transport: {log}");
    }
}

/// Open MPI (pml ucx, `UCX_TLS=rc_v,self`) with one rank in each of two
/// pods (tools/ffcontainer, entered by mpirun through tools/ffrsh; each
/// rank started through tools/ffuverbs): ucx-transport's ffmpi exchanges
/// 1 B .. 64 MiB both ways and checks every byte, then an Allreduce; the
/// lanes between the ranks are rc_verbs on ff0. `launch_netns`: where
/// mpirun runs.
fn ffmpi_over_rc_verbs(names: &[String; 2], rsh_dir: &Path, launch_netns: Option<&str>) {
    let exe = fftestkit::mpi::build_ffmpi(rsh_dir);
    let mca = ["--mca", "btl", "self", "--mca", "osc", "^ucx", "--mca", "oob_tcp_if_include", "10.0.0.0/8"];
    let env = ["UCX_TLS=rc_v,self".to_string(), "UCX_NET_DEVICES=ff0:1".into(), "UCX_LOG_LEVEL=info".into(), format!("LD_LIBRARY_PATH={}", lib_dir())];
    let program = [root().join("tools/ffuverbs"), exe];
    let log = fftestkit::mpi::run_ffmpi(rsh_dir, names, launch_netns, &mca, &env, &program, Duration::from_secs(240));
    fftestkit::mpi::assert_remote_lanes(&log, "tag(rc_verbs/ff0:1)");
    eprintln!("Open MPI over rc_verbs: {}", log.lines().filter(|l| l.starts_with("FFMPI OK")).collect::<Vec<_>>().join(" | "));
}

/// A client container of tenant b (side 1) that got the address of tenant
/// a's server (side 0, over ucx_perftest's socket) cannot reach it: the
/// router refuses its datagram link to the server's listener (and the
/// server's back), so no wire-up datagram arrives either way and UCX's UD
/// endpoints time out on both sides.
fn other_tenant_times_out(run: Run) {
    let env = ["UCX_TLS=rc_v,self", "UCX_NET_DEVICES=ff0:1", "UCX_UD_VERBS_TIMEOUT=3s"];
    let [(cok, cout, cerr), (sok, sout, serr)] = ucx_pair(run, &env, &["-t", "tag_lat", "-s", "8", "-n", "100"]);
    assert!(!cok && !sok, "a client of another tenant got through:\nclient: {cout}{cerr}\nserver: {sout}{serr}");
    for log in [format!("{cout}{cerr}"), format!("{sout}{serr}")] {
        assert!(log.contains("UD endpoint") && log.contains("timeout"), "expected UCX's UD endpoint timeout: {log}");
        assert!(!log.contains("Final:"), "{log}");
    }
}

fn have_ucx_and_mpi() -> bool {
    if !have("ucx_perftest") || !have("unshare") || !have("ss") || !have("mpicc") || !have("mpirun") {
        eprintln!("skipped: ucx_perftest, unshare, ss, mpicc or mpirun missing (scripts/deps.sh installs ucx-utils, openmpi-bin, libopenmpi-dev)");
        return false;
    }
    true
}

/// UCX's verbs transports over ff0 between two containers through one
/// router (ucx_verbs_tests, then Open MPI with checked bytes); a container
/// of another tenant that gets the server's address cannot reach it (its
/// UD wire-up datagrams are dropped, UCP gives up, the server sees
/// nothing).
#[test]
fn ucx_verbs_between_containers() {
    if !have_ucx_and_mpi() {
        return;
    }
    let r = RouterProc::start(&["a", "b"], &["--log-level", "warn"]);
    let (da, db) = (r.tenant_dir("a"), r.tenant_dir("b"));
    ucx_verbs_tests(&|_, argv| container(&da, argv));

    // Tenant b's client cannot reach tenant a's server.
    other_tenant_times_out(&|side, argv| container(if side == 0 { &da } else { &db }, argv));
    let rlog = r.log();
    assert!(rlog.contains("of tenant b tried to connect to tenant a's listener"), "the router did not refuse tenant b: {rlog}");

    let rsh = fresh_dir("ffverbs-mpi");
    let tag = std::process::id() % 10000;
    let names = [format!("ffvu{tag}a"), format!("ffvu{tag}b")];
    let subnet = 10 + tag % 200;
    let pods: Vec<Pod> = names.iter().enumerate().map(|(i, n)| Pod::start(n, &format!("10.76.{subnet}.{}/24", 11 + i), "ffbrvu", None, &da, &rsh)).collect();
    ffmpi_over_rc_verbs(&names, &rsh, None);
    drop(pods);
    let _ = std::fs::remove_dir_all(&rsh);
}

/// The same between containers on two emulated hosts (a router each,
/// linked over a veth): rc_verbs queue pairs and ud_verbs datagrams go
/// through both routers.
#[test]
fn ucx_verbs_across_hosts() {
    if !have_ucx_and_mpi() {
        return;
    }
    let mut h = fftestkit::hosts::TwoHosts::new();
    h.start_router(0, &["a", "b"], &["--log-level", "warn"]);
    h.start_router(1, &["a", "b"], &["--log-level", "warn"]);
    let env = || vec![("LD_LIBRARY_PATH".to_string(), lib_dir())];
    ucx_verbs_tests(&|side, argv| h.container_env(side, "a", &argv.iter().map(|s| s.as_str()).collect::<Vec<_>>(), env()));

    // Tenant b's client on host 1, tenant a's server on host 0: refused
    // as on one host.
    other_tenant_times_out(&|side, argv| h.container_env(side, if side == 0 { "a" } else { "b" }, &argv.iter().map(|s| s.as_str()).collect::<Vec<_>>(), env()));
    let rlog = h.router_log(0);
    assert!(rlog.contains("a remote client of tenant b tried to connect to tenant a's listener"), "host 0's router did not refuse tenant b: {rlog}");

    let rsh = fresh_dir("ffverbs-mpih");
    let tag = std::process::id() % 10000;
    let names = [format!("ffvh{tag}a"), format!("ffvh{tag}b")];
    let pods: Vec<Pod> =
        (0..2).map(|i| Pod::start(&names[i], &format!("{}.{}/24", h.subnets[i], 201 + i), &h.bridge, Some(&h.ns[i]), &h.tenant_dir(i, "a"), &rsh)).collect();
    ffmpi_over_rc_verbs(&names, &rsh, Some(&h.ns[0]));
    drop(pods);
    let _ = std::fs::remove_dir_all(&rsh);
}

const PERFTEST: [&str; 6] = ["ib_send_lat", "ib_write_lat", "ib_read_lat", "ib_send_bw", "ib_write_bw", "ib_read_bw"];

/// Debian's perftest, unmodified, between two host processes.
#[test]
fn perftest_between_processes() {
    let r = RouterProc::start(&["a"], &[]);
    let runs = PERFTEST.iter().map(|t| (vec![*t, "-d", "ff0", "-n", "200"], "Device         : ff0")).chain([
        // Completion events (`-e`): Debian's perftest puts the send and the
        // receive queue on one completion channel and takes the first
        // event after its send as the send's.
        (vec!["ib_send_lat", "-e", "-d", "ff0", "-n", "1000"], "Test with events"),
        // UC queue pairs (`-c UC`: SEND and WRITE).
        (vec!["ib_send_bw", "-c", "UC", "-d", "ff0", "-n", "200"], "Connection type : UC"),
        (vec!["ib_write_lat", "-c", "UC", "-d", "ff0", "-n", "200"], "Connection type : UC"),
    ]);
    for (argv, want) in runs {
        let [_, (cout, _)] = tool_pair(&r, &argv);
        assert!(cout.contains("#bytes") && cout.contains(want), "{argv:?}: no result: {cout}");
    }
}

/// A container's IPv4 address (ffcontainer picks it): the command prints
/// it first.
fn with_ip(argv: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["sh", "-c", "echo IP $(ip -o -4 addr show scope global | awk '{print $4}' | cut -d/ -f1); exec \"$@\"", "sh"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(argv.iter().map(|s| s.to_string()));
    v
}

fn container(dir: &Path, argv: &[String]) -> Container {
    let spec = Spec { socket_dir: Some(dir), env: vec![("LD_LIBRARY_PATH".into(), lib_dir())], ..Spec::default() };
    let argv: Vec<&str> = argv.iter().map(|s| s.as_str()).collect();
    Container::run_spec(&spec, &argv)
}

/// The same between two containers (own network, IPC, PID and mount
/// namespaces; only the tenant's socket directory), and ffvcheck too; a
/// container of another tenant cannot connect to them.
#[test]
fn perftest_and_ffvcheck_between_containers() {
    let r = RouterProc::start(&["a", "b"], &[]);
    let dir = r.tenant_dir("a");
    for t in PERFTEST {
        let mut server = container(&dir, &with_ip(&[t, "-d", "ff0", "-n", "200"]));
        let ip = server.read_line_with("IP ");
        let client = container(&dir, &[t.to_string(), "-d".into(), "ff0".into(), "-n".into(), "200".into(), ip]);
        let (cok, cout, cerr) = client.finish(Duration::from_secs(90));
        let (sok, sout, serr) = server.finish(Duration::from_secs(30));
        assert!(sok && cok, "{t}:\nserver: {sout}{serr}\nclient: {cout}{cerr}");
        assert!(cout.contains("#bytes"), "{t}: no result: {cout}");
    }
    let mut server = container(&dir, &with_ip(&[&ffvcheck(), "server", "18515"]));
    let ip = server.read_line_with("IP ");
    server.read_line_with("LISTENING");
    let client = container(&dir, &[ffvcheck(), "client".into(), ip, "18515".into()]);
    let c = client.finish(Duration::from_secs(90));
    let s = server.finish(Duration::from_secs(30));
    check_ffvcheck(&[s, c]);

    // Tenant b's container gets tenant a's GID (over TCP, like any
    // address): its queue pairs cannot connect, and its work fails with an
    // error completion instead of hanging.
    let mut server = container(&dir, &with_ip(&[&ffvcheck(), "server", "18516"]));
    let ip = server.read_line_with("IP ");
    server.read_line_with("LISTENING");
    let client = container(&r.tenant_dir("b"), &[ffvcheck(), "client".into(), ip, "18516".into()]);
    let (cok, cout, cerr) = client.finish(Duration::from_secs(60));
    assert!(!cok, "a client of another tenant got through: {cout}");
    assert!(cerr.contains("transport retry counter exceeded"), "expected an error completion: {cout}{cerr}");
    server.kill();
}

/// Queue pairs on two emulated hosts (network namespaces, a router each,
/// linked over a veth): the GID names the other router by address; the
/// routers carry the connection. perftest pairs and ffvcheck (every
/// WRITE and READ a message here, served by the target's library).
#[test]
fn perftest_and_ffvcheck_across_hosts() {
    let mut h = fftestkit::hosts::TwoHosts::new();
    h.start_router(0, &["a"], &[]);
    h.start_router(1, &["a"], &[]);
    let env = || vec![("LD_LIBRARY_PATH".to_string(), lib_dir()), ("FFVERBS_LOG".to_string(), std::env::var("FFVERBS_LOG").unwrap_or("warn".into()))];
    for t in PERFTEST {
        let mut server = h.container_env(0, "a", &with_ip(&[t, "-d", "ff0", "-n", "200"]).iter().map(|s| s.as_str()).collect::<Vec<_>>(), env());
        let ip = server.read_line_with("IP ");
        let client = h.container_env(1, "a", &[t, "-d", "ff0", "-n", "200", &ip], env());
        let (cok, cout, cerr) = client.finish(Duration::from_secs(90));
        let (sok, sout, serr) = server.finish(Duration::from_secs(30));
        assert!(sok && cok, "{t}:\nserver: {sout}{serr}\nclient: {cout}{cerr}");
        assert!(cout.contains("#bytes"), "{t}: no result: {cout}");
    }
    // One of our C test programs: its server in a container on host 0,
    // its client on host 1; (ok, stdout, stderr) of each.
    let c_pair = |prog: &str, port: &str, client_secs: u64| {
        let mut server = h.container_env(0, "a", &with_ip(&[prog, "server", port]).iter().map(|s| s.as_str()).collect::<Vec<_>>(), env());
        let ip = server.read_line_with("IP ");
        server.read_line_with("LISTENING");
        let c = h.container_env(1, "a", &[prog, "client", &ip, port], env()).finish(Duration::from_secs(client_secs));
        [server.finish(Duration::from_secs(30)), c]
    };
    check_ffvcheck(&c_pair(&ffvcheck(), "18517", 120));

    // Completion order with the routers between the queue pairs.
    let [(sok, sout, serr), (cok, cout, cerr)] = c_pair(&work().join("ffvorder").display().to_string(), "18520", 90);
    let want = "OK 200 rounds, every send completed before its answer was received";
    assert!(sok && cok && sout.contains(want) && cout.contains(want) && sout.contains(GONE_OK), "ffvorder across hosts:\nserver: {sout}{serr}\nclient: {cout}{cerr}");

    // Completion events from two threads at once, the routers between.
    check_ffvevents(&c_pair(&work().join("ffvevents").display().to_string(), "18521", 90), "across hosts");
}

/// UD queue pairs across two emulated hosts (ffvud in a container on each):
/// the datagram links go through both routers; the same checks as on one
/// host (GRH, src_qp, bytes, immediate data, answers back to src_qp, drops).
#[test]
fn ffvud_across_hosts() {
    let mut h = fftestkit::hosts::TwoHosts::new();
    h.start_router(0, &["a"], &[]);
    h.start_router(1, &["a"], &[]);
    let env = || vec![("LD_LIBRARY_PATH".to_string(), lib_dir())];
    let ud = work().join("ffvud").display().to_string();
    let mut server = h.container_env(0, "a", &with_ip(&[&ud, "server", "18519"]).iter().map(|s| s.as_str()).collect::<Vec<_>>(), env());
    let ip = server.read_line_with("IP ");
    let (cok, cout, cerr) = h.container_env(1, "a", &[&ud, "client", &ip, "18519"], env()).finish(Duration::from_secs(90));
    let (sok, sout, serr) = server.finish(Duration::from_secs(30));
    assert!(sok && cok, "ffvud across hosts:\nserver: {sout}{serr}\nclient: {cout}{cerr}");
    for want in ["OK 8 datagrams to two queue pairs: GRH, src_qp, bytes, immediate", "OK wrong Q_Key and no receive: dropped", "OK done"] {
        assert!(sout.contains(want), "server did not say {want:?}: {sout}{serr}");
    }
    for want in ["OK answers came back to the sending queue pair", "OK over the MTU refused; dropped datagrams complete at the sender", "OK done"] {
        assert!(cout.contains(want), "client did not say {want:?}: {cout}{cerr}");
    }
}

/// The library exports what Debian's libibverbs.so.1 exports: the same
/// names with the same versions (default and hidden), and its soname.
#[test]
fn exports_match_debians_libibverbs() {
    let debian = Path::new("/usr/lib/x86_64-linux-gnu/libibverbs.so.1");
    if !debian.exists() {
        eprintln!("skipped: no {} (apt-get install libibverbs1)", debian.display());
        return;
    }
    let ours = work().join("lib/libibverbs.so.1");
    let exports = |p: &Path| -> std::collections::BTreeSet<String> {
        let out = Command::new("objdump").arg("-T").arg(p).output().expect("objdump (binutils)");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.contains("*UND*") && l.contains("IBVERBS"))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (ver, name) = (f[f.len() - 2], f[f.len() - 1]);
                // The version nodes themselves (GNU ld lists them, lld not).
                (ver.trim_matches(|c| c == '(' || c == ')') != name).then(|| format!("{name} {ver}"))
            })
            .collect()
    };
    let (want, have) = (exports(debian), exports(&ours));
    assert!(want.len() > 150, "{want:?}");
    let missing: Vec<_> = want.difference(&have).collect();
    let extra: Vec<_> = have.difference(&want).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, extra {extra:?}");
    let dynamic = Command::new("objdump").arg("-p").arg(&ours).output().unwrap();
    assert!(String::from_utf8_lossy(&dynamic.stdout).contains("SONAME               libibverbs.so.1"));
}

/// ibv_event_type_str and ibv_port_state_str say what Debian's libibverbs
/// says, for every value and one past the last (the same program run with
/// each library). Until 2026-12-06 every event was "unknown" and port
/// states were the enum's names.
#[test]
fn event_and_port_state_names_are_libibverbs_own() {
    let run = |ours: bool| {
        let mut c = Command::new(work().join("ffvfatal"));
        c.arg("strs");
        if ours {
            c.env("LD_LIBRARY_PATH", lib_dir());
        }
        let out = c.output().expect("ffvfatal");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let (theirs, ours) = (run(false), run(true));
    assert!(theirs.contains("event 8: local catastrophic error"), "Debian's library: {theirs}");
    assert_eq!(ours, theirs);
}

/// The router goes away under an open ff0: the context gets
/// IBV_EVENT_PORT_ERR (port 1) and IBV_EVENT_DEVICE_FATAL, as from a NIC's
/// driver whose device failed, and its port reads DOWN. Once the router
/// is back, ff0 opened again (the dead context still open) attaches to it:
/// its port is ACTIVE and it makes a queue pair.
#[test]
fn a_router_that_goes_away_is_a_fatal_device_event_and_a_restarted_one_is_attached_anew() {
    use std::io::{BufRead, Write};
    let mut r = RouterProc::start(&["a"], &[]);
    let mut c = on_router(work().join("ffvfatal"), &r.socket("a")).arg("watch").stdin(Stdio::piped()).spawn().expect("ffvfatal");
    let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
    let mut lines = Vec::new();
    let mut next = |lines: &mut Vec<String>| {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        lines.push(l.trim().to_string());
        l.trim().to_string()
    };
    assert_eq!(next(&mut lines), "OPEN active");
    r.kill();
    while !next(&mut lines).starts_with("PORT ") {
        assert!(lines.last().unwrap().starts_with("EVENT "), "ffvfatal: {lines:?}");
    }
    assert_eq!(lines[1..], ["EVENT 10 port error", "EVENT 8 local catastrophic error", "PORT down"], "{lines:?}");
    r.restart();
    c.stdin.as_mut().unwrap().write_all(b"back\n").unwrap();
    assert_eq!(next(&mut lines), "REOPENED active", "{lines:?}");
    let (ok, _, err) = finish(c, Duration::from_secs(30));
    assert!(ok, "{lines:?} {err}");
}

/// A router that dies under a queue pair across hosts: the work waiting
/// for an answer fails with an error completion within seconds.
#[test]
fn dead_router_fails_work_across_hosts() {
    let mut h = fftestkit::hosts::TwoHosts::new();
    h.start_router(0, &["a"], &[]);
    h.start_router(1, &["a"], &[]);
    let env = || vec![("LD_LIBRARY_PATH".to_string(), lib_dir()), ("FFVCHECK_WAIT".to_string(), "1".to_string())];
    let ffv = ffvcheck();
    let mut server = h.container_env(0, "a", &with_ip(&[&ffv, "server", "18518"]).iter().map(|s| s.as_str()).collect::<Vec<_>>(), env());
    let ip = server.read_line_with("IP ");
    server.read_line_with("LISTENING");
    let mut client = h.container_env(1, "a", &[&ffv, "client", &ip, "18518"], env());
    client.read_line_with("CONNECTED");
    std::thread::sleep(Duration::from_millis(500));
    h.kill_router(0);
    let (ok, out, err) = client.finish(Duration::from_secs(60));
    assert!(ok, "{out}{err}");
    // How long it took is printed (1.0 s here: the dead router's sockets
    // close at once, then the queue pair's retries, 0.54 s, run out as a
    // NIC's would); no timing is asserted beyond the harness's timeout.
    let line = out.lines().find(|l| l.starts_with("OK router death")).unwrap_or_else(|| panic!("{out}{err}"));
    eprintln!("{line}");
    server.kill();
}
