//! Client certificates on the HTTPS listener: requested but not required (Go's
//! `tls.RequestClientCert`, spec §5.3), and handed to each request of the connection as a
//! [`PeerCertificates`] extension for [`crate::auth`] to verify.
//!
//! NB: the chain is NOT verified during the handshake. The trusted CAs come from a ConfigMap that
//! changes at run time and there are two of them (front proxy and clients), so the auth layer
//! verifies the chain per request against the CAs in force. The handshake still checks the
//! client's signature, i.e. that the client holds the certificate's private key.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The certificate chain a client presented (leaf first), shared by the requests of its
/// connection.
#[derive(Debug, Clone)]
pub(crate) struct PeerCertificates(pub Arc<[CertificateDer<'static>]>);

/// Asks every client for a certificate, accepts none or any, and checks handshake signatures.
#[derive(Debug)]
pub(crate) struct RequestClientCert {
    provider: Arc<CryptoProvider>,
}

impl RequestClientCert {
    /// A verifier using `provider`'s signature algorithms.
    pub(crate) fn new(provider: Arc<CryptoProvider>) -> Self {
        Self { provider }
    }
}

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: Go and rustls clients then send their certificate whatever its issuer.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deferred to the auth layer, see the module docs.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
