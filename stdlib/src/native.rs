//! `extern "C"` entry points for compiled code.
//!
//! The JIT emits the hot operations inline (field loads and stores, null checks, int
//! and float arithmetic, comparisons, string equality and prefix tests) and calls
//! these for the rest: every stdlib scalar, decimal arithmetic, casts, list and
//! record operations, string ordering and string output. [`symbols`] lists them for
//! `JITBuilder::symbol`. They share [`crate::ops`] and [`crate::eval`] with the
//! interpreter, so both back ends agree on every edge by construction.
//!
//! Values cross the boundary as [`Slot`]s: a null flag and two 64-bit words whose
//! meaning depends on the static type (see [`Slot`]). Strings and encoded lists or
//! records are (pointer, length) pairs; those a helper makes live in
//! [`NativeCtx::scratch`] until the batch ends.
//!
//! The string scalars of [`FastScalar`] work on the bytes: every string slot holds
//! valid UTF-8 (only builders that checked it write string slots, see
//! `flow_types::row`), and on valid UTF-8 byte-wise substring search and replacing
//! byte-wise matches give exactly what the `str` methods give (a valid needle matches
//! only at character boundaries), without validating each argument again on every
//! call. (`hour`, `starts_with` and `length` never get here: the JIT emits them inline.)

use crate::ops::{self, Arith};
use flow_types::row::{decode_value, encode_value};
use flow_types::{Kind, Type, Value};
use std::sync::Arc;

/// A value passed to or returned by a helper.
///
/// | type | `a` | `b` |
/// | --- | --- | --- |
/// | bool | 0 or 1 | - |
/// | int, timestamp, duration, decimal(p <= 18) | the `i64` (units) | - |
/// | float | the `f64` bits | - |
/// | decimal(p > 18) | low 64 bits of the `i128` units | high 64 bits |
/// | string, list, record | pointer to UTF-8 / encoded bytes | length |
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    pub null: u64,
    pub a: u64,
    pub b: u64,
}

/// Bytes of a [`Slot`], for code that lays them out.
pub const SLOT_BYTES: u32 = 24;

/// What a call site of [`flow_op`] computes.
#[derive(Clone, Debug)]
pub enum NativeOp {
    /// A stdlib scalar (nulls handled by [`crate::eval::call`]).
    Scalar(&'static str),
    /// A cast of one non-null argument to the result type.
    Cast,
    /// Decimal arithmetic to the result type (two non-null arguments).
    DecArith(Arith),
    /// Three-way comparison of two non-null values: result int -1, 0, 1, or 2 when
    /// unordered (NaN, unequal lists).
    Compare,
    /// `list[i]` (1-based, null outside).
    Index,
    /// Field `i` of a record (null when the record is).
    GetField(usize),
    /// A list of the arguments.
    MakeList,
    /// A record of the arguments.
    MakeRecord,
}

/// One call site: the operation, its argument types and its result type.
#[derive(Clone, Debug)]
pub struct Site {
    pub op: NativeOp,
    pub args: Vec<Type>,
    pub ret: Type,
    /// The scalars [`flow_op`] computes straight on slots, resolved once per site.
    pub fast: Option<FastScalar>,
}

impl Site {
    pub fn new(op: NativeOp, args: Vec<Type>, ret: Type) -> Site {
        let fast = FastScalar::of(&op, &args);
        Site { op, args, ret, fast }
    }
}

/// Stdlib scalars computed on slots without building values (`scalar_slots`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastScalar {
    DayOfWeek,
    Contains,
    EndsWith,
    Replace,
}

impl FastScalar {
    /// The fast form of `op` on arguments of types `args`, if it has one.
    fn of(op: &NativeOp, args: &[Type]) -> Option<FastScalar> {
        let NativeOp::Scalar(name) = op else { return None };
        let kinds: Vec<&Kind> = args.iter().map(|t| &t.kind).collect();
        use Kind::{String as S, Timestamp as T};
        Some(match (*name, kinds.as_slice()) {
            ("day_of_week", [T]) => FastScalar::DayOfWeek,
            ("contains", [S, S]) => FastScalar::Contains,
            ("ends_with", [S, S]) => FastScalar::EndsWith,
            ("replace", [S, S, S]) => FastScalar::Replace,
            _ => return None,
        })
    }
}

/// Bytes per chunk of [`NativeCtx::scratch`] (a longer value gets a chunk of its own).
const SCRATCH_CHUNK: usize = 16 * 1024;

/// The state compiled code threads through helper calls during one batch.
#[derive(Debug, Default)]
pub struct NativeCtx {
    pub sites: Arc<[Site]>,
    /// Strings and encoded values made by helpers during this batch, in chunks that
    /// are never reallocated once written (slots point into them).
    pub scratch: Vec<Vec<u8>>,
    /// A reused buffer for building a helper's string before it is kept.
    build: Vec<u8>,
    /// The message of the last failed helper call.
    pub error: Option<String>,
    /// The output batch's new arena bytes and where they start in its arena.
    pub out_extra: Vec<u8>,
    pub out_base_len: u64,
}

impl NativeCtx {
    pub fn new(sites: Arc<[Site]>) -> NativeCtx {
        NativeCtx { sites, ..NativeCtx::default() }
    }

    /// A copy of `bytes` kept until the batch ends, as a slot.
    fn keep(&mut self, bytes: &[u8]) -> Slot {
        let n = bytes.len();
        let room = self.scratch.last().is_some_and(|c| c.capacity() - c.len() >= n);
        if !room {
            self.scratch.push(Vec::with_capacity(n.max(SCRATCH_CHUNK)));
        }
        let chunk = self.scratch.last_mut().expect("a chunk with room");
        let at = chunk.len();
        // Within capacity: the chunk does not move, so earlier slots stay valid.
        chunk.extend_from_slice(bytes);
        Slot { null: 0, a: chunk[at..].as_ptr() as u64, b: n as u64 }
    }

    /// The bytes `fill` writes, kept until the batch ends, as a slot.
    fn keep_built(&mut self, fill: impl FnOnce(&mut Vec<u8>)) -> Slot {
        let mut buf = std::mem::take(&mut self.build);
        buf.clear();
        fill(&mut buf);
        let s = self.keep(&buf);
        self.build = buf;
        s
    }

    /// A value of type `ty` as a slot.
    pub fn to_slot(&mut self, v: &Value, ty: &Type) -> Slot {
        let word = |a: u64| Slot { null: 0, a, b: 0 };
        match v {
            Value::Null => Slot { null: 1, a: 0, b: 0 },
            Value::Bool(b) => word(u64::from(*b)),
            Value::Int(i) | Value::Timestamp(i) | Value::Duration(i) => word(*i as u64),
            Value::Float(x) => word(x.to_bits()),
            Value::Decimal { units, .. } => match ty.kind {
                Kind::Decimal { precision, .. } if precision <= 18 => word(*units as i64 as u64),
                _ => Slot { null: 0, a: *units as u64, b: (*units >> 64) as u64 },
            },
            Value::String(s) => self.keep(s.as_bytes()),
            Value::List(_) | Value::Record(_) => self.keep_built(|buf| encode_value(v, buf)),
        }
    }
}

/// The value a slot of type `ty` holds.
///
/// # Safety
/// A string, list or record slot must point at `b` readable bytes (UTF-8 for strings).
pub unsafe fn from_slot(s: &Slot, ty: &Type) -> Value {
    if s.null != 0 {
        return Value::Null;
    }
    let bytes = || -> &[u8] {
        if s.b == 0 {
            return &[];
        }
        // SAFETY: the caller promises (a, b) is a readable byte range.
        unsafe { std::slice::from_raw_parts(s.a as *const u8, s.b as usize) }
    };
    match &ty.kind {
        Kind::Bool => Value::Bool(s.a & 1 != 0),
        Kind::Int | Kind::Null | Kind::Error => Value::Int(s.a as i64),
        Kind::Timestamp => Value::Timestamp(s.a as i64),
        Kind::Duration => Value::Duration(s.a as i64),
        Kind::Float => Value::Float(f64::from_bits(s.a)),
        Kind::Decimal { precision, scale } if *precision <= 18 => {
            Value::Decimal { units: i128::from(s.a as i64), scale: *scale }
        }
        Kind::Decimal { scale, .. } => {
            Value::Decimal { units: (s.a as u128 | (u128::from(s.b) << 64)) as i128, scale: *scale }
        }
        Kind::String => Value::String(Arc::from(std::str::from_utf8(bytes()).unwrap_or(""))),
        Kind::List(_) | Kind::Record(_) => decode_value(bytes(), ty).unwrap_or(Value::Null),
    }
}

/// Evaluates a call site on values (also what the interpreter's edges mean).
pub fn apply(site: &Site, args: &[Value]) -> Result<Value, String> {
    let null = || args.iter().any(|a| matches!(a, Value::Null));
    Ok(match &site.op {
        NativeOp::Scalar(name) => match (crate::eval::call(name, args)?, &site.ret.kind) {
            // `round(9.99)` at decimal(3, 2) is 10.00: it does not fit.
            (Value::Decimal { units, .. }, Kind::Decimal { precision, .. }) if !ops::fits(units, *precision) => {
                return Err(ops::DEC_OVERFLOW.into())
            }
            (v, _) => v,
        },
        NativeOp::Cast if null() => Value::Null,
        NativeOp::Cast => match ops::cast(&args[0], &site.ret) {
            Some(v) => v,
            None if site.ret.nullable => Value::Null,
            None => return Err(cast_failure(&site.ret).to_string()),
        },
        NativeOp::DecArith(_) | NativeOp::Compare if null() => Value::Null,
        NativeOp::DecArith(op) => {
            let (Value::Decimal { units: a, scale: sa }, Value::Decimal { units: b, scale: sb }) = (&args[0], &args[1])
            else {
                return Err("decimal operands expected".into());
            };
            let Kind::Decimal { precision, scale } = site.ret.kind else {
                return Err("decimal result expected".into());
            };
            Value::Decimal { units: ops::dec_arith(*op, *a, *sa, *b, *sb, precision, scale)?, scale }
        }
        NativeOp::Compare => Value::Int(match ops::compare(&args[0], &args[1]) {
            Some(o) => o as i64,
            None => 2,
        }),
        NativeOp::Index => match (&args[0], &args[1]) {
            (Value::List(l), Value::Int(i)) => crate::eval::list_at(l, *i),
            _ => Value::Null,
        },
        NativeOp::GetField(i) => match &args[0] {
            Value::Record(r) => r.get(*i).cloned().unwrap_or(Value::Null),
            _ => Value::Null,
        },
        NativeOp::MakeList => Value::List(args.into()),
        NativeOp::MakeRecord => Value::Record(args.into()),
    })
}

/// The error of a cast that fails where its type is not nullable (only decimal
/// rounding can do that: 9.99 as decimal(2, 1) is 10.0).
pub fn cast_failure(_to: &Type) -> &'static str {
    ops::DEC_OVERFLOW
}

/// Calls site `site` of `ctx` on `n` argument slots at `args`, writing the result to
/// `out`. Returns 0, or 1 after setting `ctx.error`.
///
/// # Safety
/// `ctx` is a live `NativeCtx`, `args` points at `n` slots of the site's argument
/// types, `out` at one writable slot.
pub unsafe extern "C" fn flow_op(ctx: *mut NativeCtx, site: u64, args: *const Slot, n: u64, out: *mut Slot) -> u32 {
    // SAFETY: the caller passes a live context and valid slots.
    let ctx = unsafe { &mut *ctx };
    // Moved out and back rather than cloned: no reference-count traffic per call
    // (instances on other threads share the sites).
    let sites = std::mem::take(&mut ctx.sites);
    let site = &sites[site as usize];
    let slots = if n == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(args, n as usize) } };
    let fast = match dec_arith_slots(site, slots) {
        Some(r) => Some(r),
        None => scalar_slots(site, slots, ctx),
    };
    let result = match fast {
        Some(r) => r,
        None if slots.len() <= 4 => {
            // Up to four arguments on the stack: no allocation for the common calls.
            let values: [Value; 4] = std::array::from_fn(|i| match (slots.get(i), site.args.get(i)) {
                (Some(s), Some(t)) => unsafe { from_slot(s, t) },
                _ => Value::Null,
            });
            apply(site, &values[..slots.len()]).map(|v| ctx.to_slot(&v, &site.ret))
        }
        None => {
            let values: Vec<Value> = slots.iter().zip(&site.args).map(|(s, t)| unsafe { from_slot(s, t) }).collect();
            apply(site, &values).map(|v| ctx.to_slot(&v, &site.ret))
        }
    };
    ctx.sites = sites;
    match result {
        Ok(s) => {
            unsafe { *out = s };
            0
        }
        Err(e) => {
            ctx.error = Some(e);
            1
        }
    }
}

/// The commonest string and time scalars straight from and to slots (what [`apply`]
/// does for them, without building values: no shared string per argument, no value to
/// drop). Non-null arguments only; `None` for anything else, which takes [`apply`].
fn scalar_slots(site: &Site, slots: &[Slot], ctx: &mut NativeCtx) -> Option<Result<Slot, String>> {
    let fast = site.fast?;
    if slots.iter().any(|s| s.null != 0) {
        return None;
    }
    let int = |v: i64| Some(Ok(Slot { null: 0, a: v as u64, b: 0 }));
    let bool_ = |v: bool| Some(Ok(Slot { null: 0, a: u64::from(v), b: 0 }));
    // A string slot's bytes: valid UTF-8 (see the module docs).
    let bytes = |i: usize| -> &[u8] {
        let s = &slots[i];
        if s.b == 0 {
            return &[];
        }
        // SAFETY: a string slot points at `b` readable bytes (flow_op's contract).
        unsafe { std::slice::from_raw_parts(s.a as *const u8, s.b as usize) }
    };
    match fast {
        FastScalar::DayOfWeek => int(crate::time::day_of_week(slots[0].a as i64)),
        FastScalar::Contains => bool_(memchr::memmem::find(bytes(0), bytes(1)).is_some()),
        FastScalar::EndsWith => bool_(bytes(0).ends_with(bytes(1))),
        FastScalar::Replace => {
            let (s, from, to) = (bytes(0), bytes(1), bytes(2));
            Some(Ok(ctx.keep_built(|out| replace_bytes(s, from, to, out))))
        }
    }
}

/// `s` with every non-overlapping occurrence of `from`, left to right, replaced by
/// `to`, appended to `out` (flow's `replace`: an empty `from` replaces nothing). On
/// valid UTF-8 this is `str::replace`.
pub fn replace_bytes(s: &[u8], from: &[u8], to: &[u8], out: &mut Vec<u8>) {
    let mut last = 0;
    let mut put = |at: usize, out: &mut Vec<u8>| {
        out.extend_from_slice(&s[last..at]);
        out.extend_from_slice(to);
        last = at + from.len();
    };
    match from {
        [] => {}
        [b] => memchr::memchr_iter(*b, s).for_each(|at| put(at, out)),
        _ => memchr::memmem::find_iter(s, from).for_each(|at| put(at, out)),
    }
    out.extend_from_slice(&s[last..]);
}

/// Decimal arithmetic straight from and to slots (what [`apply`] does for
/// `DecArith`, without building values); `None` for other sites.
fn dec_arith_slots(site: &Site, slots: &[Slot]) -> Option<Result<Slot, String>> {
    let NativeOp::DecArith(op) = site.op else { return None };
    let (
        [a, b],
        [Type { kind: Kind::Decimal { precision: pa, scale: sa }, .. }, Type { kind: Kind::Decimal { precision: pb, scale: sb }, .. }],
        Kind::Decimal { precision, scale },
    ) = (slots, site.args.as_slice(), &site.ret.kind)
    else {
        return None;
    };
    if a.null != 0 || b.null != 0 {
        return Some(Ok(Slot { null: 1, a: 0, b: 0 }));
    }
    let units = |s: &Slot, p: u8| {
        if p <= 18 {
            i128::from(s.a as i64)
        } else {
            (s.a as u128 | (u128::from(s.b) << 64)) as i128
        }
    };
    Some(ops::dec_arith(op, units(a, *pa), *sa, units(b, *pb), *sb, *precision, *scale).map_err(String::from).map(
        |u| {
            if *precision <= 18 {
                Slot { null: 0, a: u as i64 as u64, b: 0 }
            } else {
                Slot { null: 0, a: u as u64, b: (u >> 64) as u64 }
            }
        },
    ))
}

/// Appends `len` bytes at `ptr` to the output arena; returns their arena offset, or
/// `u64::MAX` when the arena would pass 4 GiB.
///
/// # Safety
/// `ctx` is a live `NativeCtx`; `ptr` points at `len` readable bytes.
pub unsafe extern "C" fn flow_str_out(ctx: *mut NativeCtx, ptr: *const u8, len: u64) -> u64 {
    // SAFETY: the caller passes a live context and a readable range.
    let ctx = unsafe { &mut *ctx };
    let off = ctx.out_base_len + ctx.out_extra.len() as u64;
    if off + len > u64::from(u32::MAX) {
        ctx.error = Some("batch arena full".into());
        return u64::MAX;
    }
    if len > 0 {
        ctx.out_extra.extend_from_slice(unsafe { std::slice::from_raw_parts(ptr, len as usize) });
    }
    off
}

/// Byte-wise comparison of two strings: -1, 0 or 1.
///
/// # Safety
/// Both ranges are readable.
pub unsafe extern "C" fn flow_str_cmp(a: *const u8, alen: u64, b: *const u8, blen: u64) -> i64 {
    let (x, y) = unsafe {
        (
            if alen == 0 { &[][..] } else { std::slice::from_raw_parts(a, alen as usize) },
            if blen == 0 { &[][..] } else { std::slice::from_raw_parts(b, blen as usize) },
        )
    };
    x.cmp(y) as i64
}

/// The helpers compiled code may call, by symbol name.
pub fn symbols() -> Vec<(&'static str, *const u8)> {
    vec![
        ("flow_op", flow_op as *const u8),
        ("flow_str_out", flow_str_out as *const u8),
        ("flow_str_cmp", flow_str_cmp as *const u8),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip() {
        let mut ctx = NativeCtx::default();
        let cases = [
            (Value::Int(i64::MIN), Type::int()),
            (Value::Float(-0.0), Type::float()),
            (Value::Decimal { units: -(10i128.pow(37)), scale: 3 }, Type::decimal(38, 3)),
            (Value::Decimal { units: -5, scale: 1 }, Type::decimal(10, 1)),
            (Value::String("héllo".into()), Type::string()),
            (Value::List(vec![Value::Int(1), Value::Null].into()), Type::list(Type::int().nullable())),
            (Value::Null, Type::string().nullable()),
        ];
        for (v, t) in cases {
            let s = ctx.to_slot(&v, &t);
            assert_eq!(unsafe { from_slot(&s, &t) }, v);
        }
    }

    /// The slot-level fast paths of `scalar_slots` give what `apply` gives on values,
    /// through `flow_op` as compiled code calls it: edge cases of each function.
    #[test]
    fn scalar_fast_paths_agree_with_apply() {
        let st = |x: &str| Value::String(x.into());
        let ts = Value::Timestamp;
        let (s, t) = (Type::string(), Type::timestamp());
        let cases: Vec<(&'static str, Vec<Type>, Type, Vec<Value>)> = vec![
            ("replace", vec![s.clone(); 3], s.clone(), vec![st("abcabc"), st("b"), st("XY")]),
            ("replace", vec![s.clone(); 3], s.clone(), vec![st("aaa"), st(""), st("b")]),
            ("replace", vec![s.clone(); 3], s.clone(), vec![st("aaaa"), st("aa"), st("a")]),
            ("replace", vec![s.clone(); 3], s.clone(), vec![st("héllo🌍"), st("🌍"), st("")]),
            ("replace", vec![s.clone(); 3], s.clone(), vec![st(""), st("x"), st("y")]),
            ("contains", vec![s.clone(); 2], Type::bool(), vec![st("abc"), st("")]),
            ("contains", vec![s.clone(); 2], Type::bool(), vec![st("abc"), st("bd")]),
            ("ends_with", vec![s.clone(); 2], Type::bool(), vec![st("héllo"), st("lo")]),
            ("day_of_week", vec![t.clone()], Type::int(), vec![ts(-86_400_000 * 10)]),
        ];
        for (name, args, ret, values) in cases {
            let site = Site::new(NativeOp::Scalar(name), args.clone(), ret.clone());
            assert!(site.fast.is_some(), "{name} has a fast form");
            let want = apply(&site, &values).unwrap();
            let mut ctx = NativeCtx::new(vec![site].into());
            let slots: Vec<Slot> = values.iter().zip(&args).map(|(v, t)| ctx.to_slot(v, t)).collect();
            let mut out = Slot::default();
            let rc = unsafe { flow_op(&mut ctx, 0, slots.as_ptr(), slots.len() as u64, &mut out) };
            assert_eq!(rc, 0, "{name}{values:?}");
            assert_eq!(unsafe { from_slot(&out, &ret) }, want, "{name}{values:?}");
        }
    }

    /// Many helper results in one batch: each slot still reads back what was kept
    /// (chunks never move once written), across chunk boundaries and long values.
    #[test]
    fn kept_slots_stay_valid_across_chunks() {
        let mut ctx = NativeCtx::default();
        let t = Type::string();
        let values: Vec<Value> =
            (0..3000).map(|i| Value::String("x".repeat(i % 40 + (i % 500 == 0) as usize * 20_000).into())).collect();
        let slots: Vec<Slot> = values.iter().map(|v| ctx.to_slot(v, &t)).collect();
        assert!(ctx.scratch.len() > 2, "{} chunks", ctx.scratch.len());
        for (s, v) in slots.iter().zip(&values) {
            assert_eq!(unsafe { from_slot(s, &t) }, *v);
        }
    }

    proptest::proptest! {
        /// The byte-wise string scalars give what the `str` methods give, on any
        /// valid UTF-8 (needles drawn from the haystack's own characters too).
        #[test]
        fn byte_wise_strings_match_str(s in "\\PC{0,40}", from in "\\PC{0,3}", to in "\\PC{0,3}", at in 0usize..40, n in 0usize..4) {
            let chars: Vec<char> = s.chars().collect();
            let inner: String = chars.iter().skip(at.min(chars.len())).take(n).collect();
            for from in [from.as_str(), inner.as_str()] {
                let mut out = Vec::new();
                replace_bytes(s.as_bytes(), from.as_bytes(), to.as_bytes(), &mut out);
                let want = if from.is_empty() { s.clone() } else { s.replace(from, &to) };
                proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), want);
                proptest::prop_assert_eq!(memchr::memmem::find(s.as_bytes(), from.as_bytes()).is_some(), s.contains(from));
            }
        }
    }

    #[test]
    fn failed_cast_to_non_nullable_is_an_error() {
        let site = Site::new(NativeOp::Cast, vec![Type::decimal(3, 2)], Type::decimal(2, 1));
        assert_eq!(apply(&site, &[Value::Decimal { units: 999, scale: 2 }]), Err(ops::DEC_OVERFLOW.into()));
        let site = Site { ret: Type::decimal(2, 1).nullable(), ..site };
        assert_eq!(apply(&site, &[Value::Decimal { units: 999, scale: 2 }]), Ok(Value::Null));
    }
}
