//! `keycard seal`: the seal key that keeps secrets sealed at rest
//! (docs/SEALING.md).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use keycard_server::seal::SealKey;

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
}

pub(super) async fn seal(cmd: SealCmd) -> anyhow::Result<()> {
    match cmd {
        SealCmd::Init { file } => init(&file),
        SealCmd::Enable {
            data,
            seal_key_file,
        } => enable(&data, seal_key_file.as_deref()).await,
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
