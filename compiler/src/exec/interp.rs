//! The reference interpreter: evaluates typed IR expressions on values.
//!
//! It is the definition the JIT is tested against, so it is written for clarity: one
//! `match` over expression kinds, value-level operators from `flow_stdlib::ops`.
//! Evaluation order is left to right and every operand is evaluated, except the right
//! side of `and` / `or` / `??` (only when the left side does not decide) and the
//! branches of `if` / `case` (only the one taken); so the first error in that order
//! is the one reported, in both back ends.

use super::EvalError;
use crate::ir::Expr;
use crate::ir::{BinOp, ExprKind, Program, UnOp};
use flow_stdlib::native::{apply, NativeOp, Site};
use flow_stdlib::ops::{self, Arith, INT_OVERFLOW};
use flow_types::row::RowRef;
use flow_types::{Kind, Type, Value};
use std::cmp::Ordering;

/// What an expression may refer to besides its input record.
#[derive(Clone, Copy)]
pub struct EvalCtx<'a> {
    /// For calls of user fns.
    pub program: &'a Program,
    /// The arguments of the fn being evaluated.
    pub params: &'a [Value],
}

impl<'a> EvalCtx<'a> {
    pub fn new(program: &'a Program) -> Self {
        EvalCtx { program, params: &[] }
    }
}

/// Where `Field(i)` reads from: a row of a batch, or the values an earlier projection
/// of the same stage computed.
pub trait Fields {
    fn field(&self, i: usize) -> Value;
}

impl Fields for RowRef<'_> {
    fn field(&self, i: usize) -> Value {
        self.value(i)
    }
}

impl Fields for Vec<Value> {
    fn field(&self, i: usize) -> Value {
        self.get(i).cloned().unwrap_or(Value::Null)
    }
}

/// Evaluates `expr` on one row.
pub fn eval(expr: &Expr, row: &RowRef, ctx: &EvalCtx) -> Result<Value, EvalError> {
    eval_in(expr, row, ctx)
}

/// Evaluates `expr` with fields from `fields`.
pub fn eval_in(expr: &Expr, fields: &dyn Fields, ctx: &EvalCtx) -> Result<Value, EvalError> {
    let err = |m: &str| EvalError::new(expr.span, m);
    let ev = |e: &Expr| eval_in(e, fields, ctx);
    Ok(match &expr.kind {
        ExprKind::Literal(v) => v.clone(),
        ExprKind::Field(i) => fields.field(*i),
        ExprKind::Param(i) => ctx.params.get(*i).cloned().unwrap_or(Value::Null),
        ExprKind::Step(_) | ExprKind::Agg(_) => return Err(err("not available in a stateless stage")),
        ExprKind::GetField(r, i) | ExprKind::SafeGetField(r, i) => match ev(r)? {
            Value::Record(items) => items.get(*i).cloned().unwrap_or(Value::Null),
            _ => Value::Null,
        },
        ExprKind::Index(l, i) => {
            let (l, i) = (ev(l)?, ev(i)?);
            match (l, i) {
                (Value::List(items), Value::Int(i)) => flow_stdlib::eval::list_at(&items, i),
                _ => Value::Null,
            }
        }
        ExprKind::Unary(UnOp::Not, x) => match ev(x)? {
            Value::Bool(b) => Value::Bool(!b),
            _ => Value::Null,
        },
        ExprKind::Unary(UnOp::Neg, x) => match ev(x)? {
            Value::Int(i) => Value::Int(i.checked_neg().ok_or_else(|| err(INT_OVERFLOW))?),
            Value::Duration(i) => Value::Duration(i.checked_neg().ok_or_else(|| err(INT_OVERFLOW))?),
            Value::Float(x) => Value::Float(-x),
            Value::Decimal { units, scale } => Value::Decimal { units: -units, scale },
            _ => Value::Null,
        },
        ExprKind::Binary(op, a, b) => binary(expr, *op, a, b, fields, ctx)?,
        ExprKind::Call(name, args) => {
            let vals = args.iter().map(ev).collect::<Result<Vec<_>, _>>()?;
            let site = Site::new(NativeOp::Scalar(name), args.iter().map(|a| a.ty.clone()).collect(), expr.ty.clone());
            apply(&site, &vals).map_err(|m| err(&m))?
        }
        ExprKind::CallFn(idx, args) => {
            let vals = args.iter().map(ev).collect::<Result<Vec<_>, _>>()?;
            let f = ctx.program.fns.get(*idx).ok_or_else(|| err("unknown function"))?;
            let inner = EvalCtx { program: ctx.program, params: &vals };
            eval_in(&f.body, fields, &inner)?
        }
        ExprKind::If(c, t, x) => {
            if ev(c)? == Value::Bool(true) {
                ev(t)?
            } else {
                ev(x)?
            }
        }
        ExprKind::Case { arms, otherwise } => {
            for (w, t) in arms {
                if ev(w)? == Value::Bool(true) {
                    return ev(t);
                }
            }
            match otherwise {
                Some(o) => ev(o)?,
                None => Value::Null,
            }
        }
        ExprKind::Cast(x) => {
            let v = ev(x)?;
            let site = Site::new(NativeOp::Cast, vec![x.ty.clone()], expr.ty.clone());
            apply(&site, &[v]).map_err(|m| err(&m))?
        }
        ExprKind::In { expr: x, list, negated } => {
            let v = ev(x)?;
            let items = list.iter().map(ev).collect::<Result<Vec<_>, _>>()?;
            if v == Value::Null {
                Value::Null
            } else if items.iter().any(|i| *i != Value::Null && ops::compare(&v, i) == Some(Ordering::Equal)) {
                Value::Bool(!negated)
            } else if items.contains(&Value::Null) {
                Value::Null
            } else {
                Value::Bool(*negated)
            }
        }
        ExprKind::IsNull { expr: x, negated } => Value::Bool((ev(x)? == Value::Null) != *negated),
        ExprKind::List(items) => Value::List(items.iter().map(ev).collect::<Result<Vec<_>, _>>()?.into()),
        ExprKind::Record(items) => Value::Record(items.iter().map(ev).collect::<Result<Vec<_>, _>>()?.into()),
    })
}

fn binary(e: &Expr, op: BinOp, a: &Expr, b: &Expr, fields: &dyn Fields, ctx: &EvalCtx) -> Result<Value, EvalError> {
    let ev = |x: &Expr| eval_in(x, fields, ctx);
    match op {
        BinOp::And | BinOp::Or => {
            let decide = op == BinOp::Or; // `or` is decided by true, `and` by false
            let l = ev(a)?;
            if l == Value::Bool(decide) {
                return Ok(l);
            }
            let r = ev(b)?;
            return Ok(match (l, r) {
                (_, r @ Value::Bool(x)) if x == decide => r,
                (Value::Null, _) | (_, Value::Null) => Value::Null,
                (_, r) => r,
            });
        }
        BinOp::Coalesce => {
            let l = ev(a)?;
            return if l == Value::Null { ev(b) } else { Ok(l) };
        }
        _ => {}
    }
    let (l, r) = (ev(a)?, ev(b)?);
    if l == Value::Null || r == Value::Null {
        return Ok(Value::Null);
    }
    let cmp = || ops::compare(&l, &r);
    let arith = match op {
        BinOp::Eq => return Ok(Value::Bool(cmp() == Some(Ordering::Equal))),
        BinOp::Ne => return Ok(Value::Bool(cmp() != Some(Ordering::Equal))),
        BinOp::Lt => return Ok(Value::Bool(cmp() == Some(Ordering::Less))),
        BinOp::Le => return Ok(Value::Bool(matches!(cmp(), Some(Ordering::Less | Ordering::Equal)))),
        BinOp::Gt => return Ok(Value::Bool(cmp() == Some(Ordering::Greater))),
        BinOp::Ge => return Ok(Value::Bool(matches!(cmp(), Some(Ordering::Greater | Ordering::Equal)))),
        BinOp::Add => Arith::Add,
        BinOp::Sub => Arith::Sub,
        BinOp::Mul => Arith::Mul,
        BinOp::Div => Arith::Div,
        BinOp::Rem => Arith::Rem,
        BinOp::And | BinOp::Or | BinOp::Coalesce => unreachable!("handled above"),
    };
    let err = |m: &str| EvalError::new(e.span, m);
    Ok(match (&l, &r) {
        (Value::Float(x), Value::Float(y)) => Value::Float(ops::float_arith(arith, *x, *y)),
        (Value::Decimal { units: x, scale: sx }, Value::Decimal { units: y, scale: sy }) => {
            let Kind::Decimal { precision, scale } = e.ty.kind else {
                return Err(err("decimal result expected"));
            };
            let u = ops::dec_arith(arith, *x, *sx, *y, *sy, precision, scale).map_err(err)?;
            Value::Decimal { units: u, scale }
        }
        _ => {
            let (Some(x), Some(y)) = (as_i64(&l), as_i64(&r)) else {
                return Err(err("operands of unexpected types"));
            };
            wrap_i64(&e.ty, ops::int_arith(arith, x, y).map_err(err)?)
        }
    })
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) | Value::Timestamp(i) | Value::Duration(i) => Some(*i),
        _ => None,
    }
}

/// An `i64` as a value of type `ty` (int, timestamp or duration).
pub fn wrap_i64(ty: &Type, v: i64) -> Value {
    match ty.kind {
        Kind::Timestamp => Value::Timestamp(v),
        Kind::Duration => Value::Duration(v),
        _ => Value::Int(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Span;
    use flow_types::Type;

    fn lit(v: Value, ty: Type) -> Expr {
        Expr { kind: ExprKind::Literal(v), ty, span: Span::default() }
    }
    fn int(i: i64) -> Expr {
        lit(Value::Int(i), Type::int())
    }
    fn null(ty: Type) -> Expr {
        lit(Value::Null, ty.nullable())
    }
    fn bin(op: BinOp, a: Expr, b: Expr, ty: Type) -> Expr {
        let span = Span::new(Default::default(), 3, 7);
        Expr { kind: ExprKind::Binary(op, Box::new(a), Box::new(b)), ty, span }
    }
    fn run(e: &Expr) -> Result<Value, EvalError> {
        let p = Program::default();
        eval_in(e, &Vec::new(), &EvalCtx::new(&p))
    }
    fn b(x: Option<bool>) -> Expr {
        match x {
            Some(v) => lit(Value::Bool(v), Type::bool()),
            None => null(Type::bool()),
        }
    }

    #[test]
    fn integer_edges() {
        let e = bin(BinOp::Add, int(i64::MAX), int(1), Type::int());
        let r = run(&e).unwrap_err();
        assert_eq!((r.message.as_str(), r.span), ("integer overflow", e.span));
        assert_eq!(run(&bin(BinOp::Div, int(i64::MIN), int(-1), Type::int())).unwrap_err().message, "integer overflow");
        assert_eq!(run(&bin(BinOp::Div, int(1), int(0), Type::int())).unwrap_err().message, "division by zero");
        assert_eq!(run(&bin(BinOp::Div, int(-7), int(2), Type::int())), Ok(Value::Int(-3)));
        assert_eq!(run(&bin(BinOp::Rem, int(-7), int(2), Type::int())), Ok(Value::Int(-1)));
        let neg =
            Expr { kind: ExprKind::Unary(UnOp::Neg, Box::new(int(i64::MIN))), ty: Type::int(), span: Span::default() };
        assert_eq!(run(&neg).unwrap_err().message, "integer overflow");
    }

    #[test]
    fn null_propagation_and_three_valued_logic() {
        let n = null(Type::int());
        assert_eq!(run(&bin(BinOp::Add, n.clone(), int(1), Type::int().nullable())), Ok(Value::Null));
        // The right side is evaluated even when the left is null: its error wins.
        let boom = bin(BinOp::Div, int(1), int(0), Type::int());
        assert!(run(&bin(BinOp::Add, n.clone(), boom.clone(), Type::int().nullable())).is_err());
        assert_eq!(run(&bin(BinOp::Lt, n.clone(), int(1), Type::bool().nullable())), Ok(Value::Null));
        let t = Type::bool().nullable();
        let cases = [
            (BinOp::And, Some(false), None, Some(false)),
            (BinOp::And, None, Some(false), Some(false)),
            (BinOp::And, Some(true), None, None),
            (BinOp::Or, Some(true), None, Some(true)),
            (BinOp::Or, None, Some(true), Some(true)),
            (BinOp::Or, Some(false), None, None),
            (BinOp::And, Some(true), Some(true), Some(true)),
        ];
        for (op, l, r, want) in cases {
            let got = run(&bin(op, b(l), b(r), t.clone())).unwrap();
            assert_eq!(got, want.map_or(Value::Null, Value::Bool), "{op:?} {l:?} {r:?}");
        }
        // `false and <error>` does not evaluate the error.
        let cmp = bin(BinOp::Gt, boom, int(0), Type::bool());
        assert_eq!(run(&bin(BinOp::And, b(Some(false)), cmp, Type::bool())), Ok(Value::Bool(false)));
        let co = bin(BinOp::Coalesce, n, int(5), Type::int());
        assert_eq!(run(&co), Ok(Value::Int(5)));
    }

    #[test]
    fn floats_and_nan() {
        let f = |x: f64| lit(Value::Float(x), Type::float());
        assert_eq!(run(&bin(BinOp::Div, f(1.0), f(0.0), Type::float())), Ok(Value::Float(f64::INFINITY)));
        assert_eq!(run(&bin(BinOp::Eq, f(f64::NAN), f(f64::NAN), Type::bool())), Ok(Value::Bool(false)));
        assert_eq!(run(&bin(BinOp::Ne, f(f64::NAN), f(f64::NAN), Type::bool())), Ok(Value::Bool(true)));
        assert_eq!(run(&bin(BinOp::Lt, f(f64::NAN), f(1.0), Type::bool())), Ok(Value::Bool(false)));
        assert_eq!(run(&bin(BinOp::Eq, f(-0.0), f(0.0), Type::bool())), Ok(Value::Bool(true)));
    }

    #[test]
    fn in_and_casts() {
        let inn = |x: Expr, items: Vec<Expr>| Expr {
            kind: ExprKind::In { expr: Box::new(x), list: items, negated: false },
            ty: Type::bool().nullable(),
            span: Span::default(),
        };
        assert_eq!(run(&inn(int(1), vec![int(2), int(1)])), Ok(Value::Bool(true)));
        assert_eq!(run(&inn(int(1), vec![int(2), null(Type::int())])), Ok(Value::Null));
        assert_eq!(run(&inn(int(1), vec![int(2)])), Ok(Value::Bool(false)));
        assert_eq!(run(&inn(null(Type::int()), vec![int(1)])), Ok(Value::Null));
        let cast = |x: Expr, ty: Type| Expr { kind: ExprKind::Cast(Box::new(x)), ty, span: Span::default() };
        let s = lit(Value::String("12x".into()), Type::string());
        assert_eq!(run(&cast(s, Type::int().nullable())), Ok(Value::Null));
        let d = lit(Value::Decimal { units: 999, scale: 2 }, Type::decimal(3, 2));
        assert_eq!(run(&cast(d, Type::decimal(2, 1))).unwrap_err().message, "decimal overflow");
    }
}
