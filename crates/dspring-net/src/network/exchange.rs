//! The requests of one request-response protocol in flight, both ways: inbound ones waiting for
//! the node's answer (bounded), outbound ones waiting for the peer's.

use std::collections::HashMap;

use libp2p::PeerId;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use tokio::sync::oneshot;

use super::{InboundId, MAX_PENDING_INBOUND, NetworkError};

/// The requests of one request-response protocol in flight, both ways.
pub(super) struct Exchange<Request, Response> {
    /// Inbound requests waiting for the node's answer.
    pub(super) inbound: HashMap<InboundId, ResponseChannel<Response>>,
    /// Our requests waiting for the peer's answer.
    pub(super) outbound:
        HashMap<OutboundRequestId, oneshot::Sender<Result<Response, NetworkError>>>,
    _request: std::marker::PhantomData<Request>,
}

impl<Request, Response> Exchange<Request, Response> {
    pub(super) fn new() -> Self {
        Self {
            inbound: HashMap::new(),
            outbound: HashMap::new(),
            _request: std::marker::PhantomData,
        }
    }

    /// Settles responses and failures; returns a new inbound request for the node, unless too
    /// many wait already (then it is dropped and the peer's request times out).
    pub(super) fn on_event(
        &mut self,
        event: request_response::Event<Request, Response>,
        next_inbound: &mut u64,
    ) -> Option<(InboundId, PeerId, Request)> {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    if self.inbound.len() >= MAX_PENDING_INBOUND {
                        return None;
                    }
                    *next_inbound += 1;
                    let id = InboundId(*next_inbound);
                    self.inbound.insert(id, channel);
                    Some((id, peer, request))
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(done) = self.outbound.remove(&request_id) {
                        let _ = done.send(Ok(response));
                    }
                    None
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(done) = self.outbound.remove(&request_id) {
                    let _ = done.send(Err(NetworkError::Request(error.to_string())));
                }
                None
            }
            request_response::Event::InboundFailure { .. }
            | request_response::Event::ResponseSent { .. } => None,
        }
    }
}
