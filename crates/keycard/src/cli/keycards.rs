//! `keycard keycard`, `keycard token` and `keycard whoami`: the caller's
//! login, keycards (live logins and tokens) listed, shown and revoked, and
//! tokens issued.

use anyhow::{bail, Context};
use clap::{ArgGroup, Subcommand};
use keycard_auth::Password;
use keycard_client::Client;
use keycard_proto::{Msg, Value};

use super::emit;
use crate::login::{connect, AdminConnArgs, ConnArgs, KeycardIdParser, TOKEN_METHOD};
use crate::render;

#[derive(Subcommand, Debug)]
pub(super) enum KeycardCmd {
    /// List keycards: live logins, then tokens.
    Ls {
        #[command(flatten)]
        conn: AdminConnArgs,
        /// Only this user's (of the server's own users, or of --domain).
        #[arg(long)]
        user: Option<String>,
        /// Only this domain's users (its path, e.g. org.acme).
        #[arg(long)]
        domain: Option<String>,
        /// Only those of this login method (`token`: tokens and the logins
        /// made with them).
        #[arg(long)]
        method: Option<String>,
        /// Only the one held by this connection (the CONN column).
        #[arg(long)]
        requester: Option<u64>,
        /// Print a JSON array of the server's records instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show every field of keycard ID.
    Show {
        #[command(flatten)]
        conn: AdminConnArgs,
        /// The keycard's id (32 hex digits; a token's as printed).
        #[arg(value_parser = KeycardIdParser)]
        id: String,
        /// Print the server's record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke keycard ID, or every keycard of --user, or the one of
    /// --requester: their connections are closed, tokens never work again.
    #[command(group(
        ArgGroup::new("which")
            .required(true)
            .args(["id", "user", "requester", "parent"])
    ))]
    Revoke {
        #[command(flatten)]
        conn: AdminConnArgs,
        /// The keycard's id (32 hex digits; a token's as printed).
        #[arg(value_parser = KeycardIdParser)]
        id: Option<String>,
        /// Every keycard of this user, tokens included.
        #[arg(long)]
        user: Option<String>,
        /// The keycard held by this connection.
        #[arg(long)]
        requester: Option<u64>,
        /// The logins made with this token (the token itself stays valid).
        #[arg(long, value_parser = KeycardIdParser)]
        parent: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum TokenCmd {
    /// Issue a token for USER. The token alone goes to stdout (so
    /// `TOKEN=$(keycard token create …)` works), its id and expiry to
    /// stderr. It is shown this once; the server keeps only its hash.
    Create {
        #[command(flatten)]
        conn: AdminConnArgs,
        /// The user the token logs in as (an existing user).
        #[arg(long)]
        user: String,
        /// How long it lasts: 30d, 12h, 90m, 45s, 1w, 1d12h, or seconds.
        #[arg(long, value_parser = parse_ttl)]
        ttl: u64,
        /// A note to recognise it by (shown in listings).
        #[arg(long)]
        label: Option<String>,
        /// The method whose user record holds USER's ACL and capabilities
        /// (default: the first that has USER).
        #[arg(long)]
        method: Option<String>,
    },
    /// List tokens (revoked ones until they expire).
    Ls {
        #[command(flatten)]
        conn: AdminConnArgs,
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
        /// Print a JSON array of the server's records instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: it never works again, and the connections using it
    /// are closed.
    Revoke {
        #[command(flatten)]
        conn: AdminConnArgs,
        /// The token as `token create` printed it, or its id (the 32 hex
        /// digits after `kct_`).
        #[arg(value_name = "TOKEN", value_parser = KeycardIdParser)]
        id: String,
    },
}

/// A duration in seconds: a number of seconds, or numbers with units
/// (`w`, `d`, `h`, `m`, `s`) from the largest down, e.g. `30d`, `1h30m`.
/// Zero, unknown units and amounts beyond what milliseconds can count are
/// refused.
fn parse_ttl(text: &str) -> Result<u64, String> {
    const UNITS: [(&str, u64); 5] = [
        ("w", 7 * 86_400),
        ("d", 86_400),
        ("h", 3600),
        ("m", 60),
        ("s", 1),
    ];
    const MAX: u64 = u64::MAX / 1000;
    let too_large = || format!("{text:?} is too long a time");
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration (e.g. 30d, 12h, 90m, 45s)".into());
    }
    let mut total: u64 = 0;
    let mut rest = t;
    let mut last_unit = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "bad duration {text:?}: expected a number, then one of w, d, h, m, s"
            ));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| too_large())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = if unit.is_empty() {
            // Plain seconds: the whole text is one number.
            if digits != t.len() {
                return Err(format!(
                    "bad duration {text:?}: {n} needs a unit (w, d, h, m or s)"
                ));
            }
            1
        } else {
            let Some(i) = UNITS.iter().position(|(u, _)| *u == unit) else {
                return Err(format!(
                    "bad duration {text:?}: unknown unit {unit:?} (use w, d, h, m or s)"
                ));
            };
            if last_unit.is_some_and(|l| i <= l) {
                return Err(format!(
                    "bad duration {text:?}: give each unit once, largest first"
                ));
            }
            last_unit = Some(i);
            UNITS[i].1
        };
        total = n
            .checked_mul(scale)
            .and_then(|x| total.checked_add(x))
            .filter(|x| *x <= MAX)
            .ok_or_else(too_large)?;
    }
    if total == 0 {
        return Err("the duration must be at least one second".into());
    }
    Ok(total)
}

pub(super) async fn whoami(conn: &ConnArgs) -> anyhow::Result<()> {
    let c = connect(conn).await?;
    let r = c.request(Msg::new().with("action", "whoami")).await?;
    let now = render::now_ms();
    let mut out = String::new();
    match r.get("user").and_then(Value::as_str) {
        Some(user) => {
            outln!(out, "user: {user}");
            if let Some(m) = r.get("method").and_then(Value::as_str) {
                outln!(out, "method: {m}");
            }
            if let Some(k) = r.get("keycard").and_then(Value::as_str) {
                outln!(out, "keycard: {k}");
            }
            if let Some(ms) = r.get("expires_at").and_then(Value::as_u64) {
                outln!(out, "expires: {}", render::when(ms, now));
            }
        }
        None => {
            outln!(out, "not logged in");
            if r.get("super_root").is_some_and(Value::truthy) {
                outln!(out, "the server is open: every connection is super-root");
            }
            return emit(&out);
        }
    }
    let caps: Vec<&str> = match r.get("caps") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    outln!(
        out,
        "caps: {}",
        if caps.is_empty() {
            "none".to_owned()
        } else {
            caps.join(", ")
        }
    );
    if r.get("super_root").is_some_and(Value::truthy) {
        outln!(out, "super_root: yes");
    }
    emit(&out)
}

/// Which keycards `keycard_list` returns.
struct CardFilter {
    user: Option<String>,
    domain: Option<String>,
    method: Option<String>,
    requester: Option<u64>,
}

/// Every keycard matching `f`: live ones (fetched a page at a time), then
/// durable ones.
async fn list_cards(c: &Client, f: &CardFilter) -> anyhow::Result<Vec<Value>> {
    const PAGE: usize = 1000;
    let mut live = Vec::new();
    let mut durable = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut msg = Msg::new()
            .with("action", "keycard_list")
            .with("limit", PAGE);
        if let Some(u) = &f.user {
            msg.set("user", u.as_str());
        }
        if let Some(d) = &f.domain {
            msg.set("domain", d.as_str());
        }
        if let Some(m) = &f.method {
            msg.set("method", m.as_str());
        }
        if let Some(r) = f.requester {
            msg.set("requester", r);
        }
        if let Some(a) = &after {
            msg.set("after", a.as_str());
        }
        let mut s = c.stream(msg).await?;
        let mut page = 0;
        let mut last = None;
        while let Some(v) = s.next_raw().await {
            let v = card_fields(v?);
            if is_durable(&v) {
                durable.push(v);
            } else {
                page += 1;
                last = v.get("id").and_then(Value::as_str).map(str::to_owned);
                live.push(v);
            }
        }
        match last {
            Some(id) if page >= PAGE => after = Some(id),
            _ => break,
        }
    }
    live.extend(durable);
    Ok(live)
}

/// A keycard as the server sent it, without the message's framing
/// (`seq`, `wseq`, `tock`, `state`).
fn card_fields(mut v: Value) -> Value {
    if let Value::Map(m) = &mut v {
        m.retain(|(k, _)| !matches!(k.as_str(), Some("seq" | "wseq" | "tock" | "state")));
    }
    v
}

fn is_durable(card: &Value) -> bool {
    card.get("durable").is_some_and(Value::truthy)
}

/// A keycard's status for people: a token past its expiry that the server
/// has not yet reaped reads `expired`.
fn status_of(card: &Value, now: u64) -> String {
    let status = card
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned();
    let expired = card
        .get("expires_at")
        .and_then(Value::as_u64)
        .is_some_and(|e| e <= now);
    if status == "authenticated" && expired {
        "expired".into()
    } else {
        status
    }
}

/// Keycards as a table, or a JSON array.
fn print_cards(cards: &[Value], json: bool) -> anyhow::Result<()> {
    if json {
        let all = serde_json::Value::Array(cards.iter().map(render::to_json).collect());
        return emit(&format!("{}\n", serde_json::to_string_pretty(&all)?));
    }
    if cards.is_empty() {
        say_err!("no keycards");
        return Ok(());
    }
    let now = render::now_ms();
    let text = |card: &Value, key: &str| {
        card.get(key)
            .filter(|v| !v.is_nil())
            .map_or_else(|| "-".to_owned(), render::plain)
    };
    let rows: Vec<Vec<String>> = cards
        .iter()
        .map(|card| {
            let durable = is_durable(card);
            let conn = if durable {
                "durable".to_owned()
            } else {
                text(card, "requester")
            };
            let expires = card
                .get("expires_at")
                .and_then(Value::as_u64)
                .map_or_else(|| "-".to_owned(), |ms| render::relative(ms, now));
            let note = if durable {
                card.get("label")
                    .and_then(Value::as_str)
                    .map(|l| format!("label: {l}"))
                    .unwrap_or_default()
            } else {
                card.get("parent")
                    .and_then(Value::as_str)
                    .map(|p| format!("via token {p}"))
                    .unwrap_or_default()
            };
            // A domain's user shows as NAME@DOMAIN.
            let user = match card.get("domain").and_then(Value::as_str) {
                Some(d) if !d.is_empty() => format!("{}@{d}", text(card, "user")),
                _ => text(card, "user"),
            };
            vec![
                text(card, "id"),
                user,
                text(card, "method"),
                status_of(card, now),
                conn,
                text(card, "addr"),
                expires,
                note,
            ]
        })
        .collect();
    emit(&render::table(
        &[
            "ID", "USER", "METHOD", "STATUS", "CONN", "ADDR", "EXPIRES", "NOTE",
        ],
        &rows,
    ))
}

/// One keycard, a field per line (times as ISO 8601 and from now).
fn print_card(card: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return emit(&format!(
            "{}\n",
            serde_json::to_string_pretty(&render::to_json(card))?
        ));
    }
    const TIMES: [&str; 5] = [
        "issued_at",
        "expires_at",
        "max_until",
        "last_keepalive",
        "revoked_at",
    ];
    let now = render::now_ms();
    let Value::Map(fields) = card else {
        bail!("the server sent a keycard that is not a map");
    };
    let width = fields
        .iter()
        .filter_map(|(k, _)| k.as_str())
        .map(str::len)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in fields.iter().filter(|(_, v)| !v.is_nil()) {
        let key = render::plain(k);
        let value = match (k.as_str(), v.as_u64()) {
            (Some("status"), _) => status_of(card, now),
            (Some(name), Some(ms)) if TIMES.contains(&name) => render::when(ms, now),
            _ => render::plain(v),
        };
        outln!(out, "{key:width$}  {value}");
    }
    emit(&out)
}

async fn show_card(c: &Client, id: &str) -> anyhow::Result<Value> {
    c.request(Msg::new().with("action", "keycard_show").with("id", id))
        .await
        .map(card_fields)
        .with_context(|| format!("keycard {id}"))
}

/// Sends a `keycard_revoke`, prints how many keycards it revoked and
/// returns that.
async fn revoke(c: &Client, msg: Msg) -> anyhow::Result<u64> {
    let r = c.request(msg.with("action", "keycard_revoke")).await?;
    let n = r.get("revoked").and_then(Value::as_u64).unwrap_or(0);
    emit(&format!(
        "revoked {n} keycard{}\n",
        if n == 1 { "" } else { "s" }
    ))?;
    Ok(n)
}

pub(super) async fn keycard(cmd: KeycardCmd) -> anyhow::Result<()> {
    match cmd {
        KeycardCmd::Ls {
            conn,
            user,
            domain,
            method,
            requester,
            json,
        } => {
            let c = connect(&conn.conn()).await?;
            let f = CardFilter {
                user,
                domain,
                method,
                requester,
            };
            print_cards(&list_cards(&c, &f).await?, json)
        }
        KeycardCmd::Show { conn, id, json } => {
            let c = connect(&conn.conn()).await?;
            print_card(&show_card(&c, &id).await?, json)
        }
        KeycardCmd::Revoke {
            conn,
            id,
            user,
            requester,
            parent,
        } => {
            let c = connect(&conn.conn()).await?;
            let mut msg = Msg::new();
            if let Some(id) = id {
                msg.set("id", id);
            }
            if let Some(u) = user {
                msg.set("user", u);
            }
            if let Some(r) = requester {
                msg.set("requester", r);
            }
            if let Some(p) = parent {
                msg.set("parent", p);
            }
            revoke(&c, msg).await.map(|_| ())
        }
    }
}

pub(super) async fn token(cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            conn,
            user,
            ttl,
            label,
            method,
        } => {
            let c = connect(&conn.conn()).await?;
            let mut msg = Msg::new()
                .with("action", "token_create")
                .with("user", user.as_str())
                .with("ttl", ttl);
            if let Some(l) = label {
                msg.set("label", l);
            }
            if let Some(m) = method {
                msg.set("method", m);
            }
            let r = c.request(msg).await?;
            let Some(token) = r.get("token").and_then(Value::as_str) else {
                bail!("the server's reply holds no token");
            };
            let token = Password::new(token);
            let id = r.get("id").and_then(Value::as_str).unwrap_or("?");
            let expires = r
                .get("expires_at")
                .and_then(Value::as_u64)
                .map_or_else(|| "?".to_owned(), |ms| render::when(ms, render::now_ms()));
            say!("{}", token.expose());
            say_err!("token {id} for user {user}, expires {expires}");
            say_err!(
                "warning: the token is shown this once (the server keeps only its hash); \
                 store it now. Revoke it with `keycard token revoke {id}`."
            );
            Ok(())
        }
        TokenCmd::Ls { conn, user, json } => {
            let c = connect(&conn.conn()).await?;
            let f = CardFilter {
                user,
                domain: None,
                method: Some(TOKEN_METHOD.to_owned()),
                requester: None,
            };
            let mut cards = list_cards(&c, &f).await?;
            cards.retain(is_durable);
            print_cards(&cards, json)
        }
        TokenCmd::Revoke { conn, id } => {
            let c = connect(&conn.conn()).await?;
            if !is_durable(&show_card(&c, &id).await?) {
                bail!(
                    "keycard {id} is a login's, not a token; `keycard keycard revoke {id}` \
                     revokes it"
                );
            }
            let n = revoke(&c, Msg::new().with("id", id.as_str())).await?;
            if n == 0 {
                say_err!("token {id} was already revoked");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        use super::parse_ttl;
        assert_eq!(parse_ttl("45"), Ok(45));
        assert_eq!(parse_ttl("45s"), Ok(45));
        assert_eq!(parse_ttl("90m"), Ok(5400));
        assert_eq!(parse_ttl("12h"), Ok(43_200));
        assert_eq!(parse_ttl("30d"), Ok(2_592_000));
        assert_eq!(parse_ttl("1w"), Ok(604_800));
        assert_eq!(parse_ttl("1d12h"), Ok(129_600));
        assert_eq!(parse_ttl("1h30m15s"), Ok(5415));
        assert_eq!(parse_ttl(" 2h "), Ok(7200));
        assert_eq!(parse_ttl("007"), Ok(7));
        for bad in [
            "", "0", "0s", "0d0h", "-5", "+5", "5x", "h", "5 h", "1.5h", "5H", "1h5", "1m1h",
            "1h1h", "30d 2h", "1e3", "ten", "5sec",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} accepted");
        }
        // Overflow: beyond u64, and beyond what milliseconds can count.
        assert!(parse_ttl("18446744073709551616").is_err());
        assert!(parse_ttl("18446744073709551615").is_err());
        assert!(parse_ttl("99999999999999999w").is_err());
        assert!(parse_ttl("18446744073709551w1d").is_err());
        assert_eq!(parse_ttl("18446744073709551"), Ok(18_446_744_073_709_551));
        assert!(parse_ttl("18446744073709552").is_err());
    }

    #[test]
    fn keycard_ids() {
        use crate::login::keycard_id_of;
        let id = "0123456789ABCDEF0123456789abcdef";
        assert_eq!(
            keycard_id_of(id).as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert!(keycard_id_of("0123").is_none());
        assert!(keycard_id_of(&"g".repeat(32)).is_none());
        // A token's id, and a whole token as `token create` printed it.
        let token = format!("kct_{id}_{}", "5".repeat(64));
        assert_eq!(
            keycard_id_of(&token).as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(
            keycard_id_of(&format!("kct_{id}")).as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert!(keycard_id_of(&format!("kct_{}_{}", "z".repeat(32), "5".repeat(64))).is_none());
        assert!(keycard_id_of("kct_").is_none());
    }
}
