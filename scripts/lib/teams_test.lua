-- Unit tests of the Teams library: `bridgehead test scripts`.
local teams = require("teams")
local tests = {}

local function invite(extra)
  return [[
INVITE sip:+4930987654@127.0.0.1:5080 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK1
From: <sip:+4930123456@operator.example>;tag=1
To: <sip:+4930987654@teams.example>
Call-ID: t1
CSeq: 1 INVITE
]] .. (extra or "")
end

local function with_teams(opts)
  opts = opts or {}
  opts.trunks = opts.trunks or { "teams" }
  return teams.apply({}, opts)
end

function tests.test_x_ms_sbc_on_requests_and_responses_toward_teams_only()
  local rules = with_teams({ sbc = "Operator/SBC/1" })
  local req = t.request(invite(), { trunk = "teams" })
  rules.on_request(t.call({ trunk = "core" }), req)
  t.eq(req:header("X-MS-SBC"), "Operator/SBC/1")
  local resp = t.response("SIP/2.0 180 Ringing\nCall-ID: t1\nCSeq: 1 INVITE\n", { trunk = "teams" })
  rules.on_response(t.call({ trunk = "teams" }), resp)
  t.eq(resp:header("X-MS-SBC"), "Operator/SBC/1")
  local to_core = t.request(invite(), { trunk = "core" })
  rules.on_request(t.call({ trunk = "teams" }), to_core)
  t.eq(to_core:header("X-MS-SBC"), nil)
end

function tests.test_the_rule_sets_own_hooks_run_first()
  local rules = teams.apply({
    on_request = function(_, req)
      req:set_header("X-MS-SBC", "overwritten by the library")
      req:set_header("X-Mine", "1")
    end,
  }, { trunks = { "teams" } })
  local req = t.request(invite(), { trunk = "teams" })
  rules.on_request(t.call({ trunk = "core" }), req)
  t.eq(req:header("X-Mine"), "1")
  t.eq(req:header("X-MS-SBC"), "Bridgehead/SBC/" .. bh.version)
end

function tests.test_x_ms_fmc_from_teams_goes_to_the_core_and_the_tenant_is_kept()
  local rules = with_teams({ core = "core" })
  local call = t.call({ trunk = "teams" })
  rules.on_invite(call, t.request(invite("X-MS-FMC: APP=3;MID=+4930123456\nX-MS-TenantID: 72f988bf\n")))
  t.eq(t.decision(call).route, "core")
  t.eq(call.vars.teams_tenant, "72f988bf")
end

function tests.test_x_ms_fmc_from_the_core_is_left_to_the_route()
  local rules = with_teams()
  local call = t.call({ trunk = "core" })
  rules.on_invite(call, t.request(invite("X-MS-FMC: APP=3;MID=+4930123456\n")))
  t.eq(t.decision(call), nil)
end

function tests.test_a_diversion_chain_becomes_history_info_toward_teams()
  local rules = with_teams()
  local req = t.request(invite(
    "Diversion: <sip:+4930222@operator.example>;reason=no-answer;counter=1\n" ..
    "Diversion: <sip:+4930111@operator.example>;reason=unconditional;counter=1\n"
  ), { trunk = "teams" })
  rules.on_request(t.call({ trunk = "core" }), req)
  t.eq(req:has_header("Diversion"), false)
  local hi = req:headers("History-Info")
  t.eq(#hi, 3)
  t.eq(hi[1], '<sip:+4930111@operator.example?Reason=SIP%3Bcause%3D302%3Btext%3D%22Moved%20Temporarily%22>;index=1')
  t.eq(hi[2], '<sip:+4930222@operator.example?Reason=SIP%3Bcause%3D408%3Btext%3D%22Request%20Timeout%22>;index=1.1;mp=1')
  t.eq(hi[3], "<sip:+4930987654@127.0.0.1:5080;cause=408>;index=1.1.1;mp=1.1")
end

function tests.test_history_info_from_teams_becomes_diversion_toward_the_core()
  local rules = with_teams()
  -- As Microsoft writes a forwarded call: the diverting user's entry carries the escaped Reason.
  local req = t.request(invite(
    "History-Info: <sip:+4930111@sip.pstnhub.microsoft.com:5061;user=phone?Reason=SIP%3Bcause%3D302%3Btext%3D%22Moved%20temporarily%22>;index=1\n" ..
    "History-Info: <sip:+4930333@sip.pstnhub.microsoft.com:5061;user=phone?Reason=SIP%3Bcause%3D486>;index=1.1;mp=1\n" ..
    "History-Info: <sip:+4930987654@sip.pstnhub.microsoft.com:5061;user=phone>;index=1.1.1;mp=1.1\n"
  ), { trunk = "core" })
  rules.on_request(t.call({ trunk = "teams" }), req)
  t.eq(req:has_header("History-Info"), false)
  local div = req:headers("Diversion")
  t.eq(#div, 2)
  t.eq(div[1], "<sip:+4930333@sip.pstnhub.microsoft.com:5061;user=phone>;reason=user-busy;counter=1")
  t.eq(div[2], "<sip:+4930111@sip.pstnhub.microsoft.com:5061;user=phone>;reason=unconditional;counter=1")
end

function tests.test_a_cause_uri_parameter_marks_the_entry_before_it_as_diverting()
  local out = teams.diversion_of({
    { uri = "sip:+4930111@example.com" },
    { uri = "sip:+4930987654@example.com;cause=408" },
  })
  t.eq(#out, 1)
  t.eq(out[1], "<sip:+4930111@example.com>;reason=no-answer;counter=1")
end

function tests.test_history_without_a_retarget_gives_no_diversion()
  t.eq(#teams.diversion_of({ { uri = "sip:+4930987654@example.com" } }), 0)
end

function tests.test_the_round_trip_keeps_the_chain()
  local diversions = {
    { uri = "sip:+4930222@operator.example", params = { reason = "user-busy" } },
    { uri = "sip:+4930111@operator.example", params = { reason = "deflection" } },
  }
  local history = {}
  for i, value in ipairs(teams.history_info_of(diversions, "sip:+4930987654@example.com")) do
    history[i] = { uri = value:match("^<([^>]*)>") }
  end
  local back = teams.diversion_of(history)
  t.eq(back[1], "<sip:+4930222@operator.example>;reason=user-busy;counter=1")
  t.eq(back[2], "<sip:+4930111@operator.example>;reason=deflection;counter=1")
end

function tests.test_pass_leaves_diversion_and_history_info_alone()
  local rules = with_teams({ diversion = "pass" })
  local req = t.request(invite("Diversion: <sip:+4930111@operator.example>;reason=unconditional\n"), { trunk = "teams" })
  rules.on_request(t.call({ trunk = "core" }), req)
  t.eq(req:header("Diversion"), "<sip:+4930111@operator.example>;reason=unconditional")
  t.eq(req:has_header("History-Info"), false)
end

function tests.test_an_existing_history_info_toward_teams_is_kept()
  local rules = with_teams()
  local req = t.request(invite(
    "Diversion: <sip:+4930111@operator.example>;reason=unconditional\n" ..
    "History-Info: <sip:+4930111@operator.example>;index=1\n"
  ), { trunk = "teams" })
  rules.on_request(t.call({ trunk = "core" }), req)
  t.eq(#req:headers("History-Info"), 1)
  t.eq(req:has_header("Diversion"), true)
end

function tests.test_in_dialog_requests_are_not_mapped()
  local rules = with_teams()
  local req = t.request(
    "INVITE sip:+4930987654@127.0.0.1:5080 SIP/2.0\nFrom: <sip:a@b>;tag=1\nTo: <sip:c@d>;tag=2\nCall-ID: t1\nCSeq: 2 INVITE\n" ..
    "Diversion: <sip:+4930111@operator.example>;reason=unconditional\n",
    { trunk = "teams" }
  )
  rules.on_request(t.call({ trunk = "core" }), req)
  t.eq(req:has_header("History-Info"), false)
end

function tests.test_apply_refuses_options_without_trunks()
  local ok, err = pcall(teams.apply, {}, {})
  t.eq(ok, false)
  t.eq(err:find("opts.trunks", 1, true) ~= nil, true)
end

return tests
