//! DistKV's ACLs: named trees of path patterns whose values are mode
//! strings, matched most specific first.
//!
//! An ACL named NAME lives at `(nil, "acl", NAME, …pattern)`. A pattern
//! element is a literal, `+` (any one element) or `#` (one or more
//! elements). Modes are letters: `a` acl, `r` read, `w` write, `c` create,
//! `d` delete, `x` access a sub-node, `e` enumerate sub-nodes, `n` create a
//! new sub-node (`W`, asked by writes, means `w` for a node holding a value
//! and `c` otherwise).
//!
//! Matching walks the pattern tree along the path, keeping every node the
//! path so far matches: at each step a literal child first, then `+`, then
//! `#` (which keeps matching further elements). The match is the first of
//! those nodes that holds a mode string. Checking a path needs, before
//! each element, `x` on the node so far if the next node exists, else `n`;
//! then the requested mode on the node itself. Where DistKV is open keycard
//! is closed: an intermediate level that no pattern matches stays
//! passable, as in DistKV, but the node the request is about must be
//! matched by a pattern granting the mode.
//!
//! Pure data and functions: no store, no clock.

use std::collections::HashMap;
use std::fmt;

use keycard_proto::Elem;

/// One mode letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `a`: see the ACL entries that decide.
    Acl,
    /// `r`: read the value.
    Read,
    /// `w`: overwrite the value.
    Write,
    /// `c`: create a value where there is none.
    Create,
    /// `d`: delete the value.
    Delete,
    /// `x`: access existing sub-nodes.
    Access,
    /// `e`: enumerate sub-nodes.
    Enumerate,
    /// `n`: create new sub-nodes.
    New,
}

const LETTERS: [(char, Mode); 8] = [
    ('a', Mode::Acl),
    ('r', Mode::Read),
    ('w', Mode::Write),
    ('c', Mode::Create),
    ('d', Mode::Delete),
    ('x', Mode::Access),
    ('e', Mode::Enumerate),
    ('n', Mode::New),
];

impl Mode {
    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The mode's letter.
    pub fn letter(self) -> char {
        LETTERS
            .iter()
            .find(|(_, m)| *m == self)
            .map_or('?', |(c, _)| *c)
    }

    /// The mode for a letter.
    pub fn from_letter(c: char) -> Option<Mode> {
        LETTERS.iter().find(|(l, _)| *l == c).map(|(_, m)| *m)
    }
}

/// A set of modes.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Modes(u8);

/// Why an ACL entry is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    /// A letter that is no mode.
    #[error("unknown ACL mode letter {0:?} (modes are a r w c d x e n)")]
    BadMode(char),
    /// An entry value that is not a string.
    #[error("an ACL entry's value must be a mode string")]
    NotAString,
}

impl Modes {
    /// Parses a mode string such as `"rxnc"`.
    pub fn parse(s: &str) -> Result<Modes, AclError> {
        let mut bits = 0u8;
        for c in s.chars() {
            bits |= Mode::from_letter(c).ok_or(AclError::BadMode(c))?.bit();
        }
        Ok(Modes(bits))
    }

    /// Whether `m` is in the set.
    pub fn has(self, m: Mode) -> bool {
        self.0 & m.bit() != 0
    }
}

impl fmt::Display for Modes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (c, m) in LETTERS {
            if self.has(m) {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Modes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Modes({self})")
    }
}

#[derive(Default, Debug)]
struct Node {
    modes: Option<Modes>,
    /// The matched pattern, for explaining decisions.
    pattern: Vec<Elem>,
    exact: HashMap<Elem, Node>,
    plus: Option<Box<Node>>,
    hash: Option<Box<Node>>,
}

/// One named ACL, compiled for matching.
#[derive(Default, Debug)]
pub struct Acl {
    root: Node,
    entries: usize,
}

fn wildcard(e: &Elem) -> Option<&'static str> {
    match e {
        Elem::Str(s) if s == "+" => Some("+"),
        Elem::Str(s) if s == "#" => Some("#"),
        _ => None,
    }
}

impl Acl {
    /// An ACL with no entries (it grants nothing).
    pub fn new() -> Acl {
        Acl::default()
    }

    /// Adds the entry `pattern` → `modes`.
    pub fn insert(&mut self, pattern: &[Elem], modes: Modes) {
        let mut node = &mut self.root;
        for e in pattern {
            node = match wildcard(e) {
                Some("+") => node.plus.get_or_insert_with(Box::default),
                Some(_) => node.hash.get_or_insert_with(Box::default),
                None => node.exact.entry(e.clone()).or_default(),
            };
        }
        if node.modes.is_none() {
            self.entries += 1;
        }
        node.modes = Some(modes);
        node.pattern = pattern.to_vec();
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether it has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// A matcher at the ACL's root.
    pub fn finder(&self) -> Finder<'_> {
        Finder {
            steps: vec![(&self.root, false)],
        }
    }

    /// Checks `mode` on `path`: before each element, `x` if
    /// `exists(depth)` (the node of that depth exists) else `n`, on the
    /// level above; then `mode` on the node. Returns the matcher at the
    /// node, or what was missing where.
    pub fn check(
        &self,
        path: &[Elem],
        mut exists: impl FnMut(usize) -> bool,
        mode: Mode,
    ) -> Result<Finder<'_>, Denied> {
        let mut f = self.finder();
        for (i, e) in path.iter().enumerate() {
            let need = if exists(i + 1) {
                Mode::Access
            } else {
                Mode::New
            };
            if !f.passes(need) {
                return Err(Denied {
                    depth: i,
                    mode: need,
                    rule: f.rule(),
                });
            }
            f = f.step(e);
        }
        if f.grants(mode) {
            Ok(f)
        } else {
            Err(Denied {
                depth: path.len(),
                mode,
                rule: f.rule(),
            })
        }
    }
}

/// Why a check failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    /// How many path elements were passed before the refusal.
    pub depth: usize,
    /// The mode that was missing.
    pub mode: Mode,
    /// The entry that decided (its pattern and modes), if one matched.
    pub rule: Option<(Vec<Elem>, Modes)>,
}

/// A position in an ACL: every pattern node the path so far matches.
#[derive(Clone, Debug)]
pub struct Finder<'a> {
    steps: Vec<(&'a Node, bool)>,
}

impl<'a> Finder<'a> {
    /// The matcher one element further down.
    pub fn step(&self, e: &Elem) -> Finder<'a> {
        let mut next = Finder {
            steps: Vec::with_capacity(self.steps.len() + 2),
        };
        self.step_into(e, &mut next);
        next
    }

    /// Like [`Finder::step`], into `next` (reusing its allocation).
    pub fn step_into(&self, e: &Elem, next: &mut Finder<'a>) {
        let steps = &mut next.steps;
        steps.clear();
        // Each pattern node is kept once, where it first comes: that is
        // the most specific way it matches, the only one `result` can see,
        // and what follows from a later copy follows from the first too.
        // (Kept as often as it matched, `#/#/#` on a path of n elements
        // held O(n²) nodes, and every further `#` another factor of n.)
        let mut push = |node: &'a Node, keep: bool| {
            if !steps.iter().any(|(n, _)| std::ptr::eq(*n, node)) {
                steps.push((node, keep));
            }
        };
        for &(node, keep) in &self.steps {
            if let Some(child) = node.exact.get(e) {
                push(child, false);
            }
            if let Some(child) = &node.plus {
                push(child.as_ref(), false);
            }
            if let Some(child) = &node.hash {
                push(child.as_ref(), true);
            }
            if keep {
                // A `#` node goes on matching further elements.
                push(node, true);
            }
        }
    }

    /// How many pattern nodes the matcher holds (the fuzz target bounds
    /// it by the ACL's size).
    #[doc(hidden)]
    pub fn width(&self) -> usize {
        self.steps.len()
    }

    /// The modes of the most specific matching entry.
    pub fn result(&self) -> Option<Modes> {
        self.steps.iter().find_map(|(n, _)| n.modes)
    }

    /// The deciding entry.
    pub fn rule(&self) -> Option<(Vec<Elem>, Modes)> {
        self.steps
            .iter()
            .find_map(|(n, _)| n.modes.map(|m| (n.pattern.clone(), m)))
    }

    /// For the node itself: granted only by a matching entry.
    pub fn grants(&self, m: Mode) -> bool {
        self.result().is_some_and(|r| r.has(m))
    }

    /// For passing through: an unmatched level is passable.
    pub fn passes(&self, m: Mode) -> bool {
        self.result().is_none_or(|r| r.has(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keycard_proto::MAX_PATH_LEN;

    fn p(parts: &[&str]) -> Vec<Elem> {
        parts.iter().map(|s| Elem::from(*s)).collect()
    }

    fn acl(entries: &[(&[&str], &str)]) -> Acl {
        let mut a = Acl::new();
        for (pat, m) in entries {
            a.insert(&p(pat), Modes::parse(m).expect("modes"));
        }
        a
    }

    /// DistKV's documented example (test_feature_acl.py test_81_basic).
    #[test]
    fn distkv_doc_example() {
        let a = acl(&[(&["one"], "rxnc"), (&["one", "two"], "rc")]);
        let nothing = |_: usize| false;
        let all = |_: usize| true;
        // Create `one`, then `one.two`; read `one.two`.
        assert!(a.check(&p(&["one"]), nothing, Mode::Create).is_ok());
        assert!(a
            .check(&p(&["one", "two"]), |d| d <= 1, Mode::Create)
            .is_ok());
        assert!(a.check(&p(&["one", "two"]), all, Mode::Read).is_ok());
        // No `n` on one.two: one.two.three cannot be created.
        let e = a
            .check(&p(&["one", "two", "three"]), |d| d <= 2, Mode::Create)
            .expect_err("n missing");
        assert_eq!((e.depth, e.mode), (2, Mode::New));
        assert_eq!(
            e.rule,
            Some((p(&["one", "two"]), Modes::parse("rc").expect("m")))
        );
        // No `w` on one.two: it cannot be overwritten.
        assert!(a.check(&p(&["one", "two"]), all, Mode::Write).is_err());
        // Closed where DistKV is open: nothing matches `elsewhere`.
        assert!(a.check(&p(&["elsewhere"]), nothing, Mode::Create).is_err());
    }

    #[test]
    fn wildcards_and_specificity() {
        let a = acl(&[
            (&["home", "+"], "rwc"),
            (&["home", "root"], "r"),
            (&["pub", "#"], "rx"),
            (&["pub", "#", "x"], "rw"),
        ]);
        let all = |_: usize| true;
        assert!(a.check(&p(&["home", "bob"]), all, Mode::Write).is_ok());
        // The literal is more specific than `+`.
        assert!(a.check(&p(&["home", "root"]), all, Mode::Write).is_err());
        assert!(a.check(&p(&["home", "root"]), all, Mode::Read).is_ok());
        // `+` is one level only.
        assert!(a
            .check(&p(&["home", "bob", "mail"]), all, Mode::Read)
            .is_err());
        // `#` is one or more levels.
        assert!(a.check(&p(&["pub", "a"]), all, Mode::Read).is_ok());
        assert!(a
            .check(&p(&["pub", "a", "b", "c"]), all, Mode::Read)
            .is_ok());
        assert!(a.check(&p(&["pub"]), all, Mode::Read).is_err());
        assert!(a
            .check(&p(&["pub", "a", "b", "x"]), all, Mode::Write)
            .is_ok());
        assert!(a.check(&p(&["pub", "a", "b"]), all, Mode::Write).is_err());
        // Passing through a matched level needs `x` (or `n` for a new node).
        let b = acl(&[(&["pub", "#"], "r")]);
        let e = b
            .check(&p(&["pub", "a", "b"]), all, Mode::Read)
            .expect_err("no x");
        assert_eq!((e.depth, e.mode), (2, Mode::Access));
    }

    /// Found by the `acl` fuzz target: the matcher kept a `#` node once per
    /// way it matched, so `#/#/#/#` on a long path held millions of them.
    #[test]
    fn the_matcher_holds_each_pattern_node_once() {
        let a = acl(&[(&["#", "#", "#", "#"], "rx"), (&["#", "+", "#"], "r")]);
        let path: Vec<Elem> = (0..MAX_PATH_LEN as i128).map(Elem::Int).collect();
        let mut f = a.finder();
        for e in &path {
            f = f.step(e);
            assert!(f.width() <= 7, "{} matcher states", f.width());
        }
        // `+` at the second level is more specific than `#` there.
        assert_eq!(f.result(), Modes::parse("r").ok());
        let e = a.check(&path, |_| true, Mode::Read).expect_err("no x");
        assert_eq!((e.depth, e.mode), (3, Mode::Access));
    }

    #[test]
    fn modes_parse_and_print() {
        assert_eq!(Modes::parse("xrwa").expect("m").to_string(), "arwx");
        assert_eq!(Modes::parse("rQ"), Err(AclError::BadMode('Q')));
        assert_eq!(Modes::parse("W"), Err(AclError::BadMode('W')));
        assert!(!Modes::default().has(Mode::Read));
    }

    use proptest::prelude::*;

    /// The reference model: every way each entry's pattern matches the
    /// path, ranked element by element (literal 0, `+` 1, `#` starting 2,
    /// `#` continuing 3); the entry with the smallest ranking decides.
    fn model(entries: &[(Vec<Elem>, Modes)], path: &[Elem]) -> Option<Modes> {
        fn rankings(pat: &[Elem], path: &[Elem], in_hash: bool) -> Vec<Vec<u8>> {
            if path.is_empty() {
                return if pat.is_empty() { vec![vec![]] } else { vec![] };
            }
            let mut out = Vec::new();
            // `#` we are inside of may swallow this element too.
            if in_hash {
                for mut r in rankings(pat, &path[1..], true) {
                    r.insert(0, 3);
                    out.push(r);
                }
            }
            if let Some((first, rest)) = pat.split_first() {
                let (rank, hash) = match first {
                    Elem::Str(s) if s == "+" => (1, false),
                    Elem::Str(s) if s == "#" => (2, true),
                    e if e == &path[0] => (0, false),
                    _ => (9, false),
                };
                if rank != 9 {
                    for mut r in rankings(rest, &path[1..], hash) {
                        r.insert(0, rank);
                        out.push(r);
                    }
                }
            }
            out
        }
        let mut best: Option<(Vec<u8>, Modes)> = None;
        for (pat, modes) in entries {
            if let Some(r) = rankings(pat, path, false).into_iter().min() {
                if best.as_ref().is_none_or(|(b, _)| r < *b) {
                    best = Some((r, *modes));
                }
            }
        }
        best.map(|(_, m)| m)
    }

    fn elem() -> impl Strategy<Value = Elem> {
        prop_oneof![Just(Elem::from("a")), Just(Elem::from("b"))]
    }

    fn pattern_elem() -> impl Strategy<Value = Elem> {
        prop_oneof![
            Just(Elem::from("a")),
            Just(Elem::from("b")),
            Just(Elem::from("+")),
            Just(Elem::from("#"))
        ]
    }

    proptest! {
        #[test]
        fn matching_agrees_with_the_model(
            entries in proptest::collection::vec(
                (proptest::collection::vec(pattern_elem(), 0..4), 0u8..=255), 0..7),
            path in proptest::collection::vec(elem(), 0..5),
        ) {
            let mut a = Acl::new();
            let mut dedup: Vec<(Vec<Elem>, Modes)> = Vec::new();
            for (pat, bits) in &entries {
                a.insert(pat, Modes(*bits));
                // A later entry for the same pattern replaces the earlier.
                dedup.retain(|(p, _)| p != pat);
                dedup.push((pat.clone(), Modes(*bits)));
            }
            let mut f = a.finder();
            for e in &path {
                f = f.step(e);
            }
            prop_assert_eq!(f.result(), model(&dedup, &path));
        }
    }
}
