//! TLS for the client's connections: which certificates it trusts.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::ClientError;

/// What a client trusts when it connects over TLS, and the name it
/// expects the server's certificate to carry.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    roots: Arc<rustls::RootCertStore>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the CA certificates in the PEM file `ca` (only them), and
    /// expects a certificate for `name` (a DNS name or an IP address).
    pub fn with_ca_file(ca: &Path, name: &str) -> Result<ClientTls, ClientError> {
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                ClientError::Tls(format!("cannot read CA certificates from {ca:?}: {e}"))
            })?;
        if certs.is_empty() {
            return Err(ClientError::Tls(format!("no certificate in {ca:?}")));
        }
        Self::with_roots(certs, name)
    }

    /// Trusts the system's CA certificates, and expects a certificate
    /// for `name`.
    pub fn with_system_roots(name: &str) -> Result<ClientTls, ClientError> {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            let why = found
                .errors
                .first()
                .map_or_else(|| "none found".to_owned(), ToString::to_string);
            return Err(ClientError::Tls(format!(
                "cannot read the system's CA certificates: {why}"
            )));
        }
        let mut store = rustls::RootCertStore::empty();
        // Some systems ship a few certificates rustls cannot parse: the
        // rest are still trusted.
        store.add_parsable_certificates(found.certs);
        Self::with_store(store, name)
    }

    /// Trusts the CA certificates `roots` (DER), and expects a
    /// certificate for `name`.
    pub fn with_roots(
        roots: Vec<CertificateDer<'static>>,
        name: &str,
    ) -> Result<ClientTls, ClientError> {
        let mut store = rustls::RootCertStore::empty();
        for cert in roots {
            store
                .add(cert)
                .map_err(|e| ClientError::Tls(format!("a CA certificate is unusable: {e}")))?;
        }
        Self::with_store(store, name)
    }

    fn with_store(store: rustls::RootCertStore, name: &str) -> Result<ClientTls, ClientError> {
        let roots = Arc::new(store);
        let config = Self::builder(&roots)?.with_no_client_auth();
        let name = ServerName::try_from(name.to_owned())
            .map_err(|e| ClientError::Tls(format!("{name:?} is not a server name: {e}")))?;
        Ok(ClientTls {
            config: Arc::new(config),
            name,
            roots,
        })
    }

    fn builder(
        roots: &Arc<rustls::RootCertStore>,
    ) -> Result<
        rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>,
        ClientError,
    > {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots.clone()))
    }

    /// This configuration, presenting the client certificate in `cert`
    /// (PEM, a chain may follow) with its key in `key` when the server
    /// asks for one.
    pub fn with_client_cert(&self, cert: &Path, key: &Path) -> Result<ClientTls, ClientError> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                ClientError::Tls(format!("cannot read certificates from {cert:?}: {e}"))
            })?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).map_err(|e| {
            ClientError::Tls(format!("cannot read a private key from {key:?}: {e}"))
        })?;
        let config = Self::builder(&self.roots)?
            .with_client_auth_cert(chain, key)
            .map_err(|e| ClientError::Tls(format!("the client certificate: {e}")))?;
        Ok(ClientTls {
            config: Arc::new(config),
            name: self.name.clone(),
            roots: self.roots.clone(),
        })
    }

    /// This configuration, expecting a certificate for `name` instead.
    pub fn for_name(&self, name: &str) -> Result<ClientTls, ClientError> {
        let name = ServerName::try_from(name.to_owned())
            .map_err(|e| ClientError::Tls(format!("{name:?} is not a server name: {e}")))?;
        Ok(ClientTls {
            config: self.config.clone(),
            name,
            roots: self.roots.clone(),
        })
    }

    /// The rustls configuration (for a caller with its own connection).
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }

    /// Runs the handshake over `socket` (within [`crate::CONNECT_TIMEOUT`]).
    pub async fn connect(
        &self,
        socket: tokio::net::TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ClientError> {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let handshake = connector.connect(self.name.clone(), socket);
        match tokio::time::timeout(crate::CONNECT_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(ClientError::Tls(format!("TLS handshake failed: {e}"))),
            Err(_) => Err(ClientError::Tls(format!(
                "no TLS handshake within {} s",
                crate::CONNECT_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// The channel-binding data of a client connection, as RFC 5929 and RFC
/// 9266 define them from the client's side.
pub(crate) fn binding_of(conn: &rustls::ClientConnection) -> keycard_auth::ChannelBinding {
    keycard_auth::ChannelBinding {
        tls_server_end_point: conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| keycard_auth::tls_server_end_point(c.as_ref())),
        tls_exporter: keycard_auth::tls_exporter(&**conn),
    }
}
