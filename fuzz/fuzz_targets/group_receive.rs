#![no_main]
//! Arbitrary bytes into a real member of a real group: errors are fine, panics are not.
use std::sync::OnceLock;

use dspring_proto::{Device, Group, GroupId};
use libfuzzer_sys::fuzz_target;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn member() -> &'static (Device, Group) {
    static MEMBER: OnceLock<(Device, Group)> = OnceLock::new();
    MEMBER.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let a = Device::generate(1, &mut rng);
        let b = Device::generate(1, &mut rng);
        let id = GroupId([1; 32]);
        let created = Group::create(&a, id, &[b.bundle(None)], &mut rng).expect("create");
        let joined = Group::join(&b, id, created.outbox[0].bytes.clone(), &mut rng).expect("join");
        (b, joined.group)
    })
}

fuzz_target!(|data: &[u8]| {
    let (device, group) = member();
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let _ = group.receive(device, data.to_vec(), &mut rng);
});
