//! The CLI's side of the local API: calls a method of the running daemon, or follows its
//! event stream.

use futures::StreamExt;
use serde_json::Value;

use crate::home::{Home, HomeError};

/// Longest event line the client accepts from the daemon's stream: an event carries at most
/// one message, JSON-escaped (a control character takes six bytes).
const MAX_EVENT_LINE: usize = 6 * dspring_node::MAX_MESSAGE_BYTES + 4096;

/// Largest answer to a proof request the client reads: ours is under 100 bytes.
const MAX_PROOF_ANSWER: usize = 1024;
/// How long the daemon has to prove itself: on loopback it answers at once, and whatever
/// does not is not our daemon.
const PROOF_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error("cannot reach the daemon at {address}: {error}")]
    Unreachable {
        address: std::net::SocketAddr,
        error: reqwest::Error,
    },
    #[error(
        "whatever listens at {0} is not this profile's daemon (the address file is stale: \
         start the daemon again)"
    )]
    NotOurDaemon(std::net::SocketAddr),
    #[error("{message} ({code})")]
    Api { code: String, message: String },
    #[error("the daemon's answer is not what this CLI understands: {0}")]
    BadAnswer(String),
    #[error("still {0} after the timeout")]
    TimedOut(String),
}

impl ClientError {
    /// The process exit code: 1 the daemon refused, 3 no daemon to talk to, 4 a bad answer,
    /// 5 a wait timed out.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Api { .. } => 1,
            ClientError::Home(_)
            | ClientError::Unreachable { .. }
            | ClientError::NotOurDaemon(_) => 3,
            ClientError::BadAnswer(_) => 4,
            ClientError::TimedOut(_) => 5,
        }
    }
}

/// The daemon's error body (`code`, `message`) as an error.
fn api_error(body: &Value) -> ClientError {
    let field = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    ClientError::Api {
        code: field("code"),
        message: field("message"),
    }
}

pub struct Client {
    http: reqwest::Client,
    address: std::net::SocketAddr,
    token: String,
}

impl Client {
    /// Finds the profile's daemon and checks that it is the one holding the token (see
    /// [`crate::api::proof`]) before anything is sent with the token.
    pub async fn connect(home: &Home) -> Result<Self, ClientError> {
        let client = Self {
            http: reqwest::Client::new(),
            address: home.address()?,
            token: home.token()?,
        };
        let mut challenge = [0u8; 32];
        getrandom::fill(&mut challenge)
            .map_err(|e| ClientError::BadAnswer(format!("no randomness: {e}")))?;
        let response = client
            .http
            .get(format!(
                "http://{}/v1/proof?challenge={}",
                client.address,
                hex::encode(challenge)
            ))
            .timeout(PROOF_TIMEOUT)
            .send()
            .await
            .map_err(|e| client.unreachable(e))?;
        // Whatever answers may not be our daemon: read at most a proof's worth.
        let mut body = Vec::new();
        let mut chunks = response.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|_| ClientError::NotOurDaemon(client.address))?;
            if body.len() + chunk.len() > MAX_PROOF_ANSWER {
                return Err(ClientError::NotOurDaemon(client.address));
            }
            body.extend_from_slice(&chunk);
        }
        let answer: Value =
            serde_json::from_slice(&body).map_err(|_| ClientError::NotOurDaemon(client.address))?;
        let expected = crate::api::proof(&client.token, &challenge);
        let given = answer.get("proof").and_then(Value::as_str).unwrap_or("");
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            given.as_bytes(),
            expected.as_bytes(),
        )) {
            return Err(ClientError::NotOurDaemon(client.address));
        }
        Ok(client)
    }

    fn unreachable(&self, error: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            address: self.address,
            error,
        }
    }

    pub async fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        let response = self
            .http
            .post(format!("http://{}/v1/{method}", self.address))
            .bearer_auth(&self.token)
            .json(&params)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let ok = response.status().is_success();
        let body: Value = response
            .json()
            .await
            .map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        if ok {
            return Ok(body);
        }
        Err(api_error(&body))
    }

    /// Follows the event stream from `after`, calling `each` with every event (its JSON)
    /// until it returns false or the daemon ends the stream.
    pub async fn follow(
        &self,
        after: u64,
        group: Option<&str>,
        mut each: impl FnMut(Value) -> bool,
    ) -> Result<(), ClientError> {
        let mut query = vec![("after", after.to_string())];
        if let Some(group) = group {
            query.push(("group", group.to_owned()));
        }
        let response = self
            .http
            .get(format!("http://{}/v1/events", self.address))
            .query(&query)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            return Err(api_error(&body));
        }
        let mut bytes = response.bytes_stream();
        let mut line: Vec<u8> = Vec::new();
        while let Some(chunk) = bytes.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(e))?;
            for byte in chunk {
                if byte != b'\n' {
                    if line.len() >= MAX_EVENT_LINE {
                        return Err(ClientError::BadAnswer("an event line too long".into()));
                    }
                    line.push(byte);
                    continue;
                }
                if let Some(data) = line.strip_prefix(b"data:") {
                    let event: Value = serde_json::from_slice(data.trim_ascii())
                        .map_err(|e| ClientError::BadAnswer(e.to_string()))?;
                    if !each(event) {
                        return Ok(());
                    }
                }
                line.clear();
            }
        }
        Ok(())
    }
}
