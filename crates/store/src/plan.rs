//! What a batch of ops does to the tree, decided without I/O.
//!
//! Every backend writes through [`plan`]: it checks each op's condition
//! against the committed state as the batch's earlier ops leave it,
//! drops the writes that would change nothing (an idempotent put of the
//! same value, the deletion of an absent node) and gives each change the
//! next tock. A backend only supplies reads ([`Current`]) and applies the
//! [`Plan`] in its own transaction, so conditions, the overlay of a
//! batch's earlier ops and tock assignment mean the same on every
//! backend by construction. The change log's retention rule
//! ([`pruned_after`], [`check_history`]) lives here for the same reason.

use std::collections::{BTreeMap, HashMap};

use keycard_proto::Value;

use crate::types::{Change, Cond, Entry, Op, Outcome, StoreError, Tock};

/// The committed state a batch is planned against: one read, of one key.
pub trait Current {
    /// The entry stored under `key` (a path's order-preserving encoding,
    /// `Path::to_key`), or `None` when that node holds no value.
    fn entry(&mut self, key: &[u8]) -> Result<Option<Entry>, StoreError>;
}

impl Current for BTreeMap<Vec<u8>, Entry> {
    fn entry(&mut self, key: &[u8]) -> Result<Option<Entry>, StoreError> {
        Ok(self.get(key).cloned())
    }
}

/// A backend whose reads are round trips fetches [`keys`] in one go and
/// plans over the answer: a key missing from the map holds no value.
impl Current for HashMap<Vec<u8>, Entry> {
    fn entry(&mut self, key: &[u8]) -> Result<Option<Entry>, StoreError> {
        Ok(self.get(key).cloned())
    }
}

/// One change the plan makes, for the backend to write and log.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// The node's key (its path's order-preserving encoding).
    pub key: Vec<u8>,
    /// The node, its new value (`None`: deleted) and its tock.
    pub change: Change,
}

/// What a batch does once every condition holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// One per op, in order: what the writer is answered.
    pub outcomes: Vec<Outcome>,
    /// The changes, with consecutive tocks after the one planned from;
    /// an op that changes nothing has none.
    pub changes: Vec<Planned>,
}

impl Plan {
    /// The store's last tock once the plan is applied, planned from
    /// `from`.
    pub fn last_tock(&self, from: Tock) -> Tock {
        self.changes.last().map_or(from, |p| p.change.tock)
    }
}

/// Why `current` fails `cond`, in the words a conflict reports.
fn unmet(cond: &Cond, current: Option<&Entry>) -> Option<&'static str> {
    match (cond, current) {
        (Cond::Any, _) | (Cond::Absent, None) => None,
        (Cond::Absent, Some(_)) => Some("the node exists"),
        (Cond::Equals(_) | Cond::TockIs(_), None) => Some("the node has no value"),
        (Cond::Equals(want), Some(e)) => {
            (*want != e.value).then_some("the node holds a different value")
        }
        (Cond::TockIs(t), Some(e)) => {
            (*t != e.tock).then_some("the node was changed at another tock")
        }
    }
}

/// Plans `ops` against `current`, the last committed tock being `tock`:
/// either every op's condition holds, and the plan says what each does,
/// or nothing is planned and [`StoreError::Conflict`] names the first op
/// whose condition failed. A later op sees what the earlier ones of the
/// batch did. A read error is returned as it is. Each distinct key is
/// read at most once.
pub fn plan<C: Current + ?Sized>(
    current: &mut C,
    ops: &[Op],
    tock: Tock,
) -> Result<Plan, StoreError> {
    let mut tock = tock;
    // Each key's entry as the batch has left it so far (reads included,
    // so a key is read once).
    let mut seen: HashMap<Vec<u8>, Option<Entry>> = HashMap::new();
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut changes = Vec::with_capacity(ops.len());
    for (index, op) in ops.iter().enumerate() {
        let key = op.path().to_key();
        let now = match seen.get(&key) {
            Some(e) => e.clone(),
            None => {
                let e = current.entry(&key)?;
                seen.insert(key.clone(), e.clone());
                e
            }
        };
        let cond = match op {
            Op::Put { cond, .. } | Op::Delete { cond, .. } => cond,
        };
        if let Some(reason) = unmet(cond, now.as_ref()) {
            return Err(StoreError::Conflict { index, reason });
        }
        let prev = now.map(|e| e.value);
        // The node's next value (`None`: deleted), or `None` when the op
        // leaves it as it is.
        let next: Option<Option<Value>> = match op {
            Op::Put { value, idem, .. } => {
                if *idem && prev.as_ref() == Some(value) {
                    None
                } else {
                    Some(Some(value.clone()))
                }
            }
            Op::Delete { .. } => prev.is_some().then_some(None),
        };
        // An op that changes nothing says so with the store's tock as it
        // is at this point of the batch.
        let Some(value) = next else {
            outcomes.push(Outcome {
                changed: false,
                prev,
                tock,
            });
            continue;
        };
        tock = Tock(tock.0 + 1);
        seen.insert(
            key.clone(),
            value.clone().map(|value| Entry { value, tock }),
        );
        outcomes.push(Outcome {
            changed: true,
            prev,
            tock,
        });
        changes.push(Planned {
            key,
            change: Change {
                path: op.path().clone(),
                value,
                tock,
            },
        });
    }
    Ok(Plan { outcomes, changes })
}

/// The distinct keys [`plan`] may read for `ops`, in the order it first
/// reads them: a backend whose reads are round trips (a database server)
/// fetches these in one query, then plans over the answer.
pub fn keys(ops: &[Op]) -> Vec<Vec<u8>> {
    let mut seen = std::collections::HashSet::with_capacity(ops.len());
    ops.iter()
        .map(|op| op.path().to_key())
        .filter(|key| seen.insert(key.clone()))
        .collect()
}

/// Most bytes of changes one `changes_since` call returns (at least one
/// change, whatever its size): a watch catching up holds one page at a
/// time. A backend counts what its records weigh.
pub const CHANGES_PAGE_BYTES: usize = 1 << 20;

/// The highest tock the change log no longer needs to keep once the last
/// tock is `tock`, keeping the last `history` changes; `pruned` is what it
/// dropped before. `None` when nothing more can go.
pub fn pruned_after(tock: Tock, history: u64, pruned: u64) -> Option<u64> {
    let floor = tock.0.saturating_sub(history);
    (floor > pruned).then_some(floor)
}

/// Whether the changes after `after` are all still in a change log that
/// has dropped those up to `pruned`: [`StoreError::HistoryGone`] if not.
pub fn check_history(after: Tock, pruned: u64) -> Result<(), StoreError> {
    if after.0 < pruned {
        return Err(StoreError::HistoryGone { oldest: pruned + 1 });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keycard_proto::{Elem, Path};
    use proptest::prelude::*;

    fn p(s: &str) -> Path {
        Path::parse(s).expect("test path")
    }

    fn put(path: &str, v: i64, cond: Cond) -> Op {
        Op::Put {
            path: p(path),
            value: v.into(),
            cond,
            idem: false,
        }
    }

    /// A committed state of `(path, value, tock)`.
    fn state(nodes: &[(&str, i64, u64)]) -> BTreeMap<Vec<u8>, Entry> {
        nodes
            .iter()
            .map(|(path, v, t)| {
                (
                    p(path).to_key(),
                    Entry {
                        value: (*v).into(),
                        tock: Tock(*t),
                    },
                )
            })
            .collect()
    }

    /// Each condition, met and unmet, with the reason a conflict gives.
    #[test]
    fn conditions_are_checked_and_a_conflict_names_the_op() {
        let mut db = state(&[("a", 1, 3)]);
        let cases = [
            (Cond::Any, "a", None),
            (Cond::Absent, "b", None),
            (Cond::Absent, "a", Some("the node exists")),
            (Cond::Equals(1.into()), "a", None),
            (
                Cond::Equals(2.into()),
                "a",
                Some("the node holds a different value"),
            ),
            (Cond::Equals(1.into()), "b", Some("the node has no value")),
            (Cond::TockIs(Tock(3)), "a", None),
            (
                Cond::TockIs(Tock(2)),
                "a",
                Some("the node was changed at another tock"),
            ),
            (Cond::TockIs(Tock(3)), "b", Some("the node has no value")),
        ];
        for (cond, path, want) in cases {
            let ops = [Op::put(p("z"), 0.into()), put(path, 9, cond.clone())];
            let got = plan(&mut db, &ops, Tock(3));
            match want {
                None => assert!(got.is_ok(), "{cond:?} on {path}: {got:?}"),
                Some(reason) => {
                    assert_eq!(got, Err(StoreError::Conflict { index: 1, reason }))
                }
            }
            let delete = [Op::Delete {
                path: p(path),
                cond: cond.clone(),
            }];
            let got = plan(&mut db, &delete, Tock(3));
            assert_eq!(got.is_ok(), want.is_none(), "delete, {cond:?} on {path}");
        }
    }

    /// Later ops see earlier ones: a put then a condition on it, a delete
    /// then `Absent`; tocks follow one another from the one given.
    #[test]
    fn a_batch_sees_its_own_earlier_ops() {
        let mut db = state(&[("a", 1, 5)]);
        let ops = [
            put("a", 2, Cond::Equals(1.into())),
            put("a", 3, Cond::TockIs(Tock(6))),
            Op::Delete {
                path: p("a"),
                cond: Cond::Equals(3.into()),
            },
            put("a", 4, Cond::Absent),
        ];
        let got = plan(&mut db, &ops, Tock(5)).expect("plan");
        let prevs: Vec<_> = got.outcomes.iter().map(|o| o.prev.clone()).collect();
        assert_eq!(
            prevs,
            [Some(1.into()), Some(2.into()), Some(3.into()), None]
        );
        let tocks: Vec<_> = got.changes.iter().map(|c| c.change.tock.0).collect();
        assert_eq!(tocks, [6, 7, 8, 9]);
        assert_eq!(got.changes[2].change.value, None);
        assert_eq!(got.last_tock(Tock(5)), Tock(9));
        // Planning wrote nothing.
        assert_eq!(db, state(&[("a", 1, 5)]));
    }

    /// An idempotent put of the same value and the deletion of an absent
    /// node change nothing and report the tock reached so far.
    #[test]
    fn writes_that_change_nothing_take_no_tock() {
        let mut db = state(&[("a", 1, 5)]);
        let ops = [
            Op::Put {
                path: p("a"),
                value: 1.into(),
                cond: Cond::Any,
                idem: true,
            },
            Op::put(p("b"), 1.into()),
            Op::delete(p("c")),
            Op::Put {
                path: p("b"),
                value: 1.into(),
                cond: Cond::Any,
                idem: true,
            },
            Op::Put {
                path: p("a"),
                value: 1.into(),
                cond: Cond::Any,
                idem: false,
            },
        ];
        let got = plan(&mut db, &ops, Tock(5)).expect("plan");
        let summary: Vec<_> = got.outcomes.iter().map(|o| (o.changed, o.tock.0)).collect();
        assert_eq!(
            summary,
            [(false, 5), (true, 6), (false, 6), (false, 6), (true, 7)]
        );
        assert_eq!(got.outcomes[2].prev, None);
        assert_eq!(got.changes.len(), 2);
        assert_eq!(
            plan(&mut db, &[], Tock(5))
                .expect("empty")
                .last_tock(Tock(5)),
            Tock(5)
        );
    }

    /// The planner reads each key once, only keys `keys` names, and a
    /// read error ends the plan.
    #[test]
    fn reads_are_few_and_their_errors_pass_through() {
        struct Counting(Vec<Vec<u8>>, bool);
        impl Current for Counting {
            fn entry(&mut self, key: &[u8]) -> Result<Option<Entry>, StoreError> {
                if self.1 {
                    return Err(StoreError::Backend("the disk is gone".into()));
                }
                self.0.push(key.to_vec());
                Ok(None)
            }
        }
        let ops = [
            Op::put(p("a"), 1.into()),
            Op::put(p("b"), 1.into()),
            Op::delete(p("a")),
            Op::delete(p("c")),
            Op::delete(p("c")),
        ];
        let mut reads = Counting(Vec::new(), false);
        plan(&mut reads, &ops, Tock(0)).expect("plan");
        assert_eq!(reads.0, keys(&ops));
        assert_eq!(keys(&ops).len(), 3);
        let mut failing = Counting(Vec::new(), true);
        assert_eq!(
            plan(&mut failing, &ops, Tock(0)),
            Err(StoreError::Backend("the disk is gone".into()))
        );
    }

    /// The change log keeps the last `history` changes, and says which
    /// resumptions it can no longer serve.
    #[test]
    fn retention() {
        assert_eq!(pruned_after(Tock(5), 10, 0), None);
        assert_eq!(pruned_after(Tock(12), 5, 0), Some(7));
        assert_eq!(pruned_after(Tock(12), 5, 7), None);
        assert_eq!(check_history(Tock(7), 7), Ok(()));
        assert_eq!(
            check_history(Tock(6), 7),
            Err(StoreError::HistoryGone { oldest: 8 })
        );
    }

    /// The model: apply each op to a copy of the state, one at a time;
    /// keep the copy only if every condition held.
    type Model = BTreeMap<Path, (Value, u64)>;

    /// The state after a batch, the last tock, and each op's (changed,
    /// prev, tock).
    type Applied = (Model, u64, Vec<(bool, Option<Value>, u64)>);

    fn model_apply(model: &Model, ops: &[Op], tock: u64) -> Result<Applied, usize> {
        let mut m = model.clone();
        let mut tock = tock;
        let mut outs = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let path = op.path().clone();
            let cur = m.get(&path).cloned();
            let cond = match op {
                Op::Put { cond, .. } | Op::Delete { cond, .. } => cond,
            };
            let ok = match cond {
                Cond::Any => true,
                Cond::Absent => cur.is_none(),
                Cond::Equals(v) => cur.as_ref().is_some_and(|c| &c.0 == v),
                Cond::TockIs(t) => cur.as_ref().is_some_and(|c| c.1 == t.0),
            };
            if !ok {
                return Err(i);
            }
            let prev = cur.map(|c| c.0);
            match op {
                Op::Put {
                    value, idem: true, ..
                } if prev.as_ref() == Some(value) => {
                    outs.push((false, prev, tock));
                }
                Op::Put { value, .. } => {
                    tock += 1;
                    m.insert(path, (value.clone(), tock));
                    outs.push((true, prev, tock));
                }
                Op::Delete { .. } if prev.is_none() => outs.push((false, None, tock)),
                Op::Delete { .. } => {
                    tock += 1;
                    m.remove(&path);
                    outs.push((true, prev, tock));
                }
            }
        }
        Ok((m, tock, outs))
    }

    fn small_path() -> impl Strategy<Value = Path> {
        let elem = prop_oneof![
            Just(Elem::Nil),
            (0i128..2).prop_map(Elem::Int),
            prop_oneof![Just("a"), Just("b")].prop_map(|s| Elem::Str(s.into())),
        ];
        proptest::collection::vec(elem, 0..3).prop_map(Path::new)
    }

    fn op() -> impl Strategy<Value = Op> {
        let cond = prop_oneof![
            Just(Cond::Any),
            Just(Cond::Absent),
            (0i64..3).prop_map(|v| Cond::Equals(v.into())),
            (0u64..8).prop_map(|t| Cond::TockIs(Tock(t))),
        ];
        prop_oneof![
            (small_path(), 0i64..3, cond.clone(), any::<bool>()).prop_map(
                |(path, v, cond, idem)| Op::Put {
                    path,
                    value: v.into(),
                    cond,
                    idem
                }
            ),
            (small_path(), cond).prop_map(|(path, cond)| Op::Delete { path, cond }),
        ]
    }

    proptest! {
        /// Random batches over random states: the plan agrees with the
        /// model, and applying it gives the model's state.
        #[test]
        fn the_plan_matches_the_model(batches in proptest::collection::vec(proptest::collection::vec(op(), 0..5), 1..12)) {
            let mut db: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
            let mut model = Model::new();
            let mut tock = 0u64;
            for ops in batches {
                let got = plan(&mut db, &ops, Tock(tock));
                match model_apply(&model, &ops, tock) {
                    Err(index) => {
                        prop_assert!(matches!(got, Err(StoreError::Conflict { index: i, .. }) if i == index), "{:?}", got);
                    }
                    Ok((m, t, outs)) => {
                        let got = got.expect("the model says it applies");
                        let summary: Vec<_> = got.outcomes.iter().map(|o| (o.changed, o.prev.clone(), o.tock.0)).collect();
                        prop_assert_eq!(summary, outs);
                        prop_assert_eq!(got.last_tock(Tock(tock)), Tock(t));
                        let want: Vec<u64> = (tock + 1..=t).collect();
                        let tocks: Vec<u64> = got.changes.iter().map(|c| c.change.tock.0).collect();
                        prop_assert_eq!(tocks, want);
                        for c in got.changes {
                            prop_assert_eq!(&c.key, &c.change.path.to_key());
                            match c.change.value {
                                Some(value) => { db.insert(c.key, Entry { value, tock: c.change.tock }); }
                                None => { db.remove(&c.key); }
                            }
                        }
                        model = m;
                        tock = t;
                    }
                }
                let applied: Model = db.iter().map(|(k, e)| (Path::from_key(k).expect("key"), (e.value.clone(), e.tock.0))).collect();
                prop_assert_eq!(&applied, &model);
            }
        }
    }
}
