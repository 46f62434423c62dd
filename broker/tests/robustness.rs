//! The broker under hostile input: truncated, garbage and oversized frames close only
//! the connection that sent them; other connections keep being served. And the
//! request decoder never panics on random or mutated frames (proptest).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use flow_broker::codec::decode_frame;
use flow_broker::{Config, Limits};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, MetadataRequest, RequestHeader, RequestKind};
use kafka_protocol::protocol::{encode_request_header_into_buffer, StrBytes};

#[global_allocator]
static ALLOC: flow_broker::alloc::GuardedAlloc = flow_broker::alloc::GuardedAlloc;

fn request(key: ApiKey, version: i16, body: &RequestKind) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let h = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("robustness")));
    encode_request_header_into_buffer(&mut buf, &h).unwrap();
    body.encode(&mut buf, version).unwrap();
    let mut out = (buf.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&buf);
    out
}

fn api_versions() -> Vec<u8> {
    request(ApiKey::ApiVersions, 0, &RequestKind::ApiVersions(ApiVersionsRequest::default()))
}

/// Send `bytes`, then read one response frame; `None` if the server closed the connection.
fn exchange(stream: &mut TcpStream, bytes: &[u8]) -> Option<Vec<u8>> {
    stream.write_all(bytes).ok()?;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(body)
}

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn bad_frames_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut config = Config::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    config.limits = Limits { request_bytes_max: 1 << 20, ..Limits::default() };
    let handle = rt.block_on(flow_broker::start(config)).unwrap();
    let addr = handle.local_addr();

    let mut good = connect(addr);
    let first = exchange(&mut good, &api_versions()).expect("ApiVersions answered");
    assert_eq!(&first[..4], &7i32.to_be_bytes(), "correlation id echoed");

    let metadata = request(ApiKey::Metadata, 1, &RequestKind::Metadata(MetadataRequest::default()));
    let mut hostile: Vec<Vec<u8>> = vec![
        // Garbage: an unknown API key.
        vec![0, 0, 0, 8, 0x7f, 0x7f, 0, 0, 0, 0, 0, 1],
        // Shorter than a request header.
        vec![0, 0, 0, 2, 0, 3],
        // A negative size, and one over the 1 MiB limit.
        vec![0xff, 0xff, 0xff, 0xfe],
        (2i32 << 20).to_be_bytes().to_vec(),
        // Metadata v0 whose topic array claims 2^31-1 entries.
        vec![0, 0, 0, 12, 0, 3, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff],
        // A version no codec knows.
        vec![0, 0, 0, 10, 0, 3, 0x10, 0, 0, 0, 0, 1, 0xff, 0xff],
    ];
    // A well-formed Metadata request cut short (the size says more than is sent).
    let mut cut = metadata.clone();
    cut.truncate(metadata.len() - 3);
    hostile.push(cut);
    // The same with every body byte flipped at once.
    let mut flipped = metadata.clone();
    for b in &mut flipped[8..] {
        *b ^= 0xff;
    }
    hostile.push(flipped);

    for (i, bytes) in hostile.iter().enumerate() {
        let mut bad = connect(addr);
        bad.write_all(bytes).unwrap();
        if i == 6 {
            // The truncated request: the server waits for the rest; hang up on it.
            bad.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let mut rest = Vec::new();
        // The server closes the connection: EOF (or a reset) without a response frame.
        let n = bad.read_to_end(&mut rest).unwrap_or(0);
        assert_eq!(n, 0, "hostile frame {i} got {n} response bytes");
        // ... while the good connection is still served.
        let again = exchange(&mut good, &metadata).unwrap_or_else(|| panic!("served after hostile frame {i}"));
        assert_eq!(&again[..4], &7i32.to_be_bytes());
    }
    // New connections are still accepted too.
    assert!(exchange(&mut connect(addr), &api_versions()).is_some());
    rt.block_on(handle.shutdown());
}

#[test]
fn connections_beyond_the_limit_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut config = Config::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    config.limits.connections_max = 2;
    let handle = rt.block_on(flow_broker::start(config)).unwrap();
    let addr = handle.local_addr();
    let mut a = connect(addr);
    let mut b = connect(addr);
    assert!(exchange(&mut a, &api_versions()).is_some());
    assert!(exchange(&mut b, &api_versions()).is_some());
    let mut c = connect(addr);
    assert!(exchange(&mut c, &api_versions()).is_none(), "a third connection must be refused");
    drop(a);
    // Once one closes, a new one is served again.
    let mut served = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(20));
        if exchange(&mut connect(addr), &api_versions()).is_some() {
            served = true;
            break;
        }
    }
    assert!(served);
    rt.block_on(handle.shutdown());
}

fn valid_frames() -> Vec<Bytes> {
    let strip = |v: Vec<u8>| Bytes::from(v[4..].to_vec());
    vec![
        strip(api_versions()),
        strip(request(ApiKey::ApiVersions, 3, &RequestKind::ApiVersions(ApiVersionsRequest::default()))),
        strip(request(ApiKey::Metadata, 0, &RequestKind::Metadata(MetadataRequest::default()))),
        strip(request(ApiKey::Metadata, 9, &RequestKind::Metadata(MetadataRequest::default()))),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    #[test]
    fn random_frames_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        let _ = decode_frame(Bytes::from(data));
    }

    #[test]
    fn frames_with_a_known_header_and_random_body_never_panic(
        key in proptest::sample::select(vec![0i16, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22]),
        version in 0i16..14,
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
    ) {
        let mut f = Vec::with_capacity(10 + body.len());
        f.extend_from_slice(&key.to_be_bytes());
        f.extend_from_slice(&version.to_be_bytes());
        f.extend_from_slice(&1i32.to_be_bytes());
        f.extend_from_slice(&[0xff, 0xff]);
        f.extend_from_slice(&body);
        let _ = decode_frame(Bytes::from(f));
    }

    #[test]
    fn mutated_valid_frames_never_panic(which in 0usize..4, at in 0usize..64, value in proptest::num::u8::ANY, cut in 0usize..64) {
        let frames = valid_frames();
        let mut f = frames[which % frames.len()].to_vec();
        let i = at % f.len();
        f[i] = value;
        f.truncate(f.len().saturating_sub(cut % 4));
        let _ = decode_frame(Bytes::from(f));
    }
}
