//! The row layout shared by compiled code, the interpreter and the runtime.
//!
//! A [`Batch`] holds `len` rows of one record type. Each row is fixed width: a null
//! bitmap (one bit per field, padded to 8 bytes) followed by one slot per field. Slots
//! are 8 bytes, except decimals of precision above 18, which take 16 (an `i128`).
//! Variable-length data (strings, and the encoded form of lists and nested records)
//! lives in the batch's arena; its slot holds a `u32` offset and a `u32` length.
//!
//! The arena is made of two `Bytes`: `base`, usually shared zero-copy with the batch
//! a stage read from, and `extra`, the bytes the stage wrote. An offset below
//! `base.len()` is in `base`; others are in `extra` (minus `base.len()`). So a
//! projection that only moves strings copies no string bytes.
//!
//! A stage (filter, projection) writes its output with `BatchBuilder::with_base(layout,
//! input.arena_bytes())`: the input's whole arena becomes the output's `base`, so every
//! input offset stays valid in the output and strings moved unchanged are not copied.
//! [`Batch::arena_bytes`] is zero-copy when the input arena is in one piece (`base` or
//! `extra` empty, the usual case: a source batch has only `extra`, a stage's output
//! only `base` when it made no new strings) and one concatenating copy otherwise.
//!
//! Slot encodings: bool as 0/1 in the low byte; int, timestamp and duration as `i64`;
//! float as `f64` bits; decimal(p <= 18, s) as `i64` units, decimal(p > 18, s) as `i128`
//! units (little endian); string as (offset, len) of UTF-8 bytes; list and record as
//! (offset, len) of their [`encode_value`] form. A null field has its bit set and a
//! zeroed slot.

use crate::{Kind, RecordType, Type, Value};
use bytes::Bytes;
use std::sync::Arc;

/// Where each field of a record lives in a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub record: Arc<RecordType>,
    /// Byte offset of each field's slot.
    pub offsets: Vec<u32>,
    pub slot_kinds: Vec<SlotKind>,
    /// Bytes of the null bitmap (a multiple of 8).
    pub bitmap_bytes: u32,
    /// Bytes per row (a multiple of 8).
    pub width: u32,
}

/// How a field is stored in its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    Bool,
    I64,
    F64,
    /// decimal with precision <= 18: i64 units.
    Dec64 {
        scale: u8,
    },
    /// decimal with precision > 18: i128 units.
    Dec128 {
        scale: u8,
    },
    /// (offset, len) of UTF-8 bytes in the arena.
    Str,
    /// (offset, len) of an encoded value (list or record) in the arena.
    Encoded,
}

impl SlotKind {
    pub fn of(t: &Type) -> SlotKind {
        match &t.kind {
            Kind::Bool => SlotKind::Bool,
            Kind::Int | Kind::Timestamp | Kind::Duration | Kind::Null | Kind::Error => SlotKind::I64,
            Kind::Float => SlotKind::F64,
            Kind::Decimal { precision, scale } if *precision <= 18 => SlotKind::Dec64 { scale: *scale },
            Kind::Decimal { scale, .. } => SlotKind::Dec128 { scale: *scale },
            Kind::String => SlotKind::Str,
            Kind::List(_) | Kind::Record(_) => SlotKind::Encoded,
        }
    }

    pub fn bytes(self) -> u32 {
        match self {
            SlotKind::Dec128 { .. } => 16,
            _ => 8,
        }
    }
}

impl Layout {
    pub fn new(record: Arc<RecordType>) -> Layout {
        let n = record.fields.len() as u32;
        let bitmap_bytes = n.div_ceil(64) * 8;
        let mut offsets = Vec::with_capacity(n as usize);
        let mut slot_kinds = Vec::with_capacity(n as usize);
        let mut at = bitmap_bytes;
        for f in &record.fields {
            let k = SlotKind::of(&f.ty);
            offsets.push(at);
            slot_kinds.push(k);
            at += k.bytes();
        }
        Layout { record, offsets, slot_kinds, bitmap_bytes, width: at.max(8) }
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
}

/// The largest arena a batch may have: offsets are `u32`.
pub const ARENA_BYTES_MAX: usize = u32::MAX as usize;

/// Rows of one layout plus their variable-length data.
#[derive(Clone, Debug)]
pub struct Batch {
    pub layout: Arc<Layout>,
    pub rows: Bytes,
    pub len: usize,
    pub base: Bytes,
    pub extra: Bytes,
}

impl Batch {
    pub fn empty(layout: Arc<Layout>) -> Batch {
        Batch { layout, rows: Bytes::new(), len: 0, base: Bytes::new(), extra: Bytes::new() }
    }

    #[inline]
    pub fn row(&self, i: usize) -> RowRef<'_> {
        assert!(i < self.len, "row {i} of {}", self.len);
        let w = self.layout.width as usize;
        RowRef { batch: self, bytes: &self.rows[i * w..(i + 1) * w] }
    }

    /// The arena bytes at (offset, len).
    #[inline]
    pub fn arena(&self, offset: u32, len: u32) -> &[u8] {
        let (o, l) = (offset as usize, len as usize);
        let b = self.base.len();
        if o < b {
            &self.base[o..o + l]
        } else {
            &self.extra[o - b..o - b + l]
        }
    }

    /// The whole arena as one `Bytes` (`base` then `extra`), in which every arena
    /// offset of this batch is valid unchanged. Zero-copy when either part is empty.
    pub fn arena_bytes(&self) -> Bytes {
        if self.extra.is_empty() {
            self.base.clone()
        } else if self.base.is_empty() {
            self.extra.clone()
        } else {
            let mut v = Vec::with_capacity(self.base.len() + self.extra.len());
            v.extend_from_slice(&self.base);
            v.extend_from_slice(&self.extra);
            Bytes::from(v)
        }
    }

    /// Rows `from..` as a batch sharing this one's bytes (for resuming after a row
    /// that failed).
    pub fn slice_from(&self, from: usize) -> Batch {
        let from = from.min(self.len);
        let w = self.layout.width as usize;
        Batch {
            layout: self.layout.clone(),
            rows: self.rows.slice(from * w..self.len * w),
            len: self.len - from,
            base: self.base.clone(),
            extra: self.extra.clone(),
        }
    }

    /// Every row as values (for tests, sinks and the interpreter's edges).
    pub fn to_values(&self) -> Vec<Vec<Value>> {
        (0..self.len).map(|i| self.row(i).values()).collect()
    }
}

/// One row of a batch.
#[derive(Clone, Copy, Debug)]
pub struct RowRef<'a> {
    pub batch: &'a Batch,
    pub bytes: &'a [u8],
}

impl RowRef<'_> {
    #[inline]
    pub fn is_null(&self, field: usize) -> bool {
        self.bytes[field / 8] & (1 << (field % 8)) != 0
    }

    #[inline]
    fn slot8(&self, field: usize) -> [u8; 8] {
        let o = self.batch.layout.offsets[field] as usize;
        self.bytes[o..o + 8].try_into().expect("8-byte slot")
    }

    #[inline]
    pub fn i64(&self, field: usize) -> i64 {
        i64::from_le_bytes(self.slot8(field))
    }

    #[inline]
    pub fn f64(&self, field: usize) -> f64 {
        f64::from_bits(u64::from_le_bytes(self.slot8(field)))
    }

    #[inline]
    pub fn i128(&self, field: usize) -> i128 {
        let o = self.batch.layout.offsets[field] as usize;
        i128::from_le_bytes(self.bytes[o..o + 16].try_into().expect("16-byte slot"))
    }

    pub fn str(&self, field: usize) -> &str {
        let s = self.slot8(field);
        let off = u32::from_le_bytes(s[0..4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(s[4..8].try_into().expect("4 bytes"));
        // Only builders that checked UTF-8 write string slots.
        std::str::from_utf8(self.batch.arena(off, len)).unwrap_or("")
    }

    #[inline]
    pub fn encoded(&self, field: usize) -> &[u8] {
        let s = self.slot8(field);
        let off = u32::from_le_bytes(s[0..4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(s[4..8].try_into().expect("4 bytes"));
        self.batch.arena(off, len)
    }

    pub fn value(&self, field: usize) -> Value {
        if self.is_null(field) {
            return Value::Null;
        }
        let ty = &self.batch.layout.record.fields[field].ty;
        match (self.batch.layout.slot_kinds[field], &ty.kind) {
            (SlotKind::Bool, _) => Value::Bool(self.slot8(field)[0] != 0),
            (SlotKind::I64, Kind::Timestamp) => Value::Timestamp(self.i64(field)),
            (SlotKind::I64, Kind::Duration) => Value::Duration(self.i64(field)),
            (SlotKind::I64, _) => Value::Int(self.i64(field)),
            (SlotKind::F64, _) => Value::Float(self.f64(field)),
            (SlotKind::Dec64 { scale }, _) => Value::Decimal { units: self.i64(field) as i128, scale },
            (SlotKind::Dec128 { scale }, _) => Value::Decimal { units: self.i128(field), scale },
            (SlotKind::Str, _) => Value::String(self.str(field).into()),
            (SlotKind::Encoded, _) => decode_value(self.encoded(field), ty).unwrap_or(Value::Null),
        }
    }

    pub fn values(&self) -> Vec<Value> {
        (0..self.batch.layout.len()).map(|f| self.value(f)).collect()
    }
}

/// Builds a batch row by row.
#[derive(Debug)]
pub struct BatchBuilder {
    pub layout: Arc<Layout>,
    rows: Vec<u8>,
    len: usize,
    base: Bytes,
    extra: Vec<u8>,
}

/// Why a value could not be stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowError {
    /// The value does not fit the field's type (a bug in the caller, or a decimal overflow).
    Type { field: usize },
    /// The batch's arena would pass 4 GiB.
    ArenaFull,
}

impl BatchBuilder {
    pub fn new(layout: Arc<Layout>) -> Self {
        BatchBuilder { layout, rows: Vec::new(), len: 0, base: Bytes::new(), extra: Vec::new() }
    }

    /// A builder with room for `rows` rows and `arena` bytes of strings before it
    /// reallocates.
    pub fn with_capacity(layout: Arc<Layout>, rows: usize, arena: usize) -> Self {
        let width = layout.width as usize;
        BatchBuilder {
            layout,
            rows: Vec::with_capacity(rows.saturating_mul(width)),
            len: 0,
            base: Bytes::new(),
            extra: Vec::with_capacity(arena),
        }
    }

    /// A builder whose arena starts with `base` (shared, not copied): string slots may
    /// point into it.
    pub fn with_base(layout: Arc<Layout>, base: Bytes) -> Self {
        BatchBuilder { layout, rows: Vec::new(), len: 0, base, extra: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The shared start of the arena (see [`BatchBuilder::with_base`]).
    pub fn base(&self) -> &Bytes {
        &self.base
    }

    /// Bytes held so far (rows and new arena bytes), for batch size limits.
    pub fn bytes(&self) -> usize {
        self.rows.len() + self.extra.len()
    }

    /// Appends a zeroed row (all fields non-null zero) and returns its index.
    #[inline]
    pub fn push_row(&mut self) -> usize {
        self.rows.resize(self.rows.len() + self.layout.width as usize, 0);
        self.len += 1;
        self.len - 1
    }

    #[inline]
    fn slot_mut(&mut self, row: usize, field: usize, n: usize) -> &mut [u8] {
        let w = self.layout.width as usize;
        let o = row * w + self.layout.offsets[field] as usize;
        &mut self.rows[o..o + n]
    }

    /// Clears a field's null bit (its slot keeps whatever it holds).
    pub fn clear_null(&mut self, row: usize, field: usize) {
        let w = self.layout.width as usize;
        self.rows[row * w + field / 8] &= !(1 << (field % 8));
    }

    /// Sets the null bits of `mask` (bit `f` of byte `f / 8` for field `f`, as the
    /// row's bitmap) in a row whose slots of those fields are still zero.
    pub fn or_null_bits(&mut self, row: usize, mask: &[u8]) {
        let w = self.layout.width as usize;
        for (b, m) in self.rows[row * w..row * w + mask.len()].iter_mut().zip(mask) {
            *b |= m;
        }
    }

    pub fn set_null(&mut self, row: usize, field: usize) {
        let w = self.layout.width as usize;
        self.rows[row * w + field / 8] |= 1 << (field % 8);
        let n = self.layout.slot_kinds[field].bytes() as usize;
        self.slot_mut(row, field, n).fill(0);
    }

    #[inline]
    pub fn set_i64(&mut self, row: usize, field: usize, v: i64) {
        self.slot_mut(row, field, 8).copy_from_slice(&v.to_le_bytes());
    }

    #[inline]
    pub fn set_f64(&mut self, row: usize, field: usize, v: f64) {
        self.slot_mut(row, field, 8).copy_from_slice(&v.to_bits().to_le_bytes());
    }

    #[inline]
    pub fn set_i128(&mut self, row: usize, field: usize, v: i128) {
        self.slot_mut(row, field, 16).copy_from_slice(&v.to_le_bytes());
    }

    /// Appends bytes to the arena and returns their offset.
    pub fn arena_push(&mut self, bytes: &[u8]) -> Result<u32, RowError> {
        let off = self.base.len() + self.extra.len();
        if off + bytes.len() > ARENA_BYTES_MAX {
            return Err(RowError::ArenaFull);
        }
        self.extra.extend_from_slice(bytes);
        Ok(off as u32)
    }

    /// Sets an arena slot to (offset, len) already in the arena.
    #[inline]
    pub fn set_span(&mut self, row: usize, field: usize, offset: u32, len: u32) {
        let s = self.slot_mut(row, field, 8);
        s[0..4].copy_from_slice(&offset.to_le_bytes());
        s[4..8].copy_from_slice(&len.to_le_bytes());
    }

    pub fn set_str(&mut self, row: usize, field: usize, v: &str) -> Result<(), RowError> {
        let off = self.arena_push(v.as_bytes())?;
        self.set_span(row, field, off, v.len() as u32);
        Ok(())
    }

    /// Stores a value of the field's type; `Null` sets the null bit.
    pub fn set_value(&mut self, row: usize, field: usize, v: &Value) -> Result<(), RowError> {
        let kind = self.layout.slot_kinds[field];
        match (kind, v) {
            (_, Value::Null) => self.set_null(row, field),
            (SlotKind::Bool, Value::Bool(b)) => self.set_i64(row, field, i64::from(*b)),
            (SlotKind::I64, Value::Int(i) | Value::Timestamp(i) | Value::Duration(i)) => self.set_i64(row, field, *i),
            (SlotKind::F64, Value::Float(x)) => self.set_f64(row, field, *x),
            (SlotKind::Dec64 { scale }, Value::Decimal { units, scale: s }) if *s == scale => {
                let u = i64::try_from(*units).map_err(|_| RowError::Type { field })?;
                self.set_i64(row, field, u)
            }
            (SlotKind::Dec128 { scale }, Value::Decimal { units, scale: s }) if *s == scale => {
                self.set_i128(row, field, *units)
            }
            (SlotKind::Str, Value::String(s)) => self.set_str(row, field, s)?,
            (SlotKind::Encoded, v @ (Value::List(_) | Value::Record(_))) => {
                let mut buf = Vec::new();
                encode_value(v, &mut buf);
                let off = self.arena_push(&buf)?;
                self.set_span(row, field, off, buf.len() as u32);
            }
            _ => return Err(RowError::Type { field }),
        }
        Ok(())
    }

    /// Appends a row of values.
    pub fn push_values(&mut self, values: &[Value]) -> Result<(), RowError> {
        let r = self.push_row();
        for (f, v) in values.iter().enumerate() {
            if let Err(e) = self.set_value(r, f, v) {
                self.pop_row();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Removes the last row (its arena bytes stay, unreferenced).
    pub fn pop_row(&mut self) {
        if self.len > 0 {
            self.len -= 1;
            self.rows.truncate(self.len * self.layout.width as usize);
        }
    }

    /// Raw access for compiled code: the row bytes and the new arena bytes.
    pub fn raw_parts(&mut self) -> (&mut Vec<u8>, &mut Vec<u8>, usize) {
        (&mut self.rows, &mut self.extra, self.base.len())
    }

    /// Sets the row count after compiled code wrote rows directly.
    pub fn set_len(&mut self, len: usize) {
        assert!(len * self.layout.width as usize <= self.rows.len(), "rows were not written");
        self.len = len;
    }

    pub fn finish(self) -> Batch {
        Batch {
            layout: self.layout,
            rows: Bytes::from(self.rows),
            len: self.len,
            base: self.base,
            extra: Bytes::from(self.extra),
        }
    }
}

/// Encodes a value (of a list or record type) compactly: a tag byte then the payload.
pub fn encode_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(0),
        Value::Bool(b) => {
            out.push(1);
            out.push(u8::from(*b));
        }
        Value::Int(i) => {
            out.push(2);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Value::Float(x) => {
            out.push(3);
            out.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        Value::Decimal { units, scale } => {
            out.push(4);
            out.push(*scale);
            out.extend_from_slice(&units.to_le_bytes());
        }
        Value::String(s) => {
            out.push(5);
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        Value::Timestamp(t) => {
            out.push(6);
            out.extend_from_slice(&t.to_le_bytes());
        }
        Value::Duration(d) => {
            out.push(7);
            out.extend_from_slice(&d.to_le_bytes());
        }
        Value::List(items) | Value::Record(items) => {
            out.push(if matches!(v, Value::List(_)) { 8 } else { 9 });
            out.extend_from_slice(&(items.len() as u32).to_le_bytes());
            for it in items.iter() {
                encode_value(it, out);
            }
        }
    }
}

/// Decodes what [`encode_value`] wrote; `None` on malformed bytes.
pub fn decode_value(bytes: &[u8], _ty: &Type) -> Option<Value> {
    let mut at = 0;
    let v = decode_at(bytes, &mut at, 0)?;
    (at == bytes.len()).then_some(v)
}

const DECODE_DEPTH_MAX: usize = 64;

fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Option<&'a [u8]> {
    let s = bytes.get(*at..at.checked_add(n)?)?;
    *at += n;
    Some(s)
}

fn decode_at(bytes: &[u8], at: &mut usize, depth: usize) -> Option<Value> {
    if depth > DECODE_DEPTH_MAX {
        return None;
    }
    let tag = *take(bytes, at, 1)?.first()?;
    let i64_at = |at: &mut usize| take(bytes, at, 8).and_then(|b| b.try_into().ok()).map(i64::from_le_bytes);
    Some(match tag {
        0 => Value::Null,
        1 => Value::Bool(take(bytes, at, 1)?[0] != 0),
        2 => Value::Int(i64_at(at)?),
        3 => Value::Float(f64::from_bits(i64_at(at)? as u64)),
        4 => {
            let scale = take(bytes, at, 1)?[0];
            let units = i128::from_le_bytes(take(bytes, at, 16)?.try_into().ok()?);
            Value::Decimal { units, scale }
        }
        5 => {
            let n = u32::from_le_bytes(take(bytes, at, 4)?.try_into().ok()?) as usize;
            Value::String(std::str::from_utf8(take(bytes, at, n)?).ok()?.into())
        }
        6 => Value::Timestamp(i64_at(at)?),
        7 => Value::Duration(i64_at(at)?),
        8 | 9 => {
            let n = u32::from_le_bytes(take(bytes, at, 4)?.try_into().ok()?) as usize;
            if n > bytes.len() {
                return None;
            }
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(decode_at(bytes, at, depth + 1)?);
            }
            if tag == 8 {
                Value::List(items.into())
            } else {
                Value::Record(items.into())
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Field;

    fn rec() -> Arc<RecordType> {
        Arc::new(RecordType::new(
            None,
            vec![
                Field { name: "a".into(), ty: Type::int() },
                Field { name: "s".into(), ty: Type::string().nullable() },
                Field { name: "d".into(), ty: Type::decimal(12, 2) },
                Field { name: "big".into(), ty: Type::decimal(38, 4) },
                Field { name: "f".into(), ty: Type::float() },
                Field { name: "b".into(), ty: Type::bool() },
                Field { name: "t".into(), ty: Type::timestamp() },
                Field { name: "l".into(), ty: Type::list(Type::string()) },
            ],
        ))
    }

    #[test]
    fn layout_slots() {
        let l = Layout::new(rec());
        assert_eq!(l.bitmap_bytes, 8);
        assert_eq!(l.offsets, vec![8, 16, 24, 32, 48, 56, 64, 72]);
        assert_eq!(l.width, 80);
    }

    #[test]
    fn values_round_trip() {
        let layout = Arc::new(Layout::new(rec()));
        let mut b = BatchBuilder::new(layout);
        let row = vec![
            Value::Int(-5),
            Value::String("héllo".into()),
            Value::Decimal { units: 12345, scale: 2 },
            Value::Decimal { units: -(10i128.pow(37)), scale: 4 },
            Value::Float(1.5),
            Value::Bool(true),
            Value::Timestamp(1_700_000_000_000),
            Value::List(vec![Value::String("x".into()), Value::Null].into()),
        ];
        b.push_values(&row).unwrap();
        let mut nulls = row.clone();
        nulls[1] = Value::Null;
        b.push_values(&nulls).unwrap();
        let batch = b.finish();
        assert_eq!(batch.to_values(), vec![row, nulls]);
    }

    #[test]
    fn shared_base_arena() {
        let layout = Arc::new(Layout::new(Arc::new(RecordType::new(
            None,
            vec![Field { name: "s".into(), ty: Type::string() }],
        ))));
        let mut first = BatchBuilder::new(layout.clone());
        first.push_values(&[Value::String("abc".into())]).unwrap();
        let first = first.finish();
        // A second batch shares the first's arena and adds its own string.
        let mut second = BatchBuilder::with_base(layout, first.extra.clone());
        let r = second.push_row();
        second.set_span(r, 0, 0, 3);
        second.push_values(&[Value::String("de".into())]).unwrap();
        let second = second.finish();
        assert_eq!(second.to_values(), vec![vec![Value::String("abc".into())], vec![Value::String("de".into())]]);
    }

    #[test]
    fn decode_never_panics_on_garbage() {
        let t = Type::list(Type::int());
        for bytes in [&[][..], &[8, 255, 255, 255, 255], &[5, 10, 0, 0, 0, b'a'], &[9, 1, 0, 0, 0, 77], &[4, 2, 1]] {
            assert_eq!(decode_value(bytes, &t), None);
        }
    }
}
