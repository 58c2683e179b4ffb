//! Cross-process futex wait/wake on words in shared memory.
//!
//! These are *shared* futexes (no FUTEX_PRIVATE_FLAG): the kernel keys them
//! by the backing file and offset, so they work between processes in
//! different IPC/PID namespaces that map the same memfd.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `*word == expected`, at most `timeout`. Spurious returns are
/// allowed; callers re-check their condition.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call;
    // FUTEX_WAIT only reads it. The timespec lives on our stack.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, &ts as *const libc::timespec);
    }
}

/// Wakes every waiter on `word`.
pub fn wake_all(word: &AtomicU32) {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE does not access it.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

/// Most words one [`wait_any`] call sleeps on (the kernel's limit).
pub const WAITV_MAX: usize = 128;

/// `struct futex_waitv` (linux/futex.h).
#[repr(C)]
struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

/// FUTEX2_SIZE_U32: a 32-bit word, shared between processes (no
/// FUTEX2_PRIVATE), like [`wait`].
const FUTEX2_SIZE_U32: u32 = 2;
const SYS_FUTEX_WAITV: libc::c_long = 449;

/// How a [`wait_any`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// Word `i` was woken.
    Word(usize),
    /// A word no longer held its expected value when the call began.
    Changed,
    /// A signal (or a spurious return): check and call again.
    Interrupted,
    /// The timeout of [`wait_any_timeout`] passed.
    TimedOut,
}

/// Sleeps until any of `words` (address, expected value; at most
/// [`WAITV_MAX`]) is woken with [`wake_all`], or held another value to
/// begin with (Linux 5.16's futex_waitv; no timeout).
///
/// # Safety
/// Every address must point to a u32 that stays mapped for the call.
pub unsafe fn wait_any(words: &[(*const AtomicU32, u32)]) -> std::io::Result<Woken> {
    // SAFETY: as the caller promised.
    unsafe { waitv(words, None) }
}

/// [`wait_any`], for at most `timeout` ([`Woken::TimedOut`] then).
///
/// # Safety
/// As for [`wait_any`].
pub unsafe fn wait_any_timeout(words: &[(*const AtomicU32, u32)], timeout: Duration) -> std::io::Result<Woken> {
    // futex_waitv takes an absolute time on the clock it is given.
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let ns = now.tv_nsec as u64 + timeout.subsec_nanos() as u64;
    let until = libc::timespec {
        tv_sec: now.tv_sec.saturating_add(timeout.as_secs().min(i32::MAX as u64) as libc::time_t + (ns / 1_000_000_000) as libc::time_t),
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: as the caller promised.
    unsafe { waitv(words, Some(&until)) }
}

/// futex_waitv on `words` until `until` (CLOCK_MONOTONIC) or for ever.
///
/// # Safety
/// Every address must point to a u32 that stays mapped for the call.
unsafe fn waitv(words: &[(*const AtomicU32, u32)], until: Option<&libc::timespec>) -> std::io::Result<Woken> {
    assert!(!words.is_empty() && words.len() <= WAITV_MAX);
    let v: Vec<FutexWaitv> =
        words.iter().map(|&(p, val)| FutexWaitv { val: val as u64, uaddr: p as u64, flags: FUTEX2_SIZE_U32, reserved: 0 }).collect();
    let ts = until.map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: v is a valid array of futex_waitv; the caller keeps the words
    // mapped; `ts` is NULL (no timeout) or a timespec that outlives the call.
    let rc = unsafe { libc::syscall(SYS_FUTEX_WAITV, v.as_ptr(), v.len() as libc::c_uint, 0 as libc::c_uint, ts, libc::CLOCK_MONOTONIC) };
    if rc >= 0 {
        return Ok(Woken::Word(rc as usize));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) => Ok(Woken::Changed),
        Some(libc::EINTR) => Ok(Woken::Interrupted),
        Some(libc::ETIMEDOUT) => Ok(Woken::TimedOut),
        _ => Err(e),
    }
}
