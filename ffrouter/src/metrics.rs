//! Prometheus metrics: per-tenant and per-connection counters, encoded at
//! scrape time from the router's state (prometheus-client), served over
//! HTTP on `--metrics-addr` (tiny_http) at `/metrics`.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::state::State;

struct RouterCollector(Arc<Mutex<State>>);

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

impl Collector for RouterCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let tenants = st.tenants();
        let stats: Vec<_> = tenants.iter().map(|t| (vec![("tenant", t.to_string())], st.stats(Some(t)))).collect();
        let rows = st.conn_rows();
        drop(st);
        let gauge = |f: fn(&ffcore::proto::Stats) -> u64| -> Vec<(Labels, ConstGauge<i64>)> {
            stats.iter().map(|(l, s)| (l.clone(), ConstGauge::new(f(s) as i64))).collect()
        };
        let counter = |f: fn(&ffcore::proto::Stats) -> u64| -> Vec<(Labels, ConstCounter<u64>)> {
            stats.iter().map(|(l, s)| (l.clone(), ConstCounter::new(f(s)))).collect()
        };
        family(&mut enc, "ff_tenant_clients", "Attached clients", &gauge(|s| s.clients))?;
        family(&mut enc, "ff_tenant_listeners", "Open listeners", &gauge(|s| s.listeners))?;
        family(&mut enc, "ff_tenant_connections", "Open connections", &gauge(|s| s.conns))?;
        family(&mut enc, "ff_tenant_shared_bytes", "Shared memory held (rings and regions)", &gauge(|s| s.shared_bytes))?;
        family(&mut enc, "ff_tenant_queued_bytes", "Bytes waiting in the tenant's rings", &gauge(|s| s.queued_bytes))?;
        family(&mut enc, "ff_tenant_requests", "Control requests", &counter(|s| s.requests))?;
        family(&mut enc, "ff_tenant_errors", "Control requests refused", &counter(|s| s.errors))?;
        family(&mut enc, "ff_tenant_sent_bytes", "Bytes sent on open connections (ring bytes)", &counter(|s| s.bytes_sent))?;
        family(&mut enc, "ff_tenant_sent_messages", "Messages sent on open connections", &counter(|s| s.messages_sent))?;
        let conn = |f: fn(&crate::state::ConnRow) -> u64| -> Vec<(Labels, ConstGauge<i64>)> {
            rows.iter()
                .map(|r| {
                    let l = vec![("tenant", r.tenant.to_string()), ("conn", r.conn.to_string()), ("side", r.side.to_string())];
                    (l, ConstGauge::new(f(r) as i64))
                })
                .collect()
        };
        let conn_counter = |f: fn(&crate::state::ConnRow) -> u64| -> Vec<(Labels, ConstCounter<u64>)> {
            rows.iter()
                .map(|r| {
                    let l = vec![("tenant", r.tenant.to_string()), ("conn", r.conn.to_string()), ("side", r.side.to_string())];
                    (l, ConstCounter::new(f(r)))
                })
                .collect()
        };
        family(&mut enc, "ff_conn_sent_bytes", "Ring bytes sent by one side of a connection", &conn_counter(|r| r.bytes))?;
        family(&mut enc, "ff_conn_sent_messages", "Messages sent by one side of a connection", &conn_counter(|r| r.messages))?;
        family(&mut enc, "ff_conn_queue_depth_bytes", "Bytes sent by this side not yet taken by the peer", &conn(|r| r.queued))?;
        Ok(())
    }
}

/// Renders the metrics in Prometheus text format.
pub fn render(state: &Arc<Mutex<State>>) -> String {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(RouterCollector(state.clone())));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}

/// Serves `/metrics` on `addr` from a background thread.
pub fn serve(addr: &str, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    log::info!("metrics on http://{addr}/metrics");
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for req in server.incoming_requests() {
            let resp = if req.url() == "/metrics" {
                let ct = tiny_http::Header::from_bytes("Content-Type", "text/plain; version=0.0.4").unwrap();
                tiny_http::Response::from_string(render(&state)).with_header(ct)
            } else {
                tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
            };
            let _ = req.respond(resp);
        }
    })?;
    Ok(())
}
