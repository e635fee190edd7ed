//! Multipart message bodies as SIP carries them (RFC 5621, the MIME framing of RFC 2046 §5.1):
//! an SDP part beside a PIDF-LO location (emergency calls, RFC 6442) or an ISUP message (SIP-I).
//! The parts are found by the boundary and kept byte for byte (their headers and content, in
//! whatever transfer encoding they came), so one part can be replaced or the others dropped
//! without touching the rest.

use bytes::Bytes;

/// One part: its header lines (as they came, without the blank line) and its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub headers: String,
    pub content: Bytes,
}

impl Part {
    /// The part's Content-Type (its media type, lower case, without parameters). A part without
    /// one is `text/plain` (RFC 2046 §5.1).
    pub fn media_type(&self) -> String {
        self.headers
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-type"))
            .map_or_else(|| "text/plain".to_string(), |(_, value)| media_type(value))
    }

    /// True for an SDP part.
    pub fn is_sdp(&self) -> bool {
        self.media_type() == "application/sdp"
    }
}

/// A multipart body: its boundary and parts (the preamble and epilogue are dropped, as
/// RFC 2046 lets a receiver do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Multipart {
    pub boundary: String,
    pub parts: Vec<Part>,
}

/// The media type of a Content-Type value, lower case, without parameters.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// True when a Content-Type value names a multipart body.
pub fn is_multipart(content_type: &str) -> bool {
    media_type(content_type).starts_with("multipart/")
}

/// The `boundary` parameter of a Content-Type value (quotes removed).
fn boundary_of(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_string())
            .filter(|b| !b.is_empty() && b.len() <= 70)
    })
}

/// Where `needle` starts in `haystack`, from `from`.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| at + from)
}

impl Multipart {
    /// Splits `body` by the boundary its Content-Type names; `None` when that is not a
    /// well-formed multipart body (no boundary, no delimiter, no closing delimiter).
    pub fn parse(content_type: &str, body: &Bytes) -> Option<Multipart> {
        if !is_multipart(content_type) {
            return None;
        }
        let boundary = boundary_of(content_type)?;
        let delimiter = format!("\r\n--{boundary}");
        // The first delimiter may open the body (no CRLF before it).
        let open = format!("--{boundary}");
        let mut at = if body.starts_with(open.as_bytes()) {
            open.len()
        } else {
            find(body, delimiter.as_bytes(), 0)? + delimiter.len()
        };
        let mut parts = Vec::new();
        loop {
            if body.get(at..at + 2) == Some(b"--") {
                return Some(Multipart { boundary, parts });
            }
            // Transport padding, then the line end that ends the delimiter line.
            while matches!(body.get(at), Some(b' ' | b'\t')) {
                at += 1;
            }
            if body.get(at..at + 2) != Some(b"\r\n") {
                return None;
            }
            at += 2;
            let end = find(body, delimiter.as_bytes(), at)?;
            let part = body.slice(at..end);
            let (headers, content) = if part.starts_with(b"\r\n") {
                (String::new(), part.slice(2..))
            } else {
                let split = find(&part, b"\r\n\r\n", 0)?;
                let headers = std::str::from_utf8(&part[..split]).ok()?.to_string();
                (headers, part.slice(split + 4..))
            };
            parts.push(Part { headers, content });
            at = end + delimiter.len();
        }
    }

    /// The index of the first SDP part.
    pub fn sdp_index(&self) -> Option<usize> {
        self.parts.iter().position(Part::is_sdp)
    }

    /// The body again, with the same boundary.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::new();
        for part in &self.parts {
            out.extend_from_slice(b"--");
            out.extend_from_slice(self.boundary.as_bytes());
            out.extend_from_slice(b"\r\n");
            if !part.headers.is_empty() {
                out.extend_from_slice(part.headers.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&part.content);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"--");
        out.extend_from_slice(self.boundary.as_bytes());
        out.extend_from_slice(b"--\r\n");
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    const PIDF: &str = "<?xml version=\"1.0\"?>\r\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"pres:alice@example.com\"/>";

    fn emergency_body() -> Bytes {
        Bytes::from(format!(
            "preamble to ignore\r\n--boundary1\r\nContent-Type: application/sdp\r\n\r\n{SDP}\r\n--boundary1 \r\nContent-Type: application/pidf+xml\r\nContent-ID: <loc@example.com>\r\nContent-Disposition: by-reference;handling=optional\r\n\r\n{PIDF}\r\n--boundary1--\r\nepilogue"
        ))
    }

    #[test]
    fn an_emergency_body_splits_into_its_sdp_and_location_parts() {
        let body = emergency_body();
        let multipart =
            Multipart::parse("multipart/mixed;boundary=boundary1", &body).expect("multipart");
        assert_eq!(multipart.parts.len(), 2);
        assert_eq!(multipart.sdp_index(), Some(0));
        assert_eq!(multipart.parts[0].content, SDP.as_bytes());
        assert_eq!(multipart.parts[1].media_type(), "application/pidf+xml");
        assert_eq!(multipart.parts[1].content, PIDF.as_bytes());
        assert!(multipart.parts[1]
            .headers
            .contains("Content-ID: <loc@example.com>"));
        // Quoted boundaries and other parameters are fine; what comes out parses the same.
        let again = Multipart::parse(
            "Multipart/Mixed; charset=x; boundary=\"boundary1\"",
            &multipart.to_bytes(),
        )
        .expect("again");
        assert_eq!(again, multipart);
    }

    #[test]
    fn a_body_without_its_boundary_or_closing_delimiter_is_not_multipart() {
        let body = emergency_body();
        assert!(Multipart::parse("multipart/mixed", &body).is_none());
        assert!(Multipart::parse("multipart/mixed;boundary=other", &body).is_none());
        assert!(Multipart::parse("application/sdp", &body).is_none());
        let cut = body.slice(..body.len() - 30);
        assert!(Multipart::parse("multipart/mixed;boundary=boundary1", &cut).is_none());
    }
}
