//! The router's frame decoder on arbitrary bytes: never panics, and whatever
//! decodes re-encodes to something that decodes to the same message.
#![no_main]
use ffcore::proto::{decode_frame, encode, Reply, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode_frame::<Request>(data) {
        assert_eq!(decode_frame::<Request>(&encode(&req)).unwrap(), req);
    }
    if let Ok(rep) = decode_frame::<Reply>(data) {
        assert_eq!(decode_frame::<Reply>(&encode(&rep)).unwrap(), rep);
    }
    // Bodies alone too (the header is checked separately in the router).
    let _ = ffcore::proto::decode_body::<Request>(data);
});
