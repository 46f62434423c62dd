//! Operators on values: arithmetic, comparison and casts, with the run-time
//! semantics of docs/language.md ("Run-time semantics").
//!
//! The interpreter calls these directly; the JIT inlines the hot cases (int and float
//! arithmetic, comparisons) and calls the rest through [`crate::native`], so both
//! back ends share one definition of every edge (overflow, rounding, failed casts).
//! Errors are messages; the caller attaches the .flow span.

use crate::time;
use flow_types::{format_decimal, Kind, Type, Value};
use std::cmp::Ordering;

pub const INT_OVERFLOW: &str = "integer overflow";
pub const DIV_ZERO: &str = "division by zero";
pub const DEC_OVERFLOW: &str = "decimal overflow";

/// Arithmetic operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

// ---------------------------------------------------------------- ints

pub fn int_arith(op: Arith, a: i64, b: i64) -> Result<i64, &'static str> {
    match op {
        Arith::Add => a.checked_add(b).ok_or(INT_OVERFLOW),
        Arith::Sub => a.checked_sub(b).ok_or(INT_OVERFLOW),
        Arith::Mul => a.checked_mul(b).ok_or(INT_OVERFLOW),
        Arith::Div | Arith::Rem if b == 0 => Err(DIV_ZERO),
        Arith::Div => a.checked_div(b).ok_or(INT_OVERFLOW),
        // i64::MIN % -1 is 0 mathematically; Rust's checked_rem calls it overflow.
        Arith::Rem => Ok(a.checked_rem(b).unwrap_or(0)),
    }
}

pub fn float_arith(op: Arith, a: f64, b: f64) -> f64 {
    match op {
        Arith::Add => a + b,
        Arith::Sub => a - b,
        Arith::Mul => a * b,
        Arith::Div => a / b,
        Arith::Rem => a % b,
    }
}

// ---------------------------------------------------------------- decimals

/// 10^n for n <= 38.
pub fn pow10(n: u32) -> i128 {
    10i128.pow(n)
}

/// An unsigned 256-bit integer (little-endian 64-bit limbs), enough for the exact
/// intermediate results of decimal(38) multiplication, division and rescaling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct U256([u64; 4]);

impl U256 {
    const ZERO: U256 = U256([0; 4]);

    fn from_u128(v: u128) -> U256 {
        U256([v as u64, (v >> 64) as u64, 0, 0])
    }

    fn to_u128(self) -> Option<u128> {
        (self.0[2] == 0 && self.0[3] == 0).then(|| u128::from(self.0[0]) | (u128::from(self.0[1]) << 64))
    }

    fn mul_u64(self, m: u64) -> Option<U256> {
        let mut out = [0u64; 4];
        let mut carry = 0u128;
        for (i, limb) in self.0.iter().enumerate() {
            let p = u128::from(*limb) * u128::from(m) + carry;
            out[i] = p as u64;
            carry = p >> 64;
        }
        (carry == 0).then_some(U256(out))
    }

    fn mul_pow10(mut self, mut n: u32) -> Option<U256> {
        while n > 0 {
            let k = n.min(19);
            self = self.mul_u64(10u64.pow(k))?;
            n -= k;
        }
        Some(self)
    }

    fn mul(self, o: U256) -> Option<U256> {
        let mut acc = U256::ZERO;
        for (i, limb) in o.0.iter().enumerate() {
            if *limb == 0 {
                continue;
            }
            let mut part = self.mul_u64(*limb)?;
            for _ in 0..i {
                if part.0[3] != 0 {
                    return None;
                }
                part = U256([0, part.0[0], part.0[1], part.0[2]]);
            }
            acc = acc.add(part)?;
        }
        Some(acc)
    }

    fn add(self, o: U256) -> Option<U256> {
        let mut out = [0u64; 4];
        let mut carry = false;
        for (i, slot) in out.iter_mut().enumerate() {
            let (s1, c1) = self.0[i].overflowing_add(o.0[i]);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            *slot = s2;
            carry = c1 || c2;
        }
        (!carry).then_some(U256(out))
    }

    fn sub(self, o: U256) -> U256 {
        let mut out = [0u64; 4];
        let mut borrow = false;
        for (i, slot) in out.iter_mut().enumerate() {
            let (s1, b1) = self.0[i].overflowing_sub(o.0[i]);
            let (s2, b2) = s1.overflowing_sub(u64::from(borrow));
            *slot = s2;
            borrow = b1 || b2;
        }
        U256(out)
    }

    fn cmp_limbs(&self, o: &U256) -> Ordering {
        self.0.iter().rev().cmp(o.0.iter().rev())
    }

    fn bit(&self, i: usize) -> bool {
        self.0[i / 64] >> (i % 64) & 1 == 1
    }

    fn shl1(self) -> U256 {
        let l = self.0;
        U256([l[0] << 1, l[1] << 1 | l[0] >> 63, l[2] << 1 | l[1] >> 63, l[3] << 1 | l[2] >> 63])
    }

    /// (quotient, remainder); `d` must not be zero.
    fn divrem(self, d: U256) -> (U256, U256) {
        let mut q = U256::ZERO;
        let mut r = U256::ZERO;
        for i in (0..256).rev() {
            r = r.shl1();
            if self.bit(i) {
                r.0[0] |= 1;
            }
            if r.cmp_limbs(&d) != Ordering::Less {
                r = r.sub(d);
                q.0[i / 64] |= 1 << (i % 64);
            }
        }
        (q, r)
    }

    /// self / d rounded half away from zero (on magnitudes).
    fn div_round(self, d: U256) -> Option<U256> {
        let (q, r) = self.divrem(d);
        let twice = r.shl1();
        if r.0[3] >> 63 == 1 || twice.cmp_limbs(&d) != Ordering::Less {
            q.add(U256::from_u128(1))
        } else {
            Some(q)
        }
    }
}

fn signed(neg: bool, mag: U256) -> Option<i128> {
    let m = mag.to_u128()?;
    if neg {
        0i128.checked_sub_unsigned(m)
    } else {
        i128::try_from(m).ok()
    }
}

/// Whether `units` fits `precision` digits.
pub fn fits(units: i128, precision: u8) -> bool {
    precision >= 39 || units.unsigned_abs() < pow10(u32::from(precision)) as u128
}

/// Rescales `units` from scale `from` to scale `to`, rounding half away from zero.
/// `None` when the result overflows an i128.
pub fn rescale(units: i128, from: u8, to: u8) -> Option<i128> {
    match to.cmp(&from) {
        Ordering::Equal => Some(units),
        Ordering::Greater => {
            let m = U256::from_u128(units.unsigned_abs()).mul_pow10(u32::from(to - from))?;
            signed(units < 0, m)
        }
        Ordering::Less => {
            let d = U256::from_u128(1).mul_pow10(u32::from(from - to))?;
            let m = U256::from_u128(units.unsigned_abs()).div_round(d)?;
            signed(units < 0, m)
        }
    }
}

/// Decimal arithmetic: `(ua, sa) op (ub, sb)` to the result type `(p, s)` (from
/// `flow_types::arith_result`). Exact, rounding half away from zero where the
/// result scale is smaller than the exact one.
pub fn dec_arith(op: Arith, ua: i128, sa: u8, ub: i128, sb: u8, p: u8, s: u8) -> Result<i128, &'static str> {
    let neg = (ua < 0) != (ub < 0);
    let (ma, mb) = (U256::from_u128(ua.unsigned_abs()), U256::from_u128(ub.unsigned_abs()));
    let r = match op {
        Arith::Add | Arith::Sub => {
            // Exact at scale max(sa, sb), then to s.
            let m = sa.max(sb);
            let a = rescale(ua, sa, m).ok_or(DEC_OVERFLOW)?;
            let b = rescale(ub, sb, m).ok_or(DEC_OVERFLOW)?;
            let exact = if op == Arith::Add { a.checked_add(b) } else { a.checked_sub(b) }.ok_or(DEC_OVERFLOW)?;
            rescale(exact, m, s).ok_or(DEC_OVERFLOW)?
        }
        Arith::Mul => {
            let prod = ma.mul(mb).ok_or(DEC_OVERFLOW)?;
            let exact_scale = u32::from(sa) + u32::from(sb);
            let mag = match exact_scale.cmp(&u32::from(s)) {
                Ordering::Equal => prod,
                Ordering::Greater => {
                    let d = U256::from_u128(1).mul_pow10(exact_scale - u32::from(s)).ok_or(DEC_OVERFLOW)?;
                    prod.div_round(d).ok_or(DEC_OVERFLOW)?
                }
                Ordering::Less => prod.mul_pow10(u32::from(s) - exact_scale).ok_or(DEC_OVERFLOW)?,
            };
            signed(neg, mag).ok_or(DEC_OVERFLOW)?
        }
        Arith::Div => {
            if ub == 0 {
                return Err(DIV_ZERO);
            }
            // a / b at scale s = (ma * 10^(s - sa + sb)) / mb, or with the divisor scaled.
            let k = i32::from(s) - i32::from(sa) + i32::from(sb);
            let (num, den) = if k >= 0 {
                (ma.mul_pow10(k as u32).ok_or(DEC_OVERFLOW)?, mb)
            } else {
                (ma, mb.mul_pow10((-k) as u32).ok_or(DEC_OVERFLOW)?)
            };
            signed(neg, num.div_round(den).ok_or(DEC_OVERFLOW)?).ok_or(DEC_OVERFLOW)?
        }
        Arith::Rem => {
            if ub == 0 {
                return Err(DIV_ZERO);
            }
            let m = sa.max(sb);
            let a = ma.mul_pow10(u32::from(m - sa)).ok_or(DEC_OVERFLOW)?;
            let b = mb.mul_pow10(u32::from(m - sb)).ok_or(DEC_OVERFLOW)?;
            let (_, r) = a.divrem(b);
            let r = signed(ua < 0, r).ok_or(DEC_OVERFLOW)?;
            rescale(r, m, s).ok_or(DEC_OVERFLOW)?
        }
    };
    if fits(r, p) {
        Ok(r)
    } else {
        Err(DEC_OVERFLOW)
    }
}

/// Parses decimal text (`-12.345`, `+1`, `.5`, `1e3` is not accepted) to `scale`,
/// rounding half away from zero; `None` when it does not parse or overflows.
pub fn parse_decimal(s: &str, scale: u8) -> Option<i128> {
    let s = s.trim();
    let (neg, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if (int.is_empty() && frac.is_empty()) || !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut mag = U256::ZERO;
    for c in int.bytes().chain(frac.bytes()) {
        mag = mag.mul_u64(10)?.add(U256::from_u128(u128::from(c - b'0')))?;
    }
    let frac_len = u32::try_from(frac.len()).ok()?;
    let mag = if frac_len > u32::from(scale) {
        mag.div_round(U256::from_u128(1).mul_pow10(frac_len - u32::from(scale))?)?
    } else {
        mag.mul_pow10(u32::from(scale) - frac_len)?
    };
    signed(neg, mag)
}

/// The exact value of a finite float rounded half away from zero to `scale` digits.
pub fn float_to_decimal(x: f64, scale: u8) -> Option<i128> {
    if !x.is_finite() {
        return None;
    }
    if x == 0.0 {
        return Some(0);
    }
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1 << 52) - 1);
    let (mant, e) = if exp == 0 { (frac, -1074) } else { (frac | (1 << 52), exp - 1075) };
    // |x| = mant * 2^e
    let scaled = U256::from_u128(u128::from(mant)).mul_pow10(u32::from(scale))?;
    let mag = if e >= 0 {
        let mut m = scaled;
        for _ in 0..e {
            if m.0[3] >> 63 == 1 {
                return None;
            }
            m = m.shl1();
        }
        m
    } else if -e >= 256 {
        U256::ZERO // far below half a unit
    } else {
        let mut d = U256::from_u128(1);
        for _ in 0..-e {
            d = d.shl1();
        }
        scaled.div_round(d)?
    };
    signed(x < 0.0, mag)
}

/// The float nearest to a decimal (correctly rounded).
pub fn decimal_to_float(units: i128, scale: u8) -> f64 {
    format_decimal(units, scale).parse().unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------- comparison

/// Compares two non-null values of one kind (the checker made them so). Floats use
/// IEEE order: `None` when either is NaN. Lists and records compare element-wise
/// for equality only (`Some(Equal)` or `None`).
pub fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    use Value as V;
    match (a, b) {
        (V::Int(x), V::Int(y)) | (V::Timestamp(x), V::Timestamp(y)) | (V::Duration(x), V::Duration(y)) => {
            Some(x.cmp(y))
        }
        (V::Float(x), V::Float(y)) => x.partial_cmp(y),
        (V::Bool(x), V::Bool(y)) => Some(x.cmp(y)),
        (V::String(x), V::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (V::Decimal { units: x, scale: sx }, V::Decimal { units: y, scale: sy }) => {
            if sx == sy {
                return Some(x.cmp(y));
            }
            let m = (*sx).max(*sy);
            match (rescale(*x, *sx, m), rescale(*y, *sy, m)) {
                (Some(x), Some(y)) => Some(x.cmp(&y)),
                // Only reachable with scales 38 apart: the larger magnitude wins.
                _ => Some(decimal_to_float(*x, *sx).total_cmp(&decimal_to_float(*y, *sy))),
            }
        }
        (V::List(x), V::List(y)) | (V::Record(x), V::Record(y)) => {
            let eq = x.len() == y.len()
                && x.iter().zip(y.iter()).all(|(p, q)| match (p, q) {
                    (V::Null, V::Null) => true,
                    (V::Null, _) | (_, V::Null) => false,
                    _ => compare(p, q) == Some(Ordering::Equal),
                });
            eq.then_some(Ordering::Equal)
        }
        _ => None,
    }
}

// ---------------------------------------------------------------- casts

/// Casts a non-null value to `to`. `None` when a fallible cast fails (a parse error,
/// a float out of the int range or NaN, a decimal that does not fit); the caller
/// makes that null (or an error when the target type is not nullable).
pub fn cast(v: &Value, to: &Type) -> Option<Value> {
    use Value as V;
    Some(match (v, &to.kind) {
        (V::Null, _) => V::Null,
        (V::Int(i), Kind::Int) | (V::Timestamp(i), Kind::Int) | (V::Duration(i), Kind::Int) => V::Int(*i),
        (V::Int(i) | V::Timestamp(i) | V::Duration(i), Kind::Timestamp) => V::Timestamp(*i),
        (V::Int(i) | V::Timestamp(i) | V::Duration(i), Kind::Duration) => V::Duration(*i),
        (V::Bool(b), Kind::Int) => V::Int(i64::from(*b)),
        (V::Bool(b), Kind::Bool) => V::Bool(*b),
        (V::Int(i), Kind::Float) => V::Float(*i as f64),
        (V::Float(x), Kind::Float) => V::Float(*x),
        (V::Decimal { units, scale }, Kind::Float) => V::Float(decimal_to_float(*units, *scale)),
        (V::Int(i), Kind::Decimal { precision, scale }) => {
            let u = rescale(i128::from(*i), 0, *scale)?;
            fits(u, *precision).then_some(V::Decimal { units: u, scale: *scale })?
        }
        (V::Decimal { units, scale: s }, Kind::Decimal { precision, scale }) => {
            let u = rescale(*units, *s, *scale)?;
            fits(u, *precision).then_some(V::Decimal { units: u, scale: *scale })?
        }
        (V::Decimal { units, scale }, Kind::Int) => V::Int(i64::try_from(units / pow10(u32::from(*scale))).ok()?),
        (V::Float(x), Kind::Int) => V::Int(float_to_int(*x)?),
        (V::Float(x), Kind::Decimal { precision, scale }) => {
            let u = float_to_decimal(*x, *scale)?;
            fits(u, *precision).then_some(V::Decimal { units: u, scale: *scale })?
        }
        (_, Kind::String) => V::String(to_text(v).into()),
        (V::String(s), Kind::Int) => V::Int(s.trim().parse().ok()?),
        (V::String(s), Kind::Float) => V::Float(s.trim().parse().ok()?),
        (V::String(s), Kind::Decimal { precision, scale }) => {
            let u = parse_decimal(s, *scale)?;
            fits(u, *precision).then_some(V::Decimal { units: u, scale: *scale })?
        }
        (V::String(s), Kind::Bool) => match s.trim() {
            t if t.eq_ignore_ascii_case("true") => V::Bool(true),
            t if t.eq_ignore_ascii_case("false") => V::Bool(false),
            _ => return None,
        },
        (V::String(s), Kind::Timestamp) => V::Timestamp(time::parse_rfc3339(s.trim())?),
        (V::String(s), Kind::Duration) => V::Duration(time::parse_duration(s)?),
        (V::List(_) | V::Record(_), _) => v.clone(),
        _ => return None,
    })
}

/// float -> int: truncation toward zero; `None` for NaN and out of range.
pub fn float_to_int(x: f64) -> Option<i64> {
    let t = x.trunc();
    // -2^63 is representable; 2^63 is not an i64.
    (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&t).then_some(t as i64)
}

/// The text of a value for `as string`: shortest round-trip floats (`1.0`, `1e300`,
/// `NaN`, `inf`), decimals with their scale, RFC 3339 timestamps, durations in their
/// largest exact unit.
pub fn to_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(x) => format!("{x:?}"),
        Value::Decimal { units, scale } => format_decimal(*units, *scale),
        Value::Bool(b) => b.to_string(),
        Value::Timestamp(t) => time::format_rfc3339(*t),
        Value::Duration(d) => time::format_duration(*d),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(units: i128, scale: u8) -> Value {
        Value::Decimal { units, scale }
    }

    #[test]
    fn int_edges() {
        assert_eq!(int_arith(Arith::Add, i64::MAX, 1), Err(INT_OVERFLOW));
        assert_eq!(int_arith(Arith::Div, i64::MIN, -1), Err(INT_OVERFLOW));
        assert_eq!(int_arith(Arith::Rem, i64::MIN, -1), Ok(0));
        assert_eq!(int_arith(Arith::Div, 1, 0), Err(DIV_ZERO));
        assert_eq!(int_arith(Arith::Rem, 1, 0), Err(DIV_ZERO));
        assert_eq!(int_arith(Arith::Div, -7, 2), Ok(-3));
        assert_eq!(int_arith(Arith::Rem, -7, 2), Ok(-1));
        assert_eq!(int_arith(Arith::Rem, 7, -2), Ok(1));
    }

    #[test]
    fn decimal_arith() {
        // 1.25 + 0.005 at (4, 3)
        assert_eq!(dec_arith(Arith::Add, 125, 2, 5, 3, 5, 3), Ok(1255));
        // 1.5 * 1.5 = 2.25
        assert_eq!(dec_arith(Arith::Mul, 15, 1, 15, 1, 4, 2), Ok(225));
        // 1 / 3 at scale 6 = 0.333333; 2 / 3 = 0.666667 (half away from zero)
        assert_eq!(dec_arith(Arith::Div, 1, 0, 3, 0, 12, 6), Ok(333_333));
        assert_eq!(dec_arith(Arith::Div, -2, 0, 3, 0, 12, 6), Ok(-666_667));
        assert_eq!(dec_arith(Arith::Div, 1, 0, 0, 0, 12, 6), Err(DIV_ZERO));
        assert_eq!(dec_arith(Arith::Rem, -75, 1, 2, 0, 3, 1), Ok(-15));
        // 99.9 + 0.1 does not fit decimal(3, 1)
        assert_eq!(dec_arith(Arith::Add, 999, 1, 1, 1, 3, 1), Err(DEC_OVERFLOW));
        // A 38-digit product rounded to scale 6.
        let big = pow10(37);
        assert_eq!(dec_arith(Arith::Mul, big, 10, 1, 10, 38, 6), Ok(pow10(23)));
        assert_eq!(dec_arith(Arith::Mul, 15, 1, 15, 1, 38, 1), Ok(23));
        assert_eq!(dec_arith(Arith::Mul, big, 0, big, 0, 38, 0), Err(DEC_OVERFLOW));
        assert_eq!(dec_arith(Arith::Div, big, 0, pow10(10), 0, 38, 6), Ok(pow10(33)));
    }

    #[test]
    fn casts() {
        assert_eq!(cast(&Value::Float(f64::NAN), &Type::int()), None);
        assert_eq!(cast(&Value::Float(-2.9), &Type::int()), Some(Value::Int(-2)));
        assert_eq!(cast(&Value::Float(9.3e18), &Type::int()), None);
        assert_eq!(cast(&Value::Float(-9.223_372_036_854_776e18), &Type::int()), Some(Value::Int(i64::MIN)));
        assert_eq!(cast(&Value::Float(2.675), &Type::decimal(5, 2)), Some(dec(267, 2))); // 2.67499999...
        assert_eq!(cast(&Value::Float(0.125), &Type::decimal(5, 2)), Some(dec(13, 2)));
        assert_eq!(cast(&Value::Float(-0.125), &Type::decimal(5, 2)), Some(dec(-13, 2)));
        assert_eq!(cast(&dec(12345, 2), &Type::decimal(3, 0)), Some(dec(123, 0)));
        assert_eq!(cast(&dec(99999, 2), &Type::decimal(3, 0)), None);
        assert_eq!(cast(&dec(-12999, 3), &Type::int()), Some(Value::Int(-12)));
        assert_eq!(cast(&Value::String(" 42 ".into()), &Type::int()), Some(Value::Int(42)));
        assert_eq!(cast(&Value::String("4x".into()), &Type::int()), None);
        assert_eq!(cast(&Value::String("TRUE".into()), &Type::bool()), Some(Value::Bool(true)));
        assert_eq!(cast(&Value::String("-1.005".into()), &Type::decimal(5, 2)), Some(dec(-101, 2)));
        assert_eq!(cast(&Value::Float(0.1), &Type::string()), Some(Value::String("0.1".into())));
        assert_eq!(cast(&Value::Float(1.0), &Type::string()), Some(Value::String("1.0".into())));
        assert_eq!(cast(&dec(-5, 3), &Type::string()), Some(Value::String("-0.005".into())));
        assert_eq!(cast(&Value::Timestamp(0), &Type::string()), Some(Value::String("1970-01-01T00:00:00.000Z".into())));
        assert_eq!(cast(&dec(1, 1), &Type::float()), Some(Value::Float(0.1)));
    }

    #[test]
    fn comparisons() {
        assert_eq!(compare(&Value::Float(f64::NAN), &Value::Float(1.0)), None);
        assert_eq!(compare(&Value::Float(-0.0), &Value::Float(0.0)), Some(Ordering::Equal));
        assert_eq!(compare(&dec(10, 1), &dec(100, 2)), Some(Ordering::Equal));
        assert_eq!(compare(&Value::String("é".into()), &Value::String("z".into())), Some(Ordering::Greater));
    }
}
