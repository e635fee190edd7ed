//! Validation of the headers every request and response must carry, done once per message:
//! the result caches the few typed values the core needs (RFC 3261 §8.1.1, §8.2, RFC 4475).

use super::header::{max_forwards, split_list, CSeq, NameAddr, Via};
use super::uri::Uri;
use super::{Fault, HeaderName, Message, Method, StartLine};

/// What the core needs to know of a valid request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    pub call_id: String,
    pub from_tag: Option<String>,
    pub to_tag: Option<String>,
    pub cseq: u32,
    pub max_forwards: Option<u8>,
}

/// What the core needs to know of a valid response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseInfo {
    pub branch: String,
    pub cseq_method: String,
    pub call_id: String,
}

fn single<'a>(
    msg: &'a Message,
    name: &'a HeaderName,
    label: &'static str,
) -> Result<&'a str, Fault> {
    let mut values = msg.headers_named(name);
    let first = values.next().ok_or(Fault::Missing(label))?;
    if values.next().is_some() {
        return Err(Fault::Repeated(label));
    }
    std::str::from_utf8(first).map_err(|_| Fault::Header(label))
}

fn check_vias(msg: &Message) -> Result<(), Fault> {
    let mut any = false;
    for value in msg.headers_named(&HeaderName::Via) {
        let value = std::str::from_utf8(value).map_err(|_| Fault::Header("Via"))?;
        for item in split_list(value) {
            Via::parse(item).map_err(|_| Fault::Header("Via"))?;
            any = true;
        }
    }
    if any {
        Ok(())
    } else {
        Err(Fault::Missing("Via"))
    }
}

/// The top Via value.
pub fn top_via(msg: &Message) -> Option<Via<'_>> {
    let value = msg.header_str(&HeaderName::Via)?;
    Via::parse(split_list(value).next()?).ok()
}

/// Methods whose requests carry a Contact that must be a valid target.
fn needs_valid_contact(method: &Method) -> bool {
    matches!(
        method,
        Method::Invite | Method::Register | Method::Subscribe | Method::Refer | Method::Update
    )
}

/// Checks a request and extracts what the core needs.
pub fn check_request(msg: &Message) -> Result<RequestInfo, Fault> {
    let StartLine::Request { method, uri } = &msg.start else {
        return Err(Fault::StartLine);
    };
    check_vias(msg)?;
    if let Some(via) = top_via(msg) {
        if via.branch() == Some("z9hG4bK") {
            return Err(Fault::Branch);
        }
    }
    let from = single(msg, &HeaderName::From, "From")?;
    let from = NameAddr::parse(from).map_err(|_| Fault::Header("From"))?;
    let to = single(msg, &HeaderName::To, "To")?;
    let to = NameAddr::parse(to).map_err(|_| Fault::Header("To"))?;
    let call_id = single(msg, &HeaderName::CallId, "Call-ID")?.trim();
    if call_id.is_empty() || call_id.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(Fault::Header("Call-ID"));
    }
    let cseq =
        CSeq::parse(single(msg, &HeaderName::CSeq, "CSeq")?).map_err(|_| Fault::Header("CSeq"))?;
    if cseq.method != method.as_str() {
        return Err(Fault::CSeqMethod);
    }
    let max_forwards = match msg.headers_named(&HeaderName::MaxForwards).count() {
        0 => None,
        1 => Some(
            max_forwards(single(msg, &HeaderName::MaxForwards, "Max-Forwards")?)
                .map_err(|_| Fault::Header("Max-Forwards"))?,
        ),
        _ => return Err(Fault::Repeated("Max-Forwards")),
    };
    let parsed_uri = Uri::parse(uri).map_err(|_| Fault::RequestUri)?;
    if parsed_uri.headers.is_some() {
        return Err(Fault::RequestUri);
    }
    if needs_valid_contact(method) {
        for value in msg.headers_named(&HeaderName::Contact) {
            let value = std::str::from_utf8(value).map_err(|_| Fault::Header("Contact"))?;
            if value.trim() == "*" && *method == Method::Register {
                continue;
            }
            for item in split_list(value) {
                let addr = NameAddr::parse(item).map_err(|_| Fault::Header("Contact"))?;
                Uri::parse(addr.uri).map_err(|_| Fault::Header("Contact"))?;
            }
        }
    }
    Ok(RequestInfo {
        call_id: call_id.to_string(),
        from_tag: from.tag().map(str::to_string),
        to_tag: to.tag().map(str::to_string),
        cseq: cseq.number,
        max_forwards,
    })
}

/// Checks a response and extracts what transaction matching needs.
pub fn check_response(msg: &Message) -> Result<ResponseInfo, Fault> {
    let via = top_via(msg).ok_or(Fault::Header("Via"))?;
    let branch = via.branch().ok_or(Fault::Branch)?.to_string();
    let cseq =
        CSeq::parse(single(msg, &HeaderName::CSeq, "CSeq")?).map_err(|_| Fault::Header("CSeq"))?;
    let call_id = single(msg, &HeaderName::CallId, "Call-ID")?
        .trim()
        .to_string();
    single(msg, &HeaderName::From, "From")?;
    single(msg, &HeaderName::To, "To")?;
    Ok(ResponseInfo {
        branch,
        cseq_method: cseq.method.to_string(),
        call_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn check(text: &str) -> Result<RequestInfo, Fault> {
        check_request(&Message::parse(&Bytes::from(text.to_string())).expect("parses"))
    }

    const OK: &str = "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c1\r\nCSeq: 7 INVITE\r\nMax-Forwards: 70\r\nContact: <sip:a@h>\r\n\r\n";

    #[test]
    fn valid_request_info() {
        let info = check(OK).expect("valid");
        assert_eq!(info.call_id, "c1");
        assert_eq!(info.from_tag.as_deref(), Some("1"));
        assert_eq!(info.to_tag, None);
        assert_eq!(info.cseq, 7);
        assert_eq!(info.max_forwards, Some(70));
    }

    #[test]
    fn faults() {
        assert_eq!(
            check(&OK.replace("7 INVITE", "7 OPTIONS")),
            Err(Fault::CSeqMethod)
        );
        assert_eq!(
            check(&OK.replace("Call-ID: c1\r\n", "")),
            Err(Fault::Missing("Call-ID"))
        );
        assert_eq!(
            check(&OK.replace("Call-ID: c1\r\n", "Call-ID: c1\r\ni: c2\r\n")),
            Err(Fault::Repeated("Call-ID"))
        );
        assert_eq!(
            check(&OK.replace("z9hG4bK1", "z9hG4bK")),
            Err(Fault::Branch)
        );
        assert_eq!(
            check(&OK.replace("sip:bob@example.com", "sip:bob@example.com?Route=x")),
            Err(Fault::RequestUri)
        );
        assert_eq!(
            check(&OK.replace("Contact: <sip:a@h>", "Contact: sip:a@h?x=y")),
            Err(Fault::Header("Contact"))
        );
    }
}
