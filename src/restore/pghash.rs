//! The staged rows' hash as Postgres computes it, and the same hash of the
//! rows as they were sent.
//!
//! A restore proves the staging table holds what it loaded without reading
//! the rows back over the wire: Postgres hashes each staged row and sums
//! the hashes per range of blocks; permafrost computes the same sum over
//! the binary `COPY … FROM` rows it sent. Equal sums (and counts) mean
//! Postgres holds, value for value, what it took (as its `=` compares
//! values: a float's -0 and 0, and its NaNs, hash alike); that those values are
//! the archive's is proved apart, in the process, by decoding the rows sent
//! with the archive's own decoder ([`super::load`]). Together that is what
//! reading the rows back proved, for about half of Postgres's work.
//!
//! A row's hash is the XOR of its values' hashes, each seeded with its
//! column's place (1, 2, …), a NULL 0, read as a signed 64-bit integer
//! (what Postgres sums). A value's hash is Postgres's own hash function of
//! its type where the type is one of the common ones ([`ColumnHash`]:
//! integers, floats, text, timestamps — the cheapest for Postgres, as no
//! value is converted), and otherwise the hash of its binary form (its
//! type's `send` function, the bytes a binary `COPY` carries, hashed as a
//! one-field record of `bytea`). PostgreSQL's hashes are Bob Jenkins'
//! lookup3 as PostgreSQL adapted it; before a restore relies on them the
//! server hashes a few probe values ([`PROBE_SQL`]) and must agree with
//! this module — another byte order, or a release that changed them, and
//! the staged rows are read back instead. PostgreSQL 14 or newer
//! (`hash_record_extended`).

use tokio_postgres::Client;

use super::StagedColumn;
use crate::error::{Error, Result};
use crate::filter::quote_ident;

/// Count and sum of row hashes: the rows a loader sent, or a range of the
/// staging table as Postgres hashed it. The sum is exact (Postgres sums
/// `int8` into a `numeric`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowSum {
    pub rows: u64,
    pub sum: i128,
}

impl RowSum {
    pub fn add(&mut self, other: RowSum) {
        self.rows += other.rows;
        self.sum += other.sum;
    }
}

/// How one column's values are hashed, chosen by its type's `send`
/// function (a domain has its base type's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnHash {
    Int2,
    Int4,
    Int8,
    /// `timestamp` and `timestamptz` hash their microseconds as `int8` does.
    Timestamp,
    Timestamptz,
    Float4,
    Float8,
    /// `text` and `varchar`, compared as bytes (`COLLATE "C"`).
    Text,
    /// Any other type: its binary form.
    Binary,
}

impl ColumnHash {
    fn of_send(send: &str) -> Self {
        match send {
            "int2send" => Self::Int2,
            "int4send" => Self::Int4,
            "int8send" => Self::Int8,
            "timestamp_send" => Self::Timestamp,
            "timestamptz_send" => Self::Timestamptz,
            "float4send" => Self::Float4,
            "float8send" => Self::Float8,
            "textsend" | "varcharsend" => Self::Text,
            _ => Self::Binary,
        }
    }

    /// Postgres's hash of `col` (an expression of the column's type, whose
    /// `send` function is `send`), seeded with `seed`.
    fn sql(self, col: &str, send: &str, seed: u64) -> String {
        match self {
            Self::Int2 => format!("hashint2extended({col}, {seed})"),
            Self::Int4 => format!("hashint4extended({col}, {seed})"),
            Self::Int8 => format!("hashint8extended({col}, {seed})"),
            Self::Timestamp => format!("timestamp_hash_extended({col}, {seed})"),
            // The same microseconds, as a timestamp (UTC has no offset).
            Self::Timestamptz => {
                format!("timestamp_hash_extended({col} AT TIME ZONE 'UTC', {seed})")
            }
            Self::Float4 => format!("hashfloat4extended({col}, {seed})"),
            Self::Float8 => format!("hashfloat8extended({col}, {seed})"),
            Self::Text => format!("hashtextextended({col} COLLATE \"C\", {seed})"),
            Self::Binary => format!("hash_record_extended(ROW({send}({col})), {seed})"),
        }
    }

    /// The same hash of a value in its binary form `v`.
    fn hash(self, v: &[u8], seed: u64) -> std::result::Result<u64, &'static str> {
        Ok(match self {
            Self::Int2 => hash_u32(i32::from(i16::from_be_bytes(be(v)?)) as u32, seed),
            Self::Int4 => hash_u32(i32::from_be_bytes(be(v)?) as u32, seed),
            Self::Int8 | Self::Timestamp | Self::Timestamptz => {
                let v = i64::from_be_bytes(be(v)?);
                let (lo, hi) = (v as u32, (v >> 32) as u32);
                hash_u32(lo ^ if v >= 0 { hi } else { !hi }, seed)
            }
            Self::Float4 => hash_f64(f64::from(f32::from_be_bytes(be(v)?)), seed),
            Self::Float8 => hash_f64(f64::from_be_bytes(be(v)?), seed),
            Self::Text | Self::Binary => hash_bytes(v, seed),
        })
    }
}

fn be<const N: usize>(v: &[u8]) -> std::result::Result<[u8; N], &'static str> {
    v.try_into()
        .map_err(|_| "a value is not as wide as its type")
}

/// `hashfloat8extended`: zero (either sign) hashes to the seed, every NaN
/// as one NaN, anything else as its eight bytes in memory order.
fn hash_f64(v: f64, seed: u64) -> u64 {
    if v == 0.0 {
        return seed;
    }
    let v = if v.is_nan() { f64::NAN } else { v };
    hash_bytes(&v.to_le_bytes(), seed)
}

/// How a restore's staged rows are hashed: each column's hash and the
/// expression Postgres hashes.
#[derive(Debug, Clone)]
pub struct RowHash {
    cols: Vec<(ColumnHash, String)>,
}

impl RowHash {
    /// Looks up how the staged columns hash: the `send` function of each
    /// column's type (of its cast, for a column loaded through one). `Err`
    /// says why Postgres cannot hash the rows the way this module does.
    pub async fn of(
        client: &Client,
        staging: &str,
        cols: &[StagedColumn],
    ) -> Result<std::result::Result<Self, String>> {
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(|e| Error::postgres("cannot query the server version", e))?
            .get(0);
        if version < 140000 {
            return Ok(Err("the server is older than PostgreSQL 14".into()));
        }
        let probed: Vec<i64> = client
            .query_one(PROBE_SQL, &[])
            .await
            .map_err(|e| Error::postgres("cannot hash the probe values", e))?
            .get(0);
        if probed != probe_hashes() {
            return Ok(Err(
                "the server's hash functions differ from permafrost's".into()
            ));
        }
        let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
        let casts: Vec<Option<&str>> = cols.iter().map(|c| c.cast.as_deref()).collect();
        let rows = client
            .query(
                "SELECT t.typsend::regproc::text FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS c(name, cast_to, i) \
                 LEFT JOIN pg_attribute a ON a.attrelid = $1::text::regclass AND a.attname = c.name AND NOT a.attisdropped \
                 LEFT JOIN pg_type t ON t.oid = coalesce(c.cast_to::regtype, a.atttypid) ORDER BY c.i",
                &[&staging, &names, &casts],
            )
            .await
            .map_err(|e| Error::postgres("cannot look up the staged types' send functions", e))?;
        let mut hashed = Vec::with_capacity(cols.len());
        for (place, (c, row)) in (1..).zip(cols.iter().zip(&rows)) {
            let Some(send) = row.get::<_, Option<String>>(0).filter(|s| s != "-") else {
                return Ok(Err(format!("column `{}` has no binary form", c.name)));
            };
            let expr = match &c.cast {
                Some(cast) => format!("({})::{cast}", quote_ident(&c.name)),
                None => quote_ident(&c.name),
            };
            let how = ColumnHash::of_send(&send);
            hashed.push((how, how.sql(&expr, &send, place)));
        }
        Ok(Ok(Self { cols: hashed }))
    }

    /// The SQL that counts and hash-sums the rows of `staging` matching `cond`.
    pub fn sum_sql(&self, staging: &str, cond: &str) -> String {
        let row: Vec<String> = self
            .cols
            .iter()
            .map(|(_, sql)| format!("coalesce({sql}, 0)"))
            .collect();
        format!(
            "SELECT count(*)::int8, coalesce(sum({}), 0)::text FROM {staging} WHERE {cond}",
            row.join(" # ")
        )
    }

    /// Adds the rows of binary COPY data to `sum`: whole tuples (field
    /// count, then each field's length and bytes, -1 for NULL), no header
    /// or trailer.
    pub fn add_copy_rows(
        &self,
        mut data: &[u8],
        sum: &mut RowSum,
    ) -> std::result::Result<(), &'static str> {
        while !data.is_empty() {
            let (n, rest) = take_be::<2>(data)?;
            if i16::from_be_bytes(n) as usize != self.cols.len() {
                return Err("a row has another number of fields");
            }
            data = rest;
            let mut row: u64 = 0;
            for (i, (how, _)) in self.cols.iter().enumerate() {
                let (len, rest) = take_be::<4>(data)?;
                let len = i32::from_be_bytes(len);
                if len < 0 {
                    data = rest;
                    continue;
                }
                let value = rest
                    .get(..len as usize)
                    .ok_or("a value runs past the rows")?;
                data = &rest[len as usize..];
                row ^= how.hash(value, i as u64 + 1)?;
            }
            sum.rows += 1;
            sum.sum += i128::from(row as i64);
        }
        Ok(())
    }
}

fn take_be<const N: usize>(data: &[u8]) -> std::result::Result<([u8; N], &[u8]), &'static str> {
    let (head, rest) = data
        .split_first_chunk::<N>()
        .ok_or("a row ends inside its fields")?;
    Ok((*head, rest))
}

/// Values each kind of [`ColumnHash`] hashes, as the server hashes them
/// (seed 7); [`probe_hashes`] is permafrost's answer.
pub const PROBE_SQL: &str = "SELECT ARRAY[hashint2extended(-3::int2, 7), hashint4extended(-7, 7), \
     hashint8extended(-5000000000, 7), hashint8extended(5000000000, 7), \
     timestamp_hash_extended('2024-01-02 03:04:05.678901+00'::timestamptz AT TIME ZONE 'UTC', 7), \
     hashfloat4extended(1.5::real, 7), hashfloat4extended('-0'::real, 7), hashfloat8extended(-2.25::float8, 7), \
     hashfloat8extended('NaN'::float8, 7), hashfloat4extended('NaN'::real, 7), \
     hashtextextended('h\u{e9}llo' COLLATE \"C\", 7), \
     hash_record_extended(ROW('\\x0102030405060708090a0b0c0d'::bytea), 7)]::int8[]";

/// The probe values of [`PROBE_SQL`], hashed here.
fn probe_hashes() -> Vec<i64> {
    let ts: i64 = 757_479_845_678_901; // 2024-01-02 03:04:05.678901 UTC, from 2000
    let probes: [(ColumnHash, Vec<u8>); 12] = [
        (ColumnHash::Int2, (-3i16).to_be_bytes().to_vec()),
        (ColumnHash::Int4, (-7i32).to_be_bytes().to_vec()),
        (ColumnHash::Int8, (-5_000_000_000i64).to_be_bytes().to_vec()),
        (ColumnHash::Int8, 5_000_000_000i64.to_be_bytes().to_vec()),
        (ColumnHash::Timestamptz, ts.to_be_bytes().to_vec()),
        (ColumnHash::Float4, 1.5f32.to_be_bytes().to_vec()),
        (ColumnHash::Float4, (-0.0f32).to_be_bytes().to_vec()),
        (ColumnHash::Float8, (-2.25f64).to_be_bytes().to_vec()),
        (ColumnHash::Float8, f64::NAN.to_be_bytes().to_vec()),
        (ColumnHash::Float4, f32::NAN.to_be_bytes().to_vec()),
        (ColumnHash::Text, "h\u{e9}llo".as_bytes().to_vec()),
        (ColumnHash::Binary, (1u8..=13).collect()),
    ];
    probes
        .iter()
        .map(|(how, v)| how.hash(v, 7).map_or(0, |h| h as i64))
        .collect()
}

/// PostgreSQL's `hash_uint32_extended(k, seed)`.
fn hash_u32(k: u32, seed: u64) -> u64 {
    let (mut a, mut b, mut c) = start(4, seed);
    a = a.wrapping_add(k);
    finish(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

/// lookup3's state for `len` bytes; a non-zero seed is mixed in first, as
/// PostgreSQL does (as a 12-byte block of its high and low halves, zeros).
fn start(len: usize, seed: u64) -> (u32, u32, u32) {
    let init = 0x9e37_79b9_u32
        .wrapping_add(len as u32)
        .wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (init, init, init);
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        mix(&mut a, &mut b, &mut c);
    }
    (a, b, c)
}

/// PostgreSQL's `hash_bytes_extended(k, len, seed)`: lookup3's mix of
/// 12-byte blocks, the last 0–11 bytes added little-endian into `a`, `b`
/// and the upper three bytes of `c`, then the final mix; `b` and `c` make
/// the 64-bit result.
fn hash_bytes(k: &[u8], seed: u64) -> u64 {
    let (mut a, mut b, mut c) = start(k.len(), seed);
    let mut blocks = k.chunks_exact(12);
    for block in &mut blocks {
        a = a.wrapping_add(le32(&block[0..4]));
        b = b.wrapping_add(le32(&block[4..8]));
        c = c.wrapping_add(le32(&block[8..12]));
        mix(&mut a, &mut b, &mut c);
    }
    let tail = blocks.remainder();
    a = a.wrapping_add(le32(&tail[..tail.len().min(4)]));
    if tail.len() > 4 {
        b = b.wrapping_add(le32(&tail[4..tail.len().min(8)]));
    }
    if tail.len() > 8 {
        // The lowest byte of `c` is left to the length.
        c = c.wrapping_add(le32(&tail[8..]) << 8);
    }
    finish(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

/// Up to four bytes, little-endian.
fn le32(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .enumerate()
        .fold(0, |v, (i, &byte)| v | u32::from(byte) << (8 * i))
}

fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c) ^ c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a) ^ a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b) ^ b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c) ^ c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a) ^ a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b) ^ b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

fn finish(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(14));
    *a = (*a ^ *c).wrapping_sub(c.rotate_left(11));
    *b = (*b ^ *a).wrapping_sub(a.rotate_left(25));
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(16));
    *a = (*a ^ *c).wrapping_sub(c.rotate_left(4));
    *b = (*b ^ *a).wrapping_sub(a.rotate_left(14));
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(24));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `hash_record_extended(ROW(substr('\x000102…2223ff80'::bytea, 1, n)), 0)`
    /// for n = 0…38, from PostgreSQL 15.
    const POSTGRES: [i64; 39] = [
        -6939563903564495251,
        -4194760714999882651,
        -5140417289146257673,
        -8337159150737471306,
        1398229737608282635,
        6337427694993076522,
        -3259370686033190711,
        1842562459961707140,
        4646862414158011804,
        -5331920357031723859,
        -3068757020819849220,
        -5508356841497088037,
        -4011551736052134804,
        4734898044692404888,
        -217791914517250347,
        8527553495513907399,
        -2148041578476338960,
        2859851628912485476,
        -5729568429382717182,
        -980506202959168495,
        -2656122206625028004,
        407655028131215024,
        6655855073994874860,
        1709535909688034376,
        -6092754882180216172,
        955279495678954521,
        -114099206829846966,
        8680009264351742410,
        -8293767306059303190,
        -9207404993253667459,
        -3140786680732384534,
        5759134757904501917,
        -5765268673833643265,
        -8931596926097671113,
        6924127457139768536,
        -5293943661752534182,
        -1440390079502406077,
        -2646871643174085116,
        7131224838251195578,
    ];

    fn key() -> Vec<u8> {
        let mut k: Vec<u8> = (0u8..=0x23).collect();
        k.extend([0xff, 0x80]);
        k
    }

    #[test]
    fn bytes_hash_as_postgres_hashes_them_at_every_tail_length() {
        let k = key();
        for (n, want) in POSTGRES.iter().enumerate() {
            assert_eq!(hash_bytes(&k[..n], 0) as i64, *want, "{n} bytes");
        }
    }

    fn tuple(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut t = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                None => t.extend((-1i32).to_be_bytes()),
                Some(v) => {
                    t.extend((v.len() as i32).to_be_bytes());
                    t.extend(*v);
                }
            }
        }
        t
    }

    #[test]
    fn probe_values_hash_as_postgresql_15_hashes_them() {
        // PROBE_SQL's answer from PostgreSQL 15 on x86_64.
        let postgres: [i64; 12] = [
            4734684612700091724,
            -4559598768888980245,
            -4714785727553898199,
            -7347393645835168615,
            -5828001223604710839,
            5076885761154526455,
            7,
            7305508408189100611,
            4630774196508139456,
            4630774196508139456,
            5395740107927511488,
            5220022209436247417,
        ];
        assert_eq!(probe_hashes(), postgres);
    }

    const ROW_1: i64 = -2407024689948535952;
    const ROW_2: i64 = -8263073455563121851;

    fn row_hash() -> RowHash {
        let how = [
            ColumnHash::Int4,
            ColumnHash::Text,
            ColumnHash::Float8,
            ColumnHash::Binary,
        ];
        RowHash {
            cols: how.into_iter().map(|h| (h, String::new())).collect(),
        }
    }

    #[test]
    fn rows_hash_as_postgres_hashes_them() {
        // SELECT coalesce(hashint4extended(i, 1), 0) # coalesce(hashtextextended(t COLLATE "C", 2), 0)
        //   # coalesce(hashfloat8extended(f, 3), 0) # coalesce(hash_record_extended(ROW(b), 4), 0)
        // FROM (VALUES (42, 'abc', 0.5::float8, '\xdeadbeef'::bytea),
        //              (NULL, '', '-0'::float8, NULL), (NULL, NULL, NULL, NULL)) v(i, t, f, b)
        let rows = [
            (
                tuple(&[
                    Some(&42i32.to_be_bytes()),
                    Some(b"abc"),
                    Some(&0.5f64.to_be_bytes()),
                    Some(&[0xde, 0xad, 0xbe, 0xef]),
                ]),
                ROW_1,
            ),
            (
                tuple(&[None, Some(b""), Some(&(-0.0f64).to_be_bytes()), None]),
                ROW_2,
            ),
            (tuple(&[None, None, None, None]), 0),
        ];
        let how = row_hash();
        let mut all = RowSum::default();
        let mut data = Vec::new();
        for (t, want) in &rows {
            let mut one = RowSum::default();
            how.add_copy_rows(t, &mut one).expect("one row");
            assert_eq!(
                one,
                RowSum {
                    rows: 1,
                    sum: i128::from(*want)
                }
            );
            all.add(one);
            data.extend(t);
        }
        let mut together = RowSum::default();
        how.add_copy_rows(&data, &mut together).expect("three rows");
        assert_eq!(together, all);
        assert_eq!(together.rows, 3);
    }

    #[test]
    fn a_row_cut_short_is_an_error() {
        let t = tuple(&[Some(&[1, 2, 3, 4]), None, None, None]);
        let how = row_hash();
        for cut in 1..t.len() {
            let mut sum = RowSum::default();
            assert!(how.add_copy_rows(&t[..cut], &mut sum).is_err(), "{cut}");
        }
        let short = tuple(&[Some(&[1, 2, 3]), None, None, None]);
        let mut sum = RowSum::default();
        assert!(
            how.add_copy_rows(&short, &mut sum).is_err(),
            "a 3-byte int4"
        );
    }
}
