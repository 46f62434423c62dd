//! Record formats: JSON lines and CSV to rows, rows to JSON lines and CSV.
//!
//! Decoding is strict about types and lenient about shape, as Flink's JSON format with
//! `fail-on-missing-field = false`: unknown fields are ignored, a missing field is null
//! when its type is nullable and an error otherwise. A record that does not decode
//! yields a [`DecodeError`] with the reason; the caller dead-letters it. Nothing in
//! here panics on any input.
//!
//! Value rules: `int` is a JSON integer; `float` any JSON number; `decimal(p, s)` a JSON
//! number (or a string holding one), read exactly from its text (never through a
//! float), rounded half away from zero to `s` places, an error if it needs more than
//! `p - s` integer digits; `timestamp` epoch milliseconds or an RFC 3339 string (or
//! Flink SQL's `YYYY-MM-DD HH:MM:SS`); `duration` integer milliseconds; `bool` a JSON
//! boolean; `string` a JSON string; lists and records nested JSON.
//!
//! Encoding writes timestamps as epoch milliseconds, decimals with exactly their
//! scale, floats in shortest round-trip form (NaN and infinities as null in JSON).

use flow_types::row::{Batch, BatchBuilder, Layout, RowRef, SlotKind};
use flow_types::{format_decimal, Kind, RecordType, Type, Value};
use std::fmt::Write as _;
use std::sync::Arc;

/// Why a record did not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(msg.into()))
}

/// The lines of `text` as the file source splits them: at each `'\n'` (found with
/// SIMD `memchr`), without it and without one `'\r'` before it; a last line without a
/// `'\n'` counts when it is not empty.
pub fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b'\n', text.as_bytes());
    std::iter::from_fn(move || {
        let (line, next) = match ends.next() {
            Some(end) => (&text[start..end], end + 1),
            None if start < text.len() => (&text[start..], text.len()),
            None => return None,
        };
        start = next;
        Some(line.strip_suffix('\r').unwrap_or(line))
    })
}

/// Decodes one JSON object into a new row of `out`. On error no row is added.
///
/// Two paths with one meaning: [`fast_json_row`] scans the common case (a flat
/// object, strings without escapes, strict JSON numbers) straight into the row's
/// slots, with no allocation but the arena's; whenever it meets anything else it
/// gives up and [`slow_json_row`] decodes the line through sonic-rs, which also
/// writes every error message. A property test holds the two to the same results.
pub fn decode_json_row(line: &str, out: &mut BatchBuilder) -> Result<(), DecodeError> {
    let layout = out.layout.clone();
    decode_json_row_in(line, &layout, out)
}

/// [`decode_json_row`] with `out`'s layout passed by the caller: the hot loop then
/// touches no reference count (shared between decoding threads, it would bounce
/// between their caches).
pub fn decode_json_row_in(line: &str, layout: &Layout, out: &mut BatchBuilder) -> Result<(), DecodeError> {
    if fast_json_row(line, layout, out).is_some() {
        return Ok(());
    }
    slow_json_row(line, out)
}

/// JSON whitespace.
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// 10^0 ..= 10^38.
const POW10: [i128; 39] = {
    let mut p = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        p[i] = p[i - 1] * 10;
        i += 1;
    }
    p
};

/// The index of the first quote, backslash or control character in `b` from `i` on,
/// or `b.len()`: eight bytes at a time (SWAR), the rest one by one.
#[inline]
fn plain_end(b: &[u8], mut i: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        // A byte of `q`/`bs` is 0 where `x` has a quote/backslash; each mask's lowest
        // set bit marks the first such byte exactly (borrows only run upwards), and
        // bytes of 0x80 and up never match any of the three.
        let q = x ^ (LO * b'"' as u64);
        let bs = x ^ (LO * b'\\' as u64);
        let m = (q.wrapping_sub(LO) & !q) | (bs.wrapping_sub(LO) & !bs) | (x.wrapping_sub(LO * 0x20) & !x);
        let m = m & HI;
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && b[i] != b'"' && b[i] != b'\\' && b[i] >= 0x20 {
        i += 1;
    }
    i
}

/// Byte-wise equality for short keys, without a call to `memcmp`.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// A cursor over one line for [`fast_json_row`]; `None` means "give up".
struct Scan<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn ws(&mut self) {
        while self.i < self.b.len() && is_ws(self.b[self.i]) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// The body of a string without escapes or control characters (the cursor is on
    /// its opening quote).
    fn plain_str(&mut self) -> Option<&'a str> {
        let (start, end) = self.plain_span()?;
        // Split at ASCII quotes: always on character boundaries.
        self.s.get(start..end)
    }

    /// [`Scan::plain_str`] as a byte range of the line.
    #[inline]
    fn plain_span(&mut self) -> Option<(usize, usize)> {
        self.eat(b'"')?;
        let start = self.i;
        let end = plain_end(self.b, start);
        if *self.b.get(end)? != b'"' {
            return None;
        }
        self.i = end + 1;
        Some((start, end))
    }

    /// An integer `-?(0|[1-9][0-9]*)` of at most 18 digits read in one pass, as
    /// [`Scan::number`] and `parse::<i64>` read it; `None` for anything else (a
    /// fraction, an exponent, more digits), with the cursor unmoved.
    #[inline]
    fn small_int(&mut self) -> Option<i64> {
        let b = self.b;
        let mut i = self.i;
        let neg = b.get(i) == Some(&b'-');
        i += usize::from(neg);
        let start = i;
        let mut v: i64 = 0;
        while let Some(&c) = b.get(i) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            if i - start == 18 {
                return None;
            }
            v = v * 10 + d as i64;
            i += 1;
        }
        let n = i - start;
        if n == 0 || (n > 1 && b[start] == b'0') || matches!(b.get(i), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        self.i = i;
        Some(if neg { -v } else { v })
    }

    /// An unquoted decimal `-?(0|[1-9][0-9]*)(\.[0-9]+)?` of at most 18 digits and no
    /// more fractional digits than `scale`, scaled to units in one pass, exactly as
    /// [`plain_decimal`] reads the token; `None` for anything else, cursor unmoved.
    #[inline]
    fn small_decimal(&mut self, precision: u8, scale: u8) -> Option<i128> {
        let b = self.b;
        let mut i = self.i;
        let neg = b.get(i) == Some(&b'-');
        i += usize::from(neg);
        let start = i;
        let mut v: i64 = 0;
        let mut digits = 0usize;
        let mut frac = 0usize;
        let mut dot = None;
        while let Some(&c) = b.get(i) {
            let d = c.wrapping_sub(b'0');
            if d <= 9 {
                if digits == 18 {
                    return None;
                }
                v = v * 10 + d as i64;
                digits += 1;
                frac += usize::from(dot.is_some());
            } else if c == b'.' && dot.is_none() {
                dot = Some(i);
            } else {
                break;
            }
            i += 1;
        }
        let int_digits = dot.unwrap_or(i) - start;
        if int_digits == 0
            || (int_digits > 1 && b[start] == b'0')
            || (dot.is_some() && frac == 0)
            || matches!(b.get(i), Some(b'e' | b'E'))
            || frac > scale as usize
            || precision > 38
        {
            return None;
        }
        let units = v as i128 * POW10[scale as usize - frac];
        if units >= POW10[precision as usize] {
            return None;
        }
        self.i = i;
        Some(if neg { -units } else { units })
    }

    /// A number token in strict JSON grammar.
    fn number(&mut self) -> Option<&'a str> {
        let start = self.i;
        let b = self.b;
        let digits = |i: &mut usize| {
            let s = *i;
            while *i < b.len() && b[*i].is_ascii_digit() {
                *i += 1;
            }
            *i > s
        };
        let mut i = self.i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(c) if c.is_ascii_digit() => {
                digits(&mut i);
            }
            _ => return None,
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if !digits(&mut i) {
                return None;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !digits(&mut i) {
                return None;
            }
        }
        self.i = i;
        self.s.get(start..i)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        (self.b.get(self.i..self.i + word.len())? == word).then(|| self.i += word.len())
    }

    /// Skips any value (of a field the schema does not name).
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > NESTING_MAX {
            return None;
        }
        match self.peek()? {
            b'"' => self.plain_str().map(|_| ()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'{' => {
                self.i += 1;
                self.ws();
                if self.eat(b'}').is_some() {
                    return Some(());
                }
                loop {
                    self.ws();
                    self.plain_str()?;
                    self.ws();
                    self.eat(b':')?;
                    self.ws();
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                self.i += 1;
                self.ws();
                if self.eat(b']').is_some() {
                    return Some(());
                }
                loop {
                    self.ws();
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            _ => self.number().map(|_| ()),
        }
    }
}

/// The common case of [`decode_json_row`], or `None` (and no row added) to leave the
/// line to the general path.
fn fast_json_row(line: &str, layout: &Layout, out: &mut BatchBuilder) -> Option<()> {
    debug_assert!(std::ptr::eq(layout, &*out.layout));
    if layout.record.fields.len() > 64 {
        return None;
    }
    let row = out.push_row();
    let ok = fast_fields(line, out, row, layout);
    if ok.is_none() {
        out.pop_row();
    }
    ok
}

fn fast_fields(line: &str, out: &mut BatchBuilder, row: usize, layout: &Layout) -> Option<()> {
    let fields = &layout.record.fields;
    let mut seen = 0u64;
    // Fields set to null on this line: only those need their null bit cleared again
    // (a new row starts with every bit clear).
    let mut nulled = 0u64;
    let mut next = 0;
    let mut s = Scan { s: line, b: line.as_bytes(), i: 0 };
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if s.eat(b'}').is_none() {
        loop {
            s.ws();
            let (ks, ke) = s.plain_span()?;
            let key = &s.b[ks..ke];
            s.ws();
            s.eat(b':')?;
            s.ws();
            // Keys usually come in the schema's order: try the next field first.
            let found = match fields.get(next) {
                Some(f) if same_bytes(f.name.as_bytes(), key) => Some(next),
                _ => fields.iter().position(|f| same_bytes(f.name.as_bytes(), key)),
            };
            match found {
                None => s.skip_value(0)?,
                Some(f) => {
                    next = f + 1;
                    let bit = 1u64 << f;
                    seen |= bit;
                    if fast_value(&mut s, out, row, f, &fields[f].ty, layout.slot_kinds[f], nulled & bit != 0)? {
                        nulled |= bit;
                    } else {
                        nulled &= !bit;
                    }
                }
            }
            s.ws();
            match s.peek()? {
                b',' => s.i += 1,
                b'}' => {
                    s.i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    s.ws();
    if s.i != line.len() {
        return None;
    }
    for (f, field) in fields.iter().enumerate() {
        if seen & (1 << f) == 0 {
            if !field.ty.nullable {
                return None;
            }
            out.set_null(row, f);
        }
    }
    Some(())
}

/// One value of a field the schema names, written into its slot: `Some(true)` for a
/// null. `was_null`: an earlier value of the same key on this line was null.
#[inline]
fn fast_value(
    s: &mut Scan,
    out: &mut BatchBuilder,
    row: usize,
    f: usize,
    ty: &Type,
    slot: SlotKind,
    was_null: bool,
) -> Option<bool> {
    if s.peek()? == b'n' {
        s.literal(b"null")?;
        if !ty.nullable {
            return None;
        }
        out.set_null(row, f);
        return Some(true);
    }
    // A value after a `null` for the same key (duplicate keys: the last one wins).
    if was_null {
        out.clear_null(row, f);
    }
    match (&ty.kind, slot) {
        (Kind::Bool, _) => {
            let v = if s.peek()? == b't' {
                s.literal(b"true")?;
                1
            } else {
                s.literal(b"false")?;
                0
            };
            out.set_i64(row, f, v);
        }
        (Kind::Int | Kind::Duration, _) => {
            let v = match s.small_int() {
                Some(v) => v,
                None => s.number()?.parse::<i64>().ok()?,
            };
            out.set_i64(row, f, v);
        }
        (Kind::Timestamp, _) => {
            let v = if s.peek()? == b'"' {
                flow_types::time::parse_record_timestamp(s.plain_str()?).ok()?
            } else {
                match s.small_int() {
                    Some(v) => v,
                    None => s.number()?.parse::<i64>().ok()?,
                }
            };
            out.set_i64(row, f, v);
        }
        (Kind::Float, _) => {
            let n = s.number()?;
            out.set_f64(row, f, n.parse::<f64>().ok()?);
        }
        (Kind::Decimal { precision, scale }, kind) => {
            let units = match s.small_decimal(*precision, *scale) {
                Some(u) => u,
                None => {
                    let text = if s.peek()? == b'"' { s.plain_str()? } else { s.number()? };
                    match plain_decimal(text.as_bytes(), *precision, *scale) {
                        Some(u) => u,
                        None => parse_decimal(text, *precision, *scale).ok()?,
                    }
                }
            };
            match kind {
                SlotKind::Dec64 { .. } => out.set_i64(row, f, i64::try_from(units).ok()?),
                _ => out.set_i128(row, f, units),
            }
        }
        (Kind::String, _) => {
            let (a, b) = s.plain_span()?;
            let off = out.arena_push(&s.b[a..b]).ok()?;
            out.set_span(row, f, off, (b - a) as u32);
        }
        _ => return None,
    }
    Some(false)
}

/// `-?digits(.digits)?` with at most 18 digits and no more fractional digits than
/// `scale`, exactly as [`parse_decimal`] reads it; `None` for anything else.
fn plain_decimal(t: &[u8], precision: u8, scale: u8) -> Option<i128> {
    let (neg, body) = match t.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, t),
    };
    let mut units: i64 = 0;
    let mut digits = 0u32;
    let mut frac: Option<u32> = None;
    for &c in body {
        match c {
            b'0'..=b'9' => {
                digits += 1;
                if digits > 18 {
                    return None;
                }
                units = units * 10 + (c - b'0') as i64;
                if let Some(f) = frac.as_mut() {
                    *f += 1;
                }
            }
            b'.' if frac.is_none() => frac = Some(0),
            _ => return None,
        }
    }
    let frac = frac.unwrap_or(0);
    if digits == 0 || frac > scale as u32 || precision > 38 {
        return None;
    }
    let units = units as i128 * 10i128.pow(scale as u32 - frac);
    if units >= 10i128.pow(precision as u32) {
        return None;
    }
    Some(if neg { -units } else { units })
}

/// The general path of [`decode_json_row`].
fn slow_json_row(line: &str, out: &mut BatchBuilder) -> Result<(), DecodeError> {
    let layout = out.layout.clone();
    let rec = &layout.record;
    let mut values: Vec<Option<Value>> = vec![None; rec.fields.len()];
    let trimmed = line.trim();
    if !trimmed.starts_with('{') {
        return err("not a JSON object");
    }
    for item in sonic_rs::to_object_iter(trimmed) {
        let (key, lazy) = match item {
            Ok(kv) => kv,
            Err(e) => return err(format!("malformed JSON: {}", first_line(&e.to_string()))),
        };
        let Some(i) = rec.fields.iter().position(|f| f.name.as_str() == &*key) else { continue };
        let v = json_value(lazy.as_raw_str(), &rec.fields[i].ty, 0)
            .map_err(|e| DecodeError(format!("field `{}`: {}", rec.fields[i].name, e.0)))?;
        values[i] = Some(v);
    }
    let row: Vec<Value> = values
        .into_iter()
        .zip(&rec.fields)
        .map(|(v, f)| match v {
            Some(Value::Null) | None if !f.ty.nullable => err(format!(
                "field `{}` is {} but its type `{}` is not nullable",
                f.name,
                if v.is_some() { "null" } else { "missing" },
                f.ty
            )),
            Some(v) => Ok(v),
            None => Ok(Value::Null),
        })
        .collect::<Result<_, _>>()?;
    out.push_values(&row).map_err(|e| DecodeError(format!("cannot store the record: {e:?}")))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

const NESTING_MAX: usize = 32;

/// Decodes the raw JSON text of one value as type `ty`.
fn json_value(raw: &str, ty: &Type, depth: usize) -> Result<Value, DecodeError> {
    let raw = raw.trim();
    if raw == "null" {
        return Ok(Value::Null);
    }
    if depth > NESTING_MAX {
        return err("nested too deeply");
    }
    match &ty.kind {
        Kind::Bool => match raw {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => err(format!("expected a boolean, found {}", snippet(raw))),
        },
        Kind::Int => parse_int(raw).map(Value::Int),
        Kind::Duration => parse_int(raw).map(Value::Duration),
        Kind::Float => {
            if !is_json_number(raw) {
                return err(format!("expected a number, found {}", snippet(raw)));
            }
            raw.parse::<f64>().map(Value::Float).map_err(|_| DecodeError(format!("bad number {}", snippet(raw))))
        }
        Kind::Decimal { precision, scale } => {
            let text = if raw.starts_with('"') { unquote(raw)? } else { raw.to_string() };
            parse_decimal(&text, *precision, *scale).map(|units| Value::Decimal { units, scale: *scale })
        }
        Kind::String => unquote(raw).map(|s| Value::String(s.into())),
        Kind::Timestamp => {
            if raw.starts_with('"') {
                let s = unquote(raw)?;
                flow_types::time::parse_record_timestamp(&s).map(Value::Timestamp).map_err(DecodeError)
            } else {
                parse_int(raw).map(Value::Timestamp)
            }
        }
        Kind::List(elem) => {
            if !raw.starts_with('[') {
                return err(format!("expected a list, found {}", snippet(raw)));
            }
            let mut items = Vec::new();
            for item in sonic_rs::to_array_iter(raw) {
                let lazy = item.map_err(|e| DecodeError(format!("malformed JSON: {}", first_line(&e.to_string()))))?;
                let v = json_value(lazy.as_raw_str(), elem, depth + 1)?;
                if matches!(v, Value::Null) && !elem.nullable {
                    return err("a list element is null, but the element type is not nullable");
                }
                items.push(v);
            }
            Ok(Value::List(items.into()))
        }
        Kind::Record(rec) => {
            if !raw.starts_with('{') {
                return err(format!("expected an object, found {}", snippet(raw)));
            }
            let mut values: Vec<Option<Value>> = vec![None; rec.fields.len()];
            for item in sonic_rs::to_object_iter(raw) {
                let (key, lazy) =
                    item.map_err(|e| DecodeError(format!("malformed JSON: {}", first_line(&e.to_string()))))?;
                if let Some(i) = rec.fields.iter().position(|f| f.name.as_str() == &*key) {
                    values[i] = Some(json_value(lazy.as_raw_str(), &rec.fields[i].ty, depth + 1)?);
                }
            }
            let mut out = Vec::with_capacity(values.len());
            for (v, f) in values.into_iter().zip(&rec.fields) {
                match v {
                    Some(Value::Null) | None if !f.ty.nullable => {
                        return err(format!("field `{}` is missing or null", f.name))
                    }
                    v => out.push(v.unwrap_or(Value::Null)),
                }
            }
            Ok(Value::Record(out.into()))
        }
        Kind::Null | Kind::Error => err("no value of this type can be read"),
    }
}

fn snippet(raw: &str) -> String {
    let mut s: String = raw.chars().take(24).collect();
    if raw.chars().count() > 24 {
        s.push('…');
    }
    format!("`{s}`")
}

fn is_json_number(raw: &str) -> bool {
    let b = raw.as_bytes();
    !b.is_empty()
        && (b[0] == b'-' || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_digit() || b"+-.eE".contains(c))
}

fn parse_int(raw: &str) -> Result<i64, DecodeError> {
    if !is_json_number(raw) {
        return err(format!("expected an integer, found {}", snippet(raw)));
    }
    raw.parse::<i64>().map_err(|_| {
        if raw.contains(['.', 'e', 'E']) {
            DecodeError(format!("expected an integer, found {}", snippet(raw)))
        } else {
            DecodeError(format!("integer {} out of range", snippet(raw)))
        }
    })
}

fn unquote(raw: &str) -> Result<String, DecodeError> {
    if !raw.starts_with('"') {
        return err(format!("expected a string, found {}", snippet(raw)));
    }
    sonic_rs::from_str::<String>(raw).map_err(|_| DecodeError(format!("malformed string {}", snippet(raw))))
}

/// Parses decimal text exactly into units of `10^-scale`, rounding half away from zero.
pub fn parse_decimal(text: &str, precision: u8, scale: u8) -> Result<i128, DecodeError> {
    let t = text.trim();
    let (neg, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (mantissa, exp) = match body.bytes().position(|c| c == b'e' || c == b'E') {
        Some(i) => {
            let e: i32 = body[i + 1..].parse().map_err(|_| DecodeError(format!("bad number `{t}`")))?;
            (&body[..i], e)
        }
        None => (body, 0),
    };
    let (int_part, frac_part) = match mantissa.bytes().position(|c| c == b'.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, ""),
    };
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part.bytes().all(|c| c.is_ascii_digit())
        || !frac_part.bytes().all(|c| c.is_ascii_digit())
    {
        return err(format!("expected a decimal number, found `{t}`"));
    }
    if exp == 0 && frac_part.len() <= scale as usize && int_part.len() + frac_part.len() <= 18 {
        // The common case: exact without rounding, and no allocation.
        let mut units: i128 = 0;
        for c in int_part.bytes().chain(frac_part.bytes()) {
            units = units * 10 + (c - b'0') as i128;
        }
        units *= 10i128.pow(scale as u32 - frac_part.len() as u32);
        if units >= 10i128.pow(precision as u32) {
            return err(format!("`{t}` does not fit decimal({precision}, {scale})"));
        }
        return Ok(if neg { -units } else { units });
    }
    if exp.abs() > 400 {
        return err(format!("number `{t}` out of range"));
    }
    // digits * 10^(exp - frac_len), brought to `scale` places.
    let digits: String = format!("{int_part}{frac_part}").trim_start_matches('0').to_string();
    let shift = exp - frac_part.len() as i32 + scale as i32;
    let overflow = || DecodeError(format!("`{t}` does not fit decimal({precision}, {scale})"));
    if digits.len() > 60 && shift >= 0 {
        return Err(overflow());
    }
    let mut units: i128 = 0;
    let keep = if shift >= 0 { digits.len() } else { digits.len().saturating_sub((-shift) as usize) };
    for c in digits[..keep].bytes() {
        units = units.checked_mul(10).and_then(|u| u.checked_add((c - b'0') as i128)).ok_or_else(overflow)?;
    }
    if shift > 0 {
        units = 10i128.checked_pow(shift as u32).and_then(|p| units.checked_mul(p)).ok_or_else(overflow)?;
    } else if shift < 0 {
        // Round half away from zero on the first dropped digit.
        let dropped = &digits[keep..];
        if dropped.as_bytes().first().is_some_and(|d| *d >= b'5') {
            units = units.checked_add(1).ok_or_else(overflow)?;
        }
    }
    if units >= 10i128.pow(precision as u32) {
        return Err(overflow());
    }
    Ok(if neg { -units } else { units })
}

// ------------------------------------------------------------------ CSV

/// Maps CSV columns to fields: by header names, or by position.
#[derive(Clone, Debug)]
pub struct CsvColumns {
    /// For each field, the column that holds it.
    pub columns: Vec<Option<usize>>,
}

impl CsvColumns {
    pub fn by_position(rec: &RecordType) -> CsvColumns {
        CsvColumns { columns: (0..rec.fields.len()).map(Some).collect() }
    }

    pub fn from_header(rec: &RecordType, header: &csv::StringRecord) -> CsvColumns {
        CsvColumns { columns: rec.fields.iter().map(|f| header.iter().position(|h| h.trim() == f.name)).collect() }
    }
}

/// Decodes one CSV record into a new row of `out`. Empty cells are null.
pub fn decode_csv_row(
    record: &csv::StringRecord,
    cols: &CsvColumns,
    out: &mut BatchBuilder,
) -> Result<(), DecodeError> {
    let layout = out.layout.clone();
    let mut row = Vec::with_capacity(layout.record.fields.len());
    for (f, col) in layout.record.fields.iter().zip(&cols.columns) {
        let cell = col.and_then(|c| record.get(c)).unwrap_or("");
        let v = if cell.is_empty() && !matches!(f.ty.kind, Kind::String) {
            Value::Null
        } else {
            csv_value(cell, &f.ty).map_err(|e| DecodeError(format!("field `{}`: {}", f.name, e.0)))?
        };
        if matches!(v, Value::Null) && !f.ty.nullable {
            return err(format!("field `{}` is empty but its type `{}` is not nullable", f.name, f.ty));
        }
        row.push(v);
    }
    out.push_values(&row).map_err(|e| DecodeError(format!("cannot store the record: {e:?}")))
}

fn csv_value(cell: &str, ty: &Type) -> Result<Value, DecodeError> {
    let c = cell.trim();
    match &ty.kind {
        Kind::String => Ok(Value::String(cell.into())),
        Kind::Bool => match c.to_ascii_lowercase().as_str() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => err(format!("expected true or false, found {}", snippet(c))),
        },
        Kind::Int => parse_int(c).map(Value::Int),
        Kind::Duration => parse_int(c).map(Value::Duration),
        Kind::Float => c
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| DecodeError(format!("expected a number, found {}", snippet(c)))),
        Kind::Decimal { precision, scale } => {
            parse_decimal(c, *precision, *scale).map(|units| Value::Decimal { units, scale: *scale })
        }
        Kind::Timestamp => {
            if c.bytes().all(|b| b.is_ascii_digit() || b == b'-') && !c.contains("-0") && c.len() < 17 {
                parse_int(c).map(Value::Timestamp)
            } else {
                flow_types::time::parse_record_timestamp(c).map(Value::Timestamp).map_err(DecodeError)
            }
        }
        _ => err("CSV cannot hold lists or records"),
    }
}

// ------------------------------------------------------------------ encoding

/// Appends a row as one JSON object (no newline). Hidden runtime fields (named with a
/// leading `$`, such as a record's watermark stamp) are left out.
pub fn encode_json_row(row: &RowRef, out: &mut String) {
    let layout = &row.batch.layout;
    out.push('{');
    let mut first = true;
    for (i, f) in layout.record.fields.iter().enumerate() {
        if f.name.as_bytes().first() == Some(&b'$') {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        json_string(&f.name, out);
        out.push(':');
        if row.is_null(i) {
            out.push_str("null");
            continue;
        }
        match layout.slot_kinds[i] {
            SlotKind::Bool => out.push_str(if row.i64(i) & 1 != 0 { "true" } else { "false" }),
            SlotKind::I64 => {
                let _ = write!(out, "{}", row.i64(i));
            }
            SlotKind::F64 => json_float(row.f64(i), out),
            SlotKind::Dec64 { scale } => out.push_str(&format_decimal(row.i64(i) as i128, scale)),
            SlotKind::Dec128 { scale } => out.push_str(&format_decimal(row.i128(i), scale)),
            SlotKind::Str => json_string(row.str(i), out),
            SlotKind::Encoded => json_value_out(&row.value(i), &f.ty, out),
        }
    }
    out.push('}');
}

fn json_float(x: f64, out: &mut String) {
    if x.is_finite() {
        let _ = write!(out, "{x:?}");
    } else {
        out.push_str("null");
    }
}

fn json_string(s: &str, out: &mut String) {
    out.push('"');
    // Runs of bytes that need no escape are copied whole; only `"`, `\` and control
    // bytes (all ASCII, so never inside a multi-byte character) are escaped.
    let mut clean = 0;
    for (i, b) in s.bytes().enumerate() {
        if !STRING_ESCAPE[b as usize] {
            continue;
        }
        out.push_str(&s[clean..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            c => {
                let _ = write!(out, "\\u{:04x}", c);
            }
        }
        clean = i + 1;
    }
    out.push_str(&s[clean..]);
    out.push('"');
}

/// Bytes a JSON string must escape.
static STRING_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

fn json_value_out(v: &Value, ty: &Type, out: &mut String) {
    match (v, &ty.kind) {
        (Value::Null, _) => out.push_str("null"),
        (Value::Bool(b), _) => out.push_str(if *b { "true" } else { "false" }),
        (Value::Int(i) | Value::Timestamp(i) | Value::Duration(i), _) => {
            let _ = write!(out, "{i}");
        }
        (Value::Float(x), _) => json_float(*x, out),
        (Value::Decimal { units, scale }, _) => out.push_str(&format_decimal(*units, *scale)),
        (Value::String(s), _) => json_string(s, out),
        (Value::List(items), Kind::List(elem)) => {
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_value_out(it, elem, out);
            }
            out.push(']');
        }
        (Value::Record(items), Kind::Record(rec)) => {
            out.push('{');
            for (i, (it, f)) in items.iter().zip(&rec.fields).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(&f.name, out);
                out.push(':');
                json_value_out(it, &f.ty, out);
            }
            out.push('}');
        }
        _ => out.push_str("null"),
    }
}

/// The text of one field for CSV output (empty for null).
pub fn csv_cell(row: &RowRef, i: usize) -> String {
    if row.is_null(i) {
        return String::new();
    }
    match row.batch.layout.slot_kinds[i] {
        SlotKind::Bool => (if row.i64(i) & 1 != 0 { "true" } else { "false" }).to_string(),
        SlotKind::I64 => row.i64(i).to_string(),
        SlotKind::F64 => format!("{:?}", row.f64(i)),
        SlotKind::Dec64 { scale } => format_decimal(row.i64(i) as i128, scale),
        SlotKind::Dec128 { scale } => format_decimal(row.i128(i), scale),
        SlotKind::Str => row.str(i).to_string(),
        SlotKind::Encoded => row.value(i).to_string(),
    }
}

/// Decodes JSON lines into a batch; returns the batch and the lines that failed with
/// their 1-based line numbers (relative to `first_line`) and reasons.
pub fn decode_json_lines(text: &str, layout: Arc<Layout>, first_line: u64) -> (Batch, Vec<(u64, String, DecodeError)>) {
    let mut b = BatchBuilder::new(layout);
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if let Err(e) = decode_json_row(line, &mut b) {
            bad.push((first_line + i as u64, line.to_string(), e));
        }
    }
    (b.finish(), bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_types::Field;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    fn txn() -> Arc<Layout> {
        Arc::new(Layout::new(Arc::new(RecordType::new(
            Some("Txn".into()),
            vec![
                Field { name: "id".into(), ty: Type::string() },
                Field { name: "amount".into(), ty: Type::decimal(12, 2) },
                Field { name: "ts".into(), ty: Type::timestamp() },
                Field { name: "note".into(), ty: Type::string().nullable() },
                Field { name: "n".into(), ty: Type::int().nullable() },
                Field { name: "tags".into(), ty: Type::list(Type::string()).nullable() },
            ],
        ))))
    }

    #[test]
    fn decodes_and_encodes_json() {
        let (batch, bad) = decode_json_lines(
            concat!(
                r#"{"id":"e1","amount":649.38,"ts":1699999999484,"extra":{"x":[1]}}"#,
                "\n",
                r#"{"id":"é\"2","amount":"12.345","ts":"2023-11-14T22:13:20Z","note":null,"n":7,"tags":["a","b"]}"#,
                "\n",
            ),
            txn(),
            1,
        );
        assert!(bad.is_empty(), "{bad:?}");
        let mut out = String::new();
        encode_json_row(&batch.row(0), &mut out);
        assert_eq!(out, r#"{"id":"e1","amount":649.38,"ts":1699999999484,"note":null,"n":null,"tags":null}"#);
        out.clear();
        encode_json_row(&batch.row(1), &mut out);
        assert_eq!(out, r#"{"id":"é\"2","amount":12.35,"ts":1700000000000,"note":null,"n":7,"tags":["a","b"]}"#);
    }

    #[test]
    fn bad_records_give_reasons() {
        let cases = [
            ("{\"id\":\"x\",\"amount\":1,\"ts\":1", "malformed JSON"),
            ("not json", "not a JSON object"),
            (r#"{"amount":1,"ts":1}"#, "field `id` is missing"),
            (r#"{"id":"x","amount":"abc","ts":1}"#, "field `amount`: expected a decimal number"),
            (r#"{"id":"x","amount":12345678901.5,"ts":1}"#, "does not fit decimal(12, 2)"),
            (r#"{"id":"x","amount":1,"ts":"yesterday"}"#, "not a timestamp"),
            (r#"{"id":"x","amount":1,"ts":1.5}"#, "expected an integer"),
            (r#"{"id":7,"amount":1,"ts":1}"#, "expected a string"),
            (r#"{"id":"x","amount":1,"ts":1,"n":99999999999999999999}"#, "out of range"),
        ];
        for (line, why) in cases {
            let mut b = BatchBuilder::new(txn());
            let e = decode_json_row(line, &mut b).expect_err(line);
            assert!(e.0.contains(why), "{line}: {e}");
            assert_eq!(b.len(), 0);
        }
    }

    proptest! {
        #[test]
        fn plain_decimals_agree_with_parse_decimal(t in "-?[0-9]{0,20}(\\.[0-9]{0,6})?", p in 1u8..=38, sc in 0u8..6) {
            let sc = sc.min(p);
            if let Some(u) = plain_decimal(t.as_bytes(), p, sc) {
                prop_assert_eq!(Ok(u), parse_decimal(&t, p, sc), "{}", t);
            }
        }
    }

    proptest! {
        #[test]
        fn json_strings_round_trip(text in "\\PC{0,40}|[\\x00-\\x1f\"\\\\a-z]{0,20}") {
            let mut out = String::new();
            json_string(&text, &mut out);
            let back: String = serde_json::from_str(&out).expect("valid JSON string");
            prop_assert_eq!(back, text);
        }
    }

    #[test]
    fn lines_split_as_the_file_source_splits_them() {
        fn split(t: &str) -> Vec<&str> {
            split_lines(t).collect()
        }
        assert_eq!(split(""), Vec::<&str>::new());
        assert_eq!(split("\n"), vec![""]);
        assert_eq!(split("a\r\nb\n\nc"), vec!["a", "b", "", "c"]);
        assert_eq!(split("é\r\r\n\r"), vec!["é\r", ""]);
        // The same as the std splitting the file source used before.
        for t in ["a\nb\r\n", "x\n\r\n\ny\r", "\r", "one"] {
            let old: Vec<&str> = t
                .split_inclusive('\n')
                .map(|l| l.strip_suffix('\n').unwrap_or(l))
                .map(|l| l.strip_suffix('\r').unwrap_or(l))
                .collect();
            assert_eq!(split(t), old, "{t:?}");
        }
    }

    #[test]
    fn decimals_parse_exactly() {
        assert_eq!(parse_decimal("649.38", 12, 2), Ok(64938));
        assert_eq!(parse_decimal("0.005", 12, 2), Ok(1));
        assert_eq!(parse_decimal("-0.005", 12, 2), Ok(-1));
        assert_eq!(parse_decimal("1e3", 12, 2), Ok(100000));
        assert_eq!(parse_decimal("1.5E-1", 12, 2), Ok(15));
        assert_eq!(parse_decimal("9999999999.99", 12, 2), Ok(999999999999));
        assert!(parse_decimal("10000000000.00", 12, 2).is_err());
        assert!(parse_decimal("1e400", 12, 2).is_err());
        assert!(parse_decimal(".", 12, 2).is_err());
    }

    #[test]
    fn csv_rows() {
        let layout = txn();
        let header = csv::StringRecord::from(vec!["ts", "id", "amount", "note"]);
        let cols = CsvColumns::from_header(&layout.record, &header);
        let mut b = BatchBuilder::new(layout);
        decode_csv_row(&csv::StringRecord::from(vec!["1700000000000", "a", "1.50", ""]), &cols, &mut b).unwrap();
        decode_csv_row(&csv::StringRecord::from(vec!["2023-11-14 22:13:20", "b", "2", "hi"]), &cols, &mut b).unwrap();
        assert!(decode_csv_row(&csv::StringRecord::from(vec!["x", "c", "2", ""]), &cols, &mut b).is_err());
        let batch = b.finish();
        assert_eq!(batch.len, 2);
        assert_eq!(csv_cell(&batch.row(0), 1), "1.50");
        assert_eq!(csv_cell(&batch.row(1), 2), "1700000000000");
        assert_eq!(csv_cell(&batch.row(0), 3), "");
    }

    fn flat() -> Arc<Layout> {
        Arc::new(Layout::new(Arc::new(RecordType::new(
            None,
            vec![
                Field { name: "s".into(), ty: Type::string() },
                Field { name: "i".into(), ty: Type::int().nullable() },
                Field { name: "f".into(), ty: Type::float().nullable() },
                Field { name: "b".into(), ty: Type::bool().nullable() },
                Field { name: "d".into(), ty: Type::decimal(30, 4).nullable() },
                Field { name: "m".into(), ty: Type::decimal(12, 2).nullable() },
                Field { name: "t".into(), ty: Type::timestamp().nullable() },
            ],
        ))))
    }

    /// Where the fast path accepts a line, the general path must give the same row.
    fn fast_agrees_with_slow(line: &str, layout: Arc<Layout>) -> Result<(), TestCaseError> {
        let mut fast = BatchBuilder::new(layout.clone());
        let accepted = fast_json_row(line, &fast.layout.clone(), &mut fast).is_some();
        prop_assert_eq!(fast.len(), usize::from(accepted));
        if accepted {
            let mut slow = BatchBuilder::new(layout);
            let r = slow_json_row(line, &mut slow);
            prop_assert!(r.is_ok(), "fast accepted what the general path rejects: {} ({:?})", line, r);
            prop_assert_eq!(fast.finish().to_values(), slow.finish().to_values(), "{}", line);
        }
        Ok(())
    }

    /// Every type the decoder knows, nullable and not, with a key that is not ASCII.
    fn all_types() -> Arc<Layout> {
        let inner = RecordType::new(None, vec![Field { name: "x".into(), ty: Type::int().nullable() }]);
        Arc::new(Layout::new(Arc::new(RecordType::new(
            None,
            vec![
                Field { name: "s".into(), ty: Type::string() },
                Field { name: "i".into(), ty: Type::int().nullable() },
                Field { name: "f".into(), ty: Type::float().nullable() },
                Field { name: "b".into(), ty: Type::bool().nullable() },
                Field { name: "d".into(), ty: Type::decimal(30, 4).nullable() },
                Field { name: "m".into(), ty: Type::decimal(12, 2) },
                Field { name: "k".into(), ty: Type::decimal(18, 0).nullable() },
                Field { name: "t".into(), ty: Type::timestamp().nullable() },
                Field { name: "u".into(), ty: Type::duration().nullable() },
                Field { name: "clé".into(), ty: Type::string().nullable() },
                Field { name: "a_longer_field_name".into(), ty: Type::int() },
                Field { name: "l".into(), ty: Type::list(Type::int()).nullable() },
                Field { name: "r".into(), ty: Type::record(inner).nullable() },
            ],
        ))))
    }

    const ALL_TYPES_NAMES: [&str; 13] =
        ["s", "i", "f", "b", "d", "m", "k", "t", "u", "clé", "a_longer_field_name", "l", "r"];

    /// JSON text of a well-typed value of field `f` of [`all_types`] (null where
    /// nullable): unicode, escapes, extreme and rounded numbers, timestamp strings.
    fn good_value_text(f: usize) -> BoxedStrategy<String> {
        let q = |s: String| format!("\"{s}\"");
        let piece = prop::sample::select(vec![
            "a",
            "é",
            "😀",
            " ",
            "z9",
            "abcdefgh",
            "\\\"",
            "\\\\",
            "\\n",
            "\\t",
            "\\/",
            "\\u00e9",
            "\\ud83d\\ude00",
            "\\u0041",
        ]);
        let string = prop_oneof![
            4 => "[a-zA-Z0-9 éü😀_-]{0,24}".prop_map(q),
            1 => proptest::collection::vec(piece, 0..8).prop_map(move |p| q(p.concat())),
        ];
        let int = prop_oneof![
            3 => any::<i64>().prop_map(|v| v.to_string()),
            3 => (-1000i64..1000).prop_map(|v| v.to_string()),
            1 => prop::sample::select(vec![
                "-0", "-9223372036854775808", "9223372036854775807", "123456789012345678", "-999999999999999999",
                "1234567890123456789",
            ]).prop_map(String::from),
        ];
        // A decimal with up to `int` integer digits and 0 to 6 fractional ones, at
        // times with an exponent or quoted.
        let decimal = |int: usize| {
            (prop::bool::ANY, 0..=int, "[0-9]{30}", prop::option::weighted(0.8, "[0-9]{0,6}"), 0u8..10).prop_map(
                move |(neg, n, digits, frac, form)| {
                    let whole = digits[..n].trim_start_matches('0');
                    let mut t = format!("{}{}", if neg { "-" } else { "" }, if whole.is_empty() { "0" } else { whole });
                    if let Some(fr) = frac.filter(|fr| !fr.is_empty()) {
                        t = format!("{t}.{fr}");
                    }
                    match form {
                        0 => format!("\"{t}\""),
                        1 => format!("{t}e0"),
                        _ => t,
                    }
                },
            )
        };
        let ts = prop_oneof![
            3 => (0i64..4_000_000_000_000).prop_map(|v| v.to_string()),
            1 => prop::sample::select(vec![
                "\"2023-11-14T22:13:20Z\"", "\"2023-11-14 22:13:20\"", "\"2023-11-14T22:13:20.123+02:00\"", "-5",
            ]).prop_map(String::from),
        ];
        let float = prop_oneof![
            any::<f64>().prop_filter("finite", |x| x.is_finite()).prop_map(|x| format!("{x:?}")),
            any::<f64>().prop_filter("finite", |x| x.is_finite()).prop_map(|x| format!("{x:e}")),
            (-1000i64..1000).prop_map(|v| v.to_string()),
            prop::sample::select(vec!["-0.0", "1.5E-3", "0"]).prop_map(String::from),
        ];
        let typed = match f {
            0 | 9 => string.boxed(),
            1 | 8 | 10 => int.boxed(),
            2 => float.boxed(),
            3 => prop::sample::select(vec!["true", "false"]).prop_map(String::from).boxed(),
            4 => decimal(26).boxed(),
            5 => decimal(10).boxed(),
            6 => decimal(18).boxed(),
            7 => ts.boxed(),
            11 => prop::sample::select(vec!["[1,2]", "[]", "[ 3 ]"]).prop_map(String::from).boxed(),
            _ => prop::sample::select(vec!["{\"x\":1}", "{}", "{\"x\":null}"]).prop_map(String::from).boxed(),
        };
        if all_types().record.fields[f].ty.nullable {
            prop_oneof![6 => typed, 1 => Just("null".to_string())].boxed()
        } else {
            typed
        }
    }

    /// JSON text for field `f` that is often not a value of its type: wrong types, out of
    /// range, too precise, malformed, bad escapes and control characters.
    fn any_value_text(f: usize) -> BoxedStrategy<String> {
        let bad = prop::sample::select(vec![
            "null",
            "\"\"",
            "{}",
            "[]",
            "true",
            "1",
            "\"x\"",
            "-",
            "nul",
            "01",
            "-01",
            "1.0",
            "1e3",
            "1E3",
            "1.",
            ".5",
            "+1",
            "0x10",
            "- 1",
            "9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999",
            "\"5\"",
            "1.5",
            "1e400",
            "00.1",
            "0.00005",
            "\"abc\"",
            "\" 1\"",
            "12345678901.5",
            "\"yesterday\"",
            "\"1700000000000\"",
            "tru",
            "falsey",
            "\"a\tb\"",
            "\"a\\xb\"",
            "\"abcdefghij\\q\"",
            "\"\\ud83d\"",
            "\"2023-11-14T22:13:20\\u005a\"",
            "[1,",
            "[1,[2]]",
            "[\"a\"]",
            "{\"x\":\"a\"}",
            "{\"x\":1,}",
            "\"unterminated",
        ]);
        let decimal_text = "-?[0-9]{0,21}(\\.[0-9]{0,7})?([eE][-+]?[0-9]{1,3})?";
        prop_oneof![
            2 => good_value_text(f),
            2 => bad.prop_map(String::from),
            1 => decimal_text.prop_map(String::from),
            1 => "\"[ -~]{0,12}\"",
        ]
        .boxed()
    }

    /// One line of key/value pairs for [`all_types`]: mostly well formed, with at most
    /// one field replaced by any value or left out, repeated keys (the last wins),
    /// unknown keys with nested values, any order, any whitespace.
    fn json_record_line() -> impl Strategy<Value = String> {
        let values: Vec<_> = (0..13).map(good_value_text).collect();
        // Lists and records always take the general path: leave them out of most lines.
        let missing: Vec<_> = (0..13).map(|f| prop::bool::weighted(if f >= 11 { 0.8 } else { 0.1 })).collect();
        let odd = prop::option::weighted(
            0.5,
            (0usize..13).prop_flat_map(|f| (Just(f), prop::option::weighted(0.9, any_value_text(f)))),
        );
        let extra = proptest::collection::vec(
            (
                prop::sample::select(vec!["zz", "S", "i ", "clé2", "\\u0073", "a_longer_field_nam", "é"]),
                prop::sample::select(vec![
                    "1",
                    "\"v\"",
                    "{\"n\":[1,{\"m\":null}]}",
                    "[[]]",
                    "null",
                    "\"\\\"\"",
                    "-2.5e3",
                ]),
            ),
            0..3,
        );
        let dup = prop::option::weighted(0.15, (0usize..13).prop_flat_map(|f| (Just(f), any_value_text(f))));
        let ws = prop::sample::select(vec!["", "", " ", "\t", " \r\n "]);
        let tail = prop::sample::select(vec!["", "", "", "", "", "", "", " ", "x", ",", "}"]);
        (values, missing, odd, extra, dup, any::<u64>(), ws, tail).prop_map(
            |(mut values, missing, odd, extra, dup, order, ws, tail)| {
                let fields = &all_types().record.fields;
                let mut present: Vec<bool> = (0..13).map(|f| !(missing[f] && fields[f].ty.nullable)).collect();
                if let Some((f, v)) = odd {
                    present[f] = v.is_some();
                    values[f] = v.unwrap_or_default();
                }
                let mut kv: Vec<String> = (0..13)
                    .filter(|&f| present[f])
                    .map(|f| format!("\"{}\"{ws}:{ws}{}", ALL_TYPES_NAMES[f], values[f]))
                    .collect();
                kv.extend(extra.iter().map(|(k, v)| format!("\"{k}\":{v}")));
                // Mostly the schema's order (the fast case), else rotated or two swapped.
                match order % 4 {
                    2 if !kv.is_empty() => {
                        let n = (order / 4) as usize % kv.len();
                        kv.rotate_left(n);
                    }
                    3 if kv.len() > 1 => {
                        let (a, b) = ((order / 4) as usize % kv.len(), (order / 64) as usize % kv.len());
                        kv.swap(a, b);
                    }
                    _ => {}
                }
                if let Some((f, v)) = dup {
                    kv.push(format!("\"{}\":{v}", ALL_TYPES_NAMES[f]));
                }
                format!("{ws}{{{ws}{}{ws}}}{tail}", kv.join(&format!("{ws},{ws}")))
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// The whole decoder (fast path, falling back) against the general path alone:
        /// the same rows and the same errors, line after line into one batch.
        #[test]
        fn decoding_is_the_general_path_on_generated_records(lines in proptest::collection::vec(json_record_line(), 1..6)) {
            let layout = all_types();
            let mut fast = BatchBuilder::new(layout.clone());
            let mut general = BatchBuilder::new(layout.clone());
            for line in &lines {
                let a = decode_json_row(line, &mut fast);
                let b = slow_json_row(line, &mut general);
                prop_assert_eq!(&a, &b, "{}", line);
                fast_agrees_with_slow(line, layout.clone())?;
            }
            prop_assert_eq!(fast.finish().to_values(), general.finish().to_values(), "{:?}", lines);
        }
    }

    #[test]
    fn generated_records_mostly_take_the_fast_path() {
        // The property above is only worth something if the fast path decides most lines.
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut fast, mut ok) = (0, 0);
        for _ in 0..2000 {
            let line = json_record_line().new_tree(&mut runner).expect("line").current();
            let mut b = BatchBuilder::new(all_types());
            fast += usize::from(fast_json_row(&line, &b.layout.clone(), &mut b).is_some());
            ok += usize::from(decode_json_row(&line, &mut BatchBuilder::new(all_types())).is_ok());
        }
        assert!(fast >= 300 && ok >= 1000 && ok > fast, "fast path took {fast} of 2000 lines, {ok} decoded");
    }

    #[test]
    fn fast_numbers_read_as_the_general_path() {
        let s = |t: &str| Scan { s: t, b: t.as_bytes(), i: 0 }.small_int();
        assert_eq!(s("123,"), Some(123));
        assert_eq!(s("-0"), Some(0));
        assert_eq!(s("999999999999999999"), Some(999_999_999_999_999_999));
        for t in ["01", "1.5", "1e3", "-", "", "1234567890123456789", "+1"] {
            assert_eq!(s(t), None, "{t}");
        }
        let d = |t: &str, p, sc| Scan { s: t, b: t.as_bytes(), i: 0 }.small_decimal(p, sc);
        assert_eq!(d("649.38}", 12, 2), Some(64938));
        assert_eq!(d("-0.5", 12, 2), Some(-50));
        assert_eq!(d("7", 12, 2), Some(700));
        assert_eq!(d("9999999999.99", 12, 2), Some(999_999_999_999));
        for (t, p, sc) in
            [("10000000000", 12, 2), ("1.234", 12, 2), ("1.", 12, 2), ("1e2", 12, 2), ("00.1", 12, 2), (".5", 12, 2)]
        {
            assert_eq!(d(t, p, sc), None, "{t}");
        }
        assert_eq!(plain_end(br#"abcdefghij\k"#, 0), 10);
        assert_eq!(plain_end("ééééé\"".as_bytes(), 0), 10);
        assert_eq!(plain_end(b"abcdefgh\x1f", 0), 8);
        assert_eq!(plain_end(b"abcdefghijklmnop", 3), 16);
    }

    #[test]
    fn the_fast_path_takes_the_common_case() {
        let mut b = BatchBuilder::new(txn());
        let line =
            r#" {"id": "e1", "amount": 649.38, "ts": 1699999999484, "note": null, "extra": {"x": [1, "y", {}]}} "#;
        assert!(fast_json_row(line, &b.layout.clone(), &mut b).is_some());
        let long = r#"{"id":"a long identifier, longer than 8 bytes: ünïcödé","amount":1,"ts":1}"#;
        assert!(fast_json_row(long, &b.layout.clone(), &mut b).is_some());
        assert_eq!(b.finish().row(1).str(0), "a long identifier, longer than 8 bytes: ünïcödé");
        let mut b = BatchBuilder::new(txn());
        assert!(fast_json_row(line, &b.layout.clone(), &mut b).is_some());
        for bail in [
            r#"{"id":"a\"b","amount":1,"ts":1}"#,
            r#"{"id":"abcdefghijklm\"nopqrstuvw","amount":1,"ts":1}"#,
            "{\"id\":\"abcdefghijklmnopq\trstuvw\",\"amount\":1,\"ts\":1}",
            r#"{"id":"a","amount":1,"ts":1,}"#,
            r#"{"id":"a","amount":01,"ts":1}"#,
            r#"{"id":"a","amount":1}"#,
            r#"{"id":"a","amount":1,"ts":1} x"#,
            r#"{"id":"a","amount":1,"ts":1,"tags":["x"]}"#,
        ] {
            assert!(fast_json_row(bail, &b.layout.clone(), &mut b).is_none(), "{bail}");
        }
        assert_eq!(b.len(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn fast_and_general_json_paths_agree_on_token_soup(parts in proptest::collection::vec(prop::sample::select(vec![
            "{", "}", "[", "]", ",", ":", "\"s\"", "\"i\"", "\"f\"", "\"b\"", "\"d\"", "\"m\"", "\"t\"", "\"zz\"",
            "1", "0", "-0", "01", "-1.5e3", "1.", "1e", "12345678901234567890123", "0.00005", "\"x\"", "\"\"", "null", "true", "false",
            "\"2023-11-14T22:13:20Z\"", "\"1.25\"", "\"\\u00e9\"", " ", "\t", "\"é\"",
        ]), 0..30)) {
            let line = parts.concat();
            fast_agrees_with_slow(&line, flat())?;
            fast_agrees_with_slow(&line, txn())?;
        }

        #[test]
        fn fast_and_general_json_paths_agree_on_records(
            s in "[a-zé ]{0,8}",
            i in prop::option::of(any::<i64>()),
            f in prop::option::of(-1e12f64..1e12),
            b in prop::option::of(any::<bool>()),
            d in prop::option::of(-99999i64..99999),
            t in prop::option::of(0i64..4_000_000_000_000),
            extra in prop::option::of("[a-z]{1,4}"),
            ws in prop::sample::select(vec!["", " ", "\t", "  "]),
            reverse in any::<bool>(),
        ) {
            let mut kv = vec![format!("\"s\":{ws}\"{s}\"")];
            let opt = |v: Option<String>| v.unwrap_or_else(|| "null".into());
            kv.push(format!("\"i\":{}", opt(i.map(|x| x.to_string()))));
            kv.push(format!("\"f\":{ws}{}", opt(f.map(|x| format!("{x:?}")))));
            kv.push(format!("\"b\":{}", opt(b.map(|x| x.to_string()))));
            kv.push(format!("\"d\":{}", opt(d.map(|x| format!("{}.{:03}", x / 7, (x % 1000).abs())))));
            kv.push(format!("\"t\":{}", opt(t.map(|x| x.to_string()))));
            if let Some(e) = extra {
                kv.push(format!("\"x_{e}\":{{\"n\":[1,{ws}2]}}"));
            }
            if reverse {
                kv.reverse();
            }
            let line = format!("{{{ws}{}{ws}}}", kv.join(&format!(",{ws}")));
            let mut fast = BatchBuilder::new(flat());
            prop_assert!(fast_json_row(&line, &fast.layout.clone(), &mut fast).is_some(), "{}", line);
            fast_agrees_with_slow(&line, flat())?;
        }
    }

    proptest! {
        #[test]
        fn json_decoding_never_panics(line in ".{0,200}") {
            let mut b = BatchBuilder::new(txn());
            let _ = decode_json_row(&line, &mut b);
        }

        #[test]
        fn json_like_input_never_panics(parts in proptest::collection::vec(prop::sample::select(vec![
            "{", "}", "[", "]", ",", ":", "\"id\"", "\"amount\"", "\"ts\"", "\"tags\"", "1", "-1.5e3", "\"x\"", "null", "true",
            "\"2023-11-14T22:13:20Z\"", "99999999999999999999999", "\"\\u00e9\"", " ",
        ]), 0..40)) {
            let line = parts.concat();
            let mut b = BatchBuilder::new(txn());
            let _ = decode_json_row(&line, &mut b);
        }

        #[test]
        fn decimal_text_never_panics(s in "[-+0-9.eE]{0,30}") {
            let _ = parse_decimal(&s, 38, 10);
            let _ = parse_decimal(&s, 1, 0);
        }
    }
}
