//! Fuzzes the message decoder: it must never panic, and a cleanly decoded message must survive
//! encode → decode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tabby_bgp::Message;
use tabby_bgp::codec::{self, Ctx};

fuzz_target!(|data: &[u8]| {
    for four in [true, false] {
        let ctx = Ctx { four_octet_as: four };
        let mut buf = data;
        while let Ok(Some((m, n))) = codec::decode(buf, &ctx) {
            buf = &buf[n..];
            let clean = !matches!(&m, Message::Update(u) if u.treat_as_withdraw.is_some());
            if four
                && clean
                && let Ok(bytes) = codec::to_bytes(&m, &ctx)
            {
                let back = codec::decode(&bytes, &ctx);
                assert!(matches!(&back, Ok(Some((b, _))) if *b == m), "{m:?} -> {back:?}");
            }
        }
    }
});
