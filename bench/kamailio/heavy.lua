-- Kamailio KEMI rules for bench/compare-cps.sh, HEAVY=1, loaded beside bench/kamailio/default.lua
-- (which runs heavy_invite() on the initial INVITE from the core): the "heavy rules" of
-- bench/heavy.lua, per call:
--   * 20 header edits: 19 set (remove_hf + append: X-Heavy-01..19) and Subject removed;
--   * a regex: a Request-URI user +49... becomes 0049... (textops subst_user);
--   * an SDP codec filter on the offer, keeping PCMA and PCMU only (sdpops
--     sdp_keep_codecs_by_name, called through KSR.x.modf as sdpops 5.6 does not export it to
--     KEMI: telephone-event goes); with rtpengine, which rewrites the whole
--     SDP, its codec-strip=telephone-event flag instead (two edits of one body would clash).

local RTPENGINE = os.getenv("BENCH_RTPENGINE") == "1"
local HEAVY = {}
for i = 1, 19 do
  HEAVY[i] = { ("X-Heavy-%02d"):format(i),
               ("X-Heavy-%02d: value-%02d;bench=compare-cps;rule=heavy\r\n"):format(i, i) }
end

-- The heavy rules on the INVITE toward Teams; returns rtpengine's offer flags.
function heavy_invite()
  for i = 1, #HEAVY do
    KSR.textops.remove_hf(HEAVY[i][1])
    KSR.hdr.append(HEAVY[i][2])
  end
  KSR.textops.remove_hf("Subject")
  KSR.textops.subst_user("/^\\+(49[0-9]+)$/00\\1/")
  if not RTPENGINE then KSR.x.modf("sdp_keep_codecs_by_name", "PCMA,PCMU", "audio") end
  return "codec-strip=telephone-event"
end
