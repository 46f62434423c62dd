//! Built-in benchmarks of the pipeline hot paths, shared by `flowc bench` and the
//! criterion benches (`runtime/benches/pipeline.rs`).
//!
//! - [`nexmark`]: the Nexmark queries q0 (pass-through), q1 (currency conversion), q2
//!   (filter) and q14 (a calculation-heavy filter and projection) over the built-in bid
//!   generator, each a real .flow pipeline compiled like `flowc run` compiles it; the
//!   results are dropped (a null sink), so the figure is generator plus fused stage.
//! - [`ingest`]: JSON lines decoded into rows, as the file source decodes them.
//!
//! Both run on the calling thread: one core.

use crate::format;
use crate::generate;
use flow_compiler::exec::stage::{self, StageSpec};
use flow_compiler::ir::{self, Connector};
use flow_types::row::{BatchBuilder, Layout};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The Nexmark bid stream, from the built-in generator.
pub const NEXMARK_BIDS: &str = "schema Bid { auction: int, bidder: int, price: int, channel: string, url: string, date_time: timestamp, extra: string }
source bids: Bid = generator(nexmark, stream: bids)
sink out = stdout(format: json)
";

/// Nexmark queries over bids as .flow pipelines (the meaning of Flink's Nexmark SQL;
/// `0.908` is a decimal literal there and here).
pub const NEXMARK_QUERIES: &[(&str, &str)] = &[
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

/// What one benchmark run did.
#[derive(Clone, Debug)]
pub struct Measured {
    /// Events (or lines) processed and rows produced.
    pub events: u64,
    pub rows_out: u64,
    /// Bytes decoded (ingest only).
    pub bytes: u64,
    pub elapsed: Duration,
}

fn program(src: &str) -> Result<ir::Program, String> {
    let c = flow_compiler::compile_str("bench.flow", src);
    if c.has_errors() {
        return Err(format!("benchmark program does not check: {:?}", c.diagnostics));
    }
    c.program.ok_or_else(|| "no program".to_string())
}

/// A prepared Nexmark query: its generator and its compiled stage.
pub struct Nexmark {
    program: ir::Program,
    layout: Arc<Layout>,
    stage: Option<Box<dyn stage::Stage>>,
}

impl Nexmark {
    /// Compiles query `name` (see [`NEXMARK_QUERIES`]) with the JIT or the interpreter.
    pub fn new(name: &str, jit: bool) -> Result<Nexmark, String> {
        let (_, query) = NEXMARK_QUERIES
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| format!("no Nexmark query `{name}` (there are q0, q1, q2, q14)"))?;
        let program = program(&format!("{NEXMARK_BIDS}{query}"))?;
        let p = &program.pipelines[0];
        let layout = Arc::new(Layout::new(p.input_schema.clone()));
        let spec = StageSpec { input: p.input_schema.clone(), ops: p.ops.clone() };
        let stage = if p.ops.is_empty() {
            None
        } else if jit {
            Some(stage::jit(&spec, &program).map_err(|e| e.to_string())?)
        } else {
            Some(stage::interpreted(&spec, &program).map_err(|e| e.to_string())?)
        };
        Ok(Nexmark { program, layout, stage })
    }

    /// Generates `events` bids and runs them through the query; results are dropped.
    pub fn run(&self, events: u64) -> Result<Measured, String> {
        let Connector::Generator { kind, seed, keys, .. } = &self.program.sources[0].connector else {
            return Err("the bid source is not a generator".into());
        };
        let started = Instant::now();
        let mut rows_out = 0u64;
        let mut error = None;
        generate::generate(*kind, *seed, Some(events as i64), *keys, None, &self.layout, &mut |batch| {
            match &self.stage {
                Some(st) => {
                    let mut out = stage::output_builder(st.as_ref(), &batch);
                    match st.run(&batch, &mut out) {
                        Ok(()) => rows_out += std::hint::black_box(out.finish()).len as u64,
                        Err(e) => {
                            error = Some(e.message);
                            return false;
                        }
                    }
                }
                None => rows_out += std::hint::black_box(batch).len as u64,
            }
            true
        })?;
        if let Some(e) = error {
            return Err(e);
        }
        Ok(Measured { events, rows_out, bytes: 0, elapsed: started.elapsed() })
    }
}

/// JSON lines of `n` generated transactions (the ingest benchmark's input).
pub fn transactions_json(n: u64) -> Result<(Arc<Layout>, String), String> {
    let program = program(
        "schema Txn { id: string, account: string, merchant: string, amount: decimal(12, 2), ts: timestamp, status: string }
source gen: Txn = generator(transactions)",
    )?;
    let layout = Arc::new(Layout::new(program.sources[0].schema.clone()));
    let mut text = String::new();
    generate::generate(ir::GeneratorKind::Transactions, 42, Some(n as i64), None, None, &layout, &mut |b| {
        for i in 0..b.len {
            format::encode_json_row(&b.row(i), &mut text);
            text.push('\n');
        }
        true
    })?;
    Ok((layout, text))
}

/// Decodes every line of `text` into rows of `layout`.
pub fn ingest(layout: &Arc<Layout>, text: &str) -> Result<Measured, String> {
    let started = Instant::now();
    let (mut events, mut rows_out) = (0u64, 0u64);
    let mut b = BatchBuilder::new(layout.clone());
    for line in text.lines() {
        events += 1;
        format::decode_json_row_in(line, layout, &mut b).map_err(|e| format!("line {events}: {e}"))?;
        if b.len() == 4096 {
            rows_out += std::mem::replace(&mut b, BatchBuilder::new(layout.clone())).finish().len as u64;
        }
    }
    rows_out += b.finish().len as u64;
    Ok(Measured { events, rows_out, bytes: text.len() as u64, elapsed: started.elapsed() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_query_compiles_and_runs_the_same_on_both_engines() {
        for (name, _) in NEXMARK_QUERIES {
            let jit = Nexmark::new(name, true).expect("jit").run(20_000).expect("runs");
            let interp = Nexmark::new(name, false).expect("interp").run(20_000).expect("runs");
            assert_eq!(jit.rows_out, interp.rows_out, "{name}");
            assert_eq!(jit.events, 20_000);
        }
        // q2 keeps about 1 bid in 123; q14's price band keeps a fair share.
        let q2 = Nexmark::new("q2", true).expect("q2").run(100_000).expect("runs");
        assert!(q2.rows_out > 300 && q2.rows_out < 2_000, "{}", q2.rows_out);
        let q14 = Nexmark::new("q14", true).expect("q14").run(100_000).expect("runs");
        assert!(q14.rows_out > 10_000 && q14.rows_out < 60_000, "{}", q14.rows_out);
    }

    #[test]
    fn ingest_decodes_every_line() {
        let (layout, text) = transactions_json(10_000).expect("input");
        let m = ingest(&layout, &text).expect("decodes");
        assert_eq!((m.events, m.rows_out), (10_000, 10_000));
    }
}
