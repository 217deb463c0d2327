//! `acl`: mode strings and ACL matching against a reference matcher that
//! states DESIGN §5's rule the slow, plain way (every way each pattern
//! matches, ranked element by element; the most specific decides), and a
//! bound on the matcher's work on long paths.

use keycard_proto::Elem;

use super::Bytes;
use crate::acl::{Acl, Mode, Modes};

const LETTERS: &str = "arwcdxen";
const MODES: [Mode; 8] = [
    Mode::Acl,
    Mode::Read,
    Mode::Write,
    Mode::Create,
    Mode::Delete,
    Mode::Access,
    Mode::Enumerate,
    Mode::New,
];

fn elem(b: &mut Bytes<'_>, wildcards: bool) -> Elem {
    match b.below(if wildcards { 6 } else { 4 }) {
        0 => Elem::from("a"),
        1 => Elem::from("b"),
        2 => Elem::Int(1),
        3 => Elem::from("+"),
        4 => Elem::from("+"),
        _ => Elem::from("#"),
    }
}

fn is(e: &Elem, s: &str) -> bool {
    matches!(e, Elem::Str(x) if x == s)
}

/// Every ranking of the ways `pat` matches `path` (literal 0, `+` 1, `#`
/// starting 2, `#` going on 3).
fn rankings(pat: &[Elem], path: &[Elem], in_hash: bool) -> Vec<Vec<u8>> {
    let Some((first_elem, rest_path)) = path.split_first() else {
        return if pat.is_empty() { vec![vec![]] } else { vec![] };
    };
    let mut out = Vec::new();
    let mut prefixed = |rank: u8, rs: Vec<Vec<u8>>| {
        for mut r in rs {
            r.insert(0, rank);
            out.push(r);
        }
    };
    if in_hash {
        prefixed(3, rankings(pat, rest_path, true));
    }
    if let Some((p, rest)) = pat.split_first() {
        if is(p, "+") {
            prefixed(1, rankings(rest, rest_path, false));
        } else if is(p, "#") {
            prefixed(2, rankings(rest, rest_path, true));
        } else if p == first_elem {
            prefixed(0, rankings(rest, rest_path, false));
        }
    }
    out
}

/// An ACL entry: a pattern and its modes.
type Entry = (Vec<Elem>, Modes);

/// The deciding entry for `path`.
fn reference(entries: &[Entry], path: &[Elem]) -> Option<Entry> {
    let mut best: Option<(Vec<u8>, &Entry)> = None;
    for entry in entries {
        if let Some(r) = rankings(&entry.0, path, false).into_iter().min() {
            if best.as_ref().is_none_or(|(b, _)| r < *b) {
                best = Some((r, entry));
            }
        }
    }
    best.map(|(_, e)| e.clone())
}

/// The target: a mode string, then entries and a path to check, then a
/// long path for the work bound.
pub fn fuzz_acl(data: &[u8]) {
    let mut b = Bytes::new(data);

    // Mode strings: any text; only the eight letters parse, and printing
    // gives them back in canonical order.
    let len = b.below(6);
    let text: String = (0..len)
        .map(|_| char::from(b"arwcdxenW?A, "[b.below(13)]))
        .collect();
    match Modes::parse(&text) {
        Ok(m) => {
            assert!(text.chars().all(|c| LETTERS.contains(c)));
            for (c, mode) in LETTERS.chars().zip(MODES) {
                assert_eq!(m.has(mode), text.contains(c));
                assert_eq!(mode.letter(), c);
                assert_eq!(Mode::from_letter(c), Some(mode));
            }
            let printed = m.to_string();
            assert!(LETTERS
                .chars()
                .filter(|c| printed.contains(*c))
                .eq(printed.chars()));
            assert_eq!(Modes::parse(&printed), Ok(m));
        }
        Err(_) => assert!(!text.chars().all(|c| LETTERS.contains(c))),
    }

    // Entries and a path: the matcher against the reference, at every
    // depth, and `check` against the rule it states.
    let mut acl = Acl::new();
    let mut entries: Vec<Entry> = Vec::new();
    for _ in 0..b.below(7) {
        let pattern: Vec<Elem> = (0..b.below(5)).map(|_| elem(&mut b, true)).collect();
        let bits = b.byte();
        let modes: String = LETTERS
            .chars()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, c)| c)
            .collect();
        let modes = Modes::parse(&modes).expect("letters parse");
        acl.insert(&pattern, modes);
        // A later entry for the same pattern replaces the earlier one.
        entries.retain(|(p, _)| *p != pattern);
        entries.push((pattern, modes));
    }
    assert_eq!(acl.len(), entries.len());
    assert_eq!(acl.is_empty(), entries.is_empty());
    let path: Vec<Elem> = (0..b.below(8)).map(|_| elem(&mut b, true)).collect();
    let mut f = acl.finder();
    for depth in 0..=path.len() {
        let want = reference(&entries, &path[..depth]);
        assert_eq!(f.rule(), want, "the deciding entry of {:?}", &path[..depth]);
        assert_eq!(f.result(), want.as_ref().map(|(_, m)| *m));
        if let Some(e) = path.get(depth) {
            f = f.step(e);
        }
    }
    let exists = b.byte();
    let exists = |d: usize| d < 8 && exists & (1 << d) != 0;
    let mode = MODES[b.below(8)];
    let got = acl.check(&path, exists, mode);
    let mut want = Ok(());
    for (i, _) in path.iter().enumerate() {
        let need = if exists(i + 1) {
            Mode::Access
        } else {
            Mode::New
        };
        let rule = reference(&entries, &path[..i]);
        if rule.as_ref().is_some_and(|(_, m)| !m.has(need)) {
            want = Err((i, need, rule));
            break;
        }
    }
    if want.is_ok() {
        let rule = reference(&entries, &path);
        if !rule.as_ref().is_some_and(|(_, m)| m.has(mode)) {
            want = Err((path.len(), mode, rule));
        }
    }
    match (got, want) {
        (Ok(f), Ok(())) => assert!(f.grants(mode)),
        (Err(d), Err((depth, need, rule))) => {
            assert_eq!((d.depth, d.mode, d.rule), (depth, need, rule));
        }
        (got, want) => panic!("check {got:?}, reference {want:?}"),
    }

    // The matcher's state stays within the ACL's size however long the
    // path (one entry per pattern node at most), so a check costs
    // O(path × nodes).
    let nodes = 1 + entries.iter().map(|(p, _)| p.len()).sum::<usize>();
    let mut f = acl.finder();
    for _ in 0..b.below(200) {
        f = f.step(&elem(&mut b, false));
        assert!(
            f.width() <= nodes,
            "{} matcher states for {nodes} pattern nodes",
            f.width()
        );
    }
}
