//! Reading PEM: certificate chains, private keys and CA bundles, from files or from bytes (a
//! ConfigMap value, a Secret field), with errors that name where the PEM came from. Every TLS
//! site of the adapter (serving pair, client configs, client-CA bundles, the managed CA) reads
//! through here.

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Errors of reading PEM. `origin` is the file (or the ConfigMap key, flag, Secret field) the
/// bytes came from.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("reading {}: {source}", path.display())]
    ReadFailed {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A PEM section is broken (no END line, bad base64, oversized).
    #[error("{origin}: malformed PEM: {source}")]
    Malformed {
        /// Where the bytes came from.
        origin: String,
        /// What the PEM reader said.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// No `CERTIFICATE` section at all (an empty file, garbage, a key alone).
    #[error("no certificate in {origin}")]
    NoCertificate {
        /// Where the bytes came from.
        origin: String,
    },
    /// No `PRIVATE KEY` (PKCS#8), `RSA PRIVATE KEY` or `EC PRIVATE KEY` section.
    #[error("no private key in {origin}")]
    NoPrivateKey {
        /// Where the bytes came from.
        origin: String,
    },
    /// Certificates were found but none parses as a trust anchor.
    #[error("no usable CA certificate in {origin} ({ignored} could not be parsed)")]
    NoUsableCa {
        /// Where the bytes came from.
        origin: String,
        /// Certificates skipped as unparseable.
        ignored: usize,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::ReadFailed {
        path: path.to_owned(),
        source,
    })
}

fn origin_of(path: &Path) -> String {
    path.display().to_string()
}

/// The certificates of `pem` in order (a chain: leaf first), at least one.
///
/// # Errors
/// [`Error::Malformed`] or [`Error::NoCertificate`].
pub fn certs_from_pem(origin: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    // Sections of other types (keys, parameters) are skipped, as Go's `tls.X509KeyPair` does.
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|source| Error::Malformed {
            origin: origin.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(Error::NoCertificate {
            origin: origin.to_owned(),
        });
    }
    Ok(certs)
}

/// The certificates of the PEM file `path`, at least one.
///
/// # Errors
/// [`Error::ReadFailed`], or as [`certs_from_pem`].
pub fn certs_from_file(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    certs_from_pem(&origin_of(path), &read(path)?)
}

/// The first private key of `pem` (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// [`Error::Malformed`] or [`Error::NoPrivateKey`].
pub fn key_from_pem(origin: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => Error::NoPrivateKey {
            origin: origin.to_owned(),
        },
        source => Error::Malformed {
            origin: origin.to_owned(),
            source,
        },
    })
}

/// The first private key of the PEM file `path`.
///
/// # Errors
/// [`Error::ReadFailed`], or as [`key_from_pem`].
pub fn key_from_file(path: &Path) -> Result<PrivateKeyDer<'static>> {
    key_from_pem(&origin_of(path), &read(path)?)
}

/// A trust store of the CA certificates in the bundle `pem`. Certificates that do not parse are
/// skipped (as Go's `CertPool.AppendCertsFromPEM` does) as long as one does.
///
/// # Errors
/// As [`certs_from_pem`], or [`Error::NoUsableCa`].
pub fn roots_from_pem(origin: &str, pem: &[u8]) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs_from_pem(origin, pem)?);
    if added == 0 {
        return Err(Error::NoUsableCa {
            origin: origin.to_owned(),
            ignored,
        });
    }
    Ok(roots)
}

/// A trust store of the CA certificates in the PEM file `path`.
///
/// # Errors
/// [`Error::ReadFailed`], or as [`roots_from_pem`].
pub fn roots_from_file(path: &Path) -> Result<RootCertStore> {
    roots_from_pem(&origin_of(path), &read(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated() -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        (
            params.self_signed(&key).expect("cert").pem(),
            key.serialize_pem(),
        )
    }

    #[test]
    fn certificates_and_keys_are_read_from_files_and_bytes() {
        let (cert, key) = generated();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tls.crt");
        std::fs::write(&path, format!("{cert}{cert}")).expect("write");
        assert_eq!(certs_from_file(&path).expect("chain").len(), 2);
        assert!(key_from_pem("key", key.as_bytes()).is_ok());
        assert_eq!(
            roots_from_pem("bundle", cert.as_bytes())
                .expect("roots")
                .len(),
            1
        );
        // A key and its certificate in one file (as some tools write them) still read.
        let both = format!("{key}{cert}");
        assert_eq!(
            certs_from_pem("both", both.as_bytes()).expect("cert").len(),
            1
        );
        assert!(key_from_pem("both", both.as_bytes()).is_ok());
    }

    #[test]
    fn empty_garbage_and_keys_alone_hold_no_certificate() {
        let (_, key) = generated();
        for (origin, pem) in [
            ("empty", ""),
            ("garbage", "not PEM at all\n"),
            ("key alone", key.as_str()),
        ] {
            let err = certs_from_pem(origin, pem.as_bytes()).expect_err(origin);
            assert!(
                matches!(err, Error::NoCertificate { .. }),
                "{origin}: {err:?}"
            );
            assert_eq!(err.to_string(), format!("no certificate in {origin}"));
        }
    }

    #[test]
    fn a_certificate_alone_holds_no_key() {
        let (cert, _) = generated();
        let err = key_from_pem("tls.crt", cert.as_bytes()).expect_err("no key");
        assert!(matches!(err, Error::NoPrivateKey { .. }), "{err:?}");
        let err = key_from_pem("empty", b"").expect_err("no key");
        assert!(matches!(err, Error::NoPrivateKey { .. }), "{err:?}");
    }

    #[test]
    fn a_truncated_section_is_malformed() {
        let (cert, _) = generated();
        let cut = &cert[..cert.len() / 2];
        let err = certs_from_pem("cut.crt", cut.as_bytes()).expect_err("cut");
        assert!(matches!(err, Error::Malformed { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with("cut.crt: malformed PEM"),
            "{err}"
        );
    }

    #[test]
    fn a_bundle_whose_certificates_do_not_parse_is_no_usable_ca() {
        // Well-formed PEM around bytes that are not DER.
        let pem = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        let err = roots_from_pem("client-ca-file", pem.as_bytes()).expect_err("no CA");
        assert!(
            matches!(err, Error::NoUsableCa { ignored: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.pem");
        let err = roots_from_file(&path).expect_err("absent");
        assert!(matches!(err, Error::ReadFailed { .. }), "{err:?}");
        assert!(err.to_string().contains("absent.pem"), "{err}");
    }
}
