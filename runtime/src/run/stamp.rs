//! Watermarks: where they are made and how each record carries its own.
//!
//! A pipeline with an event-time operator (a window) judges every record against the
//! watermark *as it stood before that record* at the source, as Flink does with
//! per-record watermarks (`semantics.md`, "Watermarks"). Batches would blur that: a
//! batch of 4,096 records advances the watermark 4,096 times. So each record carries
//! its watermark in a hidden trailing field, `$wm`, from the read stage to the
//! event-time operator: [`stamp_program`] appends it to the pipeline's input record and
//! passes it through every `select` before that operator, and the read stage's
//! [`Stamper`] fills it (the minimum over the source's partitions of `max event time
//! seen - delay`, before the record).
//!
//! Between batches (and when a filter drops them all, or an exchange sends a stage
//! instance none of them) watermarks also flow as `Msg::Watermark`, so an operator
//! instance that receives no records still fires its windows. End of bounded input is
//! the watermark +infinity.

use flow_compiler::ir::{self, Expr, ExprKind, OpKind};
use flow_compiler::source::Span;
use flow_types::row::{Batch, Layout};
use flow_types::{Field, RecordType, Type};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The hidden field's name (not a valid .flow identifier, so it cannot clash).
pub const STAMP_FIELD: &str = "$wm";

/// The watermark before any record: nothing is late yet.
pub const WM_MIN: i64 = i64::MIN;
/// The watermark at the end of bounded input: every window fires.
pub const WM_MAX: i64 = i64::MAX;

/// Whether operator `op` works in event time (and so needs records' watermarks): a
/// window, or an unwindowed aggregate with a `ttl` over a stream with event time.
pub fn is_event_time(op: &OpKind) -> bool {
    matches!(op, OpKind::WindowAggregate { .. })
}

/// The index of the last operator of `p` that needs watermarks.
fn last_event_time_op(program: &ir::Program, p: &ir::Pipeline) -> Option<usize> {
    let mut time = match &p.input {
        ir::Input::Source(s) => program.sources.iter().find(|x| x.name == *s).and_then(|x| x.event_time.clone()),
        ir::Input::Topic(t) => program.topics.iter().find(|x| x.name == *t).and_then(|x| x.event_time.clone()),
    };
    let mut last = None;
    for (i, op) in p.ops.iter().enumerate() {
        let ttl_in_event_time = matches!(op.kind, OpKind::Aggregate { ttl_ms: Some(_), .. }) && time.is_some();
        if is_event_time(&op.kind) || ttl_in_event_time {
            last = Some(i);
        }
        time = op.event_time.clone();
    }
    last
}

fn with_stamp(r: &RecordType) -> Arc<RecordType> {
    let mut fields = r.fields.clone();
    fields.push(Field { name: STAMP_FIELD.into(), ty: Type::timestamp() });
    Arc::new(RecordType { name: None, fields })
}

/// Whether `record`'s last field is the hidden watermark.
pub fn has_stamp(record: &RecordType) -> bool {
    record.fields.last().is_some_and(|f| f.name == STAMP_FIELD)
}

/// The program with `$wm` carried from the input of every pipeline with an event-time
/// operator up to its last one (every `select` before it passes the field on; the
/// operators themselves fill it in their results when a later one needs it).
pub fn stamp_program(program: &ir::Program) -> ir::Program {
    let mut out = program.clone();
    for p in &mut out.pipelines {
        let Some(last) = last_event_time_op(program, p) else { continue };
        p.input_schema = with_stamp(&p.input_schema);
        let mut input = p.input_schema.clone();
        for op in &mut p.ops[..last] {
            if let OpKind::Project(items) = &mut op.kind {
                // The input's `$wm` is its last field.
                items.push((STAMP_FIELD.into(), stamp_ref(input.fields.len() - 1, op.span)));
            }
            op.output = with_stamp(&op.output);
            input = op.output.clone();
        }
    }
    out
}

fn stamp_ref(field: usize, span: Span) -> Expr {
    Expr { kind: ExprKind::Field(field), ty: Type::timestamp(), span }
}

/// Event time of one source partition.
#[derive(Clone, Copy, Debug)]
struct Part {
    id: u32,
    /// The largest event time seen (`WM_MIN` before the first record).
    max_ts: i64,
    last_record: Instant,
    /// Left out of the minimum: idle for longer than the idle timeout.
    idle: bool,
}

/// Computes a source's watermarks and stamps them into its records (see the module docs).
pub struct Stamper {
    ts_field: usize,
    ts_offset: i64,
    delay: i64,
    idle_timeout: Option<Duration>,
    /// Index of `$wm` in the stamped layout.
    stamp_field: usize,
    parts: Vec<Part>,
    /// The current watermark: min over non-idle partitions of `max_ts - delay`.
    wm: i64,
    /// The watermark last handed downstream.
    sent: i64,
}

impl Stamper {
    /// A stamper for records of `layout` (stamped: `$wm` last), with event time field
    /// `time` and bounded out-of-orderness `delay_ms`, over the given partitions.
    pub fn new(
        layout: &Layout,
        time: &ir::EventTime,
        delay_ms: i64,
        idle_timeout_ms: Option<i64>,
        partitions: &[u32],
    ) -> Stamper {
        let now = Instant::now();
        let parts = partitions.iter().map(|&id| Part { id, max_ts: WM_MIN, last_record: now, idle: false }).collect();
        Stamper {
            ts_field: time.field,
            ts_offset: time.offset_ms,
            delay: delay_ms,
            idle_timeout: idle_timeout_ms.map(|ms| Duration::from_millis(ms.max(0) as u64)),
            stamp_field: layout.len() - 1,
            parts,
            wm: WM_MIN,
            sent: WM_MIN,
        }
    }

    /// The current watermark.
    pub fn watermark(&self) -> i64 {
        self.wm
    }

    /// What a checkpoint keeps of it: the watermark and each partition's largest event
    /// time, so a resumed run judges records as the uninterrupted one would have.
    pub fn state(&self) -> crate::checkpoint::Watermarks {
        crate::checkpoint::Watermarks { wm: self.wm, max_ts: self.parts.iter().map(|p| (p.id, p.max_ts)).collect() }
    }

    /// Resumes from a checkpoint's [`Stamper::state`].
    pub fn restore(&mut self, w: &crate::checkpoint::Watermarks) {
        self.wm = self.wm.max(w.wm);
        self.sent = self.sent.max(w.wm);
        for (&id, &ts) in &w.max_ts {
            let i = self.part_index(id);
            self.parts[i].max_ts = self.parts[i].max_ts.max(ts);
        }
    }

    fn part_index(&mut self, id: u32) -> usize {
        match self.parts.iter().position(|p| p.id == id) {
            Some(i) => i,
            None => {
                self.parts.push(Part { id, max_ts: WM_MIN, last_record: Instant::now(), idle: false });
                self.parts.len() - 1
            }
        }
    }

    fn recompute(&mut self) {
        let active = self.parts.iter().filter(|p| !p.idle);
        let wm = active.map(|p| part_wm(p.max_ts, self.delay)).min();
        // All idle: the watermark stays where it was (it never goes back).
        if let Some(wm) = wm {
            self.wm = self.wm.max(wm);
        }
    }

    /// Widens every row of `batch` (decoded without `$wm`) to `stamped` and stamps it
    /// with the watermark before it, advancing the watermark past it. All rows are
    /// from partition `part`.
    pub fn stamp(&mut self, batch: &Batch, stamped: &Arc<Layout>, part: u32) -> Batch {
        let pi = self.part_index(part);
        self.stamp_rows(batch, stamped, |_| pi)
    }

    /// Like [`Stamper::stamp`], with each row's partition given.
    pub fn stamp_parts(&mut self, batch: &Batch, stamped: &Arc<Layout>, parts: &[u32]) -> Batch {
        let idx: Vec<usize> = parts.iter().map(|&p| self.part_index(p)).collect();
        self.stamp_rows(batch, stamped, |r| idx.get(r).copied().unwrap_or(0))
    }

    fn stamp_rows(&mut self, batch: &Batch, stamped: &Arc<Layout>, part_of: impl Fn(usize) -> usize) -> Batch {
        let from = &batch.layout;
        let (w_in, w_out) = (from.width as usize, stamped.width as usize);
        let (bm_in, bm_out) = (from.bitmap_bytes as usize, stamped.bitmap_bytes as usize);
        let ts_off = from.offsets[self.ts_field] as usize;
        let st_off = stamped.offsets[self.stamp_field] as usize;
        // Zeroed, so only the input's bitmap and slots and `$wm` are copied in (the
        // bitmap widens when `$wm` starts a new bitmap word).
        let mut rows = vec![0u8; batch.len * w_out];
        let now = Instant::now();
        let ts_offset = self.ts_offset;
        let ts_at = |row: &[u8]| {
            i64::from_le_bytes(row[ts_off..ts_off + 8].try_into().expect("8 bytes")).saturating_add(ts_offset)
        };
        let copy = |dst: &mut [u8], row: &[u8], wm: i64| {
            if bm_in == bm_out {
                dst[..w_in].copy_from_slice(row);
            } else {
                dst[..bm_in].copy_from_slice(&row[..bm_in]);
                dst[bm_out..bm_out + w_in - bm_in].copy_from_slice(&row[bm_in..]);
            }
            dst[st_off..st_off + 8].copy_from_slice(&wm.to_le_bytes());
        };
        let pairs = rows.chunks_exact_mut(w_out).zip(batch.rows.chunks_exact(w_in)).take(batch.len);
        if self.parts.len() == 1 {
            // One partition: its watermark is the stamper's (kept in registers here).
            let p = &mut self.parts[0];
            p.last_record = now;
            let mut wm = self.wm;
            if std::mem::replace(&mut p.idle, false) {
                wm = wm.max(part_wm(p.max_ts, self.delay));
            }
            let mut max_ts = p.max_ts;
            for (dst, row) in pairs {
                copy(dst, row, wm);
                let ts = ts_at(row);
                if ts > max_ts {
                    max_ts = ts;
                    wm = wm.max(part_wm(ts, self.delay));
                }
            }
            p.max_ts = max_ts;
            self.wm = wm;
        } else {
            for (r, (dst, row)) in pairs.enumerate() {
                copy(dst, row, self.wm);
                let ts = ts_at(row);
                let p = &mut self.parts[part_of(r)];
                p.last_record = now;
                let was_idle = std::mem::replace(&mut p.idle, false);
                if ts > p.max_ts || was_idle {
                    p.max_ts = p.max_ts.max(ts);
                    self.recompute();
                }
            }
        }
        Batch {
            layout: stamped.clone(),
            rows: rows.into(),
            len: batch.len,
            base: batch.base.clone(),
            extra: batch.extra.clone(),
        }
    }

    /// Marks partitions silent for longer than the idle timeout as idle (they stop
    /// holding the watermark back). Returns whether the watermark moved.
    ///
    /// Partitions that timed out since the last check are marked one at a time, in the
    /// order they went silent, as if each had been checked at its own instant: a
    /// partition that never had a record times out before one that had records after it
    /// started, so the latter's watermark counts for that moment (the watermark never
    /// goes back). Marked all at once, partitions that went silent together would leave
    /// no partition to take the minimum over, and the watermark would stay where the
    /// silent one held it, for good.
    pub fn check_idle(&mut self) -> bool {
        let Some(t) = self.idle_timeout else { return false };
        let before = self.wm;
        let mut expired: Vec<usize> = (0..self.parts.len())
            .filter(|&i| !self.parts[i].idle && self.parts[i].last_record.elapsed() >= t)
            .collect();
        expired.sort_by_key(|&i| self.parts[i].last_record);
        for i in expired {
            self.parts[i].idle = true;
            self.recompute();
        }
        self.wm != before
    }

    /// The watermark to send downstream, if it moved since the last one sent.
    pub fn to_send(&mut self) -> Option<i64> {
        (self.wm > self.sent).then(|| {
            self.sent = self.wm;
            self.wm
        })
    }
}

/// A partition's watermark: `max_ts - delay` (WM_MIN before any record).
fn part_wm(max_ts: i64, delay: i64) -> i64 {
    if max_ts == WM_MIN {
        WM_MIN
    } else {
        max_ts.saturating_sub(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_types::row::BatchBuilder;
    use flow_types::Value;

    fn raw() -> Arc<Layout> {
        let rec = RecordType { name: None, fields: vec![Field { name: "ts".into(), ty: Type::timestamp() }] };
        Arc::new(Layout::new(Arc::new(rec)))
    }

    fn layout() -> Arc<Layout> {
        Arc::new(Layout::new(with_stamp(&raw().record)))
    }

    fn batch(ts: &[i64]) -> Batch {
        let mut b = BatchBuilder::new(raw());
        for &t in ts {
            b.push_values(&[Value::Timestamp(t)]).expect("row");
        }
        b.finish()
    }

    fn stamps(b: &Batch) -> Vec<i64> {
        (0..b.len).map(|i| b.row(i).i64(1)).collect()
    }

    #[test]
    fn widening_keeps_every_field_and_null_bit() {
        // 64 fields fill one bitmap word: the stamped layout needs a second one.
        let fields: Vec<Field> = (0..64).map(|i| Field { name: format!("f{i}"), ty: Type::int().nullable() }).collect();
        let rec = Arc::new(RecordType { name: None, fields });
        let raw = Arc::new(Layout::new(rec.clone()));
        let stamped = Arc::new(Layout::new(with_stamp(&rec)));
        assert_ne!(raw.bitmap_bytes, stamped.bitmap_bytes);
        let mut b = BatchBuilder::new(raw);
        let vals: Vec<Value> = (0..64).map(|i| if i % 3 == 0 { Value::Null } else { Value::Int(i) }).collect();
        b.push_values(&vals).expect("row");
        let time = ir::EventTime { field: 1, offset_ms: 0 };
        let mut s = Stamper::new(&stamped, &time, 0, None, &[0]);
        let out = s.stamp(&b.finish(), &stamped, 0);
        let mut want = vals.clone();
        want.push(Value::Timestamp(WM_MIN));
        assert_eq!(out.row(0).values(), want);
    }

    #[test]
    fn each_record_carries_the_watermark_before_it() {
        let time = ir::EventTime { field: 0, offset_ms: 0 };
        let mut s = Stamper::new(&layout(), &time, 5000, None, &[0]);
        let b = s.stamp(&batch(&[10_000, 20_000, 12_000, 20_001]), &layout(), 0);
        assert_eq!(stamps(&b), vec![WM_MIN, 5_000, 15_000, 15_000]);
        assert_eq!(s.watermark(), 15_001);
        assert_eq!(s.to_send(), Some(15_001));
        assert_eq!(s.to_send(), None, "sent once");
    }

    #[test]
    fn the_slowest_partition_holds_the_watermark_until_idle() {
        let time = ir::EventTime { field: 0, offset_ms: 0 };
        let mut s = Stamper::new(&layout(), &time, 0, Some(0), &[0, 1]);
        let b = s.stamp(&batch(&[100, 200]), &layout(), 0);
        assert_eq!(stamps(&b), vec![WM_MIN, WM_MIN], "partition 1 has seen nothing");
        let b = s.stamp(&batch(&[50]), &layout(), 1);
        assert_eq!(stamps(&b), vec![WM_MIN]);
        assert_eq!(s.watermark(), 50);
        // Idle timeout 0: both time out, 0 (silent since its first batch) before 1; with
        // 1 alone active the watermark stays at 1's, then nothing holds it.
        assert!(!s.check_idle());
        let b = s.stamp(&batch(&[300]), &layout(), 0);
        assert_eq!(stamps(&b), vec![50]);
        assert_eq!(s.watermark(), 300, "partition 1 is idle: 0 alone counts");
    }

    /// A partition that never had a record went silent before one that had records
    /// since: when both time out by the same check, the active one's watermark counts
    /// (a window over a topic whose only writer used one partition fires; it used to wait
    /// for ever under `flowc serve --pipelines`).
    #[test]
    fn partitions_timing_out_together_are_marked_in_the_order_they_went_silent() {
        let time = ir::EventTime { field: 0, offset_ms: 0 };
        let mut s = Stamper::new(&layout(), &time, 0, Some(0), &[0, 1]);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = s.stamp(&batch(&[1_000, 2_000, 12_000]), &layout(), 0);
        assert_eq!(stamps(&b), vec![WM_MIN; 3], "partition 1 holds it back");
        assert_eq!(s.watermark(), WM_MIN);
        assert!(s.check_idle(), "1 went silent first: 0's watermark counts");
        assert_eq!(s.watermark(), 12_000);
        assert_eq!(s.to_send(), Some(12_000));
    }

    #[test]
    fn stamping_passes_the_field_through_selects() {
        let src = "schema T { a: int, ts: timestamp }\nsource s: T = stdin() event_time ts watermark 1s\nsink o = stdout()\n\
                   pipeline p = from s | select { ts, b: a + 1 } | where b > 0 | window tumbling(1m) | aggregate { n: count() } -> o";
        let c = flow_compiler::compile_str("t.flow", src);
        let prog = stamp_program(&c.program.expect("program"));
        let p = &prog.pipelines[0];
        assert!(has_stamp(&p.input_schema));
        assert_eq!(p.input_schema.fields.len(), 3);
        match &p.ops[0].kind {
            OpKind::Project(items) => {
                let (n, e) = items.last().expect("item");
                assert_eq!(n, STAMP_FIELD);
                assert!(matches!(e.kind, ExprKind::Field(2)));
            }
            k => panic!("{k:?}"),
        }
        assert!(has_stamp(&p.ops[0].output) && has_stamp(&p.ops[1].output));
        assert!(!has_stamp(&p.ops[2].output), "the window's results carry no stamp: nothing after needs one");
    }
}
