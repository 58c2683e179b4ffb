//! Layouts of the system's `infiniband/verbs.h` (rdma-core 44), generated
//! by bindgen in build.rs; bindgen's layout tests check every size and
//! offset against the header, and `tests` below what the ABI fixes.
#![allow(non_camel_case_types, non_upper_case_globals, non_snake_case, dead_code, clippy::all)]
include!(concat!(env!("OUT_DIR"), "/verbs_sys.rs"));

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn abi_sizes() {
        // What Debian 12's x86-64 library and its users agree on.
        assert_eq!(size_of::<ibv_wc>(), 48);
        assert_eq!(size_of::<ibv_sge>(), 16);
        assert_eq!(size_of::<ibv_send_wr>(), 128);
        assert_eq!(size_of::<ibv_recv_wr>(), 32);
        assert_eq!(size_of::<ibv_gid>(), 16);
        assert_eq!(size_of::<ibv_device>(), 664);
        assert_eq!(size_of::<ibv_context>(), 328);
        // verbs.h's inline functions find the extended context right
        // before ibv_context: `sz` is the last word before it.
        assert_eq!(offset_of!(verbs_context, context) + size_of::<ibv_context>(), size_of::<verbs_context>());
        assert_eq!(offset_of!(verbs_context, sz) + 8, offset_of!(verbs_context, context));
    }
}
