//! The consumer end of a ring reading whatever a hostile producer wrote:
//! arbitrary ring bytes and head. Never panics, never reads or writes
//! outside the ring or the destination buffer.
#![no_main]
use ffcore::ring::{self, Layout};
use ffcore::shm::SharedMem;
use libfuzzer_sys::fuzz_target;

const RING: usize = 4096;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let mem = SharedMem::create("fuzz", ring::file_len(RING)).unwrap();
    ring::init(&mem, RING);
    let head = u64::from_le_bytes(data[..8].try_into().unwrap());
    let body = &data[8..];
    // SAFETY: writes stay inside the mapping: the head word of ring 0 at
    // offset 256 and at most RING bytes of ring 0's data area.
    unsafe {
        (mem.as_ptr().add(256) as *mut u64).write(head);
        let n = body.len().min(RING);
        std::ptr::copy_nonoverlapping(body.as_ptr(), mem.as_ptr().add(ring::CTRL_LEN), n);
    }
    let lay = Layout::new(&mem, RING).unwrap();
    let mut rx = lay.rx(1);
    let mut buf = vec![0u8; RING];
    for _ in 0..256 {
        match rx.peek() {
            Ok(Some(rec)) => {
                assert!(rec.len <= RING);
                // SAFETY: peek validated that rec.len payload bytes lie in the ring.
                unsafe { rx.copy_out(0, buf.as_mut_ptr(), rec.len) };
                rx.consume(rec.len);
            }
            Ok(None) | Err(_) => break,
        }
    }
});
