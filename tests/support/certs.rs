//! Certificates for TLS tests, as PEM files: a CA, a certificate it signed for `localhost` and
//! `::1` with its key, a client certificate it signed, and a second CA that signed nothing here.

use std::path::{Path, PathBuf};

pub struct Certs {
    pub ca_pem: PathBuf,
    pub other_ca_pem: PathBuf,
    pub server_pem: PathBuf,
    pub server_key: PathBuf,
    pub client_pem: PathBuf,
    pub client_key: PathBuf,
}

impl Certs {
    /// Writes a fresh set into `dir`; `ca_name` is the CA's common name.
    pub fn write(dir: &Path, ca_name: &str) -> Certs {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let make_ca = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
        };
        let ca = make_ca(ca_name);
        let other = make_ca("some other CA");
        let key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_string(), "::1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
        cp.distinguished_name
            .push(rcgen::DnType::CommonName, "tidegate-client");
        let client = cp.signed_by(&client_key, &ca).unwrap();
        let w = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        Certs {
            ca_pem: w("ca.pem", ca.pem()),
            other_ca_pem: w("other-ca.pem", other.pem()),
            server_pem: w("server.pem", server.pem()),
            server_key: w("server.key", key.serialize_pem()),
            client_pem: w("client.pem", client.pem()),
            client_key: w("client.key", client_key.serialize_pem()),
        }
    }
}
