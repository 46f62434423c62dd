//! The typed IR: a checked program, every name resolved and every expression typed.
//!
//! The checker (`check`) produces it; the planner (`plan`), the interpreter and the
//! code generator consume it. A `Program` only exists for a file without errors, so
//! nothing here is `Error`-typed. Implicit conversions are explicit here: an int that
//! meets a float or a decimal is wrapped in a `Cast`, so back ends need no promotion
//! logic of their own. Its text form (`Display`) is what `flowc compile --emit ir`
//! prints and what snapshot tests compare.

use crate::source::Span;
use flow_types::{format_decimal, RecordType, Type, Value};
use std::fmt::{self, Write as _};
use std::sync::Arc;

pub type Record = Arc<RecordType>;

#[derive(Clone, Debug, Default)]
pub struct Program {
    pub schemas: Vec<Schema>,
    pub consts: Vec<Const>,
    pub fns: Vec<Function>,
    pub topics: Vec<Topic>,
    pub sources: Vec<Source>,
    pub sinks: Vec<Sink>,
    pub pipelines: Vec<Pipeline>,
    pub config: Config,
}

#[derive(Clone, Debug)]
pub struct Schema {
    pub name: String,
    pub record: Record,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Const {
    pub name: String,
    pub ty: Type,
    pub value: Value,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Function {
    pub name: String,
    pub params: Vec<(String, Type)>,
    pub ret: Type,
    pub body: Expr,
    pub span: Span,
}

/// Program-wide settings from `config { }`.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub checkpoint_interval_ms: i64,
    pub parallelism: u32,
    pub state_backend: StateBackend,
}

impl Default for Config {
    fn default() -> Self {
        Config { checkpoint_interval_ms: 10_000, parallelism: 1, state_backend: StateBackend::Memory }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateBackend {
    Memory,
    RocksDb,
}

/// Kafka's default retention, 7 days.
pub const RETENTION_MS_DEFAULT: i64 = 7 * 86_400_000;

#[derive(Clone, Debug)]
pub struct Topic {
    pub name: String,
    pub schema: Record,
    pub partitions: u32,
    /// Index of the key field in `schema`.
    pub key: Option<usize>,
    pub retention_ms: i64,
    pub retention_bytes: Option<i64>,
    pub compaction: bool,
    pub segment_bytes: Option<i64>,
    /// The event time of its records: declared (`event_time: f`) or that of the
    /// pipelines writing it.
    pub event_time: Option<EventTime>,
    pub watermark_ms: i64,
    /// A partition silent this long stops holding its readers' watermark back.
    pub idle_timeout_ms: Option<i64>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    /// One value per line, for stdout.
    Text,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeneratorKind {
    Transactions,
    NexmarkPersons,
    NexmarkAuctions,
    NexmarkBids,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Connector {
    File {
        path: String,
        format: Format,
        header: bool,
        delimiter: u8,
    },
    Stdin {
        format: Format,
    },
    Stdout {
        format: Format,
    },
    Generator {
        kind: GeneratorKind,
        rate_per_s: Option<i64>,
        seed: i64,
        count: Option<i64>,
        keys: Option<i64>,
    },
    Kafka {
        brokers: String,
        topic: String,
        group: Option<String>,
        format: Format,
        /// Sinks: the field whose value, as text, is each record's key (None: no key).
        key: Option<String>,
        security: KafkaSecurity,
    },
}

/// librdkafka's `security.protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KafkaProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl KafkaProtocol {
    /// The `security:` word and librdkafka's value.
    pub fn names(self) -> (&'static str, &'static str) {
        match self {
            KafkaProtocol::Plaintext => ("plaintext", "PLAINTEXT"),
            KafkaProtocol::Ssl => ("ssl", "SSL"),
            KafkaProtocol::SaslPlaintext => ("sasl_plaintext", "SASL_PLAINTEXT"),
            KafkaProtocol::SaslSsl => ("sasl_ssl", "SASL_SSL"),
        }
    }

    pub fn sasl(self) -> bool {
        matches!(self, KafkaProtocol::SaslPlaintext | KafkaProtocol::SaslSsl)
    }

    pub fn tls(self) -> bool {
        matches!(self, KafkaProtocol::Ssl | KafkaProtocol::SaslSsl)
    }
}

/// librdkafka's `sasl.mechanisms`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SaslMechanism {
    #[default]
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    /// The `sasl_mechanism:` word and librdkafka's value.
    pub fn names(self) -> (&'static str, &'static str) {
        match self {
            SaslMechanism::Plain => ("plain", "PLAIN"),
            SaslMechanism::ScramSha256 => ("scram_sha_256", "SCRAM-SHA-256"),
            SaslMechanism::ScramSha512 => ("scram_sha_512", "SCRAM-SHA-512"),
        }
    }
}

/// How a `kafka(...)` connector connects: TLS and SASL. The password is never in the
/// program: only the name of the environment variable that holds it at run time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaSecurity {
    pub protocol: KafkaProtocol,
    /// With a SASL protocol: the mechanism, the user and the password's variable.
    pub sasl: Option<KafkaSasl>,
    /// With TLS: the CA certificates (PEM) to verify the brokers with, as written
    /// (relative to the .flow file); None: the system's.
    pub ca: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaSasl {
    pub mechanism: SaslMechanism,
    pub user: String,
    pub password_env: String,
}

/// Where a stream's event time comes from: a timestamp field plus an offset (a
/// window's results carry `window_end - 1`, the largest time the window holds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventTime {
    pub field: usize,
    pub offset_ms: i64,
}

#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub schema: Record,
    pub connector: Connector,
    pub event_time: Option<EventTime>,
    pub watermark_ms: i64,
    pub idle_timeout_ms: Option<i64>,
    pub dead_letter: Option<Target>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Sink {
    pub name: String,
    pub schema: Record,
    pub connector: Connector,
    pub span: Span,
}

/// A stream a pipeline writes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Topic(String),
    Sink(String),
}

/// A stream a pipeline reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Source(String),
    Topic(String),
}

#[derive(Clone, Debug)]
pub struct Pipeline {
    pub name: String,
    pub input: Input,
    pub input_schema: Record,
    pub ops: Vec<Op>,
    pub outputs: Vec<Output>,
    pub span: Span,
}

/// Where a pipeline's records go: every record to `target`, or, after `route`, those
/// for which `when` holds (`None`: those no earlier arm took).
#[derive(Clone, Debug)]
pub struct Output {
    pub when: Option<Expr>,
    pub target: Target,
}

#[derive(Clone, Debug)]
pub struct Op {
    pub kind: OpKind,
    /// The record type the operator emits.
    pub output: Record,
    /// The event time of what it emits, if it has one.
    pub event_time: Option<EventTime>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    Tumbling { size_ms: i64 },
    Sliding { size_ms: i64, slide_ms: i64 },
    Session { gap_ms: i64 },
}

/// One aggregate call: `func(arg)`, its result in slot `index` of the accumulator.
#[derive(Clone, Debug)]
pub struct AggCall {
    pub func: &'static str,
    pub arg: Option<Expr>,
    pub ty: Type,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    LeftOuter,
}

#[derive(Clone, Debug)]
pub enum JoinBound {
    /// |left.ts - right.ts| <= ms
    Within(i64),
    Window(Window),
}

#[derive(Clone, Debug)]
pub struct PatternStep {
    pub name: String,
    pub cond: Expr,
    pub min: u64,
    /// `None`: unbounded.
    pub max: Option<u64>,
}

#[derive(Clone, Debug)]
pub enum OpKind {
    Filter(Expr),
    /// Output fields in order.
    Project(Vec<(String, Expr)>),
    /// Hash-partition by these expressions; the names are what aggregates call them.
    KeyBy(Vec<(String, Expr)>),
    /// A window and the aggregate that follows it, fused: results carry the keys,
    /// `window_start`, `window_end`, then `outputs` (expressions over `aggs`).
    WindowAggregate {
        window: Window,
        keys: Vec<String>,
        allowed_lateness_ms: i64,
        late: Option<Target>,
        emit_every_ms: Option<i64>,
        aggs: Vec<AggCall>,
        outputs: Vec<(String, Expr)>,
    },
    /// A keyed aggregate without a window: an update per record.
    Aggregate {
        keys: Vec<String>,
        aggs: Vec<AggCall>,
        outputs: Vec<(String, Expr)>,
        ttl_ms: Option<i64>,
    },
    Dedup {
        by: Vec<Expr>,
        within_ms: i64,
    },
    TopN {
        n: u64,
        by: Expr,
        descending: bool,
    },
    Join {
        kind: JoinKind,
        other: Input,
        alias: String,
        on: Expr,
        bound: JoinBound,
    },
    Lookup {
        kind: JoinKind,
        topic: String,
        alias: String,
        key: Expr,
    },
    Union(Vec<Input>),
    Unnest {
        field: usize,
    },
    Pattern {
        keys: Vec<String>,
        steps: Vec<PatternStep>,
        within_ms: i64,
        aggs: Vec<AggCall>,
        measures: Vec<(String, Expr)>,
    },
}

/// Operators are the AST's: the IR adds types, not new operators.
pub use crate::syntax::ast::{BinOp, UnOp};

#[derive(Clone, Debug)]
pub struct Expr {
    pub kind: ExprKind,
    pub ty: Type,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum ExprKind {
    Literal(Value),
    /// Field `i` of the operator's input record.
    Field(usize),
    /// Parameter `i` of the enclosing fn.
    Param(usize),
    /// The record matched by pattern step `i` (in measures).
    Step(usize),
    /// Result slot `i` of the enclosing aggregate's calls.
    Agg(usize),
    GetField(Box<Expr>, usize),
    /// `a?.f`: null when `a` is.
    SafeGetField(Box<Expr>, usize),
    /// `list[i]`, 1-based as in Flink SQL, null outside the list.
    Index(Box<Expr>, Box<Expr>),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// A stdlib function.
    Call(&'static str, Vec<Expr>),
    /// A user `fn`, by index in `Program::fns`.
    CallFn(usize, Vec<Expr>),
    If(Box<Expr>, Box<Expr>, Box<Expr>),
    Case {
        arms: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
    },
    Cast(Box<Expr>),
    In {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    List(Vec<Expr>),
    Record(Vec<Expr>),
}

impl Expr {
    /// Calls `f` on each direct subexpression, mutably (for rewrites of the IR).
    pub fn for_each_child_mut(&mut self, f: &mut impl FnMut(&mut Expr)) {
        use ExprKind as K;
        match &mut self.kind {
            K::Literal(_) | K::Field(_) | K::Param(_) | K::Step(_) | K::Agg(_) => {}
            K::GetField(x, _) | K::SafeGetField(x, _) | K::Unary(_, x) | K::Cast(x) | K::IsNull { expr: x, .. } => f(x),
            K::Index(a, b) | K::Binary(_, a, b) => {
                f(a);
                f(b);
            }
            K::Call(_, args) | K::CallFn(_, args) | K::List(args) | K::Record(args) => args.iter_mut().for_each(f),
            K::If(a, b, c) => {
                f(a);
                f(b);
                f(c);
            }
            K::Case { arms, otherwise } => {
                for (w, t) in arms {
                    f(w);
                    f(t);
                }
                if let Some(o) = otherwise {
                    f(o);
                }
            }
            K::In { expr, list, .. } => {
                f(expr);
                list.iter_mut().for_each(f);
            }
        }
    }

    pub fn literal_value(&self) -> Option<&Value> {
        match &self.kind {
            ExprKind::Literal(v) => Some(v),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------- text form

/// Prints an expression with field names from `input`.
pub struct ExprDisplay<'a> {
    pub expr: &'a Expr,
    pub input: Option<&'a RecordType>,
    pub program: &'a Program,
}

fn write_value(f: &mut impl fmt::Write, v: &Value) -> fmt::Result {
    match v {
        Value::Decimal { units, scale } => write!(f, "{}", format_decimal(*units, *scale)),
        Value::Float(x) => write!(f, "{x:?}f"),
        other => write!(f, "{other}"),
    }
}

impl ExprDisplay<'_> {
    fn sub<'b>(&'b self, e: &'b Expr) -> ExprDisplay<'b> {
        ExprDisplay { expr: e, input: self.input, program: self.program }
    }
}

impl fmt::Display for ExprDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.expr;
        match &e.kind {
            ExprKind::Literal(v) => write_value(f, v),
            ExprKind::Field(i) => match self.input.and_then(|r| r.fields.get(*i)) {
                Some(fl) => write!(f, "{}", fl.name),
                None => write!(f, "#{i}"),
            },
            ExprKind::Param(i) => write!(f, "$param{i}"),
            ExprKind::Step(i) => write!(f, "$step{i}"),
            ExprKind::Agg(i) => write!(f, "$agg{i}"),
            ExprKind::GetField(r, i) | ExprKind::SafeGetField(r, i) => {
                let name = match &r.ty.kind {
                    flow_types::Kind::Record(rt) => rt.fields.get(*i).map_or("?", |f| f.name.as_str()),
                    _ => "?",
                };
                let dot = if matches!(e.kind, ExprKind::SafeGetField(..)) { "?." } else { "." };
                write!(f, "{}{dot}{name}", self.sub(r))
            }
            ExprKind::Index(l, i) => write!(f, "{}[{}]", self.sub(l), self.sub(i)),
            ExprKind::Unary(UnOp::Neg, x) => write!(f, "(-{})", self.sub(x)),
            ExprKind::Unary(UnOp::Not, x) => write!(f, "(not {})", self.sub(x)),
            ExprKind::Binary(op, a, b) => {
                write!(f, "({} {} {})", self.sub(a), op.symbol(), self.sub(b))
            }
            ExprKind::Call(name, args) => {
                write!(f, "{name}(")?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", self.sub(a))?;
                }
                f.write_str(")")
            }
            ExprKind::CallFn(idx, args) => {
                let name = self.program.fns.get(*idx).map_or("?", |x| x.name.as_str());
                write!(f, "{name}(")?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", self.sub(a))?;
                }
                f.write_str(")")
            }
            ExprKind::If(c, t, x) => write!(f, "if {} then {} else {}", self.sub(c), self.sub(t), self.sub(x)),
            ExprKind::Case { arms, otherwise } => {
                f.write_str("case")?;
                for (w, t) in arms {
                    write!(f, " when {} then {}", self.sub(w), self.sub(t))?;
                }
                if let Some(o) = otherwise {
                    write!(f, " else {}", self.sub(o))?;
                }
                f.write_str(" end")
            }
            ExprKind::Cast(x) => write!(f, "({} as {})", self.sub(x), e.ty),
            ExprKind::In { expr, list, negated } => {
                write!(f, "({}{} in (", self.sub(expr), if *negated { " not" } else { "" })?;
                for (i, a) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", self.sub(a))?;
                }
                f.write_str("))")
            }
            ExprKind::IsNull { expr, negated } => {
                write!(f, "({} is{} null)", self.sub(expr), if *negated { " not" } else { "" })
            }
            ExprKind::List(items) => {
                f.write_str("[")?;
                for (i, a) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", self.sub(a))?;
                }
                f.write_str("]")
            }
            ExprKind::Record(items) => {
                f.write_str("{")?;
                let names: Vec<&str> = match &e.ty.kind {
                    flow_types::Kind::Record(r) => r.fields.iter().map(|f| f.name.as_str()).collect(),
                    _ => Vec::new(),
                };
                for (i, a) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}: {}", names.get(i).unwrap_or(&"?"), self.sub(a))?;
                }
                f.write_str("}")
            }
        }
    }
}

pub fn record_fields(r: &RecordType) -> String {
    let mut s = String::from("{");
    for (i, f) in r.fields.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{}: {}", f.name, f.ty);
    }
    s.push('}');
    s
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Window::Tumbling { size_ms } => write!(f, "tumbling({})", fmt_ms(*size_ms)),
            Window::Sliding { size_ms, slide_ms } => {
                write!(f, "sliding({}, every: {})", fmt_ms(*size_ms), fmt_ms(*slide_ms))
            }
            Window::Session { gap_ms } => write!(f, "session(gap: {})", fmt_ms(*gap_ms)),
        }
    }
}

/// A duration in the largest unit that divides it: `60000` -> `1m`.
pub fn fmt_ms(ms: i64) -> String {
    for (unit, n) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms != 0 && ms % n == 0 {
            return format!("{}{unit}", ms / n);
        }
    }
    format!("{ms}ms")
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Topic(n) => write!(f, "topic {n}"),
            Target::Sink(n) => write!(f, "sink {n}"),
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Topic(n) => write!(f, "topic {n}"),
            Input::Source(n) => write!(f, "source {n}"),
        }
    }
}

impl Program {
    fn ed<'a>(&'a self, e: &'a Expr, input: &'a RecordType) -> ExprDisplay<'a> {
        ExprDisplay { expr: e, input: Some(input), program: self }
    }

    fn write_named(&self, out: &mut String, items: &[(String, Expr)], input: &RecordType) {
        for (i, (n, e)) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{n}: {}", self.ed(e, input));
        }
    }

    fn write_aggs(&self, out: &mut String, aggs: &[AggCall], input: &RecordType) {
        for (i, a) in aggs.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            match &a.arg {
                Some(x) => {
                    let _ = write!(out, "$agg{i} = {}({})", a.func, self.ed(x, input));
                }
                None => {
                    let _ = write!(out, "$agg{i} = {}()", a.func);
                }
            }
        }
    }

    /// One operator in text, given its input record.
    pub fn op_text(&self, op: &Op, input: &RecordType) -> String {
        let mut s = String::new();
        match &op.kind {
            OpKind::Filter(e) => {
                let _ = write!(s, "filter {}", self.ed(e, input));
            }
            OpKind::Project(items) => {
                s.push_str("project {");
                self.write_named(&mut s, items, input);
                s.push('}');
            }
            OpKind::KeyBy(keys) => {
                s.push_str("key_by {");
                self.write_named(&mut s, keys, input);
                s.push('}');
            }
            OpKind::WindowAggregate { window, keys, allowed_lateness_ms, late, emit_every_ms, aggs, outputs } => {
                let _ = write!(s, "window_aggregate {window} keys [{}]", keys.join(", "));
                if *allowed_lateness_ms > 0 {
                    let _ = write!(s, " allowed_lateness {}", fmt_ms(*allowed_lateness_ms));
                }
                if let Some(t) = late {
                    let _ = write!(s, " late -> {t}");
                }
                if let Some(e) = emit_every_ms {
                    let _ = write!(s, " emit every {}", fmt_ms(*e));
                }
                s.push_str(" aggs [");
                self.write_aggs(&mut s, aggs, input);
                s.push_str("] out {");
                self.write_named(&mut s, outputs, input);
                s.push('}');
            }
            OpKind::Aggregate { keys, aggs, outputs, ttl_ms } => {
                let _ = write!(s, "aggregate keys [{}]", keys.join(", "));
                if let Some(t) = ttl_ms {
                    let _ = write!(s, " ttl {}", fmt_ms(*t));
                }
                s.push_str(" aggs [");
                self.write_aggs(&mut s, aggs, input);
                s.push_str("] out {");
                self.write_named(&mut s, outputs, input);
                s.push('}');
            }
            OpKind::Dedup { by, within_ms } => {
                s.push_str("dedup by [");
                for (i, e) in by.iter().enumerate() {
                    if i > 0 {
                        s.push_str(", ");
                    }
                    let _ = write!(s, "{}", self.ed(e, input));
                }
                let _ = write!(s, "] within {}", fmt_ms(*within_ms));
            }
            OpKind::TopN { n, by, descending } => {
                let _ = write!(s, "top {n} by {} {}", self.ed(by, input), if *descending { "desc" } else { "asc" });
            }
            OpKind::Join { kind, other, alias, on, bound } => {
                let k = if *kind == JoinKind::LeftOuter { "left join" } else { "join" };
                let _ = write!(
                    s,
                    "{k} {other} as {alias} on {}",
                    ExprDisplay { expr: on, input: Some(&op.output), program: self }
                );
                match bound {
                    JoinBound::Within(ms) => {
                        let _ = write!(s, " within {}", fmt_ms(*ms));
                    }
                    JoinBound::Window(w) => {
                        let _ = write!(s, " window {w}");
                    }
                }
            }
            OpKind::Lookup { kind, topic, alias, key } => {
                let k = if *kind == JoinKind::LeftOuter { "left lookup" } else { "lookup" };
                let _ = write!(s, "{k} topic {topic} as {alias} key {}", self.ed(key, input));
            }
            OpKind::Union(inputs) => {
                s.push_str("union ");
                let v: Vec<String> = inputs.iter().map(|i| i.to_string()).collect();
                s.push_str(&v.join(", "));
            }
            OpKind::Unnest { field } => {
                let _ = write!(s, "unnest {}", input.fields.get(*field).map_or("?", |f| f.name.as_str()));
            }
            OpKind::Pattern { keys, steps, within_ms, aggs, measures } => {
                let _ = write!(s, "pattern keys [{}] [", keys.join(", "));
                for (i, st) in steps.iter().enumerate() {
                    if i > 0 {
                        s.push_str(", ");
                    }
                    let q = match (st.min, st.max) {
                        (1, Some(1)) => String::new(),
                        (a, Some(b)) if a == b => format!(" times {a}"),
                        (a, Some(b)) => format!(" times {a}..{b}"),
                        (a, None) => format!(" times {a}.."),
                    };
                    let _ = write!(s, "{}: {}{q}", st.name, self.ed(&st.cond, input));
                }
                let _ = write!(s, "] within {} aggs [", fmt_ms(*within_ms));
                self.write_aggs(&mut s, aggs, input);
                s.push_str("] measures {");
                self.write_named(&mut s, measures, input);
                s.push('}');
            }
        }
        s
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.schemas {
            writeln!(f, "schema {} {}", s.name, record_fields(&s.record))?;
        }
        for c in &self.consts {
            write!(f, "const {}: {} = ", c.name, c.ty)?;
            write_value(f, &c.value)?;
            writeln!(f)?;
        }
        for func in &self.fns {
            let params: Vec<String> = func.params.iter().map(|(n, t)| format!("{n}: {t}")).collect();
            let body = ExprDisplay { expr: &func.body, input: None, program: self };
            writeln!(f, "fn {}({}) -> {} = {body}", func.name, params.join(", "), func.ret)?;
        }
        if self.config != Config::default() {
            writeln!(f, "config {:?}", self.config)?;
        }
        for t in &self.topics {
            write!(
                f,
                "topic {}: {} partitions {} retention {}",
                t.name,
                record_fields(&t.schema),
                t.partitions,
                fmt_ms(t.retention_ms)
            )?;
            if let Some(k) = t.key {
                write!(f, " key {}", t.schema.fields[k].name)?;
            }
            if let Some(b) = t.retention_bytes {
                write!(f, " retention_bytes {b}")?;
            }
            if t.compaction {
                write!(f, " compaction")?;
            }
            if let Some(i) = t.idle_timeout_ms {
                write!(f, " idle_timeout {}", fmt_ms(i))?;
            }
            writeln!(f)?;
        }
        for s in &self.sources {
            write!(f, "source {}: {} = {:?}", s.name, record_fields(&s.schema), s.connector)?;
            if let Some(et) = &s.event_time {
                write!(f, " event_time {} watermark {}", s.schema.fields[et.field].name, fmt_ms(s.watermark_ms))?;
            }
            if let Some(i) = s.idle_timeout_ms {
                write!(f, " idle_timeout {}", fmt_ms(i))?;
            }
            if let Some(d) = &s.dead_letter {
                write!(f, " dead_letter -> {d}")?;
            }
            writeln!(f)?;
        }
        for s in &self.sinks {
            writeln!(f, "sink {}: {} = {:?}", s.name, record_fields(&s.schema), s.connector)?;
        }
        for p in &self.pipelines {
            writeln!(f, "pipeline {}", p.name)?;
            writeln!(f, "  from {} {}", p.input, record_fields(&p.input_schema))?;
            let mut input = p.input_schema.clone();
            for op in &p.ops {
                writeln!(f, "  | {}", self.op_text(op, &input))?;
                let et = match &op.event_time {
                    Some(et) => format!(
                        " event_time {}{}",
                        op.output.fields.get(et.field).map_or("?", |f| f.name.as_str()),
                        if et.offset_ms != 0 { format!(" {:+}ms", et.offset_ms) } else { String::new() }
                    ),
                    None => String::new(),
                };
                writeln!(f, "    -> {}{et}", record_fields(&op.output))?;
                input = op.output.clone();
            }
            for o in &p.outputs {
                match &o.when {
                    Some(w) => writeln!(f, "  -> {} when {}", o.target, self.ed(w, &input))?,
                    None => writeln!(f, "  -> {}", o.target)?,
                }
            }
        }
        Ok(())
    }
}
