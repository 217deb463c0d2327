//! The browser login page (`GET /login`, `GET /login.js`): SCRAM-SHA-256
//! in the page with WebCrypto, so the password never leaves the browser.
//!
//! Both assets are compiled in and served with the headers a login page
//! wants: a Content-Security-Policy that allows only this origin's script
//! (no inline script, no `eval`), the page's one `<style>` block by its
//! hash, requests to this origin only, no image but the page's empty
//! `data:` icon (so the browser asks for no `/favicon.ico`), no framing, no
//! `<base>`, no form submission (the script runs the login; the form is
//! never sent), plus `X-Frame-Options`, `nosniff`, `no-referrer`,
//! `no-store` and same-origin opener and resource policies.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use hyper::Response;
use sha2::{Digest, Sha256};

use super::Body;

const PAGE: &str = include_str!("assets/login.html");
const SCRIPT: &str = include_str!("assets/login.js");

/// The text of the page's `<style>` element (empty if it has none).
fn style_text(page: &str) -> &str {
    page.split_once("<style>")
        .and_then(|(_, rest)| rest.split_once("</style>"))
        .map_or("", |(css, _)| css)
}

/// The page's Content-Security-Policy: its stylesheet is allowed by hash,
/// so no inline style (nor any injected one) is.
fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let hash = STANDARD.encode(Sha256::digest(style_text(PAGE).as_bytes()));
        format!(
            "default-src 'none'; script-src 'self'; style-src 'sha256-{hash}'; \
             connect-src 'self'; img-src data:; form-action 'none'; \
             frame-ancestors 'none'; base-uri 'none'"
        )
    })
}

fn asset(text: &'static str, kind: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp()));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// `GET /login`.
pub(super) fn login_page() -> Response<Body> {
    asset(PAGE, "text/html; charset=utf-8")
}

/// `GET /login.js`.
pub(super) fn login_script() -> Response<Body> {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(r: &'a Response<Body>, name: &str) -> &'a str {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    #[test]
    fn both_assets_carry_the_security_headers() {
        for (r, kind) in [
            (login_page(), "text/html"),
            (login_script(), "text/javascript"),
        ] {
            assert!(header(&r, "content-type").starts_with(kind));
            let csp = header(&r, "content-security-policy");
            for directive in [
                "default-src 'none'",
                "script-src 'self'",
                "connect-src 'self'",
                "form-action 'none'",
                "frame-ancestors 'none'",
                "base-uri 'none'",
            ] {
                assert!(csp.contains(directive), "{directive} missing from {csp}");
            }
            assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
            assert_eq!(header(&r, "x-frame-options"), "DENY");
            assert_eq!(header(&r, "x-content-type-options"), "nosniff");
            assert_eq!(header(&r, "referrer-policy"), "no-referrer");
            assert_eq!(header(&r, "cache-control"), "no-store");
        }
    }

    #[test]
    fn the_page_loads_its_script_and_has_no_inline_script() {
        assert!(PAGE.contains(r#"<script src="/login.js" defer></script>"#));
        // Every <script> element has a src and an empty body.
        let mut scripts = 0;
        for chunk in PAGE.split("<script").skip(1) {
            scripts += 1;
            let (attrs, rest) = chunk.split_once('>').expect("a closed tag");
            assert!(attrs.contains("src="), "a <script> without src: {attrs}");
            assert!(rest.starts_with("</script>"), "a <script> with a body");
        }
        assert_eq!(scripts, 1);
        // No inline event handlers or javascript: URLs either.
        let lower = PAGE.to_ascii_lowercase();
        assert!(!lower.contains(" onclick=") && !lower.contains(" onsubmit="));
        assert!(!lower.contains(" onload=") && !lower.contains("javascript:"));
        // No style attributes (the CSP would block them) and no outside
        // resources.
        assert!(!lower.contains(" style="));
        assert!(!lower.contains("http://") && !lower.contains("https://"));
    }

    #[test]
    fn the_stylesheet_is_allowed_by_its_hash() {
        let css = style_text(PAGE);
        assert!(css.contains("font"), "the page has its stylesheet");
        assert_eq!(PAGE.matches("<style>").count(), 1);
        let hash = STANDARD.encode(Sha256::digest(css.as_bytes()));
        assert!(csp().contains(&format!("style-src 'sha256-{hash}'")));
    }
}
