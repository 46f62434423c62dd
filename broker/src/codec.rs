//! Frames in, requests out; responses in, frames out. All byte-level work is done by
//! the `kafka-protocol` crate's generated codecs; this module adds what a server needs
//! around them: the API versions this broker answers, the ApiVersions fallback for
//! clients newer than us, and errors (never panics) for any frame.
//!
//! It knows nothing of the log, groups or sockets.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{decode_request_header_from_buffer, Encodable};

/// Kafka's error code for an API version we do not support.
pub const UNSUPPORTED_VERSION: i16 = 35;

/// The APIs this broker answers and the version range of each. Every range lies
/// inside what `kafka-protocol` can decode. Versions that need topic ids (Fetch 13+,
/// Produce 13, Metadata 10+) or the KIP-848 consumer protocol are left out.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 9),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 5),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::InitProducerId, 0, 4),
    // SASL/PLAIN (sasl.rs). Handshake v0 is listed because librdkafka looks for it to
    // enable SASL at all; it then uses v1 and SaslAuthenticate. A client that sends the
    // raw tokens of v0 after the handshake has its connection closed (malformed frame).
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

/// The version range we answer for `key`, if we answer it at all.
pub fn supported_range(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED.iter().find(|(k, _, _)| *k == key).map(|&(_, lo, hi)| (lo, hi))
}

/// The ApiVersions answer: what we support.
pub fn api_versions() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|&(k, lo, hi)| ApiVersion::default().with_api_key(k as i16).with_min_version(lo).with_max_version(hi))
        .collect()
}

/// A decoded frame.
#[derive(Debug)]
pub enum Decoded {
    /// A request we answer (the version is in our supported range).
    Request { header: RequestHeader, api_key: ApiKey, request: Box<RequestKind> },
    /// An ApiVersions request of a version newer than ours: answered with a v0
    /// response carrying UNSUPPORTED_VERSION and our ranges (KIP-511), so the client
    /// can retry with a version we know.
    ApiVersionsTooNew { correlation_id: i32 },
    /// A known API at a version (or of a kind) we do not serve: answered with that
    /// API's response carrying UNSUPPORTED_VERSION where the response can be encoded.
    Unsupported { header: RequestHeader, api_key: ApiKey },
}

/// Why a frame could not be understood; the connection that sent it is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub String);

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Decode one request frame (the bytes after the 4-byte size).
pub fn decode_frame(frame: Bytes) -> Result<Decoded, FrameError> {
    // api key (2), api version (2), correlation id (4): the crate peeks at the first
    // four bytes without checking the length, so check it here.
    if frame.len() < 8 {
        return Err(FrameError(format!("a request of {} bytes is shorter than its header", frame.len())));
    }
    let key_raw = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(key_raw).map_err(|_| FrameError(format!("unknown api key {key_raw}")))?;
    if api_key == ApiKey::ApiVersions {
        if let Some((_, hi)) = supported_range(api_key) {
            if version > hi {
                return Ok(Decoded::ApiVersionsTooNew { correlation_id });
            }
        }
    }
    let known = api_key.valid_versions();
    if version < known.min || version > known.max {
        return Err(FrameError(format!("{api_key:?} version {version} is outside every version we can decode")));
    }
    let mut buf = frame;
    let header = decode_request_header_from_buffer(&mut buf)
        .map_err(|e| FrameError(format!("bad {api_key:?} v{version} request header: {e}")))?;
    match supported_range(api_key) {
        Some((lo, hi)) if (lo..=hi).contains(&version) => {}
        _ => return Ok(Decoded::Unsupported { header, api_key }),
    }
    let request = RequestKind::decode(api_key, &mut buf, version)
        .map_err(|e| FrameError(format!("bad {api_key:?} v{version} request: {e}")))?;
    Ok(Decoded::Request { header, api_key, request: Box::new(request) })
}

/// Encode a response frame: size, header (of the version the API's request version
/// implies), body. An error here is a bug (a field set that the version cannot carry).
pub fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Result<Bytes, FrameError> {
    let mut buf = BytesMut::with_capacity(256);
    buf.extend_from_slice(&[0, 0, 0, 0]);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header
        .encode(&mut buf, api_key.response_header_version(version))
        .map_err(|e| FrameError(format!("encoding the {api_key:?} response header: {e}")))?;
    body.encode(&mut buf, version)
        .map_err(|e| FrameError(format!("encoding a {api_key:?} v{version} response: {e}")))?;
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}

/// The v0 ApiVersions answer for a client asking with a version newer than ours.
pub fn api_versions_too_new(correlation_id: i32) -> Result<Bytes, FrameError> {
    let body = ApiVersionsResponse::default().with_error_code(UNSUPPORTED_VERSION).with_api_keys(api_versions());
    encode_response(ApiKey::ApiVersions, 0, correlation_id, &ResponseKind::ApiVersions(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::{encode_request_header_into_buffer, Decodable, StrBytes};

    pub(crate) fn frame_of(key: ApiKey, version: i16, body: &RequestKind) -> Bytes {
        let mut buf = BytesMut::new();
        let h = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .with_client_id(Some(StrBytes::from_static_str("test")));
        encode_request_header_into_buffer(&mut buf, &h).unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn supported_ranges_are_decodable_by_the_codec() {
        for &(k, lo, hi) in SUPPORTED {
            let v = k.valid_versions();
            assert!(lo >= v.min && hi <= v.max && lo <= hi, "{k:?} {lo}..={hi} outside {v}");
        }
    }

    #[test]
    fn requests_round_trip_through_decode_frame() {
        let f = frame_of(ApiKey::Metadata, 1, &RequestKind::Metadata(MetadataRequest::default()));
        match decode_frame(f).unwrap() {
            Decoded::Request { header, api_key, request } => {
                assert_eq!((header.correlation_id, api_key), (42, ApiKey::Metadata));
                assert!(matches!(*request, RequestKind::Metadata(_)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn newer_api_versions_get_the_v0_fallback() {
        let f = frame_of(ApiKey::ApiVersions, 4, &RequestKind::ApiVersions(ApiVersionsRequest::default()));
        assert!(matches!(decode_frame(f).unwrap(), Decoded::ApiVersionsTooNew { correlation_id: 42 }));
        let out = api_versions_too_new(42).unwrap();
        let mut body = out.slice(8..);
        let r = ApiVersionsResponse::decode(&mut body, 0).unwrap();
        assert_eq!(r.error_code, UNSUPPORTED_VERSION);
        assert_eq!(r.api_keys.len(), SUPPORTED.len());
    }

    #[test]
    fn short_and_unknown_frames_are_errors() {
        assert!(decode_frame(Bytes::from_static(b"\x00\x03")).is_err());
        assert!(decode_frame(Bytes::from_static(b"\x7f\x00\x00\x00\x00\x00\x00\x01")).is_err());
        // Metadata v0 with a topic array claiming 2^31-1 entries and nothing after it.
        assert!(decode_frame(Bytes::from_static(b"\x00\x03\x00\x00\x00\x00\x00\x01\xff\xff\x7f\xff\xff\xff")).is_err());
    }

    #[test]
    fn api_versions_v3_omits_default_tagged_fields() {
        // librdkafka before 2.2 misreads tagged fields sent at their default values.
        let body = ApiVersionsResponse::default().with_api_keys(api_versions());
        let out = encode_response(ApiKey::ApiVersions, 3, 1, &ResponseKind::ApiVersions(body)).unwrap();
        // ... the last byte is the (empty) tagged-field count.
        assert_eq!(out[out.len() - 1], 0);
        assert_eq!(out[out.len() - 5..out.len() - 1], [0, 0, 0, 0], "throttle time 0 precedes it");
    }
}
