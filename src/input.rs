//! Reading input files (`.npy` arrays, checkpoints, CIFAR-10 batches, bench results): a
//! regular file only, read to the length it had when opened.
//!
//! `std::fs::read` of a FIFO waits for a writer forever, and of `/dev/zero` reads until
//! memory runs out; a path given as input is refused unless it names a regular file (after
//! symbolic links are followed), and never more bytes are read than its size said.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// The whole content of the regular file at `path`.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    let cannot = |e: std::io::Error| Error::file(path, format!("cannot read: {e}"));
    let regular = |meta: &std::fs::Metadata| -> Result<()> {
        if meta.is_file() {
            return Ok(());
        }
        let kind = if meta.is_dir() { "a directory" } else { "not a regular file (a device, FIFO or socket)" };
        Err(Error::file(path, format!("cannot read: it is {kind}")))
    };
    // Before opening: opening a FIFO for reading waits for a writer.
    regular(&std::fs::metadata(path).map_err(cannot)?)?;
    let file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    regular(&meta)?;
    let len = meta.len();
    let mut bytes = Vec::new();
    crate::device::host_memory::reserve(&mut bytes, usize::try_from(len).unwrap_or(usize::MAX))
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    file.take(len).read_to_end(&mut bytes).map_err(cannot)?;
    Ok(bytes)
}

/// The content of the regular file at `path` as UTF-8 text.
pub fn read_to_string(path: &Path) -> Result<String> {
    String::from_utf8(read(path)?).map_err(|_| Error::file(path, "cannot read: it is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read() {
        let dir = std::env::temp_dir().join(format!("scratchnet-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.bin");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(read(&f).unwrap(), b"abc");
        assert_eq!(read_to_string(&f).unwrap(), "abc");
        let e = read(&dir).unwrap_err().to_string();
        assert!(e.ends_with("cannot read: it is a directory"), "{e}");
        #[cfg(target_os = "linux")]
        {
            let e = read(Path::new("/dev/zero")).unwrap_err().to_string();
            assert_eq!(e, "/dev/zero: cannot read: it is not a regular file (a device, FIFO or socket)");
        }
        assert!(read(&dir.join("missing")).unwrap_err().to_string().contains("cannot read: No such file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
