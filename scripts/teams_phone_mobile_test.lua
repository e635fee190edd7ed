-- Unit tests of the Teams Phone Mobile anchoring rules: `bridgehead test scripts`.
local rules = require("teams_phone_mobile")
local tests = {}

local SUBSCRIBER = "+4915112345678"
local OTHER = "+4915199999999"

t.lookup("tpm_subscribers", { [SUBSCRIBER] = "tpm" })

local function invite(uri_user, extra)
  return t.request(
    "INVITE sip:" .. uri_user .. "@sbc.operator.example;user=phone SIP/2.0\n" ..
    "Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK1\n" ..
    "From: <sip:caller@ims.operator.example>;tag=1\n" ..
    "To: <sip:" .. uri_user .. "@ims.operator.example>\n" ..
    "Call-ID: tpm1\nCSeq: 1 INVITE\n" .. (extra or "")
  )
end

local function decide(req)
  local call = t.call({ trunk = "core" })
  rules.on_invite(call, req)
  return t.decision(call), call
end

function tests.test_the_session_case_follows_p_served_user_then_route_then_mt()
  t.eq(rules.session_case(invite(OTHER, "P-Served-User: <sip:" .. SUBSCRIBER .. "@x>;sescase=orig;regstate=reg\n")), "MO")
  t.eq(rules.session_case(invite(OTHER, "P-Served-User: <sip:" .. SUBSCRIBER .. "@x>;sescase=term\nRoute: <sip:sbc;lr;orig>\n")), "MT")
  t.eq(rules.session_case(invite(OTHER, "Route: <sip:sbc.operator.example;lr;orig>\n")), "MO")
  t.eq(rules.session_case(invite(OTHER, "Route: <sip:sbc.operator.example;lr>;orig\n")), "MO")
  t.eq(rules.session_case(invite(OTHER, "Route: <sip:sbc.operator.example;lr;term>\n")), "MT")
  t.eq(rules.session_case(invite(OTHER, "Route: <sip:sbc.operator.example;lr;original=1>\n")), "MT")
  t.eq(rules.session_case(invite(OTHER)), "MT")
end

function tests.test_the_served_user_is_p_served_user_else_pai_for_mo_else_the_request_uri()
  local req = invite(OTHER, "P-Served-User: <sip:+49-151-1234@x>;sescase=orig\nP-Asserted-Identity: <tel:+4930111>\n")
  t.eq(rules.served_user(req, "MO"), "+491511234")
  req = invite(OTHER, "P-Asserted-Identity: <sip:+4930222@ims>\nP-Asserted-Identity: <tel:+4930111>\n")
  t.eq(rules.served_user(req, "MO"), "+4930111")
  t.eq(rules.served_user(req, "MT"), OTHER)
  t.eq(rules.served_user(invite(OTHER), "MO"), nil)
end

function tests.test_a_subscribers_mt_call_is_anchored_in_teams_with_x_ms_fmc()
  local decision, call = decide(invite(SUBSCRIBER))
  t.eq(decision.route, "teams")
  t.eq(call.vars.fmc, "MT")
  local req = t.request("INVITE sip:" .. SUBSCRIBER .. "@127.0.0.1:5080 SIP/2.0\nFrom: <sip:a@b>;tag=1\nTo: <sip:c@d>\nCall-ID: x\nCSeq: 1 INVITE\n", { trunk = "teams" })
  rules.on_request(call, req)
  t.eq(req:header("X-MS-FMC"), "MT")
  t.eq(req:header("X-MS-SBC"), "Bridgehead/SBC/" .. bh.version)
end

function tests.test_a_subscribers_mo_call_is_anchored_by_its_pai()
  local decision, call = decide(invite(OTHER, "Route: <sip:sbc;lr;orig>\nP-Asserted-Identity: <tel:" .. SUBSCRIBER .. ">\n"))
  t.eq(decision.route, "teams")
  t.eq(call.vars.fmc, "MO")
end

function tests.test_a_non_subscriber_carries_on_as_a_native_call()
  local decision, call = decide(invite(OTHER))
  t.eq(decision.route, "core")
  t.eq(call.vars.fmc, nil)
  decision = decide(invite(SUBSCRIBER, "Route: <sip:sbc;lr;orig>\nP-Asserted-Identity: <tel:" .. OTHER .. ">\n"))
  t.eq(decision.route, "core")
end

function tests.test_x_ms_fmc_says_when_the_call_is_anchored_already()
  -- MO with any value, APP from a Teams client, MT on an MT call: never to Teams again.
  t.eq(decide(invite(OTHER, "Route: <sip:sbc;lr;orig>\nP-Asserted-Identity: <tel:" .. SUBSCRIBER .. ">\nX-MS-FMC: XYZ\n")).route, "core")
  t.eq(decide(invite(SUBSCRIBER, "X-MS-FMC: APP;MID=1\n")).route, "core")
  t.eq(decide(invite(SUBSCRIBER, "X-MS-FMC: MT\n")).route, "core")
  -- An MT call marked MO (a subscriber calling a subscriber) still anchors the callee.
  t.eq(decide(invite(SUBSCRIBER, "X-MS-FMC: MO\n")).route, "teams")
end

function tests.test_calls_from_teams_with_x_ms_fmc_go_to_the_core()
  local call = t.call({ trunk = "teams" })
  rules.on_invite(call, invite(SUBSCRIBER, "X-MS-FMC: MT\n"))
  t.eq(t.decision(call).route, "core")
end

return tests
