//! Trunk peers given by name (`sip.pstnhub.microsoft.com:5061`: A and AAAA records) or by SRV
//! name (`_sips._tcp.example.com`, RFC 3263: the targets by priority), resolved with hickory
//! by the runtime before a profile is used, at start and at each reload, never on a shard's
//! thread. A profile's peers are its addresses and what its names resolved to, in the
//! profile's order; a name that does not resolve is left out (calls skip it) with a warning,
//! until a later resolution finds it. The answers' TTL says when to resolve again.

use crate::config::{PeerSpec, Profile};
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The shortest and longest wait before names are resolved again (TTLs are clamped to them:
/// a TTL of 0 must not make Bridgehead resolve in a loop).
const MIN_REFRESH: Duration = Duration::from_secs(30);
const MAX_REFRESH: Duration = Duration::from_secs(3600);

/// True when some trunk of the profile names a peer.
pub fn has_names(profile: &Profile) -> bool {
    profile.trunks.iter().any(|trunk| {
        trunk
            .peer_specs
            .iter()
            .any(|spec| !matches!(spec, PeerSpec::Address(_)))
    })
}

/// The resolver of a profile: its `dns.servers`, else the system's (`/etc/resolv.conf`).
fn resolver(profile: &Profile) -> Result<TokioResolver, String> {
    let builder = if profile.dns_servers.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|err| format!("no system DNS configuration: {err}"))?
    } else {
        let servers = profile
            .dns_servers
            .iter()
            .map(|server| {
                let mut config = NameServerConfig::udp_and_tcp(server.ip());
                for connection in &mut config.connections {
                    connection.port = server.port();
                }
                config
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    builder.build().map_err(|err| err.to_string())
}

/// The addresses of `host` (A and AAAA) at `port`, and until when they hold; None (logged)
/// when it does not resolve.
async fn resolve_name(
    resolver: &TokioResolver,
    host: &str,
    port: u16,
    trunk: &str,
) -> Option<(Vec<SocketAddr>, Instant)> {
    // A trailing dot: the name as it is, no search domain appended.
    match resolver.lookup_ip(format!("{host}.")).await {
        Ok(found) => {
            let addrs: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
            tracing::info!(trunk = %trunk, peer = %format!("{host}:{port}"), ?addrs, "peer name resolved");
            Some((addrs, found.valid_until()))
        }
        Err(err) => {
            tracing::warn!(trunk = %trunk, peer = %format!("{host}:{port}"), "peer name does not resolve ({err}): calls skip it until it does");
            None
        }
    }
}

/// Adds `addrs` (resolved from `host`) to a trunk's peers, each once.
fn add(
    peers: &mut Vec<SocketAddr>,
    names: &mut Vec<(SocketAddr, String)>,
    addrs: Vec<SocketAddr>,
    host: &str,
) {
    for addr in addrs {
        if !peers.contains(&addr) {
            peers.push(addr);
            names.push((addr, host.to_string()));
        }
    }
}

/// Resolves the names among the profile's trunk peers into their `peers`; returns when to
/// resolve again (None when no peer is named).
pub async fn resolve_peers(profile: &mut Profile) -> Option<Duration> {
    if !has_names(profile) {
        return None;
    }
    let resolver = match resolver(profile) {
        Ok(resolver) => resolver,
        Err(err) => {
            tracing::error!("trunk peers by name not resolved: {err}");
            return Some(MIN_REFRESH);
        }
    };
    let now = Instant::now();
    let mut refresh = MAX_REFRESH;
    for trunk in &mut profile.trunks {
        if !trunk
            .peer_specs
            .iter()
            .any(|spec| !matches!(spec, PeerSpec::Address(_)))
        {
            continue;
        }
        let mut peers = Vec::new();
        let mut names = Vec::new();
        for spec in &trunk.peer_specs {
            match spec {
                PeerSpec::Address(addr) => peers.push(*addr),
                PeerSpec::Name { host, port } => {
                    match resolve_name(&resolver, host, *port, &trunk.name).await {
                        Some((addrs, until)) => {
                            refresh = refresh.min(until.saturating_duration_since(now));
                            add(&mut peers, &mut names, addrs, host);
                        }
                        None => refresh = MIN_REFRESH,
                    }
                }
                PeerSpec::Srv { name } => match resolver.srv_lookup(format!("{name}.")).await {
                    Ok(found) => {
                        refresh = refresh.min(found.valid_until().saturating_duration_since(now));
                        let mut targets: Vec<(u16, u16, u16, String)> = found
                            .answers()
                            .iter()
                            .filter_map(|record| match &record.data {
                                RData::SRV(srv) => Some((
                                    srv.priority,
                                    srv.weight,
                                    srv.port,
                                    srv.target.to_utf8().trim_end_matches('.').to_string(),
                                )),
                                _ => None,
                            })
                            .collect();
                        // Lowest priority first; within one, the heavier first (a fixed
                        // order: the failover order stays the same from call to call).
                        targets.sort_by_key(|t| (t.0, std::cmp::Reverse(t.1)));
                        tracing::info!(trunk = %trunk.name, srv = %name, targets = targets.len(), "SRV resolved");
                        // The SIP domain (`example.com` of `_sips._tcp.example.com`) names its
                        // targets: the Request-URI host and the name their TLS certificates must
                        // carry (RFC 5922 §4.1; a target's own name comes from an answer that
                        // could be spoofed).
                        let domain = name.splitn(3, '.').nth(2).unwrap_or(name);
                        for (_, _, port, target) in targets {
                            match resolve_name(&resolver, &target, port, &trunk.name).await {
                                Some((addrs, until)) => {
                                    refresh = refresh.min(until.saturating_duration_since(now));
                                    add(&mut peers, &mut names, addrs, domain);
                                }
                                None => refresh = MIN_REFRESH,
                            }
                        }
                    }
                    Err(err) => {
                        refresh = MIN_REFRESH;
                        tracing::warn!(trunk = %trunk.name, srv = %name, "SRV name does not resolve ({err}): calls skip it until it does");
                    }
                },
            }
        }
        trunk.peers = peers;
        trunk.peer_names = names;
    }
    Some(refresh.clamp(MIN_REFRESH, MAX_REFRESH))
}
