//! The built-in functions and aggregates of .flow.
//!
//! This crate owns the list of built-ins: each one's name, signature, null rule and
//! one-line doc. The type checker asks it what a call means ([`scalar`],
//! [`aggregate`], [`check_call`]); editors show its docs; [`eval::call`] implements
//! every scalar on values, and [`native`] exports the `extern "C"` entry points the
//! JIT registers as symbols. It knows nothing of syntax or spans.

pub mod eval;
pub mod native;
pub mod ops;
pub mod time;

use flow_types::{common_type, Kind, Type};

/// What an argument position accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    Bool,
    Int,
    String,
    Timestamp,
    Duration,
    /// int, float or decimal.
    Numeric,
    /// Anything that can be ordered (numbers, strings, times, bool).
    Orderable,
    /// Anything that can be compared for equality.
    Equatable,
    Any,
    /// A list of anything.
    List,
}

impl Param {
    pub fn accepts(self, t: &Type) -> bool {
        if t.is_error() || matches!(t.kind, Kind::Null) {
            return true;
        }
        match self {
            Param::Bool => matches!(t.kind, Kind::Bool),
            Param::Int => matches!(t.kind, Kind::Int),
            Param::String => matches!(t.kind, Kind::String),
            Param::Timestamp => matches!(t.kind, Kind::Timestamp),
            Param::Duration => matches!(t.kind, Kind::Duration),
            Param::Numeric => t.is_numeric(),
            Param::Orderable => t.is_orderable(),
            Param::Equatable => t.is_equatable(),
            Param::Any => true,
            Param::List => matches!(t.kind, Kind::List(_)),
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Param::Bool => "bool",
            Param::Int => "int",
            Param::String => "string",
            Param::Timestamp => "timestamp",
            Param::Duration => "duration",
            Param::Numeric => "a number (int, float or decimal)",
            Param::Orderable => "an orderable value",
            Param::Equatable => "a comparable value",
            Param::Any => "any value",
            Param::List => "a list",
        }
    }
}

/// How the result type is computed from the argument types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ret {
    Bool,
    Int,
    Float,
    String,
    Timestamp,
    Duration,
    /// The type of argument `i`.
    Arg(usize),
    /// The common type of all arguments.
    Common,
    /// The element type of the list argument `i`.
    ElemOf(usize),
}

/// When the result is null.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nulls {
    /// Null when any argument is null (the SQL rule for scalar functions).
    Propagate,
    /// `coalesce`: null only when every argument is.
    FirstNonNull,
    /// The result may be null even for non-null arguments (e.g. a parse that fails).
    Always,
}

/// A built-in scalar function.
#[derive(Debug)]
pub struct ScalarFn {
    pub name: &'static str,
    pub params: &'static [Param],
    /// The last parameter repeats (at least once).
    pub variadic: bool,
    /// How many trailing parameters may be left out.
    pub optional: usize,
    pub ret: Ret,
    pub nulls: Nulls,
    pub doc: &'static str,
}

/// A built-in aggregate, allowed only in `aggregate { }` and `measures { }`.
#[derive(Debug)]
pub struct AggregateFn {
    pub name: &'static str,
    /// `None`: no argument (`count()`); otherwise what the one argument accepts.
    pub param: Option<Param>,
    /// `count` takes zero or one argument.
    pub arg_optional: bool,
    pub doc: &'static str,
}

use Param as P;

macro_rules! f {
    ($name:literal, [$($p:expr),*], $ret:expr, $doc:literal) => {
        ScalarFn { name: $name, params: &[$($p),*], variadic: false, optional: 0, ret: $ret, nulls: Nulls::Propagate, doc: $doc }
    };
}

/// Every built-in scalar function, in the order docs/language.md lists them.
pub static SCALARS: &[ScalarFn] = &[
    // strings
    f!("lower", [P::String], Ret::String, "the string in lower case"),
    f!("upper", [P::String], Ret::String, "the string in upper case"),
    f!("length", [P::String], Ret::Int, "the number of characters (Unicode scalar values)"),
    f!("trim", [P::String], Ret::String, "the string without leading and trailing whitespace"),
    ScalarFn {
        name: "concat",
        params: &[P::String],
        variadic: true,
        optional: 0,
        ret: Ret::String,
        nulls: Nulls::Propagate,
        doc: "the strings joined end to end",
    },
    ScalarFn {
        name: "substring",
        params: &[P::String, P::Int, P::Int],
        variadic: false,
        optional: 1,
        ret: Ret::String,
        nulls: Nulls::Propagate,
        doc: "substring(s, start, len?): characters from 1-based start, len of them (or to the end)",
    },
    f!("starts_with", [P::String, P::String], Ret::Bool, "whether the string begins with the prefix"),
    f!("ends_with", [P::String, P::String], Ret::Bool, "whether the string ends with the suffix"),
    f!("contains", [P::String, P::String], Ret::Bool, "whether the string contains the needle"),
    f!("replace", [P::String, P::String, P::String], Ret::String, "replace(s, from, to): every occurrence of from replaced by to"),
    f!("matches", [P::String, P::String], Ret::Bool, "whether the string matches the regular expression"),
    ScalarFn {
        name: "split_part",
        params: &[P::String, P::String, P::Int],
        variadic: false,
        optional: 0,
        ret: Ret::String,
        nulls: Nulls::Always,
        doc: "split_part(s, sep, n): the n-th (1-based) piece of s split at sep, or null",
    },
    f!("hash", [P::Equatable], Ret::Int, "a stable 64-bit hash of the value"),
    // math
    f!("abs", [P::Numeric], Ret::Arg(0), "the absolute value"),
    ScalarFn {
        name: "round",
        params: &[P::Numeric, P::Int],
        variadic: false,
        optional: 1,
        ret: Ret::Arg(0),
        nulls: Nulls::Propagate,
        doc: "round(x, digits?): x rounded half away from zero to digits after the point (default 0)",
    },
    f!("floor", [P::Numeric], Ret::Arg(0), "the largest integral value not greater than x"),
    f!("ceil", [P::Numeric], Ret::Arg(0), "the smallest integral value not less than x"),
    f!("sqrt", [P::Numeric], Ret::Float, "the square root, as float (NaN for negative x)"),
    f!("pow", [P::Numeric, P::Numeric], Ret::Float, "x raised to the power y, as float"),
    f!("ln", [P::Numeric], Ret::Float, "the natural logarithm, as float"),
    f!("exp", [P::Numeric], Ret::Float, "e raised to the power x, as float"),
    ScalarFn {
        name: "least",
        params: &[P::Orderable],
        variadic: true,
        optional: 0,
        ret: Ret::Common,
        nulls: Nulls::Propagate,
        doc: "the smallest argument",
    },
    ScalarFn {
        name: "greatest",
        params: &[P::Orderable],
        variadic: true,
        optional: 0,
        ret: Ret::Common,
        nulls: Nulls::Propagate,
        doc: "the largest argument",
    },
    ScalarFn {
        name: "coalesce",
        params: &[P::Any],
        variadic: true,
        optional: 0,
        ret: Ret::Common,
        nulls: Nulls::FirstNonNull,
        doc: "the first argument that is not null",
    },
    // time
    f!("date_trunc", [P::String, P::Timestamp], Ret::Timestamp, "date_trunc(unit, ts): ts truncated to the unit (\"second\", \"minute\", \"hour\", \"day\", \"week\", \"month\", \"year\"), UTC"),
    f!("epoch_ms", [P::Timestamp], Ret::Int, "the timestamp as milliseconds since the Unix epoch"),
    f!("from_epoch_ms", [P::Int], Ret::Timestamp, "the timestamp that many milliseconds after the Unix epoch"),
    f!("hour", [P::Timestamp], Ret::Int, "the hour of the day, 0-23, UTC"),
    f!("day_of_week", [P::Timestamp], Ret::Int, "the ISO day of the week, 1 (Monday) to 7 (Sunday), UTC"),
    f!("format_time", [P::Timestamp], Ret::String, "the timestamp as an RFC 3339 string in UTC with milliseconds"),
    ScalarFn {
        name: "parse_time",
        params: &[P::String],
        variadic: false,
        optional: 0,
        ret: Ret::Timestamp,
        nulls: Nulls::Always,
        doc: "the RFC 3339 string as a timestamp, or null when it does not parse",
    },
    f!("millis", [P::Duration], Ret::Int, "the duration in milliseconds"),
    // lists
    f!("size", [P::List], Ret::Int, "the number of elements of a list"),
    ScalarFn {
        name: "element_at",
        params: &[P::List, P::Int],
        variadic: false,
        optional: 0,
        ret: Ret::ElemOf(0),
        nulls: Nulls::Always,
        doc: "element_at(list, i): the i-th (1-based) element, or null past the end",
    },
];

/// Every built-in aggregate.
pub static AGGREGATES: &[AggregateFn] = &[
    AggregateFn {
        name: "count",
        param: Some(P::Any),
        arg_optional: true,
        doc: "count(): the number of records; count(x): the number of records where x is not null",
    },
    AggregateFn {
        name: "sum",
        param: Some(P::Numeric),
        arg_optional: false,
        doc: "the exact sum (decimal(p, s) sums to decimal(38, s)); nulls are skipped",
    },
    AggregateFn {
        name: "min",
        param: Some(P::Orderable),
        arg_optional: false,
        doc: "the smallest value; nulls are skipped",
    },
    AggregateFn {
        name: "max",
        param: Some(P::Orderable),
        arg_optional: false,
        doc: "the largest value; nulls are skipped",
    },
    AggregateFn {
        name: "avg",
        param: Some(P::Numeric),
        arg_optional: false,
        doc: "the mean: float for int and float, decimal(38, max(s, 6)) for decimal(p, s); nulls are skipped",
    },
    AggregateFn {
        name: "count_distinct",
        param: Some(P::Equatable),
        arg_optional: false,
        doc: "the exact number of distinct non-null values",
    },
    AggregateFn {
        name: "first",
        param: Some(P::Any),
        arg_optional: false,
        doc: "the value of the earliest record by event time (ties: arrival order)",
    },
    AggregateFn {
        name: "last",
        param: Some(P::Any),
        arg_optional: false,
        doc: "the value of the latest record by event time (ties: arrival order)",
    },
];

pub fn scalar(name: &str) -> Option<&'static ScalarFn> {
    SCALARS.iter().find(|f| f.name == name)
}

pub fn aggregate(name: &str) -> Option<&'static AggregateFn> {
    AGGREGATES.iter().find(|f| f.name == name)
}

/// Every built-in name, scalar and aggregate, for did-you-mean and completion.
pub fn all_names() -> impl Iterator<Item = &'static str> {
    SCALARS.iter().map(|f| f.name).chain(AGGREGATES.iter().map(|f| f.name))
}

/// Why a call does not fit a signature.
#[derive(Clone, Debug, PartialEq)]
pub enum CallError {
    /// Wrong number of arguments: the accepted range (max `None` for variadic).
    Arity { min: usize, max: Option<usize>, got: usize },
    /// Argument `index` has a type the parameter does not accept.
    Arg { index: usize, expected: &'static str, got: Type },
    /// The variadic arguments have no common type.
    NoCommonType { index: usize, got: Type, so_far: Type },
}

impl ScalarFn {
    /// A one-line signature, e.g. `substring(string, int, int?) -> string`.
    pub fn signature(&self) -> String {
        let mut s = format!("{}(", self.name);
        let n = self.params.len();
        for (i, p) in self.params.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            s.push_str(short(*p));
            if i >= n - self.optional {
                s.push('?');
            }
            if self.variadic && i == n - 1 {
                s.push_str("...");
            }
        }
        s.push_str(") -> ");
        s.push_str(match self.ret {
            Ret::Bool => "bool",
            Ret::Int => "int",
            Ret::Float => "float",
            Ret::String => "string",
            Ret::Timestamp => "timestamp",
            Ret::Duration => "duration",
            Ret::Arg(_) | Ret::Common => "same as the argument",
            Ret::ElemOf(_) => "element type",
        });
        s
    }
}

fn short(p: Param) -> &'static str {
    match p {
        P::Bool => "bool",
        P::Int => "int",
        P::String => "string",
        P::Timestamp => "timestamp",
        P::Duration => "duration",
        P::Numeric => "number",
        P::Orderable => "orderable",
        P::Equatable => "value",
        P::Any => "any",
        P::List => "list",
    }
}

/// Type-checks a call of `f` with arguments of the given types.
pub fn check_call(f: &ScalarFn, args: &[Type]) -> Result<Type, CallError> {
    let n = f.params.len();
    let min = n - f.optional;
    let max = if f.variadic { None } else { Some(n) };
    if args.len() < min || max.is_some_and(|m| args.len() > m) {
        return Err(CallError::Arity { min, max, got: args.len() });
    }
    for (i, a) in args.iter().enumerate() {
        let p = f.params[i.min(n - 1)];
        if !p.accepts(a) {
            return Err(CallError::Arg { index: i, expected: p.describe(), got: a.clone() });
        }
    }
    let any_nullable = args.iter().any(|a| a.nullable);
    let mut ty = match f.ret {
        Ret::Bool => Type::bool(),
        Ret::Int => Type::int(),
        Ret::Float => Type::float(),
        Ret::String => Type::string(),
        Ret::Timestamp => Type::timestamp(),
        Ret::Duration => Type::duration(),
        Ret::Arg(i) => args[i].clone().non_null(),
        Ret::ElemOf(i) => match &args[i].kind {
            Kind::List(e) => (**e).clone(),
            _ => Type::error(),
        },
        Ret::Common => {
            let mut acc = args[0].clone();
            for (i, a) in args.iter().enumerate().skip(1) {
                acc = common_type(&acc, a).ok_or_else(|| CallError::NoCommonType {
                    index: i,
                    got: a.clone(),
                    so_far: acc.clone(),
                })?;
            }
            acc.non_null()
        }
    };
    ty.nullable = match f.nulls {
        Nulls::Propagate => any_nullable || ty.nullable,
        Nulls::FirstNonNull => args.iter().all(|a| a.nullable),
        Nulls::Always => true,
    };
    Ok(ty)
}

/// The result type of aggregate `f` over values of type `arg` (`None` for `count()`).
pub fn aggregate_result(f: &AggregateFn, arg: Option<&Type>) -> Result<Type, CallError> {
    match (arg, f.param) {
        (None, _) if f.arg_optional => return Ok(Type::int()),
        (None, _) => return Err(CallError::Arity { min: 1, max: Some(1), got: 0 }),
        (Some(t), Some(p)) if !p.accepts(t) => {
            return Err(CallError::Arg { index: 0, expected: p.describe(), got: t.clone() })
        }
        _ => {}
    }
    let t = arg.cloned().unwrap_or_else(Type::error);
    Ok(match f.name {
        "count" | "count_distinct" => Type::int(),
        "sum" => match t.kind {
            Kind::Decimal { scale, .. } => Type::decimal(flow_types::DECIMAL_PRECISION_MAX, scale),
            _ => t.clone(),
        }
        .with_nullable(t.nullable),
        "avg" => match t.kind {
            Kind::Decimal { scale, .. } => Type::decimal(flow_types::DECIMAL_PRECISION_MAX, scale.max(6)),
            Kind::Error => Type::error(),
            _ => Type::float(),
        }
        .with_nullable(t.nullable),
        _ => t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = all_names().collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn arity_and_types() {
        let sub = scalar("substring").unwrap();
        assert_eq!(check_call(sub, &[Type::string(), Type::int()]), Ok(Type::string()));
        assert!(matches!(check_call(sub, &[Type::string()]), Err(CallError::Arity { min: 2, max: Some(3), got: 1 })));
        assert!(matches!(check_call(sub, &[Type::int(), Type::int()]), Err(CallError::Arg { index: 0, .. })));
        assert_eq!(sub.signature(), "substring(string, int, int?) -> string");
    }

    #[test]
    fn null_rules() {
        let co = scalar("coalesce").unwrap();
        assert_eq!(check_call(co, &[Type::int().nullable(), Type::int()]), Ok(Type::int()));
        assert_eq!(check_call(co, &[Type::int().nullable(), Type::float().nullable()]), Ok(Type::float().nullable()));
        let lower = scalar("lower").unwrap();
        assert_eq!(check_call(lower, &[Type::string().nullable()]), Ok(Type::string().nullable()));
    }

    #[test]
    fn aggregates() {
        let sum = aggregate("sum").unwrap();
        assert_eq!(aggregate_result(sum, Some(&Type::decimal(12, 2))), Ok(Type::decimal(38, 2)));
        assert!(aggregate_result(sum, Some(&Type::string())).is_err());
        let count = aggregate("count").unwrap();
        assert_eq!(aggregate_result(count, None), Ok(Type::int()));
        let avg = aggregate("avg").unwrap();
        assert_eq!(aggregate_result(avg, Some(&Type::int())), Ok(Type::float()));
    }
}
