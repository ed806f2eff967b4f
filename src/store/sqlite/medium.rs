//! What the database file is stored on, for one start-up hint: on an SD card or eMMC (Linux's
//! `mmcblk` devices, a Raspberry Pi's usual disk), committing every message as it arrives writes
//! about 50 KiB a message and wears the flash out (docs/deploy.md, "Disk writes"). It only reads
//! `/sys`; it must never fail or delay the start, so anything it cannot read means "no".

use std::path::{Component, Path};

/// True when `db` (or, before the file exists, its directory) is on an SD card or eMMC.
pub fn on_sd_card(db: &Path) -> bool {
    device_link(db).is_some_and(|link| is_mmc(&link))
}

/// Where `/sys/dev/block/MAJOR:MINOR` of the file's device points, e.g.
/// `../../devices/platform/emmc2bus/fe340000.mmc/mmc_host/mmc0/mmc0:0001/block/mmcblk0/mmcblk0p2`.
#[cfg(target_os = "linux")]
fn device_link(db: &Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dir = match db.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dev = std::fs::metadata(db)
        .or_else(|_| std::fs::metadata(dir))
        .ok()?
        .dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()
}

#[cfg(not(target_os = "linux"))]
fn device_link(_db: &Path) -> Option<std::path::PathBuf> {
    None
}

fn is_mmc(link: &Path) -> bool {
    link.components().any(|c| match c {
        Component::Normal(name) => name.to_str().is_some_and(|n| n.starts_with("mmcblk")),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_cards_and_emmc_are_mmcblk_devices_and_nothing_else_is() {
        for link in [
            "../../devices/platform/emmc2bus/fe340000.mmc/mmc_host/mmc0/mmc0:0001/block/mmcblk0/mmcblk0p2",
            "../../devices/platform/soc/fe300000.mmcnr/mmc_host/mmc1/mmc1:0001/block/mmcblk1",
        ] {
            assert!(is_mmc(Path::new(link)), "{link}");
        }
        for link in [
            "../../devices/pci0000:00/0000:00:05.0/virtio2/block/vda/vda1",
            "../../devices/platform/scb/fd500000.pcie/pci0000:00/usb2/2-1/host0/target0:0:0/0:0:0:0/block/sda/sda2",
            "../../devices/pci0000:00/0000:00:01.1/0000:01:00.0/nvme/nvme0/nvme0n1/nvme0n1p3",
            "../../devices/virtual/block/dm-0",
        ] {
            assert!(!is_mmc(Path::new(link)), "{link}");
        }
    }

    #[test]
    fn this_machines_disk_is_read_and_is_not_an_sd_card() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        // Before the file exists its directory's device counts; then the file's.
        assert!(!on_sd_card(&db));
        std::fs::write(&db, b"").unwrap();
        assert!(!on_sd_card(&db));
        let link = device_link(&db).expect("a block device behind the temporary directory");
        assert!(
            link.to_str()
                .is_some_and(|l| l.contains("/block/") || l.contains("virtual")),
            "{link:?}"
        );
        assert!(!on_sd_card(Path::new("no/such/dir/t.db")));
    }
}
