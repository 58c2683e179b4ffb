//! Yielding the core while polling, and knowing when to stop.
//!
//! A thread that waits for another (a client for its router, a router
//! thread for a client) polls for some microseconds before it sleeps, and
//! yields the core between polls so that the thread it waits for runs
//! first where both share a core. Where a busy process shares the core
//! (a data loader, any CPU hog), that backfires: under EEVDF every
//! `sched_yield` lets the busy process run out its time slice (1-4 ms),
//! and the thread that yielded is still runnable, so no wake-up brings it
//! back sooner: the message it waits for sits unread for milliseconds.
//! Cross-host 8 B ping-pong with a busy loop beside each core took about
//! 2,000 us per message while the client and the router threads kept
//! yielding. A sleeper is different: the wake-up that ends its sleep
//! gives it the core within microseconds.
//!
//! [`Polite`] times each yield. Lost yields (each kept the core away for
//! longer than [`YIELD_LOST`]) in a row, each within [`LOST_WINDOW`] of
//! the one before, mean a busy process shares it: its owner then sleeps
//! in the kernel (on its futex words, its socket) wherever it would have
//! spun or yielded, for its next [`NO_YIELD_WAITS`] waits, and tries
//! yielding again after that. How many make the verdict is the owner's:
//! the UCX transport and the router take [`LOST_IN_A_ROW`] (3), since a
//! quiet VM takes the core away from every thread at once now and then
//! (every 30-200 ms here) and a periodic kernel job (0.3-0.9 ms every 100
//! ms here) costs a polling thread two slow yields in a row: reacting to
//! one made UCX's unloaded latency across hosts 2x worse. `Conn::wait`
//! takes one, as it did before there was this module (its measurements
//! were made so; with three, ffbench's ping-pong on one host beside a
//! busy loop per core had a p50 of 0.46-2.4 µs in 3 runs of 10, but with
//! one, 1.85-1.87 µs in 2 runs of 19: that one's p50 is 0.13 µs or about
//! 2 µs from run to run, and 10 runs do not tell the two apart).
//!
//! Users: `Conn::wait` (ffcore), the UCX transport's idle progress, and
//! the router's pump workers and link receivers.

use std::time::{Duration, Instant};

/// A yield that took longer than this gave the core to a busy process for
/// its time slice.
pub const YIELD_LOST: Duration = Duration::from_micros(200);
/// Lost yields in a row, each within this of the one before, count
/// towards a verdict.
pub const LOST_WINDOW: Duration = Duration::from_millis(5);
/// How many lost yields in a row mean a busy process shares the core, for
/// threads of the UCX transport and the router (see the module).
pub const LOST_IN_A_ROW: u32 = 3;
/// Waits that sleep rather than spin after a yield was lost.
pub const NO_YIELD_WAITS: u32 = 1000;

/// One thread's choice between yielding and sleeping (see the module).
#[derive(Debug)]
pub struct Polite {
    /// Waits left that sleep rather than spin or yield.
    no_yield: u32,
    /// Lost yields in a row (each within [`LOST_WINDOW`] of the last).
    lost: u32,
    /// When the last yield that lost the core ended.
    lost_at: Option<Instant>,
    /// Lost yields in a row that make the verdict.
    row: u32,
}

impl Polite {
    /// A verdict after `row` lost yields in a row (at least 1).
    pub const fn new(row: u32) -> Polite {
        Polite { no_yield: 0, lost: 0, lost_at: None, row: if row == 0 { 1 } else { row } }
    }

    /// May the owner spin and yield while it waits (else it should sleep
    /// at once)?
    pub fn may_yield(&self) -> bool {
        self.no_yield == 0
    }

    /// Yields the core. False if that lost it for long for the `row`th
    /// time in a row: the owner should sleep now, and
    /// [`Polite::may_yield`] says no for the next [`NO_YIELD_WAITS`] waits.
    pub fn yield_now(&mut self) -> bool {
        let t = Instant::now();
        std::thread::yield_now();
        self.judge(t, t.elapsed())
    }

    /// The verdict on a yield started at `t` that took `took`.
    fn judge(&mut self, t: Instant, took: Duration) -> bool {
        if took <= YIELD_LOST {
            return true;
        }
        let close = self.lost_at.is_some_and(|l| t.saturating_duration_since(l) < LOST_WINDOW);
        self.lost = if close { self.lost.saturating_add(1) } else { 1 };
        self.lost_at = Some(t + took);
        if self.lost < self.row {
            return true;
        }
        (self.lost, self.lost_at) = (0, None);
        self.no_yield = NO_YIELD_WAITS;
        false
    }

    /// The owner waited once more (slept, or went to sleep at once).
    pub fn waited(&mut self) {
        self.no_yield = self.no_yield.saturating_sub(1);
    }
}

/// How long to poll for the next event of a conversation, after a gap of
/// `gap` between its last two (or since the wait began): twice the gap,
/// within `base..=max`, taken at once when longer and approached slowly
/// (an eighth of the way per event) when shorter; `base` after a gap
/// beyond `max` (a pause, not a conversation).
///
/// Why: a fixed window sends a conversation whose gaps are near it into
/// wake-ups (the waiter asleep, and the router's threads asleep in their
/// turn), and each wake-up makes the next gap longer still, so it stays
/// there. A ping-pong of 4 KiB between two emulated hosts over a sealed
/// link took 33-39 µs per message in most runs, 17-19 in the others, with
/// the windows fixed at 50 µs (bench/results/reply-window-2026-12-04).
/// Beyond `max` a wake-up is a small part of the wait, and polling would
/// only take CPU from the application.
pub fn next_window(window: Duration, gap: Duration, base: Duration, max: Duration) -> Duration {
    if gap > max {
        return base;
    }
    let want = (gap * 2).clamp(base, max);
    if want >= window {
        want
    } else {
        (window * 7 + want) / 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_lost_yields_in_a_row_make_the_next_waits_sleep() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut p = Polite::new(LOST_IN_A_ROW);
        assert!(p.may_yield());
        assert!(p.judge(t0, Duration::from_micros(20)), "a quick yield");
        assert!(p.judge(t0, ms(2)), "one slow yield alone may be a stall of the machine");
        assert!(p.may_yield());
        // The next slow one long after: still a passing stall.
        assert!(p.judge(t0 + ms(100), ms(2)));
        assert!(p.may_yield());
        // Quick yields in between do not break a row.
        assert!(p.judge(t0 + ms(103), Duration::from_micros(5)));
        assert!(p.judge(t0 + ms(104), ms(2)), "two in a row: a periodic kernel job may do that");
        assert!(!p.judge(t0 + ms(108), ms(2)), "the third in a row, each within LOST_WINDOW of the last's end");
        for _ in 0..NO_YIELD_WAITS {
            assert!(!p.may_yield());
            p.waited();
        }
        assert!(p.may_yield(), "polite again after NO_YIELD_WAITS waits");
        // A fresh start: one loss is not enough again, nor a row broken
        // by a gap.
        assert!(p.judge(t0 + ms(200), ms(2)));
        assert!(p.judge(t0 + ms(203), ms(2)));
        assert!(p.judge(t0 + ms(300), ms(2)));
        assert!(p.may_yield());
        // With a row of one, the first lost yield makes the verdict.
        let mut p = Polite::new(1);
        assert!(p.judge(t0, Duration::from_micros(20)));
        assert!(!p.judge(t0, ms(2)));
        assert!(!p.may_yield());
    }

    #[test]
    fn windows_follow_the_gaps_of_a_conversation_and_forget_pauses() {
        let us = Duration::from_micros;
        let (base, max) = (us(50), us(200));
        assert_eq!(next_window(base, us(10), base, max), base, "short gaps keep the base");
        assert_eq!(next_window(base, us(60), base, max), us(120), "a longer gap is covered at once, twice over");
        assert_eq!(next_window(us(120), us(150), base, max), max, "never beyond max");
        assert_eq!(next_window(max, us(201), base, max), base, "a pause beyond max is no conversation");
        // Shorter gaps bring it down an eighth of the way at a time.
        let mut w = max;
        let mut seen = vec![];
        for _ in 0..4 {
            w = next_window(w, us(10), base, max);
            seen.push(w.as_nanos());
        }
        assert_eq!(seen, [181_250, 164_843, 150_487, 137_926]);
        for _ in 0..60 {
            w = next_window(w, us(10), base, max);
        }
        assert!(w < us(51) && w >= base, "{w:?}");
    }
}
