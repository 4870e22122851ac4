//! Authentication config and the pure steps of authentication: the two CA bundles and the
//! request-header settings (from ConfigMap `kube-system/extension-apiserver-authentication` or
//! flags, spec §5.3), client-certificate verification, and reading a user from `X-Remote-*`.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderMap;
use percent_encoding::percent_decode_str;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;

use crate::tls::{pem, provider};

/// Errors of reading the authentication config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A CA bundle holds no usable certificate.
    #[error("{key}: {reason}")]
    CaBundleUnusable {
        /// ConfigMap key or flag.
        key: String,
        /// What went wrong.
        reason: String,
    },
    /// A list value is not a JSON array of strings.
    #[error("{key}: not a JSON array of strings: {reason}")]
    ListUnparseable {
        /// ConfigMap key.
        key: String,
        /// What serde said.
        reason: String,
    },
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    /// User name (`system:serviceaccount:kube-system:horizontal-pod-autoscaler`).
    pub name: String,
    /// UID, may be empty.
    pub uid: String,
    /// Groups, `system:authenticated` included.
    pub groups: Vec<String>,
    /// Extra attributes (lower-case keys).
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Group every authenticated user gets [apiserver: pkg/authentication/group/authenticated_group_adder.go].
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

impl User {
    /// Appends `system:authenticated` unless present.
    pub fn with_authenticated_group(mut self) -> Self {
        if !self.groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            self.groups.push(AUTHENTICATED_GROUP.to_owned());
        }
        self
    }
}

/// Which headers carry the identity behind a verified front proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderNames {
    /// First one with a non-empty value gives the user name.
    pub username: Vec<String>,
    /// Every value of every one of these is a group.
    pub group: Vec<String>,
    /// Case-insensitive prefixes of extra headers; the rest of the name is the key.
    pub extra_prefix: Vec<String>,
    /// First one with a non-empty value gives the UID.
    pub uid: Vec<String>,
}

impl Default for HeaderNames {
    /// The names kube-apiserver is usually configured with.
    fn default() -> Self {
        Self {
            username: vec!["X-Remote-User".into()],
            group: vec!["X-Remote-Group".into()],
            extra_prefix: vec!["X-Remote-Extra-".into()],
            uid: vec!["X-Remote-Uid".into()],
        }
    }
}

impl HeaderNames {
    /// Whether `name` is one of these headers (to strip it from requests not authenticated by
    /// the front proxy).
    pub fn matches(&self, name: &str) -> bool {
        let eq = |list: &[String]| list.iter().any(|h| h.eq_ignore_ascii_case(name));
        eq(&self.username)
            || eq(&self.group)
            || eq(&self.uid)
            || self
                .extra_prefix
                .iter()
                .any(|p| name.len() >= p.len() && name[..p.len()].eq_ignore_ascii_case(p))
    }

    /// The user the headers name, or `None` when no username header has a value (then this is
    /// not a front-proxy request) [apiserver: pkg/authentication/request/headerrequest/requestheader.go].
    pub fn user(&self, headers: &HeaderMap) -> Option<User> {
        let first = |list: &[String]| {
            list.iter().find_map(|h| {
                headers
                    .get(h.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
            })
        };
        let name = first(&self.username)?;
        let uid = first(&self.uid).unwrap_or_default();
        let groups: Vec<String> = self
            .group
            .iter()
            .flat_map(|h| headers.get_all(h.as_str()).iter())
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (header, value) in headers {
            let header = header.as_str(); // already lower case
            for prefix in &self.extra_prefix {
                if header.len() > prefix.len()
                    && header[..prefix.len()].eq_ignore_ascii_case(prefix)
                {
                    let Ok(value) = value.to_str() else { continue };
                    // Keys are lower-cased, then percent-decoded; an invalid escape keeps the raw
                    // key [requestheader.go `unescapeExtraKey`].
                    let raw = &header[prefix.len()..];
                    let key = percent_decode_str(raw)
                        .decode_utf8()
                        .map_or_else(|_| raw.to_owned(), |k| k.into_owned());
                    extra.entry(key).or_default().push(value.to_owned());
                }
            }
        }
        Some(User {
            name,
            uid,
            groups,
            extra,
        })
    }
}

/// Request-header (front-proxy) settings.
#[derive(Clone)]
pub struct RequestHeader {
    verifier: Arc<dyn ClientCertVerifier>,
    /// Allowed CNs of the front-proxy certificate; empty = any certificate from the CA.
    pub allowed_names: Vec<String>,
    /// Header names.
    pub headers: HeaderNames,
}

impl std::fmt::Debug for RequestHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestHeader")
            .field("allowed_names", &self.allowed_names)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

/// What a client certificate proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertVerdict {
    /// A front-proxy certificate: the identity headers may be trusted.
    FrontProxy,
    /// A client certificate of `client-ca-file`: user = CN, groups = O.
    Client(User),
    /// Neither (unknown CA, expired, wrong usage, CN not allowed, garbage).
    Untrusted,
}

/// The authentication config in force; swapped as a whole when the ConfigMap changes.
#[derive(Clone, Default)]
pub struct AuthnConfig {
    client_ca: Option<Arc<dyn ClientCertVerifier>>,
    /// Front-proxy settings, when a requestheader CA is configured.
    pub request_header: Option<RequestHeader>,
}

impl std::fmt::Debug for AuthnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthnConfig")
            .field("client_ca", &self.client_ca.is_some())
            .field("request_header", &self.request_header)
            .finish()
    }
}

/// A client-certificate verifier for a PEM bundle (chains to one of its certificates, valid now,
/// clientAuth usage when the certificate lists usages, as Go's `x509.Verify` with
/// `ExtKeyUsageClientAuth` [apiserver: pkg/authentication/request/x509/x509.go]).
///
/// # Errors
/// [`ConfigError::CaBundleUnusable`] when the bundle holds no parseable CA certificate.
pub fn verifier_from_pem(
    key: &str,
    pem: &[u8],
) -> Result<Arc<dyn ClientCertVerifier>, ConfigError> {
    let unusable = |reason: String| ConfigError::CaBundleUnusable {
        key: key.to_owned(),
        reason,
    };
    // `key` already names the source in the error, so the PEM error says "the bundle".
    let roots = pem::roots_from_pem("the bundle", pem).map_err(|e| unusable(e.to_string()))?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| unusable(e.to_string()))
}

fn list(data: &BTreeMap<String, String>, key: &str) -> Result<Vec<String>, ConfigError> {
    match data.get(key).map(|s| s.trim()) {
        None | Some("") => Ok(Vec::new()),
        Some(raw) => serde_json::from_str(raw).map_err(|e| ConfigError::ListUnparseable {
            key: key.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// Overrides given by flags; `None` parts come from the ConfigMap.
#[derive(Debug, Clone, Default)]
pub struct FlagSources {
    /// `--client-ca-file` contents.
    pub client_ca_pem: Option<Vec<u8>>,
    /// `--requestheader-client-ca-file` contents, with the names and headers from the flags.
    pub request_header: Option<(Vec<u8>, Vec<String>, HeaderNames)>,
}

impl FlagSources {
    /// Whether the flags give the whole config (no ConfigMap needed).
    pub fn complete(&self) -> bool {
        self.client_ca_pem.is_some() && self.request_header.is_some()
    }
}

impl AuthnConfig {
    /// Builds the config from the ConfigMap's `data` (absent keys = that authenticator off) with
    /// the flag overrides.
    ///
    /// # Errors
    /// A bad CA bundle or list.
    pub fn build(
        data: &BTreeMap<String, String>,
        flags: &FlagSources,
    ) -> Result<Self, ConfigError> {
        let client_ca = match &flags.client_ca_pem {
            Some(pem) => Some(verifier_from_pem("--client-ca-file", pem)?),
            None => match data.get("client-ca-file").filter(|s| !s.trim().is_empty()) {
                Some(pem) => Some(verifier_from_pem("client-ca-file", pem.as_bytes())?),
                None => None,
            },
        };
        let request_header = match &flags.request_header {
            Some((pem, allowed, headers)) => Some(RequestHeader {
                verifier: verifier_from_pem("--requestheader-client-ca-file", pem)?,
                allowed_names: allowed.clone(),
                headers: headers.clone(),
            }),
            None => match data
                .get("requestheader-client-ca-file")
                .filter(|s| !s.trim().is_empty())
            {
                Some(pem) => Some(RequestHeader {
                    verifier: verifier_from_pem("requestheader-client-ca-file", pem.as_bytes())?,
                    allowed_names: list(data, "requestheader-allowed-names")?,
                    headers: HeaderNames {
                        username: list(data, "requestheader-username-headers")?,
                        group: list(data, "requestheader-group-headers")?,
                        extra_prefix: list(data, "requestheader-extra-headers-prefix")?,
                        uid: list(data, "requestheader-uid-headers")?,
                    },
                }),
                None => None,
            },
        };
        Ok(Self {
            client_ca,
            request_header,
        })
    }

    /// Whether any certificate-based authenticator is configured.
    pub fn has_certificate_auth(&self) -> bool {
        self.client_ca.is_some() || self.request_header.is_some()
    }

    /// Classifies a presented chain (leaf first). Front proxy first: verified against the
    /// requestheader CA with clientAuth usage and an allowed CN; then the client CA.
    pub fn classify(&self, chain: &[CertificateDer<'_>]) -> CertVerdict {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return CertVerdict::Untrusted;
        };
        let now = UnixTime::now();
        let subject = subject_of(leaf);
        if let Some(rh) = &self.request_header {
            let verified = rh
                .verifier
                .verify_client_cert(leaf, intermediates, now)
                .is_ok();
            let allowed = rh.allowed_names.is_empty()
                || subject
                    .as_ref()
                    .is_some_and(|(cn, _)| rh.allowed_names.iter().any(|n| n == cn));
            if verified && allowed {
                return CertVerdict::FrontProxy;
            }
        }
        if let Some(ca) = &self.client_ca
            && ca.verify_client_cert(leaf, intermediates, now).is_ok()
            && let Some((cn, orgs)) = subject
            && !cn.is_empty()
        {
            return CertVerdict::Client(User {
                name: cn,
                uid: String::new(),
                groups: orgs,
                extra: BTreeMap::new(),
            });
        }
        CertVerdict::Untrusted
    }
}

impl AuthnConfig {
    /// Classifies a chain against the client CA only (a front-proxy certificate that came without
    /// a username header is tried as an ordinary client certificate, as in Go's union).
    pub fn classify_client_only(&self, chain: &[CertificateDer<'_>]) -> CertVerdict {
        let without_front_proxy = AuthnConfig {
            client_ca: self.client_ca.clone(),
            request_header: None,
        };
        without_front_proxy.classify(chain)
    }
}

/// The subject's common name and organizations, `None` when the certificate does not parse.
fn subject_of(leaf: &CertificateDer<'_>) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let orgs = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
        .map(str::to_owned)
        .collect();
    Some((cn, orgs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };

    struct TestCa {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).expect("ca");
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    fn leaf(
        ca: &TestCa,
        cn: &str,
        orgs: &[&str],
        eku: &[ExtendedKeyUsagePurpose],
    ) -> CertificateDer<'static> {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        for o in orgs {
            p.distinguished_name.push(DnType::OrganizationName, *o);
        }
        p.extended_key_usages = eku.to_vec();
        p.signed_by(&key, &ca.issuer).expect("leaf").der().clone()
    }

    fn config(front: &TestCa, client: &TestCa, allowed: &[&str]) -> AuthnConfig {
        let mut data = BTreeMap::new();
        data.insert("client-ca-file".to_owned(), client.pem.clone());
        data.insert("requestheader-client-ca-file".to_owned(), front.pem.clone());
        data.insert(
            "requestheader-allowed-names".to_owned(),
            serde_json::to_string(allowed).expect("json"),
        );
        data.insert(
            "requestheader-username-headers".into(),
            r#"["X-Remote-User"]"#.into(),
        );
        data.insert(
            "requestheader-group-headers".into(),
            r#"["X-Remote-Group"]"#.into(),
        );
        data.insert(
            "requestheader-extra-headers-prefix".into(),
            r#"["X-Remote-Extra-"]"#.into(),
        );
        AuthnConfig::build(&data, &FlagSources::default()).expect("config")
    }

    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};

    #[test]
    fn certificates_are_classified_by_ca_usage_and_allowed_name() {
        crate::server::tls::install_provider();
        let (front, client, other) = (ca("front"), ca("client"), ca("other"));
        let cfg = config(&front, &client, &["front-proxy-client"]);
        let check = |c: CertificateDer<'static>| cfg.classify(&[c]);
        assert_eq!(
            check(leaf(&front, "front-proxy-client", &[], &[ClientAuth])),
            CertVerdict::FrontProxy
        );
        // Not an allowed CN, or a server-only certificate: not a front proxy.
        assert_eq!(
            check(leaf(&front, "someone-else", &[], &[ClientAuth])),
            CertVerdict::Untrusted
        );
        assert_eq!(
            check(leaf(&front, "front-proxy-client", &[], &[ServerAuth])),
            CertVerdict::Untrusted
        );
        // Same CN from another CA.
        assert_eq!(
            check(leaf(&other, "front-proxy-client", &[], &[ClientAuth])),
            CertVerdict::Untrusted
        );
        // Client CA: user = CN, groups = O (rcgen writes one O per certificate).
        assert_eq!(
            check(leaf(&client, "jane", &["team-a"], &[ClientAuth])),
            CertVerdict::Client(User {
                name: "jane".into(),
                groups: vec!["team-a".into()],
                ..User::default()
            })
        );
        // Garbage and empty chains.
        assert_eq!(
            check(CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])),
            CertVerdict::Untrusted
        );
        assert_eq!(cfg.classify(&[]), CertVerdict::Untrusted);
        // Empty allowed names = any certificate of the front-proxy CA.
        let any = config(&front, &client, &[]);
        assert_eq!(
            any.classify(&[leaf(&front, "whoever", &[], &[ClientAuth])]),
            CertVerdict::FrontProxy
        );
    }

    #[test]
    fn bad_config_values_are_reported_by_key() {
        crate::server::tls::install_provider();
        let mut data = BTreeMap::new();
        data.insert("client-ca-file".to_owned(), "garbage".to_owned());
        let err = AuthnConfig::build(&data, &FlagSources::default()).expect_err("bad CA");
        assert!(err.to_string().starts_with("client-ca-file:"), "{err}");
        let front = ca("front");
        let mut data = BTreeMap::new();
        data.insert("requestheader-client-ca-file".to_owned(), front.pem.clone());
        data.insert(
            "requestheader-allowed-names".to_owned(),
            "front-proxy-client".to_owned(),
        );
        let err = AuthnConfig::build(&data, &FlagSources::default()).expect_err("bad list");
        assert!(
            matches!(err, ConfigError::ListUnparseable { ref key, .. } if key == "requestheader-allowed-names")
        );
        // No keys at all: no certificate authenticator (tokens only).
        let none = AuthnConfig::build(&BTreeMap::new(), &FlagSources::default()).expect("empty");
        assert!(!none.has_certificate_auth());
    }

    #[test]
    fn identity_headers_are_read_with_decoded_extra_keys() {
        let names = HeaderNames::default();
        let mut h = HeaderMap::new();
        h.append(
            "x-remote-user",
            HeaderValue::from_static("system:serviceaccount:kube-system:horizontal-pod-autoscaler"),
        );
        h.append(
            "x-remote-group",
            HeaderValue::from_static("system:serviceaccounts"),
        );
        h.append(
            "x-remote-group",
            HeaderValue::from_static("system:authenticated"),
        );
        h.append(
            "x-remote-extra-authentication.kubernetes.io%2fcredential-id",
            HeaderValue::from_static("JTI=1"),
        );
        h.append("X-Remote-Extra-Scopes", HeaderValue::from_static("a"));
        h.append("x-remote-extra-scopes", HeaderValue::from_static("b"));
        h.append("x-remote-extra-bad%zz", HeaderValue::from_static("v"));
        let user = names.user(&h).expect("user");
        assert_eq!(
            user.name,
            "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
        );
        assert_eq!(
            user.groups,
            vec!["system:serviceaccounts", "system:authenticated"]
        );
        assert_eq!(
            user.extra["authentication.kubernetes.io/credential-id"],
            vec!["JTI=1"]
        );
        assert_eq!(user.extra["scopes"], vec!["a", "b"]);
        assert_eq!(user.extra["bad%zz"], vec!["v"]);
        assert!(names.matches("X-REMOTE-USER") && names.matches("x-remote-extra-foo"));
        assert!(!names.matches("authorization"));
        // No username: not a front-proxy request.
        let mut h = HeaderMap::new();
        h.append("x-remote-group", HeaderValue::from_static("system:masters"));
        h.append("x-remote-user", HeaderValue::from_static(""));
        assert_eq!(names.user(&h), None);
    }
}
