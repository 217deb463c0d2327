//! `keycard get`, `set`, `rm`, `ls` and `watch`: the data tree.

use anyhow::bail;
use keycard_client::Event;
use keycard_proto::Value;

use super::parse_path;
use crate::login::{connect, ConnArgs};
use crate::render;

/// `keycard get PATH`: the value, or an error when there is none.
pub(super) async fn get(conn: &ConnArgs, path: &str) -> anyhow::Result<()> {
    let c = connect(conn).await?;
    match c.get(&parse_path(path)?).await? {
        Some(node) => say!("{}", render::show(&node.value)),
        None => bail!("no value at {path}"),
    }
    Ok(())
}

/// How `keycard set` reads its VALUE and writes it.
pub(super) struct SetHow {
    /// VALUE is JSON.
    pub(super) json: bool,
    /// VALUE is hex bytes.
    pub(super) hex: bool,
    /// Only if the node holds no value yet.
    pub(super) new: bool,
}

/// `keycard set PATH VALUE`.
pub(super) async fn set(
    conn: &ConnArgs,
    path: &str,
    value: String,
    how: SetHow,
) -> anyhow::Result<()> {
    let value = if how.json {
        render::from_json(&value)?
    } else if how.hex {
        render::from_hex(&value)?
    } else {
        Value::Str(value)
    };
    let c = connect(conn).await?;
    let path = parse_path(path)?;
    let r = if how.new {
        c.create(&path, value).await?
    } else {
        c.set(&path, value).await?
    };
    say_err!(
        "tock {}{}",
        r.tock,
        if r.changed { "" } else { " (unchanged)" }
    );
    Ok(())
}

/// `keycard rm PATH`.
pub(super) async fn rm(conn: &ConnArgs, path: &str) -> anyhow::Result<()> {
    let c = connect(conn).await?;
    let r = c.delete(&parse_path(path)?).await?;
    if !r.changed {
        bail!("no value at {path}");
    }
    say_err!("removed {path} (tock {})", r.tock);
    Ok(())
}

/// `keycard ls PATH`: one line per node with a value.
pub(super) async fn ls(
    conn: &ConnArgs,
    path: &str,
    min_depth: Option<usize>,
    max_depth: Option<usize>,
) -> anyhow::Result<()> {
    let c = connect(conn).await?;
    let base = parse_path(path)?;
    let mut s = c.get_tree(&base, min_depth, max_depth).await?;
    while let Some(item) = s.next().await {
        let item = item?;
        if let Some(v) = item.value {
            say!("{}\t{}", base.join(&item.path), render::show(&v));
        }
    }
    Ok(())
}

/// `keycard watch PATH`: changes as they happen (with `fetch`, the current
/// state first).
pub(super) async fn watch(conn: &ConnArgs, path: &str, fetch: bool) -> anyhow::Result<()> {
    let c = connect(conn).await?;
    let base = parse_path(path)?;
    let mut s = c.watch(&base, fetch).await?;
    while let Some(ev) = s.next_event().await {
        match ev? {
            Event::UpToDate => say_err!("-- up to date --"),
            Event::Item(i) => match i.value {
                Some(v) => say!("{}\t{}", base.join(&i.path), render::show(&v)),
                None => say!("{}\t(deleted)", base.join(&i.path)),
            },
        }
    }
    Ok(())
}
