//! Configuration through UCX's own parser: tables registered with the
//! component (memory domain, prefix `FF_`) and the transport (prefix `FF_`),
//! so `UCX_FF_*` variables are read by UCX and listed by `ucx_info -c`.
use crate::internal::*;
use crate::sys::*;
use std::mem::offset_of;
use std::os::raw::{c_char, c_uint, c_void};
use std::ptr::null;

/// Memory domain configuration (`struct uct_md_config` + ours).
#[repr(C)]
pub struct MdConfig {
    pub super_: u8,
    pub router_socket: *mut c_char,
    pub shadow: std::os::raw::c_int,
    pub shadow_move: std::os::raw::c_int,
    pub rcache: std::os::raw::c_int,
    pub rkey_ptr: std::os::raw::c_int,
    pub heap: usize,
    pub heap_max: usize,
}

/// Transport configuration (`struct uct_iface_config` + ours).
#[repr(C)]
pub struct IfaceConfig {
    pub super_: UctIfaceConfig,
    pub seg_size: usize,
    pub short_size: usize,
    pub inline_rma: usize,
    pub rx_burst: c_uint,
    pub latency: f64,
    pub bandwidth: f64,
    pub overhead: f64,
    pub connect_timeout: f64,
    pub bulk_nap: f64,
    pub doze: f64,
}

const fn parser(
    read: unsafe extern "C" fn(*const c_char, *mut c_void, *const c_void) -> i32,
    write: unsafe extern "C" fn(*mut c_char, usize, *const c_void, *const c_void) -> i32,
    clone: unsafe extern "C" fn(*const c_void, *mut c_void, *const c_void) -> ucs_status_t,
    release: unsafe extern "C" fn(*mut c_void, *const c_void),
    arg: *const c_char,
) -> ucs_config_parser_t {
    ucs_config_parser_t {
        read: Some(read),
        write: Some(write),
        clone: Some(clone),
        release: Some(release),
        help: Some(ucs_config_help_generic),
        arg: arg as *const c_void,
    }
}

const STRING: ucs_config_parser_t = parser(
    ucs_config_sscanf_string,
    ucs_config_sprintf_string,
    ucs_config_clone_string,
    ucs_config_release_string,
    c"string".as_ptr(),
);
const MEMUNITS: ucs_config_parser_t = parser(
    ucs_config_sscanf_memunits,
    ucs_config_sprintf_memunits,
    ucs_config_clone_ulong,
    ucs_config_release_nop,
    c"memory units: <number>[b|kb|mb|gb]".as_ptr(),
);
const BOOL: ucs_config_parser_t =
    parser(ucs_config_sscanf_bool, ucs_config_sprintf_bool, ucs_config_clone_int, ucs_config_release_nop, c"<y|n>".as_ptr());
const UINT: ucs_config_parser_t =
    parser(ucs_config_sscanf_uint, ucs_config_sprintf_uint, ucs_config_clone_uint, ucs_config_release_nop, c"unsigned integer".as_ptr());
const TIME: ucs_config_parser_t = parser(
    ucs_config_sscanf_time,
    ucs_config_sprintf_time,
    ucs_config_clone_double,
    ucs_config_release_nop,
    c"time value: <number>[s|us|ms|ns]".as_ptr(),
);
const BW: ucs_config_parser_t = parser(
    ucs_config_sscanf_bw,
    ucs_config_sprintf_bw,
    ucs_config_clone_double,
    ucs_config_release_nop,
    c"bandwidth value: <number>[T|G|M|K]B|b[[p|/]s]".as_ptr(),
);

const fn table(t: *const ucs_config_field_t) -> ucs_config_parser_t {
    ucs_config_parser_t {
        read: Some(ucs_config_sscanf_table),
        write: None,
        clone: Some(ucs_config_clone_table),
        release: Some(ucs_config_release_table),
        help: Some(ucs_config_help_table),
        arg: t as *const c_void,
    }
}

const fn field(name: &'static std::ffi::CStr, dfl: &'static std::ffi::CStr, doc: &'static std::ffi::CStr, offset: usize, parser: ucs_config_parser_t) -> ucs_config_field_t {
    ucs_config_field_t { name: name.as_ptr(), dfl_value: dfl.as_ptr(), doc: doc.as_ptr(), offset, parser }
}

const END: ucs_config_field_t = ucs_config_field_t {
    name: null(),
    dfl_value: null(),
    doc: null(),
    offset: 0,
    parser: ucs_config_parser_t { read: None, write: None, clone: None, release: None, help: None, arg: null() },
};

pub static mut MD_CONFIG_TABLE: [ucs_config_field_t; 9] = [
    field(c"", c"", c"", offset_of!(MdConfig, super_), table(std::ptr::addr_of!(uct_md_config_table) as *const _)),
    field(
        c"ROUTER_SOCKET",
        c"",
        c"Path of the FreeFlow router's Unix socket. Empty: $FF_ROUTER_SOCKET, or\n/run/freeflow/ffrouter.sock (what tools/ffcontainer mounts).",
        offset_of!(MdConfig, router_socket),
        STRING,
    ),
    field(
        c"SHADOW",
        c"y",
        c"Memory UCX allocates through this domain (UCP's own buffers) is shadow memory,\nshared with the router, and so is any registration inside it: peers on this\nhost copy straight between buffers (one copy). n: registration only records\nthe range, and every PUT and GET goes through the connection (two copies).",
        offset_of!(MdConfig, shadow),
        BOOL,
    ),
    field(
        c"SHADOW_MOVE",
        c"n",
        c"Also move the whole pages of other registered memory (the application's) onto\nshadow memory, in place. Only for applications that never free, reuse or\nwrite memory around a registered buffer from other threads while UCX\nregisters or deregisters it: UCX's registration cache merges ranges, and\nwrites other threads make to moving pages are lost (heap corruption, seen\nwith TensorFlow). Never for memory a driver pinned (cudaHostRegister).",
        offset_of!(MdConfig, shadow_move),
        BOOL,
    ),
    field(
        c"RCACHE",
        c"y",
        c"Keep registrations in a registration cache until the memory is unmapped (as\nUCX's IB domain does): UCP registers rendezvous buffers for every message.\nn: every registration is made, and undone, when UCP asks.",
        offset_of!(MdConfig, rcache),
        BOOL,
    ),
    field(
        c"RKEY_PTR",
        c"n",
        c"Advertise UCT_MD_FLAG_RKEY_PTR, so that UCP's rendezvous reads a peer's buffer\nstraight through its mapping (uct_rkey_ptr works either way, e.g. for\nucp_rkey_ptr). UCP 1.13 then uses it for every peer this domain reaches and\nfails the receive when it cannot map the sender's buffer (a peer on another\nhost, the partial pages of a buffer that is not page aligned): say y only\nwhere all peers are on this host and rendezvous buffers are page aligned.",
        offset_of!(MdConfig, rkey_ptr),
        BOOL,
    ),
    field(
        c"HEAP",
        c"1m",
        c"Heap allocations (malloc, calloc, realloc, posix_memalign, ...) of at least\nthis size, made after this domain attached to a router, are shadow memory of\ntheir own: PUT, GET and sends from and into them take the one-copy path on a\nhost and go buffer to wire between hosts, with nothing moved. A child forked\nafterwards gets private copies. inf: glibc serves every allocation.",
        offset_of!(MdConfig, heap),
        MEMUNITS,
    ),
    field(
        c"HEAP_MAX",
        c"16g",
        c"Most bytes of such allocations (live, plus up to 8 freed ones, 256 MiB,\nkept for reuse) per process; beyond it glibc serves them.",
        offset_of!(MdConfig, heap_max),
        MEMUNITS,
    ),
    END,
];

pub static mut IFACE_CONFIG_TABLE: [ucs_config_field_t; 12] = [
    field(c"", c"", c"", offset_of!(IfaceConfig, super_), table(std::ptr::addr_of!(uct_iface_config_table) as *const _)),
    field(
        c"SEG_SIZE",
        c"128k",
        c"Largest active message sent by copy (am_bcopy): packed straight into the\nconnection's shared ring, so it must fit a quarter of the ring.",
        offset_of!(IfaceConfig, seg_size),
        MEMUNITS,
    ),
    field(c"SHORT_SIZE", c"2k", c"Largest short active message (am_short), header included.", offset_of!(IfaceConfig, short_size), MEMUNITS),
    field(
        c"INLINE_RMA",
        c"8k",
        c"PUT and GET of at most this many bytes carry their data inside the request\n(or reply) record; larger ones stream it as a separate message.",
        offset_of!(IfaceConfig, inline_rma),
        MEMUNITS,
    ),
    field(
        c"RX_BURST",
        c"32",
        c"Most messages taken from one connection per progress call.",
        offset_of!(IfaceConfig, rx_burst),
        UINT,
    ),
    field(c"LATENCY", c"100ns", c"Latency the transport reports to UCP (lane selection, thresholds).", offset_of!(IfaceConfig, latency), TIME),
    field(c"BANDWIDTH", c"12000MBs", c"Bandwidth the transport reports to UCP.", offset_of!(IfaceConfig, bandwidth), BW),
    field(c"OVERHEAD", c"40ns", c"Per-message CPU overhead the transport reports to UCP.", offset_of!(IfaceConfig, overhead), TIME),
    field(
        c"CONNECT_TIMEOUT",
        c"10s",
        c"How long endpoint creation retries a router that is not ready before it fails.",
        offset_of!(IfaceConfig, connect_timeout),
        TIME,
    ),
    field(
        c"BULK_NAP",
        c"50us",
        c"While a PUT or GET of at least 256 KiB to or from another host is under way\nand progress finds nothing to move (the ring from the router empty, or the\nring to it full), sleep this long instead of polling, so that the routers'\nthreads get the core (the router keeps filling or draining the ring\nmeanwhile). 0: always poll.",
        offset_of!(IfaceConfig, bulk_nap),
        TIME,
    ),
    field(
        c"DOZE",
        c"1ms",
        c"Once yields lose the core to a busy process (three in a row over 200us),\nan idle progress call with a connection to another host open sleeps on its\nconnections for at most this long instead of yielding (see docs/many-hosts.md,\n\"Nobody yields to a busy process\"). 0: always yield, as on dedicated cores.",
        offset_of!(IfaceConfig, doze),
        TIME,
    ),
    END,
];

/// Whether allocations and registrations inside them are shadow memory
/// (`UCX_FF_SHADOW`, default y).
///
/// # Safety
/// As for [`router_socket`].
pub unsafe fn shadow(config: *const uct_md_config_t) -> bool {
    let c = config as *const MdConfig;
    c.is_null() || (*c).shadow != 0
}

/// Whether other registered memory is moved onto shadow memory too
/// (`UCX_FF_SHADOW_MOVE`, default n).
///
/// # Safety
/// As for [`router_socket`].
pub unsafe fn shadow_move(config: *const uct_md_config_t) -> bool {
    let c = config as *const MdConfig;
    !c.is_null() && (*c).shadow != 0 && (*c).shadow_move != 0
}

/// Whether registrations go through a registration cache (`UCX_FF_RCACHE`).
///
/// # Safety
/// As for [`router_socket`].
pub unsafe fn rcache(config: *const uct_md_config_t) -> bool {
    let c = config as *const MdConfig;
    c.is_null() || (*c).rcache != 0
}

/// Whether the domain advertises `UCT_MD_FLAG_RKEY_PTR` (`UCX_FF_RKEY_PTR`,
/// default n).
///
/// # Safety
/// As for [`router_socket`].
pub unsafe fn rkey_ptr(config: *const uct_md_config_t) -> bool {
    let c = config as *const MdConfig;
    !c.is_null() && (*c).rkey_ptr != 0
}

/// The heap's threshold and cap (`UCX_FF_HEAP`, `UCX_FF_HEAP_MAX`), None
/// if off (`inf` or 0, or shadow memory off).
///
/// # Safety
/// As for [`router_socket`].
pub unsafe fn heap(config: *const uct_md_config_t) -> Option<(usize, usize)> {
    let c = config as *const MdConfig;
    if c.is_null() || (*c).shadow == 0 || (*c).heap == 0 || (*c).heap >= usize::MAX - 1 {
        return None;
    }
    Some(((*c).heap, (*c).heap_max))
}

/// The configuration of a memory domain, as UCX parsed it.
///
/// # Safety
/// `config` must point to an `MdConfig` bundle UCX filled from our table.
pub unsafe fn router_socket(config: *const uct_md_config_t) -> Option<String> {
    let c = config as *const MdConfig;
    if c.is_null() || (*c).router_socket.is_null() {
        return None;
    }
    let s = std::ffi::CStr::from_ptr((*c).router_socket).to_string_lossy().into_owned();
    (!s.is_empty()).then_some(s)
}
