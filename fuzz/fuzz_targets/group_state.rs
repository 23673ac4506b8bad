#![no_main]
use dspring_proto::Group;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Group::from_bytes(data);
});
