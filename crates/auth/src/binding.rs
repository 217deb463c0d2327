//! TLS channel binding (RFC 5056): what a TLS connection can be bound
//! to, computed the same way by the server and by keycard's client.

use sha2::{Digest, Sha256};

/// What a TLS connection can be bound to (RFC 5056): the data of each
/// channel-binding type the server can compute for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelBinding {
    /// `tls-server-end-point` (RFC 5929 §4): the hash of the server's
    /// certificate, with the hash of its signature algorithm (SHA-256 for
    /// MD5 and SHA-1). `None` when the algorithm names no hash
    /// (Ed25519, RSASSA-PSS).
    pub tls_server_end_point: Option<Vec<u8>>,
    /// `tls-exporter` (RFC 9266): 32 bytes exported with the label
    /// `EXPORTER-Channel-Binding` and an empty context.
    pub tls_exporter: Option<Vec<u8>>,
}

impl ChannelBinding {
    /// The data for channel-binding type `kind`, if this connection has it.
    pub fn get(&self, kind: &str) -> Option<&[u8]> {
        match kind {
            "tls-server-end-point" => self.tls_server_end_point.as_deref(),
            "tls-exporter" => self.tls_exporter.as_deref(),
            _ => None,
        }
    }
}

/// A TLS connection's `tls-exporter` data (RFC 9266): 32 bytes exported
/// with the label `EXPORTER-Channel-Binding` and an empty context. TLS 1.3
/// only: RFC 9266 forbids it over TLS 1.2 without the extended master
/// secret, which is not checked here, so over TLS 1.2 only
/// `tls-server-end-point` is offered.
pub fn tls_exporter<D>(conn: &rustls::ConnectionCommon<D>) -> Option<Vec<u8>> {
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return None;
    }
    conn.export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", Some(b""))
        .ok()
        .map(|k| k.to_vec())
}

/// The `tls-server-end-point` channel-binding data of a certificate
/// (RFC 5929 §4.1): its hash, with the hash function of its signature
/// algorithm, SHA-256 if that is MD5 or SHA-1. `None` for an algorithm
/// without one (Ed25519, RSASSA-PSS whose hash is in its parameters) or
/// a certificate this cannot read: then only `tls-exporter` is offered.
pub fn tls_server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm
    // AlgorithmIdentifier ::= SEQUENCE { OID, … }, signature }.
    let (body, _) = der(cert, 0x30)?;
    let (_tbs, rest) = der(body, 0x30)?;
    let (alg, _) = der(rest, 0x30)?;
    let (oid, _) = der(alg, 0x06)?;
    // pkcs-1 (1.2.840.113549.1.1.x) and ecdsa-with (1.2.840.10045.4.x).
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    enum Hash {
        Sha256,
        Sha384,
        Sha512,
    }
    let hash = match oid.split_at_checked(oid.len().saturating_sub(1))? {
        // md5, sha1, sha256 WithRSAEncryption; sha384; sha512.
        (RSA, [0x04 | 0x05 | 0x0b]) => Hash::Sha256,
        (RSA, [0x0c]) => Hash::Sha384,
        (RSA, [0x0d]) => Hash::Sha512,
        // ecdsa-with-SHA1.
        (ECDSA, [0x01]) => Hash::Sha256,
        _ => match oid.split_at_checked(oid.len().saturating_sub(2))? {
            // ecdsa-with-SHA2 family: SHA256, SHA384, SHA512.
            (ECDSA, [0x03, 0x02]) => Hash::Sha256,
            (ECDSA, [0x03, 0x03]) => Hash::Sha384,
            (ECDSA, [0x03, 0x04]) => Hash::Sha512,
            _ => return None,
        },
    };
    Some(match hash {
        Hash::Sha256 => Sha256::digest(cert).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(cert).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(cert).to_vec(),
    })
}

/// One DER element with tag `tag` at the start of `input`: its contents
/// and what follows it. `None` if it is not there or runs past the end.
pub(crate) fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        // Long form: the next (first & 0x7f) bytes, big-endian; at most
        // four (a certificate is smaller than 4 GiB).
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SignatureAlgorithm};

    fn cert(alg: &'static SignatureAlgorithm) -> Vec<u8> {
        let key = KeyPair::generate_for(alg).expect("key");
        CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert")
            .der()
            .to_vec()
    }

    /// RFC 5929 §4.1: the certificate's hash with its signature
    /// algorithm's hash; none for an algorithm without one.
    #[test]
    fn the_end_point_hashes_with_the_signature_algorithms_hash() {
        for (alg, len) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, 32),
            (&rcgen::PKCS_ECDSA_P384_SHA384, 48),
        ] {
            let der = cert(alg);
            let got = tls_server_end_point(&der).expect("a hash");
            assert_eq!(got.len(), len);
            let want = match len {
                32 => Sha256::digest(&der).to_vec(),
                _ => sha2::Sha384::digest(&der).to_vec(),
            };
            assert_eq!(got, want);
        }
        assert_eq!(tls_server_end_point(&cert(&rcgen::PKCS_ED25519)), None);
    }

    /// Truncated, empty or garbage input gives nothing, never a panic.
    #[test]
    fn a_broken_certificate_gives_nothing() {
        let der = cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        for n in 0..der.len() {
            assert_eq!(tls_server_end_point(&der[..n]), None, "{n} bytes");
        }
        for junk in [
            &[0x30u8, 0x84, 0xff, 0xff, 0xff, 0xff][..],
            &[0x30, 0x80],
            &[0xff; 9],
        ] {
            assert_eq!(tls_server_end_point(junk), None);
        }
    }

    #[test]
    fn the_data_is_found_by_type_name() {
        let b = ChannelBinding {
            tls_server_end_point: Some(vec![1]),
            tls_exporter: None,
        };
        assert_eq!(b.get("tls-server-end-point"), Some(&[1u8][..]));
        assert_eq!(b.get("tls-exporter"), None);
        assert_eq!(b.get("tls-unique"), None);
    }
}
