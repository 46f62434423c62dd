//! The window operator: `window ... | aggregate { }` over event time, in memory.
//!
//! One [`WindowOp`] per stage instance owns the state of the keys hashed to it:
//!
//! - **Keys** are interned: their bytes (the key fields' slots, nulls marked) are stored
//!   once, in a [`KeyTable`], and windows refer to them by a `u32` id. A key whose last
//!   window is gone is forgotten.
//! - **Aligned windows** (tumbling, sliding) share their bounds across keys, so state is
//!   grouped by window: a `BTreeMap` from window end to the group of keys with an open
//!   window there. Firing a window is walking one group; timers per key are not needed.
//! - **Session windows** are per key: a short list of open sessions per key, and a
//!   heap of (time, key) timers checked lazily (a timer whose session has moved on is
//!   skipped).
//! - **Accumulators** live in an [`AccStore`] slab (`agg.rs`).
//!
//! Time follows `semantics.md`: a record is judged against its own watermark (the
//! `$wm` stamp, `stamp.rs`); a window fires when the operator's watermark reaches
//! `end - 1`; it is kept `allowed_lateness` longer, and a record that lands in it then
//! fires it again at once as the next revision. A record none of whose windows accepts
//! it is late: counted, and handed back for the late output. The operator's watermark is
//! the minimum over its upstream instances (a record's stamp advances its instance's).

use super::agg::{AccLayout, AccStore};
use super::stamp::{WM_MAX, WM_MIN};
use flow_compiler::ir::{self, Window};
use flow_types::row::{Batch, BatchBuilder, Layout, RowRef, SlotKind};
use hashbrown::HashTable;
use rustc_hash::{FxHashMap, FxHasher};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::hash::Hasher;
use std::sync::Arc;

/// What every instance of a window stage shares.
#[derive(Debug)]
pub(crate) struct WindowSpec {
    pub window: Window,
    pub lateness: i64,
    pub emit_every: Option<i64>,
    /// Key fields of the operator's input rows (after any pre-projection).
    pub key_fields: Vec<usize>,
    pub ts_field: usize,
    pub ts_offset: i64,
    pub stamp_field: usize,
    pub acc: AccLayout,
    /// Rows the operator emits: keys, window_start, window_end, aggregates, revision, `$wm`.
    pub result: Arc<Layout>,
}

impl WindowSpec {
    fn revision_field(&self) -> usize {
        self.key_fields.len() + 2 + self.acc.len()
    }
}

/// Interned keys: bytes stored once, looked up by hash.
#[derive(Default)]
pub(crate) struct KeyTable {
    table: HashTable<u32>,
    keys: Vec<Box<[u8]>>,
    hashes: Vec<u64>,
    refs: Vec<u32>,
    free: Vec<u32>,
}

fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(b);
    h.finish()
}

impl KeyTable {
    /// The id of `key`, interning it if new.
    fn intern(&mut self, key: &[u8]) -> u32 {
        let h = hash_bytes(key);
        let keys = &self.keys;
        if let Some(&id) = self.table.find(h, |&id| &*keys[id as usize] == key) {
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.keys[id as usize] = key.into();
                self.hashes[id as usize] = h;
                self.refs[id as usize] = 0;
                id
            }
            None => {
                self.keys.push(key.into());
                self.hashes.push(h);
                self.refs.push(0);
                (self.keys.len() - 1) as u32
            }
        };
        let hashes = &self.hashes;
        self.table.insert_unique(h, id, |&i| hashes[i as usize]);
        id
    }

    fn retain(&mut self, id: u32) {
        self.refs[id as usize] += 1;
    }

    /// Drops one reference; the key is forgotten with its last window.
    fn release(&mut self, id: u32) {
        let r = &mut self.refs[id as usize];
        *r -= 1;
        if *r == 0 {
            let h = self.hashes[id as usize];
            if let Ok(e) = self.table.find_entry(h, |&i| i == id) {
                e.remove();
            }
            self.keys[id as usize] = Box::default();
            self.free.push(id);
        }
    }

    /// Forgets an interned key nothing refers to (a late record's).
    fn forget_if_unused(&mut self, id: u32) {
        if self.refs[id as usize] == 0 {
            self.refs[id as usize] = 1;
            self.release(id);
        }
    }

    fn key(&self, id: u32) -> &[u8] {
        &self.keys[id as usize]
    }

    fn bytes(&self) -> usize {
        self.table.capacity() * 5
            + self.keys.capacity() * 16
            + self.keys.iter().map(|k| k.len()).sum::<usize>()
            + self.hashes.capacity() * 8
            + self.refs.capacity() * 4
    }
}

/// Appends the encoding of `row`'s key fields to `out`.
fn encode_key(row: &RowRef, fields: &[usize], kinds: &[SlotKind], out: &mut Vec<u8>) {
    for &f in fields {
        if row.is_null(f) {
            out.push(0);
            continue;
        }
        out.push(1);
        match kinds[f] {
            SlotKind::Str | SlotKind::Encoded => {
                let b = row.encoded(f);
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.extend_from_slice(b);
            }
            SlotKind::Dec128 { .. } => out.extend_from_slice(&row.i128(f).to_le_bytes()),
            SlotKind::F64 => {
                let x = row.f64(f);
                let x = if x == 0.0 {
                    0.0
                } else if x.is_nan() {
                    f64::NAN
                } else {
                    x
                };
                out.extend_from_slice(&x.to_bits().to_le_bytes());
            }
            _ => out.extend_from_slice(&row.i64(f).to_le_bytes()),
        }
    }
}

/// Writes an encoded key into fields `0..` of row `r`.
fn decode_key(mut key: &[u8], kinds: &[SlotKind], out: &mut BatchBuilder, r: usize) -> Result<(), String> {
    for (f, kind) in kinds.iter().enumerate() {
        let (&flag, rest) = key.split_first().ok_or("truncated key")?;
        key = rest;
        if flag == 0 {
            out.set_null(r, f);
            continue;
        }
        out.clear_null(r, f);
        match kind {
            SlotKind::Str | SlotKind::Encoded => {
                let n = u32::from_le_bytes(key[..4].try_into().map_err(|_| "truncated key")?) as usize;
                let off = out.arena_push(&key[4..4 + n]).map_err(|e| format!("{e:?}"))?;
                out.set_span(r, f, off, n as u32);
                key = &key[4 + n..];
            }
            SlotKind::Dec128 { .. } => {
                out.set_i128(r, f, i128::from_le_bytes(key[..16].try_into().map_err(|_| "truncated key")?));
                key = &key[16..];
            }
            _ => {
                out.set_i64(r, f, i64::from_le_bytes(key[..8].try_into().map_err(|_| "truncated key")?));
                key = &key[8..];
            }
        }
    }
    Ok(())
}

/// One key's window in an aligned group, or one session.
#[derive(Clone, Copy, Debug)]
struct Win {
    acc: u32,
    /// Results emitted so far (the next one's revision).
    emitted: u32,
    /// Changed since the last result.
    dirty: bool,
}

/// The keys with an open window `[end - size, end)`.
#[derive(Default)]
struct Group {
    wins: FxHashMap<u32, Win>,
    /// Insertion order of keys, so results come out in a deterministic order.
    order: Vec<u32>,
    /// Its final result has been emitted (it stays for allowed lateness).
    fired: bool,
    /// The next early result's event time (`emit every`).
    next_early: i64,
}

#[derive(Clone, Copy, Debug)]
struct Session {
    start: i64,
    end: i64,
    win: Win,
    fired: bool,
    next_early: i64,
}

/// What processing a batch produced besides results.
#[derive(Default)]
pub(crate) struct Outcome {
    /// Rows (of the operator's input) that every window refused: late.
    pub late: Vec<usize>,
    /// Rows whose aggregate update failed, with why.
    pub failed: Vec<(usize, &'static str)>,
}

/// The state of one instance (see the module docs).
pub(crate) struct WindowOp {
    spec: Arc<WindowSpec>,
    kinds: Vec<SlotKind>,
    key_kinds: Vec<SlotKind>,
    keys: KeyTable,
    accs: AccStore,
    groups: BTreeMap<i64, Group>,
    sessions: FxHashMap<u32, Vec<Session>>,
    timers: BinaryHeap<Reverse<(i64, u32)>>,
    /// Watermark per upstream instance, and their minimum.
    channels: Vec<i64>,
    pub wm: i64,
    /// The earliest watermark at which something may happen (a firing, a cleanup).
    next_due: i64,
    /// The watermark results are stamped with (the one before the current advance).
    emit_stamp: i64,
    results: BatchBuilder,
    scratch: Vec<u8>,
    pub late: u64,
}

/// `end - 1 + lateness`, saturating (the watermark at which a window is gone).
fn gone_at(end: i64, lateness: i64) -> i64 {
    end.saturating_sub(1).saturating_add(lateness)
}

impl WindowOp {
    pub fn new(spec: Arc<WindowSpec>, input: &Layout, upstream: usize) -> WindowOp {
        let acc = spec.acc.clone();
        let key_kinds = spec.key_fields.iter().map(|&f| input.slot_kinds[f]).collect();
        let results = BatchBuilder::new(spec.result.clone());
        WindowOp {
            kinds: input.slot_kinds.clone(),
            key_kinds,
            keys: KeyTable::default(),
            accs: AccStore::new(acc),
            groups: BTreeMap::new(),
            sessions: FxHashMap::default(),
            timers: BinaryHeap::new(),
            channels: vec![WM_MIN; upstream.max(1)],
            wm: WM_MIN,
            next_due: WM_MAX,
            emit_stamp: WM_MIN,
            results,
            scratch: Vec::new(),
            late: 0,
            spec,
        }
    }

    /// Open windows (aligned: key windows; sessions) and the bytes of state held.
    pub fn state_size(&self) -> (usize, usize) {
        let wins: usize = self.groups.values().map(|g| g.wins.len()).sum::<usize>()
            + self.sessions.values().map(Vec::len).sum::<usize>();
        let bytes = self.keys.bytes()
            + self.accs.bytes()
            + self.groups.values().map(|g| g.wins.capacity() * 21 + g.order.capacity() * 4 + 64).sum::<usize>()
            + self.sessions.capacity() * 33
            + self.sessions.values().map(|v| v.capacity() * std::mem::size_of::<Session>()).sum::<usize>()
            + self.timers.capacity() * 16;
        (wins, bytes)
    }

    /// Keys with open windows.
    #[allow(dead_code)]
    pub fn keys(&self) -> usize {
        self.keys.table.len()
    }

    /// Takes the results emitted so far (rows of `spec.result`).
    pub fn take_results(&mut self) -> Option<Batch> {
        if self.results.is_empty() {
            return None;
        }
        Some(std::mem::replace(&mut self.results, BatchBuilder::new(self.spec.result.clone())).finish())
    }

    /// Processes `batch` (rows from upstream instance `from`) in order.
    pub fn process(&mut self, batch: &Batch, from: usize) -> Result<Outcome, String> {
        let mut outcome = Outcome::default();
        let spec = self.spec.clone();
        for r in 0..batch.len {
            let row = batch.row(r);
            let stamp = row.i64(spec.stamp_field);
            if stamp > self.channels[from] {
                self.channels[from] = stamp;
                let m = self.channels.iter().copied().min().unwrap_or(stamp);
                if m > self.wm {
                    self.advance(m)?;
                }
            }
            let ts = row.i64(spec.ts_field).saturating_add(spec.ts_offset);
            self.scratch.clear();
            encode_key(&row, &spec.key_fields, &self.kinds, &mut self.scratch);
            let key = self.keys.intern(&self.scratch);
            let taken = match spec.window {
                Window::Tumbling { size_ms } => {
                    self.aligned(key, &row, ts, stamp, size_ms, size_ms, &mut outcome, r)?
                }
                Window::Sliding { size_ms, slide_ms } => {
                    self.aligned(key, &row, ts, stamp, size_ms, slide_ms, &mut outcome, r)?
                }
                Window::Session { gap_ms } => self.session(key, &row, ts, stamp, gap_ms, &mut outcome, r)?,
            };
            if !taken {
                self.keys.forget_if_unused(key);
                if outcome.failed.last().is_none_or(|(i, _)| *i != r) {
                    self.late += 1;
                    outcome.late.push(r);
                }
            }
        }
        Ok(outcome)
    }

    /// A watermark from upstream instance `from`.
    pub fn watermark(&mut self, from: usize, wm: i64) -> Result<(), String> {
        if wm > self.channels[from] {
            self.channels[from] = wm;
            let m = self.channels.iter().copied().min().unwrap_or(wm);
            if m > self.wm {
                self.advance(m)?;
            }
        }
        Ok(())
    }

    /// End of input: every window fires and is gone.
    pub fn finish(&mut self) -> Result<(), String> {
        for c in &mut self.channels {
            *c = WM_MAX;
        }
        self.advance(WM_MAX)
    }

    #[allow(clippy::too_many_arguments)]
    fn aligned(
        &mut self,
        key: u32,
        row: &RowRef,
        ts: i64,
        stamp: i64,
        size: i64,
        slide: i64,
        outcome: &mut Outcome,
        r: usize,
    ) -> Result<bool, String> {
        let lateness = self.spec.lateness;
        let last_start = ts - ts.rem_euclid(slide);
        let mut taken = false;
        let mut start = last_start;
        // Windows [start, start + size) holding ts, latest first.
        while start > ts - size {
            let end = start + size;
            start -= slide;
            if gone_at(end, lateness) <= stamp {
                // This and every earlier window are gone for this record.
                break;
            }
            let every = self.spec.emit_every;
            let group = self
                .groups
                .entry(end)
                .or_insert_with(|| Group { next_early: every.map_or(WM_MAX, |d| end - size + d), ..Group::default() });
            let (win, fresh) = match group.wins.get(&key) {
                Some(w) => (*w, false),
                None => (Win { acc: self.accs.alloc(), emitted: 0, dirty: false }, true),
            };
            if let Err(e) = self.accs.update(win.acc, row, ts) {
                if fresh {
                    self.accs.free(win.acc);
                }
                outcome.failed.push((r, e));
                return Ok(false);
            }
            let group = self.groups.get_mut(&end).expect("group");
            let fired = group.fired;
            let w = group.wins.entry(key).or_insert(win);
            w.dirty = true;
            if fresh {
                group.order.push(key);
                self.keys.retain(key);
            }
            let due = if fired { gone_at(end, lateness) } else { (end - 1).min(group.next_early.saturating_sub(1)) };
            self.next_due = self.next_due.min(due);
            if fired {
                // Within allowed lateness: the window fires again, now.
                let w = *group.wins.get(&key).expect("win");
                self.emit(key, end - size, end, w)?;
                let g = self.groups.get_mut(&end).expect("group");
                let w = g.wins.get_mut(&key).expect("win");
                w.emitted += 1;
                w.dirty = false;
            }
            taken = true;
        }
        Ok(taken)
    }

    #[allow(clippy::too_many_arguments)]
    fn session(
        &mut self,
        key: u32,
        row: &RowRef,
        ts: i64,
        stamp: i64,
        gap: i64,
        outcome: &mut Outcome,
        r: usize,
    ) -> Result<bool, String> {
        let lateness = self.spec.lateness;
        let (mut start, mut end) = (ts, ts.saturating_add(gap));
        let list = self.sessions.entry(key).or_default();
        // Open sessions this record overlaps or touches, merged into one window.
        let mut hit = Vec::new();
        for (i, s) in list.iter().enumerate() {
            if s.start <= end && s.end >= start {
                hit.push(i);
            }
        }
        // Touching is transitive through the record only: recompute bounds.
        for &i in &hit {
            start = start.min(list[i].start);
            end = end.max(list[i].end);
        }
        if gone_at(end, lateness) <= stamp {
            if list.is_empty() {
                self.sessions.remove(&key);
            }
            return Ok(false);
        }
        let fresh = hit.is_empty();
        let target = if fresh {
            Session {
                start,
                end,
                win: Win { acc: self.accs.alloc(), emitted: 0, dirty: false },
                fired: false,
                next_early: self.spec.emit_every.map_or(WM_MAX, |d| start.saturating_add(d)),
            }
        } else {
            list[hit[0]]
        };
        if let Err(e) = self.accs.update(target.win.acc, row, ts) {
            if fresh {
                self.accs.free(target.win.acc);
                let list = self.sessions.get(&key);
                if list.is_some_and(Vec::is_empty) {
                    self.sessions.remove(&key);
                }
            }
            outcome.failed.push((r, e));
            return Ok(false);
        }
        let mut merged = target;
        merged.start = start;
        merged.end = end;
        merged.win.dirty = true;
        let list = self.sessions.get_mut(&key).expect("sessions");
        // Fold the other hit sessions into the first.
        let mut refire = false;
        for &i in hit.iter().skip(1).rev() {
            let other = list.remove(i);
            self.accs.merge(merged.win.acc, other.win.acc).map_err(|e| e.to_string())?;
            self.accs.free(other.win.acc);
            merged.win.emitted = merged.win.emitted.max(other.win.emitted);
            merged.fired |= other.fired;
            merged.next_early = merged.next_early.min(other.next_early);
            self.keys.release(key);
        }
        refire |= merged.fired;
        if fresh {
            list.push(merged);
            self.keys.retain(key);
        } else {
            list[hit[0]] = merged;
        }
        // A merged session that had fired is an update, emitted now; it fires its
        // final result again only if its end moved past the watermark.
        if refire {
            let idx = if fresh { list.len() - 1 } else { hit[0] };
            let s = list[idx];
            self.emit(key, s.start, s.end, s.win)?;
            let list = self.sessions.get_mut(&key).expect("sessions");
            let s = &mut list[idx];
            s.win.emitted += 1;
            s.win.dirty = false;
            s.fired = s.end - 1 <= self.wm;
        }
        let due =
            if merged.fired { gone_at(end, lateness) } else { (end - 1).min(merged.next_early.saturating_sub(1)) };
        self.timers.push(Reverse((due, key)));
        self.next_due = self.next_due.min(due);
        Ok(true)
    }

    /// Moves the watermark to `wm`, firing and dropping what it passes.
    fn advance(&mut self, wm: i64) -> Result<(), String> {
        self.emit_stamp = self.wm;
        self.wm = wm;
        if wm < self.next_due {
            return Ok(());
        }
        let mut next_due = WM_MAX;
        match self.spec.window {
            Window::Session { .. } => {
                while let Some(&Reverse((at, key))) = self.timers.peek() {
                    if at > wm {
                        next_due = at;
                        break;
                    }
                    self.timers.pop();
                    self.fire_sessions(key)?;
                }
            }
            Window::Tumbling { size_ms } | Window::Sliding { size_ms, .. } => {
                let lateness = self.spec.lateness;
                let due: Vec<i64> = self.groups.keys().copied().take_while(|&end| end - 1 <= wm).collect();
                for end in due {
                    let g = self.groups.get_mut(&end).expect("group");
                    if !g.fired {
                        g.fired = true;
                        self.emit_group(end, size_ms, true)?;
                    }
                    if gone_at(end, lateness) <= wm {
                        self.drop_group(end);
                    }
                }
                // Early results of groups still open.
                if self.spec.emit_every.is_some() {
                    let early: Vec<i64> = self
                        .groups
                        .iter()
                        .filter(|(_, g)| !g.fired && g.next_early - 1 <= wm)
                        .map(|(&end, _)| end)
                        .collect();
                    for end in early {
                        self.emit_group(end, size_ms, false)?;
                        let every = self.spec.emit_every.unwrap_or(i64::MAX);
                        let g = self.groups.get_mut(&end).expect("group");
                        while g.next_early - 1 <= wm {
                            g.next_early = g.next_early.saturating_add(every);
                        }
                    }
                }
                for (&end, g) in &self.groups {
                    let due =
                        if g.fired { gone_at(end, lateness) } else { (end - 1).min(g.next_early.saturating_sub(1)) };
                    next_due = next_due.min(due);
                }
            }
        }
        self.next_due = next_due;
        Ok(())
    }

    /// Emits the group's windows: changed ones for early results, all for the final one.
    fn emit_group(&mut self, end: i64, size: i64, final_: bool) -> Result<(), String> {
        let g = self.groups.get_mut(&end).expect("group");
        let order = std::mem::take(&mut g.order);
        for &key in &order {
            let g = self.groups.get_mut(&end).expect("group");
            let w = *g.wins.get(&key).expect("win");
            if !(final_ || w.dirty) {
                continue;
            }
            self.emit(key, end - size, end, w)?;
            let g = self.groups.get_mut(&end).expect("group");
            let w = g.wins.get_mut(&key).expect("win");
            w.emitted += 1;
            w.dirty = false;
        }
        self.groups.get_mut(&end).expect("group").order = order;
        Ok(())
    }

    fn drop_group(&mut self, end: i64) {
        if let Some(g) = self.groups.remove(&end) {
            for key in g.order {
                if let Some(w) = g.wins.get(&key) {
                    self.accs.free(w.acc);
                    self.keys.release(key);
                }
            }
        }
    }

    /// Fires, updates early and drops the sessions of `key` the watermark has passed.
    fn fire_sessions(&mut self, key: u32) -> Result<(), String> {
        let wm = self.wm;
        let lateness = self.spec.lateness;
        let every = self.spec.emit_every;
        let Some(list) = self.sessions.get(&key) else { return Ok(()) };
        let mut list = list.clone();
        let mut i = 0;
        while i < list.len() {
            let s = &mut list[i];
            if !s.fired && s.end - 1 <= wm {
                s.fired = true;
                let (st, en, w) = (s.start, s.end, s.win);
                self.emit(key, st, en, w)?;
                let s = &mut list[i];
                s.win.emitted += 1;
                s.win.dirty = false;
            } else if !s.fired && s.next_early - 1 <= wm {
                if s.win.dirty {
                    let (st, en, w) = (s.start, s.end, s.win);
                    self.emit(key, st, en, w)?;
                    let s = &mut list[i];
                    s.win.emitted += 1;
                    s.win.dirty = false;
                }
                let s = &mut list[i];
                while s.next_early - 1 <= wm {
                    s.next_early = s.next_early.saturating_add(every.unwrap_or(i64::MAX));
                }
            }
            let s = list[i];
            if s.fired && gone_at(s.end, lateness) <= wm {
                self.accs.free(s.win.acc);
                self.keys.release(key);
                list.remove(i);
                continue;
            }
            let due = if s.fired { gone_at(s.end, lateness) } else { (s.end - 1).min(s.next_early.saturating_sub(1)) };
            self.timers.push(Reverse((due, key)));
            i += 1;
        }
        if list.is_empty() {
            self.sessions.remove(&key);
        } else {
            self.sessions.insert(key, list);
        }
        Ok(())
    }

    /// Appends one result row.
    fn emit(&mut self, key: u32, start: i64, end: i64, w: Win) -> Result<(), String> {
        let spec = &self.spec;
        let nk = spec.key_fields.len();
        let r = self.results.push_row();
        decode_key(self.keys.key(key), &self.key_kinds, &mut self.results, r)?;
        self.results.set_i64(r, nk, start);
        self.results.set_i64(r, nk + 1, end);
        self.accs.write(w.acc, &mut self.results, r, nk + 2)?;
        let rev = spec.revision_field();
        self.results.set_i64(r, rev, i64::from(w.emitted));
        self.results.set_i64(r, rev + 1, self.emit_stamp);
        Ok(())
    }
}

/// The record type of a window's raw results: keys, bounds, aggregates, revision, `$wm`.
pub(crate) fn result_record(keys: &[flow_types::Field], aggs: &[ir::AggCall]) -> Arc<flow_types::RecordType> {
    use flow_types::{Field, Type};
    let mut fields: Vec<Field> = keys.to_vec();
    fields.push(Field { name: "window_start".into(), ty: Type::timestamp() });
    fields.push(Field { name: "window_end".into(), ty: Type::timestamp() });
    // A window holds at least one record, so an aggregate of a non-null argument
    // always has a value: the aggregates' own types hold.
    for (i, a) in aggs.iter().enumerate() {
        fields.push(Field { name: format!("$agg{i}"), ty: a.ty.clone() });
    }
    fields.push(Field { name: "revision".into(), ty: Type::int() });
    fields.push(Field { name: super::stamp::STAMP_FIELD.into(), ty: Type::timestamp() });
    Arc::new(flow_types::RecordType { name: None, fields })
}
