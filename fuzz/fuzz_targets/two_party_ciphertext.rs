#![no_main]
use dspring_proto::codec::Reader;
use dspring_proto::two_party::TwoPartyCiphertext;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = TwoPartyCiphertext::decode(&mut Reader::new(data));
});
