//! The log's error type. Every error that concerns stored data names where it is:
//! topic, partition, segment file and offset.

use std::io;
use std::path::PathBuf;

use super::batch::BatchError;

/// Errors from the durable log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "corrupt data in topic `{topic}` partition {partition}, segment {segment}, at offset {offset} (byte {position}): {reason}"
    )]
    Corrupt { topic: String, partition: u32, segment: PathBuf, offset: u64, position: u64, reason: BatchError },
    #[error("corrupt {what} in {path}: {reason}")]
    CorruptFile { what: &'static str, path: PathBuf, reason: String },
    #[error("unknown topic `{0}`")]
    UnknownTopic(String),
    #[error("topic `{0}` already exists")]
    TopicExists(String),
    #[error("invalid topic name `{name}`: {reason}")]
    InvalidTopicName { name: String, reason: &'static str },
    #[error("invalid consumer group name `{name}`: {reason}")]
    InvalidGroupName { name: String, reason: &'static str },
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("topic `{topic}` partition {partition} does not exist (the topic has {partitions})")]
    UnknownPartition { topic: String, partition: u32, partitions: u32 },
    #[error("topic `{0}` is open for writing by another process")]
    Locked(String),
    #[error("topic `{0}` was opened read-only")]
    ReadOnly(String),
    #[error(
        "topic `{topic}` partition {partition} refuses writes after an earlier I/O failure ({reason}); reopen it to recover"
    )]
    Failed { topic: String, partition: u32, reason: String },
    #[error("offset {offset} is out of range for topic `{topic}` partition {partition} (start {start}, end {end})")]
    OffsetOutOfRange { topic: String, partition: u32, offset: u64, start: u64, end: u64 },
    #[error("invalid batch: {0}")]
    InvalidBatch(BatchError),
    #[error("an append needs at least one record")]
    EmptyAppend,
    #[error("batch of {bytes} bytes exceeds the limit of {limit} bytes")]
    BatchTooLarge { bytes: usize, limit: usize },
}

impl LogError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> LogError {
        LogError::Io { context: context.into(), source }
    }
}

/// Results of log operations.
pub type Result<T, E = LogError> = std::result::Result<T, E>;
