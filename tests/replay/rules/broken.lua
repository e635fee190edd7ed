local rules = {}
function rules.on_request(call, msg)
  if then
end
return rules
