//! keycard's storage layer.
//!
//! One [`Store`] trait — get, atomic conditional batch writes, ordered
//! subtree scans with depth limits, a strictly increasing [`Tock`] and a
//! change feed to serve watches from a tock — and its backends:
//! [`RedbStore`], the embedded default (a single ACID file with group
//! commit), and [`MemStore`] (the same semantics in memory, not durable).
//! What a batch does is decided once for every backend, without I/O
//! ([`plan`]), and so is how a scan page walks the key order ([`walk`]);
//! a backend reads, applies and keeps the change log. [`Backend`] names
//! them as the configuration does. The store knows paths and values only;
//! it knows nothing of auth, ACLs or the protocol.

mod backend;
mod feed;
mod mem_store;
mod pg;
pub mod plan;
mod redb_store;
mod stored;
mod types;
pub mod walk;

pub use backend::Backend;
pub use feed::{value_weight, weight, Feed, FeedError, Subscription};
pub use mem_store::{MemOptions, MemStore};
pub use pg::{is_pg_url, PgOptions, PgStore, PgTarget};
pub use redb_store::{RedbOptions, RedbStore};
pub use types::{
    After, Change, Cond, Cursor, Entry, Op, Outcome, ScanOpts, ScanPage, StoreError, Tock,
};

use async_trait::async_trait;
use keycard_proto::Path;

/// The storage interface every backend implements.
///
/// Writes are atomic per call and durable when the call returns `Ok` (a
/// backend that is not, [`MemStore`], keeps them while it lives). Each
/// changed node gets a fresh tock; tocks never repeat or go back, also
/// across restarts. What a batch does is [`plan::plan`]'s decision on
/// every backend; `tests/conformance/` holds the contract as tests.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The node at `path`, if it holds a value.
    async fn get(&self, path: &Path) -> Result<Option<Entry>, StoreError>;

    /// Applies `ops` atomically: either every condition holds and every op
    /// is applied (and durable) or nothing changes and the error names the
    /// first op whose condition failed.
    async fn write(&self, ops: Vec<Op>) -> Result<Vec<Outcome>, StoreError>;

    /// Up to `limit` valued nodes in `prefix`'s subtree, in path order,
    /// from where `after` says, within the depth bounds of `opts` (depth 0
    /// is `prefix` itself), and where to go on from. A page may hold fewer
    /// (a backend bounds the work and the bytes of one call): follow
    /// `next` until it is `None`.
    async fn scan(
        &self,
        prefix: &Path,
        opts: ScanOpts,
        after: After<'_>,
        limit: usize,
    ) -> Result<ScanPage, StoreError>;

    /// Like [`Store::scan`], but follows cursors until `limit` nodes are
    /// found or the subtree ends. For small limits (is there a user? the
    /// first two children); use `scan` pages for large walks.
    async fn scan_up_to(
        &self,
        prefix: &Path,
        opts: ScanOpts,
        limit: usize,
    ) -> Result<Vec<(Path, Entry)>, StoreError> {
        let mut out = Vec::new();
        let mut page = self.scan(prefix, opts, After::Start, limit).await?;
        loop {
            out.append(&mut page.items);
            let Some(next) = page.next.filter(|_| out.len() < limit) else {
                out.truncate(limit);
                return Ok(out);
            };
            page = self
                .scan(prefix, opts, After::Cursor(&next), limit - out.len())
                .await?;
        }
    }

    /// Up to `limit` changes with tock greater than `after`, oldest first
    /// (fewer when they are large; at least one if there is one).
    /// [`StoreError::HistoryGone`] when changes after `after` are no longer
    /// kept.
    async fn changes_since(&self, after: Tock, limit: usize) -> Result<Vec<Change>, StoreError>;

    /// The tock of the last committed change.
    fn tock(&self) -> Tock;

    /// How many committed changes this store's feed has not published
    /// yet: always 0 where every commit goes through this process; on a
    /// store other nodes write to, how far its follower is behind (a
    /// read of the database's last tock).
    async fn feed_lag(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Live changes after the current tock, as they commit. The feed keeps
    /// a bounded number of bytes: a subscription that falls behind it gets
    /// [`FeedError::Lagged`] and catches up with [`Store::changes_since`].
    fn subscribe(&self) -> Subscription;

    /// Every valued node as of one moment, in key order, sent to `out` in
    /// pages of at most `page` nodes; returns that moment's tock. A
    /// consistent snapshot: nothing committed after it is in it, and
    /// writes go on meanwhile. Stops with [`StoreError::Closed`] if `out`
    /// is dropped.
    async fn export(
        &self,
        page: usize,
        out: tokio::sync::mpsc::Sender<Vec<(Path, Entry)>>,
    ) -> Result<Tock, StoreError>;

    /// Loads `items`, each with its own tock, into a store that was empty
    /// before the first call (a restore); with `finish`, the store's tock
    /// becomes it and its change log starts there (nothing before it is
    /// history). For a store nothing else uses: reopen it afterwards.
    async fn import(
        &self,
        items: Vec<(Path, Entry)>,
        finish: Option<Tock>,
    ) -> Result<(), StoreError>;
}
