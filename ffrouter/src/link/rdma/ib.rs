//! [`Verbs`] on a real RDMA device, through libibverbs (`ibverbs-sys`).
//!
//! Not run on RDMA hardware yet; it runs on soft-RoCE (rdma_rxe, kernel 6.1,
//! rdma-core 44) in the QEMU guests of `testkit/softroce.sh`. RC queue pairs
//! on the device, port and GID index that [`super::gid`] chose (RoCE needs
//! the GID; InfiniBand uses the LID), MTU = the port's active MTU, 7
//! retries and infinite RNR retries. Completion channels let
//! [`Verbs::wait`] sleep.

use std::collections::HashMap;
use std::io;
use std::ptr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ibverbs_sys as ffi;

use super::super::verbs::{Cq, Endpoint, Mr, Op, QpState, SendWr, Verbs, Wc, WcKind, READS_MAX};
use super::gid::{self, Choice};

struct CqPair {
    cq: *mut ffi::ibv_cq,
    ch: *mut ffi::ibv_comp_channel,
    /// Completions polled while arming notification, not yet returned.
    stash: Mutex<Vec<ffi::ibv_wc>>,
}

struct Qp {
    qp: *mut ffi::ibv_qp,
    send: CqPair,
    recv: CqPair,
    psn: u32,
    /// READs it keeps in flight (its max_rd_atomic), set at RTR from the
    /// peer's endpoint.
    reads: AtomicU8,
}

pub struct IbVerbs {
    ctx: *mut ffi::ibv_context,
    pd: *mut ffi::ibv_pd,
    port: u8,
    lid: u16,
    mtu: ffi::ibv_mtu,
    gid_index: u8,
    gid: [u8; 16],
    /// The device's READ depths, at most READS_MAX: as responder
    /// (max_qp_rd_atom) and as initiator (max_qp_init_rd_atom).
    dest_reads: u8,
    init_reads: u8,
    qps: Mutex<HashMap<u32, Box<Qp>>>,
    mrs: Mutex<HashMap<u32, usize>>,
}

// SAFETY: libibverbs objects may be used from any thread; our own maps are
// behind mutexes.
unsafe impl Send for IbVerbs {}
unsafe impl Sync for IbVerbs {}

fn last(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn errno(what: &str, rc: i32) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::new(io::Error::from_raw_os_error(rc).kind(), format!("{what}: {}", io::Error::from_raw_os_error(rc))))
    }
}

impl IbVerbs {
    /// Opens the chosen device.
    pub fn open(dev: &Choice) -> io::Result<IbVerbs> {
        // SAFETY: plain libibverbs calls; every pointer is checked.
        unsafe {
            let mut n = 0;
            let list = ffi::ibv_get_device_list(&mut n);
            if list.is_null() || n == 0 {
                if !list.is_null() {
                    ffi::ibv_free_device_list(list);
                }
                return Err(io::Error::new(io::ErrorKind::NotFound, "no RDMA device"));
            }
            let found = (0..n as usize).map(|i| *list.add(i)).find(|d| {
                let name = ffi::ibv_get_device_name(*d);
                !name.is_null() && std::ffi::CStr::from_ptr(name).to_bytes() == dev.device.as_bytes()
            });
            let ctx = match found {
                Some(d) => ffi::ibv_open_device(d),
                None => {
                    ffi::ibv_free_device_list(list);
                    return Err(io::Error::new(io::ErrorKind::NotFound, format!("no RDMA device {}", dev.device)));
                }
            };
            ffi::ibv_free_device_list(list);
            if ctx.is_null() {
                return Err(last("ibv_open_device"));
            }
            let pd = ffi::ibv_alloc_pd(ctx);
            if pd.is_null() {
                ffi::ibv_close_device(ctx);
                return Err(last("ibv_alloc_pd"));
            }
            let port = dev.port;
            let mut attr: ffi::ibv_port_attr = std::mem::zeroed();
            let rc = ffi::ibv_query_port(ctx, port, &mut attr as *mut ffi::ibv_port_attr as *mut ffi::_compat_ibv_port_attr);
            if rc != 0 {
                ffi::ibv_dealloc_pd(pd);
                ffi::ibv_close_device(ctx);
                return Err(errno("ibv_query_port", rc).unwrap_err());
            }
            let fail = |e: io::Error| {
                ffi::ibv_dealloc_pd(pd);
                ffi::ibv_close_device(ctx);
                Err(e)
            };
            let Ok(gid_index) = u8::try_from(dev.gid_index) else {
                return fail(io::Error::new(io::ErrorKind::InvalidInput, format!("GID index {} out of range", dev.gid_index)));
            };
            let mut gid: ffi::ibv_gid = std::mem::zeroed();
            let rc = ffi::ibv_query_gid(ctx, port, gid_index as i32, &mut gid);
            if rc != 0 {
                return fail(io::Error::other(format!("ibv_query_gid {dev}: {}", io::Error::from_raw_os_error(rc))));
            }
            let gid = gid.raw;
            let mut dev_attr: ffi::ibv_device_attr = std::mem::zeroed();
            let rc = ffi::ibv_query_device(ctx, &mut dev_attr);
            if rc != 0 {
                return fail(io::Error::other(format!("ibv_query_device {dev}: {}", io::Error::from_raw_os_error(rc))));
            }
            // FF_RDMA_READS: a lower cap (an experiment knob).
            let cap = std::env::var("FF_RDMA_READS").ok().and_then(|v| v.parse::<i32>().ok()).unwrap_or(READS_MAX as i32).clamp(1, READS_MAX as i32);
            let depth = |n: i32| n.clamp(1, cap) as u8;
            // The table may have changed since the router chose (addresses
            // come and go): refuse a GID that is no longer the chosen one.
            if let Some(want) = dev.gid {
                if gid != want {
                    return fail(io::Error::other(format!("{dev}: the device now lists {} there; restart the router", gid::show(&gid))));
                }
            }
            Ok(IbVerbs {
                ctx,
                pd,
                port,
                lid: attr.lid,
                mtu: attr.active_mtu,
                gid_index,
                gid,
                dest_reads: depth(dev_attr.max_qp_rd_atom),
                init_reads: depth(dev_attr.max_qp_init_rd_atom),
                qps: Mutex::default(),
                mrs: Mutex::default(),
            })
        }
    }

    unsafe fn cq_pair(&self, depth: u32) -> io::Result<CqPair> {
        let ch = ffi::ibv_create_comp_channel(self.ctx);
        if ch.is_null() {
            return Err(last("ibv_create_comp_channel"));
        }
        // Non-blocking, so that reading an event after poll() never blocks.
        let fd = (*ch).fd;
        libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK);
        let cq = ffi::ibv_create_cq(self.ctx, depth as i32, ptr::null_mut(), ch, 0);
        if cq.is_null() {
            ffi::ibv_destroy_comp_channel(ch);
            return Err(last("ibv_create_cq"));
        }
        Ok(CqPair { cq, ch, stash: Mutex::default() })
    }

    unsafe fn destroy_cq(c: &CqPair) {
        ffi::ibv_destroy_cq(c.cq);
        ffi::ibv_destroy_comp_channel(c.ch);
    }

    fn with_qp<T>(&self, qp: u32, f: impl FnOnce(&Qp) -> io::Result<T>) -> io::Result<T> {
        let qps = self.qps.lock().unwrap();
        let q = qps.get(&qp).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such queue pair"))?;
        f(q)
    }
}

unsafe fn poll_raw(cq: *mut ffi::ibv_cq, max: usize) -> io::Result<Vec<ffi::ibv_wc>> {
    let mut buf: Vec<ffi::ibv_wc> = Vec::with_capacity(max);
    let ops = &mut (*(*cq).context).ops;
    let n = ops.poll_cq.as_mut().expect("provider has poll_cq")(cq, max as i32, buf.as_mut_ptr());
    if n < 0 {
        return Err(io::Error::other("ibv_poll_cq failed"));
    }
    buf.set_len(n as usize);
    Ok(buf)
}

fn convert(wc: &ffi::ibv_wc) -> Wc {
    let status = wc.error().map(|(s, _)| s).unwrap_or(0);
    let kind = match wc.opcode() {
        ffi::ibv_wc_opcode::IBV_WC_RDMA_READ => WcKind::Read,
        ffi::ibv_wc_opcode::IBV_WC_RECV_RDMA_WITH_IMM => WcKind::RecvImm(u32::from_be(wc.imm_data().unwrap_or(0))),
        _ => WcKind::Write,
    };
    Wc { wr_id: wc.wr_id(), kind, status }
}

impl Verbs for IbVerbs {
    fn reg_mr(&self, addr: *mut u8, len: usize) -> io::Result<Mr> {
        let access = ffi::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
            | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE
            | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_READ;
        // SAFETY: the caller keeps the memory mapped while registered.
        let mr = unsafe { ffi::ibv_reg_mr(self.pd, addr as *mut libc::c_void, len, access.0 as i32) };
        if mr.is_null() {
            return Err(last("ibv_reg_mr"));
        }
        // SAFETY: mr is a valid registration.
        let (lkey, rkey) = unsafe { ((*mr).lkey, (*mr).rkey) };
        self.mrs.lock().unwrap().insert(rkey, mr as usize);
        Ok(Mr { addr: addr as u64, len, lkey, rkey })
    }

    fn dereg_mr(&self, mr: &Mr) -> io::Result<()> {
        let p = self.mrs.lock().unwrap().remove(&mr.rkey).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not registered"))?;
        // SAFETY: p came from ibv_reg_mr and is deregistered once.
        errno("ibv_dereg_mr", unsafe { ffi::ibv_dereg_mr(p as *mut ffi::ibv_mr) })
    }

    fn create_qp(&self, send_depth: u32, recv_depth: u32) -> io::Result<u32> {
        // SAFETY: libibverbs calls with checked results; the CQs and QP are
        // destroyed in destroy_qp.
        unsafe {
            let send = self.cq_pair(send_depth)?;
            let recv = match self.cq_pair(recv_depth) {
                Ok(c) => c,
                Err(e) => {
                    Self::destroy_cq(&send);
                    return Err(e);
                }
            };
            let mut init: ffi::ibv_qp_init_attr = std::mem::zeroed();
            init.send_cq = send.cq;
            init.recv_cq = recv.cq;
            init.cap.max_send_wr = send_depth;
            init.cap.max_recv_wr = recv_depth;
            init.cap.max_send_sge = 2;
            init.cap.max_recv_sge = 1;
            init.qp_type = ffi::ibv_qp_type::IBV_QPT_RC;
            let qp = ffi::ibv_create_qp(self.pd, &mut init);
            if qp.is_null() {
                Self::destroy_cq(&send);
                Self::destroy_cq(&recv);
                return Err(last("ibv_create_qp"));
            }
            let qpn = (*qp).qp_num;
            let psn = rand::random::<u32>() & 0xff_ffff;
            self.qps.lock().unwrap().insert(qpn, Box::new(Qp { qp, send, recv, psn, reads: AtomicU8::new(1) }));
            Ok(qpn)
        }
    }

    fn destroy_qp(&self, qp: u32) {
        if let Some(q) = self.qps.lock().unwrap().remove(&qp) {
            // SAFETY: created in create_qp; nothing uses them any more.
            unsafe {
                ffi::ibv_destroy_qp(q.qp);
                Self::destroy_cq(&q.send);
                Self::destroy_cq(&q.recv);
            }
        }
    }

    fn endpoint(&self, qp: u32) -> io::Result<Endpoint> {
        self.with_qp(qp, |q| Ok(Endpoint { qpn: qp, lid: self.lid, gid: self.gid, psn: q.psn, reads: self.dest_reads }))
    }

    fn modify_qp(&self, qp: u32, to: QpState, remote: Option<&Endpoint>) -> io::Result<()> {
        use ffi::ibv_qp_attr_mask as M;
        self.with_qp(qp, |q| {
            // SAFETY: a zeroed ibv_qp_attr is valid; only masked fields count.
            let mut a: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
            let mask = match to {
                QpState::Reset => {
                    a.qp_state = ffi::ibv_qp_state::IBV_QPS_RESET;
                    M::IBV_QP_STATE
                }
                QpState::Init => {
                    a.qp_state = ffi::ibv_qp_state::IBV_QPS_INIT;
                    a.pkey_index = 0;
                    a.port_num = self.port;
                    a.qp_access_flags = (ffi::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
                        | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE
                        | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_READ)
                        .0;
                    M::IBV_QP_STATE | M::IBV_QP_PKEY_INDEX | M::IBV_QP_PORT | M::IBV_QP_ACCESS_FLAGS
                }
                QpState::Rtr => {
                    let r = remote.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "RTR needs the remote endpoint"))?;
                    a.qp_state = ffi::ibv_qp_state::IBV_QPS_RTR;
                    a.path_mtu = self.mtu;
                    a.dest_qp_num = r.qpn;
                    a.rq_psn = r.psn;
                    a.max_dest_rd_atomic = self.dest_reads;
                    q.reads.store(self.init_reads.min(r.reads), Ordering::Relaxed);
                    a.min_rnr_timer = 12;
                    a.ah_attr.dlid = r.lid;
                    a.ah_attr.port_num = self.port;
                    if r.gid != [0; 16] {
                        a.ah_attr.is_global = 1;
                        a.ah_attr.grh.dgid.raw = r.gid;
                        a.ah_attr.grh.sgid_index = self.gid_index;
                        a.ah_attr.grh.hop_limit = 64;
                    }
                    M::IBV_QP_STATE
                        | M::IBV_QP_AV
                        | M::IBV_QP_PATH_MTU
                        | M::IBV_QP_DEST_QPN
                        | M::IBV_QP_RQ_PSN
                        | M::IBV_QP_MAX_DEST_RD_ATOMIC
                        | M::IBV_QP_MIN_RNR_TIMER
                }
                QpState::Rts => {
                    a.qp_state = ffi::ibv_qp_state::IBV_QPS_RTS;
                    a.sq_psn = q.psn;
                    // ACK timeout 4.096 us * 2^18 = 1.07 s, NCCL's default
                    // (NCCL_IB_TIMEOUT): 14 (67 ms) made soft-RoCE under
                    // emulation retransmit hundreds of times per run
                    // (completer_retry_err), READs stalled for seconds and
                    // links died. A dead peer fails an operation after
                    // NIC_RETRY_BUDGET (8.6 s).
                    a.timeout = super::ACK_TIMEOUT_EXP;
                    a.retry_cnt = super::RETRY_CNT;
                    a.rnr_retry = 7;
                    a.max_rd_atomic = q.reads.load(Ordering::Relaxed);
                    M::IBV_QP_STATE | M::IBV_QP_SQ_PSN | M::IBV_QP_TIMEOUT | M::IBV_QP_RETRY_CNT | M::IBV_QP_RNR_RETRY | M::IBV_QP_MAX_QP_RD_ATOMIC
                }
                QpState::Error => {
                    a.qp_state = ffi::ibv_qp_state::IBV_QPS_ERR;
                    M::IBV_QP_STATE
                }
            };
            // SAFETY: q.qp is live; a and mask are consistent.
            errno("ibv_modify_qp", unsafe { ffi::ibv_modify_qp(q.qp, &mut a, mask.0 as i32) })
        })
    }

    fn read_depth(&self, qp: u32) -> io::Result<usize> {
        self.with_qp(qp, |q| Ok(q.reads.load(Ordering::Relaxed) as usize))
    }

    fn post_send(&self, qp: u32, wr: &SendWr) -> io::Result<()> {
        self.with_qp(qp, |q| {
            let mut sges: Vec<ffi::ibv_sge> = wr.sges.iter().map(|s| ffi::ibv_sge { addr: s.addr, length: s.len, lkey: s.lkey }).collect();
            // SAFETY: zeroed ibv_send_wr is valid; we fill what the opcode uses.
            let mut w: ffi::ibv_send_wr = unsafe { std::mem::zeroed() };
            w.wr_id = wr.wr_id;
            w.sg_list = if sges.is_empty() { ptr::null_mut() } else { sges.as_mut_ptr() };
            w.num_sge = sges.len() as i32;
            w.opcode = match wr.op {
                Op::Write => ffi::ibv_wr_opcode::IBV_WR_RDMA_WRITE,
                Op::WriteImm(imm) => {
                    w.__bindgen_anon_1.imm_data = imm.to_be();
                    ffi::ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM
                }
                Op::Read => ffi::ibv_wr_opcode::IBV_WR_RDMA_READ,
            };
            w.send_flags = if wr.signaled { ffi::ibv_send_flags::IBV_SEND_SIGNALED.0 } else { 0 };
            w.wr.rdma.remote_addr = wr.remote_addr;
            w.wr.rdma.rkey = wr.rkey;
            let mut bad: *mut ffi::ibv_send_wr = ptr::null_mut();
            // SAFETY: q.qp is live; w and sges live through the call.
            let rc = unsafe {
                let ops = &mut (*(*q.qp).context).ops;
                ops.post_send.as_mut().expect("provider has post_send")(q.qp, &mut w, &mut bad)
            };
            errno("ibv_post_send", rc)
        })
    }

    fn post_recv(&self, qp: u32, wr_id: u64) -> io::Result<()> {
        self.with_qp(qp, |q| {
            let mut w = ffi::ibv_recv_wr { wr_id, next: ptr::null_mut(), sg_list: ptr::null_mut(), num_sge: 0 };
            let mut bad: *mut ffi::ibv_recv_wr = ptr::null_mut();
            // SAFETY: as for post_send.
            let rc = unsafe {
                let ops = &mut (*(*q.qp).context).ops;
                ops.post_recv.as_mut().expect("provider has post_recv")(q.qp, &mut w, &mut bad)
            };
            errno("ibv_post_recv", rc)
        })
    }

    fn poll(&self, qp: u32, cq: Cq, max: usize) -> io::Result<Vec<Wc>> {
        self.with_qp(qp, |q| {
            let c = match cq {
                Cq::Send => &q.send,
                Cq::Recv => &q.recv,
            };
            let mut out: Vec<Wc> = c.stash.lock().unwrap().drain(..).map(|w| convert(&w)).collect();
            if out.len() < max {
                // SAFETY: c.cq is live.
                out.extend(unsafe { poll_raw(c.cq, max - out.len())? }.iter().map(convert));
            }
            Ok(out)
        })
    }

    fn wait(&self, qp: u32, cq: Cq, timeout: Duration, done: &dyn Fn() -> bool) -> io::Result<()> {
        let (cqp, ch, fd) = self.with_qp(qp, |q| {
            let c = match cq {
                Cq::Send => &q.send,
                Cq::Recv => &q.recv,
            };
            // Arm, then look once more: a completion that arrived before
            // arming raises no event.
            // SAFETY: c.cq is live.
            unsafe {
                let ops = &mut (*(*c.cq).context).ops;
                let rc = ops.req_notify_cq.as_mut().expect("provider has req_notify_cq")(c.cq, 0);
                errno("ibv_req_notify_cq", rc)?;
                let got = poll_raw(c.cq, 16)?;
                let any = !got.is_empty();
                c.stash.lock().unwrap().extend(got);
                if any {
                    return Ok((ptr::null_mut(), ptr::null_mut(), -1));
                }
                Ok((c.cq, c.ch, (*c.ch).fd))
            }
        })?;
        // Armed: what another thread polled before now, the caller finds
        // recorded (not under the queue pairs' lock: `done` takes the
        // caller's, which pollers hold across their poll); what arrives
        // after, the event says.
        if fd < 0 || done() {
            return Ok(());
        }
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd on our stack.
        let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
        if n > 0 {
            let mut ev_cq: *mut ffi::ibv_cq = ptr::null_mut();
            let mut ev_ctx: *mut libc::c_void = ptr::null_mut();
            // SAFETY: the channel is live and readable (non-blocking).
            unsafe {
                if ffi::ibv_get_cq_event(ch, &mut ev_cq, &mut ev_ctx) == 0 {
                    ffi::ibv_ack_cq_events(if ev_cq.is_null() { cqp } else { ev_cq }, 1);
                }
            }
        }
        Ok(())
    }
}

impl Drop for IbVerbs {
    fn drop(&mut self) {
        let qps: Vec<u32> = self.qps.lock().unwrap().keys().copied().collect();
        for q in qps {
            self.destroy_qp(q);
        }
        // SAFETY: everything made from pd/ctx is gone (MRs are deregistered
        // by their owners first; leftovers are released with the context).
        unsafe {
            for (_, p) in self.mrs.lock().unwrap().drain() {
                ffi::ibv_dereg_mr(p as *mut ffi::ibv_mr);
            }
            ffi::ibv_dealloc_pd(self.pd);
            ffi::ibv_close_device(self.ctx);
        }
    }
}
