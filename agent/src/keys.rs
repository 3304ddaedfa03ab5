//! Signing keys: generation, loading with a permission check, public keys.
//!
//! An agent signs every record with one private key, stored as a PKCS#8
//! document in PEM (`-----BEGIN PRIVATE KEY-----`) with mode 0600. Ed25519
//! is the default; ECDSA P-256 (COSE ES256, raw `r‖s` signatures) is there
//! for platforms without EdDSA. The platform learns the public key as an
//! SPKI PEM (what `kouan key show` prints) and finds it again by its key id:
//! the first 8 bytes of the SHA-256 of the SPKI DER, which every record
//! carries in its COSE `kid` header.
//!
//! ring cannot export a private key it did not generate, so the PKCS#8 bytes
//! from [`generate`] are what is written, never re-encoded.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

/// Length of a key id in bytes.
pub const KEY_ID_LEN: usize = 8;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32-byte key.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// DER prefix of a P-256 SubjectPublicKeyInfo (RFC 5480), before the
/// 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Algorithm {
    /// EdDSA over Ed25519 (COSE alg -8).
    Ed25519,
    /// ECDSA over P-256 with SHA-256, raw r‖s signature (COSE alg -7).
    Es256,
}

impl Algorithm {
    /// The COSE algorithm identifier (RFC 9053).
    pub fn cose(self) -> coset::iana::Algorithm {
        match self {
            Algorithm::Ed25519 => coset::iana::Algorithm::EdDSA,
            Algorithm::Es256 => coset::iana::Algorithm::ES256,
        }
    }

    /// The algorithm of a COSE identifier, if kouan speaks it.
    pub fn from_cose(alg: coset::iana::Algorithm) -> Option<Algorithm> {
        match alg {
            coset::iana::Algorithm::EdDSA => Some(Algorithm::Ed25519),
            coset::iana::Algorithm::ES256 => Some(Algorithm::Es256),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::Ed25519 => "Ed25519",
            Algorithm::Es256 => "ES256",
        })
    }
}

/// Why a key could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file is readable or writable by group or others.
    #[error(
        "key file {path} has mode {mode:04o}, so users other than its owner can read it; \
         run `chmod 600 {path}` (and check who could have copied it)"
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Reading or writing the key file failed.
    #[error("{action} key file {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The key file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a key kouan can use.
    #[error("{path} is not {expected}: {reason}")]
    Format {
        /// The key file.
        path: PathBuf,
        /// What kind of key was expected.
        expected: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The system random generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// A private key that signs records.
pub struct SigningKey {
    pair: Pair,
    public: PublicKey,
    rng: SystemRandom,
}

enum Pair {
    Ed25519(Ed25519KeyPair),
    Es256(EcdsaKeyPair),
}

impl fmt::Debug for SigningKey {
    // Never the private key: only what identifies it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.public.alg)
            .field("kid", &hex::encode(self.public.key_id()))
            .finish()
    }
}

/// Generates a new private key; returns its PKCS#8 DER document.
pub fn generate(alg: Algorithm) -> Result<Vec<u8>, KeyError> {
    let rng = SystemRandom::new();
    let doc = match alg {
        Algorithm::Ed25519 => Ed25519KeyPair::generate_pkcs8(&rng),
        Algorithm::Es256 => {
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        }
    }
    .map_err(|_| KeyError::Random)?;
    Ok(doc.as_ref().to_vec())
}

/// Writes a PKCS#8 private key as PEM to a new file with mode 0600.
///
/// Refuses to overwrite an existing file. The file and its directory are
/// fsynced, so the key survives a power cut right after keygen.
pub fn write_private_key(path: &Path, pkcs8: &[u8]) -> Result<(), KeyError> {
    let io = |action| {
        move |source| KeyError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let pem = pem_lf(&pem::Pem::new("PRIVATE KEY", pkcs8));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("creating"))?;
    file.write_all(pem.as_bytes()).map_err(io("writing"))?;
    file.sync_all().map_err(io("syncing"))?;
    sync_parent_dir(path).map_err(io("syncing the directory of"))?;
    Ok(())
}

/// Refuses a private key file that users other than its owner can read.
pub fn check_private_permissions(path: &Path) -> Result<(), KeyError> {
    let meta = fs::metadata(path).map_err(|source| KeyError::Io {
        action: "reading",
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Makes a new directory entry durable.
pub fn sync_parent_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::File::open(dir)?.sync_all()
}

impl SigningKey {
    /// Loads a private key file, refusing one that others can read.
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let io = |action| {
            move |source| KeyError::Io {
                action,
                path: path.to_owned(),
                source,
            }
        };
        check_private_permissions(path)?;
        let bytes = fs::read(path).map_err(io("reading"))?;
        let der = pem_or_der(&bytes, "PRIVATE KEY").map_err(|reason| KeyError::Format {
            path: path.to_owned(),
            expected: "a PKCS#8 private key",
            reason,
        })?;
        SigningKey::from_pkcs8(&der).map_err(|reason| KeyError::Format {
            path: path.to_owned(),
            expected: "an Ed25519 or P-256 PKCS#8 private key",
            reason,
        })
    }

    /// A key from a PKCS#8 DER document, Ed25519 or P-256.
    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, String> {
        let rng = SystemRandom::new();
        // OpenSSL writes Ed25519 keys as PKCS#8 v1, ring as v2: accept both.
        let pair = match Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            Ok(pair) => Pair::Ed25519(pair),
            Err(ed_err) => {
                let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
                match EcdsaKeyPair::from_pkcs8(alg, der, &rng) {
                    Ok(pair) => Pair::Es256(pair),
                    Err(ec_err) => {
                        return Err(format!("not Ed25519 ({ed_err}) nor P-256 ({ec_err})"));
                    }
                }
            }
        };
        let public = match &pair {
            Pair::Ed25519(p) => PublicKey::new(Algorithm::Ed25519, p.public_key().as_ref()),
            Pair::Es256(p) => PublicKey::new(Algorithm::Es256, p.public_key().as_ref()),
        };
        Ok(SigningKey { pair, public, rng })
    }

    /// Signs `message`: 64 bytes for both algorithms.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.pair {
            Pair::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Pair::Es256(pair) => pair
                .sign(&self.rng, message)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|_| KeyError::Random),
        }
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }
}

/// A public key that verifies records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    alg: Algorithm,
    /// 32 bytes for Ed25519, a 65-byte uncompressed point for P-256.
    raw: Vec<u8>,
    kid: [u8; KEY_ID_LEN],
}

impl PublicKey {
    fn new(alg: Algorithm, raw: &[u8]) -> PublicKey {
        let mut key = PublicKey {
            alg,
            raw: raw.to_vec(),
            kid: [0; KEY_ID_LEN],
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, &key.spki_der());
        key.kid.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
        key
    }

    /// A public key from SubjectPublicKeyInfo DER.
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, String> {
        if let Some(raw) = der.strip_prefix(&ED25519_SPKI_PREFIX[..])
            && raw.len() == 32
        {
            return Ok(PublicKey::new(Algorithm::Ed25519, raw));
        }
        if let Some(raw) = der.strip_prefix(&P256_SPKI_PREFIX[..])
            && raw.len() == 65
            && raw[0] == 0x04
        {
            return Ok(PublicKey::new(Algorithm::Es256, raw));
        }
        Err("not an Ed25519 or uncompressed P-256 SubjectPublicKeyInfo".to_owned())
    }

    /// Reads a public key file: SPKI in PEM (`-----BEGIN PUBLIC KEY-----`) or DER.
    pub fn load(path: &Path) -> Result<PublicKey, KeyError> {
        let bytes = fs::read(path).map_err(|source| KeyError::Io {
            action: "reading",
            path: path.to_owned(),
            source,
        })?;
        let format = |reason| KeyError::Format {
            path: path.to_owned(),
            expected: "a public key (SPKI PEM, as `kouan key show` prints)",
            reason,
        };
        let der = pem_or_der(&bytes, "PUBLIC KEY").map_err(format)?;
        PublicKey::from_spki_der(&der).map_err(format)
    }

    /// The algorithm the key belongs to.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The raw key: 32 bytes (Ed25519) or an uncompressed point (P-256).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The key id records carry: SHA-256 of the SPKI DER, first 8 bytes.
    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        self.kid
    }

    /// SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> Vec<u8> {
        let prefix: &[u8] = match self.alg {
            Algorithm::Ed25519 => &ED25519_SPKI_PREFIX,
            Algorithm::Es256 => &P256_SPKI_PREFIX,
        };
        [prefix, &self.raw].concat()
    }

    /// SubjectPublicKeyInfo PEM.
    pub fn spki_pem(&self) -> String {
        pem_lf(&pem::Pem::new("PUBLIC KEY", self.spki_der()))
    }

    /// Whether `sig` is this key's signature of `message`.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        let alg: &dyn signature::VerificationAlgorithm = match self.alg {
            Algorithm::Ed25519 => &signature::ED25519,
            Algorithm::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
        };
        UnparsedPublicKey::new(alg, &self.raw)
            .verify(message, sig)
            .is_ok()
    }
}

/// PEM with Unix line endings (the pem crate defaults to CRLF).
fn pem_lf(block: &pem::Pem) -> String {
    pem::encode_config(
        block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The DER inside a PEM block with the given label, or the bytes themselves
/// when they are not PEM.
fn pem_or_der(bytes: &[u8], label: &str) -> Result<Vec<u8>, String> {
    if !bytes.starts_with(b"-----BEGIN") {
        return Ok(bytes.to_vec());
    }
    let block = pem::parse(bytes).map_err(|e| format!("bad PEM: {e}"))?;
    if block.tag() != label {
        return Err(format!(
            "PEM block is {:?}, expected {label:?}",
            block.tag()
        ));
    }
    Ok(block.into_contents())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_verify() {
        for alg in [Algorithm::Ed25519, Algorithm::Es256] {
            let key = SigningKey::from_pkcs8(&generate(alg).unwrap()).unwrap();
            let sig = key.sign(b"reading").unwrap();
            assert_eq!(sig.len(), 64, "{alg}: raw signature");
            assert!(key.public_key().verify(b"reading", &sig));
            assert!(!key.public_key().verify(b"readinG", &sig));
        }
    }

    #[test]
    fn spki_round_trips_and_names_the_key() {
        for alg in [Algorithm::Ed25519, Algorithm::Es256] {
            let key = SigningKey::from_pkcs8(&generate(alg).unwrap()).unwrap();
            let public = key.public_key();
            let back = PublicKey::from_spki_der(&public.spki_der()).unwrap();
            assert_eq!(&back, public);
            let pem = pem::parse(public.spki_pem()).unwrap();
            assert_eq!(pem.contents(), public.spki_der());
        }
    }

    #[test]
    fn ed25519_spki_is_the_rfc8410_layout() {
        let key = SigningKey::from_pkcs8(&generate(Algorithm::Ed25519).unwrap()).unwrap();
        let der = key.public_key().spki_der();
        assert_eq!(hex::encode(&der[..12]), "302a300506032b6570032100");
        assert_eq!(&der[12..], key.public_key().raw());
    }

    #[test]
    fn world_readable_key_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        write_private_key(&path, &generate(Algorithm::Ed25519).unwrap()).unwrap();
        assert!(SigningKey::load(&path).is_ok());

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let message = SigningKey::load(&path).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("mode 0644"), "{message}");
        assert!(message.contains("chmod 600"), "{message}");
    }

    #[test]
    fn keygen_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        write_private_key(&path, &generate(Algorithm::Ed25519).unwrap()).unwrap();
        let again = write_private_key(&path, &generate(Algorithm::Ed25519).unwrap());
        assert!(matches!(
            again,
            Err(KeyError::Io {
                action: "creating",
                ..
            })
        ));
    }
}
