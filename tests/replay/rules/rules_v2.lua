-- Rules for the replay scenarios: serial failover, DTMF collected from media events, and a
-- version stamp on what goes toward Teams.
local VERSION = "two"
local rules = {}

function rules.on_failure(call, resp)
  if (resp.status == 503 or resp.status == 408) and not call.vars.failed_over then
    call.vars.failed_over = true
    call:route("backup")
  end
end

function rules.on_media(call, ev)
  if ev.kind == "dtmf" then
    call.vars.digits = (call.vars.digits or "") .. ev.digit
  end
end

function rules.on_request(call, msg)
  if msg.trunk ~= "core" then
    msg:set_header("X-Rule-Version", VERSION)
    if msg.method == "BYE" and call and call.vars.digits then
      msg:set_header("X-Digits", call.vars.digits)
    end
  end
end

return rules
