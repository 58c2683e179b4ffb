//! ffrouter: the per-host FreeFlow daemon.
//!
//! One Unix socket per tenant; one thread per attached client, blocked in
//! `poll` when the client is quiet (the router never polls in a loop).
//! A client is admitted (its descriptors and thread charged to its
//! tenant's share) before its thread starts. Requests are decoded and
//! validated by ffcore, applied to [`state::State`] under one lock, and
//! answered after the lock is released. A frame must arrive whole within
//! [`FRAME_TIMEOUT`] of its first byte, and replies must be read within
//! [`WRITE_TIMEOUT`], so a client that stalls mid-frame or stops reading
//! holds nothing for long.

pub mod link;
pub mod metrics;
pub mod peers;
pub mod ratelog;
pub mod remote;
pub mod sched;
pub mod state;
pub mod trim;
pub mod wire;

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ffcore::error::{Error, ErrorCode};
use ffcore::fdpass::{recv_frame, send_frame};
use ffcore::proto::{self, Reply, Request, VERSION};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

pub use state::{Limits, State};

/// A client that does not read its replies for this long is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that sends part of a frame and not the rest within this long
/// is dropped.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads a secret (the peer secret, the metrics token) from the file a
/// flag names: surrounding white space dropped, at least 16 bytes left.
pub fn read_secret(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    let s = std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    let s = s.trim_ascii().to_vec();
    if s.len() < 16 {
        return Err(format!("{flag} {}: use at least 16 bytes of secret", path.display()));
    }
    Ok(s)
}

/// One tenant: a name and the socket its containers see.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: String,
    pub socket: PathBuf,
}

pub struct Router {
    state: Arc<Mutex<State>>,
    /// Connections to other hosts (`--listen-addr`); None: this host only.
    remote: Option<Arc<remote::Remote>>,
}

impl Router {
    pub fn new(limits: Limits) -> Router {
        let state = Arc::new(Mutex::new(State::new(limits)));
        if state.lock().unwrap().has_rate_limits() {
            // Only with rate limits configured: a 1 kHz credit tick.
            let st = state.clone();
            std::thread::Builder::new()
                .name("qos".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_millis(1));
                    st.lock().unwrap().qos_tick(std::time::Instant::now());
                })
                .expect("spawn the qos thread");
        }
        Router { state, remote: None }
    }

    /// Talks to other hosts' routers: listens at `cfg.listen`, and carries
    /// connections to listeners of other routers (see [`remote`]).
    pub fn enable_remote(&mut self, cfg: remote::Config) -> std::io::Result<()> {
        self.remote = Some(remote::Remote::start(self.state.clone(), cfg)?);
        Ok(())
    }

    /// The service carrying connections to other hosts, if enabled.
    pub fn remote(&self) -> Option<Arc<remote::Remote>> {
        self.remote.clone()
    }

    pub fn state(&self) -> Arc<Mutex<State>> {
        self.state.clone()
    }

    /// Binds a tenant's socket (replacing a stale one) and serves it on a
    /// background thread.
    pub fn serve_tenant(&self, t: &Tenant) -> std::io::Result<std::thread::JoinHandle<()>> {
        let listener = bind(&t.socket)?;
        log::info!("tenant {} on {}", t.name, t.socket.display());
        let state = self.state.clone();
        let remote = self.remote.clone();
        let tenant: Arc<str> = t.name.as_str().into();
        std::thread::Builder::new().name(format!("accept-{}", t.name)).spawn(move || {
            // Admissions are control path too (see `sched`).
            let mut boost = sched::Boost::new();
            for sock in listener.incoming() {
                boost.account();
                match sock {
                    Ok(s) => admit(&state, remote.clone(), &tenant, s),
                    Err(e) => {
                        crate::limited!(error, "accept", &tenant, "accept on tenant {tenant}: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
    }
}

/// Listens on `path`. The socket is bound under a temporary name and renamed
/// into place once it listens: whoever sees the file can connect (no window
/// between bind and listen where connects are refused), and a stale socket
/// from a dead router is replaced in one step.
fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = path.file_name().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "socket path has no file name"))?;
    let tmp = path.with_file_name(format!(".{}.{}", name.to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let l = UnixListener::bind(&tmp)?;
    // Access control is which socket directory is mounted into a container,
    // so the socket itself is open to any uid inside it.
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).and_then(|()| {
        let stale = path.exists();
        std::fs::rename(&tmp, path)?;
        if stale {
            log::info!("replaced stale socket {}", path.display());
        }
        Ok(())
    });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(l)
}

/// Admits a new client of `tenant` within its tenant's share (refused
/// with a reply saying why, without a thread), and serves it on a thread
/// of its own.
fn admit(state: &Arc<Mutex<State>>, remote: Option<Arc<remote::Remote>>, tenant: &Arc<str>, sock: UnixStream) {
    let cred = getsockopt(&sock.as_fd(), PeerCredentials).ok();
    let (pid, uid) = cred.map(|c| (c.pid(), c.uid())).unwrap_or((-1, u32::MAX));
    let id = match state.lock().unwrap().add_client(tenant.clone()) {
        Ok(id) => id,
        Err((code, msg)) => {
            crate::limited!(warn, "refuse-client", tenant, "refusing a client of tenant {tenant} (pid {pid}): {msg}");
            // The socket's buffer is empty: this never blocks the accept thread.
            let _ = sock.set_nonblocking(true);
            let _ = reply(&sock, &proto::error_reply(code, msg), None, false);
            return;
        }
    };
    let (st, t) = (state.clone(), tenant.clone());
    let spawned = std::thread::Builder::new().name(format!("client-{pid}")).spawn(move || {
        let container = container_of(pid);
        st.lock().unwrap().set_container(id, container);
        crate::limited!(info, "attach", &t, "client {id} attached: tenant {t}, pid {pid}, uid {uid}, container pidns:{container}");
        let why = serve_client(&st, remote.as_ref(), &t, id, &sock);
        st.lock().unwrap().remove_client(id);
        if let Some(r) = &remote {
            r.forget_client(id);
        }
        crate::limited!(info, "detach", &t, "client {id} (pid {pid}) detached: {why}; its resources are freed");
    });
    if let Err(e) = spawned {
        state.lock().unwrap().remove_client(id);
        crate::limited!(error, "refuse-client", tenant, "cannot start a thread for a client of tenant {tenant}: {e}");
    }
}

/// Waits until `sock` has something to read (or is closed): an idle
/// client costs no wake-ups.
fn wait_readable(sock: &UnixStream) {
    let mut p = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd on our stack; -1 waits without a timeout.
    while unsafe { libc::poll(&mut p, 1, -1) } < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {}
}

/// Serves one client until it leaves or misbehaves; returns why it ended.
fn serve_client(state: &Mutex<State>, remote: Option<&Arc<remote::Remote>>, tenant: &str, id: u64, sock: &UnixStream) -> String {
    if let Err(e) = sock.set_write_timeout(Some(WRITE_TIMEOUT)).and_then(|()| sock.set_read_timeout(Some(FRAME_TIMEOUT))) {
        return format!("socket setup failed: {e}");
    }
    let mut hello = false;
    // Answered at a higher priority while the router's budget for that
    // lasts (see `sched`): charged for each request before the next wait.
    let mut boost = sched::Boost::new();
    loop {
        boost.account();
        // No timeout while the client is quiet; FRAME_TIMEOUT (the
        // socket's read timeout) once a frame has begun.
        wait_readable(sock);
        let frame = match recv_frame(sock.as_fd()) {
            Ok(Some(f)) => f,
            Ok(None) => return "closed".into(),
            Err(e) => {
                // Framing is lost (bad magic, version, length, truncation):
                // say why, then hang up.
                let code = if matches!(e, Error::Version { .. }) { ErrorCode::Version } else { ErrorCode::BadRequest };
                let _ = reply(sock, &proto::error_reply(code, e.to_string()), None, false);
                return format!("bad frame: {e}");
            }
        };
        let (_, body, fds) = frame;
        if !fds.is_empty() {
            // Nothing in the protocol carries descriptors from a client;
            // dropping them closes them.
            let _ = reply(sock, &proto::error_reply(ErrorCode::BadRequest, "unexpected file descriptors"), None, false);
            continue;
        }
        let req = match proto::decode_body::<Request>(&body) {
            Ok(r) => r,
            Err(e) => {
                // The frame was well delimited, so the stream is still in step.
                let code = if matches!(e, Error::Version { .. }) { ErrorCode::Version } else { ErrorCode::BadRequest };
                if reply(sock, &proto::error_reply(code, e.to_string()), None, false).is_err() {
                    return "unreachable".into();
                }
                if !hello {
                    return format!("bad first request: {e}");
                }
                continue;
            }
        };
        let out = if !hello {
            if !matches!(req, Request::Hello { version: VERSION }) {
                let _ = reply(sock, &proto::error_reply(ErrorCode::BadRequest, "first request must be Hello"), None, false);
                return "no Hello".into();
            }
            hello = true;
            let (r, page) = state.lock().unwrap().welcome(id);
            if let Err(e) = reply(sock, &r, Some(page.mem()), false) {
                return format!("cannot reply: {e}");
            }
            continue;
        } else if let (Some(r), Request::ConnectRemote { router_id, addr, listener, nonce }) = (remote, &req) {
            let out = r.connect(id, tenant, *router_id, *addr, *listener, *nonce);
            state.lock().unwrap().count(id, &out);
            out
        } else {
            state.lock().unwrap().handle(id, req)
        };
        if let Err(e) = reply(sock, &out.reply, out.fd.as_deref(), out.read_only) {
            return format!("cannot reply: {e}");
        }
    }
}

/// A client's container: the inode of its PID namespace (0 if unknown).
fn container_of(pid: i32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/pid")).map(|m| m.ino()).unwrap_or(0)
}

fn reply(sock: &UnixStream, r: &Reply, fd: Option<&ffcore::shm::SharedMem>, read_only: bool) -> ffcore::Result<()> {
    match fd {
        // A new open file description, read-only: what the receiver can map.
        Some(m) if read_only => {
            let f = std::fs::File::open(format!("/proc/self/fd/{}", m.fd().as_raw_fd()))?;
            send_frame(sock.as_fd(), &proto::encode(r), &[f.as_fd()])
        }
        Some(m) => send_frame(sock.as_fd(), &proto::encode(r), &[m.fd()]),
        None => send_frame(sock.as_fd(), &proto::encode(r), &[]),
    }
}
