//! The nodes every figure runs, and what the figures do with them: a node that restarts on its
//! data directory, contact exchange, a group, a message sent and read, a wait for idleness.

use std::time::{Duration, Instant};

use dspring_node::{
    Event, GroupId, MailboxConfig, Multiaddr, Node, NodeConfig, NodeError, Protocol,
};

use crate::common::wait_for;

/// How often a receiver's messages are read while a message is on its way.
const POLL: Duration = Duration::from_millis(5);
/// A message not read after this counts as not arrived ("> 60 s").
pub(crate) const DELIVERY_LIMIT: Duration = Duration::from_secs(60);
/// The idle time of figures 3 to 5: a group with no envelope for this long goes idle.
pub(crate) const SHORT_IDLE: Duration = Duration::from_secs(2);
/// dspring-net's `IDLE_CONNECTION_TIMEOUT` (not exported): a connection with no stream open
/// closes after this.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a group to go idle and its connections to close before measuring
/// anyway (and saying so): the idle time, the connection timeout, and a margin.
const IDLE_LIMIT: Duration = SHORT_IDLE
    .saturating_add(IDLE_CONNECTION_TIMEOUT)
    .saturating_add(Duration::from_secs(20));

pub(crate) fn error(e: NodeError) -> String {
    e.to_string()
}

/// A node's configuration here: loopback, a new TCP and QUIC port at every start, no mDNS,
/// no bootstrap node.
fn config(dir: &std::path::Path, idle: Duration, mailbox: bool) -> Result<NodeConfig, String> {
    let mut config = NodeConfig::new(dir);
    config.listen = ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"]
        .iter()
        .map(|a| a.parse().map_err(|e| format!("{a}: {e}")))
        .collect::<Result<_, String>>()?;
    config.mdns = false;
    config.bootstrap = Vec::new();
    config.idle_group_after = idle;
    config.mailbox = mailbox.then(MailboxConfig::default);
    Ok(config)
}

/// A node with its data directory, so that it can be restarted on it.
pub(crate) struct Peer {
    dir: tempfile::TempDir,
    pub(crate) node: Node,
    idle: Duration,
    mailbox: bool,
}

impl Peer {
    pub(crate) async fn start(idle: Duration, mailbox: bool) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let node = Node::start(config(dir.path(), idle, mailbox)?)
            .await
            .map_err(|e| format!("a node did not start: {e}"))?;
        Ok(Self {
            dir,
            node,
            idle,
            mailbox,
        })
    }

    pub(crate) async fn stop(&self) -> Result<(), String> {
        self.node.stop().await.map_err(error)
    }

    /// Starts the stopped node again on its data directory, on new ports.
    pub(crate) async fn start_again(&mut self) -> Result<(), String> {
        let config = config(self.dir.path(), self.idle, self.mailbox)?;
        self.start_with(config).await
    }

    /// The addresses the node listens on now, as listen addresses: to start it again on the
    /// same ports.
    pub(crate) async fn listening(&self) -> Result<Vec<Multiaddr>, String> {
        let mut listen: Vec<Multiaddr> = Vec::new();
        for address in self.node.dial_addresses().await.map_err(error)? {
            let address: Multiaddr = address
                .iter()
                .filter(|p| !matches!(p, Protocol::P2p(_)))
                .collect();
            if !listen.contains(&address) {
                listen.push(address);
            }
        }
        Ok(listen)
    }

    /// Starts the stopped node again on its data directory, listening on `listen` (the
    /// ports it had: [`Peer::listening`]).
    pub(crate) async fn start_again_on(&mut self, listen: Vec<Multiaddr>) -> Result<(), String> {
        let mut config = config(self.dir.path(), self.idle, self.mailbox)?;
        config.listen = listen;
        self.start_with(config).await
    }

    async fn start_with(&mut self, config: NodeConfig) -> Result<(), String> {
        self.node = Node::start(config)
            .await
            .map_err(|e| format!("a node did not start again: {e}"))?;
        Ok(())
    }
}

/// The TCP port a node listens on (for the progress lines: every start takes a new one).
pub(crate) async fn tcp_port(node: &Node) -> Option<u16> {
    node.dial_addresses()
        .await
        .ok()?
        .iter()
        .flat_map(|a| a.iter())
        .find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
}

pub(crate) async fn stop_all(peers: &[&Peer]) {
    for peer in peers {
        let _ = peer.stop().await;
    }
}

/// Every node adds every other node's contact card.
pub(crate) async fn introduce(nodes: &[&Node]) -> Result<(), String> {
    for (i, node) in nodes.iter().enumerate() {
        for (j, other) in nodes.iter().enumerate() {
            if i != j {
                let card = other.contact().await.map_err(error)?;
                node.add_contact(card, &format!("node {j}"))
                    .await
                    .map_err(error)?;
            }
        }
    }
    Ok(())
}

/// `creator` makes a group of itself and `members`; returns once every member lists it.
pub(crate) async fn group_of(
    creator: &Node,
    members: &[&Node],
    name: &str,
) -> Result<GroupId, String> {
    let ids: Vec<_> = members.iter().map(|m| m.id()).collect();
    let group = creator.create_group(name, &ids).await.map_err(error)?;
    for member in members {
        wait_for("a member joins the group", async || {
            member.groups().await.is_ok_and(|gs| gs.contains(&group))
        })
        .await?;
    }
    Ok(group)
}

/// The cursor of the last message a node holds in a group.
pub(crate) async fn latest(node: &Node, group: GroupId) -> Result<u64, String> {
    let mut after = 0;
    loop {
        let page = node.messages(group, after, 1000).await.map_err(error)?;
        match page.last() {
            Some(last) => after = last.cursor,
            None => return Ok(after),
        }
    }
}

/// Whether `node` holds a message `text` received after cursor `mark`.
pub(crate) async fn has(
    node: &Node,
    group: GroupId,
    mark: u64,
    text: &[u8],
) -> Result<bool, String> {
    let page = node.messages(group, mark, 1000).await.map_err(error)?;
    Ok(page
        .iter()
        .any(|m| matches!(&m.event, Event::Message { plaintext, .. } if plaintext == text)))
}

/// Sends `text` from `sender`, then reads `receiver`'s messages every [`POLL`] until it holds
/// it: the time from `since`, or `None` after [`DELIVERY_LIMIT`].
pub(crate) async fn deliver(
    sender: &Node,
    receiver: &Node,
    group: GroupId,
    mark: u64,
    since: Instant,
    text: &str,
) -> Result<Option<Duration>, String> {
    sender
        .send(group, text.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    loop {
        if has(receiver, group, mark, text.as_bytes()).await? {
            return Ok(Some(since.elapsed()));
        }
        if since.elapsed() > DELIVERY_LIMIT {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A first message from `sender` that every one of `receivers` must read (setup).
pub(crate) async fn first_message(
    sender: &Node,
    receivers: &[&Node],
    group: GroupId,
) -> Result<(), String> {
    let text = b"hello, everyone";
    sender.send(group, text).await.map_err(error)?;
    for receiver in receivers {
        wait_for("the first message arrives", async || {
            has(receiver, group, 0, text).await.unwrap_or(false)
        })
        .await?;
    }
    Ok(())
}

/// Waits until the nodes in `busy` have no busy group and the open connections of `watched`
/// (in order) pass `closed`, at most [`IDLE_LIMIT`]; returns whether that happened, and the
/// connections last read.
pub(crate) async fn wait_idle(
    busy: &[&Node],
    watched: &[&Node],
    closed: fn(&[u32]) -> bool,
) -> Result<(bool, Vec<u32>), String> {
    let deadline = Instant::now() + IDLE_LIMIT;
    loop {
        let mut idle = true;
        for node in busy {
            idle &= node.status().await.map_err(error)?.busy_groups == 0;
        }
        let mut connections = Vec::with_capacity(watched.len());
        for node in watched {
            connections.push(node.network_status().await.map_err(error)?.connections);
        }
        if idle && closed(&connections) {
            return Ok((true, connections));
        }
        if Instant::now() > deadline {
            return Ok((false, connections));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// For [`wait_idle`]: the one node watched has no connection open.
pub(crate) fn none_open(connections: &[u32]) -> bool {
    connections.iter().all(|&c| c == 0)
}
