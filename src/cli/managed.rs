//! `rexray --plugin NAME …`: reaching the daemon inside a managed Docker plugin.
//!
//! Docker's Engine API (`GET /plugins`, `GET /info`) says where the plugin's root file system is
//! (`<DockerRootDir>/plugins/<id>/rootfs`) and with which settings it runs. The daemon's admin
//! socket is `<rootfs>/var/run/rexray/rexray-admin.sock`: a path longer than a Unix socket
//! address may be (108 bytes) on most hosts. So the run directory is opened once and the socket
//! reached as `/proc/self/fd/<fd>/rexray-admin.sock`, which the kernel resolves through the open
//! directory whatever its length. The plugin's config file (baked into its rootfs, if any) and
//! its environment give the same services the daemon serves; its plugin socket is where Docker
//! puts it on the host, `/run/docker/plugins/<id>/`.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

use super::client::{self, Addr};
use crate::config::Config;

/// How long Docker's Engine API may take to answer.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(10);

/// A managed plugin found through Docker.
#[derive(Debug)]
pub struct Managed {
    /// Its name as Docker shows it (`rexray:latest`).
    pub name: String,
    /// Its root file system on the host.
    pub rootfs: PathBuf,
    /// Where Docker makes its sockets on the host (`/run/docker/plugins/<id>`).
    pub sockets: PathBuf,
    /// Its environment (`docker plugin set` values over the defaults).
    pub env: BTreeMap<String, String>,
}

/// Docker's API socket: `DOCKER_HOST` when it names a Unix socket, else `/var/run/docker.sock`.
fn docker_socket(env: &BTreeMap<String, String>) -> PathBuf {
    env.get("DOCKER_HOST")
        .and_then(|h| h.strip_prefix("unix://"))
        .map_or_else(|| PathBuf::from("/var/run/docker.sock"), PathBuf::from)
}

/// `rexray` → `rexray:latest`, as Docker names plugins.
fn full_name(name: &str) -> String {
    if name.rsplit('/').next().is_some_and(|last| last.contains(':')) {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

/// Finds the enabled managed plugin `name` through Docker's API.
///
/// # Errors
/// Docker does not answer, no plugin has that name, or it is disabled.
pub async fn find(name: &str, env: &BTreeMap<String, String>) -> anyhow::Result<Managed> {
    let docker = Addr::Unix(docker_socket(env));
    let plugins = client::get_json(&docker, "/plugins", DOCKER_TIMEOUT)
        .await
        .with_context(|| format!("ask Docker ({docker}) for its plugins"))?;
    let wanted = full_name(name);
    let list = plugins.as_array().map(Vec::as_slice).unwrap_or_default();
    let Some(plugin) = list.iter().find(|p| p.get("Name").and_then(Value::as_str) == Some(wanted.as_str())) else {
        let names: Vec<&str> = list.iter().filter_map(|p| p.get("Name").and_then(Value::as_str)).collect();
        bail!(
            "Docker has no plugin {wanted} (its plugins: {})",
            if names.is_empty() { "none".to_owned() } else { names.join(", ") }
        );
    };
    if plugin.get("Enabled").and_then(Value::as_bool) != Some(true) {
        bail!("plugin {wanted} is disabled: its daemon runs only while it is enabled (docker plugin enable {wanted})");
    }
    let id = plugin.get("Id").and_then(Value::as_str).context("Docker's plugin list gives no Id")?.to_owned();
    let info = client::get_json(&docker, "/info", DOCKER_TIMEOUT).await.context("ask Docker for its root directory")?;
    let root = info.get("DockerRootDir").and_then(Value::as_str).context("Docker's info gives no DockerRootDir")?;
    let env = plugin
        .pointer("/Settings/Env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Ok(Managed {
        name: wanted,
        rootfs: Path::new(root).join("plugins").join(&id).join("rootfs"),
        sockets: Path::new("/run/docker/plugins").join(&id),
        env,
    })
}

impl Managed {
    /// The plugin daemon's config, as it reads it, with its run directory reached through an
    /// open directory (see the module documentation).
    ///
    /// # Errors
    /// The config does not parse, or the run directory cannot be opened.
    pub fn config(&self) -> anyhow::Result<Config> {
        let etc = self.rootfs.join("etc/rexray");
        let file = ["rexray.yml", "config.yml"].iter().map(|n| etc.join(n)).find(|p| p.is_file());
        let text = match &file {
            Some(path) => std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?,
            None => String::new(),
        };
        let mut config = crate::config::parse(&text, file.as_deref(), &self.env)
            .map_err(|e| anyhow!("the config of plugin {}: {e}", self.name))?;
        let run = self.rootfs.join(config.paths.run.strip_prefix("/").unwrap_or(&config.paths.run));
        let dir = std::fs::File::open(&run).with_context(|| {
            format!("open the run directory of plugin {} ({}); is its daemon running?", self.name, run.display())
        })?;
        // Kept open for the life of the process: the socket path goes through it.
        let dir: &'static std::fs::File = Box::leak(Box::new(dir));
        config.paths.run = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        // Its plugin sockets, where Docker connects to them on the host.
        for module in &mut config.modules {
            if let Some(file) = module.socket.file_name() {
                module.socket = self.sockets.join(file);
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sockets_as_docker_has_them() {
        assert_eq!(full_name("rexray"), "rexray:latest");
        assert_eq!(full_name("rexray:1.2"), "rexray:1.2");
        assert_eq!(full_name("localhost:5000/rexray"), "localhost:5000/rexray:latest");
        let env = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        assert_eq!(docker_socket(&env(&[])), Path::new("/var/run/docker.sock"));
        assert_eq!(docker_socket(&env(&[("DOCKER_HOST", "unix:///tmp/d.sock")])), Path::new("/tmp/d.sock"));
        assert_eq!(docker_socket(&env(&[("DOCKER_HOST", "tcp://1.2.3.4:2375")])), Path::new("/var/run/docker.sock"));
    }

    #[test]
    fn a_long_run_directory_is_reached_through_a_short_path() {
        let tmp = tempfile::tempdir().unwrap();
        // A rootfs path as long as Docker's under a deep data root.
        let rootfs = tmp.path().join("d".repeat(60)).join("plugins").join("f".repeat(64)).join("rootfs");
        std::fs::create_dir_all(rootfs.join("var/run/rexray")).unwrap();
        let managed = Managed {
            name: "rexray:latest".into(),
            rootfs: rootfs.clone(),
            sockets: PathBuf::from("/run/docker/plugins/ffff"),
            env: BTreeMap::from([("LIBSTORAGE_SERVICE".to_owned(), "loop".to_owned())]),
        };
        let config = managed.config().unwrap();
        assert_eq!(config.services[0].name, "loop");
        assert_eq!(config.modules[0].socket, Path::new("/run/docker/plugins/ffff/rexray.sock"));
        let socket = config.paths.run.join(crate::protocol::admin::SOCKET_NAME);
        assert!(socket.as_os_str().len() < 108, "{}", socket.display());
        let long = rootfs.join("var/run/rexray").join(crate::protocol::admin::SOCKET_NAME);
        assert!(long.as_os_str().len() > 108, "the test's path is long enough: {}", long.display());
        // A listener bound through the long path answers on the short one.
        let listener = std::os::unix::net::UnixListener::bind(config.paths.run.join("probe.sock")).unwrap();
        assert!(rootfs.join("var/run/rexray/probe.sock").exists());
        std::os::unix::net::UnixStream::connect(config.paths.run.join("probe.sock")).unwrap();
        drop(listener);
    }
}
