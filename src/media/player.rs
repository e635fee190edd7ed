//! Sounds the relay plays toward a leg, 20 ms at a time: ringback (tone plans) and DTMF digits
//! (RFC 4733 events when the leg takes telephone-event, tones in its G.711 audio otherwise).

use super::dsp;
use crate::config::TonePlan;
use std::collections::VecDeque;

/// A tone plan's sound: frequencies (Hz) with their amplitudes (linear), and its cadence as
/// (on, off) milliseconds, repeated.
struct ToneSpec {
    frequencies: &'static [f32],
    amplitudes: &'static [f32],
    cadence_ms: &'static [(usize, usize)],
}

impl TonePlan {
    fn spec(self) -> ToneSpec {
        match self {
            TonePlan::Itu => ToneSpec {
                frequencies: &[425.0],
                amplitudes: &[4000.0],
                cadence_ms: &[(1000, 4000)],
            },
            TonePlan::NorthAmerica => ToneSpec {
                frequencies: &[440.0, 480.0],
                amplitudes: &[2500.0, 2500.0],
                cadence_ms: &[(2000, 4000)],
            },
            TonePlan::Uk => ToneSpec {
                frequencies: &[400.0, 450.0],
                amplitudes: &[2500.0, 2500.0],
                cadence_ms: &[(400, 200), (400, 2000)],
            },
            TonePlan::France => ToneSpec {
                frequencies: &[440.0],
                amplitudes: &[4000.0],
                cadence_ms: &[(1500, 3500)],
            },
            // 400 Hz modulated at 16 Hz (depth 0.5): the carrier and two side tones.
            TonePlan::Japan => ToneSpec {
                frequencies: &[400.0, 384.0, 416.0],
                amplitudes: &[3000.0, 750.0, 750.0],
                cadence_ms: &[(1000, 2000)],
            },
        }
    }

    /// Whether sample `n` (8 kHz, from the start) is in an "on" part of the cadence.
    fn sounding(&self, n: usize) -> bool {
        let cadence = self.spec().cadence_ms;
        let cycle: usize = cadence.iter().map(|(on, off)| (on + off) * 8).sum();
        let mut at = n % cycle.max(1);
        for (on, off) in cadence {
            if at < (on + off) * 8 {
                return at < on * 8;
            }
            at -= (on + off) * 8;
        }
        false
    }
}

/// What to play.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sound {
    Ringback(TonePlan),
    /// Ends the ringback playing toward the leg, if any (digits playing go on): a transfer
    /// answered or failed.
    EndRingback,
    /// DTMF digits, each lasting `duration_ms` (rounded to 20 ms, 40 ms to 5 s).
    Digits {
        digits: String,
        duration_ms: u32,
    },
}

/// One 20 ms step of a player.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this RTP packet.
    Packet(Vec<u8>),
    /// Nothing to send this time (a gap between digits).
    Silence,
    /// The sound is over.
    Done,
}

const FRAME: usize = 160;
/// A digit's end is sent 3 times; 60 ms pass before the next digit.
const END_REPEATS: u16 = 3;
const GAP_PACKETS: u16 = 3;

/// The 20 ms packets a digit of `duration_ms` lasts (2 to 250).
fn digit_packets(duration_ms: u32) -> u16 {
    u16::try_from((duration_ms / 20).clamp(2, 250)).unwrap_or(250)
}

#[derive(Debug)]
enum State {
    Ringback {
        plan: TonePlan,
        sample: usize,
    },
    Digits {
        /// Each digit with the packets it lasts.
        digits: VecDeque<(char, u16)>,
        /// Packets sent for the current digit (including ends and gap).
        step: u16,
        event_timestamp: u32,
    },
}

/// Plays one sound toward a leg as its own RTP stream.
#[derive(Debug)]
pub struct Player {
    state: State,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
}

impl Player {
    /// A player with its own SSRC and random-looking sequence start from `seed`.
    pub fn new(sound: Sound, seed: u32) -> Player {
        let state = match sound {
            Sound::Ringback(plan) => State::Ringback { plan, sample: 0 },
            // Nothing to play (a stream never starts a player for it).
            Sound::EndRingback => State::Digits {
                digits: VecDeque::new(),
                step: 0,
                event_timestamp: 0,
            },
            Sound::Digits {
                digits,
                duration_ms,
            } => State::Digits {
                digits: digits
                    .chars()
                    .map(|d| (d, digit_packets(duration_ms)))
                    .collect(),
                step: 0,
                event_timestamp: 0,
            },
        };
        Player {
            state,
            ssrc: seed | 1,
            seq: (seed >> 16) as u16,
            timestamp: seed.rotate_left(7),
        }
    }

    /// True while it plays ringback (which real media from the other leg replaces).
    pub fn is_ringback(&self) -> bool {
        matches!(self.state, State::Ringback { .. })
    }

    /// True while it plays digits.
    pub fn plays_digits(&self) -> bool {
        matches!(self.state, State::Digits { .. })
    }

    /// Queues more digits after the ones playing; any other sound is handed back (it
    /// replaces this one).
    pub fn queue(&mut self, sound: Sound) -> Option<Sound> {
        match (&mut self.state, sound) {
            (
                State::Digits { digits, .. },
                Sound::Digits {
                    digits: more,
                    duration_ms,
                },
            ) => {
                digits.extend(more.chars().map(|d| (d, digit_packets(duration_ms))));
                None
            }
            (_, sound) => Some(sound),
        }
    }

    /// The next 20 ms toward a leg whose G.711 payload type is `audio_pt` and whose
    /// telephone-event payload type is `dtmf_pt`.
    pub fn next(&mut self, audio_pt: Option<u8>, dtmf_pt: Option<u8>) -> Step {
        match &mut self.state {
            State::Ringback { plan, sample } => {
                let Some(pt) = audio_pt else {
                    return Step::Done;
                };
                let spec = plan.spec();
                let pcm = if plan.sounding(*sample) {
                    dsp::tones(spec.frequencies, spec.amplitudes, FRAME, *sample)
                } else {
                    vec![0; FRAME]
                };
                *sample += FRAME;
                let packet = self.audio(pt, &pcm);
                Step::Packet(packet)
            }
            State::Digits {
                digits,
                step,
                event_timestamp,
            } => {
                let Some(&(digit, digit_packets)) = digits.front() else {
                    return Step::Done;
                };
                let total = digit_packets + END_REPEATS + GAP_PACKETS;
                let current = *step;
                *step += 1;
                if *step == total {
                    digits.pop_front();
                    *step = 0;
                }
                if current == 0 {
                    *event_timestamp = self.timestamp;
                }
                let event_timestamp = *event_timestamp;
                if current >= digit_packets + END_REPEATS {
                    self.timestamp = self.timestamp.wrapping_add(FRAME as u32);
                    return Step::Silence;
                }
                match (dtmf_pt, audio_pt) {
                    (Some(pt), _) => {
                        let end = current >= digit_packets - 1;
                        let duration = (current.min(digit_packets - 1) + 1) * FRAME as u16;
                        let Some(event) = event_code(digit) else {
                            return Step::Silence;
                        };
                        let payload = [
                            event,
                            if end { 0x80 | 10 } else { 10 },
                            (duration >> 8) as u8,
                            duration as u8,
                        ];
                        if current < digit_packets {
                            self.timestamp = self.timestamp.wrapping_add(FRAME as u32);
                        }
                        Step::Packet(self.rtp(pt, current == 0, event_timestamp, &payload))
                    }
                    (None, Some(pt)) => {
                        let pcm = if current < digit_packets {
                            match dsp::dtmf_frequencies(digit) {
                                Some((row, column)) => dsp::tones(
                                    &[row, column],
                                    &[6000.0, 6000.0],
                                    FRAME,
                                    usize::from(current) * FRAME,
                                ),
                                None => vec![0; FRAME],
                            }
                        } else {
                            vec![0; FRAME]
                        };
                        Step::Packet(self.audio(pt, &pcm))
                    }
                    (None, None) => Step::Done,
                }
            }
        }
    }

    fn audio(&mut self, pt: u8, pcm: &[i16]) -> Vec<u8> {
        let encode = if pt == 0 {
            dsp::linear_to_ulaw
        } else {
            dsp::linear_to_alaw
        };
        let payload: Vec<u8> = pcm.iter().map(|s| encode(*s)).collect();
        let timestamp = self.timestamp;
        self.timestamp = self.timestamp.wrapping_add(FRAME as u32);
        self.rtp(pt, false, timestamp, &payload)
    }

    fn rtp(&mut self, pt: u8, marker: bool, timestamp: u32, payload: &[u8]) -> Vec<u8> {
        let mut packet = Vec::with_capacity(12 + payload.len());
        packet.push(0x80);
        packet.push(if marker { 0x80 | pt } else { pt });
        packet.extend_from_slice(&self.seq.to_be_bytes());
        packet.extend_from_slice(&timestamp.to_be_bytes());
        packet.extend_from_slice(&self.ssrc.to_be_bytes());
        packet.extend_from_slice(payload);
        self.seq = self.seq.wrapping_add(1);
        packet
    }
}

/// The RFC 4733 event code of a digit.
fn event_code(digit: char) -> Option<u8> {
    match digit.to_ascii_uppercase() {
        d @ '0'..='9' => Some(d as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        d @ 'A'..='D' => Some(d as u8 - b'A' + 12),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(digits: &str) -> Sound {
        Sound::Digits {
            digits: digits.into(),
            duration_ms: 100,
        }
    }

    fn all(player: &mut Player, audio: Option<u8>, dtmf: Option<u8>) -> Vec<Step> {
        let mut out = Vec::new();
        loop {
            match player.next(audio, dtmf) {
                Step::Done => return out,
                step => out.push(step),
            }
            assert!(out.len() < 1000, "a digit player ends");
        }
    }

    #[test]
    fn digits_as_rfc4733_events() {
        let mut player = Player::new(digits("5#"), 0x1234_5678);
        let steps = all(&mut player, Some(8), Some(101));
        assert_eq!(steps.len(), 22, "two digits of 11 steps");
        let packets: Vec<&Vec<u8>> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Packet(p) => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(packets.len(), 16);
        assert!(packets.iter().all(|p| p[1] & 0x7f == 101 && p.len() == 16));
        assert_eq!(
            packets[0][1],
            0x80 | 101,
            "marker on the first packet of an event"
        );
        assert_eq!(packets[0][12], 5);
        let ends: Vec<_> = packets[..8].iter().filter(|p| p[13] & 0x80 != 0).collect();
        assert_eq!(ends.len(), 4, "the last packet and three repeats say end");
        let timestamps: Vec<&[u8]> = packets[..8].iter().map(|p| &p[4..8]).collect();
        assert!(
            timestamps.windows(2).all(|w| w[0] == w[1]),
            "one event, one timestamp"
        );
        assert_eq!(u16::from_be_bytes([packets[7][14], packets[7][15]]), 800);
        assert_eq!(packets[8][12], 11, "then #");
        let seqs: Vec<u16> = packets
            .iter()
            .map(|p| u16::from_be_bytes([p[2], p[3]]))
            .collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
    }

    #[test]
    fn digits_as_tones_are_heard_by_the_detector() {
        let mut player = Player::new(digits("73"), 99);
        let mut detector = dsp::DtmfDetector::default();
        let mut heard = String::new();
        for step in all(&mut player, Some(8), None) {
            if let Step::Packet(packet) = step {
                let pcm: Vec<i16> = packet[12..]
                    .iter()
                    .map(|b| dsp::alaw_to_linear(*b))
                    .collect();
                heard.extend(detector.push(&pcm).map(|(d, _)| d));
            }
        }
        for _ in 0..2 {
            heard.extend(detector.push(&[0; 160]).map(|(d, _)| d));
        }
        assert_eq!(heard, "73");
    }

    #[test]
    fn ringback_follows_its_cadence() {
        let mut player = Player::new(Sound::Ringback(TonePlan::Itu), 1);
        assert!(player.is_ringback());
        let loud = |step: Step| match step {
            Step::Packet(p) => p[12..]
                .iter()
                .map(|b| i32::from(dsp::ulaw_to_linear(*b)).abs())
                .max()
                .unwrap_or(0),
            _ => -1,
        };
        let levels: Vec<i32> = (0..250).map(|_| loud(player.next(Some(0), None))).collect();
        assert!(levels[..50].iter().all(|l| *l > 1000), "1 s of tone");
        assert!(levels[50..250].iter().all(|l| *l < 10), "4 s of silence");
        assert!(loud(player.next(Some(0), None)) > 1000, "and again");
        assert_eq!(
            Player::new(Sound::Ringback(TonePlan::NorthAmerica), 1).next(None, None),
            Step::Done
        );
    }

    #[test]
    fn national_plans_have_their_cadence_and_frequencies() {
        /// A plan, the 20 ms frames (from, to) sounding in its first cycle, and the
        /// frequencies that must be there.
        type Expected = (TonePlan, &'static [(usize, usize)], &'static [f32]);
        let plans: [Expected; 4] = [
            (TonePlan::NorthAmerica, &[(0, 100)], &[440.0, 480.0]),
            (TonePlan::Uk, &[(0, 20), (30, 50)], &[400.0, 450.0]),
            (TonePlan::France, &[(0, 75)], &[440.0]),
            (TonePlan::Japan, &[(0, 50)], &[400.0, 384.0, 416.0]),
        ];
        for (plan, on, frequencies) in plans {
            let mut player = Player::new(Sound::Ringback(plan), 7);
            let spec = plan.spec();
            let cycle: usize = spec.cadence_ms.iter().map(|(a, b)| (a + b) / 20).sum();
            let mut pcm = Vec::new();
            for frame in 0..cycle {
                let Step::Packet(packet) = player.next(Some(8), None) else {
                    panic!("{plan:?}: a packet every 20 ms");
                };
                let samples: Vec<i16> = packet[12..]
                    .iter()
                    .map(|b| dsp::alaw_to_linear(*b))
                    .collect();
                let loud = samples.iter().any(|s| s.unsigned_abs() > 500);
                let expected = on.iter().any(|(from, to)| (*from..*to).contains(&frame));
                assert_eq!(loud, expected, "{plan:?} frame {frame}");
                if frame < 10 {
                    pcm.extend(samples);
                }
            }
            // The plan's frequencies carry the sound, a neighbour 60 Hz away does not.
            let power = |f: f32| dsp::tone_power(&pcm, f);
            for f in frequencies {
                assert!(
                    power(*f) > 20.0 * power(f + 60.0).max(1.0),
                    "{plan:?} {f} Hz"
                );
            }
        }
    }
}
