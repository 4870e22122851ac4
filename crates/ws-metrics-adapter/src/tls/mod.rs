//! TLS material shared by every side of the adapter: reading PEM ([`pem`]), the rustls client
//! configurations it dials pods and Prometheus with ([`client`]), and certificate generation over
//! rcgen (`pki`). A leaf of the crate: the serving side (hot-reloaded certificate, listener
//! config: `server::tls`) and the managed serving CA (`server::serving_ca`) use it, never the
//! reverse.

pub mod client;
pub mod pem;
pub(crate) mod pki;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The crypto provider used everywhere in the process (ring, the only one this binary links).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide rustls provider (for libraries that build their own config,
/// such as kube's client). Safe to call more than once.
pub fn install_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
