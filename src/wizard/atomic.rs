//! Replacing a file in one step, private to its owner.

use super::*;

/// Replaces `path` with `text` in one step: a private temporary file beside it, then a
/// rename, so a reader (or a crash) sees the old file or the new one, never a mix.
pub(super) fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    // Through a symbolic link, the file it points to is the one to replace.
    let target = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| ".env".into());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let temp = dir.join(format!(".{name}.{}-{nanos}.tmp", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        // `mode` is filtered by the umask; the file must end up exactly 0600 either way.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, &target)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
        return result;
    }
    // The rename itself is durable only once the directory is synced; best effort.
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Restricts an existing file to its owner; returns the old mode when it changed.
pub(super) fn make_private(path: &Path) -> io::Result<Option<u32>> {
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    if mode == 0o600 {
        return Ok(None);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(Some(mode))
}
