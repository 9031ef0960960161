//! Device names for AttachVolume, and finding the attached volume's block device.
//!
//! - [`DeviceAllocator`]: picks a free name from REX-Ray's ranges (`/dev/xvd[f-p]`, or
//!   `/dev/xvd[b-c][a-z]` with `ebs.useLargeDeviceRange`) under one lock, skipping names the
//!   instance's block device mapping uses and names reserved by attaches still in flight, so
//!   concurrent attaches never collide. A name whose attach failed or got stuck is tainted for
//!   an hour and only used when nothing else is free (AWS warns that reusing such a name can
//!   leave the next attach stuck in `attaching`).
//! - [`find_device`]: where the host shows an attached volume ([`DeviceHost`]). On Nitro the volume is an NVMe
//!   device linked as `<deviceLinksDir>/nvme-Amazon_Elastic_Block_Store_vol<hex>` (made by udev's
//!   stock rules, no extra rule or `nvme` binary needed); on Xen it is the requested `/dev/xvdX`
//!   (or `/dev/sdX`). When the device's serial can be read it must name the volume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

pub use crate::os::DeviceHost;

/// How long a failed name stays at the back of the list.
pub const TAINT_PERIOD: Duration = Duration::from_secs(3600);

/// The device names to try, in order.
pub fn device_names(large: bool) -> Vec<String> {
    if large {
        let mut names = Vec::with_capacity(52);
        for second in ['b', 'c'] {
            for third in 'a'..='z' {
                names.push(format!("/dev/xvd{second}{third}"));
            }
        }
        names
    } else {
        ('f'..='p').map(|c| format!("/dev/xvd{c}")).collect()
    }
}

/// `/dev/sdf` and `/dev/xvdf` name the same slot; compare on the `xvd` spelling.
pub fn normalize(device: &str) -> String {
    let bare = device.strip_prefix("/dev/").unwrap_or(device);
    match bare.strip_prefix("sd") {
        Some(rest) => format!("xvd{rest}"),
        None => bare.to_owned(),
    }
}

#[derive(Debug, Default)]
struct Slots {
    /// Device name → volume being attached there.
    in_flight: BTreeMap<String, String>,
    /// Device name → when it was tainted.
    tainted: BTreeMap<String, Instant>,
}

/// Hands out device names; see the module documentation.
#[derive(Debug)]
pub struct DeviceAllocator {
    names: Vec<String>,
    slots: Arc<Mutex<Slots>>,
}

/// A reserved name; dropping it releases the reservation.
#[derive(Debug)]
pub struct Reservation {
    /// The device name (`/dev/xvdf`).
    pub device: String,
    slots: Arc<Mutex<Slots>>,
}

impl Reservation {
    /// Marks the name as failed: it goes to the back of the list for [`TAINT_PERIOD`].
    pub fn taint(&self) {
        self.slots.lock().expect("device slots poisoned").tainted.insert(normalize(&self.device), Instant::now());
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.slots.lock().expect("device slots poisoned").in_flight.remove(&normalize(&self.device));
    }
}

impl DeviceAllocator {
    /// An allocator over [`device_names`].
    pub fn new(large: bool) -> Self {
        Self { names: device_names(large), slots: Arc::default() }
    }

    /// Reserves a name for `volume_id` that is not in `used` (the instance's mapping) and not
    /// in flight. Untainted names first, in order; then the longest-tainted one.
    ///
    /// # Errors
    /// Every name is in use (the message gives the count).
    pub fn reserve(&self, volume_id: &str, used: &[String]) -> Result<Reservation, String> {
        let used: Vec<String> = used.iter().map(|d| normalize(d)).collect();
        let mut slots = self.slots.lock().expect("device slots poisoned");
        let now = Instant::now();
        slots.tainted.retain(|_, at| now.duration_since(*at) < TAINT_PERIOD);
        let free: Vec<&String> = self
            .names
            .iter()
            .filter(|n| {
                let key = normalize(n);
                !used.contains(&key) && !slots.in_flight.contains_key(&key)
            })
            .collect();
        let pick = free
            .iter()
            .find(|n| !slots.tainted.contains_key(&normalize(n)))
            .or_else(|| free.iter().min_by_key(|n| slots.tainted.get(&normalize(n)).copied()))
            .map(|n| (*n).clone());
        let Some(device) = pick else {
            return Err(format!(
                "no free device name: all {} names of the {} range are in use on this instance",
                self.names.len(),
                if self.names.len() > 11 { "large (/dev/xvd[b-c][a-z])" } else { "default (/dev/xvd[f-p])" }
            ));
        };
        slots.in_flight.insert(normalize(&device), volume_id.to_owned());
        Ok(Reservation { device, slots: Arc::clone(&self.slots) })
    }

    /// How many names of the range `used` (the devices of volumes that are not this
    /// program's) leaves for its volumes.
    pub fn capacity(&self, used: &[String]) -> u32 {
        let used: Vec<String> = used.iter().map(|d| normalize(d)).collect();
        let free = self.names.iter().filter(|n| !used.contains(&normalize(n))).count();
        u32::try_from(free).unwrap_or(u32::MAX)
    }

    /// Names reserved right now (for tests and logs).
    pub fn in_flight(&self) -> Vec<String> {
        self.slots.lock().expect("device slots poisoned").in_flight.keys().map(|k| format!("/dev/{k}")).collect()
    }
}

/// The paths where volume `volume_id`, attached as `requested` (`/dev/xvdf`), may appear.
pub fn candidates(links_dir: &Path, volume_id: &str, requested: &str) -> Vec<PathBuf> {
    let mut paths = vec![links_dir.join(format!("nvme-Amazon_Elastic_Block_Store_{}", volume_id.replace('-', "")))];
    let bare = requested.strip_prefix("/dev/").unwrap_or(requested);
    if !bare.is_empty() && !bare.contains('/') {
        paths.push(PathBuf::from(format!("/dev/{bare}")));
        let other = match (bare.strip_prefix("xvd"), bare.strip_prefix("sd")) {
            (Some(rest), _) => format!("/dev/sd{rest}"),
            (_, Some(rest)) => format!("/dev/xvd{rest}"),
            _ => String::new(),
        };
        if !other.is_empty() {
            paths.push(PathBuf::from(other));
        }
    }
    paths
}

/// What [`find_device`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The device, and the path it was found through.
    Device {
        /// The resolved block device.
        device: PathBuf,
        /// The link or name it was found through.
        via: PathBuf,
    },
    /// Nothing yet; the paths tried.
    Missing(Vec<PathBuf>),
    /// A device whose serial names another volume.
    WrongSerial {
        /// The device.
        device: PathBuf,
        /// Its serial.
        serial: String,
    },
}

/// Looks for volume `volume_id`'s device (see [`candidates`]) and checks its serial.
pub fn find_device(host: &dyn DeviceHost, links_dir: &Path, volume_id: &str, requested: &str) -> Found {
    let paths = candidates(links_dir, volume_id, requested);
    let want = volume_id.replace('-', "");
    for path in &paths {
        let Some(device) = host.resolve(path) else { continue };
        if let Some(serial) = host.serial(&device) {
            // EBS NVMe serials are `vol0123…` (sometimes padded); others (Xen) have none.
            let s = serial.trim().replace('-', "");
            if s.starts_with("vol") && s != want {
                return Found::WrongSerial { device, serial };
            }
        }
        return Found::Device { device, via: path.clone() };
    }
    Found::Missing(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match_rexray() {
        let small = device_names(false);
        assert_eq!(small.len(), 11);
        assert_eq!((small[0].as_str(), small[10].as_str()), ("/dev/xvdf", "/dev/xvdp"));
        let large = device_names(true);
        assert_eq!(large.len(), 52);
        assert_eq!((large[0].as_str(), large[51].as_str()), ("/dev/xvdba", "/dev/xvdcz"));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_reservations_never_collide_and_drop_releases() {
        let a = DeviceAllocator::new(false);
        let used = vec!["/dev/sda1".to_owned(), "/dev/sdf".to_owned()];
        let r1 = a.reserve("vol-1", &used).unwrap();
        let r2 = a.reserve("vol-2", &used).unwrap();
        assert_eq!((r1.device.as_str(), r2.device.as_str()), ("/dev/xvdg", "/dev/xvdh"), "sdf = xvdf is used");
        assert_eq!(a.in_flight(), ["/dev/xvdg", "/dev/xvdh"]);
        drop(r1);
        assert_eq!(a.reserve("vol-3", &used).unwrap().device, "/dev/xvdg");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tainted_name_is_not_reused_at_once() {
        let a = DeviceAllocator::new(false);
        let r = a.reserve("vol-1", &[]).unwrap();
        assert_eq!(r.device, "/dev/xvdf");
        r.taint();
        drop(r);
        assert_eq!(a.reserve("vol-1", &[]).unwrap().device, "/dev/xvdg");
        tokio::time::advance(TAINT_PERIOD).await;
        assert_eq!(a.reserve("vol-1", &[]).unwrap().device, "/dev/xvdf");
    }

    #[tokio::test(start_paused = true)]
    async fn tainted_names_are_the_last_resort_and_exhaustion_is_an_error() {
        let a = DeviceAllocator::new(false);
        let names = device_names(false);
        let used: Vec<String> = names[1..].to_vec();
        let r = a.reserve("vol-1", &used).unwrap();
        assert_eq!(r.device, "/dev/xvdf");
        r.taint();
        drop(r);
        assert_eq!(a.reserve("vol-1", &used).unwrap().device, "/dev/xvdf", "only the tainted one is left");
        let _held = a.reserve("vol-1", &used).unwrap();
        let err = a.reserve("vol-2", &used).unwrap_err();
        assert!(err.contains("all 11 names"), "{err}");
    }

    #[derive(Debug, Default)]
    struct Host {
        links: BTreeMap<PathBuf, PathBuf>,
        serials: BTreeMap<PathBuf, String>,
    }

    impl DeviceHost for Host {
        fn resolve(&self, path: &Path) -> Option<PathBuf> {
            self.links.get(path).cloned()
        }
        fn serial(&self, device: &Path) -> Option<String> {
            self.serials.get(device).cloned()
        }
    }

    #[test]
    fn nvme_link_first_then_xen_names() {
        let c = candidates(Path::new("/dev/disk/by-id"), "vol-0abc", "/dev/xvdf");
        assert_eq!(
            c,
            [
                PathBuf::from("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc"),
                PathBuf::from("/dev/xvdf"),
                PathBuf::from("/dev/sdf"),
            ]
        );
        let mut host = Host::default();
        assert!(
            matches!(find_device(&host, Path::new("/l"), "vol-0abc", "/dev/xvdf"), Found::Missing(p) if p.len() == 3)
        );
        host.links.insert("/dev/sdf".into(), "/dev/sdf".into());
        assert_eq!(
            find_device(&host, Path::new("/l"), "vol-0abc", "/dev/xvdf"),
            Found::Device { device: "/dev/sdf".into(), via: "/dev/sdf".into() }
        );
        host.links.insert("/l/nvme-Amazon_Elastic_Block_Store_vol0abc".into(), "/dev/nvme1n1".into());
        host.serials.insert("/dev/nvme1n1".into(), "vol0abc".into());
        assert_eq!(
            find_device(&host, Path::new("/l"), "vol-0abc", "/dev/xvdf"),
            Found::Device { device: "/dev/nvme1n1".into(), via: "/l/nvme-Amazon_Elastic_Block_Store_vol0abc".into() }
        );
        host.serials.insert("/dev/nvme1n1".into(), "vol0def".into());
        assert_eq!(
            find_device(&host, Path::new("/l"), "vol-0abc", "/dev/xvdf"),
            Found::WrongSerial { device: "/dev/nvme1n1".into(), serial: "vol0def".into() }
        );
    }
}
