-- Kamailio KEMI rules for bench/compare-cps.sh: the per-call header work of Bridgehead's
-- scripts/default.lua, done by a stateful proxy.
--
--   * an INVITE carrying X-MS-FMC is checked for (from Teams it goes to the core, as every
--     call from Teams does; until 2026-12-01 one from the core was refused with 482);
--   * every message sent toward Teams carries X-MS-SBC (set: old lines removed, one appended);
--   * calls from the core go to the Teams peer, calls from Teams go to the core peer.
--
-- The trunks are the two listen sockets: core (BENCH_CORE_PORT) and teams (BENCH_TEAMS_PORT).
-- With BENCH_RTPENGINE=1, media is anchored: rtpengine_manage() on every request and on every
-- reply with a body (offer on the INVITE, answer on the 200, delete on the BYE).
-- With HEAVY=1, bench/kamailio/heavy.lua is loaded beside this script and defines
-- heavy_invite(), which this script runs on the initial INVITE from the core.

local CORE_PORT = tonumber(os.getenv("BENCH_CORE_PORT"))
local TEAMS_PORT = tonumber(os.getenv("BENCH_TEAMS_PORT"))
local CORE_SOCKET = "udp:127.0.0.1:" .. CORE_PORT
local TEAMS_SOCKET = "udp:127.0.0.1:" .. TEAMS_PORT
local CORE_PEER = "sip:" .. os.getenv("BENCH_CORE_PEER")
local TEAMS_PEER = "sip:" .. os.getenv("BENCH_TEAMS_PEER")
local RTPENGINE = os.getenv("BENCH_RTPENGINE") == "1"
local X_MS_SBC = "X-MS-SBC: Kamailio/proxy/5.6\r\n"

local function tag_toward_teams()
  KSR.textops.remove_hf("X-MS-SBC")
  KSR.hdr.append(X_MS_SBC)
end

-- Relays the request to the other trunk: out of the other socket, to that trunk's peer.
local function relay(from_teams, offer_flags)
  if from_teams then
    KSR.setdsturi(CORE_PEER)
    KSR.pv.sets("$fs", CORE_SOCKET)
    KSR.tm.t_on_reply("ksr_reply_toward_teams")
  else
    KSR.setdsturi(TEAMS_PEER)
    KSR.pv.sets("$fs", TEAMS_SOCKET)
    tag_toward_teams()
    if RTPENGINE then KSR.tm.t_on_reply("ksr_reply_rtp") end
  end
  if RTPENGINE then KSR.rtpengine.rtpengine_manage(offer_flags or "") end
  if KSR.tm.t_relay() < 0 then KSR.sl.sl_reply_error() end
end

function ksr_request_route()
  if KSR.maxfwd.process_maxfwd(10) < 0 then
    KSR.sl.sl_send_reply(483, "Too Many Hops")
    return
  end
  local from_teams = KSR.pv.get("$Rp") == TEAMS_PORT
  local method = KSR.pv.get("$rm")
  if KSR.siputils.has_totag() > 0 then
    -- In dialog. SIPp sends its ACK/BYE straight to us without Route headers, so loose_route()
    -- finds nothing to do and the request is relayed like the initial one, to the other trunk.
    KSR.rr.loose_route()
  else
    if method == "INVITE" then
      -- X-MS-FMC: a call from Teams (already anchored there) goes to the core like every
      -- call from Teams; one from the core goes to Teams. Checked as scripts/default.lua does.
      if from_teams and KSR.textops.is_present_hf("X-MS-FMC") > 0 then
        KSR.log("dbg", "X-MS-FMC from Teams: to the core\n")
      end
      KSR.rr.record_route()
      if not from_teams and heavy_invite then
        relay(from_teams, heavy_invite())
        return
      end
    end
  end
  relay(from_teams)
end

-- Replies on calls from Teams travel toward Teams: they carry X-MS-SBC too.
function ksr_reply_toward_teams()
  tag_toward_teams()
  if RTPENGINE and KSR.textops.has_body() > 0 then KSR.rtpengine.rtpengine_manage("") end
end

-- Replies on calls from the core, with rtpengine: the SDP answer goes through it.
function ksr_reply_rtp()
  if KSR.textops.has_body() > 0 then KSR.rtpengine.rtpengine_manage("") end
end
