//! A real gRPC pair (tonic) for the L7 tests: a bidirectional `Chat`
//! service that answers every message as it comes, and the clients
//! `mesh-probe grpc` drives (ping-pong, client and server streaming). Messages are raw
//! bytes (a codec of our own), so no code is generated.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::{Buf, BufMut, Bytes};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::background::Background;

/// The method the service answers.
pub const CHAT: &str = "/mesh.test.Echo/Chat";

/// Messages as they are: bytes in, bytes out.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A running gRPC server; stops when dropped.
pub struct GrpcServer {
    streams: Arc<AtomicU64>,
    _serving: Background,
}

impl GrpcServer {
    /// Calls (streams) begun so far.
    pub fn streams(&self) -> u64 {
        self.streams.load(Ordering::SeqCst)
    }
}

/// Answers each message of a `Chat` stream as it arrives: `pong:<it>`,
/// or for `stream:<n>`, n replies (`<i>/<n>`), the server streaming.
async fn chat(request: tonic::Request<tonic::Streaming<Bytes>>) -> Result<tonic::Response<ChatReplies>, Status> {
    use futures::StreamExt;
    let inbound = request.into_inner();
    let replies = futures::stream::unfold(Some(inbound), |inbound| async move {
        let mut inbound = inbound?;
        match inbound.message().await {
            Ok(Some(message)) => Some((Ok(answers(&message)), Some(inbound))),
            Ok(None) => None,
            Err(status) => Some((Err(status), None)),
        }
    })
    .flat_map(|answers: Result<Vec<Bytes>, Status>| match answers {
        Ok(answers) => futures::stream::iter(answers.into_iter().map(Ok).collect::<Vec<_>>()),
        Err(status) => futures::stream::iter(vec![Err(status)]),
    });
    Ok(tonic::Response::new(Box::pin(replies)))
}

fn answers(message: &[u8]) -> Vec<Bytes> {
    let text = String::from_utf8_lossy(message);
    match text.strip_prefix("stream:").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) => (1..=n).map(|i| Bytes::from(format!("{i}/{n}"))).collect(),
        None => vec![Bytes::from(format!("pong:{text}"))],
    }
}

type ChatReplies = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Bytes, Status>> + Send>>;

/// Serves gRPC (HTTP/2 with prior knowledge) on `addr` inside `netns`.
pub(crate) fn start(netns: &Path, addr: SocketAddr) -> Result<GrpcServer> {
    let streams = Arc::new(AtomicU64::new(0));
    let counter = streams.clone();
    let serving = crate::background::spawn(netns, addr, move |stream| {
        let counter = counter.clone();
        async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    let mut grpc = tonic::server::Grpc::new(RawCodec);
                    let response = match request.uri().path() {
                        CHAT => grpc.streaming(tower::service_fn(chat), request).await,
                        _ => Status::unimplemented("no such method").into_http(),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })?;
    Ok(GrpcServer { streams, _serving: serving })
}

/// Client streaming on one `Chat` stream: `count` messages sent, the
/// sending side closed, then every reply read.
pub async fn client_stream(target: SocketAddr, count: usize, wait: std::time::Duration) -> Result<Vec<String>> {
    let messages: Vec<Bytes> = (0..count).map(|i| Bytes::from(format!("up-{i}"))).collect();
    replies_to(target, messages, wait).await
}

/// Server streaming: one message asking for `count` replies.
pub async fn server_stream(target: SocketAddr, count: usize, wait: std::time::Duration) -> Result<Vec<String>> {
    replies_to(target, vec![Bytes::from(format!("stream:{count}"))], wait).await
}

async fn replies_to(target: SocketAddr, messages: Vec<Bytes>, wait: std::time::Duration) -> Result<Vec<String>> {
    let mut client = tonic::client::Grpc::new(connect(target, wait).await?);
    client.ready().await.context("channel ready")?;
    let call = client.streaming(
        tonic::Request::new(futures::stream::iter(messages)),
        hyper::http::uri::PathAndQuery::from_static(CHAT),
        RawCodec,
    );
    let mut inbound = tokio::time::timeout(wait, call).await.context("no response head")??.into_inner();
    let mut replies = Vec::new();
    while let Some(reply) = tokio::time::timeout(wait, inbound.message()).await.context("no reply")?? {
        replies.push(String::from_utf8_lossy(&reply).into_owned());
    }
    Ok(replies)
}

async fn connect(target: SocketAddr, wait: std::time::Duration) -> Result<tonic::transport::Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{target}"))?.connect_timeout(wait);
    endpoint.connect().await.context("connecting")
}

/// Ping-pong on one `Chat` stream to `target`: each message is sent only
/// after the reply to the one before came back (within `wait`), as a
/// client that needs the answer to go on does. Returns the replies.
pub async fn ping_pong(target: SocketAddr, count: usize, wait: std::time::Duration) -> Result<Vec<String>> {
    use futures::SinkExt;
    let mut client = tonic::client::Grpc::new(connect(target, wait).await?);
    client.ready().await.context("channel ready")?;
    let (mut sender, outbound) = futures::channel::mpsc::channel::<Bytes>(1);
    // The first message is on its way before the call waits for the
    // response head: neither side needs the other to go first.
    sender.send(Bytes::from("ping-0")).await?;
    let call =
        client.streaming(tonic::Request::new(outbound), hyper::http::uri::PathAndQuery::from_static(CHAT), RawCodec);
    let mut inbound = tokio::time::timeout(wait, call).await.context("no response head")??.into_inner();
    let mut replies = Vec::new();
    for i in 0..count {
        let reply = tokio::time::timeout(wait, inbound.message())
            .await
            .with_context(|| format!("no reply to message {i} within {wait:?}"))??
            .with_context(|| format!("the stream ended before the reply to message {i}"))?;
        replies.push(String::from_utf8_lossy(&reply).into_owned());
        if i + 1 < count {
            sender.send(Bytes::from(format!("ping-{}", i + 1))).await?;
        }
    }
    drop(sender);
    let end = tokio::time::timeout(wait, inbound.message()).await.context("no end of stream")??;
    anyhow::ensure!(end.is_none(), "an extra reply: {end:?}");
    Ok(replies)
}
