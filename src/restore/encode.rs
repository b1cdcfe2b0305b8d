//! Arrow record batches → `COPY … FROM STDIN (FORMAT binary)`.
//!
//! The inverse of [`crate::source::extract`]: each column is written in the
//! binary form of the Postgres type it was read from (its [`PgKind`]), so a
//! restored value is bit-for-bit the archived one.  Array and composite values
//! carry their element and field type OIDs, which Postgres checks, so the
//! encoder is built against the staging table's own types.

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;

use crate::column::{Column, Values};
use crate::error::{Error, Result};
use crate::types::{PgKind, TypeInfo, oid};

/// Microseconds between 1970-01-01 and 2000-01-01 (Postgres' epoch).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days between 1970-01-01 and 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// How one value is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enc {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    Text,
    Jsonb,
    Bytea,
    Uuid,
    Date,
    Time,
    Timestamp,
    Interval,
    Array { elem_oid: u32, elem: Box<Enc> },
    Composite { fields: Vec<(u32, Enc)> },
}

impl Enc {
    /// The encoder for a value archived as `kind` and loaded into a column of
    /// type `info` (its own type, or the cast type the value was read as).
    pub fn new(kind: &PgKind, info: &TypeInfo) -> Result<Self> {
        let info = base(info);
        Ok(match kind {
            PgKind::Bool => Enc::Bool,
            PgKind::Int2 => Enc::Int2,
            PgKind::Int4 => Enc::Int4,
            PgKind::Int8 => Enc::Int8,
            PgKind::Float4 => Enc::Float4,
            PgKind::Float8 => Enc::Float8,
            PgKind::Numeric { .. } => Enc::Numeric,
            PgKind::Text => Enc::Text,
            PgKind::Jsonb => Enc::Jsonb,
            PgKind::Bytea => Enc::Bytea,
            PgKind::Uuid => Enc::Uuid,
            PgKind::Date => Enc::Date,
            PgKind::Time => Enc::Time,
            PgKind::Timestamp | PgKind::Timestamptz => Enc::Timestamp,
            PgKind::Interval => Enc::Interval,
            PgKind::Array { element } => {
                let el = info.element.as_deref().ok_or_else(|| {
                    Error::internal(format!("{} is not an array type", info.display))
                })?;
                Enc::Array {
                    elem_oid: el.oid,
                    elem: Box::new(Enc::new(element, el)?),
                }
            }
            PgKind::Composite { fields } => {
                if fields.len() != info.fields.len() {
                    return Err(Error::internal(format!(
                        "{} has {} fields, the archive {}",
                        info.display,
                        info.fields.len(),
                        fields.len()
                    )));
                }
                let mut out = Vec::with_capacity(fields.len());
                for (f, (_, ft)) in fields.iter().zip(&info.fields) {
                    out.push((ft.oid, Enc::new(&f.kind, ft)?));
                }
                Enc::Composite { fields: out }
            }
        })
    }

    /// The encoder for a text value loaded into a `text` column.
    pub fn text() -> (Self, u32) {
        (Enc::Text, oid::TEXT)
    }
}

/// A domain's base type (recursively); other types as they are.
fn base(info: &TypeInfo) -> &TypeInfo {
    match &info.base {
        Some(b) => base(b),
        None => info,
    }
}

/// Writes COPY binary rows for record batches.
pub struct CopyEncoder {
    encs: Vec<Enc>,
}

impl CopyEncoder {
    pub fn new(encs: Vec<Enc>) -> Self {
        Self { encs }
    }

    /// The COPY header.
    pub fn header(out: &mut Vec<u8>) {
        out.extend_from_slice(SIGNATURE);
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
    }

    /// The COPY trailer.
    pub fn trailer(out: &mut Vec<u8>) {
        out.extend_from_slice(&(-1i16).to_be_bytes());
    }

    /// Appends every row of `batch` (columns in encoder order).
    pub fn encode(&self, batch: &RecordBatch, out: &mut Vec<u8>) -> Result<()> {
        if batch.num_columns() != self.encs.len() {
            return Err(Error::internal(format!(
                "batch has {} columns, the COPY {}",
                batch.num_columns(),
                self.encs.len()
            )));
        }
        let n = self.encs.len() as i16;
        let cols = self
            .encs
            .iter()
            .zip(batch.columns())
            .map(|(enc, arr)| Ok((enc, Column::new(arr.as_ref())?, arr.as_ref())))
            .collect::<Result<Vec<_>>>()?;
        for row in 0..batch.num_rows() {
            out.extend_from_slice(&n.to_be_bytes());
            for (enc, col, arr) in &cols {
                put(enc, col, *arr, row, out)?;
            }
        }
        Ok(())
    }
}

/// Row `i` of `col` (`arr` resolved), length-prefixed, or -1 for NULL.
/// Scalars are read from the resolved values; intervals, arrays and
/// composites through [`nested`].
fn put(enc: &Enc, col: &Column<'_>, arr: &dyn Array, i: usize, out: &mut Vec<u8>) -> Result<()> {
    use Values as V;
    if col.is_null(i) {
        out.extend_from_slice(&(-1i32).to_be_bytes());
        return Ok(());
    }
    match (enc, &col.values) {
        (Enc::Bool, V::Bool(a)) => fixed(out, [u8::from(a.value(i))]),
        (Enc::Int2, V::I32(v)) => {
            let v = i16::try_from(v[i]).map_err(|_| Error::internal("smallint out of range"))?;
            fixed(out, v.to_be_bytes());
        }
        (Enc::Int4, V::I32(v)) => fixed(out, v[i].to_be_bytes()),
        (Enc::Int8, V::I64(v)) => fixed(out, v[i].to_be_bytes()),
        (Enc::Float4, V::F32(v)) => fixed(out, v[i].to_bits().to_be_bytes()),
        (Enc::Float8, V::F64(v)) => fixed(out, v[i].to_bits().to_be_bytes()),
        (Enc::Date, V::I32(v)) => fixed(out, (v[i] - PG_EPOCH_DAYS).to_be_bytes()),
        (Enc::Time, V::I64(v)) => fixed(out, v[i].to_be_bytes()),
        (Enc::Timestamp, V::I64(v)) => fixed(out, (v[i] - PG_EPOCH_MICROS).to_be_bytes()),
        (Enc::Uuid, V::FixedBin(a)) if a.value_length() == 16 => {
            out.extend_from_slice(&16i32.to_be_bytes());
            out.extend_from_slice(a.value(i));
        }
        (Enc::Numeric, V::Dec(v, scale)) => {
            length_prefixed(out, |out| {
                numeric(v[i], (*scale).max(0) as u16, out);
                Ok(())
            })?;
        }
        (Enc::Text | Enc::Jsonb, V::Str(_) | V::LargeStr(_) | V::StrView(_))
        | (Enc::Bytea, V::Bin(_) | V::LargeBin(_) | V::BinView(_) | V::FixedBin(_)) => {
            let bytes = col.bytes(i).unwrap_or_default();
            let version = usize::from(*enc == Enc::Jsonb);
            out.extend_from_slice(&((bytes.len() + version) as i32).to_be_bytes());
            if version == 1 {
                out.push(1);
            }
            out.extend_from_slice(bytes);
        }
        _ => length_prefixed(out, |out| nested(enc, arr, i, out))?,
    }
    Ok(())
}

/// A fixed-width value with its length.
#[inline]
fn fixed<const N: usize>(out: &mut Vec<u8>, bytes: [u8; N]) {
    out.extend_from_slice(&(N as i32).to_be_bytes());
    out.extend_from_slice(&bytes);
}

/// The value `write` appends, after its length.
#[inline]
fn length_prefixed(
    out: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> Result<()>,
) -> Result<()> {
    let at = out.len();
    out.extend_from_slice(&0i32.to_be_bytes());
    write(out)?;
    let len = (out.len() - at - 4) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Row `i` of an element or field array (resolved for the one value).
fn field(enc: &Enc, arr: &dyn Array, i: usize, out: &mut Vec<u8>) -> Result<()> {
    put(enc, &Column::new(arr)?, arr, i, out)
}

fn mismatch(enc: &Enc, dt: &DataType) -> Error {
    Error::internal(format!("cannot encode Arrow {dt} as {enc:?}"))
}

/// The body of an interval, array or composite value; any other pair of
/// encoding and Arrow type (one [`put`] does not read) is a mismatch.
fn nested(enc: &Enc, arr: &dyn Array, i: usize, out: &mut Vec<u8>) -> Result<()> {
    let dt = arr.data_type();
    match enc {
        Enc::Interval => {
            let s = arr.as_struct();
            if s.num_columns() != 3 {
                return Err(mismatch(enc, dt));
            }
            let months = s.column(0).as_primitive::<Int32Type>().value(i);
            let days = s.column(1).as_primitive::<Int32Type>().value(i);
            let micros = s.column(2).as_primitive::<Int64Type>().value(i);
            out.extend_from_slice(&micros.to_be_bytes());
            out.extend_from_slice(&days.to_be_bytes());
            out.extend_from_slice(&months.to_be_bytes());
        }
        Enc::Array { elem_oid, elem } => {
            let values = match dt {
                DataType::List(_) => arr.as_list::<i32>().value(i),
                DataType::LargeList(_) => arr.as_list::<i64>().value(i),
                _ => return Err(mismatch(enc, dt)),
            };
            let len = values.len();
            let has_null = values.null_count() > 0;
            out.extend_from_slice(&i32::from(len > 0).to_be_bytes());
            out.extend_from_slice(&i32::from(has_null).to_be_bytes());
            out.extend_from_slice(&elem_oid.to_be_bytes());
            if len > 0 {
                out.extend_from_slice(&(len as i32).to_be_bytes());
                out.extend_from_slice(&1i32.to_be_bytes());
                for j in 0..len {
                    field(elem, values.as_ref(), j, out)?;
                }
            }
        }
        Enc::Composite { fields } => {
            let s = arr.as_struct();
            if s.num_columns() != fields.len() {
                return Err(mismatch(enc, dt));
            }
            out.extend_from_slice(&(fields.len() as i32).to_be_bytes());
            for ((oid, fenc), col) in fields.iter().zip(s.columns()) {
                out.extend_from_slice(&oid.to_be_bytes());
                field(fenc, col.as_ref(), i, out)?;
            }
        }
        _ => return Err(mismatch(enc, dt)),
    }
    Ok(())
}

/// Postgres' binary numeric: base-10000 digits with a weight, a sign and the
/// display scale, for the decimal `mantissa × 10^-scale`.
fn numeric(mantissa: i128, scale: u16, out: &mut Vec<u8>) {
    // Base-10000 groups from the lowest up.  The fraction takes whole
    // groups, so its lowest group holds the last `4 - pad` digits shifted
    // left by `pad`.  An i128's 39 digits at any scale an Arrow decimal can
    // name (an i8, clamped at 0 by the caller) fit 32 + 10 groups.
    let scale = scale.min(127);
    let frac_groups = usize::from(scale).div_ceil(4);
    let pad = (frac_groups * 4 - usize::from(scale)) as u32;
    let mut rest = mantissa.unsigned_abs();
    let mut groups = [0i16; 44];
    let mut n = 0;
    if frac_groups > 0 {
        let unit = 10u128.pow(4 - pad);
        groups[0] = ((rest % unit) * 10u128.pow(pad)) as i16;
        rest /= unit;
        n = 1;
    }
    while rest > 0 || n < frac_groups {
        groups[n] = (rest % 10_000) as i16;
        rest /= 10_000;
        n += 1;
    }
    // Postgres leaves out zero groups at both ends.
    let low = groups[..n].iter().position(|g| *g != 0);
    let high = groups[..n].iter().rposition(|g| *g != 0);
    let (digits, weight) = match (low, high) {
        (Some(lo), Some(hi)) => (&groups[lo..=hi], hi as i16 - frac_groups as i16),
        _ => (&groups[..0], 0),
    };
    let sign: u16 = if mantissa < 0 && !digits.is_empty() {
        0x4000
    } else {
        0
    };
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&scale.to_be_bytes());
    for g in digits.iter().rev() {
        out.extend_from_slice(&g.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(m: i128, scale: u16) -> (i16, i16, u16, u16, Vec<i16>) {
        let mut v = vec![];
        numeric(m, scale, &mut v);
        let g = |at: usize| i16::from_be_bytes([v[at], v[at + 1]]);
        let n = g(0);
        let digits = (0..n as usize).map(|k| g(8 + 2 * k)).collect();
        (n, g(2), g(4) as u16, g(6) as u16, digits)
    }

    #[test]
    fn numerics_in_base_10000() {
        // 12345.67 = [1, 2345, 6700] weight 1
        assert_eq!(num(1_234_567, 2), (3, 1, 0, 2, vec![1, 2345, 6700]));
        assert_eq!(num(-1_234_567, 2), (3, 1, 0x4000, 2, vec![1, 2345, 6700]));
        assert_eq!(num(0, 3), (0, 0, 0, 3, vec![]));
        // 0.0001 = [1] weight -1
        assert_eq!(num(1, 4), (1, -1, 0, 4, vec![1]));
        // 0.00001 = [0, 1000] → [1000] weight -2
        assert_eq!(num(1, 5), (1, -2, 0, 5, vec![1000]));
        // 10000 = [1] weight 1 (trailing zero group dropped)
        assert_eq!(num(10_000, 0), (1, 1, 0, 0, vec![1]));
        // 38 nines, scale 10: 28 integer digits (7 groups), 10 fraction
        // digits padded to 12 (the last group 9900).
        let max = 10i128.pow(38) - 1;
        let (n, w, _, s, d) = num(max, 10);
        assert_eq!((s, w, n), (10, 6, 10));
        assert!(d[..9].iter().all(|g| *g == 9999), "{d:?}");
        assert_eq!(d[9], 9900);
        // The widest i128 at the largest scale an Arrow decimal can name:
        // 39 digits, the last three 728 (group 7280), 32 fraction groups.
        let (n, w, sign, s, d) = num(i128::MIN, 127);
        assert_eq!((n, w, sign, s), (10, -23, 0x4000, 127));
        assert_eq!((d[0], d[9]), (1701, 7280));
    }

    #[test]
    fn numerics_round_trip_in_canonical_form() {
        use crate::source::extract::decode_numeric;
        let mut values = vec![0i128, 1, 9, 10, 9999, 10_000, 10_001, 123_456_789];
        values.extend((0..=38).map(|k| 10i128.pow(k)));
        values.extend((1..=38).map(|k| 10i128.pow(k) - 1));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(i128::from(x) * i128::from(x >> 3) % 10i128.pow(38));
        }
        for &m in &values {
            for scale in [0u16, 1, 2, 3, 4, 5, 7, 8, 10, 19, 37, 38] {
                for m in [m, -m] {
                    if m.unsigned_abs() >= 10u128.pow(38) {
                        continue;
                    }
                    let (n, _, _, s, d) = num(m, scale);
                    assert_eq!(s, scale);
                    assert_eq!(n as usize, d.len());
                    assert!(
                        d.first() != Some(&0) && d.last() != Some(&0),
                        "{m} {scale}: {d:?}"
                    );
                    let mut v = vec![];
                    numeric(m, scale, &mut v);
                    assert_eq!(
                        decode_numeric(&v, 38, scale as u8),
                        Ok(m),
                        "{m} at scale {scale}"
                    );
                }
            }
        }
    }

    #[test]
    fn rows_with_nulls_arrays_and_structs() {
        use arrow_array::builder::{Int32Builder, ListBuilder};
        use arrow_array::{ArrayRef, Int64Array, StringArray};
        use std::sync::Arc;
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![Some(7), None]));
        let names: ArrayRef = Arc::new(StringArray::from(vec![Some("é"), Some("")]));
        let mut lb = ListBuilder::new(Int32Builder::new());
        lb.values().append_value(1);
        lb.values().append_null();
        lb.append(true);
        lb.append(true); // empty
        let lists: ArrayRef = Arc::new(lb.finish());
        let batch = RecordBatch::try_from_iter([("id", ids), ("name", names), ("xs", lists)])
            .expect("batch");
        let enc = CopyEncoder::new(vec![
            Enc::Int8,
            Enc::Text,
            Enc::Array {
                elem_oid: oid::INT4,
                elem: Box::new(Enc::Int4),
            },
        ]);
        let mut out = vec![];
        enc.encode(&batch, &mut out).expect("encode");
        let mut want: Vec<u8> = vec![];
        let be32 = |v: i32| v.to_be_bytes().to_vec();
        // row 1
        want.extend(3i16.to_be_bytes());
        want.extend(be32(8));
        want.extend(7i64.to_be_bytes());
        want.extend(be32(2));
        want.extend("é".as_bytes());
        want.extend(be32(4 * 5 + 4 + 4 + 4));
        want.extend(be32(1)); // ndim
        want.extend(be32(1)); // has nulls
        want.extend(oid::INT4.to_be_bytes());
        want.extend(be32(2)); // length
        want.extend(be32(1)); // lower bound
        want.extend(be32(4));
        want.extend(be32(1));
        want.extend(be32(-1));
        // row 2
        want.extend(3i16.to_be_bytes());
        want.extend(be32(-1));
        want.extend(be32(0));
        want.extend(be32(12));
        want.extend(be32(0));
        want.extend(be32(0));
        want.extend(oid::INT4.to_be_bytes());
        assert_eq!(out, want);
    }
}
