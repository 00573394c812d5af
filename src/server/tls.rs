//! TLS termination with rustls (ring provider): PEM certificate chain and private key, ALPN `h2` then
//! `http/1.1`, and certificate reload without restart.
//!
//! The certificate lives behind a [`ReloadingCert`] resolver; a task checks the files' modification times every
//! `server.tls.reload_interval` and swaps in the new pair once it parses and the key matches the certificate.
//! A broken pair on disk is logged and the old certificate stays in use; new connections see a new certificate as
//! soon as it is swapped, existing ones keep theirs.
//!
//! Invariant: the reload task is owned by the [`ServerTls`] that [`acceptor`] returns (and `server::serve` owns
//! that); dropping it aborts the task, which also ends by itself once the certificate resolver is gone. Nothing
//! is left running detached.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// A TLS configuration problem, naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Read { path: path.display().to_string(), source })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid { path: path.display().to_string(), message: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid { path: path.display().to_string(), message: "no PEM certificate found".into() });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Read { path: path.display().to_string(), source })?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| TlsError::Invalid { path: path.display().to_string(), message: e.to_string() })?
        .ok_or_else(|| TlsError::Invalid {
            path: path.display().to_string(),
            message: "no PEM private key found".into(),
        })
}

/// Reads and checks a certificate chain and its key.
pub fn load_pair(config: &TlsConfig) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = read_certs(&config.cert)?;
    let key = read_key(&config.key)?;
    let invalid = |path: &Path, message: String| TlsError::Invalid { path: path.display().to_string(), message };
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| invalid(&config.key, format!("unsupported private key: {e}")))?;
    let pair = CertifiedKey::new(certs, signing);
    pair.keys_match().map_err(|e| invalid(&config.key, format!("the key does not match the certificate: {e}")))?;
    Ok(Arc::new(pair))
}

/// The current certificate, swapped when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

fn modified(config: &TlsConfig) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(&config.cert)?, m(&config.key)?))
}

/// The server's TLS: the acceptor, and the task that reloads its certificate, owned here. Dropping this ends the
/// task (it is aborted; it also ends by itself once no acceptor holds the certificate any more).
pub struct ServerTls {
    pub acceptor: TlsAcceptor,
    reload: tokio::task::JoinHandle<()>,
}

impl Drop for ServerTls {
    fn drop(&mut self) {
        self.reload.abort();
    }
}

/// Builds the acceptor and starts the reload task, owned by the returned [`ServerTls`].
pub fn acceptor(config: &TlsConfig) -> Result<ServerTls, TlsError> {
    let resolver = Arc::new(ReloadingCert { current: RwLock::new(load_pair(config)?) });
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid { path: config.cert.display().to_string(), message: e.to_string() })?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let config = config.clone();
    let resolver = Arc::downgrade(&resolver);
    let reload = tokio::spawn(async move {
        let mut seen = modified(&config);
        let mut tick = tokio::time::interval(config.reload_interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(resolver) = resolver.upgrade() else { break };
            let now = modified(&config);
            if now == seen {
                continue;
            }
            match load_pair(&config) {
                Ok(pair) => {
                    *resolver.current.write().unwrap_or_else(|p| p.into_inner()) = pair;
                    seen = now;
                    tracing::info!(cert = %config.cert.display(), "TLS certificate reloaded");
                }
                // Files may be mid-rewrite: keep the old pair and try again on the next tick.
                Err(e) => {
                    tracing::warn!(error = %e, "TLS certificate not reloaded; keeping the current one")
                }
            }
        }
    });
    Ok(ServerTls { acceptor: TlsAcceptor::from(Arc::new(server)), reload })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_reload_task_ends_when_the_server_tls_is_dropped() {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = std::env::temp_dir().join(format!("dcrp-tls-unit-{}", crate::crypto::random_token()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let config = TlsConfig { cert, key, reload_interval: Duration::from_millis(10) };
        let tls = acceptor(&config).unwrap();
        let task = tls.reload.abort_handle();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!task.is_finished(), "the reload task runs while the server holds its TLS");
        drop(tls);
        for _ in 0..100 {
            if task.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(task.is_finished(), "dropping ServerTls ends the reload task");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
