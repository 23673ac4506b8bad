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
use dspring_node::{Node, NodeConfig};
use futures::{Stream, StreamExt};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::api::{self, ApiError};
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
/// How long shutdown waits for requests in progress to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Largest request body: a message at its bound, JSON-escaped (a control character takes six
/// bytes), with room for the rest.
pub const MAX_REQUEST_BYTES: usize = 6 * api::MAX_MESSAGE_BYTES + 4096;

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
    #[error("not a libp2p address: {0:?}")]
    BadAddress(String),
}

/// How the daemon runs.
#[derive(Debug)]
pub struct Options {
    /// The API's port on 127.0.0.1; 0 picks a free one.
    pub api_port: u16,
    pub mailbox: bool,
    /// Discover peers on the local network.
    pub mdns: bool,
    /// libp2p listen addresses; empty keeps the node's defaults.
    pub listen: Vec<String>,
}

/// Runs the daemon in the foreground until SIGINT or SIGTERM.
pub async fn run(home: &Home, options: Options) -> Result<(), DaemonError> {
    let mut config = NodeConfig::new(home.node_dir());
    if !options.listen.is_empty() {
        config.listen = options
            .listen
            .iter()
            .map(|a| a.parse().map_err(|_| DaemonError::BadAddress(a.clone())))
            .collect::<Result<_, _>>()?;
    }
    config.mdns = options.mdns;
    if options.mailbox {
        config.mailbox = Some(dspring_node::MailboxConfig::default());
    }
    home.create()?;
    let token = home.token_or_create()?;
    let api_port = options.api_port;
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
        .route("/v1/{method}", post(method))
        .fallback(|| async { error_response(ApiError::new(404, "not_found", "no such endpoint")) })
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
    let bytes = axum::body::to_bytes(body, MAX_REQUEST_BYTES)
        .await
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
}

/// The event stream: stored events after the cursor (`Last-Event-ID`, else `?after=`, else
/// the beginning), then live ones; each SSE event's id is its cursor, so a client that
/// reconnects with `Last-Event-ID` misses nothing and sees nothing twice.
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
    let stream = event_stream(&app.node, after).map(move |event| {
        let _held = &slot;
        event
    });
    Sse::new(stream.take_until(stopped))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn event_stream(
    node: &Node,
    after: u64,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + use<> {
    node.events(after).map(|stored| {
        let event = api::api_event(&stored);
        let data = serde_json::to_string(&event).unwrap_or_default();
        Ok(SseEvent::default()
            .id(stored.cursor.to_string())
            .event("event")
            .data(data))
    })
}

/// The API's description: public (it holds nothing secret), so clients can read it first.
async fn openapi() -> Response {
    axum::Json(crate::openapi::document()).into_response()
}
