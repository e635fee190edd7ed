//! Message builders of the B2BUA: responses to a request, requests inside a dialog, the ACK and
//! CANCEL of an INVITE. Pure functions over messages; no state.

use super::Dialog;
use crate::config::{Listener, Transport};
use crate::sip::header::NameAddr;
use crate::sip::{Header, HeaderName, Message, Method, StartLine};
use bytes::Bytes;

/// Methods Bridgehead accepts, as advertised in Allow.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, PRACK, UPDATE, INFO, NOTIFY";
/// The option tags Bridgehead supports toward a trunk: `timer` always, `100rel` unless the
/// trunk disables it, `precondition` when it terminates them.
pub fn supported(trunk: &crate::config::Trunk) -> String {
    let mut tags = Vec::with_capacity(3);
    if trunk.rel100.allowed() {
        tags.push("100rel");
    }
    tags.push("timer");
    if trunk.precondition == crate::config::Precondition::Terminate {
        tags.push("precondition");
    }
    tags.join(", ")
}
/// Body types Bridgehead accepts.
pub const ACCEPT: &str = "application/sdp";

/// The option tags (or other tokens) listed in every `name` header of a message.
pub fn option_tags<'m>(msg: &'m Message, name: &'m HeaderName) -> impl Iterator<Item = &'m str> {
    msg.headers_named(name)
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(crate::sip::header::split_list)
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// True when a `name` header of the message lists `tag` (option tags are case-insensitive).
pub fn has_option(msg: &Message, name: &HeaderName, tag: &str) -> bool {
    option_tags(msg, name).any(|t| t.eq_ignore_ascii_case(tag))
}

/// A header value with its `;tag=` parameter removed.
pub fn without_tag(value: &str) -> String {
    let Ok(addr) = NameAddr::parse(value) else {
        return value.to_string();
    };
    if addr.tag().is_none() {
        return value.to_string();
    }
    let params_at = addr.params.as_ptr() as usize - value.as_ptr() as usize;
    let mut out = value[..params_at].trim_end().to_string();
    for (name, val) in crate::sip::header::params(addr.params).map_while(Result::ok) {
        if name.eq_ignore_ascii_case("tag") {
            continue;
        }
        out.push(';');
        out.push_str(name);
        if let Some(val) = val {
            out.push('=');
            out.push_str(val);
        }
    }
    out
}

/// The tag of a From/To header value.
pub fn tag_of(value: &str) -> Option<String> {
    NameAddr::parse(value)
        .ok()
        .and_then(|addr| addr.tag().map(str::to_string))
}

/// A Via value for a request Bridgehead sends from this listener.
pub fn via_value(listener: &Listener, transport: Transport, branch: &str) -> String {
    format!(
        "SIP/2.0/{} {}:{};branch={};rport",
        transport.as_via_token(),
        listener.advertise,
        listener.port(transport),
        branch
    )
}

/// Bridgehead's Contact on a leg.
pub fn contact_value(user: Option<&str>, listener: &Listener, transport: Transport) -> String {
    let port = listener.port(transport);
    let transport = match transport {
        Transport::Udp => "",
        Transport::Tcp => ";transport=tcp",
        Transport::Tls => ";transport=tls",
    };
    match user {
        Some(user) => format!("<sip:{user}@{}:{port}{transport}>", listener.advertise),
        None => format!("<sip:{}:{port}{transport}>", listener.advertise),
    }
}

/// Bridgehead's Contact `contact` with another host (a tenant's FQDN, chosen by a rule):
/// `<sip:user@host:port;params>` keeps its user, port and parameters.
pub fn with_contact_host(contact: &str, host: &str) -> String {
    let Some(start) = contact.find("sip:").map(|i| i + 4) else {
        return contact.to_string();
    };
    let host_start = contact[start..]
        .find('@')
        .map_or(start, |at| start + at + 1);
    // An IPv6 host ends at its bracket, not at its first colon.
    let host_end = if contact[host_start..].starts_with('[') {
        contact[host_start..]
            .find(']')
            .map_or(contact.len(), |end| host_start + end + 1)
    } else {
        contact[host_start..]
            .find([':', ';', '>'])
            .map_or(contact.len(), |end| host_start + end)
    };
    format!("{}{host}{}", &contact[..host_start], &contact[host_end..])
}

/// The number of a sip:, sips: or tel: URI inside `text` (a Request-URI or a header value)
/// made E.164 by `plan`; None when there is none or it cannot be.
fn e164_in(text: &str, plan: &crate::config::E164) -> Option<String> {
    let (start, end) = uri_user_span(text)?;
    let number = plan.normalize(&text[start..end])?;
    (number != text[start..end]).then(|| format!("{}{number}{}", &text[..start], &text[end..]))
}

/// Where the user part of the first sip:, sips: or tel: URI in `text` stands.
fn uri_user_span(text: &str) -> Option<(usize, usize)> {
    let lower = text.to_ascii_lowercase();
    if let Some(at) = lower.find("tel:") {
        let start = at + 4;
        let end = text[start..]
            .find([';', '>', ' ', ','])
            .map_or(text.len(), |e| start + e);
        return Some((start, end));
    }
    let at = lower
        .find("sips:")
        .map(|i| i + 5)
        .or(lower.find("sip:").map(|i| i + 4))?;
    let rest = &text[at..];
    let user_end = rest.find('@')?;
    // No user part when a ':' ';' or '>' comes before the '@' (an address like sip:host:5060).
    if rest[..user_end].contains(['>', ';']) {
        return None;
    }
    let end = rest[..user_end].find(':').unwrap_or(user_end);
    Some((at, at + end))
}

/// Toward a trunk that takes E.164 only (Microsoft Teams): the numbers of a new INVITE's
/// Request-URI, From, To and P-Asserted-Identity made E.164 by `plan` (`030 1234` →
/// `+49301234`), and `;user=phone` on a sip: Request-URI that carries one.
pub fn numbers_to_e164(invite: &mut Message, plan: &crate::config::E164) {
    if let StartLine::Request { uri, .. } = &mut invite.start {
        if let Some(normalized) = e164_in(uri, plan) {
            *uri = normalized;
        }
        let is_e164 = uri_user_span(uri).is_some_and(|(s, _)| uri[s..].starts_with('+'));
        let lower = uri.to_ascii_lowercase();
        if is_e164 && lower.starts_with("sip") && !lower.contains(";user=phone") {
            uri.push_str(";user=phone");
        }
    }
    let names = [
        HeaderName::From,
        HeaderName::To,
        HeaderName::parse("P-Asserted-Identity"),
    ];
    for header in invite
        .headers
        .iter_mut()
        .filter(|h| names.contains(&h.name))
    {
        let normalized = header.value_str().and_then(|value| e164_in(value, plan));
        if let Some(normalized) = normalized {
            header.value = Bytes::from(normalized);
        }
    }
}

/// A request inside `dialog` (or the dialog-creating INVITE when it has no remote tag yet).
pub fn dialog_request(
    method: Method,
    dialog: &Dialog,
    via: String,
    cseq: u32,
    max_forwards: u8,
) -> Message {
    let mut headers = Vec::with_capacity(16);
    headers.push(Header::new(HeaderName::Via, via));
    for route in &dialog.route_set {
        headers.push(Header::new(HeaderName::Route, route.clone()));
    }
    headers.push(Header::new(
        HeaderName::MaxForwards,
        max_forwards.to_string(),
    ));
    headers.push(Header::new(
        HeaderName::From,
        format!("{};tag={}", dialog.local_party, dialog.local_tag),
    ));
    let to = match &dialog.remote_tag {
        Some(tag) => format!("{};tag={tag}", dialog.remote_party),
        None => dialog.remote_party.clone(),
    };
    headers.push(Header::new(HeaderName::To, to));
    headers.push(Header::new(HeaderName::CallId, dialog.call_id.clone()));
    headers.push(Header::new(HeaderName::CSeq, format!("{cseq} {method}")));
    Message {
        start: StartLine::Request {
            method,
            uri: dialog.remote_target.clone(),
        },
        headers,
        body: Bytes::new(),
    }
}

/// The hop-by-hop ACK for a non-2xx final response to `invite` (RFC 3261 §17.1.1.3).
pub fn ack_for(invite: &Message, response: &Message) -> Message {
    derived_request(invite, Method::Ack, response.header(&HeaderName::To))
}

/// The CANCEL of a pending `invite` (RFC 3261 §9.1).
pub fn cancel_for(invite: &Message) -> Message {
    derived_request(invite, Method::Cancel, None)
}

fn derived_request(invite: &Message, method: Method, to: Option<&Bytes>) -> Message {
    let uri = match &invite.start {
        StartLine::Request { uri, .. } => uri.clone(),
        StartLine::Response { .. } => String::new(),
    };
    let mut headers = Vec::with_capacity(8);
    let mut via_done = false;
    for header in &invite.headers {
        match header.name {
            HeaderName::Via if !via_done => {
                via_done = true;
                headers.push(header.clone());
            }
            HeaderName::Route | HeaderName::From | HeaderName::CallId | HeaderName::MaxForwards => {
                headers.push(header.clone())
            }
            HeaderName::To => headers.push(Header {
                name: HeaderName::To,
                value: to.cloned().unwrap_or_else(|| header.value.clone()),
            }),
            HeaderName::CSeq => {
                let number = header
                    .value_str()
                    .and_then(|v| crate::sip::header::CSeq::parse(v).ok())
                    .map_or(1, |c| c.number);
                headers.push(Header::new(HeaderName::CSeq, format!("{number} {method}")));
            }
            _ => {}
        }
    }
    Message {
        start: StartLine::Request { method, uri },
        headers,
        body: Bytes::new(),
    }
}

/// Appends the headers of `from` that are not B2BUA-owned to `to` (the policy filter comes
/// later, after the rules ran), and carries the body with its Content-Type.
pub fn copy_crossing(from: &Message, to: &mut Message) {
    for header in &from.headers {
        if !header.name.is_b2bua_owned() {
            to.headers.push(header.clone());
        }
    }
    if !from.body.is_empty() {
        if let Some(ct) = from.header(&HeaderName::ContentType) {
            to.headers.push(Header {
                name: HeaderName::ContentType,
                value: ct.clone(),
            });
        }
        to.body = from.body.clone();
    }
}

/// The user part of the URI in a name-addr header value.
pub fn user_of(value: &str) -> Option<String> {
    let addr = NameAddr::parse(value).ok()?;
    crate::sip::uri::Uri::parse(addr.uri)
        .ok()?
        .user
        .map(str::to_string)
}

/// The URI of a name-addr header value (e.g. a Contact's target).
pub fn uri_of(value: &str) -> Option<String> {
    NameAddr::parse(value).ok().map(|addr| addr.uri.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::response_to;

    #[test]
    fn without_tag_keeps_other_params() {
        assert_eq!(
            without_tag("\"A\" <sip:a@h>;tag=12;foo=bar"),
            "\"A\" <sip:a@h>;foo=bar"
        );
        assert_eq!(without_tag("<sip:a@h>"), "<sip:a@h>");
        assert_eq!(tag_of("sip:a@h;tag=9"), Some("9".into()));
    }

    #[test]
    fn response_adds_to_tag_once() {
        let req = Message::parse(&Bytes::from_static(
            b"INVITE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP x;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nX-Other: y\r\n\r\n",
        ))
        .expect("valid");
        let resp = response_to(&req, 180, None, Some("t9"));
        assert_eq!(resp.header_str(&HeaderName::To), Some("<sip:b@h>;tag=t9"));
        assert!(resp.header(&HeaderName::Other("X-Other".into())).is_none());
        let trying = response_to(&req, 100, None, Some("t9"));
        assert_eq!(trying.header_str(&HeaderName::To), Some("<sip:b@h>"));
    }
}
