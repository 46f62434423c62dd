//! The durable log: partitioned topics on disk in Kafka's v2 record-batch format,
//! with CRC-checked batches, sparse indexes, group-commit appends, crash recovery,
//! retention and consumer-group offsets.
//!
//! Code map (each module owns one thing):
//! - [`batch`]: the v2 RecordBatch bytes and CRC-32C; no files.
//! - [`index`]: sparse offset and time indexes; no files.
//! - [`segment`]: one `.log` file with its indexes; scanning and validation.
//! - [`partition`]: segments of one partition; append with group commit, reads,
//!   recovery, tail waiting, retention passes.
//! - [`topic`]: the data directory, topics' metadata, locks, routing to partitions.
//! - [`partitioner`]: Kafka's murmur2 default partitioner.
//! - [`groups`]: committed offsets of consumer groups.
//! - [`retention`]: the pure retention rule.
//! - [`bench`]: the measurements behind `flowc bench log`.
//! - [`io`]: the file-I/O and clock seams (and their fault-injecting test doubles).
//!
//! Invariants: offsets in a partition are dense from the first retained one; every
//! byte range handed to a reader is a whole batch that passed its CRC; an append is
//! acknowledged only after the promise of its [`Acks`] holds.

pub mod batch;
pub mod bench;
pub mod error;
pub mod groups;
pub mod index;
pub mod io;
pub mod partition;
pub mod partitioner;
pub mod retention;
pub mod segment;
mod shared;
pub mod topic;

pub use batch::{Compression, Header, NewRecord, Record, RecordBatch};
pub use error::{LogError, Result};
pub use groups::GroupStore;
pub use partition::{Access, Acks, Appended, Partition, PartitionInfo, RecoveryEvent, RetentionOutcome};
pub use topic::{LogDir, Topic, TopicConfig};
