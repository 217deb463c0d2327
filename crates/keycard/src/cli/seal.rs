//! `keycard seal`: the seal key that keeps secrets sealed at rest
//! (docs/SEALING.md).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use keycard_proto::{Msg, Value};
use keycard_server::seal::SealKey;

use crate::login::{connect, ConnArgs};

#[derive(Subcommand, Debug)]
pub(super) enum SealCmd {
    /// Make a new seal key in FILE (32 random bytes in base64, readable by
    /// its owner only). Keep it out of the data directory and its backups:
    /// whoever holds both holds every secret. An existing file is never
    /// replaced.
    Init {
        /// The file to create.
        file: PathBuf,
    },
    /// Seal the secrets of an existing data directory (the server
    /// stopped), then start the server with the same key. It empties the
    /// change log's history (which holds the values as they were) and
    /// compacts the store file. A run that stopped half-way is finished
    /// by running it again.
    Enable {
        /// The server's data directory.
        #[arg(long, default_value = "keycard-data")]
        data: PathBuf,
        /// The seal key file (KEYCARD_SEAL_KEY may hold the key instead).
        #[arg(long, value_name = "FILE")]
        seal_key_file: Option<PathBuf>,
    },
    /// Rotate, on the running server (needs super_root): with
    /// --new-key-file, wrap the data keys with that seal key (then start
    /// the server with it; the old one opens nothing any more); with
    /// --data, seal every record again under a new data key, in the
    /// background, while logins go on, following its progress.
    Rotate {
        #[command(flatten)]
        conn: ConnArgs,
        /// The new seal key (`keycard seal init FILE`). It is sent to the
        /// server: over TLS, or from the server's own machine.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "data",
            required_unless_present = "data"
        )]
        new_key_file: Option<PathBuf>,
        /// Seal every record again under a new data key, and drop the old
        /// data keys when done.
        #[arg(long)]
        data: bool,
    },
    /// Show the seal: the seal key's id, the data keys, the last rotation
    /// (needs super_root).
    Status {
        #[command(flatten)]
        conn: ConnArgs,
    },
}

pub(super) async fn seal(cmd: SealCmd) -> anyhow::Result<()> {
    match cmd {
        SealCmd::Init { file } => init(&file),
        SealCmd::Enable {
            data,
            seal_key_file,
        } => enable(&data, seal_key_file.as_deref()).await,
        SealCmd::Rotate {
            conn,
            new_key_file,
            data,
        } => rotate(&conn, new_key_file.as_deref(), data).await,
        SealCmd::Status { conn } => status(&conn).await,
    }
}

async fn status(conn: &ConnArgs) -> anyhow::Result<()> {
    let c = connect(conn).await?;
    let s = c.request(Msg::new().with("action", "seal_status")).await?;
    if s.get("sealed").and_then(Value::as_bool) != Some(true) {
        super::emit("secrets are not sealed\n")?;
        return Ok(());
    }
    let keys: Vec<String> = match s.get("keys") {
        Some(Value::Array(k)) => k
            .iter()
            .filter_map(Value::as_u64)
            .map(|k| k.to_string())
            .collect(),
        _ => Vec::new(),
    };
    let mut out = format!(
        "sealed with seal key {}; data key {} in use; keys held: {}\n",
        s.get("seal_key").and_then(Value::as_str).unwrap_or("?"),
        s.get("active").and_then(Value::as_u64).unwrap_or_default(),
        keys.join(", ")
    );
    if let Some(r) = s.get("rotation") {
        out.push_str(&rotation_line(r));
        out.push('\n');
    }
    super::emit(&out)
}

/// A rotation's progress in words.
fn rotation_line(r: &Value) -> String {
    let n = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or_default();
    let running = r.get("running").and_then(Value::as_bool) == Some(true);
    let state = match (running, r.get("error").and_then(Value::as_str)) {
        (true, _) => "re-sealing",
        (false, Some(_)) => "the last re-sealing failed",
        (false, None) if n("passes") == 0 => "no re-sealing yet",
        (false, None) => "the last re-sealing finished",
    };
    let mut line = format!(
        "{state}: pass {}, {} records looked at, {} sealed again",
        n("passes"),
        n("seen"),
        n("resealed")
    );
    if let Some(e) = r.get("error").and_then(Value::as_str) {
        line.push_str(&format!(" ({e})"));
    }
    line
}

async fn rotate(conn: &ConnArgs, new_key: Option<&Path>, data: bool) -> anyhow::Result<()> {
    // Refused here, before the key goes anywhere: the server would refuse
    // it too, but only once it had crossed the network in clear.
    if new_key.is_some() && !conn.at.private_channel()? {
        bail!(
            "a seal key is sent only over TLS or to a server on this machine: connect with \
             --tls-ca (or --tls)"
        );
    }
    let c = connect(conn).await?;
    if let Some(file) = new_key {
        let key = SealKey::read_file(file).map_err(anyhow::Error::msg)?;
        let raw = key.expose().to_vec();
        let r = c
            .request(
                Msg::new()
                    .with("action", "seal_rotate")
                    .with("key", Value::Bin(raw)),
            )
            .await?;
        say_err!(
            "the data keys are wrapped by seal key {} now: start the server with {} from now on",
            r.get("seal_key").and_then(Value::as_str).unwrap_or("?"),
            shown(file)
        );
        return Ok(());
    }
    if !data {
        bail!("give --new-key-file FILE or --data");
    }
    c.request(Msg::new().with("action", "seal_rotate").with("data", true))
        .await?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let s = c.request(Msg::new().with("action", "seal_status")).await?;
        let Some(r) = s.get("rotation") else {
            bail!("the server does not report the rotation");
        };
        let line = rotation_line(r);
        if tty {
            eprint!("\r{line}");
        }
        if r.get("running").and_then(Value::as_bool) != Some(true) {
            if tty {
                eprintln!();
            }
            if let Some(e) = r.get("error").and_then(Value::as_str) {
                bail!("the re-sealing failed: {}", crate::render::terminal(e));
            }
            say_err!("{line}; old data keys dropped");
            return Ok(());
        }
    }
}

fn shown(p: &Path) -> String {
    crate::render::terminal(&p.display().to_string()).into_owned()
}

fn init(file: &Path) -> anyhow::Result<()> {
    let key = SealKey::generate();
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(0o600);
    }
    let mut f = open.open(file).with_context(|| {
        format!(
            "cannot create {} (keycard seal init never replaces a file)",
            shown(file)
        )
    })?;
    let mut text = key.to_base64();
    text.push('\n');
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", shown(file)))?;
    say_err!(
        "made a seal key (id {}) in {}: start the server with --seal-key-file {}",
        key.id(),
        shown(file),
        shown(file)
    );
    Ok(())
}

/// The seal key from `file`, else KEYCARD_SEAL_KEY, if either is given.
pub(super) fn optional_key(file: Option<&Path>) -> anyhow::Result<Option<SealKey>> {
    let given = file.is_some() || std::env::var_os(crate::serve::SEAL_KEY_VAR).is_some();
    match given {
        true => key_from(file).map(Some),
        false => Ok(None),
    }
}

/// The seal key from `file`, else KEYCARD_SEAL_KEY.
fn key_from(file: Option<&Path>) -> anyhow::Result<SealKey> {
    if let Some(f) = file {
        return SealKey::read_file(f).map_err(anyhow::Error::msg);
    }
    let var = crate::serve::SEAL_KEY_VAR;
    match std::env::var_os(var) {
        Some(text) => {
            SealKey::parse(text.as_encoded_bytes()).map_err(|e| anyhow::anyhow!("{var}: {e}"))
        }
        None => bail!("give the seal key: --seal-key-file FILE (or {var})"),
    }
}

async fn enable(data: &Path, file: Option<&Path>) -> anyhow::Result<()> {
    let key = key_from(file)?;
    // Each commit keeps one change in the log: the history of values as
    // they were before sealing goes.
    let opts = keycard_store::RedbOptions {
        history: 1,
        ..keycard_store::RedbOptions::default()
    };
    let store = crate::admin::open_offline(data, opts).await?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let done = keycard_server::seal::enable(&store, &key, |n| {
        if tty {
            eprint!("\rsealing: {n} secret records");
        }
    })
    .await
    .map_err(anyhow::Error::msg)?;
    if tty {
        eprintln!();
    }
    drop(store);
    // The writer thread lets go of the file as it ends.
    let file_path = data.join(keycard_server::STORE_FILE);
    let mut tries = 0;
    loop {
        let f = file_path.clone();
        let compacted = tokio::task::spawn_blocking(move || keycard_store::RedbStore::compact(&f))
            .await
            .context("compaction")?;
        match compacted {
            Ok(()) => break,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context("cannot compact the store")),
        }
    }
    say_err!(
        "sealed {} secret records ({} already sealed{}) with seal key {}; start the server with \
         the same key",
        done.sealed,
        done.already,
        if done.created { ", keyring made" } else { "" },
        key.id()
    );
    Ok(())
}
