//! Subtree actions: get_tree, enum, watch, delete_tree.

use keycard_proto::{Elem, ErrorCode, Msg, Path, Value};
use keycard_store::{After, Change, Cursor, Entry, FeedError, Op, ScanOpts, Subscription, Tock};

use super::{authorize, chain, data_path, flag, opt_usize};
use crate::conn::Responder;
use crate::core::tree::Visibility;
use crate::error::{ApiError, ApiResult};
use crate::state::ServerState;
use keycard_auth::acl::Mode;

/// Nodes read from the store per round trip.
const PAGE: usize = 512;

/// What a page of nodes or changes is expected to hold at most (the store
/// bounds its pages to about 1 MiB of values).
const PAGE_BYTES: usize = 1 << 20;

/// Where a paged walk goes on from.
pub(super) enum Pos {
    /// From the top.
    Start,
    /// After this node's subtree.
    Subtree(Path),
    /// Where the last page stopped.
    Cursor(Cursor),
}

impl Pos {
    pub(super) fn after(&self) -> After<'_> {
        match self {
            Pos::Start => After::Start,
            Pos::Subtree(p) => After::Subtree(p),
            Pos::Cursor(c) => After::Cursor(c),
        }
    }
}

/// DistKV's path compression: each item's `path` omits the first `depth`
/// elements it shares with the previous item's (relative) path.
#[derive(Default)]
struct Shortener {
    prev: Vec<Elem>,
}

impl Shortener {
    fn shorten(&mut self, rel: &[Elem]) -> (usize, Value) {
        let common = rel
            .iter()
            .zip(&self.prev)
            .take_while(|(a, b)| a == b)
            .count();
        self.prev = rel.to_vec();
        let rest = rel[common..].iter().map(Elem::to_value).collect();
        (common, Value::Array(rest))
    }
}

/// Streams nodes of one subtree as DistKV's tree items.
struct TreeItems<'a> {
    state: &'a ServerState,
    /// Which nodes the caller is shown (the core decides).
    vis: Visibility,
    min_depth: usize,
    max_depth: Option<usize>,
    /// Also send interior nodes that hold no value.
    empty: bool,
    nchain: usize,
    short: Shortener,
    /// The last node sent (relative), to know which ancestors are new.
    last: Option<Vec<Elem>>,
}

impl<'a> TreeItems<'a> {
    fn new(state: &'a ServerState, msg: &Value, base: Path) -> ApiResult<TreeItems<'a>> {
        Ok(TreeItems {
            state,
            vis: Visibility::all(base),
            min_depth: opt_usize(msg, "min_depth")?.unwrap_or(0),
            max_depth: opt_usize(msg, "max_depth")?,
            empty: flag(msg, "empty"),
            nchain: opt_usize(msg, "nchain")?.unwrap_or(0),
            short: Shortener::default(),
            last: None,
        })
    }

    /// Checks `mode` on the walk's base for the caller of `r` and keeps
    /// its ACLs for the nodes below.
    async fn authorize(&mut self, r: &Responder, mode: Mode) -> ApiResult {
        let caller = r.conn().caller();
        self.vis.authorize(self.state, &caller, mode).await
    }

    /// Compiles the caller's ACLs again if an ACL changed since.
    async fn fresh_acl(&mut self) -> ApiResult {
        self.vis.refresh(self.state).await
    }

    /// Whether the caller's ACL shows the node at `rel` (with `mode`).
    fn shown(&self, rel: &[Elem], mode: Mode) -> bool {
        self.vis.shows(rel, mode)
    }

    fn in_depth(&self, depth: usize) -> bool {
        depth >= self.min_depth && self.max_depth.is_none_or(|m| depth <= m)
    }

    fn item(&mut self, rel: &[Elem], value: Option<&Value>, tock: Tock) -> Msg {
        let (depth, path) = self.short.shorten(rel);
        let mut m = Msg::new();
        if let Some(v) = value {
            m.set("value", v.clone());
        }
        m.set("tock", tock.0);
        if self.nchain > 0 {
            m.set("chain", chain(self.state, tock));
        }
        m.with("path", path).with("depth", depth)
    }

    /// Sends the node at `rel` (and, with `empty`, its value-less ancestors
    /// not sent yet).
    async fn node(&mut self, r: &mut Responder, rel: &[Elem], entry: &Entry) {
        if self.empty {
            let first_new = match &self.last {
                None => 0,
                Some(last) => rel.iter().zip(last).take_while(|(a, b)| a == b).count() + 1,
            };
            for len in first_new..rel.len() {
                if self.in_depth(len) && self.shown(&rel[..len], Mode::Enumerate) {
                    let m = self.item(&rel[..len], None, entry.tock);
                    r.item(m).await;
                }
            }
            self.last = Some(rel.to_vec());
        }
        if self.in_depth(rel.len()) && self.shown(rel, Mode::Read) {
            let m = self.item(rel, Some(&entry.value), entry.tock);
            r.item(m).await;
        }
    }

    /// Streams the current subtree; with `upto`, skips nodes changed after
    /// that tock (a watch gets those from its change feed).
    async fn walk(&mut self, r: &mut Responder, upto: Option<Tock>) -> ApiResult {
        let opts = ScanOpts {
            min_depth: if self.empty { 0 } else { self.min_depth },
            // Value-less interior nodes above deeper values must still be
            // found when `empty` is set, so the store cannot prune then.
            max_depth: if self.empty { None } else { self.max_depth },
        };
        let store = self.state.store.clone();
        let conn = r.conn().clone();
        let mut pos = Pos::Start;
        loop {
            // Each page counts against the connection's memory budget
            // while its items go out: a client that does not read holds
            // up no more than that.
            let mut held = conn.reserve(PAGE_BYTES).await;
            self.fresh_acl().await?;
            let base = self.vis.base().clone();
            let page = store.scan(&base, opts, pos.after(), PAGE).await?;
            held.set(
                page.items
                    .iter()
                    .map(|(_, e)| keycard_store::value_weight(&e.value))
                    .sum(),
            );
            let mut skip = None;
            for (path, entry) in &page.items {
                let rel = &path.elems()[base.len()..];
                if self.vis.hide_reserved() {
                    if let Some(i) = rel.iter().position(|e| matches!(e, Elem::Nil)) {
                        // Skip the whole reserved subtree, not node by node.
                        skip = Some(Pos::Subtree(Path::new(
                            path.elems()[..base.len() + i + 1].to_vec(),
                        )));
                        break;
                    }
                }
                if upto.is_some_and(|t| entry.tock > t) {
                    continue;
                }
                self.node(r, rel, entry).await;
            }
            pos = match (skip, page.next) {
                (Some(s), _) => s,
                (None, Some(c)) => Pos::Cursor(c),
                (None, None) => break,
            };
            // Other requests on this thread get a turn between pages.
            tokio::task::yield_now().await;
        }
        Ok(())
    }
}

pub(super) async fn get_tree(msg: &Value, r: &mut Responder) -> ApiResult {
    let base = data_path(msg, r)?;
    let state = r.conn().state.clone();
    let mut items = TreeItems::new(&state, msg, base)?;
    items.authorize(r, Mode::Enumerate).await?;
    r.start().await;
    items.walk(r, None).await
}

/// Streams the subtree at `base` (a management path, already checked).
pub(super) async fn get_tree_at(msg: &Value, r: &mut Responder, base: Path) -> ApiResult {
    let state = r.conn().state.clone();
    let mut items = TreeItems::new(&state, msg, base)?;
    r.start().await;
    items.walk(r, None).await
}

/// The children of a node: names (`[…]`) or, with `with_data`, a map of
/// name → value. Without `empty`, only children that hold a value.
pub(super) async fn enumerate(msg: &Value, r: &mut Responder) -> ApiResult {
    let base = data_path(msg, r)?;
    let acl = authorize(r, &base, Mode::Enumerate).await?;
    let state = r.conn().state.clone();
    let mut reply = enumerate_at(&state, &base, flag(msg, "with_data"), flag(msg, "empty")).await?;
    if let Some(acl) = acl {
        // Only children the caller may see; values only where it may read.
        let child = |name: &Value| {
            Elem::from_value(name).map(|e| {
                let mut p = base.elems().to_vec();
                p.push(e);
                p
            })
        };
        let shows = |p: &[Elem], m: Mode| acl.visible(base.len(), p, m);
        reply = match reply {
            Value::Array(names) => Value::Array(
                names
                    .into_iter()
                    .filter(|n| {
                        child(n)
                            .is_some_and(|p| shows(&p, Mode::Enumerate) || shows(&p, Mode::Read))
                    })
                    .collect(),
            ),
            Value::Map(entries) => Value::Map(
                entries
                    .into_iter()
                    .filter_map(|(k, v)| {
                        let p = child(&k)?;
                        if shows(&p, Mode::Read) {
                            Some((k, v))
                        } else if shows(&p, Mode::Enumerate) {
                            Some((k, Value::Nil))
                        } else {
                            None
                        }
                    })
                    .collect(),
            ),
            other => other,
        };
    }
    r.reply(Msg::new().with("result", reply)).await;
    Ok(())
}

/// `enum`'s result for the children of `base`.
pub(crate) async fn enumerate_at(
    state: &ServerState,
    base: &Path,
    with_data: bool,
    empty: bool,
) -> ApiResult<Value> {
    // A data request's base has no nil; its nil child is a reserved root.
    let hide_reserved = super::is_data_path(base.elems());
    let store = &state.store;
    let mut names = Vec::new();
    let mut data = Vec::new();
    // One reply holds every child: bound what it may take like everything
    // else a connection holds.
    let max = state.config.max_inflight_bytes;
    let mut weight = 0usize;
    let mut pos = Pos::Start;
    loop {
        // Without `empty`: the valued children, a page at a time. With it:
        // one child per round (its first valued node), then skip its subtree.
        let opts = ScanOpts {
            min_depth: 1,
            max_depth: if empty { None } else { Some(1) },
        };
        let limit = if empty { 1 } else { PAGE };
        let page = store.scan(base, opts, pos.after(), limit).await?;
        let mut last_child = None;
        for (path, entry) in &page.items {
            let name = path.elems()[base.len()].clone();
            last_child = Some(base.child(name.clone()));
            if hide_reserved && matches!(name, Elem::Nil) {
                continue;
            }
            let value = if path.len() == base.len() + 1 {
                Some(entry.value.clone())
            } else {
                None
            };
            let name = name.to_value();
            weight += keycard_store::value_weight(&name);
            if with_data {
                weight += value.as_ref().map_or(0, keycard_store::value_weight);
            }
            if weight > max {
                return Err(ApiError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "the children come to more than {max} bytes (max_inflight_bytes); \
                         walk them with get_tree and max_depth 1"
                    ),
                ));
            }
            if with_data {
                data.push((name, value.unwrap_or(Value::Nil)));
            } else {
                names.push(name);
            }
        }
        pos = match (last_child, page.next) {
            (Some(c), _) => Pos::Subtree(c),
            (None, Some(c)) => Pos::Cursor(c),
            (None, None) => break,
        };
        tokio::task::yield_now().await;
    }
    Ok(if with_data {
        Value::Map(data)
    } else {
        Value::Array(names)
    })
}

/// Streams a subtree's changes: with `fetch`, first its current state and
/// `state: uptodate`; then every change as it commits (a deletion is an
/// item without `value`), until `stop` or disconnect.
pub(super) async fn watch(msg: &Value, r: &mut Responder) -> ApiResult {
    let base = data_path(msg, r)?;
    // Opened without a login (the server was open): it ends with the open
    // era, even if the bouncer's notice missed it (the watch began as the
    // era ended, or the connection logged in since).
    let open_era = r.conn().caller().user.is_none();
    let state = r.conn().state.clone();
    let mut items = TreeItems::new(&state, msg, base.clone())?;
    items.authorize(r, Mode::Enumerate).await?;
    // Subscribe before reading, so no change falls between the two.
    let mut feed = state.store.subscribe();
    let start = state.store.tock();
    r.start().await;
    if flag(msg, "fetch") {
        items.walk(r, Some(start)).await?;
        r.state("uptodate").await;
    }
    // Value-less interior nodes make no sense for single changes.
    items.empty = false;
    let mut seen = start;
    loop {
        let next = feed.recv().await;
        if open_era && !state.is_open() && !r.conn().update_session(|s| s.kept_open_era) {
            return Err(ApiError::new(
                ErrorCode::AuthRequired,
                "the server now requires a login: streams opened without one have ended",
            ));
        }
        match next {
            Ok(change) => {
                if change.tock > seen {
                    seen = change.tock;
                    deliver(&mut items, r, &mut feed, &change).await?;
                }
            }
            Err(FeedError::Lagged) => {
                // The feed (bounded in memory) moved past us: read the next
                // page from the change log, then try the feed again.
                let conn = r.conn().clone();
                let mut held = conn.reserve(PAGE_BYTES).await;
                let batch = state.store.changes_since(seen, PAGE).await?;
                held.set(batch.iter().map(keycard_store::weight).sum());
                let Some(last) = batch.last().map(|c| c.tock) else {
                    return Err(ApiError::new(
                        ErrorCode::Internal,
                        "the change feed is ahead of the change log",
                    ));
                };
                for change in &batch {
                    deliver(&mut items, r, &mut feed, change).await?;
                }
                seen = last;
                feed.resume_after(seen);
            }
            Err(FeedError::Closed) => {
                return Err(ApiError::new(
                    ErrorCode::ShuttingDown,
                    "the server is shutting down",
                ));
            }
        }
    }
}

/// Sends one change, ending the watch with `history_gone` if, while the
/// client is not reading, the change log drops what would come next: a
/// watcher further behind than the kept history is ended, not buffered.
async fn deliver(
    items: &mut TreeItems<'_>,
    r: &mut Responder,
    feed: &mut Subscription,
    change: &Change,
) -> ApiResult {
    items.fresh_acl().await?;
    tokio::select! {
        biased;
        () = send_change(items, r, change) => Ok(()),
        () = feed.gone(change.tock) => Err(ApiError::new(
            ErrorCode::HistoryGone,
            format!(
                "this watch fell more than the kept history behind (it was at tock {}) \
                 while its client did not read; fetch the current state and watch again",
                change.tock.0
            ),
        )),
    }
}

async fn send_change(items: &mut TreeItems<'_>, r: &mut Responder, change: &Change) {
    if !change.path.starts_with(items.vis.base()) {
        return;
    }
    let rel = &change.path.elems()[items.vis.base().len()..];
    if !items.in_depth(rel.len()) || items.vis.hides_reserved(rel) || !items.shown(rel, Mode::Read)
    {
        return;
    }
    let m = items.item(rel, change.value.as_ref(), change.tock);
    r.item(m).await;
}

/// Deletes every value in a subtree; replies `{changed: N}`.
pub(super) async fn delete_tree(msg: &Value, r: &mut Responder) -> ApiResult {
    let base = data_path(msg, r)?;
    if base.is_empty() {
        return Err(ApiError::bad("the root node cannot be deleted"));
    }
    let acl = authorize(r, &base, Mode::Enumerate).await?;
    let state = r.conn().state.clone();
    let mut count = 0u64;
    let mut pos = Pos::Start;
    loop {
        let page = state
            .store
            .scan(&base, ScanOpts::default(), pos.after(), PAGE)
            .await?;
        let Some((last, _)) = page.items.last() else {
            break;
        };
        pos = Pos::Cursor(keycard_store::Cursor::after(last));
        // Only what the caller may delete (and see) goes; reserved
        // subtrees below (a domain's) never do.
        let ops: Vec<Op> = page
            .items
            .into_iter()
            .filter(|(p, _)| super::is_data_path(&p.elems()[base.len()..]))
            .filter(|(p, _)| {
                acl.as_ref()
                    .is_none_or(|a| a.visible(base.len(), p.elems(), Mode::Delete))
            })
            .map(|(p, _)| Op::delete(p))
            .collect();
        if ops.is_empty() {
            continue;
        }
        count += state
            .store
            .write(ops)
            .await?
            .iter()
            .filter(|o| o.changed)
            .count() as u64;
    }
    r.reply(Msg::new().with("changed", count)).await;
    Ok(())
}
