//! Registered buffers become shadow memory (ffcore::mr, ffcore::shadow):
//! the hazards the design names, each tested against a real router.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ffcore::shadow::{check_private_anon, page_size};
use ffcore::{Context, Error, ErrorCode, RemoteMap, ShadowMr};
use fftestkit::RouterProc;

/// `pages` fresh anonymous pages, unmapped on drop.
struct Pages {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: plain memory; the tests synchronise their own accesses.
unsafe impl Send for Pages {}
unsafe impl Sync for Pages {}

impl Pages {
    fn new(pages: usize) -> Pages {
        let len = pages * page_size();
        // SAFETY: a fresh anonymous mapping.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Pages { ptr: ptr as *mut u8, len }
    }
    fn at(&self, off: usize) -> *mut u8 {
        assert!(off <= self.len);
        unsafe { self.ptr.add(off) }
    }
    fn fill(&self, seed: u8) {
        for i in 0..self.len {
            unsafe { self.ptr.add(i).write(seed.wrapping_add((i * 7 % 251) as u8)) };
        }
    }
    fn bytes(&self, off: usize, n: usize) -> Vec<u8> {
        unsafe { std::slice::from_raw_parts(self.at(off), n).to_vec() }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

fn register(ctx: &Context, p: *const u8, len: usize) -> ShadowMr {
    // SAFETY: test memory of our own that nothing else maps.
    unsafe { ctx.register_shadow(p, len) }.unwrap()
}

fn read(m: &RemoteMap, addr: usize, n: usize) -> Result<Vec<u8>, Error> {
    let mut v = vec![0u8; n];
    unsafe { m.read(addr as u64, v.as_mut_ptr(), n) }.map(|_| v)
}

#[test]
fn a_peer_of_the_tenant_reaches_exactly_the_whole_pages_and_sees_the_buffer_itself() {
    let r = RouterProc::start(&["a", "b"], &[]);
    let (owner, peer, other) = (r.context("a"), r.context("a"), r.context("b"));
    let page = page_size();
    let buf = Pages::new(6);
    buf.fill(1);
    let before = buf.bytes(0, buf.len);
    // Unaligned at both ends: pages 1..4 are whole, 0 and 5 partial.
    let (start, len) = (100, 5 * page - 100 + 50);
    let mr = register(&owner, buf.at(start), len);
    assert_eq!(mr.why_not(), None);
    assert_eq!(mr.shared_range(), (buf.at(page) as usize, 4 * page));
    assert_eq!(buf.bytes(0, buf.len), before, "registration keeps the contents");
    check_private_anon(buf.at(0) as usize, page).expect("the partial first page stays private");
    check_private_anon(buf.at(5 * page) as usize, page).expect("the partial last page stays private");
    assert!(check_private_anon(buf.at(page) as usize, page).is_err(), "whole pages are shared");

    let key = mr.remote_key().unwrap();
    let map = peer.map_remote(&key).unwrap();
    let shared = buf.at(page) as usize;
    assert_eq!(read(&map, shared, 4 * page).unwrap(), buf.bytes(page, 4 * page));
    // The same pages: the owner's writes show at once, and the peer's.
    unsafe { buf.at(2 * page + 3).write(0xee) };
    assert_eq!(read(&map, shared + page + 3, 1).unwrap(), [0xee]);
    unsafe { map.write(shared as u64 + 7, [0x5a].as_ptr(), 1) }.unwrap();
    assert_eq!(buf.bytes(page + 7, 1), [0x5a]);
    // Nothing outside the whole pages: not the partial pages of the range,
    // not the neighbours.
    assert!(read(&map, shared - 1, 1).is_err());
    assert!(read(&map, shared + 4 * page - 1, 2).is_err());
    assert!(map.at(u64::MAX, 2).is_err());

    // The read key: same pages, read-only.
    let ro = peer.map_remote(&mr.remote_read_key().unwrap()).unwrap();
    assert_eq!(read(&ro, shared + 7, 1).unwrap(), [0x5a]);
    assert!(matches!(unsafe { ro.write(shared as u64, [1u8].as_ptr(), 1) }, Err(Error::InvalidArgument(_))));
    assert_eq!(buf.bytes(page, 1), before[page..page + 1]);

    // Another tenant, a wrong key, a key for another router: refused.
    let e = other.map_remote(&key).err().unwrap();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    let e = peer.map_remote(&ffcore::RemoteKey { key: key.key ^ 1, ..key }).err().unwrap();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(peer.map_remote(&ffcore::RemoteKey { router_id: [9; 16], ..key }).is_err());

    // Deregistration: revoked for the peer, contents (with the peer's
    // write) back in private pages, and the peer's stale mapping no longer
    // reaches the buffer.
    let now = buf.bytes(0, buf.len);
    drop(mr);
    assert!(!map.is_live());
    assert!(matches!(read(&map, shared, 1), Err(Error::InvalidHandle(_))));
    assert_eq!(buf.bytes(0, buf.len), now);
    check_private_anon(buf.at(0) as usize, buf.len).expect("all private again");
    unsafe { map.at(shared as u64, 1).unwrap().write(0x11) };
    assert_eq!(buf.bytes(page, 1), now[page..page + 1], "a stale mapping does not reach the buffer");
    assert_eq!(peer.map_remote(&key).err().unwrap().code(), Some(ErrorCode::NotFound));
}

#[test]
fn small_overlapping_and_foreign_memory_stays_private_but_registers() {
    let r = RouterProc::start(&["a"], &[]);
    let ctx = r.context("a");
    let page = page_size();
    let buf = Pages::new(16);
    let small = register(&ctx, buf.at(10), page);
    assert!(small.remote_key().is_none());
    assert!(small.why_not().unwrap().contains("no whole page"), "{small:?}");

    let a = register(&ctx, buf.at(0), 8 * page);
    let inside = register(&ctx, buf.at(page + 1), 3 * page);
    assert_eq!(inside.remote_key(), a.remote_key(), "a range inside a segment shares it");
    assert_eq!(inside.shared_range(), (buf.at(2 * page) as usize, 2 * page));
    let across = register(&ctx, buf.at(6 * page), 4 * page);
    assert!(across.why_not().unwrap().contains("overlaps"), "{across:?}");
    let key = a.remote_key().unwrap();
    let peer = r.context("a");
    let map = peer.map_remote(&key).unwrap();
    drop(a);
    assert!(map.is_live(), "still registered through `inside`");
    drop(inside);
    assert!(!map.is_live());
    check_private_anon(buf.at(0) as usize, buf.len).unwrap();

    // A file mapping is not moved (it is not ours to move).
    let f = std::fs::File::open("/proc/self/exe").unwrap();
    let len = 4 * page;
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, std::os::fd::AsRawFd::as_raw_fd(&f), 0) };
    assert_ne!(p, libc::MAP_FAILED);
    let mr = register(&ctx, p as *const u8, len);
    assert!(mr.why_not().unwrap().contains("r--p"), "{mr:?}");
    drop(mr);
    unsafe { libc::munmap(p, len) };
}

#[test]
fn other_threads_writing_next_to_the_range_during_the_switch_lose_nothing() {
    let r = RouterProc::start(&["a"], &[]);
    let ctx = r.context("a");
    let page = page_size();
    let buf = Arc::new(Pages::new(18));
    // The registered range starts 64 bytes into page 1 and ends 64 bytes
    // before page 17: the words just outside it share pages with it.
    let (head, tail) = (page + 56, 17 * page - 64);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (buf, stop) = (buf.clone(), stop.clone());
        let (h, t) = (buf.at(head) as usize, buf.at(tail) as usize);
        std::thread::spawn(move || {
            let _keep = &buf;
            // Each word counts up; a switch that copied a word and then
            // put the copy back over later writes would show as a step back.
            let (mut n, mut lost) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                for w in [h, t] {
                    let seen = unsafe { std::ptr::read_volatile(w as *const u64) };
                    lost += u64::from(seen != n);
                    unsafe { std::ptr::write_volatile(w as *mut u64, n + 1) };
                }
                n += 1;
            }
            (n, lost)
        })
    };
    for _ in 0..200 {
        let mr = register(&ctx, buf.at(page + 64), 16 * page - 128);
        assert_eq!(mr.why_not(), None);
        drop(mr);
    }
    stop.store(true, Ordering::Relaxed);
    let (n, lost) = writer.join().unwrap();
    let read = |off| unsafe { std::ptr::read_volatile(buf.at(off) as *const u64) };
    assert_eq!(lost, 0, "neighbours' writes were lost during the switch");
    assert_eq!((read(head), read(tail)), (n, n));
}

#[test]
fn a_forked_child_never_reaches_the_parents_registered_pages() {
    let r = RouterProc::start(&["a"], &[]);
    let ctx = r.context("a");
    let page = page_size();
    let buf = Pages::new(4);
    buf.fill(3);
    let mr = register(&ctx, buf.at(0), 4 * page);
    let before = buf.bytes(0, buf.len);
    let (shared, _) = mr.shared_range();
    // SAFETY: the child only writes raw memory and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            (shared as *mut u8).add(page).write_volatile(0);
            libc::_exit(0);
        }
    }
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV, "the child could write: status {status:#x}");
    assert_eq!(buf.bytes(0, buf.len), before);
}

#[test]
fn a_buffer_unmapped_while_registered_is_left_alone_at_deregistration() {
    let r = RouterProc::start(&["a"], &[]);
    let (ctx, peer) = (r.context("a"), r.context("a"));
    let page = page_size();
    let buf = Pages::new(8);
    buf.fill(5);
    let addr = buf.ptr;
    let mr = register(&ctx, addr, 8 * page);
    let map = peer.map_remote(&mr.remote_key().unwrap()).unwrap();
    // free() of a large block: the pages go away, and the same addresses
    // are handed out again for something else.
    drop(buf);
    let again = unsafe {
        libc::mmap(addr as *mut libc::c_void, 8 * page, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE, -1, 0)
    };
    assert_eq!(again as *mut u8, addr);
    let fresh = Pages { ptr: addr, len: 8 * page };
    fresh.fill(9);
    let want = fresh.bytes(0, fresh.len);
    // The peer still holds the old pages, which nobody uses any more: its
    // writes do not reach the new memory.
    unsafe { map.write(addr as u64, [0u8; 64].as_ptr(), 64) }.unwrap();
    assert_eq!(fresh.bytes(0, fresh.len), want);
    drop(mr);
    assert_eq!(fresh.bytes(0, fresh.len), want, "deregistration must not touch the new memory");
    check_private_anon(addr as usize, 8 * page).unwrap();
    assert!(!map.is_live());
}

/// A connected pair of clients of tenant `a` (two contexts of this process).
fn pair(r: &RouterProc) -> (Context, ffcore::Conn, Context, ffcore::Conn) {
    let (a, b) = (r.context("a"), r.context("a"));
    let l = b.listen().unwrap();
    let ca = a.connect(&l.handle()).unwrap().unwrap();
    let cb = l.accept_timeout(std::time::Duration::from_secs(10)).unwrap();
    (a, ca, b, cb)
}

fn crc(b: &[u8]) -> u32 {
    crc32fast::hash(b)
}

const T: Option<std::time::Duration> = Some(std::time::Duration::from_secs(60));

#[test]
fn messages_from_registered_buffers_are_copied_once_straight_into_the_receive() {
    let r = RouterProc::start(&["a"], &[]);
    let (actx, mut tx, _bctx, mut rx) = pair(&r);
    let page = page_size();
    // 64 MiB + a page, registered from an unaligned start.
    let big = 64 << 20;
    let buf = Pages::new(big / page + 2);
    buf.fill(11);
    let mr = register(&actx, buf.at(100), big + page);
    assert_eq!(mr.why_not(), None);
    let mut out = vec![0u8; big + 1];
    let mut moved = 0u64;
    for (off, len) in [(100, 0), (100, 1), (100, 100_000), (page, 64 << 10), (777, 1 << 20), (page + 5, (4 << 20) + 1), (100, big)] {
        let src = unsafe { std::slice::from_raw_parts(buf.at(off), len) };
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(tx.send(src, 3, T).unwrap(), len));
            assert_eq!(rx.recv(&mut out, 3, T).unwrap(), len);
        });
        assert_eq!(crc(&out[..len]), crc(src), "{len} bytes at {off}");
        moved += len as u64;
    }
    // The bytes did not go through the ring: only headers, references and
    // the partial pages did.
    let ring = actx.stats().unwrap().bytes_sent;
    assert!(ring < moved / 100, "{ring} bytes through the rings for {moved} bytes sent");

    // A send by reference completes when the receiver has copied it.
    let s = unsafe { tx.isend(buf.at(page), 1 << 20, 4) }.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(tx.test(s).unwrap(), None, "not copied yet: the buffer is not free");
    // Deregistered meanwhile: the segment stays until the copy is done.
    drop(mr);
    assert_eq!(rx.recv(&mut out, 4, T).unwrap(), 1 << 20);
    assert_eq!(tx.wait(s, T).unwrap(), 1 << 20);
    assert_eq!(crc(&out[..1 << 20]), crc(&buf.bytes(page, 1 << 20)));
    check_private_anon(buf.at(page) as usize, big).expect("private again once the send is done");

    // Freed and reallocated between sends: a new registration, new data.
    drop(buf);
    let buf = Pages::new(1024);
    buf.fill(99);
    let mr = register(&actx, buf.at(0), buf.len);
    let s = unsafe { tx.isend(buf.at(0), buf.len, 5) }.unwrap();
    assert_eq!(rx.recv(&mut out, 5, T).unwrap(), buf.len);
    tx.wait(s, T).unwrap();
    assert_eq!(crc(&out[..buf.len]), crc(&buf.bytes(0, buf.len)));
    drop(mr);
}

/// Memory the library allocated as a region is shadow memory already:
/// registering inside it shares the region, and sends from it go by
/// reference too.
#[test]
fn registering_inside_an_allocated_region_shares_it() {
    let r = RouterProc::start(&["a"], &[]);
    let (actx, mut tx, _b, mut rx) = pair(&r);
    let region = actx.alloc_region(8 << 20).unwrap();
    unsafe { std::ptr::write_bytes(region.as_ptr(), 0x3c, region.len()) };
    let mr = register(&actx, unsafe { region.as_ptr().add(100) }, 4 << 20);
    assert_eq!(mr.why_not(), None);
    assert_eq!(mr.remote_key(), Some(region.remote_key()), "the region's own key");
    let src = unsafe { std::slice::from_raw_parts(region.as_ptr().add(100), 4 << 20) };
    let before = actx.stats().unwrap().bytes_sent;
    let mut out = vec![0u8; 4 << 20];
    std::thread::scope(|s| {
        s.spawn(|| assert_eq!(tx.send(src, 1, T).unwrap(), 4 << 20));
        assert_eq!(rx.recv(&mut out, 1, T).unwrap(), 4 << 20);
    });
    assert!(out.iter().all(|&x| x == 0x3c));
    assert!(actx.stats().unwrap().bytes_sent - before < 64 << 10, "sent by reference");
    drop(mr);
    drop(region);
}

/// A region whose mapping goes while a registration inside it still holds
/// it (a registration cache drops it later): memory mapped afterwards at
/// the same addresses, which the kernel hands out again, is not the old
/// region's. Before, it was taken for it: a registration there shared the
/// dead region, and a send from it went by reference to the old pages
/// (the receiver got the old region's bytes, not the buffer's).
#[test]
fn memory_mapped_where_a_dropped_region_was_is_not_taken_for_it() {
    let r = RouterProc::start(&["a"], &[]);
    let (actx, mut tx, _b, mut rx) = pair(&r);
    let region = actx.alloc_region(4 << 20).unwrap();
    unsafe { std::ptr::write_bytes(region.as_ptr(), 0x11, region.len()) };
    let at = region.as_ptr();
    let held = unsafe { actx.register_in_shadow(at, 1 << 20) }.unwrap();
    assert_eq!(held.why_not(), None, "inside the region: shared");
    drop(region);
    // New private memory exactly where the region's data was.
    let len = 4 << 20;
    // SAFETY: the addresses were the region's, now unmapped; FIXED_NOREPLACE
    // fails rather than replace anything mapped there meanwhile.
    let p = unsafe { libc::mmap(at as *mut libc::c_void, len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE, -1, 0) };
    assert_eq!(p as *mut u8, at, "the old addresses could be mapped again");
    unsafe { std::ptr::write_bytes(at, 0x77, len) };
    let mr = unsafe { actx.register_in_shadow(at, 1 << 20) }.unwrap();
    assert!(mr.why_not().is_some(), "private memory is not the dropped region's shadow memory");
    // A send from it carries its own bytes.
    let src = unsafe { std::slice::from_raw_parts(at, 1 << 20) };
    let mut out = vec![0u8; 1 << 20];
    std::thread::scope(|s| {
        s.spawn(|| assert_eq!(tx.send(src, 1, T).unwrap(), 1 << 20));
        assert_eq!(rx.recv(&mut out, 1, T).unwrap(), 1 << 20);
    });
    assert!(out.iter().all(|&x| x == 0x77), "the buffer's bytes, not the old region's");
    drop(mr);
    drop(held);
    unsafe { libc::munmap(p, len) };
}

/// A registered buffer unmapped while its registration is still held (a
/// registration cache deregisters later), and new private memory mapped at
/// the same addresses (free, then malloc, as the heap does): a registration
/// of the new memory makes shadow memory of its own, keeping its bytes; a
/// send from it carries its own bytes and a receive into it lands in it.
/// Before, the registration shared the stale segment: sends went by
/// reference to the old pages and receives were written into them (likely
/// what lost a message's whole pages in CI, Open MPI over rc_verbs over
/// ff0 between containers: "byte 4047 is 0", the partial first page right).
#[test]
fn memory_mapped_where_an_unmapped_registered_buffer_was_registers_anew() {
    let r = RouterProc::start(&["a"], &[]);
    let (actx, mut tx, _b, mut rx) = pair(&r);
    let page = page_size();
    let n = 256;
    let buf = Pages::new(n);
    buf.fill(5);
    let addr = buf.ptr;
    let held = register(&actx, addr, n * page);
    assert_eq!(held.why_not(), None);
    drop(buf);
    let again = unsafe {
        libc::mmap(addr as *mut libc::c_void, n * page, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE, -1, 0)
    };
    assert_eq!(again as *mut u8, addr, "the old addresses could be mapped again");
    let fresh = Pages { ptr: addr, len: n * page };
    fresh.fill(9);
    let want = fresh.bytes(0, fresh.len);
    let mr = register(&actx, fresh.at(0), fresh.len);
    assert_eq!(mr.why_not(), None);
    assert_ne!(mr.remote_key(), held.remote_key(), "the old registration's segment was shared");
    assert!(fresh.bytes(0, fresh.len) == want, "registering changed the buffer");
    // A send from it (by reference) carries its bytes.
    let mut out = vec![0u8; n * page];
    let src = unsafe { std::slice::from_raw_parts(fresh.at(0), fresh.len) };
    std::thread::scope(|s| {
        s.spawn(|| assert_eq!(tx.send(src, 2, T).unwrap(), src.len()));
        assert_eq!(rx.recv(&mut out, 2, T).unwrap(), src.len());
    });
    assert!(out == want, "a send from the new memory carried other bytes");
    // A receive into it lands in it.
    let other: Vec<u8> = (0..n * page).map(|i| (i % 253) as u8).collect();
    let dst = unsafe { std::slice::from_raw_parts_mut(fresh.at(0), fresh.len) };
    std::thread::scope(|s| {
        s.spawn(|| assert_eq!(rx.send(&other, 3, T).unwrap(), other.len()));
        assert_eq!(tx.recv(dst, 3, T).unwrap(), other.len());
    });
    assert!(fresh.bytes(0, fresh.len) == other, "a receive into the new memory went elsewhere");
    drop(mr);
    drop(held);
    assert!(fresh.bytes(0, fresh.len) == other, "deregistration must keep the new memory's bytes");
}

/// A transfer that ends after the application deregistered holds the last
/// reference to its pages; when a progress thread of ours (the verbs
/// device's) ends it, the pages move back to private memory at the
/// application's next registration, not on that thread, where the move
/// would race with the application's own writes (a move loses writes made
/// meanwhile). Until then they stay the revoked region's pages, contents
/// and writes kept.
#[test]
fn pages_a_progress_thread_lets_go_of_move_back_on_an_application_thread() {
    let r = RouterProc::start(&["a"], &[]);
    let (actx, mut tx, _bctx, mut rx) = pair(&r);
    let buf = Pages::new(256);
    buf.fill(5);
    let mr = register(&actx, buf.at(0), buf.len);
    assert_eq!(mr.why_not(), None);
    let n = 1 << 20;
    let s = unsafe { tx.isend(buf.at(0), n, 4) }.unwrap();
    drop(mr);
    let mut out = vec![0u8; n];
    std::thread::scope(|t| {
        t.spawn(|| {
            ffcore::mr::progress_thread();
            assert_eq!(rx.recv(&mut out, 4, T).unwrap(), n);
            // The send ends here, dropping the last reference.
            assert_eq!(tx.wait(s, T).unwrap(), n);
        })
        .join()
        .unwrap();
    });
    assert_eq!(crc(&out), crc(&buf.bytes(0, n)));
    assert!(check_private_anon(buf.at(0) as usize, buf.len).is_err(), "moved back on the progress thread");
    buf.fill(6);
    let other = Pages::new(4);
    let mr2 = register(&actx, other.at(0), other.len);
    check_private_anon(buf.at(0) as usize, buf.len).expect("private again after the application's next registration");
    let want: Vec<u8> = (0..buf.len).map(|i| 6u8.wrapping_add((i * 7 % 251) as u8)).collect();
    assert!(buf.bytes(0, buf.len) == want, "the writes made before the pages moved back were kept");
    drop(mr2);

    // The same ended on an application thread moves them back at once.
    let mr = register(&actx, buf.at(0), buf.len);
    assert_eq!(mr.why_not(), None);
    let s = unsafe { tx.isend(buf.at(0), n, 5) }.unwrap();
    drop(mr);
    assert_eq!(rx.recv(&mut out, 5, T).unwrap(), n);
    assert_eq!(tx.wait(s, T).unwrap(), n);
    check_private_anon(buf.at(0) as usize, buf.len).expect("private again once the send is done");
}
