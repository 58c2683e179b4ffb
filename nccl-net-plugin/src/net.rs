//! The one implementation behind every exported ABI version: NCCL's net
//! operations on top of ffcore.
//!
//! - A *context* is one attachment to the router (`ffcore::Context`). NCCL
//!   v11+ creates one per communicator (`init`/`finalize`); for v8–v10 a
//!   single process-wide context is made by `init`.
//! - `listen` opens an ffcore listener and writes its 64-byte handle into
//!   NCCL's 128-byte buffer; `connect` and `accept` are one non-blocking
//!   router call each (`None` = "not yet", NCCL calls again).
//! - A send or receive comm owns one `ffcore::Conn` behind a mutex (NCCL's
//!   service and progress threads may both touch a comm). Requests are
//!   ffcore requests; `test` drives the connection, so no thread of ours
//!   runs: NCCL's progress thread moves the data.
//! - Every object NCCL holds is an id in one table ([`crate::table`]).

use std::sync::{Arc, Mutex, MutexGuard};

use ffcore::{Conn, Context, Handle, Listener, MemKey, Req, TAG_ANY};

use crate::abi::{self, NcclResult};
use crate::table::{Id, Table};

/// An error for NCCL: its code, what to log, and how loudly.
#[derive(Debug)]
pub struct Fail {
    pub code: NcclResult,
    pub msg: String,
    /// Log at INFO instead of WARN (an expected condition, e.g. no router
    /// while NCCL has other networks to fall back on).
    pub quiet: bool,
}

impl Fail {
    pub fn new(code: NcclResult, msg: impl Into<String>) -> Fail {
        Fail { code, msg: msg.into(), quiet: false }
    }
    /// NCCL called us wrongly (bad id, bad argument).
    pub fn internal(msg: impl Into<String>) -> Fail {
        Fail::new(abi::INTERNAL_ERROR, msg)
    }
}

impl From<ffcore::Error> for Fail {
    fn from(e: ffcore::Error) -> Fail {
        use ffcore::Error as E;
        let code = match &e {
            // The peer went away or broke the shared ring.
            E::PeerClosed | E::Corrupt(_) => abi::REMOTE_ERROR,
            // NCCL passed something that does not fit (bad handle, sizes,
            // unregistered memory, mismatched tags).
            E::InvalidHandle(_) | E::InvalidArgument(_) | E::Truncated { .. } | E::TagMismatch { .. } => abi::INTERNAL_ERROR,
            // The router or the OS.
            _ => abi::SYSTEM_ERROR,
        };
        Fail::new(code, e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Fail>;

/// The single device we report: the router.
pub const DEVICE_NAME: &std::ffi::CStr = c"ffrouter";
/// Port speed we advertise (Mbps): about what one core's pipelined
/// memcpy moves through a connection's rings (see bench/nccl_bench.sh).
pub const SPEED_MBPS: i32 = 50_000;
/// One-way latency of a small message (µs), ffbench pingpong order.
pub const LATENCY_US: f32 = 2.0;

pub struct ListenComm {
    ctx: Arc<Context>,
    listener: Listener,
}

pub struct Comm {
    ctx: Arc<Context>,
    state: Mutex<CommState>,
}

struct CommState {
    conn: Conn,
    /// Requests posted and not yet returned complete by `test`.
    inflight: usize,
}

pub struct Request {
    comm: Arc<Comm>,
    req: Req,
}

enum Object {
    Context(Arc<Context>),
    Listen(Arc<ListenComm>),
    Send(Arc<Comm>),
    Recv(Arc<Comm>),
    Request(Request),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Listen,
    Send,
    Recv,
}

static OBJECTS: Mutex<Table<Object>> = Mutex::new(Table::new());
/// The context of the v8–v10 ABIs (no per-communicator context there).
static LEGACY: Mutex<Option<Arc<Context>>> = Mutex::new(None);

fn objects() -> MutexGuard<'static, Table<Object>> {
    // The table is always consistent between calls (no panics while held).
    OBJECTS.lock().unwrap_or_else(|p| p.into_inner())
}

fn comm_state(comm: &Comm) -> Result<MutexGuard<'_, CommState>> {
    comm.state.lock().map_err(|_| Fail::internal("communicator is unusable after an earlier internal error"))
}

/// Attaches to the router (`FF_ROUTER_SOCKET`). No router there is logged
/// at INFO (NCCL quietly uses another network) unless the user asked for
/// this network by name (`NCCL_NET=FreeFlow`); anything else is a WARN.
fn attach() -> Result<Arc<Context>> {
    Context::new().map(Arc::new).map_err(|e| {
        let asked = std::env::var("NCCL_NET").is_ok_and(|n| n.eq_ignore_ascii_case("FreeFlow"));
        let no_router = matches!(e, ffcore::Error::NoRouter { .. });
        let mut f = Fail::from(e);
        f.msg = format!("{}; {}", f.msg, if asked { "NCCL_NET=FreeFlow cannot be used" } else { "NCCL will use another network" });
        f.quiet = no_router && !asked;
        f
    })
}

fn describe(ctx: &Context, abi_version: u32, what: &str) -> String {
    format!(
        "{what}: router {} (tenant {}, client {}), plugin {} loaded as ncclNetPlugin_v{abi_version}",
        ffcore::client::socket_path(),
        ctx.tenant(),
        ctx.client_id(),
        env!("CARGO_PKG_VERSION")
    )
}

/// v11+ `init`: a context for one NCCL communicator.
pub fn init_context(abi_version: u32) -> Result<(Id, String)> {
    let ctx = attach()?;
    let line = describe(&ctx, abi_version, "communicator context");
    Ok((objects().insert(Object::Context(ctx)), line))
}

/// v8–v10 `init`: (re)attaches the process-wide context.
pub fn init_legacy(abi_version: u32) -> Result<String> {
    let ctx = attach()?;
    let line = describe(&ctx, abi_version, "initialized");
    *LEGACY.lock().unwrap_or_else(|p| p.into_inner()) = Some(ctx);
    Ok(line)
}

/// v11+ `finalize`. Comms made through the context keep working until closed.
pub fn finalize(ctx: Id) -> Result<()> {
    match objects().remove_if(ctx, |o| matches!(o, Object::Context(_))) {
        Some(_) => Ok(()),
        None => Err(Fail::internal(format!("finalize: {ctx:#x} is not a context"))),
    }
}

/// The context for `ctx` (0 = the v8–v10 process-wide one).
fn context(ctx: Id) -> Result<Arc<Context>> {
    if ctx == 0 {
        return LEGACY
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Fail::internal("the plugin was not initialized (init was not called or failed)"));
    }
    match objects().get(ctx) {
        Some(Object::Context(c)) => Ok(c.clone()),
        _ => Err(Fail::internal(format!("{ctx:#x} is not a context from init"))),
    }
}

fn check_dev(dev: i32) -> Result<()> {
    if dev != 0 {
        return Err(Fail::new(abi::INVALID_ARGUMENT, format!("device {dev} does not exist (we have one)")));
    }
    Ok(())
}

/// The properties of the device, in the newest layout; older ABIs copy from it.
pub fn properties(dev: i32) -> Result<abi::PropsV12> {
    check_dev(dev)?;
    Ok(abi::PropsV12 {
        name: DEVICE_NAME.as_ptr() as *mut _,
        pci_path: std::ptr::null_mut(),
        guid: 0x4646_0000, // "FF"; one virtual NIC
        ptr_support: abi::PTR_HOST,
        reg_is_global: 0,
        force_flush: 0,
        speed: SPEED_MBPS,
        port: 1,
        latency: LATENCY_US,
        max_comms: 65536,
        max_recvs: 1,
        net_device_type: abi::DEVICE_HOST,
        net_device_version: 0,
        v_props: abi::VDeviceProps { ndevs: 1, devs: [dev, 0, 0, 0, 0, 0, 0, 0] },
        max_p2p_bytes: abi::MAX_NET_SIZE,
        max_coll_bytes: abi::MAX_COLLNET_SIZE,
        max_multi_request_size: 1,
        rail_id: -1,
        plane_id: -1,
    })
}

/// `listen`: fills `handle` (all 128 bytes) and returns the listen comm.
pub fn listen(ctx: Id, dev: i32, handle: &mut [u8; abi::HANDLE_MAXSIZE]) -> Result<Id> {
    check_dev(dev)?;
    let ctx = context(ctx)?;
    let listener = ctx.listen()?;
    handle.fill(0);
    handle[..ffcore::handle::HANDLE_LEN].copy_from_slice(&listener.handle().to_bytes());
    Ok(objects().insert(Object::Listen(Arc::new(ListenComm { ctx, listener }))))
}

fn new_comm(ctx: Arc<Context>, conn: Conn, kind: Kind) -> Id {
    let comm = Arc::new(Comm { ctx, state: Mutex::new(CommState { conn, inflight: 0 }) });
    objects().insert(if kind == Kind::Send { Object::Send(comm) } else { Object::Recv(comm) })
}

/// `connect`: `None` until the router has made the connection.
pub fn connect(ctx: Id, dev: i32, handle: &[u8; abi::HANDLE_MAXSIZE]) -> Result<Option<Id>> {
    check_dev(dev)?;
    let ctx = context(ctx)?;
    let h = Handle::from_bytes(handle)?;
    Ok(ctx.connect(&h)?.map(|conn| new_comm(ctx, conn, Kind::Send)))
}

/// `accept`: `None` until a peer has connected.
pub fn accept(listen_comm: Id) -> Result<Option<Id>> {
    let lc = match objects().get(listen_comm) {
        Some(Object::Listen(l)) => l.clone(),
        _ => return Err(Fail::internal(format!("{listen_comm:#x} is not a listen comm"))),
    };
    Ok(lc.listener.accept()?.map(|conn| new_comm(lc.ctx.clone(), conn, Kind::Recv)))
}

/// `closeSend`/`closeRecv`/`closeListen`. Requests still outstanding on the
/// comm are dropped with it (their buffers are never touched again).
pub fn close(id: Id, kind: Kind) -> Result<()> {
    let mut objs = objects();
    let comm = match objs.remove_if(id, |o| match o {
        Object::Listen(_) => kind == Kind::Listen,
        Object::Send(_) => kind == Kind::Send,
        Object::Recv(_) => kind == Kind::Recv,
        _ => false,
    }) {
        Some(Object::Send(c) | Object::Recv(c)) => c,
        Some(_) => return Ok(()),
        None => return Err(Fail::internal(format!("close: {id:#x} is not an open {kind:?} comm"))),
    };
    objs.retain(|o| !matches!(o, Object::Request(r) if Arc::ptr_eq(&r.comm, &comm)));
    drop(objs);
    // The connection closes when the last Arc goes: here, or when a
    // concurrent call on it returns.
    drop(comm);
    Ok(())
}

fn data_comm(id: Id) -> Result<(Arc<Comm>, Kind)> {
    match objects().get(id) {
        Some(Object::Send(c)) => Ok((c.clone(), Kind::Send)),
        Some(Object::Recv(c)) => Ok((c.clone(), Kind::Recv)),
        _ => Err(Fail::internal(format!("{id:#x} is not a send or receive comm"))),
    }
}

/// Checks that `id` is an open receive comm.
pub fn check_recv_comm(id: Id) -> Result<()> {
    match data_comm(id)? {
        (_, Kind::Recv) => Ok(()),
        (_, k) => Err(Fail::internal(format!("{id:#x} is a {k:?} comm, not a receive comm"))),
    }
}

/// `regMr`: host memory only (we advertise `NCCL_PTR_HOST`).
pub fn reg_mr(comm: Id, ptr: *const u8, len: usize, ty: i32) -> Result<MemKey> {
    let (comm, _) = data_comm(comm)?;
    if ty != abi::PTR_HOST {
        return Err(Fail::internal(format!("regMr: memory type {ty} is not host memory (NCCL_PTR_HOST)")));
    }
    Ok(comm.ctx.register(ptr, len)?)
}

pub fn dereg_mr(comm: Id, key: MemKey) -> Result<()> {
    let (comm, _) = data_comm(comm)?;
    Ok(comm.ctx.deregister(key)?)
}

/// A send (`Kind::Send`) or receive (`Kind::Recv`) of `len` bytes at `ptr`.
/// `None` when the comm already has [`abi::MAX_REQUESTS`] outstanding (NCCL
/// posts again later).
///
/// # Safety
/// `[ptr, ptr+len)` must stay valid (readable for a send, writable for a
/// receive, and otherwise untouched) until `test` reports the request
/// complete or the comm is closed. That is NCCL's contract for
/// `isend`/`irecv`.
pub unsafe fn post(id: Id, kind: Kind, ptr: *mut u8, len: usize, tag: u32, mh: Option<MemKey>) -> Result<Option<Id>> {
    let (comm, actual) = data_comm(id)?;
    if actual != kind {
        return Err(Fail::internal(format!("{id:#x} is a {actual:?} comm, not a {kind:?} comm")));
    }
    if let Some(key) = mh {
        comm.ctx.check_range(key, ptr, len)?;
    }
    // A zero-byte message may come with a NULL buffer; ffcore wants a
    // non-null pointer even for zero bytes.
    let ptr = if len == 0 { std::ptr::NonNull::dangling().as_ptr() } else { ptr };
    let mut st = comm_state(&comm)?;
    if st.inflight >= abi::MAX_REQUESTS {
        return Ok(None);
    }
    // SAFETY: forwarded from this function's contract.
    let posted = unsafe {
        match kind {
            Kind::Send => st.conn.isend(ptr, len, tag),
            _ => st.conn.irecv(ptr, len, tag),
        }
    };
    let req = match posted {
        Ok(r) => r,
        Err(ffcore::Error::QueueFull(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    st.inflight += 1;
    drop(st);
    Ok(Some(objects().insert(Object::Request(Request { comm, req }))))
}

/// `test`: `Some(bytes)` once complete (the request id is then gone).
pub fn test(id: Id) -> Result<Option<usize>> {
    let (comm, req) = match objects().get(id) {
        Some(Object::Request(r)) => (r.comm.clone(), r.req),
        _ => return Err(Fail::internal(format!("{id:#x} is not an outstanding request"))),
    };
    let mut st = comm_state(&comm)?;
    let res = st.conn.test(req);
    if !matches!(res, Ok(None)) {
        st.inflight -= 1;
        drop(st);
        objects().remove(id);
    }
    Ok(res?)
}

/// Converts NCCL's tag to ours (NCCL's tags are ranks, >= 0).
pub fn tag(t: i32) -> u32 {
    if t < 0 {
        TAG_ANY
    } else {
        t as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ids_are_refused_with_internal_error() {
        for id in [0u64, 1, 0xdead_beef, 0x7fff_0000_1234] {
            assert_eq!(test(id).unwrap_err().code, abi::INTERNAL_ERROR);
            assert_eq!(accept(id).unwrap_err().code, abi::INTERNAL_ERROR);
            assert_eq!(close(id, Kind::Send).unwrap_err().code, abi::INTERNAL_ERROR);
            assert_eq!(finalize(id).unwrap_err().code, abi::INTERNAL_ERROR);
            assert_eq!(reg_mr(id, std::ptr::null(), 0, abi::PTR_HOST).unwrap_err().code, abi::INTERNAL_ERROR);
            // SAFETY: refused before any buffer is used.
            let r = unsafe { post(id, Kind::Send, std::ptr::null_mut(), 0, 0, None) };
            assert_eq!(r.unwrap_err().code, abi::INTERNAL_ERROR);
        }
    }

    #[test]
    fn properties_are_host_only_and_valid() {
        let p = properties(0).unwrap();
        assert_eq!((p.ptr_support, p.net_device_type, p.max_recvs, p.force_flush), (abi::PTR_HOST, abi::DEVICE_HOST, 1, 0));
        assert!(p.speed > 0 && p.latency > 0.0);
        assert!(p.max_p2p_bytes > 0 && p.max_p2p_bytes <= 1 << 40);
        assert!(p.max_coll_bytes > 0 && p.max_coll_bytes <= 1 << 40);
        assert_eq!(properties(1).unwrap_err().code, abi::INVALID_ARGUMENT);
    }
}
