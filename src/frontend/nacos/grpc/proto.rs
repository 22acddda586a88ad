//! The messages and services of Nacos's `nacos_grpc_service.proto`, written out by hand (no
//! protoc on a fresh machine), and the tonic plumbing that serves them.
//!
//! ```text
//! message Metadata { string type = 3; string clientIp = 8; map<string, string> headers = 7; }
//! message Payload  { Metadata metadata = 2; google.protobuf.Any body = 3; }
//! service Request         { rpc request(Payload) returns (Payload); }
//! service BiRequestStream { rpc requestBiStream(stream Payload) returns (stream Payload); }
//! ```
//!
//! The proto has no package, so the paths are `/Request/request` and
//! `/BiRequestStream/requestBiStream`. The `Any`'s `type_url` carries nothing anyone relies on
//! (the Rust client puts the class name there, the Python client leaves it empty): the class is
//! `metadata.type` and `body.value` is its JSON.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};

/// Largest Payload the server decodes. A naming request is small; the largest, a
/// `BatchInstanceRequest` at its instance cap, stays well under this. tonic's own default, kept
/// explicit so that it is one named limit.
pub const PAYLOAD_DECODE_BYTES_MAX: usize = 4 << 20;

/// Largest Payload the server encodes: a push or query answer of a very large service. The Rust
/// client decodes at most 4 MiB (tonic's default) and the Python client 100 MiB; beyond this an
/// answer is refused with an error instead of being built.
pub const PAYLOAD_ENCODE_BYTES_MAX: usize = 16 << 20;

/// The path of the unary call.
pub const REQUEST_PATH: &str = "/Request/request";
/// The path of the connection's bidirectional stream.
pub const BI_STREAM_PATH: &str = "/BiRequestStream/requestBiStream";

/// `Metadata`: which class the body is, the client's own idea of its IP, and headers (the
/// clients put `app`, and `accessToken` when they log in, here).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metadata {
    #[prost(string, tag = "3")]
    pub r#type: String,
    #[prost(string, tag = "8")]
    pub client_ip: String,
    #[prost(map = "string, string", tag = "7")]
    pub headers: HashMap<String, String>,
}

/// `google.protobuf.Any`, written out so that prost-types is not needed for two fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: bytes::Bytes,
}

/// `Payload`: every message of the protocol, in both directions.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    #[prost(message, optional, tag = "2")]
    pub metadata: Option<Metadata>,
    #[prost(message, optional, tag = "3")]
    pub body: Option<Any>,
}

impl Payload {
    /// A payload of class `type_name` with `json` as its body (the server's answers and pushes:
    /// no client IP, no headers, the class name also as `type_url`, as the Rust client sends).
    pub fn new(type_name: &str, json: impl Into<bytes::Bytes>) -> Payload {
        Payload {
            metadata: Some(Metadata {
                r#type: type_name.to_string(),
                client_ip: String::new(),
                headers: HashMap::new(),
            }),
            body: Some(Any {
                type_url: type_name.to_string(),
                value: json.into(),
            }),
        }
    }

    /// The class name (`metadata.type`), empty when the metadata is missing.
    pub fn type_name(&self) -> &str {
        self.metadata.as_ref().map_or("", |m| m.r#type.as_str())
    }

    /// The JSON body, empty when the body is missing.
    pub fn json(&self) -> &[u8] {
        self.body.as_ref().map_or(&[], |b| &b.value[..])
    }
}

/// What the Nacos front end implements: the two calls of the protocol. One value serves both
/// services ([`services`]), since the unary calls and the stream of one client connection belong
/// together.
pub trait NacosGrpc: Send + Sync + 'static {
    /// The server's half of a connection's stream.
    type BiStream: Stream<Item = Result<Payload, Status>> + Send + 'static;

    /// `Request/request`: one request payload, one response payload.
    fn request(
        &self,
        request: Request<Payload>,
    ) -> impl Future<Output = Result<Response<Payload>, Status>> + Send;

    /// `BiRequestStream/requestBiStream`: the client's stream in, the server's stream out.
    fn request_bi_stream(
        &self,
        request: Request<Streaming<Payload>>,
    ) -> impl Future<Output = Result<Response<Self::BiStream>, Status>> + Send;
}

/// The two tonic services over one handler, to add to a `tonic::transport::Server`.
pub fn services<T: NacosGrpc>(handler: Arc<T>) -> (RequestServer<T>, BiRequestStreamServer<T>) {
    (
        RequestServer {
            handler: handler.clone(),
        },
        BiRequestStreamServer { handler },
    )
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

fn codec() -> tonic_prost::ProstCodec<Payload, Payload> {
    tonic_prost::ProstCodec::default()
}

fn grpc() -> tonic::server::Grpc<tonic_prost::ProstCodec<Payload, Payload>> {
    tonic::server::Grpc::new(codec()).apply_max_message_size_config(
        Some(PAYLOAD_DECODE_BYTES_MAX),
        Some(PAYLOAD_ENCODE_BYTES_MAX),
    )
}

/// The `Request` service (unary calls).
pub struct RequestServer<T> {
    handler: Arc<T>,
}

impl<T> Clone for RequestServer<T> {
    fn clone(&self) -> Self {
        RequestServer {
            handler: self.handler.clone(),
        }
    }
}

impl<T> NamedService for RequestServer<T> {
    const NAME: &'static str = "Request";
}

/// Adapts the handler's `request` to tonic's unary service shape.
struct Unary<T>(Arc<T>);

impl<T: NacosGrpc> tower_service::Service<Request<Payload>> for Unary<T> {
    type Response = Response<Payload>;
    type Error = Status;
    type Future = BoxFuture<Result<Response<Payload>, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Payload>) -> Self::Future {
        let handler = self.0.clone();
        Box::pin(async move { handler.request(request).await })
    }
}

impl<T: NacosGrpc> tower_service::Service<http::Request<Body>> for RequestServer<T> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != REQUEST_PATH {
            return Box::pin(async { Ok(unimplemented()) });
        }
        let handler = self.handler.clone();
        Box::pin(async move { Ok(grpc().unary(Unary(handler), request).await) })
    }
}

/// The `BiRequestStream` service (each client connection's stream).
pub struct BiRequestStreamServer<T> {
    handler: Arc<T>,
}

impl<T> Clone for BiRequestStreamServer<T> {
    fn clone(&self) -> Self {
        BiRequestStreamServer {
            handler: self.handler.clone(),
        }
    }
}

impl<T> NamedService for BiRequestStreamServer<T> {
    const NAME: &'static str = "BiRequestStream";
}

/// Adapts the handler's `request_bi_stream` to tonic's streaming service shape.
struct BiStream<T>(Arc<T>);

impl<T: NacosGrpc> tower_service::Service<Request<Streaming<Payload>>> for BiStream<T> {
    type Response = Response<T::BiStream>;
    type Error = Status;
    type Future = BoxFuture<Result<Response<T::BiStream>, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Streaming<Payload>>) -> Self::Future {
        let handler = self.0.clone();
        Box::pin(async move { handler.request_bi_stream(request).await })
    }
}

impl<T: NacosGrpc> tower_service::Service<http::Request<Body>> for BiRequestStreamServer<T> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != BI_STREAM_PATH {
            return Box::pin(async { Ok(unimplemented()) });
        }
        let handler = self.handler.clone();
        Box::pin(async move { Ok(grpc().streaming(BiStream(handler), request).await) })
    }
}

/// The answer to a method these services do not have.
fn unimplemented() -> http::Response<Body> {
    Status::unimplemented("no such method in the Nacos gRPC protocol").into_http()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use tokio::sync::mpsc;
    use tonic::transport::{Channel, Endpoint, Server};

    /// A server that answers a unary call with the request's body under `<type>Answer`, and
    /// echoes every stream message back under `<type>Echo`, and that reports the client's
    /// address it saw (the front end keys connections by it).
    struct Echo;

    type EchoStream = Pin<Box<dyn Stream<Item = Result<Payload, Status>> + Send>>;

    impl NacosGrpc for Echo {
        type BiStream = EchoStream;

        async fn request(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
            let peer = request
                .remote_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let payload = request.into_inner();
            let mut answer = Payload::new(
                &format!("{}Answer", payload.type_name()),
                payload.json().to_vec(),
            );
            if let Some(meta) = answer.metadata.as_mut() {
                meta.headers.insert("peer".into(), peer);
            }
            Ok(Response::new(answer))
        }

        async fn request_bi_stream(
            &self,
            request: Request<Streaming<Payload>>,
        ) -> Result<Response<EchoStream>, Status> {
            let mut inbound = request.into_inner();
            let out = futures_util::stream::poll_fn(move |cx| {
                Pin::new(&mut inbound).poll_next(cx).map(|item| {
                    item.map(|msg| {
                        msg.map(|p| {
                            Payload::new(&format!("{}Echo", p.type_name()), p.json().to_vec())
                        })
                    })
                })
            });
            Ok(Response::new(Box::pin(out)))
        }
    }

    async fn serve() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let (request, bi) = services(Arc::new(Echo));
        let task = tokio::spawn(async move {
            Server::builder()
                .add_service(request)
                .add_service(bi)
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        (addr, task)
    }

    async fn channel(addr: std::net::SocketAddr) -> Channel {
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn unary(channel: Channel, payload: Payload) -> Result<Payload, Status> {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static(REQUEST_PATH);
        grpc.unary(Request::new(payload), path, codec())
            .await
            .map(Response::into_inner)
    }

    #[tokio::test]
    async fn a_unary_payload_round_trips_over_loopback() {
        let (addr, server) = serve().await;
        let ch = channel(addr).await;
        let mut sent = Payload::new("ServerCheckRequest", r#"{"requestId":"1"}"#);
        if let Some(meta) = sent.metadata.as_mut() {
            meta.client_ip = "10.0.0.7".into();
            meta.headers.insert("app".into(), "demo".into());
        }
        let answer = unary(ch.clone(), sent).await.unwrap();
        assert_eq!(answer.type_name(), "ServerCheckRequestAnswer");
        assert_eq!(answer.json(), br#"{"requestId":"1"}"#);
        // Two calls on one channel come from one connection (one client address).
        let peer = |p: &Payload| p.metadata.as_ref().unwrap().headers["peer"].clone();
        let again = unary(ch, Payload::new("HealthCheckRequest", "{}"))
            .await
            .unwrap();
        assert_eq!(peer(&answer), peer(&again));
        assert!(peer(&answer).starts_with("127.0.0.1:"));
        server.abort();
    }

    #[tokio::test]
    async fn a_stream_carries_payloads_both_ways() {
        let (addr, server) = serve().await;
        let mut grpc = tonic::client::Grpc::new(channel(addr).await);
        grpc.ready().await.unwrap();
        let (tx, mut rx) = mpsc::channel::<Payload>(4);
        let outbound = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let path = http::uri::PathAndQuery::from_static(BI_STREAM_PATH);
        tx.send(Payload::new("ConnectionSetupRequest", r#"{"tenant":""}"#))
            .await
            .unwrap();
        let mut inbound = grpc
            .streaming(Request::new(outbound), path, codec())
            .await
            .unwrap()
            .into_inner();
        let first = inbound.message().await.unwrap().unwrap();
        assert_eq!(first.type_name(), "ConnectionSetupRequestEcho");
        assert_eq!(first.json(), br#"{"tenant":""}"#);
        tx.send(Payload::new(
            "NotifySubscriberResponse",
            r#"{"resultCode":200}"#,
        ))
        .await
        .unwrap();
        let second = inbound.message().await.unwrap().unwrap();
        assert_eq!(second.type_name(), "NotifySubscriberResponseEcho");
        // The client closing its half ends the server's half.
        drop(tx);
        assert!(inbound.message().await.unwrap().is_none());
        server.abort();
    }

    #[tokio::test]
    async fn an_unknown_method_is_unimplemented() {
        let (addr, server) = serve().await;
        let mut grpc = tonic::client::Grpc::new(channel(addr).await);
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static("/Request/nope");
        let status = grpc
            .unary(Request::new(Payload::new("X", "{}")), path, codec())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        server.abort();
    }

    /// The bytes of a Payload as the Python client's generated code writes them (captured from
    /// nacos-sdk-python 3.2.0's ServerCheckRequest): the field numbers are the proto's.
    #[test]
    fn payload_bytes_match_the_nacos_proto() {
        let p = Payload {
            metadata: Some(Metadata {
                r#type: "ServerCheckRequest".into(),
                client_ip: "192.0.2.2".into(),
                headers: HashMap::new(),
            }),
            body: Some(Any {
                type_url: String::new(),
                value: bytes::Bytes::from_static(br#"{}"#),
            }),
        };
        let bytes = p.encode_to_vec();
        let mut want = vec![0x12, 31, 0x1a, 18];
        want.extend_from_slice(b"ServerCheckRequest");
        want.extend_from_slice(&[0x42, 9]);
        want.extend_from_slice(b"192.0.2.2");
        want.extend_from_slice(&[0x1a, 4, 0x12, 2]);
        want.extend_from_slice(b"{}");
        assert_eq!(bytes, want);
        assert_eq!(Payload::decode(&bytes[..]).unwrap(), p);
    }
}
