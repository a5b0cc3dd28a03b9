//! Reading and writing record files: JSONL (optionally gzip-compressed) and, with the `parquet`
//! feature, parquet.
//!
//! Every record that cannot be read gives an [`Error::Data`] with the file, the 1-based line (the
//! row, for parquet) and the field. The reader either stops at the first bad record or, with
//! [`ReadOptions::skip_bad`], keeps going and reports how many it rejected and the first few
//! errors: records read = records kept + records rejected, always.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use rlhf_base::{Error, Result};
use serde_json::Value;

use crate::parse::{FieldError, Record};
use crate::records::FieldNames;

/// How to read a file.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Field names (defaults: the hub's).
    pub fields: FieldNames,
    /// Skip bad records (counting and reporting them) instead of stopping at the first.
    pub skip_bad: bool,
    /// How many errors a report keeps.
    pub max_errors: usize,
    /// Longest line accepted, in bytes; a longer one is a bad record, read no further than this.
    pub max_line_bytes: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            fields: FieldNames::default(),
            skip_bad: false,
            max_errors: 10,
            max_line_bytes: 8 << 20,
        }
    }
}

/// What a read did.
#[derive(Debug, Default)]
pub struct ReadReport {
    /// Records (non-blank lines or rows) seen.
    pub read: usize,
    /// Records returned.
    pub kept: usize,
    /// Records rejected (only with `skip_bad`; otherwise the read fails at the first).
    pub rejected: usize,
    /// The first `max_errors` errors.
    pub errors: Vec<Error>,
}

/// Records and the report of the read that produced them.
#[derive(Debug)]
pub struct Loaded<R> {
    /// The records kept, in file order.
    pub records: Vec<R>,
    /// Counts and first errors.
    pub report: ReadReport,
}

fn data_error(file: &Path, line: usize, field: &str, message: impl Into<String>) -> Error {
    Error::Data {
        file: file.to_path_buf(),
        line,
        field: field.to_string(),
        message: message.into(),
    }
}

/// Reads every record of `path` (JSONL, `.jsonl.gz` or, with the `parquet` feature, `.parquet`).
pub fn read_records<R: Record>(path: &Path, opts: &ReadOptions) -> Result<Loaded<R>> {
    let mut loaded = Loaded {
        records: Vec::new(),
        report: ReadReport::default(),
    };
    let mut sink = |line: usize, item: std::result::Result<Value, Error>| -> Result<()> {
        loaded.report.read += 1;
        let parsed = item.and_then(|v| match v {
            Value::Object(obj) => R::from_object(&obj, &opts.fields)
                .and_then(|r| match loaded.records.first() {
                    Some(first) => r.consistent_with(first, &opts.fields).map(|()| r),
                    None => Ok(r),
                })
                .map_err(|FieldError { field, message }| data_error(path, line, &field, message)),
            other => Err(data_error(
                path,
                line,
                "-",
                format!("expected a JSON object, found {}", kind_of(&other)),
            )),
        });
        match parsed {
            Ok(r) => {
                loaded.records.push(r);
                loaded.report.kept += 1;
                Ok(())
            }
            Err(e) if opts.skip_bad => {
                loaded.report.rejected += 1;
                if loaded.report.errors.len() < opts.max_errors {
                    loaded.report.errors.push(e);
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    };
    if is_parquet(path) {
        read_parquet_objects(path, &mut sink)?;
    } else {
        read_jsonl_objects(path, opts.max_line_bytes, &mut sink)?;
    }
    Ok(loaded)
}

/// The record kind of a file, read off its first record's fields (see [`crate::parse::kind_of`]).
pub fn detect_kind(path: &Path, opts: &ReadOptions) -> Result<crate::records::Kind> {
    let mut first: Option<(usize, Value)> = None;
    let mut sink = |line: usize, item: std::result::Result<Value, Error>| -> Result<()> {
        if first.is_none() {
            first = Some((line, item?));
            // stop reading: the first record decides
            return Err(Error::Record(String::new()));
        }
        Ok(())
    };
    let read = if is_parquet(path) {
        read_parquet_objects(path, &mut sink)
    } else {
        read_jsonl_objects(path, opts.max_line_bytes, &mut sink)
    };
    match (read, first) {
        (_, Some((line, Value::Object(obj)))) => crate::parse::kind_of(&obj, &opts.fields)
            .ok_or_else(|| {
                let keys: Vec<&String> = obj.keys().collect();
                data_error(
                    path,
                    line,
                    "-",
                    format!(
                        "cannot tell the kind of record from its fields {keys:?}: name it with \
                         --kind"
                    ),
                )
            }),
        (_, Some((line, other))) => Err(data_error(
            path,
            line,
            "-",
            format!("expected a JSON object, found {}", kind_of(&other)),
        )),
        (Err(e), None) => Err(e),
        (Ok(()), None) => Err(data_error(path, 0, "-", "the file holds no records")),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "an array",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
        Value::Object(_) => "an object",
    }
}

fn is_parquet(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// Opens a file, transparently gunzipping it when it starts with the gzip magic bytes.
fn open_maybe_gz(path: &Path) -> Result<Box<dyn BufRead>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = BufReader::new(file);
    let head = buf.fill_buf().map_err(|e| Error::io(path, e))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(BufReader::new(
            flate2::bufread::MultiGzDecoder::new(buf),
        )))
    } else {
        Ok(Box::new(buf))
    }
}

/// One line of at most `max` bytes (without its `\n`); `Ok(None)` at the end of the input.
/// A longer line is consumed to its end and reported as `Err(length)`.
fn next_line(
    r: &mut dyn BufRead,
    max: usize,
    out: &mut Vec<u8>,
) -> std::io::Result<Option<std::result::Result<(), usize>>> {
    out.clear();
    let mut len = 0usize;
    let mut any = false;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(if any {
                Some(if len > max { Err(len) } else { Ok(()) })
            } else {
                None
            });
        }
        any = true;
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if len + chunk.len() <= max {
            out.extend_from_slice(chunk);
        }
        len += chunk.len();
        let consumed = done.unwrap_or(buf.len());
        r.consume(consumed);
        if done.is_some() {
            return Ok(Some(if len > max { Err(len) } else { Ok(()) }));
        }
    }
}

fn read_jsonl_objects(
    path: &Path,
    max_line_bytes: usize,
    sink: &mut dyn FnMut(usize, std::result::Result<Value, Error>) -> Result<()>,
) -> Result<()> {
    let mut reader = open_maybe_gz(path)?;
    let mut line = Vec::new();
    let mut number = 0;
    while let Some(status) =
        next_line(&mut *reader, max_line_bytes, &mut line).map_err(|e| Error::io(path, e))?
    {
        number += 1;
        let item = match status {
            Err(len) => Err(data_error(
                path,
                number,
                "-",
                format!("line is {len} bytes, over the {max_line_bytes}-byte limit"),
            )),
            Ok(()) => {
                let text = match std::str::from_utf8(&line) {
                    Ok(t) => t.trim_end_matches('\r'),
                    Err(e) => {
                        let item = Err(data_error(
                            path,
                            number,
                            "-",
                            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                        ));
                        sink(number, item)?;
                        continue;
                    }
                };
                if text.trim().is_empty() {
                    continue; // blank lines are not records
                }
                serde_json::from_str::<Value>(text).map_err(|e| {
                    data_error(
                        path,
                        number,
                        "-",
                        format!("invalid JSON at column {}: {e}", e.column()),
                    )
                })
            }
        };
        sink(number, item)?;
    }
    Ok(())
}

#[cfg(feature = "parquet")]
fn read_parquet_objects(
    path: &Path,
    sink: &mut dyn FnMut(usize, std::result::Result<Value, Error>) -> Result<()>,
) -> Result<()> {
    // The parquet crate panics on some damaged files (found by `cargo fuzz run parquet`: "column
    // start and length should not be negative" in its footer decoding). A damaged file is bad
    // input, not a bug of the caller's: its panic becomes a data error naming the file.
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_parquet_rows(path, sink)
    }));
    read.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        Err(data_error(
            path,
            0,
            "-",
            format!("not a readable parquet file (the parquet reader failed: {why})"),
        ))
    })
}

#[cfg(feature = "parquet")]
fn read_parquet_rows(
    path: &Path,
    sink: &mut dyn FnMut(usize, std::result::Result<Value, Error>) -> Result<()>,
) -> Result<()> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| data_error(path, 0, "-", format!("not a readable parquet file: {e}")))?;
    let declared = reader.metadata().file_metadata().num_rows().max(0) as usize;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| data_error(path, 0, "-", format!("cannot read rows: {e}")))?;
    // a bad row ends the file (one rejected record; with `skip_bad` the rows before it are
    // kept): the iterator does not move past a row it cannot decode (it would return the same
    // error forever), and a damaged file can make it run past the rows its footer declares
    let last = |i: usize, message: String| Err(data_error(path, i + 1, "-", message));
    for (i, row) in rows.enumerate() {
        match row {
            _ if i >= declared => {
                let why =
                    format!("more rows than the {declared} the footer declares (damaged file)");
                return sink(i + 1, last(i, why));
            }
            Ok(r) => sink(i + 1, Ok(r.to_json_value()))?,
            Err(e) => {
                let why = format!("row {}: {e} (rows after it cannot be read)", i + 1);
                return sink(i + 1, last(i, why));
            }
        }
    }
    Ok(())
}

#[cfg(not(feature = "parquet"))]
fn read_parquet_objects(
    path: &Path,
    _sink: &mut dyn FnMut(usize, std::result::Result<Value, Error>) -> Result<()>,
) -> Result<()> {
    Err(data_error(
        path,
        0,
        "-",
        "parquet support was not compiled in: enable rlhf-data's `parquet` feature",
    ))
}

/// Writes records as JSONL in the standard layout with `fields`, atomically.
pub fn write_records<R: Record>(path: &Path, records: &[R], fields: &FieldNames) -> Result<()> {
    let mut out = Vec::new();
    for r in records {
        serde_json::to_writer(&mut out, &Value::Object(r.to_object(fields)))
            .map_err(|e| Error::Record(e.to_string()))?;
        out.write_all(b"\n").map_err(|e| Error::io(path, e))?;
    }
    rlhf_base::fs::write_atomic(path, &out)
}
