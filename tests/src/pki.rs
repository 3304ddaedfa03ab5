//! A throwaway PKI for the MQTT end-to-end tests.
//!
//! Every test makes its own CA, broker certificate and client certificates
//! with `rcgen` at run time, so no key is ever committed and no certificate
//! expires under a test. The layout follows DESIGN.md: the broker takes the
//! client certificate's CN as the MQTT username (`use_identity_as_username`),
//! and the ACL confines each username to its own topic subtree.
//!
//! ```no_run
//! use kouan_tests::pki::{Pki, AGENT};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let pki = Pki::new(dir.path());
//! let server = pki.server();
//! let agent = pki.client(AGENT);
//! assert!(agent.key.exists() && server.cert.exists());
//! ```

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Node id (and certificate CN) of the agent under test.
pub const AGENT: &str = "gy-air-01";
/// Node id of a second agent, a neighbour the first must not impersonate.
pub const OTHER_AGENT: &str = "gy-rail-01";
/// Username of the central platform in the broker ACL.
pub const PLATFORM: &str = "platform";

/// A certificate and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate, signed by the PKI's CA.
    pub cert: PathBuf,
    /// The PKCS#8 private key, mode 0600.
    pub key: PathBuf,
}

/// A CA that issues the broker's and the clients' certificates into one
/// directory.
pub struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// Makes a new CA and writes its certificate to `dir/ca.pem`.
    ///
    /// The CA key stays in memory: tests never need it on disk.
    pub fn new(dir: &Path) -> Pki {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "kouan test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a CA key pair is generated");
        let cert = params.self_signed(&key).expect("the CA signs itself");

        let ca = dir.join("ca.pem");
        write_file(&ca, cert.pem().as_bytes(), 0o644);
        Pki {
            dir: dir.to_path_buf(),
            ca,
            issuer: Issuer::new(params, key),
        }
    }

    /// Path of the CA certificate, the trust anchor for broker and clients.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// Issues the broker's certificate, `server.pem` and `server.key`.
    ///
    /// Its SANs are `localhost` and IP 127.0.0.1: rustls checks only the
    /// SANs, never the CN.
    pub fn server(&self) -> CertFiles {
        let sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut params = CertificateParams::new(sans).expect("localhost and 127.0.0.1 are SANs");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue("server", params)
    }

    /// Issues a client certificate whose CN is `username`, as
    /// `{username}.pem` and `{username}.key`.
    ///
    /// Calling it again for the same username reuses the files, so
    /// processes that already hold them keep a valid pair.
    pub fn client(&self, username: &str) -> CertFiles {
        let files = self.files(username);
        if files.cert.exists() && files.key.exists() {
            return files;
        }

        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, username);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(username, params)
    }

    fn files(&self, name: &str) -> CertFiles {
        CertFiles {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        }
    }

    fn issue(&self, name: &str, mut params: CertificateParams) -> CertFiles {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("a key pair is generated");
        let cert = params
            .signed_by(&key, &self.issuer)
            .unwrap_or_else(|e| panic!("the test CA cannot sign {name}: {e}"));

        let files = self.files(name);
        write_file(&files.cert, cert.pem().as_bytes(), 0o644);
        write_file(&files.key, key.serialize_pem().as_bytes(), 0o600);
        files
    }
}

/// Writes `bytes` to `path` with `mode`, replacing any earlier file.
///
/// The file is removed first because `mode` applies only when a file is
/// created; an old key file would otherwise keep its old permissions.
fn write_file(path: &Path, bytes: &[u8], mode: u32) {
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    file.write_all(bytes)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
