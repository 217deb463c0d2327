//! TLS on the listeners: the server's certificate chain and key (PEM
//! files), the protocol versions it speaks, and a live reload.
//!
//! The crypto is rustls with its `aws-lc-rs` provider. Its C library,
//! AWS-LC, is built by the `cc` crate with the C compiler alone: no
//! cmake, Go, NASM or system OpenSSL. So `cargo build` on a fresh Linux
//! machine needs nothing beyond the Rust toolchain and gcc, and it adds
//! about half a minute to a cold build on two cores. It is chosen over
//! `ring`, which builds as easily, because rustls offers the hybrid
//! post-quantum key exchange X25519MLKEM768 only with aws-lc-rs (preferred
//! here, with X25519 and the NIST curves after it), and because rustls
//! 0.23.48 marks its `ring` provider deprecated for that reason. Every
//! suite it offers is an AEAD with an ephemeral key exchange: TLS 1.3's,
//! and, with `min_version = "1.2"`, TLS 1.2's ECDHE suites with AES-GCM
//! or ChaCha20-Poly1305. rustls has no CBC, RSA key exchange or static DH
//! to turn off.
//!
//! [`Tls`] holds what the files gave when last read. A reload (SIGHUP, or
//! the `reload` action) reads them again and builds a new configuration;
//! only if that succeeds does it replace the old one, so a bad file leaves
//! the server serving the certificate it had. A handshake takes the
//! configuration current when it starts: established connections keep
//! theirs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use keycard_auth::bouncer::KeycardId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::ServerConfig;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The `[tls]` table of the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate, PEM; a chain may follow it in the same
    /// file (leaf first). With `key`, both listeners speak TLS only.
    pub cert: Option<PathBuf>,
    /// The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// The oldest protocol version accepted: `"1.3"` (the default) or
    /// `"1.2"` (forward-secret AEAD suites only).
    pub min_version: TlsVersion,
    /// Seconds a client has to finish its handshake. Default 10; then
    /// the connection is closed. A plaintext client, which sends no
    /// handshake, is closed then too.
    pub handshake_timeout: u64,
    /// CA certificates (PEM) that sign client certificates: with it, the
    /// server asks clients for a certificate and refuses the handshake of
    /// one that presents a certificate these CAs did not sign.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: a client without a certificate is refused too.
    /// Default false (a certificate is asked for, not required).
    pub require_client_cert: bool,
    /// Certificate revocation lists (PEM) of the client CAs: a client
    /// certificate they revoke logs nobody in (and, with
    /// `require_client_cert`, is refused at the handshake). Read again on
    /// a reload.
    pub client_crl: Option<PathBuf>,
    /// Which names of a client certificate a `cert` login may log in as:
    /// `"cn"` (the subject's common name, the default), `"dns"` (its DNS
    /// subject alternative names) or `"uri"` (its URI ones: SPIFFE IDs).
    pub client_cert_name: ClientName,
}

/// Which names of a client certificate are user names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientName {
    /// The subject's common names (`CN=`).
    #[default]
    Cn,
    /// The DNS names among the subject alternative names.
    Dns,
    /// The URIs among the subject alternative names.
    Uri,
}

impl std::str::FromStr for ClientName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cn" => Ok(ClientName::Cn),
            "dns" => Ok(ClientName::Dns),
            "uri" => Ok(ClientName::Uri),
            other => Err(format!(
                "{other:?} is not a kind of certificate name (cn, dns or uri)"
            )),
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            min_version: TlsVersion::V13,
            handshake_timeout: 10,
            client_ca: None,
            require_client_cert: false,
            client_crl: None,
            client_cert_name: ClientName::Cn,
        }
    }
}

impl TlsConfig {
    /// Whether TLS is asked for, and consistently: a certificate without
    /// its key (or the reverse) is an error.
    pub fn enabled(&self) -> Result<bool, String> {
        if self.client_ca.is_none() && self.require_client_cert {
            return Err("[tls] require_client_cert needs client_ca".into());
        }
        if self.client_ca.is_none() && self.client_crl.is_some() {
            return Err("[tls] client_crl needs client_ca".into());
        }
        match (&self.cert, &self.key) {
            (Some(_), Some(_)) => Ok(true),
            (None, None) => Ok(false),
            (Some(_), None) => Err("[tls] cert is set without key (--tls-key)".into()),
            (None, Some(_)) => Err("[tls] key is set without cert (--tls-cert)".into()),
        }
    }
}

/// A TLS protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[serde(rename = "1.2")]
    V12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    V13,
}

impl std::str::FromStr for TlsVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "1.2" => Ok(TlsVersion::V12),
            "1.3" => Ok(TlsVersion::V13),
            other => Err(format!(
                "{other:?} is not a TLS version keycard speaks (1.2 or 1.3)"
            )),
        }
    }
}

/// Which listener a configuration is for: they differ in ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Front {
    /// The msgpack listener: no ALPN protocol is named for it (DistKV's
    /// protocol has no registered name), so a client offering any is
    /// served as one offering none.
    Msgpack,
    /// The HTTP listener: `http/1.1`.
    Http,
}

/// What one reading of the files gave.
struct Loaded {
    msgpack: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    /// The SHA-256 of the leaf certificate, hex, for the logs.
    fingerprint: String,
    /// The leaf's `tls-server-end-point` channel-binding data.
    end_point: Option<Arc<[u8]>>,
    /// The client CAs and revocation lists, strictly: what a `cert`
    /// login's certificate is verified with.
    clients: Option<Arc<dyn ClientCertVerifier>>,
}

/// A client's certificate chain as its handshake presented it, leaf
/// first.
pub(crate) type ClientChain = Arc<[CertificateDer<'static>]>;

/// What a client certificate is worth for a `cert` login.
pub(crate) struct ClientCheck {
    /// The verdict and, if verified, its names.
    pub(crate) cert: keycard_auth::PeerCert,
    /// A verified certificate's end (Unix ms): a keycard it logs in ends
    /// no later.
    pub(crate) not_after_ms: Option<u64>,
}

/// What a handshake starts with: the configuration, and the end-point
/// binding data of the certificate it serves.
pub(crate) struct Offer {
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) end_point: Option<Arc<[u8]>>,
}

/// The listeners' TLS configuration, reloadable (see the module docs).
pub struct Tls {
    config: TlsConfig,
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<Loaded>>,
    /// The keycards of certificate logins, with what they logged in
    /// with: a reload checks them again.
    cert_logins: std::sync::Mutex<CertLogins>,
}

/// A certificate login's keycard: the chain and the domain it logged in
/// to.
struct CertLogins {
    by_card: HashMap<KeycardId, (ClientChain, keycard_proto::Path)>,
    /// When the map holds this many, the entries of keycards that are
    /// gone are dropped (and the bound doubles from what stays).
    prune_at: usize,
}

/// The least `CertLogins::prune_at`.
const PRUNE_FLOOR: usize = 1024;

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("certificate", &self.cert)
            .field("key", &self.key)
            .field("min_version", &self.config.min_version)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl Tls {
    /// Reads the files `config` names; `None` if TLS is not asked for.
    pub fn load(config: &TlsConfig) -> Result<Option<Tls>, String> {
        if !config.enabled()? {
            return Ok(None);
        }
        let (Some(cert), Some(key)) = (&config.cert, &config.key) else {
            return Ok(None);
        };
        let loaded = build(cert, key, config)?;
        Ok(Some(Tls {
            config: config.clone(),
            cert: cert.clone(),
            key: key.clone(),
            current: RwLock::new(Arc::new(loaded)),
            cert_logins: std::sync::Mutex::new(CertLogins {
                by_card: HashMap::new(),
                prune_at: PRUNE_FLOOR,
            }),
        }))
    }

    /// Reads the files again. On success new handshakes use what they
    /// hold and the new certificate's fingerprint is returned; on failure
    /// nothing changes and the error says which file and why.
    pub fn reload(&self) -> Result<String, String> {
        let loaded = build(&self.cert, &self.key, &self.config)?;
        let fingerprint = loaded.fingerprint.clone();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
        Ok(fingerprint)
    }

    /// The SHA-256 fingerprint (hex) of the certificate in use.
    pub fn fingerprint(&self) -> String {
        self.loaded().fingerprint.clone()
    }

    /// What a handshake on `front` starts with now.
    pub(crate) fn offer(&self, front: Front) -> Offer {
        let loaded = self.loaded();
        let config = match front {
            Front::Msgpack => loaded.msgpack.clone(),
            Front::Http => loaded.http.clone(),
        };
        Offer {
            config,
            end_point: loaded.end_point.clone(),
        }
    }

    /// Judges a client's certificate `chain` for a `cert` login to
    /// `domain` (the server's root when empty): against the client CAs
    /// and revocation lists in use now, at `now_ms` (the server's clock).
    /// A certificate must be meant for client authentication (an
    /// extended key usage that names it: webpki refuses one that names
    /// others only, and this refuses one without the extension). Its
    /// names are those the configuration says; for a domain's login only
    /// those spelled `NAME@DOMAIN` count, as NAME, so that a certificate
    /// issued for a server user does not log in a domain's user of the
    /// same name (or the reverse).
    pub(crate) fn check_client(
        &self,
        chain: &[CertificateDer<'static>],
        now_ms: u64,
        domain: &keycard_proto::Path,
    ) -> ClientCheck {
        let refused = |why: String| ClientCheck {
            cert: keycard_auth::PeerCert::Refused(why),
            not_after_ms: None,
        };
        let loaded = self.loaded();
        let Some(verifier) = &loaded.clients else {
            return refused("the server has no client CAs ([tls] client_ca)".into());
        };
        let Some((leaf, intermediates)) = chain.split_first() else {
            return refused("no certificate".into());
        };
        let now = UnixTime::since_unix_epoch(Duration::from_millis(now_ms));
        if let Err(e) = verifier.verify_client_cert(leaf, intermediates, now) {
            return refused(e.to_string());
        }
        if !keycard_auth::x509::has_extension(leaf, keycard_auth::x509::EXT_KEY_USAGE) {
            return refused(
                "the certificate has no extended key usage (clientAuth is required)".into(),
            );
        }
        let names: Vec<String> = match self.config.client_cert_name {
            ClientName::Cn => match keycard_auth::x509::common_name(leaf) {
                Ok(cn) => vec![cn],
                Err(why) => return refused(why.into()),
            },
            ClientName::Dns | ClientName::Uri => match webpki::EndEntityCert::try_from(leaf) {
                Ok(ee) if self.config.client_cert_name == ClientName::Dns => {
                    ee.valid_dns_names().map(str::to_owned).collect()
                }
                Ok(ee) => ee.valid_uri_names().map(str::to_owned).collect(),
                Err(e) => return refused(format!("the certificate does not parse: {e}")),
            },
        };
        let names = match domain.is_empty() {
            true => names,
            false => {
                let suffix = format!("@{domain}");
                names
                    .iter()
                    .filter_map(|n| n.strip_suffix(&suffix))
                    .map(str::to_owned)
                    .collect()
            }
        };
        ClientCheck {
            cert: keycard_auth::PeerCert::Verified { names },
            not_after_ms: keycard_auth::x509::not_after_ms(leaf),
        }
    }

    /// Remembers that keycard `id` logged in to `domain` with the
    /// certificate `chain`, for [`Tls::recheck`]; `live` says whether a
    /// keycard is still in the table (the entries of those gone are
    /// dropped now and then).
    pub(crate) fn remember(
        &self,
        id: KeycardId,
        chain: ClientChain,
        domain: keycard_proto::Path,
        live: impl Fn(KeycardId) -> bool,
    ) {
        let mut logins = self.cert_logins.lock().unwrap_or_else(|e| e.into_inner());
        logins.by_card.insert(id, (chain, domain));
        if logins.by_card.len() >= logins.prune_at {
            logins.by_card.retain(|id, _| live(*id));
            logins.prune_at = (logins.by_card.len() * 2).max(PRUNE_FLOOR);
        }
    }

    /// Checks the certificate of every live certificate login again, with
    /// the CAs and revocation lists in use now (after a reload): the
    /// keycards whose certificate is refused now, and why. Entries of
    /// keycards that are gone (`live` says) are dropped.
    pub(crate) fn recheck(
        &self,
        now_ms: u64,
        live: impl Fn(KeycardId) -> bool,
    ) -> Vec<(KeycardId, String)> {
        let entries: Vec<_> = {
            let mut logins = self.cert_logins.lock().unwrap_or_else(|e| e.into_inner());
            logins.by_card.retain(|id, _| live(*id));
            logins
                .by_card
                .iter()
                .map(|(id, (chain, domain))| (*id, chain.clone(), domain.clone()))
                .collect()
        };
        let mut refused = Vec::new();
        for (id, chain, domain) in entries {
            if let keycard_auth::PeerCert::Refused(why) =
                self.check_client(&chain, now_ms, &domain).cert
            {
                refused.push((id, why));
            }
        }
        if !refused.is_empty() {
            let mut logins = self.cert_logins.lock().unwrap_or_else(|e| e.into_inner());
            for (id, _) in &refused {
                logins.by_card.remove(id);
            }
        }
        refused
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Builds both listeners' configurations from the files.
fn build(cert: &Path, key: &Path, config: &TlsConfig) -> Result<Loaded, String> {
    let min = config.min_version;
    let chain = read_chain(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", quoted(key)))?;
    let fingerprint = chain
        .first()
        .map(|c| hex(&Sha256::digest(c.as_ref())))
        .unwrap_or_default();
    let end_point = chain
        .first()
        .and_then(|c| keycard_auth::tls_server_end_point(c.as_ref()))
        .map(Arc::from);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match min {
        TlsVersion::V13 => &[&rustls::version::TLS13],
        TlsVersion::V12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    // Checked here for a message that names both files (rustls would
    // only say the key does not match).
    rustls::sign::CertifiedKey::from_der(chain.clone(), key_der.clone_key(), &provider).map_err(
        |e| {
            format!(
                "the key in {} does not go with the certificate in {}: {e}",
                quoted(key),
                quoted(cert)
            )
        },
    )?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let mut clients = None;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_chain(ca)? {
                roots
                    .add(c)
                    .map_err(|e| format!("a CA certificate in {} is unusable: {e}", quoted(ca)))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = match &config.client_crl {
                None => verifier,
                Some(crl) => {
                    let crls = rustls::pki_types::CertificateRevocationListDer::pem_file_iter(crl)
                        .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                        .map_err(|e| {
                            format!("cannot read revocation lists from {}: {e}", quoted(crl))
                        })?;
                    if crls.is_empty() {
                        return Err(format!("no revocation list in {}", quoted(crl)));
                    }
                    verifier.with_crls(crls)
                }
            };
            let strict = verifier
                .build()
                .map_err(|e| format!("client CAs in {}: {e}", quoted(ca)))?;
            clients = Some(strict.clone());
            // A required certificate must pass at the handshake. An
            // optional one only has to prove its key there: whether it
            // logs anyone in is the `cert` login's business, which checks
            // it again (the same refusal for every reason, audited).
            let handshake: Arc<dyn ClientCertVerifier> = match config.require_client_cert {
                true => strict,
                false => Arc::new(Optional(strict)),
            };
            builder.with_client_cert_verifier(handshake)
        }
    };
    let base = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| format!("the certificate in {}: {e}", quoted(cert)))?;
    let mut http = base.clone();
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded {
        msgpack: Arc::new(base),
        http: Arc::new(http),
        fingerprint,
        end_point,
        clients,
    })
}

/// A client certificate asked for but not required: one that fails
/// verification still completes the handshake (its signature over the
/// handshake must be good: the client holds the key), and the connection
/// is served as one without a certificate, except that a `cert` login
/// on it is refused and audited with the reason.
#[derive(Debug)]
struct Optional(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Optional {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.0.verify_client_cert(end_entity, intermediates, now) {
            // What does not parse cannot prove a key either.
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)) => Err(
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding),
            ),
            Err(rustls::Error::InvalidCertificate(_)) | Ok(_) => {
                Ok(ClientCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The certificates in a PEM file, leaf first.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", quoted(path)))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", quoted(path)));
    }
    Ok(chain)
}

/// A path as it goes into a message: quoted, escaped.
fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
