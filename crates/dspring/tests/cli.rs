//! Two real daemons (separate processes and data directories, real libp2p on loopback), driven
//! through the `dspring` binary and the HTTP API: contact exchange, a group, messages both
//! ways (one from stdin), `follow`, the event stream resumed after a restart, adding a member,
//! a key update, `id --qr`, SIGTERM and SIGINT, the API's errors, and a mailbox daemon keeping
//! a group's messages for a member while everyone else is offline.
//!
//! One file past 800 lines on purpose: each test binary links the whole daemon stack (about a
//! minute of CI each), and these scenarios share their daemon set-up; the shared process
//! helpers are in `common/`. Split it by scenario when the link cost no longer dominates.

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, dspring};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

impl Daemon {
    fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// Starts a daemon with more `daemon` flags.
    fn start_with(dir: &Path, flags: &[&str]) -> Self {
        let mut daemon = dspring(dir);
        daemon
            .args(["daemon", "--no-mdns"])
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(flags)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit());
        Self::spawn(daemon, dir)
    }

    /// Runs `dspring --json <args>` against this daemon; its exit code and stdout as JSON.
    fn cli(&self, args: &[&str]) -> (i32, Value) {
        let output = dspring(&self.dir)
            .arg("--json")
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        let value = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
        (output.status.code().unwrap_or(-1), value)
    }

    /// Runs a command that must succeed; its result must be what the API document says.
    fn ok(&self, args: &[&str]) -> Value {
        let (code, value) = self.cli(args);
        assert_eq!(code, 0, "dspring {args:?} failed");
        let method = method_of(args);
        let schema = &api_document()["paths"][format!("/v1/{method}")]["post"]["responses"]["200"]
            ["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "no result schema for {method}");
        if let Err(error) = conforms(&value, schema, &method) {
            panic!("dspring {args:?}: {error}\n{value}");
        }
        value
    }

    /// Stops the daemon with SIGTERM and waits for a clean exit.
    fn stop(self) {
        self.stop_with("-TERM");
    }

    /// Stops the daemon with this signal (`-TERM`, `-INT`) and waits for a clean exit.
    fn stop_with(mut self, signal: &str) {
        self.signal(signal);
        let status = self.wait_for_exit();
        assert!(
            status.success(),
            "the daemon exits cleanly on SIGTERM: {status}"
        );
        assert!(
            !self.dir.join("api-address").exists(),
            "a stopped daemon removes its address"
        );
    }

    fn address(&self) -> String {
        std::fs::read_to_string(self.dir.join("api-address")).unwrap()
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("api-token")).unwrap()
    }
}

/// The API method a CLI command calls: `group create ...` calls `group.create`.
fn method_of(args: &[&str]) -> String {
    match args {
        [
            noun @ ("contact" | "group" | "mailbox" | "invitation"),
            verb,
            ..,
        ] => format!("{noun}.{verb}"),
        [command, ..] => (*command).to_owned(),
        [] => String::new(),
    }
}

/// The checked-in OpenAPI document (a unit test keeps it equal to what the daemon serves).
fn api_document() -> &'static Value {
    static DOCUMENT: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    })
}

/// Checks `value` against `schema`, in the subset of JSON Schema the document uses: `$ref`,
/// `type` (one or several), `minimum`, `enum`, `properties`, `required`,
/// `additionalProperties: false`, `items`.
fn conforms(value: &Value, schema: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap();
        return conforms(value, &api_document()["components"]["schemas"][name], at);
    }
    let actual = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(several)) => several.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.contains(&actual) {
        return Err(format!("{at}: {actual}, the document says {types:?}"));
    }
    if let (Some(minimum), Some(number)) = (
        schema.get("minimum").and_then(Value::as_i64),
        value.as_i64(),
    ) && number < minimum
    {
        return Err(format!("{at}: {number} < {minimum}"));
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {options:?}"));
    }
    if let Value::Object(object) = value {
        let properties = schema.get("properties").and_then(Value::as_object);
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !object.contains_key(required) {
                return Err(format!("{at}: no field {required}"));
            }
        }
        for (name, field) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(field_schema) => conforms(field, field_schema, &format!("{at}.{name}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{at}: field {name} is not in the document"));
                }
                None => {}
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            conforms(item, item_schema, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

#[test]
fn the_result_check_catches_what_the_document_does_not_say() {
    let status = &api_document()["paths"]["/v1/status"]["post"]["responses"]["200"]["content"]["application/json"]
        ["schema"];
    assert!(conforms(&json!({"id": "x"}), status, "status").is_err());
    let read = &api_document()["paths"]["/v1/read"]["post"]["responses"]["200"]["content"]["application/json"]
        ["schema"];
    let event = json!({"cursor": 1, "group": "g", "at_ms": 2, "kind": "message", "text": "hi"});
    assert!(conforms(&json!([event]), read, "read").is_ok());
    let mut odd = event.clone();
    odd["kind"] = json!("novel");
    assert!(conforms(&json!([odd]), read, "read").is_err());
    let mut extra = event;
    extra["surprise"] = json!(true);
    assert!(conforms(&json!([extra]), read, "read").is_err());
    assert!(conforms(&json!({}), read, "read").is_err());
}

/// The lines a child prints, read on a thread so that a missing line fails the test after
/// `WAIT` instead of hanging it.
fn lines_of(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

fn next_event(lines: &std::sync::mpsc::Receiver<String>) -> Value {
    let line = lines.recv_timeout(WAIT).expect("an event within the wait");
    serde_json::from_str(&line).unwrap()
}

fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn texts(daemon: &Daemon, group: &str) -> Vec<String> {
    daemon
        .ok(&["read", group, "--limit", "100"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// A raw HTTP call: status and JSON body.
fn http(daemon: &Daemon, path: &str, token: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    http_result(daemon, path, token, body).unwrap()
}

fn http_result(
    daemon: &Daemon,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> Result<(u16, Value), reqwest::Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut request = reqwest::Client::new()
            .post(format!("http://{}{path}", daemon.address()))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let value = response.json().await.unwrap_or(Value::Null);
        Ok((status, value))
    })
}

/// A raw authorized GET (for answers that are not a stream): status and JSON body.
fn http_get(daemon: &Daemon, path: &str, token: &str) -> (u16, Value) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .get(format!("http://{}{path}", daemon.address()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    })
}

#[test]
fn two_daemons_talk_through_the_cli_and_the_api() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let alice = Daemon::start(dirs[0].path());
    let bob = Daemon::start(dirs[1].path());

    // The token is the owner's only.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dirs[0].path().join("api-token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // Contact exchange, as people would: each prints a card, the other adds it.
    let alice_id = alice.ok(&["id"]);
    let bob_id = bob.ok(&["id"]);
    assert_eq!(alice_id["id"].as_str().unwrap().len(), 64);
    bob.ok(&[
        "contact",
        "add",
        alice_id["card"].as_str().unwrap(),
        "--name",
        "alice",
    ]);
    let added = alice.ok(&[
        "contact",
        "add",
        bob_id["card"].as_str().unwrap(),
        "--name",
        "bob",
    ]);
    assert_eq!(added["id"], bob_id["id"]);
    let contacts = alice.ok(&["contact", "list"]);
    assert_eq!(
        contacts,
        json!([{"id": bob_id["id"], "name": "bob", "verified": false}])
    );

    // A group by name, members by contact name.
    let group = alice.ok(&["group", "create", "friends", "--member", "bob"]);
    let group_id = group["id"].as_str().unwrap().to_owned();
    until("bob joins", || {
        bob.ok(&["group", "list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["id"] == group_id.as_str() && g["name"] == "friends")
    });
    let shown = bob.ok(&["group", "show", "friends"]);
    let mut members: Vec<&str> = shown["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    members.sort_unstable();
    let mut expected = vec![
        alice_id["id"].as_str().unwrap(),
        bob_id["id"].as_str().unwrap(),
    ];
    expected.sort_unstable();
    assert_eq!(members, expected);

    // Bob follows his events as NDJSON while the two talk both ways.
    let mut follower = dspring(dirs[1].path())
        .args(["--json", "follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    alice.ok(&["send", "friends", "hello bob"]);
    until("bob reads alice", || {
        texts(&bob, "friends").contains(&"hello bob".to_owned())
    });
    bob.ok(&["send", &group_id, "hello alice"]);
    until("alice reads bob", || {
        texts(&alice, "friends") == ["hello bob", "hello alice"]
    });
    let lines = lines_of(&mut follower);
    let mut followed = Vec::new();
    while !followed.contains(&"hello alice".to_owned()) {
        let event = next_event(&lines);
        assert!(event["cursor"].as_u64().unwrap() > 0);
        assert_eq!(event["group"], group_id.as_str());
        if let Some(text) = event["text"].as_str() {
            followed.push(text.to_owned());
        }
    }
    assert_eq!(followed, ["hello bob", "hello alice"]);
    let _ = follower.kill();
    let _ = follower.wait();
    let read = bob.ok(&["read", "friends"]);
    assert_eq!(read[0]["kind"], "message");
    assert_eq!(read[0]["sender"], alice_id["id"]);
    assert_eq!(read[1]["kind"], "sent");
    let last_cursor = read[1]["cursor"].as_u64().unwrap();

    // `send <group> -` reads the text from stdin.
    let mut piped = dspring(dirs[0].path())
        .arg("--json")
        .args(["send", "friends", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = piped.stdin.take().unwrap();
        stdin.write_all(b"from stdin").unwrap();
    }
    assert!(piped.wait().unwrap().success());
    until("bob reads what came from stdin", || {
        texts(&bob, "friends").contains(&"from stdin".to_owned())
    });
    // `id --qr` draws the card as a QR code of block characters.
    let qr = dspring(dirs[0].path())
        .args(["id", "--qr"])
        .output()
        .unwrap();
    assert!(qr.status.success());
    let drawn = String::from_utf8(qr.stdout).unwrap();
    assert!(
        drawn
            .lines()
            .filter(|l| l.contains('█') || l.contains('▀') || l.contains('▄'))
            .count()
            > 10,
        "{drawn}"
    );

    // Errors: a stable code and exit code 1.
    let (code, _) = alice.cli(&["send", "no such group", "x"]);
    assert_eq!(code, 1);
    let token = alice.token();
    let (status, body) = http(&alice, "/v1/status", None, b"{}".to_vec());
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let (status, body) = http(&alice, "/v1/status", Some(&"0".repeat(64)), b"{}".to_vec());
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let (status, body) = http(&alice, "/v1/send", Some(&token), b"{not json".to_vec());
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_json")));
    let (status, body) = http(
        &alice,
        "/v1/send",
        Some(&token),
        br#"{"group": 5}"#.to_vec(),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_params"))
    );
    let unknown = json!({"group": "0".repeat(64), "text": "x"}).to_string();
    let (status, body) = http(&alice, "/v1/send", Some(&token), unknown.into_bytes());
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("unknown_group"))
    );
    let (status, body) = http(&alice, "/v1/nonsense", Some(&token), b"{}".to_vec());
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("unknown_method"))
    );
    let (status, body) = http_get(&alice, "/v1/send", &token);
    assert_eq!(
        (status, body["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (status, body) = http_get(&alice, "/v1/events?group=nosuch", &token);
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("unknown_group"))
    );
    // A message over the core's plaintext bound (256 KiB), in a body the daemon reads whole.
    let long = json!({"group": "friends", "text": "x".repeat(300 << 10)}).to_string();
    let (status, body) = http(&alice, "/v1/send", Some(&token), long.into_bytes());
    assert_eq!((status, body["code"].as_str()), (413, Some("too_large")));
    let huge = vec![b' '; 4 << 20];
    match http_result(&alice, "/v1/status", Some(&token), huge) {
        Ok((status, body)) => assert_eq!((status, body["code"].as_str()), (413, Some("too_large"))),
        // The daemon may answer and close before the client has written the whole body.
        Err(error) => assert!(error.is_request() || error.is_body(), "{error}"),
    }
    // And the daemon still answers.
    let status = alice.ok(&["status"]);
    assert_eq!(status["groups"], 1);
    assert!(status["outbox"].is_u64() && status["awaiting_welcome"] == 0);
    assert_eq!(status["mailbox_groups"], Value::Null, "not a mailbox");
    assert!(status["catching_up"].is_array());
    assert_eq!(status["invitations"], 0);
    assert_eq!(alice.ok(&["invitation", "list"]), json!([]));
    let (code, _) = alice.cli(&["invitation", "decline", &"0".repeat(64)]);
    assert_eq!(code, 1, "no such invitation");
    // Every method the API document names is one the daemon dispatches (the table and the
    // dispatch cannot drift apart): called without parameters, none is an unknown method.
    let document: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let methods: Vec<&String> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, operations)| operations.get("post").is_some())
        .map(|(path, _)| path)
        .collect();
    assert!(methods.len() >= 13, "{methods:?}");
    for path in methods {
        let (status, body) = http(&alice, path, Some(&token), b"{}".to_vec());
        assert!(
            status == 200 || body["code"] == "invalid_params",
            "{path}: {status} {body}"
        );
        // Every parameter the document names is one the method takes: a call with all of
        // them is refused for its values at most, never for an unknown field.
        let schema = &document["paths"][path.as_str()]["post"]["requestBody"]["content"]["application/json"]
            ["schema"];
        let mut call = serde_json::Map::new();
        for (name, param) in schema["properties"].as_object().unwrap() {
            let value = match param["type"].as_str().unwrap() {
                "string" => json!("no such thing"),
                "integer" => json!(0),
                "boolean" => json!(false),
                "array" => json!([]),
                other => panic!("{path}: parameter type {other}"),
            };
            call.insert(name.clone(), value);
        }
        let (status, body) = http(
            &alice,
            path,
            Some(&token),
            Value::Object(call).to_string().into_bytes(),
        );
        assert!(
            !body["message"]
                .as_str()
                .unwrap_or("")
                .contains("unknown field"),
            "{path}: {status} {body}"
        );
    }

    // Bob's daemon restarts; his event stream resumes after the last event he saw.
    bob.stop();
    let bob = Daemon::start(dirs[1].path());
    alice.ok(&["send", "friends", "after the restart"]);
    until("bob has the message sent after his restart", || {
        texts(&bob, "friends").contains(&"after the restart".to_owned())
    });
    let resumed = dspring(dirs[1].path())
        .args(["--json", "follow"])
        .args(["--after", &last_cursor.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut resumed = resumed;
    let lines = lines_of(&mut resumed);
    let first = next_event(&lines);
    assert!(first["cursor"].as_u64().unwrap() > last_cursor);
    let mut seen = vec![first];
    while !seen.iter().any(|e| e["text"] == "after the restart") {
        seen.push(next_event(&lines));
    }
    assert!(
        seen.iter()
            .all(|e| e["text"] != "hello bob" && e["text"] != "hello alice"),
        "nothing before the cursor comes again: {seen:?}"
    );
    // The same through the raw stream and a `Last-Event-ID` header, as a browser's
    // EventSource reconnects: the ids go on from the cursor to the new message.
    let after_restart = bob
        .ok(&["read", "friends", "--limit", "100"])
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["text"] == "after the restart")
        .unwrap()["cursor"]
        .as_u64()
        .unwrap();
    let (status, mut raw) = raw_stream(&bob, &format!("Last-Event-ID: {last_cursor}\r\n"));
    assert_eq!(status, 200);
    let mut previous = last_cursor;
    loop {
        let id = next_sse_id(&mut raw);
        assert!(
            id > previous,
            "ids rise from the cursor: {id} after {previous}"
        );
        previous = id;
        if id == after_restart {
            break;
        }
    }
    drop(raw);
    // A daemon stops on SIGTERM even with a client on its event stream, and the stream ends.
    bob.stop();
    let deadline = Instant::now() + WAIT;
    while resumed.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "follow ends when the daemon stops"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Ctrl-C (SIGINT) stops a daemon as cleanly.
    alice.stop_with("-INT");
}

/// Opens `GET /v1/events` on a raw socket with these extra headers; the status code and the
/// socket, positioned after the response headers.
fn raw_stream(daemon: &Daemon, headers: &str) -> (u16, BufReader<std::net::TcpStream>) {
    use std::io::Write;
    let mut socket = std::net::TcpStream::connect(daemon.address().trim()).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        socket,
        "GET /v1/events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n{headers}\r\n",
        daemon.token()
    )
    .unwrap();
    let mut reader = BufReader::new(socket);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    (status, reader)
}

/// The id of the next SSE event on a raw stream.
fn next_sse_id(reader: &mut BufReader<std::net::TcpStream>) -> u64 {
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended");
        if let Some(id) = line.trim().strip_prefix("id:") {
            return id.trim().parse().unwrap();
        }
    }
}

#[test]
fn three_daemons_verify_each_other_and_a_removed_member_reads_nothing_more() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let daemons: Vec<Daemon> = dirs.iter().map(|d| Daemon::start(d.path())).collect();
    let [alice, bob, carol] = &daemons[..] else {
        unreachable!()
    };
    let names = ["alice", "bob", "carol"];
    let ids: Vec<Value> = daemons.iter().map(|d| d.ok(&["id"])).collect();
    for (i, daemon) in daemons.iter().enumerate() {
        for (j, id) in ids.iter().enumerate() {
            if i != j {
                daemon.ok(&[
                    "contact",
                    "add",
                    id["card"].as_str().unwrap(),
                    "--name",
                    names[j],
                ]);
            }
        }
    }

    // Safety numbers: Alice and Bob see the same one; a wrong one is refused, the right
    // one verifies, and a contact can be unverified again.
    let from_alice = alice.ok(&["contact", "show", "bob"]);
    let from_bob = bob.ok(&["contact", "show", "alice"]);
    let number = from_alice["safety_number"].as_str().unwrap();
    assert_eq!(number, from_bob["safety_number"].as_str().unwrap());
    assert_eq!(number.chars().filter(char::is_ascii_digit).count(), 60);
    assert_ne!(
        number,
        alice.ok(&["contact", "show", "carol"])["safety_number"]
            .as_str()
            .unwrap()
    );
    let wrong = number.replacen(&number[..1], if &number[..1] == "1" { "2" } else { "1" }, 1);
    let (code, _) = alice.cli(&["contact", "verify", "bob", &wrong]);
    assert_eq!(code, 1, "a wrong number is refused");
    assert_eq!(alice.ok(&["contact", "show", "bob"])["verified"], false);
    let verified = alice.ok(&["contact", "verify", "bob", &number.replace(' ', "")]);
    assert_eq!(verified["verified"], true);
    let list = alice.ok(&["contact", "list"]);
    let bob_entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "bob")
        .unwrap();
    assert_eq!(bob_entry["verified"], true);
    // A newer card of the same key keeps the verification.
    alice.ok(&[
        "contact",
        "add",
        ids[1]["card"].as_str().unwrap(),
        "--name",
        "bob",
    ]);
    assert_eq!(alice.ok(&["contact", "show", "bob"])["verified"], true);
    alice.ok(&["contact", "verify", "bob", "--undo"]);
    assert_eq!(alice.ok(&["contact", "show", "bob"])["verified"], false);

    // A group of three; everyone talks.
    // Made with Bob, then Carol added.
    alice.ok(&["group", "create", "three", "--member", "bob"]);
    alice.ok(&["group", "add", "three", "carol"]);
    for daemon in [bob, carol] {
        until("joined", || {
            daemon
                .ok(&["group", "list"])
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["name"] == "three")
        });
    }
    for (daemon, name) in daemons.iter().zip(names) {
        daemon.ok(&["send", "three", &format!("hi from {name}")]);
    }
    for daemon in &daemons {
        until("everyone reads everyone", || {
            texts(daemon, "three").len() == 3
        });
    }
    // Bob refreshes his keys; the group goes on.
    bob.ok(&["group", "update", "three"]);
    carol.ok(&["send", "three", "after bob's update"]);
    for daemon in &daemons {
        until("everyone reads the message after the update", || {
            texts(daemon, "three").contains(&"after bob's update".to_owned())
        });
    }

    // Bob's stream resumes from a raw `Last-Event-ID` header.
    let last = bob
        .ok(&["read", "three"])
        .as_array()
        .unwrap()
        .last()
        .unwrap()["cursor"]
        .as_u64()
        .unwrap();
    let (status, mut stream) = raw_stream(bob, &format!("Last-Event-ID: {last}\r\n"));
    assert_eq!(status, 200);

    // Alice removes Carol, then writes: Bob reads it, Carol never does.
    alice.ok(&["group", "remove", "three", "carol"]);
    until("bob sees carol removed", || {
        bob.ok(&["group", "show", "three"])["members"]
            .as_array()
            .unwrap()
            .len()
            == 2
    });
    alice.ok(&["send", "three", "after carol left"]);
    until("bob reads it", || {
        texts(bob, "three").contains(&"after carol left".to_owned())
    });
    assert!(
        next_sse_id(&mut stream) > last,
        "the stream went on after the cursor"
    );
    std::thread::sleep(Duration::from_secs(2));
    let carol_reads = carol.ok(&["read", "three"]);
    assert!(
        carol_reads
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["text"] != "after carol left"),
        "{carol_reads}"
    );
    // Bob leaves: a remaining member's node (Alice's) removes him.
    bob.ok(&["group", "leave", "three"]);
    until("alice sees bob gone", || {
        alice.ok(&["group", "show", "three"])["members"]
            .as_array()
            .unwrap()
            .len()
            == 1
    });
    let kinds: Vec<&str> = carol_reads
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "message").count(), 2);

    // Event streams are capped: with the cap's worth open (Bob's one above among them),
    // the next is refused as busy.
    let mut open = vec![stream];
    loop {
        let (status, stream) = raw_stream(alice, "");
        if status != 200 {
            assert_eq!(status, 503);
            break;
        }
        open.push(stream);
        assert!(open.len() <= 17, "no cap on event streams");
    }
    assert_eq!(open.len() - 1, 16, "Alice's cap");
    drop(open);

    // A profile whose address file points at another daemon (as a stale one left by a
    // crash might): the CLI checks the daemon's proof first, and stops before sending its
    // token.
    let other = tempfile::tempdir().unwrap();
    let profile = other.path().join("p");
    let init = dspring(&profile).args(["--json", "init"]).output().unwrap();
    assert!(init.status.success());
    let made: Value = serde_json::from_slice(&init.stdout).unwrap();
    assert_eq!(made["created"], true);
    assert_eq!(made["id"].as_str().unwrap().len(), 64);
    assert!(profile.join("config.toml").exists());
    std::fs::write(profile.join("api-address"), alice.address()).unwrap();
    let output = dspring(&profile).arg("status").output().unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("not this profile's daemon"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for daemon in daemons {
        daemon.stop();
    }
}

#[test]
fn a_detached_daemon_answers_after_the_command_returns_and_reads_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("p");
    let dspring = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_dspring"))
            .args(["--data-dir", profile.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    assert!(dspring(&["init"]).status.success());
    // A fixed API port from config.toml (found free first), no mDNS, loopback only.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        profile.join("config.toml"),
        format!(
            "[api]\nport = {port}\n[network]\nmdns = false\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\n"
        ),
    )
    .unwrap();
    let started = dspring(&["daemon", "--detach"]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let said = String::from_utf8(started.stdout).unwrap();
    let pid: u32 = said
        .split("pid ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(profile.join("api-address")).unwrap(),
        format!("127.0.0.1:{port}")
    );
    let status = dspring(&["--json", "status"]);
    assert!(status.status.success());
    // It leads a session of its own: no controlling terminal for a hangup to come from.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = stat.rsplit(") ").next().unwrap();
    let session: u32 = after_name.split(' ').nth(3).unwrap().parse().unwrap();
    assert_eq!(session, pid, "{stat}");
    // A second one is refused while the first runs.
    assert!(!dspring(&["daemon", "--detach"]).status.success());
    // It stops on SIGTERM and leaves no address behind.
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    until("the detached daemon stops", || {
        !profile.join("api-address").exists()
    });
    assert!(
        std::fs::read_to_string(profile.join("daemon.log"))
            .unwrap()
            .contains("daemon ready")
    );
}

/// A daemon that joins its contacts' groups only tells its user of a stranger's group as it
/// happens, on the event stream, with the command that joins it.
#[test]
fn a_strangers_group_is_announced_on_the_event_stream_and_joined_on_accept() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    std::fs::write(
        dirs[1].path().join("config.toml"),
        "[network]\njoin_from = \"contacts\"\n",
    )
    .unwrap();
    let stranger = Daemon::start(dirs[0].path());
    let picky = Daemon::start(dirs[1].path());
    let card = picky.ok(&["id"])["card"].as_str().unwrap().to_owned();
    stranger.ok(&["contact", "add", &card, "--name", "picky"]);
    // The picky user follows the events as a person reads them (not JSON).
    let mut follower = dspring(dirs[1].path())
        .arg("follow")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut follower);
    let group = stranger.ok(&["group", "create", "hello", "--member", "picky"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let line = lines
        .recv_timeout(WAIT)
        .expect("the invitation is announced");
    let _ = follower.kill();
    let _ = follower.wait();
    let stranger_id = stranger.ok(&["id"])["id"].as_str().unwrap().to_owned();
    assert!(
        line.contains(&format!("invited by {}", &stranger_id[..12]))
            && line.ends_with(&format!("`dspring invitation accept {group}`")),
        "{line}"
    );
    assert_eq!(picky.ok(&["group", "list"]), json!([]));
    picky.ok(&["invitation", "accept", &group]);
    stranger.ok(&["send", &group, "welcome"]);
    until("the picky node reads the stranger's group", || {
        texts(&picky, &group).contains(&"welcome".to_owned())
    });
    stranger.stop();
    picky.stop();
}

#[test]
fn a_daemon_joins_the_dht_through_a_bootstrap_node_and_status_waits_for_it() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let hub = Daemon::start(dirs[0].path());
    let id = hub.ok(&["id"]);
    let dial = id["dial"][0].as_str().unwrap().to_owned();
    assert!(dial.contains("/p2p/"), "{dial}");

    // An address that does not name its peer is refused before the daemon starts.
    let refused = dspring(dirs[1].path())
        .args(["daemon", "--no-mdns", "--bootstrap", "/ip4/127.0.0.1/tcp/1"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("/p2p/"));

    // No cards, no mDNS: the hub is all the second daemon knows. `status --wait` returns
    // once its first bootstrap has finished.
    let joiner = Daemon::start_with(dirs[1].path(), &["--bootstrap", &dial]);
    let status = joiner.ok(&["status", "--wait", "--timeout", "60"]);
    assert_eq!(status["bootstrapping"], false);
    assert!(status["dht_peers"].as_u64().unwrap() >= 1, "{status}");
    let human = dspring(dirs[1].path()).arg("status").output().unwrap();
    assert!(String::from_utf8_lossy(&human.stdout).contains("DHT peers:"));
    joiner.stop();
    hub.stop();
}

/// The mailbox through the CLI alone: a third daemon serves (`mailbox serve --on`); Alice and
/// Bob use it (`mailbox use`). Bob goes offline, Alice writes and goes offline too; Bob comes
/// back and reads her message, which only the mailbox can have kept. `follow away` shows one
/// group only.
#[test]
fn a_returning_member_reads_from_the_mailbox_after_the_writer_has_gone() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // The mailbox's operator turns serving on in its settings before starting the daemon.
    let settings = |args: &[&str]| {
        let output = dspring(dirs[0].path())
            .arg("--json")
            .args(["mailbox", "serve"])
            .args(args)
            .output()
            .unwrap();
        let value: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        (output.status.code(), value)
    };
    let (code, shown) = settings(&["--on", "--retention-days", "7"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        (shown["serve"].as_bool(), shown["retention_days"].as_u64()),
        (Some(true), Some(7))
    );
    let (code, _) = settings(&["--retention-days", "0"]);
    assert_eq!(code, Some(1), "a retention of 0 days is refused");
    let (_, shown) = settings(&[]);
    assert_eq!(
        (shown["serve"].as_bool(), shown["retention_days"].as_u64()),
        (Some(true), Some(7)),
        "and changes nothing"
    );
    let mailbox = Daemon::start(dirs[0].path());
    let alice = Daemon::start(dirs[1].path());
    let bob = Daemon::start(dirs[2].path());
    let card = |d: &Daemon| d.ok(&["id"])["card"].as_str().unwrap().to_owned();
    let (mailbox_card, alice_card, bob_card) = (card(&mailbox), card(&alice), card(&bob));
    mailbox.ok(&["contact", "add", &alice_card, "--name", "alice"]);
    mailbox.ok(&["contact", "add", &bob_card, "--name", "bob"]);
    alice.ok(&["contact", "add", &bob_card, "--name", "bob"]);
    bob.ok(&["contact", "add", &alice_card, "--name", "alice"]);
    for member in [&alice, &bob] {
        member.ok(&["contact", "add", &mailbox_card, "--name", "mailbox"]);
        member.ok(&["mailbox", "use", &mailbox_card]);
    }
    // A first group, so that `follow away` below has something to leave out.
    alice.ok(&["group", "create", "aside", "--member", "bob"]);
    alice.ok(&["send", "aside", "in the other group"]);
    until("bob reads the other group", || {
        bob.ok(&["group", "list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "aside")
            && texts(&bob, "aside").contains(&"in the other group".to_owned())
    });
    let away = alice.ok(&["group", "create", "away", "--member", "bob"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    until("bob joins", || {
        bob.ok(&["group", "list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "away")
    });
    until("the mailbox serves the group", || {
        mailbox.ok(&["status"])["mailbox_groups"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    });
    alice.ok(&["send", "away", "before you left"]);
    until("bob reads the first message", || {
        texts(&bob, "away").contains(&"before you left".to_owned())
    });
    // `follow away` from the start replays only that group, though "aside" came first.
    let mut follower = dspring(dirs[2].path())
        .args(["--json", "follow", "away"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut follower);
    loop {
        let event = next_event(&lines);
        assert_eq!(event["group"], away.as_str(), "{event}");
        if event["text"] == "before you left" {
            break;
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();

    bob.stop();
    alice.ok(&["send", "away", "while you were away"]);
    // Alice's own outbox empties once the network took the message; the mailbox, a
    // subscriber of the group's topic, keeps it. Give gossip a moment, then Alice leaves.
    until("alice's outbox is empty", || {
        alice.ok(&["status"])["outbox"].as_u64() == Some(0)
    });
    std::thread::sleep(Duration::from_secs(2));
    alice.stop();

    let bob = Daemon::start(dirs[2].path());
    bob.ok(&["status", "--wait", "--timeout", "60"]);
    until("bob reads what was written while he was away", || {
        texts(&bob, "away").contains(&"while you were away".to_owned())
    });
    let read = texts(&bob, "away");
    assert_eq!(
        read.iter().filter(|t| *t == "while you were away").count(),
        1,
        "exactly once: {read:?}"
    );
    bob.stop();
    mailbox.stop();
}
