//! Bridgehead: a programmable Session Border Controller. A sans-IO SIP engine (transactions,
//! dialogs, B2BUA) whose interworking rules are Lua scripts, driven by tokio in production.

pub mod call;
pub mod config;
pub mod engine;
pub mod media;
pub mod replay;
pub mod runtime;
pub mod script;
pub mod sdp;
pub mod shared;
pub mod sip;
pub mod transport;
