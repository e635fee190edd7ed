-- An IMS core sends its caller twice: a sip: and a tel: P-Asserted-Identity. Teams gets the
-- number in E.164 on the sip: one; the tel: one crosses as it came. Internal headers stay home.
local rules = {}

function rules.on_invite(call, req)
  local sip = req:name_addr("P-Asserted-Identity", "sip")
  if sip and sip.user and sip.user:sub(1, 1) ~= "+" then
    req:set_user("P-Asserted-Identity", "+44" .. sip.user:gsub("^0", ""), "sip")
  end
  req:set_display("Diversion", "Forwarded", "*")
  req:remove_headers("X-Internal-*")
end

return rules
