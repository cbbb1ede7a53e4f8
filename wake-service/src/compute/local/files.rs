//! File operations inside directories another OS user controls (a compute's directory, the
//! state store's), safe for a root wake service: a directory is opened without following
//! symlinks and checked with `fstat` (a real directory, owned by whom it should be), and
//! everything in it is then reached relative to its descriptor (`openat`, `mkdirat`,
//! `renameat`, `unlinkat`, `fstatat` without following symlinks). Files are opened with
//! `O_NOFOLLOW|O_NONBLOCK` (a symlink fails, a FIFO neither blocks nor is read) and checked to
//! be regular files with one link, owned by the compute's user or the wake service; modes and
//! owners are set on descriptors only; reads are bounded. Writes go to a temporary file made
//! with `O_EXCL` in the same directory, then `renameat` over the target (which replaces a
//! symlink there instead of following it).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, openat, renameat, AtFlags, FcntlArg, OFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{fchownat, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::compute::ComputeError;

/// How deep [`Dir::chown_tree`] descends (a data directory is 4-5 levels deep).
const MAX_DEPTH: usize = 64;

/// A directory opened without following symlinks. Entries are only ever reached relative to
/// it. Files and subdirectories are trusted (read, adopted) only when owned by one of
/// `trusted`: the uid it was opened for and the wake service's own.
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
    path: PathBuf,
    uid: u32,
    gid: u32,
    trusted: [u32; 2],
}

/// What an entry is, without following it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Socket,
    /// Symlinks, FIFOs, devices.
    Other,
}

fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Refuses names that are not one plain component.
fn component(name: &str) -> io::Result<&str> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a plain file name: {name:?}"),
        ));
    }
    Ok(name)
}

fn kind_of(mode: u32) -> Kind {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => Kind::File,
        SFlag::S_IFDIR => Kind::Dir,
        SFlag::S_IFSOCK => Kind::Socket,
        _ => Kind::Other,
    }
}

fn refused(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {why}; not using it", path.display()),
    )
}

impl Dir {
    /// Opens the directory `path`, whose last component must not be a symlink (the ones
    /// above it must be trusted: the compute root, the data directory). None when missing.
    /// Trusts what its owner and the wake service own.
    pub fn open(path: &Path) -> io::Result<Option<Dir>> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match open(path, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(refused(path, "not a directory (a symlink?)"))
            }
            Err(e) => return Err(e.into()),
        };
        Self::checked(fd, path.to_path_buf(), None).map(Some)
    }

    fn checked(fd: OwnedFd, path: PathBuf, trusted: Option<[u32; 2]>) -> io::Result<Dir> {
        let st = fstat(&fd)?;
        if kind_of(st.st_mode) != Kind::Dir {
            return Err(refused(&path, "not a directory"));
        }
        let trusted = trusted.unwrap_or([st.st_uid, me()]);
        if !trusted.contains(&st.st_uid) {
            return Err(refused(
                &path,
                &format!("owned by uid {}, not by the compute's user", st.st_uid),
            ));
        }
        Ok(Dir {
            fd,
            path,
            uid: st.st_uid,
            gid: st.st_gid,
            trusted,
        })
    }

    /// This directory, trusting what `uid` (and the wake service) own in it and below.
    pub fn trusting(mut self, uid: u32) -> Dir {
        self.trusted = [uid, me()];
        self
    }

    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
            uid: self.uid,
            gid: self.gid,
            trusted: self.trusted,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of an entry, for messages and for the arguments of the compute's own
    /// processes (which resolve it as the compute's user).
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The owner (uid, gid) when it was opened.
    pub fn owner(&self) -> (u32, u32) {
        (self.uid, self.gid)
    }

    /// What `name` is (not following a symlink); None when missing.
    pub fn kind(&self, name: &str) -> Option<Kind> {
        let name = component(name).ok()?;
        fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .ok()
            .map(|st| kind_of(st.st_mode))
    }

    pub fn exists(&self, name: &str) -> bool {
        self.kind(name).is_some()
    }

    /// The subdirectory `name` (checked: a directory, not a symlink, trusted owner); None when
    /// missing.
    pub fn subdir(&self, name: &str) -> io::Result<Option<Dir>> {
        let path = self.join(component(name)?);
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => Self::checked(fd, path, Some(self.trusted)).map(Some),
            Err(Errno::ENOENT) => Ok(None),
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                Err(refused(&path, "not a directory (a symlink?)"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The subdirectory `name` with exactly `mode` and, when given, `owner`: created when
    /// missing; whatever else has the name (a symlink, a file, a FIFO) is removed first.
    pub fn ensure_subdir(
        &self,
        name: &str,
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> io::Result<Dir> {
        let name = component(name)?;
        let path = self.join(name);
        let mut trusted = self.trusted;
        if let Some((uid, _)) = owner {
            trusted = [uid, me()];
        }
        for attempt in 0..3 {
            match mkdirat(&self.fd, name, Mode::from_bits_truncate(mode)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let fd = match openat(&self.fd, name, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ELOOP | Errno::ENOTDIR | Errno::ENOENT) if attempt < 2 => {
                    tracing::warn!(path = %path.display(), "replacing what is not a directory");
                    self.unlink(name)?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let dir = Self::checked(fd, path.clone(), Some(trusted))?;
            let file = File::from(dir.fd.try_clone()?);
            let meta = file.metadata()?;
            if meta.mode() & 0o7777 != mode {
                file.set_permissions(std::fs::Permissions::from_mode(mode))?;
            }
            if let Some((uid, gid)) = owner {
                if meta.uid() != uid || meta.gid() != gid {
                    std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
                }
            }
            return Self::checked(dir.fd, path, Some(trusted));
        }
        Err(refused(&path, "could not be made a directory"))
    }

    /// Opens `name` for reading: a regular file with one link and a trusted owner. None when
    /// missing; an error when it is anything else.
    fn open_read(&self, name: &str) -> io::Result<Option<File>> {
        let name = component(name)?;
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let file = match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => return Err(refused(&self.join(name), "a symlink")),
            Err(e) => return Err(e.into()),
        };
        self.check_file(&file, name)?;
        Ok(Some(file))
    }

    fn check_file(&self, file: &File, name: &str) -> io::Result<()> {
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(refused(&self.join(name), "not a regular file"));
        }
        if meta.nlink() != 1 {
            return Err(refused(&self.join(name), "has several hard links"));
        }
        if !self.trusted.contains(&meta.uid()) {
            return Err(refused(
                &self.join(name),
                &format!("owned by uid {}", meta.uid()),
            ));
        }
        Ok(())
    }

    /// At most `max` bytes of `name` (see [`Self::open_read`]).
    pub fn read(&self, name: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(file) = self.open_read(name)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.take(max).read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    }

    /// [`Self::read`] as text; None when missing or refused.
    pub fn read_text(&self, name: &str, max: u64) -> Option<String> {
        match self.read(name, max) {
            Ok(Some(bytes)) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "not reading");
                None
            }
        }
    }

    /// Whether `name` holds exactly `contents`.
    pub fn file_is(&self, name: &str, contents: &[u8]) -> bool {
        let max = u64::try_from(contents.len()).unwrap_or(u64::MAX - 1) + 1;
        self.read(name, max)
            .is_ok_and(|bytes| bytes.is_some_and(|bytes| bytes == contents))
    }

    /// The size of the regular file `name` (0 when missing or something else).
    pub fn len(&self, name: &str) -> u64 {
        let Ok(name) = component(name) else {
            return 0;
        };
        match fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if kind_of(st.st_mode) == Kind::File => u64::try_from(st.st_size).unwrap_or(0),
            _ => 0,
        }
    }

    /// What was appended to `name` after byte `offset` (at most `max` bytes; "" when it
    /// cannot be read safely).
    pub fn read_from(&self, name: &str, offset: u64, max: u64) -> String {
        let Ok(Some(mut file)) = self.open_read(name) else {
            return String::new();
        };
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(offset)).is_err()
            || (&mut file).take(max).read_to_end(&mut bytes).is_err()
        {
            return String::new();
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The last `lines` lines of the log `name`, from its last 64 KiB ("" when it cannot be
    /// read safely).
    pub fn tail(&self, name: &str, lines: usize) -> String {
        const MAX_BYTES: u64 = 64 * 1024;
        let Ok(Some(mut file)) = self.open_read(name) else {
            return String::new();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len > MAX_BYTES && file.seek(SeekFrom::Start(len - MAX_BYTES)).is_err() {
            return String::new();
        }
        let mut bytes = Vec::new();
        if file.take(MAX_BYTES).read_to_end(&mut bytes).is_err() {
            return String::new();
        }
        let text = String::from_utf8_lossy(&bytes);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// An error with the tail of the log `name` appended.
    pub fn error_with_log(&self, message: String, name: &str) -> ComputeError {
        let tail = self.tail(name, 30);
        if tail.is_empty() {
            ComputeError::Process(message)
        } else {
            ComputeError::Process(format!(
                "{message}\n--- last lines of {} ---\n{tail}",
                self.join(name).display()
            ))
        }
    }

    /// Writes `name` atomically with exactly `mode`, owned by `owner` when given (else by the
    /// wake service): a temporary file created with `O_EXCL`, written, fsynced, then renamed
    /// over `name`.
    pub fn write(
        &self,
        name: &str,
        contents: &[u8],
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<(), ComputeError> {
        let context = || format!("writing {}", self.join(name).display());
        let name = component(name).map_err(|e| ComputeError::io(context(), e))?;
        let tmp = format!(".{name}.wake-tmp");
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut file = None;
        for _ in 0..3 {
            match openat(
                &self.fd,
                tmp.as_str(),
                flags,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => {
                    file = Some(File::from(fd));
                    break;
                }
                // Left over by a crash, or planted: it is only a name in this directory.
                Err(Errno::EEXIST) => self
                    .unlink(&tmp)
                    .map_err(|e| ComputeError::io(context(), e))?,
                Err(e) => return Err(ComputeError::io(context(), e.into())),
            }
        }
        let mut file = file.ok_or_else(|| {
            ComputeError::Process(format!("{}: temporary file keeps reappearing", context()))
        })?;
        let written = file
            .write_all(contents)
            .and_then(|()| file.set_permissions(std::fs::Permissions::from_mode(mode)))
            .and_then(|()| match owner {
                Some((uid, gid)) => std::os::unix::fs::fchown(&file, Some(uid), Some(gid)),
                None => Ok(()),
            })
            .and_then(|()| file.sync_all())
            .and_then(|()| renameat(&self.fd, tmp.as_str(), &self.fd, name).map_err(Into::into));
        if let Err(e) = written {
            let _ = self.unlink(&tmp);
            return Err(ComputeError::io(context(), e));
        }
        Ok(())
    }

    /// Removes the entry `name` (not a directory); nothing to do when it is missing.
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        let name = component(name)?;
        match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Renames the entry `from` to `to` in this directory (replacing `to`).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        renameat(&self.fd, component(from)?, &self.fd, component(to)?).map_err(Into::into)
    }

    /// Renames `from` in this directory to `to` in `other`.
    pub fn rename_into(&self, from: &str, other: &Dir, to: &str) -> io::Result<()> {
        renameat(&self.fd, component(from)?, &other.fd, component(to)?).map_err(Into::into)
    }

    /// Renames a log over 10 MiB to `<name>.1` (replacing an older one) before a process that
    /// appends to it starts, so logs do not grow without bound across restarts.
    pub fn rotate_log(&self, name: &str) -> Result<(), ComputeError> {
        const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;
        if self.len(name) <= MAX_LOG_BYTES {
            return Ok(());
        }
        self.rename(name, &format!("{name}.1"))
            .map_err(|e| ComputeError::io(format!("rotating {}", self.join(name).display()), e))
    }

    /// Makes sure `name` is a regular file with one link owned by a trusted user, or absent:
    /// anything else there (a symlink, a FIFO, a hard link) is removed. For files another
    /// program opens by path as the compute's user (PgBouncer's log).
    pub fn clear_unless_plain_file(&self, name: &str) -> io::Result<()> {
        match self.open_read(name) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "removing it");
                self.unlink(name)
            }
        }
    }

    /// Opens `name` for appending (created 0600 when missing), owned by `owner` when given:
    /// to become a process's stdout and stderr. Whatever is there that is not a regular file
    /// with one link and a trusted owner (a symlink, a FIFO, a hard link to another file) is
    /// removed and replaced by a new file.
    pub fn open_append(&self, name: &str, owner: Option<(u32, u32)>) -> Result<File, ComputeError> {
        let context = || format!("opening {}", self.join(name).display());
        let name = component(name).map_err(|e| ComputeError::io(context(), e))?;
        let existing = OFlag::O_WRONLY
            | OFlag::O_APPEND
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let new = OFlag::O_WRONLY
            | OFlag::O_APPEND
            | OFlag::O_CREAT
            | OFlag::O_EXCL
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC;
        for _ in 0..3 {
            let opened = match openat(&self.fd, name, existing, Mode::empty()) {
                Ok(fd) => {
                    let file = File::from(fd);
                    match self.check_file(&file, name) {
                        Ok(()) => Some(file),
                        Err(e) => {
                            tracing::warn!(error = %e, "replacing it with a new file");
                            None
                        }
                    }
                }
                Err(Errno::ENOENT) => {
                    match openat(&self.fd, name, new, Mode::from_bits_truncate(0o600)) {
                        Ok(fd) => Some(File::from(fd)),
                        Err(Errno::EEXIST) => continue,
                        Err(e) => return Err(ComputeError::io(context(), e.into())),
                    }
                }
                // A symlink (ELOOP), a FIFO or socket without a reader (ENXIO), or anything
                // else that is not a writable file: only a name in this directory.
                Err(e) => {
                    tracing::warn!(path = %self.join(name).display(), error = %e, "not a plain file; replacing it");
                    None
                }
            };
            let Some(file) = opened else {
                self.unlink(name)
                    .map_err(|e| ComputeError::io(context(), e))?;
                continue;
            };
            let meta = file
                .metadata()
                .map_err(|e| ComputeError::io(context(), e))?;
            if let Some((uid, gid)) = owner {
                if meta.uid() != uid || meta.gid() != gid {
                    std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                        .map_err(|e| ComputeError::io(context(), e))?;
                }
            }
            if meta.mode() & 0o7777 != 0o600 {
                file.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| ComputeError::io(context(), e))?;
            }
            // The postmaster inherits it as stdout: no O_NONBLOCK there.
            nix::fcntl::fcntl(&file, FcntlArg::F_SETFL(OFlag::O_APPEND))
                .map_err(|e| ComputeError::io(context(), e.into()))?;
            return Ok(file);
        }
        Err(ComputeError::Process(format!(
            "{}: the file keeps being replaced",
            context()
        )))
    }

    /// Hands the tree below (and including) this directory from `from` to `to` (uid, gid):
    /// every entry owned by `from` is chowned without following symlinks (a symlink itself is
    /// chowned, never its target), through `O_PATH` descriptors checked with `fstat`.
    /// Regular files with several hard links are left alone (a link could name a file outside
    /// the tree) and counted in the result.
    pub fn chown_tree(&self, from: u32, to: (u32, u32)) -> io::Result<usize> {
        let mut skipped = 0;
        chown_entry(self.fd.as_fd(), from, to, &mut skipped)?;
        walk(&self.fd, &self.path, from, to, 0, &mut skipped)?;
        Ok(skipped)
    }
}

/// Chowns the object `fd` (an `O_PATH` or ordinary descriptor) from `from` to `to`.
fn chown_entry(
    fd: std::os::fd::BorrowedFd<'_>,
    from: u32,
    to: (u32, u32),
    skipped: &mut usize,
) -> io::Result<()> {
    let st = fstat(fd)?;
    if st.st_uid != from {
        return Ok(());
    }
    if kind_of(st.st_mode) == Kind::File && st.st_nlink != 1 {
        *skipped += 1;
        return Ok(());
    }
    fchownat(
        fd,
        "",
        Some(Uid::from_raw(to.0)),
        Some(Gid::from_raw(to.1)),
        AtFlags::AT_EMPTY_PATH,
    )
    .map_err(Into::into)
}

fn walk(
    dir: &OwnedFd,
    path: &Path,
    from: u32,
    to: (u32, u32),
    depth: usize,
    skipped: &mut usize,
) -> io::Result<()> {
    if depth >= MAX_DEPTH {
        tracing::warn!(path = %path.display(), "directory tree too deep; not descending further");
        return Ok(());
    }
    let mut names = Vec::new();
    {
        let mut listing = nix::dir::Dir::from_fd(dir.try_clone()?)?;
        for entry in listing.iter() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_owned());
            }
        }
    }
    for name in names {
        let entry = match openat(
            dir,
            name.as_os_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        chown_entry(entry.as_fd(), from, to, skipped)?;
        if kind_of(fstat(&entry)?.st_mode) == Kind::Dir {
            // Through the O_PATH descriptor: the very directory just checked.
            let child = openat(
                &entry,
                ".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            walk(&child, &path.join(&name), from, to, depth + 1, skipped)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Temp(PathBuf);

    impl Temp {
        fn new(tag: &str) -> Temp {
            let path = std::env::temp_dir().join(format!(
                "wake-files-{tag}-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir(&path).expect("temp dir");
            Temp(path)
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn symlinks_fifos_and_links_are_not_followed() {
        let temp = Temp::new("links");
        let outside = temp.0.join("outside");
        std::fs::write(&outside, b"secret\n").expect("outside");
        let inner = temp.0.join("inner");
        std::fs::create_dir(&inner).expect("inner");
        let dir = Dir::open(&inner).expect("open").expect("exists");

        std::os::unix::fs::symlink(&outside, inner.join("log")).expect("symlink");
        assert!(dir.read("log", 100).is_err(), "a symlink is refused");
        assert_eq!(dir.tail("log", 10), "");
        let mut log = dir.open_append("log", None).expect("append");
        log.write_all(b"line\n").expect("write");
        assert_eq!(std::fs::read(&outside).expect("outside"), b"secret\n");
        assert_eq!(dir.tail("log", 10), "line");

        std::fs::hard_link(&outside, inner.join("linked")).expect("hard link");
        assert!(dir.read("linked", 100).is_err(), "two links are refused");
        dir.write("linked", b"new\n", 0o600, None).expect("write");
        assert_eq!(std::fs::read(&outside).expect("outside"), b"secret\n");
        assert!(dir.file_is("linked", b"new\n"));

        nix::unistd::mkfifo(&inner.join("fifo"), Mode::from_bits_truncate(0o600)).expect("fifo");
        assert!(
            dir.read("fifo", 100).is_err(),
            "a FIFO is refused, without blocking"
        );
        assert_eq!(dir.read_from("fifo", 0, 100), "");
        drop(dir.open_append("fifo", None).expect("replaced"));
        assert_eq!(dir.kind("fifo"), Some(Kind::File));

        let elsewhere = temp.0.join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("elsewhere");
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::os::unix::fs::symlink(&elsewhere, inner.join("run")).expect("symlink");
        assert!(dir.subdir("run").is_err());
        let run = dir.ensure_subdir("run", 0o700, None).expect("run");
        assert_eq!(run.owner().0, me());
        assert_eq!(dir.kind("run"), Some(Kind::Dir));
        let mode = std::fs::metadata(&elsewhere).expect("meta").mode() & 0o7777;
        assert_eq!(mode, 0o755, "the symlink's target is untouched");

        assert!(dir.read("../outside", 100).is_err());
        assert!(dir.subdir("..").is_err());
    }

    #[test]
    fn bounded_reads() {
        let temp = Temp::new("bounded");
        std::fs::write(temp.0.join("big"), vec![b'x'; 10_000]).expect("big");
        let dir = Dir::open(&temp.0).expect("open").expect("exists");
        assert_eq!(
            dir.read("big", 100).expect("read").map(|b| b.len()),
            Some(100)
        );
        assert!(!dir.file_is("big", &[b'x'; 100]));
        assert!(dir.file_is("big", &[b'x'; 10_000]));
        assert_eq!(dir.read("missing", 100).expect("read"), None);
        assert_eq!(dir.read_from("big", 9_990, 100).len(), 10);
    }
}
