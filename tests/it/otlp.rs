//! OTLP span export: real OTLP/HTTP and OTLP/gRPC receivers on loopback decode what the
//! gateway's `opentelemetry-otlp` exporter sends.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

use crate::support::*;

/// An OTLP/gRPC receiver: `TraceService/Export` served by tonic's gRPC codec over an
/// HTTP/2 server (messages from `opentelemetry-proto`, no protoc).
struct GrpcReceiver {
    addr: std::net::SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Export(Arc<Mutex<Vec<Span>>>);

impl tonic::server::UnaryService<ExportTraceServiceRequest> for Export {
    type Response = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<tonic::Response<Self::Response>, tonic::Status>>
                + Send,
        >,
    >;
    fn call(&mut self, req: tonic::Request<ExportTraceServiceRequest>) -> Self::Future {
        let store = self.0.clone();
        Box::pin(async move {
            for rs in req.into_inner().resource_spans {
                for ss in rs.scope_spans {
                    store.lock().unwrap().extend(ss.spans);
                }
            }
            Ok(tonic::Response::new(Default::default()))
        })
    }
}

impl GrpcReceiver {
    async fn start() -> GrpcReceiver {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let store = spans.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let store = store.clone();
                            async move {
                                let mut grpc =
                                    tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                                let resp = match req.uri().path() {
                                    "/opentelemetry.proto.collector.trace.v1.TraceService/Export" => {
                                        grpc.unary(Export(store), req).await
                                    }
                                    _ => tonic::Status::unimplemented("no such method").into_http(),
                                };
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        GrpcReceiver { addr, spans, task }
    }
}

impl Drop for GrpcReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An OTLP/HTTP receiver: every span of every export request, with the resource's
/// `service.name`.
struct Receiver {
    up: Upstream,
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let spans: Arc<Mutex<Vec<(String, Span)>>> = Arc::default();
        let store = spans.clone();
        let up = Upstream::start(move |req| {
            let store = store.clone();
            async move {
                assert_eq!(req.uri().path(), "/v1/traces");
                assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let export = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                for rs in export.resource_spans {
                    let service = rs
                        .resource
                        .as_ref()
                        .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                            AnyValue::StringValue(s) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for span in ss.spans {
                            store.lock().unwrap().push((service.clone(), span));
                        }
                    }
                }
                text("")
            }
        })
        .await;
        Receiver { up, spans }
    }

    fn url(&self) -> String {
        format!("http://{}/v1/traces", self.up.addr)
    }

    /// Wait until `n` spans have arrived.
    async fn wait_for(&self, n: usize) -> Vec<(String, Span)> {
        wait_spans(&self.spans, n).await
    }
}

/// Wait until a receiver's store holds `n` spans; all of them.
async fn wait_spans<T: Clone>(store: &Mutex<Vec<T>>, n: usize) -> Vec<T> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = store.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} spans arrived",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn traced(up: &Upstream, tracing: &str) -> String {
    config(&format!(
        "[tracing]\n{tracing}\n[services.users]\nendpoints = [{}]\n\
         [[routes]]\nname = \"users-api\"\npath = \"/users\"\nservice = \"users\"\n",
        up.endpoint()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_exports_a_server_span_and_a_client_span_per_try() {
    let receiver = Receiver::start().await;
    let up = Upstream::echo("users").await;
    let gw = Gateway::start(&traced(
        &up,
        &format!("otlp = \"{}\"\nservice_name = \"edge\"", receiver.url()),
    ));
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = http::Request::get(gw.url("/users/7"))
        .header("traceparent", tp)
        .body(empty())
        .unwrap();
    let a = send(&client(), req).await;
    assert_eq!(a.status, 200);
    let upstream_saw = a.json()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();

    let spans = receiver.wait_for(2).await;
    assert_eq!(spans.len(), 2, "one server span and one client span");
    assert!(spans.iter().all(|(service, _)| service == "edge"));
    let server = &spans
        .iter()
        .find(|(_, s)| s.kind == 2)
        .expect("server span")
        .1;
    let client = &spans
        .iter()
        .find(|(_, s)| s.kind == 3)
        .expect("client span")
        .1;
    // Same trace as the caller's; the server span's parent is the caller's span.
    assert_eq!(hex(&server.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&client.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&server.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(client.parent_span_id, server.span_id);
    // The upstream was told the try span is its parent.
    assert_eq!(&upstream_saw[36..52], hex(&client.span_id));
    assert_eq!(server.name, "GET users-api");
    assert_eq!(
        attr(server, "http.route"),
        Some(&AnyValue::StringValue("users-api".into()))
    );
    assert_eq!(
        attr(server, "http.response.status_code"),
        Some(&AnyValue::IntValue(200))
    );
    assert_eq!(
        attr(client, "server.port"),
        Some(&AnyValue::IntValue(i64::from(up.addr.port())))
    );
    assert!(server.end_time_unix_nano >= server.start_time_unix_nano);
    assert!(client.start_time_unix_nano >= server.start_time_unix_nano);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_to_a_grpc_receiver_with_the_callers_trace_id() {
    let receiver = GrpcReceiver::start().await;
    let up = Upstream::echo("users").await;
    let gw = Gateway::start(&traced(
        &up,
        &format!(
            "otlp = \"http://{}\"\notlp_protocol = \"grpc\"",
            receiver.addr
        ),
    ));
    let c = client();
    for i in 0..10u8 {
        let tp = format!("00-{:032x}-00f067aa0ba902b7-01", u128::from(i) + 1);
        let req = http::Request::get(gw.url("/users/1"))
            .header("traceparent", &tp)
            .body(empty())
            .unwrap();
        let a = send(&c, req).await;
        assert_eq!(a.status, 200);
        // The upstream sees the same trace.
        assert_eq!(
            &a.json()["headers"]["traceparent"].as_str().unwrap()[3..35],
            &tp[3..35]
        );
    }
    let spans = wait_spans(&receiver.spans, 20).await;
    let servers: Vec<&Span> = spans.iter().filter(|s| s.kind == 2).collect();
    assert_eq!(servers.len(), 10, "one server span per request");
    assert_eq!(spans.len(), 20, "and one client span per try");
    for i in 0..10u128 {
        let id = format!("{:032x}", i + 1);
        assert!(
            servers.iter().any(|s| hex(&s.trace_id) == id),
            "a server span of trace {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_requests_export_nothing_and_the_callers_flag_is_kept() {
    let receiver = Receiver::start().await;
    let up = Upstream::echo("users").await;
    let gw = Gateway::start(&traced(
        &up,
        &format!("otlp = \"{}\"\nsample_ratio = 0.0", receiver.url()),
    ));
    let c = client();
    for i in 0..20 {
        // New traces at ratio 0, and continued traces the caller did not sample.
        let mut req = http::Request::get(gw.url("/users/1"));
        if i % 2 == 1 {
            req = req.header(
                "traceparent",
                "00-11111111111111111111111111111111-2222222222222222-00",
            );
        }
        let a = send(&c, req.body(empty()).unwrap()).await;
        assert_eq!(a.status, 200);
        let sent = a.json()["headers"]["traceparent"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(sent.ends_with("-00"), "unsampled upstream header {sent}");
    }
    // A caller that samples its trace is recorded even at ratio 0.
    let req = http::Request::get(gw.url("/users/2"))
        .header(
            "traceparent",
            "00-33333333333333333333333333333333-4444444444444444-01",
        )
        .body(empty())
        .unwrap();
    assert_eq!(send(&c, req).await.status, 200);
    let spans = receiver.wait_for(2).await;
    assert!(
        spans
            .iter()
            .all(|(_, s)| hex(&s.trace_id) == "33333333333333333333333333333333"),
        "only the sampled trace is exported"
    );
    assert_eq!(spans.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_counted_failures_not_latency() {
    let up = Upstream::echo("users").await;
    let dead = format!("http://127.0.0.1:{}/v1/traces", free_port());
    let gw = Gateway::start(&traced(&up, &format!("otlp = \"{dead}\"")));
    let c = client();
    for _ in 0..50 {
        let started = Instant::now();
        assert_eq!(get(&c, &gw.url("/users/1")).await.status, 200);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics =
            String::from_utf8(get(&c, &gw.admin_url("/metrics")).await.body.to_vec()).unwrap();
        let failed = metrics
            .lines()
            .find_map(|l| l.strip_prefix("switchyard_trace_spans_failed_total "))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if failed == 100 {
            assert!(metrics.contains("switchyard_trace_spans_exported_total 0"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{failed} failed spans counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tracing_settings_are_config_errors() {
    for (tracing, expect) in [
        ("otlp = \"not a url\"", "SY008"),
        ("otlp = \"https://collector:4318/v1/traces\"", "SY019"),
        ("sample_ratio = 1.5", "SY007"),
        ("sample_ratio = -0.1", "SY007"),
        ("service_name = \"\"", "SY011"),
        ("sampling = 0.5", "SY002"),
        ("otlp_protocol = \"thrift\"", "SY019"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.toml");
        std::fs::write(&path, format!("[tracing]\n{tracing}\n")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("check")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{tracing}: {stderr}");
        assert!(
            stderr.contains(&format!("error[{expect}]")) && stderr.contains("routes.toml:2:"),
            "{tracing}: {stderr}"
        );
    }
}
