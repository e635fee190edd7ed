//! The SIP message layer: a lossless, lazy model of a SIP message (RFC 3261 §7).
//!
//! Parsing splits a message into its start line, an ordered list of headers (names expanded from
//! compact forms, values kept as the bytes that arrived, continuation lines unfolded) and a body
//! framed by Content-Length. Nothing is interpreted beyond that: typed views of the headers a step
//! needs live in [`header`] and [`uri`] and are parsed on demand. Nothing in this module panics on
//! input, whatever the bytes.

pub mod check;
pub mod header;
pub mod multipart;
pub mod transaction;
pub mod uri;

use bytes::Bytes;
use std::fmt;

/// Largest message accepted on any transport (RFC 3261 leaves it open; 64 KiB covers the largest
/// SDP Teams sends with room to spare).
pub const MAX_MESSAGE_SIZE: usize = 65_535;

/// A SIP request method. Unknown methods are kept as their token (RFC 3261 §27.4).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Info,
    Update,
    Prack,
    Notify,
    Subscribe,
    Refer,
    Message,
    Publish,
    /// Any other token.
    Extension(String),
}

impl Method {
    /// Parses a method token (case-sensitive, RFC 3261 §7.1).
    pub fn from_token(token: &str) -> Method {
        match token {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "NOTIFY" => Method::Notify,
            "SUBSCRIBE" => Method::Subscribe,
            "REFER" => Method::Refer,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other => Method::Extension(other.to_string()),
        }
    }

    /// The method token as it goes on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Notify => "NOTIFY",
            Method::Subscribe => "SUBSCRIBE",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Extension(token) => token,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Header names Bridgehead knows; every other name is kept as it arrived (and compared
/// case-insensitively).
#[derive(Clone, Debug, Eq)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    Contact,
    Route,
    RecordRoute,
    ContentLength,
    ContentType,
    ContentEncoding,
    Supported,
    Require,
    ProxyRequire,
    Unsupported,
    Allow,
    Accept,
    Subject,
    Event,
    AllowEvents,
    ReferTo,
    ReferredBy,
    SessionExpires,
    Identity,
    Warning,
    RSeq,
    RAck,
    PEarlyMedia,
    MinSE,
    Reason,
    /// Any other header, with its name spelled as received.
    Other(String),
}

/// (compact letter, full name) pairs of RFC 3261 §7.3.3 and later RFCs.
const COMPACT: [(u8, HeaderName); 16] = [
    (b'v', HeaderName::Via),
    (b'f', HeaderName::From),
    (b't', HeaderName::To),
    (b'i', HeaderName::CallId),
    (b'm', HeaderName::Contact),
    (b'l', HeaderName::ContentLength),
    (b'c', HeaderName::ContentType),
    (b'e', HeaderName::ContentEncoding),
    (b'k', HeaderName::Supported),
    (b's', HeaderName::Subject),
    (b'o', HeaderName::Event),
    (b'u', HeaderName::AllowEvents),
    (b'r', HeaderName::ReferTo),
    (b'b', HeaderName::ReferredBy),
    (b'x', HeaderName::SessionExpires),
    (b'y', HeaderName::Identity),
];

impl PartialEq for HeaderName {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (HeaderName::Other(a), HeaderName::Other(b)) => a.eq_ignore_ascii_case(b),
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}

impl std::hash::Hash for HeaderName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        if let HeaderName::Other(name) = self {
            for b in name.bytes() {
                state.write_u8(b.to_ascii_lowercase());
            }
        }
    }
}

impl HeaderName {
    /// Parses a header name, expanding compact forms; matching is case-insensitive.
    pub fn parse(name: &str) -> HeaderName {
        if name.len() == 1 {
            let letter = name.as_bytes()[0].to_ascii_lowercase();
            if let Some((_, full)) = COMPACT.iter().find(|(c, _)| *c == letter) {
                return full.clone();
            }
        }
        Self::KNOWN
            .iter()
            .find(|known| known.as_str().eq_ignore_ascii_case(name))
            .cloned()
            .unwrap_or_else(|| HeaderName::Other(name.to_string()))
    }

    const KNOWN: [HeaderName; 31] = [
        HeaderName::Via,
        HeaderName::From,
        HeaderName::To,
        HeaderName::CallId,
        HeaderName::CSeq,
        HeaderName::MaxForwards,
        HeaderName::Contact,
        HeaderName::Route,
        HeaderName::RecordRoute,
        HeaderName::ContentLength,
        HeaderName::ContentType,
        HeaderName::ContentEncoding,
        HeaderName::Supported,
        HeaderName::Require,
        HeaderName::ProxyRequire,
        HeaderName::Unsupported,
        HeaderName::Allow,
        HeaderName::Accept,
        HeaderName::Subject,
        HeaderName::Event,
        HeaderName::AllowEvents,
        HeaderName::ReferTo,
        HeaderName::ReferredBy,
        HeaderName::SessionExpires,
        HeaderName::Identity,
        HeaderName::Warning,
        HeaderName::RSeq,
        HeaderName::RAck,
        HeaderName::PEarlyMedia,
        HeaderName::MinSE,
        HeaderName::Reason,
    ];

    /// The canonical (long) name, or the name as received for unknown headers.
    pub fn as_str(&self) -> &str {
        match self {
            HeaderName::Via => "Via",
            HeaderName::From => "From",
            HeaderName::To => "To",
            HeaderName::CallId => "Call-ID",
            HeaderName::CSeq => "CSeq",
            HeaderName::MaxForwards => "Max-Forwards",
            HeaderName::Contact => "Contact",
            HeaderName::Route => "Route",
            HeaderName::RecordRoute => "Record-Route",
            HeaderName::ContentLength => "Content-Length",
            HeaderName::ContentType => "Content-Type",
            HeaderName::ContentEncoding => "Content-Encoding",
            HeaderName::Supported => "Supported",
            HeaderName::Require => "Require",
            HeaderName::ProxyRequire => "Proxy-Require",
            HeaderName::Unsupported => "Unsupported",
            HeaderName::Allow => "Allow",
            HeaderName::Accept => "Accept",
            HeaderName::Subject => "Subject",
            HeaderName::Event => "Event",
            HeaderName::AllowEvents => "Allow-Events",
            HeaderName::ReferTo => "Refer-To",
            HeaderName::ReferredBy => "Referred-By",
            HeaderName::SessionExpires => "Session-Expires",
            HeaderName::Identity => "Identity",
            HeaderName::Warning => "Warning",
            HeaderName::RSeq => "RSeq",
            HeaderName::RAck => "RAck",
            HeaderName::PEarlyMedia => "P-Early-Media",
            HeaderName::MinSE => "Min-SE",
            HeaderName::Reason => "Reason",
            HeaderName::Other(name) => name,
        }
    }

    /// True for headers the B2BUA writes itself on each leg: they never cross from the other leg and
    /// rules cannot edit them directly.
    pub fn is_b2bua_owned(&self) -> bool {
        matches!(
            self,
            HeaderName::Via
                | HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::CSeq
                | HeaderName::MaxForwards
                | HeaderName::Contact
                | HeaderName::Route
                | HeaderName::RecordRoute
                | HeaderName::ContentLength
                | HeaderName::ContentType
                | HeaderName::Supported
                | HeaderName::Require
                | HeaderName::ProxyRequire
                | HeaderName::Unsupported
                | HeaderName::Allow
                | HeaderName::RSeq
                | HeaderName::RAck
                | HeaderName::SessionExpires
                | HeaderName::MinSE
        )
    }

    /// True when `other` names this header (case-insensitive, compact forms expanded).
    pub fn matches(&self, other: &str) -> bool {
        *self == HeaderName::parse(other)
    }
}

/// One header line: its name and its value as the bytes that arrived (unfolded, trimmed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: HeaderName,
    pub value: Bytes,
}

impl Header {
    /// A header built from a name and a textual value.
    pub fn new(name: HeaderName, value: impl Into<String>) -> Header {
        Header {
            name,
            value: Bytes::from(value.into()),
        }
    }

    /// The value as text, when it is UTF-8.
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }
}

/// The first line of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request { method: Method, uri: String },
    Response { status: u16, reason: String },
}

/// A SIP request or response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub start: StartLine,
    pub headers: Vec<Header>,
    pub body: Bytes,
}

/// Why a message could not be accepted as it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("empty message")]
    Empty,
    #[error("message larger than {MAX_MESSAGE_SIZE} bytes")]
    TooLarge,
    #[error("malformed start line")]
    StartLine,
    #[error("unsupported SIP version")]
    Version,
    #[error("malformed Request-URI")]
    RequestUri,
    #[error("malformed header line")]
    HeaderLine,
    #[error("malformed Content-Length")]
    ContentLength,
    #[error("Content-Length larger than the message")]
    Truncated,
    #[error("malformed {0} header")]
    Header(&'static str),
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("more than one {0} header")]
    Repeated(&'static str),
    #[error("CSeq method does not match the request method")]
    CSeqMethod,
    #[error("Via has no transaction identifier (branch)")]
    Branch,
    #[error("malformed status code")]
    Status,
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    #[error("a header field longer than {0} bytes")]
    HeaderTooLong(usize),
    #[error("new calls from this source faster than allowed")]
    SourceRate,
    #[error("overloaded: new calls refused for now")]
    Overloaded,
}

impl Fault {
    /// The status code a request with this fault is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Fault::Version => 505,
            Fault::TooLarge => 513,
            Fault::SourceRate | Fault::Overloaded => 503,
            _ => 400,
        }
    }
}

/// A parse failure: the fault, and the message as far as it could be read (so that a request
/// can still be answered when its Via, From, To, Call-ID and CSeq are usable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub fault: Fault,
    pub partial: Option<Box<Message>>,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fault.fmt(f)
    }
}

impl std::error::Error for ParseError {}

impl From<Fault> for ParseError {
    fn from(fault: Fault) -> Self {
        ParseError {
            fault,
            partial: None,
        }
    }
}

/// How the body of a message is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// A datagram: the body is Content-Length bytes (or the rest, without one); trailing octets
    /// are ignored (RFC 3261 §18.3).
    Datagram,
    /// A stream: Content-Length is mandatory (missing means 0).
    Stream,
}

impl Message {
    /// Parses one message from a whole datagram.
    pub fn parse(bytes: &Bytes) -> Result<Message, ParseError> {
        parse_message(bytes, Framing::Datagram).map(|(msg, _)| msg)
    }

    /// The method of a request.
    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { status, .. } => Some(*status),
            StartLine::Request { .. } => None,
        }
    }

    /// True for a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The value of the first header with this name.
    pub fn header(&self, name: &HeaderName) -> Option<&Bytes> {
        self.headers
            .iter()
            .find(|h| h.name == *name)
            .map(|h| &h.value)
    }

    /// The first header with this name, as text.
    pub fn header_str(&self, name: &HeaderName) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of a header, in order.
    pub fn headers_named<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a Bytes> {
        self.headers
            .iter()
            .filter(move |h| h.name == *name)
            .map(|h| &h.value)
    }

    /// Removes every header with this name.
    pub fn remove_header(&mut self, name: &HeaderName) {
        self.headers.retain(|h| h.name != *name);
    }

    /// Replaces every header with this name by one with the given value, at the position of the first.
    pub fn set_header(&mut self, name: HeaderName, value: impl Into<String>) {
        let value = Bytes::from(value.into());
        match self.headers.iter().position(|h| h.name == name) {
            Some(pos) => {
                self.headers[pos].value = value;
                let mut index = 0;
                self.headers.retain(|h| {
                    index += 1;
                    index - 1 <= pos || h.name != name
                });
            }
            None => self.headers.push(Header { name, value }),
        }
    }

    /// Appends a header.
    pub fn push_header(&mut self, name: HeaderName, value: impl Into<String>) {
        self.headers.push(Header::new(name, value));
    }

    /// Serializes the message; Content-Length is always written, computed from the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(512 + self.body.len());
        match &self.start {
            StartLine::Request { method, uri } => {
                out.extend_from_slice(method.as_str().as_bytes());
                out.push(b' ');
                out.extend_from_slice(uri.as_bytes());
                out.extend_from_slice(b" SIP/2.0\r\n");
            }
            StartLine::Response { status, reason } => {
                out.extend_from_slice(b"SIP/2.0 ");
                push_decimal(out, u64::from(*status));
                out.push(b' ');
                out.extend_from_slice(reason.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        for header in &self.headers {
            if header.name == HeaderName::ContentLength {
                continue;
            }
            out.extend_from_slice(header.name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(&header.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(out, self.body.len() as u64);
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&self.body);
    }

    /// The serialized message.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

fn push_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A response to `req`: Via, From, To (with `to_tag` added when To has none), Call-ID and CSeq
/// copied from the request.
pub fn response_to(
    req: &Message,
    status: u16,
    reason: Option<&str>,
    to_tag: Option<&str>,
) -> Message {
    let mut headers = Vec::with_capacity(12);
    for header in &req.headers {
        match header.name {
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                headers.push(header.clone())
            }
            HeaderName::To => {
                let value = match (to_tag, header.value_str()) {
                    (Some(tag), Some(value)) if status > 100 && !has_tag(value) => {
                        Bytes::from(format!("{value};tag={tag}"))
                    }
                    _ => header.value.clone(),
                };
                headers.push(Header {
                    name: HeaderName::To,
                    value,
                });
            }
            _ => {}
        }
    }
    Message {
        start: StartLine::Response {
            status,
            reason: reason.unwrap_or(reason_phrase(status)).to_string(),
        },
        headers,
        body: Bytes::new(),
    }
}

fn has_tag(value: &str) -> bool {
    header::NameAddr::parse(value).is_ok_and(|addr| addr.tag().is_some())
}

/// The standard reason phrase of a status code.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        199 => "Early Dialog Terminated",
        200 => "OK",
        202 => "Accepted",
        204 => "No Notification",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        412 => "Conditional Request Failed",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        417 => "Unknown Resource-Priority",
        420 => "Bad Extension",
        421 => "Extension Required",
        422 => "Session Interval Too Small",
        423 => "Interval Too Brief",
        428 => "Use Identity Header",
        429 => "Provide Referrer Identity",
        433 => "Anonymity Disallowed",
        436 => "Bad Identity-Info",
        437 => "Unsupported Certificate",
        438 => "Invalid Identity Header",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        493 => "Undecipherable",
        494 => "Security Agreement Required",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        580 => "Precondition Failure",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        607 => "Unwanted",
        608 => "Rejected",
        // RFC 3261 §21: an unknown code is read as the x00 of its class.
        _ => match status / 100 {
            1 => "Session Progress",
            2 => "OK",
            3 => "Redirection",
            4 => "Request Failure",
            5 => "Server Failure",
            _ => "Global Failure",
        },
    }
}

/// Where the header block ends: (end of the last header line, start of the body).
fn find_header_end(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(off) = memchr(b'\n', &bytes[i..]) {
        let nl = i + off;
        // A line break followed directly by another line break (optionally CR LF) ends the headers.
        let next = nl + 1;
        if bytes.get(next) == Some(&b'\n') {
            return Some((nl, next + 1));
        }
        if bytes.get(next) == Some(&b'\r') && bytes.get(next + 1) == Some(&b'\n') {
            return Some((nl, next + 2));
        }
        i = next;
    }
    None
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

/// Stream framing: the length of the first complete message in `buf` (after any leading CRLF
/// keep-alives, which are counted in the length), `Ok(None)` when more bytes are needed.
/// An error means the stream cannot be framed any more and the connection must be closed.
pub fn frame_stream(buf: &[u8]) -> Result<Option<usize>, Fault> {
    let skip = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    let rest = &buf[skip..];
    let Some((header_end, body_start)) = find_header_end(rest) else {
        return if rest.len() > MAX_MESSAGE_SIZE {
            Err(Fault::TooLarge)
        } else {
            Ok(None)
        };
    };
    let length = content_length_of(&rest[..header_end])?.unwrap_or(0);
    let total = body_start + length;
    if total > MAX_MESSAGE_SIZE {
        return Err(Fault::TooLarge);
    }
    Ok((rest.len() >= total).then_some(skip + total))
}

/// Finds Content-Length (or `l`) in a raw header block; conflicting values are an error.
fn content_length_of(block: &[u8]) -> Result<Option<usize>, Fault> {
    let mut found: Option<usize> = None;
    for line in block.split(|b| *b == b'\n') {
        let Some(colon) = memchr(b':', line) else {
            continue;
        };
        let name = trim(&line[..colon]);
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let value = parse_length(trim(&line[colon + 1..]))?;
        match found {
            Some(previous) if previous != value => return Err(Fault::ContentLength),
            _ => found = Some(value),
        }
    }
    Ok(found)
}

/// The Content-Length the parsed headers declare (compact `l` included); conflicting values
/// are an error.
fn declared_length(headers: &[Header]) -> Result<Option<usize>, Fault> {
    let mut found: Option<usize> = None;
    for header in headers
        .iter()
        .filter(|h| h.name == HeaderName::ContentLength)
    {
        let value = parse_length(&header.value)?;
        match found {
            Some(previous) if previous != value => return Err(Fault::ContentLength),
            _ => found = Some(value),
        }
    }
    Ok(found)
}

fn parse_length(value: &[u8]) -> Result<usize, Fault> {
    if value.is_empty() || value.len() > 9 || !value.iter().all(u8::is_ascii_digit) {
        return Err(Fault::ContentLength);
    }
    Ok(value
        .iter()
        .fold(0usize, |acc, d| acc * 10 + usize::from(d - b'0')))
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    &bytes[start..end.max(start)]
}

/// Parses one message from `bytes` and returns it with the number of bytes it used.
pub fn parse_message(bytes: &Bytes, framing: Framing) -> Result<(Message, usize), ParseError> {
    let skip = bytes
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .ok_or(Fault::Empty)?;
    if bytes.len() - skip > MAX_MESSAGE_SIZE && framing == Framing::Stream {
        return Err(Fault::TooLarge.into());
    }
    let rest = bytes.slice(skip..);
    // A datagram without the blank line is taken whole as the header block (no body).
    let (header_end, body_start) = match find_header_end(&rest) {
        Some(found) => found,
        None if framing == Framing::Datagram => (rest.len(), rest.len()),
        None => return Err(Fault::Truncated.into()),
    };
    let block = rest.slice(..header_end);
    let mut lines = block
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let first = lines.next().ok_or(Fault::Empty)?;
    let (start, start_fault) = parse_start_line(first)?;

    let mut fault = start_fault;
    // A NUL stands in a header only escaped, as a quoted-pair (RFC 3261 §25.1; RFC 4475
    // `intmeth`): a raw one would cut the value short wherever it is read as a C string.
    let raw_nul = memchr(0, &block).is_some()
        && block
            .iter()
            .enumerate()
            .any(|(at, byte)| *byte == 0 && (at == 0 || block[at - 1] != b'\\'));
    if raw_nul {
        fault = fault.or(Some(Fault::HeaderLine));
    }
    let mut headers: Vec<Header> = Vec::with_capacity(16);
    let mut folded: Option<(HeaderName, Vec<u8>)> = None;
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // Continuation of the previous header value (RFC 3261 §7.3.1).
            match (&mut folded, headers.last_mut()) {
                (Some((_, value)), _) => {
                    value.push(b' ');
                    value.extend_from_slice(trim(line));
                }
                (None, Some(last)) => {
                    let mut value = last.value.to_vec();
                    value.push(b' ');
                    value.extend_from_slice(trim(line));
                    let name = last.name.clone();
                    headers.pop();
                    folded = Some((name, value));
                }
                (None, None) => fault = fault.or(Some(Fault::HeaderLine)),
            }
            continue;
        }
        if let Some((name, value)) = folded.take() {
            headers.push(Header {
                name,
                value: Bytes::from(value),
            });
        }
        let Some(colon) = memchr(b':', line) else {
            fault = fault.or(Some(Fault::HeaderLine));
            continue;
        };
        let raw_name = trim(&line[..colon]);
        let Some(name) = std::str::from_utf8(raw_name)
            .ok()
            .filter(|n| !n.is_empty() && n.bytes().all(header::is_token_char))
        else {
            fault = fault.or(Some(Fault::HeaderLine));
            continue;
        };
        let value = trim(&line[colon + 1..]);
        let offset = value.as_ptr() as usize - block.as_ptr() as usize;
        headers.push(Header {
            name: HeaderName::parse(name),
            value: block.slice(offset..offset + value.len()),
        });
    }
    if let Some((name, value)) = folded.take() {
        headers.push(Header {
            name,
            value: Bytes::from(value),
        });
    }

    let mut msg = Message {
        start,
        headers,
        body: Bytes::new(),
    };
    let declared = match declared_length(&msg.headers) {
        Ok(length) => length,
        Err(err) => {
            fault = fault.or(Some(err));
            None
        }
    };
    let available = rest.len() - body_start.min(rest.len());
    let body_len = match (declared, framing) {
        (Some(length), _) if length <= available => length,
        (Some(_), _) => {
            fault = fault.or(Some(Fault::Truncated));
            0
        }
        (None, Framing::Datagram) => available,
        (None, Framing::Stream) => 0,
    };
    let body_start = body_start.min(rest.len());
    msg.body = rest.slice(body_start..body_start + body_len);
    match fault {
        Some(fault) => Err(ParseError {
            fault,
            partial: Some(Box::new(msg)),
        }),
        None => Ok((msg, skip + body_start + body_len)),
    }
}

/// Parses the start line. A request line with a fault still yields a request, so the request
/// can be answered; a line that is neither request nor response is an error.
fn parse_start_line(line: &[u8]) -> Result<(StartLine, Option<Fault>), ParseError> {
    let text = std::str::from_utf8(line).map_err(|_| Fault::StartLine)?;
    if let Some(rest) = text.strip_prefix("SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let mut parts = rest.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let code = parts.next().unwrap_or_default();
        let reason = parts.next().unwrap_or_default();
        if version != "2.0" {
            return Err(Fault::Version.into());
        }
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Fault::Status.into());
        }
        let status: u16 = code.parse().map_err(|_| Fault::Status)?;
        if !(100..=699).contains(&status) {
            return Err(Fault::Status.into());
        }
        return Ok((
            StartLine::Response {
                status,
                reason: reason.to_string(),
            },
            None,
        ));
    }
    // Request-Line = Method SP Request-URI SP SIP-Version
    let parts: Vec<&str> = text.split(' ').collect();
    let method = parts.first().copied().unwrap_or_default();
    if method.is_empty() || !method.bytes().all(header::is_token_char) {
        return Err(Fault::StartLine.into());
    }
    let method = Method::from_token(method);
    let uri = parts.get(1).copied().unwrap_or_default().to_string();
    let request = StartLine::Request { method, uri };
    let fault = if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        Some(Fault::StartLine)
    } else if !parts[2].eq_ignore_ascii_case("SIP/2.0") {
        Some(
            if parts[2].len() > 4
                && parts[2]
                    .get(..4)
                    .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
            {
                Fault::Version
            } else {
                Fault::StartLine
            },
        )
    } else if !uri::is_plausible_request_uri(parts[1]) {
        Some(Fault::RequestUri)
    } else {
        None
    };
    Ok((request, fault))
}

/// CRLF line ends, every line terminated.
pub fn crlf_lines(text: &str) -> String {
    let mut out = text.replace("\r\n", "\n").replace('\n', "\r\n");
    if !out.ends_with("\r\n") && !out.is_empty() {
        out.push_str("\r\n");
    }
    out
}

/// SIP text as a person writes it (LF line ends, no Content-Length) in wire form: CRLF line
/// ends and, when the text has none, a Content-Length for its body.
pub fn wire_text(text: &str) -> String {
    let text = text.replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let head = head.trim_end_matches('\n').replace('\n', "\r\n");
    let body = crlf_lines(body);
    let has_length = head.lines().any(|l| {
        let name = l.split(':').next().unwrap_or("").trim();
        name.eq_ignore_ascii_case("Content-Length") || name.eq_ignore_ascii_case("l")
    });
    if has_length {
        format!("{head}\r\n\r\n{body}")
    } else {
        format!("{head}\r\nContent-Length: {}\r\n\r\n{body}", body.len())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn wire_text_fills_content_length_when_missing() {
        let text = super::wire_text("OPTIONS sip:a SIP/2.0\nVia: x\n\nbody\n");
        assert_eq!(
            text,
            "OPTIONS sip:a SIP/2.0\r\nVia: x\r\nContent-Length: 6\r\n\r\nbody\r\n"
        );
        let kept = super::wire_text("OPTIONS sip:a SIP/2.0\nContent-Length: 99\n\n");
        assert!(kept.contains("Content-Length: 99\r\n"));
    }

    use super::*;

    fn parse(text: &str) -> Result<Message, ParseError> {
        Message::parse(&Bytes::from(text.to_string()))
    }

    const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
        v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1, SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK2\r\n\
        Max-Forwards: 70\r\n\
        f: <sip:alice@example.com>;tag=a1\r\n\
        t: <sip:bob@example.com>\r\n\
        i: abc@192.0.2.1\r\n\
        CSeq: 1 INVITE\r\n\
        X-Custom: one,\r\n two\r\n\
        c: application/sdp\r\n\
        l: 4\r\n\r\nv=0\r\nEXTRA";

    #[test]
    fn compact_forms_are_expanded_and_order_kept() {
        let msg = parse(INVITE).expect("valid");
        let names: Vec<&str> = msg.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Via",
                "Max-Forwards",
                "From",
                "To",
                "Call-ID",
                "CSeq",
                "X-Custom",
                "Content-Type",
                "Content-Length"
            ]
        );
        assert_eq!(msg.header_str(&HeaderName::CallId), Some("abc@192.0.2.1"));
    }

    #[test]
    fn continuation_lines_are_unfolded() {
        let msg = parse(INVITE).expect("valid");
        assert_eq!(
            msg.header_str(&HeaderName::Other("X-Custom".into())),
            Some("one, two")
        );
    }

    #[test]
    fn datagram_body_is_framed_by_content_length() {
        let msg = parse(INVITE).expect("valid");
        assert_eq!(&msg.body[..], b"v=0\r");
    }

    #[test]
    fn encode_recomputes_content_length() {
        let msg = parse(INVITE).expect("valid");
        let text = String::from_utf8(msg.to_bytes()).expect("utf8");
        assert!(text.starts_with("INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP"));
        assert!(text.ends_with("Content-Length: 4\r\n\r\nv=0\r"));
        assert_eq!(text.matches("Content-Length").count(), 1);
        let again = Message::parse(&Bytes::from(text)).expect("reparse");
        assert_eq!(again.body, msg.body);
    }

    #[test]
    fn a_multibyte_character_in_the_version_is_a_fault_not_a_panic() {
        // Found by fuzz/run.sh (target sip_parse): slicing "SIP/" out of the version cut a
        // character in two.
        let err = parse("RE dj\rSb :\u{ecdaf}").expect_err("a lone CR is no line end");
        assert_eq!(err.fault, Fault::StartLine);
        let err =
            parse("OPTIONS sip:a@b S\u{ecdaf}2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n\r\n")
                .expect_err("bad version");
        assert_eq!(err.fault, Fault::StartLine);
    }

    #[test]
    fn a_nul_in_a_header_is_a_fault_with_partial() {
        let err = parse(
            "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nX-A: a\0b\r\n\r\n",
        )
        .expect_err("NUL");
        assert_eq!(err.fault, Fault::HeaderLine);
        assert!(err.partial.is_some(), "answerable with 400");
    }

    #[test]
    fn content_length_larger_than_datagram_is_a_fault_with_partial() {
        let err = parse("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nContent-Length: 99\r\n\r\nabc")
            .expect_err("truncated");
        assert_eq!(err.fault, Fault::Truncated);
        assert!(err.partial.is_some());
    }

    #[test]
    fn conflicting_and_negative_content_lengths_are_faults() {
        let err = parse("OPTIONS sip:a@b SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nab")
            .expect_err("conflict");
        assert_eq!(err.fault, Fault::ContentLength);
        let err = parse("OPTIONS sip:a@b SIP/2.0\r\nl: -999\r\n\r\n").expect_err("negative length");
        assert_eq!(err.fault, Fault::ContentLength);
    }

    #[test]
    fn start_line_faults() {
        assert_eq!(
            parse("INVITE  sip:a@b  SIP/2.0\r\n\r\n").unwrap_err().fault,
            Fault::StartLine
        );
        assert_eq!(
            parse("INVITE sip:a@b SIP/7.0\r\n\r\n").unwrap_err().fault,
            Fault::Version
        );
        assert_eq!(
            parse("INVITE <sip:a@b> SIP/2.0\r\n\r\n").unwrap_err().fault,
            Fault::RequestUri
        );
        assert_eq!(
            parse("SIP/2.0 4294967301 Bad\r\n\r\n").unwrap_err().fault,
            Fault::Status
        );
        assert_eq!(parse("\r\n\r\n").unwrap_err().fault, Fault::Empty);
    }

    #[test]
    fn unknown_method_is_kept() {
        let msg = parse("NEWMETHOD sip:a@b SIP/2.0\r\nl: 0\r\n\r\n").expect("valid");
        assert_eq!(
            msg.method(),
            Some(&Method::Extension("NEWMETHOD".to_string()))
        );
    }

    #[test]
    fn stream_framing_waits_for_the_body() {
        let text = b"\r\nOPTIONS sip:a@b SIP/2.0\r\nContent-Length: 3\r\n\r\nab";
        assert_eq!(frame_stream(text), Ok(None));
        let mut full = text.to_vec();
        full.extend_from_slice(b"cNEXT");
        assert_eq!(frame_stream(&full), Ok(Some(text.len() + 1)));
        assert_eq!(
            frame_stream(b"OPTIONS sip:a@b SIP/2.0\r\nl: x\r\n\r\n"),
            Err(Fault::ContentLength)
        );
    }

    #[test]
    fn set_header_replaces_all_values_in_place() {
        let mut msg =
            parse("OPTIONS sip:a@b SIP/2.0\r\nX-A: 1\r\nX-B: 2\r\nX-A: 3\r\n\r\n").expect("valid");
        let name = HeaderName::parse("x-a");
        msg.set_header(name.clone(), "9");
        let values: Vec<(&str, &str)> = msg
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value_str().unwrap_or("")))
            .collect();
        assert_eq!(values, [("X-A", "9"), ("X-B", "2")]);
    }

    #[test]
    fn garbage_never_panics() {
        let seed = INVITE.as_bytes();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bytes = seed.to_vec();
            let cut = (state as usize) % (bytes.len() + 1);
            if round % 2 == 0 {
                bytes.truncate(cut);
            } else if !bytes.is_empty() {
                let at = cut % bytes.len();
                bytes[at] = (state >> 32) as u8;
            }
            let _ = Message::parse(&Bytes::from(bytes.clone()));
            let _ = frame_stream(&bytes);
        }
    }
}
