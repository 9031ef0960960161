//! Which boot of the machine this is, to tell a daemon restart from a reboot.

/// The kernel's random ID of the current boot, or `None` where it cannot be read.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    #[test]
    fn boot_id_is_stable_within_a_boot() {
        assert_eq!(super::boot_id(), super::boot_id());
    }
}
