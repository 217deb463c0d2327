//! Per-name locks: changes to one user take turns.

use std::hash::{Hash, Hasher};

use keycard_proto::Path;

/// Per-name locks: every change to a user (its records, their aux nodes)
/// holds its name's stripe from the existence check to the write, so two
/// changes to one name take turns (a deletion and a credential change, two
/// creations under two methods).
pub struct NameLocks {
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl Default for NameLocks {
    fn default() -> NameLocks {
        NameLocks {
            stripes: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }
}

impl NameLocks {
    /// Waits for user `name` under `root`.
    pub async fn lock(&self, root: &Path, name: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        root.hash(&mut h);
        name.hash(&mut h);
        let i = usize::try_from(h.finish() % self.stripes.len() as u64).unwrap_or(0);
        self.stripes[i].lock().await
    }
}
