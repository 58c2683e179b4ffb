//! Pump workers: a few threads forward the outgoing bytes of every
//! connection to another host (see [`Pump`]).
//!
//! A connection is handed to one worker for its life: the least loaded of
//! the first `--workers` (default: the cores, at most 4), each serving at
//! most [`PER_WORKER`] connections; more connections than that start more
//! workers. So the router's threads depend on its cores and links, not on
//! its connections (`1 + ⌈N / 127⌉` at most beyond `--workers`).
//!
//! A worker takes turns among its connections ([`Pump::step`]):
//! - a connection *awake* is looked at every turn; one that moved nothing
//!   for [`super::spin`] goes to sleep as a pump thread used to: announce
//!   the sleep on the router side's wake word (`prepare_sleep`), check once
//!   more (`Pump::ready`), then count it asleep with the word's value. A
//!   connection a receiver thread covers sleeps without announcing it: the
//!   cover's end announces the sleep for it and wakes it only if there is
//!   something to do (until 2026-12-03 it always woke it);
//! - a connection *asleep* costs one load of its wake word per turn: when
//!   the word moved, it is awake again (and its announcement withdrawn);
//! - when every connection sleeps, the worker sleeps on all their words and
//!   its own bell (new connections) at once with `futex_waitv`
//!   ([`ffcore::futex::wait_any_timeout`]). A word woken or changed since it
//!   was read ends the wait, so no event between the last check and the
//!   sleep is lost. After [`super::nap`] (200 ms) without any, it looks at each
//!   sleeping connection once (`Pump::ready`) as a safety net. A look that
//!   finds none to wake doubles the next nap, up to [`super::nap_max`]
//!   (1.6 s); any event, new connection or look that wakes one starts
//!   again at 200 ms ([`next_nap`]). Each look costs a few µs per sleeping
//!   connection (its control page, and `futex_waitv` keying its shared
//!   word again), which at 512 idle connections was nearly all the routers'
//!   idle CPU.
//!
//! Tenants: while connections of two or more tenants are awake, a round
//! gives each *tenant* one turn's worth of the link, through as many of
//! its connections as that takes; the others wait at the front of the
//! queue ([`Tenants`]), so a tenant's share of a worker does not grow with
//! its connections. Across workers: every tenant has a *level*, what all
//! its connections handed the router's links ([`Pump::meter`]); on a
//! worker, a tenant more than a turn above the lowest level there waits
//! while those below hand the link whole turns, and goes whenever they
//! have less. So a tenant that has a worker to itself does not also get
//! an equal part of the workers it shares, and no worker idles while one
//! of its connections could send. A level more than [`LAG_MAX`] below the
//! highest on a worker is raised to that (a tenant back from idle goes
//! first for 8 MiB at most, not for all it did not use).
//!
//! That evens out a shared worker, not the workers: one that serves only
//! tenants ahead would still take its part of the cores and the link (a
//! one-connection tenant beside a sixteen-connection one on two workers
//! got 0.12-0.24 of the link). So a worker that finds a tenant with a whole
//! turn's worth left after its turn notes it on the pool's [`Backlog`]; a
//! worker whose awake tenants are all more than [`AHEAD`] turns above a
//! tenant noted there in the last [`BACKLOG_FRESH`] (and not served here) naps
//! [`YIELD`] instead of its round, leaving the cores and the link to the
//! worker that serves the one behind. It goes on as soon as that tenant has
//! caught up, the worker that noted it found it idle, or it has had less to
//! send for [`BACKLOG_FRESH`]: a tenant held back by its own peer or round
//! trips, not by the others, is never noted.
//!
//! Sends: a connection alone awake on its worker sends as its pump thread
//! did (`Mode::Block`: waits in the kernel while the link is full, so one
//! connection's figures are those of a thread of its own). With others
//! awake, each sends only what the link takes now (`Mode::Try`), so a full
//! link, or a slow one, never holds up the others' turns; when a whole turn
//! moved nothing and some connections wait for their link, the worker waits
//! on one of those links (in turn) with `Mode::Block`. One turn of a
//! connection sends at most what its peer's credit allows (its ring).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ffcore::futex::{self, Woken, WAITV_MAX};
use ffcore::polite::Polite;

use super::*;

/// Most connections one worker serves: one `futex_waitv` call covers their
/// wake words and the worker's bell.
pub const PER_WORKER: usize = WAITV_MAX - 1;

/// A worker's next nap: `base` again after an event, a new connection, or
/// a look that woke a connection; else (a look that found nothing) twice
/// `now`, at most `max`.
pub(crate) fn next_nap(now: Duration, timed_out: bool, woke_any: bool, base: Duration, max: Duration) -> Duration {
    if !timed_out || woke_any {
        base
    } else {
        (now * 2).min(max).max(base)
    }
}

/// The default number of workers: the cores, at most 4.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(4)
}

/// The router's pump workers (started as connections come).
pub struct Pool {
    /// Workers to spread connections over before piling them up.
    base: usize,
    workers: Mutex<Vec<Arc<Worker>>>,
    /// Each tenant's [`Pump::meter`]; an entry goes with the last
    /// connection of its tenant (at the next tenant's first).
    meters: Mutex<HashMap<Arc<str>, Weak<AtomicU64>>>,
    /// Shared with the workers.
    backlog: Arc<Backlog>,
}

/// How long a tenant stays noted on the [`Backlog`] after a worker last
/// found it with more to send than a turn, unless that worker finds it
/// idle first. Longer than a worker may wait for a core when every
/// core is busy (2 ms was not: the note went stale while the worker that
/// serves the tenant waited, the others stopped yielding, and a tenant's
/// one connection beside another's sixteen got 0.13-0.20 of the link with
/// a busy loop per core, instead of half).
const BACKLOG_FRESH: Duration = Duration::from_millis(10);
/// How far (in turns) every tenant on a worker must be above a backlogged
/// tenant elsewhere for the worker to yield to it.
const AHEAD: u64 = 2;
/// A worker's nap when it yields.
const YIELD: Duration = Duration::from_micros(100);

/// Tenants a worker found with more than a turn's worth to send, and when
/// (see the module's "Tenants"). Few entries: a list, pruned as it goes.
#[derive(Default)]
struct Backlog(Mutex<Vec<(Arc<AtomicU64>, Instant)>>);

impl Backlog {
    /// The tenant of `meter` had more than a turn's worth to send at `now`.
    fn note(&self, meter: &Arc<AtomicU64>, now: Instant) {
        let mut b = self.0.lock().unwrap();
        b.retain(|(m, at)| !Arc::ptr_eq(m, meter) && now.saturating_duration_since(*at) < BACKLOG_FRESH);
        b.push((meter.clone(), now));
    }

    /// The worker that noted `meter`'s tenant found it idle: it is not
    /// backlogged any more.
    fn clear(&self, meter: &Arc<AtomicU64>) {
        self.0.lock().unwrap().retain(|(m, _)| !Arc::ptr_eq(m, meter));
    }

    /// Is a tenant that is not in `here` backlogged, and more than `ahead`
    /// below every level in `here`?
    fn behind(&self, here: &Tenants, ahead: u64, now: Instant) -> bool {
        let Some(low) = here.0.iter().map(|t| t.level).min() else { return false };
        let b = self.0.lock().unwrap();
        b.iter().any(|(m, at)| {
            now.saturating_duration_since(*at) < BACKLOG_FRESH
                && !here.0.iter().any(|t| Arc::ptr_eq(&t.meter, m))
                && m.load(Ordering::Relaxed).saturating_add(ahead) < low
        })
    }
}

struct Worker {
    /// Its number (diagnostics).
    id: usize,
    /// Connections handed to this worker, not picked up yet.
    inbox: Mutex<Vec<Pump>>,
    /// Connections it serves or will (for choosing a worker).
    load: AtomicUsize,
    /// Of those, how many use each link stream number (see `Pool::add`).
    on_stream: [AtomicUsize; STREAM_COUNTS],
    /// Bumped, and woken, when the inbox gets a connection or the pool goes.
    bell: AtomicU32,
    /// Its current nap in ms (diagnostics, tests; see [`next_nap`]).
    nap_ms: AtomicU64,
    /// The pool is gone: the worker ends once its connections have.
    closed: AtomicBool,
    /// Connections to hand over to a newer worker (so that all share the
    /// cores evenly), and to which.
    shed: Mutex<Option<(usize, Arc<Worker>)>>,
    /// The pool's.
    backlog: Arc<Backlog>,
}

/// Stream numbers counted apart per worker (a link has at most 65).
const STREAM_COUNTS: usize = 66;

impl Worker {
    /// Connections on stream `s` (of any link) that it serves or will.
    fn on(&self, s: usize) -> &AtomicUsize {
        &self.on_stream[s.min(STREAM_COUNTS - 1)]
    }

    /// Lets a connection whose forwarding ended go, and stops counting it.
    fn retire(&self, p: Pump, res: Result<(), Stop>) {
        self.on(p.f.stream()).fetch_sub(1, Ordering::Relaxed);
        p.finish(res);
        self.load.fetch_sub(1, Ordering::Relaxed);
    }

    fn ring(&self) {
        self.bell.fetch_add(1, Ordering::SeqCst);
        futex::wake_all(&self.bell);
    }
}

impl Pool {
    pub fn new(workers: usize) -> Pool {
        Pool { base: workers.max(1), workers: Mutex::default(), meters: Mutex::default(), backlog: Arc::default() }
    }

    /// Worker threads started.
    pub fn threads(&self) -> usize {
        self.workers.lock().unwrap().len()
    }

    /// Connections each worker serves (diagnostics).
    pub fn loads(&self) -> Vec<usize> {
        self.workers.lock().unwrap().iter().map(|w| w.load.load(Ordering::Relaxed)).collect()
    }

    /// Each worker's current nap (tests).
    #[cfg(test)]
    pub fn naps(&self) -> Vec<Duration> {
        self.workers.lock().unwrap().iter().map(|w| Duration::from_millis(w.nap_ms.load(Ordering::Relaxed))).collect()
    }

    /// Per worker, its connections on each of the first `n` stream
    /// numbers (tests).
    #[cfg(test)]
    pub fn on_streams(&self, n: usize) -> Vec<Vec<usize>> {
        self.workers.lock().unwrap().iter().map(|w| (0..n).map(|s| w.on(s).load(Ordering::Relaxed)).collect()).collect()
    }

    /// The meter the connections of `tenant` share.
    fn meter(&self, tenant: &Arc<str>) -> Arc<AtomicU64> {
        let mut m = self.meters.lock().unwrap();
        if let Some(a) = m.get(tenant).and_then(Weak::upgrade) {
            return a;
        }
        m.retain(|_, w| w.strong_count() > 0);
        let a = Arc::new(AtomicU64::new(0));
        m.insert(tenant.clone(), Arc::downgrade(&a));
        a
    }

    /// Hands a connection to a worker: of those with room, the one with
    /// the fewest connections on its link stream, then the least loaded;
    /// or a new one while there are fewer than `base` (or none has room).
    /// Each worker's turns give each stream to one of its connections on
    /// it at a time, so a worker with few connections on a stream would
    /// give each of them a bigger share of that stream: stream numbers are
    /// spread evenly over the workers. (Connection ids alternate between
    /// two workers and streams are `id % streams`, so by load alone one
    /// worker had 7 of its 102 connections on two of the four streams,
    /// and those 7 moved ten times as much as the others.)
    pub fn add(&self, mut p: Pump) -> std::io::Result<()> {
        p.meter = self.meter(&p.f.regions.tenant);
        let st = p.f.stream();
        let mut ws = self.workers.lock().unwrap();
        let best = ws
            .iter()
            .filter(|w| w.load.load(Ordering::Relaxed) < PER_WORKER)
            .min_by_key(|w| (w.on(st).load(Ordering::Relaxed), w.load.load(Ordering::Relaxed)));
        let w = match best {
            Some(w) if w.load.load(Ordering::Relaxed) == 0 || ws.len() >= self.base => w.clone(),
            _ => {
                let w = Arc::new(Worker {
                    id: ws.len(),
                    inbox: Mutex::default(),
                    load: AtomicUsize::new(0),
                    on_stream: std::array::from_fn(|_| AtomicUsize::new(0)),
                    bell: AtomicU32::new(0),
                    nap_ms: AtomicU64::new(0),
                    closed: AtomicBool::new(false),
                    shed: Mutex::default(),
                    backlog: self.backlog.clone(),
                });
                let w2 = w.clone();
                std::thread::Builder::new().name(format!("pump-{}", ws.len())).spawn(move || run(&w2))?;
                if ws.len() >= self.base {
                    // Every worker is full: each gives the new one its
                    // excess over an even share, so that connections on
                    // the new worker do not get a thread's share each.
                    let total: usize = ws.iter().map(|x| x.load.load(Ordering::Relaxed)).sum::<usize>() + 1;
                    let share = total / (ws.len() + 1);
                    for x in ws.iter() {
                        let over = x.load.load(Ordering::Relaxed).saturating_sub(share);
                        if over > 0 {
                            x.load.fetch_sub(over, Ordering::Relaxed);
                            w.load.fetch_add(over, Ordering::Relaxed);
                            let mut sh = x.shed.lock().unwrap();
                            let before = sh.take().map_or(0, |(n, _)| n);
                            *sh = Some((before + over, w.clone()));
                            drop(sh);
                            x.ring();
                        }
                    }
                }
                ws.push(w.clone());
                w
            }
        };
        w.load.fetch_add(1, Ordering::Relaxed);
        w.on(st).fetch_add(1, Ordering::Relaxed);
        w.inbox.lock().unwrap().push(p);
        w.ring();
        Ok(())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for w in self.workers.lock().unwrap().iter() {
            w.closed.store(true, Ordering::SeqCst);
            w.ring();
        }
    }
}

#[derive(Clone, Copy)]
enum Doze {
    /// Looked at every turn; `last`: when it last moved something.
    Awake { last: Instant },
    /// Asleep on its wake word, which held `seen`; `announced`: it told its
    /// client (`prepare_sleep`), which is then withdrawn on waking.
    Asleep { seen: u32, announced: bool },
}

struct Slot {
    p: Pump,
    doze: Doze,
}

impl Slot {
    /// Withdraws the sleep announced to its client, by it or by the
    /// receiver thread that covered it ([`super::Cover`]'s drop).
    fn withdraw(&self) {
        if let Doze::Asleep { .. } = self.doze {
            self.p.f.router_side().cancel_sleep();
        }
    }

    /// Awake again: looked at every turn.
    fn wake(&mut self, now: Instant) {
        self.withdraw();
        self.doze = Doze::Awake { last: now };
    }
}

/// What a turn of a worker did with one connection.
enum Turn {
    Keep,
    Moved,
    Blocked,
    /// Forwarding ended, this way.
    Gone(Result<(), Stop>),
}

/// How far a tenant's level (what it handed links, [`Pump::meter`]) may
/// lag the level of the tenant most ahead on a worker: a tenant back from
/// idle, or new, is raised to that, so it goes first for this much at
/// most instead of for all it did not use.
const LAG_MAX: u64 = 8 << 20;

/// A tenant with connections awake on a worker this round.
struct Tenant {
    /// Its [`Pump::meter`]: what it handed the router's links. The pool
    /// gives each tenant one, so the meter also tells the tenant.
    meter: Arc<AtomicU64>,
    /// The meter at the start of the round.
    level: u64,
    /// What it handed the link on this worker this round.
    spent: u64,
    /// Its level is more than a turn above the lowest here: it waits while
    /// those behind it have a turn's worth to send.
    ahead: bool,
}

/// The tenants with connections awake on a worker (see `run`). A worker
/// has few tenants: a list, kept between rounds so that a round allocates
/// nothing.
#[derive(Default)]
struct Tenants(Vec<Tenant>);

impl Tenants {
    fn clear(&mut self) {
        self.0.clear();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// The tenant of `p` (added, with its level now, if new this round).
    fn of(&mut self, p: &Pump) -> &mut Tenant {
        self.get(&p.meter)
    }

    /// The tenant whose meter is `meter`.
    fn get(&mut self, meter: &Arc<AtomicU64>) -> &mut Tenant {
        let i = match self.0.iter().position(|x| Arc::ptr_eq(&x.meter, meter)) {
            Some(i) => i,
            None => {
                let level = meter.load(Ordering::Relaxed);
                self.0.push(Tenant { meter: meter.clone(), level, spent: 0, ahead: false });
                self.0.len() - 1
            }
        };
        &mut self.0[i]
    }

    /// Raises levels more than [`LAG_MAX`] below the highest to that, and
    /// marks the tenants more than `turn` above the lowest as ahead.
    fn rank(&mut self, turn: u64) {
        let floor = self.0.iter().map(|t| t.level).max().unwrap_or(0).saturating_sub(LAG_MAX);
        for t in &mut self.0 {
            if t.level < floor {
                t.meter.fetch_max(floor, Ordering::Relaxed);
                t.level = floor;
            }
        }
        let low = self.0.iter().map(|t| t.level).min().unwrap_or(0);
        for t in &mut self.0 {
            t.ahead = t.level > low.saturating_add(turn);
        }
    }

    /// The tenants not ahead that handed the link a whole turn's worth
    /// this round (so they may have more).
    fn busy_behind(&self, turn: u64) -> impl Iterator<Item = &Tenant> {
        self.0.iter().filter(move |t| !t.ahead && t.spent >= turn)
    }

    /// Is there one ([`Tenants::busy_behind`])?
    fn behind_busy(&self, turn: u64) -> bool {
        self.busy_behind(turn).next().is_some()
    }
}

fn run(w: &Arc<Worker>) {
    let mut slots: Vec<Slot> = Vec::new();
    let mut bell_seen = w.bell.load(Ordering::SeqCst);
    let mut took = true;
    // The turn's queue is rebuilt in these two, kept (empty) between
    // turns so that a turn allocates nothing.
    let (mut spare, mut back): (Vec<Slot>, Vec<Slot>) = (Vec::new(), Vec::new());
    let mut blocked: Vec<usize> = Vec::new();
    let mut tenants = Tenants::default();
    let mut later: Vec<Slot> = Vec::new();
    // Tenants this worker noted on the backlog last round, and this one's.
    let (mut noted, mut busy): (Vec<Arc<AtomicU64>>, Vec<Arc<AtomicU64>>) = (Vec::new(), Vec::new());
    let mut degraded = false;
    let mut napping = nap();
    w.nap_ms.store(napping.as_millis() as u64, Ordering::Relaxed);
    // Idle connections spin a while before they sleep, yielding the core
    // between looks, unless yields lose it to a busy process: then they
    // sleep at once.
    let mut yields = Polite::new(ffcore::polite::LOST_IN_A_ROW);
    loop {
        if took {
            // Read the bell before the inbox: a connection added after
            // this read rings it again.
            bell_seen = w.bell.load(Ordering::SeqCst);
            let new = std::mem::take(&mut *w.inbox.lock().unwrap());
            let now = Instant::now();
            // New connections first in the queue: their set-up (an
            // incoming one's ACCEPT) does not wait behind data.
            for p in &new {
                p.f.worker.store(w.id, Ordering::Relaxed);
            }
            slots.splice(0..0, new.into_iter().map(|p| Slot { p, doze: Doze::Awake { last: now } }));
            took = false;
            shed(w, &mut slots);
        }
        if slots.is_empty() && w.closed.load(Ordering::SeqCst) {
            return;
        }

        // Wake the sleepers whose word moved.
        let now = Instant::now();
        let (mut awake, mut smallest) = (0, usize::MAX);
        tenants.clear();
        for s in slots.iter_mut() {
            if let Doze::Asleep { seen, .. } = s.doze {
                if s.p.f.router_side().wake.load(Ordering::SeqCst) == seen {
                    continue;
                }
                s.wake(now);
            }
            awake += 1;
            smallest = smallest.min(s.p.f.turn_ring());
            tenants.of(&s.p);
        }
        // Turns no bigger than the smallest busy connection can fill
        // (half its ring: the rest may be in flight or unread): with rings
        // of 4 MiB and 512 KiB (`scaled_ring`), 512 KiB turns gave those
        // with 512 KiB rings 0.65-0.75x the others' share.
        let cap = Quantum::Turn(smallest / 2);
        // A turn: every connection awake, once, in the order of a queue:
        // whoever moved goes to the back, so that those the link had no
        // room for get it first next turn.
        let (mode, quantum) = if awake <= 1 { (Mode::Block, Quantum::All) } else { (Mode::Try, cap) };
        // With connections of several tenants awake, turns are the
        // tenants': each may hand the link one turn's worth per round,
        // through as many of its connections (in queue order) as that
        // takes; the rest of its connections wait at the front of the
        // queue for the next round. A tenant with one connection then
        // gets as much of the worker as one with a hundred. And those
        // whose level (what they handed all of the router's links) is
        // more than a turn ahead of the lowest here wait for a round in
        // which those behind them had less than a turn's worth to send:
        // so a tenant that other workers serve too does not also get an
        // equal part of this one (their levels even out), and the worker
        // never idles while any of its connections could send.
        let turn_size = turn_quantum().min(smallest / 2).max(1) as u64;
        let budget = (tenants.len() > 1).then_some(turn_size);
        if let Some(b) = budget {
            tenants.rank(b);
        }
        // Every tenant here far ahead of one backlogged on another worker:
        // yield the cores and the link to that worker for a moment (set-up
        // and new connections do not wait).
        if awake > 0 && w.backlog.behind(&tenants, AHEAD * turn_size, now) && !slots.iter().any(|s| s.p.first.is_some()) {
            std::thread::sleep(YIELD);
            if w.bell.load(Ordering::SeqCst) != bell_seen {
                took = true;
            }
            continue;
        }
        let (mut moved, mut spinning) = (false, false);
        let spin_for = if yields.may_yield() { spin() } else { Duration::ZERO };
        blocked.clear();
        let mut front = std::mem::take(&mut spare);
        // A connection's turn, unless `wait`; `metered`: its tenant's
        // turns are counted (awake, with other tenants awake here).
        let mut serve = |mut s: Slot, tenants: &mut Tenants, wait: bool| {
            let mut quantum = quantum;
            let metered = budget.is_some() && matches!(s.doze, Doze::Awake { .. });
            if let (true, Some(budget)) = (metered, budget) {
                let spent = tenants.of(&s.p).spent;
                // (Set-up never waits: an ACCEPT still to send goes now.)
                if (wait || spent >= budget) && s.p.first.is_none() {
                    front.push(s); // its tenant had its turn this round
                    return;
                }
                quantum = Quantum::Turn(budget.saturating_sub(spent).max(1) as usize);
            }
            let res = turn(&mut s, mode, quantum, now, spin_for);
            if metered {
                tenants.of(&s.p).spent += s.p.handed;
            }
            match res {
                Turn::Gone(res) => {
                    w.retire(s.p, res);
                    return;
                }
                Turn::Moved => {
                    moved = true;
                    back.push(s);
                    return;
                }
                Turn::Blocked => {
                    blocked.push(front.len());
                }
                Turn::Keep => spinning |= matches!(s.doze, Doze::Awake { .. }),
            }
            front.push(s);
        };
        for s in slots.drain(..) {
            if budget.is_some() && matches!(s.doze, Doze::Awake { .. }) && s.p.first.is_none() && tenants.of(&s.p).ahead {
                later.push(s);
            } else {
                serve(s, &mut tenants, false);
            }
        }
        let wait = budget.is_some_and(|b| tenants.behind_busy(b));
        for s in later.drain(..) {
            serve(s, &mut tenants, wait);
        }
        // Notes the tenants left with a turn's worth or more; clears those
        // it noted that are not awake here any more (gone idle). One
        // still awake with less to send stays noted until the note is
        // stale: with every core busy its own sender may just be waiting
        // for a core, and the others' yielding gives it one.
        busy.clear();
        if let Some(b) = budget {
            busy.extend(tenants.busy_behind(b).map(|t| t.meter.clone()));
        }
        for m in &busy {
            w.backlog.note(m, now);
        }
        for m in noted.drain(..) {
            if busy.iter().any(|b| Arc::ptr_eq(b, &m)) {
                continue;
            }
            if tenants.0.iter().any(|t| Arc::ptr_eq(&t.meter, &m)) {
                busy.push(m);
            } else {
                w.backlog.clear(&m);
            }
        }
        // Next round's: those noted now, and those still awake.
        std::mem::swap(&mut noted, &mut busy);
        front.append(&mut back);
        spare = std::mem::replace(&mut slots, front);
        if w.bell.load(Ordering::SeqCst) != bell_seen {
            took = true;
            continue;
        }
        if moved {
            continue;
        }
        if let Some(&k) = blocked.first() {
            // Nothing moved and some wait for their link. Where the link
            // holds part of a frame it took (sealed TCP), send that (a
            // gather at most) and take turns again; else wait on the first
            // of those links in this turn's order, in the kernel.
            let mut flushed = false;
            for &b in &blocked {
                flushed |= slots[b].p.flush_link();
            }
            if flushed {
                continue;
            }
            match turn(&mut slots[k], Mode::Block, cap, Instant::now(), spin_for) {
                Turn::Gone(res) => w.retire(slots.remove(k).p, res),
                Turn::Moved => {
                    // It had its turn: to the back of the queue.
                    let s = slots.remove(k);
                    slots.push(s);
                }
                _ => {}
            }
            continue;
        }
        if spinning {
            // Yields lost: the next turn puts them to sleep.
            if !yields.yield_now() {
                CONTENDED.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        // Every connection sleeps (or there is none): so does the worker.
        let mut words: Vec<(*const AtomicU32, u32)> = Vec::with_capacity(slots.len() + 1);
        for s in &slots {
            if let Doze::Asleep { seen, .. } = s.doze {
                words.push((s.p.f.router_side().wake as *const AtomicU32, seen));
            }
        }
        words.push((&w.bell as *const AtomicU32, bell_seen));
        let timeout = if slots.is_empty() { Duration::from_secs(1) } else { napping };
        let woken = if degraded {
            std::thread::sleep(Duration::from_millis(1));
            Woken::Interrupted
        } else {
            // SAFETY: each slot's Fwd keeps its connection file mapped, and
            // `w` the bell, for the call; at most PER_WORKER + 1 words.
            match unsafe { futex::wait_any_timeout(&words, timeout) } {
                Ok(x) => x,
                Err(e) => {
                    log::warn!("futex_waitv failed ({e}; Linux 5.16 or later has it): pump workers fall back to a 1 ms poll");
                    degraded = true;
                    Woken::Interrupted
                }
            }
        };
        let mut woke_any = false;
        if woken == Woken::TimedOut {
            // The safety net: a look at each sleeping connection.
            let now = Instant::now();
            for s in slots.iter_mut() {
                if let Doze::Asleep { announced, .. } = s.doze {
                    let wake = if announced { s.p.ready() } else { !s.p.f.covered.load(Ordering::SeqCst) };
                    if wake {
                        s.wake(now);
                        woke_any = true;
                    }
                }
            }
        }
        yields.waited();
        napping = next_nap(napping, woken == Woken::TimedOut && !slots.is_empty(), woke_any, nap(), nap_max());
        w.nap_ms.store(napping.as_millis() as u64, Ordering::Relaxed);
        took = w.bell.load(Ordering::SeqCst) != bell_seen;
    }
}

/// Hands the connections the pool asked for to the newer worker (asleep
/// ones withdraw their announcement: the new worker starts them awake).
fn shed(w: &Worker, slots: &mut Vec<Slot>) {
    let Some((n, to)) = w.shed.lock().unwrap().take() else { return };
    let k = n.min(slots.len());
    if k < n {
        // Fewer here than counted (some ended meanwhile).
        w.load.fetch_add(n - k, Ordering::Relaxed);
        to.load.fetch_sub(n - k, Ordering::Relaxed);
    }
    // From the streams it has most connections on (see `Pool::add`).
    let mut moving: Vec<Pump> = Vec::with_capacity(k);
    for _ in 0..k {
        let Some(i) = (0..slots.len()).max_by_key(|&i| (w.on(slots[i].p.f.stream()).load(Ordering::Relaxed), i)) else { break };
        let s = slots.remove(i);
        s.withdraw();
        let st = s.p.f.stream();
        w.on(st).fetch_sub(1, Ordering::Relaxed);
        to.on(st).fetch_add(1, Ordering::Relaxed);
        moving.push(s.p);
    }
    to.inbox.lock().unwrap().extend(moving);
    to.ring();
}

/// One connection's turn: a step, then to sleep if it has been idle for
/// `spin_for` (or a receiver thread covers it).
fn turn(s: &mut Slot, mode: Mode, quantum: Quantum, now: Instant, spin_for: Duration) -> Turn {
    let Doze::Awake { last } = s.doze else { return Turn::Keep };
    let res = s.p.step(mode, quantum);
    if mode == Mode::Try {
        s.p.kick_flush();
    }
    let f = &s.p.f;
    match res {
        Ok(Step::Moved) => {
            s.doze = Doze::Awake { last: now };
            Turn::Moved
        }
        Ok(Step::Blocked) => Turn::Blocked,
        Ok(Step::Done) => Turn::Gone(Ok(())),
        Err(stop) => Turn::Gone(Err(stop)),
        Ok(Step::Idle) => {
            let me = f.router_side();
            if f.covered.load(Ordering::SeqCst) {
                // A receiver thread serves it and wakes it when it stops
                // (Cover::drop).
                let seen = me.seen();
                if f.covered.load(Ordering::SeqCst) {
                    s.doze = Doze::Asleep { seen, announced: false };
                }
                return Turn::Keep;
            }
            if now.duration_since(last) < spin_for {
                return Turn::Keep;
            }
            let seen = me.prepare_sleep();
            if s.p.ready() {
                me.cancel_sleep();
            } else {
                s.doze = Doze::Asleep { seen, announced: true };
            }
            Turn::Keep
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naps_double_while_looks_find_nothing_and_start_over_on_anything() {
        let (base, max) = (Duration::from_millis(200), Duration::from_millis(1600));
        let mut n = base;
        let mut seen = vec![];
        for _ in 0..6 {
            n = next_nap(n, true, false, base, max);
            seen.push(n.as_millis());
        }
        assert_eq!(seen, [400, 800, 1600, 1600, 1600, 1600]);
        assert_eq!(next_nap(max, true, true, base, max), base, "a look that woke a connection");
        assert_eq!(next_nap(max, false, false, base, max), base, "an event or a new connection");
        // FF_ROUTER_NAP_MAX_MS below FF_ROUTER_NAP_MS: never under the base.
        assert_eq!(next_nap(base, true, false, base, Duration::from_millis(50)), base);
    }

    #[test]
    fn tenants_ahead_wait_and_one_far_behind_is_raised_to_the_lag() {
        const TURN: u64 = 512 << 10;
        let meters: Vec<Arc<AtomicU64>> = [100 << 20, (100 << 20) + TURN, (100 << 20) + TURN + 1, 1 << 20].map(|l| Arc::new(AtomicU64::new(l))).to_vec();
        let mut ts = Tenants::default();
        for m in &meters {
            ts.get(m);
        }
        assert_eq!(ts.len(), 4);
        ts.rank(TURN);
        // "d" (idle a long time, or new) comes back LAG_MAX behind the
        // highest, in its shared meter too; so it is the lowest, and all
        // the others are more than a turn above it.
        let floor = (100 << 20) + TURN + 1 - LAG_MAX;
        assert_eq!(meters[3].load(Ordering::Relaxed), floor);
        assert_eq!(ts.0.iter().map(|t| t.ahead).collect::<Vec<_>>(), [true, true, true, false]);
        // Without "d": "a" is the lowest, "b" a turn above (not ahead), "c" ahead.
        let mut ts = Tenants::default();
        for m in meters.iter().take(3) {
            ts.get(m);
        }
        ts.rank(TURN);
        assert_eq!(ts.0.iter().map(|t| t.ahead).collect::<Vec<_>>(), [false, false, true]);
        // Those behind wait for nobody until one of them hands a whole turn.
        assert!(!ts.behind_busy(TURN));
        ts.get(&meters[2]).spent = TURN; // ahead: does not count
        ts.get(&meters[0]).spent = TURN - 1;
        assert!(!ts.behind_busy(TURN));
        ts.get(&meters[1]).spent = TURN;
        assert!(ts.behind_busy(TURN));
    }

    #[test]
    fn a_worker_yields_only_to_a_backlogged_tenant_far_behind_all_of_its_own() {
        const TURN: u64 = 512 << 10;
        let (a, b, c) = (Arc::new(AtomicU64::new(100 << 20)), Arc::new(AtomicU64::new(1 << 20)), Arc::new(AtomicU64::new(100 << 20)));
        let here = |ms: &[&Arc<AtomicU64>]| {
            let mut ts = Tenants::default();
            for m in ms {
                ts.get(m);
            }
            ts
        };
        let backlog = Backlog::default();
        let t0 = Instant::now();
        // Nobody noted: no yield.
        assert!(!backlog.behind(&here(&[&a]), AHEAD * TURN, t0));
        // "b", far behind "a", had more than a turn's worth on another worker.
        backlog.note(&b, t0);
        assert!(backlog.behind(&here(&[&a]), AHEAD * TURN, t0));
        assert!(backlog.behind(&here(&[&a, &c]), AHEAD * TURN, t0));
        // Not while "b" is served here too, nor while a tenant here is not
        // far above it.
        assert!(!backlog.behind(&here(&[&a, &b]), AHEAD * TURN, t0));
        let d = Arc::new(AtomicU64::new((1 << 20) + AHEAD * TURN));
        assert!(!backlog.behind(&here(&[&a, &d]), AHEAD * TURN, t0));
        // Once "b" has caught up, or has not been seen backlogged lately.
        assert!(!backlog.behind(&here(&[&a]), AHEAD * TURN, t0 + BACKLOG_FRESH));
        b.store((100 << 20) - AHEAD * TURN, Ordering::Relaxed);
        assert!(!backlog.behind(&here(&[&a]), AHEAD * TURN, t0));
        // Noting again replaces the old entry, and stale entries go.
        backlog.note(&b, t0 + BACKLOG_FRESH);
        backlog.note(&c, t0 + 3 * BACKLOG_FRESH);
        assert_eq!(backlog.0.lock().unwrap().len(), 1);
        // Cleared by the worker that noted it, at once.
        b.store(1 << 20, Ordering::Relaxed);
        backlog.note(&b, t0);
        assert!(backlog.behind(&here(&[&a]), AHEAD * TURN, t0));
        backlog.clear(&b);
        assert!(!backlog.behind(&here(&[&a]), AHEAD * TURN, t0));
    }
}

/// What forwards one connection's outgoing bytes and returns credit for its
/// incoming ones, a step at a time, on a pump worker ([`pumps`]).
pub(super) struct Pump {
    pub(super) peer: Arc<Peer>,
    pub(super) link: Arc<dyn Link>,
    pub(super) f: Arc<Fwd>,
    /// A frame to send before anything else (an incoming connection's ACCEPT).
    pub(super) first: Option<Vec<u8>>,
    /// Credit the last [`Pump::step`] charged: the client's bytes (and
    /// frame headers) it handed to the link.
    pub(super) handed: u64,
    /// What all steps of its tenant's connections handed the router's
    /// links, shared by them ([`Pool::add`]; see [`Tenants`]).
    meter: Arc<AtomicU64>,
}

/// What one [`Pump::step`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    /// Sent something (data, credit, the first frame).
    Moved,
    /// Nothing to do now.
    Idle,
    /// `Mode::Try`: the link could not take a frame now.
    Blocked,
    /// Forwarding is over (either side closed, or the link died).
    Done,
}

impl Pump {
    pub(super) fn new(peer: Arc<Peer>, link: Arc<dyn Link>, f: Arc<Fwd>, first: Option<Vec<u8>>) -> Pump {
        Pump { peer, link, f, first, handed: 0, meter: Arc::default() }
    }

    /// Forwarding ended: tell the peer if our client broke its ring, and
    /// let the connection go.
    fn finish(self, res: Result<(), Stop>) {
        let f = &self.f;
        match res {
            Ok(()) => {}
            Err(Stop::Link(why)) => self.peer.kill(Cause::Io, &why),
            Err(Stop::Local(why)) => {
                limited!(warn, "conn-fault", &f.regions.tenant, "connection {}: {why}; closing it", f.local);
                let close = Header::control(wire::CLOSE, f.peer_conn.load(Ordering::Relaxed), 0, 0).encode();
                if f.send(&*self.link, &[Frame::bare(close)], Mode::Block).is_err() {
                    self.peer.kill(Cause::Io, "send failed");
                }
                f.peer_gone();
            }
        }
        {
            let mut c = self.peer.conns.lock().unwrap();
            if c.get(&f.local).is_some_and(|x| Arc::ptr_eq(x, f)) {
                c.remove(&f.local);
            }
        }
        // The peer router may still be reading what we sent (RDMA READs
        // from the ring): its memory stays registered until it has, or
        // until the link is gone (which the operation timeout bounds).
        {
            let mut out = f.out.lock().unwrap();
            while !out.unread.is_empty() && !self.peer.dead.load(Ordering::Acquire) {
                if let Err(Stop::Link(why)) = f.settle(&mut out, &*self.link, Duration::from_millis(100)) {
                    self.peer.kill(Cause::Io, &why);
                }
            }
        }
        // Only now, with every send the peer acked given back (a client's
        // requests still waiting fail once it sees the connection closed).
        f.stop_placing();
        f.peer_gone();
        self.link.deregister(&f.mem);
        log::debug!("connection {}: forwarding ended", f.local);
    }

    /// One look at the connection: returns credit that is due, forwards
    /// what the client wrote, says goodbye once the client closed and all
    /// is sent. In `Mode::Try` it never waits on the link (nor on a
    /// receiver thread that forwards for it meanwhile). Hands the link
    /// about `quantum` of the client's bytes at most.
    fn step(&mut self, mode: Mode, quantum: Quantum) -> Result<Step, Stop> {
        self.handed = 0;
        let f = &*self.f;
        let link = &*self.link;
        if let Some(fr) = &self.first {
            let frame = Frame::of(fr);
            trace_connect("accept-try", f.peer_conn.load(Ordering::Relaxed));
            if !f.send(link, &[frame], mode)? {
                return Ok(Step::Blocked);
            }
            trace_connect("accept-sent", f.peer_conn.load(Ordering::Relaxed));
            self.first = None;
        }
        if f.peer_closed.load(Ordering::Acquire) && !self.peer.dead.load(Ordering::Acquire) {
            // Over: but what the peer router may still be READing stays
            // ours until it has, without holding up the worker (`finish`
            // waits only for a link that is going down).
            if let Ok(mut out) = f.out.try_lock() {
                let wait = if mode == Mode::Block { Duration::from_millis(1) } else { Duration::ZERO };
                if !out.unread.is_empty() {
                    f.settle(&mut out, link, wait)?;
                    if !out.unread.is_empty() {
                        return Ok(Step::Blocked);
                    }
                }
            }
        }
        if self.peer.dead.load(Ordering::Acquire) || f.peer_closed.load(Ordering::Acquire) {
            return Ok(Step::Done);
        }
        if f.local_fault.load(Ordering::Acquire) {
            return Err(Stop::Local("its client broke the shared ring".into()));
        }
        let mut progress = false;
        if let Some(g) = f.credit_due() {
            let h = Header::control(wire::CREDIT, f.peer_conn.load(Ordering::Relaxed), g, 0).encode();
            if !f.send(link, &[Frame::bare(h)], mode)? {
                return Ok(Step::Blocked);
            }
            f.reported.store(g, Ordering::Relaxed);
            progress = true;
        }
        // Held: a receiver thread forwards for it right now (ready() then
        // keeps the connection awake).
        let Ok(mut out) = f.out.try_lock() else { return Ok(if progress { Step::Moved } else { Step::Idle }) };
        progress |= f.settle(&mut out, link, Duration::ZERO)?;
        let before = out.charged;
        let moved = f.forward(&mut out, link, mode, quantum);
        self.handed = out.charged - before;
        if self.handed > 0 {
            self.meter.fetch_add(self.handed, Ordering::Relaxed);
        }
        let moved = moved?;
        let drained = out.drained();
        let unread = !out.unread.is_empty();
        drop(out);
        match moved {
            Moved::Blocked => return Ok(Step::Blocked),
            Moved::Some | Moved::Partly => return Ok(Step::Moved),
            Moved::Nothing if progress => return Ok(Step::Moved),
            Moved::Nothing => {}
        }
        if f.client_side().is_closed() && drained {
            // Everything the client sent is forwarded: say goodbye.
            let h = Header::control(wire::CLOSE, f.peer_conn.load(Ordering::Relaxed), 0, 0).encode();
            if !f.send(link, &[Frame::bare(h)], mode)? {
                return Ok(Step::Blocked);
            }
            f.peer_closed.store(true, Ordering::Release);
            // What the peer still READs is waited for by the next steps
            // (above), not by `finish` on this worker.
            return Ok(if unread { Step::Moved } else { Step::Done });
        }
        if unread {
            // The peer router is reading what we sent (RDMA): nothing
            // wakes us for that, so this waits on the link like a full
            // one; in Block mode for a millisecond at most.
            if mode == Mode::Block {
                if let Ok(mut out) = f.out.try_lock() {
                    if f.settle(&mut out, link, Duration::from_millis(1))? {
                        return Ok(Step::Moved);
                    }
                }
            }
            return Ok(Step::Blocked);
        }
        Ok(Step::Idle)
    }

    /// Sends what `Link::try_send` left queued on the connection's stream,
    /// if anything (waits while the link is full). A failed send kills the
    /// link (its connections then end).
    fn flush_link(&self) -> bool {
        let s = self.f.stream();
        if !self.link.needs_flush(s) {
            return false;
        }
        if let Err(e) = self.link.flush(s) {
            self.peer.kill(Cause::of(&e), &format!("send failed: {e}"));
        }
        true
    }

    /// What `Link::try_send` left queued goes with the link's control
    /// thread.
    fn kick_flush(&self) {
        self.peer.flush_later(&*self.link, self.f.stream());
    }

    /// Is there something to do (checked after announcing sleep)?
    fn ready(&self) -> bool {
        self.first.is_some() || self.f.needs_pump(&self.peer)
    }
}
