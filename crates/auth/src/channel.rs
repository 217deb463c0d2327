//! Agreeing a key for the `password` method's sealed box, and the box.
//!
//! Two agreements: DistKV's finite-field Diffie-Hellman (RFC 3526 MODP
//! group 14, generator 2, exactly as DistKV's client does it, so that client
//! works unchanged) and X25519 (RFC 7748), which keycard's own client uses.
//! The box is NaCl's secretbox (XSalsa20-Poly1305): 24-byte nonce, then the
//! 16-byte tag, then the ciphertext, as PyNaCl writes it.

use crypto_bigint::modular::runtime_mod::{DynResidue, DynResidueParams};
use crypto_bigint::{Encoding, U2048};
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::{Nonce, XSalsa20Poly1305};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::exchange::AuthError;
use crate::secret::SecretKey;

/// RFC 3526 §3, the 2048-bit MODP group (DistKV's group 14).
const MODP_2048: U2048 = U2048::from_be_hex(concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74",
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437",
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05",
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB",
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718",
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
));

/// Minimal big-endian bytes, as DistKV's `num2byte` writes numbers.
fn minimal(b: &[u8]) -> &[u8] {
    &b[b.iter().take_while(|x| **x == 0).count()..]
}

fn modpow(base: &U2048, exp: &U2048) -> U2048 {
    let params = DynResidueParams::new(&MODP_2048);
    DynResidue::new(base, params).pow(exp).retrieve()
}

/// The server's half of DistKV's Diffie-Hellman: checks the client's public
/// key, answers with the server's, and derives the box key (the first 32
/// bytes of the shared secret's minimal big-endian form, as DistKV does).
/// `length` is DistKV's `length` field (private key bits; at least 200).
pub fn modp_respond(client_public: &[u8], length: u64) -> Result<(Vec<u8>, SecretKey), AuthError> {
    let bad = |why: &str| AuthError::Malformed(format!("bad Diffie-Hellman public key: {why}"));
    if length < 32 {
        // DistKV would switch to the 1536-bit group 5; keycard does not.
        return Err(AuthError::Unsupported(
            "Diffie-Hellman lengths below 32 (group 5) are not offered".into(),
        ));
    }
    if client_public.is_empty() || client_public.len() > 256 {
        return Err(bad("not 1 to 256 bytes"));
    }
    let mut padded = [0u8; 256];
    padded[256 - client_public.len()..].copy_from_slice(client_public);
    let public = U2048::from_be_slice(&padded);
    let p_minus_1 = MODP_2048.wrapping_sub(&U2048::ONE);
    // 2 < y < p-1, and y in the prime-order subgroup (DistKV's checks).
    if public <= U2048::from_u8(2) || public >= p_minus_1 {
        return Err(bad("out of range"));
    }
    if modpow(&public, &p_minus_1.shr_vartime(1)) != U2048::ONE {
        return Err(bad("not in the subgroup"));
    }
    // DistKV: key_length = max(200, length); private key = key_length/8+8
    // random bytes. Cap it to the group size.
    let bytes = ((length.max(200) / 8 + 8) as usize).min(255);
    let mut private = Zeroizing::new([0u8; 256]);
    rand::rngs::OsRng.fill_bytes(&mut private[256 - bytes..]);
    let x = Zeroizing::new(U2048::from_be_slice(private.as_ref()));
    let server_public = modpow(&U2048::from_u8(2), &x);
    let shared = Zeroizing::new(modpow(&public, &x).to_be_bytes());
    let shared_min = minimal(shared.as_ref());
    if shared_min.len() < 32 {
        return Err(bad("degenerate shared secret"));
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&shared_min[..32]);
    Ok((
        minimal(&server_public.to_be_bytes()).to_vec(),
        SecretKey::new(key),
    ))
}

/// A client's half of DistKV's Diffie-Hellman (for tests and tools): a
/// private key, its public key, and how to finish.
pub struct ModpClient {
    private: Zeroizing<U2048>,
    /// The public key to send.
    pub public: Vec<u8>,
}

impl ModpClient {
    /// A fresh key pair with DistKV's sizes for `length`.
    pub fn new(length: u64) -> ModpClient {
        let bytes = ((length.max(200) / 8 + 8) as usize).min(255);
        let mut private = Zeroizing::new([0u8; 256]);
        rand::rngs::OsRng.fill_bytes(&mut private[256 - bytes..]);
        let x = Zeroizing::new(U2048::from_be_slice(private.as_ref()));
        let public = minimal(&modpow(&U2048::from_u8(2), &x).to_be_bytes()).to_vec();
        ModpClient { private: x, public }
    }

    /// The box key from the server's public key.
    pub fn finish(&self, server_public: &[u8]) -> Result<SecretKey, AuthError> {
        if server_public.is_empty() || server_public.len() > 256 {
            return Err(AuthError::Malformed("bad server public key".into()));
        }
        let mut padded = [0u8; 256];
        padded[256 - server_public.len()..].copy_from_slice(server_public);
        let shared =
            Zeroizing::new(modpow(&U2048::from_be_slice(&padded), &self.private).to_be_bytes());
        let m = minimal(shared.as_ref());
        let mut key = [0u8; 32];
        key.copy_from_slice(
            m.get(..32)
                .ok_or_else(|| AuthError::Malformed("degenerate shared secret".into()))?,
        );
        Ok(SecretKey::new(key))
    }
}

const X25519_INFO: &[u8] = b"keycard x25519 password box v1";

fn x25519_key(shared: &x25519_dalek::SharedSecret) -> Result<SecretKey, AuthError> {
    if !shared.was_contributory() {
        return Err(AuthError::Malformed("a low-order X25519 public key".into()));
    }
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(None, shared.as_bytes())
        .expand(X25519_INFO, &mut key)
        .map_err(|_| AuthError::Malformed("key derivation failed".into()))?;
    Ok(SecretKey::new(key))
}

/// The server's half of the X25519 agreement: its public key and the box
/// key, HKDF-SHA256 over the shared secret.
pub fn x25519_respond(client_public: &[u8]) -> Result<(Vec<u8>, SecretKey), AuthError> {
    let client: [u8; 32] = client_public
        .try_into()
        .map_err(|_| AuthError::Malformed("an X25519 public key is 32 bytes".into()))?;
    let secret = x25519_dalek::EphemeralSecret::random_from_rng(rand::rngs::OsRng);
    let public = x25519_dalek::PublicKey::from(&secret);
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(client));
    Ok((public.as_bytes().to_vec(), x25519_key(&shared)?))
}

/// A client's half of the X25519 agreement.
pub struct X25519Client {
    secret: x25519_dalek::StaticSecret,
    /// The public key to send.
    pub public: [u8; 32],
}

impl X25519Client {
    /// A fresh key pair.
    pub fn new() -> X25519Client {
        let secret = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
        let public = *x25519_dalek::PublicKey::from(&secret).as_bytes();
        X25519Client { secret, public }
    }

    /// The box key from the server's public key.
    pub fn finish(&self, server_public: &[u8]) -> Result<SecretKey, AuthError> {
        let server: [u8; 32] = server_public
            .try_into()
            .map_err(|_| AuthError::Malformed("an X25519 public key is 32 bytes".into()))?;
        x25519_key(
            &self
                .secret
                .diffie_hellman(&x25519_dalek::PublicKey::from(server)),
        )
    }
}

impl Default for X25519Client {
    fn default() -> Self {
        Self::new()
    }
}

/// Seals `plain` in a NaCl secretbox: nonce ‖ tag ‖ ciphertext.
pub fn seal(key: &SecretKey, plain: &[u8]) -> Vec<u8> {
    let cipher = XSalsa20Poly1305::new(key.expose().into());
    let mut nonce = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut out = nonce.to_vec();
    // Encryption with a valid key and nonce cannot fail.
    out.extend(
        cipher
            .encrypt(Nonce::from_slice(&nonce), plain)
            .unwrap_or_default(),
    );
    out
}

/// Opens a NaCl secretbox; fails on any changed byte.
pub fn open(key: &SecretKey, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, AuthError> {
    if sealed.len() < 24 + 16 {
        return Err(AuthError::Malformed("the sealed box is too short".into()));
    }
    let cipher = XSalsa20Poly1305::new(key.expose().into());
    let (nonce, body) = sealed.split_at(24);
    cipher
        .decrypt(Nonce::from_slice(nonce), body)
        .map(Zeroizing::new)
        .map_err(|_| {
            AuthError::Malformed("the sealed box does not open with this connection's key".into())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modp_client_and_server_agree() {
        let c = ModpClient::new(1024);
        let (server_pub, server_key) = modp_respond(&c.public, 1024).expect("respond");
        assert_eq!(c.finish(&server_pub).expect("finish"), server_key);
    }

    #[test]
    fn modp_rejects_bad_public_keys() {
        for bad in [vec![], vec![1], vec![2], vec![0xff; 256], vec![0xff; 300]] {
            assert!(modp_respond(&bad, 1024).is_err(), "{bad:?}");
        }
        // p-1 is out of range; a non-residue is outside the subgroup.
        let p_minus_1 = MODP_2048.wrapping_sub(&U2048::ONE).to_be_bytes();
        assert!(modp_respond(&p_minus_1, 1024).is_err());
        assert!(
            modp_respond(&[11], 1024).is_err(),
            "11 is a non-residue mod p"
        );
        assert!(modp_respond(&[3], 1024).is_ok(), "3 is a residue");
        let c = ModpClient::new(1024);
        assert!(
            modp_respond(&c.public, 16).is_err(),
            "group 5 is not offered"
        );
    }

    #[test]
    fn x25519_client_and_server_agree_and_reject_low_order_points() {
        let c = X25519Client::new();
        let (server_pub, server_key) = x25519_respond(&c.public).expect("respond");
        assert_eq!(c.finish(&server_pub).expect("finish"), server_key);
        assert!(
            x25519_respond(&[0u8; 32]).is_err(),
            "the zero point is low order"
        );
        assert!(x25519_respond(&[9u8; 31]).is_err());
    }

    #[test]
    fn box_roundtrip_and_tamper() {
        let key = SecretKey::new([3; 32]);
        let sealed = seal(&key, b"digest");
        assert_eq!(sealed.len(), 24 + 16 + 6);
        assert_eq!(open(&key, &sealed).expect("open").as_slice(), b"digest");
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert!(open(&key, &bad).is_err());
        assert!(open(&SecretKey::new([4; 32]), &sealed).is_err());
        assert!(open(&key, &sealed[..20]).is_err());
    }
}
