//! The daemon's settings: `config.toml` in the data directory, written with every setting at
//! its default (and a comment saying what it does) the first time a profile is set up.
//! Command-line flags override the file.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The settings file in a profile's data directory.
pub const CONFIG_FILE: &str = "config.toml";
/// A config file larger than this is refused: ours is well under 2 KiB.
const MAX_CONFIG_BYTES: u64 = 64 << 10;
/// Longest idle-group delay and mailbox retention accepted (ten years): larger values are
/// typos, and would overflow the node's timers.
const MAX_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// Bootstrap addresses accepted: a handful of well-known nodes is what a DHT needs, and each
/// is dialled at every start.
pub const MAX_BOOTSTRAP: usize = 32;

/// Whether `address` is a libp2p address naming its peer, as a bootstrap node must be.
pub fn names_its_peer(address: &str) -> bool {
    address
        .parse::<dspring_node::Multiaddr>()
        .is_ok_and(|a| matches!(a.iter().last(), Some(dspring_node::Protocol::P2p(_))))
}

/// What `config.toml` holds when a profile is set up: every setting at its default.
pub const DEFAULT_CONFIG: &str = r#"# Digital Spring daemon settings. Flags given to `dspring daemon` override these.

[api]
# Port of the local API on 127.0.0.1. 0 picks a free port; the daemon writes the one it
# uses to `api-address` in this directory, where the CLI finds it.
port = 0

[network]
# libp2p addresses to listen on. Setting up a profile picks a free port once and writes it
# here (TCP and QUIC), so that the addresses on a card handed out yesterday still work after
# a restart. Port 0 picks a new port at each start (contacts then find you only through
# the DHT or members you share).
listen = ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"]
# Nodes to join the DHT through (it finds where your contacts are when their addresses
# change), each ending in /p2p/<peer id>: what `dspring id` prints as "dial" on a node
# others can reach. Without any, the node finds peers by mDNS and from contact cards.
bootstrap = []
# Relays to be reached through when others cannot dial you (behind NAT or a firewall), each
# ending in /p2p/<peer id>: nodes running with relay_server = true. Your relayed addresses
# go on your contact card.
relays = []
# Relay connections for nodes behind NAT that list this node in their `relays`. A relay
# serves only once it knows an address others reach it at: list it below.
relay_server = false
# Addresses others reach this node at, if you know them (a server's public IP and a fixed
# listen port), e.g. "/ip4/203.0.113.7/tcp/4001".
external_addresses = []
# Answer other nodes' reachability checks (`dspring status` shows "reachable") on private
# and LAN addresses too, not only on public ones: for a network that lives on one LAN.
probe_private_addresses = false
# Find other nodes on the local network with mDNS.
mdns = true
# A group with no message for this many seconds leaves its gossip topic and keeps no
# connections open; it wakes up when anyone in it sends.
idle_group_after_secs = 120
# Who can add you to a group: "anyone" who has your contact card (or finds you in the DHT),
# or "contacts" only. With "contacts", a welcome from anyone else is held as an invitation:
# `dspring invitation list`, then `accept` or `decline` (at most 32 are held, 3 per sender).
join_from = "anyone"

[mailbox]
# Serve as a mailbox for your contacts: keep the ciphertext of their groups (never the
# keys) and hand it to members who were offline.
serve = false
# How long a mailbox keeps what it holds, in days.
retention_days = 30
"#;

/// The settings, as read from the file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub api: ApiSettings,
    pub network: NetworkSettings,
    pub mailbox: MailboxSettings,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSettings {
    pub listen: Vec<String>,
    pub bootstrap: Vec<String>,
    pub relays: Vec<String>,
    pub relay_server: bool,
    pub external_addresses: Vec<String>,
    pub probe_private_addresses: bool,
    pub mdns: bool,
    pub idle_group_after_secs: u64,
    pub join_from: JoinFromSetting,
}

/// `network.join_from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinFromSetting {
    Anyone,
    Contacts,
}

impl From<JoinFromSetting> for dspring_node::JoinFrom {
    fn from(setting: JoinFromSetting) -> Self {
        match setting {
            JoinFromSetting::Anyone => dspring_node::JoinFrom::Anyone,
            JoinFromSetting::Contacts => dspring_node::JoinFrom::Contacts,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailboxSettings {
    pub serve: bool,
    pub retention_days: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api: ApiSettings { port: 0 },
            network: NetworkSettings {
                listen: vec![
                    "/ip4/0.0.0.0/tcp/0".to_owned(),
                    "/ip4/0.0.0.0/udp/0/quic-v1".to_owned(),
                ],
                bootstrap: Vec::new(),
                relays: Vec::new(),
                relay_server: false,
                external_addresses: Vec::new(),
                probe_private_addresses: false,
                mdns: true,
                idle_group_after_secs: dspring_node::DEFAULT_IDLE_GROUP_AFTER.as_secs(),
                join_from: JoinFromSetting::Anyone,
            },
            mailbox: MailboxSettings {
                serve: false,
                retention_days: dspring_node::DEFAULT_MAILBOX_RETENTION.as_secs() / 86_400,
            },
        }
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        Config::default().api
    }
}

impl Default for NetworkSettings {
    fn default() -> Self {
        Config::default().network
    }
}

impl Default for MailboxSettings {
    fn default() -> Self {
        Config::default().mailbox
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {error}")]
    Io {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: std::path::PathBuf },
    #[error("{path}: {message}")]
    Invalid {
        path: std::path::PathBuf,
        message: String,
    },
}

impl Config {
    /// The settings in `dir`'s config file; the defaults if there is none.
    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        let path = dir.join(CONFIG_FILE);
        let io = |error| ConfigError::Io {
            path: path.clone(),
            error,
        };
        let metadata = match std::fs::metadata(&path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default());
            }
            Err(error) => return Err(io(error)),
        };
        if metadata.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { path });
        }
        let text = std::fs::read_to_string(&path).map_err(io)?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid { path, message })
    }

    fn parse(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        if config.network.idle_group_after_secs == 0
            || config.network.idle_group_after_secs > MAX_SECONDS
        {
            return Err(format!(
                "network.idle_group_after_secs is between 1 and {MAX_SECONDS}"
            ));
        }
        if config.mailbox.retention_days == 0
            || config.mailbox.retention_days.saturating_mul(86_400) > MAX_SECONDS
        {
            return Err(format!(
                "mailbox.retention_days is between 1 and {}",
                MAX_SECONDS / 86_400
            ));
        }
        for (key, addresses) in [
            ("listen", &config.network.listen),
            ("external_addresses", &config.network.external_addresses),
        ] {
            for address in addresses {
                address
                    .parse::<dspring_node::Multiaddr>()
                    .map_err(|_| format!("network.{key}: not a libp2p address: {address:?}"))?;
            }
        }
        for (key, addresses, bound) in [
            ("bootstrap", &config.network.bootstrap, MAX_BOOTSTRAP),
            ("relays", &config.network.relays, dspring_node::MAX_RELAYS),
        ] {
            if addresses.len() > bound {
                return Err(format!("network.{key}: at most {bound} addresses"));
            }
            if let Some(address) = addresses.iter().find(|a| !names_its_peer(a)) {
                return Err(format!(
                    "network.{key}: not a libp2p address ending in /p2p/<peer id>: {address:?}"
                ));
            }
        }
        Ok(config)
    }

    /// Writes the default settings file into `dir` unless one is there, with a listen port
    /// picked now and kept from then on (see [`free_port`]).
    pub fn write_default(dir: &Path) -> Result<bool, ConfigError> {
        use std::io::Write;
        let path = dir.join(CONFIG_FILE);
        let text = match free_port() {
            Some(port) => with_listen_port(port),
            // Nothing free on both transports (a sandbox without sockets): port 0, as before.
            None => DEFAULT_CONFIG.to_owned(),
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => file
                .write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .map(|()| true)
                .map_err(|error| ConfigError::Io { path, error }),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(error) => Err(ConfigError::Io { path, error }),
        }
    }

    /// Sets the mailbox settings (`dspring mailbox serve`) in `dir`'s config file, keeping
    /// the rest of it, comments included; written whole or not at all (a temporary file
    /// renamed over it). The daemon reads them at its next start.
    pub fn set_mailbox(
        dir: &Path,
        serve: Option<bool>,
        retention_days: Option<u64>,
    ) -> Result<Self, ConfigError> {
        use std::io::Write;
        Self::write_default(dir)?;
        let path = dir.join(CONFIG_FILE);
        let io = |error| ConfigError::Io {
            path: path.clone(),
            error,
        };
        // Read through `load`'s checks (size bound, validity) first.
        Self::load(dir)?;
        let text = std::fs::read_to_string(&path).map_err(io)?;
        let invalid = |message| ConfigError::Invalid {
            path: path.clone(),
            message,
        };
        let edited = with_mailbox_settings(&text, serve, retention_days).map_err(invalid)?;
        let config = Self::parse(&edited).map_err(invalid)?;
        let temporary = dir.join(format!("{CONFIG_FILE}.new"));
        let mut file = std::fs::File::create(&temporary).map_err(io)?;
        file.write_all(edited.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io)?;
        std::fs::rename(&temporary, &path).map_err(io)?;
        Ok(config)
    }

    pub fn idle_group_after(&self) -> Duration {
        Duration::from_secs(self.network.idle_group_after_secs)
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.mailbox.retention_days * 86_400)
    }
}

/// Tries to find a port free for TCP and UDP alike: the kernel's pick for TCP, kept if UDP
/// can bind it too.
const PORT_ATTEMPTS: usize = 16;

/// A port free now on every interface for both TCP and UDP (QUIC), so that the node's two
/// listen addresses share one number: the kernel picks a TCP port, and it is kept if UDP can
/// bind the same one. `None` after [`PORT_ATTEMPTS`] tries.
pub fn free_port() -> Option<u16> {
    use std::net::{Ipv4Addr, TcpListener, UdpSocket};
    (0..PORT_ATTEMPTS).find_map(|_| {
        let tcp = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
        let port = tcp.local_addr().ok()?.port();
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
            .ok()
            .map(|_| port)
    })
}

/// The default settings file with `port` in its listen addresses.
fn with_listen_port(port: u16) -> String {
    DEFAULT_CONFIG.replace(
        r#"listen = ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"]"#,
        &format!(r#"listen = ["/ip4/0.0.0.0/tcp/{port}", "/ip4/0.0.0.0/udp/{port}/quic-v1"]"#),
    )
}

/// `text` (a settings file) with `serve` and `retention_days` under `[mailbox]` set to these
/// values where given; every other line, comments included, stays as it was.
fn with_mailbox_settings(
    text: &str,
    serve: Option<bool>,
    retention_days: Option<u64>,
) -> Result<String, String> {
    let mut document: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    let section = document
        .entry("mailbox")
        .or_insert_with(toml_edit::table)
        .as_table_like_mut()
        .ok_or("[mailbox] is not a section")?;
    if let Some(serve) = serve {
        set_keeping_comments(section, "serve", serve.into());
    }
    if let Some(days) = retention_days {
        let days = i64::try_from(days).map_err(|_| "retention_days is too large")?;
        set_keeping_comments(section, "retention_days", days.into());
    }
    Ok(document.to_string())
}

/// Sets `key` in `section`; an existing key keeps the comments above it and after its value
/// (replacing the whole entry would drop them).
fn set_keeping_comments(
    section: &mut dyn toml_edit::TableLike,
    key: &str,
    value: toml_edit::Value,
) {
    let mut value = value;
    match section.get_mut(key) {
        Some(item) => {
            if let Some(old) = item.as_value() {
                *value.decor_mut() = old.decor().clone();
            }
            *item = toml_edit::Item::Value(value);
        }
        None => {
            section.insert(key, toml_edit::Item::Value(value));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_written_defaults_are_the_defaults() {
        assert_eq!(Config::parse(DEFAULT_CONFIG).unwrap(), Config::default());
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn settings_are_read_and_bad_ones_are_clear_errors() {
        let config = Config::parse("[api]\nport = 7070\n[mailbox]\nserve = true\n").unwrap();
        assert_eq!(config.api.port, 7070);
        let picky = Config::parse("[network]\njoin_from = \"contacts\"\n").unwrap();
        assert_eq!(picky.network.join_from, JoinFromSetting::Contacts);
        let peer = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
        let hub = format!("[network]\nbootstrap = [\"/ip4/10.0.0.1/tcp/4001/p2p/{peer}\"]\n");
        assert_eq!(Config::parse(&hub).unwrap().network.bootstrap.len(), 1);
        let relayed = format!(
            "[network]\nrelays = [\"/ip4/10.0.0.1/tcp/4001/p2p/{peer}\"]\n\
             external_addresses = [\"/ip4/203.0.113.7/tcp/4001\"]\nrelay_server = true\n\
             probe_private_addresses = true\n"
        );
        let relayed = Config::parse(&relayed).unwrap().network;
        assert!(relayed.probe_private_addresses);
        assert_eq!(relayed.relays.len(), 1);
        assert_eq!(relayed.external_addresses.len(), 1);
        assert!(relayed.relay_server);
        let too_many = format!(
            "[network]\nrelays = [{}]\n",
            vec![format!("\"/ip4/10.0.0.1/tcp/4001/p2p/{peer}\""); dspring_node::MAX_RELAYS + 1]
                .join(", ")
        );
        assert!(Config::parse(&too_many).unwrap_err().contains("at most"));
        let external = Config::parse("[network]\nexternal_addresses = [\"203.0.113.7\"]\n");
        assert!(external.unwrap_err().contains("network.external_addresses"));
        assert!(config.mailbox.serve);
        assert_eq!(config.network, NetworkSettings::default());
        for bad in [
            "[api]\nprot = 1\n",
            "[api]\nport = 70000\n",
            "[network]\nlisten = [\"nonsense\"]\n",
            "[network]\nbootstrap = [\"/ip4/127.0.0.1/tcp/1\"]\n",
            "[network]\nrelays = [\"/ip4/127.0.0.1/tcp/1\"]\n",
            "[network]\nidle_group_after_secs = 0\n",
            "[network]\njoin_from = \"friends\"\n",
            "[mailbox]\nretention_days = 99999999999\n",
            "not toml",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_new_profile_keeps_one_free_port_for_tcp_and_quic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Config::write_default(dir.path()).unwrap());
        let listen = Config::load(dir.path()).unwrap().network.listen;
        assert_eq!(listen.len(), 2, "{listen:?}");
        let port = listen[0]
            .strip_prefix("/ip4/0.0.0.0/tcp/")
            .unwrap()
            .parse::<u16>()
            .unwrap();
        assert_ne!(port, 0, "a port picked once, not at each start");
        assert_eq!(listen[1], format!("/ip4/0.0.0.0/udp/{port}/quic-v1"));
        // The rest is the defaults, and loading again gives the same port.
        let mut config = Config::load(dir.path()).unwrap();
        assert_eq!(config.network.listen, listen);
        config.network.listen = Config::default().network.listen;
        assert_eq!(config, Config::default());
        assert!(with_listen_port(4001).contains("/udp/4001/quic-v1"));
    }

    #[test]
    fn a_missing_file_is_the_defaults_and_an_existing_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Config::load(dir.path()).unwrap(), Config::default());
        assert!(Config::write_default(dir.path()).unwrap());
        std::fs::write(dir.path().join(CONFIG_FILE), "[api]\nport = 9\n").unwrap();
        assert!(!Config::write_default(dir.path()).unwrap());
        assert_eq!(Config::load(dir.path()).unwrap().api.port, 9);
    }

    #[test]
    fn mailbox_settings_are_set_in_place_and_the_comments_stay() {
        let on = with_mailbox_settings(DEFAULT_CONFIG, Some(true), Some(7)).unwrap();
        let config = Config::parse(&on).unwrap();
        assert!(config.mailbox.serve);
        assert_eq!(config.mailbox.retention_days, 7);
        assert_eq!(config.network, Config::default().network);
        assert_eq!(on.lines().count(), DEFAULT_CONFIG.lines().count(), "{on}");
        assert!(on.contains("# How long a mailbox keeps what it holds, in days."));
        // Only what was given changes.
        let off = with_mailbox_settings(&on, Some(false), None).unwrap();
        let config = Config::parse(&off).unwrap();
        assert!(!config.mailbox.serve);
        assert_eq!(config.mailbox.retention_days, 7);
        // A file without the section, or without the key, gets them.
        let added = with_mailbox_settings("[api]\nport = 7\n", Some(true), None).unwrap();
        let config = Config::parse(&added).unwrap();
        assert!(config.mailbox.serve);
        assert_eq!(config.api.port, 7);
        let key_added = with_mailbox_settings(
            "[mailbox]\nserve = true\n\n[api]\nport = 7\n",
            None,
            Some(3),
        )
        .unwrap();
        let config = Config::parse(&key_added).unwrap();
        assert_eq!(
            (config.mailbox.serve, config.mailbox.retention_days),
            (true, 3)
        );
        // A comment that names the key is left alone.
        let other =
            with_mailbox_settings("[mailbox]\n# serve_later = 1\n", Some(true), None).unwrap();
        assert!(Config::parse(&other).unwrap().mailbox.serve);
        assert!(other.contains("# serve_later = 1"));
        // A header with a comment of its own is the same section.
        let commented =
            with_mailbox_settings("[mailbox] # ours\nserve = false # was\n", Some(true), None)
                .unwrap();
        assert_eq!(commented, "[mailbox] # ours\nserve = true # was\n");
        // A key that is not a section is an error, not a second [mailbox].
        assert!(with_mailbox_settings("mailbox = 1\n", Some(true), None).is_err());
    }
}
