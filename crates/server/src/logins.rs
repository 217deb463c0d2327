//! The last logins of each user record (`GET /user/{name}` shows them):
//! when, from which client, by which method and front end.
//!
//! A login must not wait for a durable write, so marks are kept in memory
//! and written behind: a flusher merges them into `(…record, "logins")` →
//! `{last: [{at, client, method, via}…]}` (newest first, at most
//! [`KEEP`]) in one batch per tick. Readers merge what is still pending,
//! so a login shows at once. A crash loses at most one tick of marks; the
//! audit log has every login. Pending marks are bounded: past
//! [`MAX_PENDING`] records per tick, further marks are dropped (and
//! counted in a warning), never memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use keycard_proto::{Msg, Path, Value};
use keycard_store::{Op, Store, StoreError};

/// Marks kept per record.
pub const KEEP: usize = 10;
/// Records with pending marks, at most, between two flushes.
pub const MAX_PENDING: usize = 100_000;
/// How often pending marks are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// One login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    /// Unix time, milliseconds.
    pub at: u64,
    /// The client's address.
    pub client: String,
    /// The method (`token` for a token login).
    pub method: String,
    /// The front end: `msgpack` or `rest`.
    pub via: String,
}

impl Mark {
    fn to_value(&self) -> Value {
        Msg::new()
            .with("at", self.at)
            .with("client", self.client.as_str())
            .with("method", self.method.as_str())
            .with("via", self.via.as_str())
            .into_value()
    }

    /// A stored mark; `None` for anything malformed (skipped).
    fn from_value(v: &Value) -> Option<Mark> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(Mark {
            at: v.get("at").and_then(Value::as_u64)?,
            client: s("client")?,
            method: s("method")?,
            via: s("via")?,
        })
    }
}

/// `(…record, "logins")`.
pub fn logins_path(record_at: &Path) -> Path {
    record_at.child("logins")
}

/// The marks stored in a `logins` node, newest first.
fn stored(v: Option<&Value>) -> Vec<Mark> {
    match v.and_then(|v| v.get("last")) {
        Some(Value::Array(items)) => items.iter().filter_map(Mark::from_value).collect(),
        _ => Vec::new(),
    }
}

/// `older` and `newer` merged, newest first, at most [`KEEP`].
fn merge(mut marks: Vec<Mark>, newer: &[Mark]) -> Vec<Mark> {
    marks.extend_from_slice(newer);
    marks.sort_by_key(|m| std::cmp::Reverse(m.at));
    marks.truncate(KEEP);
    marks
}

/// The write-behind log of last logins.
pub struct LastLogins {
    store: Arc<dyn Store>,
    pending: Mutex<HashMap<Path, Vec<Mark>>>,
    dropped: std::sync::atomic::AtomicU64,
    /// Held by a flush from its existence checks to its write, and by a
    /// deletion across its write and [`LastLogins::forget`]: no mark of
    /// a deleted record is written back.
    flushing: tokio::sync::Mutex<()>,
}

impl LastLogins {
    /// Marks over `store`, not yet flushing (see [`LastLogins::spawn_flusher`]).
    pub fn new(store: Arc<dyn Store>) -> LastLogins {
        LastLogins {
            store,
            pending: Mutex::new(HashMap::new()),
            dropped: std::sync::atomic::AtomicU64::new(0),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<Path, Vec<Mark>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a login of the record at `record_at`.
    pub fn record(&self, record_at: &Path, mark: Mark) {
        let mut pending = self.pending();
        if let Some(marks) = pending.get_mut(record_at) {
            marks.push(mark);
            if marks.len() > KEEP {
                marks.sort_by_key(|m| std::cmp::Reverse(m.at));
                marks.truncate(KEEP);
            }
        } else if pending.len() < MAX_PENDING {
            pending.insert(record_at.clone(), vec![mark]);
        } else {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Keeps flushes out while held (a deletion holds it across its write
    /// and [`LastLogins::forget`]).
    pub async fn exclusive(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.flushing.lock().await
    }

    /// Forgets the pending marks of a deleted record.
    pub fn forget(&self, record_at: &Path) {
        self.pending().remove(record_at);
    }

    /// The last logins of the record at `record_at`, newest first.
    pub async fn of(&self, record_at: &Path) -> Result<Vec<Mark>, StoreError> {
        let on_disk = self.store.get(&logins_path(record_at)).await?;
        let mut marks = stored(on_disk.as_ref().map(|e| &e.value));
        if let Some(p) = self.pending().get(record_at) {
            marks = merge(marks, p);
        }
        Ok(marks)
    }

    /// Writes every pending mark in one batch; returns how many records
    /// were written. Marks of a record deleted meanwhile are dropped.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let _turn = self.flushing.lock().await;
        let batch = std::mem::take(&mut *self.pending());
        let dropped = self.dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "last-login marks dropped: more than {MAX_PENDING} users logged in within one flush"
            );
        }
        if batch.is_empty() {
            return Ok(0);
        }
        let mut ops = Vec::with_capacity(batch.len());
        for (record_at, marks) in batch {
            if self.store.get(&record_at).await?.is_none() {
                continue;
            }
            let at = logins_path(&record_at);
            let old = self.store.get(&at).await?;
            let merged = merge(stored(old.as_ref().map(|e| &e.value)), &marks);
            let last = Value::Array(merged.iter().map(Mark::to_value).collect());
            ops.push(Op::put(at, Msg::new().with("last", last).into_value()));
        }
        let n = ops.len();
        if n > 0 {
            self.store.write(ops).await?;
        }
        Ok(n)
    }

    /// Flushes every [`FLUSH_EVERY`] until `self` is dropped.
    pub fn spawn_flusher(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                if let Err(e) = me.flush().await {
                    tracing::warn!(error = %e, "writing last-login marks failed");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(at: u64) -> Mark {
        Mark {
            at,
            client: "127.0.0.1:1".into(),
            method: "scram-sha-256".into(),
            via: "rest".into(),
        }
    }

    #[test]
    fn merging_keeps_the_newest_first_and_at_most_keep() {
        let old: Vec<Mark> = (0..8).map(mark).collect();
        let new: Vec<Mark> = (100..105).map(mark).collect();
        let m = merge(old, &new);
        assert_eq!(m.len(), KEEP);
        assert_eq!(m[0].at, 104);
        assert_eq!(m[KEEP - 1].at, 3);
    }

    #[test]
    fn a_mark_survives_its_round_trip_and_junk_is_skipped() {
        let v = Msg::new()
            .with(
                "last",
                Value::Array(vec![
                    mark(5).to_value(),
                    Value::from(3),
                    Msg::new().into_value(),
                ]),
            )
            .into_value();
        assert_eq!(stored(Some(&v)), vec![mark(5)]);
        assert!(stored(Some(&Value::from("junk"))).is_empty());
        assert!(stored(None).is_empty());
    }
}
