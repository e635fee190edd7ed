//! Replay scenarios: the YAML model, reading it with line numbers for errors, and writing it
//! back (record mode).

use super::ReplayError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A scenario file.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What the scenario shows (defaults to the file name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The profile, relative to the scenario (default: `profile.yaml` beside it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<PathBuf>,
    /// Variables for `${name}` (`${version}` is Bridgehead's version).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
    /// Lookups answered from these entries instead of the profile's (`bh.lookup` stubbed):
    /// lookup name → key → value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lookups: BTreeMap<String, BTreeMap<String, String>>,
    /// How the stand-in consultation service of each HTTP lookup answers (default: at once,
    /// from the lookup's entries).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lookup_service: BTreeMap<String, ServiceStub>,
    pub steps: Vec<Step>,
}

/// The replay harness's stand-in for an HTTP lookup's service: it answers each request from
/// the lookup's entries (`200` with the value, `404` without one).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceStub {
    /// Virtual time before it answers (`50ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<String>,
    /// It never answers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hang: bool,
    /// It answers every request with this status instead (a failure unless 200 or 404).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// One step: an action, then what Bridgehead must send in response.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// A message arrives at Bridgehead from a trunk's peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<Send>,
    /// A response arrives to a request Bridgehead sent (saved with `save:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
    /// Virtual time passes (`500ms`, `2s`, `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<String>,
    /// A media event for a call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaStep>,
    /// A new rule-set version becomes current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadStep>,
    /// RTP packets from a leg's far end reach Bridgehead, one per `interval` of virtual time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtp: Option<RtpStep>,
    /// What Bridgehead sends after the action, in order, and nothing else; `any` skips the
    /// check. No `expect` means nothing may be sent.
    #[serde(default, skip_serializing_if = "Expectations::is_none")]
    pub expect: Expectations,
    /// What the media plane sends during the step (RTP, per leg and payload type), and
    /// nothing else; without it, media is not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_out: Option<Vec<MediaExpect>>,
}

/// The expectations of a step.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Expectations {
    /// Nothing may be sent.
    #[default]
    None,
    /// `expect: any`: anything may be sent.
    Any(AnyKeyword),
    /// Exactly these messages, in order.
    List(Vec<Expect>),
}

impl Expectations {
    fn is_none(&self) -> bool {
        matches!(self, Expectations::None)
    }
}

/// The keyword `any`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AnyKeyword {
    Any,
}

/// A message arriving at Bridgehead.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Send {
    /// The trunk it comes from (its first peer is the source unless `peer` says otherwise).
    pub from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The SIP text (line ends and Content-Length are fixed up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip: Option<String>,
    /// Or a file holding it, relative to the scenario.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// A response from the peer a saved request was sent to.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    /// The saved request it answers.
    pub to: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The To-tag (default `replay`; none on 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// An SDP body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp: Option<String>,
}

/// A media event (`on_media`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MediaStep {
    /// `dtmf`, `rtp_timeout` or `quality`.
    pub kind: String,
    /// The A-leg Call-ID (default: the last call started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    /// `a` or `b` (default `a`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digit: Option<String>,
    /// How a digit came: `rfc4733` (default) or `inband`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
}

/// RTP packets a leg's far end sends to Bridgehead: G.711 audio (silence, tones or DTMF
/// tones) or RFC 4733 events, from the address the leg's SDP gives, on the call's first
/// stream. Sequence numbers and timestamps go on from the leg's previous `rtp` step.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RtpStep {
    /// `a` or `b` (default `a`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leg: Option<String>,
    /// The A-leg Call-ID (default: the last call started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    /// The payload type (default: the first G.711 type of the leg's SDP, or its
    /// telephone-event type for `event`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pt: Option<u8>,
    /// Packets of silence or `tone` (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Milliseconds between packets, and of audio in each (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u32>,
    /// Audio of these frequencies (Hz) instead of silence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tone: Option<Vec<f32>>,
    /// DTMF digits as G.711 tones, each `duration` ms then as much silence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtmf: Option<String>,
    /// How long each `dtmf` digit sounds, in ms (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u32>,
    /// One RFC 4733 telephone-event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<RtpEvent>,
    /// The SSRC (default: one per leg).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssrc: Option<u32>,
    /// SRTP, encrypted with the key of the leg's own SDP (its a=crypto).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub srtp: bool,
    /// Or the RTP packets of a capture (relative to the scenario), as they were captured, at
    /// the captured spacing (`interval` after the last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcap: Option<PathBuf>,
    /// With `pcap`: the sender (`IP:port`) whose packets are fed, when the capture has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// An RFC 4733 event: a packet per interval while it lasts, the last one (its end) three
/// times.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RtpEvent {
    pub digit: String,
    /// In ms (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u32>,
}

/// What the media plane sent toward one leg during a step, on one payload type (or on all).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MediaExpect {
    /// `a` or `b`.
    pub to: String,
    /// The payload type (default: every RTP packet toward the leg).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pt: Option<u8>,
    /// How many packets, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<usize>,
    /// Milliseconds between one packet and the next, every time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    /// The DTMF digits the packets carry, in order: tones heard in G.711 audio, or RFC 4733
    /// events; `""` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digits: Option<String>,
    /// Every packet's payload is, byte for byte, one an `rtp` step of this step fed in (it
    /// came through unchanged, decrypted when it was SRTP).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relayed: bool,
}

/// A reload: the profile (default: the scenario's) is compiled again as a new version.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadStep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<PathBuf>,
    /// The new version must be refused (the running one stays).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fails: bool,
}

/// One message Bridgehead must send.
/// What a header of an expected message must be.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum HeaderExpect {
    /// Its first line equals this.
    First(String),
    /// Its lines are exactly these, in order (a header sent on several lines, such as two
    /// P-Asserted-Identity).
    Every(Vec<String>),
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The trunk it goes to.
    pub to: String,
    /// A request with this method...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// ...or a response with this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<u16>,
    /// The peer address, when the trunk has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The Request-URI, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Headers whose first value must equal a text, or whose every line must equal a list,
    /// in order.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderExpect>,
    /// Headers whose (first) value must match this regex.
    #[serde(default, rename = "match", skip_serializing_if = "BTreeMap::is_empty")]
    pub matches: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub present: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<String>,
    /// A regex the body must match (e.g. `Signal=#` in a SIP INFO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Checks of the SDP body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp: Option<SdpExpect>,
    /// Keep the message under this name (`${name.Call-ID}`, `reply: {to: name}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save: Option<String>,
    /// Variables from this message: name → `Header` or `Header;param` (e.g. `To;tag`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capture: BTreeMap<String, String>,
}

/// Checks of an SDP body (first audio section unless `media` says otherwise).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SdpExpect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<String>,
    /// Codec names in m= order, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codecs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// The connection address (c=).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// The media port (m=).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Attributes present (media or session level): a name, or `name:value` for one with
    /// that value (`curr:qos local sendrecv`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent_attributes: Vec<String>,
    /// At least one a=crypto (true) or none (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crypto: Option<bool>,
}

/// A scenario as read: the model, its file, and the line of each step.
pub struct Loaded {
    pub path: PathBuf,
    pub scenario: Scenario,
    pub step_lines: Vec<usize>,
}

/// Reads a scenario; errors are `file:line: message`.
pub fn load(path: &Path) -> Result<Loaded, ReplayError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReplayError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Reads a scenario's text, as the file at `path` holds it; errors are `file:line: message`.
pub fn parse(path: &Path, text: &str) -> Result<Loaded, ReplayError> {
    let scenario: Scenario = serde_yaml::from_str(text).map_err(|err| {
        let line = err.location().map_or(0, |l| l.line());
        let message = err.to_string();
        let message = message.split(" at line ").next().unwrap_or(&message);
        ReplayError::Scenario {
            path: path.to_path_buf(),
            line,
            message: message.to_string(),
        }
    })?;
    let step_lines = step_lines(text);
    for (index, step) in scenario.steps.iter().enumerate() {
        let actions = [
            step.send.is_some(),
            step.reply.is_some(),
            step.wait.is_some(),
            step.media.is_some(),
            step.reload.is_some(),
            step.rtp.is_some(),
        ]
        .iter()
        .filter(|a| **a)
        .count();
        if actions != 1 {
            return Err(ReplayError::Scenario {
                path: path.to_path_buf(),
                line: step_lines.get(index).copied().unwrap_or(0),
                message: format!(
                    "step {} must have exactly one of send, reply, wait, media, rtp, reload",
                    index + 1
                ),
            });
        }
    }
    Ok(Loaded {
        path: path.to_path_buf(),
        scenario,
        step_lines,
    })
}

/// The line (1-based) where each item of the top-level `steps:` list starts.
fn step_lines(text: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    let mut in_steps = false;
    let mut indent = None;
    for (index, line) in text.lines().enumerate() {
        if line.starts_with("steps:") {
            in_steps = true;
            continue;
        }
        if !in_steps || line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let spaces = line.len() - line.trim_start().len();
        if spaces == 0 && !line.starts_with('-') {
            in_steps = false;
            continue;
        }
        if line.trim_start().starts_with("- ") || line.trim() == "-" {
            let item_indent = *indent.get_or_insert(spaces);
            if spaces == item_indent {
                lines.push(index + 1);
            }
        }
    }
    lines
}

/// Writes a scenario back (record mode). Comments are not kept.
pub fn save(path: &Path, scenario: &Scenario) -> Result<(), ReplayError> {
    let failed = |message: String| ReplayError::Write {
        path: path.to_path_buf(),
        message,
    };
    let text = serde_yaml::to_string(scenario).map_err(|err| failed(err.to_string()))?;
    let header =
        "# Recorded by `bridgehead replay --record`: review the expectations before committing.\n";
    std::fs::write(path, format!("{header}{text}")).map_err(|err| failed(err.to_string()))
}
