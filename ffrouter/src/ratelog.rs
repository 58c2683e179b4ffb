//! Rate-limited logging for lines that tenants or remote parties can cause
//! at will (attach, refusals, failed handshakes): at most [`BURST`] lines
//! at once and [`PER_SEC`] a second per call site and key (the tenant, or
//! nothing for remote parties); the rest are counted and the count is
//! printed with the next line that goes out. The table of keys is bounded.
//!
//! ```text
//! ratelog::limited!(warn, "handshake", "", "link handshake from {from} failed: {e}");
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

pub const BURST: f64 = 20.0;
pub const PER_SEC: f64 = 10.0;
/// Keys remembered at most (sites times tenants stay far below).
const MAX_KEYS: usize = 4096;

struct Bucket {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

static BUCKETS: Mutex<Option<HashMap<(&'static str, String), Bucket>>> = Mutex::new(None);

/// May a line of `site` for `key` be logged now? `Some(n)`: yes, and `n`
/// lines were suppressed since the last one that went out.
pub fn allow(site: &'static str, key: &str) -> Option<u64> {
    allow_at(site, key, Instant::now())
}

fn allow_at(site: &'static str, key: &str, now: Instant) -> Option<u64> {
    let mut g = BUCKETS.lock().unwrap_or_else(|p| p.into_inner());
    let map = g.get_or_insert_with(HashMap::new);
    if map.len() >= MAX_KEYS && !map.contains_key(&(site, key.to_string())) {
        // Forget buckets that have refilled: they hold no state worth keeping.
        map.retain(|_, b| b.suppressed > 0 || now.saturating_duration_since(b.last).as_secs_f64() * PER_SEC < BURST);
        if map.len() >= MAX_KEYS {
            return None;
        }
    }
    let b = map.entry((site, key.to_string())).or_insert(Bucket { tokens: BURST, last: now, suppressed: 0 });
    b.tokens = (b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * PER_SEC).min(BURST);
    b.last = now;
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        Some(std::mem::take(&mut b.suppressed))
    } else {
        b.suppressed += 1;
        None
    }
}

/// `limited!(level, site, key, format...)`: logs like `log::level!` within
/// the rate of [`allow`].
#[macro_export]
macro_rules! limited {
    ($lvl:ident, $site:expr, $key:expr, $($arg:tt)+) => {
        if let Some(n) = $crate::ratelog::allow($site, $key) {
            if n > 0 {
                log::$lvl!("{} ({n} similar lines suppressed)", format_args!($($arg)+));
            } else {
                log::$lvl!($($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_pass_then_the_rate_holds_and_suppressed_lines_are_counted() {
        let t0 = Instant::now();
        let passed = (0..1000).filter(|_| allow_at("test-site", "t", t0).is_some()).count();
        assert_eq!(passed, BURST as usize);
        // Another key (tenant) is not affected.
        assert_eq!(allow_at("test-site", "u", t0), Some(0));
        // One second later: PER_SEC more, the first one reporting the rest.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(allow_at("test-site", "t", t1), Some(1000 - BURST as u64));
        let more = (0..1000).filter(|_| allow_at("test-site", "t", t1).is_some()).count();
        assert_eq!(more, PER_SEC as usize - 1);
    }
}
