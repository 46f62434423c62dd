//! Execution of the typed IR: a reference interpreter and a cranelift JIT.
//!
//! | module | owns |
//! | --- | --- |
//! | [`interp`] | [`interp::eval`]: the reference semantics of every expression, on values |
//! | [`stage`] | [`stage::StageSpec`], the [`stage::Stage`] trait, [`stage::interpreted`], [`stage::jit`] |
//! | [`codegen`] | lowering a fused stage to Cranelift IR, `--emit clif` text |
//! | [`accum`] | JIT-compiled accumulator updates of `aggregate { }` (fixed-width state) |
//!
//! Both back ends implement the run-time semantics written in docs/language.md ("Run-time
//! semantics"); the property test in `compiler/tests/jit_vs_interp.rs` holds them to it.
//! This layer knows rows and values, not tasks, channels or connectors.

pub mod accum;
pub mod codegen;
pub mod interp;
pub mod stage;

use crate::source::Span;
use std::fmt;

/// A run-time error inside an expression: the runtime sends the record to the
/// dead-letter output with this reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalError {
    /// The .flow span of the expression that failed.
    pub span: Span,
    pub message: String,
    /// The index of the failing row in the input batch ([`stage::Stage::run`]); 0 from
    /// [`interp::eval`].
    pub row: usize,
}

impl EvalError {
    pub fn new(span: Span, message: impl Into<String>) -> EvalError {
        EvalError { span, message: message.into(), row: 0 }
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EvalError {}

/// A stage that cannot be built: an operator that is not stateless, an expression a
/// stateless stage cannot hold, or a code generation failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileError {
    pub span: Span,
    pub message: String,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CompileError {}
