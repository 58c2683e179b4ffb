//! Logging through NCCL's logger, so `NCCL_DEBUG=INFO` shows our lines
//! (prefixed `NET/FreeFlow : `) next to NCCL's own.
//!
//! The `log` records of ffcore go the same way (its "peer closed" warnings,
//! for instance). Before NCCL hands us its logger, or if it passes NULL,
//! warnings go to stderr and the rest is dropped.

use std::ffi::{c_int, c_ulong, CString};
use std::sync::{Mutex, Once};

use crate::abi::{Logger, LOG_INFO, LOG_NET, LOG_TRACE, LOG_WARN};

static NCCL_LOGGER: Mutex<Option<Logger>> = Mutex::new(None);

/// Remembers NCCL's logger and routes the `log` crate to it.
pub fn install(f: Option<Logger>) {
    if f.is_some() {
        *NCCL_LOGGER.lock().unwrap_or_else(|p| p.into_inner()) = f;
    }
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if log::set_logger(&Bridge).is_ok() {
            let trace = std::env::var("NCCL_DEBUG").is_ok_and(|v| v.eq_ignore_ascii_case("TRACE"));
            log::set_max_level(if trace { log::LevelFilter::Trace } else { log::LevelFilter::Info });
        }
    });
}

pub fn warn(flags: c_ulong, msg: &str) {
    emit(LOG_WARN, flags, 0, msg);
}

pub fn info(flags: c_ulong, msg: &str) {
    emit(LOG_INFO, flags, 0, msg);
}

fn emit(level: c_int, flags: c_ulong, line: u32, msg: &str) {
    let logger = *NCCL_LOGGER.lock().unwrap_or_else(|p| p.into_inner());
    let text = format!("NET/FreeFlow : {msg}");
    match logger {
        Some(f) => {
            let c = CString::new(text.replace('\0', " ")).expect("NULs were replaced");
            // SAFETY: `f` is the logger NCCL gave to `init`; NCCL keeps it
            // valid while the plugin is loaded. Its contract is printf-like,
            // and we pass the format "%s" with exactly one NUL-terminated
            // string argument, plus a static NUL-terminated file name.
            unsafe { f(level, flags, c"nccl-net-ff".as_ptr(), line as c_int, c"%s".as_ptr(), c.as_ptr()) };
        }
        None if level <= LOG_WARN => eprintln!("{text}"),
        None => {}
    }
}

/// Routes `log` records (ours and ffcore's) to NCCL.
struct Bridge;

impl log::Log for Bridge {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, r: &log::Record) {
        let level = match r.level() {
            log::Level::Error | log::Level::Warn => LOG_WARN,
            log::Level::Info => LOG_INFO,
            _ => LOG_TRACE,
        };
        emit(level, LOG_NET, r.line().unwrap_or(0), &r.args().to_string());
    }

    fn flush(&self) {}
}
