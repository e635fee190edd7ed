-- The Microsoft Teams trunk library: what a rule set does for the trunks that face Microsoft
-- (Direct Routing, Operator Connect, Teams Phone Mobile). On for a rule set by one line:
--
--   return require("lib.teams").apply(rules, { trunks = { "teams" } })
--
-- `apply` wraps the rule set's own hooks (they run first) and adds, for each trunk named in
-- `trunks`:
--   * X-MS-SBC on every request and response sent toward it (Bridgehead's own stateless answers,
--     OPTIONS keepalives, CANCEL, ACK and BYE run these hooks too);
--   * the X-MS-FMC loop rule: a call from Teams that carries X-MS-FMC is already anchored in
--     Teams and goes to `core` (default "core"), never back to Teams;
--   * X-MS-TenantID of a call from Teams kept in `call.vars.teams_tenant`;
--   * Diversion <-> History-Info (RFC 7544): a Diversion chain toward Teams becomes History-Info
--     entries with a Reason cause (as Microsoft writes them), and History-Info from Teams becomes
--     Diversion toward the core. `diversion = "pass"` leaves both headers as they are.
-- The rest of Microsoft's requirements are trunk settings in the profile (TLS, keepalive, hold,
-- e164, srtp, sdp_attributes, delayed_offer): see docs/teams.md.
local teams = {}

-- RFC 7544 section 4, Diversion reason -> the SIP cause of a History-Info entry (RFC 4458).
local CAUSE_OF_REASON = {
  unknown = 404,
  ["user-busy"] = 486,
  ["no-answer"] = 408,
  unconditional = 302,
  deflection = 480,
  unavailable = 503,
  ["time-of-day"] = 404,
  ["do-not-disturb"] = 404,
  ["follow-me"] = 404,
  ["out-of-service"] = 503,
  away = 404,
}

-- And back: a History-Info cause -> a Diversion reason.
local REASON_OF_CAUSE = {
  [302] = "unconditional",
  [404] = "unknown",
  [408] = "no-answer",
  [480] = "deflection",
  [486] = "user-busy",
  [487] = "deflection",
  [503] = "unavailable",
}

local CAUSE_TEXT = {
  [302] = "Moved Temporarily",
  [404] = "Not Found",
  [408] = "Request Timeout",
  [480] = "Temporarily Unavailable",
  [486] = "Busy Here",
  [487] = "Request Terminated",
  [503] = "Service Unavailable",
}

local function escape(text)
  return (text:gsub("[^%w%-%.%+_~]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end

local function unescape(text)
  return (text:gsub("%%(%x%x)", function(hex)
    return string.char(tonumber(hex, 16))
  end))
end

-- A URI without its `?headers` part.
local function without_headers(uri)
  return (uri:gsub("%?.*$", ""))
end

-- The cause in the escaped Reason header of a History-Info entry's URI (`?Reason=SIP;cause=302`):
-- why the request left that target. nil without one.
local function reason_cause(uri)
  local reason = uri:match("[?&][Rr][Ee][Aa][Ss][Oo][Nn]=([^&]*)")
  local cause = reason and unescape(reason):match("cause=(%d+)")
  return cause and tonumber(cause)
end

-- The RFC 4458 `cause` URI parameter of a History-Info entry: why the request reached it. nil
-- without one.
local function target_cause(uri)
  local cause = without_headers(uri):match(";cause=(%d+)")
  return cause and tonumber(cause)
end

--- History-Info values (RFC 7044) for a Diversion chain (RFC 5806) and the request's target.
--- `diversions` are `msg:name_addrs("Diversion")` tables, most recent first; `target` is the
--- Request-URI. The oldest diverting user gets index 1, each later one the next level (1.1,
--- 1.1.1...) with `mp` naming the entry it came from; each diverting entry carries its cause as
--- an escaped Reason, the target the cause of the last diversion as a `cause` URI parameter.
function teams.history_info_of(diversions, target)
  local entries = {}
  local index, previous = "1", nil
  local last_cause
  for i = #diversions, 1, -1 do
    local d = diversions[i]
    if d.uri then
      last_cause = CAUSE_OF_REASON[d.params.reason] or 404
      local reason = string.format('SIP;cause=%d;text="%s"', last_cause, CAUSE_TEXT[last_cause])
      local entry = string.format("<%s?Reason=%s>;index=%s", without_headers(d.uri), escape(reason), index)
      if previous then
        entry = entry .. ";mp=" .. previous
      end
      entries[#entries + 1] = entry
      previous, index = index, index .. ".1"
    end
  end
  if not previous then
    return entries
  end
  local uri = without_headers(target)
  if not uri:find(";cause=") then
    uri = uri .. ";cause=" .. last_cause
  end
  entries[#entries + 1] = string.format("<%s>;index=%s;mp=%s", uri, index, previous)
  return entries
end

--- Diversion values (RFC 5806), most recent first, for History-Info entries (RFC 7044): every
--- entry that was retargeted (its Reason says a cause, or the next entry's URI has a `cause`
--- parameter) is a diverting user, its reason mapped from the cause.
function teams.diversion_of(history)
  local out = {}
  for i, entry in ipairs(history) do
    if entry.uri then
      local following = history[i + 1]
      local cause = reason_cause(entry.uri) or (following and following.uri and target_cause(following.uri))
      if cause and following then
        local uri = without_headers(entry.uri):gsub(";cause=%d+", "")
        table.insert(out, 1, string.format("<%s>;reason=%s;counter=1", uri, REASON_OF_CAUSE[cause] or "unknown"))
      end
    end
  end
  return out
end

-- An initial INVITE (no To tag yet): the one request whose diversion history is mapped.
local function is_initial_invite(msg)
  if msg.method ~= "INVITE" then
    return false
  end
  local to = msg:name_addr("To")
  return to ~= nil and to.params.tag == nil
end

local function replace_header(msg, from, to, values)
  if #values == 0 then
    return
  end
  msg:remove_header(from)
  msg:remove_header(to)
  for _, value in ipairs(values) do
    msg:add_header(to, value)
  end
end

-- Calls `first` then `second` with the same arguments; either may be nil.
local function chain(first, second)
  if not first then
    return second
  end
  return function(...)
    first(...)
    return second(...)
  end
end

--- Wraps `rules` (a rule set's hook table) with the Teams behaviour for the trunks in
--- `opts.trunks` and returns it. Options: `trunks` (list of trunk names, required), `core`
--- (where an X-MS-FMC call from Teams goes, default "core"), `sbc` (the X-MS-SBC value, default
--- "Bridgehead/<model>/<version>"), `diversion` ("history-info", the default, or "pass").
function teams.apply(rules, opts)
  assert(type(opts) == "table" and type(opts.trunks) == "table", "teams.apply: opts.trunks is a list of trunk names")
  local is_teams = {}
  for _, name in ipairs(opts.trunks) do
    is_teams[name] = true
  end
  local core = opts.core or "core"
  local sbc = opts.sbc or ("Bridgehead/" .. bh.model .. "/" .. bh.version)
  local diversion = opts.diversion or "history-info"
  assert(diversion == "history-info" or diversion == "pass", "teams.apply: diversion is \"history-info\" or \"pass\"")

  local function on_invite(call, req)
    if not is_teams[call.trunk.name] then
      return
    end
    call.vars.teams_tenant = req:header("X-MS-TenantID")
    -- X-MS-FMC from Teams: the call is anchored in Teams already and must never be routed to
    -- Teams again; it goes to the core with the header intact.
    if req:has_header("X-MS-FMC") then
      call:route(core)
    end
  end

  local function on_request(call, req)
    if is_teams[req.trunk] then
      req:set_header("X-MS-SBC", sbc)
      if diversion == "history-info" and is_initial_invite(req) and not req:has_header("History-Info") then
        replace_header(req, "Diversion", "History-Info", teams.history_info_of(req:name_addrs("Diversion"), req:uri()))
      end
    elseif diversion == "history-info" and is_teams[call.trunk.name] and is_initial_invite(req) and not req:has_header("Diversion") then
      replace_header(req, "History-Info", "Diversion", teams.diversion_of(req:name_addrs("History-Info")))
    end
  end

  local function on_response(_, resp)
    if is_teams[resp.trunk] then
      resp:set_header("X-MS-SBC", sbc)
    end
  end

  rules.on_invite = chain(rules.on_invite, on_invite)
  rules.on_request = chain(rules.on_request, on_request)
  rules.on_response = chain(rules.on_response, on_response)
  return rules
end

return teams
