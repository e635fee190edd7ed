//! Profiles: listeners, trunks and routes, read from YAML and validated as a whole.
//!
//! A profile either loads completely or not at all: every error names the file and line it
//! comes from, so `bridgehead check` and a refused reload point at the fault.

use crate::lookup::{HttpLookup, Lookup};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Index of a listener in [`Profile::listeners`].
pub type ListenerId = usize;
/// Index of a trunk in [`Profile::trunks`].
pub type TrunkId = usize;

/// A SIP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    /// TCP with TLS (RFC 3261 §26.2), the only transport Microsoft Teams takes.
    Tls,
}

impl Transport {
    /// The token used in Via and in `transport=` URI parameters.
    pub fn as_via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// True for stream transports (no retransmissions).
    pub fn is_reliable(self) -> bool {
        self != Transport::Udp
    }
}

/// A validated profile.
#[derive(Clone, Debug)]
pub struct Profile {
    /// The file the profile was read from.
    pub path: PathBuf,
    pub listeners: Vec<Listener>,
    pub trunks: Vec<Trunk>,
    /// Worker shards (one engine each); 0 means one per core.
    pub shards: usize,
    /// Limits of the rule engine.
    pub limits: Limits,
    /// Media anchoring; without it SDP passes through unchanged and media flows end to end.
    pub media: Option<MediaConfig>,
    /// The DNS servers that resolve trunk peers given by name (none: the system's).
    pub dns_servers: Vec<SocketAddr>,
    /// The lookups rules consult (`bh.lookup`).
    pub lookups: Vec<Lookup>,
    /// Seconds calls in progress may go on after SIGTERM before Bridgehead hangs them up.
    pub drain_timeout: u32,
    /// What a message must pass before the call layer sees it.
    pub admission: AdmissionConfig,
    /// When a shard refuses new calls early (503) to keep the calls it has.
    pub overload: OverloadConfig,
    /// The admin HTTP server (metrics, admin API), when the profile has one.
    pub admin: Option<Admin>,
    /// Call detail records, when the profile asks for them.
    pub cdr: Option<CdrConfig>,
    /// SIP capture to a HEP collector, when the profile asks for it.
    pub capture: Option<CaptureConfig>,
    /// Call state shared with the other instances of a cluster through Redis.
    pub cluster: Option<ClusterConfig>,
    /// Answered calls shorter than this (seconds) count as short calls in the metrics.
    pub short_call_seconds: u32,
}

/// Call detail records (`cdr`): one JSON line per call, in a file rotated by size.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdrConfig {
    /// The file (relative to the profile's folder).
    pub path: PathBuf,
    /// Bytes after which the file is rotated (`path.1`, `path.2`, …).
    #[serde(default = "default_cdr_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept.
    #[serde(default = "default_cdr_keep")]
    pub keep: u32,
    /// Where CDRs are also POSTed, in batches.
    pub http: Option<CdrHttp>,
}

/// CDRs POSTed to an HTTP endpoint (`cdr.http`): a JSON array per batch; those not yet
/// acknowledged (2xx) wait in a spool file and are sent again, also after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdrHttp {
    pub url: String,
    /// The spool file (relative to the profile's folder); default: the CDR file's path with
    /// `.spool` added.
    pub spool: Option<PathBuf>,
    /// CDRs per POST at most.
    #[serde(default = "default_cdr_batch")]
    pub batch: usize,
    /// Milliseconds a POST may take, and between two tries while the endpoint fails.
    #[serde(default = "default_cdr_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_cdr_retry_ms")]
    pub retry_ms: u64,
}

fn default_cdr_batch() -> usize {
    100
}

fn default_cdr_timeout_ms() -> u64 {
    5000
}

fn default_cdr_retry_ms() -> u64 {
    1000
}

fn default_cdr_max_bytes() -> u64 {
    100 << 20
}

fn default_cdr_keep() -> u32 {
    10
}

fn default_short_call_seconds() -> u32 {
    10
}

/// The admin HTTP server (`admin`): Prometheus metrics and the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admin {
    pub address: SocketAddr,
    /// The bearer token every request must carry (read from `token_file` at load); required
    /// when the address is not a loopback one.
    pub token: Option<String>,
    /// HTTPS with this certificate and key (the SIP listeners' rustls setup); plain HTTP
    /// without.
    pub tls: Option<ListenerTls>,
    /// The last calls whose SIP messages the dashboard shows as ladders (0: none).
    pub recent_calls: usize,
}

/// The port the admin server listens on by default (on 127.0.0.1).
pub const ADMIN_PORT: u16 = 8480;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "default_admin_address")]
    address: String,
    token_file: Option<String>,
    tls: Option<RawAdminTls>,
    #[serde(default = "default_recent_calls")]
    recent_calls: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdminTls {
    certificate: String,
    key: String,
}

fn default_recent_calls() -> usize {
    20
}

/// The most calls the dashboard's ladders keep.
pub const MAX_RECENT_CALLS: usize = 200;

/// Call state shared through Redis (`cluster`): every answered call's state and the
/// instance's heartbeat, under `bridgehead:{name}:` (keys laid out in `cluster`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The Redis server (`redis://host:port/db`).
    pub redis: String,
    /// The cluster's name: the instances sharing state use the same one.
    pub name: String,
    /// This instance's name, unique in the cluster.
    pub instance: String,
    /// Milliseconds between heartbeats.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u32,
    /// Milliseconds without a heartbeat after which an instance is taken for dead (its
    /// heartbeat key expires then).
    #[serde(default = "default_dead_after_ms")]
    pub dead_after_ms: u32,
    /// Seconds a call's state lives in Redis unless refreshed (it is, while the call lives).
    #[serde(default = "default_state_ttl")]
    pub state_ttl: u32,
    /// Milliseconds between two looks for calls whose state changed (the most a change waits
    /// before it is queued for Redis).
    #[serde(default = "default_sync_ms")]
    pub sync_ms: u32,
    /// The instances whose calls this one takes over when they die (it holds, or is given,
    /// their addresses); its own previous run's it always takes.
    #[serde(default)]
    pub takes_over: Vec<String>,
}

fn default_heartbeat_ms() -> u32 {
    1000
}

fn default_dead_after_ms() -> u32 {
    3000
}

fn default_state_ttl() -> u32 {
    60
}

fn default_sync_ms() -> u32 {
    200
}

/// SIP capture (`capture`): every SIP message in and out as HEP3 to a collector (Homer,
/// sngrep), the A-leg Call-ID as correlation id.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    pub hep: HepConfig,
}

/// Where HEP goes and what it carries (`capture.hep`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HepConfig {
    /// The collector (UDP).
    pub address: SocketAddr,
    /// The capture agent id the collector shows.
    #[serde(default = "default_hep_agent_id")]
    pub agent_id: u32,
    /// The collector's password, when it asks for one.
    pub password: Option<String>,
    /// The listeners whose messages are sent (by name); none listed: every listener.
    #[serde(default)]
    pub listeners: Vec<String>,
}

fn default_hep_agent_id() -> u32 {
    2001
}

fn default_admin_address() -> String {
    format!("127.0.0.1:{ADMIN_PORT}")
}

/// Overload control (`overload`): the limits past which a shard answers new calls `503` with
/// `Retry-After` at once, in-dialog requests flowing on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverloadConfig {
    /// Messages waiting in a shard's queue; past four times this, new requests handed to the
    /// shard are dropped.
    pub queue: usize,
    /// Percent of the last tenth of a second a shard's thread spent on a CPU past which it
    /// takes only the share of new calls that brings it back (0: no limit).
    pub cpu_percent: u32,
    /// Calls in progress on one shard (0: no limit).
    pub calls: usize,
    /// Milliseconds a new call's INVITE may have waited for its shard (from the kernel's
    /// arrival stamp); a later one is refused.
    pub queue_delay_ms: u32,
}

impl Default for OverloadConfig {
    fn default() -> OverloadConfig {
        OverloadConfig {
            queue: 2000,
            cpu_percent: 0,
            calls: 0,
            queue_delay_ms: 200,
        }
    }
}

/// The User-Agents of SIP scanners dropped by default (substrings, ASCII case ignored).
pub const SCANNERS: [&str; 9] = [
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sip-scan",
    "sipsak",
    "sundayddr",
    "iwar",
    "vaxsipuseragent",
    "smap",
];

/// Admission settings (`admission`): bans, scanners, header limits, and the request rate of
/// sources no trunk names.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Requests a second from one source no trunk names (per source IP); none: no limit.
    pub unknown_requests_per_source: Option<u32>,
    /// Malformed, scanning or unauthorised messages after which a source is banned (0: never).
    pub ban_after: u32,
    /// How long a ban lasts, and the window `ban_after` counts in, in seconds.
    pub ban_seconds: u32,
    /// User-Agent substrings (ASCII case ignored) whose requests are dropped silently.
    pub scanners: Vec<String>,
    /// Header fields a request may have; more get 400.
    pub max_headers: usize,
    /// Bytes a header field's value may have; longer gets 400.
    pub max_header_bytes: usize,
}

impl Default for AdmissionConfig {
    fn default() -> AdmissionConfig {
        AdmissionConfig {
            unknown_requests_per_source: Some(20),
            ban_after: 20,
            ban_seconds: 600,
            scanners: SCANNERS.iter().map(|s| s.to_string()).collect(),
            max_headers: 200,
            max_header_bytes: 8192,
        }
    }
}

/// A named address Bridgehead listens on, for one or more transports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub transports: Vec<Transport>,
    /// Host written into Via and Contact (defaults to the address's IP).
    pub advertise: String,
    /// DSCP of the signalling Bridgehead sends from this listener (default CS3, 24).
    pub dscp: u8,
    /// Seconds a stream connection may go without a complete message either way (a
    /// half-sent message does not count) before it is closed; 0 never closes it.
    pub idle_timeout: u32,
    /// Stream connections one source IP may have open to this listener at once; 0: no limit.
    pub max_connections_per_source: u32,
    /// What a source that is no trunk's peer gets.
    pub unknown_sources: UnknownSources,
    /// TLS on this listener (with `tls` in its transports).
    pub tls: Option<ListenerTls>,
    /// Seconds a stream connection Bridgehead opened through this listener may go without a
    /// byte from the far end before Bridgehead sends it a CRLF ping (RFC 5626 §4.4.1); 0: no
    /// pings.
    pub ping_interval: u32,
}

impl Trunk {
    /// The name a peer address was resolved from, if it was.
    pub fn peer_name(&self, peer: SocketAddr) -> Option<&str> {
        self.peer_names
            .iter()
            .find(|(addr, _)| *addr == peer)
            .map(|(_, name)| name.as_str())
    }

    /// The host to name a peer by in Request-URIs: the name it was resolved from, else the
    /// trunk's TLS server name, else its address (IPv6 in brackets).
    pub fn peer_host(&self, peer: SocketAddr) -> String {
        match (self.peer_name(peer), &self.tls.server_name) {
            (Some(name), _) => name.to_string(),
            (None, Some(name)) => name.clone(),
            (None, None) => match peer {
                SocketAddr::V4(a) => a.ip().to_string(),
                SocketAddr::V6(a) => format!("[{}]", a.ip()),
            },
        }
    }
}

impl Listener {
    /// The port Bridgehead takes `transport` on: the TLS port for TLS, else the address's.
    pub fn port(&self, transport: Transport) -> u16 {
        match (&self.tls, transport) {
            (Some(tls), Transport::Tls) => tls.port,
            _ => self.address.port(),
        }
    }
}

/// A listener's TLS: where it takes TLS connections, the certificate it presents (also to
/// the peers it connects to), and whether clients must present one (mutual TLS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTls {
    /// On the listener's IP (default: the address's port + 1 when the listener also takes
    /// TCP, else the address's port).
    pub port: u16,
    /// The certificate chain (PEM), leaf first.
    pub certificate: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate issued by one of these CAs (PEM).
    pub client_ca: Option<PathBuf>,
}

/// A trunk peer as the profile gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerSpec {
    Address(SocketAddr),
    /// A DNS name (its A and AAAA records) and port.
    Name {
        host: String,
        port: u16,
    },
    /// An SRV record name (`_sips._tcp.example.com`, RFC 3263): its targets, by priority.
    Srv {
        name: String,
    },
}

/// True for a DNS label (letters, digits, `-`, `_`).
fn dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Reads a peer: `IP:port`, `name:port` (`name` alone takes the transport's port: 5061 for
/// TLS, else 5060), or an SRV name (`_sips._tcp.name`).
fn peer_spec(text: &str, transport: Transport) -> Option<PeerSpec> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(PeerSpec::Address(addr));
    }
    if text.starts_with('_') && !text.contains(':') {
        let name = text.strip_suffix('.').unwrap_or(text);
        let ok = name.split('.').count() >= 3 && name.split('.').all(dns_label);
        return ok.then(|| PeerSpec::Srv {
            name: name.to_ascii_lowercase(),
        });
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().ok()?),
        None if transport == Transport::Tls => (text, 5061),
        None => (text, 5060),
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let is_name = host.len() <= 253
        && host.split('.').all(dns_label)
        && host.parse::<std::net::IpAddr>().is_err()
        && host.bytes().any(|b| b.is_ascii_alphabetic());
    is_name.then(|| PeerSpec::Name {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// How Bridgehead connects to a TLS trunk's peers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrunkTls {
    /// The name sent in SNI and that the peer's certificate must carry (RFC 2818 §3.1
    /// wildcards accepted); default: the peer's IP address.
    pub server_name: Option<String>,
    /// The CAs the peer's certificate must chain to (PEM); default: the Mozilla root store.
    pub ca: Option<PathBuf>,
}

/// What a listener does with messages and connections from an address no trunk names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSources {
    /// Requests get 403 (stateless); connections are accepted.
    #[default]
    Answer,
    /// Datagrams are dropped unanswered; connections are closed as they are accepted.
    Drop,
}

/// A SIP trunk: a set of peers reached through one listener, with the rules that govern them.
#[derive(Clone, Debug)]
pub struct Trunk {
    pub name: String,
    pub listener: ListenerId,
    pub peers: Vec<SocketAddr>,
    /// The peers as the profile gives them, in order: addresses, and names resolved into
    /// `peers` (by the runtime, off the shards).
    pub peer_specs: Vec<PeerSpec>,
    /// The name each resolved peer address came from (the Request-URI and TLS name toward it).
    pub peer_names: Vec<(SocketAddr, String)>,
    /// How Bridgehead sends requests to the peers.
    pub transport: Transport,
    /// TLS toward the peers (with `transport: tls`).
    pub tls: TrunkTls,
    /// The Lua rules for calls arriving on this trunk.
    pub script: Option<PathBuf>,
    /// Where calls arriving on this trunk go unless a rule routes them.
    pub route: Option<TrunkId>,
    /// Which headers cross to this trunk from the other leg.
    pub headers: HeaderPolicy,
    /// What a hook failure does to a call arriving on this trunk.
    pub on_script_error: ScriptErrorPolicy,
    /// Free-form parameters rules read as `call.trunk.params` (values as strings).
    pub params: BTreeMap<String, String>,
    /// SRTP toward the trunk (with media anchored).
    pub srtp: SrtpPolicy,
    /// DSCP of the media Bridgehead sends toward the trunk (default EF, 46).
    pub media_dscp: u8,
    /// Codecs offered toward the trunk, in this order (names or payload types); empty: all.
    pub codecs: Vec<String>,
    /// How the trunk carries DTMF.
    pub dtmf: DtmfMode,
    /// Send comfort noise (RFC 3389) toward the trunk while the other leg is silent.
    pub comfort_noise: bool,
    /// What provisional responses toward the trunk's callers become (early media).
    pub early_media: EarlyMedia,
    /// The trunk takes `P-Early-Media` (RFC 5009, IMS): it crosses toward it and Bridgehead
    /// adds it where missing; toward other trunks it is removed.
    pub p_early_media: bool,
    /// The ringback tone plan played toward the trunk (default: the media section's).
    pub ringback: Option<TonePlan>,
    /// Requests to this UDP trunk larger than this many bytes go over TCP instead (RFC 3261
    /// §18.1.1 names 1300 when the path MTU is unknown); `None` keeps them on UDP.
    pub tcp_above: Option<usize>,
    /// SDP-carrying messages to this trunk larger than this many bytes are trimmed to fit: ICE
    /// candidates first, then codecs from the end of each stream's list.
    pub trim_above: Option<usize>,
    /// Reliable provisional responses (RFC 3262) on the trunk's legs.
    pub rel100: Rel100,
    /// What a multipart body (SDP beside other parts) becomes toward the trunk.
    pub multipart: MultipartPolicy,
    /// What an INVITE without SDP (delayed offer) becomes toward the trunk.
    pub delayed_offer: DelayedOffer,
    /// Session timers (RFC 4028) on the trunk's legs.
    pub session_timer: SessionTimerConfig,
    /// What a caller's QoS preconditions (RFC 3312) get.
    pub precondition: Precondition,
    /// OPTIONS keepalives to the peers, and when a peer counts as down or up again.
    pub keepalive: Option<Keepalive>,
    /// Final statuses from a peer (besides 503 and no answer) on which a call goes to the
    /// trunk's next peer.
    pub failover_codes: Vec<u16>,
    /// Final statuses on which a call never goes to another peer (603 by default).
    pub final_codes: Vec<u16>,
    /// Seconds a peer has to answer a call's INVITE at all (even with 100) before the call
    /// goes to the next peer; None: Timer B (32 s).
    pub failover_timeout: Option<u32>,
    /// How hold reaches the trunk's peer.
    pub hold: HoldStyle,
    /// REFER from this trunk's peer: relayed, or terminated (Bridgehead the transferee).
    pub refer: ReferPolicy,
    /// Seconds a transferor has to hang up its dialog after its transfer succeeded before
    /// Bridgehead does.
    pub transferor_bye: u32,
    /// Calls up at once on the trunk (both directions, process-wide); more get 503.
    pub max_calls: Option<u32>,
    /// New calls a second on the trunk (both directions, process-wide, a token bucket as deep
    /// as one second); more get 503.
    pub max_cps: Option<u32>,
    /// Requests a second from one source of the trunk (per source IP); more are dropped.
    pub requests_per_source: Option<u32>,
    /// New calls a second from one source of the trunk (per source IP); more get 503.
    pub calls_per_source: Option<u32>,
    /// Numbers toward the trunk in E.164 (`+` and the country code), from national and
    /// international formats (Microsoft Teams takes E.164 only).
    pub e164: Option<E164>,
    /// The only SDP attributes (`a=` names) sent to the trunk; empty: all.
    pub sdp_attributes: Vec<String>,
}

/// How a national dialling plan's numbers become E.164 (`+<country><number>`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct E164 {
    /// The country code numbers dialled nationally take (`49`).
    pub country_code: String,
    /// The prefix of a national number (`0`: `030 1234` is `+49 30 1234`).
    #[serde(default = "default_trunk_prefix")]
    pub trunk_prefix: String,
    /// The prefix of an international number (`00`: `0044 20…` is `+44 20…`).
    #[serde(default = "default_international_prefix")]
    pub international_prefix: String,
}

fn default_trunk_prefix() -> String {
    "0".to_string()
}

fn default_international_prefix() -> String {
    "00".to_string()
}

impl E164 {
    /// A number in E.164 (`+…`), when it is one or this plan makes it one: `+` numbers as they
    /// are, international and national ones with their prefix replaced; visual separators
    /// (`-`, `.`, `(`, `)`) dropped. None for what is no number (a name) or a subscriber
    /// number without its area code.
    pub fn normalize(&self, user: &str) -> Option<String> {
        let digits: String = user
            .chars()
            .filter(|c| !matches!(c, '-' | '.' | '(' | ')'))
            .collect();
        let (plus, rest) = match digits.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, digits.as_str()),
        };
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if plus {
            return Some(format!("+{rest}"));
        }
        if !self.international_prefix.is_empty() {
            if let Some(number) = rest.strip_prefix(self.international_prefix.as_str()) {
                return Some(format!("+{number}"));
            }
        }
        if !self.trunk_prefix.is_empty() {
            if let Some(number) = rest.strip_prefix(self.trunk_prefix.as_str()) {
                return Some(format!("+{}{number}", self.country_code));
            }
        }
        None
    }
}

/// What Bridgehead does with a REFER from a trunk's peer in a call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReferPolicy {
    /// Relayed to the other leg, like any in-dialog request.
    #[default]
    Relay,
    /// Bridgehead is the transferee (RFC 3515, 5589): it places the new call itself, tells
    /// the transferor with NOTIFYs, and moves the other party to the new call. REFER is in the
    /// Allow Bridgehead sends toward the trunk.
    Terminate,
}

/// How a held stream is written in SDP toward a trunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldStyle {
    /// As the other leg wrote it (sendonly, recvonly, `c=0.0.0.0`, inactive).
    #[default]
    Relay,
    /// Only as `a=inactive` (Microsoft Teams understands nothing else): a stream sent
    /// sendonly or recvonly, or to `c=0.0.0.0`, goes inactive.
    Inactive,
}

/// OPTIONS keepalives toward a trunk's peers (Microsoft demotes an SBC that sent none for three
/// minutes) and the health they tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keepalive {
    /// Seconds between two OPTIONS to a peer.
    #[serde(default = "default_keepalive_interval")]
    pub interval: u32,
    /// A peer is down after this many failed OPTIONS in a row (no answer, 408, 5xx).
    #[serde(default = "default_down_after")]
    pub down_after: u32,
    /// A peer down is up again after this many answered OPTIONS in a row.
    #[serde(default = "default_up_after")]
    pub up_after: u32,
}

fn default_keepalive_interval() -> u32 {
    60
}

fn default_down_after() -> u32 {
    3
}

fn default_up_after() -> u32 {
    2
}

/// What an INVITE from a trunk's caller that uses QoS preconditions (RFC 3312: `Require` or
/// `Supported: precondition`, `a=des:qos` in its offer) gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precondition {
    /// Bridgehead takes no part: `Require: precondition` gets 420, and an offer that only
    /// supports them goes on as it is.
    #[default]
    Refuse,
    /// Bridgehead completes the exchange with the caller itself: it answers the offer in a
    /// reliable 183 (its own segment ready), waits until the caller says its resources are
    /// reserved (UPDATE or PRACK), and only then sends the callee the INVITE, its SDP without
    /// precondition lines (media must be anchored; the trunk's `rel100` not disabled).
    Terminate,
}

/// Session timers (RFC 4028) on a trunk's legs: the interval Bridgehead asks for (0: none of
/// its own; it still honours what the peer asks) and the shortest it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionTimerConfig {
    /// Session-Expires, in seconds, Bridgehead asks for (0: none of its own).
    #[serde(default)]
    pub expires: u32,
    /// Min-SE, in seconds: a shorter Session-Expires gets 422 (at least 90, RFC 4028 §4).
    #[serde(default = "default_min_se")]
    pub min_se: u32,
}

impl Default for SessionTimerConfig {
    fn default() -> Self {
        SessionTimerConfig {
            expires: 0,
            min_se: default_min_se(),
        }
    }
}

fn default_min_se() -> u32 {
    90
}

/// What an INVITE without SDP (a delayed offer, RFC 3261 §13.2.1) becomes toward a trunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DelayedOffer {
    /// Relayed without SDP: the callee offers in its 2xx and the caller answers in its ACK.
    #[default]
    Relay,
    /// Sent with Bridgehead's own offer (the trunk's codecs and SRTP policy; media must be
    /// anchored), for a peer that takes no delayed offer (Microsoft Teams). The callee's answer
    /// goes to the caller as the offer in its 2xx, and the caller's answer in its ACK is
    /// anchored and not relayed.
    Convert,
    /// Every INVITE goes without SDP, for a peer that wants to make the offer itself: the
    /// caller's offer stays at Bridgehead (anchored), the callee's offer (in its 2xx or a
    /// reliable 18x) is answered by Bridgehead from the caller's (in the ACK or PRACK), and
    /// the caller gets the callee's offer cut to its own codecs as its answer.
    Always,
}

/// What a multipart body (RFC 5621: SDP beside a PIDF-LO location, an ISUP message…) becomes
/// toward a trunk. Its SDP part is anchored like any SDP either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MultipartPolicy {
    /// Relayed with every part.
    #[default]
    Relay,
    /// Only its SDP part goes (as an `application/sdp` body), for a peer that takes nothing
    /// else; a multipart body without SDP goes as no body.
    SdpOnly,
}

/// What the provisional responses a trunk's callers get become (RFC 3960 early media). A rule
/// may choose otherwise for one call (`call:set_early_media`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EarlyMedia {
    /// As the callee sent them.
    #[default]
    Passthrough,
    /// A 180-183 without SDP (before the callee sent any) carries Bridgehead's own answer, and
    /// Bridgehead plays the caller ringback until the callee's media or answer (media must be
    /// anchored).
    Ringback,
    /// A 181-183 becomes `180 Ringing` without its SDP: the caller plays its own ringback and
    /// hears nothing of the callee before the answer.
    #[serde(rename = "convert_183_to_180")]
    Convert183To180,
    /// As `ringback`, sent as `183 Session Progress`: for callers that play early media only
    /// from a 183.
    #[serde(rename = "convert_180_to_183")]
    Convert180To183,
}

impl EarlyMedia {
    /// The setting by its profile name.
    pub fn from_name(name: &str) -> Option<EarlyMedia> {
        Some(match name {
            "passthrough" => EarlyMedia::Passthrough,
            "ringback" => EarlyMedia::Ringback,
            "convert_183_to_180" => EarlyMedia::Convert183To180,
            "convert_180_to_183" => EarlyMedia::Convert180To183,
            _ => return None,
        })
    }

    /// True when Bridgehead answers the caller itself and plays it ringback.
    pub fn local_ringback(self) -> bool {
        matches!(self, EarlyMedia::Ringback | EarlyMedia::Convert180To183)
    }
}

/// Whether a trunk's legs use reliable provisional responses (RFC 3262, `100rel`). Each leg
/// keeps its own: Bridgehead PRACKs what it receives and has its own provisionals PRACKed,
/// so one leg may use them while the other does not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rel100 {
    /// Never: a caller that requires 100rel gets 420; INVITEs to the trunk do not offer it.
    Disabled,
    /// When the other end asks: a caller that requires it gets reliable provisionals, one
    /// that supports it gets them once the callee's are reliable; INVITEs to the trunk carry
    /// `Supported: 100rel`.
    #[default]
    Supported,
    /// Always: a caller that does not support it gets 421, one that does gets every
    /// provisional reliably; INVITEs to the trunk carry `Require: 100rel`.
    Required,
}

impl Rel100 {
    /// True unless disabled.
    pub fn allowed(self) -> bool {
        self != Rel100::Disabled
    }
}

/// Which headers of the other leg cross onto a trunk's leg. B2BUA-owned headers never cross;
/// explicit edits made by a rule always win.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderPolicy {
    /// Headers that never cross (`P-*` style prefixes allowed).
    pub strip: Vec<HeaderPattern>,
    /// When not empty, only these headers cross.
    pub copy: Vec<HeaderPattern>,
}

impl HeaderPolicy {
    fn from_raw(raw: &RawHeaderPolicy) -> HeaderPolicy {
        let patterns = |list: &[String]| list.iter().map(|p| HeaderPattern::new(p)).collect();
        HeaderPolicy {
            strip: patterns(&raw.strip),
            copy: patterns(&raw.copy),
        }
    }

    /// True when a header with this name may cross onto the trunk.
    pub fn allows(&self, name: &str) -> bool {
        if self.strip.iter().any(|p| p.matches(name)) {
            return false;
        }
        self.copy.is_empty() || self.copy.iter().any(|p| p.matches(name))
    }
}

/// A header name, or a prefix when written with a trailing `*` (`X-*`). Case-insensitive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderPattern {
    text: String,
    prefix: bool,
}

impl HeaderPattern {
    /// Parses `Name` or `Prefix*`.
    pub fn new(pattern: &str) -> HeaderPattern {
        match pattern.strip_suffix('*') {
            Some(prefix) => HeaderPattern {
                text: prefix.to_ascii_lowercase(),
                prefix: true,
            },
            None => HeaderPattern {
                text: pattern.to_ascii_lowercase(),
                prefix: false,
            },
        }
    }

    /// True when `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        if self.prefix {
            name.len() >= self.text.len()
                && name.as_bytes()[..self.text.len()].eq_ignore_ascii_case(self.text.as_bytes())
        } else {
            name.eq_ignore_ascii_case(&self.text)
        }
    }
}

/// A profile error, with the place it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    listeners: Vec<RawListener>,
    trunks: Vec<RawTrunk>,
    #[serde(default)]
    shards: usize,
    #[serde(default)]
    limits: Limits,
    media: Option<RawMedia>,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    lookups: Vec<RawLookup>,
    #[serde(default = "default_drain_timeout")]
    drain_timeout: u32,
    #[serde(default)]
    admission: AdmissionConfig,
    #[serde(default)]
    overload: OverloadConfig,
    admin: Option<RawAdmin>,
    cdr: Option<CdrConfig>,
    capture: Option<CaptureConfig>,
    cluster: Option<ClusterConfig>,
    #[serde(default = "default_short_call_seconds")]
    short_call_seconds: u32,
}

fn default_drain_timeout() -> u32 {
    30
}

/// One lookup: an inline table or a CSV file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLookup {
    name: String,
    #[serde(default)]
    table: Option<BTreeMap<String, String>>,
    #[serde(default)]
    csv: Option<String>,
    #[serde(default)]
    http: Option<RawHttpLookup>,
}

/// An HTTP consultation service behind a lookup.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpLookup {
    url: String,
    #[serde(default = "default_lookup_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_lookup_ttl")]
    ttl: u64,
    #[serde(default = "default_lookup_negative_ttl")]
    negative_ttl: u64,
    #[serde(default = "default_lookup_concurrency")]
    concurrency: u32,
}

fn default_lookup_timeout_ms() -> u64 {
    1000
}
fn default_lookup_ttl() -> u64 {
    300
}
fn default_lookup_negative_ttl() -> u64 {
    60
}
fn default_lookup_concurrency() -> u32 {
    100
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    /// `IP:port` of each server.
    #[serde(default)]
    servers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMedia {
    address: String,
    #[serde(default)]
    advertise: Option<String>,
    ports: String,
    #[serde(default)]
    strict_source: bool,
    #[serde(default = "default_rtp_timeout")]
    rtp_timeout: u32,
    #[serde(default)]
    ringback: TonePlan,
    #[serde(default)]
    no_ports: NoPortsPolicy,
    #[serde(default = "default_bound_ahead")]
    bound_ahead: usize,
    #[serde(default)]
    io: MediaIo,
    #[serde(default)]
    io_threads: usize,
}

/// How the relay moves packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaIo {
    /// io_uring where the kernel offers what the fast path needs, else tokio.
    #[default]
    Auto,
    /// io_uring, or Bridgehead does not start.
    IoUring,
    /// A tokio task per stream (one system call per packet each way).
    Tokio,
}

fn default_bound_ahead() -> usize {
    DEFAULT_BOUND_AHEAD
}

/// What happens to a new call whose offer cannot be anchored (no port left in the shard's
/// range, or none could be bound, e.g. out of file descriptors).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoPortsPolicy {
    /// The caller gets 503 and the call ends.
    #[default]
    Refuse,
    /// The offer goes out unanchored (media flows end to end, topology shows).
    Unanchored,
}

fn default_rtp_timeout() -> u32 {
    60
}

/// Media anchoring: where the relay binds its RTP/RTCP ports and what it writes into SDP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaConfig {
    /// The IP the relay binds.
    pub address: IpAddr,
    /// The address written into c= and o= (defaults to `address`).
    pub advertise: String,
    /// The first and last port of the range (RTP on even ports, RTCP on the next odd one).
    pub ports: (u16, u16),
    /// Only accept media from the address the far end's SDP names (no latching).
    pub strict_source: bool,
    /// Seconds without RTP from a sending leg before `on_media` hears `rtp_timeout` and the
    /// call is hung up; 0 turns it off.
    pub rtp_timeout: u32,
    /// The ringback cadence `call:play_ringback` plays.
    pub ringback: TonePlan,
    /// What a new call whose offer cannot be anchored gets.
    pub no_ports: NoPortsPolicy,
    /// Port pairs of each shard's range bound ahead of time, off the shard (two descriptors
    /// each); 0 binds each pair when a call takes it.
    pub bound_ahead: usize,
    /// How the relay moves packets (`auto`: io_uring where available, else tokio).
    pub io: MediaIo,
    /// The io_uring relay's threads; 0: half the cores (one to eight).
    pub io_threads: usize,
}

/// Port pairs per shard bound ahead of time unless the profile says otherwise.
pub const DEFAULT_BOUND_AHEAD: usize = 32;

/// A ringback tone plan (ITU-T E.180 Supplement 2, national tones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TonePlan {
    /// ITU-T E.180 / ETSI: 425 Hz, 1 s on, 4 s off (Germany and most of Europe).
    #[default]
    Itu,
    /// North America: 440 + 480 Hz, 2 s on, 4 s off.
    NorthAmerica,
    /// United Kingdom: 400 + 450 Hz, 0.4 s on, 0.2 s off, 0.4 s on, 2 s off.
    Uk,
    /// France: 440 Hz, 1.5 s on, 3.5 s off.
    France,
    /// Japan: 400 Hz amplitude-modulated at 16 Hz, 1 s on, 2 s off.
    Japan,
}

/// Resource limits of the rule engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Lua instructions one hook call may run before it is stopped.
    pub script_instructions: u32,
    /// Memory one Lua state (one shard's rule set) may use, in MiB.
    pub script_memory_mb: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            script_instructions: 1_000_000,
            script_memory_mb: 64,
        }
    }
}

/// What happens to a call when one of its hooks fails (error, budget or memory limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScriptErrorPolicy {
    /// Log, count, and carry on as if the hook had not run past the error.
    Continue,
    /// Refuse a call that is being set up with this status.
    Reject(u16),
}

impl ScriptErrorPolicy {
    fn parse(text: &str) -> Option<ScriptErrorPolicy> {
        let mut words = text.split_whitespace();
        let policy = match words.next()? {
            "continue" => ScriptErrorPolicy::Continue,
            "reject" => match words.next() {
                None => ScriptErrorPolicy::Reject(500),
                Some(code) => match code.parse::<u16>() {
                    Ok(code) if (400..=699).contains(&code) => ScriptErrorPolicy::Reject(code),
                    _ => return None,
                },
            },
            _ => return None,
        };
        words.next().is_none().then_some(policy)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: String,
    address: String,
    #[serde(default = "default_transports")]
    transports: Vec<Transport>,
    advertise: Option<String>,
    #[serde(default = "default_signalling_dscp")]
    dscp: u8,
    #[serde(default = "default_idle_timeout")]
    idle_timeout: u32,
    #[serde(default = "default_connections_per_source")]
    max_connections_per_source: u32,
    #[serde(default)]
    unknown_sources: UnknownSources,
    tls: Option<RawListenerTls>,
    #[serde(default)]
    ping_interval: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListenerTls {
    port: Option<u16>,
    certificate: String,
    key: String,
    client_ca: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTrunkTls {
    server_name: Option<String>,
    ca: Option<String>,
}

/// Seconds a connection may go without a complete message.
fn default_idle_timeout() -> u32 {
    30
}

/// Connections one source IP may hold open to a listener.
fn default_connections_per_source() -> u32 {
    64
}

/// CS3, the usual class for call signalling.
fn default_signalling_dscp() -> u8 {
    24
}

/// EF, expedited forwarding, for voice.
/// The DSCP of media toward a trunk unless it says otherwise: EF (46).
pub const DEFAULT_MEDIA_DSCP: u8 = 46;

fn default_media_dscp() -> u8 {
    DEFAULT_MEDIA_DSCP
}

fn default_transports() -> Vec<Transport> {
    vec![Transport::Udp]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrunk {
    name: String,
    listener: String,
    peers: Vec<String>,
    #[serde(default = "default_transport")]
    transport: Transport,
    script: Option<PathBuf>,
    route: Option<String>,
    #[serde(default)]
    headers: RawHeaderPolicy,
    on_script_error: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    srtp: SrtpPolicy,
    #[serde(default = "default_media_dscp")]
    media_dscp: u8,
    #[serde(default)]
    codecs: Vec<String>,
    #[serde(default)]
    dtmf: DtmfMode,
    #[serde(default)]
    comfort_noise: bool,
    /// Replaced by `early_media: ringback`; kept to say so.
    #[serde(default)]
    local_ringback: Option<bool>,
    #[serde(default)]
    early_media: EarlyMedia,
    #[serde(default)]
    p_early_media: bool,
    #[serde(default)]
    ringback: Option<TonePlan>,
    #[serde(default)]
    tcp_above: Option<usize>,
    #[serde(default)]
    trim_above: Option<usize>,
    #[serde(default)]
    rel100: Rel100,
    #[serde(default)]
    multipart: MultipartPolicy,
    #[serde(default)]
    delayed_offer: DelayedOffer,
    #[serde(default)]
    session_timer: SessionTimerConfig,
    #[serde(default)]
    precondition: Precondition,
    #[serde(default)]
    tls: RawTrunkTls,
    #[serde(default)]
    keepalive: Option<Keepalive>,
    #[serde(default)]
    failover_codes: Vec<u16>,
    #[serde(default = "default_final_codes")]
    final_codes: Vec<u16>,
    #[serde(default)]
    failover_timeout: Option<u32>,
    #[serde(default)]
    hold: HoldStyle,
    #[serde(default)]
    refer: ReferPolicy,
    #[serde(default = "default_transferor_bye")]
    transferor_bye: u32,
    #[serde(default)]
    max_calls: Option<u32>,
    #[serde(default)]
    max_cps: Option<u32>,
    #[serde(default)]
    requests_per_source: Option<u32>,
    #[serde(default)]
    calls_per_source: Option<u32>,
    #[serde(default)]
    e164: Option<E164>,
    #[serde(default)]
    sdp_attributes: Vec<String>,
}

/// A decline is the callee's own answer: no other peer should ring it again.
fn default_transferor_bye() -> u32 {
    32
}

fn default_final_codes() -> Vec<u16> {
    vec![603]
}

/// How a trunk carries DTMF.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DtmfMode {
    /// RFC 4733 telephone-events in the RTP stream.
    #[default]
    Rfc4733,
    /// Tones in the audio (detected by the relay when media is anchored).
    Inband,
    /// SIP INFO (application/dtmf-relay or application/dtmf).
    Info,
}

/// Whether media toward a trunk is SRTP (SDES keys, RFC 4568), when media is anchored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SrtpPolicy {
    /// Plain RTP toward the trunk (SRTP from the other leg is decrypted).
    #[default]
    Off,
    /// SRTP toward the trunk when the other leg uses it or the trunk offered it.
    Optional,
    /// Always SRTP toward the trunk (Microsoft Teams).
    Required,
}

fn default_transport() -> Transport {
    Transport::Udp
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHeaderPolicy {
    #[serde(default)]
    strip: Vec<String>,
    #[serde(default)]
    copy: Vec<String>,
}

/// What a PEM file the profile names must hold.
#[derive(Clone, Copy)]
enum PemKind {
    /// One certificate or more.
    Certificates,
    /// A private key.
    Key,
}

impl PemKind {
    /// Reads `file` as this kind; the problem in words when it is not.
    fn check(self, file: &Path) -> Result<(), String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let shown = file.display();
        match self {
            PemKind::Certificates => {
                let certs = CertificateDer::pem_file_iter(file)
                    .map_err(|err| format!("{shown}: {err}"))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| format!("{shown}: {err}"))?;
                if certs.is_empty() {
                    return Err(format!("{shown}: no certificate in it"));
                }
            }
            PemKind::Key => {
                PrivateKeyDer::from_pem_file(file).map_err(|err| format!("{shown}: {err}"))?;
            }
        }
        Ok(())
    }
}

/// Checks one profile text part by part, collecting every error with its line.
struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn error(&mut self, line: Option<usize>, message: String) {
        self.errors.push(ConfigError {
            file: self.path.to_path_buf(),
            line,
            message,
        });
    }

    /// The first line (from 1) that contains `needle`: where an error points.
    fn line_of(&self, needle: &str) -> Option<usize> {
        self.text
            .lines()
            .position(|l| l.contains(needle))
            .map(|index| index + 1)
    }

    /// The line of `needle` in the top-level section `section` (from its `section:` line to
    /// the next unindented line).
    fn line_in(&self, section: &str, needle: &str) -> Option<usize> {
        let start = self
            .text
            .lines()
            .position(|l| l.trim_end() == format!("{section}:"))?;
        self.text
            .lines()
            .enumerate()
            .skip(start + 1)
            .take_while(|(_, l)| l.is_empty() || l.starts_with([' ', '\t', '#']))
            .find(|(_, l)| l.contains(needle))
            .map_or(Some(start + 1), |(index, _)| Some(index + 1))
    }

    /// A listener, or None when its address is unusable.
    fn listener(&mut self, raw: &RawListener) -> Option<Listener> {
        let address = match raw.address.parse::<SocketAddr>() {
            Ok(address) => address,
            Err(_) => {
                self.error(
                    self.line_of(&raw.address),
                    format!(
                        "listener '{}': address '{}' is not IP:port",
                        raw.name, raw.address
                    ),
                );
                return None;
            }
        };
        if raw.transports.is_empty() {
            self.error(
                self.line_of(&format!("name: {}", raw.name)),
                format!("listener '{}' has no transports", raw.name),
            );
        }
        let advertise = raw.advertise.clone().unwrap_or_else(|| match address.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        });
        if raw.dscp > 63 {
            self.error(
                self.line_of(&format!("dscp: {}", raw.dscp)),
                format!("listener '{}': dscp {} is above 63", raw.name, raw.dscp),
            );
        }
        let tls = self.listener_tls(raw, address);
        Some(Listener {
            name: raw.name.clone(),
            address,
            transports: raw.transports.clone(),
            advertise,
            dscp: raw.dscp,
            idle_timeout: raw.idle_timeout,
            max_connections_per_source: raw.max_connections_per_source,
            unknown_sources: raw.unknown_sources,
            tls,
            ping_interval: raw.ping_interval,
        })
    }

    /// A lookup: exactly one source, its CSV readable and well formed (errors name the CSV's
    /// line).
    fn lookup(&mut self, raw: &RawLookup) -> Option<Lookup> {
        let at = self.line_of(&format!("name: {}", raw.name));
        let name_ok = !raw.name.is_empty()
            && raw
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            self.error(
                at,
                format!(
                    "lookup '{}': a name is letters, digits, '_' and '-'",
                    raw.name
                ),
            );
            return None;
        }
        let (entries, csv, http) = match (&raw.table, &raw.csv, &raw.http) {
            (Some(table), None, None) => (table.clone().into_iter().collect(), None, None),
            (None, Some(file), None) => {
                let file = self.profile_file(file);
                let text = match std::fs::read_to_string(&file) {
                    Ok(text) => text,
                    Err(err) => {
                        self.error(
                            self.line_of(&format!("csv: {}", raw.csv.as_deref().unwrap_or(""))),
                            format!(
                                "lookup '{}': cannot read {}: {err}",
                                raw.name,
                                file.display()
                            ),
                        );
                        return None;
                    }
                };
                match crate::lookup::parse_csv(&text) {
                    Ok(entries) => (entries, Some(file), None),
                    Err(err) => {
                        self.errors.push(ConfigError {
                            file,
                            line: Some(err.line),
                            message: format!("lookup '{}': {}", raw.name, err.message),
                        });
                        return None;
                    }
                }
            }
            (None, None, Some(http)) => (HashMap::new(), None, Some(self.http_lookup(raw, http)?)),
            _ => {
                self.error(
                    at,
                    format!("lookup '{}' needs one of table, csv or http", raw.name),
                );
                return None;
            }
        };
        Some(Lookup {
            name: raw.name.clone(),
            csv,
            http,
            entries: std::sync::Arc::new(entries),
        })
    }

    /// A lookup's consultation service: an `http(s)://` URL with `{key}`, a timeout of 1 ms to
    /// 60 s, at least one request at a time.
    fn http_lookup(&mut self, raw: &RawLookup, http: &RawHttpLookup) -> Option<HttpLookup> {
        let at = self.line_of(&http.url);
        let scheme_ok = http.url.starts_with("http://") || http.url.starts_with("https://");
        let problem = if !scheme_ok {
            Some("the url must start with http:// or https://")
        } else if !http.url.contains("{key}") {
            Some("the url must contain {key}")
        } else if !(1..=60_000).contains(&http.timeout_ms) {
            Some("timeout_ms must be 1 to 60000")
        } else if http.concurrency == 0 {
            Some("concurrency must be at least 1")
        } else {
            None
        };
        if let Some(problem) = problem {
            self.error(at, format!("lookup '{}': {problem}", raw.name));
            return None;
        }
        Some(HttpLookup {
            url: http.url.clone(),
            timeout: Duration::from_millis(http.timeout_ms),
            ttl: Duration::from_secs(http.ttl),
            negative_ttl: Duration::from_secs(http.negative_ttl),
            concurrency: http.concurrency,
        })
    }

    /// The admin server's settings: an address, and a token read from its file (required off
    /// loopback).
    fn admin(&mut self, raw: &RawAdmin) -> Option<Admin> {
        let line = self.line_of("admin:");
        let Ok(address) = raw.address.parse::<SocketAddr>() else {
            self.error(
                self.line_of(&raw.address).or(line),
                format!("admin: address '{}' is not IP:port", raw.address),
            );
            return None;
        };
        let token = match &raw.token_file {
            None => None,
            Some(file) => {
                let path = self.profile_file(file);
                match std::fs::read_to_string(&path) {
                    Ok(text) if !text.trim().is_empty() => Some(text.trim().to_string()),
                    Ok(_) => {
                        self.error(
                            self.line_of(file),
                            format!("admin: token_file '{}' is empty", path.display()),
                        );
                        return None;
                    }
                    Err(err) => {
                        self.error(
                            self.line_of(file),
                            format!("admin: token_file '{}': {err}", path.display()),
                        );
                        return None;
                    }
                }
            }
        };
        if token.is_none() && !address.ip().is_loopback() {
            self.error(
                self.line_of(&raw.address).or(line),
                format!("admin: bound to {address}, off loopback: a token_file is required"),
            );
            return None;
        }
        let tls = raw.tls.as_ref().map(|tls| {
            let (certificate, key, _) =
                self.pem_files("admin", line, (&tls.certificate, &tls.key, None));
            ListenerTls {
                port: address.port(),
                certificate,
                key,
                client_ca: None,
            }
        });
        if raw.recent_calls > MAX_RECENT_CALLS {
            self.error(
                self.line_of("recent_calls:").or(line),
                format!("admin: recent_calls is at most {MAX_RECENT_CALLS}"),
            );
        }
        Some(Admin {
            address,
            token,
            tls,
            recent_calls: raw.recent_calls,
        })
    }

    /// The PEM files of `owner`'s TLS (a certificate chain, its key, and CAs of clients when
    /// given) relative to the profile's folder, each checked readable and of its kind.
    fn pem_files(
        &mut self,
        owner: &str,
        at: Option<usize>,
        (certificate, key, client_ca): (&str, &str, Option<&str>),
    ) -> (PathBuf, PathBuf, Option<PathBuf>) {
        let files = (
            self.profile_file(certificate),
            self.profile_file(key),
            client_ca.map(|ca| self.profile_file(ca)),
        );
        let checks = [
            (Some(&files.0), certificate, PemKind::Certificates),
            (Some(&files.1), key, PemKind::Key),
            (
                files.2.as_ref(),
                client_ca.unwrap_or(key),
                PemKind::Certificates,
            ),
        ];
        for (file, named, kind) in checks {
            if let Some(Err(problem)) = file.map(|file| kind.check(file)) {
                self.error(self.line_of(named).or(at), format!("{owner}: {problem}"));
            }
        }
        files
    }

    /// A file the profile names, relative to the profile's folder.
    fn profile_file(&self, name: &str) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).join(name)
    }

    /// A listener's TLS: present exactly when `tls` is among its transports, its files
    /// readable PEM.
    fn listener_tls(&mut self, raw: &RawListener, address: SocketAddr) -> Option<ListenerTls> {
        let at = self.line_of(&format!("name: {}", raw.name));
        let wanted = raw.transports.contains(&Transport::Tls);
        let Some(tls) = &raw.tls else {
            if wanted {
                self.error(
                    at,
                    format!(
                        "listener '{}': transport tls needs a tls section (certificate, key)",
                        raw.name
                    ),
                );
            }
            return None;
        };
        if !wanted {
            self.error(
                self.line_of("certificate:").or(at),
                format!(
                    "listener '{}': a tls section without tls in its transports",
                    raw.name
                ),
            );
        }
        let port = tls.port.unwrap_or_else(|| {
            if raw.transports.contains(&Transport::Tcp) {
                address.port().saturating_add(1)
            } else {
                address.port()
            }
        });
        if port == address.port() && raw.transports.contains(&Transport::Tcp) {
            self.error(
                self.line_of("port:").or(at),
                format!(
                    "listener '{}': TLS and TCP cannot share port {port}",
                    raw.name
                ),
            );
        }
        let (certificate, key, client_ca) = self.pem_files(
            &format!("listener '{}'", raw.name),
            at,
            (&tls.certificate, &tls.key, tls.client_ca.as_deref()),
        );
        Some(ListenerTls {
            port,
            certificate,
            key,
            client_ca,
        })
    }

    /// A trunk's TLS settings: a TLS trunk needs a TLS listener (its certificate is the one
    /// Bridgehead presents), a server name that is one, and a readable CA file.
    fn trunk_tls(&mut self, raw: &RawTrunk, listener: &Listener, at: Option<usize>) -> TrunkTls {
        let settings = &raw.tls;
        if raw.transport == Transport::Tls && listener.tls.is_none() {
            self.error(
                at,
                format!(
                    "trunk '{}': transport tls needs TLS on listener '{}' (its certificate is Bridgehead's)",
                    raw.name, listener.name
                ),
            );
        }
        if raw.transport != Transport::Tls
            && (settings.server_name.is_some() || settings.ca.is_some())
        {
            self.error(
                self.line_of("server_name:").or(at),
                format!("trunk '{}': tls settings without transport: tls", raw.name),
            );
        }
        if let Some(name) = &settings.server_name {
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                self.error(
                    self.line_of(name).or(at),
                    format!(
                        "trunk '{}': server_name '{name}' is no DNS name or IP address",
                        raw.name
                    ),
                );
            }
        }
        let ca = settings.ca.as_deref().map(|ca| self.profile_file(ca));
        if let (Some(file), Some(named)) = (&ca, &settings.ca) {
            if let Err(problem) = PemKind::Certificates.check(file) {
                self.error(
                    self.line_of(named).or(at),
                    format!("trunk '{}': {problem}", raw.name),
                );
            }
        }
        TrunkTls {
            server_name: settings.server_name.clone(),
            ca,
        }
    }

    /// A trunk, or None when its listener does not exist. Scripts are found relative to the
    /// profile.
    fn trunk(
        &mut self,
        raw: &RawTrunk,
        listeners: &[Listener],
        trunk_names: &[&str],
    ) -> Option<Trunk> {
        let base = self.path.parent().unwrap_or(Path::new("."));
        let at = self.line_of(&format!("name: {}", raw.name));
        let Some(listener) = listeners.iter().position(|l| l.name == raw.listener) else {
            self.error(
                self.line_of(&format!("listener: {}", raw.listener)).or(at),
                format!("trunk '{}': no listener named '{}'", raw.name, raw.listener),
            );
            return None;
        };
        if !listeners[listener].transports.contains(&raw.transport) {
            self.error(
                at,
                format!(
                    "trunk '{}': listener '{}' has no {:?} transport",
                    raw.name, raw.listener, raw.transport
                ),
            );
        }
        let tls = self.trunk_tls(raw, &listeners[listener], at);
        if let Some(bytes) = raw.tcp_above {
            let place = self.line_of(&format!("tcp_above: {bytes}")).or(at);
            if raw.transport != Transport::Udp {
                self.error(
                    place,
                    format!("trunk '{}': tcp_above is for a UDP trunk", raw.name),
                );
            } else if !listeners[listener].transports.contains(&Transport::Tcp) {
                self.error(
                    place,
                    format!(
                        "trunk '{}': tcp_above needs TCP on listener '{}'",
                        raw.name, raw.listener
                    ),
                );
            }
        }
        if let Some(bytes) = raw.trim_above.filter(|b| *b < 500) {
            self.error(
                self.line_of(&format!("trim_above: {bytes}")).or(at),
                format!("trunk '{}': trim_above is at least 500 bytes", raw.name),
            );
        }
        let mut peer_specs = Vec::new();
        for peer in &raw.peers {
            match peer_spec(peer, raw.transport) {
                Some(spec) => peer_specs.push(spec),
                None => self.error(
                    self.line_of(peer).or(at),
                    format!(
                        "trunk '{}': peer '{}' is neither IP:port nor name:port",
                        raw.name, peer
                    ),
                ),
            }
        }
        // Names are resolved later (the runtime resolves them before it uses the profile).
        let peers = peer_specs
            .iter()
            .filter_map(|spec| match spec {
                PeerSpec::Address(addr) => Some(*addr),
                PeerSpec::Name { .. } | PeerSpec::Srv { .. } => None,
            })
            .collect();
        if raw.peers.is_empty() {
            self.error(at, format!("trunk '{}' has no peers", raw.name));
        }
        let route = match &raw.route {
            None => None,
            Some(target) => match trunk_names.iter().position(|n| n == target) {
                Some(index) => Some(index),
                None => {
                    self.error(
                        self.line_of(&format!("route: {target}")).or(at),
                        format!("trunk '{}': route to unknown trunk '{}'", raw.name, target),
                    );
                    None
                }
            },
        };
        let script = raw.script.as_ref().map(|script| base.join(script));
        if let Some(script) = &script {
            if !script.is_file() {
                self.error(
                    raw.script
                        .as_ref()
                        .and_then(|s| self.line_of(&s.display().to_string()))
                        .or(at),
                    format!(
                        "trunk '{}': script {} not found",
                        raw.name,
                        script.display()
                    ),
                );
            }
        }
        let on_script_error = self.on_script_error(raw, at);
        let params = self.params(raw, at);
        let timer = raw.session_timer;
        if timer.min_se < 90 || (timer.expires != 0 && timer.expires < timer.min_se) {
            self.error(
                self.line_of("min_se").or(self.line_of("session_timer")).or(at),
                format!(
                    "trunk '{}': session_timer needs min_se of at least 90 and expires of 0 or at least min_se",
                    raw.name
                ),
            );
        }
        if let Some(code) = raw
            .failover_codes
            .iter()
            .chain(&raw.final_codes)
            .find(|code| !(300..700).contains(*code))
        {
            self.error(
                self.line_of("failover_codes")
                    .or(self.line_of("final_codes"))
                    .or(at),
                format!(
                    "trunk '{}': {code} is no final failure status (300-699)",
                    raw.name
                ),
            );
        }
        if let Some(plan) = &raw.e164 {
            let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
            if plan.country_code.is_empty()
                || plan.country_code.len() > 3
                || !digits(&plan.country_code)
                || !digits(&plan.trunk_prefix)
                || !digits(&plan.international_prefix)
            {
                self.error(
                    self.line_of("country_code").or(at),
                    format!(
                        "trunk '{}': e164 needs a country_code of 1-3 digits and prefixes of digits",
                        raw.name
                    ),
                );
            }
        }
        if let Some(keepalive) = raw.keepalive {
            if keepalive.interval == 0 || keepalive.down_after == 0 || keepalive.up_after == 0 {
                self.error(
                    self.line_of("keepalive").or(at),
                    format!(
                        "trunk '{}': keepalive interval, down_after and up_after must be at least 1",
                        raw.name
                    ),
                );
            }
        }
        if raw.precondition == Precondition::Terminate && !raw.rel100.allowed() {
            self.error(
                self.line_of("precondition").or(at),
                format!(
                    "trunk '{}': precondition: terminate needs reliable provisionals (rel100 not disabled, RFC 3312 §11)",
                    raw.name
                ),
            );
        }
        if raw.local_ringback.is_some() {
            self.error(
                self.line_of("local_ringback").or(at),
                format!(
                    "trunk '{}': local_ringback is now `early_media: ringback`",
                    raw.name
                ),
            );
        }
        if raw.media_dscp > 63 {
            self.error(
                self.line_of(&format!("media_dscp: {}", raw.media_dscp))
                    .or(at),
                format!(
                    "trunk '{}': media_dscp {} is above 63",
                    raw.name, raw.media_dscp
                ),
            );
        }
        Some(Trunk {
            tls,
            peer_specs,
            peer_names: Vec::new(),
            name: raw.name.clone(),
            srtp: raw.srtp,
            media_dscp: raw.media_dscp,
            codecs: raw.codecs.clone(),
            dtmf: raw.dtmf,
            comfort_noise: raw.comfort_noise,
            early_media: raw.early_media,
            p_early_media: raw.p_early_media,
            ringback: raw.ringback,
            tcp_above: raw.tcp_above,
            trim_above: raw.trim_above,
            rel100: raw.rel100,
            multipart: raw.multipart,
            delayed_offer: raw.delayed_offer,
            session_timer: raw.session_timer,
            precondition: raw.precondition,
            keepalive: raw.keepalive,
            failover_codes: raw.failover_codes.clone(),
            final_codes: raw.final_codes.clone(),
            failover_timeout: raw.failover_timeout.filter(|s| *s > 0),
            hold: raw.hold,
            refer: raw.refer,
            transferor_bye: raw.transferor_bye,
            max_calls: raw.max_calls,
            max_cps: raw.max_cps,
            requests_per_source: raw.requests_per_source,
            calls_per_source: raw.calls_per_source,
            e164: raw.e164.clone(),
            sdp_attributes: raw.sdp_attributes.clone(),
            on_script_error,
            params,
            listener,
            peers,
            transport: raw.transport,
            script,
            route,
            headers: HeaderPolicy::from_raw(&raw.headers),
        })
    }

    /// What a hook failure does to the trunk's calls.
    fn on_script_error(&mut self, raw: &RawTrunk, at: Option<usize>) -> ScriptErrorPolicy {
        match raw.on_script_error.as_deref() {
            None => ScriptErrorPolicy::Continue,
            Some(text) => ScriptErrorPolicy::parse(text).unwrap_or_else(|| {
                self.error(
                    self.line_of(&format!("on_script_error: {text}")).or(at),
                    format!(
                        "trunk '{}': on_script_error must be 'continue', 'reject' or 'reject <400-699>', not '{text}'",
                        raw.name
                    ),
                );
                ScriptErrorPolicy::Continue
            }),
        }
    }

    /// The trunk's free-form parameters, as strings.
    fn params(&mut self, raw: &RawTrunk, at: Option<usize>) -> BTreeMap<String, String> {
        let mut params = BTreeMap::new();
        for (key, value) in &raw.params {
            let text = match value {
                serde_yaml::Value::String(s) => s.clone(),
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Bool(b) => b.to_string(),
                _ => {
                    self.error(
                        self.line_of(&format!("{key}:")).or(at),
                        format!(
                            "trunk '{}': param '{key}' must be a string, number or boolean",
                            raw.name
                        ),
                    );
                    continue;
                }
            };
            params.insert(key.clone(), text);
        }
        params
    }

    /// The media section, or None (with an error) when its address or ports are unusable.
    fn media(&mut self, raw: &RawMedia) -> Option<MediaConfig> {
        let at = self.line_of("media:");
        let address = match raw.address.parse::<IpAddr>() {
            Ok(address) => address,
            Err(_) => {
                self.error(
                    self.line_of(&raw.address).or(at),
                    format!("media: address '{}' is not an IP address", raw.address),
                );
                return None;
            }
        };
        let ports = raw
            .ports
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)))
            .filter(|(first, last)| first < last && *first >= 1024);
        let Some(ports) = ports else {
            self.error(
                self.line_of(&raw.ports).or(at),
                format!(
                    "media: ports '{}' is not a range FIRST-LAST of ports from 1024",
                    raw.ports
                ),
            );
            return None;
        };
        Some(MediaConfig {
            address,
            advertise: raw.advertise.clone().unwrap_or_else(|| address.to_string()),
            ports,
            strict_source: raw.strict_source,
            rtp_timeout: raw.rtp_timeout,
            ringback: raw.ringback,
            no_ports: raw.no_ports,
            bound_ahead: raw.bound_ahead,
            io: raw.io,
            io_threads: raw.io_threads,
        })
    }
}

impl Profile {
    /// Reads and validates a profile file.
    pub fn load(path: &Path) -> Result<Profile, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            vec![ConfigError {
                file: path.to_path_buf(),
                line: None,
                message: format!("cannot read profile: {err}"),
            }]
        })?;
        Profile::parse(path, &text)
    }

    /// Validates profile text; `path` names it in errors and anchors relative script paths.
    pub fn parse(path: &Path, text: &str) -> Result<Profile, Vec<ConfigError>> {
        let raw: RawProfile = serde_yaml::from_str(text).map_err(|err| {
            let line = err.location().map(|l| l.line());
            let message = err.to_string();
            // serde_yaml appends " at line N column M"; the place is already in front.
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_string();
            vec![ConfigError {
                file: path.to_path_buf(),
                line,
                message,
            }]
        })?;
        let mut check = Validator {
            path,
            text,
            errors: Vec::new(),
        };
        let mut listeners = Vec::new();
        let mut names = HashSet::new();
        for raw in &raw.listeners {
            if !names.insert(raw.name.as_str()) {
                let line = check.line_of(&format!("name: {}", raw.name));
                check.error(line, format!("listener '{}' is defined twice", raw.name));
            }
            listeners.extend(check.listener(raw));
        }
        let trunk_names: Vec<&str> = raw.trunks.iter().map(|t| t.name.as_str()).collect();
        let mut trunks = Vec::new();
        let mut seen = HashSet::new();
        for raw in &raw.trunks {
            if !seen.insert(raw.name.as_str()) {
                let line = check.line_of(&format!("name: {}", raw.name));
                check.error(line, format!("trunk '{}' is defined twice", raw.name));
            }
            trunks.extend(check.trunk(raw, &listeners, &trunk_names));
        }
        let media = raw.media.as_ref().and_then(|raw| check.media(raw));
        if raw.media.is_none() {
            // What Bridgehead's own media does needs its relay.
            for trunk in &trunks {
                let needs = if trunk.early_media.local_ringback() {
                    Some((
                        "early_media",
                        "early_media: ringback and convert_180_to_183",
                    ))
                } else if trunk.delayed_offer == DelayedOffer::Convert {
                    Some(("delayed_offer", "delayed_offer: convert"))
                } else if trunk.precondition == Precondition::Terminate {
                    Some(("precondition", "precondition: terminate"))
                } else {
                    None
                };
                if let Some((key, setting)) = needs {
                    check.error(
                        check.line_of(key),
                        format!(
                            "trunk '{}': {setting} need media anchored (a media section)",
                            trunk.name
                        ),
                    );
                }
            }
        }
        let mut dns_servers = Vec::new();
        for server in &raw.dns.servers {
            match server.parse::<SocketAddr>() {
                Ok(addr) => dns_servers.push(addr),
                Err(_) => check.error(
                    check.line_of(server),
                    format!("dns: server '{server}' is not IP:port"),
                ),
            }
        }
        let overload = &raw.overload;
        for (key, bad, must) in [
            ("queue", overload.queue == 0, "at least 1"),
            ("queue_delay_ms", overload.queue_delay_ms == 0, "at least 1"),
            (
                "cpu_percent",
                overload.cpu_percent > 100,
                "0 (no limit) to 100",
            ),
        ] {
            if bad {
                check.error(
                    check.line_of(&format!("{key}:")),
                    format!("overload: {key} must be {must}"),
                );
            }
        }
        let admin = raw.admin.as_ref().and_then(|admin| check.admin(admin));
        if let Some(capture) = &raw.capture {
            for name in &capture.hep.listeners {
                if !listeners.iter().any(|l| &l.name == name) {
                    check.error(
                        check.line_of(name).or(check.line_of("capture:")),
                        format!("capture: no listener '{name}'"),
                    );
                }
            }
        }
        if let Some(cluster) = &raw.cluster {
            let url_ok = cluster.redis.starts_with("redis://")
                && redis::Client::open(cluster.redis.as_str()).is_ok();
            let name_ok = |name: &str| {
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            for (bad, key, must) in [
                (!url_ok, "redis", "a redis:// URL"),
                (!name_ok(&cluster.name), "name", "letters, digits, - and _"),
                (
                    !name_ok(&cluster.instance),
                    "instance",
                    "letters, digits, - and _",
                ),
                (cluster.heartbeat_ms < 100, "heartbeat_ms", "100 or more"),
                (
                    cluster.dead_after_ms < 2 * cluster.heartbeat_ms,
                    "dead_after_ms",
                    "at least twice heartbeat_ms",
                ),
                (cluster.state_ttl < 5, "state_ttl", "5 or more"),
                (
                    !(10..=5000).contains(&cluster.sync_ms),
                    "sync_ms",
                    "10 to 5000",
                ),
            ] {
                if bad {
                    check.error(
                        check.line_in("cluster", &format!("{key}:")),
                        format!("cluster: {key} must be {must}"),
                    );
                }
            }
            for name in &cluster.takes_over {
                if !name_ok(name) || *name == cluster.instance {
                    check.error(
                        check.line_in("cluster", "takes_over:"),
                        format!("cluster: takes_over names another instance, not '{name}'"),
                    );
                }
            }
        }
        let mut lookups: Vec<Lookup> = Vec::new();
        for raw in &raw.lookups {
            if lookups.iter().any(|l| l.name == raw.name) {
                let line = check.line_of(&format!("name: {}", raw.name));
                check.error(line, format!("lookup '{}' is defined twice", raw.name));
            }
            lookups.extend(check.lookup(raw));
        }
        if check.errors.is_empty() {
            Ok(Profile {
                path: path.to_path_buf(),
                listeners,
                trunks,
                shards: raw.shards,
                limits: raw.limits,
                media,
                dns_servers,
                lookups,
                drain_timeout: raw.drain_timeout,
                admission: raw.admission,
                overload: raw.overload,
                admin,
                cdr: raw.cdr.clone().map(|cdr| {
                    let path = check.profile_file(&cdr.path.to_string_lossy());
                    let http = cdr.http.map(|http| CdrHttp {
                        spool: Some(match &http.spool {
                            Some(spool) => check.profile_file(&spool.to_string_lossy()),
                            None => {
                                let mut spool = path.clone().into_os_string();
                                spool.push(".spool");
                                PathBuf::from(spool)
                            }
                        }),
                        batch: http.batch.max(1),
                        ..http
                    });
                    CdrConfig { path, http, ..cdr }
                }),
                capture: raw.capture.clone(),
                cluster: raw.cluster.clone(),
                short_call_seconds: raw.short_call_seconds,
            })
        } else {
            Err(check.errors)
        }
    }

    /// The trunk with this name.
    pub fn trunk_by_name(&self, name: &str) -> Option<TrunkId> {
        self.trunks.iter().position(|t| t.name == name)
    }

    /// The trunk a message belongs to: one using this listener whose peers include the source IP.
    pub fn trunk_for(&self, listener: ListenerId, source: IpAddr) -> Option<TrunkId> {
        self.trunks
            .iter()
            .position(|t| t.listener == listener && t.peers.iter().any(|p| p.ip() == source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
listeners:
  - name: core
    address: 127.0.0.1:5060
    transports: [udp, tcp]
  - name: teams
    address: 127.0.0.1:5070
trunks:
  - name: core
    listener: core
    peers: [\"127.0.0.1:5090\"]
    route: teams
  - name: teams
    listener: teams
    peers: [\"127.0.0.2:5080\"]
    route: core
    headers:
      strip: [\"P-*\"]
";

    #[test]
    fn a_good_profile_loads() {
        let profile = Profile::parse(Path::new("p.yaml"), GOOD).expect("valid");
        assert_eq!(profile.trunks[0].route, Some(1));
        assert_eq!(profile.trunk_for(1, "127.0.0.2".parse().unwrap()), Some(1));
        assert_eq!(profile.trunk_for(0, "127.0.0.2".parse().unwrap()), None);
        let policy = &profile.trunks[1].headers;
        assert!(!policy.allows("P-Asserted-Identity"));
        assert!(policy.allows("X-Custom"));
    }

    #[test]
    fn errors_name_the_line() {
        let bad = GOOD.replace("listener: teams", "listener: nowhere");
        let errors = Profile::parse(Path::new("p.yaml"), &bad).expect_err("invalid");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, Some(13));
        assert!(errors[0]
            .to_string()
            .starts_with("p.yaml:13: trunk 'teams': no listener"));
    }

    #[test]
    fn the_admin_server_needs_a_token_off_loopback() {
        let dir = std::env::temp_dir().join(format!("bh-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("token"), "  t0ken\n").expect("token");
        std::fs::write(dir.join("empty"), "\n").expect("empty");
        let path = dir.join("p.yaml");
        let parse = |admin: &str| Profile::parse(&path, &format!("{GOOD}admin:\n{admin}"));
        let local = parse("  {}\n").expect("valid");
        assert_eq!(
            local.admin,
            Some(Admin {
                address: ([127, 0, 0, 1], ADMIN_PORT).into(),
                token: None,
                tls: None,
                recent_calls: 20,
            })
        );
        let errors = parse("  tls:\n    certificate: nowhere.pem\n    key: nowhere.key\n")
            .expect_err("no such files");
        assert!(
            errors
                .iter()
                .any(|e| e.message.starts_with("admin: ") && e.message.contains("nowhere.pem")),
            "{errors:?}"
        );
        let errors = parse("  address: 0.0.0.0:8480\n").expect_err("no token");
        assert!(
            errors[0]
                .message
                .contains("off loopback: a token_file is required"),
            "{}",
            errors[0]
        );
        let guarded = parse("  address: 0.0.0.0:8480\n  token_file: token\n").expect("valid");
        assert_eq!(
            guarded.admin.and_then(|a| a.token),
            Some("t0ken".to_string())
        );
        let errors = parse("  token_file: empty\n").expect_err("empty");
        assert!(errors[0].message.contains("is empty"), "{}", errors[0]);
        let errors = parse("  token_file: missing\n").expect_err("missing");
        assert!(errors[0].to_string().contains("missing"), "{}", errors[0]);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn overload_limits_that_would_refuse_every_call_are_refused() {
        let good = format!("{GOOD}overload:\n  queue: 500\n  queue_delay_ms: 100\n");
        let profile = Profile::parse(Path::new("p.yaml"), &good).expect("valid");
        assert_eq!(profile.overload.queue_delay_ms, 100);
        assert_eq!(profile.overload.cpu_percent, 0, "the default stays");
        let bad = format!("{GOOD}overload:\n  queue: 0\n  queue_delay_ms: 0\n  cpu_percent: 120\n");
        let errors = Profile::parse(Path::new("p.yaml"), &bad).expect_err("invalid");
        let said: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let lines = GOOD.lines().count();
        assert_eq!(
            said,
            [
                format!("p.yaml:{}: overload: queue must be at least 1", lines + 2),
                format!(
                    "p.yaml:{}: overload: queue_delay_ms must be at least 1",
                    lines + 3
                ),
                format!(
                    "p.yaml:{}: overload: cpu_percent must be 0 (no limit) to 100",
                    lines + 4
                ),
            ]
        );
    }

    #[test]
    fn a_cluster_section_is_checked_key_by_key_with_its_lines() {
        let good = format!(
            "{GOOD}cluster:\n  redis: redis://127.0.0.1:6379/\n  name: eu-west\n  instance: sbc_1\n"
        );
        let profile = Profile::parse(Path::new("p.yaml"), &good).expect("valid");
        let cluster = profile.cluster.expect("cluster");
        assert_eq!(
            (
                cluster.heartbeat_ms,
                cluster.dead_after_ms,
                cluster.state_ttl
            ),
            (1000, 3000, 60),
            "the defaults"
        );
        let bad = format!(
            "{GOOD}cluster:\n  redis: http://x\n  name: eu west\n  instance: a\n  heartbeat_ms: 500\n  dead_after_ms: 600\n"
        );
        let errors = Profile::parse(Path::new("p.yaml"), &bad).expect_err("invalid");
        let said: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let lines = GOOD.lines().count();
        assert_eq!(
            said,
            [
                format!(
                    "p.yaml:{}: cluster: redis must be a redis:// URL",
                    lines + 2
                ),
                format!(
                    "p.yaml:{}: cluster: name must be letters, digits, - and _",
                    lines + 3
                ),
                format!(
                    "p.yaml:{}: cluster: dead_after_ms must be at least twice heartbeat_ms",
                    lines + 6
                ),
            ]
        );
    }

    #[test]
    fn syntax_and_unknown_fields_are_reported_with_line() {
        let bad = GOOD.replace("    route: core", "    rout: core");
        let errors = Profile::parse(Path::new("p.yaml"), &bad).expect_err("invalid");
        assert_eq!(errors[0].line, Some(15));
        assert!(errors[0].message.contains("unknown field `rout`"));
    }

    #[test]
    fn an_old_local_ringback_is_refused_with_its_replacement() {
        let old = GOOD.replace(
            "    route: teams\n",
            "    route: teams\n    local_ringback: true\n",
        );
        let errors = Profile::parse(Path::new("p.yaml"), &old).expect_err("refused");
        assert_eq!(errors[0].line, Some(12));
        assert!(
            errors[0].message.contains("now `early_media: ringback`"),
            "{}",
            errors[0]
        );
        let new = GOOD.replace(
            "    route: teams\n",
            "    route: teams\n    early_media: convert_183_to_180\n",
        );
        let profile = Profile::parse(Path::new("p.yaml"), &new).expect("valid");
        assert_eq!(profile.trunks[0].early_media, EarlyMedia::Convert183To180);
    }

    #[test]
    fn settings_that_need_anchored_media_are_refused_without_it() {
        for setting in [
            "early_media: ringback",
            "delayed_offer: convert",
            "precondition: terminate",
        ] {
            let text = GOOD.replace(
                "    route: teams\n",
                &format!("    route: teams\n    {setting}\n"),
            );
            let errors = Profile::parse(Path::new("p.yaml"), &text).expect_err("refused");
            assert_eq!(errors[0].line, Some(12), "{}", errors[0]);
            assert!(
                errors[0].message.contains("need media anchored"),
                "{}",
                errors[0]
            );
        }
    }

    #[test]
    fn preconditions_are_terminated_only_with_reliable_provisionals() {
        let text = format!(
            "media:\n  address: 127.0.0.1\n  ports: 30000-30099\n{}",
            GOOD.replace(
                "    route: teams\n",
                "    route: teams\n    precondition: terminate\n    rel100: disabled\n",
            )
        );
        let errors = Profile::parse(Path::new("p.yaml"), &text).expect_err("refused");
        assert!(
            errors[0].message.contains("needs reliable provisionals"),
            "{}",
            errors[0]
        );
        let text = text.replace("    rel100: disabled\n", "");
        let profile = Profile::parse(Path::new("p.yaml"), &text).expect("valid");
        assert_eq!(profile.trunks[0].precondition, Precondition::Terminate);
    }

    /// `GOOD` with TLS on the core listener (its certificate `cert`) and the Teams trunk over
    /// TLS through it.
    fn with_tls(cert: &str, tls_lines: &str) -> String {
        GOOD.replace(
            "    transports: [udp, tcp]\n",
            &format!(
                "    transports: [udp, tcp, tls]\n    tls:\n      certificate: {cert}\n      key: {cert}\n{tls_lines}"
            ),
        )
    }

    #[test]
    fn tls_listeners_and_trunks_are_checked_at_load() {
        let dir = std::env::temp_dir().join(format!("bh-tls-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["sbc.example.test".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let both = dir.join("sbc.pem");
        std::fs::write(&both, cert.pem() + &key.serialize_pem()).expect("write");
        let both = both.display().to_string();

        // TLS beside TCP takes the next port; the certificate and key are read.
        let profile = Profile::parse(&dir.join("p.yaml"), &with_tls(&both, "")).expect("valid");
        let tls = profile.listeners[0].tls.as_ref().expect("tls");
        assert_eq!(tls.port, 5061);
        assert_eq!(profile.listeners[0].port(Transport::Tls), 5061);
        assert_eq!(profile.listeners[0].port(Transport::Tcp), 5060);

        // A file that is no PEM, on its line.
        let text = with_tls("/nonexistent/sbc.pem", "");
        let errors = Profile::parse(&dir.join("p.yaml"), &text).expect_err("refused");
        assert_eq!(errors[0].line, Some(6), "{}", errors[0]);
        assert!(
            errors[0].message.contains("/nonexistent/sbc.pem"),
            "{}",
            errors[0]
        );
        // TLS and TCP on one port.
        let text = with_tls(&both, "      port: 5060\n");
        let errors = Profile::parse(&dir.join("p.yaml"), &text).expect_err("refused");
        assert!(
            errors[0].message.contains("cannot share port 5060"),
            "{}",
            errors[0]
        );
        // tls without its section, and a TLS trunk on a listener without TLS.
        let text = GOOD.replace("[udp, tcp]", "[udp, tls]");
        let errors = Profile::parse(&dir.join("p.yaml"), &text).expect_err("refused");
        assert!(
            errors[0].message.contains("needs a tls section"),
            "{}",
            errors[0]
        );
        let text = GOOD.replace(
            "    peers: [\"127.0.0.2:5080\"]\n",
            "    peers: [\"127.0.0.2:5080\"]\n    transport: tls\n",
        );
        let errors = Profile::parse(&dir.join("p.yaml"), &text).expect_err("refused");
        assert!(errors.iter().any(|e| e
            .message
            .contains("transport tls needs TLS on listener 'teams'")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn copy_list_is_a_whitelist() {
        let policy = HeaderPolicy {
            strip: vec![],
            copy: vec![HeaderPattern::new("X-*"), HeaderPattern::new("Subject")],
        };
        assert!(policy.allows("x-ms-fmc"));
        assert!(policy.allows("subject"));
        assert!(!policy.allows("P-Asserted-Identity"));
    }
}
