//! Secrets sealed at rest (docs/SEALING.md).
//!
//! Envelope encryption: the **seal key** (32 bytes, outside the data
//! directory: `--seal-key-file`, `[seal] key_file` or `KEYCARD_SEAL_KEY`)
//! wraps the **data keys**, which the store keeps in its keyring at
//! `(nil, "seal", "keyring")`; the data keys seal every node that holds a
//! secret or a verifier (see [`is_secret`]), whole, as one AEAD box:
//!
//! ```text
//! Bin( "kcs1" | data key id (4, big-endian) | nonce (12) | ciphertext + tag (16) )
//! AAD = "keycard sealed v1" 0x00 | data key id | the node's path key
//! ```
//!
//! The AEAD is AES-256-GCM-SIV (RFC 8452) from aws-lc-rs, the library
//! TLS already links: nonces are random, and a repeated nonce (after
//! billions of seals) would lose only the fact that two plaintexts are
//! equal, not the key. The path and the key id as associated data mean a
//! sealed value copied to another node (another user, another method)
//! does not open. Rotating the seal key re-wraps the data keys only.
//!
//! [`SealedStore`] is a [`Store`] around the backend that seals on the way
//! in and opens on the way out, so nothing above it sees a sealed value
//! and nothing below it sees a secret. A value at a secret path that is
//! not sealed, once the store is sealed, is refused as corrupt: a planted
//! verifier must not log anyone in.

use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM_SIV, NONCE_LEN};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use keycard_proto::{Elem, Msg, Path, Value};
use keycard_store::{
    After, Change as StoreChange, Cond, Entry, Op, Outcome, ScanOpts, ScanPage, Store, StoreError,
    Subscription, Tock,
};
use sha2::Sha256;
use zeroize::Zeroizing;

/// What starts a sealed value.
const MAGIC: &[u8; 4] = b"kcs1";
/// The bytes of a sealed value before its ciphertext.
const HEADER: usize = 4 + 4 + NONCE_LEN;
/// The AEAD's tag.
const TAG: usize = 16;
/// The keyring's format.
const KEYRING_VERSION: u64 = 1;

/// `(nil, "seal", "keyring")`: the data keys, wrapped by the seal key.
pub fn keyring_path() -> Path {
    Path::new(vec![Elem::Nil, "seal".into(), "keyring".into()])
}

/// Whether the node at `path` holds a secret or a verifier, and so is
/// sealed: below a reserved root (the server's, or a domain's), a
/// credential record `(nil, "auth", METHOD, KIND, NAME)` (not its aux
/// nodes: bindings, capabilities, factors, last logins), the server's own
/// material `(nil, "server", NAME)` (its secret, the OPAQUE setup), a
/// durable keycard `(nil, "keycard", ID)` (a token's hash), and
/// `(nil, "session", ID)`, kept for REST sessions (their keys) once they
/// are stored.
pub fn is_secret(path: &Path) -> bool {
    let elems = path.elems();
    let Some(nil) = elems.iter().position(|e| *e == Elem::Nil) else {
        return false;
    };
    let tail = &elems[nil + 1..];
    let text = |i: usize| match tail.get(i) {
        Some(Elem::Str(s)) => Some(s.as_str()),
        _ => None,
    };
    matches!(
        (text(0), tail.len()),
        (Some("auth"), 4) | (Some("server" | "keycard" | "session"), 2)
    )
}

/// A seal key: 32 bytes, never written into the data directory.
#[derive(Clone)]
pub struct SealKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealKey({})", self.id())
    }
}

impl SealKey {
    /// A new random key.
    pub fn generate() -> SealKey {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, k.as_mut_slice());
        SealKey(k)
    }

    /// A key from its text: 32 bytes in base64 (padded or not, surrounding
    /// white space ignored), or the 32 bytes themselves.
    pub fn parse(bytes: &[u8]) -> Result<SealKey, String> {
        let trimmed = bytes.trim_ascii();
        let b64 = base64::engine::general_purpose::STANDARD
            .decode(trimmed)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
            .ok()
            .map(Zeroizing::new);
        // Raw bytes that are all printable are a passphrase, not a key.
        let printable = bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
        let raw: Option<&[u8]> = match &b64 {
            Some(d) if d.len() == 32 => Some(d.as_slice()),
            _ if bytes.len() == 32 && !printable => Some(bytes),
            _ => None,
        };
        let Some(raw) = raw else {
            let n = b64.as_ref().map_or(bytes.len(), |d| d.len());
            return Err(format!(
                "a seal key is 32 bytes, raw or in base64 (keycard seal init makes one); \
                 this holds {n}"
            ));
        };
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(raw);
        Ok(SealKey(k))
    }

    /// Reads a key file. Refused if others may read it (Unix).
    pub fn read_file(path: &FsPath) -> Result<SealKey, String> {
        let shown = format!("{:?}", path.display().to_string());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path)
                .map_err(|e| format!("cannot read the seal key file {shown}: {e}"))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(format!(
                    "the seal key file {shown} may be read by others: chmod 600 it"
                ));
            }
        }
        let bytes = Zeroizing::new(
            std::fs::read(path)
                .map_err(|e| format!("cannot read the seal key file {shown}: {e}"))?,
        );
        SealKey::parse(&bytes).map_err(|e| format!("the seal key file {shown}: {e}"))
    }

    /// The key's bytes (to hand it to a running server).
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key in base64, as `keycard seal init` writes it.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.0.as_slice()))
    }

    /// A name for the key that reveals nothing of it: 16 hex digits of an
    /// HMAC under it. The keyring records it, so that a wrong key is told
    /// apart from a damaged keyring.
    pub fn id(&self) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.0.as_slice()) else {
            return String::new();
        };
        mac.update(b"keycard seal key id");
        mac.finalize().into_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn aead(&self) -> Result<LessSafeKey, SealError> {
        aead_key(self.0.as_slice())
    }
}

fn aead_key(bytes: &[u8]) -> Result<LessSafeKey, SealError> {
    UnboundKey::new(&AES_256_GCM_SIV, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| SealError::Corrupt("a key of the wrong length".into()))
}

/// Why the seal does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The store is sealed and no key was given.
    #[error(
        "the data directory's secrets are sealed: start with its seal key \
         (--seal-key-file FILE, [seal] key_file, or KEYCARD_SEAL_KEY)"
    )]
    NoKey,
    /// The key given is not the one that sealed the store.
    #[error(
        "the seal key given (id {given}) is not the one this data directory was sealed with \
         (id {expected}): a wrong key, not a damaged store"
    )]
    WrongKey {
        /// The given key's id.
        given: String,
        /// The id the keyring names.
        expected: String,
    },
    /// A key was given for a store whose secrets are not sealed.
    #[error(
        "this data directory's secrets are not sealed: seal them first with \
         `keycard seal enable --data DIR` (the server stopped), or start without a seal key"
    )]
    NotSealed,
    /// The keyring or a sealed value is damaged.
    #[error("the sealed store is corrupt: {0}")]
    Corrupt(String),
    /// A rotation is running already.
    #[error("a rotation is running already (keycard seal status)")]
    Busy,
    /// `keycard seal enable` began and did not finish.
    #[error(
        "sealing this data directory (keycard seal enable) did not finish: run it again with \
         the same key"
    )]
    Unfinished,
}

impl From<SealError> for StoreError {
    fn from(e: SealError) -> StoreError {
        StoreError::Corrupt(e.to_string())
    }
}

/// The data keys, opened.
#[derive(Clone)]
struct Keys {
    /// The seal key that wraps them.
    kek: SealKey,
    /// The key new seals use.
    active: u32,
    /// Each key, ready to use, and its bytes (to wrap it again).
    keys: BTreeMap<u32, DataKey>,
}

/// A data key ready to use, and its bytes (to wrap it again).
type DataKey = (Arc<LessSafeKey>, Arc<Zeroizing<[u8; 32]>>);

impl Keys {
    /// The keyring record: every data key wrapped by the seal key.
    fn record(&self) -> Result<Value, SealError> {
        let wrapper = self.kek.aead()?;
        let mut entries = Vec::with_capacity(self.keys.len());
        for (id, (_, raw)) in &self.keys {
            let wrapped = boxed(&wrapper, &wrap_aad(*id), raw.as_slice())?;
            entries.push((Value::from(u64::from(*id)), Value::Bin(wrapped)));
        }
        Ok(Msg::new()
            .with("version", KEYRING_VERSION)
            .with("seal_key", self.kek.id())
            .with("active", u64::from(self.active))
            .with("keys", Value::Map(entries))
            .into_value())
    }
}

/// A change to the keyring, made by [`Sealer::propose`] and put in use by
/// [`Sealer::install`] once the store holds its record.
pub struct Proposal {
    keys: Keys,
    /// The keyring record to store.
    pub record: Value,
}

/// Seals and opens values with the data keys.
pub struct Sealer {
    keys: RwLock<Arc<Keys>>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("seal_key", &self.seal_key_id())
            .finish_non_exhaustive()
    }
}

/// What a keyring change does.
#[derive(Debug, Clone)]
pub enum KeyringChange {
    /// Wrap the data keys with this seal key instead.
    SealKey(SealKey),
    /// Add a new data key and seal with it from now on.
    NewDataKey,
    /// Drop every data key but the active one.
    DropOld,
}

/// The associated data of a value sealed at `path` with data key `id`.
fn aad(id: u32, path: &Path) -> Vec<u8> {
    let key = path.to_key();
    let mut aad = Vec::with_capacity(24 + key.len());
    aad.extend_from_slice(b"keycard sealed v1\0");
    aad.extend_from_slice(&id.to_be_bytes());
    aad.extend_from_slice(&key);
    aad
}

/// The associated data of data key `id` wrapped by the seal key.
fn wrap_aad(id: u32) -> Vec<u8> {
    let mut aad = b"keycard data key v1\0".to_vec();
    aad.extend_from_slice(&id.to_be_bytes());
    aad
}

fn new_data_key() -> Zeroizing<[u8; 32]> {
    let mut dek = Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, dek.as_mut_slice());
    dek
}

fn random_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut n);
    n
}

/// `nonce | ciphertext+tag` of `plain` under `key`.
fn boxed(key: &LessSafeKey, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
    let nonce = random_nonce();
    let mut buf = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| SealError::Corrupt("sealing failed".into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

/// Opens `nonce | ciphertext+tag`; `None` if it does not authenticate.
fn unboxed(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN + TAG {
        return None;
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = Zeroizing::new(ct.to_vec());
    let plain_len = key
        .open_in_place(nonce, Aad::from(aad), buf.as_mut_slice())
        .ok()?
        .len();
    buf.truncate(plain_len);
    Some(buf)
}

impl Sealer {
    /// A new keyring with one data key, wrapped by `kek`: the sealer and
    /// the keyring record to store.
    pub fn create(kek: &SealKey) -> Result<(Sealer, Value), SealError> {
        let mut keys = Keys {
            kek: kek.clone(),
            active: 1,
            keys: BTreeMap::new(),
        };
        let dek = new_data_key();
        keys.keys
            .insert(1, (Arc::new(aead_key(dek.as_slice())?), Arc::new(dek)));
        let record = keys.record()?;
        let sealer = Sealer {
            keys: RwLock::new(Arc::new(keys)),
        };
        Ok((sealer, record))
    }

    /// The keyring as `change` would leave it, and its record; nothing
    /// changes until [`Sealer::install`].
    pub fn propose(&self, change: KeyringChange) -> Result<Proposal, SealError> {
        let mut keys = (*self.keys()).clone();
        match change {
            KeyringChange::SealKey(kek) => keys.kek = kek,
            KeyringChange::NewDataKey => {
                let id = keys
                    .keys
                    .keys()
                    .next_back()
                    .copied()
                    .unwrap_or(0)
                    .checked_add(1)
                    .ok_or_else(|| SealError::Corrupt("data key ids are used up".into()))?;
                let dek = new_data_key();
                keys.keys
                    .insert(id, (Arc::new(aead_key(dek.as_slice())?), Arc::new(dek)));
                keys.active = id;
            }
            KeyringChange::DropOld => {
                let active = keys.active;
                keys.keys.retain(|id, _| *id == active);
            }
        }
        let record = keys.record()?;
        Ok(Proposal { keys, record })
    }

    /// Puts a proposal in use (its record is stored).
    pub fn install(&self, proposal: Proposal) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(proposal.keys);
    }

    /// The data key new seals use, and every key the keyring holds.
    pub fn data_keys(&self) -> (u32, Vec<u32>) {
        let keys = self.keys();
        (keys.active, keys.keys.keys().copied().collect())
    }

    /// The id of the data key that sealed `value`, if it is sealed.
    pub fn sealed_with(value: &Value) -> Option<u32> {
        match value {
            Value::Bin(b) if b.len() >= HEADER + TAG && b.starts_with(MAGIC) => {
                let mut id = [0u8; 4];
                id.copy_from_slice(&b[4..8]);
                Some(u32::from_be_bytes(id))
            }
            _ => None,
        }
    }

    /// Opens the keyring `record` with `kek`.
    pub fn unlock(kek: &SealKey, record: &Value) -> Result<Sealer, SealError> {
        let corrupt = |what: &str| SealError::Corrupt(format!("the keyring: {what}"));
        if record.get("version").and_then(Value::as_u64) != Some(KEYRING_VERSION) {
            return Err(corrupt("an unknown version"));
        }
        let expected = record
            .get("seal_key")
            .and_then(Value::as_str)
            .ok_or_else(|| corrupt("no seal key id"))?;
        let given = kek.id();
        if given != expected {
            return Err(SealError::WrongKey {
                given,
                expected: expected.to_owned(),
            });
        }
        let active = record
            .get("active")
            .and_then(Value::as_u64)
            .and_then(|a| u32::try_from(a).ok())
            .ok_or_else(|| corrupt("no active data key"))?;
        let Some(Value::Map(entries)) = record.get("keys") else {
            return Err(corrupt("no data keys"));
        };
        let wrapper = kek.aead()?;
        let mut keys = BTreeMap::new();
        for (id, wrapped) in entries {
            let id = id
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| corrupt("a data key's id"))?;
            let Value::Bin(wrapped) = wrapped else {
                return Err(corrupt("a data key is not bytes"));
            };
            let dek = unboxed(&wrapper, &wrap_aad(id), wrapped)
                .ok_or_else(|| corrupt(&format!("data key {id} does not open")))?;
            if dek.len() != 32 {
                return Err(corrupt(&format!("data key {id} is not 32 bytes")));
            }
            let mut raw = Zeroizing::new([0u8; 32]);
            raw.copy_from_slice(&dek);
            keys.insert(id, (Arc::new(aead_key(&dek)?), Arc::new(raw)));
        }
        if !keys.contains_key(&active) {
            return Err(corrupt("the active data key is missing"));
        }
        Ok(Sealer {
            keys: RwLock::new(Arc::new(Keys {
                kek: kek.clone(),
                active,
                keys,
            })),
        })
    }

    fn keys(&self) -> Arc<Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `value` sealed for the node at `path`.
    pub fn seal(&self, path: &Path, value: &Value) -> Result<Value, SealError> {
        let keys = self.keys();
        let id = keys.active;
        let (key, _) = keys
            .keys
            .get(&id)
            .ok_or_else(|| SealError::Corrupt("the active data key is missing".into()))?;
        let plain = Zeroizing::new(keycard_proto::encode(value));
        let sealed = boxed(key, &aad(id, path), &plain)?;
        let mut out = Vec::with_capacity(HEADER - NONCE_LEN + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&sealed);
        Ok(Value::Bin(out))
    }

    /// The value sealed at `path`. Anything else — not sealed, sealed for
    /// another path, with an unknown key, damaged — is corrupt.
    pub fn open(&self, path: &Path, value: &Value) -> Result<Value, SealError> {
        let corrupt = |what: &str| SealError::Corrupt(format!("{what} at {path}"));
        let Value::Bin(bytes) = value else {
            return Err(corrupt("a value that is not sealed"));
        };
        if bytes.len() < HEADER + TAG || &bytes[..4] != MAGIC {
            return Err(corrupt("a value that is not sealed"));
        }
        let mut id = [0u8; 4];
        id.copy_from_slice(&bytes[4..8]);
        let id = u32::from_be_bytes(id);
        let keys = self.keys();
        let (key, _) = keys
            .keys
            .get(&id)
            .ok_or_else(|| corrupt(&format!("a value sealed with unknown data key {id}")))?;
        let plain = unboxed(key, &aad(id, path), &bytes[8..])
            .ok_or_else(|| corrupt("a sealed value that does not open (moved or damaged)"))?;
        let limits = keycard_proto::Limits::default();
        match keycard_proto::decode_one(&plain, &limits) {
            Ok(Some((v, n))) if n == plain.len() => Ok(v),
            _ => Err(corrupt("a sealed value that does not decode")),
        }
    }

    /// The seal key's id.
    pub fn seal_key_id(&self) -> String {
        self.keys().kek.id()
    }
}

/// A [`Store`] that seals the values of secret paths ([`is_secret`]) on
/// the way in and opens them on the way out. The change log and the live
/// feed ([`Store::changes_since`], [`Store::subscribe`]) carry the
/// backend's changes as stored: only watches of data paths read them,
/// and no data path is secret.
pub struct SealedStore {
    inner: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    /// Held (shared) by each write from its sealing to its commit: a
    /// rotation takes it whole once, so no value sealed with a data key
    /// about to be dropped is still on its way.
    writes: Arc<tokio::sync::RwLock<()>>,
}

impl SealedStore {
    /// `inner`, sealed by `sealer`.
    pub fn new(inner: Arc<dyn Store>, sealer: Arc<Sealer>) -> SealedStore {
        SealedStore {
            inner,
            sealer,
            writes: Arc::new(tokio::sync::RwLock::new(())),
        }
    }

    /// The backend as it is (sealed values as stored): what a dump reads.
    pub fn backend(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    fn open_entry(&self, path: &Path, e: Entry) -> Result<Entry, StoreError> {
        match is_secret(path) {
            true => Ok(Entry {
                value: self.sealer.open(path, &e.value)?,
                tock: e.tock,
            }),
            false => Ok(e),
        }
    }

    /// `ops` as the backend takes them: secret values sealed, and a
    /// condition or an `idem` that compares a secret value turned into
    /// one on the tock of the value compared (read now). Also which ops
    /// were turned so (a conflict on one may be a race with this read).
    async fn translate(&self, ops: Vec<Op>) -> Result<(Vec<Op>, bool), StoreError> {
        let mut out = Vec::with_capacity(ops.len());
        let mut read = false;
        for (index, op) in ops.into_iter().enumerate() {
            if !is_secret(op.path()) {
                out.push(op);
                continue;
            }
            let needs_read = match &op {
                Op::Put { cond, idem, .. } => *idem || matches!(cond, Cond::Equals(_)),
                Op::Delete { cond, .. } => matches!(cond, Cond::Equals(_)),
            };
            let current = match needs_read {
                true => {
                    read = true;
                    match self.inner.get(op.path()).await? {
                        Some(e) => {
                            let plain = self.sealer.open(op.path(), &e.value)?;
                            Some((e, plain))
                        }
                        None => None,
                    }
                }
                false => None,
            };
            // A condition on the value, as one on the tock it was read at.
            let on_tock = |cond: Cond| -> Result<Cond, StoreError> {
                match cond {
                    Cond::Equals(want) => match &current {
                        Some((e, plain)) if *plain == want => Ok(Cond::TockIs(e.tock)),
                        _ => Err(StoreError::Conflict {
                            index,
                            reason: "the value differs",
                        }),
                    },
                    other => Ok(other),
                }
            };
            out.push(match op {
                Op::Put {
                    path,
                    value,
                    cond,
                    idem,
                } => {
                    let cond = on_tock(cond)?;
                    match (&current, idem) {
                        // Unchanged: the stored bytes again, which the
                        // backend's own `idem` skips.
                        (Some((e, plain)), true) if *plain == value => Op::Put {
                            path,
                            value: e.value.clone(),
                            cond: match cond {
                                Cond::Any => Cond::TockIs(e.tock),
                                c => c,
                            },
                            idem: true,
                        },
                        _ => {
                            let sealed = self.sealer.seal(&path, &value)?;
                            let cond = match (cond, idem, &current) {
                                // The value compared for `idem` must still
                                // be the one there.
                                (Cond::Any, true, Some((e, _))) => Cond::TockIs(e.tock),
                                (Cond::Any, true, None) => Cond::Absent,
                                (c, _, _) => c,
                            };
                            Op::Put {
                                path,
                                value: sealed,
                                cond,
                                idem: false,
                            }
                        }
                    }
                }
                Op::Delete { path, cond } => Op::Delete {
                    cond: on_tock(cond)?,
                    path,
                },
            });
        }
        Ok((out, read))
    }
}

/// The store a server runs on, as the seal key `key` (if any) and the
/// store's keyring make it (the table in docs/SEALING.md): sealed when
/// the keyring opens with the key; a fresh store given a key is sealed
/// from its first write; a sealed store without the key, or with another,
/// and a store with unsealed secrets given a key, are refused. The sealer
/// is returned when the store is sealed.
pub async fn attach(
    store: Arc<dyn Store>,
    key: Option<SealKey>,
) -> Result<(Arc<dyn Store>, Option<Arc<Seal>>), SealError> {
    let backend = |e: StoreError| SealError::Corrupt(e.to_string());
    let ring = store.get(&keyring_path()).await.map_err(backend)?;
    let sealer = match (ring, key) {
        (None, None) => return Ok((store, None)),
        (Some(_), None) => return Err(SealError::NoKey),
        (Some(ring), _) if ring.value.get("sealing").and_then(Value::as_bool) == Some(true) => {
            return Err(SealError::Unfinished)
        }
        (Some(ring), Some(key)) => Sealer::unlock(&key, &ring.value)?,
        (None, Some(key)) => {
            if holds_secrets(store.as_ref()).await.map_err(backend)? {
                return Err(SealError::NotSealed);
            }
            new_keyring(store.as_ref(), &key).await?
        }
    };
    let sealer = Arc::new(sealer);
    let sealed = SealedStore::new(store.clone(), sealer.clone());
    let seal = Arc::new(Seal {
        sealer,
        backend: store,
        writes: sealed.writes.clone(),
        keyring: tokio::sync::Mutex::new(()),
        rotation: std::sync::Mutex::new(Rotation::default()),
    });
    Ok((Arc::new(sealed), Some(seal)))
}

/// A running server's seal: the sealer, the backend under the seal (for
/// what must see values as stored), and the state of a rotation.
pub struct Seal {
    /// Seals and opens.
    pub sealer: Arc<Sealer>,
    /// The store under the seal.
    pub backend: Arc<dyn Store>,
    /// The sealed store's writes in flight (see [`SealedStore`]).
    writes: Arc<tokio::sync::RwLock<()>>,
    /// Keyring changes take turns.
    keyring: tokio::sync::Mutex<()>,
    rotation: std::sync::Mutex<Rotation>,
}

/// How a re-sealing of every record (`seal rotate --data`) goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    /// It is running.
    pub running: bool,
    /// Secret records looked at in the current pass.
    pub seen: u64,
    /// Records sealed again with the new data key.
    pub resealed: u64,
    /// Passes over the store (one more after any that found a record
    /// sealed with an old key).
    pub passes: u64,
    /// Why it stopped, if it failed.
    pub error: Option<String>,
}

impl Seal {
    /// Changes the keyring: stored first (conditional on the keyring not
    /// having changed since it was read), then put in use.
    pub async fn change_keyring(&self, change: KeyringChange) -> Result<(), SealError> {
        let _turn = self.keyring.lock().await;
        let backend = |e: StoreError| SealError::Corrupt(e.to_string());
        let current = self
            .backend
            .get(&keyring_path())
            .await
            .map_err(backend)?
            .ok_or_else(|| SealError::Corrupt("the keyring is gone".into()))?;
        let proposal = self.sealer.propose(change)?;
        let op = Op::Put {
            path: keyring_path(),
            value: proposal.record.clone(),
            cond: Cond::TockIs(current.tock),
            idem: false,
        };
        self.backend.write(vec![op]).await.map_err(backend)?;
        self.sealer.install(proposal);
        Ok(())
    }

    /// How the rotation goes (the last one, if none is running).
    pub fn rotation(&self) -> Rotation {
        self.rotation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn progress(&self, f: impl FnOnce(&mut Rotation)) {
        f(&mut self.rotation.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Starts sealing every secret record again under a new data key, in
    /// the background (`store` is the sealed store the server writes
    /// through). Refused while one runs.
    pub fn start_rotation(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        done: impl FnOnce(Rotation) -> futures_util::future::BoxFuture<'static, ()> + Send + 'static,
    ) -> Result<(), SealError> {
        {
            let mut r = self.rotation.lock().unwrap_or_else(|e| e.into_inner());
            if r.running {
                return Err(SealError::Busy);
            }
            *r = Rotation {
                running: true,
                ..Rotation::default()
            };
        }
        let seal = self.clone();
        tokio::spawn(async move {
            let result = seal.rotate_data(store.as_ref()).await;
            seal.progress(|r| {
                r.running = false;
                r.error = result.err().map(|e| e.to_string());
            });
            done(seal.rotation()).await;
        });
        Ok(())
    }

    /// A new data key, every secret record sealed again with it (passes
    /// over the store until one finds none sealed with another key: a
    /// write that sealed with the old key just before the switch is
    /// caught by the next pass), then the old keys dropped.
    async fn rotate_data(&self, store: &dyn Store) -> Result<(), SealError> {
        let backend = |e: StoreError| SealError::Corrupt(e.to_string());
        self.change_keyring(KeyringChange::NewDataKey).await?;
        let (active, _) = self.sealer.data_keys();
        loop {
            self.progress(|r| {
                r.passes += 1;
                r.seen = 0;
            });
            let mut stale = 0u64;
            let root = Path::root();
            let mut cursor = None;
            loop {
                let after = cursor.as_ref().map_or(After::Start, After::Cursor);
                let page = self
                    .backend
                    .scan(&root, ScanOpts::default(), after, 256)
                    .await
                    .map_err(backend)?;
                let mut seen = 0;
                for (path, e) in &page.items {
                    if !is_secret(path) {
                        continue;
                    }
                    seen += 1;
                    if Sealer::sealed_with(&e.value) == Some(active) {
                        continue;
                    }
                    stale += 1;
                    let plain = self.sealer.open(path, &e.value)?;
                    let op = Op::Put {
                        path: path.clone(),
                        value: plain,
                        cond: Cond::TockIs(e.tock),
                        idem: false,
                    };
                    match store.write(vec![op]).await {
                        // Sealed again with the active key.
                        Ok(_) => self.progress(|r| r.resealed += 1),
                        // Written meanwhile: the next pass looks again.
                        Err(StoreError::Conflict { .. }) => {}
                        Err(e) => return Err(backend(e)),
                    }
                }
                self.progress(|r| r.seen += seen);
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            if stale == 0 {
                // A write that sealed with the old key before the switch
                // and has not committed yet: wait for every write in
                // flight, then look once more.
                drop(self.writes.write().await);
                if self.stale_left(active).await? == 0 {
                    break;
                }
            }
        }
        self.change_keyring(KeyringChange::DropOld).await
    }

    /// How many secret values are sealed with another key than `active`.
    async fn stale_left(&self, active: u32) -> Result<u64, SealError> {
        let backend = |e: StoreError| SealError::Corrupt(e.to_string());
        let mut n = 0;
        let mut cursor = None;
        loop {
            let after = cursor.as_ref().map_or(After::Start, After::Cursor);
            let page = self
                .backend
                .scan(&Path::root(), ScanOpts::default(), after, 1024)
                .await
                .map_err(backend)?;
            n += page
                .items
                .iter()
                .filter(|(p, e)| is_secret(p) && Sealer::sealed_with(&e.value) != Some(active))
                .count() as u64;
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(n),
            }
        }
    }
}

/// Makes the store's keyring (with one data key, wrapped by `key`), if
/// it has none.
async fn new_keyring(store: &dyn Store, key: &SealKey) -> Result<Sealer, SealError> {
    let (sealer, record) = Sealer::create(key)?;
    let op = Op::Put {
        path: keyring_path(),
        value: record,
        cond: Cond::Absent,
        idem: false,
    };
    store
        .write(vec![op])
        .await
        .map_err(|e| SealError::Corrupt(e.to_string()))?;
    Ok(sealer)
}

/// Whether a store a server has run on holds secrets: its own secret
/// (made at the first start), or any user record.
pub async fn holds_secrets(store: &dyn Store) -> Result<bool, StoreError> {
    let reserved = |names: &[&str]| {
        let mut elems = vec![Elem::Nil];
        elems.extend(names.iter().map(|n| Elem::from(*n)));
        Path::new(elems)
    };
    if store.get(&reserved(&["server", "secret"])).await?.is_some() {
        return Ok(true);
    }
    let auth = reserved(&["auth"]);
    let users = ScanOpts {
        min_depth: 1,
        max_depth: None,
    };
    let found = store.scan_up_to(&auth, users, 1).await?;
    Ok(!found.is_empty())
}

/// What `keycard seal enable` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enabled {
    /// Whether it made the keyring (else a run before had).
    pub created: bool,
    /// Secret values it sealed.
    pub sealed: u64,
    /// Secret values already sealed.
    pub already: u64,
}

/// Seals a store's secrets with `key` (the server stopped): makes the
/// keyring if there is none, then seals every secret value not sealed
/// yet, page by page, each conditional on the value not having changed.
/// A run that stopped half-way is finished by running it again with the
/// same key. `progress` hears the count after each page.
pub async fn enable(
    store: &dyn Store,
    key: &SealKey,
    mut progress: impl FnMut(u64),
) -> Result<Enabled, SealError> {
    let backend = |e: StoreError| SealError::Corrupt(e.to_string());
    let (sealer, created) = match store.get(&keyring_path()).await.map_err(backend)? {
        Some(ring) => (Sealer::unlock(key, &ring.value)?, false),
        None => (new_keyring(store, key).await?, true),
    };
    // Marked unfinished until every secret is sealed: a server refuses to
    // start on a directory half sealed.
    mark_sealing(store, true).await?;
    let mut done = Enabled {
        created,
        sealed: 0,
        already: 0,
    };
    let root = Path::root();
    let mut cursor = None;
    loop {
        let after = cursor.as_ref().map_or(After::Start, After::Cursor);
        let page = store
            .scan(&root, ScanOpts::default(), after, 512)
            .await
            .map_err(backend)?;
        let mut ops = Vec::new();
        for (path, e) in &page.items {
            if !is_secret(path) {
                continue;
            }
            let looks_sealed = matches!(&e.value, Value::Bin(b) if b.starts_with(MAGIC));
            if looks_sealed {
                // Sealed by a run before: it must open, or the store is
                // damaged.
                sealer.open(path, &e.value)?;
                done.already += 1;
                continue;
            }
            ops.push(Op::Put {
                path: path.clone(),
                value: sealer.seal(path, &e.value)?,
                cond: Cond::TockIs(e.tock),
                idem: false,
            });
        }
        if !ops.is_empty() {
            done.sealed += ops.len() as u64;
            store.write(ops).await.map_err(backend)?;
        }
        progress(done.sealed + done.already);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    mark_sealing(store, false).await?;
    Ok(done)
}

/// Sets or clears the keyring's mark that `seal enable` is under way.
async fn mark_sealing(store: &dyn Store, on: bool) -> Result<(), SealError> {
    let backend = |e: StoreError| SealError::Corrupt(e.to_string());
    let ring = store
        .get(&keyring_path())
        .await
        .map_err(backend)?
        .ok_or_else(|| SealError::Corrupt("the keyring is gone".into()))?;
    let Value::Map(mut fields) = ring.value else {
        return Err(SealError::Corrupt("the keyring is not a map".into()));
    };
    fields.retain(|(k, _)| k.as_str() != Some("sealing"));
    if on {
        fields.push((Value::from("sealing"), Value::from(true)));
    }
    let op = Op::Put {
        path: keyring_path(),
        value: Value::Map(fields),
        cond: Cond::TockIs(ring.tock),
        idem: false,
    };
    store.write(vec![op]).await.map_err(backend)?;
    Ok(())
}

/// How often a batch whose conditions were read through the seal is tried
/// again when another write came between the read and the commit.
const RACE_RETRIES: usize = 8;

#[async_trait]
impl Store for SealedStore {
    async fn get(&self, path: &Path) -> Result<Option<Entry>, StoreError> {
        match self.inner.get(path).await? {
            Some(e) => self.open_entry(path, e).map(Some),
            None => Ok(None),
        }
    }

    async fn write(&self, ops: Vec<Op>) -> Result<Vec<Outcome>, StoreError> {
        // Data writes (the common case) touch no secret: straight down,
        // with nothing sealed, copied or locked.
        if !ops.iter().any(|o| is_secret(o.path())) {
            return self.inner.write(ops).await;
        }
        let _sealing = self.writes.read().await;
        let mut tries = 0;
        loop {
            let (translated, read) = self.translate(ops.clone()).await?;
            let paths: Vec<Path> = translated.iter().map(|o| o.path().clone()).collect();
            match self.inner.write(translated).await {
                Ok(outcomes) => {
                    return outcomes
                        .into_iter()
                        .zip(paths)
                        .map(|(mut o, path)| {
                            if let (Some(prev), true) = (&o.prev, is_secret(&path)) {
                                o.prev = Some(self.sealer.open(&path, prev)?);
                            }
                            Ok(o)
                        })
                        .collect();
                }
                // A secret value compared through the seal changed between
                // the read and the commit: compare again.
                Err(StoreError::Conflict { .. }) if read && tries < RACE_RETRIES => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    async fn scan(
        &self,
        prefix: &Path,
        opts: ScanOpts,
        after: After<'_>,
        limit: usize,
    ) -> Result<ScanPage, StoreError> {
        let page = self.inner.scan(prefix, opts, after, limit).await?;
        let items = page
            .items
            .into_iter()
            .map(|(p, e)| {
                let e = self.open_entry(&p, e)?;
                Ok((p, e))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(ScanPage {
            items,
            next: page.next,
        })
    }

    async fn changes_since(
        &self,
        after: Tock,
        limit: usize,
    ) -> Result<Vec<StoreChange>, StoreError> {
        // As stored, as the live feed: only watches of data paths read
        // the change log, and a secret change in its history may be
        // sealed with a data key a rotation has since dropped.
        self.inner.changes_since(after, limit).await
    }

    fn tock(&self) -> Tock {
        self.inner.tock()
    }

    async fn feed_lag(&self) -> Result<u64, StoreError> {
        self.inner.feed_lag().await
    }

    fn subscribe(&self) -> Subscription {
        self.inner.subscribe()
    }

    /// As stored: a dump keeps secret values sealed.
    async fn export(
        &self,
        page: usize,
        out: tokio::sync::mpsc::Sender<Vec<(Path, Entry)>>,
    ) -> Result<Tock, StoreError> {
        self.inner.export(page, out).await
    }

    /// As given: a restore writes values as they were dumped (sealed).
    async fn import(
        &self,
        items: Vec<(Path, Entry)>,
        finish: Option<Tock>,
    ) -> Result<(), StoreError> {
        self.inner.import(items, finish).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Path {
        Path::parse(s).expect("path")
    }

    fn reserved(elems: &[&str]) -> Path {
        let mut v = vec![Elem::Nil];
        v.extend(elems.iter().map(|e| Elem::from(*e)));
        Path::new(v)
    }

    #[test]
    fn which_paths_are_secret() {
        assert!(is_secret(&reserved(&[
            "auth",
            "scram-sha-256",
            "user",
            "joe"
        ])));
        assert!(is_secret(&reserved(&["server", "secret"])));
        assert!(is_secret(&reserved(&["keycard", "abc"])));
        assert!(is_secret(&reserved(&["session", "abc"])));
        // A domain's records too.
        let mut d = p("org.acme").elems().to_vec();
        d.extend(
            reserved(&["auth", "opaque", "user", "ann"])
                .elems()
                .iter()
                .cloned(),
        );
        assert!(is_secret(&Path::new(d)));
        // Not: aux nodes, the auth configuration, ACLs, data, the keyring.
        for not in [
            reserved(&["auth", "scram-sha-256", "user", "joe", "caps"]),
            reserved(&["auth"]),
            reserved(&["acl", "ro", "x"]),
            reserved(&["throttle", "pair", "x"]),
            keyring_path(),
            p("auth.scram-sha-256.user.joe"),
        ] {
            assert!(!is_secret(&not), "{not:?}");
        }
    }

    #[test]
    fn a_sealed_value_opens_only_where_it_was_sealed() {
        let kek = SealKey::generate();
        let (sealer, record) = Sealer::create(&kek).expect("keyring");
        let at = reserved(&["auth", "scram-sha-256", "user", "joe"]);
        let v = Msg::new().with("stored_key", "secret bytes").into_value();
        let sealed = sealer.seal(&at, &v).expect("seal");
        assert_ne!(sealed, v);
        let Value::Bin(bytes) = &sealed else {
            panic!("sealed as bytes")
        };
        assert!(!bytes.windows(12).any(|w| w == b"secret bytes"));
        assert_eq!(sealer.open(&at, &sealed).expect("open"), v);
        // Another user's path, another method's: no.
        let other = reserved(&["auth", "scram-sha-256", "user", "ann"]);
        assert!(sealer.open(&other, &sealed).is_err());
        // Each bit flipped: no.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(sealer.open(&at, &Value::Bin(b)).is_err(), "bit in byte {i}");
        }
        // A plain value where a sealed one belongs: no.
        assert!(sealer.open(&at, &v).is_err());
        // The same keyring opens with the key, and the sealed value with it.
        let again = Sealer::unlock(&kek, &record).expect("reopen");
        assert_eq!(again.open(&at, &sealed).expect("open"), v);
        // Another key is told apart from damage.
        let wrong = Sealer::unlock(&SealKey::generate(), &record).expect_err("wrong key");
        assert!(matches!(wrong, SealError::WrongKey { .. }), "{wrong}");
        let mut damaged = record.clone();
        if let Value::Map(m) = &mut damaged {
            for (k, v) in m.iter_mut() {
                if k.as_str() == Some("keys") {
                    *v = Value::Map(vec![(Value::from(1u64), Value::Bin(vec![0; 60]))]);
                }
            }
        }
        let bad = Sealer::unlock(&kek, &damaged).expect_err("damaged");
        assert!(matches!(bad, SealError::Corrupt(_)), "{bad}");
    }

    /// Through the layer a sealed store behaves as the backend does:
    /// conditions on a secret value, `idem`, `prev`, scans and the change
    /// log see plain values, and the backend sees sealed ones only.
    #[tokio::test]
    async fn the_sealed_store_keeps_the_stores_semantics() {
        use keycard_store::{MemOptions, MemStore};
        let inner: Arc<dyn Store> = Arc::new(MemStore::new(MemOptions::default()));
        let (store, sealer) = attach(inner.clone(), Some(SealKey::generate()))
            .await
            .expect("attach");
        assert!(sealer.is_some());
        let at = reserved(&["auth", "scram-sha-256", "user", "joe"]);
        let v1 = Msg::new().with("k", "one").into_value();
        let v2 = Msg::new().with("k", "two").into_value();
        store
            .write(vec![Op::put(at.clone(), v1.clone())])
            .await
            .expect("put");
        // The backend holds it sealed; the layer gives it back plain.
        let raw = inner.get(&at).await.expect("get").expect("there").value;
        assert!(matches!(&raw, Value::Bin(b) if b.starts_with(MAGIC)));
        assert_eq!(store.get(&at).await.expect("get").expect("there").value, v1);
        // Equals compares plain values.
        let eq = |want: &Value, new: &Value| Op::Put {
            path: at.clone(),
            value: new.clone(),
            cond: Cond::Equals(want.clone()),
            idem: false,
        };
        assert!(matches!(
            store.write(vec![eq(&v2, &v2)]).await,
            Err(StoreError::Conflict { index: 0, .. })
        ));
        let out = store.write(vec![eq(&v1, &v2)]).await.expect("equals held");
        assert_eq!(out[0].prev.as_ref(), Some(&v1));
        // idem: the same value is no change.
        let same = Op::Put {
            path: at.clone(),
            value: v2.clone(),
            cond: Cond::Any,
            idem: true,
        };
        let out = store.write(vec![same]).await.expect("idem");
        assert!(!out[0].changed);
        // Scans open what they return; the change log keeps it sealed.
        let found = store
            .scan_up_to(&Path::new(vec![Elem::Nil]), ScanOpts::default(), 10)
            .await
            .expect("scan");
        assert!(found.iter().any(|(p, e)| *p == at && e.value == v2));
        let changes = store.changes_since(Tock(0), 100).await.expect("log");
        let mine: Vec<_> = changes.iter().filter(|c| c.path == at).collect();
        assert!(!mine.is_empty());
        for c in mine {
            let sealed = c.value.as_ref().and_then(Sealer::sealed_with);
            assert!(c.value.is_none() || sealed.is_some(), "{c:?}");
        }
        // A delete conditional on the plain value.
        let del = Op::Delete {
            path: at.clone(),
            cond: Cond::Equals(v2.clone()),
        };
        store.write(vec![del]).await.expect("delete");
        assert!(store.get(&at).await.expect("get").is_none());
        // Reopened with the key: the keyring is there; without: refused.
        assert!(matches!(
            attach(inner.clone(), None).await.err(),
            Some(SealError::NoKey)
        ));
        // A `seal enable` that did not finish: refused with or without a
        // key, until it is run again.
        mark_sealing(inner.as_ref(), true).await.expect("mark");
        assert!(matches!(
            attach(inner.clone(), Some(SealKey::generate())).await.err(),
            Some(SealError::Unfinished)
        ));
        mark_sealing(inner.as_ref(), false).await.expect("clear");
        assert!(matches!(
            attach(inner.clone(), None).await.err(),
            Some(SealError::NoKey)
        ));
    }

    /// A new data key seals from then on and the old one still opens what
    /// it sealed until dropped; a new seal key wraps the same data keys.
    #[test]
    fn keyring_changes() {
        let kek = SealKey::generate();
        let (sealer, _) = Sealer::create(&kek).expect("keyring");
        let at = reserved(&["server", "secret"]);
        let v = Value::from("s");
        let old = sealer.seal(&at, &v).expect("seal");
        let p = sealer.propose(KeyringChange::NewDataKey).expect("propose");
        // Nothing changes before install.
        assert_eq!(sealer.data_keys(), (1, vec![1]));
        sealer.install(p);
        assert_eq!(sealer.data_keys(), (2, vec![1, 2]));
        let new = sealer.seal(&at, &v).expect("seal");
        assert_eq!(Sealer::sealed_with(&new), Some(2));
        assert_eq!(sealer.open(&at, &old).expect("old key"), v);
        let next = SealKey::generate();
        let p = sealer
            .propose(KeyringChange::SealKey(next.clone()))
            .expect("propose");
        let record = p.record.clone();
        sealer.install(p);
        assert!(Sealer::unlock(&kek, &record).is_err());
        let reopened = Sealer::unlock(&next, &record).expect("new seal key");
        assert_eq!(reopened.open(&at, &new).expect("opens"), v);
        sealer.install(sealer.propose(KeyringChange::DropOld).expect("propose"));
        assert_eq!(sealer.data_keys(), (2, vec![2]));
        assert!(sealer.open(&at, &old).is_err(), "the dropped key");
        assert_eq!(sealer.open(&at, &new).expect("opens"), v);
    }

    #[test]
    fn keys_parse_from_base64_or_raw_bytes_only() {
        let k = SealKey::generate();
        let text = k.to_base64();
        assert_eq!(SealKey::parse(text.as_bytes()).expect("b64").id(), k.id());
        let padded = format!("  {}\n", text.as_str());
        assert_eq!(SealKey::parse(padded.as_bytes()).expect("b64").id(), k.id());
        assert_eq!(SealKey::parse(k.0.as_slice()).expect("raw").id(), k.id());
        // A passphrase of 32 characters is not a key.
        let e = SealKey::parse(b"correct horse battery staple 123").expect_err("printable");
        assert!(e.contains("32 bytes"), "{e}");
        // Truncated, empty, too long: refused, saying how long it was.
        for bad in [&text.as_bytes()[..20], b"", &[7u8; 33][..]] {
            let e = SealKey::parse(bad).expect_err("refused");
            assert!(e.contains("32 bytes"), "{e}");
        }
        // Debug shows the id only.
        assert!(!format!("{k:?}").contains(text.as_str()));
    }
}
