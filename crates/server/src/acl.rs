//! Applying ACLs to data requests: loading and caching compiled ACLs from
//! `(nil, "acl", NAME, …)`, finding how much of a path exists (for DistKV's
//! `x`-or-`n` rule), and deciding requests and tree-walk visibility.
//!
//! A user bound to no ACL (or to `*`) has DistKV's full data access.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use keycard_auth::acl::{Acl, Denied, Finder, Mode, Modes};
use keycard_proto::{Elem, Path};
use keycard_store::{After, ScanOpts, Store, StoreError};

/// `(nil, "acl")`.
pub fn acl_root() -> Path {
    Path::new(vec![Elem::Nil, "acl".into()])
}

/// An ACL's domain root and name.
type AclKey = (Path, String);

/// Most compiled ACLs held at once.
const MAX_CACHED: usize = 4096;

/// Compiled ACLs, reloaded after any write under `(nil, "acl")`.
#[derive(Default)]
pub struct AclCache {
    epoch: AtomicU64,
    /// `(domain root, name)` → `(epoch, ACL)`.
    compiled: Mutex<HashMap<AclKey, (u64, Arc<Acl>)>>,
}

impl AclCache {
    /// Forgets every compiled ACL (an ACL changed: edits apply at once).
    pub fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// How many times ACLs changed: a holder of compiled ACLs (a running
    /// walk or watch) compiles them again when this moved.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The ACL called `name` of the domain at `base` (empty: the server's
    /// own), compiled (an ACL without entries grants nothing).
    pub async fn get(
        &self,
        store: &dyn Store,
        base: &Path,
        name: &str,
    ) -> Result<Arc<Acl>, StoreError> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let key = (base.clone(), name.to_owned());
        if let Some((e, acl)) = self
            .compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            if *e == epoch {
                return Ok(acl.clone());
            }
        }
        let base = base.join(&acl_root()).child(name);
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
        // Only ACLs that exist are kept (`test_acl` names any), and only
        // so many: the cache is not a way to fill the server's memory.
        if !acl.is_empty() {
            let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
            if compiled.len() >= MAX_CACHED && !compiled.contains_key(&key) {
                compiled.retain(|_, (e, _)| *e == epoch);
                if compiled.len() >= MAX_CACHED {
                    compiled.clear();
                }
            }
            compiled.insert(key, (epoch, acl.clone()));
        }
        Ok(acl)
    }

    /// Compiled ACLs held.
    pub fn len(&self) -> usize {
        self.compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Whether no compiled ACL is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

/// The ACLs a user is bound to: its own and its groups'. They combine
/// level by level: a user holds, on each node, every mode any of its ACLs
/// gives there — passing a level (`x`, or `n` where it does not exist yet)
/// needs one ACL that lets it pass, a walk's `e` one that lets it
/// enumerate, and the node's mode one that grants it.
#[derive(Clone, Debug)]
pub struct Grants {
    /// `(name, compiled ACL)`; never empty.
    pub acls: Vec<(String, Arc<Acl>)>,
    /// The length of the domain root the ACLs are relative to: they are
    /// applied to full paths without it.
    pub skip: usize,
}

/// The decision of [`Grants::decide`] when allowed: the ACL and entry that
/// granted the mode.
pub type Decision = Option<(String, Vec<Elem>, Modes)>;

impl Grants {
    fn finders(&self) -> Vec<Finder<'_>> {
        self.acls.iter().map(|(_, a)| a.finder()).collect()
    }

    /// Whether a node found by a tree walk may be shown (see [`visible`]).
    pub fn visible(&self, base_len: usize, path: &[Elem], mode: Mode) -> bool {
        let path = path.get(self.skip..).unwrap_or_default();
        let base_len = base_len.saturating_sub(self.skip);
        if let [(_, one)] = self.acls.as_slice() {
            return visible(one, base_len, path, mode);
        }
        let mut fs = self.finders();
        for (i, e) in path.iter().enumerate() {
            let pass = fs.iter().any(|f| f.passes(Mode::Access));
            let list = i < base_len || fs.iter().any(|f| f.passes(Mode::Enumerate));
            if !pass || !list {
                return false;
            }
            fs = fs.iter().map(|f| f.step(e)).collect();
        }
        fs.iter().any(|f| f.grants(mode))
    }

    /// Whether `mode` on `path` is allowed, given that its first `have`
    /// elements exist: the ACL and entry that granted it, or the first
    /// ACL's view of the refusal.
    pub fn decide(
        &self,
        path: &[Elem],
        have: usize,
        mode: Mode,
    ) -> Result<Decision, (String, Denied)> {
        let path = path.get(self.skip..).unwrap_or_default();
        let have = have.saturating_sub(self.skip);
        let first = |fs: &[Finder<'_>], depth: usize, mode: Mode| {
            let name = self
                .acls
                .first()
                .map(|(n, _)| n.clone())
                .unwrap_or_default();
            let rule = fs.first().and_then(Finder::rule);
            (name, Denied { depth, mode, rule })
        };
        let mut fs = self.finders();
        for (i, e) in path.iter().enumerate() {
            let need = if i < have { Mode::Access } else { Mode::New };
            if !fs.iter().any(|f| f.passes(need)) {
                return Err(first(&fs, i, need));
            }
            fs = fs.iter().map(|f| f.step(e)).collect();
        }
        match fs.iter().position(|f| f.grants(mode)) {
            Some(ix) => Ok(fs[ix].rule().map(|(p, m)| (self.acls[ix].0.clone(), p, m))),
            None => Err(first(&fs, path.len(), mode)),
        }
    }
}

/// `(nil, "group", NAME)` → `{acl: ACL}`: a group and the ACL it binds.
pub fn group_path(name: &str) -> Path {
    Path::new(vec![Elem::Nil, "group".into(), name.into()])
}

/// The ACL names a user is bound to, from its record at `record_at`:
/// `None` for DistKV's full data access (no binding, or `*`, and no
/// group with an ACL), else its own ACL and its groups' (`(…, "groups")`
/// → `{groups: [NAME…]}`, each `(nil, "group", NAME)` → `{acl}`).
pub async fn bound_acls(
    store: &dyn Store,
    root: &Path,
    record_at: &Path,
) -> Result<Option<Vec<String>>, StoreError> {
    let own = store.get(&record_at.child("acl")).await?.map(|e| e.value);
    let groups = store
        .get(&record_at.child("groups"))
        .await?
        .map(|e| e.value);
    bindings_acls(store, root, own.as_ref(), groups.as_ref()).await
}

/// [`bound_acls`] of a record whose `acl` and `groups` aux nodes would
/// hold `own` and `groups` (a user about to be created).
pub async fn bindings_acls(
    store: &dyn Store,
    root: &Path,
    own: Option<&keycard_proto::Value>,
    groups: Option<&keycard_proto::Value>,
) -> Result<Option<Vec<String>>, StoreError> {
    let own = own
        .and_then(|v| v.get("key"))
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    if own.as_deref() == Some("*") {
        return Ok(None);
    }
    let mut names: Vec<String> = own.into_iter().collect();
    if let Some(e) = groups {
        if let Some(keycard_proto::Value::Array(groups)) = e.get("groups") {
            for g in groups.iter().filter_map(|g| g.as_str()).take(64) {
                let bound = store
                    .get(&root.join(&group_path(g)))
                    .await?
                    .and_then(|e| {
                        e.value
                            .get("acl")
                            .and_then(|v| v.as_str())
                            .map(str::to_owned)
                    })
                    .filter(|a| a != "*");
                if let Some(a) = bound {
                    if !names.contains(&a) {
                        names.push(a);
                    }
                }
            }
        }
    }
    Ok((!names.is_empty()).then_some(names))
}
