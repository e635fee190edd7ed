//! Lua 5.4 string patterns, re-implemented so that matching counts against the hook's
//! instruction budget. Lua's own matcher runs inside C where no count hook fires: a pattern
//! like `.-.-.-.-b` on a few kilobytes of untrusted text runs for minutes. This one charges
//! every matching step to the [`Budget`] and stops with the budget error.
//!
//! `string.find`, `string.match`, `string.gmatch` and `string.gsub` are replaced by these
//! functions, with Lua's semantics (anchors, captures, position captures, `%b`, `%f`,
//! back-references, `gsub` with a string, table or function replacement).

use super::sandbox::{Budget, BUDGET_EXCEEDED};
use mlua::{Function, Lua, LuaString, MultiValue, Table, Value};

const MAX_CAPTURES: usize = 32;
const MAX_DEPTH: usize = 200;
/// Steps charged to the budget at a time.
const CHARGE: u64 = 256;
const SPECIALS: &[u8] = b"^$*+?.([%-";

#[derive(Clone, Copy)]
enum Capture {
    /// Start offset, length.
    Closed(usize, usize),
    Open(usize),
    Position(usize),
}

struct Matcher<'a> {
    src: &'a [u8],
    pat: &'a [u8],
    depth: usize,
    captures: Vec<Capture>,
    steps: u64,
    budget: &'a Budget,
}

type MatchResult<T> = Result<T, String>;

fn class_matches(class: u8, c: u8) -> bool {
    let lower = class.to_ascii_lowercase();
    let result = match lower {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        b's' => c == b' ' || (9..=13).contains(&c),
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        _ => return class == c,
    };
    if class.is_ascii_uppercase() {
        !result
    } else {
        result
    }
}

impl<'a> Matcher<'a> {
    fn step(&mut self) -> MatchResult<()> {
        self.steps += 1;
        if self.steps >= CHARGE {
            self.budget.charge(self.steps);
            self.steps = 0;
            if self.budget.exhausted() {
                return Err(BUDGET_EXCEEDED.to_string());
            }
        }
        Ok(())
    }

    /// End of the single-character class starting at `p`.
    fn class_end(&self, mut p: usize) -> MatchResult<usize> {
        let pat = self.pat;
        let c = pat[p];
        p += 1;
        if c == b'%' {
            if p >= pat.len() {
                return Err("malformed pattern (ends with '%')".into());
            }
            return Ok(p + 1);
        }
        if c == b'[' {
            if pat.get(p) == Some(&b'^') {
                p += 1;
            }
            // The first character of the set is taken as is, so "[]]" is a set of one ']'.
            loop {
                if p >= pat.len() {
                    return Err("malformed pattern (missing ']')".into());
                }
                let cc = pat[p];
                p += 1;
                if cc == b'%' && p < pat.len() {
                    p += 1;
                }
                if p >= pat.len() {
                    return Err("malformed pattern (missing ']')".into());
                }
                if pat[p] == b']' {
                    return Ok(p + 1);
                }
            }
        }
        Ok(p)
    }

    /// Does `c` match the set `[...]` spanning `p..end` (p at '[', end after ']')?
    fn match_set(&self, c: u8, mut p: usize, end: usize) -> bool {
        let pat = self.pat;
        let last = end - 1; // the closing ']'
        let mut found = true;
        if pat[p + 1] == b'^' {
            found = false;
            p += 1;
        }
        loop {
            p += 1;
            if p >= last {
                return !found;
            }
            if pat[p] == b'%' {
                p += 1;
                if class_matches(pat[p], c) {
                    return found;
                }
            } else if pat[p + 1] == b'-' && p + 2 < last {
                p += 2;
                if pat[p - 2] <= c && c <= pat[p] {
                    return found;
                }
            } else if pat[p] == c {
                return found;
            }
        }
    }

    fn single_match(&self, s: usize, p: usize, ep: usize) -> bool {
        let Some(&c) = self.src.get(s) else {
            return false;
        };
        match self.pat[p] {
            b'.' => true,
            b'%' => class_matches(self.pat[p + 1], c),
            b'[' => self.match_set(c, p, ep),
            literal => literal == c,
        }
    }

    fn do_match(&mut self, mut s: usize, mut p: usize) -> MatchResult<Option<usize>> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err("pattern too complex".into());
        }
        let result = loop {
            self.step()?;
            if p >= self.pat.len() {
                break Some(s);
            }
            match self.pat[p] {
                b'(' => {
                    break if self.pat.get(p + 1) == Some(&b')') {
                        self.start_capture(s, p + 2, None)?
                    } else {
                        self.start_capture(s, p + 1, Some(()))?
                    };
                }
                b')' => break self.end_capture(s, p + 1)?,
                b'$' if p + 1 == self.pat.len() => {
                    break (s == self.src.len()).then_some(s);
                }
                b'%' if self.pat.get(p + 1) == Some(&b'b') => {
                    match self.match_balance(s, p + 2)? {
                        Some(next) => {
                            s = next;
                            p += 4;
                            continue;
                        }
                        None => break None,
                    }
                }
                b'%' if self.pat.get(p + 1) == Some(&b'f') => {
                    p += 2;
                    if self.pat.get(p) != Some(&b'[') {
                        return Err("missing '[' after '%f' in pattern".into());
                    }
                    let ep = self.class_end(p)?;
                    let previous = if s == 0 { 0 } else { self.src[s - 1] };
                    let current = self.src.get(s).copied().unwrap_or(0);
                    if !self.match_set(previous, p, ep) && self.match_set(current, p, ep) {
                        p = ep;
                        continue;
                    }
                    break None;
                }
                b'%' if self.pat.get(p + 1).is_some_and(u8::is_ascii_digit) => {
                    match self.match_capture(s, self.pat[p + 1])? {
                        Some(next) => {
                            s = next;
                            p += 2;
                            continue;
                        }
                        None => break None,
                    }
                }
                _ => {
                    let ep = self.class_end(p)?;
                    let matched = self.single_match(s, p, ep);
                    match self.pat.get(ep) {
                        Some(b'?') => {
                            if matched {
                                if let Some(end) = self.do_match(s + 1, ep + 1)? {
                                    break Some(end);
                                }
                            }
                            p = ep + 1;
                            continue;
                        }
                        Some(b'+') => {
                            break if matched {
                                self.max_expand(s + 1, p, ep)?
                            } else {
                                None
                            };
                        }
                        Some(b'*') => break self.max_expand(s, p, ep)?,
                        Some(b'-') => break self.min_expand(s, p, ep)?,
                        _ => {
                            if !matched {
                                break None;
                            }
                            s += 1;
                            p = ep;
                            continue;
                        }
                    }
                }
            }
        };
        self.depth -= 1;
        Ok(result)
    }

    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> MatchResult<Option<usize>> {
        let mut count = 0;
        while self.single_match(s + count, p, ep) {
            self.step()?;
            count += 1;
        }
        loop {
            if let Some(end) = self.do_match(s + count, ep + 1)? {
                return Ok(Some(end));
            }
            if count == 0 {
                return Ok(None);
            }
            count -= 1;
        }
    }

    fn min_expand(&mut self, mut s: usize, p: usize, ep: usize) -> MatchResult<Option<usize>> {
        loop {
            if let Some(end) = self.do_match(s, ep + 1)? {
                return Ok(Some(end));
            }
            if self.single_match(s, p, ep) {
                s += 1;
            } else {
                return Ok(None);
            }
        }
    }

    fn match_balance(&mut self, s: usize, p: usize) -> MatchResult<Option<usize>> {
        if p + 1 >= self.pat.len() {
            return Err("malformed pattern (missing arguments to '%b')".into());
        }
        let (open, close) = (self.pat[p], self.pat[p + 1]);
        if self.src.get(s) != Some(&open) {
            return Ok(None);
        }
        let mut depth = 1;
        let mut i = s + 1;
        while i < self.src.len() {
            self.step()?;
            let c = self.src[i];
            if c == close {
                depth -= 1;
                if depth == 0 {
                    return Ok(Some(i + 1));
                }
            } else if c == open {
                depth += 1;
            }
            i += 1;
        }
        Ok(None)
    }

    fn start_capture(
        &mut self,
        s: usize,
        p: usize,
        text: Option<()>,
    ) -> MatchResult<Option<usize>> {
        if self.captures.len() >= MAX_CAPTURES {
            return Err("too many captures".into());
        }
        self.captures.push(match text {
            Some(()) => Capture::Open(s),
            None => Capture::Position(s),
        });
        let result = self.do_match(s, p)?;
        if result.is_none() {
            self.captures.pop();
        }
        Ok(result)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> MatchResult<Option<usize>> {
        let open = self
            .captures
            .iter()
            .rposition(|c| matches!(c, Capture::Open(_)))
            .ok_or_else(|| "invalid pattern capture".to_string())?;
        let Capture::Open(start) = self.captures[open] else {
            return Err("invalid pattern capture".into());
        };
        self.captures[open] = Capture::Closed(start, s - start);
        let result = self.do_match(s, p)?;
        if result.is_none() {
            self.captures[open] = Capture::Open(start);
        }
        Ok(result)
    }

    fn match_capture(&mut self, s: usize, digit: u8) -> MatchResult<Option<usize>> {
        let index = usize::from(digit).wrapping_sub(usize::from(b'1'));
        let Some(Capture::Closed(start, len)) = self.captures.get(index).copied() else {
            return Err(format!("invalid capture index %{}", digit as char));
        };
        let end = s + len;
        if end <= self.src.len() && self.src[start..start + len] == self.src[s..end] {
            Ok(Some(end))
        } else {
            Ok(None)
        }
    }

    /// Charges the steps not yet counted.
    fn settle(&mut self) {
        self.budget.charge(self.steps);
        self.steps = 0;
    }
}

/// One capture (or the whole match when the pattern has none) as a Lua value.
fn capture_value(
    lua: &Lua,
    src: &[u8],
    captures: &[Capture],
    index: usize,
    whole: (usize, usize),
) -> mlua::Result<Value> {
    if captures.is_empty() && index == 0 {
        return Ok(Value::String(lua.create_string(&src[whole.0..whole.1])?));
    }
    match captures.get(index) {
        Some(Capture::Closed(start, len)) => {
            Ok(Value::String(lua.create_string(&src[*start..start + len])?))
        }
        Some(Capture::Position(at)) => Ok(Value::Integer(*at as i64 + 1)),
        Some(Capture::Open(_)) => Err(mlua::Error::runtime("unfinished capture")),
        None => Err(mlua::Error::runtime(format!(
            "invalid capture index %{}",
            index + 1
        ))),
    }
}

fn push_captures(
    lua: &Lua,
    src: &[u8],
    captures: &[Capture],
    whole: (usize, usize),
    out: &mut MultiValue,
) -> mlua::Result<()> {
    let count = captures.len().max(1);
    for index in 0..count {
        out.push_back(capture_value(lua, src, captures, index, whole)?);
    }
    Ok(())
}

/// Lua's `posrelat` for an init argument: 1-based, negative from the end; returns a 0-based
/// offset (may be past the end).
fn start_offset(init: Option<i64>, len: usize) -> usize {
    let init = init.unwrap_or(1);
    let pos = if init > 0 {
        init as usize
    } else if init == 0 || init.unsigned_abs() as usize > len {
        1
    } else {
        len - init.unsigned_abs() as usize + 1
    };
    pos - 1
}

/// Finds the first match at or after `from`; returns (start, end, captures).
fn search(
    budget: &Budget,
    src: &[u8],
    pat: &[u8],
    from: usize,
) -> mlua::Result<Option<(usize, usize, Vec<Capture>)>> {
    let (anchor, pat) = match pat.first() {
        Some(b'^') => (true, &pat[1..]),
        _ => (false, pat),
    };
    let mut matcher = Matcher {
        src,
        pat,
        depth: 0,
        captures: Vec::new(),
        steps: 0,
        budget,
    };
    let mut start = from;
    let result = loop {
        matcher.captures.clear();
        matcher.depth = 0;
        match matcher.do_match(start, 0) {
            Err(err) => {
                matcher.settle();
                return Err(mlua::Error::runtime(err));
            }
            Ok(Some(end)) => break Some((start, end, std::mem::take(&mut matcher.captures))),
            Ok(None) => {}
        }
        start += 1;
        if anchor || start > src.len() {
            break None;
        }
    };
    matcher.settle();
    Ok(result)
}

fn find_or_match(
    lua: &Lua,
    budget: &Budget,
    (subject, pattern, init, plain): (LuaString, LuaString, Option<i64>, Option<bool>),
    find: bool,
) -> mlua::Result<MultiValue> {
    let src = subject.as_bytes();
    let pat = pattern.as_bytes();
    let from = start_offset(init, src.len());
    let mut out = MultiValue::new();
    if from > src.len() {
        out.push_back(Value::Nil);
        return Ok(out);
    }
    if find && (plain == Some(true) || !pat.iter().any(|b| SPECIALS.contains(b))) {
        budget.charge(src.len() as u64 / 16);
        let found = if pat.is_empty() {
            Some(from)
        } else {
            src[from..]
                .windows(pat.len())
                .position(|w| w == &pat[..])
                .map(|i| i + from)
        };
        match found {
            Some(start) => {
                out.push_back(Value::Integer(start as i64 + 1));
                out.push_back(Value::Integer((start + pat.len()) as i64));
            }
            None => out.push_back(Value::Nil),
        }
        return Ok(out);
    }
    match search(budget, &src, &pat, from)? {
        Some((start, end, captures)) => {
            if find {
                out.push_back(Value::Integer(start as i64 + 1));
                out.push_back(Value::Integer(end as i64));
                if !captures.is_empty() {
                    push_captures(lua, &src, &captures, (start, end), &mut out)?;
                }
            } else {
                push_captures(lua, &src, &captures, (start, end), &mut out)?;
            }
        }
        None => out.push_back(Value::Nil),
    }
    Ok(out)
}

fn gmatch(
    lua: &Lua,
    budget: &Budget,
    (subject, pattern, init): (LuaString, LuaString, Option<i64>),
) -> mlua::Result<Function> {
    let src = subject.as_bytes().to_vec();
    let pat = pattern.as_bytes().to_vec();
    let mut position = start_offset(init, src.len());
    let mut last_end: Option<usize> = None;
    let budget = budget.clone();
    lua.create_function_mut(move |lua, ()| {
        let mut out = MultiValue::new();
        while position <= src.len() {
            let mut matcher = Matcher {
                src: &src,
                pat: &pat,
                depth: 0,
                captures: Vec::new(),
                steps: 0,
                budget: &budget,
            };
            let result = matcher.do_match(position, 0);
            matcher.settle();
            match result.map_err(mlua::Error::runtime)? {
                Some(end) if Some(end) != last_end => {
                    let start = position;
                    position = end;
                    last_end = Some(end);
                    push_captures(lua, &src, &matcher.captures, (start, end), &mut out)?;
                    return Ok(out);
                }
                _ => position += 1,
            }
        }
        out.push_back(Value::Nil);
        Ok(out)
    })
}

fn gsub(
    lua: &Lua,
    budget: &Budget,
    (subject, pattern, replacement, max): (LuaString, LuaString, Value, Option<i64>),
) -> mlua::Result<(LuaString, i64)> {
    let src = subject.as_bytes();
    let pat_all = pattern.as_bytes();
    match &replacement {
        Value::String(_)
        | Value::Integer(_)
        | Value::Number(_)
        | Value::Table(_)
        | Value::Function(_) => {}
        other => {
            return Err(mlua::Error::runtime(format!(
                "bad argument #3 to 'gsub' (string/function/table expected, got {})",
                other.type_name()
            )))
        }
    }
    let (anchor, pat) = match pat_all.first() {
        Some(b'^') => (true, &pat_all[1..]),
        _ => (false, &pat_all[..]),
    };
    let max = max.unwrap_or(i64::MAX);
    let mut out: Vec<u8> = Vec::with_capacity(src.len());
    let mut position = 0;
    let mut last_end = None;
    let mut count = 0i64;
    while count < max {
        let mut matcher = Matcher {
            src: &src,
            pat,
            depth: 0,
            captures: Vec::new(),
            steps: 0,
            budget,
        };
        let result = matcher.do_match(position, 0);
        matcher.settle();
        let captures = std::mem::take(&mut matcher.captures);
        match result.map_err(mlua::Error::runtime)? {
            Some(end) if Some(end) != last_end => {
                count += 1;
                add_value(
                    lua,
                    &src,
                    &captures,
                    (position, end),
                    &replacement,
                    &mut out,
                )?;
                position = end;
                last_end = Some(end);
            }
            _ if position < src.len() => {
                out.push(src[position]);
                position += 1;
            }
            _ => break,
        }
        if anchor {
            break;
        }
    }
    if position < src.len() {
        out.extend_from_slice(&src[position..]);
    }
    Ok((lua.create_string(&out)?, count))
}

fn add_value(
    lua: &Lua,
    src: &[u8],
    captures: &[Capture],
    whole: (usize, usize),
    replacement: &Value,
    out: &mut Vec<u8>,
) -> mlua::Result<()> {
    let matched = &src[whole.0..whole.1];
    let value = match replacement {
        Value::Table(table) => {
            let key = capture_value(lua, src, captures, 0, whole)?;
            Table::get::<Value>(table, key)?
        }
        Value::Function(function) => {
            let mut args = MultiValue::new();
            push_captures(lua, src, captures, whole, &mut args)?;
            function.call::<Value>(args)?
        }
        other => {
            let text = lua
                .coerce_string(other.clone())?
                .ok_or_else(|| mlua::Error::runtime("invalid replacement string"))?;
            let text = text.as_bytes();
            let mut i = 0;
            while i < text.len() {
                let c = text[i];
                i += 1;
                if c != b'%' {
                    out.push(c);
                    continue;
                }
                let Some(&d) = text.get(i) else {
                    return Err(mlua::Error::runtime(
                        "invalid use of '%' in replacement string",
                    ));
                };
                i += 1;
                if d == b'%' {
                    out.push(b'%');
                } else if d.is_ascii_digit() {
                    let index = (d - b'0') as usize;
                    let value = if index == 0 {
                        Value::String(lua.create_string(matched)?)
                    } else {
                        capture_value(lua, src, captures, index - 1, whole)?
                    };
                    let piece = lua.coerce_string(value)?.ok_or_else(|| {
                        mlua::Error::runtime("invalid capture value in replacement")
                    })?;
                    out.extend_from_slice(&piece.as_bytes());
                } else {
                    return Err(mlua::Error::runtime(
                        "invalid use of '%' in replacement string",
                    ));
                }
            }
            return Ok(());
        }
    };
    match value {
        Value::Nil | Value::Boolean(false) => out.extend_from_slice(matched),
        Value::String(s) => out.extend_from_slice(&s.as_bytes()),
        Value::Integer(_) | Value::Number(_) => {
            if let Some(s) = lua.coerce_string(value)? {
                out.extend_from_slice(&s.as_bytes());
            }
        }
        other => {
            return Err(mlua::Error::runtime(format!(
                "invalid replacement value (a {})",
                other.type_name()
            )))
        }
    }
    Ok(())
}

/// Replaces `find`, `match`, `gmatch` and `gsub` in the `string` library table (and so in the
/// string methods) with the budgeted versions.
pub fn install(lua: &Lua, budget: &Budget) -> mlua::Result<()> {
    let string: Table = lua.globals().get("string")?;
    let b = budget.clone();
    string.set(
        "find",
        lua.create_function(move |lua, args| find_or_match(lua, &b, args, true))?,
    )?;
    let b = budget.clone();
    string.set(
        "match",
        lua.create_function(move |lua, args| find_or_match(lua, &b, args, false))?,
    )?;
    let b = budget.clone();
    string.set(
        "gmatch",
        lua.create_function(move |lua, args| gmatch(lua, &b, args))?,
    )?;
    let b = budget.clone();
    string.set(
        "gsub",
        lua.create_function(move |lua, args| gsub(lua, &b, args))?,
    )?;
    Ok(())
}
