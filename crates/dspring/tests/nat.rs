//! Two daemons, each behind its own NAT, reach each other through a relay and then directly by
//! hole punching; once the relay is killed they still talk, which no other path allows.
//!
//! The network is built of Linux network namespaces: a relay on an "internet" bridge
//! (198.18.0.0/24, the range set aside for tests), and two hosts on their own LANs behind
//! routers that masquerade and, as home routers do, drop every unsolicited packet from the
//! outside. Needs root, `ip` and `nft`; where they are missing the test says so and passes,
//! unless `DSPRING_REQUIRE_NAT_TEST` is set (`.ci/run` installs them and sets it).

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const REQUIRE: &str = "DSPRING_REQUIRE_NAT_TEST";
const WAIT: Duration = Duration::from_secs(60);
/// The first reservation at the relay must come well before the node's retry
/// (`RELAY_RETRY`, 30 s): the relay is also the bootstrap node, whose dial once made the
/// first reservation fail.
const FIRST_RESERVATION: Duration = Duration::from_secs(20);
const RELAY_IP: &str = "198.18.0.1";
const RELAY_PORT: u16 = 4001;

/// The namespaces and their links; dropping it deletes them (and so every link in them).
struct Lab {
    prefix: String,
}

impl Lab {
    /// Builds the network, or says which command failed.
    fn up() -> Result<Self, String> {
        // Interface names are at most 15 bytes: `dn12345-wbb` is 11.
        let prefix = format!("dn{:05}", std::process::id() % 100_000);
        let lab = Self { prefix };
        let p = &lab.prefix;
        let inet = lab.ns("inet");
        let relay = lab.ns("relay");
        run(&["ip", "netns", "add", &inet], None)?;
        lab.ip("inet", &["link", "add", "br0", "type", "bridge"])?;
        lab.ip("inet", &["link", "set", "br0", "up"])?;
        run(&["ip", "netns", "add", &relay], None)?;
        lab.cable(("relay", &format!("{p}-rl")), ("inet", &format!("{p}-rlb")))?;
        lab.ip(
            "inet",
            &["link", "set", &format!("{p}-rlb"), "master", "br0"],
        )?;
        lab.ip(
            "relay",
            &[
                "addr",
                "add",
                &format!("{RELAY_IP}/24"),
                "dev",
                &format!("{p}-rl"),
            ],
        )?;
        for (host, subnet, wan) in [("a", 2, "198.18.0.2"), ("b", 3, "198.18.0.3")] {
            let router = format!("r{host}");
            let inside = format!("h{host}");
            let wan_link = format!("{p}-w{host}");
            let lan_link = format!("{p}-l{host}");
            run(&["ip", "netns", "add", &lab.ns(&router)], None)?;
            run(&["ip", "netns", "add", &lab.ns(&inside)], None)?;
            lab.cable((&router, &wan_link), ("inet", &format!("{p}-wb{host}")))?;
            lab.ip(
                "inet",
                &["link", "set", &format!("{p}-wb{host}"), "master", "br0"],
            )?;
            lab.ip(
                &router,
                &["addr", "add", &format!("{wan}/24"), "dev", &wan_link],
            )?;
            lab.cable((&router, &lan_link), (&inside, &format!("{p}-h{host}")))?;
            lab.ip(
                &router,
                &[
                    "addr",
                    "add",
                    &format!("192.168.{subnet}.1/24"),
                    "dev",
                    &lan_link,
                ],
            )?;
            lab.ip(
                &inside,
                &[
                    "addr",
                    "add",
                    &format!("192.168.{subnet}.2/24"),
                    "dev",
                    &format!("{p}-h{host}"),
                ],
            )?;
            lab.ip(
                &inside,
                &[
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("192.168.{subnet}.1"),
                ],
            )?;
            run(
                &[
                    "ip",
                    "netns",
                    "exec",
                    &lab.ns(&router),
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv4.ip_forward=1",
                ],
                None,
            )?;
            // Masquerading out of the WAN side; from outside only what answers our own
            // traffic passes, to the LAN or to the router itself.
            let rules = format!(
                "table ip nat {{\n\
                   chain postrouting {{\n\
                     type nat hook postrouting priority srcnat;\n\
                     oifname \"{wan_link}\" masquerade\n\
                   }}\n\
                 }}\n\
                 table ip filter {{\n\
                   chain forward {{\n\
                     type filter hook forward priority 0; policy drop;\n\
                     ct state established,related accept\n\
                     iifname \"{lan_link}\" accept\n\
                   }}\n\
                   chain input {{\n\
                     type filter hook input priority 0; policy accept;\n\
                     iifname \"{wan_link}\" ct state established,related accept\n\
                     iifname \"{wan_link}\" drop\n\
                   }}\n\
                 }}\n"
            );
            run(
                &["ip", "netns", "exec", &lab.ns(&router), "nft", "-f", "-"],
                Some(&rules),
            )?;
        }
        Ok(lab)
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// `ip <args>` inside namespace `ns`.
    fn ip(&self, ns: &str, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["ip", "-n"];
        let ns = self.ns(ns);
        all.push(&ns);
        all.extend_from_slice(args);
        run(&all, None)
    }

    /// A veth pair from one namespace to another, both ends up (and each namespace's
    /// loopback).
    fn cable(&self, (ns_a, a): (&str, &str), (ns_b, b): (&str, &str)) -> Result<(), String> {
        run(
            &[
                "ip",
                "link",
                "add",
                a,
                "netns",
                &self.ns(ns_a),
                "type",
                "veth",
                "peer",
                "name",
                b,
                "netns",
                &self.ns(ns_b),
            ],
            None,
        )?;
        for (ns, link) in [(ns_a, a), (ns_b, b)] {
            self.ip(ns, &["link", "set", link, "up"])?;
            self.ip(ns, &["link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// `dspring --data-dir <dir> <args>` inside namespace `ns`.
    fn dspring(&self, ns: &str, dir: &Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.ns(ns), env!("CARGO_BIN_EXE_dspring")])
            .args(["--data-dir", dir.to_str().unwrap()]);
        command
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in ["ha", "hb", "ra", "rb", "relay", "inet"] {
            // A namespace that `up` never made is not an error here.
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(ns)])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs a command to success, or says what it printed.
fn run(args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A daemon in a namespace; killed on drop. Its log is `daemon.log` in its directory.
struct Daemon<'a> {
    lab: &'a Lab,
    ns: &'static str,
    process: common::Daemon,
}

impl<'a> Daemon<'a> {
    fn start(lab: &'a Lab, ns: &'static str, dir: &Path) -> Self {
        let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
        let mut daemon = lab.dspring(ns, dir);
        daemon
            .args(["daemon", "--no-mdns"])
            .env("RUST_LOG", "info")
            .stderr(log);
        Self {
            lab,
            ns,
            process: common::Daemon::spawn(daemon, dir),
        }
    }

    /// `dspring --json <args>`, which must succeed; its result.
    fn ok(&self, args: &[&str]) -> Value {
        let output = self
            .lab
            .dspring(self.ns, &self.process.dir)
            .arg("--json")
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "dspring {args:?} in {}: {}",
            self.ns,
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    fn dial(&self) -> Vec<String> {
        self.ok(&["id"])["dial"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    }

    fn texts(&self, group: &str) -> Vec<String> {
        self.ok(&["read", group, "--limit", "100"])
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["text"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.process.dir.join("daemon.log")).unwrap_or_default()
    }
}

/// Prints the daemons' logs when the test fails, for CI's output.
struct LogsOnFailure(Vec<PathBuf>);

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for path in &self.0 {
                let log = std::fs::read_to_string(path).unwrap_or_default();
                eprintln!("----- {}\n{log}", path.display());
            }
        }
    }
}

fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Sets `key = value` lines of a fresh `config.toml`.
fn configure(dir: &Path, settings: &[(&str, String)]) {
    let path = dir.join("config.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (key, value) in settings {
        let line = text
            .lines()
            .find(|line| line.starts_with(&format!("{key} =")))
            .unwrap_or_else(|| panic!("no {key} in config.toml"))
            .to_owned();
        text = text.replace(&line, &format!("{key} = {value}"));
    }
    std::fs::write(path, text).unwrap();
}

/// Whether a TCP connection from namespace `ns` to `address` opens within 3 s.
fn tcp_opens(lab: &Lab, ns: &str, address: &str) -> bool {
    let (ip, port) = address.split_once(':').unwrap();
    Command::new("ip")
        .args(["netns", "exec", &lab.ns(ns), "timeout", "3", "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/{ip}/{port}"))
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn two_nodes_behind_nat_punch_a_hole_and_talk_without_the_relay() {
    let lab = match Lab::up() {
        Ok(lab) => lab,
        Err(why) if std::env::var_os(REQUIRE).is_none() => {
            eprintln!("skipped: no network namespaces here ({why}); {REQUIRE}=1 makes it fail");
            return;
        }
        Err(why) => panic!("the NAT lab could not be built: {why}"),
    };
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    for dir in &dirs {
        common::init(dir.path());
    }
    let relay_listen = [
        format!("/ip4/{RELAY_IP}/tcp/{RELAY_PORT}"),
        format!("/ip4/{RELAY_IP}/udp/{RELAY_PORT}/quic-v1"),
    ];
    let listed = format!("[\"{}\", \"{}\"]", relay_listen[0], relay_listen[1]);
    configure(
        dirs[0].path(),
        &[
            ("listen", listed.clone()),
            ("relay_server", "true".into()),
            ("external_addresses", listed),
            // 198.18.0.0/15 is not a global range: every node here answers reachability
            // probes anyway.
            ("probe_private_addresses", "true".into()),
        ],
    );
    let relay = Daemon::start(&lab, "relay", dirs[0].path());
    let relay_quic = relay
        .dial()
        .into_iter()
        .find(|a| a.contains("/quic-v1/"))
        .unwrap();
    for dir in &dirs[1..] {
        // The daemons' default listen addresses (TCP and QUIC on every interface); the relay
        // is their relay and their way into the DHT, as it would be for a user.
        configure(
            dir.path(),
            &[
                ("relays", format!("[\"{relay_quic}\"]")),
                ("bootstrap", format!("[\"{relay_quic}\"]")),
                ("probe_private_addresses", "true".into()),
            ],
        );
    }
    let a = Daemon::start(&lab, "ha", dirs[1].path());
    let b = Daemon::start(&lab, "hb", dirs[2].path());
    let _logs = LogsOnFailure(dirs.iter().map(|d| d.path().join("daemon.log")).collect());

    // The NATs work: the relay is reachable from A's LAN, B's listening port (at its router's
    // public address) is not.
    let b_tcp_port = b
        .dial()
        .iter()
        .find_map(|a| {
            a.strip_prefix("/ip4/192.168.3.2/tcp/")?
                .split('/')
                .next()
                .map(str::to_owned)
        })
        .unwrap();
    assert!(tcp_opens(&lab, "ha", &format!("{RELAY_IP}:{RELAY_PORT}")));
    assert!(!tcp_opens(&lab, "ha", &format!("198.18.0.3:{b_tcp_port}")));

    until(
        "B holds a reservation at the relay",
        FIRST_RESERVATION,
        || b.dial().iter().any(|a| a.contains("/p2p-circuit")),
    );

    // A adds B from B's card (B's only dialable address on it goes through the relay).
    let card = b.ok(&["id"])["card"].as_str().unwrap().to_owned();
    a.ok(&["contact", "add", "--name", "b", &card]);
    let group = a.ok(&["group", "create", "behind two NATs", "--member", "b"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    until("B joins the group", WAIT, || {
        b.ok(&["group", "list"]).to_string().contains(&group)
    });
    a.ok(&["send", &group, "first, while the relay is up"]);
    until("B reads A's first message", WAIT, || {
        b.texts(&group)
            .contains(&"first, while the relay is up".to_owned())
    });

    // Hole punching replaced the relayed connection: after the overlap neither side keeps
    // one, and both still have a connection besides the relay's.
    for node in [&a, &b] {
        until("no connection through the relay", WAIT, || {
            let status = node.ok(&["status"]);
            status["relayed_connections"] == 0 && status["connections"].as_u64() >= Some(2)
        });
    }

    // Peers' dial-backs (AutoNAT) could not reach B through its NAT.
    until("B is found unreachable", WAIT, || {
        b.ok(&["status"])["reachability"] == "private"
    });

    // The relay dies. Neither NAT lets the other side dial in, so only the punched
    // connection can carry what follows.
    drop(relay);
    a.ok(&["send", &group, "after the relay is gone"]);
    b.ok(&["send", &group, "B answers directly"]);
    until("B reads A's message without the relay", WAIT, || {
        b.texts(&group)
            .contains(&"after the relay is gone".to_owned())
    });
    until("A reads B's answer without the relay", WAIT, || {
        a.texts(&group).contains(&"B answers directly".to_owned())
    });
    assert!(
        a.log().contains("hole punched") || b.log().contains("hole punched"),
        "a node logs the punch:\n{}\n{}",
        a.log(),
        b.log()
    );
}
