//! OpenMLS and p2panda-encryption through the same operations, for the side-by-side table.
//! Built only with `--features compare`.
//!
//! Method, per scheme:
//! * OpenMLS 0.9.2 with the `openmls_rust_crypto` provider, ciphersuite
//!   MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, ratchet tree in the welcome (extension), one
//!   provider (and so one storage) per member. Bytes are the TLS-serialized `MlsMessageOut`s:
//!   commit (broadcast once) plus welcome. Receivers process the commit and merge it; the
//!   newcomer processes the welcome.
//! * p2panda-encryption 0.6.1, message scheme, driven by its own `test_utils` (acked test DGM and
//!   test orderer, `usize` member ids). Bytes are the test messages encoded with postcard: a
//!   lower bound on a real deployment (32-byte ids, CBOR, signatures, which p2panda leaves to
//!   the application).

use std::time::Instant;

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

use crate::Cost;

/// Measures one operation at one group size: cost, and for messages encrypt and decrypt µs.
pub type Measure = fn(&str, usize) -> Result<(Cost, Option<f64>, Option<f64>), String>;

const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

fn err(e: impl std::fmt::Debug) -> String {
    format!("{e:?}")
}

struct MlsMember {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    group: Option<MlsGroup>,
}

fn mls_member(i: usize) -> Result<MlsMember, String> {
    let provider = OpenMlsRustCrypto::default();
    let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).map_err(err)?;
    signer.store(provider.storage()).map_err(err)?;
    let credential = CredentialWithKey {
        credential: BasicCredential::new(format!("member {i}").into_bytes()).into(),
        signature_key: signer.public().into(),
    };
    Ok(MlsMember {
        provider,
        signer,
        credential,
        group: None,
    })
}

fn key_package(member: &MlsMember) -> Result<KeyPackage, String> {
    let bundle = KeyPackage::builder()
        .build(
            CIPHERSUITE,
            &member.provider,
            &member.signer,
            member.credential.clone(),
        )
        .map_err(err)?;
    Ok(bundle.key_package().clone())
}

fn serialized(message: &MlsMessageOut) -> Result<Vec<u8>, String> {
    message.tls_serialize_detached().map_err(err)
}

fn join(member: &mut MlsMember, welcome: &[u8]) -> Result<(), String> {
    let message = MlsMessageIn::tls_deserialize_exact(welcome).map_err(err)?;
    let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
        return Err("not a welcome".into());
    };
    let config = MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .build();
    let group = StagedWelcome::new_from_welcome(&member.provider, &config, welcome, None)
        .map_err(err)?
        .into_group(&member.provider)
        .map_err(err)?;
    member.group = Some(group);
    Ok(())
}

fn process(member: &mut MlsMember, bytes: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes).map_err(err)?;
    let protocol = message.try_into_protocol_message().map_err(err)?;
    let group = member.group.as_mut().ok_or("not in the group")?;
    let processed = group
        .process_message(&member.provider, protocol)
        .map_err(err)?;
    match processed.into_content() {
        ProcessedMessageContent::StagedCommitMessage(staged) => {
            group
                .merge_staged_commit(&member.provider, *staged)
                .map_err(err)?;
            Ok(None)
        }
        ProcessedMessageContent::ApplicationMessage(message) => Ok(Some(message.into_bytes())),
        _ => Ok(None),
    }
}

/// A group of `n` members made by member 0 in one commit, plus one spare member.
fn mls_group(n: usize) -> Result<(Vec<MlsMember>, Cost), String> {
    let mut members: Vec<MlsMember> = (0..=n).map(mls_member).collect::<Result<_, _>>()?;
    let packages: Vec<KeyPackage> = members
        .iter()
        .take(n)
        .skip(1)
        .map(key_package)
        .collect::<Result<_, _>>()?;
    let config = MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .use_ratchet_tree_extension(true)
        .build();
    let creator = members.first_mut().ok_or("no members")?;
    let start = Instant::now();
    let mut group = MlsGroup::new(
        &creator.provider,
        &creator.signer,
        &config,
        creator.credential.clone(),
    )
    .map_err(err)?;
    let (commit, welcome, _) = group
        .add_members(&creator.provider, &creator.signer, &packages)
        .map_err(err)?;
    group.merge_pending_commit(&creator.provider).map_err(err)?;
    let sender_ms = ms(start);
    creator.group = Some(group);
    let welcome = serialized(&welcome)?;
    let wire_bytes = serialized(&commit)?.len() + welcome.len();
    let mut receivers = Vec::new();
    for member in members.iter_mut().take(n).skip(1) {
        let start = Instant::now();
        join(member, &welcome)?;
        receivers.push(ms(start));
    }
    Ok((
        members,
        Cost {
            sender_call_ms: sender_ms,
            sender_total_ms: sender_ms,
            receiver_ms: mean(&receivers),
            wire_bytes,
            overhead: 0,
        },
    ))
}

/// One OpenMLS row: `op` is "create", "update", "add", "remove" or "message".
pub fn openmls(op: &str, n: usize) -> Result<(Cost, Option<f64>, Option<f64>), String> {
    let (mut members, create) = mls_group(n)?;
    if op == "create" {
        return Ok((create, None, None));
    }
    let spare_package = key_package(members.get(n).ok_or("no spare")?)?;
    let removed = members
        .get(n - 1)
        .and_then(|m| m.group.as_ref())
        .map(|g| g.own_leaf_index())
        .ok_or("no member to remove")?;
    let sender = members.first_mut().ok_or("no members")?;
    let group = sender.group.as_mut().ok_or("creator has no group")?;
    let start = Instant::now();
    let (broadcast, welcome) = match op {
        "update" => {
            let bundle = group
                .self_update(
                    &sender.provider,
                    &sender.signer,
                    LeafNodeParameters::default(),
                )
                .map_err(err)?;
            group.merge_pending_commit(&sender.provider).map_err(err)?;
            (serialized(bundle.commit())?, None)
        }
        "add" => {
            let (commit, welcome, _) = group
                .add_members(&sender.provider, &sender.signer, &[spare_package])
                .map_err(err)?;
            group.merge_pending_commit(&sender.provider).map_err(err)?;
            (serialized(&commit)?, Some(serialized(&welcome)?))
        }
        "remove" => {
            let (commit, _, _) = group
                .remove_members(&sender.provider, &sender.signer, &[removed])
                .map_err(err)?;
            group.merge_pending_commit(&sender.provider).map_err(err)?;
            (serialized(&commit)?, None)
        }
        "message" => {
            let message = group
                .create_message(&sender.provider, &sender.signer, &[0x42; 32])
                .map_err(err)?;
            (serialized(&message)?, None)
        }
        other => return Err(format!("unknown operation {other}")),
    };
    let sender_ms = ms(start);
    let wire_bytes = broadcast.len() + welcome.as_ref().map_or(0, Vec::len);
    let mut receivers = Vec::new();
    let last = if op == "remove" { n - 1 } else { n };
    for member in members.iter_mut().take(last).skip(1) {
        let start = Instant::now();
        let plaintext = process(member, &broadcast)?;
        receivers.push(ms(start));
        if op == "message" && plaintext.as_deref() != Some(&[0x42; 32][..]) {
            return Err("OpenMLS message did not decrypt".into());
        }
    }
    if let Some(welcome) = welcome {
        let newcomer = members.get_mut(n).ok_or("no spare")?;
        let start = Instant::now();
        join(newcomer, &welcome)?;
        receivers.push(ms(start));
    }
    let receiver_ms = mean(&receivers);
    let message = op == "message";
    Ok((
        Cost {
            sender_call_ms: sender_ms,
            sender_total_ms: sender_ms,
            receiver_ms,
            wire_bytes,
            overhead: if message {
                broadcast.len().saturating_sub(32)
            } else {
                0
            },
        },
        message.then_some(sender_ms * 1e3),
        message.then_some(receiver_ms * 1e3),
    ))
}

mod p2panda {
    use std::time::Instant;

    use p2panda_encryption::Rng;
    use p2panda_encryption::message_scheme::{GroupEvent, MessageGroup};
    use p2panda_encryption::test_utils::MemberId;
    use p2panda_encryption::test_utils::message_scheme::network::{
        TestGroupState, init_group_state,
    };

    use super::{err, mean, ms};
    use crate::Cost;

    type Message = <TestGroupState as GroupMessages>::Message;

    /// Names the orderer's message type through the state.
    pub trait GroupMessages {
        type Message;
    }

    impl GroupMessages for TestGroupState {
        type Message = p2panda_encryption::test_utils::message_scheme::ordering::TestMessage<
            p2panda_encryption::test_utils::message_scheme::dgm::AckedTestDgm<
                MemberId,
                p2panda_encryption::test_utils::MessageId,
            >,
        >;
    }

    fn size(message: &Message) -> Result<usize, String> {
        postcard::to_allocvec(message).map(|b| b.len()).map_err(err)
    }

    /// Delivers `queue` to everyone but each message's sender, then their replies.
    fn flood(
        states: &mut [Option<TestGroupState>],
        queue: Vec<(usize, Message)>,
        rng: &Rng,
        time: &mut [f64],
    ) -> Result<usize, String> {
        let mut bytes = 0;
        let mut queue = std::collections::VecDeque::from(queue);
        while let Some((from, message)) = queue.pop_front() {
            bytes += size(&message)?;
            for (i, slot) in states.iter_mut().enumerate() {
                if i == from {
                    continue;
                }
                let Some(state) = slot.take() else { continue };
                let start = Instant::now();
                let (state, output) = MessageGroup::receive(state, &message, rng).map_err(err)?;
                if let Some(t) = time.get_mut(i) {
                    *t += ms(start);
                }
                *slot = Some(state);
                for event in output.map(|o| o.events).unwrap_or_default() {
                    if let GroupEvent::Control(reply) = event {
                        queue.push_back((i, reply));
                    }
                }
            }
        }
        Ok(bytes)
    }

    pub fn run<const N: usize>(op: &str) -> Result<(Cost, Option<f64>, Option<f64>), String> {
        let n = N - 1;
        let rng = Rng::from_seed([7; 32]);
        let ids: [MemberId; N] = std::array::from_fn(|i| i);
        let mut states: Vec<Option<TestGroupState>> =
            init_group_state(ids, &rng).into_iter().map(Some).collect();
        // Only the first n are in the group; the last one is added by "add".
        let spare = states.get_mut(n).and_then(Option::take);
        let creator = states
            .first_mut()
            .and_then(Option::take)
            .ok_or("no creator")?;
        let start = Instant::now();
        let (creator, message) =
            MessageGroup::create(creator, ids.iter().take(n).copied().collect(), &rng)
                .map_err(err)?;
        let create_ms = ms(start);
        if let Some(slot) = states.first_mut() {
            *slot = Some(creator);
        }
        let mut time = vec![0.0; N];
        let create_bytes = flood(&mut states, vec![(0, message)], &rng, &mut time)?;
        let create = Cost {
            sender_call_ms: create_ms,
            sender_total_ms: create_ms + time.first().copied().unwrap_or(0.0),
            receiver_ms: mean(time.get(1..n).unwrap_or_default()),
            wire_bytes: create_bytes,
            overhead: 0,
        };
        if op == "create" {
            return Ok((create, None, None));
        }
        if let Some(slot) = states.get_mut(n) {
            *slot = spare;
        }
        let state = states
            .first_mut()
            .and_then(Option::take)
            .ok_or("no sender")?;
        let start = Instant::now();
        let (state, message) = match op {
            "update" => MessageGroup::update(state, &rng),
            "add" => MessageGroup::add(state, n, &rng),
            "remove" => MessageGroup::remove(state, n - 1, &rng),
            "message" => MessageGroup::send(state, &[0x42; 32]),
            other => return Err(format!("unknown operation {other}")),
        }
        .map_err(err)?;
        let sender_ms = ms(start);
        if let Some(slot) = states.first_mut() {
            *slot = Some(state);
        }
        let overhead = if op == "message" {
            size(&message)?.saturating_sub(32)
        } else {
            0
        };
        let mut time = vec![0.0; N];
        let wire_bytes = flood(&mut states, vec![(0, message)], &rng, &mut time)?;
        let last = match op {
            "add" => N,
            "remove" => n - 1,
            _ => n,
        };
        let receiver_ms = mean(time.get(1..last).unwrap_or_default());
        let message = op == "message";
        Ok((
            Cost {
                sender_call_ms: sender_ms,
                sender_total_ms: sender_ms + time.first().copied().unwrap_or(0.0),
                receiver_ms,
                wire_bytes,
                overhead,
            },
            message.then_some(sender_ms * 1e3),
            message.then_some(receiver_ms * 1e3),
        ))
    }
}

/// One p2panda-encryption row.
pub fn p2panda(op: &str, n: usize) -> Result<(Cost, Option<f64>, Option<f64>), String> {
    match n {
        8 => p2panda::run::<9>(op),
        16 => p2panda::run::<17>(op),
        32 => p2panda::run::<33>(op),
        64 => p2panda::run::<65>(op),
        128 => p2panda::run::<129>(op),
        256 => p2panda::run::<257>(op),
        other => Err(format!(
            "p2panda runs only for n in 8, 16, 32, 64, 128, 256, not {other}"
        )),
    }
}
