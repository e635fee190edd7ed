-- Bridgehead default rules: core <-> Teams.
-- Calls from the core go to Teams, calls from Teams go to the core (the profile's routes). The
-- Teams library (scripts/lib/teams.lua) adds what Microsoft requires of the trunk named "teams":
-- X-MS-SBC on every message sent to it, the X-MS-FMC loop rule (a call from Teams anchored
-- there goes to the core, never back), Diversion <-> History-Info, and X-MS-TenantID in
-- call.vars.teams_tenant. Add a hook to `rules` below; the library's work runs after it.
local rules = {}

return require("lib.teams").apply(rules, { trunks = { "teams" }, core = "core" })
