//! Notices: a sender hears how far its message got as the other member's syncs show it, and
//! that a member went out of reach and came back.

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use common::{fixed_address, introduce, start_on, texts, until};
use dspring_node::{Event, Notice};
use futures::StreamExt;

/// Out of reach is reported after `dspring_net::reconnect::UNREACHABLE_AFTER` (30 s) of
/// failed dials; this leaves room for the dial rounds around it.
const OUT_OF_REACH_LIMIT: Duration = Duration::from_secs(60);

/// The other member's periodic sync (every 10 s) carries its marks.
const DELIVERY_LIMIT: Duration = Duration::from_secs(30);

/// The next notice that `matches`, within `limit`.
async fn notice(
    notices: &mut (impl futures::Stream<Item = Notice> + Unpin),
    limit: Duration,
    what: &str,
    mut matches: impl FnMut(&Notice) -> bool,
) -> Notice {
    tokio::time::timeout(limit, async {
        loop {
            let notice = notices.next().await.expect("the notices ended");
            if matches(&notice) {
                return notice;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_hears_where_its_message_is_and_when_a_member_is_out_of_reach_and_back() {
    common::logs();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let b_address = fixed_address();
    let a = start_on(dirs[0].path(), "/ip4/127.0.0.1/tcp/0").await;
    let b = start_on(dirs[1].path(), &b_address).await;
    introduce(&[&a, &b]).await;
    let group = a.create_group("", &[b.id()]).await.unwrap();
    until("b joins", async || {
        b.groups().await.unwrap().contains(&group)
    })
    .await;

    let mut notices = Box::pin(a.notices());
    a.send(group, b"hello").await.unwrap();
    let sent = a.messages(group, 0, 100).await.unwrap();
    let position = sent
        .iter()
        .find_map(|m| match &m.event {
            Event::Sent {
                plaintext,
                epoch,
                index,
            } if plaintext == b"hello" => Some((*epoch, *index)),
            _ => None,
        })
        .unwrap();
    until("b has the message", async || {
        texts(&b, group).await.contains(&"hello".to_owned())
    })
    .await;
    // B's next sync shows it holds the message: every other member does.
    let delivered = notice(&mut notices, DELIVERY_LIMIT, "a delivery notice", |n| {
        matches!(n, Notice::Delivery { group: g, all: Some(all), .. }
            if *g == group && *all >= position)
    })
    .await;
    let Notice::Delivery { held, .. } = delivered else {
        unreachable!()
    };
    assert!(held.is_some_and(|held| held >= position), "{delivered:?}");

    // B goes away: once its dials have failed long enough, A says so; when B is back on its
    // address, A says that too.
    let b_id = b.id();
    b.stop().await.unwrap();
    drop(b);
    notice(
        &mut notices,
        OUT_OF_REACH_LIMIT,
        "b out of reach",
        |n| matches!(n, Notice::OutOfReach { member, .. } if *member == b_id),
    )
    .await;
    let b = start_on(dirs[1].path(), &b_address).await;
    notice(
        &mut notices,
        OUT_OF_REACH_LIMIT,
        "b back in reach",
        |n| matches!(n, Notice::BackInReach { member } if *member == b_id),
    )
    .await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
