//! ACLs over the wire: DistKV's documented example, closed where DistKV
//! is open, filtered walks, edits that apply at once, and a property test
//! of the server's decisions against a reference model.

mod common;

use common::{start, TestServer};
use keycard_auth::ClientRegistry;
use keycard_client::Client;
use keycard_proto::{Elem, ErrorCode, Msg, Path, Value};
use proptest::prelude::*;

fn p(s: &str) -> Path {
    Path::parse(s).expect("path")
}

/// A super-root admin client on an open server.
async fn admin(s: &TestServer) -> Client {
    Client::connect(s.addr()).await.expect("connect")
}

async fn set_internal(c: &Client, path: Path, value: Value) {
    c.request(
        Msg::new()
            .with("action", "set_internal")
            .with_path("path", &path)
            .with("value", value),
    )
    .await
    .expect("set_internal");
}

/// Creates `_test` user NAME bound to ACL `acl`, plus a root user, and
/// makes both methods accepted (root current).
async fn bound_user(s: &TestServer, name: &str, acl: &str) -> Client {
    let a = admin(s).await;
    a.set_user(
        ClientRegistry::make("_test", Some(name))
            .expect("m")
            .as_ref(),
    )
    .await
    .expect("user");
    a.set_user(ClientRegistry::make("root", None).expect("m").as_ref())
        .await
        .expect("root");
    set_internal(
        &a,
        p(&format!("auth._test.user.{name}.acl")),
        Msg::new().with("key", acl).into_value(),
    )
    .await;
    a.request(
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", "root")
            .with("accept", Value::Array(vec!["_test".into()])),
    )
    .await
    .expect("auth on");
    let c = Client::connect(s.addr()).await.expect("connect");
    c.login(
        ClientRegistry::make("_test", Some(name))
            .expect("m")
            .as_ref(),
    )
    .await
    .expect("login");
    c
}

async fn root_client(s: &TestServer) -> Client {
    let c = Client::connect(s.addr()).await.expect("connect");
    c.login(ClientRegistry::make("root", None).expect("m").as_ref())
        .await
        .expect("root login");
    c
}

fn denied(e: keycard_client::ClientError) {
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{e}");
}

#[tokio::test]
async fn distkv_documented_example_and_closed_elsewhere() {
    let s = start().await;
    let a = admin(&s).await;
    set_internal(&a, p("acl.foo.one"), "rxnc".into()).await;
    set_internal(&a, p("acl.foo.one.two"), "rc".into()).await;
    let c = bound_user(&s, "aclix", "foo").await;
    c.set(&p("one"), 10.into()).await.expect("create one");
    c.set(&p("one.two"), 11.into())
        .await
        .expect("create one.two");
    assert_eq!(
        c.get(&p("one.two")).await.expect("read").map(|n| n.value),
        Some(11.into())
    );
    denied(
        c.set(&p("one.two.three"), 12.into())
            .await
            .expect_err("no n on one.two"),
    );
    denied(
        c.set(&p("one.two"), 13.into())
            .await
            .expect_err("no w on one.two"),
    );
    denied(c.delete(&p("one.two")).await.expect_err("no d"));
    // DistKV allows a path no entry matches; keycard does not.
    denied(c.set(&p("elsewhere"), 1.into()).await.expect_err("closed"));
    denied(c.get(&p("elsewhere")).await.expect_err("closed"));
    // The reserved root and management stay out of reach.
    let e = c
        .request(
            Msg::new()
                .with("action", "set_internal")
                .with_path("path", &p("acl.foo.#"))
                .with("value", "rwcdxen"),
        )
        .await
        .expect_err("cannot grant itself");
    denied(e);
    // test_acl names the deciding rule.
    let t = c
        .request(
            Msg::new()
                .with("action", "test_acl")
                .with_path("path", &p("one.two"))
                .with("mode", "w"),
        )
        .await
        .expect("test_acl");
    assert_eq!(t.get("access"), Some(&Value::Bool(false)));
    assert_eq!(
        t.get("rule"),
        Some(&Value::Array(vec![p("one.two").to_value(), "rc".into()]))
    );
}

#[tokio::test]
async fn walks_show_only_what_may_be_read_and_edits_apply_at_once() {
    let s = start().await;
    let a = admin(&s).await;
    for (k, v) in [
        ("t", 0),
        ("t.pub", 1),
        ("t.pub.x", 2),
        ("t.secret", 3),
        ("t.secret.y", 4),
    ] {
        a.set(&p(k), v.into()).await.expect("seed");
    }
    set_internal(&a, p("acl.ro.t"), "rxe".into()).await;
    set_internal(&a, p("acl.ro.t.pub"), "rxe".into()).await;
    set_internal(&a, p("acl.ro.t.pub.+"), "r".into()).await;
    let c = bound_user(&s, "reader", "ro").await;
    let items = c
        .get_tree(&p("t"), None, None)
        .await
        .expect("tree")
        .collect()
        .await
        .expect("items");
    let seen: Vec<String> = items.iter().map(|i| i.path.to_string()).collect();
    assert_eq!(seen, [":", "pub", "pub.x"], "secret is left out");
    let names = c
        .request(Msg::new().with("action", "enum").with_path("path", &p("t")))
        .await
        .expect("enum");
    assert_eq!(names.get("result"), Some(&Value::Array(vec!["pub".into()])));
    // A watch sees changes it may read, not the others.
    let mut w = c.watch(&p("t"), false).await.expect("watch");
    let root = root_client(&s).await;
    root.set(&p("t.secret.z"), 5.into()).await.expect("write");
    root.set(&p("t.pub.w"), 6.into()).await.expect("write");
    let got = w.next().await.expect("item").expect("ok");
    assert_eq!(
        (got.path.to_string(), got.value),
        ("pub.w".to_owned(), Some(6.into()))
    );
    // An edit applies at once, without logging in again.
    denied(c.get(&p("t.secret")).await.expect_err("not yet"));
    set_internal(&root, p("acl.ro.t.secret"), "r".into()).await;
    assert_eq!(
        c.get(&p("t.secret")).await.expect("now").map(|n| n.value),
        Some(3.into())
    );
    // delete_tree takes only what the ACL lets it delete.
    set_internal(&root, p("acl.ro.t.pub.+"), "rd".into()).await;
    let r = c
        .write(
            Msg::new()
                .with("action", "delete_tree")
                .with_path("path", &p("t.pub")),
        )
        .await
        .expect("delete_tree");
    let _ = r;
    assert!(root.get(&p("t.pub.x")).await.expect("get").is_none());
    assert!(
        root.get(&p("t.pub")).await.expect("get").is_some(),
        "t.pub itself has no d"
    );
}

#[tokio::test]
async fn a_binding_applies_at_the_next_login_and_unbound_users_are_open() {
    let s = start().await;
    let a = admin(&s).await;
    set_internal(&a, p("acl.none.nothing"), "r".into()).await;
    let c = bound_user(&s, "late", "none").await;
    denied(
        c.set(&p("x"), 1.into())
            .await
            .expect_err("bound to an ACL granting nothing here"),
    );
    // Unbinding (key "*") applies at the next login: DistKV's full access.
    let root = root_client(&s).await;
    set_internal(
        &root,
        p("auth._test.user.late.acl"),
        Msg::new().with("key", "*").into_value(),
    )
    .await;
    denied(
        c.set(&p("x"), 1.into())
            .await
            .expect_err("still the old binding"),
    );
    let again = Client::connect(s.addr()).await.expect("connect");
    again
        .login(
            ClientRegistry::make("_test", Some("late"))
                .expect("m")
                .as_ref(),
        )
        .await
        .expect("login");
    again.set(&p("x"), 1.into()).await.expect("open now");
}

// ----------------------------------------------------------- property test

/// The reference model of a check: DistKV's matching (most specific
/// entry by literal < `+` < `#` start < `#` continue, level by level), the
/// `x`/`n` rule on the way (unmatched levels pass), the mode at the node
/// (unmatched: denied).
fn model_allows(entries: &[(Vec<Elem>, String)], path: &[Elem], exists: usize, mode: char) -> bool {
    fn ranks(pat: &[Elem], path: &[Elem], in_hash: bool) -> Vec<Vec<u8>> {
        if path.is_empty() {
            return if pat.is_empty() { vec![vec![]] } else { vec![] };
        }
        let mut out = Vec::new();
        if in_hash {
            for mut r in ranks(pat, &path[1..], true) {
                r.insert(0, 3);
                out.push(r);
            }
        }
        if let Some((first, rest)) = pat.split_first() {
            let (rank, hash) = match first {
                Elem::Str(s) if s == "+" => (1, false),
                Elem::Str(s) if s == "#" => (2, true),
                e if e == &path[0] => (0, false),
                _ => return out,
            };
            for mut r in ranks(rest, &path[1..], hash) {
                r.insert(0, rank);
                out.push(r);
            }
        }
        out
    }
    let modes_at = |prefix: &[Elem]| -> Option<String> {
        let mut best: Option<(Vec<u8>, &String)> = None;
        for (pat, m) in entries {
            if let Some(r) = ranks(pat, prefix, false).into_iter().min() {
                if best.as_ref().is_none_or(|(b, _)| r < *b) {
                    best = Some((r, m));
                }
            }
        }
        best.map(|(_, m)| m.clone())
    };
    for i in 0..path.len() {
        let need = if i < exists { 'x' } else { 'n' };
        if let Some(m) = modes_at(&path[..i]) {
            if !m.contains(need) {
                return false;
            }
        }
    }
    modes_at(path).is_some_and(|m| m.contains(mode))
}

fn elem() -> impl Strategy<Value = Elem> {
    prop_oneof![Just(Elem::from("a")), Just(Elem::from("b"))]
}

fn pattern() -> impl Strategy<Value = Vec<Elem>> {
    proptest::collection::vec(
        prop_oneof![
            Just(Elem::from("a")),
            Just(Elem::from("b")),
            Just(Elem::from("+")),
            Just(Elem::from("#"))
        ],
        0..4,
    )
}

fn modes() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![Just('r'), Just('w'), Just('c'), Just('x'), Just('n')],
        0..5,
    )
    .prop_map(|v| {
        let mut v = v;
        v.sort_unstable();
        v.dedup();
        v.into_iter().collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn server_decisions_match_the_model(
        entries in proptest::collection::vec((pattern(), modes()), 1..6),
        data in proptest::collection::vec(proptest::collection::vec(elem(), 1..4), 0..4),
        probes in proptest::collection::vec(proptest::collection::vec(elem(), 1..4), 1..6),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        rt.block_on(async {
            let s = start().await;
            let a = admin(&s).await;
            let mut dedup: Vec<(Vec<Elem>, String)> = Vec::new();
            for (pat, m) in &entries {
                let mut path = p("acl.m");
                for e in pat {
                    path.push(e.clone());
                }
                set_internal(&a, path, m.as_str().into()).await;
                dedup.retain(|(q, _)| q != pat);
                dedup.push((pat.clone(), m.clone()));
            }
            for d in &data {
                a.set(&Path::new(d.clone()), 0.into()).await.expect("seed");
            }
            let c = bound_user(&s, "prop", "m").await;
            for probe in &probes {
                // How much of the probe exists (a node, or anything below).
                let exists = (0..=probe.len())
                    .rev()
                    .find(|&d| data.iter().any(|x| x.len() >= d && x[..d] == probe[..d]))
                    .unwrap_or(0);
                let path = Path::new(probe.clone());
                let want = model_allows(&dedup, probe, exists, 'r');
                let got = c.get(&path).await;
                prop_assert_eq!(got.is_ok(), want, "read {} with {:?}", path, dedup);
            }
            Ok(())
        })?;
    }
}

/// Groups (DESIGN §5): a user's own ACL and its groups' ACLs combine
/// level by level: every mode any of them gives on a node. A user with groups
/// but no own binding is confined to its groups' ACLs; `*` stays full
/// access.
#[tokio::test]
async fn groups_combine_with_the_users_own_acl() {
    let s = start().await;
    let a = admin(&s).await;
    for (path, v) in [("a.x", 1), ("b.y", 2), ("c.z", 3)] {
        a.set(&p(path), Value::from(v)).await.expect("data");
    }
    set_internal(&a, p("acl.own.a.#"), Value::from("rx")).await;
    set_internal(&a, p("acl.grp.b.#"), Value::from("rwcx")).await;
    // The group may list the root; joe's own ACL says nothing there.
    set_internal(&a, p("acl.grp"), Value::from("xe")).await;
    set_internal(
        &a,
        p("group.devs"),
        Msg::new().with("acl", "grp").into_value(),
    )
    .await;
    set_internal(&a, p("group.empty"), Msg::new().into_value()).await;
    for (name, own) in [("joe", Some("own")), ("ann", None), ("bob", Some("*"))] {
        a.set_user(
            ClientRegistry::make("_test", Some(name))
                .expect("m")
                .as_ref(),
        )
        .await
        .expect("user");
        if let Some(acl) = own {
            set_internal(
                &a,
                p(&format!("auth._test.user.{name}.acl")),
                Msg::new().with("key", acl).into_value(),
            )
            .await;
        }
        set_internal(
            &a,
            p(&format!("auth._test.user.{name}.groups")),
            Msg::new()
                .with(
                    "groups",
                    Value::Array(vec!["devs".into(), "empty".into(), "nosuch".into()]),
                )
                .into_value(),
        )
        .await;
    }
    a.set_user(ClientRegistry::make("root", None).expect("m").as_ref())
        .await
        .expect("root");
    a.request(
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", "_test")
            .with("accept", Value::Array(vec!["root".into()])),
    )
    .await
    .expect("auth on");
    let login = |name: &'static str| {
        let addr = s.addr();
        async move {
            let c = Client::connect(addr).await.expect("connect");
            c.login(
                ClientRegistry::make("_test", Some(name))
                    .expect("m")
                    .as_ref(),
            )
            .await
            .expect("login");
            c
        }
    };
    let joe = login("joe").await;
    assert!(joe.get(&p("a.x")).await.expect("own ACL").is_some());
    assert!(joe.get(&p("b.y")).await.expect("group ACL").is_some());
    joe.set(&p("b.y"), Value::from(5))
        .await
        .expect("group grants w");
    denied(
        joe.set(&p("a.x"), Value::from(5))
            .await
            .expect_err("own: read only"),
    );
    denied(joe.get(&p("c.z")).await.expect_err("neither"));
    // A walk shows what either ACL shows.
    let seen: Vec<String> = joe
        .get_tree(&Path::root(), None, None)
        .await
        .expect("walk")
        .collect()
        .await
        .expect("items")
        .into_iter()
        .filter(|i| i.value.is_some())
        .map(|i| i.path.to_string())
        .collect();
    assert_eq!(seen, ["a.x", "b.y"]);

    let ann = login("ann").await;
    assert!(ann.get(&p("b.y")).await.expect("group").is_some());
    denied(ann.get(&p("a.x")).await.expect_err("groups only"));

    let bob = login("bob").await;
    assert!(bob.get(&p("c.z")).await.expect("full access").is_some());

    // `test_acl` for another user names the deciding ACL; it needs
    // read_auth.
    let root = root_client(&s).await;
    let check = |user: &'static str, path: &'static str, mode: &'static str| {
        let root = root.clone();
        async move {
            root.request(
                Msg::new()
                    .with("action", "test_acl")
                    .with_path("path", &p(path))
                    .with("mode", mode)
                    .with("user", user),
            )
            .await
            .expect("test_acl")
        }
    };
    let v = check("joe", "b.y", "w").await;
    assert_eq!(v.get("access"), Some(&Value::from(true)));
    assert_eq!(v.get("acl").and_then(Value::as_str), Some("grp"));
    let v = check("joe", "a.x", "r").await;
    assert_eq!(v.get("acl").and_then(Value::as_str), Some("own"));
    let v = check("joe", "c.z", "r").await;
    assert_eq!(v.get("access"), Some(&Value::from(false)));
    let v = check("bob", "c.z", "w").await;
    assert_eq!(v.get("access"), Some(&Value::from(true)));
    let e = root
        .request(
            Msg::new()
                .with("action", "test_acl")
                .with_path("path", &p("a"))
                .with("user", "ghost"),
        )
        .await
        .expect_err("no such user");
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    let e = joe
        .request(
            Msg::new()
                .with("action", "test_acl")
                .with_path("path", &p("a"))
                .with("user", "ann"),
        )
        .await
        .expect_err("joe may not read auth records");
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied));
    let e = root
        .request(
            Msg::new()
                .with("action", "test_acl")
                .with_path("path", &p("a"))
                .with("user", "ann")
                .with("acl", "own"),
        )
        .await
        .expect_err("one or the other");
    assert_eq!(e.code(), Some(ErrorCode::BadRequest));
}
