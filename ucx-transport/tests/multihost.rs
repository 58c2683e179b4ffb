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
    let mut h = TwoHosts::new();
    h.start_router(0, &["a"], &[]);
    h.start_router(1, &["a"], &[]);
    let work = build_ffmpi("ffucx-mh");
    let tag = std::process::id() % 10000;
    let names = [format!("ucxh{tag}a"), format!("ucxh{tag}b")];
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
