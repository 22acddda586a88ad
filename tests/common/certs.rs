//! Certificates made at run time for the TLS tests (rcgen): a CA, and certificates it signs for
//! nodes (valid for loopback: `127.0.0.1`, `::1`, `localhost`; usable as server and client
//! certificates, as cluster members' are). The PEM files live in a directory of their own,
//! removed when the [`TestCa`] is dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A node's certificate and key files.
#[derive(Debug, Clone)]
pub struct NodeCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority and the directory of its files.
pub struct TestCa {
    dir: PathBuf,
    params: CertificateParams,
    key: KeyPair,
    ca: PathBuf,
}

impl TestCa {
    /// A new CA named `name` (in its subject, and in its directory's name).
    pub fn new(name: &str) -> TestCa {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "distro-tls-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        TestCa {
            dir,
            params,
            key,
            ca,
        }
    }

    /// The CA certificate's PEM file.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// A certificate for `name`, valid for loopback, signed by this CA.
    pub fn node(&self, name: &str) -> NodeCert {
        let sans = vec!["127.0.0.1".to_string(), "::1".into(), "localhost".into()];
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let files = NodeCert {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    /// A path in this CA's directory (for files a test writes itself).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
