//! TLS for MQTT: rustls with the ring provider, client certificates.
//!
//! The broker authenticates the agent by its client certificate, whose CN
//! is the node id (mosquitto's `use_identity_as_username`), and the agent
//! authenticates the broker by the CA in its config. rustls checks the
//! broker's name against the certificate's SANs only, never its CN.

use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSection;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {what} {path}: {source}")]
    Read {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{path} holds no {what} in PEM")]
    Empty {
        /// What was expected.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
    },
    /// The client key is readable by others.
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A rustls client configuration from the `[uplink.tls]` files.
pub fn client_config(tls: &TlsSection) -> Result<ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(&tls.ca, "CA certificate")? {
        roots.add(cert)?;
    }
    let chain = certs(&tls.cert, "client certificate")?;
    crate::keys::check_private_permissions(&tls.key)?;
    let key = private_key(&tls.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(config)
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path, what)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut bytes.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path, "client key")?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::Empty {
            what: "private key",
            path: path.to_owned(),
        })
}
