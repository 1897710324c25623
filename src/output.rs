//! Output files (`--save`, `--output`, `--log`, `--json`, `--plot`, `--trace`), written so
//! that nothing is ever half-written and nothing that is not ours is replaced.
//!
//! A file is written to a temporary file beside its target, named `.NAME.PID.SEQ.tmp`, then
//! synced and renamed over the target, and the directory is synced after the rename. A rename
//! within one directory is atomic, so a reader (or a process killed at any moment, or two
//! processes saving to the same path at once) sees the old file whole or the new file whole.
//!
//! - The target is what the path names after following symbolic links: a link
//!   `latest.safetensors -> run1/w.safetensors` keeps pointing at a file that is now new.
//! - Only a regular file (or nothing) is replaced: `/dev/null`, a FIFO, a socket or a
//!   directory at the path is refused, because renaming over it would destroy it.
//! - A killed process leaves its temporary file behind. The next write to the same target
//!   removes those whose process (the PID in the name) no longer exists.
//! - [`check_writable`] finds out at the start of a run, by creating and removing a
//!   temporary file, whether the target can be written at all, so that a read-only
//!   directory fails now rather than after hours of training.
//! - [`refuse_overlap`] refuses an output that is one of the inputs (or another output).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Symbolic links followed before giving up (Linux's own limit is 40).
const MAX_LINKS: usize = 40;

/// Distinguishes the temporary files of one process.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// The file `path` names once symbolic links are followed; it may not exist yet.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target =
                    fs::read_link(&p).map_err(|e| Error::file(path, format!("cannot follow the link: {e}")))?;
                p = if target.is_absolute() { target } else { parent_of(&p).join(target) };
            }
            Ok(_) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(p),
            Err(e) => return Err(Error::file(path, format!("cannot be written: {e}"))),
        }
    }
    Err(Error::file(path, format!("cannot be written: more than {MAX_LINKS} symbolic links in a row")))
}

/// The directory a file path lies in (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// What kind of thing other than a regular file lies at `path`, if any.
fn not_regular(path: &Path) -> Option<&'static str> {
    let m = fs::metadata(path).ok()?;
    let t = m.file_type();
    if t.is_file() {
        return None;
    }
    if t.is_dir() {
        return Some("a directory");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return Some("a character device");
        }
        if t.is_block_device() {
            return Some("a block device");
        }
        if t.is_fifo() {
            return Some("a FIFO");
        }
        if t.is_socket() {
            return Some("a socket");
        }
    }
    Some("not a regular file")
}

/// The resolved target of `path`, after checking that it is a regular file or absent and that
/// its directory exists.
fn target_of(path: &Path) -> Result<PathBuf> {
    let target = resolve(path)?;
    if target.file_name().is_none() {
        return Err(Error::file(path, "is not a file name"));
    }
    if let Some(kind) = not_regular(&target) {
        let shown = if target == path { String::new() } else { format!(" ({} is {kind})", target.display()) };
        return Err(Error::file(path, format!("is {kind}{shown}; only a regular file is replaced")));
    }
    if !parent_of(&target).is_dir() {
        return Err(Error::file(path, "cannot be written: its directory does not exist"));
    }
    Ok(target)
}

/// Whether process `pid` still exists (so its temporary files may still be in use).
fn process_exists(pid: u32) -> bool {
    #[cfg(unix)]
    {
        unsafe extern "C" {
            /// POSIX `int kill(pid_t pid, int sig)`; signal 0 only checks that the process exists.
            fn kill(pid: i32, sig: i32) -> i32;
        }
        const ESRCH: i32 = 3;
        let Ok(pid) = i32::try_from(pid) else { return false };
        // SAFETY: signal 0 is never delivered; the call only looks the process up.
        let r = unsafe { kill(pid, 0) };
        // EPERM means the process exists but belongs to someone else.
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// The PID in a temporary file name of `name` (`.NAME.PID.SEQ.tmp`, or `.NAME.PID.tmp`).
fn temp_owner(file: &str, name: &str) -> Option<u32> {
    let middle = file.strip_prefix('.')?.strip_prefix(name)?.strip_prefix('.')?.strip_suffix(".tmp")?;
    let pid = middle.split('.').next()?;
    if middle.split('.').count() > 2
        || !middle.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    pid.parse().ok()
}

/// Removes the temporary files that processes which no longer exist left beside `target`.
/// Returns how many it removed.
pub fn remove_stale_temps(target: &Path) -> usize {
    let (Some(name), dir) = (target.file_name().and_then(|n| n.to_str()), parent_of(target)) else { return 0 };
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    let me = std::process::id();
    let mut removed = 0;
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file.to_str().and_then(|f| temp_owner(f, name)) else { continue };
        if pid != me && !process_exists(pid) && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// A new, empty temporary file beside `target`.
fn create_temp(target: &Path) -> std::io::Result<(PathBuf, File)> {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let tmp = parent_of(target).join(format!(".{name}.{}.{seq}.tmp", std::process::id()));
    let file = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    Ok((tmp, file))
}

/// Syncs a directory, so that a rename inside it survives a crash of the machine.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Fails now if `path` cannot be written later: it names a directory, a device or another
/// non-regular file, its directory is missing, or a file cannot be created there.
pub fn check_writable(path: &Path) -> Result<()> {
    let target = target_of(path)?;
    let (tmp, file) = create_temp(&target).map_err(|e| Error::file(path, format!("cannot be written: {e}")))?;
    drop(file);
    let _ = fs::remove_file(tmp);
    Ok(())
}

/// An output file being written: a temporary file until [`OutputFile::commit`] renames it
/// over the target. Dropped without a commit (the run failed), it removes itself.
pub struct OutputFile {
    /// The path as the user gave it, for messages.
    shown: PathBuf,
    target: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    /// Renamed into place: nothing is left to remove.
    committed: bool,
}

impl OutputFile {
    pub fn create(path: &Path) -> Result<OutputFile> {
        let target = target_of(path)?;
        remove_stale_temps(&target);
        let (tmp, file) = create_temp(&target).map_err(|e| Error::file(path, format!("cannot be written: {e}")))?;
        Ok(OutputFile { shown: path.to_path_buf(), target, tmp, file: Some(file), committed: false })
    }

    /// Syncs the contents, renames the file over the target and syncs the directory.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take();
        let result = (|| -> std::io::Result<()> {
            if let Some(f) = file {
                f.sync_all()?;
            }
            // Checked again: something may have appeared at the path while we wrote.
            if let Some(kind) = not_regular(&self.target) {
                return Err(std::io::Error::other(format!("{} is now {kind}", self.target.display())));
            }
            fs::rename(&self.tmp, &self.target)?;
            self.committed = true;
            sync_dir(parent_of(&self.target))
        })();
        result.map_err(|e| Error::file(&self.shown, format!("cannot write: {e}")))
    }

    fn io_error(&self, e: std::io::Error) -> Error {
        Error::file(&self.shown, format!("cannot write: {e}"))
    }

    /// Writes all of `bytes`, with an error that names the file.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_all(bytes).map_err(|e| self.io_error(e))
    }
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => Err(std::io::Error::other("the file was already committed")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if !self.committed {
            self.file = None;
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `path` as a whole: the old file or the new one, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut out = OutputFile::create(path)?;
    out.write_bytes(bytes)?;
    out.commit()
}

/// A name for comparing paths: the resolved path, with its directory made canonical (the
/// file itself may not exist yet).
fn identity(path: &Path) -> Option<PathBuf> {
    let target = resolve(path).ok()?;
    let dir = fs::canonicalize(parent_of(&target)).ok()?;
    Some(dir.join(target.file_name()?))
}

/// Refuses an output that is one of the inputs, or the same file as another output: `infer
/// --output` equal to `--weights` would replace the checkpoint with logits. Each path comes
/// with the flag that named it, for the message.
pub fn refuse_overlap(outputs: &[(&str, &Path)], inputs: &[(&str, &Path)]) -> Result<()> {
    let ids = |list: &[(&str, &Path)]| -> Vec<Option<PathBuf>> { list.iter().map(|(_, p)| identity(p)).collect() };
    let (out_ids, in_ids) = (ids(outputs), ids(inputs));
    for (i, ((flag, path), id)) in outputs.iter().zip(&out_ids).enumerate() {
        let Some(id) = id else { continue };
        if let Some(((other, _), _)) = inputs.iter().zip(&in_ids).find(|(_, o)| o.as_ref() == Some(id)) {
            return Err(Error::file(
                path,
                format!("{flag} would overwrite the {other} file it reads; choose another path"),
            ));
        }
        if let Some(((other, _), _)) = outputs.iter().zip(&out_ids).take(i).find(|(_, o)| o.as_ref() == Some(id)) {
            return Err(Error::file(path, format!("{flag} and {other} name the same file; choose another path")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("scratchnet-output-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn temp_names_are_recognised_only_for_their_target() {
        assert_eq!(temp_owner(".w.safetensors.123.4.tmp", "w.safetensors"), Some(123));
        assert_eq!(temp_owner(".w.safetensors.123.tmp", "w.safetensors"), Some(123));
        assert_eq!(temp_owner(".w.safetensors.x.tmp", "w.safetensors"), None);
        assert_eq!(temp_owner(".w.safetensors.1.2.3.tmp", "w.safetensors"), None);
        assert_eq!(temp_owner(".v.safetensors.123.4.tmp", "w.safetensors"), None);
        assert_eq!(temp_owner("w.safetensors", "w.safetensors"), None);
    }

    #[test]
    fn writes_replace_whole_files_and_follow_links() {
        let d = dir("write");
        let w = d.join("w.bin");
        write_atomically(&w, b"first").unwrap();
        write_atomically(&w, b"second").unwrap();
        assert_eq!(fs::read(&w).unwrap(), b"second");
        #[cfg(unix)]
        {
            fs::create_dir_all(d.join("run1")).unwrap();
            std::os::unix::fs::symlink("run1/w.bin", d.join("latest.bin")).unwrap();
            write_atomically(&d.join("latest.bin"), b"through the link").unwrap();
            assert!(fs::symlink_metadata(d.join("latest.bin")).unwrap().file_type().is_symlink());
            assert_eq!(fs::read(d.join("run1/w.bin")).unwrap(), b"through the link");
        }
        let names: Vec<String> =
            fs::read_dir(&d).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn non_regular_targets_are_refused() {
        let d = dir("special");
        let e = write_atomically(&d, b"x").unwrap_err().to_string();
        assert!(e.contains("is a directory; only a regular file is replaced"), "{e}");
        #[cfg(unix)]
        {
            let e = check_writable(Path::new("/dev/null")).unwrap_err().to_string();
            assert_eq!(e, "/dev/null: is a character device; only a regular file is replaced");
            std::os::unix::fs::symlink("/dev/null", d.join("null-link")).unwrap();
            let e = write_atomically(&d.join("null-link"), b"x").unwrap_err().to_string();
            assert!(e.contains("(/dev/null is a character device)"), "{e}");
        }
        let e = check_writable(&d.join("missing/w.bin")).unwrap_err().to_string();
        assert!(e.contains("its directory does not exist"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn stale_temps_of_dead_processes_are_removed_live_ones_kept() {
        let d = dir("stale");
        let w = d.join("w.bin");
        // PIDs above the kernel's maximum (4194304 on Linux) cannot belong to a live process.
        let dead = d.join(".w.bin.2000000000.0.tmp");
        let old_style = d.join(".w.bin.2000000001.tmp");
        let mine = d.join(format!(".w.bin.{}.999.tmp", std::process::id()));
        let other = d.join(".v.bin.2000000000.0.tmp");
        for f in [&dead, &old_style, &mine, &other] {
            fs::write(f, b"leftover").unwrap();
        }
        write_atomically(&w, b"new").unwrap();
        assert!(!dead.exists() && !old_style.exists());
        assert!(mine.exists(), "a temporary file of a live process (this one) stays");
        assert!(other.exists(), "another target's temporary files are not touched");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_unfinished_file_leaves_nothing_and_the_old_file_whole() {
        let d = dir("drop");
        let w = d.join("w.bin");
        fs::write(&w, b"old").unwrap();
        {
            let mut out = OutputFile::create(&w).unwrap();
            out.write_bytes(b"half of the new").unwrap();
        }
        assert_eq!(fs::read(&w).unwrap(), b"old");
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn outputs_that_are_inputs_are_refused() {
        let d = dir("overlap");
        let (w, x, y) = (d.join("w.safetensors"), d.join("x.npy"), d.join("y.npy"));
        fs::write(&w, b"weights").unwrap();
        fs::write(&x, b"images").unwrap();
        let e = refuse_overlap(&[("--output", &w)], &[("--weights", &w), ("--input", &x)]).unwrap_err().to_string();
        assert!(e.ends_with("--output would overwrite the --weights file it reads; choose another path"), "{e}");
        let dotted = d.join(".").join("x.npy");
        let e = refuse_overlap(&[("--output", &dotted)], &[("--weights", &w), ("--input", &x)]).unwrap_err();
        assert!(e.to_string().contains("the --input file"), "{e}");
        let e = refuse_overlap(&[("--json", &y), ("--plot", &y)], &[]).unwrap_err().to_string();
        assert!(e.contains("--plot and --json name the same file"), "{e}");
        refuse_overlap(&[("--output", &y)], &[("--weights", &w), ("--input", &x)]).unwrap();
        fs::remove_dir_all(&d).unwrap();
    }
}
