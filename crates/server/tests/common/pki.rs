//! Certificates for TLS tests, made in the test: a CA, and server
//! certificates it signs for `localhost` and 127.0.0.1, written as PEM
//! files where a server's config can name them.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SerialNumber,
};

/// A CA, and a directory for the files.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub ca_file: PathBuf,
}

/// A server certificate's files, and its DER.
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "keycard test CA");
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write CA");
        Pki { dir, ca, ca_file }
    }

    /// Writes a server certificate with serial `serial` to
    /// `server.pem`/`server.key` (replacing what was there).
    pub fn server_cert(&self, serial: u64) -> ServerCert {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("params");
        params.serial_number = Some(SerialNumber::from(serial));
        params
            .distinguished_name
            .push(DnType::CommonName, "keycard test server");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let out = ServerCert {
            cert: self.dir.path().join("server.pem"),
            key: self.dir.path().join("server.key"),
            der: cert.der().to_vec(),
        };
        // The chain: the leaf, then its CA.
        std::fs::write(&out.cert, format!("{}{}", cert.pem(), self.ca.pem())).expect("cert");
        std::fs::write(&out.key, key.serialize_pem()).expect("key");
        out
    }

    /// Writes a client certificate for `name` (its CN and a DNS name)
    /// signed by this CA, as `NAME.pem` and `NAME.key`; returns both.
    pub fn client_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        self.client_cert_serial(name, 1)
    }

    /// [`Pki::client_cert`] with serial `serial`.
    pub fn client_cert_serial(&self, name: &str, serial: u64) -> (PathBuf, PathBuf) {
        self.client_cert_until(name, serial, None)
    }

    /// [`Pki::client_cert`] with serial `serial`, valid from a year
    /// before `not_after` until it (rcgen's default validity if `None`).
    pub fn client_cert_until(
        &self,
        name: &str,
        serial: u64,
        not_after: Option<time::OffsetDateTime>,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.serial_number = Some(SerialNumber::from(serial));
        if let Some(end) = not_after {
            params.not_before = end - time::Duration::days(365);
            params.not_after = end;
        }
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let at = (
            self.dir.path().join(format!("{name}.pem")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&at.0, cert.pem()).expect("cert");
        std::fs::write(&at.1, key.serialize_pem()).expect("key");
        at
    }

    /// Writes this CA's revocation list, revoking the certificates with
    /// these serials, as `crl.pem` (replacing it); returns its path.
    pub fn crl(&self, revoked: &[u64]) -> PathBuf {
        let now = rcgen::date_time_ymd(2026, 1, 1);
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: rcgen::date_time_ymd(2036, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.ca).expect("crl");
        let at = self.dir.path().join("crl.pem");
        std::fs::write(&at, crl.pem().expect("pem")).expect("crl");
        at
    }

    /// The CA, to sign certificates a test shapes itself.
    pub fn issuer(&self) -> &CertifiedIssuer<'static, KeyPair> {
        &self.ca
    }

    /// A client trusting this CA, expecting `localhost`.
    pub fn client(&self) -> keycard_client::ClientTls {
        keycard_client::ClientTls::with_ca_file(&self.ca_file, "localhost").expect("client tls")
    }
}
