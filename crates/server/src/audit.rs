//! The audit log: one JSON object per line, appended to a file in the data
//! directory by one writer task. Every login success, failure, throttle
//! and error is an event. It never holds a password, digest, proof or key:
//! events are built from names, addresses and outcomes only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::clock::ClockHandle;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// A login event.
pub struct LoginEvent<'a> {
    /// The connection.
    pub conn: u64,
    /// The client's address.
    pub source: SocketAddr,
    /// The auth method.
    pub method: &'a str,
    /// The user name as given (it may not exist).
    pub user: &'a str,
    /// `success`, `failure`, `throttled` or `error`.
    pub outcome: &'static str,
    /// Why, for humans (never a secret).
    pub reason: Option<&'a str>,
    /// The attempt's keycard.
    pub keycard: Option<keycard_auth::bouncer::KeycardId>,
}

/// What the writer task is given: a line to append, or a reader waiting
/// for the lines queued before it.
enum Item {
    Line(String),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Appends events to the audit file.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Item>,
    path: PathBuf,
    /// Where each event's `time` is read.
    clock: ClockHandle,
    /// Where login outcomes are counted (set once, by the server's state).
    metrics: std::sync::OnceLock<std::sync::Arc<crate::metrics::Metrics>>,
}

impl Audit {
    /// Opens (creating, readable by its owner only) the log at `path` and
    /// starts its writer task; events are stamped by `clock`.
    pub async fn open(path: &Path, clock: ClockHandle) -> std::io::Result<Audit> {
        let mut opts = tokio::fs::OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        opts.mode(0o600);
        let mut file = opts.open(path).await?;
        let (tx, mut rx) = mpsc::channel::<Item>(4096);
        tokio::spawn(async move {
            let mut buf = String::new();
            let mut flushed = Vec::new();
            while let Some(first) = rx.recv().await {
                buf.clear();
                let mut item = Some(first);
                // Everything queued so far goes in one write.
                while let Some(it) = item.take().or_else(|| rx.try_recv().ok()) {
                    match it {
                        Item::Line(line) => buf.push_str(&line),
                        Item::Flush(done) => flushed.push(done),
                    }
                }
                if !buf.is_empty() {
                    if let Err(e) = file.write_all(buf.as_bytes()).await {
                        tracing::error!(error = %e, "cannot write the audit log");
                    } else {
                        let _ = file.sync_data().await;
                    }
                }
                // A reader waiting for the events queued before it.
                for done in flushed.drain(..) {
                    let _ = done.send(());
                }
            }
        });
        Ok(Audit {
            tx,
            path: path.to_owned(),
            clock,
            metrics: std::sync::OnceLock::new(),
        })
    }

    /// Records a login event (also as a tracing event).
    /// From now on, every login's outcome is counted in `metrics`.
    pub(crate) fn count_in(&self, metrics: std::sync::Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    pub async fn login(&self, e: LoginEvent<'_>) {
        if let Some(m) = self.metrics.get() {
            m.login(e.method, e.outcome);
        }
        tracing::info!(
            target: "keycard::audit",
            conn = e.conn, source = ?e.source, method = e.method, user = ?e.user,
            outcome = e.outcome, reason = e.reason.unwrap_or(""),
            keycard = %e.keycard.map(|k| k.to_string()).unwrap_or_default(), "login"
        );
        let mut obj = serde_json::json!({
            "time": self.clock.now_secs(),
            "event": "login",
            "outcome": e.outcome,
            "user": e.user,
            "method": e.method,
            "source": e.source.to_string(),
            "conn": e.conn,
        });
        if let Some(r) = e.reason {
            obj["reason"] = serde_json::Value::from(r);
        }
        if let Some(k) = e.keycard {
            obj["keycard"] = serde_json::Value::from(k.to_string());
        }
        let mut line = obj.to_string();
        line.push('\n');
        let _ = self.tx.send(Item::Line(line)).await;
    }

    /// Records a keycard event (revoked, logged out, token created) by
    /// `by` (the acting user, if any).
    pub async fn keycard(
        &self,
        event: &str,
        card: &keycard_auth::bouncer::Keycard,
        by: Option<&str>,
    ) {
        tracing::info!(
            target: "keycard::audit",
            keycard = %card.id, user = ?card.user, method = ?card.method,
            by = by.unwrap_or(""), "{event}"
        );
        let obj = serde_json::json!({
            "time": self.clock.now_secs(),
            "event": event,
            "keycard": card.id.to_string(),
            "user": &*card.user,
            "method": &*card.method,
            "requester": card.requester,
            "by": by,
        });
        let mut line = obj.to_string();
        line.push('\n');
        let _ = self.tx.send(Item::Line(line)).await;
    }

    /// A user-management event (`user created`, `credential set`, `user
    /// deleted`…): who did what to which user (`NAME` or `NAME@DOMAIN`).
    pub async fn user(&self, event: &str, user: &str, method: Option<&str>, by: Option<&str>) {
        tracing::info!(
            target: "keycard::audit",
            user, method = method.unwrap_or(""), by = by.unwrap_or(""), "{event}"
        );
        let obj = serde_json::json!({
            "time": self.clock.now_secs(),
            "event": event,
            "user": user,
            "method": method,
            "by": by,
        });
        let mut line = obj.to_string();
        line.push('\n');
        let _ = self.tx.send(Item::Line(line)).await;
    }

    /// A server event (`tls reloaded`, `tls reload refused`): what, with
    /// what outcome or detail, by whom (`None`: the operator's signal).
    pub async fn server(&self, event: &str, detail: &str, by: Option<&str>) {
        tracing::info!(
            target: "keycard::audit",
            detail, by = by.unwrap_or(""), "{event}"
        );
        let obj = serde_json::json!({
            "time": self.clock.now_secs(),
            "event": event,
            "detail": detail,
            "by": by,
        });
        let mut line = obj.to_string();
        line.push('\n');
        let _ = self.tx.send(Item::Line(line)).await;
    }

    /// Waits until every event recorded before this call is written.
    pub async fn flush(&self) {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.tx.send(Item::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }

    /// The last `n` events, oldest first: every event recorded before the
    /// call is among them (the queue is flushed first).
    pub async fn tail(&self, n: usize) -> std::io::Result<Vec<String>> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        self.flush().await;
        let mut f = tokio::fs::File::open(&self.path).await?;
        let len = f.metadata().await?.len();
        let want = (n as u64).saturating_mul(1024).min(len);
        f.seek(std::io::SeekFrom::Start(len - want)).await?;
        let mut bytes = Vec::with_capacity(want as usize);
        f.read_to_end(&mut bytes).await?;
        let text = String::from_utf8_lossy(&bytes);
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        // The first line may be cut by the seek.
        if want < len && !lines.is_empty() {
            lines.remove(0);
        }
        let skip = lines.len().saturating_sub(n);
        Ok(lines.split_off(skip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tail_sees_every_event_recorded_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = Audit::open(&dir.path().join("audit.log"), ClockHandle::default())
            .await
            .expect("open");
        for round in 0..20 {
            audit
                .user("user created", &format!("u{round}"), None, None)
                .await;
            let lines = audit.tail(1).await.expect("tail");
            assert_eq!(lines.len(), 1, "round {round}");
            assert!(
                lines[0].contains(&format!("\"u{round}\"")),
                "round {round}: {lines:?}"
            );
        }
    }
}
