//! Registered memory becomes shadow memory: the whole pages of a registered
//! buffer are moved, in place, onto a router-made shared file, so the router
//! and the peers its remote key grants read and write the application's
//! buffer directly (FreeFlow's "a registered region *is* shared memory").
//!
//! How ([`install`]): map the region's file somewhere, copy the buffer's
//! pages into it, then `mremap(MREMAP_FIXED)` that mapping over the buffer's
//! own addresses — one system call that replaces the old pages atomically,
//! so the buffer is never unmapped, not even for an instant.
//! [`restore`] undoes it at deregistration: fresh private pages, the
//! contents copied back, moved over the buffer the same way. Peers that
//! still map the region's file then hold pages the application no longer
//! uses: revocation needs no cooperation from them.
//!
//! Invariants and hazards (tested in `tests/shadow.rs`):
//! - only **whole pages inside** the registered range move ([`interior`]);
//!   the partial first and last page stay private, so bytes outside the
//!   range are never shared with anyone and never copied: another thread
//!   may write them during the switch;
//! - writes *into* the range by another thread between the copy and the
//!   remap would be lost, so moving (both ways) holds [`writing`]'s lock
//!   exclusively, and every thread of ours that writes application memory
//!   by address (a progress thread placing received bytes: ffcore's
//!   connections, the verbs device) holds it shared for each copy. This
//!   matters because the range moved is not only the buffer being
//!   registered: a registration cache merges overlapping registrations
//!   into one (UCX's does), and deregistering the old ones moves their
//!   pages back, so a move may cover a neighbour's buffer with a receive
//!   in flight (seen: a 4 MiB receive that kept zero pages, 2026-12-05).
//!   The application's own threads' writes are not covered: those made
//!   into a range while it moves may be lost (the contents of a buffer
//!   being registered are undefined to an RDMA NIC too, but here also
//!   those of a buffer that shares a merged registration's pages);
//! - only private, anonymous, read-write memory (malloc, mmap, the heap)
//!   moves ([`check_private_anon`]): file mappings, stacks, memory already
//!   shadowed and anything a driver mapped (CUDA host memory comes from a
//!   device file) are refused, and the caller keeps the copy path. Pinned
//!   anonymous memory (`cudaHostRegister`) cannot be told apart, which is
//!   why the NCCL plugin never asks for shadow memory;
//! - the moved pages are `MADV_DONTFORK`, as `ibv_reg_mr` makes them: a
//!   child does not inherit them (touching them faults in the child), so a
//!   child never writes into the parent's buffer or its peers' view of it;
//! - if the application unmaps the buffer while registered (free of a large
//!   block), the file's pages simply stay with the router and peers until
//!   deregistration; [`restore`] then finds the range no longer maps the file
//!   and leaves whatever is there now alone, and a registration of memory
//!   mapped there since makes shadow memory of its own rather than share the
//!   old segment (`mr::register` checks [`maps_file`]). Until then, or until
//!   the old registration goes, sends from that memory and receives into it
//!   that name no registration take the old pages (`mr::find`), as a stale
//!   memory key does on a NIC.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;

use crate::error::{Error, Result};

/// Moving pages holds it exclusively; copies into application memory by
/// our threads hold it shared (see the module's hazards).
static MOVING: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Hold this while a thread of ours writes application memory by address
/// (received bytes into a receive's buffer, an atomic on registered
/// memory), one copy at a time: pages are not moved meanwhile, so the
/// write is not lost. Never hold it across anything that may drop a
/// registration or a shadow segment (that moves pages: a deadlock).
pub fn writing() -> std::sync::RwLockReadGuard<'static, ()> {
    MOVING.read().unwrap_or_else(|e| e.into_inner())
}

/// The page size every mapping here is aligned to.
pub fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize)
}

/// The whole pages inside `[ptr, ptr+len)`, as (start, length); length 0
/// when the range holds no whole page.
pub fn interior(ptr: usize, len: usize) -> (usize, usize) {
    let page = page_size();
    let end = ptr.saturating_add(len) / page * page;
    match ptr.checked_next_multiple_of(page) {
        Some(start) if end > start => (start, end - start),
        _ => (ptr, 0),
    }
}

/// One line of /proc/self/maps.
struct Vma {
    start: usize,
    end: usize,
    perms: String,
    offset: u64,
    inode: u64,
    path: String,
}

fn vmas() -> Result<Vec<Vma>> {
    let f = BufReader::new(File::open("/proc/self/maps")?);
    let mut out = Vec::new();
    for line in f.lines() {
        let line = line?;
        let mut it = line.split_ascii_whitespace();
        let (Some(range), Some(perms), Some(offset), Some(_dev), Some(inode)) = (it.next(), it.next(), it.next(), it.next(), it.next()) else {
            continue;
        };
        let path = it.collect::<Vec<_>>().join(" ");
        let Some((s, e)) = range.split_once('-') else { continue };
        let hex = |x: &str| usize::from_str_radix(x, 16).ok();
        let (Some(start), Some(end), Some(offset), Ok(inode)) = (hex(s), hex(e), hex(offset), inode.parse()) else {
            continue;
        };
        out.push(Vma { start, end, perms: perms.to_string(), offset: offset as u64, inode, path });
    }
    Ok(out)
}

/// Checks that every byte of `[start, start+len)` is mapped, and that every
/// mapping there passes `ok`.
fn covered(start: usize, len: usize, ok: impl Fn(&Vma) -> std::result::Result<(), String>) -> Result<()> {
    let end = start + len;
    let mut at = start;
    for v in vmas()?.iter().filter(|v| v.end > start && v.start < end) {
        if v.start > at {
            break;
        }
        ok(v).map_err(|why| Error::InvalidArgument(format!("{at:#x}..{end:#x}: {why}")))?;
        at = v.end;
        if at >= end {
            return Ok(());
        }
    }
    Err(Error::InvalidArgument(format!("{at:#x}..{end:#x} is not mapped")))
}

/// Only private anonymous read-write memory may become shadow memory.
pub fn check_private_anon(start: usize, len: usize) -> Result<()> {
    covered(start, len, |v| {
        if v.perms != "rw-p" {
            return Err(format!("mapping is {} (only private read-write memory is shared)", v.perms));
        }
        if v.inode != 0 || !(v.path.is_empty() || v.path == "[heap]") {
            return Err(format!("mapping of {:?} is not anonymous memory", v.path));
        }
        Ok(())
    })
}

/// Whether `[addr, addr+len)` still maps `file` from `offset` on.
pub fn maps_file(file: BorrowedFd<'_>, offset: u64, addr: usize, len: usize) -> Result<bool> {
    let ino = File::from(file.try_clone_to_owned()?).metadata()?.ino();
    Ok(covered(addr, len, |v| {
        // The same file, shared, and the same offset for the same address.
        let same_place = v.offset as i128 - v.start as i128 == offset as i128 - addr as i128;
        if v.inode != ino || v.perms.as_bytes().get(3) != Some(&b's') || !same_place {
            return Err("no longer shadow memory".into());
        }
        Ok(())
    })
    .is_ok())
}

// The mapping calls below are raw system calls, not libc's functions:
// memory hooks (UCX's ucm) interpose on those, and ucm's `mremap` drops the
// new address MREMAP_FIXED needs. Nor should a registration cache hear of
// our remapping as an unmap of the very buffer being registered.

unsafe fn sys_mmap(len: usize, flags: libc::c_int, fd: libc::c_int, off: libc::off_t) -> *mut libc::c_void {
    libc::syscall(libc::SYS_mmap, 0usize, len, libc::PROT_READ | libc::PROT_WRITE, flags, fd, off) as *mut libc::c_void
}

unsafe fn sys_munmap(addr: *mut u8, len: usize) {
    libc::syscall(libc::SYS_munmap, addr, len);
}

unsafe fn sys_mremap_fixed(from: *mut u8, len: usize, to: usize) -> bool {
    let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
    libc::syscall(libc::SYS_mremap, from, len, len, flags, to) as usize == to
}

unsafe fn sys_madvise(addr: usize, len: usize, advice: libc::c_int) -> bool {
    libc::syscall(libc::SYS_madvise, addr, len, advice) == 0
}

fn os_err(what: &str) -> Error {
    let e = std::io::Error::last_os_error();
    Error::Io(std::io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// A temporary mapping of `len` bytes (of `fd` at `offset`, or anonymous).
unsafe fn map_tmp(fd: Option<(BorrowedFd<'_>, u64)>, len: usize) -> Result<*mut u8> {
    let (flags, raw, off) = match fd {
        Some((fd, off)) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd.as_raw_fd(), off as libc::off_t),
        None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE, -1, 0),
    };
    let p = sys_mmap(len, flags, raw, off);
    if p == libc::MAP_FAILED {
        return Err(os_err("mmap"));
    }
    Ok(p as *mut u8)
}

/// Copies `[addr, addr+len)` into a fresh mapping `tmp` and moves it over
/// `addr` in one `mremap`, while no thread of ours writes (see [`writing`]).
unsafe fn swap_in(tmp: *mut u8, addr: usize, len: usize) -> Result<()> {
    let _moving = MOVING.write().unwrap_or_else(|e| e.into_inner());
    std::ptr::copy_nonoverlapping(addr as *const u8, tmp, len);
    if !sys_mremap_fixed(tmp, len, addr) {
        let e = os_err("mremap");
        sys_munmap(tmp, len);
        return Err(e);
    }
    Ok(())
}

/// Moves the whole pages `[addr, addr+len)` onto `fd` at `offset`, keeping
/// their contents, and marks them `MADV_DONTFORK`.
///
/// # Safety
/// `[addr, addr+len)` is page aligned and is memory of this process that no
/// one else (driver, allocator) relies on staying where it is; `fd` holds at
/// least `offset + len` bytes and stays sealed against shrinking.
pub unsafe fn install(fd: BorrowedFd<'_>, offset: u64, addr: usize, len: usize) -> Result<()> {
    check_private_anon(addr, len)?;
    let tmp = map_tmp(Some((fd, offset)), len)?;
    swap_in(tmp, addr, len)?;
    if !sys_madvise(addr, len, libc::MADV_DONTFORK) {
        return Err(os_err("madvise(MADV_DONTFORK)"));
    }
    Ok(())
}

/// Undoes [`install`]: private pages again, same contents. Returns false
/// (and touches nothing) if the range no longer maps `fd` (the application
/// unmapped it, or mapped something else there).
///
/// # Safety
/// As for [`install`]; `[addr, addr+len)` was installed from `fd`/`offset`.
pub unsafe fn restore(fd: BorrowedFd<'_>, offset: u64, addr: usize, len: usize) -> Result<bool> {
    if !maps_file(fd, offset, addr, len)? {
        return Ok(false);
    }
    let tmp = map_tmp(None, len)?;
    swap_in(tmp, addr, len)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interior_pages() {
        let p = page_size();
        assert_eq!(interior(0, p), (0, p));
        assert_eq!(interior(1, p), (1, 0));
        assert_eq!(interior(16, 3 * p), (p, 2 * p));
        assert_eq!(interior(p, 2 * p - 1), (p, p));
        assert_eq!(interior(5, 0), (5, 0));
        assert_eq!(interior(usize::MAX - 10, 5).1, 0);
    }

    /// A thread of ours writing the pages (under [`writing`]) while they
    /// move back and forth never loses a write: every value it wrote is
    /// there when it reads it back.
    #[test]
    fn moving_pages_loses_no_write_made_under_the_lock() {
        use std::os::fd::AsFd;
        use std::sync::atomic::{AtomicBool, Ordering};
        let p = page_size();
        let len = 64 * p;
        let file = memfd::MemfdOptions::default().create("ffcore-shadow-test").unwrap();
        file.as_file().set_len(len as u64).unwrap();
        // SAFETY: a fresh private anonymous mapping of our own.
        let addr = unsafe { sys_mmap(len, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) } as usize;
        assert_ne!(addr, libc::MAP_FAILED as usize);
        let stop = AtomicBool::new(false);
        std::thread::scope(|t| {
            let writer = t.spawn(|| {
                let (mut v, mut lost) = (1u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let w = writing();
                    for i in 0..len / p {
                        // SAFETY: inside our mapping, aligned; moves hold the lock.
                        unsafe { std::ptr::write_volatile((addr + i * p) as *mut u64, v) };
                    }
                    drop(w);
                    for i in 0..len / p {
                        // SAFETY: as above (a move copies what it replaces).
                        lost += u64::from(unsafe { std::ptr::read_volatile((addr + i * p) as *const u64) } != v);
                    }
                    v += 1;
                }
                (v, lost)
            });
            let fd = file.as_file().as_fd();
            for _ in 0..300 {
                // SAFETY: our mapping, page aligned; the file holds len bytes.
                unsafe {
                    install(fd, 0, addr, len).unwrap();
                    assert!(restore(fd, 0, addr, len).unwrap());
                }
            }
            stop.store(true, Ordering::Relaxed);
            let (rounds, lost) = writer.join().unwrap();
            assert!(rounds > 10, "the writer hardly ran ({rounds} rounds)");
            assert_eq!(lost, 0, "{lost} writes of {rounds} rounds were lost while pages moved");
        });
        // SAFETY: our mapping, no longer used.
        unsafe { sys_munmap(addr as *mut u8, len) };
    }

    #[test]
    fn refuses_what_is_not_private_anonymous() {
        let p = page_size();
        let exe = std::fs::read_to_string("/proc/self/maps").unwrap();
        let text = exe.lines().find(|l| l.contains("r-xp")).unwrap();
        let start = usize::from_str_radix(text.split('-').next().unwrap(), 16).unwrap();
        assert!(check_private_anon(start, p).is_err(), "code");
        let v = vec![0u8; 8 * p];
        let (s, l) = interior(v.as_ptr() as usize, v.len());
        check_private_anon(s, l).unwrap();
        assert!(check_private_anon(0x1000, p).is_err(), "unmapped");
    }
}
