-- "Heavy rules" for bench/compare-cps.sh (HEAVY=1): scripts/default.lua plus, per call,
--   * 20 header edits on the INVITE toward the callee: 19 set_header (X-Heavy-01..19) and the
--     caller's Subject removed;
--   * a regex: a Request-URI user +49... becomes 0049... (bh.re.match, set_uri_user);
--   * an SDP codec filter: the offer toward the callee keeps PCMA and PCMU only (the caller's
--     telephone-event goes).
-- bench/kamailio/heavy.lua does the same in Kamailio (remove_hf/append, subst_user, and
-- sdp_keep_codecs_by_name, or rtpengine's codec-strip when rtpengine rewrites the SDP anyway).
local rules = {}

local X_MS_SBC = "Bridgehead/" .. bh.model .. "/" .. bh.version
local HEAVY = {}
for i = 1, 19 do
  HEAVY[i] = { ("X-Heavy-%02d"):format(i), ("value-%02d;bench=compare-cps;rule=heavy"):format(i) }
end

function rules.on_invite(call, req)
  if call.trunk.name == "core" and req:has_header("X-MS-FMC") then
    return call:reject(482, "Loop Detected")
  end
  for i = 1, #HEAVY do
    req:set_header(HEAVY[i][1], HEAVY[i][2])
  end
  req:remove_header("Subject")
  local national = bh.re.match(req:uri_user() or "", "^\\+(49[0-9]+)$")
  if national then req:set_uri_user("00" .. national) end
end

function rules.on_sdp(call, sdp, ctx)
  if ctx.kind == "offer" and ctx.leg == "b" then
    for _, m in ipairs(sdp:media("audio")) do
      pcall(m.keep_codecs, m, { "PCMA", "PCMU" })
    end
  end
end

local function tag_toward_teams(call, msg)
  if msg.trunk == "teams" then
    msg:set_header("X-MS-SBC", X_MS_SBC)
  end
end

rules.on_request = tag_toward_teams
rules.on_response = tag_toward_teams

return rules
