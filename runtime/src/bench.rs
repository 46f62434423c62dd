//! Built-in benchmarks of the pipeline hot paths, shared by `flowc bench` and the
//! criterion benches (`runtime/benches/pipeline.rs`).
//!
//! - [`nexmark`]: the Nexmark queries q0 (pass-through), q1 (currency conversion), q2
//!   (filter) and q14 (a calculation-heavy filter and projection) over the built-in bid
//!   generator, each a real .flow pipeline compiled like `flowc run` compiles it; the
//!   results are dropped (a null sink), so the figure is generator plus fused stage.
//!   q5 (hot items: bids per auction in a 10 s window sliding every 2 s), q11 (user
//!   sessions: bids per bidder in sessions with a 10 s gap) and an event-time q12 (bids
//!   per bidder in 10 s tumbling windows) run the window operator as `flowc run` does:
//!   records stamped with their watermark, the window, its finishing stage.
//! - [`ingest`]: JSON lines decoded into rows, as the file source decodes them.
//! - [`WindowBench`]: a window over 100,000 keys from batches prepared in memory (the
//!   operator alone), with either state backend, and the state's bytes per window.
//!
//! All run on the calling thread: one core.

use crate::format;
use crate::generate;
use crate::run::head::HeadRt;
use crate::run::stamp::{self, Stamper};
use crate::run::window::WindowOp;
use flow_compiler::exec::stage::{self, Stage, StageSpec};
use flow_compiler::ir::{self, OpKind};
use flow_types::row::{Batch, BatchBuilder, Layout};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The Nexmark bid stream, from the built-in generator.
pub const NEXMARK_BIDS: &str = "schema Bid { auction: int, bidder: int, price: int, channel: string, url: string, date_time: timestamp, extra: string }
source bids: Bid = generator(nexmark, stream: bids) event_time date_time watermark 4s
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
    // Nexmark q5's hot-item counts (its max-per-window step needs `top`, not run yet).
    (
        "q5",
        "pipeline q = from bids | key_by auction | window sliding(10s, every: 2s) | aggregate { num: count() } -> out",
    ),
    (
        "q11",
        "pipeline q = from bids | key_by bidder | window session(gap: 10s) | aggregate { bid_count: count() } -> out",
    ),
    ("q12", "pipeline q = from bids | key_by bidder | window tumbling(10s) | aggregate { bid_count: count() } -> out"),
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
    window: Option<Windowed>,
}

/// A pipeline whose window runs as `flowc run` runs it, on one thread: stamping, the
/// stateless operators before the window, the window and its finishing stage.
/// A source of batches: calls its argument with each until it returns false.
type Feed<'a> = dyn FnMut(&mut dyn FnMut(Batch) -> bool) -> Result<(), String> + 'a;

struct Windowed {
    stamped: Arc<Layout>,
    time: ir::EventTime,
    delay: i64,
    before: Option<Box<dyn Stage>>,
    head: HeadRt,
}

fn run_stage(st: &dyn Stage, b: &Batch) -> Result<Batch, String> {
    let mut out = stage::output_builder(st, b);
    st.run(b, &mut out).map_err(|e| e.message)?;
    Ok(out.finish())
}

impl Windowed {
    fn new(program: &ir::Program, jit: bool) -> Result<Option<Windowed>, String> {
        let p = &program.pipelines[0];
        let Some(hi) = p.ops.iter().position(|o| stamp::is_event_time(&o.kind)) else { return Ok(None) };
        let src = &program.sources[0];
        let time = src.event_time.clone().ok_or("the source has no event time")?;
        let ops: Vec<ir::Op> = p.ops[..hi].iter().filter(|o| !matches!(o.kind, OpKind::KeyBy(_))).cloned().collect();
        let before = if ops.is_empty() {
            None
        } else {
            let spec = StageSpec { input: p.input_schema.clone(), ops };
            Some(
                if jit { stage::jit(&spec, program) } else { stage::interpreted(&spec, program) }
                    .map_err(|e| e.to_string())?,
            )
        };
        let input = if hi == 0 { p.input_schema.clone() } else { p.ops[hi - 1].output.clone() };
        let fused: Vec<usize> = (hi + 1..p.ops.len()).collect();
        let head = HeadRt::new(program, p, hi, &fused, &input, jit, None).map_err(|e| e.to_string())?;
        Ok(Some(Windowed {
            stamped: Arc::new(Layout::new(p.input_schema.clone())),
            time,
            delay: src.watermark_ms,
            before,
            head,
        }))
    }

    /// The window operator fed with `feed`'s batches (unstamped, as decoded); returns
    /// the rows out.
    fn run(&self, op: &mut WindowOp, feed: &mut Feed<'_>) -> Result<u64, String> {
        self.run_hooked(op, feed, &mut |_| Ok(()))
    }

    /// [`Windowed::run`], calling `after` after every batch (a checkpoint's snapshot).
    fn run_hooked(
        &self,
        op: &mut WindowOp,
        feed: &mut Feed<'_>,
        after: &mut dyn FnMut(&mut WindowOp) -> Result<(), String>,
    ) -> Result<u64, String> {
        let mut stamper = Stamper::new(&self.stamped, &self.time, self.delay, None, &[0]);
        let mut rows_out = 0u64;
        let mut error = None;
        let mut step = |batch: Batch, op: &mut WindowOp| -> Result<(), String> {
            let b = stamper.stamp(&batch, &self.stamped, 0);
            let b = match &self.before {
                Some(st) => run_stage(st.as_ref(), &b)?,
                None => b,
            };
            let b = match &self.head.pre {
                Some(st) => run_stage(st.as_ref(), &b)?,
                None => b,
            };
            op.process(&b, 0)?;
            if let Some(wm) = stamper.to_send() {
                op.watermark(0, wm)?;
            }
            if let Some(r) = op.take_results() {
                rows_out += std::hint::black_box(run_stage(self.head.finish.as_ref(), &r)?).len as u64;
            }
            after(op)
        };
        feed(&mut |batch| match step(batch, op) {
            Ok(()) => true,
            Err(e) => {
                error = Some(e);
                false
            }
        })?;
        if let Some(e) = error {
            return Err(e);
        }
        op.finish()?;
        if let Some(r) = op.take_results() {
            rows_out += run_stage(self.head.finish.as_ref(), &r)?.len as u64;
        }
        Ok(rows_out)
    }
}

impl Nexmark {
    /// Compiles query `name` (see [`NEXMARK_QUERIES`]) with the JIT or the interpreter.
    pub fn new(name: &str, jit: bool) -> Result<Nexmark, String> {
        let (_, query) = NEXMARK_QUERIES.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            let names: Vec<&str> = NEXMARK_QUERIES.iter().map(|(n, _)| *n).collect();
            format!("no Nexmark query `{name}` (there are {})", names.join(", "))
        })?;
        let program = stamp::stamp_program(&program(&format!("{NEXMARK_BIDS}{query}"))?);
        if let Some(w) = Windowed::new(&program, jit)? {
            let mut rec = (*w.stamped.record).clone();
            rec.fields.pop();
            let layout = Arc::new(Layout::new(Arc::new(rec)));
            return Ok(Nexmark { program, layout, stage: None, window: Some(w) });
        }
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
        Ok(Nexmark { program, layout, stage, window: None })
    }

    /// Generates `events` bids and runs them through the query; results are dropped.
    pub fn run(&self, events: u64) -> Result<Measured, String> {
        let src = &self.program.sources[0];
        let spec = generate::GenSpec::of(&src.connector).ok_or("the bid source is not a generator")?;
        let spec = generate::GenSpec { count: Some(events as i64), rate_per_s: None, ..spec };
        // The fields the query reads, as `flowc run` fills them.
        let p = &self.program.pipelines[0];
        let wanted = crate::run::source::fields_wanted(&self.program, &p.name, &p.input, src);
        let started = Instant::now();
        if let Some(w) = &self.window {
            let mut op = WindowOp::new(w.head.spec.clone(), &w.head.op_input, 1);
            let rows_out =
                w.run(&mut op, &mut |f| generate::generate(spec, &self.layout, wanted.as_deref(), &mut |b| f(b)))?;
            return Ok(Measured { events, rows_out, bytes: 0, elapsed: started.elapsed() });
        }
        let mut rows_out = 0u64;
        let mut error = None;
        generate::generate(spec, &self.layout, wanted.as_deref(), &mut |batch| {
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

/// A window over many keys, fed from batches prepared in memory: the operator's own
/// cost (stamping, the window, its finishing stage), with either state backend.
pub struct WindowBench {
    windowed: Windowed,
    batches: Vec<Batch>,
    /// The rows' layout (before stamping), and the number of keys.
    layout: Arc<Layout>,
    keys: u64,
    pub events: u64,
}

/// What the state held at its largest (sampled after every batch).
#[derive(Clone, Copy, Debug, Default)]
pub struct StateSize {
    pub windows_in_memory: usize,
    pub windows_spilled: usize,
    pub bytes: usize,
    /// Key bytes plus accumulator words of one window: the raw size of what it holds.
    pub raw_bytes_per_window: usize,
}

/// A window operator holding the state a [`WindowBench`] leaves open (see
/// [`WindowBench::fed_windows`]).
pub struct FedWindows {
    op: WindowOp,
    spec: Arc<crate::run::window::WindowSpec>,
    input: Arc<Layout>,
}

impl FedWindows {
    /// Windows in memory.
    pub fn windows(&self) -> usize {
        self.op.state_size().0
    }

    /// A full snapshot of the state, as a checkpoint takes it.
    pub fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        self.op.snapshot()
    }

    /// Restores `bytes` (a [`FedWindows::snapshot`]) into a fresh operator.
    pub fn restore_fresh(&self, bytes: &[u8]) -> Result<(), String> {
        let mut fresh = WindowOp::new(self.spec.clone(), &self.input, 1);
        fresh.restore(bytes)
    }
}

impl WindowBench {
    /// `events` events over `keys` string keys (`acct-0000042`), 16 events per ms of
    /// event time, with decimal amounts; `window` is a .flow window spec such as
    /// `tumbling(60s)` or `session(gap: 5s)`; the aggregates are count, sum and max.
    pub fn new(window: &str, keys: u64, events: u64, jit: bool) -> Result<WindowBench, String> {
        let src = format!(
            "schema E {{ account: string, amount: decimal(12, 2), ts: timestamp }}
source s: E = stdin() event_time ts watermark 1s
sink out = stdout()
pipeline p = from s | key_by account | window {window} | aggregate {{ n: count(), total: sum(amount), top: max(amount) }} -> out"
        );
        let program = stamp::stamp_program(&program(&src)?);
        let windowed = Windowed::new(&program, jit)?.ok_or("no window")?;
        let mut rec = (*windowed.stamped.record).clone();
        rec.fields.pop();
        let layout = Arc::new(Layout::new(Arc::new(rec)));
        let mut batches = Vec::new();
        let mut b = BatchBuilder::with_capacity(layout.clone(), 4096, 4096 * 12);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut name = String::new();
        for i in 0..events {
            // xorshift: keys spread evenly, amounts from 0.01 to 999.99.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            name.clear();
            name.push_str("acct-");
            let k = x % keys;
            name.push_str(&format!("{k:07}"));
            let r = b.push_row();
            b.set_str(r, 0, &name).map_err(|e| format!("{e:?}"))?;
            b.set_i64(r, 1, (x >> 20) as i64 % 99_999 + 1);
            b.set_i64(r, 2, 1_700_000_000_000 + (i / 16) as i64);
            if b.len() == 4096 {
                batches.push(
                    std::mem::replace(&mut b, BatchBuilder::with_capacity(layout.clone(), 4096, 4096 * 12)).finish(),
                );
            }
        }
        batches.push(b.finish());
        Ok(WindowBench { windowed, batches, layout, keys, events })
    }

    /// Runs every batch through a fresh operator: in memory (`spill` None), or spilling
    /// to a RocksDB in `spill.0` beyond `spill.1` windows in memory.
    pub fn run(&self, spill: Option<(&std::path::Path, usize)>) -> Result<Measured, String> {
        let h = &self.windowed.head;
        let mut op = WindowOp::new(h.spec.clone(), &h.op_input, 1);
        if let Some((dir, budget)) = spill {
            let store = crate::run::spill::RocksStore::open(dir, "bench")?;
            op = op.with_store(Box::new(store), budget);
        }
        let started = Instant::now();
        let rows_out = self.windowed.run(&mut op, &mut |f| {
            for b in &self.batches {
                if !f(b.clone()) {
                    break;
                }
            }
            Ok(())
        })?;
        Ok(Measured { events: self.events, rows_out, bytes: 0, elapsed: started.elapsed() })
    }

    /// [`WindowBench::run`] in memory, taking a checkpoint's snapshot of the operator
    /// every `interval` as `flowc run` does: encoded on the operator's thread, written
    /// to `dir` and fsynced on another; returns the run and the snapshots taken.
    pub fn run_checkpointed(&self, interval: Duration, dir: &std::path::Path) -> Result<(Measured, u64), String> {
        let h = &self.windowed.head;
        let mut op = WindowOp::new(h.spec.clone(), &h.op_input, 1);
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let mut last = Instant::now();
        let mut taken = 0u64;
        let mut writing: Option<std::thread::JoinHandle<Result<(), String>>> = None;
        let path = dir.join("op.state");
        let mut after = |op: &mut WindowOp| -> Result<(), String> {
            if last.elapsed() >= interval {
                let bytes = op.snapshot()?;
                if let Some(h) = writing.take() {
                    h.join().map_err(|_| "the writer panicked".to_string())??;
                }
                let path = path.clone();
                writing = Some(std::thread::spawn(move || crate::checkpoint::write_synced(&path, &bytes)));
                taken += 1;
                last = Instant::now();
            }
            Ok(())
        };
        let rows_out = self.windowed.run_hooked(
            &mut op,
            &mut |f| {
                for b in &self.batches {
                    if !f(b.clone()) {
                        break;
                    }
                }
                Ok(())
            },
            &mut after,
        )?;
        if let Some(h) = writing.take() {
            h.join().map_err(|_| "the writer panicked".to_string())??;
        }
        Ok((Measured { events: self.events, rows_out, bytes: 0, elapsed: started.elapsed() }, taken))
    }

    /// An operator fed every batch as the source stamps them (windows the stamps pass
    /// fire, their results dropped; `tumbling(1h)` over this input keeps all open), and
    /// the stamper.
    fn fed(&self) -> Result<(WindowOp, Stamper), String> {
        let h = &self.windowed.head;
        let w = &self.windowed;
        let mut op = WindowOp::new(h.spec.clone(), &h.op_input, 1);
        let mut stamper = Stamper::new(&w.stamped, &w.time, w.delay, None, &[0]);
        for b in &self.batches {
            let b = stamper.stamp(b, &w.stamped, 0);
            op.process(&b, 0)?;
            let _ = op.take_results();
        }
        Ok((op, stamper))
    }

    /// An operator fed every batch ([`WindowBench::fed`]), for benchmarks of what is
    /// done with its state.
    pub fn fed_windows(&self) -> Result<FedWindows, String> {
        let (op, _) = self.fed()?;
        let h = &self.windowed.head;
        Ok(FedWindows { op, spec: h.spec.clone(), input: h.op_input.clone() })
    }

    /// Feeds every batch ([`WindowBench::fed`]), then times a full snapshot of the state, its size, and restoring it into a fresh
    /// operator. Returns (windows, snapshot time, bytes, restore time).
    pub fn snapshot_cost(&self) -> Result<(usize, Duration, usize, Duration), String> {
        let h = &self.windowed.head;
        let (mut op, _) = self.fed()?;
        let (windows, _, _) = op.state_size();
        let t = Instant::now();
        let bytes = op.snapshot()?;
        let snap = t.elapsed();
        let mut fresh = WindowOp::new(h.spec.clone(), &h.op_input, 1);
        let t = Instant::now();
        fresh.restore(&bytes)?;
        let restore = t.elapsed();
        Ok((windows, snap, bytes.len(), restore))
    }

    /// The cost of an incremental checkpoint: feeds every batch as
    /// [`WindowBench::snapshot_cost`] does and takes a full snapshot, then feeds one
    /// batch of one record for each of `fraction` of the keys (distinct keys spread
    /// evenly, at the last event's time: the windows they are in) and times
    /// [`WindowOp::snapshot_delta`]. Returns (full snapshot time, delta time, full
    /// snapshot bytes, delta bytes).
    pub fn delta_cost(&self, fraction: f64) -> Result<(Duration, Duration, usize, usize), String> {
        let w = &self.windowed;
        let (mut op, mut stamper) = self.fed()?;
        let t = Instant::now();
        let full = std::hint::black_box(op.snapshot()?);
        let full_time = t.elapsed();
        let n = ((self.keys as f64 * fraction).round() as u64).clamp(1, self.keys.max(1));
        let ts = 1_700_000_000_000 + (self.events.saturating_sub(1) / 16) as i64;
        let mut b = BatchBuilder::with_capacity(self.layout.clone(), n as usize, n as usize * 12);
        let mut name = String::new();
        for i in 0..n {
            name.clear();
            name.push_str(&format!("acct-{:07}", i * self.keys / n));
            let r = b.push_row();
            b.set_str(r, 0, &name).map_err(|e| format!("{e:?}"))?;
            b.set_i64(r, 1, 100);
            b.set_i64(r, 2, ts);
        }
        let b = stamper.stamp(&b.finish(), &w.stamped, 0);
        op.process(&b, 0)?;
        let _ = op.take_results();
        let t = Instant::now();
        let delta = std::hint::black_box(op.snapshot_delta()?);
        let delta_time = t.elapsed();
        Ok((full_time, delta_time, full.len(), delta.len()))
    }

    /// The largest in-memory state over a run (sampled every 16 batches).
    pub fn state(&self) -> Result<StateSize, String> {
        let h = &self.windowed.head;
        let w = &self.windowed;
        let mut op = WindowOp::new(h.spec.clone(), &h.op_input, 1);
        let mut stamper = Stamper::new(&w.stamped, &w.time, w.delay, None, &[0]);
        let mut peak = StateSize::default();
        for (i, b) in self.batches.iter().enumerate() {
            let b = stamper.stamp(b, &w.stamped, 0);
            op.process(&b, 0)?;
            if let Some(wm) = stamper.to_send() {
                op.watermark(0, wm)?;
            }
            let _ = op.take_results();
            if i % 16 == 15 {
                let (hot, spilled, bytes) = op.state_size();
                if hot > peak.windows_in_memory {
                    peak =
                        StateSize { windows_in_memory: hot, windows_spilled: spilled, bytes, raw_bytes_per_window: 0 };
                }
            }
        }
        // The yardstick for a key here: its 12 characters, a 4-byte length and a null
        // flag (a row holds it in 20 bytes and a null bit; the window state's key
        // encoding, in 13); then the accumulator's words.
        peak.raw_bytes_per_window = 17 + h.spec.acc.width * 8;
        Ok(peak)
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
    let spec = generate::GenSpec {
        kind: ir::GeneratorKind::Transactions,
        seed: 42,
        count: Some(n as i64),
        keys: None,
        rate_per_s: None,
    };
    generate::generate(spec, &layout, None, &mut |b| {
        for i in 0..b.len {
            format::encode_json_row(&b.row(i), &mut text);
            text.push('\n');
        }
        true
    })?;
    Ok((layout, text))
}

/// Decodes every line of `text` into rows of `layout`, split as the file source splits
/// them.
pub fn ingest(layout: &Arc<Layout>, text: &str) -> Result<Measured, String> {
    let started = Instant::now();
    let (mut events, mut rows_out) = (0u64, 0u64);
    let mut b = BatchBuilder::new(layout.clone());
    for line in format::split_lines(text) {
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
    fn a_delta_after_updating_a_few_keys_is_small() {
        let b = WindowBench::new("tumbling(1h)", 5_000, 20_000, false).expect("bench");
        let (_, _, full, delta) = b.delta_cost(0.01).expect("cost");
        assert!(delta * 20 < full, "delta {delta} bytes, full snapshot {full}");
    }

    #[test]
    fn ingest_decodes_every_line() {
        let (layout, text) = transactions_json(10_000).expect("input");
        let m = ingest(&layout, &text).expect("decodes");
        assert_eq!((m.events, m.rows_out), (10_000, 10_000));
    }
}
