-- Teams Phone Mobile anchoring (examples/teams-phone-mobile/): the mobile core (trunk "core",
-- an IMS S-CSCF invoking Bridgehead as it would an anchoring application server) sends every
-- mobile call through Bridgehead; a call of a Teams Phone Mobile subscriber is anchored in the
-- Microsoft Phone System (trunk "teams"), every other call goes back to the core as a native
-- mobile call. It decides as Microsoft's Mobile Control Point does:
--
--   1. MO or MT: the `sescase` of P-Served-User, else `orig`/`term` on the top Route, else MT.
--   2. Already anchored (never twice): X-MS-FMC on an MO call (any value), `APP` (a Teams
--      client's call), or `MT` on an MT call: the call goes back to the core, the header intact.
--   3. The served user: P-Served-User, else P-Asserted-Identity (MO) or the Request-URI (MT).
--   4. Is that user a subscriber? `bh.lookup` of the lookup named by the core trunk's param
--      `tpm_lookup` (default "tpm_subscribers"). A subscriber's call goes to Teams: to the trunk
--      named by param `anchor_mo` / `anchor_mt` (default "teams"), with `X-MS-FMC: MO|MT` unless
--      param `fmc` is "false" (unique trunks per call type tell Microsoft the case instead).
--      Anyone else, or a lookup that fails (an HTTP service slow past its timeout, down or
--      busy), carries on as a native call (counted).
--
-- Calls from Teams go to the core (the profile's route); one with X-MS-FMC is anchored already
-- and the Teams library routes it to the core with the header intact.
--
-- Counted per call: bh.metric `tpm_calls` with labels `case` (MO, MT) and `outcome`
-- (anchored, native, anchored_already, lookup_failed, no_served_user).
local teams = require("lib.teams")
local rules = {}

-- The parameters of the top Route value of the caller's INVITE (those of its URI and of the
-- header), lower case, as a set. Bridgehead consumes the caller's Route (it is B2BUA-owned):
-- `req:caller_headers` reads it as it came.
local function top_route_params(req)
  local top = req:caller_headers("Route")[1]
  if not top then
    return {}
  end
  top = top:match("^[^,<]*<[^>]*>[^,]*") or top:match("^[^,]*")
  local params = {}
  for param in top:gmatch(";%s*([^;>=%s]+)") do
    params[param:lower()] = true
  end
  return params
end

--- "MO" or "MT", as MCP decides: P-Served-User's sescase, then the top Route's orig (a URI or
--- header parameter; `term`, or neither, is MT), else MT.
function rules.session_case(req)
  local served = req:name_addr("P-Served-User")
  local sescase = served and served.params.sescase
  if sescase == "orig" then
    return "MO"
  elseif sescase == "term" then
    return "MT"
  end
  local route = top_route_params(req)
  if route.orig then
    return "MO"
  end
  return "MT"
end

--- The served user's number (visual separators removed): P-Served-User, else
--- P-Asserted-Identity for MO, the Request-URI for MT. nil when there is none.
function rules.served_user(req, case)
  local from = req:name_addr("P-Served-User")
  local user = from and from.user
  if not user and case == "MO" then
    -- The first tel: identity, else the first (an IMS core often asserts both sip: and tel:).
    local first
    for _, pai in ipairs(req:name_addrs("P-Asserted-Identity")) do
      if pai.user and pai.scheme == "tel" and not user then
        user = pai.user
      end
      first = first or pai.user
    end
    user = user or first
  elseif not user then
    user = req:uri_user()
  end
  return user and (user:gsub("[%-%.%(%)]", ""))
end

--- True when X-MS-FMC says the Phone System has this call already.
function rules.anchored_already(fmc, case)
  if not fmc then
    return false
  end
  local value = fmc:match("^%s*([%w]+)")
  return case == "MO" or value == "APP" or (case == "MT" and value == "MT")
end

local function count(case, outcome)
  bh.metric.inc("tpm_calls", { case = case, outcome = outcome })
end

function rules.on_invite(call, req)
  if call.trunk.name ~= "core" then
    return
  end
  local params = call.trunk.params
  local case = rules.session_case(req)
  if rules.anchored_already(req:header("X-MS-FMC"), case) then
    count(case, "anchored_already")
    return call:route("core")
  end
  local user = rules.served_user(req, case)
  if not user then
    count(case, "no_served_user")
    return call:route("core")
  end
  -- An HTTP lookup waits here for its service (the call waits, nothing else does); a
  -- failure (timeout, error, busy) answers nil and why.
  local subscriber, failure = bh.lookup(params.tpm_lookup or "tpm_subscribers", user)
  if failure then
    bh.log.warn("tpm lookup failed for " .. user .. ": " .. failure)
    count(case, "lookup_failed")
    return call:route("core")
  end
  if subscriber == nil then
    count(case, "native")
    return call:route("core")
  end
  count(case, "anchored")
  if params.fmc ~= "false" then
    call.vars.fmc = case
  end
  call:route(case == "MO" and (params.anchor_mo or "teams") or (params.anchor_mt or "teams"))
end

function rules.on_request(call, req)
  -- The anchored call's INVITE tells the Phone System the case (Microsoft's Teams Phone Mobile
  -- SIP specification, given to operators, has the full X-MS-FMC grammar: adjust it here).
  if call.vars.fmc and req.method == "INVITE" and req.leg == "b" and not req:has_header("X-MS-FMC") then
    local to = req:name_addr("To")
    if to and to.params.tag == nil then
      req:set_header("X-MS-FMC", call.vars.fmc)
    end
  end
end

return teams.apply(rules, { trunks = { "teams", "teams_mo", "teams_mt" }, core = "core" })
