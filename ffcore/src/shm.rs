//! Shadow memory: memfd-backed regions shared between the router and a client.
//!
//! The router creates every shared file itself (rings and shadow regions),
//! sizes it and seals it against shrinking and growing before any client sees
//! it, so no client can make another party's mapping fault by truncating the
//! file. Files are anonymous (memfd), reachable only by holding the
//! descriptor: no /dev/shm name, no shared IPC namespace.
//!
//! Contents are shared with another, untrusted process. We never form Rust
//! references (`&[u8]`, `&T`) to shared bytes; only raw pointers, atomics and
//! copies, and every value read from shared memory is validated before use.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use memfd::{FileSeal, Memfd, MemfdOptions};
use memmap2::{MmapOptions, MmapRaw};

use crate::error::{Error, Result};

/// Bytes before a region's data: one page the router writes
/// ([`REGION_LIVE`] or [`REGION_REVOKED`] in its first word), so a region's
/// data can be mapped page-aligned over a registered buffer.
pub fn region_header() -> usize {
    crate::shadow::page_size()
}
/// Region header states.
pub const REGION_LIVE: u64 = 1;
pub const REGION_REVOKED: u64 = 2;

/// Seals every shared file carries.
const SEALS: [FileSeal; 3] = [FileSeal::SealShrink, FileSeal::SealGrow, FileSeal::SealSeal];

/// A mapped, sealed memfd.
#[derive(Debug)]
pub struct SharedMem {
    map: MmapRaw,
    file: File,
}

impl SharedMem {
    /// Creates, sizes, seals and maps a new shared file (router side).
    pub fn create(name: &str, len: usize) -> Result<SharedMem> {
        if len == 0 {
            return Err(Error::InvalidArgument("empty shared region".into()));
        }
        let mfd = MemfdOptions::default()
            .allow_sealing(true)
            .close_on_exec(true)
            .create(name)
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        mfd.as_file().set_len(len as u64)?;
        mfd.add_seals(&SEALS).map_err(|e| Error::Io(std::io::Error::other(e)))?;
        Self::map(mfd.into_file(), len)
    }

    /// Maps a shared file received from the router, checking that it is a
    /// sealed memfd of exactly `len` bytes.
    pub fn from_fd(fd: OwnedFd, len: usize) -> Result<SharedMem> {
        Self::map(checked_file(fd, len)?, len)
    }

    /// As [`SharedMem::from_fd`], for a descriptor opened read-only: the
    /// mapping is read-only (writing through it faults).
    pub fn from_fd_read_only(fd: OwnedFd, len: usize) -> Result<SharedMem> {
        let file = checked_file(fd, len)?;
        let map = MmapOptions::new().len(len).map_raw_read_only(&file)?;
        Ok(SharedMem { map, file })
    }

    fn map(file: File, len: usize) -> Result<SharedMem> {
        let map = MmapOptions::new().len(len).map_raw(&file)?;
        Ok(SharedMem { map, file })
    }

    /// The region state word at the start of a region file's header.
    pub fn region_state(&self) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: every shared file is at least a page long and page
        // aligned; the word is only accessed atomically.
        unsafe { &*(self.as_ptr() as *const std::sync::atomic::AtomicU64) }
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Checks that a received descriptor is a memfd sealed against resizing,
/// of exactly `len` bytes.
pub fn checked_file(fd: OwnedFd, len: usize) -> Result<File> {
        let mfd = Memfd::try_from_fd(fd).map_err(|_| Error::protocol("shared file is not a memfd"))?;
        let seals = mfd.seals().map_err(|e| Error::Io(std::io::Error::other(e)))?;
        if !seals.contains(&FileSeal::SealShrink) || !seals.contains(&FileSeal::SealGrow) {
            return Err(Error::protocol("shared memfd is not sealed against resizing"));
        }
        let file = mfd.into_file();
        let size = file.metadata()?.len();
        if size != len as u64 {
            return Err(Error::protocol(format!("shared memfd has {size} bytes, expected {len}")));
        }
        Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_against_resizing() {
        let m = SharedMem::create("t", 8192).unwrap();
        let f = m.file.try_clone().unwrap();
        assert!(f.set_len(4096).is_err(), "shrink must be refused");
        assert!(f.set_len(1 << 20).is_err(), "grow must be refused");
        let other = SharedMem::from_fd(OwnedFd::from(f), 8192).unwrap();
        unsafe {
            m.as_ptr().add(100).write(42);
            assert_eq!(other.as_ptr().add(100).read(), 42);
        }
        let f = m.file.try_clone().unwrap();
        assert!(SharedMem::from_fd(OwnedFd::from(f), 4096).is_err(), "size is checked");
    }

    #[test]
    fn refuses_unsealed_and_non_memfd() {
        let f = File::open("/proc/self/exe").unwrap();
        assert!(SharedMem::from_fd(OwnedFd::from(f), 4096).is_err());
        let mfd = MemfdOptions::default().allow_sealing(true).create("u").unwrap();
        mfd.as_file().set_len(4096).unwrap();
        assert!(SharedMem::from_fd(OwnedFd::from(mfd.into_file()), 4096).is_err());
    }
}
