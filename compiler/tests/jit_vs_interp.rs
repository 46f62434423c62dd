//! Property test: the JIT and the reference interpreter agree exactly.
//!
//! Random schemas (int, float, decimal with p <= 18 and p > 18, string, bool,
//! timestamp, duration, nullable or not), random well-typed stages of filters and
//! projections built directly as typed IR, and random batches (nulls, i64::MIN/MAX,
//! NaN, ±0.0, infinities, unicode) go through both back ends; the output rows (floats
//! compared bit for bit, NaN normalised) and the errors (message, span, row) must be
//! the same. The cranelift verifier is on. `PROPTEST_CASES` raises the case count
//! (default 256).

use flow_compiler::exec::codegen::{self, Options};
use flow_compiler::exec::stage::{interpreted, output_builder, Stage, StageSpec};
use flow_compiler::exec::EvalError;
use flow_compiler::ir::{self, BinOp, Expr, ExprKind, Op, OpKind, UnOp};
use flow_compiler::source::{FileId, Span};
use flow_types::row::{BatchBuilder, Layout};
use flow_types::{arith_result, ArithOp, Field, Kind, RecordType, Type, Value};
use proptest::prelude::*;
use std::sync::Arc;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

const KINDS: &[Kind] = &[
    Kind::Int,
    Kind::Float,
    Kind::Decimal { precision: 10, scale: 2 },
    Kind::Decimal { precision: 30, scale: 4 },
    Kind::Decimal { precision: 12, scale: 5 },
    Kind::String,
    Kind::Bool,
    Kind::Timestamp,
    Kind::Duration,
];

struct Gen<'a> {
    rng: &'a mut Rng,
    fields: Vec<Type>,
    span: u32,
}

impl Gen<'_> {
    fn mk(&mut self, kind: ExprKind, ty: Type) -> Expr {
        self.span += 2;
        Expr { kind, ty, span: Span::new(FileId(0), self.span as usize, self.span as usize + 1) }
    }

    fn literal(&mut self, k: &Kind) -> Expr {
        let r = &mut *self.rng;
        let v = match k {
            Kind::Int => Value::Int(*r.pick(&[0, 1, -1, 2, 7, -3, 100, i64::MAX, i64::MIN, 1 << 40])),
            Kind::Float => Value::Float(*r.pick(&[0.0, -0.0, 1.5, -2.25, f64::NAN, f64::INFINITY, 1e300, 3.0])),
            Kind::Decimal { scale, precision } => {
                let big = if *precision > 18 { 10i128.pow(27) } else { 10i128.pow(9) };
                Value::Decimal { units: *r.pick(&[0, 1, -150, 12345, big, -big]), scale: *scale }
            }
            Kind::String => {
                Value::String((*r.pick(&["", "a", "ab", "héllo", "🌍x", "abcdefghij", "12", "true"])).into())
            }
            Kind::Bool => Value::Bool(r.chance(50)),
            Kind::Timestamp => Value::Timestamp(*r.pick(&[0, 1_700_000_000_000, -1, i64::MAX])),
            _ => Value::Duration(*r.pick(&[0, 1000, -60_000, i64::MIN])),
        };
        let ty = Type::new(k.clone());
        self.mk(ExprKind::Literal(v), ty)
    }

    fn leaf(&mut self, k: &Kind) -> Expr {
        let cands: Vec<usize> = (0..self.fields.len()).filter(|i| self.fields[*i].kind == *k).collect();
        if !cands.is_empty() && self.rng.chance(70) {
            let i = *self.rng.pick(&cands);
            let ty = self.fields[i].clone();
            return self.mk(ExprKind::Field(i), ty);
        }
        if self.rng.chance(5) {
            let ty = Type::new(k.clone()).nullable();
            return self.mk(ExprKind::Literal(Value::Null), ty);
        }
        self.literal(k)
    }

    fn bin(&mut self, op: BinOp, a: Expr, b: Expr, kind: Kind) -> Expr {
        let n = a.ty.nullable || b.ty.nullable;
        self.mk(ExprKind::Binary(op, Box::new(a), Box::new(b)), Type::new(kind).with_nullable(n))
    }

    fn cast(&mut self, x: Expr, to: Kind, fallible: bool) -> Expr {
        let n = x.ty.nullable || fallible;
        self.mk(ExprKind::Cast(Box::new(x)), Type::new(to).with_nullable(n))
    }

    fn call(&mut self, name: &'static str, args: Vec<Expr>, ret: Kind, always_null: bool) -> Expr {
        let n = always_null || args.iter().any(|a| a.ty.nullable);
        self.mk(ExprKind::Call(name, args), Type::new(ret).with_nullable(n))
    }

    /// Any expression of kind `k`.
    fn expr(&mut self, k: &Kind, depth: u32) -> Expr {
        if depth == 0 || self.rng.chance(25) {
            return self.leaf(k);
        }
        let d = depth - 1;
        let choice = self.rng.below(6);
        match (k, choice) {
            (_, 0) => {
                let c = self.expr(&Kind::Bool, d);
                let (t, x) = (self.expr(k, d), self.expr(k, d));
                let n = t.ty.nullable || x.ty.nullable;
                self.mk(ExprKind::If(Box::new(c), Box::new(t), Box::new(x)), Type::new(k.clone()).with_nullable(n))
            }
            (_, 1) => {
                let (a, b) = (self.expr(k, d), self.expr(k, d));
                let n = b.ty.nullable;
                self.mk(
                    ExprKind::Binary(BinOp::Coalesce, Box::new(a), Box::new(b)),
                    Type::new(k.clone()).with_nullable(n),
                )
            }
            (Kind::Int, _) => match self.rng.below(7) {
                0..=2 => {
                    let op = *self.rng.pick(&[BinOp::Add, BinOp::Sub, BinOp::Mul, BinOp::Div, BinOp::Rem]);
                    let (a, b) = (self.expr(k, d), self.expr(k, d));
                    self.bin(op, a, b, Kind::Int)
                }
                3 => {
                    let x = self.expr(k, d);
                    let ty = x.ty.clone();
                    self.mk(ExprKind::Unary(UnOp::Neg, Box::new(x)), ty)
                }
                4 if self.rng.below(2) == 0 => {
                    let t = self.expr(&Kind::Timestamp, d);
                    self.call("hour", vec![t], Kind::Int, false)
                }
                4 => {
                    let s = self.expr(&Kind::String, d);
                    self.call("length", vec![s], Kind::Int, false)
                }
                5 => {
                    let f = self.expr(&Kind::Float, d);
                    self.cast(f, Kind::Int, true)
                }
                _ => {
                    let x = self.expr(&Kind::Decimal { precision: 10, scale: 2 }, d);
                    self.cast(x, Kind::Int, false)
                }
            },
            (Kind::Float, _) => match self.rng.below(4) {
                0 | 1 => {
                    let op = *self.rng.pick(&[BinOp::Add, BinOp::Sub, BinOp::Mul, BinOp::Div, BinOp::Rem]);
                    let (a, b) = (self.expr(k, d), self.expr(k, d));
                    self.bin(op, a, b, Kind::Float)
                }
                2 => {
                    let x = self.expr(&Kind::Int, d);
                    self.cast(x, Kind::Float, false)
                }
                _ => {
                    let dk = self.rng.pick(&KINDS[2..5]).clone();
                    let x = self.expr(&dk, d);
                    self.cast(x, Kind::Float, false)
                }
            },
            (Kind::Decimal { precision, scale }, _) if self.rng.below(4) == 0 => {
                // An int widened to a decimal (as `0.908 * price` does), cast to the wanted one.
                let wide = *self.rng.pick(&[(19u8, 0u8), (22, 3), (38, 18), (20, 2)]);
                let x = self.expr(&Kind::Int, d);
                let w = self.cast(x, Kind::Decimal { precision: wide.0, scale: wide.1 }, false);
                self.cast(w, Kind::Decimal { precision: *precision, scale: *scale }, true)
            }
            (Kind::Decimal { precision, scale }, _) => {
                // An arithmetic result cast to the wanted decimal (fallible, so nullable).
                let op = *self.rng.pick(&[ArithOp::Add, ArithOp::Sub, ArithOp::Mul, ArithOp::Div, ArithOp::Rem]);
                let ka = self.rng.pick(&KINDS[2..5]).clone();
                let kb = self.rng.pick(&KINDS[2..5]).clone();
                let (a, b) = (self.expr(&ka, d), self.expr(&kb, d));
                let rk = arith_result(op, &ka, &kb).expect("decimal arith");
                let bop = match op {
                    ArithOp::Add => BinOp::Add,
                    ArithOp::Sub => BinOp::Sub,
                    ArithOp::Mul => BinOp::Mul,
                    ArithOp::Div => BinOp::Div,
                    ArithOp::Rem => BinOp::Rem,
                };
                let r = self.bin(bop, a, b, rk.clone());
                if rk == *k {
                    r
                } else {
                    self.cast(r, Kind::Decimal { precision: *precision, scale: *scale }, true)
                }
            }
            (Kind::String, _) => match self.rng.below(6) {
                0 => {
                    let s = self.expr(k, d);
                    let name = *self.rng.pick(&["upper", "lower", "trim"]);
                    self.call(name, vec![s], Kind::String, false)
                }
                5 => {
                    let (s, from, to) = (self.expr(k, d), self.expr(k, d), self.expr(k, d));
                    self.call("replace", vec![s, from, to], Kind::String, false)
                }
                1 => {
                    let (s, i, l) = (self.expr(k, d), self.expr(&Kind::Int, d), self.expr(&Kind::Int, d));
                    self.call("substring", vec![s, i, l], Kind::String, false)
                }
                2 => {
                    let (a, b) = (self.expr(k, d), self.expr(k, d));
                    self.call("concat", vec![a, b], Kind::String, false)
                }
                _ => {
                    let from = self.rng.pick(KINDS).clone();
                    let x = self.expr(&from, d);
                    if from == Kind::String {
                        x
                    } else {
                        self.cast(x, Kind::String, false)
                    }
                }
            },
            (Kind::Bool, _) => match self.rng.below(7) {
                0 | 1 => {
                    let ck = self.rng.pick(KINDS).clone();
                    let op = *self.rng.pick(&[BinOp::Eq, BinOp::Ne, BinOp::Lt, BinOp::Le, BinOp::Gt, BinOp::Ge]);
                    let a = self.expr(&ck, d);
                    // Equal operands are common in data; make them common here too.
                    let b = if self.rng.chance(30) { a.clone() } else { self.expr(&ck, d) };
                    self.bin(op, a, b, Kind::Bool)
                }
                2 => {
                    let op = *self.rng.pick(&[BinOp::And, BinOp::Or]);
                    let (a, b) = (self.expr(k, d), self.expr(k, d));
                    self.bin(op, a, b, Kind::Bool)
                }
                3 => {
                    let x = self.expr(k, d);
                    let ty = x.ty.clone();
                    self.mk(ExprKind::Unary(UnOp::Not, Box::new(x)), ty)
                }
                4 => {
                    let ck = self.rng.pick(KINDS).clone();
                    let x = self.expr(&ck, d);
                    let negated = self.rng.chance(50);
                    self.mk(ExprKind::IsNull { expr: Box::new(x), negated }, Type::bool())
                }
                5 => {
                    let ck = self.rng.pick(KINDS).clone();
                    let x = self.expr(&ck, d);
                    let n = 1 + self.rng.below(3);
                    let list: Vec<Expr> = (0..n).map(|_| self.expr(&ck, d)).collect();
                    let nullable = x.ty.nullable || list.iter().any(|i| i.ty.nullable);
                    let negated = self.rng.chance(30);
                    self.mk(ExprKind::In { expr: Box::new(x), list, negated }, Type::bool().with_nullable(nullable))
                }
                _ => {
                    let (a, b) = (self.expr(&Kind::String, d), self.expr(&Kind::String, d));
                    let name = *self.rng.pick(&["starts_with", "contains", "ends_with"]);
                    self.call(name, vec![a, b], Kind::Bool, false)
                }
            },
            (Kind::Timestamp, _) => {
                let (t, du) = (self.expr(k, d), self.expr(&Kind::Duration, d));
                let op = *self.rng.pick(&[BinOp::Add, BinOp::Sub]);
                self.bin(op, t, du, Kind::Timestamp)
            }
            (_, _) => match self.rng.below(3) {
                0 => {
                    let (a, b) = (self.expr(&Kind::Timestamp, d), self.expr(&Kind::Timestamp, d));
                    self.bin(BinOp::Sub, a, b, Kind::Duration)
                }
                1 => {
                    let (a, b) = (self.expr(k, d), self.expr(&Kind::Int, d));
                    let op = *self.rng.pick(&[BinOp::Mul, BinOp::Div]);
                    self.bin(op, a, b, Kind::Duration)
                }
                _ => {
                    let (a, b) = (self.expr(k, d), self.expr(k, d));
                    let op = *self.rng.pick(&[BinOp::Add, BinOp::Sub, BinOp::Rem]);
                    self.bin(op, a, b, Kind::Duration)
                }
            },
        }
    }
}

fn random_value(r: &mut Rng, t: &Type) -> Value {
    if t.nullable && r.chance(20) {
        return Value::Null;
    }
    match &t.kind {
        Kind::Int => Value::Int(match r.below(6) {
            5 => *r.pick(&[0, 1, 2, 7, -3]),
            0 => *r.pick(&[i64::MIN, i64::MAX, 0, -1, 1]),
            1 => r.next() as i64,
            _ => (r.next() % 2001) as i64 - 1000,
        }),
        Kind::Float => Value::Float(match r.below(4) {
            0 => *r.pick(&[f64::NAN, -0.0, 0.0, f64::INFINITY, f64::NEG_INFINITY, f64::MIN_POSITIVE, 1e308]),
            1 => f64::from_bits(r.next()),
            2 => *r.pick(&[1.5, -2.25, 3.0, 0.5]),
            _ => ((r.next() % 201) as f64 - 100.0) / 8.0,
        }),
        Kind::Decimal { precision, scale } => {
            let max = 10i128.pow(u32::from(*precision)) - 1;
            let u = match r.below(3) {
                0 => *r.pick(&[max, -max, 0, 1, -1]),
                1 => (i128::from(r.next() >> 2) * i128::from(r.next() >> 2)) % (max + 1),
                _ => (r.next() % 200_001) as i128 - 100_000,
            };
            Value::Decimal { units: u, scale: *scale }
        }
        Kind::String => {
            let pieces = ["a", "b", "é", "🌍", " ", "Z", "1", "ab", "ß", "\u{0}", "true", "2024-01-01T00:00:00Z"];
            let n = r.below(5);
            Value::String((0..n).map(|_| *r.pick(&pieces)).collect::<String>().into())
        }
        Kind::Bool => Value::Bool(r.chance(50)),
        Kind::Timestamp => Value::Timestamp(match r.below(4) {
            0 => *r.pick(&[i64::MIN, i64::MAX, 0]),
            _ => 1_700_000_000_000 + (r.next() % 1_000_000_000) as i64,
        }),
        _ => Value::Duration(match r.below(4) {
            0 => *r.pick(&[i64::MIN, i64::MAX, 0, -1]),
            _ => (r.next() % 10_000_000) as i64 - 5_000_000,
        }),
    }
}

/// A comparable rendering: floats as bits with NaN normalised.
fn norm(v: &Value) -> String {
    match v {
        Value::Float(x) if x.is_nan() => "NaN".into(),
        Value::Float(x) => format!("f{:016x}", x.to_bits()),
        other => format!("{other:?}"),
    }
}

fn run(stage: &dyn Stage, input: &flow_types::row::Batch) -> (Vec<Vec<String>>, Option<EvalError>) {
    let mut out: BatchBuilder = output_builder(stage, input);
    let r = stage.run(input, &mut out);
    let rows = out.finish().to_values().iter().map(|r| r.iter().map(norm).collect()).collect();
    (rows, r.err())
}

fn case(seed: u64) -> Result<(), TestCaseError> {
    let mut rng = Rng(seed | 1);
    let nf = 1 + rng.below(6);
    let fields: Vec<Field> = (0..nf)
        .map(|i| Field { name: format!("f{i}"), ty: Type::new(rng.pick(KINDS).clone()).with_nullable(rng.chance(50)) })
        .collect();
    let input = Arc::new(RecordType::new(None, fields));
    let mut ops = Vec::new();
    let mut cur = input.clone();
    let mut span = 0;
    for _ in 0..1 + rng.below(3) {
        let mut g = Gen { rng: &mut rng, fields: cur.fields.iter().map(|f| f.ty.clone()).collect(), span };
        if g.rng.chance(40) {
            let c = g.expr(&Kind::Bool, 3);
            span = g.span;
            ops.push(Op { kind: OpKind::Filter(c), output: cur.clone(), event_time: None, span: Span::default() });
        } else {
            let n = 1 + g.rng.below(4);
            let items: Vec<(String, Expr)> = (0..n)
                .map(|i| {
                    let k = g.rng.pick(KINDS).clone();
                    (format!("p{i}"), g.expr(&k, 3))
                })
                .collect();
            span = g.span;
            let rec = Arc::new(RecordType::new(
                None,
                items.iter().map(|(n, e)| Field { name: n.clone(), ty: e.ty.clone() }).collect(),
            ));
            ops.push(Op { kind: OpKind::Project(items), output: rec.clone(), event_time: None, span: Span::default() });
            cur = rec;
        }
    }
    let spec = StageSpec { input: input.clone(), ops };
    let program = ir::Program::default();
    let mut b = BatchBuilder::new(Arc::new(Layout::new(input.clone())));
    for _ in 0..rng.below(24) {
        let row: Vec<Value> = input.fields.iter().map(|f| random_value(&mut rng, &f.ty)).collect();
        b.push_values(&row).expect("row fits");
    }
    let batch = b.finish();
    let interp = interpreted(&spec, &program).expect("interpreted");
    let jit = codegen::compile(&spec, &program, Options { verifier: true }).expect("jit");
    let (ri, ei) = run(&*interp, &batch);
    let (rj, ej) = run(&jit, &batch);
    prop_assert_eq!(&ei, &ej, "errors differ; stage {:#?}", spec.ops);
    prop_assert_eq!(&ri, &rj, "rows differ; stage {:#?}", spec.ops);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256)
    ))]

    #[test]
    fn jit_agrees_with_interpreter(seed in any::<u64>()) {
        case(seed)?;
    }
}

#[test]
fn fixed_seeds_agree() {
    for seed in 0..64 {
        case(seed * 7919 + 13).unwrap_or_else(|e| panic!("seed {}: {e}", seed * 7919 + 13));
    }
}
