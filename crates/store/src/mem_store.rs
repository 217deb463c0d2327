//! The in-memory backend: a sorted map and a change log behind one lock.
//!
//! Same semantics as the durable backends (it plans its batches with
//! [`crate::plan`], walks with [`crate::walk`] and follows the same
//! change feed) and passes the same conformance suite, but nothing
//! outlives the process: for tests and for `keycard serve --store memory`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use keycard_proto::Path;

use crate::feed::{value_weight, weight, Feed, Subscription};
use crate::plan::{check_history, plan, pruned_after, CHANGES_PAGE_BYTES};
use crate::types::{After, Change, Entry, Op, Outcome, ScanOpts, ScanPage, StoreError, Tock};
use crate::walk::{Next, Walk};
use crate::Store;

/// Tuning for [`MemStore`].
#[derive(Clone, Debug)]
pub struct MemOptions {
    /// How many changes the change log keeps for watches resuming from a
    /// tock.
    pub history: u64,
    /// Most memory the live change feed keeps.
    pub feed_bytes: usize,
    /// Most changes the live change feed keeps.
    pub feed_len: usize,
}

impl Default for MemOptions {
    fn default() -> Self {
        MemOptions {
            history: 100_000,
            feed_bytes: 8 << 20,
            feed_len: 1024,
        }
    }
}

struct State {
    /// Path key → entry.
    data: BTreeMap<Vec<u8>, Entry>,
    /// The changes after `pruned`, oldest first, tocks consecutive.
    log: VecDeque<Change>,
    /// The highest tock dropped from `log`.
    pruned: u64,
}

/// A store in memory, lost when it is dropped (see the module docs).
pub struct MemStore {
    state: Mutex<State>,
    /// The last tock, readable without the lock.
    tock: AtomicU64,
    history: u64,
    feed: Arc<Feed>,
}

impl MemStore {
    /// An empty store.
    pub fn new(opts: MemOptions) -> MemStore {
        MemStore {
            state: Mutex::new(State {
                data: BTreeMap::new(),
                log: VecDeque::new(),
                pruned: 0,
            }),
            tock: AtomicU64::new(0),
            history: opts.history,
            feed: Arc::new(Feed::new(0, 0, opts.feed_bytes, opts.feed_len)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every write changes the state only once its plan is made, with
        // calls that do not panic: a poisoned lock still guards a whole
        // state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore::new(MemOptions::default())
    }
}

impl Drop for MemStore {
    fn drop(&mut self) {
        self.feed.close();
    }
}

#[async_trait]
impl Store for MemStore {
    async fn get(&self, path: &Path) -> Result<Option<Entry>, StoreError> {
        Ok(self.lock().data.get(&path.to_key()).cloned())
    }

    async fn write(&self, ops: Vec<Op>) -> Result<Vec<Outcome>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let mut state = self.lock();
        let start = Tock(self.tock.load(Ordering::Acquire));
        let plan = plan(&mut state.data, &ops, start)?;
        let tock = plan.last_tock(start);
        let mut changes = Vec::with_capacity(plan.changes.len());
        for p in plan.changes {
            match &p.change.value {
                Some(value) => {
                    state.data.insert(
                        p.key,
                        Entry {
                            value: value.clone(),
                            tock: p.change.tock,
                        },
                    );
                }
                None => {
                    state.data.remove(&p.key);
                }
            }
            state.log.push_back(p.change.clone());
            changes.push(p.change);
        }
        if let Some(floor) = pruned_after(tock, self.history, state.pruned) {
            while state.log.front().is_some_and(|c| c.tock.0 <= floor) {
                state.log.pop_front();
            }
            state.pruned = floor;
        }
        self.tock.store(tock.0, Ordering::Release);
        // Under the lock, so that the feed gets the changes in tock order.
        self.feed.publish(changes);
        self.feed.set_pruned(state.pruned);
        Ok(plan.outcomes)
    }

    async fn scan(
        &self,
        prefix: &Path,
        opts: ScanOpts,
        after: After<'_>,
        limit: usize,
    ) -> Result<ScanPage, StoreError> {
        let state = self.lock();
        let mut walk = Walk::new(prefix, opts, after, limit);
        'seek: while let Some(range) = walk.range() {
            for (key, entry) in state.data.range::<[u8], _>(range) {
                match walk.step(key, value_weight(&entry.value), || Ok(entry.clone()))? {
                    Next::Read => {}
                    Next::Seek => continue 'seek,
                    Next::Stop => return Ok(walk.page(false)),
                }
            }
            break;
        }
        Ok(walk.page(true))
    }

    async fn changes_since(&self, after: Tock, limit: usize) -> Result<Vec<Change>, StoreError> {
        let state = self.lock();
        check_history(after, state.pruned)?;
        // The log holds tocks pruned+1 ..= tock, in order.
        let skip = usize::try_from(after.0 - state.pruned).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for change in state.log.iter().skip(skip) {
            bytes += weight(change);
            out.push(change.clone());
            if out.len() >= limit || bytes >= CHANGES_PAGE_BYTES {
                break;
            }
        }
        Ok(out)
    }

    fn tock(&self) -> Tock {
        Tock(self.tock.load(Ordering::Acquire))
    }

    fn subscribe(&self) -> Subscription {
        self.feed.subscribe()
    }

    async fn export(
        &self,
        page: usize,
        out: tokio::sync::mpsc::Sender<Vec<(Path, Entry)>>,
    ) -> Result<Tock, StoreError> {
        // A copy under the lock is the snapshot.
        let (tock, items) = {
            let state = self.lock();
            let items: Vec<(Vec<u8>, Entry)> = state
                .data
                .iter()
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect();
            (self.tock.load(Ordering::Acquire), items)
        };
        let mut batch = Vec::with_capacity(page.max(1));
        for (k, e) in items {
            let path = Path::from_key(&k)
                .map_err(|e| StoreError::Corrupt(format!("a stored key: {e}")))?;
            batch.push((path, e));
            if batch.len() >= page.max(1) {
                out.send(std::mem::take(&mut batch))
                    .await
                    .map_err(|_| StoreError::Closed)?;
            }
        }
        if !batch.is_empty() {
            out.send(batch).await.map_err(|_| StoreError::Closed)?;
        }
        Ok(Tock(tock))
    }

    async fn import(
        &self,
        items: Vec<(Path, Entry)>,
        finish: Option<Tock>,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        for (path, e) in items {
            state.data.insert(path.to_key(), e);
        }
        if let Some(t) = finish {
            state.log.clear();
            state.pruned = t.0;
            self.tock.store(t.0, Ordering::Release);
        }
        Ok(())
    }
}
