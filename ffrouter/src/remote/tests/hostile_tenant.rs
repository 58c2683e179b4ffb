//! A tenant with a connection to another host owns that connection's file
//! as much as the router does: it may write anything anywhere in it, at
//! any time. The link between the routers is shared by every tenant's
//! connections, so nothing a client writes there may end it: the
//! scribbled connection fails alone.

use super::*;

/// The connections router `i` forwards now.
fn forwarded(two: &Two, i: usize) -> Vec<Arc<Fwd>> {
    let r = two.remote(i);
    let by = r.by_client.lock().unwrap();
    by.values().flatten().filter_map(Weak::upgrade).collect()
}

/// Writes a random word somewhere in `mem` (on the control page half the
/// time), as a hostile client can through its own mapping.
fn scribble_once(mem: &SharedMem) {
    let r: u64 = rand::random();
    let at = if r & 1 == 0 { (r >> 1) as usize % 512 } else { (r >> 1) as usize % (mem.len() / 8) };
    let v: u64 = match r >> 60 {
        0..=3 => 0,
        4..=7 => rand::random::<u64>() % (1 << 24),
        8 => u64::MAX,
        _ => rand::random(),
    };
    // SAFETY: `at` is a word inside the mapping. The router only reads
    // this memory through checked accesses that tolerate any value at any
    // time, which is what is tested.
    unsafe { std::ptr::write_volatile((mem.as_ptr() as *mut u64).add(at), v) };
}

/// Far more than a client of a scribbled connection needs to give up.
const STUCK: Duration = Duration::from_secs(60);

/// Connection after connection between the routers, each streamed both
/// ways while one of its clients (the one on router 0) scribbles over its
/// file, a word every 100 µs or so, until both of its ends fail; all the
/// while another connection over the same link moves every size both ways,
/// every byte checked. The link stays up throughout.
#[test]
fn a_client_scribbling_over_its_connection_file_ends_only_its_connection() {
    // (RUST_LOG=warn shows why a link went, if one does.)
    let _ = env_logger::builder().is_test(true).try_init();
    let two = Two::new(Transport::Tcp, 64 << 10);
    let (_c, mut a, mut b) = conn_pair(&two);
    let remote = two.remote(0);
    let links = remote.links();
    let done = AtomicBool::new(false);
    let rounds = std::thread::scope(|sc| {
        let hostile = sc.spawn(|| {
            let mut rounds = 0;
            while !done.load(Ordering::Relaxed) || rounds < 10 {
                let before = forwarded(&two, 0);
                let (_hc, ha, hb) = conn_pair(&two);
                // Its client may accept it a moment before its pump starts.
                let t = Instant::now();
                let f = loop {
                    if let Some(f) = forwarded(&two, 0).into_iter().find(|f| !before.iter().any(|o| Arc::ptr_eq(o, f))) {
                        break f;
                    }
                    assert!(t.elapsed() < Duration::from_secs(10), "the new connection never got its pump");
                    std::thread::sleep(Duration::from_millis(1));
                };
                // Its clients run on threads of their own (not scoped), so
                // that one stuck in its library fails the test here
                // instead of hanging it: each returns within 2 s plus one
                // call's 20 ms timeout.
                let failed = Arc::new(AtomicUsize::new(0));
                for mut c in [ha, hb] {
                    let failed = failed.clone();
                    std::thread::spawn(move || {
                        let msg = vec![5u8; 3000];
                        let mut buf = vec![0u8; 70_000];
                        let short = Some(Duration::from_millis(20));
                        let t = Instant::now();
                        while t.elapsed() < Duration::from_secs(2) {
                            let sent = c.send(&msg, 1, short);
                            let got = c.recv(&mut buf, 1, short);
                            let broken = |r: &ffcore::Result<usize>| matches!(r, Err(e) if !matches!(e, ffcore::Error::Timeout(_)));
                            if broken(&sent) && broken(&got) {
                                break;
                            }
                        }
                        failed.fetch_add(1, Ordering::Relaxed);
                    });
                }
                let t = Instant::now();
                while failed.load(Ordering::Relaxed) < 2 {
                    assert!(t.elapsed() < STUCK, "a client of a scribbled connection is stuck in send or recv (20 ms timeouts) after {STUCK:?}");
                    scribble_once(&f.mem);
                    std::thread::sleep(Duration::from_micros(100));
                }
                rounds += 1;
            }
            rounds
        });
        // The scribbler stops when the exchange ends, also if it fails
        // (else the test would wait for it for ever instead of failing).
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let stop = Stop(&done);
        exchange(&mut a, &mut b, 3);
        drop(stop);
        hostile.join().unwrap()
    });
    assert!(rounds >= 10, "{rounds} scribbled connections");
    assert_eq!(remote.links(), links, "the link between the routers stayed up");
    let drops: Vec<_> = Cause::ALL.iter().map(|&c| (c.name(), remote.counters().drops(c))).filter(|d| d.1 > 0).collect();
    assert!(drops.is_empty(), "no link went (links dropped, by cause: {drops:?})");
    exchange(&mut a, &mut b, 1);
}
