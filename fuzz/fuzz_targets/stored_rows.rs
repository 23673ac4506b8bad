#![no_main]
//! The decoders the store runs on plaintext rows read back from disk: events and the device
//! blob (after unsealing), both postcard over core types.
use dspring_proto::{Device, Event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = postcard::from_bytes::<Event>(data);
    let _ = postcard::from_bytes::<Device>(data);
    let _ = postcard::from_bytes::<Vec<String>>(data);
});
