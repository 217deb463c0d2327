//! Applying ACLs to data requests: loading and caching compiled ACLs from
//! `(nil, "acl", NAME, …)`, finding how much of a path exists (for DistKV's
//! `x`-or-`n` rule), and deciding requests and tree-walk visibility.
//!
//! A user bound to no ACL (or to `*`) has DistKV's full data access.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use keycard_auth::acl::{Acl, Denied, Finder, Mode, Modes};
use keycard_proto::{Elem, ErrorCode, Path};
use keycard_store::{After, ScanOpts, Store, StoreError};

use crate::error::{ApiError, ApiResult};

/// `(nil, "acl")`.
pub fn acl_root() -> Path {
    Path::new(vec![Elem::Nil, "acl".into()])
}

/// Compiled ACLs, reloaded after any write under `(nil, "acl")`.
#[derive(Default)]
pub struct AclCache {
    epoch: AtomicU64,
    compiled: Mutex<HashMap<String, (u64, Arc<Acl>)>>,
}

impl AclCache {
    /// Forgets every compiled ACL (an ACL changed: edits apply at once).
    pub fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// The ACL called `name`, compiled (an ACL without entries grants
    /// nothing).
    pub async fn get(&self, store: &dyn Store, name: &str) -> Result<Arc<Acl>, StoreError> {
        let epoch = self.epoch.load(Ordering::Acquire);
        if let Some((e, acl)) = self
            .compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            if *e == epoch {
                return Ok(acl.clone());
            }
        }
        let base = acl_root().child(name);
        let mut acl = Acl::new();
        let mut page = store
            .scan(&base, ScanOpts::default(), After::Start, 1024)
            .await?;
        loop {
            for (path, entry) in &page.items {
                // A value that is not a mode string grants nothing.
                if let Some(modes) = entry.value.as_str().and_then(|s| Modes::parse(s).ok()) {
                    acl.insert(&path.elems()[base.len()..], modes);
                }
            }
            match page.next {
                Some(c) => {
                    page = store
                        .scan(&base, ScanOpts::default(), After::Cursor(&c), 1024)
                        .await?
                }
                None => break,
            }
        }
        let acl = Arc::new(acl);
        self.compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), (epoch, acl.clone()));
        Ok(acl)
    }
}

/// How many leading elements of `path` name existing nodes (a node exists
/// if it or anything below it holds a value). Existence shrinks with
/// depth, so a binary search needs O(log n) lookups.
pub async fn existing_depth(store: &dyn Store, path: &Path) -> Result<usize, StoreError> {
    let exists = |d: usize| {
        let prefix = Path::new(path.elems()[..d].to_vec());
        async move {
            let opts = ScanOpts::default();
            Ok::<bool, StoreError>(!store.scan_up_to(&prefix, opts, 1).await?.is_empty())
        }
    };
    let (mut lo, mut hi) = (0usize, path.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if exists(mid).await? {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(lo)
}

/// The refusal for a denied check (never says whether the node exists).
pub fn denied(path: &Path, d: &Denied) -> ApiError {
    ApiError::new(
        ErrorCode::PermissionDenied,
        format!(
            "permission denied: mode '{}' at {}",
            d.mode.letter(),
            Path::new(path.elems()[..d.depth].to_vec())
        ),
    )
}

/// Whether a node found by a tree walk below `base` may be shown: every
/// level on the way passes (`x`), every level from `base` down may be
/// enumerated (`e`), and the node itself grants `mode`.
pub fn visible(acl: &Acl, base_len: usize, path: &[Elem], mode: Mode) -> bool {
    let mut f: Finder<'_> = acl.finder();
    for (i, e) in path.iter().enumerate() {
        if !f.passes(Mode::Access) || (i >= base_len && !f.passes(Mode::Enumerate)) {
            return false;
        }
        f = f.step(e);
    }
    f.grants(mode)
}

/// Checks `mode` on `path` for an ACL.
pub async fn check(store: &dyn Store, acl: &Acl, path: &Path, mode: Mode) -> ApiResult {
    let have = existing_depth(store, path).await?;
    acl.check(path.elems(), |d| d <= have, mode)
        .map(|_| ())
        .map_err(|d| denied(path, &d))
}
