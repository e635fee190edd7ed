//! The two-trunk layout the sans-IO engine tests share: a core trunk and a Teams trunk on two
//! listeners, each routing to the other, peers at fixed loopback addresses (no sockets).

use bridgehead::config::Transport;
use bridgehead::Peer;

/// The softswitch's address as the core trunk's peer.
pub const CORE_PEER: &str = "127.0.0.1:5090";
/// Teams' address as the teams trunk's peer.
pub const TEAMS_PEER: &str = "127.0.0.2:5080";

/// Core and Teams trunks running `script` (plus a `backup` trunk toward 127.0.0.3:5080), with
/// extra lines for the core and Teams trunks.
pub fn profile_with_script(script: &str, core_extra: &str, teams_extra: &str) -> String {
    format!(
        "listeners:
  - name: core
    address: 127.0.0.1:5060
  - name: teams
    address: 127.0.0.1:5070
trunks:
  - name: core
    listener: core
    peers: [\"{CORE_PEER}\"]
    script: {script}
    route: teams
{core_extra}
  - name: teams
    listener: teams
    peers: [\"{TEAMS_PEER}\"]
    script: {script}
    route: core
{teams_extra}
  - name: backup
    listener: teams
    peers: [\"127.0.0.3:5080\"]
    script: {script}
"
    )
}

/// A UDP peer on `listener` (0: core, 1: teams).
pub fn udp_peer(listener: usize, addr: &str) -> Peer {
    Peer {
        listener,
        transport: Transport::Udp,
        addr: addr.parse().expect("addr"),
        conn: None,
    }
}
