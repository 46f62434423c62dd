//! Moving batches between stage instances: messages, routers, key hashing, acks.
//!
//! A stage's instances each own a bounded channel; every upstream instance holds a
//! [`Router`] with a sender to each of them (a full channel blocks the sender: that
//! is the backpressure). The router follows the stage's [`Exchange`]: forward,
//! round-robin, gather, or hash of the `key_by` keys, splitting a batch by key so
//! every record of a key reaches the same instance. When an upstream instance ends it
//! sends [`Msg::End`] to every downstream instance; an instance ends when it has
//! received one from each of its upstream instances.
//!
//! [`Ack`] ties a batch read from a topic to the consumer-group offsets it completes:
//! every batch derived from it holds a clone, and when the last clone is dropped (its
//! records are written) the [`CommitTracker`] commits, in read order, the offsets of
//! the longest prefix of completed batches. A failed run commits nothing more.

use crate::log::GroupStore;
use flow_compiler::exec::interp::{self, EvalCtx};
use flow_compiler::ir::{self, ExprKind};
use flow_compiler::physical::Exchange;
use flow_types::row::{encode_value, Batch, BatchBuilder, RowRef, SlotKind};
use rustc_hash::FxHasher;
use std::collections::BTreeMap;
use std::hash::Hasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::Sender;

/// What flows from one stage instance to the next.
pub(crate) enum Msg {
    Data(InBatch),
    /// The sending instance's event time has reached `wm`: nothing it sends later is
    /// stamped below it (`stamp.rs`).
    Watermark {
        from: usize,
        wm: i64,
    },
    /// Checkpoint `id`'s barrier: everything the sending instance sent before it is in
    /// the checkpoint, nothing after it (run/checkpoint.rs).
    Barrier {
        from: usize,
        id: u64,
    },
    /// The sending instance has no more records.
    End {
        from: usize,
    },
}

/// A batch plus where its rows came from.
pub(crate) struct InBatch {
    pub batch: Batch,
    /// The rows' origin, for dead-letter positions, e.g. `data/txns.jsonl:120-4215`.
    pub origin: Arc<str>,
    /// For topic inputs: the offsets this batch completes once written.
    pub ack: Option<Arc<Ack>>,
    /// The upstream instance that sent it (set by the [`Router`]).
    pub from: usize,
}

impl InBatch {
    pub fn new(batch: Batch, origin: Arc<str>, ack: Option<Arc<Ack>>) -> InBatch {
        InBatch { batch, origin, ack, from: 0 }
    }
}

/// Hands a read batch on: the batch, its origin, its ack, and the partition of its rows
/// (none: partition 0; one: all rows; else one per row).
pub(crate) type SendAcked<'a> = dyn Fn(Batch, String, Option<Arc<Ack>>, &[u32]) -> bool + 'a;

/// Commits a partition -> next-offset map.
pub(crate) type CommitFn = dyn Fn(&BTreeMap<u32, u64>) -> Result<(), String> + Send + Sync;

/// Consumer-group offsets committed in read order as batches complete.
pub(crate) struct CommitTracker {
    commit: Box<CommitFn>,
    failed: Arc<AtomicBool>,
    state: Mutex<TrackState>,
}

#[derive(Default)]
struct TrackState {
    next: u64,
    issued: u64,
    done: BTreeMap<u64, BTreeMap<u32, u64>>,
    error: Option<String>,
}

impl CommitTracker {
    pub fn new(store: GroupStore, group: &str, topic: &str, failed: Arc<AtomicBool>) -> Arc<CommitTracker> {
        let (group, topic) = (group.to_string(), topic.to_string());
        let commit =
            move |offsets: &BTreeMap<u32, u64>| store.commit(&group, &topic, offsets).map_err(|e| e.to_string());
        CommitTracker::with_commit(Box::new(commit), failed)
    }

    /// A tracker that hands each completed prefix's offsets to `commit` (the Kafka
    /// connector stores them in its consumer; `kafka.rs`).
    pub fn with_commit(commit: Box<CommitFn>, failed: Arc<AtomicBool>) -> Arc<CommitTracker> {
        Arc::new(CommitTracker { commit, failed, state: Mutex::new(TrackState::default()) })
    }

    /// An ack for the next batch read, completing `offsets` (next offset per partition).
    pub fn ack(self: &Arc<Self>, offsets: BTreeMap<u32, u64>) -> Arc<Ack> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let seq = st.issued;
        st.issued += 1;
        Arc::new(Ack { seq, offsets, tracker: self.clone(), abandoned: AtomicBool::new(false) })
    }

    fn complete(&self, seq: u64, offsets: BTreeMap<u32, u64>) {
        if self.failed.load(Ordering::SeqCst) {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.done.insert(seq, offsets);
        let mut last = None;
        loop {
            let at = st.next;
            let Some(o) = st.done.remove(&at) else { break };
            st.next += 1;
            last = Some(o);
        }
        if let Some(offsets) = last {
            if let Err(e) = (self.commit)(&offsets) {
                st.error.get_or_insert(e);
            }
        }
    }

    /// The first commit error, if any.
    pub fn error(&self) -> Option<String> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).error.clone()
    }
}

/// Completes a read batch's offsets when dropped (see the module docs).
pub(crate) struct Ack {
    seq: u64,
    offsets: BTreeMap<u32, u64>,
    tracker: Arc<CommitTracker>,
    /// Its records were not fully processed (a stopped run's open windows): it never
    /// completes, so neither its offsets nor any later ones are committed.
    abandoned: AtomicBool,
}

impl Ack {
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if !self.abandoned.load(Ordering::SeqCst) {
            self.tracker.complete(self.seq, std::mem::take(&mut self.offsets));
        }
    }
}

/// One key of a hash exchange.
enum KeyPart {
    /// A field of the input row, hashed straight from its slot.
    Field(usize, SlotKind),
    /// An expression, evaluated per row (its value's encoding is hashed).
    Expr(ir::Expr),
}

/// Hashes rows by a `key_by`'s keys, the same way in every run and process.
pub(crate) struct KeyHasher {
    parts: Vec<KeyPart>,
    program: Arc<ir::Program>,
}

impl KeyHasher {
    pub fn new(keys: &[(String, ir::Expr)], input: &flow_types::row::Layout, program: Arc<ir::Program>) -> Self {
        let parts = keys
            .iter()
            .map(|(_, e)| match e.kind {
                ExprKind::Field(i) => KeyPart::Field(i, input.slot_kinds[i]),
                _ => KeyPart::Expr(e.clone()),
            })
            .collect();
        KeyHasher { parts, program }
    }

    /// The key hash of `row`. A key expression that fails hashes as null: the
    /// operator after the exchange evaluates it again and reports the failure.
    pub fn hash(&self, row: &RowRef, ctx: &EvalCtx) -> u64 {
        let mut h = FxHasher::default();
        let mut buf = Vec::new();
        for p in &self.parts {
            match p {
                KeyPart::Field(i, _) if row.is_null(*i) => h.write_u8(0xff),
                KeyPart::Field(i, kind) => match kind {
                    SlotKind::Str | SlotKind::Encoded => {
                        let b = row.encoded(*i);
                        h.write_usize(b.len());
                        h.write(b);
                    }
                    SlotKind::F64 => {
                        let f = row.f64(*i);
                        // -0.0 == 0.0 and every NaN is one key.
                        let bits = if f == 0.0 {
                            0
                        } else if f.is_nan() {
                            f64::NAN.to_bits()
                        } else {
                            f.to_bits()
                        };
                        h.write_u64(bits);
                    }
                    SlotKind::Dec128 { .. } => h.write_i128(row.i128(*i)),
                    SlotKind::Bool | SlotKind::I64 | SlotKind::Dec64 { .. } => h.write_i64(row.i64(*i)),
                },
                KeyPart::Expr(e) => {
                    buf.clear();
                    match interp::eval(e, row, ctx) {
                        Ok(v) if !matches!(v, flow_types::Value::Null) => {
                            encode_value(&v, &mut buf);
                            h.write_usize(buf.len());
                            h.write(&buf);
                        }
                        _ => h.write_u8(0xff),
                    }
                }
            }
        }
        // Fx mixes the low bits poorly for small integers: finish with a murmur3 mix.
        let mut x = h.finish();
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }

    pub fn program(&self) -> &ir::Program {
        &self.program
    }
}

/// The rows of `batch` for which `keep` holds (row bytes copied; strings stay in the
/// shared arena).
pub(crate) fn select_rows(batch: &Batch, keep: impl Fn(usize) -> bool) -> Batch {
    let w = batch.layout.width as usize;
    let mut b = BatchBuilder::with_base(batch.layout.clone(), batch.arena_bytes());
    let mut n = 0;
    let (rows, _, _) = b.raw_parts();
    for i in (0..batch.len).filter(|&i| keep(i)) {
        rows.extend_from_slice(&batch.rows[i * w..(i + 1) * w]);
        n += 1;
    }
    b.set_len(n);
    b.finish()
}

/// An upstream instance's senders to the next stage's instances.
pub(crate) struct Router {
    exchange: Exchange,
    to: Vec<Sender<Msg>>,
    /// This instance's index (for forward).
    me: usize,
    next: usize,
    key: Option<KeyHasher>,
}

impl Router {
    pub fn new(exchange: Exchange, to: Vec<Sender<Msg>>, me: usize, key: Option<KeyHasher>) -> Router {
        Router { exchange, to, me, next: me, key }
    }

    /// Which instance gets which part of `inb`.
    fn split(&mut self, mut inb: InBatch) -> Vec<(usize, InBatch)> {
        let n = self.to.len();
        inb.from = self.me;
        match &self.exchange {
            _ if n == 1 => vec![(0, inb)],
            Exchange::Forward => vec![(self.me % n, inb)],
            Exchange::Gather => vec![(0, inb)],
            Exchange::Rebalance => {
                self.next = (self.next + 1) % n;
                vec![(self.next, inb)]
            }
            Exchange::Hash(_) => {
                let Some(key) = &self.key else { return vec![(0, inb)] };
                let ctx = EvalCtx::new(key.program());
                // One pass: each row's bytes are copied once, into its instance's part;
                // strings stay in the shared arena.
                let batch = &inb.batch;
                let w = batch.layout.width as usize;
                let arena = batch.arena_bytes();
                let mut parts: Vec<(BatchBuilder, usize)> =
                    (0..n).map(|_| (BatchBuilder::with_base(batch.layout.clone(), arena.clone()), 0)).collect();
                for i in 0..batch.len {
                    let t = (key.hash(&batch.row(i), &ctx) % n as u64) as usize;
                    let (b, len) = &mut parts[t];
                    b.raw_parts().0.extend_from_slice(&batch.rows[i * w..(i + 1) * w]);
                    *len += 1;
                }
                parts
                    .into_iter()
                    .enumerate()
                    .filter(|(_, (_, len))| *len > 0)
                    .map(|(t, (mut b, len))| {
                        b.set_len(len);
                        (
                            t,
                            InBatch {
                                batch: b.finish(),
                                origin: inb.origin.clone(),
                                ack: inb.ack.clone(),
                                from: inb.from,
                            },
                        )
                    })
                    .collect()
            }
        }
    }

    /// Sends `inb` on; false once the receivers are gone (the run is stopping).
    pub async fn send(&mut self, inb: InBatch) -> bool {
        for (t, part) in self.split(inb) {
            if self.to[t].send(Msg::Data(part)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// [`Router::send`] from a blocking thread.
    pub fn blocking_send(&mut self, inb: InBatch) -> bool {
        for (t, part) in self.split(inb) {
            if self.to[t].blocking_send(Msg::Data(part)).is_err() {
                return false;
            }
        }
        true
    }

    /// Tells every downstream instance this instance's watermark.
    pub async fn watermark(&mut self, wm: i64) -> bool {
        for t in &self.to {
            if t.send(Msg::Watermark { from: self.me, wm }).await.is_err() {
                return false;
            }
        }
        true
    }

    /// [`Router::watermark`] from a blocking thread.
    pub fn blocking_watermark(&mut self, wm: i64) -> bool {
        for t in &self.to {
            if t.blocking_send(Msg::Watermark { from: self.me, wm }).is_err() {
                return false;
            }
        }
        true
    }

    /// Sends checkpoint `id`'s barrier to every downstream instance; false once the
    /// receivers are gone.
    pub async fn barrier(&mut self, id: u64) -> bool {
        for t in &self.to {
            if t.send(Msg::Barrier { from: self.me, id }).await.is_err() {
                return false;
            }
        }
        true
    }

    /// [`Router::barrier`] from a blocking thread.
    pub fn blocking_barrier(&mut self, id: u64) -> bool {
        for t in &self.to {
            if t.blocking_send(Msg::Barrier { from: self.me, id }).is_err() {
                return false;
            }
        }
        true
    }

    pub async fn end(self) {
        for t in &self.to {
            let _ = t.send(Msg::End { from: self.me }).await;
        }
    }

    pub fn blocking_end(self) {
        for t in &self.to {
            let _ = t.blocking_send(Msg::End { from: self.me });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_types::row::Layout;
    use flow_types::{Field, Kind, RecordType, Type, Value};

    fn layout() -> Arc<Layout> {
        let rec = RecordType {
            name: None,
            fields: vec![
                Field { name: "k".into(), ty: Type::new(Kind::String) },
                Field { name: "v".into(), ty: Type::new(Kind::Int) },
            ],
        };
        Arc::new(Layout::new(Arc::new(rec)))
    }

    fn batch(rows: &[(&str, i64)]) -> Batch {
        let mut b = BatchBuilder::new(layout());
        for (k, v) in rows {
            b.push_values(&[Value::String((*k).into()), Value::Int(*v)]).expect("row");
        }
        b.finish()
    }

    fn program() -> Arc<ir::Program> {
        let c = flow_compiler::compile_str("t.flow", "schema T { k: string }");
        Arc::new(c.program.expect("program"))
    }

    fn key_field(i: usize) -> (String, ir::Expr) {
        let c = flow_compiler::compile_str(
            "t.flow",
            "schema T { k: string, v: int }\nsource s: T = stdin(format: json)\nsink o: T = stdout(format: json)\npipeline p = from s | key_by k -> o",
        );
        let p = c.program.expect("program");
        match &p.pipelines[0].ops[0].kind {
            ir::OpKind::KeyBy(keys) => {
                assert_eq!(i, 0);
                keys[0].clone()
            }
            _ => unreachable!("key_by"),
        }
    }

    #[tokio::test]
    async fn hash_exchange_sends_each_key_to_one_instance() {
        let (mut txs, mut rxs) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            txs.push(tx);
            rxs.push(rx);
        }
        let keys = vec![key_field(0)];
        let mut r =
            Router::new(Exchange::Hash(keys.clone()), txs, 0, Some(KeyHasher::new(&keys, &layout(), program())));
        let rows: Vec<(String, i64)> = (0..300).map(|i| (format!("key{}", i % 17), i)).collect();
        let refs: Vec<(&str, i64)> = rows.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        for chunk in refs.chunks(50) {
            assert!(r.send(InBatch::new(batch(chunk), "t".into(), None)).await);
        }
        r.end().await;
        let mut owner: std::collections::HashMap<String, usize> = Default::default();
        let mut total = 0;
        for (t, rx) in rxs.iter_mut().enumerate() {
            let mut ended = false;
            while let Some(m) = rx.recv().await {
                match m {
                    Msg::Data(b) => {
                        for row in b.batch.to_values() {
                            total += 1;
                            let Value::String(k) = &row[0] else { panic!("key") };
                            let prev = owner.insert(k.to_string(), t);
                            assert!(prev.is_none_or(|p| p == t), "key {k} went to {prev:?} and {t}");
                        }
                    }
                    Msg::End { .. } => {
                        ended = true;
                        break;
                    }
                    Msg::Watermark { .. } | Msg::Barrier { .. } => {}
                }
            }
            assert!(ended);
        }
        assert_eq!(total, 300);
        let used: std::collections::HashSet<usize> = owner.values().copied().collect();
        assert_eq!(used.len(), 3, "17 keys should spread over 3 instances");
    }

    #[test]
    fn commits_follow_read_order() {
        let dir = tempfile::tempdir().expect("dir");
        let store = || GroupStore::new(dir.path().to_path_buf(), Arc::new(crate::log::io::StdIo));
        let t = CommitTracker::new(store(), "g", "t", Arc::new(AtomicBool::new(false)));
        let a = t.ack(BTreeMap::from([(0, 10)]));
        let b = t.ack(BTreeMap::from([(0, 20)]));
        drop(b);
        assert!(store().committed("g", "t").expect("read").is_empty(), "b completed before a");
        drop(a);
        assert_eq!(store().committed("g", "t").expect("read"), BTreeMap::from([(0, 20)]));
    }

    #[test]
    fn a_failed_run_commits_nothing_more() {
        let dir = tempfile::tempdir().expect("dir");
        let store = || GroupStore::new(dir.path().to_path_buf(), Arc::new(crate::log::io::StdIo));
        let failed = Arc::new(AtomicBool::new(false));
        let t = CommitTracker::new(store(), "g", "t", failed.clone());
        let a = t.ack(BTreeMap::from([(0, 10)]));
        failed.store(true, Ordering::SeqCst);
        drop(a);
        assert!(store().committed("g", "t").expect("read").is_empty());
    }
}
