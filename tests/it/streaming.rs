//! Bodies stream through in both directions without being buffered whole.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::support::*;

const SIZE: u64 = 256 * 1024 * 1024;
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// A body of `left` bytes produced 64 KiB at a time, never held whole.
struct Generated {
    left: u64,
    chunk: Bytes,
}

impl Generated {
    fn new(size: u64) -> Self {
        Generated {
            left: size,
            chunk: Bytes::from(vec![b'x'; 64 * 1024]),
        }
    }
}

impl HttpBody for Generated {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

async fn count<B: HttpBody<Data = Bytes> + Unpin>(mut body: B) -> u64
where
    B::Error: std::fmt::Debug,
{
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            n += data.len() as u64;
        }
    }
    n
}

fn route_to(up: &Upstream) -> String {
    config(&format!(
        "[server]\naccess_log = \"off\"\n[services.s]\nendpoints = [{}]\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"s\"\nmax_body = \"1GiB\"\n",
        up.endpoint()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_upload_streams_with_flat_memory() {
    let up = Upstream::start(|req| async move {
        let n = count(req.into_body()).await;
        text(n.to_string())
    })
    .await;
    let gw = Gateway::start(&route_to(&up));
    let req = http::Request::post(gw.url("/upload"))
        .body(Generated::new(SIZE).boxed())
        .unwrap();
    let a = send(&client(), req).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, SIZE.to_string());
    let rss = gw.peak_rss_kib();
    eprintln!("256 MiB upload: gateway peak RSS {rss} KiB");
    assert!(rss < RSS_LIMIT_KIB, "gateway peak RSS {rss} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_download_streams_with_flat_memory() {
    let up =
        Upstream::start(|_req| async move { http::Response::new(Generated::new(SIZE).boxed()) })
            .await;
    let gw = Gateway::start(&route_to(&up));
    let resp = client()
        .request(
            http::Request::get(gw.url("/download"))
                .body(empty())
                .unwrap(),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], SIZE.to_string());
    assert_eq!(count(resp.into_body()).await, SIZE);
    let rss = gw.peak_rss_kib();
    eprintln!("256 MiB download: gateway peak RSS {rss} KiB");
    assert!(rss < RSS_LIMIT_KIB, "gateway peak RSS {rss} KiB");
}
