//! The interface: a per-iface ffcore `Listener` whose 64-byte handle is the
//! UCT iface address, the connections peers opened to it (accepted in
//! progress), and the progress loop that serves them.
//!
//! Target side of the protocol in [`crate::proto`]: active messages are
//! copied out of the shared ring into a buffer of the iface ([`AmBuf`])
//! and handed to UCP's handler from there, so the peer (another process)
//! cannot change them while UCP parses them; from another host, where only
//! the router writes the ring, UCP reads them in the ring ([`am_in_ring`]);
//! PUT data is written into, and GET data read from, memory this process
//! registered, and atomics
//! performed on it (one CPU atomic each, `ffcore::atomic`), after the
//! request (decoded from a private copy of its header) passed the
//! registration check. A connection whose requests are refused [`MAX_REFUSED`] times is
//! closed.
//!
//! # Safety
//!
//! The `unsafe` functions here are UCT callbacks (in the ops tables this
//! crate hands UCX) and the helpers they call. Their contract is UCT's, not
//! restated per function: every handle (`uct_iface_h`, `uct_ep_h`,
//! `uct_md_h`, `uct_rkey_t`) is one this crate created and has not yet
//! destroyed; every other pointer is valid for what UCT's API says the call
//! reads or writes, for the duration of the call (a zero-copy buffer and a
//! completion until the operation completes); and UCX serializes the calls
//! on one worker, so no two run at once on the same iface or domain.

#![allow(clippy::missing_safety_doc)] // see "Safety" above

use crate::config::IfaceConfig;
use crate::ep::{self, Ep, Stall};
use crate::internal::*;
use crate::md::Md;
use crate::proto::{self, AmoReply, AmoReq, GetWay, RmaReply, RmaReq};
use crate::sys::*;
use ffcore::{Conn, Req};
use std::collections::VecDeque;
use std::os::raw::{c_int, c_uint, c_void};
use std::time::Duration;

pub const DEVICE_NAME: &str = "router";
pub const DEV_ADDR_LEN: usize = 16;
/// The used part of the listener's 64-byte handle: id, listener, nonce and
/// the router's address for other hosts (UCP packs iface addresses of at
/// most 63 bytes; the rest of a handle is reserved, zero).
pub const IFACE_ADDR_LEN: usize = 55;

/// The handle an iface address names.
pub fn parse_iface_addr(b: &[u8]) -> Option<ffcore::Handle> {
    let mut full = [0u8; ffcore::handle::HANDLE_LEN];
    full[..IFACE_ADDR_LEN].copy_from_slice(b.get(..IFACE_ADDR_LEN)?);
    ffcore::Handle::from_bytes(&full).ok()
}

/// Limits and perf figures from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Cfg {
    pub seg_size: usize,
    pub short_size: usize,
    pub inline_rma: usize,
    pub rx_burst: u32,
    pub latency: f64,
    pub bandwidth: f64,
    pub overhead: f64,
    pub connect_timeout: Duration,
    /// How long an idle progress call sleeps while a bulk transfer to or
    /// from another host is under way (`UCX_FF_BULK_NAP`; zero: never).
    pub bulk_nap: Duration,
    /// The longest an idle progress call dozes once yields lose the core
    /// (`UCX_FF_DOZE`; zero: never doze, always yield).
    pub doze: Duration,
    /// Requested AM data alignment (`am_alignment`, 1 = none) and offset.
    pub am_align: usize,
    pub am_align_offset: usize,
}

impl Cfg {
    /// The largest record an endpoint writes whole into its connection's
    /// ring: an active message, or a PUT request with its data inline.
    pub fn whole_sends(&self) -> usize {
        self.seg_size.max(self.short_size).max(self.inline_rma + RmaReq::LEN)
    }

    /// The largest record an accepted connection writes whole: a reply
    /// with a GET's data inline.
    pub fn whole_replies(&self) -> usize {
        (self.inline_rma + RmaReply::LEN).max(AmoReply::LEN)
    }
}

/// Whether `conn`'s ring takes records of `need` bytes whole (the router
/// may give a connection a smaller ring than the one the iface learnt its
/// sizes from: a tenant's many connections, or `--peer-ring-size` below
/// `--ring-size`); logs why not.
pub fn fits(conn: &Conn, need: usize) -> bool {
    if conn.max_whole() >= need {
        return true;
    }
    ff_error!(
        "ff: connection {} takes records of at most {} bytes, less than this iface's {need} (UCX_FF_SEG_SIZE, UCX_FF_SHORT_SIZE, UCX_FF_INLINE_RMA): lower those, or give the router a bigger --ring-size or --peer-ring-size",
        conn.id(),
        conn.max_whole()
    );
    false
}

#[repr(C)]
pub struct Iface {
    /// Must come first: libuct casts the iface to it.
    pub base: BaseIface,
    pub st: State,
}

pub struct State {
    pub md: *mut Md,
    /// Where received active messages are copied for UCP's handler.
    pub am_buf: AmBuf,
    pub listener: ffcore::Listener,
    pub router_id: [u8; 16],
    pub cfg: Cfg,
    /// Connections peers opened to us (their endpoints), in accept order.
    pub rx: Vec<Box<RxConn>>,
    /// Our endpoints.
    pub eps: Vec<*mut Ep>,
    /// Endpoints destroyed while progress ran; freed when it returns.
    pub graveyard: Vec<*mut Ep>,
    pub in_progress: bool,
    pub accept_failed: bool,
    /// Progress calls in a row that found nothing to do while a connection
    /// to another host was open (see `iface_progress`).
    pub idle: u32,
    /// Whether idle progress calls yield or doze (ffcore's `polite`).
    pub yields: ffcore::polite::Polite,
    /// Since when progress calls have found nothing to do (once they
    /// looked at the clock: every `IDLE_YIELD` calls).
    pub idle_since: Option<std::time::Instant>,
    /// The event descriptor (`event_fd_get`) and its helper threads.
    pub waiter: ffcore::wake::Waiter,
    /// `event_arm` armed the waiter; the next progress disarms it.
    pub armed: bool,
    /// An active message was handed to UCP straight from a ring the
    /// router writes (logged once, at info level).
    pub am_in_ring_seen: bool,
    /// Held and posted GETs (see [`proto::HOLD`], [`proto::POSTED`]) whose
    /// data arrived, and how many messages the router wrote straight into
    /// our buffers (logged at close, at info level).
    pub held_gets: u64,
    /// Of them, those whose receive was posted with the request.
    pub posted_gets: u64,
    pub held_placed: u64,
    /// Progress calls since the last liveness round, and when that was.
    pub live_calls: u32,
    pub live_at: std::time::Instant,
}

/// The target end of a peer's endpoint.
pub struct RxConn {
    pub conn: Conn,
    /// Replies not sent yet (the ring back was full), in order.
    replies: VecDeque<Reply>,
    /// A PUT's streamed data being received into registered memory, its
    /// sequence number, and whether it is bulk ([`BULK_MIN`]).
    put_rx: Option<(Req, u64, bool)>,
    /// GET data sends still in the ring (to be completed), whether each is
    /// bulk, and since when it waits.
    sends: VecDeque<(Req, bool, Stall)>,
    held: Option<Held>,
    /// Remote-memory requests refused so far (see [`MAX_REFUSED`]).
    refused: u32,
    dead: bool,
    /// The connection's wake-up words, for the event descriptor.
    words: Option<std::sync::Arc<ffcore::wake::ConnWords>>,
}

/// A held GET whose reply went out: its data waits for the initiator's
/// GET_GO, and every later reply behind it.
#[derive(Clone, Copy)]
struct Held {
    seq: u64,
    addr: u64,
    len: u64,
    since: Stall,
}

/// Refused remote-memory requests (a key that is not a registration of
/// this process, another domain's cookie, a range outside the
/// registration) after which the connection that made them is closed: the
/// first `MAX_REFUSED - 1` are answered `UCS_ERR_INVALID_ADDR`, the
/// `MAX_REFUSED`-th closes the connection unanswered (the peer's endpoint
/// then fails with a closed connection). UCP never asks for memory it was
/// not given a key for, so only a broken or probing peer gets here.
pub const MAX_REFUSED: u32 = 8;

/// A PUT or GET whose data is at least this large is *bulk*: while one is
/// under way across hosts, an idle progress call naps (see
/// [`Cfg::bulk_nap`]) instead of polling.
pub const BULK_MIN: usize = 256 << 10;

/// Replies one peer connection may have waiting (its ring back full, or
/// behind a held GET whose GET_GO has not come): a peer that sends
/// requests without taking their answers is dropped past this, rather
/// than growing the queue without bound.
pub const MAX_QUEUED_REPLIES: usize = 1 << 16;

/// The private buffer active messages are copied into before UCP sees them
/// (one per iface, used by one progress call at a time: `in_progress`).
///
/// Sized at open for the largest AM the iface handles (its short and bcopy
/// limits); an AM larger than any before (a peer configured with a larger
/// segment, bounded by its ring) grows it once, to the next power of two.
/// So no allocation happens per message. The data pointer it gives honours
/// the iface's AM alignment: `(data + am_align_offset) % am_align == 0`,
/// and is 64-byte aligned (`am_align_offset` aside) for fast copies.
pub struct AmBuf {
    mem: Vec<u8>,
    /// `max(am_align, 64)`: a power of two that `am_align` divides.
    align: usize,
    offset: usize,
}

impl AmBuf {
    pub fn new(max_am: usize, am_align: usize, am_align_offset: usize) -> AmBuf {
        let align = am_align.max(64);
        let mut b = AmBuf { mem: Vec::new(), align, offset: am_align_offset % align };
        b.reserve(max_am);
        b
    }
    fn reserve(&mut self, len: usize) {
        let need = len + self.align;
        if self.mem.len() < need {
            self.mem = vec![0u8; need.next_power_of_two()];
        }
    }
    /// Room for `len` bytes at an address `p` with `(p + offset) % align == 0`.
    /// Valid until the next call.
    pub fn place(&mut self, len: usize) -> *mut u8 {
        self.reserve(len);
        let p = self.mem.as_mut_ptr();
        let skew = (self.align - (p as usize + self.offset) % self.align) % self.align;
        // In bounds: skew < align and the buffer holds len + align bytes.
        p.wrapping_add(skew)
    }
    /// Bytes the buffer holds (tests).
    pub fn capacity(&self) -> usize {
        self.mem.len()
    }
}

enum Reply {
    PutAck { seq: u64, status: i32 },
    Get { seq: u64, status: i32, addr: u64, len: u64, way: GetWay },
    Amo { seq: u64, status: i32, old: u64 },
}

/// What a received message asks for, once it left the ring.
enum Action {
    None,
    /// An active message for handler `id`, copied into the iface's AM buffer.
    Am { id: usize, data: *mut u8, len: usize },
    /// An active message for handler `id`, still in the ring of a
    /// connection the router plays (see [`am_in_ring`]): handed to UCP
    /// before the record is released.
    AmInRing { id: usize, data: *mut u8, len: usize },
    /// A PUT whose data follows as its own message.
    PutStream { seq: u64, ok: bool, addr: u64, len: u64 },
    /// The initiator posted its receive for held GET `seq`'s data.
    Go(u64),
    Reply(Reply),
    Bad(String),
}

impl Action {
    /// A remote-memory request the registration check refused.
    fn refused(&self) -> bool {
        match self {
            Action::PutStream { ok, .. } => !ok,
            Action::Reply(Reply::PutAck { status, .. } | Reply::Get { status, .. } | Reply::Amo { status, .. }) => *status != UCS_OK as i32,
            _ => false,
        }
    }
}

pub fn iface_ops() -> uct_iface_ops_t {
    ep::ops()
}

/// Is the peer at (`dev`, `iface`) reachable from here? Through our router:
/// the same router (one host), or another host's router when the peer's
/// handle carries that router's address (routers started with
/// `--listen-addr` carry connections between hosts; see ffrouter's remote).
pub fn reachable(router_id: &[u8; 16], dev: &[u8], iface: Option<&[u8]>) -> bool {
    if dev.len() < DEV_ADDR_LEN {
        return false;
    }
    let same = dev[..DEV_ADDR_LEN] == router_id[..];
    match iface {
        None => same,
        Some(b) => parse_iface_addr(b)
            .is_some_and(|h| h.router_id[..] == dev[..DEV_ADDR_LEN] && (h.router_id == *router_id || h.addr.is_some())),
    }
}

pub unsafe extern "C" fn query_devices(md: uct_md_h, devices_p: *mut *mut UctTlDeviceResource, num_p: *mut c_uint) -> ucs_status_t {
    let md = &*(md as *const Md);
    *devices_p = std::ptr::null_mut();
    *num_p = 0;
    if md.ctx.is_none() {
        return UCS_OK;
    }
    // libuct frees this array with free(3).
    let d = libc::calloc(1, std::mem::size_of::<UctTlDeviceResource>()) as *mut UctTlDeviceResource;
    if d.is_null() {
        return UCS_ERR_NO_MEMORY;
    }
    for (i, b) in DEVICE_NAME.bytes().enumerate() {
        (*d).name[i] = b as std::os::raw::c_char;
    }
    // A network device, not "shm": FreeFlow is the containers' (virtual)
    // network, and Open MPI publishes only network devices to ranks it sees
    // on other hosts (UCP_WORKER_ADDRESS_FLAG_NET_ONLY) -- every pod is one.
    (*d).type_ = UCT_DEVICE_TYPE_NET;
    (*d).sys_device = UCS_SYS_DEVICE_ID_UNKNOWN as u8;
    *devices_p = d;
    *num_p = 1;
    UCS_OK
}

pub unsafe extern "C" fn iface_open(
    md_h: uct_md_h,
    worker: uct_worker_h,
    params: *const uct_iface_params_t,
    config: *const uct_iface_config_t,
    iface_p: *mut uct_iface_h,
) -> ucs_status_t {
    let md = md_h as *mut Md;
    let Some(ctx) = (*md).ctx.as_ref() else {
        ff_error!("ff: no FreeFlow router at {} (is ffrouter running and its socket mounted?)", (*md).socket);
        return UCS_ERR_NO_DEVICE;
    };
    let p = &*params;
    if p.field_mask & UCT_IFACE_PARAM_FIELD_OPEN_MODE as u64 == 0 || p.open_mode & UCT_IFACE_OPEN_MODE_DEVICE as u64 == 0 {
        ff_error!("ff: only device open mode is supported");
        return UCS_ERR_UNSUPPORTED;
    }
    let (am_align, am_align_offset) = match am_alignment(p) {
        Ok(a) => a,
        Err(why) => {
            ff_error!("ff: {why}");
            return UCS_ERR_INVALID_PARAM;
        }
    };
    let c = &*(config as *const IfaceConfig);
    let cfg = Cfg {
        am_align,
        am_align_offset,
        seg_size: c.seg_size,
        short_size: c.short_size.max(16),
        inline_rma: c.inline_rma,
        rx_burst: c.rx_burst.max(1),
        latency: c.latency,
        bandwidth: c.bandwidth,
        overhead: c.overhead,
        connect_timeout: Duration::from_secs_f64(c.connect_timeout.clamp(0.0, 3600.0)),
        bulk_nap: Duration::from_secs_f64(c.bulk_nap.clamp(0.0, 0.01)),
        doze: Duration::from_secs_f64(c.doze.clamp(0.0, 0.1)),
    };
    let listener = match ctx.listen() {
        Ok(l) => l,
        Err(e) => {
            ff_error!("ff: cannot listen on the router at {}: {e}", (*md).socket);
            return UCS_ERR_IO_ERROR;
        }
    };
    let router_id = listener.handle().router_id;
    // Records must fit a quarter of the router's rings: learn their size
    // from one connection to ourselves, and never count on more than the
    // smallest ring a router gives a connection when a tenant has many
    // (`ffcore::ring::MIN_SCALED_RING`; `ep_create` checks each).
    let max_whole = match probe_max_whole(ctx, &listener) {
        Ok(m) => m.min(ffcore::ring::whole_max(ffcore::ring::MIN_SCALED_RING)),
        Err(e) => {
            ff_error!("ff: cannot open a connection through the router at {}: {e}", (*md).socket);
            return UCS_ERR_IO_ERROR;
        }
    };
    let mut cfg = cfg;
    if cfg.seg_size > max_whole {
        ff_info!("ff: segments of {} bytes (UCX_FF_SEG_SIZE) capped to {max_whole}, the largest record every connection's ring takes whole", cfg.seg_size);
    }
    cfg.seg_size = cfg.seg_size.clamp(64, max_whole);
    cfg.short_size = cfg.short_size.min(max_whole);
    cfg.inline_rma = cfg.inline_rma.min(max_whole - RmaReq::LEN);
    let waiter = match ffcore::wake::Waiter::new() {
        Ok(w) => w,
        Err(e) => {
            ff_error!("ff: cannot make the iface's event descriptor: {e}");
            return UCS_ERR_IO_ERROR;
        }
    };
    let raw = libc::calloc(1, std::mem::size_of::<Iface>()) as *mut Iface;
    if raw.is_null() {
        return UCS_ERR_NO_MEMORY;
    }
    let mut ops = iface_ops();
    let mut count: c_int = 1;
    let status = uct_base_iface_t_init(
        std::ptr::addr_of_mut!((*raw).base),
        std::ptr::addr_of_mut!(uct_base_iface_t_class),
        &mut count,
        &mut ops,
        std::ptr::addr_of_mut!(uct_base_iface_internal_ops),
        md_h,
        worker,
        params,
        config as *const UctIfaceConfig,
    );
    if status != UCS_OK {
        ucs_class_call_cleanup_chain(std::ptr::addr_of_mut!(uct_base_iface_t_class), raw as *mut c_void, count);
        libc::free(raw as *mut c_void);
        return status;
    }
    std::ptr::addr_of_mut!((*raw).st).write(State {
        md,
        am_buf: AmBuf::new(cfg.seg_size.max(cfg.short_size), cfg.am_align, cfg.am_align_offset),
        listener,
        router_id,
        cfg,
        rx: Vec::new(),
        eps: Vec::new(),
        graveyard: Vec::new(),
        in_progress: false,
        accept_failed: false,
        idle: 0,
        // UCX_FF_DOZE=0: no verdict, ever (yield as on dedicated cores).
        yields: ffcore::polite::Polite::new(if cfg.doze.is_zero() { u32::MAX } else { ffcore::polite::LOST_IN_A_ROW }),
        idle_since: None,
        waiter,
        armed: false,
        am_in_ring_seen: false,
        held_gets: 0,
        posted_gets: 0,
        held_placed: 0,
        live_calls: 0,
        live_at: std::time::Instant::now(),
    });
    ff_debug!("ff: iface {:p} open, handle {}", raw, (*raw).st.listener.handle().to_hex());
    *iface_p = raw as uct_iface_h;
    UCS_OK
}

/// The AM alignment parameters, checked as UCX's own transports do.
fn am_alignment(p: &uct_iface_params_t) -> Result<(usize, usize), String> {
    let has_align = p.field_mask & UCT_IFACE_PARAM_FIELD_AM_ALIGNMENT as u64 != 0;
    let has_offset = p.field_mask & UCT_IFACE_PARAM_FIELD_AM_ALIGN_OFFSET as u64 != 0;
    if !has_align {
        if has_offset {
            return Err("invalid AM alignment: an alignment offset has no effect without alignment".into());
        }
        return Ok((1, 0));
    }
    let align = p.am_alignment;
    if !align.is_power_of_two() {
        return Err(format!("invalid AM alignment {align}: must be a power of 2"));
    }
    // Any offset is fine: what must be aligned is data + offset.
    let offset = if has_offset { p.am_align_offset } else { 0 };
    Ok((align, offset % align))
}

fn probe_max_whole(ctx: &ffcore::Context, listener: &ffcore::Listener) -> ffcore::Result<usize> {
    let start = std::time::Instant::now();
    let conn = loop {
        if let Some(c) = ctx.connect(&listener.handle())? {
            break c;
        }
        if start.elapsed() > Duration::from_secs(5) {
            return Err(ffcore::Error::Timeout(Duration::from_secs(5)));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let max = conn.max_whole();
    // Take the other end off our own listener so it does not linger.
    drop(listener.accept_timeout(Duration::from_secs(5))?);
    Ok(max)
}

pub unsafe extern "C" fn iface_close(iface: uct_iface_h) {
    let raw = iface as *mut Iface;
    uct_base_iface_progress_disable(iface, UCT_PROGRESS_SEND | UCT_PROGRESS_RECV);
    let st = &(*raw).st;
    if st.held_gets > 0 {
        ff_info!(
            "ff: iface {:p}: {} of {} held or posted GETs from another host were written straight into shadow memory ({} posted)",
            raw,
            st.held_placed,
            st.held_gets,
            st.posted_gets
        );
    }
    // Endpoints UCX forgot to destroy go with the iface.
    for e in std::mem::take(&mut (*raw).st.eps) {
        drop(Box::from_raw(e));
    }
    for e in std::mem::take(&mut (*raw).st.graveyard) {
        drop(Box::from_raw(e));
    }
    std::ptr::drop_in_place(std::ptr::addr_of_mut!((*raw).st));
    ucs_class_call_cleanup_chain(std::ptr::addr_of_mut!(uct_base_iface_t_class), raw as *mut c_void, -1);
    libc::free(raw as *mut c_void);
}

pub unsafe extern "C" fn iface_query(iface: uct_iface_h, attr: *mut uct_iface_attr_t) -> ucs_status_t {
    let me = &*(iface as *const Iface);
    let cfg = me.st.cfg;
    let a = &mut *attr;
    // Zeroes the struct and sets max_num_eps and dev_num_paths.
    crate::internal::uct_base_iface_query(iface as *mut c_void, attr);
    a.cap.flags = UCT_IFACE_FLAG_AM_SHORT as u64
        | UCT_IFACE_FLAG_AM_BCOPY as u64
        | UCT_IFACE_FLAG_PUT_SHORT as u64
        | UCT_IFACE_FLAG_PUT_BCOPY as u64
        | UCT_IFACE_FLAG_PUT_ZCOPY as u64
        | UCT_IFACE_FLAG_GET_SHORT as u64
        | UCT_IFACE_FLAG_GET_BCOPY as u64
        | UCT_IFACE_FLAG_GET_ZCOPY as u64
        | UCT_IFACE_FLAG_ATOMIC_CPU as u64
        | UCT_IFACE_FLAG_PENDING as u64
        | UCT_IFACE_FLAG_CB_SYNC
        | UCT_IFACE_FLAG_CONNECT_TO_IFACE
        | UCT_IFACE_FLAG_ERRHANDLE_PEER_FAILURE
        | UCT_IFACE_FLAG_EP_CHECK;
    // Any event (a message, a reply, room in a ring, a peer's death) makes
    // the descriptor readable, whichever events were armed.
    a.cap.event_flags = (UCT_IFACE_FLAG_EVENT_SEND_COMP | UCT_IFACE_FLAG_EVENT_RECV | UCT_IFACE_FLAG_EVENT_FD) as u64;
    a.cap.am.max_short = cfg.short_size;
    a.cap.am.max_bcopy = cfg.seg_size;
    a.cap.am.min_zcopy = 0;
    a.cap.am.max_zcopy = 0;
    a.cap.am.opt_zcopy_align = 64;
    a.cap.am.align_mtu = 64;
    a.cap.am.max_hdr = 0;
    a.cap.am.max_iov = 16;
    // Atomics: every op UCP asks for, 32 and 64 bits. Each is one CPU
    // atomic on the target word (see ffcore::atomic), hence ATOMIC_CPU.
    let ops = (1u64 << UCT_ATOMIC_OP_ADD) | (1 << UCT_ATOMIC_OP_AND) | (1 << UCT_ATOMIC_OP_OR) | (1 << UCT_ATOMIC_OP_XOR);
    let fops = ops | (1 << UCT_ATOMIC_OP_SWAP) | (1 << UCT_ATOMIC_OP_CSWAP);
    a.cap.atomic32.op_flags = ops;
    a.cap.atomic32.fop_flags = fops;
    a.cap.atomic64.op_flags = ops;
    a.cap.atomic64.fop_flags = fops;
    // PUT and GET by copy: what fits inline in a request or reply record.
    a.cap.put.max_short = cfg.inline_rma;
    a.cap.put.max_bcopy = cfg.inline_rma;
    a.cap.put.min_zcopy = 0;
    a.cap.put.max_zcopy = usize::MAX;
    a.cap.put.opt_zcopy_align = 1;
    a.cap.put.align_mtu = 1;
    a.cap.put.max_iov = 1;
    a.cap.get.max_short = cfg.inline_rma;
    a.cap.get.max_bcopy = cfg.inline_rma;
    a.cap.get.min_zcopy = 0;
    a.cap.get.max_zcopy = usize::MAX;
    a.cap.get.opt_zcopy_align = 1;
    a.cap.get.align_mtu = 1;
    a.cap.get.max_iov = 1;
    a.device_addr_len = DEV_ADDR_LEN;
    a.iface_addr_len = IFACE_ADDR_LEN;
    a.ep_addr_len = 0;
    a.max_conn_priv = 0;
    a.latency = ucs_linear_func_t { c: cfg.latency, m: 0.0 };
    a.bandwidth = uct_ppn_bandwidth_t { dedicated: cfg.bandwidth, shared: 0.0 };
    a.overhead = cfg.overhead;
    a.priority = 0;
    UCS_OK
}

pub unsafe extern "C" fn get_device_address(iface: uct_iface_h, addr: *mut uct_device_addr_t) -> ucs_status_t {
    let me = &*(iface as *const Iface);
    std::ptr::copy_nonoverlapping(me.st.router_id.as_ptr(), addr as *mut u8, DEV_ADDR_LEN);
    UCS_OK
}

pub unsafe extern "C" fn get_address(iface: uct_iface_h, addr: *mut uct_iface_addr_t) -> ucs_status_t {
    let me = &*(iface as *const Iface);
    let b = me.st.listener.handle().to_bytes();
    std::ptr::copy_nonoverlapping(b.as_ptr(), addr as *mut u8, IFACE_ADDR_LEN);
    UCS_OK
}

pub unsafe extern "C" fn is_reachable(iface: uct_iface_h, dev: *const uct_device_addr_t, ia: *const uct_iface_addr_t) -> c_int {
    let me = &*(iface as *const Iface);
    if dev.is_null() {
        return 0;
    }
    let dev = std::slice::from_raw_parts(dev as *const u8, DEV_ADDR_LEN);
    let ia = (!ia.is_null()).then(|| std::slice::from_raw_parts(ia as *const u8, IFACE_ADDR_LEN));
    reachable(&me.st.router_id, dev, ia) as c_int
}

pub unsafe extern "C" fn iface_flush(iface: uct_iface_h, _flags: c_uint, comp: *mut uct_completion_t) -> ucs_status_t {
    if !comp.is_null() {
        return UCS_ERR_UNSUPPORTED;
    }
    let st = &(*(iface as *const Iface)).st;
    if st.eps.iter().any(|&e| (*e).has_outstanding()) {
        return UCS_INPROGRESS;
    }
    UCS_OK
}

/// `uct_iface_fence`: a fence on every endpoint (see [`ep::ep_fence`]).
pub unsafe extern "C" fn iface_fence(iface: uct_iface_h, flags: c_uint) -> ucs_status_t {
    for &e in (*(iface as *const Iface)).st.eps.iter() {
        ep::ep_fence(e as uct_ep_h, flags);
    }
    UCS_OK
}

/// Progress calls between two looks at the clock for a liveness round.
const LIVENESS_CALLS: u32 = 1024;
/// How often progress checks every peer's liveness lock.
const LIVENESS_EVERY: Duration = Duration::from_secs(1);

/// `uct_iface_event_fd_get`: the descriptor [`event_arm`] arms.
pub unsafe extern "C" fn event_fd_get(iface: uct_iface_h, fd_p: *mut c_int) -> ucs_status_t {
    *fd_p = (*(iface as *const Iface)).st.waiter.fd();
    UCS_OK
}

/// `uct_iface_event_arm`: `UCS_ERR_BUSY` if progress has work now, else
/// the descriptor becomes readable on the next event of any kind (a
/// message or a reply, room in a ring our sends wait for, a new
/// connection, a peer closing or dying), whatever `events` asks for: more
/// wake-ups than asked for are allowed, missing one is not. Nothing polls
/// meanwhile (see ffcore's `wake`).
pub unsafe extern "C" fn event_arm(iface: uct_iface_h, _events: c_uint) -> ucs_status_t {
    let me = iface as *mut Iface;
    let st = &mut (*me).st;
    // A late wake-up of an earlier arming must not clear this one's words.
    st.waiter.disarm();
    st.armed = false;
    st.waiter.drain();
    // Announce the sleep on every word first, then look for work.
    let words = arm_words(st);
    if has_work(st) {
        for w in &words {
            w.cancel();
        }
        return UCS_ERR_BUSY;
    }
    match st.waiter.arm(words) {
        Ok(()) => {
            st.armed = true;
            UCS_OK
        }
        Err(e) => {
            ff_error!("ff: cannot arm the event descriptor: {e}");
            UCS_ERR_IO_ERROR
        }
    }
}

/// Idle progress calls (a few microseconds of polling) between two yields
/// while a connection to another host is open.
const IDLE_YIELD: u32 = 32;
/// Idle time before a progress call that must not yield dozes: a stream's
/// next message is usually closer than this (dozing at once, on every
/// empty ring, cost 23 % of UCX over ff's 64 KiB `tag_bw` between hosts
/// on an unloaded machine, whose streams lose yields to busy router
/// threads too); a reply beside a busy loop usually is not.
const DOZE_AFTER: Duration = Duration::from_micros(20);

/// The progress callback UCP registers on the worker.
pub unsafe extern "C" fn iface_progress(iface: uct_iface_h) -> c_uint {
    let me = iface as *mut Iface;
    if (*me).st.in_progress {
        return 0; // re-entered from a callback: the outer call continues
    }
    (*me).st.in_progress = true;
    let mut count = 0u32;
    if (*me).st.armed {
        // Polling again: peers need not wake us.
        (*me).st.waiter.disarm();
        (*me).st.armed = false;
    }

    // New connections from peers: one atomic load while none are queued.
    loop {
        match (*me).st.listener.accept() {
            Ok(Some(conn)) if !fits(&conn, (*me).st.cfg.whole_replies()) => drop(conn), // the peer's endpoint sees it closed
            Ok(Some(conn)) => {
                ff_debug!("ff: iface {:p} accepted connection {}", me, conn.id());
                let words = conn.wake_words().inspect_err(|e| ff_warn!("ff: no wake-up for connection {}: {e}", conn.id())).ok();
                (*me).st.rx.push(Box::new(RxConn { conn, replies: VecDeque::new(), put_rx: None, sends: VecDeque::new(), held: None, refused: 0, dead: false, words }));
            }
            Ok(None) => break,
            Err(e) => {
                if !(*me).st.accept_failed {
                    ff_error!("ff: accepting connections failed: {e}");
                    (*me).st.accept_failed = true;
                }
                break;
            }
        }
    }

    let mut forwarded = false;
    let mut i = 0;
    while i < (*me).st.rx.len() {
        let rc: *mut RxConn = &mut *(&mut (*me).st.rx)[i];
        count += serve(me, rc);
        forwarded |= (*rc).conn.forwarded();
        if (*rc).dead {
            (*me).st.rx.swap_remove(i);
        } else {
            i += 1;
        }
    }

    // Liveness by lock, now and then: the router tells us when a peer
    // dies, unless the router itself is down or was the peer.
    (*me).st.live_calls += 1;
    if (*me).st.live_calls >= LIVENESS_CALLS {
        (*me).st.live_calls = 0;
        if (*me).st.live_at.elapsed() >= LIVENESS_EVERY {
            (*me).st.live_at = std::time::Instant::now();
            for &e in (*me).st.eps.iter() {
                (*e).conn.check_alive();
            }
            for rc in (*me).st.rx.iter_mut() {
                rc.conn.check_alive();
            }
        }
    }

    let mut i = 0;
    while i < (*me).st.eps.len() {
        let e = (&(*me).st.eps)[i];
        if (*e).needs_progress() {
            count += ep::progress(e);
        }
        if !(*e).destroyed {
            forwarded |= (*e).conn.forwarded();
            if (*e).failed_unreported() {
                count += 1;
                ep::report_failure(e);
            }
        }
        // A callback may have destroyed endpoints (they left `eps`).
        // (An explicit, short-lived reference: no other one to `eps` lives.)
        #[allow(clippy::needless_borrow)]
        let still = (&(*me).st.eps).get(i) == Some(&e);
        if still {
            i += 1;
        }
    }

    // UCX calls progress in a loop of its own and never yields. Across
    // hosts, the answer needs the routers' threads, which may be waiting
    // for this very core: without a yield now and then they would get it
    // only when the scheduler preempts us (milliseconds). Yield every
    // IDLE_YIELD idle calls, and at once when a router thread we wait for
    // polls from this core; where yields lose the core to a busy process,
    // doze instead (see `doze`). While a bulk transfer is under way and
    // there is nothing to move now, nap (see `nap_now`).
    if count == 0 && forwarded {
        (*me).st.idle += 1;
        if nap_now(me) {
            (*me).st.idle = 0;
            std::thread::sleep((*me).st.cfg.bulk_nap);
        } else if (*me).st.idle >= IDLE_YIELD || router_polls_here(me) {
            // Only the periodic yields are judged: one to a router thread
            // polling from this core lasts as long as its work for us.
            let judged = (*me).st.idle >= IDLE_YIELD;
            (*me).st.idle = 0;
            let now = std::time::Instant::now();
            let since = *(*me).st.idle_since.get_or_insert(now);
            let y = &mut (*me).st.yields;
            let dozes = if !y.may_yield() {
                // Poll on, without yielding, while a stream's next message
                // may be microseconds away; doze once that long passed.
                now.duration_since(since) >= DOZE_AFTER
            } else if judged {
                !y.yield_now()
            } else {
                std::thread::yield_now();
                false
            };
            if dozes {
                doze(me);
                (*me).st.yields.waited();
            }
        }
    } else {
        (*me).st.idle = 0;
        (*me).st.idle_since = None;
    }

    (*me).st.in_progress = false;
    for e in std::mem::take(&mut (*me).st.graveyard) {
        drop(Box::from_raw(e));
    }
    count
}

/// Sleeps until a peer or the router wakes one of our connections, a
/// peer connects, or `UCX_FF_DOZE` (1 ms) passes: an idle progress call
/// does that instead of yielding where yields lose the core to a busy
/// process (see ffcore's `polite`).
unsafe fn doze(me: *mut Iface) {
    let st = &mut (*me).st;
    let words = arm_words(st);
    if has_work(st) {
        for w in &words {
            w.cancel();
        }
        return;
    }
    // At most `doze` (UCX_FF_DOZE): what other transports of the worker
    // wait at most for their progress.
    if ffcore::wake::sleep_on(&words, st.cfg.doze).is_err() {
        // More connections than one futex_waitv takes: no sleep.
        std::thread::yield_now();
    }
}

/// Announces a sleep on the wake-up word of every connection and of the
/// listener, and returns the words: check for work after this, then sleep
/// on them or cancel each.
unsafe fn arm_words(st: &State) -> Vec<ffcore::wake::WakeWord> {
    let mut words = Vec::with_capacity(1 + st.rx.len() + st.eps.len());
    words.push(st.listener.wake_word());
    for rc in st.rx.iter() {
        if let Some(w) = &rc.words {
            words.push(w.arm());
        }
    }
    for &e in st.eps.iter() {
        if let Some(w) = &(*e).words {
            words.push(w.arm());
        }
    }
    words
}

/// Should this idle progress call nap? Only with naps configured, while a
/// bulk PUT or GET (at least [`BULK_MIN`] bytes) is under way on a
/// connection to another host, and when no connection has anything to do
/// now (see [`has_work`]): the data of the bulk transfer is then in the
/// routers' hands (our ring towards the router full, or the ring from it
/// empty), and polling would only take the core from the routers' threads
/// that move it. The router goes on filling or draining the 4 MiB rings
/// while we sleep (a nap of tens of microseconds lets a few hundred KiB
/// through: it does not stall the router), and the next progress call
/// moves what piled up in one go; a transfer's completion is seen up to
/// one nap later.
unsafe fn nap_now(me: *mut Iface) -> bool {
    let st = &mut (*me).st;
    if st.cfg.bulk_nap.is_zero() {
        return false;
    }
    let bulk = st.eps.iter().any(|&e| (*e).conn.forwarded() && (*e).bulk())
        || st.rx.iter().any(|rc| rc.conn.forwarded() && (rc.put_rx.is_some_and(|p| p.2) || rc.sends.iter().any(|s| s.1)));
    bulk && !has_work(st)
}

/// Would a progress call find something to do now: a connection to
/// accept, input or a closed peer on a connection, room for the replies
/// or sends that wait for it (what [`event_arm`] checks before sleeping).
unsafe fn has_work(st: &mut State) -> bool {
    let reply_room = 2 * (RmaReply::LEN + st.cfg.inline_rma + 128);
    st.listener.may_have_pending()
        || st.rx.iter_mut().any(|rc| rc.conn.has_events() || !rc.replies.is_empty() && rc.held.is_none() && rc.conn.tx_free() >= reply_room)
        || st.eps.iter().any(|&e| (*e).has_events())
}

/// Records the CPU this iface polls from in its forwarded connections;
/// true if a router thread serving one of them polls from it too.
unsafe fn router_polls_here(me: *mut Iface) -> bool {
    let cpu = ffcore::ring::current_cpu();
    let mut here = false;
    for rc in (*me).st.rx.iter() {
        if rc.conn.forwarded() {
            here |= rc.conn.peer_polls_on(cpu);
        }
    }
    for &e in (*me).st.eps.iter() {
        if (*e).conn.forwarded() {
            here |= (*e).conn.peer_polls_on(cpu);
        }
    }
    here
}

/// Serves one peer connection: its messages (up to the burst) and our
/// replies. Returns the number of messages handled.
unsafe fn serve(me: *mut Iface, rc: *mut RxConn) -> u32 {
    let mut count = 0;
    // GET data streaming back: completing the sends frees their slots.
    while let Some(&(r, bulk, _)) = (*rc).sends.front() {
        match (*rc).conn.test(r) {
            Ok(None) => {
                if (*rc).sends.front_mut().is_some_and(|s| s.2.due()) {
                    ff_warn!(
                        "ff: connection {} from a peer: the data of a GET ({}) has not left in {:?}; connection: {}",
                        (*rc).conn.id(),
                        if bulk { "bulk" } else { "small" },
                        crate::ep::STALL_WARN,
                        (*rc).conn.describe()
                    );
                }
                break;
            }
            Ok(Some(_)) => {
                (*rc).sends.pop_front();
            }
            Err(e) => {
                (*rc).sends.pop_front();
                ff_diag!("ff: reply data to a peer failed: {e}");
            }
        }
    }
    send_replies(me, rc);
    if let Some(seq) = (*rc).held.as_mut().and_then(|h| h.since.due().then_some(h.seq)) {
        ff_warn!(
            "ff: connection {} from a peer: GET {seq} held for {:?} with no GET_GO ({} replies wait behind it); connection: {}",
            (*rc).conn.id(),
            crate::ep::STALL_WARN,
            (*rc).replies.len(),
            (*rc).conn.describe()
        );
    }
    let burst = (*me).st.cfg.rx_burst;
    while count < burst {
        if let Some((req, seq, _)) = (*rc).put_rx {
            match (*rc).conn.test(req) {
                Ok(None) => break,
                Ok(Some(_)) => (*rc).replies.push_back(Reply::PutAck { seq, status: UCS_OK as i32 }),
                // Truncated: the discarded data of a refused PUT.
                Err(ffcore::Error::Truncated { .. }) => (*rc).replies.push_back(Reply::PutAck { seq, status: UCS_ERR_INVALID_ADDR as i32 }),
                Err(e) => {
                    ff_diag!("ff: receiving PUT data failed: {e}");
                    (*rc).dead = true;
                    return count;
                }
            }
            (*rc).put_rx = None;
            send_replies(me, rc);
        }
        let mut action = Action::None;
        // No reference to the whole state: `handle` borrows am_buf mutably.
        let md = &*(*me).st.md;
        let cfg = (*me).st.cfg;
        let base = std::ptr::addr_of!((*me).base);
        let am_buf = std::ptr::addr_of_mut!((*me).st.am_buf);
        let router_wrote = (*rc).conn.router_is_peer();
        let mut in_ring = false;
        let got = (*rc).conn.poll_whole(|tag, data, len| {
            action = handle(base, md, &cfg, &mut *am_buf, router_wrote, tag, data, len);
            if let Action::AmInRing { id, data, len } = action {
                // Before the record is released (the closure's return):
                // only the router writes this ring, and it does not touch
                // a record again until we have consumed it.
                deliver_am(base, id, data, len);
                action = Action::None;
                in_ring = true;
            }
        });
        if in_ring && !(*me).st.am_in_ring_seen {
            (*me).st.am_in_ring_seen = true;
            ff_info!("ff: iface {:p}: active messages from another host are read in place (connection {})", me, (*rc).conn.id());
        }
        match got {
            Ok(true) => count += 1,
            Ok(false) => break,
            Err(ffcore::Error::PeerClosed) => {
                ff_debug!("ff: peer closed connection {}", (*rc).conn.id());
                (*rc).dead = true;
                return count;
            }
            Err(e) => {
                ff_diag!("ff: connection {} from a peer failed: {e}", (*rc).conn.id());
                (*rc).dead = true;
                return count;
            }
        }
        if action.refused() {
            (*rc).refused += 1;
            if (*rc).refused >= MAX_REFUSED {
                ff_warn!(
                    "ff: closing connection {} from a peer: {} of its remote memory requests named memory this process did not register for it",
                    (*rc).conn.id(),
                    (*rc).refused
                );
                (*rc).dead = true;
                return count;
            }
        }
        match action {
            // AmInRing was delivered inside poll_whole.
            Action::None | Action::AmInRing { .. } => {}
            Action::Am { id, data, len } => {
                // The record has left the ring; UCP gets our copy. Nothing
                // reuses the buffer before the handler returns.
                deliver_am(base, id, data, len);
            }
            Action::Reply(r) => {
                if (*rc).replies.len() >= MAX_QUEUED_REPLIES {
                    ff_warn!("ff: closing connection {} from a peer: {MAX_QUEUED_REPLIES} replies wait for it to take them", (*rc).conn.id());
                    (*rc).dead = true;
                    return count;
                }
                (*rc).replies.push_back(r);
                send_replies(me, rc);
            }
            Action::PutStream { seq, ok, addr, len } => {
                // Valid: the data lands straight in the registered range.
                // Refused: a zero-byte receive fails with Truncated and
                // makes the connection drop the data.
                let (ptr, cap) = if ok { (addr as *mut u8, len as usize) } else { (std::ptr::NonNull::<u8>::dangling().as_ptr(), 0) };
                match (*rc).conn.irecv(ptr, cap, proto::tag(proto::PUT_DATA, 0)) {
                    Ok(r) => (*rc).put_rx = Some((r, seq, len as usize >= BULK_MIN)),
                    Err(e) => {
                        ff_diag!("ff: cannot receive PUT data: {e}");
                        (*rc).dead = true;
                        return count;
                    }
                }
            }
            Action::Go(seq) => match (*rc).held {
                Some(Held { seq: held, addr, len, .. }) if held == seq => {
                    (*rc).held = None;
                    if !send_get_data(rc, addr, len) {
                        return count;
                    }
                    send_replies(me, rc);
                }
                _ => {
                    ff_error!("ff: protocol error from a peer on connection {}: GET go for request {seq}, which is not held; dropping it", (*rc).conn.id());
                    (*rc).dead = true;
                    return count;
                }
            },
            Action::Bad(why) => {
                ff_error!("ff: protocol error from a peer on connection {}: {why}; dropping it", (*rc).conn.id());
                (*rc).dead = true;
                return count;
            }
        }
    }
    count
}

/// Hands an active message to UCP's handler `id`. The handler may send
/// (other connections) or re-enter progress (which returns at once); flags
/// 0: UCP copies what it keeps before it returns.
unsafe fn deliver_am(base: *const BaseIface, id: usize, data: *mut u8, len: usize) {
    let h = (*base).am[id];
    if let Some(cb) = h.cb {
        cb(h.arg, data as *mut c_void, len, 0);
    }
}

/// May UCP read an active message straight from the ring, without the copy
/// into the iface's AM buffer? Only where nobody but the router writes the
/// ring (`router_wrote`: the connection's peer is on another host and the
/// router plays its side, as the router's own reply said; a peer on this
/// host shares the ring and could change the bytes while UCP parses them)
/// and where the record's address honours the AM alignment UCP asked for
/// (`(data + offset) % align == 0`), else it is copied as on one host.
pub fn am_in_ring(router_wrote: bool, data: usize, align: usize, offset: usize) -> bool {
    router_wrote && (align <= 1 || (data.wrapping_add(offset)).is_multiple_of(align))
}

/// Handles one message while it is in the ring (`data`, `len`: the record,
/// which a peer on this host may still be writing). Reads it once: an AM is
/// copied whole into `am_buf` (handed to UCP after the record is released)
/// unless the router wrote it ([`am_in_ring`]), a PUT/GET header into a
/// private copy that is then checked and used.
#[allow(clippy::too_many_arguments)]
unsafe fn handle(base: *const BaseIface, md: &Md, cfg: &Cfg, am_buf: &mut AmBuf, router_wrote: bool, tag: u32, data: *const u8, len: usize) -> Action {
    let inline_max = cfg.inline_rma;
    match proto::kind(tag) {
        proto::AM => {
            let id = proto::am_id(tag) as usize;
            if id >= UCT_AM_ID_MAX as usize {
                return Action::Bad(format!("active message id {id} out of range"));
            }
            if (*base).am[id].cb.is_none() {
                return Action::None;
            }
            if am_in_ring(router_wrote, data as usize, cfg.am_align, cfg.am_align_offset) {
                return Action::AmInRing { id, data: data as *mut u8, len };
            }
            let p = am_buf.place(len);
            // SAFETY: the record is len readable bytes; place gave room for len.
            std::ptr::copy_nonoverlapping(data, p, len);
            Action::Am { id, data: p, len }
        }
        proto::PUT => {
            let Some(req) = proto::copy_header::<{ RmaReq::LEN }>(data, len).and_then(|h| RmaReq::read(&h)) else {
                return Action::Bad("short PUT header".into());
            };
            let ok = req.cookie == md.cookie && md.regs.lock().unwrap_or_else(|p| p.into_inner()).check(req.key, req.addr, req.len);
            if !ok {
                ff_diag!("ff: refused PUT of {} bytes at {:#x} (key {:#x}): not inside a registration of this process", req.len, req.addr, req.key);
            }
            // (The peer's length is compared first: the sum cannot overflow.)
            if req.len as usize <= inline_max && len == RmaReq::LEN + req.len as usize {
                if ok {
                    let _w = ffcore::shadow::writing();
                    // SAFETY: the destination passed the registration check
                    // (from the private header); the source is the record.
                    std::ptr::copy_nonoverlapping(data.add(RmaReq::LEN), req.addr as *mut u8, req.len as usize);
                }
                let status = if ok { UCS_OK } else { UCS_ERR_INVALID_ADDR };
                Action::Reply(Reply::PutAck { seq: req.seq, status: status as i32 })
            } else if len == RmaReq::LEN {
                Action::PutStream { seq: req.seq, ok, addr: req.addr, len: req.len }
            } else {
                Action::Bad(format!("PUT record of {len} bytes for {} bytes of data", req.len))
            }
        }
        proto::GET => {
            let Some(req) = proto::copy_header::<{ RmaReq::LEN }>(data, len).and_then(|h| RmaReq::read(&h)) else {
                return Action::Bad("short GET header".into());
            };
            let ok = req.cookie == md.cookie && md.regs.lock().unwrap_or_else(|p| p.into_inner()).check(req.key, req.addr, req.len);
            if !ok {
                ff_diag!("ff: refused GET of {} bytes at {:#x} (key {:#x}): not inside a registration of this process", req.len, req.addr, req.key);
            }
            let status = if ok { UCS_OK } else { UCS_ERR_INVALID_ADDR };
            let way = GetWay::from_id(proto::am_id(tag));
            Action::Reply(Reply::Get { seq: req.seq, status: status as i32, addr: req.addr, len: req.len, way })
        }
        proto::GET_GO => match proto::copy_header::<8>(data, len) {
            Some(h) if len == 8 => Action::Go(u64::from_le_bytes(h)),
            _ => Action::Bad(format!("GET go record of {len} bytes")),
        },
        proto::AMO => {
            let Some(req) = proto::copy_header::<{ AmoReq::LEN }>(data, len).and_then(|h| AmoReq::read(&h)) else {
                return Action::Bad("short atomic header".into());
            };
            let (Some(op), Some(width)) = (ffcore::AtomicOp::from_code(req.op), ffcore::Width::from_bytes(req.width as usize)) else {
                return Action::Bad(format!("atomic operation {} on {} bytes", req.op, req.width));
            };
            let ok = req.cookie == md.cookie
                && ffcore::atomic::aligned(req.addr, width)
                && md.regs.lock().unwrap_or_else(|p| p.into_inner()).check(req.key, req.addr, width.bytes() as u64);
            if !ok {
                ff_diag!("ff: refused atomic on {:#x} (key {:#x}): not an aligned word inside a registration of this process", req.addr, req.key);
                return Action::Reply(Reply::Amo { seq: req.seq, status: UCS_ERR_INVALID_ADDR as i32, old: 0 });
            }
            // SAFETY: an aligned word inside memory this process registered
            // (checked from the private header): one CPU atomic on it.
            let old = ffcore::atomic::apply(req.addr as *mut u8, width, op, req.value, req.compare);
            Action::Reply(Reply::Amo { seq: req.seq, status: UCS_OK as i32, old })
        }
        k => Action::Bad(format!("unexpected message kind {k} on an accepted connection")),
    }
}

/// Sends a GET's data as its own message, straight from the registered
/// range (the initiator keeps the range's owner waiting until it has
/// arrived); false if the connection failed.
unsafe fn send_get_data(rc: *mut RxConn, addr: u64, len: u64) -> bool {
    match (*rc).conn.isend(addr as *const u8, len as usize, proto::tag(proto::GET_DATA, 0)) {
        Ok(req) => {
            (*rc).sends.push_back((req, len as usize >= BULK_MIN, Stall::new()));
            true
        }
        Err(e) => {
            ff_diag!("ff: cannot send GET data: {e}");
            (*rc).dead = true;
            false
        }
    }
}

/// Sends queued replies in order while the ring back has room (none while
/// a held GET waits for its GET_GO).
unsafe fn send_replies(me: *mut Iface, rc: *mut RxConn) {
    let inline_max = (*me).st.cfg.inline_rma;
    while let Some(r) = (*rc).replies.front().filter(|_| (*rc).held.is_none()) {
        let res = match *r {
            Reply::PutAck { seq, status } => (*rc).conn.try_send_with(proto::tag(proto::PUT_ACK, 0), RmaReply::LEN, |p| {
                RmaReply { seq, status, len: 0 }.write(std::slice::from_raw_parts_mut(p, RmaReply::LEN));
                RmaReply::LEN
            }),
            Reply::Amo { seq, status, old } => (*rc).conn.try_send_with(proto::tag(proto::AMO_REPLY, 0), AmoReply::LEN, |p| {
                AmoReply { seq, status, old }.write(std::slice::from_raw_parts_mut(p, AmoReply::LEN));
                AmoReply::LEN
            }),
            // The initiator's receive is posted: the data alone, now; or,
            // refused, an empty message in its place (proto::POSTED).
            Reply::Get { status, addr, len, way: GetWay::Posted, .. } if status == UCS_OK as i32 => {
                if !send_get_data(rc, addr, len) {
                    return;
                }
                Ok(Some(0))
            }
            Reply::Get { way: GetWay::Posted, .. } => (*rc).conn.try_send_with(proto::tag(proto::GET_DATA, 0), 0, |_| 0),
            Reply::Get { seq, status, addr, len, way } => {
                let inline = status == UCS_OK as i32 && len as usize <= inline_max;
                let max = RmaReply::LEN + if inline { len as usize } else { 0 };
                let res = (*rc).conn.try_send_with(proto::tag(proto::GET_REPLY, 0), max, |p| {
                    RmaReply { seq, status, len }.write(std::slice::from_raw_parts_mut(p, RmaReply::LEN));
                    if inline {
                        // SAFETY: the range passed the registration check.
                        std::ptr::copy_nonoverlapping(addr as *const u8, p.add(RmaReply::LEN), len as usize);
                    }
                    max
                });
                if matches!(res, Ok(Some(_))) && status == UCS_OK as i32 && !inline {
                    if way == GetWay::Hold {
                        (*rc).held = Some(Held { seq, addr, len, since: Stall::new() });
                    } else if !send_get_data(rc, addr, len) {
                        return;
                    }
                }
                res
            }
        };
        match res {
            Ok(Some(_)) => {
                (*rc).replies.pop_front();
            }
            Ok(None) => return,
            Err(e) => {
                ff_diag!("ff: cannot reply to a peer: {e}");
                (*rc).dead = true;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{am_in_ring, AmBuf};

    #[test]
    fn active_messages_stay_in_the_ring_only_where_the_router_wrote_them() {
        // A peer on this host shares the ring: always copied.
        for (data, align, offset) in [(0x1000usize, 1usize, 0usize), (0x1008, 8, 0), (0x1003, 1, 5)] {
            assert!(!am_in_ring(false, data, align, offset));
        }
        // The router plays the peer's side: in place when aligned.
        assert!(am_in_ring(true, 0x1003, 1, 0), "no alignment asked");
        assert!(am_in_ring(true, 0x1003, 0, 0), "alignment 0 means none");
        assert!(am_in_ring(true, 0x1040, 64, 0));
        assert!(am_in_ring(true, 0x1038, 64, 8), "data + offset aligned");
        assert!(!am_in_ring(true, 0x1008, 64, 0), "misaligned: copied");
        assert!(!am_in_ring(true, 0x1040, 64, 8), "offset makes it misaligned");
    }

    #[test]
    fn am_buf_alignment_and_reuse() {
        for (align, offset) in [(1usize, 0usize), (8, 0), (8, 3), (256, 8), (4096, 100)] {
            let mut b = AmBuf::new(128 << 10, align, offset);
            let cap = b.capacity();
            let p = b.place(1000);
            assert_eq!((p as usize + offset) % align, 0, "align {align} offset {offset}");
            if align == 1 {
                assert_eq!(p as usize % 64, 0, "64-byte aligned without a request");
            }
            // Up to the size it was made for: the same memory, no allocation.
            for len in [0, 1, 64, 128 << 10] {
                assert_eq!(b.place(len), p);
                assert_eq!(b.capacity(), cap);
            }
            // The room is really there (writes stay inside the buffer).
            // SAFETY: place(128 KiB) gave room for 128 KiB at p.
            unsafe { std::ptr::write_bytes(b.place(128 << 10), 0x5a, 128 << 10) };
            // Larger: grows once, to a power of two, keeps the alignment.
            let q = b.place(300 << 10);
            assert_eq!((q as usize + offset) % align, 0);
            assert!(b.capacity() >= (300 << 10) + align && b.capacity().is_power_of_two());
            let cap2 = b.capacity();
            assert_eq!(b.place(299 << 10), q);
            assert_eq!(b.capacity(), cap2);
        }
    }
}
