//! Certificate generation over rcgen: create a CA, issue serving leaves from it for DNS names and
//! IP addresses, and read an existing CA back from PEM. Used by `--cert-dir`'s generated pair
//! (`server::tls`) and the managed serving CA (`server::serving_ca`).

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use super::pem;

/// Errors of creating, reading or using a CA.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Generating a key pair failed.
    #[error("generating a key pair: {0}")]
    KeyGenerationFailed(#[source] rcgen::Error),
    /// A subject alternative name is not valid in a certificate.
    #[error("subject alternative names: {0}")]
    NameRejected(#[source] rcgen::Error),
    /// Signing a certificate failed.
    #[error("signing the certificate: {0}")]
    SigningFailed(#[source] rcgen::Error),
    /// The stored CA certificate is not PEM holding a certificate.
    #[error("CA certificate: {0}")]
    CaCertUnreadable(#[source] pem::Error),
    /// The stored CA certificate is not X.509 that rcgen or x509-parser can read.
    #[error("CA certificate does not parse: {reason}")]
    CaCertUnparseable {
        /// What the parser said.
        reason: String,
    },
    /// The stored CA key is not a PEM private key rcgen can sign with.
    #[error("CA private key: {0}")]
    CaKeyUnreadable(#[source] rcgen::Error),
    /// The stored certificate lacks `basicConstraints CA:TRUE`: clients would refuse every leaf.
    #[error("the CA certificate {subject:?} is not a CA (no basicConstraints CA:TRUE)")]
    NotACa {
        /// Subject of the certificate.
        subject: String,
    },
    /// The stored CA is outside its validity period: clients would refuse every leaf.
    #[error("the CA certificate {subject:?} is valid from {not_before} to {not_after}, not now")]
    CaOutsideValidity {
        /// Subject of the certificate.
        subject: String,
        /// Start of validity.
        not_before: OffsetDateTime,
        /// End of validity.
        not_after: OffsetDateTime,
    },
    /// The stored CA key is not the key of the CA certificate: leaves would not verify.
    #[error("the CA private key does not belong to the CA certificate {subject:?}")]
    CaKeyMismatch {
        /// Subject of the certificate.
        subject: String,
    },
    /// rustls refused the issued leaf and key (an unsupported key type; ring's are supported).
    #[error("using the issued certificate: {0}")]
    LeafUnusable(#[source] rustls::Error),
}

/// Result of this module.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// A validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Validity {
    /// Start.
    pub not_before: OffsetDateTime,
    /// End.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From `backdate` before now (for clients whose clock is a little behind ours) to `lifetime`
    /// after now.
    pub(crate) fn from_now(backdate: Duration, lifetime: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - backdate,
            not_after: now + lifetime,
        }
    }
}

/// A CA: its certificate and key (PEM) and what signs with them.
pub(crate) struct Ca {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// A leaf certificate and its key, as PEM and as DER.
#[derive(Debug, Clone)]
pub(crate) struct Leaf {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// Its private key, PKCS#8 DER.
    key_der: Vec<u8>,
}

impl Leaf {
    /// The leaf as rustls serves it (chain of the leaf alone: clients hold the CA).
    ///
    /// # Errors
    /// [`Error::LeafUnusable`].
    pub(crate) fn certified_key(&self) -> Result<CertifiedKey> {
        CertifiedKey::from_der(
            vec![self.cert_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            &super::provider(),
        )
        .map_err(Error::LeafUnusable)
    }
}

impl Ca {
    /// A new self-signed CA (ECDSA P-256) called `common_name`, for signing certificates only.
    ///
    /// # Errors
    /// [`Error::KeyGenerationFailed`] or [`Error::SigningFailed`].
    pub(crate) fn generate(common_name: &str, validity: Validity) -> Result<Self> {
        let key = KeyPair::generate().map_err(Error::KeyGenerationFailed)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key).map_err(Error::SigningFailed)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA stored as `cert_pem` and `key_pem`, checked to be usable: a CA certificate, valid
    /// now, whose public key is that of `key_pem`. rcgen itself checks none of these
    /// [rcgen: src/lib.rs `Issuer::from_ca_cert_der`], and any of them failing would only show as
    /// every client refusing the leaves.
    ///
    /// # Errors
    /// [`Error::CaCertUnreadable`], [`Error::CaCertUnparseable`], [`Error::CaKeyUnreadable`],
    /// [`Error::NotACa`], [`Error::CaOutsideValidity`] or [`Error::CaKeyMismatch`].
    pub(crate) fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let der = pem::certs_from_pem("the CA certificate", cert_pem.as_bytes())
            .map_err(Error::CaCertUnreadable)?
            .swap_remove(0);
        let key = KeyPair::from_pem(key_pem).map_err(Error::CaKeyUnreadable)?;
        {
            let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
                Error::CaCertUnparseable {
                    reason: e.to_string(),
                }
            })?;
            let subject = x509.subject().to_string();
            if !x509.is_ca() {
                return Err(Error::NotACa { subject });
            }
            let not_before = x509.validity().not_before.to_datetime();
            let not_after = x509.validity().not_after.to_datetime();
            let now = OffsetDateTime::now_utc();
            if now < not_before || now > not_after {
                return Err(Error::CaOutsideValidity {
                    subject,
                    not_before,
                    not_after,
                });
            }
            // The SubjectPublicKeyInfo's bit string is the raw public key of the pair (the EC
            // point, or PKCS#1 for RSA).
            if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(Error::CaKeyMismatch { subject });
            }
        }
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| Error::CaCertUnparseable {
            reason: e.to_string(),
        })?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// The CA certificate, PEM (what clients trust: a kubeconfig's certificate-authority, an
    /// APIService caBundle).
    pub(crate) fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM (PKCS#8).
    pub(crate) fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a serving certificate (serverAuth, ECDSA P-256) called `common_name` for `sans`:
    /// each a DNS name, or an IP address when it parses as one.
    ///
    /// # Errors
    /// [`Error::KeyGenerationFailed`], [`Error::NameRejected`] or [`Error::SigningFailed`].
    pub(crate) fn issue_serving(
        &self,
        common_name: &str,
        sans: &[String],
        validity: Validity,
    ) -> Result<Leaf> {
        let key = KeyPair::generate().map_err(Error::KeyGenerationFailed)?;
        // NB: `CertificateParams::new` makes an IP SAN of every name that parses as an address.
        let mut params = CertificateParams::new(sans.to_vec()).map_err(Error::NameRejected)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(Error::SigningFailed)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};

    const HOUR: Duration = Duration::from_secs(3600);

    fn verifies(ca: &Ca, leaf: &Leaf, name: &str) -> bool {
        let roots = pem::roots_from_pem("ca", ca.cert_pem().as_bytes()).expect("roots");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            crate::tls::provider(),
        )
        .build()
        .expect("verifier");
        let name = ServerName::try_from(name.to_owned()).expect("name");
        verifier
            .verify_server_cert(&leaf.cert_der, &[], &name, &[], UnixTime::now())
            .is_ok()
    }

    #[test]
    fn leaves_verify_for_their_dns_names_and_ips_against_their_ca_only() {
        let validity = Validity::from_now(HOUR, HOUR);
        let ca = Ca::generate("test-ca", validity).expect("CA");
        let sans = vec!["a.b.svc".to_owned(), "127.0.0.1".to_owned()];
        let leaf = ca.issue_serving("leaf", &sans, validity).expect("leaf");
        assert!(verifies(&ca, &leaf, "a.b.svc"));
        assert!(verifies(&ca, &leaf, "127.0.0.1"));
        assert!(!verifies(&ca, &leaf, "c.d.svc"));
        let other = Ca::generate("other-ca", validity).expect("CA");
        assert!(!verifies(&other, &leaf, "a.b.svc"));
        leaf.certified_key().expect("rustls takes it");
    }

    #[test]
    fn a_ca_read_back_from_pem_issues_leaves_that_chain_to_it() {
        let validity = Validity::from_now(HOUR, HOUR);
        let ca = Ca::generate("test-ca", validity).expect("CA");
        let reloaded = Ca::from_pem(ca.cert_pem(), ca.key_pem()).expect("reload");
        let leaf = reloaded
            .issue_serving("leaf", &["a.b.svc".into()], validity)
            .expect("leaf");
        assert!(verifies(&ca, &leaf, "a.b.svc"));
    }

    #[test]
    fn an_expired_ca_is_refused() {
        let now = OffsetDateTime::now_utc();
        let expired = Validity {
            not_before: now - time::Duration::days(2),
            not_after: now - time::Duration::days(1),
        };
        let ca = Ca::generate("old-ca", expired).expect("CA");
        let err = Ca::from_pem(ca.cert_pem(), ca.key_pem()).expect_err("expired");
        assert!(matches!(err, Error::CaOutsideValidity { .. }), "{err:?}");
        assert!(err.to_string().contains("old-ca"), "{err}");
    }

    #[test]
    fn a_certificate_without_the_ca_flag_is_refused_as_a_ca() {
        let validity = Validity::from_now(HOUR, HOUR);
        let ca = Ca::generate("test-ca", validity).expect("CA");
        let leaf = ca
            .issue_serving("just-a-leaf", &["a.b.svc".into()], validity)
            .expect("leaf");
        let err = Ca::from_pem(&leaf.cert_pem, &leaf.key_pem).expect_err("not a CA");
        assert!(matches!(err, Error::NotACa { .. }), "{err:?}");
    }

    #[test]
    fn a_ca_key_of_another_ca_is_refused() {
        let validity = Validity::from_now(HOUR, HOUR);
        let one = Ca::generate("one", validity).expect("CA");
        let other = Ca::generate("other", validity).expect("CA");
        let err = Ca::from_pem(one.cert_pem(), other.key_pem()).expect_err("mismatch");
        assert!(matches!(err, Error::CaKeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn garbage_and_empty_ca_pem_are_refused_by_step() {
        let validity = Validity::from_now(HOUR, HOUR);
        let ca = Ca::generate("test-ca", validity).expect("CA");
        for cert in ["", "garbage"] {
            let err = Ca::from_pem(cert, ca.key_pem()).expect_err("no cert");
            assert!(
                matches!(
                    err,
                    Error::CaCertUnreadable(pem::Error::NoCertificate { .. })
                ),
                "{err:?}"
            );
        }
        let err = Ca::from_pem(ca.cert_pem(), "garbage").expect_err("no key");
        assert!(matches!(err, Error::CaKeyUnreadable(_)), "{err:?}");
    }

    #[test]
    fn a_name_that_is_not_valid_in_a_certificate_is_rejected() {
        let validity = Validity::from_now(HOUR, HOUR);
        let ca = Ca::generate("test-ca", validity).expect("CA");
        // rcgen refuses names it cannot encode as an IA5String (non-ASCII).
        let err = ca
            .issue_serving("leaf", &["bücher.example".into()], validity)
            .expect_err("non-ASCII");
        assert!(matches!(err, Error::NameRejected(_)), "{err:?}");
    }
}
