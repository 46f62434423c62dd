//! Hot paths of a running pipeline, on one core:
//!
//! - `nexmark/q0|q1|q2|q14`: the built-in Nexmark bid generator feeding the query's
//!   fused stage (JIT), results dropped (a null sink) — events per second;
//! - `ingest/json_lines`: JSON lines decoded into rows (the file source's work) — bytes
//!   per second.
//!
//! Run with `cargo bench -p flow-runtime --bench pipeline`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flow_compiler::exec::stage::{self, StageSpec};
use flow_compiler::ir::{self, Connector};
use flow_runtime::format;
use flow_runtime::generate;
use flow_types::row::{BatchBuilder, Layout};
use std::hint::black_box;
use std::sync::Arc;

const BID: &str = "schema Bid { auction: int, bidder: int, price: int, channel: string, url: string, date_time: timestamp, extra: string }
source bids: Bid = generator(nexmark, stream: bids)
sink out = stdout(format: json)
";

/// Nexmark queries over bids, as .flow pipelines (Flink's Nexmark SQL, same meaning).
const QUERIES: &[(&str, &str)] = &[
    ("q0", "pipeline q = from bids -> out"),
    ("q1", "pipeline q = from bids | select { auction, bidder, price: 0.908 * price, date_time, extra } -> out"),
    ("q2", "pipeline q = from bids | where auction % 123 == 0 | select { auction, price } -> out"),
    (
        "q14",
        r#"pipeline q = from bids
    | where 0.908 * price > 1000000.0 and 0.908 * price < 50000000.0
    | select { auction, bidder, price: 0.908 * price,
               bid_time_type: if hour(date_time) >= 8 and hour(date_time) <= 18 then "dayTime"
                              else if hour(date_time) <= 6 or hour(date_time) >= 20 then "nightTime"
                              else "otherTime",
               date_time, extra,
               c_counts: length(extra) - length(replace(extra, "c", "")) }
    -> out"#,
    ),
];

fn program(src: &str) -> ir::Program {
    let c = flow_compiler::compile_str("bench.flow", src);
    assert!(!c.has_errors(), "{:?}", c.diagnostics);
    c.program.expect("program")
}

fn nexmark(c: &mut Criterion) {
    const EVENTS: i64 = 1 << 20;
    let mut g = c.benchmark_group("nexmark");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.sample_size(10);
    for (name, query) in QUERIES {
        let program = program(&format!("{BID}{query}"));
        let p = &program.pipelines[0];
        let layout = Arc::new(Layout::new(p.input_schema.clone()));
        let Connector::Generator { kind, seed, keys, .. } = &program.sources[0].connector else {
            unreachable!("a generator")
        };
        let spec = StageSpec { input: p.input_schema.clone(), ops: p.ops.clone() };
        let st = (!p.ops.is_empty()).then(|| stage::jit(&spec, &program).expect("compiles"));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let mut out_rows = 0usize;
                generate::generate(*kind, *seed, Some(EVENTS), *keys, None, &layout, &mut |batch| {
                    match &st {
                        Some(st) => {
                            let mut out = stage::output_builder(st.as_ref(), &batch);
                            st.run(&batch, &mut out).expect("runs");
                            out_rows += black_box(out.finish()).len;
                        }
                        None => out_rows += black_box(batch).len,
                    }
                    true
                })
                .expect("generates");
                out_rows
            })
        });
    }
    g.finish();
}

fn ingest(c: &mut Criterion) {
    // 100,000 transactions as JSON lines, as a file source reads them.
    let program = program(
        "schema Txn { id: string, account: string, merchant: string, amount: decimal(12, 2), ts: timestamp, status: string }
source gen: Txn = generator(transactions, count: 100000)",
    );
    let layout = Arc::new(Layout::new(program.sources[0].schema.clone()));
    let mut text = String::new();
    generate::generate(ir::GeneratorKind::Transactions, 42, Some(100_000), None, None, &layout, &mut |b| {
        for i in 0..b.len {
            format::encode_json_row(&b.row(i), &mut text);
            text.push('\n');
        }
        true
    })
    .expect("generates");
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.sample_size(20);
    g.bench_function("json_lines", |b| {
        b.iter(|| {
            let mut rows = 0;
            let mut builder = BatchBuilder::new(layout.clone());
            for line in text.lines() {
                format::decode_json_row(line, &mut builder).expect("decodes");
                if builder.len() == 4096 {
                    rows += std::mem::replace(&mut builder, BatchBuilder::new(layout.clone())).finish().len;
                }
            }
            rows + builder.finish().len
        })
    });
    g.finish();
}

criterion_group!(benches, nexmark, ingest);
criterion_main!(benches);
