//! Data types and values shared by the compiler, the stdlib and the runtime.
//!
//! This crate owns what a value of a .flow type *is*; it knows nothing of syntax,
//! diagnostics or execution.
