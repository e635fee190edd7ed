//! `/metrics`: what the shards told (their counters, summed) and what is process-wide, encoded
//! by prometheus-client as OpenMetrics text. Each scrape builds its registry from the answers
//! of that moment: nothing is counted twice and nothing on a shard's path is shared.

use super::calls::{Histogram, TrunkQuality};
use super::Observed;
use crate::engine::ShardSnapshot;
use crate::script::LATENCY_BUCKETS_US;
use crate::transport::tls::HandshakeFailure;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The OpenMetrics text of a scrape: the shards' `snapshots` and the process-wide counters.
pub fn encode(observed: &Observed, snapshots: Vec<ShardSnapshot>) -> Result<String, Error> {
    let mut registry = Registry::with_prefix("bridgehead");
    registry.register_collector(Box::new(Scrape {
        snapshots,
        rules: observed.rules.clone(),
        relay: observed.relay.clone(),
        cluster: observed.cluster.clone(),
        transport: observed.hub.clone(),
        calls: observed.calls.clone(),
        health: observed.health.clone(),
        uptime_s: observed.started.elapsed().as_secs_f64(),
    }));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// One scrape's data.
struct Scrape {
    snapshots: Vec<ShardSnapshot>,
    rules: Arc<crate::script::RuleMetrics>,
    relay: Option<Arc<crate::media::relay::RelayStats>>,
    cluster: Option<Arc<crate::cluster::ClusterStats>>,
    transport: Arc<crate::transport::Hub>,
    calls: Arc<super::calls::CallLog>,
    health: Arc<crate::shared::PeerHealth>,
    uptime_s: f64,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// A counter (the `_total` suffix is the encoder's).
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A counter with one series per label set.
fn counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    series: &[(L, u64)],
) -> Result<(), Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// A gauge with one series per label set.
fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    series: &[(L, i64)],
) -> Result<(), Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Scrape {
    /// A shard counter, summed over the shards.
    fn sum(&self, field: impl Fn(&ShardSnapshot) -> u64) -> u64 {
        self.snapshots.iter().map(field).sum()
    }

    fn calls(&self, encoder: &mut DescriptorEncoder) -> Result<(), Error> {
        let stats = |name: &str, help: &str, field: fn(&ShardSnapshot) -> u64| {
            (name.to_string(), help.to_string(), self.sum(field))
        };
        for (name, help, value) in [
            stats(
                "calls_started",
                "Calls started (a B-leg INVITE went or was about to)",
                |s| s.stats.calls_started,
            ),
            stats(
                "calls_answered",
                "Calls answered (2xx to the caller)",
                |s| s.stats.calls_answered,
            ),
            stats(
                "calls_failed",
                "Calls that ended without an answer (a final error to the caller)",
                |s| s.stats.calls_failed,
            ),
            stats(
                "malformed",
                "Malformed messages (requests answered 4xx, responses dropped)",
                |s| s.stats.malformed,
            ),
            stats(
                "script_errors",
                "Rule errors, budget and memory hits",
                |s| s.stats.script_errors,
            ),
            stats("media_failures", "SDPs that could not be anchored", |s| {
                s.stats.media_failures
            }),
            stats(
                "transport_errors",
                "Messages the transport could not send",
                |s| s.stats.transport_errors,
            ),
            stats(
                "switched_to_tcp",
                "Requests sent over TCP instead of UDP for their size",
                |s| s.stats.switched_to_tcp,
            ),
            stats(
                "limit_refused",
                "New calls refused for a trunk's max_calls or max_cps",
                |s| s.stats.limit_refused,
            ),
            stats("drain_refused", "New calls refused while draining", |s| {
                s.stats.drain_refused
            }),
            stats("drain_ended", "Calls ended at the drain's timeout", |s| {
                s.stats.drain_ended
            }),
            stats(
                "overload_refused",
                "New calls refused for overload (503)",
                |s| s.overload_refused,
            ),
            stats("bans", "Sources banned by admission", |s| s.admission.bans),
            stats("rtp_timeouts", "Calls hung up because no RTP came", |s| {
                s.stats.rtp_timeouts
            }),
        ] {
            counter(encoder, &name, &help, value)?;
        }
        counters(
            encoder,
            ("messages", "SIP messages in and out"),
            &[
                ([("direction", "in")], self.sum(|s| s.stats.messages_in)),
                ([("direction", "out")], self.sum(|s| s.stats.messages_out)),
            ],
        )?;
        let mut kinds = crate::shared::MessageCounts::default();
        for snapshot in &self.snapshots {
            kinds.add(&snapshot.stats.messages);
        }
        let mut by_kind = Vec::new();
        for (direction, transports) in ["in", "out"].into_iter().zip(kinds.0) {
            for (transport, counts) in crate::shared::MESSAGE_TRANSPORTS.iter().zip(transports) {
                for (kind, value) in crate::shared::MESSAGE_KINDS.iter().zip(counts) {
                    if value > 0 {
                        let transport = transport.as_via_token().to_ascii_lowercase();
                        by_kind.push((
                            [
                                ("direction", direction.to_string()),
                                ("transport", transport),
                                ("kind", kind.to_string()),
                            ],
                            value,
                        ));
                    }
                }
            }
        }
        counters(
            encoder,
            (
                "sip_messages",
                "SIP messages by direction, transport and kind (requests by method, responses by class)",
            ),
            &by_kind,
        )?;
        counters(
            encoder,
            (
                "admission_refused",
                "Requests admission dropped or refused, by why",
            ),
            &[
                ([("why", "rate")], self.sum(|s| s.admission.rate_dropped)),
                (
                    [("why", "call_rate")],
                    self.sum(|s| s.admission.calls_refused),
                ),
                (
                    [("why", "scanner")],
                    self.sum(|s| s.admission.scanners_dropped),
                ),
                ([("why", "oversized")], self.sum(|s| s.admission.oversized)),
                (
                    [("why", "banned")],
                    self.sum(|s| s.admission.banned_dropped),
                ),
            ],
        )?;
        let setup = self
            .snapshots
            .iter()
            .map(|s| s.calls.calls - s.calls.answered)
            .sum();
        let answered = self.snapshots.iter().map(|s| s.calls.answered).sum();
        gauges(
            encoder,
            (
                "calls_active",
                "Calls in progress, by whether they are answered",
            ),
            &[
                ([("state", "setup")], count(setup)),
                ([("state", "answered")], count(answered)),
            ],
        )?;
        let mut versions: Vec<(u64, usize)> = Vec::new();
        for (version, calls) in self.snapshots.iter().flat_map(|s| s.calls.versions.iter()) {
            match versions.iter_mut().find(|(v, _)| v == version) {
                Some((_, count)) => *count += calls,
                None => versions.push((*version, *calls)),
            }
        }
        versions.sort_unstable();
        let by_version: Vec<_> = versions
            .iter()
            .map(|(version, calls)| ([("version", version.to_string())], count(*calls)))
            .collect();
        gauges(
            encoder,
            ("calls_by_version", "Calls in progress by rule-set version"),
            &by_version,
        )?;
        gauge(
            encoder,
            "media_ports_in_use",
            "Media ports held by calls (RTP and RTCP)",
            count(self.snapshots.iter().map(|s| s.calls.ports_in_use).sum()),
        )
    }

    fn rules(&self, encoder: &mut DescriptorEncoder) -> Result<(), Error> {
        let hooks = self.rules.hooks();
        let series = |field: fn(&crate::script::HookCounters) -> &AtomicU64| {
            hooks
                .iter()
                .map(|(script, hook, counters)| {
                    (
                        [
                            ("script", script.display().to_string()),
                            ("hook", hook.name().to_string()),
                        ],
                        load(field(counters)),
                    )
                })
                .collect::<Vec<_>>()
        };
        counters(
            encoder,
            ("rule_hook_calls", "Hook calls by script and hook"),
            &series(|c| &c.calls),
        )?;
        counters(
            encoder,
            ("rule_hook_errors", "Hook calls that raised an error"),
            &series(|c| &c.errors),
        )?;
        counters(
            encoder,
            (
                "rule_hook_budget_hits",
                "Hook calls stopped by the instruction budget",
            ),
            &series(|c| &c.budget_hits),
        )?;
        counters(
            encoder,
            (
                "rule_hook_memory_hits",
                "Hook calls stopped by the memory limit",
            ),
            &series(|c| &c.memory_hits),
        )?;
        let mut latency = encoder.encode_descriptor(
            "rule_hook_seconds",
            "How long hook calls took",
            None,
            MetricType::Histogram,
        )?;
        for (script, hook, counters) in &hooks {
            let labels = [
                ("script", script.display().to_string()),
                ("hook", hook.name().to_string()),
            ];
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_US
                .iter()
                .map(|us| *us as f64 / 1e6)
                .chain([f64::MAX])
                .zip(counters.buckets.iter().map(load))
                .collect();
            latency
                .encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    load(&counters.total_ns) as f64 / 1e9,
                    load(&counters.calls),
                    &buckets,
                    None,
                )?;
        }
        let user: Vec<_> = self
            .rules
            .user_counters()
            .into_iter()
            .map(|(name, labels, value)| {
                let mut set = vec![("counter".to_string(), name)];
                set.extend(labels);
                (set, value)
            })
            .collect();
        counters(
            encoder,
            ("rule_counter", "Counters rules keep (bh.metric.inc)"),
            &user,
        )?;
        counter(
            encoder,
            "reloads",
            "Reloads that became current",
            load(&self.rules.reloads),
        )?;
        counter(
            encoder,
            "reload_failures",
            "Reloads refused",
            load(&self.rules.reload_failures),
        )?;
        gauge(
            encoder,
            "rules_version",
            "The rule-set version new calls take",
            i64::try_from(load(&self.rules.version)).unwrap_or(i64::MAX),
        )?;
        let mut lookups = Vec::new();
        for (name, state) in self.rules.lookups() {
            for (outcome, value) in [
                ("hit", &state.hits),
                ("miss", &state.misses),
                ("cache_hit", &state.cache_hits),
                ("error", &state.errors),
                ("timeout", &state.timeouts),
            ] {
                lookups.push((
                    [("lookup", name.clone()), ("outcome", outcome.to_string())],
                    load(value),
                ));
            }
        }
        counters(encoder, ("lookups", "Lookups by outcome"), &lookups)
    }

    fn process(&self, encoder: &mut DescriptorEncoder) -> Result<(), Error> {
        let transport = &self.transport.stats;
        for (name, help, value) in [
            (
                "connections_refused_unknown",
                "Connections closed at accept: no trunk's peer",
                &transport.refused_unknown,
            ),
            (
                "connections_refused_over_limit",
                "Connections closed at accept: too many from the source",
                &transport.refused_over_limit,
            ),
            (
                "connections_closed_idle",
                "Connections closed after idle_timeout",
                &transport.closed_idle,
            ),
            (
                "connections_dead",
                "Connections closed for a CRLF ping without pong",
                &transport.dead_connections,
            ),
            (
                "tls_handshakes",
                "TLS handshakes completed",
                &transport.tls_handshakes,
            ),
            (
                "queue_dropped",
                "New requests dropped on the way to a full shard queue",
                &transport.queue_dropped,
            ),
        ] {
            counter(encoder, name, help, load(value))?;
        }
        let failures: Vec<_> = HandshakeFailure::ALL
            .iter()
            .map(|why| {
                (
                    [("why", why.name())],
                    load(&transport.tls_failures[why.index()]),
                )
            })
            .collect();
        counters(
            encoder,
            ("tls_failures", "TLS handshakes failed, by why"),
            &failures,
        )?;
        if let Some(relay) = &self.relay {
            for (name, help, value) in [
                (
                    "media_packets",
                    "RTP and RTCP packets relayed",
                    &relay.packets,
                ),
                ("media_bytes", "RTP and RTCP bytes relayed", &relay.bytes),
                (
                    "media_dropped",
                    "Packets from a source a stream does not accept",
                    &relay.dropped,
                ),
                (
                    "media_srtp_failures",
                    "SRTP/SRTCP packets failing authentication or replay",
                    &relay.srtp_failures,
                ),
                (
                    "media_bind_failures",
                    "Streams that could not bind their ports",
                    &relay.bind_failures,
                ),
            ] {
                counter(encoder, name, help, load(value))?;
            }
            gauge(
                encoder,
                "media_streams",
                "Media streams running",
                i64::try_from(load(&relay.streams)).unwrap_or(i64::MAX),
            )?;
            if let Some((driver, threads)) = relay.driver.get() {
                gauges(
                    encoder,
                    (
                        "media_relay_threads",
                        "The relay's threads, by driver (io_uring; 0 for tokio: the runtime's)",
                    ),
                    &[([("driver", *driver)], *threads as i64)],
                )?;
            }
        }
        if let Some(cluster) = &self.cluster {
            for (name, help, value) in [
                (
                    "cluster_redis_errors",
                    "Redis commands or connections that failed",
                    &cluster.redis_errors,
                ),
                (
                    "cluster_redis_outages",
                    "Times Redis went from reachable to unreachable",
                    &cluster.outages,
                ),
                (
                    "cluster_state_writes",
                    "Call states written to (or removed from) Redis",
                    &cluster.writes,
                ),
                (
                    "cluster_state_dropped",
                    "Call states the shards could not queue for Redis",
                    &cluster.dropped,
                ),
                (
                    "cluster_takeovers",
                    "Dead instances whose calls this one took over",
                    &cluster.takeovers,
                ),
                (
                    "cluster_calls_taken_over",
                    "Calls of dead instances handed to the shards to carry on",
                    &cluster.taken_over,
                ),
            ] {
                counter(encoder, name, help, load(value))?;
            }
            for (name, help, value) in [
                (
                    "cluster_redis_up",
                    "1 while Redis answers",
                    &cluster.redis_up,
                ),
                (
                    "cluster_calls",
                    "Calls whose state this instance keeps in Redis",
                    &cluster.calls,
                ),
            ] {
                gauge(encoder, name, help, load(value) as i64)?;
            }
        }
        let peers = self.health.snapshot();
        let up: Vec<_> = peers
            .iter()
            .map(|(trunk, peer, state)| {
                (
                    [("trunk", trunk.clone()), ("peer", peer.to_string())],
                    i64::from(!state.down),
                )
            })
            .collect();
        gauges(
            encoder,
            (
                "peer_up",
                "Whether the OPTIONS keepalives find a trunk's peer up",
            ),
            &up,
        )?;
        let changes: Vec<_> = peers
            .iter()
            .map(|(trunk, peer, state)| {
                (
                    [("trunk", trunk.clone()), ("peer", peer.to_string())],
                    state.changes,
                )
            })
            .collect();
        counters(
            encoder,
            ("peer_changes", "Times a peer went down or up"),
            &changes,
        )?;
        let round_trips: Vec<_> = peers
            .iter()
            .filter_map(|(trunk, peer, state)| {
                let labels = [("trunk", trunk.clone()), ("peer", peer.to_string())];
                Some((labels, state.round_trip?.as_secs_f64()))
            })
            .collect();
        let mut family = encoder.encode_descriptor(
            "peer_options_rtt_seconds",
            "Round-trip time of the last answered OPTIONS keepalive",
            None,
            MetricType::Gauge,
        )?;
        for (labels, seconds) in &round_trips {
            ConstGauge::new(*seconds).encode(family.encode_family(labels)?)?;
        }
        if let Some(capture) = &self.transport.capture {
            let stats = &capture.stats;
            counters(
                encoder,
                (
                    "capture_messages",
                    "SIP messages captured, and dropped on a full queue",
                ),
                &[
                    ([("outcome", "captured")], load(&stats.captured)),
                    ([("outcome", "dropped")], load(&stats.dropped)),
                ],
            )?;
            counters(
                encoder,
                (
                    "hep_packets",
                    "HEP packets sent to the collector, and failed sends",
                ),
                &[
                    ([("outcome", "sent")], load(&stats.hep_sent)),
                    ([("outcome", "failed")], load(&stats.hep_failed)),
                ],
            )?;
        }
        let uptime = prometheus_client::metrics::gauge::ConstGauge::new(self.uptime_s);
        uptime.encode(encoder.encode_descriptor(
            "uptime_seconds",
            "Seconds since the process started",
            None,
            uptime.metric_type(),
        )?)
    }
}

impl Scrape {
    /// Ended calls by caller's trunk (`trunk`) and callee's (`to`).
    fn trunks(&self, encoder: &mut DescriptorEncoder) -> Result<(), Error> {
        let trunks = self.calls.trunks();
        let labels = |(from, to): &(String, String)| [("trunk", from.clone()), ("to", to.clone())];
        let by_status: Vec<_> = trunks
            .iter()
            .flat_map(|(pair, calls)| {
                calls.by_status.iter().map(move |(status, count)| {
                    let [trunk, to] = labels(pair);
                    ([trunk, to, ("status", status.to_string())], *count)
                })
            })
            .collect();
        counters(
            encoder,
            (
                "trunk_calls",
                "Ended calls by trunks and the final status the caller got (0: none)",
            ),
            &by_status,
        )?;
        let short: Vec<_> = trunks
            .iter()
            .map(|(pair, c)| (labels(pair), c.short))
            .collect();
        counters(
            encoder,
            (
                "trunk_short_calls",
                "Answered calls shorter than short_call_seconds",
            ),
            &short,
        )?;
        let mut talk = encoder.encode_descriptor(
            "trunk_talk_seconds",
            "Seconds talked in ended calls",
            None,
            MetricType::Counter,
        )?;
        for (pair, calls) in &trunks {
            ConstCounter::new(calls.talk_s).encode(talk.encode_family(&labels(pair))?)?;
        }
        let mut setup = encoder.encode_descriptor(
            "trunk_setup_seconds",
            "Seconds from the caller's INVITE to the answer",
            None,
            MetricType::Histogram,
        )?;
        for (pair, calls) in &trunks {
            histogram(setup.encode_family(&labels(pair))?, &calls.setup)?;
        }
        let quality = self.calls.quality();
        for (name, help, field) in [
            (
                "trunk_media_mos",
                "Estimated MOS of each leg's last RTCP report, by the leg's trunk",
                (|q: &TrunkQuality| &q.mos) as fn(&TrunkQuality) -> &Histogram,
            ),
            (
                "trunk_media_jitter_seconds",
                "Jitter of each leg's last RTCP report, by the leg's trunk",
                |q: &TrunkQuality| &q.jitter_s,
            ),
            (
                "trunk_media_loss_ratio",
                "Packet loss of each leg's last RTCP report, by the leg's trunk",
                |q: &TrunkQuality| &q.loss,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (trunk, legs) in &quality {
                histogram(
                    family.encode_family(&[("trunk", trunk.as_str())])?,
                    field(legs),
                )?;
            }
        }
        Ok(())
    }
}

/// One histogram of a family.
fn histogram(mut encoder: MetricEncoder<'_>, values: &Histogram) -> Result<(), Error> {
    encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        values.sum,
        values.count(),
        &values.buckets(),
        None,
    )
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), Error> {
        self.calls(&mut encoder)?;
        self.trunks(&mut encoder)?;
        self.rules(&mut encoder)?;
        self.process(&mut encoder)
    }
}
