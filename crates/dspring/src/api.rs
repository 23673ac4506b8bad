//! The method table: every operation of the local API, each a `POST /v1/<name>` with JSON
//! parameters and a JSON result. The CLI calls the same methods, so every CLI command is an
//! API call.

use dspring_node::{
    Contact, ContactCard, Node, NodeError, NodeEvent, safety_number, same_safety_number,
};
use dspring_node::{Delivery, GroupId, MemberId, Reachability};
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod methods;
mod shown;

pub use methods::{EVENT_KINDS, Field, Kind, METHODS, NOTICE_KINDS, Param, Shape, Ty};
use shown::api_event_in;
pub use shown::{api_event, api_notice, member_hex};

/// Most messages one `read` returns.
pub const MAX_READ: usize = 1000;
/// Most events one page of `events` returns.
pub const MAX_EVENTS_PAGE: usize = 1000;
/// Most bytes of JSON one `read` or `events` page holds (but always at least one event): a
/// page of large messages ends early and the client goes on from its last cursor, so one
/// request never holds more than this (a thousand messages at their bound would be 256 MiB).
pub const MAX_PAGE_BYTES: usize = 4 << 20;
/// Events asked of the node at a time while a page fills: 16 at their bound are 4 MiB.
const FETCH_CHUNK: usize = 16;

/// Domain of the daemon's proof that it holds the API token.
const PROOF_DOMAIN: &[u8] = b"dspring/v1/api-proof";

/// The daemon's answer to a client's challenge: HMAC-SHA256 under the token. The CLI checks
/// it before sending the token, so a stale `api-address` (left by a crashed daemon, the port
/// since taken by another program) never receives the token.
pub fn proof(token: &str, challenge: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes()) else {
        return String::new();
    };
    mac.update(PROOF_DOMAIN);
    mac.update(challenge);
    hex::encode(mac.finalize().into_bytes())
}

/// An API failure: a stable code, an HTTP status and a message for people.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn params(error: impl std::fmt::Display) -> Self {
        Self::new(400, "invalid_params", error.to_string())
    }

    fn unknown_group(reference: &str) -> Self {
        Self::new(404, "unknown_group", format!("no group {reference:?}"))
    }

    fn unknown_contact(reference: &str) -> Self {
        Self::new(404, "unknown_contact", format!("no contact {reference:?}"))
    }
}

impl From<NodeError> for ApiError {
    fn from(error: NodeError) -> Self {
        match error {
            NodeError::UnknownGroup => Self::new(404, "unknown_group", error.to_string()),
            NodeError::UnknownContact(_) => Self::new(404, "unknown_contact", error.to_string()),
            NodeError::NameTooLong { .. } => Self::new(400, "invalid_params", error.to_string()),
            NodeError::Group(_) => Self::new(409, "group_refused", error.to_string()),
            NodeError::NotFound(_) => Self::new(404, "not_found", error.to_string()),
            NodeError::Stopped => Self::new(503, "stopped", error.to_string()),
            NodeError::NoInvitation => Self::new(404, "no_invitation", error.to_string()),
            NodeError::Welcome(_) => Self::new(409, "group_refused", error.to_string()),
            other => Self::new(500, "node_error", other.to_string()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactAdd {
    card: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MailboxUse {
    card: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactRef {
    contact: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactVerify {
    contact: String,
    #[serde(default)]
    safety_number: Option<String>,
    #[serde(default)]
    undo: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupCreate {
    name: String,
    #[serde(default)]
    members: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupRef {
    group: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupMember {
    group: String,
    member: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Send {
    group: String,
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Read {
    group: String,
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Events {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct GroupInfo {
    id: String,
    name: Option<String>,
}

fn parse<T: serde::de::DeserializeOwned>(params: Value) -> Result<T, ApiError> {
    serde_json::from_value(params).map_err(ApiError::params)
}

fn json(value: impl Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(|e| ApiError::new(500, "internal", e.to_string()))
}

fn hex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// A group named by its id (hex) or its name; a name two groups share is ambiguous.
pub async fn resolve_group(node: &Node, reference: &str) -> Result<GroupId, ApiError> {
    let groups = node.groups().await?;
    if let Some(bytes) = hex32(reference) {
        let id = GroupId(bytes);
        return groups
            .contains(&id)
            .then_some(id)
            .ok_or_else(|| ApiError::unknown_group(reference));
    }
    let mut found = None;
    for id in groups {
        if node.group_name(id).await?.as_deref() == Some(reference) {
            if found.is_some() {
                return Err(ApiError::new(
                    409,
                    "ambiguous",
                    format!("several groups are named {reference:?}: use the id"),
                ));
            }
            found = Some(id);
        }
    }
    found.ok_or_else(|| ApiError::unknown_group(reference))
}

/// A member named by their id (hex) or a contact's name.
async fn resolve_member(node: &Node, reference: &str) -> Result<MemberId, ApiError> {
    if let Some(bytes) = hex32(reference) {
        return Ok(MemberId(bytes));
    }
    let contacts = node.contacts().await?;
    let mut matching = contacts.iter().filter(|c| c.name == reference);
    match (matching.next(), matching.next()) {
        (Some(contact), None) => Ok(contact.member),
        (Some(_), Some(_)) => Err(ApiError::new(
            409,
            "ambiguous",
            format!("several contacts are named {reference:?}: use the id"),
        )),
        (None, _) => Err(ApiError::unknown_contact(reference)),
    }
}

/// Up to `limit` events after cursor `after`, fetched a few at a time, ending early once
/// [`MAX_PAGE_BYTES`] of JSON are held.
async fn bounded_page<F, Fut>(
    mut after: u64,
    limit: usize,
    delivery: Option<&Delivery>,
    mut fetch: F,
) -> Result<Value, ApiError>
where
    F: FnMut(u64, usize) -> Fut,
    Fut: Future<Output = Result<Vec<NodeEvent>, NodeError>>,
{
    let mut page = Vec::new();
    let mut bytes = 0;
    while page.len() < limit {
        let chunk = fetch(after, FETCH_CHUNK.min(limit - page.len())).await?;
        let Some(last) = chunk.last() else {
            break;
        };
        after = last.cursor;
        for stored in &chunk {
            let event = json(api_event_in(stored, delivery))?;
            bytes += event.to_string().len();
            if !page.is_empty() && bytes > MAX_PAGE_BYTES {
                return Ok(Value::Array(page));
            }
            page.push(event);
        }
    }
    Ok(Value::Array(page))
}

/// A contact named by their id (hex) or name.
async fn resolve_contact(node: &Node, reference: &str) -> Result<Contact, ApiError> {
    let member = resolve_member(node, reference).await?;
    node.contacts()
        .await?
        .into_iter()
        .find(|c| c.member == member)
        .ok_or_else(|| ApiError::unknown_contact(reference))
}

/// Runs method `name` with `params` on the node.
pub async fn call(node: &Node, name: &str, params: Value) -> Result<Value, ApiError> {
    match name {
        "id" => {
            let card = node.contact().await?;
            let dial: Vec<String> = node
                .dial_addresses()
                .await?
                .iter()
                .map(ToString::to_string)
                .collect();
            Ok(serde_json::json!({
                "id": member_hex(&node.id()),
                "card": card.to_text(),
                "dial": dial,
            }))
        }
        "contact.add" => {
            let p: ContactAdd = parse(params)?;
            let card = ContactCard::from_text(p.card.trim()).map_err(ApiError::params)?;
            let member = card.member;
            node.add_contact(card, &p.name).await?;
            Ok(serde_json::json!({ "id": member_hex(&member), "name": p.name }))
        }
        "contact.list" => {
            let contacts: Vec<Value> = node
                .contacts()
                .await?
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "id": member_hex(&c.member),
                        "name": c.name,
                        "verified": c.verified,
                    })
                })
                .collect();
            json(contacts)
        }
        "contact.show" => {
            let p: ContactRef = parse(params)?;
            let contact = resolve_contact(node, &p.contact).await?;
            Ok(serde_json::json!({
                "id": member_hex(&contact.member),
                "name": contact.name,
                "verified": contact.verified,
                "safety_number": safety_number(&node.id(), &contact.member),
            }))
        }
        "contact.verify" => {
            let p: ContactVerify = parse(params)?;
            let contact = resolve_contact(node, &p.contact).await?;
            let verified = match (p.undo, p.safety_number) {
                (true, None) => false,
                (false, Some(typed)) => {
                    let number = safety_number(&node.id(), &contact.member);
                    if !same_safety_number(&number, &typed) {
                        return Err(ApiError::new(
                            409,
                            "mismatch",
                            format!(
                                "the safety numbers differ: {} is not verified; the card you \
                                 hold may not be theirs",
                                contact.name
                            ),
                        ));
                    }
                    true
                }
                _ => {
                    return Err(ApiError::params(
                        "give either the safety number they read out, or undo",
                    ));
                }
            };
            node.set_verified(contact.member, verified).await?;
            Ok(serde_json::json!({ "id": member_hex(&contact.member), "verified": verified }))
        }
        "group.create" => {
            let p: GroupCreate = parse(params)?;
            let mut members = Vec::with_capacity(p.members.len());
            for member in &p.members {
                members.push(resolve_member(node, member).await?);
            }
            let id = node.create_group(&p.name, &members).await?;
            json(GroupInfo {
                id: hex::encode(id.as_bytes()),
                name: Some(p.name),
            })
        }
        "group.list" => {
            let mut out = Vec::new();
            for id in node.groups().await? {
                out.push(GroupInfo {
                    id: hex::encode(id.as_bytes()),
                    name: node.group_name(id).await?,
                });
            }
            json(out)
        }
        "group.show" => {
            let p: GroupRef = parse(params)?;
            let id = resolve_group(node, &p.group).await?;
            let members: Vec<String> = node.members(id).await?.iter().map(member_hex).collect();
            Ok(serde_json::json!({
                "id": hex::encode(id.as_bytes()),
                "name": node.group_name(id).await?,
                "members": members,
            }))
        }
        "group.add" | "group.remove" => {
            let p: GroupMember = parse(params)?;
            let id = resolve_group(node, &p.group).await?;
            let member = resolve_member(node, &p.member).await?;
            if name == "group.add" {
                node.add(id, member).await?;
            } else {
                node.remove(id, member).await?;
            }
            Ok(serde_json::json!({}))
        }
        "group.update" | "group.leave" => {
            let p: GroupRef = parse(params)?;
            let id = resolve_group(node, &p.group).await?;
            if name == "group.update" {
                node.update(id).await?;
            } else {
                node.leave(id).await?;
            }
            Ok(serde_json::json!({}))
        }
        "invitation.list" => {
            let invitations: Vec<Value> = node
                .invitations()
                .await?
                .iter()
                .map(|i| {
                    serde_json::json!({
                        "group": hex::encode(i.group.as_bytes()),
                        "adder": member_hex(&i.adder),
                        "received_ms": i.received_ms,
                    })
                })
                .collect();
            json(invitations)
        }
        "invitation.accept" | "invitation.decline" => {
            let p: GroupRef = parse(params)?;
            let group = hex32(p.group.trim())
                .map(GroupId)
                .ok_or_else(|| ApiError::params("a group id is 64 hex digits"))?;
            if name == "invitation.accept" {
                node.accept_invitation(group).await?;
            } else {
                node.decline_invitation(group).await?;
            }
            Ok(serde_json::json!({}))
        }
        "mailbox.use" => {
            let p: MailboxUse = parse(params)?;
            let card = ContactCard::from_text(p.card.trim()).map_err(ApiError::params)?;
            let member = card.member;
            node.use_mailbox(card).await?;
            Ok(serde_json::json!({ "mailbox": member_hex(&member) }))
        }
        "send" => {
            let p: Send = parse(params)?;
            if p.text.len() > dspring_node::MAX_MESSAGE_BYTES {
                return Err(ApiError::new(
                    413,
                    "too_large",
                    format!(
                        "a message is at most {} bytes",
                        dspring_node::MAX_MESSAGE_BYTES
                    ),
                ));
            }
            let id = resolve_group(node, &p.group).await?;
            node.send(id, p.text.as_bytes()).await?;
            Ok(serde_json::json!({}))
        }
        "read" => {
            let p: Read = parse(params)?;
            let id = resolve_group(node, &p.group).await?;
            let limit = p.limit.unwrap_or(100).min(MAX_READ);
            let delivery = node.delivery(id).await?;
            bounded_page(p.after, limit, Some(&delivery), |after, n| {
                node.messages(id, after, n)
            })
            .await
        }
        "events" => {
            let p: Events = parse(params)?;
            let limit = p.limit.unwrap_or(100).min(MAX_EVENTS_PAGE);
            bounded_page(p.after, limit, None, |after, n| node.events_since(after, n)).await
        }
        "status" => {
            let network = node.network_status().await?;
            let status = node.status().await?;
            let (reachability, public_address) = match &network.reachability {
                Reachability::Public(address) => ("public", Some(address.to_string())),
                Reachability::Private => ("private", None),
                _ => ("unknown", None),
            };
            let catching_up: Vec<Value> = status
                .catching_up
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "group": hex::encode(c.group.as_bytes()),
                        "received": c.received,
                        "seconds": c.elapsed.as_secs(),
                    })
                })
                .collect();
            let seconds_since = |since: std::time::SystemTime| {
                since.elapsed().map_or(0, |elapsed| elapsed.as_secs())
            };
            let out_of_reach: Vec<Value> = status
                .out_of_reach
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "member": member_hex(&m.member),
                        "seconds": seconds_since(m.since),
                    })
                })
                .collect();
            let groups_out_of_reach: Vec<Value> = status
                .groups_out_of_reach
                .iter()
                .map(|g| {
                    serde_json::json!({
                        "group": hex::encode(g.group.as_bytes()),
                        "seconds": seconds_since(g.since),
                    })
                })
                .collect();
            Ok(serde_json::json!({
                "out_of_reach": out_of_reach,
                "groups_out_of_reach": groups_out_of_reach,
                "id": member_hex(&node.id()),
                "groups": node.groups().await?.len(),
                "busy_groups": status.busy_groups,
                "contacts": node.contacts().await?.len(),
                "connections": network.connections,
                "relayed_connections": network.relayed_connections,
                "dht_peers": network.dht_peers,
                "reachability": reachability,
                "public_address": public_address,
                "bootstrapping": network.bootstrapping,
                "bytes_sent": network.sent,
                "bytes_received": network.received,
                "outbox": status.outbox,
                "awaiting_welcome": status.awaiting_welcome,
                "catching_up": catching_up,
                "own_mailboxes": status.own_mailboxes,
                "fetching_news": status.fetching_news,
                "invitations": status.invitations,
                "mailbox_groups": status.mailbox_groups,
            }))
        }
        _ => Err(ApiError::new(
            404,
            "unknown_method",
            format!("no method {name:?}"),
        )),
    }
}
