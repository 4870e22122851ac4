//! The rustls client configurations the adapter dials out with: to `https://` pods
//! (`--scrape-ca-file`, else the webpki roots) and to Prometheus (CA, optional client certificate
//! for mutual TLS), always on the ring provider passed explicitly, never the process default.

use std::path::{Path, PathBuf};

use rustls::ClientConfig;

use super::pem;

/// Errors of building a client configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CA bundle could not be used.
    #[error("CA file: {0}")]
    CaUnusable(#[source] pem::Error),
    /// The client certificate chain could not be read.
    #[error("client certificate: {0}")]
    ClientCertUnreadable(#[source] pem::Error),
    /// The client key could not be read.
    #[error("client key: {0}")]
    ClientKeyUnreadable(#[source] pem::Error),
    /// The ring provider lacks the default protocol versions (it does not).
    #[error("TLS protocol versions: {0}")]
    VersionsRefused(#[source] rustls::Error),
    /// rustls refused the client certificate and key, e.g. a key of another certificate.
    #[error(
        "client certificate {} and key {} do not form a usable pair: {source}",
        cert.display(),
        key.display()
    )]
    ClientPairUnusable {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a client trusts and what it presents.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTls<'a> {
    /// PEM bundle of the CAs to trust; `None`: the webpki roots (the public CAs).
    pub ca_file: Option<&'a Path>,
    /// PEM certificate chain and private key to present (mutual TLS); `None`: no client auth.
    pub identity: Option<(&'a Path, &'a Path)>,
}

/// The rustls client configuration for `tls`: TLS 1.2 and 1.3 on ring, no ALPN (the HTTP client
/// on top sets its own).
///
/// # Errors
/// [`Error::CaUnusable`], [`Error::ClientCertUnreadable`], [`Error::ClientKeyUnreadable`] or
/// [`Error::ClientPairUnusable`], each naming the file.
pub fn config(tls: ClientTls<'_>) -> Result<ClientConfig> {
    let roots = match tls.ca_file {
        Some(path) => pem::roots_from_file(path).map_err(Error::CaUnusable)?,
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let builder = ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(Error::VersionsRefused)?
        .with_root_certificates(roots);
    Ok(match tls.identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = pem::certs_from_file(cert).map_err(Error::ClientCertUnreadable)?;
            let private = pem::key_from_file(key).map_err(Error::ClientKeyUnreadable)?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|source| Error::ClientPairUnusable {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                    source,
                })?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::pki::{Ca, Validity};
    use std::time::Duration;

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("write");
        path
    }

    #[test]
    fn a_ca_file_and_a_matching_client_pair_build_a_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let validity = Validity::from_now(Duration::from_secs(60), Duration::from_secs(3600));
        let ca = Ca::generate("test-ca", validity).expect("CA");
        let leaf = ca
            .issue_serving("client", &["localhost".into()], validity)
            .expect("leaf");
        let ca_file = write(dir.path(), "ca.crt", ca.cert_pem());
        let cert = write(dir.path(), "tls.crt", &leaf.cert_pem);
        let key = write(dir.path(), "tls.key", &leaf.key_pem);
        let cfg = config(ClientTls {
            ca_file: Some(&ca_file),
            identity: Some((&cert, &key)),
        })
        .expect("config");
        assert!(cfg.client_auth_cert_resolver.has_certs());
        let plain = config(ClientTls::default()).expect("webpki roots");
        assert!(!plain.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let validity = Validity::from_now(Duration::from_secs(60), Duration::from_secs(3600));
        let ca = Ca::generate("test-ca", validity).expect("CA");
        let one = ca.issue_serving("one", &[], validity).expect("leaf");
        let other = ca.issue_serving("other", &[], validity).expect("leaf");
        let cert = write(dir.path(), "one.crt", &one.cert_pem);
        let key = write(dir.path(), "other.key", &other.key_pem);
        let err = config(ClientTls {
            ca_file: None,
            identity: Some((&cert, &key)),
        })
        .expect_err("mismatch");
        assert!(matches!(err, Error::ClientPairUnusable { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("one.crt") && text.contains("other.key"),
            "{text}"
        );
    }

    #[test]
    fn an_empty_ca_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = write(dir.path(), "empty-ca.crt", "");
        let err = config(ClientTls {
            ca_file: Some(&ca_file),
            identity: None,
        })
        .expect_err("empty");
        assert!(
            matches!(err, Error::CaUnusable(pem::Error::NoCertificate { .. })),
            "{err:?}"
        );
        assert!(err.to_string().contains("empty-ca.crt"), "{err}");
    }
}
