//! keycard's `totp` against PyPI's `pyotp`: pyotp reads the provisioning
//! URI keycard answers an enrolment with, computes the same codes, and
//! keycard accepts pyotp's. Needs the venv scripts/test.sh creates
//! (KEYCARD_DISTKV_PYTHON points at its python); KEYCARD_SKIP_PEERS=1
//! skips it, as it skips the other peer tests.

use std::process::Command;

use keycard_auth::{totp_at, LoginCtx, Method, SecretKey, Step, Totp, TotpAlgorithm, TOTP};
use keycard_proto::{Msg, Value};

/// Enrols `ident` with `options`, runs pyotp on the URI, and logs in with
/// pyotp's codes.
fn against_pyotp(python: &str, ident: &str, options: Msg, algorithm: TotpAlgorithm) {
    let method = Totp::new(SecretKey::new([3; 32]));
    assert_eq!(method.name(), TOTP);
    let kind = &method.kinds()[0];
    let ctx = LoginCtx::default();
    let request = Msg::new().with("data", options).into_value();
    let Step::Done(record) = method.set_record(&ctx, kind, ident, &request) else {
        panic!("enrolment")
    };
    let reply = method.set_reply(kind, ident, &record).into_value();
    let uri = reply.get("uri").and_then(Value::as_str).expect("uri");
    let secret = record
        .get("secret")
        .and_then(Value::as_bin)
        .expect("secret");
    let digits = record
        .get("digits")
        .and_then(Value::as_u64)
        .and_then(|d| u32::try_from(d).ok())
        .expect("digits");
    let times: [u64; 5] = [
        59,
        1_111_111_109,
        1_234_567_890,
        1_800_000_000,
        2_000_000_000,
    ];
    let pairs: Vec<String> = times
        .iter()
        .map(|t| format!("{t}:{}", totp_at(algorithm, secret, *t, 30, digits)))
        .collect();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/compat/totp_pyotp.py"
    );
    let out = Command::new(python)
        .arg(script)
        .arg(uri)
        .args(&pairs)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "pyotp on {uri}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("digits={digits}")), "{stdout}");
    // keycard accepts each of pyotp's codes, at its time.
    let mut accepted = 0;
    for line in stdout.lines() {
        let Some((t, code)) = line.split_once(':') else {
            continue;
        };
        let t: u64 = t.parse().expect("time");
        assert_eq!(totp_at(algorithm, secret, t, 30, digits), code, "at {t}");
        let ctx = LoginCtx {
            channel_key: None,
            now_ms: t * 1000,
            ..LoginCtx::default()
        };
        let login = Msg::new().with("data", code).into_value();
        match method.login(&ctx, ident, &login, Some(&record)) {
            Step::Done(v) => assert_eq!(v.user, ident),
            other => panic!("pyotp's code {code} at {t} refused: {other:?}"),
        }
        accepted += 1;
    }
    assert_eq!(accepted, times.len());
}

#[test]
fn pyotp_and_keycard_agree() {
    if std::env::var_os("KEYCARD_SKIP_PEERS").is_some() {
        eprintln!("SKIPPED: KEYCARD_SKIP_PEERS is set");
        return;
    }
    let python = std::env::var("KEYCARD_DISTKV_PYTHON").expect(
        "KEYCARD_DISTKV_PYTHON must point at a python with pyotp installed: run the tests with \
         scripts/test.sh (it creates the venv), or set KEYCARD_SKIP_PEERS=1 to skip",
    );
    against_pyotp(&python, "joe@example.org", Msg::new(), TotpAlgorithm::Sha1);
    against_pyotp(
        &python,
        "ann",
        Msg::new().with("digits", 8).with("algorithm", "SHA256"),
        TotpAlgorithm::Sha256,
    );
}
