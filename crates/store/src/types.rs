//! The store's value types.

use keycard_proto::{Path, Value};

/// A server-wide, strictly increasing write counter. Every changed node
/// gets a fresh one; it survives restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Tock(pub u64);

/// A stored node: its value and the tock of its last change.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The value.
    pub value: Value,
    /// When it was last written.
    pub tock: Tock,
}

/// A condition a write's target must meet.
#[derive(Clone, Debug, PartialEq)]
pub enum Cond {
    /// No condition.
    Any,
    /// The node must hold no value (DistKV's `chain: nil`).
    Absent,
    /// The node must hold exactly this value (DistKV's `prev`).
    Equals(Value),
    /// The node must have been last written at this tock.
    TockIs(Tock),
}

/// One write in a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Set `path` to `value`. With `idem`, an unchanged value is not written.
    Put {
        /// The node.
        path: Path,
        /// The new value.
        value: Value,
        /// Its precondition.
        cond: Cond,
        /// Skip the write when the value is already `value`.
        idem: bool,
    },
    /// Remove the value at `path` (a missing node is not an error).
    Delete {
        /// The node.
        path: Path,
        /// Its precondition.
        cond: Cond,
    },
}

impl Op {
    /// The node this op targets.
    pub fn path(&self) -> &Path {
        match self {
            Op::Put { path, .. } | Op::Delete { path, .. } => path,
        }
    }

    /// An unconditional put.
    pub fn put(path: Path, value: Value) -> Op {
        Op::Put {
            path,
            value,
            cond: Cond::Any,
            idem: false,
        }
    }

    /// An unconditional delete.
    pub fn delete(path: Path) -> Op {
        Op::Delete {
            path,
            cond: Cond::Any,
        }
    }
}

/// What one op did.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Whether the node changed.
    pub changed: bool,
    /// The value it held before, if any.
    pub prev: Option<Value>,
    /// The new tock if it changed, else the store's current tock.
    pub tock: Tock,
}

/// A committed change, as the change feed reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The node.
    pub path: Path,
    /// Its new value; `None` for a deletion.
    pub value: Option<Value>,
    /// The change's tock.
    pub tock: Tock,
}

/// Where a scan resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After<'a> {
    /// From the prefix itself.
    Start,
    /// Strictly after this node (paging).
    Node(&'a Path),
    /// After this node's whole subtree.
    Subtree(&'a Path),
    /// Where an earlier page stopped.
    Cursor(&'a Cursor),
}

/// Where a scan page stopped: pass it back as [`After::Cursor`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor(pub(crate) Vec<u8>);

impl Cursor {
    /// A cursor just after the node `path`.
    pub fn after(path: &Path) -> Cursor {
        Cursor(path.to_key())
    }
}

/// One page of a scan.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanPage {
    /// The nodes found, in path order.
    pub items: Vec<(Path, Entry)>,
    /// Where to continue, or `None` when the subtree is exhausted. A page
    /// may hold fewer items than asked for (even none) and still have a
    /// `next`: a scan stops after examining a bounded number of nodes, so
    /// that one call never walks a huge subtree at once.
    pub next: Option<Cursor>,
}

/// Depth bounds for a scan, relative to the scanned prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ScanOpts {
    /// Skip nodes shallower than this.
    pub min_depth: usize,
    /// Skip nodes deeper than this (and do not walk their subtrees).
    pub max_depth: Option<usize>,
}

/// Why a store operation failed. Nothing was changed by a failed write.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// Op `index` of the batch did not meet its condition.
    #[error("condition failed for op {index}: {reason}")]
    Conflict {
        /// Which op.
        index: usize,
        /// What was found instead.
        reason: &'static str,
    },
    /// The changes after the requested tock are no longer kept.
    #[error("history before tock {oldest} is no longer kept")]
    HistoryGone {
        /// The oldest tock still available.
        oldest: u64,
    },
    /// The backend failed (I/O, database error).
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The backend cannot be reached now (its database is down,
    /// restarting or failing over): nothing was done, or — after a lost
    /// answer to a commit — the message says the write may have been.
    #[error("{0}")]
    Unavailable(String),
    /// Stored bytes did not decode.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The store is closed.
    #[error("store is closed")]
    Closed,
}
