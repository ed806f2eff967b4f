//! Builds the rustls client configuration: platform and Mozilla roots plus `--ca-file`, and an
//! optional client certificate. Verification is always on; there is no switch to turn it off.

use std::{path::Path, sync::Arc};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("{0}")]
    Config(String),
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Read {
        what,
        path: path.display().to_string(),
        reason,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // The platform store adds corporate roots; failing to load it is not fatal.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(ca) = &files.ca_file {
        for cert in read_certs("CA file", ca)? {
            roots.add(cert).map_err(|e| TlsError::Read {
                what: "CA file",
                path: ca.display().to_string(),
                reason: e.to_string(),
            })?;
        }
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let config = match (&files.client_cert, &files.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs("client certificate", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Read {
                what: "client key",
                path: key.display().to_string(),
                reason: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Config(format!("client certificate and key do not fit: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
