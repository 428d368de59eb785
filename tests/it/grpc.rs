//! gRPC through the gateway: a tonic client (h2c, prior knowledge) and a tonic server
//! (h2c upstream). Messages are hand-written prost structs and the services use
//! tonic's codec directly, so no protoc and no build script are needed.

use std::convert::Infallible;
use std::pin::Pin;

use http::uri::PathAndQuery;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::codegen::tokio_stream::{self, Stream};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use crate::support::*;

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub text: String,
}

const UNARY: &str = "/test.Echo/Unary";
const STREAM: &str = "/test.Echo/Stream";

// === server ===

struct Unary;

impl tonic::server::UnaryService<EchoRequest> for Unary {
    type Response = EchoReply;
    type Future =
        Pin<Box<dyn Future<Output = Result<tonic::Response<EchoReply>, Status>> + Send + 'static>>;
    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        Box::pin(async move {
            let text = req.into_inner().text;
            if text == "deny" {
                return Err(Status::permission_denied("denied by the test server"));
            }
            Ok(tonic::Response::new(EchoReply {
                text: format!("echo: {text}"),
            }))
        })
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send + 'static>>;

struct Streamer;

impl tonic::server::ServerStreamingService<EchoRequest> for Streamer {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = Pin<
        Box<dyn Future<Output = Result<tonic::Response<ReplyStream>, Status>> + Send + 'static>,
    >;
    /// `count` replies, then a NOT_FOUND status with a custom trailer: the status and
    /// the trailer arrive in the HTTP/2 trailers, after the data.
    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        Box::pin(async move {
            let r = req.into_inner();
            let mut items: Vec<Result<EchoReply, Status>> = (0..r.count)
                .map(|i| {
                    Ok(EchoReply {
                        text: format!("{} {i}", r.text),
                    })
                })
                .collect();
            let mut md = tonic::metadata::MetadataMap::new();
            md.insert("x-trailer", "from-upstream".parse().unwrap());
            items.push(Err(Status::with_metadata(
                Code::NotFound,
                "no more items",
                md,
            )));
            let s: ReplyStream = Box::pin(tokio_stream::iter(items));
            Ok(tonic::Response::new(s))
        })
    }
}

/// A gRPC server (HTTP/2 without TLS) on 127.0.0.1:0.
async fn grpc_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                    let resp = match req.uri().path() {
                        UNARY => grpc.unary(Unary, req).await,
                        STREAM => grpc.server_streaming(Streamer, req).await,
                        _ => Status::unimplemented("no such method").into_http(),
                    };
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

// === client ===

async fn channel(gw: &Gateway) -> tonic::client::Grpc<tonic::transport::Channel> {
    let ch = tonic::transport::Channel::from_shared(gw.url(""))
        .unwrap()
        .connect()
        .await
        .expect("connect to the gateway");
    tonic::client::Grpc::new(ch)
}

async fn unary(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    text: &str,
) -> Result<tonic::Response<EchoReply>, Status> {
    client.ready().await.expect("ready");
    let req = tonic::Request::new(EchoRequest {
        text: text.into(),
        count: 0,
    });
    client
        .unary(req, PathAndQuery::from_static(UNARY), ProstCodec::default())
        .await
}

fn grpc_config(endpoint: &str) -> String {
    config(&format!(
        "[services.grpc]\nendpoints = [\"{endpoint}\"]\nprotocol = \"h2c\"\n\n\
         [[routes]]\nname = \"grpc\"\npath = \"/test.Echo\"\nservice = \"grpc\"\n"
    ))
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_server_streaming_calls_pass_with_status_and_trailers() {
    let (addr, _server) = grpc_server().await;
    let gw = Gateway::start(&grpc_config(&addr.to_string()));
    let mut client = channel(&gw).await;

    let reply = unary(&mut client, "hello").await.expect("unary call");
    assert_eq!(reply.get_ref().text, "echo: hello");
    assert!(
        reply.metadata().get("x-request-id").is_some(),
        "the gateway's request id rides along"
    );

    let status = unary(&mut client, "deny").await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "denied by the test server");

    client.ready().await.unwrap();
    let req = tonic::Request::new(EchoRequest {
        text: "item".into(),
        count: 5,
    });
    let mut stream = client
        .server_streaming::<_, EchoReply, _>(
            req,
            PathAndQuery::from_static(STREAM),
            ProstCodec::default(),
        )
        .await
        .expect("stream call")
        .into_inner();
    let mut got = Vec::new();
    let status = loop {
        match stream.message().await {
            Ok(Some(m)) => got.push(m.text),
            Ok(None) => panic!("the stream ended without the upstream's status"),
            Err(s) => break s,
        }
    };
    assert_eq!(got, ["item 0", "item 1", "item 2", "item 3", "item 4"]);
    assert_eq!(
        status.code(),
        Code::NotFound,
        "grpc-status from the trailers"
    );
    assert_eq!(status.message(), "no more items");
    assert_eq!(
        status.metadata().get("x-trailer").unwrap(),
        "from-upstream",
        "custom trailers pass through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_errors_are_grpc_statuses() {
    // A port with nothing listening: connect fails -> UNAVAILABLE.
    let port = free_port();
    let gw = Gateway::start(&grpc_config(&format!("127.0.0.1:{port}")));
    let mut client = channel(&gw).await;
    let status = unary(&mut client, "hello").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "upstream_connect_failed");

    // No route for the method: UNIMPLEMENTED rather than an HTTP 404 page.
    client.ready().await.unwrap();
    let status = client
        .unary::<_, EchoReply, _>(
            tonic::Request::new(EchoRequest::default()),
            PathAndQuery::from_static("/other.Service/Method"),
            ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(status.message(), "no_route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_is_deadline_exceeded() {
    // An h2 server that never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|_req: http::Request<hyper::body::Incoming>| async move {
                    std::future::pending::<()>().await;
                    Ok::<_, Infallible>(http::Response::new(empty()))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let toml = grpc_config(&addr.to_string()).replace(
        "service = \"grpc\"\n",
        "service = \"grpc\"\ntimeout = \"300ms\"\n",
    );
    let gw = Gateway::start(&toml);
    let mut client = channel(&gw).await;
    let status = unary(&mut client, "hello").await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "upstream_timeout");
}
