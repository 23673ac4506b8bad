#![no_main]
use dspring_proto::codec::Reader;
use dspring_proto::control::Control;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Control::decode(&mut Reader::new(data));
});
