//! The server log's field formatting: tracing-subscriber's own fields,
//! written through an escaper. User names, paths and other strings a client
//! sends reach log fields and messages; a line break in one would start a
//! forged log line, and an escape sequence would drive the terminal. So
//! every control character (and the Unicode line and paragraph separators
//! and bidirectional controls, which some viewers obey) in any field value,
//! span field or message is written as an escape, whatever the call site
//! does: one event stays one line.

use std::fmt;

use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::FormatFields;

/// [`DefaultFields`] (`name=value`, strings quoted), escaped.
pub(crate) struct EscapedFields(DefaultFields);

impl EscapedFields {
    pub(crate) fn new() -> EscapedFields {
        EscapedFields(DefaultFields::new())
    }
}

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut escaped = Escape(&mut writer);
        // (The inner writer has no ANSI styling: field names are not
        // italic on a terminal, and no escape sequence passes at all.)
        self.0.format_fields(Writer::new(&mut escaped), fields)
    }
}

/// Whether `c` must not reach the log (or a terminal: see
/// `render::terminal`) as itself.
pub(crate) fn unsafe_in_a_line(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' // line and paragraph separators
                | '\u{061c}' | '\u{200e}' | '\u{200f}' // bidi marks
                | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' // bidi embeddings, isolates
        )
}

/// Writes through to `W` with [`unsafe_in_a_line`] characters escaped
/// (`\n`, `\r`, `\t`, else `\u{…}`), in runs.
pub(crate) struct Escape<'a, W: fmt::Write>(pub(crate) &'a mut W);

impl<W: fmt::Write> fmt::Write for Escape<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some((at, c)) = rest.char_indices().find(|&(_, c)| unsafe_in_a_line(c)) {
            self.0.write_str(&rest[..at])?;
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// What `f` logs, formatted as `keycard serve` formats it.
    fn logged(f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(EscapedFields::new())
            .with_writer(move || out.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8(bytes).unwrap_or_default()
    }

    /// A client string in a `%` field, a message, a span field and an
    /// error stays on its event's line, escaped, however it is logged.
    #[test]
    fn no_field_or_message_breaks_a_line() {
        let evil = "eve\n2030-01-01T00:00:00Z  INFO forged\r\u{1b}[2K\u{2028}\u{202e}x\ty";
        let out = logged(|| {
            let span = tracing::info_span!("conn", peer = %evil);
            let _in = span.enter();
            tracing::info!(user = %evil, "login");
            tracing::info!(user = ?evil, quoted = evil, "login");
            tracing::warn!("message {evil}");
            let e = io::Error::other(evil.to_owned());
            tracing::error!(error = &e as &(dyn std::error::Error + 'static), "failed");
        });
        assert_eq!(out.lines().count(), 4, "{out}");
        assert!(out.ends_with('\n'));
        for line in out.lines() {
            assert!(line.contains("eve"), "{line}");
            assert!(
                !line.contains("forged") || line.contains("eve\\n2030"),
                "{line}"
            );
            assert!(!line.chars().any(unsafe_in_a_line), "{line:?}");
        }
        // Display and messages escaped; Debug (quoted) as Debug has it.
        let display = "eve\\n2030-01-01T00:00:00Z  INFO forged\\r\\u{1b}[2K\\u{2028}\\u{202e}x\\ty";
        assert!(out.contains(&format!("login user={display}\n")), "{out}");
        // (Messages pass tracing-subscriber's own ANSI escaping first.)
        assert!(
            out.contains("message eve\\n2030-01-01T00:00:00Z  INFO forged\\r\\x1b[2K"),
            "{out}"
        );
        assert!(out.contains(&format!("peer={display}")), "{out}");
        assert!(
            out.contains("user=\"eve\\n2030-01-01T00:00:00Z  INFO forged\\r\\u{1b}"),
            "{out}"
        );
    }

    #[test]
    fn plain_text_passes_unchanged() {
        let mut s = String::new();
        Escape(&mut s)
            .write_str("alice é 日本 \"q\" \\n")
            .expect("write");
        assert_eq!(s, "alice é 日本 \"q\" \\n");
        let mut s = String::new();
        Escape(&mut s)
            .write_str("a\u{0}b\u{7f}c\u{85}")
            .expect("write");
        assert_eq!(s, "a\\u{0}b\\u{7f}c\\u{85}");
    }
}
