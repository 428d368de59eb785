//! TLS towards upstreams (`protocol = "h2"` or `"https"`): the rustls client config
//! (system roots or the service's `ca` bundle, an optional client certificate for
//! mTLS) and the hyper-rustls connector with the ALPN of the protocol. The pieces that
//! verify a server ([`roots`], [`verifying`]) are shared with the JWKS fetch client.

use std::sync::Arc;

use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::WantsClientCert;
use rustls::{ClientConfig, ConfigBuilder, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::model::{Protocol, Service};

/// The CA bundle of a service: every certificate in the PEM file.
pub fn read_ca(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read CA bundle {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// Trust anchors for verifying servers: the certificates of a CA bundle, or the
/// system's root certificates (rustls-native-certs) when there is none. An empty store
/// (no system roots found) verifies nothing; callers warn about it.
pub fn roots(ca: Option<&[CertificateDer<'static>]>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(certs) => {
            for c in certs {
                roots
                    .add(c.clone())
                    .map_err(|e| format!("bad CA certificate: {e}"))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::warn!(error = %e, "reading the system's root certificates");
            }
            roots.add_parsable_certificates(native.certs);
        }
    }
    Ok(roots)
}

/// A client config builder that verifies servers against `roots`: TLS 1.3 and 1.2
/// only, ring provider. Upstream TLS and the JWKS fetch client share it.
pub fn verifying(
    roots: RootCertStore,
) -> Result<ConfigBuilder<ClientConfig, WantsClientCert>, String> {
    Ok(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots),
    )
}

/// A client config that trusts no server: every handshake fails. For a client whose
/// configured verification could not be built (never a weaker fallback), and for
/// clients that never speak TLS.
pub fn trust_nothing() -> ClientConfig {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth()
}

/// The rustls client config for `service`.
pub fn client_config(service: &Service) -> Result<ClientConfig, String> {
    let roots = match &service.tls.ca {
        Some(ca) => roots(Some(&read_ca(ca)?)).map_err(|e| format!("{e} (in {})", ca.display()))?,
        None => {
            let r = roots(None)?;
            if r.is_empty() {
                tracing::warn!(service = %service.name, "no system root certificates found: upstream TLS verification will fail; set `ca`");
            }
            r
        }
    };
    let builder = verifying(roots)?;
    match &service.tls.client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read client certificate {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read client key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
    }
}

/// The name to send as SNI and verify: `server_name`, else the first endpoint's DNS
/// name; `None` (use the address itself) when the endpoints are IP literals.
fn server_name(service: &Service) -> Option<ServerName<'static>> {
    let name = service.tls.server_name.clone().or_else(|| {
        service
            .endpoints
            .first()
            .filter(|e| e.addr.is_none())
            .map(|e| e.host.clone())
    })?;
    ServerName::try_from(name).ok()
}

/// The HTTPS connector of `service`, wrapping `http` (which must allow non-`http`
/// URIs). A config that cannot be built (a file changed since `check` read it) is
/// logged, and the service gets a client that trusts nothing: its requests fail their
/// handshake (502) rather than go out with weaker verification than configured.
pub fn connector(service: &Service, http: HttpConnector) -> HttpsConnector<HttpConnector> {
    let cfg = client_config(service).unwrap_or_else(|e| {
        tracing::error!(service = %service.name, error = %e, "upstream TLS config failed; requests to this service will fail");
        trust_nothing()
    });
    let b = HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_only();
    let b = match server_name(service) {
        Some(n) => b.with_server_name_resolver(FixedServerNameResolver::new(n)),
        None => b,
    };
    match service.protocol {
        Protocol::H2 => b.enable_http2().wrap_connector(http),
        _ => b.enable_http1().wrap_connector(http),
    }
}
