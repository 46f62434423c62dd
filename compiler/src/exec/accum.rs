//! JIT-compiled accumulator updates for `aggregate { }`.
//!
//! The runtime lays an aggregate's accumulators out as 64-bit words (`runtime/src/run/
//! agg.rs`): a bitmap of "has a value" flags, then each aggregate's words. For the
//! aggregates whose state is fixed-width (counts, sums, min/max of numbers, averages,
//! first/last of numbers) this module compiles one native function that adds one row to
//! one accumulator in place:
//!
//! ```text
//! fn update(acc: *mut u64, row: *const u8, ts: i64) -> i32   // 0, or an AccError code
//! ```
//!
//! It checks every checked sum first (an overflowing row changes nothing), then updates
//! with straight-line code: selects, not branches, per aggregate. The semantics are the
//! runtime's Rust updater's, which stays the reference (`--no-jit`) and the fallback for
//! aggregates that keep variable-size state (strings, distinct sets); a property test in
//! agg.rs holds the two to the same words.

use super::codegen::{new_module, ModuleBox, Options};
use super::CompileError;
use crate::source::Span;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, AbiParam, InstBuilder, MemFlagsData as MemFlags, UserFuncName, Value as CV};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{Linkage, Module};

/// What one fixed-width aggregate does with its argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccOp {
    /// `count()`: every row, no flag.
    CountAll,
    /// `count(x)`: non-null rows.
    Count,
    /// Wrapping i64 sum (the check pass refuses overflow).
    SumI,
    SumF,
    /// i128 sum of an i64 or i128 argument, within 38 digits.
    SumD,
    MinI,
    MaxI,
    MinF,
    MaxF,
    /// i128 argument.
    MinD,
    MaxD,
    /// i128 sum (not checked) and a count.
    AvgI,
    /// f64 sum and a count.
    AvgF,
    /// i128 sum within 38 digits and a count.
    AvgD,
    /// The value with the earliest event time (ties: the first to arrive), then its time.
    First,
    /// The value with the latest event time (ties: the last to arrive), then its time.
    Last,
}

/// One aggregate of the function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccStep {
    pub op: AccOp,
    /// Its index among the aggregate's calls: flag bit `flag % 64` of word `flag / 64`.
    pub flag: usize,
    /// The argument's field (its null bit) and its slot's byte offset in the row; None
    /// for `count()`.
    pub arg: Option<(usize, u32)>,
    /// The argument's slot is 16 bytes (a decimal(38)).
    pub wide: bool,
    /// The accumulator's first word.
    pub at: usize,
}

/// Why an update was refused: the codes the function returns.
pub const ACC_INT_OVERFLOW: i32 = 1;
pub const ACC_DEC_OVERFLOW: i32 = 2;

/// 10^38: a decimal(38) holds magnitudes below it.
const DEC38_LO: i64 = 0x098a_2240_0000_0000;
const DEC38_HI: i64 = 0x4b3b_4ca8_5a86_c47a;

type UpdateFn = unsafe extern "C" fn(*mut u64, *const u8, i64) -> i32;

/// A compiled accumulator update.
pub struct AccUpdate {
    _module: ModuleBox,
    func: UpdateFn,
    /// Words the accumulator must have, and bytes the row must have.
    words: usize,
    row_bytes: usize,
}

impl std::fmt::Debug for AccUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccUpdate").field("words", &self.words).field("row_bytes", &self.row_bytes).finish()
    }
}

impl AccUpdate {
    /// Compiles `steps` for accumulators of `width` words (the flag words included).
    pub fn compile(steps: &[AccStep], width: usize, opts: Options) -> Result<AccUpdate, CompileError> {
        let span = Span::default();
        let cerr = |m: String| CompileError { span, message: m };
        let mut row_bytes = 0;
        let mut words = width;
        for s in steps {
            if let Some((f, off)) = s.arg {
                row_bytes = row_bytes.max(f / 8 + 1).max(off as usize + if s.wide { 16 } else { 8 });
            }
            words = words.max(s.flag / 64 + 1).max(s.at + op_words(s.op, s.wide));
        }
        let mut module = new_module(opts, span)?;
        let mut ctx = module.make_context();
        let ptr = types::I64;
        let mut sig = module.make_signature();
        sig.params.extend([AbiParam::new(ptr), AbiParam::new(ptr), AbiParam::new(types::I64)]);
        sig.returns.push(AbiParam::new(types::I32));
        let id =
            module.declare_function("acc_update", Linkage::Local, &sig).map_err(|e| cerr(format!("cranelift: {e}")))?;
        ctx.func.signature = sig;
        ctx.func.name = UserFuncName::user(0, id.as_u32());
        let mut fctx = FunctionBuilderContext::new();
        let mut fb = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        build(&mut fb, steps);
        fb.finalize(module.target_config());
        module.define_function(id, &mut ctx).map_err(|e| cerr(format!("cranelift: {e:?}")))?;
        module.clear_context(&mut ctx);
        module.finalize_definitions().map_err(|e| cerr(format!("cranelift: {e}")))?;
        let code = module.get_finalized_function(id);
        // SAFETY: the function was built with exactly this signature.
        let func = unsafe { std::mem::transmute::<*const u8, UpdateFn>(code) };
        Ok(AccUpdate { _module: ModuleBox(module), func, words, row_bytes })
    }

    /// Adds `row` (a row's bytes) with event time `ts` to `acc`; 0, or an error code
    /// ([`ACC_INT_OVERFLOW`], [`ACC_DEC_OVERFLOW`]) and `acc` unchanged.
    #[inline]
    pub fn update(&self, acc: &mut [u64], row: &[u8], ts: i64) -> i32 {
        assert!(acc.len() >= self.words && row.len() >= self.row_bytes, "accumulator or row too short");
        // SAFETY: the function reads `row_bytes` bytes of `row` and reads and writes
        // `words` words of `acc` (checked above), unaligned access allowed; it keeps no
        // pointer past the call.
        unsafe { (self.func)(acc.as_mut_ptr(), row.as_ptr(), ts) }
    }
}

/// Words an aggregate's accumulator takes (see agg.rs).
fn op_words(op: AccOp, wide: bool) -> usize {
    match op {
        AccOp::SumD | AccOp::MinD | AccOp::MaxD | AccOp::AvgF => 2,
        AccOp::AvgI | AccOp::AvgD => 3,
        AccOp::First | AccOp::Last => 1 + usize::from(wide) + 1,
        _ => 1,
    }
}

fn build(fb: &mut FunctionBuilder, steps: &[AccStep]) {
    use types::{F64, I128, I32, I64, I8};
    let fl = MemFlags::trusted();
    let entry = fb.create_block();
    fb.append_block_params_for_function_params(entry);
    fb.switch_to_block(entry);
    let p = fb.block_params(entry).to_vec();
    let (acc, row, ts) = (p[0], p[1], p[2]);
    let load_i128 = |fb: &mut FunctionBuilder, base: CV, off: i32| {
        let lo = fb.ins().load(I64, fl, base, off);
        let hi = fb.ins().load(I64, fl, base, off + 8);
        fb.ins().iconcat(lo, hi)
    };
    let store_i128 = |fb: &mut FunctionBuilder, v: CV, base: CV, off: i32| {
        let (lo, hi) = fb.ins().isplit(v);
        fb.ins().store(fl, lo, base, off);
        fb.ins().store(fl, hi, base, off + 8);
    };
    // The argument as i128 (decimals in their units; i64 slots sign-extended).
    let arg_i128 = |fb: &mut FunctionBuilder, s: &AccStep, off: i32| {
        if s.wide {
            load_i128(fb, row, off)
        } else {
            let v = fb.ins().load(I64, fl, row, off);
            fb.ins().sextend(I128, v)
        }
    };
    let is_null = |fb: &mut FunctionBuilder, f: usize| {
        let byte = fb.ins().load(I8, fl, row, (f / 8) as i32);
        let bit = fb.ins().band_imm_u(byte, 1i64 << (f % 8));
        fb.ins().icmp_imm_u(IntCC::NotEqual, bit, 0)
    };
    // i128 a + b and whether it overflowed (signs of both differ from the sum's).
    let add_of = |fb: &mut FunctionBuilder, a: CV, b: CV| {
        let sum = fb.ins().iadd(a, b);
        let x = fb.ins().bxor(a, sum);
        let y = fb.ins().bxor(b, sum);
        let both = fb.ins().band(x, y);
        let (_, hi) = fb.ins().isplit(both);
        let of = fb.ins().icmp_imm_s(IntCC::SignedLessThan, hi, 0);
        (sum, of)
    };
    let w = |at: usize| (at * 8) as i32;
    // Adds one to the count word at byte `at` of the accumulator.
    let bump = |fb: &mut FunctionBuilder, at: i32| {
        let c = fb.ins().load(I64, fl, acc, at);
        let c = fb.ins().iadd_imm_u(c, 1);
        fb.ins().store(fl, c, acc, at);
    };

    // Check pass: a refused row changes nothing.
    for s in steps {
        let Some((f, off)) = s.arg else { continue };
        let code = match s.op {
            AccOp::SumI => ACC_INT_OVERFLOW,
            AccOp::SumD | AccOp::AvgD => ACC_DEC_OVERFLOW,
            _ => continue,
        };
        let off = off as i32;
        let null = is_null(fb, f);
        let bad = if s.op == AccOp::SumI {
            let cur = fb.ins().load(I64, fl, acc, w(s.at));
            let v = fb.ins().load(I64, fl, row, off);
            let sum = fb.ins().iadd(cur, v);
            let x = fb.ins().bxor(cur, sum);
            let y = fb.ins().bxor(v, sum);
            let both = fb.ins().band(x, y);
            fb.ins().icmp_imm_s(IntCC::SignedLessThan, both, 0)
        } else {
            let cur = load_i128(fb, acc, w(s.at));
            let v = arg_i128(fb, s, off);
            let (sum, of) = add_of(fb, cur, v);
            let lo = fb.ins().iconst(I64, DEC38_LO);
            let hi = fb.ins().iconst(I64, DEC38_HI);
            let limit = fb.ins().iconcat(lo, hi);
            let neg = fb.ins().ineg(limit);
            let too_big = fb.ins().icmp(IntCC::SignedGreaterThanOrEqual, sum, limit);
            let too_small = fb.ins().icmp(IntCC::SignedLessThanOrEqual, sum, neg);
            let out = fb.ins().bor(too_big, too_small);
            fb.ins().bor(of, out)
        };
        let not_null = fb.ins().bxor_imm_u(null, 1);
        let refuse = fb.ins().band(bad, not_null);
        let fail = fb.create_block();
        let next = fb.create_block();
        fb.set_cold_block(fail);
        fb.ins().brif(refuse, fail, &[], next, &[]);
        fb.switch_to_block(fail);
        let c = fb.ins().iconst(I32, i64::from(code));
        fb.ins().return_(&[c]);
        fb.switch_to_block(next);
    }

    // Update pass.
    for s in steps {
        let at = w(s.at);
        let Some((f, off)) = s.arg else {
            bump(fb, at);
            continue;
        };
        let off = off as i32;
        let null = is_null(fb, f);
        let skip = fb.create_block();
        let body = fb.create_block();
        fb.ins().brif(null, skip, &[], body, &[]);
        fb.switch_to_block(body);
        let fw = w(s.flag / 64);
        let bit = 1u64 << (s.flag % 64);
        let flags = fb.ins().load(I64, fl, acc, fw);
        let had_bits = fb.ins().band_imm_u(flags, bit as i64);
        let had = fb.ins().icmp_imm_u(IntCC::NotEqual, had_bits, 0);
        let set = fb.ins().bor_imm_u(flags, bit as i64);
        fb.ins().store(fl, set, acc, fw);
        let first = fb.ins().bxor_imm_u(had, 1);
        match s.op {
            AccOp::CountAll | AccOp::Count => bump(fb, at),
            AccOp::SumI => {
                let c = fb.ins().load(I64, fl, acc, at);
                let v = fb.ins().load(I64, fl, row, off);
                let c = fb.ins().iadd(c, v);
                fb.ins().store(fl, c, acc, at);
            }
            AccOp::SumF | AccOp::AvgF => {
                let c = fb.ins().load(F64, fl, acc, at);
                let v = fb.ins().load(F64, fl, row, off);
                let c = fb.ins().fadd(c, v);
                fb.ins().store(fl, c, acc, at);
                if s.op == AccOp::AvgF {
                    bump(fb, at + 8);
                }
            }
            AccOp::SumD | AccOp::AvgI | AccOp::AvgD => {
                let c = load_i128(fb, acc, at);
                let v = arg_i128(fb, s, off);
                let c = fb.ins().iadd(c, v);
                store_i128(fb, c, acc, at);
                if s.op != AccOp::SumD {
                    bump(fb, at + 16);
                }
            }
            AccOp::MinI | AccOp::MaxI => {
                let c = fb.ins().load(I64, fl, acc, at);
                let v = fb.ins().load(I64, fl, row, off);
                let cc = if s.op == AccOp::MinI { IntCC::SignedLessThan } else { IntCC::SignedGreaterThan };
                let better = fb.ins().icmp(cc, v, c);
                let take = fb.ins().bor(first, better);
                let n = fb.ins().select(take, v, c);
                fb.ins().store(fl, n, acc, at);
            }
            AccOp::MinD | AccOp::MaxD => {
                let c = load_i128(fb, acc, at);
                let v = arg_i128(fb, s, off);
                let cc = if s.op == AccOp::MinD { IntCC::SignedLessThan } else { IntCC::SignedGreaterThan };
                let better = fb.ins().icmp(cc, v, c);
                let take = fb.ins().bor(first, better);
                let (clo, chi) = fb.ins().isplit(c);
                let (vlo, vhi) = fb.ins().isplit(v);
                let lo = fb.ins().select(take, vlo, clo);
                let hi = fb.ins().select(take, vhi, chi);
                fb.ins().store(fl, lo, acc, at);
                fb.ins().store(fl, hi, acc, at + 8);
            }
            AccOp::MinF | AccOp::MaxF => {
                let c = fb.ins().load(F64, fl, acc, at);
                let v = fb.ins().load(F64, fl, row, off);
                let cc = if s.op == AccOp::MinF { FloatCC::LessThan } else { FloatCC::GreaterThan };
                let better = fb.ins().fcmp(cc, v, c);
                // A NaN so far gives way to any number.
                let c_nan = fb.ins().fcmp(FloatCC::Unordered, c, c);
                let v_num = fb.ins().fcmp(FloatCC::Ordered, v, v);
                let heal = fb.ins().band(c_nan, v_num);
                let take = fb.ins().bor(first, better);
                let take = fb.ins().bor(take, heal);
                let n = fb.ins().select(take, v, c);
                fb.ins().store(fl, n, acc, at);
            }
            AccOp::First | AccOp::Last => {
                let ts_at = at + if s.wide { 16 } else { 8 };
                let cur_ts = fb.ins().load(I64, fl, acc, ts_at);
                let cc = if s.op == AccOp::First { IntCC::SignedLessThan } else { IntCC::SignedGreaterThanOrEqual };
                let later = fb.ins().icmp(cc, ts, cur_ts);
                let take = fb.ins().bor(first, later);
                let nts = fb.ins().select(take, ts, cur_ts);
                fb.ins().store(fl, nts, acc, ts_at);
                let halves = if s.wide { 2 } else { 1 };
                for h in 0..halves {
                    let c = fb.ins().load(I64, fl, acc, at + 8 * h);
                    let v = fb.ins().load(I64, fl, row, off + 8 * h);
                    let n = fb.ins().select(take, v, c);
                    fb.ins().store(fl, n, acc, at + 8 * h);
                }
            }
        }
        fb.ins().jump(skip, &[]);
        fb.switch_to_block(skip);
    }
    let ok = fb.ins().iconst(I32, 0);
    fb.ins().return_(&[ok]);
    fb.seal_all_blocks();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(nulls: u8, a: i64, b: f64, d: i128) -> Vec<u8> {
        let mut r = vec![nulls];
        r.resize(8, 0);
        r.extend_from_slice(&a.to_le_bytes());
        r.extend_from_slice(&b.to_le_bytes());
        r.extend_from_slice(&d.to_le_bytes());
        r
    }

    fn opts() -> Options {
        Options { verifier: true }
    }

    #[test]
    fn counts_sums_and_extremes() {
        // Fields: 0 = int at byte 8, 1 = float at 16, 2 = decimal(38) at 24.
        let steps = [
            AccStep { op: AccOp::CountAll, flag: 0, arg: None, wide: false, at: 1 },
            AccStep { op: AccOp::SumI, flag: 1, arg: Some((0, 8)), wide: false, at: 2 },
            AccStep { op: AccOp::MaxF, flag: 2, arg: Some((1, 16)), wide: false, at: 3 },
            AccStep { op: AccOp::MinD, flag: 3, arg: Some((2, 24)), wide: true, at: 4 },
        ];
        let f = AccUpdate::compile(&steps, 6, opts()).expect("compile");
        let mut acc = [0u64; 6];
        assert_eq!(f.update(&mut acc, &row(0, 5, 1.5, -7), 0), 0);
        assert_eq!(f.update(&mut acc, &row(0b010, 6, f64::NAN, 3), 0), 0);
        assert_eq!(f.update(&mut acc, &row(0, 1, 0.5, 2), 0), 0);
        assert_eq!(acc[1], 3);
        assert_eq!(acc[2] as i64, 12);
        assert_eq!(f64::from_bits(acc[3]), 1.5);
        assert_eq!((u128::from(acc[4]) | u128::from(acc[5]) << 64) as i128, -7);
        assert_eq!(acc[0], 0b1110);
        // An overflowing row is refused whole.
        let before = acc;
        assert_eq!(f.update(&mut acc, &row(0, i64::MAX, 9.0, 0), 0), ACC_INT_OVERFLOW);
        assert_eq!(acc, before);
    }

    #[test]
    fn decimal_sums_stop_at_38_digits() {
        let steps = [AccStep { op: AccOp::SumD, flag: 0, arg: Some((2, 24)), wide: true, at: 1 }];
        let f = AccUpdate::compile(&steps, 3, opts()).expect("compile");
        let mut acc = [0u64; 3];
        let nines = 10i128.pow(38) - 1;
        assert_eq!(f.update(&mut acc, &row(0, 0, 0.0, nines), 0), 0);
        assert_eq!(f.update(&mut acc, &row(0, 0, 0.0, 1), 0), ACC_DEC_OVERFLOW);
        assert_eq!(f.update(&mut acc, &row(0, 0, 0.0, -nines), 0), 0);
        assert_eq!(acc[1..], [0, 0]);
        // A null argument is skipped, not checked.
        assert_eq!(f.update(&mut acc, &row(0b100, 0, 0.0, i128::MAX), 0), 0);
    }

    #[test]
    fn first_and_last_by_event_time() {
        let steps = [
            AccStep { op: AccOp::First, flag: 0, arg: Some((0, 8)), wide: false, at: 1 },
            AccStep { op: AccOp::Last, flag: 1, arg: Some((0, 8)), wide: false, at: 3 },
        ];
        let f = AccUpdate::compile(&steps, 5, opts()).expect("compile");
        let mut acc = [0u64; 5];
        for (v, ts) in [(1, 10), (2, 5), (3, 10), (4, 20), (5, 5)] {
            assert_eq!(f.update(&mut acc, &row(0, v, 0.0, 0), ts), 0);
        }
        // first: earliest time, first arrival among ties (2 at 5); last: latest (4 at 20).
        assert_eq!((acc[1], acc[2]), (2, 5));
        assert_eq!((acc[3], acc[4]), (4, 20));
    }
}
