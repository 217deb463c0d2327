//! One scan page's rules, apart from where the nodes are read.
//!
//! A backend reads keys in order from [`Walk::range`] and hands each to
//! [`Walk::step`], which applies the depth bounds, skips a subtree that is
//! too deep by asking for a new range (so a walk never wades through it),
//! bounds the work and the bytes of one page, and knows where the next
//! page starts. So pages, cursors and depth bounds are the same on every
//! backend.

use std::ops::Bound;

use keycard_proto::{Path, KEY_END};

use crate::types::{After, Cursor, Entry, ScanOpts, ScanPage, StoreError};

/// Most bytes of stored values one page holds (at least one node): a walk
/// over large values holds one such page at a time.
pub const PAGE_BYTES: usize = 1 << 20;

/// A range of keys, as ordered maps take it.
pub type KeyRange<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// What a [`Walk`] wants after a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The next key of the current range.
    Read,
    /// Keys again from the new [`Walk::range`] (a subtree was skipped).
    Seek,
    /// Nothing more: the page is done ([`Walk::page`] with `false`).
    Stop,
}

/// One page of a scan in progress.
#[derive(Debug)]
pub struct Walk {
    /// The prefix's length: a node's depth is its length minus this.
    base: usize,
    opts: ScanOpts,
    /// Just past the prefix's subtree.
    end: Vec<u8>,
    /// Where reading resumes.
    lower: Bound<Vec<u8>>,
    limit: usize,
    /// Most keys looked at: a depth filter can skip millions of nodes
    /// between two results.
    examine_max: usize,
    examined: usize,
    bytes: usize,
    items: Vec<(Path, Entry)>,
}

impl Walk {
    /// A page of up to `limit` nodes of `prefix`'s subtree within `opts`,
    /// from where `after` says.
    pub fn new(prefix: &Path, opts: ScanOpts, after: After<'_>, limit: usize) -> Walk {
        let mut end = prefix.to_key();
        end.push(KEY_END);
        let lower = match after {
            After::Start => Bound::Included(prefix.to_key()),
            After::Node(a) => Bound::Excluded(a.to_key()),
            After::Subtree(a) => {
                let mut k = a.to_key();
                k.push(KEY_END);
                Bound::Excluded(k)
            }
            After::Cursor(c) => Bound::Excluded(c.0.clone()),
        };
        Walk {
            base: prefix.len(),
            opts,
            end,
            lower,
            limit,
            examine_max: limit.saturating_mul(8).max(4096),
            examined: 0,
            bytes: 0,
            items: Vec::new(),
        }
    }

    /// The keys to read next, in order; `None` when none are left (the
    /// page is then done: [`Walk::page`] with `true`). Never an empty or
    /// inverted range, which some ordered maps refuse with a panic: a
    /// cursor or an `After` node may lie past the subtree's end.
    pub fn range(&self) -> Option<KeyRange<'_>> {
        let (Bound::Included(lower) | Bound::Excluded(lower)) = &self.lower else {
            return Some((Bound::Unbounded, Bound::Excluded(self.end.as_slice())));
        };
        (*lower < self.end).then(|| {
            (
                self.lower.as_ref().map(Vec::as_slice),
                Bound::Excluded(self.end.as_slice()),
            )
        })
    }

    /// Takes the next key of the range: `size` is what its node weighs in
    /// the page's byte bound, and `entry` reads it (called only for a node
    /// the page keeps).
    pub fn step(
        &mut self,
        key: &[u8],
        size: usize,
        entry: impl FnOnce() -> Result<Entry, StoreError>,
    ) -> Result<Next, StoreError> {
        self.examined += 1;
        let path = Path::from_key(key).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let depth = path
            .len()
            .checked_sub(self.base)
            .ok_or_else(|| StoreError::Corrupt("a key outside the scanned subtree".into()))?;
        if let Some(max) = self.opts.max_depth {
            if depth > max {
                // Skip the rest of the subtree of the ancestor at the
                // deepest allowed level.
                let mut skip = Path::new(path.elems()[..self.base + max].to_vec()).to_key();
                skip.push(KEY_END);
                self.lower = Bound::Excluded(skip);
                return Ok(if self.examined >= self.examine_max {
                    Next::Stop
                } else {
                    Next::Seek
                });
            }
        }
        self.lower = Bound::Excluded(key.to_vec());
        if depth >= self.opts.min_depth {
            self.bytes += size;
            self.items.push((path, entry()?));
            if self.items.len() >= self.limit || self.bytes >= PAGE_BYTES {
                return Ok(Next::Stop);
            }
        }
        Ok(if self.examined >= self.examine_max {
            Next::Stop
        } else {
            Next::Read
        })
    }

    /// The page: `exhausted` when the range ran out (the subtree is
    /// done), else it stopped and the page says where to go on from.
    pub fn page(self, exhausted: bool) -> ScanPage {
        let next = match self.lower {
            Bound::Excluded(k) if !exhausted => Some(Cursor(k)),
            _ => None,
        };
        ScanPage {
            items: self.items,
            next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keycard_proto::Value;
    use std::collections::BTreeMap;

    fn p(s: &str) -> Path {
        Path::parse(s).expect("test path")
    }

    /// The walk over a sorted map, as a backend drives it.
    fn scan(
        map: &BTreeMap<Vec<u8>, Entry>,
        prefix: &Path,
        opts: ScanOpts,
        after: After<'_>,
        limit: usize,
    ) -> ScanPage {
        let mut walk = Walk::new(prefix, opts, after, limit);
        'seek: while let Some(range) = walk.range() {
            for (k, e) in map.range::<[u8], _>(range) {
                match walk.step(k, 1, || Ok(e.clone())).expect("step") {
                    Next::Read => {}
                    Next::Seek => continue 'seek,
                    Next::Stop => return walk.page(false),
                }
            }
            break;
        }
        walk.page(true)
    }

    fn map(paths: &[&str]) -> BTreeMap<Vec<u8>, Entry> {
        paths
            .iter()
            .map(|s| {
                let e = Entry {
                    value: Value::Nil,
                    tock: crate::Tock(1),
                };
                (p(s).to_key(), e)
            })
            .collect()
    }

    fn names(page: &ScanPage) -> Vec<String> {
        page.items.iter().map(|(p, _)| p.to_string()).collect()
    }

    /// Resuming past the subtree's end, or skipping the prefix's own
    /// subtree, is an empty page, not an inverted range.
    #[test]
    fn ranges_past_the_end_are_empty() {
        let m = map(&["a", "a.b", "a.b.c", "b"]);
        let all = ScanOpts::default();
        for after in [
            After::Node(&p("z")),
            After::Subtree(&p("a")),
            After::Node(&p("b")),
        ] {
            let page = scan(&m, &p("a"), all, after, 10);
            assert_eq!((page.items.len(), page.next), (0, None), "{after:?}");
        }
        let cursor = Cursor::after(&p("zz"));
        let page = scan(&m, &p("a"), all, After::Cursor(&cursor), 10);
        assert_eq!((page.items.len(), page.next), (0, None));
        // max_depth 0: the prefix alone, its subtree skipped in one seek.
        let only = ScanOpts {
            min_depth: 0,
            max_depth: Some(0),
        };
        let page = scan(&m, &p("a"), only, After::Start, 10);
        assert_eq!((names(&page), page.next), (vec!["a".to_owned()], None));
    }

    /// A full page says where to go on; the next page starts there.
    #[test]
    fn pages_resume_at_their_cursor() {
        let m = map(&["a", "a.b", "a.b.c", "a.d", "b"]);
        let first = scan(&m, &p("a"), ScanOpts::default(), After::Start, 2);
        assert_eq!(names(&first), ["a", "a.b"]);
        let next = first.next.expect("more");
        let rest = scan(&m, &p("a"), ScanOpts::default(), After::Cursor(&next), 10);
        assert_eq!(names(&rest), ["a.b.c", "a.d"]);
        assert_eq!(rest.next, None);
    }
}
