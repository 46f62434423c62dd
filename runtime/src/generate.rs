//! Built-in deterministic data generators: `transactions` (the flagship's card
//! payments) and `nexmark` (the Nexmark benchmark's persons, auctions and bids).
//!
//! The same kind, seed and count always give the same records, byte for byte. Event
//! time is synthetic (starting at 2023-11-14T22:13:20Z and advancing 1 ms per event,
//! with bounded disorder for transactions), never the wall clock; `rate` paces emission
//! in records per wall-clock second, or emits as fast as possible without it. Only the
//! fields the source's schema declares are filled (the checker made sure the generator
//! produces each of them with a compatible type).

use flow_compiler::ir::GeneratorKind;
use flow_types::row::{Batch, BatchBuilder, Layout, SlotKind};
use flow_types::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// First event time: 2023-11-14T22:13:20Z.
pub const BASE_TS_MS: i64 = 1_700_000_000_000;
/// Rows per generated batch.
pub const GEN_BATCH_ROWS: usize = 4096;

/// SplitMix64: small, fast, and the same everywhere.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

const COUNTRIES: &[&str] = &["US", "GB", "DE", "FR", "NL", "ES", "IT", "BR", "IN", "JP"];
const CHANNELS: &[&str] = &["online", "pos", "atm"];
const NEXMARK_CHANNELS: &[&str] = &["Google", "Facebook", "Baidu", "Apple"];
const CITIES: &[&str] =
    &["Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond", "Seattle", "Kent", "Cheyenne"];
const STATES: &[&str] = &["AZ", "CA", "ID", "OR", "WA", "WY"];
const FIRST: &[&str] =
    &["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter"];
const LAST: &[&str] = &["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"];

/// Writes one generated record's fields into a row, only those the schema declares.
///
/// Generators name fields by their index in `check::generator_fields(kind)`; a field
/// of the schema's exact slot kind is written straight into its slot (strings are
/// formatted into a reused buffer, and only when wanted), any other compatible type
/// through a `Value` conversion.
struct RowWriter<'a> {
    b: &'a mut BatchBuilder,
    row: usize,
    /// Per generator field: the schema's field index and whether it takes the fast path.
    map: &'a [Option<(usize, bool)>],
    scratch: String,
    error: Option<String>,
}

impl RowWriter<'_> {
    fn want(&self, f: usize) -> bool {
        self.map[f].is_some()
    }

    fn slow(&mut self, to: usize, v: Value) {
        if let Err(e) = self.b.set_value(self.row, to, &v) {
            self.error.get_or_insert(format!("generated value does not fit the schema: {e:?}"));
        }
    }

    fn int(&mut self, f: usize, v: i64) {
        match self.map[f] {
            Some((to, true)) => self.b.set_i64(self.row, to, v),
            Some((to, false)) => self.slow(to, Value::Int(v)),
            None => {}
        }
    }

    fn ts(&mut self, f: usize, v: i64) {
        match self.map[f] {
            Some((to, true)) => self.b.set_i64(self.row, to, v),
            Some((to, false)) => self.slow(to, Value::Timestamp(v)),
            None => {}
        }
    }

    fn dec(&mut self, f: usize, units: i64, scale: u8) {
        match self.map[f] {
            Some((to, true)) => self.b.set_i64(self.row, to, units),
            Some((to, false)) => self.slow(to, Value::Decimal { units: units as i128, scale }),
            None => {}
        }
    }

    fn str(&mut self, f: usize, v: &str) {
        match self.map[f] {
            Some((to, true)) => {
                if let Err(e) = self.b.set_str(self.row, to, v) {
                    self.error.get_or_insert(format!("generated value does not fit the schema: {e:?}"));
                }
            }
            Some((to, false)) => self.slow(to, Value::String(v.into())),
            None => {}
        }
    }

    /// A string field formatted by `fill`, which runs only when the field is wanted.
    fn fmt(&mut self, f: usize, fill: impl FnOnce(&mut String)) {
        if !self.want(f) {
            return;
        }
        let mut s = std::mem::take(&mut self.scratch);
        s.clear();
        fill(&mut s);
        self.str(f, &s);
        self.scratch = s;
    }
}

/// Appends `v` in decimal, zero-padded to `width` digits.
fn push_padded(s: &mut String, v: u64, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(v);
    for _ in digits.len()..width {
        s.push('0');
    }
    s.push_str(digits);
}

fn push_int(s: &mut String, v: i64) {
    s.push_str(itoa::Buffer::new().format(v));
}

/// Appends `v` in lower-case hex without leading zeros (as `{:x}` does).
fn push_hex(s: &mut String, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    let mut x = v;
    loop {
        i -= 1;
        buf[i] = DIGITS[(x & 15) as usize];
        x >>= 4;
        if x == 0 {
            break;
        }
    }
    // SAFETY: ASCII hex digits are valid UTF-8; appended in one copy, unchecked.
    unsafe { s.as_mut_vec() }.extend_from_slice(&buf[i..]);
}

struct Transactions {
    rng: Rng,
    i: u64,
    accounts: u64,
}

impl Transactions {
    // Field indexes in `generator_fields(Transactions)`.
    const ID: usize = 0;
    const ACCOUNT: usize = 1;
    const MERCHANT: usize = 2;
    const AMOUNT: usize = 3;
    const TS: usize = 4;
    const COUNTRY: usize = 5;
    const CHANNEL: usize = 6;
    const STATUS: usize = 7;

    fn next(&mut self, w: &mut RowWriter) {
        let r = &mut self.rng;
        let i = self.i;
        self.i += 1;
        // Arrival one event per ms of event time; event time up to 5 s behind arrival.
        let arrival = BASE_TS_MS + i as i64;
        let ts = arrival - r.below(5_000) as i64;
        let account = r.below(self.accounts);
        // Mostly small amounts, with a heavy tail: 1% between 1,000 and 20,000.
        let cents = if r.below(100) == 0 { 100_000 + r.below(1_900_000) } else { 100 + r.below(99_900) };
        let status = if r.below(20) == 0 { "declined" } else { "approved" };
        let merchant = r.below(500);
        let country = COUNTRIES[r.below(COUNTRIES.len() as u64) as usize];
        let channel = CHANNELS[r.below(CHANNELS.len() as u64) as usize];
        w.fmt(Self::ID, |s| {
            s.push('t');
            push_padded(s, i, 10);
        });
        w.fmt(Self::ACCOUNT, |s| {
            s.push_str("acct-");
            push_padded(s, account, 5);
        });
        w.fmt(Self::MERCHANT, |s| {
            s.push_str("m-");
            push_padded(s, merchant, 4);
        });
        w.dec(Self::AMOUNT, cents as i64, 2);
        w.ts(Self::TS, ts);
        w.str(Self::COUNTRY, country);
        w.str(Self::CHANNEL, channel);
        w.str(Self::STATUS, status);
    }
}

/// Nexmark's generator model: of every 50 events, 1 is a new person, 3 are new
/// auctions and 46 are bids; bids go to recent auctions by recent bidders.
struct Nexmark {
    seed: u64,
    i: u64,
    want: GeneratorKind,
}

const FIRST_PERSON_ID: i64 = 1000;
const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;

impl Nexmark {
    /// The next event of the wanted stream. Each event draws from its own generator
    /// (seeded by the seed and the event's number), so events of other streams are
    /// skipped without drawing, and ids agree across the three streams of one seed.
    fn next(&mut self, w: &mut RowWriter) {
        let (i, slot) = loop {
            let i = self.i;
            self.i += 1;
            let slot = i % 50;
            let kind = match slot {
                0 => GeneratorKind::NexmarkPersons,
                1..=3 => GeneratorKind::NexmarkAuctions,
                _ => GeneratorKind::NexmarkBids,
            };
            if kind == self.want {
                break (i, slot);
            }
        };
        // People and auctions created so far, this event included.
        let persons = (i / 50) as i64 + 1;
        let auctions = (i / 50) as i64 * 3 + slot.min(3) as i64;
        let date_time = BASE_TS_MS + i as i64;
        let mut r = Rng::new(self.seed ^ i.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let extra = r.next_u64();
        match self.want {
            GeneratorKind::NexmarkPersons => {
                // Field indexes in `generator_fields(NexmarkPersons)`.
                let id = FIRST_PERSON_ID + persons - 1;
                let first = FIRST[r.below(FIRST.len() as u64) as usize];
                let last = LAST[r.below(LAST.len() as u64) as usize];
                let card = [r.below(10_000), r.below(10_000), r.below(10_000), r.below(10_000)];
                let city = CITIES[r.below(CITIES.len() as u64) as usize];
                let state = STATES[r.below(STATES.len() as u64) as usize];
                w.int(0, id);
                w.fmt(1, |s| {
                    s.push_str(first);
                    s.push(' ');
                    s.push_str(last);
                });
                w.fmt(2, |s| {
                    s.push_str(first);
                    s.push('.');
                    s.push_str(last);
                    s.push('@');
                    push_hex(s, extra);
                    s.push_str(".com");
                });
                w.fmt(3, |s| {
                    for (k, part) in card.iter().enumerate() {
                        if k > 0 {
                            s.push(' ');
                        }
                        push_padded(s, *part, 4);
                    }
                });
                w.str(4, city);
                w.str(5, state);
                w.ts(6, date_time);
                w.fmt(7, |s| push_hex(s, extra));
            }
            GeneratorKind::NexmarkAuctions => {
                let id = FIRST_AUCTION_ID + auctions - 1;
                let initial_bid = 1 + r.below(1000) as i64;
                let seller = FIRST_PERSON_ID + r.below(persons.max(1) as u64) as i64;
                let reserve = initial_bid + r.below(1000) as i64;
                let expires = date_time + 10_000 + r.below(10_000) as i64;
                let category = FIRST_CATEGORY_ID + r.below(5) as i64;
                w.int(0, id);
                w.fmt(1, |s| {
                    s.push_str("item-");
                    push_int(s, id);
                });
                w.fmt(2, |s| {
                    s.push_str("description of item ");
                    push_int(s, id);
                });
                w.int(3, initial_bid);
                w.int(4, reserve);
                w.ts(5, date_time);
                w.ts(6, expires);
                w.int(7, seller);
                w.int(8, category);
                w.fmt(9, |s| push_hex(s, extra));
            }
            _ => {
                // Hot auctions and bidders: most bids go to the latest ones.
                let recent_auctions = auctions.clamp(1, 100) as u64;
                let auction = FIRST_AUCTION_ID + (auctions - 1 - r.below(recent_auctions) as i64).max(0);
                let recent_persons = persons.clamp(1, 100) as u64;
                let bidder = FIRST_PERSON_ID + (persons - 1 - r.below(recent_persons) as i64).max(0);
                // Nexmark's PriceGenerator: round(10^(6u) * 100), u uniform in [0, 1);
                // drawn always (the draws after it stay the same), computed if wanted.
                let price_draw = r.next_u64();
                let c = r.below(NEXMARK_CHANNELS.len() as u64) as usize;
                let channel_id = r.below(1000);
                w.int(0, auction);
                w.int(1, bidder);
                if w.want(2) {
                    let u = (price_draw >> 11) as f64 / (1u64 << 53) as f64;
                    let price = ((u * 6.0 * std::f64::consts::LN_10).exp() * 100.0).round() as i64;
                    w.int(2, price);
                }
                w.str(3, NEXMARK_CHANNELS[c]);
                w.fmt(4, |s| {
                    s.push_str("https://www.nexmark.com/");
                    s.push_str(NEXMARK_URL_CHANNELS[c]);
                    s.push_str("/item.htm?query=1&channel_id=");
                    push_int(s, channel_id as i64);
                });
                w.ts(5, date_time);
                w.fmt(6, |s| push_hex(s, extra));
            }
        }
    }
}

/// `NEXMARK_CHANNELS` as they appear in bid URLs.
const NEXMARK_URL_CHANNELS: &[&str] = &["google", "facebook", "baidu", "apple"];

/// Whether a generated field of type `produced` can be written straight into `to`'s slot.
fn fast_path(produced: &flow_types::Type, to: &flow_types::Type) -> bool {
    use flow_types::Kind;
    matches!(
        (&produced.kind, &to.kind),
        (Kind::Int, Kind::Int) | (Kind::Timestamp, Kind::Timestamp) | (Kind::String, Kind::String)
    ) || matches!(
        (&produced.kind, &to.kind),
        (Kind::Decimal { scale: a, .. }, Kind::Decimal { scale: b, precision }) if a == b && *precision <= 18
    )
}

/// What a generator source makes: its kind, seed, record count (unbounded without
/// one), number of keys and pace (records per second; as fast as possible without).
#[derive(Clone, Copy, Debug)]
pub struct GenSpec {
    pub kind: GeneratorKind,
    pub seed: i64,
    pub count: Option<i64>,
    pub keys: Option<i64>,
    pub rate_per_s: Option<i64>,
}

impl GenSpec {
    /// The spec of a `generator(...)` connector; `None` for other connectors.
    pub fn of(c: &flow_compiler::ir::Connector) -> Option<GenSpec> {
        match *c {
            flow_compiler::ir::Connector::Generator { kind, rate_per_s, seed, count, keys } => {
                Some(GenSpec { kind, seed, count, keys, rate_per_s })
            }
            _ => None,
        }
    }
}

/// Generates records into batches of `layout`, calling `emit` per batch until the
/// spec's count (forever without one) or until `emit` returns false. With `wanted`
/// (per field of `layout`), the fields not wanted are not generated but left null:
/// the reader does not read them (projection push-down), and a record that reaches a
/// dead-letter output shows them as null rather than as made-up values. Every record
/// is still drawn in full, so the wanted fields are the same either way.
pub fn generate(
    spec: GenSpec,
    layout: &Arc<Layout>,
    wanted: Option<&[bool]>,
    emit: &mut dyn FnMut(Batch) -> bool,
) -> Result<(), String> {
    let GenSpec { kind, seed, count, keys, rate_per_s } = spec;
    let produced = flow_compiler::check::generator_fields(kind);
    // Map the generator's fields to the schema's, once.
    let mut map: Vec<Option<(usize, bool)>> = vec![None; produced.len()];
    // The null bits of the fields not generated, set in each row at once (its slots
    // stay zero); empty when every field is.
    let mut skipped = Vec::new();
    for (to, f) in layout.record.fields.iter().enumerate() {
        let from = produced
            .iter()
            .position(|(n, _)| *n == f.name)
            .ok_or_else(|| format!("the generator does not produce `{}`", f.name))?;
        if wanted.is_none_or(|w| w.get(to).copied().unwrap_or(true)) {
            map[from] = Some((to, fast_path(&produced[from].1, &f.ty)));
        } else {
            skipped.resize(layout.record.fields.len().div_ceil(8), 0u8);
            skipped[to / 8] |= 1 << (to % 8);
        }
    }
    let mut transactions =
        Transactions { rng: Rng::new(seed as u64), i: 0, accounts: keys.unwrap_or(10_000).max(1) as u64 };
    let mut nexmark = Nexmark { seed: Rng::new(seed as u64).0, i: 0, want: kind };
    let total = count.map(|c| c.max(0) as u64);
    let started = Instant::now();
    let mut produced_n = 0u64;
    let mut scratch = String::new();
    // Room for a whole batch up front: no reallocation while it fills.
    let strings = map.iter().flatten().filter(|(to, _)| matches!(layout.slot_kinds[*to], SlotKind::Str)).count();
    let arena_guess = strings * 32;
    loop {
        let mut b = BatchBuilder::with_capacity(layout.clone(), GEN_BATCH_ROWS, GEN_BATCH_ROWS * arena_guess);
        while b.len() < GEN_BATCH_ROWS && total.is_none_or(|t| produced_n < t) {
            let row = b.push_row();
            let mut w = RowWriter { b: &mut b, row, map: &map, scratch: std::mem::take(&mut scratch), error: None };
            match kind {
                GeneratorKind::Transactions => transactions.next(&mut w),
                _ => nexmark.next(&mut w),
            }
            scratch = std::mem::take(&mut w.scratch);
            if let Some(e) = w.error {
                return Err(e);
            }
            if !skipped.is_empty() {
                b.or_null_bits(row, &skipped);
            }
            produced_n += 1;
        }
        if b.is_empty() {
            return Ok(());
        }
        if let Some(rate) = rate_per_s.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(produced_n as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if !emit(b.finish()) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_types::{Field, RecordType, Type};

    fn layout(fields: &[(&str, Type)]) -> Arc<Layout> {
        Arc::new(Layout::new(Arc::new(RecordType::new(
            None,
            fields.iter().map(|(n, t)| Field { name: n.to_string(), ty: t.clone() }).collect(),
        ))))
    }

    fn collect(kind: GeneratorKind, l: &Arc<Layout>, n: i64) -> Vec<Vec<Value>> {
        let mut rows = Vec::new();
        let spec = GenSpec { kind, seed: 42, count: Some(n), keys: Some(50), rate_per_s: None };
        generate(spec, l, None, &mut |b| {
            rows.extend(b.to_values());
            true
        })
        .unwrap();
        rows
    }

    #[test]
    fn hex_matches_the_formatter() {
        for v in [0u64, 1, 15, 16, 255, 0xdead_beef, u64::MAX] {
            let mut s = String::new();
            push_hex(&mut s, v);
            assert_eq!(s, format!("{v:x}"));
        }
    }

    #[test]
    fn transactions_are_deterministic_and_bounded() {
        let l = layout(&[
            ("account", Type::string()),
            ("amount", Type::decimal(12, 2)),
            ("ts", Type::timestamp()),
            ("status", Type::string()),
        ]);
        let a = collect(GeneratorKind::Transactions, &l, 10_000);
        let b = collect(GeneratorKind::Transactions, &l, 10_000);
        assert_eq!(a.len(), 10_000);
        assert_eq!(a, b);
        for row in &a {
            let Value::Timestamp(ts) = row[2] else { panic!("ts") };
            assert!(ts > BASE_TS_MS - 5_000 && ts < BASE_TS_MS + 10_000);
            let Value::Decimal { units, .. } = row[1] else { panic!("amount") };
            assert!((100..2_000_000).contains(&units));
        }
        let declined = a.iter().filter(|r| r[3] == Value::String("declined".into())).count();
        assert!((300..700).contains(&declined), "{declined}");
        let accounts: std::collections::HashSet<String> = a.iter().map(|r| r[0].to_string()).collect();
        assert_eq!(accounts.len(), 50);
    }

    #[test]
    fn unwanted_fields_are_skipped_and_wanted_ones_unchanged() {
        let l = layout(&[
            ("auction", Type::int()),
            ("url", Type::string()),
            ("price", Type::int()),
            ("extra", Type::string()),
        ]);
        let spec =
            GenSpec { kind: GeneratorKind::NexmarkBids, seed: 7, count: Some(5000), keys: None, rate_per_s: None };
        let run = |wanted: Option<&[bool]>| {
            let mut rows = Vec::new();
            generate(spec, &l, wanted, &mut |b| {
                rows.extend(b.to_values());
                true
            })
            .unwrap();
            rows
        };
        let all = run(None);
        let some = run(Some(&[true, false, true, false]));
        assert_eq!(all.len(), 5000);
        for (a, s) in all.iter().zip(&some) {
            assert_eq!((&a[0], &a[2]), (&s[0], &s[2]));
            assert!(matches!(&a[1], Value::String(u) if u.starts_with("https://")));
            assert_eq!(s[1], Value::Null, "url is not generated");
        }
    }

    #[test]
    fn nexmark_proportions_and_consistent_ids() {
        let bids = collect(
            GeneratorKind::NexmarkBids,
            &layout(&[("auction", Type::int()), ("bidder", Type::int()), ("price", Type::int())]),
            4600,
        );
        let auctions =
            collect(GeneratorKind::NexmarkAuctions, &layout(&[("id", Type::int()), ("seller", Type::int())]), 300);
        let persons = collect(GeneratorKind::NexmarkPersons, &layout(&[("id", Type::int())]), 100);
        assert_eq!((bids.len(), auctions.len(), persons.len()), (4600, 300, 100));
        // 4600 bids span 100 rounds of 50 events: they reference the auctions and persons created so far.
        let max_auction = auctions.iter().map(|r| if let Value::Int(i) = r[0] { i } else { 0 }).max().unwrap();
        for b in &bids {
            let (Value::Int(a), Value::Int(p)) = (&b[0], &b[1]) else { panic!() };
            assert!(*a >= FIRST_AUCTION_ID && *a <= max_auction, "{a}");
            assert!(*p >= FIRST_PERSON_ID && *p < FIRST_PERSON_ID + 100, "{p}");
        }
        assert_eq!(persons[0][0], Value::Int(FIRST_PERSON_ID));
        assert_eq!(auctions[0][0], Value::Int(FIRST_AUCTION_ID));
    }
}
