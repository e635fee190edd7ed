-- Bridgehead default rules: core <-> Teams.
-- Calls from the core go to Teams, calls from Teams go to the core (the profile's routes), and
-- every message sent toward Teams carries the X-MS-SBC header Microsoft requires.
local rules = {}

local X_MS_SBC = "Bridgehead/" .. bh.model .. "/" .. bh.version

function rules.on_invite(call, req)
  -- X-MS-FMC (Teams Phone Mobile): from the core it is an application server anchoring the
  -- call in Teams, and the call goes to Teams like any other. From Teams the call is already
  -- anchored there, and Microsoft says it must never be routed to Teams again: it goes to the
  -- core, the header intact.
  if call.trunk.name == "teams" and req:has_header("X-MS-FMC") then
    return call:route("core")
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
