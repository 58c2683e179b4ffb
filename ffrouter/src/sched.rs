//! A higher scheduling priority for the router's control path, within a
//! CPU budget.
//!
//! A client's thread sleeps in `poll` until the client asks something (a
//! connect, a registration) and answers in well under a millisecond. With
//! the cores shared by hundreds of busy client threads, the kernel's
//! scheduler (EEVDF) lets such a thread, once it has run a little, wait
//! until the others caught up with it, which at 1,024 threads on 2 vCPUs
//! takes tens of ms: connects on one host with 512 same-host pairs
//! streaming took up to 161 ms at the 99th percentile, over issue 17's 100
//! ms in half the runs. A shorter scheduler slice only helped the median. A higher
//! priority (a lower nice value) makes the scheduler count the thread's
//! CPU time for less, so it is answered at once
//! (bench/results/connect-boost-2026-12-05).
//!
//! A tenant must not get CPU at that priority by flooding the router with
//! requests, so the boost has a budget for the whole router: the control
//! threads together may use [`BUDGET`] of CPU per [`WINDOW`] boosted; past
//! it they run at their normal priority until the next window (what a flood
//! gets is then what it got before: the others' connects slow down, the
//! data path is not taken from).
//!
//! Raising priority needs root or CAP_SYS_NICE; without, the threads keep
//! their priority (said once).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

/// How much lower the nice value of a boosted control thread is.
pub const BOOST: i32 = 10;
/// The CPU the boosted control threads may use together per [`WINDOW`].
pub const BUDGET: Duration = Duration::from_millis(50);
/// The accounting window of [`BUDGET`].
pub const WINDOW: Duration = Duration::from_secs(1);

/// CPU spent boosted, counted per [`WINDOW`]: one word holds the window
/// being counted (its number since `start`, high 32 bits) and the CPU spent
/// in it (ns, low 32 bits, at most 4.29 s), so that a charge that opens a
/// new window and charges racing with it are all counted (a
/// compare-and-swap on the word, never a separate reset).
pub struct Budget {
    start: OnceLock<Instant>,
    word: AtomicU64,
}

impl Budget {
    pub const fn new() -> Budget {
        Budget { start: OnceLock::new(), word: AtomicU64::new(0) }
    }

    fn window_now(&self) -> u32 {
        (self.start.get_or_init(Instant::now).elapsed().as_nanos() / WINDOW.as_nanos()) as u32
    }

    fn charge(&self, used: Duration) {
        self.charge_in(self.window_now(), used);
    }

    /// Charges `used` to window `w`, or to a later window already being
    /// counted (a thread that took long to charge counts in the present).
    fn charge_in(&self, w: u32, used: Duration) {
        let used = used.as_nanos().min(u32::MAX as u128) as u64;
        let _ = self.word.fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
            let (cw, spent) = ((cur >> 32) as u32, cur & 0xffff_ffff);
            Some(if cw.wrapping_sub(w) as i32 >= 0 {
                (cur & !0xffff_ffff) | (spent + used).min(0xffff_ffff)
            } else {
                ((w as u64) << 32) | used
            })
        });
    }

    /// CPU charged to window `w` so far (none if another is counted).
    fn spent_in(&self, w: u32) -> Duration {
        let cur = self.word.load(Ordering::Acquire);
        Duration::from_nanos(if (cur >> 32) as u32 == w { cur & 0xffff_ffff } else { 0 })
    }

    fn left(&self) -> bool {
        self.spent_in(self.window_now()) < BUDGET
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new()
    }
}

/// The router's budget: all its control threads draw on it.
static ROUTER: Budget = Budget::new();
/// False once the kernel refused to raise a priority: no thread tries again.
static ALLOWED: AtomicBool = AtomicBool::new(true);

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The nice value of the calling thread.
fn nice_now() -> i32 {
    // SAFETY: getpriority on the calling thread (who = 0) reads only. (-1
    // is also a valid nice value; the call cannot fail for this thread.)
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

/// Sets the calling thread's nice value (on Linux it is per thread; threads
/// started later inherit it). Going below the present value needs root or
/// CAP_SYS_NICE.
pub fn set_nice(n: i32) -> std::io::Result<()> {
    // SAFETY: setpriority on the calling thread (who = 0).
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `struct sched_attr` as `sched_setattr(2)` takes it (first version).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// `SCHED_FLAG_RESET_ON_FORK`: threads this one starts get nice 0.
const RESET_ON_FORK: u64 = 0x01;

/// Sets the calling thread's nice value to `n` (negative) such that the
/// threads it starts do not inherit it: a client's request can start a
/// link's threads or a pump worker, which must run at the normal priority
/// (a data-path thread at a raised one keeps polling ranks off their
/// cores; see "Router priority" in docs/many-hosts.md).
fn set_nice_not_inherited(n: i32) -> std::io::Result<()> {
    let attr = SchedAttr { size: std::mem::size_of::<SchedAttr>() as u32, policy: libc::SCHED_OTHER as u32, flags: RESET_ON_FORK, nice: n, ..Default::default() };
    // SAFETY: sched_setattr(pid 0 = this thread, a valid attr of the size
    // it states, flags 0) only reads `attr`.
    if unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A control thread's priority: boosted while the router-wide budget
/// lasts. One per thread; call [`Boost::account`] after each request.
pub struct Boost {
    budget: &'static Budget,
    base: i32,
    boosted: bool,
    cpu: Duration,
}

impl Boost {
    /// Boosts the calling thread if the router's budget allows (and the
    /// kernel does). Only a thread at nice 0 is boosted: the threads it
    /// starts get nice 0 back, which is right only when that was theirs
    /// (a router started with `--nice` keeps that priority everywhere).
    pub fn new() -> Boost {
        Boost::drawing_on(&ROUTER)
    }

    fn drawing_on(budget: &'static Budget) -> Boost {
        let mut b = Boost { budget, base: nice_now(), boosted: false, cpu: thread_cpu() };
        b.decide();
        b
    }

    /// Charges the CPU the thread used since the last call to the budget,
    /// then boosts or unboosts it for its next wait.
    pub fn account(&mut self) {
        let now = thread_cpu();
        let used = now.saturating_sub(self.cpu);
        self.cpu = now;
        if self.boosted {
            self.budget.charge(used);
        }
        self.decide();
    }

    /// Is the calling thread boosted now?
    pub fn boosted(&self) -> bool {
        self.boosted
    }

    fn decide(&mut self) {
        let want = self.base == 0 && self.budget.left() && ALLOWED.load(Ordering::Relaxed);
        if want == self.boosted {
            return;
        }
        let set = if want { set_nice_not_inherited(-BOOST) } else { set_nice(self.base) };
        match set {
            Ok(()) => self.boosted = want,
            Err(e) => {
                ALLOWED.store(false, Ordering::Relaxed);
                static SAID: Once = Once::new();
                SAID.call_once(|| log::info!("control threads keep their priority (nice {}): {e} (needs root or CAP_SYS_NICE)", self.base));
            }
        }
    }
}

impl Default for Boost {
    fn default() -> Self {
        Boost::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// May this thread raise its priority (root, or CAP_SYS_NICE)? Tries
    /// one level and goes back.
    fn may_raise_priority() -> bool {
        let base = nice_now();
        let ok = base > -20 && set_nice(base - 1).is_ok();
        if ok {
            set_nice(base).unwrap();
        }
        ok
    }

    #[test]
    fn boosted_until_the_budget_is_spent_then_again_in_the_next_window() {
        std::thread::spawn(|| {
            let allowed = may_raise_priority();
            if allowed {
                set_nice(0).unwrap(); // the priority a router starts with
            }
            let base = nice_now();
            // A budget of its own: the router tests beside it draw on the
            // router's.
            let budget: &'static Budget = Box::leak(Box::new(Budget::new()));
            let mut b = Boost::drawing_on(budget);
            if !allowed {
                assert!(!b.boosted() && nice_now() == base, "without the right, nothing changes");
                return;
            }
            // Start at the beginning of a window.
            let w = budget.window_now();
            while budget.window_now() == w {
                std::thread::sleep(Duration::from_millis(5));
            }
            b.account();
            assert!(b.boosted());
            assert_eq!(nice_now(), -BOOST);
            // A thread it starts (a link's, a pump worker) is not boosted.
            assert_eq!(std::thread::spawn(nice_now).join().unwrap(), 0, "a thread started by a boosted one");
            // A little CPU: still boosted.
            let t = thread_cpu();
            while thread_cpu() - t < Duration::from_millis(5) {}
            b.account();
            assert!(b.boosted(), "5 ms of a 50 ms budget");
            // Spend the rest of the window's budget (the window may roll
            // over meanwhile: then the next one starts spending).
            let t = thread_cpu();
            while thread_cpu() - t < BUDGET {}
            b.account();
            // (Whichever window the spending ended in, it spent the budget.)
            let w = budget.window_now();
            assert!(!b.boosted(), "the budget is spent");
            assert_eq!(nice_now(), base);
            // The next window boosts it again.
            while budget.window_now() == w {
                std::thread::sleep(Duration::from_millis(5));
            }
            b.account();
            assert!(b.boosted());
            assert_eq!(nice_now(), -BOOST);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn charges_of_threads_crossing_into_a_new_window_together_are_all_counted() {
        const THREADS: u32 = 4;
        const ROUNDS: u32 = 3000;
        let budget = std::sync::Arc::new(Budget::new());
        let step = std::sync::Arc::new(std::sync::Barrier::new(THREADS as usize));
        let ts: Vec<_> = (0..THREADS)
            .map(|i| {
                let (budget, step) = (budget.clone(), step.clone());
                std::thread::spawn(move || {
                    for w in 1..=ROUNDS {
                        // Every thread charges the new window at once: the
                        // first to come opens it, the others race with it.
                        budget.charge_in(w, Duration::from_nanos(1));
                        step.wait();
                        if i == 0 {
                            assert_eq!(budget.spent_in(w), Duration::from_nanos(THREADS as u64), "window {w}");
                        }
                        step.wait();
                    }
                })
            })
            .collect();
        for t in ts {
            t.join().unwrap();
        }
        // A late charge for a past window counts in the present one.
        budget.charge_in(ROUNDS - 1, Duration::from_nanos(5));
        assert_eq!(budget.spent_in(ROUNDS), Duration::from_nanos(THREADS as u64 + 5));
        // Charges saturate instead of wrapping into the window number.
        budget.charge_in(ROUNDS, Duration::from_secs(10));
        assert_eq!(budget.spent_in(ROUNDS), Duration::from_nanos(u32::MAX as u64));
    }
}
