//! Serving certificate: loaded from `--tls-cert-file`/`--tls-private-key-file` and re-read when
//! they change, or generated as a CA plus a leaf under `--cert-dir` (clients such as kube-rs
//! reject a lone self-signed certificate). Handshakes always use the newest good pair.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::tls::{pem, pki};
// Re-exported: they were first defined here, and tests and benches reach them through this path.
pub use crate::tls::{install_provider, provider};

/// Errors of loading or generating certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The certificate file could not be read or holds no certificate.
    #[error("serving certificate: {0}")]
    CertUnreadable(#[source] pem::Error),
    /// The key file could not be read or holds no private key.
    #[error("serving key: {0}")]
    KeyUnreadable(#[source] pem::Error),
    /// The key does not belong to the certificate, or is of an unsupported type.
    #[error(
        "certificate {} and key {} do not form a usable pair: {source}",
        cert.display(),
        key.display()
    )]
    PairUnusable {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// The client CA bundle (`--remote-write-client-ca-file`) could not be used.
    #[error("client CA {}: {message}", path.display())]
    ClientCa {
        /// CA file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Generating the CA and serving certificate failed.
    #[error("generating a self-signed certificate: {0}")]
    GenerateFailed(#[source] pki::Error),
    /// Writing the generated files failed.
    #[error("writing {path}: {source}")]
    WriteFailed {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Loads a PEM certificate chain and key, checking that they match.
///
/// # Errors
/// [`Error::CertUnreadable`], [`Error::KeyUnreadable`] or [`Error::PairUnusable`].
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey> {
    let chain = pem::certs_from_file(cert).map_err(Error::CertUnreadable)?;
    let private = pem::key_from_file(key).map_err(Error::KeyUnreadable)?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|source| Error::PairUnusable {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })
}

/// A CA and a leaf certificate signed by it, as PEM.
#[derive(Debug, Clone)]
pub struct GeneratedPair {
    /// The CA certificate (what a client trusts: a kubeconfig's certificate-authority, an
    /// APIService caBundle).
    pub ca_pem: String,
    /// The CA's private key.
    pub ca_key_pem: String,
    /// The leaf (serving) certificate.
    pub cert_pem: String,
    /// The leaf's private key.
    pub key_pem: String,
}

/// Lifetime of the generated CA and leaf. Unit: seconds (one year).
const GENERATED_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far the generated certificates are back-dated, for clients whose clock is behind ours.
const GENERATED_BACKDATE: Duration = Duration::from_secs(3600);

/// Generates a CA (`{common_name}-ca@{unix time}`) and a serving certificate valid for `sans`
/// (DNS names or IP addresses) for one year.
///
/// # Errors
/// [`Error::GenerateFailed`] when a name is not valid in a certificate.
pub fn generate_pair(common_name: &str, sans: &[String]) -> Result<GeneratedPair> {
    let validity = pki::Validity::from_now(GENERATED_BACKDATE, GENERATED_LIFETIME);
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let ca = pki::Ca::generate(&format!("{common_name}-ca@{secs}"), validity)
        .map_err(Error::GenerateFailed)?;
    let leaf = ca
        .issue_serving(common_name, sans, validity)
        .map_err(Error::GenerateFailed)?;
    Ok(GeneratedPair {
        ca_pem: ca.cert_pem().to_owned(),
        ca_key_pem: ca.key_pem().to_owned(),
        cert_pem: leaf.cert_pem,
        key_pem: leaf.key_pem,
    })
}

/// File names used under `--cert-dir`.
pub const CA_FILE: &str = "ca.crt";
/// Serving certificate file under `--cert-dir`.
pub const CERT_FILE: &str = "tls.crt";
/// Serving key file under `--cert-dir`.
pub const KEY_FILE: &str = "tls.key";

fn write_file(path: &Path, contents: &str, private: bool) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let _ = private;
    opts.open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|source| Error::WriteFailed {
            path: path.to_owned(),
            source,
        })
}

/// Makes sure `dir` holds a serving pair: reuses `tls.crt`/`tls.key` when both exist, otherwise
/// generates a CA (`ca.crt`) and a leaf for localhost, the loopback addresses and `extra_sans`.
/// Returns the certificate and key paths.
///
/// # Errors
/// [`Error::WriteFailed`] or [`Error::GenerateFailed`].
pub fn ensure_self_signed(dir: &Path, extra_sans: &[String]) -> Result<(PathBuf, PathBuf)> {
    let cert = dir.join(CERT_FILE);
    let key = dir.join(KEY_FILE);
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(|source| Error::WriteFailed {
        path: dir.to_owned(),
        source,
    })?;
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    sans.extend(extra_sans.iter().cloned());
    let pair = generate_pair("ws-metrics-adapter", &sans)?;
    write_file(&dir.join(CA_FILE), &pair.ca_pem, false)?;
    write_file(&key, &pair.key_pem, true)?;
    write_file(&cert, &pair.cert_pem, false)?;
    Ok((cert, key))
}

/// Hands the current certificate to every handshake; swapped atomically on reload.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    /// A resolver serving `initial`.
    pub fn new(initial: CertifiedKey) -> Self {
        Self {
            current: ArcSwap::from_pointee(initial),
        }
    }

    /// Replaces the certificate for new handshakes; established connections are untouched.
    pub fn replace(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A rustls server config (TLS 1.2 and 1.3, ALPN h2 and http/1.1) using `resolver`.
///
/// # Errors
/// Only if the ring provider lacks the default protocol versions, which it does not.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<rustls::ServerConfig, rustls::Error> {
    build_config(resolver, None)
}

/// Like [`server_config`], and asks clients for a certificate without requiring one; the chain is
/// verified later by [`crate::auth`] (see `server::client_cert`).
///
/// # Errors
/// As [`server_config`].
pub fn server_config_requesting_client_certs(
    resolver: Arc<CertResolver>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    build_config(
        resolver,
        Some(Arc::new(super::client_cert::RequestClientCert::new(
            provider(),
        ))),
    )
}

/// Like [`server_config`], and requires a client certificate chaining to the CA bundle in
/// `client_ca` (the remote-write listener's mutual TLS): the handshake fails without one.
///
/// # Errors
/// The CA file cannot be read or holds no usable certificate.
pub fn server_config_verifying_client_certs(
    resolver: Arc<CertResolver>,
    client_ca: &Path,
) -> Result<rustls::ServerConfig> {
    let roots = crate::tls::pem::roots_from_file(client_ca).map_err(|e| Error::ClientCa {
        path: client_ca.to_owned(),
        message: e.to_string(),
    })?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| Error::ClientCa {
                path: client_ca.to_owned(),
                message: e.to_string(),
            })?;
    build_config(resolver, Some(verifier)).map_err(|e| Error::ClientCa {
        path: client_ca.to_owned(),
        message: e.to_string(),
    })
}

fn build_config(
    resolver: Arc<CertResolver>,
    client_certs: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_certs {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

fn fingerprint(path: &Path) -> Option<(SystemTime, u64, Vec<u8>)> {
    let meta = std::fs::metadata(path).ok()?;
    let bytes = std::fs::read(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), bytes))
}

/// Re-reads `cert` and `key` every `period` and swaps them in when their contents change and
/// still form a usable pair; a bad new pair is logged and the old one kept.
pub async fn watch_files(
    resolver: Arc<CertResolver>,
    cert: PathBuf,
    key: PathBuf,
    period: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut last = (fingerprint(&cert), fingerprint(&key));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(period) => {}
        }
        let now = (fingerprint(&cert), fingerprint(&key));
        if now == last {
            continue;
        }
        match load_pair(&cert, &key) {
            Ok(pair) => {
                resolver.replace(pair);
                last = now;
                tracing::info!(cert = %cert.display(), "serving certificate reloaded");
            }
            // Files may be mid-write (cert updated, key not yet): retry next period.
            Err(e) => {
                tracing::warn!(error = %e, "serving certificate changed but cannot be used yet; keeping the previous one")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_loads_and_mismatched_key_is_refused() {
        install_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = ensure_self_signed(dir.path(), &[]).expect("generated");
        assert!(dir.path().join(CA_FILE).exists());
        load_pair(&cert, &key).expect("pair loads");
        // Reused, not regenerated.
        let before = std::fs::read(&cert).expect("read");
        ensure_self_signed(dir.path(), &[]).expect("reused");
        assert_eq!(before, std::fs::read(&cert).expect("read"));
        // A key from another pair does not match.
        let other = generate_pair("other", &["localhost".into()]).expect("generated");
        std::fs::write(&key, other.key_pem).expect("write");
        assert!(matches!(
            load_pair(&cert, &key),
            Err(Error::PairUnusable { .. })
        ));
        std::fs::write(&cert, "garbage").expect("write");
        assert!(matches!(
            load_pair(&cert, &key),
            Err(Error::CertUnreadable(pem::Error::NoCertificate { .. }))
        ));
    }
}
