//! Prometheus metrics: per-tenant and per-connection counters, encoded at
//! scrape time from the router's state (prometheus-client), served over
//! HTTP on `--metrics-addr` at `/metrics` by a small server of our own
//! (one thread, one scrape at a time, never stopped by a failed `accept`).
//!
//! Who can read them: everyone who reaches the address sees every tenant's
//! counters, so the router serves them on loopback only, unless a token is
//! required (`--metrics-token-file`; scrapers send `Authorization: Bearer
//! TOKEN`). Tenants see their own counters through their socket
//! (`ffrouter stats`).
//!
//! Where they come from: clients, listeners, connections, shared bytes,
//! requests and errors are the router's own bookkeeping, as are the links
//! to other routers (up now; gone, by cause; dials that failed). Bytes, messages
//! and queue depths are read from connection control pages that the
//! sending client writes: those families carry `reported_by="client"`, as
//! a client can misstate its own traffic (not anyone else's).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use ffcore::proto::Stats;

use crate::remote::{Cause, Remote};
use crate::state::{ConnRow, State};

/// What the metrics are read from: a router's state, and its links to
/// other hosts if it has any.
#[derive(Clone)]
struct Source {
    state: Arc<Mutex<State>>,
    remote: Option<Arc<Remote>>,
}

impl Source {
    fn of(router: &crate::Router) -> Source {
        Source { state: router.state(), remote: router.remote() }
    }
}

struct RouterCollector(Source);

impl std::fmt::Debug for RouterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouterCollector")
    }
}

type Labels = Vec<(&'static str, String)>;

fn family<M: EncodeMetric>(enc: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(Labels, M)]) -> Result<(), std::fmt::Error> {
    let Some((_, first)) = rows.first() else { return Ok(()) };
    let mut m = enc.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, v) in rows {
        v.encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauges<T>(rows: &[(Labels, T)], f: impl Fn(&T) -> u64) -> Vec<(Labels, ConstGauge<i64>)> {
    rows.iter().map(|(l, x)| (l.clone(), ConstGauge::new(f(x) as i64))).collect()
}

fn counters<T>(rows: &[(Labels, T)], f: impl Fn(&T) -> u64) -> Vec<(Labels, ConstCounter<u64>)> {
    rows.iter().map(|(l, x)| (l.clone(), ConstCounter::new(f(x)))).collect()
}

impl Collector for RouterCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        let tenant: Vec<(Labels, Stats)> = st.tenants().iter().map(|t| (vec![("tenant", t.to_string())], st.stats(Some(t)))).collect();
        let conns = st.conn_rows();
        drop(st);
        // Values read from control pages that the clients write are labelled as theirs.
        let by_client = |mut l: Labels| {
            l.push(("reported_by", "client".to_string()));
            l
        };
        let client: Vec<(Labels, Stats)> = tenant.iter().map(|(l, s)| (by_client(l.clone()), s.clone())).collect();
        let conn: Vec<(Labels, ConnRow)> = conns
            .into_iter()
            .map(|r| (by_client(vec![("tenant", r.tenant.to_string()), ("conn", r.conn.to_string()), ("side", r.side.to_string())]), r))
            .collect();
        family(&mut enc, "ff_tenant_clients", "Attached clients", &gauges(&tenant, |s| s.clients))?;
        family(&mut enc, "ff_tenant_listeners", "Open listeners", &gauges(&tenant, |s| s.listeners))?;
        family(&mut enc, "ff_tenant_connections", "Open connections", &gauges(&tenant, |s| s.conns))?;
        family(&mut enc, "ff_tenant_shared_bytes", "Shared memory held (rings and regions)", &gauges(&tenant, |s| s.shared_bytes))?;
        family(&mut enc, "ff_tenant_queued_bytes", "Bytes waiting in the tenant's rings, as its clients report them", &gauges(&client, |s| s.queued_bytes))?;
        family(&mut enc, "ff_tenant_requests", "Control requests", &counters(&tenant, |s| s.requests))?;
        family(&mut enc, "ff_tenant_errors", "Control requests refused", &counters(&tenant, |s| s.errors))?;
        family(&mut enc, "ff_tenant_sent_bytes", "Bytes sent on open connections (ring bytes), as its clients report them", &counters(&client, |s| s.bytes_sent))?;
        family(&mut enc, "ff_tenant_sent_messages", "Messages sent on open connections, as its clients report them", &counters(&client, |s| s.messages_sent))?;
        family(&mut enc, "ff_conn_sent_bytes", "Ring bytes sent by one side of a connection, as its client reports them", &counters(&conn, |r| r.bytes))?;
        family(&mut enc, "ff_conn_sent_messages", "Messages sent by one side of a connection, as its client reports them", &counters(&conn, |r| r.messages))?;
        family(&mut enc, "ff_conn_queue_depth_bytes", "Bytes sent by this side not yet taken by the peer, as the clients report them", &gauges(&conn, |r| r.queued))?;
        let contended = crate::remote::CONTENDED.load(std::sync::atomic::Ordering::Relaxed);
        family(
            &mut enc,
            "ff_router_cpu_contended",
            "Times a router thread found a busy process sharing its core (its yields lost the core) and slept instead of polling",
            &[(Vec::new(), ConstCounter::new(contended))],
        )?;
        if let Some(r) = &self.0.remote {
            let c = r.counters();
            family(&mut enc, "ff_router_peer_links", "Links to other routers up now (both directions)", &[(Vec::new(), ConstGauge::new(r.links() as i64))])?;
            let drops: Vec<(Labels, ConstCounter<u64>)> = Cause::ALL.iter().map(|&k| (vec![("cause", k.name().to_string())], ConstCounter::new(c.drops(k)))).collect();
            family(
                &mut enc,
                "ff_router_peer_link_drops",
                "Links to other routers that were up and went, by cause: protocol (the peer router broke it), silent (nothing from it for 30 s, or its host stopped answering), io (its connection failed or closed), local (this router could not go on)",
                &drops,
            )?;
            family(&mut enc, "ff_router_peer_dial_failures", "Dials of other routers that brought no link up", &[(Vec::new(), ConstCounter::new(c.dial_failures()))])?;
            family(
                &mut enc,
                "ff_router_nic_pinned_bytes",
                "Bytes of connection rings registered with RDMA NICs now (pinned; an idle ring is let go of before it is trimmed)",
                &[(Vec::new(), ConstGauge::new(r.nic_pinned_bytes() as i64))],
            )?;
        }
        Ok(())
    }
}

/// The metrics of `router` now, in Prometheus text format.
pub fn text(router: &crate::Router) -> String {
    render(&Source::of(router))
}

/// Renders the metrics in Prometheus text format.
fn render(src: &Source) -> String {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(RouterCollector(src.clone())));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}

/// Compares without stopping at the first difference (the token's length
/// is no secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How long one scrape may take to send its request and read the answer:
/// scrapes are served one at a time, so a stalled one holds the others
/// back for at most this long.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// The most request bytes read (request line and headers).
const MAX_REQUEST: usize = 8 << 10;
/// Pause after a failed `accept` (out of descriptors or memory): the
/// pending scrape waits in the kernel's queue meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `/metrics` on `addr` from a background thread; with `token`,
/// only to requests that carry it. Without one, only on loopback. Returns
/// the address bound.
///
/// A small HTTP/1.x server of our own, one thread, one scrape at a time,
/// one descriptor per scrape: it never fails for good. When `accept` fails
/// (the router at its open-file limit: `EMFILE`) it waits and tries again,
/// so `/metrics` answers as soon as a descriptor is free.
pub fn serve(addr: &str, router: &crate::Router, token: Option<String>) -> std::io::Result<SocketAddr> {
    let src = Source::of(router);
    let public = addr.to_socket_addrs()?.any(|a| !a.ip().is_loopback());
    if public && token.is_none() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the metrics show every tenant's counters: serve them on loopback, or require a token (--metrics-token-file)",
        ));
    }
    let server = TcpListener::bind(addr)?;
    let bound = server.local_addr()?;
    log::info!("metrics on http://{bound}/metrics{}", if token.is_some() { " (token required)" } else { "" });
    let want = token.map(|t| format!("Bearer {t}"));
    std::thread::Builder::new().name("metrics".into()).spawn(move || loop {
        match server.accept() {
            Ok((s, _)) => {
                if let Err(e) = answer(s, &src, want.as_deref()) {
                    log::debug!("metrics: a scrape failed: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                crate::limited!(warn, "metrics-accept", "", "metrics: cannot accept a scrape ({e}); trying again");
                std::thread::sleep(ACCEPT_BACKOFF);
            }
        }
    })?;
    Ok(bound)
}

/// Reads one request from `s` and answers it.
fn answer(mut s: TcpStream, src: &Source, want: Option<&str>) -> std::io::Result<()> {
    s.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
    s.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
    let deadline = Instant::now() + SCRAPE_TIMEOUT;
    let mut req = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        if req.len() >= MAX_REQUEST || Instant::now() >= deadline {
            return reply(&mut s, "431 Request Header Fields Too Large", "", "the request is too long or too slow\n");
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        req.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&req);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let authorized = want.is_none_or(|w| {
        lines.filter_map(|l| l.split_once(':')).any(|(k, v)| k.trim().eq_ignore_ascii_case("authorization") && same(v.trim().as_bytes(), w.as_bytes()))
    });
    if !authorized {
        reply(&mut s, "401 Unauthorized", "", "a token is required\n")
    } else if method != "GET" {
        reply(&mut s, "405 Method Not Allowed", "", "GET /metrics\n")
    } else if path == "/metrics" {
        reply(&mut s, "200 OK", "Content-Type: text/plain; version=0.0.4\r\n", &render(src))
    } else {
        reply(&mut s, "404 Not Found", "", "see /metrics\n")
    }
}

fn reply(s: &mut TcpStream, status: &str, headers: &str, body: &str) -> std::io::Result<()> {
    let head = format!("HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    s.flush()
}
