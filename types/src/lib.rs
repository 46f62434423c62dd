//! Data types and values shared by the compiler, the stdlib and the runtime.
//!
//! This crate owns what a .flow type *is* (its kinds, nullability, how numeric types
//! widen) and what a value of one looks like at run time. It knows nothing of syntax,
//! spans, diagnostics or execution.

pub mod row;
pub mod time;

use std::fmt;
use std::sync::Arc;

/// The largest precision of a `decimal(p, s)`, as in Flink SQL (DECIMAL(38, s)).
pub const DECIMAL_PRECISION_MAX: u8 = 38;

/// A .flow type: a kind plus nullability (`T?`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Type {
    pub kind: Kind,
    pub nullable: bool,
}

/// The kind of a type, without nullability.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Bool,
    /// 64-bit signed integer.
    Int,
    /// IEEE 754 binary64.
    Float,
    /// Exact fixed point: `precision` digits in all, `scale` of them after the point.
    Decimal {
        precision: u8,
        scale: u8,
    },
    String,
    /// Milliseconds since the Unix epoch, UTC.
    Timestamp,
    /// A span of time in milliseconds.
    Duration,
    List(Box<Type>),
    Record(Arc<RecordType>),
    /// The type of the `null` literal before it meets a context.
    Null,
    /// The type of an expression that already produced a diagnostic. It unifies with
    /// everything so that one mistake yields one error, not a cascade.
    Error,
}

/// A record type: named, ordered fields. `name` is the schema it came from, if any.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RecordType {
    pub name: Option<String>,
    pub fields: Vec<Field>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Field {
    pub name: String,
    pub ty: Type,
}

impl RecordType {
    pub fn new(name: Option<String>, fields: Vec<Field>) -> Self {
        RecordType { name, fields }
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }
}

impl Type {
    pub const fn new(kind: Kind) -> Self {
        Type { kind, nullable: false }
    }
    pub const fn bool() -> Self {
        Type::new(Kind::Bool)
    }
    pub const fn int() -> Self {
        Type::new(Kind::Int)
    }
    pub const fn float() -> Self {
        Type::new(Kind::Float)
    }
    pub const fn string() -> Self {
        Type::new(Kind::String)
    }
    pub const fn timestamp() -> Self {
        Type::new(Kind::Timestamp)
    }
    pub const fn duration() -> Self {
        Type::new(Kind::Duration)
    }
    pub const fn decimal(precision: u8, scale: u8) -> Self {
        Type::new(Kind::Decimal { precision, scale })
    }
    pub const fn error() -> Self {
        Type { kind: Kind::Error, nullable: false }
    }
    pub const fn null() -> Self {
        Type { kind: Kind::Null, nullable: true }
    }
    pub fn list(elem: Type) -> Self {
        Type::new(Kind::List(Box::new(elem)))
    }
    pub fn record(r: RecordType) -> Self {
        Type::new(Kind::Record(Arc::new(r)))
    }

    pub fn with_nullable(mut self, nullable: bool) -> Self {
        self.nullable = nullable;
        self
    }
    pub fn nullable(self) -> Self {
        self.with_nullable(true)
    }
    pub fn non_null(self) -> Self {
        self.with_nullable(false)
    }

    pub fn is_error(&self) -> bool {
        matches!(self.kind, Kind::Error)
    }
    pub fn is_numeric(&self) -> bool {
        matches!(self.kind, Kind::Int | Kind::Float | Kind::Decimal { .. } | Kind::Error)
    }
    pub fn is_bool(&self) -> bool {
        matches!(self.kind, Kind::Bool | Kind::Error)
    }
    /// Values of this type can be ordered with `<`, `min`, `max` and `top ... by`.
    pub fn is_orderable(&self) -> bool {
        matches!(
            self.kind,
            Kind::Int
                | Kind::Float
                | Kind::Decimal { .. }
                | Kind::String
                | Kind::Timestamp
                | Kind::Duration
                | Kind::Bool
                | Kind::Error
                | Kind::Null
        )
    }
    /// Values of this type can be compared with `==` and used as keys.
    pub fn is_equatable(&self) -> bool {
        match &self.kind {
            Kind::List(e) => e.is_equatable(),
            Kind::Record(r) => r.fields.iter().all(|f| f.ty.is_equatable()),
            _ => true,
        }
    }

    /// Whether a value of type `self` may be stored where `target` is expected,
    /// without an explicit cast: same kind (or a lossless numeric widening), and
    /// nullable only into nullable.
    pub fn assignable_to(&self, target: &Type) -> bool {
        if self.is_error() || target.is_error() {
            return true;
        }
        if matches!(self.kind, Kind::Null) {
            return target.nullable;
        }
        if self.nullable && !target.nullable {
            return false;
        }
        kind_assignable(&self.kind, &target.kind)
    }
}

fn kind_assignable(from: &Kind, to: &Kind) -> bool {
    match (from, to) {
        (a, b) if a == b => true,
        (Kind::Int, Kind::Float) => true,
        // int is exact with 19 digits; it fits any decimal with that many integer digits.
        (Kind::Int, Kind::Decimal { precision, scale }) => precision - scale >= 19,
        (Kind::Decimal { precision: p1, scale: s1 }, Kind::Decimal { precision: p2, scale: s2 }) => {
            s1 <= s2 && (p1 - s1) <= (p2 - s2)
        }
        (Kind::Decimal { .. }, Kind::Float) => true,
        (Kind::List(a), Kind::List(b)) => a.assignable_to(b),
        (Kind::Record(a), Kind::Record(b)) => {
            a.fields.len() == b.fields.len()
                && a.fields.iter().all(|fa| b.field(&fa.name).is_some_and(|fb| fa.ty.assignable_to(&fb.ty)))
        }
        _ => false,
    }
}

/// The numeric type of an arithmetic result (`+ - * / %`) over two numeric kinds,
/// following the promotion rules written in docs/language.md:
///
/// - int op int = int (checked: overflow is a runtime error, not a wrap)
/// - int or decimal op float = float
/// - int op decimal(p, s) = the decimal rule with int as decimal(19, 0)
/// - decimal(p1, s1) + or - decimal(p2, s2) = decimal(max(p1-s1, p2-s2) + max(s1, s2) + 1, max(s1, s2))
/// - decimal * decimal = decimal(p1 + p2, s1 + s2)
/// - decimal / decimal = decimal(p1 - s1 + s2 + max(6, s1 + p2 + 1), max(6, s1 + p2 + 1))
/// - decimal % decimal = decimal(min(p1 - s1, p2 - s2) + max(s1, s2), max(s1, s2))
///
/// Precision is capped at 38; when capped, the integer digits are kept and the scale
/// shrinks, but never below min(scale, 6) (Flink's and SQL Server's rule).
pub fn arith_result(op: ArithOp, a: &Kind, b: &Kind) -> Option<Kind> {
    use Kind::*;
    Some(match (a, b) {
        (Error, _) | (_, Error) => Error,
        (Int, Int) => Int,
        (Float, Int | Float | Decimal { .. }) | (Int | Decimal { .. }, Float) => Float,
        (Int, Decimal { precision, scale }) => decimal_arith(op, (19, 0), (*precision, *scale)),
        (Decimal { precision, scale }, Int) => decimal_arith(op, (*precision, *scale), (19, 0)),
        (Decimal { precision: p1, scale: s1 }, Decimal { precision: p2, scale: s2 }) => {
            decimal_arith(op, (*p1, *s1), (*p2, *s2))
        }
        _ => return None,
    })
}

/// Arithmetic operators, for [`arith_result`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

fn decimal_arith(op: ArithOp, (p1, s1): (u8, u8), (p2, s2): (u8, u8)) -> Kind {
    let (p1, s1, p2, s2) = (p1 as i32, s1 as i32, p2 as i32, s2 as i32);
    let (p, s) = match op {
        ArithOp::Add | ArithOp::Sub => {
            let s = s1.max(s2);
            ((p1 - s1).max(p2 - s2) + s + 1, s)
        }
        ArithOp::Mul => (p1 + p2, s1 + s2),
        ArithOp::Div => {
            let s = 6.max(s1 + p2 + 1);
            (p1 - s1 + s2 + s, s)
        }
        ArithOp::Rem => {
            let s = s1.max(s2);
            ((p1 - s1).min(p2 - s2) + s, s)
        }
    };
    let (p, s) = cap_decimal(p, s);
    Kind::Decimal { precision: p as u8, scale: s as u8 }
}

/// Caps a decimal's precision at 38 keeping the integer digits, as Flink does.
fn cap_decimal(p: i32, s: i32) -> (i32, i32) {
    let max = DECIMAL_PRECISION_MAX as i32;
    if p <= max {
        return (p.max(1), s);
    }
    let int_digits = p - s;
    let min_scale = s.min(6);
    let s = (max - int_digits).max(min_scale);
    (max, s)
}

/// The common type two branches of an `if`/`case`, or two sides of a comparison or
/// `??`, are brought to. `None` when they have none.
pub fn common_type(a: &Type, b: &Type) -> Option<Type> {
    let nullable = a.nullable || b.nullable;
    let kind = match (&a.kind, &b.kind) {
        (Kind::Error, _) | (_, Kind::Error) => Kind::Error,
        (Kind::Null, k) | (k, Kind::Null) => k.clone(),
        (x, y) if x == y => x.clone(),
        (Kind::Int, Kind::Float) | (Kind::Float, Kind::Int) => Kind::Float,
        (Kind::Decimal { .. }, Kind::Float) | (Kind::Float, Kind::Decimal { .. }) => Kind::Float,
        (Kind::Int, Kind::Decimal { precision, scale }) | (Kind::Decimal { precision, scale }, Kind::Int) => {
            let s = *scale as i32;
            let (p, s) = cap_decimal((19).max(*precision as i32 - s) + s, s);
            Kind::Decimal { precision: p as u8, scale: s as u8 }
        }
        (Kind::Decimal { precision: p1, scale: s1 }, Kind::Decimal { precision: p2, scale: s2 }) => {
            let s = (*s1).max(*s2) as i32;
            let ints = (*p1 as i32 - *s1 as i32).max(*p2 as i32 - *s2 as i32);
            let (p, s) = cap_decimal(ints + s, s);
            Kind::Decimal { precision: p as u8, scale: s as u8 }
        }
        (Kind::List(x), Kind::List(y)) => Kind::List(Box::new(common_type(x, y)?)),
        (Kind::Record(x), Kind::Record(y)) => {
            if x.fields.len() != y.fields.len() {
                return None;
            }
            let mut fields = Vec::with_capacity(x.fields.len());
            for (fx, fy) in x.fields.iter().zip(&y.fields) {
                if fx.name != fy.name {
                    return None;
                }
                fields.push(Field { name: fx.name.clone(), ty: common_type(&fx.ty, &fy.ty)? });
            }
            Kind::Record(Arc::new(RecordType::new(x.name.clone(), fields)))
        }
        _ => return None,
    };
    Some(Type { kind, nullable })
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if self.nullable && !matches!(self.kind, Kind::Null) {
            write!(f, "?")?;
        }
        Ok(())
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Bool => write!(f, "bool"),
            Kind::Int => write!(f, "int"),
            Kind::Float => write!(f, "float"),
            Kind::Decimal { precision, scale } => write!(f, "decimal({precision}, {scale})"),
            Kind::String => write!(f, "string"),
            Kind::Timestamp => write!(f, "timestamp"),
            Kind::Duration => write!(f, "duration"),
            Kind::List(t) => write!(f, "list<{t}>"),
            Kind::Record(r) => match &r.name {
                Some(n) => write!(f, "{n}"),
                None => {
                    write!(f, "{{ ")?;
                    for (i, fl) in r.fields.iter().enumerate() {
                        if i > 0 {
                            write!(f, ", ")?;
                        }
                        write!(f, "{}: {}", fl.name, fl.ty)?;
                    }
                    write!(f, " }}")
                }
            },
            Kind::Null => write!(f, "null"),
            Kind::Error => write!(f, "{{error}}"),
        }
    }
}

/// A run-time value of a .flow type. The compiler uses it for constants; the
/// interpreter and the runtime's connectors use it for rows outside the JIT layout.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// `units / 10^scale`.
    Decimal {
        units: i128,
        scale: u8,
    },
    String(Arc<str>),
    Timestamp(i64),
    Duration(i64),
    List(Arc<[Value]>),
    Record(Arc<[Value]>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => write!(f, "null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Decimal { units, scale } => write!(f, "{}", format_decimal(*units, *scale)),
            Value::String(s) => write!(f, "{s:?}"),
            Value::Timestamp(ms) => write!(f, "@{ms}ms"),
            Value::Duration(ms) => write!(f, "{ms}ms"),
            Value::List(vs) | Value::Record(vs) => {
                let (open, close) = if matches!(self, Value::List(_)) { ("[", "]") } else { ("{", "}") };
                write!(f, "{open}")?;
                for (i, v) in vs.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{v}")?;
                }
                write!(f, "{close}")
            }
        }
    }
}

/// Formats `units / 10^scale` exactly, e.g. (12345, 2) -> "123.45".
pub fn format_decimal(units: i128, scale: u8) -> String {
    let neg = units < 0;
    let digits = units.unsigned_abs().to_string();
    let scale = scale as usize;
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if scale == 0 {
        out.push_str(&digits);
    } else if digits.len() > scale {
        out.push_str(&digits[..digits.len() - scale]);
        out.push('.');
        out.push_str(&digits[digits.len() - scale..]);
    } else {
        out.push_str("0.");
        out.push_str(&"0".repeat(scale - digits.len()));
        out.push_str(&digits);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(p: u8, s: u8) -> Kind {
        Kind::Decimal { precision: p, scale: s }
    }

    #[test]
    fn decimal_sum_widens_like_flink() {
        assert_eq!(arith_result(ArithOp::Add, &dec(12, 2), &dec(12, 2)), Some(dec(13, 2)));
        assert_eq!(arith_result(ArithOp::Mul, &dec(12, 2), &dec(5, 3)), Some(dec(17, 5)));
        assert_eq!(arith_result(ArithOp::Mul, &dec(38, 10), &dec(38, 10)), Some(dec(38, 6)));
        assert_eq!(arith_result(ArithOp::Add, &Kind::Int, &dec(12, 2)), Some(dec(22, 2)));
        assert_eq!(arith_result(ArithOp::Add, &Kind::Int, &Kind::Float), Some(Kind::Float));
        assert_eq!(arith_result(ArithOp::Add, &Kind::String, &Kind::Int), None);
    }

    #[test]
    fn assignability() {
        assert!(Type::int().assignable_to(&Type::float()));
        assert!(!Type::float().assignable_to(&Type::int()));
        assert!(Type::decimal(12, 2).assignable_to(&Type::decimal(18, 2)));
        assert!(!Type::decimal(18, 2).assignable_to(&Type::decimal(12, 2)));
        assert!(!Type::int().nullable().assignable_to(&Type::int()));
        assert!(Type::int().assignable_to(&Type::int().nullable()));
        assert!(Type::null().assignable_to(&Type::string().nullable()));
        assert!(!Type::null().assignable_to(&Type::string()));
    }

    #[test]
    fn common_types() {
        assert_eq!(common_type(&Type::int(), &Type::float()), Some(Type::float()));
        assert_eq!(common_type(&Type::null(), &Type::int()), Some(Type::int().nullable()));
        assert_eq!(common_type(&Type::string(), &Type::int()), None);
        assert_eq!(common_type(&Type::decimal(12, 2), &Type::decimal(10, 4)), Some(Type::decimal(14, 4)));
    }

    #[test]
    fn decimal_formatting() {
        assert_eq!(format_decimal(12345, 2), "123.45");
        assert_eq!(format_decimal(-5, 3), "-0.005");
        assert_eq!(format_decimal(7, 0), "7");
    }
}
