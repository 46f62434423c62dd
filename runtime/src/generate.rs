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
use flow_types::row::{Batch, BatchBuilder, Layout};
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

/// One generated record as (field name, value) pairs, in a fixed order.
type Fields = Vec<(&'static str, Value)>;

struct Transactions {
    rng: Rng,
    i: u64,
    accounts: u64,
}

impl Transactions {
    fn next(&mut self) -> Fields {
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
        vec![
            ("id", Value::String(format!("t{i:010}").into())),
            ("account", Value::String(format!("acct-{account:05}").into())),
            ("merchant", Value::String(format!("m-{:04}", r.below(500)).into())),
            ("amount", Value::Decimal { units: cents as i128, scale: 2 }),
            ("ts", Value::Timestamp(ts)),
            ("country", Value::String(COUNTRIES[r.below(COUNTRIES.len() as u64) as usize].into())),
            ("channel", Value::String(CHANNELS[r.below(CHANNELS.len() as u64) as usize].into())),
            ("status", Value::String(status.into())),
        ]
    }
}

/// Nexmark's generator model: of every 50 events, 1 is a new person, 3 are new
/// auctions and 46 are bids; bids go to recent auctions by recent bidders.
struct Nexmark {
    rng: Rng,
    i: u64,
    want: GeneratorKind,
}

const FIRST_PERSON_ID: i64 = 1000;
const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;

impl Nexmark {
    /// The next event of the wanted stream (events of other streams are skipped, so
    /// ids agree across the three streams of one seed).
    fn next(&mut self) -> Fields {
        loop {
            let i = self.i;
            self.i += 1;
            let slot = i % 50;
            // People and auctions created so far, this event included.
            let persons = (i / 50) as i64 + 1;
            let auctions = (i / 50) as i64 * 3 + slot.min(3) as i64;
            let date_time = BASE_TS_MS + i as i64;
            let kind = match slot {
                0 => GeneratorKind::NexmarkPersons,
                1..=3 => GeneratorKind::NexmarkAuctions,
                _ => GeneratorKind::NexmarkBids,
            };
            // Draw the same random numbers whatever stream is wanted.
            let mut r = Rng::new(self.rng.0 ^ i.wrapping_mul(0x2545_F491_4F6C_DD1D));
            let extra = format!("{:x}", r.next_u64());
            if kind != self.want {
                continue;
            }
            return match kind {
                GeneratorKind::NexmarkPersons => {
                    let id = FIRST_PERSON_ID + persons - 1;
                    let name = format!(
                        "{} {}",
                        FIRST[r.below(FIRST.len() as u64) as usize],
                        LAST[r.below(LAST.len() as u64) as usize]
                    );
                    vec![
                        ("id", Value::Int(id)),
                        ("email_address", Value::String(format!("{}@{}.com", name.replace(' ', "."), extra).into())),
                        ("name", Value::String(name.into())),
                        (
                            "credit_card",
                            Value::String(
                                format!(
                                    "{:04} {:04} {:04} {:04}",
                                    r.below(10_000),
                                    r.below(10_000),
                                    r.below(10_000),
                                    r.below(10_000)
                                )
                                .into(),
                            ),
                        ),
                        ("city", Value::String(CITIES[r.below(CITIES.len() as u64) as usize].into())),
                        ("state", Value::String(STATES[r.below(STATES.len() as u64) as usize].into())),
                        ("date_time", Value::Timestamp(date_time)),
                        ("extra", Value::String(extra.into())),
                    ]
                }
                GeneratorKind::NexmarkAuctions => {
                    let id = FIRST_AUCTION_ID + auctions - 1;
                    let initial_bid = 1 + r.below(1000) as i64;
                    let seller = FIRST_PERSON_ID + r.below(persons.max(1) as u64) as i64;
                    vec![
                        ("id", Value::Int(id)),
                        ("item_name", Value::String(format!("item-{id}").into())),
                        ("description", Value::String(format!("description of item {id}").into())),
                        ("initial_bid", Value::Int(initial_bid)),
                        ("reserve", Value::Int(initial_bid + r.below(1000) as i64)),
                        ("date_time", Value::Timestamp(date_time)),
                        ("expires", Value::Timestamp(date_time + 10_000 + r.below(10_000) as i64)),
                        ("seller", Value::Int(seller)),
                        ("category", Value::Int(FIRST_CATEGORY_ID + r.below(5) as i64)),
                        ("extra", Value::String(extra.into())),
                    ]
                }
                _ => {
                    // Hot auctions and bidders: most bids go to the latest ones.
                    let recent_auctions = auctions.clamp(1, 100) as u64;
                    let auction = FIRST_AUCTION_ID + (auctions - 1 - r.below(recent_auctions) as i64).max(0);
                    let recent_persons = persons.clamp(1, 100) as u64;
                    let bidder = FIRST_PERSON_ID + (persons - 1 - r.below(recent_persons) as i64).max(0);
                    let price = 100 + (r.below(1 << 20) as f64).sqrt() as i64 * 10;
                    let channel = NEXMARK_CHANNELS[r.below(NEXMARK_CHANNELS.len() as u64) as usize];
                    vec![
                        ("auction", Value::Int(auction)),
                        ("bidder", Value::Int(bidder)),
                        ("price", Value::Int(price)),
                        ("channel", Value::String(channel.into())),
                        (
                            "url",
                            Value::String(
                                format!(
                                    "https://www.nexmark.com/{}/item.htm?query=1&channel_id={}",
                                    channel.to_lowercase(),
                                    r.below(1000)
                                )
                                .into(),
                            ),
                        ),
                        ("date_time", Value::Timestamp(date_time)),
                        ("extra", Value::String(extra.into())),
                    ]
                }
            };
        }
    }
}

/// Generates records of `kind` into batches of `layout`, calling `emit` per batch
/// until `count` records (forever without one) or until `emit` returns false.
pub fn generate(
    kind: GeneratorKind,
    seed: i64,
    count: Option<i64>,
    keys: Option<i64>,
    rate_per_s: Option<i64>,
    layout: &Arc<Layout>,
    emit: &mut dyn FnMut(Batch) -> bool,
) -> Result<(), String> {
    let mut next: Box<dyn FnMut() -> Fields> = match kind {
        GeneratorKind::Transactions => {
            let mut g =
                Transactions { rng: Rng::new(seed as u64), i: 0, accounts: keys.unwrap_or(10_000).max(1) as u64 };
            Box::new(move || g.next())
        }
        other => {
            let mut g = Nexmark { rng: Rng::new(seed as u64), i: 0, want: other };
            Box::new(move || g.next())
        }
    };
    // Map the schema's fields to the generator's, once.
    let sample = next();
    let map: Vec<usize> = layout
        .record
        .fields
        .iter()
        .map(|f| {
            sample
                .iter()
                .position(|(n, _)| *n == f.name)
                .ok_or_else(|| format!("the generator does not produce `{}`", f.name))
        })
        .collect::<Result<_, _>>()?;
    let total = count.map(|c| c.max(0) as u64);
    let started = Instant::now();
    let mut produced = 0u64;
    let mut pending = Some(sample);
    loop {
        let mut b = BatchBuilder::new(layout.clone());
        while b.len() < GEN_BATCH_ROWS && total.is_none_or(|t| produced < t) {
            let rec = pending.take().unwrap_or_else(&mut next);
            let row: Vec<Value> = map.iter().map(|&j| rec[j].1.clone()).collect();
            b.push_values(&row).map_err(|e| format!("generated value does not fit the schema: {e:?}"))?;
            produced += 1;
        }
        if b.is_empty() {
            return Ok(());
        }
        if let Some(rate) = rate_per_s.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(produced as f64 / rate as f64);
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
        generate(kind, 42, Some(n), Some(50), None, l, &mut |b| {
            rows.extend(b.to_values());
            true
        })
        .unwrap();
        rows
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
