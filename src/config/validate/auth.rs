//! `[auth.NAME]` and `[identity]`: algorithms, key sources, claims, headers. Key
//! material (JWKS files, secrets, signing keys) is read here, so `check` reports an
//! unreadable or malformed key file at the value that names it.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use toml::Spanned;

use super::{Validator, did_you_mean, gateway_owned_header, is_name, parse_duration, span};
use crate::config::file::{self, OneOrMany, SStr};
use crate::config::model::{AuthPolicy, CaBundle, Identity, KeySource, Secret};

const ALGORITHMS: &str =
    "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512";

impl Validator<'_> {
    /// Every `[auth.NAME]`, in name order.
    pub(super) fn auth_policies(
        &mut self,
        policies: &BTreeMap<SStr, Spanned<file::AuthPolicyFile>>,
    ) -> Vec<AuthPolicy> {
        let mut out = Vec::new();
        for (name, p) in policies {
            if !is_name(name.get_ref()) {
                self.err(
                    "SY003",
                    span(name),
                    format!("auth policy name `{}` is not valid", name.get_ref()),
                )
                .help = Some("names use lower-case letters, digits and `-`".into());
            }
            if let Some(policy) = self.auth_policy(name.get_ref(), p) {
                out.push(policy);
            }
        }
        out
    }

    fn auth_policy(&mut self, name: &str, p: &Spanned<file::AuthPolicyFile>) -> Option<AuthPolicy> {
        let ps = p.span();
        let p = p.get_ref();
        let algorithms = self.algorithms(&p.algorithms)?;
        let hmac = algorithms
            .iter()
            .any(|a| a.family() == AlgorithmFamily::Hmac);
        let keys = match (&p.jwks, &p.secret_file) {
            (Some(_), Some(s)) => {
                self.err(
                    "SY028",
                    span(s),
                    "a policy has either `jwks` or `secret_file`, not both",
                );
                return None;
            }
            (None, None) => {
                self.err(
                    "SY028",
                    Some(ps),
                    format!("auth policy `{name}` has no keys"),
                )
                .help = Some("add jwks = \"file:jwks.json\" or jwks = \"https://…\"".into());
                return None;
            }
            (Some(j), None) if hmac => {
                self.err(
                    "SY028",
                    span(j),
                    "HMAC algorithms need `secret_file`; a JWKS never supplies an HMAC secret",
                );
                return None;
            }
            (None, Some(s)) if !hmac => {
                self.err(
                    "SY028",
                    span(s),
                    "`secret_file` is for HS256/HS384/HS512 only",
                )
                .help = Some("public-key algorithms take their keys from `jwks`".into());
                return None;
            }
            (Some(j), None) => self.jwks_source(j, p)?,
            (None, Some(s)) => {
                if let Some(ca) = &p.jwks_ca {
                    self.err("SY028", span(ca), "`jwks_ca` is for https JWKS URLs only");
                    return None;
                }
                let bytes = self.read_file(s)?;
                let trimmed = bytes.trim_ascii().to_vec();
                if trimmed.len() < 32 {
                    self.err(
                        "SY029",
                        span(s),
                        format!(
                            "the secret in `{}` is {} bytes; HMAC secrets need at least 32",
                            s.get_ref(),
                            trimmed.len()
                        ),
                    );
                    return None;
                }
                KeySource::Secret(Secret(trimmed))
            }
        };
        let issuers = match p.issuer.as_ref().map(|i| i.get_ref()) {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![s.clone()],
            Some(OneOrMany::Many(v)) => v.clone(),
        };
        let audiences: Vec<String> = p
            .audiences
            .iter()
            .flatten()
            .map(|a| a.get_ref().clone())
            .collect();
        let leeway = match &p.leeway {
            None => Duration::from_secs(30),
            Some(l) => match parse_duration(l.get_ref()) {
                Ok(d) if d <= Duration::from_secs(300) => d,
                Ok(_) => {
                    self.err("SY007", span(l), "leeway is at most 5m");
                    Duration::from_secs(30)
                }
                Err(msg) => {
                    self.err("SY006", span(l), msg);
                    Duration::from_secs(30)
                }
            },
        };
        let cookie = p.cookie.as_ref().and_then(|c| {
            let ok = !c.get_ref().is_empty()
                && c.get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                self.err(
                    "SY028",
                    span(c),
                    format!("`{}` is not a valid cookie name", c.get_ref()),
                );
            }
            ok.then(|| c.get_ref().clone())
        });
        let mut forward_claims = Vec::new();
        for (claim, h) in p.forward_claims.iter().flatten() {
            if let Some(name) = self.identity_header(h) {
                forward_claims.push((claim.get_ref().clone(), name));
            }
        }
        let require = p
            .require
            .iter()
            .flatten()
            .map(|(k, v)| (k.get_ref().clone(), v.get_ref().clone()))
            .collect();
        let allow = p
            .allow
            .iter()
            .flatten()
            .map(|a| a.get_ref().clone())
            .collect();
        let max_token_bytes = match &p.max_token_bytes {
            None => 8 * 1024,
            Some(v) => match self.size(v) {
                Some(n) if (256..=64 * 1024).contains(&n) => n as usize,
                Some(_) => {
                    self.err(
                        "SY007",
                        span(v),
                        "max_token_bytes must be between 256 and 64KiB",
                    );
                    8 * 1024
                }
                None => 8 * 1024,
            },
        };
        Some(AuthPolicy {
            name: name.to_string(),
            issuers,
            audiences,
            algorithms,
            keys,
            leeway,
            required: p.required.as_ref().is_none_or(|r| *r.get_ref()),
            cookie,
            forward_claims,
            require,
            allow,
            max_token_bytes,
        })
    }

    fn algorithms(&mut self, list: &Spanned<Vec<SStr>>) -> Option<Vec<Algorithm>> {
        if list.get_ref().is_empty() {
            self.err("SY028", span(list), "`algorithms` is empty");
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for a in list.get_ref() {
            let text = a.get_ref();
            if text.eq_ignore_ascii_case("none") {
                self.err("SY028", span(a), "algorithm `none` is never accepted")
                    .help = Some("an unsigned token proves nothing".into());
                ok = false;
                continue;
            }
            match Algorithm::from_str(text) {
                Ok(alg) if !out.contains(&alg) => out.push(alg),
                Ok(_) => {}
                Err(_) => {
                    let help = did_you_mean(text, ALGORITHMS.split(", "));
                    self.err("SY028", span(a), format!("unknown algorithm `{text}`"))
                        .help = help.or_else(|| Some(format!("algorithms: {ALGORITHMS}")));
                    ok = false;
                }
            }
        }
        let hmac = out
            .iter()
            .filter(|a| a.family() == AlgorithmFamily::Hmac)
            .count();
        if hmac > 0 && hmac < out.len() {
            self.err(
                "SY028",
                span(list),
                "HMAC (HS*) and public-key algorithms cannot be mixed in one policy",
            )
            .help = Some(
                "a token could otherwise pick HS256 and be checked with a public key as secret"
                    .into(),
            );
            ok = false;
        }
        ok.then_some(out)
    }

    fn jwks_source(&mut self, j: &SStr, p: &file::AuthPolicyFile) -> Option<KeySource> {
        let text = j.get_ref();
        if let Some(path) = text.strip_prefix("file:") {
            if let Some(ca) = &p.jwks_ca {
                self.err("SY028", span(ca), "`jwks_ca` is for https JWKS URLs only");
                return None;
            }
            let as_path = SStr::new(j.span(), path.to_string());
            let bytes = self.read_file(&as_path)?;
            return match crate::auth::jwks::parse(&bytes) {
                Ok(keys) if keys.is_empty() => {
                    self.err(
                        "SY029",
                        span(j),
                        format!("`{path}` has no usable signature key"),
                    )
                    .help = Some("RSA, EC (P-256, P-384) and Ed25519 keys are used".into());
                    None
                }
                Ok(keys) => Some(KeySource::File(keys)),
                Err(e) => {
                    self.err("SY029", span(j), format!("`{path}`: {e}"));
                    None
                }
            };
        }
        let url = match text.parse::<http::Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() =>
            {
                u
            }
            _ => {
                self.err("SY028", span(j), format!("`{text}` is not a JWKS source"))
                    .help = Some(
                    "write \"file:PATH\", \"https://HOST/PATH\" or \"http://HOST/PATH\"".into(),
                );
                return None;
            }
        };
        let ca = match &p.jwks_ca {
            None => None,
            Some(ca) if url.scheme_str() != Some("https") => {
                self.err("SY028", span(ca), "`jwks_ca` is for https JWKS URLs only")
                    .help = Some("an http source is fetched without TLS; use an https URL".into());
                return None;
            }
            Some(ca) => Some(self.ca_bundle(ca)?),
        };
        let refresh = self.duration(&p.refresh_interval, Duration::from_secs(300));
        let refetch = self.duration(&p.refetch_interval, Duration::from_secs(30));
        Some(KeySource::Url {
            url,
            refresh,
            refetch,
            ca,
        })
    }

    /// `jwks_ca`: a PEM bundle of CA certificates, each usable as a trust anchor.
    fn ca_bundle(&mut self, path: &SStr) -> Option<CaBundle> {
        let bytes = self.read_file(path)?;
        let name = path.get_ref();
        let certs = match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
            Ok(certs) if certs.is_empty() => {
                self.err(
                    "SY029",
                    span(path),
                    format!("`{name}` holds no PEM certificate"),
                )
                .help =
                    Some("a CA bundle is one or more `-----BEGIN CERTIFICATE-----` blocks".into());
                return None;
            }
            Ok(certs) => certs,
            Err(e) => {
                self.err(
                    "SY029",
                    span(path),
                    format!("`{name}` is not a PEM CA bundle: {e}"),
                );
                return None;
            }
        };
        if let Err(e) = crate::upstream::tls::roots(Some(&certs)) {
            self.err("SY029", span(path), format!("`{name}`: {e}"));
            return None;
        }
        Some(CaBundle(certs))
    }

    /// A header the gateway sets as identity: valid, and not one it owns otherwise.
    fn identity_header(&mut self, h: &SStr) -> Option<HeaderName> {
        let text = h.get_ref().to_ascii_lowercase();
        let Ok(name) = HeaderName::from_bytes(text.as_bytes()) else {
            self.err(
                "SY018",
                span(h),
                format!("`{}` is not a valid header name", h.get_ref()),
            );
            return None;
        };
        let reserved = gateway_owned_header(&text, true).or(match text.as_str() {
            "host" | "cookie" | "authorization" => Some("it carries the client's own request data"),
            _ => None,
        });
        if let Some(why) = reserved {
            self.err(
                "SY018",
                span(h),
                format!("`{text}` cannot carry a claim: {why}"),
            );
            return None;
        }
        Some(name)
    }

    /// Read a file named in the config, relative to the config file's directory.
    fn read_file(&mut self, path: &SStr) -> Option<Vec<u8>> {
        let p = std::path::Path::new(path.get_ref());
        let full = match self.base {
            Some(base) if p.is_relative() => base.join(p),
            _ => p.to_path_buf(),
        };
        match std::fs::read(&full) {
            Ok(bytes) => {
                self.files.push(bytes.clone());
                Some(bytes)
            }
            Err(e) => {
                self.err(
                    "SY029",
                    span(path),
                    format!("cannot read `{}`: {e}", path.get_ref()),
                );
                None
            }
        }
    }

    /// `route.auth = "NAME"`. `names` has every declared policy; `None` for those
    /// that did not validate (already reported).
    pub(super) fn auth_ref(
        &mut self,
        a: &SStr,
        names: &HashMap<&str, Option<usize>>,
    ) -> Option<usize> {
        match names.get(a.get_ref().as_str()) {
            Some(&i) => i,
            None => {
                let help = did_you_mean(a.get_ref(), names.keys().copied());
                self.err(
                    "SY005",
                    span(a),
                    format!("unknown auth policy `{}`", a.get_ref()),
                )
                .help = help.or_else(|| Some("define it under [auth.NAME]".into()));
                None
            }
        }
    }

    /// `[identity]`.
    pub(super) fn identity(&mut self, i: &Spanned<file::IdentityFile>) -> Option<Identity> {
        let i = i.get_ref();
        let algorithm = self.signing_algorithm(&i.algorithm);
        let current = algorithm.and_then(|alg| self.signing_key(&i.key, alg, &i.kid));
        let mut public: Vec<Jwk> = current.iter().map(|(_, jwk)| jwk.clone()).collect();
        let mut kids = vec![i.kid.get_ref().as_str()];
        for prev in i.previous_keys.iter().flatten() {
            let prev = prev.get_ref();
            let alg = match &prev.algorithm {
                Some(a) => self.signing_algorithm(a),
                None => algorithm,
            };
            if kids.contains(&prev.kid.get_ref().as_str()) {
                self.err(
                    "SY028",
                    span(&prev.kid),
                    format!("kid `{}` is used twice", prev.kid.get_ref()),
                );
                continue;
            }
            kids.push(prev.kid.get_ref());
            if let Some((_, jwk)) = alg.and_then(|alg| self.signing_key(&prev.key, alg, &prev.kid))
            {
                public.push(jwk);
            }
        }
        let ttl = match &i.ttl {
            None => Duration::from_secs(60),
            Some(t) => {
                let d = self.duration(&Some(t.clone()), Duration::from_secs(60));
                if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
                    self.err("SY007", span(t), "ttl must be between 1s and 1h");
                }
                d
            }
        };
        let header = match &i.header {
            None => Some(HeaderName::from_static("x-switchyard-identity")),
            Some(h) if h.get_ref().eq_ignore_ascii_case("authorization") => {
                Some(http::header::AUTHORIZATION)
            }
            Some(h) => self.identity_header(h),
        };
        let mut claims = Vec::new();
        for c in i.claims.iter().flatten() {
            if matches!(
                c.get_ref().as_str(),
                "iss" | "aud" | "exp" | "iat" | "nbf" | "sub"
            ) {
                self.err(
                    "SY028",
                    span(c),
                    format!("the gateway sets `{}` itself", c.get_ref()),
                );
            } else {
                claims.push(c.get_ref().clone());
            }
        }
        let ((key, _), algorithm, header) = (current?, algorithm?, header?);
        Some(Identity {
            algorithm,
            kid: i.kid.get_ref().clone(),
            key: Arc::new(key),
            ttl,
            header,
            claims,
            public,
        })
    }

    fn signing_algorithm(&mut self, a: &SStr) -> Option<Algorithm> {
        match a.get_ref().as_str() {
            "EdDSA" => Some(Algorithm::EdDSA),
            "ES256" => Some(Algorithm::ES256),
            other => {
                self.err(
                    "SY028",
                    span(a),
                    format!("identity algorithm `{other}` is not supported"),
                )
                .help = Some("use \"EdDSA\" or \"ES256\"".into());
                None
            }
        }
    }

    /// A private key file for `alg`, and its public JWK with `kid`.
    fn signing_key(
        &mut self,
        path: &SStr,
        alg: Algorithm,
        kid: &SStr,
    ) -> Option<(EncodingKey, Jwk)> {
        if kid.get_ref().is_empty() {
            self.err("SY028", span(kid), "kid is empty");
            return None;
        }
        let pem = self.read_file(path)?;
        let key = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            _ => EncodingKey::from_ec_pem(&pem),
        };
        let built = key.and_then(|k| Jwk::from_encoding_key(&k, alg).map(|j| (k, j)));
        match built {
            Ok((key, mut jwk)) => {
                jwk.common.key_id = Some(kid.get_ref().clone());
                jwk.common.public_key_use = Some(PublicKeyUse::Signature);
                Some((key, jwk))
            }
            Err(e) => {
                self.err(
                    "SY029",
                    span(path),
                    format!(
                        "`{}` is not a PKCS#8 PEM private key for {alg:?}: {e}",
                        path.get_ref()
                    ),
                );
                None
            }
        }
    }
}
