//! The abstract syntax tree: what a .flow file says, with a span on every node.
//!
//! The AST knows no types and resolves no names; it is the parse tree of
//! `grammar/flow.pest` with the punctuation dropped and literals decoded.

use crate::source::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// A parsed file. `broken` lists declarations that failed to parse, so the checker
/// can stay silent about uses of their names (no cascades).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
    pub broken: Vec<BrokenDecl>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BrokenDecl {
    pub keyword: String,
    pub name: Option<String>,
    pub span: Span,
}

/// Items are built once per declaration and never moved in bulk, so their size
/// difference costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Import(Import),
    Schema(SchemaDecl),
    Topic(TopicDecl),
    Source(SourceDecl),
    Sink(SinkDecl),
    Pipeline(PipelineDecl),
    Const(ConstDecl),
    Fn(FnDecl),
    Config(ConfigDecl),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Import {
    pub path: String,
    pub path_span: Span,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SchemaDecl {
    pub name: Ident,
    pub fields: Vec<FieldDecl>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FieldDecl {
    pub name: Ident,
    pub ty: TypeExpr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TypeExpr {
    pub kind: TypeExprKind,
    pub nullable: bool,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TypeExprKind {
    /// A primitive (`int`, `string`, ...) or a schema name.
    Named(Ident),
    /// `decimal(p, s)`; the numbers as written (validated by the checker).
    Decimal {
        precision: u64,
        scale: u64,
        precision_span: Span,
        scale_span: Span,
    },
    List(Box<TypeExpr>),
}

/// `name: value` in a `{ }` option block or a connector call.
#[derive(Clone, Debug, PartialEq)]
pub struct Opt {
    pub name: Ident,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TopicDecl {
    pub name: Ident,
    pub schema: Ident,
    pub options: Vec<Opt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SourceDecl {
    pub name: Ident,
    pub schema: Ident,
    pub connector: Connector,
    pub event_time: Option<EventTime>,
    pub idle_timeout: Option<Expr>,
    pub dead_letter: Option<Ident>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EventTime {
    pub field: Ident,
    pub watermark: Option<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SinkDecl {
    pub name: Ident,
    pub schema: Option<Ident>,
    pub connector: Connector,
    pub span: Span,
}

/// `kind(arg, name: arg, ...)`: a connector or a window specification.
#[derive(Clone, Debug, PartialEq)]
pub struct Connector {
    pub kind: Ident,
    pub args: Vec<Arg>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConstDecl {
    pub name: Ident,
    pub ty: Option<TypeExpr>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FnDecl {
    pub name: Ident,
    pub params: Vec<Param>,
    pub ret: TypeExpr,
    pub body: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: Ident,
    pub ty: TypeExpr,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConfigDecl {
    pub options: Vec<Opt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PipelineDecl {
    pub name: Ident,
    pub input: Ident,
    pub ops: Vec<Op>,
    /// `-> a, b`; empty when the pipeline ends in `route` (or is missing its output).
    pub targets: Vec<Ident>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    pub kind: OpKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NamedExpr {
    pub name: Ident,
    pub value: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SelectItem {
    /// `*`: every field of the input.
    All(Span),
    Named(NamedExpr),
    /// A bare expression; its name is the field it ends in (`account`, `p.amount`).
    Expr(Expr),
}

#[derive(Clone, Debug, PartialEq)]
pub enum OpKind {
    Where(Expr),
    Select(Vec<SelectItem>),
    KeyBy(Vec<Expr>),
    Window { spec: Connector, lateness: Option<Expr>, late: Option<Ident>, emit_every: Option<Expr> },
    Aggregate { items: Vec<NamedExpr>, ttl: Option<Expr> },
    Dedup { by: Option<Expr>, within: Expr },
    Top { n: u64, n_span: Span, by: Expr, descending: bool },
    Join { left_outer: bool, other: Ident, alias: Option<Ident>, on: Expr, bound: JoinBound },
    Lookup { left_outer: bool, table: Ident, alias: Option<Ident>, on: Expr },
    Union(Vec<Ident>),
    Route(Vec<RouteArm>),
    Unnest { field: Expr, alias: Option<Ident> },
    Pattern { steps: Vec<PatternStep>, within: Expr, measures: Vec<NamedExpr> },
}

impl OpKind {
    /// The keyword that starts the operator, for messages.
    pub fn keyword(&self) -> &'static str {
        match self {
            OpKind::Where(_) => "where",
            OpKind::Select(_) => "select",
            OpKind::KeyBy(_) => "key_by",
            OpKind::Window { .. } => "window",
            OpKind::Aggregate { .. } => "aggregate",
            OpKind::Dedup { .. } => "dedup",
            OpKind::Top { .. } => "top",
            OpKind::Join { .. } => "join",
            OpKind::Lookup { .. } => "lookup",
            OpKind::Union(_) => "union",
            OpKind::Route(_) => "route",
            OpKind::Unnest { .. } => "unnest",
            OpKind::Pattern { .. } => "pattern",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum JoinBound {
    None,
    Within(Expr),
    Window(Connector),
}

#[derive(Clone, Debug, PartialEq)]
pub struct RouteArm {
    /// `None` for `else`.
    pub cond: Option<Expr>,
    pub target: Ident,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PatternStep {
    pub name: Ident,
    pub cond: Expr,
    pub quantifier: Option<Quantifier>,
    pub span: Span,
}

/// `times n`, `times n..`, `times n..m`.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantifier {
    pub min: u64,
    /// `None`: no upper bound.
    pub max: Option<u64>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Coalesce,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "or",
            BinOp::And => "and",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Coalesce => "??",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    /// An exact literal with a point, e.g. `10_000.00`: `units / 10^scale`, with
    /// `precision` significant digits as written.
    Decimal {
        units: i128,
        precision: u8,
        scale: u8,
    },
    Float(f64),
    Str(String),
    Bool(bool),
    Null,
    /// Milliseconds.
    Duration(i64),
    /// Bytes.
    Size(i64),
    /// Milliseconds since the epoch.
    Timestamp(i64),
    Name(Ident),
    Field(Box<Expr>, Ident),
    SafeField(Box<Expr>, Ident),
    Index(Box<Expr>, Box<Expr>),
    Call(Ident, Vec<Expr>),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    If(Box<Expr>, Box<Expr>, Box<Expr>),
    Case {
        subject: Option<Box<Expr>>,
        arms: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
    },
    Cast(Box<Expr>, TypeExpr),
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
    Record(Vec<NamedExpr>),
    /// A literal that failed to decode; its diagnostic is already reported.
    Error,
}
