-- on_refer for the transfer scenario: a Refer-To of +4930000000 is refused, a German
-- number goes to the core (the PSTN side), anything else back to Teams (the default).
local rules = {}

function rules.on_refer(call, req)
  local target = req:name_addr("Refer-To")
  local user = target and target.user or ""
  if user == "+4930000000" then
    return call:reject(603)
  end
  if user:sub(1, 3) == "+49" then
    return call:route("core")
  end
end

return rules
