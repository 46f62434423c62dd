//! `flowc bench kafka`: load drivers that speak the Kafka protocol to a broker with
//! almost no client cost, so that what they measure is the broker.
//!
//! Real clients (librdkafka through kcat or confluent-kafka) spend 1.8-2.4 s of CPU per
//! million 100-byte records on their own side, several times what `flowc serve`
//! spends; on a 2-core machine they, not the broker, bound the produce figure
//! (docs/kafka.md, "Performance"). These drivers encode every record batch once, before
//! the clock starts, and then only write frames and read answers, as a producer with
//! its batches ready would: `max.in.flight` requests outstanding per connection,
//! `acks=all`, idempotent sequences, one producer id per connection. The fetch driver
//! reads a partition from its start to its end with Fetch requests and walks the batch
//! headers of each answer to count records and find the next offset.
//!
//! Blocking sockets on plain threads: the drivers must not share the broker's tokio
//! runtime, whose cost is what is measured.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, FetchRequest, FetchResponse, InitProducerIdRequest,
    InitProducerIdResponse, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{encode_request_header_into_buffer, Decodable, Encodable, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

/// The Produce version the driver sends (librdkafka 2.x sends 7 to brokers without
/// flexible produce).
const PRODUCE_VERSION: i16 = 7;
const FETCH_VERSION: i16 = 11;

/// What a produce run sends.
#[derive(Debug, Clone)]
pub struct ProduceLoad {
    /// Records in all (rounded down to whole batches per connection, at least one each).
    pub records: u64,
    /// Bytes of each record's value (no key).
    pub record_bytes: usize,
    /// Records per batch (one batch per Produce request).
    pub batch_records: usize,
    /// Connections, each its own idempotent producer, all to partition 0.
    pub connections: usize,
    /// Requests outstanding per connection (librdkafka's `max.in.flight` for idempotence is 5).
    pub in_flight: usize,
}

impl Default for ProduceLoad {
    fn default() -> ProduceLoad {
        ProduceLoad { records: 2_000_000, record_bytes: 100, batch_records: 1000, connections: 4, in_flight: 5 }
    }
}

/// What a run moved and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub records: u64,
    /// Bytes of the record batches (as stored).
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Rate {
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
}

/// One connection speaking Kafka frames.
struct Conn {
    stream: TcpStream,
    correlation: i32,
}

impl Conn {
    fn open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
        Ok(Conn { stream, correlation: 0 })
    }

    /// A request frame (size prefix included).
    fn frame<R: Encodable>(&mut self, key: ApiKey, version: i16, body: &R) -> Result<Bytes, String> {
        self.correlation += 1;
        let h = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("flowc-bench")));
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0; 4]);
        encode_request_header_into_buffer(&mut buf, &h).map_err(|e| e.to_string())?;
        body.encode(&mut buf, version).map_err(|e| e.to_string())?;
        let size = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&size.to_be_bytes());
        Ok(buf.freeze())
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), String> {
        self.stream.write_all(frame).map_err(|e| format!("write failed: {e}"))
    }

    /// The next response's body (after its header).
    fn recv<R: Decodable>(&mut self, key: ApiKey, version: i16) -> Result<R, String> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).map_err(|e| format!("read failed: {e}"))?;
        let mut body = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
        self.stream.read_exact(&mut body).map_err(|e| format!("read failed: {e}"))?;
        let mut buf = Bytes::from(body);
        ResponseHeader::decode(&mut buf, key.response_header_version(version)).map_err(|e| e.to_string())?;
        R::decode(&mut buf, version).map_err(|e| format!("undecodable {key:?} response: {e}"))
    }

    fn call<Q: Encodable, R: Decodable>(&mut self, key: ApiKey, version: i16, body: &Q) -> Result<R, String> {
        let f = self.frame(key, version, body)?;
        self.send(&f)?;
        self.recv(key, version)
    }
}

/// Create `topic` with `partitions` partitions and topic `configs` such as
/// `("retention.bytes", "536870912")` (it must not exist).
pub fn create_topic(addr: SocketAddr, topic: &str, partitions: i32, configs: &[(&str, &str)]) -> Result<(), String> {
    let mut c = Conn::open(addr)?;
    let configs = configs
        .iter()
        .map(|(k, v)| {
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_string(k.to_string()))
                .with_value(Some(StrBytes::from_string(v.to_string())))
        })
        .collect();
    let req = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_num_partitions(partitions)
            .with_replication_factor(1)
            .with_configs(configs)])
        .with_timeout_ms(10_000);
    let resp: CreateTopicsResponse = c.call(ApiKey::CreateTopics, 5, &req)?;
    match resp.topics.first() {
        Some(t) if t.error_code == 0 => Ok(()),
        Some(t) => Err(format!("cannot create {topic}: error {} {:?}", t.error_code, t.error_message)),
        None => Err(format!("cannot create {topic}: empty answer")),
    }
}

/// The record batches one producer sends, encoded before the clock starts.
fn encode_batches(load: &ProduceLoad, producer_id: i64, epoch: i16, batches: u64) -> Result<Vec<Bytes>, String> {
    (0..batches)
        .map(|b| {
            let base_sequence = (b * load.batch_records as u64) as i32;
            record_batch(load.batch_records, load.record_bytes, producer_id, epoch, base_sequence)
        })
        .collect()
}

/// One v2 record batch of `records` keyless records of `record_bytes` bytes, stamped
/// now (older timestamps would fall to the topic's retention), from producer
/// `producer_id` (-1: not idempotent) with sequences from `base_sequence`.
pub fn record_batch(
    records: usize,
    record_bytes: usize,
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
) -> Result<Bytes, String> {
    let value = Bytes::from(vec![b'x'; record_bytes]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let sequence = |i: usize| if producer_id < 0 { -1 } else { base_sequence.wrapping_add(i as i32) };
    let records: Vec<Record> = (0..records)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: sequence(i),
            timestamp: now,
            key: None,
            value: Some(value.clone()),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression: Compression::None })
        .map_err(|e| e.to_string())?;
    Ok(buf.freeze())
}

/// Produce `load` to partition 0 of `topic` with acks=all and return the rate.
pub fn produce(addr: SocketAddr, topic: &str, load: &ProduceLoad) -> Result<Rate, String> {
    let connections = load.connections.max(1);
    let batches_each = (load.records / load.batch_records.max(1) as u64 / connections as u64).max(1);
    // Set up every connection and its frames first.
    let mut prepared = Vec::with_capacity(connections);
    let mut bytes = 0u64;
    for _ in 0..connections {
        let mut c = Conn::open(addr)?;
        let pid: InitProducerIdResponse = c.call(
            ApiKey::InitProducerId,
            0,
            &InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000)
                .with_producer_id((-1).into()),
        )?;
        if pid.error_code != 0 {
            return Err(format!("InitProducerId failed: error {}", pid.error_code));
        }
        let batches = encode_batches(load, pid.producer_id.0, pid.producer_epoch, batches_each)?;
        let mut frames = Vec::with_capacity(batches.len());
        for records in batches {
            bytes += records.len() as u64;
            let req = ProduceRequest::default().with_acks(-1).with_timeout_ms(30_000).with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records))]),
            ]);
            frames.push(c.frame(ApiKey::Produce, PRODUCE_VERSION, &req)?);
        }
        prepared.push((c, frames));
    }
    let in_flight = load.in_flight.max(1);
    let start = Instant::now();
    std::thread::scope(|s| -> Result<(), String> {
        let handles: Vec<_> = prepared
            .into_iter()
            .map(|(mut c, frames)| {
                s.spawn(move || -> Result<(), String> {
                    let (mut sent, mut answered) = (0usize, 0usize);
                    while answered < frames.len() {
                        while sent < frames.len() && sent - answered < in_flight {
                            c.send(&frames[sent])?;
                            sent += 1;
                        }
                        let resp: ProduceResponse = c.recv(ApiKey::Produce, PRODUCE_VERSION)?;
                        for t in &resp.responses {
                            for p in &t.partition_responses {
                                if p.error_code != 0 {
                                    return Err(format!(
                                        "produce failed: error {} {:?}",
                                        p.error_code, p.error_message
                                    ));
                                }
                            }
                        }
                        answered += 1;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "a producer thread panicked".to_string())??;
        }
        Ok(())
    })?;
    let elapsed = start.elapsed();
    let records = batches_each * connections as u64 * load.batch_records as u64;
    Ok(Rate { records, bytes, elapsed })
}

/// Fetch partition 0 of `topic` from offset 0 until `end`, `max_bytes` per request.
pub fn fetch(addr: SocketAddr, topic: &str, end: u64, max_bytes: i32) -> Result<Rate, String> {
    let mut c = Conn::open(addr)?;
    let (mut offset, mut records, mut bytes) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let mut empty = 0;
    while offset < end {
        // Each empty answer is a long-poll of up to 500 ms: 20 in a row is a stall.
        if empty >= 20 {
            return Err(format!("fetch: no records past offset {offset} of {end} for 10 s"));
        }
        let req = FetchRequest::default()
            .with_replica_id((-1).into())
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(offset as i64)
                    .with_partition_max_bytes(max_bytes)])]);
        let resp: FetchResponse = c.call(ApiKey::Fetch, FETCH_VERSION, &req)?;
        let part = resp
            .responses
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or_else(|| "fetch: an answer without the partition".to_string())?;
        if part.error_code != 0 {
            return Err(format!("fetch at offset {offset} (end {end}) failed: error {}", part.error_code));
        }
        let Some(mut data) = part.records.clone().filter(|d| !d.is_empty()) else {
            empty += 1;
            continue;
        };
        empty = 0;
        bytes += data.len() as u64;
        // Walk the batch headers: base offset (8), length (4), then the batch; the last
        // offset delta is at 23 from the batch's start.
        while data.len() >= 61 {
            let base = (&data[0..8]).get_i64() as u64;
            let len = (&data[8..12]).get_i32().max(0) as usize;
            if data.len() < 12 + len {
                break; // a partial batch at the end of a full answer
            }
            let last_delta = (&data[23..27]).get_i32().max(0) as u64;
            let last = base + last_delta;
            if last >= offset {
                records += last + 1 - offset.max(base);
                offset = last + 1;
            }
            data.advance(12 + len);
        }
    }
    Ok(Rate { records, bytes, elapsed: start.elapsed() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The drivers against a real broker: what they produce is all there, in order, and
    /// the fetch driver counts exactly the records produced.
    #[test]
    fn produce_then_fetch_counts_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let handle = rt.block_on(crate::start(crate::Config::new(dir.path(), "127.0.0.1:0".parse().unwrap()))).unwrap();
        let addr = handle.local_addr();
        create_topic(addr, "b", 1, &[("retention.ms", "-1")]).unwrap();
        let load = ProduceLoad { records: 12_000, record_bytes: 10, batch_records: 500, connections: 3, in_flight: 5 };
        let p = produce(addr, "b", &load).unwrap();
        assert_eq!(p.records, 12_000);
        let t = rt.block_on(handle.broker().topic("b")).unwrap().unwrap();
        let part = t.topic.partition(0).unwrap();
        assert_eq!(part.end_offset(), 12_000);
        let f = fetch(addr, "b", 12_000, 64 * 1024).unwrap();
        assert_eq!(f.records, 12_000);
        assert_eq!(f.bytes, p.bytes, "the batches are fetched as they were produced");
        rt.block_on(handle.shutdown());
    }
}
