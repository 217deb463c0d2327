//! `keycard dump` and `keycard restore`: the whole tree in one file, and
//! back into an empty data directory (docs/SEALING.md, "Dump and
//! restore").
//!
//! The file:
//!
//! ```text
//! "KEYCARD-DUMP\n"
//! {format: 1, server: "keycard VERSION", sealed: BOOL}     msgpack
//! [PATH, VALUE, TOCK]                                      msgpack, one per node, in key order
//! {end: true, count: N, tock: T}                           msgpack
//! SHA-256 of everything above                              32 bytes
//! ```
//!
//! Secret values are as the store keeps them: sealed when it is sealed,
//! with the keyring (its data keys wrapped by the seal key). The seal key
//! itself is never in a dump.

use std::io::Write;
use std::path::{Path as FsPath, PathBuf};

use anyhow::{bail, Context};
use keycard_proto::{Msg, Path, Value};
use keycard_store::{Entry, Store, Tock};
use sha2::{Digest, Sha256};

use crate::login::{connect, ConnArgs};

/// What starts a dump file.
const MAGIC: &[u8] = b"KEYCARD-DUMP\n";
/// The format this writes and reads.
const FORMAT: u64 = 1;
/// Nodes per transaction when restoring.
const RESTORE_BATCH: usize = 10_000;

fn shown(p: &FsPath) -> String {
    crate::render::terminal(&p.display().to_string()).into_owned()
}

/// Progress on a terminal, every so many nodes.
struct Progress {
    tty: bool,
    what: &'static str,
}

impl Progress {
    fn new(what: &'static str) -> Progress {
        Progress {
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            what,
        }
    }

    fn at(&self, n: u64) {
        if self.tty {
            eprint!("\r{}: {n} nodes", self.what);
        }
    }

    fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// Writes `v` as msgpack to `out` and the hash.
fn put(out: &mut impl Write, hash: &mut Sha256, v: &Value) -> std::io::Result<()> {
    let bytes = keycard_proto::encode(v);
    hash.update(&bytes);
    out.write_all(&bytes)
}

/// `keycard dump FILE`: asks the running server (super-root) for a
/// consistent snapshot and writes it to FILE (never replacing one).
pub(super) async fn dump(conn: &ConnArgs, file: &FsPath) -> anyhow::Result<()> {
    if file.exists() {
        bail!("{} exists: keycard dump never replaces a file", shown(file));
    }
    let c = connect(conn).await?;
    let sealed = c
        .request(Msg::new().with("action", "seal_status"))
        .await
        .ok()
        .and_then(|s| s.get("sealed").and_then(Value::as_bool))
        .unwrap_or(false);
    // Written beside the file, then renamed: a dump that fails leaves
    // nothing that looks like one.
    let part = PathBuf::from(format!("{}.part", file.display()));
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(0o600);
    }
    let f = open
        .open(&part)
        .with_context(|| format!("cannot create {}", shown(&part)))?;
    let result = write_dump(&c, f, sealed).await;
    match result {
        Ok((count, tock)) => {
            // A link, unlike a rename, never replaces a file that came to
            // be there meanwhile.
            let linked = std::fs::hard_link(&part, file);
            let _ = std::fs::remove_file(&part);
            linked.with_context(|| {
                format!(
                    "cannot write {} (keycard dump never replaces a file)",
                    shown(file)
                )
            })?;
            say_err!(
                "dumped {count} nodes at tock {tock} to {}{}",
                shown(file),
                if sealed {
                    " (secrets sealed: restore with the same seal key)"
                } else {
                    ""
                }
            );
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

async fn write_dump(
    c: &keycard_client::Client,
    f: std::fs::File,
    sealed: bool,
) -> anyhow::Result<(u64, u64)> {
    let mut out = std::io::BufWriter::new(f);
    let mut hash = Sha256::new();
    out.write_all(MAGIC)?;
    hash.update(MAGIC);
    let header = Msg::new()
        .with("format", FORMAT)
        .with("server", concat!("keycard ", env!("CARGO_PKG_VERSION")))
        .with("sealed", sealed)
        .into_value();
    put(&mut out, &mut hash, &header)?;
    let mut stream = c.stream(Msg::new().with("action", "dump")).await?;
    let progress = Progress::new("dumping");
    let mut count = 0u64;
    let mut end = None;
    while let Some(item) = stream.next_raw().await {
        let item = item?;
        if let Some(Value::Array(entries)) = item.get("entries") {
            for e in entries {
                put(&mut out, &mut hash, e)?;
            }
            count += entries.len() as u64;
            progress.at(count);
        } else if item.get("done").and_then(Value::as_bool) == Some(true) {
            let tock = item.get("tock").and_then(Value::as_u64);
            let told = item.get("count").and_then(Value::as_u64);
            end = Some((tock, told));
        }
    }
    progress.done();
    let Some((Some(tock), Some(told))) = end else {
        bail!("the server's dump ended without its last message: nothing written");
    };
    if told != count {
        bail!("the server said {told} nodes and sent {count}: nothing written");
    }
    let trailer = Msg::new()
        .with("end", true)
        .with("count", count)
        .with("tock", tock)
        .into_value();
    put(&mut out, &mut hash, &trailer)?;
    out.write_all(&hash.finalize())?;
    let f = out.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    Ok((count, tock))
}

/// A dump file read and checked: every node, the snapshot's tock, and
/// whether its secrets are sealed.
struct Dump {
    items: Vec<(Path, Entry)>,
    tock: Tock,
    keyring: Option<Value>,
}

/// Reads and checks a whole dump before anything is written: the
/// checksum, the format, every record's shape, the order (each path after
/// the one before: none twice), each tock at most the snapshot's, the
/// count.
fn read_dump(file: &FsPath) -> anyhow::Result<Dump> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", shown(file)))?;
    let bad = |what: &str| anyhow::anyhow!("{} is not a whole keycard dump: {what}", shown(file));
    if bytes.len() < MAGIC.len() + 32 || !bytes.starts_with(MAGIC) {
        return Err(bad("it does not start as one (or is truncated)"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return Err(bad(
            "its checksum does not match (a damaged or truncated file)",
        ));
    }
    let limits = keycard_proto::Limits {
        max_message: 64 << 20,
        ..keycard_proto::Limits::default()
    };
    let mut at = MAGIC.len();
    let mut next = || -> anyhow::Result<Value> {
        match keycard_proto::decode_one(&body[at..], &limits) {
            Ok(Some((v, n))) => {
                at += n;
                Ok(v)
            }
            _ => Err(bad("a record does not decode")),
        }
    };
    let header = next()?;
    if header.get("format").and_then(Value::as_u64) != Some(FORMAT) {
        return Err(bad("an unknown format version"));
    }
    let keyring_path = keycard_server::seal::keyring_path();
    let mut items: Vec<(Path, Entry)> = Vec::new();
    let mut keyring = None;
    let mut last_key: Option<Vec<u8>> = None;
    let trailer = loop {
        let v = next()?;
        let Value::Array(parts) = &v else {
            break v;
        };
        let [path, value, tock] = parts.as_slice() else {
            return Err(bad("a node record is not [path, value, tock]"));
        };
        let path = Path::from_value(path).map_err(|_| bad("a path does not read"))?;
        let tock = tock.as_u64().ok_or_else(|| bad("a tock is not a number"))?;
        let key = path.to_key();
        if last_key.as_ref().is_some_and(|k| *k >= key) {
            return Err(bad("the nodes are not in order (or one is there twice)"));
        }
        last_key = Some(key);
        if path == keyring_path {
            keyring = Some(value.clone());
        }
        items.push((
            path,
            Entry {
                value: value.clone(),
                tock: Tock(tock),
            },
        ));
    };
    if trailer.get("end").and_then(Value::as_bool) != Some(true) {
        return Err(bad("no end record"));
    }
    let count = trailer.get("count").and_then(Value::as_u64);
    let tock = trailer
        .get("tock")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("no tock in the end record"))?;
    if count != Some(items.len() as u64) {
        return Err(bad("the count does not match the nodes"));
    }
    if at != body.len() {
        return Err(bad("bytes after the end record"));
    }
    if items.iter().any(|(_, e)| e.tock.0 > tock) {
        return Err(bad("a node is newer than the snapshot"));
    }
    Ok(Dump {
        items,
        tock: Tock(tock),
        keyring,
    })
}

/// `keycard restore FILE --data DIR`: the dump into an empty data
/// directory (the server stopped), with the seal key as `serve` takes it
/// when the dump's secrets are sealed. Nothing is written unless the
/// whole file checks out and the key opens its keyring.
pub(super) async fn restore(
    file: &FsPath,
    data: &FsPath,
    key: Option<keycard_server::seal::SealKey>,
) -> anyhow::Result<()> {
    let store_file = data.join(keycard_server::STORE_FILE);
    if store_file.exists() {
        bail!(
            "{} holds a store already: restore only into an empty data directory",
            shown(data)
        );
    }
    let dump = read_dump(file)?;
    check_key(&dump, key.as_ref())?;
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", shown(data)))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700));
    }
    // The store file is claimed first, exclusively: of two restores into
    // one directory, the second stops here and deletes nothing of the
    // first's.
    let mut claim = std::fs::OpenOptions::new();
    claim.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        claim.mode(0o600);
    }
    claim.open(&store_file).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
            "{} holds a store already: restore only into an empty data directory",
            shown(data)
        ),
        _ => anyhow::Error::new(e).context(format!("cannot create {}", shown(&store_file))),
    })?;
    let written = import(&store_file, dump.items, dump.tock).await;
    if let Err(e) = written {
        // Nothing half-restored stays behind.
        let _ = std::fs::remove_file(&store_file);
        return Err(e);
    }
    say_err!(
        "restored {} into {} at tock {}; start the server on it{}",
        shown(file),
        shown(data),
        dump.tock.0,
        if dump.keyring.is_some() {
            " with the same seal key"
        } else {
            ""
        }
    );
    Ok(())
}

/// [`restore`] into a PostgreSQL schema (`url`) that holds no keycard
/// data: the whole file checked first, then written, the store's tock
/// set to the dump's.
pub(super) async fn restore_pg(
    file: &FsPath,
    url: &str,
    key: Option<keycard_server::seal::SealKey>,
) -> anyhow::Result<()> {
    let target = keycard_store::PgTarget::parse(url).map_err(anyhow::Error::msg)?;
    let dump = read_dump(file)?;
    check_key(&dump, key.as_ref())?;
    let store = keycard_store::PgStore::open(
        &target.clone().named("keycard restore"),
        keycard_store::PgOptions::default(),
    )
    .await
    .with_context(|| format!("cannot open {target}"))?;
    let held = store
        .scan_up_to(&keycard_proto::Path::root(), Default::default(), 1)
        .await
        .context("cannot read the store")?;
    if !held.is_empty() || store.tock().0 != 0 {
        bail!(
            "{target} (schema {}) holds keycard data already: restore only into an empty \
             schema",
            target.schema
        );
    }
    load(&store, dump.items, dump.tock).await?;
    say_err!(
        "restored {} into {target} (schema {}) at tock {}; start the servers on it{}",
        shown(file),
        target.schema,
        dump.tock.0,
        if dump.keyring.is_some() {
            " with the same seal key"
        } else {
            ""
        }
    );
    Ok(())
}

/// Refuses a dump whose seal (or its absence) does not match `key`.
fn check_key(dump: &Dump, key: Option<&keycard_server::seal::SealKey>) -> anyhow::Result<()> {
    match (&dump.keyring, key) {
        (Some(ring), Some(k)) => {
            keycard_server::seal::Sealer::unlock(k, ring).map_err(anyhow::Error::msg)?;
        }
        (Some(_), None) => bail!(
            "the dump's secrets are sealed: give its seal key (--seal-key-file FILE or \
             KEYCARD_SEAL_KEY)"
        ),
        (None, Some(_)) => bail!(
            "the dump's secrets are not sealed: restore without a seal key, then seal them \
             with `keycard seal enable`"
        ),
        (None, None) => {}
    }
    Ok(())
}

async fn import(store_file: &FsPath, items: Vec<(Path, Entry)>, tock: Tock) -> anyhow::Result<()> {
    let opened = {
        let f = store_file.to_path_buf();
        tokio::task::spawn_blocking(move || {
            keycard_store::RedbStore::open(&f, keycard_store::RedbOptions::default())
        })
        .await
        .context("cannot open the new store")?
    };
    let store = opened.context("cannot create the store")?;
    load(&store, items, tock).await
}

/// Writes a dump's nodes into an empty store, in batches, with a
/// progress bar; the store's tock becomes the dump's.
async fn load(
    store: &dyn keycard_store::Store,
    items: Vec<(Path, Entry)>,
    tock: Tock,
) -> anyhow::Result<()> {
    let progress = Progress::new("restoring");
    let total = items.len();
    let mut done = 0u64;
    let mut rest = items;
    loop {
        let tail = rest.split_off(rest.len().min(RESTORE_BATCH));
        let batch = std::mem::replace(&mut rest, tail);
        let last = rest.is_empty();
        done += batch.len() as u64;
        store
            .import(batch, last.then_some(tock))
            .await
            .context("the restore could not write")?;
        progress.at(done);
        if last {
            break;
        }
    }
    progress.done();
    debug_assert_eq!(done as usize, total);
    Ok(())
}
