//! The OS users computes run as: one per endpoint and one for the embedded state store when the
//! wake service is root (created on demand with `useradd`, removed with `userdel`, named after
//! the compute root so that several wake services share a machine), or one shared user.
//!
//! Names: `w<tag>-<endpoint>` when that is a valid Linux user name of at most 32 characters
//! (`<tag>` is 6 hex digits of the SHA-256 of the compute root's canonical path), else
//! `w<tag>_<24 hex digits of the SHA-256 of the endpoint id>`; the state store's is
//! `w<tag>_state`. The readable form has '-' after the tag and the two others '_', so no
//! readable name equals a hashed one or the state store's. Every user made here carries the
//! comment `wake-service <tag> <what>`: a user of the right name without it is not ours, and is
//! refused rather than used.

use std::time::{Duration, Instant};

use nix::unistd::{Group, User};
use sha2::{Digest, Sha256};
use tokio::process::Command;

use super::process::Identity;
use crate::compute::ComputeError;

/// Linux's limit on user names (useradd refuses longer ones).
const MAX_USER_NAME: usize = 32;
/// How long `useradd`/`userdel` may keep failing on another process's lock of /etc/passwd.
const LOCK_PATIENCE: Duration = Duration::from_secs(20);
/// How long one `useradd`/`userdel` run may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// One `useradd`/`userdel` at a time in this process (several drivers may share it in tests;
/// other processes are covered by retrying on the passwd lock).
static USER_ADMIN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The first 6 hex digits of the SHA-256 of `root` (the canonical compute root).
pub(crate) fn instance_tag(root: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    hex(&Sha256::digest(root.as_os_str().as_bytes()))[..6].to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The OS user of `endpoint` under the compute root tagged `tag`.
pub(crate) fn endpoint_user(tag: &str, endpoint: &str) -> String {
    let readable = format!("w{tag}-{endpoint}");
    let plain = endpoint
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if plain && readable.len() <= MAX_USER_NAME {
        readable
    } else {
        let digest = hex(&Sha256::digest(endpoint.as_bytes()));
        format!("w{tag}_{}", &digest[..24])
    }
}

/// The OS user of the embedded state store.
pub(crate) fn state_user(tag: &str) -> String {
    format!("w{tag}_state")
}

/// The comment that marks a user as made by the wake service for `what`.
pub(crate) fn comment(tag: &str, what: &str) -> String {
    format!("wake-service {tag} {what}")
}

/// `name` as an [`Identity`] to switch to; None when no such user exists; an error when it
/// exists but was not made by us for this purpose (`comment` differs).
pub(crate) fn lookup(name: &str, comment: &str) -> Result<Option<Identity>, ComputeError> {
    let user = User::from_name(name)
        .map_err(|e| ComputeError::Process(format!("looking up OS user '{name}' failed: {e}")))?;
    let Some(user) = user else {
        return Ok(None);
    };
    if user.gecos.to_bytes() != comment.as_bytes() {
        return Err(ComputeError::Process(format!(
            "OS user '{name}' exists but was not created by this wake service for this purpose \
             (its comment is not '{comment}'); refusing to run a compute as it"
        )));
    }
    if user.uid.is_root() {
        return Err(ComputeError::Process(format!(
            "OS user '{name}' has uid 0; refusing it"
        )));
    }
    Ok(Some(Identity {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir,
        switch: true,
    }))
}

/// The user `name` (created when missing): an unprivileged system user with its own group, no
/// home and no login shell.
pub(crate) async fn ensure(name: &str, comment: &str) -> Result<Identity, ComputeError> {
    if let Some(identity) = lookup(name, comment)? {
        return Ok(identity);
    }
    let _one = USER_ADMIN.lock().await;
    if let Some(identity) = lookup(name, comment)? {
        return Ok(identity);
    }
    let mut cmd = Command::new("useradd");
    cmd.args([
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        "--comment",
        comment,
        name,
    ]);
    match admin_command(cmd, "useradd", name).await {
        Ok(()) => {}
        // Exit status 9: the name is taken (by another process, just now): judged below.
        Err(e) if lookup(name, comment)?.is_some() => {
            tracing::debug!(user = name, error = %e, "useradd failed but the user exists");
        }
        Err(e) => return Err(e),
    }
    let identity = lookup(name, comment)?.ok_or_else(|| {
        ComputeError::Process(format!(
            "useradd {name} succeeded but the user is not there"
        ))
    })?;
    tracing::info!(user = name, uid = identity.uid, "created OS user");
    Ok(identity)
}

/// Removes the user `name` (and its group, when `userdel` left it) if it exists and is ours.
/// Every process of it must be gone.
pub(crate) async fn remove(name: &str, comment: &str) -> Result<(), ComputeError> {
    let _one = USER_ADMIN.lock().await;
    if lookup(name, comment)?.is_none() {
        return Ok(());
    }
    let mut cmd = Command::new("userdel");
    cmd.arg(name);
    admin_command(cmd, "userdel", name).await?;
    let group = Group::from_name(name)
        .map_err(|e| ComputeError::Process(format!("looking up group '{name}' failed: {e}")))?;
    if group.is_some() {
        let mut cmd = Command::new("groupdel");
        cmd.arg(name);
        admin_command(cmd, "groupdel", name).await?;
    }
    tracing::info!(user = name, "removed OS user");
    Ok(())
}

/// Runs a `useradd`/`userdel`/`groupdel` command, retrying (bounded) while another process
/// holds the passwd/group locks, or while processes of a user that was just killed are still
/// being reaped (`userdel` refuses a user with processes).
async fn admin_command(mut cmd: Command, what: &str, name: &str) -> Result<(), ComputeError> {
    cmd.env("LANG", "C")
        .env("LC_ALL", "C")
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let deadline = Instant::now() + LOCK_PATIENCE;
    let mut pause = Duration::from_millis(20);
    loop {
        let output = match tokio::time::timeout(COMMAND_TIMEOUT, cmd.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return Err(ComputeError::io(format!("running {what} {name}"), e)),
            Err(_) => {
                return Err(ComputeError::Process(format!(
                    "{what} {name} did not finish within {COMMAND_TIMEOUT:?}"
                )))
            }
        };
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        let transient = stderr.contains("lock")
            || stderr.contains("try again")
            || stderr.contains("currently used by process");
        if !transient || Instant::now() >= deadline {
            return Err(ComputeError::Process(format!(
                "{what} {name} failed ({}): {stderr}",
                output.status
            )));
        }
        tracing::debug!(user = name, error = %stderr, "{what} must wait; retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let tag = "0a1b2c";
        assert_eq!(endpoint_user(tag, "db"), "w0a1b2c-db");
        assert_eq!(
            endpoint_user(tag, "ep-cool-darkness-123456"),
            "w0a1b2c-ep-cool-darkness-123456"
        );
        // 24 characters fit, 25 do not.
        let fits = "a".repeat(24);
        assert_eq!(endpoint_user(tag, &fits), format!("w0a1b2c-{fits}"));
        for long_or_odd in ["a".repeat(25), "Upper".into(), "x.y".into(), "a_b".into()] {
            let name = endpoint_user(tag, &long_or_odd);
            assert_eq!(name.len(), MAX_USER_NAME, "{name}");
            assert!(name.starts_with("w0a1b2c_"), "{name}");
            assert!(name[8..].bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
        }
        assert_ne!(
            endpoint_user(tag, &"a".repeat(25)),
            endpoint_user(tag, &"a".repeat(26))
        );
        assert_eq!(state_user(tag), "w0a1b2c_state");
        // Valid Linux user names: a letter first, then [a-z0-9_-].
        for name in [
            endpoint_user(tag, "0db"),
            endpoint_user(tag, "-x"),
            state_user(tag),
        ] {
            assert!(name.starts_with('w'), "{name}");
            assert!(name.len() <= MAX_USER_NAME, "{name}");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'-'
                    || b == b'_'),
                "{name}"
            );
        }
    }

    #[test]
    fn tags() {
        let a = instance_tag(std::path::Path::new("/tmp/a/computes"));
        let b = instance_tag(std::path::Path::new("/tmp/b/computes"));
        // What scripts/lib.sh's remove_compute_users computes too:
        // printf '%s' /tmp/a/computes | sha256sum | cut -c1-6
        assert_eq!(a, "6c2e1a");
        assert_ne!(a, b);
        assert_eq!(a, instance_tag(std::path::Path::new("/tmp/a/computes")));
    }
}
