//! The request-response protocols and their bounded codec: a 4-byte length, then postcard.
//! A message over its protocol's bound is refused before it is read, and the stream dropped.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dspring_proto::GroupId;
use dspring_proto::envelope::MAX_ENVELOPE_LEN;
use dspring_proto::ids::ShortId;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub const DIRECT_PROTOCOL: StreamProtocol = StreamProtocol::new("/dspring/direct/1");
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/dspring/sync/1");
pub const MAILBOX_PROTOCOL: StreamProtocol = StreamProtocol::new("/dspring/mailbox/1");
pub const WHERE_PROTOCOL: StreamProtocol = StreamProtocol::new("/dspring/where/1");

/// A direct delivery is one envelope plus its group: the envelope bound and a little framing.
pub const MAX_DIRECT_REQUEST: usize = MAX_ENVELOPE_LEN + 256;
/// The answer to a direct delivery is a few bytes.
pub const MAX_DIRECT_RESPONSE: usize = 64;
/// Most senders a sync request names: far above any group we expect, small enough that a
/// request stays a few tens of KiB.
pub const MAX_SYNC_SENDERS: usize = 1024;
pub const MAX_SYNC_REQUEST: usize = 64 << 10;
/// Most envelopes in one sync page; the requester asks again with the returned token.
pub const MAX_SYNC_PAGE: usize = 256;
/// A sync page in bytes: a few large envelopes or many small ones.
pub const MAX_SYNC_RESPONSE: usize = 16 << 20;

/// Most welcomes and most groups in one mailbox answer: an owner added to more groups while
/// away gets the rest on its next ask.
pub const MAX_NEWS_ITEMS: usize = 256;
/// A mailbox request is a welcome at most.
pub const MAX_MAILBOX_REQUEST: usize = MAX_ENVELOPE_LEN + 256;
/// A mailbox answer: welcomes and group ids.
pub const MAX_MAILBOX_RESPONSE: usize = 16 << 20;

/// Most peers one "where is" request names: the peers a node is looking for at one moment
/// (failed dials of its busy groups' members), far below this.
pub const MAX_WHERE_PEERS: usize = 32;
/// A "where is" request: peer ids of at most 38 bytes each.
pub const MAX_WHERE_REQUEST: usize = MAX_WHERE_PEERS * 64;
/// A "where is" answer: a signed record per peer asked about, at most.
pub const MAX_WHERE_RESPONSE: usize =
    MAX_WHERE_PEERS * (crate::address_book::MAX_PEER_RECORD_BYTES + 8);

/// "Where are these peers?": asked of connected peers when dials fail. The answer holds the
/// signed records (libp2p `PeerRecord` envelopes) the asked peer holds for them; the asker
/// checks each signature, so a peer passing records on cannot forge an address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhereRequest {
    /// Peer ids, as bytes.
    pub peers: Vec<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhereResponse {
    pub records: Vec<Vec<u8>>,
}

/// What a member asks of a mailbox (a node that keeps ciphertext for groups, holding no keys).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailboxRequest {
    /// From anyone: hold this welcome of `group` for `member`, one of your owners, who is
    /// away; and keep the group for them.
    Deposit {
        member: dspring_proto::MemberId,
        group: GroupId,
        envelope: Vec<u8>,
    },
    /// From an owner: keep this group for me.
    Register { group: GroupId },
    /// From an owner: what do you hold for me after your position `after`? `instance` is
    /// the mailbox's instance id the position was read from (zeros if none): positions of
    /// another instance (the mailbox lost its data, or another one took over its key) mean
    /// nothing, and the mailbox answers from its start.
    News { after: u64, instance: [u8; 16] },
    /// From a mailbox to an owner connected to it: "I hold new envelopes of `group`" (push;
    /// the owner syncs the group from the mailbox). Sent to owners not on the group's topic,
    /// who would otherwise hear of them only at their next news request.
    Fresh { group: GroupId },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailboxResponse {
    Done,
    /// Not an owner, not a mailbox, or over a bound.
    Refused,
    News {
        /// Welcomes held for the owner.
        welcomes: Vec<(GroupId, Vec<u8>)>,
        /// Groups kept for the owner with envelopes after the position asked from.
        groups: Vec<GroupId>,
        /// Ask from here next time.
        cursor: u64,
        /// This mailbox's instance id, to send back with the cursor.
        instance: [u8; 16],
    },
}

/// Deliver this envelope of `group` to me (a welcome, or an envelope for a member not yet on
/// the group's topic).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectRequest {
    pub group: GroupId,
    pub envelope: Vec<u8>,
}

/// Sent once the envelope is committed (accepted) or refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectResponse {
    pub accepted: bool,
}

/// What the requester holds of one sender in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub sender: ShortId,
    pub control_seq: u64,
    pub application: Option<(u64, u64)>,
}

/// "Here is what I have per sender in `group`: send me the rest", continuing after `token`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    pub group: GroupId,
    pub marks: Vec<Mark>,
    /// Where the previous page ended (0 for the first page).
    pub token: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    pub envelopes: Vec<Vec<u8>>,
    /// Ask again with this token for more; `None` when this was the last page.
    pub next: Option<u64>,
    /// On the last page: the end of the responder's log. Everything before it was offered,
    /// so the next sync with this peer can start there instead of at the beginning.
    pub end: u64,
}

/// Framing of one protocol: its request and response types and their bounds.
pub trait Framed {
    type Request: Serialize + DeserializeOwned + Send + std::marker::Sync;
    type Response: Serialize + DeserializeOwned + Send + std::marker::Sync;
    const MAX_REQUEST: usize;
    const MAX_RESPONSE: usize;
    fn check_request(_: &Self::Request) -> bool {
        true
    }
    fn check_response(_: &Self::Response) -> bool {
        true
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Direct;

impl Framed for Direct {
    type Request = DirectRequest;
    type Response = DirectResponse;
    const MAX_REQUEST: usize = MAX_DIRECT_REQUEST;
    const MAX_RESPONSE: usize = MAX_DIRECT_RESPONSE;
    fn check_request(request: &DirectRequest) -> bool {
        request.envelope.len() <= MAX_ENVELOPE_LEN
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Sync;

impl Framed for Sync {
    type Request = SyncRequest;
    type Response = SyncResponse;
    const MAX_REQUEST: usize = MAX_SYNC_REQUEST;
    const MAX_RESPONSE: usize = MAX_SYNC_RESPONSE;
    fn check_request(request: &SyncRequest) -> bool {
        request.marks.len() <= MAX_SYNC_SENDERS
    }
    fn check_response(response: &SyncResponse) -> bool {
        response.envelopes.len() <= MAX_SYNC_PAGE
            && response
                .envelopes
                .iter()
                .all(|e| e.len() <= MAX_ENVELOPE_LEN)
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Mailbox;

impl Framed for Mailbox {
    type Request = MailboxRequest;
    type Response = MailboxResponse;
    const MAX_REQUEST: usize = MAX_MAILBOX_REQUEST;
    const MAX_RESPONSE: usize = MAX_MAILBOX_RESPONSE;
    fn check_request(request: &MailboxRequest) -> bool {
        match request {
            MailboxRequest::Deposit { envelope, .. } => envelope.len() <= MAX_ENVELOPE_LEN,
            MailboxRequest::Register { .. }
            | MailboxRequest::News { .. }
            | MailboxRequest::Fresh { .. } => true,
        }
    }
    fn check_response(response: &MailboxResponse) -> bool {
        match response {
            MailboxResponse::News {
                welcomes, groups, ..
            } => {
                welcomes.len() <= MAX_NEWS_ITEMS
                    && groups.len() <= MAX_NEWS_ITEMS
                    && welcomes.iter().all(|(_, e)| e.len() <= MAX_ENVELOPE_LEN)
            }
            MailboxResponse::Done | MailboxResponse::Refused => true,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Where;

impl Framed for Where {
    type Request = WhereRequest;
    type Response = WhereResponse;
    const MAX_REQUEST: usize = MAX_WHERE_REQUEST;
    const MAX_RESPONSE: usize = MAX_WHERE_RESPONSE;
    fn check_request(request: &WhereRequest) -> bool {
        request.peers.len() <= MAX_WHERE_PEERS && request.peers.iter().all(|p| p.len() <= 64)
    }
    fn check_response(response: &WhereResponse) -> bool {
        response.records.len() <= MAX_WHERE_PEERS
            && response
                .records
                .iter()
                .all(|r| r.len() <= crate::address_book::MAX_PEER_RECORD_BYTES)
    }
}

/// Encodes a message with its length; refuses one over `max`.
pub fn encode<T: Serialize>(message: &T, max: usize) -> io::Result<Vec<u8>> {
    let body = postcard::to_allocvec(message).map_err(io::Error::other)?;
    if body.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "message over its bound",
        ));
    }
    let len = u32::try_from(body.len()).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend(body);
    Ok(out)
}

/// Decodes one framed message from `bytes` (length included).
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> io::Result<T> {
    let invalid = |why: &'static str| io::Error::new(io::ErrorKind::InvalidData, why);
    let (len, body) = bytes
        .split_first_chunk::<4>()
        .ok_or(invalid("truncated length"))?;
    let len = u32::from_be_bytes(*len) as usize;
    if len > max {
        return Err(invalid("message over its bound"));
    }
    if body.len() != len {
        return Err(invalid("length does not match"));
    }
    postcard::from_bytes(body).map_err(|_| invalid("malformed message"))
}

async fn read_framed<T: DeserializeOwned, R: AsyncRead + Unpin + Send>(
    io: &mut R,
    max: usize,
) -> io::Result<T> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let body_len = u32::from_be_bytes(len) as usize;
    if body_len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message over its bound",
        ));
    }
    let mut body = vec![0u8; body_len];
    io.read_exact(&mut body).await?;
    postcard::from_bytes(&body)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "malformed message"))
}

async fn write_framed<T: Serialize, W: AsyncWrite + Unpin + Send>(
    io: &mut W,
    message: &T,
    max: usize,
    written: &AtomicU64,
) -> io::Result<()> {
    let bytes = encode(message, max)?;
    io.write_all(&bytes).await?;
    written.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    io.close().await
}

/// The request-response codec of protocol `P`. Its clones (one per connection) share one
/// count of the bytes they wrote, requests and answers.
#[derive(Debug)]
pub struct Codec<P> {
    written: Arc<AtomicU64>,
    protocol: std::marker::PhantomData<P>,
}

impl<P> Codec<P> {
    /// A codec that adds what it writes to `written`.
    pub fn counting(written: Arc<AtomicU64>) -> Self {
        Self {
            written,
            protocol: std::marker::PhantomData,
        }
    }
}

impl<P> Default for Codec<P> {
    fn default() -> Self {
        Self::counting(Arc::default())
    }
}

impl<P> Clone for Codec<P> {
    fn clone(&self) -> Self {
        Self::counting(self.written.clone())
    }
}

fn refuse() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "message over a limit")
}

impl<P: Framed + Send + 'static> libp2p::request_response::Codec for Codec<P> {
    type Protocol = StreamProtocol;
    type Request = P::Request;
    type Response = P::Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<P::Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let request = read_framed(io, P::MAX_REQUEST).await?;
        if P::check_request(&request) {
            Ok(request)
        } else {
            Err(refuse())
        }
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<P::Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let response = read_framed(io, P::MAX_RESPONSE).await?;
        if P::check_response(&response) {
            Ok(response)
        } else {
            Err(refuse())
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: P::Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_framed(io, &request, P::MAX_REQUEST, &self.written).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: P::Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_framed(io, &response, P::MAX_RESPONSE, &self.written).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn frames_round_trip_and_bounds_hold() {
        let request = SyncRequest {
            group: GroupId([3; 32]),
            marks: vec![Mark {
                sender: ShortId([1; 8]),
                control_seq: 7,
                application: Some((2, 9)),
            }],
            token: 5,
        };
        let bytes = encode(&request, MAX_SYNC_REQUEST).unwrap();
        assert_eq!(
            decode::<SyncRequest>(&bytes, MAX_SYNC_REQUEST).unwrap(),
            request
        );
        assert!(decode::<SyncRequest>(&bytes, 8).is_err());
        assert!(decode::<SyncRequest>(&bytes[..bytes.len() - 1], MAX_SYNC_REQUEST).is_err());
        assert!(encode(&request, 8).is_err());
        let mut lying = bytes.clone();
        lying[0] = 0xff;
        assert!(decode::<SyncRequest>(&lying, MAX_SYNC_REQUEST).is_err());
    }

    #[test]
    fn a_stream_announcing_more_than_the_bound_is_refused_before_reading() {
        // Claims 4 GiB; the reader must refuse on the length alone, not allocate and wait.
        let mut claim = u32::MAX.to_be_bytes().to_vec();
        claim.extend_from_slice(b"tiny");
        let mut stream = futures::io::Cursor::new(claim);
        let result = futures::executor::block_on(read_framed::<SyncRequest, _>(
            &mut stream,
            MAX_SYNC_REQUEST,
        ));
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidData);
        // Within the bound, a well-formed frame reads back.
        let request = DirectRequest {
            group: GroupId([1; 32]),
            envelope: vec![7; 100],
        };
        let mut stream = futures::io::Cursor::new(encode(&request, MAX_DIRECT_REQUEST).unwrap());
        let read = futures::executor::block_on(read_framed::<DirectRequest, _>(
            &mut stream,
            MAX_DIRECT_REQUEST,
        ))
        .unwrap();
        assert_eq!(read, request);
    }

    #[test]
    fn a_codec_and_its_clones_count_what_they_write_together() {
        use libp2p::request_response::Codec as _;
        let written = Arc::new(AtomicU64::new(0));
        let mut codec = Codec::<Direct>::counting(written.clone());
        let mut per_connection = codec.clone();
        let request = DirectRequest {
            group: GroupId([1; 32]),
            envelope: vec![7; 100],
        };
        let expected = encode(&request, MAX_DIRECT_REQUEST).unwrap().len() as u64;
        let mut out = futures::io::Cursor::new(Vec::new());
        futures::executor::block_on(codec.write_request(&DIRECT_PROTOCOL, &mut out, request))
            .unwrap();
        assert_eq!(written.load(Ordering::Relaxed), expected);
        let mut out = futures::io::Cursor::new(Vec::new());
        futures::executor::block_on(per_connection.write_response(
            &DIRECT_PROTOCOL,
            &mut out,
            DirectResponse { accepted: true },
        ))
        .unwrap();
        assert_eq!(
            written.load(Ordering::Relaxed),
            expected + out.into_inner().len() as u64
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders() {
        let mut seed = 0x1234_5678_u64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = decode::<SyncRequest>(&bytes, MAX_SYNC_REQUEST);
            let _ = decode::<SyncResponse>(&bytes, MAX_SYNC_RESPONSE);
            let _ = decode::<DirectRequest>(&bytes, MAX_DIRECT_REQUEST);
            let _ = decode::<MailboxRequest>(&bytes, MAX_MAILBOX_REQUEST);
            let _ = decode::<MailboxResponse>(&bytes, MAX_MAILBOX_RESPONSE);
        }
    }

    #[test]
    fn mailbox_messages_round_trip_and_their_checks_hold() {
        let news = MailboxResponse::News {
            welcomes: vec![(GroupId([1; 32]), vec![7; 10])],
            groups: vec![GroupId([2; 32])],
            cursor: 9,
            instance: [3; 16],
        };
        let bytes = encode(&news, MAX_MAILBOX_RESPONSE).unwrap();
        assert_eq!(
            decode::<MailboxResponse>(&bytes, MAX_MAILBOX_RESPONSE).unwrap(),
            news
        );
        assert!(Mailbox::check_response(&news));
        let too_many = MailboxResponse::News {
            welcomes: Vec::new(),
            groups: vec![GroupId([2; 32]); MAX_NEWS_ITEMS + 1],
            cursor: 0,
            instance: [0; 16],
        };
        assert!(!Mailbox::check_response(&too_many));
        let deposit = MailboxRequest::Deposit {
            member: dspring_proto::MemberId([4; 32]),
            group: GroupId([5; 32]),
            envelope: vec![0; MAX_ENVELOPE_LEN + 1],
        };
        assert!(!Mailbox::check_request(&deposit));
    }
}
