//! A deliberately small HTTP/1.1 server side: one request per connection, bodies only with
//! `Content-Length`, hard caps on the head and the body.

use std::io::{Read, Write};

/// Largest request body accepted (413 above it).
pub const MAX_BODY: u64 = 1 << 20;
/// Largest request head (request line and headers; 431 above it).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines accepted (431 above it).
pub const MAX_HEADERS: usize = 64;
/// Longest time a client may take to send its request head, however it trickles (408).
pub const HEAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// GET, PUT, ...
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body (empty without Content-Length).
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content-Type.
    pub content_type: String,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json".into(),
            body: value.to_string().into_bytes(),
        }
    }

    /// A JSON error: `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": message }))
    }

    /// A plain body with its content type.
    pub fn text(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type: content_type.into(),
            body,
        }
    }

    /// Writes the response, with `Connection: close`.
    pub fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        let head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len()
        );
        out.write_all(head.as_bytes())?;
        out.write_all(&self.body)?;
        out.flush()
    }
}

/// The standard reason phrase of the statuses we send.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Reads one request; a malformed, oversized or slow one becomes the error response to
/// send (`None` when the peer closed the connection before sending anything).
pub fn read_request(stream: &mut impl Read) -> Result<Request, Option<Response>> {
    let (head, mut extra) = read_head(stream)?;
    let text = std::str::from_utf8(&head)
        .map_err(|_| Some(Response::error(400, "the request head is not UTF-8 text")))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut words = request_line.split(' ');
    let (method, target, version) = match (words.next(), words.next(), words.next(), words.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() && t.starts_with('/') => (m, t, v),
        _ => {
            return Err(Some(Response::error(
                400,
                "the request line is not \"METHOD /path HTTP/1.1\"",
            )))
        }
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(Some(Response::error(
            400,
            &format!("HTTP version {version:?} is not supported: speak HTTP/1.1"),
        )));
    }
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        if headers.len() == MAX_HEADERS {
            return Err(Some(Response::error(
                431,
                &format!("the request has more than {MAX_HEADERS} header lines"),
            )));
        }
        let (name, value) = line.split_once(':').ok_or_else(|| {
            Some(Response::error(
                400,
                &format!("header line {line:?} has no ':'"),
            ))
        })?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut request = Request {
        method: method.to_string(),
        path: target.split('?').next().unwrap_or(target).to_string(),
        headers,
        body: Vec::new(),
    };
    let length = body_length(&request)?;
    if extra.len() as u64 > length {
        extra.truncate(length as usize);
    }
    request.body = extra;
    let missing = length as usize - request.body.len();
    if missing > 0 {
        let start = request.body.len();
        request.body.resize(length as usize, 0);
        stream.read_exact(&mut request.body[start..]).map_err(|_| {
            Some(Response::error(
                408,
                &format!("the request body ended before its Content-Length of {length} bytes"),
            ))
        })?;
    }
    Ok(request)
}

/// The body length the headers announce, checked against the cap.
fn body_length(request: &Request) -> Result<u64, Option<Response>> {
    if request.header("transfer-encoding").is_some() {
        return Err(Some(Response::error(
            411,
            "Transfer-Encoding bodies are not supported: send the body with a Content-Length",
        )));
    }
    let mut length = None;
    for (name, value) in &request.headers {
        if name == "content-length" {
            let v: u64 = value.parse().map_err(|_| {
                Some(Response::error(
                    400,
                    &format!("Content-Length {value:?} is not a number"),
                ))
            })?;
            if length.is_some_and(|l| l != v) {
                return Err(Some(Response::error(
                    400,
                    "the request has two different Content-Length headers",
                )));
            }
            length = Some(v);
        }
    }
    let length = length.unwrap_or(0);
    if length > MAX_BODY {
        return Err(Some(Response::error(
            413,
            &format!("the request body of {length} bytes is larger than the {MAX_BODY}-byte limit"),
        )));
    }
    Ok(length)
}

/// Reads up to the end of the head; returns it and whatever body bytes came with it.
fn read_head(stream: &mut impl Read) -> Result<(Vec<u8>, Vec<u8>), Option<Response>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let mut scanned: usize = 0;
    let started = std::time::Instant::now();
    loop {
        let window_start = scanned.saturating_sub(3);
        if let Some(pos) = buf[window_start..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
        {
            let end = window_start + pos;
            let extra = buf[end + 4..].to_vec();
            buf.truncate(end);
            return Ok((buf, extra));
        }
        scanned = buf.len();
        if started.elapsed() > HEAD_DEADLINE {
            return Err(Some(Response::error(
                408,
                &format!(
                    "the request head did not arrive within {} s",
                    HEAD_DEADLINE.as_secs()
                ),
            )));
        }
        if buf.len() > MAX_HEAD {
            return Err(Some(Response::error(
                431,
                &format!("the request head is larger than {MAX_HEAD} bytes"),
            )));
        }
        match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(None),
            Ok(0) => {
                return Err(Some(Response::error(
                    400,
                    "the connection closed before the end of the request head",
                )))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) if buf.is_empty() => return Err(None),
            Err(_) => {
                return Err(Some(Response::error(
                    408,
                    "the request head did not arrive in time",
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Request, Option<Response>> {
        read_request(&mut std::io::Cursor::new(raw.to_vec()))
    }

    fn status(raw: &[u8]) -> u16 {
        parse(raw).unwrap_err().unwrap().status
    }

    #[test]
    fn a_request_with_a_body_is_parsed() {
        let r = parse(b"POST /v1/guests?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nX-A: b:c\r\n\r\nabcdEXTRA")
            .unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/guests");
        assert_eq!(r.header("x-a"), Some("b:c"));
        assert_eq!(r.body, b"abcd");
        let r = parse(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert!(r.body.is_empty());
    }

    #[test]
    fn bad_requests_get_the_right_status() {
        assert_eq!(status(b"GET /\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/2\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nnocolon\r\n\r\n"), 400);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 1048577\r\n\r\n"),
            413
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"),
            408
        );
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        assert_eq!(status(&big), 431);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status(&many), 431);
        assert!(parse(b"").unwrap_err().is_none());
    }

    #[test]
    fn responses_carry_length_and_close() {
        let mut out = Vec::new();
        Response::error(404, "no").write_to(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Content-Length: 14\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("{\"error\":\"no\"}"));
    }
}
