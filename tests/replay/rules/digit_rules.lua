-- DTMF rules: "1" never reaches the far end, "2" arrives as "#"; every digit is noted.
local rules = {}

function rules.on_media(call, ev)
  if ev.kind ~= "dtmf" then return end
  call.vars.digits = (call.vars.digits or "") .. ev.digit
  if ev.digit == "1" then return false end
  if ev.digit == "2" then return "#" end
end

function rules.on_request(call, msg)
  if call and msg.method == "BYE" and msg.trunk == "teams" then
    msg:set_header("X-Digits", call.vars.digits or "")
  end
end

return rules
