//! TLS termination: certificates, the SNI resolver, the rustls server config, and the
//! watcher that reloads certificates when their files change.
//!
//! The certificate table lives in the [`CertStore`] (an `ArcSwap`), not in the config
//! snapshot: a Kubernetes Secret update changes the files without touching
//! `routes.toml`, and must reach new handshakes without a config reload. Each handshake
//! reads the table once through [`Resolver`] (rustls's per-handshake
//! `ResolvesServerCert`); established connections keep the certificate they were
//! served.
//!
//! A reload reads every pair again. A pair that cannot be read, does not parse or whose
//! key does not match its certificate is logged and the pair loaded before stays in
//! service; the other pairs are updated.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;
use crate::config::model::{CertPair, Tls};

/// A certificate that expires within this many days gets a `check` warning.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// Why a certificate/key pair could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertError {
    /// The certificate file could not be read or holds no PEM certificate.
    Cert(String),
    /// The key file could not be read or holds no PEM private key.
    Key(String),
    /// The key is not the certificate's key (or is of an unsupported type).
    Mismatch(String),
}

impl std::fmt::Display for CertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertError::Cert(m) | CertError::Key(m) | CertError::Mismatch(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CertError {}

/// One loaded certificate/key pair and what the admin API shows about it.
#[derive(Debug)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// DNS names of the certificate (SANs; the CN when there are none), lower case;
    /// wildcards as `*.example.com`.
    pub names: Vec<String>,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl LoadedCert {
    /// Whole days until expiry (negative once expired).
    pub fn days_left(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        (self.not_after - now).div_euclid(86_400)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read a PEM certificate chain and key, check that they belong together, and read the
/// certificate's names and expiry.
pub fn load_pair(cert_path: &Path, key_path: &Path) -> Result<LoadedCert, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            CertError::Cert(format!(
                "cannot read certificate {}: {e}",
                cert_path.display()
            ))
        })?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::Cert(format!(
            "{} holds no PEM certificate",
            cert_path.display()
        )));
    };
    let (names, not_after) = describe(leaf).map_err(|e| {
        CertError::Cert(format!(
            "cannot parse certificate {}: {e}",
            cert_path.display()
        ))
    })?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        CertError::Key(format!(
            "cannot read private key {}: {e}",
            key_path.display()
        ))
    })?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(_) => "it is not the certificate's key".to_string(),
            other => other.to_string(),
        };
        CertError::Mismatch(format!(
            "private key {} does not fit certificate {}: {why}",
            key_path.display(),
            cert_path.display()
        ))
    })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
        not_after,
        cert_path: cert_path.to_path_buf(),
        key_path: key_path.to_path_buf(),
    })
}

/// DNS names and `notAfter` of a DER certificate.
fn describe(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// `check`: read every certificate pair of the config. Errors for files that cannot be
/// used, warnings for certificates that expire within [`EXPIRY_WARNING_DAYS`]; an error
/// when `[tls] default` names no certificate.
pub fn check_files(config: &crate::config::Config) -> Vec<ConfigError> {
    let mut out = Vec::new();
    let mut all_names = Vec::new();
    for pair in &config.tls.certificates {
        match load_pair(&pair.cert, &pair.key) {
            Ok(c) => {
                let days = c.days_left();
                if c.not_after
                    < SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64)
                {
                    out.push(ConfigError::warning(
                        "SY027",
                        Some(pair.cert_span.clone()),
                        format!("certificate {} has expired", pair.cert.display()),
                    ));
                } else if days < EXPIRY_WARNING_DAYS {
                    out.push(ConfigError::warning(
                        "SY027",
                        Some(pair.cert_span.clone()),
                        format!(
                            "certificate {} expires in {days} day{}",
                            pair.cert.display(),
                            if days == 1 { "" } else { "s" }
                        ),
                    ));
                }
                if c.names.is_empty() {
                    out.push(ConfigError::warning(
                        "SY027",
                        Some(pair.cert_span.clone()),
                        format!(
                            "certificate {} names no DNS name: only clients without SNI get it",
                            pair.cert.display()
                        ),
                    ));
                }
                all_names.extend(c.names);
            }
            Err(e) => {
                let span = match e {
                    CertError::Key(_) | CertError::Mismatch(_) => pair.key_span.clone(),
                    CertError::Cert(_) => pair.cert_span.clone(),
                };
                out.push(ConfigError::new("SY026", Some(span), e.to_string()));
            }
        }
    }
    for s in config.services.iter().filter(|s| s.protocol.is_tls()) {
        let [ca_span, cert_span, key_span] = &s.tls.spans;
        if let Some(ca) = &s.tls.ca
            && let Err(e) = crate::upstream::tls::read_ca(ca)
        {
            out.push(ConfigError::new("SY026", ca_span.0.clone(), e));
        }
        if let Some((cert, key)) = &s.tls.client_cert
            && let Err(e) = load_pair(cert, key)
        {
            let span = match e {
                CertError::Cert(_) => cert_span,
                CertError::Key(_) | CertError::Mismatch(_) => key_span,
            };
            out.push(ConfigError::new("SY026", span.0.clone(), e.to_string()));
        }
    }
    if let Some(d) = &config.tls.default
        && !all_names.is_empty()
        && pick(&all_names, d).is_none()
    {
        out.push(
            ConfigError::new(
                "SY026",
                None,
                format!("[tls] default `{d}` is not a name of any certificate"),
            )
            .help(format!("names: {}", all_names.join(", "))),
        );
    }
    out
}

/// Index of the first name in `names` that covers `host` (exact, then `*.` one label).
fn pick(names: &[String], host: &str) -> Option<usize> {
    names.iter().position(|n| n == host).or_else(|| {
        let (_, parent) = host.split_once('.')?;
        names
            .iter()
            .position(|n| n.strip_prefix("*.") == Some(parent))
    })
}

// === impl CertStore ===

/// The certificates in service: looked up by SNI on every handshake.
#[derive(Debug, Default)]
pub struct Table {
    pub certs: Vec<Arc<LoadedCert>>,
    exact: HashMap<String, usize>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, usize>,
    default: Option<usize>,
}

impl Table {
    fn new(certs: Vec<Arc<LoadedCert>>, default: Option<&str>) -> Table {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        // The first certificate that names a host wins, as in the file's order.
        for (i, c) in certs.iter().enumerate() {
            for n in &c.names {
                match n.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(i),
                    None => exact.entry(n.clone()).or_insert(i),
                };
            }
        }
        let mut t = Table {
            certs,
            exact,
            wildcard,
            default: None,
        };
        t.default = match default {
            Some(d) => t.lookup(d),
            None => None,
        }
        .or_else(|| (!t.certs.is_empty()).then_some(0));
        t
    }

    fn lookup(&self, host: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(host) {
            return Some(i);
        }
        let (_, parent) = host.split_once('.')?;
        self.wildcard.get(parent).copied()
    }

    /// The certificate for `sni` (lower-cased by rustls), or the default one.
    pub fn resolve(&self, sni: Option<&str>) -> Option<&Arc<LoadedCert>> {
        let i = sni.and_then(|n| self.lookup(n)).or(self.default)?;
        self.certs.get(i)
    }

    /// Index of the default certificate.
    pub fn default_index(&self) -> Option<usize> {
        self.default
    }
}

/// The live certificate table, swapped whole on reload.
#[derive(Debug, Default)]
pub struct CertStore {
    table: ArcSwap<Table>,
    /// The `[tls]` section the table was built from (for reloads triggered by files).
    spec: Mutex<Tls>,
}

impl CertStore {
    /// The table now in service.
    pub fn table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// Read `spec`'s files and swap in the new table. A pair that fails keeps the
    /// certificate loaded before from the same files, if any. Returns how many pairs
    /// failed.
    pub fn reload(&self, spec: &Tls) -> usize {
        let old = self.table.load_full();
        let mut certs = Vec::with_capacity(spec.certificates.len());
        let mut failed = 0;
        let mut changed = spec.certificates.len() != old.certs.len();
        for pair in &spec.certificates {
            let previous = old
                .certs
                .iter()
                .find(|c| c.cert_path == pair.cert && c.key_path == pair.key);
            match load_pair(&pair.cert, &pair.key) {
                Ok(c) => {
                    let same = previous.is_some_and(|p| p.key.cert == c.key.cert);
                    if !same {
                        changed = true;
                        if previous.is_some() {
                            tracing::info!(cert = %pair.cert.display(), names = ?c.names, not_after = c.not_after, "certificate reloaded");
                        }
                    }
                    match previous {
                        Some(p) if same => certs.push(p.clone()),
                        _ => certs.push(Arc::new(c)),
                    }
                }
                Err(e) => {
                    failed += 1;
                    match previous {
                        Some(p) => {
                            tracing::error!(cert = %pair.cert.display(), error = %e, "certificate reload rejected; keeping the one in service");
                            certs.push(p.clone());
                        }
                        None => {
                            changed = true;
                            tracing::error!(cert = %pair.cert.display(), error = %e, "certificate not loaded");
                        }
                    }
                }
            }
        }
        let mut guard = self.spec.lock().unwrap_or_else(|e| e.into_inner());
        if changed || *guard != *spec {
            self.table
                .store(Arc::new(Table::new(certs, spec.default.as_deref())));
            *guard = spec.clone();
        }
        failed
    }
}

// === impl Resolver ===

/// rustls's hook: picks the certificate per handshake from the live table.
#[derive(Debug)]
pub struct Resolver(pub Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.0.table.load();
        table.resolve(hello.server_name()).map(|c| c.key.clone())
    }
}

/// The server config of the HTTPS listener: TLS 1.2 and 1.3, ALPN h2 and http/1.1,
/// session tickets (and the in-memory session cache for TLS 1.2 session ids).
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(store)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    Ok(Arc::new(cfg))
}

// === certificate watcher ===

/// Directories holding the certificate and key files of `spec`.
fn watched_dirs(spec: &Tls) -> BTreeSet<PathBuf> {
    spec.certificates
        .iter()
        .flat_map(|p: &CertPair| [&p.cert, &p.key])
        .map(|p| crate::config::config_dir(p).to_path_buf())
        .collect()
}

/// Watch the directories of the certificate files and reload the table on any change
/// there (a write, a rename over the file, or a Kubernetes `..data` symlink swap).
/// Signal the returned sender after a config reload so that new directories are
/// watched too.
pub fn spawn_watcher(
    gw: Arc<crate::gateway::Gateway>,
    shutdown: CancellationToken,
) -> mpsc::UnboundedSender<()> {
    let (rewatch_tx, mut rewatch) = mpsc::unbounded_channel::<()>();
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && !matches!(event.kind, notify::EventKind::Access(_))
        {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch certificate files; they reload on SIGHUP only");
            None
        }
    };
    let mut watched = BTreeSet::new();
    watch_new_dirs(&gw.snapshot().config.tls, watcher.as_mut(), &mut watched);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(()) = rewatch.recv() => {
                    watch_new_dirs(&gw.snapshot().config.tls, watcher.as_mut(), &mut watched);
                    continue;
                }
                Some(()) = rx.recv() => {
                    // Let a burst (write, rename, symlink swap) settle into one reload.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while rx.try_recv().is_ok() {}
                }
            }
            let gw = gw.clone();
            // Reading and parsing files is blocking work.
            let _ = tokio::task::spawn_blocking(move || gw.reload_certificates()).await;
        }
    });
    rewatch_tx
}

fn watch_new_dirs(
    spec: &Tls,
    watcher: Option<&mut notify::RecommendedWatcher>,
    watched: &mut BTreeSet<PathBuf>,
) {
    let Some(w) = watcher else { return };
    for dir in watched_dirs(spec) {
        if watched.contains(&dir) {
            continue;
        }
        match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.insert(dir);
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch certificate directory")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_covers_one_label_only() {
        let names = vec!["*.example.com".to_string(), "example.com".to_string()];
        assert_eq!(pick(&names, "a.example.com"), Some(0));
        assert_eq!(pick(&names, "example.com"), Some(1));
        assert_eq!(pick(&names, "a.b.example.com"), None);
    }
}
