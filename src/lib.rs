//! Bridgehead: a programmable Session Border Controller. A sans-IO SIP engine (transactions,
//! dialogs, B2BUA) whose interworking rules are Lua scripts, driven by tokio in production
//! and by the replay harness on virtual time. `docs/architecture.md` has the module map.
//!
//! The entry points:
//! - [`Profile`]: a profile loaded and validated (`file:line` errors);
//! - [`RuleSet`]: one version of a profile's rules compiled for one shard;
//! - [`Engine`]: the sans-IO core of one shard (`handle_*` what happened, `poll_*` what to do),
//!   with the vocabulary of its inputs and outputs ([`Peer`], [`Transmit`], [`Leg`]);
//! - [`run`]: the tokio runtime serving a profile until stopped;
//! - [`replay`]: scenarios and captures through the real engine, offline.
//!
//! The floors an embedder or a test builds messages with stay public: [`sip`] (the message
//! model), [`sdp`], [`config`] (profiles), [`media`] (media commands and events, the relay, the
//! DSP) and [`script`] (rule sets, the Lua unit-test runner). The B2BUA (`call`), the
//! transaction layer (`transactions`), the engine's and runtime's modules and the socket
//! transports (`transport`) are internal.

pub mod admission;
mod call;
pub mod capture;
pub mod cluster;
pub mod config;
mod engine;
pub mod lookup;
pub mod media;
pub mod observe;
pub mod overload;
pub mod replay;
mod runtime;
pub mod script;
pub mod sdp;
mod shared;
pub mod sip;
mod transactions;
mod transport;

pub use call::admin::{CallSummary, CallsSnapshot, LegSummary};
pub use call::join::CallNote;
pub use call::record::Link;
pub use config::Profile;
pub use engine::{AdminAnswer, AdminQuery, Engine, ShardSnapshot};
pub use runtime::run;
pub use script::RuleSet;
pub use shared::{shard_for_call_id, ConnId, EngineStats, Leg, Peer, Transmit};
