#![no_main]
use dspring_proto::codec::Reader;
use dspring_proto::membership::History;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(history) = History::decode(&mut Reader::new(data)) {
        let _ = history.current_members();
    }
});
