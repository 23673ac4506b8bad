//! The method table: every operation of the local API, each a `POST /v1/<name>` with JSON
//! parameters and a JSON result. The CLI calls the same methods, so every CLI command is an
//! API call.

use dspring_node::{
    Contact, ContactCard, Node, NodeError, NodeEvent, safety_number, same_safety_number,
};
use dspring_node::{Delivery, DeliveryState, Event, GroupId, MemberId, Reachability};
use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// One method of the API.
#[derive(Debug)]
pub struct Method {
    pub name: &'static str,
    pub summary: &'static str,
    /// Its JSON parameters (an object with these fields; the API refuses any other field).
    pub params: &'static [Param],
    /// Its result.
    pub result: Shape,
}

/// What a method returns.
#[derive(Debug)]
pub enum Shape {
    /// `{}`: done.
    Nothing,
    /// An object with these fields, every one present (an unknown value is `null`).
    Object(&'static [Field]),
    /// A list of objects with these fields.
    List(&'static [Field]),
    /// A list of events (`Event` in the OpenAPI document).
    Events,
}

/// One field of a result.
#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub ty: Ty,
    pub doc: &'static str,
}

/// A result field's JSON type.
#[derive(Clone, Copy, Debug)]
pub enum Ty {
    String,
    /// A string, or `null` when unknown.
    StringOrNull,
    Integer,
    /// An integer, or `null` when it does not apply.
    IntegerOrNull,
    Boolean,
    Strings,
    /// A list of objects with these fields.
    Objects(&'static [Field]),
}

const fn field(name: &'static str, ty: Ty, doc: &'static str) -> Field {
    Field { name, ty, doc }
}

const MEMBER_ID: Field = field("id", Ty::String, "This node's member id (hex).");
const CONTACT_ID: Field = field("id", Ty::String, "The contact's member id (hex).");
const CONTACT_NAME: Field = field("name", Ty::String, "The name you gave them.");
const VERIFIED: Field = field(
    "verified",
    Ty::Boolean,
    "Whether you compared safety numbers with them.",
);
const GROUP_ID: Field = field("id", Ty::String, "The group's id (hex).");
const GROUP_NAME: Field = field(
    "name",
    Ty::StringOrNull,
    "The group's name (null until this node learns it).",
);
const STATUS: &[Field] = &[
    MEMBER_ID,
    field("groups", Ty::Integer, "Groups this node is in."),
    field(
        "busy_groups",
        Ty::Integer,
        "Groups with recent traffic (on their gossip topic).",
    ),
    field("contacts", Ty::Integer, "Contacts."),
    field("connections", Ty::Integer, "Connections open now."),
    field(
        "relayed_connections",
        Ty::Integer,
        "Of `connections`: those through a relay. Hole punching replaces one with a direct \
         connection where both sides' NATs allow it.",
    ),
    field("dht_peers", Ty::Integer, "Peers in the DHT routing table."),
    field(
        "reachability",
        Ty::String,
        "Whether peers can dial this node, as their dial-backs found (AutoNAT): \
         `public`, `private` (behind NAT or a firewall: reached only through relays) or \
         `unknown` (no verdict yet, or only private addresses).",
    ),
    field(
        "public_address",
        Ty::StringOrNull,
        "The address peers dialled this node back at (null unless `public`).",
    ),
    field(
        "bootstrapping",
        Ty::Boolean,
        "The first DHT bootstrap from the configured nodes is running.",
    ),
    field(
        "bytes_sent",
        Ty::Integer,
        "Bytes sent since the daemon started.",
    ),
    field(
        "bytes_received",
        Ty::Integer,
        "Bytes received since the daemon started.",
    ),
    field(
        "outbox",
        Ty::Integer,
        "Envelopes committed but not yet handed to the network.",
    ),
    field(
        "awaiting_welcome",
        Ty::Integer,
        "Members added while offline whose welcome has not reached them yet.",
    ),
    field(
        "catching_up",
        Ty::Objects(&[
            field("group", Ty::String, "The group's id (hex)."),
            field("received", Ty::Integer, "Envelopes received so far."),
            field("seconds", Ty::Integer, "How long it has been going."),
        ]),
        "Catch-ups in progress.",
    ),
    field("own_mailboxes", Ty::Integer, "This node's mailboxes."),
    field(
        "fetching_news",
        Ty::Integer,
        "Own mailboxes whose news are being fetched.",
    ),
    field(
        "invitations",
        Ty::Integer,
        "Invitations waiting for you (`invitation.list`).",
    ),
    field(
        "mailbox_groups",
        Ty::IntegerOrNull,
        "Groups this node keeps as a mailbox (null: it is not one).",
    ),
    field(
        "out_of_reach",
        Ty::Objects(&[
            field("member", Ty::String, "The member's id (hex)."),
            field("seconds", Ty::Integer, "How long its dials have failed."),
        ]),
        "Members this node wanted to reach and could not for a while (it keeps trying, \
         more slowly); each leaves the list when it connects.",
    ),
    field(
        "groups_out_of_reach",
        Ty::Objects(&[
            field("group", Ty::String, "The group's id (hex)."),
            field(
                "seconds",
                Ty::Integer,
                "How long since the last of its other members and mailboxes went out of \
                 reach.",
            ),
        ]),
        "Groups none of whose other members and mailboxes this node can reach: what you \
         send there stays on this node until one of them is back.",
    ),
];

/// The `kind`s of events, as `EventBody` names them.
pub const EVENT_KINDS: &[&str] = &[
    "message",
    "sent",
    "joined",
    "member_added",
    "member_removed",
    "key_updated",
    "removed_me",
    "unreadable",
    "invited",
    "other",
];

/// One parameter of a method.
#[derive(Debug)]
pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
    pub doc: &'static str,
}

/// A parameter's JSON type.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    String,
    Integer,
    Boolean,
    Strings,
}

const fn required(name: &'static str, kind: Kind, doc: &'static str) -> Param {
    Param {
        name,
        kind,
        required: true,
        doc,
    }
}

const fn optional(name: &'static str, kind: Kind, doc: &'static str) -> Param {
    Param {
        name,
        kind,
        required: false,
        doc,
    }
}

const GROUP: Param = required("group", Kind::String, "A group's name or id (hex).");
const CONTACT: Param = required("contact", Kind::String, "A contact's name or id (hex).");
const INVITED_GROUP: Param = required(
    "group",
    Kind::String,
    "The group's id (hex), as `invitation.list` shows it.",
);
const CARD: Param = required(
    "card",
    Kind::String,
    "A contact card (`dspring-card1:...`).",
);
const AFTER: Param = optional(
    "after",
    Kind::Integer,
    "The event cursor to continue after (default 0: from the start).",
);

pub const METHODS: &[Method] = &[
    Method {
        name: "id",
        summary: "This node's member id, contact card, and the addresses other nodes can \
                  bootstrap the DHT from (`dial`).",
        params: &[],
        result: Shape::Object(&[
            MEMBER_ID,
            field("card", Ty::String, "This node's contact card, to share."),
            field(
                "dial",
                Ty::Strings,
                "Addresses other nodes can bootstrap the DHT from (each ends in /p2p/<peer id>).",
            ),
        ]),
    },
    Method {
        name: "contact.add",
        summary: "Adds a person from their contact card, under a name.",
        params: &[
            CARD,
            required("name", Kind::String, "The name you give them."),
        ],
        result: Shape::Object(&[CONTACT_ID, CONTACT_NAME]),
    },
    Method {
        name: "contact.list",
        summary: "The contacts of this node.",
        params: &[],
        result: Shape::List(&[CONTACT_ID, CONTACT_NAME, VERIFIED]),
    },
    Method {
        name: "contact.show",
        summary: "A contact's id, name, verification and the safety number to compare with them.",
        params: &[CONTACT],
        result: Shape::Object(&[
            CONTACT_ID,
            CONTACT_NAME,
            VERIFIED,
            field(
                "safety_number",
                Ty::String,
                "60 digits in groups of five; the same on both sides.",
            ),
        ]),
    },
    Method {
        name: "contact.verify",
        summary: "Marks a contact verified if the safety number they read out matches \
                  (or, with `undo`, not verified).",
        params: &[
            CONTACT,
            optional(
                "safety_number",
                Kind::String,
                "The number they read out (spaces optional).",
            ),
            optional(
                "undo",
                Kind::Boolean,
                "Marks the contact not verified instead.",
            ),
        ],
        result: Shape::Object(&[CONTACT_ID, VERIFIED]),
    },
    Method {
        name: "group.create",
        summary: "Creates a group with a name and members (contact names or ids).",
        params: &[
            required("name", Kind::String, "The group's name."),
            optional("members", Kind::Strings, "Contact names or ids."),
        ],
        result: Shape::Object(&[GROUP_ID, GROUP_NAME]),
    },
    Method {
        name: "group.list",
        summary: "The groups of this node, with their names.",
        params: &[],
        result: Shape::List(&[GROUP_ID, GROUP_NAME]),
    },
    Method {
        name: "group.show",
        summary: "A group's name and members.",
        params: &[GROUP],
        result: Shape::Object(&[
            GROUP_ID,
            GROUP_NAME,
            field(
                "members",
                Ty::Strings,
                "Member ids (hex), this node's included.",
            ),
        ]),
    },
    Method {
        name: "group.add",
        summary: "Adds a member (a contact name or id) to a group.",
        params: &[
            GROUP,
            required("member", Kind::String, "A contact's name or id."),
        ],
        result: Shape::Nothing,
    },
    Method {
        name: "group.remove",
        summary: "Removes a member from a group.",
        params: &[
            GROUP,
            required("member", Kind::String, "A member's contact name or id."),
        ],
        result: Shape::Nothing,
    },
    Method {
        name: "group.leave",
        summary: "Asks the group to remove this member: another member's node does (DCGKA has \
                  no removal of oneself); a `removed_me` event follows.",
        params: &[GROUP],
        result: Shape::Nothing,
    },
    Method {
        name: "group.update",
        summary: "Refreshes this member's keys in a group (heals a compromise).",
        params: &[GROUP],
        result: Shape::Nothing,
    },
    Method {
        name: "invitation.list",
        summary: "Groups that people who are not contacts added this node to, held for you \
                  to accept or decline (with `join_from = \"contacts\"`).",
        params: &[],
        result: Shape::List(&[
            field("group", Ty::String, "The group's id (hex)."),
            field("adder", Ty::String, "Who added you (member id, hex)."),
            field(
                "received_ms",
                Ty::Integer,
                "When the invitation came, in ms since the Unix epoch.",
            ),
        ]),
    },
    Method {
        name: "invitation.accept",
        summary: "Joins the group of an invitation; it catches up from the adder.",
        params: &[INVITED_GROUP],
        result: Shape::Nothing,
    },
    Method {
        name: "invitation.decline",
        summary: "Drops an invitation.",
        params: &[INVITED_GROUP],
        result: Shape::Nothing,
    },
    Method {
        name: "mailbox.use",
        summary: "Makes the node behind a contact card (a mailbox that has this node as a \
                  contact) one of this node's mailboxes: it keeps this node's groups while \
                  this node is offline, and goes on this node's contact card.",
        params: &[CARD],
        result: Shape::Object(&[field(
            "mailbox",
            Ty::String,
            "The mailbox's member id (hex).",
        )]),
    },
    Method {
        name: "send",
        summary: "Sends a text message to a group.",
        params: &[GROUP, required("text", Kind::String, "The message.")],
        result: Shape::Nothing,
    },
    Method {
        name: "read",
        summary: "A group's messages after an event cursor.",
        params: &[
            GROUP,
            AFTER,
            optional(
                "limit",
                Kind::Integer,
                "Most messages returned (default 100, at most 1000).",
            ),
        ],
        result: Shape::Events,
    },
    Method {
        name: "events",
        summary: "Events after a cursor (one page); `GET /v1/events` streams them.",
        params: &[
            AFTER,
            optional(
                "limit",
                Kind::Integer,
                "Most events returned (default 100, at most 1000).",
            ),
        ],
        result: Shape::Events,
    },
    Method {
        name: "status",
        summary: "This node's groups, contacts, connections, traffic, DHT peers and \
                  bootstrap, outbox, welcomes waiting, catch-ups in progress and mailboxes.",
        params: &[],
        result: Shape::Object(STATUS),
    },
];

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

/// An event as the API shows it.
#[derive(Serialize)]
pub struct ApiEvent {
    pub cursor: u64,
    pub group: String,
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: EventBody,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    Message {
        sender: String,
        text: String,
    },
    Sent {
        text: String,
        /// In `read`: how far it got (`here`, `held`, `all`; see [`delivery_name`]).
        #[serde(skip_serializing_if = "Option::is_none")]
        delivery: Option<&'static str>,
    },
    Joined {
        by: String,
    },
    MemberAdded {
        by: String,
        member: String,
    },
    MemberRemoved {
        by: String,
        member: String,
    },
    KeyUpdated {
        member: String,
    },
    RemovedMe {
        by: String,
    },
    Unreadable {
        sender: String,
    },
    /// Someone who is not a contact added this node; `invitation accept` joins.
    Invited {
        by: String,
    },
    Other,
}

/// How `read` names a sent message's [`DeliveryState`]: only on this node so far, held by
/// another member or a mailbox, held by every other current member.
pub fn delivery_name(state: DeliveryState) -> &'static str {
    match state {
        DeliveryState::Here => "here",
        DeliveryState::Held => "held",
        _ => "all",
    }
}

pub fn api_event(stored: &NodeEvent) -> ApiEvent {
    api_event_in(stored, None)
}

/// An event as `read` shows it: a sent message says how far it got, from `delivery`.
fn api_event_in(stored: &NodeEvent, delivery: Option<&Delivery>) -> ApiEvent {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let event = match &stored.event {
        Event::Message {
            sender, plaintext, ..
        } => EventBody::Message {
            sender: member_hex(sender),
            text: text(plaintext),
        },
        Event::Sent {
            plaintext,
            epoch,
            index,
        } => EventBody::Sent {
            text: text(plaintext),
            delivery: delivery.map(|d| delivery_name(d.of(*epoch, *index))),
        },
        Event::Joined { by } => EventBody::Joined { by: member_hex(by) },
        Event::MemberAdded { by, member } => EventBody::MemberAdded {
            by: member_hex(by),
            member: member_hex(member),
        },
        Event::MemberRemoved { by, member } => EventBody::MemberRemoved {
            by: member_hex(by),
            member: member_hex(member),
        },
        Event::KeyUpdated { member } => EventBody::KeyUpdated {
            member: member_hex(member),
        },
        Event::RemovedMe { by } => EventBody::RemovedMe { by: member_hex(by) },
        Event::Unreadable { sender, .. } => EventBody::Unreadable {
            sender: member_hex(sender),
        },
        Event::Invited { by } => EventBody::Invited { by: member_hex(by) },
        _ => EventBody::Other,
    };
    ApiEvent {
        cursor: stored.cursor,
        group: hex::encode(stored.group.as_bytes()),
        at_ms: stored.at_ms,
        event,
    }
}

pub fn member_hex(member: &MemberId) -> String {
    hex::encode(member.as_bytes())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_documented_event_kinds_are_exactly_those_the_api_shows() {
        let s = || "x".to_owned();
        let bodies = [
            EventBody::Message {
                sender: s(),
                text: s(),
            },
            EventBody::Sent {
                text: s(),
                delivery: None,
            },
            EventBody::Joined { by: s() },
            EventBody::MemberAdded {
                by: s(),
                member: s(),
            },
            EventBody::MemberRemoved {
                by: s(),
                member: s(),
            },
            EventBody::KeyUpdated { member: s() },
            EventBody::RemovedMe { by: s() },
            EventBody::Unreadable { sender: s() },
            EventBody::Invited { by: s() },
            EventBody::Other,
        ];
        let kinds: Vec<String> = bodies
            .into_iter()
            .map(|body| {
                // Matched so that a new variant fails to compile here until it is listed.
                match &body {
                    EventBody::Message { .. }
                    | EventBody::Sent { .. }
                    | EventBody::Joined { .. }
                    | EventBody::MemberAdded { .. }
                    | EventBody::MemberRemoved { .. }
                    | EventBody::KeyUpdated { .. }
                    | EventBody::RemovedMe { .. }
                    | EventBody::Unreadable { .. }
                    | EventBody::Invited { .. }
                    | EventBody::Other => {}
                }
                serde_json::to_value(&body).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(kinds, EVENT_KINDS);
    }
}
