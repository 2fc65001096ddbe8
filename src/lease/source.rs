//! What the keep-alive hub needs from etcd, as a trait: open a keep-alive stream on a chosen
//! member, send keep-alives for any lease on it, read the answers (each naming its lease), and
//! the pool's verdicts on members. The real source ([`PoolLeases`]) wraps [`Pool`]; the unit
//! tests drive the hub over a scripted fake, so every rule of the keep-alive is tested without
//! etcd.
//!
//! etcd's `LeaseKeepAlive` is one bidirectional stream whose requests may name any lease and
//! whose answers name the lease they renew, so one stream can keep every lease of a process.
//! etcd-client 0.21's `LeaseKeeper` sends only the id it was opened for, but with the
//! `pub-response-field` feature its request sender and the raw answer stream are public fields:
//! [`EtcdKeepAlive`] sends requests for any id into the same gRPC stream. The request type is
//! not exported (only with etcd-client's `build-server` feature, which would compile every etcd
//! server stub), so [`request_for`] builds one by decoding our own encoding of the same message.
//! The stream is authorised when it opens, through the member's client (its auth token
//! attached by etcd-client's interceptor), exactly like the stream etcd-client opens for one id.

use std::future::Future;

use tokio::sync::watch;

use crate::error::is_lease_not_found;
use crate::pool::Pool;

/// One answer on a keep-alive stream: the lease it renews and the TTL etcd now gives it, in
/// seconds (0: the lease is gone, expired or revoked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The lease id.
    pub(crate) id: i64,
    /// Its TTL from now, in seconds; 0 or less when etcd does not know it.
    pub(crate) ttl: i64,
}

/// Why a keep-alive stream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// etcd answered the open's keep-alive: that lease is gone. The member is fine; the
    /// stream can be opened again for another lease.
    LeaseGone(String),
    /// The member refused or failed the stream.
    Failed(String),
    /// No client could be built for the member (refused, or authentication failed).
    NoClient,
}

/// The keep-alive streams the hub opens, and the pool's verdicts on their members.
pub(crate) trait LeaseSource: Send + Sync + 'static {
    /// An open keep-alive stream.
    type Stream: KeepAliveStream;

    /// Opens a keep-alive stream on pool member `member`: sends a keep-alive for lease `id`
    /// and resolves once etcd answered it with a TTL above 0, so a successful open renewed
    /// `id` to its full TTL no earlier than the call.
    fn open(
        &self,
        member: usize,
        id: i64,
    ) -> impl Future<Output = Result<Self::Stream, OpenError>> + Send;

    /// The member a new stream should go to (see [`Pool::choose`]).
    fn choose(&self) -> usize;

    /// Suspects `member` (see [`Pool::suspect`]).
    fn suspect(&self, member: usize, why: &str);

    /// Records that `member` answered (see [`Pool::confirm`]).
    fn confirm(&self, member: usize);

    /// How many members there are to move a stream to.
    fn members(&self) -> usize;

    /// Suspicions raised by any request on the pool: `(sequence, member)`.
    fn suspicions(&self) -> watch::Receiver<(u64, usize)>;
}

/// One open keep-alive stream: requests for any lease, answers naming theirs.
pub(crate) trait KeepAliveStream: Send + 'static {
    /// Sends a keep-alive for lease `id`. May wait while the connection's flow-control window
    /// is full (a stalled member), so the hub bounds it.
    fn send(&mut self, id: i64) -> impl Future<Output = Result<(), String>> + Send;

    /// The next answer; `Ok(None)` when the stream ended.
    fn message(&mut self) -> impl Future<Output = Result<Option<Answer>, String>> + Send;
}

/// The real source: keep-alive streams on the pool's members.
#[derive(Debug, Clone)]
pub(crate) struct PoolLeases {
    /// The members.
    pub(crate) pool: Pool,
}

impl LeaseSource for PoolLeases {
    type Stream = EtcdKeepAlive;

    async fn open(&self, member: usize, id: i64) -> Result<EtcdKeepAlive, OpenError> {
        let client = self
            .pool
            .client(member)
            .await
            .map_err(|_| OpenError::NoClient)?;
        match client.lease_client().keep_alive(id).await {
            Ok((requests, answers)) => Ok(EtcdKeepAlive { requests, answers }),
            Err(e) if is_lease_not_found(&e) => Err(OpenError::LeaseGone(e.to_string())),
            Err(e) => Err(OpenError::Failed(e.to_string())),
        }
    }

    fn choose(&self) -> usize {
        self.pool.choose()
    }

    fn suspect(&self, member: usize, why: &str) {
        self.pool.suspect(member, why);
    }

    fn confirm(&self, member: usize) {
        self.pool.confirm(member);
    }

    fn members(&self) -> usize {
        self.pool.len()
    }

    fn suspicions(&self) -> watch::Receiver<(u64, usize)> {
        self.pool.suspicions()
    }
}

/// The keep-alive stream over etcd-client: the keeper, whose public `sender` is the request
/// half of the gRPC stream, and the answers of the open.
pub(crate) struct EtcdKeepAlive {
    requests: etcd_client::LeaseKeeper,
    answers: etcd_client::LeaseKeepAliveStream,
}

impl std::fmt::Debug for EtcdKeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdKeepAlive").finish_non_exhaustive()
    }
}

impl KeepAliveStream for EtcdKeepAlive {
    async fn send(&mut self, id: i64) -> Result<(), String> {
        // The keeper's own `keep_alive()` would name its own lease; its sender takes any.
        let request = request_for(id).map_err(|e| e.to_string())?;
        self.requests
            .sender
            .send(request)
            .await
            .map_err(|e| e.to_string())
    }

    async fn message(&mut self) -> Result<Option<Answer>, String> {
        match self.answers.message().await {
            Ok(Some(resp)) => Ok(Some(Answer {
                id: resp.id(),
                ttl: resp.ttl(),
            })),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// etcd's `LeaseKeepAliveRequest { int64 ID = 1; }`, the same message on the wire.
#[derive(Clone, PartialEq, prost::Message)]
struct KeepAliveRequest {
    /// The lease to renew.
    #[prost(int64, tag = "1")]
    id: i64,
}

/// A keep-alive request for lease `id` in any prost type with etcd's request layout: ours
/// encoded, decoded as `T` (etcd-client's generated type, which we cannot name).
///
/// # Errors
/// `T` does not decode the message (it would not be etcd's request).
pub(crate) fn request_for<T: prost::Message + Default>(id: i64) -> Result<T, prost::DecodeError> {
    T::decode(prost::Message::encode_to_vec(&KeepAliveRequest { id }).as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_etcds_lease_keep_alive_request_on_the_wire() {
        // etcd's rpc.proto: `message LeaseKeepAliveRequest { int64 ID = 1; }`, so field 1 as
        // a varint (key 0x08), and nothing else.
        let bytes = prost::Message::encode_to_vec(&KeepAliveRequest { id: 0x1234 });
        assert_eq!(bytes, [0x08, 0xb4, 0x24]);
        let back: KeepAliveRequest = request_for(0x1234).unwrap();
        assert_eq!(back.id, 0x1234);
    }
}
