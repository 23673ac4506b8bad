//! The OpenAPI document, built from the method table (so it cannot drift from the methods);
//! a copy is checked in at `docs/openapi.json` and a test keeps it equal.

use serde_json::{Value, json};

use crate::api::{EVENT_KINDS, Field, Kind, METHODS, NOTICE_KINDS, Param, Shape, Ty};

/// The JSON schema of a method's parameters: an object with exactly these fields.
fn params_schema(params: &[Param]) -> Value {
    let mut properties = serde_json::Map::new();
    for param in params {
        let mut schema = match param.kind {
            Kind::String => json!({"type": "string"}),
            Kind::Integer => json!({"type": "integer", "minimum": 0}),
            Kind::Boolean => json!({"type": "boolean"}),
            Kind::Strings => json!({"type": "array", "items": {"type": "string"}}),
        };
        if let Some(object) = schema.as_object_mut() {
            object.insert("description".to_owned(), json!(param.doc));
        }
        properties.insert(param.name.to_owned(), schema);
    }
    let required: Vec<&str> = params
        .iter()
        .filter(|p| p.required)
        .map(|p| p.name)
        .collect();
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
        "required": required,
    })
}

/// The JSON schema of an object with exactly these fields, all present.
fn object_schema(fields: &[Field]) -> Value {
    let mut properties = serde_json::Map::new();
    for field in fields {
        let mut schema = match field.ty {
            Ty::String => json!({"type": "string"}),
            Ty::StringOrNull => json!({"type": ["string", "null"]}),
            Ty::Integer => json!({"type": "integer", "minimum": 0}),
            Ty::IntegerOrNull => json!({"type": ["integer", "null"], "minimum": 0}),
            Ty::Boolean => json!({"type": "boolean"}),
            Ty::Strings => json!({"type": "array", "items": {"type": "string"}}),
            Ty::Objects(fields) => json!({"type": "array", "items": object_schema(fields)}),
        };
        if let Some(object) = schema.as_object_mut() {
            object.insert("description".to_owned(), json!(field.doc));
        }
        properties.insert(field.name.to_owned(), schema);
    }
    let required: Vec<&str> = fields.iter().map(|f| f.name).collect();
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
        "required": required,
    })
}

/// The JSON schema of a method's result.
fn result_schema(shape: &Shape) -> Value {
    match shape {
        Shape::Nothing => object_schema(&[]),
        Shape::Object(fields) => object_schema(fields),
        Shape::List(fields) => json!({"type": "array", "items": object_schema(fields)}),
        Shape::Events => json!({"type": "array", "items": {"$ref": "#/components/schemas/Event"}}),
    }
}

/// An event as `read`, `events` and the stream show it; which fields besides the first four
/// it has depends on its kind.
fn event_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["cursor", "group", "at_ms", "kind"],
        "properties": {
            "cursor": {"type": "integer", "minimum": 0, "description": "Its place in this node's event log: resume after it."},
            "group": {"type": "string", "description": "The group's id (hex)."},
            "at_ms": {"type": "integer", "minimum": 0, "description": "When this node logged it, in ms since the Unix epoch."},
            "kind": {"type": "string", "enum": EVENT_KINDS},
            "sender": {"type": "string", "description": "message, unreadable: the sender's member id."},
            "text": {"type": "string", "description": "message, sent: the text."},
            "epoch": {"type": "integer", "minimum": 0, "description": "sent: its position in this node's messages (with `index`), as `delivery` notices name it."},
            "index": {"type": "integer", "minimum": 0, "description": "sent: see `epoch`."},
            "delivery": {"type": "string", "enum": ["here", "held", "all"], "description": "sent, in `read`: how far it got, as the other members' and mailboxes' syncs showed it: `here` (only this node holds it so far), `held` (another member or a mailbox holds it: it survives this device), `all` (every other current member holds it)."},
            "by": {"type": "string", "description": "joined, member_added, member_removed, removed_me: who did it."},
            "member": {"type": "string", "description": "member_added, member_removed, key_updated: whom it concerns."}
        }
    })
}

/// A notice of the event stream: not kept, no cursor (`status` and `read` give the state).
fn notice_schema() -> Value {
    let position = |description: &str| {
        json!({
            "type": ["object", "null"],
            "description": description,
            "required": ["epoch", "index"],
            "properties": {"epoch": {"type": "integer", "minimum": 0}, "index": {"type": "integer", "minimum": 0}}
        })
    };
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["kind"],
        "properties": {
            "kind": {"type": "string", "enum": NOTICE_KINDS},
            "member": {"type": "string", "description": "out_of_reach, back_in_reach: the member or mailbox (hex)."},
            "since_ms": {"type": "integer", "minimum": 0, "description": "out_of_reach: when its dials began to fail, in ms since the Unix epoch."},
            "group": {"type": "string", "description": "delivery: the group (hex)."},
            "held": position("delivery: up to this position (of `sent` events) another member or a mailbox holds this node's messages; null: none yet."),
            "all": position("delivery: up to this position every other current member holds them; null: not yet.")
        }
    })
}

pub fn document() -> Value {
    let error = json!({
        "description": "A failure: a stable code and a message",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    });
    let mut paths = serde_json::Map::new();
    for method in METHODS {
        paths.insert(
            format!("/v1/{}", method.name),
            json!({
                "post": {
                    "operationId": method.name,
                    "summary": method.summary,
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": method.params.iter().any(|p| p.required),
                        "content": {"application/json": {"schema": params_schema(method.params)}}
                    },
                    "responses": {
                        "200": {
                            "description": "The result",
                            "content": {"application/json": {"schema": result_schema(&method.result)}}
                        },
                        "400": error, "401": error, "404": error, "408": error, "409": error,
                        "413": error, "500": error, "503": error
                    }
                }
            }),
        );
    }
    // The stream shares its path with the `events` method (POST, one page): one path item,
    // both operations.
    let stream = json!({
        "operationId": "events.stream",
        "summary": "Server-Sent Events: stored events after the cursor, then live ones (SSE event `event`, an `Event`; its id is its cursor: reconnect with Last-Event-ID to resume). Between them, as they happen, notices (SSE event `notice`, a `Notice`, no id: not kept; `status` and `read` give the current state): members out of reach and back, and how far this node's messages got.",
        "security": [{"bearer": []}],
        "parameters": [
            {"name": "after", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0}},
            {"name": "group", "in": "query", "required": false, "description": "Only this group's events: a name or an id.", "schema": {"type": "string"}},
            {"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "string"}}
        ],
        "responses": {
            "200": {"description": "An event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            "400": error, "401": error, "404": error, "503": error
        }
    });
    match paths.get_mut("/v1/events").and_then(Value::as_object_mut) {
        Some(item) => {
            item.insert("get".to_owned(), stream);
        }
        None => {
            paths.insert("/v1/events".to_owned(), json!({ "get": stream }));
        }
    }
    paths.insert(
        "/v1/openapi.json".to_owned(),
        json!({
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {"200": {"description": "The OpenAPI document", "content": {"application/json": {"schema": {"type": "object"}}}}}
            }
        }),
    );
    paths.insert(
        "/v1/proof".to_owned(),
        json!({
            "get": {
                "operationId": "proof",
                "summary": "The daemon proves it holds the token: HMAC-SHA256 keyed with the token over \"dspring/v1/api-proof\" and the challenge. Clients check it before sending the token.",
                "parameters": [
                    {"name": "challenge", "in": "query", "required": true, "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}}
                ],
                "responses": {
                    "200": {"description": "The proof, hex", "content": {"application/json": {"schema": {"type": "object", "properties": {"proof": {"type": "string"}}}}}},
                    "400": error
                }
            }
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Digital Spring local API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The dspring daemon's API, on loopback only. Every method is POST /v1/<method> with JSON parameters; the bearer token is the file api-token in the data directory (mode 0600)."
        },
        "paths": Value::Object(paths),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Event": event_schema(),
                "Notice": notice_schema(),
                "Error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn the_checked_in_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let generated = serde_json::to_string_pretty(&super::document()).unwrap() + "\n";
        if std::env::var_os("DSPRING_WRITE_OPENAPI").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "docs/openapi.json is out of date: run DSPRING_WRITE_OPENAPI=1 cargo test -p dspring openapi"
        );
    }
}
