//! `keycard audit`: the audit log's last events; `keycard reload`.

use keycard_proto::{Msg, Value};

use super::emit;
use crate::login::{connect, ConnArgs};
use crate::render;

/// `keycard audit`: the last `n` events of the audit log, as a table (or
/// as the log's JSON lines).
pub(super) async fn audit(conn: &ConnArgs, n: usize, json: bool) -> anyhow::Result<()> {
    let c = connect(conn).await?;
    let r = c
        .request(Msg::new().with("action", "audit_tail").with("n", n))
        .await?;
    let lines: Vec<String> = match r.get("result") {
        Some(Value::Array(lines)) => lines
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    if json {
        return emit(&lines.iter().map(|l| format!("{l}\n")).collect::<String>());
    }
    if lines.is_empty() {
        say_err!("no events");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|line| {
            let e: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            let text = |k: &str| match &e[k] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".to_owned(),
                other => other.to_string(),
            };
            let time = e["time"].as_u64().map_or_else(
                || "-".to_owned(),
                |t| render::iso_time(t.saturating_mul(1000)),
            );
            // A login's client address; a change's author.
            let from = match e.get("source") {
                Some(_) => text("source"),
                None => text("by"),
            };
            vec![
                time,
                text("event"),
                text("outcome"),
                text("user"),
                text("method"),
                from,
            ]
        })
        .collect();
    emit(&render::table(
        &["TIME", "EVENT", "OUTCOME", "USER", "METHOD", "FROM/BY"],
        &rows,
    ))
}

/// `keycard reload`: the server reads its TLS certificate and key again.
pub(super) async fn reload(conn: &ConnArgs) -> anyhow::Result<()> {
    let c = connect(conn).await?;
    let r = c.request(Msg::new().with("action", "reload")).await?;
    match r.get("tls").and_then(Value::as_str) {
        Some(fingerprint) => say_err!(
            "reloaded: the TLS certificate now served has SHA-256 {}",
            render::terminal(fingerprint)
        ),
        None => say_err!("reloaded: the server has no TLS to reload"),
    }
    Ok(())
}
