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
use super::stamp::{WM_MAX, WM_MIN};
use super::window::{decode_key, encode_key, KeyTable, WindowSpec};
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
        self.started.elapsed().as_millis() as i64
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
                None => (KeyState { acc: self.accs.alloc(), emitted: 0, last: t }, true),
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
            self.state.insert(key, st);
        }
        Ok(failed)
    }

    /// A watermark from upstream instance `from` (event-time TTL).
    pub fn watermark(&mut self, from: usize, wm: i64) {
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
        self.wm = WM_MAX;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
