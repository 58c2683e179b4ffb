//! Remote atomic operations on registered memory: what they do, and doing
//! one on memory mapped here (the owner's own memory, or a peer's shadow
//! region mapped through [`crate::RemoteMap::atomic`]).
//!
//! Every operation is one CPU atomic instruction (a `lock`-prefixed one on
//! x86) on the word where it lives, whoever performs it: the initiator
//! through its mapping of the owner's pages (one host), or the owner itself
//! when a request reaches it as a message (another host, or memory that is
//! not shared). So an operation is atomic with respect to every other
//! operation here on the same word, and to the CPU atomics of every
//! process that maps that word (the owner included). Words must be
//! naturally aligned; a misaligned address is refused, never split.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// What an atomic operation does to the word (`old` the value it held).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicOp {
    /// `old + value` (wrapping).
    Add,
    And,
    Or,
    Xor,
    /// `value`.
    Swap,
    /// `value` if `old == compare`, else unchanged.
    Cswap,
}

impl AtomicOp {
    /// The wire code (UCT's `uct_atomic_op_t` numbering).
    pub fn code(self) -> u8 {
        match self {
            AtomicOp::Add => 0,
            AtomicOp::And => 1,
            AtomicOp::Or => 2,
            AtomicOp::Xor => 3,
            AtomicOp::Swap => 4,
            AtomicOp::Cswap => 5,
        }
    }

    pub fn from_code(c: u8) -> Option<AtomicOp> {
        Some(match c {
            0 => AtomicOp::Add,
            1 => AtomicOp::And,
            2 => AtomicOp::Or,
            3 => AtomicOp::Xor,
            4 => AtomicOp::Swap,
            5 => AtomicOp::Cswap,
            _ => return None,
        })
    }

    /// The value the word holds after the operation, sequentially (the
    /// model the atomic implementation must agree with).
    pub fn next(self, old: u64, value: u64, compare: u64, width: Width) -> u64 {
        let r = match self {
            AtomicOp::Add => old.wrapping_add(value),
            AtomicOp::And => old & value,
            AtomicOp::Or => old | value,
            AtomicOp::Xor => old ^ value,
            AtomicOp::Swap => value,
            AtomicOp::Cswap => {
                if old == compare {
                    value
                } else {
                    old
                }
            }
        };
        r & width.mask()
    }
}

/// The size of the word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    W32,
    W64,
}

impl Width {
    pub fn bytes(self) -> usize {
        match self {
            Width::W32 => 4,
            Width::W64 => 8,
        }
    }
    pub fn from_bytes(n: usize) -> Option<Width> {
        match n {
            4 => Some(Width::W32),
            8 => Some(Width::W64),
            _ => None,
        }
    }
    pub fn mask(self) -> u64 {
        match self {
            Width::W32 => u32::MAX as u64,
            Width::W64 => u64::MAX,
        }
    }
}

/// Does `op` on the word at `ptr` atomically; returns the value it held.
/// `value` and `compare` are truncated to the width.
///
/// # Safety
/// `ptr` is valid for reads and writes of `width` bytes and aligned to
/// them; the memory may be shared with other processes (that is the
/// point), which may access it only atomically for the result to be
/// meaningful.
pub unsafe fn apply(ptr: *mut u8, width: Width, op: AtomicOp, value: u64, compare: u64) -> u64 {
    const O: Ordering = Ordering::SeqCst;
    match width {
        Width::W32 => {
            // SAFETY: aligned and valid (caller).
            let a = AtomicU32::from_ptr(ptr as *mut u32);
            let (v, c) = (value as u32, compare as u32);
            (match op {
                AtomicOp::Add => a.fetch_add(v, O),
                AtomicOp::And => a.fetch_and(v, O),
                AtomicOp::Or => a.fetch_or(v, O),
                AtomicOp::Xor => a.fetch_xor(v, O),
                AtomicOp::Swap => a.swap(v, O),
                AtomicOp::Cswap => a.compare_exchange(c, v, O, O).unwrap_or_else(|x| x),
            }) as u64
        }
        Width::W64 => {
            // SAFETY: aligned and valid (caller).
            let a = AtomicU64::from_ptr(ptr as *mut u64);
            match op {
                AtomicOp::Add => a.fetch_add(value, O),
                AtomicOp::And => a.fetch_and(value, O),
                AtomicOp::Or => a.fetch_or(value, O),
                AtomicOp::Xor => a.fetch_xor(value, O),
                AtomicOp::Swap => a.swap(value, O),
                AtomicOp::Cswap => a.compare_exchange(compare, value, O, O).unwrap_or_else(|x| x),
            }
        }
    }
}

/// Is `addr` naturally aligned for `width`?
pub fn aligned(addr: u64, width: Width) -> bool {
    addr.is_multiple_of(width.bytes() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_match_the_sequential_model() {
        let ops = [AtomicOp::Add, AtomicOp::And, AtomicOp::Or, AtomicOp::Xor, AtomicOp::Swap, AtomicOp::Cswap];
        let vals = [0u64, 1, 0xffff_ffff, 0x1234_5678_9abc_def0, u64::MAX, 0x8000_0000];
        for &op in &ops {
            assert_eq!(AtomicOp::from_code(op.code()), Some(op));
            for width in [Width::W32, Width::W64] {
                for &old in &vals {
                    for &value in &vals {
                        for compare in [old, old ^ 1] {
                            let old = old & width.mask();
                            let mut word = [0u64; 2];
                            let p = word.as_mut_ptr() as *mut u8;
                            // SAFETY: the first 8 bytes of `word`, aligned.
                            unsafe {
                                match width {
                                    Width::W32 => (p as *mut u32).write(old as u32),
                                    Width::W64 => (p as *mut u64).write(old),
                                }
                                let got = apply(p, width, op, value, compare);
                                assert_eq!(got, old, "{op:?} {width:?} returns the old value");
                                let now = match width {
                                    Width::W32 => (p as *const u32).read() as u64,
                                    Width::W64 => (p as *const u64).read(),
                                };
                                assert_eq!(now, op.next(old, value, compare & width.mask(), width), "{op:?} {width:?} {old:#x} {value:#x} {compare:#x}");
                            }
                            if width == Width::W32 {
                                assert_eq!(word[0] >> 32, 0, "a 32-bit op leaves the next word alone");
                            }
                            assert_eq!(word[1], 0);
                        }
                    }
                }
            }
        }
        assert_eq!(AtomicOp::from_code(6), None);
        assert!(aligned(8, Width::W64) && !aligned(4, Width::W64) && aligned(4, Width::W32) && !aligned(2, Width::W32));
    }

    /// Two threads adding to one word through different mappings of the
    /// same memory: no update is lost.
    #[test]
    fn adds_from_two_threads_are_not_lost() {
        let word = Box::new(AtomicU64::new(0));
        let addr = word.as_ptr() as usize;
        let n = 100_000u64;
        let ts: Vec<_> = (0..2)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut olds = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        // SAFETY: the box outlives the threads (joined below).
                        olds.push(unsafe { apply(addr as *mut u8, Width::W64, AtomicOp::Add, 1, 0) });
                    }
                    olds
                })
            })
            .collect();
        let mut all: Vec<u64> = ts.into_iter().flat_map(|t| t.join().unwrap()).collect();
        all.sort_unstable();
        assert!(all.iter().enumerate().all(|(i, &v)| v == i as u64), "every old value once");
        assert_eq!(word.load(Ordering::SeqCst), 2 * n);
    }
}
