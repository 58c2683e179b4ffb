//! The ff transport between two hosts: each host a network namespace with
//! its own router (routers linked over TCP on a veth) and container bridge;
//! an Open MPI job with one rank in a container on each host, UCX_TLS=ff,self
//! (so nothing but the routers can carry the ranks' traffic). mpirun runs in
//! host 0's namespace and enters the containers through tools/ffrsh. Needs
//! root, UCX 1.13, Open MPI and a built workspace.

mod common;

use common::{build_ffmpi, run_ffmpi};
use fftestkit::hosts::TwoHosts;
use fftestkit::Pod;

#[test]
fn open_mpi_job_with_ranks_on_two_hosts_over_ff() {
    job_on_two_hosts(&[], "ucxh");
}

/// With no ring budget every connection between the hosts gets the
/// smallest ring a router hands out (`ffcore::ring::MIN_SCALED_RING`), as
/// a tenant's 257th and later do by default: UCX's segments must still fit
/// it whole (with 512 KiB rings every active message sent by copy broke
/// its endpoint: the ring took records of 128 KiB less a header).
#[test]
fn open_mpi_job_over_the_smallest_rings_a_router_hands_out() {
    job_on_two_hosts(&["--peer-ring-budget", "0"], "ucxs");
}

fn job_on_two_hosts(router_flags: &[&str], prefix: &str) {
    let mut h = TwoHosts::new();
    h.start_router(0, &["a"], router_flags);
    h.start_router(1, &["a"], router_flags);
    let work = build_ffmpi(&format!("ff{prefix}-mh"));
    let tag = std::process::id() % 10000;
    let names = [format!("{prefix}{tag}a"), format!("{prefix}{tag}b")];
    let pods = [
        Pod::start(&names[0], &format!("{}.11/24", h.subnets[0]), &h.bridge, Some(&h.ns[0]), &h.tenant_dir(0, "a"), &work),
        Pod::start(&names[1], &format!("{}.12/24", h.subnets[1]), &h.bridge, Some(&h.ns[1]), &h.tenant_dir(1, "a"), &work),
    ];
    let log = run_ffmpi(&work, &names, Some(&h.ns[0]), &["--mca", "oob_tcp_if_include", "10.0.0.0/8", "--mca", "btl", "self"]);
    // Eager messages between hosts (up to the 128 KiB segment) reach UCP
    // straight from the ring the router writes, on both ranks; the job's
    // checksums above cover their bytes.
    let in_place = log.lines().filter(|l| l.contains("active messages from another host are read in place")).count();
    assert!(in_place >= 2, "both ranks should read active messages in place:\n{log}");
    // ffmpi's buffers are malloc'd, so the heap (run_ffmpi turns it on)
    // made them shadow memory:
    // large rendezvous GETs between the hosts have the initiator's receive
    // posted before the target sends the data (posted with the request, or
    // the data held until then), and its router writes every one straight
    // into the buffer, on both ranks.
    let gets: Vec<(u64, u64, u64)> = log
        .lines()
        .filter_map(|l| {
            // "... ff: iface 0x...: P of N held or posted GETs from another host ... (K posted)"
            let (head, tail) = l.split_once(" held or posted GETs from another host were written straight into shadow memory (")?;
            let w: Vec<&str> = head.split_whitespace().rev().take(3).collect();
            (w.len() == 3 && w[1] == "of").then_some(())?;
            let posted = tail.strip_suffix(" posted)")?.parse().ok()?;
            Some((w[2].parse().ok()?, w[0].parse().ok()?, posted))
        })
        .collect();
    assert_eq!(gets.len(), 2, "each rank should report its held and posted GETs:\n{log}");
    for &(placed, n, posted) in &gets {
        assert!(n > 0 && placed == n && posted <= n, "{placed} of {n} held or posted GETs ({posted} posted) were placed:\n{log}");
    }
    assert!(gets.iter().any(|g| g.2 > 0), "some GETs should have been posted with their request:\n{log}");
    drop(pods);
    let _ = std::fs::remove_dir_all(&work);
}

/// Rings between the hosts too small for the iface's segments (set by
/// hand: `--peer-ring-size` below both `--ring-size` and the smallest
/// ring a budget hands out): the endpoint is refused when it is created,
/// with a line that names the sizes, and the job fails at once instead of
/// breaking an endpoint at its first large message.
#[test]
fn rings_too_small_for_the_segments_refuse_the_endpoint_and_say_why() {
    let failed = std::panic::catch_unwind(|| job_on_two_hosts(&["--peer-ring-size", "262144"], "ucxt")).expect_err("the job should fail");
    let why = failed.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(why.contains("mpirun failed"), "{why}");
    assert!(why.contains("takes records of at most 65504 bytes, less than this iface's 131072"), "{why}");
}
