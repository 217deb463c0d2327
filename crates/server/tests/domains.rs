//! Domains (DistKV's meta-root, DESIGN §1 and §7.6): a path P with its
//! own users, ACLs and current method under P + (nil, …). A client that
//! logs in to P is confined to it: no path, nil element, re-rooting or
//! management action reaches outside P.

mod common;

use common::{code, domain_login, domain_server, path, req, Raw};
use keycard_auth::ClientRegistry;
use keycard_client::Client;
use keycard_proto::{Elem, Msg, Path, Value};

fn p(s: &str) -> Path {
    Path::parse(s).expect("path")
}

fn ok(v: &[Value]) -> bool {
    v.iter().all(|m| code(m).is_none())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_user_is_confined_to_its_domain() {
    let s = domain_server().await;
    let (mut joe, v) = domain_login(&s, "_test", "joe", path("org.acme")).await;
    assert!(ok(&v), "{v:?}");
    let who = joe.call(req(2, "whoami")).await;
    assert_eq!(who.get("user").and_then(Value::as_str), Some("joe"));
    assert_eq!(who.get("domain"), Some(&path("org.acme")));
    assert_eq!(who.get("root"), Some(&path("org.acme")));
    assert_eq!(who.get("super_root"), Some(&Value::from(false)));

    // Paths are the domain's.
    let v = joe
        .call(req(3, "get_value").with("path", path("data.x")))
        .await;
    assert_eq!(v.get("value"), Some(&Value::from(1)));
    // Nothing outside: the global paths resolve inside the domain.
    for outside in ["org.other.secret", "top.secret", "org.acme.data.x"] {
        let v = joe
            .call(req(4, "get_value").with("path", path(outside)))
            .await;
        assert!(v.get("value").is_none(), "{outside}: {v:?}");
    }
    // Nil elements anywhere (the domain's own reserved subtree, or a
    // crafted climb) are refused.
    for bad in [
        Path::new(vec![Elem::Nil, "auth".into()]),
        Path::new(vec!["data".into(), Elem::Nil]),
        Path::new(vec![Elem::Nil]),
    ] {
        let v = joe
            .call(req(5, "get_value").with("path", bad.to_value()))
            .await;
        assert_eq!(code(&v), Some("reserved_path"), "{bad:?}");
    }
    // `..`-like element strings are ordinary names, not a way up.
    let v = joe
        .call(
            req(6, "set_value")
                .with(
                    "path",
                    Path::new(vec!["..".into(), "top".into()]).to_value(),
                )
                .with("value", 9),
        )
        .await;
    assert!(code(&v).is_none(), "{v:?}");
    let g = Client::connect(s.addr()).await.expect("connect");
    g.login(ClientRegistry::make("root", None).expect("m").as_ref())
        .await
        .expect("root");
    assert!(g
        .get(&Path::new(vec![
            "org".into(),
            "acme".into(),
            "..".into(),
            "top".into()
        ]))
        .await
        .expect("get")
        .is_some());
    assert_eq!(
        g.get(&p("top.secret")).await.expect("get").map(|n| n.value),
        Some(Value::from(3)),
        "untouched"
    );
    // A walk of the domain shows its data only, never its reserved part.
    let items = joe
        .call_stream(req(7, "get_tree").with("path", Value::Array(vec![])))
        .await;
    let mut values: Vec<Value> = items
        .iter()
        .filter_map(|m| m.get("value").cloned())
        .collect();
    values.sort_by_key(|v| v.as_i64());
    assert_eq!(values, [Value::from(1), Value::from(9)], "{items:?}");
    let text = format!("{items:?}");
    assert!(!text.contains("secret") && !text.contains("auth"), "{text}");
    // `root` only goes deeper; re-rooting at the empty path stays.
    let v = joe
        .call(req(8, "root").with("path", Value::Array(vec![])))
        .await;
    assert!(code(&v).is_none());
    let who = joe.call(req(9, "whoami")).await;
    assert_eq!(who.get("root"), Some(&path("org.acme")));
    // Management actions: no capability in the domain, nothing anywhere.
    for action in ["get_internal", "enum_internal", "auth_list", "audit_tail"] {
        let v = joe
            .call(req(10, action).with("path", Value::Array(vec![])))
            .await;
        assert_eq!(code(&v), Some("permission_denied"), "{action}: {v:?}");
    }
    // Logging in again (to a sub-path) cannot leave either.
    let v = joe
        .call_stream(
            req(11, "auth")
                .with("typ", "_test")
                .with("ident", "joe")
                .with("chroot", Path::new(vec![Elem::Nil]).to_value()),
        )
        .await;
    assert!(v.iter().any(|m| code(m) == Some("reserved_path")), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_have_their_own_users_acls_and_keycards() {
    let s = domain_server().await;
    // The domain's ACL binds its user ro.
    let (mut ro, v) = domain_login(&s, "_test", "ro", path("org.acme")).await;
    assert!(ok(&v), "{v:?}");
    let v = ro
        .call(req(2, "get_value").with("path", path("data.x")))
        .await;
    assert_eq!(v.get("value"), Some(&Value::from(1)));
    let v = ro
        .call(
            req(3, "set_value")
                .with("path", path("data.x"))
                .with("value", 5),
        )
        .await;
    assert_eq!(code(&v), Some("permission_denied"));
    // The global server has no user ro; the domain's user is unknown there.
    let mut r = Raw::connect(s.addr()).await;
    let v = r
        .call_stream(req(1, "auth").with("typ", "_test").with("ident", "ro"))
        .await;
    assert!(v.iter().any(|m| code(m) == Some("auth_failed")), "{v:?}");
    // An unknown domain fails like a wrong user.
    let (_r, v) = domain_login(&s, "_test", "joe", path("org.nowhere")).await;
    assert!(v.iter().any(|m| code(m) == Some("auth_failed")), "{v:?}");
    let (_r, v) = domain_login(&s, "_test", "joe", path("org.other")).await;
    assert!(v.iter().any(|m| code(m) == Some("auth_failed")), "{v:?}");

    // Keycards carry a domain's user with its domain; the global joe is
    // another user.
    let (_dj, _) = domain_login(&s, "_test", "joe", path("org.acme")).await;
    let gj = Client::connect(s.addr()).await.expect("connect");
    gj.login(
        ClientRegistry::make("_test", Some("joe"))
            .expect("m")
            .as_ref(),
    )
    .await
    .expect("global joe");
    let admin = Client::connect(s.addr()).await.expect("connect");
    admin
        .login(ClientRegistry::make("root", None).expect("m").as_ref())
        .await
        .expect("root");
    let mut st = admin
        .stream(Msg::new().with("action", "keycard_list"))
        .await
        .expect("list");
    let mut users = Vec::new();
    while let Some(v) = st.next_raw().await {
        let v = v.expect("item");
        let user = v
            .get("user")
            .and_then(Value::as_str)
            .expect("user")
            .to_owned();
        let domain = v
            .get("domain")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        users.push((user, domain));
    }
    let has = |u: &str, d: &str| users.contains(&(u.to_owned(), d.to_owned()));
    assert!(has("joe", ""), "{users:?}");
    assert!(has("joe", "org.acme"), "{users:?}");
    assert!(has("ro", "org.acme"), "{users:?}");

    // The domain's root user is super-root of the domain only: its
    // internal actions see the domain's reserved subtree.
    let (mut droot, v) = domain_login(&s, "root", "*", path("org.acme")).await;
    assert!(ok(&v), "{v:?}");
    let v = droot
        .call(req(2, "get_internal").with("path", path("auth")))
        .await;
    assert_eq!(
        v.get("value")
            .and_then(|a| a.get("current"))
            .and_then(Value::as_str),
        Some("_test")
    );
    let v = droot
        .call(req(3, "get_internal").with("path", path("auth._test.user.joe")))
        .await;
    assert!(v.get("value").is_some(), "the domain's joe: {v:?}");
    // ... and cannot manage the server's keycards.
    let v = droot
        .call(req(4, "keycard_revoke").with("user", "joe"))
        .await;
    assert_eq!(code(&v), Some("permission_denied"), "{v:?}");
    let v = gj
        .get(&p("top.secret"))
        .await
        .expect("global joe unaffected");
    assert!(v.is_some());
}
