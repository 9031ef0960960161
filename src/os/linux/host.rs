//! This host: device links and serials of attached cloud volumes, the boot ID, the host name.

use std::fs;
use std::path::{Path, PathBuf};

use super::LinuxOs;
use crate::os::{DeviceHost, HostInfo};

/// The kernel's random ID of the current boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// The host name of this UTS namespace.
const HOSTNAME: &str = "/proc/sys/kernel/hostname";

impl DeviceHost for LinuxOs {
    fn resolve(&self, path: &Path) -> Option<PathBuf> {
        let resolved = fs::canonicalize(path).ok()?;
        // A link must lead to a device node under /dev (as the EBS CSI driver checks).
        resolved.starts_with("/dev").then_some(resolved)
    }

    fn serial(&self, device: &Path) -> Option<String> {
        let name = device.file_name()?.to_str()?;
        let text = fs::read_to_string(format!("/sys/class/block/{name}/device/serial")).ok()?;
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_owned())
    }
}

impl HostInfo for LinuxOs {
    fn boot_id(&self) -> Option<String> {
        fs::read_to_string(BOOT_ID).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
    }

    fn hostname(&self) -> String {
        fs::read_to_string(HOSTNAME)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_id_is_stable_within_a_boot_and_the_host_has_a_name() {
        let os = LinuxOs::new();
        assert_eq!(os.boot_id(), os.boot_id());
        assert!(!os.hostname().is_empty());
        assert_eq!(os.resolve(Path::new("/nonexistent/link")), None);
        assert_eq!(os.resolve(Path::new("/proc/self")), None, "outside /dev");
    }
}
