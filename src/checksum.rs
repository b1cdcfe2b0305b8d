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
use arrow_array::types::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    Time64MicrosecondType, TimestampMicrosecondType,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use xxhash_rust::xxh3::xxh3_128;

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

    /// The sum as 32 hex digits (what the snapshot summary stores).
    pub fn hex(&self) -> String {
        format!("{:032x}", self.sum)
    }
}

/// Computes row hashes, reusing its buffers across batches.
#[derive(Default)]
pub struct RowHasher {
    bufs: Vec<Vec<u8>>,
}

impl RowHasher {
    /// Appends the hash of every row of `batch` to `out`.
    pub fn hash_rows(&mut self, batch: &RecordBatch, out: &mut Vec<u128>) -> Result<()> {
        let n = batch.num_rows();
        if self.bufs.len() < n {
            self.bufs.resize_with(n, Vec::new);
        }
        for b in &mut self.bufs[..n] {
            b.clear();
        }
        for col in batch.columns() {
            encode_column(col.as_ref(), &mut self.bufs[..n])?;
        }
        out.extend(self.bufs[..n].iter().map(|b| xxh3_128(b)));
        Ok(())
    }
}

fn put_var(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.push(1);
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(bytes);
}

macro_rules! fixed {
    ($arr:expr, $bufs:expr, $t:ty, $conv:expr) => {{
        let a = $arr.as_primitive::<$t>();
        for (i, buf) in $bufs.iter_mut().enumerate() {
            if a.is_null(i) {
                buf.push(0);
            } else {
                buf.push(1);
                let v = $conv(a.value(i));
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
    }};
}

fn encode_column(arr: &dyn Array, bufs: &mut [Vec<u8>]) -> Result<()> {
    match arr.data_type() {
        DataType::Boolean => {
            let a = arr.as_boolean();
            for (i, buf) in bufs.iter_mut().enumerate() {
                buf.push(if a.is_null(i) {
                    0
                } else if a.value(i) {
                    2
                } else {
                    1
                });
            }
        }
        DataType::Int16 => fixed!(arr, bufs, Int16Type, |v: i16| v as i64),
        DataType::Int32 => fixed!(arr, bufs, Int32Type, |v: i32| v as i64),
        DataType::Int64 => fixed!(arr, bufs, Int64Type, |v: i64| v),
        DataType::Float32 => fixed!(arr, bufs, Float32Type, |v: f32| if v.is_nan() {
            f32::NAN.to_bits()
        } else {
            v.to_bits()
        }),
        DataType::Float64 => fixed!(arr, bufs, Float64Type, |v: f64| if v.is_nan() {
            f64::NAN.to_bits()
        } else {
            v.to_bits()
        }),
        DataType::Decimal128(_, _) => fixed!(arr, bufs, Decimal128Type, |v: i128| v),
        DataType::Date32 => fixed!(arr, bufs, Date32Type, |v: i32| v as i64),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            fixed!(arr, bufs, TimestampMicrosecondType, |v: i64| v)
        }
        DataType::Time64(TimeUnit::Microsecond) => {
            fixed!(arr, bufs, Time64MicrosecondType, |v: i64| v)
        }
        DataType::List(_) | DataType::LargeList(_) | DataType::Struct(_) => {
            for (i, buf) in bufs.iter_mut().enumerate() {
                encode_value(arr, i, buf)?;
            }
        }
        DataType::Utf8 => {
            let a = arr.as_string::<i32>();
            for (i, buf) in bufs.iter_mut().enumerate() {
                if a.is_null(i) {
                    buf.push(0)
                } else {
                    put_var(buf, a.value(i).as_bytes())
                }
            }
        }
        DataType::LargeUtf8 => {
            let a = arr.as_string::<i64>();
            for (i, buf) in bufs.iter_mut().enumerate() {
                if a.is_null(i) {
                    buf.push(0)
                } else {
                    put_var(buf, a.value(i).as_bytes())
                }
            }
        }
        DataType::Utf8View => {
            let a = arr.as_string_view();
            for (i, buf) in bufs.iter_mut().enumerate() {
                if a.is_null(i) {
                    buf.push(0)
                } else {
                    put_var(buf, a.value(i).as_bytes())
                }
            }
        }
        DataType::Binary => {
            let a = arr.as_binary::<i32>();
            for (i, buf) in bufs.iter_mut().enumerate() {
                if a.is_null(i) {
                    buf.push(0)
                } else {
                    put_var(buf, a.value(i))
                }
            }
        }
        DataType::LargeBinary => {
            let a = arr.as_binary::<i64>();
            for (i, buf) in bufs.iter_mut().enumerate() {
                if a.is_null(i) {
                    buf.push(0)
                } else {
                    put_var(buf, a.value(i))
                }
            }
        }
        DataType::BinaryView => {
            let a = arr.as_binary_view();
            for (i, buf) in bufs.iter_mut().enumerate() {
                if a.is_null(i) {
                    buf.push(0)
                } else {
                    put_var(buf, a.value(i))
                }
            }
        }
        DataType::FixedSizeBinary(_) => {
            let a = arr.as_fixed_size_binary();
            for (i, buf) in bufs.iter_mut().enumerate() {
                if a.is_null(i) {
                    buf.push(0)
                } else {
                    put_var(buf, a.value(i))
                }
            }
        }
        other => {
            return Err(Error::internal(format!(
                "checksum: Arrow type {other} is not handled"
            )));
        }
    }
    Ok(())
}

/// Encodes one value of any supported type (used for nested values).  Must
/// produce the same bytes as the column-wise fast paths above.
fn encode_value(arr: &dyn Array, i: usize, buf: &mut Vec<u8>) -> Result<()> {
    if arr.is_null(i) {
        buf.push(0);
        return Ok(());
    }
    macro_rules! prim {
        ($t:ty, $conv:expr) => {{
            buf.push(1);
            let v = $conv(arr.as_primitive::<$t>().value(i));
            buf.extend_from_slice(&v.to_le_bytes());
        }};
    }
    match arr.data_type() {
        DataType::Boolean => buf.push(if arr.as_boolean().value(i) { 2 } else { 1 }),
        DataType::Int16 => prim!(Int16Type, |v: i16| v as i64),
        DataType::Int32 => prim!(Int32Type, |v: i32| v as i64),
        DataType::Int64 => prim!(Int64Type, |v: i64| v),
        DataType::Float32 => prim!(Float32Type, |v: f32| if v.is_nan() {
            f32::NAN.to_bits()
        } else {
            v.to_bits()
        }),
        DataType::Float64 => prim!(Float64Type, |v: f64| if v.is_nan() {
            f64::NAN.to_bits()
        } else {
            v.to_bits()
        }),
        DataType::Decimal128(_, _) => prim!(Decimal128Type, |v: i128| v),
        DataType::Date32 => prim!(Date32Type, |v: i32| v as i64),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            prim!(TimestampMicrosecondType, |v: i64| v)
        }
        DataType::Time64(TimeUnit::Microsecond) => prim!(Time64MicrosecondType, |v: i64| v),
        DataType::Utf8 => put_var(buf, arr.as_string::<i32>().value(i).as_bytes()),
        DataType::LargeUtf8 => put_var(buf, arr.as_string::<i64>().value(i).as_bytes()),
        DataType::Utf8View => put_var(buf, arr.as_string_view().value(i).as_bytes()),
        DataType::Binary => put_var(buf, arr.as_binary::<i32>().value(i)),
        DataType::LargeBinary => put_var(buf, arr.as_binary::<i64>().value(i)),
        DataType::BinaryView => put_var(buf, arr.as_binary_view().value(i)),
        DataType::FixedSizeBinary(_) => put_var(buf, arr.as_fixed_size_binary().value(i)),
        DataType::List(_) => {
            let l = arr.as_list::<i32>();
            let items = l.value(i);
            buf.push(1);
            buf.extend_from_slice(&(items.len() as u32).to_le_bytes());
            for j in 0..items.len() {
                encode_value(items.as_ref(), j, buf)?;
            }
        }
        DataType::LargeList(_) => {
            let l = arr.as_list::<i64>();
            let items = l.value(i);
            buf.push(1);
            buf.extend_from_slice(&(items.len() as u32).to_le_bytes());
            for j in 0..items.len() {
                encode_value(items.as_ref(), j, buf)?;
            }
        }
        DataType::Struct(_) => {
            let st = arr.as_struct();
            buf.push(1);
            for c in st.columns() {
                encode_value(c.as_ref(), i, buf)?;
            }
        }
        other => {
            return Err(Error::internal(format!(
                "checksum: Arrow type {other} is not handled"
            )));
        }
    }
    Ok(())
}

/// A multiset of row hashes, used to drop rows that are already archived.
/// Memory: 17 bytes per row.
#[derive(Debug, Default)]
pub struct HashBag {
    sorted: Vec<u128>,
    used: Vec<bool>,
}

impl HashBag {
    /// Builds the bag from unsorted hashes.
    pub fn new(mut hashes: Vec<u128>) -> Self {
        hashes.sort_unstable();
        let used = vec![false; hashes.len()];
        Self {
            sorted: hashes,
            used,
        }
    }

    /// Number of hashes not yet taken.
    pub fn remaining(&self) -> usize {
        self.used.iter().filter(|u| !**u).count()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// Takes one occurrence of `h`; false when none is left.
    pub fn take(&mut self, h: u128) -> bool {
        let mut i = self.sorted.partition_point(|x| *x < h);
        while i < self.sorted.len() && self.sorted[i] == h {
            if !self.used[i] {
                self.used[i] = true;
                return true;
            }
            i += 1;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{
        Int32Array, Int64Array, LargeStringArray, StringArray, TimestampMicrosecondArray,
    };
    use arrow_schema::{Field, Schema};

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

    #[test]
    fn hash_bag_counts_duplicates() {
        let mut bag = HashBag::new(vec![5, 3, 5]);
        assert!(bag.take(5));
        assert!(bag.take(5));
        assert!(!bag.take(5));
        assert!(bag.take(3));
        assert!(!bag.take(4));
        assert_eq!(bag.remaining(), 0);
    }
}
