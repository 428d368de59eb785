//! DNS for upstream endpoints, with `hickory-resolver`: asynchronous lookups (no thread
//! per lookup, unlike `getaddrinfo`) that report how long the answer is valid, so a name
//! is looked up again when its TTL runs out rather than on a fixed clock.
//!
//! By default the resolver reads `/etc/resolv.conf` (name servers, search domains,
//! `ndots`: what Kubernetes writes into a pod) and `/etc/hosts`. `[dns] servers` names
//! the servers explicitly instead. When the system configuration cannot be read, lookups
//! fall back to the system's `getaddrinfo` with the `dns_refresh` interval.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

/// A resolver for upstream names.
#[derive(Clone)]
pub struct Dns {
    inner: Option<TokioResolver>,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.inner.is_some() {
            "Dns(hickory)"
        } else {
            "Dns(getaddrinfo)"
        })
    }
}

/// The addresses of a name and until when they are valid (`None`: unknown).
#[derive(Debug)]
pub struct Answer {
    pub addrs: Vec<SocketAddr>,
    pub valid_until: Option<Instant>,
}

impl Dns {
    /// The process-wide resolver from the system configuration.
    pub fn system() -> Arc<Dns> {
        static SYSTEM: OnceLock<Arc<Dns>> = OnceLock::new();
        SYSTEM
            .get_or_init(|| {
                let built = TokioResolver::builder_tokio().and_then(|mut b| {
                    tune(b.options_mut());
                    b.build()
                });
                let inner = match built {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the system DNS configuration; using getaddrinfo");
                        None
                    }
                };
                Arc::new(Dns { inner })
            })
            .clone()
    }

    /// A resolver that asks these servers (UDP, TCP for truncated answers).
    pub fn with_servers(servers: &[SocketAddr]) -> Result<Arc<Dns>, String> {
        let name_servers = servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        let config = ResolverConfig::from_name_servers(name_servers);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        tune(builder.options_mut());
        let resolver = builder.build().map_err(|e| e.to_string())?;
        Ok(Arc::new(Dns {
            inner: Some(resolver),
        }))
    }

    /// Look up `host` (a name, not an IP literal).
    pub async fn lookup(&self, host: &str, port: u16) -> Result<Answer, String> {
        let (mut addrs, valid_until): (Vec<SocketAddr>, _) = match &self.inner {
            Some(r) => {
                let found = r.lookup_ip(host).await.map_err(|e| e.to_string())?;
                let addrs = found.iter().map(|ip: IpAddr| SocketAddr::new(ip, port));
                (addrs.collect(), Some(found.valid_until()))
            }
            None => {
                let found = tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|e| e.to_string())?;
                (found.collect(), None)
            }
        };
        addrs.sort();
        addrs.dedup();
        Ok(Answer { addrs, valid_until })
    }
}

/// Lookups run in the background, but a dead name server should still be noticed (and
/// logged) within seconds, not after hickory's default 5 s × 2 tries per server.
fn tune(o: &mut ResolverOpts) {
    o.timeout = Duration::from_secs(2);
    o.attempts = 1;
}

/// When to look names up again: when the earliest answer expires, but no sooner than
/// one second (a TTL of 0 must not turn into a busy loop) and no later than `every`.
pub fn next_refresh(valid_until: Option<Instant>, every: Duration, now: Instant) -> Duration {
    const MIN: Duration = Duration::from_secs(1);
    match valid_until {
        Some(t) => t.saturating_duration_since(now).clamp(MIN, every.max(MIN)),
        None => every,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_follows_the_ttl_within_bounds() {
        let now = Instant::now();
        let every = Duration::from_secs(30);
        assert_eq!(
            next_refresh(Some(now + Duration::from_secs(5)), every, now),
            Duration::from_secs(5)
        );
        assert_eq!(
            next_refresh(Some(now + Duration::from_secs(300)), every, now),
            every
        );
        assert_eq!(next_refresh(Some(now), every, now), Duration::from_secs(1));
        assert_eq!(next_refresh(None, every, now), every);
    }
}
