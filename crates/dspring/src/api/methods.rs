//! What each method of the API takes and returns, described for people and for the
//! OpenAPI document (`openapi.rs`); `call` in the parent module runs them.

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

/// The `kind`s of notices in the event stream, as `ApiNotice` names them.
pub const NOTICE_KINDS: &[&str] = &["out_of_reach", "back_in_reach", "delivery"];

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
