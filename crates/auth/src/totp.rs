//! `totp`: time-based one-time codes (RFC 6238 over RFC 4226's HOTP), a
//! second factor (DESIGN §2.3).
//!
//! Enrolment is an `auth_set` whose data asks at most for the code's
//! digits and hash: the server draws the secret from the operating
//! system's CSPRNG, stores it in the record and answers with the
//! provisioning URI (`otpauth://totp/…`) an authenticator app reads.
//! `auth_get` never shows the secret. The secret sits in the record as
//! bytes for now; sealing it at rest under a server key is planned (it is
//! the one secret a record holds that logs in by itself, as a second
//! factor only).
//!
//! A login sends the code as text in `data`. It is accepted for the time
//! step of `LoginCtx::now_ms` and one step either side (clock drift and a
//! code typed as it changed), never for a step at or before the record's
//! `last_step`: the verdict's `write_back` carries the record with the
//! step it used, so a code (or an earlier one) is never accepted twice.
//! The method never reads a clock. An unknown user runs the same
//! computation against a record derived from the server's mock key and
//! fails as a wrong code does.

use hmac::{Hmac, Mac};
use keycard_proto::{Msg, Value};
use rand::RngCore;
use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroizing;

use crate::exchange::{AuthError, ClientLogin, LoginCtx, Step, Verdict};
use crate::schema::{Field, FieldType, Kind};
use crate::secret::{Password, SecretKey};
use crate::{ClientMethod, Method};

/// The method's name on the wire.
pub const TOTP: &str = "totp";

/// The issuer the provisioning URI names (what an authenticator app shows
/// above the account).
pub const TOTP_ISSUER: &str = "keycard";

/// RFC 6238's default time step, in seconds.
const PERIOD: u64 = 30;

/// The codes a record may use: RFC 4226 allows 6 to 8; authenticator apps
/// read 6 and 8.
const DIGITS: [u32; 2] = [6, 8];

/// Steps either side of now that are still accepted.
const WINDOW: u64 = 1;

/// `totp`'s user kind: what `auth_set` may ask for. The record adds the
/// secret (made by the server), the period and the last step used.
pub const TOTP_USER: Kind = Kind {
    name: "user",
    fields: &[
        Field {
            name: "digits",
            ty: FieldType::Int,
            required: false,
            doc: "digits per code: 6 (the default) or 8",
        },
        Field {
            name: "algorithm",
            ty: FieldType::Str,
            required: false,
            doc: "the HMAC's hash: SHA1 (the default, what every authenticator reads) or SHA256",
        },
    ],
};

/// What `totp` declares (DESIGN §2).
pub(crate) static INFO: crate::MethodInfo = crate::MethodInfo {
    name: TOTP,
    kinds: &[TOTP_USER],
    payload: crate::Payload::Text,
    rest: false,
    rest_set: crate::RestSet::No,
    needs_password: false,
    strength: 0,
    super_root: false,
    fixed_user: None,
    second_factor: true,
    suite: None,
    plaintext_secret: false,
    plus: None,
    client_cert: false,
};

/// `totp`'s registration.
pub(crate) static ENTRY: crate::Entry = crate::Entry {
    info: &INFO,
    server: |s| Ok(std::sync::Arc::new(Totp::new(s.mock_key.clone()))),
    client: |user, code| {
        Ok(Box::new(TotpClient {
            user: crate::exchange::need_user(TOTP, user)?,
            code,
        }))
    },
};

/// The HMAC a record's codes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA-1, RFC 6238's default and every authenticator's.
    Sha1,
    /// HMAC-SHA-256.
    Sha256,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
        }
    }

    fn parse(name: &str) -> Option<Algorithm> {
        match name {
            "SHA1" => Some(Algorithm::Sha1),
            "SHA256" => Some(Algorithm::Sha256),
            _ => None,
        }
    }

    /// The secret's length for this hash (RFC 4226 asks for 160 bits at
    /// least; RFC 6238's vectors use the hash's output size).
    fn secret_len(self) -> usize {
        match self {
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
        }
    }
}

/// RFC 4226's HOTP value of `counter`, as `digits` decimal digits.
pub fn hotp(algorithm: Algorithm, secret: &[u8], counter: u64, digits: u32) -> String {
    let msg = counter.to_be_bytes();
    let mac: Zeroizing<Vec<u8>> = Zeroizing::new(match algorithm {
        Algorithm::Sha1 => mac_of::<Hmac<sha1::Sha1>>(secret, &msg),
        Algorithm::Sha256 => mac_of::<Hmac<sha2::Sha256>>(secret, &msg),
    });
    // Dynamic truncation (RFC 4226 §5.3): the low nibble of the last byte
    // picks four bytes; the top bit is dropped.
    let offset = usize::from(mac.last().copied().unwrap_or(0) & 0x0f);
    let word = mac
        .get(offset..offset + 4)
        .map_or(0, |b| u32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]]));
    let modulus = 10u32.pow(digits.min(9));
    format!("{:0width$}", word % modulus, width = digits as usize)
}

fn mac_of<M: Mac + hmac::digest::KeyInit>(key: &[u8], msg: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: this cannot fail.
    match <M as hmac::digest::KeyInit>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(msg);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// RFC 6238's code for Unix time `unix_secs` (step `unix_secs / period`).
pub fn totp_at(
    algorithm: Algorithm,
    secret: &[u8],
    unix_secs: u64,
    period: u64,
    digits: u32,
) -> String {
    hotp(algorithm, secret, unix_secs / period.max(1), digits)
}

/// RFC 4648 base32 without padding, as provisioning URIs carry secrets.
pub fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in data {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A stored `totp` record, read.
struct Record {
    secret: Zeroizing<Vec<u8>>,
    algorithm: Algorithm,
    digits: u32,
    period: u64,
    last_step: Option<u64>,
}

impl Record {
    fn parse(v: &Value) -> Option<Record> {
        let secret = match v.get("secret")? {
            Value::Bin(b) if b.len() >= 16 && b.len() <= 64 => Zeroizing::new(b.clone()),
            _ => return None,
        };
        let algorithm = Algorithm::parse(v.get("algorithm")?.as_str()?)?;
        let digits = u32::try_from(v.get("digits")?.as_u64()?).ok()?;
        let period = v.get("period")?.as_u64()?;
        if !DIGITS.contains(&digits) || !(1..=3600).contains(&period) {
            return None;
        }
        let last_step = match v.get("last_step") {
            None | Some(Value::Nil) => None,
            Some(s) => Some(s.as_u64()?),
        };
        Some(Record {
            secret,
            algorithm,
            digits,
            period,
            last_step,
        })
    }

    fn to_value(&self) -> Value {
        let mut m = Msg::new()
            .with("secret", self.secret.to_vec())
            .with("algorithm", self.algorithm.name())
            .with("digits", self.digits)
            .with("period", self.period);
        if let Some(s) = self.last_step {
            m.set("last_step", s);
        }
        m.into_value()
    }

    fn uri(&self, ident: &str) -> String {
        format!(
            "otpauth://totp/{issuer}:{user}?secret={secret}&issuer={issuer}&algorithm={alg}&digits={digits}&period={period}",
            issuer = percent(TOTP_ISSUER),
            user = percent(ident),
            secret = base32(&self.secret),
            alg = self.algorithm.name(),
            digits = self.digits,
            period = self.period,
        )
    }
}

/// Server half of `totp`.
pub struct Totp {
    mock_key: SecretKey,
}

impl Totp {
    /// The method, answering unknown users with records derived from
    /// `mock_key`.
    pub fn new(mock_key: SecretKey) -> Totp {
        Totp { mock_key }
    }

    /// The record an unknown user is checked against: a secret no one
    /// knows, stable per name, with the default shape.
    fn mock(&self, ident: &str) -> Record {
        let secret = mac_of::<Hmac<sha2::Sha256>>(
            self.mock_key.expose(),
            &[b"keycard totp mock\0".as_slice(), ident.as_bytes()].concat(),
        );
        Record {
            secret: Zeroizing::new(secret.get(..20).unwrap_or_default().to_vec()),
            algorithm: Algorithm::Sha1,
            digits: DIGITS[0],
            period: PERIOD,
            last_step: None,
        }
    }
}

/// The code a login carries: digits only, 6 or 8 of them. Checked before
/// any record is, so the error says nothing about the user.
fn parse_code(request: &Value) -> Result<&str, AuthError> {
    let code = match request.get("data") {
        Some(Value::Str(s)) => s.as_str(),
        Some(_) => {
            return Err(AuthError::Malformed(
                "the code in 'data' must be text".into(),
            ))
        }
        None => return Err(AuthError::Malformed("missing the code in 'data'".into())),
    };
    if code.len() > 8 || !DIGITS.contains(&(code.len() as u32)) {
        return Err(AuthError::Malformed(
            "a one-time code has 6 or 8 digits".into(),
        ));
    }
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthError::Malformed(
            "a one-time code has digits only".into(),
        ));
    }
    Ok(code)
}

/// What `auth_set` asks for: the digits and the hash, else the defaults.
fn parse_options(request: &Value) -> Result<(Algorithm, u32), AuthError> {
    let mut algorithm = Algorithm::Sha1;
    let mut digits = DIGITS[0];
    let fields = match request.get("data") {
        None | Some(Value::Nil) => return Ok((algorithm, digits)),
        Some(Value::Map(m)) => m,
        Some(_) => {
            return Err(AuthError::Malformed(
                "totp's data is a map of {digits, algorithm}, or nothing".into(),
            ))
        }
    };
    for (k, v) in fields {
        match (k.as_str(), v) {
            (Some("digits"), v) => {
                digits = v
                    .as_u64()
                    .and_then(|d| u32::try_from(d).ok())
                    .filter(|d| DIGITS.contains(d))
                    .ok_or_else(|| AuthError::Malformed("digits must be 6 or 8".into()))?;
            }
            (Some("algorithm"), v) => {
                algorithm = v.as_str().and_then(Algorithm::parse).ok_or_else(|| {
                    AuthError::Malformed("algorithm must be \"SHA1\" or \"SHA256\"".into())
                })?;
            }
            _ => {
                return Err(AuthError::Malformed(
                    "totp's data takes digits and algorithm only (the server makes the secret)"
                        .into(),
                ))
            }
        }
    }
    Ok((algorithm, digits))
}

impl Method for Totp {
    fn info(&self) -> &'static crate::MethodInfo {
        &INFO
    }

    fn login(
        &self,
        ctx: &LoginCtx<'_>,
        ident: &str,
        request: &Value,
        record: Option<&Value>,
    ) -> Step<Verdict> {
        let code = match parse_code(request) {
            Ok(c) => c,
            Err(e) => return Step::Fail(e),
        };
        // A record that does not parse is treated as no record: the same
        // work, the same failure.
        let stored = record.and_then(Record::parse);
        let known = Choice::from(u8::from(stored.is_some()));
        let mut rec = stored.unwrap_or_else(|| self.mock(ident));
        let now = ctx.now_ms / 1000 / rec.period;
        let mut matched: Option<u64> = None;
        for step in now.saturating_sub(WINDOW)..=now.saturating_add(WINDOW) {
            let expected = Zeroizing::new(hotp(rec.algorithm, &rec.secret, step, rec.digits));
            let same = expected.as_bytes().ct_eq(code.as_bytes());
            let fresh = Choice::from(u8::from(rec.last_step.is_none_or(|l| step > l)));
            if bool::from(same & fresh & known) {
                matched = Some(step);
            }
        }
        match matched {
            Some(step) => {
                rec.last_step = Some(step);
                let mut v = Verdict::user(ident);
                v.write_back = Some(rec.to_value());
                Step::Done(v)
            }
            None => Step::Fail(AuthError::Failed),
        }
    }

    fn set_record(
        &self,
        _ctx: &LoginCtx<'_>,
        kind: &Kind,
        _ident: &str,
        request: &Value,
    ) -> Step<Value> {
        if kind.name != "user" {
            return Step::Fail(AuthError::Unsupported(
                "totp keeps user records only".into(),
            ));
        }
        let (algorithm, digits) = match parse_options(request) {
            Ok(o) => o,
            Err(e) => return Step::Fail(e),
        };
        let mut secret = Zeroizing::new(vec![0u8; algorithm.secret_len()]);
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let rec = Record {
            secret,
            algorithm,
            digits,
            period: PERIOD,
            last_step: None,
        };
        Step::Done(rec.to_value())
    }

    fn show_record(&self, _kind: &Kind, record: &Value) -> Msg {
        match Record::parse(record) {
            Some(r) => Msg::new()
                .with("algorithm", r.algorithm.name())
                .with("digits", r.digits)
                .with("period", r.period),
            None => Msg::new(),
        }
    }

    fn set_reply(&self, _kind: &Kind, ident: &str, record: &Value) -> Msg {
        match Record::parse(record) {
            Some(r) => Msg::new().with("uri", r.uri(ident)),
            None => Msg::new(),
        }
    }
}

/// Client half of `totp`: enrols (the server makes the secret and answers
/// with the provisioning URI) and logs in with a code read from an
/// authenticator.
pub struct TotpClient {
    /// The user name.
    pub user: String,
    /// The code to log in with (zeroized on drop); none to enrol.
    pub code: Option<Password>,
}

impl ClientMethod for TotpClient {
    fn name(&self) -> &'static str {
        TOTP
    }

    fn ident(&self) -> String {
        self.user.clone()
    }

    fn login(&self, _channel: Option<&SecretKey>) -> ClientLogin {
        let mut request = Msg::new();
        if let Some(code) = &self.code {
            request.set("data", code.expose());
        }
        ClientLogin {
            request,
            exchange: None,
        }
    }

    fn set_record(&self, _channel: Option<&SecretKey>) -> ClientLogin {
        ClientLogin {
            request: Msg::new(),
            exchange: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &[u8] = b"12345678901234567890";

    fn method() -> Totp {
        Totp::new(SecretKey::new([7; 32]))
    }

    fn login_at(m: &Totp, secs: u64, code: &str, record: Option<&Value>) -> Step<Verdict> {
        let ctx = LoginCtx {
            channel_key: None,
            now_ms: secs * 1000,
            ..LoginCtx::default()
        };
        let req = Msg::new().with("data", code).into_value();
        m.login(&ctx, "joe", &req, record)
    }

    fn record(secret: &[u8]) -> Value {
        Record {
            secret: Zeroizing::new(secret.to_vec()),
            algorithm: Algorithm::Sha1,
            digits: 6,
            period: 30,
            last_step: None,
        }
        .to_value()
    }

    fn code_at(secs: u64) -> String {
        totp_at(Algorithm::Sha1, SEED, secs, 30, 6)
    }

    /// RFC 6238 Appendix B, the SHA-1 column (8 digits, seed
    /// "12345678901234567890").
    #[test]
    fn rfc6238_vectors() {
        for (t, want) in [
            (59, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
            (20000000000, "65353130"),
        ] {
            assert_eq!(totp_at(Algorithm::Sha1, SEED, t, 30, 8), want, "T = {t}");
        }
        // The SHA-256 column, with its 32-byte seed.
        let seed32 = b"12345678901234567890123456789012";
        assert_eq!(totp_at(Algorithm::Sha256, seed32, 59, 30, 8), "46119246");
        assert_eq!(
            totp_at(Algorithm::Sha256, seed32, 20000000000, 30, 8),
            "77737706"
        );
    }

    #[test]
    fn rfc4226_hotp_vectors() {
        let want = ["755224", "287082", "359152", "969429", "338314"];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(hotp(Algorithm::Sha1, SEED, i as u64, 6), *w);
        }
    }

    #[test]
    fn base32_matches_rfc4648() {
        for (input, want) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32(input.as_bytes()), want);
        }
    }

    #[test]
    fn one_step_either_side_is_accepted_two_are_not() {
        let m = method();
        let rec = record(SEED);
        let t: u64 = 1_700_000_000 - 1_700_000_000 % 30 + 10;
        for (offset, ok) in [
            (-60i64, false),
            (-30, true),
            (0, true),
            (30, true),
            (60, false),
        ] {
            let code = code_at(t.checked_add_signed(offset).expect("time"));
            let got = login_at(&m, t, &code, Some(&rec));
            assert_eq!(matches!(got, Step::Done(_)), ok, "offset {offset}: {got:?}");
            if !ok {
                assert!(matches!(got, Step::Fail(AuthError::Failed)));
            }
        }
        // The window's edges are the steps' edges.
        let start = t - 10;
        assert!(matches!(
            login_at(&m, start - 1, &code_at(start + 30), Some(&rec)),
            Step::Fail(AuthError::Failed)
        ));
        assert!(matches!(
            login_at(&m, start, &code_at(start + 30), Some(&rec)),
            Step::Done(_)
        ));
        assert!(matches!(
            login_at(&m, start + 59, &code_at(start), Some(&rec)),
            Step::Done(_)
        ));
        assert!(matches!(
            login_at(&m, start + 60, &code_at(start), Some(&rec)),
            Step::Fail(AuthError::Failed)
        ));
    }

    #[test]
    fn a_used_step_is_never_accepted_again() {
        let m = method();
        let t = 1_800_000_015;
        let Step::Done(v) = login_at(&m, t, &code_at(t), Some(&record(SEED))) else {
            panic!("the first use logs in")
        };
        assert_eq!(v.user, "joe");
        let after = v.write_back.expect("the record comes back with the step");
        assert_eq!(
            after.get("last_step").and_then(Value::as_i64),
            Some(i64::try_from(t / 30).expect("step"))
        );
        // The same code, now and within the window, and the step before.
        for at in [t, t + 20] {
            assert!(matches!(
                login_at(&m, at, &code_at(t), Some(&after)),
                Step::Fail(AuthError::Failed)
            ));
        }
        assert!(matches!(
            login_at(&m, t, &code_at(t - 30), Some(&after)),
            Step::Fail(AuthError::Failed)
        ));
        // The next step's code still works, and moves last_step on.
        let Step::Done(v) = login_at(&m, t + 30, &code_at(t + 30), Some(&after)) else {
            panic!("the next step logs in")
        };
        let later = v.write_back.expect("record");
        assert_eq!(
            later.get("last_step").and_then(Value::as_i64),
            Some(i64::try_from(t / 30 + 1).expect("step"))
        );
    }

    #[test]
    fn an_unknown_user_fails_as_a_wrong_code_does() {
        let m = method();
        let t = 1_800_000_015;
        // Even the mock record's own code: it logs nobody in.
        let mock_code = hotp(Algorithm::Sha1, &m.mock("joe").secret, t / 30, 6);
        for code in [mock_code.as_str(), "000000", code_at(t).as_str()] {
            assert!(matches!(
                login_at(&m, t, code, None),
                Step::Fail(AuthError::Failed)
            ));
        }
        let wrong = if code_at(t) == "123456" {
            "654321"
        } else {
            "123456"
        };
        assert!(matches!(
            login_at(&m, t, wrong, Some(&record(SEED))),
            Step::Fail(AuthError::Failed)
        ));
        // A record that does not parse is no record.
        let broken = Msg::new().with("secret", "text").into_value();
        assert!(matches!(
            login_at(&m, t, &code_at(t), Some(&broken)),
            Step::Fail(AuthError::Failed)
        ));
        // Mock secrets are stable per name and differ across names.
        assert_eq!(*m.mock("joe").secret, *m.mock("joe").secret);
        assert_ne!(*m.mock("joe").secret, *m.mock("ann").secret);
    }

    #[test]
    fn hostile_codes_are_refused_with_clear_errors() {
        let m = method();
        let rec = record(SEED);
        let long = "1".repeat(1 << 16);
        for (data, why) in [
            (Value::from("12345"), "6 or 8 digits"),
            (Value::from("1234567"), "6 or 8 digits"),
            (Value::from(long.as_str()), "6 or 8 digits"),
            (Value::from("12345a"), "digits only"),
            (Value::from("12 456"), "digits only"),
            (Value::from("１２３４５"), "6 or 8 digits"),
            (Value::from("+12345"), "digits only"),
            (Value::from(""), "6 or 8 digits"),
            (Value::from(123456), "must be text"),
            (Value::Bin(b"123456".to_vec()), "must be text"),
            (Value::Nil, "must be text"),
        ] {
            let req = Msg::new().with("data", data.clone()).into_value();
            for r in [Some(&rec), None] {
                match m.login(&LoginCtx::default(), "joe", &req, r) {
                    Step::Fail(AuthError::Malformed(e)) => {
                        assert!(e.contains(why), "{data:?}: {e}")
                    }
                    other => panic!("{data:?}: {other:?}"),
                }
            }
        }
        let none = Msg::new().into_value();
        assert!(matches!(
            m.login(&LoginCtx::default(), "joe", &none, Some(&rec)),
            Step::Fail(AuthError::Malformed(_))
        ));
        // At the clock's ends nothing overflows.
        for secs in [0, u64::MAX / 1000] {
            assert!(matches!(
                login_at(&m, secs, "000000", Some(&rec)),
                Step::Fail(AuthError::Failed) | Step::Done(_)
            ));
        }
    }

    #[test]
    fn enrolment_makes_a_fresh_secret_and_the_uri_carries_it() {
        let m = method();
        let ctx = LoginCtx::default();
        let req = Msg::new().into_value();
        let Step::Done(a) = m.set_record(&ctx, &TOTP_USER, "joe@example.org", &req) else {
            panic!("enrolled")
        };
        let Step::Done(b) = m.set_record(&ctx, &TOTP_USER, "joe@example.org", &req) else {
            panic!("enrolled")
        };
        let secret = |v: &Value| match v.get("secret") {
            Some(Value::Bin(b)) => b.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(secret(&a).len(), 20, "160 bits");
        assert_ne!(secret(&a), secret(&b), "drawn afresh");
        let reply = m.set_reply(&TOTP_USER, "joe@example.org", &a).into_value();
        let uri = reply.get("uri").and_then(Value::as_str).expect("uri");
        assert_eq!(
            uri,
            format!(
                "otpauth://totp/keycard:joe%40example.org?secret={}&issuer=keycard&algorithm=SHA1&digits=6&period=30",
                base32(&secret(&a))
            )
        );
        assert!(
            !uri.contains('='.to_string().repeat(2).as_str()),
            "no padding"
        );
        // auth_get shows the shape, never the secret.
        let shown = m.show_record(&TOTP_USER, &a).into_value();
        assert!(shown.get("secret").is_none());
        assert_eq!(shown.get("digits").and_then(Value::as_i64), Some(6));
        // Options, and what is refused.
        let eight = Msg::new()
            .with(
                "data",
                Msg::new().with("digits", 8).with("algorithm", "SHA256"),
            )
            .into_value();
        let Step::Done(c) = m.set_record(&ctx, &TOTP_USER, "joe", &eight) else {
            panic!("8 digits")
        };
        assert_eq!(secret(&c).len(), 32);
        for bad in [
            Msg::new().with("data", Msg::new().with("digits", 7)),
            Msg::new().with("data", Msg::new().with("algorithm", "MD5")),
            Msg::new().with("data", Msg::new().with("secret", b"chosen".to_vec())),
            Msg::new().with("data", "JBSWY3DPEHPK3PXP"),
        ] {
            assert!(matches!(
                m.set_record(&ctx, &TOTP_USER, "joe", &bad.into_value()),
                Step::Fail(AuthError::Malformed(_))
            ));
        }
    }

    #[test]
    fn the_client_sends_the_code_as_text() {
        let c = TotpClient {
            user: "joe".into(),
            code: Some(Password::new("123456")),
        };
        let req = c.login(None).request.into_value();
        assert_eq!(req.get("data").and_then(Value::as_str), Some("123456"));
    }
}
