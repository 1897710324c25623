//! The bench's result files: JSON lines, one object per line, written as each row is measured.
//!
//! A bench on a lent GPU may be stopped by its deadline at any moment; a file written only at
//! the end would then hold nothing. So `scratchnet bench --json` and
//! `scripts/torch_baseline.py` both write a header line (the tool, the device, the ceilings)
//! and then one line per problem, flushed as soon as it is timed: a run cut short loses the
//! row in progress, not the rows before it. A reader takes every complete line and skips a
//! last line cut off mid-write.
//!
//! ```text
//! {"tool":"scratchnet bench","device":"cuda:0","device_name":"NVIDIA H200","batch":64,"ceilings":{...}}
//! {"suite":"resnet50","key":"conv2d|...","label":"conv fwd ...","median_ms":0.41,...}
//! ```
//!
//! The reader also takes the older form, one JSON document with a `rows` list.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// A results file being written, one line per [`JsonLines::write`].
pub struct JsonLines {
    file: BufWriter<File>,
    path: PathBuf,
}

impl JsonLines {
    /// Creates (or empties) the file at `path`.
    pub fn create(path: &Path) -> Result<JsonLines> {
        let file = File::create(path).map_err(|e| Error::file(path, format!("cannot be written: {e}")))?;
        Ok(JsonLines { file: BufWriter::new(file), path: path.to_path_buf() })
    }

    /// Appends one object as a line and flushes it to the file.
    pub fn write(&mut self, value: &Value) -> Result<()> {
        let line = serde_json::to_string(value).map_err(|e| Error::file(&self.path, format!("cannot encode: {e}")))?;
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::file(&self.path, format!("cannot be written: {e}")))
    }
}

/// A results file as read back: the header and the rows.
#[derive(Debug)]
pub struct ResultsFile {
    /// The first line (or the document without its rows): tool, device, ceilings.
    pub header: Value,
    pub rows: Vec<Value>,
    /// Lines that were not JSON: at most the last one, cut off by a stopped run.
    pub cut_off: usize,
}

/// Reads a results file in either form; what is neither is an error naming the file.
pub fn read(path: &Path) -> Result<ResultsFile> {
    let text = crate::input::read_to_string(path)?;
    parse(&text).map_err(|why| Error::file(path, format!("is not a bench results file: {why}")))
}

fn parse(text: &str) -> std::result::Result<ResultsFile, String> {
    // The older form: one document with a "rows" list.
    if let Ok(mut doc) = serde_json::from_str::<Value>(text)
        && let Some(rows) = doc.get_mut("rows").and_then(Value::as_array_mut).map(std::mem::take)
    {
        if let Some(o) = doc.as_object_mut() {
            o.remove("rows");
        }
        return Ok(ResultsFile { header: doc, rows, cut_off: 0 });
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut header = None;
    let mut rows = Vec::new();
    let mut cut_off = 0;
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<Value>(line) {
            Ok(v) if !v.is_object() => return Err(format!("line {} is not a JSON object", i + 1)),
            Ok(v) if i == 0 && v["tool"].is_string() => header = Some(v),
            Ok(v) => rows.push(v),
            // Only the last line may be cut off.
            Err(_) if i + 1 == lines.len() && i > 0 => cut_off += 1,
            Err(e) => return Err(format!("line {}: {e}", i + 1)),
        }
    }
    let header = header.ok_or("its first line is not a header (tool, device)")?;
    Ok(ResultsFile { header, rows, cut_off })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_written_one_by_one_read_back_even_when_the_last_is_cut_off() {
        let dir = std::env::temp_dir().join(format!("scratchnet-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bench.jsonl");
        let mut out = JsonLines::create(&path).unwrap();
        out.write(&json!({"tool": "scratchnet bench", "device_name": "A"})).unwrap();
        out.write(&json!({"key": "k1", "median_ms": 1.5})).unwrap();
        // Each line is on disk as soon as it is written: read while the writer is still open.
        let r = read(&path).unwrap();
        assert_eq!((r.header["device_name"].as_str(), r.rows.len(), r.cut_off), (Some("A"), 1, 0));
        out.write(&json!({"key": "k2", "median_ms": 2.5})).unwrap();
        drop(out);
        // A run killed in the middle of a line.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"key\": \"k3\", \"med");
        let r = parse(&text).unwrap();
        assert_eq!(r.rows.len(), 2);
        assert_eq!(r.rows[1]["median_ms"].as_f64(), Some(2.5));
        assert_eq!(r.cut_off, 1);
        // A broken line in the middle is not a cut-off run: the file is refused.
        let bad = "{\"tool\": \"x\"}\n{oops\n{\"key\": \"k\"}\n";
        assert!(parse(bad).unwrap_err().contains("line 2"), "{:?}", parse(bad));
        // The older single-document form.
        let r = parse(&json!({"device_name": "B", "rows": [{"key": "k"}]}).to_string()).unwrap();
        assert_eq!((r.header["device_name"].as_str(), r.rows.len()), (Some("B"), 1));
        assert!(parse("{\"no\": 1}").unwrap_err().contains("header"));
        assert!(parse("[1, 2]\n").is_err());
        assert!(parse("").unwrap_err().contains("header"));
        // A run stopped before its first row: the header alone.
        assert_eq!(parse("{\"tool\": \"torch_baseline\"}\n").unwrap().rows.len(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
