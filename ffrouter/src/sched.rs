//! A higher scheduling priority for the router's control path, within a
//! CPU budget.
//!
//! A client's thread sleeps in `poll` until the client asks something (a
//! connect, a registration) and answers in well under a millisecond. With
//! the cores shared by hundreds of busy client threads, the kernel's
//! scheduler (EEVDF) lets such a thread, once it has run a little, wait
//! until the others caught up with it, which at 1,024 threads on 2 vCPUs
//! takes tens of ms: connects on one host with 512 same-host pairs
//! streaming took up to 134 ms at the 99th percentile, over issue 17's 100
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

/// The window the budget counts in (its number since the first use), and
/// the CPU spent in it, in ns.
static WINDOW_NO: AtomicU64 = AtomicU64::new(0);
static SPENT_NS: AtomicU64 = AtomicU64::new(0);
/// False once the kernel refused to raise a priority: no thread tries again.
static ALLOWED: AtomicBool = AtomicBool::new(true);

fn window_now() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    (START.get_or_init(Instant::now).elapsed().as_nanos() / WINDOW.as_nanos()) as u64
}

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

fn set_nice(n: i32) -> std::io::Result<()> {
    // SAFETY: setpriority on the calling thread (who = 0).
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A control thread's priority: boosted while the router-wide budget
/// lasts. One per thread; call [`Boost::account`] after each request.
pub struct Boost {
    base: i32,
    boosted: bool,
    cpu: Duration,
}

impl Boost {
    /// Boosts the calling thread if the budget allows (and the kernel does).
    pub fn new() -> Boost {
        let mut b = Boost { base: nice_now(), boosted: false, cpu: thread_cpu() };
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
            let w = window_now();
            if WINDOW_NO.swap(w, Ordering::AcqRel) != w {
                SPENT_NS.store(0, Ordering::Release);
            }
            SPENT_NS.fetch_add(used.as_nanos() as u64, Ordering::AcqRel);
        }
        self.decide();
    }

    /// Is the calling thread boosted now?
    pub fn boosted(&self) -> bool {
        self.boosted
    }

    fn decide(&mut self) {
        let w = window_now();
        let left = WINDOW_NO.load(Ordering::Acquire) != w || SPENT_NS.load(Ordering::Acquire) < BUDGET.as_nanos() as u64;
        let want = left && ALLOWED.load(Ordering::Relaxed);
        if want == self.boosted {
            return;
        }
        let n = if want { (self.base - BOOST).max(-20) } else { self.base };
        match set_nice(n) {
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

    fn running_as_root() -> bool {
        // SAFETY: geteuid has no failure mode.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn boosted_until_the_budget_is_spent_then_again_in_the_next_window() {
        std::thread::spawn(|| {
            let base = nice_now();
            let mut b = Boost::new();
            if !running_as_root() {
                assert!(!b.boosted() && nice_now() == base, "without the right, nothing changes");
                return;
            }
            // (The budget is the router's: wait for a fresh window, so that
            // nothing else in this process spent part of it.)
            let w = window_now();
            while window_now() == w {
                std::thread::sleep(Duration::from_millis(5));
            }
            b.account();
            assert!(b.boosted());
            assert_eq!(nice_now(), (base - BOOST).max(-20));
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
            let w = window_now();
            if WINDOW_NO.load(Ordering::Acquire) == w && SPENT_NS.load(Ordering::Acquire) >= BUDGET.as_nanos() as u64 {
                assert!(!b.boosted(), "the budget is spent");
                assert_eq!(nice_now(), base);
            }
            // The next window boosts it again.
            while window_now() == w {
                std::thread::sleep(Duration::from_millis(5));
            }
            b.account();
            assert!(b.boosted());
            assert_eq!(nice_now(), (base - BOOST).max(-20));
        })
        .join()
        .unwrap();
    }
}
