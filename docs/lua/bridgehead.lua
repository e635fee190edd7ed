---@meta
-- LuaLS (lua-language-server) definitions for Bridgehead rules: add this directory to
-- `workspace.library` in .luarc.json and editors complete and type-check hooks and the API.
-- The reference with examples is docs/lua-api.md.

---@class bh
---@field version string Bridgehead's version, e.g. "0.1.0".
---@field model string The product model, "SBC".
---@field log bh.log
---@field metric bh.metric
---@field re bh.re
bh = {}

---Logging into Bridgehead's log (tracing), tagged with the id of the call whose hook runs.
---@class bh.log
bh.log = {}
---@param text string
function bh.log.debug(text) end
---@param text string
function bh.log.info(text) end
---@param text string
function bh.log.warn(text) end
---@param text string
function bh.log.error(text) end

---Counters rules define; read with the rule metrics.
---@class bh.metric
bh.metric = {}
---Adds `by` (default 1) to the counter `name` with these labels.
---@param name string letters, digits and _
---@param labels? table<string, string>
---@param by? integer
function bh.metric.inc(name, labels, by) end

---Linear-time regular expressions (Rust `regex` syntax): safe on untrusted input.
---@class bh.re
bh.re = {}
---@param subject string
---@param pattern string
---@return boolean
function bh.re.test(subject, pattern) end
---@param subject string
---@param pattern string
---@return integer|nil start 1-based
---@return integer|nil finish inclusive
function bh.re.find(subject, pattern) end
---The capture groups of the first match (the whole match when there are none), or nil.
---A group that did not take part is `false`.
---@param subject string
---@param pattern string
---@return string|false|nil ...
function bh.re.match(subject, pattern) end
---Replaces every match; `$1`, `${name}` refer to groups.
---@param subject string
---@param pattern string
---@param replacement string
---@return string result
---@return integer count
function bh.re.gsub(subject, pattern, replacement) end
---How each peer of a trunk stands by its OPTIONS keepalives: `{ ["IP:port"] = "up"|"down" }`.
---@param trunk string
---@return table<string, "up"|"down">
function bh.peer_status(trunk) end
---Calls up now on the trunk named `trunk`, process-wide, as its `max_calls` counts them (calls
---from it and to it). Raises for an unknown trunk.
---@param trunk string
---@return integer
function bh.trunk_calls(trunk) end
---The value of `key` in the profile's lookup `name`, or nil; then why an HTTP lookup failed
---("timeout", "busy", "status 503"...). An HTTP lookup waits for its service in on_invite only.
---Raises for an unknown lookup.
---@param name string
---@param key string
---@return string? value
---@return string? failure
function bh.lookup(name, key) end

---@class bh.Trunk
---@field name string
---@field params table<string, string> The trunk's `params` from the profile.

---@class bh.RouteOptions
---@field peer? string "IP:port" instead of the trunk's first peer.
---@field uri? string The Request-URI to send, instead of the caller's user at the peer.

---@class bh.Call
---@field id string The Call-ID of the A-leg.
---@field trunk bh.Trunk The trunk the call arrived on.
---@field vars table Per-call variables shared by every hook of the call.
---@field leg "a"|"b"|nil The leg the hook is about (nil in on_call_end).
---@field reliable {a: boolean, b: boolean} Which legs use reliable provisionals (RFC 3262) so far.
local Call = {}
---Puts `host` (a tenant's FQDN) in Bridgehead's Contact on a leg, instead of the listener's.
---@param leg "a"|"b"
---@param host string
function Call:set_contact_host(leg, host) end
---Chooses what this call's provisional responses to the caller become (else its trunk's
---`early_media`).
---@param mode "passthrough"|"ringback"|"convert_183_to_180"|"convert_180_to_183"
function Call:set_early_media(mode) end
---Asks the media plane to play ringback to a leg (default "a").
---@param leg? "a"|"b"
function Call:play_ringback(leg) end
---Asks the media plane to send DTMF digits (0-9, *, #, A-D) to a leg (default "b"): RFC 4733
---events, or tones when the leg's trunk has `dtmf: inband` or it took no telephone-event.
---@param digits string
---@param leg? "a"|"b"
function Call:send_dtmf(digits, leg) end
---Routes the call (in on_invite), routes it again (in on_failure), or routes a transfer's new
---call (in on_refer).
---@param trunk string
---@param opts? bh.RouteOptions
function Call:route(trunk, opts) end
---Refuses the call with a final status (300-699).
---@param status integer
---@param reason? string
---@param headers? table<string, string>
function Call:reject(status, reason, headers) end

---@class bh.NameAddr
---@field index integer Which value of the header this is (from 1).
---@field raw? string The value as written, when it is no name-addr (only in name_addrs).
---@field display? string
---@field uri string
---@field scheme? "sip"|"sips"|"tel"|string
---@field user? string
---@field host? string
---@field port? integer
---@field params table<string, string|true>

---@class bh.Message
---@field method? string The request method (nil for responses).
---@field status? integer The response status (nil for requests).
---@field reason? string The reason phrase (responses).
---@field leg "a"|"b" The leg the message is sent on: "a" toward the caller, "b" toward the callee.
---@field trunk string The trunk the message is sent to.
local Message = {}
---@param name string
---@return string|nil
function Message:header(name) end
---@param name string
---@return string[]
function Message:headers(name) end
---In on_invite only: every line of a header of the caller's INVITE as received (B2BUA-owned
---ones too: Route, Via, Contact...).
---@param name string
---@return string[]
function Message:caller_headers(name) end
---@param name string
---@return boolean
function Message:has_header(name) end
---@param name string
---@param value string
function Message:set_header(name, value) end
---@param name string
---@param value string
function Message:add_header(name, value) end
---@param name string A header name (no `*`: use remove_headers for patterns).
function Message:remove_header(name) end
---Removes every header line whose name matches a glob (`*` = any run of characters),
---case-insensitive; B2BUA-owned headers are never removed.
---@param pattern string e.g. "X-Internal-*"
---@return integer removed how many lines went
function Message:remove_headers(pattern) end
---Each header name the message carries, once, in the order of its first line.
---@return string[]
function Message:header_names() end
---@return string|nil
function Message:uri() end
---@param uri string
function Message:set_uri(uri) end
---@return string|nil
function Message:uri_user() end
---@param user string
function Message:set_uri_user(user) end
---@return string|nil
function Message:from_user() end
---@return string|nil
function Message:to_user() end
---@param user string
function Message:set_from_user(user) end
---@param user string
function Message:set_to_user(user) end
---Which values of a multi-valued name-addr header: nil = the first, n = the n-th (from 1,
---across lines and comma-separated values), a URI scheme = the first with it, "*" = all.
---@alias bh.Which integer|"sip"|"sips"|"tel"|"*"|nil

---@param header string From, To, P-Asserted-Identity, Contact, Diversion...
---@param which? bh.Which
---@return bh.NameAddr|nil
function Message:name_addr(header, which) end
---Every value of a name-addr header, in order.
---@param header string
---@return bh.NameAddr[]
function Message:name_addrs(header) end
---@param header string
---@param display string|nil nil removes the display name
---@param which? bh.Which
function Message:set_display(header, display, which) end
---@param header string
---@param user string
---@param which? bh.Which
function Message:set_user(header, user, which) end
---@param header string
---@param host string
---@param which? bh.Which "*" skips tel: values (they have no host)
function Message:set_host(header, host, which) end
---@return string
function Message:body() end
---@return string|nil
function Message:content_type() end
---@param body string
---@param content_type? string
function Message:set_body(body, content_type) end

---@class bh.Codec
---@field pt string
---@field name string
---@field clock? integer
---@field channels? integer
---@field fmtp? string

---@class bh.Crypto
---@field tag integer
---@field suite string
---@field key string
---@field params? string

---Methods shared by the SDP session and its media sections.
---@class bh.SdpSection
local Section = {}
---@param name string
---@return string|true|nil value, true for a flag attribute
function Section:attribute(name) end
---@param name string
---@return (string|true)[]
function Section:attributes(name) end
---@param name string
---@param value? string|true
function Section:set_attribute(name, value) end
---@param name string
---@param value? string|true
function Section:add_attribute(name, value) end
---@param name string
---@return integer removed
function Section:remove_attribute(name) end
---@return string|nil address
function Section:connection() end
---@param address string
function Section:set_connection(address) end
---@param kind string AS, TIAS, CT...
---@return integer|nil
function Section:bandwidth(kind) end
---@param kind string
---@param value integer
function Section:set_bandwidth(kind, value) end
---@param kind string
---@return integer removed
function Section:remove_bandwidth(kind) end

---@class bh.Sdp: bh.SdpSection
local Sdp = {}
---@param kind? string "audio", "video"...
---@return bh.Media[]
function Sdp:media(kind) end
---@return string|nil
function Sdp:origin_address() end
---@param address string
function Sdp:set_origin_address(address) end
---@return string
function Sdp:tostring() end

---@class bh.Media: bh.SdpSection
---@field kind string
---@field port integer
---@field proto string
local Media = {}
---@param port integer
function Media:set_port(port) end
---@return boolean
function Media:is_rejected() end
---@return bh.Codec[]
function Media:codecs() end
---@param selectors (string|integer)[] names or payload types
---@return integer kept
function Media:keep_codecs(selectors) end
---@param selectors (string|integer)[]
---@return integer removed
function Media:remove_codecs(selectors) end
---@param selectors (string|integer)[]
---@return integer moved
function Media:reorder_codecs(selectors) end
---@param names string[]
---@return integer removed
function Media:keep_only_attributes(names) end
---@return "sendrecv"|"sendonly"|"recvonly"|"inactive"
function Media:direction() end
---@param direction "sendrecv"|"sendonly"|"recvonly"|"inactive"
function Media:set_direction(direction) end
---@return bh.Crypto[]
function Media:crypto() end

---@class bh.SdpContext
---@field kind "offer"|"answer"
---@field leg "a"|"b"
---@field msg bh.Message The message carrying the SDP.

---@class bh.MediaEvent
---@field kind "dtmf"|"rtp_timeout"|"quality"
---@field leg "a"|"b"
---@field digit? string dtmf
---@field duration? integer dtmf, milliseconds
---@field method? "rfc4733"|"inband"|"info" dtmf, how the digit came
---@field seconds? integer rtp_timeout
---@field loss? number quality, percent
---@field jitter? number quality, milliseconds
---@field rtt? number quality, round trip to the leg in milliseconds (when timed)
---@field mos? number quality, estimated MOS (ITU-T G.107 E-model)

---@class bh.CallEnd
---@field reason "bye"|"cancel"|"rejected"|"timeout"|"error"
---@field by "a"|"b"|"sbc"
---@field status integer The final status the caller got (200 when answered).
---@field answered boolean
---@field duration number Seconds from answer to end.
---@field mos? number The lowest MOS of the legs' last quality reports.

---The table a rules file returns: every field is optional.
---@class bh.Rules
---@field on_invite? fun(call: bh.Call, req: bh.Message)
---@field on_request? fun(call: bh.Call|nil, req: bh.Message)
---@field on_response? fun(call: bh.Call|nil, resp: bh.Message)
---@field on_sdp? fun(call: bh.Call|nil, sdp: bh.Sdp, ctx: bh.SdpContext)
---@field on_early_media? fun(call: bh.Call, resp: bh.Message)
---@field on_answer? fun(call: bh.Call, resp: bh.Message)
---@field on_failure? fun(call: bh.Call, resp: bh.Message)
---@field on_media? fun(call: bh.Call, ev: bh.MediaEvent): (boolean|string|nil) For a "dtmf" event: false drops the digit, a digit string replaces it.
---@field on_call_end? fun(call: bh.Call, info: bh.CallEnd)
---@field on_refer? fun(call: bh.Call, req: bh.Message) A transfer asked by REFER (trunk `refer: terminate`): call:route places the new call there, call:reject refuses it.
