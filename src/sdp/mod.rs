//! SDP (RFC 8866, formerly RFC 4566): a lossless, tolerant model that interworking rules edit
//! during offer/answer (RFC 3264) and that the media plane reads.
//!
//! Parsing keeps every `<type>=<value>` line in order: the session-level lines, then one
//! [`Media`] section per `m=` line with the lines that follow it. Only what is needed to find the
//! structure is checked (UTF-8, a leading `v=`, the `<letter>=<value>` shape of every line, and
//! the media type, port and protocol of `m=` lines); everything else (unknown line types,
//! malformed attributes, an FQDN in `c=`) is kept as it arrived and only interpreted by the
//! typed views, which skip what they cannot read. Empty lines are dropped. Serialization writes
//! CRLF line ends, so a CRLF body survives a parse/serialize round trip byte for byte.
//!
//! Edits that take text check it first: a value can never contain a line break (a rule cannot
//! inject lines), and names and tokens can never contain spaces. Nothing in this module panics on
//! input, whatever the bytes.

mod media;
#[cfg(test)]
mod tests;

pub use media::{Codec, Crypto, Direction, Media};

use std::fmt;

/// Why an SDP body could not be parsed, or why an edit was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// The body is not valid UTF-8 (the line holds the first invalid byte).
    #[error("SDP line {line}: not valid UTF-8")]
    NotUtf8 { line: usize },
    /// The first line is not `v=` (or the body is empty).
    #[error("SDP line {line}: the first line must be \"v=\"")]
    MissingVersion { line: usize },
    /// A line is not of the form `<letter>=<value>`.
    #[error("SDP line {line}: expected \"<letter>=<value>\"")]
    MalformedLine { line: usize },
    /// An `m=` line lacks its media type, port or protocol, or has an unreadable port.
    #[error("SDP line {line}: m= line {reason}")]
    MalformedMedia { line: usize, reason: &'static str },
    /// An edit was given a value that cannot be written into SDP.
    #[error("invalid SDP {what}: {value:?}")]
    InvalidValue { what: &'static str, value: String },
    /// A codec edit would leave an `m=` line without any format.
    #[error("refusing to remove every codec from the m={media} line")]
    NoCodecsLeft { media: String },
    /// The session has no well-formed `o=` line to edit.
    #[error("SDP has no well-formed o= line")]
    MissingOrigin,
}

/// One `<type>=<value>` line other than `m=` (which [`Media`] holds parsed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) kind: u8,
    pub(crate) value: String,
}

/// Order of the session-level line types (RFC 8866 §5), used to place inserted lines.
const SESSION_ORDER: &[u8] = b"vosiuepcbtrzka";
/// Order of the media-level line types after `m=`.
const MEDIA_ORDER: &[u8] = b"icbka";

/// A parsed SDP body: the session-level lines and the media sections, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sdp {
    session: Vec<Line>,
    media: Vec<Media>,
}

/// A connection address (`c=<nettype> <addrtype> <address>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Network type, normally `IN`.
    pub net_type: String,
    /// Address type, `IP4` or `IP6`.
    pub addr_type: String,
    /// The address (IP literal or FQDN), without any multicast `/ttl/count` suffix.
    pub address: String,
}

/// The origin line (`o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub username: String,
    pub session_id: String,
    pub session_version: String,
    pub net_type: String,
    pub addr_type: String,
    pub address: String,
}

impl Sdp {
    /// Parses an SDP body; see the module documentation for what is accepted.
    pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
        let text = std::str::from_utf8(body).map_err(|e| SdpError::NotUtf8 {
            line: 1 + body
                .get(..e.valid_up_to())
                .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count()),
        })?;
        let mut session: Vec<Line> = Vec::with_capacity(12);
        let mut media: Vec<Media> = Vec::new();
        let mut seen_version = false;
        for (index, raw) in text.split('\n').enumerate() {
            let number = index + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.is_empty() {
                continue;
            }
            let (kind, value) = match line.as_bytes() {
                [k, b'=', ..] if k.is_ascii_alphabetic() => (*k, line.get(2..).unwrap_or("")),
                _ if !seen_version => return Err(SdpError::MissingVersion { line: number }),
                _ => return Err(SdpError::MalformedLine { line: number }),
            };
            if !seen_version {
                if kind != b'v' {
                    return Err(SdpError::MissingVersion { line: number });
                }
                seen_version = true;
            }
            if kind == b'm' {
                media.push(Media::parse_m(value, number)?);
                continue;
            }
            let line = Line {
                kind,
                value: value.to_owned(),
            };
            match media.last_mut() {
                Some(m) => m.lines.push(line),
                None => session.push(line),
            }
        }
        if !seen_version {
            return Err(SdpError::MissingVersion { line: 1 });
        }
        let mut sdp = Sdp { session, media };
        sdp.refresh_inherited();
        Ok(sdp)
    }

    /// Serializes the body with CRLF line ends.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut len = 0;
        for line in &self.session {
            len += line.value.len() + 4;
        }
        for m in &self.media {
            len += m.m_line.len() + 4;
            for line in &m.lines {
                len += line.value.len() + 4;
            }
        }
        let mut out = String::with_capacity(len);
        // Writing into a String cannot fail.
        let _ = self.write_into(&mut out);
        out.into_bytes()
    }

    fn write_into<W: fmt::Write>(&self, w: &mut W) -> fmt::Result {
        write_lines(w, &self.session)?;
        for m in &self.media {
            w.write_str("m=")?;
            w.write_str(&m.m_line)?;
            w.write_str("\r\n")?;
            write_lines(w, &m.lines)?;
        }
        Ok(())
    }

    /// The media sections, in `m=` order.
    pub fn media(&self) -> &[Media] {
        &self.media
    }

    /// The media sections, mutably (sections can be edited but not added or removed).
    pub fn media_mut(&mut self) -> &mut [Media] {
        &mut self.media
    }

    /// The first session-level attribute `name`: `None` if absent, `Some(None)` for a flag
    /// attribute (`a=ice-lite`), `Some(Some(value))` otherwise.
    pub fn attribute(&self, name: &str) -> Option<Option<&str>> {
        attr_first(&self.session, name)
    }

    /// Every session-level attribute `name`, in order.
    pub fn attributes(&self, name: &str) -> Vec<Option<&str>> {
        attr_all(&self.session, name)
    }

    /// Replaces every session-level attribute `name` by one (at the first one's place), or
    /// appends it.
    pub fn set_attribute(&mut self, name: &str, value: Option<&str>) -> Result<(), SdpError> {
        attr_set(&mut self.session, name, value)?;
        self.refresh_inherited();
        Ok(())
    }

    /// Appends a session-level attribute, keeping any others of the same name.
    pub fn add_attribute(&mut self, name: &str, value: Option<&str>) -> Result<(), SdpError> {
        attr_add(&mut self.session, name, value)?;
        self.refresh_inherited();
        Ok(())
    }

    /// Removes every session-level attribute `name`; returns how many were removed.
    pub fn remove_attribute(&mut self, name: &str) -> usize {
        let n = attr_remove(&mut self.session, name);
        self.refresh_inherited();
        n
    }

    /// Keeps only the attributes named in `names`, at session level and in every media
    /// section; returns how many were removed.
    pub fn keep_only_attributes(&mut self, names: &[&str]) -> usize {
        let before = self.session.len();
        self.session
            .retain(|l| l.attr().is_none_or(|(name, _)| names.contains(&name)));
        let mut removed = before - self.session.len();
        self.refresh_inherited();
        for media in &mut self.media {
            removed += media.keep_only_attributes(names);
        }
        removed
    }

    /// The session-level connection (`c=`), if present and readable.
    pub fn connection(&self) -> Option<Connection> {
        first_value(&self.session, b'c').and_then(Connection::parse)
    }

    /// Sets the session-level `c=` to `address` (IP4 or IP6 chosen from the address; an FQDN is
    /// written as IP4). Media-level `c=` lines still override it.
    pub fn set_connection(&mut self, address: &str) -> Result<(), SdpError> {
        let value = connection_value(address)?;
        set_line(&mut self.session, b'c', value, SESSION_ORDER);
        self.refresh_inherited();
        Ok(())
    }

    /// The origin (`o=`), if present and readable.
    pub fn origin(&self) -> Option<Origin> {
        first_value(&self.session, b'o').and_then(Origin::parse)
    }

    /// Rewrites the address (and its IP4/IP6 type) of the `o=` line.
    pub fn set_origin_address(&mut self, address: &str) -> Result<(), SdpError> {
        let (addr_type, address) = address_and_type(address)?;
        self.edit_origin(|o| {
            o.addr_type = addr_type.to_owned();
            o.address = address.to_owned();
        })
    }

    /// Rewrites the session version of the `o=` line (RFC 3264 §8: it must grow with every
    /// changed offer or answer a side sends).
    pub fn set_session_version(&mut self, version: u64) -> Result<(), SdpError> {
        self.edit_origin(|o| o.session_version = version.to_string())
    }

    fn edit_origin(&mut self, edit: impl FnOnce(&mut Origin)) -> Result<(), SdpError> {
        let line = self
            .session
            .iter_mut()
            .find(|l| l.kind == b'o')
            .ok_or(SdpError::MissingOrigin)?;
        let mut origin = Origin::parse(&line.value).ok_or(SdpError::MissingOrigin)?;
        edit(&mut origin);
        line.value = origin.to_string();
        Ok(())
    }

    /// The session-level bandwidth of type `kind` (`b=AS:64` gives `bandwidth("AS") == Some(64)`).
    pub fn bandwidth(&self, kind: &str) -> Option<u64> {
        bandwidth_get(&self.session, kind)
    }

    /// Sets the session-level bandwidth of type `kind`, replacing any existing one.
    pub fn set_bandwidth(&mut self, kind: &str, value: u64) -> Result<(), SdpError> {
        bandwidth_set(&mut self.session, kind, value, SESSION_ORDER)
    }

    /// Removes the session-level bandwidth lines of type `kind`; returns how many were removed.
    pub fn remove_bandwidth(&mut self, kind: &str) -> usize {
        bandwidth_remove(&mut self.session, kind)
    }

    /// Copies the session-level defaults a media section falls back on into every section.
    fn refresh_inherited(&mut self) {
        let direction = self
            .session
            .iter()
            .find_map(|l| l.attr().and_then(|(name, _)| Direction::parse(name)));
        let connection = first_value(&self.session, b'c');
        for m in &mut self.media {
            m.session_direction = direction;
            if m.session_connection.as_deref() != connection {
                m.session_connection = connection.map(str::to_owned);
            }
        }
    }
}

impl fmt::Display for Sdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_into(f)
    }
}

fn write_lines<W: fmt::Write>(w: &mut W, lines: &[Line]) -> fmt::Result {
    for line in lines {
        w.write_char(char::from(line.kind))?;
        w.write_char('=')?;
        w.write_str(&line.value)?;
        w.write_str("\r\n")?;
    }
    Ok(())
}

impl Connection {
    /// Reads the value of a `c=` line.
    pub fn parse(value: &str) -> Option<Connection> {
        let (net_type, rest) = next_token(value)?;
        let (addr_type, rest) = next_token(rest)?;
        let (address, _) = next_token(rest)?;
        let address = address.split('/').next().unwrap_or(address);
        if address.is_empty() {
            return None;
        }
        Some(Connection {
            net_type: net_type.to_owned(),
            addr_type: addr_type.to_owned(),
            address: address.to_owned(),
        })
    }
}

impl Origin {
    /// Reads the value of an `o=` line.
    pub fn parse(value: &str) -> Option<Origin> {
        let (username, rest) = next_token(value)?;
        let (session_id, rest) = next_token(rest)?;
        let (session_version, rest) = next_token(rest)?;
        let (net_type, rest) = next_token(rest)?;
        let (addr_type, rest) = next_token(rest)?;
        let (address, _) = next_token(rest)?;
        Some(Origin {
            username: username.to_owned(),
            session_id: session_id.to_owned(),
            session_version: session_version.to_owned(),
            net_type: net_type.to_owned(),
            addr_type: addr_type.to_owned(),
            address: address.to_owned(),
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {}",
            self.username,
            self.session_id,
            self.session_version,
            self.net_type,
            self.addr_type,
            self.address
        )
    }
}

impl Line {
    /// The attribute name and value if this is an `a=` line.
    pub(crate) fn attr(&self) -> Option<(&str, Option<&str>)> {
        if self.kind != b'a' {
            return None;
        }
        Some(match self.value.split_once(':') {
            Some((name, value)) => (name, Some(value)),
            None => (self.value.as_str(), None),
        })
    }

    fn attr_named(&self, name: &str) -> Option<Option<&str>> {
        match self.attr() {
            Some((n, value)) if n == name => Some(value),
            _ => None,
        }
    }
}

fn is_ws(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// The first space-separated token of `s` and the rest after the following spaces.
pub(crate) fn next_token(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start_matches(is_ws);
    if s.is_empty() {
        return None;
    }
    let (token, rest) = s.split_at(s.find(is_ws).unwrap_or(s.len()));
    Some((token, rest.trim_start_matches(is_ws)))
}

pub(crate) fn first_value(lines: &[Line], kind: u8) -> Option<&str> {
    lines
        .iter()
        .find(|l| l.kind == kind)
        .map(|l| l.value.as_str())
}

pub(crate) fn attr_first<'a>(lines: &'a [Line], name: &str) -> Option<Option<&'a str>> {
    lines.iter().find_map(|l| l.attr_named(name))
}

pub(crate) fn attr_all<'a>(lines: &'a [Line], name: &str) -> Vec<Option<&'a str>> {
    lines.iter().filter_map(|l| l.attr_named(name)).collect()
}

fn attr_line(name: &str, value: Option<&str>) -> Result<Line, SdpError> {
    check_token("attribute name", name, true)?;
    let value = match value {
        Some(v) => {
            check_value("attribute value", v)?;
            let mut s = String::with_capacity(name.len() + 1 + v.len());
            s.push_str(name);
            s.push(':');
            s.push_str(v);
            s
        }
        None => name.to_owned(),
    };
    Ok(Line { kind: b'a', value })
}

pub(crate) fn attr_set(
    lines: &mut Vec<Line>,
    name: &str,
    value: Option<&str>,
) -> Result<(), SdpError> {
    let line = attr_line(name, value)?;
    match lines.iter().position(|l| l.attr_named(name).is_some()) {
        Some(first) => {
            let mut index = 0;
            lines.retain(|l| {
                let keep = index <= first || l.attr_named(name).is_none();
                index += 1;
                keep
            });
            if let Some(slot) = lines.get_mut(first) {
                *slot = line;
            }
        }
        None => lines.push(line),
    }
    Ok(())
}

pub(crate) fn attr_add(
    lines: &mut Vec<Line>,
    name: &str,
    value: Option<&str>,
) -> Result<(), SdpError> {
    lines.push(attr_line(name, value)?);
    Ok(())
}

pub(crate) fn attr_remove(lines: &mut Vec<Line>, name: &str) -> usize {
    let before = lines.len();
    lines.retain(|l| l.attr_named(name).is_none());
    before - lines.len()
}

/// Replaces every line of type `kind` by one with `value` (at the first one's place), or inserts
/// it where `order` puts that type.
pub(crate) fn set_line(lines: &mut Vec<Line>, kind: u8, value: String, order: &[u8]) {
    let line = Line { kind, value };
    replace_or_insert(lines, |l| l.kind == kind, line, order);
}

fn replace_or_insert(
    lines: &mut Vec<Line>,
    matches: impl Fn(&Line) -> bool,
    line: Line,
    order: &[u8],
) {
    match lines.iter().position(&matches) {
        Some(first) => {
            let mut index = 0;
            lines.retain(|l| {
                let keep = index <= first || !matches(l);
                index += 1;
                keep
            });
            if let Some(slot) = lines.get_mut(first) {
                *slot = line;
            }
        }
        None => {
            let rank = |k: u8| order.iter().position(|&o| o == k);
            let mut at = 0;
            if let Some(new_rank) = rank(line.kind) {
                for (i, l) in lines.iter().enumerate() {
                    if rank(l.kind).is_some_and(|r| r <= new_rank) {
                        at = i + 1;
                    }
                }
            } else {
                at = lines.len();
            }
            lines.insert(at.min(lines.len()), line);
        }
    }
}

fn bandwidth_kind(line: &Line) -> Option<(&str, &str)> {
    if line.kind != b'b' {
        return None;
    }
    line.value.split_once(':')
}

pub(crate) fn bandwidth_get(lines: &[Line], kind: &str) -> Option<u64> {
    lines.iter().find_map(|l| match bandwidth_kind(l) {
        Some((k, v)) if k == kind => v.trim().parse().ok(),
        _ => None,
    })
}

pub(crate) fn bandwidth_set(
    lines: &mut Vec<Line>,
    kind: &str,
    value: u64,
    order: &[u8],
) -> Result<(), SdpError> {
    check_token("bandwidth type", kind, true)?;
    let line = Line {
        kind: b'b',
        value: format!("{kind}:{value}"),
    };
    replace_or_insert(
        lines,
        |l| bandwidth_kind(l).is_some_and(|(k, _)| k == kind),
        line,
        order,
    );
    Ok(())
}

pub(crate) fn bandwidth_remove(lines: &mut Vec<Line>, kind: &str) -> usize {
    let before = lines.len();
    lines.retain(|l| bandwidth_kind(l).is_none_or(|(k, _)| k != kind));
    before - lines.len()
}

/// Checks a name or token: not empty, visible ASCII only, and no `:` when `no_colon`.
fn check_token(what: &'static str, value: &str, no_colon: bool) -> Result<(), SdpError> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !(no_colon && b == b':'));
    if ok {
        Ok(())
    } else {
        Err(SdpError::InvalidValue {
            what,
            value: value.to_owned(),
        })
    }
}

/// Checks a free-text value: no line break or NUL.
fn check_value(what: &'static str, value: &str) -> Result<(), SdpError> {
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        Err(SdpError::InvalidValue {
            what,
            value: value.to_owned(),
        })
    } else {
        Ok(())
    }
}

/// The address type (`IP4`/`IP6`) and the address without IPv6 brackets.
fn address_and_type(address: &str) -> Result<(&'static str, &str), SdpError> {
    let bare = address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(address);
    check_token("address", bare, false)?;
    Ok((if bare.contains(':') { "IP6" } else { "IP4" }, bare))
}

pub(crate) fn connection_value(address: &str) -> Result<String, SdpError> {
    let (addr_type, address) = address_and_type(address)?;
    Ok(format!("IN {addr_type} {address}"))
}
