//! Accumulators of `aggregate { }`: fixed slots per window, updated record by record.
//!
//! [`AccLayout`] lays out the aggregates of one `aggregate` as 64-bit words: a bitmap
//! of "has a value" flags (one bit per aggregate), then each aggregate's words (a
//! count is one word, a decimal sum two, an average three, ...). [`AccStore`] keeps the
//! accumulators of many windows in one `Vec<u64>` slab, addressed by index, so an
//! active window costs its words and nothing more; what does not fit in words
//! (the bytes of a string `min`/`max`/`first`/`last`, the set of `count_distinct`)
//! lives in a side slab of [`Extra`] values, its index in the aggregate's word.
//!
//! Semantics (docs/language.md, "aggregate"): nulls are skipped by every aggregate but
//! `count()`; an aggregate that saw no value is null (`count` is 0). Integer and
//! decimal sums are checked: a record that would overflow one is refused as a whole
//! (the accumulator is unchanged) with "integer overflow" / "decimal overflow", and
//! the runtime dead-letters it. `min`/`max` of floats skip NaN unless every value was
//! NaN; `-0.0` and `0.0` tie (the first stays). `first`/`last` order by event time,
//! ties by arrival. `count_distinct` treats `-0.0` and `0.0` as one value, and every NaN
//! as one value.

use flow_compiler::exec::accum::{AccOp, AccStep, AccUpdate, ACC_INT_OVERFLOW};
use flow_compiler::exec::codegen::Options;
use flow_compiler::ir::AggCall;
use flow_stdlib::ops::{dec_arith, Arith};
use flow_types::row::{BatchBuilder, RowRef, SlotKind};
use flow_types::{Kind, Type};
use rustc_hash::FxHashSet;
use std::sync::Arc;

/// The largest decimal magnitude (38 digits) + 1.
const DEC38: i128 = 100_000_000_000_000_000_000_000_000_000_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    CountAll,
    Count,
    SumI,
    SumF,
    /// decimal(38, s) sum in i128 (the argument converted to i128 units).
    SumD,
    MinI,
    MaxI,
    MinF,
    MaxF,
    MinD,
    MaxD,
    MinS,
    MaxS,
    AvgI,
    AvgF,
    /// Sum (i128) and count, divided at the end to the result scale.
    AvgD {
        scale_in: u8,
        scale_out: u8,
    },
    DistinctW,
    DistinctS,
    First,
    Last,
}

/// One aggregate: what it does, where its argument is and where its words are.
#[derive(Clone, Debug)]
struct Spec {
    op: Op,
    /// Field of the input row (None: `count()`).
    arg: Option<usize>,
    /// How the argument is stored in its slot.
    kind: SlotKind,
    /// First word of the accumulator.
    at: usize,
    /// The result's slot kind.
    out: SlotKind,
    /// Updated by the layout's compiled function.
    jitted: bool,
}

/// The layout of one `aggregate`'s accumulators.
#[derive(Clone, Debug)]
pub(crate) struct AccLayout {
    specs: Vec<Spec>,
    /// Words per accumulator.
    pub width: usize,
    /// Whether any aggregate keeps an [`Extra`] (strings, sets).
    has_extra: bool,
    /// Whether an update can fail (checked sums): then updates are two-phase.
    checked: bool,
    /// The compiled update of the fixed-width aggregates ([`AccLayout::compiled`]).
    jit: Option<Arc<AccUpdate>>,
}

/// Variable-size accumulator parts.
#[derive(Clone, Debug)]
pub(crate) enum Extra {
    Free,
    Bytes(Vec<u8>),
    Words(FxHashSet<u128>),
    Strings(FxHashSet<Box<[u8]>>),
}

impl Extra {
    fn bytes(&self) -> usize {
        match self {
            Extra::Free => 0,
            Extra::Bytes(b) => b.capacity(),
            Extra::Words(s) => s.capacity() * 17,
            Extra::Strings(s) => s.capacity() * 17 + s.iter().map(|b| b.len()).sum::<usize>(),
        }
    }
}

impl AccLayout {
    /// The layout of `aggs`, whose arguments are fields `args[i]` of rows of `arg_kinds`.
    pub fn new(aggs: &[AggCall], args: &[Option<usize>], input: &flow_types::row::Layout) -> Result<AccLayout, String> {
        let flag_words = aggs.len().div_ceil(64).max(1);
        let mut at = flag_words;
        let mut specs = Vec::new();
        let (mut has_extra, mut checked) = (false, false);
        for (a, &arg) in aggs.iter().zip(args) {
            let kind = arg.map_or(SlotKind::I64, |f| input.slot_kinds[f]);
            let arg_ty: Option<&Type> = arg.map(|f| &input.record.fields[f].ty);
            let out = SlotKind::of(&a.ty);
            use SlotKind as K;
            let fixed_w = |k: SlotKind| if matches!(k, K::Dec128 { .. }) { 2 } else { 1 };
            let (op, words) = match (a.func, kind) {
                ("count", _) if arg.is_none() => (Op::CountAll, 1),
                ("count", _) => (Op::Count, 1),
                ("sum", K::F64) => (Op::SumF, 1),
                ("sum", K::Dec64 { .. } | K::Dec128 { .. }) => (Op::SumD, 2),
                ("sum", _) => (Op::SumI, 1),
                ("min" | "max", K::F64) => (if a.func == "min" { Op::MinF } else { Op::MaxF }, 1),
                ("min" | "max", K::Dec128 { .. }) => (if a.func == "min" { Op::MinD } else { Op::MaxD }, 2),
                ("min" | "max", K::Str | K::Encoded) => (if a.func == "min" { Op::MinS } else { Op::MaxS }, 1),
                ("min" | "max", _) => (if a.func == "min" { Op::MinI } else { Op::MaxI }, 1),
                ("avg", K::F64) => (Op::AvgF, 2),
                ("avg", K::Dec64 { scale } | K::Dec128 { scale }) => {
                    let scale_out = match a.ty.kind {
                        Kind::Decimal { scale, .. } => scale,
                        _ => return Err(format!("avg of a decimal must be a decimal, not {}", a.ty)),
                    };
                    (Op::AvgD { scale_in: scale, scale_out }, 3)
                }
                ("avg", _) => (Op::AvgI, 3),
                ("count_distinct", K::Str | K::Encoded) => (Op::DistinctS, 1),
                ("count_distinct", _) => (Op::DistinctW, 1),
                ("first", k) => (Op::First, fixed_w(k) + 1),
                ("last", k) => (Op::Last, fixed_w(k) + 1),
                (f, _) => return Err(format!("aggregate `{f}` over {:?} is not supported", arg_ty)),
            };
            has_extra |= matches!(op, Op::MinS | Op::MaxS | Op::DistinctS | Op::DistinctW)
                || (matches!(op, Op::First | Op::Last) && matches!(kind, K::Str | K::Encoded));
            checked |= matches!(op, Op::SumI | Op::SumD | Op::AvgD { .. });
            specs.push(Spec { op, arg, kind, at, out, jitted: false });
            at += words;
        }
        Ok(AccLayout { specs, width: at, has_extra, checked, jit: None })
    }

    /// The layout with its fixed-width aggregates updated by JIT-compiled code
    /// (`flow_compiler::exec::accum`); the others (strings, distinct sets) stay in Rust.
    /// Rows must be of `input`, the layout [`AccLayout::new`] was given.
    pub fn compiled(mut self, input: &flow_types::row::Layout) -> Result<AccLayout, String> {
        let mut steps = Vec::new();
        for (i, s) in self.specs.iter_mut().enumerate() {
            let wide = matches!(s.kind, SlotKind::Dec128 { .. });
            let var = matches!(s.kind, SlotKind::Str | SlotKind::Encoded);
            let op = match s.op {
                Op::CountAll => AccOp::CountAll,
                Op::Count => AccOp::Count,
                Op::SumI => AccOp::SumI,
                Op::SumF => AccOp::SumF,
                Op::SumD => AccOp::SumD,
                Op::MinI => AccOp::MinI,
                Op::MaxI => AccOp::MaxI,
                Op::MinF => AccOp::MinF,
                Op::MaxF => AccOp::MaxF,
                Op::MinD => AccOp::MinD,
                Op::MaxD => AccOp::MaxD,
                Op::AvgI => AccOp::AvgI,
                Op::AvgF => AccOp::AvgF,
                Op::AvgD { .. } => AccOp::AvgD,
                Op::First if !var => AccOp::First,
                Op::Last if !var => AccOp::Last,
                _ => continue,
            };
            let arg = s.arg.map(|f| (f, input.offsets[f]));
            steps.push(AccStep { op, flag: i, arg, wide, at: s.at });
            s.jitted = true;
        }
        if steps.is_empty() {
            return Ok(self);
        }
        let f = AccUpdate::compile(&steps, self.width, Options::default()).map_err(|e| e.message)?;
        self.jit = Some(Arc::new(f));
        Ok(self)
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }
}

/// Words a slab of `len` words (slots of `stride`) grows by: a 32nd, at least 256
/// slots.
fn headroom(len: usize, stride: usize) -> usize {
    (len / 32).max(stride * 256)
}

/// Accumulators of many windows: a slab of words plus a slab of extras.
#[derive(Debug)]
pub(crate) struct AccStore {
    pub layout: AccLayout,
    /// Words of caller-owned header before each accumulator (a window's bounds and key).
    header: usize,
    /// `header + layout.width`: the words of one slot.
    stride: usize,
    words: Vec<u64>,
    free: Vec<u32>,
    extras: Vec<Extra>,
    extras_free: Vec<u32>,
}

fn get_i128(w: &[u64], at: usize) -> i128 {
    (u128::from(w[at]) | (u128::from(w[at + 1]) << 64)) as i128
}

fn set_i128(w: &mut [u64], at: usize, v: i128) {
    w[at] = v as u128 as u64;
    w[at + 1] = ((v as u128) >> 64) as u64;
}

/// A fixed-width argument as i128 (decimals in their units, others as i64).
fn fixed(row: &RowRef, f: usize, kind: SlotKind) -> i128 {
    match kind {
        SlotKind::Dec128 { .. } => row.i128(f),
        _ => i128::from(row.i64(f)),
    }
}

/// The value a float contributes to `count_distinct` (-0.0 is 0.0, every NaN one).
fn float_key(x: f64) -> u128 {
    if x == 0.0 {
        0
    } else if x.is_nan() {
        u128::from(f64::NAN.to_bits())
    } else {
        u128::from(x.to_bits())
    }
}

impl AccStore {
    pub fn new(layout: AccLayout) -> AccStore {
        AccStore::with_header(layout, 0)
    }

    /// A store whose slots start with `header` words the caller owns (zeroed on alloc).
    pub fn with_header(layout: AccLayout, header: usize) -> AccStore {
        let stride = header + layout.width;
        AccStore {
            layout,
            header,
            stride,
            words: Vec::new(),
            free: Vec::new(),
            extras: Vec::new(),
            extras_free: Vec::new(),
        }
    }

    /// Inserts `extra` zeroed header words at header word `at` of every slot (ids,
    /// contents and free slots stay as they were): room for longer keys.
    pub fn widen(&mut self, at: usize, extra: usize) {
        assert!(at <= self.header, "header word {at} of {}", self.header);
        let (old, stride) = (self.stride, self.stride + extra);
        let slots = self.words.len() / old.max(1);
        // Advised before it is first written: see advise_huge.
        let mut words = Vec::with_capacity(slots * stride + headroom(slots * stride, stride));
        super::slots::advise_huge(&words);
        for slot in self.words.chunks_exact(old) {
            words.extend_from_slice(&slot[..at]);
            words.resize(words.len() + extra, 0);
            words.extend_from_slice(&slot[at..]);
        }
        self.words = words;
        self.header += extra;
        self.stride = stride;
    }

    /// The first word of slot `id`'s accumulator.
    #[inline]
    fn base(&self, id: u32) -> usize {
        id as usize * self.stride + self.header
    }

    /// Slots allocated so far (free ones included): ids are below this.
    pub fn slots(&self) -> u32 {
        (self.words.len() / self.stride.max(1)) as u32
    }

    /// Slot `id`'s header words.
    #[inline]
    pub fn header(&self, id: u32) -> &[u64] {
        let b = id as usize * self.stride;
        &self.words[b..b + self.header]
    }

    #[inline]
    pub fn header_mut(&mut self, id: u32) -> &mut [u64] {
        let b = id as usize * self.stride;
        &mut self.words[b..b + self.header]
    }

    /// Asks the CPU to load slot `id` (a hint, see `slots.rs`; ids past the end are fine).
    #[inline]
    pub fn prefetch(&self, id: u32) {
        // Every cache line the slot touches: a slot of 13 words at an 8-byte boundary
        // spans three lines half the time, and its first and last word miss the middle.
        let p = self.words.as_ptr().wrapping_add(id as usize * self.stride) as usize;
        let last = p + self.stride * 8 - 1;
        let mut line = p & !63;
        while line <= last {
            super::slots::prefetch_ptr(line as *const u8);
            line += 64;
        }
    }

    /// Bytes held (words, extras), for the state-size report.
    pub fn bytes(&self) -> usize {
        self.words.capacity() * 8
            + self.extras.capacity() * std::mem::size_of::<Extra>()
            + if self.layout.has_extra { self.extras.iter().map(Extra::bytes).sum() } else { 0 }
    }

    /// A new, empty accumulator.
    pub fn alloc(&mut self) -> u32 {
        let w = self.stride;
        let id = match self.free.pop() {
            Some(id) => {
                self.words[id as usize * w..(id as usize + 1) * w].fill(0);
                id
            }
            None => {
                if self.words.len() + w > self.words.capacity() {
                    // Grow by a 32nd, not double: the slab is most of a window
                    // operator's memory. A large buffer is reallocated by remapping
                    // its pages (glibc's realloc uses mremap), so nothing is copied.
                    // (The new tail is advised before it is first written: see
                    // advise_huge.)
                    self.words.reserve_exact(headroom(self.words.len(), w));
                    super::slots::advise_huge(&self.words);
                }
                self.words.resize(self.words.len() + w, 0);
                (self.words.len() / w - 1) as u32
            }
        };
        let base = self.base(id);
        if self.layout.has_extra {
            for i in 0..self.layout.specs.len() {
                let s = &self.layout.specs[i];
                let at = s.at;
                let needs = match s.op {
                    Op::MinS | Op::MaxS => Some(Extra::Bytes(Vec::new())),
                    Op::DistinctS => Some(Extra::Strings(FxHashSet::default())),
                    Op::DistinctW => Some(Extra::Words(FxHashSet::default())),
                    Op::First | Op::Last if matches!(s.kind, SlotKind::Str | SlotKind::Encoded) => {
                        Some(Extra::Bytes(Vec::new()))
                    }
                    _ => None,
                };
                if let Some(e) = needs {
                    let x = self.new_extra(e);
                    self.words[base + at] = u64::from(x);
                }
            }
        }
        id
    }

    fn new_extra(&mut self, e: Extra) -> u32 {
        match self.extras_free.pop() {
            Some(i) => {
                self.extras[i as usize] = e;
                i
            }
            None => {
                self.extras.push(e);
                (self.extras.len() - 1) as u32
            }
        }
    }

    /// Frees accumulator `id` (and its extras).
    pub fn free(&mut self, id: u32) {
        if self.layout.has_extra {
            let base = self.base(id);
            for s in &self.layout.specs {
                if self.spec_has_extra(s) {
                    let x = self.words[base + s.at] as u32;
                    self.extras[x as usize] = Extra::Free;
                    self.extras_free.push(x);
                }
            }
        }
        self.free.push(id);
    }

    fn spec_has_extra(&self, s: &Spec) -> bool {
        matches!(s.op, Op::MinS | Op::MaxS | Op::DistinctS | Op::DistinctW)
            || (matches!(s.op, Op::First | Op::Last) && matches!(s.kind, SlotKind::Str | SlotKind::Encoded))
    }

    /// Adds `row` (event time `ts`) to accumulator `id`. On an overflow nothing changes
    /// and the error names it.
    pub fn update(&mut self, id: u32, row: &RowRef, ts: i64) -> Result<(), &'static str> {
        let w = self.layout.width;
        let base = self.base(id);
        let jit = match &self.layout.jit {
            Some(f) => {
                match f.update(&mut self.words[base..base + w], row.bytes, ts) {
                    0 => {}
                    ACC_INT_OVERFLOW => return Err("integer overflow"),
                    _ => return Err("decimal overflow"),
                }
                if !self.layout.has_extra {
                    return Ok(());
                }
                true
            }
            None => false,
        };
        // Checked sums are all compiled when there is a compiled update.
        if self.layout.checked && !jit {
            self.check(base, row)?;
        }
        let (words, extras) = (&mut self.words[base..base + w], &mut self.extras);
        for (i, s) in self.layout.specs.iter().enumerate() {
            if jit && s.jitted {
                continue;
            }
            let (fw, bit) = (i / 64, 1u64 << (i % 64));
            let Some(f) = s.arg else {
                words[s.at] += 1;
                continue;
            };
            if row.is_null(f) {
                continue;
            }
            let had = words[fw] & bit != 0;
            words[fw] |= bit;
            let at = s.at;
            match s.op {
                Op::CountAll | Op::Count => words[at] += 1,
                Op::SumI => words[at] = (words[at] as i64).wrapping_add(row.i64(f)) as u64,
                Op::SumF => words[at] = (f64::from_bits(words[at]) + row.f64(f)).to_bits(),
                Op::SumD => set_i128(words, at, get_i128(words, at).wrapping_add(fixed(row, f, s.kind))),
                Op::MinI | Op::MaxI => {
                    let v = row.i64(f);
                    let cur = words[at] as i64;
                    if !had || (s.op == Op::MinI && v < cur) || (s.op == Op::MaxI && v > cur) {
                        words[at] = v as u64;
                    }
                }
                Op::MinD | Op::MaxD => {
                    let v = row.i128(f);
                    let cur = get_i128(words, at);
                    if !had || (s.op == Op::MinD && v < cur) || (s.op == Op::MaxD && v > cur) {
                        set_i128(words, at, v);
                    }
                }
                Op::MinF | Op::MaxF => {
                    let v = row.f64(f);
                    let cur = f64::from_bits(words[at]);
                    let better = if s.op == Op::MinF { v < cur } else { v > cur };
                    if !had || (cur.is_nan() && !v.is_nan()) || better {
                        words[at] = v.to_bits();
                    }
                }
                Op::MinS | Op::MaxS => {
                    let v = row.encoded(f);
                    let Extra::Bytes(cur) = &mut extras[words[at] as usize] else { unreachable!("bytes extra") };
                    let better = if s.op == Op::MinS { v < cur.as_slice() } else { v > cur.as_slice() };
                    if !had || better {
                        cur.clear();
                        cur.extend_from_slice(v);
                    }
                }
                Op::AvgI => {
                    set_i128(words, at, get_i128(words, at) + i128::from(row.i64(f)));
                    words[at + 2] += 1;
                }
                Op::AvgF => {
                    words[at] = (f64::from_bits(words[at]) + row.f64(f)).to_bits();
                    words[at + 1] += 1;
                }
                Op::AvgD { .. } => {
                    set_i128(words, at, get_i128(words, at).wrapping_add(fixed(row, f, s.kind)));
                    words[at + 2] += 1;
                }
                Op::DistinctW => {
                    let v = match s.kind {
                        SlotKind::F64 => float_key(row.f64(f)),
                        k => fixed(row, f, k) as u128,
                    };
                    let Extra::Words(set) = &mut extras[words[at] as usize] else { unreachable!("set extra") };
                    set.insert(v);
                }
                Op::DistinctS => {
                    let v = row.encoded(f);
                    let Extra::Strings(set) = &mut extras[words[at] as usize] else { unreachable!("set extra") };
                    if !set.contains(v) {
                        set.insert(v.into());
                    }
                }
                Op::First | Op::Last => {
                    let var = matches!(s.kind, SlotKind::Str | SlotKind::Encoded);
                    let ts_at = at + if var { 1 } else { fixed_words(s.kind) };
                    let cur_ts = words[ts_at] as i64;
                    let take = !had || (s.op == Op::First && ts < cur_ts) || (s.op == Op::Last && ts >= cur_ts);
                    if take {
                        words[ts_at] = ts as u64;
                        if var {
                            let Extra::Bytes(cur) = &mut extras[words[at] as usize] else { unreachable!("bytes") };
                            cur.clear();
                            cur.extend_from_slice(row.encoded(f));
                        } else if matches!(s.kind, SlotKind::Dec128 { .. }) {
                            set_i128(words, at, row.i128(f));
                        } else {
                            words[at] = row.i64(f) as u64;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The checked updates of `row`, computed without applying them.
    fn check(&self, base: usize, row: &RowRef) -> Result<(), &'static str> {
        let words = &self.words[base..base + self.layout.width];
        for s in &self.layout.specs {
            let Some(f) = s.arg else { continue };
            if row.is_null(f) {
                continue;
            }
            match s.op {
                Op::SumI => {
                    (words[s.at] as i64).checked_add(row.i64(f)).ok_or("integer overflow")?;
                }
                Op::SumD | Op::AvgD { .. } => {
                    let v = get_i128(words, s.at).checked_add(fixed(row, f, s.kind)).ok_or("decimal overflow")?;
                    if v <= -DEC38 || v >= DEC38 {
                        return Err("decimal overflow");
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Folds accumulator `src` into `dst` (session windows merging); `src` stays.
    pub fn merge(&mut self, dst: u32, src: u32) -> Result<(), &'static str> {
        let w = self.layout.width;
        let (d, s0) = (self.base(dst), self.base(src));
        let src_words: Vec<u64> = self.words[s0..s0 + w].to_vec();
        for (i, s) in self.layout.specs.clone().iter().enumerate() {
            let (fw, bit) = (i / 64, 1u64 << (i % 64));
            let at = s.at;
            if s.op == Op::CountAll {
                self.words[d + at] += src_words[at];
                continue;
            }
            if src_words[fw] & bit == 0 {
                continue;
            }
            let had = self.words[d + fw] & bit != 0;
            self.words[d + fw] |= bit;
            let words = &mut self.words[d..d + w];
            match s.op {
                Op::CountAll | Op::Count => words[at] += src_words[at],
                Op::SumI => {
                    words[at] = (words[at] as i64).checked_add(src_words[at] as i64).ok_or("integer overflow")? as u64
                }
                Op::SumF => words[at] = (f64::from_bits(words[at]) + f64::from_bits(src_words[at])).to_bits(),
                Op::SumD => {
                    let v = get_i128(words, at).checked_add(get_i128(&src_words, at)).ok_or("decimal overflow")?;
                    if v <= -DEC38 || v >= DEC38 {
                        return Err("decimal overflow");
                    }
                    set_i128(words, at, v);
                }
                Op::MinI | Op::MaxI => {
                    let (v, cur) = (src_words[at] as i64, words[at] as i64);
                    if !had || (s.op == Op::MinI && v < cur) || (s.op == Op::MaxI && v > cur) {
                        words[at] = v as u64;
                    }
                }
                Op::MinD | Op::MaxD => {
                    let (v, cur) = (get_i128(&src_words, at), get_i128(words, at));
                    if !had || (s.op == Op::MinD && v < cur) || (s.op == Op::MaxD && v > cur) {
                        set_i128(words, at, v);
                    }
                }
                Op::MinF | Op::MaxF => {
                    let (v, cur) = (f64::from_bits(src_words[at]), f64::from_bits(words[at]));
                    let better = if s.op == Op::MinF { v < cur } else { v > cur };
                    if !had || (cur.is_nan() && !v.is_nan()) || better {
                        words[at] = v.to_bits();
                    }
                }
                Op::AvgI | Op::AvgD { .. } => {
                    let v = get_i128(words, at).checked_add(get_i128(&src_words, at)).ok_or("decimal overflow")?;
                    if matches!(s.op, Op::AvgD { .. }) && (v <= -DEC38 || v >= DEC38) {
                        return Err("decimal overflow");
                    }
                    set_i128(words, at, v);
                    words[at + 2] += src_words[at + 2];
                }
                Op::AvgF => {
                    words[at] = (f64::from_bits(words[at]) + f64::from_bits(src_words[at])).to_bits();
                    words[at + 1] += src_words[at + 1];
                }
                Op::MinS | Op::MaxS => {
                    let (xd, xs) = (words[at] as usize, src_words[at] as usize);
                    let (Extra::Bytes(v), Extra::Bytes(cur)) = (&self.extras[xs], &self.extras[xd]) else {
                        unreachable!("bytes extras")
                    };
                    let better = if s.op == Op::MinS { v < cur } else { v > cur };
                    if !had || better {
                        let v = v.clone();
                        self.extras[xd] = Extra::Bytes(v);
                    }
                }
                Op::DistinctW | Op::DistinctS => {
                    let (xd, xs) = (words[at] as usize, src_words[at] as usize);
                    let src_set = std::mem::replace(&mut self.extras[xs], Extra::Free);
                    match (&mut self.extras[xd], &src_set) {
                        (Extra::Words(d), Extra::Words(s)) => d.extend(s.iter().copied()),
                        (Extra::Strings(d), Extra::Strings(s)) => d.extend(s.iter().cloned()),
                        _ => unreachable!("set extras"),
                    }
                    self.extras[xs] = src_set;
                }
                Op::First | Op::Last => {
                    let var = matches!(s.kind, SlotKind::Str | SlotKind::Encoded);
                    let ts_at = at + if var { 1 } else { fixed_words(s.kind) };
                    let (ts, cur_ts) = (src_words[ts_at] as i64, words[ts_at] as i64);
                    // `src` is the later-arriving side: ties go to dst for first, src for last.
                    let take = !had || (s.op == Op::First && ts < cur_ts) || (s.op == Op::Last && ts >= cur_ts);
                    if take {
                        words[ts_at] = ts as u64;
                        if var {
                            let (xd, xs) = (words[at] as usize, src_words[at] as usize);
                            let v = match &self.extras[xs] {
                                Extra::Bytes(b) => b.clone(),
                                _ => unreachable!("bytes extra"),
                            };
                            self.extras[xd] = Extra::Bytes(v);
                        } else {
                            words[at] = src_words[at];
                            if fixed_words(s.kind) == 2 {
                                words[at + 1] = src_words[at + 1];
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Appends accumulator `id` in a self-contained form (for spilling).
    pub fn export(&self, id: u32, out: &mut Vec<u8>) {
        let (w, b) = (self.layout.width, self.base(id));
        let words = &self.words[b..b + w];
        for x in words {
            out.extend_from_slice(&x.to_le_bytes());
        }
        if !self.layout.has_extra {
            return;
        }
        let put_bytes = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        };
        for s in &self.layout.specs {
            if !self.spec_has_extra(s) {
                continue;
            }
            match &self.extras[words[s.at] as usize] {
                Extra::Bytes(b) => put_bytes(out, b),
                Extra::Words(set) => {
                    out.extend_from_slice(&(set.len() as u32).to_le_bytes());
                    for v in set {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
                Extra::Strings(set) => {
                    out.extend_from_slice(&(set.len() as u32).to_le_bytes());
                    for v in set {
                        put_bytes(out, v);
                    }
                }
                Extra::Free => put_bytes(out, &[]),
            }
        }
    }

    /// A new accumulator from [`AccStore::export`]'s bytes; returns it and the bytes read.
    pub fn import(&mut self, bytes: &[u8]) -> Result<(u32, usize), String> {
        let bad = || "truncated accumulator".to_string();
        let w = self.layout.width;
        if bytes.len() < w * 8 {
            return Err(bad());
        }
        let id = self.alloc();
        let base = self.base(id);
        let mut extra_ix = Vec::new();
        for s in &self.layout.specs {
            if self.spec_has_extra(s) {
                extra_ix.push((s.at, self.words[base + s.at]));
            }
        }
        for (i, c) in bytes[..w * 8].chunks_exact(8).enumerate() {
            self.words[base + i] = u64::from_le_bytes(c.try_into().map_err(|_| bad())?);
        }
        let mut at = w * 8;
        let u32_at = |at: &mut usize| -> Result<usize, String> {
            let v = bytes.get(*at..*at + 4).ok_or_else(bad)?;
            *at += 4;
            Ok(u32::from_le_bytes(v.try_into().map_err(|_| bad())?) as usize)
        };
        for (word, x) in extra_ix {
            self.words[base + word] = x;
            let e = match &self.extras[x as usize] {
                Extra::Bytes(_) => {
                    let n = u32_at(&mut at)?;
                    let b = bytes.get(at..at + n).ok_or_else(bad)?.to_vec();
                    at += n;
                    Extra::Bytes(b)
                }
                Extra::Words(_) => {
                    let n = u32_at(&mut at)?;
                    let mut set = FxHashSet::default();
                    for _ in 0..n {
                        let v = bytes.get(at..at + 16).ok_or_else(bad)?;
                        set.insert(u128::from_le_bytes(v.try_into().map_err(|_| bad())?));
                        at += 16;
                    }
                    Extra::Words(set)
                }
                Extra::Strings(_) => {
                    let n = u32_at(&mut at)?;
                    let mut set = FxHashSet::default();
                    for _ in 0..n {
                        let len = u32_at(&mut at)?;
                        set.insert(bytes.get(at..at + len).ok_or_else(bad)?.into());
                        at += len;
                    }
                    Extra::Strings(set)
                }
                Extra::Free => Extra::Free,
            };
            self.extras[x as usize] = e;
        }
        Ok((id, at))
    }

    /// Swaps the accumulators (words and extras) of slots `a` and `b`, leaving their
    /// headers: a delta replaces a window's accumulator in place this way.
    pub fn swap_acc(&mut self, a: u32, b: u32) {
        if a == b {
            return;
        }
        let (w, ba, bb) = (self.layout.width, self.base(a), self.base(b));
        for i in 0..w {
            self.words.swap(ba + i, bb + i);
        }
    }

    /// Writes accumulator `id`'s results into fields `first..` of row `r` of `out`.
    pub fn write(&self, id: u32, out: &mut BatchBuilder, r: usize, first: usize) -> Result<(), String> {
        let (w, b) = (self.layout.width, self.base(id));
        let words = &self.words[b..b + w];
        for (i, s) in self.layout.specs.iter().enumerate() {
            let field = first + i;
            let at = s.at;
            let has = words[i / 64] & (1u64 << (i % 64)) != 0;
            match s.op {
                Op::CountAll | Op::Count => {
                    out.set_i64(r, field, words[at] as i64);
                    continue;
                }
                Op::DistinctW | Op::DistinctS => {
                    let n = match &self.extras[words[at] as usize] {
                        Extra::Words(s) => s.len(),
                        Extra::Strings(s) => s.len(),
                        _ => 0,
                    };
                    out.set_i64(r, field, n as i64);
                    continue;
                }
                _ => {}
            }
            if !has {
                out.set_null(r, field);
                continue;
            }
            out.clear_null(r, field);
            match s.op {
                Op::SumI | Op::MinI | Op::MaxI => out.set_i64(r, field, words[at] as i64),
                Op::SumF | Op::MinF | Op::MaxF => out.set_f64(r, field, f64::from_bits(words[at])),
                Op::SumD | Op::MinD | Op::MaxD => write_dec(out, r, field, s.out, get_i128(words, at)),
                Op::MinS | Op::MaxS => {
                    let Extra::Bytes(b) = &self.extras[words[at] as usize] else { unreachable!("bytes") };
                    let off = out.arena_push(b).map_err(|e| format!("{e:?}"))?;
                    out.set_span(r, field, off, b.len() as u32);
                }
                Op::AvgI => {
                    let (sum, n) = (get_i128(words, at), words[at + 2]);
                    out.set_f64(r, field, sum as f64 / n as f64);
                }
                Op::AvgF => out.set_f64(r, field, f64::from_bits(words[at]) / words[at + 1] as f64),
                Op::AvgD { scale_in, scale_out } => {
                    let (sum, n) = (get_i128(words, at), words[at + 2]);
                    let v = dec_arith(Arith::Div, sum, scale_in, i128::from(n), 0, 38, scale_out)
                        .map_err(|e| e.to_string())?;
                    write_dec(out, r, field, s.out, v);
                }
                Op::First | Op::Last => {
                    if matches!(s.kind, SlotKind::Str | SlotKind::Encoded) {
                        let Extra::Bytes(b) = &self.extras[words[at] as usize] else { unreachable!("bytes") };
                        let off = out.arena_push(b).map_err(|e| format!("{e:?}"))?;
                        out.set_span(r, field, off, b.len() as u32);
                    } else if matches!(s.kind, SlotKind::Dec128 { .. }) {
                        out.set_i128(r, field, get_i128(words, at));
                    } else {
                        out.set_i64(r, field, words[at] as i64);
                    }
                }
                Op::CountAll | Op::Count | Op::DistinctW | Op::DistinctS => {}
            }
        }
        Ok(())
    }
}

fn fixed_words(k: SlotKind) -> usize {
    if matches!(k, SlotKind::Dec128 { .. }) {
        2
    } else {
        1
    }
}

fn write_dec(out: &mut BatchBuilder, r: usize, field: usize, kind: SlotKind, v: i128) {
    match kind {
        SlotKind::Dec128 { .. } => out.set_i128(r, field, v),
        _ => out.set_i64(r, field, v as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_types::row::{BatchBuilder, Layout};
    use flow_types::{Field, RecordType, Value};
    use std::sync::Arc;

    fn agg(func: &'static str, ty: Type) -> AggCall {
        AggCall { func, arg: None, ty }
    }

    /// Input rows: (int x, decimal(12,2) d, string s, float f); aggregates over them.
    fn setup(aggs: &[AggCall], args: &[Option<usize>]) -> (AccStore, Arc<Layout>) {
        let rec = RecordType {
            name: None,
            fields: vec![
                Field { name: "x".into(), ty: Type::int().nullable() },
                Field { name: "d".into(), ty: Type::decimal(12, 2) },
                Field { name: "s".into(), ty: Type::string() },
                Field { name: "f".into(), ty: Type::float() },
            ],
        };
        let input = Arc::new(Layout::new(Arc::new(rec)));
        (AccStore::new(AccLayout::new(aggs, args, &input).expect("layout")), input)
    }

    fn rows(input: &Arc<Layout>, rows: &[(Option<i64>, i128, &str, f64)]) -> flow_types::row::Batch {
        let mut b = BatchBuilder::new(input.clone());
        for (x, d, s, f) in rows {
            b.push_values(&[
                x.map_or(Value::Null, Value::Int),
                Value::Decimal { units: *d, scale: 2 },
                Value::String((*s).into()),
                Value::Float(*f),
            ])
            .expect("row");
        }
        b.finish()
    }

    fn results(st: &AccStore, id: u32, aggs: &[AggCall]) -> Vec<Value> {
        let rec = RecordType {
            name: None,
            fields: aggs.iter().enumerate().map(|(i, a)| Field { name: format!("a{i}"), ty: a.ty.clone() }).collect(),
        };
        let mut out = BatchBuilder::new(Arc::new(Layout::new(Arc::new(rec))));
        let r = out.push_row();
        st.write(id, &mut out, r, 0).expect("write");
        out.finish().row(0).values()
    }

    #[test]
    fn every_aggregate_over_a_few_rows() {
        let aggs = vec![
            agg("count", Type::int()),
            agg("count", Type::int()),
            agg("sum", Type::int().nullable()),
            agg("sum", Type::decimal(38, 2)),
            agg("min", Type::string()),
            agg("max", Type::decimal(12, 2)),
            agg("avg", Type::decimal(38, 6)),
            agg("count_distinct", Type::int()),
            agg("first", Type::string()),
            agg("last", Type::string()),
            agg("avg", Type::float().nullable()),
            agg("max", Type::float()),
        ];
        let args =
            [None, Some(0), Some(0), Some(1), Some(2), Some(1), Some(1), Some(2), Some(2), Some(2), Some(0), Some(3)];
        let (mut st, input) = setup(&aggs, &args);
        let b = rows(
            &input,
            &[
                (Some(1), 10, "b", f64::NAN),
                (None, 20, "a", 1.5),
                (Some(2), 1, "b", -3.0),
                (Some(4), 20, "c", f64::NAN),
            ],
        );
        let id = st.alloc();
        for (i, ts) in [(0, 100), (1, 50), (2, 100), (3, 100)] {
            st.update(id, &b.row(i), ts).expect("update");
        }
        let v = results(&st, id, &aggs);
        assert_eq!(v[0], Value::Int(4));
        assert_eq!(v[1], Value::Int(3), "count(x) skips the null");
        assert_eq!(v[2], Value::Int(7));
        assert_eq!(v[3], Value::Decimal { units: 51, scale: 2 });
        assert_eq!(v[4], Value::String("a".into()));
        assert_eq!(v[5], Value::Decimal { units: 20, scale: 2 });
        // 0.51 / 4 = 0.1275 at scale 6
        assert_eq!(v[6], Value::Decimal { units: 127_500, scale: 6 });
        assert_eq!(v[7], Value::Int(3));
        assert_eq!(v[8], Value::String("a".into()), "first by event time: ts 50");
        assert_eq!(v[9], Value::String("c".into()), "last: ties go to the later arrival");
        assert_eq!(v[10], Value::Float(7.0 / 3.0));
        assert_eq!(v[11], Value::Float(1.5), "NaN is skipped once a number is seen");
    }

    /// Widening the header keeps every slot's header words (around the new ones, which
    /// are zero), its accumulator with its extras, its id, and the free list.
    #[test]
    fn widening_the_header_keeps_every_slot() {
        let aggs = vec![agg("count", Type::int()), agg("count_distinct", Type::int()), agg("min", Type::string())];
        let args = [None, Some(2), Some(2)];
        let (st0, input) = setup(&aggs, &args);
        let mut st = AccStore::with_header(st0.layout, 3);
        let b = rows(&input, &[(None, 0, "b", 0.0), (None, 0, "a", 0.0), (None, 0, "b", 0.0)]);
        let ids: Vec<u32> = (0..300).map(|_| st.alloc()).collect();
        for &id in &ids {
            st.header_mut(id).copy_from_slice(&[u64::from(id), 7, u64::from(id) << 32]);
            for r in 0..=(id as usize % 3) {
                st.update(id, &b.row(r), 0).expect("update");
            }
        }
        let before: Vec<Vec<Value>> = ids.iter().map(|&id| results(&st, id, &aggs)).collect();
        st.free(ids[5]);
        st.widen(2, 2);
        for &id in &ids {
            assert_eq!(st.header(id), [u64::from(id), 7, 0, 0, u64::from(id) << 32]);
            if id != ids[5] {
                assert_eq!(results(&st, id, &aggs), before[id as usize]);
            }
        }
        assert_eq!(st.alloc(), ids[5], "the freed slot is reused");
        assert_eq!(st.header(ids[5]), [0; 5]);
        assert_eq!(st.alloc(), 300);
    }

    #[test]
    fn an_overflowing_record_changes_nothing() {
        let aggs = vec![agg("count", Type::int()), agg("sum", Type::int().nullable())];
        let (mut st, input) = setup(&aggs, &[None, Some(0)]);
        let b = rows(&input, &[(Some(i64::MAX), 0, "", 0.0), (Some(1), 0, "", 0.0)]);
        let id = st.alloc();
        st.update(id, &b.row(0), 0).expect("first");
        assert_eq!(st.update(id, &b.row(1), 0), Err("integer overflow"));
        assert_eq!(results(&st, id, &aggs), vec![Value::Int(1), Value::Int(i64::MAX)]);
    }

    #[test]
    fn merging_equals_updating_one_accumulator() {
        let aggs = vec![
            agg("count", Type::int()),
            agg("sum", Type::decimal(38, 2)),
            agg("min", Type::string()),
            agg("count_distinct", Type::int()),
            agg("first", Type::string()),
            agg("last", Type::string()),
            agg("avg", Type::float().nullable()),
        ];
        let args = [None, Some(1), Some(2), Some(2), Some(2), Some(2), Some(0)];
        let (mut st, input) = setup(&aggs, &args);
        let b = rows(
            &input,
            &[(Some(1), 10, "q", 0.0), (None, 5, "b", 0.0), (Some(3), 7, "q", 0.0), (Some(8), 1, "z", 0.0)],
        );
        let ts = [30, 10, 20, 40];
        let all = st.alloc();
        let (x, y) = (st.alloc(), st.alloc());
        for (i, &t) in ts.iter().enumerate() {
            st.update(all, &b.row(i), t).expect("update");
            st.update(if i % 2 == 0 { x } else { y }, &b.row(i), t).expect("update");
        }
        st.merge(x, y).expect("merge");
        assert_eq!(results(&st, x, &aggs), results(&st, all, &aggs));
        // Spilled and read back, an accumulator is the same.
        let mut bytes = Vec::new();
        st.export(x, &mut bytes);
        let (back, used) = st.import(&bytes).expect("import");
        assert_eq!(used, bytes.len());
        assert_eq!(results(&st, back, &aggs), results(&st, all, &aggs));
        st.free(back);
        st.free(y);
        let z = st.alloc();
        assert_eq!(z, y, "freed slots are reused");
        assert_eq!(results(&st, z, &aggs)[0], Value::Int(0), "and start empty");
    }

    /// Input rows for the JIT property test: int, decimal(12,2), decimal(38,2), float,
    /// all nullable, and a string.
    fn wide_input() -> Arc<Layout> {
        let f = |n: &str, ty: Type| Field { name: n.into(), ty };
        let rec = RecordType {
            name: None,
            fields: vec![
                f("x", Type::int().nullable()),
                f("d", Type::decimal(12, 2).nullable()),
                f("b", Type::decimal(38, 2).nullable()),
                f("f", Type::float().nullable()),
                f("s", Type::string()),
            ],
        };
        Arc::new(Layout::new(Arc::new(rec)))
    }

    fn any_int() -> impl Strategy<Value = Option<i64>> {
        prop_oneof![
            Just(None),
            Just(Some(i64::MAX)),
            Just(Some(i64::MIN)),
            (-1000i64..1000).prop_map(Some),
            any::<i64>().prop_map(Some),
        ]
    }

    fn any_big() -> impl Strategy<Value = Option<i128>> {
        let top = 10i128.pow(38) - 1;
        prop_oneof![
            Just(None),
            Just(Some(top)),
            Just(Some(-top)),
            (-1000i128..1000).prop_map(Some),
            (-top..=top).prop_map(Some),
        ]
    }

    fn any_float() -> impl Strategy<Value = Option<f64>> {
        prop_oneof![
            Just(None),
            Just(Some(f64::NAN)),
            Just(Some(-0.0)),
            Just(Some(0.0)),
            Just(Some(f64::INFINITY)),
            Just(Some(f64::NEG_INFINITY)),
            any::<f64>().prop_map(Some),
        ]
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// The compiled update and the Rust one leave the same words and refuse the same
        /// rows, over every fixed-width aggregate (extras alongside stay in Rust).
        #[test]
        fn compiled_updates_match_the_rust_ones(
            rows in prop::collection::vec((any_int(), any_int(), any_big(), any_float(), 0i64..20), 1..40)
        ) {
            let int = || Type::int().nullable();
            let aggs = vec![
                agg("count", Type::int()),
                agg("count", Type::int()),
                agg("sum", int()),
                agg("sum", Type::decimal(38, 2).nullable()),
                agg("sum", Type::decimal(38, 2).nullable()),
                agg("sum", Type::float().nullable()),
                agg("min", int()),
                agg("max", int()),
                agg("min", Type::decimal(12, 2).nullable()),
                agg("max", Type::decimal(38, 2).nullable()),
                agg("min", Type::decimal(38, 2).nullable()),
                agg("min", Type::float().nullable()),
                agg("max", Type::float().nullable()),
                agg("avg", Type::float().nullable()),
                agg("avg", Type::float().nullable()),
                agg("avg", Type::decimal(38, 6).nullable()),
                agg("avg", Type::decimal(38, 6).nullable()),
                agg("first", int()),
                agg("last", Type::decimal(38, 2).nullable()),
                agg("first", Type::float().nullable()),
                agg("last", Type::decimal(12, 2).nullable()),
                agg("min", Type::string()),
                agg("count_distinct", Type::int()),
            ];
            let args = [
                None, Some(0), Some(0), Some(1), Some(2), Some(3), Some(0), Some(0), Some(1), Some(2), Some(2),
                Some(3), Some(3), Some(0), Some(3), Some(1), Some(2), Some(0), Some(2), Some(3), Some(1), Some(4),
                Some(0),
            ];
            let input = wide_input();
            let layout = AccLayout::new(&aggs, &args, &input).expect("layout");
            let mut rust = AccStore::new(layout.clone());
            let mut jit = AccStore::new(layout.compiled(&input).expect("compile"));
            prop_assert!(jit.layout.jit.is_some());
            let (a, b) = (rust.alloc(), jit.alloc());
            let mut batch = BatchBuilder::new(input.clone());
            for (x, d, big, f, _) in &rows {
                batch.push_values(&[
                    x.map_or(Value::Null, Value::Int),
                    d.map_or(Value::Null, |u| Value::Decimal { units: i128::from(u % 10i64.pow(12)), scale: 2 }),
                    big.map_or(Value::Null, |u| Value::Decimal { units: u, scale: 2 }),
                    f.map_or(Value::Null, Value::Float),
                    Value::String(format!("s{}", x.unwrap_or(0) % 5).into()),
                ]).expect("row");
            }
            let batch = batch.finish();
            for (i, row) in rows.iter().enumerate() {
                let ts = row.4;
                let r1 = rust.update(a, &batch.row(i), ts);
                let r2 = jit.update(b, &batch.row(i), ts);
                prop_assert_eq!(r1, r2, "row {}", i);
                prop_assert_eq!(&rust.words[..], &jit.words[..], "row {}", i);
            }
            // Results (an average's scaling may overflow: then both must say so).
            let out = |st: &AccStore, id: u32| {
                let rec = RecordType {
                    name: None,
                    fields: aggs.iter().enumerate().map(|(i, a)| Field { name: format!("a{i}"), ty: a.ty.clone() }).collect(),
                };
                let mut o = BatchBuilder::new(Arc::new(Layout::new(Arc::new(rec))));
                let r = o.push_row();
                st.write(id, &mut o, r, 0).map(|()| format!("{:?}", o.finish().row(0).values()))
            };
            prop_assert_eq!(out(&rust, a), out(&jit, b));
        }
    }
}
