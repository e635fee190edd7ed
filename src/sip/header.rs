//! Typed views of the headers the core needs: Via, name-addr (From, To, Contact, Route), CSeq,
//! parameters and comma-separated lists. Each view borrows from the header value; nothing is
//! copied and nothing panics on malformed input (a malformed value is an `Err`).

/// RFC 3261 `token` characters.
pub fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

fn is_lws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// A malformed header value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

/// Splits a header value at the commas that separate list elements (outside quotes and `<>`).
/// Elements are trimmed; an empty element is returned as an empty string so callers can reject it.
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let bytes = value.as_bytes();
    let mut start = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut in_quotes = false;
        let mut in_angle = false;
        let mut i = start;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if in_quotes => i += 1,
                b'"' => in_quotes = !in_quotes,
                b'<' if !in_quotes => in_angle = true,
                b'>' if !in_quotes => in_angle = false,
                b',' if !in_quotes && !in_angle => {
                    let item = value.get(start..i).unwrap_or_default().trim();
                    start = i + 1;
                    return Some(item);
                }
                _ => {}
            }
            i += 1;
        }
        done = true;
        Some(value.get(start..).unwrap_or_default().trim())
    })
}

/// Iterates over `;name[=value]` parameters; the text may start with `;` or not.
/// Yields `Err` for an empty parameter name or an unterminated quoted value.
pub fn params(text: &str) -> impl Iterator<Item = Result<(&str, Option<&str>), Malformed>> {
    let mut rest = text.trim_start_matches([' ', '\t']);
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed {
            return None;
        }
        rest = rest.trim_start();
        if rest.is_empty() {
            return None;
        }
        rest = rest.strip_prefix(';').unwrap_or(rest).trim_start();
        // Find the end of this parameter (next ';' outside quotes).
        let bytes = rest.as_bytes();
        let mut in_quotes = false;
        let mut end = bytes.len();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if in_quotes => i += 1,
                b'"' => in_quotes = !in_quotes,
                b';' if !in_quotes => {
                    end = i;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        let item = rest.get(..end).unwrap_or_default();
        rest = rest.get(end..).unwrap_or_default();
        if in_quotes {
            failed = true;
            return Some(Err(Malformed));
        }
        let (name, value) = match item.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (item.trim(), None),
        };
        if name.is_empty() || !name.bytes().all(is_token_char) || value == Some("") {
            failed = true;
            return Some(Err(Malformed));
        }
        Some(Ok((name, value)))
    })
}

/// The value of a parameter (case-insensitive name); `Some("")` for a flag parameter.
pub fn param<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    params(text)
        .map_while(Result::ok)
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.unwrap_or(""))
}

/// The value of the `branch` parameter of a Via header value.
pub fn branch_of(via: &str) -> Option<&str> {
    let params_at = via.find(';')?;
    param(&via[params_at..], "branch")
}

/// Checks that every parameter is well formed.
pub fn check_params(text: &str) -> Result<(), Malformed> {
    params(text).try_for_each(|p| p.map(|_| ()))
}

/// One Via value: `SIP/2.0/UDP host:port;params`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via<'a> {
    pub transport: &'a str,
    pub host: &'a str,
    pub port: Option<u16>,
    /// The parameters, starting with `;` (or empty).
    pub params: &'a str,
}

impl<'a> Via<'a> {
    /// Parses one Via value (not a list).
    pub fn parse(value: &'a str) -> Result<Via<'a>, Malformed> {
        // sent-protocol = name SLASH version SLASH transport, with LWS allowed around the slashes.
        let mut rest = value.trim();
        let mut fields = [""; 3];
        for (index, field) in fields.iter_mut().enumerate() {
            rest = rest.trim_start();
            let end = rest.find(['/', ' ', '\t']).unwrap_or(rest.len());
            *field = &rest[..end];
            rest = rest[end..].trim_start();
            if index < 2 {
                rest = rest.strip_prefix('/').ok_or(Malformed)?;
            }
        }
        if !fields[0].eq_ignore_ascii_case("SIP")
            || fields[1] != "2.0"
            || fields[2].is_empty()
            || !fields[2].bytes().all(is_token_char)
        {
            return Err(Malformed);
        }
        let rest = rest.trim_start();
        let end = rest.find(';').unwrap_or(rest.len());
        let (host, port) = split_host_port(rest[..end].trim())?;
        let params = &rest[end..];
        check_params(params)?;
        Ok(Via {
            transport: fields[2],
            host,
            port,
            params,
        })
    }

    /// The branch parameter.
    pub fn branch(&self) -> Option<&'a str> {
        param(self.params, "branch")
    }
}

/// Splits `host[:port]` (IPv6 references in brackets). Rejects empty hosts and bad ports.
pub fn split_host_port(text: &str) -> Result<(&str, Option<u16>), Malformed> {
    let (host, port) = if text.starts_with('[') {
        let close = text.find(']').ok_or(Malformed)?;
        let host = &text[..=close];
        let inner = &host[1..host.len() - 1];
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(Malformed);
        }
        match &text[close + 1..] {
            "" => (host, None),
            port => (host, Some(port.strip_prefix(':').ok_or(Malformed)?)),
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty()
        || !(host.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'))
    {
        return Err(Malformed);
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| Malformed)?)
        }
        Some(_) => return Err(Malformed),
    };
    Ok((host, port))
}

/// A name-addr or addr-spec with header parameters: From, To, Contact, Route, Record-Route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Display name as written (quotes included when it was quoted).
    pub display: Option<&'a str>,
    /// The URI, without angle brackets.
    pub uri: &'a str,
    /// The header parameters, starting with `;` (or empty).
    pub params: &'a str,
    /// True when the URI was enclosed in `<>`.
    pub bracketed: bool,
}

impl<'a> NameAddr<'a> {
    /// Parses one name-addr / addr-spec value (not a list).
    pub fn parse(value: &'a str) -> Result<NameAddr<'a>, Malformed> {
        let value = value.trim();
        let bytes = value.as_bytes();
        // Find a '<' outside a quoted display name.
        let mut i = 0;
        let mut quoted_display = false;
        if bytes.first() == Some(&b'"') {
            i = 1;
            loop {
                match bytes.get(i) {
                    None => return Err(Malformed),
                    Some(b'\\') => i += 2,
                    Some(b'"') => break,
                    Some(_) => i += 1,
                }
            }
            i += 1;
            quoted_display = true;
        }
        let open = value[i..].find('<').map(|p| p + i);
        match open {
            Some(open) => {
                let display = value[..open].trim();
                if !quoted_display && !display.bytes().all(|b| is_token_char(b) || is_lws(b)) {
                    return Err(Malformed);
                }
                if quoted_display && !value[i..open].trim().is_empty() {
                    return Err(Malformed);
                }
                let close = value[open..].find('>').ok_or(Malformed)? + open;
                let uri = &value[open + 1..close];
                if uri.is_empty() || uri.bytes().any(|b| is_lws(b) || b == b'<') {
                    return Err(Malformed);
                }
                let params = value[close + 1..].trim_start();
                if !params.is_empty() && !params.starts_with(';') {
                    return Err(Malformed);
                }
                check_params(params)?;
                Ok(NameAddr {
                    display: (!display.is_empty()).then_some(display),
                    uri,
                    params,
                    bracketed: true,
                })
            }
            None if quoted_display => Err(Malformed),
            None => {
                // addr-spec: parameters after the URI belong to the header, and the URI itself
                // may carry neither ',', '?' nor white space.
                let end = value.find(';').unwrap_or(value.len());
                let uri = value[..end].trim();
                if uri.is_empty()
                    || uri
                        .bytes()
                        .any(|b| is_lws(b) || matches!(b, b',' | b'?' | b'<' | b'>' | b'"'))
                {
                    return Err(Malformed);
                }
                let params = &value[end..];
                check_params(params)?;
                Ok(NameAddr {
                    display: None,
                    uri,
                    params,
                    bracketed: false,
                })
            }
        }
    }

    /// The tag parameter.
    pub fn tag(&self) -> Option<&'a str> {
        param(self.params, "tag").filter(|t| !t.is_empty())
    }
}

/// A CSeq value: sequence number and method token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub number: u32,
    pub method: &'a str,
}

impl<'a> CSeq<'a> {
    /// Parses `1*DIGIT LWS Method`; the number must fit in 32 bits (RFC 3261 §8.1.1.5).
    pub fn parse(value: &'a str) -> Result<CSeq<'a>, Malformed> {
        let value = value.trim();
        let split = value.find([' ', '\t']).ok_or(Malformed)?;
        let (number, method) = (&value[..split], value[split..].trim());
        if number.is_empty()
            || number.len() > 10
            || !number.bytes().all(|b| b.is_ascii_digit())
            || method.is_empty()
            || !method.bytes().all(is_token_char)
        {
            return Err(Malformed);
        }
        let number: u64 = number.parse().map_err(|_| Malformed)?;
        let number = u32::try_from(number).map_err(|_| Malformed)?;
        Ok(CSeq { number, method })
    }
}

/// Parses Max-Forwards; values above 255 are clamped (RFC 4475 §3.1.2.4 allows treating them
/// as absent; clamping keeps the request forwardable).
pub fn max_forwards(value: &str) -> Result<u8, Malformed> {
    let value = value.trim();
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Malformed);
    }
    let parsed: u64 = value.parse().map_err(|_| Malformed)?;
    Ok(u8::try_from(parsed.min(255)).unwrap_or(u8::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_with_lws_and_params() {
        let via = Via::parse("SIP  /  2.0 / UDP  192.0.2.1:5060 ; branch = z9hG4bK77 ;rport")
            .expect("valid");
        assert_eq!(via.transport, "UDP");
        assert_eq!(via.host, "192.0.2.1");
        assert_eq!(via.port, Some(5060));
        assert_eq!(via.branch(), Some("z9hG4bK77"));
    }

    #[test]
    fn via_ipv6_and_faults() {
        let via =
            Via::parse("SIP/2.0/UDP [2001:db8::9:1]:5070;branch=z9hG4bKas3-111").expect("valid");
        assert_eq!(via.host, "[2001:db8::9:1]");
        assert_eq!(via.port, Some(5070));
        assert!(Via::parse("SIP/2.0/UDP 192.0.2.15;;").is_err());
        assert!(Via::parse("SIP/2.0/UDP").is_err());
        assert!(Via::parse("SIP/2.0/UDP host:99999").is_err());
    }

    #[test]
    fn list_split_respects_quotes_and_brackets() {
        let items: Vec<&str> = split_list(r#""a, b" <sip:x@y;p=1,2>;q=1, <sip:z@w> , "#).collect();
        assert_eq!(items, [r#""a, b" <sip:x@y;p=1,2>;q=1"#, "<sip:z@w>", ""]);
    }

    #[test]
    fn name_addr_forms() {
        let na = NameAddr::parse(r#""Alice \"A\"" <sip:alice@example.com;transport=tcp>;tag=77"#)
            .expect("valid");
        assert_eq!(na.uri, "sip:alice@example.com;transport=tcp");
        assert_eq!(na.tag(), Some("77"));
        let spec = NameAddr::parse("sip:bob@example.com;tag=x").expect("valid");
        assert_eq!(spec.uri, "sip:bob@example.com");
        assert_eq!(spec.tag(), Some("x"));
        let nolws = NameAddr::parse("caller<sip:caller@example.com>;tag=323").expect("valid");
        assert_eq!(nolws.display, Some("caller"));
    }

    #[test]
    fn name_addr_faults() {
        assert!(NameAddr::parse(r#""Mr. J. User <sip:j.user@example.com>"#).is_err());
        assert!(NameAddr::parse("Bell, Alexander <sip:a.g.bell@example.com>;tag=43").is_err());
        assert!(NameAddr::parse(r#""Watson, Thomas" < sip:t.watson@example.org >"#).is_err());
        assert!(NameAddr::parse("sip:user@example.com?Route=%3Csip:sip.example.com%3E").is_err());
        assert!(NameAddr::parse(r#""Joe" <sip:joe@example.org>;;;;"#).is_err());
    }

    #[test]
    fn cseq_limits() {
        assert_eq!(
            CSeq::parse("0009 INVITE"),
            Ok(CSeq {
                number: 9,
                method: "INVITE"
            })
        );
        assert!(CSeq::parse("4294967295 OPTIONS").is_ok());
        assert!(CSeq::parse("4294967296 OPTIONS").is_err());
        assert!(CSeq::parse("36893488147419103232 REGISTER").is_err());
        assert!(CSeq::parse("INVITE").is_err());
    }

    #[test]
    fn max_forwards_clamps() {
        assert_eq!(max_forwards("0068"), Ok(68));
        assert_eq!(max_forwards("300"), Ok(255));
        assert!(max_forwards("-1").is_err());
    }
}
