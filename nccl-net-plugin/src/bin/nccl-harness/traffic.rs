//! Two-process traffic through the plugin, driven like NCCL's proxy:
//! a *service* thread retries `connect`/`accept` until they return a comm
//! (then closes the listen comm, as NCCL does), and a *progress* thread
//! posts `isend`/`irecv` (retrying when the plugin returns a NULL request)
//! with up to `window` requests in flight per comm and `test`s them in
//! posting order.
//!
//! The receiver listens (one listen comm per comm) and prints
//! `HANDLE <hex>,<hex>,...`; the sender connects to those handles.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::abi::{HANDLE_MAXSIZE, PTR_HOST};
use crate::plugin::{Plugin, P, R};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Send,
    Recv,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Mode {
    /// Every size in --sizes, --rounds times per comm, verified.
    Check,
    /// --size messages, --iters per comm, throughput reported.
    Bench,
    /// --size messages until killed (fault tests).
    Flood,
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub mode: Mode,
    pub comms: usize,
    pub window: usize,
    pub sizes: Vec<usize>,
    /// Messages per comm (`None`: forever).
    pub messages: Option<usize>,
    /// Bench/flood: distinct buffers per comm (the window's requests share
    /// them round robin; 1 = one buffer per side, like ucx_perftest).
    pub buffers: usize,
    /// Receiver: post one extra receive on every comm and close it with
    /// that receive still pending.
    pub inflight_close: bool,
}

/// Bytes of message `i` on comm `c`: a deterministic pattern both sides
/// can produce.
fn fill(buf: &mut [u8], c: usize, i: usize) {
    let mut x = (c as u64) << 40 ^ (i as u64) << 8 ^ buf.len() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut chunks = buf.chunks_exact_mut(8);
    for w in &mut chunks {
        w.copy_from_slice(&next().to_le_bytes());
    }
    let tail = chunks.into_remainder();
    let last = next().to_le_bytes();
    tail.copy_from_slice(&last[..tail.len()]);
}

/// Room a receive has beyond the message, so `test` must report the size.
const RECV_SLACK: usize = 64;

struct InFlight {
    req: P,
    index: usize,
    size: usize,
    buf: Buf,
}

/// A request's buffer: its own (check mode: filled, verified, then freed)
/// or one of the comm's reused, registered buffers (bench and flood).
enum Buf {
    Own(Vec<u8>, P),
    Shared(usize),
}

struct CommRun {
    index: usize,
    comm: P,
    next: usize,
    inflight: VecDeque<InFlight>,
    /// Bench/flood: `buffers` registered buffers, used round robin.
    shared: Vec<(Vec<u8>, P)>,
    crc: crc32fast::Hasher,
    bytes: u64,
    done_msgs: usize,
    started: Instant,
    finished: Option<Instant>,
}

/// What one side saw.
pub struct Summary {
    pub messages: usize,
    pub bytes: u64,
    pub crcs: Vec<u32>,
    pub mismatches: usize,
    pub elapsed: Duration,
}

/// The service thread: connect or accept every comm, hand each to the
/// progress thread as soon as it exists.
pub fn service(plugin: Arc<Plugin>, setups: Vec<Setup>, out: Sender<(usize, P)>) -> R<()> {
    let mut pending: Vec<(usize, Setup)> = setups.into_iter().enumerate().collect();
    while !pending.is_empty() {
        let mut left = Vec::new();
        for (i, s) in pending {
            let got = match &s {
                Setup::Connect(h) => plugin.connect(0, h)?,
                Setup::Accept(lc) => {
                    let rc = plugin.accept(*lc)?;
                    if rc.is_some() {
                        plugin.close_listen(*lc)?; // NCCL closes it right after accept
                    }
                    rc
                }
            };
            match got {
                Some(comm) => {
                    if out.send((i, comm)).is_err() {
                        return Ok(()); // progress thread gave up
                    }
                }
                None => left.push((i, s)),
            }
        }
        pending = left;
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

pub enum Setup {
    Connect(Box<[u8; HANDLE_MAXSIZE]>),
    Accept(P),
}

/// The progress thread: moves every comm's messages, then closes the comms
/// (receiver: each as soon as it is done; sender: all at the end, in
/// reverse order, so the two sides close in different orders).
pub fn progress(plugin: Arc<Plugin>, role: Role, spec: Spec, comms: Receiver<(usize, P)>) -> R<Summary> {
    let start = Instant::now();
    let mut runs: Vec<CommRun> = Vec::new();
    let mut finished: Vec<CommRun> = Vec::new();
    let mut service_done = false;
    let mut announced = false;
    let mut mismatches = 0;
    while !(service_done && runs.is_empty()) {
        loop {
            match comms.try_recv() {
                Ok((index, comm)) => runs.push(CommRun {
                    index,
                    comm,
                    next: 0,
                    inflight: VecDeque::new(),
                    shared: Vec::new(),
                    crc: crc32fast::Hasher::new(),
                    bytes: 0,
                    done_msgs: 0,
                    started: Instant::now(),
                    finished: None,
                }),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    service_done = true;
                    break;
                }
            }
        }
        let mut moved = false;
        for run in runs.iter_mut() {
            moved |= step(&plugin, role, &spec, run, &mut mismatches)?;
            if spec.mode == Mode::Flood && run.done_msgs > 0 && !announced {
                announced = true;
                println!("FLOODING");
                std::io::stdout().flush().ok();
            }
        }
        let (done, active): (Vec<_>, Vec<_>) =
            runs.into_iter().partition(|r| spec.messages.is_some_and(|m| r.done_msgs == m) && r.inflight.is_empty());
        runs = active;
        for mut run in done {
            run.finished = Some(Instant::now());
            if role == Role::Recv {
                close(&plugin, role, &spec, &mut run)?;
            }
            finished.push(run);
        }
        if !moved {
            std::thread::yield_now();
        }
    }
    if role == Role::Send {
        finished.sort_by_key(|r| std::cmp::Reverse(r.index));
        for run in finished.iter_mut() {
            close(&plugin, role, &spec, run)?;
        }
    }
    finished.sort_by_key(|r| r.index);
    let first = finished.iter().map(|r| r.started).min().unwrap_or(start);
    let last = finished.iter().filter_map(|r| r.finished).max().unwrap_or_else(Instant::now);
    Ok(Summary {
        messages: finished.iter().map(|r| r.done_msgs).sum(),
        bytes: finished.iter().map(|r| r.bytes).sum(),
        crcs: finished.iter().map(|r| r.crc.clone().finalize()).collect(),
        mismatches,
        elapsed: last - first,
    })
}

fn size_of_msg(spec: &Spec, c: usize, i: usize) -> usize {
    spec.sizes[(i + c) % spec.sizes.len()]
}

/// One pass over one comm: post what the window allows, test the oldest.
fn step(plugin: &Plugin, role: Role, spec: &Spec, run: &mut CommRun, mismatches: &mut usize) -> R<bool> {
    let mut moved = false;
    let tag = run.index as i32;
    while run.inflight.len() < spec.window && spec.messages.is_none_or(|m| run.next < m) {
        let size = size_of_msg(spec, run.index, run.next);
        let cap = if role == Role::Recv { size + RECV_SLACK } else { size };
        let mut buf = if spec.mode == Mode::Check {
            let mut v = vec![0u8; cap];
            if role == Role::Send {
                fill(&mut v, run.index, run.next);
            }
            let mh = plugin.reg_mr(run.comm, v.as_ptr(), v.len(), PTR_HOST)?;
            Buf::Own(v, mh)
        } else {
            if run.shared.is_empty() {
                for _ in 0..spec.buffers.max(1) {
                    let v = vec![0x5au8; cap];
                    let mh = plugin.reg_mr(run.comm, v.as_ptr(), v.len(), PTR_HOST)?;
                    run.shared.push((v, mh));
                }
            }
            Buf::Shared(run.next % run.shared.len())
        };
        let (ptr, mh) = match &mut buf {
            Buf::Own(v, mh) => (v.as_mut_ptr(), *mh),
            Buf::Shared(i) => (run.shared[*i].0.as_mut_ptr(), run.shared[*i].1),
        };
        // SAFETY: an own buffer moves into `run.inflight` below (its heap
        // block does not move) and a shared one stays in `run.shared`, until
        // `test` reports completion or the comm is closed. Concurrent
        // receives into a shared buffer (bench mode) are not inspected.
        let req = unsafe {
            match role {
                Role::Send => plugin.isend(run.comm, ptr, size, tag, mh)?,
                Role::Recv => plugin.irecv(run.comm, ptr, cap, tag, mh)?,
            }
        };
        let Some(req) = req else {
            // The plugin cannot post now; NCCL would retry on its next pass.
            if let Buf::Own(_, mh) = buf {
                plugin.dereg_mr(run.comm, mh)?;
            }
            break;
        };
        run.inflight.push_back(InFlight { req, index: run.next, size, buf });
        run.next += 1;
        moved = true;
    }
    if let Some(front) = run.inflight.front() {
        if let Some(got) = plugin.test(front.req)? {
            let f = run.inflight.pop_front().unwrap();
            moved = true;
            if got != f.size {
                eprintln!("comm {} message {}: test reported {got} bytes, expected {}", run.index, f.index, f.size);
                *mismatches += 1;
            }
            if let Buf::Own(v, mh) = &f.buf {
                let data = &v[..got.min(v.len())];
                if role == Role::Recv {
                    let mut expect = vec![0u8; f.size];
                    fill(&mut expect, run.index, f.index);
                    if data != &expect[..] {
                        eprintln!("comm {} message {} ({} bytes): data differs", run.index, f.index, f.size);
                        *mismatches += 1;
                    }
                }
                run.crc.update(&(got as u64).to_le_bytes());
                run.crc.update(data);
                plugin.dereg_mr(run.comm, *mh)?;
            }
            run.bytes += got as u64;
            run.done_msgs += 1;
        }
    }
    Ok(moved)
}

fn close(plugin: &Plugin, role: Role, spec: &Spec, run: &mut CommRun) -> R<()> {
    let mut pending = None;
    if role == Role::Recv && spec.inflight_close {
        let mut buf = vec![0u8; 4096];
        // SAFETY: `buf` outlives the comm's closing below.
        let req = unsafe { plugin.irecv(run.comm, buf.as_mut_ptr(), buf.len(), run.index as i32, P::NULL)? };
        pending = Some((buf, req));
    }
    for (_, mh) in run.shared.drain(..) {
        plugin.dereg_mr(run.comm, mh)?;
    }
    match role {
        Role::Send => plugin.close_send(run.comm)?,
        Role::Recv => plugin.close_recv(run.comm)?,
    }
    // The buffer of the abandoned receive may go only now.
    drop(pending);
    Ok(())
}
