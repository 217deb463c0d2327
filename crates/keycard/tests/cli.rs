//! The CLI as a new operator meets it (what a new user ran into, in
//! review): the first admin, lock-outs and their recovery, `root` accepted
//! beside a password method, the method chosen by what the user has, and
//! the commands that printed the wrong thing or nothing. Each test runs
//! the real binary, server and client, with no terminal (as a script
//! does).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keycard_client::Client;
use keycard_proto::{ErrorCode, Msg};

mod support;

use support::{cli, free_port, run_bin, Proc};

const PW: &str = "correct horse battery staple";

/// The CLI against `addr`; asserts it succeeded: (stdout, stderr).
fn ok(addr: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let (code, out, err) = cli(addr, args, env);
    assert_eq!(code, Some(0), "{args:?} failed:\n{out}\n{err}");
    (out, err)
}

/// The CLI against `addr`; asserts it failed with exit code 1: (stdout,
/// stderr).
fn fails(addr: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let (code, out, err) = cli(addr, args, env);
    assert_eq!(
        code,
        Some(1),
        "{args:?} did not fail as expected:\n{out}\n{err}"
    );
    (out, err)
}

/// `[("KEYCARD_NEW_PASSWORD", pw)]`.
fn new_pw(pw: &str) -> [(&str, &str); 1] {
    [("KEYCARD_NEW_PASSWORD", pw)]
}

/// `[("KEYCARD_PASSWORD", pw)]`.
fn pw(pw: &str) -> [(&str, &str); 1] {
    [("KEYCARD_PASSWORD", pw)]
}

/// Whether `keycard whoami` printed super_root among the capabilities.
fn holds_super_root(whoami: &str) -> bool {
    whoami
        .lines()
        .any(|l| l.starts_with("caps:") && l.contains("super_root"))
}

/// The README's order, word for word: a SCRAM user, then `auth init` with
/// that user. The user it names can administer afterwards (it holds
/// super_root), and keeps the password it was created with.
#[test]
fn auth_init_with_a_new_user_leaves_it_able_to_administer() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Proc::start(dir.path());
    let a = server.addr;
    ok(a, &["user", "add", "scram-sha-256", "alice"], &new_pw(PW));
    // (A new password is on offer: the existing user must not take it.)
    let (_, err) = ok(
        a,
        &["auth", "init", "scram-sha-256", "--new-user", "alice"],
        &new_pw("not alice's password"),
    );
    assert!(err.contains("super_root"), "says what it granted: {err}");
    let (out, _) = ok(a, &["whoami", "--user", "alice"], &pw(PW));
    assert!(holds_super_root(&out), "{out}");
    // Administering: a user, a grant, the method.
    ok(
        a,
        &["user", "add", "_test", "bob", "--user", "alice"],
        &pw(PW),
    );
    ok(
        a,
        &[
            "user",
            "add",
            "scram-sha-256",
            "carol",
            "--admin",
            "--user",
            "alice",
        ],
        &[
            ("KEYCARD_PASSWORD", PW),
            ("KEYCARD_NEW_PASSWORD", "carol's"),
        ],
    );
    ok(
        a,
        &["auth", "init", "scram-sha-256", "--user", "alice"],
        &pw(PW),
    );
    // A user auth init creates is made an administrator just the same.
    ok(
        a,
        &[
            "auth",
            "init",
            "scram-sha-256",
            "--new-user",
            "dave",
            "--user",
            "alice",
        ],
        &[("KEYCARD_PASSWORD", PW), ("KEYCARD_NEW_PASSWORD", "dave's")],
    );
    let (out, _) = ok(a, &["whoami", "--user", "dave"], &pw("dave's"));
    assert!(holds_super_root(&out), "{out}");
}

/// `auth init METHOD` without `--new-user` needs no terminal, and refuses
/// to close a server that nobody could administer afterwards, unless told.
#[test]
fn auth_init_without_a_new_user_refuses_a_lockout_and_needs_no_terminal() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Proc::start(dir.path());
    let a = server.addr;
    ok(a, &["user", "add", "scram-sha-256", "alice"], &new_pw(PW));
    let (_, err) = fails(a, &["auth", "init", "scram-sha-256"], &[]);
    assert!(!err.contains("terminal"), "it asked for a password: {err}");
    assert!(
        err.contains("super_root") && err.contains("--new-user") && err.contains("--force"),
        "says why and what to do: {err}"
    );
    let (out, _) = ok(a, &["auth", "show"], &[]);
    assert!(out.contains("open"), "nothing changed: {out}");
    // With an administrator among the method's users it goes ahead.
    ok(
        a,
        &["auth", "init", "scram-sha-256", "--new-user", "root-admin"],
        &new_pw(PW),
    );
    let (out, _) = ok(a, &["auth", "show", "--user", "root-admin"], &pw(PW));
    assert!(out.contains("current: scram-sha-256"), "{out}");
    ok(
        a,
        &["auth", "init", "scram-sha-256", "--user", "root-admin"],
        &pw(PW),
    );
}

/// The recovery path: a server that nobody can administer (made so on
/// purpose with --force) is repaired offline with `keycard admin grant
/// --data DIR`, which refuses while the server runs (the store is locked)
/// and says so.
#[test]
fn admin_grant_recovers_a_locked_out_server() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let data_arg = data.to_string_lossy().into_owned();
    let mut server = Proc::start(&data);
    let a = server.addr;
    ok(a, &["user", "add", "scram-sha-256", "alice"], &new_pw(PW));
    let (_, err) = ok(a, &["auth", "init", "scram-sha-256", "--force"], &[]);
    assert!(err.contains("warning"), "--force still warns: {err}");
    let (_, err) = fails(
        a,
        &["user", "add", "_test", "bob", "--user", "alice"],
        &pw(PW),
    );
    assert!(err.contains("write_auth"), "{err}");

    // While the server runs the store is locked: a clear refusal.
    let (code, _, err) = run_bin(&["admin", "grant", "--data", &data_arg, "alice"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("stop the server"), "{err}");
    server.kill9();
    // Mistakes change nothing.
    let (code, _, err) = run_bin(&["admin", "grant", "--data", &data_arg, "nobody"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no user") && err.contains("nobody"), "{err}");
    let (code, _, err) = run_bin(
        &["admin", "grant", "--data", &data_arg, "alice", "everything"],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    let empty = dir.path().join("empty").to_string_lossy().into_owned();
    let (code, _, err) = run_bin(&["admin", "grant", "--data", &empty, "alice"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no store"), "{err}");
    assert!(!dir.path().join("empty").exists(), "nothing created");

    let (code, out, err) = run_bin(&["admin", "grant", "--data", &data_arg, "alice"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        format!("{out}{err}").contains("granted alice (scram-sha-256) super_root"),
        "{out}{err}"
    );
    let server = Proc::start(&data);
    let a = server.addr;
    let (out, _) = ok(a, &["whoami", "--user", "alice"], &pw(PW));
    assert!(holds_super_root(&out), "{out}");
    ok(
        a,
        &["user", "add", "_test", "bob", "--user", "alice"],
        &pw(PW),
    );
    // The grant is in the audit log.
    let (out, _) = ok(a, &["audit", "--user", "alice"], &pw(PW));
    assert!(out.contains("granted"), "{out}");
}

/// `--accept root` beside a password method lets anyone in as super-root:
/// `auth init`, `auth show` and the server at start say so, and the CLI
/// never logs in as root unless asked.
#[test]
fn accepting_root_beside_a_password_method_warns_and_root_is_never_chosen_unasked() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Proc::start(dir.path());
    let a = server.addr;
    ok(a, &["set", "app.x", "1"], &[]);
    ok(a, &["user", "add", "root"], &[]);
    ok(a, &["user", "add", "scram-sha-256", "alice"], &new_pw(PW));
    let (_, err) = ok(
        a,
        &[
            "auth",
            "init",
            "scram-sha-256",
            "--new-user",
            "alice",
            "--accept",
            "root",
        ],
        &new_pw(PW),
    );
    assert!(err.contains("warning") && err.contains("root"), "{err}");
    let (out, err) = ok(a, &["auth", "show", "--user", "alice"], &pw(PW));
    assert!(
        format!("{out}{err}").contains("warning: method root is accepted"),
        "{out}{err}"
    );
    // No --user: the CLI does not fall back to root.
    let (_, err) = fails(a, &["get", "app.x"], &[]);
    assert!(err.contains("--auth root"), "says how to ask: {err}");
    let (out, _) = ok(a, &["whoami", "--auth", "root"], &[]);
    assert!(out.contains("user: *"), "{out}");
    drop(server);
    let server = Proc::start(dir.path());
    let log = server.log();
    assert!(
        log.contains("WARN") && log.contains("method root is accepted"),
        "{log}"
    );
}

/// The CLI logs in with the method the user has: SCRAM, password and
/// OPAQUE users each get in with `--user` alone, and a wrong password says
/// the login failed (not that the server could not be verified).
#[test]
fn the_login_method_follows_what_the_user_has() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Proc::start(dir.path());
    let a = server.addr;
    for (method, user) in [
        ("scram-sha-256", "alice"),
        ("password", "bob"),
        ("opaque", "carol"),
    ] {
        ok(a, &["user", "add", method, user], &new_pw(PW));
    }
    ok(
        a,
        &[
            "auth",
            "init",
            "scram-sha-256",
            "--new-user",
            "alice",
            "--accept",
            "password",
            "--accept",
            "opaque",
        ],
        &new_pw(PW),
    );
    for (method, user) in [
        ("scram-sha-256", "alice"),
        ("password", "bob"),
        ("opaque", "carol"),
    ] {
        let (out, _) = ok(a, &["whoami", "--user", user], &pw(PW));
        assert!(out.contains(&format!("method: {method}")), "{out}");
    }
    for user in ["alice", "bob", "carol", "nobody"] {
        let (_, err) = fails(a, &["whoami", "--user", user], &pw("wrong"));
        assert!(
            err.contains("login failed") && err.contains("wrong user name or password"),
            "{user}: {err}"
        );
        assert!(!err.contains("verified"), "{user}: {err}");
    }
}

/// `auth_methods`: before any login, a known user's first method among
/// those accepted; for any other name one accepted password method derived
/// from the name and the server's secret, the same every time — so the
/// answer tells a stranger nothing about which names exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_methods_answers_uniformly_before_login() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Proc::start(dir.path());
    let a = server.addr;
    for (method, user) in [
        ("scram-sha-256", "alice"),
        ("password", "bob"),
        ("opaque", "carol"),
        ("scram-sha-256", "eve"),
        ("opaque", "eve"),
        ("_anon", "frank"),
    ] {
        ok(a, &["user", "add", method, user], &new_pw(PW));
    }
    ok(
        a,
        &[
            "auth",
            "init",
            "scram-sha-256",
            "--new-user",
            "alice",
            "--accept",
            "password",
            "--accept",
            "opaque",
        ],
        &new_pw(PW),
    );
    let c = Client::connect(a).await.expect("connect");
    // Asked as any client would, before logging in.
    let ask = |c: &Client, name: &str| {
        let c = c.clone();
        let msg = Msg::new()
            .with("action", "auth_methods")
            .with("ident", name);
        async move {
            let r = c.request(msg).await.expect("auth_methods");
            match r.get("methods") {
                Some(keycard_proto::Value::Array(m)) => m
                    .iter()
                    .map(|v| v.as_str().expect("a method name").to_owned())
                    .collect::<Vec<_>>(),
                other => panic!("no methods: {other:?}"),
            }
        }
    };
    assert_eq!(ask(&c, "alice").await, ["scram-sha-256"]);
    assert_eq!(ask(&c, "bob").await, ["password"]);
    assert_eq!(ask(&c, "carol").await, ["opaque"]);
    // Several methods: the first in the server's order (one method for
    // everyone, so the answer's shape tells nothing).
    assert_eq!(ask(&c, "eve").await, ["scram-sha-256"]);
    let secret_bearing = ["scram-sha-256", "password", "opaque"];
    let mut seen = std::collections::BTreeSet::new();
    let other = Client::connect(a).await.expect("connect");
    // frank's only method is not accepted: he is answered as a stranger.
    for i in 0..48 {
        let name = match i {
            0 => "frank".to_owned(),
            _ => format!("ghost-{i}"),
        };
        let first = ask(&c, &name).await;
        assert_eq!(first.len(), 1, "{name}: {first:?}");
        assert!(secret_bearing.contains(&first[0].as_str()), "{first:?}");
        assert_eq!(ask(&other, &name).await, first, "{name}: stable");
        seen.insert(first[0].clone());
    }
    assert_eq!(seen.len(), 3, "derived from the name, not fixed: {seen:?}");
    // Long names are refused alike, known or not; data stays refused.
    let e = c
        .request(
            Msg::new()
                .with("action", "auth_methods")
                .with("ident", "x".repeat(300)),
        )
        .await
        .expect_err("too long");
    assert_eq!(e.code(), Some(ErrorCode::BadRequest));
    let e = c
        .get(&keycard_proto::Path::parse("app").expect("path"))
        .await
        .expect_err("not logged in");
    assert_eq!(e.code(), Some(ErrorCode::AuthRequired));
}

/// `user add` does not replace an existing user's password unless told
/// (`--replace`); `user passwd` changes a password: another user's as an
/// admin, or one's own.
#[test]
fn user_add_refuses_to_replace_and_user_passwd_changes_a_password() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Proc::start(dir.path());
    let a = server.addr;
    let (_, err) = ok(
        a,
        &["user", "add", "scram-sha-256", "alice"],
        &new_pw("one"),
    );
    assert!(err.contains("created"), "{err}");
    ok(a, &["user", "add", "scram-sha-256", "admin"], &new_pw(PW));
    ok(
        a,
        &["auth", "init", "scram-sha-256", "--new-user", "admin"],
        &new_pw(PW),
    );
    let admin = [("KEYCARD_USER", "admin"), ("KEYCARD_PASSWORD", PW)];
    let with = |extra: (&'static str, &'static str)| [admin[0], admin[1], extra];
    let (_, err) = fails(
        a,
        &["user", "add", "scram-sha-256", "alice"],
        &with(("KEYCARD_NEW_PASSWORD", "two")),
    );
    assert!(
        err.contains("exists") && err.contains("--replace") && err.contains("user passwd"),
        "{err}"
    );
    assert!(!err.contains("created"), "{err}");
    ok(a, &["whoami", "--user", "alice"], &pw("one"));
    fails(a, &["whoami", "--user", "alice"], &pw("two"));

    let (_, err) = ok(
        a,
        &["user", "add", "scram-sha-256", "alice", "--replace"],
        &with(("KEYCARD_NEW_PASSWORD", "two")),
    );
    assert!(err.contains("replaced"), "{err}");
    ok(a, &["whoami", "--user", "alice"], &pw("two"));

    // An admin sets another user's password.
    let (_, err) = ok(
        a,
        &["user", "passwd", "alice"],
        &with(("KEYCARD_NEW_PASSWORD", "three")),
    );
    assert!(err.contains("password of alice"), "{err}");
    ok(a, &["whoami", "--user", "alice"], &pw("three"));
    fails(a, &["whoami", "--user", "alice"], &pw("two"));
    // A user that does not exist is not created by passwd.
    let (_, err) = fails(
        a,
        &["user", "passwd", "nobody", "--method", "scram-sha-256"],
        &with(("KEYCARD_NEW_PASSWORD", "x")),
    );
    assert!(err.contains("nobody"), "{err}");
    let (out, _) = ok(a, &["user", "ls", "scram-sha-256"], &admin);
    assert!(!out.contains("nobody"), "{out}");
    // One's own password (NAME omitted: the login's user).
    ok(
        a,
        &["user", "passwd"],
        &with(("KEYCARD_NEW_PASSWORD", "admin's new")),
    );
    ok(a, &["whoami", "--user", "admin"], &pw("admin's new"));
}

/// `user add totp NAME` enrols a second factor: the server makes the
/// secret and the CLI prints its provisioning URI, on stdout alone.
#[test]
fn user_add_totp_prints_the_provisioning_uri() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Proc::start(dir.path());
    let (out, err) = ok(server.addr, &["user", "add", "totp", "alice"], &[]);
    let uri = out.trim();
    assert!(
        uri.starts_with("otpauth://totp/keycard:alice?secret=")
            && uri.ends_with("&issuer=keycard&algorithm=SHA1&digits=6&period=30"),
        "{out}"
    );
    assert!(!err.contains("otpauth"), "the secret only on stdout: {err}");
    assert!(err.contains("user alice of method totp created"), "{err}");
    // It is no way in on its own.
    for args in [
        &["auth", "init", "totp", "--force"][..],
        &["auth", "init", "totp", "--new-user", "bob"],
        &["auth", "init", "_test", "--accept", "totp", "--force"],
    ] {
        let (_, err) = fails(server.addr, args, &[]);
        assert!(err.contains("second factor"), "{args:?}: {err}");
    }
    // Nothing was created for the refused ones, and the server is open.
    let (out, _) = ok(server.addr, &["user", "ls", "totp"], &[]);
    assert_eq!(out.trim(), "alice", "{out}");
}

/// The secret of a provisioning URI (RFC 4648 base32, unpadded).
fn uri_secret(uri: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let text = uri
        .split_once("secret=")
        .and_then(|(_, rest)| rest.split('&').next())
        .expect("a secret");
    let (mut out, mut buffer, mut bits) = (Vec::new(), 0u32, 0u32);
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base32") as u32;
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

/// A user whose factor list names `totp` logs in with the CLI: the
/// password, then the code from KEYCARD_TOTP_CODE when the server asks
/// for it. A wrong code and a code used already fail as wrong
/// credentials. `user factors` sets the list, refusing what no login
/// could pass.
#[test]
fn the_cli_passes_a_totp_factor() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Proc::start(dir.path());
    let a = server.addr;
    ok(a, &["user", "add", "scram-sha-256", "alice"], &new_pw(PW));
    let (out, _) = ok(a, &["user", "add", "totp", "alice"], &[]);
    let secret = uri_secret(out.trim());
    // `user factors`: refusals (bob has totp alone), then the list.
    ok(a, &["user", "add", "totp", "bob"], &[]);
    for (args, says) in [
        (
            &["user", "factors", "alice", "totp", "--method", "totp"][..],
            "second factor",
        ),
        (
            &["user", "factors", "alice", "nosuch"],
            "unknown auth method",
        ),
        (
            &["user", "factors", "alice", "opaque"],
            "no \"opaque\" record",
        ),
        (&["user", "factors", "bob", "totp"], "no method"),
    ] {
        let (_, err) = fails(a, args, &[]);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let (out, _) = ok(a, &["user", "factors", "alice"], &[]);
    assert_eq!(out.trim(), "scram-sha-256 alone");
    ok(a, &["user", "factors", "alice", "totp"], &[]);
    let (out, _) = ok(a, &["user", "factors", "alice"], &[]);
    assert_eq!(out.trim(), "scram-sha-256 then totp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let code = keycard_auth::totp_at(keycard_auth::TotpAlgorithm::Sha1, &secret, now, 30, 6);
    let wrong = if code == "000000" { "000001" } else { "000000" };
    let login = ["whoami", "--auth", "scram-sha-256", "--user", "alice"];
    fn env(code: &str) -> [(&str, &str); 2] {
        [("KEYCARD_PASSWORD", PW), ("KEYCARD_TOTP_CODE", code)]
    }
    let (_, err) = fails(a, &login, &env(wrong));
    assert!(err.contains("login failed as alice"), "{err}");
    let (out, _) = ok(a, &login, &env(&code));
    assert!(out.contains("alice"), "{out}");
    // The code is good once.
    let (_, err) = fails(a, &login, &env(&code));
    assert!(err.contains("login failed as alice"), "{err}");
    // --help says where a script gives the code.
    let (out, _) = ok(a, &["whoami", "--help"], &[]);
    assert!(out.contains("KEYCARD_TOTP_CODE"), "{out}");
}

/// The blocks of `keycard serve --help` (one per option).
fn option_blocks(help: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        if t.starts_with('-') && line.len() - t.len() <= 6 {
            blocks.push(String::new());
        }
        if let Some(b) = blocks.last_mut() {
            b.push_str(line);
            b.push('\n');
        }
    }
    blocks
}

/// The field names serde expects in a TOML table, from the error it gives
/// for an unknown one (so new config fields are found without a list
/// here).
fn config_fields(toml: &str) -> Vec<String> {
    let e = keycard_server::Config::from_toml(toml).expect_err("an unknown field");
    let list = e.split("expected").nth(1).unwrap_or_default();
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// `keycard serve --help` lists every configuration field as a flag, each
/// with its default, as the README says.
#[test]
fn serve_help_lists_every_option_with_its_default() {
    let (code, help, err) = run_bin(&["serve", "--help"], &[]);
    assert_eq!(code, Some(0), "{err}");
    let blocks = option_blocks(&help);
    let mut flags = Vec::new();
    for (table, toml, at_least) in [
        ("", "no_such_field = 1", 6),
        ("throttle-", "[throttle]\nno_such_field = 1", 6),
        ("keycards-", "[keycards]\nno_such_field = 1", 6),
        ("tls-", "[tls]\nno_such_field = 1", 4),
        ("seal-", "[seal]\nno_such_field = 1", 1),
    ] {
        let fields = config_fields(toml);
        assert!(fields.len() >= at_least, "{fields:?}");
        for f in fields {
            if table.is_empty() && ["throttle", "keycards", "tls", "seal"].contains(&f.as_str()) {
                continue;
            }
            flags.push(format!("--{table}{}", f.replace('_', "-")));
        }
    }
    assert!(flags.len() >= 35, "{flags:?}");
    for flag in flags {
        let block = blocks
            .iter()
            .find(|b| {
                b.split(|c: char| c.is_whitespace() || c == ',')
                    .any(|w| w == flag || w.starts_with(&format!("{flag}=")))
            })
            .unwrap_or_else(|| panic!("{flag} missing from serve --help:\n{help}"));
        assert!(
            block.contains("default"),
            "{flag} does not say its default:\n{block}"
        );
    }
}

/// The commands that create users or make a method current name every
/// method, not only the secretless ones.
#[test]
fn help_names_every_method() {
    for cmd in [["auth", "init"], ["user", "add"]] {
        let (code, help, _) = run_bin(&[cmd[0], cmd[1], "--help"], &[]);
        assert_eq!(code, Some(0));
        for m in [
            "root",
            "_anon",
            "_test",
            "scram-sha-256",
            "password",
            "opaque",
        ] {
            assert!(help.contains(m), "{cmd:?} --help omits {m}:\n{help}");
        }
    }
}

/// Commands whose --user names the user they act on say --as when a login
/// needs a user name.
#[test]
fn admin_commands_ask_for_as_not_user() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Proc::start(dir.path());
    let a = server.addr;
    ok(a, &["user", "add", "scram-sha-256", "alice"], &new_pw(PW));
    ok(
        a,
        &["auth", "init", "scram-sha-256", "--new-user", "alice"],
        &new_pw(PW),
    );
    for args in [&["keycard", "ls"][..], &["token", "ls"]] {
        let (_, err) = fails(a, args, &pw(PW));
        assert!(err.contains("--as"), "{args:?}: {err}");
        assert!(!err.contains("--user"), "{args:?}: {err}");
        ok(a, &[args, &["--as", "alice"]].concat(), &pw(PW));
    }
    let (_, err) = fails(a, &["ls"], &pw(PW));
    assert!(err.contains("--user"), "{err}");
}

/// A CLI pointed at the REST port, or at something that never greets,
/// fails within seconds and says what it found.
#[test]
fn the_cli_fails_fast_where_no_msgpack_server_answers() {
    let dir = tempfile::tempdir().expect("tmp");
    let http = format!("127.0.0.1:{}", free_port());
    let _server = Proc::start_with(dir.path(), &["--http", &http]);
    let started = Instant::now();
    let (code, _, err) = run_bin(&["get", "app.x", "-s", &http], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(err.contains("HTTP"), "{err}");

    // A listener that accepts and never speaks.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let at = silent.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming() {
            held.push(s);
        }
    });
    let started = Instant::now();
    let (code, _, err) = run_bin(&["get", "app.x", "-s", &at], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    assert!(err.contains("greeting"), "{err}");
}

/// `token revoke` takes the token as `token create` printed it (its id is
/// the part that counts) and never prints the secret back.
#[test]
fn token_revoke_takes_the_token_as_printed() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Proc::start(dir.path());
    let a = server.addr;
    ok(a, &["user", "add", "_test", "bob"], &[]);
    ok(a, &["auth", "init", "root"], &[]);
    let mk = || {
        ok(a, &["token", "create", "--user", "bob", "--ttl", "1h"], &[])
            .0
            .trim()
            .to_owned()
    };
    let token = mk();
    let secret = token[37..].to_owned();
    let (out, err) = ok(a, &["token", "revoke", &token], &[]);
    assert_eq!(out.trim(), "revoked 1 keycard");
    assert!(
        !out.contains(&secret) && !err.contains(&secret),
        "{out}{err}"
    );
    // kct_ID alone works too.
    let token = mk();
    let (out, _) = ok(a, &["token", "revoke", &token[..36]], &[]);
    assert_eq!(out.trim(), "revoked 1 keycard");
    // A malformed one is a usage error that does not echo it.
    let bad = format!("kct_{}_{}", "z".repeat(32), "5".repeat(64));
    let (code, out, err) = cli(a, &["token", "revoke", &bad], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(!out.contains("5555") && !err.contains("5555"), "{err}");
}

/// Commands that change something say what they did.
#[test]
fn commands_say_what_they_did() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Proc::start(dir.path());
    let a = server.addr;
    ok(a, &["set", "app.x", "1"], &[]);
    let (out, err) = ok(a, &["rm", "app.x"], &[]);
    assert!(
        format!("{out}{err}").contains("removed app.x"),
        "{out}{err}"
    );
    let (out, err) = ok(a, &["acl", "set", "ro", "app.+", "rx"], &[]);
    assert!(
        format!("{out}{err}").contains("ACL ro: app.+ = rx"),
        "{out}{err}"
    );
    ok(a, &["user", "add", "_test", "bob"], &[]);
    let (out, err) = ok(a, &["user", "rm", "_test", "bob"], &[]);
    assert!(
        format!("{out}{err}").contains("user bob of method _test deleted"),
        "{out}{err}"
    );
}

/// The listing commands that were missing: ACLs, groups, a group's
/// members, and the audit log.
#[test]
fn acl_ls_group_ls_group_show_and_audit() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Proc::start(dir.path());
    let a = server.addr;
    ok(a, &["acl", "set", "ro", "app", "x"], &[]);
    ok(a, &["acl", "set", "rw", "other", "rwc"], &[]);
    ok(a, &["group", "set", "writers", "rw"], &[]);
    ok(a, &["group", "set", "readers", "ro"], &[]);
    ok(a, &["user", "add", "_test", "ann"], &[]);
    ok(a, &["user", "add", "_anon", "ann"], &[]);
    ok(a, &["user", "add", "_test", "ben"], &[]);
    ok(
        a,
        &["group", "member", "_test", "ann", "writers", "readers"],
        &[],
    );
    ok(a, &["group", "member", "_anon", "ann", "writers"], &[]);
    ok(a, &["group", "member", "_test", "ben", "readers"], &[]);
    let (out, _) = ok(a, &["acl", "ls"], &[]);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["ro", "rw"]);
    let (out, _) = ok(a, &["group", "ls"], &[]);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["GROUP", "ACL"],
            vec!["readers", "ro"],
            vec!["writers", "rw"]
        ]
    );
    let (out, _) = ok(a, &["group", "show", "writers"], &[]);
    assert!(out.contains("ACL: rw"), "{out}");
    assert!(
        out.contains("ann (_anon)") && out.contains("ann (_test)"),
        "{out}"
    );
    assert!(!out.contains("ben"), "{out}");
    let (_, err) = fails(a, &["group", "show", "nobody"], &[]);
    assert!(err.contains("no group"), "{err}");

    ok(a, &["auth", "init", "root"], &[]);
    ok(a, &["whoami"], &[]);
    let (out, _) = ok(a, &["audit", "-n", "3"], &[]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three events:\n{out}");
    assert!(
        lines[0].contains("TIME") && lines[0].contains("EVENT"),
        "{out}"
    );
    assert!(
        lines[3].contains("login") && lines[3].contains("success"),
        "{out}"
    );
    let (out, _) = ok(a, &["audit", "-n", "1", "--json"], &[]);
    let event: serde_json::Value = serde_json::from_str(out.trim()).expect("a JSON line");
    assert_eq!(event["event"], "login");
}

/// `acl check USER` finds the user's method itself when the user has one.
#[test]
fn acl_check_finds_the_users_method() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Proc::start(dir.path());
    let a = server.addr;
    ok(a, &["set", "app.limits", "1"], &[]);
    ok(a, &["user", "add", "_test", "alice"], &[]);
    ok(a, &["acl", "set", "ro", "app", "xe"], &[]);
    ok(a, &["acl", "set", "ro", "app.+", "rx"], &[]);
    ok(a, &["acl", "bind", "_test", "alice", "ro"], &[]);
    ok(a, &["auth", "init", "root"], &[]);
    let (out, _) = ok(a, &["acl", "check", "alice", "app.limits", "r"], &[]);
    assert_eq!(out.trim(), "allowed: entry app.+ = rx of ACL ro");
    // Two methods: it asks which.
    ok(a, &["user", "add", "_anon", "alice"], &[]);
    let (_, err) = fails(a, &["acl", "check", "alice", "app.limits", "r"], &[]);
    assert!(err.contains("--method"), "{err}");
    let (out, _) = ok(
        a,
        &[
            "acl",
            "check",
            "alice",
            "app.limits",
            "r",
            "--method",
            "_test",
        ],
        &[],
    );
    assert_eq!(out.trim(), "allowed: entry app.+ = rx of ACL ro");
}

/// The client library's own choice (`login_as_needed`) asks the server
/// too: given a password, it logs a SCRAM user in with SCRAM although
/// OPAQUE is stronger and accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_logs_in_with_the_users_method() {
    use keycard_auth::{ClientRegistry, Password};
    let dir = tempfile::tempdir().expect("tmp");
    let server = Proc::start(dir.path());
    let a = server.addr;
    ok(a, &["user", "add", "scram-sha-256", "alice"], &new_pw(PW));
    ok(a, &["user", "add", "opaque", "carol"], &new_pw(PW));
    ok(
        a,
        &[
            "auth",
            "init",
            "scram-sha-256",
            "--new-user",
            "alice",
            "--accept",
            "opaque",
        ],
        &new_pw(PW),
    );
    for (user, method) in [("alice", "scram-sha-256"), ("carol", "opaque")] {
        let c = Client::connect(a).await.expect("connect");
        let make = |m: &str| {
            ClientRegistry::make_with_password(m, Some(user), Some(Password::new(PW))).expect("m")
        };
        let (scram, opaque) = (make("scram-sha-256"), make("opaque"));
        let used = c
            .login_as_needed(&[scram.as_ref(), opaque.as_ref()])
            .await
            .expect("login");
        assert_eq!(used, Some(method));
    }
}

/// Names and values from the server reach an admin's terminal escaped: a
/// user name (or a stored string) carrying an escape sequence or a line
/// break cannot retitle the terminal, recolour it or forge an output
/// line.
#[test]
fn server_strings_reach_the_terminal_escaped() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Proc::start(dir.path());
    let a = server.addr;
    let evil = "eve\u{1b}]0;pwned\u{7}\nroot";
    ok(a, &["user", "add", "_anon", evil], &[]);
    ok(a, &["set", "app.note", evil], &[]);
    ok(a, &["group", "set", "g", "ro"], &[]);
    ok(a, &["group", "member", "_anon", evil, "g"], &[]);
    let listings = [
        vec!["group", "show", "g"],
        vec!["get", "app.note"],
        vec!["ls", "app"],
        vec!["user", "show", evil],
        vec!["audit"],
    ];
    for args in listings {
        let (out, err) = ok(a, &args, &[]);
        let all = format!("{out}{err}");
        assert!(
            !all.contains('\u{1b}') && !all.contains('\u{7}'),
            "{args:?}: {all:?}"
        );
        assert!(
            !all.lines().any(|l| l.trim_start().starts_with("root")),
            "{args:?} printed a line of the name's own: {all:?}"
        );
    }
}

/// `keycard --version` names the release and the git commit it was built
/// from (at least 7 hex digits), and so does the server's start.
#[test]
fn the_version_names_the_git_commit() {
    let out = support::bin_command(&["--version"], &[])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let commit = text
        .split("(commit ")
        .nth(1)
        .and_then(|t| t.split(')').next())
        .unwrap_or_else(|| panic!("no commit in {text:?}"));
    let hex = commit.trim_end_matches("-dirty");
    assert!(
        hex.len() >= 7 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{text:?}"
    );
    assert!(
        text.starts_with(&format!("keycard {}", env!("CARGO_PKG_VERSION"))),
        "{text:?}"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let server = Proc::start(dir.path());
    assert!(
        server.log().contains(&format!("commit=\"{commit}\"")),
        "{}",
        server.log()
    );
}

/// `keycard completions SHELL` prints a script the shell accepts (bash's
/// syntax check), naming every subcommand; `keycard man` a manual page.
#[test]
fn completions_and_the_manual_page() {
    let run = |args: &[&str]| {
        let out = support::bin_command(args, &[]).output().expect("runs");
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let bash = run(&["completions", "bash"]);
    for sub in [
        "serve",
        "user",
        "keycard",
        "token",
        "seal",
        "dump",
        "restore",
        "completions",
    ] {
        assert!(
            bash.contains(sub),
            "{sub} missing from the bash completions"
        );
    }
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("keycard.bash");
    std::fs::write(&file, &bash).expect("write");
    let checked = std::process::Command::new("bash")
        .arg("-n")
        .arg(&file)
        .status()
        .expect("bash");
    assert!(checked.success(), "bash refuses the completion script");
    assert!(run(&["completions", "zsh"]).starts_with("#compdef keycard"));
    assert!(run(&["completions", "fish"]).contains("complete -c keycard"));
    let man = run(&["man"]);
    assert!(
        man.contains(".TH keycard 1"),
        "{}",
        &man[..man.len().min(200)]
    );
    assert!(man.contains("serve"));
    let bad = support::bin_command(&["completions", "tcsh"], &[])
        .output()
        .expect("runs");
    assert!(!bad.status.success());
}
