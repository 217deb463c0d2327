//! Reaching PostgreSQL: the URL `--store` takes, TLS by rustls, and the
//! connections the store opens.
//!
//! The URL is libpq's (`postgres://USER@HOST:PORT/DB?…`, several hosts
//! as `h1,h2` with `target_session_attrs=read-write` to follow a
//! failover), read by tokio-postgres, with what tokio-postgres does not
//! take handled here: `sslmode=verify-ca` / `verify-full` with
//! `sslrootcert=FILE` (the CA certificates, PEM), and `schema=NAME`, the
//! schema keycard's tables live in (default `keycard`).
//!
//! TLS modes, as libpq means them: `disable` never; `prefer` (the
//! default) when the server offers it, `require` always, both without
//! checking the certificate (they guard against listeners, not a man in
//! the middle); `verify-ca` checks the chain against `sslrootcert`;
//! `verify-full` also the host name. Without `sslrootcert`, `verify-*`
//! use the system's CA certificates... which a database rarely has: give
//! the file.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::types::StoreError;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the store is and how to reach it: a parsed `postgres://` URL.
#[derive(Clone)]
pub struct PgTarget {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: PgTls,
    /// The schema keycard's tables live in.
    pub schema: String,
    /// The URL without its password, for logs.
    shown: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Display for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Whether `text` names a PostgreSQL store (a `postgres://` or
/// `postgresql://` URL).
pub fn is_pg_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// `text` with a password in its user part replaced by `***`.
fn without_password(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (auth, tail) = rest.split_at(auth_end);
    let shown_auth = match auth.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{name}:***@{host}"),
            None => auth.to_owned(),
        },
        None => auth.to_owned(),
    };
    // A password may also come as a query parameter (libpq's for the
    // user, `sslpassword` for the client key): any parameter whose name
    // says "pass" is hidden.
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let kept: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.to_ascii_lowercase().contains("pass") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", kept.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{shown_auth}{tail}")
}

/// A schema name keycard accepts: lower-case letters, digits and `_`,
/// not starting with a digit, at most 63 bytes (so it needs no quoting).
fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(b) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl PgTarget {
    /// Reads a `postgres://` URL (see the module docs); the error says
    /// what is wrong with it, never the password.
    pub fn parse(url: &str) -> Result<PgTarget, String> {
        let shown = without_password(url);
        if !is_pg_url(url) {
            return Err(format!("{shown:?} is not a postgres:// URL"));
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        let mut schema = "keycard".to_owned();
        let mut mode = "prefer".to_owned();
        let mut root: Option<String> = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "schema" => schema = percent_decode(v),
                "sslmode" => mode = percent_decode(v),
                "sslrootcert" => root = Some(percent_decode(v)),
                _ => kept.push(pair),
            }
        }
        if !valid_schema(&schema) {
            return Err(format!(
                "schema {schema:?}: use lower-case letters, digits and _ (at most 63, not \
                 starting with a digit)"
            ));
        }
        let (ssl, verify) = match mode.as_str() {
            "disable" => (SslMode::Disable, Verify::Nothing),
            "allow" | "prefer" => (SslMode::Prefer, Verify::Nothing),
            "require" => (SslMode::Require, Verify::Nothing),
            "verify-ca" => (SslMode::Require, Verify::Chain),
            "verify-full" => (SslMode::Require, Verify::Full),
            other => {
                return Err(format!(
                    "sslmode {other:?}: expected disable, prefer, require, verify-ca or \
                     verify-full"
                ))
            }
        };
        if root.is_some() && verify == Verify::Nothing {
            return Err(
                "sslrootcert is given but sslmode does not check certificates: use \
                 sslmode=verify-full (or verify-ca)"
                    .into(),
            );
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| format!("{shown:?} is not a usable PostgreSQL URL: {e}"))?;
        config.ssl_mode(ssl);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("keycard");
        }
        let tls = PgTls::new(verify, root.as_deref())?;
        Ok(PgTarget {
            config,
            tls,
            schema,
            shown,
        })
    }

    /// This target, the connections naming themselves `name` to the
    /// database (`pg_stat_activity.application_name`).
    pub fn named(mut self, name: &str) -> PgTarget {
        self.config.application_name(name);
        self
    }

    /// One connection, its driver spawned on the runtime; notifications
    /// (LISTEN) go to `notify` when given.
    pub(crate) async fn connect(
        &self,
        notify: Option<tokio::sync::mpsc::UnboundedSender<()>>,
    ) -> Result<tokio_postgres::Client, StoreError> {
        let (client, mut conn) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|e| unavailable(&e))?;
        tokio::spawn(async move {
            let mut messages =
                futures_util::stream::poll_fn(move |cx| conn.poll_message(cx).map(|m| m));
            use futures_util::StreamExt;
            while let Some(m) = messages.next().await {
                match m {
                    Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                        if let Some(n) = &notify {
                            let _ = n.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "a database connection ended");
                        break;
                    }
                }
            }
        });
        Ok(client)
    }
}

/// A database error as the store reports it: unreachable, restarting or
/// read-only databases are `Backend` errors saying the database is
/// unavailable.
pub(crate) fn unavailable(e: &tokio_postgres::Error) -> StoreError {
    let detail = match e.as_db_error() {
        // The server answered: an error of the request, unless it is
        // shutting down, starting, read-only (a standby) or out of
        // connections.
        Some(db) => {
            let code = db.code().code();
            let text = format!("{code}: {}", db.message());
            let away = code.starts_with("57P") // shutdown, cannot connect now
                || code.starts_with("08") // connection exceptions
                || code == "25006" // read-only transaction: a standby
                || code == "53300" // too many connections
                || code == "40001"; // serialization failure
            if !away {
                return StoreError::Backend(format!("the database refused: {text}"));
            }
            text
        }
        None => {
            // The source (an I/O error, a refused connection) says more
            // than the wrapper.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        }
    };
    StoreError::Unavailable(format!("the database is unavailable: {detail}"))
}

/// What a TLS connection to the database checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    Full,
}

/// rustls (aws-lc-rs, as the listeners) for connections to the database.
#[derive(Clone)]
pub struct PgTls {
    config: Arc<rustls::ClientConfig>,
}

impl PgTls {
    fn new(verify: Verify, root: Option<&str>) -> Result<PgTls, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let config = match verify {
            Verify::Nothing => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
                .with_no_client_auth(),
            Verify::Chain | Verify::Full => {
                let mut roots = rustls::RootCertStore::empty();
                match root {
                    Some(file) => {
                        use rustls::pki_types::pem::PemObject;
                        let certs: Vec<CertificateDer<'static>> =
                            CertificateDer::pem_file_iter(file)
                                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                                .map_err(|e| format!("sslrootcert {file:?}: {e}"))?;
                        if certs.is_empty() {
                            return Err(format!("sslrootcert {file:?} holds no certificate"));
                        }
                        for c in certs {
                            roots
                                .add(c)
                                .map_err(|e| format!("sslrootcert {file:?}: {e}"))?;
                        }
                    }
                    None => {
                        return Err("sslmode=verify-ca and verify-full need sslrootcert=FILE \
                                    (the CA certificates the database's certificate is \
                                    checked against)"
                            .into())
                    }
                }
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| e.to_string())?;
                let verifier: Arc<dyn ServerCertVerifier> = if verify == Verify::Full {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth()
            }
        };
        Ok(PgTls {
            config: Arc::new(config),
        })
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, Self::Error> {
        Ok(PgTlsConnect {
            config: self.config.clone(),
            name: ServerName::try_from(domain.to_owned())?,
        })
    }
}

/// One TLS handshake to come.
pub struct PgTlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

type Handshake<S> = Pin<Box<dyn Future<Output = std::io::Result<PgTlsStream<S>>> + Send>>;

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = std::io::Error;
    type Future = Handshake<S>;

    fn connect(self, stream: S) -> Handshake<S> {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(PgTlsStream(Box::new(tls)))
        })
    }
}

/// A TLS connection to the database.
pub struct PgTlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // No SCRAM-PLUS to the database: its password authentication, if
        // any, runs inside the TLS session either way.
        ChannelBinding::none()
    }
}

/// `sslmode=prefer` / `require`: encryption without a check of who is at
/// the other end (libpq's meaning).
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain is checked, the host name is not.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passwords never show; our parameters are taken out of what
    /// tokio-postgres reads; bad modes and schemas are refused by name.
    #[test]
    fn urls() {
        let t =
            PgTarget::parse("postgres://u:hunter2@127.0.0.1:5432/test?schema=kc_a&sslmode=disable")
                .expect("parses");
        assert_eq!(t.schema, "kc_a");
        assert!(!t.to_string().contains("hunter2"), "{t}");
        assert!(t.to_string().contains("u:***@"), "{t}");
        let e = PgTarget::parse("postgres://u:hunter2@h/db?sslmode=bogus").expect_err("refused");
        assert!(e.contains("bogus") && !e.contains("hunter2"), "{e}");
        let e = PgTarget::parse("postgres://h/db?schema=Robert%27)").expect_err("refused");
        assert!(e.contains("schema"), "{e}");
        let e = PgTarget::parse("postgres://h/db?sslmode=verify-full").expect_err("refused");
        assert!(e.contains("sslrootcert"), "{e}");
        let e =
            PgTarget::parse("postgres://h/db?sslmode=require&sslrootcert=/x").expect_err("refused");
        assert!(e.contains("verify-full"), "{e}");
        let shown = without_password("postgres://h/db?password=hunter2&x=1&sslpassword=k3y");
        assert!(
            !shown.contains("hunter2") && !shown.contains("k3y"),
            "{shown}"
        );
        assert!(shown.contains("x=1"), "{shown}");
        assert!(PgTarget::parse("postgres://h1,h2/db?target_session_attrs=read-write").is_ok());
        assert!(PgTarget::parse("redb").is_err());
        assert_eq!(percent_decode("a%2Fb%zz"), "a/b%zz");
    }
}
