//! The rustls client configuration of encrypted upstreams.

use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// TLS 1.2/1.3 with the ring provider, certificates checked against the
/// system's CA store plus the PEM certificates in `ca_file`: one
/// configuration for DoT (ALPN `dot`, RFC 7858) and one for DoH (ALPN `h2`,
/// then `http/1.1`).
pub(super) fn client_configs(
    ca_file: Option<&Path>,
) -> Result<(Arc<ClientConfig>, Arc<ClientConfig>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra: Vec<CertificateDer<'static>> = match ca_file {
        Some(path) => CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| format!("{}: {e}", path.display()))?,
        None => Vec::new(),
    };
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
            .map_err(|e| format!("certificate verifier: {e}"))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let mut doh = config.clone();
    config.alpn_protocols = vec![b"dot".to_vec()];
    doh.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), Arc::new(doh)))
}
