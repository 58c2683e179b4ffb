//! Sequences of client operations against the router's bookkeeping: clients
//! of two tenants attach, issue requests naming real, stale and forged ids,
//! and leave. Invariants: no panic; a tenant's counters never show another
//! tenant's objects; once every client has left, nothing is held, and no
//! tenant is charged for anything.
#![no_main]
use std::sync::Arc;

use ffcore::proto::{Reply, Request};
use ffrouter::{Limits, State};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut st = State::new(Limits { ring_size: 4096, max_client_bytes: 1 << 20, max_client_objects: 16, max_backlog: 4, max_fds: 48, max_threads: 8, tenants: 2, ..Limits::default() });
    let tenants: [Arc<str>; 2] = ["a".into(), "b".into()];
    let mut clients: Vec<u64> = Vec::new();
    // Ids the router handed out, so the fuzzer can name real objects.
    let mut ids: Vec<u64> = vec![0, 1, u64::MAX];
    let mut handles: Vec<(u64, u64)> = Vec::new();
    let mut it = data.chunks_exact(3);
    for op in &mut it {
        let pick = |v: &Vec<u64>, b: u8| v[b as usize % v.len()];
        match op[0] % 10 {
            0 | 1 => clients.extend(st.add_client(tenants[op[1] as usize % 2].clone()).ok()),
            2 if !clients.is_empty() => {
                let c = clients.remove(op[1] as usize % clients.len());
                st.remove_client(c);
            }
            _ if clients.is_empty() => {}
            k => {
                let c = clients[op[1] as usize % clients.len()];
                let req = match k {
                    3 => Request::Listen,
                    4 => {
                        let (l, n) = if handles.is_empty() || op[2] & 1 == 1 {
                            (pick(&ids, op[2]), op[2] as u64)
                        } else {
                            handles[op[2] as usize % handles.len()]
                        };
                        Request::Connect { router_id: st.router_id, listener: l, nonce: n }
                    }
                    5 => Request::Accept { listener: pick(&ids, op[2]) },
                    6 => Request::CloseConn { conn: pick(&ids, op[2]) },
                    7 => Request::CloseListener { listener: pick(&ids, op[2]) },
                    8 => Request::AllocRegion { len: 1 + op[2] as u64 * 4096 },
                    _ => Request::FreeRegion { region: pick(&ids, op[2]) },
                };
                match st.handle(c, req).reply {
                    Reply::Listening { listener, nonce } => {
                        ids.push(listener);
                        handles.push((listener, nonce));
                    }
                    Reply::Connected { conn, .. } => ids.push(conn),
                    Reply::Region { region, .. } => ids.push(region),
                    _ => {}
                }
            }
        }
        let all = st.stats(None);
        let (a, b) = (st.stats(Some("a")), st.stats(Some("b")));
        assert_eq!(all.conns, a.conns + b.conns);
        assert_eq!(all.shared_bytes, a.shared_bytes + b.shared_bytes);
    }
    for c in clients {
        st.remove_client(c);
    }
    let s = st.stats(None);
    assert_eq!((s.clients, s.listeners, s.conns, s.regions, s.shared_bytes), (0, 0, 0, 0, 0), "{s:?}");
    assert_eq!((st.usage("a"), st.usage("b")), ((0, 0), (0, 0)));
});
