//! A small HTTP/1.1 client: one connection, one request at a time,
//! keep-alive, bounded reads. Only what keycard's REST API needs: no TLS
//! yet, no redirects followed (a login's `303` is an answer, not a place
//! to go), no compression.
//!
//! Why not hyper's client: the load generator (`keycard-bench`) runs on
//! the same cores as the server it measures and reports its own CPU time
//! per request, so the client must cost little and stay comparable with
//! the hand-written loop it replaces; hyper's connection task adds a
//! channel hop and a task wake-up per request. The response head is
//! parsed with `httparse`, the parser hyper itself uses.

use std::ops::Range;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

use super::RestError;

/// Most bytes a response head may take.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields a response may have.
pub const MAX_HEADERS: usize = 64;
/// Most bytes a response body may take (the msgpack client's largest
/// message).
pub const MAX_BODY: usize = 64 << 20;

/// An HTTP response: status, header fields and body.
#[derive(Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The head as received (field names and values are ranges into it).
    head: String,
    /// (name, value) ranges into `head`, in the order received.
    fields: Vec<(Range<usize>, Range<usize>)>,
    /// The body (decoded from chunks when it was chunked).
    pub body: Vec<u8>,
    /// Whether the answer was HTTP/1.0.
    http10: bool,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers().collect::<Vec<_>>())
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

impl Response {
    /// The value of the first field named `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Every header field as (name, value), in the order received.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields
            .iter()
            .map(|(k, v)| (&self.head[k.clone()], &self.head[v.clone()]))
    }

    /// The body as JSON (`Null` when it is empty).
    pub fn json(&self) -> Result<serde_json::Value, RestError> {
        if self.body.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| RestError::Protocol(format!("the answer is not JSON: {e}")))
    }

    /// Whether the server will close the connection after this response
    /// (it says so, or it speaks HTTP/1.0).
    fn closes(&self) -> bool {
        self.http10
            || self
                .header("connection")
                .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }
}

/// How the body of a response ends (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body (`HEAD`, 1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the server closes the connection.
    Close,
}

/// A parsed response head: the response without its body, and how the
/// body is framed.
struct Head {
    response: Response,
    framing: Framing,
}

/// Parses the head at the start of `buf`: `Ok(None)` when more bytes are
/// needed, else the head and its length. `head_request` says the request
/// was `HEAD` (its response has no body whatever it announces).
fn parse_head(buf: &[u8], head_request: bool) -> Result<Option<(Head, usize)>, RestError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(RestError::Http(format!(
                "a response head over {MAX_HEAD} bytes"
            )))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(RestError::Http(format!("malformed response head: {e}"))),
    };
    if len > MAX_HEAD {
        return Err(RestError::Http(format!(
            "a response head over {MAX_HEAD} bytes"
        )));
    }
    let status = parsed
        .code
        .ok_or_else(|| RestError::Http("a response without a status".into()))?;
    // The fields are kept as ranges into one copy of the head: one
    // allocation however many fields there are.
    let mut head = String::with_capacity(len);
    let mut fields = Vec::with_capacity(parsed.headers.len());
    let mut length = None;
    let mut chunked = false;
    for h in parsed.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        let value = value.trim();
        let name = head.len()..head.len() + h.name.len();
        head.push_str(h.name);
        let at = head.len();
        head.push_str(value);
        fields.push((name, at..head.len()));
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| RestError::Http("a malformed Content-Length".into()))?;
            // Two different lengths: which one frames the body is anyone's
            // guess (a smuggling vector), so neither is believed.
            if length.is_some_and(|l| l != n) {
                return Err(RestError::Http("conflicting Content-Length fields".into()));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked must be the last coding; any other coding is not
            // one this client decodes.
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(RestError::Http(format!(
                    "an unsupported Transfer-Encoding {value:?}"
                )));
            }
            chunked = true;
        }
    }
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(RestError::Http(format!(
                "a response body of {n} bytes (at most {MAX_BODY})"
            )));
        }
        Framing::Length(n)
    } else {
        Framing::Close
    };
    Ok(Some((
        Head {
            response: Response {
                status,
                head,
                fields,
                body: Vec::new(),
                http10: parsed.version == Some(0),
            },
            framing,
        },
        len,
    )))
}

/// Decodes a chunked body at the start of `buf`: `Ok(None)` when more
/// bytes are needed, else the body and how many bytes it took (trailer
/// fields are read and dropped).
fn parse_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, RestError> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let rest = buf.get(at..).unwrap_or_default();
        let (len, size) = match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete((n, size))) => (n, size),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(RestError::Http("a malformed chunk size".into())),
        };
        let size = usize::try_from(size)
            .ok()
            .filter(|s| body.len().saturating_add(*s) <= MAX_BODY)
            .ok_or_else(|| RestError::Http(format!("a chunked body over {MAX_BODY} bytes")))?;
        at += len;
        if size == 0 {
            // The trailer: fields up to an empty line.
            loop {
                let rest = buf.get(at..).unwrap_or_default();
                let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
                    if rest.len() > MAX_HEAD {
                        return Err(RestError::Http("an endless chunked trailer".into()));
                    }
                    return Ok(None);
                };
                at += end + 2;
                if end == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        let Some(data) = buf.get(at..at + size) else {
            return Ok(None);
        };
        body.extend_from_slice(data);
        at += size;
        match buf.get(at..at + 2) {
            None => return Ok(None),
            Some(b"\r\n") => at += 2,
            Some(_) => return Err(RestError::Http("a chunk without its CRLF".into())),
        }
    }
}

/// What a [`Connection`] reads and writes: a TCP socket, or TLS over one.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync> Io for T {}

/// One HTTP/1.1 connection. Requests go one at a time; the connection is
/// kept open between them unless either side said `Connection: close`.
pub struct Connection {
    stream: Box<dyn Io>,
    /// The `Host` field sent with every request.
    host: String,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
    /// The request being written (kept to reuse its allocation).
    out: Vec<u8>,
    /// Set once the connection cannot carry another request.
    done: bool,
    /// Responses read on this connection so far.
    answered: u64,
    /// Whether the last request met a connection closed before any byte
    /// of an answer.
    unanswered: bool,
    /// What the connection can be bound to (HTTPS only).
    binding: Option<keycard_auth::ChannelBinding>,
}

impl Connection {
    /// Opens a connection to `addr`; `Host` names it as given.
    pub async fn connect(addr: &str) -> Result<Connection, RestError> {
        Connection::connect_to(addr, addr).await
    }

    /// Opens a connection to `addr`, sending `host` as the `Host` field.
    pub async fn connect_to(addr: impl ToSocketAddrs, host: &str) -> Result<Connection, RestError> {
        Connection::open(addr, host, None).await
    }

    /// Opens an HTTPS connection to `addr` trusting what `tls` trusts, the
    /// `Host` field naming it as given.
    pub async fn connect_tls(addr: &str, tls: &crate::ClientTls) -> Result<Connection, RestError> {
        Connection::open(addr, addr, Some(tls)).await
    }

    /// Opens a connection to `addr` (over TLS with `tls`), sending `host`
    /// as the `Host` field.
    pub async fn open(
        addr: impl ToSocketAddrs,
        host: &str,
        tls: Option<&crate::ClientTls>,
    ) -> Result<Connection, RestError> {
        let socket = TcpStream::connect(addr)
            .await
            .map_err(|e| RestError::Io(format!("cannot connect: {e}")))?;
        // Requests are small and answered one by one: Nagle would hold
        // each back for the previous one's ACK.
        let _ = socket.set_nodelay(true);
        let (stream, binding): (Box<dyn Io>, _) = match tls {
            Some(tls) => {
                let stream = tls
                    .connect(socket)
                    .await
                    .map_err(|e| RestError::Io(e.to_string()))?;
                let binding = crate::tls::binding_of(stream.get_ref().1);
                (Box::new(stream), Some(binding))
            }
            None => (Box::new(socket), None),
        };
        Ok(Connection {
            stream,
            host: host.to_owned(),
            buf: Vec::with_capacity(16 * 1024),
            out: Vec::with_capacity(1024),
            done: false,
            answered: 0,
            unanswered: false,
            binding,
        })
    }

    /// What the connection can be bound to (its TLS channel-binding
    /// data); `None` over plain HTTP.
    pub fn channel_binding(&self) -> Option<&keycard_auth::ChannelBinding> {
        self.binding.as_ref()
    }

    /// Whether the connection can carry another request.
    pub fn is_open(&self) -> bool {
        !self.done
    }

    /// How many responses this connection has read.
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// Whether the last request failed because the server had closed the
    /// connection: it ended before any byte of an answer (a kept
    /// connection the server let go while idle).
    pub fn closed_unanswered(&self) -> bool {
        self.unanswered
    }

    /// Sends one request and reads its response. `target` is the path and
    /// query as they go on the request line; `fields` are sent as given,
    /// after `Host` and `Content-Length` (which this sets). A field name or
    /// value holding CR, LF or NUL is refused: it would end the field early
    /// and smuggle another in.
    pub async fn send(
        &mut self,
        method: &str,
        target: &str,
        fields: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, RestError> {
        if self.done {
            return Err(RestError::Io("the connection is closed".into()));
        }
        self.unanswered = false;
        let bad = |s: &str| s.bytes().any(|b| matches!(b, b'\r' | b'\n' | b'\0'));
        if bad(method) || method.contains(' ') || bad(target) || target.contains(' ') {
            return Err(RestError::Request(
                "a method or target with spaces or line breaks".into(),
            ));
        }
        if let Some((k, _)) = fields.iter().find(|(k, v)| bad(k) || bad(v)) {
            return Err(RestError::Request(format!(
                "header field {k:?} holds a line break or NUL"
            )));
        }
        self.out.clear();
        let mut put = |s: &str| self.out.extend_from_slice(s.as_bytes());
        put(method);
        put(" ");
        put(target);
        put(" HTTP/1.1\r\nhost: ");
        put(&self.host);
        put("\r\ncontent-length: ");
        put(&body.len().to_string());
        put("\r\n");
        let mut closing = false;
        for (k, v) in fields {
            put(k);
            put(": ");
            put(v);
            put("\r\n");
            if k.eq_ignore_ascii_case("connection")
                && v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))
            {
                closing = true;
            }
        }
        put("\r\n");
        self.out.extend_from_slice(body);
        // A server that answers without reading the request (a connection
        // cap's `503`) may close before the request is all written: its
        // answer is still there to read, so a failed write is reported
        // only if no answer follows.
        let written = self.stream.write_all(&self.out).await;
        let read = self
            .read_response(method.eq_ignore_ascii_case("HEAD"))
            .await;
        let response = match (read, written) {
            (Ok(r), _) => r,
            (Err(e), Ok(())) => {
                self.done = true;
                return Err(e);
            }
            (Err(_), Err(e)) => {
                self.done = true;
                return Err(RestError::Io(format!("cannot send the request: {e}")));
            }
        };
        self.answered += 1;
        if closing || response.closes() {
            self.done = true;
        }
        Ok(response)
    }

    /// Reads one response (skipping interim 1xx ones).
    async fn read_response(&mut self, head_request: bool) -> Result<Response, RestError> {
        loop {
            let (head, len) = loop {
                if let Some(parsed) = parse_head(&self.buf, head_request)? {
                    break parsed;
                }
                // The end of the stream, or a reset, before any byte of
                // an answer: the server had let the connection go.
                let more = self.fill().await;
                if !matches!(more, Ok(true)) {
                    self.unanswered = self.buf.is_empty();
                }
                if !more? {
                    return Err(RestError::Io(if self.unanswered {
                        "the server closed the connection without answering".into()
                    } else {
                        "the server closed the connection mid-answer".into()
                    }));
                }
            };
            self.buf.drain(..len);
            let Head {
                mut response,
                framing,
            } = head;
            if (100..200).contains(&response.status) && response.status != 101 {
                continue;
            }
            match framing {
                Framing::Empty => {}
                Framing::Length(n) => {
                    while self.buf.len() < n {
                        if !self.fill().await? {
                            return Err(RestError::Io(
                                "the server closed the connection mid-body".into(),
                            ));
                        }
                    }
                    response.body = self.buf.drain(..n).collect();
                }
                Framing::Chunked => loop {
                    if let Some((body, used)) = parse_chunked(&self.buf)? {
                        response.body = body;
                        self.buf.drain(..used);
                        break;
                    }
                    if !self.fill().await? {
                        return Err(RestError::Io(
                            "the server closed the connection mid-body".into(),
                        ));
                    }
                },
                Framing::Close => {
                    while self.fill().await? {}
                    response.body = std::mem::take(&mut self.buf);
                    self.done = true;
                }
            }
            return Ok(response);
        }
    }

    /// Reads more bytes; `false` at the end of the stream.
    async fn fill(&mut self) -> Result<bool, RestError> {
        if self.buf.len() > MAX_HEAD + MAX_BODY {
            return Err(RestError::Http(format!(
                "a response over {} bytes",
                MAX_HEAD + MAX_BODY
            )));
        }
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) => Err(RestError::Io(format!("cannot read the answer: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> (Response, Framing, usize) {
        match parse_head(text.as_bytes(), false) {
            Ok(Some((h, n))) => (h.response, h.framing, n),
            other => panic!("{text:?}: {:?}", other.map(|o| o.is_some())),
        }
    }

    #[test]
    fn heads_and_their_framing() {
        let (r, f, n) = head("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nETag:  \"7\" \r\n\r\n{}");
        assert_eq!((r.status, f, n), (200, Framing::Length(2), 51));
        assert_eq!(r.header("etag"), Some("\"7\""));
        assert_eq!(r.header("content-length"), Some("2"));
        assert_eq!(r.headers().count(), 2);
        let (_, f, _) = head("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(f, Framing::Empty);
        let (_, f, _) = head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(f, Framing::Chunked);
        let (_, f, _) = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(f, Framing::Close);
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Le", false),
            Ok(None)
        ));
        // A HEAD request's answer has no body whatever it says.
        let Ok(Some((h, _))) = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true)
        else {
            panic!("head")
        };
        assert_eq!(h.framing, Framing::Empty);
    }

    #[test]
    fn bad_heads_are_errors_not_panics() {
        for bad in [
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert!(parse_head(bad.as_bytes(), false).is_err(), "{bad:?}");
        }
        let endless = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD));
        assert!(parse_head(endless.as_bytes(), false).is_err());
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x{i}: 1\r\n")).collect();
        let many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert!(parse_head(many.as_bytes(), false).is_err());
    }

    /// A server that answers each request on its connections with the
    /// next of `answers` (`None`: close the connection instead), and
    /// counts the connections it accepted.
    async fn canned(
        answers: Vec<Option<&'static str>>,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::Ordering;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut answers = answers.into_iter();
            'conns: while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let mut buf = Vec::new();
                loop {
                    // A whole request head (the tests send no body).
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 1024];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => continue 'conns,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .unwrap_or_default();
                    buf.drain(..end + 4);
                    match answers.next() {
                        Some(Some(a)) => {
                            if s.write_all(a.as_bytes()).await.is_err() {
                                continue 'conns;
                            }
                        }
                        Some(None) => continue 'conns,
                        None => return,
                    }
                    // After the last answer the server goes away.
                    if answers.len() == 0 {
                        return;
                    }
                }
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn one_connection_carries_the_answers_of_every_framing() {
        let (addr, accepted) = canned(vec![
            Some("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none"),
            Some("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n"),
            Some("HTTP/1.1 204 No Content\r\n\r\n"),
            Some("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nthree and the rest"),
        ])
        .await;
        let mut c = Connection::connect(&addr).await.expect("connect");
        let r = c.send("GET", "/a", &[], b"").await.expect("first");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"one"[..]));
        let r = c
            .send("POST", "/b", &[("x-a", "1")], b"")
            .await
            .expect("second");
        assert_eq!((r.status, r.body.as_slice()), (201, &b"two"[..]));
        let r = c.send("DELETE", "/c", &[], b"").await.expect("third");
        assert_eq!((r.status, r.body.len()), (204, 0));
        // Nothing that would end a field early is sent (and the
        // connection stays usable).
        for fields in [[("x-a", "1\r\nx-b: 2")], [("x-a\n", "1")], [("x-a", "\0")]] {
            assert!(matches!(
                c.send("GET", "/", &fields, b"").await,
                Err(RestError::Request(_))
            ));
        }
        assert!(matches!(
            c.send("GET", "/a b", &[], b"").await,
            Err(RestError::Request(_))
        ));
        let r = c.send("GET", "/d", &[], b"").await.expect("fourth");
        assert_eq!(r.body, b"three and the rest");
        assert!(!c.is_open(), "the server said it closes");
        assert_eq!(c.answered(), 4);
        assert!(c.send("GET", "/e", &[], b"").await.is_err());
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// A kept connection the server closed while it was idle is opened
    /// again for the next request; a connection closed mid-answer is an
    /// error, not a retry.
    #[tokio::test]
    async fn an_idle_connection_the_server_closed_is_reopened() {
        use super::super::RestClient;
        let (addr, accepted) = canned(vec![
            Some("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na"),
            None,
            Some("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb"),
            Some("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nc"),
        ])
        .await;
        let rest = RestClient::new(addr);
        assert_eq!(rest.send("GET", "/", &[], b"").await.expect("a").body, b"a");
        // The server reads the next request and closes without a word: it
        // goes again on a new connection.
        assert_eq!(rest.send("GET", "/", &[], b"").await.expect("b").body, b"b");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        // A body cut short is an error.
        assert!(matches!(
            rest.send("GET", "/", &[], b"").await,
            Err(RestError::Io(_))
        ));
    }

    #[test]
    fn chunked_bodies() {
        let body = b"4\r\nWiki\r\n6;ext=1\r\npedia \r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let Ok(Some((decoded, used))) = parse_chunked(body) else {
            panic!("complete")
        };
        assert_eq!(decoded, b"Wikipedia ");
        assert_eq!(&body[used..], b"NEXT");
        // Every prefix is incomplete, never an error or a panic.
        for end in 0..body.len() - 4 {
            assert!(
                matches!(parse_chunked(&body[..end]), Ok(None)),
                "prefix of {end}"
            );
        }
        assert!(parse_chunked(b"zz\r\n").is_err());
        assert!(parse_chunked(b"2\r\nabXY").is_err());
        assert!(parse_chunked(b"ffffffffffffffff\r\n").is_err());
    }
}
