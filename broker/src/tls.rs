//! TLS for the listener (rustls, the `ring` provider): `flowc serve --tls-cert FILE
//! --tls-key FILE` makes every connection a TLS one, as Kafka's `SSL://` and
//! `SASL_SSL://` listeners; `--tls-client-ca FILE` also requires each client to present
//! a certificate signed by that CA (Kafka's `ssl.client.auth=required`).
//!
//! Owns loading and checking the PEM files into a rustls server configuration; the
//! handshake itself is done per connection by the server (server.rs), with a time
//! limit, so a client that connects and says nothing holds no more than its socket.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// The files of a TLS listener.
#[derive(Debug, Clone)]
pub struct TlsFiles<'a> {
    /// The server's certificate chain, PEM, leaf first.
    pub cert: &'a Path,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: &'a Path,
    /// CA certificates (PEM) that client certificates must chain to; `None`: no client
    /// certificates are asked for.
    pub client_ca: Option<&'a Path>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the {what} {} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "the {what} {} holds no certificate (expected a `-----BEGIN CERTIFICATE-----` block)",
            path.display()
        ));
    }
    Ok(certs)
}

/// A server configuration from the files, or a message that names the file at fault.
pub fn server_config(files: &TlsFiles<'_>) -> Result<Arc<ServerConfig>, String> {
    let chain = certs(files.cert, "certificate file")?;
    let key_text =
        std::fs::read(files.key).map_err(|e| format!("cannot read the key file {}: {e}", files.key.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_text).map_err(|e| {
        format!(
            "the key file {} holds no private key (expected a `-----BEGIN PRIVATE KEY-----`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block): {e}",
            files.key.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let builder = match files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca, "client CA file")? {
                roots.add(c).map_err(|e| format!("the client CA file {} has a bad certificate: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("cannot use the client CA file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        format!("the key file {} does not fit the certificate file {}: {e}", files.key.display(), files.cert.display())
    })?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn self_signed() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        (c.cert.pem(), c.key_pair.serialize_pem())
    }

    #[test]
    fn a_matching_certificate_and_key_load() {
        let d = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let (c, k) = (write(d.path(), "c.pem", &cert), write(d.path(), "k.pem", &key));
        server_config(&TlsFiles { cert: &c, key: &k, client_ca: None }).unwrap();
        server_config(&TlsFiles { cert: &c, key: &k, client_ca: Some(&c) }).unwrap();
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let d = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        let c = write(d.path(), "c.pem", &cert);
        let k = write(d.path(), "k.pem", &key);
        let other = write(d.path(), "other.pem", &other_key);
        let empty = write(d.path(), "empty.pem", "nothing here\n");
        let missing = d.path().join("missing.pem");
        let err = |cert: &Path, key: &Path| server_config(&TlsFiles { cert, key, client_ca: None }).unwrap_err();
        assert!(err(&missing, &k).contains("cannot read the certificate file"), "{}", err(&missing, &k));
        assert!(err(&empty, &k).contains("holds no certificate"), "{}", err(&empty, &k));
        assert!(err(&c, &empty).contains("holds no private key"), "{}", err(&c, &empty));
        assert!(err(&c, &other).contains("does not fit"), "{}", err(&c, &other));
        let e = server_config(&TlsFiles { cert: &c, key: &k, client_ca: Some(&empty) }).unwrap_err();
        assert!(e.contains("client CA file"), "{e}");
    }
}
