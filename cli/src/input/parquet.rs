//! Parquet shards: one document per row, the text in a string column (`--text-field`).
//!
//! Scoring reads only the text and id columns, one record batch at a time. Filtering
//! reads every column back, keeps the chosen rows of each batch and writes them with
//! the input's Arrow schema, codec, key-value metadata and (at most) row-group size,
//! so memory stays at about one row group whatever the shard's size.

use super::{Document, InputOptions, Record, Shard};
use crate::error::{CliError, Result, io_error};
use crate::fail;
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::arrow_writer::ArrowWriter;
use parquet::basic::Compression as Codec;
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use std::sync::atomic::{AtomicU64, Ordering};

/// Rows per record batch read.
const BATCH_ROWS: usize = 1024;
/// Largest buffered output row group (the writer holds one in memory).
const MAX_ROW_GROUP_BYTES: usize = 128 << 20;

/// A Parquet error on `path`, named as such.
fn parquet_error(path: &Path, e: impl std::fmt::Display) -> CliError {
    CliError(format!("{}: corrupt Parquet file: {e}", path.display()))
}

/// A reader over `path`'s record batches, with its text (and id) column positions.
fn open(
    path: &Path,
    opts: &InputOptions,
    all_columns: bool,
) -> Result<(ParquetRecordBatchReaderBuilder<File>, usize, Option<usize>)> {
    let file = File::open(path).map_err(|e| io_error(path, "cannot open input", e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| parquet_error(path, e))?
        .with_batch_size(BATCH_ROWS);
    let schema = builder.schema().clone();
    let find = |name: &str| schema.fields().iter().position(|f| f.name() == name);
    let Some(text) = find(&opts.text_field) else {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        fail!(
            "{}: no column `{}` (its columns: {}; choose the text column with --text-field)",
            path.display(),
            opts.text_field,
            names.join(", ")
        );
    };
    let text_type = schema.field(text).data_type();
    if !matches!(
        text_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        fail!(
            "{}: column `{}` holds {text_type}, not strings",
            path.display(),
            opts.text_field
        );
    }
    let id = find(&opts.id_field);
    if all_columns {
        return Ok((builder, text, id));
    }
    // Only the text and id columns: their positions among the projected columns.
    let mut roots = vec![text];
    roots.extend(id);
    roots.sort_unstable();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
    let at = |c: usize| roots.iter().position(|&r| r == c).expect("projected");
    let (t, i) = (at(text), id.map(at));
    Ok((builder.with_projection(mask), t, i))
}

/// Row `i` of a string column, `None` if null.
fn text_at(col: &ArrayRef, i: usize) -> Option<&[u8]> {
    if col.is_null(i) {
        return None;
    }
    Some(match col.data_type() {
        DataType::Utf8 => col.as_string::<i32>().value(i).as_bytes(),
        DataType::LargeUtf8 => col.as_string::<i64>().value(i).as_bytes(),
        _ => col.as_string_view().value(i).as_bytes(),
    })
}

/// Row `i` of an id column as JSON (strings and integers; `None` for a null or another
/// type).
fn id_at(col: &ArrayRef, i: usize) -> Option<serde_json::Value> {
    use arrow_array::types::{Int32Type, Int64Type, UInt32Type, UInt64Type};
    if col.is_null(i) {
        return None;
    }
    Some(match col.data_type() {
        DataType::Int64 => col.as_primitive::<Int64Type>().value(i).into(),
        DataType::Int32 => col.as_primitive::<Int32Type>().value(i).into(),
        DataType::UInt64 => col.as_primitive::<UInt64Type>().value(i).into(),
        DataType::UInt32 => col.as_primitive::<UInt32Type>().value(i).into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            String::from_utf8_lossy(text_at(col, i).unwrap_or_default())
                .into_owned()
                .into()
        }
        _ => return None,
    })
}

/// Whether a row with this text is a document (not null, within `--max-document-bytes`),
/// the rule [`super::Documents`] applies.
fn is_document(text: Option<&[u8]>, opts: &InputOptions) -> bool {
    text.is_some_and(|t| opts.max_document_bytes == 0 || t.len() as u64 <= opts.max_document_bytes)
}

/// The documents of a Parquet shard, in row order.
pub(crate) struct ParquetDocs {
    path: std::path::PathBuf,
    reader: ParquetRecordBatchReader,
    text: usize,
    id: Option<usize>,
    field: String,
    batch: Option<RecordBatch>,
    row: usize,
    rows_before: u64,
    bytes_per_row: f64,
}

impl ParquetDocs {
    /// Opens `shard`, reading its footer and checking its text column.
    pub(crate) fn open(shard: &Shard, opts: &InputOptions) -> Result<ParquetDocs> {
        let (builder, text, id) = open(&shard.path, opts, false)?;
        let rows = builder.metadata().file_metadata().num_rows().max(1) as f64;
        let reader = builder.build().map_err(|e| parquet_error(&shard.path, e))?;
        Ok(ParquetDocs {
            path: shard.path.clone(),
            reader,
            text,
            id,
            field: opts.text_field.clone(),
            batch: None,
            row: 0,
            rows_before: 0,
            bytes_per_row: shard.bytes as f64 / rows,
        })
    }

    /// The next row, or `None` at the end; `progress` advances by the shard's size per
    /// row.
    pub(crate) fn next_record(&mut self, progress: &AtomicU64) -> Result<Option<Record>> {
        loop {
            if let Some(b) = &self.batch
                && self.row < b.num_rows()
            {
                let i = self.row;
                self.row += 1;
                let line = self.rows_before + self.row as u64;
                let col = b.column(self.text);
                let Some(text) = text_at(col, i) else {
                    return Ok(Some(Record::Invalid(
                        line,
                        format!("row {line}: column `{}` is null", self.field),
                    )));
                };
                return Ok(Some(Record::Doc(Document {
                    line,
                    raw: Vec::new(),
                    field: Some(text.to_vec()),
                    id: self.id.and_then(|c| id_at(b.column(c), i)),
                })));
            }
            if let Some(b) = self.batch.take() {
                self.rows_before += b.num_rows() as u64;
                progress.fetch_add(
                    (b.num_rows() as f64 * self.bytes_per_row) as u64,
                    Ordering::Relaxed,
                );
            }
            match self.reader.next() {
                None => return Ok(None),
                Some(Err(e)) => return Err(parquet_error(&self.path, e)),
                Some(Ok(b)) => {
                    self.batch = Some(b);
                    self.row = 0;
                }
            }
        }
    }
}

/// The codec of `shard`'s first column chunk (`UNCOMPRESSED` for an empty file).
fn input_codec(builder: &ParquetRecordBatchReaderBuilder<File>) -> Codec {
    let m = builder.metadata();
    if m.num_row_groups() > 0 && m.row_group(0).num_columns() > 0 {
        m.row_group(0).column(0).compression()
    } else {
        Codec::UNCOMPRESSED
    }
}

/// Writes the rows of `shard` that are documents and that `keep` (called once per
/// document, in order) keeps, with every column, into `sink`; `codec` overrides the
/// input's. Returns the number of documents seen.
///
/// # Errors
/// The shard cannot be read, or the sink written.
pub fn copy_kept<W: Write + Send>(
    shard: &Shard,
    opts: &InputOptions,
    codec: Option<Codec>,
    mut keep: impl FnMut() -> bool,
    sink: W,
) -> Result<u64> {
    let path = &shard.path;
    let (builder, text, _) = open(path, opts, true)?;
    let rows = builder
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows().max(1) as usize)
        .max()
        .unwrap_or(BATCH_ROWS);
    let mut kv: Vec<_> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    // The writer records the Arrow schema itself.
    kv.retain(|k| k.key != "ARROW:schema");
    let props = WriterProperties::builder()
        .set_compression(codec.unwrap_or_else(|| input_codec(&builder)))
        .set_max_row_group_row_count(Some(rows))
        .set_max_row_group_bytes(Some(MAX_ROW_GROUP_BYTES))
        .set_key_value_metadata((!kv.is_empty()).then_some(kv))
        .build();
    let schema = builder.schema().clone();
    let reader = builder.build().map_err(|e| parquet_error(path, e))?;
    let write_error = |e: parquet::errors::ParquetError| {
        CliError(format!("{}: cannot write Parquet: {e}", path.display()))
    };
    let mut writer = ArrowWriter::try_new(sink, schema, Some(props)).map_err(write_error)?;
    let mut documents = 0u64;
    for batch in reader {
        crate::interrupt::check()?;
        let batch = batch.map_err(|e| parquet_error(path, e))?;
        let col = batch.column(text).clone();
        let mask: BooleanArray = (0..batch.num_rows())
            .map(|i| {
                Some(
                    is_document(text_at(&col, i), opts) && {
                        documents += 1;
                        keep()
                    },
                )
            })
            .collect();
        let kept = arrow_select::filter::filter_record_batch(&batch, &mask)
            .map_err(|e| CliError(format!("{}: cannot filter rows: {e}", path.display())))?;
        if kept.num_rows() > 0 {
            writer.write(&kept).map_err(write_error)?;
        }
    }
    writer.close().map_err(write_error)?;
    Ok(documents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{Field, Schema};
    use std::sync::Arc;

    fn write(path: &Path, texts: &[Option<&str>], codec: Codec) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("text", DataType::Utf8, true),
            Field::new("url", DataType::Utf8, false),
        ]));
        let n = texts.len();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..n as i64)),
                Arc::new(StringArray::from(texts.to_vec())),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("https://x/{i}")),
                )),
            ],
        )
        .unwrap();
        let props = WriterProperties::builder()
            .set_compression(codec)
            .set_max_row_group_row_count(Some(3))
            .build();
        let mut w = ArrowWriter::try_new(File::create(path).unwrap(), schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    fn read_all(path: &Path) -> Vec<RecordBatch> {
        ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap())
            .collect()
    }

    #[test]
    fn rows_are_documents_and_kept_rows_keep_every_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.parquet");
        let texts = ["zero", "one", "two", "three", "four", "five", "six"];
        write(&p, &texts.map(Some), Codec::SNAPPY);
        let shard = Shard::detect(&p, "a.parquet".into(), super::super::Format::Auto).unwrap();
        let opts = InputOptions::with_format(super::super::Format::Auto);
        let docs: Vec<Document> = shard
            .documents(&opts, Arc::default())
            .unwrap()
            .map(|d| d.unwrap())
            .collect();
        assert_eq!(docs.len(), 7);
        assert_eq!(docs[3].text(), b"three");
        assert_eq!((docs[3].line, docs[3].id.clone()), (4, Some(3.into())));
        // Keep the odd rows.
        let out = dir.path().join("kept.parquet");
        let mut i = 0;
        let n = copy_kept(
            &shard,
            &opts,
            None,
            || {
                i += 1;
                i % 2 == 0
            },
            File::create(&out).unwrap(),
        )
        .unwrap();
        assert_eq!(n, 7);
        let batches = read_all(&out);
        let all = arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap();
        assert_eq!(all.schema(), read_all(&p)[0].schema());
        let ids = all
            .column(0)
            .as_primitive::<arrow_array::types::Int64Type>();
        assert_eq!(ids.values().to_vec(), vec![1, 3, 5]);
        let urls = all.column(2).as_string::<i32>();
        assert_eq!(urls.value(1), "https://x/3");
        let meta = ParquetRecordBatchReaderBuilder::try_new(File::open(&out).unwrap()).unwrap();
        assert_eq!(input_codec(&meta), Codec::SNAPPY);
    }

    #[test]
    fn null_text_missing_column_and_bad_footer_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.parquet");
        write(&p, &[Some("a"), None], Codec::UNCOMPRESSED);
        let shard = Shard::detect(&p, "n.parquet".into(), super::super::Format::Auto).unwrap();
        let mut opts = InputOptions::with_format(super::super::Format::Auto);
        let e = shard
            .documents(&opts, Arc::default())
            .unwrap()
            .collect::<Result<Vec<_>>>()
            .unwrap_err();
        assert!(
            e.0.contains("n.parquet:2") && e.0.contains("is null"),
            "{e}"
        );
        opts.text_field = "body".into();
        let e = shard.documents(&opts, Arc::default()).err().unwrap();
        assert!(
            e.0.contains("no column `body`") && e.0.contains("id, text, url"),
            "{e}"
        );
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 6]).unwrap();
        let e = shard.documents(&opts, Arc::default()).err().unwrap();
        assert!(e.0.contains("n.parquet: corrupt Parquet file"), "{e}");
    }
}
