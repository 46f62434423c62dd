//! One function per Kafka API, over the embedded log. Each takes a decoded request
//! and returns the response to encode; none panics on any request.
//!
//! Produce appends each batch as the producer sent it ([`Partition::append_batch`]
//! checks it first); acks 1 is acknowledged when the batch reached the page cache, acks
//! -1 (all) after an fdatasync (the log's group commit, shared between requests). Fetch
//! returns stored batches byte for byte and long-polls on the partitions' append
//! notifications. Committed offsets go to the log's `GroupStore`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use flow_runtime::log::batch::BatchHeader;
use flow_runtime::log::{Acks, LogDir, LogError, Topic, TopicConfig};
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorEntry;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::codec::{self, Decoded, FrameError};
use crate::group::{self, JoinRequest, Reply};
use crate::producer::{ProducerStates, Verdict};
use crate::{Config, CLUSTER_ID, NODE_ID};

/// Kafka error codes used here (see the protocol guide).
pub mod code {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_CONFIG: i16 = 40;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
    pub const INVALID_RECORD: i16 = 87;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
}

/// A topic opened for writing by the broker, with its partitions' producer states.
#[derive(Debug)]
pub struct OpenTopic {
    /// Shared with pipelines running in the same process (`LogDir::open_topic_shared`).
    pub topic: Arc<Topic>,
    producers: Vec<Mutex<ProducerStates>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The broker's shared state.
#[derive(Debug)]
pub struct Broker {
    pub config: Config,
    dir: LogDir,
    topics: Mutex<HashMap<String, Arc<OpenTopic>>>,
    /// Serialises opening, creating and deleting topics.
    admin: tokio::sync::Mutex<()>,
    pub(crate) groups: Mutex<group::Coordinator>,
    next_producer_id: AtomicI64,
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, LogError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LogError::InvalidConfig(format!("a blocking log operation failed: {e}")))
}

fn log_error_code(e: &LogError) -> i16 {
    match e {
        LogError::UnknownTopic(_) | LogError::UnknownPartition { .. } => code::UNKNOWN_TOPIC_OR_PARTITION,
        LogError::InvalidTopicName { .. } => code::INVALID_TOPIC_EXCEPTION,
        LogError::TopicExists(_) => code::TOPIC_ALREADY_EXISTS,
        LogError::InvalidConfig(_) => code::INVALID_CONFIG,
        LogError::OffsetOutOfRange { .. } => code::OFFSET_OUT_OF_RANGE,
        LogError::BatchTooLarge { .. } => code::MESSAGE_TOO_LARGE,
        LogError::InvalidBatch(_) | LogError::EmptyAppend => code::CORRUPT_MESSAGE,
        LogError::Io { .. } | LogError::Failed { .. } | LogError::Corrupt { .. } | LogError::CorruptFile { .. } => {
            code::KAFKA_STORAGE_ERROR
        }
        _ => code::UNKNOWN_SERVER_ERROR,
    }
}

impl Broker {
    pub fn new(config: Config) -> Broker {
        // Producer ids must not repeat across restarts (the sequence state is in memory):
        // start from the clock in milliseconds times 1,000.
        let first_pid = now_ms().saturating_mul(1000).max(1);
        Broker {
            dir: LogDir::new(config.data_dir.clone()),
            config,
            topics: Mutex::new(HashMap::new()),
            admin: tokio::sync::Mutex::new(()),
            groups: Mutex::new(group::Coordinator::default()),
            next_producer_id: AtomicI64::new(first_pid),
        }
    }

    pub fn log_dir(&self) -> &LogDir {
        &self.dir
    }

    /// The topic, opened for writing on first use; `None` if it does not exist.
    pub async fn topic(&self, name: &str) -> Result<Option<Arc<OpenTopic>>, LogError> {
        if let Some(t) = lock(&self.topics).get(name) {
            return Ok(Some(t.clone()));
        }
        if flow_runtime::log::topic::validate_name(name).is_err() {
            return Ok(None);
        }
        let _admin = self.admin.lock().await;
        if let Some(t) = lock(&self.topics).get(name) {
            return Ok(Some(t.clone()));
        }
        let dir = self.dir.clone();
        let n = name.to_string();
        let opened = blocking(move || dir.open_topic_shared(&n)).await?;
        let topic = match opened {
            Ok(t) => t,
            Err(LogError::UnknownTopic(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        for ev in topic.recovery_events() {
            tracing::warn!("{ev}");
        }
        let producers = (0..topic.partitions().len()).map(|_| Mutex::new(ProducerStates::default())).collect();
        let open = Arc::new(OpenTopic { topic, producers });
        lock(&self.topics).insert(name.to_string(), open.clone());
        Ok(Some(open))
    }

    fn topic_names(&self) -> Vec<String> {
        self.dir.list_topics().unwrap_or_default()
    }

    fn allocate_producer_id(&self) -> i64 {
        self.next_producer_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Answer one decoded frame: the response frame to send, or `None` (acks=0 produce).
pub async fn handle(broker: &Broker, decoded: Decoded, local: SocketAddr) -> Result<Option<Bytes>, FrameError> {
    let (header, api_key, request) = match decoded {
        Decoded::ApiVersionsTooNew { correlation_id } => return codec::api_versions_too_new(correlation_id).map(Some),
        Decoded::Unsupported { header, api_key } => {
            let v = header.request_api_version;
            return match unsupported_response(api_key) {
                Some(body) => codec::encode_response(api_key, v, header.correlation_id, &body).map(Some),
                None => Err(FrameError(format!("{api_key:?} v{v} is not supported and has no error response"))),
            };
        }
        Decoded::Request { header, api_key, request } => (header, api_key, request),
    };
    let v = header.request_api_version;
    let client_id = header.client_id.as_ref().map(|c| c.to_string()).unwrap_or_default();
    let body = match *request {
        RequestKind::ApiVersions(_) => {
            ResponseKind::ApiVersions(ApiVersionsResponse::default().with_api_keys(codec::api_versions()))
        }
        RequestKind::Metadata(r) => ResponseKind::Metadata(metadata(broker, r, v, local).await),
        RequestKind::Produce(r) => {
            let acks = r.acks;
            let resp = produce(broker, r, v).await;
            if acks == 0 {
                return Ok(None);
            }
            ResponseKind::Produce(resp)
        }
        RequestKind::Fetch(r) => ResponseKind::Fetch(fetch(broker, r, v).await),
        RequestKind::ListOffsets(r) => ResponseKind::ListOffsets(list_offsets(broker, r).await),
        RequestKind::CreateTopics(r) => ResponseKind::CreateTopics(create_topics(broker, r, v).await),
        RequestKind::DeleteTopics(r) => ResponseKind::DeleteTopics(delete_topics(broker, r, v).await),
        RequestKind::FindCoordinator(r) => ResponseKind::FindCoordinator(find_coordinator(r, v, local)),
        RequestKind::JoinGroup(r) => ResponseKind::JoinGroup(join_group(broker, r, client_id).await),
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(sync_group(broker, r).await),
        RequestKind::Heartbeat(r) => {
            let err = lock(&broker.groups).heartbeat(&r.group_id, r.generation_id, &r.member_id, Instant::now());
            ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(err))
        }
        RequestKind::LeaveGroup(r) => ResponseKind::LeaveGroup(leave_group(broker, r, v)),
        RequestKind::OffsetCommit(r) => ResponseKind::OffsetCommit(offset_commit(broker, r).await),
        RequestKind::OffsetFetch(r) => ResponseKind::OffsetFetch(offset_fetch(broker, r, v).await),
        RequestKind::InitProducerId(r) => ResponseKind::InitProducerId(init_producer_id(broker, r)),
        RequestKind::DescribeGroups(r) => ResponseKind::DescribeGroups(describe_groups(broker, r)),
        RequestKind::ListGroups(_) => ResponseKind::ListGroups(list_groups(broker)),
        _ => match unsupported_response(api_key) {
            Some(b) => b,
            None => return Err(FrameError(format!("{api_key:?} is not supported"))),
        },
    };
    codec::encode_response(api_key, v, header.correlation_id, &body).map(Some)
}

/// The error response for an API (or version) we do not serve, for the APIs whose
/// response has a top-level error code.
fn unsupported_response(api_key: ApiKey) -> Option<ResponseKind> {
    let e = code::UNSUPPORTED_VERSION;
    Some(match api_key {
        ApiKey::ApiVersions => ResponseKind::ApiVersions(
            ApiVersionsResponse::default().with_error_code(e).with_api_keys(codec::api_versions()),
        ),
        ApiKey::SaslHandshake => ResponseKind::SaslHandshake(SaslHandshakeResponse::default().with_error_code(e)),
        ApiKey::SaslAuthenticate => {
            ResponseKind::SaslAuthenticate(SaslAuthenticateResponse::default().with_error_code(e))
        }
        ApiKey::Heartbeat => ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(e)),
        ApiKey::JoinGroup => ResponseKind::JoinGroup(JoinGroupResponse::default().with_error_code(e)),
        ApiKey::SyncGroup => ResponseKind::SyncGroup(SyncGroupResponse::default().with_error_code(e)),
        ApiKey::LeaveGroup => ResponseKind::LeaveGroup(LeaveGroupResponse::default().with_error_code(e)),
        ApiKey::ListGroups => ResponseKind::ListGroups(ListGroupsResponse::default().with_error_code(e)),
        ApiKey::InitProducerId => ResponseKind::InitProducerId(InitProducerIdResponse::default().with_error_code(e)),
        ApiKey::EndTxn => ResponseKind::EndTxn(EndTxnResponse::default().with_error_code(e)),
        ApiKey::AddOffsetsToTxn => ResponseKind::AddOffsetsToTxn(AddOffsetsToTxnResponse::default().with_error_code(e)),
        ApiKey::DescribeCluster => ResponseKind::DescribeCluster(DescribeClusterResponse::default().with_error_code(e)),
        ApiKey::DescribeAcls => ResponseKind::DescribeAcls(DescribeAclsResponse::default().with_error_code(e)),
        ApiKey::DescribeConfigs => ResponseKind::DescribeConfigs(DescribeConfigsResponse::default()),
        ApiKey::OffsetForLeaderEpoch => ResponseKind::OffsetForLeaderEpoch(OffsetForLeaderEpochResponse::default()),
        _ => return None,
    })
}

async fn metadata(broker: &Broker, r: MetadataRequest, v: i16, local: SocketAddr) -> MetadataResponse {
    let names: Vec<(String, bool)> = match r.topics {
        // v0: an empty list means every topic; v1+: null means every topic.
        Some(t) if !(v == 0 && t.is_empty()) => {
            t.into_iter().filter_map(|t| t.name.map(|n| (n.to_string(), true))).collect()
        }
        _ => broker.topic_names().into_iter().map(|n| (n, false)).collect(),
    };
    let mut topics = Vec::with_capacity(names.len());
    for (name, asked) in names {
        let mut config = broker.dir.topic_config(&name);
        if asked && broker.config.auto_create_topics && r.allow_auto_topic_creation {
            if let Err(LogError::UnknownTopic(_)) = config {
                let _admin = broker.admin.lock().await;
                let dir = broker.dir.clone();
                let n = name.clone();
                let created = blocking(move || dir.create_topic(&n, &TopicConfig::default())).await;
                if let Ok(Err(e)) = &created {
                    tracing::warn!(topic = %name, "auto-creating the topic failed: {e}");
                }
                config = broker.dir.topic_config(&name);
            }
        }
        let t = MetadataResponseTopic::default().with_name(Some(TopicName(str_bytes(&name))));
        topics.push(match config {
            Ok(c) => t.with_partitions(
                (0..c.partitions as i32)
                    .map(|p| {
                        MetadataResponsePartition::default()
                            .with_partition_index(p)
                            .with_leader_id(BrokerId(NODE_ID))
                            .with_leader_epoch(0)
                            .with_replica_nodes(vec![BrokerId(NODE_ID)])
                            .with_isr_nodes(vec![BrokerId(NODE_ID)])
                    })
                    .collect(),
            ),
            Err(LogError::InvalidTopicName { .. }) => t.with_error_code(code::INVALID_TOPIC_EXCEPTION),
            Err(_) => t.with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION),
        });
    }
    let mut resp = MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(NODE_ID))
            .with_host(str_bytes(&local.ip().to_string()))
            .with_port(i32::from(local.port()))])
        .with_topics(topics);
    if v >= 1 {
        resp.controller_id = BrokerId(NODE_ID);
    }
    if v >= 2 {
        resp.cluster_id = Some(str_bytes(CLUSTER_ID));
    }
    resp
}

/// Split a produce request's records into batches (one per batch header).
fn split_batches(records: &Bytes) -> Result<Vec<Bytes>, i16> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < records.len() {
        let rest = &records[pos..];
        if rest.len() < 12 {
            return Err(code::CORRUPT_MESSAGE);
        }
        let len = i32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]);
        if len < 0 {
            return Err(code::CORRUPT_MESSAGE);
        }
        let total = 12 + len as usize;
        if total > rest.len() {
            return Err(code::CORRUPT_MESSAGE);
        }
        out.push(records.slice(pos..pos + total));
        pos += total;
    }
    if out.is_empty() {
        return Err(code::CORRUPT_MESSAGE);
    }
    Ok(out)
}

struct Written {
    base_offset: i64,
    error: i16,
    message: Option<String>,
}

/// Append the batches of one partition, with idempotence checks. Returns the first
/// batch's base offset (Kafka answers with that) or the error.
fn append_partition(
    broker: &Broker,
    open: &OpenTopic,
    partition: u32,
    records: &Bytes,
    acks: Acks,
) -> (Written, Option<u64>) {
    let fail = |error: i16, message: Option<String>| (Written { base_offset: -1, error, message }, None);
    let Ok(part) = open.topic.partition(partition) else {
        return fail(code::UNKNOWN_TOPIC_OR_PARTITION, None);
    };
    let batches = match split_batches(records) {
        Ok(b) => b,
        Err(c) => return fail(c, Some("the records are not whole v2 record batches".into())),
    };
    let mut first: Option<i64> = None;
    let mut last_written = None;
    for b in batches {
        if b.len() > broker.config.limits.message_bytes_max {
            let m = format!(
                "a batch of {} bytes exceeds the limit of {} bytes (--max-message-bytes)",
                b.len(),
                broker.config.limits.message_bytes_max
            );
            return fail(code::MESSAGE_TOO_LARGE, Some(m));
        }
        let h = match BatchHeader::parse(&b) {
            Ok(h) => h,
            Err(e) => return fail(code::CORRUPT_MESSAGE, Some(e.to_string())),
        };
        // Check, append and remember under the partition's producer lock, so a retry
        // racing its original is seen as a duplicate. The append itself only writes to
        // the page cache; durability is waited for after the lock is released.
        let mut states = lock(&open.producers[partition as usize]);
        let idempotent = h.producer_id >= 0;
        if idempotent {
            match states.check(h.producer_id, h.producer_epoch, h.base_sequence, h.record_count) {
                Verdict::Append => {}
                Verdict::Duplicate { base_offset } => {
                    first.get_or_insert(base_offset as i64);
                    continue;
                }
                Verdict::OutOfOrder => return fail(code::OUT_OF_ORDER_SEQUENCE_NUMBER, None),
                Verdict::StaleEpoch => return fail(code::INVALID_PRODUCER_EPOCH, None),
            }
        }
        match part.append_batch(&b, Acks::Os) {
            Ok(a) => {
                if idempotent {
                    states.record(h.producer_id, h.producer_epoch, h.base_sequence, h.record_count, a.base_offset);
                }
                first.get_or_insert(a.base_offset as i64);
                last_written = Some(a.last_offset);
            }
            Err(e) => {
                let c = match &e {
                    LogError::InvalidBatch(_) => code::CORRUPT_MESSAGE,
                    other => log_error_code(other),
                };
                if c == code::KAFKA_STORAGE_ERROR {
                    tracing::error!(topic = %open.topic.name(), partition, "append failed: {e}");
                }
                return fail(c, Some(e.to_string()));
            }
        }
    }
    let _ = acks;
    (Written { base_offset: first.unwrap_or(-1), error: code::NONE, message: None }, last_written)
}

async fn produce(broker: &Broker, r: ProduceRequest, v: i16) -> ProduceResponse {
    let acks = match r.acks {
        -1 => Some(Acks::Fsync),
        0 | 1 => Some(Acks::Os),
        _ => None,
    };
    let mut responses = Vec::with_capacity(r.topic_data.len());
    let mut to_sync: Vec<(Arc<OpenTopic>, u32, u64, usize, usize)> = Vec::new();
    for t in r.topic_data {
        let name = t.name.to_string();
        let open = match broker.topic(&name).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(topic = %name, "opening the topic failed: {e}");
                None
            }
        };
        let mut parts = Vec::with_capacity(t.partition_data.len());
        for p in t.partition_data {
            let mut resp = PartitionProduceResponse::default().with_index(p.index).with_base_offset(-1);
            if v >= 5 {
                resp.log_start_offset = -1;
            }
            let err = |resp: PartitionProduceResponse, c: i16, m: Option<String>| {
                let resp = resp.with_error_code(c);
                if v >= 8 {
                    resp.with_error_message(m.map(|m| str_bytes(&m)))
                } else {
                    resp
                }
            };
            let (Some(acks), Some(open)) = (acks, open.as_ref()) else {
                let c = if acks.is_none() { code::INVALID_REQUIRED_ACKS } else { code::UNKNOWN_TOPIC_OR_PARTITION };
                parts.push(err(resp, c, None));
                continue;
            };
            if p.index < 0 {
                parts.push(err(resp, code::UNKNOWN_TOPIC_OR_PARTITION, None));
                continue;
            }
            let Some(records) = p.records.as_ref() else {
                parts.push(err(resp, code::CORRUPT_MESSAGE, Some("no records".into())));
                continue;
            };
            let (w, last) = append_partition(broker, open, p.index as u32, records, acks);
            if w.error != code::NONE {
                parts.push(err(resp, w.error, w.message));
                continue;
            }
            resp.base_offset = w.base_offset;
            if v >= 5 {
                resp.log_start_offset = open.topic.partition(p.index as u32).map_or(0, |p| p.start_offset() as i64);
            }
            if v >= 2 {
                resp.log_append_time_ms = -1;
            }
            if let (Acks::Fsync, Some(last)) = (acks, last) {
                to_sync.push((open.clone(), p.index as u32, last, responses.len(), parts.len()));
            }
            parts.push(resp);
        }
        responses.push(
            TopicProduceResponse::default().with_name(TopicName(str_bytes(&name))).with_partition_responses(parts),
        );
    }
    // acks=all: every written partition is fsynced (the log's group commit) before we answer.
    for (open, p, last, ti, pi) in to_sync {
        let synced = blocking(move || open.topic.partition(p).and_then(|part| part.sync_through(last))).await;
        let failed = match synced {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(m) = failed {
            tracing::error!(partition = p, "fsync failed: {m}");
            let resp = &mut responses[ti].partition_responses[pi];
            resp.error_code = code::KAFKA_STORAGE_ERROR;
            resp.base_offset = -1;
        }
    }
    ProduceResponse::default().with_responses(responses)
}

async fn fetch(broker: &Broker, r: FetchRequest, v: i16) -> FetchResponse {
    let limits = &broker.config.limits;
    if v >= 7 && r.session_id != 0 {
        // No fetch sessions: a client that has one is told it is gone and falls back to full fetches.
        let mut resp = FetchResponse::default().with_error_code(code::FETCH_SESSION_ID_NOT_FOUND);
        resp.session_id = 0;
        return resp;
    }
    let max_bytes = if v >= 3 && r.max_bytes > 0 {
        (r.max_bytes as usize).min(limits.fetch_bytes_max)
    } else {
        limits.fetch_bytes_max
    };
    let min_bytes = r.min_bytes.max(0) as usize;
    let wait = Duration::from_millis((r.max_wait_ms.max(0) as u64).min(limits.fetch_wait_ms_max));
    let deadline = tokio::time::Instant::now() + wait;
    let mut opened: Vec<Option<Arc<OpenTopic>>> = Vec::with_capacity(r.topics.len());
    for t in &r.topics {
        opened.push(broker.topic(&t.topic).await.ok().flatten());
    }
    loop {
        let (resp, bytes) = fetch_once(&r, &opened, max_bytes, v);
        let now = tokio::time::Instant::now();
        if bytes >= min_bytes || now >= deadline {
            return resp;
        }
        // Wait for the next append to any fetched partition (or the deadline), then read again.
        let mut waits = Vec::new();
        for (t, open) in r.topics.iter().zip(&opened) {
            let Some(open) = open else { continue };
            for p in &t.partitions {
                if p.partition >= 0 && p.fetch_offset >= 0 {
                    let open = open.clone();
                    let part = p.partition as u32;
                    waits.push(Box::pin(async move {
                        if let Ok(partition) = open.topic.partition(part) {
                            partition.wait_for(partition.end_offset()).await;
                        } else {
                            std::future::pending::<()>().await;
                        }
                    }));
                }
            }
        }
        if waits.is_empty() {
            tokio::time::sleep_until(deadline).await;
            continue;
        }
        let any = futures_select_any(waits);
        let _ = tokio::time::timeout_at(deadline, any).await;
    }
}

/// Resolves when the first of `futs` does.
async fn futures_select_any<F: std::future::Future<Output = ()> + Unpin>(mut futs: Vec<F>) {
    std::future::poll_fn(|cx| {
        for f in futs.iter_mut() {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

fn fetch_once(r: &FetchRequest, opened: &[Option<Arc<OpenTopic>>], max_bytes: usize, v: i16) -> (FetchResponse, usize) {
    let mut total = 0usize;
    let mut responses = Vec::with_capacity(r.topics.len());
    for (t, open) in r.topics.iter().zip(opened) {
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let mut pd = PartitionData::default().with_partition_index(p.partition).with_high_watermark(-1);
            if v >= 4 {
                pd.last_stable_offset = -1;
                pd.aborted_transactions = Some(Vec::new());
            }
            if v >= 5 {
                pd.log_start_offset = -1;
            }
            let part = open
                .as_ref()
                .and_then(|o| (p.partition >= 0).then(|| o.topic.partition(p.partition as u32).ok()).flatten());
            let Some(part) = part else {
                parts.push(pd.with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION).with_records(Some(Bytes::new())));
                continue;
            };
            let end = part.end_offset() as i64;
            pd.high_watermark = end;
            if v >= 4 {
                pd.last_stable_offset = end;
            }
            if v >= 5 {
                pd.log_start_offset = part.start_offset() as i64;
            }
            if p.fetch_offset < 0 {
                parts.push(pd.with_error_code(code::OFFSET_OUT_OF_RANGE).with_records(Some(Bytes::new())));
                continue;
            }
            // The first partition with data always gets at least one batch (KIP-74).
            let room = max_bytes.saturating_sub(total);
            let want = (p.partition_max_bytes.max(0) as usize).min(room);
            if want == 0 && total > 0 {
                parts.push(pd.with_records(Some(Bytes::new())));
                continue;
            }
            match part.read(p.fetch_offset as u64, want.max(1)) {
                Ok(batches) => {
                    let n: usize = batches.iter().map(|b| b.bytes().len()).sum();
                    let records = if batches.len() == 1 {
                        batches[0].bytes().clone()
                    } else {
                        let mut buf = BytesMut::with_capacity(n);
                        for b in &batches {
                            buf.extend_from_slice(b.bytes());
                        }
                        buf.freeze()
                    };
                    total += n;
                    parts.push(pd.with_records(Some(records)));
                }
                Err(e) => {
                    let c = log_error_code(&e);
                    if c == code::KAFKA_STORAGE_ERROR {
                        tracing::error!("fetch failed: {e}");
                    }
                    parts.push(pd.with_error_code(c).with_records(Some(Bytes::new())));
                }
            }
        }
        responses.push(FetchableTopicResponse::default().with_topic(t.topic.clone()).with_partitions(parts));
    }
    (FetchResponse::default().with_responses(responses), total)
}

async fn list_offsets(broker: &Broker, r: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(r.topics.len());
    for t in r.topics {
        let open = broker.topic(&t.name).await.ok().flatten();
        let parts = t
            .partitions
            .into_iter()
            .map(|p| {
                let resp = ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
                let part = open.as_ref().and_then(|o| {
                    (p.partition_index >= 0).then(|| o.topic.partition(p.partition_index as u32).ok()).flatten()
                });
                let Some(part) = part else {
                    return resp.with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION).with_offset(-1).with_timestamp(-1);
                };
                match p.timestamp {
                    -2 => resp.with_offset(part.start_offset() as i64).with_timestamp(-1),
                    -1 => resp.with_offset(part.end_offset() as i64).with_timestamp(-1),
                    ts if ts >= 0 => match part.offset_for_time(ts) {
                        Ok(Some(o)) => {
                            let found = part
                                .read_records(o, 64 * 1024)
                                .ok()
                                .and_then(|rs| rs.into_iter().find(|r| r.offset == o));
                            resp.with_offset(o as i64).with_timestamp(found.map_or(ts, |r| r.timestamp_ms))
                        }
                        Ok(None) => resp.with_offset(-1).with_timestamp(-1),
                        Err(e) => resp.with_error_code(log_error_code(&e)).with_offset(-1).with_timestamp(-1),
                    },
                    _ => resp.with_error_code(code::UNSUPPORTED_VERSION).with_offset(-1).with_timestamp(-1),
                }
            })
            .map(|mut p| {
                if p.error_code == code::NONE {
                    p.leader_epoch = -1;
                }
                p
            })
            .collect();
        topics.push(ListOffsetsTopicResponse::default().with_name(t.name).with_partitions(parts));
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// A topic configuration from CreateTopics' partitions and configs.
fn topic_config(
    num_partitions: i32,
    configs: &[create_topics_request::CreatableTopicConfig],
) -> Result<TopicConfig, (i16, String)> {
    let mut c = TopicConfig::default();
    if num_partitions > 0 {
        c.partitions = num_partitions as u32;
    } else if num_partitions != -1 {
        return Err((code::INVALID_PARTITIONS, format!("{num_partitions} partitions")));
    }
    for kv in configs {
        let Some(value) = kv.value.as_ref() else { continue };
        let bad = || (code::INVALID_CONFIG, format!("bad value `{value}` for {}", kv.name.as_str()));
        let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
        match kv.name.as_str() {
            "retention.ms" => c.retention_ms = Some(num(value)?).filter(|&r| r >= 0),
            "retention.bytes" => c.retention_bytes = Some(num(value)?).filter(|&r| r >= 0).map(|r| r as u64),
            "segment.bytes" => c.segment_bytes = num(value)?.max(0) as u64,
            "segment.ms" => c.segment_ms = num(value)?,
            // Accepted and meaningless on one node, or handled per request.
            "cleanup.policy" if value.as_str() == "delete" => {}
            "min.insync.replicas" | "compression.type" | "message.timestamp.type" | "max.message.bytes" => {}
            other => return Err((code::INVALID_CONFIG, format!("unsupported topic config `{other}`"))),
        }
    }
    c.validate().map_err(|e| (code::INVALID_CONFIG, e.to_string()))?;
    Ok(c)
}

async fn create_topics(broker: &Broker, r: CreateTopicsRequest, v: i16) -> CreateTopicsResponse {
    let mut out = Vec::with_capacity(r.topics.len());
    for t in r.topics {
        let name = t.name.to_string();
        let mut res = CreatableTopicResult::default().with_name(t.name.clone());
        if v >= 5 {
            res.num_partitions = -1;
            res.replication_factor = -1;
        }
        let result = if !(t.replication_factor == -1 || t.replication_factor == 1) {
            Err((code::INVALID_REPLICATION_FACTOR, "a single node keeps one replica".to_string()))
        } else if !t.assignments.is_empty() {
            Err((code::INVALID_PARTITIONS, "manual replica assignments are not supported".to_string()))
        } else {
            match topic_config(t.num_partitions, &t.configs) {
                Err(e) => Err(e),
                Ok(c) if r.validate_only => match flow_runtime::log::topic::validate_name(&name) {
                    Err(reason) => Err((code::INVALID_TOPIC_EXCEPTION, reason.to_string())),
                    Ok(()) if broker.dir.topic_config(&name).is_ok() => {
                        Err((code::TOPIC_ALREADY_EXISTS, format!("topic `{name}` already exists")))
                    }
                    Ok(()) => Ok(c),
                },
                Ok(c) => {
                    let _admin = broker.admin.lock().await;
                    let dir = broker.dir.clone();
                    let (n, cc) = (name.clone(), c.clone());
                    match blocking(move || dir.create_topic(&n, &cc)).await {
                        Ok(Ok(())) => Ok(c),
                        Ok(Err(e)) => Err((log_error_code(&e), e.to_string())),
                        Err(e) => Err((code::UNKNOWN_SERVER_ERROR, e.to_string())),
                    }
                }
            }
        };
        match result {
            Ok(c) => {
                if v >= 5 {
                    res.num_partitions = c.partitions as i32;
                    res.replication_factor = 1;
                }
            }
            Err((c, m)) => {
                res.error_code = c;
                if v >= 1 {
                    res.error_message = Some(str_bytes(&m));
                }
            }
        }
        out.push(res);
    }
    CreateTopicsResponse::default().with_topics(out)
}

async fn delete_topics(broker: &Broker, r: DeleteTopicsRequest, v: i16) -> DeleteTopicsResponse {
    let names: Vec<TopicName> =
        if v >= 6 { r.topics.into_iter().filter_map(|t| t.name).collect() } else { r.topic_names };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let n = name.to_string();
        let _admin = broker.admin.lock().await;
        // Close our handle (and its lock) first; in-flight fetches may hold it briefly.
        let open = lock(&broker.topics).remove(&n);
        let mut result = Err(LogError::UnknownTopic(n.clone()));
        for _ in 0..50 {
            if open.as_ref().is_some_and(|o| Arc::strong_count(o) > 1) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let dir = broker.dir.clone();
            let nn = n.clone();
            result = blocking(move || dir.delete_topic(&nn)).await.and_then(|r| r);
            if !matches!(result, Err(LogError::Locked(_))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(open);
        let mut res = DeletableTopicResult::default().with_name(Some(name));
        if let Err(e) = result {
            res.error_code = log_error_code(&e);
            if v >= 5 {
                res.error_message = Some(str_bytes(&e.to_string()));
            }
        }
        out.push(res);
    }
    DeleteTopicsResponse::default().with_responses(out)
}

fn find_coordinator(r: FindCoordinatorRequest, v: i16, local: SocketAddr) -> FindCoordinatorResponse {
    let host = str_bytes(&local.ip().to_string());
    let port = i32::from(local.port());
    if v >= 4 {
        let coordinators = r
            .coordinator_keys
            .into_iter()
            .map(|k| {
                CoordinatorEntry::default()
                    .with_key(k)
                    .with_node_id(BrokerId(NODE_ID))
                    .with_host(host.clone())
                    .with_port(port)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    FindCoordinatorResponse::default().with_node_id(BrokerId(NODE_ID)).with_host(host).with_port(port)
}

async fn join_group(broker: &Broker, r: JoinGroupRequest, client_id: String) -> JoinGroupResponse {
    let req = JoinRequest {
        member_id: r.member_id.to_string(),
        group_instance_id: r.group_instance_id.as_ref().map(|s| s.to_string()),
        client_id,
        session_timeout_ms: r.session_timeout_ms,
        rebalance_timeout_ms: r.rebalance_timeout_ms,
        protocol_type: r.protocol_type.to_string(),
        protocols: r.protocols.iter().map(|p| (p.name.to_string(), p.metadata.clone())).collect(),
    };
    let reply = lock(&broker.groups).join(&r.group_id, req, Instant::now());
    let out = match reply {
        Reply::Now(o) => o,
        Reply::Later(rx) => match rx.await {
            Ok(o) => o,
            Err(_) => {
                return JoinGroupResponse::default()
                    .with_error_code(group::code::UNKNOWN_MEMBER_ID)
                    .with_generation_id(-1)
                    .with_member_id(r.member_id)
            }
        },
    };
    JoinGroupResponse::default()
        .with_error_code(out.error)
        .with_generation_id(out.generation)
        .with_protocol_type(out.protocol_type.map(|s| str_bytes(&s)))
        .with_protocol_name(Some(str_bytes(&out.protocol_name.unwrap_or_default())))
        .with_leader(str_bytes(&out.leader))
        .with_member_id(str_bytes(&out.member_id))
        .with_members(
            out.members
                .into_iter()
                .map(|(id, inst, meta)| {
                    join_group_response::JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(&id))
                        .with_group_instance_id(inst.map(|s| str_bytes(&s)))
                        .with_metadata(meta)
                })
                .collect(),
        )
}

async fn sync_group(broker: &Broker, r: SyncGroupRequest) -> SyncGroupResponse {
    let assignments = r.assignments.iter().map(|a| (a.member_id.to_string(), a.assignment.clone())).collect();
    let reply = lock(&broker.groups).sync(&r.group_id, r.generation_id, &r.member_id, assignments, Instant::now());
    let out = match reply {
        Reply::Now(o) => o,
        Reply::Later(rx) => match rx.await {
            Ok(o) => o,
            Err(_) => return SyncGroupResponse::default().with_error_code(group::code::UNKNOWN_MEMBER_ID),
        },
    };
    SyncGroupResponse::default()
        .with_error_code(out.error)
        .with_protocol_type(out.protocol_type.map(|s| str_bytes(&s)))
        .with_protocol_name(out.protocol_name.map(|s| str_bytes(&s)))
        .with_assignment(out.assignment)
}

fn leave_group(broker: &Broker, r: LeaveGroupRequest, v: i16) -> LeaveGroupResponse {
    let now = Instant::now();
    if v >= 3 {
        let ids: Vec<String> = r.members.iter().map(|m| m.member_id.to_string()).collect();
        let codes = lock(&broker.groups).leave(&r.group_id, &ids, now);
        let members = r
            .members
            .into_iter()
            .zip(codes)
            .map(|(m, c)| {
                leave_group_response::MemberResponse::default()
                    .with_member_id(m.member_id)
                    .with_group_instance_id(m.group_instance_id)
                    .with_error_code(c)
            })
            .collect();
        return LeaveGroupResponse::default().with_members(members);
    }
    let c = lock(&broker.groups).leave(&r.group_id, &[r.member_id.to_string()], now);
    LeaveGroupResponse::default().with_error_code(c.first().copied().unwrap_or(code::UNKNOWN_MEMBER_ID))
}

async fn offset_commit(broker: &Broker, r: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = r.group_id.to_string();
    let check = lock(&broker.groups).check_commit(&group, r.generation_id_or_member_epoch, &r.member_id);
    let mut topics = Vec::with_capacity(r.topics.len());
    for t in r.topics {
        let name = t.name.to_string();
        let partitions_of = broker.dir.topic_config(&name).map(|c| c.partitions).ok();
        let mut offsets = BTreeMap::new();
        let mut codes: Vec<(i32, i16)> = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let c = if check != code::NONE {
                check
            } else if !partitions_of.is_some_and(|n| p.partition_index >= 0 && (p.partition_index as u32) < n) {
                code::UNKNOWN_TOPIC_OR_PARTITION
            } else if p.committed_offset < 0 {
                code::OFFSET_OUT_OF_RANGE
            } else {
                offsets.insert(p.partition_index as u32, p.committed_offset as u64);
                code::NONE
            };
            codes.push((p.partition_index, c));
        }
        if !offsets.is_empty() {
            let store = broker.dir.groups();
            let (g, n) = (group.clone(), name.clone());
            let stored = blocking(move || store.commit(&g, &n, &offsets)).await.and_then(|r| r);
            if let Err(e) = stored {
                let c = match e {
                    LogError::InvalidGroupName { .. } => group::code::INVALID_GROUP_ID,
                    other => {
                        tracing::error!(group = %group, "committing offsets failed: {other}");
                        code::KAFKA_STORAGE_ERROR
                    }
                };
                for pc in codes.iter_mut().filter(|(_, x)| *x == code::NONE) {
                    pc.1 = c;
                }
            }
        }
        let partitions = codes
            .into_iter()
            .map(|(i, c)| {
                offset_commit_response::OffsetCommitResponsePartition::default()
                    .with_partition_index(i)
                    .with_error_code(c)
            })
            .collect();
        topics.push(
            offset_commit_response::OffsetCommitResponseTopic::default().with_name(t.name).with_partitions(partitions),
        );
    }
    OffsetCommitResponse::default().with_topics(topics)
}

async fn offset_fetch(broker: &Broker, r: OffsetFetchRequest, v: i16) -> OffsetFetchResponse {
    let group = r.group_id.to_string();
    // Null topics (v2+): every topic the group has committed offsets for.
    let wanted: Vec<(String, Option<Vec<i32>>)> = match r.topics {
        Some(ts) => ts.into_iter().map(|t| (t.name.to_string(), Some(t.partition_indexes))).collect(),
        None => broker.topic_names().into_iter().map(|n| (n, None)).collect(),
    };
    let store = broker.dir.groups();
    let g = group.clone();
    let all_null = wanted.iter().all(|(_, p)| p.is_none());
    let looked_up = blocking(move || {
        wanted
            .into_iter()
            .map(|(name, parts)| {
                let committed = store.committed(&g, &name);
                (name, parts, committed)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let mut top_error = code::NONE;
    let mut topics = Vec::new();
    for (name, parts, committed) in looked_up {
        let committed = match committed {
            Ok(c) => c,
            Err(LogError::InvalidGroupName { .. }) => {
                top_error = group::code::INVALID_GROUP_ID;
                BTreeMap::new()
            }
            Err(e) => {
                tracing::error!(group = %group, "reading committed offsets failed: {e}");
                top_error = code::KAFKA_STORAGE_ERROR;
                BTreeMap::new()
            }
        };
        if all_null && committed.is_empty() {
            continue;
        }
        let indexes: Vec<i32> = match parts {
            Some(p) => p,
            None => committed.keys().map(|&p| p as i32).collect(),
        };
        let partitions = indexes
            .into_iter()
            .map(|i| {
                let off = (i >= 0).then(|| committed.get(&(i as u32)).copied()).flatten();
                offset_fetch_response::OffsetFetchResponsePartition::default()
                    .with_partition_index(i)
                    .with_committed_offset(off.map_or(-1, |o| o as i64))
                    .with_metadata(Some(StrBytes::default()))
            })
            .collect();
        topics.push(
            offset_fetch_response::OffsetFetchResponseTopic::default()
                .with_name(TopicName(str_bytes(&name)))
                .with_partitions(partitions),
        );
    }
    let mut resp = OffsetFetchResponse::default().with_topics(topics);
    if v >= 2 {
        resp.error_code = top_error;
    }
    resp
}

fn init_producer_id(broker: &Broker, r: InitProducerIdRequest) -> InitProducerIdResponse {
    if r.transactional_id.is_some() {
        // Transactions are not supported; librdkafka sees no EndTxn in ApiVersions anyway.
        return InitProducerIdResponse::default()
            .with_error_code(code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    InitProducerIdResponse::default().with_producer_id(ProducerId(broker.allocate_producer_id())).with_producer_epoch(0)
}

fn describe_groups(broker: &Broker, r: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let coordinator = lock(&broker.groups);
    let groups = r
        .groups
        .into_iter()
        .map(|g| {
            let d = describe_groups_response::DescribedGroup::default().with_group_id(g.clone());
            match coordinator.describe(&g) {
                None => d.with_group_state(str_bytes("Dead")),
                Some(info) => d
                    .with_group_state(str_bytes(state_name(info.state)))
                    .with_protocol_type(str_bytes(&info.protocol_type))
                    .with_protocol_data(str_bytes(&info.protocol_name))
                    .with_members(
                        info.members
                            .into_iter()
                            .map(|(id, inst, meta, assignment)| {
                                describe_groups_response::DescribedGroupMember::default()
                                    .with_member_id(str_bytes(&id))
                                    .with_group_instance_id(inst.map(|s| str_bytes(&s)))
                                    .with_member_metadata(meta)
                                    .with_member_assignment(assignment)
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

fn state_name(s: group::GroupState) -> &'static str {
    match s {
        group::GroupState::Empty => "Empty",
        group::GroupState::PreparingRebalance => "PreparingRebalance",
        group::GroupState::CompletingRebalance => "CompletingRebalance",
        group::GroupState::Stable => "Stable",
    }
}

fn list_groups(broker: &Broker) -> ListGroupsResponse {
    let groups = lock(&broker.groups)
        .list()
        .into_iter()
        .map(|(name, _, ptype)| {
            list_groups_response::ListedGroup::default()
                .with_group_id(GroupId(str_bytes(&name)))
                .with_protocol_type(str_bytes(&ptype))
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}
