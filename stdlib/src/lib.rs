//! The built-in functions and aggregates of .flow.
