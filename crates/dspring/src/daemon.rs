//! `dspring daemon`: a node and its local API (JSON over HTTP on loopback, bearer token,
//! Server-Sent Events), until SIGINT or SIGTERM.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dspring_node::GroupId;
use dspring_node::{Node, NodeConfig, Notice};
use futures::{Stream, StreamExt};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::api::{self, ApiError};
use crate::config::Config;
use crate::home::Home;

/// Most API connections open at once. A local client needs a few (a CLI call, a follower or
/// two); the cap keeps a runaway or hostile local program from using up the daemon's file
/// descriptors and memory. Connections over it wait in the kernel's accept queue.
pub const MAX_API_CONNECTIONS: usize = 64;
/// Most event streams open at once; each reads ahead up to `EVENT_STREAM_PAGE` events.
pub const MAX_EVENT_STREAMS: usize = 16;
/// A client sends its request headers within this time of connecting (or of its previous
/// request), or the connection is closed: a connection that sends nothing holds no slot.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's body arrives within this time of its headers, or the request is refused: a
/// client that trickles a body would otherwise hold one of the connection slots for good.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for requests in progress to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Largest request body: a message at its bound, JSON-escaped (a control character takes six
/// bytes), with room for the rest.
pub const MAX_REQUEST_BYTES: usize = 6 * dspring_node::MAX_MESSAGE_BYTES + 4096;

#[derive(Clone)]
struct App {
    node: Node,
    token: Arc<String>,
    /// Flips to true at shutdown: open event streams end, or the graceful shutdown, which
    /// waits for every connection, would wait for them forever.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// One permit per open event stream ([`MAX_EVENT_STREAMS`]).
    streams: Arc<Semaphore>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Home(#[from] crate::home::HomeError),
    #[error("starting the node: {0}")]
    Node(#[from] dspring_node::NodeError),
    #[error("the API socket: {0}")]
    Listen(std::io::Error),
    #[error("a daemon is running for {0}: its identity is already set up (`dspring id`)")]
    Running(std::path::PathBuf),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("not a libp2p address: {0:?}")]
    BadAddress(String),
    #[error("not a libp2p address ending in /p2p/<peer id>: {0:?}")]
    BadBootstrap(String),
}

/// What the command line says; each given flag overrides `config.toml`.
#[derive(Debug, Default)]
pub struct Options {
    /// The API's port on 127.0.0.1; 0 picks a free one.
    pub api_port: Option<u16>,
    /// Serve as a mailbox (whatever the file says).
    pub mailbox: bool,
    /// No mDNS (whatever the file says).
    pub no_mdns: bool,
    /// libp2p listen addresses; empty keeps the file's.
    pub listen: Vec<String>,
    /// DHT bootstrap addresses, added to the file's.
    pub bootstrap: Vec<String>,
}

/// libp2p addresses from their text.
fn addresses(texts: &[String]) -> Result<Vec<dspring_node::Multiaddr>, DaemonError> {
    texts
        .iter()
        .map(|a| a.parse().map_err(|_| DaemonError::BadAddress(a.clone())))
        .collect()
}

/// The node's configuration from the settings file and the flags.
fn node_config(home: &Home, config: &Config, options: &Options) -> Result<NodeConfig, DaemonError> {
    let mut node = NodeConfig::new(home.node_dir());
    let listen = if options.listen.is_empty() {
        &config.network.listen
    } else {
        &options.listen
    };
    node.listen = addresses(listen)?;
    node.bootstrap = config
        .network
        .bootstrap
        .iter()
        .chain(&options.bootstrap)
        .map(|a| {
            if !crate::config::names_its_peer(a) {
                return Err(DaemonError::BadBootstrap(a.clone()));
            }
            a.parse().map_err(|_| DaemonError::BadBootstrap(a.clone()))
        })
        .collect::<Result<_, _>>()?;
    node.relays = addresses(&config.network.relays)?;
    node.relay_server = config.network.relay_server;
    node.probe_private_addresses = config.network.probe_private_addresses;
    node.external_addresses = addresses(&config.network.external_addresses)?;
    node.mdns = config.network.mdns && !options.no_mdns;
    node.idle_group_after = config.idle_group_after();
    node.join_from = config.network.join_from.into();
    if options.mailbox || config.mailbox.serve {
        node.mailbox = Some(dspring_node::MailboxConfig {
            retention: config.retention(),
        });
    }
    Ok(node)
}

/// Sets up a profile (directory, token, settings file) if it is new.
pub fn prepare(home: &Home) -> Result<(), DaemonError> {
    home.create()?;
    home.token_or_create()?;
    Config::write_default(home.dir())?;
    Ok(())
}

/// `dspring init`: sets up the profile and creates its identity (the node's keys), without
/// going on the network. Run again, it shows the identity it made.
pub async fn init(home: &Home) -> Result<serde_json::Value, DaemonError> {
    // A daemon that proves it holds this profile's token is running; an address file alone
    // may be left from a crash.
    if crate::client::Client::connect(home).await.is_ok() {
        return Err(DaemonError::Running(home.dir().to_owned()));
    }
    prepare(home)?;
    let created = !home.node_dir().exists();
    let mut config = NodeConfig::new(home.node_dir());
    config.listen = Vec::new();
    config.mdns = false;
    let node = Node::start(config).await?;
    let card = node.contact().await;
    let id = api::member_hex(&node.id());
    node.stop().await?;
    Ok(serde_json::json!({
        "id": id,
        "card": card?.to_text(),
        "data_dir": home.dir().display().to_string(),
        "created": created,
    }))
}

/// Runs the daemon in the foreground until SIGINT or SIGTERM.
pub async fn run(home: &Home, options: Options) -> Result<(), DaemonError> {
    prepare(home)?;
    let settings = Config::load(home.dir())?;
    let config = node_config(home, &settings, &options)?;
    let token = home.token()?;
    let api_port = options.api_port.unwrap_or(settings.api.port);
    let node = Node::start(config).await?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, api_port)))
        .await
        .map_err(DaemonError::Listen)?;
    let address = listener.local_addr().map_err(DaemonError::Listen)?;
    home.write_address(address)?;
    tracing::info!(%address, data = %home.dir().display(), id = %api::member_hex(&node.id()), "daemon ready");
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let app = App {
        node: node.clone(),
        token: Arc::new(token),
        stopping: stopping.clone(),
        streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let served = serve(listener, router(app), stopping).await;
    home.remove_address();
    let stopped = node.stop().await;
    served.map_err(DaemonError::Listen)?;
    stopped?;
    tracing::info!("daemon stopped");
    Ok(())
}

/// Serves HTTP/1 on `listener` until `stopping` turns true: at most [`MAX_API_CONNECTIONS`]
/// at once, each closed if its headers do not arrive within [`HEADER_READ_TIMEOUT`]; then
/// waits up to [`SHUTDOWN_GRACE`] for requests in progress.
async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_API_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let stopped = stopping.wait_for(|stop| *stop);
        let accepted = tokio::select! {
            _ = stopped => break,
            accepted = async {
                let slot = Arc::clone(&slots).acquire_owned().await;
                (slot, listener.accept().await)
            } => accepted,
        };
        let (Ok(slot), accepted) = accepted else {
            break;
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // Out of file descriptors and the like: wait a little rather than spin.
            Err(error) => {
                tracing::warn!(%error, "accepting an API connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "API connection");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("API requests still running at shutdown were cut off");
    }
    Ok(())
}

fn router(app: App) -> Router {
    Router::new()
        // The stream and the `events` method (one page) share a path: a fixed route would
        // otherwise take POST away from `/v1/{method}`.
        .route("/v1/events", get(events).post(events_page))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/proof", get(prove))
        .route("/v1/{method}", post(method))
        .fallback(|| async { error_response(ApiError::new(404, "not_found", "no such endpoint")) })
        .method_not_allowed_fallback(|| async {
            error_response(ApiError::new(
                405,
                "method_not_allowed",
                "methods are POST /v1/<method>; the event stream is GET /v1/events",
            ))
        })
        .with_state(app)
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

fn error_response(error: ApiError) -> Response {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(error)).into_response()
}

fn authorize(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(401, "unauthorized", "an `Authorization: Bearer <token>` header is needed (the token is in the data directory)")
        })?;
    if bool::from(given.as_bytes().ct_eq(app.token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(401, "unauthorized", "wrong token"))
    }
}

async fn method(
    State(app): State<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    respond(method_inner(&app, &name, &headers, body).await)
}

async fn events_page(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    respond(method_inner(&app, "events", &headers, body).await)
}

fn respond(result: Result<serde_json::Value, ApiError>) -> Response {
    match result {
        Ok(value) => axum::Json(value).into_response(),
        Err(error) => error_response(error),
    }
}

async fn method_inner(
    app: &App,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<serde_json::Value, ApiError> {
    authorize(app, headers)?;
    let bytes = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        axum::body::to_bytes(body, MAX_REQUEST_BYTES),
    )
    .await
    .map_err(|_| {
        ApiError::new(
            408,
            "timeout",
            format!(
                "the request body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        )
    })?
    .map_err(|_| {
        ApiError::new(
            413,
            "too_large",
            format!("a request body is at most {MAX_REQUEST_BYTES} bytes"),
        )
    })?;
    let params = if bytes.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new(400, "bad_json", format!("the body is not JSON: {e}")))?
    };
    api::call(&app.node, name, params).await
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<u64>,
    /// Only this group's events (a name or an id).
    group: Option<String>,
}

/// The event stream: stored events after the cursor (`Last-Event-ID`, else `?after=`, else
/// the beginning), then live ones; each SSE event's id is its cursor, so a client that
/// reconnects with `Last-Event-ID` misses nothing and sees nothing twice. `?group=` (a name
/// or an id) keeps one group's events; the ids stay the node's cursors.
async fn events(
    State(app): State<App>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(error) = authorize(&app, &headers) {
        return error_response(error);
    }
    let Ok(Query(query)) = query else {
        return error_response(ApiError::new(
            400,
            "invalid_params",
            "`after` is an event cursor (a number)",
        ));
    };
    let from_header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::parse::<u64>);
    let after = match from_header {
        Some(Ok(cursor)) => cursor,
        Some(Err(_)) => {
            return error_response(ApiError::new(
                400,
                "invalid_params",
                "Last-Event-ID is an event cursor (a number)",
            ));
        }
        None => query.after.unwrap_or(0),
    };
    let only = match &query.group {
        Some(reference) => match api::resolve_group(&app.node, reference).await {
            Ok(group) => Some(group),
            Err(error) => return error_response(error),
        },
        None => None,
    };
    let Ok(slot) = Arc::clone(&app.streams).try_acquire_owned() else {
        return error_response(ApiError::new(
            503,
            "busy",
            format!("at most {MAX_EVENT_STREAMS} event streams at once"),
        ));
    };
    let mut stopping = app.stopping.clone();
    let stopped = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    // The slot is held as long as the stream lives.
    let stream = event_stream(&app.node, after, only).map(move |event| {
        let _held = &slot;
        event
    });
    Sse::new(stream.take_until(stopped))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Stored events (SSE event `event`, id: the cursor) and, between them as they happen,
/// notices (SSE event `notice`, no id: they are not kept, so Last-Event-ID resumes the
/// events only). With a group, only that group's events and delivery notices, and every
/// reach notice (members are the node's, not a group's).
fn event_stream(
    node: &Node,
    after: u64,
    only: Option<GroupId>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + use<> {
    let events = node
        .events(after)
        .filter(move |stored| std::future::ready(only.is_none_or(|group| stored.group == group)))
        .map(|stored| {
            let event = api::api_event(&stored);
            let data = serde_json::to_string(&event).unwrap_or_default();
            Ok(SseEvent::default()
                .id(stored.cursor.to_string())
                .event("event")
                .data(data))
        });
    let notices = node
        .notices()
        .filter(move |notice| {
            let shown = match notice {
                Notice::Delivery { group, .. } => only.is_none_or(|only| only == *group),
                _ => true,
            };
            std::future::ready(shown)
        })
        .filter_map(|notice| std::future::ready(api::api_notice(&notice)))
        .map(|notice| {
            let data = serde_json::to_string(&notice).unwrap_or_default();
            Ok(SseEvent::default().event("notice").data(data))
        });
    // The events end when the node stops; so do the notices.
    futures::stream::select(events, notices)
}

#[derive(Deserialize)]
struct ProofQuery {
    challenge: String,
}

/// Proves this daemon holds the profile's token, for a client's fresh challenge (32 bytes in
/// hex), without revealing the token; asked before the token is sent.
async fn prove(
    State(app): State<App>,
    query: Result<Query<ProofQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let challenge = query
        .ok()
        .and_then(|Query(q)| hex::decode(q.challenge).ok())
        .filter(|c| c.len() == 32);
    match challenge {
        Some(challenge) => {
            axum::Json(serde_json::json!({ "proof": api::proof(&app.token, &challenge) }))
                .into_response()
        }
        None => error_response(ApiError::new(
            400,
            "invalid_params",
            "`challenge` is 32 bytes in hex",
        )),
    }
}

/// The API's description: public (it holds nothing secret), so clients can read it first.
async fn openapi() -> Response {
    axum::Json(crate::openapi::document()).into_response()
}
