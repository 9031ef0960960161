//! Running OS work from async backend code: on the blocking pool, errors named by their step.

use std::path::Path;
use std::sync::Arc;

use super::BackendError;
use crate::os::{BlockOs, DirSpec, OsError};

/// Runs `f` against the OS layer on the blocking pool. A panic in `f` is resumed here.
///
/// # Errors
/// `f`'s error, or [`BackendError::Cancelled`] if the runtime cancelled the task (shutdown).
pub async fn blocking<T, F>(os: &Arc<dyn BlockOs>, what: &'static str, f: F) -> Result<T, BackendError>
where
    T: Send + 'static,
    F: FnOnce(&dyn BlockOs) -> Result<T, BackendError> + Send + 'static,
{
    let os = Arc::clone(os);
    match tokio::task::spawn_blocking(move || f(os.as_ref())).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(BackendError::Cancelled { what }),
    }
}

/// Builds a [`BackendError::Step`] for `step` on `device`.
pub fn step_error(step: &'static str, device: &Path) -> impl FnOnce(OsError) -> BackendError {
    let device = device.to_path_buf();
    move |source| BackendError::Step { step, device, source }
}

/// The mode and owner a volume's options ask for, with `default_mode` when they set none.
pub fn dir_spec(opts: &super::Options, default_mode: u32) -> DirSpec {
    let id = |key: &str| super::options::get_u64(opts, key).and_then(|v| u32::try_from(v).ok());
    DirSpec { mode: super::options::get_mode(opts, "mode").unwrap_or(default_mode), uid: id("uid"), gid: id("gid") }
}

/// The space left on the file system of a backend's root `root`, in bytes (its
/// [`super::Controller::capacity`]).
///
/// # Errors
/// It could not be measured.
pub async fn free_space(os: &Arc<dyn BlockOs>, root: &Path) -> Result<u64, BackendError> {
    let root = root.to_path_buf();
    blocking(os, "capacity", move |os| {
        // Before its first volume the root may not exist yet: its nearest ancestor's file
        // system is where it will be made.
        let mut at = root.as_path();
        while os.entry(at).map_err(step_error("examine", at))? == crate::os::Entry::Missing {
            match at.parent() {
                Some(parent) => at = parent,
                None => break,
            }
        }
        os.free_space(at).map_err(step_error("read free space of", at))
    })
    .await
}
