#![no_main]
use dspring_proto::envelope::{Envelope, Unverified};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Unverified::<Envelope>::parse(data.to_vec());
});
