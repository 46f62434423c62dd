//! `flowc check` of a generated 10,000-line program: parse, resolve, type-check and
//! plan. Target: under 100 ms median in a release build on the 2-core dev machine.

use criterion::{criterion_group, criterion_main, Criterion};
use std::fmt::Write as _;

/// A realistic program of about `lines` lines: schemas, consts, fns, topics, sources,
/// sinks, and pipelines with filters, projections, windows, joins and patterns.
pub fn generate(lines: usize) -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.lines().count() < lines {
        let _ = write!(
            s,
            r#"// module {i}
schema Txn{i} {{
    id: string,
    account: string,
    merchant: string,
    amount: decimal(12, 2),
    ts: timestamp,
    status: string,
}}

schema Alert{i} {{
    account: string,
    window_end: timestamp,
    total: decimal(38, 2),
    n: int,
    reason: string,
}}

const LIMIT{i} = 10_000.00
fn fee{i}(amount: decimal(12, 2)) -> decimal(15, 5) = amount * 0.015

topic txns{i}: Txn{i} {{ partitions: 4, key: account, retention: 7d }}
topic alerts{i}: Alert{i} {{ partitions: 1 }}
source bank{i}: Txn{i} = file("data/txns{i}.jsonl", format: json)
    event_time ts watermark 5s
sink out{i} = stdout()

pipeline ingest{i} = from bank{i}
    | where amount > 0.0 and status in ("approved", "declined")
    -> txns{i}

pipeline spikes{i} =
    from txns{i}
    | where amount > 0.0
    | select {{ *, fee: fee{i}(amount), big: amount > LIMIT{i} / 10 }}
    | key_by account
    | window tumbling(1m) allowed_lateness 30s
    | aggregate {{ total: sum(amount), n: count(), biggest: max(amount) }}
    | where total > LIMIT{i} or n > 20
    | select {{ account, window_end, total, n,
               reason: if n > 20 then "velocity" else case when total > LIMIT{i} * 2 then "huge" else "amount" end }}
    -> alerts{i}

pipeline testing{i} =
    from txns{i}
    | key_by account
    | pattern {{ d: status == "declined" times 3.., a: status == "approved" }} within 5m
      measures {{ n: count(d), amount: a.amount }}
    -> out{i}
"#
        );
        i += 1;
    }
    s
}

fn bench(c: &mut Criterion) {
    let text = generate(10_000);
    let check = flow_compiler::compile_str("bench.flow", &text);
    assert!(!check.has_errors(), "the generated program must be valid: {:?}", check.diagnostics.first());
    let mut g = c.benchmark_group("front_end");
    g.sample_size(20);
    g.bench_function("check_10k_lines", |b| b.iter(|| flow_compiler::compile_str("bench.flow", &text)));
    g.bench_function("check_and_plan_10k_lines", |b| {
        b.iter(|| {
            let c = flow_compiler::compile_str("bench.flow", &text);
            c.program.as_ref().map(|p| flow_compiler::plan::plan(p).nodes.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
