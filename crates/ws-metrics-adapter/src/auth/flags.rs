//! The authentication and authorization flags, named as in the generic apiserver (and so in
//! metrics-server and prometheus-adapter), and their validation.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::Settings;
use super::authn::{ConfigError, FlagSources, HeaderNames};

/// Flags of delegated authentication and authorization (cluster mode).
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// Kubeconfig for TokenReview calls [default: the --kubeconfig / in-cluster identity].
    #[arg(long, env = "WS_METRICS_ADAPTER_AUTHENTICATION_KUBECONFIG")]
    pub authentication_kubeconfig: Option<PathBuf>,

    /// Kubeconfig for SubjectAccessReview calls [default: the --kubeconfig / in-cluster identity].
    #[arg(long, env = "WS_METRICS_ADAPTER_AUTHORIZATION_KUBECONFIG")]
    pub authorization_kubeconfig: Option<PathBuf>,

    /// CA bundle (PEM) for ordinary client certificates (user = CN, groups = O) [default: key
    /// client-ca-file of ConfigMap kube-system/extension-apiserver-authentication, watched].
    #[arg(long, env = "WS_METRICS_ADAPTER_CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,

    /// CA bundle (PEM) for the front proxy's client certificate; with it, the --requestheader-*
    /// flags replace the ConfigMap's requestheader-* keys.
    #[arg(long, env = "WS_METRICS_ADAPTER_REQUESTHEADER_CLIENT_CA_FILE")]
    pub requestheader_client_ca_file: Option<PathBuf>,

    /// Allowed common names of the front-proxy certificate (comma-separated; empty = any
    /// certificate signed by --requestheader-client-ca-file).
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_REQUESTHEADER_ALLOWED_NAMES",
        value_delimiter = ','
    )]
    pub requestheader_allowed_names: Vec<String>,

    /// Headers holding the user name behind the front proxy.
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_REQUESTHEADER_USERNAME_HEADERS",
        value_delimiter = ',',
        default_value = "X-Remote-User"
    )]
    pub requestheader_username_headers: Vec<String>,

    /// Headers holding the groups behind the front proxy.
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_REQUESTHEADER_GROUP_HEADERS",
        value_delimiter = ',',
        default_value = "X-Remote-Group"
    )]
    pub requestheader_group_headers: Vec<String>,

    /// Header prefixes of the extra attributes behind the front proxy.
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_REQUESTHEADER_EXTRA_HEADERS_PREFIX",
        value_delimiter = ',',
        default_value = "X-Remote-Extra-"
    )]
    pub requestheader_extra_headers_prefix: Vec<String>,

    /// Headers holding the user's UID behind the front proxy.
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_REQUESTHEADER_UID_HEADERS",
        value_delimiter = ',',
        default_value = "X-Remote-Uid"
    )]
    pub requestheader_uid_headers: Vec<String>,

    /// Paths served without authentication or authorization (a trailing * matches a prefix).
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_AUTHORIZATION_ALWAYS_ALLOW_PATHS",
        value_delimiter = ',',
        default_value = "/healthz,/readyz,/livez"
    )]
    pub authorization_always_allow_paths: Vec<String>,

    /// How long TokenReview answers are cached.
    #[arg(long, env = "WS_METRICS_ADAPTER_AUTHENTICATION_TOKEN_WEBHOOK_CACHE_TTL", default_value = "10s", value_parser = crate::config::value::parse_duration)]
    pub authentication_token_webhook_cache_ttl: Duration,

    /// How long "allowed" SubjectAccessReview answers are cached.
    #[arg(long, env = "WS_METRICS_ADAPTER_AUTHORIZATION_WEBHOOK_CACHE_AUTHORIZED_TTL", default_value = "10s", value_parser = crate::config::value::parse_duration)]
    pub authorization_webhook_cache_authorized_ttl: Duration,

    /// How long "denied" SubjectAccessReview answers are cached.
    #[arg(long, env = "WS_METRICS_ADAPTER_AUTHORIZATION_WEBHOOK_CACHE_UNAUTHORIZED_TTL", default_value = "10s", value_parser = crate::config::value::parse_duration)]
    pub authorization_webhook_cache_unauthorized_ttl: Duration,
}

/// Validated authentication and authorization options.
#[derive(Debug, Clone)]
pub struct AuthOptions {
    /// Kubeconfig for TokenReviews, `None` = the pod-watch client's.
    pub authentication_kubeconfig: Option<PathBuf>,
    /// Kubeconfig for SubjectAccessReviews, `None` = the pod-watch client's.
    pub authorization_kubeconfig: Option<PathBuf>,
    /// `--client-ca-file`.
    pub client_ca_file: Option<PathBuf>,
    /// `--requestheader-client-ca-file` with the allowed names and header names.
    pub request_header: Option<(PathBuf, Vec<String>, HeaderNames)>,
    /// Cache TTLs and always-allowed paths.
    pub settings: Settings,
}

impl AuthArgs {
    /// Checks the flags, pushing every problem onto `problems`.
    pub fn validate(self, problems: &mut Vec<String>) -> AuthOptions {
        for p in &self.authorization_always_allow_paths {
            if !p.starts_with('/') {
                problems.push(format!(
                    "--authorization-always-allow-paths {p:?}: a path must start with '/'"
                ));
            }
        }
        let clean = |v: Vec<String>| -> Vec<String> {
            v.into_iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let request_header = self.requestheader_client_ca_file.map(|ca| {
            (
                ca,
                clean(self.requestheader_allowed_names),
                HeaderNames {
                    username: clean(self.requestheader_username_headers),
                    group: clean(self.requestheader_group_headers),
                    extra_prefix: clean(self.requestheader_extra_headers_prefix),
                    uid: clean(self.requestheader_uid_headers),
                },
            )
        });
        AuthOptions {
            authentication_kubeconfig: self.authentication_kubeconfig,
            authorization_kubeconfig: self.authorization_kubeconfig,
            client_ca_file: self.client_ca_file,
            request_header,
            settings: Settings {
                token_ttl: self.authentication_token_webhook_cache_ttl,
                allow_ttl: self.authorization_webhook_cache_authorized_ttl,
                deny_ttl: self.authorization_webhook_cache_unauthorized_ttl,
                always_allow_paths: self.authorization_always_allow_paths,
                ..Settings::default()
            },
        }
    }
}

impl AuthOptions {
    /// Reads the CA files given by flags.
    ///
    /// # Errors
    /// [`ConfigError::CaBundleUnusable`] naming the flag when a file cannot be read.
    pub fn flag_sources(&self) -> Result<FlagSources, ConfigError> {
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| ConfigError::CaBundleUnusable {
                key: format!("{flag} {}", path.display()),
                reason: e.to_string(),
            })
        };
        Ok(FlagSources {
            client_ca_pem: self
                .client_ca_file
                .as_ref()
                .map(|p| read("--client-ca-file", p))
                .transpose()?,
            request_header: self
                .request_header
                .as_ref()
                .map(|(p, names, headers)| {
                    read("--requestheader-client-ca-file", p)
                        .map(|pem| (pem, names.clone(), headers.clone()))
                })
                .transpose()?,
        })
    }
}
