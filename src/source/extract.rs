//! Streaming extraction: `COPY (…) TO STDOUT (FORMAT binary)` decoded straight
//! into Arrow record batches.
//!
//! The decoder keeps at most one partial row plus one record batch under
//! construction, whatever the size of the window: memory is bounded by
//! [`BATCH_ROWS`] / [`BATCH_BYTES`].  A value that cannot be stored losslessly
//! (e.g. `infinity` timestamps, `NaN` numerics) is an error naming the column
//! and the value; the caller rolls its transaction back, so nothing is deleted.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, FixedSizeBinaryBuilder,
    Float32Builder, Float64Builder, Int32Builder, Int64Builder, LargeBinaryBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, ListArray, RecordBatch, StringArray, StructArray};
use arrow_buffer::{NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, FieldRef, Fields, SchemaRef};
use bytes::{Buf, BytesMut};
use futures::StreamExt;

use crate::checksum::RowHasher;
use crate::error::{Error, ErrorKind, Result};
use crate::types::PgKind;

/// Rows per record batch: the unit the decoding task hands to the writer,
/// so it is small enough that a window's first rows are being written
/// while Postgres still streams the rest (32 Ki rows held a daily window of
/// the benchmark whole until its end: decoding, then writing), and large
/// enough that a batch's fixed costs stay small.
pub const BATCH_ROWS: usize = 8 * 1024;
/// Flush a record batch early once its rows' bytes pass this size: rows of
/// kilobytes each then come about a thousand at a time, and the batch, its
/// row hashes' buffer and the writer's copy stay a few megabytes each.
pub const BATCH_BYTES: usize = 4 * 1024 * 1024;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Microseconds between 1970-01-01 and 2000-01-01 (Postgres' epoch).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days between 1970-01-01 and 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;

enum Col {
    Bool(BooleanBuilder),
    Int2(Int32Builder),
    Int4(Int32Builder),
    Int8(Int64Builder),
    Float4(Float32Builder),
    Float8(Float64Builder),
    Numeric(Decimal128Builder, u8, u8),
    /// Text and JSON are gathered as bytes and checked to be UTF-8 when the
    /// batch is finished (see [`utf8_array`]).
    Text(BinaryBuilder),
    Jsonb(BinaryBuilder),
    Bytea(LargeBinaryBuilder),
    Uuid(FixedSizeBinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Timestamptz(TimestampMicrosecondBuilder),
    Interval(Box<IntervalCol>),
    List {
        child: Box<Col>,
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
        field: FieldRef,
    },
    Struct {
        children: Vec<Col>,
        nulls: NullBufferBuilder,
        fields: Fields,
    },
}

/// The builders of an interval column (boxed: it is the largest variant).
struct IntervalCol {
    months: Int32Builder,
    days: Int32Builder,
    micros: Int64Builder,
    nulls: NullBufferBuilder,
    fields: Fields,
}

/// [`be_i32_at`], failing with a description when `v` ends before it.
fn be_i32(v: &[u8], at: usize) -> std::result::Result<i32, String> {
    be_i32_at(v, at).ok_or_else(|| "truncated value".to_string())
}

/// The big-endian `i32` at `at` (a COPY field's length word, -1: NULL),
/// `None` when `buf` ends before it; one 4-byte load, not four
/// bounds-checked byte reads (the decoder reads two length words per value).
#[inline]
fn be_i32_at(buf: &[u8], at: usize) -> Option<i32> {
    let word: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(i32::from_be_bytes(word))
}

#[inline]
fn fixed<const N: usize>(v: &[u8]) -> std::result::Result<[u8; N], String> {
    v.try_into().map_err(|_| wrong_width(N, v.len()))
}

#[cold]
fn wrong_width(expected: usize, got: usize) -> String {
    format!("expected {expected} bytes, got {got}")
}

/// The text values gathered in `b` as a string array.  They are checked
/// here, a batch at a time — one pass over the bytes and a look at each
/// value's first byte (arrow's own validation) — instead of value by value
/// as they arrive: the same verdict for a fraction of the calls.  An
/// invalid value fails the batch (the column is named by the caller).
fn utf8_array(b: &mut BinaryBuilder) -> Result<StringArray> {
    StringArray::try_from_binary(b.finish()).map_err(|_| {
        Error::new(
            ErrorKind::Unsupported,
            "a text value is not valid UTF-8 (is the database's encoding SQL_ASCII?)",
        )
        .with_hint(
            "nothing was deleted; fix the value, or leave the column out (`exclude_columns`)",
        )
    })
}

/// Postgres's `infinity`/`-infinity` have no Iceberg value.
fn no_infinity(what: &str, positive: bool) -> String {
    let value = if positive { "infinity" } else { "-infinity" };
    format!("value {value} cannot be stored in an Iceberg {what}")
}

/// A binary `date`: days since 1970-01-01 (infinities refused).
fn date_days(v: &[u8]) -> std::result::Result<i32, String> {
    let d = i32::from_be_bytes(fixed(v)?);
    if d == i32::MAX || d == i32::MIN {
        return Err(no_infinity("date", d > 0));
    }
    Ok(d.checked_add(PG_EPOCH_DAYS).ok_or("date out of range")?)
}

/// A binary `time`: microseconds of the day (24:00:00 refused).
fn time_micros(v: &[u8]) -> std::result::Result<i64, String> {
    let t = i64::from_be_bytes(fixed(v)?);
    if !(0..86_400_000_000).contains(&t) {
        return Err("value 24:00:00 cannot be stored in an Iceberg time, whose range ends at 23:59:59.999999".into());
    }
    Ok(t)
}

/// A binary `timestamp[tz]`: microseconds since 1970 (infinities refused).
fn timestamp_micros(v: &[u8]) -> std::result::Result<i64, String> {
    let t = i64::from_be_bytes(fixed(v)?);
    if t == i64::MAX || t == i64::MIN {
        return Err(no_infinity("timestamp", t > 0));
    }
    Ok(t.checked_add(PG_EPOCH_MICROS)
        .ok_or("timestamp out of range")?)
}

impl IntervalCol {
    /// A binary `interval`: microseconds, days, months.
    fn append(&mut self, v: &[u8]) -> std::result::Result<(), String> {
        let raw: [u8; 16] = fixed(v)?;
        self.micros
            .append_value(i64::from_be_bytes(fixed(&raw[0..8])?));
        self.days
            .append_value(i32::from_be_bytes(fixed(&raw[8..12])?));
        self.months
            .append_value(i32::from_be_bytes(fixed(&raw[12..16])?));
        self.nulls.append_non_null();
        Ok(())
    }
}

/// Appends a binary one-dimensional array's elements to `child`; returns
/// how many.
fn append_array(child: &mut Col, v: &[u8]) -> std::result::Result<i32, String> {
    let ndim = be_i32(v, 0)?;
    if ndim > 1 {
        return Err(format!(
            "{ndim}-dimensional array: only one-dimensional arrays map to Iceberg lists (list the column in `text_columns` to keep its text form)"
        ));
    }
    if ndim != 1 {
        return Ok(0);
    }
    let count = be_i32(v, 12)?;
    let lower = be_i32(v, 16)?;
    if lower != 1 {
        return Err(format!(
            "array with lower bound {lower}: Iceberg lists start at 1 (list the column in `text_columns` to keep its text form)"
        ));
    }
    let mut pos = 20;
    for i in 0..count {
        let len = be_i32(v, pos)?;
        pos += 4;
        if len < 0 {
            child.append_null();
        } else {
            let e = v.get(pos..pos + len as usize).ok_or("truncated array")?;
            child
                .append(e)
                .map_err(|why| format!("element {}: {why}", i + 1))?;
            pos += len as usize;
        }
    }
    Ok(count)
}

/// Appends a binary composite value's fields to `children`.
fn append_composite(
    children: &mut [Col],
    fields: &Fields,
    v: &[u8],
) -> std::result::Result<(), String> {
    let n = be_i32(v, 0)? as usize;
    if n != children.len() {
        return Err(format!(
            "composite value has {n} fields, expected {}",
            children.len()
        ));
    }
    let mut pos = 4;
    for (c, f) in children.iter_mut().zip(fields.iter()) {
        let len = be_i32(v, pos + 4)?;
        pos += 8;
        if len < 0 {
            c.append_null();
        } else {
            let e = v
                .get(pos..pos + len as usize)
                .ok_or("truncated composite")?;
            c.append(e)
                .map_err(|why| format!("field `{}`: {why}", f.name()))?;
            pos += len as usize;
        }
    }
    Ok(())
}

impl Col {
    /// A builder for `kind`, producing arrays of exactly `dt` (the table's Arrow type).
    fn new(kind: &PgKind, dt: &DataType) -> Result<Self> {
        let n = BATCH_ROWS;
        let mismatch =
            || Error::internal(format!("column kind {kind:?} does not fit Arrow type {dt}"));
        Ok(match kind {
            PgKind::Bool => Col::Bool(BooleanBuilder::with_capacity(n)),
            PgKind::Int2 => Col::Int2(Int32Builder::with_capacity(n)),
            PgKind::Int4 => Col::Int4(Int32Builder::with_capacity(n)),
            PgKind::Int8 => Col::Int8(Int64Builder::with_capacity(n)),
            PgKind::Float4 => Col::Float4(Float32Builder::with_capacity(n)),
            PgKind::Float8 => Col::Float8(Float64Builder::with_capacity(n)),
            PgKind::Numeric { precision, scale } => {
                Col::Numeric(Decimal128Builder::with_capacity(n), *precision, *scale)
            }
            PgKind::Text => Col::Text(BinaryBuilder::with_capacity(n, n * 16)),
            PgKind::Jsonb => Col::Jsonb(BinaryBuilder::with_capacity(n, n * 32)),
            PgKind::Bytea => Col::Bytea(LargeBinaryBuilder::with_capacity(n, n * 16)),
            PgKind::Uuid => Col::Uuid(FixedSizeBinaryBuilder::with_capacity(n, 16)),
            PgKind::Date => Col::Date(Date32Builder::with_capacity(n)),
            PgKind::Time => Col::Time(Time64MicrosecondBuilder::with_capacity(n)),
            PgKind::Timestamp => Col::Timestamp(TimestampMicrosecondBuilder::with_capacity(n)),
            PgKind::Timestamptz => Col::Timestamptz(TimestampMicrosecondBuilder::with_capacity(n)),
            PgKind::Interval => match dt {
                DataType::Struct(fields) if fields.len() == 3 => {
                    Col::Interval(Box::new(IntervalCol {
                        months: Int32Builder::with_capacity(n),
                        days: Int32Builder::with_capacity(n),
                        micros: Int64Builder::with_capacity(n),
                        nulls: NullBufferBuilder::new(n),
                        fields: fields.clone(),
                    }))
                }
                _ => return Err(mismatch()),
            },
            PgKind::Array { element } => match dt {
                DataType::List(field) => Col::List {
                    child: Box::new(Col::new(element, field.data_type())?),
                    offsets: vec![0],
                    nulls: NullBufferBuilder::new(n),
                    field: field.clone(),
                },
                _ => return Err(mismatch()),
            },
            PgKind::Composite { fields: kinds } => match dt {
                DataType::Struct(fields) if fields.len() == kinds.len() => Col::Struct {
                    children: kinds
                        .iter()
                        .zip(fields.iter())
                        .map(|(k, f)| Col::new(&k.kind, f.data_type()))
                        .collect::<Result<_>>()?,
                    nulls: NullBufferBuilder::new(n),
                    fields: fields.clone(),
                },
                _ => return Err(mismatch()),
            },
        })
    }

    fn append_null(&mut self) {
        match self {
            Col::Bool(b) => b.append_null(),
            Col::Int2(b) | Col::Int4(b) => b.append_null(),
            Col::Int8(b) => b.append_null(),
            Col::Float4(b) => b.append_null(),
            Col::Float8(b) => b.append_null(),
            Col::Numeric(b, ..) => b.append_null(),
            Col::Text(b) | Col::Jsonb(b) => b.append_null(),
            Col::Bytea(b) => b.append_null(),
            Col::Uuid(b) => b.append_null(),
            Col::Date(b) => b.append_null(),
            Col::Time(b) => b.append_null(),
            Col::Timestamp(b) | Col::Timestamptz(b) => b.append_null(),
            Col::Interval(c) => {
                let IntervalCol {
                    months,
                    days,
                    micros,
                    nulls,
                    ..
                } = c.as_mut();
                // Required children need a value even under a NULL parent.
                months.append_value(0);
                days.append_value(0);
                micros.append_value(0);
                nulls.append_null();
            }
            Col::List { offsets, nulls, .. } => {
                offsets.push(*offsets.last().unwrap_or(&0));
                nulls.append_null();
            }
            Col::Struct {
                children, nulls, ..
            } => {
                for c in children {
                    c.append_null();
                }
                nulls.append_null();
            }
        }
    }

    /// Appends one non-NULL value; returns a description of the problem on failure.
    ///
    /// The flat types of time-series rows are appended here, in a small
    /// function; the rest, whose decoding takes room (before the split,
    /// every value's call paid their 264-byte stack frame), out of line.
    #[inline]
    fn append(&mut self, v: &[u8]) -> std::result::Result<(), String> {
        match self {
            Col::Bool(b) => b.append_value(fixed::<1>(v)?[0] != 0),
            Col::Int2(b) => b.append_value(i16::from_be_bytes(fixed(v)?) as i32),
            Col::Int4(b) => b.append_value(i32::from_be_bytes(fixed(v)?)),
            Col::Int8(b) => b.append_value(i64::from_be_bytes(fixed(v)?)),
            Col::Float4(b) => b.append_value(f32::from_be_bytes(fixed(v)?)),
            Col::Float8(b) => b.append_value(f64::from_be_bytes(fixed(v)?)),
            Col::Text(b) => b.append_value(v),
            Col::Date(b) => b.append_value(date_days(v)?),
            Col::Timestamp(b) | Col::Timestamptz(b) => b.append_value(timestamp_micros(v)?),
            _ => return self.append_other(v),
        }
        Ok(())
    }

    /// [`Col::append`] for the types it leaves out of line.
    #[inline(never)]
    fn append_other(&mut self, v: &[u8]) -> std::result::Result<(), String> {
        match self {
            Col::Bool(_)
            | Col::Int2(_)
            | Col::Int4(_)
            | Col::Int8(_)
            | Col::Float4(_)
            | Col::Float8(_)
            | Col::Text(_)
            | Col::Date(_)
            | Col::Timestamp(_)
            | Col::Timestamptz(_) => {
                return Err("internal: a flat value appended out of line".into());
            }
            Col::Numeric(b, p, s) => b.append_value(decode_numeric(v, *p, *s)?),
            Col::Jsonb(b) => {
                let (ver, text) = v.split_first().ok_or("empty jsonb value")?;
                if *ver != 1 {
                    return Err(format!("unknown jsonb format version {ver}"));
                }
                b.append_value(text)
            }
            Col::Bytea(b) => b.append_value(v),
            Col::Uuid(b) => b.append_value(v).map_err(|e| e.to_string())?,
            Col::Time(b) => b.append_value(time_micros(v)?),
            Col::Interval(c) => c.append(v)?,
            Col::List {
                child,
                offsets,
                nulls,
                ..
            } => {
                let count = append_array(child, v)?;
                let last = *offsets.last().unwrap_or(&0);
                offsets.push(last + count);
                nulls.append_non_null();
            }
            Col::Struct {
                children,
                nulls,
                fields,
            } => {
                append_composite(children, fields, v)?;
                nulls.append_non_null();
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<ArrayRef> {
        let built: ArrayRef = match self {
            Col::Bool(b) => Arc::new(b.finish()),
            Col::Int2(b) | Col::Int4(b) => Arc::new(b.finish()),
            Col::Int8(b) => Arc::new(b.finish()),
            Col::Float4(b) => Arc::new(b.finish()),
            Col::Float8(b) => Arc::new(b.finish()),
            Col::Numeric(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s as i8)
                    .map_err(|e| Error::arrow("decimal precision", e))?,
            ),
            Col::Text(b) | Col::Jsonb(b) => Arc::new(utf8_array(b)?),
            Col::Bytea(b) => Arc::new(b.finish()),
            Col::Uuid(b) => Arc::new(b.finish()),
            Col::Date(b) => Arc::new(b.finish()),
            Col::Time(b) => Arc::new(b.finish()),
            Col::Timestamp(b) => Arc::new(b.finish()),
            Col::Timestamptz(b) => {
                Arc::new(b.finish().with_timezone(iceberg::arrow::UTC_TIME_ZONE))
            }
            Col::Interval(c) => {
                let IntervalCol {
                    months,
                    days,
                    micros,
                    nulls,
                    fields,
                } = c.as_mut();
                Arc::new(
                    StructArray::try_new(
                        fields.clone(),
                        vec![
                            Arc::new(months.finish()),
                            Arc::new(days.finish()),
                            Arc::new(micros.finish()),
                        ],
                        nulls.finish(),
                    )
                    .map_err(|e| Error::arrow("cannot build interval values", e))?,
                )
            }
            Col::List {
                child,
                offsets,
                nulls,
                field,
            } => {
                let values = child.finish()?;
                let offs =
                    OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(offsets, vec![0])));
                Arc::new(
                    ListArray::try_new(field.clone(), offs, values, nulls.finish())
                        .map_err(|e| Error::arrow("cannot build list values", e))?,
                )
            }
            Col::Struct {
                children,
                nulls,
                fields,
            } => {
                let arrays = children
                    .iter_mut()
                    .map(Col::finish)
                    .collect::<Result<Vec<_>>>()?;
                Arc::new(
                    StructArray::try_new(fields.clone(), arrays, nulls.finish())
                        .map_err(|e| Error::arrow("cannot build composite values", e))?,
                )
            }
        };
        Ok(built)
    }
}

/// Decodes Postgres' binary numeric into an unscaled i128 at `scale`, checking `precision`.
pub(crate) fn decode_numeric(
    v: &[u8],
    precision: u8,
    scale: u8,
) -> std::result::Result<i128, String> {
    if v.len() < 8 {
        return Err("truncated numeric".into());
    }
    let ndigits = i16::from_be_bytes([v[0], v[1]]) as usize;
    let weight = i16::from_be_bytes([v[2], v[3]]) as i32;
    let sign = u16::from_be_bytes([v[4], v[5]]);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Err("value NaN cannot be stored in an Iceberg decimal (list the column in `text_columns` to keep it)".into()),
        0xD000 => return Err("value Infinity cannot be stored in an Iceberg decimal (list the column in `text_columns` to keep it)".into()),
        0xF000 => return Err("value -Infinity cannot be stored in an Iceberg decimal (list the column in `text_columns` to keep it)".into()),
        s => return Err(format!("unknown numeric sign {s:#x}")),
    }
    if v.len() < 8 + 2 * ndigits {
        return Err("truncated numeric".into());
    }
    let mut acc: i128 = 0;
    for i in 0..ndigits {
        let d = i16::from_be_bytes([v[8 + 2 * i], v[9 + 2 * i]]) as i128;
        // This digit's value is d × 10000^(weight - i); scaled by 10^scale.
        let exp10 = 4 * (weight - i as i32) + scale as i32;
        if exp10 >= 0 {
            let m = 10i128
                .checked_pow(exp10 as u32)
                .ok_or("numeric out of range")?;
            acc = d
                .checked_mul(m)
                .and_then(|x| acc.checked_add(x))
                .ok_or("numeric out of range")?;
        } else {
            let div = 10i128.pow((-exp10) as u32);
            if d % div != 0 {
                return Err(format!("numeric has more than {scale} decimal places"));
            }
            acc = acc.checked_add(d / div).ok_or("numeric out of range")?;
        }
    }
    if acc >= 10i128.pow(precision as u32) {
        return Err(format!("numeric does not fit precision {precision}"));
    }
    Ok(if sign == 0x4000 { -acc } else { acc })
}

/// Incremental decoder of a binary COPY stream.
pub struct CopyDecoder {
    schema: SchemaRef,
    /// `column (type)` per field, for messages.
    names: Vec<String>,
    /// Each column's Postgres kind, to start its next batch's builder.
    kinds: Vec<PgKind>,
    cols: Vec<Col>,
    header_done: bool,
    finished: bool,
    rows: usize,
    bytes: usize,
    total_rows: u64,
}

impl CopyDecoder {
    /// A decoder producing batches of `schema`, whose fields are `kinds` in order.
    pub fn new(schema: SchemaRef, names: Vec<String>, kinds: &[PgKind]) -> Result<Self> {
        let cols = kinds
            .iter()
            .zip(schema.fields().iter())
            .map(|(k, f)| Col::new(k, f.data_type()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            schema,
            names,
            kinds: kinds.to_vec(),
            cols,
            header_done: false,
            finished: false,
            rows: 0,
            bytes: 0,
            total_rows: 0,
        })
    }

    /// Rows decoded so far.
    pub fn total_rows(&self) -> u64 {
        self.total_rows
    }

    /// Decodes every complete row in `buf`, consuming it; completed record
    /// batches are pushed to `out`.  A partial row stays in `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut, out: &mut Vec<RecordBatch>) -> Result<()> {
        let used = self.decode_slice(buf, out)?;
        buf.advance(used);
        Ok(())
    }

    /// Decodes one message of the stream: `pending` holds a partial row
    /// left by the messages before, and keeps what this one leaves.
    /// Postgres sends a row per message, so a row is decoded where it is
    /// and only a partial row's bytes are copied.
    pub fn feed(
        &mut self,
        pending: &mut BytesMut,
        message: &[u8],
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        if pending.is_empty() {
            let used = self.decode_slice(message, out)?;
            pending.extend_from_slice(&message[used..]);
            return Ok(());
        }
        pending.extend_from_slice(message);
        self.decode(pending, out)
    }

    /// Decodes every complete row at the start of `data`; completed record
    /// batches are pushed to `out`.  Returns how many bytes were consumed
    /// (a partial row at the end is not).
    pub fn decode_slice(&mut self, data: &[u8], out: &mut Vec<RecordBatch>) -> Result<usize> {
        let mut at = 0;
        if !self.header_done {
            if data.len() < SIGNATURE.len() + 8 {
                return Ok(0);
            }
            if &data[..SIGNATURE.len()] != SIGNATURE {
                return Err(Error::internal(
                    "COPY stream does not start with the binary signature",
                ));
            }
            let ext = u32::from_be_bytes([data[15], data[16], data[17], data[18]]) as usize;
            if data.len() < 19 + ext {
                return Ok(0);
            }
            at = 19 + ext;
            self.header_done = true;
        }
        while !self.finished {
            let Some(used) = self.decode_row(&data[at..])? else {
                break;
            };
            at += used;
            if self.rows >= BATCH_ROWS || self.bytes >= BATCH_BYTES {
                out.push(self.flush()?);
            }
        }
        Ok(at)
    }

    /// Decodes the row (or the trailer) at the start of `buf`: the bytes it
    /// took, or `None` when it is not complete yet.
    fn decode_row(&mut self, buf: &[u8]) -> Result<Option<usize>> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let nfields = i16::from_be_bytes([buf[0], buf[1]]);
        if nfields == -1 {
            self.finished = true;
            return Ok(Some(2));
        }
        let ncols = self.cols.len();
        if nfields as usize != ncols {
            return Err(Error::internal(format!(
                "COPY row has {nfields} fields, expected {ncols}"
            )));
        }
        // Is the whole row here?
        let mut pos = 2;
        for _ in 0..ncols {
            let Some(len) = be_i32_at(buf, pos) else {
                return Ok(None);
            };
            pos += 4 + len.max(0) as usize;
        }
        let Some(row) = buf.get(..pos) else {
            return Ok(None);
        };
        let mut p = 2;
        for (i, col) in self.cols.iter_mut().enumerate() {
            let len = be_i32_at(row, p)
                .ok_or_else(|| Error::internal("COPY row ends inside its fields"))?;
            p += 4;
            if len < 0 {
                col.append_null();
                continue;
            }
            let v = &row[p..p + len as usize];
            p += len as usize;
            col.append(v).map_err(|why| {
                Error::new(ErrorKind::Unsupported, format!("column {}: {why}", self.names[i]))
                    .with_hint("nothing was deleted; fix the value, or list the column in `text_columns` (its text form keeps any value) or `exclude_columns`")
            })?;
        }
        self.bytes += pos;
        self.rows += 1;
        self.total_rows += 1;
        Ok(Some(pos))
    }

    /// The rows decoded since the last flush, as a record batch.
    pub fn flush(&mut self) -> Result<RecordBatch> {
        // Each column starts the next batch with a builder sized for a whole
        // batch: a finished builder keeps no capacity, and growing one again
        // from nothing copies its values a dozen times.
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.cols.len());
        for (((col, kind), field), name) in self
            .cols
            .iter_mut()
            .zip(&self.kinds)
            .zip(self.schema.fields().iter())
            .zip(&self.names)
        {
            let mut full = std::mem::replace(col, Col::new(kind, field.data_type())?);
            arrays.push(
                full.finish()
                    .map_err(|e| e.prefixed(format_args!("column {name}")))?,
            );
        }
        self.rows = 0;
        self.bytes = 0;
        RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| Error::arrow("cannot assemble a record batch", e))
    }

    /// True once the end-of-data marker was seen.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Rows waiting in the builders.
    pub fn buffered_rows(&self) -> usize {
        self.rows
    }
}

/// Decodes a binary COPY stream into record batches and sends each with its
/// row hashes (see [`crate::checksum`]) to `tx`.  Returns the number of rows
/// streamed.  Stops early (with `Ok`) when the receiver is dropped.
async fn decode_stream(
    stream: tokio_postgres::CopyOutStream,
    mut decoder: CopyDecoder,
    tx: Ahead,
) -> Result<u64> {
    let mut stream = std::pin::pin!(stream);
    // Only a row split across messages is copied here (see `feed`).
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut hasher = RowHasher::default();
    let hashed = |b: RecordBatch, hasher: &mut RowHasher| -> Result<(RecordBatch, Vec<u128>)> {
        let mut h = Vec::with_capacity(b.num_rows());
        hasher.hash_rows(&b, &mut h)?;
        Ok((b, h))
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::postgres("COPY failed", e))?;
        decoder.feed(&mut buf, &chunk, &mut out)?;
        for b in out.drain(..) {
            let (b, h) = hashed(b, &mut hasher)?;
            if !tx.send(b, h).await {
                return Ok(decoder.total_rows());
            }
        }
    }
    if !decoder.finished() {
        return Err(Error::new(
            ErrorKind::Postgres,
            "COPY stream ended without its trailer",
        ));
    }
    if decoder.buffered_rows() > 0 {
        let (b, h) = hashed(decoder.flush()?, &mut hasher)?;
        tx.send(b, h).await;
    }
    Ok(decoder.total_rows())
}

/// Decoded batches the decoding task holds ready for the consumer at most,
/// besides the one it is building.
const AHEAD_BATCHES: usize = 4;
/// Bytes of decoded batches held ready at most (one batch, however large,
/// is always let through): narrow rows come [`AHEAD_BATCHES`] batches
/// ahead, rows of kilobytes one.
const AHEAD_BYTES: usize = BATCH_BYTES;

/// A decoded batch, its row hashes, its bytes (Arrow's), and its share of
/// [`AHEAD_BYTES`] (given back when the consumer takes it).
struct Ready {
    batch: RecordBatch,
    hashes: Vec<u128>,
    bytes: usize,
    _room: tokio::sync::OwnedSemaphorePermit,
}

/// The decoding task's end of the queue of batches ready.
struct Ahead {
    tx: tokio::sync::mpsc::Sender<Ready>,
    /// Kibibytes of [`AHEAD_BYTES`] not held by a batch ready.
    room: Arc<tokio::sync::Semaphore>,
}

impl Ahead {
    /// Queues a batch once there is room for it; false when the consumer
    /// has stopped reading.
    async fn send(&self, batch: RecordBatch, hashes: Vec<u128>) -> bool {
        let bytes = batch.get_array_memory_size();
        let kib = (bytes / 1024).clamp(1, AHEAD_BYTES / 1024);
        let Ok(room) = self.room.clone().acquire_many_owned(kib as u32).await else {
            return false;
        };
        let ready = Ready {
            batch,
            hashes,
            bytes,
            _room: room,
        };
        self.tx.send(ready).await.is_ok()
    }
}

/// The rows of a binary COPY, decoded and hashed on their own task while the
/// caller consumes them (back-pressure: at most [`AHEAD_BATCHES`] batches
/// or [`AHEAD_BYTES`] ahead).  The one COPY pipeline of archive, reconcile
/// and restore validation.
pub struct CopyRows {
    receiver: tokio::sync::mpsc::Receiver<Ready>,
    room: Arc<tokio::sync::Semaphore>,
    task: tokio::task::JoinHandle<Result<u64>>,
    /// Bytes (Arrow's) of the batches taken so far.
    taken_bytes: u64,
}

impl CopyRows {
    /// Starts decoding `stream` (a `COPY … TO STDOUT (FORMAT binary)`).
    pub fn spawn(stream: tokio_postgres::CopyOutStream, decoder: CopyDecoder) -> Self {
        let (tx, receiver) = tokio::sync::mpsc::channel(AHEAD_BATCHES);
        let room = Arc::new(tokio::sync::Semaphore::new(AHEAD_BYTES / 1024));
        let ahead = Ahead {
            tx,
            room: room.clone(),
        };
        let task = tokio::spawn(decode_stream(stream, decoder, ahead));
        Self {
            receiver,
            room,
            task,
            taken_bytes: 0,
        }
    }

    /// The next batch and its row hashes; `None` at the end (or on an error,
    /// which [`CopyRows::finish`] returns).
    pub async fn next(&mut self) -> Option<(RecordBatch, Vec<u128>)> {
        let ready = self.receiver.recv().await?;
        self.taken_bytes += ready.bytes as u64;
        Some((ready.batch, ready.hashes))
    }

    /// Bytes (Arrow's) of the batches [`CopyRows::next`] has given.
    pub fn taken_bytes(&self) -> u64 {
        self.taken_bytes
    }

    /// Stops reading and returns the rows streamed, or the stream's error.
    pub async fn finish(self) -> Result<u64> {
        self.room.close();
        drop(self.receiver);
        self.task
            .await
            .map_err(|e| Error::internal(format!("the COPY decoding task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Decimal128Type, Int64Type, TimestampMicrosecondType};
    use arrow_schema::{DataType, Field, Schema, TimeUnit};

    use super::*;

    fn numeric_bytes(ndigits: &[i16], weight: i16, sign: u16, dscale: u16) -> Vec<u8> {
        let mut v = vec![];
        v.extend_from_slice(&(ndigits.len() as i16).to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        for d in ndigits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics() {
        // 12345.67 = [1, 2345, 6700] weight 1
        assert_eq!(
            decode_numeric(&numeric_bytes(&[1, 2345, 6700], 1, 0, 2), 10, 2).unwrap(),
            1234567
        );
        // -0.05 = [500] weight -1
        assert_eq!(
            decode_numeric(&numeric_bytes(&[500], -1, 0x4000, 2), 5, 2).unwrap(),
            -5
        );
        // 0
        assert_eq!(
            decode_numeric(&numeric_bytes(&[], 0, 0, 0), 5, 2).unwrap(),
            0
        );
        // 10^20 with scale 0, precision 38
        assert_eq!(
            decode_numeric(&numeric_bytes(&[1], 5, 0, 0), 38, 0).unwrap(),
            10i128.pow(20)
        );
        assert!(
            decode_numeric(&numeric_bytes(&[], 0, 0xC000, 0), 5, 2)
                .unwrap_err()
                .contains("NaN")
        );
        assert!(
            decode_numeric(&numeric_bytes(&[1], 2, 0, 0), 5, 0)
                .unwrap_err()
                .contains("precision")
        );
        assert!(
            decode_numeric(&numeric_bytes(&[1234], -1, 0, 4), 10, 2)
                .unwrap_err()
                .contains("decimal places")
        );
    }

    fn encode_rows(rows: &[(Option<i64>, Option<i64>, Option<i128>)]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.extend_from_slice(&0i32.to_be_bytes());
        v.extend_from_slice(&0i32.to_be_bytes());
        for (a, t, _) in rows {
            v.extend_from_slice(&3i16.to_be_bytes());
            match a {
                Some(x) => {
                    v.extend_from_slice(&8i32.to_be_bytes());
                    v.extend_from_slice(&x.to_be_bytes());
                }
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
            }
            match t {
                Some(x) => {
                    v.extend_from_slice(&8i32.to_be_bytes());
                    v.extend_from_slice(&(x - PG_EPOCH_MICROS).to_be_bytes());
                }
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
            }
            let n = numeric_bytes(&[12, 5000], 0, 0, 2); // 12.50
            v.extend_from_slice(&(n.len() as i32).to_be_bytes());
            v.extend_from_slice(&n);
        }
        v.extend_from_slice(&(-1i16).to_be_bytes());
        v
    }

    fn decoder() -> CopyDecoder {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
            Field::new("n", DataType::Decimal128(6, 2), true),
        ]));
        CopyDecoder::new(
            schema,
            vec!["`a`".into(), "`t`".into(), "`n`".into()],
            &[
                PgKind::Int8,
                PgKind::Timestamptz,
                PgKind::Numeric {
                    precision: 6,
                    scale: 2,
                },
            ],
        )
        .unwrap()
    }

    #[test]
    fn decodes_rows_split_at_any_byte() {
        let rows = vec![
            (Some(1), Some(1_700_000_000_000_000), None),
            (None, None, None),
            (Some(-5), Some(0), None),
        ];
        let bytes = encode_rows(&rows);
        for split in 1..bytes.len() {
            let mut d = decoder();
            let mut buf = BytesMut::new();
            let mut out = vec![];
            d.feed(&mut buf, &bytes[..split], &mut out).unwrap();
            d.feed(&mut buf, &bytes[split..], &mut out).unwrap();
            assert!(d.finished(), "split {split}");
            assert!(buf.is_empty(), "split {split}: all consumed");
            let b = d.flush().unwrap();
            assert_eq!(b.num_rows(), 3);
            let a = b.column(0).as_primitive::<Int64Type>();
            assert_eq!((a.value(0), a.is_null(1), a.value(2)), (1, true, -5));
            let t = b.column(1).as_primitive::<TimestampMicrosecondType>();
            assert_eq!(
                (t.value(0), t.is_null(1), t.value(2)),
                (1_700_000_000_000_000, true, 0)
            );
            let n = b.column(2).as_primitive::<Decimal128Type>();
            assert_eq!(n.value(0), 1250);
        }
    }

    #[test]
    fn decodes_a_stream_fed_byte_by_byte() {
        let rows = vec![(Some(7), Some(3), None), (None, Some(-1), None)];
        let bytes = encode_rows(&rows);
        let mut d = decoder();
        let (mut buf, mut out) = (BytesMut::new(), vec![]);
        for b in &bytes {
            d.feed(&mut buf, std::slice::from_ref(b), &mut out).unwrap();
        }
        assert!(d.finished() && buf.is_empty());
        let b = d.flush().unwrap();
        let a = b.column(0).as_primitive::<Int64Type>();
        assert_eq!((b.num_rows(), a.value(0), a.is_null(1)), (2, 7, true));
    }

    fn array_bytes(dims: &[(i32, i32)], elems: &[Option<i32>]) -> Vec<u8> {
        let mut v = vec![];
        v.extend_from_slice(&(dims.len() as i32).to_be_bytes());
        v.extend_from_slice(&(elems.iter().any(Option::is_none) as i32).to_be_bytes());
        v.extend_from_slice(&23u32.to_be_bytes());
        for (len, lower) in dims {
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(&lower.to_be_bytes());
        }
        for e in elems {
            match e {
                Some(x) => {
                    v.extend_from_slice(&4i32.to_be_bytes());
                    v.extend_from_slice(&x.to_be_bytes());
                }
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        v
    }

    fn list_col() -> Col {
        let el = Arc::new(Field::new("element", DataType::Int32, true));
        Col::new(
            &PgKind::Array {
                element: Box::new(PgKind::Int4),
            },
            &DataType::List(el),
        )
        .unwrap()
    }

    #[test]
    fn arrays_keep_nulls_and_empties_and_refuse_two_dimensions() {
        let mut c = list_col();
        c.append(&array_bytes(&[(3, 1)], &[Some(1), None, Some(3)]))
            .unwrap();
        c.append(&array_bytes(&[], &[])).unwrap();
        c.append_null();
        let a = c.finish().unwrap();
        let l = a.as_list::<i32>();
        assert_eq!(l.len(), 3);
        let first = l.value(0);
        let first = first.as_primitive::<arrow_array::types::Int32Type>();
        assert_eq!(
            (first.value(0), first.is_null(1), first.value(2)),
            (1, true, 3)
        );
        assert_eq!(l.value(1).len(), 0);
        assert!(l.is_null(2));
        let mut c = list_col();
        let e = c
            .append(&array_bytes(
                &[(2, 1), (2, 1)],
                &[Some(1), Some(2), Some(3), Some(4)],
            ))
            .unwrap_err();
        assert!(e.contains("2-dimensional"), "{e}");
        let e = c.append(&array_bytes(&[(1, 0)], &[Some(1)])).unwrap_err();
        assert!(e.contains("lower bound 0"), "{e}");
    }

    #[test]
    fn intervals_are_three_parts() {
        let fields: Fields = vec![
            Field::new("months", DataType::Int32, false),
            Field::new("days", DataType::Int32, false),
            Field::new("microseconds", DataType::Int64, false),
        ]
        .into();
        let mut c = Col::new(&PgKind::Interval, &DataType::Struct(fields)).unwrap();
        let mut v = vec![];
        v.extend_from_slice(&3_600_000_001i64.to_be_bytes());
        v.extend_from_slice(&(-2i32).to_be_bytes());
        v.extend_from_slice(&14i32.to_be_bytes());
        c.append(&v).unwrap();
        c.append_null();
        let a = c.finish().unwrap();
        let st = a.as_struct();
        assert_eq!(
            st.column(0)
                .as_primitive::<arrow_array::types::Int32Type>()
                .value(0),
            14
        );
        assert_eq!(
            st.column(1)
                .as_primitive::<arrow_array::types::Int32Type>()
                .value(0),
            -2
        );
        assert_eq!(
            st.column(2).as_primitive::<Int64Type>().value(0),
            3_600_000_001
        );
        assert!(st.is_null(1));
    }

    #[test]
    fn infinity_is_refused_with_the_column_name() {
        let mut bytes = SIGNATURE.to_vec();
        bytes.extend_from_slice(&[0; 8]);
        bytes.extend_from_slice(&3i16.to_be_bytes());
        bytes.extend_from_slice(&(-1i32).to_be_bytes());
        bytes.extend_from_slice(&8i32.to_be_bytes());
        bytes.extend_from_slice(&i64::MAX.to_be_bytes());
        bytes.extend_from_slice(&(-1i32).to_be_bytes());
        let mut d = decoder();
        let mut buf = BytesMut::from(&bytes[..]);
        let e = d.decode(&mut buf, &mut vec![]).unwrap_err();
        assert!(e.to_string().contains("column `t`"), "{e}");
        assert!(e.to_string().contains("infinity"), "{e}");
    }

    /// A one-column text table's COPY stream of `values` (None: NULL).
    fn text_rows(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut bytes = SIGNATURE.to_vec();
        bytes.extend_from_slice(&[0; 8]);
        for v in values {
            bytes.extend_from_slice(&1i16.to_be_bytes());
            match v {
                Some(v) => {
                    bytes.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    bytes.extend_from_slice(v);
                }
                None => bytes.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        bytes.extend_from_slice(&(-1i16).to_be_bytes());
        bytes
    }

    fn text_decoder() -> CopyDecoder {
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)]));
        CopyDecoder::new(schema, vec!["`s`".into()], &[PgKind::Text]).unwrap()
    }

    #[test]
    fn text_is_checked_for_utf8_a_batch_at_a_time_with_the_same_verdict() {
        let good: [Option<&[u8]>; 4] = [Some("é".as_bytes()), None, Some(b""), Some(b"abc")];
        let mut d = text_decoder();
        let mut out = vec![];
        d.decode(&mut BytesMut::from(&text_rows(&good)[..]), &mut out)
            .unwrap();
        let b = d.flush().unwrap();
        let s = b.column(0).as_string::<i32>();
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            [Some("é"), None, Some(""), Some("abc")]
        );
        // Each value alone must be valid, not only the bytes of the batch
        // together: 0xC3 then 0xA9 spell "é" side by side.
        for bad in [
            &[Some(&[0xC3u8][..]), Some(&[0xA9u8][..])][..],
            &[Some(&[0xFFu8][..])][..],
        ] {
            let mut d = text_decoder();
            d.decode(&mut BytesMut::from(&text_rows(bad)[..]), &mut vec![])
                .unwrap();
            let e = d.flush().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported);
            assert!(e.to_string().contains("column `s`"), "{e}");
            assert!(e.to_string().contains("UTF-8"), "{e}");
        }
    }

    #[test]
    fn batches_ahead_of_the_writer_are_bounded_in_bytes() {
        use futures::FutureExt;
        let batch = |kib: usize| {
            let values = arrow_array::Int64Array::from(vec![7i64; kib * 128]);
            RecordBatch::try_from_iter([("v", Arc::new(values) as ArrayRef)]).unwrap()
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(AHEAD_BATCHES);
        let room = Arc::new(tokio::sync::Semaphore::new(AHEAD_BYTES / 1024));
        let ahead = Ahead { tx, room };
        // Three MiB ready: a second batch of three waits for the first to be taken.
        assert_eq!(
            ahead.send(batch(3 << 10), vec![]).now_or_never(),
            Some(true)
        );
        assert_eq!(ahead.send(batch(3 << 10), vec![]).now_or_never(), None);
        let first = rx.recv().now_or_never().flatten().expect("the first batch");
        drop(first);
        assert_eq!(
            ahead.send(batch(3 << 10), vec![]).now_or_never(),
            Some(true)
        );
        // Narrow batches: the count bounds them.
        drop(rx.recv().now_or_never());
        for _ in 0..AHEAD_BATCHES {
            assert_eq!(ahead.send(batch(16), vec![]).now_or_never(), Some(true));
        }
        assert_eq!(ahead.send(batch(16), vec![]).now_or_never(), None);
        // A batch over the whole bound still goes through, alone.
        while rx.try_recv().is_ok() {}
        assert_eq!(
            ahead.send(batch(8 << 10), vec![]).now_or_never(),
            Some(true)
        );
    }
}
