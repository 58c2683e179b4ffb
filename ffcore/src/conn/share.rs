//! Equal turns for a process's same-host connections whose rings differ.
//!
//! The router gives a tenant's first same-host connections 4 MiB rings and
//! later ones smaller rings (a budget per tenant; `ffrouter::state::
//! scaled_ring`). When many stream at once from threads that take turns on
//! the cores, what a connection moves per turn is what its ring holds: a
//! 4 MiB connection moved 2-4x what a 1 MiB one did, and 256 such
//! connections shared the host with Jain's fairness 0.72-0.88 (all rings
//! equal: 0.97-1.00). So while a process's same-host connections have
//! rings of different sizes, each fills its ring at most to half the
//! smallest ring among them ([`crate::ring::Tx::set_window`]); alone, or
//! among equals, a connection keeps its whole ring. Half, not all of the
//! smallest: a ring filled to its end moved per turn only 0.6-0.7x of
//! what the same bytes as a window in a bigger ring moved (mechanism not
//! found), so with the smallest ring as the window the small rings still
//! lagged (Jain 0.91-0.96); with half of it, 0.99-1.00
//! (bench/results/ring-window-2026-12-06). A trade: with a thread per
//! connection instead of a few progress threads, 512 pairs shared worse
//! with it (Jain 0.37-0.52 against 0.50-0.76). Connections forwarded by
//! the router to other hosts are not counted (the router's pumps share
//! the link among them, whatever their rings).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// How many of a process's same-host connections have rings of each size
/// (a power of two up to 1 GiB: class = log2), and a generation bumped on
/// each change.
#[derive(Default)]
pub(crate) struct RingSizes {
    counts: [AtomicUsize; 32],
    generation: AtomicU64,
}

impl RingSizes {
    /// Counts a connection with a `ring`-byte ring while the returned
    /// member lives.
    pub(crate) fn join(self: &Arc<Self>, ring: usize) -> Member {
        let class = (ring.max(1).trailing_zeros() as usize).min(31);
        self.counts[class].fetch_add(1, Ordering::AcqRel);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Member { sizes: self.clone(), class, seen: u64::MAX, window: ring }
    }

    /// How far a ring of `own` bytes may fill: all of it while every ring
    /// counted has its size, else half the smallest ring counted.
    fn window(&self, own: usize) -> usize {
        let mut sizes = (0..self.counts.len()).filter(|&k| self.counts[k].load(Ordering::Acquire) > 0);
        match (sizes.next(), sizes.next()) {
            (Some(smallest), Some(_)) => (1usize << smallest) / 2,
            _ => own,
        }
    }
}

/// One connection's place in [`RingSizes`].
pub(crate) struct Member {
    sizes: Arc<RingSizes>,
    class: usize,
    /// The generation `window` was computed at.
    seen: u64,
    window: usize,
}

impl Member {
    /// How far this connection's ring may fill (see the module docs; one
    /// atomic load unless a connection came or went since the last call).
    pub(crate) fn window(&mut self) -> usize {
        let g = self.sizes.generation.load(Ordering::Acquire);
        if g != self.seen {
            self.seen = g;
            self.window = self.sizes.window(1usize << self.class);
        }
        self.window
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.sizes.counts[self.class].fetch_sub(1, Ordering::AcqRel);
        self.sizes.generation.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_half_the_smallest_ring_while_sizes_differ() {
        let sizes = Arc::new(RingSizes::default());
        let mut big = sizes.join(4 << 20);
        assert_eq!(big.window(), 4 << 20, "alone, a connection keeps its whole ring");
        let mut other = sizes.join(4 << 20);
        assert_eq!(big.window(), 4 << 20, "among equals too");
        let mut small = sizes.join(1 << 20);
        assert_eq!(big.window(), 512 << 10, "sizes differ: half the smallest");
        assert_eq!(other.window(), 512 << 10);
        assert_eq!(small.window(), 512 << 10);
        drop(small);
        assert_eq!(big.window(), 4 << 20, "the small one gone, the whole ring again");
        drop(other);
        assert_eq!(big.window(), 4 << 20);
    }
}
