//! SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966), borrowed from the text they came in.

use super::header::{check_params, param, split_host_port, Malformed};

/// The scheme of a URI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    /// Any other scheme: well formed, but not something a SIP element can route.
    Other,
}

/// A parsed URI. For tel: URIs `user` is the number and `host` is empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uri<'a> {
    pub scheme: Scheme,
    pub user: Option<&'a str>,
    pub host: &'a str,
    pub port: Option<u16>,
    /// URI parameters, starting with `;` (or empty).
    pub params: &'a str,
    /// The `?headers` part, without the `?`.
    pub headers: Option<&'a str>,
}

/// Quick structural check of a Request-URI token: a scheme, no brackets or white space.
pub fn is_plausible_request_uri(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once(':') else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && !rest.is_empty()
        && !text
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == b'<' || b == b'>')
}

impl<'a> Uri<'a> {
    /// Parses a URI. Unknown schemes parse as `Scheme::Other` with the rest in `host`.
    pub fn parse(text: &'a str) -> Result<Uri<'a>, Malformed> {
        let (scheme, rest) = text.split_once(':').ok_or(Malformed)?;
        let scheme = if scheme.eq_ignore_ascii_case("sip") {
            Scheme::Sip
        } else if scheme.eq_ignore_ascii_case("sips") {
            Scheme::Sips
        } else if scheme.eq_ignore_ascii_case("tel") {
            Scheme::Tel
        } else {
            return Ok(Uri {
                scheme: Scheme::Other,
                user: None,
                host: rest,
                port: None,
                params: "",
                headers: None,
            });
        };
        if rest.bytes().any(|b| b.is_ascii_whitespace()) || rest.is_empty() {
            return Err(Malformed);
        }
        if scheme == Scheme::Tel {
            let end = rest.find(';').unwrap_or(rest.len());
            let number = &rest[..end];
            if number.is_empty()
                || !number.bytes().all(|b| {
                    b.is_ascii_hexdigit()
                        || matches!(b, b'+' | b'-' | b'.' | b'(' | b')' | b'*' | b'#')
                })
            {
                return Err(Malformed);
            }
            check_params(&rest[end..])?;
            return Ok(Uri {
                scheme,
                user: Some(number),
                host: "",
                port: None,
                params: &rest[end..],
                headers: None,
            });
        }
        // The user part may itself contain '?' and ';' (RFC 3261 user-unreserved), but never an
        // unescaped '@': split there first, then look for ?headers in the host part.
        let (user, after) = match rest.rfind('@') {
            Some(0) => return Err(Malformed),
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (hostpart, headers) = match after.split_once('?') {
            Some((hostpart, headers)) => (hostpart, Some(headers)),
            None => (after, None),
        };
        let end = hostpart.find(';').unwrap_or(hostpart.len());
        let (host, port) = split_host_port(&hostpart[..end])?;
        let params = &hostpart[end..];
        check_params(params)?;
        Ok(Uri {
            scheme,
            user,
            host,
            port,
            params,
            headers,
        })
    }

    /// A URI parameter (`Some("")` for a flag such as `lr`).
    pub fn param(&self, name: &str) -> Option<&'a str> {
        param(self.params, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uri_parts() {
        let uri = Uri::parse("sip:+15550100@[2001:db8::10]:5070;user=phone;transport=tcp")
            .expect("valid");
        assert_eq!(uri.scheme, Scheme::Sip);
        assert_eq!(uri.user, Some("+15550100"));
        assert_eq!(uri.host, "[2001:db8::10]");
        assert_eq!(uri.port, Some(5070));
        assert_eq!(uri.param("transport"), Some("tcp"));
    }

    #[test]
    fn question_mark_in_user_part_is_not_headers() {
        let uri = Uri::parse("sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com")
            .expect("valid");
        assert_eq!(uri.host, "example.com");
        assert_eq!(uri.headers, None);
        let with_headers =
            Uri::parse("sip:user@example.com?Route=%3Csip:example.com%3E").expect("valid");
        assert_eq!(with_headers.headers, Some("Route=%3Csip:example.com%3E"));
    }

    #[test]
    fn semicolon_in_user_part() {
        let uri = Uri::parse("sip:user;par=u%40example.net@example.com").expect("valid");
        assert_eq!(uri.user, Some("user;par=u%40example.net"));
        assert_eq!(uri.host, "example.com");
    }

    #[test]
    fn tel_and_other_schemes() {
        let tel = Uri::parse("tel:+1-555-0100;phone-context=example.com").expect("valid");
        assert_eq!(tel.scheme, Scheme::Tel);
        assert_eq!(tel.user, Some("+1-555-0100"));
        let other = Uri::parse("NEWSCHEME:foo%20bar").expect("parses");
        assert_eq!(other.scheme, Scheme::Other);
    }

    #[test]
    fn malformed_uris() {
        assert!(Uri::parse("sip:user@2001:db8::10").is_err());
        assert!(Uri::parse("sip:@example.com").is_err());
        assert!(Uri::parse("sip:").is_err());
        assert!(!is_plausible_request_uri("<sip:user@example.com>"));
        assert!(is_plausible_request_uri(
            "sip:user@example.com?Route=%3Csip:a%3E"
        ));
    }
}
