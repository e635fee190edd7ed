//! Signal processing for the media plane: G.711 (µ-law, A-law) decoding and encoding, a DTMF
//! detector (Goertzel filters over 20 ms frames) that reports each digit once, and a tone
//! generator.

use std::f32::consts::PI;

/// Decodes a G.711 µ-law byte (ITU-T G.711) to 16-bit linear.
pub fn ulaw_to_linear(byte: u8) -> i16 {
    let byte = !byte;
    let sign = byte & 0x80;
    let exponent = (byte >> 4) & 0x07;
    let mantissa = i32::from(byte & 0x0f);
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    (if sign != 0 { -magnitude } else { magnitude }) as i16
}

/// Decodes a G.711 A-law byte to 16-bit linear.
pub fn alaw_to_linear(byte: u8) -> i16 {
    let byte = byte ^ 0x55;
    let sign = byte & 0x80;
    let exponent = (byte >> 4) & 0x07;
    let mantissa = i32::from(byte & 0x0f);
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    (if sign != 0 { magnitude } else { -magnitude }) as i16
}

/// Encodes 16-bit linear to G.711 µ-law.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut value = i32::from(sample);
    let sign = if value < 0 {
        value = -value;
        0x80
    } else {
        0
    };
    let value = value.min(CLIP) + BIAS;
    let exponent = (0..8).rev().find(|e| value & (0x80 << e) != 0).unwrap_or(0);
    let mantissa = (value >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// Encodes 16-bit linear to G.711 A-law.
pub fn linear_to_alaw(sample: i16) -> u8 {
    let mut value = i32::from(sample);
    let sign = if value >= 0 {
        0x80
    } else {
        value = -value - 1;
        0
    };
    let value = value.min(32767);
    let encoded = if value < 256 {
        (value >> 4) as u8
    } else {
        let exponent = (1..8).rev().find(|e| value & (0x80 << e) != 0).unwrap_or(1);
        ((exponent as u8) << 4) | ((value >> (exponent + 3)) & 0x0f) as u8
    };
    (sign | encoded) ^ 0x55
}

/// Transcodes one G.711 byte between µ-law and A-law (`to_alaw`: µ-law in, A-law out), through
/// tables built once.
pub fn transcode(byte: u8, to_alaw: bool) -> u8 {
    static TABLES: std::sync::OnceLock<([u8; 256], [u8; 256])> = std::sync::OnceLock::new();
    let (u_to_a, a_to_u) = TABLES.get_or_init(|| {
        let mut u_to_a = [0u8; 256];
        let mut a_to_u = [0u8; 256];
        for byte in 0..=255u8 {
            u_to_a[usize::from(byte)] = linear_to_alaw(ulaw_to_linear(byte));
            a_to_u[usize::from(byte)] = linear_to_ulaw(alaw_to_linear(byte));
        }
        (u_to_a, a_to_u)
    });
    if to_alaw {
        u_to_a[usize::from(byte)]
    } else {
        a_to_u[usize::from(byte)]
    }
}

/// The DTMF rows and columns (Hz) and the keypad.
const ROWS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
const COLUMNS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYS: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// The frequencies of a DTMF digit (row, column).
pub fn dtmf_frequencies(digit: char) -> Option<(f32, f32)> {
    let digit = digit.to_ascii_uppercase();
    KEYS.iter().enumerate().find_map(|(row, keys)| {
        keys.iter()
            .position(|k| *k == digit)
            .map(|column| (ROWS[row], COLUMNS[column]))
    })
}

/// The power of one frequency in 8 kHz samples (Goertzel).
pub fn tone_power(samples: &[i16], frequency: f32) -> f32 {
    goertzel(samples, frequency, RATE, 0.0)
}

/// The power of one frequency in a block of samples (Goertzel), around their mean `offset`.
fn goertzel(samples: &[i16], frequency: f32, rate: f32, offset: f32) -> f32 {
    let coefficient = 2.0 * (2.0 * PI * frequency / rate).cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for sample in samples {
        let s0 = f32::from(*sample) - offset + coefficient * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coefficient * s1 * s2
}

/// Finds DTMF digits in 8 kHz audio, frame by frame, and reports each digit once, when it
/// ends, with its duration. A digit must last two frames (40 ms at 20 ms frames) to count, and
/// ends after two frames without it: one frame missing from a digit that counts is bridged.
/// A frame holds a digit when about 60 % or more of it carries the tones, so an interruption
/// of up to 10 ms (a jitter buffer's or concealment's dropout, a cut at a frame edge) misses
/// at most one frame and is bridged, while a pause of 40 ms, the shortest between digits
/// (ITU-T Q.24), always misses two frames in a row.
#[derive(Debug, Default)]
pub struct DtmfDetector {
    /// The digit being heard, and for how many samples so far.
    current: Option<(char, usize)>,
    /// Samples of the one frame since that missed the digit (0: none), bridged if it returns.
    dropout: usize,
}

/// Samples per second of G.711.
const RATE: f32 = 8000.0;
/// The weaker of the two tones may be at most this much below the stronger (twist), as power.
const MAX_TWIST: f32 = 6.3; // 8 dB
/// Each tone must stand this far above the others of its group, as power.
const MIN_GROUP_RATIO: f32 = 6.3; // 8 dB
/// The two tones must carry this share of the frame's energy.
const MIN_TONE_SHARE: f32 = 0.6;
/// The quietest frame energy (per sample) that can hold a digit (about -45 dBm0).
const MIN_ENERGY: f32 = 1.0e3;

impl DtmfDetector {
    /// True while a digit is being heard (its tones, or a one-frame dropout in them).
    pub fn hearing(&self) -> bool {
        self.current.is_some()
    }

    /// Feeds one frame of linear samples; returns (digit, duration in ms) when a digit ended.
    pub fn push(&mut self, frame: &[i16]) -> Option<(char, u32)> {
        let heard = detect(frame);
        let counts = 2 * frame.len().max(1);
        match (self.current, heard) {
            (Some((digit, samples)), Some(now)) if now == digit => {
                let dropout = std::mem::take(&mut self.dropout);
                self.current = Some((digit, samples + dropout + frame.len()));
                None
            }
            (Some((_, samples)), None) if self.dropout == 0 && samples >= counts => {
                self.dropout = frame.len();
                None
            }
            (previous, now) => {
                self.current = now.map(|d| (d, frame.len()));
                self.dropout = 0;
                previous
                    .filter(|(_, samples)| *samples >= counts)
                    .map(|(digit, samples)| (digit, (samples as f32 / RATE * 1000.0) as u32))
            }
        }
    }
}

/// The digit in one frame, if any.
fn detect(frame: &[i16]) -> Option<char> {
    if frame.is_empty() {
        return None;
    }
    // Some sources carry a DC offset: measure everything around the mean.
    let mean = frame.iter().map(|s| f32::from(*s)).sum::<f32>() / frame.len() as f32;
    let energy: f32 = frame
        .iter()
        .map(|s| (f32::from(*s) - mean) * (f32::from(*s) - mean))
        .sum();
    if energy / (frame.len() as f32) < MIN_ENERGY {
        return None;
    }
    let rows = ROWS.map(|f| goertzel(frame, f, RATE, mean));
    let columns = COLUMNS.map(|f| goertzel(frame, f, RATE, mean));
    let strongest = |powers: &[f32; 4]| {
        let (index, power) =
            powers.iter().enumerate().fold(
                (0, 0.0f32),
                |best, (i, p)| if *p > best.1 { (i, *p) } else { best },
            );
        let others_ok = powers
            .iter()
            .enumerate()
            .all(|(i, p)| i == index || p * MIN_GROUP_RATIO < power);
        (index, power, others_ok)
    };
    let (row, row_power, row_clear) = strongest(&rows);
    let (column, column_power, column_clear) = strongest(&columns);
    let twist_ok = row_power < column_power * MAX_TWIST && column_power < row_power * MAX_TWIST;
    // Goertzel power of a sine of amplitude A over N samples is about (A N / 2)^2; the
    // frame energy of that sine is A^2 N / 2: the tones' share is 2 P / (N E).
    let n = frame.len() as f32;
    let share = 2.0 * (row_power + column_power) / (n * energy);
    (row_clear && column_clear && twist_ok && share >= MIN_TONE_SHARE).then(|| KEYS[row][column])
}

/// A two-tone signal (DTMF or a call-progress tone), amplitudes in linear units, 8 kHz.
pub fn tones(frequencies: &[f32], amplitudes: &[f32], samples: usize, start: usize) -> Vec<i16> {
    (start..start + samples)
        .map(|n| {
            let t = n as f32 / RATE;
            let value: f32 = frequencies
                .iter()
                .zip(amplitudes)
                .map(|(f, a)| a * (2.0 * PI * f * t).sin())
                .sum();
            value.clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic noise source.
    fn noise(samples: usize, amplitude: f32, seed: &mut u32) -> Vec<f32> {
        (0..samples)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 17;
                *seed ^= *seed << 5;
                (*seed as f32 / u32::MAX as f32 - 0.5) * 2.0 * amplitude
            })
            .collect()
    }

    #[test]
    fn transcoding_keeps_the_signal() {
        for byte in 0..=255u8 {
            let there = ulaw_to_linear(byte);
            let back = alaw_to_linear(transcode(byte, true));
            // A-law's step at that level bounds the error.
            let step = (i32::from(there).abs() / 16).max(16);
            assert!(
                (i32::from(there) - i32::from(back)).abs() <= step,
                "{byte:#x}"
            );
        }
        assert_eq!(transcode(0xd5, false), 0xfe, "A-law +8 is µ-law +8");
        assert_eq!(
            transcode(0xff, true),
            0xd5,
            "µ-law zero is A-law's smallest positive"
        );
    }

    #[test]
    fn g711_round_trips_and_matches_reference_points() {
        // Reference codes: µ-law 0xFF and A-law 0xD5 are (near) zero; full scale ends.
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xaa), 32256);
        for byte in 0..=255u8 {
            // µ-law has two zeros (0x7F, 0xFF); zero encodes as 0xFF.
            let ulaw = if byte == 0x7f { 0xff } else { byte };
            assert_eq!(
                linear_to_ulaw(ulaw_to_linear(byte)),
                ulaw,
                "µ-law {byte:#x}"
            );
            assert_eq!(
                linear_to_alaw(alaw_to_linear(byte)),
                byte,
                "A-law {byte:#x}"
            );
        }
    }

    fn frames_of(
        digits: &str,
        tone_ms: usize,
        gap_ms: usize,
        twist_db: f32,
        noise_amp: f32,
    ) -> Vec<Vec<i16>> {
        let mut seed = 0x1234_5678;
        let mut audio = Vec::new();
        for digit in digits.chars() {
            let (row, column) = dtmf_frequencies(digit).expect("digit");
            let column_amp = 6000.0;
            let row_amp = column_amp * 10f32.powf(-twist_db / 20.0);
            let tone = tones(
                &[row, column],
                &[row_amp, column_amp],
                tone_ms * 8,
                audio.len(),
            );
            audio.extend(tone);
            audio.extend(std::iter::repeat_n(0i16, gap_ms * 8));
        }
        let noise = noise(audio.len(), noise_amp, &mut seed);
        let audio: Vec<i16> = audio
            .iter()
            .zip(noise)
            .map(|(s, n)| (f32::from(*s) + n).clamp(-32768.0, 32767.0) as i16)
            .collect();
        audio.chunks(160).map(<[i16]>::to_vec).collect()
    }

    fn detect_all(frames: &[Vec<i16>]) -> Vec<(char, u32)> {
        let mut detector = DtmfDetector::default();
        let mut out: Vec<(char, u32)> = frames.iter().filter_map(|f| detector.push(f)).collect();
        // A digit ends after two frames without it.
        out.extend(detector.push(&[0; 160]));
        out.extend(detector.push(&[0; 160]));
        out
    }

    /// `digits` as 100 ms tones 100 ms apart, each with its samples `cut` (a range from the
    /// tone's start) silent.
    fn cut_digits(digits: &str, cut: std::ops::Range<usize>) -> Vec<Vec<i16>> {
        let mut audio = Vec::new();
        for digit in digits.chars() {
            let (row, column) = dtmf_frequencies(digit).expect("digit");
            let mut tone = tones(&[row, column], &[6000.0, 6000.0], 800, audio.len());
            tone[cut.clone()].fill(0);
            audio.extend(tone);
            audio.extend(std::iter::repeat_n(0i16, 800));
        }
        audio.chunks(160).map(<[i16]>::to_vec).collect()
    }

    #[test]
    fn a_dropout_of_a_frame_or_of_10_ms_anywhere_does_not_split_a_digit() {
        // A whole frame of silence in the tone (an echoing phone's jitter buffer running dry
        // for one frame), and 10 ms interruptions at every offset.
        let found = detect_all(&cut_digits("2013785496", 320..480));
        assert_eq!(
            found.iter().map(|(d, _)| d).collect::<String>(),
            "2013785496"
        );
        assert!(found.iter().all(|(_, ms)| *ms == 100), "{found:?}");
        for start in (160..640).step_by(10) {
            let found = detect_all(&cut_digits("7", start..start + 80));
            assert_eq!(
                found.iter().map(|(d, _)| d).collect::<String>(),
                "7",
                "{start}"
            );
        }
    }

    #[test]
    fn a_pause_of_40_ms_anywhere_separates_a_repeated_digit() {
        let (row, column) = dtmf_frequencies('5').expect("digit");
        for offset in (0..160).step_by(10) {
            // 80 ms of "5", 40 ms of silence, 80 ms of "5", at every offset from the frames.
            let mut audio = vec![0i16; offset];
            audio.extend(tones(&[row, column], &[6000.0, 6000.0], 640, 0));
            audio.extend(std::iter::repeat_n(0i16, 320));
            audio.extend(tones(&[row, column], &[6000.0, 6000.0], 640, 0));
            audio.extend(std::iter::repeat_n(0i16, 800));
            let frames: Vec<Vec<i16>> = audio.chunks(160).map(<[i16]>::to_vec).collect();
            let found = detect_all(&frames);
            assert_eq!(
                found.iter().map(|(d, _)| d).collect::<String>(),
                "55",
                "{offset}"
            );
        }
    }

    #[test]
    fn every_digit_once_in_order_with_its_duration() {
        let found = detect_all(&frames_of("2013785496*#ABCD", 100, 60, 0.0, 0.0));
        let digits: String = found.iter().map(|(d, _)| d).collect();
        assert_eq!(digits, "2013785496*#ABCD");
        assert!(
            found.iter().all(|(_, ms)| (80..=120).contains(ms)),
            "{found:?}"
        );
    }

    #[test]
    fn noise_and_twist_within_limits_are_tolerated() {
        // 4 dB twist and noise about 20 dB below the tones.
        let found = detect_all(&frames_of("159#", 80, 60, 4.0, 600.0));
        assert_eq!(found.iter().map(|(d, _)| d).collect::<String>(), "159#");
    }

    #[test]
    fn speech_like_and_short_or_single_tones_are_not_digits() {
        // A single 1 kHz tone, a too-short digit (20 ms), noise alone: nothing.
        let single = tones(&[1000.0], &[8000.0], 1600, 0);
        assert!(
            detect_all(&single.chunks(160).map(<[i16]>::to_vec).collect::<Vec<_>>()).is_empty()
        );
        assert!(detect_all(&frames_of("5", 20, 60, 0.0, 0.0)).is_empty());
        let mut seed = 7;
        let hiss: Vec<i16> = noise(8000, 8000.0, &mut seed)
            .iter()
            .map(|s| *s as i16)
            .collect();
        assert!(detect_all(&hiss.chunks(160).map(<[i16]>::to_vec).collect::<Vec<_>>()).is_empty());
        // Twist far past the limit (20 dB) is not a digit.
        assert!(detect_all(&frames_of("5", 100, 60, 20.0, 0.0)).is_empty());
    }

    #[test]
    fn generated_tones_have_their_frequencies() {
        let samples = tones(&[425.0], &[10000.0], 800, 0);
        let on = goertzel(&samples, 425.0, RATE, 0.0);
        let off = goertzel(&samples, 1000.0, RATE, 0.0);
        assert!(on > 1000.0 * off, "{on} vs {off}");
    }
}
