//! `rdma_getaddrinfo`: the system's `getaddrinfo`, as `rdma_addrinfo`s
//! (IPv4 and IPv6; the address is the source with `RAI_PASSIVE`, else the
//! destination), freed by `rdma_freeaddrinfo`.
use std::ffi::{c_char, c_int};

use crate::abi::set_errno;
use crate::sys::*;

/// # Safety
/// `node`, `service`: NULL or C strings; `hints`: NULL or readable; `res`
/// writable.
pub unsafe fn getaddrinfo(node: *const c_char, service: *const c_char, hints: *const rdma_addrinfo, res: *mut *mut rdma_addrinfo) -> c_int {
    if res.is_null() || (node.is_null() && service.is_null()) {
        set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: hints, when given, is the caller's.
    let h = if hints.is_null() { rdma_addrinfo::default() } else { unsafe { std::ptr::read(hints) } };
    let passive = h.ai_flags & RAI_PASSIVE as c_int != 0;
    // SAFETY: zeroed addrinfo is the empty hints.
    let mut sys: libc::addrinfo = unsafe { std::mem::zeroed() };
    sys.ai_family = if h.ai_family == libc::AF_INET || h.ai_family == libc::AF_INET6 { h.ai_family } else { libc::AF_UNSPEC };
    sys.ai_socktype = libc::SOCK_STREAM;
    if passive {
        sys.ai_flags |= libc::AI_PASSIVE;
    }
    if h.ai_flags & RAI_NUMERICHOST as c_int != 0 {
        sys.ai_flags |= libc::AI_NUMERICHOST;
    }
    let mut found: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: C strings or NULL; found written.
    let r = unsafe { libc::getaddrinfo(node, service, &sys, &mut found) };
    if r != 0 {
        if r != libc::EAI_SYSTEM {
            set_errno(libc::EADDRNOTAVAIL);
        }
        return -1;
    }
    let mut head: *mut rdma_addrinfo = std::ptr::null_mut();
    let mut tail: *mut *mut rdma_addrinfo = &mut head;
    let mut cur = found;
    while !cur.is_null() {
        // SAFETY: getaddrinfo's list.
        let a = unsafe { &*cur };
        cur = a.ai_next;
        if a.ai_family != libc::AF_INET && a.ai_family != libc::AF_INET6 {
            continue;
        }
        // SAFETY: copies of the address into our own allocations, freed
        // by freeaddrinfo with libc's free.
        unsafe {
            let addr = libc::malloc(a.ai_addrlen as usize) as *mut libc::sockaddr;
            let ai = libc::calloc(1, std::mem::size_of::<rdma_addrinfo>()) as *mut rdma_addrinfo;
            if addr.is_null() || ai.is_null() {
                libc::free(addr as *mut _);
                libc::free(ai as *mut _);
                break;
            }
            std::ptr::copy_nonoverlapping(a.ai_addr as *const u8, addr as *mut u8, a.ai_addrlen as usize);
            let x = &mut *ai;
            x.ai_flags = h.ai_flags;
            x.ai_family = a.ai_family;
            x.ai_qp_type = if h.ai_qp_type != 0 { h.ai_qp_type } else { IBV_QPT_RC as c_int };
            x.ai_port_space = if h.ai_port_space != 0 { h.ai_port_space } else { RDMA_PS_TCP as c_int };
            if passive {
                x.ai_src_addr = addr as *mut _;
                x.ai_src_len = a.ai_addrlen;
            } else {
                x.ai_dst_addr = addr as *mut _;
                x.ai_dst_len = a.ai_addrlen;
            }
            *tail = ai;
            tail = &mut x.ai_next;
        }
    }
    // SAFETY: getaddrinfo's own list.
    unsafe { libc::freeaddrinfo(found) };
    if head.is_null() {
        set_errno(libc::EADDRNOTAVAIL);
        return -1;
    }
    // SAFETY: res checked above.
    unsafe { *res = head };
    0
}

/// # Safety
/// `res`: NULL or what [`getaddrinfo`] returned.
pub unsafe fn freeaddrinfo(mut res: *mut rdma_addrinfo) {
    while !res.is_null() {
        // SAFETY: our allocations (see getaddrinfo).
        unsafe {
            let next = (*res).ai_next;
            libc::free((*res).ai_src_addr as *mut _);
            libc::free((*res).ai_dst_addr as *mut _);
            libc::free((*res).ai_src_canonname as *mut _);
            libc::free((*res).ai_dst_canonname as *mut _);
            libc::free((*res).ai_route);
            libc::free((*res).ai_connect);
            libc::free(res as *mut _);
            res = next;
        }
    }
}
