use super::*;

/// A Teams-like SRTP offer (CRLF, trailing CRLF), audio plus a rejected video stream.
const TEAMS_OFFER: &str = include_str!("../../tests/data/sdp/teams-offer.sdp");

/// A plain answer (RTP/AVP, PCMA + telephone-event, no rtpmap for PCMA).
const ANSWER: &str = "v=0\r\n\
o=bridgehead 42 1 IN IP4 192.0.2.1\r\n\
s=-\r\n\
c=IN IP4 192.0.2.1\r\n\
t=0 0\r\n\
m=audio 20000 RTP/AVP 8 101\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n\
m=video 0 RTP/AVP 96\r\n";

fn parse(s: &str) -> Sdp {
    match Sdp::parse(s.as_bytes()) {
        Ok(sdp) => sdp,
        Err(e) => panic!("parse failed: {e}"),
    }
}

fn text(sdp: &Sdp) -> String {
    String::from_utf8(sdp.to_bytes()).unwrap()
}

fn audio(sdp: &Sdp) -> &Media {
    &sdp.media()[0]
}

fn audio_mut(sdp: &mut Sdp) -> &mut Media {
    &mut sdp.media_mut()[0]
}

fn names(m: &Media) -> Vec<String> {
    m.codecs().into_iter().map(|c| c.name).collect()
}

// ---- parsing and serialization ----

#[test]
fn teams_offer_round_trips_byte_identical() {
    let sdp = parse(TEAMS_OFFER);
    assert_eq!(sdp.to_bytes(), TEAMS_OFFER.as_bytes());
    assert_eq!(sdp.to_string(), TEAMS_OFFER);
    assert_eq!(sdp.media().len(), 2);
}

#[test]
fn answer_round_trips_and_reads() {
    let sdp = parse(ANSWER);
    assert_eq!(text(&sdp), ANSWER);
    let a = audio(&sdp);
    assert_eq!(a.formats(), ["8", "101"]);
    assert_eq!(names(a), ["PCMA", "telephone-event"]);
    assert_eq!(a.direction(), Direction::SendRecv);
    assert_eq!(a.connection().unwrap().address, "192.0.2.1");
    assert!(sdp.media()[1].is_rejected());
    assert_eq!(sdp.origin().unwrap().username, "bridgehead");
}

#[test]
fn lf_only_and_missing_final_line_end() {
    let lf = TEAMS_OFFER.replace("\r\n", "\n");
    assert_eq!(text(&parse(&lf)), TEAMS_OFFER);
    let unterminated = lf.trim_end_matches('\n');
    assert_eq!(text(&parse(unterminated)), TEAMS_OFFER);
    let mixed = "v=0\ns=-\r\nt=0 0";
    assert_eq!(text(&parse(mixed)), "v=0\r\ns=-\r\nt=0 0\r\n");
}

#[test]
fn empty_lines_are_dropped() {
    let sdp = parse("v=0\r\n\r\ns=-\r\nt=0 0\r\n\r\n\r\n");
    assert_eq!(text(&sdp), "v=0\r\ns=-\r\nt=0 0\r\n");
}

#[test]
fn unknown_lines_and_malformed_attributes_are_kept() {
    let body = "v=0\r\nx=whatever it is\r\ns=-\r\na=\r\na=:odd\r\nm=audio 1 RTP/AVP 0\r\n\
                a=rtpmap:junk\r\na=fmtp:\r\nY=upper\r\na=crypto:x\r\n";
    let sdp = parse(body);
    assert_eq!(text(&sdp), body);
    let a = audio(&sdp);
    assert_eq!(names(a), ["PCMU"]);
    assert!(a.crypto().is_empty());
    assert_eq!(sdp.attributes(""), [None, Some("odd")]);
}

#[test]
fn fqdn_and_ipv6_connections() {
    let sdp = parse(
        "v=0\r\no=- 1 1 IN IP4 media.example.com\r\ns=-\r\nc=IN IP4 media.example.com\r\nt=0 0\r\n\
         m=audio 4000 RTP/AVP 0\r\nc=IN IP6 2001:db8::1\r\nm=audio 4002 RTP/AVP 0\r\n",
    );
    assert_eq!(
        sdp.connection(),
        Some(Connection {
            net_type: "IN".into(),
            addr_type: "IP4".into(),
            address: "media.example.com".into()
        })
    );
    assert_eq!(sdp.origin().unwrap().address, "media.example.com");
    let c = sdp.media()[0].connection().unwrap();
    assert_eq!(
        (c.addr_type.as_str(), c.address.as_str()),
        ("IP6", "2001:db8::1")
    );
    assert_eq!(
        sdp.media()[1].connection().unwrap().address,
        "media.example.com"
    );
}

#[test]
fn multicast_connection_suffix_is_not_part_of_the_address() {
    let c = Connection::parse("IN IP4 224.2.1.1/127/3").unwrap();
    assert_eq!(c.address, "224.2.1.1");
    assert_eq!(Connection::parse("IN IP4"), None);
}

#[test]
fn port_count() {
    let body = "v=0\r\ns=-\r\nm=audio 40000/2 RTP/AVP 0\r\n";
    let mut sdp = parse(body);
    let m = audio_mut(&mut sdp);
    assert_eq!((m.port(), m.port_count()), (40000, Some(2)));
    m.set_port(50000);
    assert_eq!(text(&sdp), "v=0\r\ns=-\r\nm=audio 50000/2 RTP/AVP 0\r\n");
}

#[test]
fn parse_errors_name_the_line() {
    let err = |b: &[u8]| Sdp::parse(b).unwrap_err();
    assert_eq!(err(b""), SdpError::MissingVersion { line: 1 });
    assert_eq!(err(b"\r\n"), SdpError::MissingVersion { line: 1 });
    assert_eq!(err(b"s=-\r\nv=0\r\n"), SdpError::MissingVersion { line: 1 });
    assert_eq!(err(b"hello"), SdpError::MissingVersion { line: 1 });
    assert_eq!(
        err(b"v=0\r\ns=-\r\nnot a line\r\n"),
        SdpError::MalformedLine { line: 3 }
    );
    assert_eq!(err(b"v=0\r\n1=x\r\n"), SdpError::MalformedLine { line: 2 });
    assert_eq!(err(b"v=0\r\ns=\xff\r\n"), SdpError::NotUtf8 { line: 2 });
    assert_eq!(
        err(b"v=0\nm=audio\n"),
        SdpError::MalformedMedia {
            line: 2,
            reason: "lacks the port"
        }
    );
    assert_eq!(
        err(b"v=0\nm=audio 4000\n"),
        SdpError::MalformedMedia {
            line: 2,
            reason: "lacks the transport protocol"
        }
    );
    assert_eq!(
        err(b"v=0\nm=\n"),
        SdpError::MalformedMedia {
            line: 2,
            reason: "lacks the media type"
        }
    );
    assert_eq!(
        err(b"v=0\nm=audio x RTP/AVP 0\n"),
        SdpError::MalformedMedia {
            line: 2,
            reason: "has an invalid port"
        }
    );
    assert_eq!(
        err(b"v=0\nm=audio 1/x RTP/AVP 0\n"),
        SdpError::MalformedMedia {
            line: 2,
            reason: "has an invalid port count"
        }
    );
    assert_eq!(
        err(b"v=0\r\ns=-\r\nnot a line\r\n").to_string(),
        "SDP line 3: expected \"<letter>=<value>\""
    );
    assert_eq!(
        err(b"v=0\nm=audio\n").to_string(),
        "SDP line 2: m= line lacks the port"
    );
}

#[test]
fn m_line_without_formats_is_tolerated() {
    let sdp = parse("v=0\r\nm=audio 0 RTP/AVP\r\n");
    assert!(audio(&sdp).formats().is_empty());
    assert!(audio(&sdp).codecs().is_empty());
    assert_eq!(text(&sdp), "v=0\r\nm=audio 0 RTP/AVP\r\n");
}

// ---- session level ----

#[test]
fn session_attributes() {
    let mut sdp = parse(TEAMS_OFFER);
    assert_eq!(
        sdp.attribute("x-mediabw"),
        Some(Some("main-video send=12000;recv=12000"))
    );
    assert_eq!(sdp.attribute("ice-lite"), None);
    sdp.set_attribute("ice-lite", None).unwrap();
    assert_eq!(sdp.attribute("ice-lite"), Some(None));
    sdp.add_attribute("group", Some("BUNDLE 0")).unwrap();
    sdp.add_attribute("group", Some("LS 0 1")).unwrap();
    assert_eq!(sdp.attributes("group"), [Some("BUNDLE 0"), Some("LS 0 1")]);
    sdp.set_attribute("group", Some("BUNDLE 1")).unwrap();
    assert_eq!(sdp.attributes("group"), [Some("BUNDLE 1")]);
    assert_eq!(sdp.remove_attribute("group"), 1);
    assert_eq!(sdp.remove_attribute("group"), 0);
    assert!(sdp.attributes("group").is_empty());
    // Session attributes stay before the first m= line.
    let out = text(&sdp);
    assert!(out.find("a=ice-lite").unwrap() < out.find("m=audio").unwrap());
}

#[test]
fn set_attribute_replaces_in_place() {
    let mut sdp = parse("v=0\r\na=x:1\r\na=y\r\na=x:2\r\nt=0 0\r\n");
    sdp.set_attribute("x", Some("3")).unwrap();
    assert_eq!(text(&sdp), "v=0\r\na=x:3\r\na=y\r\nt=0 0\r\n");
}

#[test]
fn edits_refuse_line_breaks_and_bad_names() {
    let mut sdp = parse(TEAMS_OFFER);
    let before = text(&sdp);
    assert!(sdp.set_attribute("x", Some("a\r\nm=evil")).is_err());
    assert!(sdp.set_attribute("a b", None).is_err());
    assert!(sdp.set_attribute("a:b", None).is_err());
    assert!(sdp.add_attribute("", None).is_err());
    assert!(sdp.set_connection("1.2.3.4\r\n").is_err());
    assert!(sdp.set_connection("").is_err());
    assert!(sdp.set_bandwidth("A S", 1).is_err());
    assert!(sdp.set_origin_address("a b").is_err());
    let m = audio_mut(&mut sdp);
    assert!(m.set_attribute("x", Some("\n")).is_err());
    assert!(m.add_attribute("x", Some("\0")).is_err());
    assert!(m.set_connection("a b").is_err());
    assert!(m.set_bandwidth("", 1).is_err());
    assert_eq!(text(&sdp), before);
    assert!(matches!(
        sdp.set_attribute("x", Some("\r")),
        Err(SdpError::InvalidValue {
            what: "attribute value",
            ..
        })
    ));
}

#[test]
fn session_connection() {
    let mut sdp = parse(TEAMS_OFFER);
    assert_eq!(sdp.connection().unwrap().address, "52.114.1.10");
    sdp.set_connection("2001:db8::5").unwrap();
    let c = sdp.connection().unwrap();
    assert_eq!(
        (c.addr_type.as_str(), c.address.as_str()),
        ("IP6", "2001:db8::5")
    );
    sdp.set_connection("[2001:db8::6]").unwrap();
    assert_eq!(sdp.connection().unwrap().address, "2001:db8::6");
    // The audio section's own c= still wins; the video section inherits.
    assert_eq!(audio(&sdp).connection().unwrap().address, "52.114.1.10");
    assert_eq!(sdp.media()[1].connection().unwrap().address, "2001:db8::6");
    assert!(text(&sdp).contains("\r\ns=session\r\nc=IN IP6 2001:db8::6\r\nb=CT"));
}

#[test]
fn session_connection_is_inserted_in_order() {
    let mut sdp =
        parse("v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\na=x\r\nm=audio 1 RTP/AVP 0\r\n");
    assert_eq!(sdp.connection(), None);
    assert_eq!(audio(&sdp).connection(), None);
    sdp.set_connection("media.example.com").unwrap();
    assert_eq!(
        text(&sdp),
        "v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 media.example.com\r\nt=0 0\r\na=x\r\n\
         m=audio 1 RTP/AVP 0\r\n"
    );
    assert_eq!(
        audio(&sdp).connection().unwrap().address,
        "media.example.com"
    );
}

#[test]
fn origin_edits() {
    let mut sdp = parse(TEAMS_OFFER);
    let o = sdp.origin().unwrap();
    assert_eq!(
        o,
        Origin {
            username: "-".into(),
            session_id: "1713273932".into(),
            session_version: "0".into(),
            net_type: "IN".into(),
            addr_type: "IP4".into(),
            address: "52.114.1.10".into(),
        }
    );
    sdp.set_origin_address("2001:db8::1").unwrap();
    sdp.set_session_version(7).unwrap();
    assert!(text(&sdp).contains("\r\no=- 1713273932 7 IN IP6 2001:db8::1\r\n"));
    let mut bare = parse("v=0\r\ns=-\r\n");
    assert_eq!(bare.origin(), None);
    assert_eq!(bare.set_session_version(1), Err(SdpError::MissingOrigin));
    let mut broken = parse("v=0\r\no=- 1\r\n");
    assert_eq!(broken.origin(), None);
    assert_eq!(
        broken.set_origin_address("1.2.3.4"),
        Err(SdpError::MissingOrigin)
    );
}

#[test]
fn session_bandwidth() {
    let mut sdp = parse(TEAMS_OFFER);
    assert_eq!(sdp.bandwidth("CT"), Some(10_000_000));
    assert_eq!(sdp.bandwidth("AS"), None);
    sdp.set_bandwidth("AS", 64).unwrap();
    sdp.set_bandwidth("CT", 2000).unwrap();
    assert_eq!(sdp.bandwidth("AS"), Some(64));
    assert!(text(&sdp).contains("\r\nb=CT:2000\r\nb=AS:64\r\nt=0 0\r\n"));
    assert_eq!(sdp.remove_bandwidth("CT"), 1);
    assert_eq!(sdp.remove_bandwidth("CT"), 0);
    assert_eq!(sdp.bandwidth("CT"), None);
    let mut plain = parse("v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\n");
    plain.set_bandwidth("AS", 1).unwrap();
    assert_eq!(
        text(&plain),
        "v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nb=AS:1\r\nt=0 0\r\n"
    );
    assert_eq!(parse("v=0\r\nb=AS:x\r\n").bandwidth("AS"), None);
}

// ---- media level ----

#[test]
fn media_basics() {
    let mut sdp = parse(TEAMS_OFFER);
    let a = audio(&sdp);
    assert_eq!(a.kind(), "audio");
    assert_eq!(a.port(), 50010);
    assert_eq!(a.port_count(), None);
    assert_eq!(a.proto(), "RTP/SAVP");
    assert_eq!(
        a.formats(),
        ["104", "9", "111", "18", "0", "8", "103", "101", "13", "118"]
    );
    assert!(!a.is_rejected());
    let v = &sdp.media()[1];
    assert_eq!((v.kind(), v.port()), ("video", 0));
    assert!(v.is_rejected());
    audio_mut(&mut sdp).set_port(0);
    assert!(audio(&sdp).is_rejected());
    assert!(text(&sdp).contains("\r\nm=audio 0 RTP/SAVP 104 9 111"));
}

#[test]
fn codecs_from_rtpmap_and_static_table() {
    let sdp = parse(TEAMS_OFFER);
    let codecs = audio(&sdp).codecs();
    assert_eq!(codecs.len(), 10);
    assert_eq!(
        codecs[0],
        Codec {
            pt: "104".into(),
            name: "SILK".into(),
            clock: Some(16000),
            channels: None,
            fmtp: Some("usedtx=0".into()),
        }
    );
    let te = codecs.iter().find(|c| c.pt == "101").unwrap();
    assert_eq!(te.name, "telephone-event");
    assert_eq!(te.fmtp.as_deref(), Some("0-16"));
    assert_eq!(names(audio(&sdp)).last().unwrap(), "CN");

    let plain = parse(
        "v=0\r\nm=audio 1 RTP/AVP 0 3 4 8 9 13 18 10 96 97 x\r\na=rtpmap:97 opus/48000/2\r\n\
         a=fmtp:97 useinbandfec=1\r\n",
    );
    let c = audio(&plain).codecs();
    let summary: Vec<(&str, Option<u32>, Option<u32>)> = c
        .iter()
        .map(|c| (c.name.as_str(), c.clock, c.channels))
        .collect();
    assert_eq!(
        summary,
        [
            ("PCMU", Some(8000), None),
            ("GSM", Some(8000), None),
            ("G723", Some(8000), None),
            ("PCMA", Some(8000), None),
            ("G722", Some(8000), None),
            ("CN", Some(8000), None),
            ("G729", Some(8000), None),
            ("L16", Some(44100), Some(2)),
            ("", None, None),
            ("opus", Some(48000), Some(2)),
            ("x", None, None),
        ]
    );
    assert_eq!(c[9].fmtp.as_deref(), Some("useinbandfec=1"));
    assert_eq!(c[0].fmtp, None);
}

#[test]
fn rtpmap_overrides_static_table() {
    let sdp = parse("v=0\r\nm=audio 1 RTP/AVP 8\r\na=rtpmap:8 weird/16000\r\n");
    assert_eq!(names(audio(&sdp)), ["weird"]);
    // A malformed rtpmap falls back to the table.
    let sdp = parse("v=0\r\nm=audio 1 RTP/AVP 8\r\na=rtpmap:8\r\na=rtpmap:8 /1\r\n");
    assert_eq!(names(audio(&sdp)), ["PCMA"]);
}

#[test]
fn codec_matches() {
    let c = Codec {
        pt: "101".into(),
        name: "telephone-event".into(),
        clock: Some(8000),
        channels: None,
        fmtp: None,
    };
    assert!(c.matches("TELEPHONE-EVENT"));
    assert!(c.matches("101"));
    assert!(!c.matches("100"));
    assert!(!c.matches(""));
}

#[test]
fn keep_codecs() {
    let mut sdp = parse(TEAMS_OFFER);
    let m = audio_mut(&mut sdp);
    assert_eq!(
        m.keep_codecs(&["pcma", "PCMU", "telephone-event"]).unwrap(),
        3
    );
    assert_eq!(m.formats(), ["0", "8", "101"]);
    assert_eq!(names(m), ["PCMU", "PCMA", "telephone-event"]);
    let out = text(&sdp);
    assert!(out.contains("\r\nm=audio 50010 RTP/SAVP 0 8 101\r\n"));
    for gone in [
        "rtpmap:104",
        "fmtp:104",
        "rtpmap:13 ",
        "rtpmap:118",
        "fmtp:18",
        "SIREN",
    ] {
        assert!(!out.contains(gone), "{gone} left in\n{out}");
    }
    for kept in [
        "a=fmtp:101 0-16",
        "a=rtcp-fb:101 nack",
        "a=crypto:2",
        "a=ptime:20",
    ] {
        assert!(out.contains(kept), "{kept} missing");
    }
}

#[test]
fn keep_codecs_refuses_to_empty_the_m_line() {
    let mut sdp = parse(TEAMS_OFFER);
    let before = text(&sdp);
    let err = audio_mut(&mut sdp).keep_codecs(&["opus"]).unwrap_err();
    assert!(matches!(err, SdpError::NoCodecsLeft { .. }));
    assert!(err
        .to_string()
        .starts_with("refusing to remove every codec"));
    assert_eq!(text(&sdp), before);
    let mut empty = parse("v=0\r\nm=audio 0 RTP/AVP\r\n");
    assert_eq!(audio_mut(&mut empty).keep_codecs(&["pcma"]), Ok(0));
}

#[test]
fn remove_codecs() {
    let mut sdp = parse(TEAMS_OFFER);
    let m = audio_mut(&mut sdp);
    assert_eq!(m.remove_codecs(&["cn", "silk", "101"]).unwrap(), 5);
    assert_eq!(m.formats(), ["9", "111", "18", "0", "8"]);
    assert_eq!(m.attribute("rtcp-fb"), None);
    assert_eq!(m.attribute("fmtp"), Some(Some("111 bitrate=16000")));
    assert_eq!(m.remove_codecs(&["nothing"]).unwrap(), 0);
    let before = text(&sdp);
    let m = audio_mut(&mut sdp);
    assert!(m
        .remove_codecs(&["g722", "siren", "g729", "pcmu", "pcma"])
        .is_err());
    assert_eq!(text(&sdp), before);
}

#[test]
fn removing_one_of_duplicate_payload_types_keeps_its_rtpmap() {
    let mut sdp = parse("v=0\r\nm=audio 1 RTP/AVP 96 0 96\r\na=rtpmap:96 opus/48000\r\n");
    // Both 96 entries match, so both go with the rtpmap.
    assert_eq!(audio_mut(&mut sdp).remove_codecs(&["opus"]).unwrap(), 2);
    assert_eq!(text(&sdp), "v=0\r\nm=audio 1 RTP/AVP 0\r\n");
}

#[test]
fn reorder_codecs() {
    let mut sdp = parse(TEAMS_OFFER);
    let m = audio_mut(&mut sdp);
    assert_eq!(m.reorder_codecs(&["PCMA", "pcmu", "silk"]), 4);
    assert_eq!(
        m.formats(),
        ["8", "0", "104", "103", "9", "111", "18", "101", "13", "118"]
    );
    assert_eq!(m.reorder_codecs(&["none"]), 0);
    assert_eq!(m.reorder_codecs(&["8"]), 1);
    assert!(text(&sdp).contains("m=audio 50010 RTP/SAVP 8 0 104 103 9 111 18 101 13 118\r\n"));
    // Reordering into the same order leaves the m= line as written.
    let mut odd = parse("v=0\r\nm=audio  1  RTP/AVP  0 8\r\n");
    assert_eq!(audio_mut(&mut odd).reorder_codecs(&["pcmu"]), 1);
    assert_eq!(text(&odd), "v=0\r\nm=audio  1  RTP/AVP  0 8\r\n");
    assert_eq!(audio_mut(&mut odd).reorder_codecs(&["pcma"]), 1);
    assert_eq!(text(&odd), "v=0\r\nm=audio 1 RTP/AVP 8 0\r\n");
}

#[test]
fn renumber_moves_a_codec_with_its_lines() {
    let mut sdp = parse(ANSWER);
    let m = audio_mut(&mut sdp);
    assert!(m.renumber("101", "96"));
    assert_eq!(m.formats(), ["8", "96"]);
    let text = text(&sdp);
    assert!(text.contains("m=audio 20000 RTP/AVP 8 96\r\n"), "{text}");
    assert!(
        text.contains("a=rtpmap:96 telephone-event/8000\r\n"),
        "{text}"
    );
    assert!(text.contains("a=fmtp:96 0-16\r\n"), "{text}");
    assert!(!text.contains("101"), "{text}");
    let m = audio_mut(&mut sdp);
    assert!(!m.renumber("96", "8"), "8 is taken");
    assert!(!m.renumber("97", "98"), "97 is not offered");
    assert!(!m.renumber("96", "x"), "not a number");
    assert_eq!(m.formats(), ["8", "96"]);
}

#[test]
fn media_attributes() {
    let mut sdp = parse(TEAMS_OFFER);
    let m = audio_mut(&mut sdp);
    assert_eq!(m.attribute("rtcp-mux"), Some(None));
    assert_eq!(m.attribute("ptime"), Some(Some("20")));
    assert_eq!(m.attribute("ice-lite"), None);
    assert_eq!(m.attributes("candidate").len(), 2);
    m.set_attribute("ptime", Some("30")).unwrap();
    assert_eq!(m.attributes("ptime"), [Some("30")]);
    m.set_attribute("maxptime", Some("40")).unwrap();
    m.add_attribute("candidate", Some("2 1 UDP 1 10.0.0.1 9 typ host"))
        .unwrap();
    assert_eq!(m.attributes("candidate").len(), 3);
    assert_eq!(m.remove_attribute("candidate"), 3);
    assert_eq!(m.attributes("candidate").len(), 0);
    let out = text(&sdp);
    assert!(out.contains("a=ptime:30\r\na=sendrecv\r\na=maxptime:40\r\nm=video"));
}

#[test]
fn keep_only_attributes() {
    let mut sdp = parse(TEAMS_OFFER);
    let m = audio_mut(&mut sdp);
    let removed = m.keep_only_attributes(&["rtpmap", "fmtp", "ptime", "sendrecv"]);
    assert_eq!(removed, 11);
    assert_eq!(m.attribute("crypto"), None);
    assert_eq!(m.attribute("ptime"), Some(Some("20")));
    // Non-attribute lines are kept.
    assert_eq!(m.connection().unwrap().address, "52.114.1.10");
    assert!(text(&sdp).contains("m=audio 50010 RTP/SAVP 104 9 111 18 0 8 103 101 13 118\r\nc=IN IP4 52.114.1.10\r\na=rtpmap:104"));
}

#[test]
fn direction_parse_and_as_str() {
    for d in [
        Direction::SendRecv,
        Direction::SendOnly,
        Direction::RecvOnly,
        Direction::Inactive,
    ] {
        assert_eq!(Direction::parse(d.as_str()), Some(d));
        assert_eq!(d.to_string(), d.as_str());
    }
    assert_eq!(Direction::parse("SENDONLY"), None);
    assert_eq!(Direction::parse("rtcp-mux"), None);
}

#[test]
fn direction_media_then_session_then_default() {
    let sdp = parse(TEAMS_OFFER);
    assert_eq!(audio(&sdp).direction(), Direction::SendRecv);
    let hold = parse(
        "v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
         m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\n",
    );
    assert_eq!(audio(&hold).direction(), Direction::SendOnly);
    let mut session =
        parse("v=0\r\na=inactive\r\nm=audio 1 RTP/AVP 0\r\nm=audio 2 RTP/AVP 0\r\na=recvonly\r\n");
    assert_eq!(session.media()[0].direction(), Direction::Inactive);
    assert_eq!(session.media()[1].direction(), Direction::RecvOnly);
    session.remove_attribute("inactive");
    assert_eq!(session.media()[0].direction(), Direction::SendRecv);
    session.set_attribute("sendonly", None).unwrap();
    assert_eq!(session.media()[0].direction(), Direction::SendOnly);
    assert_eq!(
        parse("v=0\r\nm=audio 1 RTP/AVP 0\r\n").media()[0].direction(),
        Direction::SendRecv
    );
}

#[test]
fn set_direction_for_hold_and_resume() {
    let mut sdp = parse(TEAMS_OFFER);
    let m = audio_mut(&mut sdp);
    m.set_direction(Direction::SendOnly);
    assert_eq!(m.direction(), Direction::SendOnly);
    assert_eq!(m.attribute("sendrecv"), None);
    let out = text(&sdp);
    assert!(out.contains("a=ptime:20\r\na=sendonly\r\nm=video"));
    let m = audio_mut(&mut sdp);
    m.add_attribute("inactive", None).unwrap();
    m.set_direction(Direction::SendRecv);
    assert_eq!(m.attribute("inactive"), None);
    assert_eq!(m.attribute("sendonly"), None);
    assert_eq!(text(&sdp), TEAMS_OFFER);
    let video = &mut sdp.media_mut()[1];
    video.set_direction(Direction::Inactive);
    assert!(text(&sdp).ends_with("a=rtpmap:122 X-H264UC/90000\r\na=inactive\r\n"));
}

#[test]
fn media_connection() {
    let mut sdp = parse(TEAMS_OFFER);
    let m = audio_mut(&mut sdp);
    m.set_connection("198.51.100.7").unwrap();
    assert_eq!(m.connection().unwrap().address, "198.51.100.7");
    m.set_connection("2001:db8::7").unwrap();
    assert_eq!(
        m.connection(),
        Some(Connection {
            net_type: "IN".into(),
            addr_type: "IP6".into(),
            address: "2001:db8::7".into()
        })
    );
    let video = &mut sdp.media_mut()[1];
    assert_eq!(video.connection().unwrap().address, "52.114.1.10");
    video.set_connection("sbc.example.net").unwrap();
    let out = text(&sdp);
    assert!(out.contains("\r\nm=audio 50010 RTP/SAVP 104 9 111 18 0 8 103 101 13 118\r\nc=IN IP6 2001:db8::7\r\na=rtcp:50011\r\n"));
    assert!(out.ends_with(
        "m=video 0 RTP/SAVP 122\r\nc=IN IP4 sbc.example.net\r\na=rtpmap:122 X-H264UC/90000\r\n"
    ));
}

#[test]
fn media_connection_after_info_line() {
    let mut sdp = parse("v=0\r\nm=audio 1 RTP/AVP 0\r\ni=voice\r\nb=AS:64\r\na=x\r\n");
    audio_mut(&mut sdp).set_connection("10.1.1.1").unwrap();
    assert_eq!(
        text(&sdp),
        "v=0\r\nm=audio 1 RTP/AVP 0\r\ni=voice\r\nc=IN IP4 10.1.1.1\r\nb=AS:64\r\na=x\r\n"
    );
}

#[test]
fn media_bandwidth() {
    let mut sdp = parse(TEAMS_OFFER);
    let m = audio_mut(&mut sdp);
    assert_eq!(m.bandwidth("TIAS"), None);
    m.set_bandwidth("TIAS", 64000).unwrap();
    m.set_bandwidth("AS", 80).unwrap();
    m.set_bandwidth("TIAS", 32000).unwrap();
    assert_eq!(m.bandwidth("TIAS"), Some(32000));
    assert_eq!(m.bandwidth("AS"), Some(80));
    assert!(text(&sdp).contains("c=IN IP4 52.114.1.10\r\nb=TIAS:32000\r\nb=AS:80\r\na=rtcp:50011"));
    let m = audio_mut(&mut sdp);
    assert_eq!(m.remove_bandwidth("TIAS"), 1);
    assert_eq!(m.remove_bandwidth("AS"), 1);
    assert_eq!(text(&sdp), TEAMS_OFFER);
    let mut bare = parse("v=0\r\nm=audio 1 RTP/AVP 0\r\na=x\r\n");
    audio_mut(&mut bare).set_bandwidth("AS", 1).unwrap();
    assert_eq!(
        text(&bare),
        "v=0\r\nm=audio 1 RTP/AVP 0\r\nb=AS:1\r\na=x\r\n"
    );
}

#[test]
fn crypto_lines() {
    let sdp = parse(TEAMS_OFFER);
    let keys = audio(&sdp).crypto();
    assert_eq!(
        keys,
        [
            Crypto {
                tag: 2,
                suite: "AES_CM_128_HMAC_SHA1_80".into(),
                key_params: "inline:ozdjQIVYgwNkBQCaTDdlfDZX4k2CPvMqXrZm/ia6|2^31|1:1".into(),
                session_params: None,
            },
            Crypto {
                tag: 3,
                suite: "AES_CM_128_HMAC_SHA1_80".into(),
                key_params: "inline:3k6+NwqJ3g2YlkB7GlnXvtTF5fC1tXNUbGl14mFu|2^31".into(),
                session_params: Some("KDR=1".into()),
            },
        ]
    );
    let odd = parse(
        "v=0\r\nm=audio 1 RTP/SAVP 0\r\na=crypto\r\na=crypto:x AES inline:k\r\n\
         a=crypto:1 AES\r\na=crypto:5  AES_256_CM_HMAC_SHA1_32  inline:k  UNENCRYPTED_SRTP \r\n",
    );
    let keys = audio(&odd).crypto();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].tag, 5);
    assert_eq!(keys[0].session_params.as_deref(), Some("UNENCRYPTED_SRTP"));
    assert!(sdp.media()[1].crypto().is_empty());
}

#[test]
fn answer_built_from_offer() {
    // What a rule would do to answer the Teams offer from a plain RTP side.
    let mut sdp = parse(TEAMS_OFFER);
    sdp.set_origin_address("192.0.2.1").unwrap();
    sdp.set_session_version(1).unwrap();
    sdp.set_connection("192.0.2.1").unwrap();
    sdp.remove_bandwidth("CT");
    sdp.remove_attribute("x-mediabw");
    let m = audio_mut(&mut sdp);
    m.keep_codecs(&["pcma", "telephone-event"]).unwrap();
    m.keep_only_attributes(&["rtpmap", "fmtp", "ptime", "sendrecv"]);
    m.remove_attribute("rtpmap");
    m.set_attribute("rtpmap", Some("101 telephone-event/8000"))
        .unwrap();
    m.set_attribute("fmtp", Some("101 0-16")).unwrap();
    m.set_connection("192.0.2.1").unwrap();
    m.set_port(20000);
    assert_eq!(
        text(&sdp),
        "v=0\r\no=- 1713273932 1 IN IP4 192.0.2.1\r\ns=session\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
         m=audio 20000 RTP/SAVP 8 101\r\nc=IN IP4 192.0.2.1\r\na=fmtp:101 0-16\r\na=ptime:20\r\n\
         a=sendrecv\r\na=rtpmap:101 telephone-event/8000\r\n\
         m=video 0 RTP/SAVP 122\r\na=rtpmap:122 X-H264UC/90000\r\n"
    );
    assert_eq!(names(audio(&sdp)), ["PCMA", "telephone-event"]);
}

#[test]
fn media_mut_is_only_a_slice() {
    let mut sdp = parse(ANSWER);
    assert_eq!(sdp.media_mut().len(), 2);
    sdp.media_mut()[1].set_port(0);
    assert_eq!(text(&sdp), ANSWER);
}

// ---- robustness ----

/// Calls every accessor and a copy of every edit; must not panic.
fn exercise(sdp: &Sdp) {
    let _ = sdp.to_bytes();
    let _ = sdp.to_string();
    let _ = sdp.attribute("x-mediabw");
    let _ = sdp.attributes("");
    let _ = sdp.connection();
    let _ = sdp.origin();
    let _ = sdp.bandwidth("CT");
    for m in sdp.media() {
        let _ = (m.kind(), m.port(), m.port_count(), m.proto(), m.formats());
        let _ = (m.is_rejected(), m.direction(), m.connection(), m.crypto());
        let _ = (
            m.attribute("rtcp-mux"),
            m.attributes("crypto"),
            m.bandwidth("AS"),
        );
        for c in m.codecs() {
            let _ = c.matches("pcma");
        }
    }
    let mut e = sdp.clone();
    let _ = e.set_attribute("ice-lite", None);
    let _ = e.add_attribute("x", Some("y"));
    let _ = e.remove_attribute("x-mediabw");
    let _ = e.set_connection("192.0.2.1");
    let _ = e.set_origin_address("2001:db8::1");
    let _ = e.set_session_version(9);
    let _ = e.set_bandwidth("AS", 1);
    let _ = e.remove_bandwidth("CT");
    for m in e.media_mut() {
        let _ = m.reorder_codecs(&["pcma", "101"]);
        let _ = m.remove_codecs(&["cn"]);
        let _ = m.keep_codecs(&["pcma", "pcmu", "telephone-event"]);
        m.set_port(1);
        m.set_direction(Direction::SendOnly);
        let _ = m.set_connection("::1");
        let _ = m.set_bandwidth("TIAS", 1);
        let _ = m.remove_bandwidth("TIAS");
        let _ = m.set_attribute("ptime", Some("20"));
        let _ = m.add_attribute("rtcp-mux", None);
        let _ = m.remove_attribute("crypto");
        let _ = m.keep_only_attributes(&["rtpmap"]);
        let _ = m.codecs();
    }
    // An edited body must still parse.
    if let Err(err) = Sdp::parse(&e.to_bytes()) {
        panic!("edited body no longer parses: {err}");
    }
}

#[test]
fn truncated_and_mutated_offers_never_panic() {
    let base = TEAMS_OFFER.as_bytes();
    for len in 0..=base.len() {
        if let Ok(sdp) = Sdp::parse(&base[..len]) {
            exercise(&sdp);
        }
    }
    let mut body = base.to_vec();
    for i in 0..body.len() {
        let original = body[i];
        for b in [
            0u8, b'\n', b'\r', b' ', b'=', b':', b'/', b'm', b'0', 0xff, 0xc3,
        ] {
            body[i] = b;
            if let Ok(sdp) = Sdp::parse(&body) {
                exercise(&sdp);
            }
        }
        body[i] = original;
    }
}
