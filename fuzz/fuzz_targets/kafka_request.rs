//! Fuzz the Kafka request decoder of `flowc serve`: any frame must decode to a request
//! or an error, never panic or abort (run: `cargo fuzz run kafka_request`). The broker's
//! allocator guard is installed as in `flowc`, so hostile array lengths are reservations,
//! not aborts; libFuzzer's `-rss_limit_mb` still catches memory actually used.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: flow_broker::alloc::GuardedAlloc = flow_broker::alloc::GuardedAlloc;

fuzz_target!(|data: &[u8]| {
    let _ = flow_broker::codec::decode_frame(bytes::Bytes::copy_from_slice(data));
});
