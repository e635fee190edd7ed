//! The objects Lua rules see: `call`, the message (`req` / `resp`) and the `bh` library table.

use crate::call::is_b2bua_owned;
use crate::config::TrunkId;
use crate::sip::header::{is_token_char, NameAddr};
use crate::sip::uri::Uri;
use crate::sip::{Header, HeaderName, Message, StartLine};
use bytes::Bytes;
use mlua::{Lua, LuaString, Table, UserData, UserDataFields, UserDataMethods};
use std::sync::Arc;

/// What `on_invite` decided for a new call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteDecision {
    /// Send the call to this trunk.
    Route(TrunkId),
    /// Refuse the call with this status and reason.
    Reject { status: u16, reason: String },
}

/// The `call` object: which call a hook runs for, and the routing decision it takes.
#[derive(Debug)]
pub struct HookCall {
    /// The call's id (the Call-ID of its A-leg).
    pub id: String,
    /// Name of the trunk the call arrived on.
    pub trunk: String,
    /// The decision taken by `call:route` or `call:reject`, if any.
    pub decision: Option<RouteDecision>,
    trunk_names: Arc<[String]>,
}

impl HookCall {
    /// A call object for hooks.
    pub fn new(id: String, trunk: String, trunk_names: Arc<[String]>) -> HookCall {
        HookCall {
            id,
            trunk,
            decision: None,
            trunk_names,
        }
    }
}

impl UserData for HookCall {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("id", |_, call| Ok(call.id.clone()));
        fields.add_field_method_get("trunk", |_, call| Ok(call.trunk.clone()));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method_mut("route", |_, call, trunk: String| {
            let index = call
                .trunk_names
                .iter()
                .position(|name| *name == trunk)
                .ok_or_else(|| {
                    mlua::Error::runtime(format!("call:route: no trunk named '{trunk}'"))
                })?;
            call.decision = Some(RouteDecision::Route(index));
            Ok(())
        });
        methods.add_method_mut(
            "reject",
            |_, call, (status, reason): (u16, Option<String>)| {
                if !(300..=699).contains(&status) {
                    return Err(mlua::Error::runtime(format!(
                        "call:reject: status {status} is not a final error status (300-699)"
                    )));
                }
                let reason =
                    reason.unwrap_or_else(|| crate::sip::reason_phrase(status).to_string());
                check_value(reason.as_bytes())?;
                call.decision = Some(RouteDecision::Reject { status, reason });
                Ok(())
            },
        );
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
        if !self.touched.contains(&name) {
            self.touched.push(name.clone());
        }
        Ok(name)
    }

    fn user_of(&self, name: &HeaderName) -> Option<String> {
        let value = self.msg.header_str(name)?;
        let addr = NameAddr::parse(value).ok()?;
        Uri::parse(addr.uri).ok()?.user.map(str::to_string)
    }

    fn set_user_of(&mut self, name: HeaderName, user: &str) -> mlua::Result<()> {
        check_user(user)?;
        let value = self.msg.header_str(&name).ok_or_else(|| {
            mlua::Error::runtime(format!("message has no {} header", name.as_str()))
        })?;
        let updated = replace_user_in_header(value, user).ok_or_else(|| {
            mlua::Error::runtime(format!("{} header has no SIP or tel URI", name.as_str()))
        })?;
        self.msg.set_header(name, updated);
        Ok(())
    }
}

fn check_value(value: &[u8]) -> mlua::Result<()> {
    if value.iter().any(|b| *b == b'\r' || *b == b'\n' || *b == 0) {
        return Err(mlua::Error::runtime(
            "header values may not contain CR, LF or NUL",
        ));
    }
    Ok(())
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
            m.set_user_of(HeaderName::From, &user)
        });
        methods.add_method_mut("set_to_user", |_, m, user: String| {
            m.set_user_of(HeaderName::To, &user)
        });
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

/// The `bh` library table: version, model and logging.
pub fn bh_table(lua: &Lua) -> mlua::Result<Table> {
    let bh = lua.create_table()?;
    bh.set("version", super::VERSION)?;
    bh.set("model", super::MODEL)?;
    let log = lua.create_table()?;
    log.set(
        "debug",
        lua.create_function(|_, text: String| {
            tracing::debug!(target: "bridgehead::lua", "{text}");
            Ok(())
        })?,
    )?;
    log.set(
        "info",
        lua.create_function(|_, text: String| {
            tracing::info!(target: "bridgehead::lua", "{text}");
            Ok(())
        })?,
    )?;
    log.set(
        "warn",
        lua.create_function(|_, text: String| {
            tracing::warn!(target: "bridgehead::lua", "{text}");
            Ok(())
        })?,
    )?;
    log.set(
        "error",
        lua.create_function(|_, text: String| {
            tracing::error!(target: "bridgehead::lua", "{text}");
            Ok(())
        })?,
    )?;
    bh.set("log", log)?;
    Ok(bh)
}
