//! The certificates a small cluster needs, generated per run with rcgen: the cluster CA (serving
//! certificate of kube-apiserver), the front-proxy CA and kube-apiserver's front-proxy client
//! certificate, the adapter's serving CA and leaf (the APIService `caBundle`), and the
//! service-account signing key.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA: its PEM certificate and what signs with it.
pub(crate) struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and key written to disk.
pub(crate) struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    // Back-dated so that a clock a little behind ours still accepts it.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(2);
}

impl Ca {
    /// A new self-signed CA called `name`.
    pub(crate) fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params);
        let cert = params.self_signed(&key).expect("CA self-signed");
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes the CA certificate to `dir/name.crt`.
    pub(crate) fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.crt"));
        std::fs::write(&path, &self.pem).expect("write CA");
        path
    }

    /// Signs a leaf for `cn` (organisations `orgs`, names `sans`) usable as a server and/or client
    /// certificate, and writes it to `dir/name.{crt,key}`.
    pub(crate) fn leaf(
        &self,
        dir: &Path,
        name: &str,
        cn: &str,
        orgs: &[&str],
        sans: &[&str],
        usages: &[ExtendedKeyUsagePurpose],
    ) -> Pair {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        for org in orgs {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *org);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages.to_vec();
        validity(&mut params);
        let cert = params.signed_by(&key, &self.issuer).expect("leaf signed");
        let pair = Pair {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).expect("write leaf");
        std::fs::write(&pair.key, key.serialize_pem()).expect("write leaf key");
        pair
    }
}

/// Writes a fresh ECDSA P-256 key pair as PEM: the private key (PKCS#8) to `private`, with which
/// kube-apiserver signs service-account tokens, and the public key (SPKI) to `public`, with which
/// it verifies them.
pub(crate) fn write_signing_key(private: &Path, public: &Path) {
    let key = KeyPair::generate().expect("signing key");
    std::fs::write(private, key.serialize_pem()).expect("write signing key");
    std::fs::write(public, key.public_key_pem()).expect("write verifying key");
}
