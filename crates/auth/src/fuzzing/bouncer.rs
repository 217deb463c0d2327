//! `bouncer`: random sequences of operations on the keycard table
//! (begin, challenge, authenticate, refuse, keep-alive, check, revoke,
//! remove, list and revoke by filter, reap at a time passed in) against a
//! model that keeps every keycard in a plain map and states each rule of
//! `bouncer.rs`'s docs directly. After every operation the two hold the
//! same keycards, field for field.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Bytes;
use crate::bouncer::{BouncerError, Filter, Keycard, KeycardId, Lifetime, Policy, State, Table};

const METHODS: [&str; 3] = ["scram-sha-256", "password", "token"];
const USERS: [&str; 4] = ["joe", "ann", "", "a\u{0}b"];
const DOMAINS: [&str; 3] = ["", "d1", "d2"];
const TICK_MS: u64 = 100;
const WHEEL_SLACK: usize = 64;

/// Whole seconds, as the table keeps its informative times.
fn secs_ms(ms: u64) -> u64 {
    (ms / 1000).min(u64::from(u32::MAX)) * 1000
}

struct Card {
    shown: Keycard,
    /// Seconds-granular duration of a keep-alive, in ms.
    step_ms: u64,
}

#[derive(Default)]
struct Model {
    cards: BTreeMap<KeycardId, Card>,
}

impl Model {
    fn drop_card(&mut self, id: KeycardId, state: State) -> Option<Keycard> {
        self.cards.remove(&id).map(|c| Keycard { state, ..c.shown })
    }

    fn matches(c: &Keycard, f: &Filter) -> bool {
        f.requester.is_none_or(|r| r == c.requester)
            && f.user
                .as_deref()
                .is_none_or(|u| *c.user == *u && *c.domain == *f.domain.as_deref().unwrap_or(""))
            && f.domain.as_deref().is_none_or(|d| *c.domain == *d)
            && f.method.as_deref().is_none_or(|m| *c.method == *m)
            && f.parent.is_none_or(|p| c.parent == Some(p))
    }
}

fn addr(b: &mut Bytes<'_>) -> (Option<IpAddr>, Option<IpAddr>) {
    let v4 = Ipv4Addr::new(10, 0, 0, b.byte());
    match b.below(4) {
        0 => (None, None),
        1 => (Some(IpAddr::V4(v4)), Some(IpAddr::V4(v4))),
        2 => {
            let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(b.byte()));
            (Some(IpAddr::V6(v6)), Some(IpAddr::V6(v6)))
        }
        // A v4-mapped IPv6 address is shown as the IPv4 address.
        _ => (Some(IpAddr::V6(v4.to_ipv6_mapped())), Some(IpAddr::V4(v4))),
    }
}

fn filter(b: &mut Bytes<'_>, ids: &[KeycardId]) -> Filter {
    let bits = b.byte();
    let mut pick = |bit: u8, n: usize| (bits & bit != 0).then(|| b.below(n));
    Filter {
        user: pick(1, USERS.len() + 1).map(|i| USERS.get(i).unwrap_or(&"zed").to_string()),
        domain: pick(2, DOMAINS.len() + 1).map(|i| DOMAINS.get(i).unwrap_or(&"d9").to_string()),
        method: pick(4, METHODS.len() + 1).map(|i| METHODS.get(i).unwrap_or(&"x").to_string()),
        requester: pick(8, 4).map(|r| r as u64),
        parent: pick(16, ids.len() + 1).map(|i| ids.get(i).copied().unwrap_or(KeycardId([0; 16]))),
    }
}

fn sorted(mut cards: Vec<Keycard>) -> Vec<Keycard> {
    cards.sort_by_key(|c| c.id);
    cards
}

/// The target: a policy, then operations until the input ends.
pub fn fuzz_bouncer(data: &[u8]) {
    let mut b = Bytes::new(data);
    let policy = Policy {
        challenge_window_ms: u64::from(b.byte()) * 10,
        duration_ms: 10_000,
        max_lifetime_ms: 60_000,
        max_total: 1 + b.below(12),
        max_per_user: 1 + b.below(4) as u32,
    };
    let mut table = Table::new(policy.clone());
    let mut model = Model::default();
    // Every id ever issued, and one never issued.
    let mut ids: Vec<KeycardId> = Vec::new();
    let stranger = KeycardId::random();
    let mut now: u64 = 1_700_000_000_000 + u64::from(b.u16());
    let mut peak = 0usize;

    while !b.is_empty() {
        let pick_id = |b: &mut Bytes<'_>, ids: &[KeycardId]| {
            ids.get(b.below(ids.len() + 1)).copied().unwrap_or(stranger)
        };
        match b.below(15) {
            0 => now = now.saturating_add(u64::from(b.u16())),
            1 => now = now.saturating_add(u64::from(b.u16()) * 1000),
            2 => now = now.saturating_sub(u64::from(b.u16())),
            // Any time at all, the far future included.
            13 => now = b.u64(),
            3 => {
                let method = METHODS[b.below(METHODS.len())];
                let user = USERS[b.below(USERS.len())];
                let domain = DOMAINS[b.below(DOMAINS.len())];
                let requester = b.below(4) as u64;
                let (given, shown) = addr(&mut b);
                let got = table.begin(now, method, user, domain, requester, given);
                if model.cards.len() >= policy.max_total {
                    assert_eq!(got, Err(BouncerError::Full(policy.max_total)));
                } else {
                    let id = got.expect("begin");
                    assert!(!ids.contains(&id), "a new keycard reuses an id");
                    ids.push(id);
                    let deadline = now.saturating_add(policy.challenge_window_ms);
                    let shown = Keycard {
                        id,
                        method: method.into(),
                        user: user.into(),
                        domain: domain.into(),
                        requester,
                        addr: shown,
                        parent: None,
                        state: State::Requesting,
                        issued_at: secs_ms(now),
                        expires_at: deadline,
                        max_until: deadline,
                        last_keepalive: 0,
                    };
                    model.cards.insert(id, Card { shown, step_ms: 0 });
                }
            }
            4 => {
                let id = pick_id(&mut b, &ids);
                let got = table.challenged(id, now);
                let want = match model.cards.get_mut(&id) {
                    None => Err(BouncerError::Unknown),
                    Some(c) if !c.shown.state.pending() => {
                        Err(BouncerError::WrongState(c.shown.state))
                    }
                    Some(c) if now > c.shown.expires_at => {
                        model.cards.remove(&id);
                        Err(BouncerError::Expired)
                    }
                    Some(c) => {
                        c.shown.state = State::Challenged;
                        Ok(c.shown.expires_at)
                    }
                };
                assert_eq!(got, want, "challenged");
            }
            5 => {
                let id = pick_id(&mut b, &ids);
                let user = USERS[b.below(USERS.len())];
                let domain = DOMAINS[b.below(DOMAINS.len())];
                let life = Lifetime {
                    duration_ms: u64::from(b.u16()) * 10,
                    max_lifetime_ms: u64::from(b.u16()) * 10,
                };
                let parent = (b.byte() & 1 == 1).then(|| pick_id(&mut b, &ids));
                let got = table.authenticate(id, now, user, domain, life, parent);
                let held = model
                    .cards
                    .values()
                    .filter(|c| {
                        c.shown.state == State::Authenticated
                            && *c.shown.user == *user
                            && *c.shown.domain == *domain
                    })
                    .count();
                let want = match model.cards.get_mut(&id) {
                    None => Err(BouncerError::Unknown),
                    Some(c) if !c.shown.state.pending() => {
                        Err(BouncerError::WrongState(c.shown.state))
                    }
                    Some(c) if now > c.shown.expires_at => {
                        model.cards.remove(&id);
                        Err(BouncerError::Expired)
                    }
                    Some(_) if held >= policy.max_per_user as usize => {
                        model.cards.remove(&id);
                        Err(BouncerError::UserFull(policy.max_per_user))
                    }
                    Some(c) => {
                        let max_until = now.saturating_add(life.max_lifetime_ms);
                        c.shown = Keycard {
                            user: user.into(),
                            domain: domain.into(),
                            parent,
                            state: State::Authenticated,
                            issued_at: secs_ms(now),
                            expires_at: now.saturating_add(life.duration_ms).min(max_until),
                            max_until,
                            ..c.shown.clone()
                        };
                        c.step_ms = secs_ms(life.duration_ms);
                        Ok(c.shown.clone())
                    }
                };
                assert_eq!(got, want, "authenticate");
            }
            6 => {
                let id = pick_id(&mut b, &ids);
                assert_eq!(table.refuse(id), model.cards.remove(&id).is_some());
            }
            7 => {
                let id = pick_id(&mut b, &ids);
                let requester = b.below(4) as u64;
                let ttl = (b.byte() & 1 == 1).then(|| u64::from(b.u16()) * 10);
                let got = table.keep_alive(id, requester, now, ttl);
                let want = match model.cards.get_mut(&id) {
                    Some(c) if c.shown.requester == requester => {
                        if c.shown.state != State::Authenticated {
                            Err(BouncerError::WrongState(c.shown.state))
                        } else if now >= c.shown.expires_at {
                            Err(BouncerError::Expired)
                        } else {
                            let step = ttl.map_or(c.step_ms, |t| t.min(c.step_ms));
                            let new = now
                                .saturating_add(step)
                                .min(c.shown.max_until)
                                .max(c.shown.expires_at);
                            c.shown.expires_at = new;
                            c.shown.last_keepalive = secs_ms(now);
                            Ok(new)
                        }
                    }
                    _ => Err(BouncerError::Unknown),
                };
                assert_eq!(got, want, "keep_alive");
            }
            8 => {
                let id = pick_id(&mut b, &ids);
                let want = match model.cards.get(&id) {
                    None => Err(BouncerError::Unknown),
                    Some(c) if c.shown.state != State::Authenticated => {
                        Err(BouncerError::WrongState(c.shown.state))
                    }
                    Some(c) if now >= c.shown.expires_at => Err(BouncerError::Expired),
                    Some(c) => Ok(c.shown.expires_at),
                };
                assert_eq!(table.check(id, now), want, "check");
            }
            9 => {
                let id = pick_id(&mut b, &ids);
                assert_eq!(table.revoke(id), model.drop_card(id, State::Revoked));
            }
            10 => {
                let id = pick_id(&mut b, &ids);
                let requester = b.below(4) as u64;
                let want = match model.cards.get(&id) {
                    Some(c) if c.shown.requester == requester => {
                        model.drop_card(id, State::Removed)
                    }
                    _ => None,
                };
                assert_eq!(table.remove(id, requester), want, "remove");
            }
            11 => {
                let f = filter(&mut b, &ids);
                let after = (b.byte() & 1 == 1).then(|| pick_id(&mut b, &ids));
                let limit = b.below(8);
                let want: Vec<Keycard> = model
                    .cards
                    .values()
                    .map(|c| c.shown.clone())
                    .filter(|c| after.is_none_or(|a| c.id > a) && Model::matches(c, &f))
                    .take(limit)
                    .collect();
                assert_eq!(table.list(&f, after, limit), want, "list {f:?}");
            }
            12 => {
                let f = filter(&mut b, &ids);
                let hit: Vec<KeycardId> = model
                    .cards
                    .values()
                    .filter(|c| Model::matches(&c.shown, &f))
                    .map(|c| c.shown.id)
                    .collect();
                let want: Vec<Keycard> = hit
                    .into_iter()
                    .filter_map(|id| model.drop_card(id, State::Revoked))
                    .collect();
                assert_eq!(sorted(table.revoke_where(&f)), want, "revoke_where {f:?}");
            }
            _ => {
                // Due: the keycards whose expiry bucket (100 ms, rounded
                // up) has come. At most `max` go, as `expired`; fewer only
                // when every due one went. Any that goes has run out (one
                // kept alive since its older bucket came may go with it).
                let max = b.below(6);
                let due = now / TICK_MS;
                let must: Vec<KeycardId> = model
                    .cards
                    .values()
                    .filter(|c| c.shown.expires_at.div_ceil(TICK_MS) <= due)
                    .map(|c| c.shown.id)
                    .collect();
                let got = sorted(table.reap(now, max));
                assert!(got.len() <= max, "reap at {now}");
                for c in &got {
                    assert!(c.expires_at <= now, "reaped before it ran out: {c:?}");
                    assert_eq!(Some(c.clone()), model.drop_card(c.id, State::Expired));
                }
                if got.len() < max {
                    for id in must {
                        assert!(got.iter().any(|c| c.id == id), "{id} is due at {now}");
                    }
                }
            }
        }

        // The same keycards, field for field.
        peak = peak.max(model.cards.len());
        assert_eq!(table.len(), model.cards.len());
        assert_eq!(table.is_empty(), model.cards.is_empty());
        let pending = model
            .cards
            .values()
            .filter(|c| c.shown.state.pending())
            .count();
        assert_eq!(table.pending(), pending);
        for id in ids.iter().chain([&stranger]) {
            let want = model.cards.get(id).map(|c| c.shown.clone());
            assert_eq!(table.show(*id), want);
            let deadline = want.filter(|c| c.state.pending()).map(|c| c.expires_at);
            assert_eq!(table.deadline(*id), deadline);
        }
        // The expiry wheel stays within a multiple of the table's size.
        assert!(
            table.queued() <= 2 * peak + WHEEL_SLACK,
            "{} queued",
            table.queued()
        );
    }
}
