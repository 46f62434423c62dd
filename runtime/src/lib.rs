//! The flow runtime: the durable log, operators, event time, state, checkpoints and
//! connectors. It consumes the compiler's plans and knows nothing of .flow syntax.

pub mod bench;
pub mod checkpoint;
pub mod format;
pub mod generate;
pub mod log;
pub mod run;
