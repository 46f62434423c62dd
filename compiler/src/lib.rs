//! The flow compiler.
