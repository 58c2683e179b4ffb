//! ffverbs: a FreeFlow device `ff0` behind the libibverbs ABI.
//!
//! The cdylib is `libibverbs.so.1` for unmodified verbs applications
//! (perftest, anything linked against Debian 12's rdma-core 44): put a
//! directory holding it under that name first in `LD_LIBRARY_PATH`.
//!
//! - [`sys`]: the C layouts (bindgen on `infiniband/verbs.h`);
//! - [`abi`]: the exported functions (unsafe FFI: pointer checks, panics
//!   caught) over the core;
//! - [`dev`]: the device, protection domains, registrations, completion
//!   queues and channels;
//! - [`qp`]: RC queue pairs, each an ffcore connection through the router;
//! - [`srq`]: shared receive queues;
//! - [`ud`]: UD queue pairs and their datagram links;
//! - [`wire`]: what travels on that connection;
//! - [`wr`]: the `ibv_wr_*` interface of queue pairs (`ibv_create_qp_ex`);
//! - [`cqx`]: the extended completion queue (`ibv_create_cq_ex`).

pub mod abi;
pub mod cqx;
pub mod dev;
pub mod qp;
pub mod srq;
pub mod ud;
pub mod sys;
pub mod wire;
pub mod wr;

mod exports {
    #![allow(non_upper_case_globals, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/exports.rs"));
}
