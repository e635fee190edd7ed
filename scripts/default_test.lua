-- Unit tests of the default rules: `bridgehead test scripts`.
local rules = require("default")
local tests = {}

local INVITE = [[
INVITE sip:+4930987654@sbc.example.com SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK1
From: <sip:+4930123456@operator.example>;tag=1
To: <sip:+4930987654@teams.example>
Call-ID: t1
CSeq: 1 INVITE
]]

function tests.test_messages_toward_teams_carry_x_ms_sbc()
  local req = t.request(INVITE, { trunk = "teams" })
  rules.on_request(t.call({ trunk = "core" }), req)
  t.eq(req:header("X-MS-SBC"), "Bridgehead/SBC/" .. bh.version)
end

function tests.test_messages_toward_the_core_do_not()
  local resp = t.response("SIP/2.0 200 OK\nCall-ID: t1\nCSeq: 1 INVITE\n", { trunk = "core" })
  rules.on_response(t.call({ trunk = "teams" }), resp)
  t.eq(resp:header("X-MS-SBC"), nil)
end

function tests.test_an_anchoring_call_from_the_core_takes_the_route_to_teams()
  local call = t.call({ trunk = "core" })
  rules.on_invite(call, t.request(INVITE .. "X-MS-FMC: APP=3;MID=+4930123456\n"))
  t.eq(t.decision(call), nil)
end

function tests.test_a_call_anchored_in_teams_never_goes_back_to_teams()
  local call = t.call({ trunk = "teams" })
  rules.on_invite(call, t.request(INVITE .. "X-MS-FMC: MT\n"))
  t.eq(t.decision(call).route, "core")
end

function tests.test_other_calls_take_the_trunk_route()
  local call = t.call({ trunk = "core" })
  rules.on_invite(call, t.request(INVITE))
  t.eq(t.decision(call), nil)
end

return tests
