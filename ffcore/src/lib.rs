//! FreeFlow core: what the router and both plugins share.
//!
//! - [`proto`]: the client <-> router protocol (framed, versioned, validated);
//! - [`fdpass`]: frames with descriptors over Unix sockets;
//! - [`shm`]: sealed memfd shadow memory;
//! - [`shadow`] and [`mr`]: registered buffers made shadow memory in place, and peers' access to them;
//! - [`atomic`]: remote atomic operations (what they do; done on memory mapped here);
//! - [`ring`] and [`futex`]: the shared-memory rings and their wake-ups;
//! - [`conn`]: tagged, ordered messages over a ring pair (the data path);
//! - [`client`]: the endpoint API plugins map onto ([`Context`], [`Listener`], [`Conn`]);
//! - [`handle`]: the out-of-band connection handle;
//! - [`wake`]: an event descriptor that sleeps on many connections (epoll users).
//!
//! See docs/ARCHITECTURE.md for the picture.

pub mod atomic;
pub mod client;
pub mod conn;
pub mod error;
pub mod fdpass;
pub mod futex;
pub mod handle;
pub mod liveness;
pub mod mr;
pub mod page;
pub mod polite;
pub mod proto;
pub mod ring;
pub mod shadow;
pub mod shm;
pub mod wake;

pub use atomic::{AtomicOp, Width};
pub use client::{Context, Listener, MemKey, Region, RegionMaker};
pub use mr::{RemoteKey, RemoteMap, ShadowMr};
pub use conn::{Conn, Req, TAG_ANY};
pub use error::{Error, ErrorCode, Result};
pub use handle::Handle;
