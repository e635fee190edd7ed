//! One media section (`m=` and the lines up to the next `m=`), with codec, attribute, direction,
//! connection, bandwidth and SRTP-key views and edits.

use super::{
    attr_add, attr_all, attr_first, attr_remove, attr_set, bandwidth_get, bandwidth_remove,
    bandwidth_set, connection_value, first_value, next_token, set_line, Connection, Line, SdpError,
    MEDIA_ORDER,
};

/// A media section. Obtained from [`super::Sdp::media`] / [`super::Sdp::media_mut`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Media {
    kind: String,
    port: u16,
    port_count: Option<u16>,
    proto: String,
    formats: Vec<String>,
    /// The `m=` value as written; rebuilt from the fields above when one is edited.
    pub(crate) m_line: String,
    /// The lines after `m=`.
    pub(crate) lines: Vec<Line>,
    /// Session-level defaults, kept current by [`super::Sdp`].
    pub(crate) session_direction: Option<Direction>,
    pub(crate) session_connection: Option<String>,
}

/// A codec offered on an `m=` line (RTP payload type with its rtpmap and fmtp).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Codec {
    /// The format from the `m=` line (an RTP payload type number for RTP protocols).
    pub pt: String,
    /// Encoding name (`PCMA`, `telephone-event`); from `a=rtpmap`, else the RFC 3551 static
    /// table, else the format itself if it is not a number, else empty.
    pub name: String,
    /// Clock rate in Hz.
    pub clock: Option<u32>,
    /// Channel count, when written in the rtpmap (or implied by the static table for L16 stereo).
    pub channels: Option<u32>,
    /// The `a=fmtp` parameters for this payload type.
    pub fmtp: Option<String>,
}

/// An SRTP key (`a=crypto`, RFC 4568 §9.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crypto {
    pub tag: u32,
    /// Crypto suite, e.g. `AES_CM_128_HMAC_SHA1_80`.
    pub suite: String,
    /// Key parameters, e.g. `inline:<key||salt>|2^31|1:1`.
    pub key_params: String,
    /// Session parameters after the key, if any.
    pub session_params: Option<String>,
}

/// Media direction attribute (RFC 3264 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The direction as the other party states it: its sending is our receiving.
    pub fn mirrored(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }

    /// The direction of an answer to an offer with this direction, from a party that wants
    /// `own` (RFC 3264 §6.1): what the offer allows, mirrored, and what the party wants.
    pub fn answering(self, own: Direction) -> Direction {
        let bits = |d: Direction| match d {
            Direction::SendRecv => 3,
            Direction::SendOnly => 1,
            Direction::RecvOnly => 2,
            Direction::Inactive => 0,
        };
        match bits(self.mirrored()) & bits(own) {
            3 => Direction::SendRecv,
            1 => Direction::SendOnly,
            2 => Direction::RecvOnly,
            _ => Direction::Inactive,
        }
    }

    /// The attribute name (`sendrecv`, `sendonly`, `recvonly`, `inactive`).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// Reads an attribute name as a direction (exact, lower case).
    pub fn parse(name: &str) -> Option<Direction> {
        match name {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Codec {
    /// Whether `selector` names this codec: its encoding name (ASCII case-insensitive) or its
    /// payload type (`"101"`). An empty selector matches nothing.
    pub fn matches(&self, selector: &str) -> bool {
        !selector.is_empty() && (self.pt == selector || self.name.eq_ignore_ascii_case(selector))
    }

    /// G.711: PCMU or PCMA.
    pub fn is_g711(&self) -> bool {
        self.name.eq_ignore_ascii_case("PCMU") || self.name.eq_ignore_ascii_case("PCMA")
    }
}

impl Crypto {
    /// Reads the value of an `a=crypto` attribute.
    pub fn parse(value: &str) -> Option<Crypto> {
        let (tag, rest) = next_token(value)?;
        let (suite, rest) = next_token(rest)?;
        let (key_params, rest) = next_token(rest)?;
        let rest = rest.trim_end();
        Some(Crypto {
            tag: tag.parse().ok()?,
            suite: suite.to_owned(),
            key_params: key_params.to_owned(),
            session_params: (!rest.is_empty()).then(|| rest.to_owned()),
        })
    }
}

/// RFC 3551 §6 static payload types: (pt, name, clock, channels).
const STATIC_PAYLOADS: &[(&str, &str, u32, Option<u32>)] = &[
    ("0", "PCMU", 8000, None),
    ("3", "GSM", 8000, None),
    ("4", "G723", 8000, None),
    ("5", "DVI4", 8000, None),
    ("6", "DVI4", 16000, None),
    ("7", "LPC", 8000, None),
    ("8", "PCMA", 8000, None),
    ("9", "G722", 8000, None),
    ("10", "L16", 44100, Some(2)),
    ("11", "L16", 44100, None),
    ("12", "QCELP", 8000, None),
    ("13", "CN", 8000, None),
    ("14", "MPA", 90000, None),
    ("15", "G728", 8000, None),
    ("16", "DVI4", 11025, None),
    ("17", "DVI4", 22050, None),
    ("18", "G729", 8000, None),
    ("25", "CelB", 90000, None),
    ("26", "JPEG", 90000, None),
    ("28", "nv", 90000, None),
    ("31", "H261", 90000, None),
    ("32", "MPV", 90000, None),
    ("33", "MP2T", 90000, None),
    ("34", "H263", 90000, None),
];

/// Splits a `<pt> <rest>` attribute value (rtpmap, fmtp, rtcp-fb).
fn pt_and_rest(value: &str) -> Option<(&str, &str)> {
    next_token(value)
}

impl Media {
    pub(crate) fn parse_m(value: &str, line: usize) -> Result<Media, SdpError> {
        let bad = |reason| SdpError::MalformedMedia { line, reason };
        let mut tokens = value.split_ascii_whitespace();
        let kind = tokens.next().ok_or(bad("lacks the media type"))?;
        let port = tokens.next().ok_or(bad("lacks the port"))?;
        let proto = tokens.next().ok_or(bad("lacks the transport protocol"))?;
        let formats: Vec<String> = tokens.map(str::to_owned).collect();
        let (port, count) = match port.split_once('/') {
            Some((p, c)) => (p, Some(c)),
            None => (port, None),
        };
        let port = port.parse().map_err(|_| bad("has an invalid port"))?;
        let port_count = match count {
            Some(c) => Some(c.parse().map_err(|_| bad("has an invalid port count"))?),
            None => None,
        };
        Ok(Media {
            kind: kind.to_owned(),
            port,
            port_count,
            proto: proto.to_owned(),
            formats,
            m_line: value.to_owned(),
            lines: Vec::with_capacity(16),
            session_direction: None,
            session_connection: None,
        })
    }

    fn rebuild_m(&mut self) {
        let mut s = String::with_capacity(self.m_line.len() + 8);
        s.push_str(&self.kind);
        s.push(' ');
        s.push_str(&self.port.to_string());
        if let Some(count) = self.port_count {
            s.push('/');
            s.push_str(&count.to_string());
        }
        s.push(' ');
        s.push_str(&self.proto);
        for f in &self.formats {
            s.push(' ');
            s.push_str(f);
        }
        self.m_line = s;
    }

    /// The media type (`audio`, `video`, `image`, `application`, ...).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The transport port (0 when the stream is rejected or disabled).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port count of `m=audio 40000/2 ...` (`Some(2)`), if written.
    pub fn port_count(&self) -> Option<u16> {
        self.port_count
    }

    /// Sets the transport port, keeping any port count.
    pub fn set_port(&mut self, port: u16) {
        if self.port != port {
            self.port = port;
            self.rebuild_m();
        }
    }

    /// The transport protocol (`RTP/AVP`, `RTP/SAVP`, `UDP/TLS/RTP/SAVPF`, `udptl`, ...).
    pub fn proto(&self) -> &str {
        &self.proto
    }

    /// Sets the transport protocol (`RTP/AVP` ↔ `RTP/SAVP` when SRTP is terminated).
    pub fn set_proto(&mut self, proto: &str) -> Result<(), SdpError> {
        if proto.is_empty()
            || proto
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(SdpError::InvalidValue {
                what: "protocol",
                value: proto.to_string(),
            });
        }
        if self.proto != proto {
            self.proto = proto.to_string();
            self.rebuild_m();
        }
        Ok(())
    }

    /// The formats from the `m=` line (RTP payload types for RTP protocols).
    pub fn formats(&self) -> &[String] {
        &self.formats
    }

    /// Whether the stream is rejected or disabled (port 0, RFC 3264 §6).
    pub fn is_rejected(&self) -> bool {
        self.port == 0
    }

    /// The first `a=<name>` for payload type `pt`, returning what follows the payload type.
    fn pt_attr(&self, name: &str, pt: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| {
            let (p, rest) = pt_and_rest(l.attr_named(name)??)?;
            (p == pt).then_some(rest)
        })
    }

    /// The codecs in `m=` order, named from `a=rtpmap` or the RFC 3551 static table.
    pub fn codecs(&self) -> Vec<Codec> {
        self.formats.iter().map(|pt| self.codec(pt)).collect()
    }

    fn codec(&self, pt: &str) -> Codec {
        let rtpmap = self.pt_attr("rtpmap", pt).and_then(|map| {
            let mut parts = map.trim_end().split('/');
            let name = parts.next().filter(|n| !n.is_empty())?;
            let clock = parts.next().and_then(|c| c.trim().parse().ok());
            let channels = parts.next().and_then(|c| c.trim().parse().ok());
            Some((name.to_owned(), clock, channels))
        });
        let (name, clock, channels) = match rtpmap {
            Some(found) => found,
            None => match STATIC_PAYLOADS.iter().find(|(p, ..)| *p == pt) {
                Some((_, name, clock, channels)) => ((*name).to_owned(), Some(*clock), *channels),
                None if pt.bytes().all(|b| b.is_ascii_digit()) => (String::new(), None, None),
                None => (pt.to_owned(), None, None),
            },
        };
        Codec {
            pt: pt.to_owned(),
            name,
            clock,
            channels,
            fmtp: self.pt_attr("fmtp", pt).map(|f| f.trim_end().to_owned()),
        }
    }

    /// Which formats any of `selectors` matches, by position.
    fn matching(&self, selectors: &[&str]) -> Vec<bool> {
        self.codecs()
            .iter()
            .map(|c| selectors.iter().any(|s| c.matches(s)))
            .collect()
    }

    /// Keeps only the codecs matching a selector (name, case-insensitive, or payload type);
    /// returns how many were kept. Refuses (changing nothing) if none would be left.
    pub fn keep_codecs(&mut self, selectors: &[&str]) -> Result<usize, SdpError> {
        let keep = self.matching(selectors);
        let kept = keep.iter().filter(|&&k| k).count();
        if kept == 0 && !keep.is_empty() {
            return Err(self.no_codecs_left());
        }
        self.retain_formats(&keep);
        Ok(kept)
    }

    /// Removes the codecs matching a selector, with their rtpmap, fmtp and rtcp-fb lines;
    /// returns how many were removed. Refuses (changing nothing) if none would be left.
    pub fn remove_codecs(&mut self, selectors: &[&str]) -> Result<usize, SdpError> {
        let mut keep = self.matching(selectors);
        let removed = keep.iter().filter(|&&m| m).count();
        if removed == keep.len() && removed > 0 {
            return Err(self.no_codecs_left());
        }
        keep.iter_mut().for_each(|k| *k = !*k);
        self.retain_formats(&keep);
        Ok(removed)
    }

    /// Replaces the first codec matching `selector` by payload type `pt` described by `rtpmap`
    /// (e.g. `PCMA/8000`), in place in the m= line; its rtpmap, fmtp and rtcp-fb lines go. Returns
    /// false when no codec matched or the values are not tokens.
    pub fn replace_codec(&mut self, selector: &str, pt: &str, rtpmap: &str) -> bool {
        let token = |v: &str| {
            !v.is_empty()
                && !v
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        };
        if !token(pt) || !token(rtpmap) {
            return false;
        }
        let Some(index) = self.matching(&[selector]).iter().position(|m| *m) else {
            return false;
        };
        let old = std::mem::replace(&mut self.formats[index], pt.to_string());
        if !self.formats.contains(&old) {
            self.lines.retain(|l| {
                let Some((name, Some(value))) = l.attr() else {
                    return true;
                };
                !(matches!(name, "rtpmap" | "fmtp" | "rtcp-fb")
                    && pt_and_rest(value).is_some_and(|(p, _)| p == old))
            });
        }
        self.rebuild_m();
        attr_add(&mut self.lines, "rtpmap", Some(&format!("{pt} {rtpmap}"))).is_ok()
    }

    /// Gives the codec on payload type `old` the number `new`, in the m= line and its rtpmap,
    /// fmtp and rtcp-fb lines. Returns false (changing nothing) when `old` is not offered,
    /// `new` already is, or `new` is not a number.
    pub fn renumber(&mut self, old: &str, new: &str) -> bool {
        if new.is_empty()
            || !new.bytes().all(|b| b.is_ascii_digit())
            || self.formats.iter().any(|f| f == new)
        {
            return false;
        }
        let Some(format) = self.formats.iter_mut().find(|f| *f == old) else {
            return false;
        };
        *format = new.to_string();
        for line in &mut self.lines {
            let renamed = match line.attr() {
                Some((name @ ("rtpmap" | "fmtp" | "rtcp-fb"), Some(value))) => {
                    match pt_and_rest(value) {
                        Some((pt, rest)) if pt == old => {
                            Some(format!("{name}:{new} {rest}").trim_end().to_string())
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            if let Some(value) = renamed {
                line.value = value;
            }
        }
        self.rebuild_m();
        true
    }

    /// Puts the codecs matching the selectors first, in selector order, and keeps the rest in
    /// their order; returns how many matched.
    pub fn reorder_codecs(&mut self, selectors: &[&str]) -> usize {
        let codecs = self.codecs();
        let mut placed = vec![false; codecs.len()];
        let mut order = Vec::with_capacity(codecs.len());
        for s in selectors {
            for (i, c) in codecs.iter().enumerate() {
                if !placed[i] && c.matches(s) {
                    placed[i] = true;
                    order.push(i);
                }
            }
        }
        let matched = order.len();
        order.extend((0..codecs.len()).filter(|&i| !placed[i]));
        let formats: Vec<String> = order
            .into_iter()
            .filter_map(|i| self.formats.get(i).cloned())
            .collect();
        if formats != self.formats {
            self.formats = formats;
            self.rebuild_m();
        }
        matched
    }

    fn no_codecs_left(&self) -> SdpError {
        SdpError::NoCodecsLeft {
            media: self.m_line.clone(),
        }
    }

    /// Keeps the formats whose `keep` flag is set and drops the attributes of the others.
    fn retain_formats(&mut self, keep: &[bool]) {
        if keep.iter().all(|&k| k) {
            return;
        }
        let mut removed = Vec::new();
        let mut kept = Vec::with_capacity(self.formats.len());
        for (format, &k) in self.formats.drain(..).zip(keep) {
            if k {
                kept.push(format);
            } else {
                removed.push(format);
            }
        }
        self.formats = kept;
        removed.retain(|pt| !self.formats.contains(pt));
        self.lines.retain(|l| {
            let Some((name, Some(value))) = l.attr() else {
                return true;
            };
            if !matches!(name, "rtpmap" | "fmtp" | "rtcp-fb") {
                return true;
            }
            !pt_and_rest(value).is_some_and(|(pt, _)| removed.iter().any(|r| r == pt))
        });
        self.rebuild_m();
    }

    /// The first media-level attribute `name`: `None` if absent, `Some(None)` for a flag
    /// attribute (`a=rtcp-mux`), `Some(Some(value))` otherwise.
    pub fn attribute(&self, name: &str) -> Option<Option<&str>> {
        attr_first(&self.lines, name)
    }

    /// Every media-level attribute `name`, in order.
    pub fn attributes(&self, name: &str) -> Vec<Option<&str>> {
        attr_all(&self.lines, name)
    }

    /// Replaces every media-level attribute `name` by one (at the first one's place), or appends
    /// it.
    pub fn set_attribute(&mut self, name: &str, value: Option<&str>) -> Result<(), SdpError> {
        attr_set(&mut self.lines, name, value)
    }

    /// Appends a media-level attribute, keeping any others of the same name.
    pub fn add_attribute(&mut self, name: &str, value: Option<&str>) -> Result<(), SdpError> {
        attr_add(&mut self.lines, name, value)
    }

    /// Removes every media-level attribute `name`; returns how many were removed.
    pub fn remove_attribute(&mut self, name: &str) -> usize {
        attr_remove(&mut self.lines, name)
    }

    /// Removes every media-level attribute whose name is not in `names` (other line types are
    /// kept); returns how many were removed.
    pub fn keep_only_attributes(&mut self, names: &[&str]) -> usize {
        let before = self.lines.len();
        self.lines
            .retain(|l| l.attr().is_none_or(|(name, _)| names.contains(&name)));
        before - self.lines.len()
    }

    /// The media-level direction attribute, else the session-level one, else sendrecv.
    pub fn direction(&self) -> Direction {
        self.lines
            .iter()
            .find_map(|l| l.attr().and_then(|(name, _)| Direction::parse(name)))
            .or(self.session_direction)
            .unwrap_or(Direction::SendRecv)
    }

    /// Sets the direction on this media section, replacing any direction attribute there (at the
    /// first one's place, else appended).
    pub fn set_direction(&mut self, direction: Direction) {
        let is_direction = |l: &Line| l.attr().is_some_and(|(n, _)| Direction::parse(n).is_some());
        let at = self.lines.iter().position(is_direction);
        self.lines.retain(|l| !is_direction(l));
        let line = Line {
            kind: b'a',
            value: direction.as_str().to_owned(),
        };
        match at {
            Some(at) => self.lines.insert(at.min(self.lines.len()), line),
            None => self.lines.push(line),
        }
    }

    /// The media-level connection, else the session-level one (unreadable `c=` lines are skipped).
    pub fn connection(&self) -> Option<Connection> {
        first_value(&self.lines, b'c')
            .and_then(Connection::parse)
            .or_else(|| {
                self.session_connection
                    .as_deref()
                    .and_then(Connection::parse)
            })
    }

    /// Writes a media-level `c=` with `address` (IP4 or IP6 chosen from the address; an FQDN is
    /// written as IP4), replacing any there.
    pub fn set_connection(&mut self, address: &str) -> Result<(), SdpError> {
        let value = connection_value(address)?;
        set_line(&mut self.lines, b'c', value, MEDIA_ORDER);
        Ok(())
    }

    /// The media-level bandwidth of type `kind` (`b=TIAS:64000`).
    pub fn bandwidth(&self, kind: &str) -> Option<u64> {
        bandwidth_get(&self.lines, kind)
    }

    /// Sets the media-level bandwidth of type `kind`, replacing any existing one.
    pub fn set_bandwidth(&mut self, kind: &str, value: u64) -> Result<(), SdpError> {
        bandwidth_set(&mut self.lines, kind, value, MEDIA_ORDER)
    }

    /// Removes the media-level bandwidth lines of type `kind`; returns how many were removed.
    pub fn remove_bandwidth(&mut self, kind: &str) -> usize {
        bandwidth_remove(&mut self.lines, kind)
    }

    /// The SRTP keys (`a=crypto`) in order, skipping malformed ones.
    pub fn crypto(&self) -> Vec<Crypto> {
        self.lines
            .iter()
            .filter_map(|l| l.attr_named("crypto").flatten())
            .filter_map(Crypto::parse)
            .collect()
    }
}
