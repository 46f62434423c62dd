//! `key_by ... | aggregate { } [ttl D]` without a window: a running aggregate per key.
//!
//! Every record updates its key's accumulator and emits the key's new result at once,
//! as Flink SQL's `GROUP BY` without a window does; each result replaces the previous
//! one for its key (an upsert stream keyed by the keys), numbered by `revision`
//! internally. `ttl D` forgets a key that has had no record for `D`: in event time when
//! the stream has event time (a key is forgotten once the watermark passes its last
//! record's time plus `D`, so a replay forgets the same keys), otherwise in processing
//! time. A forgotten key that comes back starts again from an empty accumulator.

use super::agg::AccStore;
use super::snapshot::{Generation, Reader, Writer};
use super::stamp::{WM_MAX, WM_MIN};
use super::window::{check_key, decode_key, encode_key, KeyTable, WindowSpec};
use flow_types::row::{Batch, BatchBuilder, Layout, SlotKind};
use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Copy)]
struct KeyState {
    acc: u32,
    emitted: u32,
    /// The time of its last record (event time, or processing-time milliseconds).
    last: i64,
    /// Changed since the last snapshot or delta (while changes are tracked).
    changed: bool,
}

/// The state of one instance.
pub(crate) struct KeyedAggOp {
    spec: Arc<WindowSpec>,
    ttl: Option<i64>,
    /// TTL and watermarks in event time (the input carries `$wm` stamps).
    event_time: bool,
    kinds: Vec<SlotKind>,
    key_kinds: Vec<SlotKind>,
    keys: KeyTable,
    accs: AccStore,
    state: FxHashMap<u32, KeyState>,
    expiry: BinaryHeap<Reverse<(i64, u32)>>,
    channels: Vec<i64>,
    pub wm: i64,
    results: BatchBuilder,
    scratch: Vec<u8>,
    started: Instant,
    /// Added to the time since `started`: a restored operator's clock carries on from
    /// the snapshot's.
    clock_base: i64,
    /// Where the state stands in its chain of snapshots (None before the first
    /// snapshot or restore, and after a failed delta).
    gen: Option<Generation>,
    /// Input processed since the last snapshot, delta or restore.
    touched: bool,
    /// Changes are tracked (from the first snapshot or restore on).
    track: bool,
    /// Ids of keys flagged [`KeyState::changed`] (stale ones are skipped).
    changed: Vec<u32>,
    /// Keys forgotten (TTL) since the last snapshot or delta, each length-prefixed.
    removed: Vec<u8>,
    removed_n: usize,
}

/// Rows whose update failed, with why.
pub(crate) type Failed = Vec<(usize, &'static str)>;

impl KeyedAggOp {
    pub fn new(spec: Arc<WindowSpec>, ttl: Option<i64>, event_time: bool, input: &Layout, upstream: usize) -> Self {
        let key_kinds = spec.key_fields.iter().map(|&f| input.slot_kinds[f]).collect();
        KeyedAggOp {
            ttl,
            event_time,
            kinds: input.slot_kinds.clone(),
            key_kinds,
            keys: KeyTable::default(),
            accs: AccStore::new(spec.acc.clone()),
            state: FxHashMap::default(),
            expiry: BinaryHeap::new(),
            channels: vec![WM_MIN; upstream.max(1)],
            wm: WM_MIN,
            results: BatchBuilder::new(spec.result.clone()),
            scratch: Vec::new(),
            started: Instant::now(),
            clock_base: 0,
            gen: None,
            touched: false,
            track: false,
            changed: Vec::new(),
            removed: Vec::new(),
            removed_n: 0,
            spec,
        }
    }

    /// Keys held.
    #[cfg(test)]
    pub fn keys(&self) -> usize {
        self.state.len()
    }

    pub fn take_results(&mut self) -> Option<Batch> {
        if self.results.is_empty() {
            return None;
        }
        Some(std::mem::replace(&mut self.results, BatchBuilder::new(self.spec.result.clone())).finish())
    }

    fn now(&self) -> i64 {
        (self.started.elapsed().as_millis() as i64).saturating_add(self.clock_base)
    }

    /// Forgets keys whose last record is `ttl` or more before `t`.
    fn expire(&mut self, t: i64) {
        let Some(ttl) = self.ttl else { return };
        while let Some(&Reverse((at, key))) = self.expiry.peek() {
            if at > t {
                break;
            }
            self.expiry.pop();
            if let Some(s) = self.state.get(&key) {
                if s.last.saturating_add(ttl) <= t {
                    if self.track {
                        let kb = self.keys.key(key);
                        self.removed.extend_from_slice(&(kb.len() as u32).to_le_bytes());
                        self.removed.extend_from_slice(kb);
                        self.removed_n += 1;
                    }
                    self.accs.free(s.acc);
                    self.state.remove(&key);
                    self.keys.release(key);
                }
            }
        }
    }

    /// Processes `batch` (from upstream instance `from`): one result per record.
    pub fn process(&mut self, batch: &Batch, from: usize) -> Result<Failed, String> {
        let spec = self.spec.clone();
        let mut failed = Vec::new();
        self.touched = true;
        let now = self.now();
        if !self.event_time {
            self.expire(now);
        }
        for r in 0..batch.len {
            let row = batch.row(r);
            let t = if self.event_time {
                let stamp = row.i64(spec.stamp_field);
                if stamp > self.channels[from] {
                    self.channels[from] = stamp;
                    let m = self.channels.iter().copied().min().unwrap_or(stamp);
                    if m > self.wm {
                        self.wm = m;
                        self.expire(m);
                    }
                }
                row.i64(spec.ts_field).saturating_add(spec.ts_offset)
            } else {
                now
            };
            self.scratch.clear();
            encode_key(&row, &spec.key_fields, &self.kinds, &mut self.scratch);
            let key = self.keys.intern(&self.scratch);
            let (mut st, fresh) = match self.state.get(&key) {
                Some(s) => (*s, false),
                None => (KeyState { acc: self.accs.alloc(), emitted: 0, last: t, changed: false }, true),
            };
            if let Err(e) = self.accs.update(st.acc, &row, t) {
                if fresh {
                    self.accs.free(st.acc);
                    self.keys.forget_if_unused(key);
                }
                failed.push((r, e));
                continue;
            }
            if fresh {
                self.keys.retain(key);
            }
            st.last = st.last.max(t);
            if let Some(ttl) = self.ttl {
                self.expiry.push(Reverse((st.last.saturating_add(ttl), key)));
            }
            // The result: keys, (no window bounds), aggregates, revision, `$wm`.
            let nk = spec.key_fields.len();
            let out = self.results.push_row();
            decode_key(self.keys.key(key), &self.key_kinds, &mut self.results, out)?;
            self.results.set_i64(out, nk, 0);
            self.results.set_i64(out, nk + 1, 0);
            self.accs.write(st.acc, &mut self.results, out, nk + 2)?;
            let rev = nk + 2 + self.accs.layout.len();
            self.results.set_i64(out, rev, i64::from(st.emitted));
            self.results.set_i64(out, rev + 1, self.wm);
            st.emitted += 1;
            if self.track && !st.changed {
                st.changed = true;
                self.changed.push(key);
            }
            self.state.insert(key, st);
        }
        if self.changed.len() > 2 * self.state.len() + 64 {
            self.compact_changes();
        }
        Ok(failed)
    }

    /// A watermark from upstream instance `from` (event-time TTL).
    pub fn watermark(&mut self, from: usize, wm: i64) {
        self.touched = true;
        if wm > self.channels[from] {
            self.channels[from] = wm;
            let m = self.channels.iter().copied().min().unwrap_or(wm);
            if m > self.wm && self.event_time {
                self.wm = m;
                self.expire(m);
            }
        }
    }

    /// End of input: nothing is pending (every result was emitted with its record).
    pub fn finish(&mut self) {
        self.touched = true;
        self.wm = WM_MAX;
    }
}

/// The snapshot kind (`snapshot.rs`) of a keyed aggregate.
const SNAP_KEYED: u8 = b'K';

/// Checkpoints.
///
/// A snapshot holds the operator's shape (key fields, aggregates, accumulator words,
/// event or processing time), the watermark of each upstream channel and the
/// operator's, its clock (processing-time milliseconds), and per key: its bytes, the
/// results emitted so far (the next revision), the time of its last record and its
/// accumulator (with extras). The TTL queue is rebuilt from the keys' last times (one
/// entry per key at `last + ttl`: the snapshotted queue's other entries are stale ones
/// that expire nothing), and key ids are interned anew.
// Checkpoint barriers are not wired to the operators yet: only the tests call these.
impl KeyedAggOp {
    /// The operator's complete state as bytes; the operator carries on unaffected.
    /// Results not yet taken are not state: they precede the snapshot.
    pub fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        let mut w = Writer::new(SNAP_KEYED);
        let gen = Generation::full(self.gen);
        gen.put(&mut w);
        self.write_globals(&mut w)?;
        w.count(self.state.len(), "keys")?;
        for (&key, st) in &self.state {
            w.bytes(self.keys.key(key), "key")?;
            w.u32(st.emitted);
            w.i64(st.last);
            w.bytes_with("accumulator", |o| self.accs.export(st.acc, o))?;
        }
        self.reset_changes();
        self.gen = Some(gen);
        self.touched = false;
        Ok(w.finish())
    }

    /// Loads a [`KeyedAggOp::snapshot`] into this operator, which must be fresh (built by
    /// [`KeyedAggOp::new`] and given nothing yet) and of the same shape; it then behaves
    /// as the snapshotted one would have. Processing times are carried over relative to
    /// the snapshot's clock (the time between snapshot and restore does not count
    /// towards the TTL). Any input is safe: damaged or foreign bytes are refused with
    /// why, and leave the operator fresh.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        if !self.state.is_empty() || self.wm != WM_MIN || self.channels.iter().any(|&c| c != WM_MIN) {
            return Err("a snapshot is restored into a fresh aggregate operator only".into());
        }
        match self.restore_state(bytes) {
            Ok(gen) => {
                self.reset_changes();
                self.gen = Some(gen);
                self.touched = false;
                Ok(())
            }
            Err(e) => {
                self.blank_out();
                Err(e)
            }
        }
    }

    /// Back to a fresh operator's state (after a failed restore or delta).
    fn blank_out(&mut self) {
        self.keys = KeyTable::default();
        self.accs = AccStore::new(self.spec.acc.clone());
        self.state.clear();
        self.expiry.clear();
        self.channels.fill(WM_MIN);
        self.wm = WM_MIN;
        self.clock_base = 0;
        self.gen = None;
        self.touched = false;
        self.track = false;
        self.changed.clear();
        self.removed.clear();
        self.removed_n = 0;
    }

    /// Keys, aggregates, accumulator words and event time: what a snapshot must share
    /// with the operator it is restored into.
    fn shape(&self) -> [i64; 4] {
        [
            self.key_kinds.len() as i64,
            self.spec.acc.len() as i64,
            self.spec.acc.width as i64,
            i64::from(self.event_time),
        ]
    }

    /// The shape, the watermarks and the clock: every snapshot and delta has them.
    fn write_globals(&self, w: &mut Writer) -> Result<(), String> {
        for x in self.shape() {
            w.i64(x);
        }
        w.count(self.channels.len(), "channels")?;
        for &c in &self.channels {
            w.i64(c);
        }
        w.i64(self.wm);
        w.i64(self.now());
        Ok(())
    }

    /// Reads [`KeyedAggOp::write_globals`]'s part (checking the shape) into the
    /// operator: its clock carries on from the snapshot's.
    fn read_globals(&mut self, r: &mut Reader<'_>) -> Result<(), String> {
        let shape = self.shape();
        let mut got = [0i64; 4];
        for x in &mut got {
            *x = r.i64("shape")?;
        }
        if got != shape {
            return Err(format!(
                "aggregate snapshot of another shape: [keys, aggregates, words, event time] {got:?}, \
                 the operator's {shape:?}"
            ));
        }
        let n = r.count(8, "channels")?;
        if n != self.channels.len() {
            return Err(format!(
                "aggregate snapshot of {n} upstream instances, the operator has {}",
                self.channels.len()
            ));
        }
        let mut channels = Vec::with_capacity(n);
        for _ in 0..n {
            channels.push(r.i64("channel watermark")?);
        }
        let wm = r.i64("watermark")?;
        let clock = r.i64("clock")?;
        self.channels = channels;
        self.wm = wm;
        self.clock_base = clock.saturating_sub(self.started.elapsed().as_millis() as i64);
        Ok(())
    }

    fn restore_state(&mut self, bytes: &[u8]) -> Result<Generation, String> {
        let mut r = Reader::open(bytes, SNAP_KEYED, "aggregate")?;
        let gen = Generation::get(&mut r)?;
        self.read_globals(&mut r)?;
        let n = r.count(20, "keys")?;
        for _ in 0..n {
            let kb = r.bytes("key")?;
            let emitted = r.u32("revision")?;
            let last = r.i64("last record time")?;
            let ab = r.bytes("accumulator")?;
            check_key(kb, &self.key_kinds)?;
            if emitted == u32::MAX {
                return Err("aggregate snapshot holds a key with a bad revision".into());
            }
            let key = self.keys.intern(kb);
            if self.state.contains_key(&key) {
                return Err("aggregate snapshot holds a key twice".into());
            }
            let (acc, used) = self.accs.import(ab)?;
            if used != ab.len() {
                return Err("aggregate snapshot holds an accumulator with bytes past its end".into());
            }
            self.keys.retain(key);
            self.state.insert(key, KeyState { acc, emitted, last, changed: false });
            if let Some(ttl) = self.ttl {
                self.expiry.push(Reverse((last.saturating_add(ttl), key)));
            }
        }
        r.end("aggregate")?;
        Ok(gen)
    }
}

/// The delta kind (`snapshot.rs`) of a keyed aggregate.
const DELTA_KEYED: u8 = b'k';

/// Incremental checkpoints.
///
/// A delta holds its generations ([`Generation`]), the shape, watermarks and clock, the
/// keys forgotten since the previous snapshot or delta (their bytes), and every key
/// created or updated since, as a snapshot holds it. Applying one forgets first, then
/// writes the rest over what is there.
///
/// Changes are tracked from the first snapshot (or restore) on: a key's state carries a
/// flag, set (and its id pushed onto a list) by its first record since the last
/// snapshot or delta, one test on the path a record takes; TTL expiry records the keys
/// it forgets. Taking a delta walks that list alone.
impl KeyedAggOp {
    /// Forgets the changes tracked (a snapshot or delta holds them now) and tracks on.
    fn reset_changes(&mut self) {
        for &id in &self.changed {
            if let Some(st) = self.state.get_mut(&id) {
                st.changed = false;
            }
        }
        self.changed.clear();
        self.removed.clear();
        self.removed_n = 0;
        self.track = true;
    }

    /// Drops ids of keys forgotten since, or listed twice.
    fn compact_changes(&mut self) {
        let mut kept = Vec::with_capacity(self.state.len().min(self.changed.len()));
        for &id in &self.changed {
            if let Some(st) = self.state.get_mut(&id).filter(|st| st.changed) {
                st.changed = false;
                kept.push(id);
            }
        }
        for &id in &kept {
            if let Some(st) = self.state.get_mut(&id) {
                st.changed = true;
            }
        }
        self.changed = kept;
    }

    /// What changed since the previous [`KeyedAggOp::snapshot`] or `snapshot_delta`
    /// (see above), to apply with [`KeyedAggOp::apply_delta`] on top of that one; its
    /// cost is in the keys changed, not the keys held. Refused before any full snapshot
    /// (or restore); if it fails, the next must be a full snapshot.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn snapshot_delta(&mut self) -> Result<Vec<u8>, String> {
        let Some(at) = self.gen else {
            return Err("a delta follows a snapshot: take a full snapshot of the aggregate operator first".into());
        };
        let r = self.encode_delta(at.next());
        match &r {
            Ok(_) => {
                self.reset_changes();
                self.gen = Some(at.next());
                self.touched = false;
            }
            Err(_) => self.gen = None,
        }
        r
    }

    fn encode_delta(&mut self, gen: Generation) -> Result<Vec<u8>, String> {
        let mut w = Writer::new(DELTA_KEYED);
        gen.put_delta(&mut w);
        self.write_globals(&mut w)?;
        w.count(self.removed_n, "forgotten keys")?;
        w.raw(&self.removed);
        let at = w.count_later();
        let mut n = 0;
        for &key in &self.changed {
            let Some(st) = self.state.get_mut(&key).filter(|st| st.changed) else { continue };
            st.changed = false;
            w.bytes(self.keys.key(key), "key")?;
            w.u32(st.emitted);
            w.i64(st.last);
            let acc = st.acc;
            w.bytes_with("accumulator", |o| self.accs.export(acc, o))?;
            n += 1;
        }
        w.patch_count(at, n, "keys")?;
        Ok(w.finish())
    }

    /// Applies a [`KeyedAggOp::snapshot_delta`] to this operator, which must stand
    /// exactly where the delta's producer stood before it (restored from that full
    /// snapshot, given the deltas before this one in order, and no input since); it then
    /// behaves as the producer did after taking the delta. A delta of another chain,
    /// out of order, or applied twice is refused and changes nothing; damaged bytes are
    /// refused too (never a panic), and if the damage is found only while applying, the
    /// operator is left fresh: restore the snapshot again.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn apply_delta(&mut self, bytes: &[u8]) -> Result<(), String> {
        let mut r = Reader::open(bytes, DELTA_KEYED, "aggregate delta")?;
        let gen = Generation::get_delta(&mut r, self.gen, !self.touched)?;
        // Changes the operator only once the shape and the global part are read whole.
        self.read_globals(&mut r)?;
        match self.apply_rest(&mut r) {
            Ok(()) => {
                self.reset_changes();
                self.gen = Some(gen);
                self.touched = false;
                Ok(())
            }
            Err(e) => {
                self.blank_out();
                Err(e)
            }
        }
    }

    fn apply_rest(&mut self, r: &mut Reader<'_>) -> Result<(), String> {
        let n = r.count(4, "forgotten keys")?;
        for _ in 0..n {
            let kb = r.bytes("key")?;
            check_key(kb, &self.key_kinds)?;
            if let Some(key) = self.keys.find(kb) {
                if let Some(st) = self.state.remove(&key) {
                    self.accs.free(st.acc);
                    self.keys.release(key);
                }
            }
        }
        let n = r.count(20, "keys")?;
        for _ in 0..n {
            let kb = r.bytes("key")?;
            let emitted = r.u32("revision")?;
            let last = r.i64("last record time")?;
            let ab = r.bytes("accumulator")?;
            check_key(kb, &self.key_kinds)?;
            if emitted == u32::MAX {
                return Err("aggregate delta holds a key with a bad revision".into());
            }
            let (acc, used) = self.accs.import(ab)?;
            if used != ab.len() {
                return Err("aggregate delta holds an accumulator with bytes past its end".into());
            }
            let key = self.keys.intern(kb);
            match self.state.get(&key) {
                Some(old) => self.accs.free(old.acc),
                None => self.keys.retain(key),
            }
            self.state.insert(key, KeyState { acc, emitted, last, changed: false });
            if let Some(ttl) = self.ttl {
                self.expiry.push(Reverse((last.saturating_add(ttl), key)));
            }
        }
        r.end("aggregate delta")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::snapshot;
    use flow_compiler::ir::{self, AggCall};
    use flow_types::{Field, RecordType, Type, Value};

    fn input() -> Arc<Layout> {
        let f = |n: &str, ty: Type| Field { name: n.into(), ty };
        let rec = RecordType {
            name: None,
            fields: vec![
                f("k", Type::string()),
                f("v", Type::int()),
                f("ts", Type::timestamp()),
                f(super::super::stamp::STAMP_FIELD, Type::timestamp()),
            ],
        };
        Arc::new(Layout::new(Arc::new(rec)))
    }

    #[test]
    fn each_record_updates_its_key_and_idle_keys_are_forgotten_in_event_time() {
        let aggs = vec![
            AggCall { func: "count", arg: None, ty: Type::int() },
            AggCall { func: "sum", arg: None, ty: Type::int() },
        ];
        let acc = super::super::agg::AccLayout::new(&aggs, &[None, Some(1)], &input()).expect("layout");
        let keys = vec![Field { name: "k".into(), ty: Type::string() }];
        let spec = Arc::new(WindowSpec {
            window: ir::Window::Tumbling { size_ms: 1 },
            lateness: 0,
            emit_every: None,
            key_fields: vec![0],
            ts_field: 2,
            ts_offset: 0,
            stamp_field: 3,
            acc,
            result: Arc::new(Layout::new(super::super::window::result_record(&keys, &aggs))),
        });
        let mut op = KeyedAggOp::new(spec, Some(100), true, &input(), 1);
        let mut b = BatchBuilder::new(input());
        for (k, v, ts, wm) in
            [("a", 1, 0, WM_MIN), ("a", 2, 50, 0), ("b", 4, 60, 50), ("a", 8, 200, 150), ("a", 16, 210, 200)]
        {
            b.push_values(&[Value::String(k.into()), Value::Int(v), Value::Timestamp(ts), Value::Timestamp(wm)])
                .expect("row");
        }
        assert!(op.process(&b.finish(), 0).expect("process").is_empty());
        let rows: Vec<(Value, Value, Value, Value)> = op
            .take_results()
            .expect("results")
            .to_values()
            .into_iter()
            .map(|r| (r[0].clone(), r[3].clone(), r[4].clone(), r[5].clone()))
            .collect();
        let s = |k: &str| Value::String(k.into());
        assert_eq!(
            rows,
            vec![
                (s("a"), Value::Int(1), Value::Int(1), Value::Int(0)),
                (s("a"), Value::Int(2), Value::Int(3), Value::Int(1)),
                (s("b"), Value::Int(1), Value::Int(4), Value::Int(0)),
                // W = 150 >= 50 + 100: `a` was forgotten; it starts again.
                (s("a"), Value::Int(1), Value::Int(8), Value::Int(0)),
                (s("a"), Value::Int(2), Value::Int(24), Value::Int(1)),
            ]
        );
        assert_eq!(op.keys(), 1, "b went idle at W = 200 >= 60 + 100");
    }

    /// An operator of count(), sum(v), min(k), max(k), count_distinct(v),
    /// count_distinct(k) (accumulators with extras) per key `k`, with two upstream
    /// instances.
    fn rich_op(ttl: Option<i64>, event_time: bool) -> KeyedAggOp {
        let call = |func: &'static str, ty: Type| AggCall { func, arg: None, ty };
        let aggs = vec![
            call("count", Type::int()),
            call("sum", Type::int()),
            call("min", Type::string()),
            call("max", Type::string()),
            call("count_distinct", Type::int()),
            call("count_distinct", Type::int()),
        ];
        let acc =
            super::super::agg::AccLayout::new(&aggs, &[None, Some(1), Some(0), Some(0), Some(1), Some(0)], &input())
                .expect("layout");
        let keys = vec![Field { name: "k".into(), ty: Type::string() }];
        let spec = Arc::new(WindowSpec {
            window: ir::Window::Tumbling { size_ms: 1 },
            lateness: 0,
            emit_every: None,
            key_fields: vec![0],
            ts_field: 2,
            ts_offset: 0,
            stamp_field: 3,
            acc,
            result: Arc::new(Layout::new(super::super::window::result_record(&keys, &aggs))),
        });
        KeyedAggOp::new(spec, ttl, event_time, &input(), 2)
    }

    /// One input event: a batch of (key, v, ts, stamp) rows, or a watermark, from an
    /// upstream instance.
    #[derive(Clone, Debug)]
    enum Step {
        Rows(usize, Vec<(String, i64, i64, i64)>),
        Wm(usize, i64),
    }

    /// Applies `s`; the results as text (all fields: keys, aggregates, revision, `$wm`).
    fn step(op: &mut KeyedAggOp, s: &Step, out: &mut Vec<String>) {
        match s {
            Step::Rows(from, rows) => {
                let mut b = BatchBuilder::new(input());
                for (k, v, ts, wm) in rows {
                    b.push_values(&[
                        Value::String(k.as_str().into()),
                        Value::Int(*v),
                        Value::Timestamp(*ts),
                        Value::Timestamp(*wm),
                    ])
                    .expect("row");
                }
                assert!(op.process(&b.finish(), *from).expect("process").is_empty());
            }
            Step::Wm(from, wm) => op.watermark(*from, *wm),
        }
        if let Some(b) = op.take_results() {
            out.extend(b.to_values().iter().map(|v| format!("{v:?}")));
        }
    }

    /// Steps from generated rows (key, v, time, how far the stamp trails, from, and
    /// whether a watermark of the other instance follows the row's batch).
    fn steps(raw: &[(usize, i64, i64, i64, bool, bool)], chunk: usize) -> Vec<Step> {
        let mut stamp = WM_MIN;
        let mut rows = Vec::new();
        for (n, &(k, v, ts, back, _, _)) in raw.iter().enumerate() {
            let t = (ts / 100 + n as i64 / 2) * 100;
            let key = if k % 3 == 2 { format!("a-longer-key-{k}") } else { format!("k{k}") };
            rows.push((key, v, t, stamp));
            stamp = stamp.max(t - (back / 100) * 100 - 1);
        }
        let mut out = Vec::new();
        for (c, part) in rows.chunks(chunk).enumerate() {
            let (_, _, _, _, from, wm) = raw[c * chunk];
            let from = usize::from(from);
            out.push(Step::Rows(from, part.to_vec()));
            if wm {
                out.push(Step::Wm(1 - from, part.last().map_or(WM_MIN, |r| r.3)));
            }
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]
        /// An operator run to the end (A); one run to step k, snapshotted and carried on
        /// (B); and a fresh one restored from B's snapshot and run from step k (C): B's
        /// results before the snapshot then C's are A's, in order (revisions, forgotten
        /// keys and stamps included), and so are B's own.
        #[test]
        fn a_restored_keyed_aggregate_carries_on_as_the_snapshotted_one(
            raw in proptest::collection::vec(
                (0usize..20, -50i64..50, 0i64..20_000, 0i64..3_000, proptest::prelude::any::<bool>(), proptest::prelude::any::<bool>()),
                1..200,
            ),
            ttl in 0u8..4,
            chunk in 1usize..40,
            cut in 0usize..=1000,
        ) {
            // Without TTL in event and processing time, with TTL in event time.
            let (ttl, event_time) = [(None, true), (None, false), (Some(300), true), (Some(2_000), true)][ttl as usize];
            let steps = steps(&raw, chunk);
            let k = cut * steps.len() / 1000;
            let mut a = rich_op(ttl, event_time);
            let mut want = Vec::new();
            for s in &steps {
                step(&mut a, s, &mut want);
            }
            a.finish();
            let mut b = rich_op(ttl, event_time);
            let mut before = Vec::new();
            for s in &steps[..k] {
                step(&mut b, s, &mut before);
            }
            let snap = b.snapshot().expect("snapshot");
            let mut c = rich_op(ttl, event_time);
            c.restore(&snap).expect("restore");
            let (mut after, mut b_after) = (before.clone(), before);
            for s in &steps[k..] {
                step(&mut c, s, &mut after);
                step(&mut b, s, &mut b_after);
            }
            proptest::prop_assert_eq!(&after, &want, "restored");
            proptest::prop_assert_eq!(&b_after, &want, "snapshotted");
            proptest::prop_assert_eq!(c.keys(), a.keys());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// An operator run to the end (A); one (B) that takes a full snapshot or a delta
        /// at random steps (the first a full one) and carries on; and one (C) restored
        /// from one of B's full snapshots and given B's deltas after it in order (up to
        /// B's next full snapshot), then run from there: B's results before that point
        /// then C's are A's, in order (revisions, forgotten keys and stamps included). A
        /// delta skipping one, one after B's next full snapshot, and the last one applied
        /// again are refused and change nothing.
        #[test]
        fn a_keyed_aggregate_restored_from_a_snapshot_and_deltas_carries_on_as_the_original(
            raw in proptest::collection::vec(
                (0usize..20, -50i64..50, 0i64..20_000, 0i64..3_000, proptest::prelude::any::<bool>(), proptest::prelude::any::<bool>()),
                1..200,
            ),
            ttl in 0u8..4,
            chunk in 1usize..40,
            cuts in proptest::collection::vec((0usize..=1000, 0u8..5), 1..7),
            pick in 0usize..8,
        ) {
            let (ttl, event_time) = [(None, true), (None, false), (Some(300), true), (Some(2_000), true)][ttl as usize];
            let steps = steps(&raw, chunk);
            let mut cuts: Vec<(usize, bool)> = cuts.iter().map(|&(c, f)| (c * steps.len() / 1000, f == 0)).collect();
            cuts.sort_by_key(|c| c.0);
            cuts[0].1 = true;
            let mut a = rich_op(ttl, event_time);
            let mut want = Vec::new();
            for s in &steps {
                step(&mut a, s, &mut want);
            }
            let mut b = rich_op(ttl, event_time);
            let mut out = Vec::new();
            let mut taken = Vec::new();
            let mut at = 0;
            for &(cut, full) in &cuts {
                for s in &steps[at..cut] {
                    step(&mut b, s, &mut out);
                }
                at = cut;
                let bytes = if full { b.snapshot() } else { b.snapshot_delta() }.expect("snapshot");
                taken.push((cut, full, bytes, out.clone()));
            }
            let fulls: Vec<usize> = (0..taken.len()).filter(|&i| taken[i].1).collect();
            let base = fulls[pick % fulls.len()];
            let mut c = rich_op(ttl, event_time);
            c.restore(&taken[base].2).expect("restore");
            if base + 2 < taken.len() && !taken[base + 1].1 && !taken[base + 2].1 {
                let skip = c.apply_delta(&taken[base + 2].2);
                proptest::prop_assert!(skip.as_ref().is_err_and(|e| e.contains("in order")), "{:?}", skip);
            }
            let mut last = base;
            for (i, t) in taken.iter().enumerate().skip(base + 1) {
                if t.1 {
                    if let Some(d) = taken[i + 1..].iter().find(|d| !d.1) {
                        let other = c.apply_delta(&d.2);
                        proptest::prop_assert!(other.as_ref().is_err_and(|e| e.contains("chain")), "{:?}", other);
                    }
                    break;
                }
                c.apply_delta(&t.2).expect("apply");
                last = i;
            }
            if last > base {
                proptest::prop_assert!(c.apply_delta(&taken[last].2).is_err(), "a delta applied twice");
            }
            let (cut, _, _, before) = &taken[last];
            let mut got = before.clone();
            for s in &steps[*cut..] {
                step(&mut c, s, &mut got);
            }
            proptest::prop_assert_eq!(&got, &want);
            proptest::prop_assert_eq!(c.keys(), a.keys());
        }
    }

    /// A real full snapshot of keys with TTL, and a delta some steps later (keys
    /// updated, created and forgotten).
    fn real_delta() -> (Vec<u8>, Vec<u8>) {
        let raw: Vec<(usize, i64, i64, i64, bool, bool)> = (0..120)
            .map(|i: usize| {
                (
                    i * 7 % 17 + usize::from(i > 60) * 3,
                    i as i64 - 40,
                    (i as i64 * 7_919) % 20_000,
                    (i as i64 * 31) % 3_000,
                    i.is_multiple_of(5),
                    i.is_multiple_of(3),
                )
            })
            .collect();
        let mut op = rich_op(Some(300), true);
        let mut sink = Vec::new();
        let steps = steps(&raw, 7);
        for s in &steps[..steps.len() / 2] {
            step(&mut op, s, &mut sink);
        }
        let full = op.snapshot().expect("snapshot");
        for s in &steps[steps.len() / 2..] {
            step(&mut op, s, &mut sink);
        }
        assert!(op.removed_n > 0 && op.changed.len() > 3, "keys forgotten and changed");
        (full, op.snapshot_delta().expect("delta"))
    }

    #[test]
    fn damaged_or_misplaced_aggregate_deltas_are_refused_without_panicking() {
        let (full, delta) = real_delta();
        let restored = || {
            let mut op = rich_op(Some(300), true);
            op.restore(&full).expect("restore");
            op
        };
        let mut op = restored();
        for n in 0..delta.len() {
            assert!(op.apply_delta(&delta[..n]).is_err(), "prefix of {n} bytes");
        }
        for bit in 0..delta.len() * 8 {
            let mut bad = delta.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(op.apply_delta(&bad).is_err(), "bit {bit} flipped");
        }
        op.apply_delta(&delta).expect("the delta, after all that was refused");
        assert!(op.apply_delta(&delta).is_err_and(|e| e.contains("in order")), "twice");
        // Past the checksum: refused, and the operator is as it was or fresh.
        let after = |mut op: KeyedAggOp| {
            if op.apply_delta(&delta).is_err() {
                op.restore(&full).expect("a refused delta leaves the operator as it was, or fresh");
            }
        };
        let body = delta.len() - 4;
        for n in 6..body {
            let mut cut = delta[..n].to_vec();
            cut.extend_from_slice(&[0; 4]);
            snapshot::reseal(&mut cut);
            let mut op = restored();
            assert!(op.apply_delta(&cut).is_err(), "payload cut at {n}");
            after(op);
        }
        for at in 6..body {
            for mask in [0x01u8, 0x10, 0x80, 0xFF] {
                let mut bad = delta.clone();
                bad[at] ^= mask;
                snapshot::reseal(&mut bad);
                let mut op = restored();
                if op.apply_delta(&bad).is_err() {
                    after(op);
                }
            }
        }
        assert!(rich_op(Some(300), true).apply_delta(&delta).is_err_and(|e| e.contains("restored")));
        let mut moved = restored();
        moved.watermark(0, WM_MIN + 1);
        assert!(moved.apply_delta(&delta).is_err_and(|e| e.contains("processed")));
        let mut other = restored();
        let again = other.snapshot().expect("snapshot");
        let mut other = rich_op(Some(300), true);
        other.restore(&again).expect("restore");
        assert!(other.apply_delta(&delta).is_err_and(|e| e.contains("chain")));
        assert!(restored().apply_delta(&full).is_err_and(|e| e.contains("kind")));
        assert!(rich_op(Some(300), false).apply_delta(&delta).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Random bytes, bare and behind a real delta's first bytes and a valid
        /// checksum, are refused or applied, never a panic.
        #[test]
        fn applying_random_bytes_as_an_aggregate_delta_does_not_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            keep in 0usize..=1000,
        ) {
            let (full, delta) = real_delta();
            let restored = || {
                let mut op = rich_op(Some(300), true);
                op.restore(&full).expect("restore");
                op
            };
            let _ = restored().apply_delta(&bytes);
            let mut framed = delta[..6 + keep * (delta.len() - 10) / 1000].to_vec();
            framed.extend_from_slice(&bytes);
            framed.extend_from_slice(&[0; 4]);
            snapshot::reseal(&mut framed);
            let mut op = restored();
            if op.apply_delta(&framed).is_ok() {
                // Whatever it holds, the operator carries on.
                op.watermark(0, WM_MAX - 1);
                op.finish();
            }
        }
    }

    #[test]
    fn restoring_damaged_aggregate_snapshots_is_refused_without_panicking() {
        let raw: Vec<(usize, i64, i64, i64, bool, bool)> = (0..80)
            .map(|i: usize| {
                (
                    i * 7 % 17,
                    i as i64 - 40,
                    (i as i64 * 7_919) % 20_000,
                    (i as i64 * 31) % 3_000,
                    i.is_multiple_of(5),
                    i.is_multiple_of(3),
                )
            })
            .collect();
        let mut op = rich_op(Some(2_000), true);
        let mut sink = Vec::new();
        for s in &steps(&raw, 7) {
            step(&mut op, s, &mut sink);
        }
        assert!(op.keys() > 3);
        let snap = op.snapshot().expect("snapshot");
        let fresh = || rich_op(Some(2_000), true);
        fresh().restore(&snap).expect("restore");
        for n in 0..snap.len() {
            assert!(fresh().restore(&snap[..n]).is_err(), "prefix of {n} bytes");
        }
        for bit in 0..snap.len() * 8 {
            let mut bad = snap.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(fresh().restore(&bad).is_err(), "bit {bit} flipped");
        }
        // Past the checksum: the decoder sees the damage.
        let body = snap.len() - 4;
        for n in 6..body {
            let mut cut = snap[..n].to_vec();
            cut.extend_from_slice(&[0; 4]);
            snapshot::reseal(&mut cut);
            let mut op = fresh();
            assert!(op.restore(&cut).is_err(), "payload cut at {n}");
            if n.is_multiple_of(16) {
                op.restore(&snap).expect("a refused snapshot leaves the operator fresh");
            }
        }
        for at in 6..body {
            for mask in [0x01u8, 0x10, 0x80, 0xFF] {
                let mut bad = snap.clone();
                bad[at] ^= mask;
                snapshot::reseal(&mut bad);
                let _ = fresh().restore(&bad);
            }
        }
        assert!(rich_op(Some(2_000), false).restore(&snap).is_err_and(|e| e.contains("shape")));
        let mut used = fresh();
        used.restore(&snap).expect("restore");
        assert!(used.restore(&snap).is_err(), "not fresh");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Random bytes, bare and behind a valid header and checksum, are refused or
        /// restored, never a panic.
        #[test]
        fn restoring_random_bytes_as_an_aggregate_snapshot_does_not_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            keep in 0usize..=1000,
        ) {
            let _ = rich_op(None, true).restore(&bytes);
            let mut op = rich_op(None, true);
            step(&mut op, &Step::Rows(0, vec![("a".into(), 1, 5, 0), ("bb".into(), 2, 7, 3)]), &mut Vec::new());
            let snap = op.snapshot().expect("snapshot");
            let mut framed = snap[..6 + keep * (snap.len() - 10) / 1000].to_vec();
            framed.extend_from_slice(&bytes);
            framed.extend_from_slice(&[0; 4]);
            snapshot::reseal(&mut framed);
            let _ = rich_op(None, true).restore(&framed);
        }
    }
}
