//! Turning command-line text into values and values into text.

use keycard_proto::Value;

/// Reads a JSON document as a msgpack value (objects keep their order).
pub fn from_json(text: &str) -> anyhow::Result<Value> {
    let j: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        anyhow::anyhow!("not valid JSON ({e}); without --json the value is stored as a string")
    })?;
    Ok(json_to_value(j))
}

fn json_to_value(j: serde_json::Value) -> Value {
    match j {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i128::from(i))
            } else if let Some(u) = n.as_u64() {
                Value::Int(i128::from(u))
            } else {
                Value::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::Str(s),
        serde_json::Value::Array(a) => Value::Array(a.into_iter().map(json_to_value).collect()),
        serde_json::Value::Object(o) => Value::Map(
            o.into_iter()
                .map(|(k, v)| (Value::Str(k), json_to_value(v)))
                .collect(),
        ),
    }
}

/// Reads hex digits as bytes.
pub fn from_hex(text: &str) -> anyhow::Result<Value> {
    keycard_proto::hex::decode(text.trim())
        .map(Value::Bin)
        .ok_or_else(|| anyhow::anyhow!("not an even number of hex digits: {text:?}"))
}

/// A value for humans: JSON where the value is JSON, Rust-like otherwise
/// (bytes as b"…", extensions as Ext(type, n bytes)).
pub fn show(v: &Value) -> String {
    format!("{v:?}")
}

/// A value as JSON, for `--json` output: bytes as hex strings, integers
/// beyond JSON's safe range and extensions as strings, map keys that are
/// not strings in their `show` form.
pub fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Nil => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => match (i64::try_from(*i), u64::try_from(*i)) {
            (Ok(n), _) => J::from(n),
            (_, Ok(n)) => J::from(n),
            _ => J::String(i.to_string()),
        },
        Value::F32(x) => serde_json::Number::from_f64(f64::from(*x)).map_or(J::Null, J::Number),
        Value::F64(x) => serde_json::Number::from_f64(*x).map_or(J::Null, J::Number),
        Value::Str(s) => J::String(s.clone()),
        Value::Bin(b) => J::String(keycard_proto::hex::encode(b)),
        Value::Array(a) => J::Array(a.iter().map(to_json).collect()),
        Value::Map(m) => J::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = k.as_str().map_or_else(|| show(k), str::to_owned);
                    (key, to_json(v))
                })
                .collect(),
        ),
        Value::Ext(..) => J::String(show(v)),
    }
}

/// A value for a table cell or a `key: value` line: strings bare (but
/// escaped as [`cell`] does), the rest as [`show`] prints them.
pub fn plain(v: &Value) -> String {
    match v {
        Value::Str(s) => cell(s).into_owned(),
        other => show(other),
    }
}

/// `s` for one line of a terminal: every control character (line breaks
/// and tabs included) and every Unicode line separator or bidi control
/// escaped, so a name from the server cannot start a line of its own.
pub fn cell(s: &str) -> std::borrow::Cow<'_, str> {
    escape(s, crate::logging::unsafe_in_a_line)
}

/// `text` for a terminal: what [`cell`] escapes, but the line breaks and
/// tabs the output is laid out with. Everything the CLI prints goes
/// through it, so no string from the server (a user name, a path, an
/// error's text) can carry an escape sequence to the terminal.
pub fn terminal(text: &str) -> std::borrow::Cow<'_, str> {
    escape(text, |c| {
        c != '\n' && c != '\t' && crate::logging::unsafe_in_a_line(c)
    })
}

fn escape(s: &str, unsafe_char: impl Fn(char) -> bool) -> std::borrow::Cow<'_, str> {
    use std::fmt::Write as _;
    if !s.chars().any(&unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if !unsafe_char(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Writes one line to stdout through [`terminal`] (what `outln!` does).
pub fn out_line(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(terminal(text).as_bytes());
    let _ = out.write_all(b"\n");
}

/// Writes one line to stderr through [`terminal`] (what `errln!` does).
pub fn err_line(text: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(terminal(text).as_bytes());
    let _ = err.write_all(b"\n");
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A Unix time in milliseconds as ISO 8601 UTC, to the second
/// (`2025-03-01T12:00:00Z`).
pub fn iso_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of day `days` after 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// A span of seconds in its two largest units: `45s`, `5m 3s`, `23h 59m`,
/// `30d 2h`.
pub fn span(secs: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")];
    let Some(i) = UNITS.iter().position(|(n, _)| secs >= *n) else {
        return "0s".into();
    };
    let (big, big_name) = UNITS[i];
    let mut out = format!("{}{big_name}", secs / big);
    if let Some((small, small_name)) = UNITS.get(i + 1) {
        let rest = secs % big / small;
        if rest > 0 {
            out.push_str(&format!(" {rest}{small_name}"));
        }
    }
    out
}

/// When `ms` is relative to `now` (both Unix milliseconds): `in 23h 59m`,
/// `5m ago`, `now`.
pub fn relative(ms: u64, now: u64) -> String {
    if ms >= now {
        match (ms - now) / 1000 {
            0 => "now".into(),
            s => format!("in {}", span(s)),
        }
    } else {
        match (now - ms) / 1000 {
            0 => "now".into(),
            s => format!("{} ago", span(s)),
        }
    }
}

/// A time for humans: ISO 8601 and how far it is from now.
pub fn when(ms: u64, now: u64) -> String {
    format!("{} ({})", iso_time(ms), relative(ms, now))
}

/// Rows as a table: a header line, columns padded to their widest cell
/// with two spaces between them (the last column unpadded).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    // A cell is one line, whatever the server sent.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| cell(c).into_owned()).collect())
        .collect();
    let rows = &rows;
    let cols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(cols) {
            if i + 1 == cols {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_times() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_time(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(iso_time(1_709_251_199_999), "2024-02-29T23:59:59Z");
        assert_eq!(iso_time(1_735_689_600_000), "2025-01-01T00:00:00Z");
        assert_eq!(iso_time(4_102_444_799_000), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn spans_and_relative_times() {
        assert_eq!(span(0), "0s");
        assert_eq!(span(45), "45s");
        assert_eq!(span(303), "5m 3s");
        assert_eq!(span(3600), "1h");
        assert_eq!(span(86_399), "23h 59m");
        assert_eq!(span(30 * 86_400 + 7200 + 5), "30d 2h");
        let now = 1_000_000_000;
        assert_eq!(relative(now + 86_399_000, now), "in 23h 59m");
        assert_eq!(relative(now - 300_000, now), "5m ago");
        assert_eq!(relative(now + 400, now), "now");
    }

    #[test]
    fn server_strings_cannot_drive_the_terminal() {
        let evil = "bob\u{1b}]0;owned\u{7}\nroot\u{202e}x";
        assert_eq!(cell(evil), "bob\\u{1b}]0;owned\\u{7}\\nroot\\u{202e}x");
        assert_eq!(
            terminal(&format!("user {evil}\tok\n")),
            "user bob\\u{1b}]0;owned\\u{7}\nroot\\u{202e}x\tok\n"
        );
        assert_eq!(plain(&Value::from(evil)), cell(evil));
        assert!(matches!(
            terminal("plain\ttext\n"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "USER", "NOTE"],
            &[
                vec!["a".into(), "bob".into(), "".into()],
                vec!["abcd".into(), "al".into(), "x y".into()],
            ],
        );
        assert_eq!(t, "ID    USER  NOTE\na     bob\nabcd  al    x y\n");
    }

    #[test]
    fn json_of_values() {
        let v = Value::Map(vec![
            ("id".into(), "x".into()),
            ("n".into(), Value::Int(i128::from(u64::MAX) + 1)),
            ("b".into(), Value::Bin(vec![0, 255])),
            (Value::Int(3), Value::Nil),
        ]);
        assert_eq!(
            to_json(&v).to_string(),
            r#"{"id":"x","n":"18446744073709551616","b":"00ff","3":null}"#
        );
    }
}
