//! Sleeping on many connections behind one file descriptor, for callers
//! that wait in `poll`/`epoll` (UCX's `ucp_worker_wait`, its event fds).
//!
//! A connection's peer wakes us through a futex word in the shared control
//! page ([`crate::ring::Side`]): it bumps our `wake` word and calls
//! FUTEX_WAKE when our `waiting` word says we sleep. epoll cannot wait on a
//! futex, so a [`Waiter`] owns an eventfd and, while armed, helper threads
//! that sleep in `futex_waitv` (Linux 5.16) on the armed words (127 per
//! thread, plus a control word) and write the eventfd when one is woken.
//! Nothing polls: an armed, idle waiter is threads asleep in the kernel.
//!
//! Arming follows the same protocol as [`crate::conn::Conn::wait`]: announce
//! the sleep on every word ([`ConnWords::arm`]), then check for work, and
//! only then hand the words to the waiter (or cancel with
//! [`Waiter::disarm`]). A word changed after it was read makes the helper
//! fire at once, so no event between the check and the sleep is lost.
//!
//! The words are mapped on their own ([`ConnWords`]: one page of the
//! connection file, mapped separately), so a helper can sleep on them
//! whatever becomes of the connection; a helper keeps the words it sleeps on
//! alive. New connections for a listener wake through the client page's
//! accept counter ([`crate::Listener::wake_word`]), which the router wakes
//! when it queues one.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::futex::{self, Woken, WAITV_MAX};
use crate::ring::CTRL_LEN;

/// One word to sleep on, with what keeps it mapped and the value seen when
/// it was armed.
#[derive(Clone)]
pub struct WakeWord {
    _keep: Arc<dyn Send + Sync>,
    word: *const AtomicU32,
    /// Our "I sleep" word (cleared when the waiter fires or is disarmed).
    waiting: Option<*const AtomicU32>,
    seen: u32,
}

// SAFETY: the pointers point into memory `_keep` keeps mapped; they are
// only used atomically or handed to the kernel.
unsafe impl Send for WakeWord {}

impl WakeWord {
    /// A word someone wakes with [`futex::wake_all`] after changing it,
    /// kept alive by `keep`; `seen`: its value when the caller last checked.
    ///
    /// # Safety
    /// `word` must stay valid while `keep` lives.
    pub unsafe fn new(keep: Arc<dyn Send + Sync>, word: *const AtomicU32, seen: u32) -> WakeWord {
        WakeWord { _keep: keep, word, waiting: None, seen }
    }

    /// Withdraws the announcement of a sleep ([`ConnWords::arm`]) when
    /// the caller will not sleep after all.
    pub fn cancel(&self) {
        if let Some(w) = self.waiting {
            // SAFETY: inside the page `_keep` keeps mapped.
            unsafe { &*w }.store(0, Ordering::Relaxed);
        }
    }
}

/// Sleeps in the calling thread until one of `words` (armed with
/// [`ConnWords::arm`] or made with [`WakeWord::new`], read before the
/// caller checked that there is no work) is woken or changed, or for at
/// most `timeout`; then withdraws every announcement of the sleep. At most
/// [`WAITV_MAX`] words (more: an error, nothing slept).
pub fn sleep_on(words: &[WakeWord], timeout: std::time::Duration) -> Result<Woken> {
    let list: Vec<(*const AtomicU32, u32)> = words.iter().map(|w| (w.word, w.seen)).collect();
    let r = if list.len() > WAITV_MAX {
        Err(Error::Io(std::io::Error::from_raw_os_error(libc::E2BIG)))
    } else {
        // SAFETY: every word's `_keep` keeps it mapped for the call.
        unsafe { futex::wait_any_timeout(&list, timeout) }.map_err(Error::Io)
    };
    for w in words {
        w.cancel();
    }
    r
}

/// Offsets of a side's words in the control page (see [`crate::ring`]).
fn side_off(side: usize) -> usize {
    64 + 64 * (side & 1)
}

/// One side's wake-up words of a connection, from a separate mapping of the
/// file's control page (4 KiB), so that they outlive the connection for as
/// long as a [`Waiter`] sleeps on them.
pub struct ConnWords {
    base: *mut u8,
    side: usize,
}

// SAFETY: a private mapping of shared memory, only accessed atomically.
unsafe impl Send for ConnWords {}
unsafe impl Sync for ConnWords {}

impl ConnWords {
    /// Maps the control page of the connection file `fd` for side `side`.
    pub(crate) fn map(fd: BorrowedFd<'_>, side: usize) -> Result<Arc<ConnWords>> {
        // SAFETY: a fresh shared mapping of the file's first page (every
        // connection file is longer: CTRL_LEN plus two rings), which we
        // own until drop; nothing is assumed about its contents.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), CTRL_LEN, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0)
        };
        if p == libc::MAP_FAILED {
            return Err(Error::Io(std::io::Error::last_os_error()));
        }
        Ok(Arc::new(ConnWords { base: p as *mut u8, side }))
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        // SAFETY: off < CTRL_LEN, 4-aligned, inside our mapping.
        unsafe { &*(self.base.add(off) as *const AtomicU32) }
    }

    /// Our side's futex word (the peer bumps it on every event for us).
    fn wake(&self) -> &AtomicU32 {
        self.word(side_off(self.side))
    }

    fn waiting(&self) -> &AtomicU32 {
        self.word(side_off(self.side) + 4)
    }

    /// Announces that we (are about to) sleep, so that the peer wakes us,
    /// and returns the word to sleep on. Check for work after this, then
    /// arm a [`Waiter`] with it or [`Waiter::disarm`].
    pub fn arm(self: &Arc<Self>) -> WakeWord {
        self.waiting().store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let seen = self.wake().load(Ordering::SeqCst);
        WakeWord { _keep: self.clone(), word: self.wake(), waiting: Some(self.waiting()), seen }
    }
}

impl Drop for ConnWords {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unused from here on.
        unsafe { libc::munmap(self.base as *mut libc::c_void, CTRL_LEN) };
    }
}

/// Words per helper thread (the last futex_waitv slot is the control word).
const PER_THREAD: usize = WAITV_MAX - 1;

struct St {
    /// Bumped by every arm and disarm: a helper fires only for the arming
    /// it slept for.
    gen: u64,
    words: Vec<WakeWord>,
    fired: bool,
    stop: bool,
}

struct Inner {
    efd: OwnedFd,
    /// Bumped (and woken) when the helpers must look at `st` again.
    ctl: AtomicU32,
    st: Mutex<St>,
    /// futex_waitv failed (an old kernel): helpers then fire after 1 ms.
    degraded: std::sync::atomic::AtomicBool,
}

impl Inner {
    fn signal(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from our stack to our eventfd.
        unsafe { libc::write(self.efd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
    }
}

/// An eventfd that becomes readable when any armed word is woken.
pub struct Waiter {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
}

impl Waiter {
    /// The eventfd (non-blocking); no helper runs before the first arm.
    pub fn new() -> Result<Waiter> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::Io(std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor we own.
        let efd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Waiter {
            inner: Arc::new(Inner {
                efd,
                ctl: AtomicU32::new(0),
                st: Mutex::new(St { gen: 0, words: Vec::new(), fired: false, stop: false }),
                degraded: std::sync::atomic::AtomicBool::new(false),
            }),
            threads: Vec::new(),
        })
    }

    /// The descriptor to poll (readable once an armed word was woken).
    pub fn fd(&self) -> RawFd {
        self.inner.efd.as_raw_fd()
    }

    /// Reads the eventfd empty; true if it was readable.
    pub fn drain(&self) -> bool {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into our stack variable.
        let n = unsafe { libc::read(self.inner.efd.as_raw_fd(), &mut v as *mut u64 as *mut libc::c_void, 8) };
        n == 8
    }

    /// Makes the descriptor readable now.
    pub fn signal(&self) {
        self.inner.signal();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, St> {
        self.inner.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleeps on `words` (from [`ConnWords::arm`] or [`WakeWord::new`],
    /// read before the caller checked that there is no work): the
    /// descriptor becomes readable once one of them is woken (or changed
    /// since it was read). Replaces an earlier arming.
    pub fn arm(&mut self, words: Vec<WakeWord>) -> Result<()> {
        let need = words.len().div_ceil(PER_THREAD).max(1);
        {
            let mut st = self.lock();
            st.gen += 1;
            st.words = words;
            st.fired = false;
            self.inner.ctl.fetch_add(1, Ordering::SeqCst);
        }
        futex::wake_all(&self.inner.ctl);
        while self.threads.len() < need {
            let inner = self.inner.clone();
            let i = self.threads.len();
            let t = std::thread::Builder::new()
                .name(format!("ff-wake{i}"))
                .spawn(move || helper(inner, i))
                .map_err(Error::Io)?;
            self.threads.push(t);
        }
        Ok(())
    }

    /// Cancels the current arming (if any): its words stop announcing that
    /// we sleep, and a helper that wakes for it later does not fire. Cheap:
    /// no system call.
    pub fn disarm(&self) {
        let mut st = self.lock();
        st.gen += 1;
        for w in st.words.drain(..) {
            w.cancel();
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        {
            let mut st = self.lock();
            st.stop = true;
            for w in st.words.drain(..) {
                w.cancel();
            }
            self.inner.ctl.fetch_add(1, Ordering::SeqCst);
        }
        futex::wake_all(&self.inner.ctl);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Helper `i`: sleeps on words `i*PER_THREAD..` of the current arming.
fn helper(inner: Arc<Inner>, i: usize) {
    loop {
        let (gen, mine, ctl_seen) = {
            let st = inner.st.lock().unwrap_or_else(|p| p.into_inner());
            if st.stop {
                return;
            }
            let mine: Vec<WakeWord> = if st.fired { Vec::new() } else { st.words.iter().skip(i * PER_THREAD).take(PER_THREAD).cloned().collect() };
            (st.gen, mine, inner.ctl.load(Ordering::SeqCst))
        };
        let mut list: Vec<(*const AtomicU32, u32)> = mine.iter().map(|w| (w.word, w.seen)).collect();
        list.push((&inner.ctl as *const AtomicU32, ctl_seen));
        let woken = if inner.degraded.load(Ordering::Relaxed) {
            // No futex_waitv: look every millisecond instead.
            std::thread::sleep(std::time::Duration::from_millis(1));
            // SAFETY: `mine` keeps the words mapped.
            if mine.iter().any(|w| unsafe { &*w.word }.load(Ordering::SeqCst) != w.seen) {
                Woken::Changed
            } else if inner.ctl.load(Ordering::SeqCst) != ctl_seen {
                Woken::Word(list.len() - 1)
            } else {
                Woken::Interrupted
            }
        } else {
            // SAFETY: `mine` keeps every word mapped for the call; ctl lives
            // in `inner`.
            match unsafe { futex::wait_any(&list) } {
                Ok(w) => w,
                Err(e) => {
                    log::warn!("futex_waitv failed ({e}): event descriptors fall back to a 1 ms poll");
                    inner.degraded.store(true, Ordering::Relaxed);
                    Woken::Interrupted
                }
            }
        };
        match woken {
            Woken::Word(k) if k == list.len() - 1 => continue,
            Woken::Interrupted | Woken::TimedOut => continue,
            Woken::Word(_) | Woken::Changed => {}
        }
        let mut st = inner.st.lock().unwrap_or_else(|p| p.into_inner());
        if st.gen == gen && !st.fired && !mine.is_empty() {
            st.fired = true;
            // The caller will poll: peers need not wake us any more.
            for w in st.words.iter() {
                w.cancel();
            }
            inner.signal();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{self, Layout};
    use crate::shm::SharedMem;
    use std::time::{Duration, Instant};

    fn conn_file() -> SharedMem {
        let mem = SharedMem::create("wake", ring::file_len(4096)).unwrap();
        ring::init(&mem, 4096);
        mem
    }

    fn readable(fd: RawFd, ms: i32) -> bool {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd on our stack.
        unsafe { libc::poll(&mut p, 1, ms) == 1 }
    }

    #[test]
    fn words_are_the_sides_words_and_notify_fires_the_fd() {
        let mem = conn_file();
        let lay = Layout::new(&mem, 4096).unwrap();
        let words = ConnWords::map(mem.fd(), 1).unwrap();
        let mut w = Waiter::new().unwrap();
        let ww = words.arm();
        assert_eq!(lay.side(1).waiting.load(Ordering::SeqCst), 1, "the sleep is announced in the shared page");
        w.arm(vec![ww]).unwrap();
        assert!(!readable(w.fd(), 50), "nothing happened yet");
        // The peer publishes and notifies side 1, as Conn does.
        let t = Instant::now();
        lay.side(1).notify();
        assert!(readable(w.fd(), 5000), "woken by the peer's notify");
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(lay.side(1).waiting.load(Ordering::SeqCst), 0, "peers stop waking once it fired");
        assert!(w.drain());
        assert!(!readable(w.fd(), 0), "drained");
        // Fired once per arming: further notifies do nothing until re-armed.
        lay.side(1).force_wake();
        assert!(!readable(w.fd(), 50));
    }

    #[test]
    fn an_event_between_check_and_arm_is_not_lost() {
        let mem = conn_file();
        let lay = Layout::new(&mem, 4096).unwrap();
        let words = ConnWords::map(mem.fd(), 0).unwrap();
        let mut w = Waiter::new().unwrap();
        let ww = words.arm();
        // The peer notifies after we read the word but before the helper sleeps.
        lay.side(0).notify();
        w.arm(vec![ww]).unwrap();
        assert!(readable(w.fd(), 5000));
    }

    #[test]
    fn disarmed_words_do_not_fire_and_many_words_use_many_helpers() {
        let files: Vec<SharedMem> = (0..300).map(|_| conn_file()).collect();
        let words: Vec<Arc<ConnWords>> = files.iter().map(|m| ConnWords::map(m.fd(), 0).unwrap()).collect();
        let mut w = Waiter::new().unwrap();
        let arm = |w: &mut Waiter| w.arm(words.iter().map(|c| c.arm()).collect()).unwrap();
        arm(&mut w);
        w.disarm();
        let lay = Layout::new(&files[5], 4096).unwrap();
        assert_eq!(lay.side(0).waiting.load(Ordering::SeqCst), 0, "disarm withdraws the announcement");
        lay.side(0).force_wake();
        assert!(!readable(w.fd(), 100), "a disarmed waiter does not fire");
        // Each of the three helpers' ranges wakes it.
        for k in [0usize, 150, 299] {
            w.drain();
            arm(&mut w);
            assert!(!readable(w.fd(), 20));
            Layout::new(&files[k], 4096).unwrap().side(0).notify();
            assert!(readable(w.fd(), 5000), "word {k}");
        }
        assert_eq!(w.threads.len(), 3);
    }
}
