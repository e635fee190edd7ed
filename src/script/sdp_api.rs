//! The SDP objects `on_sdp` rules see: the session (`sdp`) and its media sections
//! (`sdp:media()`), over the lossless [`crate::sdp`] model. Session and media sections share
//! the attribute, connection and bandwidth methods.

use crate::sdp::{Connection, Direction, Media, Sdp, SdpError};
use mlua::{Lua, Table, UserData, UserDataFields, UserDataMethods, Value};
use std::sync::{Arc, Mutex, MutexGuard};

/// The SDP under edit, shared by the session object and its media objects.
pub type SharedSdp = Arc<Mutex<Sdp>>;

fn lock(sdp: &SharedSdp) -> MutexGuard<'_, Sdp> {
    sdp.lock().unwrap_or_else(|e| e.into_inner())
}

fn lua_error(err: SdpError) -> mlua::Error {
    mlua::Error::runtime(err.to_string())
}

/// What a session and a media section have in common.
trait Section {
    fn attribute(&self, name: &str) -> Option<Option<&str>>;
    fn attributes(&self, name: &str) -> Vec<Option<&str>>;
    fn set_attribute(&mut self, name: &str, value: Option<&str>) -> Result<(), SdpError>;
    fn add_attribute(&mut self, name: &str, value: Option<&str>) -> Result<(), SdpError>;
    fn remove_attribute(&mut self, name: &str) -> usize;
    fn connection(&self) -> Option<Connection>;
    fn set_connection(&mut self, address: &str) -> Result<(), SdpError>;
    fn bandwidth(&self, kind: &str) -> Option<u64>;
    fn set_bandwidth(&mut self, kind: &str, value: u64) -> Result<(), SdpError>;
    fn remove_bandwidth(&mut self, kind: &str) -> usize;
}

macro_rules! section {
    ($type:ty) => {
        impl Section for $type {
            fn attribute(&self, name: &str) -> Option<Option<&str>> {
                <$type>::attribute(self, name)
            }
            fn attributes(&self, name: &str) -> Vec<Option<&str>> {
                <$type>::attributes(self, name)
            }
            fn set_attribute(&mut self, name: &str, value: Option<&str>) -> Result<(), SdpError> {
                <$type>::set_attribute(self, name, value)
            }
            fn add_attribute(&mut self, name: &str, value: Option<&str>) -> Result<(), SdpError> {
                <$type>::add_attribute(self, name, value)
            }
            fn remove_attribute(&mut self, name: &str) -> usize {
                <$type>::remove_attribute(self, name)
            }
            fn connection(&self) -> Option<Connection> {
                <$type>::connection(self)
            }
            fn set_connection(&mut self, address: &str) -> Result<(), SdpError> {
                <$type>::set_connection(self, address)
            }
            fn bandwidth(&self, kind: &str) -> Option<u64> {
                <$type>::bandwidth(self, kind)
            }
            fn set_bandwidth(&mut self, kind: &str, value: u64) -> Result<(), SdpError> {
                <$type>::set_bandwidth(self, kind, value)
            }
            fn remove_bandwidth(&mut self, kind: &str) -> usize {
                <$type>::remove_bandwidth(self, kind)
            }
        }
    };
}
section!(Sdp);
section!(Media);

/// A Lua object that edits one section of the shared SDP.
trait SectionHandle: UserData + 'static {
    fn with<R>(&self, f: impl FnOnce(&mut dyn Section) -> mlua::Result<R>) -> mlua::Result<R>;
}

/// An attribute value as Lua sees it: the value, `true` for a flag, nil when absent.
fn attribute_value(lua: &Lua, value: Option<Option<&str>>) -> mlua::Result<Value> {
    Ok(match value {
        None => Value::Nil,
        Some(None) => Value::Boolean(true),
        Some(Some(text)) => Value::String(lua.create_string(text)?),
    })
}

/// `set_attribute(name, value)`: a string value, or `true`/nil for a flag attribute.
fn flag_or_value(value: Option<Value>) -> mlua::Result<Option<String>> {
    match value {
        None | Some(Value::Nil) | Some(Value::Boolean(true)) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.to_str()?.to_string())),
        Some(Value::Integer(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(mlua::Error::runtime(format!(
            "attribute value must be a string or true, not {}",
            other.type_name()
        ))),
    }
}

fn add_section_methods<T: SectionHandle, M: UserDataMethods<T>>(methods: &mut M) {
    methods.add_method("attribute", |lua, this, name: String| {
        this.with(|s| attribute_value(lua, s.attribute(&name)))
    });
    methods.add_method("attributes", |lua, this, name: String| {
        this.with(|s| {
            let list = lua.create_table()?;
            for value in s.attributes(&name) {
                list.push(attribute_value(lua, Some(value))?)?;
            }
            Ok(list)
        })
    });
    methods.add_method(
        "set_attribute",
        |_, this, (name, value): (String, Option<Value>)| {
            let value = flag_or_value(value)?;
            this.with(|s| s.set_attribute(&name, value.as_deref()).map_err(lua_error))
        },
    );
    methods.add_method(
        "add_attribute",
        |_, this, (name, value): (String, Option<Value>)| {
            let value = flag_or_value(value)?;
            this.with(|s| s.add_attribute(&name, value.as_deref()).map_err(lua_error))
        },
    );
    methods.add_method("remove_attribute", |_, this, name: String| {
        this.with(|s| Ok(s.remove_attribute(&name)))
    });
    methods.add_method("connection", |_, this, ()| {
        this.with(|s| Ok(s.connection().map(|c| c.address)))
    });
    methods.add_method("set_connection", |_, this, address: String| {
        this.with(|s| s.set_connection(&address).map_err(lua_error))
    });
    methods.add_method("bandwidth", |_, this, kind: String| {
        this.with(|s| Ok(s.bandwidth(&kind)))
    });
    methods.add_method("set_bandwidth", |_, this, (kind, value): (String, u64)| {
        this.with(|s| s.set_bandwidth(&kind, value).map_err(lua_error))
    });
    methods.add_method("remove_bandwidth", |_, this, kind: String| {
        this.with(|s| Ok(s.remove_bandwidth(&kind)))
    });
}

/// The `sdp` object of `on_sdp`.
pub struct LuaSdp(pub SharedSdp);

impl SectionHandle for LuaSdp {
    fn with<R>(&self, f: impl FnOnce(&mut dyn Section) -> mlua::Result<R>) -> mlua::Result<R> {
        f(&mut *lock(&self.0))
    }
}

impl UserData for LuaSdp {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        add_section_methods(methods);
        methods.add_method("media", |lua, this, kind: Option<String>| {
            let list = lua.create_table()?;
            let sdp = lock(&this.0);
            for (index, media) in sdp.media().iter().enumerate() {
                if kind.as_deref().is_none_or(|k| media.kind() == k) {
                    list.push(LuaMedia {
                        sdp: this.0.clone(),
                        index,
                    })?;
                }
            }
            Ok(list)
        });
        methods.add_method("origin_address", |_, this, ()| {
            Ok(lock(&this.0).origin().map(|o| o.address))
        });
        methods.add_method("set_origin_address", |_, this, address: String| {
            lock(&this.0)
                .set_origin_address(&address)
                .map_err(lua_error)
        });
        methods.add_method("tostring", |lua, this, ()| {
            lua.create_string(lock(&this.0).to_bytes())
        });
    }
}

/// One `m=` section of the SDP under edit.
pub struct LuaMedia {
    sdp: SharedSdp,
    index: usize,
}

impl LuaMedia {
    fn read<R>(&self, f: impl FnOnce(&Media) -> R) -> mlua::Result<R> {
        let sdp = lock(&self.sdp);
        sdp.media()
            .get(self.index)
            .map(f)
            .ok_or_else(|| mlua::Error::runtime("media section no longer exists"))
    }

    fn edit<R>(&self, f: impl FnOnce(&mut Media) -> mlua::Result<R>) -> mlua::Result<R> {
        let mut sdp = lock(&self.sdp);
        match sdp.media_mut().get_mut(self.index) {
            Some(media) => f(media),
            None => Err(mlua::Error::runtime("media section no longer exists")),
        }
    }
}

impl SectionHandle for LuaMedia {
    fn with<R>(&self, f: impl FnOnce(&mut dyn Section) -> mlua::Result<R>) -> mlua::Result<R> {
        self.edit(|media| f(media))
    }
}

/// Codec selectors from Lua: names ("PCMA", "telephone-event") or payload types (8, "101").
fn selectors(list: Table) -> mlua::Result<Vec<String>> {
    let mut out = Vec::new();
    for value in list.sequence_values::<Value>() {
        out.push(match value? {
            Value::String(s) => s.to_str()?.to_string(),
            Value::Integer(n) => n.to_string(),
            other => {
                return Err(mlua::Error::runtime(format!(
                    "codec selector must be a name or a payload type, not {}",
                    other.type_name()
                )))
            }
        });
    }
    Ok(out)
}

impl UserData for LuaMedia {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("kind", |_, m| m.read(|m| m.kind().to_string()));
        fields.add_field_method_get("port", |_, m| m.read(Media::port));
        fields.add_field_method_get("proto", |_, m| m.read(|m| m.proto().to_string()));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        add_section_methods(methods);
        methods.add_method("set_port", |_, m, port: u16| {
            m.edit(|media| {
                media.set_port(port);
                Ok(())
            })
        });
        methods.add_method("is_rejected", |_, m, ()| m.read(Media::is_rejected));
        methods.add_method("codecs", |lua, m, ()| {
            let codecs = m.read(Media::codecs)?;
            let list = lua.create_table()?;
            for codec in codecs {
                let entry = lua.create_table()?;
                entry.raw_set("pt", codec.pt)?;
                entry.raw_set("name", codec.name)?;
                entry.raw_set("clock", codec.clock)?;
                entry.raw_set("channels", codec.channels)?;
                entry.raw_set("fmtp", codec.fmtp)?;
                list.push(entry)?;
            }
            Ok(list)
        });
        methods.add_method("keep_codecs", |_, m, list: Table| {
            let wanted = selectors(list)?;
            let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
            m.edit(|media| media.keep_codecs(&wanted).map_err(lua_error))
        });
        methods.add_method("remove_codecs", |_, m, list: Table| {
            let unwanted = selectors(list)?;
            let unwanted: Vec<&str> = unwanted.iter().map(String::as_str).collect();
            m.edit(|media| media.remove_codecs(&unwanted).map_err(lua_error))
        });
        methods.add_method("reorder_codecs", |_, m, list: Table| {
            let first = selectors(list)?;
            let first: Vec<&str> = first.iter().map(String::as_str).collect();
            m.edit(|media| Ok(media.reorder_codecs(&first)))
        });
        methods.add_method("keep_only_attributes", |_, m, list: Table| {
            let names: Vec<String> = list.sequence_values::<String>().collect::<Result<_, _>>()?;
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            m.edit(|media| Ok(media.keep_only_attributes(&names)))
        });
        methods.add_method("direction", |_, m, ()| {
            m.read(|media| media.direction().as_str())
        });
        methods.add_method("set_direction", |_, m, direction: String| {
            let direction = Direction::parse(&direction).ok_or_else(|| {
                mlua::Error::runtime(format!(
                    "'{direction}' is not sendrecv, sendonly, recvonly or inactive"
                ))
            })?;
            m.edit(|media| {
                media.set_direction(direction);
                Ok(())
            })
        });
        methods.add_method("crypto", |lua, m, ()| {
            let lines = m.read(Media::crypto)?;
            let list = lua.create_table()?;
            for crypto in lines {
                let entry = lua.create_table()?;
                entry.raw_set("tag", crypto.tag)?;
                entry.raw_set("suite", crypto.suite)?;
                entry.raw_set("key", crypto.key_params)?;
                entry.raw_set("params", crypto.session_params)?;
                list.push(entry)?;
            }
            Ok(list)
        });
    }
}
