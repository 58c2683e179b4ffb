//! Logging through UCX's own logger, so `UCX_LOG_LEVEL` controls our lines
//! and they look like UCX's (`[...] ff  ...`).
use crate::sys::*;
use std::ffi::CString;

pub fn enabled(level: ucs_log_level_t) -> bool {
    // SAFETY: libucs's global options; the level is a plain int read.
    unsafe { level <= std::ptr::addr_of!(ucs_global_opts.log_component.log_level).read() }
}

pub fn emit(level: ucs_log_level_t, msg: &str) {
    if !enabled(level) {
        return;
    }
    let msg = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    // SAFETY: printf-style call with a "%s" format and one C string argument;
    // the component config is libucs's global one.
    unsafe {
        ucs_log_dispatch(
            c"uct_ff".as_ptr(),
            0,
            c"ff".as_ptr(),
            level,
            std::ptr::addr_of_mut!(ucs_global_opts.log_component),
            c"%s".as_ptr(),
            msg.as_ptr(),
        );
    }
}

macro_rules! ff_log {
    ($lvl:expr, $($arg:tt)*) => {
        if $crate::log::enabled($lvl) {
            $crate::log::emit($lvl, &format!($($arg)*));
        }
    };
}
macro_rules! ff_error { ($($arg:tt)*) => { ff_log!($crate::sys::UCS_LOG_LEVEL_ERROR, $($arg)*) }; }
macro_rules! ff_warn { ($($arg:tt)*) => { ff_log!($crate::sys::UCS_LOG_LEVEL_WARN, $($arg)*) }; }
macro_rules! ff_info { ($($arg:tt)*) => { ff_log!($crate::sys::UCS_LOG_LEVEL_INFO, $($arg)*) }; }
macro_rules! ff_diag { ($($arg:tt)*) => { ff_log!($crate::sys::UCS_LOG_LEVEL_DIAG, $($arg)*) }; }
macro_rules! ff_debug { ($($arg:tt)*) => { ff_log!($crate::sys::UCS_LOG_LEVEL_DEBUG, $($arg)*) }; }
