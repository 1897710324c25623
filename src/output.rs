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

/// The PID in a temporary file name of `name` (`.NAME.PID.SEQ.tmp`).
fn temp_owner(file: &str, name: &str) -> Option<u32> {
    let middle = file.strip_prefix('.')?.strip_prefix(name)?.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (pid, seq) = middle.split_once('.')?;
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(seq) {
        return None;
    }
    pid.parse().ok()
}

/// Whether nobody is writing the temporary file at `path` any more: its process is gone, and
/// no one holds the lock its writer keeps while writing (a writer in another PID namespace, a
/// container, has a PID that looks dead from here, but its lock is seen).
fn abandoned(path: &Path, pid: u32) -> bool {
    if pid == std::process::id() || process_exists(pid) {
        return false;
    }
    match File::open(path) {
        Ok(f) => f.try_lock().is_ok(),
        Err(_) => false,
    }
}

/// Removes the temporary files that writers which no longer exist left beside `target`.
/// Returns how many it removed.
pub fn remove_stale_temps(target: &Path) -> usize {
    let (Some(name), dir) = (target.file_name().and_then(|n| n.to_str()), parent_of(target)) else { return 0 };
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file.to_str().and_then(|f| temp_owner(f, name)) else { continue };
        if abandoned(&entry.path(), pid) && fs::remove_file(entry.path()).is_ok() {
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
    // Held until the file is renamed or the process ends: a sign to other processes'
    // clean-up that the file is still being written.
    if let Err(std::fs::TryLockError::Error(e)) = file.try_lock() {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
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

/// Whether the file at `target` belongs to another user in a directory with the sticky bit
/// (`/tmp`), where only its owner may rename over it.
fn owned_by_another_in_sticky_dir(target: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        unsafe extern "C" {
            fn geteuid() -> u32;
        }
        // SAFETY: geteuid has no arguments and cannot fail.
        let me = unsafe { geteuid() };
        let (Ok(file), Ok(dir)) = (fs::metadata(target), fs::metadata(parent_of(target))) else { return false };
        me != 0 && dir.mode() & 0o1000 != 0 && file.uid() != me && dir.uid() != me
    }
    #[cfg(not(unix))]
    {
        let _ = target;
        false
    }
}

/// Fails now if `path` cannot be written later: it names a directory, a device or another
/// non-regular file, its directory is missing, a file cannot be created there, or the file
/// there is another user's in a sticky directory.
pub fn check_writable(path: &Path) -> Result<()> {
    let target = target_of(path)?;
    if owned_by_another_in_sticky_dir(&target) {
        return Err(Error::file(
            path,
            "cannot be written: it belongs to another user, in a directory where only its owner may replace it",
        ));
    }
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

    /// Syncs the contents, renames the file over the target and syncs the directory. An
    /// existing target's permissions carry over to the new file. If the rename fails, the
    /// complete new file is kept where it was written, and the error says where.
    pub fn commit(mut self) -> Result<()> {
        let cannot = |e: std::io::Error| Error::file(&self.shown, format!("cannot write: {e}"));
        if let Some(f) = self.file.take() {
            if let Ok(old) = fs::metadata(&self.target) {
                f.set_permissions(old.permissions()).map_err(cannot)?;
            }
            f.sync_all().map_err(cannot)?;
            // The lock goes with the file handle; the file stays until renamed.
        }
        // Checked again: something may have appeared at the path while we wrote.
        let renamed = match not_regular(&self.target) {
            Some(kind) => Err(std::io::Error::other(format!("{} is now {kind}", self.target.display()))),
            None => fs::rename(&self.tmp, &self.target),
        };
        if let Err(e) = renamed {
            // The contents are whole: losing them (hours of training) would be worse than a
            // file left behind.
            self.committed = true;
            return Err(Error::file(
                &self.shown,
                format!(
                    "cannot write: {e}; the new file is kept as {}, move it before writing here again",
                    self.tmp.display()
                ),
            ));
        }
        self.committed = true;
        sync_dir(parent_of(&self.target)).map_err(cannot)
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
        assert_eq!(temp_owner(".w.safetensors.123.tmp", "w.safetensors"), None);
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
        let old_style = d.join(".w.bin.2000000001.0.tmp");
        let mine = d.join(format!(".w.bin.{}.999.tmp", std::process::id()));
        let other = d.join(".v.bin.2000000000.0.tmp");
        // A writer whose PID this process cannot see (another PID namespace) but which still
        // holds its lock.
        let locked = d.join(".w.bin.2000000002.0.tmp");
        for f in [&dead, &old_style, &mine, &other, &locked] {
            fs::write(f, b"leftover").unwrap();
        }
        let held = File::open(&locked).unwrap();
        held.lock().unwrap();
        write_atomically(&w, b"new").unwrap();
        assert!(locked.exists(), "a locked temporary file is still being written");
        drop(held);
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
    fn a_file_that_cannot_be_renamed_into_place_is_kept() {
        let d = dir("kept");
        let w = d.join("w.bin");
        let mut out = OutputFile::create(&w).unwrap();
        out.write_bytes(b"hours of training").unwrap();
        fs::create_dir(&w).unwrap();
        let e = out.commit().unwrap_err().to_string();
        assert!(e.contains("is now a directory; the new file is kept as"), "{e}");
        let kept: Vec<PathBuf> =
            fs::read_dir(&d).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
        assert_eq!(kept.len(), 1);
        assert!(e.contains(&kept[0].display().to_string()), "{e}");
        assert_eq!(fs::read(&kept[0]).unwrap(), b"hours of training");
        fs::remove_dir_all(&d).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_replaced_file_keeps_its_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("mode");
        let w = d.join("w.bin");
        fs::write(&w, b"old").unwrap();
        fs::set_permissions(&w, fs::Permissions::from_mode(0o600)).unwrap();
        write_atomically(&w, b"new").unwrap();
        assert_eq!(fs::metadata(&w).unwrap().permissions().mode() & 0o777, 0o600);
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
