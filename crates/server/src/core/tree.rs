//! What a walk of a subtree (`get_tree`, `watch`) shows its caller: the
//! caller's ACL decided on the walk's base, then node by node below it,
//! compiled again when an ACL changes (so an edit applies at once, to a
//! running walk or watch too), and reserved subtrees hidden from data
//! walks. The transports keep their own send loops and ask this.

use keycard_auth::acl::Mode;
use keycard_proto::{Elem, Path};

use super::access::is_data_path;
use super::acl::{authorize, caller_acl};
use crate::acl::Grants;
use crate::caller::Caller;
use crate::error::ApiResult;
use crate::state::ServerState;

/// A walk's view of its subtree.
pub(crate) struct Visibility {
    base: Path,
    /// Leave out every node below a nil element (reserved subtrees): set
    /// for data walks, clear for the management ones.
    hide_reserved: bool,
    /// The caller's ACL: only nodes it lets the caller read are shown.
    acl: Option<Grants>,
    /// Whose ACLs they are, and the ACL cache's epoch they were compiled
    /// at.
    acl_of: Option<(Caller, u64)>,
}

impl Visibility {
    /// Everything below `base` (a management walk, or a caller not yet
    /// authorized; see [`Visibility::authorize`]). A data base (no nil in
    /// it) still hides reserved subtrees.
    pub(crate) fn all(base: Path) -> Visibility {
        Visibility {
            hide_reserved: is_data_path(base.elems()),
            base,
            acl: None,
            acl_of: None,
        }
    }

    /// Checks `mode` on the base for `caller` and keeps its ACLs for the
    /// nodes below.
    pub(crate) async fn authorize(
        &mut self,
        state: &ServerState,
        caller: &Caller,
        mode: Mode,
    ) -> ApiResult {
        // Read before the ACLs are: an edit meanwhile is seen at the next
        // check.
        let epoch = state.acls.epoch();
        self.acl = authorize(state, caller, &self.base, mode).await?;
        if self.acl.is_some() {
            self.acl_of = Some((caller.clone(), epoch));
        }
        Ok(())
    }

    /// Compiles the caller's ACLs again if an ACL changed since.
    pub(crate) async fn refresh(&mut self, state: &ServerState) -> ApiResult {
        let Some((caller, epoch)) = &mut self.acl_of else {
            return Ok(());
        };
        let now = state.acls.epoch();
        if *epoch != now {
            *epoch = now;
            self.acl = caller_acl(state, caller).await?;
        }
        Ok(())
    }

    /// Whether the caller's ACL shows the node at `rel` (relative to the
    /// base) with `mode`.
    pub(crate) fn shows(&self, rel: &[Elem], mode: Mode) -> bool {
        match &self.acl {
            None => true,
            Some(acl) => {
                let full: Vec<Elem> = self.base.elems().iter().chain(rel).cloned().collect();
                acl.visible(self.base.len(), &full, mode)
            }
        }
    }

    /// Whether the node at `rel` is in a reserved subtree this walk hides.
    pub(crate) fn hides_reserved(&self, rel: &[Elem]) -> bool {
        self.hide_reserved && !is_data_path(rel)
    }

    /// Whether reserved subtrees are hidden.
    pub(crate) fn hide_reserved(&self) -> bool {
        self.hide_reserved
    }

    /// The walk's base.
    pub(crate) fn base(&self) -> &Path {
        &self.base
    }
}
