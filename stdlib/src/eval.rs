//! The built-in scalar functions at the value level.
//!
//! [`call`] evaluates any function of [`crate::SCALARS`] on argument values that the
//! checker typed. Null rules follow each function's [`crate::Nulls`]. The interpreter
//! calls this; the JIT calls the same code through [`crate::native`].

use crate::ops::{self, compare, INT_OVERFLOW};
use crate::time;
use crate::{scalar, Nulls};
use flow_types::Value;
use std::cell::RefCell;
use std::cmp::Ordering;
use std::sync::Arc;

/// Calls the built-in `name`. `Err` is a run-time error message (e.g. an invalid
/// regular expression, an overflow in `abs`).
pub fn call(name: &str, args: &[Value]) -> Result<Value, String> {
    let f = scalar(name).ok_or_else(|| format!("unknown function `{name}`"))?;
    match f.nulls {
        Nulls::FirstNonNull => {
            return Ok(args.iter().find(|a| !matches!(a, Value::Null)).cloned().unwrap_or(Value::Null))
        }
        Nulls::Propagate | Nulls::Always => {
            if args.iter().any(|a| matches!(a, Value::Null)) {
                return Ok(Value::Null);
            }
        }
    }
    let s = |i: usize| -> &str {
        match &args[i] {
            Value::String(s) => s,
            _ => "",
        }
    };
    let int = |i: usize| -> i64 {
        match &args[i] {
            Value::Int(v) | Value::Timestamp(v) | Value::Duration(v) => *v,
            _ => 0,
        }
    };
    let string = |v: String| Value::String(Arc::from(v));
    Ok(match name {
        "lower" => string(s(0).to_lowercase()),
        "upper" => string(s(0).to_uppercase()),
        "length" => Value::Int(s(0).chars().count() as i64),
        "trim" => string(s(0).trim().to_string()),
        "concat" => string(args.iter().map(|a| if let Value::String(x) = a { &**x } else { "" }).collect()),
        "substring" => string(substring(s(0), int(1), args.get(2).map(|_| int(2))).to_string()),
        "starts_with" => Value::Bool(s(0).starts_with(s(1))),
        "ends_with" => Value::Bool(s(0).ends_with(s(1))),
        "contains" => Value::Bool(s(0).contains(s(1))),
        "replace" => string(if s(1).is_empty() { s(0).to_string() } else { s(0).replace(s(1), s(2)) }),
        "matches" => Value::Bool(regex_matches(s(0), s(1))?),
        "split_part" => match split_part(s(0), s(1), int(2)) {
            Some(p) => string(p.to_string()),
            None => Value::Null,
        },
        "hash" => Value::Int(hash_value(&args[0]) as i64),
        "abs" => match &args[0] {
            Value::Int(i) => Value::Int(i.checked_abs().ok_or(INT_OVERFLOW)?),
            Value::Float(x) => Value::Float(x.abs()),
            Value::Decimal { units, scale } => Value::Decimal { units: units.abs(), scale: *scale },
            other => other.clone(),
        },
        "round" => round(&args[0], args.get(1).map_or(0, |_| int(1)), RoundMode::HalfAway),
        "floor" => round(&args[0], 0, RoundMode::Floor),
        "ceil" => round(&args[0], 0, RoundMode::Ceil),
        "sqrt" => Value::Float(float(&args[0]).sqrt()),
        "pow" => Value::Float(float(&args[0]).powf(float(&args[1]))),
        "ln" => Value::Float(float(&args[0]).ln()),
        "exp" => Value::Float(float(&args[0]).exp()),
        "least" | "greatest" => {
            let want = if name == "least" { Ordering::Less } else { Ordering::Greater };
            let mut best = args[0].clone();
            for a in &args[1..] {
                // NaN never wins a comparison, so the first argument stays.
                if compare(a, &best) == Some(want) {
                    best = a.clone();
                }
            }
            best
        }
        "date_trunc" => match time::date_trunc(s(0), int(1)) {
            Some(t) => Value::Timestamp(t),
            None => return Err(format!("unknown time unit `{}`", s(0))),
        },
        "epoch_ms" | "millis" => Value::Int(int(0)),
        "from_epoch_ms" => Value::Timestamp(int(0)),
        "hour" => Value::Int(time::hour(int(0))),
        "day_of_week" => Value::Int(time::day_of_week(int(0))),
        "format_time" => string(time::format_rfc3339(int(0))),
        "parse_time" => time::parse_rfc3339(s(0)).map_or(Value::Null, Value::Timestamp),
        "size" => match &args[0] {
            Value::List(l) => Value::Int(l.len() as i64),
            _ => Value::Null,
        },
        "element_at" => match &args[0] {
            Value::List(l) => list_at(l, int(1)),
            _ => Value::Null,
        },
        _ => return Err(format!("function `{name}` has no implementation")),
    })
}

/// `list[i]`, 1-based; null outside.
pub fn list_at(l: &[Value], i: i64) -> Value {
    if i < 1 {
        return Value::Null;
    }
    usize::try_from(i - 1).ok().and_then(|i| l.get(i)).cloned().unwrap_or(Value::Null)
}

fn float(v: &Value) -> f64 {
    match v {
        Value::Int(i) => *i as f64,
        Value::Float(x) => *x,
        Value::Decimal { units, scale } => ops::decimal_to_float(*units, *scale),
        _ => f64::NAN,
    }
}

/// `substring(s, start, len?)`: 1-based on characters. A start before 1 counts the
/// characters before it against `len` (as SQL does); out of range gives "".
pub fn substring(s: &str, start: i64, len: Option<i64>) -> &str {
    let end = match len {
        Some(l) if l < 0 => return "",
        Some(l) => start.saturating_add(l),
        None => i64::MAX,
    };
    let start = start.max(1);
    if end <= start {
        return "";
    }
    let mut from = s.len();
    let mut to = s.len();
    for (n, (at, _)) in (1i64..).zip(s.char_indices()) {
        if n == start {
            from = at;
        }
        if n == end {
            to = at;
            break;
        }
    }
    if from >= to {
        return "";
    }
    &s[from..to]
}

/// The n-th (1-based) piece of `s` split at `sep`; `None` past the end, for n < 1,
/// or for an empty separator.
pub fn split_part<'a>(s: &'a str, sep: &str, n: i64) -> Option<&'a str> {
    if sep.is_empty() || n < 1 {
        return None;
    }
    s.split(sep).nth(usize::try_from(n - 1).ok()?)
}

thread_local! {
    static REGEXES: RefCell<Vec<(String, Result<regex::Regex, String>)>> = const { RefCell::new(Vec::new()) };
}

/// A cache of compiled patterns per thread, at most this many.
const REGEX_CACHE_MAX: usize = 32;

pub fn regex_matches(s: &str, pattern: &str) -> Result<bool, String> {
    REGEXES.with(|cache| {
        let mut cache = cache.borrow_mut();
        let i = match cache.iter().position(|(p, _)| p == pattern) {
            Some(i) => i,
            None => {
                if cache.len() >= REGEX_CACHE_MAX {
                    let _ = cache.remove(0);
                }
                let r = regex::Regex::new(pattern).map_err(|e| format!("invalid regular expression: {e}"));
                cache.push((pattern.to_string(), r));
                cache.len() - 1
            }
        };
        match &cache[i].1 {
            Ok(r) => Ok(r.is_match(s)),
            Err(e) => Err(e.clone()),
        }
    })
}

/// FNV-1a 64 over the value's encoded form: stable across runs and machines.
pub fn hash_value(v: &Value) -> u64 {
    let mut buf = Vec::new();
    flow_types::row::encode_value(v, &mut buf);
    hash_bytes(&buf)
}

pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RoundMode {
    HalfAway,
    Floor,
    Ceil,
}

/// Rounds to `digits` after the point (negative: before it), keeping the type.
fn round(v: &Value, digits: i64, mode: RoundMode) -> Value {
    match v {
        Value::Int(i) => {
            if digits >= 0 || mode != RoundMode::HalfAway {
                return Value::Int(*i);
            }
            let Ok(k) = u32::try_from(-digits) else { return Value::Int(0) };
            if k > 18 {
                return Value::Int(0);
            }
            let m = 10i64.pow(k);
            let q = i128::from(*i) / i128::from(m);
            let r = i128::from(*i) % i128::from(m);
            let q = if 2 * r.abs() >= i128::from(m) { q + r.signum() } else { q };
            Value::Int(i64::try_from(q * i128::from(m)).unwrap_or(*i))
        }
        Value::Float(x) => {
            let f = match mode {
                RoundMode::Floor => return Value::Float(x.floor()),
                RoundMode::Ceil => return Value::Float(x.ceil()),
                RoundMode::HalfAway => 10f64.powi(digits.clamp(-400, 400) as i32),
            };
            let r = (x * f).round() / f;
            Value::Float(if r.is_finite() { r } else { *x })
        }
        Value::Decimal { units, scale } => {
            let keep = match mode {
                RoundMode::HalfAway => digits.clamp(0, i64::from(*scale)) as u8,
                _ => 0,
            };
            let m = ops::pow10(u32::from(*scale - keep));
            let (q, r) = (units / m, units % m);
            let q = match mode {
                RoundMode::HalfAway if 2 * r.unsigned_abs() >= m as u128 => q + units.signum(),
                RoundMode::Floor if r < 0 => q - 1,
                RoundMode::Ceil if r > 0 => q + 1,
                _ => q,
            };
            // A result one digit wider than the type cannot occur: rounding 99.5 at
            // decimal(3, 1) gives 100.0, which is 1000 units, 4 digits; keep units exact.
            Value::Decimal { units: q * m, scale: *scale }
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(s: &str) -> Value {
        Value::String(s.into())
    }

    #[test]
    fn strings_and_unicode() {
        assert_eq!(call("length", &[st("héllo🌍")]), Ok(Value::Int(6)));
        assert_eq!(call("upper", &[st("straße")]), Ok(st("STRASSE")));
        assert_eq!(call("substring", &[st("héllo"), Value::Int(2), Value::Int(3)]), Ok(st("éll")));
        assert_eq!(call("substring", &[st("héllo"), Value::Int(4)]), Ok(st("lo")));
        assert_eq!(call("substring", &[st("héllo"), Value::Int(9)]), Ok(st("")));
        assert_eq!(call("substring", &[st("héllo"), Value::Int(0), Value::Int(2)]), Ok(st("h")));
        assert_eq!(call("substring", &[st("abc"), Value::Int(i64::MIN), Value::Int(i64::MAX)]), Ok(st("")));
        assert_eq!(call("substring", &[st("abc"), Value::Int(2), Value::Int(-1)]), Ok(st("")));
        assert_eq!(call("split_part", &[st("a,b,c"), st(","), Value::Int(2)]), Ok(st("b")));
        assert_eq!(call("split_part", &[st("a,b,c"), st(","), Value::Int(4)]), Ok(Value::Null));
        assert_eq!(call("concat", &[st("a"), st("é")]), Ok(st("aé")));
        assert_eq!(call("concat", &[st("a"), Value::Null]), Ok(Value::Null));
        assert_eq!(call("matches", &[st("abc123"), st("^[a-z]+[0-9]+$")]), Ok(Value::Bool(true)));
        assert!(call("matches", &[st("x"), st("(")]).is_err());
        assert_eq!(call("replace", &[st("aaa"), st(""), st("b")]), Ok(st("aaa")));
    }

    #[test]
    fn math() {
        assert_eq!(call("abs", &[Value::Int(i64::MIN)]), Err(INT_OVERFLOW.to_string()));
        assert_eq!(call("round", &[Value::Float(2.5)]), Ok(Value::Float(3.0)));
        assert_eq!(call("round", &[Value::Float(-2.5)]), Ok(Value::Float(-3.0)));
        assert_eq!(
            call("round", &[Value::Decimal { units: -1250, scale: 3 }, Value::Int(2)]),
            Ok(Value::Decimal { units: -1250, scale: 3 })
        );
        assert_eq!(
            call("round", &[Value::Decimal { units: -1255, scale: 3 }, Value::Int(2)]),
            Ok(Value::Decimal { units: -1260, scale: 3 })
        );
        assert_eq!(
            call("floor", &[Value::Decimal { units: -15, scale: 1 }]),
            Ok(Value::Decimal { units: -20, scale: 1 })
        );
        assert_eq!(call("round", &[Value::Int(1250), Value::Int(-2)]), Ok(Value::Int(1300)));
        assert!(matches!(call("sqrt", &[Value::Int(-1)]), Ok(Value::Float(x)) if x.is_nan()));
        assert_eq!(call("least", &[Value::Int(3), Value::Int(1), Value::Int(2)]), Ok(Value::Int(1)));
        assert_eq!(call("greatest", &[Value::Int(3), Value::Null]), Ok(Value::Null));
        assert_eq!(call("coalesce", &[Value::Null, Value::Int(2)]), Ok(Value::Int(2)));
    }

    #[test]
    fn lists_and_hash() {
        let l = Value::List(vec![Value::Int(1), Value::Int(2)].into());
        assert_eq!(call("element_at", &[l.clone(), Value::Int(2)]), Ok(Value::Int(2)));
        assert_eq!(call("element_at", &[l.clone(), Value::Int(0)]), Ok(Value::Null));
        assert_eq!(call("size", &[l]), Ok(Value::Int(2)));
        assert_eq!(call("hash", &[st("a")]), call("hash", &[st("a")]));
        assert_ne!(call("hash", &[st("a")]), call("hash", &[st("b")]));
    }

    #[test]
    fn every_scalar_has_an_implementation() {
        for f in crate::SCALARS {
            let args: Vec<Value> = f
                .params
                .iter()
                .map(|p| match p {
                    crate::Param::Bool => Value::Bool(true),
                    crate::Param::String => st("day"),
                    crate::Param::Timestamp => Value::Timestamp(0),
                    crate::Param::Duration => Value::Duration(0),
                    crate::Param::List => Value::List(vec![Value::Int(1)].into()),
                    _ => Value::Int(1),
                })
                .collect();
            let r = call(f.name, &args);
            assert!(matches!(r, Ok(ref v) if *v != Value::Null) || f.nulls == Nulls::Always, "{}: {r:?}", f.name);
            assert!(r.is_ok(), "{}: {r:?}", f.name);
        }
    }
}
