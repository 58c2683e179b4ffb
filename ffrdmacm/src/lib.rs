//! ffrdmacm: the rdma_cm connection manager for the FreeFlow device `ff0`.
//!
//! The cdylib is `librdmacm.so.1` for unmodified `rdma_cm` applications
//! (rping, perftest's `-R`, anything linked against Debian 12's
//! rdma-core 44): put a directory holding it under that name, beside
//! ffverbs as `libibverbs.so.1`, first in `LD_LIBRARY_PATH`. Connection
//! set-up runs over TCP to the address the application names (as iWARP's
//! does); the queue pairs are ff0's, connected through the router.
//!
//! - [`sys`]: the C layouts (bindgen on `rdma/rdma_cma.h`);
//! - [`abi`]: the exported functions (unsafe FFI: pointer checks, panics
//!   caught) over the core;
//! - [`cm`]: event channels, ids and their states, the engine thread;
//! - [`qp`]: the device and the queue pair transitions;
//! - [`wire`]: the connection manager's messages;
//! - [`addrinfo`]: the address look-up, `rdma_getaddrinfo`.

pub mod abi;
pub mod addrinfo;
pub mod cm;
pub mod qp;
pub mod sys;
pub mod wire;

mod exports {
    #![allow(non_upper_case_globals, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/exports.rs"));
}
