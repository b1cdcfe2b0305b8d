//! An Arrow column downcast once per record batch.
//!
//! The row-by-row encoders (the row hash in [`crate::checksum`], the COPY
//! encoder of a restore) read a batch's values one row at a time; asking a
//! `dyn Array` for its type and validity at every value costs more than the
//! encoding itself.  A [`Column`] resolves both once.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    Time64MicrosecondType, TimestampMicrosecondType,
};
use arrow_array::{
    Array, BinaryArray, BinaryViewArray, BooleanArray, FixedSizeBinaryArray, LargeBinaryArray,
    LargeStringArray, StringArray, StringViewArray,
};
use arrow_schema::{DataType, TimeUnit};

use crate::error::{Error, Result};

/// A column of a batch, its Arrow type and validity resolved once.
pub struct Column<'a> {
    /// The validity bitmap, when the column has NULLs.
    nulls: Option<&'a arrow_buffer::NullBuffer>,
    pub values: Values<'a>,
}

/// The values of a [`Column`], by their Arrow storage.
pub enum Values<'a> {
    Bool(&'a BooleanArray),
    I16(&'a [i16]),
    /// Int32 and Date32.
    I32(&'a [i32]),
    /// Int64, timestamps and times (microseconds).
    I64(&'a [i64]),
    F32(&'a [f32]),
    F64(&'a [f64]),
    /// Decimal128: the unscaled values and the scale.
    Dec(&'a [i128], i8),
    Str(&'a StringArray),
    LargeStr(&'a LargeStringArray),
    StrView(&'a StringViewArray),
    Bin(&'a BinaryArray),
    LargeBin(&'a LargeBinaryArray),
    BinView(&'a BinaryViewArray),
    FixedBin(&'a FixedSizeBinaryArray),
    /// Lists and structs, read through the array itself.
    Nested(&'a dyn Array),
}

impl<'a> Column<'a> {
    /// Resolves `arr`; an Arrow type no archive column maps to is an
    /// internal error.
    pub fn new(arr: &'a dyn Array) -> Result<Self> {
        use Values as V;
        let values = match arr.data_type() {
            DataType::Boolean => V::Bool(arr.as_boolean()),
            DataType::Int16 => V::I16(arr.as_primitive::<Int16Type>().values()),
            DataType::Int32 => V::I32(arr.as_primitive::<Int32Type>().values()),
            DataType::Date32 => V::I32(arr.as_primitive::<Date32Type>().values()),
            DataType::Int64 => V::I64(arr.as_primitive::<Int64Type>().values()),
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                V::I64(arr.as_primitive::<TimestampMicrosecondType>().values())
            }
            DataType::Time64(TimeUnit::Microsecond) => {
                V::I64(arr.as_primitive::<Time64MicrosecondType>().values())
            }
            DataType::Float32 => V::F32(arr.as_primitive::<Float32Type>().values()),
            DataType::Float64 => V::F64(arr.as_primitive::<Float64Type>().values()),
            DataType::Decimal128(_, scale) => {
                V::Dec(arr.as_primitive::<Decimal128Type>().values(), *scale)
            }
            DataType::Utf8 => V::Str(arr.as_string::<i32>()),
            DataType::LargeUtf8 => V::LargeStr(arr.as_string::<i64>()),
            DataType::Utf8View => V::StrView(arr.as_string_view()),
            DataType::Binary => V::Bin(arr.as_binary::<i32>()),
            DataType::LargeBinary => V::LargeBin(arr.as_binary::<i64>()),
            DataType::BinaryView => V::BinView(arr.as_binary_view()),
            DataType::FixedSizeBinary(_) => V::FixedBin(arr.as_fixed_size_binary()),
            DataType::List(_) | DataType::LargeList(_) | DataType::Struct(_) => V::Nested(arr),
            other => {
                return Err(Error::internal(format!(
                    "Arrow type {other} is not handled"
                )));
            }
        };
        let nulls = arr.nulls().filter(|n| n.null_count() > 0);
        Ok(Self { nulls, values })
    }

    /// Whether any value is NULL.
    pub fn has_nulls(&self) -> bool {
        self.nulls.is_some()
    }

    /// Whether row `i` is NULL.
    #[inline]
    pub fn is_null(&self, i: usize) -> bool {
        self.nulls.is_some_and(|n| n.is_null(i))
    }

    /// Row `i`'s bytes, for the string and binary kinds (`None` for others).
    #[inline]
    pub fn bytes(&self, i: usize) -> Option<&'a [u8]> {
        use Values as V;
        Some(match self.values {
            V::Str(a) => a.value(i).as_bytes(),
            V::LargeStr(a) => a.value(i).as_bytes(),
            V::StrView(a) => a.value(i).as_bytes(),
            V::Bin(a) => a.value(i),
            V::LargeBin(a) => a.value(i),
            V::BinView(a) => a.value(i),
            V::FixedBin(a) => a.value(i),
            _ => return None,
        })
    }
}
