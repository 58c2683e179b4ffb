//! The verbs side: the process's ff0 context and default protection
//! domain, and the queue pair transitions the connection manager makes
//! (INIT at creation, RTR and RTS with the peer's address at connection,
//! ERR at disconnection), through libibverbs (ffverbs' at run time).
use std::sync::Mutex;

use crate::sys::*;
use crate::wire::Conn;

/// The process's ff0 context and its default protection domain (0: not
/// opened, or forgotten when the device went away).
struct Dev {
    ctx: usize,
    pd: usize,
}

static DEV: Mutex<Dev> = Mutex::new(Dev { ctx: 0, pd: 0 });

/// The ff0 context, opened once per process (librdmacm opens every device
/// at start) and kept until it goes away ([`gone`]); Err: errno, and the
/// next call tries again (a router started later is found).
pub fn device() -> Result<*mut ibv_context, i32> {
    open(&mut crate::cm::lock(&DEV))
}

fn open(dev: &mut Dev) -> Result<*mut ibv_context, i32> {
    if dev.ctx != 0 {
        return Ok(dev.ctx as *mut ibv_context);
    }
    // SAFETY: libibverbs calls; the list is freed, the context kept.
    unsafe {
        let mut n = 0;
        let list = ibv_get_device_list(&mut n);
        if list.is_null() || n == 0 {
            if !list.is_null() {
                ibv_free_device_list(list);
            }
            return Err(libc::ENODEV);
        }
        let ctx = ibv_open_device(*list);
        ibv_free_device_list(list);
        if ctx.is_null() {
            return Err(crate::cm::errno());
        }
        dev.ctx = ctx as usize;
        Ok(ctx)
    }
}

/// The process's default protection domain (for `rdma_create_qp` without
/// one), made once it is first needed.
pub fn default_pd() -> Result<*mut ibv_pd, i32> {
    let mut dev = crate::cm::lock(&DEV);
    let ctx = open(&mut dev)?;
    if dev.pd == 0 {
        // SAFETY: a live context.
        let p = unsafe { ibv_alloc_pd(ctx) };
        if p.is_null() {
            return Err(crate::cm::errno());
        }
        dev.pd = p as usize;
    }
    Ok(dev.pd as *mut ibv_pd)
}

/// Has the device gone away (ff0's port down: its router went away, see
/// ffverbs)? Then the context, if one was open: it is forgotten, so that
/// ids made from now on open ff0 anew (attached to the router restarted,
/// once it is); it stays open with its protection domain, which the
/// application's ids, queue pairs and memory regions still point at.
pub fn gone() -> Option<usize> {
    let mut dev = crate::cm::lock(&DEV);
    if dev.ctx == 0 {
        return None;
    }
    let mut a = ibv_port_attr::default();
    // SAFETY: a live context; the exported (compat) call writes a prefix
    // of the full attributes, which `a` holds whole.
    let r = unsafe { ibv_query_port(dev.ctx as *mut ibv_context, 1, &mut a as *mut ibv_port_attr as *mut _compat_ibv_port_attr) };
    if r != 0 || a.state != IBV_PORT_DOWN {
        return None;
    }
    let ctx = dev.ctx;
    *dev = Dev { ctx: 0, pd: 0 };
    Some(ctx)
}

/// Gives an id the device (`verbs`) and, as librdmacm does, the device's
/// default protection domain (`pd`: UCX's rdma_cm transport makes its
/// queue pairs in it), where it has none yet. Either stays NULL if it
/// cannot be had; the calls that need them fail then.
pub fn attach(id: &mut rdma_cm_id) {
    if id.verbs.is_null() {
        id.verbs = device().unwrap_or(std::ptr::null_mut());
    }
    if id.pd.is_null() && !id.verbs.is_null() {
        id.pd = default_pd().unwrap_or(std::ptr::null_mut());
    }
}

/// `ibv_create_qp_ex` with the `ibv_wr_*` operations `send_ops` (verbs.h
/// makes it an inline call through the context's operations, which is
/// what this does): NULL with errno if the device refuses them; the
/// capacities granted go back into `a`.
///
/// # Safety
/// `ctx` is a live context of ffverbs (whose `verbs_context` holds it),
/// `pd` one of its protection domains, `a` valid attributes.
pub unsafe fn create_qp_ex(ctx: *mut ibv_context, pd: *mut ibv_pd, a: &mut ibv_qp_init_attr, send_ops: u64) -> *mut ibv_qp {
    // SAFETY (the caller's): the context is the last field of its
    // verbs_context, whose `sz` says which operations it has.
    let v = unsafe { &*((ctx as *mut u8).sub(std::mem::offset_of!(verbs_context, context)) as *const verbs_context) };
    let Some(create) = v.create_qp_ex.filter(|_| v.sz >= std::mem::offset_of!(verbs_context, create_qp_ex) + std::mem::size_of::<usize>()) else {
        crate::abi::set_errno(libc::EOPNOTSUPP);
        return std::ptr::null_mut();
    };
    let mut x = ibv_qp_init_attr_ex {
        qp_context: a.qp_context,
        send_cq: a.send_cq,
        recv_cq: a.recv_cq,
        srq: a.srq,
        cap: a.cap,
        qp_type: a.qp_type,
        sq_sig_all: a.sq_sig_all,
        comp_mask: IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS,
        pd,
        send_ops_flags: send_ops,
        ..Default::default()
    };
    // SAFETY: ffverbs' operation, on its own context, with valid attributes.
    let q = unsafe { create(ctx, &mut x) };
    a.cap = x.cap;
    q
}

/// The device's GID (port 1, index 0): where peers find our queue pairs.
pub fn gid() -> Result<[u8; 16], i32> {
    let ctx = device()?;
    let mut g = ibv_gid::default();
    // SAFETY: a live context; g is written.
    let r = unsafe { ibv_query_gid(ctx, 1, 0, &mut g) };
    if r != 0 {
        return Err(libc::EIO);
    }
    // SAFETY: the union's raw bytes.
    Ok(unsafe { g.raw })
}

/// The type of queue pair `qp` (0: none).
pub fn qp_type(qp: usize) -> Option<ibv_qp_type> {
    // SAFETY: a queue pair rdma_create_qp made and the id still holds.
    (qp != 0).then(|| unsafe { (*(qp as *const ibv_qp)).qp_type })
}

pub fn qp_num(qp: usize) -> u32 {
    // SAFETY: as above.
    if qp == 0 {
        0
    } else {
        unsafe { (*(qp as *const ibv_qp)).qp_num }
    }
}

fn modify(qp: usize, a: &mut ibv_qp_attr, mask: u32) -> Result<(), i32> {
    // SAFETY: a live queue pair (see qp_type); a is read.
    let r = unsafe { ibv_modify_qp(qp as *mut ibv_qp, a, mask as i32) };
    if r == 0 {
        Ok(())
    } else {
        Err(r)
    }
}

/// The access a connected queue pair grants: remote writes, and reads and
/// atomics where the connection has responder resources (as the kernel's
/// CM sets them).
fn access(responder_resources: u8) -> u32 {
    let mut a = IBV_ACCESS_REMOTE_WRITE;
    if responder_resources > 0 {
        a |= IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC;
    }
    a
}

/// The attributes, and their mask, that take a queue pair (UD if `ud`,
/// else connected) to `state`: INIT (`rdma_create_qp`), or RTR and RTS
/// towards `peer` (`local`: what this side said). The library's own
/// transitions and `rdma_init_qp_attr` both come from here.
pub fn attr(state: ibv_qp_state, ud: bool, local: &Conn, peer: Option<&Conn>) -> Result<(ibv_qp_attr, u32), i32> {
    let mut a = ibv_qp_attr { qp_state: state, ..Default::default() };
    let mask = match (state, ud) {
        (IBV_QPS_INIT, _) => {
            (a.pkey_index, a.port_num) = (0, 1);
            if ud {
                a.qkey = RDMA_UDP_QKEY;
                IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_QKEY
            } else {
                a.qp_access_flags = access(1);
                IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS
            }
        }
        (IBV_QPS_RTR, true) => IBV_QP_STATE,
        (IBV_QPS_RTS, true) => {
            a.sq_psn = local.psn;
            IBV_QP_STATE | IBV_QP_SQ_PSN
        }
        (IBV_QPS_RTR, false) => {
            let peer = peer.ok_or(libc::EINVAL)?;
            a.path_mtu = IBV_MTU_4096;
            a.dest_qp_num = peer.qp_num;
            a.rq_psn = peer.psn;
            a.max_dest_rd_atomic = local.responder_resources.max(1);
            a.min_rnr_timer = 12;
            a.qp_access_flags = access(local.responder_resources);
            a.ah_attr.is_global = 1;
            a.ah_attr.port_num = 1;
            a.ah_attr.grh.hop_limit = 1;
            a.ah_attr.grh.dgid.raw = peer.gid;
            IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER | IBV_QP_ACCESS_FLAGS
        }
        (IBV_QPS_RTS, false) => {
            a.sq_psn = local.psn;
            a.timeout = 14;
            a.retry_cnt = local.retry_count.min(7);
            a.rnr_retry = local.rnr_retry_count.min(7);
            a.max_rd_atomic = local.initiator_depth.max(1);
            IBV_QP_STATE | IBV_QP_SQ_PSN | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC
        }
        _ => return Err(libc::EINVAL),
    };
    Ok((a, mask))
}

fn to(qp: usize, state: ibv_qp_state, local: &Conn, peer: Option<&Conn>) -> Result<(), i32> {
    let (mut a, mask) = attr(state, qp_type(qp) == Some(IBV_QPT_UD), local, peer)?;
    modify(qp, &mut a, mask)
}

/// A new queue pair to INIT (`rdma_create_qp`).
pub fn to_init(qp: usize) -> Result<(), i32> {
    to(qp, IBV_QPS_INIT, &Conn::default(), None)
}

/// RTR then RTS towards `peer` (`local`: what this side said).
pub fn to_rts(qp: usize, local: &Conn, peer: &Conn) -> Result<(), i32> {
    to(qp, IBV_QPS_RTR, local, Some(peer))?;
    to(qp, IBV_QPS_RTS, local, Some(peer))
}

/// The queue pair to ERR (0: none): its work requests flush.
pub fn to_err(qp: usize) {
    if qp != 0 {
        let mut a = ibv_qp_attr { qp_state: IBV_QPS_ERR, ..Default::default() };
        let _ = modify(qp, &mut a, IBV_QP_STATE);
    }
}
