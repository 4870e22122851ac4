//! A self-managed serving CA, so that the APIService objects need no `insecureSkipTLSVerify`:
//! the CA lives in a Secret (created once, shared by every replica), the serving certificate is
//! issued from it at start-up and re-issued at 2/3 of its lifetime (new handshakes get the new
//! one, open connections keep theirs), and the CA goes into the `caBundle` of the APIServices that
//! point at our Service, checked every 10 s in case something reset it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use rustls::sign::CertifiedKey;

use super::tls::CertResolver;
use crate::tls::{pem, pki};

/// Errors of managing the serving CA.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CA Secret holds no usable CA fields, or kept changing under us.
    #[error("CA Secret {secret}: {reason}")]
    SecretUnusable {
        /// `namespace/name`.
        secret: String,
        /// What went wrong.
        reason: String,
    },
    /// Reading or creating the CA Secret failed at kube-apiserver.
    #[error("CA Secret {secret}: {source}")]
    SecretRequestFailed {
        /// `namespace/name`.
        secret: String,
        /// The API error (RBAC, connection, ...).
        #[source]
        source: kube::Error,
    },
    /// The CA stored in the Secret cannot sign (not a CA, expired, key of another certificate).
    #[error("CA Secret {secret}: {source}")]
    StoredCaUnusable {
        /// `namespace/name`.
        secret: String,
        /// Which check failed.
        #[source]
        source: pki::Error,
    },
    /// Generating the CA or issuing the serving certificate failed.
    #[error("issuing a certificate: {0}")]
    IssueFailed(#[source] pki::Error),
    /// Reading or patching an APIService failed.
    #[error("setting caBundle of APIService {name}: {source}")]
    PatchFailed {
        /// APIService name.
        name: String,
        /// What kube-apiserver said.
        #[source]
        source: kube::Error,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Flags of the self-managed serving CA.
#[derive(Debug, Clone, Args)]
pub struct ServingCaArgs {
    /// Manage the serving certificate: keep a CA in this Secret (NAMESPACE/NAME, or NAME in the
    /// adapter's own namespace: in a pod, its ServiceAccount's; created if missing), issue the
    /// serving certificate from it, rotate it, and put the CA into the caBundle of --apiservices.
    /// Excludes --tls-cert-file.
    #[arg(long, env = "WS_METRICS_ADAPTER_SERVING_CA_SECRET")]
    pub serving_ca_secret: Option<String>,

    /// DNS names of the serving certificate (the aggregator checks SERVICE.NAMESPACE.svc).
    /// Default: ws-metrics-adapter.NAMESPACE.svc, NAMESPACE the Secret's.
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_SERVING_CERT_DNS_NAMES",
        value_delimiter = ','
    )]
    pub serving_cert_dns_names: Vec<String>,

    /// APIService objects whose caBundle is set to the CA.
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_APISERVICES",
        value_delimiter = ',',
        default_value = "v1beta2.custom.metrics.k8s.io,v1beta1.custom.metrics.k8s.io"
    )]
    pub apiservices: Vec<String>,

    /// Lifetime of each serving certificate; it is replaced at 2/3 of it.
    #[arg(long, env = "WS_METRICS_ADAPTER_SERVING_CERT_VALIDITY", default_value = "720h", value_parser = crate::config::value::parse_duration)]
    pub serving_cert_validity: Duration,
}

/// Validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingCa {
    /// Secret namespace; `None` until [`ServingCa::in_namespace`] names the adapter's own.
    pub namespace: Option<String>,
    /// Secret name.
    pub name: String,
    /// Serving certificate names (empty: ws-metrics-adapter.NAMESPACE.svc once the namespace is
    /// known).
    pub dns_names: Vec<String>,
    /// APIServices to patch.
    pub apiservices: Vec<String>,
    /// Serving certificate lifetime.
    pub validity: Duration,
}

impl ServingCaArgs {
    /// The settings when --serving-ca-secret is given; problems go onto `problems`.
    pub fn validate(self, problems: &mut Vec<String>) -> Option<ServingCa> {
        let secret = self.serving_ca_secret?;
        let (namespace, name) = match secret.split_once('/') {
            None => (None, secret.as_str()),
            Some((ns, n)) => (Some(ns), n),
        };
        if namespace.is_some_and(str::is_empty) || name.is_empty() || name.contains('/') {
            problems.push(format!(
                "--serving-ca-secret {secret:?}: expected NAME or NAMESPACE/NAME"
            ));
            return None;
        }
        if self.serving_cert_validity < Duration::from_secs(3) {
            problems.push("--serving-cert-validity: must be at least 3s".into());
        }
        Some(ServingCa {
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
            dns_names: self.serving_cert_dns_names,
            apiservices: self.apiservices,
            validity: self.serving_cert_validity,
        })
    }
}

/// The managed serving CA: a `tls::pki::Ca` with this module's policy (ten years; leaves named
/// `ws-metrics-adapter`, for the Service names plus localhost).
#[derive(Debug)]
pub struct Ca {
    inner: pki::Ca,
}

const CA_CERT_KEY: &str = "ca.crt";
const CA_KEY_KEY: &str = "ca.key";

/// Lifetime of a generated CA (ten years; the serving certificates rotate, the CA does not).
const CA_LIFETIME: Duration = Duration::from_secs(3650 * 24 * 3600);
/// Back-dating of the CA, for clients whose clock is behind ours.
const CA_BACKDATE: Duration = Duration::from_secs(3600);
/// Back-dating of a serving certificate; its lifetime counts from now.
const LEAF_BACKDATE: Duration = Duration::from_secs(5 * 60);

impl Ca {
    /// A new CA valid for ten years, and its private key (PEM) to store.
    ///
    /// # Errors
    /// [`Error::IssueFailed`].
    pub fn generate() -> Result<(Self, String)> {
        let name = format!(
            "ws-metrics-adapter-ca@{}",
            time::OffsetDateTime::now_utc().unix_timestamp()
        );
        let inner = pki::Ca::generate(&name, pki::Validity::from_now(CA_BACKDATE, CA_LIFETIME))
            .map_err(Error::IssueFailed)?;
        let key_pem = inner.key_pem().to_owned();
        Ok((Self { inner }, key_pem))
    }

    /// The CA stored as `cert_pem` and `key_pem`, checked by `tls::pki::Ca::from_pem`.
    ///
    /// # Errors
    /// The `tls::pki::Error` of the check that failed.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, pki::Error> {
        Ok(Self {
            inner: pki::Ca::from_pem(cert_pem, key_pem)?,
        })
    }

    /// The CA certificate, PEM (the caBundle).
    pub fn pem(&self) -> &str {
        self.inner.cert_pem()
    }

    /// Issues a serving certificate for `dns_names` (plus localhost) valid for `validity`.
    ///
    /// # Errors
    /// [`Error::IssueFailed`].
    pub fn issue(&self, dns_names: &[String], validity: Duration) -> Result<CertifiedKey> {
        let mut names = dns_names.to_vec();
        names.push("localhost".into());
        self.inner
            .issue_serving(
                "ws-metrics-adapter",
                &names,
                pki::Validity::from_now(LEAF_BACKDATE, validity),
            )
            .and_then(|leaf| leaf.certified_key())
            .map_err(Error::IssueFailed)
    }
}

impl ServingCa {
    /// With the namespace filled in: the flag's, else `own` (the namespace of the adapter's kube
    /// config: in a pod, its ServiceAccount's), and the default serving name in it. Kustomize and
    /// Helm can then move the adapter to any namespace without rewriting its args.
    #[must_use]
    pub fn in_namespace(mut self, own: &str) -> Self {
        let namespace = self.namespace.get_or_insert_with(|| own.to_owned());
        if self.dns_names.is_empty() {
            self.dns_names = vec![format!("ws-metrics-adapter.{namespace}.svc")];
        }
        self
    }

    /// The Secret's namespace (the adapter's own before [`ServingCa::in_namespace`]: `default`).
    fn secret_namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// Reads the CA from its Secret, creating the Secret when missing (a replica that loses the race
/// reads the winner's).
///
/// # Errors
/// [`Error::SecretRequestFailed`], [`Error::SecretUnusable`], [`Error::StoredCaUnusable`] or
/// [`Error::IssueFailed`].
pub async fn load_or_create(client: &kube::Client, cfg: &ServingCa) -> Result<Ca> {
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), cfg.secret_namespace());
    let secret_name = format!("{}/{}", cfg.secret_namespace(), cfg.name);
    let unusable = |reason: String| Error::SecretUnusable {
        secret: secret_name.clone(),
        reason,
    };
    let request_failed = |source: kube::Error| Error::SecretRequestFailed {
        secret: secret_name.clone(),
        source,
    };
    for _ in 0..3 {
        match api.get_opt(&cfg.name).await {
            Ok(Some(secret)) => {
                let data = secret.data.unwrap_or_default();
                let field = |k: &str| {
                    data.get(k)
                        .and_then(|b| String::from_utf8(b.0.clone()).ok())
                        .ok_or_else(|| unusable(format!("no {k}")))
                };
                return Ca::from_pem(&field(CA_CERT_KEY)?, &field(CA_KEY_KEY)?).map_err(|source| {
                    Error::StoredCaUnusable {
                        secret: secret_name.clone(),
                        source,
                    }
                });
            }
            Ok(None) => {
                let (ca, key_pem) = Ca::generate()?;
                let secret = Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some(cfg.name.clone()),
                        namespace: Some(cfg.secret_namespace().to_owned()),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([
                        (
                            CA_CERT_KEY.to_owned(),
                            ByteString(ca.pem().as_bytes().to_vec()),
                        ),
                        (CA_KEY_KEY.to_owned(), ByteString(key_pem.into_bytes())),
                    ])),
                    ..Default::default()
                };
                match api.create(&PostParams::default(), &secret).await {
                    Ok(_) => {
                        tracing::info!(secret = %secret_name, "serving CA generated and stored");
                        return Ok(ca);
                    }
                    // Another replica created it first: read theirs.
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(request_failed(e)),
                }
            }
            Err(e) => return Err(request_failed(e)),
        }
    }
    Err(unusable(
        "created and deleted concurrently; giving up".into(),
    ))
}

/// Sets `caBundle` (and clears `insecureSkipTLSVerify`) on every APIService of `cfg` that points
/// at a Service this certificate is for (`{service}.{namespace}.svc` among its DNS names), unless
/// it already carries this CA. An APIService of the same name pointing elsewhere — say
/// prometheus-adapter's, while both run side by side before a takeover — is left alone: our CA
/// would not verify that server, and the aggregator would lose it.
///
/// # Errors
/// [`Error::PatchFailed`] for the first that fails.
pub async fn patch_apiservices(client: &kube::Client, cfg: &ServingCa, ca_pem: &str) -> Result<()> {
    let resource = ApiResource {
        group: "apiregistration.k8s.io".into(),
        version: "v1".into(),
        api_version: "apiregistration.k8s.io/v1".into(),
        kind: "APIService".into(),
        plural: "apiservices".into(),
    };
    let api: kube::Api<DynamicObject> = kube::Api::all_with(client.clone(), &resource);
    let bundle = serde_json::to_value(ByteString(ca_pem.as_bytes().to_vec())).unwrap_or_default();
    let failed = |name: &str, source: kube::Error| Error::PatchFailed {
        name: name.to_owned(),
        source,
    };
    for name in &cfg.apiservices {
        let current = api.get(name).await.map_err(|e| failed(name, e))?;
        let spec = &current.data["spec"];
        let service = format!(
            "{}.{}.svc",
            spec["service"]["name"].as_str().unwrap_or_default(),
            spec["service"]["namespace"].as_str().unwrap_or_default()
        );
        if !cfg.dns_names.contains(&service) {
            tracing::warn!(
                apiservice = %name,
                service = %service,
                "APIService points at a service this serving certificate is not for; caBundle left alone"
            );
            continue;
        }
        if spec["caBundle"] == bundle && spec["insecureSkipTLSVerify"].as_bool() != Some(true) {
            continue;
        }
        let patch =
            serde_json::json!({"spec": {"caBundle": bundle, "insecureSkipTLSVerify": null}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| failed(name, e))?;
        tracing::info!(apiservice = %name, "caBundle set to the managed serving CA");
    }
    Ok(())
}

/// How often the APIServices' caBundle is checked (one GET each; a PATCH only when it differs).
pub const CA_BUNDLE_CHECK: Duration = Duration::from_secs(10);

/// Re-issues the serving certificate at 2/3 of its lifetime and checks the caBundle every
/// [`CA_BUNDLE_CHECK`] (an APIService applied without one works within that), until `shutdown`. Failures are logged and retried; the current certificate stays.
pub async fn maintain(
    client: kube::Client,
    cfg: ServingCa,
    ca: Ca,
    resolver: Arc<CertResolver>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let renew_every = cfg.validity.mul_f64(2.0 / 3.0);
    let mut next_renewal = tokio::time::Instant::now() + renew_every;
    let mut next_patch = tokio::time::Instant::now();
    loop {
        let wake = next_renewal.min(next_patch);
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep_until(wake) => {}
        }
        let now = tokio::time::Instant::now();
        if now >= next_patch {
            if let Err(e) = patch_apiservices(&client, &cfg, ca.pem()).await {
                tracing::warn!(error = %e, "caBundle not applied; retrying");
            }
            next_patch = now + CA_BUNDLE_CHECK;
        }
        if now >= next_renewal {
            match ca.issue(&cfg.dns_names, cfg.validity) {
                Ok(key) => {
                    resolver.replace(key);
                    tracing::info!("serving certificate renewed from the managed CA");
                    next_renewal = now + renew_every;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "serving certificate renewal failed; retrying in 10 s");
                    next_renewal = now + Duration::from_secs(10);
                }
            }
        }
    }
}

/// Whether `pem` parses as at least one certificate (for tests and checks).
pub fn is_certificate_pem(pem: &str) -> bool {
    pem::certs_from_pem("", pem.as_bytes()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_ca_issues_certificates_that_chain_to_it() {
        crate::server::tls::install_provider();
        let (ca, key_pem) = Ca::generate().expect("CA");
        assert!(is_certificate_pem(ca.pem()));
        let reloaded = Ca::from_pem(ca.pem(), &key_pem).expect("reload");
        let leaf = reloaded
            .issue(
                &["ws-metrics-adapter.ws-metrics.svc".into()],
                Duration::from_secs(3600),
            )
            .expect("issue");
        // The leaf verifies as a server certificate for the service name against the CA.
        let roots = pem::roots_from_pem("ca", ca.pem().as_bytes()).expect("root");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crate::tls::provider(),
        )
        .build()
        .expect("verifier");
        use rustls::client::danger::ServerCertVerifier;
        let name = rustls::pki_types::ServerName::try_from("ws-metrics-adapter.ws-metrics.svc")
            .expect("name");
        verifier
            .verify_server_cert(
                &leaf.cert[0],
                &[],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .expect("leaf chains to the stored CA");
        // Another CA's leaf does not.
        let (other, _) = Ca::generate().expect("CA");
        let foreign = other
            .issue(
                &["ws-metrics-adapter.ws-metrics.svc".into()],
                Duration::from_secs(3600),
            )
            .expect("issue");
        assert!(
            verifier
                .verify_server_cert(
                    &foreign.cert[0],
                    &[],
                    &name,
                    &[],
                    rustls::pki_types::UnixTime::now()
                )
                .is_err()
        );
    }

    #[test]
    fn the_secret_flag_needs_namespace_and_name() {
        let args = |s: &str| ServingCaArgs {
            serving_ca_secret: Some(s.into()),
            serving_cert_dns_names: vec!["a.b.svc".into()],
            apiservices: vec!["v1beta2.custom.metrics.k8s.io".into()],
            serving_cert_validity: Duration::from_secs(3600),
        };
        let mut problems = Vec::new();
        let ok = args("ws-metrics/serving-ca")
            .validate(&mut problems)
            .expect("valid");
        assert_eq!(
            (ok.namespace.as_deref(), ok.name.as_str()),
            (Some("ws-metrics"), "serving-ca")
        );
        assert_eq!(
            ok.in_namespace("other").namespace.as_deref(),
            Some("ws-metrics")
        );
        // A bare name is in the adapter's own namespace, and so is the default serving name.
        let bare = ServingCaArgs {
            serving_cert_dns_names: Vec::new(),
            ..args("serving-ca")
        }
        .validate(&mut problems)
        .expect("valid")
        .in_namespace("team-a");
        assert_eq!(bare.namespace.as_deref(), Some("team-a"));
        assert_eq!(bare.dns_names, ["ws-metrics-adapter.team-a.svc"]);
        assert!(problems.is_empty());
        assert!(args("/x").validate(&mut problems).is_none());
        assert!(args("a/").validate(&mut problems).is_none());
        assert!(args("a/b/c").validate(&mut problems).is_none());
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
