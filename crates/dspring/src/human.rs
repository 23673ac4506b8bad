//! How the CLI shows the daemon's answers, events and notices to people (`--json` prints
//! the JSON instead).

use serde_json::Value;

use crate::client::ClientError;
/// One catch-up of a status: "[group] N messages in S s".
pub(crate) fn describe_catch_up(catch_up: &Value) -> String {
    let number = |field: &str| catch_up.get(field).and_then(Value::as_u64).unwrap_or(0);
    format!(
        "[{}] {} messages in {} s",
        short(text_of(catch_up, "group")),
        number("received"),
        number("seconds")
    )
}

/// The long work a status shows running, as one line; `None` when there is none.
pub(crate) fn long_work(status: &Value) -> Option<String> {
    let mut parts = Vec::new();
    for catch_up in status
        .get("catching_up")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        parts.push(format!("catching up {}", describe_catch_up(catch_up)));
    }
    let news = status
        .get("fetching_news")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if news > 0 {
        parts.push(format!("fetching news from {news} mailboxes"));
    }
    if status.get("bootstrapping").and_then(Value::as_bool) == Some(true) {
        parts.push(format!(
            "joining the DHT: {} peers",
            status.get("dht_peers").and_then(Value::as_u64).unwrap_or(0)
        ));
    }
    (!parts.is_empty()).then(|| parts.join(" · "))
}

/// `text` as a QR code drawn with half-block characters, two rows of modules per line.
pub(crate) fn qr_code(text: &str) -> Result<String, ClientError> {
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::L)
        .map_err(|e| ClientError::BadAnswer(format!("the card does not fit a QR code: {e}")))?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .build())
}

pub(crate) fn text_of<'a>(value: &'a Value, field: &str) -> &'a str {
    value.get(field).and_then(Value::as_str).unwrap_or("")
}

/// A byte count for people.
pub(crate) fn bytes(count: u64) -> String {
    match count {
        0..1024 => format!("{count} B"),
        1024..1_048_576 => format!("{:.1} KiB", count as f64 / 1024.0),
        _ => format!("{:.1} MiB", count as f64 / 1_048_576.0),
    }
}

pub(crate) fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

pub(crate) fn describe_reachability(status: &Value) -> String {
    match text_of(status, "reachability") {
        "public" => format!("yes, at {}", text_of(status, "public_address")),
        "private" => "no: peers cannot dial this node (NAT or firewall); \
                      name a relay in config.toml's `network.relays`"
            .to_owned(),
        _ => "not known (no peer has dialled this node back yet; LAN addresses get no answer)"
            .to_owned(),
    }
}

pub(crate) fn describe_event(event: &Value) -> String {
    if event.get("cursor").is_none() {
        return describe_notice(event);
    }
    let group = short(text_of(event, "group"));
    let cursor = event.get("cursor").and_then(Value::as_u64).unwrap_or(0);
    let body = match text_of(event, "kind") {
        "message" => format!(
            "{}: {}",
            short(text_of(event, "sender")),
            text_of(event, "text")
        ),
        // ✓ another member or a mailbox holds it, ✓✓ every member does (only `read` says).
        "sent" => {
            let mark = match text_of(event, "delivery") {
                "held" => " ✓",
                "all" => " ✓✓",
                _ => "",
            };
            format!("me: {}{mark}", text_of(event, "text"))
        }
        "joined" => format!("joined (added by {})", short(text_of(event, "by"))),
        "member_added" => format!(
            "{} added {}",
            short(text_of(event, "by")),
            short(text_of(event, "member"))
        ),
        "member_removed" => format!(
            "{} removed {}",
            short(text_of(event, "by")),
            short(text_of(event, "member"))
        ),
        "key_updated" => format!("{} updated their keys", short(text_of(event, "member"))),
        "removed_me" => format!("removed by {}", short(text_of(event, "by"))),
        "unreadable" => format!(
            "{}: (a message this device may not read)",
            short(text_of(event, "sender"))
        ),
        "invited" => format!(
            "invited by {}, not a contact: `dspring invitation accept {}`",
            short(text_of(event, "by")),
            text_of(event, "group")
        ),
        other => format!("({other})"),
    };
    format!("#{cursor} [{group}] {body}")
}

/// A notice of the event stream (no cursor: not kept).
pub(crate) fn describe_notice(notice: &Value) -> String {
    let position = |key: &str| {
        notice.get(key).filter(|p| !p.is_null()).map_or_else(
            || "none".to_owned(),
            |p| {
                let number = |k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0);
                format!("{}.{}", number("epoch"), number("index"))
            },
        )
    };
    match text_of(notice, "kind") {
        "out_of_reach" => format!("! {} is out of reach", short(text_of(notice, "member"))),
        "back_in_reach" => format!("! {} is back in reach", short(text_of(notice, "member"))),
        "delivery" => format!(
            "! [{}] my messages held by another member or a mailbox up to {} (✓), by every member up to {} (✓✓)",
            short(text_of(notice, "group")),
            position("held"),
            position("all")
        ),
        other => format!("! ({other})"),
    }
}

pub(crate) fn print_human(method: &str, result: &Value) {
    match method {
        "id" => {
            out!("id:   {}", text_of(result, "id"));
            out!("card: {}", text_of(result, "card"));
            for address in result
                .get("dial")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out!("dial: {}", address.as_str().unwrap_or(""));
            }
        }
        "contact.add" => out!(
            "added {} ({})",
            text_of(result, "name"),
            text_of(result, "id")
        ),
        "contact.list" => {
            for contact in result.as_array().into_iter().flatten() {
                let verified = if contact.get("verified").and_then(Value::as_bool) == Some(true) {
                    " (verified)"
                } else {
                    ""
                };
                out!(
                    "{}  {}{verified}",
                    text_of(contact, "id"),
                    text_of(contact, "name")
                );
            }
        }
        "invitation.list" => {
            for invitation in result.as_array().into_iter().flatten() {
                out!(
                    "{}  from {}",
                    text_of(invitation, "group"),
                    text_of(invitation, "adder")
                );
            }
        }
        "contact.show" => {
            let verified = result.get("verified").and_then(Value::as_bool) == Some(true);
            out!("name:          {}", text_of(result, "name"));
            out!("id:            {}", text_of(result, "id"));
            out!("verified:      {}", if verified { "yes" } else { "no" });
            out!("safety number: {}", text_of(result, "safety_number"));
            if !verified {
                out!(
                    "Compare this number with {} (in person or on a call), then run \
                     `dspring contact verify {} <the number they read out>`.",
                    text_of(result, "name"),
                    text_of(result, "name")
                );
            }
        }
        "group.leave" => {
            out!("asked the group to remove you; `dspring follow` shows when one of them has")
        }
        "mailbox.use" => out!("using mailbox {}", text_of(result, "mailbox")),
        "contact.verify" => {
            if result.get("verified").and_then(Value::as_bool) == Some(true) {
                out!("the numbers match: verified");
            } else {
                out!("no longer marked verified");
            }
        }
        "group.create" => out!(
            "created {} ({})",
            text_of(result, "name"),
            text_of(result, "id")
        ),
        "group.list" => {
            for group in result.as_array().into_iter().flatten() {
                out!("{}  {}", text_of(group, "id"), text_of(group, "name"));
            }
        }
        "group.show" => {
            out!("id:      {}", text_of(result, "id"));
            out!("name:    {}", text_of(result, "name"));
            for member in result
                .get("members")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out!("member:  {}", member.as_str().unwrap_or(""));
            }
        }
        "read" => {
            for event in result.as_array().into_iter().flatten() {
                out!("{}", describe_event(event));
            }
        }
        "status" => {
            let number = |field: &str| result.get(field).and_then(Value::as_u64).unwrap_or(0);
            out!("id:               {}", text_of(result, "id"));
            out!(
                "groups:           {} ({} busy)",
                number("groups"),
                number("busy_groups")
            );
            out!("contacts:         {}", number("contacts"));
            let relayed = match number("relayed_connections") {
                0 => String::new(),
                n => format!(" ({n} through a relay)"),
            };
            out!("connections:      {}{relayed}", number("connections"));
            let bootstrap = if result.get("bootstrapping").and_then(Value::as_bool) == Some(true) {
                " (first bootstrap running)"
            } else {
                ""
            };
            out!("DHT peers:        {}{bootstrap}", number("dht_peers"));
            out!("reachable:        {}", describe_reachability(result));
            out!(
                "traffic:          {} sent, {} received",
                bytes(number("bytes_sent")),
                bytes(number("bytes_received"))
            );
            out!("outbox:           {} envelopes", number("outbox"));
            out!("awaiting welcome: {} members", number("awaiting_welcome"));
            out!(
                "own mailboxes:    {} ({} fetching news)",
                number("own_mailboxes"),
                number("fetching_news")
            );
            out!("invitations:      {}", number("invitations"));
            match result.get("mailbox_groups").and_then(Value::as_u64) {
                Some(groups) => out!("mailbox role:     keeping {groups} groups"),
                None => out!("mailbox role:     off"),
            }
            for catch_up in result
                .get("catching_up")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out!("catching up:      {}", describe_catch_up(catch_up));
            }
            for (key, label, id) in [
                ("groups_out_of_reach", "nobody in reach: group", "group"),
                ("out_of_reach", "out of reach:     member", "member"),
            ] {
                for entry in result
                    .get(key)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    out!(
                        "{label} [{}] for {} s",
                        short(text_of(entry, id)),
                        entry.get("seconds").and_then(Value::as_u64).unwrap_or(0)
                    );
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn reachability_says_where_or_what_to_do() {
        let public = json!({"reachability": "public", "public_address": "/ip4/1.2.3.4/tcp/5"});
        assert_eq!(describe_reachability(&public), "yes, at /ip4/1.2.3.4/tcp/5");
        let private = json!({"reachability": "private", "public_address": null});
        assert!(describe_reachability(&private).contains("name a relay"));
        let unknown = json!({"reachability": "unknown", "public_address": null});
        assert!(describe_reachability(&unknown).starts_with("not known"));
    }

    #[test]
    fn long_work_names_what_runs_and_nothing_when_idle() {
        let idle = json!({"catching_up": [], "fetching_news": 0, "bootstrapping": false});
        assert_eq!(long_work(&idle), None);
        let busy = json!({
            "catching_up": [{"group": "00112233445566778899", "received": 4512, "seconds": 3}],
            "fetching_news": 1,
            "bootstrapping": true,
            "dht_peers": 7,
        });
        assert_eq!(
            long_work(&busy).unwrap(),
            "catching up [001122334455] 4512 messages in 3 s · fetching news from 1 \
             mailboxes · joining the DHT: 7 peers"
        );
    }

    #[test]
    fn notices_say_who_is_out_of_reach_and_how_far_messages_got() {
        let out = json!({"kind": "out_of_reach", "member": "00112233445566778899", "since_ms": 5});
        assert_eq!(describe_event(&out), "! 001122334455 is out of reach");
        let delivery = json!({
            "kind": "delivery",
            "group": "aabbccddeeff00112233",
            "held": {"epoch": 2, "index": 7},
            "all": null,
        });
        let shown = describe_event(&delivery);
        assert!(shown.contains("[aabbccddeeff]"), "{shown}");
        assert!(
            shown.contains("up to 2.7 (✓)") && shown.contains("up to none (✓✓)"),
            "{shown}"
        );
    }
}
