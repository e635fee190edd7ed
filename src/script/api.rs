//! The objects Lua rules see: `call`, the message (`req` / `resp`) and the `bh` library table.

use super::RuleMetrics;
use crate::call::is_b2bua_owned;
use crate::config::{Profile, TrunkId};
use crate::sip::header::{is_token_char, NameAddr};
use crate::sip::uri::Uri;
use crate::sip::{Header, HeaderName, Message, StartLine};
use bytes::Bytes;
use mlua::{Lua, LuaString, Table, UserData, UserDataFields, UserDataMethods, Value};
use regex::Regex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// What a rule decided for a call being set up (`on_invite`) or failing (`on_failure`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteDecision {
    /// Send the call to this trunk, optionally to one peer and with another Request-URI.
    Route {
        trunk: TrunkId,
        peer: Option<SocketAddr>,
        uri: Option<String>,
    },
    /// Refuse the call with this status, reason and extra headers.
    Reject {
        status: u16,
        reason: String,
        headers: Vec<(HeaderName, String)>,
    },
}

/// The `call` object: which call a hook runs for, its variables, and the routing decision a
/// hook takes.
#[derive(Debug)]
pub struct HookCall {
    /// The call's id (the Call-ID of its A-leg).
    pub id: String,
    /// The trunk the call arrived on.
    pub trunk: TrunkId,
    /// The decision taken by `call:route` or `call:reject`, if any.
    pub decision: Option<RouteDecision>,
    /// `call.vars`, kept by the call across hooks.
    pub vars: Option<Table>,
}

impl HookCall {
    /// A call object for hooks.
    pub fn new(id: String, trunk: TrunkId, vars: Option<Table>) -> HookCall {
        HookCall {
            id,
            trunk,
            decision: None,
            vars,
        }
    }
}

/// Per-state data the API functions read: the profile's trunks and the metrics registry.
pub(super) struct RuleContext {
    trunk_names: Vec<String>,
    /// `call.trunk` objects, read-only, one per trunk.
    trunk_tables: Vec<Table>,
    metrics: Arc<RuleMetrics>,
    regexes: HashMap<String, Regex>,
}

/// The id of the call whose hook is running (for `bh.log`).
pub(super) struct CurrentCall(pub String);

/// Regexes kept compiled per Lua state.
const REGEX_CACHE: usize = 256;

/// Stores what the API needs in the Lua state: trunk objects and the metrics registry.
pub(super) fn install_app_data(
    lua: &Lua,
    profile: &Profile,
    metrics: Arc<RuleMetrics>,
) -> mlua::Result<()> {
    let mut trunk_tables = Vec::new();
    for trunk in &profile.trunks {
        let params = lua.create_table()?;
        for (key, value) in &trunk.params {
            params.raw_set(key.as_str(), value.as_str())?;
        }
        let table = lua.create_table()?;
        table.raw_set("name", trunk.name.as_str())?;
        table.raw_set("params", params)?;
        let meta = lua.create_table()?;
        let name = trunk.name.clone();
        meta.raw_set(
            "__tostring",
            lua.create_function(move |_, _: Value| Ok(name.clone()))?,
        )?;
        table.set_metatable(Some(meta))?;
        trunk_tables.push(table);
    }
    lua.set_app_data(RuleContext {
        trunk_names: profile.trunks.iter().map(|t| t.name.clone()).collect(),
        trunk_tables,
        metrics,
        regexes: HashMap::new(),
    });
    lua.set_app_data(CurrentCall(String::new()));
    Ok(())
}

fn context(lua: &Lua) -> mlua::Result<mlua::AppDataRef<'_, RuleContext>> {
    lua.app_data_ref::<RuleContext>()
        .ok_or_else(|| mlua::Error::runtime("rule context missing"))
}

fn trunk_index(lua: &Lua, name: &str, function: &str) -> mlua::Result<TrunkId> {
    context(lua)?
        .trunk_names
        .iter()
        .position(|n| n == name)
        .ok_or_else(|| mlua::Error::runtime(format!("{function}: no trunk named '{name}'")))
}

impl UserData for HookCall {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("id", |_, call| Ok(call.id.clone()));
        fields.add_field_method_get("trunk", |lua, call| {
            Ok(context(lua)?.trunk_tables.get(call.trunk).cloned())
        });
        fields.add_field_method_get("vars", |_, call| Ok(call.vars.clone()));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method_mut(
            "route",
            |lua, call, (trunk, opts): (String, Option<Table>)| {
                let trunk = trunk_index(lua, &trunk, "call:route")?;
                let mut peer = None;
                let mut uri = None;
                if let Some(opts) = opts {
                    if let Some(text) = opts.get::<Option<String>>("peer")? {
                        peer = Some(text.parse::<SocketAddr>().map_err(|_| {
                            mlua::Error::runtime(format!(
                                "call:route: peer '{text}' is not IP:port"
                            ))
                        })?);
                    }
                    if let Some(text) = opts.get::<Option<String>>("uri")? {
                        if !crate::sip::uri::is_plausible_request_uri(&text)
                            || Uri::parse(&text).is_err()
                        {
                            return Err(mlua::Error::runtime(format!(
                                "call:route: uri '{text}' is not a valid URI"
                            )));
                        }
                        uri = Some(text);
                    }
                }
                call.decision = Some(RouteDecision::Route { trunk, peer, uri });
                Ok(())
            },
        );
        methods.add_method_mut(
            "reject",
            |_, call, (status, reason, extra): (u16, Option<String>, Option<Table>)| {
                if !(300..=699).contains(&status) {
                    return Err(mlua::Error::runtime(format!(
                        "call:reject: status {status} is not a final error status (300-699)"
                    )));
                }
                let reason =
                    reason.unwrap_or_else(|| crate::sip::reason_phrase(status).to_string());
                check_value(reason.as_bytes())?;
                let mut headers = Vec::new();
                if let Some(extra) = extra {
                    for pair in extra.pairs::<LuaString, LuaString>() {
                        let (name, value) = pair?;
                        let name = header_name(&name.as_bytes())?;
                        check_value(&value.as_bytes())?;
                        headers.push((name, value.to_str()?.to_string()));
                    }
                }
                call.decision = Some(RouteDecision::Reject {
                    status,
                    reason,
                    headers,
                });
                Ok(())
            },
        );
    }
}

/// A media event for `on_media`.
#[derive(Clone, Debug, PartialEq)]
pub enum MediaEvent {
    /// An RFC 4733 DTMF digit (or one received as SIP INFO) ended.
    Dtmf {
        leg: &'static str,
        digit: char,
        duration_ms: u32,
    },
    /// No RTP arrived on a leg for `seconds`.
    RtpTimeout { leg: &'static str, seconds: u32 },
    /// A receive quality report for a leg (from RTCP or Bridgehead's own counters).
    Quality {
        leg: &'static str,
        loss_percent: f64,
        jitter_ms: f64,
    },
}

impl MediaEvent {
    pub(super) fn to_lua(&self, lua: &Lua) -> mlua::Result<Table> {
        let table = lua.create_table()?;
        match self {
            MediaEvent::Dtmf {
                leg,
                digit,
                duration_ms,
            } => {
                table.raw_set("kind", "dtmf")?;
                table.raw_set("leg", *leg)?;
                table.raw_set("digit", digit.to_string())?;
                table.raw_set("duration", *duration_ms)?;
            }
            MediaEvent::RtpTimeout { leg, seconds } => {
                table.raw_set("kind", "rtp_timeout")?;
                table.raw_set("leg", *leg)?;
                table.raw_set("seconds", *seconds)?;
            }
            MediaEvent::Quality {
                leg,
                loss_percent,
                jitter_ms,
            } => {
                table.raw_set("kind", "quality")?;
                table.raw_set("leg", *leg)?;
                table.raw_set("loss", *loss_percent)?;
                table.raw_set("jitter", *jitter_ms)?;
            }
        }
        Ok(table)
    }
}

/// How a call ended, for `on_call_end`.
#[derive(Clone, Debug, PartialEq)]
pub struct CallEndInfo {
    /// "bye", "cancel", "rejected", "timeout" or "error".
    pub reason: &'static str,
    /// Who ended it: "a", "b" or "sbc".
    pub by: &'static str,
    /// The final status of the initial INVITE on the A-leg (200 when answered).
    pub status: u16,
    /// True when the call was answered.
    pub answered: bool,
    /// Seconds from answer to end (0 when never answered).
    pub duration: f64,
}

impl CallEndInfo {
    pub(super) fn to_lua(&self, lua: &Lua) -> mlua::Result<Table> {
        let table = lua.create_table()?;
        table.raw_set("reason", self.reason)?;
        table.raw_set("by", self.by)?;
        table.raw_set("status", self.status)?;
        table.raw_set("answered", self.answered)?;
        table.raw_set("duration", self.duration)?;
        Ok(table)
    }
}

/// The message a hook sees: the request or response about to be sent on a leg.
#[derive(Debug)]
pub struct HookMessage {
    pub msg: Message,
    /// "a" (toward the caller) or "b" (toward the callee).
    pub leg: &'static str,
    /// Name of the trunk the message is sent to (empty until the call is routed).
    pub trunk: String,
    /// Header names a rule edited: these bypass the trunk's header policy.
    pub touched: Vec<HeaderName>,
}

impl HookMessage {
    /// Wraps a message for hooks.
    pub fn new(msg: Message, leg: &'static str, trunk: String) -> HookMessage {
        HookMessage {
            msg,
            leg,
            trunk,
            touched: Vec::new(),
        }
    }

    fn editable(&mut self, name: &[u8]) -> mlua::Result<HeaderName> {
        let name = header_name(name)?;
        if !self.touched.contains(&name) {
            self.touched.push(name.clone());
        }
        Ok(name)
    }

    /// The parts of a name-addr header (From, To, P-Asserted-Identity, Contact…) as a table.
    fn name_addr(&self, lua: &Lua, name: &HeaderName) -> mlua::Result<Option<Table>> {
        let Some(value) = self.msg.header_str(name) else {
            return Ok(None);
        };
        let Ok(addr) = NameAddr::parse(value) else {
            return Ok(None);
        };
        let table = lua.create_table()?;
        if let Some(display) = addr.display {
            table.raw_set("display", unquote(display))?;
        }
        table.raw_set("uri", addr.uri)?;
        if let Ok(uri) = Uri::parse(addr.uri) {
            table.raw_set("user", uri.user)?;
            table.raw_set("host", uri.host)?;
            table.raw_set("port", uri.port)?;
        }
        let params = lua.create_table()?;
        for (key, value) in crate::sip::header::params(addr.params).flatten() {
            params.raw_set(
                key,
                value.map_or(Value::Boolean(true), |v| {
                    lua.create_string(v).map_or(Value::Nil, Value::String)
                }),
            )?;
        }
        table.raw_set("params", params)?;
        Ok(Some(table))
    }

    /// Rewrites one part of a name-addr header with `edit(value, parsed) -> new value`.
    fn edit_name_addr(
        &mut self,
        name: &[u8],
        function: &str,
        edit: impl FnOnce(&str, &NameAddr<'_>) -> Option<String>,
    ) -> mlua::Result<()> {
        // From and To belong to the B2BUA, but their display name, user and host are the
        // caller's identity and rules may rewrite them; the tag stays.
        let parsed = std::str::from_utf8(name)
            .map(HeaderName::parse)
            .map_err(|_| mlua::Error::runtime("header name must be a token"))?;
        let name = match parsed {
            HeaderName::From | HeaderName::To => parsed,
            _ => self.editable(name)?,
        };
        let value = self.msg.header_str(&name).ok_or_else(|| {
            mlua::Error::runtime(format!(
                "{function}: message has no {} header",
                name.as_str()
            ))
        })?;
        let updated = NameAddr::parse(value)
            .ok()
            .and_then(|addr| edit(value, &addr))
            .ok_or_else(|| {
                mlua::Error::runtime(format!(
                    "{function}: {} is not a SIP or tel name-addr",
                    name.as_str()
                ))
            })?;
        self.msg.set_header(name, updated);
        Ok(())
    }

    fn user_of(&self, name: &HeaderName) -> Option<String> {
        let value = self.msg.header_str(name)?;
        let addr = NameAddr::parse(value).ok()?;
        Uri::parse(addr.uri).ok()?.user.map(str::to_string)
    }
}

/// A header name from a rule: a token, and not one the B2BUA owns.
fn header_name(name: &[u8]) -> mlua::Result<HeaderName> {
    let name = std::str::from_utf8(name)
        .ok()
        .filter(|n| !n.is_empty() && n.bytes().all(is_token_char))
        .ok_or_else(|| mlua::Error::runtime("header name must be a token"))?;
    let name = HeaderName::parse(name);
    if is_b2bua_owned(&name) {
        return Err(mlua::Error::runtime(format!(
            "header {} is owned by the B2BUA and cannot be edited",
            name.as_str()
        )));
    }
    Ok(name)
}

fn check_value(value: &[u8]) -> mlua::Result<()> {
    if value.iter().any(|b| *b == b'\r' || *b == b'\n' || *b == 0) {
        return Err(mlua::Error::runtime(
            "header values may not contain CR, LF or NUL",
        ));
    }
    Ok(())
}

/// A display name without its quotes and escapes.
fn unquote(display: &str) -> String {
    let trimmed = display.trim();
    match trimmed
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut escaped = false;
            for c in inner.chars() {
                if escaped || c != '\\' {
                    out.push(c);
                    escaped = false;
                } else {
                    escaped = true;
                }
            }
            out
        }
        None => trimmed.to_string(),
    }
}

/// Byte offset of `part` (a slice of `value`) inside `value`.
fn offset_in(value: &str, part: &str) -> usize {
    part.as_ptr() as usize - value.as_ptr() as usize
}

fn check_user(user: &str) -> mlua::Result<()> {
    if user.is_empty()
        || user
            .bytes()
            .any(|b| b.is_ascii_whitespace() || matches!(b, b'@' | b'<' | b'>' | b'"' | b':'))
    {
        return Err(mlua::Error::runtime(format!(
            "'{user}' is not a valid URI user part"
        )));
    }
    Ok(())
}

/// Replaces the user part of the URI inside a name-addr header value.
pub fn replace_user_in_header(value: &str, user: &str) -> Option<String> {
    let addr = NameAddr::parse(value).ok()?;
    let start = addr.uri.as_ptr() as usize - value.as_ptr() as usize;
    let new_uri = replace_user_in_uri(addr.uri, user)?;
    Some(format!(
        "{}{}{}",
        &value[..start],
        new_uri,
        &value[start + addr.uri.len()..]
    ))
}

/// Replaces (or inserts) the user part of a sip:, sips: or tel: URI.
pub fn replace_user_in_uri(uri: &str, user: &str) -> Option<String> {
    let parsed = Uri::parse(uri).ok()?;
    let (scheme, rest) = uri.split_once(':')?;
    match parsed.scheme {
        crate::sip::uri::Scheme::Tel => {
            let params = &rest[parsed.user.map_or(0, str::len)..];
            Some(format!("{scheme}:{user}{params}"))
        }
        crate::sip::uri::Scheme::Sip | crate::sip::uri::Scheme::Sips => {
            let host_part = match parsed.user {
                Some(old) => &rest[old.len() + 1..],
                None => rest,
            };
            Some(format!("{scheme}:{user}@{host_part}"))
        }
        crate::sip::uri::Scheme::Other => None,
    }
}

impl UserData for HookMessage {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("method", |_, m| Ok(m.msg.method().map(|x| x.to_string())));
        fields.add_field_method_get("status", |_, m| Ok(m.msg.status()));
        fields.add_field_method_get("reason", |_, m| {
            Ok(match &m.msg.start {
                StartLine::Response { reason, .. } => Some(reason.clone()),
                StartLine::Request { .. } => None,
            })
        });
        fields.add_field_method_get("leg", |_, m| Ok(m.leg));
        fields.add_field_method_get("trunk", |_, m| Ok(m.trunk.clone()));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("header", |lua, m, name: LuaString| {
            let name = HeaderName::parse(&name.to_str()?);
            m.msg
                .header(&name)
                .map(|v| lua.create_string(&v[..]))
                .transpose()
        });
        methods.add_method("headers", |lua, m, name: LuaString| {
            let name = HeaderName::parse(&name.to_str()?);
            let values = lua.create_table()?;
            for value in m.msg.headers_named(&name) {
                values.push(lua.create_string(&value[..])?)?;
            }
            Ok(values)
        });
        methods.add_method("has_header", |_, m, name: LuaString| {
            let name = HeaderName::parse(&name.to_str()?);
            Ok(m.msg.header(&name).is_some())
        });
        methods.add_method_mut(
            "set_header",
            |_, m, (name, value): (LuaString, LuaString)| {
                let name = m.editable(&name.as_bytes())?;
                check_value(&value.as_bytes())?;
                m.msg.remove_header(&name);
                m.msg.headers.push(Header {
                    name,
                    value: Bytes::copy_from_slice(&value.as_bytes()),
                });
                Ok(())
            },
        );
        methods.add_method_mut(
            "add_header",
            |_, m, (name, value): (LuaString, LuaString)| {
                let name = m.editable(&name.as_bytes())?;
                check_value(&value.as_bytes())?;
                m.msg.headers.push(Header {
                    name,
                    value: Bytes::copy_from_slice(&value.as_bytes()),
                });
                Ok(())
            },
        );
        methods.add_method_mut("remove_header", |_, m, name: LuaString| {
            let name = m.editable(&name.as_bytes())?;
            m.msg.remove_header(&name);
            Ok(())
        });
        methods.add_method("uri", |_, m, ()| {
            Ok(match &m.msg.start {
                StartLine::Request { uri, .. } => Some(uri.clone()),
                StartLine::Response { .. } => None,
            })
        });
        methods.add_method_mut("set_uri", |_, m, new_uri: String| {
            let StartLine::Request { uri, .. } = &mut m.msg.start else {
                return Err(mlua::Error::runtime(
                    "set_uri: a response has no Request-URI",
                ));
            };
            if !crate::sip::uri::is_plausible_request_uri(&new_uri) || Uri::parse(&new_uri).is_err()
            {
                return Err(mlua::Error::runtime(format!(
                    "set_uri: '{new_uri}' is not a valid URI"
                )));
            }
            *uri = new_uri;
            Ok(())
        });
        methods.add_method("from_user", |_, m, ()| Ok(m.user_of(&HeaderName::From)));
        methods.add_method("to_user", |_, m, ()| Ok(m.user_of(&HeaderName::To)));
        methods.add_method_mut("set_from_user", |_, m, user: String| {
            check_user(&user)?;
            m.edit_name_addr(b"From", "set_from_user", |value, _| {
                replace_user_in_header(value, &user)
            })
        });
        methods.add_method_mut("set_to_user", |_, m, user: String| {
            check_user(&user)?;
            m.edit_name_addr(b"To", "set_to_user", |value, _| {
                replace_user_in_header(value, &user)
            })
        });
        methods.add_method("name_addr", |lua, m, name: LuaString| {
            m.name_addr(lua, &HeaderName::parse(&name.to_str()?))
        });
        methods.add_method_mut(
            "set_display",
            |_, m, (name, display): (LuaString, Option<String>)| {
                if let Some(text) = &display {
                    check_value(text.as_bytes())?;
                }
                m.edit_name_addr(&name.as_bytes(), "set_display", |value, addr| {
                    let uri_start = offset_in(value, addr.uri);
                    let rest = &value[uri_start + addr.uri.len()..];
                    let rest = if addr.bracketed {
                        rest.strip_prefix('>').unwrap_or(rest)
                    } else {
                        rest
                    };
                    let escaped = display
                        .as_ref()
                        .map(|d| d.replace('\\', "\\\\").replace('"', "\\\""));
                    Some(match escaped {
                        Some(d) => format!("\"{d}\" <{}>{rest}", addr.uri),
                        None => format!("<{}>{rest}", addr.uri),
                    })
                })
            },
        );
        methods.add_method_mut("set_user", |_, m, (name, user): (LuaString, String)| {
            check_user(&user)?;
            m.edit_name_addr(&name.as_bytes(), "set_user", |value, _| {
                replace_user_in_header(value, &user)
            })
        });
        methods.add_method_mut("set_host", |_, m, (name, host): (LuaString, String)| {
            if host.is_empty()
                || !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            {
                return Err(mlua::Error::runtime(format!(
                    "set_host: '{host}' is not a host name or address"
                )));
            }
            m.edit_name_addr(&name.as_bytes(), "set_host", |value, addr| {
                let uri = Uri::parse(addr.uri).ok()?;
                if uri.scheme == crate::sip::uri::Scheme::Tel {
                    return None;
                }
                let host_start = offset_in(value, uri.host);
                let mut end = host_start + uri.host.len();
                if uri.port.is_some() {
                    // Drop the old port with the old host: the new host stands alone.
                    let after = &value[end..];
                    let digits = after
                        .strip_prefix(':')
                        .map(|p| 1 + p.bytes().take_while(u8::is_ascii_digit).count())
                        .unwrap_or(0);
                    end += digits;
                }
                Some(format!("{}{host}{}", &value[..host_start], &value[end..]))
            })
        });
        methods.add_method("body", |lua, m, ()| lua.create_string(&m.msg.body[..]));
        methods.add_method("content_type", |_, m, ()| {
            Ok(m.msg
                .header_str(&HeaderName::ContentType)
                .map(str::to_string))
        });
        methods.add_method_mut(
            "set_body",
            |_, m, (body, content_type): (LuaString, Option<String>)| {
                let body = Bytes::copy_from_slice(&body.as_bytes());
                match content_type {
                    Some(kind) if !body.is_empty() => {
                        check_value(kind.as_bytes())?;
                        m.msg.set_header(HeaderName::ContentType, kind);
                    }
                    _ if body.is_empty() => m.msg.remove_header(&HeaderName::ContentType),
                    _ => {}
                }
                m.touched.push(HeaderName::ContentType);
                m.msg.body = body;
                Ok(())
            },
        );
        methods.add_method("uri_user", |_, m, ()| {
            Ok(match &m.msg.start {
                StartLine::Request { uri, .. } => Uri::parse(uri.as_str())
                    .ok()
                    .and_then(|u| u.user.map(str::to_string)),
                StartLine::Response { .. } => None,
            })
        });
        methods.add_method_mut("set_uri_user", |_, m, user: String| {
            check_user(&user)?;
            let StartLine::Request { uri, .. } = &mut m.msg.start else {
                return Err(mlua::Error::runtime(
                    "set_uri_user: a response has no Request-URI",
                ));
            };
            *uri = replace_user_in_uri(uri, &user)
                .ok_or_else(|| mlua::Error::runtime("set_uri_user: Request-URI is not sip/tel"))?;
            Ok(())
        });
    }
}

/// The `bh` library table: version, model, logging with the call id, rule metrics and a
/// linear-time regex engine.
pub fn bh_table(lua: &Lua) -> mlua::Result<Table> {
    let bh = lua.create_table()?;
    bh.set("version", super::VERSION)?;
    bh.set("model", super::MODEL)?;
    let log = lua.create_table()?;
    for level in ["debug", "info", "warn", "error"] {
        log.set(
            level,
            lua.create_function(move |lua, text: LuaString| {
                let text = text.to_string_lossy();
                let call = lua
                    .app_data_ref::<CurrentCall>()
                    .map(|c| c.0.clone())
                    .unwrap_or_default();
                match level {
                    "debug" => tracing::debug!(target: "bridgehead::lua", call = %call, "{text}"),
                    "info" => tracing::info!(target: "bridgehead::lua", call = %call, "{text}"),
                    "warn" => tracing::warn!(target: "bridgehead::lua", call = %call, "{text}"),
                    _ => tracing::error!(target: "bridgehead::lua", call = %call, "{text}"),
                }
                Ok(())
            })?,
        )?;
    }
    bh.set("log", log)?;

    let metric = lua.create_table()?;
    metric.set(
        "inc",
        lua.create_function(
            |lua, (name, labels, by): (String, Option<Table>, Option<u64>)| {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(mlua::Error::runtime(format!(
                        "bh.metric.inc: '{name}' is not a metric name ([A-Za-z0-9_]+)"
                    )));
                }
                let mut pairs = Vec::new();
                if let Some(labels) = labels {
                    for pair in labels.pairs::<String, String>() {
                        pairs.push(pair?);
                    }
                }
                pairs.sort();
                context(lua)?.metrics.inc_user(name, pairs, by.unwrap_or(1));
                Ok(())
            },
        )?,
    )?;
    bh.set("metric", metric)?;

    let re = lua.create_table()?;
    re.set(
        "test",
        lua.create_function(|lua, (subject, pattern): (LuaString, String)| {
            with_regex(lua, &pattern, |re| {
                Ok(re.is_match(&subject.to_string_lossy()))
            })
        })?,
    )?;
    re.set(
        "find",
        lua.create_function(|lua, (subject, pattern): (LuaString, String)| {
            let subject = subject.to_string_lossy();
            with_regex(lua, &pattern, |re| {
                let found = re.find(&subject);
                Ok((found.map(|m| m.start() + 1), found.map(|m| m.end())))
            })
        })?,
    )?;
    re.set(
        "match",
        lua.create_function(|lua, (subject, pattern): (LuaString, String)| {
            let subject = subject.to_string_lossy();
            let captures = with_regex(lua, &pattern, |re| {
                Ok(re.captures(&subject).map(|caps| {
                    if caps.len() == 1 {
                        vec![caps.get(0).map(|m| m.as_str().to_string())]
                    } else {
                        caps.iter()
                            .skip(1)
                            .map(|m| m.map(|m| m.as_str().to_string()))
                            .collect()
                    }
                }))
            })?;
            let mut out = mlua::MultiValue::new();
            match captures {
                None => out.push_back(Value::Nil),
                Some(values) => {
                    for value in values {
                        out.push_back(match value {
                            Some(text) => Value::String(lua.create_string(text)?),
                            None => Value::Boolean(false),
                        });
                    }
                }
            }
            Ok(out)
        })?,
    )?;
    re.set(
        "gsub",
        lua.create_function(
            |lua, (subject, pattern, replacement): (LuaString, String, String)| {
                let subject = subject.to_string_lossy();
                with_regex(lua, &pattern, |re| {
                    let count = re.find_iter(&subject).count();
                    Ok((
                        re.replace_all(&subject, replacement.as_str()).into_owned(),
                        count,
                    ))
                })
            },
        )?,
    )?;
    bh.set("re", re)?;
    Ok(bh)
}

/// Runs `f` with the compiled regex (compiled once per Lua state, size-limited).
fn with_regex<R>(
    lua: &Lua,
    pattern: &str,
    f: impl FnOnce(&Regex) -> mlua::Result<R>,
) -> mlua::Result<R> {
    let mut context = lua
        .app_data_mut::<RuleContext>()
        .ok_or_else(|| mlua::Error::runtime("rule context missing"))?;
    if !context.regexes.contains_key(pattern) {
        let compiled = regex::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .build()
            .map_err(|err| mlua::Error::runtime(format!("bh.re: {err}")))?;
        if context.regexes.len() >= REGEX_CACHE {
            context.regexes.clear();
        }
        context.regexes.insert(pattern.to_string(), compiled);
    }
    match context.regexes.get(pattern) {
        Some(re) => f(re),
        None => Err(mlua::Error::runtime("bh.re: regex cache")),
    }
}
