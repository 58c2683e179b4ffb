//! The ff transport through UCX's own UCT API, in one process with ifaces
//! on a real router: the semantics UCX enforces on transports (pending
//! queue and NO_RESOURCE, no pack callback on a failing bcopy, AM id checks,
//! mem_dereg parameter checks), PUT/GET zero-copy with packed remote keys,
//! refused remote keys (error completion, memory untouched), and what a
//! hostile peer meets: keys it cannot derive from the one it holds, a
//! connection cut after repeated refusals, active messages that reach UCP
//! from private memory only.
//!
//! Needs a built ffrouter (cargo build --workspace). The tests here run one
//! at a time (LOCK): each has its own router, but UCX is one per process.

use std::ffi::{c_void, CStr, CString};
use std::os::raw::c_uint;
use std::ptr::{null, null_mut};
use std::sync::Mutex;
use uct_ff::internal::*;
use uct_ff::proto::PackedRkey;
use uct_ff::sys::*;

static LOCK: Mutex<()> = Mutex::new(());

fn ok(s: ucs_status_t, what: &str) {
    assert_eq!(s, UCS_OK, "{what}: status {s}");
}

struct Recv {
    msgs: Vec<(u64, Vec<u8>)>,
}

unsafe extern "C" fn on_am(arg: *mut c_void, data: *mut c_void, len: usize, flags: c_uint) -> ucs_status_t {
    assert_eq!(flags, 0, "data is handed over in place, not as a descriptor");
    let r = &mut *(arg as *mut Recv);
    let b = std::slice::from_raw_parts(data as *const u8, len);
    let hdr = u64::from_le_bytes(b[..8].try_into().unwrap());
    r.msgs.push((hdr, b[8..].to_vec()));
    UCS_OK
}

struct Pack {
    called: bool,
    hdr: u64,
    len: usize,
}

unsafe extern "C" fn pack(dest: *mut c_void, arg: *mut c_void) -> usize {
    let p = &mut *(arg as *mut Pack);
    p.called = true;
    let d = dest as *mut u8;
    (d as *mut u64).write_unaligned(p.hdr);
    std::ptr::write_bytes(d.add(8), 0xab, p.len - 8);
    p.len
}

#[repr(C)]
struct Comp {
    c: uct_completion_t,
    done: u32,
}

unsafe extern "C" fn on_comp(c: *mut uct_completion_t) {
    (*(c as *mut Comp)).done += 1;
}

fn new_comp() -> Box<Comp> {
    Box::new(Comp { c: uct_completion_t { func: Some(on_comp), count: 1, status: UCS_OK }, done: 0 })
}

#[repr(C)]
struct Pend {
    req: uct_pending_req_t,
    ep: uct_ep_h,
    calls: u32,
    result: ucs_status_t,
}

unsafe extern "C" fn on_pending(r: *mut uct_pending_req_t) -> ucs_status_t {
    let p = &mut *(r as *mut Pend);
    p.calls += 1;
    // The dispatcher may send even though its own request is still queued.
    let s = ops(p.ep).ep_am_short.unwrap()(p.ep, 5, 777, null(), 0);
    p.result = s;
    if s == UCS_OK {
        UCS_OK
    } else {
        UCS_ERR_NO_RESOURCE
    }
}

unsafe fn ops(ep: uct_ep_h) -> &'static uct_iface_ops_t {
    &(*(*ep).iface).ops
}

unsafe fn iops(i: uct_iface_h) -> &'static uct_iface_ops_t {
    &(*i).ops
}

/// A router, the ff component, a memory domain on the router, a worker,
/// and the iface configuration (`SEG_SIZE` 256k).
struct Uct {
    /// The router it started (None: it uses another's, see [`Uct::open_at`]).
    _router: Option<fftestkit::RouterProc>,
    comps: *mut uct_component_h,
    comp: uct_component_h,
    md: uct_md_h,
    asy: *mut ucs_async_context_t,
    worker: uct_worker_h,
    ic: *mut uct_iface_config_t,
    params: uct_iface_params_t,
}

impl Uct {
    unsafe fn open() -> Uct {
        Self::open_with(&[])
    }

    /// With these memory domain settings (`UCX_FF_<name>`).
    unsafe fn open_with(md_opts: &[(&CStr, &CStr)]) -> Uct {
        let router = fftestkit::RouterProc::start(&["a"], &[]);
        let mut u = Self::open_at(&router.socket("a"), md_opts);
        u._router = Some(router);
        u
    }

    /// On the router whose tenant socket is `socket`.
    unsafe fn open_at(socket: &std::path::Path, md_opts: &[(&CStr, &CStr)]) -> Uct {
        let sock = CString::new(socket.to_str().unwrap()).unwrap();
        uct_ff::register().expect("register the ff component");
        // Component, memory domain (router socket via UCX's config: the
        // ROUTER_SOCKET field of our table), transport resources.
        let mut comps: *mut uct_component_h = null_mut();
        let mut n: c_uint = 0;
        ok(uct_query_components(&mut comps, &mut n), "query components");
        let comps_s = std::slice::from_raw_parts(comps, n as usize);
        let comp = *comps_s
            .iter()
            .find(|&&c| CStr::from_ptr((*(c as *mut UctComponent)).name.as_ptr()).to_str() == Ok("ff"))
            .expect("component ff registered");
        let mut mdc: *mut uct_md_config_t = null_mut();
        ok(uct_md_config_read(comp, null(), null(), &mut mdc), "md config");
        ok(uct_config_modify(mdc as *mut c_void, c"ROUTER_SOCKET".as_ptr(), sock.as_ptr()), "UCX_FF_ROUTER_SOCKET");
        // These tests choose each buffer's kind (private heap blocks,
        // domain allocations, moved pages): the heap's own regions
        // (UCX_FF_HEAP; this binary links the transport, malloc included)
        // are tested in tests/heap.rs, and stay off here unless asked for.
        let heap_off = [(c"HEAP", c"inf")];
        for (k, v) in heap_off.iter().filter(|_| !md_opts.iter().any(|(k, _)| k.to_bytes() == b"HEAP")).chain(md_opts) {
            ok(uct_config_modify(mdc as *mut c_void, k.as_ptr(), v.as_ptr()), "md setting");
        }
        let mut md: uct_md_h = null_mut();
        ok(uct_md_open(comp, c"ff".as_ptr(), mdc, &mut md), "md open");
        uct_config_release(mdc as *mut c_void);
        let mut rsc: *mut uct_tl_resource_desc_t = null_mut();
        ok(uct_md_query_tl_resources(md, &mut rsc, &mut n), "tl resources");
        assert_eq!(n, 1);
        assert_eq!(CStr::from_ptr((*rsc).tl_name.as_ptr()).to_str(), Ok("ff"));
        assert_eq!(CStr::from_ptr((*rsc).dev_name.as_ptr()).to_str(), Ok("router"));
        uct_release_tl_resource_list(rsc);

        let mut asy: *mut ucs_async_context_t = null_mut();
        ok(ucs_async_context_create(UCS_ASYNC_MODE_THREAD_SPINLOCK, &mut asy), "async");
        let mut worker: uct_worker_h = null_mut();
        ok(uct_worker_create(asy, UCS_THREAD_MODE_SINGLE, &mut worker), "worker");
        let mut ic: *mut uct_iface_config_t = null_mut();
        ok(uct_md_iface_config_read(md, c"ff".as_ptr(), null(), null(), &mut ic), "iface config");
        // A smaller segment, so a few messages fill the 4 MiB ring.
        ok(uct_config_modify(ic as *mut c_void, c"SEG_SIZE".as_ptr(), c"256k".as_ptr()), "UCX_FF_SEG_SIZE");
        let mut params: uct_iface_params_t = std::mem::zeroed();
        params.field_mask = (UCT_IFACE_PARAM_FIELD_OPEN_MODE | UCT_IFACE_PARAM_FIELD_DEVICE) as u64;
        params.open_mode = UCT_IFACE_OPEN_MODE_DEVICE as u64;
        params.mode.device.tl_name = c"ff".as_ptr();
        params.mode.device.dev_name = c"router".as_ptr();
        Uct { _router: None, comps, comp, md, asy, worker, ic, params }
    }

    /// An iface; `align`: its AM alignment and offset.
    unsafe fn iface(&self, align: Option<(usize, usize)>) -> uct_iface_h {
        let mut p = self.params;
        if let Some((a, o)) = align {
            p.field_mask |= (UCT_IFACE_PARAM_FIELD_AM_ALIGNMENT | UCT_IFACE_PARAM_FIELD_AM_ALIGN_OFFSET) as u64;
            p.am_alignment = a;
            p.am_align_offset = o;
        }
        let mut i: uct_iface_h = null_mut();
        ok(uct_iface_open(self.md, self.worker, &p, self.ic, &mut i), "iface open");
        i
    }

    /// `to`'s device and iface addresses.
    unsafe fn addr(&self, to: uct_iface_h) -> (Vec<u8>, Vec<u8>) {
        let mut attr: uct_iface_attr_t = std::mem::zeroed();
        ok(iops(to).iface_query.unwrap()(to, &mut attr), "query");
        let mut dev = vec![0u8; attr.device_addr_len];
        let mut ia = vec![0u8; attr.iface_addr_len];
        ok(iops(to).iface_get_device_address.unwrap()(to, dev.as_mut_ptr() as *mut _), "dev addr");
        ok(iops(to).iface_get_address.unwrap()(to, ia.as_mut_ptr() as *mut _), "iface addr");
        (dev, ia)
    }

    /// An endpoint of `from` connected to `to`.
    unsafe fn connect(&self, from: uct_iface_h, to: uct_iface_h) -> uct_ep_h {
        let (dev, ia) = self.addr(to);
        let mut ep_params: uct_ep_params_t = std::mem::zeroed();
        ep_params.field_mask = (UCT_EP_PARAM_FIELD_IFACE | UCT_EP_PARAM_FIELD_DEV_ADDR | UCT_EP_PARAM_FIELD_IFACE_ADDR) as u64;
        ep_params.iface = from;
        ep_params.dev_addr = dev.as_ptr() as *const _;
        ep_params.iface_addr = ia.as_ptr() as *const _;
        let mut ep: uct_ep_h = null_mut();
        ok(uct_ep_create(&ep_params, &mut ep), "ep create");
        ep
    }

    /// Two ifaces, an endpoint from the first to the second, and the world
    /// that progresses both.
    unsafe fn pair(&self) -> (uct_iface_h, uct_iface_h, uct_ep_h, World) {
        let (a, b) = (self.iface(None), self.iface(None));
        let ep = self.connect(a, b);
        (a, b, ep, World { comp: self.comp, ifaces: vec![a, b], ep })
    }

    /// The packed size of this domain's remote keys, as UCX learns it.
    unsafe fn rkey_packed_size(&self) -> usize {
        let mut a: uct_md_attr_t = std::mem::zeroed();
        ok(uct_md_query(self.md, &mut a), "md query");
        a.rkey_packed_size
    }

    /// Registers `buf`: its handle and packed remote key.
    unsafe fn reg(&self, buf: &mut [u8]) -> (uct_mem_h, Vec<u8>) {
        let mut memh: uct_mem_h = null_mut();
        ok(uct_md_mem_reg(self.md, buf.as_mut_ptr() as *mut c_void, buf.len(), UCT_MD_MEM_ACCESS_ALL as c_uint, &mut memh), "mem_reg");
        let mut packed = vec![0u8; self.rkey_packed_size()];
        ok(uct_md_mkey_pack(self.md, memh, packed.as_mut_ptr() as *mut c_void), "mkey_pack");
        (memh, packed)
    }

    unsafe fn close(self, eps: &[uct_ep_h], ifaces: &[uct_iface_h]) {
        for &ep in eps {
            uct_ep_destroy(ep);
        }
        for &i in ifaces {
            uct_iface_close(i);
        }
        uct_config_release(self.ic as *mut c_void);
        uct_worker_destroy(self.worker);
        ucs_async_context_destroy(self.asy);
        uct_md_close(self.md);
        uct_release_component_list(self.comps);
    }
}

/// Ifaces to progress, and the endpoint PUTs and GETs go through.
#[derive(Clone)]
struct World {
    comp: uct_component_h,
    ifaces: Vec<uct_iface_h>,
    ep: uct_ep_h,
}

impl World {
    unsafe fn progress(&self) {
        for &i in &self.ifaces {
            iops(i).iface_progress.unwrap()(i);
        }
    }
    /// The same ifaces, another endpoint.
    fn on(&self, ep: uct_ep_h) -> World {
        World { ep, ..self.clone() }
    }
    unsafe fn until(&self, mut done: impl FnMut() -> bool, what: &str) {
        let start = std::time::Instant::now();
        while !done() {
            self.progress();
            assert!(start.elapsed().as_secs() < 20, "timed out: {what}");
        }
    }
    unsafe fn rkey(&self, packed: &[u8]) -> uct_rkey_bundle_t {
        let mut b: uct_rkey_bundle_t = std::mem::zeroed();
        ok(uct_rkey_unpack(self.comp, packed.as_ptr() as *const c_void, &mut b), "rkey_unpack");
        b
    }
    unsafe fn put(&self, src: &[u8], addr: u64, rkey: uct_rkey_t) -> ucs_status_t {
        let iov = uct_iov_t { buffer: src.as_ptr() as *mut c_void, length: src.len(), memh: null_mut(), stride: 0, count: 1 };
        let mut c = new_comp();
        let s = ops(self.ep).ep_put_zcopy.unwrap()(self.ep, &iov, 1, addr, rkey, &mut c.c);
        if s != UCS_INPROGRESS {
            return s;
        }
        let cp: *const Comp = &*c;
        self.until(|| (*cp).done == 1, "put completion");
        c.c.status
    }
    /// A PUT (or GET) as issued: its immediate status, and the completion.
    unsafe fn start(&self, get: bool, buf: &mut [u8], addr: u64, rkey: uct_rkey_t) -> (ucs_status_t, Box<Comp>) {
        let iov = uct_iov_t { buffer: buf.as_mut_ptr() as *mut c_void, length: buf.len(), memh: null_mut(), stride: 0, count: 1 };
        let mut c = new_comp();
        let f = if get { ops(self.ep).ep_get_zcopy.unwrap() } else { ops(self.ep).ep_put_zcopy.unwrap() };
        (f(self.ep, &iov, 1, addr, rkey, &mut c.c), c)
    }
    unsafe fn get(&self, dst: &mut [u8], addr: u64, rkey: uct_rkey_t) -> ucs_status_t {
        let iov = uct_iov_t { buffer: dst.as_mut_ptr() as *mut c_void, length: dst.len(), memh: null_mut(), stride: 0, count: 1 };
        let mut c = new_comp();
        let s = ops(self.ep).ep_get_zcopy.unwrap()(self.ep, &iov, 1, addr, rkey, &mut c.c);
        if s != UCS_INPROGRESS {
            return s;
        }
        let cp: *const Comp = &*c;
        self.until(|| (*cp).done == 1, "get completion");
        c.c.status
    }
}

#[test]
fn uct_semantics_over_a_router() {
    let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    unsafe {
        // Without the registration cache, so that mem_dereg deregisters;
        // application memory moved onto shadow memory.
        let u = Uct::open_with(&[(c"RCACHE", c"n"), (c"SHADOW_MOVE", c"y")]);
        let (comp, md, worker, ic, params) = (u.comp, u.md, u.worker, u.ic, u.params);
        let (a, b) = (u.iface(None), u.iface(None));
        // AM alignment parameters are checked like UCX's own transports do.
        for (align, offset, mask) in [
            (0usize, 0usize, UCT_IFACE_PARAM_FIELD_AM_ALIGNMENT),
            (3, 0, UCT_IFACE_PARAM_FIELD_AM_ALIGNMENT),
            (0, 11, UCT_IFACE_PARAM_FIELD_AM_ALIGN_OFFSET),
            (8, 8, UCT_IFACE_PARAM_FIELD_AM_ALIGN_OFFSET),
        ] {
            let mut p = params;
            p.field_mask |= mask as u64;
            p.am_alignment = align;
            p.am_align_offset = offset;
            let mut bad: uct_iface_h = null_mut();
            assert_eq!(uct_iface_open(md, worker, &p, ic, &mut bad), UCS_ERR_INVALID_PARAM, "alignment {align} offset {offset}");
        }

        let mut attr: uct_iface_attr_t = std::mem::zeroed();
        ok(iops(a).iface_query.unwrap()(a, &mut attr), "query");
        let need = UCT_IFACE_FLAG_AM_SHORT as u64
            | UCT_IFACE_FLAG_AM_BCOPY as u64
            | UCT_IFACE_FLAG_PUT_ZCOPY as u64
            | UCT_IFACE_FLAG_GET_ZCOPY as u64
            | UCT_IFACE_FLAG_PENDING as u64
            | UCT_IFACE_FLAG_CB_SYNC
            | UCT_IFACE_FLAG_CONNECT_TO_IFACE;
        assert_eq!(attr.cap.flags & need, need, "capabilities UCP needs");
        // 256 KiB asked: capped to the largest record every ring a router
        // hands out takes whole (the smallest, 1 MiB, less a record header).
        assert_eq!(attr.cap.am.max_bcopy, ffcore::ring::MIN_SCALED_RING / 4 - ffcore::ring::REC_HDR, "UCX_FF_SEG_SIZE applied, capped");
        assert!(attr.cap.am.max_bcopy > 255 << 10);
        assert!(attr.cap.am.max_iov > 0 && attr.dev_num_paths >= 1);

        let mut rx = Recv { msgs: Vec::new() };
        ok(uct_iface_set_am_handler(b, 5, Some(on_am), &mut rx as *mut Recv as *mut c_void, 0), "am handler");

        // Addresses and reachability; connect a -> b.
        let (dev, ia) = u.addr(b);
        assert_eq!(iops(a).iface_is_reachable.unwrap()(a, dev.as_ptr() as *const _, ia.as_ptr() as *const _), 1);
        let mut other = dev.clone();
        other[0] ^= 0xff;
        assert_eq!(iops(a).iface_is_reachable.unwrap()(a, other.as_ptr() as *const _, ia.as_ptr() as *const _), 0, "another router");
        let ep = u.connect(a, b);
        let w = World { comp, ifaces: vec![a, b], ep };

        // Active messages: short, then AM id checks on the sender.
        let payload = b"hello ff";
        ok(ops(ep).ep_am_short.unwrap()(ep, 5, 42, payload.as_ptr() as *const c_void, 8), "am_short");
        let rxp: *const Recv = &rx;
        w.until(|| (*rxp).msgs.len() == 1, "am_short delivery");
        assert_eq!(rx.msgs[0], (42, payload.to_vec()));
        assert_eq!(ops(ep).ep_am_short.unwrap()(ep, 32, 0, null(), 0), UCS_ERR_INVALID_PARAM, "AM id 32");
        let mut pk = Pack { called: false, hdr: 0, len: 64 };
        assert_eq!(
            ops(ep).ep_am_bcopy.unwrap()(ep, 200, Some(pack), &mut pk as *mut Pack as *mut c_void, 0),
            UCS_ERR_INVALID_PARAM as isize
        );
        assert!(!pk.called);

        // Fill the ring with bcopy messages (the receiver does not progress).
        let mut sent = 0u64;
        loop {
            let mut pk = Pack { called: false, hdr: 1000 + sent, len: 200 << 10 };
            let r = ops(ep).ep_am_bcopy.unwrap()(ep, 5, Some(pack), &mut pk as *mut Pack as *mut c_void, 0);
            if r == UCS_ERR_NO_RESOURCE as isize {
                assert!(!pk.called, "no pack callback on a failing bcopy");
                break;
            }
            assert_eq!(r, (200 << 10) as isize);
            assert!(pk.called);
            sent += 1;
            assert!(sent < 100, "the ring never filled");
        }
        // A pending request: from now on sends report NO_RESOURCE (ordering)
        // until the queue is dispatched.
        let mut pend = Pend { req: std::mem::zeroed(), ep, calls: 0, result: UCS_OK };
        pend.req.func = Some(on_pending);
        ok(ops(ep).ep_pending_add.unwrap()(ep, &mut pend.req, 0), "pending_add");
        assert_eq!(ops(ep).ep_am_short.unwrap()(ep, 5, 1, null(), 0), UCS_ERR_NO_RESOURCE, "sends wait behind the pending queue");
        assert_eq!(ops(ep).ep_flush.unwrap()(ep, 0, null_mut()), UCS_ERR_NO_RESOURCE, "flush waits behind the pending queue");
        let pp: *const Pend = &pend;
        w.until(|| (*pp).result == UCS_OK && (*pp).calls >= 1, "pending dispatch");
        w.until(|| (*rxp).msgs.len() as u64 == 1 + sent + 1, "all messages");
        for i in 0..sent as usize {
            assert_eq!(rx.msgs[1 + i].0, 1000 + i as u64, "bcopy order");
            assert!(rx.msgs[1 + i].1.len() == (200 << 10) - 8 && rx.msgs[1 + i].1.iter().all(|&x| x == 0xab));
        }
        assert_eq!(rx.msgs.last().unwrap().0, 777, "the pending request sent last");
        ok(ops(ep).ep_am_short.unwrap()(ep, 5, 2, null(), 0), "sends work again");
        ok(ops(ep).ep_flush.unwrap()(ep, 0, null_mut()), "nothing outstanding");

        // Memory registration, packed keys, PUT and GET (inline and streamed).
        let mdops = &*((*(md as *mut UctMd)).ops);
        let mut target = vec![0u8; 4 << 20];
        let (memh, packed) = u.reg(&mut target);
        assert_eq!(packed.len(), PackedRkey::LEN, "the packed size UCX is told");
        assert!(PackedRkey::read(&packed).unwrap().shadow.is_some(), "registered memory is shadow memory");
        let rk = w.rkey(&packed);
        let base = target.as_ptr() as u64;
        for &(off, len) in &[(0usize, 1usize), (100, 5000), (4096, 3 << 20), (0, 4 << 20)] {
            let src: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            ok(w.put(&src, base + off as u64, rk.rkey), "put");
            assert!(target[off..off + len] == src[..], "put of {len} bytes landed");
            let mut back = vec![0u8; len];
            ok(w.get(&mut back, base + off as u64, rk.rkey), "get");
            assert!(back == src, "get of {len} bytes");
        }

        // Refused requests: error completion, target memory untouched, and
        // the endpoint keeps working.
        target.fill(0x11);
        let bad = |len: usize| vec![0xeeu8; len];
        assert_eq!(w.put(&bad(100), base + (4 << 20) - 50, rk.rkey), UCS_ERR_INVALID_ADDR, "put past the end (inline)");
        assert_eq!(w.put(&bad(1 << 20), base + (3 << 20) + 1, rk.rkey), UCS_ERR_INVALID_ADDR, "put past the end (streamed)");
        assert_eq!(w.put(&bad(10), base - 10, rk.rkey), UCS_ERR_INVALID_ADDR, "put before the start");
        let mut forged = packed.clone();
        forged[8] ^= 1; // another domain's cookie
        forged[40 + 24] ^= 1; // and another shadow region key
        let fk = w.rkey(&forged);
        assert_eq!(w.put(&bad(10), base, fk.rkey), UCS_ERR_INVALID_ADDR, "forged key");
        let mut out = vec![0u8; 1 << 20];
        assert_eq!(w.get(&mut out, base + (4 << 20) - 10, rk.rkey), UCS_ERR_INVALID_ADDR, "get past the end");
        assert!(out.iter().all(|&x| x == 0), "nothing delivered on refusal");
        assert!(target.iter().all(|&x| x == 0x11), "refused PUTs wrote nothing");
        ok(w.put(&[9u8; 64], base, rk.rkey), "valid put after refusals");
        assert_eq!(&target[..64], &[9u8; 64][..]);
        let bogus = vec![0u8; packed.len()];
        let mut bb: uct_rkey_bundle_t = std::mem::zeroed();
        assert_ne!(uct_rkey_unpack(comp, bogus.as_ptr() as *const c_void, &mut bb), UCS_OK, "not an ff key");

        // Flush with an outstanding PUT: into a registration that starts
        // inside a page (heap blocks are 16-byte aligned), whose partial
        // first page goes as a message.
        let mut fb = vec![0u8; (2 << 20) + 8192];
        let (memh1, packed1) = u.reg(&mut fb[1..]);
        let rk1 = w.rkey(&packed1);
        let src = vec![3u8; 2 << 20];
        let iov = uct_iov_t { buffer: src.as_ptr() as *mut c_void, length: src.len(), memh: null_mut(), stride: 0, count: 1 };
        let mut pc = new_comp();
        assert_eq!(ops(ep).ep_put_zcopy.unwrap()(ep, &iov, 1, fb.as_ptr() as u64 + 1, rk1.rkey, &mut pc.c), UCS_INPROGRESS);
        let mut fc = new_comp();
        assert_eq!(ops(ep).ep_flush.unwrap()(ep, 0, &mut fc.c), UCS_INPROGRESS);
        assert_eq!(iops(a).iface_flush.unwrap()(a, 0, null_mut()), UCS_INPROGRESS);
        let fcp: *const Comp = &*fc;
        w.until(|| (*fcp).done == 1, "flush completion");
        assert_eq!(pc.done, 1, "the PUT completed before the flush");
        ok(iops(a).iface_flush.unwrap()(a, 0, null_mut()), "iface flush");
        assert!(fb[1..src.len() + 1].iter().all(|&x| x == 3));
        uct_rkey_release(comp, &rk1);
        ok(uct_md_mem_dereg(md, memh1), "mem_dereg");

        // mem_dereg parameter checks (UCT_MD_MEM_DEREG_CHECK_PARAMS).
        let p = MemDeregParams { field_mask: UCT_MD_MEM_DEREG_FIELD_MEMH, flags: 0, memh: null_mut(), comp: null_mut() };
        assert_eq!(mdops.mem_dereg.unwrap()(md, &p), UCS_ERR_INVALID_PARAM, "no memh");
        let p = MemDeregParams { field_mask: 0, flags: 0, memh, comp: null_mut() };
        assert_eq!(mdops.mem_dereg.unwrap()(md, &p), UCS_ERR_INVALID_PARAM, "memh not in the field mask");
        let p = MemDeregParams {
            field_mask: UCT_MD_MEM_DEREG_FIELD_MEMH | UCT_MD_MEM_DEREG_FIELD_FLAGS,
            flags: UCT_MD_MEM_DEREG_FLAG_INVALIDATE,
            memh,
            comp: null_mut(),
        };
        assert_eq!(mdops.mem_dereg.unwrap()(md, &p), UCS_ERR_UNSUPPORTED, "invalidate");
        ok(uct_md_mem_dereg(md, memh), "mem_dereg");
        assert_eq!(w.put(&[1u8; 8], base, rk.rkey), UCS_ERR_INVALID_ADDR, "a deregistered range is refused");
        uct_rkey_release(comp, &rk);
        uct_rkey_release(comp, &fk);

        u.close(&[ep], &[a, b]);
    }
}

/// The keys of two registrations are unrelated, and keys next to a real
/// one (what a peer holding it would try first) reach nothing.
#[test]
fn remote_keys_are_independent() {
    let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    unsafe {
        let u = Uct::open();
        let (a, b, ep, w) = u.pair();
        assert_eq!(u.rkey_packed_size(), PackedRkey::LEN, "md_query reports the packed size");
        // Sixteen registrations, in a row, of one process.
        let mut bufs: Vec<Vec<u8>> = (0..16).map(|_| vec![0x11u8; 4096]).collect();
        let regs: Vec<_> = bufs.iter_mut().map(|b| u.reg(b)).collect();
        let keys: Vec<PackedRkey> = regs.iter().map(|(_, p)| PackedRkey::read(p).expect("an ff key")).collect();
        for (i, x) in keys.iter().enumerate() {
            assert_eq!(x.cookie, keys[0].cookie, "one domain, one cookie");
            for y in &keys[i + 1..] {
                let (kx, ky) = (x.key, y.key);
                // Random keys fail these with probability ~2^-31 per pair.
                assert!(kx.abs_diff(ky) > 1 << 32, "keys {kx:#x} and {ky:#x} are close");
                assert_ne!(kx >> 32, ky >> 32, "keys {kx:#x} and {ky:#x} share their high bits");
            }
        }
        // What a peer holding the first key would forge for the second
        // registration: nearby keys (fewer than MAX_REFUSED, so every one is
        // answered). Each is refused and the memory stays as it was.
        let real = keys[0];
        let k = real.key;
        for forged_key in [k.wrapping_add(1), k.wrapping_sub(1), k.wrapping_add(2), k ^ (1 << 32), k ^ (1 << 63), k.wrapping_add(1 << 32)] {
            let forged = PackedRkey { key: forged_key, base: keys[1].base, len: keys[1].len, ..real };
            let mut packed = vec![0u8; PackedRkey::LEN];
            forged.write(&mut packed);
            let fk = w.rkey(&packed);
            assert_eq!(w.put(&[0xee; 64], keys[1].base, fk.rkey), UCS_ERR_INVALID_ADDR, "forged key {forged_key:#x} (real {k:#x})");
            uct_rkey_release(u.comp, &fk);
        }
        assert!(bufs.iter().all(|b| b.iter().all(|&x| x == 0x11)), "no forged PUT landed");
        // The real keys work.
        for (i, (_, p)) in regs.iter().enumerate() {
            let rk = w.rkey(p);
            ok(w.put(&[i as u8; 64], keys[i].base + 100, rk.rkey), "put with the real key");
            uct_rkey_release(u.comp, &rk);
            assert_eq!(&bufs[i][100..164], &[i as u8; 64][..]);
        }
        for (memh, _) in regs {
            ok(uct_md_mem_dereg(u.md, memh), "mem_dereg");
        }
        u.close(&[ep], &[a, b]);
    }
}

/// Refused PUTs and GETs, whatever the reason, count per connection; the
/// MAX_REFUSED-th closes that connection (the peer's endpoint fails), while
/// the iface goes on serving its other connections and new ones.
#[test]
fn refused_requests_close_the_connection() {
    let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    unsafe {
        let u = Uct::open();
        let (a, b, c) = (u.iface(None), u.iface(None), u.iface(None));
        let mut rx = Recv { msgs: Vec::new() };
        ok(uct_iface_set_am_handler(b, 5, Some(on_am), &mut rx as *mut Recv as *mut c_void, 0), "am handler");
        let rxp: *const Recv = &rx;
        let (probe, other) = (u.connect(a, b), u.connect(c, b));
        let w = World { comp: u.comp, ifaces: vec![a, b, c], ep: probe };
        let mut target = vec![0u8; 64 << 10];
        let base = target.as_ptr() as u64;
        let (memh, packed) = u.reg(&mut target);
        let rk = w.rkey(&packed);
        let mut forged = packed.clone();
        forged[8] ^= 1; // another domain's cookie
        forged[40 + 24] ^= 1; // and another shadow region key
        let fk = w.rkey(&forged);
        ok(w.put(&[1u8; 16], base, rk.rkey), "a valid put");
        ok(w.on(other).put(&[2u8; 16], base + 16, rk.rkey), "a valid put on the other connection");

        let limit = uct_ff::iface::MAX_REFUSED as usize;
        assert!((2..=16).contains(&limit), "a small limit: {limit}");
        let mut out = vec![0u8; 16 << 10];
        let refuse = |i: usize, out: &mut [u8]| match i % 4 {
            0 => w.get(&mut out[..100], base + (64 << 10) - 50, rk.rkey),  // past the end
            1 => w.put(&[0xee; 100], base - 100, rk.rkey),                 // before the start (inline)
            2 => w.put(&vec![0xee; 16 << 10], base + (60 << 10), rk.rkey), // past the end (streamed)
            _ => w.get(out, base, fk.rkey),                                // another domain's key
        };
        for i in 0..limit - 1 {
            assert_eq!(refuse(i, &mut out), UCS_ERR_INVALID_ADDR, "refusal {} is answered", i + 1);
        }
        // Interleaved valid requests do not reset the count.
        ok(w.put(&[3u8; 16], base + 32, rk.rkey), "a valid put between refusals");
        let s = refuse(limit - 1, &mut out);
        assert!(s != UCS_OK && s != UCS_ERR_INVALID_ADDR, "refusal {limit} closes the connection (got status {s})");
        assert_ne!(w.put(&[4u8; 16], base, rk.rkey), UCS_OK, "the closed connection stays closed");
        assert_ne!(ops(probe).ep_am_short.unwrap()(probe, 5, 9, null(), 0), UCS_OK, "AMs fail too");
        assert!(target[..48].iter().zip([1u8; 16].iter().chain(&[2u8; 16]).chain(&[3u8; 16])).all(|(a, b)| a == b));
        assert!(target[48..].iter().all(|&x| x == 0), "no refused PUT wrote anything");

        // The iface serves the other connection, and new ones (with a
        // count of their own).
        ok(w.on(other).put(&[5u8; 16], base, rk.rkey), "the other connection works");
        ok(ops(other).ep_am_short.unwrap()(other, 5, 10, null(), 0), "am on the other connection");
        w.until(|| (*rxp).msgs.iter().any(|m| m.0 == 10), "am delivery");
        let again = u.connect(a, b);
        assert_eq!(w.on(again).get(&mut out[..8], base - 8, rk.rkey), UCS_ERR_INVALID_ADDR, "a new connection starts afresh");
        ok(w.on(again).get(&mut out[..16], base, rk.rkey), "and works");
        assert_eq!(&out[..16], &[5u8; 16][..]);
        assert!(!rx.msgs.iter().any(|m| m.0 == 9), "nothing from the closed connection");

        uct_rkey_release(u.comp, &rk);
        uct_rkey_release(u.comp, &fk);
        ok(uct_md_mem_dereg(u.md, memh), "mem_dereg");
        u.close(&[probe, other, again], &[a, b, c]);
    }
}

/// A GET_GO (the word that releases a held GET's data) for nothing held,
/// or of the wrong size, is a protocol error: the target drops that
/// connection, answers nothing on it, and serves the others.
#[test]
fn a_get_go_for_nothing_held_closes_the_connection() {
    let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    unsafe {
        let u = Uct::open();
        let (a, b) = (u.iface(None), u.iface(None));
        let (bad_seq, bad_len, good) = (u.connect(a, b), u.connect(a, b), u.connect(a, b));
        let w = World { comp: u.comp, ifaces: vec![a, b], ep: good };
        let mut target = vec![0u8; 64 << 10];
        let base = target.as_ptr() as u64;
        let (memh, packed) = u.reg(&mut target);
        let rk = w.rkey(&packed);
        for (ep, len) in [(bad_seq, 8usize), (bad_len, 5)] {
            ok(w.on(ep).put(&[1u8; 16], base, rk.rkey), "the connection works first");
            let e = ep as *mut uct_ff::ep::Ep;
            let sent = (*e).conn.try_send_with(uct_ff::proto::tag(uct_ff::proto::GET_GO, 0), 8, |p| {
                std::ptr::copy_nonoverlapping(42u64.to_le_bytes().as_ptr(), p, 8);
                len
            });
            assert!(matches!(sent, Ok(Some(_))), "the forged GET_GO went out: {sent:?}");
            let s = w.on(ep).put(&[2u8; 16], base + 16, rk.rkey);
            assert!(s != UCS_OK && s != UCS_INPROGRESS, "a GET_GO of {len} bytes for nothing held closes the connection (got status {s})");
        }
        assert!(target[16..32].iter().all(|&x| x == 0), "nothing after the forged GET_GO was served");
        ok(w.on(good).put(&[3u8; 16], base + 32, rk.rkey), "the other connection works");
        assert_eq!(&target[32..48], &[3u8; 16][..]);
        uct_rkey_release(u.comp, &rk);
        ok(uct_md_mem_dereg(u.md, memh), "mem_dereg");
        u.close(&[bad_seq, bad_len, good], &[a, b]);
    }
}

/// What UCP's handler saw of each active message.
struct Seen {
    /// (data pointer, length, bytes as received)
    msgs: Vec<(usize, usize, Vec<u8>)>,
}

unsafe extern "C" fn on_am_seen(arg: *mut c_void, data: *mut c_void, len: usize, flags: c_uint) -> ucs_status_t {
    assert_eq!(flags, 0);
    let s = &mut *(arg as *mut Seen);
    s.msgs.push((data as usize, len, std::slice::from_raw_parts(data as *const u8, len).to_vec()));
    UCS_OK
}

/// The mapping of this process that holds `addr`: (permissions, path).
fn mapping_of(addr: usize) -> (String, String) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (range, perms) = (f.next().unwrap(), f.next().unwrap());
        let (lo, hi) = range.split_once('-').unwrap();
        let (lo, hi) = (usize::from_str_radix(lo, 16).unwrap(), usize::from_str_radix(hi, 16).unwrap());
        if (lo..hi).contains(&addr) {
            return (perms.to_string(), f.nth(3).unwrap_or("").to_string());
        }
    }
    panic!("{addr:#x} is not mapped");
}

/// UCP's AM handler gets a private copy of each message (not the shared
/// ring the peer can still write), in one buffer of the iface reused for
/// every message, at the AM alignment the iface was opened with.
#[test]
fn active_messages_reach_ucp_from_private_memory() {
    let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    unsafe {
        let u = Uct::open();
        let a = u.iface(None);
        let plain = u.iface(None);
        let aligned = u.iface(Some((256, 8)));
        let mut seen = [Seen { msgs: Vec::new() }, Seen { msgs: Vec::new() }];
        for (i, &t) in [plain, aligned].iter().enumerate() {
            ok(uct_iface_set_am_handler(t, 7, Some(on_am_seen), &mut seen[i] as *mut Seen as *mut c_void, 0), "am handler");
        }
        let eps = [u.connect(a, plain), u.connect(a, aligned)];
        let w = World { comp: u.comp, ifaces: vec![a, plain, aligned], ep: eps[0] };
        let sizes = [0usize, 1, 7, 100, 1000, 2000, 60 << 10, 200 << 10];
        for (i, &ep) in eps.iter().enumerate() {
            for (n, &size) in sizes.iter().enumerate() {
                let payload: Vec<u8> = (0..size).map(|j| (j * 13 + n) as u8).collect();
                if size + 8 <= 2048 {
                    ok(ops(ep).ep_am_short.unwrap()(ep, 7, n as u64, payload.as_ptr() as *const c_void, size as c_uint), "am_short");
                }
                let mut pk = Pack { called: false, hdr: n as u64, len: size + 8 };
                let r = ops(ep).ep_am_bcopy.unwrap()(ep, 7, Some(pack), &mut pk as *mut Pack as *mut c_void, 0);
                assert_eq!(r, (size + 8) as isize, "am_bcopy");
                let sp: *const Seen = &seen[i];
                let want = sizes[..=n].iter().map(|&s| if s + 8 <= 2048 { 2 } else { 1 }).sum::<usize>();
                w.until(|| (*sp).msgs.len() == want, "am delivery");
            }
        }
        for (i, s) in seen.iter().enumerate() {
            let first = s.msgs[0].0;
            for (p, len, bytes) in &s.msgs {
                assert_eq!(*len, bytes.len());
                assert_eq!(*p, first, "one buffer for every message (no allocation, no pointer into a ring)");
                let (perms, path) = mapping_of(*p);
                assert!(perms.ends_with('p') && !path.starts_with("/memfd:"), "AM data at {p:#x} is in a shared mapping ({perms} {path})");
            }
            if i == 1 {
                assert_eq!((first + 8) % 256, 0, "am_alignment 256 with offset 8");
            }
        }
        // Contents: am_short (header + payload) and bcopy (header + 0xab).
        let mut m = seen[1].msgs.iter();
        for (n, &size) in sizes.iter().enumerate() {
            if size + 8 <= 2048 {
                let b = &m.next().unwrap().2;
                assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), n as u64);
                assert!(b[8..].iter().enumerate().all(|(j, &x)| x == (j * 13 + n) as u8), "am_short {size}");
            }
            let b = &m.next().unwrap().2;
            assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), n as u64);
            assert!(b.len() == size + 8 && b[8..].iter().all(|&x| x == 0xab), "am_bcopy {size}");
        }
        u.close(&eps, &[a, plain, aligned]);
    }
}

/// Registered memory is shadow memory: a PUT or GET inside its whole pages
/// is one copy between the two buffers, done when the call returns (the
/// target does not even progress); the partial pages at either end go as
/// messages the target serves; memory the domain allocates is shadow memory
/// from the start; after deregistration a peer's GET fails cleanly; and
/// `UCX_FF_SHADOW=n` keeps everything on the message path.
#[test]
fn shadow_memory_puts_and_gets_copy_once() {
    let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    unsafe {
        // Application memory is moved onto shadow memory only when asked.
        let u = Uct::open_with(&[(c"SHADOW_MOVE", c"y")]);
        let (a, b, ep, w) = u.pair();
        let page = 4096u64;
        // A block with partial pages at both ends, as heap blocks have,
        // made so: the allocator hands out a page-aligned one now and then
        // (CI saw one), and the test needs a partial page before it.
        let len = (4 << 20) + 100;
        let mut backing = vec![0u8; len + 2 * page as usize];
        let skew = backing.as_ptr().align_offset(page as usize) + 16;
        let target = &mut backing[skew..skew + len];
        let (memh, packed) = u.reg(&mut *target);
        let rk = w.rkey(&packed);
        let base = target.as_ptr() as u64;
        let inner = base.next_multiple_of(page);
        let head = (inner - base) as usize;
        assert!(head > 0, "the test needs an unaligned block");

        let mut src: Vec<u8> = (0..1 << 20).map(|i| (i * 31 + 7) as u8).collect();
        let (s, _c) = w.start(false, &mut src, inner, rk.rkey);
        assert_eq!(s, UCS_OK, "a PUT inside the whole pages is done at once");
        assert!(target[head..head + src.len()] == src[..]);
        target[head + 5] = 0x77;
        let mut back = vec![0u8; 1 << 20];
        let (s, _c) = w.start(true, &mut back, inner, rk.rkey);
        assert_eq!(s, UCS_OK, "a GET inside the whole pages is done at once");
        assert_eq!(back[5], 0x77);
        assert!(back[6..] == src[6..]);

        // Ranges with partial pages, 1 byte to all of it, checked both ways.
        let all = target.len();
        for &(off, len) in &[(0usize, 1usize), (head - 1, 2), (1, 5000), (head, all - head), (0, all), (3 << 20, all - (3 << 20))] {
            let mut data: Vec<u8> = (0..len).map(|i| (i * 13 + off + len) as u8).collect();
            ok(w.put(&data, base + off as u64, rk.rkey), "put");
            assert!(target[off..off + len] == data[..], "put of {len} bytes at {off}");
            data.fill(0);
            ok(w.get(&mut data, base + off as u64, rk.rkey), "get");
            assert!(target[off..off + len] == data[..], "get of {len} bytes at {off}");
        }
        // Still refused outside the registration, even where the pages are shared.
        assert_eq!(w.put(&[1u8; 64], base + all as u64 - 32, rk.rkey), UCS_ERR_INVALID_ADDR);

        // The registration cache: the same buffer, the same registration,
        // kept after mem_dereg...
        let (again, _) = u.reg(&mut *target);
        assert_eq!(again, memh, "from the registration cache");
        ok(uct_md_mem_dereg(u.md, again), "mem_dereg");
        ok(uct_md_mem_dereg(u.md, memh), "mem_dereg");
        let mut out = vec![0u8; 8192];
        ok(w.get(&mut out, inner, rk.rkey), "still registered");
        uct_rkey_release(u.comp, &rk);
        // ...until the memory is unmapped (UCX's memory hooks tell the
        // cache, which deregisters at its next use). The peer, which still
        // holds the key and has the region mapped, is then refused.
        let watcher = u._router.as_ref().unwrap().context("a");
        let len = 1 << 20;
        let p = libc::mmap(null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
        assert_ne!(p, libc::MAP_FAILED);
        let mapped = std::slice::from_raw_parts_mut(p as *mut u8, len);
        let (memh, packed) = u.reg(mapped);
        let rk = w.rkey(&packed);
        ok(w.get(&mut out, p as u64, rk.rkey), "get");
        ok(uct_md_mem_dereg(u.md, memh), "mem_dereg");
        let regions = watcher.stats().unwrap().regions;
        libc::munmap(p, len);
        let mut tiny = vec![0u8; 100];
        let (tm, _) = u.reg(&mut tiny); // the cache's next use
        let t = std::time::Instant::now();
        while watcher.stats().unwrap().regions >= regions {
            assert!(t.elapsed().as_secs() < 10, "the cache never deregistered the unmapped buffer");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        out.fill(0);
        assert_eq!(w.get(&mut out, p as u64, rk.rkey), UCS_ERR_INVALID_ADDR, "GET after the buffer was unmapped");
        assert!(out.iter().all(|&x| x == 0));
        uct_rkey_release(u.comp, &rk);
        ok(uct_md_mem_dereg(u.md, tm), "mem_dereg");

        // Memory the domain allocates (UCT_MD_FLAG_ALLOC).
        let mdops = &*((*(u.md as *mut UctMd)).ops);
        let (mut len, mut addr, mut mh) = ((1 << 20) + 5, null_mut(), null_mut());
        ok(mdops.mem_alloc.unwrap()(u.md, &mut len, &mut addr, UCS_MEMORY_TYPE_HOST, 0, c"test".as_ptr(), &mut mh), "mem_alloc");
        assert!(len >= (1 << 20) + 5 && (len as u64).is_multiple_of(page), "{len}");
        let mut packed = vec![0u8; u.rkey_packed_size()];
        ok(uct_md_mkey_pack(u.md, mh, packed.as_mut_ptr() as *mut c_void), "mkey_pack");
        let rk = w.rkey(&packed);
        let mut data = vec![0x42u8; len];
        let (s, _c) = w.start(false, &mut data, addr as u64, rk.rkey);
        assert_eq!(s, UCS_OK, "allocated memory is shadow memory");
        assert!(std::slice::from_raw_parts(addr as *const u8, len).iter().all(|&x| x == 0x42));
        uct_rkey_release(u.comp, &rk);
        ok(mdops.mem_free.unwrap()(u.md, mh), "mem_free");
        u.close(&[ep], &[a, b]);

        // UCX_FF_SHADOW=n: registration only, every PUT a message.
        let u = Uct::open_with(&[(c"SHADOW", c"n")]);
        let (a, b, ep, w) = u.pair();
        let mut target = vec![0u8; 1 << 20];
        let (memh, packed) = u.reg(&mut target);
        assert!(PackedRkey::read(&packed).unwrap().shadow.is_none());
        let rk = w.rkey(&packed);
        let base = target.as_ptr() as u64;
        let mut data = vec![5u8; 64 << 10];
        let (s, c) = w.start(false, &mut data, base.next_multiple_of(page), rk.rkey);
        assert_eq!(s, UCS_INPROGRESS, "the message path");
        let cp: *const Comp = &*c;
        w.until(|| (*cp).done == 1, "put completion");
        uct_rkey_release(u.comp, &rk);
        ok(uct_md_mem_dereg(u.md, memh), "mem_dereg");
        u.close(&[ep], &[a, b]);
    }
}

/// What the iface's error handler was told.
struct Errs {
    calls: Vec<(uct_ep_h, ucs_status_t)>,
}

unsafe extern "C" fn on_ep_err(arg: *mut c_void, ep: uct_ep_h, status: ucs_status_t) -> ucs_status_t {
    (*(arg as *mut Errs)).calls.push((ep, status));
    UCS_OK
}

fn fd_readable(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    unsafe { libc::poll(&mut p, 1, ms) == 1 }
}

#[test]
fn events_and_peer_failure_through_uct() {
    let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    unsafe {
        // No shadow memory: GETs are served by the target's progress.
        let u = Uct::open_with(&[(c"SHADOW", c"n")]);
        let mut errs = Errs { calls: Vec::new() };
        let mut p = u.params;
        p.field_mask |= (UCT_IFACE_PARAM_FIELD_ERR_HANDLER | UCT_IFACE_PARAM_FIELD_ERR_HANDLER_ARG | UCT_IFACE_PARAM_FIELD_ERR_HANDLER_FLAGS) as u64;
        p.err_handler = Some(on_ep_err);
        p.err_handler_arg = &mut errs as *mut Errs as *mut c_void;
        p.err_handler_flags = 0;
        let mut a: uct_iface_h = null_mut();
        ok(uct_iface_open(u.md, u.worker, &p, u.ic, &mut a), "iface open");
        let b = u.iface(None);
        let mut attr: uct_iface_attr_t = std::mem::zeroed();
        ok(iops(a).iface_query.unwrap()(a, &mut attr), "query");
        assert!(attr.cap.flags & UCT_IFACE_FLAG_ERRHANDLE_PEER_FAILURE != 0 && attr.cap.flags & UCT_IFACE_FLAG_EP_CHECK != 0);
        let want = (UCT_IFACE_FLAG_EVENT_SEND_COMP | UCT_IFACE_FLAG_EVENT_RECV | UCT_IFACE_FLAG_EVENT_FD) as u64;
        assert_eq!(attr.cap.event_flags & want, want);
        let mut fd = -1;
        ok(iops(a).iface_event_fd_get.unwrap()(a, &mut fd), "event fd");
        let arm = |i: uct_iface_h| iops(i).iface_event_arm.unwrap()(i, (UCT_EVENT_SEND_COMP | UCT_EVENT_RECV) as c_uint);
        let ep = u.connect(a, b);
        let errs_p: *const Errs = &errs;
        let only_a = World { comp: u.comp, ifaces: vec![a], ep };
        let mut target = vec![0x5au8; 64 << 10];
        let base = target.as_ptr() as u64;
        let (memh, packed) = u.reg(&mut target);
        let rk = only_a.rkey(&packed);
        // The connection queued for b bumped the process's accept counter:
        // work for a until its progress has asked the router.
        assert_eq!(arm(a), UCS_ERR_BUSY, "a new connection may be pending");
        only_a.progress();
        ok(arm(a), "nothing to do: armed");
        assert!(!fd_readable(fd, 50), "idle");

        // A GET's reply wakes the initiator.
        let mut out = vec![0u8; 1000];
        let (s, c) = only_a.start(true, &mut out, base, rk.rkey);
        assert_eq!(s, UCS_INPROGRESS);
        ok(arm(a), "waiting for the reply: armed");
        assert!(!fd_readable(fd, 50), "the target has not served it");
        iops(b).iface_progress.unwrap()(b);
        assert!(fd_readable(fd, 5000), "the reply woke it");
        let cp: *const Comp = &*c;
        only_a.until(|| (*cp).done == 1, "get");
        ok(c.c.status, "get");
        assert!(out.iter().all(|&x| x == 0x5a));
        ok(ops(ep).ep_check.unwrap()(ep, 0, null_mut()), "ep_check on a live peer");
        only_a.progress();
        assert!((*errs_p).calls.is_empty());

        // The peer goes away with a GET outstanding.
        let (s, c) = only_a.start(true, &mut out, base, rk.rkey);
        assert_eq!(s, UCS_INPROGRESS);
        ok(arm(a), "armed");
        uct_iface_close(b);
        assert!(fd_readable(fd, 5000), "the peer's close woke it");
        assert_eq!(arm(a), UCS_ERR_BUSY, "a failure to report is work");
        let cp: *const Comp = &*c;
        only_a.until(|| (*cp).done == 1, "failed get");
        assert_eq!(c.c.status, UCS_ERR_ENDPOINT_TIMEOUT, "the outstanding GET failed");
        assert_eq!((*errs_p).calls, vec![(ep, UCS_ERR_ENDPOINT_TIMEOUT)], "the handler heard of it once");
        for _ in 0..100 {
            only_a.progress();
        }
        assert_eq!((*errs_p).calls.len(), 1, "only once");
        assert_eq!(ops(ep).ep_am_short.unwrap()(ep, 5, 1, null(), 0), UCS_ERR_ENDPOINT_TIMEOUT, "sends fail");
        assert!(!fd_readable(fd, 0));
        ok(arm(a), "a reported failure is not work any more");
        uct_rkey_release(u.comp, &rk);
        ok(uct_md_mem_dereg(u.md, memh), "mem_dereg");
        u.close(&[ep], &[a]);
    }
}

/// By default the transport never moves application memory (UCX's cache
/// merges ranges and keeps freed memory registered, and other threads'
/// writes to moving pages would be lost): a registered heap block stays
/// private and PUTs to it take the message path; memory the domain
/// allocates is shadow memory and takes one copy.
#[test]
fn application_memory_is_not_moved_unless_asked() {
    let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    unsafe {
        let u = Uct::open();
        let (a, b, ep, w) = u.pair();
        let mut target = vec![0u8; 4 << 20];
        let (memh, packed) = u.reg(&mut target);
        let inner = (target.as_ptr() as usize).next_multiple_of(4096) + 4096;
        let (perms, path) = mapping_of(inner);
        assert!(perms.ends_with('p') && !path.contains("ff-region") && !path.contains("memfd"), "moved: {perms} {path}");
        let rk = w.rkey(&packed);
        let src: Vec<u8> = (0..1 << 20).map(|i| (i * 7 + 3) as u8).collect();
        ok(w.put(&src, inner as u64, rk.rkey), "put");
        assert!(target[inner - target.as_ptr() as usize..][..src.len()] == src[..], "the message path delivers");
        uct_rkey_release(u.comp, &rk);
        ok(uct_md_mem_dereg(u.md, memh), "dereg");
        u.close(&[ep], &[a, b]);
    }
}

/// Flushes `w.ep` until everything issued on it is done remotely.
unsafe fn flush(w: &World) {
    let mut c = new_comp();
    let s = ops(w.ep).ep_flush.unwrap()(w.ep, 0, &mut c.c);
    if s == UCS_INPROGRESS {
        let cp: *const Comp = &*c;
        w.until(|| (*cp).done == 1, "flush");
    } else {
        ok(s, "flush");
    }
}

/// A fetching atomic (or cswap) as issued and completed: (immediate
/// status, final status, old value).
unsafe fn fetch(w: &World, width: u32, op: ffcore::AtomicOp, value: u64, compare: u64, addr: u64, rkey: uct_rkey_t) -> (ucs_status_t, ucs_status_t, u64) {
    let o = ops(w.ep);
    let mut c = new_comp();
    let mut r64 = 0xdead_dead_dead_deadu64;
    let mut r32 = 0xdead_deadu32;
    let s = match (width, op) {
        (64, ffcore::AtomicOp::Cswap) => o.ep_atomic_cswap64.unwrap()(w.ep, compare, value, addr, rkey, &mut r64, &mut c.c),
        (32, ffcore::AtomicOp::Cswap) => o.ep_atomic_cswap32.unwrap()(w.ep, compare as u32, value as u32, addr, rkey, &mut r32, &mut c.c),
        (64, _) => o.ep_atomic64_fetch.unwrap()(w.ep, op.code() as c_uint, value, &mut r64, addr, rkey, &mut c.c),
        _ => o.ep_atomic32_fetch.unwrap()(w.ep, op.code() as c_uint, value as u32, &mut r32, addr, rkey, &mut c.c),
    };
    let fin = if s == UCS_INPROGRESS {
        let cp: *const Comp = &*c;
        w.until(|| (*cp).done == 1, "atomic completion");
        c.c.status
    } else {
        s
    };
    (s, fin, if width == 64 { r64 } else { r32 as u64 })
}

unsafe fn word(addr: u64, width: u32) -> u64 {
    if width == 64 {
        (addr as *const u64).read_volatile()
    } else {
        (addr as *const u32).read_volatile() as u64
    }
}

unsafe fn set_word(addr: u64, width: u32, v: u64) {
    if width == 64 {
        (addr as *mut u64).write_volatile(v)
    } else {
        (addr as *mut u32).write_volatile(v as u32)
    }
}

/// Atomics (every op, 32 and 64 bits, posted and fetching), PUT/GET short
/// and bcopy, fences and uct_rkey_ptr, on a word in the registration's
/// partial first page (private: the target serves it as a message) and one
/// in a whole page (shadow memory: done at once through the mapping), then
/// again with `UCX_FF_SHADOW=n` (everything a message). Every result and
/// every byte is checked against the sequential model.
#[test]
fn atomics_rma_by_copy_fences_and_rkey_ptr() {
    let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    use ffcore::AtomicOp::*;
    unsafe {
        for shadow in [true, false] {
            let u = if shadow { Uct::open_with(&[(c"SHADOW_MOVE", c"y")]) } else { Uct::open_with(&[(c"SHADOW", c"n")]) };
            let (a, b, ep, w) = u.pair();
            let mut attr: uct_iface_attr_t = std::mem::zeroed();
            ok(iops(a).iface_query.unwrap()(a, &mut attr), "query");
            let need = (UCT_IFACE_FLAG_PUT_SHORT | UCT_IFACE_FLAG_PUT_BCOPY | UCT_IFACE_FLAG_GET_SHORT | UCT_IFACE_FLAG_GET_BCOPY) as u64 | UCT_IFACE_FLAG_ATOMIC_CPU as u64;
            assert_eq!(attr.cap.flags & need, need);
            let all_ops = (1u64 << UCT_ATOMIC_OP_ADD) | (1 << UCT_ATOMIC_OP_AND) | (1 << UCT_ATOMIC_OP_OR) | (1 << UCT_ATOMIC_OP_XOR);
            let all_fops = all_ops | (1 << UCT_ATOMIC_OP_SWAP) | (1 << UCT_ATOMIC_OP_CSWAP);
            for c in [attr.cap.atomic32, attr.cap.atomic64] {
                assert_eq!((c.op_flags, c.fop_flags), (all_ops, all_fops), "every op UCP asks for");
            }
            let max = attr.cap.put.max_bcopy;
            assert!(max >= 4096 && attr.cap.put.max_short == max && attr.cap.get.max_bcopy == max && attr.cap.get.max_short == max);
            let mut mattr: uct_md_attr_t = std::mem::zeroed();
            ok(uct_md_query(u.md, &mut mattr), "md query");
            assert_eq!(mattr.cap.flags & UCT_MD_FLAG_RKEY_PTR as u64, 0, "RKEY_PTR not advertised by default (UCX_FF_RKEY_PTR)");

            // 4 pages from a page boundary; registered from byte 64 on.
            let mut mem = vec![0u8; 5 << 12];
            let page0 = (mem.as_mut_ptr() as u64).next_multiple_of(4096);
            let reg = std::slice::from_raw_parts_mut((page0 + 64) as *mut u8, (3 << 12) - 64);
            let (memh, packed) = u.reg(reg);
            let rk = w.rkey(&packed);
            let near = page0 + 64; // partial first page: private
            let far = page0 + 4096; // whole page: shadow memory (unless n)
            // Every op on both words, both widths; values with high bits.
            let vals = [0x8000_0001_0000_0003u64, 0xffff_ffff_0f0f_f0f0, 7, 0];
            for (wi, &at) in [near, far].iter().enumerate() {
                for width in [32u32, 64] {
                    let mask = if width == 32 { u32::MAX as u64 } else { u64::MAX };
                    let wd = if width == 32 { ffcore::Width::W32 } else { ffcore::Width::W64 };
                    let direct = shadow && wi == 1;
                    set_word(at, width, 0x1234_5678_9abc_def0 & mask);
                    let neighbour = at + width as u64 / 8;
                    set_word(neighbour, width, 0x5555);
                    for op in [Add, And, Or, Xor, Swap, Cswap] {
                        for &v in &vals {
                            let old = word(at, width);
                            for compare in [old, old ^ 1] {
                                let old = word(at, width);
                                let (s, fin, got) = fetch(&w, width, op, v, compare, at, rk.rkey);
                                ok(fin, "atomic");
                                assert_eq!(s == UCS_OK, direct, "{op:?}/{width} on word {wi}: at once only through the mapping (status {s})");
                                assert_eq!(got, old, "{op:?}/{width} returns the old value");
                                assert_eq!(word(at, width), op.next(old, v & mask, compare & mask, wd), "{op:?}/{width} {old:#x} {v:#x} {compare:#x}");
                            }
                        }
                    }
                    // Posted ops: done once flushed.
                    for op in [Add, And, Or, Xor] {
                        let old = word(at, width);
                        let v = 0x0101_0101_0101_0101u64;
                        let s = if width == 64 {
                            ops(ep).ep_atomic64_post.unwrap()(ep, op.code() as c_uint, v, at, rk.rkey)
                        } else {
                            ops(ep).ep_atomic32_post.unwrap()(ep, op.code() as c_uint, v as u32, at, rk.rkey)
                        };
                        ok(s, "post");
                        flush(&w);
                        assert_eq!(word(at, width), op.next(old, v & mask, 0, wd), "posted {op:?}/{width}");
                    }
                    assert_eq!(
                        ops(ep).ep_atomic64_post.unwrap()(ep, UCT_ATOMIC_OP_SWAP as c_uint, 1, at, rk.rkey),
                        UCS_ERR_UNSUPPORTED,
                        "no posted swap"
                    );
                    assert_eq!(word(neighbour, width), 0x5555, "the next word is untouched");
                    // Misaligned words are refused, not split.
                    let mut r = 0u64;
                    assert_eq!(ops(ep).ep_atomic64_fetch.unwrap()(ep, 0, 1, &mut r, at + 4, rk.rkey, null_mut()), UCS_ERR_INVALID_PARAM);
                    assert_eq!(ops(ep).ep_atomic32_post.unwrap()(ep, 0, 1, at + 2, rk.rkey), UCS_ERR_INVALID_PARAM);
                }
            }
            // Outside the registration (its first 64 bytes): refused by the
            // target, memory untouched.
            set_word(page0, 64, 77);
            let (_, fin, _) = fetch(&w, 64, Add, 1, 0, page0, rk.rkey);
            assert_eq!(fin, UCS_ERR_INVALID_ADDR);
            assert_eq!(word(page0, 64), 77);

            // PUT/GET short and bcopy: bytes at both words, sizes up to the
            // largest, one across the partial page's end.
            for &(at, len) in &[(near, 1usize), (near, 100), (far - 40, 80), (far, max), (far + 4096 - 8, 8)] {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + len + at as usize) as u8).collect();
                let s = ops(ep).ep_put_short.unwrap()(ep, data.as_ptr() as *const c_void, len as c_uint, at, rk.rkey);
                ok(s, "put_short");
                flush(&w);
                assert!(std::slice::from_raw_parts(at as *const u8, len) == &data[..], "put_short of {len} at {:#x}", at - page0);
                let mut back = vec![0u8; len];
                let s = ops(ep).ep_get_short.unwrap()(ep, back.as_mut_ptr() as *mut c_void, len as c_uint, at, rk.rkey);
                assert!(s == UCS_OK || s == UCS_INPROGRESS, "get_short: {s}");
                flush(&w);
                assert!(back == data, "get_short of {len}");
                // bcopy: our pack callback fills with another pattern.
                let mut pk = Pack { called: false, hdr: 0x0102_0304_0506_0708, len };
                let n = if len >= 8 {
                    ops(ep).ep_put_bcopy.unwrap()(ep, Some(pack), &mut pk as *mut Pack as *mut c_void, at, rk.rkey)
                } else {
                    len as isize // the pack callback writes a header of 8
                };
                assert_eq!(n, len as isize, "put_bcopy");
                flush(&w);
                if len >= 8 {
                    let got = std::slice::from_raw_parts(at as *const u8, len);
                    assert_eq!(&got[..8], &0x0102_0304_0506_0708u64.to_le_bytes());
                    assert!(got[8..].iter().all(|&x| x == 0xab), "put_bcopy bytes");
                }
                let want = std::slice::from_raw_parts(at as *const u8, len).to_vec();
                let mut out = vec![0u8; len];
                let mut c = new_comp();
                let s = ops(ep).ep_get_bcopy.unwrap()(ep, Some(unpack), &mut out as *mut Vec<u8> as *mut c_void, len, at, rk.rkey, &mut c.c);
                if s == UCS_INPROGRESS {
                    let cp: *const Comp = &*c;
                    w.until(|| (*cp).done == 1, "get_bcopy");
                    ok(c.c.status, "get_bcopy");
                } else {
                    ok(s, "get_bcopy");
                }
                assert!(out == want, "get_bcopy of {len}");
            }

            // Fence: a PUT the target has not served yet (message path)
            // keeps a later atomic from going straight to the mapping.
            if shadow {
                let mut src = [9u8; 64];
                let (s, c) = w.start(false, &mut src, near, rk.rkey);
                assert_eq!(s, UCS_INPROGRESS, "partial page: a message");
                let r = fetch_start(&w, far, rk.rkey);
                assert_eq!(r, UCS_OK, "no fence: the atomic overtakes");
                ok(ops(ep).ep_fence.unwrap()(ep, 0), "fence");
                assert_eq!(fetch_start(&w, far, rk.rkey), UCS_INPROGRESS, "after the fence it waits its turn (a message)");
                ok(iops(a).iface_fence.unwrap()(a, 0), "iface fence");
                let cp: *const Comp = &*c;
                w.until(|| (*cp).done == 1, "put");
                flush(&w);
                assert_eq!(fetch_start(&w, far, rk.rkey), UCS_OK, "nothing older outstanding: direct again");
            }

            // uct_rkey_ptr: the peer's word mapped here.
            let mut p: *mut c_void = null_mut();
            let mut bundle = rk;
            if shadow {
                ok(uct_rkey_ptr(u.comp, &mut bundle, far + 8, &mut p), "rkey_ptr");
                assert_ne!(p as u64, far + 8, "a mapping of its own");
                (p as *mut u64).write_volatile(0xfeed_f00d);
                assert_eq!(word(far + 8, 64), 0xfeed_f00d, "writes through it reach the owner's memory");
                set_word(far + 16, 64, 0xabc);
                assert_eq!((p as *const u64).add(1).read_volatile(), 0xabc, "and reads see it");
                assert_eq!(uct_rkey_ptr(u.comp, &mut bundle, near, &mut p), UCS_ERR_INVALID_ADDR, "partial page: not shared");
                assert_eq!(uct_rkey_ptr(u.comp, &mut bundle, page0, &mut p), UCS_ERR_INVALID_ADDR, "outside the registration");
                // A key from another host's router: unreachable.
                let mut other = packed.clone();
                other[40] ^= 0xff; // the shadow key's router id
                let ok_other = w.rkey(&other);
                let mut ob = ok_other;
                assert_eq!(uct_rkey_ptr(u.comp, &mut ob, far, &mut p), UCS_ERR_UNREACHABLE, "another host");
                uct_rkey_release(u.comp, &ok_other);
            } else {
                assert_eq!(uct_rkey_ptr(u.comp, &mut bundle, far, &mut p), UCS_ERR_UNREACHABLE, "no shadow memory: nothing to map");
            }
            uct_rkey_release(u.comp, &rk);
            ok(uct_md_mem_dereg(u.md, memh), "mem_dereg");
            u.close(&[ep], &[a, b]);
            drop(mem);
        }
        // UCX_FF_RKEY_PTR=y advertises the flag.
        let u = Uct::open_with(&[(c"RKEY_PTR", c"y")]);
        let mut mattr: uct_md_attr_t = std::mem::zeroed();
        ok(uct_md_query(u.md, &mut mattr), "md query");
        assert_ne!(mattr.cap.flags & UCT_MD_FLAG_RKEY_PTR as u64, 0);
        u.close(&[], &[]);
    }
}

unsafe extern "C" fn unpack(arg: *mut c_void, data: *const c_void, len: usize) {
    let out = &mut *(arg as *mut Vec<u8>);
    out.copy_from_slice(std::slice::from_raw_parts(data as *const u8, len));
}

/// Issues a 64-bit fetch-add of 0 on `at` and lets it complete; returns
/// the immediate status.
unsafe fn fetch_start(w: &World, at: u64, rkey: uct_rkey_t) -> ucs_status_t {
    let mut r = 0u64;
    let mut c = new_comp();
    let s = ops(w.ep).ep_atomic64_fetch.unwrap()(w.ep, UCT_ATOMIC_OP_ADD as c_uint, 0, &mut r, at, rkey, &mut c.c);
    if s == UCS_INPROGRESS {
        let cp: *const Comp = &*c;
        w.until(|| (*cp).done == 1, "atomic");
    }
    s
}

/// Zero-length PUTs and GETs move nothing and need no valid key (UCX
/// passes none for an empty buffer, as its own tests do); a non-empty one
/// with no key is refused.
#[test]
fn empty_rma_needs_no_key() {
    let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    unsafe {
        let u = Uct::open();
        let (a, b, ep, _w) = u.pair();
        let o = ops(ep);
        assert_eq!(o.ep_put_short.unwrap()(ep, null(), 0, 0, 0), UCS_OK);
        assert_eq!(o.ep_get_short.unwrap()(ep, null_mut(), 0, 0, 0), UCS_OK);
        let iov = uct_iov_t { buffer: null_mut(), length: 0, memh: null_mut(), stride: 0, count: 1 };
        assert_eq!(o.ep_put_zcopy.unwrap()(ep, &iov, 1, 0, 0, null_mut()), UCS_OK);
        assert_eq!(o.ep_get_zcopy.unwrap()(ep, &iov, 1, 0, 0, null_mut()), UCS_OK);
        let byte = [1u8];
        assert_eq!(o.ep_put_short.unwrap()(ep, byte.as_ptr() as *const c_void, 1, 0, 0), UCS_ERR_INVALID_PARAM);
        u.close(&[ep], &[a, b]);
    }
}

/// Large GETs between two hosts (two routers, each in its own network
/// namespace) into shadow memory: those issued while only such GETs are
/// outstanding go with their receive posted (proto::POSTED), several in
/// flight at once, and the router writes each straight into its buffer; a
/// refused one among them fails alone (the target answers it with an
/// empty message, so the receives behind it still meet their own data);
/// one issued behind a PUT is held until its receive is posted
/// (proto::HOLD). Every byte is checked. Needs root.
#[test]
fn posted_gets_between_hosts_land_in_their_buffers_and_a_refused_one_fails_alone() {
    let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut h = fftestkit::hosts::TwoHosts::new();
    h.start_router(0, &["a"], &[]);
    h.start_router(1, &["a"], &[]);
    unsafe {
        // Registered destinations are moved onto shadow memory, whole pages.
        let ua = Uct::open_at(&h.tenant_dir(0, "a").join("ffrouter.sock"), &[(c"SHADOW_MOVE", c"y")]);
        let ub = Uct::open_at(&h.tenant_dir(1, "a").join("ffrouter.sock"), &[]);
        let (a, b) = (ua.iface(None), ub.iface(None));
        let ep = ua.connect(a, b);
        let w = World { comp: ua.comp, ifaces: vec![a, b], ep };
        const M: usize = 1 << 20;
        const N: usize = 6;
        let mut src: Vec<u8> = (0..N * M).map(|i| (i * 7 + i / 4093) as u8).collect();
        let (smemh, packed) = ub.reg(&mut src);
        let rk = w.rkey(&packed);
        let base = src.as_ptr() as u64;
        // N page-aligned destinations in one registered (moved) block.
        let mut block = vec![0u8; (N + 1) * M];
        let (dmemh, _) = ua.reg(&mut block);
        let first = (block.as_ptr() as usize).next_multiple_of(4096) - block.as_ptr() as usize;
        let dst = |i: usize| first + i * M;
        let bp = block.as_mut_ptr();
        let piece = |i: usize| std::slice::from_raw_parts_mut(bp.add(dst(i)), M);
        let st = &(*(a as *mut uct_ff::iface::Iface)).st;
        let (posted0, gets0) = (st.posted_gets, st.held_gets);

        // Rounds of N GETs issued back to back; in the second, GET 2 asks
        // for bytes beyond the source's registration.
        for refused in [None, Some(2usize)] {
            let mut comps = Vec::new();
            for i in 0..N {
                let from = if refused == Some(i) { base + (N * M) as u64 } else { base + (i * M) as u64 };
                let (s, c) = w.start(true, piece(i), from, rk.rkey);
                assert_eq!(s, UCS_INPROGRESS, "GET {i} goes as a message between hosts");
                comps.push(c);
            }
            let cs: Vec<*const Comp> = comps.iter().map(|c| &**c as *const Comp).collect();
            w.until(|| cs.iter().all(|&c| (*c).done == 1), "the GETs complete");
            for i in 0..N {
                if refused == Some(i) {
                    assert_eq!(comps[i].c.status, UCS_ERR_INVALID_ADDR, "GET {i}, outside the registration, is refused");
                    assert!(piece(i).iter().all(|&x| x == 0), "nothing written for the refused GET");
                } else {
                    assert_eq!(comps[i].c.status, UCS_OK, "GET {i}");
                    assert!(piece(i) == &src[i * M..(i + 1) * M], "GET {i}'s bytes (refused: {refused:?})");
                }
                piece(i).fill(0);
            }
        }
        let st = &(*(a as *mut uct_ff::iface::Iface)).st;
        assert_eq!(st.posted_gets - posted0, (2 * N - 1) as u64, "every GET but the refused one went posted");
        assert_eq!(st.held_gets - gets0, (2 * N - 1) as u64);

        // Behind a PUT, a GET is held instead: still straight into its buffer.
        let mut data = vec![0x5au8; 4096];
        let (s1, c1) = w.start(false, &mut data, base, rk.rkey);
        let (s2, c2) = w.start(true, piece(0), base + (3 * M) as u64, rk.rkey);
        assert_eq!((s1, s2), (UCS_INPROGRESS, UCS_INPROGRESS));
        let (p1, p2) = (&*c1 as *const Comp, &*c2 as *const Comp);
        w.until(|| (*p1).done == 1 && (*p2).done == 1, "PUT then GET");
        assert_eq!((c1.c.status, c2.c.status), (UCS_OK, UCS_OK));
        assert_eq!(&src[..4096], &data[..], "the PUT's bytes");
        assert!(piece(0) == &src[3 * M..4 * M], "the held GET's bytes");
        let st = &(*(a as *mut uct_ff::iface::Iface)).st;
        assert_eq!(st.posted_gets - posted0, (2 * N - 1) as u64, "the GET behind the PUT was held, not posted");
        assert_eq!(st.held_gets - gets0, (2 * N) as u64);
        assert_eq!(st.held_placed, st.held_gets, "the router wrote every held or posted GET's data straight into its buffer");

        uct_rkey_release(ua.comp, &rk);
        ok(uct_md_mem_dereg(ua.md, dmemh), "mem_dereg");
        ok(uct_md_mem_dereg(ub.md, smemh), "mem_dereg");
        uct_ep_destroy(ep);
        ub.close(&[], &[b]);
        ua.close(&[], &[a]);
    }
}
