//! Phase: shadow traffic. A copy of the request goes to the route's mirror service in
//! a detached task; the client's answer never waits for it. With `compare = true` the
//! task also receives a capped copy of the primary's answer (teed from the streamed
//! body, see [`super::body::Tee`]) and compares the two.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Request, Uri, Version};
use http_body_util::BodyExt as _;
use tokio::sync::oneshot;

use super::UpstreamHead;
use super::body::UpstreamBody;
use crate::gateway::Gateway;
use crate::observe::metrics::MirrorCounter;
use crate::policy::mirror::{Captured, Collector, Mirror, MismatchLog, compare, pick_headers};
use crate::snapshot::Snapshot;
use crate::upstream::Upstream;

/// The primary side's copy, to be attached to the client's response body.
pub struct PrimaryCopy {
    pub mirror: Arc<Mirror>,
    pub tx: oneshot::Sender<Captured>,
    /// The mirror slot, shared with the shadow task.
    pub slot: Arc<tokio::sync::OwnedSemaphorePermit>,
}

/// Start the shadow request when the route mirrors this one. `Some` when the primary's
/// answer is to be compared.
pub fn start(
    gw: &Gateway,
    snap: &Snapshot,
    route_id: usize,
    m: &Arc<Mirror>,
    timeout: Duration,
    head: &UpstreamHead,
    body: &UpstreamBody,
) -> Option<PrimaryCopy> {
    if !m.methods.contains(&head.method) {
        return None;
    }
    if m.per_10000 < 10_000 && fastrand::u32(..10_000) >= m.per_10000 {
        return None;
    }
    let route = snap.route_names[route_id].clone();
    let counter = gw.metrics.mirror_counter();
    // A streamed request body cannot be read twice: only empty and buffered bodies are
    // mirrored.
    let Some(body) = body.try_clone() else {
        counter.inc(&route, "skipped");
        return None;
    };
    let Some(permit) = snap.mirror_slots[route_id]
        .as_ref()
        .and_then(|s| s.clone().try_acquire_owned().ok())
    else {
        counter.inc(&route, "dropped");
        return None;
    };
    let shadow = snap.upstreams[m.service].clone();
    let (tx, rx) = if m.compare {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let task = ShadowTask {
        mirror: m.clone(),
        route,
        counter,
        log: snap.mismatches.clone(),
        shadow,
        head: head.clone(),
        timeout,
    };
    let slot = Arc::new(permit);
    let task_slot = slot.clone();
    // Boxed: the shadow request's future is 4.3 KB, which tokio would copy several
    // times while spawning and first polling the task.
    tokio::spawn(Box::pin(async move {
        let _slot = task_slot;
        task.run(body, rx).await;
    }));
    tx.map(|tx| PrimaryCopy {
        mirror: m.clone(),
        tx,
        slot,
    })
}

struct ShadowTask {
    mirror: Arc<Mirror>,
    route: Arc<str>,
    counter: MirrorCounter,
    log: Arc<MismatchLog>,
    shadow: Arc<Upstream>,
    head: UpstreamHead,
    timeout: Duration,
}

impl ShadowTask {
    async fn run(self, body: UpstreamBody, primary: Option<oneshot::Receiver<Captured>>) {
        let answer = tokio::time::timeout(self.timeout, self.exchange(body)).await;
        let shadow = match answer {
            Ok(Some(c)) => c,
            _ => {
                self.counter.inc(&self.route, "failed");
                return;
            }
        };
        let Some(primary) = primary else {
            self.counter.inc(&self.route, "sent");
            return;
        };
        // The primary's copy arrives when the client has read the whole answer; a
        // client that went away (or a primary failure) drops it: nothing to compare.
        let Ok(Ok(primary)) = tokio::time::timeout(Duration::from_secs(300), primary).await else {
            self.counter.inc(&self.route, "incomplete");
            return;
        };
        if primary.encoded || shadow.encoded {
            self.counter.inc(&self.route, "skipped");
            if self.log.sample() {
                tracing::info!(
                    route = %self.route,
                    request = %format_args!("{} {}", self.head.method, self.head.path_and_query),
                    primary_encoded = primary.encoded,
                    shadow_encoded = shadow.encoded,
                    "mirror comparison skipped: a body has a Content-Encoding other than identity"
                );
            }
            return;
        }
        let diff = compare(&self.mirror, &primary, &shadow);
        if diff.is_empty() {
            self.counter.inc(&self.route, "match");
            return;
        }
        let request = format!("{} {}", self.head.method, self.head.path_and_query);
        let time = time::OffsetDateTime::from(SystemTime::now())
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let entry = serde_json::json!({
            "time": time,
            "route": &*self.route,
            "request": request,
            "primary_status": primary.status,
            "shadow_status": shadow.status,
            "diff": diff,
        });
        if self.log.sample() {
            tracing::info!(route = %self.route, request = %request, diff = ?entry["diff"], "mirror mismatch");
        }
        self.log.push(entry);
        // Counted once the entry is on the admin API: a reader that saw the count
        // finds the report.
        self.counter.inc(&self.route, "mismatch");
    }

    /// Send the copy and read the shadow's answer (capped, hashed).
    async fn exchange(&self, body: UpstreamBody) -> Option<Captured> {
        let target = self.shadow.pick()?;
        let uri = Uri::from(self.head.path_and_query.clone());
        let mut req = Request::new(body);
        *req.method_mut() = self.head.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = self.head.headers.clone();
        let resp = self
            .shadow
            .client
            .request(
                &target,
                &self.shadow.scheme,
                &mut req,
                &self.head.gateway_fields,
                true,
            )
            .await
            .ok()?;
        let status = resp.status().as_u16();
        if crate::policy::mirror::is_encoded(resp.headers()) {
            // Not comparable: drain without copying.
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                frame.ok()?;
            }
            return Some(Captured::encoded(status));
        }
        let headers = pick_headers(&self.mirror, resp.headers());
        let mut body = resp.into_body();
        let mut c = Collector::new(self.mirror.max_compare_body);
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame.ok()?.data_ref() {
                c.push(d);
            }
        }
        Some(c.finish(status, headers))
    }
}
