//! `libnccl-net-ff.so`: an NCCL net plugin that carries NCCL's traffic over
//! FreeFlow (through `ffrouter`, between containers on one host).
//!
//! NCCL finds it with `NCCL_NET_PLUGIN=ff` (or an absolute path) and picks
//! it with `NCCL_NET=FreeFlow`. Layout (like aws-ofi-nccl's):
//! - [`net`]: the one implementation, on ffcore;
//! - [`ffi`]: the C boundary (pointer checks, panics caught, errors logged);
//! - `v6` … `v12`: one thin file per ABI version, each exporting its
//!   `ncclNetPlugin_vN` table;
//! - [`abi`]: the C types; [`table`]: ids handed to NCCL; [`logger`]: NCCL's logger.
//!
//! `unsafe` is confined to `ffi` (raw pointers from NCCL), `logger` (the
//! variadic call into NCCL) and `net::post` (buffers handed to ffcore).

#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(not(target_pointer_width = "64"))]
compile_error!("ids are handed to NCCL as 64-bit pointer values");

pub mod abi;
mod ffi;
mod logger;
mod net;
mod table;
mod v10;
mod v11;
mod v12;
mod v6;
mod v7;
mod v8;
mod v9;
