//! Certificates made by a test: a CA, and leaves it signs for 127.0.0.1 and
//! `localhost`, written as PEM files for the `--transport-tls-*` flags.

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use std::path::{Path, PathBuf};

/// Why a certificate could not be made or written. A concrete type (not
/// the harness's boxed error), so that `?` converts it into any test's
/// error type, `Send` or not.
#[derive(Debug)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "test certificates: {}", self.0)
    }
}

impl std::error::Error for Error {}

impl From<rcgen::Error> for Error {
    fn from(e: rcgen::Error) -> Self {
        Error(e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error(e.to_string())
    }
}

/// What a leaf certificate may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A server's certificate (`serverAuth`).
    Server,
    /// A client's certificate for mutual TLS (`clientAuth`).
    Client,
    /// No extended key usage: accepted for either by rustls and grpcio.
    Any,
}

/// A certificate authority of the test's own.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// The PEM files of a leaf certificate.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl Leaf {
    /// The certificate's and the key's paths as text, for flags.
    pub fn args(&self) -> (String, String) {
        (self.cert.display().to_string(), self.key.display().to_string())
    }
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Result<Ca, Error> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Ok(Ca { cert: p.self_signed(&key)?, key })
    }

    /// Writes the CA's certificate to `dir/<file>` and returns its path.
    pub fn write(&self, dir: &Path, file: &str) -> Result<PathBuf, Error> {
        let path = dir.join(file);
        std::fs::write(&path, self.cert.pem())?;
        Ok(path)
    }

    /// A new CA named "micro test CA", its certificate written to
    /// `dir/ca.pem`: the CA and that path as text, for a flag.
    pub fn in_dir(dir: &Path) -> Result<(Ca, String), Error> {
        let ca = Ca::new("micro test CA")?;
        let pem = ca.write(dir, "ca.pem")?.display().to_string();
        Ok((ca, pem))
    }

    /// Signs a leaf for 127.0.0.1 and `localhost`, written to
    /// `dir/<name>.pem` and `dir/<name>.key`.
    pub fn leaf(&self, dir: &Path, name: &str, usage: Usage) -> Result<Leaf, Error> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Any => Vec::new(),
        };
        let cert = p.signed_by(&key, &self.cert, &self.key)?;
        let leaf = Leaf { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")) };
        std::fs::write(&leaf.cert, cert.pem())?;
        std::fs::write(&leaf.key, key.serialize_pem())?;
        Ok(leaf)
    }
}
