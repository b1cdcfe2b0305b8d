//! Order-independent content checksums and row hashes.
//!
//! Each row is encoded canonically (a tag byte per value, then fixed-width
//! little-endian numbers or length-prefixed bytes) and hashed with xxh3-128.
//! A batch's checksum is the row count plus the wrapping sum of its row hashes:
//! independent of row order, sensitive to duplicates.  The encoding depends on
//! values only, not on the Arrow representation (Utf8 vs LargeUtf8, time-zone
//! spelling of timestamps), so the Postgres stream and the data read back from
//! Iceberg hash identically.

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use xxhash_rust::xxh3::xxh3_128;

use crate::column::{Column, Values};
use crate::error::{Error, Result};

/// Row count plus the wrapping sum of row hashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checksum {
    pub rows: u64,
    pub sum: u128,
}

impl Checksum {
    /// Adds the rows of `hashes`.
    pub fn add_hashes(&mut self, hashes: &[u128]) {
        self.rows += hashes.len() as u64;
        for h in hashes {
            self.sum = self.sum.wrapping_add(*h);
        }
    }

    /// Adds the rows `other` counts.
    pub fn add(&mut self, other: Checksum) {
        self.rows += other.rows;
        self.sum = self.sum.wrapping_add(other.sum);
    }

    /// The sum as 32 hex digits (what the snapshot summary stores).
    pub fn hex(&self) -> String {
        format!("{:032x}", self.sum)
    }
}

/// Computes row hashes, reusing its buffers across batches.
#[derive(Default)]
pub struct RowHasher {
    buf: Vec<u8>,
    /// Where each row's encoding starts in `buf` (and, last, where the
    /// batch's ends).
    starts: Vec<usize>,
    /// Each row's write position while the columns are encoded.
    at: Vec<usize>,
}

impl RowHasher {
    /// Appends the hash of every row of `batch` to `out`.
    ///
    /// A batch without nested columns is encoded a column at a time into
    /// one buffer that holds every row's encoding side by side (the same
    /// bytes as row by row, with one type dispatch per column instead of
    /// per value); one with lists or structs, a row at a time.
    ///
    /// The flat layout takes the rows a slice at a time, about
    /// [`LAYOUT_BYTES`] of values each, so its buffer stays that size
    /// whatever the width of the rows.
    pub fn hash_rows(&mut self, batch: &RecordBatch, out: &mut Vec<u128>) -> Result<()> {
        let n = batch.num_rows();
        out.reserve(n);
        if batch.columns().iter().any(|c| c.data_type().is_nested()) {
            let cols = columns(batch)?;
            for i in 0..n {
                self.buf.clear();
                for c in &cols {
                    put(c, i, &mut self.buf)?;
                }
                out.push(xxh3_128(&self.buf));
            }
            return Ok(());
        }
        let step = slice_rows(batch);
        let mut from = 0;
        while from < n {
            let part = batch.slice(from, step.min(n - from));
            self.hash_flat(&columns(&part)?, part.num_rows(), out)?;
            from += part.num_rows();
        }
        Ok(())
    }

    /// Appends the hashes of the `n` rows of `cols`, none nested, laid out
    /// side by side.
    fn hash_flat(&mut self, cols: &[Column<'_>], n: usize, out: &mut Vec<u128>) -> Result<()> {
        self.lay_out(cols, n);
        for c in cols {
            encode_column(c, &mut self.buf, &mut self.at);
        }
        if self.at.iter().ne(&self.starts[1..]) {
            return Err(Error::internal(
                "checksum: a row's encoding does not fill its laid-out length",
            ));
        }
        out.extend(
            self.starts
                .windows(2)
                .map(|w| xxh3_128(&self.buf[w[0]..w[1]])),
        );
        Ok(())
    }

    /// Sizes `buf` for `n` rows of `cols` and sets each row's start.
    fn lay_out(&mut self, cols: &[Column<'_>], n: usize) {
        self.at.clear();
        self.at.resize(n, 0);
        for c in cols {
            add_lengths(c, &mut self.at);
        }
        self.starts.clear();
        self.starts.reserve(n + 1);
        let mut end = 0;
        for len in &mut self.at {
            self.starts.push(end);
            end += *len;
            *len = end - *len;
        }
        self.starts.push(end);
        // Every byte below `end` is written before it is hashed (the
        // encoders fill each row's slot, and `hash_rows` checks they did),
        // so the buffer only grows: no zeroing per batch.
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
    }
}

/// Bytes of values [`RowHasher::hash_rows`] lays out at a time.
pub const LAYOUT_BYTES: usize = 1 << 20;

/// Resolves every column of `batch`.
fn columns(batch: &RecordBatch) -> Result<Vec<Column<'_>>> {
    batch
        .columns()
        .iter()
        .map(|c| Column::new(c.as_ref()))
        .collect()
}

/// Rows of `batch` whose values take about [`LAYOUT_BYTES`] (at least one
/// row; all of a batch smaller than that).
fn slice_rows(batch: &RecordBatch) -> usize {
    let n = batch.num_rows();
    let bytes = batch.get_array_memory_size().max(1);
    (n.saturating_mul(LAYOUT_BYTES) / bytes).clamp(1, n.max(1))
}

/// Adds each row's encoded length of `col` to `lens` (see [`put`]).
fn add_lengths(col: &Column<'_>, lens: &mut [usize]) {
    use Values as V;
    let fixed = match col.values {
        V::Bool(_) => 1,
        V::F32(_) => 5,
        V::I16(_) | V::I32(_) | V::I64(_) | V::F64(_) => 9,
        V::Dec(..) => 17,
        _ => 0,
    };
    if fixed > 0 && !col.has_nulls() {
        for len in lens.iter_mut() {
            *len += fixed;
        }
        return;
    }
    for (i, len) in lens.iter_mut().enumerate() {
        *len += if col.is_null(i) {
            1
        } else if fixed > 0 {
            fixed
        } else {
            5 + col.bytes(i).map_or(0, <[u8]>::len)
        };
    }
}

/// Writes every row's value of `col` at its row's position in `buf`,
/// advancing the positions: the bytes [`put`] appends.
fn encode_column(col: &Column<'_>, buf: &mut [u8], at: &mut [usize]) {
    use Values as V;
    match col.values {
        V::Bool(a) => each_value(col, buf, at, |i, out| {
            out.push(if a.value(i) { 2 } else { 1 })
        }),
        V::I16(v) => fixed_values(col, buf, at, |i| i64::from(v[i]).to_le_bytes()),
        V::I32(v) => fixed_values(col, buf, at, |i| i64::from(v[i]).to_le_bytes()),
        V::I64(v) => fixed_values(col, buf, at, |i| v[i].to_le_bytes()),
        V::F32(v) => fixed_values(col, buf, at, |i| f32_bits(v[i]).to_le_bytes()),
        V::F64(v) => fixed_values(col, buf, at, |i| f64_bits(v[i]).to_le_bytes()),
        V::Dec(v, _) => fixed_values(col, buf, at, |i| v[i].to_le_bytes()),
        V::Str(a) => var_values(col, buf, at, |i| a.value(i).as_bytes()),
        V::LargeStr(a) => var_values(col, buf, at, |i| a.value(i).as_bytes()),
        V::StrView(a) => var_values(col, buf, at, |i| a.value(i).as_bytes()),
        V::Bin(a) => var_values(col, buf, at, |i| a.value(i)),
        V::LargeBin(a) => var_values(col, buf, at, |i| a.value(i)),
        V::BinView(a) => var_values(col, buf, at, |i| a.value(i)),
        V::FixedBin(a) => var_values(col, buf, at, |i| a.value(i)),
        V::Nested(_) => unreachable!("nested columns are hashed row by row"),
    }
}

/// A row's slice of the batch buffer, written front to back.
struct Slot<'b> {
    buf: &'b mut [u8],
    at: usize,
}

impl Slot<'_> {
    #[inline]
    fn push(&mut self, b: u8) {
        self.buf[self.at] = b;
        self.at += 1;
    }

    #[inline]
    fn extend(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
}

/// Writes tag 0 for a NULL row, else what `value` writes.
#[inline]
fn each_value(
    col: &Column<'_>,
    buf: &mut [u8],
    at: &mut [usize],
    mut value: impl FnMut(usize, &mut Slot<'_>),
) {
    for (i, pos) in at.iter_mut().enumerate() {
        let mut slot = Slot { buf, at: *pos };
        if col.is_null(i) {
            slot.push(0);
        } else {
            value(i, &mut slot);
        }
        *pos = slot.at;
    }
}

#[inline]
fn fixed_values<const N: usize>(
    col: &Column<'_>,
    buf: &mut [u8],
    at: &mut [usize],
    le: impl Fn(usize) -> [u8; N],
) {
    each_value(col, buf, at, |i, out| {
        out.push(1);
        out.extend(&le(i));
    })
}

#[inline]
fn var_values<'a>(
    col: &Column<'a>,
    buf: &mut [u8],
    at: &mut [usize],
    bytes: impl Fn(usize) -> &'a [u8],
) {
    each_value(col, buf, at, |i, out| {
        let b = bytes(i);
        out.push(1);
        out.extend(&(b.len() as u32).to_le_bytes());
        out.extend(b);
    })
}

/// The distinct values among the first `n` rows of `arr` (NULLs left out)
/// and how many non-NULL values that was, told apart by the bytes the row
/// hash encodes (an estimate: two values whose 64-bit hashes collide count
/// once).  `None` for a type the row hash does not handle.
pub fn distinct_values(arr: &dyn Array, n: usize) -> Option<(usize, usize)> {
    let col = Column::new(arr).ok()?;
    let mut buf = Vec::new();
    let mut seen = Vec::with_capacity(n.min(arr.len()));
    for i in 0..n.min(arr.len()) {
        if arr.is_null(i) {
            continue;
        }
        buf.clear();
        put(&col, i, &mut buf).ok()?;
        seen.push(xxhash_rust::xxh3::xxh3_64(&buf));
    }
    let values = seen.len();
    seen.sort_unstable();
    seen.dedup();
    Some((seen.len(), values))
}

fn put_var(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.push(1);
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(bytes);
}

fn put_fixed<const N: usize>(buf: &mut Vec<u8>, le: [u8; N]) {
    buf.push(1);
    buf.extend_from_slice(&le);
}

fn f32_bits(v: f32) -> u32 {
    if v.is_nan() {
        f32::NAN.to_bits()
    } else {
        v.to_bits()
    }
}

fn f64_bits(v: f64) -> u64 {
    if v.is_nan() {
        f64::NAN.to_bits()
    } else {
        v.to_bits()
    }
}

/// Appends row `i`'s value of `col`: tag 0 for NULL, else tag 1 (booleans:
/// 1 false, 2 true) and the value.
fn put(col: &Column<'_>, i: usize, buf: &mut Vec<u8>) -> Result<()> {
    use Values as V;
    if col.is_null(i) {
        buf.push(0);
        return Ok(());
    }
    match col.values {
        V::Bool(a) => buf.push(if a.value(i) { 2 } else { 1 }),
        V::I16(v) => put_fixed(buf, i64::from(v[i]).to_le_bytes()),
        V::I32(v) => put_fixed(buf, i64::from(v[i]).to_le_bytes()),
        V::I64(v) => put_fixed(buf, v[i].to_le_bytes()),
        V::F32(v) => put_fixed(buf, f32_bits(v[i]).to_le_bytes()),
        V::F64(v) => put_fixed(buf, f64_bits(v[i]).to_le_bytes()),
        V::Dec(v, _) => put_fixed(buf, v[i].to_le_bytes()),
        V::Nested(a) => return encode_nested(a, i, buf),
        _ => {
            let bytes = col
                .bytes(i)
                .ok_or_else(|| Error::internal("checksum: a column without bytes"))?;
            put_var(buf, bytes);
        }
    }
    Ok(())
}

/// Encodes row `i` of a list or struct column: tag, then (lists) the
/// length and every element, or (structs) every field, each as
/// [`put`] encodes it.
fn encode_nested(arr: &dyn Array, i: usize, buf: &mut Vec<u8>) -> Result<()> {
    if arr.is_null(i) {
        buf.push(0);
        return Ok(());
    }
    let list = |items: &dyn Array, buf: &mut Vec<u8>| -> Result<()> {
        buf.push(1);
        buf.extend_from_slice(&(items.len() as u32).to_le_bytes());
        let col = Column::new(items)?;
        (0..items.len()).try_for_each(|j| put(&col, j, buf))
    };
    match arr.data_type() {
        DataType::List(_) => list(arr.as_list::<i32>().value(i).as_ref(), buf),
        DataType::LargeList(_) => list(arr.as_list::<i64>().value(i).as_ref(), buf),
        DataType::Struct(_) => {
            buf.push(1);
            arr.as_struct()
                .columns()
                .iter()
                .try_for_each(|c| put(&Column::new(c.as_ref())?, i, buf))
        }
        other => Err(Error::internal(format!(
            "checksum: Arrow type {other} is not nested"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{
        Int32Array, Int64Array, LargeStringArray, StringArray, TimestampMicrosecondArray,
    };
    use arrow_schema::{Field, Schema, TimeUnit};

    use super::*;

    fn checksum(batch: &RecordBatch) -> Checksum {
        let mut h = RowHasher::default();
        let mut v = vec![];
        h.hash_rows(batch, &mut v).unwrap();
        let mut c = Checksum::default();
        c.add_hashes(&v);
        c
    }

    fn batch(ids: Vec<Option<i64>>, names: Vec<Option<&str>>) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("n", DataType::Utf8, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn order_independent_duplicate_sensitive() {
        let a = checksum(&batch(vec![Some(1), Some(2)], vec![Some("a"), None]));
        let b = checksum(&batch(vec![Some(2), Some(1)], vec![None, Some("a")]));
        assert_eq!(a, b);
        let c = checksum(&batch(vec![Some(1), Some(1)], vec![Some("a"), Some("a")]));
        let d = checksum(&batch(vec![Some(1)], vec![Some("a")]));
        assert_ne!(c.sum, d.sum.wrapping_add(0));
        assert_eq!(c.rows, 2);
    }

    #[test]
    fn value_changes_change_the_checksum() {
        let a = checksum(&batch(vec![Some(1)], vec![Some("ab")]));
        let b = checksum(&batch(vec![Some(1)], vec![Some("ac")]));
        let c = checksum(&batch(vec![None], vec![Some("ab")]));
        let d = checksum(&batch(vec![Some(1)], vec![Some("")]));
        let e = checksum(&batch(vec![Some(1)], vec![None]));
        let all = [a, b, c, d, e];
        for i in 0..all.len() {
            for j in 0..i {
                assert_ne!(all[i], all[j], "{i} vs {j}");
            }
        }
    }

    #[test]
    fn representation_does_not_matter() {
        let s1 = Schema::new(vec![
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
            Field::new("s", DataType::Utf8, true),
            Field::new("i", DataType::Int32, true),
        ]);
        let s2 = Schema::new(vec![
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("s", DataType::LargeUtf8, true),
            Field::new("i", DataType::Int32, true),
        ]);
        let b1 = RecordBatch::try_new(
            Arc::new(s1),
            vec![
                Arc::new(TimestampMicrosecondArray::from(vec![5]).with_timezone("+00:00")),
                Arc::new(StringArray::from(vec!["x"])),
                Arc::new(Int32Array::from(vec![3])),
            ],
        )
        .unwrap();
        let b2 = RecordBatch::try_new(
            Arc::new(s2),
            vec![
                Arc::new(TimestampMicrosecondArray::from(vec![5]).with_timezone("UTC")),
                Arc::new(LargeStringArray::from(vec!["x"])),
                Arc::new(Int32Array::from(vec![3])),
            ],
        )
        .unwrap();
        assert_eq!(checksum(&b1), checksum(&b2));
    }

    /// Every supported type, NULLs, NaN, a list and a struct: the hashes
    /// are the archive's on-disk format (snapshot summaries store their sum),
    /// so any change to the encoding must fail here.
    #[test]
    fn row_hashes_are_stable() {
        use arrow_array::builder::{Int32Builder, ListBuilder};
        use arrow_array::{
            ArrayRef, BinaryArray, BinaryViewArray, BooleanArray, Date32Array, Decimal128Array,
            FixedSizeBinaryArray, Float32Array, Float64Array, Int16Array, LargeBinaryArray,
            StringViewArray, StructArray, Time64MicrosecondArray,
        };
        let mut list = ListBuilder::new(Int32Builder::new());
        list.values().append_value(7);
        list.values().append_null();
        list.append(true);
        list.append(false);
        list.append(true);
        let st = StructArray::from(vec![(
            Arc::new(Field::new("a", DataType::Int64, true)),
            Arc::new(Int64Array::from(vec![Some(1), None, Some(-3)])) as ArrayRef,
        )]);
        let cols: Vec<(&str, ArrayRef)> = vec![
            (
                "b",
                Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
            ),
            (
                "i16",
                Arc::new(Int16Array::from(vec![Some(-2), None, Some(i16::MAX)])),
            ),
            (
                "i32",
                Arc::new(Int32Array::from(vec![Some(5), Some(i32::MIN), None])),
            ),
            (
                "i64",
                Arc::new(Int64Array::from(vec![None, Some(9), Some(i64::MAX)])),
            ),
            (
                "f32",
                Arc::new(Float32Array::from(vec![Some(1.5), Some(f32::NAN), None])),
            ),
            (
                "f64",
                Arc::new(Float64Array::from(vec![Some(-0.0), None, Some(f64::NAN)])),
            ),
            (
                "dec",
                Arc::new(
                    Decimal128Array::from(vec![Some(12345), None, Some(-1)])
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
            ),
            (
                "d",
                Arc::new(Date32Array::from(vec![Some(19000), None, Some(-1)])),
            ),
            (
                "ts",
                Arc::new(
                    TimestampMicrosecondArray::from(vec![Some(1), Some(-5), None])
                        .with_timezone("UTC"),
                ),
            ),
            (
                "t",
                Arc::new(Time64MicrosecondArray::from(vec![
                    Some(3),
                    None,
                    Some(86_399_999_999),
                ])),
            ),
            (
                "s",
                Arc::new(StringArray::from(vec![Some("héllo"), Some(""), None])),
            ),
            (
                "ls",
                Arc::new(LargeStringArray::from(vec![None, Some("x"), Some("yz")])),
            ),
            (
                "sv",
                Arc::new(StringViewArray::from(vec![
                    Some("a much longer string value"),
                    None,
                    Some("q"),
                ])),
            ),
            (
                "bin",
                Arc::new(BinaryArray::from(vec![
                    Some(&b"\x00\x01"[..]),
                    None,
                    Some(&b""[..]),
                ])),
            ),
            (
                "lbin",
                Arc::new(LargeBinaryArray::from(vec![
                    None,
                    Some(&b"z"[..]),
                    Some(&b"zz"[..]),
                ])),
            ),
            (
                "bv",
                Arc::new(BinaryViewArray::from(vec![
                    Some(&b"v"[..]),
                    Some(&b""[..]),
                    None,
                ])),
            ),
            (
                "fsb",
                Arc::new(
                    FixedSizeBinaryArray::try_from_sparse_iter_with_size(
                        vec![Some([1u8, 2]), None, Some([3, 4])].into_iter(),
                        2,
                    )
                    .unwrap(),
                ),
            ),
            ("l", Arc::new(list.finish())),
            ("st", Arc::new(st)),
        ];
        let flat: Vec<(&str, ArrayRef)> = cols
            .iter()
            .filter(|(name, _)| !matches!(*name, "l" | "st"))
            .cloned()
            .collect();
        let batch = RecordBatch::try_from_iter(cols).unwrap();
        let mut hashes = vec![];
        RowHasher::default().hash_rows(&batch, &mut hashes).unwrap();
        let hex: Vec<String> = hashes.iter().map(|h| format!("{h:032x}")).collect();
        assert_eq!(
            hex,
            [
                "86c1e930d104f2c615061b6f21eed1d5",
                "3ffd0781d36389694bb97912e0533842",
                "a9c93146b5fd818325be241f0698d12d"
            ]
        );
        // Without the nested columns the batch is encoded a column at a
        // time: the same bytes as row by row (pinned above), sliced or not.
        let flat = RecordBatch::try_from_iter(flat).unwrap();
        for batch in [flat.clone(), flat.slice(1, 2)] {
            let mut by_column = vec![];
            RowHasher::default()
                .hash_rows(&batch, &mut by_column)
                .unwrap();
            assert_eq!(by_column, row_by_row(&batch));
        }
    }

    /// The row hashes as [`put`] encodes each row on its own.
    fn row_by_row(batch: &RecordBatch) -> Vec<u128> {
        let cols: Vec<Column<'_>> = batch
            .columns()
            .iter()
            .map(|c| Column::new(c.as_ref()).unwrap())
            .collect();
        (0..batch.num_rows())
            .map(|i| {
                let mut buf = vec![];
                cols.iter().for_each(|c| put(c, i, &mut buf).unwrap());
                xxh3_128(&buf)
            })
            .collect()
    }

    #[test]
    fn a_batch_of_many_rows_hashes_as_row_by_row() {
        let n = 5000;
        let batch = RecordBatch::try_from_iter([
            (
                "ts",
                Arc::new(TimestampMicrosecondArray::from_iter_values(0..n))
                    as arrow_array::ArrayRef,
            ),
            (
                "s",
                Arc::new(StringArray::from_iter(
                    (0..n).map(|i| (i % 7 != 0).then(|| "x".repeat((i % 13) as usize))),
                )),
            ),
            (
                "i",
                Arc::new(Int32Array::from_iter(
                    (0..n).map(|i| (i % 5 != 0).then_some(i as i32)),
                )),
            ),
        ])
        .unwrap();
        let mut hasher = RowHasher::default();
        for batch in [batch.slice(0, 3000), batch.slice(3000, 2000), batch] {
            let mut got = vec![];
            hasher.hash_rows(&batch, &mut got).unwrap();
            assert_eq!(got, row_by_row(&batch));
        }
    }

    #[test]
    fn wide_rows_hash_a_slice_at_a_time() {
        // 3,000 rows of 2 KB: 6 MB of values, hashed in slices of ~1 MiB.
        let n = 3000;
        let batch = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from_iter_values(0..n)) as arrow_array::ArrayRef,
            ),
            (
                "payload",
                Arc::new(StringArray::from_iter(
                    (0..n).map(|i| (i % 11 != 0).then(|| format!("{i:04}").repeat(500))),
                )),
            ),
        ])
        .unwrap();
        assert!(slice_rows(&batch) < 1000, "{}", slice_rows(&batch));
        let mut hasher = RowHasher::default();
        let mut got = vec![];
        hasher.hash_rows(&batch, &mut got).unwrap();
        assert_eq!(got, row_by_row(&batch));
        assert!(
            hasher.buf.len() <= 2 * LAYOUT_BYTES,
            "laid out {} bytes at once",
            hasher.buf.len()
        );
    }

    #[test]
    fn distinct_values_leave_nulls_out() {
        let a = Int64Array::from(vec![Some(1), Some(1), None, Some(2), Some(3)]);
        assert_eq!(distinct_values(&a, 10), Some((3, 4)));
        assert_eq!(distinct_values(&a, 2), Some((1, 2)));
        let s = StringArray::from(vec!["a", "b", "a"]);
        assert_eq!(distinct_values(&s, 3), Some((2, 3)));
    }
}
