//! What a peer router's frames decode to, on arbitrary bytes: a frame
//! header never panics, one that decodes re-encodes to the same bytes and
//! its credit charge cannot overflow; CONNECT, ACCEPT and REFUSE bodies
//! decode only whole, and what decodes encodes back to itself.
#![no_main]
use ffrouter::wire::{charge, decode_body, encode_body, frame_max, is_whole, whole_max, Accept, Connect, Header, Refuse, DATA, HDR_LEN, MAX_CONTROL};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < HDR_LEN + 1 {
        return;
    }
    let (hdr, body) = data.split_at(HDR_LEN);
    let hdr: &[u8; HDR_LEN] = hdr.try_into().unwrap();
    // The receiver's ring size: a power of two from 4 KiB to 1 GiB.
    let ring = 4096u64 << (body[0] % 19);
    let body = &body[1..];
    if let Ok(h) = Header::decode(hdr) {
        assert_eq!(&h.encode(), hdr, "a decoded header re-encodes to its bytes");
        if h.ty == DATA {
            let len = h.len as usize;
            let c = charge(h.kind as u32, h.arg, len, whole_max(ring));
            assert!(c >= len as u64, "a frame is charged at least its payload");
            if is_whole(h.kind as u32, h.arg, len, whole_max(ring)) {
                assert!(len <= whole_max(ring));
            }
            let _ = frame_max(ring);
        } else {
            assert!(h.len as usize <= MAX_CONTROL);
        }
    }
    if body.len() <= MAX_CONTROL {
        if let Ok(c) = decode_body::<Connect>(body) {
            assert_eq!(decode_body::<Connect>(&encode_body(&c)).unwrap(), c);
        }
        if let Ok(a) = decode_body::<Accept>(body) {
            assert_eq!(decode_body::<Accept>(&encode_body(&a)).unwrap(), a);
        }
        if let Ok(r) = decode_body::<Refuse>(body) {
            assert_eq!(decode_body::<Refuse>(&encode_body(&r)).unwrap(), r);
        }
    }
});
