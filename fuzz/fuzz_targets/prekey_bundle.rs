#![no_main]
use dspring_proto::codec::Reader;
use dspring_proto::identity::PrekeyBundle;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(bundle) = PrekeyBundle::decode(&mut Reader::new(data)) {
        let _ = bundle.verify();
    }
});
