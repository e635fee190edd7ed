-- Bridgehead default rules: core <-> Teams.
-- Calls from the core go to Teams, calls from Teams go to the core (the profile's routes), and
-- every message sent toward Teams carries the X-MS-SBC header Microsoft requires.
local rules = {}

local X_MS_SBC = "Bridgehead/" .. bh.model .. "/" .. bh.version

function rules.on_invite(call, req)
  -- A call already anchored in Teams Phone Mobile must never loop back to Teams.
  if call.trunk.name == "core" and req:has_header("X-MS-FMC") then
    return call:reject(482, "Loop Detected")
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
